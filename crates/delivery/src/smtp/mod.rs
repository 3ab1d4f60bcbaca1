//! The SMTP transport: `SMTP_CONNECTIONS` long-lived connections, each owned by one sender
//! task and fed from a shared queue.
//!
//! Owning the connections (rather than lettre's pool, whose `max_size` caps idle connections,
//! not open ones) bounds what the server sees to exactly N sessions, and a crash can leave at
//! most one message in doubt per connection.

pub mod config;
mod connection;
mod data;
mod tls;

use crate::OutgoingMessage;
use crate::config::ConfigError;
use crate::outcome::{Accepted, SendError, Stage};
use crate::transport::Transport;
use async_trait::async_trait;
use config::SmtpConfig;
use connection::{Connection, Settings};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

struct Job {
    message: OutgoingMessage,
    reply: oneshot::Sender<Result<Accepted, SendError>>,
}

pub struct SmtpTransport {
    settings: Arc<Settings>,
    /// `None` once closed; senders leave when the queue is empty and this is dropped.
    queue: Mutex<Option<flume::Sender<Job>>>,
    senders: tokio::sync::Mutex<Vec<JoinHandle<()>>>,
}

impl SmtpTransport {
    /// Starts `config.connections` sender tasks on the current tokio runtime. Connections are
    /// opened on first use, so an unreachable server defers messages instead of failing start.
    pub fn new(config: SmtpConfig) -> Result<SmtpTransport, ConfigError> {
        if config.connections == 0 {
            return Err(ConfigError::Connections);
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        let connections = config.connections;
        let settings = Arc::new(Settings::new(config)?);
        // Room for one waiting job per sender: enough to keep every connection busy while the
        // callers' backpressure stays in the callers.
        let (queue, jobs) = flume::bounded(connections);
        let senders = (0..connections)
            .map(|index| runtime.spawn(run_sender(index, settings.clone(), jobs.clone())))
            .collect();
        Ok(SmtpTransport {
            settings,
            queue: Mutex::new(Some(queue)),
            senders: tokio::sync::Mutex::new(senders),
        })
    }

    pub fn config(&self) -> &SmtpConfig {
        &self.settings.config
    }
}

async fn run_sender(index: usize, settings: Arc<Settings>, jobs: flume::Receiver<Job>) {
    let mut connection: Option<Connection> = None;
    while let Ok(job) = jobs.recv_async().await {
        if job.reply.is_closed() {
            // The caller gave up before the message left; sending it now would deliver a
            // message whose outcome nobody records.
            continue;
        }
        let result = deliver(&settings, &mut connection, &job.message).await;
        if let Err(err) = &result {
            tracing::debug!(sender = index, error = %err, "message not accepted");
        }
        if job.reply.send(result).is_err() {
            tracing::warn!(
                sender = index,
                campaign = job.message.campaign_id.as_deref().unwrap_or(""),
                recipient = job.message.recipient_id.as_deref().unwrap_or(""),
                "caller went away before hearing the outcome of its message"
            );
        }
    }
    if let Some(connection) = connection {
        connection.quit(&settings).await;
    }
}

/// Sends on the sender's connection, opening one if there is none. A failed connection is
/// dropped and its message reported (temporary); the next message opens a new one.
async fn deliver(
    settings: &Settings,
    slot: &mut Option<Connection>,
    message: &OutgoingMessage,
) -> Result<Accepted, SendError> {
    let reused = slot.is_some();
    match attempt(settings, slot, message).await {
        Err(error) if reused && slot.is_none() && closed_while_idle(&error) => {
            // The server dropped the idle connection (postfix does after 300 s); the reply to
            // MAIL FROM was the first thing read, and only the envelope (pipelined: MAIL, RCPT,
            // DATA) had been sent, no content: one retry on a fresh connection cannot
            // duplicate the message.
            tracing::debug!(error = %error, "idle connection was closed by the server; reconnecting");
            attempt(settings, slot, message).await
        }
        result => result,
    }
}

fn closed_while_idle(error: &SendError) -> bool {
    match error {
        SendError::ConnectionLost {
            stage: Stage::MailFrom,
            ..
        } => true,
        SendError::TransientReply {
            stage: Stage::MailFrom,
            reply,
        } => reply.code == 421,
        _ => false,
    }
}

async fn attempt(
    settings: &Settings,
    slot: &mut Option<Connection>,
    message: &OutgoingMessage,
) -> Result<Accepted, SendError> {
    let connection = match slot {
        Some(connection) => connection,
        None => slot.insert(Connection::open(settings).await?),
    };
    match connection.send(message, settings).await {
        Ok(accepted) => Ok(accepted),
        Err(failure) => {
            if !failure.connection_usable {
                *slot = None;
            }
            Err(failure.error)
        }
    }
}

#[async_trait]
impl Transport for SmtpTransport {
    async fn send(&self, message: OutgoingMessage) -> Result<Accepted, SendError> {
        let queue = self
            .queue
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
            .ok_or(SendError::Closed)?;
        let (reply, outcome) = oneshot::channel();
        queue
            .send_async(Job { message, reply })
            .await
            .map_err(|_| SendError::Closed)?;
        drop(queue);
        outcome.await.unwrap_or_else(|_| {
            // Only a panicking sender drops a job; the message may have gone out.
            Err(SendError::ConnectionLost {
                stage: Stage::Message,
                detail: "the sender task stopped".to_string(),
            })
        })
    }

    fn describe(&self) -> String {
        self.settings.config.describe()
    }

    async fn close(&self) {
        self.queue
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        let senders = std::mem::take(&mut *self.senders.lock().await);
        for sender in senders {
            if let Err(err) = sender.await {
                tracing::warn!(error = %err, "SMTP sender task ended abnormally");
            }
        }
    }
}
