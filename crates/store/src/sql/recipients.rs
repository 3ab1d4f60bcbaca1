//! Recipients imported into a campaign: streamed in chunks into the caller's transaction, the
//! database's unique key dropping addresses already present.

use super::Db;
use crate::db_types::{DbId, DbTime};
use crate::import::{ChunkSink, ImportRow, drive};
use crate::{ImportReport, RecipientStream, StoreError};
use campaign::{CampaignId, LocalSendTime};
use sqlx::QueryBuilder;
use sqlx::types::Json;
use std::collections::HashSet;

/// Imports `recipients` into `campaign` inside `tx` and adds them to its recipient count;
/// with a local send time, each is given the zone it is released in.
pub(super) async fn import(
    tx: &mut sqlx::Transaction<'static, Db>,
    campaign: DbId<CampaignId>,
    recipients: RecipientStream<'_>,
    local_send_time: Option<&LocalSendTime>,
) -> Result<ImportReport, StoreError> {
    let report = drive(
        &mut ChunkInserter {
            tx: &mut *tx,
            campaign,
        },
        recipients,
        local_send_time,
    )
    .await?;
    add_to_recipient_count(tx, campaign, report.imported).await?;
    Ok(report)
}

struct ChunkInserter<'t> {
    tx: &'t mut sqlx::Transaction<'static, Db>,
    campaign: DbId<CampaignId>,
}

impl ChunkSink for ChunkInserter<'_> {
    async fn insert_chunk(&mut self, rows: &[ImportRow]) -> Result<HashSet<String>, StoreError> {
        let mut builder = QueryBuilder::<Db>::new(
            "INSERT INTO recipients (campaign_id, email, email_key, fields, time_zone) ",
        );
        builder.push_values(rows, |mut row, import| {
            let recipient = &import.recipient;
            row.push_bind(self.campaign)
                .push_bind(recipient.email.as_str())
                .push_bind(recipient.email.key())
                .push_bind(Json(&recipient.fields))
                .push_bind(import.time_zone.as_deref());
        });
        builder.push(" ON CONFLICT (campaign_id, email_key) DO NOTHING RETURNING email_key");
        let keys: Vec<String> = builder
            .build_query_scalar()
            .fetch_all(&mut **self.tx)
            .await?;
        Ok(keys.into_iter().collect())
    }
}

/// Adds the import's count to the campaign, inside the import's transaction.
async fn add_to_recipient_count(
    tx: &mut sqlx::Transaction<'static, Db>,
    id: DbId<CampaignId>,
    imported: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE campaigns SET recipient_count = recipient_count + $2, updated_at = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(imported as i64)
    .bind(DbTime::now())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
