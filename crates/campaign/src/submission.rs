//! The `submit_campaign` task: a whole campaign, templates and recipients inline, as another
//! service submits it to the task repository with nothing but its URL and token. Defined here,
//! beside the document it carries, so that the task processor that runs it and the task
//! repository's OpenAPI document that describes it share one type.

use crate::document::CampaignDocument;
use serde::{Deserialize, Serialize};

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
#[derive(
    Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema, utoipa::ToSchema,
)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "submit_campaign task payload",
    description = "Payload of a task of kind `submit_campaign` in the marketing-base task repository: a complete campaign with its templates and recipients inline (at most 50,000 recipients). The worker validates it as POST /api/v1/campaigns does, stores it under the task's id (once, however often the task runs) and queues it for delivery, or leaves it scheduled when it has scheduled_at. An invalid payload makes the task dead at once with the reason as its last_error; the task's result names the campaign: {\"campaign_id\": …, \"status\": …, \"recipients\": …}."
)]
pub struct SubmitCampaign {
    /// Payload version; this worker reads version 1.
    #[schemars(range(min = 1, max = 1))]
    #[schema(minimum = 1, maximum = 1)]
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
