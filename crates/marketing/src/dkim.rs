//! DKIM from configuration (DKIM_DOMAIN, DKIM_SELECTOR, DKIM_PRIVATE_KEY, DKIM_ALGORITHM)
//! for every role that delivers, and `marketing dkim keygen|check`.
//!
//! A key file that cannot be used stops the process before it starts (exit code 2, naming the
//! variable): a sender that silently stops signing loses its reputation with the mailbox
//! providers long before anyone reads a log.

use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A configuration problem found after the command line was parsed (a combination of
/// variables): `main` exits with code 2 for it, as clap does for a single bad value.
#[derive(Debug)]
pub struct StartupRefusal(pub String);

impl std::fmt::Display for StartupRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartupRefusal {}

/// DKIM signing for the roles that deliver. All of DKIM_DOMAIN, DKIM_SELECTOR and
/// DKIM_PRIVATE_KEY, or none (messages unsigned).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DkimArgs {
    /// Signing domain (d=). Messages whose From is this domain or one of its subdomains are
    /// signed; messages From any other domain are sent unsigned and counted in
    /// dkim_unsigned_messages_total.
    #[arg(long, env = "DKIM_DOMAIN", requires_all = ["dkim_selector", "dkim_private_key"], value_parser = dkim_domain)]
    pub dkim_domain: Option<String>,

    /// Selector (s=): the public key is published at `{selector}._domainkey.{domain}`.
    #[arg(long, env = "DKIM_SELECTOR", requires_all = ["dkim_domain", "dkim_private_key"], value_parser = dkim_selector)]
    pub dkim_selector: Option<String>,

    /// PEM private key file: RSA (PKCS#1 or PKCS#8, at least 2048 bits) or Ed25519 (PKCS#8).
    /// It must not be readable by group or others (chmod 600).
    #[arg(long, env = "DKIM_PRIVATE_KEY", requires_all = ["dkim_domain", "dkim_selector"], value_parser = dkim_private_key)]
    pub dkim_private_key: Option<KeyFile>,

    /// The algorithm the key must have (ed25519 or rsa): a key of the other kind is refused,
    /// so replacing the file with the wrong key cannot go unnoticed.
    #[arg(long, env = "DKIM_ALGORITHM", value_parser = ["ed25519", "rsa"])]
    pub dkim_algorithm: Option<String>,
}

/// A private key file that was readable, private and parsed at start-up.
#[derive(Clone)]
pub struct KeyFile {
    path: PathBuf,
    pem: Arc<String>,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key itself is never printed.
        f.debug_struct("KeyFile").field("path", &self.path).finish()
    }
}

fn dkim_domain(value: &str) -> Result<String, String> {
    message::check_dkim_name("domain", value)
        .map(|()| value.to_ascii_lowercase())
        .map_err(|err| format!("DKIM_DOMAIN: {err}"))
}

fn dkim_selector(value: &str) -> Result<String, String> {
    message::check_dkim_name("selector", value)
        .map(|()| value.to_string())
        .map_err(|err| format!("DKIM_SELECTOR: {err}"))
}

fn dkim_private_key(value: &str) -> Result<KeyFile, String> {
    read_key_file(Path::new(value)).map_err(|problem| format!("DKIM_PRIVATE_KEY: {problem}"))
}

/// Reads a private key file, refusing one other users can read and one that is not a usable
/// DKIM key.
fn read_key_file(path: &Path) -> Result<KeyFile, String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = path.display();
    let metadata = std::fs::metadata(path).map_err(|err| format!("cannot read {shown}: {err}"))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{shown} is readable by group or others (mode {mode:04o}): `chmod 600 {shown}`"
        ));
    }
    let pem = std::fs::read_to_string(path).map_err(|err| format!("cannot read {shown}: {err}"))?;
    // Parsed with placeholder names: the real domain and selector are checked on their own.
    message::DkimSigner::from_pem(&pem, "example.com", "check")
        .map_err(|err| format!("{shown}: {err}"))?;
    Ok(KeyFile {
        path: path.to_path_buf(),
        pem: Arc::new(pem),
    })
}

/// `ed25519-sha256` → `ed25519`, `rsa-sha256` → `rsa`: the names DKIM_ALGORITHM and the
/// TXT record's `k=` use.
fn key_kind(signer: &message::DkimSigner) -> &'static str {
    match signer.algorithm() {
        "rsa-sha256" => "rsa",
        _ => "ed25519",
    }
}

impl DkimArgs {
    /// The signer, or `None` when DKIM is not configured. Logs, at start, which From domains
    /// are signed: every other domain is sent unsigned.
    pub fn signer(&self) -> anyhow::Result<Option<Arc<message::DkimSigner>>> {
        let (Some(domain), Some(selector), Some(key)) = (
            &self.dkim_domain,
            &self.dkim_selector,
            &self.dkim_private_key,
        ) else {
            if self.dkim_algorithm.is_some() {
                return Err(StartupRefusal(
                    "DKIM_ALGORITHM is set but DKIM_PRIVATE_KEY is not".into(),
                )
                .into());
            }
            return Ok(None);
        };
        let signer = message::DkimSigner::from_pem(&key.pem, domain, selector)
            .map_err(|err| StartupRefusal(format!("DKIM_PRIVATE_KEY: {err}")))?;
        if let Some(expected) = &self.dkim_algorithm
            && expected != key_kind(&signer)
        {
            return Err(StartupRefusal(format!(
                "DKIM_PRIVATE_KEY {} holds an {} key but DKIM_ALGORITHM is {expected}",
                key.path.display(),
                key_kind(&signer),
            ))
            .into());
        }
        tracing::warn!(
            dkim_domain = %domain,
            selector = %selector,
            algorithm = signer.algorithm(),
            "DKIM signs messages From {domain} and its subdomains; messages From any other domain are sent unsigned"
        );
        Ok(Some(Arc::new(signer)))
    }
}

/// `marketing dkim …`.
#[derive(clap::Subcommand, Debug)]
pub enum DkimCommand {
    /// Writes a new private key (mode 0600) and prints the DNS TXT record to publish.
    Keygen {
        /// The signing domain (d=).
        #[arg(long, value_parser = dkim_domain)]
        domain: String,
        /// The selector (s=).
        #[arg(long, value_parser = dkim_selector)]
        selector: String,
        /// ed25519 (small, fast; not yet verified by every receiver) or rsa (2048 bits).
        #[arg(long, default_value = "rsa", value_parser = ["ed25519", "rsa"])]
        algorithm: String,
        /// Where to write the key; it must not exist yet.
        #[arg(long, default_value = "dkim.pem")]
        out: PathBuf,
    },
    /// Checks that the configured key (DKIM_DOMAIN, DKIM_SELECTOR, DKIM_PRIVATE_KEY) and a
    /// published TXT value match: exit 0 when they do, 1 when they do not.
    Check {
        #[command(flatten)]
        dkim: DkimArgs,
        /// The TXT record's value as published, e.g. "v=DKIM1; k=ed25519; p=…".
        #[arg(long)]
        txt: String,
    },
}

pub fn run(command: DkimCommand) -> anyhow::Result<std::process::ExitCode> {
    match command {
        DkimCommand::Keygen {
            domain,
            selector,
            algorithm,
            out,
        } => {
            let pem = match algorithm.as_str() {
                "ed25519" => message::generate_dkim_key(message::DkimKeyKind::Ed25519),
                _ => message::generate_dkim_key(message::DkimKeyKind::Rsa),
            }?;
            write_private(&out, &pem)?;
            let signer = message::DkimSigner::from_pem(&pem, &domain, &selector)?;
            eprintln!(
                "wrote {} (mode 0600); publish this TXT record:",
                out.display()
            );
            println!(
                "{selector}._domainkey.{domain}. IN TXT \"{}\"",
                signer.dns_record()?
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
        DkimCommand::Check { dkim, txt } => {
            let Some(signer) = dkim.signer()? else {
                return Err(StartupRefusal(
                    "DKIM_DOMAIN, DKIM_SELECTOR and DKIM_PRIVATE_KEY must be set to check".into(),
                )
                .into());
            };
            let expected = signer.dns_record()?;
            let published = txt_tags(&txt);
            let wanted = txt_tags(&expected);
            let name = format!("{}._domainkey.{}", signer.selector(), signer.domain());
            let same_key = published.get("p") == wanted.get("p");
            // k= defaults to rsa (RFC 6376 §3.6.1).
            let same_kind = published.get("k").map_or("rsa", String::as_str)
                == wanted.get("k").map_or("rsa", String::as_str);
            if same_key && same_kind {
                println!("{name}: the TXT record matches DKIM_PRIVATE_KEY");
                Ok(std::process::ExitCode::SUCCESS)
            } else {
                println!(
                    "{name}: the TXT record does not match DKIM_PRIVATE_KEY ({}); publish: \"{expected}\"",
                    if same_kind {
                        "another public key"
                    } else {
                        "another key type"
                    }
                );
                Ok(std::process::ExitCode::FAILURE)
            }
        }
    }
}

/// `tag=value` pairs of a DKIM TXT record, white space removed from values (a published
/// `p=` may be split into several strings).
fn txt_tags(record: &str) -> std::collections::HashMap<String, String> {
    record
        .split(';')
        .filter_map(|pair| pair.split_once('='))
        .map(|(tag, value)| {
            (
                tag.trim().to_ascii_lowercase(),
                value
                    .chars()
                    .filter(|c| !c.is_whitespace() && *c != '"')
                    .collect(),
            )
        })
        .collect()
}

/// Creates `path` with mode 0600 (never replacing a file: an existing key may be in use).
fn write_private(path: &Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(pem.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
