//! The campaign report: delivery outcomes from the recipient rows, engagement from the
//! tracking events, computed on request so the numbers always agree with what is stored.

use crate::campaigns::find;
use crate::problem::AdminProblems;
use crate::{ApiError, AppState};
use axum::Json;
use axum::extract::{Path, State};
use campaign::{CampaignId, DeliveryStatus};
use serde::Serialize;
use store::{EventCount, TrackingEventKind};
use time::OffsetDateTime;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(analytics))
}

/// A campaign's delivery and engagement numbers.
#[derive(Serialize, utoipa::ToSchema)]
struct Analytics {
    #[schema(value_type = String, format = Uuid)]
    campaign_id: CampaignId,
    /// Every recipient of the campaign; the delivery states below add up to it.
    recipients: i64,
    pending: i64,
    /// Accepted by the receiving server.
    sent: i64,
    /// Waiting for a retry after a temporary failure.
    deferred: i64,
    failed: i64,
    /// On the suppression list when their turn came: never sent.
    suppressed: i64,
    cancelled: i64,
    /// Bounce reports received after sending (distinct recipients).
    bounced: Bounces,
    /// `sent` minus hard bounces: the base of every rate.
    delivered: i64,
    opens: EventCount,
    clicks: Clicks,
    /// Distinct recipients who unsubscribed (`total` counts every request).
    unsubscribes: EventCount,
    complaints: EventCount,
    rates: Rates,
    /// Events per hour (the hour's start, UTC), hours without events left out.
    hourly: Vec<Hour>,
    /// With an A/B test: each variant's numbers, the rest of the list counted with the
    /// winner's once it is sent. Recipients, sent, delivered and opens/clicks add up to the
    /// campaign's (its recipients without a variant are the rest still held back).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    variants: Vec<VariantReport>,
    /// With an A/B test: its phase and decision (winner, when, by what numbers).
    #[serde(skip_serializing_if = "Option::is_none")]
    ab_test: Option<service::AbTestView>,
}

/// One A/B variant's report.
#[derive(Serialize, utoipa::ToSchema)]
struct VariantReport {
    name: String,
    /// Recipients given this variant (its test share, and the rest once it has won).
    recipients: i64,
    sent: i64,
    /// `sent` minus hard bounces.
    delivered: i64,
    /// Events with aggregate-only tracking name no recipient: `unique` is 0 and `total`
    /// counts them.
    opens: EventCount,
    clicks: EventCount,
    /// Unique opens and clicks per delivered (totals with aggregate-only tracking).
    open_rate: f64,
    click_rate: f64,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Bounces {
    hard: i64,
    soft: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Clicks {
    total: i64,
    unique: i64,
    /// Per tracked link of the HTML template, in template order.
    links: Vec<LinkClicks>,
}

#[derive(Serialize, utoipa::ToSchema)]
struct LinkClicks {
    index: u16,
    url: String,
    total: i64,
    unique: i64,
}

/// Fractions of `delivered` (0 when nothing was delivered). Opens and clicks count distinct
/// recipients, so aggregate-only campaigns (no recipient on their events) show 0 here and
/// their totals above.
#[derive(Serialize, utoipa::ToSchema)]
struct Rates {
    open: f64,
    click: f64,
    unsubscribe: f64,
    complaint: f64,
    /// Hard bounces per message accepted (`sent`).
    hard_bounce: f64,
}

#[derive(Serialize, utoipa::ToSchema)]
struct Hour {
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    hour: OffsetDateTime,
    opens: i64,
    clicks: i64,
    unsubscribes: i64,
    bounces: i64,
    complaints: i64,
}

/// Get a campaign's engagement report.
///
/// The campaign report: recipients per delivery outcome, bounces, opens, clicks (per link),
/// unsubscribes and complaints, rates against delivered, and an hourly series.
#[utoipa::path(
    get,
    path = "/api/v1/campaigns/{id}/analytics",
    tag = "analytics",
    operation_id = "get_campaign_analytics",
    params(("id" = String, Path, description = "Campaign id (UUID)")),
    responses((status = 200, description = "The campaign's report", body = Analytics), AdminProblems),
    security(("api_key" = []))
)]
async fn analytics(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Analytics>, ApiError> {
    let campaign = find(&state, &id).await?;
    let deliveries = state.store.delivery_counts(campaign.id).await?;
    let events = state.store.engagement_counts(campaign.id).await?;
    let document = &campaign.document;
    let urls = match &document.templates.html {
        Some(html) if document.tracking.clicks => message::tracked_links(html),
        _ => Vec::new(),
    };
    let links = events
        .by_link
        .iter()
        .map(|(&index, count)| LinkClicks {
            index,
            url: urls.get(usize::from(index)).cloned().unwrap_or_default(),
            total: count.total,
            unique: count.unique,
        })
        .collect();
    let sent = deliveries.get(DeliveryStatus::Sent);
    let bounced = Bounces {
        hard: events.of(TrackingEventKind::BounceHard).unique,
        soft: events.of(TrackingEventKind::BounceSoft).unique,
    };
    let delivered = (sent - bounced.hard).max(0);
    let rate = |count: i64, base: i64| {
        if base > 0 {
            count as f64 / base as f64
        } else {
            0.0
        }
    };
    let opens = events.of(TrackingEventKind::Open);
    let clicks = events.of(TrackingEventKind::Click);
    let unsubscribes = events.of(TrackingEventKind::Unsubscribe);
    let complaints = events.of(TrackingEventKind::Complaint);
    let variant_counts = if document.variants.is_empty() {
        Vec::new()
    } else {
        state.store.variant_counts(campaign.id, false).await?
    };
    let variants = document
        .variants
        .iter()
        .enumerate()
        .map(|(index, variant)| {
            let counts = variant_counts
                .iter()
                .find(|counts| usize::from(counts.variant) == index)
                .copied()
                .unwrap_or_default();
            let delivered = (counts.sent - counts.hard_bounces).max(0);
            let events = |count: EventCount| {
                if count.unique == 0 {
                    count.total
                } else {
                    count.unique
                }
            };
            VariantReport {
                name: variant.name.clone(),
                recipients: counts.recipients,
                sent: counts.sent,
                delivered,
                opens: counts.opens,
                clicks: counts.clicks,
                open_rate: rate(events(counts.opens), delivered),
                click_rate: rate(events(counts.clicks), delivered),
            }
        })
        .collect();
    let ab_test = service::ab_test_view(state.store.as_ref(), &campaign).await?;
    let hourly = events
        .hourly
        .iter()
        .map(|(&hour, kinds)| {
            let n = |kind| kinds.get(&kind).copied().unwrap_or(0);
            Hour {
                hour,
                opens: n(TrackingEventKind::Open),
                clicks: n(TrackingEventKind::Click),
                unsubscribes: n(TrackingEventKind::Unsubscribe),
                bounces: n(TrackingEventKind::BounceHard) + n(TrackingEventKind::BounceSoft),
                complaints: n(TrackingEventKind::Complaint),
            }
        })
        .collect();
    Ok(Json(Analytics {
        campaign_id: campaign.id,
        recipients: deliveries.total(),
        pending: deliveries.get(DeliveryStatus::Pending),
        sent,
        deferred: deliveries.get(DeliveryStatus::Deferred),
        failed: deliveries.get(DeliveryStatus::Failed),
        suppressed: deliveries.get(DeliveryStatus::Suppressed),
        cancelled: deliveries.get(DeliveryStatus::Cancelled),
        rates: Rates {
            open: rate(opens.unique, delivered),
            click: rate(clicks.unique, delivered),
            unsubscribe: rate(unsubscribes.unique, delivered),
            complaint: rate(complaints.unique, delivered),
            hard_bounce: rate(bounced.hard, sent),
        },
        bounced,
        delivered,
        opens,
        clicks: Clicks {
            total: clicks.total,
            unique: clicks.unique,
            links,
        },
        unsubscribes,
        complaints,
        hourly,
        variants,
        ab_test,
    }))
}
