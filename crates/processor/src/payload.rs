//! What the processor's tasks carry. The payloads are JSON in the task repository, so they
//! are plain serde types, versioned by their optional fields.

use campaign::{CampaignDocument, CampaignId, RecipientId};
use serde::{Deserialize, Serialize};
use store::RecipientRange;

/// Task kind: split a campaign into batches.
pub const SEND_CAMPAIGN: &str = "send_campaign";
/// Task kind: deliver one id range of a campaign's recipients.
pub const SEND_BATCH: &str = "send_batch";

/// Payload of a `send_campaign` task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendCampaign {
    pub campaign_id: CampaignId,
    /// Which sending run of the campaign this is (a resumed campaign is split again in a new
    /// epoch, so its batch tasks get fresh keys).
    #[serde(default)]
    pub epoch: u32,
    /// The complete campaign definition with its templates, as the original design's task
    /// carries it; the worker reads the stored campaign, this is for operators and tooling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<CampaignDocument>,
}

impl SendCampaign {
    pub fn idempotency_key(&self) -> String {
        format!("{SEND_CAMPAIGN}:{}:{}", self.campaign_id, self.epoch)
    }
}

/// Payload of a `send_batch` task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendBatch {
    pub campaign_id: CampaignId,
    #[serde(default)]
    pub epoch: u32,
    pub first: RecipientId,
    pub last: RecipientId,
    /// 0 for the batch the split created; each follow-up (recipients deferred, or released at
    /// shutdown) counts one more.
    #[serde(default)]
    pub round: u32,
}

impl SendBatch {
    pub fn range(&self) -> RecipientRange {
        RecipientRange {
            first: self.first,
            last: self.last,
        }
    }

    /// One key per range and round: the split and the follow-ups can be repeated after a
    /// crash without creating a second task for the same work.
    pub fn idempotency_key(&self) -> String {
        format!(
            "{SEND_BATCH}:{}:{}:{}:{}",
            self.campaign_id, self.epoch, self.first, self.round
        )
    }

    /// The batch that continues this one's range.
    pub fn follow_up(&self) -> SendBatch {
        SendBatch {
            round: self.round + 1,
            ..*self
        }
    }
}
