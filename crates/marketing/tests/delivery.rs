//! Delivery end to end through the real binary: `marketing send` on the embedded default,
//! and the scaled-out roles (`task-repo` + several `worker` processes on PostgreSQL) into
//! aiosmtpd, a server the project did not write, whose Maildir is read back to check that
//! every recipient got exactly one message (by Message-ID), also when a worker is stopped
//! with SIGTERM or killed with SIGKILL mid-campaign.

use campaign::{CampaignDocument, CampaignStatus, DeliveryStatus, Recipient};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{BINARY, TRACKING_SECRET, example, spawn, start_task_repo, wait_until};
use testkit::process::Process;
use testkit::smtp::Aiosmtpd;

mod support;

const TOKEN: &str = "delivery-test-token";
/// SMTP connections per worker.
const CONNECTIONS: usize = 4;
/// MAX_IN_FLIGHT of each worker, more than its connections: the duplicate bound a SIGKILL may
/// cause.
const IN_FLIGHT: usize = 8;

fn document(name: &str) -> CampaignDocument {
    let json = serde_json::json!({
        "name": name,
        "from": {"email": "news@shop.example", "name": "Shop"},
        "templates": {
            "subject": "Hello {{ first_name }}, number {{ n }}",
            "text": "Hi {{ first_name }},\nyour number is {{ n }}.\nUnsubscribe: {{ unsubscribe_url }}\n"
        },
        "batch_size": 100,
        "retry": {"max_attempts": 10, "initial_backoff_seconds": 1, "max_backoff_seconds": 2}
    });
    CampaignDocument::from_json(json.to_string().as_bytes(), &campaign::Limits::default())
        .expect("valid campaign")
}

fn recipients(count: usize) -> Vec<Result<Recipient, campaign::RowError>> {
    recipients_named("reader", count)
}

/// `count` recipients `{prefix}{n}@mail.example`.
fn recipients_named(prefix: &str, count: usize) -> Vec<Result<Recipient, campaign::RowError>> {
    (0..count)
        .map(|n| {
            let object = serde_json::json!({
                "email": format!("{prefix}{n}@mail.example"),
                "first_name": format!("Reader{n}"),
                "n": n,
            });
            let serde_json::Value::Object(object) = object else {
                unreachable!()
            };
            Ok(Recipient::from_object(object).expect("valid recipient"))
        })
        .collect()
}

/// What arrived at the sink: Message-ID → (recipient, subject), and how many messages
/// carried each Message-ID.
struct Arrivals {
    by_id: HashMap<String, (String, String)>,
    copies: HashMap<String, usize>,
    total: usize,
}

fn header(message: &str, name: &str) -> Option<String> {
    let prefix = format!("{}:", name.to_ascii_lowercase());
    message
        .lines()
        .take_while(|line| !line.is_empty())
        .find(|line| line.to_ascii_lowercase().starts_with(&prefix))
        .map(|line| line[prefix.len()..].trim().to_string())
}

fn arrivals(sink: &Aiosmtpd) -> Arrivals {
    let mut by_id = HashMap::new();
    let mut copies: HashMap<String, usize> = HashMap::new();
    let messages = sink.messages();
    for raw in &messages {
        let text = String::from_utf8_lossy(raw);
        let id = header(&text, "Message-ID").expect("every message has a Message-ID");
        let rcpt = header(&text, "X-RcptTo").expect("aiosmtpd records the recipient");
        let subject = header(&text, "Subject").unwrap_or_default();
        *copies.entry(id.clone()).or_default() += 1;
        by_id.insert(id, (rcpt, subject));
    }
    Arrivals {
        by_id,
        copies,
        total: messages.len(),
    }
}

struct Cluster {
    dir: tempfile::TempDir,
    store: Arc<dyn store::CampaignStore>,
    repo_url: String,
    env: Vec<(&'static str, String)>,
    _task_repo: Process,
    _database: testkit::PostgresDatabase,
}

impl Cluster {
    /// A fresh PostgreSQL database, a `task-repo` process on it, ready for workers.
    async fn start(sink: &Aiosmtpd) -> Option<Cluster> {
        let database = testkit::PostgresDatabase::create().await?;
        let dir = tempfile::tempdir().unwrap();
        let store = store::connect(&database.url).await.expect("store opens");
        let (task_repo, repo_url) = start_task_repo(dir.path(), &database.url, TOKEN).await;
        let env = vec![
            ("DATABASE_URL", database.url.clone()),
            ("TASK_REPO_URL", repo_url.clone()),
            ("TASK_REPO_TOKEN", TOKEN.to_string()),
            ("SMTP_URL", sink.url()),
            ("SMTP_CONNECTIONS", CONNECTIONS.to_string()),
            ("MAX_IN_FLIGHT", IN_FLIGHT.to_string()),
            ("TASK_CHECK_INTERVAL", "0.2".into()),
            ("TASK_LEASE_SECONDS", "3".into()),
            ("SHUTDOWN_GRACE", "10".into()),
            // Several workers on one host: each picks a free metrics port.
            ("METRICS_BIND", "127.0.0.1:0".into()),
        ];
        Some(Cluster {
            dir,
            store,
            repo_url,
            env,
            _task_repo: task_repo,
            _database: database,
        })
    }

    fn worker(&self, name: &str) -> Process {
        spawn(name, self.dir.path(), &["worker"], &self.env)
    }

    /// Stores a campaign and queues it through the task repository service.
    async fn send(&self, name: &str, count: usize) -> campaign::CampaignId {
        let (record, _) = self
            .store
            .create_campaign(&document(name), store::recipient_stream(recipients(count)))
            .await
            .expect("campaign stored");
        let repo = tasks::HttpTaskRepository::new(&self.repo_url, Some(TOKEN.to_string()));
        service::CampaignService::new(self.store.as_ref(), &repo)
            .send(record.id)
            .await
            .expect("campaign queued");
        record.id
    }

    async fn wait_finished(&self, id: campaign::CampaignId, limit: Duration) -> CampaignStatus {
        let store = self.store.clone();
        wait_until(limit, "the campaign to finish", || {
            let store = store.clone();
            async move {
                let status = store.get_campaign(id).await.unwrap().unwrap().status;
                matches!(status, CampaignStatus::Completed | CampaignStatus::Failed)
            }
        })
        .await;
        self.store.get_campaign(id).await.unwrap().unwrap().status
    }

    /// The log of a process of this cluster, also once it has ended.
    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }
}

/// Waits until `log` contains `needle` (a process saying it is ready).
async fn wait_for_log(log: impl Fn() -> String, needle: &str) {
    wait_until(Duration::from_secs(30), needle, || {
        let found = log().contains(needle);
        async move { found }
    })
    .await;
}

/// Campaign ids in the campaign processor's "scheduled campaign enqueued" log lines.
fn enqueued_in_log(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("scheduled campaign enqueued"))
        .filter_map(|line| {
            let start = line.find("campaign=")? + "campaign=".len();
            line.get(start..start + 36).map(str::to_string)
        })
        .collect()
}

/// Messages `sent` in the "batch done" log lines of one campaign.
fn sent_in_batch_lines(log: &str, campaign: &str) -> usize {
    log.lines()
        .filter(|line| line.contains("batch done") && line.contains(campaign))
        .filter_map(|line| {
            let start = line.find(" sent=")? + " sent=".len();
            let digits: String = line[start..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse::<usize>().ok()
        })
        .sum()
}

/// Polls the store until the campaign has left `scheduled`; returns its record.
async fn wait_queued(
    store: &dyn store::CampaignStore,
    id: campaign::CampaignId,
    limit: Duration,
) -> store::CampaignRecord {
    let deadline = Instant::now() + limit;
    loop {
        let record = store.get_campaign(id).await.unwrap().unwrap();
        if record.status != CampaignStatus::Scheduled {
            return record;
        }
        assert!(Instant::now() < deadline, "not queued within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every recipient 0..count got a message with its own subject.
fn assert_each_recipient_reached(arrivals: &Arrivals, count: usize) {
    let mut reached: HashMap<String, String> = HashMap::new();
    for (rcpt, subject) in arrivals.by_id.values() {
        reached.insert(rcpt.clone(), subject.clone());
    }
    assert_eq!(reached.len(), count, "distinct recipients reached");
    for n in (0..count).step_by((count / 25).max(1)) {
        let subject = reached
            .get(&format!("reader{n}@mail.example"))
            .unwrap_or_else(|| panic!("reader{n} got nothing"));
        assert_eq!(subject, &format!("Hello Reader{n}, number {n}"));
    }
}

mod postgres {
    use super::*;

    /// Three workers share one campaign through the task repository service; one is stopped
    /// with SIGTERM mid-campaign, exits 0 after handing its work on, and the other two finish:
    /// every recipient gets exactly one message.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_workers_deliver_each_recipient_once_and_one_stops_gracefully() {
        let Some(sink) = Aiosmtpd::start() else {
            return;
        };
        let Some(cluster) = Cluster::start(&sink).await else {
            return;
        };
        const COUNT: usize = 20_000;
        let mut workers: Vec<Process> = (1..=3)
            .map(|n| cluster.worker(&format!("worker-{n}")))
            .collect();
        let id = cluster.send("Scale-out", COUNT).await;
        wait_until(Duration::from_secs(120), "a quarter of the mail", || {
            let n = sink.message_count();
            async move { n >= COUNT / 4 }
        })
        .await;
        let stopping = workers.pop().unwrap();
        stopping.signal("-TERM");
        let mut stopping = stopping;
        let status = stopping.wait_exit(Duration::from_secs(30));
        assert!(
            status.success(),
            "SIGTERM ends the worker cleanly: {status}\n{}",
            cluster.log("worker-3")
        );
        assert!(cluster.log("worker-3").contains("stopped"));

        let status = cluster.wait_finished(id, Duration::from_secs(240)).await;
        assert_eq!(status, CampaignStatus::Completed);
        let counts = cluster.store.delivery_counts(id).await.unwrap();
        assert_eq!(counts.get(DeliveryStatus::Sent), COUNT as i64);
        assert_eq!(counts.total(), COUNT as i64);

        let arrived = arrivals(&sink);
        assert_eq!(arrived.total, COUNT, "one message per recipient, no more");
        assert_eq!(arrived.by_id.len(), COUNT, "distinct Message-IDs");
        assert_each_recipient_reached(&arrived, COUNT);
        // All three took part before the stop.
        for n in 1..=2 {
            assert!(
                cluster
                    .log(&format!("worker-{n}"))
                    .contains("task processor started")
            );
        }
    }

    /// A worker killed with SIGKILL mid-campaign and started again: every recipient is
    /// delivered, and the copies beyond one per recipient are at most the killed worker's
    /// SMTP connections (its messages accepted by the server but not yet recorded).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_killed_worker_loses_nothing_and_duplicates_stay_within_its_connections() {
        let Some(sink) = Aiosmtpd::start() else {
            return;
        };
        let Some(cluster) = Cluster::start(&sink).await else {
            return;
        };
        const COUNT: usize = 10_000;
        let mut victim = cluster.worker("victim");
        let _others: Vec<Process> = (1..=2)
            .map(|n| cluster.worker(&format!("worker-{n}")))
            .collect();
        let id = cluster.send("Crash", COUNT).await;
        wait_until(Duration::from_secs(120), "a third of the mail", || {
            let n = sink.message_count();
            async move { n >= COUNT / 3 }
        })
        .await;
        victim.signal("-KILL");
        let status = victim.wait_exit(Duration::from_secs(10));
        assert!(!status.success(), "SIGKILL ends it abruptly");
        let _restarted = cluster.worker("victim-restarted");

        let status = cluster.wait_finished(id, Duration::from_secs(240)).await;
        assert_eq!(status, CampaignStatus::Completed);
        let counts = cluster.store.delivery_counts(id).await.unwrap();
        assert_eq!(counts.get(DeliveryStatus::Sent), COUNT as i64);

        let arrived = arrivals(&sink);
        assert_each_recipient_reached(&arrived, COUNT);
        let duplicates = arrived.total - arrived.by_id.len();
        assert!(
            duplicates <= IN_FLIGHT,
            "{duplicates} duplicates; the bound is the killed worker's MAX_IN_FLIGHT ({IN_FLIGHT})"
        );
        assert!(arrived.copies.values().all(|&n| n <= 2));
        eprintln!("SIGKILL mid-campaign: {duplicates} duplicate(s) (bound {IN_FLIGHT})");
    }

    /// Three campaign processors on one PostgreSQL store, 200 campaigns due at the same
    /// moment: each campaign is enqueued by exactly one of them (their logs name every
    /// campaign once in all), and two workers deliver each recipient exactly once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_schedulers_enqueue_each_due_campaign_exactly_once() {
        let Some(sink) = Aiosmtpd::start() else {
            return;
        };
        let Some(cluster) = Cluster::start(&sink).await else {
            return;
        };
        const CAMPAIGNS: usize = 200;
        const PER_CAMPAIGN: usize = 5;
        let mut env = cluster.env.clone();
        env.push(("CAMPAIGN_CHECK_INTERVAL", "60".into()));
        let _schedulers: Vec<Process> = (1..=3)
            .map(|n| {
                spawn(
                    &format!("scheduler-{n}"),
                    cluster.dir.path(),
                    &["scheduler"],
                    &env,
                )
            })
            .collect();
        let _workers: Vec<Process> = (1..=2)
            .map(|n| cluster.worker(&format!("worker-{n}")))
            .collect();
        for n in 1..=3 {
            wait_for_log(
                || cluster.log(&format!("scheduler-{n}")),
                "campaign processor started",
            )
            .await;
        }

        let mut ids = Vec::new();
        for c in 0..CAMPAIGNS {
            let (record, _) = cluster
                .store
                .create_campaign(
                    &document(&format!("Due {c}")),
                    store::recipient_stream(recipients_named(&format!("c{c}r"), PER_CAMPAIGN)),
                )
                .await
                .expect("campaign stored");
            ids.push(record.id);
        }
        let due = (time::OffsetDateTime::now_utc() + time::Duration::seconds(3))
            .replace_millisecond(0)
            .unwrap();
        for &id in &ids {
            assert!(
                cluster
                    .store
                    .schedule_campaign(id, Some(due))
                    .await
                    .unwrap()
            );
        }

        for &id in &ids {
            let status = cluster.wait_finished(id, Duration::from_secs(180)).await;
            assert_eq!(status, CampaignStatus::Completed);
        }
        let mut enqueued: HashMap<String, usize> = HashMap::new();
        let mut per_scheduler = Vec::new();
        for n in 1..=3 {
            let mine = enqueued_in_log(&cluster.log(&format!("scheduler-{n}")));
            per_scheduler.push(mine.len());
            for id in mine {
                *enqueued.entry(id).or_default() += 1;
            }
        }
        assert_eq!(enqueued.len(), CAMPAIGNS, "every campaign was enqueued");
        for id in &ids {
            assert_eq!(
                enqueued.get(&id.to_string()),
                Some(&1),
                "campaign {id} enqueued once"
            );
        }
        let mut latest = Duration::ZERO;
        for &id in &ids {
            let record = cluster.store.get_campaign(id).await.unwrap().unwrap();
            let delay = record.start_delay().expect("queued after its schedule");
            latest = latest.max(Duration::try_from(delay).unwrap());
        }
        eprintln!(
            "enqueued per scheduler: {per_scheduler:?}; latest start {latest:?} after its time"
        );

        let arrived = arrivals(&sink);
        assert_eq!(
            arrived.total,
            CAMPAIGNS * PER_CAMPAIGN,
            "one message per recipient"
        );
        let reached: std::collections::HashSet<&String> =
            arrived.by_id.values().map(|(rcpt, _)| rcpt).collect();
        assert_eq!(
            reached.len(),
            CAMPAIGNS * PER_CAMPAIGN,
            "distinct recipients"
        );
    }
    /// The original design's `docker-compose up -d --scale campaign-processor=3`: three
    /// `marketing campaign-processor` processes on one PostgreSQL store. A campaign scheduled
    /// a few seconds ahead is queued by exactly one of them, each of the three delivers a
    /// share of its batches, and every recipient gets exactly one message.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_campaign_processors_queue_once_and_each_deliver_a_share() {
        let Some(sink) = Aiosmtpd::start() else {
            return;
        };
        let Some(cluster) = Cluster::start(&sink).await else {
            return;
        };
        const COUNT: usize = 3_000;
        let mut env = cluster.env.clone();
        env.push(("CAMPAIGN_CHECK_INTERVAL", "60".into()));
        let names: Vec<String> = (1..=3).map(|n| format!("campaign-processor-{n}")).collect();
        let _processors: Vec<Process> = names
            .iter()
            .map(|name| spawn(name, cluster.dir.path(), &["campaign-processor"], &env))
            .collect();
        for name in &names {
            wait_for_log(|| cluster.log(name), "campaign processor started").await;
            wait_for_log(|| cluster.log(name), "task processor started").await;
        }

        let (record, _) = cluster
            .store
            .create_campaign(
                &document("Scaled campaign processors"),
                store::recipient_stream(recipients(COUNT)),
            )
            .await
            .expect("campaign stored");
        let id = record.id;
        let due = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
        assert!(
            cluster
                .store
                .schedule_campaign(id, Some(due))
                .await
                .unwrap()
        );

        let status = cluster.wait_finished(id, Duration::from_secs(240)).await;
        assert_eq!(status, CampaignStatus::Completed);
        let counts = cluster.store.delivery_counts(id).await.unwrap();
        assert_eq!(counts.get(DeliveryStatus::Sent), COUNT as i64);

        let queued_by: Vec<usize> = names
            .iter()
            .map(|name| {
                enqueued_in_log(&cluster.log(name))
                    .iter()
                    .filter(|queued| **queued == id.to_string())
                    .count()
            })
            .collect();
        // Exactly one replica wins the conditional `scheduled → queued`; it logs the win
        // unless creating the task failed under load, when a later check's repair creates it
        // (logged at debug). Either way the campaign has exactly one send task.
        assert!(
            queued_by.iter().sum::<usize>() <= 1,
            "queued at most once in the logs: {queued_by:?}"
        );
        use tasks::TaskRepository as _;
        let repo = tasks::HttpTaskRepository::new(&cluster.repo_url, Some(TOKEN.to_string()));
        let send_tasks = repo
            .list(&tasks::TaskFilter {
                kind: Some(processor::SEND_CAMPAIGN.to_string()),
                limit: 100,
                ..tasks::TaskFilter::default()
            })
            .await
            .unwrap();
        let for_campaign = send_tasks
            .iter()
            .filter(|task| task.payload["campaign_id"] == id.to_string())
            .count();
        assert_eq!(for_campaign, 1, "one send task for the campaign");
        let sent_by: Vec<usize> = names
            .iter()
            .map(|name| sent_in_batch_lines(&cluster.log(name), &id.to_string()))
            .collect();
        assert_eq!(
            sent_by.iter().sum::<usize>(),
            COUNT,
            "the batch lines account for every message: {sent_by:?}"
        );
        assert!(
            sent_by.iter().all(|&sent| sent > 0),
            "every replica delivered a share: {sent_by:?}"
        );
        eprintln!("sent per campaign processor: {sent_by:?}");

        let arrived = arrivals(&sink);
        assert_eq!(arrived.total, COUNT, "one message per recipient, no more");
        assert_each_recipient_reached(&arrived, COUNT);
    }
}

mod sqlite {
    use super::*;

    /// Starts `marketing scheduler` on a SQLite store and waits until it is running.
    async fn start_scheduler(dir: &Path, url: &str) -> Process {
        let process = spawn(
            "scheduler",
            dir,
            &["scheduler"],
            &[
                ("DATABASE_URL", url.to_string()),
                ("CAMPAIGN_CHECK_INTERVAL", "60".into()),
            ],
        );
        wait_for_log(|| process.log(), "campaign processor started").await;
        process
    }

    async fn draft(store: &dyn store::CampaignStore, name: &str) -> campaign::CampaignId {
        let (record, _) = store
            .create_campaign(&document(name), store::recipient_stream(recipients(3)))
            .await
            .unwrap();
        record.id
    }

    /// The send_campaign tasks of the campaign, once the campaign processor has created its
    /// task (it does so right after committing `queued`, which the test may see first).
    async fn send_campaign_tasks(url: &str, id: campaign::CampaignId) -> usize {
        let tasks = tasks::connect(url).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let page = tasks
                .list(&tasks::TaskFilter {
                    status: None,
                    kind: Some(processor::SEND_CAMPAIGN.to_string()),
                    key_prefix: None,
                    after: None,
                    limit: 100,
                })
                .await
                .unwrap();
            let found = page
                .iter()
                .filter(|task| task.payload["campaign_id"] == id.to_string())
                .count();
            if found > 0 || Instant::now() > deadline {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// With CAMPAIGN_CHECK_INTERVAL=60, a campaign scheduled 3 s ahead still starts within
    /// 1.5 s of its time (real clock): the processor's timer on the nearest scheduled time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_campaign_scheduled_three_seconds_ahead_starts_on_time() {
        let database = testkit::SqliteDatabase::create();
        let dir = tempfile::tempdir().unwrap();
        let _scheduler = start_scheduler(dir.path(), &database.url).await;
        let store = store::connect(&database.url).await.unwrap();
        let id = draft(store.as_ref(), "On time").await;
        let at = (time::OffsetDateTime::now_utc() + time::Duration::seconds(3))
            .replace_microsecond(0)
            .unwrap();
        assert!(store.schedule_campaign(id, Some(at)).await.unwrap());

        let record = wait_queued(store.as_ref(), id, Duration::from_secs(10)).await;
        let observed = time::OffsetDateTime::now_utc();
        let queued_at = record.queued_at.expect("queued_at is stamped");
        assert!(queued_at >= at, "never before its time: {queued_at} < {at}");
        let delay = queued_at - at;
        assert!(
            delay <= time::Duration::milliseconds(1500),
            "started {delay} after its time"
        );
        assert!(
            observed - at <= time::Duration::milliseconds(2500),
            "seen {}",
            observed - at
        );
        assert!(!record.started_late());
        assert_eq!(send_campaign_tasks(&database.url, id).await, 1);
        eprintln!("scheduled 3 s ahead: queued {delay} after its time");
    }

    /// A campaign whose time passed while no campaign processor ran starts as soon as one
    /// does, and `marketing status` says it started late and by how much.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_overdue_campaign_starts_at_once_and_shows_its_delay() {
        let database = testkit::SqliteDatabase::create();
        let dir = tempfile::tempdir().unwrap();
        let store = store::connect(&database.url).await.unwrap();
        let id = draft(store.as_ref(), "Overdue").await;
        let at = time::OffsetDateTime::now_utc() - time::Duration::seconds(90);
        assert!(store.schedule_campaign(id, Some(at)).await.unwrap());

        let started = time::OffsetDateTime::now_utc();
        let _scheduler = start_scheduler(dir.path(), &database.url).await;
        let record = wait_queued(store.as_ref(), id, Duration::from_secs(10)).await;
        let queued_at = record.queued_at.unwrap();
        assert!(
            queued_at - started <= time::Duration::seconds(5),
            "started at once, not after CAMPAIGN_CHECK_INTERVAL"
        );
        assert!(record.started_late());
        let delay = record.start_delay().unwrap();
        assert!(delay >= time::Duration::seconds(90), "{delay}");
        assert_eq!(send_campaign_tasks(&database.url, id).await, 1);

        let status = Command::new(BINARY)
            .current_dir(dir.path())
            .env("DATABASE_URL", &database.url)
            .args(["status", &id.to_string(), "--json"])
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
        assert_eq!(json["started_late"], true);
        let seconds = json["start_delay_seconds"].as_f64().unwrap();
        assert!((90.0..120.0).contains(&seconds), "{seconds}");
        let text = Command::new(BINARY)
            .current_dir(dir.path())
            .env("DATABASE_URL", &database.url)
            .args(["status", &id.to_string()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("s late"), "{text}");
    }

    /// The README's first command: the sample campaign on the embedded default, to a real
    /// SMTP server, with a summary that matches what arrived.
    #[test]
    fn send_delivers_the_sample_campaign_and_reports_what_the_rows_say() {
        let Some(sink) = Aiosmtpd::start() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let output = Command::new(BINARY)
            .current_dir(dir.path())
            .env_remove("DATABASE_URL")
            .env("SMTP_URL", sink.url())
            .env("TRACKING_SECRET", TRACKING_SECRET)
            .args([
                "send",
                &example("sample_campaign.json"),
                "--recipients",
                &example("sample_recipients.csv"),
                "--json",
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let rows = std::fs::read_to_string(example("sample_recipients.csv")).unwrap();
        let addresses: Vec<&str> = rows
            .lines()
            .skip(1)
            .filter_map(|l| l.split(',').next())
            .filter(|a| !a.is_empty())
            .collect();
        // aiosmtpd does not offer SMTPUTF8 here, so the sample's non-ASCII addresses cannot be
        // sent to it: they fail with that reason instead of being mangled.
        let unsendable = addresses.iter().filter(|a| !a.is_ascii()).count();
        assert!(unsendable > 0, "the sample has internationalized addresses");
        let expected = addresses.len() - unsendable;
        assert_eq!(summary["status"], "completed");
        assert_eq!(summary["deliveries"]["sent"], expected);
        assert_eq!(summary["deliveries"]["failed"], unsendable);
        assert_eq!(summary["recipients"], addresses.len());
        assert!(summary["messages_per_second"].as_f64().unwrap() > 0.0);
        assert!(
            dir.path().join("marketing.db").exists(),
            "the embedded default store"
        );

        let arrived = arrivals(&sink);
        assert_eq!(arrived.total, expected);
        assert_eq!(arrived.by_id.len(), expected);
        // The first CSV row's subject, personalized.
        let first = rows.lines().nth(1).unwrap();
        let (email, first_name) = {
            let mut cells = first.split(',');
            (cells.next().unwrap(), cells.next().unwrap())
        };
        let (_, subject) = arrived
            .by_id
            .values()
            .find(|(rcpt, _)| rcpt == email)
            .expect("the first recipient got mail");
        assert!(subject.starts_with(first_name), "{subject}");
    }
}
