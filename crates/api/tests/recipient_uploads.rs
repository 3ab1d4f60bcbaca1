//! Recipient uploads in every format (`POST /api/v1/campaigns/{id}/recipients`): JSON Lines
//! and JSON arrays are parsed as the body arrives, so they are bounded by the upload limits
//! (MAX_IMPORT_BYTES, MAX_RECIPIENTS_PER_REQUEST), not by the JSON body limit, and a bad row
//! is named by its position and line. Run on both backends.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::any::Any;

struct TestApp {
    base: String,
    client: reqwest::Client,
    _database: Box<dyn Any + Send>,
}

/// Limits small enough to cross in a test: a JSON body may be 16 KiB, an upload 256 KiB and
/// 3,000 recipients.
fn settings() -> api::ApiSettings {
    api::ApiSettings {
        max_body_bytes: 16 * 1024,
        max_import_bytes: 256 * 1024,
        max_recipients_per_request: 3000,
        rate_limit: None,
        ..api::ApiSettings::default()
    }
}

async fn spawn_app(database_url: &str, database: Box<dyn Any + Send>) -> TestApp {
    let store = store::connect(database_url).await.expect("store opens");
    let keys = tracking::TokenKeys::new(b"test-secret-that-is-at-least-32-bytes", []).unwrap();
    let state = api::AppState {
        dkim: None,
        store: store.clone(),
        tasks: tasks::connect(database_url).await.expect("tasks open"),
        settings: settings(),
        links: std::sync::Arc::new(tracking::Links::new(
            "https://mail.example.test",
            keys.clone(),
        )),
        message_settings: message::MessageSettings::default(),
        transport: None,
        engagement: tracking::Engagement::start(
            store.clone(),
            keys,
            webhooks::EventSink::disabled(),
        ),
        bounces: api::bounces::BounceSettings {
            webhook_secret: None,
            soft_bounce_limit: 2,
            soft_bounce_window: time::Duration::hours(1),
        },
        events: webhooks::EventSink::disabled(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            api::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
    });
    let key = api::auth::create_api_key(store.as_ref(), "tests")
        .await
        .unwrap()
        .key;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
    TestApp {
        base: format!("http://{address}"),
        client: reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap(),
        _database: database,
    }
}

impl TestApp {
    /// A new draft campaign (the sample, without recipients); returns its recipients path.
    async fn campaign(&self) -> String {
        let mut campaign: Value = serde_json::from_slice(
            &std::fs::read(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../examples/sample_campaign.json"
            ))
            .unwrap(),
        )
        .unwrap();
        campaign["recipients"] = json!([]);
        let response = self
            .client
            .post(format!("{}/api/v1/campaigns", self.base))
            .json(&campaign)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let created: Value = response.json().await.unwrap();
        format!(
            "/api/v1/campaigns/{}/recipients",
            created["campaign"]["id"].as_str().unwrap()
        )
    }

    async fn upload(&self, path: &str, content_type: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    async fn recipient_count(&self, recipients_path: &str) -> u64 {
        let status_path = recipients_path.replace("/recipients", "/status");
        let status: Value = self
            .client
            .get(format!("{}{status_path}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
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
    let path = app.campaign().await;
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
    let path = app.campaign().await;
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
    let path = app.campaign().await;
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

macro_rules! upload_suite {
    ($backend:ident, $open:expr) => {
        mod $backend {
            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test]
                    async fn $name() {
                        #[allow(clippy::redundant_closure_call)]
                        let Some(app) = ($open)().await else { return };
                        super::$name(app).await;
                    }
                };
            }
            case!(json_lines_are_imported_under_either_media_type);
            case!(a_bad_line_or_element_is_named_and_nothing_is_stored);
            case!(json_uploads_are_bounded_by_the_upload_limits_not_the_body_limit);
        }
    };
}

upload_suite!(sqlite, || async {
    let database = testkit::SqliteDatabase::create();
    let url = database.url.clone();
    Some(super::spawn_app(&url, Box::new(database)).await)
});

upload_suite!(postgres, || async {
    let database = testkit::PostgresDatabase::create().await?;
    let url = database.url.clone();
    Some(super::spawn_app(&url, Box::new(database)).await)
});
