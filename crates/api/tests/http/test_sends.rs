//! Test sends: marked messages through a real SMTP server, DKIM by From domain,
//! suppressions and the quota shared by instances on one database.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A test send renders the campaign's message with a marked subject and delivers it through
/// the transport (aiosmtpd here) to each address, leaving the campaign exactly as it was; bad
/// requests are problem+json, and a process without a transport says so.
async fn a_test_send_delivers_marked_messages_and_leaves_the_campaign_alone(app: TestApp) {
    let created = app.create_sample().await;
    let id = created["campaign"]["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/campaigns/{id}/test");
    let status_path = format!("/api/v1/campaigns/{id}/status");
    let (_, before) = app.get_json(&status_path).await;
    let valid = json!({"addresses": ["qa1@example.com", "QA2@example.com"], "fields": {"first_name": "Tess"}});

    assert_problem(
        app.post_json(&path, &valid).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "no mail transport",
        "no transport",
    )
    .await;

    let Some(server) = testkit::smtp::Aiosmtpd::start() else {
        return;
    };
    let transport = delivery::transport_from_config(&delivery::TransportConfig {
        smtp_url: Some(server.url()),
        connections: 1,
        ..delivery::TransportConfig::default()
    })
    .unwrap();
    let with_transport = api::AppState {
        transport: Some(transport),
        ..app.state.clone()
    };
    let address = serve(with_transport).await;
    let url = |path: &str| format!("http://{address}{path}");
    let post = |body: Value| app.client.post(url(&path)).json(&body).send();

    let eleven: Vec<String> = (0..11).map(|n| format!("qa{n}@example.com")).collect();
    for (case, body, needle) in [
        ("none", json!({"addresses": []}), "give 1 to 10 addresses"),
        (
            "eleven",
            json!({"addresses": eleven}),
            "give 1 to 10 addresses",
        ),
        (
            "bad address",
            json!({"addresses": ["not-an-address"]}),
            "addresses[0]",
        ),
        (
            "unknown field",
            json!({"addresses": ["qa@example.com"], "cc": []}),
            "unknown field `cc`",
        ),
    ] {
        assert_problem(
            post(body).await.unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            needle,
            case,
        )
        .await;
    }
    assert_eq!(server.message_count(), 0, "nothing sent for a bad request");

    let response = post(valid).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| r["accepted"] == true), "{body}");

    let messages = server.messages();
    assert_eq!(messages.len(), 2);
    let mut rcpts = Vec::new();
    for raw in &messages {
        let text = String::from_utf8_lossy(raw);
        let header = |name: &str| {
            text.lines()
                .take_while(|l| !l.is_empty())
                .find(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
                .map(|l| l[name.len() + 1..].trim().to_string())
                .unwrap_or_default()
        };
        assert!(
            header("subject").starts_with(api::TEST_SUBJECT_MARK),
            "{}",
            header("subject")
        );
        assert!(text.contains("Tess"), "rendered with the given fields");
        rcpts.push(header("x-rcptto").to_ascii_lowercase());
    }
    rcpts.sort();
    assert_eq!(rcpts, ["qa1@example.com", "qa2@example.com"]);

    let (_, after) = app.get_json(&status_path).await;
    for field in [
        "status",
        "deliveries",
        "recipients",
        "queued_at",
        "started_at",
    ] {
        assert_eq!(before[field], after[field], "{field} unchanged");
    }
}

/// With DKIM configured, a test send is signed when the campaign's From domain is the key's
/// domain, and sent unsigned when the key is for another domain (the workers' rule).
async fn a_test_send_is_dkim_signed_only_for_a_from_domain_the_key_covers(app: TestApp) {
    let created = app.create_sample().await;
    let id = created["campaign"]["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/campaigns/{id}/test");
    let Some(server) = testkit::smtp::Aiosmtpd::start() else {
        return;
    };
    let transport = delivery::transport_from_config(&delivery::TransportConfig {
        smtp_url: Some(server.url()),
        connections: 1,
        ..delivery::TransportConfig::default()
    })
    .unwrap();
    let key = include_str!("../../../message/tests/fixtures/dkim-test-ed25519.pem");
    for (domain, signed) in [("riverside-books.example", true), ("other.example", false)] {
        let signer = message::DkimSigner::from_pem(key, domain, "sel").unwrap();
        let state = api::AppState {
            transport: Some(transport.clone()),
            dkim: Some(std::sync::Arc::new(signer)),
            ..app.state.clone()
        };
        let address = serve(state).await;
        let before = server.messages();
        let response = app
            .client
            .post(format!("http://{address}{path}"))
            .json(&json!({"addresses": ["qa@example.com"], "fields": {"first_name": "Tess"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{domain}");
        // The one message that was not there before: Maildir names do not sort by arrival
        // (their microseconds are not zero-padded), so "the last file" may be an older one.
        let received: Vec<Vec<u8>> = server
            .messages()
            .into_iter()
            .filter(|message| !before.contains(message))
            .collect();
        assert_eq!(received.len(), 1, "{domain}");
        let text = String::from_utf8_lossy(&received[0]).into_owned();
        let signature = format!("d={domain}; s=sel;");
        assert_eq!(text.contains(&signature), signed, "{domain}: {text}");
        assert_eq!(text.contains("DKIM-Signature:"), signed, "{domain}: {text}");
    }
}

/// The app of `app`'s test with a transport to `server`, on a store (and pool) of its own:
/// another instance sharing the database, as a second API process would.
async fn instance_with_transport(app: &TestApp, server: &testkit::smtp::Aiosmtpd) -> String {
    let store = store::connect(&app.database_url)
        .await
        .expect("a second store on the database");
    let transport = delivery::transport_from_config(&delivery::TransportConfig {
        smtp_url: Some(server.url()),
        connections: 1,
        ..delivery::TransportConfig::default()
    })
    .unwrap();
    let state = api::AppState {
        dkim: None,
        transport: Some(transport),
        engagement: tracking::Engagement::start(
            store.clone(),
            app.state.links.keys().clone(),
            app.state.events.clone(),
        ),
        store,
        ..app.state.clone()
    };
    format!("http://{}", serve(state).await)
}

/// A header of a raw message (first line only).
/// The value of header `name`, unfolded (headers are folded at 78 columns: a continuation
/// line starts with white space).
fn raw_header(raw: &[u8], name: &str) -> String {
    let text = String::from_utf8_lossy(raw);
    let prefix = format!("{}:", name.to_ascii_lowercase());
    let mut lines = text.lines().take_while(|line| !line.is_empty());
    let Some(first) = lines.find(|line| line.to_ascii_lowercase().starts_with(&prefix)) else {
        return String::new();
    };
    let mut value = first[prefix.len()..].to_string();
    for continuation in lines.take_while(|line| line.starts_with([' ', '\t'])) {
        value.push_str(continuation);
    }
    value.trim().to_string()
}

/// Test sends honour the suppression list, send one message per mailbox whatever the
/// spelling, and carry an unsubscribe link that suppresses the address it was sent to.
async fn a_test_send_skips_suppressed_and_repeated_addresses_and_its_link_unsubscribes(
    app: TestApp,
) {
    let Some(server) = testkit::smtp::Aiosmtpd::start() else {
        return;
    };
    let created = app.create_sample().await;
    let id = created["campaign"]["id"].as_str().unwrap().to_string();
    let base = instance_with_transport(&app, &server).await;
    let path = format!("{base}/api/v1/campaigns/{id}/test");
    let post = |addresses: Vec<&str>| {
        app.client
            .post(&path)
            .json(&json!({"addresses": addresses, "fields": {"first_name": "Tess"}}))
            .send()
    };

    let response = app
        .post_json(
            "/api/v1/suppressions",
            &json!({"email": "Blocked@Example.com"}),
        )
        .await;
    assert!(response.status().is_success(), "{:?}", response.status());
    let response = post(vec!["blocked@example.COM"]).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{body}");
    assert_eq!(results[0]["status"], "suppressed", "{body}");
    assert_eq!(results[0]["accepted"], false, "{body}");
    assert_eq!(
        server.message_count(),
        0,
        "nothing sent to a suppressed address"
    );

    // Ten spellings of one mailbox, beside the suppressed one: one message, each reported once.
    let spellings = [
        "dup@example.com",
        "DUP@EXAMPLE.COM",
        "Dup@Example.com",
        "dUp@example.com",
        "duP@example.com",
        "DUp@example.com",
        "dup@EXAMPLE.com",
        "dup@Example.Com",
        "DuP@eXample.com",
    ];
    let mut addresses = spellings.to_vec();
    addresses.push("BLOCKED@example.com");
    let response = post(addresses).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{body}");
    assert_eq!(results[0]["address"], "dup@example.com", "{body}");
    assert_eq!(results[0]["status"], "sent", "{body}");
    assert_eq!(results[1]["status"], "suppressed", "{body}");
    let messages = server.messages();
    assert_eq!(
        messages.len(),
        1,
        "one message for ten spellings of one mailbox"
    );
    assert_eq!(
        raw_header(&messages[0], "X-RcptTo").to_ascii_lowercase(),
        "dup@example.com"
    );

    // Its List-Unsubscribe link works: the page, then the one-click POST.
    let link = raw_header(&messages[0], "List-Unsubscribe");
    let link = link
        .trim_start_matches('<')
        .split('>')
        .next()
        .unwrap()
        .to_string();
    let token_path = link
        .strip_prefix("https://mail.example.test")
        .expect("under PUBLIC_BASE_URL");
    let plain = reqwest::Client::new();
    let page = plain.get(app.url(token_path)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let (_, listed) = app.get_json("/api/v1/suppressions").await;
    assert!(
        !listed.to_string().contains("dup@example.com"),
        "a GET does not unsubscribe: {listed}"
    );
    let unsubscribed = plain
        .post(app.url(token_path))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(unsubscribed.status(), StatusCode::OK);
    let (_, listed) = app.get_json("/api/v1/suppressions").await;
    assert!(
        listed.to_string().contains("dup@example.com"),
        "the test address is suppressed: {listed}"
    );
    // A forged variant of the link is still refused.
    let mut forged = token_path.to_string();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    let refused = plain.post(app.url(&forged)).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::NOT_FOUND);

    let response = post(vec!["Dup@Example.com"]).await.unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["results"][0]["status"], "suppressed", "{body}");
    assert_eq!(
        server.message_count(),
        1,
        "nothing more sent after the unsubscribe"
    );
}

/// The test-send quota of a key is counted in the database: two instances on one database
/// share it, the message past it answers 429 with Retry-After, and nothing past it is sent.
async fn the_test_send_quota_is_shared_by_instances_on_one_database(app: TestApp) {
    let Some(server) = testkit::smtp::Aiosmtpd::start() else {
        return;
    };
    let per_minute = api::TestSendQuota::default().per_minute as usize;
    let created = app.create_sample().await;
    let id = created["campaign"]["id"].as_str().unwrap().to_string();
    let instances = [
        instance_with_transport(&app, &server).await,
        instance_with_transport(&app, &server).await,
    ];
    let post = |instance: usize, addresses: Vec<String>| {
        app.client
            .post(format!(
                "{}/api/v1/campaigns/{id}/test",
                instances[instance % 2]
            ))
            .json(&json!({"addresses": addresses}))
            .send()
    };
    for n in 0..per_minute - 1 {
        let response = post(n, vec![format!("qa{n}@example.com")]).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "send {n}");
    }
    assert_eq!(server.message_count(), per_minute - 1);

    // Two more do not fit the one left: refused whole, nothing sent.
    let two = vec!["x1@example.com".to_string(), "x2@example.com".to_string()];
    let refused = post(0, two).await.unwrap();
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_problem(
        refused,
        StatusCode::TOO_MANY_REQUESTS,
        "test messages a minute",
        "two past the quota",
    )
    .await;
    assert_eq!(server.message_count(), per_minute - 1);

    let response = post(1, vec!["last@example.com".into()]).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the last one of the minute"
    );
    for instance in [0, 1] {
        let refused = post(instance, vec!["over@example.com".into()])
            .await
            .unwrap();
        assert!(refused.headers().contains_key("retry-after"));
        assert_problem(
            refused,
            StatusCode::TOO_MANY_REQUESTS,
            "test messages a minute",
            "past the quota",
        )
        .await;
    }
    assert_eq!(
        server.message_count(),
        per_minute,
        "nothing past the quota is sent"
    );

    // Another key has its own quota.
    let other = api::auth::create_api_key(app.store.as_ref(), "other")
        .await
        .unwrap()
        .key;
    let response = reqwest::Client::new()
        .post(format!("{}/api/v1/campaigns/{id}/test", instances[0]))
        .bearer_auth(other)
        .json(&json!({"addresses": ["other@example.com"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(server.message_count(), per_minute + 1);

    // Racing requests of a fresh key, spread over both instances: exactly the quota goes out.
    let racing = api::auth::create_api_key(app.store.as_ref(), "racing")
        .await
        .unwrap()
        .key;
    let plain = reqwest::Client::new();
    let requests = (0..2 * per_minute).map(|n| {
        plain
            .post(format!("{}/api/v1/campaigns/{id}/test", instances[n % 2]))
            .bearer_auth(&racing)
            .json(&json!({"addresses": [format!("race{n}@example.com")]}))
            .send()
    });
    let statuses: Vec<StatusCode> = futures::future::join_all(requests)
        .await
        .into_iter()
        .map(|response| response.unwrap().status())
        .collect();
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let limited = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((ok, limited), (per_minute, per_minute), "{statuses:?}");
    assert_eq!(server.message_count(), 2 * per_minute + 1);
}

testkit::backend_suite! {
    #[tokio::test] with_app => [
        a_test_send_delivers_marked_messages_and_leaves_the_campaign_alone,
        a_test_send_is_dkim_signed_only_for_a_from_domain_the_key_covers,
        a_test_send_skips_suppressed_and_repeated_addresses_and_its_link_unsubscribes,
        the_test_send_quota_is_shared_by_instances_on_one_database,
    ];
}
