//! The per-message status check that makes the pause/cancel bound exact.
//!
//! A message is handed to the transport only after a read of the campaign's status that *began
//! after the message took its in-flight slot* answered `sending`. So once a pause or cancel has
//! committed (the API has acknowledged it), the only messages of this worker that can still
//! reach the server are those already past their check at that moment: at most its `in_flight`
//! slots (MAX_IN_FLIGHT), each finishing within one SMTP exchange.
//!
//! Reads are shared by every message of the campaign that this worker has waiting, across its
//! batch runs: a message that arrives while a read is running waits for the next one, so it
//! waits for at most two reads however many are in flight, and the database sees one stream of
//! reads per worker and campaign rather than one per batch run. A stop a read has seen halts
//! the runs that started before that read began; a run that starts later (after a resume)
//! does not inherit it, however the reads and the runs interleave.

use crate::ProcessorError;
use campaign::{CampaignId, CampaignStatus};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

/// One campaign's status reads, shared by the messages of a worker's batch runs of it.
struct StatusGate {
    store: Arc<dyn store::CampaignStore>,
    id: CampaignId,
    /// When the last read began and what it found (`Some`: the campaign no longer sends).
    last: tokio::sync::Mutex<Option<(Instant, Option<CampaignStatus>)>>,
    /// The latest stop a read has seen, with when that read began.
    stopped: Mutex<Option<(Instant, CampaignStatus)>>,
}

impl StatusGate {
    fn stopped_since(&self, run_started: Instant) -> Option<CampaignStatus> {
        match *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) {
            Some((began, status)) if began >= run_started => Some(status),
            _ => None,
        }
    }
}

/// A batch run's view of its campaign's gate: a stop seen by a read that began after the run
/// started is final for the run (paused or cancelled is not undone within one run), while a
/// stop from before it — the pause that a resume has since ended — is not. Cheap to clone:
/// each message of the run holds one.
#[derive(Clone)]
pub(crate) struct RunGate {
    gate: Arc<StatusGate>,
    started: Instant,
}

impl RunGate {
    /// `None` while the campaign is sending, per a read begun after `since` (a time after
    /// the run started: when the message took its in-flight slot).
    pub(crate) async fn check(
        &self,
        since: Instant,
    ) -> Result<Option<CampaignStatus>, ProcessorError> {
        if let Some(status) = self.stopped() {
            return Ok(Some(status));
        }
        let gate = &self.gate;
        let mut last = gate.last.lock().await;
        if let Some((began, found)) = *last
            && began >= since
        {
            return Ok(found);
        }
        let began = Instant::now();
        let found = campaign_stopped(gate.store.as_ref(), gate.id).await?;
        *last = Some((began, found));
        if let Some(status) = found {
            *gate.stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some((began, status));
        }
        Ok(found)
    }

    /// The status that stopped the campaign, once a read begun during this run has seen one.
    pub(crate) fn stopped(&self) -> Option<CampaignStatus> {
        self.gate.stopped_since(self.started)
    }
}

/// A worker's gates, one per campaign it is delivering. A gate lives as long as a batch run
/// holds it; the map keeps only weak references, so a finished campaign's gate goes with its
/// last run.
#[derive(Default)]
pub(crate) struct StatusGates {
    gates: Mutex<HashMap<CampaignId, Weak<StatusGate>>>,
}

impl StatusGates {
    /// The gate for a batch run of campaign `id` starting now (it has just found the campaign
    /// sending): the one this worker's other runs of it use, if any.
    pub(crate) fn get(&self, store: &Arc<dyn store::CampaignStore>, id: CampaignId) -> RunGate {
        let started = Instant::now();
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        let gate = match gates.get(&id).and_then(Weak::upgrade) {
            Some(gate) => gate,
            None => {
                gates.retain(|_, gate| gate.strong_count() > 0);
                let gate = Arc::new(StatusGate {
                    store: store.clone(),
                    id,
                    last: tokio::sync::Mutex::new(None),
                    stopped: Mutex::new(None),
                });
                gates.insert(id, Arc::downgrade(&gate));
                gate
            }
        };
        RunGate { gate, started }
    }
}

/// The campaign's status when it no longer allows sending.
async fn campaign_stopped(
    store: &dyn store::CampaignStore,
    id: CampaignId,
) -> Result<Option<CampaignStatus>, ProcessorError> {
    Ok(match store.campaign_status(id).await? {
        Some(CampaignStatus::Sending) => None,
        Some(status) => Some(status),
        None => Some(CampaignStatus::Cancelled),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use campaign::{CampaignDocument, Limits};

    async fn sending_campaign(store: &dyn store::CampaignStore) -> CampaignId {
        let json = serde_json::json!({
            "name": "Gate",
            "from": {"email": "news@shop.example"},
            "templates": {"subject": "Hi", "text": "Hello"}
        });
        let document = CampaignDocument::from_json(json.to_string().as_bytes(), &Limits::default())
            .expect("valid campaign");
        let (record, _) = store
            .create_campaign(&document, store::recipient_stream(Vec::new()))
            .await
            .expect("campaign stored");
        move_campaign(
            store,
            record.id,
            CampaignStatus::Draft,
            CampaignStatus::Sending,
        )
        .await;
        record.id
    }

    async fn move_campaign(
        store: &dyn store::CampaignStore,
        id: CampaignId,
        from: CampaignStatus,
        to: CampaignStatus,
    ) {
        assert!(
            store.transition_campaign(id, &[from], to).await.unwrap(),
            "{from} -> {to}"
        );
    }

    #[tokio::test]
    async fn a_workers_runs_share_one_gate_and_a_run_after_a_resume_ignores_the_earlier_stop() {
        let database = testkit::SqliteDatabase::create();
        let store = store::connect(&database.url).await.expect("store");
        let id = sending_campaign(store.as_ref()).await;
        let gates = StatusGates::default();

        let first_run = gates.get(&store, id);
        let second_run = gates.get(&store, id);
        assert!(
            Arc::ptr_eq(&first_run.gate, &second_run.gate),
            "runs of one campaign share their reads"
        );
        assert_eq!(first_run.check(Instant::now()).await.unwrap(), None);

        move_campaign(
            store.as_ref(),
            id,
            CampaignStatus::Sending,
            CampaignStatus::Paused,
        )
        .await;
        // A read begun after the pause sees it, and every run sharing the gate halts.
        assert_eq!(
            second_run.check(Instant::now()).await.unwrap(),
            Some(CampaignStatus::Paused)
        );
        assert_eq!(first_run.stopped(), Some(CampaignStatus::Paused));

        move_campaign(
            store.as_ref(),
            id,
            CampaignStatus::Paused,
            CampaignStatus::Sending,
        )
        .await;
        // A run started after the resume shares the gate but not the earlier stop, which the
        // halting runs keep.
        let after_resume = gates.get(&store, id);
        assert!(Arc::ptr_eq(&after_resume.gate, &first_run.gate));
        assert_eq!(after_resume.stopped(), None);
        assert_eq!(after_resume.check(Instant::now()).await.unwrap(), None);
        assert_eq!(first_run.stopped(), Some(CampaignStatus::Paused));
        assert_eq!(
            first_run.check(Instant::now()).await.unwrap(),
            Some(CampaignStatus::Paused)
        );

        drop((first_run, second_run, after_resume));
        let alone = gates.get(&store, id);
        assert_eq!(
            Arc::strong_count(&alone.gate),
            1,
            "a gate goes with its last run"
        );
    }

    #[tokio::test]
    async fn a_check_answers_from_a_read_that_began_after_the_slot_was_taken() {
        let database = testkit::SqliteDatabase::create();
        let store = store::connect(&database.url).await.expect("store");
        let id = sending_campaign(store.as_ref()).await;
        let gate = StatusGates::default().get(&store, id);
        let slot = Instant::now();
        assert_eq!(gate.check(slot).await.unwrap(), None);

        assert!(
            store
                .cancel_campaign(id, &[CampaignStatus::Sending])
                .await
                .unwrap()
        );
        // A message whose slot was taken before that read began is answered by it: the cancel
        // came later, and such a message is one of the in-flight ones the bound allows.
        assert_eq!(gate.check(slot).await.unwrap(), None);
        // One whose slot is taken after the cancel waits for a new read, which sees it.
        assert_eq!(
            gate.check(Instant::now()).await.unwrap(),
            Some(CampaignStatus::Cancelled)
        );
    }
}
