//! Start-up of the commands that deliver or serve the API (`serve`, `api`, `worker`,
//! `campaign-processor`, `send`): what they share is built here once — links, transport and
//! webhook events over an opened store and task repository — and this is the one place that
//! wires a task processor's `processor::Services` and the API's `api::AppState`.

use crate::config::{ApiArgs, LinkArgs, TransportArgs};
use std::sync::Arc;
use store::CampaignStore;
use tasks::TaskRepository;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What a delivering or API-serving process works with, built once by [`Components::build`].
pub struct Components {
    pub store: Arc<dyn CampaignStore>,
    pub tasks: Arc<dyn TaskRepository>,
    pub transport: Arc<dyn delivery::Transport>,
    pub links: Arc<tracking::Links>,
    pub events: webhooks::EventSink,
    pub dkim: Option<Arc<message::DkimSigner>>,
}

impl Components {
    /// Builds the links (tracking keys from the configuration or the store), the transport,
    /// and the webhook dispatcher, which runs until `webhooks_stop`; the caller joins the
    /// dispatcher (if any) after its task processor has stopped, so no event is lost.
    /// The transport keeps the sending rates shared through `database`.
    pub async fn build(
        store: Arc<dyn CampaignStore>,
        tasks: Arc<dyn TaskRepository>,
        link_args: &LinkArgs,
        transport_args: &TransportArgs,
        dkim: Option<Arc<message::DkimSigner>>,
        webhooks_stop: CancellationToken,
        database: &store::Database,
    ) -> anyhow::Result<(Components, Option<webhooks::Dispatcher>)> {
        let links = link_args.links(store.as_ref()).await?;
        let transport = transport_args.transport(database)?;
        let (events, dispatcher) = link_args.webhooks.start(store.clone(), webhooks_stop)?;
        Ok((
            Components {
                store,
                tasks,
                transport,
                links: Arc::new(links),
                events,
                dkim,
            },
            dispatcher,
        ))
    }

    /// A task processor over these components (logged as started by `role`); `waker` lets a
    /// campaign queued in this process wake it at once.
    pub fn task_processor(
        &self,
        role: &str,
        config: processor::WorkerConfig,
        max_batch_size: u32,
        waker: Option<Arc<Notify>>,
    ) -> processor::Worker {
        let services = processor::Services {
            store: self.store.clone(),
            tasks: self.tasks.clone(),
            transport: self.transport.clone(),
            links: self.links.clone(),
            message_settings: message::MessageSettings::default(),
            dkim: self.dkim.clone(),
            max_batch_size,
            events: self.events.clone(),
            clock: Arc::new(tasks::SystemClock),
        };
        let worker = processor::Worker::new(config, services, waker);
        log_worker(role, &worker, self.transport.as_ref());
        worker
    }

    /// The API over these components; its transport carries test sends.
    pub fn api_state(&self, api_args: &ApiArgs) -> api::AppState {
        api::AppState {
            transport: Some(self.transport.clone()),
            dkim: self.dkim.clone(),
            events: self.events.clone(),
            links: self.links.clone(),
            engagement: tracking::Engagement::start(
                self.store.clone(),
                self.links.keys().clone(),
                self.events.clone(),
            ),
            message_settings: message::MessageSettings::default(),
            store: self.store.clone(),
            tasks: self.tasks.clone(),
            settings: api::ApiSettings {
                limits: api_args.limits.limits(),
                max_body_bytes: api_args.max_body_bytes,
                max_import_bytes: api_args.max_import_bytes,
                max_recipients_per_request: api_args.max_recipients_per_request,
                rate_limit: api_args.rate_limit(),
                test_send_quota: api::TestSendQuota {
                    per_minute: api_args.test_send_per_minute,
                    per_day: api_args.test_send_per_day,
                },
            },
            bounces: api_args.bounces.settings(),
        }
    }
}

fn log_worker(role: &str, worker: &processor::Worker, transport: &dyn delivery::Transport) {
    let config = worker.config();
    tracing::info!(
        role,
        worker_id = %config.worker_id,
        transport = %transport.describe(),
        in_flight = config.in_flight,
        tasks = config.max_tasks,
        check_interval = ?config.check_interval,
        lease = ?config.lease,
        runtime_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "task processor started"
    );
}
