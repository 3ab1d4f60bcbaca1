//! A campaign held back by a sending rate says so, on both stores: `GET …/status` and
//! `marketing status` name the rate its deferred recipients wait for (a domain group of
//! RATE_LIMITS_FILE here), how many wait and until when.

use std::path::Path;
use std::time::{Duration, Instant};
use support::{BINARY, TRACKING_SECRET, with_database};
use testkit::process::{Process, isolated_command};

mod support;

/// `marketing ARGS` on the test's database, delivering into an outbox, with a group of two
/// domains limited to one message a second.
fn marketing(dir: &Path, database_url: &str, args: &[&str]) -> std::process::Command {
    let limits = dir.join("limits.toml");
    std::fs::write(
        &limits,
        "[groups.slow]\ndomains = [\"slow.example\", \"slow2.example\"]\nrate = 1\n",
    )
    .unwrap();
    isolated_command(
        BINARY,
        dir,
        args,
        &[
            ("DATABASE_URL", database_url.to_string()),
            ("TRACKING_SECRET", TRACKING_SECRET.into()),
            ("OUTBOX_DIR", dir.join("outbox").display().to_string()),
            ("RATE_LIMITS_FILE", limits.display().to_string()),
            ("TASK_CHECK_INTERVAL", "0.2".into()),
        ],
    )
}

/// Forty recipients at a group limited to 1 message/s: after the first few go, the rest are
/// deferred to wait for the group's slots, and both the API's status and `marketing status`
/// (text and JSON) say that they wait for `group slow`, how many, and until a time to come.
async fn a_campaign_held_by_a_domain_group_rate_shows_the_wait(database: testkit::TestDatabase) {
    const COUNT: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let url = database.url().to_string();
    let key = marketing(dir.path(), &url, &["api-key", "create", "--name", "waits"])
        .output()
        .unwrap();
    assert!(key.status.success(), "{key:?}");
    let key = String::from_utf8(key.stdout).unwrap().trim().to_string();
    let mut serve = Process::spawn(
        "serve",
        dir.path(),
        marketing(dir.path(), &url, &["serve", "--api-bind", "127.0.0.1:0"]),
    );
    let base = serve.wait_for_line("API listening on ", Duration::from_secs(60));

    let recipients: Vec<serde_json::Value> = (0..COUNT)
        .map(|n| {
            let domain = if n % 2 == 0 {
                "slow.example"
            } else {
                "slow2.example"
            };
            serde_json::json!({"email": format!("reader{n}@{domain}")})
        })
        .collect();
    let campaign = serde_json::json!({
        "name": "held by a rate",
        "from": {"email": "news@shop.example"},
        "templates": {"subject": "Hello", "text": "Hello.\nUnsubscribe: {{ unsubscribe_url }}\n"},
        "recipients": recipients,
    });
    let client = reqwest::Client::new();
    let api = |path: &str| format!("{base}/api/v1/campaigns{path}");
    let created = client
        .post(api(""))
        .bearer_auth(&key)
        .json(&campaign)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201, "{}", created.text().await.unwrap());
    let created: serde_json::Value = created.json().await.unwrap();
    let id = created["campaign"]["id"].as_str().unwrap().to_string();
    let sent = client
        .post(api(&format!("/{id}/send")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 202);

    // The API's status once recipients wait for the group's rate.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status: serde_json::Value = client
            .get(api(&format!("/{id}/status")))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["rate_waits"]
            .as_array()
            .is_some_and(|w| !w.is_empty())
        {
            break status;
        }
        assert!(Instant::now() < deadline, "no rate wait shown: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let asked = time::OffsetDateTime::now_utc();
    let waits = status["rate_waits"].as_array().unwrap();
    assert_eq!(waits.len(), 1, "{status}");
    let wait = &waits[0];
    assert_eq!(wait["destination"], "group slow", "{status}");
    let waiting = wait["waiting"].as_i64().unwrap();
    let deferred = status["deliveries"]["deferred"].as_i64().unwrap();
    assert!(
        waiting > 0 && waiting <= deferred,
        "{waiting} waiting of {deferred} deferred: {status}"
    );
    let at = |field: &str| {
        time::OffsetDateTime::parse(
            wait[field].as_str().unwrap(),
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    };
    // At 1 message/s the last of them comes back later than the first, after now.
    assert!(at("until") > asked, "{status}");
    assert!(at("next_at") <= at("until"), "{status}");
    assert!(
        at("until") < asked + time::Duration::seconds(COUNT as i64 * 3),
        "{status}"
    );

    // `marketing status` reads the same from the store.
    let output = marketing(dir.path(), &url, &["status", &id])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.lines()
            .any(|line| line.contains("waiting for the sending rate of group slow, until ")),
        "{text}"
    );
    let output = marketing(dir.path(), &url, &["status", &id, "--json"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["rate_waits"][0]["destination"], "group slow", "{json}");
    assert!(
        json["rate_waits"][0]["waiting"].as_i64().unwrap() > 0,
        "{json}"
    );
    serve.signal("-TERM");
    serve.wait_exit(Duration::from_secs(30));
}

testkit::backend_suite! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] with_database => [
        a_campaign_held_by_a_domain_group_rate_shows_the_wait,
    ];
}
