//! [`WebhookOutbox`](crate::WebhookOutbox) in SQL: queued webhook events claimed under a lease.

use super::{Db, Store};
use crate::db_types::DbTime;
use crate::{QueuedWebhookEvent, StoreError, WebhookOutbox};
use sqlx::{QueryBuilder, Row};
use time::OffsetDateTime;

#[async_trait::async_trait]
impl WebhookOutbox for Store {
    async fn enqueue_webhook_events(
        &self,
        endpoints: &[String],
        payloads: &[String],
    ) -> Result<(), StoreError> {
        if endpoints.is_empty() || payloads.is_empty() {
            return Ok(());
        }
        let now = DbTime::now();
        let rows: Vec<(&String, &String)> = endpoints
            .iter()
            .flat_map(|endpoint| payloads.iter().map(move |payload| (endpoint, payload)))
            .collect();
        let mut tx = self.begin_write().await?;
        for chunk in rows.chunks(1000) {
            let mut builder = QueryBuilder::<Db>::new(
                "INSERT INTO webhook_outbox (endpoint, payload, next_attempt_at, created_at) ",
            );
            builder.push_values(chunk, |mut row, (endpoint, payload)| {
                row.push_bind(endpoint.as_str())
                    .push_bind(payload.as_str())
                    .push_bind(now)
                    .push_bind(now);
            });
            builder.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn claim_webhook_events(
        &self,
        endpoint: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<QueuedWebhookEvent>, StoreError> {
        // The re-checked `next_attempt_at <= $2` makes a row claimed by a concurrent
        // dispatcher (PostgreSQL re-evaluates it after the row lock) drop out.
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(
            "UPDATE webhook_outbox SET next_attempt_at = $3 \
             WHERE next_attempt_at <= $2 AND id IN (SELECT id FROM webhook_outbox \
             WHERE endpoint = $1 AND next_attempt_at <= $2 ORDER BY id LIMIT $4) \
             RETURNING id, payload, attempts",
        )
        .bind(endpoint)
        .bind(DbTime::from(now))
        .bind(DbTime::from(lease_until))
        .bind(i64::from(limit.max(1)))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut events = rows
            .iter()
            .map(|row| {
                Ok(QueuedWebhookEvent {
                    id: row.try_get("id")?,
                    payload: row.try_get("payload")?,
                    attempts: u32::try_from(row.try_get::<i32, _>("attempts")?).unwrap_or(0),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        events.sort_by_key(|event| event.id);
        Ok(events)
    }

    async fn delete_webhook_events(&self, ids: &[i64]) -> Result<(), StoreError> {
        for chunk in ids.chunks(500) {
            let mut builder = QueryBuilder::<Db>::new("DELETE FROM webhook_outbox WHERE id IN (");
            let mut list = builder.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            builder.push(")");
            builder.build().execute(&self.pool).await?;
        }
        Ok(())
    }

    async fn retry_webhook_events(
        &self,
        ids: &[i64],
        next_attempt_at: OffsetDateTime,
    ) -> Result<(), StoreError> {
        for chunk in ids.chunks(500) {
            let mut builder = QueryBuilder::<Db>::new(
                "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = ",
            );
            builder.push_bind(DbTime::from(next_attempt_at));
            builder.push(" WHERE id IN (");
            let mut list = builder.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            builder.push(")");
            builder.build().execute(&self.pool).await?;
        }
        Ok(())
    }

    async fn next_webhook_attempt(
        &self,
        endpoint: &str,
    ) -> Result<Option<OffsetDateTime>, StoreError> {
        let earliest: Option<DbTime> = sqlx::query_scalar(
            "SELECT MIN(next_attempt_at) FROM webhook_outbox WHERE endpoint = $1",
        )
        .bind(endpoint)
        .fetch_one(&self.pool)
        .await?;
        Ok(earliest.map(|t| t.0))
    }
}
