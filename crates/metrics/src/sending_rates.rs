//! The shared sending rates (crate `rates`): the rate in force per schedule and the throttling
//! replies, registered when a process first limits a rate (a process that limits nothing does
//! not export them). The `schedule` label is `global`, a domain group's name from
//! RATE_LIMITS_FILE, or `default` for the domains in no group: bounded by the file. Campaigns'
//! `max_rate` schedules count their deferrals under the one label `campaign` and export no
//! rate gauge (one per campaign would grow without bound).

use crate::{counter_vec, metrics, register};
use prometheus::{GaugeVec, IntCounterVec, Opts};
use std::sync::LazyLock;

struct SendingRateMetrics {
    rate: GaugeVec,
    throttled: IntCounterVec,
    deferred: IntCounterVec,
}

static SENDING_RATES: LazyLock<SendingRateMetrics> = LazyLock::new(|| {
    let registry = &metrics().registry;
    SendingRateMetrics {
        rate: register(
            registry,
            GaugeVec::new(
                Opts::new(
                    "sending_rate_limit",
                    "Messages per second a sending-rate schedule allows the whole deployment now, as this process last saw it: the configured rate, or less while a throttling receiver slowed the destination down.",
                ),
                &["schedule"],
            )
            .expect("valid gauge"),
        ),
        throttled: counter_vec(
            registry,
            "smtp_throttling_replies_total",
            "Throttling replies (421, or 4xx with enhanced status 4.7.x) this process got, by the destination's schedule.",
            &["schedule"],
        ),
        deferred: counter_vec(
            registry,
            "sending_rate_deferrals_total",
            "Messages this process deferred without sending because their destination's schedule had no slot free soon (the recipient is retried at the slot's time, not counted as failed), by schedule.",
            &["schedule"],
        ),
    }
});

/// The rate in force for `schedule`; also creates its throttling counter at 0.
pub fn set_rate(schedule: &str, per_second: f64) {
    let rates = &*SENDING_RATES;
    rates.rate.with_label_values(&[schedule]).set(per_second);
    rates.throttled.with_label_values(&[schedule]);
    rates.deferred.with_label_values(&[schedule]);
}

/// A throttling reply for a destination of `schedule`.
pub fn record_throttling_reply(schedule: &str) {
    SENDING_RATES.throttled.with_label_values(&[schedule]).inc();
}

/// A message deferred for want of a slot of `schedule`.
pub fn record_rate_deferral(schedule: &str) {
    SENDING_RATES.deferred.with_label_values(&[schedule]).inc();
}
