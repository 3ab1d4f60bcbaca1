//! The task repository service's OpenAPI 3.1 document, generated from the handlers'
//! annotations in [`crate::http`] (utoipa) and served, without the token, at
//! `/api/v1/openapi.json` so other services can generate their clients from it.
//!
//! utoipa describes a `u32` as `int32`, whose maximum is half what serde accepts, so the `u32`
//! fields carry `format = Int64, minimum = 0, maximum = 4_294_967_295`: a value the document
//! allows is one the service can read.

use crate::http::PROBLEM_JSON;
use axum::Router;
use axum::http::header;
use axum::routing::get;
use std::collections::BTreeMap;
use std::sync::Arc;
use utoipa::Modify;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, response::Response, response::ResponseBuilder};

/// The name of the bearer scheme every `/api/v1/tasks…` operation requires (the handlers'
/// `security(("task_repo_token" = []))` spells it out: utoipa wants a literal there).
pub(crate) const TOKEN_SCHEME: &str = "task_repo_token";

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "marketing-base task repository",
        description = "Durable tasks with leases, fencing, retries with backoff and dead-lettering (`marketing task-repo`). Workers claim tasks with a lease, heart-beat it, then complete or fail them; the claim's attempt number is the fencing token. Every /api/v1/tasks route needs `Authorization: Bearer <TASK_REPO_TOKEN>` when the service was started with one; errors are application/problem+json.",
    ),
    tags((name = "tasks", description = "Create, list, claim, heart-beat, complete, fail and requeue tasks")),
    modifiers(&TokenSecurity),
    components(schemas(crate::http::Problem, campaign::submission::SubmitCampaign))
)]
pub(crate) struct TaskRepositoryDoc;

struct TokenSecurity;

impl Modify for TokenSecurity {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            TOKEN_SCHEME,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "TASK_REPO_TOKEN, the token the service was started with",
                    ))
                    .build(),
            ),
        );
    }
}

/// The problem answers every `/api/v1/tasks…` operation may give, as
/// `application/problem+json` with the Problem schema.
pub(crate) struct TaskProblems;

impl utoipa::IntoResponses for TaskProblems {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        [
            (401, "No bearer token, or not the service's (`/problems/unauthorized`)"),
            (404, "No such task or route (`/problems/not-found`)"),
            (405, "Method not allowed"),
            (
                409,
                "The lease is no longer held (`/problems/lease-lost`), or a requeued task is not dead (`/problems/not-dead`, with `task_status`)",
            ),
            (
                422,
                "The request is not acceptable: malformed JSON, a missing or wrong field, a bad query string (`/problems/validation`)",
            ),
            (500, "Failure on the service's side, logged (`/problems/internal`)"),
            (503, "The database is unavailable (`/problems/unavailable`)"),
        ]
        .into_iter()
        .map(|(status, description)| {
            let content = ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build();
            let response = ResponseBuilder::new()
                .description(description)
                .content(PROBLEM_JSON, content)
                .build();
            (status.to_string(), response.into())
        })
        .collect()
    }
}

/// `/api/v1/openapi.json`: public, like the API's, so clients can be generated without the
/// token (the document holds no data).
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(
    document: &utoipa::openapi::OpenApi,
) -> Router<S> {
    let json: Arc<str> = Arc::from(document.to_json().unwrap_or_else(|_| "{}".to_string()));
    Router::new().route(
        "/api/v1/openapi.json",
        get(move || {
            let json = json.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    json.to_string(),
                )
            }
        }),
    )
}
