//! Campaigns and their recipients: creating and importing, reading, listing, and the status
//! changes of a campaign's life (schedule, queue, cancel).

use crate::{RecipientStream, StoreError, import::ImportReport};
use async_trait::async_trait;
use campaign::{
    CampaignDocument, CampaignId, CampaignStatus, DeliveryStatus, EmailAddress, Recipient,
    RecipientId,
};
use serde::Serialize;
use time::OffsetDateTime;

/// Campaigns and their recipients.
#[async_trait]
pub trait CampaignRepository: Send + Sync {
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

    /// The campaign's status alone (`None`: no such campaign): what the per-message check
    /// of a sending batch reads, without fetching and parsing the whole document.
    async fn campaign_status(&self, id: CampaignId) -> Result<Option<CampaignStatus>, StoreError>;

    async fn list_campaigns(&self, filter: &CampaignFilter) -> Result<CampaignPage, StoreError>;

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

    /// One recipient of a campaign, whatever its state.
    async fn get_recipient(
        &self,
        id: CampaignId,
        recipient_id: RecipientId,
    ) -> Result<Option<StoredRecipient>, StoreError>;

    /// A campaign's recipient with this address, whatever its state.
    async fn recipient_by_email(
        &self,
        id: CampaignId,
        email: &EmailAddress,
    ) -> Result<Option<StoredRecipient>, StoreError>;
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
    /// The A/B test's state once it has started (the API shows it in its own words).
    #[serde(skip)]
    pub ab: Option<crate::AbState>,
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

/// A recipient as the sender needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecipient {
    pub id: RecipientId,
    pub campaign_id: CampaignId,
    pub recipient: Recipient,
    pub status: DeliveryStatus,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// The A/B variant (index into the document's variants) this recipient gets.
    pub variant: Option<u8>,
}

/// The status a new campaign starts in: scheduled when the document names a time.
pub fn initial_status(document: &CampaignDocument) -> CampaignStatus {
    if document.scheduled_at.is_some() {
        CampaignStatus::Scheduled
    } else {
        CampaignStatus::Draft
    }
}
