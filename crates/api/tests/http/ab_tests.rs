//! A/B tests end to end on both stores: the campaign is created and sent through the API, a
//! worker delivers to a real SMTP server (aiosmtpd) on a clock the test moves by hand, opens
//! are the real pixel URLs of the received messages requested from the app, and the campaign
//! processor decides when that clock passes `decide_after`.

use crate::support::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tasks::Clock;

/// What a test needs besides the app: the SMTP server, a worker and the campaign processor,
/// both on `clock`.
struct AbHarness {
    sink: testkit::smtp::Aiosmtpd,
    worker: TestWorker,
    clock: tasks::ManualClock,
    tasks: Arc<dyn tasks::TaskRepository>,
}

impl AbHarness {
    /// `None` without aiosmtpd (which fails the run under REQUIRE_SMTP).
    async fn start(app: &TestApp) -> Option<AbHarness> {
        let sink = testkit::smtp::Aiosmtpd::start()?;
        let transport = delivery::transport_from_config(&delivery::TransportConfig {
            smtp_url: Some(sink.url()),
            ..delivery::TransportConfig::default()
        })
        .expect("SMTP transport");
        // An hour ahead of the system clock, so the tasks the API creates (stamped with the
        // system's time) are due at once for the worker's repository, which runs on this one.
        let clock =
            tasks::ManualClock::new(time::OffsetDateTime::now_utc() + time::Duration::hours(1));
        let tasks = tasks::connect_with(
            &app.database_url,
            Arc::new(clock.clone()),
            tasks::Backoff::default(),
        )
        .await
        .expect("task repository opens");
        let worker = TestWorker::start_on(app, transport, tasks.clone(), Arc::new(clock.clone()));
        Some(AbHarness {
            sink,
            worker,
            clock,
            tasks,
        })
    }

    /// A campaign processor replica (any number may run; each check is given the clock's
    /// time).
    fn scheduler(&self, app: &TestApp) -> processor::Scheduler {
        processor::Scheduler::new(
            processor::SchedulerConfig::new(Duration::from_secs(60)),
            app.store.clone(),
            self.tasks.clone(),
        )
    }

    /// Every message the SMTP server received, in arrival order.
    fn received(&self) -> Vec<Received> {
        self.sink
            .messages()
            .iter()
            .map(|m| Received::of(m))
            .collect()
    }

    /// Waits until the server has received `count` messages.
    async fn wait_received(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.sink.message_count() < count {
            assert!(
                Instant::now() < deadline,
                "{} of {count} messages received",
                self.sink.message_count()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One received message: who it went to, its variant (header), subject and open pixel.
struct Received {
    to: String,
    variant: String,
    subject: String,
    pixel: String,
}

impl Received {
    fn of(bytes: &[u8]) -> Received {
        let parsed = mail_parser::MessageParser::default().parse(bytes).unwrap();
        let html = parsed.body_html(0).expect("an HTML part").to_string();
        let pixel = html
            .split("<img src=\"")
            .nth(1)
            .map(|rest| rest[..rest.find('"').unwrap()].to_string())
            .expect("an open pixel");
        Received {
            to: recipient_of(bytes),
            variant: parsed
                .header_raw("X-Campaign-Variant")
                .expect("the variant header is on")
                .trim()
                .to_string(),
            subject: parsed.subject().unwrap_or_default().to_string(),
            pixel,
        }
    }
}

/// The sample campaign as an A/B test of subject lines `names` on `recipients` readers.
fn ab_campaign(names: &[&str], recipients: usize, ab_test: Value) -> Value {
    let mut campaign = sample_campaign();
    campaign["variants"] = names
        .iter()
        .map(|name| {
            json!({
                "name": name,
                "subject": format!("[{name}] {{{{ first_name | default(\"Reader\") }}}}, your December list"),
            })
        })
        .collect();
    campaign["ab_test"] = ab_test;
    campaign["recipients"] = (0..recipients)
        .map(|i| json!({"email": format!("reader{i:04}@example.com")}))
        .collect();
    campaign
}

/// Creates and sends a campaign; returns its id.
async fn create_and_send(app: &TestApp, campaign: &Value) -> String {
    let response = app.post_json("/api/v1/campaigns", campaign).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    let id = created["campaign"]["id"].as_str().unwrap().to_string();
    let response = app
        .post_json(&format!("/api/v1/campaigns/{id}/send"), &json!({}))
        .await;
    assert!(response.status().is_success(), "{}", response.status());
    id
}

/// Polls the campaign's status until `done` holds; returns it.
async fn wait_status(app: &TestApp, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (_, status) = app
            .get_json(&format!("/api/v1/campaigns/{id}/status"))
            .await;
        if done(&status) {
            return status;
        }
        assert!(Instant::now() < deadline, "never {what}: {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Requests a message's open pixel from the app, as a mail client showing it would.
async fn open(app: &TestApp, message: &Received) {
    let path = message
        .pixel
        .strip_prefix("https://mail.example.test")
        .expect("under PUBLIC_BASE_URL");
    let response = reqwest::get(app.url(path)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// 1,000 recipients, three subject lines, a 30 % test slice: the slice is 100 per variant,
/// opens (through the received messages' pixels) favour B, nothing is decided before
/// `decide_after` on the processor's clock, then exactly one replica decides B and exactly the
/// other 700 receive B, nobody twice; the per-variant report adds up to the campaign's.
async fn the_variant_opened_most_goes_to_exactly_the_rest_of_the_list(app: TestApp) {
    let Some(harness) = AbHarness::start(&app).await else {
        return;
    };
    let campaign = ab_campaign(
        &["A", "B", "C"],
        1000,
        json!({"test_fraction": 0.3, "metric": "opens", "decide_after": "4h", "variant_header": true}),
    );
    let id = create_and_send(&app, &campaign).await;
    let status = wait_status(&app, &id, "waiting for the decision", |s| {
        s["ab_test"]["phase"] == "waiting_for_decision"
    })
    .await;
    assert_eq!(
        status["status"], "sending",
        "held back, not finished: {status}"
    );
    assert_eq!(status["deliveries"]["sent"], 300, "{status}");
    assert_eq!(status["deliveries"]["pending"], 700, "{status}");
    harness.wait_received(300).await;

    let slice = harness.received();
    let mut per_variant: BTreeMap<String, Vec<&Received>> = BTreeMap::new();
    for message in &slice {
        assert!(
            message
                .subject
                .starts_with(&format!("[{}]", message.variant)),
            "the header names the variant sent: {} / {}",
            message.variant,
            message.subject
        );
        per_variant
            .entry(message.variant.clone())
            .or_default()
            .push(message);
    }
    let sizes: Vec<(&str, usize)> = per_variant
        .iter()
        .map(|(name, messages)| (name.as_str(), messages.len()))
        .collect();
    assert_eq!(sizes, [("A", 100), ("B", 100), ("C", 100)]);

    // B is opened by 50 readers (ten of them twice), A by 20, C by 10.
    for (name, readers) in [("A", 20), ("B", 50), ("C", 10)] {
        for message in &per_variant[name][..readers] {
            open(&app, message).await;
        }
    }
    for message in &per_variant["B"][..10] {
        open(&app, message).await;
    }
    app.state.engagement.events().flush().await;

    let scheduler = harness.scheduler(&app);
    let early = scheduler
        .check(harness.clock.now() + time::Duration::hours(3), true)
        .await
        .unwrap();
    assert!(early.decided.is_empty(), "decided before decide_after");
    assert_eq!(harness.sink.message_count(), 300, "the rest is held back");

    harness.clock.advance(time::Duration::hours(4));
    let at = harness.clock.now();
    let replica = harness.scheduler(&app);
    let (first, second) = tokio::join!(scheduler.check(at, false), replica.check(at, true));
    let mut decided = first.unwrap().decided;
    decided.extend(second.unwrap().decided);
    assert_eq!(
        decided,
        [(id.parse().unwrap(), "B".to_string())],
        "one replica decides, once"
    );

    let status = wait_status(&app, &id, "completed", |s| s["status"] == "completed").await;
    assert_eq!(status["deliveries"]["sent"], 1000, "{status}");
    assert_eq!(status["ab_test"]["winner"], "B", "{status}");
    harness.wait_received(1000).await;
    let everything = harness.received();
    assert_eq!(everything.len(), 1000, "one message per recipient");
    let reached: HashSet<&str> = everything.iter().map(|m| m.to.as_str()).collect();
    assert_eq!(reached.len(), 1000, "nobody received two messages");
    let in_slice: HashSet<&str> = slice.iter().map(|m| m.to.as_str()).collect();
    let rest: Vec<&Received> = everything
        .iter()
        .filter(|m| !in_slice.contains(m.to.as_str()))
        .collect();
    assert_eq!(rest.len(), 700);
    assert!(
        rest.iter()
            .all(|m| m.variant == "B" && m.subject.starts_with("[B]")),
        "the rest gets the winner only"
    );

    let (_, report) = app
        .get_json(&format!("/api/v1/campaigns/{id}/analytics"))
        .await;
    let variants = report["variants"].as_array().unwrap();
    let sum = |pick: &dyn Fn(&Value) -> i64| variants.iter().map(pick).sum::<i64>();
    assert_eq!(
        sum(&|v| v["recipients"].as_i64().unwrap()),
        report["recipients"].as_i64().unwrap(),
        "{report}"
    );
    assert_eq!(
        sum(&|v| v["sent"].as_i64().unwrap()),
        report["sent"].as_i64().unwrap(),
        "{report}"
    );
    assert_eq!(
        sum(&|v| v["delivered"].as_i64().unwrap()),
        report["delivered"].as_i64().unwrap(),
        "{report}"
    );
    assert_eq!(
        sum(&|v| v["opens"]["total"].as_i64().unwrap()),
        report["opens"]["total"].as_i64().unwrap(),
        "{report}"
    );
    assert_eq!(
        sum(&|v| v["opens"]["unique"].as_i64().unwrap()),
        report["opens"]["unique"].as_i64().unwrap(),
        "{report}"
    );
    let by_name = |name: &str| variants.iter().find(|v| v["name"] == name).unwrap().clone();
    assert_eq!(
        by_name("B")["recipients"],
        800,
        "its 100 and the rest: {report}"
    );
    assert_eq!(by_name("B")["opens"]["unique"], 50, "{report}");
    assert_eq!(by_name("B")["opens"]["total"], 60, "{report}");
    assert_eq!(by_name("A")["recipients"], 100, "{report}");
    let decision = &report["ab_test"]["decision"];
    assert_eq!(decision["rule"], "best_rate", "{report}");
    assert_eq!(decision["metric"], "opens", "{report}");
    let numbers: Vec<(i64, i64)> = decision["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["delivered"].as_i64().unwrap(),
                v["events"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(numbers, [(100, 20), (100, 50), (100, 10)], "{report}");
    assert_eq!(report["ab_test"]["phase"], "finished", "{report}");
    harness.worker.stop().await;
}

testkit::backend_suite! {
    #[tokio::test] with_app => [
        the_variant_opened_most_goes_to_exactly_the_rest_of_the_list,
    ];
}
