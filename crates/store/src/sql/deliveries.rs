//! [`DeliveryRepository`](crate::DeliveryRepository) in SQL: batches, due recipients, outcomes, time-zone holds.

use super::{Db, Store, status_from, stored_recipient_from_row};
use crate::db_types::{DbId, DbTime};
use crate::{
    DeliveryCounts, DeliveryOutcome, DeliveryRecord, DeliveryRepository, OutcomeKind, RateWait,
    RecipientRange, Requeued, SendGroup, StoreError, StoredRecipient, ZoneRelease,
};
use campaign::{CampaignAction, CampaignId, CampaignStatus, DeliveryStatus, RecipientId};
use sqlx::{QueryBuilder, Row};
use std::sync::LazyLock;
use time::OffsetDateTime;

use futures::TryStreamExt;

/// A sending campaign whose recipients all have their outcome ends: `failed` when none was
/// sent and one failed, else `completed`. Where it may end from is the transition table's
/// answer (the same states for both ends).
static FINISH_IF_DONE: LazyLock<String> = LazyLock::new(|| {
    let (completed, failed) = (CampaignStatus::Completed, CampaignStatus::Failed);
    let finishing = status_from(completed, CampaignAction::Finish);
    debug_assert_eq!(finishing, status_from(failed, CampaignAction::Finish));
    format!(
        "UPDATE campaigns SET \
           status = CASE WHEN NOT EXISTS (SELECT 1 FROM recipients WHERE campaign_id = $1 AND status = 'sent') \
                          AND EXISTS (SELECT 1 FROM recipients WHERE campaign_id = $1 AND status = 'failed') \
                         THEN '{failed}' ELSE '{completed}' END, \
           completed_at = $2, updated_at = $2 \
         WHERE id = $1 AND {finishing} \
           AND NOT EXISTS (SELECT 1 FROM recipients WHERE campaign_id = $1 AND status IN ('pending', 'deferred'))",
        failed = failed.as_str(),
        completed = completed.as_str(),
    )
});

/// Sent outcomes recorded per statement (two bind parameters each, far below both
/// backends' limits).
const SENT_PER_STATEMENT: usize = 500;

#[async_trait::async_trait]
impl DeliveryRepository for Store {
    async fn delivery_counts(&self, id: CampaignId) -> Result<DeliveryCounts, StoreError> {
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n FROM recipients WHERE campaign_id = $1 GROUP BY status",
        )
        .bind(DbId(id))
        .fetch_all(&self.pool)
        .await?;
        let mut counts = Vec::with_capacity(rows.len());
        for row in rows {
            let status: String = row.try_get("status")?;
            let status: DeliveryStatus = status.parse().map_err(StoreError::Corrupt)?;
            counts.push((status, row.try_get::<i64, _>("n")?));
        }
        Ok(DeliveryCounts::from_rows(counts))
    }

    async fn list_deliveries(
        &self,
        id: CampaignId,
        status: Option<DeliveryStatus>,
        after: Option<RecipientId>,
        limit: u32,
    ) -> Result<Vec<DeliveryRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, email, status, attempts, smtp_reply, last_error, next_attempt_at, sent_at, variant FROM recipients \
             WHERE campaign_id = $1 AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR id > $3) \
             ORDER BY id LIMIT $4",
        )
        .bind(DbId(id))
        .bind(status.map(DeliveryStatus::as_str))
        .bind(after)
        .bind(i64::from(limit.clamp(1, 1000)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get("status")?;
                Ok(DeliveryRecord {
                    recipient_id: row.try_get("id")?,
                    email: row.try_get("email")?,
                    status: status.parse().map_err(StoreError::Corrupt)?,
                    attempts: row.try_get("attempts")?,
                    smtp_reply: row.try_get("smtp_reply")?,
                    last_error: row.try_get("last_error")?,
                    next_attempt_at: row
                        .try_get::<Option<DbTime>, _>("next_attempt_at")?
                        .map(|t| t.0),
                    sent_at: row.try_get::<Option<DbTime>, _>("sent_at")?.map(|t| t.0),
                    variant: row
                        .try_get::<Option<i32>, _>("variant")?
                        .and_then(|v| u8::try_from(v).ok()),
                })
            })
            .collect()
    }

    async fn finish_if_done(&self, id: CampaignId) -> Result<Option<CampaignStatus>, StoreError> {
        let now = DbTime::now();
        let result = sqlx::query(FINISH_IF_DONE.as_str())
            .bind(DbId(id))
            .bind(now)
            .execute(&self.pool)
            .await?;
        if result.rows_affected() == 0 {
            return Ok(None);
        }
        let status: String = sqlx::query_scalar("SELECT status FROM campaigns WHERE id = $1")
            .bind(DbId(id))
            .fetch_one(&self.pool)
            .await?;
        Ok(Some(status.parse().map_err(StoreError::Corrupt)?))
    }

    async fn batch_ranges(
        &self,
        id: CampaignId,
        batch_size: u32,
    ) -> Result<Vec<RecipientRange>, StoreError> {
        // Streamed, so a million-recipient campaign never holds all its ids at once.
        let mut ids = sqlx::query_scalar::<_, RecipientId>(
            "SELECT id FROM recipients WHERE campaign_id = $1 ORDER BY id",
        )
        .bind(DbId(id))
        .fetch(&self.pool);
        let batch_size = batch_size.max(1);
        let mut ranges = Vec::new();
        let mut current: Option<(RecipientRange, u32)> = None;
        while let Some(recipient) = ids.try_next().await? {
            current = match current {
                Some((range, count)) if count < batch_size => Some((
                    RecipientRange {
                        first: range.first,
                        last: recipient,
                    },
                    count + 1,
                )),
                Some((range, _)) => {
                    ranges.push(range);
                    Some((
                        RecipientRange {
                            first: recipient,
                            last: recipient,
                        },
                        1,
                    ))
                }
                None => Some((
                    RecipientRange {
                        first: recipient,
                        last: recipient,
                    },
                    1,
                )),
            };
        }
        ranges.extend(current.map(|(range, _)| range));
        Ok(ranges)
    }

    // `status IN (…)` lets SQLite search (campaign_id, status, id range) in the
    // recipients_campaign_status index; an OR of the two states made it scan every
    // pending recipient of the campaign for each batch (25 ms at 100,000 recipients).
    async fn due_recipients(
        &self,
        id: CampaignId,
        range: RecipientRange,
        group: SendGroup,
        now: OffsetDateTime,
    ) -> Result<Vec<StoredRecipient>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, email, fields, status, attempts, variant FROM recipients \
             WHERE campaign_id = $1 AND id BETWEEN $2 AND $3 \
             AND status IN ('pending', 'deferred') \
             AND (next_attempt_at IS NULL OR next_attempt_at <= $4) AND ab_hold = $5 \
             ORDER BY id",
        )
        .bind(DbId(id))
        .bind(range.first)
        .bind(range.last)
        .bind(DbTime::from(now))
        .bind(group.hold())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| stored_recipient_from_row(row, id))
            .collect()
    }

    async fn next_due_in_range(
        &self,
        id: CampaignId,
        range: RecipientRange,
        group: SendGroup,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        let earliest: Option<DbTime> = sqlx::query_scalar(
            "SELECT MIN(COALESCE(next_attempt_at, $4)) \
             FROM recipients WHERE campaign_id = $1 AND id BETWEEN $2 AND $3 \
             AND status IN ('pending', 'deferred') AND ab_hold = $5",
        )
        .bind(DbId(id))
        .bind(range.first)
        .bind(range.last)
        .bind(DbTime(OffsetDateTime::UNIX_EPOCH))
        .bind(group.hold())
        .fetch_one(&self.pool)
        .await?;
        Ok(earliest.map(|t| t.0))
    }

    async fn unreleased_time_zones(
        &self,
        id: CampaignId,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT time_zone, COUNT(*) FROM recipients \
             WHERE campaign_id = $1 AND status = 'pending' AND next_attempt_at IS NULL AND time_zone IS NOT NULL \
             GROUP BY time_zone ORDER BY time_zone",
        )
        .bind(DbId(id))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn hold_time_zone(
        &self,
        id: CampaignId,
        zone: &str,
        release_at: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let held = sqlx::query(
            "UPDATE recipients SET next_attempt_at = $3 \
             WHERE campaign_id = $1 AND status = 'pending' AND next_attempt_at IS NULL AND time_zone = $2",
        )
        .bind(DbId(id))
        .bind(zone)
        .bind(DbTime::from(release_at))
        .execute(&self.pool)
        .await?;
        Ok(held.rows_affected())
    }

    async fn time_zone_releases(&self, id: CampaignId) -> Result<Vec<ZoneRelease>, StoreError> {
        // A recipient due now has no time (NULL): MIN over the epoch stand-in tells
        // "one is due now" from "all wait".
        let rows: Vec<(String, i64, Option<DbTime>)> = sqlx::query_as(
            "SELECT time_zone, COUNT(*), MIN(COALESCE(next_attempt_at, $2)) FROM recipients \
             WHERE campaign_id = $1 AND status IN ('pending', 'deferred') AND time_zone IS NOT NULL \
             GROUP BY time_zone ORDER BY time_zone",
        )
        .bind(DbId(id))
        .bind(DbTime(OffsetDateTime::UNIX_EPOCH))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(zone, waiting, due)| ZoneRelease {
                zone,
                waiting,
                due_at: due
                    .map(|t| t.0)
                    .filter(|at| *at != OffsetDateTime::UNIX_EPOCH),
            })
            .collect())
    }

    async fn rate_waits(&self, id: CampaignId) -> Result<Vec<RateWait>, StoreError> {
        let rows: Vec<(String, i64, DbTime, DbTime)> = sqlx::query_as(
            "SELECT rate_wait, COUNT(*), MIN(next_attempt_at), MAX(next_attempt_at) FROM recipients \
             WHERE campaign_id = $1 AND status = 'deferred' AND rate_wait IS NOT NULL \
             GROUP BY rate_wait ORDER BY rate_wait",
        )
        .bind(DbId(id))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(destination, waiting, next_at, until)| RateWait {
                destination,
                waiting,
                next_at: next_at.0,
                until: until.0,
            })
            .collect())
    }

    async fn record_outcomes(&self, outcomes: &[DeliveryOutcome]) -> Result<(), StoreError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let now = DbTime::now();
        // Sent is nearly every outcome: one statement per chunk of them, not one round
        // trip each.
        let sent: Vec<(RecipientId, &str)> = outcomes
            .iter()
            .filter_map(|outcome| match &outcome.result {
                OutcomeKind::Sent { reply } => Some((outcome.recipient_id, reply.as_str())),
                _ => None,
            })
            .collect();
        // The usual group commit, only sent outcomes and few enough for one statement: that
        // statement is the transaction where the backend lets it be. Every message in
        // flight waits for its outcome's commit, so its round trips are the worker's rate.
        if Store::ONE_STATEMENT_COMMITS
            && sent.len() == outcomes.len()
            && sent.len() <= SENT_PER_STATEMENT
        {
            record_sent(now, &sent).build().execute(&self.pool).await?;
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for chunk in sent.chunks(SENT_PER_STATEMENT) {
            record_sent(now, chunk).build().execute(&mut *tx).await?;
        }
        for outcome in outcomes {
            let query = match &outcome.result {
                OutcomeKind::Sent { .. } => continue,
                // A rate deferral records what it waits for in the same statement (the
                // status groups by it) and is no delivery attempt: nothing was sent.
                OutcomeKind::Deferred {
                    error,
                    retry_at,
                    rate_wait,
                } => sqlx::query(
                    "UPDATE recipients SET status = 'deferred', attempts = attempts + $5, last_error = $2, \
                     next_attempt_at = $3, rate_wait = $6, updated_at = $4 WHERE id = $1 AND status IN ('pending', 'deferred')",
                )
                .bind(outcome.recipient_id)
                .bind(error.as_str())
                .bind(DbTime::from(*retry_at))
                .bind(now)
                .bind(i32::from(rate_wait.is_none()))
                .bind(rate_wait.as_deref()),
                OutcomeKind::Failed { error, attempted } => sqlx::query(
                    "UPDATE recipients SET status = 'failed', attempts = attempts + $3, last_error = $2, \
                     next_attempt_at = NULL, updated_at = $4 WHERE id = $1 AND status IN ('pending', 'deferred')",
                )
                .bind(outcome.recipient_id)
                .bind(error.as_str())
                .bind(i32::from(*attempted))
                .bind(now),
                OutcomeKind::Suppressed => sqlx::query(
                    "UPDATE recipients SET status = 'suppressed', next_attempt_at = NULL, updated_at = $2 \
                     WHERE id = $1 AND status IN ('pending', 'deferred')",
                )
                .bind(outcome.recipient_id)
                .bind(now),
            };
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn requeue_failed(&self, id: CampaignId) -> Result<Option<Requeued>, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(locked!(
            "SELECT status, send_pass FROM campaigns WHERE id = $1"
        ))
        .bind(DbId(id))
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::CampaignNotFound(id))?;
        let status: String = row.try_get("status")?;
        let status: CampaignStatus = status.parse().map_err(StoreError::Corrupt)?;
        let send_pass: i32 = row.try_get("send_pass")?;
        let requeued = CampaignStatus::Queued;
        if status.check(requeued, CampaignAction::RetryFailed).is_err() {
            return Ok(None);
        }
        let now = DbTime::now();
        // A suppressed address (hard bounce, complaint, unsubscribe) stays failed: a
        // retry must never reach it.
        let recipients = sqlx::query(
            "UPDATE recipients SET status = 'pending', attempts = 0, next_attempt_at = NULL, ab_hold = 0, updated_at = $2 \
             WHERE campaign_id = $1 AND status = 'failed' \
             AND email_key NOT IN (SELECT email_key FROM suppressions)",
        )
        .bind(DbId(id))
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if recipients == 0 {
            return Ok(Some(Requeued {
                recipients: 0,
                send_pass: u32::try_from(send_pass).unwrap_or(0),
            }));
        }
        sqlx::query(
            "UPDATE campaigns SET status = $3, send_pass = send_pass + 1, started_at = NULL, \
             completed_at = NULL, updated_at = $2 WHERE id = $1",
        )
        .bind(DbId(id))
        .bind(now)
        .bind(requeued.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(Requeued {
            recipients,
            send_pass: u32::try_from(send_pass + 1).unwrap_or(0),
        }))
    }
}

/// The UPDATE recording `sent` outcomes (recipient, server reply). Only recipients still in
/// flight change; a final state is never rewritten, except that a message the server accepted
/// is recorded as sent even if the campaign was cancelled meanwhile: the report must say what
/// really happened.
fn record_sent(now: DbTime, sent: &[(RecipientId, &str)]) -> QueryBuilder<Db> {
    let mut builder = QueryBuilder::<Db>::new(
        "UPDATE recipients SET status = 'sent', attempts = attempts + 1, smtp_reply = sent.column2, \
         last_error = NULL, next_attempt_at = NULL, sent_at = ",
    );
    builder
        .push_bind(now)
        .push(", updated_at = ")
        .push_bind(now)
        .push(" FROM (");
    // A VALUES list, not a UNION ALL of SELECTs: when a cancel has locked some of these rows,
    // PostgreSQL re-checks each row it waited for against the joined row, and with a UNION
    // ALL it lost all but one of them (the message was sent, the row stayed `cancelled`).
    // VALUES columns are `column1`, `column2` on both backends.
    builder.push_values(sent, |mut row, (id, reply)| {
        row.push_bind(*id).push_bind(*reply);
    });
    builder.push(
        ") AS sent WHERE recipients.id = sent.column1 \
         AND recipients.status IN ('pending', 'deferred', 'cancelled')",
    );
    builder
}
