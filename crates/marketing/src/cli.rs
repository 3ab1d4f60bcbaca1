//! The command line: one subcommand per role or tool (names are part of the contract).

use crate::config::{
    ApiArgs, LimitArgs, LinkArgs, MetricsArgs, SchedulerArgs, StoreArgs, TransportArgs, WorkerArgs,
    redacted,
};
use crate::submit::SubmitArgs;
use crate::task_commands::{TaskRepoClientArgs, TaskRepoServiceArgs, TasksCommand};
use crate::{report, roles, task_commands};
use anyhow::Context;
use campaign::CampaignStatus;
use campaign::{CampaignDocument, Recipient, RecipientFormat, RowError};
use clap::{Parser, Subcommand};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "marketing",
    version,
    about = "marketing-base: a self-hosted email-campaign service",
    long_about = "marketing-base: a self-hosted email-campaign service.\n\nConfiguration comes from environment variables (a .env file in the working directory is read at start); flags override them."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Threads that run the process's work. Unset: one for the commands that deliver (`send`,
    /// `worker`, `campaign-processor`; scale a deployment out by running more workers, one per
    /// core), one per core for the others (`serve`, `api`, `task-repo`, …). A delivering
    /// process mostly waits on the database and the SMTP server; with more threads its tasks
    /// keep waking each other across cores, which on a shared host costs more than it gives
    /// (docs/BENCHMARKS.md, "One thread per delivering process").
    #[arg(long, env = "RUNTIME_THREADS", global = true, value_parser = crate::config::runtime_threads)]
    pub runtime_threads: Option<usize>,
}

impl Cli {
    /// The runtime threads this command runs on: RUNTIME_THREADS, else the command's default
    /// (`None`: one per core).
    pub fn runtime_threads(&self) -> Option<usize> {
        self.runtime_threads.or(match self.command {
            Command::Send { .. } | Command::Worker { .. } | Command::CampaignProcessor { .. } => {
                Some(1)
            }
            _ => None,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything in one process on the embedded defaults (SQLite, outbox): the API, a
    /// task processor and a campaign processor sharing the store; a campaign sent through the
    /// API starts at once, a scheduled one at its time.
    Serve {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        worker: WorkerArgs,
        #[command(flatten)]
        transport: TransportArgs,
        #[command(flatten)]
        scheduler: SchedulerArgs,
    },
    /// Run only the HTTP API (scale-out role); `send` puts tasks in the task repository at
    /// TASK_REPO_URL (or in DATABASE_URL when unset).
    Api {
        #[command(flatten)]
        repo: TaskRepoClientArgs,
        #[command(flatten)]
        api: ApiArgs,
        // Carries `POST …/test` sends only; campaigns go out through the workers.
        #[command(flatten)]
        transport: TransportArgs,
    },
    /// Apply the database migrations and exit.
    Migrate {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List campaigns, newest first.
    #[command(subcommand)]
    Campaigns(CampaignsCommand),
    /// Show a campaign's status and recipients per delivery state; `--watch` follows it with a
    /// progress bar until it is completed, failed or cancelled (exit 1 when it failed).
    Status {
        /// The campaign id.
        id: String,
        /// Refresh until the campaign reaches a final state.
        #[arg(long)]
        watch: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Manage the admin API's keys (every /api/v1 route needs one).
    #[command(subcommand)]
    ApiKey(ApiKeyCommand),
    /// The suppression list: addresses never sent to (unsubscribed, bounced, complained, or
    /// added here).
    #[command(subcommand)]
    Suppressions(crate::suppressions::SuppressionsCommand),
    /// DKIM keys: `keygen` writes one and prints its DNS record, `check` compares the
    /// configured key with a published record.
    #[command(subcommand)]
    Dkim(crate::dkim::DkimCommand),
    /// Check a campaign file (and optionally its recipients) without storing anything.
    Validate {
        /// The campaign document (JSON).
        campaign: PathBuf,
        /// Recipients as a JSON array (.json), JSON Lines (.jsonl, .ndjson) or CSV with an
        /// `email` column (.csv).
        #[arg(long)]
        recipients: Option<PathBuf>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Render one recipient's message exactly as it would be sent: print subject, text and
    /// HTML, or write the complete .eml with --eml.
    Preview {
        /// The campaign document (JSON).
        campaign: PathBuf,
        /// Recipients file (.json array, .jsonl/.ndjson or .csv); without it, the campaign's
        /// inline recipients.
        #[arg(long)]
        recipients: Option<PathBuf>,
        /// Which recipient, counting from 1 in file order.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
        recipient: u64,
        /// Write the complete message to this .eml file instead of printing the parts.
        #[arg(long)]
        eml: Option<PathBuf>,
        #[command(flatten)]
        links: LinkArgs,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Send a campaign file to its recipients and print a summary (the one-shot main job):
    /// the campaign is stored, split into batches and delivered by a task processor in this
    /// process, with a progress bar. Exit 0 when the campaign completed, 1 when it failed
    /// (nothing could be sent), 130 when interrupted (run `marketing worker` to finish).
    Send {
        /// The campaign document (JSON), templates embedded.
        campaign: PathBuf,
        /// Recipients as a JSON array (.json), JSON Lines (.jsonl, .ndjson) or CSV with an
        /// `email` column (.csv), streamed; without it, the campaign's inline recipients.
        #[arg(long)]
        recipients: Option<PathBuf>,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        links: LinkArgs,
        #[command(flatten)]
        limits: LimitArgs,
        #[command(flatten)]
        worker: WorkerArgs,
        #[command(flatten)]
        transport: TransportArgs,
    },
    /// Run the task repository service (scale-out role): /health and /api/v1/tasks on
    /// TASK_REPO_BIND, tasks kept in DATABASE_URL.
    TaskRepo {
        #[command(flatten)]
        service: TaskRepoServiceArgs,
    },
    /// Inspect and repair tasks: list, show, requeue dead ones, counts per state.
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Run a task processor: claims campaign and batch tasks from the task repository
    /// (TASK_REPO_URL, or DATABASE_URL directly) and delivers them (scale-out role).
    Worker {
        #[command(flatten)]
        delivery: roles::DeliveryArgs,
    },
    /// Run a campaign processor: queues scheduled campaigns when due, exactly once across
    /// any number of replicas, into the task repository (TASK_REPO_URL, or DATABASE_URL
    /// directly) (scale-out role).
    Scheduler {
        #[command(flatten)]
        repo: TaskRepoClientArgs,
        #[command(flatten)]
        scheduler: SchedulerArgs,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
    /// Run the original design's campaign processor service: a campaign processor and a task
    /// processor in one process, so that every replica (`docker-compose up -d --scale
    /// campaign-processor=3`) both starts due campaigns (exactly once across replicas) and
    /// delivers a share of the batches (scale-out role).
    CampaignProcessor {
        #[command(flatten)]
        delivery: roles::DeliveryArgs,
        #[command(flatten)]
        scheduler: SchedulerArgs,
    },
    /// Submit a campaign for sending from a campaign file and recipients (the original
    /// design's submission tool): through the HTTP API (--api), the task repository service
    /// (--task-repo), or the local store (default). Prints the campaign id and the task id (or,
    /// through the API, the status); --wait follows it with a progress bar and exits 1 when the
    /// campaign failed. --count N submits N recipients, cycling the file when it is shorter.
    Submit(Box<SubmitArgs>),
}

#[derive(Debug, Subcommand)]
pub enum CampaignsCommand {
    /// List campaigns, newest first.
    List {
        /// Only campaigns in this state (draft, scheduled, queued, sending, paused, completed,
        /// failed, cancelled).
        #[arg(long)]
        status: Option<CampaignStatus>,
        /// How many to show (1 to 500).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=500))]
        limit: u32,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key and print it. It is shown this once; only its hash is stored.
    Create {
        /// A name that says who or what uses the key.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List keys (ids, names, dates; never secrets).
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Revoke a key by its id: requests with it get 403 from then on.
    Revoke {
        /// The key's id (the part after `mbk_`, before the next `_`).
        id: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

use crate::report::open as open_store;

async fn api_key(command: ApiKeyCommand) -> anyhow::Result<ExitCode> {
    match command {
        ApiKeyCommand::Create { name, store } => {
            let store = open_store(&store).await?;
            let created = api::auth::create_api_key(store.as_ref(), &name).await?;
            eprintln!(
                "created API key {} ({name}); it is shown only now:",
                created.record.id
            );
            println!("{}", created.key);
        }
        ApiKeyCommand::List { json, store } => {
            let keys = open_store(&store).await?.list_api_keys().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else {
                println!("{:<18} {:<26} {:<10} name", "id", "created", "state");
                for key in keys {
                    let state = if key.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    };
                    println!(
                        "{:<18} {:<26} {:<10} {}",
                        key.id, key.created_at, state, key.name
                    );
                }
            }
        }
        ApiKeyCommand::Revoke { id, store } => {
            if !open_store(&store).await?.revoke_api_key(&id).await? {
                anyhow::bail!("no API key has the id {id:?} (see `marketing api-key list`)");
            }
            println!("revoked API key {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            store,
            api,
            worker,
            transport,
            scheduler,
        } => roles::serve(&store, &api, &worker, &transport, &scheduler).await,
        Command::Api {
            repo,
            api,
            transport,
        } => roles::serve_api(&repo, &api, &transport).await,
        Command::ApiKey(command) => api_key(command).await,
        Command::Suppressions(command) => crate::suppressions::run(command).await,
        Command::Dkim(command) => crate::dkim::run(command),
        Command::Campaigns(CampaignsCommand::List {
            status,
            limit,
            json,
            store,
        }) => report::list_campaigns(open_store(&store).await?.as_ref(), status, limit, json).await,
        Command::Status {
            id,
            watch,
            json,
            store,
        } => report::show_status(open_store(&store).await?.as_ref(), &id, watch, json).await,
        Command::Migrate { store } => {
            let opened = open_store(&store).await?;
            println!(
                "migrations applied: {} store at {}",
                opened.backend(),
                redacted(&store.database_url)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate {
            campaign,
            recipients,
            limits,
        } => validate(&campaign, recipients.as_deref(), &limits.limits()),
        Command::Preview {
            campaign,
            recipients,
            recipient,
            eml,
            links,
            limits,
            store,
        } => {
            let document = read_campaign(&campaign, &limits.limits())?;
            let mut rows = match &recipients {
                Some(path) => read_recipients(path)?,
                None => Box::new(document.recipients.clone().into_iter().map(Ok)),
            };
            let chosen = rows
                .nth((recipient - 1) as usize)
                .ok_or_else(|| anyhow::anyhow!("there is no recipient {recipient}"))?
                .map_err(|err| anyhow::anyhow!("recipient {recipient}: {err}"))?;
            let links = links.links(open_store(&store).await?.as_ref()).await?;
            // A file is not stored yet, so the preview names campaign and recipient by zero ids.
            let campaign_id = campaign::CampaignId::from(uuid::Uuid::nil());
            let recipient_id = campaign::RecipientId::new(recipient as i64);
            let context = message::RecipientContext {
                campaign_id,
                recipient_id,
                unsubscribe_url: links.unsubscribe(campaign_id, recipient_id),
                unsubscribe_mailto: None,
                tracking: Default::default(),
            };
            let options = message::BuildOptions {
                envelope_from: None,
                date: time::OffsetDateTime::now_utc(),
            };
            let preview = message::preview(
                &document,
                &message::MessageSettings::default(),
                &chosen,
                &context,
                &options,
                None,
            )
            .map_err(|err| {
                anyhow::anyhow!(
                    "cannot render recipient {recipient} ({}): {err}",
                    chosen.email
                )
            })?;
            match eml {
                Some(path) => {
                    std::fs::write(&path, &preview.eml)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    println!("wrote {} ({} bytes)", path.display(), preview.eml.len());
                }
                None => {
                    println!("Subject: {}", preview.subject);
                    if let Some(text) = &preview.text {
                        println!("\n--- text ---\n{text}");
                    }
                    if let Some(html) = &preview.html {
                        println!("\n--- html ---\n{html}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Send {
            campaign,
            recipients,
            json,
            store,
            links,
            limits,
            worker,
            transport,
        } => {
            let document = read_campaign_to_create(&campaign, &limits.limits())?;
            crate::send::send(
                crate::send::SendJob {
                    document,
                    recipients,
                    json,
                },
                &store,
                &links,
                &limits,
                &worker,
                &transport,
            )
            .await
        }
        Command::TaskRepo { service } => task_commands::serve(&service).await,
        Command::Tasks(command) => task_commands::run(command).await,
        Command::Worker { delivery } => roles::worker(&delivery).await,
        Command::Scheduler {
            repo,
            scheduler,
            metrics,
        } => roles::scheduler(&repo, &scheduler, &metrics).await,
        Command::CampaignProcessor {
            delivery,
            scheduler,
        } => roles::campaign_processor(&delivery, &scheduler).await,
        Command::Submit(args) => crate::submit::submit(*args).await,
    }
}

pub(crate) fn read_campaign(
    path: &Path,
    limits: &campaign::Limits,
) -> anyhow::Result<CampaignDocument> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    CampaignDocument::from_json(&bytes, limits).map_err(|err| {
        let problems: Vec<String> = err.problems().iter().map(ToString::to_string).collect();
        anyhow::anyhow!(
            "{} is not a valid campaign: {}",
            path.display(),
            problems.join("; ")
        )
    })
}

/// [`read_campaign`] for a campaign about to be created: its `scheduled_at` must also lie in
/// the future and within 5 years, the rule the API applies.
pub(crate) fn read_campaign_to_create(
    path: &Path,
    limits: &campaign::Limits,
) -> anyhow::Result<CampaignDocument> {
    let document = read_campaign(path, limits)?;
    document
        .check_schedule(time::OffsetDateTime::now_utc())
        .map_err(|err| anyhow::anyhow!("{} cannot be sent: {err}", path.display()))?;
    Ok(document)
}

fn validate(
    campaign_path: &Path,
    recipients_path: Option<&Path>,
    limits: &campaign::Limits,
) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(campaign_path)
        .with_context(|| format!("cannot read {}", campaign_path.display()))?;
    // Read as the service reads a campaign about to be created; the templates are compiled
    // here (not checked against the inline recipients) to report every unknown variable,
    // strict or lenient, against the recipients file.
    let document = match service::read_new_campaign(&bytes, limits, time::OffsetDateTime::now_utc())
    {
        Ok(document) => document,
        Err(service::CampaignError::Invalid(err)) => {
            eprintln!("{} is not a valid campaign:", campaign_path.display());
            for problem in err.problems() {
                eprintln!("  - {problem}");
            }
            return Ok(ExitCode::FAILURE);
        }
        Err(err) => anyhow::bail!("{}: {err}", campaign_path.display()),
    };
    let compiled =
        match message::CompiledCampaign::compile(&document, &message::MessageSettings::default()) {
            Ok(compiled) => compiled,
            Err(err) => {
                eprintln!("{}: {err}", campaign_path.display());
                return Ok(ExitCode::FAILURE);
            }
        };
    println!(
        "campaign {:?} is valid ({} inline recipient(s))",
        document.name,
        document.recipients.len()
    );
    let Some(path) = recipients_path else {
        return Ok(ExitCode::SUCCESS);
    };
    let rows = read_recipients(path)?;
    let (mut good, mut duplicates, mut bad) = (0u64, 0u64, Vec::new());
    let mut seen = HashSet::new();
    let mut fields = HashSet::new();
    for row in rows {
        match row {
            Ok(recipient) if seen.insert(recipient.email.key()) => {
                good += 1;
                fields.extend(recipient.fields.keys().cloned());
            }
            Ok(_) => duplicates += 1,
            Err(err) => bad.push(err),
        }
    }
    println!(
        "{}: {good} recipient(s), {duplicates} duplicate(s) that would be skipped, {} invalid row(s)",
        path.display(),
        bad.len()
    );
    for err in bad.iter().take(20) {
        eprintln!("  - {err}");
    }
    let unknown = compiled.unknown_variables(&fields);
    let strict = document.templates.undefined_variables == campaign::UndefinedVariables::Strict;
    for variable in &unknown {
        eprintln!(
            "  - {} template, line {}: `{}` is used but no recipient has that field{}",
            variable.template,
            variable.line,
            variable.name,
            if strict {
                ""
            } else {
                " (renders empty: undefined_variables is lenient)"
            }
        );
    }
    Ok(if bad.is_empty() && (unknown.is_empty() || !strict) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Reads a recipient file in the format its extension names (`.csv`, `.jsonl`/`.ndjson`,
/// otherwise a JSON array), row by row as the caller asks: the file is never held whole.
pub fn read_recipients(
    path: &Path,
) -> anyhow::Result<Box<dyn Iterator<Item = Result<Recipient, RowError>> + Send>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let rows = RecipientFormat::from_path(path)
        .read(file)
        .with_context(|| format!("{} cannot be used", path.display()))?;
    Ok(Box::new(rows))
}
