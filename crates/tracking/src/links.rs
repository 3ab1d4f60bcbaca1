//! The public links a message carries, signed per recipient.

use crate::token::{ANONYMOUS_RECIPIENT, Purpose, TokenKeys, unsubscribe_url};
use campaign::{CampaignId, RecipientId};

/// Builds recipients' links under PUBLIC_BASE_URL with their signed tokens.
#[derive(Debug, Clone)]
pub struct Links {
    public_base_url: String,
    keys: TokenKeys,
    /// TRACKING_AGGREGATE_ONLY: every campaign's opens and clicks are anonymous.
    aggregate_only: bool,
}

impl Links {
    pub fn new(public_base_url: &str, keys: TokenKeys) -> Links {
        Links {
            public_base_url: public_base_url.trim_end_matches('/').to_string(),
            keys,
            aggregate_only: false,
        }
    }

    /// Makes open and click links anonymous for every campaign (the global privacy setting).
    pub fn with_aggregate_only(mut self, aggregate_only: bool) -> Links {
        self.aggregate_only = aggregate_only;
        self
    }

    /// The recipient id open and click links name: the recipient's own, or
    /// [`ANONYMOUS_RECIPIENT`] when the campaign or the service tracks aggregate-only.
    /// (Unsubscribe links always name the recipient: they must suppress the address.)
    pub fn tracked_recipient(
        &self,
        campaign_aggregate_only: bool,
        recipient_id: RecipientId,
    ) -> RecipientId {
        if campaign_aggregate_only || self.aggregate_only {
            ANONYMOUS_RECIPIENT
        } else {
            recipient_id
        }
    }

    /// `{PUBLIC_BASE_URL}/u/{token}`: the List-Unsubscribe URL and the visible link.
    pub fn unsubscribe(&self, campaign_id: CampaignId, recipient_id: RecipientId) -> String {
        let token = self
            .keys
            .sign(Purpose::Unsubscribe, campaign_id, recipient_id);
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
        let campaign = uuid::Uuid::now_v7();
        let pixel = links.open_pixel(campaign, 5);
        let token = pixel.strip_prefix("https://mail.example.com/t/o/").unwrap();
        assert_eq!(keys.verify(Purpose::Open, token).unwrap().recipient_id, 5);
        let click = links.click(campaign, 5, 2);
        let token = click.strip_prefix("https://mail.example.com/t/c/").unwrap();
        assert_eq!(keys.verify_click(token).unwrap().1, 2);

        assert_eq!(links.tracked_recipient(false, 5), 5);
        assert_eq!(links.tracked_recipient(true, 5), ANONYMOUS_RECIPIENT);
        let private = links.with_aggregate_only(true);
        assert_eq!(private.tracked_recipient(false, 5), ANONYMOUS_RECIPIENT);
    }

    #[test]
    fn unsubscribe_links_carry_a_token_that_verifies_for_their_recipient() {
        let keys = TokenKeys::new(&[7u8; 32], []).unwrap();
        let links = Links::new("https://mail.example.com/", keys.clone());
        let campaign = uuid::Uuid::now_v7();
        let url = links.unsubscribe(campaign, 42);
        let token = url
            .strip_prefix("https://mail.example.com/u/")
            .expect("under the base URL");
        let claims = keys.verify(Purpose::Unsubscribe, token).unwrap();
        assert_eq!((claims.campaign_id, claims.recipient_id), (campaign, 42));
    }
}
