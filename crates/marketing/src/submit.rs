//! `marketing submit`: the original design's task-submission tool. It turns a campaign file
//! and a recipients file into a queued campaign — through the HTTP API, as one self-contained
//! `submit_campaign` task in the task repository service (nothing but its URL and token
//! needed), or straight into the local store — and can follow it to the end.
//! `--count N` makes load from the samples: the first N rows, or the rows cycled with
//! unique addresses when N exceeds the file.

use crate::cli::{read_campaign_to_create, read_recipients};
use crate::config::{LimitArgs, StoreArgs, redacted};
use anyhow::Context;
use campaign::{CampaignDocument, CampaignId, CampaignStatus, EmailAddress, Recipient};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tasks::TaskRepository;
use tls::http::{Method, StatusCode, header};

/// Recipients per `POST …/recipients` request: about 1 MB of JSON for the samples, far below
/// the API's default body limit.
const RECIPIENTS_PER_REQUEST: usize = 5_000;
/// How often `--wait` looks at the campaign.
const POLL_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// The campaign document (JSON), templates embedded.
    #[arg(long, value_name = "FILE")]
    pub template: PathBuf,

    /// Recipients as a JSON array (.json), JSON Lines (.jsonl, .ndjson) or CSV with an
    /// `email` column (.csv); without it, the campaign's inline recipients.
    #[arg(long, value_name = "FILE")]
    pub recipients: Option<PathBuf>,

    /// How many recipients to submit. Up to the file's size: its first N rows. Larger: the
    /// rows are cycled, and every copy after the first gets a suffix on its address's local
    /// part (ann@x.example, then ann+1@x.example, ann+2@x.example, …; shortened where the
    /// local part would pass 64 bytes), so all N addresses are valid and unique, ignoring
    /// case. Unset: every row once.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Submit through the HTTP API at this base URL (e.g. http://127.0.0.1:8000): the
    /// campaign is created, its recipients uploaded and it is sent with POST …/send.
    #[arg(long, env = "MARKETING_API_URL", value_name = "URL")]
    pub api: Option<String>,

    /// The API key for --api (see `marketing api-key create`).
    #[arg(long, env = "MARKETING_API_KEY", hide_env_values = true, value_parser = crate::config::Hidden(marketing_api_key))]
    pub api_key: Option<String>,

    /// Without --api: submit the whole campaign, recipients inline, as one `submit_campaign`
    /// task to the task repository service at this URL (e.g. http://127.0.0.1:8503); a worker
    /// stores and sends it, and no database is needed here (at most 50,000 recipients per
    /// task). Unset (and no --api): stored in DATABASE_URL and queued in its task tables.
    #[arg(long = "task-repo", env = "TASK_REPO_URL", value_name = "URL")]
    pub task_repo: Option<String>,

    /// Bearer token shared with the task repository service.
    #[arg(long, env = "TASK_REPO_TOKEN", hide_env_values = true, value_parser = crate::config::Hidden(crate::config::task_repo_token))]
    pub task_repo_token: Option<String>,

    /// PEM file of CAs trusted, besides the built-in web PKI roots, for an https:// --api or
    /// --task-repo whose certificate a private CA signed.
    #[arg(long, env = "SERVICE_TLS_CA", value_name = "PEM")]
    pub service_tls_ca: Option<PathBuf>,

    /// Follow the campaign with a progress bar until it is completed, failed or cancelled;
    /// exit 1 when it failed. With --task-repo: follow the task, then the campaign's send
    /// tasks until none is pending or running; exit 1 when a task died.
    #[arg(long)]
    pub wait: bool,

    /// Print one JSON object (ids, status, and with --wait the final delivery counts).
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub limits: LimitArgs,
}

fn marketing_api_key(value: &str) -> Result<String, String> {
    crate::config::secret("MARKETING_API_KEY", value)
}

/// What a campaign looks like while it is followed: its status and recipients per state.
struct Progress {
    status: CampaignStatus,
    deliveries: BTreeMap<String, i64>,
}

impl Progress {
    fn total(&self) -> i64 {
        self.deliveries.values().sum()
    }

    fn count(&self, state: &str) -> i64 {
        self.deliveries.get(state).copied().unwrap_or(0)
    }

    /// Recipients with a final outcome (neither pending nor waiting for a retry).
    fn finished(&self) -> i64 {
        self.total() - self.count("pending") - self.count("deferred")
    }

    fn is_final(&self) -> bool {
        matches!(
            self.status,
            CampaignStatus::Completed | CampaignStatus::Failed | CampaignStatus::Cancelled
        )
    }
}

pub async fn submit(args: SubmitArgs) -> anyhow::Result<ExitCode> {
    if args.api.is_some() && args.api_key.is_none() {
        anyhow::bail!(
            "--api needs an API key: pass --api-key KEY or set MARKETING_API_KEY (create one with `marketing api-key create`)"
        );
    }
    let mut document = read_campaign_to_create(&args.template, &args.limits.limits())?;
    let rows = source_rows(&mut document, args.recipients.as_ref())?;
    // Checked here, before anything is stored or queued, as the API checks a new campaign:
    // the API only sees the recipients after the campaign exists, so a typo in a variable
    // would otherwise reach every recipient.
    service::check_new_campaign(
        &document,
        &rows,
        &message::MessageSettings::default(),
        u64::MAX,
    )
    .map_err(|err| anyhow::anyhow!("{}: {err}", args.template.display()))?;
    let count = args.count.unwrap_or(rows.len() as u64);
    if (rows.len() as u64) < count {
        eprintln!(
            "{} unique recipients cycled to {count} (copies get a +N address suffix)",
            rows.len()
        );
    }
    let recipients = Generated::new(rows, count);

    if let Some(api) = &args.api {
        return submit_to_api(&args, api, document, recipients, count).await;
    }
    if let Some(url) = &args.task_repo {
        return submit_task(&args, url, document, recipients, count).await;
    }
    let (database, store) = crate::report::open_database(&args.store).await?;
    let tasks = crate::task_commands::open_task_tables(&args.store, Some(&database)).await?;
    let where_tasks = format!("the task tables of {}", redacted(&args.store.database_url));
    let campaigns = service::CampaignService::new(store.as_ref(), tasks.as_ref());
    let (record, report) = campaigns
        .create(&document, store::recipient_stream(recipients.map(Ok)))
        .await
        .context("the campaign was not stored")?;
    crate::report::warn_unrecognised_time_zones(&serde_json::to_value(&report)?);
    let (_, task) = campaigns
        .send(record.id)
        .await
        .with_context(|| {
            format!(
                "campaign {} is stored but could not be queued in {where_tasks}; check that it is reachable (and TASK_REPO_TOKEN), then queue it with POST /api/v1/campaigns/{}/send (safe to repeat)",
                record.id, record.id
            )
        })?;
    eprintln!(
        "campaign {:?} stored in {} with {} recipients; task {} queued in {where_tasks} for a task processor (`marketing worker` or `marketing serve`) to deliver",
        record.name,
        redacted(&args.store.database_url),
        report.imported,
        task.id
    );
    let mut summary = serde_json::json!({
        "campaign_id": record.id,
        "task_id": task.id,
        "recipients": report.imported,
        "status": CampaignStatus::Queued,
    });
    if !args.json {
        println!("campaign {}", record.id);
        println!("task {}", task.id);
    }
    if !args.wait {
        return finish(&args, summary, None);
    }
    let id = record.id;
    let store = store.clone();
    let progress = follow(report.imported, args.json, || {
        let store = store.clone();
        async move {
            let campaign = store
                .get_campaign(id)
                .await?
                .with_context(|| format!("campaign {id} disappeared from the store"))?;
            let counts = store.delivery_counts(id).await?;
            Ok(Progress {
                status: campaign.status,
                deliveries: counts
                    .0
                    .iter()
                    .map(|(state, n)| (state.to_string(), *n))
                    .collect(),
            })
        }
    })
    .await?;
    summary["status"] = serde_json::json!(progress.status);
    finish(&args, summary, Some(progress))
}

/// Submits the campaign with its recipients inline as one `submit_campaign` task to the task
/// repository service; with --wait follows the task, then the campaign's send tasks, through
/// the service alone.
async fn submit_task(
    args: &SubmitArgs,
    url: &str,
    mut document: CampaignDocument,
    recipients: Generated,
    count: u64,
) -> anyhow::Result<ExitCode> {
    if count > processor::SUBMIT_CAMPAIGN_MAX_RECIPIENTS {
        anyhow::bail!(
            "--task-repo carries the recipients inside one task: at most {} (here {count}); pass a smaller --count, split the list into several submits (each its own campaign), or submit through the API (--api), which streams any number",
            processor::SUBMIT_CAMPAIGN_MAX_RECIPIENTS
        );
    }
    let repo = tasks::HttpTaskRepository::new(url, args.task_repo_token.clone())
        .with_trusted_ca(args.service_tls_ca.as_deref())
        .context("SERVICE_TLS_CA")?;
    document.recipients = recipients.collect();
    let imported = document.recipients.len() as u64;
    let payload = processor::SubmitCampaign {
        version: processor::SUBMIT_CAMPAIGN_VERSION,
        campaign: document,
    };
    let task = repo
        .create(tasks::NewTask::new(
            processor::SUBMIT_CAMPAIGN,
            serde_json::to_value(&payload)?,
        ))
        .await
        .with_context(|| format!("the campaign was not submitted to the task repository service at {url}; nothing was queued"))?;
    eprintln!(
        "campaign {:?} with {imported} recipients submitted as task {} to the task repository service at {url}; a task processor (`marketing worker`) stores and sends it",
        payload.campaign.name, task.id
    );
    if !args.json {
        println!("task {}", task.id);
    }
    let mut summary = serde_json::json!({
        "task_id": task.id,
        "recipients": imported,
        "status": task.status,
    });
    if !args.wait {
        return finish(args, summary, None);
    }
    // The task first: it ends completed (the campaign stored and queued) or dead.
    let done = loop {
        let now = repo
            .get(task.id)
            .await?
            .with_context(|| format!("task {} disappeared from the task repository", task.id))?;
        match now.status {
            tasks::TaskStatus::Completed => break now,
            tasks::TaskStatus::Dead => {
                summary["status"] = serde_json::json!("dead");
                summary["error"] = serde_json::json!(now.last_error);
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&summary)?);
                }
                eprintln!(
                    "task {} is dead: {}",
                    task.id,
                    now.last_error.as_deref().unwrap_or("no error recorded")
                );
                return Ok(ExitCode::FAILURE);
            }
            _ => tokio::time::sleep(POLL_EVERY).await,
        }
    };
    let result = done.result.unwrap_or_default();
    let campaign_id: CampaignId = result["campaign_id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .with_context(|| format!("task {} completed without a campaign id: {result}", task.id))?;
    summary["campaign_id"] = serde_json::json!(campaign_id);
    summary["status"] = result["status"].clone();
    if !args.json {
        println!("campaign {campaign_id}");
    }
    if result["status"] == "scheduled" {
        eprintln!(
            "campaign {campaign_id} is scheduled; the campaign processor queues it at its time"
        );
        return finish(args, summary, None);
    }
    let (ended, counts) = follow_send_tasks(&repo, campaign_id, imported, args.json).await?;
    summary["status"] = serde_json::json!(ended);
    summary["deliveries"] = serde_json::json!(counts);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("status {ended}");
        let listed: Vec<String> = counts
            .iter()
            .map(|(state, n)| format!("{state} {n}"))
            .collect();
        println!("  {}", listed.join(" · "));
    }
    Ok(if ended == "completed" {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Follows a campaign's `send_campaign` and `send_batch` tasks (found by their idempotency-key
/// prefixes) until none is pending or running, drawing the recipients the finished batches
/// report. Returns "completed", or "failed" when one of them died, and the summed outcomes.
async fn follow_send_tasks(
    repo: &dyn TaskRepository,
    campaign: CampaignId,
    total: u64,
    json: bool,
) -> anyhow::Result<(&'static str, BTreeMap<String, u64>)> {
    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let prefixes = [
        format!("{}:{campaign}:", processor::SEND_CAMPAIGN),
        format!("{}:{campaign}:", processor::SEND_BATCH),
    ];
    loop {
        let mut found = Vec::new();
        for prefix in &prefixes {
            let mut after = None;
            loop {
                let page = repo
                    .list(&tasks::TaskFilter {
                        key_prefix: Some(prefix.clone()),
                        after,
                        limit: 1000,
                        ..Default::default()
                    })
                    .await?;
                after = page.last().map(|t| t.id);
                let full = page.len() == 1000;
                found.extend(page);
                if !full {
                    break;
                }
            }
        }
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        let (mut open, mut dead) = (0, 0);
        for task in &found {
            match task.status {
                tasks::TaskStatus::Pending | tasks::TaskStatus::Running => open += 1,
                tasks::TaskStatus::Dead => dead += 1,
                tasks::TaskStatus::Completed => {}
            }
            if task.kind == processor::SEND_BATCH
                && let Some(result) = &task.result
            {
                for state in ["sent", "failed", "suppressed"] {
                    *counts.entry(state.to_string()).or_default() +=
                        result[state].as_u64().unwrap_or(0);
                }
            }
        }
        let finished: u64 = counts.values().sum();
        bar.set_position(finished.min(total));
        bar.set_message(format!(
            "tasks open {open} · sent {} · failed {} · suppressed {}",
            counts.get("sent").copied().unwrap_or(0),
            counts.get("failed").copied().unwrap_or(0),
            counts.get("suppressed").copied().unwrap_or(0)
        ));
        // The send_campaign task exists from the submit task's completion on; its batches
        // before it completes, and each follow-up before its batch completes.
        if !found.is_empty() && open == 0 {
            bar.finish_and_clear();
            if dead > 0 {
                eprintln!(
                    "{dead} send task(s) of campaign {campaign} died; see `marketing tasks list --status dead`"
                );
                return Ok(("failed", counts));
            }
            return Ok(("completed", counts));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Prints the summary (JSON, or the final counts) and picks the exit code.
fn finish(
    args: &SubmitArgs,
    mut summary: serde_json::Value,
    progress: Option<Progress>,
) -> anyhow::Result<ExitCode> {
    if let Some(progress) = &progress {
        summary["deliveries"] = serde_json::json!(progress.deliveries);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else if let Some(progress) = &progress {
        println!("status {}", progress.status);
        let counts: Vec<String> = progress
            .deliveries
            .iter()
            .map(|(state, n)| format!("{state} {n}"))
            .collect();
        println!("  {} (of {})", counts.join(" · "), progress.total());
    } else if let Some(status) = summary["status"].as_str() {
        println!("status {status}");
    }
    Ok(match progress {
        Some(p) if p.status == CampaignStatus::Failed => ExitCode::FAILURE,
        _ => ExitCode::SUCCESS,
    })
}

/// Polls until the campaign reaches a final state, drawing a progress bar (unless `json`).
async fn follow<F, Fut>(total: u64, json: bool, mut poll: F) -> anyhow::Result<Progress>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Progress>>,
{
    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] [{bar:40}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    loop {
        let progress = poll().await?;
        bar.set_length(progress.total().max(0) as u64);
        bar.set_position(progress.finished().max(0) as u64);
        bar.set_message(format!(
            "{} · sent {} · deferred {} · failed {} · suppressed {}",
            progress.status,
            progress.count("sent"),
            progress.count("deferred"),
            progress.count("failed"),
            progress.count("suppressed")
        ));
        if progress.is_final() {
            bar.finish_and_clear();
            return Ok(progress);
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// The rows `--count` draws from: valid, and unique ignoring case (a duplicate would be
/// skipped by the import and leave fewer than N recipients). The document's inline
/// recipients are taken out of it: they are submitted as rows like a file's.
fn source_rows(
    document: &mut CampaignDocument,
    path: Option<&PathBuf>,
) -> anyhow::Result<Vec<Recipient>> {
    let inline = std::mem::take(&mut document.recipients);
    let rows = match path {
        Some(path) => read_recipients(path)?,
        None => Box::new(inline.into_iter().map(Ok)),
    };
    let where_from = path.map_or_else(
        || "the campaign's inline recipients".to_string(),
        |p| p.display().to_string(),
    );
    let (mut unique, mut seen, mut bad, mut duplicates) =
        (Vec::new(), HashSet::new(), Vec::new(), 0u64);
    for row in rows {
        match row {
            Ok(recipient) if seen.insert(recipient.email.key()) => unique.push(recipient),
            Ok(_) => duplicates += 1,
            Err(err) => bad.push(err.to_string()),
        }
    }
    if !bad.is_empty() {
        let shown: Vec<&str> = bad.iter().take(5).map(String::as_str).collect();
        anyhow::bail!(
            "{where_from} has {} invalid row(s); fix or remove them (`marketing validate` lists all): {}",
            bad.len(),
            shown.join("; ")
        );
    }
    if unique.is_empty() {
        anyhow::bail!(
            "{where_from} has no recipients; pass --recipients FILE (.json array, .jsonl or .csv with an `email` column)"
        );
    }
    if duplicates > 0 {
        eprintln!("{where_from}: {duplicates} duplicate address(es) skipped");
    }
    Ok(unique)
}

/// `count` recipients from `rows`: the rows in order, then again with unique address
/// suffixes, as often as needed.
pub struct Generated {
    rows: Vec<Recipient>,
    count: u64,
    next: u64,
    /// Every address handed out or in the file (lower-cased): a copy never repeats one.
    seen: HashSet<String>,
}

impl Generated {
    pub fn new(rows: Vec<Recipient>, count: u64) -> Generated {
        let seen = if (rows.len() as u64) < count {
            rows.iter().map(|r| r.email.key()).collect()
        } else {
            HashSet::new()
        };
        Generated {
            rows,
            count,
            next: 0,
            seen,
        }
    }

    /// The address of `email`'s copy number `copy` (≥ 1), not yet used.
    fn copy_address(&mut self, email: &EmailAddress, copy: u64) -> EmailAddress {
        let (local, domain) = email
            .as_str()
            .rsplit_once('@')
            .unwrap_or((email.as_str(), ""));
        for attempt in 0u64.. {
            let suffix = match attempt {
                0 => format!("+{copy}"),
                n => format!("+{copy}-{n}"),
            };
            // A few failed attempts mean this local part will not take a suffix at all.
            let base = if attempt > 3 { "copy" } else { local };
            let room = 64usize
                .min(254usize.saturating_sub(domain.len() + 1))
                .saturating_sub(suffix.len());
            let mut end = base.len().min(room);
            while !base.is_char_boundary(end) {
                end -= 1;
            }
            let base = base[..end].trim_end_matches('.');
            let candidate = format!("{base}{suffix}@{domain}");
            if let Ok(address) = EmailAddress::parse(&candidate)
                && self.seen.insert(address.key())
            {
                return address;
            }
        }
        unreachable!("the attempts never end")
    }
}

impl Iterator for Generated {
    type Item = Recipient;

    fn next(&mut self) -> Option<Recipient> {
        if self.next >= self.count || self.rows.is_empty() {
            return None;
        }
        let len = self.rows.len() as u64;
        let (row, copy) = ((self.next % len) as usize, self.next / len);
        self.next += 1;
        let mut recipient = self.rows[row].clone();
        if copy > 0 {
            recipient.email = self.copy_address(&self.rows[row].email.clone(), copy);
        }
        Some(recipient)
    }
}

/// The API at `base`, authenticated with the key.
struct ApiClient {
    http: tls::http::HttpClient,
    base: String,
    key: String,
}

impl ApiClient {
    fn new(base: &str, key: &str, ca_file: Option<&std::path::Path>) -> anyhow::Result<ApiClient> {
        let base = base.trim_end_matches('/');
        let base = base.strip_suffix("/api/v1").unwrap_or(base).to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            anyhow::bail!("--api must be an http(s) URL such as http://127.0.0.1:8000");
        }
        let http =
            tls::http::HttpClient::new(ca_file, Duration::from_secs(10), Duration::from_secs(300))
                .context("SERVICE_TLS_CA")?;
        Ok(ApiClient {
            http,
            base,
            key: key.to_string(),
        })
    }

    /// Sends a request to `/api/v1{path}`; any answer but a success is an error that says
    /// what the API said and what to do about it.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}/api/v1{path}", self.base);
        let authorization = format!("Bearer {}", self.key);
        let mut headers = vec![(header::AUTHORIZATION, authorization.as_str())];
        if body.is_some() {
            headers.push((header::CONTENT_TYPE, "application/json"));
        }
        // A 429 says when to come back: wait that long (a few times) rather than give up
        // on a campaign that is half uploaded.
        let mut throttled = 0;
        let response = loop {
            let response = self
                .http
                .request(method.clone(), &url, &headers, body.clone())
                .await
                .with_context(|| {
                    format!(
                        "cannot reach the API at {}: is `marketing serve` (or `marketing api`) running there? (for https with a private CA, set SERVICE_TLS_CA)",
                        self.base
                    )
                })?;
            if response.status != StatusCode::TOO_MANY_REQUESTS || throttled == 5 {
                break response;
            }
            throttled += 1;
            let wait = response
                .headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(1)
                .clamp(1, 60);
            eprintln!(
                "{method} {url}: the API's rate limit for this key is reached; retrying in {wait} s"
            );
            tokio::time::sleep(Duration::from_secs(wait)).await;
        };
        let status = response.status;
        let text = String::from_utf8_lossy(&response.body).into_owned();
        if status.is_success() {
            return serde_json::from_str(&text)
                .with_context(|| format!("{method} {url}: the response is not JSON: {text}"));
        }
        let detail = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|problem| problem["detail"].as_str().map(str::to_string))
            .unwrap_or(text);
        let hint = match status.as_u16() {
            401 => {
                " (pass a key with --api-key or MARKETING_API_KEY; create one with `marketing api-key create` on the API's DATABASE_URL)"
            }
            403 => " (the key was revoked; create a new one with `marketing api-key create`)",
            429 => " (too many requests for this key; wait and retry, or raise API_RATE_LIMIT)",
            _ => "",
        };
        anyhow::bail!("{method} {url} answered {status}: {detail}{hint}")
    }
}

async fn submit_to_api(
    args: &SubmitArgs,
    api: &str,
    document: CampaignDocument,
    recipients: Generated,
    count: u64,
) -> anyhow::Result<ExitCode> {
    let key = args.api_key.as_deref().unwrap_or_default();
    let client = ApiClient::new(api, key, args.service_tls_ca.as_deref())?;
    let created = client
        .call(
            Method::POST,
            "/campaigns",
            Some(serde_json::to_vec(&document)?),
        )
        .await?;
    let id: CampaignId = created["campaign"]["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .with_context(|| {
            format!("the API's answer to POST /campaigns has no campaign id: {created}")
        })?;
    let upload = ProgressBar::new(count);
    if args.json {
        upload.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    upload.set_style(
        ProgressStyle::with_template("uploading recipients [{bar:40}] {pos}/{len}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut imported = 0u64;
    let mut recipients = recipients.peekable();
    while recipients.peek().is_some() {
        let chunk: Vec<Recipient> = recipients.by_ref().take(RECIPIENTS_PER_REQUEST).collect();
        let report = client
            .call(
                Method::POST,
                &format!("/campaigns/{id}/recipients"),
                Some(serde_json::to_vec(&chunk)?),
            )
            .await
            .with_context(|| format!("campaign {id} was created but not all its recipients were uploaded ({imported} were); fix the cause and submit again (a new campaign)"))?;
        imported += report["imported"].as_u64().unwrap_or(0);
        crate::report::warn_unrecognised_time_zones(&report);
        upload.inc(chunk.len() as u64);
    }
    upload.finish_and_clear();
    let sent = client
        .call(Method::POST, &format!("/campaigns/{id}/send"), None)
        .await
        .with_context(|| format!("campaign {id} was created with {imported} recipients but not sent; POST /api/v1/campaigns/{id}/send to send it"))?;
    let status = sent["status"].as_str().unwrap_or("queued").to_string();
    eprintln!(
        "campaign {:?} created through {} with {imported} recipients; {status}",
        document.name, client.base
    );
    if !args.json {
        println!("campaign {id}");
    }
    let summary = serde_json::json!({
        "campaign_id": id,
        "recipients": imported,
        "status": status,
    });
    if !args.wait {
        return finish(args, summary, None);
    }
    let client = Arc::new(client);
    let progress = follow(imported, args.json, || {
        let client = client.clone();
        async move {
            let view = client
                .call(Method::GET, &format!("/campaigns/{id}/status"), None)
                .await?;
            let status = view["status"]
                .as_str()
                .and_then(|s| s.parse::<CampaignStatus>().ok())
                .with_context(|| format!("GET /campaigns/{id}/status has no status: {view}"))?;
            let deliveries = serde_json::from_value(view["deliveries"].clone())
                .with_context(|| format!("GET /campaigns/{id}/status has no deliveries: {view}"))?;
            Ok(Progress { status, deliveries })
        }
    })
    .await?;
    let mut summary = summary;
    summary["status"] = serde_json::json!(progress.status);
    finish(args, summary, Some(progress))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipient(email: &str) -> Recipient {
        Recipient {
            email: EmailAddress::parse(email).unwrap(),
            fields: serde_json::Map::new(),
        }
    }

    fn addresses(rows: Vec<Recipient>, count: u64) -> Vec<String> {
        Generated::new(rows, count)
            .map(|r| r.email.as_str().to_string())
            .collect()
    }

    #[test]
    fn a_count_within_the_file_takes_its_first_rows() {
        let rows = vec![recipient("a@x.example"), recipient("b@x.example")];
        assert_eq!(addresses(rows, 1), ["a@x.example"]);
    }

    #[test]
    fn a_larger_count_cycles_with_unique_valid_addresses() {
        let long = format!("{}@x.example", "l".repeat(64));
        let rows = vec![
            recipient("Ann@x.example"),
            // Already what the first copy of Ann would be called.
            recipient("ann+1@x.example"),
            recipient(&long),
            // Shortened to fit, it would end in a dot.
            recipient(&format!("{}.b@x.example", "d".repeat(61))),
            recipient("tomás@x.example"),
        ];
        let generated = addresses(rows, 5_000);
        assert_eq!(generated.len(), 5_000);
        assert_eq!(&generated[..2], ["Ann@x.example", "ann+1@x.example"]);
        let mut keys = HashSet::new();
        for address in &generated {
            let parsed =
                EmailAddress::parse(address).unwrap_or_else(|err| panic!("{address}: {err}"));
            assert!(keys.insert(parsed.key()), "{address} is repeated");
        }
        assert!(generated.contains(&"Ann+2@x.example".to_string()));
        assert!(generated.contains(&"tomás+1@x.example".to_string()));
    }
}
