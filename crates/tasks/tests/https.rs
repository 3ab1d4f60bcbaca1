//! The adapter reaches the task repository service over https: the service behind TLS with a
//! private CA's certificate, trusted through `with_trusted_ca` (SERVICE_TLS_CA); without the
//! CA the handshake is refused and the error says why. On both stores.

use std::time::Duration;
use tasks::{AdapterRetry, HttpTaskRepository, NewTask, TaskError, TaskRepository};
use testkit::https::HttpsServer;
use testkit::smtp::TestCertificate;

const TOKEN: &str = "s3cret-token-for-https";

async fn reaches_the_service_over_https_only_with_the_private_ca(database_url: &str) {
    let Some(certificate) = TestCertificate::create() else {
        return;
    };
    let repo = tasks::connect(database_url).await.unwrap();
    let server = HttpsServer::start(
        tasks::http::router(repo, Some(TOKEN.to_string())),
        &certificate,
    )
    .await;

    let trusted = HttpTaskRepository::new(&server.base, Some(TOKEN.to_string()))
        .with_trusted_ca(Some(&certificate.ca))
        .expect("the CA file is usable");
    let created = trusted
        .create(NewTask::new(
            "send_batch",
            serde_json::json!({"over": "tls"}),
        ))
        .await
        .expect("created over https");
    let fetched = trusted.get(created.id).await.expect("read over https");
    assert_eq!(
        fetched.expect("the task exists").payload,
        serde_json::json!({"over": "tls"})
    );
    assert_eq!(trusted.counts().await.unwrap()["pending"], 1);
    assert!(server.failed_handshakes.lock().unwrap().is_empty());

    // The built-in roots alone do not know the private CA: refused, and the error names the
    // certificate problem (once: a refused handshake is not worth repeating in a test).
    let untrusted =
        HttpTaskRepository::new(&server.base, Some(TOKEN.to_string())).with_retry(AdapterRetry {
            attempts: 1,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
        });
    match untrusted.counts().await {
        Err(TaskError::Unreachable { url, reason, .. }) => {
            assert!(url.starts_with("https://"), "{url}");
            assert!(reason.contains("UnknownIssuer"), "{reason}");
        }
        other => panic!("expected a refused handshake, got {other:?}"),
    }
    // The server sees the handshake fail once the client's alert arrives.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.failed_handshakes.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server saw no failed handshake"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A CA file that is not one is refused with its path before any request.
    let not_pem = certificate.cert.with_file_name("not-a-ca.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let err = HttpTaskRepository::new(&server.base, None)
        .with_trusted_ca(Some(&not_pem))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("not-a-ca.pem"), "{err}");
}

mod sqlite {
    #[tokio::test]
    async fn reaches_the_service_over_https_only_with_the_private_ca() {
        let database = testkit::SqliteDatabase::create();
        super::reaches_the_service_over_https_only_with_the_private_ca(&database.url).await;
    }
}

mod postgres {
    #[tokio::test]
    async fn reaches_the_service_over_https_only_with_the_private_ca() {
        let Some(database) = testkit::PostgresDatabase::create().await else {
            return;
        };
        super::reaches_the_service_over_https_only_with_the_private_ca(&database.url).await;
    }
}
