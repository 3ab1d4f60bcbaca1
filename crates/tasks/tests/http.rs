//! The HTTP service's own rules (token, problem documents) and the adapter's behaviour when
//! the service is not there. What every backend must do is in `contract.rs`.

use std::sync::Arc;
use tasks::{AdapterRetry, HttpTaskRepository, NewTask, TaskError, TaskRepository};

const TOKEN: &str = "s3cret-token";

/// A SQLite-backed service with `TOKEN` on 127.0.0.1:0; the guard keeps both alive.
async fn service() -> (String, impl Drop) {
    let database = testkit::SqliteDatabase::create();
    let url = database.url.clone();
    service_on(&url, Box::new(database)).await
}

/// The service with `TOKEN` on 127.0.0.1:0 in front of the database at `url`.
async fn service_on(
    url: &str,
    database: Box<dyn std::any::Any + Send>,
) -> (String, impl Drop + use<>) {
    let repo = tasks::connect(url).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = tasks::http::router(repo, Some(TOKEN.to_string()));
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    struct Guard(
        tokio::task::JoinHandle<()>,
        #[allow(dead_code)] Box<dyn std::any::Any + Send>,
    );
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    (base, Guard(server, database))
}

/// What a client sends that the adapter never would: numbers beyond every bound, times no
/// store can hold. Each is a 422 problem; nothing is stored; the service keeps answering.
async fn out_of_range_requests_are_refused(base: String) {
    let client = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
    };
    async fn assert_422(response: reqwest::Response, needle: &str, case: &str) {
        assert_eq!(response.status(), 422, "{case}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{case}"
        );
        let problem: serde_json::Value = response.json().await.unwrap();
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(needle), "{case}: {detail}");
    }
    let leased = |lease_ms: serde_json::Value| serde_json::json!({"worker_id": "w", "kinds": ["send_batch"], "limit": 1, "lease_ms": lease_ms});
    for lease_ms in [
        serde_json::json!(1_000_000_000_000_000u64),
        serde_json::json!(10_000_000_000_000u64),
        serde_json::json!(86_400_001),
        serde_json::json!(u64::MAX),
        serde_json::json!(0),
    ] {
        let case = format!("claim lease_ms {lease_ms}");
        assert_422(
            post("/api/v1/tasks/claim", leased(lease_ms.clone()))
                .await
                .unwrap(),
            "lease_ms",
            &case,
        )
        .await;
        let heartbeat = serde_json::json!({"worker_id": "w", "leases": [], "lease_ms": lease_ms});
        let case = format!("heartbeat lease_ms {lease_ms}");
        assert_422(
            post("/api/v1/tasks/heartbeat", heartbeat).await.unwrap(),
            "lease_ms",
            &case,
        )
        .await;
    }
    let mut too_many = leased(serde_json::json!(30_000));
    too_many["limit"] = serde_json::json!(1001);
    assert_422(
        post("/api/v1/tasks/claim", too_many).await.unwrap(),
        "limit",
        "claim limit",
    )
    .await;
    for limit in ["0", "1001", "4294967295"] {
        let response = client
            .get(format!("{base}/api/v1/tasks?limit={limit}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_422(response, "limit", &format!("list limit {limit}")).await;
    }
    for (field, value, needle) in [
        (
            "run_after",
            serde_json::json!("0000-01-01T00:00:00+23:59"),
            "before 1970",
        ),
        (
            "run_after",
            serde_json::json!("9999-12-31T23:59:59-23:59"),
            "after 9999",
        ),
        (
            "run_after",
            serde_json::json!("9999-12-31T23:59:59Z"),
            "5 years",
        ),
        ("priority", serde_json::json!(2_000_000_000), "priority"),
        (
            "max_attempts",
            serde_json::json!(4_000_000_000u64),
            "max_attempts",
        ),
    ] {
        let mut new = serde_json::json!({"kind": "send_batch", "payload": {}});
        new[field] = value.clone();
        let case = format!("{field} {value}");
        assert_422(
            post("/api/v1/tasks", new.clone()).await.unwrap(),
            needle,
            &case,
        )
        .await;
        assert_422(
            post("/api/v1/tasks/batch", serde_json::json!([new]))
                .await
                .unwrap(),
            needle,
            &case,
        )
        .await;
    }
    let counts: serde_json::Value = client
        .get(format!("{base}/api/v1/tasks/counts"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counts["pending"], 0, "nothing was stored: {counts}");
    let listed = client
        .get(format!("{base}/api/v1/tasks?limit=1000"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
}

mod bounds {
    #[tokio::test]
    async fn sqlite() {
        let database = testkit::SqliteDatabase::create();
        let url = database.url.clone();
        let (base, _guard) = super::service_on(&url, Box::new(database)).await;
        super::out_of_range_requests_are_refused(base).await;
    }

    #[tokio::test]
    async fn postgres() {
        let Some(database) = testkit::PostgresDatabase::create().await else {
            return;
        };
        let url = database.url.clone();
        let (base, _guard) = super::service_on(&url, Box::new(database)).await;
        super::out_of_range_requests_are_refused(base).await;
    }
}

mod http_sqlite {
    use super::*;

    #[tokio::test]
    async fn requests_without_the_token_are_refused_with_401() {
        let (base, _guard) = service().await;
        let client = reqwest::Client::new();
        let url = format!("{base}/api/v1/tasks/counts");

        let anonymous = client.get(&url).send().await.unwrap();
        assert_eq!(anonymous.status(), 401);
        assert_eq!(
            anonymous.headers()["content-type"],
            "application/problem+json"
        );
        assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
        let problem: serde_json::Value = anonymous.json().await.unwrap();
        assert_eq!(problem["type"], "/problems/unauthorized");
        assert_eq!(problem["status"], 401);
        assert!(problem["detail"].as_str().unwrap().contains("Bearer"));

        let wrong = client
            .get(&url)
            .bearer_auth("s3cret-tokeN")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
        let right = client.get(&url).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(right.status(), 200);

        // Probes need no secret.
        let health = client.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(health.status(), 200);

        let tokenless = HttpTaskRepository::new(&base, None);
        match tokenless.counts().await {
            Err(TaskError::Unauthorized { url, .. }) => assert!(url.starts_with(&base), "{url}"),
            other => panic!("expected Unauthorized, got {other:?}"),
        }
        let adapter = HttpTaskRepository::new(&base, Some(TOKEN.to_string()));
        adapter
            .create(NewTask::new("send_batch", serde_json::json!({})))
            .await
            .unwrap();
        assert_eq!(adapter.counts().await.unwrap()["pending"], 1);
    }

    #[tokio::test]
    async fn bad_requests_are_answered_as_problem_documents() {
        let (base, _guard) = service().await;
        let client = reqwest::Client::new();

        let malformed = client
            .post(format!("{base}/api/v1/tasks/claim"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body("{\"worker_id\": \"w\", \"kinds\": ")
            .send()
            .await
            .unwrap();
        assert_eq!(malformed.status(), 422);
        assert_eq!(
            malformed.headers()["content-type"],
            "application/problem+json"
        );
        let problem: serde_json::Value = malformed.json().await.unwrap();
        assert_eq!(problem["type"], "/problems/validation");

        let missing = client
            .get(format!("{base}/api/v1/tasks/{}", uuid::Uuid::now_v7()))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
        let problem: serde_json::Value = missing.json().await.unwrap();
        assert_eq!(
            (problem["type"].as_str(), problem["title"].as_str()),
            (Some("/problems/not-found"), Some("Not Found"))
        );

        let bad_status = client
            .get(format!("{base}/api/v1/tasks?status=sleeping"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(bad_status.status(), 422);
        let adapter = HttpTaskRepository::new(&base, Some(TOKEN.to_string()));
        let zero_lease = adapter
            .claim("w", &["send_batch".to_string()], 1, time::Duration::ZERO)
            .await;
        assert!(
            matches!(zero_lease, Err(TaskError::Invalid(_))),
            "{zero_lease:?}"
        );
    }
}

mod http {
    use super::*;

    /// A port nobody listens on: bound, then released.
    async fn closed_port_url() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        format!("http://{address}")
    }

    #[tokio::test]
    async fn the_adapter_names_the_url_when_the_service_is_down() {
        let base = closed_port_url().await;
        let adapter: Arc<dyn TaskRepository> = Arc::new(
            HttpTaskRepository::new(&base, Some(TOKEN.to_string())).with_retry(AdapterRetry {
                attempts: 3,
                base_delay: std::time::Duration::from_millis(5),
                max_delay: std::time::Duration::from_millis(20),
            }),
        );
        let err = adapter.counts().await.unwrap_err();
        match &err {
            TaskError::Unreachable { url, attempts, .. } => {
                assert_eq!(url, &format!("{base}/api/v1/tasks/counts"));
                assert_eq!(*attempts, 3, "a read is retried");
            }
            other => panic!("expected Unreachable, got {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains(&base), "{message}");
        assert!(message.contains("unreachable"), "{message}");

        // A refused connection means the claim was never sent, so even it is retried.
        let err = adapter
            .claim(
                "w",
                &["send_batch".to_string()],
                1,
                time::Duration::seconds(30),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, TaskError::Unreachable { attempts: 3, .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_url_that_is_not_http_is_reported() {
        let adapter = HttpTaskRepository::new("not a url", None);
        let err = adapter.counts().await.unwrap_err();
        assert!(err.to_string().contains("not a url"), "{err}");
    }
}
