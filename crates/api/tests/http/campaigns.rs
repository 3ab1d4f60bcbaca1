//! Creating and reading campaigns: documents, templates and their checks, provider headers,
//! paging, and malformed requests.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn sample_campaign_with_csv_recipients_reports_its_status(app: TestApp) {
    let created = app.create_sample().await;
    let id = created["campaign"]["id"].as_str().unwrap().to_string();
    assert_eq!(created["campaign"]["status"], "draft");

    let response = app
        .post_bytes(
            &format!("/api/v1/campaigns/{id}/recipients"),
            "text/csv",
            example("sample_recipients.csv"),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["imported"], 50);
    assert_eq!(report["duplicates"], 0);

    // The same people again as JSON: all duplicates, nothing added.
    let response = app
        .post_bytes(
            &format!("/api/v1/campaigns/{id}/recipients"),
            "application/json",
            example("sample_recipients.json"),
        )
        .await;
    let report: Value = response.json().await.unwrap();
    assert_eq!(
        (report["imported"].as_u64(), report["duplicates"].as_u64()),
        (Some(0), Some(50))
    );

    let (status, body) = app
        .get_json(&format!("/api/v1/campaigns/{id}/status"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "draft");
    assert_eq!(body["recipients"], 50);
    assert_eq!(body["deliveries"]["pending"], 50);
    let sum: i64 = body["deliveries"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_i64().unwrap())
        .sum();
    assert_eq!(sum, 50, "delivery counts add up to the recipients");

    let (status, page) = app
        .get_json(&format!("/api/v1/campaigns/{id}/deliveries?limit=20"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["items"].as_array().unwrap().len(), 20);
    assert_eq!(page["items"][0]["email"], "amelia.hughes0@mail.example");
    assert_eq!(page["items"][0]["status"], "pending");
    let cursor = page["next_cursor"].as_i64().unwrap();
    let (_, rest) = app
        .get_json(&format!(
            "/api/v1/campaigns/{id}/deliveries?after={cursor}&limit=1000"
        ))
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 30);
    let (_, none) = app
        .get_json(&format!("/api/v1/campaigns/{id}/deliveries?status=failed"))
        .await;
    assert_eq!(none["items"], json!([]));
    let (status, refused) = app
        .get_json(&format!("/api/v1/campaigns/{id}/deliveries?limit=1001"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["errors"][0]["field"], "limit", "{refused}");

    let (status, campaign) = app.get_json(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        campaign["document"]["templates"],
        sample_campaign()["templates"]
    );

    let (_, list) = app.get_json("/api/v1/campaigns").await;
    assert_eq!(list["items"][0]["id"], id.as_str());
    assert_eq!(list["items"][0]["recipient_count"], 50);
}

/// A local send time through the API: a bad time or fallback zone refuses the document (422
/// naming the field, nothing stored); a CSV with an unknown zone is imported with that row
/// listed; once sending, the status lists each zone's waiting recipients and release.
async fn a_local_send_time_is_validated_reported_and_shown_per_zone(app: TestApp) {
    let before = app.campaign_count().await;
    for (local, field) in [
        (
            json!({"time": "9am", "fallback_timezone": "UTC"}),
            "local_send_time.time",
        ),
        (
            json!({"time": "09:00", "fallback_timezone": "Europe/Atlantis"}),
            "local_send_time.fallback_timezone",
        ),
    ] {
        let mut campaign = sample_campaign();
        campaign["local_send_time"] = local;
        let body = assert_problem(
            app.post_json("/api/v1/campaigns", &campaign).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            field,
            field,
        )
        .await;
        assert_eq!(body["errors"][0]["field"], field, "{body}");
    }
    assert_eq!(app.campaign_count().await, before, "nothing stored");

    let mut campaign = sample_campaign();
    campaign["local_send_time"] =
        json!({"time": "09:00", "timezone_field": "tz", "fallback_timezone": "Asia/Tokyo"});
    let created = app.post_json("/api/v1/campaigns", &campaign).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    let id = created["campaign"]["id"].as_str().unwrap().to_string();
    let csv = "email,first_name,tz\n\
               ann@example.com,Ann,Europe/Berlin\n\
               bob@example.com,Bob,Europe/Berlni\n\
               cy@example.com,Cy,\n";
    let response = app
        .post_bytes(
            &format!("/api/v1/campaigns/{id}/recipients"),
            "text/csv",
            csv.as_bytes().to_vec(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["imported"], 3);
    assert_eq!(report["unrecognised_time_zones"], 1);
    assert_eq!(
        report["unrecognised_time_zone_rows"],
        json!([{"row": 2, "email": "bob@example.com", "value": "Europe/Berlni", "used": "Asia/Tokyo"}])
    );
    // Before the split, nothing is held: each zone's recipients are shown as due.
    let (_, status) = app
        .get_json(&format!("/api/v1/campaigns/{id}/status"))
        .await;
    assert_eq!(
        status["time_zones"],
        json!([
            {"zone": "Asia/Tokyo", "waiting": 2, "due_at": null},
            {"zone": "Europe/Berlin", "waiting": 1, "due_at": null}
        ])
    );
    let (_, plain) = app
        .get_json(&format!(
            "/api/v1/campaigns/{}/status",
            app.create_sample().await["campaign"]["id"]
                .as_str()
                .unwrap()
        ))
        .await;
    assert!(plain.get("time_zones").is_none(), "{plain}");
}

/// (case, content type, path, body, expected status, text the detail must contain)
type BadRequest<'a> = (&'a str, &'a str, String, Vec<u8>, StatusCode, &'a str);

async fn malformed_requests_get_problems_and_store_nothing(app: TestApp) {
    let existing = app.create_sample().await;
    let id = existing["campaign"]["id"].as_str().unwrap().to_string();
    let recipients_path = format!("/api/v1/campaigns/{id}/recipients");
    app.post_bytes(
        &recipients_path,
        "text/csv",
        b"email,first_name\nkeep@example.com,Keep\n".to_vec(),
    )
    .await;

    let with = |edit: &dyn Fn(&mut Value)| {
        let mut value = sample_campaign();
        edit(&mut value);
        value
    };
    let campaigns = "/api/v1/campaigns";
    let truncated = &example("sample_campaign.json")[..200];
    let mut huge = serde_json::to_vec(&sample_campaign()).unwrap();
    huge.truncate(huge.len() - 1);
    huge.extend_from_slice(br#","metadata":{"padding":""#);
    huge.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
    huge.extend_from_slice(b"\"}}");

    let json = "application/json";
    let cases: Vec<BadRequest> = vec![
        (
            "truncated JSON",
            json,
            campaigns.into(),
            truncated.to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        ),
        (
            "empty body",
            json,
            campaigns.into(),
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "EOF",
        ),
        (
            "trailing garbage",
            json,
            campaigns.into(),
            [
                serde_json::to_vec(&sample_campaign()).unwrap(),
                b"}".to_vec(),
            ]
            .concat(),
            StatusCode::BAD_REQUEST,
            "trailing",
        ),
        (
            "not UTF-8",
            json,
            campaigns.into(),
            b"{\"name\": \"\xff\xfe\"}".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        ),
        (
            "array instead of object",
            json,
            campaigns.into(),
            b"[]".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid type",
        ),
        (
            "wrong type",
            json,
            campaigns.into(),
            serde_json::to_vec(&with(&|v| v["batch_size"] = json!("ten"))).unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "batch_size",
        ),
        (
            "missing templates",
            json,
            campaigns.into(),
            serde_json::to_vec(&with(&|v| {
                v.as_object_mut().unwrap().remove("templates");
            }))
            .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing field `templates`",
        ),
        (
            "unknown field",
            json,
            campaigns.into(),
            serde_json::to_vec(&with(&|v| v["batchsize"] = json!(10))).unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field `batchsize`",
        ),
        (
            "unknown nested field",
            json,
            campaigns.into(),
            serde_json::to_vec(&with(&|v| v["tracking"]["open"] = json!(true))).unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "tracking.open",
        ),
        (
            "bad sender address",
            json,
            campaigns.into(),
            serde_json::to_vec(&with(&|v| v["from"]["email"] = json!("news@@example.com")))
                .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "from.email",
        ),
        (
            "bad inline recipient",
            json,
            campaigns.into(),
            serde_json::to_vec(&with(&|v| {
                v["recipients"] = json!([{"email": "a@example.com"}, {"email": "b@"}])
            }))
            .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "recipients[1]",
        ),
        (
            "CRLF in subject",
            json,
            campaigns.into(),
            serde_json::to_vec(&with(&|v| {
                v["templates"]["subject"] = json!("Hi\r\nBcc: all@example.com")
            }))
            .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "templates.subject: must be one line",
        ),
        (
            "LF in sender name",
            json,
            campaigns.into(),
            serde_json::to_vec(&with(&|v| v["from"]["name"] = json!("Books\nX-Evil: 1"))).unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "from.name",
        ),
        (
            "batch_size 0",
            json,
            campaigns.into(),
            serde_json::to_vec(&with(&|v| v["batch_size"] = json!(0))).unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "MAX_BATCH_SIZE",
        ),
        (
            "batch_size too large",
            json,
            campaigns.into(),
            serde_json::to_vec(&with(&|v| v["batch_size"] = json!(5000))).unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "MAX_BATCH_SIZE",
        ),
        (
            "no body template",
            json,
            campaigns.into(),
            serde_json::to_vec(&with(&|v| {
                v["templates"] = json!({"subject": "s", "html": " "})
            }))
            .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "non-empty `html` or `text`",
        ),
        (
            "schedule without offset",
            json,
            campaigns.into(),
            serde_json::to_vec(&with(&|v| v["scheduled_at"] = json!("2030-01-01T09:00:00")))
                .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "scheduled_at",
        ),
        (
            "10 MB body",
            json,
            campaigns.into(),
            huge,
            StatusCode::PAYLOAD_TOO_LARGE,
            "larger than",
        ),
        (
            "wrong media type",
            "text/plain",
            campaigns.into(),
            serde_json::to_vec(&sample_campaign()).unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "application/json",
        ),
        (
            "CSV with a bad row",
            "text/csv",
            recipients_path.clone(),
            b"email,first_name\nnew1@example.com,A\nnot-an-address,B\nnew2@example.com,C\n"
                .to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "row 2 (line 3)",
        ),
        (
            "CSV without email column",
            "text/csv",
            recipients_path.clone(),
            b"name,city\nAnn,Lyon\n".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "no `email` column",
        ),
        (
            "CSV row too short",
            "text/csv",
            recipients_path.clone(),
            b"email,first_name,city\nnew3@example.com,A\n".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "has 2 fields but the header has 3",
        ),
        (
            "JSON recipient without string email",
            json,
            recipients_path.clone(),
            br#"[{"email": "new4@example.com"}, {"email": 7}]"#.to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "row 2 (line 1): `email` must be a string",
        ),
        (
            "recipients as XML",
            "application/xml",
            recipients_path.clone(),
            b"<r/>".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "text/csv",
        ),
        (
            "recipients for an unknown campaign",
            "text/csv",
            format!("/api/v1/campaigns/{}/recipients", uuid::Uuid::now_v7()),
            b"email\nx@example.com\n".to_vec(),
            StatusCode::NOT_FOUND,
            "does not exist",
        ),
        (
            "not an id",
            json,
            "/api/v1/campaigns/not-a-uuid/recipients".into(),
            b"[]".to_vec(),
            StatusCode::NOT_FOUND,
            "not-a-uuid",
        ),
    ];
    assert!(cases.len() >= 20);
    for (case, content_type, path, body, status, needle) in cases {
        let response = app.post_bytes(&path, content_type, body).await;
        assert!(
            !response.status().is_server_error(),
            "{case}: {}",
            response.status()
        );
        assert_problem(response, status, needle, case).await;
    }

    for (case, path, status, needle) in [
        (
            "limit not a number",
            "/api/v1/campaigns?limit=abc",
            StatusCode::BAD_REQUEST,
            "limit",
        ),
        (
            "limit out of range",
            "/api/v1/campaigns?limit=0",
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit: must be between 1 and 500",
        ),
        (
            "limit above the maximum",
            "/api/v1/campaigns?limit=501",
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit: must be between 1 and 500",
        ),
        (
            "limit beyond u32",
            "/api/v1/campaigns?limit=4294967296",
            StatusCode::BAD_REQUEST,
            "limit",
        ),
        (
            "unknown status",
            "/api/v1/campaigns?status=sendng",
            StatusCode::BAD_REQUEST,
            "sendng",
        ),
        (
            "unknown campaign",
            &format!("/api/v1/campaigns/{}", uuid::Uuid::now_v7()),
            StatusCode::NOT_FOUND,
            "does not exist",
        ),
        (
            "unknown route",
            "/api/v1/nothing-here",
            StatusCode::NOT_FOUND,
            "/api/v1/nothing-here",
        ),
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_problem(response, status, needle, case).await;
    }
    let response = app
        .client
        .delete(app.url("/api/v1/campaigns"))
        .send()
        .await
        .unwrap();
    assert_problem(
        response,
        StatusCode::METHOD_NOT_ALLOWED,
        "does not accept",
        "wrong method",
    )
    .await;

    // Nothing partial: still one campaign, still one recipient on it.
    assert_eq!(app.campaign_count().await, 1);
    let (_, status) = app
        .get_json(&format!("/api/v1/campaigns/{id}/status"))
        .await;
    assert_eq!(status["recipients"], 1);
    assert_eq!(status["deliveries"]["pending"], 1);
}

async fn campaigns_page_with_a_cursor(app: TestApp) {
    for _ in 0..3 {
        app.create_sample().await;
    }
    let (_, first) = app.get_json("/api/v1/campaigns?limit=2").await;
    assert_eq!(first["items"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap();
    let (_, second) = app
        .get_json(&format!("/api/v1/campaigns?limit=2&before={cursor}"))
        .await;
    assert_eq!(second["items"].as_array().unwrap().len(), 1);
    assert!(second.get("next_cursor").is_none());
    assert_ne!(second["items"][0]["id"], first["items"][0]["id"]);
    assert_ne!(second["items"][0]["id"], first["items"][1]["id"]);
}

async fn templates_are_checked_at_creation_and_previewed(app: TestApp) {
    let mut broken = sample_campaign();
    broken["templates"]["html"] = json!("<p>Hello</p>\n<p>{{ first_name </p>");
    let response = app.post_json("/api/v1/campaigns", &broken).await;
    let body = assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "templates.html: line 2, column",
        "syntax error",
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "templates.html");

    let mut strict = sample_campaign();
    strict["templates"]["undefined_variables"] = json!("strict");
    strict["templates"]["text"] =
        json!("Hi {{ first_name }}, your code is {{ coupon }}.\n{{ unsubscribe_url }}");
    strict["templates"]["html"] = json!(
        "<p>Hello {{ first_name }}</p>\n<p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p>"
    );
    strict["recipients"] = json!([{"email": "ann@example.com", "first_name": "Ann"}]);
    let response = app.post_json("/api/v1/campaigns", &strict).await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "`coupon` is used but no recipient has that field",
        "unknown variable",
    )
    .await;
    assert_eq!(app.campaign_count().await, 0, "nothing stored");

    strict["recipients"] = json!([{"email": "ann@example.com", "first_name": "Ann <script>alert(1)</script>", "coupon": "WINTER-10"}]);
    let created: Value = app
        .post_json("/api/v1/campaigns", &strict)
        .await
        .json()
        .await
        .unwrap();
    assert!(created["campaign"]["id"].is_string(), "{created}");
    let id = created["campaign"]["id"].as_str().unwrap().to_string();
    let (_, deliveries) = app
        .get_json(&format!("/api/v1/campaigns/{id}/deliveries"))
        .await;
    let recipient_id = deliveries["items"][0]["recipient_id"].as_i64().unwrap();
    let response = app
        .post_json(
            &format!("/api/v1/campaigns/{id}/preview"),
            &json!({"recipient_id": recipient_id}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let preview: Value = response.json().await.unwrap();
    assert!(
        preview["subject"]
            .as_str()
            .unwrap()
            .contains("Ann <script>"),
        "the subject is not HTML"
    );
    let html = preview["html"].as_str().unwrap();
    assert!(
        html.contains("Ann &lt;script&gt;") && !html.contains("<script>"),
        "HTML escapes values"
    );
    let text = preview["text"].as_str().unwrap();
    assert!(
        text.contains("WINTER-10") && text.contains("https://mail.example.test/u/"),
        "{text}"
    );
    let eml = preview["eml"].as_str().unwrap();
    assert!(eml.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));

    let inline =
        json!({"recipient": {"email": "bob@example.com", "first_name": "Bob", "coupon": "X1"}});
    let preview: Value = app
        .post_json(&format!("/api/v1/campaigns/{id}/preview"), &inline)
        .await
        .json()
        .await
        .unwrap();
    assert!(preview["text"].as_str().unwrap().contains("X1"));
    let missing = json!({"recipient": {"email": "cid@example.com", "first_name": "Cid"}});
    let response = app
        .post_json(&format!("/api/v1/campaigns/{id}/preview"), &missing)
        .await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "coupon",
        "strict: a missing field fails that recipient",
    )
    .await;
    let response = app
        .post_json(
            &format!("/api/v1/campaigns/{id}/preview"),
            &json!({"recipient_id": 999999}),
        )
        .await;
    assert_problem(
        response,
        StatusCode::NOT_FOUND,
        "has no recipient",
        "unknown recipient",
    )
    .await;
    let response = app
        .post_json(&format!("/api/v1/campaigns/{id}/preview"), &json!({}))
        .await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "exactly one",
        "no recipient",
    )
    .await;
}

/// A campaign's `max_rate` is kept with its document; one that is not a rate from 0.001 to
/// 1,000,000 messages per second is a 422 naming `max_rate`, and nothing is stored.
async fn max_rate_is_kept_or_refused_naming_the_field(app: TestApp) {
    for bad in [json!(0), json!(-1), json!(2e6)] {
        let mut campaign = sample_campaign();
        campaign["max_rate"] = bad.clone();
        let response = app.post_json("/api/v1/campaigns", &campaign).await;
        let body = assert_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "max_rate: must be a number of messages per second",
            "bad max_rate",
        )
        .await;
        assert_eq!(body["errors"][0]["field"], "max_rate", "{bad}");
    }
    assert_eq!(app.campaign_count().await, 0, "nothing stored");
    let mut campaign = sample_campaign();
    campaign["max_rate"] = json!(12.5);
    let id = app.create_campaign(&campaign).await;
    let (_, read) = app.get_json(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(read["document"]["max_rate"], 12.5, "{read}");
}

/// The mailbox-provider headers a campaign names (List-Id, a mailto: List-Unsubscribe, a
/// Feedback-ID) are kept with it and written into the message it sends (here: its preview);
/// a List-Id that is not domain-like is a 422 naming the field, and nothing is stored.
async fn provider_headers_are_kept_and_reach_the_message(app: TestApp) {
    let mut bad = sample_campaign();
    bad["list_id"] = json!({"name": "Riverside Books news", "id": "riverside books"});
    let response = app.post_json("/api/v1/campaigns", &bad).await;
    let body = assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "list_id.id: must be domain-like",
        "bad list_id",
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "list_id.id");
    assert_eq!(app.campaign_count().await, 0, "nothing stored");

    let mut campaign = sample_campaign();
    campaign["list_id"] =
        json!({"name": "Riverside Books news", "id": "news.riverside-books.example"});
    campaign["unsubscribe_mailto"] = json!("leave@riverside-books.example");
    campaign["feedback_id"] = json!("riverside-books");
    campaign["recipients"] = json!([{"email": "ann@example.com", "first_name": "Ann"}]);
    let id = app.create_campaign(&campaign).await;
    let (_, deliveries) = app
        .get_json(&format!("/api/v1/campaigns/{id}/deliveries"))
        .await;
    let recipient_id = deliveries["items"][0]["recipient_id"].as_i64().unwrap();
    let preview: Value = app
        .post_json(
            &format!("/api/v1/campaigns/{id}/preview"),
            &json!({"recipient_id": recipient_id}),
        )
        .await
        .json()
        .await
        .unwrap();
    let eml = preview["eml"].as_str().unwrap();
    let parsed = mail_parser::MessageParser::default()
        .parse(eml.as_bytes())
        .unwrap();
    let list_id = parsed
        .list_id()
        .as_address()
        .and_then(|a| a.first())
        .unwrap();
    assert_eq!(list_id.name(), Some("Riverside Books news"), "{eml}");
    assert_eq!(list_id.address(), Some("news.riverside-books.example"));
    let links: Vec<&str> = parsed
        .list_unsubscribe()
        .as_address()
        .unwrap()
        .iter()
        .filter_map(|link| link.address())
        .collect();
    assert_eq!(links.len(), 2, "{eml}");
    assert!(links[0].starts_with("https://"), "{links:?}");
    assert!(
        links[1].starts_with(
            "mailto:leave@riverside-books.example?subject=unsubscribe&body=https:%2F%2F"
        ),
        "{links:?}"
    );
    assert_eq!(
        parsed.header_raw("Feedback-ID").map(str::trim),
        Some(format!("{id}:riverside-books").as_str())
    );
}

/// A filter argument that can never work, written as a literal, is refused at creation naming
/// the template; one taken from a recipient's field fails that recipient's preview or test
/// send with a problem, never a dropped connection.
async fn filter_arguments_are_checked_at_creation_and_per_recipient(app: TestApp) {
    for (part, template, needle) in [
        (
            "html",
            "<p>Hi</p>\n<p>{{ total|number(70000) }}</p>",
            "templates.html: line 2, column 20: number: decimals must be a whole number from 0 to 20, not 70000",
        ),
        (
            "subject",
            "Your {{ total|currency('EURO') }}",
            "templates.subject: line 1, column 24: currency: the currency must be a three-letter ISO 4217 code",
        ),
        (
            "text",
            "{{ total|number(2, thousands='0123456789') }}\n{{ unsubscribe_url }}",
            "templates.text: line 1, column 30: number: thousands must be a string of at most 8 characters",
        ),
    ] {
        let mut document = sample_campaign();
        document["templates"][part] = json!(template);
        let response = app.post_json("/api/v1/campaigns", &document).await;
        let body = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, needle, part).await;
        assert_eq!(body["errors"][0]["field"], format!("templates.{part}"));
    }
    assert_eq!(app.campaign_count().await, 0, "nothing stored");

    let mut document = sample_campaign();
    document["templates"]["undefined_variables"] = json!("lenient");
    document["templates"]["text"] =
        json!("Total: {{ total|number(decimals) }}\n{{ unsubscribe_url }}\n");
    let response = app.post_json("/api/v1/campaigns", &document).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    let id = created["campaign"]["id"].as_str().unwrap().to_string();
    let preview = format!("/api/v1/campaigns/{id}/preview");
    let fine = json!({"recipient": {"email": "ann@example.com", "total": "1234.5", "decimals": 1}});
    let response = app.post_json(&preview, &fine).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["text"].as_str().unwrap().contains("Total: 1,234.5\n"),
        "{body}"
    );
    for decimals in [json!(70000), json!(4294967296u64), json!(-1), json!("many")] {
        let poison =
            json!({"recipient": {"email": "bob@example.com", "total": 1, "decimals": decimals}});
        assert_problem(
            app.post_json(&preview, &poison).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "number: decimals must be a whole number from 0 to 20",
            "preview",
        )
        .await;
    }

    let Some(sink) = testkit::smtp::SmtpSink::start() else {
        return;
    };
    let transport = delivery::transport_from_config(&delivery::TransportConfig {
        smtp_url: Some(sink.url()),
        connections: 1,
        ..delivery::TransportConfig::default()
    })
    .unwrap();
    let with_transport = api::AppState {
        transport: Some(transport),
        ..app.state.clone()
    };
    let address = serve(with_transport).await;
    let response = app
        .client
        .post(format!("http://{address}/api/v1/campaigns/{id}/test"))
        .json(&json!({"addresses": ["qa@example.com"], "fields": {"total": 1, "decimals": 70000}}))
        .send()
        .await
        .unwrap();
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "fields: text template, line 1: number: decimals must be a whole number from 0 to 20",
        "test send",
    )
    .await;
    assert_eq!(sink.counters().messages, 0, "nothing sent");
}

testkit::backend_suite! {
    #[tokio::test] with_app => [
        sample_campaign_with_csv_recipients_reports_its_status,
        a_local_send_time_is_validated_reported_and_shown_per_zone,
        malformed_requests_get_problems_and_store_nothing,
        campaigns_page_with_a_cursor,
        templates_are_checked_at_creation_and_previewed,
        provider_headers_are_kept_and_reach_the_message,
        max_rate_is_kept_or_refused_naming_the_field,
        filter_arguments_are_checked_at_creation_and_per_recipient,
    ];
}
