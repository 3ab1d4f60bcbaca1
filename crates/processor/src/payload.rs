//! What the processor's tasks carry. The payloads are JSON in the task repository, so they
//! are plain serde types, versioned by their optional fields.

use campaign::{CampaignDocument, CampaignId, RecipientId};
use serde::{Deserialize, Serialize};
use store::RecipientRange;

/// Task kind: store a complete campaign (templates and recipients inline) and send it — the
/// task another service submits with nothing but the task repository's URL and token.
pub const SUBMIT_CAMPAIGN: &str = "submit_campaign";
/// The `submit_campaign` payload version this worker reads.
pub const SUBMIT_CAMPAIGN_VERSION: u32 = 1;
/// Most recipients one `submit_campaign` task may carry inline (about 10 MB of JSON for
/// ordinary rows, within the task repository service's 32 MiB body limit). More: submit
/// several tasks (each its own campaign), or create the campaign through the API and stream
/// its recipients with `POST /api/v1/campaigns/{id}/recipients`.
pub const SUBMIT_CAMPAIGN_MAX_RECIPIENTS: u64 = 50_000;

/// Payload of a `submit_campaign` task (published as docs/submit_campaign.schema.json).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "submit_campaign task payload",
    description = "Payload of a task of kind `submit_campaign` in the marketing-base task repository: a complete campaign with its templates and recipients inline (at most 50,000 recipients). The worker validates it as POST /api/v1/campaigns does, stores it under the task's id (once, however often the task runs) and queues it for delivery, or leaves it scheduled when it has scheduled_at. An invalid payload makes the task dead at once with the reason as its last_error; the task's result names the campaign: {\"campaign_id\": …, \"status\": …, \"recipients\": …}."
)]
pub struct SubmitCampaign {
    /// Payload version; this worker reads version 1.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// The campaign document (docs/campaign.schema.json), its recipients inline in
    /// `recipients`.
    pub campaign: CampaignDocument,
}

/// The published JSON Schema of the `submit_campaign` payload, generated from the type so the
/// two cannot drift apart; a test compares it with docs/submit_campaign.schema.json.
pub fn submit_campaign_schema_pretty() -> String {
    let schema = schemars::schema_for!(SubmitCampaign);
    let mut text =
        serde_json::to_string_pretty(&schema).expect("a generated schema is always valid JSON");
    text.push('\n');
    text
}

/// Task kind: split a campaign into batches.
pub const SEND_CAMPAIGN: &str = "send_campaign";
/// Task kind: deliver one id range of a campaign's recipients.
pub const SEND_BATCH: &str = "send_batch";

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
}

impl SendBatch {
    pub fn range(&self) -> RecipientRange {
        RecipientRange {
            first: self.first,
            last: self.last,
        }
    }

    /// One key per range and round, whatever run of the campaign created it: a split repeated
    /// after a crash, or a second split of the same campaign, finds the tasks that exist, so
    /// one range never has two task chains (which could send to a recipient twice).
    pub fn idempotency_key(&self) -> String {
        if self.pass == 0 {
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
