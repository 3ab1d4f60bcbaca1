//! A campaign held back by a sending rate says so, on both stores: `GET …/status` and
//! `marketing status` name the rate its deferred recipients wait for (a domain group of
//! RATE_LIMITS_FILE here), how many wait and until when.

use std::path::Path;
use std::time::Duration;
use support::{BINARY, ServedApi, TRACKING_SECRET, wait_for, with_database};
use testkit::process::isolated_command;

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
    let api = ServedApi::start(dir.path(), |args| marketing(dir.path(), &url, args));

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
    let id = api.create_and_send(&campaign).await;

    // The API's status once recipients wait for the group's rate.
    let status = wait_for(Duration::from_secs(30), "a rate wait shown", || async {
        let status = api.status(&id).await;
        status["rate_waits"]
            .as_array()
            .is_some_and(|waits| !waits.is_empty())
            .then_some(status)
    })
    .await;
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
    let line = text
        .lines()
        .find(|line| line.contains(" waiting for the sending rate of group slow, until "))
        .unwrap_or_else(|| panic!("no rate wait line: {text}"));
    let count: i64 = line.split_whitespace().next().unwrap().parse().unwrap();
    assert!(count > 0, "how many wait: {line}");
    let output = marketing(dir.path(), &url, &["status", &id, "--json"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["rate_waits"][0]["destination"], "group slow", "{json}");
    assert!(
        json["rate_waits"][0]["waiting"].as_i64().unwrap() > 0,
        "{json}"
    );
    api.stop();
}

testkit::backend_suite! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] with_database => [
        a_campaign_held_by_a_domain_group_rate_shows_the_wait,
    ];
}
