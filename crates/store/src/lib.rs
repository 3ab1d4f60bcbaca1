//! Storage of campaigns, their recipients with per-recipient delivery state, events and
//! suppressions, behind one trait with a SQLite and a PostgreSQL implementation.
//!
//! Both backends run the same SQL (see `backend.rs`); the column types that differ (UUIDs,
//! timestamps) are bridged by the [`db_types`] newtypes, so behaviour cannot drift apart, and
//! one contract suite (tests/contract.rs) runs against both.

mod backend;
pub mod db_types;
mod import;
pub mod postgres;
pub mod sending_rates;
pub mod sqlite;

pub use import::{
    Duplicate, ImportReport, RecipientStream, UnrecognisedTimeZone, recipient_stream,
};

use async_trait::async_trait;
use campaign::{
    CampaignDocument, CampaignId, CampaignStatus, DeliveryStatus, EmailAddress, Recipient,
    RecipientId, RowError,
};
use serde::Serialize;
use std::collections::BTreeMap;
use std::collections::HashSet;
use std::sync::Arc;
use time::OffsetDateTime;

/// Rows with bad recipients listed in an error; the rest are only counted.
pub const MAX_REPORTED_ROW_ERRORS: usize = 100;

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL is not one we can use.
    #[error("DATABASE_URL {url:?} is not usable: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// The database could not be reached (down, wrong address, pool exhausted).
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// Applying the schema migrations failed.
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// No campaign has that id.
    #[error("campaign {0} does not exist")]
    CampaignNotFound(CampaignId),
    /// The campaign is in a state that does not allow the operation.
    #[error("campaign {id} is {status}: {action} is only possible while it is draft or scheduled")]
    WrongState {
        id: CampaignId,
        status: CampaignStatus,
        action: &'static str,
    },
    /// Some recipient rows are invalid; nothing of the import was stored.
    #[error("{total} recipient row(s) are invalid, nothing was imported; first: {}", .rows.first().map(ToString::to_string).unwrap_or_default())]
    InvalidRecipients { rows: Vec<RowError>, total: u64 },
    /// The recipient source failed for another reason (for example an unreadable file).
    #[error("reading recipients failed: {0}")]
    Source(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// A stored value could not be read back (corrupt or written by a newer version).
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match err {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(err),
            other => StoreError::Database(other),
        }
    }
}

/// A stored campaign.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CampaignRecord {
    #[schema(value_type = String, format = Uuid)]
    pub id: CampaignId,
    pub name: String,
    pub status: CampaignStatus,
    pub recipient_count: i64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub scheduled_at: Option<OffsetDateTime>,
    /// When it was queued for sending: by `send`, or by the campaign processor when
    /// `scheduled_at` came.
    #[serde(with = "time::serde::rfc3339::option")]
    pub queued_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub completed_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// The whole document as submitted, templates included (recipients live in their rows).
    pub document: CampaignDocument,
    /// 0 for the first send; each `retry-failed` starts the next pass (part of batch keys).
    #[serde(skip)]
    pub send_pass: u32,
}

/// The campaign processor starts a campaign within about a second of its `scheduled_at`; a
/// start later than this means no processor was running (or it was overloaded), and the
/// status says the campaign started late.
pub const LATE_START_AFTER: time::Duration = time::Duration::seconds(2);

impl CampaignRecord {
    /// Whether a scheduled campaign was queued more than [`LATE_START_AFTER`] after its time.
    pub fn started_late(&self) -> bool {
        self.start_delay()
            .is_some_and(|delay| delay > LATE_START_AFTER)
    }

    /// How late a scheduled campaign was queued after its time (zero when on time or sent
    /// early by hand); `None` until it is queued, or when it was never scheduled.
    pub fn start_delay(&self) -> Option<time::Duration> {
        let (scheduled, queued) = (self.scheduled_at?, self.queued_at?);
        Some((queued - scheduled).max(time::Duration::ZERO))
    }
}

/// A scheduled campaign the campaign processor moved to `queued` because its time came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueCampaign {
    pub id: CampaignId,
    pub scheduled_at: OffsetDateTime,
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

/// A page of campaigns, newest first, with the cursor for the next page.
#[derive(Debug, Clone, Serialize)]
pub struct CampaignPage {
    pub items: Vec<CampaignRecord>,
    pub next_cursor: Option<CampaignId>,
}

/// What to list.
#[derive(Debug, Clone, Default)]
pub struct CampaignFilter {
    pub status: Option<CampaignStatus>,
    /// Only campaigns older than this one (the previous page's `next_cursor`).
    pub before: Option<CampaignId>,
    pub limit: u32,
}

/// The store of campaigns and recipients. Object-safe, so the binary picks the backend from
/// DATABASE_URL at start.
#[async_trait]
pub trait CampaignStore: Send + Sync {
    /// "sqlite" or "postgres", for logs and metrics.
    fn backend(&self) -> &'static str;

    /// Checks the database answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stores a new campaign and its recipients in one transaction: either all of it is
    /// stored or, on any bad recipient row, nothing.
    async fn create_campaign(
        &self,
        document: &CampaignDocument,
        recipients: RecipientStream<'_>,
    ) -> Result<(CampaignRecord, ImportReport), StoreError>;

    /// As `create_campaign`, under a caller-chosen id (a `submit_campaign` task's id), and
    /// once: when a campaign with this id exists, nothing is stored and the existing campaign
    /// comes back without a report. A task run again after a crash therefore finds the
    /// campaign its first run stored, never a second one.
    async fn create_campaign_once(
        &self,
        id: CampaignId,
        document: &CampaignDocument,
        recipients: RecipientStream<'_>,
    ) -> Result<(CampaignRecord, Option<ImportReport>), StoreError>;

    /// Adds recipients to a draft or scheduled campaign, all or nothing. Addresses already
    /// present are reported as duplicates, not added twice.
    async fn import_recipients(
        &self,
        id: CampaignId,
        recipients: RecipientStream<'_>,
    ) -> Result<ImportReport, StoreError>;

    async fn get_campaign(&self, id: CampaignId) -> Result<Option<CampaignRecord>, StoreError>;

    async fn list_campaigns(&self, filter: &CampaignFilter) -> Result<CampaignPage, StoreError>;

    /// Recipients per delivery state, computed from the rows.
    async fn delivery_counts(&self, id: CampaignId) -> Result<DeliveryCounts, StoreError>;

    /// Moves a campaign to `to` only if it is in one of `from` (a conditional update, so two
    /// processes racing for the same transition cannot both win). Returns whether it moved.
    /// Entering `sending` stamps `started_at`; entering a final state stamps `completed_at`.
    async fn transition_campaign(
        &self,
        id: CampaignId,
        from: &[CampaignStatus],
        to: CampaignStatus,
    ) -> Result<bool, StoreError>;

    /// Sets or clears (`None`) a draft or scheduled campaign's send time; the status follows
    /// (`scheduled` with a time, `draft` without). Returns false when the campaign is in
    /// another state (or does not exist).
    async fn schedule_campaign(
        &self,
        id: CampaignId,
        at: Option<OffsetDateTime>,
    ) -> Result<bool, StoreError>;

    /// Moves up to `limit` scheduled campaigns whose `scheduled_at` is at or before `now` to
    /// `queued` (stamping `queued_at = now`), earliest first, and returns them. A conditional
    /// update: of any number of concurrent callers, exactly one gets each campaign.
    async fn queue_due_campaigns(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<DueCampaign>, StoreError>;

    /// The earliest `scheduled_at` of the campaigns still waiting in `scheduled`.
    async fn next_scheduled_at(&self) -> Result<Option<OffsetDateTime>, StoreError>;

    /// Campaigns still `queued` that were queued before `before`, oldest first: the ones a
    /// crash may have left without their `send_campaign` task.
    async fn queued_before(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<CampaignId>, StoreError>;

    /// Cancels a campaign that is in one of `from`, and marks its recipients that were not yet
    /// sent `cancelled`, in one transaction. Returns whether it was cancelled.
    async fn cancel_campaign(
        &self,
        id: CampaignId,
        from: &[CampaignStatus],
    ) -> Result<bool, StoreError>;

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
    async fn due_recipients(
        &self,
        id: CampaignId,
        range: RecipientRange,
        now: OffsetDateTime,
    ) -> Result<Vec<StoredRecipient>, StoreError>;

    /// Whether anyone in the range still needs sending: `None` when every recipient is final,
    /// else the earliest time one is due (a pending recipient is due at once: its time is
    /// the Unix epoch; a deferred one at its retry time).
    async fn next_due_in_range(
        &self,
        id: CampaignId,
        range: RecipientRange,
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

    /// One recipient of a campaign, whatever its state.
    async fn get_recipient(
        &self,
        id: CampaignId,
        recipient_id: RecipientId,
    ) -> Result<Option<StoredRecipient>, StoreError>;

    /// Records delivery outcomes in one transaction.
    async fn record_outcomes(&self, outcomes: &[DeliveryOutcome]) -> Result<(), StoreError>;

    /// Of these email keys, the ones on the suppression list.
    async fn suppressed_among(&self, email_keys: &[String]) -> Result<HashSet<String>, StoreError>;

    /// Puts an address on the suppression list (idempotent: the first reason is kept).
    async fn suppress(&self, email: &EmailAddress, reason: &str) -> Result<(), StoreError>;

    /// One page of the suppression list, ordered by address; `after` is the previous page's
    /// last email key.
    async fn list_suppressions(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Suppression>, StoreError>;

    /// Takes an address off the suppression list; false when it was not on it.
    async fn remove_suppression(&self, email: &EmailAddress) -> Result<bool, StoreError>;

    /// Appends tracking events (opens, clicks, unsubscribes, bounces, complaints) in one
    /// multi-row insert per chunk, inside one transaction: all of them or none.
    async fn record_tracking_events(&self, events: &[TrackingEvent]) -> Result<(), StoreError>;

    /// Tracking events in the order they were recorded, optionally of one campaign only;
    /// `after` is the previous page's last id, so a reader (webhooks, exports) can follow the
    /// table as it grows.
    async fn list_tracking_events(
        &self,
        campaign: Option<CampaignId>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<RecordedTrackingEvent>, StoreError>;

    /// A campaign's tracking events counted: per kind, per clicked link, and per hour.
    async fn engagement_counts(&self, id: CampaignId) -> Result<EngagementCounts, StoreError>;

    /// Records a bounce or complaint (see [`NewFeedbackEvent`]); when it is attributed to a
    /// campaign, also as a tracking event (`bounce_hard`, `bounce_soft`, `complaint`) for the
    /// campaign's analytics, in the same transaction.
    async fn record_feedback(&self, event: &NewFeedbackEvent) -> Result<(), StoreError>;

    /// Soft bounces recorded for this address (email key) at or after `since`, across all
    /// campaigns: what SOFT_BOUNCE_LIMIT is compared with.
    async fn soft_bounces_since(
        &self,
        email_key: &str,
        since: OffsetDateTime,
    ) -> Result<i64, StoreError>;

    /// Bounces and complaints of one campaign, oldest first.
    async fn campaign_feedback(&self, id: CampaignId) -> Result<Vec<FeedbackEvent>, StoreError>;

    /// A campaign's recipient with this address, whatever its state.
    async fn recipient_by_email(
        &self,
        id: CampaignId,
        email: &EmailAddress,
    ) -> Result<Option<StoredRecipient>, StoreError>;

    /// Gives a finished (`completed` or `failed`) campaign's failed recipients another try, in
    /// one transaction: those not on the suppression list go back to `pending` (attempts
    /// reset), and the campaign goes back to `queued` with its send pass incremented (so its
    /// new batch tasks get new keys) and `started_at`/`completed_at` cleared. Nothing changes
    /// when no failed recipient can be retried. `None` when the campaign is not finished.
    async fn requeue_failed(&self, id: CampaignId) -> Result<Option<Requeued>, StoreError>;

    /// Queues webhook event payloads (JSON text), one row per endpoint and payload.
    async fn enqueue_webhook_events(
        &self,
        endpoints: &[String],
        payloads: &[String],
    ) -> Result<(), StoreError>;

    /// Claims up to `limit` of an endpoint's queued events that are due at `now`, oldest first,
    /// by pushing their next attempt to `lease_until`: a second dispatcher sharing the
    /// database skips them, and a dispatcher that dies mid-send leaves them to be retried.
    async fn claim_webhook_events(
        &self,
        endpoint: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<QueuedWebhookEvent>, StoreError>;

    /// Removes delivered (or abandoned) events from the outbox.
    async fn delete_webhook_events(&self, ids: &[i64]) -> Result<(), StoreError>;

    /// Counts a failed attempt on these events and sets when they are tried next.
    async fn retry_webhook_events(
        &self,
        ids: &[i64],
        next_attempt_at: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// The earliest next attempt of an endpoint's queued events, `None` when none is queued.
    async fn next_webhook_attempt(
        &self,
        endpoint: &str,
    ) -> Result<Option<OffsetDateTime>, StoreError>;

    /// The stored secret called `name`; when there is none yet, `candidate` is stored and
    /// returned. Concurrent first calls agree on one value.
    async fn secret(&self, name: &str, candidate: &str) -> Result<String, StoreError>;

    /// Stores a new API key (its secret already hashed by the caller).
    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;

    /// The key with this public id, revoked or not.
    async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError>;

    /// Every key, newest first.
    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError>;

    /// Marks a key revoked; false when no such key exists. Revoking twice keeps the first time.
    async fn revoke_api_key(&self, id: &str) -> Result<bool, StoreError>;

    /// Reserves an idempotency key for a request with this fingerprint, or returns what an
    /// earlier request with the key left (records older than `expires_before` are forgotten).
    async fn reserve_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        expires_before: OffsetDateTime,
    ) -> Result<IdempotencyReservation, StoreError>;

    /// Stores the response of the request that reserved the key.
    async fn complete_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError>;

    /// Forgets a reservation whose request failed on our side, so it may be retried.
    async fn release_idempotency_key(&self, scope: &str, key: &str) -> Result<(), StoreError>;

    /// Records test messages of `campaign_id` to `addresses` on API key `api_key_id`'s quota,
    /// all of them or none: when they would take the key's test sends within any of `quota`'s
    /// windows (ending at `now`) past that window's limit, nothing is recorded and the answer
    /// says which window and when the sends fit. Callers sharing the database are serialised
    /// per key, so together they never exceed the quota.
    async fn reserve_test_sends(
        &self,
        api_key_id: &str,
        campaign_id: CampaignId,
        addresses: &[EmailAddress],
        now: OffsetDateTime,
        quota: &[QuotaWindow],
    ) -> Result<TestSendReservation, StoreError>;

    /// The test message recorded under this id (its unsubscribe token names it).
    async fn test_send(&self, id: i64) -> Result<Option<TestSendRecord>, StoreError>;
}

/// One window of a quota: at most `limit` uses within any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaWindow {
    pub window: time::Duration,
    pub limit: u32,
}

/// What [`CampaignStore::reserve_test_sends`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestSendReservation {
    /// Recorded: the ids of the test sends, one per address, in the order given.
    Reserved(Vec<i64>),
    /// Nothing recorded: `window` is full. `retry_at` is when enough of its sends have aged
    /// out for this many addresses, `None` when there are more addresses than its limit.
    OverQuota {
        window: QuotaWindow,
        retry_at: Option<OffsetDateTime>,
    },
}

/// A recorded test message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestSendRecord {
    pub id: i64,
    pub campaign_id: CampaignId,
    pub email: String,
    pub sent_at: OffsetDateTime,
}

/// Whether `wanted` more uses fit a quota, given the times of earlier uses (oldest first):
/// `None` when they fit every window, else the first full window and when they will fit.
pub fn quota_verdict(
    quota: &[QuotaWindow],
    earlier: &[OffsetDateTime],
    wanted: usize,
    now: OffsetDateTime,
) -> Option<(QuotaWindow, Option<OffsetDateTime>)> {
    quota.iter().find_map(|&window| {
        let limit = window.limit as usize;
        let start = now - window.window;
        let inside: Vec<OffsetDateTime> =
            earlier.iter().copied().filter(|&at| at > start).collect();
        if inside.len() + wanted <= limit {
            return None;
        }
        if wanted > limit {
            return Some((window, None));
        }
        // The oldest `inside.len() + wanted - limit` uses must leave the window first.
        let last_to_leave = inside[inside.len() + wanted - limit - 1];
        Some((window, Some(last_to_leave + window.window)))
    })
}

/// What a bounce or complaint means for its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackKind {
    /// A permanent failure (5.x.x): the address is suppressed at once.
    HardBounce,
    /// A temporary failure (4.x.x, delayed, or expired after retries).
    SoftBounce,
    /// A spam complaint (ARF): the address is suppressed at once.
    Complaint,
}

impl FeedbackKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackKind::HardBounce => "hard_bounce",
            FeedbackKind::SoftBounce => "soft_bounce",
            FeedbackKind::Complaint => "complaint",
        }
    }
}

impl std::str::FromStr for FeedbackKind {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        [
            FeedbackKind::HardBounce,
            FeedbackKind::SoftBounce,
            FeedbackKind::Complaint,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == value)
        .ok_or_else(|| format!("unknown feedback kind {value:?}"))
    }
}

/// A bounce or complaint to record. `campaign_id`/`recipient_id` are set when the report
/// could be attributed to a recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct NewFeedbackEvent {
    pub campaign_id: Option<CampaignId>,
    pub recipient_id: Option<RecipientId>,
    pub email: EmailAddress,
    pub kind: FeedbackKind,
    /// The enhanced status code of a bounce (`5.1.1`), or a complaint's feedback type.
    pub status: Option<String>,
    /// The RFC 3464 action of a bounce (`failed`, `delayed`).
    pub action: Option<String>,
    /// The remote server's diagnostic (`smtp; 550 5.1.1 …`).
    pub diagnostic: Option<String>,
    pub occurred_at: OffsetDateTime,
}

/// A recorded bounce or complaint.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FeedbackEvent {
    #[schema(value_type = Option<String>, format = Uuid)]
    pub campaign_id: Option<CampaignId>,
    pub recipient_id: Option<RecipientId>,
    pub email: String,
    pub kind: FeedbackKind,
    pub status: Option<String>,
    pub action: Option<String>,
    pub diagnostic: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
}

/// What [`CampaignStore::requeue_failed`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requeued {
    /// Failed recipients put back to pending (0: nothing changed).
    pub recipients: u64,
    /// The campaign's send pass after the call.
    pub send_pass: u32,
}

/// An outgoing webhook event waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedWebhookEvent {
    pub id: i64,
    /// The event's JSON text.
    pub payload: String,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// What reserving an idempotency key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdempotencyReservation {
    /// The key is new: this request goes ahead and must complete or release it.
    Reserved,
    /// An earlier request used the key; `response` is `None` while it is still running.
    Existing {
        fingerprint: String,
        response: Option<(u16, String)>,
    },
}

/// An admin API key as stored: its public id, a name for people, and the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    #[serde(skip)]
    pub secret_hash: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
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

/// A contiguous range of recipient ids within one campaign (both ends included). Ids of other
/// campaigns inside the range are excluded by the campaign filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct RecipientRange {
    pub first: RecipientId,
    pub last: RecipientId,
}

/// An address that is never sent to, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Suppression {
    pub email: String,
    /// e.g. `unsubscribed`, `hard_bounce`, `complaint`, `manual`.
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Suppression {
    /// The key the list is ordered by: pass it as `after` to continue past this entry.
    pub fn key(&self) -> String {
        EmailAddress::parse(&self.email)
            .map_or_else(|_| self.email.to_lowercase(), |email| email.key())
    }
}

/// What a tracking event says happened.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TrackingEventKind {
    /// The open pixel was fetched.
    Open,
    /// A tracked link was followed.
    Click,
    /// The recipient unsubscribed (one-click POST or the confirmation page).
    Unsubscribe,
    /// A permanent delivery failure reported after the message was accepted (5.x.x DSN).
    BounceHard,
    /// A temporary delivery failure reported after acceptance (4.x.x DSN, delayed).
    BounceSoft,
    /// A spam complaint (ARF feedback report).
    Complaint,
}

impl TrackingEventKind {
    pub const ALL: [TrackingEventKind; 6] = [
        TrackingEventKind::Open,
        TrackingEventKind::Click,
        TrackingEventKind::Unsubscribe,
        TrackingEventKind::BounceHard,
        TrackingEventKind::BounceSoft,
        TrackingEventKind::Complaint,
    ];

    /// The stored name (the `kind` column).
    pub fn as_str(self) -> &'static str {
        match self {
            TrackingEventKind::Open => "open",
            TrackingEventKind::Click => "click",
            TrackingEventKind::Unsubscribe => "unsubscribe",
            TrackingEventKind::BounceHard => "bounce_hard",
            TrackingEventKind::BounceSoft => "bounce_soft",
            TrackingEventKind::Complaint => "complaint",
        }
    }
}

impl std::fmt::Display for TrackingEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TrackingEventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TrackingEventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| format!("unknown tracking event kind {s:?}"))
    }
}

/// Something that happened to a campaign's message after it was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrackingEvent {
    pub campaign_id: CampaignId,
    /// `None` when the event is recorded aggregate-only (privacy setting).
    pub recipient_id: Option<RecipientId>,
    pub kind: TrackingEventKind,
    /// For clicks: the index of the link in the campaign's HTML template.
    pub link_index: Option<u16>,
    /// Free text: a bounce's diagnostic, a complaint's feedback type.
    pub detail: Option<String>,
    /// A keyed hash of the client's IP address; the address itself is never stored.
    pub ip_hash: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
}

/// Events of one kind: how many, and how many distinct recipients (events recorded
/// aggregate-only count in `total` but name no recipient).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EventCount {
    pub total: i64,
    pub unique: i64,
}

/// A campaign's tracking events counted, as the analytics report needs them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngagementCounts {
    pub by_kind: BTreeMap<TrackingEventKind, EventCount>,
    /// Clicks per link index.
    pub by_link: BTreeMap<u16, EventCount>,
    /// Events per hour (the hour's start) and kind.
    pub hourly: BTreeMap<OffsetDateTime, BTreeMap<TrackingEventKind, i64>>,
}

impl EngagementCounts {
    pub fn of(&self, kind: TrackingEventKind) -> EventCount {
        self.by_kind.get(&kind).copied().unwrap_or_default()
    }
}

/// A stored tracking event with its id (ids grow in insertion order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordedTrackingEvent {
    pub id: i64,
    #[serde(flatten)]
    pub event: TrackingEvent,
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
}

/// A recipient as the sender needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecipient {
    pub id: RecipientId,
    pub campaign_id: CampaignId,
    pub recipient: Recipient,
    pub status: DeliveryStatus,
    /// Delivery attempts made so far.
    pub attempts: u32,
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
    },
    /// A permanent failure or retries exhausted; `attempted` is false when nothing was sent
    /// (a render error), so the attempt count stays honest.
    Failed { error: String, attempted: bool },
    /// On the suppression list; never sent.
    Suppressed,
}

/// Opens the store named by a database URL (`sqlite://path` or `postgres://…`) and brings its
/// schema up to date.
pub async fn connect(url: &str) -> Result<Arc<dyn CampaignStore>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresStore::connect(url).await?))
    } else {
        Err(StoreError::InvalidUrl {
            url: url.to_string(),
            reason: "it must start with sqlite:// or postgres://".into(),
        })
    }
}

/// The status a new campaign starts in: scheduled when the document names a time.
pub fn initial_status(document: &CampaignDocument) -> CampaignStatus {
    if document.scheduled_at.is_some() {
        CampaignStatus::Scheduled
    } else {
        CampaignStatus::Draft
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_window_fills_and_says_when_it_has_room_again() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1000);
        let minute = QuotaWindow {
            window: time::Duration::minutes(1),
            limit: 3,
        };
        let day = QuotaWindow {
            window: time::Duration::days(1),
            limit: 5,
        };
        let ago = |seconds: i64| now - time::Duration::seconds(seconds);
        assert_eq!(quota_verdict(&[minute, day], &[], 3, now), None);
        assert_eq!(
            quota_verdict(&[minute, day], &[], 4, now),
            Some((minute, None))
        );
        // Two in the last minute: one more fits, two more wait for the older to leave.
        let earlier = [ago(50), ago(10)];
        assert_eq!(quota_verdict(&[minute, day], &earlier, 1, now), None);
        assert_eq!(
            quota_verdict(&[minute, day], &earlier, 2, now),
            Some((minute, Some(ago(50) + time::Duration::minutes(1))))
        );
        // Uses older than the minute count only for the day.
        let earlier = [ago(7200), ago(3600), ago(600), ago(120)];
        assert_eq!(quota_verdict(&[minute, day], &earlier, 1, now), None);
        assert_eq!(
            quota_verdict(&[minute, day], &earlier, 2, now),
            Some((day, Some(ago(7200) + time::Duration::days(1))))
        );
    }
}
