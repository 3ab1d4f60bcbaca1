//! DKIM signatures verified by an independent implementation: Python's dkimpy, with the
//! public key served through its `dnsfunc` hook instead of DNS.

mod common;

use common::*;
use message::{CompiledCampaign, DkimSigner, MessageSettings, OutgoingMessage};
use serde_json::json;

const RSA_PKCS8: &str = include_str!("fixtures/dkim-test-rsa.pem");
const RSA_PKCS1: &str = include_str!("fixtures/dkim-test-rsa-pkcs1.pem");
const ED25519: &str = include_str!("fixtures/dkim-test-ed25519.pem");

/// Prints dkimpy's verdict: "True" or "False".
const VERIFY: &str = r#"
import sys, dkim
record = sys.argv[1].encode()
def dnsfunc(name, timeout=5):
    assert name in (b"sel2026._domainkey.shop.example.", b"sel2026._domainkey.shop.example"), name
    return record
print(dkim.verify(sys.stdin.buffer.read(), dnsfunc=dnsfunc))
"#;

fn signed(signer: &DkimSigner, first_name: &str) -> OutgoingMessage {
    signed_from(signer, first_name, "Shop «Ünïcode» News")
}

fn signed_from(signer: &DkimSigner, first_name: &str, from_name: &str) -> OutgoingMessage {
    let mut doc = campaign(
        "{{ first_name }}, 🎉 news — שלום",
        "<p>Hello {{ first_name }}</p>\n<a href=\"{{ unsubscribe_url }}\">Unsubscribe</a>\n",
        "Hello {{ first_name }}   with  spaces \t\nUnsubscribe: {{ unsubscribe_url }}\n",
        "strict",
    );
    doc.from.name = Some(from_name.to_string());
    let compiled = CompiledCampaign::compile(&doc, &MessageSettings::default()).unwrap();
    let r = recipient(json!({"email": "ann@mail.example", "first_name": first_name}));
    compiled
        .message(&r, &context(11), &options(), Some(signer))
        .unwrap()
}

fn dkimpy_verifies(signer: &DkimSigner, message: &[u8]) -> bool {
    let record = signer.dns_record().unwrap();
    match python(VERIFY, message, &[&record]).trim() {
        "True" => true,
        "False" => false,
        other => panic!("unexpected dkimpy output {other:?}"),
    }
}

fn check(pem: &str, algorithm: &str) {
    if python_with(&["dkim", "nacl"]).is_none() {
        return;
    }
    let signer = DkimSigner::from_pem(pem, "shop.example", "sel2026").unwrap();
    assert_eq!(signer.algorithm(), algorithm);
    let message = signed(&signer, "Zoë <script>\"x\"</script> 😀");
    let text = String::from_utf8_lossy(&message.content);
    assert!(text.starts_with("DKIM-Signature: v=1; a="), "{text}");
    let h = text
        .split("h=")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap();
    for required in [
        "from",
        "subject",
        "date",
        "message-id",
        "to",
        "list-unsubscribe",
        "list-unsubscribe-post",
    ] {
        assert!(
            h.split(':').any(|name| name == required),
            "{required} not signed: {h}"
        );
    }
    assert!(
        dkimpy_verifies(&signer, &message.content),
        "dkimpy rejected:\n{text}"
    );

    // The verifier is not vacuous: a changed subject or body fails.
    let tampered = text.replacen("Subject: ", "Subject: Re: ", 1);
    assert!(!dkimpy_verifies(&signer, tampered.as_bytes()));
    let tampered = text.replacen("Hello ", "Hullo ", 1);
    assert!(!dkimpy_verifies(&signer, tampered.as_bytes()));
    // A second From added in transit breaks it too (From is over-signed).
    let tampered = text.replacen("From: ", "From: evil@attacker.example\r\nFrom: ", 1);
    assert!(!dkimpy_verifies(&signer, tampered.as_bytes()));
}

#[test]
fn rsa_2048_signature_verifies_with_dkimpy() {
    check(RSA_PKCS8, "rsa-sha256");
}

#[test]
fn rsa_pkcs1_pem_loads_and_verifies_with_dkimpy() {
    check(RSA_PKCS1, "rsa-sha256");
}

#[test]
fn ed25519_signature_verifies_with_dkimpy() {
    check(ED25519, "ed25519-sha256");
}

#[test]
fn the_dns_record_has_the_key_type() {
    let rsa = DkimSigner::from_pem(RSA_PKCS8, "shop.example", "sel2026").unwrap();
    assert!(
        rsa.dns_record()
            .unwrap()
            .starts_with("v=DKIM1; k=rsa; p=MIIBIjAN")
    );
    let ed = DkimSigner::from_pem(ED25519, "shop.example", "sel2026").unwrap();
    let record = ed.dns_record().unwrap();
    assert!(record.starts_with("v=DKIM1; k=ed25519; p="));
    assert_eq!(record.len(), "v=DKIM1; k=ed25519; p=".len() + 44);
    // The private key never shows in debug output.
    assert!(!format!("{ed:?}").contains("PRIVATE"));
}

#[test]
fn folded_headers_verify_with_dkimpy() {
    if python_with(&["dkim", "nacl"]).is_none() {
        return;
    }
    let signer = DkimSigner::from_pem(ED25519, "shop.example", "sel2026").unwrap();
    let long_name = "Zoë ".repeat(40) + &"x".repeat(120);
    let from_name = "Riverside Books, Ünïcode department of very long names ".repeat(3);
    let message = signed_from(&signer, &long_name, from_name.trim());
    let text = String::from_utf8_lossy(&message.content);
    let head = &text[..text.find("\r\n\r\n").unwrap()];
    let continuation_lines = head
        .lines()
        .filter(|l| l.starts_with(" =?UTF-8?B?"))
        .count();
    assert!(
        continuation_lines >= 4,
        "From and Subject are folded:\n{head}"
    );
    assert!(head.lines().all(|line| line.len() <= 998));
    assert!(
        dkimpy_verifies(&signer, &message.content),
        "dkimpy rejected:\n{text}"
    );
}
