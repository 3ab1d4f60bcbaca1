//! `POST /api/v1/campaigns/{id}/test`: the campaign's message, rendered, sent to a few
//! addresses through the configured transport, with a marked subject. It never touches the
//! campaign's state, its recipients or their counts.

use crate::campaigns::{find, template_problem};
use crate::idempotency::CallerKey;
use crate::problem::AdminProblems;
use crate::{ApiError, AppState};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use campaign::{EmailAddress, Recipient};
use serde::{Deserialize, Serialize};
use store::TestSendReservation;
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

/// What became of each address.
#[derive(Serialize, utoipa::ToSchema)]
struct TestSendResponse {
    /// One entry per distinct address (spellings of one mailbox count once), in request order.
    results: Vec<TestSendResult>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct TestSendResult {
    address: String,
    status: TestSendStatus,
    /// Whether the transport accepted the message (false when suppressed or failed).
    accepted: bool,
    /// The server's reply (or, for the outbox, where the file is).
    reply: Option<String>,
    /// Why it was not accepted.
    error: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum TestSendStatus {
    /// The transport accepted the message.
    Sent,
    /// The transport refused it or could not be reached.
    Failed,
    /// The address is on the suppression list: nothing was sent to it.
    Suppressed,
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
    let mut addresses: Vec<EmailAddress> = Vec::new();
    for (n, raw) in request.addresses.iter().enumerate() {
        match EmailAddress::parse(raw) {
            // One message per mailbox, whatever the spelling: the first one given is used.
            Ok(address) if addresses.iter().any(|seen| seen.key() == address.key()) => {}
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
    let Some(Extension(caller)) = caller else {
        return Err(ApiError::Unauthorized(
            "test sends are counted per API key: send `Authorization: Bearer <key>`".into(),
        ));
    };
    let campaign = find(&state, &id).await?;
    let transport = state.transport.clone().ok_or_else(|| {
        ApiError::Unavailable("this process has no mail transport to send tests with".into())
    })?;
    let mut document = campaign.document.clone();
    document.templates.subject = format!("{TEST_SUBJECT_MARK}{}", document.templates.subject);
    let compiled = message::CompiledCampaign::compile(&document, &state.message_settings)
        .map_err(|err| template_problem(&err))?;
    let build = |address: &EmailAddress, unsubscribe_url: String| {
        let recipient = Recipient {
            email: address.clone(),
            fields: request.fields.clone(),
        };
        // A test names no stored recipient (id 0); its unsubscribe link names the test send.
        let context = message::RecipientContext {
            campaign_id: campaign.id,
            recipient_id: 0,
            unsubscribe_url,
            unsubscribe_mailto: None,
            // A test message records no opens or clicks: its links keep their original URLs.
            tracking: Default::default(),
        };
        let options = message::BuildOptions {
            envelope_from: None,
            date: time::OffsetDateTime::now_utc(),
        };
        compiled
            .message(&recipient, &context, &options, None)
            .map_err(|err| match err {
                message::MessageError::Template(err) => template_problem(&err),
                message::MessageError::Build(message::BuildError::Envelope(err)) => {
                    ApiError::invalid(vec![campaign::Problem {
                        field: "addresses".into(),
                        message: format!("{}: {err}", recipient.email.as_str()),
                    }])
                }
                other => ApiError::invalid(vec![campaign::Problem {
                    field: "fields".into(),
                    message: other.to_string(),
                }]),
            })
    };

    let keys: Vec<String> = addresses.iter().map(|address| address.key()).collect();
    let suppressed = state.store.suppressed_among(&keys).await?;
    let to_send: Vec<EmailAddress> = addresses
        .iter()
        .filter(|address| !suppressed.contains(&address.key()))
        .cloned()
        .collect();
    // Render every message before anything is counted or sent, so a template that fails for
    // these fields costs no quota.
    for address in &to_send {
        build(address, state.links.test_unsubscribe(campaign.id, 0))?;
    }
    let test_ids = if to_send.is_empty() {
        Vec::new()
    } else {
        reserve(&state, &caller, campaign.id, &to_send).await?
    };
    let mut test_ids = to_send.iter().zip(test_ids);

    let mut results = Vec::with_capacity(addresses.len());
    for address in &addresses {
        let shown = address.as_str().to_string();
        if suppressed.contains(&address.key()) {
            results.push(TestSendResult {
                address: shown,
                status: TestSendStatus::Suppressed,
                accepted: false,
                reply: None,
                error: Some("the address is on the suppression list".into()),
            });
            continue;
        }
        let Some((_, test_id)) = test_ids.next() else {
            return Err(ApiError::Internal(
                "fewer test sends recorded than addresses".into(),
            ));
        };
        let built = build(address, state.links.test_unsubscribe(campaign.id, test_id))?;
        let bytes = match state
            .dkim
            .clone()
            .filter(|signer| signer.covers(document.from.email.domain()))
        {
            // Off the async threads, as the workers do: RSA signing takes over a millisecond.
            Some(signer) => {
                let unsigned = built.content;
                tokio::task::spawn_blocking(move || {
                    signer.sign_bytes(&unsigned, time::OffsetDateTime::now_utc().unix_timestamp())
                })
                .await
                .map_err(|err| ApiError::Internal(format!("DKIM signing did not finish: {err}")))?
                .map_err(|err| ApiError::Internal(format!("DKIM signing failed: {err}")))?
            }
            None => built.content.to_vec(),
        };
        let outgoing = message::OutgoingMessage {
            content: bytes.into(),
            ..built
        }
        .with_ids(campaign.id.to_string(), format!("test-{test_id}"));
        results.push(match transport.send(outgoing).await {
            Ok(accepted) => TestSendResult {
                address: shown,
                status: TestSendStatus::Sent,
                accepted: true,
                reply: Some(accepted.reply.to_string()),
                error: None,
            },
            Err(err) => TestSendResult {
                address: shown,
                status: TestSendStatus::Failed,
                accepted: false,
                reply: None,
                error: Some(err.to_string()),
            },
        });
    }
    tracing::info!(
        campaign = %campaign.id,
        sent = to_send.len(),
        suppressed = addresses.len() - to_send.len(),
        "test message sent"
    );
    Ok(Json(TestSendResponse { results }))
}

/// Counts `addresses` on the caller's test-send quota, or answers why not (nothing is sent).
async fn reserve(
    state: &AppState,
    caller: &CallerKey,
    campaign_id: campaign::CampaignId,
    addresses: &[EmailAddress],
) -> Result<Vec<i64>, ApiError> {
    let now = time::OffsetDateTime::now_utc();
    let quota = state.settings.test_send_quota;
    let reservation = state
        .store
        .reserve_test_sends(&caller.0, campaign_id, addresses, now, &quota.windows())
        .await?;
    let (window, retry_at) = match reservation {
        TestSendReservation::Reserved(ids) => return Ok(ids),
        TestSendReservation::OverQuota { window, retry_at } => (window, retry_at),
    };
    let per = if window.window <= time::Duration::minutes(1) {
        "minute (TEST_SEND_PER_MINUTE)"
    } else {
        "day (TEST_SEND_PER_DAY)"
    };
    let Some(retry_at) = retry_at else {
        return Err(ApiError::invalid(vec![campaign::Problem {
            field: "addresses".into(),
            message: format!(
                "{} addresses to send to, but an API key may send at most {} test messages a {per}",
                addresses.len(),
                window.limit
            ),
        }]));
    };
    let seconds = (retry_at - now).as_seconds_f64().ceil().max(1.0) as u64;
    Err(ApiError::TooManyRequests {
        detail: format!(
            "API key {} has sent its {} test messages a {per}; {} more fit in {seconds} s",
            caller.0,
            window.limit,
            addresses.len()
        ),
        retry_after_seconds: seconds,
    })
}
