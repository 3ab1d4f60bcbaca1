//! The app under test and what every route group's tests share: starting it on a fresh
//! database, requests with the admin key, problem+json assertions, and a task processor in the
//! test process.

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::any::Any;

pub struct TestApp {
    pub base: String,
    /// Sends a valid API key with every request.
    pub client: reqwest::Client,
    pub store: std::sync::Arc<dyn store::CampaignStore>,
    /// What the app was started with, to start another on the same database.
    pub state: api::AppState,
    pub key: String,
    /// The database, for another app instance (its own store and pool) on it.
    pub database_url: String,
    pub _database: Box<dyn Any + Send>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn post_bytes(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str) -> (StatusCode, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    /// Creates `campaign` (answered 201); returns its id.
    pub async fn create_campaign(&self, campaign: &Value) -> String {
        let response = self.post_json("/api/v1/campaigns", campaign).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let created: Value = response.json().await.unwrap();
        created["campaign"]["id"].as_str().unwrap().to_string()
    }

    pub async fn create_sample(&self) -> Value {
        let response = self
            .post_json("/api/v1/campaigns", &sample_campaign())
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    /// Another app on the same store and key, started with `settings` changed by `change`
    /// (smaller limits, a rate limit).
    pub async fn with_settings(&self, change: impl FnOnce(&mut api::ApiSettings)) -> TestApp {
        let mut state = self.state.clone();
        change(&mut state.settings);
        TestApp {
            base: format!("http://{}", serve(state.clone()).await),
            client: self.client.clone(),
            store: self.store.clone(),
            state,
            key: self.key.clone(),
            database_url: self.database_url.clone(),
            _database: Box::new(()),
        }
    }

    pub async fn campaign_count(&self) -> usize {
        let (_, list) = self.get_json("/api/v1/campaigns?limit=500").await;
        list["items"].as_array().unwrap().len()
    }
}

pub const BOUNCE_SECRET: &str = "bounce-secret-for-tests";

/// Runs one case of a route group's suite (`testkit::backend_suite!`) against an app started
/// on `database`.
pub async fn with_app<Case, Run>(database: testkit::TestDatabase, case: Case)
where
    Case: FnOnce(TestApp) -> Run,
    Run: std::future::Future<Output = ()>,
{
    let url = database.url().to_string();
    case(spawn_app(&url, Box::new(database)).await).await;
}

pub async fn spawn_app(database_url: &str, database: Box<dyn Any + Send>) -> TestApp {
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
pub async fn serve(state: api::AppState) -> std::net::SocketAddr {
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

pub fn example(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../../examples/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

pub fn sample_campaign() -> Value {
    serde_json::from_slice(&example("sample_campaign.json")).unwrap()
}

/// Asserts a problem+json answer with this status whose detail mentions `needle`.
pub async fn assert_problem(
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

/// A task processor in the test process, delivering through `transport` until stopped.
pub struct TestWorker {
    pub stop: tokio_util::sync::CancellationToken,
    pub running: tokio::task::JoinHandle<()>,
}

impl TestWorker {
    pub fn start(app: &TestApp, transport: std::sync::Arc<dyn delivery::Transport>) -> TestWorker {
        TestWorker::start_on(
            app,
            transport,
            app.state.tasks.clone(),
            std::sync::Arc::new(tasks::SystemClock),
        )
    }

    /// A worker whose time is `clock` (also that of `tasks`, its task repository), which the
    /// test moves by hand.
    pub fn start_on(
        app: &TestApp,
        transport: std::sync::Arc<dyn delivery::Transport>,
        tasks: std::sync::Arc<dyn tasks::TaskRepository>,
        clock: std::sync::Arc<dyn tasks::Clock>,
    ) -> TestWorker {
        let services = processor::Services {
            store: app.store.clone(),
            tasks,
            transport,
            links: app.state.links.clone(),
            message_settings: message::MessageSettings::default(),
            dkim: None,
            max_batch_size: 1000,
            events: webhooks::EventSink::disabled(),
            clock,
        };
        let mut config = processor::WorkerConfig::new("api-test");
        config.check_interval = std::time::Duration::from_millis(100);
        let stop = tokio_util::sync::CancellationToken::new();
        let running =
            tokio::spawn(processor::Worker::new(config, services, None).run(stop.clone()));
        TestWorker { stop, running }
    }

    pub async fn stop(self) {
        self.stop.cancel();
        self.running.await.unwrap();
    }
}

/// Creates the sample campaign with these inline recipients, sends it through the API and
/// waits until a [`TestWorker`] has completed it; returns its id.
pub async fn send_and_wait(app: &TestApp, recipients: Value) -> String {
    let mut campaign = sample_campaign();
    campaign["recipients"] = recipients;
    let id = app.create_campaign(&campaign).await;
    send_existing_and_wait(app, &id).await;
    id
}

/// Sends an existing campaign through the API and waits until a [`TestWorker`] has
/// completed it.
pub async fn send_existing_and_wait(app: &TestApp, id: &str) {
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
pub fn recipient_of(stored: &[u8]) -> String {
    let parsed = mail_parser::MessageParser::default().parse(stored).unwrap();
    parsed
        .header_raw("X-RcptTo")
        .expect("aiosmtpd records the recipient")
        .trim()
        .to_string()
}

impl TestApp {
    /// A campaign with these inline recipients; returns its id and each address's recipient id.
    pub async fn campaign_with(
        &self,
        emails: &[&str],
    ) -> (
        String,
        std::collections::HashMap<String, campaign::RecipientId>,
    ) {
        let mut campaign = sample_campaign();
        campaign["recipients"] = emails.iter().map(|email| json!({"email": email})).collect();
        let id = self.create_campaign(&campaign).await;
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
                    campaign::RecipientId::new(d["recipient_id"].as_i64().unwrap()),
                )
            })
            .collect();
        (id, ids)
    }
}
