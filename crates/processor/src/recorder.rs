//! Group commit of delivery outcomes.
//!
//! Every sent message's outcome must be committed before the message's in-flight permit is
//! released (that is what bounds duplicates after a crash), but one commit per message would
//! cap a worker at the database's commit rate. The recorder commits whatever outcomes are
//! waiting in one transaction and then tells each waiting sender, so with N messages in
//! flight a commit usually carries several of them.

use std::sync::Arc;
use std::time::Duration;
use store::{CampaignStore, DeliveryOutcome};
use tokio::sync::{mpsc, oneshot};

/// Outcomes per transaction at most; more wait for the next commit.
const MAX_PER_COMMIT: usize = 1000;

/// A handle to the worker's outcome writer. Cloning it is cheap.
#[derive(Clone)]
pub struct Recorder {
    queue: mpsc::UnboundedSender<(DeliveryOutcome, oneshot::Sender<()>)>,
}

/// The recorder's task ended (the runtime is shutting down).
#[derive(Debug, thiserror::Error)]
#[error("the outcome recorder has stopped")]
pub struct RecorderStopped;

impl Recorder {
    /// Starts the writer task. It lives until every handle is dropped and the queue is empty.
    pub fn start(store: Arc<dyn CampaignStore>) -> Recorder {
        let (queue, mut incoming) =
            mpsc::unbounded_channel::<(DeliveryOutcome, oneshot::Sender<()>)>();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            let mut waiting = Vec::new();
            while let Some((outcome, done)) = incoming.recv().await {
                outcomes.push(outcome);
                waiting.push(done);
                while outcomes.len() < MAX_PER_COMMIT {
                    match incoming.try_recv() {
                        Ok((outcome, done)) => {
                            outcomes.push(outcome);
                            waiting.push(done);
                        }
                        Err(_) => break,
                    }
                }
                commit(store.as_ref(), &outcomes).await;
                outcomes.clear();
                for done in waiting.drain(..) {
                    let _ = done.send(());
                }
            }
        });
        Recorder { queue }
    }

    /// Records one outcome and returns once it is committed.
    pub async fn record(&self, outcome: DeliveryOutcome) -> Result<(), RecorderStopped> {
        let (done, committed) = oneshot::channel();
        self.queue
            .send((outcome, done))
            .map_err(|_| RecorderStopped)?;
        committed.await.map_err(|_| RecorderStopped)
    }
}

/// Commits, retrying while the database is unreachable: an outcome is never dropped, and
/// senders wait (so no new mail goes out) until the database is back.
async fn commit(store: &dyn CampaignStore, outcomes: &[DeliveryOutcome]) {
    let mut wait = Duration::from_millis(100);
    loop {
        match store.record_outcomes(outcomes).await {
            Ok(()) => return,
            Err(err) => {
                tracing::warn!(error = %err, outcomes = outcomes.len(), retry_in = ?wait, "cannot record delivery outcomes; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}
