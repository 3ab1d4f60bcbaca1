//! The real [`processor::Worker`], in process, delivering campaigns to SMTP servers this
//! project did not write: postfix's `smtp-sink` (with its fault flags: 4xx, 5xx, a hard
//! close after the content, the server going away) and `aiosmtpd` (whose Maildir is read
//! back to check every recipient got exactly one message, by Message-ID). One suite, run on
//! both stores: each backend's tests live in a module named after it (`sqlite::…`,
//! `postgres::…`) so CI can count and filter them per backend.
//!
//! Waiting is always for a condition (campaign status, delivery counts, a server's
//! counters), polled in a bounded loop.

use campaign::{
    CampaignDocument, CampaignId, CampaignStatus, DeliveryStatus, EmailAddress, Limits, Recipient,
    RowError,
};
use delivery::{Transport, TransportConfig};
use processor::{Services, WakingTasks, Worker, WorkerConfig};
use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{CampaignStore, DeliveryCounts, DeliveryRecord};
use tasks::TaskRepository;
use testkit::smtp::{Aiosmtpd, SmtpSink};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// SMTP connections per transport.
const CONNECTIONS: usize = 4;
/// Messages a worker may have sent but not yet recorded: the duplicate bound after a crash.
const IN_FLIGHT: usize = 8;
/// How long a campaign may take to reach a final state before the test fails.
const FINISH_LIMIT: Duration = Duration::from_secs(60);
/// The same for the 5,000-recipient campaign: aiosmtpd takes ~250-550 messages/s on two
/// busy cores, less while the other backend's suite runs beside it (46 s measured once).
const BIG_FINISH_LIMIT: Duration = Duration::from_secs(120);
/// How long a fault may take to show in the rows (or a server's counters).
const CONDITION_LIMIT: Duration = Duration::from_secs(30);
/// The domain of the sender, and so of every Message-ID.
const SENDER_DOMAIN: &str = "shop.example";

/// The stores (one database) and task repository a suite case runs on.
struct Harness {
    url: String,
    store: Arc<dyn CampaignStore>,
    tasks: Arc<dyn TaskRepository>,
    waker: Arc<Notify>,
    _database: Box<dyn Any + Send>,
}

/// A worker running on its own tokio task.
struct Running {
    stop: CancellationToken,
    handle: JoinHandle<()>,
    stats: Arc<processor::Stats>,
}

impl Running {
    /// Stops it the graceful way and waits until it has returned.
    async fn stop(self) -> processor::StatsSnapshot {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("the worker stops within its grace")
            .expect("the worker does not panic");
        self.stats.snapshot()
    }
}

fn transport(url: &str) -> Arc<dyn Transport> {
    delivery::transport_from_config(&TransportConfig {
        smtp_url: Some(url.to_string()),
        connections: CONNECTIONS,
        ..TransportConfig::default()
    })
    .expect("SMTP transport")
}

fn worker_config(id: &str) -> WorkerConfig {
    let mut config = WorkerConfig::new(id);
    config.check_interval = Duration::from_millis(200);
    // Long enough that a loaded machine never loses a lease between heartbeats (a lost lease
    // stops a batch mid-way, which the pause and cancel bounds do not measure); the crash test
    // sets its own short lease.
    config.lease = Duration::from_secs(30);
    config.in_flight = IN_FLIGHT;
    config.shutdown_grace = Duration::from_secs(10);
    config
}

fn document(name: &str, batch_size: u32) -> CampaignDocument {
    let json = serde_json::json!({
        "name": name,
        "from": {"email": format!("news@{SENDER_DOMAIN}"), "name": "Shop"},
        "templates": {
            "subject": "Hello {{ first_name }}",
            "text": "Hi {{ first_name }},\nthis is for you.\nUnsubscribe: {{ unsubscribe_url }}\n"
        },
        "batch_size": batch_size,
        "retry": {"max_attempts": 10, "initial_backoff_seconds": 1, "max_backoff_seconds": 2}
    });
    CampaignDocument::from_json(json.to_string().as_bytes(), &Limits::default())
        .expect("valid campaign")
}

fn email(n: usize) -> String {
    format!("reader{n}@mail.example")
}

fn first_name(n: usize) -> String {
    format!("Reader{n}")
}

fn recipients(count: usize) -> Vec<Result<Recipient, RowError>> {
    (0..count)
        .map(|n| {
            let mut fields = serde_json::Map::new();
            fields.insert("first_name".into(), first_name(n).into());
            Ok(Recipient {
                email: EmailAddress::parse(&email(n)).expect("valid address"),
                fields,
            })
        })
        .collect()
}

impl Harness {
    async fn open(url: String, database: Box<dyn Any + Send>) -> Harness {
        let store = store::connect(&url).await.expect("campaign store");
        let local = tasks::connect(&url).await.expect("task repository");
        let waking = Arc::new(WakingTasks::new(local));
        let waker = waking.waker();
        Harness {
            url,
            store,
            tasks: waking,
            waker,
            _database: database,
        }
    }

    fn services(&self, transport: Arc<dyn Transport>) -> Services {
        self.services_on(transport, self.tasks.clone(), Arc::new(tasks::SystemClock))
    }

    /// Services over another task repository and clock (a test that moves time by hand).
    fn services_on(
        &self,
        transport: Arc<dyn Transport>,
        tasks: Arc<dyn TaskRepository>,
        clock: Arc<dyn tasks::Clock>,
    ) -> Services {
        let keys = tracking::TokenKeys::new(b"processor-delivery-test-secret-32-bytes!", [])
            .expect("token keys");
        Services {
            store: self.store.clone(),
            tasks,
            transport,
            links: Arc::new(tracking::Links::new("http://127.0.0.1:8000", keys)),
            message_settings: message::MessageSettings::default(),
            dkim: None,
            max_batch_size: 1000,
            events: webhooks::EventSink::disabled(),
            clock,
        }
    }

    fn start(&self, config: WorkerConfig, transport: Arc<dyn Transport>) -> Running {
        let worker = Worker::new(config, self.services(transport), Some(self.waker.clone()));
        let stats = worker.stats();
        let stop = CancellationToken::new();
        let handle = tokio::spawn(worker.run(stop.clone()));
        Running {
            stop,
            handle,
            stats,
        }
    }

    /// Stores a campaign of `count` recipients (`reader{n}`, first name `Reader{n}`).
    async fn campaign(&self, name: &str, count: usize, batch_size: u32) -> CampaignId {
        let (record, report) = self
            .store
            .create_campaign(
                &document(name, batch_size),
                store::recipient_stream(recipients(count)),
            )
            .await
            .expect("campaign stored");
        assert_eq!(report.imported, count as u64);
        record.id
    }

    async fn enqueue(&self, id: CampaignId) {
        service::CampaignService::new(self.store.as_ref(), self.tasks.as_ref())
            .send(id)
            .await
            .expect("campaign enqueued");
    }

    async fn status(&self, id: CampaignId) -> CampaignStatus {
        self.store
            .get_campaign(id)
            .await
            .expect("campaign readable")
            .expect("campaign exists")
            .status
    }

    async fn counts(&self, id: CampaignId) -> DeliveryCounts {
        self.store.delivery_counts(id).await.expect("counts")
    }

    /// Polls the campaign every 50 ms until it is completed, failed or cancelled.
    async fn wait_final(&self, id: CampaignId) -> CampaignStatus {
        self.wait_final_within(id, FINISH_LIMIT).await
    }

    async fn wait_final_within(&self, id: CampaignId, limit: Duration) -> CampaignStatus {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status(id).await;
            if matches!(
                status,
                CampaignStatus::Completed | CampaignStatus::Failed | CampaignStatus::Cancelled
            ) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "campaign still {status} after {limit:?}: {:?}",
                self.counts(id).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls the delivery counts every 50 ms until `done` holds.
    async fn wait_counts(
        &self,
        id: CampaignId,
        what: &str,
        done: impl Fn(&DeliveryCounts) -> bool,
    ) -> DeliveryCounts {
        let deadline = Instant::now() + CONDITION_LIMIT;
        loop {
            let counts = self.counts(id).await;
            if done(&counts) {
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {counts:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every recipient of the campaign (or those in `status`) with its outcome, in id order.
    async fn deliveries(
        &self,
        id: CampaignId,
        status: Option<DeliveryStatus>,
    ) -> Vec<DeliveryRecord> {
        let mut all = Vec::new();
        loop {
            let after = all.last().map(|d: &DeliveryRecord| d.recipient_id);
            let page = self
                .store
                .list_deliveries(id, status, after, 500)
                .await
                .expect("deliveries");
            if page.is_empty() {
                return all;
            }
            all.extend(page);
        }
    }
}

/// Polls `done` every 50 ms up to `limit` (a wait for a condition, not a fixed sleep).
async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a sink from a builder without stalling the runtime's other work.
fn start_sink(builder: testkit::smtp::SmtpSinkBuilder) -> Option<SmtpSink> {
    tokio::task::block_in_place(|| builder.start())
}

/// Messages a sink has received since it started, from the last counter record it printed.
///
/// Not [`SmtpSink::counters`]: that subtracts a baseline taken once the readiness probe is
/// counted, and a sink brought back under a worker that keeps retrying has already taken
/// messages by then. The probe itself sends none, so the raw count is exact.
fn messages_received(sink: &SmtpSink) -> u64 {
    sink.log()
        .rsplit(['\r', '\n'])
        .find_map(|record| {
            let fields: Vec<(&str, &str)> = record
                .split_whitespace()
                .map(|field| field.split_once('='))
                .collect::<Option<_>>()?;
            let names: Vec<&str> = fields.iter().map(|(name, _)| *name).collect();
            if names != ["sess", "quit", "mesg"] {
                return None;
            }
            fields[2].1.parse().ok()
        })
        .unwrap_or(0)
}

/// Polls the sink until it has received `count` messages (its counters are written around
/// its replies, so they may trail what the client already knows), up to a bound.
async fn wait_received(sink: &SmtpSink, count: u64) -> u64 {
    let deadline = Instant::now() + CONDITION_LIMIT;
    loop {
        let received = messages_received(sink);
        if received >= count || Instant::now() > deadline {
            return received;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One message as aiosmtpd stored it.
struct Arrival {
    message_id: String,
    rcpt: String,
    subject: String,
}

fn header(message: &str, name: &str) -> Option<String> {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    message
        .lines()
        .take_while(|line| !line.is_empty())
        .find(|line| line.to_ascii_lowercase().starts_with(&prefix))
        .map(|line| line[prefix.len()..].trim().to_string())
}

fn arrivals(server: &Aiosmtpd) -> Vec<Arrival> {
    tokio::task::block_in_place(|| server.messages())
        .iter()
        .map(|raw| {
            let text = String::from_utf8_lossy(raw);
            Arrival {
                message_id: header(&text, "Message-ID").expect("every message has a Message-ID"),
                rcpt: header(&text, "X-RcptTo").expect("aiosmtpd records the recipient"),
                subject: header(&text, "Subject").unwrap_or_default(),
            }
        })
        .collect()
}

/// The Message-ID the processor gives a recipient's message.
fn message_id(campaign: CampaignId, recipient: i64) -> String {
    format!("<{campaign}.{recipient}@{SENDER_DOMAIN}>")
}

/// Checks that each recipient of the campaign has a message with its own Message-ID at the
/// server, and that nobody else got one. Returns how many copies each Message-ID has.
fn assert_each_recipient_reached(
    arrived: &[Arrival],
    id: CampaignId,
    sent: &[DeliveryRecord],
) -> HashMap<String, usize> {
    let mut copies: HashMap<String, usize> = HashMap::new();
    let mut rcpt_of: HashMap<String, String> = HashMap::new();
    for arrival in arrived {
        *copies.entry(arrival.message_id.clone()).or_default() += 1;
        let previous = rcpt_of.insert(arrival.message_id.clone(), arrival.rcpt.clone());
        assert!(
            previous.is_none_or(|rcpt| rcpt == arrival.rcpt),
            "one Message-ID, two recipients: {}",
            arrival.message_id
        );
    }
    for delivery in sent {
        let expected = message_id(id, delivery.recipient_id);
        assert_eq!(
            rcpt_of.get(&expected),
            Some(&delivery.email),
            "the message of {} (recipient {}) is missing or went elsewhere",
            delivery.email,
            delivery.recipient_id
        );
    }
    assert_eq!(
        copies.len(),
        sent.len(),
        "every Message-ID at the server belongs to a recipient recorded as sent"
    );
    copies
}

// ---------------------------------------------------------------------------------------
// The cases.

/// 5,000 recipients into aiosmtpd: each gets exactly one message (by Message-ID and RCPT),
/// personalized, and the rows and counters say so.
async fn five_thousand_recipients_each_get_one_personalized_message(harness: Harness) {
    const COUNT: usize = 5_000;
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let id = harness.campaign("Five thousand", COUNT, 100).await;
    let transport = transport(&server.url());
    let started = Instant::now();
    let worker = harness.start(worker_config("big"), transport.clone());
    harness.enqueue(id).await;
    let status = harness.wait_final_within(id, BIG_FINISH_LIMIT).await;
    let elapsed = started.elapsed();
    let stats = worker.stop().await;
    transport.close().await;
    eprintln!(
        "{COUNT} recipients into aiosmtpd on {}: {:.1} s",
        harness.store.backend(),
        elapsed.as_secs_f64()
    );

    assert_eq!(status, CampaignStatus::Completed);
    let counts = harness.counts(id).await;
    assert_eq!(counts.get(DeliveryStatus::Sent), COUNT as i64, "{counts:?}");
    assert_eq!(counts.total(), COUNT as i64, "{counts:?}");
    assert_eq!(stats.sent, COUNT as u64, "the worker's counters agree");

    let sent = harness.deliveries(id, None).await;
    assert_eq!(sent.len(), COUNT);
    for delivery in &sent {
        assert_eq!(delivery.status, DeliveryStatus::Sent, "{delivery:?}");
        assert_eq!(delivery.attempts, 1, "{delivery:?}");
        assert!(
            delivery
                .smtp_reply
                .as_deref()
                .is_some_and(|reply| reply.starts_with("250")),
            "{delivery:?}"
        );
    }

    let arrived = arrivals(&server);
    assert_eq!(arrived.len(), COUNT, "one message per recipient, no more");
    let copies = assert_each_recipient_reached(&arrived, id, &sent);
    assert!(copies.values().all(|&n| n == 1));
    let per_rcpt: HashSet<&str> = arrived.iter().map(|a| a.rcpt.as_str()).collect();
    assert_eq!(per_rcpt.len(), COUNT, "each recipient once");

    // A sample across the whole range has its own subject.
    let subject_of: HashMap<&str, &str> = arrived
        .iter()
        .map(|a| (a.rcpt.as_str(), a.subject.as_str()))
        .collect();
    for n in (0..COUNT).step_by(COUNT / 20).chain([COUNT - 1]) {
        let expected = format!("Hello {}", first_name(n));
        assert_eq!(
            subject_of.get(email(n).as_str()).copied(),
            Some(expected.as_str()),
            "recipient {n}"
        );
    }
}

/// A 4xx at RCPT defers every recipient with the server's text; once the server accepts
/// again, each is delivered.
async fn temporary_rejections_are_deferred_then_delivered(harness: Harness) {
    const COUNT: usize = 200;
    let Some(faulty) = start_sink(
        SmtpSink::builder()
            .arg("-r")
            .arg("rcpt")
            .arg("-b")
            .arg("452 4.2.2 Mailbox full"),
    ) else {
        return;
    };
    let port = faulty.port;
    let id = harness.campaign("Mailbox full", COUNT, 50).await;
    let transport = transport(&faulty.url());
    let worker = harness.start(worker_config("temporary"), transport.clone());
    harness.enqueue(id).await;

    harness
        .wait_counts(id, "every recipient deferred", |c| {
            c.get(DeliveryStatus::Deferred) == COUNT as i64
        })
        .await;
    for delivery in harness.deliveries(id, None).await {
        assert_eq!(delivery.status, DeliveryStatus::Deferred, "{delivery:?}");
        let error = delivery.last_error.as_deref().unwrap_or_default();
        assert!(error.contains("452 4.2.2 Mailbox full"), "{delivery:?}");
        assert!(delivery.next_attempt_at.is_some(), "{delivery:?}");
    }
    assert_eq!(faulty.counters().messages, 0);

    faulty.stop();
    let Some(healthy) = start_sink(SmtpSink::builder().port(port)) else {
        return;
    };
    let status = harness.wait_final(id).await;
    worker.stop().await;
    transport.close().await;

    assert_eq!(status, CampaignStatus::Completed);
    let counts = harness.counts(id).await;
    assert_eq!(counts.get(DeliveryStatus::Sent), COUNT as i64, "{counts:?}");
    assert_eq!(counts.total(), COUNT as i64, "{counts:?}");
    for delivery in harness.deliveries(id, None).await {
        assert_eq!(delivery.status, DeliveryStatus::Sent, "{delivery:?}");
        assert!(delivery.attempts >= 2, "deferred first: {delivery:?}");
    }
    assert_eq!(wait_received(&healthy, COUNT as u64).await, COUNT as u64);
}

/// A 5xx at RCPT fails every recipient at once with the server's text; nothing was sent, so
/// the campaign failed.
async fn permanent_rejections_fail_every_recipient_with_the_server_text(harness: Harness) {
    const COUNT: usize = 100;
    let Some(sink) = start_sink(
        SmtpSink::builder()
            .arg("-f")
            .arg("rcpt")
            .arg("-B")
            .arg("550 5.1.1 No such user here"),
    ) else {
        return;
    };
    let id = harness.campaign("No such user", COUNT, 25).await;
    let transport = transport(&sink.url());
    let worker = harness.start(worker_config("permanent"), transport.clone());
    harness.enqueue(id).await;
    let status = harness.wait_final(id).await;
    let stats = worker.stop().await;
    transport.close().await;

    assert_eq!(status, CampaignStatus::Failed);
    let counts = harness.counts(id).await;
    assert_eq!(
        counts.get(DeliveryStatus::Failed),
        COUNT as i64,
        "{counts:?}"
    );
    assert_eq!(counts.get(DeliveryStatus::Sent), 0, "{counts:?}");
    assert_eq!(counts.total(), COUNT as i64, "{counts:?}");
    assert_eq!((stats.failed, stats.deferred), (COUNT as u64, 0));
    let failed = harness.deliveries(id, Some(DeliveryStatus::Failed)).await;
    assert_eq!(failed.len(), COUNT);
    for delivery in failed {
        let error = delivery.last_error.as_deref().unwrap_or_default();
        assert!(
            error.contains("550 5.1.1 No such user here"),
            "{delivery:?}"
        );
        assert_eq!(delivery.attempts, 1, "a permanent failure is not retried");
    }
    assert_eq!(sink.counters().messages, 0);
}

/// The server hangs up after the content, before its reply: the message may or may not have
/// arrived, so it is retried (deferred), and delivered once the server behaves.
async fn a_hang_up_after_the_content_defers_then_delivers(harness: Harness) {
    const COUNT: usize = 200;
    let Some(faulty) = start_sink(SmtpSink::builder().arg("-q").arg(".")) else {
        return;
    };
    let port = faulty.port;
    let id = harness.campaign("Hang up", COUNT, 50).await;
    let transport = transport(&faulty.url());
    let worker = harness.start(worker_config("hang-up"), transport.clone());
    harness.enqueue(id).await;

    harness
        .wait_counts(id, "every recipient deferred", |c| {
            c.get(DeliveryStatus::Deferred) == COUNT as i64
        })
        .await;
    for delivery in harness.deliveries(id, None).await {
        let error = delivery.last_error.as_deref().unwrap_or_default();
        assert!(
            error.contains("end of data") && error.contains("connection lost"),
            "{delivery:?}"
        );
    }

    faulty.stop();
    let Some(healthy) = start_sink(SmtpSink::builder().port(port)) else {
        return;
    };
    let status = harness.wait_final(id).await;
    worker.stop().await;
    transport.close().await;

    assert_eq!(status, CampaignStatus::Completed);
    let counts = harness.counts(id).await;
    assert_eq!(counts.get(DeliveryStatus::Sent), COUNT as i64, "{counts:?}");
    assert_eq!(counts.total(), COUNT as i64, "{counts:?}");
    assert_eq!(wait_received(&healthy, COUNT as u64).await, COUNT as u64);
}

/// How long the SMTP server stays away in the outage case.
const OUTAGE: Duration = Duration::from_secs(10);

/// The server goes away mid-campaign for about 10 s and comes back on the same port:
/// recipients are deferred meanwhile (retries too), none fails, all are sent in the end.
async fn a_server_gone_mid_campaign_loses_no_recipient(harness: Harness) {
    const COUNT: usize = 3_000;
    let Some(first) = start_sink(SmtpSink::builder()) else {
        return;
    };
    let port = first.port;
    let id = harness.campaign("Server gone", COUNT, 100).await;
    let transport = transport(&first.url());
    let worker = harness.start(worker_config("server-gone"), transport.clone());
    harness.enqueue(id).await;

    wait_until("the first messages at the sink", CONDITION_LIMIT, || {
        first.counters().messages >= 200
    })
    .await;
    first.stop();
    let stopped = Instant::now();
    let at_stop = harness.counts(id).await;
    assert!(
        at_stop.get(DeliveryStatus::Sent) < COUNT as i64,
        "the server must go away mid-campaign: {at_stop:?}"
    );

    // Down long enough that deferred recipients were retried and deferred again.
    let deadline = Instant::now() + CONDITION_LIMIT;
    let retried = loop {
        let deferred = harness
            .store
            .list_deliveries(id, Some(DeliveryStatus::Deferred), None, 1000)
            .await
            .expect("deliveries");
        if let Some(retried) = deferred.into_iter().find(|d| d.attempts >= 2) {
            break retried;
        }
        assert!(
            Instant::now() < deadline,
            "no recipient retried while the server was down: {:?}",
            harness.counts(id).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = retried.last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{retried:?}"
    );
    // The outage itself is the scenario (about 10 s, several retries long), not a wait for
    // something to happen.
    tokio::time::sleep(OUTAGE.saturating_sub(stopped.elapsed())).await;
    let during = harness.counts(id).await;
    assert_eq!(during.get(DeliveryStatus::Failed), 0, "{during:?}");
    assert!(during.get(DeliveryStatus::Deferred) > 0, "{during:?}");

    let Some(second) = start_sink(SmtpSink::builder().port(port)) else {
        return;
    };
    let status = harness.wait_final(id).await;
    worker.stop().await;
    transport.close().await;

    assert_eq!(status, CampaignStatus::Completed);
    let counts = harness.counts(id).await;
    assert_eq!(counts.get(DeliveryStatus::Failed), 0, "{counts:?}");
    assert_eq!(counts.get(DeliveryStatus::Sent), COUNT as i64, "{counts:?}");
    assert_eq!(counts.total(), COUNT as i64, "{counts:?}");
    // Every outcome of the first server's session was recorded long before a retry could
    // fail, so the second server gets exactly the recipients not yet sent then.
    let unsent = COUNT as u64 - during.get(DeliveryStatus::Sent) as u64;
    assert_eq!(wait_received(&second, unsent).await, unsent, "{during:?}");
}

/// Suppressed addresses (matched whatever their case) are recorded as suppressed and never
/// reach the server.
async fn suppressed_recipients_are_recorded_and_never_sent(harness: Harness) {
    const COUNT: usize = 100;
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let id = harness.campaign("Suppressed", COUNT, 30).await;
    let suppressed: HashSet<String> = (0..COUNT).step_by(10).map(email).collect();
    for (i, address) in suppressed.iter().enumerate() {
        let written = if i % 2 == 0 {
            address.to_ascii_uppercase()
        } else {
            address.clone()
        };
        harness
            .store
            .suppress(&EmailAddress::parse(&written).unwrap(), "unsubscribed")
            .await
            .expect("suppressed");
    }
    let transport = transport(&server.url());
    let worker = harness.start(worker_config("suppressed"), transport.clone());
    harness.enqueue(id).await;
    let status = harness.wait_final(id).await;
    worker.stop().await;
    transport.close().await;

    assert_eq!(status, CampaignStatus::Completed);
    let counts = harness.counts(id).await;
    let expected_sent = (COUNT - suppressed.len()) as i64;
    assert_eq!(
        counts.get(DeliveryStatus::Suppressed),
        suppressed.len() as i64,
        "{counts:?}"
    );
    assert_eq!(
        counts.get(DeliveryStatus::Sent),
        expected_sent,
        "{counts:?}"
    );
    assert_eq!(counts.total(), COUNT as i64, "{counts:?}");
    let marked: HashSet<String> = harness
        .deliveries(id, Some(DeliveryStatus::Suppressed))
        .await
        .into_iter()
        .map(|d| {
            assert_eq!(d.attempts, 0, "never attempted: {d:?}");
            d.email
        })
        .collect();
    assert_eq!(marked, suppressed);

    let arrived = arrivals(&server);
    assert_eq!(arrived.len(), expected_sent as usize);
    for arrival in &arrived {
        assert!(
            !suppressed.contains(&arrival.rcpt),
            "{} is suppressed but got a message",
            arrival.rcpt
        );
    }
    let sent = harness.deliveries(id, Some(DeliveryStatus::Sent)).await;
    assert_each_recipient_reached(&arrived, id, &sent);
}

/// A worker stopped without grace (its run future aborted, like a crash) and a second worker
/// with another id: every recipient is delivered, and the copies beyond one per recipient are
/// at most the first worker's `in_flight` (messages accepted but not yet recorded).
async fn an_aborted_worker_loses_nothing_and_duplicates_stay_within_in_flight(harness: Harness) {
    const COUNT: usize = 1_000;
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let id = harness.campaign("Crash", COUNT, 100).await;
    let mut first_config = worker_config("crashing");
    first_config.lease = Duration::from_secs(2);
    let bound = first_config.in_flight;
    let first_transport = transport(&server.url());
    let first = harness.start(first_config, first_transport.clone());
    harness.enqueue(id).await;
    wait_until("a part of the mail at the server", CONDITION_LIMIT, || {
        server.message_count() >= COUNT / 5
    })
    .await;
    first.handle.abort();
    let ended = first.handle.await;
    assert!(
        ended.as_ref().is_err_and(|err| err.is_cancelled()),
        "the first worker was aborted mid-campaign, not finished: {ended:?}"
    );
    // Its connections end the message they carry; queued ones whose sender is gone are
    // dropped (a real crash would cut them instead).
    first_transport.close().await;
    let at_crash = harness.counts(id).await;
    assert!(
        at_crash.get(DeliveryStatus::Sent) < COUNT as i64,
        "the crash must come mid-campaign: {at_crash:?}"
    );

    let mut second_config = worker_config("successor");
    second_config.lease = Duration::from_secs(2);
    let second_transport = transport(&server.url());
    let second = harness.start(second_config, second_transport.clone());
    let status = harness.wait_final(id).await;
    second.stop().await;
    second_transport.close().await;

    assert_eq!(status, CampaignStatus::Completed);
    let counts = harness.counts(id).await;
    assert_eq!(counts.get(DeliveryStatus::Sent), COUNT as i64, "{counts:?}");
    assert_eq!(counts.total(), COUNT as i64, "{counts:?}");
    let sent = harness.deliveries(id, None).await;
    let arrived = arrivals(&server);
    let copies = assert_each_recipient_reached(&arrived, id, &sent);
    let duplicates = arrived.len() - copies.len();
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates; the bound is the aborted worker's in_flight = {bound}"
    );
    assert!(copies.values().all(|&n| n <= 2), "at most one extra copy");
    eprintln!(
        "aborted worker on {}: {duplicates} duplicate(s) (bound {bound}), {} sent before the abort",
        harness.store.backend(),
        at_crash.get(DeliveryStatus::Sent)
    );
}

/// Paused mid-campaign, the campaign stops sending (beyond the messages in flight); resumed,
/// it continues with the recipients not yet sent: every recipient gets exactly one message.
async fn a_paused_campaign_resumes_without_a_second_copy_to_anyone(harness: Harness) {
    const COUNT: usize = 1_500;
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let id = harness.campaign("Paused", COUNT, 100).await;
    let transport = transport(&server.url());
    let worker = harness.start(worker_config("pause"), transport.clone());
    harness.enqueue(id).await;
    wait_until("the first messages at the server", CONDITION_LIMIT, || {
        server.message_count() >= 200
    })
    .await;
    assert!(
        harness
            .store
            .transition_campaign(id, &[CampaignStatus::Sending], CampaignStatus::Paused)
            .await
            .unwrap()
    );
    // Running batches notice within their status check; after that nothing more is sent.
    let deadline = Instant::now() + CONDITION_LIMIT;
    let settled = loop {
        let before = server.message_count();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let after = server.message_count();
        if before == after {
            break after;
        }
        assert!(
            Instant::now() < deadline,
            "sending did not stop after the pause"
        );
    };
    assert!(
        settled < COUNT,
        "paused mid-campaign: {settled} of {COUNT} arrived"
    );
    assert_eq!(harness.status(id).await, CampaignStatus::Paused);

    assert!(
        service::CampaignService::new(harness.store.as_ref(), harness.tasks.as_ref())
            .resume(id)
            .await
            .unwrap()
    );
    assert!(
        !service::CampaignService::new(harness.store.as_ref(), harness.tasks.as_ref())
            .resume(id)
            .await
            .unwrap(),
        "resuming twice does nothing more"
    );
    let status = harness.wait_final(id).await;
    worker.stop().await;
    transport.close().await;
    assert_eq!(status, CampaignStatus::Completed);
    assert_eq!(
        harness.counts(id).await.get(DeliveryStatus::Sent),
        COUNT as i64
    );
    let arrived = arrivals(&server);
    let ids: HashSet<&str> = arrived.iter().map(|a| a.message_id.as_str()).collect();
    assert_eq!(arrived.len(), COUNT, "one message per recipient, no more");
    assert_eq!(ids.len(), COUNT);
}

/// Cancel mid-campaign at a real SMTP server: once the cancel has committed (what the API
/// acknowledges), at most the worker's in-flight messages (IN_FLIGHT) still reach the server,
/// because each message checks a status read begun after it took its slot.
async fn a_cancelled_campaign_sends_at_most_its_in_flight_messages_after_the_cancel(
    harness: Harness,
) {
    const COUNT: usize = 3_000;
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let id = harness.campaign("Cancelled", COUNT, 100).await;
    let transport = transport(&server.url());
    let worker = harness.start(worker_config("cancel"), transport.clone());
    harness.enqueue(id).await;
    wait_until("the first messages at the server", CONDITION_LIMIT, || {
        server.message_count() >= 200
    })
    .await;
    assert!(
        harness
            .store
            .cancel_campaign(id, &[CampaignStatus::Sending, CampaignStatus::Paused])
            .await
            .unwrap()
    );
    let at_acknowledgement = server.message_count();
    // A graceful stop waits for any send still running, so the server's count is final.
    worker.stop().await;
    transport.close().await;
    let arrived = arrivals(&server);
    let after = arrived.len() - at_acknowledgement;
    assert!(
        after <= IN_FLIGHT,
        "{after} messages reached the server after the cancel; the bound is {IN_FLIGHT}"
    );
    assert!(arrived.len() < COUNT, "cancelled mid-campaign");
    assert_eq!(harness.status(id).await, CampaignStatus::Cancelled);
    let counts = harness.counts(id).await;
    assert_eq!(
        counts.get(DeliveryStatus::Sent),
        arrived.len() as i64,
        "every message that arrived is recorded as sent"
    );
    assert_eq!(
        counts.get(DeliveryStatus::Sent) + counts.get(DeliveryStatus::Cancelled),
        COUNT as i64
    );
    let ids: HashSet<&str> = arrived.iter().map(|a| a.message_id.as_str()).collect();
    assert_eq!(ids.len(), arrived.len(), "no second copy");
    eprintln!("cancel: {after} message(s) after the acknowledgement (bound {IN_FLIGHT})");
}

/// The send_campaign tasks the repository holds for a campaign.
async fn send_tasks_of(tasks: &dyn TaskRepository, id: CampaignId) -> Vec<tasks::Task> {
    tasks
        .list(&tasks::TaskFilter {
            status: None,
            kind: Some(processor::SEND_CAMPAIGN.to_string()),
            key_prefix: None,
            after: None,
            limit: 500,
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|task| task.payload["campaign_id"] == id.to_string())
        .collect()
}

/// Records what the campaign processor reports.
#[derive(Default)]
struct RecordingObserver {
    enqueued: std::sync::Mutex<Vec<processor::EnqueuedCampaign>>,
    failed: std::sync::Mutex<Vec<CampaignId>>,
}

impl processor::SchedulerObserver for RecordingObserver {
    fn campaign_enqueued(&self, campaign: &processor::EnqueuedCampaign) {
        self.enqueued.lock().unwrap().push(*campaign);
    }

    fn campaign_failed(
        &self,
        campaign: CampaignId,
        _error: &processor::ProcessorError,
        _took: Duration,
    ) {
        self.failed.lock().unwrap().push(campaign);
    }
}

/// The task repository service down (nothing listens at its address) while a campaign is
/// due: the replica that won it reports it failed and the check fails, the campaign stays
/// `queued`, and once the repository answers, the repair gives it its one task.
async fn a_campaign_due_while_the_task_repository_is_down_is_queued_later(harness: Harness) {
    use time::macros::datetime;
    let at = datetime!(2031-02-01 09:00 UTC);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    let down: Arc<dyn TaskRepository> = Arc::new(
        tasks::HttpTaskRepository::new(&format!("http://{address}"), None).with_retry(
            tasks::AdapterRetry {
                attempts: 1,
                base_delay: Duration::from_millis(10),
                max_delay: Duration::from_millis(10),
            },
        ),
    );
    let observer = Arc::new(RecordingObserver::default());
    let config = processor::SchedulerConfig::new(Duration::from_secs(60));
    let failing = processor::Scheduler::new(config.clone(), harness.store.clone(), down)
        .with_observer(observer.clone());
    let (record, _) = harness
        .store
        .create_campaign(
            &document("Due while down", 10),
            store::recipient_stream(recipients(2)),
        )
        .await
        .unwrap();
    assert!(
        harness
            .store
            .schedule_campaign(record.id, Some(at))
            .await
            .unwrap()
    );
    let err = failing.check(at, true).await.unwrap_err();
    assert!(err.to_string().contains(&address.to_string()), "{err}");
    assert_eq!(*observer.failed.lock().unwrap(), vec![record.id]);
    assert!(observer.enqueued.lock().unwrap().is_empty());
    assert_eq!(harness.status(record.id).await, CampaignStatus::Queued);
    assert!(
        send_tasks_of(harness.tasks.as_ref(), record.id)
            .await
            .is_empty()
    );

    let working = processor::Scheduler::new(config, harness.store.clone(), harness.tasks.clone());
    let later = at + time::Duration::seconds(11);
    assert_eq!(working.check(later, true).await.unwrap().repaired, 1);
    assert_eq!(
        send_tasks_of(harness.tasks.as_ref(), record.id).await.len(),
        1
    );
}

/// The campaign processor on a clock of the test's own: nothing before the campaign's time,
/// exactly one task at it (reported with its lateness), and a campaign a crashed replica left
/// `queued` without a task gets one at the first full check after the repair delay.
async fn a_due_campaign_is_enqueued_once_and_a_lost_task_is_repaired(harness: Harness) {
    use time::macros::datetime;
    let at = datetime!(2031-01-01 09:00 UTC);
    let millis = time::Duration::milliseconds;
    let observer = Arc::new(RecordingObserver::default());
    let scheduler = processor::Scheduler::new(
        processor::SchedulerConfig::new(Duration::from_secs(60)),
        harness.store.clone(),
        harness.tasks.clone(),
    )
    .with_observer(observer.clone());
    let (first, _) = harness
        .store
        .create_campaign(
            &document("Timed", 10),
            store::recipient_stream(recipients(3)),
        )
        .await
        .unwrap();
    assert!(
        harness
            .store
            .schedule_campaign(first.id, Some(at))
            .await
            .unwrap()
    );

    let early = scheduler.check(at - millis(1), false).await.unwrap();
    assert!(early.enqueued.is_empty());
    assert_eq!(early.next_due, Some(at));
    let on_time = scheduler.check(at + millis(200), false).await.unwrap();
    assert_eq!(
        on_time.enqueued,
        vec![processor::EnqueuedCampaign {
            id: first.id,
            lateness: Duration::from_millis(200)
        }]
    );
    assert_eq!(on_time.next_due, None);
    assert_eq!(observer.enqueued.lock().unwrap().len(), 1);
    let record = harness.store.get_campaign(first.id).await.unwrap().unwrap();
    assert_eq!(record.status, CampaignStatus::Queued);
    assert_eq!(record.start_delay(), Some(millis(200)));
    assert_eq!(
        send_tasks_of(harness.tasks.as_ref(), first.id).await.len(),
        1
    );
    assert!(
        scheduler
            .check(at + millis(400), true)
            .await
            .unwrap()
            .enqueued
            .is_empty(),
        "a campaign is enqueued once"
    );

    // A replica wins the second campaign and dies before creating its task.
    let later = at + time::Duration::minutes(5);
    let (second, _) = harness
        .store
        .create_campaign(
            &document("Orphan", 10),
            store::recipient_stream(recipients(3)),
        )
        .await
        .unwrap();
    assert!(
        harness
            .store
            .schedule_campaign(second.id, Some(later))
            .await
            .unwrap()
    );
    let won = harness.store.queue_due_campaigns(later, 10).await.unwrap();
    assert_eq!(won.len(), 1);
    assert!(
        send_tasks_of(harness.tasks.as_ref(), second.id)
            .await
            .is_empty()
    );
    let soon = scheduler
        .check(later + time::Duration::seconds(5), true)
        .await
        .unwrap();
    assert!(soon.enqueued.is_empty());
    assert!(
        send_tasks_of(harness.tasks.as_ref(), second.id)
            .await
            .is_empty(),
        "not while the winner may still be creating it"
    );
    let repaired = scheduler
        .check(later + time::Duration::seconds(11), true)
        .await
        .unwrap();
    assert_eq!(repaired.repaired, 2, "both queued campaigns are looked at");
    assert_eq!(
        send_tasks_of(harness.tasks.as_ref(), second.id).await.len(),
        1
    );
    assert_eq!(
        send_tasks_of(harness.tasks.as_ref(), first.id).await.len(),
        1,
        "a campaign that has its task keeps just that one"
    );
}

/// With a VERP domain, every message's envelope sender (MAIL FROM, as the server recorded it) is
/// `bounces+TOKEN@domain`, and the token names exactly that message's campaign and recipient.
async fn every_message_returns_bounces_to_its_own_verp_address(harness: Harness) {
    const COUNT: usize = 20;
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let id = harness.campaign("VERP", COUNT, 10).await;
    let transport = transport(&server.url());
    let mut services = harness.services(transport.clone());
    let keys = services.links.keys().clone();
    services.links = Arc::new(
        tracking::Links::new("http://127.0.0.1:8000", keys.clone())
            .with_verp_domain(Some("bounce.example.test".into())),
    );
    let worker = Worker::new(worker_config("verp"), services, Some(harness.waker.clone()));
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    harness.enqueue(id).await;
    assert_eq!(harness.wait_final(id).await, CampaignStatus::Completed);
    stop.cancel();
    running.await.unwrap();
    transport.close().await;

    let messages = tokio::task::block_in_place(|| server.messages());
    assert_eq!(messages.len(), COUNT);
    for raw in messages {
        let text = String::from_utf8_lossy(&raw);
        let mail_from = header(&text, "X-MailFrom").expect("aiosmtpd records MAIL FROM");
        let message_id = header(&text, "Message-ID").unwrap();
        let token = tracking::feedback::verp_token(&mail_from, tracking::VERP_PREFIX)
            .unwrap_or_else(|| panic!("{mail_from} is not a VERP address"));
        assert!(mail_from.ends_with("@bounce.example.test"), "{mail_from}");
        let claims = keys.verify(tracking::Purpose::Bounce, token).unwrap();
        assert_eq!(claims.campaign_id, id);
        assert_eq!(message_id, self::message_id(id, claims.recipient_id));
        assert_eq!(
            message::recipient_of_message_id(&message_id),
            Some((id, claims.recipient_id))
        );
    }
}

/// Recipient-local send time on a clock the test moves: a campaign scheduled for 06:00 UTC
/// asking for 09:00 local time releases Berlin at 08:00 UTC, New York at 14:00 UTC, Los
/// Angeles (also the fallback for a missing or unknown zone) at 17:00 UTC and Tokyo, whose
/// 09:00 had passed at the start, at 00:00 UTC the next day. One second before each release
/// nothing more has arrived at aiosmtpd; at it, exactly that zone's recipients have.
async fn recipients_in_three_zones_are_released_at_their_own_local_hour(harness: Harness) {
    use time::macros::datetime;
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let start = datetime!(2030-03-01 06:00 UTC);
    let clock = tasks::ManualClock::new(start);
    let local = tasks::connect_with(
        &harness.url,
        Arc::new(clock.clone()),
        tasks::Backoff::default(),
    )
    .await
    .expect("task repository on the test's clock");
    let waking = Arc::new(WakingTasks::new(local));
    let waker = waking.waker();
    let task_repo: Arc<dyn TaskRepository> = waking;

    // (address, time zone field); batches of 4 mix the zones.
    let people: [(&str, Option<&str>); 12] = [
        ("anna@berlin.example", Some("Europe/Berlin")),
        ("ben@newyork.example", Some("America/New_York")),
        ("chika@tokyo.example", Some("Asia/Tokyo")),
        ("dora@nowhere.example", None),
        ("emil@berlin.example", Some("europe/berlin")),
        ("fay@newyork.example", Some("America/New_York")),
        ("goro@tokyo.example", Some("Asia/Tokyo")),
        ("hal@typo.example", Some("Mars/Olympus_Mons")),
        ("ida@berlin.example", Some("Europe/Berlin")),
        ("jon@newyork.example", Some("America/New_York")),
        ("kei@tokyo.example", Some("Asia/Tokyo")),
        ("lou@nowhere.example", Some("")),
    ];
    let rows = people.iter().map(|(email, zone)| {
        let mut fields = serde_json::Map::new();
        fields.insert("first_name".into(), "Reader".into());
        if let Some(zone) = zone {
            fields.insert("tz".into(), (*zone).into());
        }
        Ok(Recipient {
            email: EmailAddress::parse(email).unwrap(),
            fields,
        })
    });
    let mut document = document("Nine o'clock", 4);
    document.scheduled_at = Some(start);
    document.local_send_time = Some(campaign::LocalSendTime {
        time: "09:00".into(),
        timezone_field: "tz".into(),
        fallback_timezone: "America/Los_Angeles".into(),
    });
    let (record, report) = harness
        .store
        .create_campaign(&document, store::recipient_stream(rows.collect::<Vec<_>>()))
        .await
        .expect("campaign stored");
    let id = record.id;
    assert_eq!(record.status, CampaignStatus::Scheduled);
    assert_eq!(report.imported, 12);
    assert_eq!(report.unrecognised_time_zones, 1, "{report:?}");
    assert_eq!(
        report.unrecognised_time_zone_rows[0].email,
        "hal@typo.example"
    );
    assert_eq!(
        report.unrecognised_time_zone_rows[0].used,
        "America/Los_Angeles"
    );

    // The campaign processor starts it at its time; the worker splits and holds it.
    let scheduler = processor::Scheduler::new(
        processor::SchedulerConfig::new(Duration::from_secs(60)),
        harness.store.clone(),
        task_repo.clone(),
    );
    let transport = transport(&server.url());
    let worker = Worker::new(
        worker_config("local-time"),
        harness.services_on(
            transport.clone(),
            task_repo.clone(),
            Arc::new(clock.clone()),
        ),
        Some(waker.clone()),
    );
    let stop = CancellationToken::new();
    let handle = tokio::spawn(worker.run(stop.clone()));
    let checked = scheduler
        .check(tasks::Clock::now(&clock), false)
        .await
        .unwrap();
    assert_eq!(checked.enqueued.len(), 1);
    waker.notify_one();

    let releases = [
        (datetime!(2030-03-01 08:00 UTC), "berlin"),
        (datetime!(2030-03-01 14:00 UTC), "newyork"),
        (datetime!(2030-03-01 17:00 UTC), "nowhere|typo"),
        (datetime!(2030-03-02 00:00 UTC), "tokyo"),
    ];
    // Held: every zone has its release time, and no task can run before the first.
    wait_idle(&harness, task_repo.as_ref(), id, &clock, 3).await;
    let zones = harness.store.time_zone_releases(id).await.unwrap();
    let due: Vec<(&str, i64, Option<time::OffsetDateTime>)> = zones
        .iter()
        .map(|z| (z.zone.as_str(), z.waiting, z.due_at))
        .collect();
    assert_eq!(
        due,
        vec![
            ("America/Los_Angeles", 3, Some(releases[2].0)),
            ("America/New_York", 3, Some(releases[1].0)),
            ("Asia/Tokyo", 3, Some(releases[3].0)),
            ("Europe/Berlin", 3, Some(releases[0].0)),
        ]
    );
    assert_eq!(
        server.message_count(),
        0,
        "nothing before the first local 09:00"
    );

    let mut expected: Vec<String> = Vec::new();
    for (at, domains) in releases {
        // One second before: nothing new.
        let now = tasks::Clock::now(&clock);
        clock.advance(at - time::Duration::SECOND - now);
        waker.notify_one();
        wait_idle(&harness, task_repo.as_ref(), id, &clock, 0).await;
        assert_eq!(
            rcpts(&server),
            expected,
            "nothing new one second before {at}"
        );

        clock.advance(time::Duration::SECOND);
        waker.notify_one();
        expected.extend(
            people
                .iter()
                .map(|(email, _)| email.to_string())
                .filter(|email| {
                    domains
                        .split('|')
                        .any(|d| email.ends_with(&format!("@{d}.example")))
                }),
        );
        expected.sort();
        let want = expected.len() as i64;
        harness
            .wait_counts(id, "the released zone's messages", |c| {
                c.get(DeliveryStatus::Sent) >= want
            })
            .await;
        wait_idle(&harness, task_repo.as_ref(), id, &clock, 0).await;
        assert_eq!(
            rcpts(&server),
            expected,
            "at {at}: exactly the zones released so far"
        );
    }
    assert_eq!(harness.wait_final(id).await, CampaignStatus::Completed);
    stop.cancel();
    handle.await.unwrap();
    transport.close().await;
    assert!(
        harness
            .store
            .time_zone_releases(id)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The recipients aiosmtpd has received mail for, sorted.
fn rcpts(server: &Aiosmtpd) -> Vec<String> {
    let mut all: Vec<String> = arrivals(server).into_iter().map(|a| a.rcpt).collect();
    all.sort();
    all
}

/// Waits until the campaign's tasks are all either finished or waiting for a time still ahead
/// on `clock` (none running, none claimable), with at least `min_waiting` waiting.
async fn wait_idle(
    harness: &Harness,
    tasks: &dyn TaskRepository,
    id: CampaignId,
    clock: &tasks::ManualClock,
    min_waiting: usize,
) {
    let deadline = Instant::now() + CONDITION_LIMIT;
    loop {
        let all = tasks
            .list(&tasks::TaskFilter {
                status: None,
                kind: None,
                key_prefix: None,
                after: None,
                limit: 1000,
            })
            .await
            .unwrap();
        let ours: Vec<&tasks::Task> = all
            .iter()
            .filter(|task| task.payload["campaign_id"] == id.to_string())
            .collect();
        let now = tasks::Clock::now(clock);
        let busy = ours.iter().any(|task| {
            task.status == tasks::TaskStatus::Running
                || (task.status == tasks::TaskStatus::Pending && task.run_after <= now)
        });
        let waiting = ours
            .iter()
            .filter(|task| task.status == tasks::TaskStatus::Pending)
            .count();
        let split = harness.status(id).await == CampaignStatus::Sending
            || harness.status(id).await == CampaignStatus::Completed;
        if split && !busy && waiting >= min_waiting {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the campaign's tasks did not settle: {ours:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Self-contained `submit_campaign` tasks.

/// A `submit_campaign` payload: the campaign document with `count` recipients inline.
fn submission(name: &str, count: usize) -> serde_json::Value {
    let mut campaign = serde_json::to_value(document(name, 10)).expect("document as JSON");
    campaign["recipients"] = (0..count)
        .map(|n| serde_json::json!({"email": email(n), "first_name": first_name(n)}))
        .collect();
    serde_json::json!({"version": processor::SUBMIT_CAMPAIGN_VERSION, "campaign": campaign})
}

async fn wait_task(harness: &Harness, id: uuid::Uuid, status: tasks::TaskStatus) -> tasks::Task {
    let deadline = Instant::now() + CONDITION_LIMIT;
    loop {
        let task = harness
            .tasks
            .get(id)
            .await
            .unwrap()
            .expect("the task exists");
        if task.status == status {
            return task;
        }
        assert!(
            Instant::now() < deadline,
            "task never became {status}: {task}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Malformed payloads and a schema-valid but invalid campaign: each task is dead after one
/// attempt with the reason on it, and no campaign is stored.
async fn a_bad_submission_is_dead_at_once_and_stores_nothing(harness: Harness) {
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let mut strict = submission("Typo", 3);
    strict["campaign"]["templates"]["subject"] = "Hello {{ frist_name }}".into();
    let mut unknown_field = submission("Unknown field", 1);
    unknown_field["campaign"]["batchsize"] = 10.into();
    let mut newer = submission("Newer", 1);
    newer["version"] = 2.into();
    let cases = [
        (
            serde_json::json!("not an object"),
            "expected {\"version\": 1",
        ),
        (
            serde_json::json!({"campaign": {}}),
            "missing field `version`",
        ),
        (newer, "version: 2 is not supported"),
        (
            unknown_field,
            "campaign.batchsize: unknown field `batchsize`",
        ),
        (
            strict,
            "campaign.templates.subject: line 1: `frist_name` is used but no recipient has that field",
        ),
    ];
    let mut ids = Vec::new();
    for (payload, _) in &cases {
        let task = harness
            .tasks
            .create(tasks::NewTask::new(
                processor::SUBMIT_CAMPAIGN,
                payload.clone(),
            ))
            .await
            .unwrap();
        ids.push(task.id);
    }
    let transport = transport(&server.url());
    let worker = harness.start(worker_config("refuses"), transport.clone());
    for (id, (_, reason)) in ids.iter().zip(&cases) {
        let dead = wait_task(&harness, *id, tasks::TaskStatus::Dead).await;
        assert_eq!(dead.attempts, 1, "never retried: {dead}");
        let error = dead.last_error.unwrap_or_default();
        assert!(
            error.contains(reason),
            "{error:?} should contain {reason:?}"
        );
        assert!(harness.store.get_campaign(*id).await.unwrap().is_none());
    }
    worker.stop().await;
    transport.close().await;
    let stored = harness
        .store
        .list_campaigns(&store::CampaignFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        stored.items.is_empty(),
        "nothing stored: {:?}",
        stored.items
    );
    assert!(arrivals(&server).is_empty());
}

/// A worker stored the campaign and died before completing its task: the task's lease runs
/// out, another worker claims it, finds the campaign under the task's id and sends it — one
/// campaign, each recipient reached once.
async fn a_submission_run_again_after_a_crash_stores_and_sends_once(harness: Harness) {
    const COUNT: usize = 30;
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let payload = submission("Crashed once", COUNT);
    let task = harness
        .tasks
        .create(tasks::NewTask::new(
            processor::SUBMIT_CAMPAIGN,
            payload.clone(),
        ))
        .await
        .unwrap();
    // The first run: claimed, campaign stored under the task's id, then nothing more.
    let claimed = harness
        .tasks
        .claim(
            "crashed",
            &[processor::SUBMIT_CAMPAIGN.to_string()],
            1,
            time::Duration::milliseconds(300),
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let first: processor::SubmitCampaign = serde_json::from_value(payload).unwrap();
    let rows = first
        .campaign
        .recipients
        .iter()
        .cloned()
        .map(Ok)
        .collect::<Vec<_>>();
    harness
        .store
        .create_campaign_once(task.id, &first.campaign, store::recipient_stream(rows))
        .await
        .unwrap();
    let expired = Instant::now() + Duration::from_millis(300);
    wait_until(
        "the crashed worker's lease runs out",
        CONDITION_LIMIT,
        || Instant::now() > expired,
    )
    .await;

    let transport = transport(&server.url());
    let worker = harness.start(worker_config("takes-over"), transport.clone());
    let done = wait_task(&harness, task.id, tasks::TaskStatus::Completed).await;
    assert_eq!(done.attempts, 2, "{done}");
    assert_eq!(
        done.result.as_ref().unwrap()["campaign_id"],
        task.id.to_string()
    );
    assert_eq!(harness.wait_final(task.id).await, CampaignStatus::Completed);
    worker.stop().await;
    transport.close().await;

    let stored = harness
        .store
        .list_campaigns(&store::CampaignFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        stored.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![task.id]
    );
    assert_eq!(stored.items[0].recipient_count, COUNT as i64);
    let sent = harness
        .deliveries(task.id, Some(DeliveryStatus::Sent))
        .await;
    assert_eq!(sent.len(), COUNT);
    let copies = assert_each_recipient_reached(&arrivals(&server), task.id, &sent);
    assert!(copies.values().all(|n| *n == 1), "{copies:?}");
}

/// A submission with scheduled_at is stored scheduled and left to the campaign processor.
async fn a_scheduled_submission_stays_scheduled(harness: Harness) {
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let mut payload = submission("Later", 2);
    let tomorrow = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    payload["campaign"]["scheduled_at"] = tomorrow
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
        .into();
    let task = harness
        .tasks
        .create(tasks::NewTask::new(processor::SUBMIT_CAMPAIGN, payload))
        .await
        .unwrap();
    let transport = transport(&server.url());
    let worker = harness.start(worker_config("schedules"), transport.clone());
    let done = wait_task(&harness, task.id, tasks::TaskStatus::Completed).await;
    worker.stop().await;
    transport.close().await;
    assert_eq!(done.result.as_ref().unwrap()["status"], "scheduled");
    assert_eq!(harness.status(task.id).await, CampaignStatus::Scheduled);
    assert!(
        send_tasks_of(harness.tasks.as_ref(), task.id)
            .await
            .is_empty()
    );
}

/// The tasks of one kind the repository holds for a campaign.
async fn tasks_of(tasks: &dyn TaskRepository, kind: &str, id: CampaignId) -> Vec<tasks::Task> {
    tasks
        .list(&tasks::TaskFilter {
            status: None,
            kind: Some(kind.to_string()),
            key_prefix: None,
            after: None,
            limit: 500,
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|task| task.payload["campaign_id"] == id.to_string())
        .collect()
}

/// The services' clock, panicking while `poisoned` is set. A batch asks it for "now" outside
/// any per-recipient isolation, so it stands in for any defect that panics a task's future.
#[derive(Default)]
struct PoisonedClock {
    poisoned: std::sync::atomic::AtomicBool,
}

impl tasks::Clock for PoisonedClock {
    fn now(&self) -> time::OffsetDateTime {
        if self.poisoned.load(std::sync::atomic::Ordering::SeqCst) {
            panic!("the test's clock is poisoned");
        }
        time::OffsetDateTime::now_utc()
    }
}

/// A batch task whose future panics is a failed attempt: its lease is released and it is
/// retried with the repository's backoff until it is dead, with the panic's message and
/// place as its error. Its recipients are then failed with that reason and the campaign
/// finishes; the same worker goes on to deliver the next campaign.
async fn a_panicking_task_is_retried_until_dead_and_the_worker_goes_on(harness: Harness) {
    let Some(sink) = start_sink(SmtpSink::builder()) else {
        return;
    };
    let fast = tasks::Backoff {
        initial: time::Duration::milliseconds(50),
        max: time::Duration::milliseconds(200),
        jitter: 0.0,
    };
    let local = tasks::connect_with(&harness.url, Arc::new(tasks::SystemClock), fast)
        .await
        .expect("task repository with a short backoff");
    let waking = Arc::new(WakingTasks::new(local));
    let waker = waking.waker();
    let task_repo: Arc<dyn TaskRepository> = waking;
    let clock = Arc::new(PoisonedClock::default());
    clock
        .poisoned
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let transport = transport(&sink.url());
    let worker = Worker::new(
        worker_config("panicking"),
        harness.services_on(transport.clone(), task_repo.clone(), clock.clone()),
        Some(waker),
    );
    let stats = worker.stats();
    let stop = CancellationToken::new();
    let running = Running {
        handle: tokio::spawn(worker.run(stop.clone())),
        stop,
        stats,
    };

    let poisoned = harness.campaign("Poisoned", 3, 10).await;
    service::CampaignService::new(harness.store.as_ref(), task_repo.as_ref())
        .send(poisoned)
        .await
        .expect("campaign enqueued");
    assert_eq!(harness.wait_final(poisoned).await, CampaignStatus::Failed);

    let batches = tasks_of(task_repo.as_ref(), processor::SEND_BATCH, poisoned).await;
    assert_eq!(batches.len(), 1, "{batches:?}");
    let batch = &batches[0];
    assert_eq!(batch.status, tasks::TaskStatus::Dead, "{batch:?}");
    assert_eq!(
        batch.attempts, batch.max_attempts,
        "every attempt was used: {batch:?}"
    );
    assert_eq!(batch.lease_owner, None, "the lease is released: {batch:?}");
    let error = batch.last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains("the task panicked: the test's clock is poisoned (at ")
            && error.contains("delivery.rs"),
        "the error says what panicked and where: {error}"
    );
    let failed = harness.deliveries(poisoned, None).await;
    assert_eq!(failed.len(), 3);
    for delivery in &failed {
        assert_eq!(delivery.status, DeliveryStatus::Failed, "{delivery:?}");
        let reason = delivery.last_error.as_deref().unwrap_or_default();
        assert!(
            reason.contains("its batch task failed on its last attempt")
                && reason.contains("the test's clock is poisoned"),
            "{delivery:?}"
        );
    }

    // The same worker, still running, delivers the next campaign.
    clock
        .poisoned
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let next = harness.campaign("After the panic", 5, 10).await;
    service::CampaignService::new(harness.store.as_ref(), task_repo.as_ref())
        .send(next)
        .await
        .expect("campaign enqueued");
    assert_eq!(harness.wait_final(next).await, CampaignStatus::Completed);
    assert_eq!(harness.counts(next).await.get(DeliveryStatus::Sent), 5);
    assert_eq!(wait_received(&sink, 5).await, 5);
    running.stop().await;
    transport.close().await;
}

/// A filter argument taken from a recipient's field that the filter refuses fails that
/// recipient, with the filter's reason; the others are delivered and the campaign completes.
async fn a_recipient_whose_field_a_filter_refuses_fails_alone(harness: Harness) {
    let Some(sink) = start_sink(SmtpSink::builder()) else {
        return;
    };
    let json = serde_json::json!({
        "name": "Totals",
        "from": {"email": format!("news@{SENDER_DOMAIN}")},
        "templates": {
            "subject": "Your total",
            "text": "Total: {{ total|number(decimals) }}\nUnsubscribe: {{ unsubscribe_url }}\n"
        },
        "batch_size": 10,
    });
    let document =
        CampaignDocument::from_json(json.to_string().as_bytes(), &Limits::default()).unwrap();
    let rows: Vec<_> = (0..5)
        .map(|n| {
            let mut fields = serde_json::Map::new();
            fields.insert("total".into(), "1234.5".into());
            let decimals = if n == 2 { 70000 } else { 2 };
            fields.insert("decimals".into(), decimals.into());
            Ok(Recipient {
                email: EmailAddress::parse(&email(n)).unwrap(),
                fields,
            })
        })
        .collect();
    let (record, _) = harness
        .store
        .create_campaign(&document, store::recipient_stream(rows))
        .await
        .expect("campaign stored");
    let transport = transport(&sink.url());
    let worker = harness.start(worker_config("filters"), transport.clone());
    harness.enqueue(record.id).await;
    assert_eq!(
        harness.wait_final(record.id).await,
        CampaignStatus::Completed
    );
    worker.stop().await;
    transport.close().await;

    let deliveries = harness.deliveries(record.id, None).await;
    let failed: Vec<_> = deliveries
        .iter()
        .filter(|d| d.status == DeliveryStatus::Failed)
        .collect();
    assert_eq!(failed.len(), 1, "{deliveries:?}");
    assert_eq!(failed[0].email, email(2));
    let reason = failed[0].last_error.as_deref().unwrap_or_default();
    assert!(
        reason.contains("number: decimals must be a whole number from 0 to 20, not 70000"),
        "{reason}"
    );
    assert_eq!(harness.counts(record.id).await.get(DeliveryStatus::Sent), 4);
    assert_eq!(wait_received(&sink, 4).await, 4);
}

/// The real SMTP transport, except that sending to one address panics: a defect confined to
/// one message.
struct PanicsForOne {
    inner: Arc<dyn Transport>,
    address: String,
}

#[async_trait::async_trait]
impl Transport for PanicsForOne {
    async fn send(
        &self,
        message: delivery::OutgoingMessage,
    ) -> Result<delivery::Accepted, delivery::SendError> {
        if String::from_utf8_lossy(&message.content).contains(&self.address) {
            panic!("the transport panicked for {}", self.address);
        }
        self.inner.send(message).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

/// A panic while sending one message fails that recipient with the panic's message, once
/// (it is not left due, to panic again in every follow-up); the others are delivered and the
/// campaign completes.
async fn a_panic_while_sending_one_message_fails_that_recipient_only(harness: Harness) {
    let Some(sink) = start_sink(SmtpSink::builder()) else {
        return;
    };
    let id = harness.campaign("One poisoned send", 6, 3).await;
    let smtp = transport(&sink.url());
    let transport: Arc<dyn Transport> = Arc::new(PanicsForOne {
        inner: smtp.clone(),
        address: email(4),
    });
    let worker = harness.start(worker_config("send-panic"), transport);
    harness.enqueue(id).await;
    assert_eq!(harness.wait_final(id).await, CampaignStatus::Completed);
    worker.stop().await;
    smtp.close().await;

    let deliveries = harness.deliveries(id, None).await;
    for delivery in &deliveries {
        if delivery.email == email(4) {
            assert_eq!(delivery.status, DeliveryStatus::Failed, "{delivery:?}");
            assert_eq!(delivery.attempts, 1, "{delivery:?}");
            let error = delivery.last_error.as_deref().unwrap_or_default();
            assert!(
                error.contains("sending panicked: the transport panicked for reader4@mail.example"),
                "{error}"
            );
        } else {
            assert_eq!(delivery.status, DeliveryStatus::Sent, "{delivery:?}");
        }
    }
    assert_eq!(wait_received(&sink, 5).await, 5);
}

macro_rules! delivery_suite {
    ($backend:ident, $open:expr) => {
        mod $backend {
            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                    async fn $name() {
                        #[allow(clippy::redundant_closure_call)]
                        let Some((url, database)) = ($open)().await else {
                            return;
                        };
                        super::$name(super::Harness::open(url, database).await).await;
                    }
                };
            }

            case!(five_thousand_recipients_each_get_one_personalized_message);
            case!(temporary_rejections_are_deferred_then_delivered);
            case!(permanent_rejections_fail_every_recipient_with_the_server_text);
            case!(a_hang_up_after_the_content_defers_then_delivers);
            case!(a_server_gone_mid_campaign_loses_no_recipient);
            case!(suppressed_recipients_are_recorded_and_never_sent);
            case!(an_aborted_worker_loses_nothing_and_duplicates_stay_within_in_flight);
            case!(a_paused_campaign_resumes_without_a_second_copy_to_anyone);
            case!(a_due_campaign_is_enqueued_once_and_a_lost_task_is_repaired);
            case!(a_cancelled_campaign_sends_at_most_its_in_flight_messages_after_the_cancel);
            case!(every_message_returns_bounces_to_its_own_verp_address);
            case!(recipients_in_three_zones_are_released_at_their_own_local_hour);
            case!(a_campaign_due_while_the_task_repository_is_down_is_queued_later);
            case!(a_bad_submission_is_dead_at_once_and_stores_nothing);
            case!(a_submission_run_again_after_a_crash_stores_and_sends_once);
            case!(a_scheduled_submission_stays_scheduled);

            case!(a_panicking_task_is_retried_until_dead_and_the_worker_goes_on);
            case!(a_recipient_whose_field_a_filter_refuses_fails_alone);
            case!(a_panic_while_sending_one_message_fails_that_recipient_only);
        }
    };
}

delivery_suite!(sqlite, || async {
    let database = testkit::SqliteDatabase::create();
    Some((
        database.url.clone(),
        Box::new(database) as Box<dyn std::any::Any + Send>,
    ))
});

delivery_suite!(postgres, || async {
    let database = testkit::PostgresDatabase::create().await?;
    Some((
        database.url.clone(),
        Box::new(database) as Box<dyn std::any::Any + Send>,
    ))
});
