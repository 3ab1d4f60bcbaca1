//! Bounce and complaint intake: `POST /api/v1/bounces`.
//!
//! Accepts what the bounce mailbox receives — a raw RFC 3464 delivery status notification or
//! an RFC 5965 (ARF) complaint, the whole mail as bytes — and a JSON form for relays that
//! report bounces over HTTP. Not behind the API key: the mail server's delivery hook (or an
//! ESP relay) authenticates with its own secret, BOUNCE_WEBHOOK_SECRET, so it never holds an
//! admin key.
//!
//! The handler authenticates, reads the body by its Content-Type and hands it to
//! `tracking::Intake`, which attributes the report to its recipient, records it and applies
//! the suppression rule (hard bounces and complaints at once, soft bounces by SOFT_BOUNCE_LIMIT
//! within SOFT_BOUNCE_WINDOW_HOURS).

use crate::{ApiError, AppState};
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, header};
use campaign::Problem;
use serde::Serialize;
use subtle::ConstantTimeEq;
use tracking::feedback::FeedbackError;
use tracking::intake::BounceJson;
use tracking::{Intake, IntakeError, IntakeResult, SoftBounceRule};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The header a sender may use instead of `Authorization: Bearer`.
pub const SECRET_HEADER: &str = "x-bounce-secret";

/// How bounces are authenticated and when soft bounces suppress.
#[derive(Debug, Clone)]
pub struct BounceSettings {
    /// BOUNCE_WEBHOOK_SECRET; `None` refuses every request (nobody can authenticate).
    pub webhook_secret: Option<String>,
    /// SOFT_BOUNCE_LIMIT: soft bounces within the window that suppress the address.
    pub soft_bounce_limit: u32,
    /// SOFT_BOUNCE_WINDOW_HOURS.
    pub soft_bounce_window: time::Duration,
}

impl BounceSettings {
    /// When soft bounces suppress, as the intake applies it.
    pub fn soft_bounce_rule(&self) -> SoftBounceRule {
        SoftBounceRule {
            limit: self.soft_bounce_limit,
            window: self.soft_bounce_window,
        }
    }
}

impl Default for BounceSettings {
    fn default() -> Self {
        let rule = SoftBounceRule::default();
        BounceSettings {
            webhook_secret: None,
            soft_bounce_limit: rule.limit,
            soft_bounce_window: rule.window,
        }
    }
}

/// The public feedback routes (authenticated by BOUNCE_WEBHOOK_SECRET, not an API key).
pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(receive))
}

/// The answer to an accepted report.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct IntakeReport {
    pub results: Vec<IntakeResult>,
}

impl From<IntakeError> for ApiError {
    fn from(err: IntakeError) -> Self {
        match err {
            IntakeError::Report(err) => ApiError::invalid(vec![Problem {
                field: "body".into(),
                message: err.to_string(),
            }]),
            IntakeError::Unusable(message) => ApiError::invalid(vec![Problem {
                field: "body".into(),
                message,
            }]),
            IntakeError::Store(err) => err.into(),
        }
    }
}

/// Report a bounce or spam complaint.
///
/// A raw DSN (RFC 3464) or ARF complaint (RFC 5965) as the whole mail (`message/rfc822` or
/// `multipart/report`), or the JSON form. Authenticated with BOUNCE_WEBHOOK_SECRET
/// (`Authorization: Bearer …` or `X-Bounce-Secret: …`), not an API key.
#[utoipa::path(
    post,
    path = "/api/v1/bounces",
    tag = "bounces",
    operation_id = "report_bounce",
    request_body(
        content(
            (BounceJson = "application/json"),
            (String = "message/rfc822"),
            (String = "multipart/report"),
        ),
        description = "The whole DSN or ARF mail as received, or the JSON form"
    ),
    params(("X-Bounce-Secret" = Option<String>, Header, description = "BOUNCE_WEBHOOK_SECRET, when not sent as `Authorization: Bearer`")),
    responses(
        (status = 200, description = "Recorded; one result per reported recipient", body = IntakeReport),
        BounceProblems
    )
)]
async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<IntakeReport>, ApiError> {
    authenticate(&state.bounces, &headers)?;
    let body = body?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let intake = Intake {
        store: state.store.as_ref(),
        keys: state.links.keys(),
        soft_bounces: state.bounces.soft_bounce_rule(),
        webhooks: &state.events,
    };
    let results = match media_type.as_str() {
        "application/json" => {
            let form: BounceJson = serde_json::from_slice(&body).map_err(|err| {
                if err.is_data() {
                    ApiError::invalid(vec![Problem {
                        field: "body".into(),
                        message: err.to_string(),
                    }])
                } else {
                    ApiError::Malformed(format!("the body is not valid JSON: {err}"))
                }
            })?;
            intake.json(form).await?
        }
        "message/rfc822" => intake.raw(&body).await?,
        "multipart/report" => {
            // Either the whole mail, or only the report's MIME body (its type and boundary
            // then come in the HTTP Content-Type): give the parser the header it needs.
            match intake.raw(&body).await {
                Err(IntakeError::Report(FeedbackError::NotAReport { .. })) => {
                    let mut whole = format!("Content-Type: {content_type}\r\n\r\n").into_bytes();
                    whole.extend_from_slice(&body);
                    intake.raw(&whole).await?
                }
                other => other?,
            }
        }
        _ => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "Content-Type {content_type:?} is not accepted here: send the raw mail as message/rfc822 (or multipart/report) or the JSON form as application/json"
            )));
        }
    };
    Ok(Json(IntakeReport { results }))
}

fn authenticate(settings: &BounceSettings, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(secret) = settings.webhook_secret.as_deref() else {
        return Err(ApiError::Unauthorized(
            "bounce intake is off: set BOUNCE_WEBHOOK_SECRET and send it as `Authorization: Bearer <secret>`".into(),
        ));
    };
    let offered = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .or_else(|| {
            headers
                .get(SECRET_HEADER)
                .and_then(|value| value.to_str().ok())
        });
    match offered {
        Some(offered) if bool::from(offered.trim().as_bytes().ct_eq(secret.as_bytes())) => Ok(()),
        Some(_) => Err(ApiError::Unauthorized(
            "the bounce secret is wrong: send BOUNCE_WEBHOOK_SECRET".into(),
        )),
        None => Err(ApiError::Unauthorized(
            "no bounce secret: send BOUNCE_WEBHOOK_SECRET as `Authorization: Bearer <secret>` or `X-Bounce-Secret`".into(),
        )),
    }
}

/// The problem answers of the bounce intake, for the OpenAPI document.
pub(crate) struct BounceProblems;

impl utoipa::IntoResponses for BounceProblems {
    fn responses() -> crate::problem::ProblemResponses {
        crate::problem::problem_responses(&[
            (400, "The JSON form is not valid JSON"),
            (401, "No BOUNCE_WEBHOOK_SECRET, or a wrong one"),
            (404, "No such route"),
            (413, "The body is larger than this route accepts"),
            (415, "Unsupported Content-Type"),
            (
                422,
                "Not a DSN or ARF report, or the JSON form has a bad field",
            ),
            (503, "The database is unavailable"),
        ])
    }
}
