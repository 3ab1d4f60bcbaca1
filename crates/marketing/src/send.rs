//! `marketing send`: the main job in one command. The campaign file is checked, stored with
//! its recipients, and delivered by a task processor in this process through the same
//! tasks, batches and outcome rows as the scaled-out service, so what it reports is what the
//! rows say.

use crate::cli::read_recipients;
use crate::config::{LimitArgs, LinkArgs, StoreArgs, TransportArgs, WorkerArgs};
use crate::roles;
use anyhow::Context;
use campaign::{CampaignDocument, CampaignStatus, DeliveryStatus, UndefinedVariables};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tasks::TaskRepository;
use tokio_util::sync::CancellationToken;

/// Exit code after Ctrl-C/SIGTERM (128 + SIGINT, as shells report it).
const INTERRUPTED: u8 = 130;

/// What to send.
pub struct SendJob {
    pub document: CampaignDocument,
    /// The recipients file; `None` uses the document's inline recipients.
    pub recipients: Option<PathBuf>,
    pub json: bool,
}

pub async fn send(
    job: SendJob,
    store_args: &StoreArgs,
    link_args: &LinkArgs,
    limits: &LimitArgs,
    worker_args: &WorkerArgs,
    transport_args: &TransportArgs,
) -> anyhow::Result<ExitCode> {
    // A key that cannot sign refuses the send before anything is stored.
    let dkim = transport_args.dkim.signer()?;
    let document = job.document;
    let settings = message::MessageSettings::default();
    // Checked before anything is stored, so a typo never reaches a single recipient: the
    // inline recipients with the campaign, a file's field names on their own (it may be too
    // large to hold).
    let inline: &[campaign::Recipient] = match &job.recipients {
        Some(_) => &[],
        None => &document.recipients,
    };
    let compiled = service::check_new_campaign(&document, inline, &settings, u64::MAX)
        .map_err(|err| anyhow::anyhow!("the campaign cannot be sent: {err}"))?;
    if let Some(path) = &job.recipients
        && document.templates.undefined_variables == UndefinedVariables::Strict
    {
        service::check_variables(&compiled, &document, &field_names(path)?)
            .map_err(|err| anyhow::anyhow!("the campaign cannot be sent: {err}"))?;
    }

    let (database, store) = roles::open_store("send", store_args).await?;
    let local = crate::task_commands::open_task_tables(store_args, Some(&database)).await?;
    let waking = Arc::new(processor::WakingTasks::new(local));
    let waker = waking.waker();
    let task_repo: Arc<dyn TaskRepository> = waking;
    let campaigns = service::CampaignService::new(store.as_ref(), task_repo.as_ref())
        .with_message_settings(&settings);
    let rows = match &job.recipients {
        Some(path) => read_recipients(path)?,
        None => Box::new(document.recipients.clone().into_iter().map(Ok)),
    };
    let imported = Instant::now();
    let (record, report) = campaigns
        .create(&document, store::recipient_stream(rows))
        .await
        .context("the campaign was not stored")?;
    eprintln!(
        "stored campaign {:?} ({}): {} recipients{} in {:.1} s",
        record.name,
        record.id,
        record.recipient_count,
        if report.duplicates > 0 {
            format!(" ({} duplicate addresses skipped)", report.duplicates)
        } else {
            String::new()
        },
        imported.elapsed().as_secs_f64()
    );
    crate::report::warn_unrecognised_time_zones(&serde_json::to_value(&report)?);

    let interrupted = roles::shutdown_token();
    if let Some(at) = document
        .scheduled_at
        .filter(|at| *at > time::OffsetDateTime::now_utc())
    {
        campaigns.schedule(record.id, at).await?;
        eprintln!("scheduled for {at}; waiting (Ctrl-C to stop: the campaign stays scheduled)");
        let wait = (at - time::OffsetDateTime::now_utc()).unsigned_abs();
        tokio::select! {
            () = interrupted.cancelled() => return Ok(ExitCode::from(INTERRUPTED)),
            () = tokio::time::sleep(wait) => {}
        }
    }

    let stop_webhooks = CancellationToken::new();
    let (components, dispatcher) = crate::startup::Components::build(
        store.clone(),
        task_repo.clone(),
        link_args,
        transport_args,
        dkim,
        stop_webhooks.clone(),
        &database,
    )
    .await?;
    let transport = components.transport.clone();
    let worker = components.task_processor(
        "send",
        worker_args.config(transport_args.smtp_connections, &database),
        limits.max_batch_size,
        Some(waker),
    );
    let stats = worker.stats();
    let stop_worker = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop_worker.clone()));
    campaigns.send(record.id).await?;

    let started = Instant::now();
    let bar = ProgressBar::new(record.recipient_count.max(0) as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{bar:40}] {pos}/{len} {per_sec} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut last_status_check = Instant::now();
    let mut status = CampaignStatus::Queued;
    let mut was_interrupted = false;
    // With a local send time, what the bar says while recipients wait for their hour.
    let mut waiting = String::new();
    loop {
        tokio::select! {
            () = interrupted.cancelled() => { was_interrupted = true; }
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        let now = stats.snapshot();
        bar.set_position(now.sent + now.failed + now.suppressed);
        bar.set_message(format!(
            "sent {} · failed {} · suppressed {} · deferred attempts {}{waiting}",
            now.sent, now.failed, now.suppressed, now.deferred
        ));
        if was_interrupted {
            break;
        }
        if last_status_check.elapsed() >= Duration::from_millis(500) {
            last_status_check = Instant::now();
            if let Some(current) = store.get_campaign(record.id).await? {
                status = current.status;
            }
            if document.local_send_time.is_some() {
                waiting = next_local_release(store.as_ref(), record.id).await?;
            }
            if matches!(
                status,
                CampaignStatus::Completed | CampaignStatus::Failed | CampaignStatus::Cancelled
            ) {
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    bar.finish_and_clear();
    stop_worker.cancel();
    running.await.context("the task processor panicked")?;
    transport.close().await;
    // Events not yet delivered stay in the outbox for the next process with WEBHOOK_URLS.
    stop_webhooks.cancel();
    if let Some(dispatcher) = dispatcher {
        dispatcher.join().await;
    }

    let final_record = store
        .get_campaign(record.id)
        .await?
        .context("the campaign disappeared from the store")?;
    let counts = store.delivery_counts(record.id).await?;
    let sent = counts.get(DeliveryStatus::Sent);
    // The campaign's own start and end times when it finished: the progress loop only looks
    // every 500 ms, which would understate the rate of a short campaign.
    let sending_time = match (final_record.started_at, final_record.completed_at) {
        (Some(start), Some(end)) if end > start => (end - start).unsigned_abs(),
        _ => elapsed,
    };
    let rate = sent as f64 / sending_time.as_secs_f64().max(1e-9);
    if job.json {
        let summary = serde_json::json!({
            "campaign_id": record.id,
            "name": record.name,
            "status": final_record.status,
            "recipients": counts.total(),
            "deliveries": counts,
            "elapsed_seconds": sending_time.as_secs_f64(),
            "messages_per_second": rate,
            "transport": transport.describe(),
            "interrupted": was_interrupted,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "campaign {:?} ({}): {} in {:.2} s",
            record.name,
            record.id,
            final_record.status,
            sending_time.as_secs_f64()
        );
        println!(
            "  sent {} · deferred {} · failed {} · suppressed {} · cancelled {} · pending {} (of {})",
            sent,
            counts.get(DeliveryStatus::Deferred),
            counts.get(DeliveryStatus::Failed),
            counts.get(DeliveryStatus::Suppressed),
            counts.get(DeliveryStatus::Cancelled),
            counts.get(DeliveryStatus::Pending),
            counts.total()
        );
        println!("  {rate:.0} messages/s via {}", transport.describe());
        if counts.get(DeliveryStatus::Failed) > 0 {
            println!(
                "  failed recipients and the server's replies: marketing status {} / GET /api/v1/campaigns/{}/deliveries?status=failed",
                record.id, record.id
            );
        }
    }
    if was_interrupted {
        eprintln!(
            "interrupted: the campaign is {}; `marketing worker` (same DATABASE_URL) delivers the rest",
            final_record.status
        );
        return Ok(ExitCode::from(INTERRUPTED));
    }
    Ok(if final_record.status == CampaignStatus::Failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The field names of a recipients file's rows (bad rows are reported by the import itself).
fn field_names(path: &std::path::Path) -> anyhow::Result<std::collections::HashSet<String>> {
    let mut fields = std::collections::HashSet::new();
    for recipient in read_recipients(path)?.flatten() {
        fields.extend(recipient.fields.keys().cloned());
    }
    Ok(fields)
}

/// " · next: 3 in Europe/Berlin at 08:00:00Z" while recipients wait for their local time, or
/// nothing when someone is due now (or nobody waits).
async fn next_local_release(
    store: &dyn store::CampaignStore,
    id: campaign::CampaignId,
) -> anyhow::Result<String> {
    let now = time::OffsetDateTime::now_utc();
    let next = store
        .time_zone_releases(id)
        .await?
        .into_iter()
        .filter_map(|zone| Some((zone.due_at.filter(|at| *at > now)?, zone)))
        .min_by_key(|(at, _)| *at);
    Ok(match next {
        Some((at, zone)) => format!(
            " · next: {} in {} at {}",
            zone.waiting,
            zone.zone,
            at.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        ),
        None => String::new(),
    })
}
