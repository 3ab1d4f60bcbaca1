//! One SMTP connection: opened on a TCP_NODELAY socket, one transaction at a time, every step
//! under a timeout, `RSET` after a rejection so the connection stays usable.
//!
//! We drive MAIL/RCPT/DATA ourselves instead of calling lettre's `send`, because `send` quits
//! the connection on any negative reply; a marketing run meets 4xx/5xx replies all the time
//! and must not pay a reconnect for each.

use crate::OutgoingMessage;
use crate::outcome::{Accepted, RecipientRefused, Reply, SendError, Stage};
use crate::smtp::config::{Security, SmtpConfig};
use crate::smtp::data;
use crate::smtp::tls::{Encryption, ImplicitTlsStream};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use std::error::Error as _;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpStream;

/// What every connection of a transport shares, prepared once.
pub(crate) struct Settings {
    pub(crate) config: SmtpConfig,
    pub(crate) tls: Encryption,
    pub(crate) client_id: ClientId,
    pub(crate) credentials: Option<Credentials>,
}

impl Settings {
    pub(crate) fn new(config: SmtpConfig) -> Result<Settings, crate::config::ConfigError> {
        let tls = Encryption::from_config(&config)?;
        let client_id = ClientId::Domain(config.hello_name.clone());
        let credentials = config
            .credentials
            .as_ref()
            .map(|c| Credentials::new(c.user.clone(), c.password.clone()));
        Ok(Settings {
            config,
            tls,
            client_id,
            credentials,
        })
    }
}

/// A failed transaction, and whether its connection may carry the next one.
pub(crate) struct Failure {
    pub(crate) error: SendError,
    pub(crate) connection_usable: bool,
}

pub(crate) struct Connection {
    inner: AsyncSmtpConnection,
    /// The last message's DATA as sent, kept for its capacity: the next one is stuffed into it.
    data: String,
    /// Transactions completed (accepted or rejected) on this connection; a failure on the
    /// first command of a reused connection may just be the server's idle timeout.
    pub(crate) transactions: u64,
}

fn reply_of(response: &Response) -> Reply {
    Reply {
        code: u16::from(response.code()),
        text: response.message().collect::<Vec<_>>().join(" "),
    }
}

/// Maps a lettre error at `stage`; the flag says whether the connection survives it.
fn classify(err: lettre::transport::smtp::Error, stage: Stage) -> (SendError, bool) {
    if let Some(code) = err.status() {
        let reply = Reply {
            code: u16::from(code),
            text: err.source().map(|s| s.to_string()).unwrap_or_default(),
        };
        // 421: the server is closing the connection whatever we do next.
        let usable = reply.code != 421;
        let error = match stage {
            Stage::Connect | Stage::Greeting | Stage::StartTls | Stage::Auth => {
                SendError::SessionRefused { stage, reply }
            }
            _ if err.is_transient() => SendError::TransientReply { stage, reply },
            _ => SendError::PermanentReply { stage, reply },
        };
        return (error, usable);
    }
    let detail = err.to_string();
    let error = if err.is_client() || err.is_tls() || stage == Stage::StartTls {
        SendError::Protocol { stage, detail }
    } else {
        SendError::ConnectionLost { stage, detail }
    };
    (error, false)
}

/// Runs one step under its timeout.
async fn step<T>(
    stage: Stage,
    limit: Duration,
    future: impl Future<Output = Result<T, lettre::transport::smtp::Error>>,
) -> Result<T, (SendError, bool)> {
    match tokio::time::timeout(limit, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(classify(err, stage)),
        Err(_) => Err((
            SendError::Timeout {
                stage,
                after: limit,
            },
            false,
        )),
    }
}

impl Connection {
    /// Connects, reads the greeting, says EHLO, and does STARTTLS and AUTH as configured.
    pub(crate) async fn open(settings: &Settings) -> Result<Connection, SendError> {
        let config = &settings.config;
        let timeouts = config.timeouts;
        let server = format!("{}:{}", config.host, config.port);
        let tcp = match tokio::time::timeout(
            timeouts.connect,
            TcpStream::connect((config.host.as_str(), config.port)),
        )
        .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(err)) => {
                return Err(SendError::Connect {
                    server,
                    detail: err.to_string(),
                });
            }
            Err(_) => {
                return Err(SendError::Timeout {
                    stage: Stage::Connect,
                    after: timeouts.connect,
                });
            }
        };
        // Without this every message waits ~40 ms for a delayed ACK (docs/BENCHMARKS.md, "SMTP
        // transport throughput").
        tcp.set_nodelay(true).map_err(|err| SendError::Connect {
            server: server.clone(),
            detail: format!("setting TCP_NODELAY: {err}"),
        })?;
        let stream: Box<dyn AsyncTokioStream> = match &settings.tls {
            Encryption::Implicit {
                connector,
                server_name,
            } => {
                let handshake = connector.connect(server_name.clone(), tcp);
                match tokio::time::timeout(timeouts.connect, handshake).await {
                    Ok(Ok(tls)) => Box::new(ImplicitTlsStream(tls)),
                    Ok(Err(err)) => {
                        return Err(SendError::Protocol {
                            stage: Stage::Connect,
                            detail: format!("TLS handshake with {server}: {err}"),
                        });
                    }
                    Err(_) => {
                        return Err(SendError::Timeout {
                            stage: Stage::Connect,
                            after: timeouts.connect,
                        });
                    }
                }
            }
            _ => Box::new(tcp),
        };
        let mut inner = step(
            Stage::Greeting,
            timeouts.command,
            AsyncSmtpConnection::connect_with_transport(stream, &settings.client_id),
        )
        .await
        .map_err(|(err, _)| err)?;

        if let Encryption::StartTls(parameters) = &settings.tls {
            if inner.can_starttls() {
                step(
                    Stage::StartTls,
                    timeouts.command,
                    inner.starttls(parameters.clone(), &settings.client_id),
                )
                .await
                .map_err(|(err, _)| err)?;
            } else if config.security == Security::StartTlsRequired {
                inner.abort().await;
                return Err(SendError::Protocol {
                    stage: Stage::StartTls,
                    detail: format!(
                        "{server} does not offer STARTTLS and SMTP_URL has tls=required"
                    ),
                });
            }
        }
        if let Some(credentials) = &settings.credentials {
            step(
                Stage::Auth,
                timeouts.command,
                inner.auth(&[Mechanism::Plain, Mechanism::Login], credentials),
            )
            .await
            .map_err(|(err, _)| err)?;
        }
        Ok(Connection {
            inner,
            data: String::new(),
            transactions: 0,
        })
    }

    /// One mail transaction. On a rejection the connection is reset with `RSET`; the failure
    /// says whether it can carry the next message.
    pub(crate) async fn send(
        &mut self,
        message: &OutgoingMessage,
        settings: &Settings,
    ) -> Result<Accepted, Failure> {
        let result = self.transaction(message, settings).await;
        self.transactions += 1;
        match result {
            Ok(accepted) => Ok(accepted),
            Err((error, usable)) => {
                let connection_usable = usable && self.reset(settings).await;
                Err(Failure {
                    error,
                    connection_usable,
                })
            }
        }
    }

    async fn transaction(
        &mut self,
        message: &OutgoingMessage,
        settings: &Settings,
    ) -> Result<Accepted, (SendError, bool)> {
        let timeouts = settings.config.timeouts;
        let envelope = &message.envelope;
        let mut parameters = Vec::new();
        if envelope.has_non_ascii_addresses() {
            if !self
                .inner
                .server_info()
                .supports_feature(Extension::SmtpUtfEight)
            {
                return Err((
                    SendError::Unsendable(
                        "non-ASCII addresses and the server lacks SMTPUTF8".to_string(),
                    ),
                    true,
                ));
            }
            parameters.push(MailParameter::SmtpUtfEight);
        }
        if !message.content.is_ascii() {
            if !self
                .inner
                .server_info()
                .supports_feature(Extension::EightBitMime)
            {
                return Err((
                    SendError::Unsendable(
                        "8-bit content and the server lacks 8BITMIME".to_string(),
                    ),
                    true,
                ));
            }
            parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        step(
            Stage::MailFrom,
            timeouts.command,
            self.inner
                .command(Mail::new(envelope.return_path().cloned(), parameters)),
        )
        .await?;

        let mut refused = Vec::new();
        let recipients = envelope.to_addresses();
        for address in recipients {
            match step(
                Stage::RcptTo,
                timeouts.command,
                self.inner.command(Rcpt::new(address.clone(), Vec::new())),
            )
            .await
            {
                Ok(_) => {}
                // A refused recipient leaves the transaction open for the others.
                Err((error, true)) if error.reply().is_some() => refused.push(RecipientRefused {
                    address: address.to_string(),
                    error,
                }),
                Err(failure) => return Err(failure),
            }
        }
        if refused.len() == recipients.len() {
            let error = if refused.len() == 1 {
                refused.remove(0).error
            } else {
                SendError::AllRecipientsRefused(refused)
            };
            return Err((error, true));
        }

        step(Stage::Data, timeouts.command, self.inner.command(Data)).await?;
        let content = message.content.as_ref();
        let response = match std::str::from_utf8(content) {
            // Every message this service builds is UTF-8: stuffed here, in one write.
            Ok(text) => {
                data::stuff_into(text, &mut self.data);
                let sent = self.inner.command(data::Stuffed(&self.data));
                step(Stage::Message, timeouts.data, sent).await?
            }
            // Other bytes go through lettre's own (slower) stuffing, which needs the content
            // without its last line break, as stuff_into does.
            Err(_) => {
                let content = content.strip_suffix(b"\r\n").unwrap_or(content);
                step(Stage::Message, timeouts.data, self.inner.message(content)).await?
            }
        };
        Ok(Accepted {
            reply: reply_of(&response),
            refused,
        })
    }

    /// `RSET` after a rejection; false when the connection should be dropped instead.
    async fn reset(&mut self, settings: &Settings) -> bool {
        step(
            Stage::MailFrom,
            settings.config.timeouts.command,
            self.inner.command(Rset),
        )
        .await
        .is_ok()
    }

    /// Ends the session politely; the server may already be gone, which is fine.
    pub(crate) async fn quit(mut self, settings: &Settings) {
        let _ = tokio::time::timeout(settings.config.timeouts.command, self.inner.quit()).await;
    }
}
