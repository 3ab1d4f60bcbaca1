//! HTTP request metrics for any axum router.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;

/// The route label of requests no route matched (404s, scanners): one series, not one per
/// path tried.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Counts and times every request by its route template (`/api/v1/campaigns/{id}`), never by
/// the concrete path, so ids do not become labels. Add with
/// `router.layer(axum::middleware::from_fn(metrics::http::track_requests))`: a layer on the
/// router runs after routing, where the matched template is known.
pub async fn track_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    let route = route.as_deref().unwrap_or(UNMATCHED_ROUTE);
    let status = response.status();
    let m = crate::metrics();
    m.http_requests
        .with_label_values(&[route, status.as_str()])
        .inc();
    m.http_seconds
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    response
}
