//! Throttling replies, and the rate a throttled destination sends at.
//!
//! A receiver that wants us slower answers `421` (often `421 4.7.0`) or a 4xx with an
//! enhanced status `4.7.x` (`451 4.7.1`, Gmail's `421 4.7.28`). Every worker shares what the
//! destination's schedule row says about it (`store::sending_rates::Slowdown`): the rate it
//! was pushed down to and when. The rate in force is computed from those two values and the
//! clock, so recovery needs no writes and every worker computes the same.

use crate::limits_file::SlowDownPolicy;
use delivery::{Reply, SendError};
use std::time::Duration;
use store::sending_rates::Slowdown;

/// Replies to a throttling reply that arrive within this time of the slow-down it caused
/// belong to messages sent before it (in flight at the old rate) and do not slow it again.
pub const SETTLE: Duration = Duration::from_secs(2);

/// The slowest a throttled destination goes, as a fraction of its configured rate.
const FLOOR: f64 = 1.0 / 64.0;

/// Whether the reply asks us to send more slowly: `421`, or a 4xx with enhanced status 4.7.x.
pub fn is_throttling(error: &SendError) -> bool {
    match error {
        SendError::TransientReply { reply, .. } | SendError::SessionRefused { reply, .. } => {
            throttling_reply(reply)
        }
        SendError::AllRecipientsRefused(refused) => {
            refused.iter().any(|each| is_throttling(&each.error))
        }
        _ => false,
    }
}

fn throttling_reply(reply: &Reply) -> bool {
    reply.code == 421 || ((400..500).contains(&reply.code) && reply.text.starts_with("4.7."))
}

/// The rate in force `now_ns` for a destination configured at `configured` messages per
/// second: the slowed rate, grown by `recovery_per_minute` a minute (compounding) once no
/// throttling reply came for `quiet`, up to `configured`.
pub fn rate_in_force(
    configured: f64,
    slowdown: Option<Slowdown>,
    policy: &SlowDownPolicy,
    now_ns: i64,
) -> f64 {
    let Some(slowdown) = slowdown else {
        return configured;
    };
    let quiet_ns = policy.quiet.as_nanos() as f64;
    let recovering_ns = (now_ns - slowdown.throttled_ns) as f64 - quiet_ns;
    let grown = if recovering_ns > 0.0 {
        slowdown.rate * (1.0 + policy.recovery_per_minute).powf(recovering_ns / 60e9)
    } else {
        slowdown.rate
    };
    grown.min(configured)
}

/// The new slowed rate after a throttling reply at `now_ns`, or `None` when the reply belongs
/// to a slow-down made within [`SETTLE`].
pub fn slowed_after_reply(
    configured: f64,
    current: Option<Slowdown>,
    policy: &SlowDownPolicy,
    now_ns: i64,
) -> Option<f64> {
    if let Some(current) = current
        && now_ns - current.throttled_ns < SETTLE.as_nanos() as i64
    {
        return None;
    }
    let in_force = rate_in_force(configured, current, policy, now_ns);
    Some((in_force * policy.factor).max(configured * FLOOR))
}

#[cfg(test)]
mod tests {
    use super::*;
    use delivery::Stage;

    const SECOND: i64 = 1_000_000_000;

    fn reply(code: u16, text: &str) -> SendError {
        SendError::TransientReply {
            stage: Stage::RcptTo,
            reply: Reply {
                code,
                text: text.into(),
            },
        }
    }

    #[test]
    fn throttling_is_421_or_a_4xx_with_enhanced_status_4_7() {
        assert!(is_throttling(&reply(421, "4.7.0 Try again later")));
        assert!(is_throttling(&reply(421, "Service not available")));
        assert!(is_throttling(&reply(451, "4.7.1 Rate limited")));
        assert!(is_throttling(&reply(
            450,
            "4.7.28 Our system has detected an unusual rate"
        )));
        assert!(!is_throttling(&reply(451, "4.3.0 Local error")));
        assert!(!is_throttling(&reply(452, "4.2.2 Mailbox full")));
        assert!(!is_throttling(&SendError::PermanentReply {
            stage: Stage::RcptTo,
            reply: Reply {
                code: 550,
                text: "5.7.1 Rejected".into()
            }
        }));
        assert!(!is_throttling(&SendError::Closed));
    }

    #[test]
    fn a_throttle_halves_the_rate_once_per_settle_time() {
        let policy = SlowDownPolicy::default();
        let first = slowed_after_reply(100.0, None, &policy, 10 * SECOND).expect("slowed");
        assert_eq!(first, 50.0);
        let current = Some(Slowdown {
            rate: first,
            throttled_ns: 10 * SECOND,
        });
        // Replies of messages in flight when it slowed down do not halve it again...
        assert_eq!(
            slowed_after_reply(100.0, current, &policy, 11 * SECOND),
            None
        );
        // ...a reply after the settle time does.
        assert_eq!(
            slowed_after_reply(100.0, current, &policy, 13 * SECOND),
            Some(25.0)
        );
        // Never below the floor.
        let slow = Some(Slowdown {
            rate: 1.0,
            throttled_ns: 0,
        });
        assert_eq!(
            slowed_after_reply(100.0, slow, &policy, 5 * SECOND),
            Some(100.0 / 64.0)
        );
    }

    #[test]
    fn a_slowed_rate_recovers_ten_percent_a_minute_after_the_quiet_time() {
        let policy = SlowDownPolicy::default();
        let slowdown = Some(Slowdown {
            rate: 50.0,
            throttled_ns: 0,
        });
        assert_eq!(rate_in_force(100.0, None, &policy, 0), 100.0);
        assert_eq!(rate_in_force(100.0, slowdown, &policy, 59 * SECOND), 50.0);
        let after_a_minute = rate_in_force(100.0, slowdown, &policy, 120 * SECOND);
        assert!((after_a_minute - 55.0).abs() < 1e-9, "{after_a_minute}");
        // 1.1^8 > 2: back to the configured rate after the quiet minute and eight more.
        assert_eq!(
            rate_in_force(100.0, slowdown, &policy, 9 * 60 * SECOND),
            100.0
        );
    }
}
