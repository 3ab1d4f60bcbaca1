//! An HTTPS endpoint for tests: an axum router behind TLS with a [`TestCertificate`] (a
//! private CA's certificate for `localhost` and 127.0.0.1), on 127.0.0.1 and a free port.

use crate::smtp::TestCertificate;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::{Arc, Mutex};
use tokio_rustls::rustls;

/// A running HTTPS server; stops when dropped.
pub struct HttpsServer {
    /// `https://127.0.0.1:PORT`.
    pub base: String,
    /// The handshakes that failed, each with rustls' reason (a client refusing the
    /// certificate shows here).
    pub failed_handshakes: Arc<Mutex<Vec<String>>>,
    server: tokio::task::JoinHandle<()>,
}

impl HttpsServer {
    /// Serves `app` over TLS with `certificate`'s server certificate.
    pub async fn start(app: axum::Router, certificate: &TestCertificate) -> HttpsServer {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&certificate.cert)
            .and_then(|iter| iter.collect::<Result<_, _>>())
            .expect("the test certificate");
        let key = PrivateKeyDer::from_pem_file(&certificate.key).expect("the test key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("a usable test certificate");
        let failed_handshakes = Arc::new(Mutex::new(Vec::new()));
        let listener = TlsListener {
            tcp: tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a free port"),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            failed_handshakes: failed_handshakes.clone(),
        };
        let address = listener.tcp.local_addr().expect("the bound address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HttpsServer {
            base: format!("https://{address}"),
            failed_handshakes,
            server,
        }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// TLS in front of a TCP listener, for `axum::serve`; failed handshakes are kept.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    failed_handshakes: Arc<Mutex<Vec<String>>>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, address)) = self.tcp.accept().await else {
                continue;
            };
            match self.acceptor.accept(stream).await {
                Ok(tls) => return (tls, address),
                Err(err) => {
                    if let Ok(mut failed) = self.failed_handshakes.lock() {
                        failed.push(err.to_string());
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
