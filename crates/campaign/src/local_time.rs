//! Recipient-local send time: deliver at a local time of day (e.g. 09:00) in each
//! recipient's own IANA time zone.
//!
//! **When a recipient is released.** A campaign starts at a reference instant (its
//! `scheduled_at` when it started on schedule or late, otherwise the moment it was sent).
//! Each recipient is released at the first instant at or after that reference when the wall
//! clock in their zone shows `time`. So a campaign scheduled for 06:00 UTC asking for 09:00
//! releases Berlin at 08:00 UTC the same day, New York at 14:00 UTC, and Tokyo (already past
//! 09:00 at the start) at 00:00 UTC the next day: every recipient within 24 hours.
//!
//! **Daylight saving.** A local time that does not exist that day (skipped by a spring-forward
//! change, e.g. 02:30) is taken as the moment after the gap (03:30); one that occurs twice
//! (autumn) is taken at its first occurrence. This is the usual "compatible" rule.
//!
//! **Which zone.** The recipient field named by `timezone_field` holds an IANA name
//! (`Europe/Berlin`). Missing or empty: the campaign's `fallback_timezone`. A value that is
//! not a known zone also falls back, and the import report lists it, so a typo is visible
//! without refusing a whole import over one row. Zone data is the IANA database built
//! into the binary.

use jiff::tz::TimeZone;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

/// Deliver at a local time of day in each recipient's time zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalSendTime {
    /// Local time of day, 24-hour `HH:MM` (e.g. `09:00`).
    #[schemars(regex(pattern = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"))]
    pub time: String,
    /// The recipient field holding the recipient's IANA time zone (e.g. `Europe/Berlin`).
    #[serde(default = "default_timezone_field")]
    pub timezone_field: String,
    /// The IANA time zone of recipients whose field is missing, empty or not a known zone.
    pub fallback_timezone: String,
}

fn default_timezone_field() -> String {
    "timezone".to_string()
}

/// Why a local send time cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalTimeError {
    #[error("`{0}` is not a time of day in 24-hour HH:MM form (e.g. 09:00)")]
    Time(String),
    #[error("`{0}` is not a known IANA time zone (e.g. Europe/Berlin, America/New_York)")]
    Zone(String),
    #[error("the release time is out of range: {0}")]
    Range(String),
}

/// The zone a recipient is released in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientZone {
    /// The canonical IANA name of the zone used.
    pub zone: String,
    /// The field's value when it was present but not a known zone (the fallback was used).
    pub unrecognised: Option<String>,
}

impl LocalSendTime {
    /// Checks the time and the fallback zone; each problem is reported against its field.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        if let Err(err) = self.hour_minute() {
            problems.push(("local_send_time.time", err.to_string()));
        }
        if self.timezone_field.trim().is_empty() {
            problems.push(("local_send_time.timezone_field", "must not be empty".into()));
        } else if self.timezone_field == "email" {
            problems.push((
                "local_send_time.timezone_field",
                "must name a personalization field, not `email`".into(),
            ));
        }
        if let Err(err) = zone(&self.fallback_timezone) {
            problems.push(("local_send_time.fallback_timezone", err.to_string()));
        }
        problems
    }

    fn hour_minute(&self) -> Result<(i8, i8), LocalTimeError> {
        let invalid = || LocalTimeError::Time(self.time.clone());
        let (hour, minute) = self.time.split_once(':').ok_or_else(invalid)?;
        if hour.len() != 2 || minute.len() != 2 {
            return Err(invalid());
        }
        let hour: i8 = hour.parse().map_err(|_| invalid())?;
        let minute: i8 = minute.parse().map_err(|_| invalid())?;
        if !(0..24).contains(&hour) || !(0..60).contains(&minute) {
            return Err(invalid());
        }
        Ok((hour, minute))
    }

    /// The zone a recipient with these fields is released in.
    pub fn zone_for(&self, fields: &Map<String, Value>) -> RecipientZone {
        let fallback = || {
            zone(&self.fallback_timezone)
                .ok()
                .and_then(|tz| tz.iana_name().map(str::to_string))
                .unwrap_or_else(|| self.fallback_timezone.clone())
        };
        let value = match fields.get(&self.timezone_field) {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) if text.trim().is_empty() => None,
            Some(Value::String(text)) => Some(text.trim().to_string()),
            Some(other) => Some(other.to_string()),
        };
        let Some(value) = value else {
            return RecipientZone {
                zone: fallback(),
                unrecognised: None,
            };
        };
        match zone(&value)
            .ok()
            .and_then(|tz| tz.iana_name().map(str::to_string))
        {
            Some(name) => RecipientZone {
                zone: name,
                unrecognised: None,
            },
            None => RecipientZone {
                zone: fallback(),
                unrecognised: Some(value),
            },
        }
    }

    /// The first instant at or after `from` when the wall clock in `zone_name` shows this
    /// local time.
    pub fn release_at(
        &self,
        zone_name: &str,
        from: OffsetDateTime,
    ) -> Result<OffsetDateTime, LocalTimeError> {
        let (hour, minute) = self.hour_minute()?;
        let tz = zone(zone_name)?;
        let range = |err: jiff::Error| LocalTimeError::Range(err.to_string());
        let from = jiff::Timestamp::from_nanosecond(from.unix_timestamp_nanos()).map_err(range)?;
        let mut day = from.to_zoned(tz.clone()).date();
        // Two days always suffice: today's time has passed at most once.
        for _ in 0..2 {
            let at = day
                .at(hour, minute, 0, 0)
                .to_zoned(tz.clone())
                .map_err(range)?;
            if at.timestamp() >= from {
                return OffsetDateTime::from_unix_timestamp_nanos(at.timestamp().as_nanosecond())
                    .map_err(|err| LocalTimeError::Range(err.to_string()));
            }
            day = day.tomorrow().map_err(range)?;
        }
        Err(LocalTimeError::Range(format!(
            "no {} in {zone_name} within two days",
            self.time
        )))
    }
}

fn zone(name: &str) -> Result<TimeZone, LocalTimeError> {
    TimeZone::get(name).map_err(|_| LocalTimeError::Zone(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn nine(fallback: &str) -> LocalSendTime {
        LocalSendTime {
            time: "09:00".into(),
            timezone_field: "timezone".into(),
            fallback_timezone: fallback.into(),
        }
    }

    fn fields(zone: Value) -> Map<String, Value> {
        let mut fields = Map::new();
        fields.insert("timezone".into(), zone);
        fields
    }

    // Offsets on 2030-03-01 (before either hemisphere's spring change): Berlin +01:00,
    // New York -05:00, Tokyo +09:00 (no daylight saving).
    #[test]
    fn each_zone_is_released_at_its_own_nine_oclock_after_the_start() {
        let rule = nine("UTC");
        let start = datetime!(2030-03-01 06:00 UTC);
        let release = |zone| rule.release_at(zone, start).unwrap();
        assert_eq!(release("Europe/Berlin"), datetime!(2030-03-01 08:00 UTC));
        assert_eq!(release("America/New_York"), datetime!(2030-03-01 14:00 UTC));
        // 09:00 in Tokyo was 00:00 UTC, before the start: the next day's.
        assert_eq!(release("Asia/Tokyo"), datetime!(2030-03-02 00:00 UTC));
        // Exactly at the start counts as not yet passed.
        assert_eq!(
            rule.release_at("Asia/Tokyo", datetime!(2030-03-01 00:00 UTC))
                .unwrap(),
            datetime!(2030-03-01 00:00 UTC)
        );
    }

    #[test]
    fn daylight_saving_gaps_and_folds_follow_the_compatible_rule() {
        let at = |time: &str| LocalSendTime {
            time: time.into(),
            ..nine("UTC")
        };
        // Berlin springs forward on 2030-03-31 from 02:00 to 03:00 (+01:00 to +02:00):
        // 02:30 does not exist and becomes 03:30 +02:00.
        let start = datetime!(2030-03-31 00:00 UTC);
        assert_eq!(
            at("02:30").release_at("Europe/Berlin", start).unwrap(),
            datetime!(2030-03-31 01:30 UTC)
        );
        // Berlin falls back on 2030-10-27 from 03:00 to 02:00: 02:30 happens twice, the
        // first time at +02:00.
        let start = datetime!(2030-10-27 00:00 UTC);
        assert_eq!(
            at("02:30").release_at("Europe/Berlin", start).unwrap(),
            datetime!(2030-10-27 00:30 UTC)
        );
        // The day after the change, nine o'clock uses the new offset.
        assert_eq!(
            nine("UTC")
                .release_at("Europe/Berlin", datetime!(2030-10-27 12:00 UTC))
                .unwrap(),
            datetime!(2030-10-28 08:00 UTC)
        );
    }

    #[test]
    fn a_missing_or_unknown_zone_falls_back_and_an_unknown_one_is_reported() {
        let rule = nine("america/los_angeles");
        assert_eq!(
            rule.zone_for(&fields("Asia/Tokyo".into())),
            RecipientZone {
                zone: "Asia/Tokyo".into(),
                unrecognised: None
            }
        );
        for missing in [Map::new(), fields(Value::Null), fields(" ".into())] {
            assert_eq!(
                rule.zone_for(&missing),
                RecipientZone {
                    zone: "America/Los_Angeles".into(),
                    unrecognised: None
                }
            );
        }
        assert_eq!(
            rule.zone_for(&fields("Mars/Olympus_Mons".into())),
            RecipientZone {
                zone: "America/Los_Angeles".into(),
                unrecognised: Some("Mars/Olympus_Mons".into())
            }
        );
        assert_eq!(
            rule.zone_for(&fields(5.into())).unrecognised.as_deref(),
            Some("5")
        );
    }

    #[test]
    fn malformed_times_and_unknown_fallback_zones_are_problems() {
        for time in ["9:00", "24:00", "09:60", "0900", "09:00:00", "ab:cd", ""] {
            let rule = LocalSendTime {
                time: time.into(),
                ..nine("UTC")
            };
            let problems = rule.problems();
            assert_eq!(problems.len(), 1, "{time:?}: {problems:?}");
            assert_eq!(problems[0].0, "local_send_time.time");
        }
        let problems = nine("Europe/Atlantis").problems();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "local_send_time.fallback_timezone");
        assert!(problems[0].1.contains("Europe/Atlantis"), "{problems:?}");
        assert!(nine("Europe/Berlin").problems().is_empty());
    }
}
