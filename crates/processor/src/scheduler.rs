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

/// Health and progress of the campaign processor, for metrics (`campaign_processor_healthy`,
/// `campaigns_processed_total{status}`, `campaign_processing_seconds`). Called from the
/// processor's loop, so implementations must be quick and must not block.
pub trait SchedulerObserver: Send + Sync {
    /// A check finished: the loop is alive and the store answered. `took` is its duration.
    fn check_succeeded(&self, _report: &CheckReport, _took: Duration) {}
    /// A check failed (store or task repository unreachable): the processor retries after
    /// its timer refresh; until a check succeeds again it is not healthy.
    fn check_failed(&self, _error: &ProcessorError) {}
    /// This replica started a scheduled campaign, `lateness` after its `scheduled_at`.
    fn campaign_enqueued(&self, _campaign: &EnqueuedCampaign) {}
    /// This replica won a due campaign but could not create its task (the task repository did
    /// not answer): the campaign stays `queued`, and the repair of a later full check creates
    /// the task. `took` is the time spent trying.
    fn campaign_failed(&self, _campaign: CampaignId, _error: &ProcessorError, _took: Duration) {}
}

/// An observer that observes nothing (the default).
pub struct NoObserver;

impl SchedulerObserver for NoObserver {}

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
    observer: Arc<dyn SchedulerObserver>,
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
            observer: Arc::new(NoObserver),
            wake: Arc::new(Notify::new()),
        }
    }

    /// Reports health and progress to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn SchedulerObserver>) -> Scheduler {
        self.observer = observer;
        self
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
                let trying = Instant::now();
                if let Err(err) =
                    enqueue_campaign(self.store.as_ref(), self.tasks.as_ref(), campaign.id).await
                {
                    self.observer
                        .campaign_failed(campaign.id, &err, trying.elapsed());
                    return Err(err);
                }
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
                self.observer.campaign_enqueued(&enqueued);
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
    /// half-way by the shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
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
                    self.observer.check_succeeded(&report, started.elapsed());
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
                    self.observer.check_failed(&err);
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
