//! The suppression list: addresses that are never sent to (unsubscribed, hard-bounced,
//! complained, or added by an operator).

use crate::problem::AdminProblems;
use crate::{ApiError, AppState};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use campaign::EmailAddress;
use serde::{Deserialize, Serialize};
use store::Suppression;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list, add))
        .routes(routes!(remove))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// The previous page's `next_cursor`.
    after: Option<String>,
    /// Addresses per page, 1 to 1000 (default 100).
    limit: Option<u32>,
}

/// A page of suppressed addresses, ordered by address.
#[derive(Serialize, utoipa::ToSchema)]
struct SuppressionPage {
    items: Vec<Suppression>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// List the suppression list.
#[utoipa::path(
    get,
    path = "/api/v1/suppressions",
    tag = "suppressions",
    operation_id = "list_suppressions",
    params(ListParams),
    responses((status = 200, description = "A page of suppressions", body = SuppressionPage), AdminProblems),
    security(("api_key" = []))
)]
async fn list(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<SuppressionPage>, ApiError> {
    let Query(params) = params.map_err(|rejection| ApiError::BadRequest(rejection.body_text()))?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and 1000, got {limit}"
        )));
    }
    let items = state
        .store
        .list_suppressions(params.after.as_deref(), limit)
        .await?;
    let next_cursor = (items.len() == limit as usize)
        .then(|| items.last().map(|s| s.key()))
        .flatten();
    Ok(Json(SuppressionPage { items, next_cursor }))
}

/// An address to suppress.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AddSuppression {
    email: EmailAddress,
    /// Why (default `manual`).
    reason: Option<String>,
}

/// Put an address on the suppression list (idempotent). Every later send skips it.
#[utoipa::path(
    post,
    path = "/api/v1/suppressions",
    tag = "suppressions",
    operation_id = "add_suppression",
    request_body(content = AddSuppression, content_type = "application/json"),
    responses((status = 204, description = "Suppressed"), AdminProblems),
    security(("api_key" = []))
)]
async fn add(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let request: AddSuppression = campaign::document::parse_json(&body?)?;
    let reason = request.reason.unwrap_or_else(|| "manual".to_string());
    if reason.is_empty() || reason.len() > 100 || reason.chars().any(char::is_control) {
        return Err(ApiError::invalid(vec![campaign::Problem {
            field: "reason".into(),
            message: "must be 1 to 100 characters on one line".into(),
        }]));
    }
    state.store.suppress(&request.email, &reason).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Take an address off the suppression list.
#[utoipa::path(
    delete,
    path = "/api/v1/suppressions/{email}",
    tag = "suppressions",
    operation_id = "remove_suppression",
    params(("email" = String, Path, description = "The address (compared case-insensitively)")),
    responses((status = 204, description = "Removed"), AdminProblems),
    security(("api_key" = []))
)]
async fn remove(
    State(state): State<AppState>,
    Path(email): Path<String>,
) -> Result<StatusCode, ApiError> {
    let address = EmailAddress::parse(&email)
        .map_err(|_| ApiError::NotFound(format!("{email:?} is not on the suppression list")))?;
    if !state.store.remove_suppression(&address).await? {
        return Err(ApiError::NotFound(format!(
            "{email} is not on the suppression list"
        )));
    }
    Ok(StatusCode::NO_CONTENT)
}
