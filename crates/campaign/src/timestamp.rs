//! The times callers may give (a campaign's `scheduled_at`, a task's `run_after`, …): the one
//! place that decides what is accepted, so every accepted time can be stored by both stores
//! and written back as RFC 3339.
//!
//! A time is RFC 3339 with an offset, at most microsecond precision (what both stores keep,
//! so it reads back equal), no leap second (`:60`; the stores have none), and between
//! [`EARLIEST`] and [`LATEST`] in UTC (RFC 3339 has four-digit years; an offset can move a
//! valid local time such as `0000-01-01T00:00:00+23:59` out of them). A schedule must also
//! lie in the future and at most [`SCHEDULE_HORIZON`] ahead ([`check_schedule`]); that rule
//! is applied where a campaign is created or scheduled, never when stored data is read back.

use time::format_description::well_known::Rfc3339;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

/// The earliest time accepted.
pub const EARLIEST: OffsetDateTime = datetime!(1970-01-01 00:00:00 UTC);
/// The latest time accepted: the last microsecond RFC 3339 can write in UTC.
pub const LATEST: OffsetDateTime = datetime!(9999-12-31 23:59:59.999999 UTC);
/// How far ahead a campaign (or a task) may be scheduled: 5 years of 365.25 days.
pub const SCHEDULE_HORIZON: Duration = Duration::days(1826);

/// Parses an RFC 3339 time a caller gave and checks it against the rules above. The message
/// says what to change; the caller adds the field's name.
pub fn parse(raw: &str) -> Result<OffsetDateTime, String> {
    let at = OffsetDateTime::parse(raw, &Rfc3339).map_err(|_| {
        let looks_local = time::PrimitiveDateTime::parse(
            raw,
            &time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]"),
        )
        .is_ok();
        if looks_local {
            format!("{raw:?} has no UTC offset; add one, e.g. {raw}Z or {raw}+01:00")
        } else {
            format!("{raw:?} is not an RFC 3339 time such as 2026-12-25T08:00:00Z")
        }
    })?;
    // Parsing succeeded, so the seconds are the two characters after "YYYY-MM-DDTHH:MM:".
    if raw.get(17..19) == Some("60") {
        return Err(format!(
            "{raw} is a leap second; use :59 or the next minute's :00"
        ));
    }
    check(at).map_err(|message| format!("{raw} {message}"))?;
    Ok(at)
}

/// Checks a time already in hand against the range and precision rules; the message reads
/// after the time ("… is before 1970-01-01T00:00:00Z").
pub fn check(at: OffsetDateTime) -> Result<(), String> {
    if !at.nanosecond().is_multiple_of(1_000) {
        return Err("has more than 6 fractional digits; times are kept to the microsecond".into());
    }
    check_range(at)
}

/// Checks only the range: for times the service truncates to the microsecond itself (a task's
/// `run_after`, computed by workers to the nanosecond).
pub fn check_range(at: OffsetDateTime) -> Result<(), String> {
    // Compared as instants, so no offset arithmetic can leave time's range.
    if at < EARLIEST {
        return Err("is before 1970-01-01T00:00:00Z, the earliest time accepted".into());
    }
    if at > LATEST {
        return Err(
            "is after 9999-12-31T23:59:59.999999Z, the latest time RFC 3339 can write".into(),
        );
    }
    Ok(())
}

/// A schedule lies in the future and at most [`SCHEDULE_HORIZON`] after `now`.
pub fn check_schedule(at: OffsetDateTime, now: OffsetDateTime) -> Result<(), String> {
    if at <= now {
        return Err("is in the past; a schedule must lie in the future".into());
    }
    if at - now > SCHEDULE_HORIZON {
        return Err(format!(
            "is more than 5 years ({} days) ahead; schedule closer to the sending date",
            SCHEDULE_HORIZON.whole_days()
        ));
    }
    Ok(())
}

/// The time cut to the microsecond (what both stores keep), in its own offset.
pub fn to_microsecond(at: OffsetDateTime) -> OffsetDateTime {
    at.replace_nanosecond(at.nanosecond() / 1_000 * 1_000)
        .unwrap_or(at)
}

/// Writes a time as RFC 3339; an accepted time always can be written.
pub fn format(at: OffsetDateTime) -> Result<String, time::error::Format> {
    at.format(&Rfc3339)
}

/// `#[serde(with = "campaign::timestamp::option")]` for an optional time callers give: read
/// with [`parse`], so a document naming an unusable time is refused at its field.
pub mod option {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;

    pub fn serialize<S: Serializer>(
        at: &Option<OffsetDateTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        time::serde::rfc3339::option::serialize(at, serializer)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            None => Ok(None),
            Some(raw) => super::parse(&raw)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_times_with_any_offset_and_microseconds() {
        for raw in [
            "2026-12-25T08:00:00Z",
            "2026-12-25T08:00:00.123456+05:30",
            "1970-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999Z",
            "9999-12-31T23:59:59+23:59",
        ] {
            assert!(parse(raw).is_ok(), "{raw} should be accepted");
        }
    }

    #[test]
    fn refuses_what_a_store_or_rfc_3339_cannot_hold() {
        for (raw, says) in [
            ("0000-01-01T00:00:00+23:59", "before 1970"),
            ("0000-01-01T00:00:00Z", "before 1970"),
            ("1969-12-31T23:59:59.999999Z", "before 1970"),
            ("9999-12-31T23:59:59-23:59", "after 9999"),
            ("9999-12-31T23:59:59.9999999Z", "fractional digits"),
            ("2026-01-01T00:00:00.000000001Z", "fractional digits"),
            ("2016-12-31T23:59:60Z", "leap second"),
            ("2026-12-25T08:00:00", "no UTC offset"),
            ("2026-12-25T08:00:00+99:00", "not an RFC 3339 time"),
            ("tomorrow", "not an RFC 3339 time"),
        ] {
            let message = parse(raw).expect_err(raw);
            assert!(message.contains(says), "{raw}: {message}");
        }
    }

    #[test]
    fn a_schedule_lies_in_the_future_within_the_horizon() {
        let now = datetime!(2026-06-01 12:00:00 UTC);
        assert!(check_schedule(now + Duration::SECOND, now).is_ok());
        assert!(check_schedule(now + SCHEDULE_HORIZON, now).is_ok());
        assert!(
            check_schedule(now, now)
                .unwrap_err()
                .contains("in the past")
        );
        assert!(
            check_schedule(now + SCHEDULE_HORIZON + Duration::SECOND, now)
                .unwrap_err()
                .contains("5 years")
        );
    }
}
