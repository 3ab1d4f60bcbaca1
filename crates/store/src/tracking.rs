//! Tracking events (opens, clicks, unsubscribes, and bounces and complaints attributed to a
//! campaign): appended, read back in order, and counted for the analytics report.

use crate::StoreError;
use async_trait::async_trait;
use campaign::{CampaignId, RecipientId};
use serde::Serialize;
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// Tracking events.
#[async_trait]
pub trait TrackingRepository: Send + Sync {
    /// Appends tracking events (opens, clicks, unsubscribes, bounces, complaints) in one
    /// multi-row insert per chunk, inside one transaction: all of them or none.
    async fn record_tracking_events(&self, events: &[TrackingEvent]) -> Result<(), StoreError>;

    /// Tracking events in the order they were recorded, optionally of one campaign only;
    /// `after` is the previous page's last id, so a reader (webhooks, exports) can follow the
    /// table as it grows.
    async fn list_tracking_events(
        &self,
        campaign: Option<CampaignId>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<RecordedTrackingEvent>, StoreError>;

    /// A campaign's tracking events counted: per kind, per clicked link, and per hour.
    async fn engagement_counts(&self, id: CampaignId) -> Result<EngagementCounts, StoreError>;
}

/// What a tracking event says happened.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TrackingEventKind {
    /// The open pixel was fetched.
    Open,
    /// A tracked link was followed.
    Click,
    /// The recipient unsubscribed (one-click POST or the confirmation page).
    Unsubscribe,
    /// A permanent delivery failure reported after the message was accepted (5.x.x DSN).
    BounceHard,
    /// A temporary delivery failure reported after acceptance (4.x.x DSN, delayed).
    BounceSoft,
    /// A spam complaint (ARF feedback report).
    Complaint,
}

impl TrackingEventKind {
    pub const ALL: [TrackingEventKind; 6] = [
        TrackingEventKind::Open,
        TrackingEventKind::Click,
        TrackingEventKind::Unsubscribe,
        TrackingEventKind::BounceHard,
        TrackingEventKind::BounceSoft,
        TrackingEventKind::Complaint,
    ];

    /// The stored name (the `kind` column).
    pub fn as_str(self) -> &'static str {
        match self {
            TrackingEventKind::Open => "open",
            TrackingEventKind::Click => "click",
            TrackingEventKind::Unsubscribe => "unsubscribe",
            TrackingEventKind::BounceHard => "bounce_hard",
            TrackingEventKind::BounceSoft => "bounce_soft",
            TrackingEventKind::Complaint => "complaint",
        }
    }
}

impl std::fmt::Display for TrackingEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TrackingEventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TrackingEventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| format!("unknown tracking event kind {s:?}"))
    }
}

/// Something that happened to a campaign's message after it was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrackingEvent {
    pub campaign_id: CampaignId,
    /// `None` when the event is recorded aggregate-only (privacy setting).
    pub recipient_id: Option<RecipientId>,
    pub kind: TrackingEventKind,
    /// For clicks: the index of the link in the campaign's HTML template.
    pub link_index: Option<u16>,
    /// Free text: a bounce's diagnostic, a complaint's feedback type.
    pub detail: Option<String>,
    /// A keyed hash of the client's IP address; the address itself is never stored.
    pub ip_hash: Option<String>,
    /// The A/B variant an anonymous event's link named (aggregate-only tracking); events
    /// that name their recipient take the recipient's variant from its row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<u8>,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
}

/// Events of one kind: how many, and how many distinct recipients (events recorded
/// aggregate-only count in `total` but name no recipient).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EventCount {
    pub total: i64,
    pub unique: i64,
}

/// A campaign's tracking events counted, as the analytics report needs them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngagementCounts {
    pub by_kind: BTreeMap<TrackingEventKind, EventCount>,
    /// Clicks per link index.
    pub by_link: BTreeMap<u16, EventCount>,
    /// Events per hour (the hour's start) and kind.
    pub hourly: BTreeMap<OffsetDateTime, BTreeMap<TrackingEventKind, i64>>,
}

impl EngagementCounts {
    pub fn of(&self, kind: TrackingEventKind) -> EventCount {
        self.by_kind.get(&kind).copied().unwrap_or_default()
    }
}

/// A stored tracking event with its id (ids grow in insertion order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordedTrackingEvent {
    pub id: i64,
    #[serde(flatten)]
    pub event: TrackingEvent,
}
