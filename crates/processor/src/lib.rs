//! The task processor: the worker that turns a queued campaign into delivered mail.
//!
//! A campaign's path through it:
//! 1. The campaign service ([`service::CampaignService::send`]) moves a draft (or scheduled)
//!    campaign to `queued` and creates one `send_campaign` task that carries the campaign
//!    document.
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
//! so a crash leaves at most `in_flight` such messages (MAX_IN_FLIGHT, by default four per
//! SMTP connection). A retried batch skips every recipient already recorded as sent.

mod batch;
mod payload;
mod recorder;
mod retry;
mod scheduler;
mod status_gate;
mod submit;
mod worker;

pub use payload::{
    SEND_BATCH, SEND_CAMPAIGN, SUBMIT_CAMPAIGN, SUBMIT_CAMPAIGN_MAX_RECIPIENTS,
    SUBMIT_CAMPAIGN_VERSION, SendBatch, SendCampaign, SubmitCampaign,
    submit_campaign_schema_pretty,
};
pub use recorder::Recorder;
pub use retry::outcome_of;
pub use scheduler::{CheckReport, EnqueuedCampaign, Scheduler, SchedulerConfig, SchedulerWaker};
pub use worker::{Stats, StatsSnapshot, WakingTasks, Worker, WorkerConfig, default_worker_id};

use campaign::CampaignId;
use service::{CampaignError, CampaignService};
use std::sync::Arc;
use store::{CampaignRecord, CampaignStore, StoreError};
use tasks::{Task, TaskError, TaskRepository};

// The batch that records a campaign's last outcome counts its end as the API's cancel does.
use service::record_campaign_ended;

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
    /// The campaign service refused or failed (queuing a campaign, storing a submitted one).
    #[error(transparent)]
    Campaign(#[from] CampaignError),
    /// A stored time zone has no release time (the zone database changed since the import).
    #[error("cannot compute the local send time in {zone}: {source}")]
    LocalTime {
        zone: String,
        source: campaign::LocalTimeError,
    },
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

/// Queues a campaign through the campaign service, as `POST …/send` does: what the campaign
/// processor does with a due campaign, and a `submit_campaign` task with the one it stored.
pub(crate) async fn enqueue_campaign(
    store: &dyn CampaignStore,
    tasks: &dyn TaskRepository,
    id: CampaignId,
) -> Result<(CampaignRecord, Task), ProcessorError> {
    Ok(CampaignService::new(store, tasks).send(id).await?)
}
