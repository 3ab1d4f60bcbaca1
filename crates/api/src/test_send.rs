//! `POST /api/v1/campaigns/{id}/test`: the campaign's message, rendered, sent to a few
//! addresses through the configured transport, with a marked subject. It never touches the
//! campaign's state, its recipients or their counts.

use crate::campaigns::{find, template_problem};
use crate::problem::AdminProblems;
use crate::{ApiError, AppState};
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use campaign::{EmailAddress, Recipient};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The most addresses one test send may name: enough for a team, too few to be a campaign.
pub const MAX_TEST_ADDRESSES: usize = 10;

/// Put before the rendered subject of every test message, so nobody takes it for the real one.
pub const TEST_SUBJECT_MARK: &str = "[TEST] ";

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

/// What the transport said for each address.
#[derive(Serialize, utoipa::ToSchema)]
struct TestSendResponse {
    results: Vec<TestSendResult>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct TestSendResult {
    address: String,
    accepted: bool,
    /// The server's reply (or, for the outbox, where the file is).
    reply: Option<String>,
    /// Why it was not accepted.
    error: Option<String>,
}

/// Send a test message to up to 10 addresses.
///
/// Send the rendered message, subject marked `[TEST] `, to up to 10 addresses through the
/// configured transport. The campaign's state, recipients and counts are not touched.
#[utoipa::path(
    post,
    path = "/api/v1/campaigns/{id}/test",
    tag = "campaigns",
    operation_id = "send_test_message",
    params(("id" = String, Path, description = "Campaign id (UUID)")),
    request_body(content = TestSendRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "What the transport answered for each address", body = TestSendResponse),
        AdminProblems
    ),
    security(("api_key" = []))
)]
async fn test_send(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TestSendResponse>, ApiError> {
    let request: TestSendRequest = campaign::document::parse_json(&body?)?;
    let mut problems = Vec::new();
    if request.addresses.is_empty() || request.addresses.len() > MAX_TEST_ADDRESSES {
        problems.push(campaign::Problem {
            field: "addresses".into(),
            message: format!(
                "give 1 to {MAX_TEST_ADDRESSES} addresses (got {})",
                request.addresses.len()
            ),
        });
    }
    let mut addresses = Vec::new();
    for (n, raw) in request.addresses.iter().enumerate() {
        match EmailAddress::parse(raw) {
            Ok(address) => addresses.push(address),
            Err(err) => problems.push(campaign::Problem {
                field: format!("addresses[{n}]"),
                message: err.to_string(),
            }),
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::invalid(problems));
    }
    let campaign = find(&state, &id).await?;
    let transport = state.transport.clone().ok_or_else(|| {
        ApiError::Unavailable("this process has no mail transport to send tests with".into())
    })?;
    let mut document = campaign.document.clone();
    document.templates.subject = format!("{TEST_SUBJECT_MARK}{}", document.templates.subject);
    let compiled = message::CompiledCampaign::compile(&document, &state.message_settings)
        .map_err(|err| template_problem(&err))?;
    let mut results = Vec::with_capacity(addresses.len());
    for (n, address) in addresses.into_iter().enumerate() {
        let recipient = Recipient {
            email: address.clone(),
            fields: request.fields.clone(),
        };
        // Recipient 0 is no stored recipient: its links lead nowhere that changes a row.
        let context = message::RecipientContext {
            campaign_id: campaign.id,
            recipient_id: 0,
            unsubscribe_url: state.links.unsubscribe(campaign.id, 0),
            unsubscribe_mailto: None,
            // A test message records no opens or clicks: its links keep their original URLs.
            tracking: Default::default(),
        };
        let options = message::BuildOptions {
            envelope_from: None,
            date: time::OffsetDateTime::now_utc(),
        };
        let built = compiled
            .message(&recipient, &context, &options, None)
            .map_err(|err| match err {
                message::MessageError::Template(err) => template_problem(&err),
                other => ApiError::invalid(vec![campaign::Problem {
                    field: "fields".into(),
                    message: other.to_string(),
                }]),
            })?;
        let envelope =
            delivery::Envelope::new(&built.envelope_from, &built.recipients).map_err(|err| {
                ApiError::invalid(vec![campaign::Problem {
                    field: format!("addresses[{n}]"),
                    message: err.to_string(),
                }])
            })?;
        let outgoing = delivery::OutgoingMessage::new(envelope, built.bytes)
            .with_ids(campaign.id.to_string(), format!("test-{n}"));
        results.push(match transport.send(outgoing).await {
            Ok(accepted) => TestSendResult {
                address: address.as_str().to_string(),
                accepted: true,
                reply: Some(accepted.reply.to_string()),
                error: None,
            },
            Err(err) => TestSendResult {
                address: address.as_str().to_string(),
                accepted: false,
                reply: None,
                error: Some(err.to_string()),
            },
        });
    }
    tracing::info!(campaign = %campaign.id, addresses = results.len(), "test message sent");
    Ok(Json(TestSendResponse { results }))
}
