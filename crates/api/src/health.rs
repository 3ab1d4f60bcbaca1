//! Liveness and readiness.

use crate::{ApiError, AppState};
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
}

/// The process is up and serving requests.
async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The process can do its work: the database answers.
async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.store.ping().await.map_err(|err| {
        ApiError::Unavailable(format!(
            "the {} store does not answer: {err}",
            state.store.backend()
        ))
    })?;
    Ok(Json(
        json!({ "status": "ready", "store": state.store.backend() }),
    ))
}
