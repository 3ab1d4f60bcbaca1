//! The long-running roles. Each logs where it listens and which store, task repository and
//! transport it uses, and stops cleanly on SIGINT/SIGTERM.

use crate::config::{
    ApiArgs, LimitArgs, LinkArgs, MetricsArgs, MetricsBind, SchedulerArgs, StoreArgs,
    TransportArgs, WorkerArgs, redacted,
};
use crate::monitoring::{self, Monitoring};
use crate::startup::Components;
use crate::task_commands::TaskRepoClientArgs;
use anyhow::Context;
use std::process::ExitCode;
use std::sync::Arc;
use store::CampaignStore;
use tasks::TaskRepository;
use tokio_util::sync::CancellationToken;

/// Opens the database (one pool, which the store and a local task repository share) and the
/// store on it, and logs which one it is.
pub async fn open_store(
    role: &str,
    store_args: &StoreArgs,
) -> anyhow::Result<(store::Database, Arc<dyn CampaignStore>)> {
    let (database, store) = crate::report::open_database(store_args).await?;
    tracing::info!(role, store = store.backend(), url = %redacted(&store_args.database_url), "store ready (migrations applied)");
    Ok((database, store))
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

/// `marketing api`: the HTTP API alone (its transport carries only test sends).
pub async fn serve_api(
    repo: &TaskRepoClientArgs,
    api_args: &ApiArgs,
    transport_args: &TransportArgs,
) -> anyhow::Result<ExitCode> {
    metrics::set_build_info("api");
    metrics::register_campaign_processing();
    let dkim = transport_args.dkim.signer()?;
    let (database, store) = open_store("api", &repo.store).await?;
    let tasks = repo.open_on(&database).await?;
    log_task_repo("api", repo);
    let monitoring = Monitoring {
        store: Some(store.clone()),
        tasks: Some(tasks.clone()),
        queue: repo.task_repo_url.is_none().then(|| tasks.clone()),
    };
    let shutdown = shutdown_token();
    let (components, dispatcher) = Components::build(
        store,
        tasks,
        &api_args.links,
        transport_args,
        dkim,
        shutdown.clone(),
        &database,
    )
    .await?;
    tracing::info!(role = "api", transport = %components.transport.describe(), "test sends go through this transport");
    let served = run_api(
        "api",
        components.api_state(api_args),
        api_args,
        monitoring,
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    if let Some(dispatcher) = dispatcher {
        dispatcher.join().await;
    }
    components.transport.close().await;
    served?;
    Ok(ExitCode::SUCCESS)
}

/// `marketing serve`: the API, a task processor and a campaign processor in one process,
/// sharing the store and the task tables; a campaign sent through the API wakes the worker at
/// once.
pub async fn serve(
    store_args: &StoreArgs,
    api_args: &ApiArgs,
    worker_args: &WorkerArgs,
    transport_args: &TransportArgs,
    scheduler_args: &SchedulerArgs,
) -> anyhow::Result<ExitCode> {
    metrics::set_build_info("serve");
    metrics::register_campaign_processing();
    let dkim = transport_args.dkim.signer()?;
    let (database, store) = open_store("serve", store_args).await?;
    let local = crate::task_commands::open_task_tables(store_args, Some(&database)).await?;
    let waking = Arc::new(processor::WakingTasks::new(local));
    let waker = waking.waker();
    let tasks: Arc<dyn TaskRepository> = waking;
    let shutdown = shutdown_token();
    let (components, dispatcher) = Components::build(
        store.clone(),
        tasks.clone(),
        &api_args.links,
        transport_args,
        dkim,
        shutdown.clone(),
        &database,
    )
    .await?;
    let worker = components.task_processor(
        "serve",
        worker_args.config(transport_args.smtp_connections, &database),
        api_args.limits.max_batch_size,
        Some(waker),
    );
    let worker_run = tokio::spawn(worker.run(shutdown.clone()));
    let monitoring = Monitoring {
        store: Some(store.clone()),
        tasks: Some(tasks.clone()),
        queue: Some(tasks.clone()),
    };
    let scheduler =
        processor::Scheduler::new(scheduler_args.config(), store.clone(), tasks.clone());
    log_scheduler("serve", &scheduler);
    let scheduler_run = tokio::spawn(scheduler.run(shutdown.clone()));
    let api = run_api(
        "serve",
        components.api_state(api_args),
        api_args,
        monitoring,
        shutdown.clone(),
    )
    .await;
    // The API stops first (or failed to start): stop the worker too, then let it drain.
    shutdown.cancel();
    worker_run.await.context("the task processor panicked")?;
    scheduler_run
        .await
        .context("the campaign processor panicked")?;
    if let Some(dispatcher) = dispatcher {
        dispatcher.join().await;
    }
    components.transport.close().await;
    api?;
    tracing::info!(role = "serve", "stopped");
    Ok(ExitCode::SUCCESS)
}

/// `marketing worker`: a task processor alone.
pub async fn worker(delivery: &DeliveryArgs) -> anyhow::Result<ExitCode> {
    run_task_processor("worker", delivery, None).await
}

/// `marketing campaign-processor`: the original design's scalable `campaign-processor`
/// service. A campaign processor (scheduled campaigns, queued exactly once across replicas)
/// and a task processor (delivery) in one process, so that every replica adds delivery
/// throughput rather than only another scheduler.
pub async fn campaign_processor(
    delivery: &DeliveryArgs,
    scheduler_args: &SchedulerArgs,
) -> anyhow::Result<ExitCode> {
    run_task_processor("campaign-processor", delivery, Some(scheduler_args)).await
}

/// The configuration of a role that delivers (worker, campaign-processor).
#[derive(Debug, Clone, clap::Args)]
pub struct DeliveryArgs {
    #[command(flatten)]
    pub repo: TaskRepoClientArgs,
    #[command(flatten)]
    pub links: LinkArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub transport: TransportArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// A task processor, and with `scheduler_args` a campaign processor beside it sharing the
/// store, the task repository, the metrics listener and the shutdown signal.
async fn run_task_processor(
    role: &'static str,
    delivery: &DeliveryArgs,
    scheduler_args: Option<&SchedulerArgs>,
) -> anyhow::Result<ExitCode> {
    let DeliveryArgs {
        repo,
        links: link_args,
        limits,
        worker: worker_args,
        transport: transport_args,
        metrics: metrics_args,
    } = delivery;
    metrics::set_build_info(role);
    metrics::register_campaign_processing();
    let dkim = transport_args.dkim.signer()?;
    let (database, store) = open_store(role, &repo.store).await?;
    let tasks = repo.open_on(&database).await?;
    log_task_repo(role, repo);
    let shutdown = shutdown_token();
    let metrics_listener = serve_metrics_of(
        role,
        metrics_args.listener_or(crate::config::WORKER_METRICS_BIND),
        repo,
        &store,
        &tasks,
        shutdown.clone(),
    )
    .await?;
    // Beside a campaign processor, the campaigns it queues wake this process's task
    // processor at once instead of at its next poll.
    let (tasks, waker): (Arc<dyn TaskRepository>, _) = match scheduler_args {
        Some(_) => {
            let waking = Arc::new(processor::WakingTasks::new(tasks));
            let waker = waking.waker();
            (waking, Some(waker))
        }
        None => (tasks, None),
    };
    let (components, dispatcher) = Components::build(
        store.clone(),
        tasks.clone(),
        link_args,
        transport_args,
        dkim,
        shutdown.clone(),
        &database,
    )
    .await?;
    let scheduler_run = scheduler_args.map(|scheduler_args| {
        let scheduler =
            processor::Scheduler::new(scheduler_args.config(), store.clone(), tasks.clone());
        log_scheduler(role, &scheduler);
        tokio::spawn(scheduler.run(shutdown.clone()))
    });
    let worker = components.task_processor(
        role,
        worker_args.config(transport_args.smtp_connections, &database),
        limits.max_batch_size,
        waker,
    );
    let stats = worker.stats();
    worker.run(shutdown.clone()).await;
    shutdown.cancel();
    if let Some(scheduler_run) = scheduler_run {
        scheduler_run
            .await
            .context("the campaign processor panicked")?;
    }
    components.transport.close().await;
    // The worker stops on the shutdown signal, and so does the dispatcher: it writes what is
    // still queued to the outbox before the process ends.
    if let Some(dispatcher) = dispatcher {
        dispatcher.join().await;
    }
    // A worker that stops on its own (not by a signal) takes its metrics listener along.
    shutdown.cancel();
    if let Some(listener) = metrics_listener {
        let _ = listener.await;
    }
    let done = stats.snapshot();
    tracing::info!(
        role,
        sent = done.sent,
        deferred = done.deferred,
        failed = done.failed,
        suppressed = done.suppressed,
        batches = done.batches,
        "stopped"
    );
    Ok(ExitCode::SUCCESS)
}

/// `marketing scheduler`: a campaign processor alone; any number may run against one store.
pub async fn scheduler(
    repo: &TaskRepoClientArgs,
    scheduler_args: &SchedulerArgs,
    metrics_args: &MetricsArgs,
) -> anyhow::Result<ExitCode> {
    metrics::set_build_info("scheduler");
    let (database, store) = open_store("scheduler", &repo.store).await?;
    let tasks = repo.open_on(&database).await?;
    log_task_repo("scheduler", repo);
    let shutdown = shutdown_token();
    let metrics_listener = serve_metrics_of(
        "scheduler",
        metrics_args.listener_or(crate::config::SCHEDULER_METRICS_BIND),
        repo,
        &store,
        &tasks,
        shutdown.clone(),
    )
    .await?;
    let scheduler = processor::Scheduler::new(scheduler_args.config(), store, tasks);
    log_scheduler("scheduler", &scheduler);
    scheduler.run(shutdown.clone()).await;
    shutdown.cancel();
    if let Some(listener) = metrics_listener {
        let _ = listener.await;
    }
    tracing::info!(role = "scheduler", "stopped");
    Ok(ExitCode::SUCCESS)
}

/// The metrics listener of a role without an HTTP API (worker, scheduler), `None` with
/// METRICS_BIND=off: `/ready` checks its store and task repository; it exports the queue
/// gauges only when it reads the task tables directly (with TASK_REPO_URL the service exports
/// them, once).
async fn serve_metrics_of(
    role: &'static str,
    bind: Option<std::net::SocketAddr>,
    repo: &TaskRepoClientArgs,
    store: &Arc<dyn CampaignStore>,
    tasks: &Arc<dyn TaskRepository>,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(bind) = bind else {
        tracing::info!(role, "metrics are off (METRICS_BIND=off)");
        return Ok(None);
    };
    let monitoring = Monitoring {
        store: Some(store.clone()),
        tasks: Some(tasks.clone()),
        queue: repo.task_repo_url.is_none().then(|| tasks.clone()),
    };
    Ok(Some(
        monitoring::serve_role_metrics(role, bind, monitoring, shutdown).await?,
    ))
}

fn log_scheduler(role: &str, scheduler: &processor::Scheduler) {
    let config = scheduler.config();
    tracing::info!(
        role,
        check_interval = ?config.check_interval,
        timer_refresh = ?config.timer_refresh,
        "campaign processor started"
    );
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

/// Serves the API until `shutdown`, then drains in-flight requests.
async fn run_api(
    role: &'static str,
    state: api::AppState,
    api_args: &ApiArgs,
    monitoring: Monitoring,
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
    let events = state.engagement.events().clone();
    // The API has its own /health and /ready; the binary adds /metrics (on this port unless
    // METRICS_BIND moves it: the port also serves the public tracking links) and the request
    // metrics around every route.
    let mut router = api::router(state);
    let mut metrics_listener = None;
    match api_args.metrics.metrics_bind {
        None => {
            tracing::info!(role, "metrics on the API's port: http://{address}/metrics");
            router = router.merge(monitoring::metrics_route(monitoring));
        }
        Some(MetricsBind::At(bind)) => {
            metrics_listener = Some(
                monitoring::serve_role_metrics(role, bind, monitoring, shutdown.clone()).await?,
            );
        }
        Some(MetricsBind::Off) => {
            tracing::info!(role, "metrics are off (METRICS_BIND=off)");
        }
    }
    let router = monitoring::with_request_metrics(router);
    // Connection info gives the tracking endpoints the client address they store hashed.
    let stop = shutdown.clone();
    let served = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move { stop.cancelled().await })
    .await
    .context("the API server failed");
    shutdown.cancel();
    if let Some(listener) = metrics_listener {
        let _ = listener.await;
    }
    served?;
    // Tracking events still queued are stored before the process ends.
    events.flush().await;
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
