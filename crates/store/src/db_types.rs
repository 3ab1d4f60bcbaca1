//! Column types that differ between the backends, bridged so both run the same SQL.
//!
//! SQLite has no UUID or timestamp type: ids are stored as hyphenated text and times as
//! integer microseconds since the epoch (numbers sort and compare correctly; RFC 3339 text
//! with a variable number of fraction digits does not). PostgreSQL uses UUID and TIMESTAMPTZ.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueFormat, PgValueRef, Postgres};
use sqlx::sqlite::{Sqlite, SqliteArgumentsBuffer, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Type};
use time::OffsetDateTime;
use uuid::Uuid;

/// A UUID column: a task id (`DbId<Uuid>`, the default) or a campaign id
/// (`DbId<CampaignId>`), stored the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbId<T = Uuid>(pub T);

/// A point in time, always UTC, microsecond precision.
///
/// Nothing here panics: a time outside what [`campaign::timestamp`] accepts (which both stores
/// and RFC 3339 can hold) is refused with an error when written, and a stored value outside it
/// is refused when read, so it never reaches an answer it could not be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DbTime(pub OffsetDateTime);

/// PostgreSQL counts timestamps in microseconds from 2000-01-01 UTC.
const PG_EPOCH: OffsetDateTime = time::macros::datetime!(2000-01-01 00:00:00 UTC);

impl DbTime {
    pub fn now() -> DbTime {
        DbTime::from(OffsetDateTime::now_utc())
    }

    /// The time if the stores can hold it, or why not.
    fn storable(self) -> Result<OffsetDateTime, BoxDynError> {
        campaign::timestamp::check_range(self.0)
            .map(|()| self.0)
            .map_err(|message| format!("time {} {message}", self.0).into())
    }

    fn micros_since(self, epoch: OffsetDateTime) -> Result<i64, BoxDynError> {
        let micros = (self.storable()? - epoch).whole_microseconds();
        Ok(i64::try_from(micros)?)
    }

    fn from_micros_since(epoch: OffsetDateTime, micros: i64) -> Result<DbTime, BoxDynError> {
        let time = epoch
            .checked_add(time::Duration::microseconds(micros))
            .ok_or_else(|| format!("stored time {micros} µs from {epoch} is out of range"))?;
        let time = DbTime(time);
        time.storable()?;
        Ok(time)
    }
}

impl From<OffsetDateTime> for DbTime {
    /// Truncates to microseconds, the precision both backends keep, so a value reads back
    /// equal to what was written. Converted as an instant, so no offset can overflow; a time
    /// beyond every store stays as it is, and writing it fails.
    fn from(time: OffsetDateTime) -> DbTime {
        let micros = time.unix_timestamp_nanos().div_euclid(1_000) * 1_000;
        DbTime(OffsetDateTime::from_unix_timestamp_nanos(micros).unwrap_or(time))
    }
}

impl<T> Type<Sqlite> for DbId<T> {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl<T: Copy + Into<Uuid>> Encode<'_, Sqlite> for DbId<T> {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        Encode::<Sqlite>::encode(self.0.into().hyphenated().to_string(), buf)
    }
}

impl<'r, T: From<Uuid>> Decode<'r, Sqlite> for DbId<T> {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <&str as Decode<Sqlite>>::decode(value)?;
        Ok(DbId(Uuid::parse_str(text)?.into()))
    }
}

impl<T> Type<Postgres> for DbId<T> {
    fn type_info() -> PgTypeInfo {
        <Uuid as Type<Postgres>>::type_info()
    }
}

impl<T: Copy + Into<Uuid>> Encode<'_, Postgres> for DbId<T> {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Encode::<Postgres>::encode(self.0.into(), buf)
    }
}

impl<'r, T: From<Uuid>> Decode<'r, Postgres> for DbId<T> {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(DbId(<Uuid as Decode<Postgres>>::decode(value)?.into()))
    }
}

impl Type<Sqlite> for DbTime {
    fn type_info() -> SqliteTypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }
}

impl Encode<'_, Sqlite> for DbTime {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        Encode::<Sqlite>::encode(self.micros_since(OffsetDateTime::UNIX_EPOCH)?, buf)
    }
}

impl<'r> Decode<'r, Sqlite> for DbTime {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        DbTime::from_micros_since(
            OffsetDateTime::UNIX_EPOCH,
            <i64 as Decode<Sqlite>>::decode(value)?,
        )
    }
}

impl Type<Postgres> for DbTime {
    fn type_info() -> PgTypeInfo {
        <OffsetDateTime as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for DbTime {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        // TIMESTAMPTZ's binary form, computed here with checked arithmetic.
        Encode::<Postgres>::encode(self.micros_since(PG_EPOCH)?, buf)
    }
}

impl<'r> Decode<'r, Postgres> for DbTime {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        match value.format() {
            // sqlx adds the microseconds to its epoch unchecked, which panics on `infinity`
            // or a year beyond 9999; this reads them with checked arithmetic.
            PgValueFormat::Binary => {
                DbTime::from_micros_since(PG_EPOCH, <i64 as Decode<Postgres>>::decode(value)?)
            }
            PgValueFormat::Text => {
                let time = DbTime::from(<OffsetDateTime as Decode<Postgres>>::decode(value)?);
                time.storable()?;
                Ok(time)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn converting_an_extreme_offset_does_not_panic() {
        // Year 10000 and year -1 in UTC: once panics in `to_offset`.
        for time in [
            datetime!(9999-12-31 23:59:59 -23:59),
            datetime!(0000-01-01 00:00:00 +23:59),
        ] {
            let converted = DbTime::from(time);
            assert_eq!(converted.0, time, "the same instant");
            assert!(
                converted.micros_since(PG_EPOCH).is_err(),
                "{time} is refused"
            );
            assert!(converted.micros_since(OffsetDateTime::UNIX_EPOCH).is_err());
        }
    }

    #[test]
    fn stored_values_beyond_the_range_are_errors_not_panics() {
        // PostgreSQL's `infinity` is i64::MAX; -1 µs from 1970 is before the range.
        for (epoch, micros) in [
            (PG_EPOCH, i64::MAX),
            (PG_EPOCH, i64::MIN),
            (OffsetDateTime::UNIX_EPOCH, i64::MAX),
            (OffsetDateTime::UNIX_EPOCH, -1),
        ] {
            assert!(
                DbTime::from_micros_since(epoch, micros).is_err(),
                "{micros} from {epoch}"
            );
        }
        let now = DbTime::now();
        let micros = now.micros_since(PG_EPOCH).unwrap();
        assert_eq!(DbTime::from_micros_since(PG_EPOCH, micros).unwrap(), now);
    }

    #[test]
    fn times_are_truncated_to_the_microsecond_towards_the_past() {
        let time = datetime!(2030-01-01 00:00:00.123456789 +02:00);
        assert_eq!(
            DbTime::from(time).0,
            datetime!(2029-12-31 22:00:00.123456 UTC)
        );
    }
}
