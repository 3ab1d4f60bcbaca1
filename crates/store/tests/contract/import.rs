//! Imports from lazily read files: rows are stored while the input is still being read.

use crate::document;
use std::sync::Arc;
use store::{CampaignStore, recipient_stream};

/// A reader that hands out its input one piece per `read`, lazily, and holds back the end of
/// it (a JSON array's `]`, the last JSON line) until told that rows were stored: if the import
/// waited for the whole input before inserting anything, it would never be told, and the
/// reader fails the import at the deadline.
struct HeldBackEnd {
    pieces: std::collections::VecDeque<Vec<u8>>,
    end: Option<Vec<u8>>,
    stored: std::sync::mpsc::Receiver<u64>,
    /// What the import had stored when the end was handed out.
    stored_before_end: Arc<std::sync::Mutex<Option<u64>>>,
}

impl std::io::Read for HeldBackEnd {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if self.pieces.is_empty()
            && let Some(end) = self.end.take()
        {
            // A deadline for a hang, not a measurement: the signal comes as soon as the
            // first chunk is inserted.
            let stored = self
                .stored
                .recv_timeout(std::time::Duration::from_secs(60))
                .map_err(|_| {
                    std::io::Error::other("no rows were stored before the end of the input")
                })?;
            *self.stored_before_end.lock().unwrap() = Some(stored);
            self.pieces.push_back(end);
        }
        let Some(piece) = self.pieces.front_mut() else {
            return Ok(0);
        };
        let length = piece.len().min(buffer.len());
        buffer[..length].copy_from_slice(&piece[..length]);
        piece.drain(..length);
        if piece.is_empty() {
            self.pieces.pop_front();
        }
        Ok(length)
    }
}

/// Imports 1,500 recipients (more than one 1,000-row chunk) plus one in the held-back end.
async fn rows_are_stored_before_the_input_ends(
    store: Arc<dyn CampaignStore>,
    format: campaign::RecipientFormat,
) {
    const BEFORE_END: usize = 1500;
    let line = |i: usize| format!(r#"{{"email": "lazy{i}@example.com", "first_name": "N{i}"}}"#);
    let (pieces, end): (Vec<Vec<u8>>, Vec<u8>) = match format {
        campaign::RecipientFormat::JsonArray => (
            std::iter::once("[".to_string())
                .chain((0..BEFORE_END).map(|i| format!("{},\n", line(i))))
                .map(String::into_bytes)
                .collect(),
            format!("{}\n]\n", line(BEFORE_END)).into_bytes(),
        ),
        campaign::RecipientFormat::JsonLines => (
            (0..BEFORE_END)
                .map(|i| format!("{}\n", line(i)).into_bytes())
                .collect(),
            line(BEFORE_END).into_bytes(),
        ),
        campaign::RecipientFormat::Csv => unreachable!("JSON formats only"),
    };
    let (stored_sender, stored) = std::sync::mpsc::channel();
    let stored_before_end = Arc::new(std::sync::Mutex::new(None));
    let reader = HeldBackEnd {
        pieces: pieces.into(),
        end: Some(end),
        stored,
        stored_before_end: stored_before_end.clone(),
    };
    let rows = format.read(reader).unwrap();
    let recipients = recipient_stream(rows).on_chunk_stored(move |report| {
        let _ = stored_sender.send(report.imported);
    });
    let (record, report) = store
        .create_campaign(&document("Streamed"), recipients)
        .await
        .unwrap();
    assert_eq!(
        *stored_before_end.lock().unwrap(),
        Some(1000),
        "the first chunk was inserted before the end of the input was read"
    );
    let total = BEFORE_END as u64 + 1;
    assert_eq!((report.received, report.imported), (total, total));
    assert_eq!(record.recipient_count, total as i64);
    let counts = store.delivery_counts(record.id).await.unwrap();
    assert_eq!(counts.0["pending"], total as i64);
}

pub(crate) async fn a_json_array_is_stored_while_it_is_read(store: Arc<dyn CampaignStore>) {
    rows_are_stored_before_the_input_ends(store, campaign::RecipientFormat::JsonArray).await;
}

pub(crate) async fn json_lines_are_stored_while_they_are_read(store: Arc<dyn CampaignStore>) {
    rows_are_stored_before_the_input_ends(store, campaign::RecipientFormat::JsonLines).await;
}
