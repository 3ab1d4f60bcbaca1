//! Importing recipients (CSV and inline): deduplication, limits per request, field and row
//! sizes, one mailbox under its spellings, display names.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn inline_recipients_are_deduplicated_and_reported(app: TestApp) {
    let mut campaign = sample_campaign();
    campaign["recipients"] = json!([
        {"email": "ann@example.com", "first_name": "Ann"},
        {"email": "Ann@Example.com", "first_name": "Ann again"},
        {"email": "bob@example.com", "first_name": "Bob"}
    ]);
    let response = app.post_json("/api/v1/campaigns", &campaign).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_string();
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["recipients"]["imported"], 2);
    assert_eq!(
        created["recipients"]["duplicate_rows"],
        json!([{"row": 2, "email": "Ann@Example.com"}])
    );
    let (status, body) = app.get_json(&format!("{location}/status")).await;
    assert_eq!(
        (status, body["recipients"].as_i64()),
        (StatusCode::OK, Some(2))
    );
}

async fn a_request_adding_too_many_recipients_is_refused_whole(app: TestApp) {
    let limited = app
        .with_settings(|settings| settings.max_recipients_per_request = 3)
        .await;
    let addresses = |n: usize| -> Vec<Value> {
        (0..n)
            .map(|i| json!({"email": format!("limit{i}@example.com"), "first_name": "Ann"}))
            .collect()
    };
    let mut campaign = sample_campaign();
    campaign["recipients"] = json!(addresses(4));
    let before = app.campaign_count().await;
    let refused = limited.post_json("/api/v1/campaigns", &campaign).await;
    assert_problem(
        refused,
        StatusCode::PAYLOAD_TOO_LARGE,
        "MAX_RECIPIENTS_PER_REQUEST",
        "four inline recipients",
    )
    .await;
    assert_eq!(
        app.campaign_count().await,
        before,
        "no campaign was created"
    );

    campaign["recipients"] = json!([]);
    let id = limited.create_campaign(&campaign).await;
    let path = format!("/api/v1/campaigns/{id}/recipients");
    let refused = limited.post_json(&path, &json!(addresses(4))).await;
    assert_problem(
        refused,
        StatusCode::PAYLOAD_TOO_LARGE,
        "at most 3 recipients",
        "a JSON array of four",
    )
    .await;
    let csv = |n: usize| {
        let mut body = String::from("email,first_name\n");
        for i in 0..n {
            body.push_str(&format!("limit{i}@example.com,Ann\n"));
        }
        body.into_bytes()
    };
    let refused = limited.post_bytes(&path, "text/csv", csv(5)).await;
    assert_problem(
        refused,
        StatusCode::PAYLOAD_TOO_LARGE,
        "nothing was imported",
        "a CSV of five rows",
    )
    .await;
    let (_, status) = app
        .get_json(&format!("/api/v1/campaigns/{id}/status"))
        .await;
    assert_eq!(status["recipients"], 0, "nothing was imported: {status}");

    let accepted = limited.post_bytes(&path, "text/csv", csv(3)).await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let report: Value = accepted.json().await.unwrap();
    assert_eq!(report["imported"], 3);
}

/// A recipient field over 64 KiB or a row over 256 KiB is refused in every import path,
/// naming row and column, and nothing is imported.
async fn oversized_recipient_fields_and_rows_are_refused_whole(app: TestApp) {
    let field = "x".repeat(64 * 1024 + 1);
    let near = "y".repeat(60 * 1024);
    let before = app.campaign_count().await;

    let mut campaign = sample_campaign();
    campaign["recipients"] = json!([
        {"email": "fine@example.com", "first_name": "Ann"},
        {"email": "big@example.com", "first_name": "Bob", "notes": field},
    ]);
    let body = assert_problem(
        app.post_json("/api/v1/campaigns", &campaign).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "field `notes` is 65537 bytes",
        "inline field",
    )
    .await;
    assert_eq!(body["errors"][0]["field"], "recipients[1]", "{body}");
    campaign["recipients"] = json!([
        {"email": "wide@example.com", "first_name": "Ann",
         "a": near, "b": near, "c": near, "d": near, "e": near},
    ]);
    assert_problem(
        app.post_json("/api/v1/campaigns", &campaign).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a recipient row may be at most 262144 bytes",
        "inline row",
    )
    .await;
    assert_eq!(
        app.campaign_count().await,
        before,
        "no campaign was created"
    );

    let created = app.create_sample().await;
    let id = created["campaign"]["id"].as_str().unwrap().to_string();
    let path = format!("/api/v1/campaigns/{id}/recipients");
    let status_path = format!("/api/v1/campaigns/{id}/status");
    let (_, status) = app.get_json(&status_path).await;
    let recipients_before = status["recipients"].clone();

    let upload = json!([
        {"email": "one@example.com", "first_name": "Ann"},
        {"email": "two@example.com", "first_name": field},
    ]);
    let body = assert_problem(
        app.post_json(&path, &upload).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "field `first_name` is 65537 bytes",
        "JSON array field",
    )
    .await;
    assert_eq!(
        (&body["errors"][0]["row"], &body["errors"][0]["column"]),
        (&json!(2), &json!("first_name")),
        "{body}"
    );

    let csv =
        format!("email,first_name,notes\none@example.com,Ann,short\ntwo@example.com,Bob,{field}\n");
    let body = assert_problem(
        app.post_bytes(&path, "text/csv", csv.into_bytes()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "",
        "CSV field",
    )
    .await;
    let row = &body["errors"][0];
    assert_eq!(
        (row["row"].as_u64(), row["line"].as_u64()),
        (Some(2), Some(3)),
        "{body}"
    );
    assert_eq!(row["column"], "notes", "{body}");
    assert!(
        row["message"].as_str().unwrap().contains("64 KiB"),
        "{body}"
    );

    let csv = format!(
        "email,first_name,a,b,c,d,e\none@example.com,Ann,{near},{near},{near},{near},{near}\n"
    );
    let body = assert_problem(
        app.post_bytes(&path, "text/csv", csv.into_bytes()).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "",
        "CSV row",
    )
    .await;
    let row = &body["errors"][0];
    assert_eq!(row["row"], 1, "{body}");
    assert!(
        row["message"].as_str().unwrap().contains("256 KiB"),
        "{body}"
    );

    let (_, status) = app.get_json(&status_path).await;
    assert_eq!(
        status["recipients"], recipients_before,
        "nothing was imported"
    );
}

/// One mailbox under its spellings (U-label or A-label domain, any case, NFC or NFD local
/// part) is one recipient and one suppression: the duplicate is reported at import, and the
/// suppressed mailbox is never sent to, whatever spelling the list holds.
async fn look_alike_spellings_are_one_mailbox_for_imports_and_suppression(app: TestApp) {
    let Some(sink) = testkit::smtp::Aiosmtpd::start() else {
        return;
    };
    let transport = delivery::transport_from_config(&delivery::TransportConfig {
        smtp_url: Some(sink.url()),
        ..delivery::TransportConfig::default()
    })
    .expect("SMTP transport");
    let worker = TestWorker::start(&app, transport);

    for email in ["idn@xn--bcher-kva.example", "jose\u{301}@example.com"] {
        let response = app
            .post_json(
                "/api/v1/suppressions",
                &json!({"email": email, "reason": "manual"}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT, "{email}");
    }
    let mut campaign = sample_campaign();
    campaign["recipients"] = json!([
        {"email": "idn@bücher.example", "first_name": "U-label"},
        {"email": "IDN@XN--BCHER-KVA.EXAMPLE", "first_name": "A-label"},
        {"email": "reader@Bücher.example", "first_name": "Reader"},
        {"email": "JOSÉ@example.com", "first_name": "José"}
    ]);
    let response = app.post_json("/api/v1/campaigns", &campaign).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["recipients"]["imported"], 3);
    assert_eq!(
        created["recipients"]["duplicate_rows"],
        json!([{"row": 2, "email": "IDN@XN--BCHER-KVA.EXAMPLE"}])
    );
    let id = created["campaign"]["id"].as_str().unwrap().to_string();
    // A later import under yet another spelling is a duplicate too.
    let response = app
        .post_json(
            &format!("/api/v1/campaigns/{id}/recipients"),
            &json!([{"email": "Reader@xn--BCHER-kva.example"}, {"email": "new@bücher.example"}]),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let report: Value = response.json().await.unwrap();
    assert_eq!(
        (report["imported"].as_u64(), report["duplicates"].as_u64()),
        (Some(1), Some(1)),
        "{report}"
    );

    send_existing_and_wait(&app, &id).await;
    let mut arrived: Vec<String> = sink.messages().iter().map(|m| recipient_of(m)).collect();
    arrived.sort();
    assert_eq!(
        arrived,
        ["new@xn--bcher-kva.example", "reader@xn--bcher-kva.example"],
        "the suppressed mailboxes (idn@, josé@) got nothing"
    );
    let (_, status) = app
        .get_json(&format!("/api/v1/campaigns/{id}/status"))
        .await;
    assert_eq!(status["deliveries"]["suppressed"], 2, "{status}");
    // Removing the suppression under another spelling removes it.
    let response = app
        .client
        .delete(app.url("/api/v1/suppressions/IDN@b%C3%BCcher.example"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    worker.stop().await;
}

/// A display name past 200 characters, and an address holding an invisible or
/// text-direction character, are refused naming the field; nothing is stored.
async fn long_display_names_and_invisible_characters_are_refused(app: TestApp) {
    let before = app.campaign_count().await;
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut campaign = sample_campaign();
        edit(&mut campaign);
        campaign
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "from.name of 5,000 characters",
            with(&|v| v["from"]["name"] = json!("N".repeat(5_000))),
            "from.name",
        ),
        (
            "reply_to.name of 100,000 characters",
            with(&|v| {
                v["reply_to"] = json!({"email": "help@example.com", "name": "é ".repeat(50_000)})
            }),
            "reply_to.name",
        ),
        (
            "U+202E in the sender's address",
            with(&|v| v["from"]["email"] = json!("news\u{202E}moc.evil@example.com")),
            "from.email",
        ),
        (
            "U+200B in a recipient's address",
            with(&|v| v["recipients"] = json!([{"email": "ann\u{200B}@example.com"}])),
            "recipients[0]",
        ),
    ];
    for (case, campaign, field) in cases {
        let response = app.post_json("/api/v1/campaigns", &campaign).await;
        let body = assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, field, case).await;
        let fields: Vec<&Value> = body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| &e["field"])
            .collect();
        assert_eq!(fields, [field], "{case}: {body}");
    }
    assert_eq!(app.campaign_count().await, before, "nothing stored");

    let response = app
        .post_json(
            "/api/v1/suppressions",
            &json!({"email": "ann\u{202E}@example.com"}),
        )
        .await;
    let body = assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "U+202E",
        "U+202E in a suppression",
    )
    .await;
    assert!(body.to_string().contains("email"), "{body}");
    let (_, all) = app.get_json("/api/v1/suppressions").await;
    assert_eq!(all["items"], json!([]));
}

testkit::backend_suite! {
    #[tokio::test] with_app => [
        inline_recipients_are_deduplicated_and_reported,
        a_request_adding_too_many_recipients_is_refused_whole,
        oversized_recipient_fields_and_rows_are_refused_whole,
        look_alike_spellings_are_one_mailbox_for_imports_and_suppression,
        long_display_names_and_invisible_characters_are_refused,
    ];
}
