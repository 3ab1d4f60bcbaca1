//! The public engagement endpoints that recipients' mail clients reach, without an API key:
//! the open pixel (`/t/o/{token}`), the click redirect (`/t/c/{token}`) and unsubscribe
//! (`/u/{token}`, RFC 8058 one-click POST and a confirmation page on GET).
//!
//! The handlers only read the request and answer it: `tracking::Engagement` verifies the
//! signed token (a forged, altered or misplaced one gets 404 and records nothing), decides and
//! publishes the event, queued for the store, so the endpoints answer without waiting for the
//! database.

use crate::problem::ProblemDetails;
use crate::{ApiError, AppState};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{Extensions, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use std::net::{IpAddr, SocketAddr};
use tracking::EngagementError;
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

impl From<EngagementError> for ApiError {
    fn from(err: EngagementError) -> Self {
        match err {
            EngagementError::UnknownLink => ApiError::NotFound(err.to_string()),
            EngagementError::Store(err) => err.into(),
            EngagementError::CorruptTestSend { .. } => ApiError::Internal(err.to_string()),
        }
    }
}

/// The client's address, when the server was started with connection info (tracking
/// stores it only as a keyed hash).
fn client_address(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(address)| address.ip())
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
    state
        .engagement
        .open(&token, client_address(&extensions))
        .await?;
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
    let target = state
        .engagement
        .click(&token, client_address(&extensions))
        .await?;
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
    state.engagement.verify_unsubscribe(&token)?;
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
    state
        .engagement
        .unsubscribe(&token, client_address(&extensions))
        .await?;
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
