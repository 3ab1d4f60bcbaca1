//! Errors as `application/problem+json` (RFC 9457).

use axum::http::{HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use campaign::{Problem, RowError, ValidationError};
use serde::Serialize;
use store::StoreError;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// Everything a handler can answer with instead of success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all (truncated, stray characters).
    #[error("{0}")]
    Malformed(String),
    /// A request the API understood but cannot accept, with every problem found.
    #[error("{detail}")]
    Invalid {
        detail: String,
        problems: Vec<Problem>,
    },
    /// Recipient rows that cannot be imported.
    #[error("{detail}")]
    InvalidRows { detail: String, rows: Vec<RowError> },
    /// Nothing exists at this path.
    #[error("{0}")]
    NotFound(String),
    /// The resource is in a state that does not allow this.
    #[error("{0}")]
    Conflict(String),
    /// The body is larger than this route accepts.
    #[error("{0}")]
    TooLarge(String),
    /// The Content-Type is not one this route reads.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// No API key, or one that is not valid.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid key that may no longer be used (revoked).
    #[error("{0}")]
    Forbidden(String),
    /// A query string or header that cannot be used.
    #[error("{0}")]
    BadRequest(String),
    /// The API key sent more requests than its rate limit (or quota) allows; the answer
    /// carries `Retry-After: retry_after_seconds`.
    #[error("{detail}")]
    TooManyRequests {
        detail: String,
        retry_after_seconds: u64,
    },
    /// The database cannot be reached; retry later.
    #[error("{0}")]
    Unavailable(String),
    /// A failure on our side; the detail is logged, not shown.
    #[error("internal error: {0}")]
    Internal(String),
}

/// An RFC 9457 problem document.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ProblemDetails {
    /// A stable identifier of the kind of problem, e.g. `/problems/validation`.
    #[serde(rename = "type")]
    kind: &'static str,
    /// The HTTP status text.
    title: &'static str,
    status: u16,
    /// What went wrong and what to fix.
    detail: String,
    /// For validation problems: every field (`field`, `message`) or row (`row`, `line`, `message`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    errors: Option<serde_json::Value>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Malformed(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid { .. } | ApiError::InvalidRows { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable identifier of the kind of problem, for clients to switch on.
    fn kind(&self) -> &'static str {
        match self {
            ApiError::Malformed(_) => "/problems/malformed-json",
            ApiError::Invalid { .. } => "/problems/validation",
            ApiError::InvalidRows { .. } => "/problems/invalid-recipients",
            ApiError::NotFound(_) => "/problems/not-found",
            ApiError::Unauthorized(_) => "/problems/unauthorized",
            ApiError::Forbidden(_) => "/problems/forbidden",
            ApiError::Conflict(_) => "/problems/conflict",
            ApiError::TooLarge(_) => "/problems/too-large",
            ApiError::UnsupportedMediaType(_) => "/problems/unsupported-media-type",
            ApiError::BadRequest(_) => "/problems/bad-request",
            ApiError::TooManyRequests { .. } => "/problems/rate-limited",
            ApiError::Unavailable(_) => "/problems/unavailable",
            ApiError::Internal(_) => "/problems/internal",
        }
    }

    pub fn invalid(problems: Vec<Problem>) -> ApiError {
        let detail = problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        ApiError::Invalid { detail, problems }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                "the request failed on our side; it has been logged".to_string()
            }
            other => other.to_string(),
        };
        let errors = match &self {
            ApiError::Invalid { problems, .. } => serde_json::to_value(problems).ok(),
            ApiError::InvalidRows { rows, .. } => serde_json::to_value(rows).ok(),
            _ => None,
        };
        let body = ProblemDetails {
            kind: self.kind(),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail,
            errors,
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        match self {
            ApiError::Unauthorized(_) => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::TooManyRequests {
                retry_after_seconds,
                ..
            } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_seconds.max(1)),
                );
            }
            _ => {}
        }
        response
    }
}

impl From<ValidationError> for ApiError {
    fn from(err: ValidationError) -> Self {
        match err {
            ValidationError::Malformed { .. } => ApiError::Malformed(err.to_string()),
            ValidationError::Invalid(problems) => ApiError::invalid(problems),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::CampaignNotFound(_) => ApiError::NotFound(err.to_string()),
            StoreError::WrongState { .. } => ApiError::Conflict(err.to_string()),
            StoreError::InvalidRecipients { ref rows, .. } => ApiError::InvalidRows {
                detail: err.to_string(),
                rows: rows.clone(),
            },
            StoreError::Source(message) => ApiError::BadRequest(message),
            StoreError::Unavailable(_) => ApiError::Unavailable(err.to_string()),
            StoreError::InvalidUrl { .. }
            | StoreError::Migration(_)
            | StoreError::Database(_)
            | StoreError::Corrupt(_) => ApiError::Internal(err.to_string()),
        }
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    fn from(rejection: axum::extract::rejection::BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(format!(
                "the request body is larger than this route accepts ({})",
                rejection.body_text()
            ))
        } else {
            ApiError::BadRequest(rejection.body_text())
        }
    }
}

/// A JSON answer with its status, serialized before the status is set: axum's
/// `(status, Json(value))` keeps the status even when serializing fails, which answered a 201
/// with a plain-text error. A value that cannot be written is a 500 problem instead.
pub(crate) fn json_answer<T: Serialize>(
    status: StatusCode,
    value: &T,
) -> Result<Response, ApiError> {
    let body = serde_json::to_vec(value)
        .map_err(|err| ApiError::Internal(format!("cannot write the answer as JSON: {err}")))?;
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

/// Answers a request whose path is not UTF-8 once percent-decoded (`/api/v1/campaigns/%FF`)
/// with a problem, as every other 4xx; the path extractors would answer in plain text.
pub(crate) async fn require_utf8_path(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if decodes_to_utf8(request.uri().path()) {
        return next.run(request).await;
    }
    ApiError::BadRequest(format!(
        "the path {} is not UTF-8 once percent-decoded",
        request.uri().path()
    ))
    .into_response()
}

fn decodes_to_utf8(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                index += 3;
            }
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    std::str::from_utf8(&decoded).is_ok()
}

pub(crate) async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("there is nothing at {}", uri.path()))
}

pub(crate) async fn method_not_allowed(uri: Uri) -> Response {
    let detail = format!("{} does not accept this method", uri.path());
    let status = StatusCode::METHOD_NOT_ALLOWED;
    let body = ProblemDetails {
        kind: "/problems/method-not-allowed",
        title: "Method Not Allowed",
        status: status.as_u16(),
        detail,
        errors: None,
    };
    let mut response = (status, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

/// The problem answers any admin route can give, described once for the OpenAPI document.
pub(crate) struct AdminProblems;

impl utoipa::IntoResponses for AdminProblems {
    fn responses() -> ProblemResponses {
        problem_responses(&[
            (400, "Malformed request (not JSON, bad query string)"),
            (401, "No API key, or one that is not valid"),
            (403, "The API key has been revoked"),
            (404, "No such campaign or route"),
            (405, "Method not allowed"),
            (409, "The campaign's state does not allow this"),
            (413, "The body is larger than this route accepts"),
            (415, "Unsupported Content-Type"),
            (
                422,
                "Valid JSON that is not acceptable; `errors` lists every problem",
            ),
            (
                429,
                "Too many requests for this API key; retry after `Retry-After` seconds",
            ),
            (503, "The database is unavailable"),
            (500, "Failure on our side (logged)"),
        ])
    }
}

pub(crate) type ProblemResponses =
    std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::response::Response>>;

/// The OpenAPI responses of a route's problem answers: each status with its description, as
/// `application/problem+json` with the ProblemDetails schema (a 429 also names Retry-After).
pub(crate) fn problem_responses(answers: &[(u16, &str)]) -> ProblemResponses {
    use utoipa::openapi::ContentBuilder;
    use utoipa::openapi::response::ResponseBuilder;
    answers
        .iter()
        .map(|&(status, description)| {
            let content = ContentBuilder::new()
                .schema(Some(utoipa::openapi::Ref::from_schema_name(
                    "ProblemDetails",
                )))
                .build();
            let mut response = ResponseBuilder::new()
                .description(description)
                .content(PROBLEM_JSON, content);
            if status == 429 {
                let seconds = utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::Integer)
                    .minimum(Some(1))
                    .build();
                response = response.header(
                    "Retry-After",
                    utoipa::openapi::HeaderBuilder::new()
                        .schema(seconds)
                        .description(Some("Seconds until the key may send again"))
                        .build(),
                );
            }
            (status.to_string(), response.build().into())
        })
        .collect()
}
