//! The `submit_campaign` task: a campaign that arrives whole through the task repository is
//! checked as the API checks a new campaign, stored under the task's id (once) and queued
//! like `POST …/send`, each step through the campaign service.

use crate::ProcessorError;
use crate::batch::Shared;
use crate::payload::{SUBMIT_CAMPAIGN_MAX_RECIPIENTS, SUBMIT_CAMPAIGN_VERSION};
use campaign::{CampaignDocument, CampaignId, CampaignStatus, Limits};
use serde::Deserialize;
use service::{CampaignError, CampaignService};
use tasks::Task;

/// The payload as first read: the version decides how the campaign is read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    version: u32,
    campaign: serde_json::Value,
}

/// Reads and checks a `submit_campaign` payload; every refusal is `Rejected`, saying what to
/// fix with field paths from the payload's root (`campaign.templates.subject`).
pub(crate) fn read_submission(
    payload: &serde_json::Value,
    limits: &Limits,
    settings: &message::MessageSettings,
) -> Result<CampaignDocument, ProcessorError> {
    let rejected =
        |why: String| ProcessorError::Rejected(format!("submit_campaign payload refused: {why}"));
    let envelope: Envelope = serde_json::from_value(payload.clone()).map_err(|err| {
        rejected(format!(
            "{err} (expected {{\"version\": {SUBMIT_CAMPAIGN_VERSION}, \"campaign\": {{…}}}}; see docs/submit_campaign.schema.json)"
        ))
    })?;
    if envelope.version != SUBMIT_CAMPAIGN_VERSION {
        return Err(rejected(format!(
            "version: {} is not supported; this worker reads version {SUBMIT_CAMPAIGN_VERSION}",
            envelope.version
        )));
    }
    let bytes = serde_json::to_vec(&envelope.campaign)
        .map_err(|err| rejected(format!("campaign: {err}")))?;
    let in_campaign = |problems: Vec<campaign::Problem>| {
        problems
            .into_iter()
            .map(|p| {
                if p.field.is_empty() {
                    format!("campaign: {}", p.message)
                } else {
                    format!("campaign.{}: {}", p.field, p.message)
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let document = CampaignDocument::from_json(&bytes, limits).map_err(|err| match err {
        campaign::ValidationError::Invalid(problems) => rejected(in_campaign(problems)),
        other => rejected(format!("campaign: {other}")),
    })?;
    service::check_new_campaign(
        &document,
        &document.recipients,
        settings,
        SUBMIT_CAMPAIGN_MAX_RECIPIENTS,
    )
    .map_err(|err| match err {
        CampaignError::Invalid(campaign::ValidationError::Invalid(problems)) => {
            rejected(in_campaign(problems))
        }
        CampaignError::TooManyRecipients { count, limit } => rejected(format!(
            "campaign.recipients: {count} recipients inline, at most {limit} per task; submit several tasks, or create the campaign through the API and upload its recipients with POST /api/v1/campaigns/{{id}}/recipients"
        )),
        other => rejected(format!("campaign: {other}")),
    })?;
    Ok(document)
}

/// Runs a claimed `submit_campaign` task: the campaign is stored under the task's id with its
/// recipients (one transaction; a second run finds it and stores nothing), then queued for
/// delivery — unless it has `scheduled_at`, which leaves it to the campaign processor.
/// Returns the task's result.
pub(crate) async fn submit(
    shared: &Shared,
    task: &Task,
) -> Result<serde_json::Value, ProcessorError> {
    let services = &shared.services;
    let limits = Limits {
        max_batch_size: services.max_batch_size,
        ..Limits::default()
    };
    let document = read_submission(&task.payload, &limits, &services.message_settings)?;
    let campaign_id = CampaignId::from(task.id);
    // The schedule rule of a new campaign (in the future, within the horizon) holds when it
    // is created; a run after a crash may come after that time, and finds the campaign.
    if services.store.get_campaign(campaign_id).await?.is_none() {
        document
            .check_schedule(services.clock.now())
            .map_err(|err| {
                ProcessorError::Rejected(format!(
                    "submit_campaign payload refused: campaign.{}",
                    err.problems()
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; campaign.")
                ))
            })?;
    }
    let campaigns = CampaignService::new(services.store.as_ref(), services.tasks.as_ref())
        .with_message_settings(&services.message_settings);
    let recipients = document.recipients.iter().cloned().map(Ok);
    let (record, report) = campaigns
        .create_once(campaign_id, &document, store::recipient_stream(recipients))
        .await?;
    match &report {
        Some(report) => {
            tracing::info!(campaign = %record.id, name = %record.name, recipients = report.imported, "campaign stored from a submit_campaign task")
        }
        None => {
            tracing::info!(campaign = %record.id, status = %record.status, "submit_campaign task run again: its campaign is already stored")
        }
    }
    // A campaign this task stored earlier may already be on its way; queuing is idempotent
    // for queued and sending campaigns and not wanted once it ended or was paused.
    let status = match record.status {
        CampaignStatus::Draft | CampaignStatus::Queued | CampaignStatus::Sending => {
            campaigns.send(record.id).await?.0.status
        }
        other => other,
    };
    Ok(serde_json::json!({
        "campaign_id": record.id,
        "status": status,
        "recipients": record.recipient_count,
    }))
}
