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
//! - `GET  /api/v1/openapi.json` — the OpenAPI 3.1 document of all of the above, open like
//!   `/health`

use crate::openapi::TaskProblems;
use crate::{Lease, NewTask, Task, TaskError, TaskFilter, TaskRepository, TaskStatus};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// Problem types; the adapter switches on them to give its callers the same [`TaskError`]
/// variants a repository in process would.
pub(crate) mod problem_type {
    pub const NOT_FOUND: &str = "/problems/not-found";
    pub const METHOD_NOT_ALLOWED: &str = "/problems/method-not-allowed";
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
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
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

/// A handler's JSON request body: one way of reading it for every route, a body that does not
/// parse answered as the 422 problem of [`Failure::invalid`].
#[derive(FromRequest)]
#[from_request(via(Json), rejection(Failure))]
struct Body<T>(T);

/// The task id of a `/tasks/{id}` route; a path that is not one is answered 404.
#[derive(Deserialize, FromRequestParts)]
#[serde(transparent)]
#[from_request(via(Path), rejection(Failure))]
struct TaskId(Uuid);

/// The service's routes. With a token, every `/api/v1` request must carry
/// `Authorization: Bearer <token>`; `/health` stays open. The binary adds `/metrics`.
pub fn router(repo: Arc<dyn TaskRepository>, token: Option<String>) -> Router {
    let token: Option<Arc<str>> = token.filter(|t| !t.is_empty()).map(Arc::from);
    let (api, document) = api_routes().split_for_parts();
    let api = api.layer(middleware::from_fn_with_state(token, require_token));
    Router::new()
        .route("/health", get(health))
        .merge(api)
        .merge(crate::openapi::routes(&document))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(repo)
}

/// The `/api/v1/tasks…` routes with their OpenAPI descriptions: registering a route here is
/// what puts it in the document, so no route can be served undocumented.
fn api_routes() -> OpenApiRouter<Repo> {
    use utoipa::OpenApi;
    OpenApiRouter::with_openapi(crate::openapi::TaskRepositoryDoc::openapi())
        .routes(routes!(create, list))
        .routes(routes!(create_many))
        .routes(routes!(counts))
        .routes(routes!(oldest_due))
        .routes(routes!(claim))
        .routes(routes!(heartbeat))
        .routes(routes!(complete_many))
        .routes(routes!(show))
        .routes(routes!(complete))
        .routes(routes!(fail))
        .routes(routes!(requeue))
}

/// The service's OpenAPI document, as served at `/api/v1/openapi.json`.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    api_routes().split_for_parts().1
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

/// A known route asked with a method it does not serve; axum adds the `Allow` header.
async fn method_not_allowed(uri: axum::http::Uri) -> Failure {
    Failure::new(
        StatusCode::METHOD_NOT_ALLOWED,
        problem_type::METHOD_NOT_ALLOWED,
        format!("{} does not accept this method", uri.path()),
    )
}

/// Answers 200 only when the database answers too, so a probe sees a broken store.
async fn health(State(repo): State<Repo>) -> Answer<impl IntoResponse> {
    repo.counts().await?;
    Ok(Json(serde_json::json!({"status": "ok"})))
}

/// Create a task.
///
/// A task with the idempotency key of an existing one is not created again: the existing one
/// is returned.
#[utoipa::path(
    post,
    path = "/api/v1/tasks",
    tag = "tasks",
    operation_id = "create_task",
    request_body(content = NewTask, content_type = "application/json"),
    responses((status = 201, description = "Created, or the task that already has this idempotency key", body = Task), TaskProblems),
    security(("task_repo_token" = []))
)]
async fn create(State(repo): State<Repo>, Body(task): Body<NewTask>) -> Answer<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(repo.create(task).await?)))
}

/// Create many tasks in one transaction.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/batch",
    tag = "tasks",
    operation_id = "create_tasks",
    request_body(content = Vec<NewTask>, content_type = "application/json"),
    responses((status = 201, description = "The tasks, in the order given", body = Vec<Task>), TaskProblems),
    security(("task_repo_token" = []))
)]
async fn create_many(
    State(repo): State<Repo>,
    Body(tasks): Body<Vec<NewTask>>,
) -> Answer<impl IntoResponse> {
    Ok((StatusCode::CREATED, Json(repo.create_many(tasks).await?)))
}

/// The listing's query string.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only tasks in this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<TaskStatus>)]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Only tasks whose idempotency key starts with this, e.g. `send_batch:CAMPAIGN_ID:` for
    /// one campaign's batches (characters match as they are; `%` and `_` are no patterns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(format = Int64, minimum = 0, maximum = 4_294_967_295_u64)]
    pub limit: Option<u32>,
}

/// List tasks in creation order, a page at a time.
///
/// The next page starts `after` the last id of the previous one.
#[utoipa::path(
    get,
    path = "/api/v1/tasks",
    tag = "tasks",
    operation_id = "list_tasks",
    params(ListQuery),
    responses((status = 200, description = "A page of tasks", body = Vec<Task>), TaskProblems),
    security(("task_repo_token" = []))
)]
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

/// Count tasks per status.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/counts",
    tag = "tasks",
    operation_id = "count_tasks",
    responses((status = 200, description = "Tasks per status (pending, running, completed, dead)", body = BTreeMap<String, i64>), TaskProblems),
    security(("task_repo_token" = []))
)]
async fn counts(State(repo): State<Repo>) -> Answer<impl IntoResponse> {
    Ok(Json(repo.counts().await?))
}

/// The answer of `GET /api/v1/tasks/oldest-due`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct OldestDue {
    #[serde(with = "time::serde::rfc3339::option")]
    pub run_after: Option<time::OffsetDateTime>,
}

/// When the longest-waiting due task became due.
///
/// `run_after` of the oldest pending task whose time has come, or null: how far behind the
/// workers are.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/oldest-due",
    tag = "tasks",
    operation_id = "get_oldest_due",
    responses((status = 200, description = "When the oldest pending task became due, or null", body = OldestDue), TaskProblems),
    security(("task_repo_token" = []))
)]
async fn oldest_due(State(repo): State<Repo>) -> Answer<impl IntoResponse> {
    Ok(Json(OldestDue {
        run_after: repo.oldest_due().await?,
    }))
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct ClaimBody {
    pub worker_id: String,
    pub kinds: Vec<String>,
    #[schema(format = Int64, minimum = 0, maximum = 4_294_967_295_u64)]
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

/// Claim due tasks of the given kinds with a lease.
///
/// Up to `limit` tasks (pending and due, or running with an expired lease), highest priority
/// first. Each claimed task's `attempts` is the claim's fencing token: completing, failing and
/// heart-beating need it.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/claim",
    tag = "tasks",
    operation_id = "claim_tasks",
    request_body(content = ClaimBody, content_type = "application/json"),
    responses((status = 200, description = "The claimed tasks (possibly none), each leased to the worker", body = Vec<Task>), TaskProblems),
    security(("task_repo_token" = []))
)]
async fn claim(State(repo): State<Repo>, Body(body): Body<ClaimBody>) -> Answer<impl IntoResponse> {
    let lease = lease_duration(body.lease_ms)?;
    Ok(Json(
        repo.claim(&body.worker_id, &body.kinds, body.limit, lease)
            .await?,
    ))
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct HeartbeatBody {
    pub worker_id: String,
    pub leases: Vec<Lease>,
    pub lease_ms: u64,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct HeartbeatAnswer {
    pub lost: Vec<Lease>,
}

/// Extend the worker's leases.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/heartbeat",
    tag = "tasks",
    operation_id = "heartbeat_leases",
    request_body(content = HeartbeatBody, content_type = "application/json"),
    responses((status = 200, description = "The leases the worker no longer holds", body = HeartbeatAnswer), TaskProblems),
    security(("task_repo_token" = []))
)]
async fn heartbeat(
    State(repo): State<Repo>,
    Body(body): Body<HeartbeatBody>,
) -> Answer<impl IntoResponse> {
    let lease = lease_duration(body.lease_ms)?;
    let lost = repo.heartbeat(&body.worker_id, &body.leases, lease).await?;
    Ok(Json(HeartbeatAnswer { lost }))
}

/// Get a task.
#[utoipa::path(
    get,
    path = "/api/v1/tasks/{id}",
    tag = "tasks",
    operation_id = "get_task",
    params(("id" = Uuid, Path, description = "Task id")),
    responses((status = 200, description = "The task", body = Task), TaskProblems),
    security(("task_repo_token" = []))
)]
async fn show(State(repo): State<Repo>, TaskId(id): TaskId) -> Answer<impl IntoResponse> {
    match repo.get(id).await? {
        Some(task) => Ok(Json(task)),
        None => Err(TaskError::NotFound(id).into()),
    }
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct CompleteBody {
    pub worker_id: String,
    #[schema(format = Int64, minimum = 0, maximum = 4_294_967_295_u64)]
    pub attempt: u32,
    #[serde(default)]
    pub result: serde_json::Value,
}

/// Complete a task the worker holds the lease of.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/{id}/complete",
    tag = "tasks",
    operation_id = "complete_task",
    params(("id" = Uuid, Path, description = "Task id")),
    request_body(content = CompleteBody, content_type = "application/json"),
    responses((status = 204, description = "Completed"), TaskProblems),
    security(("task_repo_token" = []))
)]
async fn complete(
    State(repo): State<Repo>,
    TaskId(task_id): TaskId,
    Body(body): Body<CompleteBody>,
) -> Answer<impl IntoResponse> {
    let lease = Lease {
        task_id,
        attempt: body.attempt,
    };
    repo.complete(&body.worker_id, lease, body.result).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct Done {
    pub task_id: Uuid,
    #[schema(format = Int64, minimum = 0, maximum = 4_294_967_295_u64)]
    pub attempt: u32,
    #[serde(default)]
    pub result: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct CompleteManyBody {
    pub worker_id: String,
    pub done: Vec<Done>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct CompleteManyAnswer {
    pub refused: Vec<Lease>,
}

/// Complete many tasks at once.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/complete",
    tag = "tasks",
    operation_id = "complete_tasks",
    request_body(content = CompleteManyBody, content_type = "application/json"),
    responses((status = 200, description = "The leases refused because they were no longer held", body = CompleteManyAnswer), TaskProblems),
    security(("task_repo_token" = []))
)]
async fn complete_many(
    State(repo): State<Repo>,
    Body(body): Body<CompleteManyBody>,
) -> Answer<impl IntoResponse> {
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

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct FailBody {
    pub worker_id: String,
    #[schema(format = Int64, minimum = 0, maximum = 4_294_967_295_u64)]
    pub attempt: u32,
    pub error: String,
    /// `true`: no retry can fix this (an invalid payload) — the task is dead at once, whatever
    /// attempts it has left. Default `false`: retried after backoff until its attempts run out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permanent: bool,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub(crate) struct FailAnswer {
    pub status: TaskStatus,
}

/// Report a failed attempt.
///
/// The task is retried after exponential backoff until its attempts are used up, then it is
/// dead.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/{id}/fail",
    tag = "tasks",
    operation_id = "fail_task",
    params(("id" = Uuid, Path, description = "Task id")),
    request_body(content = FailBody, content_type = "application/json"),
    responses((status = 200, description = "Where the task went: pending (retried after backoff) or dead", body = FailAnswer), TaskProblems),
    security(("task_repo_token" = []))
)]
async fn fail(
    State(repo): State<Repo>,
    TaskId(task_id): TaskId,
    Body(body): Body<FailBody>,
) -> Answer<impl IntoResponse> {
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

/// Requeue a dead task.
#[utoipa::path(
    post,
    path = "/api/v1/tasks/{id}/requeue",
    tag = "tasks",
    operation_id = "requeue_task",
    params(("id" = Uuid, Path, description = "Task id")),
    responses((status = 200, description = "The task, pending again with fresh attempts", body = Task), TaskProblems),
    security(("task_repo_token" = []))
)]
async fn requeue(State(repo): State<Repo>, TaskId(id): TaskId) -> Answer<impl IntoResponse> {
    Ok(Json(repo.requeue(id).await?))
}
