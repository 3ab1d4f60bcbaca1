//! What the binary's tests share: the binary and the sample files, starting a role as a
//! process, and waiting for a condition with a deadline (never a fixed sleep).

// Each test binary includes this module and uses a part of it.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};
use testkit::process::{Process, isolated_command};

pub const BINARY: &str = env!("CARGO_BIN_EXE_marketing");

/// The TRACKING_SECRET of every role the tests start.
pub const TRACKING_SECRET: &str = "marketing-binary-tests-secret-of-at-least-32-bytes";

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(50);

/// A file of the repository's `examples/` directory.
pub fn example(name: &str) -> String {
    format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// `marketing ARGS` in `dir` with only these variables (and TRACKING_SECRET) set; its output
/// goes to `dir/NAME.log`. Roles of one test (and of tests running side by side) each get a
/// free metrics port instead of their fixed default, unless `env` names METRICS_BIND.
pub fn spawn(name: &str, dir: &Path, args: &[&str], env: &[(&str, String)]) -> Process {
    let mut command = isolated_command(BINARY, dir, args, env);
    command.env("TRACKING_SECRET", TRACKING_SECRET);
    if !env.iter().any(|(key, _)| *key == "METRICS_BIND") {
        command.env("METRICS_BIND", "127.0.0.1:0");
    }
    Process::spawn(name, dir, command)
}

/// `marketing task-repo` on `database_url` with `token`, on a free port in `dir`, once its
/// `/health` answers; returns the process and its base URL.
pub async fn start_task_repo(dir: &Path, database_url: &str, token: &str) -> (Process, String) {
    let port = testkit::smtp::free_port();
    let process = spawn(
        "task-repo",
        dir,
        &["task-repo"],
        &[
            ("DATABASE_URL", database_url.to_string()),
            ("TASK_REPO_BIND", format!("127.0.0.1:{port}")),
            ("TASK_REPO_TOKEN", token.to_string()),
        ],
    );
    let url = format!("http://127.0.0.1:{port}");
    let health = format!("{url}/health");
    wait_until(Duration::from_secs(30), "the task repository", || {
        let health = health.clone();
        async move {
            reqwest::get(&health)
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    (process, url)
}

/// Polls `check` until it answers `Some`, up to `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// Polls until `done` holds, up to `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(limit, what, || {
        let done = done();
        async move { done.await.then_some(()) }
    })
    .await
}

/// As [`wait_until`], for a condition read without waiting (a sink's arrivals, a log, the
/// clock).
pub async fn wait_until_holds(limit: Duration, what: &str, mut holds: impl FnMut() -> bool) {
    wait_until(limit, what, || std::future::ready(holds())).await
}

/// The runner of a `testkit::backend_suite!` whose cases take the fresh database itself.
pub async fn with_database<Case, Run>(database: testkit::TestDatabase, case: Case)
where
    Case: FnOnce(testkit::TestDatabase) -> Run,
    Run: std::future::Future<Output = ()>,
{
    case(database).await;
}

/// `marketing serve` on a free port, with an API key `marketing api-key create` made first:
/// what a test that drives the API of the binary starts from.
pub struct ServedApi {
    pub process: Process,
    /// The API's base URL, as the process logged it.
    pub base: String,
    pub key: String,
    pub client: reqwest::Client,
}

impl ServedApi {
    /// Starts it with `command(args)`, a `marketing ARGS` command carrying the test's settings.
    pub fn start(dir: &Path, command: impl Fn(&[&str]) -> std::process::Command) -> ServedApi {
        let key = command(&["api-key", "create", "--name", "test"])
            .output()
            .unwrap();
        assert!(key.status.success(), "{key:?}");
        let key = String::from_utf8(key.stdout).unwrap().trim().to_string();
        let mut process = Process::spawn(
            "serve",
            dir,
            command(&["serve", "--api-bind", "127.0.0.1:0"]),
        );
        let base = process.wait_for_line("API listening on ", Duration::from_secs(60));
        ServedApi {
            process,
            base,
            key,
            client: reqwest::Client::new(),
        }
    }

    /// The URL of the campaigns route `path` (`""`, `"/ID/send"`, …).
    pub fn campaigns(&self, path: &str) -> String {
        format!("{}/api/v1/campaigns{path}", self.base)
    }

    /// POSTs `body` to the campaigns route `path` with the key.
    pub async fn post(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.campaigns(path))
            .bearer_auth(&self.key)
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// Creates `campaign` and sends it; answers its id.
    pub async fn create_and_send(&self, campaign: &serde_json::Value) -> String {
        let created = self.post("", campaign).await;
        assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
        let created: serde_json::Value = created.json().await.unwrap();
        let id = created["campaign"]["id"].as_str().unwrap().to_string();
        let sent = self
            .post(&format!("/{id}/send"), &serde_json::json!({}))
            .await;
        assert_eq!(sent.status(), 202);
        id
    }

    /// The campaign's `GET …/status`.
    pub async fn status(&self, id: &str) -> serde_json::Value {
        self.client
            .get(self.campaigns(&format!("/{id}/status")))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Stops `marketing serve` with SIGTERM and waits for it to exit.
    pub fn stop(mut self) {
        self.process.signal("-TERM");
        self.process.wait_exit(Duration::from_secs(30));
    }
}
