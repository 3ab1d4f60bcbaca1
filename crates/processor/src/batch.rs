//! The two kinds of work: splitting a campaign into batches, and delivering one batch.

use crate::payload::{SEND_BATCH, SendBatch, SendCampaign};
use crate::recorder::Recorder;
use crate::retry::outcome_of;
use crate::status_gate::StatusGates;
use crate::worker::Stats;
use crate::{ProcessorError, Services};
use campaign::{CampaignAction, CampaignId, CampaignStatus};
use futures::FutureExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;
use store::{CampaignRecord, DeliveryOutcome, OutcomeKind, StoredRecipient};
use tasks::NewTask;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often a batch of a paused campaign looks again: a resumed campaign continues within
/// about this long.
const PAUSED_RECHECK: time::Duration = time::Duration::seconds(5);

/// Batch tasks created per call when splitting (each call is one transaction).
const SPLIT_CHUNK: usize = 1000;

/// Compiled templates kept per worker; campaigns' templates never change once stored.
const COMPILED_CACHE: usize = 64;

/// What a worker's tasks share.
pub(crate) struct Shared {
    pub services: Services,
    pub recorder: Recorder,
    /// One permit per message from before it is sent until its outcome is committed.
    pub in_flight: Arc<Semaphore>,
    pub stats: Arc<Stats>,
    /// The transport as the metrics' `transport` label (`smtp`, `outbox`).
    pub transport_label: &'static str,
    compiled: Mutex<CompiledCache>,
    /// The campaigns' status gates, one per campaign shared by this worker's batch runs.
    gates: StatusGates,
}

/// Compiled templates per campaign and A/B variant (`None`: the campaign's own).
type CompiledCache = HashMap<(CampaignId, Option<u8>), Arc<message::CompiledCampaign>>;

impl Shared {
    pub fn new(services: Services, in_flight: usize, stats: Arc<Stats>) -> Shared {
        let transport_label = metrics::transport_label(&services.transport.describe());
        metrics::init_transport(transport_label);
        Shared {
            transport_label,
            recorder: Recorder::start(services.store.clone()),
            services,
            in_flight: Arc::new(Semaphore::new(in_flight.max(1))),
            stats,
            compiled: Mutex::new(HashMap::new()),
            gates: StatusGates::default(),
        }
    }

    /// The campaign's templates compiled, those of A/B variant `variant` when given.
    fn compiled(
        &self,
        record: &CampaignRecord,
        variant: Option<u8>,
    ) -> Result<Arc<message::CompiledCampaign>, message::TemplateError> {
        if let Some(found) = self.lock_cache().get(&(record.id, variant)) {
            return Ok(found.clone());
        }
        let settings = &self.services.message_settings;
        let compiled = Arc::new(match variant {
            Some(index) => message::CompiledCampaign::compile_variant(
                &record.document,
                usize::from(index),
                settings,
            )?,
            None => message::CompiledCampaign::compile(&record.document, settings)?,
        });
        let mut cache = self.lock_cache();
        if cache.len() >= COMPILED_CACHE {
            cache.clear();
        }
        cache.insert((record.id, variant), compiled.clone());
        Ok(compiled)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, CompiledCache> {
        // A panic while holding the lock cannot leave the map half-written; keep using it.
        self.compiled
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Splits a queued campaign into batch tasks and marks it sending.
pub(crate) async fn split(shared: &Shared, job: SendCampaign) -> Result<Value, ProcessorError> {
    let store = shared.services.store.as_ref();
    let id = job.campaign_id;
    let Some(record) = store.get_campaign(id).await? else {
        return Ok(json!({"skipped": "the campaign does not exist"}));
    };
    if job.ab_rest {
        return split_ab_rest(shared, &record).await;
    }
    let sending = CampaignStatus::Sending;
    match record.status {
        status if status.check(sending, CampaignAction::Start).is_ok() => {
            let from = CampaignStatus::sources(sending, CampaignAction::Start);
            store.transition_campaign(id, &from, sending).await?;
        }
        // Split again after a crash: the stable split and the keys create nothing twice.
        CampaignStatus::Sending => {}
        other => return Ok(json!({"skipped": format!("the campaign is {other}")})),
    }
    // Before any batch exists, so no batch can send someone ahead of their local time.
    let first_release = match &record.document.local_send_time {
        Some(local) if record.send_pass == 0 => {
            hold_until_local_time(shared, &record, local).await?
        }
        _ => None,
    };
    // Before any batch exists, so no batch can send a held recipient.
    if record.send_pass == 0 {
        start_ab_test(shared, &record).await?;
    }
    let batches = create_batches(shared, &record, false, first_release).await?;
    if batches == 0 && store.finish_if_done(id).await?.is_some() {
        crate::record_campaign_ended(store, id).await?;
    }
    Ok(json!({"batches": batches, "batch_size": batch_size(shared, &record)}))
}

/// The campaign's batch size, capped by MAX_BATCH_SIZE.
fn batch_size(shared: &Shared, record: &CampaignRecord) -> u32 {
    record
        .document
        .batch_size
        .min(shared.services.max_batch_size)
        .max(1)
}

/// Creates one batch task per id range of the campaign (the rest's own chain for
/// `ab_rest`), each under its idempotency key. Returns how many ranges there are.
async fn create_batches(
    shared: &Shared,
    record: &CampaignRecord,
    ab_rest: bool,
    run_after: Option<OffsetDateTime>,
) -> Result<usize, ProcessorError> {
    let id = record.id;
    let batch_size = batch_size(shared, record);
    let ranges = shared.services.store.batch_ranges(id, batch_size).await?;
    for chunk in ranges.chunks(SPLIT_CHUNK) {
        let tasks = chunk
            .iter()
            .map(|range| {
                batch_task(
                    &SendBatch {
                        campaign_id: id,
                        first: range.first,
                        last: range.last,
                        round: 0,
                        pass: record.send_pass,
                        ab_rest,
                    },
                    run_after,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        shared.services.tasks.create_many(tasks).await?;
    }
    tracing::info!(campaign = %id, recipients = record.recipient_count, batches = ranges.len(), batch_size, ab_rest, "campaign split into batches");
    Ok(ranges.len())
}

/// Starts an A/B test's first send: the test slice (drawn reproducibly from the campaign id)
/// gets its variants and the rest is held back, with the decision due `decide_after` from
/// now on the processor's clock. Nothing happens for a campaign without a test, or when a
/// split run again finds the test started.
async fn start_ab_test(shared: &Shared, record: &CampaignRecord) -> Result<(), ProcessorError> {
    let Some(test) = &record.document.ab_test else {
        return Ok(());
    };
    if record.ab.is_some() {
        return Ok(());
    }
    let store = shared.services.store.as_ref();
    let decide_after = campaign::parse_decide_after(&test.decide_after)
        .map_err(|err| ProcessorError::Payload(format!("ab_test.decide_after: {err}")))?;
    let ids = store.recipient_ids(record.id).await?;
    let slice = campaign::ab::choose_slice(
        record.id,
        &ids,
        test.test_fraction,
        record.document.variants.len(),
    );
    let decide_at = shared.services.clock.now() + decide_after;
    if store.start_ab_test(record.id, &slice, decide_at).await? {
        tracing::info!(campaign = %record.id, slice = slice.len(), held = ids.len() - slice.len(), %decide_at, "A/B test started");
    }
    Ok(())
}

/// After an A/B test's decision: the rest of the list, released to the winner, gets batches
/// of its own (a paused campaign's wait in their chains until it resumes).
async fn split_ab_rest(shared: &Shared, record: &CampaignRecord) -> Result<Value, ProcessorError> {
    let store = shared.services.store.as_ref();
    let decided = record
        .ab
        .as_ref()
        .is_some_and(|ab| ab.phase != store::AbPhase::Testing);
    if !decided
        || !matches!(
            record.status,
            CampaignStatus::Sending | CampaignStatus::Paused
        )
    {
        return Ok(
            json!({"skipped": format!("the campaign is {} and its A/B test not decided", record.status)}),
        );
    }
    let batches = create_batches(shared, record, true, None).await?;
    store.ab_rest_split(record.id).await?;
    Ok(json!({"batches": batches, "ab_rest": true}))
}

/// Gives each time zone's pending recipients their release time: the first moment at or after
/// the campaign's start when the zone's clock shows the campaign's local time. The start is
/// `scheduled_at` when the campaign started on schedule or late (so downtime does not push a
/// zone to the next day), otherwise now (sent by hand, or before its scheduled time).
/// Returns the earliest release still ahead, when every recipient waits (the batches need not
/// run before it); `None` when someone is due now. A retry pass (`send_pass > 0`) is not held:
/// retrying failed recipients is an operator's "now".
async fn hold_until_local_time(
    shared: &Shared,
    record: &CampaignRecord,
    local: &campaign::LocalSendTime,
) -> Result<Option<OffsetDateTime>, ProcessorError> {
    let store = shared.services.store.as_ref();
    let now = shared.services.clock.now();
    let start = match record.scheduled_at {
        Some(at) if at <= now => at,
        _ => now,
    };
    for (zone, recipients) in store.unreleased_time_zones(record.id).await? {
        let release_at =
            local
                .release_at(&zone, start)
                .map_err(|source| ProcessorError::LocalTime {
                    zone: zone.clone(),
                    source,
                })?;
        let held = store.hold_time_zone(record.id, &zone, release_at).await?;
        tracing::info!(campaign = %record.id, %zone, recipients, held, %release_at, "recipients held until their local send time");
    }
    // Over every zone, also those a split interrupted by a crash held before.
    let mut earliest: Option<OffsetDateTime> = None;
    for zone in store.time_zone_releases(record.id).await? {
        match zone.due_at {
            Some(at) if at > now => earliest = Some(earliest.map_or(at, |e| e.min(at))),
            _ => return Ok(None),
        }
    }
    Ok(earliest)
}

fn batch_task(
    batch: &SendBatch,
    run_after: Option<OffsetDateTime>,
) -> Result<NewTask, ProcessorError> {
    let payload =
        serde_json::to_value(batch).map_err(|err| ProcessorError::Payload(err.to_string()))?;
    let mut task = NewTask::new(SEND_BATCH, payload);
    task.idempotency_key = Some(batch.idempotency_key());
    task.run_after = run_after;
    Ok(task)
}

/// Why a batch stopped before its last recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Halt {
    /// The worker is shutting down: the rest is handed on in a follow-up task at once.
    Shutdown,
    /// Another worker holds the task now; it does the rest.
    LeaseLost,
    /// The campaign was paused or cancelled.
    Campaign(CampaignStatus),
}

/// Tallies of one batch run, for its task's result.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    deferred: u64,
    failed: u64,
    suppressed: u64,
}

impl Tally {
    fn add(&mut self, kind: &OutcomeKind) {
        match kind {
            OutcomeKind::Sent { .. } => self.sent += 1,
            OutcomeKind::Deferred { .. } => self.deferred += 1,
            OutcomeKind::Failed { .. } => self.failed += 1,
            OutcomeKind::Suppressed => self.suppressed += 1,
        }
    }
}

/// Delivers the due recipients of one batch and records each outcome.
pub(crate) async fn deliver(
    shared: &Shared,
    batch: SendBatch,
    stop: &CancellationToken,
    lease_lost: &std::sync::atomic::AtomicBool,
) -> Result<Value, ProcessorError> {
    let services = &shared.services;
    let store = services.store.as_ref();
    let id = batch.campaign_id;
    let Some(record) = store.get_campaign(id).await? else {
        return Ok(json!({"skipped": "the campaign does not exist"}));
    };
    if record.status == CampaignStatus::Paused {
        // The range keeps its task chain through the pause: resuming continues it, and no
        // second task for the same recipients can ever exist.
        let run_after = services.clock.now() + PAUSED_RECHECK;
        services
            .tasks
            .create(batch_task(&batch.follow_up(), Some(run_after))?)
            .await?;
        return Ok(json!({"paused": true, "follow_up_at": run_after.unix_timestamp()}));
    }
    if record.status != CampaignStatus::Sending {
        // Cancelled or finished: nothing to do.
        return Ok(json!({"skipped": format!("the campaign is {}", record.status)}));
    }
    let started = Instant::now();
    // Receivers credit only a signature aligned with the From domain: a campaign sending
    // from a domain the key does not cover goes out unsigned, counted and logged.
    let from_domain = record.document.from.email.domain();
    let signer = services
        .dkim
        .clone()
        .filter(|signer| signer.covers(from_domain));
    if let (Some(configured), None) = (&services.dkim, &signer) {
        tracing::warn!(campaign = %id, from_domain, dkim_domain = configured.domain(), "the From domain is not covered by DKIM_DOMAIN: messages are sent unsigned");
    }
    let policy = record.document.retry.clone();
    let max_rate = record.document.max_rate;
    // The compiled templates per variant, looked up once per batch run rather than per message
    // (a template that does not compile is then also tried once, not for every recipient).
    let mut compiled_by_variant: HashMap<
        Option<u8>,
        Result<Arc<message::CompiledCampaign>, String>,
    > = HashMap::new();
    let due = store
        .due_recipients(id, batch.range(), batch.group(), services.clock.now())
        .await?;
    let keys: Vec<String> = due.iter().map(|r| r.recipient.email.key()).collect();
    let suppressed = store.suppressed_among(&keys).await?;

    let mut sends: JoinSet<Option<OutcomeKind>> = JoinSet::new();
    let gate = shared.gates.get(&services.store, id);
    let mut halt = None;
    for recipient in due {
        let key = recipient.recipient.email.key();
        if suppressed.contains(&key) {
            sends.spawn(record_only(shared, &recipient, OutcomeKind::Suppressed));
            continue;
        }
        // The messages' own status checks (the gate) are what notice a pause or cancel; once
        // one has, the batch takes no further slot.
        if let Some(status) = gate.stopped() {
            halt = Some(Halt::Campaign(status));
            break;
        }
        if stop.is_cancelled() {
            halt = Some(halted(lease_lost));
            break;
        }
        let permit = tokio::select! {
            permit = shared.in_flight.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => { halt = Some(Halt::Shutdown); break; }
            },
            () = stop.cancelled() => { halt = Some(halted(lease_lost)); break; }
        };
        let slot_taken = Instant::now();
        let compiled = compiled_by_variant
            .entry(recipient.variant)
            .or_insert_with(|| {
                shared
                    .compiled(&record, recipient.variant)
                    .map_err(|err| err.to_string())
            });
        let message = match compiled {
            // A panic while building one message fails that recipient only.
            Ok(compiled) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                build(services, compiled, id, &recipient)
            }))
            .unwrap_or_else(|panic| {
                Err(format!(
                    "building the message panicked: {}",
                    crate::worker::describe_panic(panic.as_ref())
                ))
            }),
            Err(err) => Err(format!("the campaign's templates do not compile: {err}")),
        };
        match message {
            Err(error) => {
                drop(permit);
                metrics::record_render_error();
                tracing::warn!(campaign = %id, recipient = recipient.id.get(), %error, "message cannot be built");
                sends.spawn(record_only(
                    shared,
                    &recipient,
                    OutcomeKind::Failed {
                        error,
                        attempted: false,
                    },
                ));
            }
            Ok(mut message) => {
                // The transport keeps the campaign's own rate with the deployment's.
                message.campaign_max_rate = max_rate;
                let transport = services.transport.clone();
                let recorder = shared.recorder.clone();
                let stats = shared.stats.clone();
                let transport_label = shared.transport_label;
                let policy = policy.clone();
                let gate = gate.clone();
                let events = services.events.clone();
                let clock = services.clock.clone();
                let signer = signer.clone();
                let unsigned = services.dkim.is_some() && signer.is_none();
                sends.spawn(async move {
                    match gate.check(slot_taken).await {
                        Ok(None) => {}
                        Ok(Some(_)) => return None,
                        Err(err) => {
                            // Unsure whether the campaign still sends: do not send. The
                            // recipient stays due for the batch's follow-up.
                            tracing::warn!(campaign = %id, error = %err, "campaign status unreadable; message held back");
                            return None;
                        }
                    }
                    let message = match signer {
                        Some(signer) => match sign(signer, message).await {
                            Ok(message) => message,
                            Err(error) => {
                                let kind = OutcomeKind::Failed { error, attempted: false };
                                return record_kind(&recorder, &stats, transport_label, &events, id, &recipient, kind).await;
                            }
                        },
                        None => {
                            if unsigned {
                                metrics::record_dkim_unsigned();
                            }
                            message
                        }
                    };
                    let sending = Instant::now();
                    // A transport that panics fails this recipient (it may have been sent:
                    // `attempted`), instead of leaving it due for a follow-up that panics again.
                    let result = match AssertUnwindSafe(transport.send(message))
                        .catch_unwind()
                        .await
                    {
                        Ok(result) => result,
                        Err(panic) => {
                            let kind = OutcomeKind::Failed {
                                error: format!(
                                    "sending panicked: {}",
                                    crate::worker::describe_panic(panic.as_ref())
                                ),
                                attempted: true,
                            };
                            return record_kind(&recorder, &stats, transport_label, &events, id, &recipient, kind).await;
                        }
                    };
                    metrics::observe_send(transport_label, sending.elapsed().as_secs_f64());
                    let kind = outcome_of(
                        &result,
                        recipient.attempts,
                        &policy,
                        clock.now(),
                    );
                    stats.count(&kind);
                    metrics::record_message(transport_label, outcome_metric(&kind));
                    let outcome = DeliveryOutcome {
                        recipient_id: recipient.id,
                        result: kind.clone(),
                    };
                    if recorder.record(outcome).await.is_err() {
                        tracing::error!(
                            recipient = recipient.id.get(),
                            "outcome not recorded: the recorder stopped"
                        );
                    } else {
                        events.emit_outcome(id, &recipient, &kind);
                    }
                    // Only now may another message take this one's place (the duplicate bound).
                    drop(permit);
                    Some(kind)
                });
            }
        }
    }
    let mut tally = Tally::default();
    while let Some(joined) = sends.join_next().await {
        match joined {
            Ok(Some(kind)) => tally.add(&kind),
            Ok(None) => {}
            Err(err) => tracing::error!(campaign = %id, error = %err, "a send task failed"),
        }
    }
    shared.stats.batch_done();
    if halt.is_none()
        && let Some(status) = gate.stopped()
    {
        // Messages were held back by their own check after the loop had ended.
        halt = Some(Halt::Campaign(status));
    }
    metrics::observe_batch(started.elapsed().as_secs_f64());

    let follow_up = match halt {
        Some(Halt::LeaseLost) => None,
        Some(Halt::Campaign(CampaignStatus::Paused)) => {
            let run_after = services.clock.now() + PAUSED_RECHECK;
            services
                .tasks
                .create(batch_task(&batch.follow_up(), Some(run_after))?)
                .await?;
            Some(run_after)
        }
        Some(Halt::Campaign(_)) => None,
        None | Some(Halt::Shutdown) => match store
            .next_due_in_range(id, batch.range(), batch.group())
            .await?
        {
            Some(due_at) => {
                let next = batch.follow_up();
                let run_after = due_at.max(services.clock.now());
                services
                    .tasks
                    .create(batch_task(&next, Some(run_after))?)
                    .await?;
                Some(run_after)
            }
            None => {
                if let Some(status) = store.finish_if_done(id).await? {
                    tracing::info!(campaign = %id, %status, "campaign finished");
                    crate::record_campaign_ended(store, id).await?;
                }
                None
            }
        },
    };
    // At info: `docker-compose logs` of a delivering role shows its work batch by batch.
    tracing::info!(campaign = %id, first = batch.first.get(), round = batch.round, sent = tally.sent, deferred = tally.deferred, failed = tally.failed, ?halt, "batch done");
    Ok(json!({
        "sent": tally.sent,
        "deferred": tally.deferred,
        "failed": tally.failed,
        "suppressed": tally.suppressed,
        "halted": halt.map(|h| format!("{h:?}")),
        "follow_up_at": follow_up.map(|t| t.unix_timestamp()),
    }))
}

fn halted(lease_lost: &std::sync::atomic::AtomicBool) -> Halt {
    if lease_lost.load(std::sync::atomic::Ordering::SeqCst) {
        Halt::LeaseLost
    } else {
        Halt::Shutdown
    }
}

fn record_only(
    shared: &Shared,
    recipient: &StoredRecipient,
    kind: OutcomeKind,
) -> impl std::future::Future<Output = Option<OutcomeKind>> + Send + 'static {
    let recorder = shared.recorder.clone();
    let stats = shared.stats.clone();
    let transport_label = shared.transport_label;
    let events = shared.services.events.clone();
    let recipient = recipient.clone();
    async move {
        record_kind(
            &recorder,
            &stats,
            transport_label,
            &events,
            recipient.campaign_id,
            &recipient,
            kind,
        )
        .await
    }
}

/// Counts and records one outcome that involved no send, then tells the webhooks.
async fn record_kind(
    recorder: &Recorder,
    stats: &Stats,
    transport_label: &'static str,
    events: &webhooks::EventSink,
    campaign_id: CampaignId,
    recipient: &StoredRecipient,
    kind: OutcomeKind,
) -> Option<OutcomeKind> {
    stats.count(&kind);
    metrics::record_message(transport_label, outcome_metric(&kind));
    let outcome = DeliveryOutcome {
        recipient_id: recipient.id,
        result: kind.clone(),
    };
    if recorder.record(outcome).await.is_err() {
        tracing::error!(
            recipient = recipient.id.get(),
            "outcome not recorded: the recorder stopped"
        );
    } else {
        events.emit_outcome(campaign_id, recipient, &kind);
    }
    Some(kind)
}

/// A batch whose task is dead (its attempts used up) sends nothing more: its unfinished
/// recipients, pending or deferred, are failed with the task's last error, and the campaign
/// finishes by the usual rule (`failed` when nothing was sent). Returns how many were failed.
pub(crate) async fn abandon(
    shared: &Shared,
    batch: SendBatch,
    error: &str,
) -> Result<u64, ProcessorError> {
    let store = shared.services.store.as_ref();
    let id = batch.campaign_id;
    let Some(record) = store.get_campaign(id).await? else {
        return Ok(0);
    };
    if !matches!(
        record.status,
        CampaignStatus::Sending | CampaignStatus::Paused
    ) {
        return Ok(0);
    }
    // Past any deferred recipient's retry time (a backoff is at most u32::MAX seconds). The
    // system clock, not the services' one: this must work whatever made the task fail.
    let horizon = OffsetDateTime::now_utc() + time::Duration::seconds(i64::from(u32::MAX) + 1);
    let left = store
        .due_recipients(id, batch.range(), batch.group(), horizon)
        .await?;
    let reason = format!("not delivered: its batch task failed on its last attempt ({error})");
    for recipient in &left {
        let kind = OutcomeKind::Failed {
            error: reason.clone(),
            attempted: false,
        };
        record_kind(
            &shared.recorder,
            &shared.stats,
            shared.transport_label,
            &shared.services.events,
            id,
            recipient,
            kind,
        )
        .await;
    }
    if let Some(status) = store.finish_if_done(id).await? {
        tracing::info!(campaign = %id, %status, "campaign finished");
    }
    Ok(left.len() as u64)
}

/// The metrics' name for an outcome.
fn outcome_metric(kind: &OutcomeKind) -> metrics::MessageOutcome {
    match kind {
        OutcomeKind::Sent { .. } => metrics::MessageOutcome::Sent,
        OutcomeKind::Deferred { .. } => metrics::MessageOutcome::Deferred,
        OutcomeKind::Failed { .. } => metrics::MessageOutcome::Failed,
        OutcomeKind::Suppressed => metrics::MessageOutcome::Suppressed,
    }
}

/// The webhook events of committed outcomes.
trait OutcomeEvents {
    fn emit_outcome(
        &self,
        campaign_id: CampaignId,
        recipient: &StoredRecipient,
        kind: &OutcomeKind,
    );
}

impl OutcomeEvents for webhooks::EventSink {
    fn emit_outcome(
        &self,
        campaign_id: CampaignId,
        recipient: &StoredRecipient,
        kind: &OutcomeKind,
    ) {
        if !self.is_enabled() {
            return;
        }
        let (event, detail) = match kind {
            OutcomeKind::Sent { reply } => {
                (webhooks::EventKind::Sent, json!({"smtp_reply": reply}))
            }
            OutcomeKind::Failed { error, .. } => {
                (webhooks::EventKind::Failed, json!({"error": error}))
            }
            // Deferred is retried and suppressed was never sent: neither is news to a receiver.
            OutcomeKind::Deferred { .. } | OutcomeKind::Suppressed => return,
        };
        self.recipient_event(
            event,
            Some(campaign_id),
            Some(recipient.id),
            Some(recipient.recipient.email.as_str()),
            detail,
        );
    }
}

/// Signs on tokio's blocking pool: an RSA signature costs about a millisecond and a half,
/// long enough to stall every SMTP connection sharing the worker thread.
async fn sign(
    signer: Arc<message::DkimSigner>,
    mut message: delivery::OutgoingMessage,
) -> Result<delivery::OutgoingMessage, String> {
    let content = message.content.clone();
    let signed = tokio::task::spawn_blocking(move || {
        signer.sign_bytes(&content, OffsetDateTime::now_utc().unix_timestamp())
    })
    .await
    .map_err(|err| format!("DKIM signing did not finish: {err}"))?
    .map_err(|err| err.to_string())?;
    message.content = signed.into();
    Ok(message)
}

/// Renders and builds one recipient's message (named after campaign and recipient). DKIM
/// signing is left to [`sign`], off the async threads.
fn build(
    services: &Services,
    compiled: &message::CompiledCampaign,
    campaign_id: CampaignId,
    recipient: &StoredRecipient,
) -> Result<delivery::OutgoingMessage, String> {
    let links = &services.links;
    let tracked =
        links.tracked_recipient(compiled.aggregate_only(), recipient.id, recipient.variant);
    let context = message::RecipientContext {
        campaign_id,
        recipient_id: recipient.id,
        unsubscribe_url: links.unsubscribe(campaign_id, recipient.id),
        unsubscribe_mailto: None,
        tracking: message::TrackingUrls {
            open_pixel: compiled
                .tracks_opens()
                .then(|| links.open_pixel(campaign_id, tracked)),
            // tracked_link_count never exceeds u16::MAX (the template scan stops there).
            clicks: (0..compiled.tracked_link_count() as u16)
                .map(|index| links.click(campaign_id, tracked, index))
                .collect(),
        },
    };
    // With BOUNCE_VERP_DOMAIN set, bounces come back to an address naming this recipient.
    let envelope_from = services
        .links
        .bounce_address(campaign_id, recipient.id)
        .map(|address| campaign::EmailAddress::parse(&address))
        .transpose()
        .map_err(|err| format!("the VERP return path is not a valid address: {err}"))?;
    let options = message::BuildOptions {
        envelope_from,
        date: OffsetDateTime::now_utc(),
    };
    compiled
        .message(&recipient.recipient, &context, &options, None)
        .map_err(|err| err.to_string())
}
