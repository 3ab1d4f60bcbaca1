//! A/B tests: the test slice chosen, the rest held back, the once-only decision that
//! releases the rest to the winner, and the numbers per variant it is decided by.

use crate::StoreError;
use async_trait::async_trait;
use campaign::{CampaignId, CampaignStatus, RecipientId};
use serde::Serialize;
use time::OffsetDateTime;

/// A campaign's A/B test state.
#[async_trait]
pub trait AbTestRepository: Send + Sync {
    /// Every recipient id of the campaign, in id order: the list the test slice is drawn from.
    async fn recipient_ids(&self, id: CampaignId) -> Result<Vec<RecipientId>, StoreError>;

    /// Starts the test, once, in one transaction: the campaign enters phase `testing` with
    /// its decision due at `decide_at`, each recipient of `slice` gets its variant, and every
    /// other pending recipient is held back (no batch sends it) until the decision. Returns
    /// false, changing nothing, when the test had already started (a split run again).
    async fn start_ab_test(
        &self,
        id: CampaignId,
        slice: &[(RecipientId, u8)],
        decide_at: OffsetDateTime,
    ) -> Result<bool, StoreError>;

    /// Campaigns in one of `statuses` whose test is undecided and due by `now`, earliest
    /// first.
    async fn due_ab_decisions(
        &self,
        now: OffsetDateTime,
        statuses: &[CampaignStatus],
        limit: u32,
    ) -> Result<Vec<CampaignId>, StoreError>;

    /// Per variant: recipients, sent, hard bounces and engagement. `slice_only` counts the
    /// test slice alone (what the decision compares); otherwise the rest released to the
    /// winner counts with it (the report, which adds up to the campaign's totals).
    async fn variant_counts(
        &self,
        id: CampaignId,
        slice_only: bool,
    ) -> Result<Vec<VariantCounts>, StoreError>;

    /// The decision, exactly once: a conditional update from phase `testing` while the
    /// campaign is in one of `statuses`, and in the same transaction every held recipient
    /// gets the winner and is released to the winner's batches. Returns false (nothing
    /// changed) when the test was already decided, or the campaign is in another state.
    async fn decide_ab_test(
        &self,
        id: CampaignId,
        winner: u8,
        decision: &serde_json::Value,
        now: OffsetDateTime,
        statuses: &[CampaignStatus],
    ) -> Result<bool, StoreError>;

    /// Marks the rest's batches created (phase `decided` → `sending_winner`).
    async fn ab_rest_split(&self, id: CampaignId) -> Result<(), StoreError>;

    /// Sending or paused campaigns decided before `before` whose rest's batches may not exist: the ones a
    /// crash between the decision and its task may have left (repaired idempotently).
    async fn ab_decided_before(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<CampaignId>, StoreError>;
}

/// Where an A/B test is, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AbPhase {
    /// The slice sends; the rest is held back.
    Testing,
    /// The winner is chosen and the rest released; its batches are being created.
    Decided,
    /// The rest's batches exist.
    SendingWinner,
}

impl AbPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            AbPhase::Testing => "testing",
            AbPhase::Decided => "decided",
            AbPhase::SendingWinner => "sending_winner",
        }
    }

    pub fn parse(text: &str) -> Result<AbPhase, StoreError> {
        match text {
            "testing" => Ok(AbPhase::Testing),
            "decided" => Ok(AbPhase::Decided),
            "sending_winner" => Ok(AbPhase::SendingWinner),
            other => Err(StoreError::Corrupt(format!("unknown A/B phase {other:?}"))),
        }
    }
}

/// A campaign's A/B test, once it has started.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AbState {
    pub phase: AbPhase,
    #[serde(with = "time::serde::rfc3339::option")]
    pub decide_at: Option<OffsetDateTime>,
    /// The winning variant's index.
    pub winner: Option<u8>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub decided_at: Option<OffsetDateTime>,
    /// The rule and numbers the winner was chosen by.
    pub decision: Option<serde_json::Value>,
}

/// One variant's numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct VariantCounts {
    pub variant: u8,
    pub recipients: i64,
    /// Still to be delivered (pending or deferred).
    pub pending: i64,
    pub sent: i64,
    pub hard_bounces: i64,
    pub opens: crate::EventCount,
    pub clicks: crate::EventCount,
}
