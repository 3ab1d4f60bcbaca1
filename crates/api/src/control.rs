//! Campaign control: send now, schedule and unschedule, pause, resume, cancel.
//!
//! Every action is idempotent (asking for the state a campaign is already in answers 200) and
//! an impossible transition answers 409 naming the current state. The campaign processor and
//! the task processor act on the states set here.

use crate::campaigns::{StatusView, find, status_view};
use crate::idempotency::{self, CallerKey};
use crate::problem::AdminProblems;
use crate::{ApiError, AppState};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use campaign::CampaignStatus;
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
    let campaign = find(&state, &id).await?;
    if !state.store.schedule_campaign(campaign.id, Some(at)).await? {
        let current = find(&state, &id).await?;
        return Err(ApiError::Conflict(format!(
            "campaign {} is {}; only a draft or scheduled campaign can be (re)scheduled",
            current.id, current.status
        )));
    }
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
    let campaign = find(&state, &id).await?;
    if !state.store.schedule_campaign(campaign.id, None).await? {
        return Err(ApiError::Conflict(format!(
            "campaign {} is {}; only a scheduled campaign can be unscheduled",
            campaign.id, campaign.status
        )));
    }
    Ok(Json(status_view(&state, &id).await?))
}

/// Applies `from → to`, answering 200 when the campaign already is in `to` and 409 otherwise.
async fn transition(
    state: &AppState,
    raw_id: &str,
    from: &[CampaignStatus],
    to: CampaignStatus,
    action: &str,
) -> Result<Json<StatusView>, ApiError> {
    let campaign = find(state, raw_id).await?;
    if campaign.status != to {
        let moved = if to == CampaignStatus::Cancelled {
            state.store.cancel_campaign(campaign.id, from).await?
        } else {
            state
                .store
                .transition_campaign(campaign.id, from, to)
                .await?
        };
        if !moved {
            let current = find(state, raw_id).await?;
            if current.status != to {
                let allowed: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
                return Err(ApiError::Conflict(format!(
                    "campaign {} is {}; {action} is possible only while it is {}",
                    current.id,
                    current.status,
                    allowed.join(", ")
                )));
            }
        }
        tracing::info!(campaign = %campaign.id, from = %campaign.status, to = %to, "campaign {action}");
        // A cancel ends the processing of a campaign that had been scheduled or sent; this
        // process made that final transition, so it counts it (a draft never started).
        if moved && to == CampaignStatus::Cancelled && campaign.status != CampaignStatus::Draft {
            processor::record_campaign_ended(state.store.as_ref(), campaign.id).await?;
        }
    }
    Ok(Json(status_view(state, raw_id).await?))
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
    let target = crate::campaigns::campaign_id(&id).map_or_else(|_| id.clone(), |c| c.to_string());
    let route = format!("POST /api/v1/campaigns/{target}/send");
    idempotency::once(&state, &caller, &headers, &route, &Bytes::new(), || {
        send_now(&state, &id)
    })
    .await
}

async fn send_now(state: &AppState, id: &str) -> Result<Response, ApiError> {
    let campaign = find(state, id).await?;
    match processor::enqueue_campaign(state.store.as_ref(), state.tasks.as_ref(), campaign.id).await
    {
        Ok((record, task)) => {
            tracing::info!(campaign = %record.id, task = %task.id, "campaign queued for sending");
            crate::problem::json_answer(StatusCode::ACCEPTED, &status_view(state, id).await?)
        }
        Err(err @ processor::ProcessorError::NotSendable { .. }) => {
            Err(ApiError::Conflict(err.to_string()))
        }
        Err(processor::ProcessorError::Store(err)) => Err(err.into()),
        Err(err @ processor::ProcessorError::CampaignNotFound(_)) => {
            Err(ApiError::NotFound(err.to_string()))
        }
        Err(err) => Err(ApiError::Unavailable(format!(
            "the campaign could not be queued: {err}"
        ))),
    }
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
    let campaign = find(&state, &id).await?;
    match processor::retry_failed(state.store.as_ref(), state.tasks.as_ref(), campaign.id).await {
        Ok(_) => {
            crate::problem::json_answer(StatusCode::ACCEPTED, &status_view(&state, &id).await?)
        }
        Err(err @ processor::ProcessorError::NotRetryable { .. }) => {
            Err(ApiError::Conflict(err.to_string()))
        }
        Err(processor::ProcessorError::Store(err)) => Err(err.into()),
        Err(err @ processor::ProcessorError::CampaignNotFound(_)) => {
            Err(ApiError::NotFound(err.to_string()))
        }
        Err(err) => Err(ApiError::Unavailable(format!(
            "the failed recipients could not be queued again: {err}"
        ))),
    }
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
    transition(
        &state,
        &id,
        &[CampaignStatus::Queued, CampaignStatus::Sending],
        CampaignStatus::Paused,
        "pause",
    )
    .await
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
    let campaign = find(&state, &id).await?;
    if !matches!(
        campaign.status,
        CampaignStatus::Queued | CampaignStatus::Sending
    ) {
        // A campaign that never started goes back to the queue; one that did continues
        // sending where its batches stopped.
        let resumed =
            processor::resume_campaign(state.store.as_ref(), state.tasks.as_ref(), campaign.id)
                .await
                .map_err(|err| match err {
                    processor::ProcessorError::Store(err) => err.into(),
                    other => {
                        ApiError::Unavailable(format!("the campaign could not be resumed: {other}"))
                    }
                })?;
        let current = find(&state, &id).await?;
        if !resumed
            && !matches!(
                current.status,
                CampaignStatus::Queued | CampaignStatus::Sending
            )
        {
            return Err(ApiError::Conflict(format!(
                "campaign {} is {}; resume is possible only while it is paused",
                current.id, current.status
            )));
        }
        tracing::info!(campaign = %campaign.id, from = %campaign.status, to = %current.status, "campaign resume");
    }
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
    transition(
        &state,
        &id,
        &[
            CampaignStatus::Draft,
            CampaignStatus::Scheduled,
            CampaignStatus::Queued,
            CampaignStatus::Sending,
            CampaignStatus::Paused,
        ],
        CampaignStatus::Cancelled,
        "cancel",
    )
    .await
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
