//! DKIM from configuration through the real binary: keys made by `marketing dkim keygen`,
//! `marketing send` to aiosmtpd with DKIM_DOMAIN/DKIM_SELECTOR/DKIM_PRIVATE_KEY, and every
//! received message verified by an independent implementation (Python's dkimpy, the public
//! key served through its `dnsfunc` hook instead of DNS). Bad key files refuse the start.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use testkit::smtp::Aiosmtpd;

const BINARY: &str = env!("CARGO_BIN_EXE_marketing");
const SECRET: &str = "dkim-test-secret-of-at-least-32-bytes!!";
const DOMAIN: &str = "shop.example";
const SELECTOR: &str = "sel2026";

/// Prints dkimpy's verdict for the message on stdin: "True" or "False".
const VERIFY: &str = r#"
import sys, dkim
record = sys.argv[1].encode()
name = sys.argv[2].encode()
def dnsfunc(query, timeout=5):
    assert query.rstrip(b".") == name, query
    return record
print(dkim.verify(sys.stdin.buffer.read(), dnsfunc=dnsfunc))
"#;

/// Whether python3 can verify DKIM; skips (or fails under CI / REQUIRE_DKIMPY) when not.
fn dkimpy_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import dkim, nacl"])
        .output()
        .is_ok_and(|out| out.status.success());
    let required = ["CI", "REQUIRE_DKIMPY"].iter().any(|name| {
        std::env::var(name)
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
    });
    assert!(
        ok || !required,
        "python3 with dkim and nacl is required (pip install dkimpy pynacl)"
    );
    if !ok {
        eprintln!("skipping: python3 with dkimpy and pynacl is not available");
    }
    ok
}

fn dkimpy_verifies(record: &str, message: &[u8]) -> bool {
    use std::io::Write;
    let mut child = Command::new("python3")
        .args([
            "-c",
            VERIFY,
            record,
            &format!("{SELECTOR}._domainkey.{DOMAIN}"),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 starts");
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    let verdict = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        verdict == "True" || verdict == "False",
        "dkimpy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    verdict == "True"
}

fn marketing(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BINARY)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TRACKING_SECRET", SECRET)
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("marketing runs")
}

/// `marketing dkim keygen`: the key file and the TXT value it says to publish.
fn keygen(dir: &Path, algorithm: &str) -> (PathBuf, String) {
    let key = dir.join(format!("{algorithm}.pem"));
    let out = marketing(
        dir,
        &[
            "dkim",
            "keygen",
            "--domain",
            DOMAIN,
            "--selector",
            SELECTOR,
            "--algorithm",
            algorithm,
            "--out",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).unwrap();
    let prefix = format!("{SELECTOR}._domainkey.{DOMAIN}. IN TXT \"");
    let record = line
        .trim()
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("a TXT record line: {line}"))
        .to_string();
    (key, record)
}

/// A campaign from `from`, with a non-ASCII subject long enough to be folded, and
/// non-ASCII display names.
fn write_campaign(dir: &Path, from: &str) -> (PathBuf, PathBuf) {
    let campaign = serde_json::json!({
        "name": "dkim",
        "from": {"email": from, "name": "Shop «Ünïcode» Naïve Bücher"},
        "templates": {
            "subject": "{{ first_name }}, 🎉 unsere Neuigkeiten — שלום — the long subject line that goes on and on past seventy-eight characters so that it must be folded",
            "text": "Hallo {{ first_name }}   with  spaces \t\nÜnïcode body line\nUnsubscribe: {{ unsubscribe_url }}\n"
        }
    });
    let recipients = serde_json::json!([
        {"email": "ann@mail.example", "first_name": "Änn"},
        {"email": "bob@mail.example", "first_name": "Bob"},
        {"email": "cy@mail.example", "first_name": "Çy"}
    ]);
    let campaign_path = dir.join("campaign.json");
    let recipients_path = dir.join("recipients.json");
    std::fs::write(&campaign_path, campaign.to_string()).unwrap();
    std::fs::write(&recipients_path, recipients.to_string()).unwrap();
    (campaign_path, recipients_path)
}

fn send(dir: &Path, sink: &Aiosmtpd, from: &str, key: &Path) -> Output {
    let (campaign, recipients) = write_campaign(dir, from);
    marketing(
        dir,
        &[
            "send",
            campaign.to_str().unwrap(),
            "--recipients",
            recipients.to_str().unwrap(),
            "--json",
        ],
        &[
            ("SMTP_URL", &sink.url()),
            ("DKIM_DOMAIN", DOMAIN),
            ("DKIM_SELECTOR", SELECTOR),
            ("DKIM_PRIVATE_KEY", key.to_str().unwrap()),
        ],
    )
}

/// Sends with a key made by keygen; every message arrives signed and verifies, and one
/// changed after signing does not.
fn every_message_verifies(algorithm: &str) {
    let Some(sink) = Aiosmtpd::start() else {
        return;
    };
    if !dkimpy_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (key, record) = keygen(dir.path(), algorithm);
    let out = send(dir.path(), &sink, &format!("news@{DOMAIN}"), &key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let messages = sink.messages();
    assert_eq!(messages.len(), 3);
    let expected_tag = format!("a={algorithm}-sha256");
    for message in &messages {
        let text = String::from_utf8_lossy(message);
        assert!(text.contains("DKIM-Signature:"), "{text}");
        assert!(text.contains(&expected_tag), "{text}");
        assert!(
            text.contains("\n\t") || text.contains("\n "),
            "a folded header: {text}"
        );
        assert!(dkimpy_verifies(&record, message), "dkimpy rejects: {text}");
    }
    // The same bytes with one word of the body changed: the body hash no longer matches.
    let text = String::from_utf8_lossy(&messages[0]).into_owned();
    assert!(text.contains("body line"));
    let altered = text.replacen("body line", "body lime", 1);
    assert!(!dkimpy_verifies(&record, altered.as_bytes()));
}

#[test]
fn send_signs_with_an_ed25519_key_from_keygen_and_dkimpy_verifies_every_message() {
    every_message_verifies("ed25519");
}

#[test]
fn send_signs_with_an_rsa_key_from_keygen_and_dkimpy_verifies_every_message() {
    every_message_verifies("rsa");
}

#[test]
fn a_from_domain_the_key_does_not_cover_is_sent_unsigned_with_a_warning() {
    let Some(sink) = Aiosmtpd::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = keygen(dir.path(), "ed25519");
    let out = send(dir.path(), &sink, "news@other.example", &key);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("DKIM signs messages From shop.example"),
        "{log}"
    );
    assert!(log.contains("not covered by DKIM_DOMAIN"), "{log}");
    let messages = sink.messages();
    assert_eq!(messages.len(), 3);
    for message in &messages {
        assert!(!String::from_utf8_lossy(message).contains("DKIM-Signature:"));
    }
}

/// A key that cannot be used stops `send` before anything is stored: exit code 2 and the
/// variable's name.
fn refused(dir: &Path, key: &Path, env: &[(&str, &str)], problem: &str) {
    let (campaign, recipients) = write_campaign(dir, &format!("news@{DOMAIN}"));
    let mut all = vec![
        ("SMTP_URL", "smtp://127.0.0.1:9?tls=none"),
        ("DKIM_DOMAIN", DOMAIN),
        ("DKIM_SELECTOR", SELECTOR),
        ("DKIM_PRIVATE_KEY", key.to_str().unwrap()),
    ];
    all.extend_from_slice(env);
    let out = marketing(
        dir,
        &[
            "send",
            campaign.to_str().unwrap(),
            "--recipients",
            recipients.to_str().unwrap(),
        ],
        &all,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("DKIM_"), "{stderr}");
    assert!(stderr.contains(problem), "{stderr}");
    assert!(!dir.join("marketing.db").exists(), "nothing was stored");
}

#[test]
fn unusable_keys_refuse_the_start_with_exit_code_2_naming_the_variable() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = keygen(dir.path(), "ed25519");

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o600)).unwrap();
    refused(dir.path(), &garbage, &[], "not an RSA or Ed25519 key");

    refused(
        dir.path(),
        &dir.path().join("missing.pem"),
        &[],
        "cannot read",
    );

    let shared = dir.path().join("shared.pem");
    std::fs::copy(&key, &shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o644)).unwrap();
    refused(
        dir.path(),
        &shared,
        &[],
        "readable by group or others (mode 0644)",
    );

    refused(
        dir.path(),
        &key,
        &[("DKIM_ALGORITHM", "rsa")],
        "DKIM_ALGORITHM is rsa",
    );
}

#[test]
fn keygen_writes_a_private_key_and_check_matches_its_record_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (ed25519, ed25519_record) = keygen(dir.path(), "ed25519");
    let (rsa, rsa_record) = keygen(dir.path(), "rsa");
    for key in [&ed25519, &rsa] {
        let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }
    assert!(ed25519_record.starts_with("v=DKIM1; k=ed25519; p="));
    assert!(rsa_record.starts_with("v=DKIM1; k=rsa; p="));
    let check = |key: &Path, txt: &str| {
        marketing(
            dir.path(),
            &["dkim", "check", "--txt", txt],
            &[
                ("DKIM_DOMAIN", DOMAIN),
                ("DKIM_SELECTOR", SELECTOR),
                ("DKIM_PRIVATE_KEY", key.to_str().unwrap()),
            ],
        )
    };
    let matching = check(&rsa, &rsa_record);
    assert_eq!(matching.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&matching.stdout).contains("matches"));
    let other = check(&rsa, &ed25519_record);
    assert_eq!(other.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&other.stdout).contains("does not match"));
    assert_eq!(check(&ed25519, &ed25519_record).status.code(), Some(0));
    // Another key of the same type.
    let second = dir.path().join("second");
    std::fs::create_dir(&second).unwrap();
    let (_, second_record) = keygen(&second, "ed25519");
    assert_eq!(check(&ed25519, &second_record).status.code(), Some(1));
    // keygen never replaces a key file.
    let again = marketing(
        dir.path(),
        &[
            "dkim",
            "keygen",
            "--domain",
            DOMAIN,
            "--selector",
            SELECTOR,
            "--out",
            rsa.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!again.status.success());
}
