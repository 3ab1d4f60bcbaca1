//! Sending-rate schedules shared by every worker on one database (table
//! `sending_rate_schedules`, migration 0012): the global `SMTP_RATE_LIMIT` and each
//! destination-domain group get one row holding the time of the schedule's next free slot.
//!
//! A worker leases a stretch of the schedule — `span` nanoseconds, enough for a few hundred
//! milliseconds of messages — by moving that time forward in one statement, and sends in the
//! slots of its stretch. However many workers lease, the stretches never overlap, so the
//! deployment's total is the schedule's rate. A worker that dies holds only time that passes:
//! there is no lease to reclaim. A worker that stops needing slots gives the rest of its
//! stretch back when nobody has leased after it.
//!
//! The row also keeps what throttling receivers did to the destination (the rate they pushed
//! it down to and when), so every worker slows down together; the recovery over time is
//! computed by the reader from those two values, so it needs no writes.

use crate::{Database, StoreError};
use async_trait::async_trait;
use sqlx::Row;
use std::sync::Arc;

/// A stretch of a schedule leased by one worker: slots from `start_ns` (inclusive) to
/// `end_ns` (exclusive), nanoseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlotLease {
    pub start_ns: i64,
    pub end_ns: i64,
    /// The destination's slow-down as the lease found it.
    pub slowdown: Option<Slowdown>,
}

/// A throttling receiver's effect on a schedule: the rate it was pushed down to and when the
/// last throttling reply came.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Slowdown {
    /// Messages per second.
    pub rate: f64,
    pub throttled_ns: i64,
}

/// One schedule as stored, for status and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleState {
    pub name: String,
    pub next_slot_ns: i64,
    pub slowdown: Option<Slowdown>,
}

/// The shared sending-rate schedules. Object-safe; both backends run the same SQL.
#[async_trait]
pub trait SendingRateStore: Send + Sync {
    /// Leases `span_ns` of schedule `name`, starting at its next free slot or at `now_ns`,
    /// whichever is later (time nobody used is not saved up). Creates the schedule on first use.
    async fn lease_slots(
        &self,
        name: &str,
        now_ns: i64,
        span_ns: i64,
    ) -> Result<SlotLease, StoreError>;

    /// Gives back the unused end of a lease, from `unused_from_ns` to the lease's `end_ns`,
    /// when no other worker has leased after it (otherwise the time is simply not used).
    /// Returns whether it was given back.
    async fn return_slots(
        &self,
        name: &str,
        end_ns: i64,
        unused_from_ns: i64,
    ) -> Result<bool, StoreError>;

    /// Records a throttling reply at `now_ns`: `slowed` is given the schedule's current
    /// slow-down and returns the new one, or `None` to leave it (a reply that belongs to a
    /// slow-down already made). Serialised across workers, so two replies at once halve the
    /// rate once each, never both from the same starting rate. Returns the slow-down in force.
    async fn record_throttle(
        &self,
        name: &str,
        now_ns: i64,
        slowed: &(dyn Fn(Option<Slowdown>) -> Option<f64> + Send + Sync),
    ) -> Result<Option<Slowdown>, StoreError>;

    /// Every schedule, by name.
    async fn schedules(&self) -> Result<Vec<ScheduleState>, StoreError>;
}

/// The schedules on an open database, sharing its pool. The table comes with the store's
/// migrations, applied when the store is opened on it ([`crate::open`]).
pub fn open(database: &Database) -> Arc<dyn SendingRateStore> {
    match database {
        Database::Sqlite(pool) => Arc::new(SqliteSchedules { pool: pool.clone() }),
        Database::Postgres(pool) => Arc::new(PostgresSchedules { pool: pool.clone() }),
    }
}

/// Opens the database at `url`, brings the store's schema up to date, and returns its
/// schedules.
pub async fn connect(url: &str) -> Result<Arc<dyn SendingRateStore>, StoreError> {
    let database = Database::open(url).await?;
    crate::open(&database).await?;
    Ok(open(&database))
}

/// The schedules in SQLite.
struct SqliteSchedules {
    pool: sqlx::SqlitePool,
}

/// The schedules in PostgreSQL.
struct PostgresSchedules {
    pool: sqlx::PgPool,
}

fn slowdown_of(row: &impl SlowdownColumns) -> Result<Option<Slowdown>, StoreError> {
    let (rate, throttled) = row.slowdown_columns()?;
    Ok(match (rate, throttled) {
        (Some(rate), Some(throttled_ns)) => Some(Slowdown { rate, throttled_ns }),
        _ => None,
    })
}

/// Reads `slowed_rate` and `throttled_ns` from a row of either backend.
trait SlowdownColumns {
    fn slowdown_columns(&self) -> Result<(Option<f64>, Option<i64>), StoreError>;
}

impl SlowdownColumns for sqlx::postgres::PgRow {
    fn slowdown_columns(&self) -> Result<(Option<f64>, Option<i64>), StoreError> {
        Ok((self.try_get("slowed_rate")?, self.try_get("throttled_ns")?))
    }
}

impl SlowdownColumns for sqlx::sqlite::SqliteRow {
    fn slowdown_columns(&self) -> Result<(Option<f64>, Option<i64>), StoreError> {
        Ok((self.try_get("slowed_rate")?, self.try_get("throttled_ns")?))
    }
}

macro_rules! sending_rate_store {
    ($store:ty, begin = $begin:literal, lock = $lock:literal) => {
        #[async_trait]
        impl SendingRateStore for $store {
            async fn lease_slots(
                &self,
                name: &str,
                now_ns: i64,
                span_ns: i64,
            ) -> Result<SlotLease, StoreError> {
                // One statement: the row lock (PostgreSQL) or the write lock (SQLite) makes
                // concurrent leases take consecutive stretches.
                let row = sqlx::query(
                    "INSERT INTO sending_rate_schedules (name, next_slot_ns) VALUES ($1, $2 + $3) \
                     ON CONFLICT (name) DO UPDATE SET next_slot_ns = \
                       (CASE WHEN sending_rate_schedules.next_slot_ns > $2 \
                             THEN sending_rate_schedules.next_slot_ns ELSE $2 END) + $3 \
                     RETURNING next_slot_ns, slowed_rate, throttled_ns",
                )
                .bind(name)
                .bind(now_ns)
                .bind(span_ns)
                .fetch_one(&self.pool)
                .await?;
                let end_ns: i64 = row.try_get("next_slot_ns")?;
                Ok(SlotLease {
                    start_ns: end_ns - span_ns,
                    end_ns,
                    slowdown: slowdown_of(&row)?,
                })
            }

            async fn return_slots(
                &self,
                name: &str,
                end_ns: i64,
                unused_from_ns: i64,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query(
                    "UPDATE sending_rate_schedules SET next_slot_ns = $3 \
                     WHERE name = $1 AND next_slot_ns = $2",
                )
                .bind(name)
                .bind(end_ns)
                .bind(unused_from_ns)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn record_throttle(
                &self,
                name: &str,
                now_ns: i64,
                slowed: &(dyn Fn(Option<Slowdown>) -> Option<f64> + Send + Sync),
            ) -> Result<Option<Slowdown>, StoreError> {
                let mut tx = self.pool.begin_with($begin).await?;
                sqlx::query(
                    "INSERT INTO sending_rate_schedules (name, next_slot_ns) VALUES ($1, $2) \
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(now_ns)
                .execute(&mut *tx)
                .await?;
                let row = sqlx::query(concat!(
                    "SELECT slowed_rate, throttled_ns FROM sending_rate_schedules WHERE name = $1",
                    $lock
                ))
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
                let current = slowdown_of(&row)?;
                let Some(rate) = slowed(current) else {
                    return Ok(current);
                };
                sqlx::query(
                    "UPDATE sending_rate_schedules SET slowed_rate = $2, throttled_ns = $3 WHERE name = $1",
                )
                .bind(name)
                .bind(rate)
                .bind(now_ns)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(Some(Slowdown {
                    rate,
                    throttled_ns: now_ns,
                }))
            }

            async fn schedules(&self) -> Result<Vec<ScheduleState>, StoreError> {
                let rows = sqlx::query(
                    "SELECT name, next_slot_ns, slowed_rate, throttled_ns \
                     FROM sending_rate_schedules ORDER BY name",
                )
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(ScheduleState {
                            name: row.try_get("name")?,
                            next_slot_ns: row.try_get("next_slot_ns")?,
                            slowdown: slowdown_of(row)?,
                        })
                    })
                    .collect()
            }
        }
    };
}

sending_rate_store!(PostgresSchedules, begin = "BEGIN", lock = " FOR UPDATE");
// A write transaction from the start (`BEGIN IMMEDIATE`): read-then-write must not fail when
// another writer got in between (as the store's write transactions do).
sending_rate_store!(SqliteSchedules, begin = "BEGIN IMMEDIATE", lock = "");
