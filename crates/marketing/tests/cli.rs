//! The binary as a user runs it: configuration errors, the roles' start-up lines, graceful
//! shutdown, and the streamed recipient import's memory use.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use testkit::process::Process;

use support::{BINARY, example, with_database};

mod support;

fn marketing(dir: &Path) -> Command {
    let mut command = Command::new(BINARY);
    command
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("API_BIND")
        .env("RUST_LOG", "info");
    command
}

#[test]
fn a_bad_environment_value_fails_at_start_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let output = marketing(dir.path())
        .arg("serve")
        .env("API_BIND", "localhost")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("API_BIND must be an IP address and port"),
        "{stderr}"
    );

    let output = marketing(dir.path())
        .arg("migrate")
        .env("DATABASE_URL", "mysql://db/x")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("DATABASE_URL must start with sqlite://")
    );
}

#[test]
fn dotenv_is_read_and_flags_override_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "DATABASE_URL=postgres-typo://nowhere\n",
    )
    .unwrap();
    let output = marketing(dir.path()).arg("migrate").output().unwrap();
    assert_eq!(output.status.code(), Some(2), "the .env value is used");
    assert!(String::from_utf8_lossy(&output.stderr).contains("DATABASE_URL"));

    let output = marketing(dir.path())
        .args(["migrate", "--database-url", "sqlite://flag.db"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("sqlite store"));
    assert!(dir.path().join("flag.db").exists());
}

#[test]
fn scheduler_and_submit_say_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let output = marketing(dir.path())
        .arg("scheduler")
        .env("CAMPAIGN_CHECK_INTERVAL", "soon")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("CAMPAIGN_CHECK_INTERVAL must be a positive number")
    );

    let output = marketing(dir.path()).arg("submit").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--template <FILE>"));
}

/// A secret variable set to nothing (`NAME=`, as copied from an example file) would silently
/// mean "no secret" (no authentication, for TASK_REPO_TOKEN): every role that reads one refuses
/// it at start, naming the variable, with exit code 2 and without echoing the value.
#[test]
fn an_empty_secret_variable_refuses_to_start_every_role_that_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let submit = ["submit", "--template", "t.json", "--recipients", "r.csv"];
    let cases: &[(&str, &str, &[&[&str]])] = &[
        (
            "TASK_REPO_TOKEN",
            "",
            &[
                &["api"],
                &["worker"],
                &["scheduler"],
                &["campaign-processor"],
                &["task-repo"],
                &submit,
            ],
        ),
        ("WEBHOOK_SECRET", "", &[&["api"], &["worker"], &["serve"]]),
        ("BOUNCE_WEBHOOK_SECRET", " ", &[&["api"], &["serve"]]),
        ("TRACKING_SECRET", "", &[&["api"], &["worker"], &["serve"]]),
        ("TRACKING_PREVIOUS_SECRETS", "", &[&["api"], &["worker"]]),
        ("MARKETING_API_KEY", "\t", &[&submit]),
        (
            "SMTP_URL",
            "",
            &[&["api"], &["worker"], &["campaign-processor"], &["serve"]],
        ),
    ];
    for (variable, value, roles) in cases {
        for args in *roles {
            let output = testkit::process::isolated_command(
                BINARY,
                dir.path(),
                args,
                &[(variable, value.to_string())],
            )
            .output()
            .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            let case = format!("{variable}={value:?} marketing {}", args.join(" "));
            assert_eq!(output.status.code(), Some(2), "{case}: {stderr}");
            assert!(
                stderr.contains(variable) && stderr.contains("is set but empty"),
                "{case}: {stderr}"
            );
            assert!(!stderr.contains("invalid value"), "{case}: {stderr}");
        }
    }

    // An empty entry among the previous tracking secrets, and an empty password in SMTP_URL.
    let good = "a-tracking-secret-of-at-least-32-bytes";
    for (variable, value, needle) in [
        (
            "TRACKING_PREVIOUS_SECRETS",
            format!("{good},,{good}"),
            "an entry of TRACKING_PREVIOUS_SECRETS is set but empty",
        ),
        (
            "SMTP_URL",
            "smtp://mailer:@smtp.example.com:587".to_string(),
            "the password in SMTP_URL is set but empty",
        ),
        (
            // Too short rather than empty: refused without printing the value.
            "TRACKING_SECRET",
            "short-but-secret".to_string(),
            "TRACKING_SECRET must be at least 32 bytes",
        ),
    ] {
        let output = testkit::process::isolated_command(
            BINARY,
            dir.path(),
            &["api"],
            &[(variable, value.clone())],
        )
        .output()
        .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{variable}: {stderr}");
        assert!(stderr.contains(needle), "{variable}: {stderr}");
        assert!(
            !stderr.contains(&value),
            "the value is not echoed: {stderr}"
        );
    }
}

/// The example environment file leaves every secret unset (commented out), never `NAME=`,
/// so a copied example starts.
#[test]
fn the_example_environment_file_sets_no_variable_to_empty() {
    let path = format!("{}/../../.env.example", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let empty: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.split_once('=')
                .is_some_and(|(_, value)| value.trim().is_empty())
        })
        .collect();
    assert!(
        empty.is_empty(),
        ".env.example sets variables to empty: {empty:?}"
    );
}

#[test]
fn api_keys_are_shown_once_listed_without_secrets_and_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let output = marketing(dir.path())
        .args(["api-key", "create", "--name", "newsletter team"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let key = String::from_utf8(output.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("mbk_"), "{key}");
    let id = key
        .trim_start_matches("mbk_")
        .split('_')
        .next()
        .unwrap()
        .to_string();

    let output = marketing(dir.path())
        .args(["api-key", "list", "--json"])
        .output()
        .unwrap();
    let listed = String::from_utf8(output.stdout).unwrap();
    let secret = key.rsplit('_').next().unwrap();
    assert!(
        listed.contains(&id) && listed.contains("newsletter team"),
        "{listed}"
    );
    assert!(!listed.contains(secret), "the secret is never shown again");

    let output = marketing(dir.path())
        .args(["api-key", "revoke", &id])
        .output()
        .unwrap();
    assert!(output.status.success());
    let output = marketing(dir.path())
        .args(["api-key", "list"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("revoked"));
    let output = marketing(dir.path())
        .args(["api-key", "revoke", "no-such-key"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no API key has the id"));
}

#[test]
fn suppressions_are_added_listed_and_removed_in_the_local_store() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| marketing(dir.path()).args(args).output().unwrap();
    for (email, reason) in [
        ("Zed@Example.com", "complaint"),
        ("amy@example.com", "manual"),
    ] {
        let output = run(&["suppressions", "add", email, "--reason", reason]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let output = run(&["suppressions", "list", "--json"]);
    assert!(output.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let pairs: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["email"].as_str().unwrap(), s["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("amy@example.com", "manual"),
            ("Zed@Example.com", "complaint")
        ]
    );
    let output = run(&["suppressions", "list", "--limit", "1", "--json"]);
    let first: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(first.as_array().unwrap().len(), 1);

    let output = run(&["suppressions", "remove", "ZED@example.com", "--json"]);
    assert!(output.status.success());
    let removed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(removed["suppressed"], false);
    let table = String::from_utf8(run(&["suppressions", "list"]).stdout).unwrap();
    assert!(table.contains("amy@example.com") && !table.to_lowercase().contains("zed@"));

    // Bad input: a non-zero exit with a message that says what to fix.
    let output = run(&["suppressions", "remove", "zed@example.com"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not on the suppression list"));
    let output = run(&["suppressions", "add", "not an address"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("give one like someone@example.com"));
}

#[test]
fn preview_prints_or_writes_one_recipients_message() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "preview",
        &example("sample_campaign.json"),
        "--recipients",
        &example("sample_recipients.csv"),
        "--recipient",
        "2",
    ];
    let output = marketing(dir.path()).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(
        printed.starts_with("Subject: Noah, your December reading list is here"),
        "{printed}"
    );
    assert!(
        printed.contains("--- html ---") && printed.contains("/u/"),
        "{printed}"
    );

    let eml = dir.path().join("noah.eml");
    let output = marketing(dir.path())
        .args(args)
        .arg("--eml")
        .arg(&eml)
        .output()
        .unwrap();
    assert!(output.status.success());
    let bytes = std::fs::read_to_string(&eml).unwrap();
    assert!(
        bytes.contains("\r\nTo: <noah.garcia1@mail.example>\r\n"),
        "{bytes}"
    );
    assert!(bytes.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"));

    let output = marketing(dir.path())
        .args([
            "preview",
            &example("sample_campaign.json"),
            "--recipient",
            "1",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("there is no recipient 1"));
}

#[test]
fn validate_checks_templates_against_the_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, r#"{"name":"n","from":{"email":"x@example.com"},"templates":{"subject":"Hi","text":"line one\n{% if %}"}}"#).unwrap();
    let output = marketing(dir.path())
        .arg("validate")
        .arg(&broken)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("text template, line 2"), "{stderr}");

    let strict = dir.path().join("strict.json");
    std::fs::write(&strict, r#"{"name":"n","from":{"email":"x@example.com"},"templates":{"subject":"Hi {{ nickname }}","text":"t"}}"#).unwrap();
    let output = marketing(dir.path())
        .arg("validate")
        .arg(&strict)
        .arg("--recipients")
        .arg(example("sample_recipients.csv"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(
            "subject template, line 1: `nickname` is used but no recipient has that field"
        )
    );
}

#[test]
fn validate_reports_every_problem_of_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let output = marketing(dir.path())
        .args([
            "validate",
            &example("sample_campaign.json"),
            "--recipients",
            &example("sample_recipients.csv"),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("50 recipient(s), 0 duplicate(s)"));

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"name":"","from":{"email":"x@example.com"},"templates":{"subject":"a\nb","text":"t"},"batch_size":0}"#).unwrap();
    let output = marketing(dir.path())
        .arg("validate")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for expected in [
        "name: must not be empty",
        "templates.subject: must be one line",
        "batch_size: must be between 1",
    ] {
        assert!(stderr.contains(expected), "{expected} in {stderr}");
    }
}

#[test]
fn validate_send_and_submit_refuse_a_schedule_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut campaign: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(example("sample_campaign.json")).unwrap())
            .unwrap();
    for (raw, says) in [
        ("2020-01-01T00:00:00Z", "in the past"),
        ("0000-01-01T00:00:00+23:59", "before 1970"),
        ("9999-12-31T23:59:59Z", "5 years"),
        ("2030-01-01T00:00:00.123456789Z", "fractional digits"),
    ] {
        campaign["scheduled_at"] = raw.into();
        let file = dir.path().join("scheduled.json");
        std::fs::write(&file, serde_json::to_vec(&campaign).unwrap()).unwrap();
        let file = file.to_str().unwrap();
        for args in [
            vec!["validate", file],
            vec![
                "send",
                file,
                "--recipients",
                &example("sample_recipients.csv"),
            ],
            vec!["submit", "--template", file],
        ] {
            let output = marketing(dir.path())
                .env("SMTP_URL", "smtp://127.0.0.1:1")
                .env("TRACKING_SECRET", "a-tracking-secret-of-at-least-32-bytes")
                .args(&args)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{args:?} with {raw}: {stderr}");
            assert!(
                stderr.contains("scheduled_at") && stderr.contains(says),
                "{args:?} with {raw}: {stderr}"
            );
        }
    }
    assert!(
        !dir.path().join("marketing.db").exists(),
        "nothing was stored"
    );
}

/// A running `marketing serve` (its output in `serve.log`), killed when dropped.
struct Server {
    process: Process,
    base: String,
}

impl Server {
    fn start(dir: &Path) -> Server {
        let mut command = marketing(dir);
        command.args(["serve", "--api-bind", "127.0.0.1:0"]);
        let mut process = Process::spawn("serve", dir, command);
        // The start-up line is the synchronisation point: the address is known once the
        // server says where it listens.
        let base = process.wait_for_line("API listening on ", Duration::from_secs(30));
        Server { process, base }
    }

    fn log(&self) -> String {
        self.process.log()
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        self.process.signal("-TERM");
        self.process.wait_exit(Duration::from_secs(30))
    }

    fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.process.pid())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

#[tokio::test]
async fn serve_logs_its_address_and_store_answers_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path());
    let log = server.log();
    assert!(
        log.contains("store=\"sqlite\"") || log.contains("store=sqlite"),
        "{log}"
    );
    assert!(log.contains("sqlite://marketing.db"), "{log}");
    let ready: serde_json::Value = reqwest::get(format!("{}/ready", server.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["store"], "sqlite");
    assert!(
        dir.path().join("marketing.db").exists(),
        "the embedded default store is a file in the working directory"
    );
    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
}

/// `serve` runs the campaign processor too: a campaign scheduled through the API 2 s ahead is
/// started on time and delivered (to the outbox, the default transport).
#[tokio::test]
async fn serve_starts_a_campaign_scheduled_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let log = server.log();
    assert!(log.contains("campaign processor started"), "{log}");
    let key = marketing(dir.path())
        .args(["api-key", "create", "--name", "scheduler"])
        .output()
        .unwrap();
    let key = String::from_utf8(key.stdout).unwrap().trim().to_string();
    let client = reqwest::Client::new();
    let api = |path: String| format!("{}/api/v1/campaigns{path}", server.base);
    let created: serde_json::Value = client
        .post(api(String::new()))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(std::fs::read(example("sample_campaign.json")).unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["campaign"]["id"].as_str().unwrap().to_string();
    let imported = client
        .post(api(format!("/{id}/recipients")))
        .bearer_auth(&key)
        .header("content-type", "text/csv")
        .body(std::fs::read(example("sample_recipients.csv")).unwrap())
        .send()
        .await
        .unwrap();
    assert!(imported.status().is_success());
    let at = (time::OffsetDateTime::now_utc() + time::Duration::seconds(2))
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let scheduled = client
        .post(api(format!("/{id}/schedule")))
        .bearer_auth(&key)
        .json(&serde_json::json!({"scheduled_at": at}))
        .send()
        .await
        .unwrap();
    assert_eq!(scheduled.status(), reqwest::StatusCode::OK);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        let status: serde_json::Value = client
            .get(api(format!("/{id}/status")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["status"] == "completed" {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(status["started_late"], false, "{status}");
    assert!(
        status["start_delay_seconds"].as_f64().unwrap() < 1.5,
        "{status}"
    );
    assert_eq!(status["recipients"], 50, "{status}");
    assert_eq!(status["deliveries"]["pending"], 0, "{status}");
    assert!(
        status["deliveries"]["sent"].as_i64().unwrap() > 0,
        "{status}"
    );
}

#[tokio::test]
async fn campaigns_list_and_status_read_what_the_api_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let key = marketing(dir.path())
        .args(["api-key", "create", "--name", "cli"])
        .output()
        .unwrap();
    let key = String::from_utf8(key.stdout).unwrap().trim().to_string();
    let client = reqwest::Client::new();
    let created: serde_json::Value = client
        .post(format!("{}/api/v1/campaigns", server.base))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(std::fs::read(example("sample_campaign.json")).unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["campaign"]["id"].as_str().unwrap().to_string();
    client
        .post(format!("{}/api/v1/campaigns/{id}/recipients", server.base))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "text/csv")
        .body(std::fs::read(example("sample_recipients.csv")).unwrap())
        .send()
        .await
        .unwrap();

    let output = marketing(dir.path())
        .args(["campaigns", "list", "--json"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["recipient_count"], 50);
    let output = marketing(dir.path())
        .args(["campaigns", "list", "--status", "sending"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains(&id),
        "filtered out"
    );
    let output = marketing(dir.path())
        .args(["campaigns", "list", "--status", "sendng"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "an unknown state is a usage error"
    );

    let output = marketing(dir.path())
        .args(["status", &id, "--json"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (status["status"].as_str(), status["recipients"].as_i64()),
        (Some("draft"), Some(50))
    );
    assert_eq!(status["deliveries"]["pending"], 50);
    let output = marketing(dir.path())
        .args(["status", "not-an-id"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("is not a campaign id"));
}

/// A campaign with a local send time whose hour has just passed everywhere: once `serve`'s
/// worker has split it, nobody is sent and `marketing status` lists each zone's waiting
/// recipients with their release, the next occurrence of that local time (Tokyo is UTC+9
/// all year).
#[tokio::test]
async fn status_lists_the_zones_a_local_send_time_holds() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let key = marketing(dir.path())
        .args(["api-key", "create", "--name", "zones"])
        .output()
        .unwrap();
    let key = String::from_utf8(key.stdout).unwrap().trim().to_string();
    let now = time::OffsetDateTime::now_utc();
    let local = now - time::Duration::minutes(2);
    let hour_minute = format!("{:02}:{:02}", local.hour(), local.minute());
    let mut campaign: serde_json::Value =
        serde_json::from_slice(&std::fs::read(example("sample_campaign.json")).unwrap()).unwrap();
    campaign["local_send_time"] = serde_json::json!({
        "time": hour_minute, "timezone_field": "tz", "fallback_timezone": "UTC"
    });
    campaign["recipients"] = serde_json::json!([
        {"email": "a@tokyo.example", "first_name": "A", "tz": "Asia/Tokyo"},
        {"email": "b@tokyo.example", "first_name": "B", "tz": "Asia/Tokyo"},
        {"email": "c@nowhere.example", "first_name": "C"}
    ]);
    let client = reqwest::Client::new();
    let api = |path: &str| format!("{}/api/v1/campaigns{path}", server.base);
    let created: serde_json::Value = client
        .post(api(""))
        .bearer_auth(&key)
        .json(&campaign)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["campaign"]["id"].as_str().unwrap().to_string();
    let sent = client
        .post(api(&format!("/{id}/send")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);

    // Held once every zone has a release time.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let output = marketing(dir.path())
            .args(["status", &id, "--json"])
            .output()
            .unwrap();
        assert!(output.status.success());
        let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let zones = status["time_zones"].as_array().cloned().unwrap_or_default();
        if zones.len() == 2 && zones.iter().all(|z| z["due_at"].is_string()) {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "not held: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["deliveries"]["sent"], 0);
    for (zone, waiting, offset_hours) in [("Asia/Tokyo", 2, 9), ("UTC", 1, 0)] {
        let entry = status["time_zones"]
            .as_array()
            .unwrap()
            .iter()
            .find(|z| z["zone"] == zone)
            .unwrap_or_else(|| panic!("{zone} in {status}"));
        assert_eq!(entry["waiting"], waiting);
        let due = time::OffsetDateTime::parse(
            entry["due_at"].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap();
        assert!(
            due > now && due <= now + time::Duration::DAY,
            "{zone}: {due}"
        );
        let wall = due.to_offset(time::UtcOffset::from_hms(offset_hours, 0, 0).unwrap());
        assert_eq!(
            format!("{:02}:{:02}", wall.hour(), wall.minute()),
            hour_minute,
            "{zone} is released at its own {hour_minute}"
        );
    }
    let output = marketing(dir.path())
        .args(["status", &id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("2 waiting in Asia/Tokyo, due "), "{text}");
    assert!(text.contains("1 waiting in UTC, due "), "{text}");
}

/// The task repository queues mail for whoever can reach it: without TASK_REPO_TOKEN it starts
/// only on a loopback address, or on another with an explicit --insecure-no-token (and a loud
/// warning); a token shorter than the documented minimum is refused.
#[test]
fn task_repo_without_a_token_refuses_a_non_loopback_address() {
    let dir = tempfile::tempdir().unwrap();
    let refused = testkit::process::isolated_command(
        BINARY,
        dir.path(),
        &["task-repo"],
        &[("TASK_REPO_BIND", "0.0.0.0:0".to_string())],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("TASK_REPO_TOKEN") && stderr.contains("TASK_REPO_BIND=0.0.0.0:0"),
        "{stderr}"
    );
    assert!(stderr.contains("--insecure-no-token"), "{stderr}");
    assert!(
        !stderr.contains("listening"),
        "refused before listening: {stderr}"
    );

    let short = testkit::process::isolated_command(
        BINARY,
        dir.path(),
        &["task-repo"],
        &[("TASK_REPO_TOKEN", "fifteen-bytes!!".to_string())],
    )
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&short.stderr);
    assert_eq!(short.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("TASK_REPO_TOKEN must be at least 16 bytes"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("fifteen-bytes"),
        "the value is not echoed: {stderr}"
    );

    for (bind, extra, warning) in [
        (
            "127.0.0.1:0",
            None,
            "TASK_REPO_TOKEN is not set: every local process",
        ),
        (
            "0.0.0.0:0",
            Some("--insecure-no-token"),
            "INSECURE: TASK_REPO_TOKEN is not set",
        ),
    ] {
        let mut args = vec!["task-repo", "--task-repo-bind", bind];
        args.extend(extra);
        let mut child = testkit::process::isolated_command(BINARY, dir.path(), &args, &[])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut warned = false;
        loop {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("task-repo on {bind} exited before listening"))
                .unwrap();
            warned |= line.contains(warning);
            if line.contains("task repository listening on ") {
                break;
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(warned, "task-repo on {bind} warns: {warning}");
    }
}

#[tokio::test]
async fn the_task_repo_role_serves_tasks_that_the_cli_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = marketing(dir.path())
        .args([
            "task-repo",
            "--task-repo-bind",
            "127.0.0.1:0",
            "--task-repo-token",
            "task-repo-s3cret-token",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("task-repo exited before listening")
            .unwrap();
        if let Some(rest) = line.split("task repository listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let client = reqwest::Client::new();
    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let anonymous = client
        .post(format!("{base}/api/v1/tasks"))
        .json(&serde_json::json!({"kind": "send_campaign", "payload": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401, "the token is required");
    let created: serde_json::Value = client
        .post(format!("{base}/api/v1/tasks"))
        .bearer_auth("task-repo-s3cret-token")
        .json(&serde_json::json!({"kind": "send_campaign", "payload": {"campaign": "c1"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();

    let via_service = [
        "--task-repo-url",
        &base,
        "--task-repo-token",
        "task-repo-s3cret-token",
    ];
    let output = marketing(dir.path())
        .args(["tasks", "list", "--json"])
        .args(via_service)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["status"], "pending");
    let output = marketing(dir.path())
        .args(["tasks", "show", &id])
        .args(via_service)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("\"campaign\": \"c1\""));
    // The same tasks straight from the database the service uses.
    let output = marketing(dir.path())
        .args(["tasks", "counts"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("\"pending\": 1"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let output = marketing(dir.path())
        .args(["tasks", "requeue", &id])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "a pending task cannot be requeued"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("only dead tasks"));

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// A million-row CSV is imported without holding it in memory: the server's peak RSS stays far
/// below the size of the file (which it would exceed several times over if it buffered the
/// rows as recipients).
#[tokio::test]
async fn a_million_row_csv_streams_into_the_store() {
    use futures::StreamExt;
    const ROWS: usize = 1_000_000;
    const ROWS_PER_CHUNK: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let key = marketing(dir.path())
        .args(["api-key", "create", "--name", "import test"])
        .output()
        .unwrap();
    let key = String::from_utf8(key.stdout).unwrap().trim().to_string();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    let campaign: serde_json::Value = client
        .post(format!("{}/api/v1/campaigns", server.base))
        .header("content-type", "application/json")
        .body(std::fs::read(example("sample_campaign.json")).unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = campaign["campaign"]["id"].as_str().unwrap().to_string();

    let sent_bytes = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent_bytes.clone();
    let body = futures::stream::iter(0..ROWS / ROWS_PER_CHUNK).map(|chunk| {
        let mut text = String::with_capacity(ROWS_PER_CHUNK * 48);
        if chunk == 0 {
            text.push_str("email,first_name,city\n");
        }
        for i in chunk * ROWS_PER_CHUNK..(chunk + 1) * ROWS_PER_CHUNK {
            text.push_str(&format!(
                "reader{i}@subscribers.example,Reader{i},Bristol\n"
            ));
        }
        Ok::<_, std::io::Error>(text)
    });
    let body = body.inspect(move |chunk| {
        if let Ok(text) = chunk {
            counter.fetch_add(text.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let response = client
        .post(format!("{}/api/v1/campaigns/{id}/recipients", server.base))
        .header("content-type", "text/csv")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let report: serde_json::Value = response.json().await.unwrap();
    assert_eq!(report["imported"], ROWS as u64);

    let status: serde_json::Value = client
        .get(format!("{}/api/v1/campaigns/{id}/status", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["recipients"], ROWS as u64);
    let csv_mib = sent_bytes.load(std::sync::atomic::Ordering::Relaxed) / (1024 * 1024);
    let peak_mib = server.peak_rss_kib() / 1024;
    eprintln!(
        "peak RSS of serve while importing {ROWS} rows (~{csv_mib} MiB of CSV): {peak_mib} MiB"
    );
    assert!(
        peak_mib < csv_mib,
        "peak RSS {peak_mib} MiB should stay below the {csv_mib} MiB file"
    );
}

/// METRICS_BIND moves the api and serve roles' /metrics off the API's port (which also serves
/// the public tracking links) to a listener of its own, or turns it off; unset, it stays on
/// the API's port (crates/marketing/tests/monitoring.rs scrapes it there).
#[tokio::test]
async fn metrics_bind_moves_the_api_metrics_to_their_own_listener_or_turns_them_off() {
    let dir = tempfile::tempdir().unwrap();
    let status = |url: String| async move { reqwest::get(url).await.unwrap().status().as_u16() };
    for role in ["api", "serve"] {
        let env = [
            (
                "DATABASE_URL",
                format!("sqlite://{}/{role}.db", dir.path().display()),
            ),
            ("API_BIND", "127.0.0.1:0".to_string()),
            ("METRICS_BIND", "127.0.0.1:0".to_string()),
        ];
        let command = testkit::process::isolated_command(BINARY, dir.path(), &[role], &env);
        let mut process = Process::spawn(&format!("{role}-metrics"), dir.path(), command);
        let api = process.wait_for_line("API listening on ", Duration::from_secs(30));
        let metrics = process.wait_for_line("metrics listening on ", Duration::from_secs(30));
        assert_ne!(format!("{api}/metrics"), metrics);
        let scraped = reqwest::get(&metrics).await.unwrap();
        assert_eq!(scraped.status(), 200, "{role}: {metrics}");
        let text = scraped.text().await.unwrap();
        assert!(text.contains("marketing_build_info"), "{role}: {text}");
        assert_eq!(
            status(format!("{api}/metrics")).await,
            404,
            "{role}: not on the API port"
        );
        assert_eq!(
            status(format!("{api}/health")).await,
            200,
            "{role}: the API still answers"
        );
    }

    let env = [
        (
            "DATABASE_URL",
            format!("sqlite://{}/off.db", dir.path().display()),
        ),
        ("API_BIND", "127.0.0.1:0".to_string()),
        ("METRICS_BIND", "off".to_string()),
    ];
    let command = testkit::process::isolated_command(BINARY, dir.path(), &["api"], &env);
    let mut process = Process::spawn("api-metrics-off", dir.path(), command);
    let api = process.wait_for_line("API listening on ", Duration::from_secs(30));
    process.wait_for_line("metrics are off", Duration::from_secs(30));
    assert_eq!(status(format!("{api}/metrics")).await, 404);
    assert_eq!(status(format!("{api}/health")).await, 200);
    assert!(
        !process.log().contains("metrics listening on "),
        "{}",
        process.log()
    );
}

/// RUNTIME_THREADS unset: the delivering commands (`worker`, `campaign-processor`, `send`) run
/// on one thread, the others (`serve`) on one per core; set, every command runs on what was
/// asked; out of range, the process refuses to start naming the variable. Read from the task
/// processor's start line, which each of these logs.
#[tokio::test]
async fn the_runtime_threads_follow_the_command_unless_set() {
    let dir = tempfile::tempdir().unwrap();
    let cores = std::thread::available_parallelism().unwrap().get();
    let database = format!("sqlite://{}/threads.db", dir.path().display());
    let outbox = dir.path().join("outbox").display().to_string();
    for (name, args, threads, expected) in [
        (
            "serve-default",
            &["serve", "--api-bind", "127.0.0.1:0"][..],
            None,
            cores,
        ),
        (
            "serve-set",
            &["serve", "--api-bind", "127.0.0.1:0"][..],
            Some(3),
            3,
        ),
        ("worker-default", &["worker"][..], None, 1),
        ("worker-set", &["worker"][..], Some(2), 2),
        (
            "campaign-processor-default",
            &["campaign-processor"][..],
            None,
            1,
        ),
    ] {
        let mut env = vec![
            ("DATABASE_URL", database.clone()),
            ("OUTBOX_DIR", outbox.clone()),
        ];
        if let Some(n) = threads {
            env.push(("RUNTIME_THREADS", n.to_string()));
        }
        let mut process = support::spawn(name, dir.path(), args, &env);
        let logged = process.wait_for_line(" runtime_threads=", Duration::from_secs(60));
        assert_eq!(logged, expected.to_string(), "{name}");
        process.signal("-TERM");
        assert!(
            process.wait_exit(Duration::from_secs(30)).success(),
            "{name}"
        );
    }

    // `send`, the one-shot main job, delivers the sample on one thread.
    let output = marketing(dir.path())
        .env("DATABASE_URL", &database)
        .env("OUTBOX_DIR", &outbox)
        .args(["send", &example("sample_campaign.json"), "--recipients"])
        .arg(example("sample_recipients.csv"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr
            .split_whitespace()
            .any(|field| field == "runtime_threads=1"),
        "{stderr}"
    );

    let output = marketing(dir.path())
        .arg("worker")
        .env("DATABASE_URL", &database)
        .env("RUNTIME_THREADS", "0")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("RUNTIME_THREADS must be a whole number from 1 to 1024"),
        "{stderr}"
    );
}

/// MAX_IN_FLIGHT unset is 4 messages per SMTP connection on SQLite and 8 on PostgreSQL, where
/// every message holds its slot for round trips to the server; set, it is what was asked. Read
/// from the task processor's start line of `marketing serve`.
async fn the_in_flight_default_follows_the_database(database: testkit::TestDatabase) {
    let dir = tempfile::tempdir().unwrap();
    let per_connection = match database.backend() {
        testkit::Backend::Sqlite => 4,
        testkit::Backend::Postgres => 8,
    };
    for (name, max_in_flight, expected) in [
        ("serve-default", None, 3 * per_connection),
        ("serve-set", Some(5), 5),
    ] {
        let mut env = vec![
            ("DATABASE_URL", database.url().to_string()),
            ("SMTP_CONNECTIONS", "3".to_string()),
            (
                "OUTBOX_DIR",
                dir.path().join("outbox").display().to_string(),
            ),
        ];
        if let Some(n) = max_in_flight {
            env.push(("MAX_IN_FLIGHT", n.to_string()));
        }
        let mut serve = support::spawn(
            name,
            dir.path(),
            &["serve", "--api-bind", "127.0.0.1:0"],
            &env,
        );
        let in_flight = serve.wait_for_line(" in_flight=", Duration::from_secs(60));
        assert_eq!(in_flight, expected.to_string(), "{name}");
        serve.signal("-TERM");
        assert!(serve.wait_exit(Duration::from_secs(30)).success());
    }
}

testkit::backend_suite! {
    #[tokio::test] with_database => [the_in_flight_default_follows_the_database];
}
