//! Shared fixtures for the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

use campaign::{CampaignDocument, CampaignId, Recipient, RecipientId};
use message::{BuildOptions, RecipientContext};
use serde_json::json;
use std::process::Command;
use time::macros::datetime;

pub const CAMPAIGN_ID: CampaignId =
    CampaignId::from_uuid(uuid::uuid!("01900000-0000-7000-8000-0000000000ab"));

pub fn document(value: serde_json::Value) -> CampaignDocument {
    serde_json::from_value(value).expect("test campaign document")
}

/// A campaign with all three templates, in the given undefined-variable mode.
pub fn campaign(subject: &str, html: &str, text: &str, mode: &str) -> CampaignDocument {
    document(json!({
        "name": "Test campaign",
        "from": { "email": "news@shop.example", "name": "Shop «Ünïcode» News" },
        "reply_to": { "email": "help@shop.example", "name": "Help, Desk" },
        "templates": { "subject": subject, "html": html, "text": text, "undefined_variables": mode },
        "metadata": { "issue": "2026-07" }
    }))
}

pub fn sample_campaign() -> CampaignDocument {
    let raw = include_str!("../../../../examples/sample_campaign.json");
    serde_json::from_str(raw).expect("examples/sample_campaign.json parses")
}

pub fn recipient(value: serde_json::Value) -> Recipient {
    serde_json::from_value(value).expect("test recipient")
}

pub fn context(recipient_id: i64) -> RecipientContext {
    RecipientContext {
        campaign_id: CAMPAIGN_ID,
        recipient_id: RecipientId::new(recipient_id),
        unsubscribe_url: format!("https://m.shop.example/u/TOKEN{recipient_id}"),
        unsubscribe_mailto: Some(format!(
            "mailto:unsubscribe@shop.example?subject=TOKEN{recipient_id}"
        )),
        tracking: Default::default(),
    }
}

pub fn options() -> BuildOptions {
    BuildOptions {
        envelope_from: None,
        date: datetime!(2026-07-01 09:30:00 UTC),
    }
}

/// True when a missing external tool must fail the test (CI) rather than skip it.
pub fn tools_required() -> bool {
    ["CI", "REQUIRE_DKIMPY"].iter().any(|name| {
        std::env::var(name)
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
            .unwrap_or(false)
    })
}

/// Checks that `python3` can import `modules`; `None` (after saying why) when it cannot and
/// the run does not require it. Panics under CI.
pub fn python_with(modules: &[&str]) -> Option<()> {
    let imports = modules.join(", ");
    let outcome = Command::new("python3")
        .args(["-c", &format!("import {imports}")])
        .output();
    let problem = match outcome {
        Ok(out) if out.status.success() => return Some(()),
        Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
        Err(err) => format!("python3 cannot be started: {err}"),
    };
    if tools_required() {
        panic!(
            "python3 with {imports} is required under CI (pip install dkimpy pynacl): {problem}"
        );
    }
    eprintln!("skipping: python3 with {imports} is not available: {problem}");
    None
}

/// Runs a Python script with the message on stdin; returns stdout, panicking on failure.
pub fn python(script: &str, stdin: &[u8], args: &[&str]) -> String {
    use std::io::Write;
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 starts");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write message to python");
    let out = child.wait_with_output().expect("python3 finishes");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}
