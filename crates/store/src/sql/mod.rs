//! The SQL both backends run, written once as ordinary Rust over a `Db` type. `sqlite.rs` and
//! `postgres.rs` each include this module (`#[path = "sql/mod.rs"]`) after declaring what
//! differs: `Db` (the sqlx database), `Store` (their store type, with `pool`, `begin_write`
//! and `ONE_STATEMENT_COMMITS`), `HOUR_OF_OCCURRED_AT`, and the `locked!` macro that adds the
//! row lock to a select. Everything else, SQL text included, is the same for both.

mod ab_tests;
mod admin;
mod campaigns;
mod deliveries;
mod email_keys;
mod recipients;
mod suppressions;
mod tracking;
mod webhooks;

use super::{Db, HOUR_OF_OCCURRED_AT, Store};
use crate::{StoreError, StoredRecipient};
use campaign::{CampaignAction, CampaignId, CampaignStatus, EmailAddress, Recipient};
use sqlx::Row;
use sqlx::types::Json;

/// `status = 'a'` or `status IN ('a', 'b')`: the states from which `action` moves a campaign
/// to `to`, asked of the transition table on [`CampaignStatus`], for the SQL of a conditional
/// status change, so that no query keeps a list of its own. The names are the table's fixed
/// identifiers, never input, so they are written into the text (one statement text per query,
/// prepared once). A change no state allows matches no row.
fn status_from(to: CampaignStatus, action: CampaignAction) -> String {
    let names: Vec<String> = CampaignStatus::sources(to, action)
        .iter()
        .map(|status| format!("'{}'", status.as_str()))
        .collect();
    match names.as_slice() {
        [] => "status IN (NULL)".to_string(),
        [one] => format!("status = {one}"),
        many => format!("status IN ({})", many.join(", ")),
    }
}

fn stored_recipient_from_row(
    row: &<Db as sqlx::Database>::Row,
    campaign_id: CampaignId,
) -> Result<StoredRecipient, StoreError> {
    let email: String = row.try_get("email")?;
    let Json(fields): Json<serde_json::Map<String, serde_json::Value>> = row.try_get("fields")?;
    let status: String = row.try_get("status")?;
    let attempts: i32 = row.try_get("attempts")?;
    Ok(StoredRecipient {
        id: row.try_get("id")?,
        campaign_id,
        recipient: Recipient {
            email: EmailAddress::parse(&email)
                .map_err(|err| StoreError::Corrupt(format!("stored address {email:?}: {err}")))?,
            fields,
        },
        status: status.parse().map_err(StoreError::Corrupt)?,
        attempts: u32::try_from(attempts).unwrap_or(0),
        variant: row
            .try_get::<Option<i32>, _>("variant")?
            .and_then(|v| u8::try_from(v).ok()),
    })
}
