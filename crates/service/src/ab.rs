//! The decision of an A/B test: by its results when `decide_after` has passed (the campaign
//! processor), or by hand (`POST …/ab/winner`). Either way one conditional update decides,
//! releases the rest of the list to the winner in the same transaction, and only the caller
//! that made it creates the rest's `send_campaign` task; its idempotency key lets the
//! campaign processor's repair create it again after a crash in between.

use crate::control::SendCampaign;
use crate::{CampaignError, CampaignService};
use campaign::ab::{VariantResult, WinRule, choose_winner};
use campaign::{AbMetric, CampaignId, CampaignStatus};
use serde::Serialize;
use serde_json::json;
use store::{AbPhase, CampaignRecord, CampaignStore, StoreError};
use time::OffsetDateTime;

/// Who chooses the winner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbChoice {
    /// The test's results, by the rule of [`choose_winner`] (the campaign processor).
    ByResults,
    /// An operator, naming the variant.
    Manual(String),
}

/// The test's winner after a decision was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbDecided {
    /// The winning variant's name.
    pub winner: String,
    /// Whether this call decided (false: it had been decided, by this same choice).
    pub decided_now: bool,
}

impl CampaignService<'_> {
    /// Decides campaign `id`'s A/B test at `now`. By results only while the campaign sends
    /// (a paused campaign is decided once resumed); by hand also while it is paused.
    /// Idempotent: asking again for the winner chosen succeeds; another winner once one is
    /// chosen is refused (`AbDecided`). `Ok(None)`: nothing to decide by results (not
    /// sending, or decided meanwhile by another replica).
    pub async fn decide_ab_test(
        &self,
        id: CampaignId,
        choice: AbChoice,
        now: OffsetDateTime,
    ) -> Result<Option<AbDecided>, CampaignError> {
        let record = self.find(id).await?;
        let Some(test) = record.document.ab_test.clone() else {
            return Err(CampaignError::NotAnAbTest(id));
        };
        let chosen = match &choice {
            AbChoice::ByResults => None,
            AbChoice::Manual(name) => Some(variant_index(&record, name)?),
        };
        let Some(state) = &record.ab else {
            return Err(CampaignError::AbNotStarted {
                id,
                status: record.status,
            });
        };
        if state.phase != AbPhase::Testing {
            return self.already_decided(&record, chosen).await.map(Some);
        }
        let results = self
            .test_results(id, test.metric, record.document.variants.len())
            .await?;
        let (winner, rule) = match chosen {
            Some(index) => (index, WinRule::Manual),
            None => choose_winner(&results),
        };
        let decision = json!({
            "rule": rule.as_str(),
            "metric": test.metric.as_str(),
            "winner": record.document.variants[winner].name,
            "variants": record.document.variants.iter().zip(&results).map(|(variant, result)| json!({
                "name": variant.name,
                "delivered": result.delivered,
                "events": result.events,
                "rate": result.rate(),
            })).collect::<Vec<_>>(),
        });
        let statuses: &[CampaignStatus] = match choice {
            AbChoice::ByResults => &[CampaignStatus::Sending],
            AbChoice::Manual(_) => &[CampaignStatus::Sending, CampaignStatus::Paused],
        };
        let won = self
            .store
            .decide_ab_test(id, winner as u8, &decision, now, statuses)
            .await?;
        if !won {
            let current = self.find(id).await?;
            return match (&current.ab, chosen) {
                (Some(state), _) if state.phase != AbPhase::Testing => {
                    self.already_decided(&current, chosen).await.map(Some)
                }
                (_, None) => Ok(None),
                (_, Some(_)) => Err(CampaignError::AbNotStarted {
                    id,
                    status: current.status,
                }),
            };
        }
        tracing::info!(campaign = %id, winner = %record.document.variants[winner].name, rule = rule.as_str(), "A/B test decided");
        self.create_ab_rest_task(id).await?;
        Ok(Some(AbDecided {
            winner: record.document.variants[winner].name.clone(),
            decided_now: true,
        }))
    }

    /// A decided test asked again: the same winner succeeds (and makes sure the rest has its
    /// task), another is refused.
    async fn already_decided(
        &self,
        record: &CampaignRecord,
        chosen: Option<usize>,
    ) -> Result<AbDecided, CampaignError> {
        let state = record.ab.as_ref().expect("a decided test has its state");
        let winner = usize::from(state.winner.unwrap_or(0));
        let name = record
            .document
            .variants
            .get(winner)
            .map(|variant| variant.name.clone())
            .unwrap_or_default();
        if chosen.is_some_and(|chosen| chosen != winner) {
            return Err(CampaignError::AbDecided {
                id: record.id,
                winner: name,
            });
        }
        if state.phase == AbPhase::Decided {
            self.create_ab_rest_task(record.id).await?;
        }
        Ok(AbDecided {
            winner: name,
            decided_now: false,
        })
    }

    /// Creates (or finds, by its key) the task that splits the rest released to the winner.
    pub async fn create_ab_rest_task(&self, id: CampaignId) -> Result<(), CampaignError> {
        let payload = SendCampaign {
            campaign_id: id,
            epoch: 0,
            document: None,
            ab_rest: true,
        };
        self.create_split_task(&payload, "").await?;
        Ok(())
    }

    /// The test slice's results per variant, in variant order: delivered (sent less hard
    /// bounces) and unique opens or clicks. Events recorded aggregate-only name no recipient,
    /// so when no variant has a unique count but events exist, all events count instead.
    async fn test_results(
        &self,
        id: CampaignId,
        metric: AbMetric,
        variants: usize,
    ) -> Result<Vec<VariantResult>, CampaignError> {
        let counts = self.store.variant_counts(id, true).await?;
        let mut results = vec![
            VariantResult {
                delivered: 0,
                events: 0,
            };
            variants
        ];
        let event_count = |count: &store::VariantCounts| match metric {
            AbMetric::Opens => count.opens,
            AbMetric::Clicks => count.clicks,
        };
        let anonymous = counts.iter().all(|count| event_count(count).unique == 0);
        for count in &counts {
            if let Some(result) = results.get_mut(usize::from(count.variant)) {
                let events = event_count(count);
                *result = VariantResult {
                    delivered: (count.sent - count.hard_bounces).max(0),
                    events: if anonymous {
                        events.total
                    } else {
                        events.unique
                    },
                };
            }
        }
        Ok(results)
    }
}

/// The index of the variant called `name`, or a 422 naming the field.
fn variant_index(record: &CampaignRecord, name: &str) -> Result<usize, CampaignError> {
    record
        .document
        .variants
        .iter()
        .position(|variant| variant.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = record
                .document
                .variants
                .iter()
                .map(|variant| variant.name.as_str())
                .collect();
            CampaignError::invalid(vec![campaign::Problem {
                field: "variant".into(),
                message: format!(
                    "{name:?} is not a variant of this campaign; its variants are {}",
                    names.join(", ")
                ),
            }])
        })
}

/// Where a campaign's A/B test is.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AbTestPhase {
    /// The campaign has not started sending: no slice is chosen yet.
    NotStarted,
    /// The test slice is being delivered; the rest of the list waits.
    Testing,
    /// The test slice is delivered; the rest waits for the decision at `decide_at` (or a
    /// winner chosen by hand). A paused campaign is decided once resumed.
    WaitingForDecision,
    /// The winner was chosen and goes to the rest of the list.
    SendingWinner,
    /// The campaign ended (completed, failed or cancelled).
    Finished,
}

/// An A/B test's phase and decision.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AbTestView {
    pub phase: AbTestPhase,
    /// When the winner is chosen by the results (the test started + `decide_after`).
    #[serde(with = "time::serde::rfc3339::option")]
    pub decide_at: Option<OffsetDateTime>,
    /// The winning variant's name, once chosen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub winner: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub decided_at: Option<OffsetDateTime>,
    /// How the winner was chosen: `rule` (`best_rate`, `tie_first_variant`,
    /// `no_events_first_variant` or `manual`), `metric`, and per variant `delivered`,
    /// `events` and `rate` of the test slice at the time.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub decision: Option<serde_json::Value>,
}

/// The A/B test of a campaign that has one, as the status (API and `marketing status`) and
/// the report show it.
pub async fn ab_test_view(
    store: &dyn CampaignStore,
    campaign: &CampaignRecord,
) -> Result<Option<AbTestView>, StoreError> {
    if campaign.document.ab_test.is_none() {
        return Ok(None);
    }
    let Some(ab) = &campaign.ab else {
        let phase = if campaign.status.is_final() {
            AbTestPhase::Finished
        } else {
            AbTestPhase::NotStarted
        };
        return Ok(Some(AbTestView {
            phase,
            decide_at: None,
            winner: None,
            decided_at: None,
            decision: None,
        }));
    };
    let phase = if campaign.status.is_final() {
        AbTestPhase::Finished
    } else if ab.phase != store::AbPhase::Testing {
        AbTestPhase::SendingWinner
    } else {
        let slice = store.variant_counts(campaign.id, true).await?;
        if slice.iter().any(|variant| variant.pending > 0) {
            AbTestPhase::Testing
        } else {
            AbTestPhase::WaitingForDecision
        }
    };
    Ok(Some(AbTestView {
        phase,
        decide_at: ab.decide_at,
        winner: ab
            .winner
            .and_then(|index| campaign.document.variants.get(usize::from(index)))
            .map(|variant| variant.name.clone()),
        decided_at: ab.decided_at,
        decision: ab.decision.clone(),
    }))
}
