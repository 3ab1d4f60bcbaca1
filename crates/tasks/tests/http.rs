//! The HTTP service's own rules (token, problem documents) and the adapter's behaviour when
//! the service is not there. What every backend must do is in `contract.rs`.

use std::sync::Arc;
use tasks::{AdapterRetry, HttpTaskRepository, NewTask, TaskError, TaskRepository};

const TOKEN: &str = "s3cret-token";

/// A SQLite-backed service with `TOKEN` on 127.0.0.1:0; the guard keeps both alive.
async fn service() -> (String, impl Drop) {
    let database = testkit::SqliteDatabase::create();
    let repo = tasks::connect(&database.url).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = tasks::http::router(repo, Some(TOKEN.to_string()));
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    struct Guard(
        tokio::task::JoinHandle<()>,
        #[allow(dead_code)] testkit::SqliteDatabase,
    );
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    (base, Guard(server, database))
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
