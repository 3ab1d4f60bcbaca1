//! A campaign's status changes asked for by an operator (or, for `send`, the campaign
//! processor and a `submit_campaign` task): each is allowed by the transition table on
//! [`CampaignStatus`], which also words the refusal. Every action is idempotent: asking for
//! the state a campaign is already in succeeds and changes nothing.

use crate::{CampaignError, CampaignService};
use campaign::{CampaignAction, CampaignDocument, CampaignId, CampaignStatus, TransitionRefused};
use serde::{Deserialize, Serialize};
use store::{CampaignRecord, CampaignStore, StoreError};
use tasks::{NewTask, Task};
use time::OffsetDateTime;

/// Task kind: split a campaign into batches (run by the task processor).
pub const SEND_CAMPAIGN: &str = "send_campaign";

/// Payload of a `send_campaign` task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendCampaign {
    pub campaign_id: CampaignId,
    /// Which `send_campaign` task of the campaign this is: a campaign paused before its split
    /// and then resumed needs a second one (the first already ended).
    #[serde(default)]
    pub epoch: u32,
    /// The complete campaign definition with its templates, as the original design's task
    /// carries it; the worker reads the stored campaign, this is for operators and tooling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<CampaignDocument>,
    /// An A/B test's decision was made: split the rest of the list, released to the winner,
    /// into batches of its own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ab_rest: bool,
}

impl SendCampaign {
    pub fn idempotency_key(&self) -> String {
        if self.ab_rest {
            format!("{SEND_CAMPAIGN}:{}:ab-rest", self.campaign_id)
        } else {
            format!("{SEND_CAMPAIGN}:{}:{}", self.campaign_id, self.epoch)
        }
    }
}

/// What [`CampaignService::retry_failed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetryFailed {
    /// Failed recipients put back to pending by this call (0 when a previous call already did).
    pub requeued: u64,
}

fn refused(
    id: CampaignId,
    from: CampaignStatus,
    to: CampaignStatus,
    action: CampaignAction,
) -> CampaignError {
    CampaignError::Refused {
        id,
        refusal: TransitionRefused { from, to, action },
    }
}

impl CampaignService<'_> {
    /// Schedules (or reschedules) a draft or scheduled campaign for `at`, which the caller has
    /// checked against the schedule rule ([`campaign::timestamp::check_schedule`]).
    pub async fn schedule(&self, id: CampaignId, at: OffsetDateTime) -> Result<(), CampaignError> {
        let campaign = self.find(id).await?;
        check_ab_slice(&campaign)?;
        if !self.store.schedule_campaign(id, Some(at)).await? {
            let current = self.status(id).await?;
            return Err(refused(
                id,
                current,
                CampaignStatus::Scheduled,
                CampaignAction::Schedule,
            ));
        }
        tracing::info!(campaign = %id, from = %campaign.status, %at, "campaign scheduled");
        Ok(())
    }

    /// Removes the schedule: the campaign goes back to draft.
    pub async fn unschedule(&self, id: CampaignId) -> Result<(), CampaignError> {
        let campaign = self.find(id).await?;
        if !self.store.schedule_campaign(id, None).await? {
            return Err(refused(
                id,
                campaign.status,
                CampaignStatus::Draft,
                CampaignAction::Unschedule,
            ));
        }
        tracing::info!(campaign = %id, "campaign unscheduled");
        Ok(())
    }

    /// Queues a draft or scheduled campaign for sending: the campaign becomes `queued` and one
    /// `send_campaign` task is created for it. Idempotent: a campaign already queued or sending
    /// gets the task it already has.
    pub async fn send(&self, id: CampaignId) -> Result<(CampaignRecord, Task), CampaignError> {
        let to = CampaignStatus::Queued;
        let before = self.find(id).await?;
        if matches!(
            before.status,
            CampaignStatus::Draft | CampaignStatus::Scheduled
        ) {
            check_ab_slice(&before)?;
        }
        let moved = self
            .store
            .transition_campaign(id, &CampaignStatus::sources(to, CampaignAction::Send), to)
            .await?;
        let record = self.find(id).await?;
        if !moved
            && !matches!(
                record.status,
                CampaignStatus::Queued | CampaignStatus::Sending
            )
        {
            return Err(refused(id, record.status, to, CampaignAction::Send));
        }
        // The key makes this safe to repeat: the campaign has one send_campaign task per run.
        let task = self.create_send_task(&record, 0, "").await?;
        tracing::info!(campaign = %record.id, task = %task.id, "campaign queued for sending");
        Ok((record, task))
    }

    /// Pauses a queued or sending campaign.
    pub async fn pause(&self, id: CampaignId) -> Result<(), CampaignError> {
        self.transition(id, CampaignStatus::Paused, CampaignAction::Pause)
            .await
    }

    /// Cancels a campaign that has not ended; its recipients not yet sent become `cancelled`.
    pub async fn cancel(&self, id: CampaignId) -> Result<(), CampaignError> {
        self.transition(id, CampaignStatus::Cancelled, CampaignAction::Cancel)
            .await
    }

    /// Applies `action` moving the campaign to `to`; succeeds without a change when it already
    /// is there.
    async fn transition(
        &self,
        id: CampaignId,
        to: CampaignStatus,
        action: CampaignAction,
    ) -> Result<(), CampaignError> {
        let campaign = self.find(id).await?;
        if campaign.status == to {
            return Ok(());
        }
        let from = CampaignStatus::sources(to, action);
        let moved = if to == CampaignStatus::Cancelled {
            self.store.cancel_campaign(id, &from).await?
        } else {
            self.store.transition_campaign(id, &from, to).await?
        };
        if !moved {
            let current = self.status(id).await?;
            if current != to {
                return Err(refused(id, current, to, action));
            }
        }
        tracing::info!(campaign = %id, from = %campaign.status, to = %to, "campaign {action}");
        // A cancel ends the processing of a campaign that had been scheduled or sent; this
        // process made that final transition, so it counts it (a draft never started).
        if moved && to == CampaignStatus::Cancelled && campaign.status != CampaignStatus::Draft {
            record_campaign_ended(self.store, id).await?;
        }
        Ok(())
    }

    /// Resumes a paused campaign (a queued or sending one is left as it is). A campaign paused
    /// after it started goes back to `sending`, and its batches, which kept their task chains
    /// through the pause, continue with the recipients not yet sent. One paused before its
    /// split goes back to `queued` with a new `send_campaign` task (a new epoch: the first task
    /// already ended).
    /// True when this call resumed it, false when it already was queued or sending.
    pub async fn resume(&self, id: CampaignId) -> Result<bool, CampaignError> {
        let record = self.find(id).await?;
        if matches!(
            record.status,
            CampaignStatus::Queued | CampaignStatus::Sending
        ) {
            return Ok(false);
        }
        let resumed = self.resume_paused(&record).await?;
        let current = self.status(id).await?;
        if !resumed && !matches!(current, CampaignStatus::Queued | CampaignStatus::Sending) {
            let to = if record.started_at.is_some() {
                CampaignStatus::Sending
            } else {
                CampaignStatus::Queued
            };
            return Err(refused(id, current, to, CampaignAction::Resume));
        }
        tracing::info!(campaign = %id, from = %record.status, to = %current, "campaign resume");
        Ok(resumed)
    }

    /// Moves a paused campaign on; false when it was not paused.
    async fn resume_paused(&self, record: &CampaignRecord) -> Result<bool, CampaignError> {
        let id = record.id;
        let resume = |to| CampaignStatus::sources(to, CampaignAction::Resume);
        if record.started_at.is_some() {
            let to = CampaignStatus::Sending;
            return Ok(self.store.transition_campaign(id, &resume(to), to).await?);
        }
        let to = CampaignStatus::Queued;
        if !self.store.transition_campaign(id, &resume(to), to).await? {
            return Ok(false);
        }
        // Any epoch other than the first run's; the transition above let one caller through.
        let epoch = 1 + (uuid::Uuid::new_v4().as_u128() % u128::from(u32::MAX - 1)) as u32;
        self.create_send_task(record, epoch, "").await?;
        Ok(true)
    }

    /// Gives a finished campaign's failed recipients another try: those not suppressed go
    /// back to pending and the campaign is queued again through the same `send_campaign` task
    /// path as a first send, in a new send pass. Idempotent: while the retry is queued or
    /// sending, a repeated call requeues nothing and creates nothing.
    pub async fn retry_failed(&self, id: CampaignId) -> Result<RetryFailed, CampaignError> {
        let record = self.find(id).await?;
        let under_way = |status| matches!(status, CampaignStatus::Queued | CampaignStatus::Sending);
        if under_way(record.status) && record.send_pass > 0 {
            // A retry already under way: the call that started it did the work.
            return Ok(RetryFailed { requeued: 0 });
        }
        let Some(requeued) = self.store.requeue_failed(id).await? else {
            let status = self
                .store
                .campaign_status(id)
                .await?
                .unwrap_or(record.status);
            if under_way(status) {
                // Another caller requeued it between our two reads.
                return Ok(RetryFailed { requeued: 0 });
            }
            return Err(refused(
                id,
                status,
                CampaignStatus::Queued,
                CampaignAction::RetryFailed,
            ));
        };
        if requeued.recipients == 0 {
            return Err(CampaignError::NothingToRetry(id));
        }
        self.create_send_task(&record, requeued.send_pass, ":retry")
            .await?;
        tracing::info!(campaign = %id, recipients = requeued.recipients, pass = requeued.send_pass, "failed recipients queued again");
        Ok(RetryFailed {
            requeued: requeued.recipients,
        })
    }

    /// Creates the campaign's `send_campaign` task of run `epoch`, carrying its document,
    /// ahead of batch tasks (priority 10). Its idempotency key (with `key_suffix`) makes a
    /// repeated call return the task that exists.
    async fn create_send_task(
        &self,
        record: &CampaignRecord,
        epoch: u32,
        key_suffix: &str,
    ) -> Result<Task, CampaignError> {
        let payload = SendCampaign {
            campaign_id: record.id,
            epoch,
            document: Some(record.document.clone()),
            ab_rest: false,
        };
        self.create_split_task(&payload, key_suffix).await
    }

    /// Creates a `send_campaign` task with `payload`, ahead of batch tasks (priority 10),
    /// under its idempotency key (with `key_suffix`).
    pub(crate) async fn create_split_task(
        &self,
        payload: &SendCampaign,
        key_suffix: &str,
    ) -> Result<Task, CampaignError> {
        let mut task = NewTask::new(
            SEND_CAMPAIGN,
            serde_json::to_value(payload).map_err(|err| {
                CampaignError::Internal(format!("a send_campaign payload: {err}"))
            })?,
        );
        task.idempotency_key = Some(format!("{}{key_suffix}", payload.idempotency_key()));
        task.priority = 10;
        Ok(self.tasks.create(task).await?)
    }
}

/// An A/B test's slice must give every variant `min_per_variant` recipients and leave some
/// for the winner: checked when the recipients are known and the campaign is sent or
/// scheduled (422 naming `ab_test.test_fraction`).
fn check_ab_slice(record: &CampaignRecord) -> Result<(), CampaignError> {
    match record
        .document
        .ab_slice_problem(u64::try_from(record.recipient_count).unwrap_or(0))
    {
        Some(problem) => Err(CampaignError::invalid(vec![problem])),
        None => Ok(()),
    }
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
    let ended = record.completed_at.unwrap_or_else(OffsetDateTime::now_utc);
    let sending = record
        .started_at
        .map(|started| (ended - started).as_seconds_f64());
    metrics::record_campaign_processed(status, sending);
    Ok(())
}
