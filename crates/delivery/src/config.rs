//! Choosing and building the transport from the service's configuration.

use crate::outbox::OutboxTransport;
use crate::smtp::SmtpTransport;
use crate::smtp::config::{SmtpConfig, Timeouts};
use crate::transport::Transport;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A configuration that cannot work; the message names the variable to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// `SMTP_URL` does not parse or has an unknown/invalid part.
    #[error("SMTP_URL: {reason}")]
    SmtpUrl { reason: String },
    /// `SMTP_CONNECTIONS` is zero.
    #[error("SMTP_CONNECTIONS must be at least 1")]
    Connections,
    /// `SMTP_TIMEOUT` is zero.
    #[error("SMTP_TIMEOUT must be more than zero seconds")]
    Timeout,
    /// The `tls_ca` file of `SMTP_URL` cannot be read or holds no certificate.
    #[error("SMTP_URL tls_ca={}: {reason}", .path.display())]
    TlsCa { path: PathBuf, reason: String },
    /// TLS could not be set up for the host of `SMTP_URL`.
    #[error("SMTP_URL: cannot set up TLS: {reason}")]
    Tls { reason: String },
    /// The SMTP transport spawns its sender tasks and needs a tokio runtime to do so.
    #[error("the SMTP transport must be created inside a tokio runtime")]
    NoRuntime,
}

/// What the binary reads from its environment (names in brackets) and flags.
#[derive(Debug, Clone, PartialEq)]
pub struct TransportConfig {
    /// `SMTP_URL`; `None` selects the outbox.
    pub smtp_url: Option<String>,
    /// `OUTBOX_DIR`.
    pub outbox_dir: PathBuf,
    /// `SMTP_CONNECTIONS`: long-lived connections of this transport.
    pub connections: usize,
    /// `SMTP_TIMEOUT`: one limit for every SMTP step; per-step defaults if `None`.
    pub timeout: Option<Duration>,
}

impl Default for TransportConfig {
    fn default() -> TransportConfig {
        TransportConfig {
            smtp_url: None,
            outbox_dir: PathBuf::from("outbox"),
            // Eight measured ~9,700 msg/s into smtp-sink here (docs/BENCHMARKS.md); beyond that the
            // server, not the connection count, is the limit.
            connections: 8,
            timeout: None,
        }
    }
}

/// Builds the transport the configuration asks for: SMTP when `smtp_url` is set, else the
/// outbox. Must run inside a tokio runtime when SMTP is selected. Sending rates are kept by
/// the `rates` crate's transport around this one.
pub fn transport_from_config(config: &TransportConfig) -> Result<Arc<dyn Transport>, ConfigError> {
    Ok(match config.smtp_url.as_deref() {
        Some(url) => {
            let mut smtp = SmtpConfig::from_url(url)?;
            smtp.connections = config.connections;
            if let Some(limit) = config.timeout {
                if limit.is_zero() {
                    return Err(ConfigError::Timeout);
                }
                smtp.timeouts = Timeouts::uniform(limit);
            }
            Arc::new(SmtpTransport::new(smtp)?)
        }
        None => Arc::new(OutboxTransport::new(config.outbox_dir.clone())),
    })
}
