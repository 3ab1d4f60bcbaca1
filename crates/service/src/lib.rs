//! The campaign service: the business logic of managing a campaign, one place for each step
//! whoever asks for it (the HTTP API, `marketing send`/`submit`/`validate`, a
//! `submit_campaign` task, the campaign processor).
//!
//! - [`new_campaign`]: a document read and checked as every new campaign is
//!   ([`read_new_campaign`], [`check_new_campaign`], [`check_variables`]), then stored
//!   ([`CampaignService::create`]); recipients added to it ([`CampaignService::add_recipients`]).
//! - [`control`]: the status changes — schedule, unschedule, send (queued with its
//!   `send_campaign` task), pause, resume, cancel, retry-failed — each allowed by the table on
//!   [`campaign::CampaignStatus`], which also words the refusal.
//! - [`test_send`]: the rendered message to a few addresses, touching no campaign state.
//!
//! Every failure is one [`CampaignError`]; the API maps it to problem+json in one place.

pub mod ab;
pub mod control;
pub mod new_campaign;
pub mod test_send;

pub use ab::{AbChoice, AbDecided, AbTestPhase, AbTestView, ab_test_view};
pub use control::{RetryFailed, SEND_CAMPAIGN, SendCampaign, record_campaign_ended};
pub use new_campaign::{check_new_campaign, check_variables, read_new_campaign};
pub use test_send::{
    MAX_TEST_ADDRESSES, TEST_SUBJECT_MARK, TestSend, TestSendResult, TestSendStatus, TestSender,
    parse_test_addresses,
};

use campaign::{CampaignId, CampaignStatus, Problem, TransitionRefused};
use store::{CampaignRecord, CampaignStore, StoreError};
use tasks::{TaskError, TaskRepository};

/// Why the campaign service did not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum CampaignError {
    /// Input that is not JSON, or not what the service can accept (every problem listed,
    /// each named by its field path).
    #[error(transparent)]
    Invalid(#[from] campaign::ValidationError),
    /// More recipients than one request (or task) may carry.
    #[error("{count} recipients given, at most {limit} may come with one request")]
    TooManyRecipients { count: u64, limit: u64 },
    #[error("campaign {0} does not exist")]
    NotFound(CampaignId),
    /// The status change is not in the transition table for the campaign's current state.
    #[error("campaign {id} is {}; {refusal}", refusal.from)]
    Refused {
        id: CampaignId,
        refusal: TransitionRefused,
    },
    /// An A/B test was asked of a campaign without one.
    #[error("campaign {0} has no A/B test (its document has no `ab_test`)")]
    NotAnAbTest(CampaignId),
    /// The A/B test has not started (the campaign was not sent yet), or the campaign is in a
    /// state that cannot be decided (cancelled, finished).
    #[error(
        "campaign {id} is {status}: its A/B test can be decided only while its test slice is sending (sending or paused)"
    )]
    AbNotStarted {
        id: CampaignId,
        status: CampaignStatus,
    },
    /// A winner was already chosen: the rest of the list goes to it.
    #[error(
        "campaign {id}'s A/B test is already decided: variant {winner:?} won and the rest of the list goes to it"
    )]
    AbDecided { id: CampaignId, winner: String },
    /// A finished campaign whose failed recipients are all suppressed (or that has none).
    #[error(
        "campaign {0} cannot retry its failed recipients: it has no failed recipient that may be retried (suppressed addresses are never retried)"
    )]
    NothingToRetry(CampaignId),
    /// A test send over the caller's quota: nothing was sent.
    #[error("{detail}")]
    QuotaExceeded {
        detail: String,
        retry_after_seconds: u64,
    },
    /// This process has no mail transport (test sends need one).
    #[error("this process has no mail transport to send tests with")]
    NoTransport,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the task repository failed: {0}")]
    Tasks(#[from] TaskError),
    /// A defect: something the service built could not be encoded or finished.
    #[error("{0}")]
    Internal(String),
}

impl From<message::NewCampaignError> for CampaignError {
    fn from(err: message::NewCampaignError) -> Self {
        match err {
            message::NewCampaignError::Invalid(problems) => CampaignError::invalid(problems),
            message::NewCampaignError::TooManyRecipients { count, limit } => {
                CampaignError::TooManyRecipients {
                    count: count as u64,
                    limit,
                }
            }
        }
    }
}

impl CampaignError {
    /// Problems that must be fixed, each named by its field path.
    pub fn invalid(problems: Vec<Problem>) -> Self {
        CampaignError::Invalid(campaign::ValidationError::Invalid(problems))
    }
}

/// The campaign service over a store and a task repository. Cheap to make: it borrows what
/// it works on, so every caller builds one where it needs it.
#[derive(Clone, Copy)]
pub struct CampaignService<'a> {
    store: &'a dyn CampaignStore,
    tasks: &'a dyn TaskRepository,
    message_settings: &'a message::MessageSettings,
}

/// The template limits of a caller that configures none.
static DEFAULT_MESSAGE_SETTINGS: std::sync::LazyLock<message::MessageSettings> =
    std::sync::LazyLock::new(message::MessageSettings::default);

impl<'a> CampaignService<'a> {
    pub fn new(store: &'a dyn CampaignStore, tasks: &'a dyn TaskRepository) -> Self {
        CampaignService {
            store,
            tasks,
            message_settings: &DEFAULT_MESSAGE_SETTINGS,
        }
    }

    /// Template limits (fuel, recursion, rendered size) other than the defaults.
    pub fn with_message_settings(mut self, settings: &'a message::MessageSettings) -> Self {
        self.message_settings = settings;
        self
    }

    /// The campaign, or `NotFound`.
    pub async fn find(&self, id: CampaignId) -> Result<CampaignRecord, CampaignError> {
        self.store
            .get_campaign(id)
            .await?
            .ok_or(CampaignError::NotFound(id))
    }

    /// The campaign's status, read fresh.
    async fn status(&self, id: CampaignId) -> Result<CampaignStatus, CampaignError> {
        self.store
            .campaign_status(id)
            .await?
            .ok_or(CampaignError::NotFound(id))
    }
}
