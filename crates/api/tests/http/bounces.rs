//! The bounce and complaint intake: real DSN/ARF reports attributed, classified and
//! suppressing, behind its own secret.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn fixture(path: &str) -> Vec<u8> {
    let dir = std::env::var_os("FIXTURES_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/work/shared/fixtures"));
    let file = dir.join(path);
    std::fs::read(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
}

impl TestApp {
    async fn post_bounce(
        &self,
        content_type: &str,
        secret: Option<&str>,
        body: Vec<u8>,
    ) -> reqwest::Response {
        // Not the admin client: the intake must work without an API key.
        let mut request = reqwest::Client::new()
            .post(self.url("/api/v1/bounces"))
            .header("content-type", content_type)
            .body(body);
        if let Some(secret) = secret {
            request = request.bearer_auth(secret);
        }
        request.send().await.unwrap()
    }
}

/// Postfix's DSNs and Dovecot's ARF report, as received, posted to the intake. The fixtures
/// were produced for a campaign `c123` whose ids are not this database's, so each one's
/// identifiers are translated to a recipient created here first: the VERP token (the hard
/// bounce and the complaint: attribution by signed return path) or the original's Message-ID
/// (the others: attribution by Message-ID). Everything else is the real report.
async fn bounce_fixtures_are_attributed_classified_and_suppress(app: TestApp) {
    let (campaign, ids) = app
        .campaign_with(&[
            "nosuchuser@example.test",
            "nobody@rejects.example.net",
            "jane.doe@softfail.example.net",
            "alice@example.test",
            "carol@legacy.example.net",
            "bystander@example.test",
        ])
        .await;
    let campaign_id: campaign::CampaignId = campaign.parse().unwrap();
    let keys = app.state.links.keys();
    let verp = |email: &str, fixture_token: &str, raw: Vec<u8>| {
        let token = keys.sign(tracking::Purpose::Bounce, campaign_id, ids[email]);
        String::from_utf8(raw)
            .unwrap()
            .replace(
                &format!("bounces+{fixture_token}@"),
                &format!("bounces+{token}@"),
            )
            .into_bytes()
    };
    let message_id = |email: &str, fixture_id: &str, raw: Vec<u8>| {
        String::from_utf8(raw)
            .unwrap()
            .replace(
                &format!("<{fixture_id}@mailer.example.test>"),
                &format!("<{campaign}.{}@mailer.example.test>", ids[email]),
            )
            .into_bytes()
    };
    /// A fixture, the report translated to this database, and what the intake must answer.
    struct Case {
        file: &'static str,
        raw: Vec<u8>,
        email: &'static str,
        kind: Option<&'static str>,
        status: &'static str,
        action: &'static str,
        by: &'static str,
        suppressed: bool,
    }
    let case = |file, raw, email, kind, status, action, by, suppressed| Case {
        file,
        raw,
        email,
        kind,
        status,
        action,
        by,
        suppressed,
    };
    let cases: Vec<Case> = vec![
        case(
            "bounces/postfix-hard-bounce-unknown-user.eml",
            verp(
                "nosuchuser@example.test",
                "c123-r456",
                fixture("bounces/postfix-hard-bounce-unknown-user.eml"),
            ),
            "nosuchuser@example.test",
            Some("hard_bounce"),
            "5.1.1",
            "failed",
            "verp",
            true,
        ),
        case(
            "bounces/postfix-remote-550-user-unknown.eml",
            message_id(
                "nobody@rejects.example.net",
                "c123.r458",
                fixture("bounces/postfix-remote-550-user-unknown.eml"),
            ),
            "nobody@rejects.example.net",
            Some("hard_bounce"),
            "5.1.1",
            "failed",
            "message_id",
            true,
        ),
        case(
            "bounces/postfix-delayed-452-insufficient-storage.eml",
            message_id(
                "jane.doe@softfail.example.net",
                "c123.r457",
                fixture("bounces/postfix-delayed-452-insufficient-storage.eml"),
            ),
            "jane.doe@softfail.example.net",
            Some("soft_bounce"),
            "4.3.1",
            "delayed",
            "message_id",
            false,
        ),
        // failed + 4.x.x: soft (expired), and the second soft bounce within the window
        // reaches SOFT_BOUNCE_LIMIT (2 in these tests).
        case(
            "bounces/postfix-expired-452-insufficient-storage.eml",
            message_id(
                "jane.doe@softfail.example.net",
                "c123.r457",
                fixture("bounces/postfix-expired-452-insufficient-storage.eml"),
            ),
            "jane.doe@softfail.example.net",
            Some("soft_bounce"),
            "4.3.1",
            "failed",
            "message_id",
            true,
        ),
        case(
            "bounces/postfix-delivered-notify-success.eml",
            message_id(
                "alice@example.test",
                "c123.r459",
                fixture("bounces/postfix-delivered-notify-success.eml"),
            ),
            "alice@example.test",
            None,
            "2.0.0",
            "delivered",
            "message_id",
            false,
        ),
        case(
            "bounces/postfix-relayed-notify-success.eml",
            message_id(
                "carol@legacy.example.net",
                "c123.r460",
                fixture("bounces/postfix-relayed-notify-success.eml"),
            ),
            "carol@legacy.example.net",
            None,
            "2.0.0",
            "relayed",
            "message_id",
            false,
        ),
    ];
    let files: std::collections::BTreeSet<String> = std::fs::read_dir(
        std::env::var_os("FIXTURES_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from("/work/shared/fixtures"))
            .join("bounces"),
    )
    .unwrap()
    .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
    .filter(|name| name.ends_with(".eml"))
    .map(|name| format!("bounces/{name}"))
    .collect();
    let covered: std::collections::BTreeSet<String> =
        cases.iter().map(|c| c.file.to_string()).collect();
    assert_eq!(files, covered, "every bounce fixture is exercised");

    for Case {
        file,
        raw,
        email,
        kind,
        status,
        action,
        by,
        suppressed,
    } in cases
    {
        let response = app
            .post_bounce("message/rfc822", Some(BOUNCE_SECRET), raw)
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{file}");
        let body: Value = response.json().await.unwrap();
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), 1, "{file}: {body}");
        let result = &results[0];
        assert_eq!(result["email"], email, "{file}");
        assert_eq!(result["kind"].as_str(), kind, "{file}");
        assert_eq!(result["status"], status, "{file}");
        assert_eq!(result["action"], action, "{file}");
        assert_eq!(result["attributed_by"], by, "{file}");
        assert_eq!(result["campaign_id"], campaign.as_str(), "{file}");
        assert_eq!(result["recipient_id"], ids[email].get(), "{file}");
        assert_eq!(result["suppressed"], suppressed, "{file}");
    }

    // The complaint: attributed by the VERP address in Original-Mail-From; suppresses at once.
    let complaint = verp(
        "alice@example.test",
        "c123-r461",
        fixture("complaints/dovecot-pigeonhole-arf-abuse.eml"),
    );
    let response = app
        .post_bounce("multipart/report", Some(BOUNCE_SECRET), complaint)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["results"][0]["kind"], "complaint");
    assert_eq!(body["results"][0]["status"], "abuse");
    assert_eq!(body["results"][0]["attributed_by"], "verp");
    assert_eq!(
        body["results"][0]["recipient_id"],
        ids["alice@example.test"].get()
    );

    let (_, list) = app.get_json("/api/v1/suppressions?limit=100").await;
    let reasons: std::collections::BTreeMap<String, String> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["email"].as_str().unwrap().to_string(),
                s["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: std::collections::BTreeMap<String, String> = [
        ("alice@example.test", "complaint"),
        ("jane.doe@softfail.example.net", "soft_bounce_limit"),
        ("nobody@rejects.example.net", "hard_bounce"),
        ("nosuchuser@example.test", "hard_bounce"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(reasons, expected);

    // Recorded with their diagnostics: 2 hard, 2 soft, 1 complaint; success notices are not.
    let events = app.store.campaign_feedback(campaign_id).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "hard_bounce",
            "hard_bounce",
            "soft_bounce",
            "soft_bounce",
            "complaint"
        ]
    );
    assert!(
        events[1]
            .diagnostic
            .as_deref()
            .unwrap()
            .contains("550 5.1.1"),
        "{:?}",
        events[1].diagnostic
    );

    // The attributed ones count in the campaign's analytics as tracking events.
    let counts = app.store.engagement_counts(campaign_id).await.unwrap();
    assert_eq!(counts.of(store::TrackingEventKind::BounceHard).total, 2);
    assert_eq!(counts.of(store::TrackingEventKind::BounceSoft).total, 2);
    assert_eq!(counts.of(store::TrackingEventKind::BounceSoft).unique, 1);
    assert_eq!(counts.of(store::TrackingEventKind::Complaint).total, 1);

    // A later campaign skips every suppressed address: the suppression list is what sends check.
    let keys: Vec<String> = ids.keys().cloned().collect();
    let suppressed = app.store.suppressed_among(&keys).await.unwrap();
    assert_eq!(suppressed.len(), 4);
    assert!(!suppressed.contains("bystander@example.test"));

    // And a later campaign to the same addresses, delivered to a real SMTP server, reaches
    // only the ones that did not bounce hard, complain or keep bouncing soft.
    // (Skipped without aiosmtpd, which fails the run under CI/REQUIRE_SMTP.)
    if let Some(sink) = testkit::smtp::Aiosmtpd::start() {
        let transport = delivery::transport_from_config(&delivery::TransportConfig {
            smtp_url: Some(sink.url()),
            ..delivery::TransportConfig::default()
        })
        .expect("SMTP transport");
        let worker = TestWorker::start(&app, transport);
        let everyone: Vec<Value> = ids
            .keys()
            .map(|email| json!({"email": email, "first_name": "Reader"}))
            .collect();
        let later = send_and_wait(&app, Value::Array(everyone)).await;
        worker.stop().await;
        let (_, status) = app
            .get_json(&format!("/api/v1/campaigns/{later}/status"))
            .await;
        assert_eq!(status["deliveries"]["suppressed"], 4, "{status}");
        assert_eq!(
            status["deliveries"]["sent"],
            ids.len() as i64 - 4,
            "{status}"
        );
        let mut reached: Vec<String> = sink.messages().iter().map(|m| recipient_of(m)).collect();
        reached.sort();
        let mut expected_reached: Vec<String> = keys
            .iter()
            .filter(|key| !suppressed.contains(*key))
            .cloned()
            .collect();
        expected_reached.sort();
        assert_eq!(reached, expected_reached);
    }

    // The untranslated report (ids of a campaign this database never sent) is still acted on:
    // the address it names bounced hard, so it is suppressed, without attribution.
    app.store
        .remove_suppression(&campaign::EmailAddress::parse("nobody@rejects.example.net").unwrap())
        .await
        .unwrap();
    let response = app
        .post_bounce(
            "message/rfc822",
            Some(BOUNCE_SECRET),
            fixture("bounces/postfix-remote-550-user-unknown.eml"),
        )
        .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["results"][0]["kind"], "hard_bounce");
    assert!(body["results"][0].get("attributed_by").is_none(), "{body}");
    assert_eq!(body["results"][0]["suppressed"], true);
}

async fn bounce_intake_needs_its_secret_and_a_readable_report(app: TestApp) {
    let hard = fixture("bounces/postfix-hard-bounce-unknown-user.eml");
    // The API key is not the bounce secret, and no secret is not either.
    for (case, secret) in [
        ("missing", None),
        ("wrong", Some("not-the-secret-at-all")),
        ("api key", Some(app.key.as_str())),
    ] {
        let response = app
            .post_bounce("message/rfc822", secret, hard.clone())
            .await;
        assert_problem(response, StatusCode::UNAUTHORIZED, "secret", case).await;
    }
    let (_, list) = app.get_json("/api/v1/suppressions").await;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        0,
        "nothing acted on"
    );

    let cases: Vec<(&str, &str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "truncated JSON",
            "application/json",
            b"{\"email\": ".to_vec(),
            StatusCode::BAD_REQUEST,
            "JSON",
        ),
        (
            "bad status",
            "application/json",
            br#"{"email":"a@example.com","status":"9.9.9","action":"failed"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "enhanced status code",
        ),
        (
            "bad action",
            "application/json",
            br#"{"email":"a@example.com","status":"5.1.1","action":"bounced"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "expected one of `failed`",
        ),
        (
            "unknown field",
            "application/json",
            br#"{"email":"a@example.com","status":"5.1.1","action":"failed","x":1}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field",
        ),
        (
            "bad address",
            "application/json",
            br#"{"email":"nobody","status":"5.1.1","action":"failed"}"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "email",
        ),
        (
            "plain mail",
            "message/rfc822",
            b"From: a@example.com\r\nSubject: hi\r\n\r\nhello\r\n".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "not a report",
        ),
        (
            "not mail",
            "message/rfc822",
            b"\x00\x01garbage".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "report",
        ),
        (
            "other type",
            "text/plain",
            hard.clone(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "message/rfc822",
        ),
    ];
    for (case, content_type, body, status, needle) in cases {
        let response = app
            .post_bounce(content_type, Some(BOUNCE_SECRET), body)
            .await;
        assert_problem(response, status, needle, case).await;
    }

    // The JSON form, authenticated with the header instead of a bearer token, attributed by
    // campaign and address.
    let (campaign, ids) = app.campaign_with(&["Gone@Example.com"]).await;
    let response = reqwest::Client::new()
        .post(app.url("/api/v1/bounces"))
        .header(api::bounces::SECRET_HEADER, BOUNCE_SECRET)
        .json(
            &json!({"email": "gone@example.com", "status": "5.1.1", "action": "failed",
            "diagnostic": "smtp; 550 5.1.1 no such user", "campaign_id": campaign}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["results"][0]["attributed_by"], "campaign_and_email");
    assert_eq!(
        body["results"][0]["recipient_id"],
        ids["Gone@Example.com"].get()
    );
    assert_eq!(body["results"][0]["suppressed"], true);
    // A soft bounce by Message-ID is recorded but, alone, does not suppress.
    let (campaign, ids) = app.campaign_with(&["busy@example.com"]).await;
    let message_id = format!(
        "<{campaign}.{}@riverside-books.example>",
        ids["busy@example.com"]
    );
    let response = app
        .post_bounce(
            "application/json",
            Some(BOUNCE_SECRET),
            serde_json::to_vec(&json!({"email": "busy@example.com", "status": "4.2.2", "action": "delayed", "message_id": message_id})).unwrap(),
        )
        .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["results"][0]["kind"], "soft_bounce");
    assert_eq!(body["results"][0]["attributed_by"], "message_id");
    assert_eq!(body["results"][0]["suppressed"], false);
}

testkit::backend_suite! {
    #[tokio::test] with_app => [
        bounce_fixtures_are_attributed_classified_and_suppress,
        bounce_intake_needs_its_secret_and_a_readable_report,
    ];
}
