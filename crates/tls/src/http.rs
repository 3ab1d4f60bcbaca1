//! The HTTP client of our own services' clients (the task repository adapter, `marketing
//! submit --api`): `http://` or `https://`, the server verified against the built-in web PKI
//! roots plus an optional PEM file of private CAs (`SERVICE_TLS_CA`), like the webhook
//! senders and the SMTP relay.

use crate::{TrustError, ca_certificates, client_config, error_chain};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use std::path::Path;
use std::time::Duration;

pub use http::{HeaderMap, Method, StatusCode, header};

/// A pooled HTTP/1.1 client, `http://` and `https://`.
#[derive(Clone)]
pub struct HttpClient {
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<HttpConnector>,
        Full<Bytes>,
    >,
    timeout: Duration,
}

/// A complete answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The URL or a header cannot make a request; nothing was sent.
    #[error("invalid request to {url}: {reason}")]
    Invalid { url: String, reason: String },
    /// No connection (refused, unresolvable, TLS handshake refused): nothing was sent.
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The exchange failed or timed out after the request may have been sent.
    #[error("{url}: {reason}")]
    Exchange { url: String, reason: String },
}

impl RequestError {
    /// True when the request never reached the server, so repeating it is always harmless.
    pub fn is_unsent(&self) -> bool {
        !matches!(self, RequestError::Exchange { .. })
    }
}

impl HttpClient {
    /// A client trusting the built-in roots and, when given, the CAs of a PEM file; a
    /// connection must open within `connect_timeout` and a whole exchange take at most
    /// `timeout`.
    pub fn new(
        ca_file: Option<&Path>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<HttpClient, TrustError> {
        let extra = match ca_file {
            Some(path) => ca_certificates(path)?,
            None => Vec::new(),
        };
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        // Small requests answered at once: Nagle's delay would dominate them.
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client_config(&extra)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        Ok(HttpClient { client, timeout })
    }

    /// Sends one request and reads the whole answer, whatever its status.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(header::HeaderName, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Answer, RequestError> {
        let invalid = |reason: String| RequestError::Invalid {
            url: url.to_string(),
            reason,
        };
        let uri: http::Uri = url.parse().map_err(|err| invalid(format!("{err}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
            return Err(invalid("it must be an http:// or https:// URL".into()));
        }
        let mut request = http::Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|err| invalid(err.to_string()))?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|err| {
                let reason = error_chain(&err);
                if err.is_connect() {
                    RequestError::Connect {
                        url: url.to_string(),
                        reason,
                    }
                } else {
                    RequestError::Exchange {
                        url: url.to_string(),
                        reason,
                    }
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|err| RequestError::Exchange {
                    url: url.to_string(),
                    reason: format!("the answer was cut off: {}", error_chain(&err)),
                })?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| RequestError::Exchange {
                url: url.to_string(),
                reason: format!("no answer within {:?}", self.timeout),
            })?
    }
}
