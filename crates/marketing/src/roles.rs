//! The long-running roles. Each logs where it listens and which store, task repository and
//! transport it uses, and stops cleanly on SIGINT/SIGTERM.

use crate::config::{ApiArgs, LimitArgs, LinkArgs, StoreArgs, TransportArgs, WorkerArgs, redacted};
use crate::task_commands::TaskRepoClientArgs;
use anyhow::Context;
use std::process::ExitCode;
use std::sync::Arc;
use store::CampaignStore;
use tasks::TaskRepository;
use tokio_util::sync::CancellationToken;

/// Opens the store and logs which one it is.
pub async fn open_store(
    role: &str,
    store_args: &StoreArgs,
) -> anyhow::Result<Arc<dyn CampaignStore>> {
    let store = store::connect(&store_args.database_url)
        .await
        .with_context(|| {
            format!(
                "cannot open the store at {}",
                redacted(&store_args.database_url)
            )
        })?;
    tracing::info!(role, store = store.backend(), url = %redacted(&store_args.database_url), "store ready (migrations applied)");
    Ok(store)
}

/// A token cancelled on SIGINT/SIGTERM, shared by every part of a role.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        cancel.cancel();
    });
    token
}

/// `marketing api`: the HTTP API alone.
pub async fn serve_api(repo: &TaskRepoClientArgs, api_args: &ApiArgs) -> anyhow::Result<ExitCode> {
    let store = open_store("api", &repo.store).await?;
    let tasks = repo.open().await?;
    log_task_repo("api", repo);
    let links = api_args.links.links(store.as_ref()).await?;
    let shutdown = shutdown_token();
    let (events, dispatcher) = api_args
        .links
        .webhooks
        .start(store.clone(), shutdown.clone())?;
    let served = run_api(
        "api",
        api_state(store, tasks, api_args, links, events),
        api_args,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    if let Some(dispatcher) = dispatcher {
        dispatcher.join().await;
    }
    served?;
    Ok(ExitCode::SUCCESS)
}

/// `marketing serve`: the API and a task processor in one process, sharing the store and
/// the task tables; a campaign sent through the API wakes the worker at once.
pub async fn serve(
    store_args: &StoreArgs,
    api_args: &ApiArgs,
    worker_args: &WorkerArgs,
    transport_args: &TransportArgs,
) -> anyhow::Result<ExitCode> {
    let store = open_store("serve", store_args).await?;
    let local = tasks::connect(&store_args.database_url)
        .await
        .context("cannot open the task repository")?;
    let waking = Arc::new(processor::WakingTasks::new(local));
    let waker = waking.waker();
    let tasks: Arc<dyn TaskRepository> = waking;
    let links = api_args.links.links(store.as_ref()).await?;
    let shutdown = shutdown_token();
    let transport = transport_args.transport()?;
    let (events, dispatcher) = api_args
        .links
        .webhooks
        .start(store.clone(), shutdown.clone())?;
    let services = processor::Services {
        store: store.clone(),
        tasks: tasks.clone(),
        transport: transport.clone(),
        links: Arc::new(links.clone()),
        message_settings: message::MessageSettings::default(),
        dkim: None,
        max_batch_size: api_args.limits.max_batch_size,
        events: events.clone(),
    };
    let worker = processor::Worker::new(
        worker_args.config(transport_args.smtp_connections),
        services,
        Some(waker),
    );
    log_worker("serve", &worker, transport.as_ref());
    let worker_run = tokio::spawn(worker.run(shutdown.clone()));
    let api = run_api(
        "serve",
        api_state(store, tasks, api_args, links, events),
        api_args,
        shutdown.clone(),
    )
    .await;
    // The API stops first (or failed to start): stop the worker too, then let it drain.
    shutdown.cancel();
    worker_run.await.context("the task processor panicked")?;
    if let Some(dispatcher) = dispatcher {
        dispatcher.join().await;
    }
    transport.close().await;
    api?;
    tracing::info!(role = "serve", "stopped");
    Ok(ExitCode::SUCCESS)
}

/// `marketing worker`: a task processor alone.
pub async fn worker(
    repo: &TaskRepoClientArgs,
    link_args: &LinkArgs,
    limits: &LimitArgs,
    worker_args: &WorkerArgs,
    transport_args: &TransportArgs,
) -> anyhow::Result<ExitCode> {
    let store = open_store("worker", &repo.store).await?;
    let tasks = repo.open().await?;
    log_task_repo("worker", repo);
    let links = link_args.links(store.as_ref()).await?;
    let transport = transport_args.transport()?;
    let shutdown = shutdown_token();
    let (events, dispatcher) = link_args.webhooks.start(store.clone(), shutdown.clone())?;
    let services = processor::Services {
        store,
        tasks,
        transport: transport.clone(),
        links: Arc::new(links),
        message_settings: message::MessageSettings::default(),
        dkim: None,
        max_batch_size: limits.max_batch_size,
        events,
    };
    let worker = processor::Worker::new(
        worker_args.config(transport_args.smtp_connections),
        services,
        None,
    );
    log_worker("worker", &worker, transport.as_ref());
    let stats = worker.stats();
    worker.run(shutdown.clone()).await;
    transport.close().await;
    // The worker stops on the shutdown signal, and so does the dispatcher: it writes what is
    // still queued to the outbox before the process ends.
    if let Some(dispatcher) = dispatcher {
        dispatcher.join().await;
    }
    let done = stats.snapshot();
    tracing::info!(
        role = "worker",
        sent = done.sent,
        deferred = done.deferred,
        failed = done.failed,
        suppressed = done.suppressed,
        batches = done.batches,
        "stopped"
    );
    Ok(ExitCode::SUCCESS)
}

fn log_task_repo(role: &str, repo: &TaskRepoClientArgs) {
    match &repo.task_repo_url {
        Some(url) => tracing::info!(role, "task repository: service at {url}"),
        None => tracing::info!(
            role,
            "task repository: tables in {}",
            redacted(&repo.store.database_url)
        ),
    }
}

pub fn log_worker(role: &str, worker: &processor::Worker, transport: &dyn delivery::Transport) {
    let config = worker.config();
    tracing::info!(
        role,
        worker_id = %config.worker_id,
        transport = %transport.describe(),
        in_flight = config.in_flight,
        tasks = config.max_tasks,
        check_interval = ?config.check_interval,
        lease = ?config.lease,
        "task processor started"
    );
}

fn api_state(
    store: Arc<dyn CampaignStore>,
    tasks: Arc<dyn TaskRepository>,
    api_args: &ApiArgs,
    links: tracking::Links,
    events: webhooks::EventSink,
) -> api::AppState {
    api::AppState {
        events,
        links: Arc::new(links),
        message_settings: message::MessageSettings::default(),
        store,
        tasks,
        settings: api::ApiSettings {
            limits: api_args.limits.limits(),
            max_body_bytes: api_args.max_body_bytes,
            max_import_bytes: api_args.max_import_bytes,
            rate_limit: api_args.rate_limit(),
        },
        bounces: api_args.bounces.settings(),
    }
}

/// Serves the API until `shutdown`, then drains in-flight requests.
async fn run_api(
    role: &str,
    state: api::AppState,
    api_args: &ApiArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(api_args.api_bind)
        .await
        .with_context(|| format!("cannot listen on API_BIND={}", api_args.api_bind))?;
    let address = listener.local_addr()?;
    tracing::info!(
        role,
        "API listening on http://{address} (public base URL {})",
        api_args.links.public_base_url
    );
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("the API server failed")?;
    Ok(())
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
    tracing::info!("shutdown requested; finishing in-flight work");
}
