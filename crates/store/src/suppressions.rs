//! The suppression list, and the bounces and complaints that feed it.

use crate::StoreError;
use async_trait::async_trait;
use campaign::{CampaignId, EmailAddress, RecipientId};
use serde::Serialize;
use std::collections::HashSet;
use time::OffsetDateTime;

/// Addresses never sent to, and the feedback that puts them there.
#[async_trait]
pub trait SuppressionRepository: Send + Sync {
    /// Of these email keys, the ones on the suppression list.
    async fn suppressed_among(&self, email_keys: &[String]) -> Result<HashSet<String>, StoreError>;

    /// Puts an address on the suppression list (idempotent: the first reason is kept).
    async fn suppress(&self, email: &EmailAddress, reason: &str) -> Result<(), StoreError>;

    /// One page of the suppression list, ordered by address; `after` is the previous page's
    /// last email key.
    async fn list_suppressions(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Suppression>, StoreError>;

    /// Takes an address off the suppression list; false when it was not on it.
    async fn remove_suppression(&self, email: &EmailAddress) -> Result<bool, StoreError>;

    /// Records a bounce or complaint (see [`NewFeedbackEvent`]); when it is attributed to a
    /// campaign, also as a tracking event (`bounce_hard`, `bounce_soft`, `complaint`) for the
    /// campaign's analytics, in the same transaction.
    async fn record_feedback(&self, event: &NewFeedbackEvent) -> Result<(), StoreError>;

    /// Soft bounces recorded for this address (email key) at or after `since`, across all
    /// campaigns: what SOFT_BOUNCE_LIMIT is compared with.
    async fn soft_bounces_since(
        &self,
        email_key: &str,
        since: OffsetDateTime,
    ) -> Result<i64, StoreError>;

    /// Bounces and complaints of one campaign, oldest first.
    async fn campaign_feedback(&self, id: CampaignId) -> Result<Vec<FeedbackEvent>, StoreError>;
}

/// An address that is never sent to, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Suppression {
    pub email: String,
    /// e.g. `unsubscribed`, `hard_bounce`, `complaint`, `manual`.
    pub reason: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl Suppression {
    /// The key the list is ordered by: pass it as `after` to continue past this entry.
    pub fn key(&self) -> String {
        EmailAddress::parse(&self.email)
            .map_or_else(|_| self.email.to_lowercase(), |email| email.key())
    }
}

/// What a bounce or complaint means for its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FeedbackKind {
    /// A permanent failure (5.x.x): the address is suppressed at once.
    HardBounce,
    /// A temporary failure (4.x.x, delayed, or expired after retries).
    SoftBounce,
    /// A spam complaint (ARF): the address is suppressed at once.
    Complaint,
}

impl FeedbackKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FeedbackKind::HardBounce => "hard_bounce",
            FeedbackKind::SoftBounce => "soft_bounce",
            FeedbackKind::Complaint => "complaint",
        }
    }
}

impl std::str::FromStr for FeedbackKind {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        [
            FeedbackKind::HardBounce,
            FeedbackKind::SoftBounce,
            FeedbackKind::Complaint,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == value)
        .ok_or_else(|| format!("unknown feedback kind {value:?}"))
    }
}

/// A bounce or complaint to record. `campaign_id`/`recipient_id` are set when the report
/// could be attributed to a recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct NewFeedbackEvent {
    pub campaign_id: Option<CampaignId>,
    pub recipient_id: Option<RecipientId>,
    pub email: EmailAddress,
    pub kind: FeedbackKind,
    /// The enhanced status code of a bounce (`5.1.1`), or a complaint's feedback type.
    pub status: Option<String>,
    /// The RFC 3464 action of a bounce (`failed`, `delayed`).
    pub action: Option<String>,
    /// The remote server's diagnostic (`smtp; 550 5.1.1 …`).
    pub diagnostic: Option<String>,
    pub occurred_at: OffsetDateTime,
}

/// A recorded bounce or complaint.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct FeedbackEvent {
    #[schema(value_type = Option<String>, format = Uuid)]
    pub campaign_id: Option<CampaignId>,
    pub recipient_id: Option<RecipientId>,
    pub email: String,
    pub kind: FeedbackKind,
    pub status: Option<String>,
    pub action: Option<String>,
    pub diagnostic: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
}
