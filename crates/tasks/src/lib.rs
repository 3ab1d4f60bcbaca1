//! The task repository: work items that workers claim with a lease, heart-beat, complete or
//! fail. A failed task is retried after exponential backoff with jitter until its attempts
//! are used up, then it is dead until an operator requeues it. A lease that runs out makes
//! the task claimable again (crash recovery), and completing or failing needs the lease
//! still held — the claim's attempt number is the fencing token, so a slow worker whose
//! lease was taken over cannot overwrite the new owner's work.
//!
//! **Clock.** Every timestamp (run_after, lease expiry, created/updated) comes from the
//! repository's injected [`Clock`] — the application's clock, not the database's. One clock
//! per repository keeps comparisons consistent, and injecting it lets tests move time instead
//! of sleeping. Processes sharing a database must keep their clocks in sync (NTP); leases
//! are tens of seconds, far above ordinary skew.

mod backend;
mod client;
pub mod http;
mod openapi;
pub mod postgres;
pub mod sqlite;

pub use client::{AdapterRetry, HttpTaskRepository};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Waiting for `run_after`, then for a worker.
    Pending,
    /// Claimed by a worker whose lease has not run out.
    Running,
    /// Done; `result` holds what the worker reported.
    Completed,
    /// Out of attempts; only an operator's requeue brings it back.
    Dead,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 4] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Dead => "dead",
        }
    }
}

impl std::fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TaskStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown task status {s:?} (pending, running, completed, dead)"))
    }
}

/// A task to create.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NewTask {
    /// What kind of work, e.g. `send_campaign`, `send_batch`, or `submit_campaign` (a whole
    /// campaign from another service).
    pub kind: String,
    /// The work's input, as its kind defines it; for `submit_campaign`, a `SubmitCampaign`
    /// (see the component schema of that name, and docs/submit_campaign.schema.json).
    pub payload: serde_json::Value,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    /// Attempts before the task is dead.
    #[serde(default = "default_max_attempts")]
    #[schema(format = Int64, minimum = 0, maximum = 4_294_967_295_u64)]
    pub max_attempts: u32,
    /// Not before this time (default: now).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub run_after: Option<OffsetDateTime>,
    /// Creating again with the same key returns the existing task.
    #[serde(default)]
    pub idempotency_key: Option<String>,
}

fn default_max_attempts() -> u32 {
    5
}

/// The longest lease a claim or heartbeat may ask for. Workers hold leases of tens of seconds
/// (TASK_LEASE_SECONDS) and renew them every third; a day is far beyond any of them.
pub const MAX_LEASE: Duration = Duration::hours(24);
/// The most tasks one claim may take, and one listing page may show.
pub const MAX_PAGE: u32 = 1000;
/// The most attempts a task may be given.
pub const MAX_TASK_ATTEMPTS: u32 = 1000;
/// The priorities a task may have (higher runs first; the service's own use 0 and 10).
pub const PRIORITIES: std::ops::RangeInclusive<i32> = -1000..=1000;

/// Checks a lease length a worker asked for: more than zero, at most [`MAX_LEASE`].
pub fn check_lease(lease: Duration) -> Result<(), TaskError> {
    if lease <= Duration::ZERO || lease > MAX_LEASE {
        return Err(TaskError::Invalid(format!(
            "lease_ms must be between 1 and {} (24 hours), got {}",
            MAX_LEASE.whole_milliseconds(),
            lease.whole_milliseconds()
        )));
    }
    Ok(())
}

/// Checks how many tasks a claim or listing asked for: 1 to [`MAX_PAGE`].
pub fn check_page(limit: u32) -> Result<(), TaskError> {
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(TaskError::Invalid(format!(
            "limit must be between 1 and {MAX_PAGE}, got {limit}"
        )));
    }
    Ok(())
}

impl NewTask {
    /// Checks what a caller chose: priority, attempts, and a `run_after` that the stores can
    /// hold and that lies at most 5 years after `now` (a time in the past means "now").
    pub fn check(&self, now: OffsetDateTime) -> Result<(), TaskError> {
        if !PRIORITIES.contains(&self.priority) {
            return Err(TaskError::Invalid(format!(
                "priority must be between {} and {}, got {}",
                PRIORITIES.start(),
                PRIORITIES.end(),
                self.priority
            )));
        }
        if !(1..=MAX_TASK_ATTEMPTS).contains(&self.max_attempts) {
            return Err(TaskError::Invalid(format!(
                "max_attempts must be between 1 and {MAX_TASK_ATTEMPTS}, got {}",
                self.max_attempts
            )));
        }
        if let Some(at) = self.run_after {
            let horizon = campaign::timestamp::SCHEDULE_HORIZON;
            campaign::timestamp::check_range(at)
                .and_then(|()| match now.checked_add(horizon) {
                    Some(latest) if at > latest => Err(format!(
                        "is more than 5 years ({} days) ahead",
                        horizon.whole_days()
                    )),
                    _ => Ok(()),
                })
                .map_err(|message| TaskError::Invalid(format!("run_after {at} {message}")))?;
        }
        Ok(())
    }

    pub fn new(kind: impl Into<String>, payload: serde_json::Value) -> NewTask {
        NewTask {
            kind: kind.into(),
            payload,
            priority: 0,
            max_attempts: default_max_attempts(),
            run_after: None,
            idempotency_key: None,
        }
    }
}

/// A stored task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Task {
    pub id: Uuid,
    pub kind: String,
    pub payload: serde_json::Value,
    pub priority: i32,
    pub status: TaskStatus,
    /// Claims so far; the current claim's number is its fencing token.
    #[schema(format = Int64, minimum = 0, maximum = 4_294_967_295_u64)]
    pub attempts: u32,
    #[schema(format = Int64, minimum = 0, maximum = 4_294_967_295_u64)]
    pub max_attempts: u32,
    #[serde(with = "time::serde::rfc3339")]
    pub run_after: OffsetDateTime,
    pub lease_owner: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub lease_expires_at: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    pub result: Option<serde_json::Value>,
    pub idempotency_key: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl std::fmt::Display for Task {
    /// One line for operators: id, kind, state, attempts, then what explains the state.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_else(|_| t.to_string())
        };
        write!(
            f,
            "{} {} {} attempts {}/{}",
            self.id, self.kind, self.status, self.attempts, self.max_attempts
        )?;
        match (self.status, &self.lease_owner, self.lease_expires_at) {
            (TaskStatus::Running, Some(owner), Some(expiry)) => {
                write!(f, " leased by {owner} until {}", at(expiry))?
            }
            (TaskStatus::Pending, _, _) => write!(f, " runs after {}", at(self.run_after))?,
            _ => {}
        }
        if let Some(error) = &self.last_error {
            write!(f, " last error: {error}")?;
        }
        Ok(())
    }
}

impl Task {
    /// The lease this worker holds on the task after claiming it.
    pub fn lease(&self) -> Lease {
        Lease {
            task_id: self.id,
            attempt: self.attempts,
        }
    }
}

/// Proof of a claim: the task and the claim's attempt number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Lease {
    pub task_id: Uuid,
    #[schema(format = Int64, minimum = 0, maximum = 4_294_967_295_u64)]
    pub attempt: u32,
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub kind: Option<String>,
    /// Only tasks whose idempotency key starts with this (e.g. `send_batch:CAMPAIGN_ID:`: one
    /// campaign's batches).
    pub key_prefix: Option<String>,
    /// Only tasks created after this one (the previous page's last id).
    pub after: Option<Uuid>,
    pub limit: u32,
}

/// Retry timing for failed tasks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// Each retry waits up to this fraction more or less, so retries of many tasks that
    /// failed together do not arrive together.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::seconds(1),
            max: Duration::hours(1),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The wait after the `attempt`-th failure: initial × 2^(attempt−1), capped, jittered.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(40) as i32;
        let base =
            (self.initial.as_seconds_f64() * 2f64.powi(exponent)).min(self.max.as_seconds_f64());
        // A uniform draw in [-1, 1) from a random UUID's bits: no extra dependency needed.
        let unit = (Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0;
        Duration::seconds_f64((base * (1.0 + self.jitter * unit)).max(0.0))
    }
}

/// Why a task operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// No task has that id.
    #[error("task {0} does not exist")]
    NotFound(Uuid),
    /// The caller's lease is gone (expired and taken over, or the task already finished):
    /// its result must not be recorded.
    #[error("task {task_id}: worker {worker} no longer holds lease {attempt}")]
    LeaseLost {
        task_id: Uuid,
        worker: String,
        attempt: u32,
    },
    /// Only dead tasks can be requeued.
    #[error("task {id} is {status}, only dead tasks can be requeued")]
    NotDead { id: Uuid, status: String },
    /// The database URL is not one we can use.
    #[error("TASK database URL {0:?} must start with sqlite:// or postgres://")]
    InvalidUrl(String),
    /// Applying the migrations failed.
    #[error("task repository migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The database failed or could not be reached.
    #[error("task repository database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored row could not be read back.
    #[error("stored task is unreadable: {0}")]
    Corrupt(String),
    /// A request that cannot succeed as written (a malformed body, an unknown status).
    #[error("invalid task request: {0}")]
    Invalid(String),
    /// The task repository service cannot be reached (down, wrong address, network).
    #[error(
        "task repository service at {url} is unreachable after {attempts} attempt(s): {reason}"
    )]
    Unreachable {
        url: String,
        attempts: u32,
        reason: String,
    },
    /// The service refused the bearer token (missing, or not the one it was started with).
    #[error(
        "task repository service at {url} refused the request (check TASK_REPO_TOKEN): {detail}"
    )]
    Unauthorized { url: String, detail: String },
    /// The service answered with an error that is none of the above.
    #[error("task repository service at {url} answered {status}: {detail}")]
    Service {
        url: String,
        status: u16,
        detail: String,
    },
}

/// The clock a repository stamps and compares times with.
pub trait Clock: Send + Sync {
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock tests move by hand.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<Mutex<OffsetDateTime>>);

impl ManualClock {
    pub fn new(start: OffsetDateTime) -> ManualClock {
        ManualClock(Arc::new(Mutex::new(start)))
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The repository every worker and the task-repository service go through.
#[async_trait]
pub trait TaskRepository: Send + Sync {
    /// Creates a task; with an idempotency key already used, returns the existing task.
    async fn create(&self, task: NewTask) -> Result<Task, TaskError>;

    /// Creates several tasks in one transaction (same idempotency rule per task).
    async fn create_many(&self, tasks: Vec<NewTask>) -> Result<Vec<Task>, TaskError>;

    /// Claims up to `limit` due tasks of these kinds (pending and due, or running with an
    /// expired lease), highest priority first, leasing them to `worker` for `lease`. A task
    /// whose lease ran out on its last attempt is made dead instead.
    async fn claim(
        &self,
        worker: &str,
        kinds: &[String],
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<Task>, TaskError>;

    /// Extends the leases `worker` still holds; returns those it no longer holds.
    async fn heartbeat(
        &self,
        worker: &str,
        leases: &[Lease],
        lease: Duration,
    ) -> Result<Vec<Lease>, TaskError>;

    /// Marks a task completed with its result — only while `worker` holds `lease`.
    async fn complete(
        &self,
        worker: &str,
        lease: Lease,
        result: serde_json::Value,
    ) -> Result<(), TaskError>;

    /// Completes many tasks `worker` claimed, in one round trip where the implementation
    /// can: a claim of 100 tasks then costs two commits, not 101. Tasks whose lease the
    /// worker no longer holds are left alone and returned (as `heartbeat` returns lost
    /// leases); the others are completed.
    async fn complete_many(
        &self,
        worker: &str,
        done: &[(Lease, serde_json::Value)],
    ) -> Result<Vec<Lease>, TaskError> {
        let mut refused = Vec::new();
        for (lease, result) in done {
            match self.complete(worker, *lease, result.clone()).await {
                Ok(()) => {}
                Err(TaskError::LeaseLost { .. } | TaskError::NotFound(_)) => refused.push(*lease),
                Err(err) => return Err(err),
            }
        }
        Ok(refused)
    }

    /// Records a failure — only while `worker` holds `lease`. The task is retried after
    /// backoff, or dead when its attempts are used up; returns which.
    async fn fail(&self, worker: &str, lease: Lease, error: &str) -> Result<TaskStatus, TaskError>;

    /// Records a failure that no retry can cure (a malformed or invalid payload) — only while
    /// `worker` holds `lease`. The task is dead at once, whatever attempts it has left, with
    /// `error` as its last error; an operator may still requeue it.
    async fn fail_permanently(
        &self,
        worker: &str,
        lease: Lease,
        error: &str,
    ) -> Result<(), TaskError>;

    async fn get(&self, id: Uuid) -> Result<Option<Task>, TaskError>;

    /// Tasks in creation order.
    async fn list(&self, filter: &TaskFilter) -> Result<Vec<Task>, TaskError>;

    /// Tasks per status (every status present).
    async fn counts(&self) -> Result<BTreeMap<&'static str, i64>, TaskError>;

    /// Since when the longest-waiting task has been due: the earliest `run_after` among
    /// pending tasks that are due now; `None` when no due task waits. The queue-age metric is
    /// now minus this.
    async fn oldest_due(&self) -> Result<Option<OffsetDateTime>, TaskError>;

    /// Gives a dead task a fresh set of attempts.
    async fn requeue(&self, id: Uuid) -> Result<Task, TaskError>;
}

/// Opens the repository at a database URL (`sqlite://…` or `postgres://…`) with the system
/// clock and default backoff, applying its migrations. A process that also opens the campaign
/// store on the same database opens a [`store::Database`] once and passes it to both.
pub async fn connect(url: &str) -> Result<Arc<dyn TaskRepository>, TaskError> {
    connect_with(url, Arc::new(SystemClock), Backoff::default()).await
}

/// As [`connect`], with a chosen clock and backoff (tests).
pub async fn connect_with(
    url: &str,
    clock: Arc<dyn Clock>,
    backoff: Backoff,
) -> Result<Arc<dyn TaskRepository>, TaskError> {
    if !(url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://"))
    {
        return Err(TaskError::InvalidUrl(url.to_string()));
    }
    let database = store::Database::open(url)
        .await
        .map_err(TaskError::from_opening)?;
    open_with(&database, clock, backoff).await
}

/// The repository on an open database (the pool the campaign store uses too), with the system
/// clock and default backoff, its migrations applied.
pub async fn open(database: &store::Database) -> Result<Arc<dyn TaskRepository>, TaskError> {
    open_with(database, Arc::new(SystemClock), Backoff::default()).await
}

/// As [`open`], with a chosen clock and backoff (tests).
pub async fn open_with(
    database: &store::Database,
    clock: Arc<dyn Clock>,
    backoff: Backoff,
) -> Result<Arc<dyn TaskRepository>, TaskError> {
    database
        .migrate(
            sqlx::migrate!("migrations/sqlite"),
            sqlx::migrate!("migrations/postgres"),
        )
        .await?;
    Ok(match database {
        store::Database::Sqlite(pool) => Arc::new(sqlite::SqliteTasks::on_migrated(
            pool.clone(),
            clock,
            backoff,
        )),
        store::Database::Postgres(pool) => Arc::new(postgres::PostgresTasks::on_migrated(
            pool.clone(),
            clock,
            backoff,
        )),
    })
}

impl TaskError {
    /// A failure to open the database, as the repository reports it: a URL sqlx cannot parse
    /// is a database configuration error, as when the repository opened its own pool.
    fn from_opening(err: store::StoreError) -> TaskError {
        match err {
            store::StoreError::InvalidUrl { reason, .. } => {
                TaskError::Database(sqlx::Error::Configuration(reason.into()))
            }
            store::StoreError::Unavailable(err) | store::StoreError::Database(err) => {
                TaskError::Database(err)
            }
            store::StoreError::Migration(err) => TaskError::Migration(err),
            other => TaskError::Corrupt(other.to_string()),
        }
    }
}
