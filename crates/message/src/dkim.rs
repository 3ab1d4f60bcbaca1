//! DKIM signing (RFC 6376) with RSA-SHA256 or Ed25519-SHA256 (RFC 8463), relaxed/relaxed.
//!
//! The signer works on the messages this crate writes, whose shape is known (CRLF, one
//! instance of each signed header), but canonicalizes generally so a verifier agrees. It is
//! checked against an independent verifier (dkimpy) in the tests.

use crate::OutgoingMessage;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

/// Headers covered by the signature, in this order, when present. From is listed twice
/// ("over-signing") so a second From added in transit breaks the signature instead of being
/// shown to the reader.
const SIGNED_HEADERS: [&str; 11] = [
    "from",
    "to",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "mime-version",
    "content-type",
    "from",
];

/// Why a DKIM key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DkimError {
    /// The PEM is neither an RSA key (PKCS#1 or PKCS#8) nor an Ed25519 key (PKCS#8).
    #[error("the DKIM private key is not an RSA or Ed25519 key in PEM form: {0}")]
    Key(String),
    /// RSA keys shorter than 1024 bits are refused by receivers (RFC 8301); we want 2048.
    #[error("the RSA key has {0} bits; DKIM needs at least 2048")]
    WeakRsaKey(usize),
    /// Selector or domain empty or containing characters not allowed in a DNS name.
    #[error("the DKIM {0} {1:?} is not a valid DNS label sequence")]
    Name(&'static str, String),
    /// The message has no header/body separator, so it was not written by this crate.
    #[error("the message has no blank line between header and body")]
    NotAMessage,
    /// The signing operation itself failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

enum Key {
    Rsa(Box<rsa::pkcs1v15::SigningKey<Sha256>>),
    Ed25519(Box<ed25519_dalek::SigningKey>),
}

/// A DKIM key with its selector and domain: `{selector}._domainkey.{domain}` holds the public
/// key ([`DkimSigner::dns_record`]).
pub struct DkimSigner {
    key: Key,
    selector: String,
    domain: String,
}

impl std::fmt::Debug for DkimSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key is never printed.
        f.debug_struct("DkimSigner")
            .field("algorithm", &self.algorithm())
            .field("selector", &self.selector)
            .field("domain", &self.domain)
            .finish()
    }
}

impl DkimSigner {
    /// Loads a PEM private key: `BEGIN RSA PRIVATE KEY` (PKCS#1) or `BEGIN PRIVATE KEY`
    /// (PKCS#8, RSA or Ed25519), as `openssl genpkey` writes them.
    pub fn from_pem(pem: &str, domain: &str, selector: &str) -> Result<DkimSigner, DkimError> {
        check_name("domain", domain)?;
        check_name("selector", selector)?;
        let key = parse_key(pem)?;
        Ok(DkimSigner {
            key,
            selector: selector.to_string(),
            domain: domain.to_string(),
        })
    }

    /// `rsa-sha256` or `ed25519-sha256`, as in the signature's `a=` tag.
    pub fn algorithm(&self) -> &'static str {
        match self.key {
            Key::Rsa(_) => "rsa-sha256",
            Key::Ed25519(_) => "ed25519-sha256",
        }
    }

    /// The TXT record to publish at `{selector}._domainkey.{domain}`.
    pub fn dns_record(&self) -> Result<String, DkimError> {
        match &self.key {
            Key::Rsa(key) => {
                use rsa::pkcs8::EncodePublicKey;
                let public = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(
                    key.as_ref().as_ref().to_public_key(),
                );
                let der = public
                    .to_public_key_der()
                    .map_err(|err| DkimError::Key(err.to_string()))?;
                Ok(format!(
                    "v=DKIM1; k=rsa; p={}",
                    STANDARD.encode(der.as_bytes())
                ))
            }
            Key::Ed25519(key) => Ok(format!(
                "v=DKIM1; k=ed25519; p={}",
                STANDARD.encode(key.verifying_key().to_bytes())
            )),
        }
    }

    /// The `d=` domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The `s=` selector.
    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// Whether a signature with this key aligns with a From address in `from_domain` (relaxed
    /// DMARC alignment: the same domain or a subdomain of it). Receivers give no credit to a
    /// signature that does not align, so such messages are sent unsigned.
    pub fn covers(&self, from_domain: &str) -> bool {
        let from = from_domain.trim_end_matches('.').to_ascii_lowercase();
        let domain = self.domain.trim_end_matches('.').to_ascii_lowercase();
        from == domain
            || from
                .strip_suffix(&domain)
                .is_some_and(|prefix| prefix.ends_with('.'))
    }

    /// Prepends a DKIM-Signature header. `timestamp` (Unix seconds) becomes `t=`.
    pub fn sign(&self, message: &mut OutgoingMessage, timestamp: i64) -> Result<(), DkimError> {
        message.content = self.sign_bytes(&message.content, timestamp)?.into();
        Ok(())
    }

    /// The message (CRLF, headers first) with a DKIM-Signature header prepended.
    pub fn sign_bytes(&self, bytes: &[u8], timestamp: i64) -> Result<Vec<u8>, DkimError> {
        let split = find(bytes, b"\r\n\r\n").ok_or(DkimError::NotAMessage)?;
        let (head, body) = (&bytes[..split + 2], &bytes[split + 4..]);
        let body_hash = STANDARD.encode(Sha256::digest(relaxed_body(body)));

        let fields = header_fields(head);
        let mut signed_names = Vec::new();
        let mut hasher_input = Vec::with_capacity(head.len());
        // Each listed name takes the next instance from the bottom (RFC 6376 §5.4.2); a name
        // listed again after its instances run out signs "absent".
        let mut used = std::collections::HashMap::<&str, usize>::new();
        for name in SIGNED_HEADERS {
            let instances: Vec<&[u8]> = fields
                .iter()
                .filter(|(field_name, _)| field_name.eq_ignore_ascii_case(name))
                .map(|(_, raw)| *raw)
                .collect();
            let taken = used.entry(name).or_insert(0);
            let present = instances.len();
            if *taken < present {
                relaxed_header(&mut hasher_input, instances[present - 1 - *taken]);
                hasher_input.extend_from_slice(b"\r\n");
            } else if present == 0 {
                // Absent headers are not listed, except that over-signing needs none.
                continue;
            }
            *taken += 1;
            signed_names.push(name);
        }

        let value = format!(
            "v=1; a={}; c=relaxed/relaxed; d={}; s={};\r\n t={timestamp}; h={};\r\n bh={body_hash};\r\n b=",
            self.algorithm(),
            self.domain,
            self.selector,
            signed_names.join(":"),
        );
        let unsigned = format!("DKIM-Signature: {value}");
        relaxed_header(&mut hasher_input, unsigned.as_bytes());
        let signature = match &self.key {
            Key::Rsa(key) => {
                use rsa::signature::{SignatureEncoding, Signer};
                key.try_sign(&hasher_input)
                    .map_err(|err| DkimError::Sign(err.to_string()))?
                    .to_vec()
            }
            Key::Ed25519(key) => {
                use ed25519_dalek::Signer;
                // RFC 8463: Ed25519 signs the SHA-256 hash of the data, not the data.
                key.sign(&Sha256::digest(&hasher_input)).to_bytes().to_vec()
            }
        };
        let mut header = unsigned.into_bytes();
        // One long line is valid (< 998) and avoids any doubt about folding inside b=.
        header.extend_from_slice(STANDARD.encode(signature).as_bytes());
        header.extend_from_slice(b"\r\n");
        header.extend_from_slice(bytes);
        Ok(header)
    }
}

/// The kind of key [`generate_key`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DkimKeyKind {
    /// RSA, 2048 bits: verified by every receiver.
    Rsa,
    /// Ed25519 (RFC 8463): small and fast, not yet verified by every receiver.
    Ed25519,
}

/// A new private key as PKCS#8 PEM, from the operating system's random source.
pub fn generate_key(kind: DkimKeyKind) -> Result<String, DkimError> {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    let pem = match kind {
        DkimKeyKind::Rsa => rsa::PrivateKey::new(&mut rand::rng(), 2048)
            .map_err(|err| DkimError::Key(err.to_string()))?
            .to_pkcs8_pem(LineEnding::LF),
        DkimKeyKind::Ed25519 => {
            let seed: [u8; 32] = rand::random();
            ed25519_dalek::SigningKey::from_bytes(&seed).to_pkcs8_pem(LineEnding::LF)
        }
    };
    pem.map(|pem| pem.to_string())
        .map_err(|err| DkimError::Key(err.to_string()))
}

/// Refuses a DKIM domain or selector that is empty or not a DNS label sequence; `what` names
/// it in the error.
pub fn check_name(what: &'static str, name: &str) -> Result<(), DkimError> {
    let ok = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(DkimError::Name(what, name.to_string()))
    }
}

fn parse_key(pem: &str) -> Result<Key, DkimError> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    use rsa::traits::PublicKeyParts;
    let rsa_key = if pem.contains("BEGIN RSA PRIVATE KEY") {
        Some(rsa::PrivateKey::from_pkcs1_pem(pem).map_err(|err| DkimError::Key(err.to_string()))?)
    } else {
        rsa::PrivateKey::from_pkcs8_pem(pem).ok()
    };
    if let Some(key) = rsa_key {
        let bits = key.size() * 8;
        if bits < 2048 {
            return Err(DkimError::WeakRsaKey(bits));
        }
        return Ok(Key::Rsa(Box::new(rsa::pkcs1v15::SigningKey::new(key))));
    }
    ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
        .map(|key| Key::Ed25519(Box::new(key)))
        .map_err(|err| DkimError::Key(err.to_string()))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Splits a header block into (name, raw field including folded continuation lines, without
/// the final CRLF).
fn header_fields(head: &[u8]) -> Vec<(&str, &[u8])> {
    let mut fields: Vec<(&str, &[u8])> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < head.len() {
        if head[i] == b'\r' && head[i + 1] == b'\n' {
            let continued = matches!(head.get(i + 2), Some(b' ') | Some(b'\t'));
            if !continued {
                let raw = &head[start..i];
                let name_end = raw.iter().position(|&b| b == b':').unwrap_or(raw.len());
                let name = std::str::from_utf8(&raw[..name_end]).unwrap_or("").trim();
                fields.push((name, raw));
                start = i + 2;
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    fields
}

/// RFC 6376 §3.4.2: lower-case name, unfold, runs of white space to one space, no white space
/// around the colon or at the end.
fn relaxed_header(out: &mut Vec<u8>, raw: &[u8]) {
    let colon = raw.iter().position(|&b| b == b':').unwrap_or(raw.len());
    let name = &raw[..colon];
    let value = raw.get(colon + 1..).unwrap_or(&[]);
    out.extend(
        name.iter()
            .filter(|b| !b.is_ascii_whitespace())
            .map(u8::to_ascii_lowercase),
    );
    out.push(b':');
    let mut pending_space = false;
    let mut started = false;
    for &b in value {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => pending_space = started,
            _ => {
                if pending_space {
                    out.push(b' ');
                    pending_space = false;
                }
                out.push(b);
                started = true;
            }
        }
    }
}

/// RFC 6376 §3.4.4: trailing white space removed from lines, inner runs to one space, empty
/// lines at the end removed, a non-empty body ends with CRLF.
fn relaxed_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut empty_lines = 0usize;
    let text = body.strip_suffix(b"\r\n").unwrap_or(body);
    if text.is_empty() {
        return out;
    }
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut canon = Vec::with_capacity(line.len());
        let mut pending_space = false;
        for &b in line {
            if b == b' ' || b == b'\t' {
                pending_space = true;
            } else {
                if pending_space {
                    canon.push(b' ');
                    pending_space = false;
                }
                canon.push(b);
            }
        }
        if canon.is_empty() {
            empty_lines += 1;
            continue;
        }
        for _ in 0..empty_lines {
            out.extend_from_slice(b"\r\n");
        }
        empty_lines = 0;
        out.extend_from_slice(&canon);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relaxed_header_matches_the_rfc_example() {
        // RFC 6376 §3.4.5.
        let mut out = Vec::new();
        relaxed_header(&mut out, b"A: X");
        out.extend_from_slice(b"\r\n");
        relaxed_header(&mut out, b"B : Y\t\r\n\tZ  ");
        assert_eq!(out, b"a:X\r\nb:Y Z");
    }

    #[test]
    fn relaxed_body_matches_the_rfc_example() {
        assert_eq!(
            relaxed_body(b" C \r\nD \t E\r\n\r\n\r\n"),
            b" C\r\nD E\r\n".to_vec()
        );
        assert_eq!(relaxed_body(b""), b"".to_vec());
        assert_eq!(relaxed_body(b"\r\n"), b"".to_vec());
    }

    #[test]
    fn a_key_covers_its_domain_and_subdomains_only() {
        let key = include_str!("../tests/fixtures/dkim-test-ed25519.pem");
        let signer = DkimSigner::from_pem(key, "shop.example", "sel").unwrap();
        assert!(signer.covers("shop.example"));
        assert!(signer.covers("Mail.Shop.Example."));
        assert!(!signer.covers("othershop.example"));
        assert!(!signer.covers("example"));
        assert!(!signer.covers("shop.example.net"));
    }

    #[test]
    fn bad_names_and_keys_are_refused() {
        assert!(matches!(
            DkimSigner::from_pem("x", "example.com", "sel"),
            Err(DkimError::Key(_))
        ));
        assert!(matches!(
            DkimSigner::from_pem("x", "example.com", "bad selector"),
            Err(DkimError::Name("selector", _))
        ));
        assert!(matches!(
            DkimSigner::from_pem("x", "", "sel"),
            Err(DkimError::Name("domain", _))
        ));
    }
}
