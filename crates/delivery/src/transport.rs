//! The one interface the task processor sends through.

use crate::OutgoingMessage;
use crate::outcome::{Accepted, SendError};
use async_trait::async_trait;

/// Sends finished messages. Object-safe so the binary can pick SMTP or the outbox at start.
#[async_trait]
pub trait Transport: Send + Sync {
    /// Sends one message; concurrent calls are fine (the SMTP transport queues them to its
    /// connections). The error's [`SendError::class`] says whether to defer or fail it.
    async fn send(&self, message: OutgoingMessage) -> Result<Accepted, SendError>;

    /// One line for the start-up log, e.g. `smtp://relay:25, 8 connections, STARTTLS
    /// opportunistic` or `outbox at ./outbox`. Never shows a password.
    fn describe(&self) -> String;

    /// Lets queued messages finish, then closes connections politely (`QUIT`). Later sends
    /// fail with [`SendError::Closed`].
    async fn close(&self);
}
