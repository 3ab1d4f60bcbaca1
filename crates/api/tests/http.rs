//! The API over real HTTP, on both stores: the app is started on port 0 exactly as the
//! binary starts it, and driven with an HTTP client.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::any::Any;

struct TestApp {
    base: String,
    /// Sends a valid API key with every request.
    client: reqwest::Client,
    store: std::sync::Arc<dyn store::CampaignStore>,
    /// What the app was started with, to start another on the same database.
    state: api::AppState,
    key: String,
    /// The database, for another app instance (its own store and pool) on it.
    database_url: String,
    _database: Box<dyn Any + Send>,
}

const BOUNCE_SECRET: &str = "bounce-secret-for-tests";

async fn spawn_app(database_url: &str, database: Box<dyn Any + Send>) -> TestApp {
    let store = store::connect(database_url).await.expect("store opens");
    let keys = tracking::TokenKeys::new(b"test-secret-that-is-at-least-32-bytes", []).unwrap();
    let tasks = tasks::connect(database_url)
        .await
        .expect("task repository opens");
    let state = api::AppState {
        dkim: None,
        store: store.clone(),
        tasks,
        settings: api::ApiSettings::default(),
        links: std::sync::Arc::new(tracking::Links::new(
            "https://mail.example.test",
            keys.clone(),
        )),
        message_settings: message::MessageSettings::default(),
        transport: None,
        engagement: tracking::Engagement::start(
            store.clone(),
            keys.clone(),
            webhooks::EventSink::disabled(),
        ),
        bounces: api::bounces::BounceSettings {
            webhook_secret: Some(BOUNCE_SECRET.into()),
            soft_bounce_limit: 2,
            soft_bounce_window: time::Duration::hours(1),
        },
        events: webhooks::EventSink::disabled(),
    };
    let address = serve(state.clone()).await;
    let key = api::auth::create_api_key(store.as_ref(), "tests")
        .await
        .unwrap()
        .key;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
    let key = key.clone();
    TestApp {
        base: format!("http://{address}"),
        client: reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap(),
        store,
        state,
        key,
        database_url: database_url.to_string(),
        _database: database,
    }
}

/// Serves `state` on a free port; returns the address.
async fn serve(state: api::AppState) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            api::router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .await
    });
    address
}

fn example(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../../examples/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn sample_campaign() -> Value {
    serde_json::from_slice(&example("sample_campaign.json")).unwrap()
}

impl TestApp {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    async fn post_bytes(&self, path: &str, content_type: &str, body: Vec<u8>) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    async fn create_sample(&self) -> Value {
        let response = self
            .post_json("/api/v1/campaigns", &sample_campaign())
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    async fn campaign_count(&self) -> usize {
        let (_, list) = self.get_json("/api/v1/campaigns?limit=500").await;
        list["items"].as_array().unwrap().len()
    }
}

/// Asserts a problem+json answer with this status whose detail mentions `needle`.
async fn assert_problem(
    response: reqwest::Response,
    status: StatusCode,
    needle: &str,
    case: &str,
) -> Value {
    assert_eq!(response.status(), status, "{case}");
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(content_type, "application/problem+json", "{case}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16(), "{case}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(needle),
        "{case}: detail {detail:?} should mention {needle:?}"
    );
    body
}

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
            "[1]",
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

/// Every operation of the live OpenAPI document as (method, path template, needs an API key),
/// so a new route cannot be left out of the authentication tests.
async fn documented_routes(app: &TestApp) -> Vec<(String, String, bool)> {
    let document: Value = reqwest::get(app.url("/api/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut routes = Vec::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            let protected = operation.get("security").is_some();
            routes.push((method.to_uppercase(), path.clone(), protected));
        }
    }
    routes
}

/// Every route the OpenAPI document says needs an API key, with a concrete path.
async fn protected_routes(app: &TestApp) -> Vec<(String, String)> {
    documented_routes(app)
        .await
        .into_iter()
        .filter(|(_, _, protected)| *protected)
        .map(|(method, path, _)| {
            let concrete = path
                .replace("{id}", "0190b2a0-0000-7000-8000-000000000000")
                .replace("{email}", "someone@example.com");
            (method, concrete)
        })
        .collect()
}

/// The routes served without an API key on purpose: those recipients' mail clients reach,
/// and the bounce intake (its own secret).
const PUBLIC_ROUTES: [&str; 5] = [
    "POST /api/v1/bounces",
    "GET /t/o/{token}",
    "GET /t/c/{token}",
    "GET /u/{token}",
    "POST /u/{token}",
];

/// Every route the OpenAPI document describes without the API key.
async fn public_routes(app: &TestApp) -> Vec<(String, String)> {
    documented_routes(app)
        .await
        .into_iter()
        .filter(|(_, _, protected)| !*protected)
        .map(|(method, path, _)| (method, path))
        .collect()
}

async fn the_openapi_document_describes_every_route(app: TestApp) {
    let response = reqwest::get(app.url("/api/v1/openapi.json")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let document: Value = response.json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let mut described: Vec<String> = Vec::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for (method, operation) in operations.as_object().unwrap() {
            described.push(format!("{} {path}", method.to_uppercase()));
            let responses = operation["responses"].as_object().unwrap();
            // The public engagement routes (no API key) have no 401 or 422 to describe.
            let problems: &[&str] = if operation.get("security").is_some() {
                &["401", "404", "422"]
            } else {
                assert!(
                    PUBLIC_ROUTES.contains(&format!("{} {path}", method.to_uppercase()).as_str()),
                    "{method} {path} is served without an API key"
                );
                &["404"]
            };
            for status in problems {
                let status = *status;
                let problem = &responses[status]["content"]["application/problem+json"];
                assert!(
                    problem.is_object(),
                    "{method} {path} describes {status} as problem+json"
                );
            }
        }
    }
    described.sort();
    let mut expected = [
        "DELETE /api/v1/campaigns/{id}/schedule",
        "GET /api/v1/campaigns",
        "GET /api/v1/campaigns/{id}",
        "GET /api/v1/campaigns/{id}/deliveries",
        "GET /api/v1/campaigns/{id}/analytics",
        "GET /api/v1/campaigns/{id}/status",
        "POST /api/v1/campaigns",
        "POST /api/v1/campaigns/{id}/cancel",
        "POST /api/v1/campaigns/{id}/pause",
        "POST /api/v1/campaigns/{id}/preview",
        "POST /api/v1/campaigns/{id}/recipients",
        "POST /api/v1/campaigns/{id}/resume",
        "POST /api/v1/campaigns/{id}/schedule",
        "POST /api/v1/campaigns/{id}/send",
        "POST /api/v1/campaigns/{id}/test",
        "POST /api/v1/campaigns/{id}/retry-failed",
        "POST /api/v1/bounces",
        "DELETE /api/v1/suppressions/{email}",
        "GET /api/v1/suppressions",
        "POST /api/v1/suppressions",
        "GET /t/o/{token}",
        "GET /t/c/{token}",
        "GET /u/{token}",
        "POST /u/{token}",
    ];
    expected.sort();
    assert_eq!(described, expected);
    let schemas = document["components"]["schemas"].as_object().unwrap();
    for schema in [
        "CampaignDocument",
        "ProblemDetails",
        "StatusView",
        "ImportReport",
        "Recipient",
    ] {
        assert!(schemas.contains_key(schema), "{schema} is described");
    }
    let docs = reqwest::get(app.url("/docs")).await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("/api/v1/openapi.json"));
    let bundle = reqwest::get(app.url("/docs/swagger-ui-bundle.js"))
        .await
        .unwrap();
    assert_eq!(bundle.status(), StatusCode::OK);
    assert!(
        bundle.text().await.unwrap().len() > 100_000,
        "the vendored Swagger UI is served"
    );
}

async fn admin_routes_need_a_valid_unrevoked_key(app: TestApp) {
    let anonymous = reqwest::Client::new();
    assert_eq!(protected_routes(&app).await.len(), 19);
    // The routes outside the API key, each with its own authentication.
    let mut public: Vec<String> = public_routes(&app)
        .await
        .into_iter()
        .map(|(method, path)| format!("{method} {path}"))
        .collect();
    public.sort();
    let mut expected_public = PUBLIC_ROUTES.map(str::to_string).to_vec();
    expected_public.sort();
    assert_eq!(public, expected_public);
    let created = api::auth::create_api_key(app.store.as_ref(), "to revoke")
        .await
        .unwrap();
    let (id, secret) = created
        .key
        .trim_start_matches("mbk_")
        .split_once('_')
        .unwrap();
    let forged = format!("mbk_{id}_{}", secret.chars().rev().collect::<String>());
    for (method, path) in protected_routes(&app).await {
        let method: reqwest::Method = method.parse().unwrap();
        let response = anonymous
            .request(method.clone(), app.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer",
            "{method} {path}"
        );
        assert_problem(
            response,
            StatusCode::UNAUTHORIZED,
            "needs an API key",
            &path,
        )
        .await;
        for bad in [
            "Bearer nonsense",
            "Basic dXNlcjpwYXNz",
            &format!("Bearer {forged}"),
        ] {
            let response = anonymous
                .request(method.clone(), app.url(&path))
                .header("authorization", bad)
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {bad}"
            );
        }
    }
    // The created key works until it is revoked, then gets 403.
    let with_key = |key: &str| {
        reqwest::Client::new()
            .get(app.url("/api/v1/campaigns"))
            .header("authorization", format!("Bearer {key}"))
    };
    assert_eq!(
        with_key(&created.key).send().await.unwrap().status(),
        StatusCode::OK
    );
    assert!(app.store.revoke_api_key(id).await.unwrap());
    for (method, path) in protected_routes(&app).await {
        let response = anonymous
            .request(method.parse().unwrap(), app.url(&path))
            .header("authorization", format!("Bearer {}", created.key))
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::FORBIDDEN, "revoked", &path).await;
    }
    // Public routes need no key.
    for path in ["/health", "/ready", "/api/v1/openapi.json", "/docs"] {
        assert_eq!(
            anonymous.get(app.url(path)).send().await.unwrap().status(),
            StatusCode::OK,
            "{path}"
        );
    }
}

async fn scheduling_is_validated_and_controls_are_idempotent(app: TestApp) {
    let created = app.create_sample().await;
    let id = created["campaign"]["id"].as_str().unwrap().to_string();
    let path = |action: &str| format!("/api/v1/campaigns/{id}/{action}");
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    let whole_seconds = (time::OffsetDateTime::now_utc() + time::Duration::days(30))
        .replace_nanosecond(0)
        .unwrap();
    let future = whole_seconds.format(rfc3339).unwrap();

    for (case, body, needle) in [
        (
            "past",
            json!({"scheduled_at": "2020-01-01T00:00:00Z"}),
            "in the past",
        ),
        (
            "no offset",
            json!({"scheduled_at": "2030-01-01T09:00:00"}),
            "no UTC offset",
        ),
        (
            "malformed",
            json!({"scheduled_at": "tomorrow morning"}),
            "not an RFC 3339 time",
        ),
        (
            "wrong field",
            json!({"when": future}),
            "unknown field `when`",
        ),
    ] {
        let response = app.post_json(&path("schedule"), &body).await;
        assert_problem(response, StatusCode::UNPROCESSABLE_ENTITY, needle, case).await;
    }

    let response = app
        .post_json(&path("schedule"), &json!({"scheduled_at": future}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "scheduled");
    let stored =
        time::OffsetDateTime::parse(body["scheduled_at"].as_str().unwrap(), rfc3339).unwrap();
    assert_eq!(
        stored,
        time::OffsetDateTime::parse(&future, rfc3339).unwrap()
    );

    let response = app
        .client
        .delete(app.url(&path("schedule")))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        (body["status"].as_str(), body["scheduled_at"].as_str()),
        (Some("draft"), None)
    );

    // Pausing a draft is impossible; once sending, pause, resume and cancel are idempotent.
    assert_problem(
        app.post_json(&path("pause"), &json!({})).await,
        StatusCode::CONFLICT,
        "is draft",
        "pause a draft",
    )
    .await;
    let uuid: uuid::Uuid = id.parse().unwrap();
    let moved = app
        .store
        .transition_campaign(
            uuid,
            &[campaign::CampaignStatus::Draft],
            campaign::CampaignStatus::Sending,
        )
        .await
        .unwrap();
    assert!(moved);
    let response = app
        .post_json(&path("schedule"), &json!({"scheduled_at": future}))
        .await;
    assert_problem(
        response,
        StatusCode::CONFLICT,
        "is sending",
        "schedule while sending",
    )
    .await;
    for (action, expected) in [
        ("pause", "paused"),
        ("pause", "paused"),
        ("resume", "sending"),
        ("resume", "sending"),
        ("cancel", "cancelled"),
        ("cancel", "cancelled"),
    ] {
        let body: Value = app
            .post_json(&path(action), &json!({}))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(body["status"], expected, "{action}");
    }
    let response = app
        .post_json(&path("schedule"), &json!({"scheduled_at": future}))
        .await;
    assert_problem(
        response,
        StatusCode::CONFLICT,
        "is cancelled",
        "schedule a cancelled campaign",
    )
    .await;
    assert_problem(
        app.post_json(&path("resume"), &json!({})).await,
        StatusCode::CONFLICT,
        "is cancelled",
        "resume cancelled",
    )
    .await;
    let missing = format!("/api/v1/campaigns/{}/cancel", uuid::Uuid::now_v7());
    assert_problem(
        app.post_json(&missing, &json!({})).await,
        StatusCode::NOT_FOUND,
        "does not exist",
        "cancel unknown",
    )
    .await;
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
    let key = include_str!("../../message/tests/fixtures/dkim-test-ed25519.pem");
    for (domain, signed) in [("riverside-books.example", true), ("other.example", false)] {
        let signer = message::DkimSigner::from_pem(key, domain, "sel").unwrap();
        let state = api::AppState {
            transport: Some(transport.clone()),
            dkim: Some(std::sync::Arc::new(signer)),
            ..app.state.clone()
        };
        let address = serve(state).await;
        let before = server.message_count();
        let response = app
            .client
            .post(format!("http://{address}{path}"))
            .json(&json!({"addresses": ["qa@example.com"], "fields": {"first_name": "Tess"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{domain}");
        let messages = server.messages();
        assert_eq!(messages.len(), before + 1, "{domain}");
        let text = String::from_utf8_lossy(messages.last().unwrap()).into_owned();
        let signature = format!("d={domain}; s=sel;");
        assert_eq!(text.contains(&signature), signed, "{domain}: {text}");
        assert_eq!(text.contains("DKIM-Signature:"), signed, "{domain}: {text}");
    }
}

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

/// A scheduled campaign queued late (its processor was down) says so in its status, and by
/// how much; one queued on time does not.
async fn the_status_shows_a_late_start_and_its_delay(app: TestApp) {
    let now = time::OffsetDateTime::now_utc();
    let mut ids = Vec::new();
    for scheduled in [now - time::Duration::seconds(75), now] {
        let created = app.create_sample().await;
        let id: uuid::Uuid = created["campaign"]["id"].as_str().unwrap().parse().unwrap();
        assert!(
            app.store
                .schedule_campaign(id, Some(scheduled))
                .await
                .unwrap()
        );
        ids.push(id);
    }
    let (_, waiting) = app
        .get_json(&format!("/api/v1/campaigns/{}/status", ids[0]))
        .await;
    assert_eq!(waiting["started_late"], false);
    assert!(waiting["start_delay_seconds"].is_null());
    let queued = app.store.queue_due_campaigns(now, 10).await.unwrap();
    assert_eq!(queued.len(), 2);

    let (_, late) = app
        .get_json(&format!("/api/v1/campaigns/{}/status", ids[0]))
        .await;
    assert_eq!(late["status"], "queued");
    assert_eq!(late["started_late"], true);
    let delay = late["start_delay_seconds"].as_f64().unwrap();
    assert!((74.9..75.1).contains(&delay), "{delay}");
    assert!(late["queued_at"].is_string());
    let (_, on_time) = app
        .get_json(&format!("/api/v1/campaigns/{}/status", ids[1]))
        .await;
    assert_eq!(on_time["started_late"], false);
    assert!(on_time["start_delay_seconds"].as_f64().unwrap() < 0.001);
}

async fn an_idempotency_key_creates_once_under_concurrency(app: TestApp) {
    let body = serde_json::to_vec(&sample_campaign()).unwrap();
    let post = |key: &'static str, body: Vec<u8>| {
        app.client
            .post(app.url("/api/v1/campaigns"))
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body)
            .send()
    };
    let responses =
        futures::future::join_all((0..20).map(|_| post("order-42", body.clone()))).await;
    let mut ids = std::collections::HashSet::new();
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let created: Value = response.json().await.unwrap();
        ids.insert(created["campaign"]["id"].as_str().unwrap().to_string());
    }
    assert_eq!(
        ids.len(),
        1,
        "20 concurrent requests with one key answer with one campaign"
    );
    assert_eq!(app.campaign_count().await, 1, "and create exactly one");

    let replay = post("order-42", body.clone()).await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let mut other = sample_campaign();
    other["name"] = json!("Another campaign");
    let response = post("order-42", serde_json::to_vec(&other).unwrap())
        .await
        .unwrap();
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "different request",
        "same key, other body",
    )
    .await;
    // A refused request is remembered too: the same bad body gets the same 422 again.
    let bad = br#"{"name": ""}"#.to_vec();
    for _ in 0..2 {
        let response = post("bad-1", bad.clone()).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
    let response = post("fresh", body).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(app.campaign_count().await, 2);
}

async fn an_idempotency_key_sends_once(app: TestApp) {
    let first = app.create_sample().await;
    let second = app.create_sample().await;
    let (a, b) = (
        first["campaign"]["id"].as_str().unwrap().to_string(),
        second["campaign"]["id"].as_str().unwrap().to_string(),
    );
    let send = |id: &str, key: Option<&'static str>| {
        let mut request = app
            .client
            .post(app.url(&format!("/api/v1/campaigns/{id}/send")));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send()
    };
    let responses = futures::future::join_all((0..20).map(|_| send(&a, Some("send-a")))).await;
    let mut bodies = std::collections::HashSet::new();
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        bodies.insert(response.text().await.unwrap());
    }
    assert_eq!(bodies.len(), 1, "one answer for one key: {bodies:?}");
    let queued: Value = serde_json::from_str(bodies.iter().next().unwrap()).unwrap();
    assert_eq!(queued["status"], "queued");
    let upper = send(&a.to_uppercase(), Some("send-a")).await.unwrap();
    assert_eq!(
        upper.headers()["idempotent-replayed"],
        "true",
        "the same campaign"
    );

    // Paused, the campaign cannot be sent again; the key still replays the first answer.
    let paused = app
        .post_json(&format!("/api/v1/campaigns/{a}/pause"), &json!({}))
        .await;
    assert_eq!(paused.status(), StatusCode::OK);
    let replay = send(&a, Some("send-a")).await.unwrap();
    assert_eq!(replay.status(), StatusCode::ACCEPTED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.json::<Value>().await.unwrap(), queued);
    let (_, status) = app.get_json(&format!("/api/v1/campaigns/{a}/status")).await;
    assert_eq!(status["status"], "paused", "the replay did nothing");
    let fresh = send(&a, None).await.unwrap();
    assert_problem(
        fresh,
        StatusCode::CONFLICT,
        "paused",
        "send without the key",
    )
    .await;

    let tasks = app
        .state
        .tasks
        .list(&tasks::TaskFilter {
            status: None,
            kind: Some(processor::SEND_CAMPAIGN.to_string()),
            key_prefix: None,
            after: None,
            limit: 100,
        })
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1, "one send_campaign task: {tasks:?}");

    // The same key for another campaign is a client bug.
    let other = send(&b, Some("send-a")).await.unwrap();
    assert_problem(
        other,
        StatusCode::UNPROCESSABLE_ENTITY,
        "different request",
        "same key, other campaign",
    )
    .await;
    let (_, status) = app.get_json(&format!("/api/v1/campaigns/{b}/status")).await;
    assert_eq!(status["status"], "draft");
}

async fn over_its_rate_limit_a_key_gets_429_with_retry_after(app: TestApp) {
    let mut state = app.state.clone();
    state.settings.rate_limit = Some(api::RateLimit {
        per_second: 0.5,
        burst: 3,
    });
    let base = format!("http://{}", serve(state).await);
    let other = api::auth::create_api_key(app.store.as_ref(), "other")
        .await
        .unwrap()
        .key;
    let get = |key: &str| {
        reqwest::Client::new()
            .get(format!("{base}/api/v1/campaigns"))
            .header("authorization", format!("Bearer {key}"))
            .send()
    };
    for _ in 0..3 {
        assert_eq!(get(&app.key).await.unwrap().status(), StatusCode::OK);
    }
    let limited = get(&app.key).await.unwrap();
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body = assert_problem(
        limited,
        StatusCode::TOO_MANY_REQUESTS,
        "over its limit",
        "fourth request",
    )
    .await;
    assert_eq!(body["type"], "/problems/rate-limited");
    // Each key has its own bucket; requests without a valid key are refused before counting.
    assert_eq!(get(&other).await.unwrap().status(), StatusCode::OK);
    let anonymous = reqwest::Client::new()
        .get(format!("{base}/api/v1/campaigns"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    // Public routes are not limited.
    for _ in 0..5 {
        let health = reqwest::get(format!("{base}/health")).await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
    }
    // The document says so, for every admin route.
    let document = api::openapi_document();
    let send = &document.paths.paths["/api/v1/campaigns/{id}/send"];
    let responses = &send.post.as_ref().unwrap().responses.responses;
    assert!(responses.contains_key("429"));
    // After Retry-After the key may send again.
    tokio::time::sleep(std::time::Duration::from_secs(retry_after)).await;
    assert_eq!(get(&app.key).await.unwrap().status(), StatusCode::OK);
}

async fn suppressions_are_listed_added_and_removed(app: TestApp) {
    for email in ["Zed@Example.com", "amy@example.com"] {
        let response = app
            .post_json(
                "/api/v1/suppressions",
                &json!({"email": email, "reason": "complaint"}),
            )
            .await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }
    let response = app
        .post_json("/api/v1/suppressions", &json!({"email": "not an address"}))
        .await;
    assert_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid email address",
        "bad address",
    )
    .await;
    let (_, page) = app.get_json("/api/v1/suppressions?limit=1").await;
    assert_eq!(page["items"][0]["email"], "amy@example.com");
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let (_, next) = app
        .get_json(&format!("/api/v1/suppressions?after={cursor}"))
        .await;
    assert_eq!(next["items"][0]["email"], "Zed@Example.com");
    assert_eq!(next["items"][0]["reason"], "complaint");
    let response = app
        .client
        .delete(app.url("/api/v1/suppressions/zed@example.com"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let response = app
        .client
        .delete(app.url("/api/v1/suppressions/zed@example.com"))
        .send()
        .await
        .unwrap();
    assert_problem(
        response,
        StatusCode::NOT_FOUND,
        "not on the suppression list",
        "removed twice",
    )
    .await;
    let (_, all) = app.get_json("/api/v1/suppressions").await;
    assert_eq!(all["items"].as_array().unwrap().len(), 1);
}

/// Sends a campaign through a real task processor over SMTP into aiosmtpd, reads the messages
/// back from its Maildir and follows their pixel, click and List-Unsubscribe links over HTTP like
/// a mail client would;
/// the report must match what was done, and a later campaign skips the unsubscribed address.
async fn a_delivered_campaign_reports_exactly_what_recipients_did(app: TestApp) {
    // Delivered over SMTP to a server this project did not write; skipped (or failed
    // under CI/REQUIRE_SMTP) when aiosmtpd is not installed.
    let Some(sink) = testkit::smtp::Aiosmtpd::start() else {
        return;
    };
    let transport = delivery::transport_from_config(&delivery::TransportConfig {
        smtp_url: Some(sink.url()),
        ..delivery::TransportConfig::default()
    })
    .expect("SMTP transport");
    let worker = TestWorker::start(&app, transport);

    let response = app
        .post_json(
            "/api/v1/suppressions",
            &json!({"email": "cat@example.com", "reason": "manual"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let send = |recipients: Value| send_and_wait(&app, recipients);
    let id = send(json!([
        {"email": "ann@example.com", "first_name": "Ann"},
        {"email": "bob@example.com", "first_name": "Bob"},
        {"email": "cat@example.com", "first_name": "Cat"}
    ]))
    .await;

    // What each message links to, rebased onto this server.
    let local = |url: &str| {
        app.url(
            url.strip_prefix("https://mail.example.test")
                .unwrap_or_else(|| panic!("{url} is under PUBLIC_BASE_URL")),
        )
    };
    let received = sink.messages();
    assert_eq!(received.len(), 2, "one message per unsuppressed recipient");
    let mut messages = std::collections::BTreeMap::new();
    for bytes in &received {
        let parsed = mail_parser::MessageParser::default().parse(bytes).unwrap();
        let to = recipient_of(bytes);
        let html = parsed.body_html(0).unwrap().to_string();
        let attribute = |prefix: &str| -> Vec<String> {
            html.split(prefix)
                .skip(1)
                .map(|rest| rest[..rest.find('"').unwrap()].to_string())
                .collect()
        };
        let pixels = attribute("<img src=\"");
        let clicks = attribute("<a href=\"https://mail.example.test/t/c/");
        let unsubscribe = parsed
            .header_raw("List-Unsubscribe")
            .unwrap()
            .trim()
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap()
            .to_string();
        assert_eq!(pixels.len(), 1, "{html}");
        assert_eq!(
            clicks.len(),
            4,
            "every staff pick and the events link: {html}"
        );
        assert!(
            html.contains(&format!("href=\"{unsubscribe}\"")),
            "unsubscribe link kept"
        );
        let clicks: Vec<String> = clicks
            .iter()
            .map(|token| format!("https://mail.example.test/t/c/{token}"))
            .collect();
        messages.insert(to, (local(&pixels[0]), clicks, local(&unsubscribe)));
    }
    assert_eq!(
        messages.keys().collect::<Vec<_>>(),
        ["ann@example.com", "bob@example.com"],
        "the suppressed address got nothing"
    );
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let get = |url: String| {
        let client = no_redirects.clone();
        async move { client.get(url).send().await.unwrap() }
    };
    let (ann_pixel, ann_clicks, ann_unsubscribe) = &messages["ann@example.com"];
    let (bob_pixel, bob_clicks, _) = &messages["bob@example.com"];
    for pixel in [ann_pixel, ann_pixel, bob_pixel] {
        assert_eq!(get(pixel.clone()).await.status(), StatusCode::OK);
    }
    let targets = [
        (
            &ann_clicks[0],
            "https://riverside-books.example/books/the-winter-orchard",
        ),
        (&bob_clicks[3], "https://riverside-books.example/events"),
        (&bob_clicks[3], "https://riverside-books.example/events"),
    ];
    for (click, target) in targets {
        let response = get(local(click)).await;
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(response.headers()["location"], target);
    }
    let response = no_redirects
        .post(ann_unsubscribe.clone())
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    app.state.engagement.events().flush().await;

    let (status, report) = app
        .get_json(&format!("/api/v1/campaigns/{id}/analytics"))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    let expected = json!({
        "recipients": 3, "pending": 0, "sent": 2, "deferred": 0, "failed": 0,
        "suppressed": 1, "cancelled": 0,
        "bounced": {"hard": 0, "soft": 0},
        "delivered": 2,
        "opens": {"total": 3, "unique": 2},
        "clicks": {"total": 3, "unique": 2, "links": [
            {"index": 0, "url": "https://riverside-books.example/books/the-winter-orchard", "total": 1, "unique": 1},
            {"index": 3, "url": "https://riverside-books.example/events", "total": 2, "unique": 1}
        ]},
        "unsubscribes": {"total": 1, "unique": 1},
        "complaints": {"total": 0, "unique": 0},
        "rates": {"open": 1.0, "click": 1.0, "unsubscribe": 0.5, "complaint": 0.0, "hard_bounce": 0.0},
    });
    for (key, value) in expected.as_object().unwrap() {
        assert_eq!(&report[key], value, "{key} in {report}");
    }
    let hourly = report["hourly"].as_array().unwrap();
    let sum = |key: &str| hourly.iter().map(|h| h[key].as_i64().unwrap()).sum::<i64>();
    assert_eq!(
        (sum("opens"), sum("clicks"), sum("unsubscribes")),
        (3, 3, 1)
    );

    // The next campaign to the same people skips the address that unsubscribed.
    let next = send(json!([
        {"email": "Ann@Example.com", "first_name": "Ann"},
        {"email": "bob@example.com", "first_name": "Bob"}
    ]))
    .await;
    let (_, status) = app
        .get_json(&format!("/api/v1/campaigns/{next}/status"))
        .await;
    assert_eq!(status["deliveries"]["sent"], 1);
    assert_eq!(status["deliveries"]["suppressed"], 1);
    let mut received: Vec<String> = sink.messages().iter().map(|m| recipient_of(m)).collect();
    received.sort();
    assert_eq!(
        received,
        ["ann@example.com", "bob@example.com", "bob@example.com"],
        "the second campaign reached only bob"
    );
    worker.stop().await;
}

/// A task processor in the test process, delivering through `transport` until stopped.
struct TestWorker {
    stop: tokio_util::sync::CancellationToken,
    running: tokio::task::JoinHandle<()>,
}

impl TestWorker {
    fn start(app: &TestApp, transport: std::sync::Arc<dyn delivery::Transport>) -> TestWorker {
        let services = processor::Services {
            store: app.store.clone(),
            tasks: app.state.tasks.clone(),
            transport,
            links: app.state.links.clone(),
            message_settings: message::MessageSettings::default(),
            dkim: None,
            max_batch_size: 1000,
            events: webhooks::EventSink::disabled(),
            clock: std::sync::Arc::new(tasks::SystemClock),
        };
        let mut config = processor::WorkerConfig::new("api-test");
        config.check_interval = std::time::Duration::from_millis(100);
        let stop = tokio_util::sync::CancellationToken::new();
        let running =
            tokio::spawn(processor::Worker::new(config, services, None).run(stop.clone()));
        TestWorker { stop, running }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.running.await.unwrap();
    }
}

/// Creates the sample campaign with these inline recipients, sends it through the API and
/// waits until a [`TestWorker`] has completed it; returns its id.
async fn send_and_wait(app: &TestApp, recipients: Value) -> String {
    let mut campaign = sample_campaign();
    campaign["recipients"] = recipients;
    let created: Value = app
        .post_json("/api/v1/campaigns", &campaign)
        .await
        .json()
        .await
        .unwrap();
    let id = created["campaign"]["id"].as_str().unwrap().to_string();
    send_existing_and_wait(app, &id).await;
    id
}

/// Sends an existing campaign through the API and waits until a [`TestWorker`] has
/// completed it.
async fn send_existing_and_wait(app: &TestApp, id: &str) {
    let response = app
        .post_json(&format!("/api/v1/campaigns/{id}/send"), &json!({}))
        .await;
    assert!(response.status().is_success(), "{}", response.status());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, status) = app
            .get_json(&format!("/api/v1/campaigns/{id}/status"))
            .await;
        if status["status"] == "completed" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not completed: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The envelope recipient aiosmtpd recorded for a message it stored.
fn recipient_of(stored: &[u8]) -> String {
    let parsed = mail_parser::MessageParser::default().parse(stored).unwrap();
    parsed
        .header_raw("X-RcptTo")
        .expect("aiosmtpd records the recipient")
        .trim()
        .to_string()
}

/// Flips one character of a token, keeping it base64url.
fn altered(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    bytes[10] = if bytes[10] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

async fn engagement_links_record_and_forgeries_are_refused(app: TestApp) {
    let mut campaign = sample_campaign();
    campaign["recipients"] = json!([
        {"email": "ann@example.com", "first_name": "Ann"},
        {"email": "bob@example.com", "first_name": "Bob"}
    ]);
    campaign["templates"]["html"] = json!(
        "<p><a href=\"https://shop.example/sale?a=1&amp;b=2\">sale</a> \
         <a href=\"https://shop.example/two\">two</a> \
         <a data-notrack href=\"https://shop.example/private\">private</a> \
         <a href=\"{{ unsubscribe_url }}\">unsubscribe</a></p>"
    );
    let response = app.post_json("/api/v1/campaigns", &campaign).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    let campaign_id: uuid::Uuid = created["campaign"]["id"].as_str().unwrap().parse().unwrap();
    let deliveries = app
        .store
        .list_deliveries(campaign_id, None, None, 10)
        .await
        .unwrap();
    let (ann, bob) = (deliveries[0].recipient_id, deliveries[1].recipient_id);
    let links = &app.state.links;
    let keys = links.keys();
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let public = |path: String| app.url(&path);

    // The pixel: a GIF that must not be cached.
    let open_token = keys.sign(tracking::Purpose::Open, campaign_id, ann);
    let pixel = no_redirects
        .get(public(format!("/t/o/{open_token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(pixel.status(), StatusCode::OK);
    assert_eq!(pixel.headers()["content-type"], "image/gif");
    assert!(
        pixel.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("no-store")
    );
    assert!(pixel.bytes().await.unwrap().starts_with(b"GIF89a"));

    // Clicks go exactly to the template's URL at the token's index (entities decoded).
    for (index, target) in [
        (0u16, "https://shop.example/sale?a=1&b=2"),
        (1, "https://shop.example/two"),
    ] {
        let url = links.click(campaign_id, bob, index);
        let path = url.strip_prefix("https://mail.example.test").unwrap();
        let response = no_redirects
            .get(public(path.to_string()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FOUND);
        assert_eq!(response.headers()["location"], target);
    }
    let click_token = keys.sign_click(campaign_id, bob, 1);

    // Refused, and recorded nowhere: a genuine token for a link the campaign does not have
    // (the opted-out and the unsubscribe link are not tracked, so index 2 does not exist), a
    // token for a campaign that does not exist, altered tokens, a token of another purpose.
    let unsubscribe_token = keys.sign(tracking::Purpose::Unsubscribe, campaign_id, ann);
    let refused = [
        (
            "GET",
            format!("/t/c/{}", keys.sign_click(campaign_id, bob, 2)),
        ),
        (
            "GET",
            format!("/t/c/{}", keys.sign_click(uuid::Uuid::now_v7(), bob, 0)),
        ),
        ("GET", format!("/t/c/{}", altered(&click_token))),
        ("GET", format!("/t/c/{open_token}")),
        ("GET", "/t/c/not-a-token".to_string()),
        ("GET", format!("/t/o/{}", altered(&open_token))),
        ("GET", format!("/t/o/{unsubscribe_token}")),
        ("GET", format!("/u/{}", altered(&unsubscribe_token))),
        ("POST", format!("/u/{}", altered(&unsubscribe_token))),
        ("POST", format!("/u/{open_token}")),
        (
            "POST",
            format!(
                "/u/{}",
                keys.sign(tracking::Purpose::Unsubscribe, campaign_id, 999_999)
            ),
        ),
    ];
    for (method, path) in &refused {
        let response = no_redirects
            .request(method.parse().unwrap(), public(path.clone()))
            .body("List-Unsubscribe=One-Click")
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::NOT_FOUND, "not valid", path).await;
    }

    // GET shows a page with a button and unsubscribes nobody (scanners follow GETs).
    let page = no_redirects
        .get(public(format!("/u/{unsubscribe_token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains(&format!(
        "<form method=\"post\" action=\"https://mail.example.test/u/{unsubscribe_token}\""
    )));
    let ann_key = vec!["ann@example.com".to_string()];
    assert!(
        app.store
            .suppressed_among(&ann_key)
            .await
            .unwrap()
            .is_empty()
    );

    // RFC 8058 one-click: 200, no redirect, no cookie, suppressed at once.
    let response = no_redirects
        .post(public(format!("/u/{unsubscribe_token}")))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("location").is_none());
    assert!(response.headers().get("set-cookie").is_none());
    assert_eq!(app.store.suppressed_among(&ann_key).await.unwrap().len(), 1);

    app.state.engagement.events().flush().await;
    let events = app
        .store
        .list_tracking_events(None, None, 100)
        .await
        .unwrap();
    let seen: Vec<(store::TrackingEventKind, Option<i64>, Option<u16>)> = events
        .iter()
        .map(|e| (e.event.kind, e.event.recipient_id, e.event.link_index))
        .collect();
    use store::TrackingEventKind::{Click, Open, Unsubscribe};
    assert_eq!(
        seen,
        [
            (Open, Some(ann), None),
            (Click, Some(bob), Some(0)),
            (Click, Some(bob), Some(1)),
            (Unsubscribe, Some(ann), None),
        ]
    );
    for event in &events {
        assert_eq!(event.event.campaign_id, campaign_id);
        let hash = event
            .event
            .ip_hash
            .as_deref()
            .expect("client address hashed");
        assert!(!hash.contains("127.0.0.1") && hash.len() == 32, "{hash}");
    }

    // Aggregate-only links name nobody, and their events store no recipient.
    let anonymous = links.open_pixel(campaign_id, links.tracked_recipient(true, ann));
    let path = anonymous.strip_prefix("https://mail.example.test").unwrap();
    let response = reqwest::get(public(path.to_string())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    app.state.engagement.events().flush().await;
    let last = app
        .store
        .list_tracking_events(Some(campaign_id), Some(events.last().unwrap().id), 10)
        .await
        .unwrap();
    assert_eq!(
        last.iter()
            .map(|e| (e.event.kind, e.event.recipient_id))
            .collect::<Vec<_>>(),
        [(Open, None)]
    );
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
    let created: Value = app
        .post_json("/api/v1/campaigns", &campaign)
        .await
        .json()
        .await
        .unwrap();
    let id = created["campaign"]["id"].as_str().unwrap().to_string();
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

async fn health_and_readiness(app: TestApp) {
    let (status, body) = app.get_json("/health").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, body) = app.get_json("/ready").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
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

async fn a_request_adding_too_many_recipients_is_refused_whole(app: TestApp) {
    let mut state = app.state.clone();
    state.settings.max_recipients_per_request = 3;
    let limited = TestApp {
        base: format!("http://{}", serve(state.clone()).await),
        client: app.client.clone(),
        store: app.store.clone(),
        state,
        key: app.key.clone(),
        database_url: app.database_url.clone(),
        _database: Box::new(()),
    };
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
    let created: Value = limited
        .post_json("/api/v1/campaigns", &campaign)
        .await
        .json()
        .await
        .unwrap();
    let id = created["campaign"]["id"].as_str().unwrap().to_string();
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

fn fixture(path: &str) -> Vec<u8> {
    let dir = std::env::var_os("FIXTURES_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/work/shared/fixtures"));
    let file = dir.join(path);
    std::fs::read(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
}

impl TestApp {
    /// A campaign with these inline recipients; returns its id and each address's recipient id.
    async fn campaign_with(
        &self,
        emails: &[&str],
    ) -> (String, std::collections::HashMap<String, i64>) {
        let mut campaign = sample_campaign();
        campaign["recipients"] = emails.iter().map(|email| json!({"email": email})).collect();
        let response = self.post_json("/api/v1/campaigns", &campaign).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let created: Value = response.json().await.unwrap();
        let id = created["campaign"]["id"].as_str().unwrap().to_string();
        let (_, page) = self
            .get_json(&format!("/api/v1/campaigns/{id}/deliveries?limit=100"))
            .await;
        let ids = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["email"].as_str().unwrap().to_string(),
                    d["recipient_id"].as_i64().unwrap(),
                )
            })
            .collect();
        (id, ids)
    }

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
    let campaign_id: uuid::Uuid = campaign.parse().unwrap();
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
        assert_eq!(result["recipient_id"], ids[email], "{file}");
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
        ids["alice@example.test"]
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
    assert_eq!(body["results"][0]["recipient_id"], ids["Gone@Example.com"]);
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

/// Puts a campaign through a send by hand: every recipient gets `outcome(email)`.
async fn finish_by_hand(
    app: &TestApp,
    campaign: &str,
    ids: &std::collections::HashMap<String, i64>,
    failed: &[&str],
) {
    let id: uuid::Uuid = campaign.parse().unwrap();
    use campaign::CampaignStatus::*;
    assert!(
        app.store
            .transition_campaign(id, &[Draft], Sending)
            .await
            .unwrap()
    );
    let outcomes: Vec<store::DeliveryOutcome> = ids
        .iter()
        .map(|(email, &recipient_id)| store::DeliveryOutcome {
            recipient_id,
            result: if failed.contains(&email.as_str()) {
                store::OutcomeKind::Failed {
                    error: "550 5.7.1 rejected".into(),
                    attempted: true,
                }
            } else {
                store::OutcomeKind::Sent {
                    reply: "250 2.0.0 Ok".into(),
                }
            },
        })
        .collect();
    app.store.record_outcomes(&outcomes).await.unwrap();
    assert!(app.store.finish_if_done(id).await.unwrap().is_some());
}

async fn retry_failed_requeues_failed_recipients_once(app: TestApp) {
    let (campaign, ids) = app
        .campaign_with(&["ok@example.com", "flaky@example.com", "gone@example.com"])
        .await;
    let path = format!("/api/v1/campaigns/{campaign}/retry-failed");
    // Not finished yet: nothing to retry.
    let response = app.post_json(&path, &json!({})).await;
    assert_problem(response, StatusCode::CONFLICT, "draft", "draft").await;

    finish_by_hand(
        &app,
        &campaign,
        &ids,
        &["flaky@example.com", "gone@example.com"],
    )
    .await;
    app.store
        .suppress(
            &campaign::EmailAddress::parse("gone@example.com").unwrap(),
            "hard_bounce",
        )
        .await
        .unwrap();

    let send_tasks = || async {
        app.state
            .tasks
            .list(&tasks::TaskFilter {
                kind: Some("send_campaign".into()),
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
    };
    for round in 0..2 {
        let response = app.post_json(&path, &json!({})).await;
        assert_eq!(response.status(), StatusCode::ACCEPTED, "call {round}");
        let status: Value = response.json().await.unwrap();
        assert_eq!(status["status"], "queued", "call {round}");
        assert_eq!(
            status["deliveries"]["pending"], 1,
            "only the unsuppressed failure"
        );
        assert_eq!(
            status["deliveries"]["failed"], 1,
            "the suppressed address stays failed"
        );
        assert_eq!(status["deliveries"]["sent"], 1);
        assert_eq!(
            send_tasks().await.len(),
            1,
            "one task however often it is asked"
        );
    }
    let (_, deliveries) = app
        .get_json(&format!(
            "/api/v1/campaigns/{campaign}/deliveries?status=pending"
        ))
        .await;
    assert_eq!(deliveries["items"][0]["email"], "flaky@example.com");
    assert_eq!(deliveries["items"][0]["attempts"], 0);

    // A finished campaign whose only failures are suppressed has nothing to retry.
    let (other, other_ids) = app
        .campaign_with(&["gone@example.com", "fine@example.com"])
        .await;
    finish_by_hand(&app, &other, &other_ids, &["gone@example.com"]).await;
    let response = app
        .post_json(
            &format!("/api/v1/campaigns/{other}/retry-failed"),
            &json!({}),
        )
        .await;
    assert_problem(
        response,
        StatusCode::CONFLICT,
        "no failed recipient",
        "only suppressed",
    )
    .await;
    let response = app
        .post_json(
            "/api/v1/campaigns/0190b2a0-0000-7000-8000-000000000000/retry-failed",
            &json!({}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

/// Times no store or RFC 3339 can hold, or outside the scheduling range: each is refused at
/// `scheduled_at` (in a document and on `POST …/schedule`), nothing is stored or queued, and
/// every read still answers.
async fn out_of_range_times_are_refused_and_nothing_is_stored_or_sent(app: TestApp) {
    let existing = app.create_sample().await;
    let id = existing["campaign"]["id"].as_str().unwrap().to_string();
    let before = app.campaign_count().await;
    let rfc3339 = &time::format_description::well_known::Rfc3339;
    let in_a_month = (time::OffsetDateTime::now_utc() + time::Duration::days(30))
        .replace_nanosecond(0)
        .unwrap();
    let month = in_a_month.format(rfc3339).unwrap();
    let month_seconds = &month[..19];
    let in_six_years = (time::OffsetDateTime::now_utc() + time::Duration::days(6 * 365))
        .replace_nanosecond(0)
        .unwrap()
        .format(rfc3339)
        .unwrap();
    let cases: Vec<(String, &str)> = vec![
        // Year 0 at +23:59 is year -1 in UTC: the reproduction.
        ("0000-01-01T00:00:00+23:59".into(), "before 1970"),
        ("0000-01-01T00:00:00Z".into(), "before 1970"),
        ("0000-01-01T00:00:00-23:59".into(), "before 1970"),
        // Year 9999 at -23:59 is year 10000 in UTC (this one panicked in the store).
        ("9999-12-31T23:59:59-23:59".into(), "after 9999"),
        ("9999-12-31T23:59:59.999999Z".into(), "5 years"),
        (in_six_years, "5 years"),
        ("1969-12-31T23:59:59Z".into(), "before 1970"),
        ("2020-01-01T00:00:00Z".into(), "in the past"),
        (format!("{month_seconds}+24:00"), "not an RFC 3339 time"),
        (format!("{month_seconds}+99:99"), "not an RFC 3339 time"),
        (format!("{month_seconds}.123456789Z"), "fractional digits"),
        (
            format!("{month_seconds}.1234567+01:00"),
            "fractional digits",
        ),
        ("2030-06-30T23:59:60Z".into(), "leap second"),
        ("2030-12-31T23:59:60Z".into(), "leap second"),
        ("+10000-01-01T00:00:00Z".into(), "not an RFC 3339 time"),
        ("-0001-01-01T00:00:00Z".into(), "not an RFC 3339 time"),
    ];
    for (raw, needle) in &cases {
        let mut campaign = sample_campaign();
        campaign["scheduled_at"] = json!(raw);
        let response = app.post_json("/api/v1/campaigns", &campaign).await;
        let body = assert_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            needle,
            &format!("create with scheduled_at {raw}"),
        )
        .await;
        assert_eq!(body["errors"][0]["field"], "scheduled_at", "{raw}: {body}");

        let response = app
            .post_json(
                &format!("/api/v1/campaigns/{id}/schedule"),
                &json!({ "scheduled_at": raw }),
            )
            .await;
        let body = assert_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            needle,
            &format!("schedule at {raw}"),
        )
        .await;
        assert_eq!(body["errors"][0]["field"], "scheduled_at", "{raw}: {body}");
    }

    assert_eq!(app.campaign_count().await, before, "nothing was stored");
    let queued = app
        .state
        .tasks
        .list(&tasks::TaskFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(queued.is_empty(), "nothing was queued to send: {queued:?}");
    for path in [
        "/api/v1/campaigns".to_string(),
        format!("/api/v1/campaigns/{id}"),
        format!("/api/v1/campaigns/{id}/status"),
    ] {
        let (status, body) = app.get_json(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    let (_, read) = app.get_json(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(
        read["status"], "draft",
        "the refused schedules left it alone"
    );
    assert!(read["scheduled_at"].is_null(), "{read}");

    // The edges of the range are accepted, and answered as JSON.
    for raw in [month.clone(), format!("{month_seconds}.123456+23:59")] {
        let mut campaign = sample_campaign();
        campaign["scheduled_at"] = json!(raw);
        let response = app.post_json("/api/v1/campaigns", &campaign).await;
        assert_eq!(response.status(), StatusCode::CREATED, "{raw}");
        assert_eq!(response.headers()["content-type"], "application/json");
        let created: Value = response.json().await.unwrap();
        let stored = time::OffsetDateTime::parse(
            created["campaign"]["scheduled_at"].as_str().unwrap(),
            rfc3339,
        )
        .unwrap();
        assert_eq!(stored, time::OffsetDateTime::parse(&raw, rfc3339).unwrap());
    }
    let (status, _) = app.get_json("/api/v1/campaigns").await;
    assert_eq!(status, StatusCode::OK);
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
    assert_eq!(body["errors"][0]["field"], "[1]", "{body}");

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

/// A path that is not UTF-8 once decoded is a 4xx problem like any other.
async fn a_path_that_is_not_utf8_answers_a_problem(app: TestApp) {
    for path in [
        "/api/v1/campaigns/%FF",
        "/api/v1/campaigns/%C3%28/status",
        "/api/v1/nowhere/%80",
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_problem(response, StatusCode::BAD_REQUEST, "not UTF-8", path).await;
    }
    let response = app
        .post_json(
            "/api/v1/campaigns/%FF/schedule",
            &json!({"scheduled_at": "x"}),
        )
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST, "not UTF-8", "POST").await;
    // A percent-encoded UTF-8 path is still an ordinary one.
    let response = app
        .client
        .get(app.url("/api/v1/campaigns/%C3%A9"))
        .send()
        .await
        .unwrap();
    assert_problem(response, StatusCode::NOT_FOUND, "does not exist", "é").await;
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

macro_rules! api_suite {
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
            case!(sample_campaign_with_csv_recipients_reports_its_status);
            case!(inline_recipients_are_deduplicated_and_reported);
            case!(malformed_requests_get_problems_and_store_nothing);
            case!(health_and_readiness);
            case!(admin_routes_need_a_valid_unrevoked_key);
            case!(the_openapi_document_describes_every_route);
            case!(an_idempotency_key_creates_once_under_concurrency);
            case!(an_idempotency_key_sends_once);
            case!(over_its_rate_limit_a_key_gets_429_with_retry_after);
            case!(suppressions_are_listed_added_and_removed);
            case!(templates_are_checked_at_creation_and_previewed);
            case!(provider_headers_are_kept_and_reach_the_message);
            case!(scheduling_is_validated_and_controls_are_idempotent);
            case!(a_local_send_time_is_validated_reported_and_shown_per_zone);
            case!(a_test_send_delivers_marked_messages_and_leaves_the_campaign_alone);
            case!(a_test_send_is_dkim_signed_only_for_a_from_domain_the_key_covers);
            case!(a_test_send_skips_suppressed_and_repeated_addresses_and_its_link_unsubscribes);
            case!(the_test_send_quota_is_shared_by_instances_on_one_database);
            case!(the_status_shows_a_late_start_and_its_delay);
            case!(campaigns_page_with_a_cursor);
            case!(a_request_adding_too_many_recipients_is_refused_whole);
            case!(engagement_links_record_and_forgeries_are_refused);
            case!(a_delivered_campaign_reports_exactly_what_recipients_did);
            case!(bounce_fixtures_are_attributed_classified_and_suppress);
            case!(bounce_intake_needs_its_secret_and_a_readable_report);
            case!(retry_failed_requeues_failed_recipients_once);
            case!(filter_arguments_are_checked_at_creation_and_per_recipient);
            case!(out_of_range_times_are_refused_and_nothing_is_stored_or_sent);
            case!(oversized_recipient_fields_and_rows_are_refused_whole);
            case!(a_path_that_is_not_utf8_answers_a_problem);
            case!(look_alike_spellings_are_one_mailbox_for_imports_and_suppression);
            case!(long_display_names_and_invisible_characters_are_refused);
        }
    };
}

api_suite!(sqlite, || async {
    let database = testkit::SqliteDatabase::create();
    let url = database.url.clone();
    Some(super::spawn_app(&url, Box::new(database)).await)
});

api_suite!(postgres, || async {
    let database = testkit::PostgresDatabase::create().await?;
    let url = database.url.clone();
    Some(super::spawn_app(&url, Box::new(database)).await)
});
