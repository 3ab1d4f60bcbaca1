//! What became of one message: accepted with the server's reply, or a failure the worker
//! records as deferred (temporary, retried) or failed (permanent).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A server reply: the three-digit code and its text (lines joined by a space), e.g.
/// `250` / `2.0.0 Ok: queued as 4Xq1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.text.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{} {}", self.code, self.text)
        }
    }
}

/// A message the server (or the outbox) took responsibility for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The final reply, e.g. `250 2.0.0 Ok: queued as …`; for the outbox, where the file is.
    pub reply: Reply,
    /// Recipients of this envelope the server refused while accepting others. Empty for the
    /// usual one-recipient envelope, which either is accepted or fails as a whole.
    pub refused: Vec<RecipientRefused>,
}

/// One recipient the server refused at `RCPT TO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientRefused {
    pub address: String,
    pub error: SendError,
}

/// How the worker should treat a message that was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Try again later (4xx, connection trouble, timeout): the recipient is deferred.
    Temporary,
    /// Sending the same message again will not help (5xx): the recipient has failed.
    Permanent,
}

/// The step of the SMTP session at which a failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Opening the TCP connection (and, for `smtps://`, the TLS handshake).
    Connect,
    /// The server's greeting and our `EHLO`.
    Greeting,
    /// `STARTTLS` and its handshake.
    StartTls,
    /// `AUTH`.
    Auth,
    /// `MAIL FROM`.
    MailFrom,
    /// `RCPT TO`.
    RcptTo,
    /// The `DATA` command, before any content is sent.
    Data,
    /// The message content and the final `.`; a failure here may follow delivery.
    Message,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Greeting => "greeting/EHLO",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::MailFrom => "MAIL FROM",
            Stage::RcptTo => "RCPT TO",
            Stage::Data => "DATA",
            Stage::Message => "end of data",
        })
    }
}

/// Why a message was not accepted. [`SendError::class`] tells the worker whether to defer or
/// fail the recipient; every variant keeps what the server said, for the delivery row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The server answered a transaction command with a 4xx reply: it may accept later.
    #[error("{stage}: temporary failure: {reply}")]
    TransientReply { stage: Stage, reply: Reply },
    /// The server answered a transaction command with a 5xx reply: it will not accept this.
    #[error("{stage}: permanent failure: {reply}")]
    PermanentReply { stage: Stage, reply: Reply },
    /// The server refused the session itself (greeting, EHLO, STARTTLS, AUTH), whatever the
    /// code: a matter of this connection or our configuration, not of the message, so temporary.
    #[error("{stage}: session refused: {reply}")]
    SessionRefused { stage: Stage, reply: Reply },
    /// No connection could be made (refused, unreachable, name lookup, TLS handshake).
    #[error("cannot connect to {server}: {detail}")]
    Connect { server: String, detail: String },
    /// The session could not go on: TLS required but not offered, a TLS handshake or
    /// certificate failure, no usable AUTH mechanism, a reply that is not SMTP.
    #[error("{stage}: {detail}")]
    Protocol { stage: Stage, detail: String },
    /// The connection broke (reset, closed, unreadable reply) during the given step.
    #[error("{stage}: connection lost: {detail}")]
    ConnectionLost { stage: Stage, detail: String },
    /// The step took longer than its timeout; the connection was dropped.
    #[error("{stage}: no answer within {after:?}")]
    Timeout { stage: Stage, after: Duration },
    /// Every recipient of a multi-recipient envelope was refused; each with its own reason.
    #[error("all {} recipients refused", .0.len())]
    AllRecipientsRefused(Vec<RecipientRefused>),
    /// The message cannot be sent as it is, e.g. non-ASCII addresses to a server without
    /// SMTPUTF8.
    #[error("cannot be sent to this server: {0}")]
    Unsendable(String),
    /// The outbox could not store the message (disk full, permissions).
    #[error("cannot write {path}: {detail}")]
    Storage { path: PathBuf, detail: String },
    /// The transport was shut down before the message went out.
    #[error("the transport is shut down")]
    Closed,
    /// Not sent: the sending rate of its destination (a domain group, or the deployment's
    /// total) has no slot free soon enough; it may go in `retry_in`. Nothing reached a server,
    /// so this is no delivery attempt.
    #[error("waiting for the sending rate of {destination}: next free slot in {retry_in:?}")]
    RateLimited {
        destination: String,
        retry_in: Duration,
    },
}

impl SendError {
    /// Deferred (retry later) or failed (permanent) — what the worker records.
    pub fn class(&self) -> FailureClass {
        match self {
            SendError::PermanentReply { .. } | SendError::Unsendable(_) => FailureClass::Permanent,
            SendError::AllRecipientsRefused(refused) => {
                // Retrying helps if any recipient may be accepted later.
                if refused
                    .iter()
                    .any(|r| r.error.class() == FailureClass::Temporary)
                {
                    FailureClass::Temporary
                } else {
                    FailureClass::Permanent
                }
            }
            SendError::TransientReply { .. }
            | SendError::SessionRefused { .. }
            | SendError::Connect { .. }
            | SendError::Protocol { .. }
            | SendError::ConnectionLost { .. }
            | SendError::Timeout { .. }
            | SendError::Storage { .. }
            | SendError::Closed
            | SendError::RateLimited { .. } => FailureClass::Temporary,
        }
    }

    /// True when retrying makes sense.
    pub fn is_temporary(&self) -> bool {
        self.class() == FailureClass::Temporary
    }

    /// The server's reply, when the failure was one.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            SendError::TransientReply { reply, .. }
            | SendError::PermanentReply { reply, .. }
            | SendError::SessionRefused { reply, .. } => Some(reply),
            _ => None,
        }
    }

    /// The reply code (e.g. 452, 550), when the server gave one.
    pub fn code(&self) -> Option<u16> {
        self.reply().map(|r| r.code)
    }

    /// True when the connection was lost or timed out after the content was (perhaps wholly)
    /// sent: the server may have queued the message, so a retry can deliver it twice. This is
    /// the only way the transport can cause a duplicate, at most one per connection per fault.
    pub fn may_have_been_delivered(&self) -> bool {
        matches!(
            self,
            SendError::ConnectionLost {
                stage: Stage::Message,
                ..
            } | SendError::Timeout {
                stage: Stage::Message,
                ..
            }
        )
    }
}
