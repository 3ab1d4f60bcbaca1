//! The OpenAPI document as client generators read it: every operation has a unique,
//! descriptive operationId (generators name methods after it), a one-line summary and a tag
//! the document declares (generators group methods by tag).

use serde_json::Value;
use std::collections::BTreeSet;

fn document() -> Value {
    serde_json::to_value(api::openapi_document()).expect("the document serialises")
}

#[test]
fn every_operation_has_a_unique_id_a_summary_and_a_declared_tag() {
    let document = document();
    let declared: BTreeSet<&str> = document["tags"]
        .as_array()
        .expect("the document declares its tags")
        .iter()
        .map(|tag| tag["name"].as_str().expect("a tag has a name"))
        .collect();
    let mut ids = BTreeSet::new();
    let mut used_tags = BTreeSet::new();
    for (path, operations) in document["paths"].as_object().expect("paths") {
        for (method, operation) in operations.as_object().expect("operations") {
            let name = format!("{} {path}", method.to_uppercase());
            let id = operation["operationId"].as_str().unwrap_or_default();
            assert!(
                id.contains('_') || id == "unsubscribe",
                "{name}: operationId {id:?} says neither action nor object"
            );
            assert!(
                ids.insert(id.to_string()),
                "{name}: operationId {id} is not unique"
            );
            let summary = operation["summary"].as_str().unwrap_or_default();
            assert!(
                !summary.is_empty() && !summary.contains('\n') && summary.len() <= 80,
                "{name}: summary {summary:?} is not one short line"
            );
            let tags = operation["tags"].as_array().expect("tags");
            assert_eq!(tags.len(), 1, "{name} has one tag");
            let tag = tags[0].as_str().expect("tag name");
            assert!(declared.contains(tag), "{name}: tag {tag} is not declared");
            used_tags.insert(tag.to_string());
        }
    }
    assert_eq!(
        used_tags,
        [
            "analytics",
            "bounces",
            "campaigns",
            "control",
            "recipients",
            "suppressions",
            "tracking"
        ]
        .map(String::from)
        .into(),
        "every declared group has routes"
    );
    for id in [
        "list_campaigns",
        "create_campaign",
        "add_recipients",
        "send_campaign",
        "get_campaign_status",
        "list_suppressions",
    ] {
        assert!(ids.contains(id), "{id} is an operation");
    }
}
