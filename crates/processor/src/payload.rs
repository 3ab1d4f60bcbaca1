//! What the processor's tasks carry. The payloads are JSON in the task repository, so they
//! are plain serde types, versioned by their optional fields.

use campaign::{CampaignId, RecipientId};
use serde::{Deserialize, Serialize};
use store::{RecipientRange, SendGroup};

pub use campaign::submission::{
    SUBMIT_CAMPAIGN, SUBMIT_CAMPAIGN_MAX_RECIPIENTS, SUBMIT_CAMPAIGN_VERSION, SubmitCampaign,
    submit_campaign_schema_pretty,
};

pub use service::{SEND_CAMPAIGN, SendCampaign};

/// Task kind: deliver one id range of a campaign's recipients.
pub const SEND_BATCH: &str = "send_batch";

/// Payload of a `send_batch` task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendBatch {
    pub campaign_id: CampaignId,
    pub first: RecipientId,
    pub last: RecipientId,
    /// 0 for the batch the split created; each follow-up (recipients deferred, or released at
    /// shutdown) counts one more.
    #[serde(default)]
    pub round: u32,
    /// The campaign's send pass that split it: 0 for the first send, then one more per
    /// `retry-failed`, whose batches must not find the first pass's finished tasks.
    #[serde(default)]
    pub pass: u32,
    /// A batch of the rest of an A/B test's list, released to the winner: it sends only
    /// those recipients, beside the range's own chain (which sends only the test slice).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ab_rest: bool,
}

impl SendBatch {
    pub fn range(&self) -> RecipientRange {
        RecipientRange {
            first: self.first,
            last: self.last,
        }
    }

    /// Which of the range's recipients this batch sends.
    pub fn group(&self) -> SendGroup {
        if self.ab_rest {
            SendGroup::AbRest
        } else {
            SendGroup::Campaign
        }
    }

    /// One key per range and round, whatever run of the campaign created it: a split repeated
    /// after a crash, or a second split of the same campaign, finds the tasks that exist, so
    /// one range never has two task chains (which could send to a recipient twice).
    pub fn idempotency_key(&self) -> String {
        if self.ab_rest {
            format!(
                "{SEND_BATCH}:{}:{}:{}:ab-rest",
                self.campaign_id, self.first, self.round
            )
        } else if self.pass == 0 {
            format!(
                "{SEND_BATCH}:{}:{}:{}",
                self.campaign_id, self.first, self.round
            )
        } else {
            format!(
                "{SEND_BATCH}:{}:{}:{}:pass{}",
                self.campaign_id, self.first, self.round, self.pass
            )
        }
    }

    /// The batch that continues this one's range.
    pub fn follow_up(&self) -> SendBatch {
        SendBatch {
            round: self.round.saturating_add(1),
            ..*self
        }
    }
}
