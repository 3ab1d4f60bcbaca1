//! [`CampaignRepository`](crate::CampaignRepository) in SQL: campaigns, their status changes, and reading recipients.

use super::{Db, Store, status_from, stored_recipient_from_row};
use crate::db_types::{DbId, DbTime};
use crate::{
    CampaignFilter, CampaignPage, CampaignRecord, CampaignRepository, DueCampaign, ImportReport,
    RecipientStream, StoreError, StoredRecipient, initial_status,
};
use campaign::{
    CampaignAction, CampaignDocument, CampaignId, CampaignStatus, EmailAddress, RecipientId,
};
use sqlx::types::Json;
use sqlx::{QueryBuilder, Row};
use std::sync::LazyLock;
use time::OffsetDateTime;

use super::recipients::import;

/// The campaigns the campaign processor queues when their `scheduled_at` comes: whatever the
/// transition table lets it queue.
fn due_states() -> String {
    status_from(CampaignStatus::Queued, CampaignAction::QueueDue)
}

/// A schedule may change, or be cleared, where the campaign may be scheduled: draft or
/// scheduled.
static SCHEDULE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "UPDATE campaigns SET scheduled_at = $2, status = $3, updated_at = $4 WHERE id = $1 AND {}",
        status_from(CampaignStatus::Scheduled, CampaignAction::Schedule)
    )
});

/// The `status = …` outside the sub-select is what makes this exactly once across replicas:
/// PostgreSQL re-checks it on the locked row after a concurrent update commits (so the second
/// replica skips the row), and SQLite runs one writer at a time.
static QUEUE_DUE: LazyLock<String> = LazyLock::new(|| {
    let due = due_states();
    format!(
        "UPDATE campaigns SET status = '{queued}', queued_at = $1, updated_at = $1 \
         WHERE id IN (SELECT id FROM campaigns WHERE {due} AND scheduled_at <= $1 \
                      ORDER BY scheduled_at LIMIT $2) \
           AND {due} \
         RETURNING id, scheduled_at",
        queued = CampaignStatus::Queued.as_str()
    )
});

static NEXT_SCHEDULED_AT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT MIN(scheduled_at) FROM campaigns WHERE {}",
        due_states()
    )
});

/// Campaigns waiting for a worker's split to start them (queued).
static QUEUED_BEFORE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT id FROM campaigns WHERE {} AND queued_at < $1 ORDER BY queued_at LIMIT $2",
        status_from(CampaignStatus::Sending, CampaignAction::Start)
    )
});

const CAMPAIGN_COLUMNS: &str = "id, name, status, document, recipient_count, scheduled_at, queued_at, started_at, completed_at, created_at, updated_at, send_pass, ab_phase, ab_decide_at, ab_winner, ab_decided_at, ab_decision";

fn campaign_from_row(row: &<Db as sqlx::Database>::Row) -> Result<CampaignRecord, StoreError> {
    let status: String = row.try_get("status")?;
    let Json(document): Json<CampaignDocument> = row.try_get("document")?;
    let id: DbId<CampaignId> = row.try_get("id")?;
    let optional_time = |column: &str| -> Result<_, StoreError> {
        Ok(row.try_get::<Option<DbTime>, _>(column)?.map(|t| t.0))
    };
    Ok(CampaignRecord {
        id: id.0,
        name: row.try_get("name")?,
        status: status.parse().map_err(StoreError::Corrupt)?,
        recipient_count: row.try_get("recipient_count")?,
        scheduled_at: optional_time("scheduled_at")?,
        queued_at: optional_time("queued_at")?,
        started_at: optional_time("started_at")?,
        completed_at: optional_time("completed_at")?,
        created_at: row.try_get::<DbTime, _>("created_at")?.0,
        updated_at: row.try_get::<DbTime, _>("updated_at")?.0,
        document,
        send_pass: u32::try_from(row.try_get::<i32, _>("send_pass")?).unwrap_or(0),
        ab: match row.try_get::<Option<String>, _>("ab_phase")? {
            None => None,
            Some(phase) => Some(crate::AbState {
                phase: crate::AbPhase::parse(&phase)?,
                decide_at: optional_time("ab_decide_at")?,
                winner: row
                    .try_get::<Option<i32>, _>("ab_winner")?
                    .and_then(|w| u8::try_from(w).ok()),
                decided_at: optional_time("ab_decided_at")?,
                decision: row
                    .try_get::<Option<String>, _>("ab_decision")?
                    .map(|text| serde_json::from_str(&text))
                    .transpose()
                    .map_err(|err| StoreError::Corrupt(format!("A/B decision: {err}")))?,
            }),
        },
    })
}

/// The conditional status change, inside the caller's transaction.
async fn transition(
    tx: &mut sqlx::Transaction<'static, Db>,
    id: CampaignId,
    from: &[CampaignStatus],
    to: CampaignStatus,
) -> Result<bool, StoreError> {
    if from.is_empty() {
        return Ok(false);
    }
    let now = DbTime::now();
    let is_final = to.is_final();
    let mut builder = QueryBuilder::<Db>::new("UPDATE campaigns SET status = ");
    builder.push_bind(to.as_str());
    builder.push(", updated_at = ").push_bind(now);
    if to == CampaignStatus::Queued {
        // The first time counts: a campaign paused before its split and resumed is
        // queued again, but it started (late or not) when it was first queued.
        builder
            .push(", queued_at = COALESCE(queued_at, ")
            .push_bind(now)
            .push(")");
    }
    if to == CampaignStatus::Sending {
        builder
            .push(", started_at = COALESCE(started_at, ")
            .push_bind(now)
            .push(")");
    }
    if is_final {
        builder.push(", completed_at = ").push_bind(now);
    }
    builder
        .push(" WHERE id = ")
        .push_bind(DbId(id))
        .push(" AND status IN (");
    let mut list = builder.separated(", ");
    for status in from {
        list.push_bind(status.as_str());
    }
    builder.push(")");
    let result = builder.build().execute(&mut **tx).await?;
    Ok(result.rows_affected() == 1)
}

/// Stores a campaign under `id` with its recipients in one transaction, unless a
/// campaign with that id exists: then nothing is stored, and the existing campaign is
/// returned without a report. The row lock (PostgreSQL) or the write lock (SQLite)
/// makes a second caller wait for the first's commit and then find its campaign.
async fn insert_campaign(
    store: &Store,
    id: CampaignId,
    document: &CampaignDocument,
    recipients: RecipientStream<'_>,
) -> Result<(CampaignRecord, Option<ImportReport>), StoreError> {
    let id = DbId(id);
    let now = DbTime::now();
    let stored = document.without_recipients();
    let mut tx = store.begin_write().await?;
    let inserted = sqlx::query(
        "INSERT INTO campaigns (id, name, status, document, scheduled_at, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(&stored.name)
    .bind(initial_status(&stored).as_str())
    .bind(Json(&stored))
    .bind(stored.scheduled_at.map(DbTime::from))
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    let report = if inserted {
        Some(import(&mut tx, id, recipients, stored.local_send_time.as_ref()).await?)
    } else {
        None
    };
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = $1"
    )))
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    let record = campaign_from_row(&row)?;
    tx.commit().await?;
    Ok((record, report))
}

#[async_trait::async_trait]
impl CampaignRepository for Store {
    async fn create_campaign(
        &self,
        document: &CampaignDocument,
        recipients: RecipientStream<'_>,
    ) -> Result<(CampaignRecord, ImportReport), StoreError> {
        let (record, report) =
            insert_campaign(self, CampaignId::now_v7(), document, recipients).await?;
        // A fresh v7 id cannot already exist.
        Ok((record, report.unwrap_or_default()))
    }

    async fn create_campaign_once(
        &self,
        id: CampaignId,
        document: &CampaignDocument,
        recipients: RecipientStream<'_>,
    ) -> Result<(CampaignRecord, Option<ImportReport>), StoreError> {
        insert_campaign(self, id, document, recipients).await
    }

    async fn import_recipients(
        &self,
        id: CampaignId,
        recipients: RecipientStream<'_>,
    ) -> Result<ImportReport, StoreError> {
        let mut tx = self.begin_write().await?;
        let row: Option<(String, Json<CampaignDocument>)> = sqlx::query_as(locked!(
            "SELECT status, document FROM campaigns WHERE id = $1"
        ))
        .bind(DbId(id))
        .fetch_optional(&mut *tx)
        .await?;
        let (status, Json(document)) = row.ok_or(StoreError::CampaignNotFound(id))?;
        let status: CampaignStatus = status.parse().map_err(StoreError::Corrupt)?;
        if !matches!(status, CampaignStatus::Draft | CampaignStatus::Scheduled) {
            return Err(StoreError::WrongState {
                id,
                status,
                action: "adding recipients",
            });
        }
        let report = import(
            &mut tx,
            DbId(id),
            recipients,
            document.local_send_time.as_ref(),
        )
        .await?;
        tx.commit().await?;
        Ok(report)
    }

    async fn get_campaign(&self, id: CampaignId) -> Result<Option<CampaignRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE id = $1"
        )))
        .bind(DbId(id))
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(campaign_from_row).transpose()
    }

    async fn campaign_status(&self, id: CampaignId) -> Result<Option<CampaignStatus>, StoreError> {
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM campaigns WHERE id = $1")
                .bind(DbId(id))
                .fetch_optional(&self.pool)
                .await?;
        status
            .map(|status| status.parse().map_err(StoreError::Corrupt))
            .transpose()
    }

    async fn list_campaigns(&self, filter: &CampaignFilter) -> Result<CampaignPage, StoreError> {
        // Ids are UUIDv7, so ordering by id is ordering by creation time and the last
        // id of a page is a stable cursor for the next.
        let limit = filter.limit.clamp(1, 500);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CAMPAIGN_COLUMNS} FROM campaigns \
             WHERE ($1 IS NULL OR id < $1) AND ($2 IS NULL OR status = $2) \
             ORDER BY id DESC LIMIT $3"
        )))
        .bind(filter.before.map(DbId))
        .bind(filter.status.map(CampaignStatus::as_str))
        .bind(i64::from(limit) + 1)
        .fetch_all(&self.pool)
        .await?;
        let mut items = rows
            .iter()
            .map(campaign_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(|c| c.id)
        } else {
            None
        };
        Ok(CampaignPage { items, next_cursor })
    }

    async fn transition_campaign(
        &self,
        id: CampaignId,
        from: &[CampaignStatus],
        to: CampaignStatus,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let moved = transition(&mut tx, id, from, to).await?;
        tx.commit().await?;
        Ok(moved)
    }

    async fn schedule_campaign(
        &self,
        id: CampaignId,
        at: Option<OffsetDateTime>,
    ) -> Result<bool, StoreError> {
        let status = if at.is_some() {
            CampaignStatus::Scheduled
        } else {
            CampaignStatus::Draft
        };
        let result = sqlx::query(SCHEDULE.as_str())
            .bind(DbId(id))
            .bind(at.map(DbTime::from))
            .bind(status.as_str())
            .bind(DbTime::now())
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn queue_due_campaigns(
        &self,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<DueCampaign>, StoreError> {
        // Exactly once across replicas: see QUEUE_DUE.
        let rows = sqlx::query(QUEUE_DUE.as_str())
            .bind(DbTime::from(now))
            .bind(i64::from(limit.max(1)))
            .fetch_all(&self.pool)
            .await?;
        let mut due = rows
            .iter()
            .map(|row| {
                let id: DbId<CampaignId> = row.try_get("id")?;
                let scheduled_at: DbTime = row.try_get("scheduled_at")?;
                Ok(DueCampaign {
                    id: id.0,
                    scheduled_at: scheduled_at.0,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        due.sort_by_key(|campaign| campaign.scheduled_at);
        Ok(due)
    }

    async fn next_scheduled_at(&self) -> Result<Option<OffsetDateTime>, StoreError> {
        let next: Option<DbTime> = sqlx::query_scalar(NEXT_SCHEDULED_AT.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(next.map(|t| t.0))
    }

    async fn queued_before(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<CampaignId>, StoreError> {
        let ids: Vec<DbId<CampaignId>> = sqlx::query_scalar(QUEUED_BEFORE.as_str())
            .bind(DbTime::from(before))
            .bind(i64::from(limit.max(1)))
            .fetch_all(&self.pool)
            .await?;
        Ok(ids.into_iter().map(|id| id.0).collect())
    }

    async fn cancel_campaign(
        &self,
        id: CampaignId,
        from: &[CampaignStatus],
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        if !transition(&mut tx, id, from, CampaignStatus::Cancelled).await? {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE recipients SET status = 'cancelled', next_attempt_at = NULL, updated_at = $2 \
             WHERE campaign_id = $1 AND status IN ('pending', 'deferred')",
        )
        .bind(DbId(id))
        .bind(DbTime::now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn get_recipient(
        &self,
        id: CampaignId,
        recipient_id: RecipientId,
    ) -> Result<Option<StoredRecipient>, StoreError> {
        let row = sqlx::query("SELECT id, email, fields, status, attempts, variant FROM recipients WHERE campaign_id = $1 AND id = $2")
            .bind(DbId(id))
            .bind(recipient_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(|row| stored_recipient_from_row(row, id))
            .transpose()
    }

    async fn recipient_by_email(
        &self,
        id: CampaignId,
        email: &EmailAddress,
    ) -> Result<Option<StoredRecipient>, StoreError> {
        let row = sqlx::query("SELECT id, email, fields, status, attempts, variant FROM recipients WHERE campaign_id = $1 AND email_key = $2")
            .bind(DbId(id))
            .bind(email.key())
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(|row| stored_recipient_from_row(row, id))
            .transpose()
    }
}
