//! Signing and verifying webhook requests (see the crate docs for the scheme).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// The `Webhook-Signature` value for a body sent at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("v1={}", hex::encode(mac(secret, timestamp, body)))
}

fn mac(secret: &[u8], timestamp: i64, body: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// Why a request's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the Webhook-Timestamp header is not Unix seconds")]
    BadTimestamp,
    #[error("the request is {0} s away from now, beyond the tolerance (a replay?)")]
    Stale(i64),
    #[error("the Webhook-Signature header is not v1=<hex>")]
    Malformed,
    #[error("the signature does not match the body")]
    Mismatch,
}

/// Checks a received request as a receiver should: the timestamp within `tolerance_seconds` of
/// `now` (Unix seconds), and the signature over timestamp and raw body, in constant time.
pub fn verify(
    secret: &[u8],
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now: i64,
    tolerance_seconds: i64,
) -> Result<(), VerifyError> {
    let timestamp: i64 = timestamp_header
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    let skew = (now - timestamp).abs();
    if skew > tolerance_seconds {
        return Err(VerifyError::Stale(skew));
    }
    let offered = signature_header
        .trim()
        .strip_prefix("v1=")
        .and_then(|hex_digest| hex::decode(hex_digest).ok())
        .ok_or(VerifyError::Malformed)?;
    let expected = mac(secret, timestamp, body);
    if bool::from(offered.ct_eq(&expected)) {
        Ok(())
    } else {
        Err(VerifyError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_secret_body_and_time() {
        let body = br#"{"events":[]}"#;
        let signature = sign(b"secret", 1_700_000_000, body);
        assert!(signature.starts_with("v1="));
        assert_eq!(
            verify(
                b"secret",
                "1700000000",
                &signature,
                body,
                1_700_000_010,
                300
            ),
            Ok(())
        );
        assert_eq!(
            verify(b"other", "1700000000", &signature, body, 1_700_000_010, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(
                b"secret",
                "1700000000",
                &signature,
                b"{}",
                1_700_000_010,
                300
            ),
            Err(VerifyError::Mismatch)
        );
        // The timestamp is signed: moving it breaks the signature.
        assert_eq!(
            verify(
                b"secret",
                "1700000001",
                &signature,
                body,
                1_700_000_010,
                300
            ),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(
                b"secret",
                "1700000000",
                &signature,
                body,
                1_700_001_000,
                300
            ),
            Err(VerifyError::Stale(1000))
        );
        assert_eq!(
            verify(b"secret", "soon", &signature, body, 0, 300),
            Err(VerifyError::BadTimestamp)
        );
        assert_eq!(
            verify(
                b"secret",
                "1700000000",
                "sha256=00",
                body,
                1_700_000_000,
                300
            ),
            Err(VerifyError::Malformed)
        );
    }
}
