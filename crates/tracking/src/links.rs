//! The public links a message carries, signed per recipient.

use crate::feedback::verp_address;
use crate::token::{
    ANONYMOUS_RECIPIENT, Purpose, TokenKeys, anonymous_in_variant, unsubscribe_url,
};
use campaign::{CampaignId, RecipientId};

/// Builds recipients' links under PUBLIC_BASE_URL with their signed tokens.
#[derive(Debug, Clone)]
pub struct Links {
    public_base_url: String,
    keys: TokenKeys,
    /// TRACKING_AGGREGATE_ONLY: every campaign's opens and clicks are anonymous.
    aggregate_only: bool,
    verp_domain: Option<String>,
}

/// The local part before the `+` of VERP return paths. With the 56-character tokens it fills
/// the 64-octet local part exactly (see [`verp_address`]).
pub const VERP_PREFIX: &str = "bounces";

impl Links {
    pub fn new(public_base_url: &str, keys: TokenKeys) -> Links {
        Links {
            public_base_url: public_base_url.trim_end_matches('/').to_string(),
            keys,
            aggregate_only: false,
            verp_domain: None,
        }
    }

    /// Makes open and click links anonymous for every campaign (the global privacy setting).
    pub fn with_aggregate_only(mut self, aggregate_only: bool) -> Links {
        self.aggregate_only = aggregate_only;
        self
    }

    /// The recipient id open and click links name: the recipient's own, or
    /// [`ANONYMOUS_RECIPIENT`] when the campaign or the service tracks aggregate-only.
    /// An anonymous link of an A/B test's message names its `variant` instead
    /// ([`anonymous_in_variant`]), so per-variant counts need no recipient.
    /// (Unsubscribe links always name the recipient: they must suppress the address.)
    pub fn tracked_recipient(
        &self,
        campaign_aggregate_only: bool,
        recipient_id: RecipientId,
        variant: Option<u8>,
    ) -> RecipientId {
        if campaign_aggregate_only || self.aggregate_only {
            variant.map_or(ANONYMOUS_RECIPIENT, anonymous_in_variant)
        } else {
            recipient_id
        }
    }

    /// Sends every message with the envelope sender `bounces+TOKEN@domain` (BOUNCE_VERP_DOMAIN),
    /// so bounces and complaints name the campaign and recipient they are about.
    pub fn with_verp_domain(mut self, domain: Option<String>) -> Links {
        self.verp_domain = domain.filter(|domain| !domain.is_empty());
        self
    }

    /// The VERP return path of one recipient's message; `None` when no VERP domain is set
    /// (the campaign's From address is then the envelope sender).
    pub fn bounce_address(
        &self,
        campaign_id: CampaignId,
        recipient_id: RecipientId,
    ) -> Option<String> {
        let domain = self.verp_domain.as_deref()?;
        let token = self.keys.sign(Purpose::Bounce, campaign_id, recipient_id);
        Some(verp_address(VERP_PREFIX, &token, domain))
    }

    /// `{PUBLIC_BASE_URL}/u/{token}` for a token already signed: where the confirmation
    /// page's form posts, so it works behind a proxy that serves the API under a path prefix.
    pub fn unsubscribe_for_token(&self, token: &str) -> String {
        unsubscribe_url(&self.public_base_url, token)
    }

    /// `{PUBLIC_BASE_URL}/u/{token}`: the List-Unsubscribe URL and the visible link.
    pub fn unsubscribe(&self, campaign_id: CampaignId, recipient_id: RecipientId) -> String {
        let token = self
            .keys
            .sign(Purpose::Unsubscribe, campaign_id, recipient_id);
        unsubscribe_url(&self.public_base_url, &token)
    }

    /// `{PUBLIC_BASE_URL}/u/{token}` of a test message: the token names the recorded test send
    /// (not a recipient), whose address the link suppresses.
    pub fn test_unsubscribe(&self, campaign_id: CampaignId, test_send_id: i64) -> String {
        // The token's recipient slot carries the test send's id.
        let token = self.keys.sign(
            Purpose::TestUnsubscribe,
            campaign_id,
            RecipientId::new(test_send_id),
        );
        unsubscribe_url(&self.public_base_url, &token)
    }

    /// `{PUBLIC_BASE_URL}/t/o/{token}`: the open-tracking pixel.
    pub fn open_pixel(&self, campaign_id: CampaignId, recipient_id: RecipientId) -> String {
        let token = self.keys.sign(Purpose::Open, campaign_id, recipient_id);
        format!("{}/t/o/{token}", self.public_base_url)
    }

    /// `{PUBLIC_BASE_URL}/t/c/{token}`: the redirect for link `link_index` of the campaign's
    /// HTML template.
    pub fn click(
        &self,
        campaign_id: CampaignId,
        recipient_id: RecipientId,
        link_index: u16,
    ) -> String {
        let token = self.keys.sign_click(campaign_id, recipient_id, link_index);
        format!("{}/t/c/{token}", self.public_base_url)
    }

    pub fn keys(&self) -> &TokenKeys {
        &self.keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_and_click_links_verify_and_aggregate_only_names_nobody() {
        let keys = TokenKeys::new(&[9u8; 32], []).unwrap();
        let links = Links::new("https://mail.example.com", keys.clone());
        let campaign = campaign::CampaignId::now_v7();
        let pixel = links.open_pixel(campaign, RecipientId::new(5));
        let token = pixel.strip_prefix("https://mail.example.com/t/o/").unwrap();
        assert_eq!(
            keys.verify(Purpose::Open, token).unwrap().recipient_id,
            RecipientId::new(5)
        );
        let click = links.click(campaign, RecipientId::new(5), 2);
        let token = click.strip_prefix("https://mail.example.com/t/c/").unwrap();
        assert_eq!(keys.verify_click(token).unwrap().1, 2);

        let five = RecipientId::new(5);
        assert_eq!(links.tracked_recipient(false, five, None), five);
        assert_eq!(links.tracked_recipient(false, five, Some(1)), five);
        assert_eq!(
            links.tracked_recipient(true, five, None),
            ANONYMOUS_RECIPIENT
        );
        let private = links.with_aggregate_only(true);
        assert_eq!(
            private.tracked_recipient(false, five, None),
            ANONYMOUS_RECIPIENT
        );
        // An A/B variant's anonymous link names the variant, and nobody.
        let variant_pixel =
            private.open_pixel(campaign, private.tracked_recipient(false, five, Some(2)));
        let token = variant_pixel
            .strip_prefix("https://mail.example.com/t/o/")
            .unwrap();
        let claims = keys.verify(Purpose::Open, token).unwrap();
        assert_eq!(claims.named_recipient(), None);
        assert_eq!(claims.anonymous_variant(), Some(2));
    }

    #[test]
    fn unsubscribe_links_carry_a_token_that_verifies_for_their_recipient() {
        let keys = TokenKeys::new(&[7u8; 32], []).unwrap();
        let links = Links::new("https://mail.example.com/", keys.clone());
        let campaign = campaign::CampaignId::now_v7();
        let url = links.unsubscribe(campaign, RecipientId::new(42));
        let token = url
            .strip_prefix("https://mail.example.com/u/")
            .expect("under the base URL");
        let claims = keys.verify(Purpose::Unsubscribe, token).unwrap();
        assert_eq!(
            (claims.campaign_id, claims.recipient_id),
            (campaign, RecipientId::new(42))
        );
    }

    #[test]
    fn bounce_addresses_carry_a_bounce_token_within_the_smtp_local_part_limit() {
        let keys = TokenKeys::new(&[7u8; 32], []).unwrap();
        let campaign = campaign::CampaignId::now_v7();
        let plain = Links::new("https://mail.example.com", keys.clone());
        assert_eq!(plain.bounce_address(campaign, RecipientId::new(7)), None);
        let links = plain.with_verp_domain(Some("bounce.example.com".into()));
        let address = links
            .bounce_address(campaign, RecipientId::new(7))
            .expect("VERP is on");
        let (local, domain) = address.rsplit_once('@').unwrap();
        assert_eq!(domain, "bounce.example.com");
        assert!(local.len() <= 64, "{local} is {} octets", local.len());
        let token = crate::feedback::verp_token(&address, VERP_PREFIX).unwrap();
        let claims = keys.verify(Purpose::Bounce, token).unwrap();
        assert_eq!(
            (claims.campaign_id, claims.recipient_id),
            (campaign, RecipientId::new(7))
        );
        assert!(keys.verify(Purpose::Unsubscribe, token).is_err());
    }
}
