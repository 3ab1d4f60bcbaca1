//! The public engagement endpoints that recipients' mail clients reach, without an API key:
//! the open pixel (`/t/o/{token}`), the click redirect (`/t/c/{token}`) and unsubscribe
//! (`/u/{token}`, RFC 8058 one-click POST and a confirmation page on GET).
//!
//! Every URL carries a signed token (see `tracking::token`); a forged, altered or misplaced
//! token gets 404 and records nothing. Events are handed to the [`TrackingEventRecorder`],
//! whose writer task stores them in batches, so the endpoints answer without waiting for the
//! database.

use crate::problem::ProblemDetails;
use crate::{ApiError, AppState};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{Extensions, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use campaign::CampaignId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use store::{CampaignStore, TrackingEvent, TrackingEventKind};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tracking::{ANONYMOUS_RECIPIENT, Purpose};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(open_pixel))
        .routes(routes!(click))
        .routes(routes!(unsubscribe_page, unsubscribe))
}

/// The smallest transparent GIF: 1×1, one transparent colour.
const PIXEL_GIF: [u8; 43] = [
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// Proxies and mail clients must fetch the pixel (and follow the redirect) every time, or
/// repeat opens and clicks are never seen.
const NO_CACHE: &str = "no-store, no-cache, must-revalidate, max-age=0";

/// What the engagement endpoints share: the event recorder and the click targets of the
/// campaigns clicked recently.
#[derive(Clone)]
pub struct Engagement {
    events: TrackingEventRecorder,
    click_targets: Arc<Mutex<HashMap<CampaignId, Arc<[String]>>>>,
}

/// Campaigns whose click targets are kept in memory; beyond it the cache starts over.
const CLICK_TARGET_CAMPAIGNS: usize = 1_000;

impl Engagement {
    /// Starts the event writer on the current tokio runtime.
    pub fn start(store: Arc<dyn CampaignStore>) -> Engagement {
        Engagement {
            events: TrackingEventRecorder::start(store),
            click_targets: Arc::default(),
        }
    }

    pub fn events(&self) -> &TrackingEventRecorder {
        &self.events
    }

    /// The URLs of the campaign's tracked links, in link-index order. A campaign's document
    /// does not change once its mail is out, so they are read once per campaign.
    async fn click_targets(
        &self,
        store: &dyn CampaignStore,
        campaign_id: CampaignId,
    ) -> Result<Arc<[String]>, ApiError> {
        if let Some(targets) = self.lock_targets().get(&campaign_id) {
            return Ok(targets.clone());
        }
        let record = store
            .get_campaign(campaign_id)
            .await?
            .ok_or_else(unknown_link)?;
        let document = &record.document;
        let targets: Arc<[String]> = match (&document.templates.html, document.tracking.clicks) {
            (Some(html), true) => message::tracked_links(html).into(),
            _ => Arc::new([]),
        };
        let mut cache = self.lock_targets();
        if cache.len() >= CLICK_TARGET_CAMPAIGNS {
            cache.clear();
        }
        cache.insert(campaign_id, targets.clone());
        Ok(targets)
    }

    fn lock_targets(&self) -> std::sync::MutexGuard<'_, HashMap<CampaignId, Arc<[String]>>> {
        // The map holds no invariant a panicking holder could break.
        self.click_targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

enum Message {
    Event(TrackingEvent),
    /// Answered once everything queued before it is stored (or given up on).
    Flush(oneshot::Sender<()>),
}

/// Tracking events on their way to the store. Handlers hand an event over and return; one
/// writer task stores whatever has queued up with one multi-row insert, so a burst of pixel
/// hits costs a few transactions, not one each.
#[derive(Clone)]
pub struct TrackingEventRecorder {
    sender: mpsc::Sender<Message>,
}

/// Events that may wait for the writer; beyond it handlers wait (back-pressure, nothing lost).
const QUEUE: usize = 100_000;
/// The most events stored in one transaction.
const BATCH: usize = 2_000;

impl TrackingEventRecorder {
    /// Starts the writer task on the current tokio runtime. It ends when every recorder is
    /// dropped, after storing what was queued.
    pub fn start(store: Arc<dyn CampaignStore>) -> TrackingEventRecorder {
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(write_events(store, receiver));
        TrackingEventRecorder { sender }
    }

    /// Queues one tracking event for the writer.
    pub async fn record(&self, event: TrackingEvent) {
        if self.sender.send(Message::Event(event)).await.is_err() {
            tracing::error!("tracking event lost: the event writer has stopped");
        }
    }

    /// Waits until every event recorded before this call is stored (shutdown, tests).
    pub async fn flush(&self) {
        let (done, stored) = oneshot::channel();
        if self.sender.send(Message::Flush(done)).await.is_ok() {
            let _ = stored.await;
        }
    }
}

async fn write_events(store: Arc<dyn CampaignStore>, mut receiver: mpsc::Receiver<Message>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    while let Some(first) = receiver.recv().await {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Event(event) => batch.push(event),
                Message::Flush(done) => flushes.push(done),
            }
            if batch.len() < BATCH {
                next = receiver.try_recv().ok();
            }
        }
        store_batch(store.as_ref(), &batch).await;
        batch.clear();
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Stores a batch, retrying while the database is unreachable. Any other error is about
/// some row (say, its campaign was deleted meanwhile): the rows are then stored one by one
/// so only the bad ones are dropped, with a log line each.
async fn store_batch(store: &dyn CampaignStore, batch: &[TrackingEvent]) {
    let mut delay = std::time::Duration::from_millis(100);
    loop {
        match store.record_tracking_events(batch).await {
            Ok(()) => return,
            Err(store::StoreError::Unavailable(err)) => {
                tracing::warn!(
                    events = batch.len(),
                    "storing tracking events failed, retrying in {delay:?}: {err}"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
            Err(err) if batch.len() > 1 => {
                tracing::warn!(
                    events = batch.len(),
                    "storing tracking events failed, storing them one by one: {err}"
                );
                for event in batch {
                    Box::pin(store_batch(store, std::slice::from_ref(event))).await;
                }
                return;
            }
            Err(err) => {
                tracing::error!(event = ?batch.first(), "tracking event dropped: {err}");
                return;
            }
        }
    }
}

/// The answer to every bad token and unknown link: no hint whether the signature, the
/// campaign or the link index was wrong.
fn unknown_link() -> ApiError {
    ApiError::NotFound("this link is not valid".into())
}

/// The client's address as a keyed hash, when the server was started with connection info.
fn ip_hash(state: &AppState, extensions: &Extensions) -> Option<String> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| state.links.keys().hash_ip(address.ip()))
}

fn event(
    claims: &tracking::TokenClaims,
    kind: TrackingEventKind,
    link_index: Option<u16>,
    ip_hash: Option<String>,
) -> TrackingEvent {
    TrackingEvent {
        campaign_id: claims.campaign_id,
        // Aggregate-only links name no recipient, and their events store none.
        recipient_id: (claims.recipient_id != ANONYMOUS_RECIPIENT).then_some(claims.recipient_id),
        kind,
        link_index,
        detail: None,
        ip_hash,
        occurred_at: OffsetDateTime::now_utc(),
    }
}

/// The one place the engagement endpoints' opens, clicks and unsubscribes pass through: counted
/// in `tracking_events_total{kind}`, queued for the store and announced to the webhook
/// endpoints (nothing here waits for a database or a receiver). Bounces and complaints take
/// the same three steps in the bounce intake.
async fn publish(state: &AppState, event: TrackingEvent) {
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
        state.events.recipient_event(
            kind,
            Some(event.campaign_id),
            event.recipient_id,
            None,
            detail,
        );
    }
    state.engagement.events.record(event).await;
}

/// Record an open.
///
/// The open-tracking pixel: a 1×1 transparent GIF, never cached.
#[utoipa::path(
    get,
    path = "/t/o/{token}",
    tag = "tracking",
    operation_id = "track_open",
    params(("token" = String, Path, description = "Signed open token from the message")),
    responses(
        (status = 200, description = "A 1×1 transparent GIF; the open is recorded", content_type = "image/gif"),
        (status = 404, description = "Not a valid open token", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn open_pixel(
    State(state): State<AppState>,
    Path(token): Path<String>,
    extensions: Extensions,
) -> Result<Response, ApiError> {
    let claims = state
        .links
        .keys()
        .verify(Purpose::Open, &token)
        .map_err(|_| unknown_link())?;
    // Queued, not stored: the pixel is served even while the database is down.
    publish(
        &state,
        event(
            &claims,
            TrackingEventKind::Open,
            None,
            ip_hash(&state, &extensions),
        ),
    )
    .await;
    Ok((
        [
            (header::CONTENT_TYPE, "image/gif"),
            (header::CACHE_CONTROL, NO_CACHE),
            (header::PRAGMA, "no-cache"),
            (header::EXPIRES, "0"),
        ],
        PIXEL_GIF,
    )
        .into_response())
}

/// Follow a tracked link.
///
/// The click redirect: 302 to the URL the campaign's HTML template has at the token's link
/// index, and nowhere else.
#[utoipa::path(
    get,
    path = "/t/c/{token}",
    tag = "tracking",
    operation_id = "track_click",
    params(("token" = String, Path, description = "Signed click token from the message (names the link)")),
    responses(
        (status = 302, description = "Redirect to the link's URL; the click is recorded"),
        (status = 404, description = "Not a valid click token, or no such link in the campaign", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn click(
    State(state): State<AppState>,
    Path(token): Path<String>,
    extensions: Extensions,
) -> Result<Response, ApiError> {
    let (claims, link_index) = state
        .links
        .keys()
        .verify_click(&token)
        .map_err(|_| unknown_link())?;
    let targets = state
        .engagement
        .click_targets(state.store.as_ref(), claims.campaign_id)
        .await?;
    let target = targets
        .get(usize::from(link_index))
        .ok_or_else(unknown_link)?;
    publish(
        &state,
        event(
            &claims,
            TrackingEventKind::Click,
            Some(link_index),
            ip_hash(&state, &extensions),
        ),
    )
    .await;
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, target.as_str()),
            (header::CACHE_CONTROL, NO_CACHE),
        ],
    )
        .into_response())
}

/// Show the unsubscribe confirmation page.
///
/// A GET never unsubscribes: link scanners and prefetchers follow GETs, so only the page's
/// button (a POST) does.
#[utoipa::path(
    get,
    path = "/u/{token}",
    tag = "tracking",
    operation_id = "show_unsubscribe_page",
    params(("token" = String, Path, description = "Signed unsubscribe token (List-Unsubscribe)")),
    responses(
        (status = 200, description = "An HTML page with an unsubscribe button", content_type = "text/html"),
        (status = 404, description = "Not a valid unsubscribe token", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn unsubscribe_page(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    unsubscribe_claims(&state, &token)?;
    // The token is base64url (checked by verify) and PUBLIC_BASE_URL a parsed URL, so both
    // are safe inside the attribute. The action is absolute: a root-relative `/u/…` breaks
    // behind a proxy that serves the API under a path prefix.
    let action = state.links.unsubscribe_for_token(&token);
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"robots\" content=\"noindex\">\
         <title>Unsubscribe</title></head><body>\
         <h1>Unsubscribe</h1><p>Stop receiving these emails?</p>\
         <form method=\"post\" action=\"{action}\">\
         <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
         <button type=\"submit\">Unsubscribe</button></form></body></html>\n"
    );
    Ok(([(header::CACHE_CONTROL, NO_CACHE)], Html(page)).into_response())
}

/// Unsubscribe an address.
///
/// RFC 8058 one-click, also the confirmation page's button: the address goes on the
/// suppression list at once, so every later send skips it. Answers 200, never a redirect, and
/// needs no cookie.
#[utoipa::path(
    post,
    path = "/u/{token}",
    tag = "tracking",
    operation_id = "unsubscribe",
    params(("token" = String, Path, description = "Signed unsubscribe token (List-Unsubscribe)")),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "`List-Unsubscribe=One-Click` (RFC 8058); any body is accepted"),
    responses(
        (status = 200, description = "Unsubscribed (also when already unsubscribed)", content_type = "text/html"),
        (status = 404, description = "Not a valid unsubscribe token, or no such recipient", body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable", body = ProblemDetails, content_type = "application/problem+json"),
    )
)]
async fn unsubscribe(
    State(state): State<AppState>,
    Path(token): Path<String>,
    extensions: Extensions,
) -> Result<Response, ApiError> {
    let claims = unsubscribe_claims(&state, &token)?;
    if claims.purpose == Purpose::TestUnsubscribe {
        // A test message names no recipient: its address is suppressed, and no campaign
        // event is recorded (a test is not part of the campaign's results).
        let test = state
            .store
            .test_send(claims.recipient_id)
            .await?
            .filter(|test| test.campaign_id == claims.campaign_id)
            .ok_or_else(unknown_link)?;
        let address = campaign::EmailAddress::parse(&test.email)
            .map_err(|err| ApiError::Internal(format!("test send {}: {err}", test.id)))?;
        state.store.suppress(&address, "unsubscribed").await?;
        return Ok(unsubscribed_page());
    }
    let recipient = state
        .store
        .get_recipient(claims.campaign_id, claims.recipient_id)
        .await?
        .ok_or_else(unknown_link)?;
    state
        .store
        .suppress(&recipient.recipient.email, "unsubscribed")
        .await?;
    let mut event = event(
        &claims,
        TrackingEventKind::Unsubscribe,
        None,
        ip_hash(&state, &extensions),
    );
    // An unsubscribe always names its recipient: it acts on the address.
    event.recipient_id = Some(claims.recipient_id);
    publish(&state, event).await;
    Ok(unsubscribed_page())
}

fn unsubscribed_page() -> Response {
    (
        [(header::CACHE_CONTROL, NO_CACHE)],
        Html(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Unsubscribed</title></head>\
             <body><h1>You are unsubscribed</h1><p>You will not receive these emails any more.</p></body></html>\n",
        ),
    )
        .into_response()
}

/// The claims of an unsubscribe link: a campaign's (naming a recipient) or a test message's
/// (naming the test send). Every other token is an unknown link.
fn unsubscribe_claims(state: &AppState, token: &str) -> Result<tracking::TokenClaims, ApiError> {
    let keys = state.links.keys();
    match keys.verify(Purpose::Unsubscribe, token) {
        Err(tracking::TokenError::WrongPurpose {
            actual: Purpose::TestUnsubscribe,
            ..
        }) => keys.verify(Purpose::TestUnsubscribe, token),
        verified => verified,
    }
    .map_err(|_| unknown_link())
}
