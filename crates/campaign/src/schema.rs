//! The published JSON Schema of the campaign document (docs/campaign.schema.json).

use crate::document::CampaignDocument;

/// The schema, generated from the Rust types so the two cannot drift apart; a test compares
/// it with the published file.
pub fn campaign_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(CampaignDocument))
        .expect("a generated schema is always valid JSON")
}

/// The schema as it is written to docs/campaign.schema.json.
pub fn campaign_schema_pretty() -> String {
    let mut text = serde_json::to_string_pretty(&campaign_schema())
        .expect("a generated schema is always valid JSON");
    text.push('\n');
    text
}
