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

/// One received message: who it went to, its variant (header), subject, open pixel and
/// tracked links (in the order of the HTML).
struct Received {
    to: String,
    variant: String,
    subject: String,
    pixel: String,
    clicks: Vec<String>,
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
            clicks: html
                .split("href=\"")
                .skip(1)
                .map(|rest| rest[..rest.find('"').unwrap()].to_string())
                .filter(|href| href.starts_with("https://mail.example.test/t/c/"))
                .collect(),
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
    let id = app.create_campaign(campaign).await;
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

/// Waits until the campaign's test slice is delivered and the rest waits for the decision;
/// returns the status.
async fn wait_for_decision(app: &TestApp, id: &str) -> Value {
    wait_status(app, id, "waiting for the decision", |s| {
        s["ab_test"]["phase"] == "waiting_for_decision"
    })
    .await
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

/// Follows a message's tracked link as a reader's click would, without following the redirect;
/// returns where the app sends the reader.
async fn click(app: &TestApp, link: &str) -> String {
    let path = link
        .strip_prefix("https://mail.example.test")
        .expect("under PUBLIC_BASE_URL");
    let response = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(app.url(path))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_redirection(), "{}", response.status());
    response.headers()["location"].to_str().unwrap().to_string()
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
    let status = wait_for_decision(&app, &id).await;
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

/// `POST …/ab/winner` decides before `decide_after`: an unknown variant is a 422 naming the
/// field, the chosen one goes to the rest at once, asking again for it is a 200 and another
/// winner a 409; the processor then has nothing to decide. A campaign without a test is a 409.
async fn a_winner_chosen_by_hand_is_idempotent_and_final(app: TestApp) {
    let Some(harness) = AbHarness::start(&app).await else {
        return;
    };
    let campaign = ab_campaign(
        &["A", "B"],
        20,
        json!({"test_fraction": 0.5, "metric": "clicks", "decide_after": "2d", "variant_header": true}),
    );
    let id = create_and_send(&app, &campaign).await;
    wait_for_decision(&app, &id).await;
    let path = format!("/api/v1/campaigns/{id}/ab/winner");
    let winner = |variant: &str| {
        let body = json!({ "variant": variant });
        let path = path.clone();
        let app = &app;
        async move { app.post_json(&path, &body).await }
    };
    let unknown = assert_problem(
        winner("Z").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "not a variant",
        "unknown variant",
    )
    .await;
    assert_eq!(unknown["errors"][0]["field"], "variant", "{unknown}");
    let response = winner("B").await;
    assert_eq!(response.status(), StatusCode::OK);
    let status: Value = response.json().await.unwrap();
    assert_eq!(status["ab_test"]["winner"], "B", "{status}");
    assert_eq!(status["ab_test"]["decision"]["rule"], "manual", "{status}");
    let again = winner("B").await;
    assert_eq!(again.status(), StatusCode::OK, "idempotent");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["ab_test"]["winner"], "B", "{again}");
    assert_eq!(
        again["ab_test"]["decision"], status["ab_test"]["decision"],
        "the first decision stands"
    );
    assert_problem(
        winner("A").await,
        StatusCode::CONFLICT,
        "already decided",
        "another winner",
    )
    .await;

    wait_status(&app, &id, "completed", |s| s["status"] == "completed").await;
    harness.wait_received(20).await;
    let messages = harness.received();
    let reached: HashSet<&str> = messages.iter().map(|m| m.to.as_str()).collect();
    assert_eq!((messages.len(), reached.len()), (20, 20));
    let b_messages = messages.iter().filter(|m| m.variant == "B").count();
    assert_eq!(b_messages, 15, "its 5 of the slice and the 10 of the rest");
    let later = harness.clock.now() + time::Duration::days(3);
    let report = harness.scheduler(&app).check(later, true).await.unwrap();
    assert!(report.decided.is_empty(), "decided once, by hand");
    assert_problem(
        winner("A").await,
        StatusCode::CONFLICT,
        "already decided",
        "after the rest was sent",
    )
    .await;

    let plain = app.create_sample().await;
    let plain_id = plain["campaign"]["id"].as_str().unwrap();
    assert_problem(
        app.post_json(
            &format!("/api/v1/campaigns/{plain_id}/ab/winner"),
            &json!({"variant": "A"}),
        )
        .await,
        StatusCode::CONFLICT,
        "no A/B test",
        "a campaign without a test",
    )
    .await;
    harness.worker.stop().await;
}

/// The documented rules when the results do not single out a variant: equal rates keep the
/// first variant of the document (`tie_first_variant`), and no events at all too
/// (`no_events_first_variant`). Aggregate-only tracking still counts per variant.
async fn ties_and_silence_keep_the_first_variant(app: TestApp) {
    let Some(harness) = AbHarness::start(&app).await else {
        return;
    };
    let test = json!({"test_fraction": 0.5, "metric": "opens", "decide_after": "1h", "variant_header": true});
    let mut tied = ab_campaign(&["first", "second"], 8, test.clone());
    tied["tracking"]["aggregate_only"] = json!(true);
    let tied = create_and_send(&app, &tied).await;
    let silent = create_and_send(&app, &ab_campaign(&["first", "second"], 8, test)).await;
    for id in [&tied, &silent] {
        wait_for_decision(&app, id).await;
    }
    harness.wait_received(8).await;
    // One open of each variant of the tied campaign: 1 of 2 delivered each.
    // Both campaigns go to the same addresses: their pixels' tokens tell them apart.
    let tied_messages: Vec<Received> = harness
        .received()
        .into_iter()
        .filter(|m| is_of_campaign(&app, m, &tied))
        .collect();
    assert_eq!(tied_messages.len(), 4, "2 per variant");
    for name in ["first", "second"] {
        let message = tied_messages.iter().find(|m| m.variant == name).unwrap();
        open(&app, message).await;
    }
    app.state.engagement.events().flush().await;
    harness.clock.advance(time::Duration::hours(1));
    let report = harness
        .scheduler(&app)
        .check(harness.clock.now(), false)
        .await
        .unwrap();
    assert_eq!(report.decided.len(), 2, "{:?}", report.decided);
    for (id, rule) in [
        (&tied, "tie_first_variant"),
        (&silent, "no_events_first_variant"),
    ] {
        let status = wait_status(&app, id, "completed", |s| s["status"] == "completed").await;
        assert_eq!(status["ab_test"]["winner"], "first", "{status}");
        assert_eq!(status["ab_test"]["decision"]["rule"], rule, "{status}");
    }
    let (_, report) = app
        .get_json(&format!("/api/v1/campaigns/{tied}/analytics"))
        .await;
    let opens: Vec<(i64, i64)> = report["variants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["opens"]["total"].as_i64().unwrap(),
                v["opens"]["unique"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        opens,
        [(1, 0), (1, 0)],
        "counted per variant, nobody named: {report}"
    );
    harness.worker.stop().await;
}

/// Whether a received message belongs to campaign `id` (its pixel's token names it).
fn is_of_campaign(app: &TestApp, message: &Received, id: &str) -> bool {
    let token = message.pixel.rsplit('/').next().unwrap();
    app.state
        .links
        .keys()
        .verify(tracking::Purpose::Open, token)
        .unwrap()
        .campaign_id
        .to_string()
        == id
}

/// Every way an A/B test can be wrong is a 422 naming the field to fix, and nothing is
/// stored.
async fn invalid_ab_tests_are_refused_with_their_field_paths(app: TestApp) {
    let test = json!({"test_fraction": 0.2, "metric": "opens", "decide_after": "4h"});
    let with = |change: &dyn Fn(&mut Value)| {
        let mut campaign = ab_campaign(&["A", "B"], 0, test.clone());
        campaign.as_object_mut().unwrap().remove("recipients");
        change(&mut campaign);
        campaign
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "variants without ab_test",
            with(&|c| {
                c.as_object_mut().unwrap().remove("ab_test");
            }),
            "ab_test",
        ),
        (
            "ab_test without variants",
            with(&|c| {
                c.as_object_mut().unwrap().remove("variants");
            }),
            "variants",
        ),
        (
            "one variant",
            with(&|c| {
                c["variants"].as_array_mut().unwrap().pop();
            }),
            "variants",
        ),
        (
            "two variants of one name",
            with(&|c| c["variants"][1]["name"] = json!("A")),
            "variants[1].name",
        ),
        (
            "a subject that does not compile",
            with(&|c| c["variants"][1]["subject"] = json!("Hello {{ first_name")),
            "variants[1].subject",
        ),
        (
            "an html that does not compile",
            with(&|c| c["variants"][0]["html"] = json!("<p>{% if %}</p>")),
            "variants[0].html",
        ),
        (
            "opens that are not tracked",
            with(&|c| c["tracking"]["opens"] = json!(false)),
            "ab_test.metric",
        ),
        (
            "a fraction of the whole list",
            with(&|c| c["ab_test"]["test_fraction"] = json!(1.0)),
            "ab_test.test_fraction",
        ),
        (
            "a duration without a unit",
            with(&|c| c["ab_test"]["decide_after"] = json!("240")),
            "ab_test.decide_after",
        ),
        (
            "a variable no recipient has, in a strict campaign",
            with(&|c| {
                c["templates"]["undefined_variables"] = json!("strict");
                c["variants"][1]["subject"] = json!("Hello {{ nickname }}");
                c["recipients"] = (0..10)
                    .map(|i| json!({"email": format!("r{i}@example.com")}))
                    .collect();
            }),
            "variants[1].subject",
        ),
        (
            "an unknown metric",
            with(&|c| c["ab_test"]["metric"] = json!("replies")),
            "ab_test.metric",
        ),
        (
            "too few recipients per variant",
            with(&|c| {
                c["ab_test"]["min_per_variant"] = json!(3);
                c["recipients"] = (0..10)
                    .map(|i| json!({"email": format!("r{i}@example.com")}))
                    .collect();
            }),
            "ab_test.test_fraction",
        ),
    ];
    for (case, campaign, field) in cases {
        let response = app.post_json("/api/v1/campaigns", &campaign).await;
        assert_eq!(
            response.status(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "{case}"
        );
        let body: Value = response.json().await.unwrap();
        let fields: Vec<&str> = body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("{case}: {body}"))
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert!(fields.contains(&field), "{case}: {field} not in {body}");
    }
    assert_eq!(app.campaign_count().await, 0, "nothing stored");

    // Recipients added later: the slice is checked when the campaign is sent.
    let response = app
        .post_json(
            "/api/v1/campaigns",
            &with(&|c| c["ab_test"]["min_per_variant"] = json!(5)),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    let id = created["campaign"]["id"].as_str().unwrap();
    let response = app
        .post_json(
            &format!("/api/v1/campaigns/{id}/recipients"),
            &json!([{"email": "a@example.com"}, {"email": "b@example.com"}, {"email": "c@example.com"}]),
        )
        .await;
    assert!(response.status().is_success(), "{}", response.status());
    let refused = assert_problem(
        app.post_json(&format!("/api/v1/campaigns/{id}/send"), &json!({}))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "min_per_variant",
        "a slice too small at send",
    )
    .await;
    assert_eq!(
        refused["errors"][0]["field"], "ab_test.test_fraction",
        "{refused}"
    );
    let (_, status) = app
        .get_json(&format!("/api/v1/campaigns/{id}/status"))
        .await;
    assert_eq!(status["status"], "draft", "not sent: {status}");
}

/// A pause and the decision at the same moment: whichever commits first, the rest is never
/// sent while the campaign is paused, the test is decided once (a paused campaign's decision
/// waits for its resume), and after the resume every recipient gets exactly one message, the
/// rest all the winner.
async fn a_decision_racing_a_pause_sends_nothing_while_paused_and_decides_once(app: TestApp) {
    let Some(harness) = AbHarness::start(&app).await else {
        return;
    };
    let campaign = ab_campaign(
        &["A", "B"],
        40,
        json!({"test_fraction": 0.5, "metric": "opens", "decide_after": "30m", "variant_header": true}),
    );
    let id = create_and_send(&app, &campaign).await;
    wait_for_decision(&app, &id).await;
    harness.wait_received(20).await;
    harness.clock.advance(time::Duration::minutes(30));
    let at = harness.clock.now();
    let scheduler = harness.scheduler(&app);
    let (pause_path, no_body) = (format!("/api/v1/campaigns/{id}/pause"), json!({}));
    let pause = app.post_json(&pause_path, &no_body);
    let (paused, decided) = tokio::join!(pause, scheduler.check(at, false));
    assert_eq!(paused.status(), StatusCode::OK);
    let mut decisions = decided.unwrap().decided.len();

    let status = wait_status(&app, &id, "paused", |s| s["status"] == "paused").await;
    if decisions == 1 {
        // Decided first: the rest's batch runs, finds the campaign paused and waits.
        assert_eq!(status["ab_test"]["phase"], "sending_winner", "{status}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let batches = harness
                .tasks
                .list(&tasks::TaskFilter {
                    key_prefix: Some(format!("send_batch:{id}:")),
                    limit: 100,
                    ..tasks::TaskFilter::default()
                })
                .await
                .unwrap();
            let rest_ran = batches.iter().any(|task| {
                task.idempotency_key
                    .as_deref()
                    .is_some_and(|k| k.ends_with(":0:ab-rest"))
                    && task.status == tasks::TaskStatus::Completed
            });
            if rest_ran {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the rest's batch never ran: {batches:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    } else {
        // Paused first: nothing is decided while paused.
        assert_eq!(
            status["ab_test"]["phase"], "waiting_for_decision",
            "{status}"
        );
        let report = scheduler.check(at, true).await.unwrap();
        assert!(report.decided.is_empty(), "decided while paused");
    }
    assert_eq!(
        harness.sink.message_count(),
        20,
        "nothing of the rest while paused"
    );

    let resumed = app
        .post_json(&format!("/api/v1/campaigns/{id}/resume"), &json!({}))
        .await;
    assert_eq!(resumed.status(), StatusCode::OK);
    // The paused batches look again after a few seconds of the worker's clock.
    harness.clock.advance(time::Duration::seconds(10));
    decisions += scheduler
        .check(harness.clock.now(), true)
        .await
        .unwrap()
        .decided
        .len();
    assert_eq!(decisions, 1, "decided once");
    wait_status(&app, &id, "completed", |s| s["status"] == "completed").await;
    harness.wait_received(40).await;
    let messages = harness.received();
    let reached: HashSet<&str> = messages.iter().map(|m| m.to.as_str()).collect();
    assert_eq!(
        (messages.len(), reached.len()),
        (40, 40),
        "one message each"
    );
    let (_, status) = app
        .get_json(&format!("/api/v1/campaigns/{id}/status"))
        .await;
    let winner = status["ab_test"]["winner"].as_str().unwrap().to_string();
    let of_winner = messages.iter().filter(|m| m.variant == winner).count();
    assert_eq!(of_winner, 30, "its 10 of the slice and the 20 of the rest");
    harness.worker.stop().await;
}

/// The replica that decided dies before creating the rest's task: the decision stands (the
/// rest was released in its transaction) and a later full check of any replica creates the
/// task, once; the rest then receives the winner.
async fn a_decision_whose_task_was_lost_is_repaired(app: TestApp) {
    let Some(harness) = AbHarness::start(&app).await else {
        return;
    };
    let campaign = ab_campaign(
        &["A", "B"],
        10,
        json!({"test_fraction": 0.4, "metric": "opens", "decide_after": "1h", "variant_header": true}),
    );
    let id = create_and_send(&app, &campaign).await;
    wait_for_decision(&app, &id).await;
    harness.wait_received(4).await;
    let campaign_id: campaign::CampaignId = id.parse().unwrap();
    // What the deciding replica committed before it died: the decision, and no task.
    let now = harness.clock.now();
    assert!(
        app.store
            .decide_ab_test(
                campaign_id,
                1,
                &json!({"rule": "manual"}),
                now,
                &[campaign::CampaignStatus::Sending]
            )
            .await
            .unwrap()
    );
    let scheduler = harness.scheduler(&app);
    let soon = scheduler.check(now, true).await.unwrap();
    assert_eq!(soon.ab_repaired, 0, "not before repair_after");
    let later = now + time::Duration::seconds(11);
    let report = scheduler.check(later, true).await.unwrap();
    assert_eq!((report.ab_repaired, report.decided.len()), (1, 0));
    wait_status(&app, &id, "completed", |s| s["status"] == "completed").await;
    harness.wait_received(10).await;
    let messages = harness.received();
    let reached: HashSet<&str> = messages.iter().map(|m| m.to.as_str()).collect();
    assert_eq!((messages.len(), reached.len()), (10, 10));
    assert_eq!(messages.iter().filter(|m| m.variant == "B").count(), 8);
    let again = scheduler.check(later, true).await.unwrap();
    assert_eq!(again.ab_repaired, 0, "repaired once");
    harness.worker.stop().await;
}

/// Decided by clicks, with a variant that has its own HTML: B's messages carry B's own link,
/// whose click redirects to B's target (a link of B's HTML, not the campaign's); B's readers
/// click more, so B wins by unique clicks, and the rest of the list receives B.
async fn a_variant_with_its_own_html_wins_by_clicks(app: TestApp) {
    const B_OFFER: &str = "https://riverside-books.example/offers/only-in-b";
    let Some(harness) = AbHarness::start(&app).await else {
        return;
    };
    let mut campaign = ab_campaign(
        &["A", "B"],
        200,
        json!({"test_fraction": 0.5, "metric": "clicks", "decide_after": "1h", "variant_header": true}),
    );
    let html = campaign["templates"]["html"].as_str().unwrap().replace(
        "<h2>Staff picks</h2>",
        &format!("<p><a href=\"{B_OFFER}\">This week only</a></p><h2>Staff picks</h2>"),
    );
    campaign["variants"][1]["html"] = json!(html);
    let id = create_and_send(&app, &campaign).await;
    wait_for_decision(&app, &id).await;
    harness.wait_received(100).await;
    let slice = harness.received();
    let of =
        |name: &str| -> Vec<&Received> { slice.iter().filter(|m| m.variant == name).collect() };
    let (a, b) = (of("A"), of("B"));
    assert_eq!((a.len(), b.len()), (50, 50));
    // B's HTML has one link more than the campaign's, and it leads to B's own target.
    assert_eq!(b[0].clicks.len(), a[0].clicks.len() + 1);
    assert_eq!(click(&app, &b[0].clicks[0]).await, B_OFFER);
    assert_ne!(click(&app, &a[0].clicks[0]).await, B_OFFER);

    // 20 more of B's readers click (one of them on a second link too), 5 of A's (the first of
    // them is the reader whose link was checked above).
    for message in &b[1..21] {
        assert_eq!(click(&app, &message.clicks[0]).await, B_OFFER);
    }
    click(&app, &b[1].clicks[1]).await;
    for message in &a[..5] {
        click(&app, &message.clicks[0]).await;
    }
    app.state.engagement.events().flush().await;

    harness.clock.advance(time::Duration::hours(1));
    let report = harness
        .scheduler(&app)
        .check(harness.clock.now(), true)
        .await
        .unwrap();
    assert_eq!(report.decided, [(id.parse().unwrap(), "B".to_string())]);
    let status = wait_status(&app, &id, "completed", |s| s["status"] == "completed").await;
    assert_eq!(status["deliveries"]["sent"], 200, "{status}");
    harness.wait_received(200).await;
    let everything = harness.received();
    let in_slice: HashSet<&str> = slice.iter().map(|m| m.to.as_str()).collect();
    let rest: Vec<&Received> = everything
        .iter()
        .filter(|m| !in_slice.contains(m.to.as_str()))
        .collect();
    assert_eq!(rest.len(), 100);
    assert!(
        rest.iter()
            .all(|m| m.variant == "B" && m.clicks.len() == b[0].clicks.len())
    );
    assert_eq!(
        click(&app, &rest[0].clicks[0]).await,
        B_OFFER,
        "the rest has B's HTML"
    );

    let (_, report) = app
        .get_json(&format!("/api/v1/campaigns/{id}/analytics"))
        .await;
    let decision = &report["ab_test"]["decision"];
    assert_eq!(decision["rule"], "best_rate", "{report}");
    assert_eq!(decision["metric"], "clicks", "{report}");
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
    // Unique clicks per delivered message: B's 21 readers (the checked one and 20 more; a
    // reader's second click counts once), A's 5.
    assert_eq!(numbers, [(50, 5), (50, 21)], "{report}");
    harness.worker.stop().await;
}

testkit::backend_suite! {
    #[tokio::test] with_app => [
        the_variant_opened_most_goes_to_exactly_the_rest_of_the_list,
        a_winner_chosen_by_hand_is_idempotent_and_final,
        ties_and_silence_keep_the_first_variant,
        invalid_ab_tests_are_refused_with_their_field_paths,
        a_decision_racing_a_pause_sends_nothing_while_paused_and_decides_once,
        a_decision_whose_task_was_lost_is_repaired,
        a_variant_with_its_own_html_wins_by_clicks,
    ];
}
