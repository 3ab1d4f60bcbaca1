//! The harness every case runs on: one database's store and task repository, workers on
//! tokio tasks, SMTP servers, and polls for a condition with a deadline.

use campaign::{
    CampaignDocument, CampaignId, CampaignStatus, DeliveryStatus, EmailAddress, Limits, Recipient,
    RecipientId, RowError,
};
use delivery::{Transport, TransportConfig};
use processor::{Services, WakingTasks, Worker, WorkerConfig};
use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{CampaignStore, DeliveryCounts, DeliveryRecord};
use tasks::TaskRepository;
use testkit::smtp::{Aiosmtpd, SmtpSink};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// SMTP connections per transport.
pub const CONNECTIONS: usize = 4;

/// Messages a worker may have sent but not yet recorded: the duplicate bound after a crash.
pub const IN_FLIGHT: usize = 8;

/// How long a campaign may take to reach a final state before the test fails.
pub const FINISH_LIMIT: Duration = Duration::from_secs(60);

/// The same for the 5,000-recipient campaign: aiosmtpd takes ~250-550 messages/s on two
/// busy cores, less while the other backend's suite runs beside it (46 s measured once).
pub const BIG_FINISH_LIMIT: Duration = Duration::from_secs(120);

/// How long a fault may take to show in the rows (or a server's counters).
pub const CONDITION_LIMIT: Duration = Duration::from_secs(30);

/// The domain of the sender, and so of every Message-ID.
pub const SENDER_DOMAIN: &str = "shop.example";

/// The stores (one database) and task repository a suite case runs on.
pub struct Harness {
    pub url: String,
    pub store: Arc<dyn CampaignStore>,
    pub tasks: Arc<dyn TaskRepository>,
    pub waker: Arc<Notify>,
    _database: Box<dyn Any + Send>,
}

/// Runs one case of a suite (`testkit::backend_suite!`) on a harness over `database`.
pub async fn with_harness<Case, Run>(database: testkit::TestDatabase, case: Case)
where
    Case: FnOnce(Harness) -> Run,
    Run: std::future::Future<Output = ()>,
{
    let url = database.url().to_string();
    case(Harness::open(url, Box::new(database)).await).await;
}

/// A worker running on its own tokio task.
pub struct Running {
    pub stop: CancellationToken,
    pub handle: JoinHandle<()>,
    pub stats: Arc<processor::Stats>,
}

impl Running {
    /// Stops it the graceful way and waits until it has returned.
    pub async fn stop(self) -> processor::StatsSnapshot {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("the worker stops within its grace")
            .expect("the worker does not panic");
        self.stats.snapshot()
    }
}

pub fn transport(url: &str) -> Arc<dyn Transport> {
    delivery::transport_from_config(&TransportConfig {
        smtp_url: Some(url.to_string()),
        connections: CONNECTIONS,
        ..TransportConfig::default()
    })
    .expect("SMTP transport")
}

pub fn worker_config(id: &str) -> WorkerConfig {
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

pub fn document(name: &str, batch_size: u32) -> CampaignDocument {
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

pub fn email(n: usize) -> String {
    format!("reader{n}@mail.example")
}

pub fn first_name(n: usize) -> String {
    format!("Reader{n}")
}

pub fn recipients(count: usize) -> Vec<Result<Recipient, RowError>> {
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
    pub async fn open(url: String, database: Box<dyn Any + Send>) -> Harness {
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

    pub fn services(&self, transport: Arc<dyn Transport>) -> Services {
        self.services_on(transport, self.tasks.clone(), Arc::new(tasks::SystemClock))
    }

    /// Services over another task repository and clock (a test that moves time by hand).
    pub fn services_on(
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

    pub fn start(&self, config: WorkerConfig, transport: Arc<dyn Transport>) -> Running {
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
    pub async fn campaign(&self, name: &str, count: usize, batch_size: u32) -> CampaignId {
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

    pub async fn enqueue(&self, id: CampaignId) {
        service::CampaignService::new(self.store.as_ref(), self.tasks.as_ref())
            .send(id)
            .await
            .expect("campaign enqueued");
    }

    pub async fn status(&self, id: CampaignId) -> CampaignStatus {
        self.store
            .get_campaign(id)
            .await
            .expect("campaign readable")
            .expect("campaign exists")
            .status
    }

    pub async fn counts(&self, id: CampaignId) -> DeliveryCounts {
        self.store.delivery_counts(id).await.expect("counts")
    }

    /// Polls the campaign every 50 ms until it is completed, failed or cancelled.
    pub async fn wait_final(&self, id: CampaignId) -> CampaignStatus {
        self.wait_final_within(id, FINISH_LIMIT).await
    }

    pub async fn wait_final_within(&self, id: CampaignId, limit: Duration) -> CampaignStatus {
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
    pub async fn wait_counts(
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
    pub async fn deliveries(
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
pub async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a sink from a builder without stalling the runtime's other work.
pub fn start_sink(builder: testkit::smtp::SmtpSinkBuilder) -> Option<SmtpSink> {
    tokio::task::block_in_place(|| builder.start())
}

/// Messages a sink has received since it started, from the last counter record it printed.
///
/// Not [`SmtpSink::counters`]: that subtracts a baseline taken once the readiness probe is
/// counted, and a sink brought back under a worker that keeps retrying has already taken
/// messages by then. The probe itself sends none, so the raw count is exact.
pub fn messages_received(sink: &SmtpSink) -> u64 {
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
pub async fn wait_received(sink: &SmtpSink, count: u64) -> u64 {
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
pub struct Arrival {
    pub message_id: String,
    pub rcpt: String,
    pub subject: String,
}

pub fn header(message: &str, name: &str) -> Option<String> {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    message
        .lines()
        .take_while(|line| !line.is_empty())
        .find(|line| line.to_ascii_lowercase().starts_with(&prefix))
        .map(|line| line[prefix.len()..].trim().to_string())
}

pub fn arrivals(server: &Aiosmtpd) -> Vec<Arrival> {
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
pub fn message_id(campaign: CampaignId, recipient: RecipientId) -> String {
    format!("<{campaign}.{recipient}@{SENDER_DOMAIN}>")
}

/// Checks that each recipient of the campaign has a message with its own Message-ID at the
/// server, and that nobody else got one. Returns how many copies each Message-ID has.
pub fn assert_each_recipient_reached(
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

/// The send_campaign tasks the repository holds for a campaign.
pub async fn send_tasks_of(tasks: &dyn TaskRepository, id: CampaignId) -> Vec<tasks::Task> {
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
