//! The HTTP API of marketing-base (axum).
//!
//! Every error leaves as `application/problem+json` (RFC 9457) with a `detail` that says what
//! to fix; malformed input is a 4xx, never a 5xx.

mod analytics;
pub mod auth;
pub mod bounces;
mod campaigns;
mod control;
mod engagement;
mod health;
pub mod idempotency;
mod openapi;
mod preview;
pub mod problem;
pub mod rate_limit;
mod recipients;
mod suppressions;
mod test_send;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use campaign::Limits;
use std::sync::Arc;
use store::CampaignStore;

pub use problem::ApiError;
pub use service::{MAX_TEST_ADDRESSES, TEST_SUBJECT_MARK};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn CampaignStore>,
    /// Where `send` puts the campaign's task for the task processor.
    pub tasks: Arc<dyn tasks::TaskRepository>,
    pub settings: ApiSettings,
    /// Signed per-recipient links (unsubscribe) under PUBLIC_BASE_URL.
    pub links: Arc<tracking::Links>,
    /// Template limits (fuel, recursion, rendered size).
    pub message_settings: message::MessageSettings,
    /// Where `POST …/test` sends; `None` in a process without a transport (it answers 503).
    pub transport: Option<Arc<dyn delivery::Transport>>,
    /// Signs test sends as the workers sign campaign mail (DKIM_*): a From domain the key
    /// does not cover is sent unsigned.
    pub dkim: Option<Arc<message::DkimSigner>>,
    /// Opens, clicks and unsubscribes of the public tracking endpoints (their event recorder
    /// and click-target cache).
    pub engagement: tracking::Engagement,
    /// Bounce intake: its secret and the soft-bounce rule.
    pub bounces: bounces::BounceSettings,
    /// Outgoing webhooks: the bounce intake's bounced and complained (`engagement` holds
    /// the sink of opened, clicked and unsubscribed).
    pub events: webhooks::EventSink,
}

impl AppState {
    /// The campaign service over this state's store and task repository.
    pub fn campaigns(&self) -> service::CampaignService<'_> {
        service::CampaignService::new(self.store.as_ref(), self.tasks.as_ref())
            .with_message_settings(&self.message_settings)
    }
}

/// Limits and knobs of the API, from configuration.
#[derive(Debug, Clone, Copy)]
pub struct ApiSettings {
    /// Campaign document limits (MAX_BATCH_SIZE, template size).
    pub limits: Limits,
    /// The largest JSON request body, in bytes.
    pub max_body_bytes: usize,
    /// The largest recipient upload (CSV is streamed, so this may be large), in bytes.
    pub max_import_bytes: u64,
    /// The most recipients one request may add (inline in a campaign, a JSON array or a CSV
    /// upload); larger lists go in several uploads.
    pub max_recipients_per_request: u64,
    /// Requests per API key on `/api/v1` (429 with Retry-After beyond it); `None`: no limit.
    pub rate_limit: Option<RateLimit>,
    /// Test messages (`POST …/test`) per API key, counted across every process sharing the
    /// database.
    pub test_send_quota: TestSendQuota,
}

/// How many test messages one API key may send: at most `per_minute` in any minute and
/// `per_day` in any 24 hours (429 with Retry-After beyond either).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestSendQuota {
    pub per_minute: u32,
    pub per_day: u32,
}

impl Default for TestSendQuota {
    /// Enough for a team checking a campaign; far too few to send a campaign as tests.
    fn default() -> Self {
        TestSendQuota {
            per_minute: 10,
            per_day: 100,
        }
    }
}

impl TestSendQuota {
    /// The quota's windows as the store counts them.
    pub fn windows(&self) -> [store::QuotaWindow; 2] {
        [
            store::QuotaWindow {
                window: time::Duration::minutes(1),
                limit: self.per_minute,
            },
            store::QuotaWindow {
                window: time::Duration::days(1),
                limit: self.per_day,
            },
        ]
    }
}

/// A token bucket per API key: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

impl Default for RateLimit {
    /// Generous: far above what a person or a script like `marketing submit` sends, low
    /// enough that a runaway client cannot monopolise the database.
    fn default() -> Self {
        RateLimit {
            per_second: 50.0,
            burst: 100,
        }
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            limits: Limits::default(),
            max_body_bytes: 8 * 1024 * 1024,
            max_import_bytes: 512 * 1024 * 1024,
            max_recipients_per_request: 1_000_000,
            rate_limit: Some(RateLimit::default()),
            test_send_quota: TestSendQuota::default(),
        }
    }
}

/// The admin routes with their OpenAPI descriptions: registering a route here is what puts
/// it in the document, so no route can be served undocumented.
fn admin_routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa::OpenApi;
    utoipa_axum::router::OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(campaigns::routes())
        .merge(analytics::routes())
        .merge(recipients::routes())
        .merge(control::routes())
        .merge(preview::routes())
        .merge(test_send::routes())
        .merge(suppressions::routes())
}

/// The routes outside the API key, documented like the rest: the ones recipients' mail
/// clients reach (open pixel, click redirect, unsubscribe) and the bounce intake, which
/// authenticates with BOUNCE_WEBHOOK_SECRET.
fn public_routes() -> utoipa_axum::router::OpenApiRouter<AppState> {
    engagement::routes().merge(bounces::routes())
}

/// The OpenAPI document, as served at `/api/v1/openapi.json`.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    let mut document = admin_routes().split_for_parts().1;
    document.merge(public_routes().split_for_parts().1);
    document
}

/// The whole API as one router: `/api/v1/…` (behind an API key), `/health`, `/ready`.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings.max_body_bytes;
    let (admin, mut document) = admin_routes().split_for_parts();
    let (public, public_document) = public_routes().split_for_parts();
    document.merge(public_document);
    let admin = match state.settings.rate_limit {
        Some(limit) => admin.route_layer(axum::middleware::from_fn_with_state(
            Arc::new(rate_limit::RateLimiter::new(limit)),
            rate_limit::limit_per_key,
        )),
        None => admin,
    };
    // Added last, so it runs first: the rate limit counts per authenticated key.
    let admin = admin.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::require_api_key,
    ));
    Router::new()
        .merge(admin)
        .merge(public)
        .merge(health::routes())
        .merge(openapi::routes(document))
        .fallback(problem::not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn(problem::require_utf8_path))
        .layer(problem::catch_panics())
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}
