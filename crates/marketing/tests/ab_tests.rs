//! An A/B test through the binary, on both stores: `marketing serve` sends the test slice,
//! `marketing status` (text and JSON) shows the phase while the rest waits for the decision,
//! and the winner once it is chosen by hand.

use std::path::Path;
use std::time::Duration;
use support::{ServedApi, TRACKING_SECRET, wait_for, with_database};
use testkit::process::isolated_command;

mod support;

/// `marketing ARGS` on the test's database, delivering into an outbox.
fn marketing(dir: &Path, database_url: &str, args: &[&str]) -> std::process::Command {
    isolated_command(
        support::BINARY,
        dir,
        args,
        &[
            ("DATABASE_URL", database_url.to_string()),
            ("TRACKING_SECRET", TRACKING_SECRET.into()),
            ("OUTBOX_DIR", dir.join("outbox").display().to_string()),
            ("TASK_CHECK_INTERVAL", "0.2".into()),
            ("METRICS_BIND", "off".into()),
        ],
    )
}

fn status(dir: &Path, url: &str, id: &str) -> (String, serde_json::Value) {
    let text = marketing(dir, url, &["status", id]).output().unwrap();
    assert!(text.status.success(), "{text:?}");
    let json = marketing(dir, url, &["status", id, "--json"])
        .output()
        .unwrap();
    assert!(json.status.success(), "{json:?}");
    (
        String::from_utf8(text.stdout).unwrap(),
        serde_json::from_slice(&json.stdout).unwrap(),
    )
}

/// Twenty recipients, two subjects, half of them in the test slice, the decision an hour
/// away: once the slice is delivered `marketing status` says the test waits for its decision
/// (and when it is due); after `POST …/ab/winner` it names the winner, and the rest goes out.
async fn marketing_status_shows_the_ab_tests_phase_and_winner(database: testkit::TestDatabase) {
    const COUNT: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let url = database.url().to_string();
    let api = ServedApi::start(dir.path(), |args| marketing(dir.path(), &url, args));

    let recipients: Vec<serde_json::Value> = (0..COUNT)
        .map(|n| serde_json::json!({"email": format!("reader{n}@shop.example")}))
        .collect();
    let campaign = serde_json::json!({
        "name": "two subjects",
        "from": {"email": "news@shop.example"},
        "templates": {
            "subject": "Hello",
            "html": "<p>Hello.</p><p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p>",
        },
        "variants": [{"name": "A", "subject": "Hello"}, {"name": "B", "subject": "Hi there"}],
        "ab_test": {"test_fraction": 0.5, "metric": "opens", "decide_after": "1h"},
        "recipients": recipients,
    });
    let id = api.create_and_send(&campaign).await;

    // The slice is delivered; the rest waits for the decision an hour away.
    wait_for(Duration::from_secs(60), "the slice delivered", || {
        let (_, json) = status(dir.path(), &url, &id);
        std::future::ready((json["ab_test"]["phase"] == "waiting_for_decision").then_some(()))
    })
    .await;
    // Nothing changes until the decision: text and JSON read the same state.
    let (text, json) = status(dir.path(), &url, &id);
    assert_eq!(json["deliveries"]["sent"], COUNT / 2, "{json}");
    let decide_at = json["ab_test"]["decide_at"].as_str().unwrap();
    assert!(
        text.lines().any(|line| line.trim()
            == format!("A/B test: waiting for decision; decision due at {decide_at}")),
        "{text}"
    );

    let decided = api
        .post(
            &format!("/{id}/ab/winner"),
            &serde_json::json!({"variant": "B"}),
        )
        .await;
    assert_eq!(decided.status(), 200, "{}", decided.text().await.unwrap());
    wait_for(Duration::from_secs(60), "the rest delivered", || {
        let (_, json) = status(dir.path(), &url, &id);
        std::future::ready((json["status"] == "completed").then_some(()))
    })
    .await;
    let (text, json) = status(dir.path(), &url, &id);
    assert_eq!(json["deliveries"]["sent"], COUNT, "{json}");
    assert_eq!(json["ab_test"]["winner"], "B", "{json}");
    assert_eq!(json["ab_test"]["phase"], "finished", "{json}");
    let decided_at = json["ab_test"]["decided_at"].as_str().unwrap();
    assert!(
        text.lines().any(|line| line.trim()
            == format!("A/B test: finished; variant B won at {decided_at}")),
        "{text}"
    );
    api.stop();
}

testkit::backend_suite! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] with_database => [
        marketing_status_shows_the_ab_tests_phase_and_winner,
    ];
}
