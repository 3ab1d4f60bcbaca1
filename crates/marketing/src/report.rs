//! Read-only operator commands on the store: list campaigns, show (and follow) a campaign's
//! delivery status. Both print a table for people or JSON (`--json`) for scripts.

use crate::config::StoreArgs;
use campaign::{CampaignStatus, DeliveryStatus};
use indicatif::{ProgressBar, ProgressStyle};
use std::process::ExitCode;
use std::time::Duration;
use store::{CampaignFilter, CampaignStore};

/// `marketing campaigns list`.
pub async fn list_campaigns(
    store: &dyn CampaignStore,
    status: Option<CampaignStatus>,
    limit: u32,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let page = store
        .list_campaigns(&CampaignFilter {
            status,
            before: None,
            limit,
        })
        .await?;
    if json {
        let items: Vec<serde_json::Value> = page
            .items
            .iter()
            .map(|c| {
                serde_json::json!({
                    "id": c.id, "name": c.name, "status": c.status,
                    "recipient_count": c.recipient_count,
                    "created_at": c.created_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&items)?);
    } else {
        println!("{:<38} {:<10} {:>10}  name", "id", "status", "recipients");
        for c in &page.items {
            println!(
                "{:<38} {:<10} {:>10}  {}",
                c.id,
                c.status.as_str(),
                c.recipient_count,
                c.name
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `marketing status ID [--watch]`: exits 0 for a campaign that is fine, 1 for one that failed.
pub async fn show_status(
    store: &dyn CampaignStore,
    raw_id: &str,
    watch: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let id: campaign::CampaignId = raw_id.parse().map_err(|_| {
        anyhow::anyhow!("{raw_id:?} is not a campaign id (a UUID, see `marketing campaigns list`)")
    })?;
    let bar = (watch && !json).then(|| {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {msg} [{bar:40}] {pos}/{len} final ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    });
    loop {
        let campaign = store
            .get_campaign(id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("campaign {id} does not exist"))?;
        let counts = store.delivery_counts(id).await?;
        let finished = counts.total()
            - counts.get(DeliveryStatus::Pending)
            - counts.get(DeliveryStatus::Deferred);
        let is_final = matches!(
            campaign.status,
            CampaignStatus::Completed | CampaignStatus::Failed | CampaignStatus::Cancelled
        );
        let time_zones = if campaign.document.local_send_time.is_some() {
            store.time_zone_releases(campaign.id).await?
        } else {
            Vec::new()
        };
        let rate_waits = store.rate_waits(campaign.id).await?;
        let ab_test = service::ab_test_view(store, &campaign).await?;
        match &bar {
            Some(bar) => {
                bar.set_length(counts.total().max(0) as u64);
                bar.set_position(finished.max(0) as u64);
                bar.set_message(format!(
                    "{} · sent {} deferred {} failed {} suppressed {}",
                    campaign.status,
                    counts.get(DeliveryStatus::Sent),
                    counts.get(DeliveryStatus::Deferred),
                    counts.get(DeliveryStatus::Failed),
                    counts.get(DeliveryStatus::Suppressed)
                ));
            }
            None if !watch || is_final => {
                if json {
                    let value = serde_json::json!({
                        "id": campaign.id, "name": campaign.name, "status": campaign.status,
                        "recipients": counts.total(), "deliveries": counts,
                        "scheduled_at": campaign.scheduled_at.map(rfc3339),
                        "queued_at": campaign.queued_at.map(rfc3339),
                        "start_delay_seconds": campaign.start_delay().map(|d| d.as_seconds_f64()),
                        "started_late": campaign.started_late(),
                        "time_zones": time_zones,
                        "rate_waits": rate_waits,
                        "ab_test": ab_test,
                    });
                    println!("{}", serde_json::to_string_pretty(&value)?);
                } else {
                    println!("{} ({}): {}", campaign.name, campaign.id, campaign.status);
                    if let Some(line) = schedule_line(&campaign) {
                        println!("  {line}");
                    }
                    for (state, count) in &counts.0 {
                        println!("  {state:<11} {count}");
                    }
                    println!("  {:<11} {}", "total", counts.total());
                    for zone in &time_zones {
                        let due = zone.due_at.map_or_else(
                            || "due now".to_string(),
                            |at| format!("due {}", rfc3339(at)),
                        );
                        println!("  {} waiting in {}, {due}", zone.waiting, zone.zone);
                    }
                    for wait in &rate_waits {
                        println!(
                            "  {} waiting for the sending rate of {}, until {}",
                            wait.waiting,
                            wait.destination,
                            rfc3339(wait.until)
                        );
                    }
                    if let Some(ab) = &ab_test {
                        println!("  {}", ab_test_line(ab));
                    }
                }
            }
            None => {}
        }
        if !watch || is_final {
            if let Some(bar) = &bar {
                bar.finish();
            }
            return Ok(if campaign.status == CampaignStatus::Failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Tells on stderr which imported recipients had a time zone field that is not a known zone
/// (they are released in the campaign's fallback zone): `report` is an import report as JSON,
/// from the store or from the API.
pub fn warn_unrecognised_time_zones(report: &serde_json::Value) {
    let count = report["unrecognised_time_zones"].as_u64().unwrap_or(0);
    if count == 0 {
        return;
    }
    eprintln!(
        "warning: {count} recipient(s) have a time zone that is not an IANA zone (e.g. Europe/Berlin) and use the campaign's fallback_timezone:"
    );
    let rows = report["unrecognised_time_zone_rows"].as_array();
    for row in rows.into_iter().flatten().take(10) {
        eprintln!(
            "  row {}: {} has {} (using {})",
            row["row"], row["email"], row["value"], row["used"]
        );
    }
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// "scheduled for T, started 12.3 s late" (or "on time", or "not started yet").
fn schedule_line(campaign: &store::CampaignRecord) -> Option<String> {
    let scheduled = rfc3339(campaign.scheduled_at?);
    Some(match campaign.start_delay() {
        None => format!("scheduled for {scheduled}, not started yet"),
        Some(delay) if campaign.started_late() => format!(
            "scheduled for {scheduled}, started {:.1} s late",
            delay.as_seconds_f64()
        ),
        Some(delay) => format!(
            "scheduled for {scheduled}, started on time ({:.1} s after)",
            delay.as_seconds_f64()
        ),
    })
}

/// The store at DATABASE_URL (migrations applied), for a command that needs nothing else.
pub async fn open(args: &StoreArgs) -> anyhow::Result<std::sync::Arc<dyn CampaignStore>> {
    Ok(open_database(args).await?.1)
}

/// The database pool at DATABASE_URL and the store on it (migrations applied); the pool is
/// what the task tables share when the process also opens them.
pub async fn open_database(
    args: &StoreArgs,
) -> anyhow::Result<(store::Database, std::sync::Arc<dyn CampaignStore>)> {
    use anyhow::Context;
    async {
        let database = store::Database::open(&args.database_url).await?;
        let store = store::open(&database).await?;
        Ok::<_, store::StoreError>((database, store))
    }
    .await
    .with_context(|| {
        format!(
            "cannot open the store at {}",
            crate::config::redacted(&args.database_url)
        )
    })
}

/// One line on an A/B test: its phase, and the winner or when it is decided.
fn ab_test_line(ab: &service::AbTestView) -> String {
    let phase = serde_json::to_value(&ab.phase)
        .ok()
        .and_then(|value| value.as_str().map(|phase| phase.replace('_', " ")))
        .unwrap_or_default();
    match (&ab.winner, ab.decided_at, ab.decide_at) {
        (Some(winner), Some(at), _) => {
            format!("A/B test: {phase}; variant {winner} won at {}", rfc3339(at))
        }
        (_, _, Some(at)) => format!("A/B test: {phase}; decision due at {}", rfc3339(at)),
        _ => format!("A/B test: {phase}"),
    }
}
