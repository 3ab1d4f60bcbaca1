//! The webhook outbox: events waiting to be posted to their endpoints, claimed by a
//! dispatcher under a lease and retried until delivered.

use crate::StoreError;
use async_trait::async_trait;
use time::OffsetDateTime;

/// Outgoing webhook events.
#[async_trait]
pub trait WebhookOutbox: Send + Sync {
    /// Queues webhook event payloads (JSON text), one row per endpoint and payload.
    async fn enqueue_webhook_events(
        &self,
        endpoints: &[String],
        payloads: &[String],
    ) -> Result<(), StoreError>;

    /// Claims up to `limit` of an endpoint's queued events that are due at `now`, oldest first,
    /// by pushing their next attempt to `lease_until`: a second dispatcher sharing the
    /// database skips them, and a dispatcher that dies mid-send leaves them to be retried.
    async fn claim_webhook_events(
        &self,
        endpoint: &str,
        now: OffsetDateTime,
        lease_until: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<QueuedWebhookEvent>, StoreError>;

    /// Removes delivered (or abandoned) events from the outbox.
    async fn delete_webhook_events(&self, ids: &[i64]) -> Result<(), StoreError>;

    /// Counts a failed attempt on these events and sets when they are tried next.
    async fn retry_webhook_events(
        &self,
        ids: &[i64],
        next_attempt_at: OffsetDateTime,
    ) -> Result<(), StoreError>;

    /// The earliest next attempt of an endpoint's queued events, `None` when none is queued.
    async fn next_webhook_attempt(
        &self,
        endpoint: &str,
    ) -> Result<Option<OffsetDateTime>, StoreError>;
}

/// An outgoing webhook event waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedWebhookEvent {
    pub id: i64,
    /// The event's JSON text.
    pub payload: String,
    /// Failed attempts so far.
    pub attempts: u32,
}
