//! [`AbTestRepository`](crate::AbTestRepository) in SQL: the slice, the hold, the decision.

use super::{Db, Store};
use crate::db_types::{DbId, DbTime};
use crate::{AbTestRepository, EventCount, StoreError, VariantCounts};
use campaign::{CampaignId, CampaignStatus, RecipientId};
use sqlx::{QueryBuilder, Row};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// Slice recipients given their variant per statement (two bind parameters each).
const SLICE_PER_STATEMENT: usize = 500;

/// `AND status IN (…)` over `statuses`, pushed onto a query.
fn push_statuses(builder: &mut QueryBuilder<Db>, statuses: &[CampaignStatus]) {
    builder.push(" AND status IN (");
    let mut list = builder.separated(", ");
    for status in statuses {
        list.push_bind(status.as_str());
    }
    builder.push(")");
}

#[async_trait::async_trait]
impl AbTestRepository for Store {
    async fn recipient_ids(&self, id: CampaignId) -> Result<Vec<RecipientId>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT id FROM recipients WHERE campaign_id = $1 ORDER BY id")
                .bind(DbId(id))
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn start_ab_test(
        &self,
        id: CampaignId,
        slice: &[(RecipientId, u8)],
        decide_at: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let started = sqlx::query(
            "UPDATE campaigns SET ab_phase = 'testing', ab_decide_at = $2, updated_at = $3 \
             WHERE id = $1 AND ab_phase IS NULL",
        )
        .bind(DbId(id))
        .bind(DbTime::from(decide_at))
        .bind(DbTime::now())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if started == 0 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE recipients SET ab_hold = 1 WHERE campaign_id = $1 AND status IN ('pending', 'deferred')",
        )
        .bind(DbId(id))
        .execute(&mut *tx)
        .await?;
        for chunk in slice.chunks(SLICE_PER_STATEMENT) {
            let mut builder = QueryBuilder::<Db>::new(
                "UPDATE recipients SET variant = slice.column2, ab_hold = 0 FROM (",
            );
            builder.push_values(chunk, |mut row, (recipient, variant)| {
                row.push_bind(*recipient).push_bind(i32::from(*variant));
            });
            builder
                .push(
                    ") AS slice WHERE recipients.id = slice.column1 AND recipients.campaign_id = ",
                )
                .push_bind(DbId(id));
            builder.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn due_ab_decisions(
        &self,
        now: OffsetDateTime,
        statuses: &[CampaignStatus],
        limit: u32,
    ) -> Result<Vec<CampaignId>, StoreError> {
        if statuses.is_empty() {
            return Ok(Vec::new());
        }
        let mut builder = QueryBuilder::<Db>::new(
            "SELECT id FROM campaigns WHERE ab_phase = 'testing' AND ab_decide_at <= ",
        );
        builder.push_bind(DbTime::from(now));
        push_statuses(&mut builder, statuses);
        builder
            .push(" ORDER BY ab_decide_at LIMIT ")
            .push_bind(i64::from(limit.max(1)));
        let ids: Vec<DbId<CampaignId>> = builder.build_query_scalar().fetch_all(&self.pool).await?;
        Ok(ids.into_iter().map(|id| id.0).collect())
    }

    async fn variant_counts(
        &self,
        id: CampaignId,
        slice_only: bool,
    ) -> Result<Vec<VariantCounts>, StoreError> {
        // The slice alone is `ab_hold = 0`; with the rest, also 2 (released to the winner).
        let most_hold: i32 = if slice_only { 0 } else { 2 };
        let mut counts: BTreeMap<u8, VariantCounts> = BTreeMap::new();
        let rows = sqlx::query(
            "SELECT variant, COUNT(*) AS recipients, \
                    SUM(CASE WHEN status = 'sent' THEN 1 ELSE 0 END) AS sent, \
                    SUM(CASE WHEN status IN ('pending', 'deferred') THEN 1 ELSE 0 END) AS pending \
             FROM recipients WHERE campaign_id = $1 AND variant IS NOT NULL AND ab_hold <= $2 \
             GROUP BY variant",
        )
        .bind(DbId(id))
        .bind(most_hold)
        .fetch_all(&self.pool)
        .await?;
        for row in &rows {
            let entry = counts_of_row(&mut counts, row)?;
            entry.recipients = row.try_get("recipients")?;
            entry.sent = row.try_get::<Option<i64>, _>("sent")?.unwrap_or(0);
            entry.pending = row.try_get::<Option<i64>, _>("pending")?.unwrap_or(0);
        }
        // An event names its recipient (whose row says the variant) or, recorded
        // aggregate-only, carries the variant its signed link named.
        let rows = sqlx::query(
            "SELECT COALESCE(r.variant, e.variant) AS variant, e.kind AS kind, COUNT(*) AS total, \
                    COUNT(DISTINCT e.recipient_id) AS unique_recipients \
             FROM tracking_events e LEFT JOIN recipients r ON r.id = e.recipient_id \
             WHERE e.campaign_id = $1 AND e.kind IN ('open', 'click', 'bounce_hard') \
               AND COALESCE(r.variant, e.variant) IS NOT NULL \
               AND (r.id IS NULL OR r.ab_hold <= $2) \
             GROUP BY COALESCE(r.variant, e.variant), e.kind",
        )
        .bind(DbId(id))
        .bind(most_hold)
        .fetch_all(&self.pool)
        .await?;
        for row in &rows {
            let entry = counts_of_row(&mut counts, row)?;
            let count = EventCount {
                total: row.try_get("total")?,
                unique: row.try_get("unique_recipients")?,
            };
            match row.try_get::<String, _>("kind")?.as_str() {
                "open" => entry.opens = count,
                "click" => entry.clicks = count,
                _ => entry.hard_bounces = count.unique,
            }
        }
        Ok(counts.into_values().collect())
    }

    async fn decide_ab_test(
        &self,
        id: CampaignId,
        winner: u8,
        decision: &serde_json::Value,
        now: OffsetDateTime,
        statuses: &[CampaignStatus],
    ) -> Result<bool, StoreError> {
        if statuses.is_empty() {
            return Ok(false);
        }
        let now = DbTime::from(now);
        let mut tx = self.begin_write().await?;
        // `ab_phase = 'testing'` in the WHERE is what makes this once: PostgreSQL re-checks it
        // on the locked row after a concurrent decision (or pause) commits, SQLite runs one
        // writer at a time.
        let mut builder =
            QueryBuilder::<Db>::new("UPDATE campaigns SET ab_phase = 'decided', ab_winner = ");
        builder
            .push_bind(i32::from(winner))
            .push(", ab_decided_at = ")
            .push_bind(now)
            .push(", ab_decision = ")
            .push_bind(decision.to_string())
            .push(", updated_at = ")
            .push_bind(now)
            .push(" WHERE id = ")
            .push_bind(DbId(id))
            .push(" AND ab_phase = 'testing'");
        push_statuses(&mut builder, statuses);
        if builder.build().execute(&mut *tx).await?.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE recipients SET variant = $2, ab_hold = 2, updated_at = $3 \
             WHERE campaign_id = $1 AND ab_hold = 1",
        )
        .bind(DbId(id))
        .bind(i32::from(winner))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn ab_rest_split(&self, id: CampaignId) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE campaigns SET ab_phase = 'sending_winner' WHERE id = $1 AND ab_phase = 'decided'",
        )
        .bind(DbId(id))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn ab_decided_before(
        &self,
        before: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<CampaignId>, StoreError> {
        let ids: Vec<DbId<CampaignId>> = sqlx::query_scalar(
            "SELECT id FROM campaigns WHERE ab_phase = 'decided' AND ab_decided_at < $1 \
             AND status IN ('sending', 'paused') \
             ORDER BY ab_decided_at LIMIT $2",
        )
        .bind(DbTime::from(before))
        .bind(i64::from(limit.max(1)))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(|id| id.0).collect())
    }
}

/// The counts of the variant a row names, created empty on first sight.
fn counts_of_row<'a>(
    counts: &'a mut BTreeMap<u8, VariantCounts>,
    row: &<Db as sqlx::Database>::Row,
) -> Result<&'a mut VariantCounts, StoreError> {
    let value: i32 = row.try_get("variant")?;
    let variant =
        u8::try_from(value).map_err(|_| StoreError::Corrupt(format!("variant {value}")))?;
    Ok(counts.entry(variant).or_insert_with(|| VariantCounts {
        variant,
        ..VariantCounts::default()
    }))
}
