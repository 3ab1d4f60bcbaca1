//! Tracking: the signed per-recipient tokens that unsubscribe, open and click links carry
//! ([`token`], [`links`]), and the parser of delivery status notifications and spam
//! complaints that come back ([`feedback`]). Pure: the HTTP endpoints, events and suppression
//! logic that use them live with the API and the store.

pub mod feedback;
pub mod links;
pub mod token;

pub use links::{Links, VERP_PREFIX};
pub use token::{
    ANONYMOUS_RECIPIENT, Purpose, TokenClaims, TokenError, TokenKeys, unsubscribe_url,
};
