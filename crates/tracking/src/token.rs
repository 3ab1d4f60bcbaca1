//! Compact signed tokens naming (purpose, campaign, recipient).
//!
//! A token is `base64url(version | purpose | campaign id | recipient id | tag)` where the tag
//! is HMAC-SHA256 over everything before it, truncated to 128 bits. The purpose is part of
//! what is signed, so an unsubscribe token cannot be replayed at the click or open endpoint
//! and vice versa. Nothing is stored server-side: the token itself is the proof that we
//! minted it, which keeps the links stable across re-sends and lets any replica verify them.
//!
//! Rotation: [`TokenKeys`] signs with the current secret and also accepts tokens signed with
//! previous secrets, because links in mail already delivered must keep working after a
//! secret change.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use campaign::{CampaignId, RecipientId};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bumped when the layout changes; old tokens then fail as `Malformed` rather than being
/// misread.
const VERSION: u8 = 1;
/// Separates our MACs from any other use of the same secret.
const DOMAIN: &[u8] = b"marketing-base/token";
/// 128 bits: far beyond what an online forger can try, and keeps links short.
const TAG_LEN: usize = 16;
const PAYLOAD_LEN: usize = 1 + 1 + 16 + 8;
const TOKEN_LEN: usize = PAYLOAD_LEN + TAG_LEN;
/// Short secrets make the HMAC guessable offline from any one token.
pub const MIN_SECRET_LEN: usize = 32;

/// What a token may be used for. The code is signed along with the ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Purpose {
    /// `/u/{token}`: List-Unsubscribe (RFC 8058 one-click) and the visible unsubscribe link.
    Unsubscribe,
    /// `/o/{token}`: the open-tracking pixel.
    Open,
    /// `/c/{token}/{link index}`: the click redirect.
    Click,
    /// The VERP envelope sender `bounces+{token}@BOUNCE_VERP_DOMAIN`: bounces and complaints
    /// come back to it and are attributed to the recipient by it.
    Bounce,
}

impl Purpose {
    fn code(self) -> u8 {
        match self {
            Purpose::Unsubscribe => 1,
            Purpose::Open => 2,
            Purpose::Click => 3,
            Purpose::Bounce => 4,
        }
    }

    fn from_code(code: u8) -> Option<Purpose> {
        match code {
            1 => Some(Purpose::Unsubscribe),
            2 => Some(Purpose::Open),
            3 => Some(Purpose::Click),
            4 => Some(Purpose::Bounce),
            _ => None,
        }
    }
}

/// What a verified token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenClaims {
    pub purpose: Purpose,
    pub campaign_id: CampaignId,
    pub recipient_id: RecipientId,
}

/// Why a token was refused. Callers answer all of them the same way (404 or 400) so a prober
/// learns nothing; the distinction is for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not base64url, the wrong length, or an unknown version or purpose code.
    #[error("the token is malformed")]
    Malformed,
    /// The tag does not match under the current or any previous secret: forged or altered.
    #[error("the token's signature does not match")]
    BadSignature,
    /// A genuine token presented where a different purpose is expected.
    #[error("the token is for {actual:?}, not {expected:?}")]
    WrongPurpose { expected: Purpose, actual: Purpose },
    /// A configured secret is shorter than [`MIN_SECRET_LEN`] bytes.
    #[error("a tracking secret must be at least {MIN_SECRET_LEN} bytes long")]
    WeakSecret,
}

/// The secrets tokens are signed and verified with.
#[derive(Clone)]
pub struct TokenKeys {
    current: HmacSha256,
    previous: Vec<HmacSha256>,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TokenKeys")
            .field("previous", &self.previous.len())
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    /// `current` signs new tokens; tokens signed with any of `previous` still verify.
    pub fn new<'a>(
        current: &[u8],
        previous: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<TokenKeys, TokenError> {
        Ok(TokenKeys {
            current: keyed(current)?,
            previous: previous.into_iter().map(keyed).collect::<Result<_, _>>()?,
        })
    }

    /// A token for `purpose` naming this campaign and recipient (56 URL-safe characters).
    pub fn sign(
        &self,
        purpose: Purpose,
        campaign_id: CampaignId,
        recipient_id: RecipientId,
    ) -> String {
        let mut bytes = [0u8; TOKEN_LEN];
        bytes[0] = VERSION;
        bytes[1] = purpose.code();
        bytes[2..18].copy_from_slice(campaign_id.as_bytes());
        bytes[18..26].copy_from_slice(&recipient_id.to_be_bytes());
        let tag = self
            .current
            .clone()
            .chain_update(&bytes[..PAYLOAD_LEN])
            .finalize();
        bytes[PAYLOAD_LEN..].copy_from_slice(&tag.into_bytes()[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Checks the signature (current secret, then previous ones), then the purpose.
    pub fn verify(&self, expected: Purpose, token: &str) -> Result<TokenClaims, TokenError> {
        // Reject oversized input before decoding: a token is always the same length.
        if token.len() != URL_SAFE_NO_PAD_LEN {
            return Err(TokenError::Malformed);
        }
        let mut bytes = [0u8; TOKEN_LEN];
        match URL_SAFE_NO_PAD.decode_slice(token, &mut bytes) {
            Ok(TOKEN_LEN) => {}
            _ => return Err(TokenError::Malformed),
        }
        let (payload, tag) = bytes.split_at(PAYLOAD_LEN);
        let genuine = std::iter::once(&self.current)
            .chain(&self.previous)
            .any(|key| {
                key.clone()
                    .chain_update(payload)
                    .verify_truncated_left(tag)
                    .is_ok()
            });
        if !genuine {
            return Err(TokenError::BadSignature);
        }
        if payload[0] != VERSION {
            return Err(TokenError::Malformed);
        }
        let actual = Purpose::from_code(payload[1]).ok_or(TokenError::Malformed)?;
        if actual != expected {
            return Err(TokenError::WrongPurpose { expected, actual });
        }
        let mut campaign = [0u8; 16];
        campaign.copy_from_slice(&payload[2..18]);
        let mut recipient = [0u8; 8];
        recipient.copy_from_slice(&payload[18..26]);
        Ok(TokenClaims {
            purpose: actual,
            campaign_id: CampaignId::from_bytes(campaign),
            recipient_id: RecipientId::from_be_bytes(recipient),
        })
    }
}

const URL_SAFE_NO_PAD_LEN: usize = (TOKEN_LEN * 4).div_ceil(3);

fn keyed(secret: &[u8]) -> Result<HmacSha256, TokenError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(TokenError::WeakSecret);
    }
    let mac = HmacSha256::new_from_slice(secret).map_err(|_| TokenError::WeakSecret)?;
    Ok(mac.chain_update(DOMAIN))
}

/// The List-Unsubscribe and visible unsubscribe link: `{public_base_url}/u/{token}`.
pub fn unsubscribe_url(public_base_url: &str, token: &str) -> String {
    format!("{}/u/{token}", public_base_url.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const OLD: &[u8] = b"an-older-secret-that-was-rotated-out";

    fn campaign() -> CampaignId {
        CampaignId::from_u128(0x0190_0000_0000_7000_8000_0000_0000_00ab)
    }

    #[test]
    fn round_trip_gives_back_the_ids() {
        let keys = TokenKeys::new(SECRET, []).unwrap();
        for recipient in [0, 1, 42, i64::MAX, -7] {
            let token = keys.sign(Purpose::Unsubscribe, campaign(), recipient);
            assert_eq!(token.len(), 56);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            );
            let claims = keys.verify(Purpose::Unsubscribe, &token).unwrap();
            assert_eq!(
                claims,
                TokenClaims {
                    purpose: Purpose::Unsubscribe,
                    campaign_id: campaign(),
                    recipient_id: recipient
                }
            );
        }
    }

    #[test]
    fn any_altered_character_is_rejected() {
        let keys = TokenKeys::new(SECRET, []).unwrap();
        let token = keys.sign(Purpose::Unsubscribe, campaign(), 1234);
        for i in 0..token.len() {
            let mut altered: Vec<u8> = token.clone().into_bytes();
            altered[i] = if altered[i] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(altered).unwrap();
            assert!(
                keys.verify(Purpose::Unsubscribe, &altered).is_err(),
                "altering position {i} was accepted"
            );
        }
        // A token for another recipient built by hand with a guessed tag fails too.
        let other = keys.sign(Purpose::Unsubscribe, campaign(), 1235);
        let spliced = format!("{}{}", &other[..35], &token[35..]);
        assert_eq!(
            keys.verify(Purpose::Unsubscribe, &spliced),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn garbage_and_wrong_lengths_are_malformed() {
        let keys = TokenKeys::new(SECRET, []).unwrap();
        let token = keys.sign(Purpose::Open, campaign(), 1);
        for bad in [
            "",
            "abc",
            &token[..55],
            &format!("{token}A"),
            &"!".repeat(56),
        ] {
            assert_eq!(
                keys.verify(Purpose::Open, bad),
                Err(TokenError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_genuine_token_for_another_purpose_is_rejected() {
        let keys = TokenKeys::new(SECRET, []).unwrap();
        let token = keys.sign(Purpose::Unsubscribe, campaign(), 9);
        assert_eq!(
            keys.verify(Purpose::Click, &token),
            Err(TokenError::WrongPurpose {
                expected: Purpose::Click,
                actual: Purpose::Unsubscribe
            })
        );
        // Flipping the purpose byte without re-signing breaks the signature.
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[1] = Purpose::Click.code();
        let relabelled = URL_SAFE_NO_PAD.encode(bytes);
        assert_eq!(
            keys.verify(Purpose::Click, &relabelled),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn previous_secret_is_accepted_after_rotation_and_unknown_secret_is_not() {
        let before = TokenKeys::new(OLD, []).unwrap();
        let token = before.sign(Purpose::Unsubscribe, campaign(), 5);
        let after = TokenKeys::new(SECRET, [OLD]).unwrap();
        assert_eq!(
            after
                .verify(Purpose::Unsubscribe, &token)
                .unwrap()
                .recipient_id,
            5
        );
        let forgotten = TokenKeys::new(SECRET, []).unwrap();
        assert_eq!(
            forgotten.verify(Purpose::Unsubscribe, &token),
            Err(TokenError::BadSignature)
        );
        // New tokens are signed with the current secret only.
        let fresh = after.sign(Purpose::Unsubscribe, campaign(), 5);
        assert!(before.verify(Purpose::Unsubscribe, &fresh).is_err());
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(
            TokenKeys::new(b"short", []).unwrap_err(),
            TokenError::WeakSecret
        );
        assert_eq!(
            TokenKeys::new(SECRET, [&b"short"[..]]).unwrap_err(),
            TokenError::WeakSecret
        );
    }

    #[test]
    fn unsubscribe_url_joins_without_double_slash() {
        assert_eq!(
            unsubscribe_url("https://m.example.com/", "TOK"),
            "https://m.example.com/u/TOK"
        );
        assert_eq!(
            unsubscribe_url("https://m.example.com", "TOK"),
            "https://m.example.com/u/TOK"
        );
    }
}
