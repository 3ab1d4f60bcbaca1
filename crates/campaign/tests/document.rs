//! The campaign document as users write it: examples, validation messages, the published schema.

use campaign::{CampaignDocument, Limits, ValidationError};
use std::path::PathBuf;

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn sample() -> serde_json::Value {
    let text = std::fs::read_to_string(repo_file("examples/sample_campaign.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn problems_of(value: &serde_json::Value) -> Vec<String> {
    let bytes = serde_json::to_vec(value).unwrap();
    match CampaignDocument::from_json(&bytes, &Limits::default()) {
        Ok(_) => Vec::new(),
        Err(err) => err.problems().iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn the_sample_campaign_is_valid_and_keeps_its_templates() {
    let text = std::fs::read(repo_file("examples/sample_campaign.json")).unwrap();
    let document = CampaignDocument::from_json(&text, &Limits::default()).unwrap();
    assert_eq!(
        document.from.email.as_str(),
        "newsletter@riverside-books.example"
    );
    assert!(
        document
            .templates
            .html
            .as_deref()
            .unwrap()
            .contains("Staff picks")
    );
    assert_eq!(document.batch_size, 100);
}

#[test]
fn defaults_fill_what_a_minimal_document_leaves_out() {
    let minimal =
        br#"{"name":"n","from":{"email":"a@example.com"},"templates":{"subject":"s","text":"t"}}"#;
    let document = CampaignDocument::from_json(minimal, &Limits::default()).unwrap();
    assert_eq!(document.batch_size, 100);
    assert_eq!(document.retry.max_attempts, 5);
    assert!(document.tracking.opens && document.tracking.clicks);
    assert!(document.scheduled_at.is_none());
}

#[test]
fn unknown_fields_are_refused_with_their_path() {
    let mut doc = sample();
    doc["batchsize"] = 10.into();
    let problems = problems_of(&doc);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("unknown field `batchsize`"),
        "{problems:?}"
    );

    let mut doc = sample();
    doc["templates"]["subjct"] = "x".into();
    let problems = problems_of(&doc);
    assert!(
        problems[0].starts_with("templates.subjct: unknown field `subjct`"),
        "{problems:?}"
    );
}

#[test]
fn wrong_types_and_bad_addresses_name_the_field() {
    let mut doc = sample();
    doc["batch_size"] = "ten".into();
    assert!(problems_of(&doc)[0].starts_with("batch_size: invalid type"));

    let mut doc = sample();
    doc["from"]["email"] = "newsletter@".into();
    let problems = problems_of(&doc);
    assert!(
        problems[0].starts_with("from.email: invalid email address \"newsletter@\""),
        "{problems:?}"
    );

    let mut doc = sample();
    doc["recipients"] =
        serde_json::json!([{"email": "ok@example.com"}, {"email": "bad address@example.com"}]);
    let problems = problems_of(&doc);
    assert!(
        problems[0].starts_with("recipients[1]: invalid email address"),
        "{problems:?}"
    );
}

#[test]
fn header_injection_and_empty_templates_are_refused() {
    let mut doc = sample();
    doc["templates"]["subject"] = "Hello\r\nBcc: everyone@example.com".into();
    doc["from"]["name"] = "Riverside\nBooks".into();
    let problems = problems_of(&doc);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("templates.subject: must be one line")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("from.name: must be one line")),
        "{problems:?}"
    );

    let mut doc = sample();
    doc["templates"] = serde_json::json!({"subject": "s", "html": "  ", "text": ""});
    let problems = problems_of(&doc);
    assert_eq!(
        problems,
        vec!["templates: needs a non-empty `html` or `text` template (or both)"]
    );
}

/// `list_id` is a domain-like identifier, as a string or with a one-line description;
/// `feedback_id` is one short token; `unsubscribe_mailto` is an address. Each is checked
/// where it is written, naming the field.
#[test]
fn list_id_feedback_id_and_unsubscribe_mailto_are_checked() {
    let mut doc = sample();
    doc["list_id"] = "news.riverside.example".into();
    doc["feedback_id"] = "riverside_books-2026.v1".into();
    doc["unsubscribe_mailto"] = "leave@riverside.example".into();
    assert_eq!(problems_of(&doc), Vec::<String>::new());
    doc["list_id"] =
        serde_json::json!({"name": "Riverside Books news", "id": "news.riverside.example"});
    assert_eq!(problems_of(&doc), Vec::<String>::new());

    for (list_id, field) in [
        (serde_json::json!("riverside"), "list_id"),
        (serde_json::json!("news..riverside.example"), "list_id"),
        (serde_json::json!("news riverside.example"), "list_id"),
        (serde_json::json!("<news.riverside.example>"), "list_id"),
        (
            serde_json::json!({"id": "news.riverside.example\r\nBcc: x"}),
            "list_id.id",
        ),
        (
            serde_json::json!({"name": "Riverside\nBooks", "id": "news.riverside.example"}),
            "list_id.name",
        ),
    ] {
        let mut doc = sample();
        doc["list_id"] = list_id.clone();
        let problems = problems_of(&doc);
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with(&format!("{field}: must"))),
            "{list_id}: {problems:?}"
        );
    }
    let mut doc = sample();
    doc["list_id"] =
        serde_json::json!({"name": "Riverside", "id": "news.riverside.example", "extra": 1});
    let problems = problems_of(&doc);
    assert!(
        problems.iter().any(|p| p.starts_with("list_id")),
        "{problems:?}"
    );

    for feedback_id in ["", "a:b", "riverside books", &"x".repeat(65)] {
        let mut doc = sample();
        doc["feedback_id"] = feedback_id.into();
        let problems = problems_of(&doc);
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("feedback_id: must be 1 to 64")),
            "{feedback_id:?}: {problems:?}"
        );
    }
    let mut doc = sample();
    doc["unsubscribe_mailto"] = "not an address".into();
    let problems = problems_of(&doc);
    assert!(
        problems.iter().any(|p| p.starts_with("unsubscribe_mailto")),
        "{problems:?}"
    );
}

#[test]
fn batch_size_is_bounded_by_max_batch_size() {
    for (size, ok) in [(0, false), (1, true), (1000, true), (1001, false)] {
        let mut doc = sample();
        doc["batch_size"] = size.into();
        let problems = problems_of(&doc);
        assert_eq!(problems.is_empty(), ok, "batch_size {size}: {problems:?}");
        if !ok {
            assert!(
                problems[0].contains("MAX_BATCH_SIZE (1000)"),
                "{problems:?}"
            );
        }
    }
    let mut doc = sample();
    doc["batch_size"] = 50.into();
    let bytes = serde_json::to_vec(&doc).unwrap();
    let tight = Limits {
        max_batch_size: 20,
        ..Limits::default()
    };
    assert!(CampaignDocument::from_json(&bytes, &tight).is_err());
}

#[test]
fn malformed_json_reports_line_and_column() {
    let err =
        CampaignDocument::from_json(b"{\n  \"name\": \"x\",\n  \"from\": ", &Limits::default())
            .unwrap_err();
    match err {
        ValidationError::Malformed { line, .. } => assert_eq!(line, 3),
        other => panic!("expected malformed, got {other:?}"),
    }
    let mut trailing = serde_json::to_vec(&sample()).unwrap();
    trailing.extend_from_slice(b" trailing");
    let err = CampaignDocument::from_json(&trailing, &Limits::default()).unwrap_err();
    assert!(matches!(err, ValidationError::Malformed { .. }), "{err:?}");
}

#[test]
fn schedule_needs_an_offset() {
    let mut doc = sample();
    doc["scheduled_at"] = "2026-12-25T08:00:00+01:00".into();
    assert!(problems_of(&doc).is_empty());
    doc["scheduled_at"] = "2026-12-25T08:00:00".into();
    assert!(problems_of(&doc)[0].starts_with("scheduled_at:"));
}

/// docs/campaign.schema.json is generated from the types; regenerate it with
/// `UPDATE_SCHEMA=1 cargo test -p campaign --test document`.
#[test]
fn published_schema_matches_the_types() {
    let path = repo_file("docs/campaign.schema.json");
    let generated = campaign::schema::campaign_schema_pretty();
    if std::env::var_os("UPDATE_SCHEMA").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let published = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        published == generated,
        "docs/campaign.schema.json is out of date: run UPDATE_SCHEMA=1 cargo test -p campaign --test document"
    );
    let schema: serde_json::Value = serde_json::from_str(&published).unwrap();
    assert_eq!(
        schema["additionalProperties"], false,
        "unknown fields must be refused by the schema too"
    );
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(required, ["name", "from", "templates"]);
}

/// `max_rate` is a number of messages per second from 0.001 to 1,000,000 (fractions allowed);
/// anything else is refused naming the field, and a string is refused by type.
#[test]
fn max_rate_is_a_bounded_positive_rate() {
    for rate in [
        serde_json::json!(0.5),
        serde_json::json!(20),
        serde_json::json!(1_000_000),
    ] {
        let mut doc = sample();
        doc["max_rate"] = rate.clone();
        assert_eq!(problems_of(&doc), Vec::<String>::new(), "{rate}");
        let parsed = CampaignDocument::from_json(doc.to_string().as_bytes(), &Limits::default())
            .expect("valid");
        assert_eq!(parsed.max_rate, rate.as_f64());
    }
    for rate in [
        serde_json::json!(0),
        serde_json::json!(-5),
        serde_json::json!(0.0001),
        serde_json::json!(1e7),
    ] {
        let mut doc = sample();
        doc["max_rate"] = rate.clone();
        let problems = problems_of(&doc);
        assert!(
            problems.iter().any(|p| p.starts_with(
                "max_rate: must be a number of messages per second from 0.001 to 1000000"
            )),
            "{rate}: {problems:?}"
        );
    }
    let mut doc = sample();
    doc["max_rate"] = "fast".into();
    let problems = problems_of(&doc);
    assert!(
        problems.iter().any(|p| p.starts_with("max_rate")),
        "{problems:?}"
    );
}
