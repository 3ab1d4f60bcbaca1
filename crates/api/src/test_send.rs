//! `POST /api/v1/campaigns/{id}/test`: the campaign's message, rendered, sent to a few
//! addresses through the configured transport, with a marked subject
//! ([`service::CampaignService::test_send`]). It never touches the campaign's state, its
//! recipients or their counts.

use crate::campaigns::campaign_id;
use crate::idempotency::CallerKey;
use crate::problem::AdminProblems;
use crate::{ApiError, AppState};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use service::{TestSend, TestSendResult, TestSender};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(test_send))
}

/// Where to send the test, and the personalization fields to render it with.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct TestSendRequest {
    /// 1 to 10 addresses.
    addresses: Vec<String>,
    /// Fields the templates print (e.g. `first_name`); the address is each recipient's email.
    #[serde(default)]
    #[schema(value_type = Object)]
    fields: serde_json::Map<String, serde_json::Value>,
}

/// What became of each address.
#[derive(Serialize, utoipa::ToSchema)]
struct TestSendResponse {
    /// One entry per distinct address (spellings of one mailbox count once), in request order.
    results: Vec<TestSendResult>,
}

/// Send a test message to up to 10 addresses.
///
/// Send the rendered message, subject marked `[TEST] `, to up to 10 addresses through the
/// configured transport. Addresses on the suppression list are answered `suppressed` and not
/// sent; several spellings of one address are sent once. Each key may send at most
/// TEST_SEND_PER_MINUTE test messages a minute and TEST_SEND_PER_DAY a day (429 with
/// Retry-After beyond it, and nothing is sent). Each message's unsubscribe link suppresses its
/// address. The campaign's state, recipients and counts are not touched.
#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/test",
    tag = "campaigns",
    operation_id = "send_test_message",
    params(("id" = String, Path, description = "Campaign id (UUID)")),
    request_body(content = TestSendRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "What became of each address", body = TestSendResponse),
        AdminProblems
    ),
    security(("api_key" = []))
)]
async fn test_send(
    State(state): State<AppState>,
    Path(id): Path<String>,
    caller: Option<Extension<CallerKey>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TestSendResponse>, ApiError> {
    let request: TestSendRequest = campaign::document::parse_json(&body?)?;
    let addresses = service::parse_test_addresses(&request.addresses)?;
    let Some(Extension(caller)) = caller else {
        return Err(ApiError::Unauthorized(
            "test sends are counted per API key: send `Authorization: Bearer <key>`".into(),
        ));
    };
    let quota = state.settings.test_send_quota.windows();
    let results = state
        .campaigns()
        .test_send(
            campaign_id(&id)?,
            TestSend {
                caller: caller.0,
                addresses,
                fields: request.fields,
            },
            TestSender {
                transport: state.transport.as_ref(),
                links: &state.links,
                dkim: state.dkim.as_ref(),
                quota: &quota,
            },
        )
        .await?;
    Ok(Json(TestSendResponse { results }))
}
