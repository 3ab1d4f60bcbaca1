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
/// Click tokens also carry the link index (2 bytes).
const CLICK_PAYLOAD_LEN: usize = PAYLOAD_LEN + 2;
const CLICK_TOKEN_LEN: usize = CLICK_PAYLOAD_LEN + TAG_LEN;
/// Short secrets make the HMAC guessable offline from any one token.
pub const MIN_SECRET_LEN: usize = 32;

/// What a token may be used for. The code is signed along with the ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Purpose {
    /// `/u/{token}`: List-Unsubscribe (RFC 8058 one-click) and the visible unsubscribe link.
    Unsubscribe,
    /// `/t/o/{token}`: the open-tracking pixel.
    Open,
    /// `/t/c/{token}`: the click redirect (the token also names the link).
    Click,
    /// The VERP envelope sender `bounces+{token}@BOUNCE_VERP_DOMAIN`: bounces and complaints
    /// come back to it and are attributed to the recipient by it.
    Bounce,
    /// `/u/{token}` in a test message (`POST …/test`): the recipient id is the test send's id,
    /// and the link suppresses the address that test was sent to.
    TestUnsubscribe,
}

impl Purpose {
    fn code(self) -> u8 {
        match self {
            Purpose::Unsubscribe => 1,
            Purpose::Open => 2,
            Purpose::Click => 3,
            Purpose::Bounce => 4,
            Purpose::TestUnsubscribe => 5,
        }
    }

    fn from_code(code: u8) -> Option<Purpose> {
        match code {
            1 => Some(Purpose::Unsubscribe),
            2 => Some(Purpose::Open),
            3 => Some(Purpose::Click),
            4 => Some(Purpose::Bounce),
            5 => Some(Purpose::TestUnsubscribe),
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
        let mut bytes = [0u8; CLICK_TOKEN_LEN];
        write_payload(&mut bytes, purpose, campaign_id, recipient_id);
        self.seal(&mut bytes[..TOKEN_LEN])
    }

    /// A click token: the campaign, the recipient and which link of the campaign's HTML
    /// template was followed (59 URL-safe characters). The link index is signed with the ids,
    /// so a token cannot be pointed at another link, and the redirect target is looked up in
    /// the campaign, never carried in the URL (no open redirect).
    pub fn sign_click(
        &self,
        campaign_id: CampaignId,
        recipient_id: RecipientId,
        link_index: u16,
    ) -> String {
        let mut bytes = [0u8; CLICK_TOKEN_LEN];
        write_payload(&mut bytes, Purpose::Click, campaign_id, recipient_id);
        bytes[PAYLOAD_LEN..CLICK_PAYLOAD_LEN].copy_from_slice(&link_index.to_be_bytes());
        self.seal(&mut bytes)
    }

    /// Appends the tag over everything but the last TAG_LEN bytes and encodes the token.
    fn seal(&self, bytes: &mut [u8]) -> String {
        let payload_len = bytes.len() - TAG_LEN;
        let tag = self
            .current
            .clone()
            .chain_update(&bytes[..payload_len])
            .finalize();
        bytes[payload_len..].copy_from_slice(&tag.into_bytes()[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Checks the signature (current secret, then previous ones), then the purpose.
    pub fn verify(&self, expected: Purpose, token: &str) -> Result<TokenClaims, TokenError> {
        let mut bytes = [0u8; TOKEN_LEN];
        let payload = self.open(token, &mut bytes)?;
        claims(payload, expected)
    }

    /// Verifies a click token; gives its claims and the link index.
    pub fn verify_click(&self, token: &str) -> Result<(TokenClaims, u16), TokenError> {
        let mut bytes = [0u8; CLICK_TOKEN_LEN];
        let payload = self.open(token, &mut bytes)?;
        let claims = claims(payload, Purpose::Click)?;
        let link_index = u16::from_be_bytes([payload[PAYLOAD_LEN], payload[PAYLOAD_LEN + 1]]);
        Ok((claims, link_index))
    }

    /// Decodes a token of exactly `bytes.len()` bytes and checks its tag; returns the payload.
    fn open<'b>(&self, token: &str, bytes: &'b mut [u8]) -> Result<&'b [u8], TokenError> {
        // Reject other lengths before decoding: a token of one kind is always the same length.
        if token.len() != (bytes.len() * 4).div_ceil(3) {
            return Err(TokenError::Malformed);
        }
        match URL_SAFE_NO_PAD.decode_slice(token, bytes) {
            Ok(n) if n == bytes.len() => {}
            _ => return Err(TokenError::Malformed),
        }
        let (payload, tag) = bytes.split_at(bytes.len() - TAG_LEN);
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
        Ok(payload)
    }

    /// A keyed hash of a client's IP address, so events can tell repeat visitors apart
    /// without storing the address: without the secret the hash cannot be reversed by
    /// trying the 2^32 IPv4 addresses.
    pub fn hash_ip(&self, ip: std::net::IpAddr) -> String {
        let octets = match ip {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(v6) => v6.octets(),
        };
        let tag = self
            .current
            .clone()
            .chain_update(b"/ip")
            .chain_update(octets)
            .finalize()
            .into_bytes();
        tag[..TAG_LEN].iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn write_payload(
    bytes: &mut [u8],
    purpose: Purpose,
    campaign_id: CampaignId,
    recipient_id: RecipientId,
) {
    bytes[0] = VERSION;
    bytes[1] = purpose.code();
    bytes[2..18].copy_from_slice(campaign_id.as_uuid().as_bytes());
    bytes[18..26].copy_from_slice(&recipient_id.get().to_be_bytes());
}

fn claims(payload: &[u8], expected: Purpose) -> Result<TokenClaims, TokenError> {
    if payload[0] != VERSION {
        return Err(TokenError::Malformed);
    }
    let actual = Purpose::from_code(payload[1]).ok_or(TokenError::Malformed)?;
    if actual != expected {
        return Err(TokenError::WrongPurpose { expected, actual });
    }
    // Only click tokens carry the link index; a payload of the other length is not one.
    let expected_len = if actual == Purpose::Click {
        CLICK_PAYLOAD_LEN
    } else {
        PAYLOAD_LEN
    };
    if payload.len() != expected_len {
        return Err(TokenError::Malformed);
    }
    let mut campaign = [0u8; 16];
    campaign.copy_from_slice(&payload[2..18]);
    let mut recipient = [0u8; 8];
    recipient.copy_from_slice(&payload[18..26]);
    Ok(TokenClaims {
        purpose: actual,
        campaign_id: CampaignId::from(uuid::Uuid::from_bytes(campaign)),
        recipient_id: RecipientId::new(i64::from_be_bytes(recipient)),
    })
}

fn keyed(secret: &[u8]) -> Result<HmacSha256, TokenError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(TokenError::WeakSecret);
    }
    let mac = HmacSha256::new_from_slice(secret).map_err(|_| TokenError::WeakSecret)?;
    Ok(mac.chain_update(DOMAIN))
}

/// The recipient id open and click tokens carry when the campaign is tracked aggregate-only:
/// the links then identify nobody (database ids start at 1), and events are stored without
/// a recipient.
pub const ANONYMOUS_RECIPIENT: RecipientId = RecipientId::new(0);

/// The recipient id of an aggregate-only link of A/B variant `variant`: negative (database
/// ids are positive), `-1 - variant`, so the event counts for its variant and still names
/// nobody.
pub fn anonymous_in_variant(variant: u8) -> RecipientId {
    RecipientId::new(-1 - i64::from(variant))
}

impl TokenClaims {
    /// The recipient the claims name; `None` for an aggregate-only link.
    pub fn named_recipient(&self) -> Option<RecipientId> {
        (self.recipient_id.get() > ANONYMOUS_RECIPIENT.get()).then_some(self.recipient_id)
    }

    /// The A/B variant an aggregate-only link names (see [`anonymous_in_variant`]).
    pub fn anonymous_variant(&self) -> Option<u8> {
        if self.recipient_id.get() < ANONYMOUS_RECIPIENT.get() {
            u8::try_from(-1 - self.recipient_id.get()).ok()
        } else {
            None
        }
    }
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
        CampaignId::from(uuid::Uuid::from_u128(
            0x0190_0000_0000_7000_8000_0000_0000_00ab,
        ))
    }

    #[test]
    fn round_trip_gives_back_the_ids() {
        let keys = TokenKeys::new(SECRET, []).unwrap();
        for recipient in [0, 1, 42, i64::MAX, -7].map(RecipientId::new) {
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
        let token = keys.sign(Purpose::Unsubscribe, campaign(), RecipientId::new(1234));
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
        let other = keys.sign(Purpose::Unsubscribe, campaign(), RecipientId::new(1235));
        let spliced = format!("{}{}", &other[..35], &token[35..]);
        assert_eq!(
            keys.verify(Purpose::Unsubscribe, &spliced),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn garbage_and_wrong_lengths_are_malformed() {
        let keys = TokenKeys::new(SECRET, []).unwrap();
        let token = keys.sign(Purpose::Open, campaign(), RecipientId::new(1));
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
        let token = keys.sign(Purpose::Unsubscribe, campaign(), RecipientId::new(9));
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
        let token = before.sign(Purpose::Unsubscribe, campaign(), RecipientId::new(5));
        let after = TokenKeys::new(SECRET, [OLD]).unwrap();
        assert_eq!(
            after
                .verify(Purpose::Unsubscribe, &token)
                .unwrap()
                .recipient_id,
            RecipientId::new(5)
        );
        let forgotten = TokenKeys::new(SECRET, []).unwrap();
        assert_eq!(
            forgotten.verify(Purpose::Unsubscribe, &token),
            Err(TokenError::BadSignature)
        );
        // New tokens are signed with the current secret only.
        let fresh = after.sign(Purpose::Unsubscribe, campaign(), RecipientId::new(5));
        assert!(before.verify(Purpose::Unsubscribe, &fresh).is_err());
    }

    #[test]
    fn click_tokens_carry_their_link_and_cannot_be_moved_to_another() {
        let keys = TokenKeys::new(SECRET, []).unwrap();
        let token = keys.sign_click(campaign(), RecipientId::new(77), 3);
        assert_eq!(token.len(), 59);
        let (claims, link) = keys.verify_click(&token).unwrap();
        assert_eq!(
            (claims.campaign_id, claims.recipient_id, link),
            (campaign(), RecipientId::new(77), 3)
        );
        // Changing the link index without re-signing breaks the signature.
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[PAYLOAD_LEN + 1] = 4;
        assert_eq!(
            keys.verify_click(&URL_SAFE_NO_PAD.encode(bytes)),
            Err(TokenError::BadSignature)
        );
        // Tokens of the other purposes are not click tokens, and the other way round.
        let open = keys.sign(Purpose::Open, campaign(), RecipientId::new(77));
        assert_eq!(keys.verify_click(&open), Err(TokenError::Malformed));
        assert!(keys.verify(Purpose::Click, &open).is_err());
        assert_eq!(
            keys.verify(Purpose::Open, &token),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn ip_hashes_are_keyed_and_stable() {
        let keys = TokenKeys::new(SECRET, []).unwrap();
        let other = TokenKeys::new(OLD, []).unwrap();
        let ip: std::net::IpAddr = "192.0.2.10".parse().unwrap();
        let hash = keys.hash_ip(ip);
        assert_eq!(hash.len(), 32);
        assert_eq!(hash, keys.hash_ip(ip));
        assert!(!hash.contains("192"));
        assert_ne!(hash, other.hash_ip(ip));
        assert_ne!(hash, keys.hash_ip("192.0.2.11".parse().unwrap()));
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
