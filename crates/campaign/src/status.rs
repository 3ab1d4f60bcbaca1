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
}
