//! Delivery: sending built messages and what came of them.
//!
//! For now the transport layer: the [`Transport`] trait, the SMTP transport (long-lived
//! TCP_NODELAY connections with precise temporary/permanent classification), the outbox
//! transport. The task processor builds on these; the sending rates live in the `rates`
//! crate, which wraps a transport.

pub mod config;
pub mod outbox;
pub mod outcome;
pub mod smtp;
pub mod transport;

pub use config::{ConfigError, TransportConfig, transport_from_config};
// The message type is the MIME writer's own: what `message` builds is what a transport sends.
pub use message::{Envelope, EnvelopeError, OutgoingMessage};
pub use outbox::OutboxTransport;
pub use outcome::{Accepted, FailureClass, RecipientRefused, Reply, SendError, Stage};
pub use smtp::SmtpTransport;
pub use smtp::config::{Credentials, Security, SmtpConfig, Timeouts};
pub use transport::Transport;
