//! Each recipient's delivery: the batches a campaign is split into, who is due, the outcomes
//! recorded, the time-zone holds of a local send time, and the end of a campaign.

use crate::{StoreError, StoredRecipient};
use async_trait::async_trait;
use campaign::{CampaignId, CampaignStatus, DeliveryStatus, RecipientId};
use serde::Serialize;
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// Per-recipient delivery state.
#[async_trait]
pub trait DeliveryRepository: Send + Sync {
    /// Recipients per delivery state, computed from the rows.
    async fn delivery_counts(&self, id: CampaignId) -> Result<DeliveryCounts, StoreError>;

    /// One page of a campaign's recipients with their delivery outcome, in id order,
    /// optionally only those in one state; `after` is the previous page's last id.
    async fn list_deliveries(
        &self,
        id: CampaignId,
        status: Option<DeliveryStatus>,
        after: Option<RecipientId>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError>;

    /// Ends a sending campaign whose recipients are all final: `failed` when nothing could be
    /// sent (and something failed), `completed` otherwise. Returns the new status, or `None`
    /// when the campaign is not sending or still has recipients to deliver.
    async fn finish_if_done(&self, id: CampaignId) -> Result<Option<CampaignStatus>, StoreError>;

    /// Splits all the campaign's recipients, whatever their state, into id ranges of at most
    /// `batch_size` recipients each, in id order. Recipients are fixed once a campaign leaves
    /// draft, so the answer never changes: a split that is run again after a crash names the
    /// same batches (and so the same idempotency keys) even when some were already sent.
    async fn batch_ranges(
        &self,
        id: CampaignId,
        batch_size: u32,
    ) -> Result<Vec<RecipientRange>, StoreError>;

    /// The recipients of a range that are due: pending, or deferred with their retry time
    /// reached. Sent, failed, suppressed and cancelled recipients are never returned, which
    /// is what makes a retried batch skip everyone already delivered.
    /// Only recipients of `group` count: an A/B test's held recipients are never due, and
    /// those released to the winner are its batches' alone.
    async fn due_recipients(
        &self,
        id: CampaignId,
        range: RecipientRange,
        group: SendGroup,
        now: OffsetDateTime,
    ) -> Result<Vec<StoredRecipient>, StoreError>;

    /// Whether anyone in the range still needs sending: `None` when every recipient is final,
    /// else the earliest time one is due (a pending recipient is due at once: its time is
    /// the Unix epoch; a deferred one at its retry time).
    /// Only recipients of `group` count (held ones never do).
    async fn next_due_in_range(
        &self,
        id: CampaignId,
        range: RecipientRange,
        group: SendGroup,
    ) -> Result<Option<OffsetDateTime>, StoreError>;

    /// With a local send time: the time zones of the campaign's pending recipients that have
    /// no release time yet, each with its number of recipients.
    async fn unreleased_time_zones(&self, id: CampaignId)
    -> Result<Vec<(String, i64)>, StoreError>;

    /// Holds the campaign's pending recipients in `zone` that have no release time yet until
    /// `release_at` (they are not due before it); returns how many. Recipients already held
    /// keep their time, so a split repeated after a crash changes nothing.
    async fn hold_time_zone(
        &self,
        id: CampaignId,
        zone: &str,
        release_at: OffsetDateTime,
    ) -> Result<u64, StoreError>;

    /// Per time zone, the campaign's recipients still waiting (pending or deferred) and the
    /// earliest time one of them is due: what a campaign's status shows while a local send
    /// time releases it zone by zone.
    async fn time_zone_releases(&self, id: CampaignId) -> Result<Vec<ZoneRelease>, StoreError>;

    /// Per sending rate, the campaign's recipients deferred to wait for it and until when:
    /// what a campaign's status shows while a rate limit holds it back. Empty when no
    /// deferred recipient waits on a rate.
    async fn rate_waits(&self, id: CampaignId) -> Result<Vec<RateWait>, StoreError>;

    /// Records delivery outcomes in one transaction.
    async fn record_outcomes(&self, outcomes: &[DeliveryOutcome]) -> Result<(), StoreError>;

    /// Gives a finished (`completed` or `failed`) campaign's failed recipients another try, in
    /// one transaction: those not on the suppression list go back to `pending` (attempts
    /// reset), and the campaign goes back to `queued` with its send pass incremented (so its
    /// new batch tasks get new keys) and `started_at`/`completed_at` cleared. Nothing changes
    /// when no failed recipient can be retried. `None` when the campaign is not finished.
    async fn requeue_failed(&self, id: CampaignId) -> Result<Option<Requeued>, StoreError>;
}

/// Recipients per delivery state. Every state is present, so the numbers always add up to
/// the campaign's recipient count.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(value_type = std::collections::BTreeMap<String, i64>, example = json!({"pending": 0, "sent": 48, "deferred": 0, "failed": 1, "suppressed": 1, "cancelled": 0}))]
pub struct DeliveryCounts(pub BTreeMap<&'static str, i64>);

impl DeliveryCounts {
    pub fn from_rows(rows: impl IntoIterator<Item = (DeliveryStatus, i64)>) -> DeliveryCounts {
        let mut counts: BTreeMap<&'static str, i64> = DeliveryStatus::ALL
            .iter()
            .map(|s| (s.as_str(), 0))
            .collect();
        for (status, count) in rows {
            *counts.entry(status.as_str()).or_default() += count;
        }
        DeliveryCounts(counts)
    }

    pub fn get(&self, status: DeliveryStatus) -> i64 {
        self.0.get(status.as_str()).copied().unwrap_or(0)
    }

    pub fn total(&self) -> i64 {
        self.0.values().sum()
    }
}

/// What [`DeliveryRepository::requeue_failed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requeued {
    /// Failed recipients put back to pending (0: nothing changed).
    pub recipients: u64,
    /// The campaign's send pass after the call.
    pub send_pass: u32,
}

/// Recipients of one time zone still to be delivered, and when the first of them is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ZoneRelease {
    /// IANA time zone name.
    pub zone: String,
    /// Recipients pending or deferred.
    pub waiting: i64,
    /// The earliest time one of them is due (in the past once it has come); absent when one
    /// has no time at all (not held yet, so due as soon as a batch runs).
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub due_at: Option<OffsetDateTime>,
}

/// Recipients of a campaign deferred to wait for one sending rate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RateWait {
    /// The rate they wait for: `group NAME` (a domain group of RATE_LIMITS_FILE), `domain
    /// NAME` (a domain at the file's default rate), `the global limit` (SMTP_RATE_LIMIT) or
    /// `the campaign's max_rate`.
    pub destination: String,
    /// Recipients deferred for it.
    pub waiting: i64,
    /// When the first of them is due again.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub next_at: OffsetDateTime,
    /// When the last of them is due again: the wait ends then, at the rate in force.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub until: OffsetDateTime,
}

/// Which recipients a batch sends: each range of an A/B test has up to two task chains, the
/// campaign's and, after the decision, the winner's, over disjoint recipients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SendGroup {
    /// Every recipient of a campaign without a test; the test slice of one with a test.
    #[default]
    Campaign,
    /// The rest of an A/B test's list, released to the winner by the decision.
    AbRest,
}

impl SendGroup {
    /// The recipients' `ab_hold` value of the group (1, held back, is nobody's).
    pub fn hold(self) -> i32 {
        match self {
            SendGroup::Campaign => 0,
            SendGroup::AbRest => 2,
        }
    }
}

/// A contiguous range of recipient ids within one campaign (both ends included). Ids of other
/// campaigns inside the range are excluded by the campaign filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RecipientRange {
    pub first: RecipientId,
    pub last: RecipientId,
}

/// One recipient's delivery, as operators see it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct DeliveryRecord {
    pub recipient_id: RecipientId,
    pub email: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    /// The SMTP server's reply to the accepted message.
    pub smtp_reply: Option<String>,
    /// Why the last attempt failed or was deferred.
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_attempt_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub sent_at: Option<OffsetDateTime>,
    /// With an A/B test: the index (in the document's `variants`) of the variant this
    /// recipient was sent or will be sent; absent while held back for the winner.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<u8>,
}

/// What happened to one recipient's message.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryOutcome {
    pub recipient_id: RecipientId,
    pub result: OutcomeKind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OutcomeKind {
    /// Accepted by the server; its reply is kept.
    Sent { reply: String },
    /// A temporary failure; retried at `retry_at`.
    Deferred {
        error: String,
        retry_at: OffsetDateTime,
        /// The sending rate that had no slot for it (`group google`, `the global limit`…):
        /// nothing was sent, so the deferral is not one of the recipient's delivery attempts.
        /// `None`: the server answered with a temporary failure, which is one.
        rate_wait: Option<String>,
    },
    /// A permanent failure or retries exhausted; `attempted` is false when nothing was sent
    /// (a render error), so the attempt count stays honest.
    Failed { error: String, attempted: bool },
    /// On the suppression list; never sent.
    Suppressed,
}
