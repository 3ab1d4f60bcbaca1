//! Recipient uploads in every format (`POST /api/v1/campaigns/{id}/recipients`): JSON Lines
//! and JSON arrays are parsed as the body arrives, so they are bounded by the upload limits
//! (MAX_IMPORT_BYTES, MAX_RECIPIENTS_PER_REQUEST), not by the JSON body limit, and a bad row
//! is named by its position and line. Run on both backends.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// The app with limits small enough to cross in a test: a JSON body may be 16 KiB, an upload
/// 256 KiB and 3,000 recipients.
async fn with_upload_limits(app: &TestApp) -> TestApp {
    app.with_settings(|settings| {
        settings.max_body_bytes = 16 * 1024;
        settings.max_import_bytes = 256 * 1024;
        settings.max_recipients_per_request = 3000;
        settings.rate_limit = None;
    })
    .await
}

impl TestApp {
    /// A new draft campaign (the sample, without recipients); returns its recipients path.
    async fn campaign_without_recipients(&self) -> String {
        let mut campaign = sample_campaign();
        campaign["recipients"] = json!([]);
        let response = self.post_json("/api/v1/campaigns", &campaign).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let created: Value = response.json().await.unwrap();
        format!(
            "/api/v1/campaigns/{}/recipients",
            created["campaign"]["id"].as_str().unwrap()
        )
    }

    async fn upload(&self, path: &str, content_type: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let response = self.post_bytes(path, content_type, body).await;
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    async fn recipient_count(&self, recipients_path: &str) -> u64 {
        let status_path = recipients_path.replace("/recipients", "/status");
        let (_, status) = self.get_json(&status_path).await;
        status["recipients"].as_u64().expect("a recipient count")
    }
}

fn json_lines(count: usize, prefix: &str) -> Vec<u8> {
    (0..count)
        .map(|i| format!("{{\"email\": \"{prefix}{i}@example.com\", \"first_name\": \"N{i}\"}}\n"))
        .collect::<String>()
        .into_bytes()
}

fn json_array(count: usize, prefix: &str) -> Vec<u8> {
    let elements: Vec<Value> = (0..count)
        .map(
            |i| json!({"email": format!("{prefix}{i}@example.com"), "first_name": format!("N{i}")}),
        )
        .collect();
    serde_json::to_vec_pretty(&elements).unwrap()
}

async fn json_lines_are_imported_under_either_media_type(app: TestApp) {
    let app = with_upload_limits(&app).await;
    let path = app.campaign_without_recipients().await;
    let body = "{\"email\": \"ann@example.com\", \"first_name\": \"Ann\", \"orders\": [{\"sku\": \"A1\"}]}\r\n\n{\"email\": \"bob@example.org\"}\n{\"email\": \"cid@example.com\"}";
    let (status, report) = app
        .upload(&path, "application/x-ndjson", body.as_bytes().to_vec())
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        (report["received"].as_u64(), report["imported"].as_u64()),
        (Some(3), Some(3))
    );

    let again = "{\"email\": \"BOB@example.org\"}\n{\"email\": \"dee@example.com\"}\n";
    let (status, report) = app
        .upload(
            &path,
            "application/jsonl; charset=utf-8",
            again.as_bytes().to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        (
            report["imported"].as_u64(),
            report["duplicate_rows"].clone()
        ),
        (Some(1), json!([{"row": 1, "email": "BOB@example.org"}]))
    );
    assert_eq!(app.recipient_count(&path).await, 4);
}

async fn a_bad_line_or_element_is_named_and_nothing_is_stored(app: TestApp) {
    let app = with_upload_limits(&app).await;
    let path = app.campaign_without_recipients().await;
    let mut body = json_lines(3, "good");
    body.extend_from_slice(b"\n{\"email\": 7}\n{\"email\": \"x@example.com\", \"a\": }\n");
    let (status, problem) = app.upload(&path, "application/x-ndjson", body).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["type"], "/problems/invalid-recipients", "{problem}");
    assert_eq!(
        problem["errors"][0],
        json!({"row": 4, "line": 5, "column": "email", "message": "`email` must be a string, got a number"})
    );
    assert_eq!(
        (
            problem["errors"][1]["row"].as_u64(),
            problem["errors"][1]["line"].as_u64()
        ),
        (Some(5), Some(6))
    );
    assert!(
        problem["errors"][1]["message"]
            .as_str()
            .unwrap()
            .contains("malformed JSON at column 33"),
        "{problem}"
    );

    let array = br#"[
  {"email": "ann@example.com"},
  {"email": "bob@example.com", "first_name": "Bob",
   "city": {"name": "Lyon"}, "email_2": 1, "x": [}
]"#;
    let (status, problem) = app.upload(&path, "application/json", array.to_vec()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let row = &problem["errors"][0];
    assert_eq!(
        (row["row"].as_u64(), row["line"].as_u64()),
        (Some(2), Some(4)),
        "{problem}"
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("row 2 (line 4): malformed JSON"),
        "{problem}"
    );

    let (status, problem) = app
        .upload(
            &path,
            "application/json",
            b"{\"email\": \"ann@example.com\"}\n".to_vec(),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "json", "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains(".jsonl"),
        "{problem}"
    );
    assert_eq!(app.recipient_count(&path).await, 0, "nothing was imported");
}

async fn json_uploads_are_bounded_by_the_upload_limits_not_the_body_limit(app: TestApp) {
    let app = with_upload_limits(&app).await;
    let path = app.campaign_without_recipients().await;
    // Both far above the 16 KiB JSON body limit, below the 256 KiB upload limit.
    let array = json_array(2000, "array");
    assert!(
        array.len() > 100 * 1024 && array.len() < 256 * 1024,
        "{}",
        array.len()
    );
    let (status, report) = app.upload(&path, "application/json", array).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["imported"], 2000);
    let (status, report) = app
        .upload(&path, "application/x-ndjson", json_lines(2500, "lines"))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["imported"], 2500);

    // Fewer rows than the 3,000 allowed, more bytes than the 256 KiB.
    let too_large = serde_json::to_vec(
        &(0..2900)
            .map(|i| json!({"email": format!("big{i}@example.com"), "note": "x".repeat(100)}))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let (status, problem) = app.upload(&path, "application/json", too_large).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("at most 262144 bytes"),
        "{problem}"
    );
    let (status, problem) = app
        .upload(&path, "application/x-ndjson", json_lines(3001, "many"))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("at most 3000 recipients"),
        "{problem}"
    );
    assert_eq!(
        app.recipient_count(&path).await,
        4500,
        "the refused uploads added nothing"
    );
}

testkit::backend_suite! {
    #[tokio::test] with_app => [
        json_lines_are_imported_under_either_media_type,
        a_bad_line_or_element_is_named_and_nothing_is_stored,
        json_uploads_are_bounded_by_the_upload_limits_not_the_body_limit,
    ];
}
