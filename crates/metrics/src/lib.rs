//! The service's Prometheus metrics, in one process-wide registry.
//!
//! The code that sees an event calls one function here (`record_message`,
//! `record_task_claimed`, …); each role serves [`render`] at `/metrics`. Label values are
//! bounded: outcomes, task kinds, transports, route templates and status codes — never a
//! campaign or recipient id, so a million recipients do not make a million series.
//!
//! Series whose label values are known up front are created at zero (see [`Metrics::new`]),
//! so a dashboard shows 0 rather than "no data" before the first event, and `rate()` sees the
//! first increment.
//!
//! The original design's three campaign metrics keep its names. `campaigns_processed_total
//! {status}` (completed, failed, cancelled) and `campaign_processing_seconds` (start of sending
//! to the end) are counted by the process that ended the campaign — the task processor that
//! recorded its last outcome, or the API that cancelled it — so their sum over every process is
//! the deployment's total; a role that can end campaigns calls [`register_campaign_processing`]
//! at start so they read 0 before the first. `campaign_processor_healthy` is registered on
//! first use only: a process that runs no campaign processor does not export it, instead of a
//! `campaign_processor_healthy 0` that would page someone.

pub mod http;
pub mod sending_rates;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::LazyLock;

/// What a delivery attempt came to, as the recipient's row records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageOutcome {
    Sent,
    Deferred,
    Failed,
    Suppressed,
}

impl MessageOutcome {
    pub const ALL: [MessageOutcome; 4] = [
        MessageOutcome::Sent,
        MessageOutcome::Deferred,
        MessageOutcome::Failed,
        MessageOutcome::Suppressed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageOutcome::Sent => "sent",
            MessageOutcome::Deferred => "deferred",
            MessageOutcome::Failed => "failed",
            MessageOutcome::Suppressed => "suppressed",
        }
    }
}

/// How a campaign's processing ended: its final state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessedStatus {
    /// Every recipient has its outcome and at least one was sent (or none failed).
    Completed,
    /// Every recipient has its outcome and none was sent.
    Failed,
    /// Cancelled before every recipient had its outcome.
    Cancelled,
}

impl ProcessedStatus {
    pub const ALL: [ProcessedStatus; 3] = [
        ProcessedStatus::Completed,
        ProcessedStatus::Failed,
        ProcessedStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProcessedStatus::Completed => "completed",
            ProcessedStatus::Failed => "failed",
            ProcessedStatus::Cancelled => "cancelled",
        }
    }
}

/// The tracking event kinds; anything else is counted as `other`, so a caller cannot grow
/// the label set.
pub const TRACKING_EVENT_KINDS: [&str; 5] = ["open", "click", "unsubscribe", "bounce", "complaint"];

/// The task kinds the task processor runs; their task counters start at zero.
pub const TASK_KINDS: [&str; 2] = ["send_campaign", "send_batch"];

/// Task states as the task repository counts them.
pub const TASK_STATES: [&str; 4] = ["pending", "running", "completed", "dead"];

/// The transports a worker can use (`transport` label).
pub const TRANSPORTS: [&str; 2] = ["smtp", "outbox"];

/// Every metric but the campaign processor's (see the crate docs).
pub struct Metrics {
    registry: Registry,
    messages: IntCounterVec,
    send_seconds: HistogramVec,
    render_errors: IntCounter,
    dkim_unsigned: IntCounter,
    batch_seconds: Histogram,
    tasks_claimed: IntCounterVec,
    tasks_completed: IntCounterVec,
    tasks_failed: IntCounterVec,
    tasks_dead: IntCounterVec,
    lease_expiries: IntCounter,
    queue_depth: IntGaugeVec,
    queue_oldest_wait: Gauge,
    tracking_events: IntCounterVec,
    pub(crate) http_requests: IntCounterVec,
    pub(crate) http_seconds: HistogramVec,
    build_info: IntGaugeVec,
}

/// Sub-millisecond (outbox, local sink) to the tens of seconds a slow relay may take.
const SEND_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// A batch is up to MAX_BATCH_SIZE messages: tens of milliseconds to many minutes.
const BATCH_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
const HTTP_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    // Names are fixed in this file and registered once: a failure is a programming error
    // that the crate's own tests catch.
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique and valid");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"),
    )
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> HistogramVec {
    register(
        registry,
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )
        .expect("valid histogram"),
    )
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        // process_* (CPU, memory, file descriptors, start time) for the health dashboard.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("the process collector registers once");
        let metrics = Metrics {
            messages: counter_vec(
                &registry,
                "messages_total",
                "Recipients' delivery outcomes recorded by this process, by transport and outcome.",
                &["transport", "outcome"],
            ),
            send_seconds: histogram_vec(
                &registry,
                "message_send_seconds",
                "Time from handing a message to the transport until it answered (SMTP: until the server's reply to the data).",
                SEND_BUCKETS,
                &["transport"],
            ),
            render_errors: register(
                &registry,
                IntCounter::new(
                    "message_render_errors_total",
                    "Messages that could not be rendered or built (the recipient is recorded failed).",
                )
                .expect("valid counter"),
            ),
            dkim_unsigned: register(
                &registry,
                IntCounter::new(
                    "dkim_unsigned_messages_total",
                    "Messages sent without a DKIM signature because DKIM is configured but its DKIM_DOMAIN does not cover the campaign's From domain.",
                )
                .expect("valid counter"),
            ),
            batch_seconds: register(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "batch_processing_seconds",
                        "Time a worker spent on one send_batch task, from claim to the last outcome committed.",
                    )
                    .buckets(BATCH_BUCKETS.to_vec()),
                )
                .expect("valid histogram"),
            ),
            tasks_claimed: counter_vec(
                &registry,
                "tasks_claimed_total",
                "Tasks this process's workers claimed, by kind.",
                &["kind"],
            ),
            tasks_completed: counter_vec(
                &registry,
                "tasks_completed_total",
                "Tasks this process's workers completed, by kind.",
                &["kind"],
            ),
            tasks_failed: counter_vec(
                &registry,
                "tasks_failed_total",
                "Tasks this process's workers reported failed (retried after backoff, or dead), by kind.",
                &["kind"],
            ),
            tasks_dead: counter_vec(
                &registry,
                "tasks_dead_total",
                "Tasks that ran out of attempts in this process's task repository, by kind.",
                &["kind"],
            ),
            lease_expiries: register(
                &registry,
                IntCounter::new(
                    "task_lease_expiries_total",
                    "Tasks reclaimed after their lease ran out without a heartbeat (a worker crashed or stalled).",
                )
                .expect("valid counter"),
            ),
            queue_depth: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "task_queue_depth",
                        "Tasks in the task repository by state, read when scraped.",
                    ),
                    &["status"],
                )
                .expect("valid gauge"),
            ),
            queue_oldest_wait: register(
                &registry,
                Gauge::new(
                    "task_queue_oldest_wait_seconds",
                    "How long the longest-waiting due pending task has waited to be claimed (0: none waiting), read when scraped.",
                )
                .expect("valid gauge"),
            ),
            tracking_events: counter_vec(
                &registry,
                "tracking_events_total",
                "Tracking events received (opens, clicks, unsubscribes, bounces, complaints), by kind.",
                &["kind"],
            ),
            http_requests: counter_vec(
                &registry,
                "http_requests_total",
                "HTTP requests answered, by route template and status code.",
                &["route", "status"],
            ),
            http_seconds: histogram_vec(
                &registry,
                "http_request_duration_seconds",
                "Time to answer an HTTP request, by route template.",
                HTTP_BUCKETS,
                &["route"],
            ),
            build_info: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "marketing_build_info",
                        "Always 1: the version of this process and the role it runs.",
                    ),
                    &["version", "role"],
                )
                .expect("valid gauge"),
            ),
            registry,
        };
        for kind in TRACKING_EVENT_KINDS {
            metrics.tracking_events.with_label_values(&[kind]);
        }
        metrics
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

pub(crate) fn metrics() -> &'static Metrics {
    &METRICS
}

/// Campaigns whose processing ended in this process (original names), registered by the
/// roles that can end one.
struct CampaignProcessingMetrics {
    processed: IntCounterVec,
    seconds: Histogram,
}

static CAMPAIGN_PROCESSING: LazyLock<CampaignProcessingMetrics> = LazyLock::new(|| {
    let registry = &metrics().registry;
    let processed = counter_vec(
        registry,
        "campaigns_processed_total",
        "Campaigns whose processing this process ended, by their final state (completed, failed, cancelled), whether scheduled or sent at once.",
        &["status"],
    );
    for status in ProcessedStatus::ALL {
        processed.with_label_values(&[status.as_str()]);
    }
    // Campaigns take seconds to hours: buckets from 1 s to 1 day.
    let buckets = vec![
        1.0,
        5.0,
        15.0,
        60.0,
        300.0,
        900.0,
        3600.0,
        4.0 * 3600.0,
        12.0 * 3600.0,
        86400.0,
    ];
    CampaignProcessingMetrics {
        processed,
        seconds: register(
            registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "campaign_processing_seconds",
                    "Time from a campaign's start of sending to its end (completed, failed or cancelled while sending).",
                )
                .buckets(buckets),
            )
            .expect("valid histogram"),
        ),
    }
});

/// The campaign processor's health gauge, registered on first use.
static PROCESSOR_HEALTHY: LazyLock<IntGauge> = LazyLock::new(|| {
    register(
        &metrics().registry,
        IntGauge::new(
            "campaign_processor_healthy",
            "1 while this process's campaign processor checks for due campaigns on time, 0 when it stalls or cannot reach the store or the task repository.",
        )
        .expect("valid gauge"),
    )
});

/// Creates `campaigns_processed_total` (at 0 for every status) and
/// `campaign_processing_seconds` in a role that can end campaigns, before the first ends.
pub fn register_campaign_processing() {
    LazyLock::force(&CAMPAIGN_PROCESSING);
}

/// This process ended a campaign's processing; `sending_seconds` is the time since it started
/// sending (`None` when it never did, e.g. cancelled while scheduled).
pub fn record_campaign_processed(status: ProcessedStatus, sending_seconds: Option<f64>) {
    let processing = &*CAMPAIGN_PROCESSING;
    processing
        .processed
        .with_label_values(&[status.as_str()])
        .inc();
    if let Some(seconds) = sending_seconds {
        processing.seconds.observe(seconds.max(0.0));
    }
}

/// The campaign processor's loop is (or is no longer) running on time.
pub fn set_processor_healthy(healthy: bool) {
    PROCESSOR_HEALTHY.set(i64::from(healthy));
}

/// The worker's transport as a bounded label: `smtp` or `outbox` from its description.
pub fn transport_label(description: &str) -> &'static str {
    if description.starts_with("smtp") {
        "smtp"
    } else if description.starts_with("outbox") {
        "outbox"
    } else {
        "other"
    }
}

/// Creates a worker's message series at zero for its transport.
pub fn init_transport(transport: &'static str) {
    let m = metrics();
    for outcome in MessageOutcome::ALL {
        m.messages.with_label_values(&[transport, outcome.as_str()]);
    }
    m.send_seconds.with_label_values(&[transport]);
}

/// Creates the task counters at zero for the kinds a worker runs.
pub fn init_task_kinds(kinds: &[&str]) {
    let m = metrics();
    for kind in kinds {
        for counter in [
            &m.tasks_claimed,
            &m.tasks_completed,
            &m.tasks_failed,
            &m.tasks_dead,
        ] {
            counter.with_label_values(&[kind]);
        }
    }
}

/// A recipient's outcome was decided (and is being recorded).
pub fn record_message(transport: &'static str, outcome: MessageOutcome) {
    metrics()
        .messages
        .with_label_values(&[transport, outcome.as_str()])
        .inc();
}

/// The transport answered a message after `seconds`.
pub fn observe_send(transport: &'static str, seconds: f64) {
    metrics()
        .send_seconds
        .with_label_values(&[transport])
        .observe(seconds);
}

/// A message could not be rendered or built.
pub fn record_render_error() {
    metrics().render_errors.inc();
}

/// A message left unsigned: DKIM is configured for another domain than its From.
pub fn record_dkim_unsigned() {
    metrics().dkim_unsigned.inc();
}

/// A batch task's delivery took `seconds`.
pub fn observe_batch(seconds: f64) {
    metrics().batch_seconds.observe(seconds);
}

pub fn record_task_claimed(kind: &str) {
    metrics().tasks_claimed.with_label_values(&[kind]).inc();
}

pub fn record_task_completed(kind: &str) {
    metrics().tasks_completed.with_label_values(&[kind]).inc();
}

pub fn record_task_failed(kind: &str) {
    metrics().tasks_failed.with_label_values(&[kind]).inc();
}

pub fn record_task_dead(kind: &str) {
    metrics().tasks_dead.with_label_values(&[kind]).inc();
}

/// A task was reclaimed because its lease ran out.
pub fn record_lease_expiry() {
    metrics().lease_expiries.inc();
}

/// The task repository's counts per state, and how long the oldest due task has waited.
pub fn set_task_queue(counts: &[(&str, i64)], oldest_wait_seconds: f64) {
    let m = metrics();
    for (status, count) in counts {
        m.queue_depth.with_label_values(&[status]).set(*count);
    }
    m.queue_oldest_wait.set(oldest_wait_seconds.max(0.0));
}

/// A tracking event (open, click, unsubscribe, bounce, complaint) was received; other kinds
/// count as `other`.
pub fn record_tracking_event(kind: &str) {
    let kind = TRACKING_EVENT_KINDS
        .into_iter()
        .find(|known| *known == kind)
        .unwrap_or("other");
    metrics().tracking_events.with_label_values(&[kind]).inc();
}

/// Sets `marketing_build_info{version, role} 1` for this process.
pub fn set_build_info(role: &str) {
    metrics()
        .build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION"), role])
        .set(1);
}

/// Content type of [`render`]'s output.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every metric in the Prometheus text format.
pub fn render() -> String {
    let mut buffer = Vec::new();
    // Encoding into a Vec cannot fail for well-formed families (all of ours are).
    if let Err(err) = TextEncoder::new().encode(&metrics().registry.gather(), &mut buffer) {
        return format!("# metrics could not be encoded: {err}\n");
    }
    String::from_utf8(buffer).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value_of(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn events_show_up_with_bounded_labels() {
        init_transport("outbox");
        record_message("outbox", MessageOutcome::Sent);
        record_message("outbox", MessageOutcome::Sent);
        record_tracking_event("open");
        record_tracking_event("campaign-0191-made-up");
        let text = render();
        assert!(
            value_of(
                &text,
                r#"messages_total{outcome="sent",transport="outbox"}"#
            )
            .unwrap()
                >= 2.0
        );
        assert_eq!(
            value_of(
                &text,
                r#"messages_total{outcome="failed",transport="outbox"}"#
            ),
            Some(0.0),
            "known series start at zero"
        );
        assert!(value_of(&text, r#"tracking_events_total{kind="other"}"#).unwrap() >= 1.0);
        assert!(!text.contains("made-up"), "free text never becomes a label");
    }

    #[test]
    fn campaign_processor_metrics_appear_once_used() {
        // Not asserting absence first: tests share the process-wide registry.
        record_campaign_processed(ProcessedStatus::Completed, Some(0.2));
        record_campaign_processed(ProcessedStatus::Cancelled, None);
        set_processor_healthy(true);
        let text = render();
        assert!(
            value_of(&text, r#"campaigns_processed_total{status="completed"}"#).unwrap() >= 1.0
        );
        assert!(
            value_of(&text, r#"campaigns_processed_total{status="cancelled"}"#).unwrap() >= 1.0
        );
        assert_eq!(
            value_of(&text, r#"campaigns_processed_total{status="failed"}"#),
            Some(0.0)
        );
        assert_eq!(value_of(&text, "campaign_processor_healthy"), Some(1.0));
        assert_eq!(
            value_of(&text, "campaign_processing_seconds_count"),
            Some(1.0),
            "a campaign cancelled before it started has no sending time"
        );
        set_processor_healthy(false);
        assert_eq!(value_of(&render(), "campaign_processor_healthy"), Some(0.0));
    }

    #[test]
    fn transport_labels_are_bounded() {
        assert_eq!(transport_label("smtp://relay:25, 8 connections"), "smtp");
        assert_eq!(transport_label("smtps://relay:465"), "smtp");
        assert_eq!(transport_label("outbox at ./outbox"), "outbox");
        assert_eq!(transport_label("something new"), "other");
    }
}
