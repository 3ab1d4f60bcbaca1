//! `SMTP_URL` and the settings of the SMTP transport.

use crate::config::ConfigError;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// How the connection is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain text (`smtp://…?tls=none`): local relays and test sinks.
    None,
    /// `STARTTLS` when the server offers it, plain text otherwise (`smtp://`, the default).
    /// When offered, the certificate is verified like any other.
    StartTlsOpportunistic,
    /// `STARTTLS` or no delivery (`smtp://…?tls=required`).
    StartTlsRequired,
    /// TLS from the first byte (`smtps://`, port 465 by default).
    Implicit,
}

impl fmt::Display for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Security::None => "no TLS",
            Security::StartTlsOpportunistic => "STARTTLS opportunistic",
            Security::StartTlsRequired => "STARTTLS required",
            Security::Implicit => "implicit TLS",
        })
    }
}

/// AUTH user and password; `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Limits on each step, so a silent server costs a bounded wait and never a stuck sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect and, for `smtps://`, the TLS handshake.
    pub connect: Duration,
    /// Each command's reply: greeting, EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA, RSET.
    pub command: Duration,
    /// Sending the content and reading the reply to the final `.` (servers scan here).
    pub data: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(10),
            command: Duration::from_secs(30),
            data: Duration::from_secs(60),
        }
    }
}

impl Timeouts {
    /// The same limit for every step (`SMTP_TIMEOUT`).
    pub fn uniform(limit: Duration) -> Timeouts {
        Timeouts {
            connect: limit,
            command: limit,
            data: limit,
        }
    }
}

/// Everything the SMTP transport needs; [`SmtpConfig::from_url`] is the way in from
/// `SMTP_URL`, the other fields have defaults and their own variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub credentials: Option<Credentials>,
    /// Name sent in `EHLO` (`?ehlo=`; default: this machine's host name).
    pub hello_name: String,
    /// A PEM file of extra trusted certificates (`?tls_ca=`), for a relay with a private CA.
    pub tls_ca: Option<PathBuf>,
    /// Long-lived connections, each owned by one sender task (`SMTP_CONNECTIONS`).
    pub connections: usize,
    pub timeouts: Timeouts,
}

impl SmtpConfig {
    /// Parses `smtp://[user:password@]host[:port][?tls=none|opportunistic|required]
    /// [&ehlo=name][&tls_ca=/path.pem]` or `smtps://…` (implicit TLS). User and password are
    /// percent-decoded. Errors name `SMTP_URL` and say what is wrong.
    pub fn from_url(raw: &str) -> Result<SmtpConfig, ConfigError> {
        let url = url::Url::parse(raw).map_err(|err| ConfigError::SmtpUrl {
            reason: format!("not a URL ({err}); expected smtp://host:port or smtps://host:port"),
        })?;
        let (mut security, default_port) = match url.scheme() {
            "smtp" => (Security::StartTlsOpportunistic, 25),
            "smtps" => (Security::Implicit, 465),
            other => {
                return Err(ConfigError::SmtpUrl {
                    reason: format!("scheme must be smtp or smtps, not {other:?}"),
                });
            }
        };
        let host = match url.host_str() {
            Some(host) if !host.is_empty() => host.trim_start_matches('[').trim_end_matches(']'),
            _ => {
                return Err(ConfigError::SmtpUrl {
                    reason: "no host".to_string(),
                });
            }
        };
        if !matches!(url.path(), "" | "/") {
            return Err(ConfigError::SmtpUrl {
                reason: format!("unexpected path {:?}", url.path()),
            });
        }
        let credentials = match (url.username(), url.password()) {
            ("", None) => None,
            (user, Some(password)) if !user.is_empty() => Some(Credentials {
                user: decode(user, "user")?,
                password: decode(password, "password")?,
            }),
            _ => {
                return Err(ConfigError::SmtpUrl {
                    reason: "AUTH needs both user and password (smtp://user:password@host)"
                        .to_string(),
                });
            }
        };
        let mut hello_name = None;
        let mut tls_ca = None;
        for (name, value) in url.query_pairs() {
            match name.as_ref() {
                "tls" if security == Security::Implicit => {
                    return Err(ConfigError::SmtpUrl {
                        reason: "smtps:// is always TLS; tls= applies to smtp:// only".to_string(),
                    });
                }
                "tls" => {
                    security = match value.as_ref() {
                        "none" | "off" => Security::None,
                        "opportunistic" => Security::StartTlsOpportunistic,
                        "required" | "starttls" => Security::StartTlsRequired,
                        other => {
                            return Err(ConfigError::SmtpUrl {
                                reason: format!(
                                    "tls={other:?}: expected none, opportunistic or required"
                                ),
                            });
                        }
                    }
                }
                "ehlo" if !value.is_empty() => hello_name = Some(value.into_owned()),
                "tls_ca" if !value.is_empty() => tls_ca = Some(PathBuf::from(value.as_ref())),
                other => {
                    return Err(ConfigError::SmtpUrl {
                        reason: format!(
                            "unknown or empty parameter {other:?} (known: tls, ehlo, tls_ca)"
                        ),
                    });
                }
            }
        }
        Ok(SmtpConfig {
            host: host.to_string(),
            port: url.port().unwrap_or(default_port),
            security,
            credentials,
            hello_name: hello_name.unwrap_or_else(local_host_name),
            tls_ca,
            connections: 1,
            timeouts: Timeouts::default(),
        })
    }

    /// `smtp://host:port` for logs: no user, no password.
    pub fn server(&self) -> String {
        let scheme = match self.security {
            Security::Implicit => "smtps",
            _ => "smtp",
        };
        if self.host.contains(':') {
            format!("{scheme}://[{}]:{}", self.host, self.port)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }

    /// The start-up log line, e.g. `smtp://relay:25, 8 connections, STARTTLS opportunistic`.
    pub fn describe(&self) -> String {
        let auth = match &self.credentials {
            Some(credentials) => format!(", AUTH as {}", credentials.user),
            None => String::new(),
        };
        let plural = if self.connections == 1 { "" } else { "s" };
        format!(
            "{}, {} connection{plural}, {}{auth}",
            self.server(),
            self.connections,
            self.security
        )
    }
}

fn decode(raw: &str, what: &str) -> Result<String, ConfigError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ConfigError::SmtpUrl {
            reason: format!("the {what} is not UTF-8 once percent-decoded"),
        })
}

/// RFC 5321 wants the client's own name in EHLO; "localhost" only when none is known.
fn local_host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> SmtpConfig {
        SmtpConfig::from_url(url).unwrap_or_else(|err| panic!("{url}: {err}"))
    }

    fn error(url: &str) -> String {
        match SmtpConfig::from_url(url) {
            Ok(config) => panic!("{url} parsed as {config:?}"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn smtp_url_plain_host_and_port_with_defaults() {
        let config = parse("smtp://127.0.0.1:2525?tls=none");
        assert_eq!((config.host.as_str(), config.port), ("127.0.0.1", 2525));
        assert_eq!(config.security, Security::None);
        assert_eq!(config.credentials, None);
        let config = parse("smtp://relay.example.com");
        assert_eq!(config.port, 25);
        assert_eq!(config.security, Security::StartTlsOpportunistic);
        assert_eq!(
            config.describe(),
            "smtp://relay.example.com:25, 1 connection, STARTTLS opportunistic"
        );
    }

    #[test]
    fn smtp_url_tls_policies_and_implicit_tls() {
        assert_eq!(
            parse("smtp://h:587?tls=required").security,
            Security::StartTlsRequired
        );
        assert_eq!(
            parse("smtp://h?tls=opportunistic").security,
            Security::StartTlsOpportunistic
        );
        let config = parse("smtps://h");
        assert_eq!((config.security, config.port), (Security::Implicit, 465));
        assert_eq!(
            parse("smtps://h?tls_ca=/etc/ca.pem").tls_ca,
            Some(PathBuf::from("/etc/ca.pem"))
        );
    }

    #[test]
    fn smtp_url_credentials_are_percent_decoded_and_never_shown() {
        let config =
            parse("smtp://apikey:p%40ss%3Aw0rd@smtp.example.com:587?ehlo=mailer.example.com");
        let credentials = config.credentials.clone().expect("credentials");
        assert_eq!(credentials.user, "apikey");
        assert_eq!(credentials.password, "p@ss:w0rd");
        assert_eq!(config.hello_name, "mailer.example.com");
        assert!(!format!("{config:?}").contains("p@ss"));
        assert!(!config.describe().contains("p@ss"));
        assert!(config.describe().contains("AUTH as apikey"));
    }

    #[test]
    fn smtp_url_errors_name_the_variable_and_the_problem() {
        for (url, expected) in [
            ("relay:25", "scheme must be smtp or smtps"),
            ("http://relay", "scheme must be smtp or smtps"),
            ("smtp://", "no host"),
            ("smtp://h?tls=maybe", "tls=\"maybe\""),
            ("smtps://h?tls=none", "smtps:// is always TLS"),
            (
                "smtp://h?timeout=3",
                "unknown or empty parameter \"timeout\"",
            ),
            ("smtp://user@h", "both user and password"),
            ("smtp://h/path", "unexpected path"),
            ("not a url", "not a URL"),
        ] {
            let message = error(url);
            assert!(message.starts_with("SMTP_URL"), "{url}: {message}");
            assert!(message.contains(expected), "{url}: {message}");
        }
    }
}
