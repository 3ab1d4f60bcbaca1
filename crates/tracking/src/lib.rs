//! Tracking: the signed per-recipient tokens that unsubscribe, open and click links carry.
//!
//! Only the token scheme lives here so far; the HTTP endpoints, events and suppression logic
//! that consume tokens are added by later work on top of [`token`].

pub mod feedback;
pub mod links;
pub mod token;

pub use links::Links;
pub use token::{Purpose, TokenClaims, TokenError, TokenKeys, unsubscribe_url};
