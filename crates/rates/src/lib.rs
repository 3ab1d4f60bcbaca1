//! Sending rates that hold across every worker.
//!
//! `SMTP_RATE_LIMIT` is the deployment's total, and `RATE_LIMITS_FILE` sets rates per
//! destination domain or domain group. Each limit is a schedule of sending slots kept in one
//! row of the store (`store::sending_rates`); workers lease short stretches of it
//! ([`schedule::LEASE_FOR`]), so however many workers run, their stretches never overlap and
//! the total is the schedule's rate. A throttling reply (`421`, or 4xx with 4.7.x) slows its
//! destination down for every worker, which recovers gradually after a quiet period
//! ([`throttle`]).

pub mod limits_file;
pub mod schedule;
pub mod throttle;
pub mod transport;

pub use limits_file::{DomainGroup, LimitsFileError, RateLimits, SlowDownPolicy};
pub use schedule::SharedSchedule;
pub use transport::{RateLimitedTransport, RateSettings};
