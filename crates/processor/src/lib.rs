//! The task processor: the worker that turns a queued campaign into delivered mail.
//!
//! A campaign's path through it:
//! 1. [`enqueue_campaign`] moves a draft (or scheduled) campaign to `queued` and creates one
//!    `send_campaign` task that carries the campaign document.
//! 2. A [`Worker`] claims that task, moves the campaign to `sending` and splits its
//!    recipients into `send_batch` tasks of `batch_size` (capped by MAX_BATCH_SIZE). The split
//!    is stable and every batch has an idempotency key, so a split run twice (after a crash)
//!    creates nothing twice, and any number of workers share one campaign.
//! 3. A worker claims a batch, reads the recipients of its id range that are due, skips (and
//!    marks) suppressed addresses, renders and builds each message, hands it to the
//!    transport and records the outcome on the recipient row: sent, deferred (retried with
//!    the campaign's backoff in a follow-up batch task) or failed.
//! 4. When no recipient is left to deliver, the campaign becomes `completed` (or `failed`
//!    when nothing could be sent).
//!
//! **Duplicates.** A message counts as possibly delivered twice only when the server
//! accepted it and the worker died before the outcome was committed. Each message holds one
//! of the worker's `in_flight` permits from before it is sent until its outcome is committed,
//! so a crash leaves at most `in_flight` such messages — by default the number of SMTP
//! connections. A retried batch skips every recipient already recorded as sent.

mod batch;
mod payload;
mod recorder;
mod retry;
mod scheduler;
mod submit;
mod worker;

pub use payload::{
    SEND_BATCH, SEND_CAMPAIGN, SUBMIT_CAMPAIGN, SUBMIT_CAMPAIGN_MAX_RECIPIENTS,
    SUBMIT_CAMPAIGN_VERSION, SendBatch, SendCampaign, SubmitCampaign,
    submit_campaign_schema_pretty,
};
pub use recorder::Recorder;
pub use retry::outcome_of;
pub use scheduler::{
    CheckReport, EnqueuedCampaign, NoObserver, Scheduler, SchedulerConfig, SchedulerObserver,
    SchedulerWaker,
};
pub use worker::{Stats, StatsSnapshot, WakingTasks, Worker, WorkerConfig, default_worker_id};

use campaign::{CampaignId, CampaignStatus};
use std::sync::Arc;
use store::{CampaignRecord, CampaignStore, StoreError};
use tasks::{NewTask, Task, TaskError, TaskRepository};

/// Why the processor could not do something.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tasks(#[from] TaskError),
    /// The task's payload is not what its kind needs (a task created by hand, or by a newer
    /// version): retrying will not help.
    #[error("task payload is invalid: {0}")]
    Payload(String),
    /// A `submit_campaign` payload that can never be stored (malformed, another version, an
    /// invalid campaign): the task is dead at once, with this as its last error.
    #[error("{0}")]
    Rejected(String),
    /// The task's code panicked (a defect): the attempt fails like any other error.
    #[error("the task panicked: {0}")]
    Panicked(String),
    /// The campaign cannot be enqueued in its current state.
    #[error("campaign {id} is {status}: only a draft or scheduled campaign can be sent")]
    NotSendable {
        id: CampaignId,
        status: CampaignStatus,
    },
    #[error("campaign {0} does not exist")]
    CampaignNotFound(CampaignId),
    /// A stored time zone has no release time (the zone database changed since the import).
    #[error("cannot compute the local send time in {zone}: {source}")]
    LocalTime {
        zone: String,
        source: campaign::LocalTimeError,
    },
    /// `retry-failed` is not possible now.
    #[error("campaign {id} cannot retry its failed recipients: {reason}")]
    NotRetryable { id: CampaignId, reason: String },
}

/// What every worker shares: where campaigns and tasks are, how mail leaves, and how links
/// are signed.
#[derive(Clone)]
pub struct Services {
    pub store: Arc<dyn CampaignStore>,
    pub tasks: Arc<dyn TaskRepository>,
    pub transport: Arc<dyn delivery::Transport>,
    pub links: Arc<tracking::Links>,
    pub message_settings: message::MessageSettings,
    /// Signs every message when set.
    pub dkim: Option<Arc<message::DkimSigner>>,
    /// MAX_BATCH_SIZE: a campaign's batch_size is capped by it.
    pub max_batch_size: u32,
    /// Outgoing webhooks: `sent` and `failed` events once an outcome is committed.
    pub events: webhooks::EventSink,
    /// What "now" is for due recipients, retry times and recipient-local send times; the
    /// task repository's clock in a test that moves time by hand.
    pub clock: Arc<dyn tasks::Clock>,
}

/// Counts a campaign whose processing this process just ended (it completed, failed or was
/// cancelled): `campaigns_processed_total{status}` and, when it had started sending, the time
/// since then in `campaign_processing_seconds`. Called by whoever made the final transition,
/// once per campaign end, so the sum over every process is the deployment's total.
pub async fn record_campaign_ended(
    store: &dyn CampaignStore,
    id: CampaignId,
) -> Result<(), StoreError> {
    let Some(record) = store.get_campaign(id).await? else {
        return Ok(());
    };
    let status = match record.status {
        CampaignStatus::Completed => metrics::ProcessedStatus::Completed,
        CampaignStatus::Failed => metrics::ProcessedStatus::Failed,
        CampaignStatus::Cancelled => metrics::ProcessedStatus::Cancelled,
        _ => return Ok(()),
    };
    let ended = record
        .completed_at
        .unwrap_or_else(time::OffsetDateTime::now_utc);
    let sending = record
        .started_at
        .map(|started| (ended - started).as_seconds_f64());
    metrics::record_campaign_processed(status, sending);
    Ok(())
}

/// Resumes a paused campaign; returns false when it was not paused. A campaign paused after
/// it started goes back to `sending`, and its batches, which kept their task chains through the
/// pause, continue with the recipients not yet sent. One paused before its split goes back to
/// `queued` with a new `send_campaign` task (a new epoch: the first task already ended).
pub async fn resume_campaign(
    store: &dyn CampaignStore,
    tasks: &dyn TaskRepository,
    id: CampaignId,
) -> Result<bool, ProcessorError> {
    let record = store
        .get_campaign(id)
        .await?
        .ok_or(ProcessorError::CampaignNotFound(id))?;
    if record.started_at.is_some() {
        return Ok(store
            .transition_campaign(id, &[CampaignStatus::Paused], CampaignStatus::Sending)
            .await?);
    }
    if !store
        .transition_campaign(id, &[CampaignStatus::Paused], CampaignStatus::Queued)
        .await?
    {
        return Ok(false);
    }
    // Any epoch other than the first run's; the transition above let one caller through.
    let epoch = 1 + (uuid::Uuid::new_v4().as_u128() % u128::from(u32::MAX - 1)) as u32;
    create_send_task(tasks, &record, epoch, "").await?;
    Ok(true)
}

/// Queues a draft or scheduled campaign for sending: the campaign becomes `queued` and one
/// `send_campaign` task is created for it. Idempotent: a campaign already queued or sending
/// gets the task it already has.
pub async fn enqueue_campaign(
    store: &dyn CampaignStore,
    tasks: &dyn TaskRepository,
    id: CampaignId,
) -> Result<(CampaignRecord, Task), ProcessorError> {
    let moved = store
        .transition_campaign(
            id,
            &[CampaignStatus::Draft, CampaignStatus::Scheduled],
            CampaignStatus::Queued,
        )
        .await?;
    let record = store
        .get_campaign(id)
        .await?
        .ok_or(ProcessorError::CampaignNotFound(id))?;
    if !moved
        && !matches!(
            record.status,
            CampaignStatus::Queued | CampaignStatus::Sending
        )
    {
        return Err(ProcessorError::NotSendable {
            id,
            status: record.status,
        });
    }
    // The key makes this safe to repeat: the campaign has one send_campaign task per run.
    let task = create_send_task(tasks, &record, 0, "").await?;
    Ok((record, task))
}

/// Creates the campaign's `send_campaign` task of run `epoch`, carrying its document, ahead of
/// batch tasks (priority 10). Its idempotency key (with `key_suffix`) makes a repeated call
/// return the task that exists.
async fn create_send_task(
    tasks: &dyn TaskRepository,
    record: &CampaignRecord,
    epoch: u32,
    key_suffix: &str,
) -> Result<Task, ProcessorError> {
    let payload = SendCampaign {
        campaign_id: record.id,
        epoch,
        document: Some(record.document.clone()),
    };
    let mut task = NewTask::new(
        SEND_CAMPAIGN,
        serde_json::to_value(&payload).map_err(|err| ProcessorError::Payload(err.to_string()))?,
    );
    task.idempotency_key = Some(format!("{}{key_suffix}", payload.idempotency_key()));
    task.priority = 10;
    Ok(tasks.create(task).await?)
}

/// What [`retry_failed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RetryFailed {
    /// Failed recipients put back to pending by this call (0 when a previous call already did).
    pub requeued: u64,
}

/// Gives a finished campaign's failed recipients another try: those not suppressed go back to
/// pending and the campaign is queued again through the same `send_campaign` task path as a
/// first send, in a new send pass. Idempotent: while the retry is queued or sending, a repeated
/// call requeues nothing and creates nothing. `NotSendable` when the campaign is in another
/// state, or finished with no failed recipient that may be retried.
pub async fn retry_failed(
    store: &dyn CampaignStore,
    tasks: &dyn TaskRepository,
    id: CampaignId,
) -> Result<RetryFailed, ProcessorError> {
    let record = store
        .get_campaign(id)
        .await?
        .ok_or(ProcessorError::CampaignNotFound(id))?;
    if matches!(
        record.status,
        CampaignStatus::Queued | CampaignStatus::Sending
    ) && record.send_pass > 0
    {
        // A retry already under way: the call that started it did the work.
        return Ok(RetryFailed { requeued: 0 });
    }
    let Some(requeued) = store.requeue_failed(id).await? else {
        let status = store
            .get_campaign(id)
            .await?
            .map_or(record.status, |now| now.status);
        if matches!(status, CampaignStatus::Queued | CampaignStatus::Sending) {
            // Another caller requeued it between our two reads.
            return Ok(RetryFailed { requeued: 0 });
        }
        return Err(ProcessorError::NotRetryable {
            id,
            reason: format!(
                "it is {status}; only a completed or failed campaign can retry its failed recipients"
            ),
        });
    };
    if requeued.recipients == 0 {
        return Err(ProcessorError::NotRetryable {
            id,
            reason: "it has no failed recipient that may be retried (suppressed addresses are never retried)".into(),
        });
    }
    create_send_task(tasks, &record, requeued.send_pass, ":retry").await?;
    tracing::info!(campaign = %id, recipients = requeued.recipients, pass = requeued.send_pass, "failed recipients queued again");
    Ok(RetryFailed {
        requeued: requeued.recipients,
    })
}
