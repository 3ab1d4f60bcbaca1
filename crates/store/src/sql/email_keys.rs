//! Stored email keys brought up to the rule `EmailAddress::key` follows today.

use super::Store;
use crate::StoreError;
use campaign::EmailAddress;
use sqlx::Row;

/// The rule `EmailAddress::key` follows today (see migration 0011).
const EMAIL_KEY_RULE: i64 = 2;

impl Store {
    /// Brings `email_key` columns written under an older key rule up to today's, once
    /// per database (the rule's version is kept in `email_key_rule`); several processes
    /// opening one database wait for each other on that row. Only keys holding a
    /// non-ASCII character (more octets than characters) can differ. A recipient whose new key is already taken in
    /// its campaign (one mailbox imported under two spellings) keeps its old key:
    /// nothing is deleted, and sends check suppression on the key computed afresh.
    pub(crate) async fn upgrade_email_keys(&self) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let version: i64 =
            sqlx::query_scalar(locked!("SELECT version FROM email_key_rule WHERE id = 1"))
                .fetch_one(&mut *tx)
                .await?;
        if version >= EMAIL_KEY_RULE {
            return Ok(());
        }
        // Suppressions: two spellings of one mailbox become one suppression.
        let rows = sqlx::query("SELECT email, email_key FROM suppressions WHERE length(email_key) <> octet_length(email_key)")
            .fetch_all(&mut *tx)
            .await?;
        for row in &rows {
            let old: String = row.try_get("email_key")?;
            let Some(new) = recomputed_key(&row.try_get::<String, _>("email")?, &old) else {
                continue;
            };
            sqlx::query(
                "DELETE FROM suppressions WHERE email_key = $1 AND EXISTS (SELECT 1 FROM suppressions WHERE email_key = $2)",
            )
            .bind(&old)
            .bind(&new)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE suppressions SET email_key = $2 WHERE email_key = $1")
                .bind(&old)
                .bind(&new)
                .execute(&mut *tx)
                .await?;
        }
        let rows = sqlx::query("SELECT id, email, email_key FROM recipients WHERE length(email_key) <> octet_length(email_key)")
            .fetch_all(&mut *tx)
            .await?;
        for row in &rows {
            let old: String = row.try_get("email_key")?;
            let Some(new) = recomputed_key(&row.try_get::<String, _>("email")?, &old) else {
                continue;
            };
            sqlx::query(
                "UPDATE recipients SET email_key = $2 WHERE id = $1 AND NOT EXISTS \
                 (SELECT 1 FROM recipients other WHERE other.campaign_id = recipients.campaign_id AND other.email_key = $2)",
            )
            .bind(row.try_get::<i64, _>("id")?)
            .bind(&new)
            .execute(&mut *tx)
            .await?;
        }
        let rows = sqlx::query("SELECT id, email, email_key FROM feedback_events WHERE length(email_key) <> octet_length(email_key)")
            .fetch_all(&mut *tx)
            .await?;
        for row in &rows {
            let old: String = row.try_get("email_key")?;
            let Some(new) = recomputed_key(&row.try_get::<String, _>("email")?, &old) else {
                continue;
            };
            sqlx::query("UPDATE feedback_events SET email_key = $2 WHERE id = $1")
                .bind(row.try_get::<i64, _>("id")?)
                .bind(&new)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE email_key_rule SET version = $1 WHERE id = 1")
            .bind(EMAIL_KEY_RULE)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Today's key of a stored address, when it differs from the stored one. An address
/// today's parser refuses (an invisible character) keeps its key: it is never sent.
fn recomputed_key(email: &str, stored_key: &str) -> Option<String> {
    let key = EmailAddress::parse(email).ok()?.key();
    (key != stored_key).then_some(key)
}
