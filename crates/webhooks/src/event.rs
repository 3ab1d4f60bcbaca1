//! The events receivers get.

use campaign::{CampaignId, RecipientId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The SMTP server accepted the message.
    Sent,
    /// Delivery failed for good (permanent error or retries exhausted).
    Failed,
    /// A bounce came back (`detail.severity`: hard or soft).
    Bounced,
    /// A spam complaint (ARF feedback loop).
    Complained,
    /// The open pixel was loaded.
    Opened,
    /// A tracked link was followed.
    Clicked,
    /// The recipient unsubscribed.
    Unsubscribed,
}

/// One event as sent: `{"id", "kind", "occurred_at", "campaign_id", "recipient_id", "email",
/// "detail"}`. `id` is unique per event, for receivers to deduplicate retried deliveries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: uuid::Uuid,
    pub kind: EventKind,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<CampaignId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient_id: Option<RecipientId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// Kind-specific facts: the SMTP reply or error, the bounce status and diagnostic, the
    /// clicked URL.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

impl Event {
    /// A new event happening now.
    pub fn new(
        kind: EventKind,
        campaign_id: Option<CampaignId>,
        recipient_id: Option<RecipientId>,
        email: Option<String>,
        detail: serde_json::Value,
    ) -> Event {
        Event {
            id: uuid::Uuid::now_v7(),
            kind,
            occurred_at: OffsetDateTime::now_utc(),
            campaign_id,
            recipient_id,
            email,
            detail,
        }
    }
}
