//! `POST /api/v1/campaigns/{id}/preview`: one recipient's message exactly as it would be sent.

use crate::campaigns::{find, template_problem};
use crate::problem::AdminProblems;
use crate::{ApiError, AppState};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use campaign::{Recipient, RecipientId};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(preview))
}

/// Whom to preview for: a stored recipient by id, or one given inline.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PreviewRequest {
    recipient_id: Option<RecipientId>,
    recipient: Option<Recipient>,
}

/// The message as it would be sent.
#[derive(Serialize, utoipa::ToSchema)]
struct PreviewResponse {
    subject: String,
    html: Option<String>,
    text: Option<String>,
    /// The complete RFC 5322 message.
    eml: String,
}

/// Preview one recipient's message without sending it.
///
/// Render one recipient's message (subject, HTML, text and the complete .eml) without
/// sending anything.
#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/preview",
    tag = "campaigns",
    operation_id = "preview_campaign",
    params(("id" = String, Path, description = "Campaign id (UUID)")),
    request_body(content = PreviewRequest, content_type = "application/json"),
    responses((status = 200, description = "The rendered message", body = PreviewResponse), AdminProblems),
    security(("api_key" = []))
)]
async fn preview(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<PreviewResponse>, ApiError> {
    let request: PreviewRequest = campaign::document::parse_json(&body?)?;
    let campaign = find(&state, &id).await?;
    let (recipient_id, recipient) = match (request.recipient_id, request.recipient) {
        (Some(recipient_id), None) => {
            let stored = state
                .store
                .get_recipient(campaign.id, recipient_id)
                .await?
                .ok_or_else(|| {
                    ApiError::NotFound(format!(
                        "campaign {} has no recipient {recipient_id}",
                        campaign.id
                    ))
                })?;
            (recipient_id, stored.recipient)
        }
        (None, Some(recipient)) => (RecipientId::new(0), recipient),
        _ => {
            return Err(ApiError::invalid(vec![campaign::Problem {
                field: String::new(),
                message: "give exactly one of `recipient_id` or `recipient`".into(),
            }]));
        }
    };
    let context = message::RecipientContext {
        campaign_id: campaign.id,
        recipient_id,
        unsubscribe_url: state.links.unsubscribe(campaign.id, recipient_id),
        unsubscribe_mailto: None,
        tracking: Default::default(),
    };
    let options = message::BuildOptions {
        envelope_from: None,
        date: time::OffsetDateTime::now_utc(),
    };
    let preview = message::preview(
        &campaign.document,
        &state.message_settings,
        &recipient,
        &context,
        &options,
        None,
    )
    .map_err(|err| match err {
        message::MessageError::Template(err) => template_problem(&err),
        other => ApiError::invalid(vec![campaign::Problem {
            field: "recipient".into(),
            message: other.to_string(),
        }]),
    })?;
    Ok(Json(PreviewResponse {
        subject: preview.subject,
        html: preview.html,
        text: preview.text,
        eml: String::from_utf8_lossy(&preview.eml).into_owned(),
    }))
}
