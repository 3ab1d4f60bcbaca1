//! The task repository service: any [`TaskRepository`] behind `/api/v1/tasks…`, for workers
//! on other machines (through [`crate::HttpTaskRepository`]) and for operators.
//!
//! Routes (JSON in and out; errors `application/problem+json` with `type/title/status/detail`):
//! - `GET  /health` — open without a token, so probes need no secret
//! - `POST /api/v1/tasks` ([`NewTask`]) → 201 [`Task`]; `POST /api/v1/tasks/batch` (array) → 201
//! - `GET  /api/v1/tasks?status=&kind=&key_prefix=&after=&limit=` → array of [`Task`],
//!   creation order (`limit` 1 to 1,000; `key_prefix`: idempotency keys that start with it)
//! - `GET  /api/v1/tasks/counts` → `{"pending": n, …}`
//! - `GET  /api/v1/tasks/oldest-due` → `{"run_after": RFC 3339 or null}`
//! - `POST /api/v1/tasks/claim` `{worker_id, kinds, limit, lease_ms}` → array of [`Task`]
//!   (`limit` 0 to 1,000; `lease_ms` 1 to 86,400,000, a day)
//! - `POST /api/v1/tasks/heartbeat` `{worker_id, leases, lease_ms}` → `{lost: [Lease]}`
//! - `POST /api/v1/tasks/complete` `{worker_id, done: [{task_id, attempt, result}]}` →
//!   `{refused: [Lease]}`
//! - `GET  /api/v1/tasks/{id}`
//! - `POST /api/v1/tasks/{id}/complete` `{worker_id, attempt, result}` → 204
//! - `POST /api/v1/tasks/{id}/fail` `{worker_id, attempt, error, permanent?}` → `{status}`;
//!   `permanent: true` makes the task dead at once (a payload no retry can fix)
//! - `POST /api/v1/tasks/{id}/requeue` → [`Task`]

use crate::{Lease, NewTask, TaskError, TaskFilter, TaskRepository, TaskStatus};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use uuid::Uuid;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// Problem types; the adapter switches on them to give its callers the same [`TaskError`]
/// variants a repository in process would.
pub(crate) mod problem_type {
    pub const NOT_FOUND: &str = "/problems/not-found";
    pub const LEASE_LOST: &str = "/problems/lease-lost";
    pub const NOT_DEAD: &str = "/problems/not-dead";
    pub const VALIDATION: &str = "/problems/validation";
    pub const UNAUTHORIZED: &str = "/problems/unauthorized";
    pub const UNAVAILABLE: &str = "/problems/unavailable";
    pub const INTERNAL: &str = "/problems/internal";
}

/// A `send_campaign` payload carries a whole campaign with its templates, and batch creation
/// many batches: more than axum's 2 MB default.
const BODY_LIMIT: usize = 32 * 1024 * 1024;

/// An RFC 9457 problem document. `task_status` accompanies `/problems/not-dead`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_status: Option<String>,
}

/// A handler's failure, answered as problem+json.
struct Failure {
    status: StatusCode,
    kind: &'static str,
    detail: String,
    task_status: Option<String>,
}

impl Failure {
    fn new(status: StatusCode, kind: &'static str, detail: String) -> Failure {
        Failure {
            status,
            kind,
            detail,
            task_status: None,
        }
    }

    fn invalid(detail: String) -> Failure {
        Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            problem_type::VALIDATION,
            detail,
        )
    }
}

impl From<TaskError> for Failure {
    fn from(err: TaskError) -> Failure {
        let detail = err.to_string();
        match err {
            TaskError::NotFound(_) => {
                Failure::new(StatusCode::NOT_FOUND, problem_type::NOT_FOUND, detail)
            }
            TaskError::LeaseLost { .. } => {
                Failure::new(StatusCode::CONFLICT, problem_type::LEASE_LOST, detail)
            }
            TaskError::NotDead { status, .. } => Failure {
                task_status: Some(status),
                ..Failure::new(StatusCode::CONFLICT, problem_type::NOT_DEAD, detail)
            },
            TaskError::Invalid(_) => Failure::invalid(detail),
            TaskError::Database(_) => {
                tracing::error!(error = %detail, "task repository database error");
                Failure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    problem_type::UNAVAILABLE,
                    detail,
                )
            }
            _ => {
                tracing::error!(error = %detail, "task repository request failed");
                Failure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    problem_type::INTERNAL,
                    detail,
                )
            }
        }
    }
}

impl From<JsonRejection> for Failure {
    fn from(rejection: JsonRejection) -> Failure {
        Failure::invalid(rejection.body_text())
    }
}

impl From<QueryRejection> for Failure {
    fn from(rejection: QueryRejection) -> Failure {
        Failure::invalid(rejection.body_text())
    }
}

impl From<PathRejection> for Failure {
    fn from(rejection: PathRejection) -> Failure {
        Failure::new(
            StatusCode::NOT_FOUND,
            problem_type::NOT_FOUND,
            rejection.body_text(),
        )
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = Problem {
            kind: self.kind.to_string(),
            title: self
                .status
                .canonical_reason()
                .unwrap_or("Error")
                .to_string(),
            status: self.status.as_u16(),
            detail: self.detail,
            task_status: self.task_status,
        };
        let mut response = (self.status, Json(body)).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        response
    }
}

type Repo = Arc<dyn TaskRepository>;
type Answer<T> = Result<T, Failure>;

/// The service's routes. With a token, every `/api/v1` request must carry
/// `Authorization: Bearer <token>`; `/health` stays open. The binary adds `/metrics`.
pub fn router(repo: Arc<dyn TaskRepository>, token: Option<String>) -> Router {
    let token: Option<Arc<str>> = token.filter(|t| !t.is_empty()).map(Arc::from);
    let api = Router::new()
        .route("/api/v1/tasks", post(create).get(list))
        .route("/api/v1/tasks/batch", post(create_many))
        .route("/api/v1/tasks/counts", get(counts))
        .route("/api/v1/tasks/oldest-due", get(oldest_due))
        .route("/api/v1/tasks/claim", post(claim))
        .route("/api/v1/tasks/heartbeat", post(heartbeat))
        .route("/api/v1/tasks/complete", post(complete_many))
        .route("/api/v1/tasks/{id}", get(show))
        .route("/api/v1/tasks/{id}/complete", post(complete))
        .route("/api/v1/tasks/{id}/fail", post(fail))
        .route("/api/v1/tasks/{id}/requeue", post(requeue))
        .layer(middleware::from_fn_with_state(token, require_token));
    Router::new()
        .route("/health", get(health))
        .merge(api)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(repo)
}

/// Binds `bind` and serves [`router`] until the process ends.
pub async fn serve(
    bind: SocketAddr,
    repo: Arc<dyn TaskRepository>,
    token: Option<String>,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(bind).await?;
    axum::serve(listener, router(repo, token)).await
}

async fn require_token(
    State(expected): State<Option<Arc<str>>>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = expected else {
        return next.run(request).await;
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    // Constant time, so how long a refusal takes does not tell how much of a guess was right.
    let accepted =
        presented.is_some_and(|token| bool::from(token.as_bytes().ct_eq(expected.as_bytes())));
    if accepted {
        return next.run(request).await;
    }
    let detail = match presented {
        Some(_) => "the bearer token is not the one this task repository was started with",
        None => "missing Authorization: Bearer <token> (the task repository's shared token)",
    };
    let mut response = Failure::new(
        StatusCode::UNAUTHORIZED,
        problem_type::UNAUTHORIZED,
        detail.to_string(),
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

async fn not_found() -> Failure {
    Failure::new(
        StatusCode::NOT_FOUND,
        problem_type::NOT_FOUND,
        "no such route".to_string(),
    )
}

/// Answers 200 only when the database answers too, so a probe sees a broken store.
async fn health(State(repo): State<Repo>) -> Answer<impl IntoResponse> {
    repo.counts().await?;
    Ok(Json(serde_json::json!({"status": "ok"})))
}

async fn create(
    State(repo): State<Repo>,
    body: Result<Json<NewTask>, JsonRejection>,
) -> Answer<impl IntoResponse> {
    let Json(task) = body?;
    Ok((StatusCode::CREATED, Json(repo.create(task).await?)))
}

async fn create_many(
    State(repo): State<Repo>,
    body: Result<Json<Vec<NewTask>>, JsonRejection>,
) -> Answer<impl IntoResponse> {
    let Json(tasks) = body?;
    Ok((StatusCode::CREATED, Json(repo.create_many(tasks).await?)))
}

/// The listing's query string.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct ListQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

async fn list(
    State(repo): State<Repo>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Answer<impl IntoResponse> {
    let Query(query) = query?;
    let status = query
        .status
        .as_deref()
        .map(str::parse::<TaskStatus>)
        .transpose()
        .map_err(Failure::invalid)?;
    let limit = query.limit.unwrap_or(50);
    crate::check_page(limit)?;
    let filter = TaskFilter {
        status,
        kind: query.kind,
        key_prefix: query.key_prefix,
        after: query.after,
        limit,
    };
    Ok(Json(repo.list(&filter).await?))
}

async fn counts(State(repo): State<Repo>) -> Answer<impl IntoResponse> {
    Ok(Json(repo.counts().await?))
}

/// The answer of `GET /api/v1/tasks/oldest-due`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct OldestDue {
    #[serde(with = "time::serde::rfc3339::option")]
    pub run_after: Option<time::OffsetDateTime>,
}

async fn oldest_due(State(repo): State<Repo>) -> Answer<impl IntoResponse> {
    Ok(Json(OldestDue {
        run_after: repo.oldest_due().await?,
    }))
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ClaimBody {
    pub worker_id: String,
    pub kinds: Vec<String>,
    pub limit: u32,
    pub lease_ms: u64,
}

/// `lease_ms` as a duration: 1 to [`crate::MAX_LEASE`] (24 hours), checked before any
/// arithmetic.
fn lease_duration(ms: u64) -> Answer<time::Duration> {
    let lease = i64::try_from(ms)
        .map(time::Duration::milliseconds)
        .unwrap_or(time::Duration::MAX);
    crate::check_lease(lease).map_err(|_| {
        Failure::invalid(format!(
            "lease_ms must be between 1 and {} (24 hours), got {ms}",
            crate::MAX_LEASE.whole_milliseconds()
        ))
    })?;
    Ok(lease)
}

async fn claim(
    State(repo): State<Repo>,
    body: Result<Json<ClaimBody>, JsonRejection>,
) -> Answer<impl IntoResponse> {
    let Json(body) = body?;
    let lease = lease_duration(body.lease_ms)?;
    Ok(Json(
        repo.claim(&body.worker_id, &body.kinds, body.limit, lease)
            .await?,
    ))
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HeartbeatBody {
    pub worker_id: String,
    pub leases: Vec<Lease>,
    pub lease_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct HeartbeatAnswer {
    pub lost: Vec<Lease>,
}

async fn heartbeat(
    State(repo): State<Repo>,
    body: Result<Json<HeartbeatBody>, JsonRejection>,
) -> Answer<impl IntoResponse> {
    let Json(body) = body?;
    let lease = lease_duration(body.lease_ms)?;
    let lost = repo.heartbeat(&body.worker_id, &body.leases, lease).await?;
    Ok(Json(HeartbeatAnswer { lost }))
}

async fn show(
    State(repo): State<Repo>,
    id: Result<Path<Uuid>, PathRejection>,
) -> Answer<impl IntoResponse> {
    let Path(id) = id?;
    match repo.get(id).await? {
        Some(task) => Ok(Json(task)),
        None => Err(TaskError::NotFound(id).into()),
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CompleteBody {
    pub worker_id: String,
    pub attempt: u32,
    #[serde(default)]
    pub result: serde_json::Value,
}

async fn complete(
    State(repo): State<Repo>,
    id: Result<Path<Uuid>, PathRejection>,
    body: Result<Json<CompleteBody>, JsonRejection>,
) -> Answer<impl IntoResponse> {
    let Path(task_id) = id?;
    let Json(body) = body?;
    let lease = Lease {
        task_id,
        attempt: body.attempt,
    };
    repo.complete(&body.worker_id, lease, body.result).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Done {
    pub task_id: Uuid,
    pub attempt: u32,
    #[serde(default)]
    pub result: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CompleteManyBody {
    pub worker_id: String,
    pub done: Vec<Done>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CompleteManyAnswer {
    pub refused: Vec<Lease>,
}

async fn complete_many(
    State(repo): State<Repo>,
    body: Result<Json<CompleteManyBody>, JsonRejection>,
) -> Answer<impl IntoResponse> {
    let Json(body) = body?;
    let done: Vec<(Lease, serde_json::Value)> = body
        .done
        .into_iter()
        .map(|item| {
            let lease = Lease {
                task_id: item.task_id,
                attempt: item.attempt,
            };
            (lease, item.result)
        })
        .collect();
    let refused = repo.complete_many(&body.worker_id, &done).await?;
    Ok(Json(CompleteManyAnswer { refused }))
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct FailBody {
    pub worker_id: String,
    pub attempt: u32,
    pub error: String,
    /// Dead at once instead of retried (see `TaskRepository::fail_permanently`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permanent: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct FailAnswer {
    pub status: TaskStatus,
}

async fn fail(
    State(repo): State<Repo>,
    id: Result<Path<Uuid>, PathRejection>,
    body: Result<Json<FailBody>, JsonRejection>,
) -> Answer<impl IntoResponse> {
    let Path(task_id) = id?;
    let Json(body) = body?;
    let lease = Lease {
        task_id,
        attempt: body.attempt,
    };
    let status = if body.permanent {
        repo.fail_permanently(&body.worker_id, lease, &body.error)
            .await?;
        TaskStatus::Dead
    } else {
        repo.fail(&body.worker_id, lease, &body.error).await?
    };
    Ok(Json(FailAnswer { status }))
}

async fn requeue(
    State(repo): State<Repo>,
    id: Result<Path<Uuid>, PathRejection>,
) -> Answer<impl IntoResponse> {
    let Path(id) = id?;
    Ok(Json(repo.requeue(id).await?))
}
