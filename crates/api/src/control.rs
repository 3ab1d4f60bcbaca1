//! Campaign control: send now, schedule and unschedule, pause, resume, cancel.
//!
//! Each handler reads the request and hands the action to the campaign service
//! ([`service::CampaignService`]): every action is idempotent (asking for the state a campaign
//! is already in answers 200) and an impossible transition answers 409 with the transition
//! table's words, naming the current and the asked-for state. The campaign processor and the
//! task processor act on the states set here.

use crate::campaigns::{StatusView, campaign_id, status_view};
use crate::idempotency::{self, CallerKey};
use crate::problem::AdminProblems;
use crate::{ApiError, AppState};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(send))
        .routes(routes!(schedule, unschedule))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(cancel))
        .routes(routes!(retry_failed))
        .routes(routes!(ab_winner))
}

/// The variant to send to the rest of the list.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct WinnerRequest {
    /// A variant's `name`.
    variant: String,
}

/// Choose an A/B test's winner by hand, before `decide_after` (idempotent).
///
/// The variant goes to the rest of the list at once (once the campaign is resumed, when it
/// is paused). Asking again for the same winner answers 200; another winner once one is
/// chosen (by hand or by the results) answers 409, as does a campaign without a test or not
/// sending its test slice. An unknown variant answers 422 naming `variant`.
#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/ab/winner",
    tag = "control",
    operation_id = "choose_ab_winner",
    params(("id" = String, Path, description = "Campaign id (UUID)")),
    request_body(content = WinnerRequest, content_type = "application/json"),
    responses((status = 200, description = "The campaign's status after the decision", body = StatusView), AdminProblems),
    security(("api_key" = []))
)]
async fn ab_winner(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<StatusView>, ApiError> {
    crate::campaigns::require_json(&headers)?;
    let request: WinnerRequest = campaign::document::parse_json(&body?)?;
    state
        .campaigns()
        .decide_ab_test(
            campaign_id(&id)?,
            service::AbChoice::Manual(request.variant),
            OffsetDateTime::now_utc(),
        )
        .await?;
    Ok(Json(status_view(&state, &id).await?))
}

/// When to send.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ScheduleRequest {
    /// RFC 3339 with an offset, e.g. `2026-12-25T08:00:00Z`: in the future, at most 5 years
    /// ahead, at most microsecond precision.
    #[schema(format = DateTime)]
    scheduled_at: String,
}

/// Parses `scheduled_at` by the rules every caller-given time follows
/// ([`campaign::timestamp`]): in the future and at most 5 years ahead.
fn parse_schedule(raw: &str, now: OffsetDateTime) -> Result<OffsetDateTime, ApiError> {
    let invalid = |message: String| {
        ApiError::invalid(vec![campaign::Problem {
            field: "scheduled_at".into(),
            message,
        }])
    };
    let at = campaign::timestamp::parse(raw).map_err(invalid)?;
    campaign::timestamp::check_schedule(at, now)
        .map_err(|message| invalid(format!("{raw} {message}")))?;
    Ok(at)
}

/// Schedule or reschedule a draft or scheduled campaign.
#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/schedule",
    tag = "control",
    operation_id = "schedule_campaign",
    params(("id" = String, Path, description = "Campaign id (UUID)")),
    request_body(content = ScheduleRequest, content_type = "application/json"),
    responses((status = 200, description = "The campaign's status after the change", body = StatusView), AdminProblems),
    security(("api_key" = []))
)]
async fn schedule(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<StatusView>, ApiError> {
    let request: ScheduleRequest = campaign::document::parse_json(&body?)?;
    let at = parse_schedule(&request.scheduled_at, OffsetDateTime::now_utc())?;
    state.campaigns().schedule(campaign_id(&id)?, at).await?;
    Ok(Json(status_view(&state, &id).await?))
}

/// Remove the schedule: the campaign goes back to draft.
#[utoipa::path(
    delete,
    path = "/api/v1/campaigns/{id}/schedule",
    tag = "control",
    operation_id = "unschedule_campaign",
    params(("id" = String, Path, description = "Campaign id (UUID)")),
    responses((status = 200, description = "The campaign's status after the change", body = StatusView), AdminProblems),
    security(("api_key" = []))
)]
async fn unschedule(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StatusView>, ApiError> {
    state.campaigns().unschedule(campaign_id(&id)?).await?;
    Ok(Json(status_view(&state, &id).await?))
}

/// Send a campaign now.
///
/// Send a draft or scheduled campaign now: it is queued for the task processor, which splits
/// it into batches (idempotent: a campaign already queued or sending answers 202 again).
#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/send",
    tag = "control",
    operation_id = "send_campaign",
    params(
        ("id" = String, Path, description = "Campaign id (UUID)"),
        ("Idempotency-Key" = Option<String>, Header, description = "Repeating a request with the same key returns the first response and queues nothing again; the same key for another campaign is refused (422). Kept 24 hours."),
    ),
    responses((status = 202, description = "Queued; the task processor delivers it", body = StatusView), AdminProblems),
    security(("api_key" = []))
)]
async fn send(
    State(state): State<AppState>,
    Extension(caller): Extension<CallerKey>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // The campaign is part of what the key stands for: reusing it for another campaign is a
    // client bug, answered 422 like a different body on POST /campaigns.
    // By the parsed id, so that an upper-case spelling of the same UUID is the same request.
    let target = campaign_id(&id).map_or_else(|_| id.clone(), |c| c.to_string());
    let route = format!("POST /api/v1/campaigns/{target}/send");
    idempotency::once(&state, &caller, &headers, &route, &Bytes::new(), || {
        send_now(&state, &id)
    })
    .await
}

async fn send_now(state: &AppState, id: &str) -> Result<Response, ApiError> {
    state.campaigns().send(campaign_id(id)?).await?;
    crate::problem::json_answer(StatusCode::ACCEPTED, &status_view(state, id).await?)
}

/// Retry a finished campaign's failed recipients.
///
/// Give a finished campaign's failed recipients another try: those not on the suppression list
/// go back to pending and the campaign is queued again like a first send. Idempotent: repeated
/// while the retry is queued or sending, it answers 202 and requeues nothing more.
#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/retry-failed",
    tag = "control",
    operation_id = "retry_failed_recipients",
    params(("id" = String, Path, description = "Campaign id (UUID)")),
    responses(
        (status = 202, description = "Queued again; `deliveries.pending` counts the recipients to retry", body = StatusView),
        AdminProblems
    ),
    security(("api_key" = []))
)]
async fn retry_failed(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    state.campaigns().retry_failed(campaign_id(&id)?).await?;
    crate::problem::json_answer(StatusCode::ACCEPTED, &status_view(&state, &id).await?)
}

/// Pause a queued or sending campaign (idempotent).
#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/pause",
    tag = "control",
    operation_id = "pause_campaign",
    params(("id" = String, Path, description = "Campaign id (UUID)")),
    responses((status = 200, description = "The campaign's status after the change", body = StatusView), AdminProblems),
    security(("api_key" = []))
)]
async fn pause(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StatusView>, ApiError> {
    state.campaigns().pause(campaign_id(&id)?).await?;
    Ok(Json(status_view(&state, &id).await?))
}

/// Resume a paused campaign (idempotent).
#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/resume",
    tag = "control",
    operation_id = "resume_campaign",
    params(("id" = String, Path, description = "Campaign id (UUID)")),
    responses((status = 200, description = "The campaign's status after the change", body = StatusView), AdminProblems),
    security(("api_key" = []))
)]
async fn resume(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StatusView>, ApiError> {
    state.campaigns().resume(campaign_id(&id)?).await?;
    Ok(Json(status_view(&state, &id).await?))
}

/// Cancel a campaign; recipients not yet sent become `cancelled` (idempotent).
#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/cancel",
    tag = "control",
    operation_id = "cancel_campaign",
    params(("id" = String, Path, description = "Campaign id (UUID)")),
    responses((status = 200, description = "The campaign's status after the change", body = StatusView), AdminProblems),
    security(("api_key" = []))
)]
async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StatusView>, ApiError> {
    state.campaigns().cancel(campaign_id(&id)?).await?;
    Ok(Json(status_view(&state, &id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_needs_an_offset_and_a_future_time() {
        let now = time::macros::datetime!(2026-11-28 12:00 UTC);
        assert_eq!(
            parse_schedule("2026-12-25T08:00:00+01:00", now).unwrap(),
            time::macros::datetime!(2026-12-25 07:00 UTC)
        );
        let message = |raw: &str| parse_schedule(raw, now).unwrap_err().to_string();
        assert!(message("2026-12-25T08:00:00").contains("no UTC offset"));
        assert!(message("2026-11-28T11:59:59Z").contains("in the past"));
        assert!(message("2026-11-28T12:00:00Z").contains("in the past"));
        assert!(message("next tuesday").contains("not an RFC 3339 time"));
        assert!(message("2026-13-01T00:00:00Z").contains("not an RFC 3339 time"));
    }
}
