//! The campaign processor: starts scheduled campaigns when their time comes.
//!
//! Two clocks drive it. Every CAMPAIGN_CHECK_INTERVAL it does a full check: queue what is
//! due, and repair campaigns a crash left `queued` without their `send_campaign` task. In
//! between it keeps a timer on the nearest `scheduled_at`, re-read at least every
//! [`SchedulerConfig::timer_refresh`] (so a schedule set by another process is seen within
//! that time), so a campaign starts within about a second of its time even with the default
//! 60 s interval.
//!
//! **Exactly once across replicas.** A due campaign is taken by a conditional update
//! (`scheduled → queued` where still `scheduled` and due, [`CampaignStore::queue_due_campaigns`]);
//! of any number of replicas exactly one wins each campaign, and only the winner creates the
//! task. The task's idempotency key makes a repeated creation (the repair) harmless.
//!
//! **Crash between the two steps.** A replica that dies after winning a campaign but before
//! creating its task leaves it `queued` with no task. Every full check re-creates the task of
//! campaigns queued more than [`SchedulerConfig::repair_after`] ago through
//! [`enqueue_campaign`] (same idempotency key: a campaign that has its task keeps it).
//!
//! **A/B tests.** Each check also decides the tests whose `decide_after` has passed on the
//! processor's clock (`now`), through the campaign service: one conditional update from
//! phase `testing` decides and releases the rest to the winner, so of any number of replicas
//! one decides, and only it creates the rest's `send_campaign` task. A crash in between
//! leaves the campaign `decided` without that task; every full check re-creates it (same
//! key) for campaigns decided more than `repair_after` ago.

use crate::{ProcessorError, enqueue_campaign};
use campaign::CampaignId;
use service::{AbChoice, CampaignService};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::CampaignStore;
use tasks::TaskRepository;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How the campaign processor behaves.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// CAMPAIGN_CHECK_INTERVAL: time between full checks (queue what is due, repair).
    pub check_interval: Duration,
    /// The longest the timer trusts its last look at the nearest `scheduled_at`: a campaign
    /// scheduled sooner by another process is seen within this time.
    pub timer_refresh: Duration,
    /// Campaigns taken per store round trip; a check repeats until fewer come back.
    pub claim_limit: u32,
    /// A campaign queued longer ago than this and still `queued` gets its task re-created
    /// (idempotently): long enough not to race the replica that is creating it right now.
    pub repair_after: Duration,
}

impl SchedulerConfig {
    pub fn new(check_interval: Duration) -> SchedulerConfig {
        SchedulerConfig {
            check_interval,
            timer_refresh: Duration::from_secs(1),
            claim_limit: 100,
            repair_after: Duration::from_secs(10),
        }
    }
}

/// What one check did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Campaigns this replica moved to `queued` and created the task of.
    pub enqueued: Vec<EnqueuedCampaign>,
    /// Campaigns found `queued` without progress whose task was re-created (or found).
    pub repaired: usize,
    /// A/B tests this replica decided: the campaign and its winning variant.
    pub decided: Vec<(CampaignId, String)>,
    /// Decided A/B tests whose rest's task was re-created (or found).
    pub ab_repaired: usize,
    /// Whether this was a full check (interval) rather than a timer wake-up.
    pub full: bool,
    /// The nearest `scheduled_at` still waiting, after this check.
    pub next_due: Option<OffsetDateTime>,
}

/// A campaign the processor started, and how late after its `scheduled_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnqueuedCampaign {
    pub id: CampaignId,
    pub lateness: Duration,
}

/// The campaign processor's health, reported as `campaign_processor_healthy`: 1 after a check
/// succeeds, 0 after one fails, and 0 when no check has succeeded for a while (a watchdog), so
/// a loop that hangs (not only one that errors) shows as unhealthy. Queuing a campaign does not
/// end its processing, so the processor counts nothing in `campaigns_processed_total`: the
/// process that records a campaign's last outcome does.
struct Health {
    /// Tokio's clock, so the watchdog can be tested with paused time.
    last_success: std::sync::Mutex<tokio::time::Instant>,
}

impl Health {
    /// The processor checks at least every `timer_refresh`; missing several in a row is a stall.
    fn stall_after(config: &SchedulerConfig) -> Duration {
        (config.timer_refresh * 5).max(Duration::from_secs(10))
    }

    /// Exports the gauge at 0 (healthy only once a check succeeds) and starts the watchdog,
    /// until `shutdown`.
    fn start(config: &SchedulerConfig, shutdown: CancellationToken) -> Arc<Health> {
        let health = Arc::new(Health {
            last_success: std::sync::Mutex::new(tokio::time::Instant::now()),
        });
        metrics::set_processor_healthy(false);
        let stall_after = Self::stall_after(config);
        let watched = health.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if watched.since_success() > stall_after {
                    metrics::set_processor_healthy(false);
                }
            }
        });
        health
    }

    fn since_success(&self) -> Duration {
        self.last_success
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .elapsed()
    }

    /// A check finished: the loop is alive and the store answered.
    fn check_succeeded(&self) {
        *self
            .last_success
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = tokio::time::Instant::now();
        metrics::set_processor_healthy(true);
    }

    /// A check failed (store or task repository unreachable): until one succeeds again the
    /// processor cannot do its job. The loop logs the error.
    fn check_failed(&self) {
        metrics::set_processor_healthy(false);
    }
}

/// Wakes a processor in the same process at once, e.g. after a schedule changed through the
/// API, instead of at its next timer refresh.
#[derive(Clone)]
pub struct SchedulerWaker(Arc<Notify>);

impl SchedulerWaker {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// The campaign processor (`marketing scheduler`, and inside `serve`).
pub struct Scheduler {
    config: SchedulerConfig,
    store: Arc<dyn CampaignStore>,
    tasks: Arc<dyn TaskRepository>,
    wake: Arc<Notify>,
}

/// Sleeps are at least this long, so a campaign another replica is taking right now (still
/// visible as due until its transaction commits) does not make this one spin.
const MIN_PAUSE: Duration = Duration::from_millis(20);

impl Scheduler {
    pub fn new(
        config: SchedulerConfig,
        store: Arc<dyn CampaignStore>,
        tasks: Arc<dyn TaskRepository>,
    ) -> Scheduler {
        Scheduler {
            config,
            store,
            tasks,
            wake: Arc::new(Notify::new()),
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn waker(&self) -> SchedulerWaker {
        SchedulerWaker(self.wake.clone())
    }

    /// One check at `now`: queues every campaign due by then (when `full`, or when the nearest
    /// `scheduled_at` has come), and on a full check repairs campaigns left `queued` without
    /// a task. Public so tests can drive it with a clock of their own.
    pub async fn check(
        &self,
        now: OffsetDateTime,
        full: bool,
    ) -> Result<CheckReport, ProcessorError> {
        let mut report = CheckReport {
            full,
            ..CheckReport::default()
        };
        let next_due = self.store.next_scheduled_at().await?;
        if full || next_due.is_some_and(|at| at <= now) {
            self.queue_due(now, &mut report).await?;
        }
        report.decided = self.decide_ab_tests(now).await?;
        if full {
            report.repaired = self.repair(now).await?;
            report.ab_repaired = self.repair_ab_tests(now).await?;
        }
        report.next_due = self.store.next_scheduled_at().await?;
        Ok(report)
    }

    async fn queue_due(
        &self,
        now: OffsetDateTime,
        report: &mut CheckReport,
    ) -> Result<(), ProcessorError> {
        loop {
            let due = self
                .store
                .queue_due_campaigns(now, self.config.claim_limit)
                .await?;
            for campaign in &due {
                // Won by this replica; if creating the task fails, the campaign stays
                // `queued` and the repair of a later full check creates it.
                // The check's error is logged by the loop; the campaign is not an end.
                enqueue_campaign(self.store.as_ref(), self.tasks.as_ref(), campaign.id).await?;
                let lateness = Duration::try_from(now - campaign.scheduled_at).unwrap_or_default();
                let enqueued = EnqueuedCampaign {
                    id: campaign.id,
                    lateness,
                };
                tracing::info!(
                    campaign = %campaign.id,
                    late_ms = lateness.as_millis() as u64,
                    "scheduled campaign enqueued"
                );
                report.enqueued.push(enqueued);
            }
            if due.len() < self.config.claim_limit as usize {
                return Ok(());
            }
        }
    }

    /// Decides the A/B tests due by `now` of campaigns that are sending (a paused one waits
    /// for its resume).
    async fn decide_ab_tests(
        &self,
        now: OffsetDateTime,
    ) -> Result<Vec<(CampaignId, String)>, ProcessorError> {
        let due = self
            .store
            .due_ab_decisions(
                now,
                &[campaign::CampaignStatus::Sending],
                self.config.claim_limit,
            )
            .await?;
        let service = CampaignService::new(self.store.as_ref(), self.tasks.as_ref());
        let mut decided = Vec::new();
        for id in due {
            if let Some(outcome) = service.decide_ab_test(id, AbChoice::ByResults, now).await?
                && outcome.decided_now
            {
                decided.push((id, outcome.winner));
            }
        }
        Ok(decided)
    }

    /// Re-creates (idempotently) the rest's task of tests decided before `repair_after`.
    async fn repair_ab_tests(&self, now: OffsetDateTime) -> Result<usize, ProcessorError> {
        let stuck = self
            .store
            .ab_decided_before(now - self.config.repair_after, self.config.claim_limit)
            .await?;
        let service = CampaignService::new(self.store.as_ref(), self.tasks.as_ref());
        for &id in &stuck {
            service.create_ab_rest_task(id).await?;
        }
        Ok(stuck.len())
    }

    async fn repair(&self, now: OffsetDateTime) -> Result<usize, ProcessorError> {
        let before = now - self.config.repair_after;
        let stuck = self
            .store
            .queued_before(before, self.config.claim_limit)
            .await?;
        for &id in &stuck {
            let (_, task) = enqueue_campaign(self.store.as_ref(), self.tasks.as_ref(), id).await?;
            tracing::debug!(campaign = %id, task = %task.id, "queued campaign has its send task");
        }
        Ok(stuck.len())
    }

    /// Runs until `shutdown`: a full check at once and every `check_interval`, and timer
    /// wake-ups at the nearest `scheduled_at` in between. A check is never interrupted
    /// half-way by the shutdown. Reports `campaign_processor_healthy` while it runs.
    pub async fn run(self, shutdown: CancellationToken) {
        let health = Health::start(&self.config, shutdown.clone());
        let mut next_full = Instant::now();
        while !shutdown.is_cancelled() {
            let started = Instant::now();
            let full = started >= next_full;
            if full {
                next_full = started + self.config.check_interval;
            }
            let until_full = next_full.saturating_duration_since(Instant::now());
            let pause = match self.check(OffsetDateTime::now_utc(), full).await {
                Ok(report) => {
                    health.check_succeeded();
                    let until_due = report.next_due.map(|at| {
                        Duration::try_from(at - OffsetDateTime::now_utc()).unwrap_or_default()
                    });
                    [Some(until_full), Some(self.config.timer_refresh), until_due]
                        .into_iter()
                        .flatten()
                        .min()
                        .unwrap_or(self.config.timer_refresh)
                }
                Err(err) => {
                    tracing::warn!(error = %err, "campaign check failed; retrying");
                    health.check_failed();
                    // The next attempt is a full one: the failed check may have left a
                    // campaign queued without its task.
                    next_full = Instant::now() + self.config.timer_refresh;
                    self.config.timer_refresh
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(pause.max(MIN_PAUSE)) => {}
                () = self.wake.notified() => {}
            }
        }
        tracing::info!("campaign processor stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy_gauge() -> String {
        metrics::render()
            .lines()
            .find(|line| line.starts_with("campaign_processor_healthy "))
            .expect("the gauge is exported once the processor reports")
            .to_string()
    }

    /// The gauge follows the checks, and a loop that stops checking (hangs) turns it to 0
    /// after the stall bound, on tokio's paused clock.
    #[tokio::test(start_paused = true)]
    async fn the_processor_is_unhealthy_when_checks_fail_or_stop() {
        let config = SchedulerConfig::new(Duration::from_secs(60));
        let stall_after = Health::stall_after(&config);
        let shutdown = CancellationToken::new();
        let health = Health::start(&config, shutdown.clone());
        assert_eq!(healthy_gauge(), "campaign_processor_healthy 0");

        health.check_succeeded();
        assert_eq!(healthy_gauge(), "campaign_processor_healthy 1");

        // Checks keep succeeding: the watchdog leaves the gauge alone.
        for _ in 0..3 {
            tokio::time::sleep(stall_after / 2).await;
            health.check_succeeded();
        }
        assert_eq!(healthy_gauge(), "campaign_processor_healthy 1");

        // No check for longer than the bound: the watchdog (ticking every second) notices.
        tokio::time::sleep(stall_after + Duration::from_secs(2)).await;
        assert_eq!(healthy_gauge(), "campaign_processor_healthy 0");

        health.check_succeeded();
        assert_eq!(healthy_gauge(), "campaign_processor_healthy 1");
        health.check_failed();
        assert_eq!(healthy_gauge(), "campaign_processor_healthy 0");
        shutdown.cancel();
    }
}
