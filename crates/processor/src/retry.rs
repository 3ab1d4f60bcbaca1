//! From a transport's answer to the outcome recorded on the recipient, following the
//! campaign's retry policy.

use campaign::RetryPolicy;
use delivery::{Accepted, SendError};
use store::OutcomeKind;
use time::OffsetDateTime;

/// The outcome of one delivery attempt. `attempts_before` is how many attempts the recipient
/// had already used: a temporary failure is deferred with exponential backoff (jittered, so
/// recipients deferred together do not all return together) until the policy's
/// `max_attempts`, then failed.
pub fn outcome_of(
    result: &Result<Accepted, SendError>,
    attempts_before: u32,
    policy: &RetryPolicy,
    now: OffsetDateTime,
) -> OutcomeKind {
    match result {
        Ok(accepted) => OutcomeKind::Sent {
            reply: accepted.reply.to_string(),
        },
        // Held back by a sending rate: nothing was attempted, so the retry policy's attempts
        // are not what decides and none is used up; the recipient waits for the slot.
        Err(
            error @ SendError::RateLimited {
                destination,
                retry_in,
            },
        ) => OutcomeKind::Deferred {
            error: error.to_string(),
            retry_at: now + *retry_in,
            rate_wait: Some(destination.clone()),
        },
        Err(error) if error.is_temporary() => {
            let attempt = attempts_before + 1;
            if attempt >= policy.max_attempts {
                OutcomeKind::Failed {
                    error: format!("{error} (gave up after {attempt} attempts)"),
                    attempted: true,
                }
            } else {
                OutcomeKind::Deferred {
                    error: error.to_string(),
                    retry_at: now + backoff(policy).delay(attempt),
                    rate_wait: None,
                }
            }
        }
        Err(error) => OutcomeKind::Failed {
            error: error.to_string(),
            attempted: true,
        },
    }
}

fn backoff(policy: &RetryPolicy) -> tasks::Backoff {
    tasks::Backoff {
        initial: time::Duration::seconds(i64::from(policy.initial_backoff_seconds)),
        max: time::Duration::seconds(i64::from(
            policy
                .max_backoff_seconds
                .max(policy.initial_backoff_seconds),
        )),
        jitter: 0.2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use delivery::{Reply, Stage};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff_seconds: 10,
            max_backoff_seconds: 15,
        }
    }

    fn transient() -> Result<Accepted, SendError> {
        Err(SendError::TransientReply {
            stage: Stage::RcptTo,
            reply: Reply {
                code: 452,
                text: "4.3.1 Insufficient system storage".into(),
            },
        })
    }

    #[test]
    fn accepted_messages_keep_the_server_reply() {
        let accepted = Ok(Accepted {
            reply: Reply {
                code: 250,
                text: "2.0.0 Ok: queued as X".into(),
            },
            refused: vec![],
        });
        assert_eq!(
            outcome_of(&accepted, 0, &policy(), OffsetDateTime::UNIX_EPOCH),
            OutcomeKind::Sent {
                reply: "250 2.0.0 Ok: queued as X".into()
            }
        );
    }

    #[test]
    fn temporary_failures_back_off_exponentially_within_the_cap_then_fail() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let wait = |attempts_before| match outcome_of(&transient(), attempts_before, &policy(), now)
        {
            OutcomeKind::Deferred {
                retry_at,
                error,
                rate_wait,
            } => {
                assert!(error.contains("452 4.3.1"), "{error}");
                assert_eq!(rate_wait, None, "a reply from the server is an attempt");
                (retry_at - now).as_seconds_f64()
            }
            other => panic!("expected deferred, got {other:?}"),
        };
        // First retry around 10 s (±20 % jitter), the second doubled but capped at 15 s.
        let first = wait(0);
        assert!((8.0..=12.0).contains(&first), "{first}");
        let second = wait(1);
        assert!((12.0..=18.0).contains(&second), "{second}");
        match outcome_of(&transient(), 2, &policy(), now) {
            OutcomeKind::Failed { error, attempted } => {
                assert!(attempted);
                assert!(error.contains("gave up after 3 attempts"), "{error}");
            }
            other => panic!("expected failed, got {other:?}"),
        }
    }

    #[test]
    fn permanent_failures_fail_at_once_with_the_server_text() {
        let refused = Err(SendError::PermanentReply {
            stage: Stage::RcptTo,
            reply: Reply {
                code: 550,
                text: "5.1.1 User unknown".into(),
            },
        });
        match outcome_of(&refused, 0, &policy(), OffsetDateTime::UNIX_EPOCH) {
            OutcomeKind::Failed { error, attempted } => {
                assert!(attempted);
                assert!(error.contains("550 5.1.1 User unknown"), "{error}");
            }
            other => panic!("expected failed, got {other:?}"),
        }
    }

    #[test]
    fn a_message_held_back_by_a_sending_rate_is_deferred_to_its_slot_whatever_its_attempts() {
        let now = time::macros::datetime!(2030-01-01 00:00 UTC);
        let held = Err(SendError::RateLimited {
            destination: "group google".into(),
            retry_in: std::time::Duration::from_secs(3),
        });
        // Attempts beyond the policy's maximum do not fail it: nothing was attempted.
        match outcome_of(&held, 7, &policy(), now) {
            OutcomeKind::Deferred {
                retry_at,
                error,
                rate_wait,
            } => {
                assert_eq!(retry_at, now + time::Duration::seconds(3));
                assert!(error.contains("group google"), "{error}");
                assert_eq!(rate_wait.as_deref(), Some("group google"));
            }
            other => panic!("{other:?}"),
        }
    }
}
