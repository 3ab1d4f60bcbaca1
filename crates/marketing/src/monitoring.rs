//! What every role serves for operators: `/metrics` (Prometheus text), `/ready`, and for the
//! roles without an HTTP API of their own (worker, scheduler) a listener at METRICS_BIND that
//! also answers `/health`. The metrics themselves live in the `metrics` crate.

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, middleware};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use store::CampaignStore;
use tasks::TaskRepository;
use tokio_util::sync::CancellationToken;

/// A scrape must not hang on a slow database: past this the queue gauges keep their last
/// values and the rest is served.
const QUEUE_READ_LIMIT: Duration = Duration::from_secs(2);

/// What a role's `/ready` checks and where its queue gauges come from.
#[derive(Clone, Default)]
pub struct Monitoring {
    /// Checked by `/ready`: the store answers.
    pub store: Option<Arc<dyn CampaignStore>>,
    /// Checked by `/ready`: the task repository (its service, or its tables) answers.
    pub tasks: Option<Arc<dyn TaskRepository>>,
    /// The task repository whose tables this process reads directly: each scrape refreshes
    /// `task_queue_depth` and `task_queue_oldest_wait_seconds` from it. `None` for clients of
    /// the task repository service, so N workers do not add N queries per scrape (the
    /// service exports the gauges).
    pub queue: Option<Arc<dyn TaskRepository>>,
}

/// `/metrics` only, for a router that has its own `/health` and `/ready`.
pub fn metrics_route(monitoring: Monitoring) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .with_state(Arc::new(monitoring))
}

/// `/ready` only.
pub fn ready_route(monitoring: Monitoring) -> Router {
    Router::new()
        .route("/ready", get(ready))
        .with_state(Arc::new(monitoring))
}

/// Counts and times every request of `router` by route template (`http_requests_total`,
/// `http_request_duration_seconds`).
pub fn with_request_metrics(router: Router) -> Router {
    router.layer(middleware::from_fn(metrics::http::track_requests))
}

/// Binds METRICS_BIND and serves `/metrics`, `/health` and `/ready` until `shutdown`; logs
/// the bound address (port 0 picks a free one). For roles with no HTTP API (`worker`,
/// `scheduler`), and for `api` and `serve` when METRICS_BIND moves /metrics off the API port.
pub async fn serve_role_metrics(
    role: &'static str,
    bind: SocketAddr,
    monitoring: Monitoring,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("cannot listen on METRICS_BIND={bind}"))?;
    let address = listener.local_addr()?;
    tracing::info!(role, "metrics listening on http://{address}/metrics");
    let router = with_request_metrics(
        Router::new()
            .route("/health", get(|| async { Json(json!({ "status": "ok" })) }))
            .merge(metrics_route(monitoring.clone()))
            .merge(ready_route(monitoring)),
    );
    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(err) = served {
            tracing::error!(role, error = %err, "the metrics listener failed");
        }
    }))
}

async fn serve_metrics(State(monitoring): State<Arc<Monitoring>>) -> Response {
    if let Some(queue) = &monitoring.queue {
        refresh_queue(queue.as_ref()).await;
    }
    (
        [(header::CONTENT_TYPE, metrics::TEXT_FORMAT)],
        metrics::render(),
    )
        .into_response()
}

async fn refresh_queue(queue: &dyn TaskRepository) {
    let read = async {
        let counts = queue.counts().await?;
        let oldest = queue.oldest_due().await?;
        Ok::<_, tasks::TaskError>((counts, oldest))
    };
    match tokio::time::timeout(QUEUE_READ_LIMIT, read).await {
        Ok(Ok((counts, oldest))) => {
            let waited = oldest.map_or(0.0, |since| {
                (time::OffsetDateTime::now_utc() - since).as_seconds_f64()
            });
            let counts: Vec<(&str, i64)> = counts.into_iter().collect();
            metrics::set_task_queue(&counts, waited);
        }
        Ok(Err(err)) => tracing::warn!(error = %err, "cannot read the task queue for metrics"),
        Err(_) => tracing::warn!(
            "reading the task queue for metrics took over {QUEUE_READ_LIMIT:?}; serving the last values"
        ),
    }
}

/// 200 when every dependency answers; otherwise 503 problem+json naming the one that does not.
async fn ready(State(monitoring): State<Arc<Monitoring>>) -> Response {
    let mut checked = serde_json::Map::new();
    if let Some(store) = &monitoring.store {
        if let Err(err) = store.ping().await {
            return api::ApiError::Unavailable(format!(
                "the {} store does not answer: {err}",
                store.backend()
            ))
            .into_response();
        }
        checked.insert("store".into(), json!(store.backend()));
    }
    if let Some(tasks) = &monitoring.tasks {
        if let Err(err) = tasks.counts().await {
            return api::ApiError::Unavailable(format!(
                "the task repository does not answer: {err}"
            ))
            .into_response();
        }
        checked.insert("task_repository".into(), json!("ok"));
    }
    checked.insert("status".into(), json!("ready"));
    Json(serde_json::Value::Object(checked)).into_response()
}
