//! Importing recipients: streamed in chunks into one transaction, de-duplicated by the
//! database's unique key, all or nothing.

use crate::{MAX_REPORTED_ROW_ERRORS, StoreError};
use campaign::{LocalSendTime, Recipient, RecipientZone, RowError};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use serde::Serialize;
use std::collections::HashSet;
use std::future::Future;

/// Recipients as they are read (from a request body, a file, a generator), each row either a
/// recipient or the reason it is unusable. The import pulls rows as it stores them, so a
/// source that reads lazily (a file, a request body) is never held whole.
pub struct RecipientStream<'a> {
    rows: BoxStream<'a, Result<Recipient, RowError>>,
    on_chunk_stored: Option<ChunkStored<'a>>,
}

/// Told the report so far each time a chunk of rows has been inserted (not yet committed).
type ChunkStored<'a> = Box<dyn FnMut(&ImportReport) + Send + 'a>;

impl<'a> RecipientStream<'a> {
    /// Rows from an asynchronous source (a channel fed by a parser on another thread).
    pub fn new(rows: impl Stream<Item = Result<Recipient, RowError>> + Send + 'a) -> Self {
        RecipientStream {
            rows: rows.boxed(),
            on_chunk_stored: None,
        }
    }

    /// Calls `observer` after every chunk the import inserts, with the report up to that
    /// chunk: progress for a long import, and the evidence that rows are stored while the
    /// source is still being read.
    pub fn on_chunk_stored(mut self, observer: impl FnMut(&ImportReport) + Send + 'a) -> Self {
        self.on_chunk_stored = Some(Box::new(observer));
        self
    }
}

/// A stream over rows an iterator yields: recipients in memory (inline recipients), or a
/// reader that parses a file as the import asks for rows.
pub fn recipient_stream<'a, I>(rows: I) -> RecipientStream<'a>
where
    I: IntoIterator<Item = Result<Recipient, RowError>>,
    I::IntoIter: Send + 'a,
{
    RecipientStream::new(futures::stream::iter(rows))
}

/// Rows inserted per statement: large enough to amortise the round trip, small enough to stay
/// below both backends' bind-parameter limits and to keep memory flat.
pub(crate) const CHUNK_ROWS: usize = 1000;
/// Duplicates (and unrecognised time zones) listed in a report; the rest are only counted.
const MAX_LISTED_ROWS: usize = 100;

/// A recipient that was not added because its address (compared case-insensitively) was
/// already in the campaign or earlier in the same import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Duplicate {
    /// 1-based position in the import.
    pub row: u64,
    pub email: String,
}

/// A recipient whose time zone field held something that is not a known IANA zone: it is
/// imported and released in the campaign's fallback zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct UnrecognisedTimeZone {
    /// 1-based position in the import.
    pub row: u64,
    pub email: String,
    /// The field's value as it was given.
    pub value: String,
    /// The zone used instead (the campaign's fallback).
    pub used: String,
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
    /// With a local send time: recipients whose time zone field was not a known zone and
    /// who fall back to the campaign's fallback zone.
    #[serde(skip_serializing_if = "is_zero")]
    pub unrecognised_time_zones: u64,
    /// The first of them, for the person fixing the list.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unrecognised_time_zone_rows: Vec<UnrecognisedTimeZone>,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

/// One recipient ready to insert: its position in the import, and with a local send time the
/// IANA zone it is released in.
pub(crate) struct ImportRow {
    pub row: u64,
    pub recipient: Recipient,
    pub time_zone: Option<String>,
    /// The field's value when it was not a known zone (`time_zone` is then the fallback).
    pub unrecognised_time_zone: Option<String>,
}

/// Where chunks go: one backend's open transaction.
pub(crate) trait ChunkSink {
    /// Inserts the recipients, skipping addresses already present, and returns the email
    /// keys that were inserted.
    fn insert_chunk(
        &mut self,
        rows: &[ImportRow],
    ) -> impl Future<Output = Result<HashSet<String>, StoreError>> + Send;
}

/// Reads the whole stream, inserting chunk by chunk while every row is good. After the first
/// bad row nothing more is inserted, but reading goes on so the error can say how many rows
/// are bad; the caller then rolls the transaction back. With a `local_send_time`, each
/// recipient's zone is resolved here, the one place every import passes.
pub(crate) async fn drive<S: ChunkSink + Send>(
    sink: &mut S,
    stream: RecipientStream<'_>,
    local_send_time: Option<&LocalSendTime>,
) -> Result<ImportReport, StoreError> {
    let RecipientStream {
        rows: mut stream,
        mut on_chunk_stored,
    } = stream;
    let mut report = ImportReport::default();
    let mut bad_rows: Vec<RowError> = Vec::new();
    let mut bad_total: u64 = 0;
    let mut chunk: Vec<ImportRow> = Vec::with_capacity(CHUNK_ROWS);

    while let Some(row) = stream.next().await {
        report.received += 1;
        match row {
            Ok(recipient) if bad_total == 0 => {
                let (time_zone, unrecognised_time_zone) =
                    match local_send_time.map(|local| local.zone_for(&recipient.fields)) {
                        Some(RecipientZone { zone, unrecognised }) => (Some(zone), unrecognised),
                        None => (None, None),
                    };
                chunk.push(ImportRow {
                    row: report.received,
                    recipient,
                    time_zone,
                    unrecognised_time_zone,
                });
                if chunk.len() == CHUNK_ROWS {
                    insert(sink, &mut chunk, &mut report, &mut on_chunk_stored).await?;
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
    insert(sink, &mut chunk, &mut report, &mut on_chunk_stored).await?;
    Ok(report)
}

async fn insert<S: ChunkSink>(
    sink: &mut S,
    chunk: &mut Vec<ImportRow>,
    report: &mut ImportReport,
    on_chunk_stored: &mut Option<ChunkStored<'_>>,
) -> Result<(), StoreError> {
    if chunk.is_empty() {
        return Ok(());
    }
    // Duplicates inside one chunk are dropped here so each statement inserts distinct keys;
    // duplicates of rows stored earlier are found by the unique key (ON CONFLICT DO NOTHING).
    let mut seen = HashSet::with_capacity(chunk.len());
    let mut unique = Vec::with_capacity(chunk.len());
    for row in chunk.drain(..) {
        if seen.insert(row.recipient.email.key()) {
            unique.push(row);
        } else {
            note_duplicate(report, row.row, &row.recipient);
        }
    }
    let inserted = sink.insert_chunk(&unique).await?;
    for row in &unique {
        if inserted.contains(&row.recipient.email.key()) {
            report.imported += 1;
            // Reported for imported rows only: a duplicate's zone is not used.
            if let (Some(value), Some(used)) = (&row.unrecognised_time_zone, &row.time_zone) {
                report.unrecognised_time_zones += 1;
                if report.unrecognised_time_zone_rows.len() < MAX_LISTED_ROWS {
                    report
                        .unrecognised_time_zone_rows
                        .push(UnrecognisedTimeZone {
                            row: row.row,
                            email: row.recipient.email.to_string(),
                            value: value.clone(),
                            used: used.clone(),
                        });
                }
            }
        } else {
            note_duplicate(report, row.row, &row.recipient);
        }
    }
    if let Some(observer) = on_chunk_stored.as_mut() {
        observer(report);
    }
    Ok(())
}

fn note_duplicate(report: &mut ImportReport, row: u64, recipient: &Recipient) {
    report.duplicates += 1;
    if report.duplicate_rows.len() < MAX_LISTED_ROWS {
        report.duplicate_rows.push(Duplicate {
            row,
            email: recipient.email.to_string(),
        });
    }
}
