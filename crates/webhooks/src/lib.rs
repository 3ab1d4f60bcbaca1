//! Outgoing event webhooks: sent, failed, bounced, complained, opened, clicked and
//! unsubscribed events, delivered in signed batches to the endpoints in WEBHOOK_URLS.
//!
//! The path of an event:
//! 1. A producer (the task processor after an outcome is committed, the bounce intake, the
//!    tracking endpoints) calls [`EventSink::emit`]. It never waits: the event goes into a
//!    bounded channel, and when that is full it is written to the outbox by a detached task
//!    instead (counted in [`EventSink::spilled`]), so delivery never slows for webhooks and
//!    nothing is dropped.
//! 2. The spooler drains the channel into the `webhook_outbox` table, one row per endpoint
//!    and event, in one transaction per batch: from here on an event survives restarts.
//! 3. One sender per endpoint claims up to [`WebhookConfig::batch_size`] due rows (a lease,
//!    so several processes sharing the database never send the same row at once), POSTs
//!    them as one JSON document, deletes them on a 2xx, and otherwise retries them with
//!    exponential backoff until [`WebhookConfig::max_attempts`].
//!
//! Delivery is at least once: a receiver deduplicates by the event's `id`.
//!
//! # Signature
//!
//! Each request carries `Webhook-Timestamp: <unix seconds>` and
//! `Webhook-Signature: v1=<hex HMAC-SHA256(WEBHOOK_SECRET, "<timestamp>.<body>")>`. A
//! receiver recomputes the HMAC over the timestamp, a dot and the raw body bytes, compares in
//! constant time, and rejects timestamps far from its clock (replays); [`verify`] does exactly
//! that.

mod dispatcher;
mod event;
mod signature;

pub use dispatcher::{Dispatcher, EventSink, StartError, WebhookConfig};
pub use event::{Event, EventKind};
pub use signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER, VerifyError, sign, verify};
