//! The task repository from the command line: the `task-repo` role (the HTTP service) and the
//! operators' `marketing tasks list|show|requeue|counts`.

use crate::config::{StoreArgs, redacted};
use anyhow::Context;
use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tasks::{TaskFilter, TaskRepository, TaskStatus};

/// Where the task repository is: the service at TASK_REPO_URL, or else the tables in
/// DATABASE_URL directly.
#[derive(Debug, Clone, Args)]
pub struct TaskRepoClientArgs {
    /// URL of the task repository service (e.g. http://127.0.0.1:8503). Unset: use the
    /// database at DATABASE_URL directly.
    #[arg(long, env = "TASK_REPO_URL")]
    pub task_repo_url: Option<String>,
    /// Bearer token shared with the task repository service.
    #[arg(long, env = "TASK_REPO_TOKEN", hide_env_values = true, value_parser = crate::config::Hidden(crate::config::task_repo_token))]
    pub task_repo_token: Option<String>,
    /// PEM file of CAs trusted, besides the built-in web PKI roots, for an https://
    /// TASK_REPO_URL whose certificate a private CA signed.
    #[arg(long, env = "SERVICE_TLS_CA", value_name = "PEM")]
    pub service_tls_ca: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

impl TaskRepoClientArgs {
    /// The repository: the service, or the tables in DATABASE_URL through a pool of its own.
    pub async fn open(&self) -> anyhow::Result<Arc<dyn TaskRepository>> {
        self.open_local_or_remote(None).await
    }

    /// As [`open`](Self::open), with the tables reached through `database`, the pool the
    /// process's store uses.
    pub async fn open_on(
        &self,
        database: &store::Database,
    ) -> anyhow::Result<Arc<dyn TaskRepository>> {
        self.open_local_or_remote(Some(database)).await
    }

    async fn open_local_or_remote(
        &self,
        database: Option<&store::Database>,
    ) -> anyhow::Result<Arc<dyn TaskRepository>> {
        if let Some(url) = &self.task_repo_url {
            return Ok(Arc::new(
                tasks::HttpTaskRepository::new(url, self.task_repo_token.clone())
                    .with_trusted_ca(self.service_tls_ca.as_deref())
                    .context("SERVICE_TLS_CA")?,
            ));
        }
        open_task_tables(&self.store, database).await
    }
}

/// The task tables in the database at DATABASE_URL, read and written directly: through
/// `database`, the pool the process's store uses, when there is one, else a pool of their own.
pub async fn open_task_tables(
    store: &StoreArgs,
    database: Option<&store::Database>,
) -> anyhow::Result<Arc<dyn TaskRepository>> {
    match database {
        Some(database) => tasks::open(database).await,
        None => tasks::connect(&store.database_url).await,
    }
    .with_context(|| {
        format!(
            "cannot open the task repository at {}",
            redacted(&store.database_url)
        )
    })
}

/// The task repository service's address and token.
#[derive(Debug, Clone, Args)]
pub struct TaskRepoServiceArgs {
    /// Address the task repository service listens on.
    #[arg(long, env = "TASK_REPO_BIND", default_value = "127.0.0.1:8503", value_parser = task_repo_bind)]
    pub task_repo_bind: SocketAddr,
    /// Bearer token clients must send (at least 16 bytes). Required unless TASK_REPO_BIND is a
    /// loopback address or --insecure-no-token is given.
    #[arg(long, env = "TASK_REPO_TOKEN", hide_env_values = true, value_parser = crate::config::Hidden(crate::config::task_repo_token))]
    pub task_repo_token: Option<String>,
    /// Serve without TASK_REPO_TOKEN on a non-loopback address: anyone who reaches the port
    /// can queue mail. Only for a network nothing else can reach.
    #[arg(long)]
    pub insecure_no_token: bool,
    /// PEM file of CAs trusted, besides the built-in web PKI roots, for an https://
    /// TASK_REPO_URL whose certificate a private CA signed.
    #[arg(long, env = "SERVICE_TLS_CA", value_name = "PEM")]
    pub service_tls_ca: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Whether the service may start with its token setting, and the warning to log if so. A
/// service reachable by others without a token would let anyone queue mail, so that needs
/// the operator to say so with --insecure-no-token.
fn token_policy(args: &TaskRepoServiceArgs) -> Result<Option<String>, String> {
    if args.task_repo_token.is_some() {
        return Ok(None);
    }
    let bind = args.task_repo_bind;
    if bind.ip().is_loopback() {
        Ok(Some(format!(
            "TASK_REPO_TOKEN is not set: every local process may use the service on {bind}"
        )))
    } else if args.insecure_no_token {
        Ok(Some(format!(
            "INSECURE: TASK_REPO_TOKEN is not set and TASK_REPO_BIND={bind} is not a loopback address (--insecure-no-token): anyone who reaches the port can queue mail"
        )))
    } else {
        Err(format!(
            "TASK_REPO_TOKEN is not set and TASK_REPO_BIND={bind} is not a loopback address: anyone who reaches the port could queue mail. Set TASK_REPO_TOKEN (at least {} bytes, e.g. `openssl rand -hex 32`) here and on every client, bind to 127.0.0.1, or pass --insecure-no-token on a network nothing else can reach",
            crate::config::MIN_SHARED_SECRET_LEN
        ))
    }
}

fn task_repo_bind(value: &str) -> Result<SocketAddr, String> {
    value.parse().map_err(|_| {
        "TASK_REPO_BIND must be an IP address and port such as 127.0.0.1:8503".to_string()
    })
}

#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// List tasks in creation order.
    List {
        /// Only tasks in this state (pending, running, completed, dead).
        #[arg(long)]
        status: Option<TaskStatus>,
        /// Only tasks of this kind (e.g. send_campaign, send_batch).
        #[arg(long)]
        kind: Option<String>,
        /// How many (1 to 1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        repo: TaskRepoClientArgs,
    },
    /// Show one task with its payload, lease and last error (JSON).
    Show {
        id: uuid::Uuid,
        #[command(flatten)]
        repo: TaskRepoClientArgs,
    },
    /// Give a dead task a fresh set of attempts.
    Requeue {
        id: uuid::Uuid,
        #[command(flatten)]
        repo: TaskRepoClientArgs,
    },
    /// Tasks per state.
    Counts {
        #[command(flatten)]
        repo: TaskRepoClientArgs,
    },
}

pub async fn run(command: TasksCommand) -> anyhow::Result<ExitCode> {
    match command {
        TasksCommand::List {
            status,
            kind,
            limit,
            json,
            repo,
        } => {
            let found = repo
                .open()
                .await?
                .list(&TaskFilter {
                    status,
                    kind,
                    key_prefix: None,
                    after: None,
                    limit,
                })
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else {
                println!(
                    "{:<38} {:<14} {:<10} {:>8}  last error",
                    "id", "kind", "status", "attempts"
                );
                for task in found {
                    println!(
                        "{:<38} {:<14} {:<10} {:>3}/{:<4}  {}",
                        task.id,
                        task.kind,
                        task.status.as_str(),
                        task.attempts,
                        task.max_attempts,
                        task.last_error.unwrap_or_default()
                    );
                }
            }
        }
        TasksCommand::Show { id, repo } => {
            let task = repo
                .open()
                .await?
                .get(id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("task {id} does not exist"))?;
            println!("{}", serde_json::to_string_pretty(&task)?);
        }
        TasksCommand::Requeue { id, repo } => {
            let task = repo.open().await?.requeue(id).await?;
            println!(
                "requeued task {} ({}): pending, attempts reset",
                task.id, task.kind
            );
        }
        TasksCommand::Counts { repo } => {
            let counts = repo.open().await?.counts().await?;
            println!("{}", serde_json::to_string_pretty(&counts)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `marketing task-repo`: serves the repository over HTTP until SIGINT/SIGTERM.
pub async fn serve(args: &TaskRepoServiceArgs) -> anyhow::Result<ExitCode> {
    match token_policy(args) {
        Ok(None) => {}
        Ok(Some(warning)) => tracing::warn!("{warning}"),
        Err(refusal) => {
            eprintln!("error: {refusal}");
            return Ok(ExitCode::from(2));
        }
    }
    metrics::set_build_info("task-repo");
    let repo = open_task_tables(&args.store, None).await?;
    let listener = tokio::net::TcpListener::bind(args.task_repo_bind)
        .await
        .with_context(|| format!("cannot listen on TASK_REPO_BIND={}", args.task_repo_bind))?;
    tracing::info!(
        role = "task-repo",
        store = %redacted(&args.store.database_url),
        "task repository listening on http://{}",
        listener.local_addr()?
    );
    // The service's own routes, plus /metrics (with the queue gauges, read from its tables)
    // and /ready; neither needs the token, so Prometheus and probes need no secret.
    let monitoring = crate::monitoring::Monitoring {
        tasks: Some(repo.clone()),
        queue: Some(repo.clone()),
        ..Default::default()
    };
    let router = crate::monitoring::with_request_metrics(
        tasks::http::router(repo, args.task_repo_token.clone())
            .merge(crate::monitoring::metrics_route(monitoring.clone()))
            .merge(crate::monitoring::ready_route(monitoring)),
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(crate::roles::shutdown_signal())
        .await
        .context("the task repository service failed")?;
    Ok(ExitCode::SUCCESS)
}
