//! [`AdminRepository`](crate::AdminRepository) in SQL: API keys, idempotency keys, secrets, test sends.

use super::{Db, Store};
use crate::db_types::{DbId, DbTime};
use crate::{
    AdminRepository, ApiKeyRecord, IdempotencyReservation, QuotaWindow, StoreError, TestSendRecord,
    TestSendReservation, quota_verdict,
};
use campaign::{CampaignId, EmailAddress};
use sqlx::Row;
use time::OffsetDateTime;

fn api_key_from_row(row: &<Db as sqlx::Database>::Row) -> Result<ApiKeyRecord, StoreError> {
    Ok(ApiKeyRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        secret_hash: row.try_get("secret_hash")?,
        created_at: row.try_get::<DbTime, _>("created_at")?.0,
        revoked_at: row.try_get::<Option<DbTime>, _>("revoked_at")?.map(|t| t.0),
    })
}

#[async_trait::async_trait]
impl AdminRepository for Store {
    async fn secret(&self, name: &str, candidate: &str) -> Result<String, StoreError> {
        sqlx::query("INSERT INTO service_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
            .bind(name)
            .bind(candidate)
            .execute(&self.pool)
            .await?;
        Ok(
            sqlx::query_scalar("SELECT value FROM service_secrets WHERE name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO api_keys (id, name, secret_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&key.id)
        .bind(&key.name)
        .bind(&key.secret_hash)
        .bind(DbTime::from(key.created_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, secret_hash, created_at, revoked_at FROM api_keys WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(api_key_from_row).transpose()
    }

    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        let rows = sqlx::query("SELECT id, name, secret_hash, created_at, revoked_at FROM api_keys ORDER BY created_at DESC, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(api_key_from_row).collect()
    }

    async fn revoke_api_key(&self, id: &str) -> Result<bool, StoreError> {
        let exists =
            sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1")
                .bind(id)
                .bind(DbTime::now())
                .execute(&self.pool)
                .await?
                .rows_affected();
        Ok(exists == 1)
    }

    async fn reserve_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        fingerprint: &str,
        expires_before: OffsetDateTime,
    ) -> Result<IdempotencyReservation, StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND created_at < $3",
        )
        .bind(scope)
        .bind(key)
        .bind(DbTime::from(expires_before))
        .execute(&mut *tx)
        .await?;
        // The primary key makes the reservation atomic: of concurrent requests with one
        // key exactly one inserts.
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (scope, key, fingerprint, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (scope, key) DO NOTHING",
        )
        .bind(scope)
        .bind(key)
        .bind(fingerprint)
        .bind(DbTime::now())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let reservation = if inserted == 1 {
            IdempotencyReservation::Reserved
        } else {
            let row = sqlx::query("SELECT fingerprint, status, body FROM idempotency_keys WHERE scope = $1 AND key = $2")
                .bind(scope)
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
            let status: Option<i32> = row.try_get("status")?;
            let body: Option<String> = row.try_get("body")?;
            IdempotencyReservation::Existing {
                fingerprint: row.try_get("fingerprint")?,
                response: status
                    .zip(body)
                    .map(|(status, body)| (u16::try_from(status).unwrap_or(500), body)),
            }
        };
        tx.commit().await?;
        Ok(reservation)
    }

    async fn complete_idempotency_key(
        &self,
        scope: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE idempotency_keys SET status = $3, body = $4 WHERE scope = $1 AND key = $2",
        )
        .bind(scope)
        .bind(key)
        .bind(i32::from(status))
        .bind(body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn release_idempotency_key(&self, scope: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2")
            .bind(scope)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn reserve_test_sends(
        &self,
        api_key_id: &str,
        campaign_id: CampaignId,
        addresses: &[EmailAddress],
        now: OffsetDateTime,
        quota: &[QuotaWindow],
    ) -> Result<TestSendReservation, StoreError> {
        let longest = quota
            .iter()
            .map(|window| window.window)
            .max()
            .unwrap_or_default();
        let mut tx = self.begin_write().await?;
        // Serialises the reservations of one key across processes: PostgreSQL locks the
        // key's row until commit; SQLite's write transaction is already exclusive.
        sqlx::query(locked!("SELECT id FROM api_keys WHERE id = $1"))
            .bind(api_key_id)
            .fetch_optional(&mut *tx)
            .await?;
        let earlier: Vec<DbTime> = sqlx::query_scalar(
            "SELECT sent_at FROM test_sends WHERE api_key_id = $1 AND sent_at > $2 ORDER BY sent_at",
        )
        .bind(api_key_id)
        .bind(DbTime::from(now - longest))
        .fetch_all(&mut *tx)
        .await?;
        let earlier: Vec<OffsetDateTime> = earlier.into_iter().map(|at| at.0).collect();
        if let Some((window, retry_at)) = quota_verdict(quota, &earlier, addresses.len(), now) {
            return Ok(TestSendReservation::OverQuota { window, retry_at });
        }
        let mut ids = Vec::with_capacity(addresses.len());
        for address in addresses {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO test_sends (api_key_id, campaign_id, email, sent_at) VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(api_key_id)
            .bind(DbId(campaign_id))
            .bind(address.as_str())
            .bind(DbTime::from(now))
            .fetch_one(&mut *tx)
            .await?;
            ids.push(id);
        }
        tx.commit().await?;
        Ok(TestSendReservation::Reserved(ids))
    }

    async fn test_send(&self, id: i64) -> Result<Option<TestSendRecord>, StoreError> {
        let row =
            sqlx::query("SELECT id, campaign_id, email, sent_at FROM test_sends WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|row| {
            Ok(TestSendRecord {
                id: row.try_get("id")?,
                campaign_id: row.try_get::<DbId<CampaignId>, _>("campaign_id")?.0,
                email: row.try_get("email")?,
                sent_at: row.try_get::<DbTime, _>("sent_at")?.0,
            })
        })
        .transpose()
    }
}
