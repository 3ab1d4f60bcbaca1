//! The command line reaches an https:// task repository service whose certificate a private
//! CA signed when SERVICE_TLS_CA names that CA, and says why it cannot without it.

use std::process::Output;
use tasks::NewTask;
use testkit::https::HttpsServer;
use testkit::smtp::TestCertificate;

const TOKEN: &str = "s3cret-token-for-the-cli-over-https";

async fn tasks_counts(base: &str, ca: Option<&std::path::Path>) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_marketing"));
    command
        .args(["tasks", "counts"])
        .env_remove("DATABASE_URL")
        .env("TASK_REPO_URL", base)
        .env("TASK_REPO_TOKEN", TOKEN);
    match ca {
        Some(ca) => command.env("SERVICE_TLS_CA", ca),
        None => command.env_remove("SERVICE_TLS_CA"),
    };
    command.output().await.expect("the binary runs")
}

mod sqlite {
    use super::*;

    #[tokio::test]
    async fn tasks_counts_over_https_with_service_tls_ca_and_refused_without() {
        let Some(certificate) = TestCertificate::create() else {
            return;
        };
        let database = testkit::SqliteDatabase::create();
        let repo = tasks::connect(&database.url).await.unwrap();
        repo.create(NewTask::new("send_batch", serde_json::json!({})))
            .await
            .unwrap();
        let server = HttpsServer::start(
            tasks::http::router(repo, Some(TOKEN.to_string())),
            &certificate,
        )
        .await;

        let trusted = tasks_counts(&server.base, Some(&certificate.ca)).await;
        let stdout = String::from_utf8_lossy(&trusted.stdout);
        let stderr = String::from_utf8_lossy(&trusted.stderr);
        assert!(trusted.status.success(), "{stdout}\n{stderr}");
        let counts: serde_json::Value = serde_json::from_str(&stdout).expect("JSON counts");
        assert_eq!(counts["pending"], 1, "{stdout}");

        let untrusted = tasks_counts(&server.base, None).await;
        let stderr = String::from_utf8_lossy(&untrusted.stderr);
        assert!(!untrusted.status.success(), "{stderr}");
        assert!(stderr.contains("invalid peer certificate"), "{stderr}");
    }
}
