//! [`TrackingRepository`](crate::TrackingRepository) in SQL: tracking events and their counts.

use super::{Db, HOUR_OF_OCCURRED_AT, Store};
use crate::db_types::{DbId, DbTime};
use crate::{
    EngagementCounts, EventCount, RecordedTrackingEvent, StoreError, TrackingEvent,
    TrackingEventKind, TrackingRepository,
};
use campaign::CampaignId;
use sqlx::{QueryBuilder, Row};

#[async_trait::async_trait]
impl TrackingRepository for Store {
    async fn record_tracking_events(&self, events: &[TrackingEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        // 9 columns per row: 500 rows stay far below both backends' parameter limits.
        for chunk in events.chunks(500) {
            let mut builder = QueryBuilder::<Db>::new(
                "INSERT INTO tracking_events (campaign_id, recipient_id, kind, link_index, detail, ip_hash, occurred_at, variant) ",
            );
            builder.push_values(chunk, |mut row, event| {
                row.push_bind(DbId(event.campaign_id))
                    .push_bind(event.recipient_id)
                    .push_bind(event.kind.as_str())
                    .push_bind(event.link_index.map(i32::from))
                    .push_bind(event.detail.as_deref())
                    .push_bind(event.ip_hash.as_deref())
                    .push_bind(DbTime::from(event.occurred_at))
                    .push_bind(event.variant.map(i32::from));
            });
            builder.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn list_tracking_events(
        &self,
        campaign: Option<CampaignId>,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<RecordedTrackingEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, campaign_id, recipient_id, kind, link_index, detail, ip_hash, occurred_at, variant \
             FROM tracking_events WHERE ($1 IS NULL OR campaign_id = $1) AND ($2 IS NULL OR id > $2) \
             ORDER BY id LIMIT $3",
        )
        .bind(campaign.map(DbId))
        .bind(after)
        .bind(i64::from(limit.clamp(1, 10_000)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                let link_index: Option<i32> = row.try_get("link_index")?;
                Ok(RecordedTrackingEvent {
                    id: row.try_get("id")?,
                    event: TrackingEvent {
                        campaign_id: row.try_get::<DbId<CampaignId>, _>("campaign_id")?.0,
                        recipient_id: row.try_get("recipient_id")?,
                        kind: kind.parse().map_err(StoreError::Corrupt)?,
                        link_index: link_index
                            .map(|i| {
                                u16::try_from(i)
                                    .map_err(|_| StoreError::Corrupt(format!("link index {i}")))
                            })
                            .transpose()?,
                        detail: row.try_get("detail")?,
                        ip_hash: row.try_get("ip_hash")?,
                        variant: row
                            .try_get::<Option<i32>, _>("variant")?
                            .and_then(|v| u8::try_from(v).ok()),
                        occurred_at: row.try_get::<DbTime, _>("occurred_at")?.0,
                    },
                })
            })
            .collect()
    }

    async fn engagement_counts(&self, id: CampaignId) -> Result<EngagementCounts, StoreError> {
        let mut counts = EngagementCounts::default();
        let kind_of = |row: &<Db as sqlx::Database>::Row| -> Result<TrackingEventKind, StoreError> {
            let kind: String = row.try_get("kind")?;
            kind.parse().map_err(StoreError::Corrupt)
        };
        let rows = sqlx::query(
            "SELECT kind, COUNT(*) AS total, COUNT(DISTINCT recipient_id) AS unique_recipients \
             FROM tracking_events WHERE campaign_id = $1 GROUP BY kind",
        )
        .bind(DbId(id))
        .fetch_all(&self.pool)
        .await?;
        for row in &rows {
            counts.by_kind.insert(
                kind_of(row)?,
                EventCount {
                    total: row.try_get("total")?,
                    unique: row.try_get("unique_recipients")?,
                },
            );
        }
        let rows = sqlx::query(
            "SELECT link_index, COUNT(*) AS total, COUNT(DISTINCT recipient_id) AS unique_recipients \
             FROM tracking_events WHERE campaign_id = $1 AND kind = 'click' AND link_index IS NOT NULL \
             GROUP BY link_index",
        )
        .bind(DbId(id))
        .fetch_all(&self.pool)
        .await?;
        for row in &rows {
            let index: i32 = row.try_get("link_index")?;
            let index = u16::try_from(index)
                .map_err(|_| StoreError::Corrupt(format!("link index {index}")))?;
            counts.by_link.insert(
                index,
                EventCount {
                    total: row.try_get("total")?,
                    unique: row.try_get("unique_recipients")?,
                },
            );
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {hour} AS hour, kind, COUNT(*) AS total FROM tracking_events \
             WHERE campaign_id = $1 GROUP BY {hour}, kind",
            hour = HOUR_OF_OCCURRED_AT,
        )))
        .bind(DbId(id))
        .fetch_all(&self.pool)
        .await?;
        for row in &rows {
            let hour = row.try_get::<DbTime, _>("hour")?.0;
            counts
                .hourly
                .entry(hour)
                .or_default()
                .insert(kind_of(row)?, row.try_get("total")?);
        }
        Ok(counts)
    }
}
