//! TLS with rustls: STARTTLS through lettre, implicit TLS (`smtps://`) on our own socket.
//!
//! lettre can only do implicit TLS on a socket it opens itself, and that socket lacks
//! TCP_NODELAY; so for `smtps://` we run the handshake on our socket with tokio-rustls and
//! hand lettre the encrypted stream.

use crate::config::ConfigError;
use crate::smtp::config::{Security, SmtpConfig};
use lettre::transport::smtp::client::{AsyncTokioStream, Certificate, TlsParameters};
use rustls_pki_types::ServerName;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What a connection needs to encrypt, built once per transport so certificate problems show
/// at start-up.
#[derive(Clone)]
pub(crate) enum Encryption {
    None,
    StartTls(TlsParameters),
    Implicit {
        connector: tokio_rustls::TlsConnector,
        server_name: ServerName<'static>,
    },
}

impl Encryption {
    pub(crate) fn from_config(config: &SmtpConfig) -> Result<Encryption, ConfigError> {
        let trust_error = |err: tls::TrustError| match err {
            tls::TrustError::CaFile { path, reason } => ConfigError::TlsCa { path, reason },
            tls::TrustError::Tls(reason) => ConfigError::Tls { reason },
        };
        let extra = match &config.tls_ca {
            Some(path) => tls::ca_certificates(path).map_err(trust_error)?,
            None => Vec::new(),
        };
        match config.security {
            Security::None => Ok(Encryption::None),
            Security::StartTlsOpportunistic | Security::StartTlsRequired => {
                let mut builder = TlsParameters::builder(config.host.clone());
                for cert in extra {
                    let cert =
                        Certificate::from_der(cert.to_vec()).map_err(|err| ConfigError::TlsCa {
                            path: config.tls_ca.clone().unwrap_or_default(),
                            reason: err.to_string(),
                        })?;
                    builder = builder.add_root_certificate(cert);
                }
                let parameters = builder.build_rustls().map_err(|err| ConfigError::Tls {
                    reason: err.to_string(),
                })?;
                Ok(Encryption::StartTls(parameters))
            }
            Security::Implicit => {
                let client = tls::client_config(&extra).map_err(trust_error)?;
                let server_name =
                    ServerName::try_from(config.host.clone()).map_err(|err| ConfigError::Tls {
                        reason: format!("{:?} as a TLS server name: {err}", config.host),
                    })?;
                Ok(Encryption::Implicit {
                    connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
                    server_name,
                })
            }
        }
    }
}

/// The `smtps://` stream, in the shape lettre accepts for an existing connection.
#[derive(Debug)]
pub(crate) struct ImplicitTlsStream(pub(crate) tokio_rustls::client::TlsStream<TcpStream>);

impl AsyncTokioStream for ImplicitTlsStream {
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.get_ref().0.peer_addr()
    }
}

impl AsyncRead for ImplicitTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for ImplicitTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
