//! [`SuppressionRepository`](crate::SuppressionRepository) in SQL: the suppression list and feedback events.

use super::{Db, Store};
use crate::db_types::{DbId, DbTime};
use crate::{
    FeedbackEvent, FeedbackKind, NewFeedbackEvent, StoreError, Suppression, SuppressionRepository,
};
use campaign::{CampaignId, EmailAddress};
use sqlx::{QueryBuilder, Row};
use std::collections::HashSet;
use time::OffsetDateTime;

#[async_trait::async_trait]
impl SuppressionRepository for Store {
    async fn suppressed_among(&self, email_keys: &[String]) -> Result<HashSet<String>, StoreError> {
        let mut found = HashSet::new();
        for chunk in email_keys.chunks(500) {
            let mut builder =
                QueryBuilder::<Db>::new("SELECT email_key FROM suppressions WHERE email_key IN (");
            let mut list = builder.separated(", ");
            for key in chunk {
                list.push_bind(key.as_str());
            }
            builder.push(")");
            let keys: Vec<String> = builder.build_query_scalar().fetch_all(&self.pool).await?;
            found.extend(keys);
        }
        Ok(found)
    }

    async fn suppress(&self, email: &EmailAddress, reason: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO suppressions (email_key, email, reason, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (email_key) DO NOTHING",
        )
        .bind(email.key())
        .bind(email.as_str())
        .bind(reason)
        .bind(DbTime::now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn list_suppressions(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Suppression>, StoreError> {
        let rows = sqlx::query(
            "SELECT email, reason, created_at FROM suppressions WHERE ($1 IS NULL OR email_key > $1) ORDER BY email_key LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit.clamp(1, 1000)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Suppression {
                    email: row.try_get("email")?,
                    reason: row.try_get("reason")?,
                    created_at: row.try_get::<DbTime, _>("created_at")?.0,
                })
            })
            .collect()
    }

    async fn remove_suppression(&self, email: &EmailAddress) -> Result<bool, StoreError> {
        let removed = sqlx::query("DELETE FROM suppressions WHERE email_key = $1")
            .bind(email.key())
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(removed == 1)
    }

    async fn record_feedback(&self, event: &NewFeedbackEvent) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO feedback_events (campaign_id, recipient_id, email, email_key, kind, status, action, diagnostic, occurred_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(event.campaign_id.map(DbId))
        .bind(event.recipient_id)
        .bind(event.email.as_str())
        .bind(event.email.key())
        .bind(event.kind.as_str())
        .bind(event.status.as_deref())
        .bind(event.action.as_deref())
        .bind(event.diagnostic.as_deref())
        .bind(DbTime::from(event.occurred_at))
        .execute(&mut *tx)
        .await?;
        // An attributed report also counts in the campaign's analytics, in the same
        // transaction so the bounce log and the report never disagree.
        if let Some(campaign_id) = event.campaign_id {
            let kind = match event.kind {
                FeedbackKind::HardBounce => "bounce_hard",
                FeedbackKind::SoftBounce => "bounce_soft",
                FeedbackKind::Complaint => "complaint",
            };
            let detail = match event.kind {
                FeedbackKind::Complaint => event.status.as_deref(),
                _ => event.diagnostic.as_deref().or(event.status.as_deref()),
            };
            sqlx::query(
                "INSERT INTO tracking_events (campaign_id, recipient_id, kind, detail, occurred_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(DbId(campaign_id))
            .bind(event.recipient_id)
            .bind(kind)
            .bind(detail)
            .bind(DbTime::from(event.occurred_at))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn soft_bounces_since(
        &self,
        email_key: &str,
        since: OffsetDateTime,
    ) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM feedback_events WHERE email_key = $1 AND kind = 'soft_bounce' AND occurred_at >= $2",
        )
        .bind(email_key)
        .bind(DbTime::from(since))
        .fetch_one(&self.pool)
        .await?)
    }

    async fn campaign_feedback(&self, id: CampaignId) -> Result<Vec<FeedbackEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT campaign_id, recipient_id, email, kind, status, action, diagnostic, occurred_at \
             FROM feedback_events WHERE campaign_id = $1 ORDER BY id",
        )
        .bind(DbId(id))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let kind: String = row.try_get("kind")?;
                Ok(FeedbackEvent {
                    campaign_id: row
                        .try_get::<Option<DbId<CampaignId>>, _>("campaign_id")?
                        .map(|id| id.0),
                    recipient_id: row.try_get("recipient_id")?,
                    email: row.try_get("email")?,
                    kind: kind.parse::<FeedbackKind>().map_err(StoreError::Corrupt)?,
                    status: row.try_get("status")?,
                    action: row.try_get("action")?,
                    diagnostic: row.try_get("diagnostic")?,
                    occurred_at: row.try_get::<DbTime, _>("occurred_at")?.0,
                })
            })
            .collect()
    }
}
