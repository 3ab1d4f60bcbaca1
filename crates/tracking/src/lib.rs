//! Tracking: what happens to a campaign's messages after they are sent.
//!
//! - The signed per-recipient tokens that unsubscribe, open, click and VERP return-path links
//!   carry ([`token`], [`links`]).
//! - Engagement ([`engagement`]): opens, clicks and unsubscribes verified and decided, then
//!   published — counted, announced to the webhooks and queued on the
//!   [`TrackingEventRecorder`] ([`recorder`]), whose writer stores them in batches.
//! - Bounces and complaints: the parser of the reports that come back ([`feedback`]) and the
//!   [`Intake`] ([`intake`]) that attributes them to a recipient, records them and applies the
//!   suppression rule.
//!
//! No HTTP here: the API's handlers parse requests, call this crate and map its errors, so a
//! mailbox poller can use the same intake.

pub mod engagement;
pub mod feedback;
pub mod intake;
pub mod links;
pub mod recorder;
pub mod token;

pub use engagement::{Engagement, EngagementError};
pub use intake::{Intake, IntakeError, IntakeResult, SoftBounceRule};
pub use links::{Links, VERP_PREFIX};
pub use recorder::TrackingEventRecorder;
/// What a bounce or complaint means for its address; stored with every feedback event.
pub use store::FeedbackKind;
pub use token::{
    ANONYMOUS_RECIPIENT, Purpose, TokenClaims, TokenError, TokenKeys, unsubscribe_url,
};
