//! The worker loop: claim, run, heartbeat, stop gracefully.

use crate::batch::{Shared, abandon, deliver, split};
use crate::payload::{SEND_BATCH, SEND_CAMPAIGN, SUBMIT_CAMPAIGN, SendBatch, SendCampaign};
use crate::{ProcessorError, Services};
use async_trait::async_trait;
use futures::FutureExt;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::OutcomeKind;
use tasks::{Lease, NewTask, Task, TaskError, TaskFilter, TaskRepository, TaskStatus};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How a worker behaves (from TASK_CHECK_INTERVAL, WORKER_ID, SMTP_CONNECTIONS, …).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Names the worker's leases; unique per process.
    pub worker_id: String,
    /// How often an idle worker asks for work (it also wakes when work is created in the same
    /// process).
    pub check_interval: Duration,
    /// How long a claim holds a task without a heartbeat; after a crash, others take its
    /// tasks once this has passed.
    pub lease: Duration,
    /// Tasks (batches) run at once.
    pub max_tasks: usize,
    /// Messages sent but not yet recorded, at most: the bound on duplicates after a crash.
    pub in_flight: usize,
    /// How long a shutdown waits for running batches to hand their rest on.
    pub shutdown_grace: Duration,
}

impl WorkerConfig {
    pub fn new(worker_id: impl Into<String>) -> WorkerConfig {
        WorkerConfig {
            worker_id: worker_id.into(),
            check_interval: Duration::from_secs(5),
            lease: Duration::from_secs(60),
            max_tasks: 4,
            in_flight: 8,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// A worker id unique per process: host name, process id and a random suffix, so replicas
/// started from one configuration never share leases.
pub fn default_worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    let suffix = Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..6])
}

/// Counters of what this process delivered (the rows stay the record; these feed progress
/// bars and metrics).
#[derive(Debug, Default)]
pub struct Stats {
    sent: AtomicU64,
    deferred: AtomicU64,
    failed: AtomicU64,
    suppressed: AtomicU64,
    batches: AtomicU64,
}

/// A moment's copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub sent: u64,
    pub deferred: u64,
    pub failed: u64,
    pub suppressed: u64,
    pub batches: u64,
}

impl Stats {
    pub(crate) fn count(&self, kind: &OutcomeKind) {
        let counter = match kind {
            OutcomeKind::Sent { .. } => &self.sent,
            OutcomeKind::Deferred { .. } => &self.deferred,
            OutcomeKind::Failed { .. } => &self.failed,
            OutcomeKind::Suppressed => &self.suppressed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn batch_done(&self) {
        self.batches.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            sent: self.sent.load(Ordering::Relaxed),
            deferred: self.deferred.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            suppressed: self.suppressed.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
        }
    }
}

/// A task this worker runs, and how to stop it.
struct Held {
    lease: Lease,
    stop: CancellationToken,
    lost: Arc<AtomicBool>,
}

type HeldTasks = Arc<Mutex<HashMap<Uuid, Held>>>;

fn lock(held: &HeldTasks) -> std::sync::MutexGuard<'_, HashMap<Uuid, Held>> {
    held.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The task processor.
pub struct Worker {
    config: WorkerConfig,
    shared: Arc<Shared>,
    wake: Arc<Notify>,
}

impl Worker {
    /// A worker over these services. `wake` is notified when work is created in this process
    /// (see [`WakingTasks`]), so the worker does not wait for its next check.
    pub fn new(config: WorkerConfig, services: Services, wake: Option<Arc<Notify>>) -> Worker {
        let stats = Arc::new(Stats::default());
        note_panic_locations();
        metrics::init_task_kinds(&[SUBMIT_CAMPAIGN, SEND_CAMPAIGN, SEND_BATCH]);
        Worker {
            shared: Arc::new(Shared::new(services, config.in_flight, stats)),
            config,
            wake: wake.unwrap_or_default(),
        }
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.shared.stats.clone()
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Claims and runs tasks until `shutdown` is cancelled, then stops claiming, lets running
    /// batches send what is in flight and hand the rest on (within `shutdown_grace`), and
    /// returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let config = &self.config;
        let tasks = self.shared.services.tasks.clone();
        let kinds = vec![
            SUBMIT_CAMPAIGN.to_string(),
            SEND_CAMPAIGN.to_string(),
            SEND_BATCH.to_string(),
        ];
        let lease = time::Duration::try_from(config.lease).unwrap_or(time::Duration::MINUTE);
        let held: HeldTasks = Arc::default();
        let heartbeat_stop = CancellationToken::new();
        // If this future is dropped (aborted) the heartbeat must end too: left running, it
        // would extend the leases of tasks nobody runs, and they would never be reclaimed.
        let _heartbeat_guard = heartbeat_stop.clone().drop_guard();
        let heartbeat = tokio::spawn(heartbeat(
            tasks.clone(),
            config.worker_id.clone(),
            held.clone(),
            config.lease,
            heartbeat_stop.clone(),
        ));
        let mut running: JoinSet<()> = JoinSet::new();
        let mut failures = 0u32;
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            let free = config.max_tasks.saturating_sub(running.len());
            let mut claimed = 0;
            if free > 0 {
                match tasks
                    .claim(&config.worker_id, &kinds, free as u32, lease)
                    .await
                {
                    Ok(found) => {
                        failures = 0;
                        claimed = found.len();
                        for task in found {
                            let stop = shutdown.child_token();
                            let lost = Arc::new(AtomicBool::new(false));
                            lock(&held).insert(
                                task.id,
                                Held {
                                    lease: task.lease(),
                                    stop: stop.clone(),
                                    lost: lost.clone(),
                                },
                            );
                            running.spawn(run_task(
                                self.shared.clone(),
                                config.worker_id.clone(),
                                task,
                                stop,
                                lost,
                                held.clone(),
                            ));
                        }
                    }
                    Err(err) => {
                        failures += 1;
                        tracing::warn!(error = %err, "cannot claim tasks; retrying");
                    }
                }
            }
            if free > 0 && claimed == free {
                continue;
            }
            let wait = if failures > 0 {
                (config.check_interval / 4).max(Duration::from_millis(200)) * failures.min(8)
            } else {
                config.check_interval
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                Some(_) = running.join_next(), if !running.is_empty() => {}
            }
        }
        if !running.is_empty() {
            tracing::info!(
                tasks = running.len(),
                grace = ?config.shutdown_grace,
                "stopping: finishing messages in flight and handing the rest on"
            );
        }
        let drained = tokio::time::timeout(config.shutdown_grace, async {
            while running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                tasks = running.len(),
                "shutdown grace ran out; these tasks return to the queue when their leases expire"
            );
            running.abort_all();
        }
        heartbeat_stop.cancel();
        let _ = heartbeat.await;
    }
}

thread_local! {
    /// Where the last panic on this thread happened, for the error that reports it.
    static PANIC_LOCATION: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Notes each panic's source location (then runs the hook there was, which logs it), so
/// the failed task's error says where it panicked, not only what.
fn note_panic_locations() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(location) = info.location() {
                PANIC_LOCATION.with(|last| *last.borrow_mut() = Some(location.to_string()));
            }
            previous(info);
        }));
    });
}

/// A caught panic as an error text: its message and, when known, where it happened. Called
/// on the thread that caught it, right after (the location is per thread).
pub(crate) fn describe_panic(panic: &(dyn std::any::Any + Send)) -> String {
    let what = message::panic_message(panic);
    match PANIC_LOCATION.with(|last| last.borrow_mut().take()) {
        Some(location) => format!("{what} (at {location})"),
        None => what,
    }
}

/// Takes a task out of the heartbeat's set when dropped: however the task ends (returns,
/// panics, or is aborted), its lease is no longer extended, so it cannot be held for ever.
struct Release {
    held: HeldTasks,
    task: Uuid,
}

impl Drop for Release {
    fn drop(&mut self) {
        lock(&self.held).remove(&self.task);
    }
}

async fn run_task(
    shared: Arc<Shared>,
    worker: String,
    task: Task,
    stop: CancellationToken,
    lost: Arc<AtomicBool>,
    held: HeldTasks,
) {
    let _release = Release {
        held,
        task: task.id,
    };
    let lease = task.lease();
    metrics::record_task_claimed(&task.kind);
    // A panic is a failed attempt like any other error: retried with backoff, then dead, and
    // this worker goes on with its other tasks.
    let outcome = AssertUnwindSafe(run(&shared, &task, &stop, &lost))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| Err(ProcessorError::Panicked(describe_panic(panic.as_ref()))));
    let tasks = &shared.services.tasks;
    let reported = match outcome {
        Ok(result) => {
            let completed = tasks.complete(&worker, lease, result).await;
            if completed.is_ok() {
                metrics::record_task_completed(&task.kind);
            }
            completed
        }
        Err(ProcessorError::Rejected(why)) => {
            // No retry can fix the payload: dead at once, the reason on the task.
            tracing::warn!(task = %task.id, kind = %task.kind, error = %why, "task refused; it is dead");
            metrics::record_task_failed(&task.kind);
            tasks.fail_permanently(&worker, lease, &why).await
        }
        Err(err) => {
            let error = err.to_string();
            metrics::record_task_failed(&task.kind);
            match tasks.fail(&worker, lease, &error).await {
                Ok(TaskStatus::Dead) => {
                    tracing::error!(task = %task.id, kind = %task.kind, %error, "task failed on its last attempt; it is dead");
                    gave_up(&shared, &task, &error).await;
                    Ok(())
                }
                Ok(_) => {
                    tracing::warn!(task = %task.id, kind = %task.kind, %error, "task failed; it is retried after backoff");
                    Ok(())
                }
                Err(err) => Err(err),
            }
        }
    };
    match reported {
        Ok(()) => {}
        Err(TaskError::LeaseLost { .. }) => {
            tracing::warn!(task = %task.id, "lease lost before the task finished; another worker has it")
        }
        Err(err) => {
            tracing::warn!(task = %task.id, error = %err, "cannot report the task's end; it runs again after its lease expires")
        }
    }
}

async fn run(
    shared: &Shared,
    task: &Task,
    stop: &CancellationToken,
    lost: &AtomicBool,
) -> Result<serde_json::Value, ProcessorError> {
    match task.kind.as_str() {
        SEND_CAMPAIGN => match serde_json::from_value::<SendCampaign>(task.payload.clone()) {
            Ok(job) => split(shared, job).await,
            Err(err) => Err(ProcessorError::Payload(err.to_string())),
        },
        SUBMIT_CAMPAIGN => crate::submit::submit(shared, task).await,
        SEND_BATCH => match serde_json::from_value::<SendBatch>(task.payload.clone()) {
            Ok(batch) => deliver(shared, batch, stop, lost).await,
            Err(err) => Err(ProcessorError::Payload(err.to_string())),
        },
        other => Err(ProcessorError::Payload(format!(
            "this worker does not run tasks of kind {other:?}"
        ))),
    }
}

/// A task that just went dead: a batch's unfinished recipients are failed with its error, so
/// its campaign finishes instead of staying `sending` for recipients no task will deliver.
async fn gave_up(shared: &Shared, task: &Task, error: &str) {
    if task.kind != SEND_BATCH {
        return;
    }
    let Ok(batch) = serde_json::from_value::<SendBatch>(task.payload.clone()) else {
        return;
    };
    match abandon(shared, batch, error).await {
        Ok(failed) => {
            tracing::warn!(campaign = %batch.campaign_id, task = %task.id, failed, "the dead batch's recipients are failed")
        }
        Err(err) => {
            tracing::error!(campaign = %batch.campaign_id, task = %task.id, error = %err, "cannot fail the dead batch's recipients")
        }
    }
}

/// Extends the leases of running tasks every third of the lease; a task whose lease is lost
/// is told to stop.
async fn heartbeat(
    tasks: Arc<dyn TaskRepository>,
    worker: String,
    held: HeldTasks,
    lease: Duration,
    stop: CancellationToken,
) {
    let every = (lease / 3).max(Duration::from_millis(100));
    let extend = time::Duration::try_from(lease).unwrap_or(time::Duration::MINUTE);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let leases: Vec<Lease> = lock(&held).values().map(|h| h.lease).collect();
        if leases.is_empty() {
            continue;
        }
        match tasks.heartbeat(&worker, &leases, extend).await {
            Ok(lost) => {
                let held = lock(&held);
                for lease in lost {
                    if let Some(task) = held.get(&lease.task_id) {
                        tracing::warn!(task = %lease.task_id, "lease lost; stopping the task");
                        task.lost.store(true, Ordering::SeqCst);
                        task.stop.cancel();
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "heartbeat failed; retrying"),
        }
    }
}

/// A task repository that wakes this process's workers when it creates work, so a campaign
/// sent through the API of `serve` starts at once instead of at the next check.
pub struct WakingTasks {
    inner: Arc<dyn TaskRepository>,
    wake: Arc<Notify>,
}

impl WakingTasks {
    pub fn new(inner: Arc<dyn TaskRepository>) -> WakingTasks {
        WakingTasks {
            inner,
            wake: Arc::new(Notify::new()),
        }
    }

    /// What the workers wait on.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }
}

#[async_trait]
impl TaskRepository for WakingTasks {
    async fn create(&self, task: NewTask) -> Result<Task, TaskError> {
        let created = self.inner.create(task).await?;
        self.wake.notify_waiters();
        self.wake.notify_one();
        Ok(created)
    }

    async fn create_many(&self, tasks: Vec<NewTask>) -> Result<Vec<Task>, TaskError> {
        let created = self.inner.create_many(tasks).await?;
        self.wake.notify_waiters();
        self.wake.notify_one();
        Ok(created)
    }

    async fn claim(
        &self,
        worker: &str,
        kinds: &[String],
        limit: u32,
        lease: time::Duration,
    ) -> Result<Vec<Task>, TaskError> {
        self.inner.claim(worker, kinds, limit, lease).await
    }

    async fn heartbeat(
        &self,
        worker: &str,
        leases: &[Lease],
        lease: time::Duration,
    ) -> Result<Vec<Lease>, TaskError> {
        self.inner.heartbeat(worker, leases, lease).await
    }

    async fn complete(
        &self,
        worker: &str,
        lease: Lease,
        result: serde_json::Value,
    ) -> Result<(), TaskError> {
        self.inner.complete(worker, lease, result).await
    }

    async fn complete_many(
        &self,
        worker: &str,
        done: &[(Lease, serde_json::Value)],
    ) -> Result<Vec<Lease>, TaskError> {
        self.inner.complete_many(worker, done).await
    }

    async fn fail(&self, worker: &str, lease: Lease, error: &str) -> Result<TaskStatus, TaskError> {
        self.inner.fail(worker, lease, error).await
    }

    async fn fail_permanently(
        &self,
        worker: &str,
        lease: Lease,
        error: &str,
    ) -> Result<(), TaskError> {
        self.inner.fail_permanently(worker, lease, error).await
    }

    async fn get(&self, id: Uuid) -> Result<Option<Task>, TaskError> {
        self.inner.get(id).await
    }

    async fn list(&self, filter: &TaskFilter) -> Result<Vec<Task>, TaskError> {
        self.inner.list(filter).await
    }

    async fn counts(&self) -> Result<BTreeMap<&'static str, i64>, TaskError> {
        self.inner.counts().await
    }

    async fn oldest_due(&self) -> Result<Option<time::OffsetDateTime>, TaskError> {
        self.inner.oldest_due().await
    }

    async fn requeue(&self, id: Uuid) -> Result<Task, TaskError> {
        let task = self.inner.requeue(id).await?;
        self.wake.notify_waiters();
        Ok(task)
    }
}
