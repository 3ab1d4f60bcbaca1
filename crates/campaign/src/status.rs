//! Lifecycle states of a campaign and of one recipient's delivery.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name stored in the database and shown in the API.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!("unknown {} {other:?}", stringify!($name))),
                }
            }
        }
    };
}

string_enum!(
    /// Where a campaign is in its life.
    CampaignStatus {
        /// Stored, not yet asked to send.
        Draft => "draft",
        /// Waiting for its `scheduled_at`.
        Scheduled => "scheduled",
        /// Asked to send; batches not yet started.
        Queued => "queued",
        /// Batches are being delivered.
        Sending => "sending",
        /// Stopped by an operator; resumable.
        Paused => "paused",
        /// Every recipient reached a final state.
        Completed => "completed",
        /// Nothing could be sent.
        Failed => "failed",
        /// Stopped for good by an operator.
        Cancelled => "cancelled",
    }
);

string_enum!(
    /// Where one recipient's message is.
    DeliveryStatus {
        /// Not yet attempted.
        Pending => "pending",
        /// Accepted by the SMTP server.
        Sent => "sent",
        /// A temporary failure; will be retried.
        Deferred => "deferred",
        /// A permanent failure, or retries exhausted.
        Failed => "failed",
        /// On the suppression list; never sent.
        Suppressed => "suppressed",
        /// The campaign was cancelled before this recipient was sent.
        Cancelled => "cancelled",
    }
);

/// What moves a campaign from one status to another: the operator's actions (API, CLI) and
/// the processing steps of the campaign and task processors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CampaignAction {
    /// Set or change `scheduled_at`.
    Schedule,
    /// Clear `scheduled_at`: back to draft.
    Unschedule,
    /// Queue for sending (`POST …/send`, `marketing send`).
    Send,
    /// The campaign processor queues a scheduled campaign whose time has come.
    QueueDue,
    Pause,
    /// Continue a paused campaign: back to `sending` when it had started, else to `queued`.
    Resume,
    Cancel,
    /// Queue a finished campaign's failed recipients again.
    RetryFailed,
    /// A worker splits the queued campaign into batches.
    Start,
    /// The last recipient reached a final state.
    Finish,
}

impl CampaignAction {
    /// The name used in messages (and the API's route for the operator's actions).
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignAction::Schedule => "schedule",
            CampaignAction::Unschedule => "unschedule",
            CampaignAction::Send => "send",
            CampaignAction::QueueDue => "queue-due",
            CampaignAction::Pause => "pause",
            CampaignAction::Resume => "resume",
            CampaignAction::Cancel => "cancel",
            CampaignAction::RetryFailed => "retry-failed",
            CampaignAction::Start => "start",
            CampaignAction::Finish => "finish",
        }
    }
}

impl fmt::Display for CampaignAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Every status change a campaign may make, and what makes it: the one place that answers
/// "may X go to Y". Whoever changes a status asks here for the states it may come from.
const TRANSITIONS: &[(CampaignStatus, CampaignStatus, CampaignAction)] = {
    use CampaignAction as A;
    use CampaignStatus::*;
    &[
        (Draft, Scheduled, A::Schedule),
        (Scheduled, Scheduled, A::Schedule),
        (Scheduled, Draft, A::Unschedule),
        (Draft, Queued, A::Send),
        (Scheduled, Queued, A::Send),
        (Scheduled, Queued, A::QueueDue),
        (Queued, Paused, A::Pause),
        (Sending, Paused, A::Pause),
        (Paused, Sending, A::Resume),
        (Paused, Queued, A::Resume),
        (Draft, Cancelled, A::Cancel),
        (Scheduled, Cancelled, A::Cancel),
        (Queued, Cancelled, A::Cancel),
        (Sending, Cancelled, A::Cancel),
        (Paused, Cancelled, A::Cancel),
        (Completed, Queued, A::RetryFailed),
        (Failed, Queued, A::RetryFailed),
        (Queued, Sending, A::Start),
        (Sending, Completed, A::Finish),
        (Sending, Failed, A::Finish),
    ]
};

/// A status change the table does not allow; its text is what a caller is told (the API's
/// 409 detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {from} campaign cannot become {to}: {action} is possible only while it is {}", or_list(&CampaignStatus::sources(*.to, *.action)))]
pub struct TransitionRefused {
    pub from: CampaignStatus,
    pub to: CampaignStatus,
    pub action: CampaignAction,
}

fn or_list(states: &[CampaignStatus]) -> String {
    let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
    match names.split_last() {
        None => "never".into(),
        Some((last, [])) => (*last).to_string(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

impl CampaignStatus {
    /// Whether any action may move a campaign from `self` to `to`.
    pub fn may_become(self, to: CampaignStatus) -> bool {
        TRANSITIONS
            .iter()
            .any(|&(from, into, _)| from == self && into == to)
    }

    /// The states from which `action` moves a campaign to `to`, in the order of
    /// [`CampaignStatus::ALL`]: the `from` list of a conditional update.
    pub fn sources(to: CampaignStatus, action: CampaignAction) -> Vec<CampaignStatus> {
        CampaignStatus::ALL
            .iter()
            .copied()
            .filter(|&from| TRANSITIONS.contains(&(from, to, action)))
            .collect()
    }

    /// Whether `action` may move a campaign from `self` to `to`; the refusal says why not.
    pub fn check(
        self,
        to: CampaignStatus,
        action: CampaignAction,
    ) -> Result<(), TransitionRefused> {
        if TRANSITIONS.contains(&(self, to, action)) {
            Ok(())
        } else {
            Err(TransitionRefused {
                from: self,
                to,
                action,
            })
        }
    }

    /// A final state: the campaign's processing has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CampaignStatus::Completed | CampaignStatus::Failed | CampaignStatus::Cancelled
        )
    }
}

impl DeliveryStatus {
    /// A final state: nothing more will be attempted for this recipient.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            DeliveryStatus::Sent
                | DeliveryStatus::Failed
                | DeliveryStatus::Suppressed
                | DeliveryStatus::Cancelled
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_json() {
        for status in DeliveryStatus::ALL {
            assert_eq!(status.as_str().parse::<DeliveryStatus>(), Ok(*status));
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        for status in CampaignStatus::ALL {
            assert_eq!(status.as_str().parse::<CampaignStatus>(), Ok(*status));
        }
        assert!("sendng".parse::<CampaignStatus>().is_err());
    }
    #[test]
    fn every_pair_of_states_is_answered_by_the_table() {
        use CampaignStatus::*;
        let allowed = [
            (Draft, Scheduled),
            (Scheduled, Scheduled),
            (Scheduled, Draft),
            (Draft, Queued),
            (Scheduled, Queued),
            (Queued, Paused),
            (Sending, Paused),
            (Paused, Sending),
            (Paused, Queued),
            (Draft, Cancelled),
            (Scheduled, Cancelled),
            (Queued, Cancelled),
            (Sending, Cancelled),
            (Paused, Cancelled),
            (Completed, Queued),
            (Failed, Queued),
            (Queued, Sending),
            (Sending, Completed),
            (Sending, Failed),
        ];
        for &from in CampaignStatus::ALL {
            for &to in CampaignStatus::ALL {
                assert_eq!(
                    from.may_become(to),
                    allowed.contains(&(from, to)),
                    "{from} → {to}"
                );
            }
        }
        // A campaign that ended by cancel stays ended; a completed or failed one only
        // retries its failed recipients.
        assert!(
            CampaignStatus::ALL
                .iter()
                .all(|&to| !Cancelled.may_become(to))
        );
    }

    #[test]
    fn the_same_target_is_reached_from_other_states_by_other_actions() {
        use CampaignAction as A;
        use CampaignStatus::*;
        assert_eq!(CampaignStatus::sources(Queued, A::Send), [Draft, Scheduled]);
        assert_eq!(CampaignStatus::sources(Queued, A::Resume), [Paused]);
        assert_eq!(
            CampaignStatus::sources(Queued, A::RetryFailed),
            [Completed, Failed]
        );
        assert_eq!(
            CampaignStatus::sources(Cancelled, A::Cancel),
            [Draft, Scheduled, Queued, Sending, Paused]
        );
        assert!(Draft.check(Queued, A::Send).is_ok());
        assert!(Paused.check(Queued, A::Send).is_err());
    }

    /// The status changes the task processor (split, finish, retry of the failed) and the
    /// campaign processor (queue when due) make, as their conditional updates (the store's
    /// SQL and `processor::batch`) ask the table for them: exactly these, so a change to the
    /// table is a change of the worker's behaviour that this test names.
    #[test]
    fn every_status_change_of_the_worker_and_the_campaign_processor_is_in_the_table() {
        use CampaignAction as A;
        use CampaignStatus::*;
        let performed: [(&[CampaignStatus], CampaignStatus, CampaignAction); 5] = [
            // The campaign processor takes a due campaign (`queue_due_campaigns`).
            (&[Scheduled], Queued, A::QueueDue),
            // A worker's split marks the queued campaign sending.
            (&[Queued], Sending, A::Start),
            // The last outcome ends it (`finish_if_done`), completed or failed.
            (&[Sending], Completed, A::Finish),
            (&[Sending], Failed, A::Finish),
            // Retrying the failed recipients queues a finished campaign (`requeue_failed`).
            (&[Completed, Failed], Queued, A::RetryFailed),
        ];
        for (from, to, action) in performed {
            assert_eq!(
                CampaignStatus::sources(to, action),
                from,
                "{action} to {to}"
            );
            for &state in from {
                assert!(state.check(to, action).is_ok(), "{state} → {to}");
                assert!(state.may_become(to), "{state} → {to}");
            }
        }
        // Sending from the API is more than the processor's queue when due.
        assert_eq!(CampaignStatus::sources(Queued, A::Send), [Draft, Scheduled]);
        assert!(Draft.check(Queued, A::QueueDue).is_err());
    }

    #[test]
    fn a_refusal_names_both_states_and_where_the_action_is_possible() {
        use CampaignAction as A;
        use CampaignStatus::*;
        let refusal = Draft.check(Paused, A::Pause).unwrap_err();
        assert_eq!(
            refusal.to_string(),
            "a draft campaign cannot become paused: pause is possible only while it is queued or sending"
        );
        assert_eq!(
            Sending
                .check(Scheduled, A::Schedule)
                .unwrap_err()
                .to_string(),
            "a sending campaign cannot become scheduled: schedule is possible only while it is draft or scheduled"
        );
        for &action in &[
            A::Schedule,
            A::Unschedule,
            A::Send,
            A::QueueDue,
            A::Pause,
            A::Resume,
            A::Cancel,
            A::RetryFailed,
            A::Start,
            A::Finish,
        ] {
            for &from in CampaignStatus::ALL {
                for &to in CampaignStatus::ALL {
                    if let Err(refusal) = from.check(to, action) {
                        let text = refusal.to_string();
                        assert!(text.starts_with(&format!("a {from} campaign")), "{text}");
                        assert!(text.contains(&format!("become {to}")), "{text}");
                    }
                }
            }
        }
    }
}
