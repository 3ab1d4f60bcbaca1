//! `Idempotency-Key` for POSTs that create or start things (`POST /campaigns`, `POST
//! /campaigns/{id}/send`): the same key with the same request gets the same response (and
//! creates or queues nothing twice); the same key with another body or another campaign is
//! refused (422). Records are kept 24 hours, per API key.

use crate::{ApiError, AppState};
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use std::future::Future;
use std::time::Duration;
use store::IdempotencyReservation;

const HEADER: &str = "idempotency-key";
const KEEP_FOR: time::Duration = time::Duration::hours(24);
/// How long a request waits for a concurrent one with the same key to finish before it is
/// told to retry (409).
const WAIT_FOR_CONCURRENT: Duration = Duration::from_secs(10);

/// The id of the API key a request authenticated with (set by the auth middleware).
#[derive(Debug, Clone)]
pub struct CallerKey(pub String);

/// Runs `handler` at most once per (caller, Idempotency-Key), replaying its response to repeats.
pub(crate) async fn once<F, Fut>(
    state: &AppState,
    caller: &CallerKey,
    headers: &HeaderMap,
    route: &str,
    body: &Bytes,
    handler: F,
) -> Result<Response, ApiError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Response, ApiError>>,
{
    let Some(key) = headers.get(HEADER) else {
        return handler().await;
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            ApiError::BadRequest("Idempotency-Key must be 1 to 255 visible ASCII characters".into())
        })?;
    let fingerprint = hex::encode(
        Sha256::new()
            .chain_update(route)
            .chain_update([0])
            .chain_update(body)
            .finalize(),
    );
    let scope = caller.0.as_str();
    let deadline = tokio::time::Instant::now() + WAIT_FOR_CONCURRENT;
    loop {
        let expires_before = time::OffsetDateTime::now_utc() - KEEP_FOR;
        match state
            .store
            .reserve_idempotency_key(scope, key, &fingerprint, expires_before)
            .await?
        {
            IdempotencyReservation::Reserved => break,
            IdempotencyReservation::Existing {
                fingerprint: earlier,
                ..
            } if earlier != fingerprint => {
                return Err(ApiError::invalid(vec![campaign::Problem {
                    field: "Idempotency-Key".into(),
                    message: format!(
                        "{key:?} was already used with a different request; use a new key for a new request"
                    ),
                }]));
            }
            IdempotencyReservation::Existing {
                response: Some((status, body)),
                ..
            } => {
                return Ok(replay(status, body));
            }
            IdempotencyReservation::Existing { response: None, .. } => {
                if tokio::time::Instant::now() >= deadline {
                    return Err(ApiError::Conflict(format!(
                        "a request with Idempotency-Key {key:?} is still being processed; retry shortly"
                    )));
                }
                // A concurrent request holds the key; its answer is what this one returns.
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
    let response = match handler().await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    };
    let status = response.status();
    if status.is_server_error() {
        state.store.release_idempotency_key(scope, key).await?;
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|err| ApiError::Internal(format!("reading a response to keep it: {err}")))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    state
        .store
        .complete_idempotency_key(scope, key, status.as_u16(), &text)
        .await?;
    Ok(Response::from_parts(parts, axum::body::Body::from(bytes)))
}

fn replay(status: u16, body: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let content_type = if status.is_success() {
        "application/json"
    } else {
        crate::problem::PROBLEM_JSON
    };
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}
