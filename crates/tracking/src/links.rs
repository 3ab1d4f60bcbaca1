//! The public links a message carries, signed per recipient.

use crate::token::{Purpose, TokenKeys, unsubscribe_url};
use campaign::{CampaignId, RecipientId};

/// Builds recipients' links under PUBLIC_BASE_URL with their signed tokens.
#[derive(Debug, Clone)]
pub struct Links {
    public_base_url: String,
    keys: TokenKeys,
}

impl Links {
    pub fn new(public_base_url: &str, keys: TokenKeys) -> Links {
        Links {
            public_base_url: public_base_url.trim_end_matches('/').to_string(),
            keys,
        }
    }

    /// `{PUBLIC_BASE_URL}/u/{token}`: the List-Unsubscribe URL and the visible link.
    pub fn unsubscribe(&self, campaign_id: CampaignId, recipient_id: RecipientId) -> String {
        let token = self
            .keys
            .sign(Purpose::Unsubscribe, campaign_id, recipient_id);
        unsubscribe_url(&self.public_base_url, &token)
    }

    pub fn keys(&self) -> &TokenKeys {
        &self.keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
