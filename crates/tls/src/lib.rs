//! Trust for outgoing TLS connections: the SMTP relay (`smtps://`, STARTTLS) and webhook
//! endpoints verify their server against the web PKI roots built into the binary (the same on
//! every machine, whatever its CA bundle) plus, for a server with a private CA, the
//! certificates of a PEM file. rustls with ring, one provider for every connection. And
//! [`error_chain`], how a failed outgoing connection is told. [`http::HttpClient`]: the HTTP(S)
//! client of our own services' clients, with that trust.

pub mod http;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use rustls::ClientConfig;

/// Why trust could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// The CA file cannot be read, is not PEM, or holds no certificate.
    #[error("{}: {reason}", .path.display())]
    CaFile { path: PathBuf, reason: String },
    /// rustls refused the configuration.
    #[error("cannot set up TLS: {0}")]
    Tls(String),
}

/// The certificates of a PEM file of extra trusted CAs; at least one.
pub fn ca_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    let failed = |reason: String| TrustError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<_, _>>())
        .map_err(|err| failed(err.to_string()))?;
    if certs.is_empty() {
        return Err(failed("no PEM certificate in it".to_string()));
    }
    Ok(certs)
}

/// A client configuration trusting the built-in web PKI roots and `extra` CAs.
pub fn client_config(extra: &[CertificateDer<'static>]) -> Result<ClientConfig, TrustError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra {
        roots
            .add(cert.clone())
            .map_err(|err| TrustError::Tls(format!("a CA certificate is unusable: {err}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| TrustError::Tls(err.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// An outgoing connection's error with its causes ("client error (Connect): invalid peer
/// certificate: UnknownIssuer"): HTTP clients' outermost message rarely names the TLS or
/// network cause, which is what an operator has to fix.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused_with_its_path() {
        let dir = std::env::temp_dir().join(format!("tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = ca_certificates(&empty).unwrap_err();
        assert!(err.to_string().contains("empty.pem"), "{err}");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let missing = ca_certificates(&dir.join("missing.pem")).unwrap_err();
        assert!(matches!(missing, TrustError::CaFile { .. }), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
