//! docs/submit_campaign.schema.json is generated from the payload type; regenerate it with
//! `UPDATE_SCHEMA=1 cargo test -p processor --test schema`.

use std::path::PathBuf;

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

#[test]
fn published_submit_campaign_schema_matches_the_payload_type() {
    let path = repo_file("docs/submit_campaign.schema.json");
    let generated = processor::submit_campaign_schema_pretty();
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let published = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        published == generated,
        "docs/submit_campaign.schema.json is out of date: run UPDATE_SCHEMA=1 cargo test -p processor --test schema"
    );
    let schema: serde_json::Value = serde_json::from_str(&published).unwrap();
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(
        schema["required"],
        serde_json::json!(["version", "campaign"])
    );
    assert_eq!(schema["properties"]["version"]["maximum"], 1);
}

/// A payload as the schema describes it is what the worker reads.
#[test]
fn the_documented_example_payload_is_read() {
    let campaign: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("examples/sample_campaign.json")).unwrap(),
    )
    .unwrap();
    let payload = serde_json::json!({"version": 1, "campaign": campaign});
    let read: processor::SubmitCampaign = serde_json::from_value(payload).unwrap();
    assert_eq!(read.version, processor::SUBMIT_CAMPAIGN_VERSION);
}
