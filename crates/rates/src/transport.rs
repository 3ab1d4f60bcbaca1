//! The transport that keeps the deployment's sending rates: each message waits for a slot of
//! its destination's schedule (a domain group, or the default per domain) and of its
//! campaign's (`max_rate`), then one of the global schedule, then goes to the wrapped
//! transport; a throttling reply slows its destination down for every worker.

use crate::limits_file::{RateLimits, SlowDownPolicy};
use crate::schedule::SharedSchedule;
use crate::throttle;
use async_trait::async_trait;
use delivery::{Accepted, OutgoingMessage, SendError, Transport};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use store::sending_rates::SendingRateStore;

/// Where the limits come from: `SMTP_RATE_LIMIT` (the global rate) and `RATE_LIMITS_FILE`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateSettings {
    /// Messages per second for the whole deployment.
    pub global: Option<f64>,
    /// Per destination domain or group.
    pub destinations: RateLimits,
}

/// A transport whose sends keep the shared rates.
pub struct RateLimitedTransport {
    inner: Arc<dyn Transport>,
    global: Option<Arc<SharedSchedule>>,
    /// Domain → its group's schedule.
    groups: HashMap<String, Arc<SharedSchedule>>,
    default_rate: Option<f64>,
    /// Domains in no group, each with its own schedule at the default rate, made on first use.
    by_domain: Mutex<HashMap<String, Arc<SharedSchedule>>>,
    /// Campaigns with a `max_rate`, each with its own schedule, made on first use.
    by_campaign: Mutex<HashMap<String, Arc<SharedSchedule>>>,
    policy: SlowDownPolicy,
    store: Arc<dyn SendingRateStore>,
}

impl RateLimitedTransport {
    pub fn new(
        inner: Arc<dyn Transport>,
        settings: &RateSettings,
        store: Arc<dyn SendingRateStore>,
    ) -> RateLimitedTransport {
        let policy = settings.destinations.slow_down;
        let global = settings.global.map(|rate| {
            SharedSchedule::new(
                "global".into(),
                "global".into(),
                rate,
                policy,
                store.clone(),
            )
        });
        let mut groups = HashMap::new();
        for group in &settings.destinations.groups {
            let schedule = SharedSchedule::new(
                format!("group:{}", group.name),
                group.name.clone(),
                group.rate,
                policy,
                store.clone(),
            );
            for domain in &group.domains {
                groups.insert(domain.clone(), schedule.clone());
            }
        }
        RateLimitedTransport {
            inner,
            global,
            groups,
            default_rate: settings.destinations.default_rate,
            by_domain: Mutex::new(HashMap::new()),
            by_campaign: Mutex::new(HashMap::new()),
            policy,
            store,
        }
    }

    /// The schedule of the message's destination (its first recipient's domain), if limited.
    fn destination(&self, message: &OutgoingMessage) -> Option<Arc<SharedSchedule>> {
        if self.groups.is_empty() && self.default_rate.is_none() {
            return None;
        }
        let recipient = message.envelope.to().next()?;
        let domain = recipient.rsplit_once('@')?.1.to_ascii_lowercase();
        if let Some(schedule) = self.groups.get(&domain) {
            return Some(schedule.clone());
        }
        let rate = self.default_rate?;
        let mut by_domain = self
            .by_domain
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        Some(
            by_domain
                .entry(domain)
                .or_insert_with_key(|domain| {
                    SharedSchedule::new(
                        format!("domain:{domain}"),
                        "default".into(),
                        rate,
                        self.policy,
                        self.store.clone(),
                    )
                })
                .clone(),
        )
    }
}

impl RateLimitedTransport {
    /// The schedule of the message's campaign, if it has a `max_rate`. Its row is shared by
    /// every worker like the global one; a campaign whose rate changed gets a fresh schedule.
    fn campaign(&self, message: &OutgoingMessage) -> Option<Arc<SharedSchedule>> {
        let rate = message.campaign_max_rate?;
        let campaign = message.campaign_id.as_deref()?;
        let mut by_campaign = self
            .by_campaign
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(schedule) = by_campaign.get(campaign)
            && schedule.configured() == rate
        {
            return Some(schedule.clone());
        }
        let schedule = SharedSchedule::new(
            format!("campaign:{campaign}"),
            "campaign".into(),
            rate,
            self.policy,
            self.store.clone(),
        );
        by_campaign.insert(campaign.to_string(), schedule.clone());
        Some(schedule)
    }
}

#[async_trait]
impl Transport for RateLimitedTransport {
    async fn send(&self, message: OutgoingMessage) -> Result<Accepted, SendError> {
        let destination = self.destination(&message);
        let campaign = self.campaign(&message);
        let limited: Vec<&Arc<SharedSchedule>> =
            destination.iter().chain(campaign.iter()).collect();
        // Deferred before taking any slot when too many already wait for one of them, so no
        // slot is taken for a message that then does not go.
        for schedule in &limited {
            if let Err(retry_in) = schedule.room_to_wait() {
                metrics::sending_rates::record_rate_deferral(schedule.label());
                return Err(SendError::RateLimited {
                    destination: schedule.describe(),
                    retry_in,
                });
            }
        }
        // The destination and the campaign before the global schedule: a slot of it taken
        // while waiting for a slow destination would be wasted.
        if !limited.is_empty() {
            SharedSchedule::acquire_together(&limited).await;
        }
        if let Some(global) = &self.global {
            global.acquire().await;
        }
        let result = self.inner.send(message).await;
        if let (Err(error), Some(schedule)) = (&result, &destination)
            && throttle::is_throttling(error)
            && let Err(err) = schedule.throttled().await
        {
            tracing::warn!(schedule = schedule.name(), error = %err, "cannot record a throttling reply");
        }
        result
    }

    fn describe(&self) -> String {
        let mut limits = Vec::new();
        if let Some(global) = &self.global {
            limits.push(format!(
                "at most {} messages/s across all workers",
                global.configured()
            ));
        }
        let mut groups: Vec<(&str, f64)> = self
            .groups
            .values()
            .map(|schedule| (schedule.label(), schedule.configured()))
            .collect();
        groups.sort_by(|a, b| a.0.cmp(b.0));
        groups.dedup();
        for (name, rate) in groups {
            limits.push(format!("{name} {rate}/s"));
        }
        if let Some(rate) = self.default_rate {
            limits.push(format!("other domains {rate}/s each"));
        }
        limits.push("campaigns' max_rate across all workers".into());
        format!("{}, {}", self.inner.describe(), limits.join(", "))
    }

    async fn close(&self) {
        self.inner.close().await
    }
}
