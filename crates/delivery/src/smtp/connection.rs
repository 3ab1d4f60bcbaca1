//! One SMTP connection: opened on a TCP_NODELAY socket, one transaction at a time, every step
//! under a timeout, `RSET` after a rejection so the connection stays usable. Where the server
//! announces PIPELINING (RFC 2920), MAIL, RCPT and DATA go in one write, as postfix's own
//! client does: two round trips per message (envelope, content) instead of four.
//!
//! We drive MAIL/RCPT/DATA ourselves instead of calling lettre's `send`, because `send` quits
//! the connection on any negative reply; a marketing run meets 4xx/5xx replies all the time
//! and must not pay a reconnect for each.

use crate::OutgoingMessage;
use crate::outcome::{Accepted, RecipientRefused, Reply, SendError, Stage};
use crate::smtp::config::{Security, SmtpConfig, Timeouts};
use crate::smtp::data;
use crate::smtp::tls::{Encryption, ImplicitTlsStream};
use lettre::Address;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt, Rset};
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
    /// The server announced PIPELINING: MAIL, RCPT and DATA go in one write.
    pipelining: bool,
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

/// A refusal of this one command, which leaves the transaction and the connection open, as
/// `Some`; a failure that ends the connection (lost, timed out, 421) as `Err`.
fn refusal(
    result: Result<Response, (SendError, bool)>,
) -> Result<Option<SendError>, (SendError, bool)> {
    match result {
        Ok(_) => Ok(None),
        Err((error, true)) => Ok(Some(error)),
        Err(failure) => Err(failure),
    }
}

/// A failure that ends the connection, met while reading the replies to a pipelined envelope
/// after a refusal had already ended the transaction: the refusal stays the outcome (one by
/// one, the failing command would not have been sent), and the connection goes.
fn after_refusal(refusal: Option<SendError>, failure: (SendError, bool)) -> (SendError, bool) {
    match refusal {
        Some(error) => (error, false),
        None => failure,
    }
}

/// The error when no recipient was accepted: a single recipient's own, or all of them.
fn all_refused(mut refused: Vec<RecipientRefused>) -> SendError {
    if refused.len() == 1 {
        refused.remove(0).error
    } else {
        SendError::AllRecipientsRefused(refused)
    }
}

/// MAIL, every RCPT and DATA as one string, for one write (lettre's `command` writes what
/// `Display` gives at once); lettre's own command types give each line.
struct EnvelopeCommands<'a> {
    mail: Mail,
    recipients: &'a [Address],
}

impl std::fmt::Display for EnvelopeCommands<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.mail)?;
        for address in self.recipients {
            write!(f, "{}", Rcpt::new(address.clone(), Vec::new()))?;
        }
        write!(f, "{Data}")
    }
}

/// The most recipients an envelope may have for its commands to go in one write: their
/// replies (some 40 bytes each) then fit the socket buffers many times over, so the server can
/// never block writing replies while we still write commands (RFC 2920 §3.1). A campaign's
/// message has one recipient; a larger envelope is sent one command at a time.
const MAX_PIPELINED_RECIPIENTS: usize = 100;

/// The content of an empty message: the lone dot that ends DATA at once.
const EMPTY_CONTENT: data::Stuffed<'static> = data::Stuffed(".\r\n");

/// Whether an EHLO reply announces PIPELINING (RFC 2920). Keywords are case-insensitive
/// (RFC 5321 §2.4); the first line is the server's name, never a keyword.
fn announces_pipelining(ehlo: &Response) -> bool {
    ehlo.message().skip(1).any(|line| {
        line.split_whitespace()
            .next()
            .is_some_and(|keyword| keyword.eq_ignore_ascii_case("PIPELINING"))
    })
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
        // lettre 0.11 keeps only the EHLO keywords it acts on itself (8BITMIME, SMTPUTF8,
        // STARTTLS, AUTH) and drops PIPELINING, so we say EHLO once more and read the reply
        // ourselves: one round trip per connection, against two saved per message. Before AUTH,
        // because a later EHLO resets the session (RFC 5321 §4.1.4).
        let ehlo = step(
            Stage::Greeting,
            timeouts.command,
            inner.command(Ehlo::new(settings.client_id.clone())),
        )
        .await
        .map_err(|(err, _)| err)?;
        let pipelining = announces_pipelining(&ehlo);
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
            pipelining,
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
        let mail = Mail::new(envelope.return_path().cloned(), parameters);
        let recipients = envelope.to_addresses();
        let refused = if self.pipelining && recipients.len() <= MAX_PIPELINED_RECIPIENTS {
            self.envelope_pipelined(mail, recipients, &timeouts).await?
        } else {
            self.envelope_one_by_one(mail, recipients, &timeouts)
                .await?
        };

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

    /// MAIL, RCPT and DATA one at a time, each waiting for its reply: for servers that do not
    /// announce PIPELINING. Ok when DATA was accepted, with the recipients refused on the way.
    async fn envelope_one_by_one(
        &mut self,
        mail: Mail,
        recipients: &[Address],
        timeouts: &Timeouts,
    ) -> Result<Vec<RecipientRefused>, (SendError, bool)> {
        step(Stage::MailFrom, timeouts.command, self.inner.command(mail)).await?;
        let mut refused = Vec::new();
        for address in recipients {
            let rcpt = Rcpt::new(address.clone(), Vec::new());
            // A refused recipient leaves the transaction open for the others.
            if let Some(error) =
                refusal(step(Stage::RcptTo, timeouts.command, self.inner.command(rcpt)).await)?
            {
                refused.push(RecipientRefused {
                    address: address.to_string(),
                    error,
                });
            }
        }
        if refused.len() == recipients.len() {
            return Err((all_refused(refused), true));
        }
        step(Stage::Data, timeouts.command, self.inner.command(Data)).await?;
        Ok(refused)
    }

    /// MAIL, every RCPT and DATA in one write, then their replies in order (RFC 2920): two
    /// round trips per message with the content instead of four, for us and for the server.
    /// The outcome is the one-by-one path's: the first refusal that ends the transaction wins
    /// (MAIL, then all recipients, then DATA), a recipient refused alone is listed.
    ///
    /// Every reply is read even after a refusal (the server answers each command, the ones
    /// after a refused MAIL with 503), so the next command on the connection meets its own
    /// reply. Only a lost connection, a timeout or a 421 stops the reading: then the
    /// connection is dropped anyway.
    ///
    /// The whole group is written before any reply is read. RFC 2920 §3.1 warns of the
    /// deadlock where the server blocks writing replies nobody reads while the client blocks
    /// writing commands; that needs more replies than the socket buffers hold (thousands of
    /// recipients at some 40 bytes each), and envelopes of more than
    /// `MAX_PIPELINED_RECIPIENTS` go one by one.
    async fn envelope_pipelined(
        &mut self,
        mail: Mail,
        recipients: &[Address],
        timeouts: &Timeouts,
    ) -> Result<Vec<RecipientRefused>, (SendError, bool)> {
        let commands = EnvelopeCommands { mail, recipients };
        // The write and MAIL's reply: a connection the server closed while idle fails here, at
        // MAIL, before any content left, as on the one-by-one path (see `closed_while_idle`).
        let sent = self.inner.command(&commands);
        let mail_refused = refusal(step(Stage::MailFrom, timeouts.command, sent).await)?;
        let mut refused = Vec::new();
        for address in recipients {
            let reply = step(Stage::RcptTo, timeouts.command, self.inner.read_response()).await;
            match refusal(reply) {
                Ok(None) => {}
                Ok(Some(error)) => refused.push(RecipientRefused {
                    address: address.to_string(),
                    error,
                }),
                Err(failure) => return Err(after_refusal(mail_refused, failure)),
            }
        }
        let envelope_refused = match mail_refused {
            Some(error) => Some(error),
            None if refused.len() == recipients.len() => {
                Some(all_refused(std::mem::take(&mut refused)))
            }
            None => None,
        };
        let reply = step(Stage::Data, timeouts.command, self.inner.read_response()).await;
        let data_refused = match refusal(reply) {
            Ok(data_refused) => data_refused,
            Err(failure) => return Err(after_refusal(envelope_refused, failure)),
        };
        match (envelope_refused, data_refused) {
            (None, None) => Ok(refused),
            (None, Some(error)) | (Some(error), Some(_)) => Err((error, true)),
            (Some(error), None) => {
                // The server took DATA although it refused MAIL or every RCPT: RFC 2920 §3.1
                // says to send a lone dot then, which ends an empty message and keeps the
                // connection in step. Its reply does not change the outcome; a lost
                // connection does.
                let ended = self.inner.command(EMPTY_CONTENT);
                let usable = !matches!(
                    step(Stage::Message, timeouts.data, ended).await,
                    Err((_, false))
                );
                Err((error, usable))
            }
        }
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
