//! Importing recipients: streamed in chunks into one transaction, de-duplicated by the
//! database's unique key, all or nothing.

use crate::{MAX_REPORTED_ROW_ERRORS, StoreError};
use campaign::{Recipient, RowError};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Serialize;
use std::collections::HashSet;
use std::future::Future;

/// Recipients as they are read (from a request body, a file, a generator), each row either a
/// recipient or the reason it is unusable.
pub type RecipientStream<'a> = BoxStream<'a, Result<Recipient, RowError>>;

/// A stream over recipients already in memory (a JSON array, inline recipients).
pub fn recipient_stream<'a, I>(rows: I) -> RecipientStream<'a>
where
    I: IntoIterator<Item = Result<Recipient, RowError>>,
    I::IntoIter: Send + 'a,
{
    futures::stream::iter(rows).boxed()
}

/// Rows inserted per statement: large enough to amortise the round trip, small enough to stay
/// below both backends' bind-parameter limits and to keep memory flat.
pub(crate) const CHUNK_ROWS: usize = 1000;
/// Duplicates listed in a report; the rest are only counted.
const MAX_REPORTED_DUPLICATES: usize = 100;

/// A recipient that was not added because its address (compared case-insensitively) was
/// already in the campaign or earlier in the same import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Duplicate {
    /// 1-based position in the import.
    pub row: u64,
    pub email: String,
}

/// The outcome of an import.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ImportReport {
    /// Rows read.
    pub received: u64,
    /// Recipients added.
    pub imported: u64,
    /// Rows skipped as duplicates.
    pub duplicates: u64,
    /// The first duplicates, for the person fixing the list.
    pub duplicate_rows: Vec<Duplicate>,
}

/// Where chunks go: one backend's open transaction.
pub(crate) trait ChunkSink {
    /// Inserts the recipients, skipping addresses already present, and returns the email
    /// keys that were inserted.
    fn insert_chunk(
        &mut self,
        rows: &[(u64, Recipient)],
    ) -> impl Future<Output = Result<HashSet<String>, StoreError>> + Send;
}

/// Reads the whole stream, inserting chunk by chunk while every row is good. After the first
/// bad row nothing more is inserted, but reading goes on so the error can say how many rows
/// are bad; the caller then rolls the transaction back.
pub(crate) async fn drive<S: ChunkSink + Send>(
    sink: &mut S,
    mut stream: RecipientStream<'_>,
) -> Result<ImportReport, StoreError> {
    let mut report = ImportReport::default();
    let mut bad_rows: Vec<RowError> = Vec::new();
    let mut bad_total: u64 = 0;
    let mut chunk: Vec<(u64, Recipient)> = Vec::with_capacity(CHUNK_ROWS);

    while let Some(row) = stream.next().await {
        report.received += 1;
        match row {
            Ok(recipient) if bad_total == 0 => {
                chunk.push((report.received, recipient));
                if chunk.len() == CHUNK_ROWS {
                    insert(sink, &mut chunk, &mut report).await?;
                }
            }
            Ok(_) => {}
            Err(err) => {
                bad_total += 1;
                if bad_rows.len() < MAX_REPORTED_ROW_ERRORS {
                    bad_rows.push(err);
                }
            }
        }
    }
    if bad_total > 0 {
        return Err(StoreError::InvalidRecipients {
            rows: bad_rows,
            total: bad_total,
        });
    }
    insert(sink, &mut chunk, &mut report).await?;
    Ok(report)
}

async fn insert<S: ChunkSink>(
    sink: &mut S,
    chunk: &mut Vec<(u64, Recipient)>,
    report: &mut ImportReport,
) -> Result<(), StoreError> {
    if chunk.is_empty() {
        return Ok(());
    }
    // Duplicates inside one chunk are dropped here so each statement inserts distinct keys;
    // duplicates of rows stored earlier are found by the unique key (ON CONFLICT DO NOTHING).
    let mut seen = HashSet::with_capacity(chunk.len());
    let mut unique = Vec::with_capacity(chunk.len());
    for (row, recipient) in chunk.drain(..) {
        if seen.insert(recipient.email.key()) {
            unique.push((row, recipient));
        } else {
            note_duplicate(report, row, &recipient);
        }
    }
    let inserted = sink.insert_chunk(&unique).await?;
    for (row, recipient) in &unique {
        if inserted.contains(&recipient.email.key()) {
            report.imported += 1;
        } else {
            note_duplicate(report, *row, recipient);
        }
    }
    Ok(())
}

fn note_duplicate(report: &mut ImportReport, row: u64, recipient: &Recipient) {
    report.duplicates += 1;
    if report.duplicate_rows.len() < MAX_REPORTED_DUPLICATES {
        report.duplicate_rows.push(Duplicate {
            row,
            email: recipient.email.to_string(),
        });
    }
}
