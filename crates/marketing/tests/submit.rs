//! `marketing submit` through the real binary in its three modes — the API of a running
//! `marketing serve`, the local store, the task repository service with a `worker` — with
//! postfix's smtp-sink (a server the project did not write) counting what arrives.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use testkit::process::Process;
use testkit::smtp::SmtpSink;

use support::{BINARY, example};

mod support;
const SECRET: &str = "submit-test-secret-of-at-least-32-bytes";

fn marketing(dir: &Path, database_url: &str) -> Command {
    let mut command = Command::new(BINARY);
    command
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("TRACKING_SECRET", SECRET)
        .env("DATABASE_URL", database_url);
    command
}

/// `marketing serve` (its output in `serve.log`), killed when the test ends.
struct Serve {
    process: Process,
    address: String,
}

impl Serve {
    fn start(dir: &Path, database_url: &str, smtp_url: &str) -> Serve {
        Serve::start_with(dir, database_url, smtp_url, &[])
    }

    fn start_with(dir: &Path, database_url: &str, smtp_url: &str, env: &[(&str, &str)]) -> Serve {
        let mut command = marketing(dir, database_url);
        command
            .arg("serve")
            .env("API_BIND", "127.0.0.1:0")
            .env("SMTP_URL", smtp_url)
            .env("TASK_CHECK_INTERVAL", "0.2")
            .envs(env.iter().copied());
        let mut process = Process::spawn("serve", dir, command);
        let address = process.wait_for_line("API listening on ", Duration::from_secs(20));
        Serve { process, address }
    }

    fn log(&self) -> String {
        self.process.log()
    }
}

fn create_key(dir: &Path, database_url: &str) -> String {
    let output = marketing(dir, database_url)
        .args(["api-key", "create", "--name", "t"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

mod sqlite {
    use super::*;

    /// The load check: 10,000 recipients cycled from the sample's rows, submitted
    /// through the API of a running `serve`, followed with --wait, all of them at the sink.
    #[tokio::test(flavor = "multi_thread")]
    async fn submit_ten_thousand_through_the_api_and_wait_until_all_arrived() {
        let Some(sink) = SmtpSink::start() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let database_url = format!("sqlite://{}", dir.path().join("m.db").display());
        let key = create_key(dir.path(), &database_url);
        let serve = Serve::start(dir.path(), &database_url, &sink.url());
        // smtp-sink does not offer SMTPUTF8, so the sample's two internationalized addresses
        // (and their copies) could only fail there: cycle the other 48 rows.
        let sample: Vec<serde_json::Value> = serde_json::from_str(
            &std::fs::read_to_string(example("sample_recipients.json")).unwrap(),
        )
        .unwrap();
        let ascii: Vec<&serde_json::Value> = sample
            .iter()
            .filter(|r| r["email"].as_str().unwrap().is_ascii())
            .collect();
        assert_eq!(ascii.len(), 48);
        let recipients = dir.path().join("recipients.json");
        std::fs::write(&recipients, serde_json::to_vec(&ascii).unwrap()).unwrap();

        let output = marketing(dir.path(), &database_url)
            .args([
                "submit",
                "--template",
                &example("sample_campaign.json"),
                "--recipients",
                recipients.to_str().unwrap(),
                "--count",
                "10000",
                "--api",
                &serve.address,
                "--api-key",
                &key,
                "--wait",
                "--json",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{stderr}\nserve: {}",
            serve.log()
        );
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(summary["status"], "completed", "{summary}");
        assert_eq!(summary["recipients"], 10_000);
        let id = summary["campaign_id"].as_str().unwrap();

        let status: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/campaigns/{id}/status", serve.address))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(status["status"], "completed", "{status}");
        assert_eq!(status["recipients"], 10_000);
        assert_eq!(status["deliveries"]["sent"], 10_000, "{status}");

        let counted = sink.wait_for(Duration::from_secs(10), |c| c.messages >= 10_000);
        assert_eq!(counted.messages, 10_000, "{counted:?}");
    }

    /// The default mode: campaign and task straight into DATABASE_URL, delivered by the
    /// `serve` on the same database; errors say what to fix.
    #[tokio::test(flavor = "multi_thread")]
    async fn submit_into_the_local_store_is_delivered_by_a_worker_on_it() {
        let Some(sink) = SmtpSink::start() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let database_url = format!("sqlite://{}", dir.path().join("m.db").display());
        let _serve = Serve::start(dir.path(), &database_url, &sink.url());

        let output = marketing(dir.path(), &database_url)
            .args([
                "submit",
                "--template",
                &example("sample_campaign.json"),
                "--recipients",
                &example("sample_recipients.csv"),
                "--count",
                "7",
                "--wait",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(stdout.starts_with("campaign "), "{stdout}");
        assert!(stdout.contains("\ntask "), "{stdout}");
        assert!(stdout.contains("status completed"), "{stdout}");
        assert!(stdout.contains("sent 7"), "{stdout}");
        let counted = sink.wait_for(Duration::from_secs(10), |c| c.messages >= 7);
        assert_eq!(counted.messages, 7);

        // Through the API without a key: refused before anything is sent, saying what to do.
        let output = marketing(dir.path(), &database_url)
            .args([
                "submit",
                "--template",
                &example("sample_campaign.json"),
                "--api",
                "http://127.0.0.1:9",
            ])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&output.stderr).contains("--api needs an API key"));

        // A strict campaign printing a field no recipient has is refused before it is stored.
        let mut strict: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(example("sample_campaign.json")).unwrap(),
        )
        .unwrap();
        strict["templates"]["undefined_variables"] = "strict".into();
        strict["templates"]["subject"] = "Hello {{ nickname }}".into();
        let strict_path = dir.path().join("strict.json");
        std::fs::write(&strict_path, serde_json::to_vec(&strict).unwrap()).unwrap();
        let output = marketing(dir.path(), &database_url)
            .args([
                "submit",
                "--template",
                strict_path.to_str().unwrap(),
                "--recipients",
                &example("sample_recipients.csv"),
            ])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("`nickname`"), "{stderr}");
        let listed = marketing(dir.path(), &database_url)
            .args(["campaigns", "list", "--json"])
            .output()
            .unwrap();
        let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
        assert_eq!(
            listed.as_array().unwrap().len(),
            1,
            "only the first campaign"
        );
    }

    /// A key over the API's rate limit gets 429; submit waits for Retry-After and carries on.
    #[test]
    fn submit_waits_out_the_api_rate_limit() {
        let Some(sink) = SmtpSink::start() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let database_url = format!("sqlite://{}", dir.path().join("m.db").display());
        let key = create_key(dir.path(), &database_url);
        let serve = Serve::start_with(
            dir.path(),
            &database_url,
            &sink.url(),
            &[("API_RATE_LIMIT", "2"), ("API_RATE_BURST", "2")],
        );
        let output = marketing(dir.path(), &database_url)
            .args([
                "submit",
                "--template",
                &example("sample_campaign.json"),
                "--recipients",
                &example("sample_recipients.csv"),
                "--count",
                "4",
                "--api",
                &serve.address,
                "--api-key",
                &key,
                "--wait",
                "--json",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        assert!(
            stderr.contains("rate limit for this key is reached"),
            "{stderr}"
        );
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(summary["deliveries"]["sent"], 4, "{summary}");
    }

    /// `--task-repo`: the campaign goes as one `submit_campaign` task through the task
    /// repository service (with its token), and a `worker` reading that service stores and
    /// delivers it (tests/self_contained.rs does it without DATABASE_URL, on both stores).
    #[test]
    fn submit_through_the_task_repository_service_reaches_its_worker() {
        let Some(sink) = SmtpSink::start() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let database_url = format!("sqlite://{}", dir.path().join("m.db").display());
        let port = testkit::smtp::free_port();
        let repo_url = format!("http://127.0.0.1:{port}");
        let spawn = |name: &str, args: &[&str], env: &[(&str, &str)]| {
            let mut command = marketing(dir.path(), &database_url);
            command
                .args(args)
                .env("TASK_REPO_TOKEN", "task-repo-test-token");
            for (key, value) in env {
                command.env(key, value);
            }
            Process::spawn(name, dir.path(), command)
        };
        // Three processes would otherwise race to migrate the fresh database.
        let migrated = marketing(dir.path(), &database_url)
            .arg("migrate")
            .output()
            .unwrap();
        assert!(migrated.status.success());
        let _repo = spawn(
            "task-repo",
            &["task-repo"],
            &[("TASK_REPO_BIND", &format!("127.0.0.1:{port}"))],
        );
        let _worker = spawn(
            "worker",
            &["worker"],
            &[
                ("TASK_REPO_URL", &repo_url),
                ("SMTP_URL", &sink.url()),
                ("TASK_CHECK_INTERVAL", "0.2"),
                // Tests run in parallel: the default metrics port would collide.
                ("METRICS_BIND", "127.0.0.1:0"),
            ],
        );
        let submit = |token: &str| {
            marketing(dir.path(), &database_url)
                .args([
                    "submit",
                    "--template",
                    &example("sample_campaign.json"),
                    "--recipients",
                    &example("sample_recipients.csv"),
                    "--count",
                    "5",
                    "--task-repo",
                    &repo_url,
                    "--task-repo-token",
                    token,
                    "--wait",
                    "--json",
                ])
                .output()
                .unwrap()
        };
        // The service may still be starting: retry the submission until it answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        let output = loop {
            let output = submit("task-repo-test-token");
            let stderr = String::from_utf8_lossy(&output.stderr).to_string();
            if output.status.success() || Instant::now() > deadline {
                break output;
            }
            assert!(
                stderr.contains("was not submitted to the task repository service"),
                "{stderr}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(summary["status"], "completed", "{summary}");
        assert_eq!(summary["deliveries"]["sent"], 5, "{summary}");
        assert!(summary["task_id"].is_string());
        let counted = sink.wait_for(Duration::from_secs(10), |c| c.messages >= 5);
        assert_eq!(counted.messages, 5);

        let output = submit("a-wrong-task-repo-token");
        assert_eq!(output.status.code(), Some(1));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("TASK_REPO_TOKEN"), "{stderr}");
    }

    /// `--wait` on a campaign nothing can be sent for (the server refuses every recipient)
    /// ends with exit code 1.
    #[test]
    fn wait_exits_1_when_the_campaign_failed() {
        let Some(sink) = SmtpSink::builder().arg("-f").arg("rcpt").start() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let database_url = format!("sqlite://{}", dir.path().join("m.db").display());
        let _serve = Serve::start(dir.path(), &database_url, &sink.url());
        let output = marketing(dir.path(), &database_url)
            .args([
                "submit",
                "--template",
                &example("sample_campaign.json"),
                "--recipients",
                &example("sample_recipients.csv"),
                "--count",
                "3",
                "--wait",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(1), "{stdout}");
        assert!(stdout.contains("status failed"), "{stdout}");
        assert!(stdout.contains("failed 3"), "{stdout}");
    }
}
