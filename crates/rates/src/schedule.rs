//! One shared schedule as a worker sees it: the stretch it leased from the store and the next
//! of its slots.

use crate::limits_file::SlowDownPolicy;
use crate::throttle;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use store::StoreError;
use store::sending_rates::{SendingRateStore, Slowdown};
use tokio::sync::Mutex;

/// How much of the schedule a worker leases at once: a fifth of a second of slots. Short, so
/// a worker that dies takes little with it and workers joining get slots within that time; long
/// enough that a deployment sends its whole rate with five writes a second per schedule.
pub const LEASE_FOR: Duration = Duration::from_millis(200);

/// Slots that passed while every sender was busy may still be used this late; older ones are
/// dropped, so a worker that idled never sends a burst above the rate.
const CATCH_UP: Duration = Duration::from_millis(100);

/// A worker gives back the rest of its stretch when no message waited for or asked for a slot
/// this long.
const IDLE: Duration = Duration::from_millis(50);

/// While the store cannot be reached, senders wait and ask again this often (nothing is sent
/// unlimited).
const STORE_RETRY: Duration = Duration::from_millis(500);

/// Nanoseconds since the Unix epoch: the schedules' clock, shared by every host (keep hosts on
/// NTP; a host whose clock runs ahead by d sends its stretches up to d early).
pub fn wall_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_nanos() as i64)
        .unwrap_or(0)
}

/// The stretch of the schedule this worker holds.
#[derive(Debug, Clone, Copy)]
struct Lease {
    /// The next unused slot.
    next_ns: i64,
    /// Slots left from `next_ns` on, `interval_ns` apart.
    remaining: i64,
    interval_ns: i64,
    /// Where the stretch ends (what the store holds as the schedule's next free slot as long
    /// as nobody leased after us).
    end_ns: i64,
    /// Counts leases, so the idle give-back of an old stretch leaves a newer one alone.
    generation: u64,
}

/// Whether the schedule named `name` is exported as a `sending_rate_limit` gauge. A campaign's
/// `max_rate` is not: all campaigns share the one `campaign` label (a label per campaign would
/// grow without bound), so a gauge would show whichever campaign set it last.
fn exports_rate(name: &str) -> bool {
    !name.starts_with("campaign:")
}

/// A rate shared through one row of `sending_rate_schedules`.
pub struct SharedSchedule {
    /// The row's name: `global`, `group:NAME` or `domain:NAME`.
    name: String,
    /// The metrics label: `global`, the group's name, or `default` (bounded).
    label: String,
    configured: f64,
    policy: SlowDownPolicy,
    store: Arc<dyn SendingRateStore>,
    lease: Mutex<Option<Lease>>,
    /// The slow-down as last read from the store.
    slowdown: std::sync::Mutex<Option<Slowdown>>,
    last_asked_ns: AtomicI64,
    /// Messages waiting for their slot: while any does, this worker still wants its stretch.
    waiting: AtomicUsize,
    /// When the last message this worker turned away was told to come back.
    deferred_until_ns: std::sync::Mutex<i64>,
}

impl SharedSchedule {
    pub fn new(
        name: String,
        label: String,
        configured: f64,
        policy: SlowDownPolicy,
        store: Arc<dyn SendingRateStore>,
    ) -> Arc<SharedSchedule> {
        if exports_rate(&name) {
            metrics::sending_rates::set_rate(&label, configured);
        }
        Arc::new(SharedSchedule {
            name,
            label,
            configured,
            policy,
            store,
            lease: Mutex::new(None),
            slowdown: std::sync::Mutex::new(None),
            last_asked_ns: AtomicI64::new(0),
            waiting: AtomicUsize::new(0),
            deferred_until_ns: std::sync::Mutex::new(0),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// `group google`, `domain example.com`, `the campaign's max_rate` or `the global limit`,
    /// for messages and for the campaign's status.
    pub fn describe(&self) -> String {
        match self.name.split_once(':') {
            Some(("campaign", _)) => "the campaign's max_rate".into(),
            Some((kind, name)) => format!("{kind} {name}"),
            None => "the global limit".into(),
        }
    }

    /// The configured rate, messages per second.
    pub fn configured(&self) -> f64 {
        self.configured
    }

    /// The rate in force now, with any slow-down as last read from the store.
    pub fn rate_now(&self) -> f64 {
        let slowdown = *self
            .slowdown
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        throttle::rate_in_force(self.configured, slowdown, &self.policy, wall_ns())
    }

    /// Takes this worker's next slot, leasing a new stretch when its own is used up, and
    /// returns the slot's time (nanoseconds since the epoch). The caller waits for it.
    pub async fn reserve(self: &Arc<SharedSchedule>) -> i64 {
        let now_ns = wall_ns();
        self.last_asked_ns.store(now_ns, Ordering::Relaxed);
        let mut held = self.lease.lock().await;
        if let Some(lease) = held.as_mut() {
            // Slots that passed unused beyond the catch-up allowance are gone.
            let late_ns = now_ns - CATCH_UP.as_nanos() as i64 - lease.next_ns;
            if late_ns > 0 {
                let skipped = (late_ns / lease.interval_ns + 1).min(lease.remaining);
                lease.next_ns += skipped * lease.interval_ns;
                lease.remaining -= skipped;
            }
            if lease.remaining > 0 {
                let slot = lease.next_ns;
                lease.next_ns += lease.interval_ns;
                lease.remaining -= 1;
                return slot;
            }
        }
        let generation = held.map_or(0, |lease| lease.generation + 1);
        let mut lease = self.lease_stretch(generation).await;
        let slot = lease.next_ns;
        lease.next_ns += lease.interval_ns;
        lease.remaining -= 1;
        *held = Some(lease);
        drop(held);
        self.give_back_when_idle(generation);
        slot
    }

    /// Waits for this worker's next slot.
    pub async fn acquire(self: &Arc<SharedSchedule>) {
        SharedSchedule::acquire_together(&[self]).await
    }

    /// Waits for a slot of each schedule, all used at once when the latest of them comes: a
    /// message limited twice (its campaign's rate and its destination's) takes one slot of
    /// each without letting the earlier one pass unused while it waits for the other.
    pub async fn acquire_together(schedules: &[&Arc<SharedSchedule>]) {
        let _waiting: Vec<Waiting<'_>> = schedules
            .iter()
            .map(|schedule| Waiting::start(&schedule.waiting))
            .collect();
        let mut slot = i64::MIN;
        for schedule in schedules {
            slot = slot.max(schedule.reserve().await);
        }
        let wait = slot - wall_ns();
        if wait > 0 {
            tokio::time::sleep(Duration::from_nanos(wait as u64)).await;
        }
        let now_ns = wall_ns();
        for schedule in schedules {
            schedule.last_asked_ns.store(now_ns, Ordering::Relaxed);
        }
    }

    /// Whether a message may wait here for a slot: yes while fewer of this worker's messages
    /// wait for this schedule than a stretch holds; beyond that, how long the message should
    /// wait elsewhere (deferred, not holding one of the worker's in-flight slots), so a slow
    /// destination cannot take every slot while messages to other destinations could go.
    pub fn room_to_wait(&self) -> Result<(), Duration> {
        let rate = self.rate_now();
        let stretch = (rate * LEASE_FOR.as_secs_f64()).ceil().max(1.0);
        let waiting = self.waiting.load(Ordering::Relaxed) as f64;
        if waiting >= stretch {
            return Err(self.defer(rate, waiting));
        }
        Ok(())
    }

    /// When a message turned away now should come back: in line behind the messages waiting
    /// and those turned away before it (each one slot later than the previous), so a backlog
    /// comes back spread at the rate instead of all at once; never sooner than a second, as a
    /// deferred recipient costs a write and a follow-up task. The line is this worker's: with
    /// several workers sharing the rate, recipients come back early and wait in line again.
    fn defer(&self, rate: f64, waiting: f64) -> Duration {
        let now_ns = wall_ns();
        let interval_ns = 1e9 / rate;
        let mut line_end = self
            .deferred_until_ns
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let behind_waiting = now_ns + (waiting * interval_ns) as i64;
        let at = (*line_end).max(behind_waiting) + interval_ns as i64;
        *line_end = at;
        Duration::from_nanos((at - now_ns).max(0) as u64).max(Duration::from_secs(1))
    }

    /// Leases the next stretch of `LEASE_FOR` at the rate in force, waiting out store outages.
    async fn lease_stretch(&self, generation: u64) -> Lease {
        loop {
            let rate = self.rate_now();
            let interval_ns = ((1e9 / rate).round() as i64).max(1);
            let count = ((rate * LEASE_FOR.as_secs_f64()).ceil() as i64).max(1);
            match self
                .store
                .lease_slots(&self.name, wall_ns(), count * interval_ns)
                .await
            {
                Ok(leased) => {
                    self.note_slowdown(leased.slowdown);
                    return Lease {
                        next_ns: leased.start_ns,
                        remaining: count,
                        interval_ns,
                        end_ns: leased.end_ns,
                        generation,
                    };
                }
                Err(err) => {
                    tracing::warn!(schedule = %self.name, error = %err, "cannot lease sending slots; waiting for the store");
                    tokio::time::sleep(STORE_RETRY).await;
                }
            }
        }
    }

    fn note_slowdown(&self, slowdown: Option<Slowdown>) {
        *self
            .slowdown
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = slowdown;
        if exports_rate(&self.name) {
            metrics::sending_rates::set_rate(&self.label, self.rate_now());
        }
    }

    /// Once no message asked for a slot for [`IDLE`], gives the unused rest of stretch
    /// `generation` back, so other workers need not wait for time this one will not use.
    fn give_back_when_idle(self: &Arc<SharedSchedule>, generation: u64) {
        let schedule = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(IDLE).await;
                let Some(schedule) = schedule.upgrade() else {
                    return;
                };
                let now_ns = wall_ns();
                let mut held = schedule.lease.lock().await;
                let Some(lease) = held.as_mut() else { return };
                if lease.generation != generation || lease.remaining == 0 || lease.end_ns <= now_ns
                {
                    return;
                }
                if schedule.waiting.load(Ordering::Relaxed) > 0
                    || now_ns - schedule.last_asked_ns.load(Ordering::Relaxed)
                        < IDLE.as_nanos() as i64
                {
                    continue;
                }
                let unused_from = lease.next_ns.max(now_ns);
                let result = schedule
                    .store
                    .return_slots(&schedule.name, lease.end_ns, unused_from)
                    .await;
                if let Err(err) = result {
                    tracing::debug!(schedule = %schedule.name, error = %err, "could not give back sending slots");
                }
                // Given back or not, this worker no longer counts on them.
                lease.remaining = 0;
                return;
            }
        });
    }

    /// A throttling reply came for this destination: slows it down for every worker (unless a
    /// slow-down within [`throttle::SETTLE`] already covers it) and starts a fresh stretch at
    /// the new rate.
    pub async fn throttled(&self) -> Result<(), StoreError> {
        metrics::sending_rates::record_throttling_reply(&self.label);
        let configured = self.configured;
        let policy = self.policy;
        let now_ns = wall_ns();
        let slowdown = self
            .store
            .record_throttle(&self.name, now_ns, &move |current| {
                throttle::slowed_after_reply(configured, current, &policy, now_ns)
            })
            .await?;
        self.note_slowdown(slowdown);
        // The rest of the stretch was leased at the old rate; drop it so the next message
        // leases at the new one.
        if let Some(lease) = self.lease.lock().await.as_mut() {
            lease.remaining = 0;
        }
        Ok(())
    }
}

/// Counts a message as waiting for its slot until dropped (also when its send is abandoned).
struct Waiting<'a>(&'a AtomicUsize);

impl Waiting<'_> {
    fn start(count: &AtomicUsize) -> Waiting<'_> {
        count.fetch_add(1, Ordering::Relaxed);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
