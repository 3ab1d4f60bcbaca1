//! Campaign routes: create, list, read, status.

use crate::idempotency::{self, CallerKey};
use crate::problem::AdminProblems;
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use campaign::{CampaignDocument, CampaignId, CampaignStatus, DeliveryStatus, RecipientId};
use serde::{Deserialize, Serialize};
use service::CampaignError;
use store::{
    CampaignFilter, CampaignRecord, DeliveryCounts, DeliveryRecord, ImportReport, recipient_stream,
};
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(read))
        .routes(routes!(status))
        .routes(routes!(deliveries))
}

/// A campaign in lists: everything but the document.
#[derive(Serialize, utoipa::ToSchema)]
struct CampaignSummary {
    #[schema(value_type = String, format = Uuid)]
    id: CampaignId,
    name: String,
    status: CampaignStatus,
    recipient_count: i64,
    #[serde(with = "time::serde::rfc3339::option")]
    scheduled_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
}

impl From<&CampaignRecord> for CampaignSummary {
    fn from(record: &CampaignRecord) -> Self {
        CampaignSummary {
            id: record.id,
            name: record.name.clone(),
            status: record.status,
            recipient_count: record.recipient_count,
            scheduled_at: record.scheduled_at,
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

/// A created campaign and the outcome of its inline recipients.
#[derive(Serialize, utoipa::ToSchema)]
struct Created {
    campaign: CampaignRecord,
    recipients: ImportReport,
}

/// The campaign service's refusals as problem+json: the one mapping of [`CampaignError`].
impl From<CampaignError> for ApiError {
    fn from(err: CampaignError) -> Self {
        match err {
            CampaignError::Invalid(err) => err.into(),
            CampaignError::TooManyRecipients { limit, .. } => {
                crate::recipients::too_many_recipients(limit)
            }
            CampaignError::NotFound(_) => ApiError::NotFound(err.to_string()),
            CampaignError::Refused { .. }
            | CampaignError::NothingToRetry(_)
            | CampaignError::NotAnAbTest(_)
            | CampaignError::AbNotStarted { .. }
            | CampaignError::AbDecided { .. } => ApiError::Conflict(err.to_string()),
            CampaignError::QuotaExceeded {
                detail,
                retry_after_seconds,
            } => ApiError::TooManyRequests {
                detail,
                retry_after_seconds,
            },
            CampaignError::NoTransport | CampaignError::Tasks(_) => {
                ApiError::Unavailable(err.to_string())
            }
            CampaignError::Store(err) => err.into(),
            CampaignError::Internal(detail) => ApiError::Internal(detail),
        }
    }
}

pub(crate) fn template_problem(err: &message::TemplateError) -> ApiError {
    ApiError::invalid(vec![message::template_problem(err)])
}

/// Parses a campaign id from the path; an id that cannot exist is simply not found.
pub(crate) fn campaign_id(raw: &str) -> Result<CampaignId, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::NotFound(format!("campaign {raw} does not exist")))
}

/// The media type of a request without its parameters (`text/csv; charset=utf-8` → `text/csv`).
pub(crate) fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next()?.trim().to_ascii_lowercase())
}

pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    match media_type(headers).as_deref() {
        None | Some("application/json") => Ok(()),
        Some(other) => Err(ApiError::UnsupportedMediaType(format!(
            "this route reads application/json, not {other}"
        ))),
    }
}

/// Create a campaign from a campaign document (recipients inline optional).
#[utoipa::path(
    post,
    path = "/api/v1/campaigns",
    tag = "campaigns",
    operation_id = "create_campaign",
    request_body(content = CampaignDocument, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, description = "Repeating a request with the same key and body returns the first response and creates nothing; the same key with another body is refused (422). Kept 24 hours.")),
    responses((status = 201, description = "Created", body = Created), AdminProblems),
    security(("api_key" = []))
)]
async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<CallerKey>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    let body = body?;
    idempotency::once(
        &state,
        &caller,
        &headers,
        "POST /api/v1/campaigns",
        &body,
        || create_campaign(&state, &body),
    )
    .await
}

async fn create_campaign(state: &AppState, body: &Bytes) -> Result<Response, ApiError> {
    let document =
        service::read_new_campaign(body, &state.settings.limits, OffsetDateTime::now_utc())?;
    service::check_new_campaign(
        &document,
        &document.recipients,
        &state.message_settings,
        state.settings.max_recipients_per_request,
    )?;
    let recipients = document.recipients.iter().cloned().map(Ok);
    let (campaign, report) = state
        .campaigns()
        .create(&document, recipient_stream(recipients))
        .await?;
    let location = format!("/api/v1/campaigns/{}", campaign.id);
    let mut response = crate::problem::json_answer(
        StatusCode::CREATED,
        &Created {
            campaign,
            recipients: report,
        },
    )?;
    let location = header::HeaderValue::try_from(location)
        .map_err(|err| ApiError::Internal(format!("a campaign's location: {err}")))?;
    response.headers_mut().insert(header::LOCATION, location);
    Ok(response)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Campaigns per page, 1 to 500 (default 50).
    limit: Option<u32>,
    /// The previous page's `next_cursor`.
    #[param(value_type = Option<String>, format = Uuid)]
    before: Option<CampaignId>,
    /// Only campaigns in this state.
    #[param(inline)]
    status: Option<CampaignStatus>,
}

/// A page of campaigns, newest first.
#[derive(Serialize, utoipa::ToSchema)]
struct CampaignList {
    items: Vec<CampaignSummary>,
    /// Pass as `before` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    next_cursor: Option<CampaignId>,
}

/// List campaigns, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/campaigns",
    tag = "campaigns",
    operation_id = "list_campaigns",
    params(ListParams),
    responses((status = 200, description = "A page of campaigns", body = CampaignList), AdminProblems),
    security(("api_key" = []))
)]
async fn list(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<CampaignList>, ApiError> {
    let Query(params) = params.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let limit = params.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid(vec![campaign::Problem {
            field: "limit".into(),
            message: format!("must be between 1 and 500, got {limit}"),
        }]));
    }
    let page = state
        .store
        .list_campaigns(&CampaignFilter {
            status: params.status,
            before: params.before,
            limit,
        })
        .await?;
    Ok(Json(CampaignList {
        items: page.items.iter().map(CampaignSummary::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

pub(crate) async fn find(state: &AppState, raw_id: &str) -> Result<CampaignRecord, ApiError> {
    Ok(state.campaigns().find(campaign_id(raw_id)?).await?)
}

/// Get a campaign with its whole document.
#[utoipa::path(
    get,
    path = "/api/v1/campaigns/{id}",
    tag = "campaigns",
    operation_id = "get_campaign",
    params(("id" = String, Path, description = "Campaign id (UUID)")),
    responses((status = 200, description = "The campaign", body = CampaignRecord), AdminProblems),
    security(("api_key" = []))
)]
async fn read(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CampaignRecord>, ApiError> {
    Ok(Json(find(&state, &id).await?))
}

/// A campaign's state and its recipients per delivery state.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct StatusView {
    #[schema(value_type = String, format = Uuid)]
    id: CampaignId,
    name: String,
    status: CampaignStatus,
    recipients: i64,
    /// Recipients per delivery state; they add up to `recipients`.
    deliveries: DeliveryCounts,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    scheduled_at: Option<OffsetDateTime>,
    /// When it was queued for sending (for a scheduled campaign: when its time was seen).
    #[serde(with = "time::serde::rfc3339::option")]
    queued_at: Option<OffsetDateTime>,
    /// Seconds between `scheduled_at` and `queued_at` (0 when on time); absent until a
    /// scheduled campaign is queued.
    start_delay_seconds: Option<f64>,
    /// True when the campaign was queued more than 2 s after its `scheduled_at` (no campaign
    /// processor was running at the time, for example).
    started_late: bool,
    #[serde(with = "time::serde::rfc3339::option")]
    started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    completed_at: Option<OffsetDateTime>,
    /// With a local send time: per time zone, the recipients still waiting and when the first
    /// of them is due (absent: due now). Empty otherwise, and once everyone is delivered.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    time_zones: Vec<store::ZoneRelease>,
    /// Recipients deferred because a sending rate had no slot for them, per rate they wait
    /// for (a destination domain group or domain of RATE_LIMITS_FILE, the global
    /// SMTP_RATE_LIMIT, or the campaign's `max_rate`), and until when. Empty when nothing waits
    /// on a rate.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    rate_waits: Vec<store::RateWait>,
    /// With an A/B test: its phase and, once made, the decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    ab_test: Option<service::AbTestView>,
}

/// Get a campaign's status.
///
/// Status, timestamps and recipients per delivery state (they add up to `recipients`).
#[utoipa::path(
    get,
    path = "/api/v1/campaigns/{id}/status",
    tag = "campaigns",
    operation_id = "get_campaign_status",
    params(("id" = String, Path, description = "Campaign id (UUID)")),
    responses((status = 200, description = "The campaign's status", body = StatusView), AdminProblems),
    security(("api_key" = []))
)]
async fn status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<StatusView>, ApiError> {
    Ok(Json(status_view(&state, &id).await?))
}

/// The campaign's state and its recipients per delivery state, read fresh from the store.
pub(crate) async fn status_view(state: &AppState, raw_id: &str) -> Result<StatusView, ApiError> {
    let campaign = find(state, raw_id).await?;
    let deliveries = state.store.delivery_counts(campaign.id).await?;
    let start_delay_seconds = campaign.start_delay().map(|delay| delay.as_seconds_f64());
    let started_late = campaign.started_late();
    let time_zones = if campaign.document.local_send_time.is_some() {
        state.store.time_zone_releases(campaign.id).await?
    } else {
        Vec::new()
    };
    let rate_waits = state.store.rate_waits(campaign.id).await?;
    let ab_test = service::ab_test_view(state.store.as_ref(), &campaign).await?;
    Ok(StatusView {
        ab_test,
        id: campaign.id,
        name: campaign.name,
        status: campaign.status,
        recipients: deliveries.total(),
        deliveries,
        created_at: campaign.created_at,
        updated_at: campaign.updated_at,
        scheduled_at: campaign.scheduled_at,
        queued_at: campaign.queued_at,
        start_delay_seconds,
        started_late,
        started_at: campaign.started_at,
        completed_at: campaign.completed_at,
        time_zones,
        rate_waits,
    })
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct DeliveryParams {
    /// Only recipients in this delivery state.
    #[param(inline)]
    status: Option<DeliveryStatus>,
    /// The previous page's `next_cursor`.
    #[param(value_type = Option<i64>)]
    after: Option<RecipientId>,
    /// Recipients per page, 1 to 1000 (default 100).
    limit: Option<u32>,
}

/// A page of per-recipient outcomes.
#[derive(Serialize, utoipa::ToSchema)]
struct DeliveryPage {
    items: Vec<DeliveryRecord>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>)]
    next_cursor: Option<RecipientId>,
}

/// List a campaign's per-recipient delivery outcomes.
///
/// Per-recipient outcomes (with the SMTP reply or the last error), in recipient order, so
/// failed recipients can be found.
#[utoipa::path(
    get,
    path = "/api/v1/campaigns/{id}/deliveries",
    tag = "recipients",
    operation_id = "list_deliveries",
    params(("id" = String, Path, description = "Campaign id (UUID)"), DeliveryParams),
    responses((status = 200, description = "A page of deliveries", body = DeliveryPage), AdminProblems),
    security(("api_key" = []))
)]
async fn deliveries(
    State(state): State<AppState>,
    Path(id): Path<String>,
    params: Result<Query<DeliveryParams>, QueryRejection>,
) -> Result<Json<DeliveryPage>, ApiError> {
    let Query(params) = params.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(vec![campaign::Problem {
            field: "limit".into(),
            message: format!("must be between 1 and 1000, got {limit}"),
        }]));
    }
    let campaign = find(&state, &id).await?;
    let items = state
        .store
        .list_deliveries(campaign.id, params.status, params.after, limit)
        .await?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|d| d.recipient_id))
        .flatten();
    Ok(Json(DeliveryPage { items, next_cursor }))
}
