//! What recipients' mail clients do after a message arrives: opens (the pixel), clicks (the
//! redirect) and unsubscribes. The HTTP endpoints hand over the token from the URL and the
//! client's address; this module verifies the token, decides, and publishes the event.
//!
//! Every URL carries a signed token (see [`crate::token`]); a forged, altered or misplaced
//! token is an [`EngagementError::UnknownLink`] and records nothing. Events are queued on the
//! [`TrackingEventRecorder`], so a caller never waits for the database to record one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use campaign::{CampaignId, EmailAddress};
use store::{CampaignStore, StoreError, TrackingEvent, TrackingEventKind};
use time::OffsetDateTime;

use crate::recorder::TrackingEventRecorder;
use crate::token::{Purpose, TokenClaims, TokenError, TokenKeys};

/// Why an engagement request is refused.
#[derive(Debug, thiserror::Error)]
pub enum EngagementError {
    /// A bad token or a link the campaign does not have: no hint whether the signature, the
    /// campaign or the link index was wrong.
    #[error("this link is not valid")]
    UnknownLink,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A recorded test message whose address no longer parses.
    #[error("test send {id}: {reason}")]
    CorruptTestSend { id: i64, reason: String },
}

/// Opens, clicks and unsubscribes: the event recorder, the webhooks they are announced to,
/// and the click targets of the campaigns clicked recently.
#[derive(Clone)]
pub struct Engagement {
    store: Arc<dyn CampaignStore>,
    keys: TokenKeys,
    events: TrackingEventRecorder,
    webhooks: webhooks::EventSink,
    click_targets: Arc<Mutex<HashMap<CampaignId, Arc<ClickTargets>>>>,
}

/// A campaign's tracked link URLs: its HTML template's, and those of each A/B variant that
/// has an HTML template of its own (`None`: the variant keeps the campaign's).
struct ClickTargets {
    campaign: Arc<[String]>,
    variants: Vec<Option<Arc<[String]>>>,
}

/// Campaigns whose click targets are kept in memory; beyond it the cache starts over.
const CLICK_TARGET_CAMPAIGNS: usize = 1_000;

impl Engagement {
    /// Starts the event writer on the current tokio runtime. `keys` verify the links' tokens
    /// (and hash client addresses); `webhooks` receives opened, clicked and unsubscribed.
    pub fn start(
        store: Arc<dyn CampaignStore>,
        keys: TokenKeys,
        webhooks: webhooks::EventSink,
    ) -> Engagement {
        Engagement {
            events: TrackingEventRecorder::start(store.clone()),
            store,
            keys,
            webhooks,
            click_targets: Arc::default(),
        }
    }

    /// The recorder events are queued on (to flush it at shutdown).
    pub fn events(&self) -> &TrackingEventRecorder {
        &self.events
    }

    /// Records an open from the pixel of `token`, fetched from `client`. Queued, not stored:
    /// the pixel is served even while the database is down.
    pub async fn open(&self, token: &str, client: Option<IpAddr>) -> Result<(), EngagementError> {
        let claims = self
            .keys
            .verify(Purpose::Open, token)
            .map_err(|_| EngagementError::UnknownLink)?;
        let event = self.event(&claims, TrackingEventKind::Open, None, client);
        self.publish(event).await;
        Ok(())
    }

    /// Records a click of `token`'s link and answers the URL to redirect to: the one the
    /// campaign's HTML template has at the token's link index, and nowhere else.
    pub async fn click(
        &self,
        token: &str,
        client: Option<IpAddr>,
    ) -> Result<String, EngagementError> {
        let (claims, link_index) = self
            .keys
            .verify_click(token)
            .map_err(|_| EngagementError::UnknownLink)?;
        let targets = self.click_targets(claims.campaign_id).await?;
        let targets = if targets.variants.iter().any(Option::is_some) {
            // The link index is into the HTML the recipient's variant was sent.
            let variant = match claims.named_recipient() {
                Some(recipient) => self
                    .store
                    .get_recipient(claims.campaign_id, recipient)
                    .await?
                    .and_then(|recipient| recipient.variant),
                None => claims.anonymous_variant(),
            };
            variant
                .and_then(|variant| {
                    targets
                        .variants
                        .get(usize::from(variant))
                        .cloned()
                        .flatten()
                })
                .unwrap_or_else(|| targets.campaign.clone())
        } else {
            targets.campaign.clone()
        };
        let target = targets
            .get(usize::from(link_index))
            .ok_or(EngagementError::UnknownLink)?
            .clone();
        let event = self.event(&claims, TrackingEventKind::Click, Some(link_index), client);
        self.publish(event).await;
        Ok(target)
    }

    /// The claims of an unsubscribe link: a campaign's (naming a recipient) or a test
    /// message's (naming the test send). Every other token is an unknown link.
    pub fn verify_unsubscribe(&self, token: &str) -> Result<TokenClaims, EngagementError> {
        match self.keys.verify(Purpose::Unsubscribe, token) {
            Err(TokenError::WrongPurpose {
                actual: Purpose::TestUnsubscribe,
                ..
            }) => self.keys.verify(Purpose::TestUnsubscribe, token),
            verified => verified,
        }
        .map_err(|_| EngagementError::UnknownLink)
    }

    /// Unsubscribes the address `token` names: it goes on the suppression list at once, so
    /// every later send skips it. Already unsubscribed is no error.
    pub async fn unsubscribe(
        &self,
        token: &str,
        client: Option<IpAddr>,
    ) -> Result<(), EngagementError> {
        let claims = self.verify_unsubscribe(token)?;
        if claims.purpose == Purpose::TestUnsubscribe {
            // A test message names no recipient: its address is suppressed, and no campaign
            // event is recorded (a test is not part of the campaign's results).
            let test = self
                .store
                .test_send(claims.recipient_id.get())
                .await?
                .filter(|test| test.campaign_id == claims.campaign_id)
                .ok_or(EngagementError::UnknownLink)?;
            let address = EmailAddress::parse(&test.email).map_err(|err| {
                EngagementError::CorruptTestSend {
                    id: test.id,
                    reason: err.to_string(),
                }
            })?;
            self.store.suppress(&address, "unsubscribed").await?;
            return Ok(());
        }
        let recipient = self
            .store
            .get_recipient(claims.campaign_id, claims.recipient_id)
            .await?
            .ok_or(EngagementError::UnknownLink)?;
        self.store
            .suppress(&recipient.recipient.email, "unsubscribed")
            .await?;
        let mut event = self.event(&claims, TrackingEventKind::Unsubscribe, None, client);
        // An unsubscribe always names its recipient: it acts on the address.
        event.recipient_id = Some(claims.recipient_id);
        self.publish(event).await;
        Ok(())
    }

    /// The one place opens, clicks and unsubscribes pass through: counted in
    /// `tracking_events_total{kind}`, announced to the webhook endpoints and queued for the
    /// store (nothing here waits for a database or a receiver). Bounces and complaints take
    /// the same three steps in the [`crate::intake`], which stores them with their report.
    pub async fn publish(&self, event: TrackingEvent) {
        metrics::record_tracking_event(event.kind.as_str());
        let kind = match event.kind {
            TrackingEventKind::Open => Some(webhooks::EventKind::Opened),
            TrackingEventKind::Click => Some(webhooks::EventKind::Clicked),
            TrackingEventKind::Unsubscribe => Some(webhooks::EventKind::Unsubscribed),
            // The bounce intake announces bounces and complaints itself.
            _ => None,
        };
        if let Some(kind) = kind {
            let detail = match event.link_index {
                Some(link_index) => serde_json::json!({ "link_index": link_index }),
                None => serde_json::json!({}),
            };
            self.webhooks.recipient_event(
                kind,
                Some(event.campaign_id),
                event.recipient_id,
                None,
                detail,
            );
        }
        self.events.record(event).await;
    }

    fn event(
        &self,
        claims: &TokenClaims,
        kind: TrackingEventKind,
        link_index: Option<u16>,
        client: Option<IpAddr>,
    ) -> TrackingEvent {
        TrackingEvent {
            campaign_id: claims.campaign_id,
            // Aggregate-only links name no recipient, and their events store none.
            recipient_id: claims.named_recipient(),
            variant: claims.anonymous_variant(),
            kind,
            link_index,
            detail: None,
            // The client's address as a keyed hash: the address itself is never stored.
            ip_hash: client.map(|ip| self.keys.hash_ip(ip)),
            occurred_at: OffsetDateTime::now_utc(),
        }
    }

    /// The URLs of the campaign's tracked links, in link-index order. A campaign's document
    /// does not change once its mail is out, so they are read once per campaign.
    async fn click_targets(
        &self,
        campaign_id: CampaignId,
    ) -> Result<Arc<ClickTargets>, EngagementError> {
        if let Some(targets) = self.lock_targets().get(&campaign_id) {
            return Ok(targets.clone());
        }
        let record = self
            .store
            .get_campaign(campaign_id)
            .await?
            .ok_or(EngagementError::UnknownLink)?;
        let document = &record.document;
        let links_of = |html: Option<&String>| -> Arc<[String]> {
            match (html, document.tracking.clicks) {
                (Some(html), true) => message::tracked_links(html).into(),
                _ => Arc::new([]),
            }
        };
        let targets = Arc::new(ClickTargets {
            campaign: links_of(document.templates.html.as_ref()),
            variants: document
                .variants
                .iter()
                .map(|variant| variant.html.as_ref().map(|html| links_of(Some(html))))
                .collect(),
        });
        let mut cache = self.lock_targets();
        if cache.len() >= CLICK_TARGET_CAMPAIGNS {
            cache.clear();
        }
        cache.insert(campaign_id, targets.clone());
        Ok(targets)
    }

    fn lock_targets(&self) -> MutexGuard<'_, HashMap<CampaignId, Arc<ClickTargets>>> {
        // The map holds no invariant a panicking holder could break.
        self.click_targets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
