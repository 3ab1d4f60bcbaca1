//! Tracking events on their way to the store, written in batches by one task.

use std::sync::Arc;
use std::time::Duration;

use store::{CampaignStore, StoreError, TrackingEvent};
use tokio::sync::{mpsc, oneshot};

enum Message {
    Event(TrackingEvent),
    /// Answered once everything queued before it is stored (or given up on).
    Flush(oneshot::Sender<()>),
}

/// Tracking events on their way to the store. Callers hand an event over and return; one
/// writer task stores whatever has queued up with one multi-row insert, so a burst of pixel
/// hits costs a few transactions, not one each.
#[derive(Clone)]
pub struct TrackingEventRecorder {
    sender: mpsc::Sender<Message>,
}

/// Events that may wait for the writer; beyond it callers wait (back-pressure, nothing lost).
const QUEUE: usize = 100_000;
/// The most events stored in one transaction.
const BATCH: usize = 2_000;

impl TrackingEventRecorder {
    /// Starts the writer task on the current tokio runtime. It ends when every recorder is
    /// dropped, after storing what was queued.
    pub fn start(store: Arc<dyn CampaignStore>) -> TrackingEventRecorder {
        let (sender, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(write_events(store, receiver));
        TrackingEventRecorder { sender }
    }

    /// Queues one tracking event for the writer.
    pub async fn record(&self, event: TrackingEvent) {
        if self.sender.send(Message::Event(event)).await.is_err() {
            tracing::error!("tracking event lost: the event writer has stopped");
        }
    }

    /// Waits until every event recorded before this call is stored (shutdown, tests).
    pub async fn flush(&self) {
        let (done, stored) = oneshot::channel();
        if self.sender.send(Message::Flush(done)).await.is_ok() {
            let _ = stored.await;
        }
    }
}

async fn write_events(store: Arc<dyn CampaignStore>, mut receiver: mpsc::Receiver<Message>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut flushes = Vec::new();
    while let Some(first) = receiver.recv().await {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Event(event) => batch.push(event),
                Message::Flush(done) => flushes.push(done),
            }
            if batch.len() < BATCH {
                next = receiver.try_recv().ok();
            }
        }
        store_batch(store.as_ref(), &batch).await;
        batch.clear();
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Stores a batch, retrying while the database is unreachable. Any other error is about
/// some row (say, its campaign was deleted meanwhile): the rows are then stored one by one
/// so only the bad ones are dropped, with a log line each.
async fn store_batch(store: &dyn CampaignStore, batch: &[TrackingEvent]) {
    let mut delay = Duration::from_millis(100);
    loop {
        match store.record_tracking_events(batch).await {
            Ok(()) => return,
            Err(StoreError::Unavailable(err)) => {
                tracing::warn!(
                    events = batch.len(),
                    "storing tracking events failed, retrying in {delay:?}: {err}"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(err) if batch.len() > 1 => {
                tracing::warn!(
                    events = batch.len(),
                    "storing tracking events failed, storing them one by one: {err}"
                );
                for event in batch {
                    Box::pin(store_batch(store, std::slice::from_ref(event))).await;
                }
                return;
            }
            Err(err) => {
                tracing::error!(event = ?batch.first(), "tracking event dropped: {err}");
                return;
            }
        }
    }
}
