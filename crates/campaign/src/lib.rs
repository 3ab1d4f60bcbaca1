//! The campaign model: the self-contained campaign document with its embedded templates,
//! the recipients that come with it, and the validation that is the only way in.
//!
//! Nothing here performs I/O: readers are handed in, so the same code validates a file, an
//! HTTP body or a test string.

pub mod ab;
pub mod address;
pub mod document;
pub mod id;
pub mod local_time;
pub mod recipient;
pub mod schema;
pub mod status;
pub mod submission;
pub mod timestamp;

pub use address::{AddressError, EmailAddress, Mailbox};
pub use document::{
    AbMetric, AbTest, CampaignDocument, Limits, ListId, MAX_MAX_RATE, MIN_MAX_RATE, NamedListId,
    Problem, RetryPolicy, Templates, TrackingOptions, UndefinedVariables, ValidationError, Variant,
    ab_slice, parse_decide_after,
};
pub use id::{CampaignId, RecipientId};
pub use local_time::{LocalSendTime, LocalTimeError, RecipientZone};
pub use recipient::{
    CsvRecipients, JsonLinesRecipients, JsonRecipients, Recipient, RecipientError, RecipientFormat,
    RecipientRows, RowError,
};
pub use status::{CampaignAction, CampaignStatus, DeliveryStatus, TransitionRefused};
