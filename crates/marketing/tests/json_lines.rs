//! `marketing send --recipients FILE.jsonl`: JSON Lines recipients delivered end to end into
//! the outbox, and a bad line refused by its number before anything is stored.

use std::path::Path;
use std::process::Command;

use support::{BINARY, example};

mod support;

/// `marketing send` in `dir` on its default SQLite file and outbox.
fn send(dir: &Path, recipients: &Path) -> std::process::Output {
    Command::new(BINARY)
        .current_dir(dir)
        .env_remove("DATABASE_URL")
        .env_remove("SMTP_URL")
        .env_remove("OUTBOX_DIR")
        .args(["send", &example("sample_campaign.json"), "--recipients"])
        .arg(recipients)
        .arg("--json")
        .output()
        .unwrap()
}

/// The sample recipients (a JSON array) rewritten one object per line.
fn sample_as_json_lines() -> (Vec<serde_json::Value>, String) {
    let sample: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(example("sample_recipients.json")).unwrap()).unwrap();
    let lines = sample
        .iter()
        .map(|recipient| format!("{recipient}\n"))
        .collect();
    (sample, lines)
}

#[test]
fn send_delivers_json_lines_recipients_to_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let (sample, lines) = sample_as_json_lines();
    let file = dir.path().join("recipients.jsonl");
    std::fs::write(&file, lines).unwrap();

    let output = send(dir.path(), &file);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["status"], "completed", "{summary}");
    assert_eq!(summary["recipients"], sample.len(), "{summary}");
    assert_eq!(summary["deliveries"]["sent"], sample.len(), "{summary}");

    let campaign = dir
        .path()
        .join("outbox")
        .join(summary["campaign_id"].as_str().expect("the campaign id"));
    let messages: Vec<String> = std::fs::read_dir(&campaign)
        .unwrap()
        .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
        .collect();
    assert_eq!(messages.len(), sample.len());
    // Every line's recipient got one message, greeted by the first name on that line.
    for recipient in &sample {
        let email = recipient["email"].as_str().unwrap();
        let first_name = recipient["first_name"].as_str().unwrap();
        let message = messages
            .iter()
            .find(|message| {
                message
                    .lines()
                    .any(|line| line.starts_with("To:") && line.contains(email))
            })
            .unwrap_or_else(|| panic!("no message to {email}"));
        // Quoted-printable soft line breaks undone; non-ASCII names are encoded in the message.
        let unfolded = message.replace("=\r\n", "").replace("=\n", "");
        if first_name.is_ascii() {
            assert!(unfolded.contains(first_name), "{email}: {message}");
        }
    }
}

#[test]
fn a_bad_json_line_is_named_and_nothing_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("recipients.ndjson");
    std::fs::write(
        &file,
        "{\"email\": \"ann@example.com\"}\n\n{\"email\": \"bob@example.com\", \"first_name\": }\n",
    )
    .unwrap();
    let output = send(dir.path(), &file);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("row 2 (line 3): malformed JSON at column"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("outbox").exists(),
        "nothing was sent: {stderr}"
    );
}
