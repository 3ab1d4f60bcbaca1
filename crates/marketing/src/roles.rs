//! The long-running roles. Each logs where it listens and which store it uses.

use crate::config::{ApiArgs, StoreArgs, redacted};
use anyhow::Context;
use std::process::ExitCode;

/// Runs the HTTP API until SIGINT/SIGTERM, then drains in-flight requests and exits 0.
pub async fn serve_api(
    role: &str,
    store_args: &StoreArgs,
    api_args: &ApiArgs,
) -> anyhow::Result<ExitCode> {
    let store = store::connect(&store_args.database_url)
        .await
        .with_context(|| {
            format!(
                "cannot open the store at {}",
                redacted(&store_args.database_url)
            )
        })?;
    tracing::info!(role, store = store.backend(), url = %redacted(&store_args.database_url), "store ready (migrations applied)");
    let keys = api_args.tracking.keys(store.as_ref()).await?;
    let state = api::AppState {
        links: std::sync::Arc::new(tracking::Links::new(&api_args.public_base_url, keys)),
        message_settings: message::MessageSettings::default(),
        store,
        settings: api::ApiSettings {
            limits: api_args.limits.limits(),
            max_body_bytes: api_args.max_body_bytes,
            max_import_bytes: api_args.max_import_bytes,
        },
    };
    let listener = tokio::net::TcpListener::bind(api_args.api_bind)
        .await
        .with_context(|| format!("cannot listen on API_BIND={}", api_args.api_bind))?;
    let address = listener.local_addr()?;
    tracing::info!(
        role,
        "API listening on http://{address} (public base URL {})",
        api_args.public_base_url
    );
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("the API server failed")?;
    tracing::info!(role, "stopped");
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}
