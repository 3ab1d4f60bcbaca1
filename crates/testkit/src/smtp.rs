//! Real SMTP servers for tests, none of them written by this project: postfix's `smtp-sink`
//! (fast, with fault flags; it counts sessions and messages) and `aiosmtpd` (keeps every
//! message in a Maildir, to check content and Message-IDs). Each runs as a child process on
//! a free 127.0.0.1 port and is killed when its value is dropped.
//!
//! smtp-sink's counters (and its `-d` dumps) are written around its replies, not strictly
//! before them, so read them through [`SmtpSink::wait_for`]; aiosmtpd's Maildir is written
//! atomically before the reply to the final `.`, so a message is there once it is accepted.
//!
//! Where a server is not installed, `start` returns `None` after saying why, except under CI
//! or `REQUIRE_SMTP=1` (see [`crate::smtp_required`]), where it panics: a suite that skips
//! its mail server would pass while testing nothing.
//!
//! Install on Debian: `echo "postfix postfix/main_mailer_type select No configuration" |
//! debconf-set-selections && DEBIAN_FRONTEND=noninteractive apt-get install -y postfix
//! python3-aiosmtpd`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SMTP_SINK: &str = "/usr/sbin/smtp-sink";
pub const SMTP_SOURCE: &str = "/usr/sbin/smtp-source";
pub const PYTHON: &str = "/usr/bin/python3";

/// How long a server may take to start listening before the test gives up.
const START_LIMIT: Duration = Duration::from_secs(15);

/// A port nobody listens on right now (the OS picks it; we release it for the server).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port on 127.0.0.1")
}

/// Skips (returns `None`) or panics, per [`crate::smtp_required`].
fn unavailable<T>(what: &str, why: &str) -> Option<T> {
    if crate::smtp_required() {
        panic!("{what} is required (CI/REQUIRE_SMTP) but unavailable: {why}");
    }
    eprintln!("skipping: {what} is unavailable: {why}");
    None
}

pub(crate) fn running_as_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|meta| meta.uid() == 0)
        .unwrap_or(false)
}

/// Waits until the server at `port` greets, by connecting in a bounded retry loop, and ends
/// that probe session with QUIT so it is over (and counted) before the test starts.
fn wait_until_ready(child: &mut Child, port: u16, what: &str, log: &Path) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + START_LIMIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let output = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!(
                "{what} exited with {status} before listening: {output}"
            ));
        }
        if let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            return probe(stream).map_err(|err| format!("{what} on port {port}: {err}"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{what} did not listen on port {port} within {START_LIMIT:?}"
            ));
        }
        // Short pause between connection attempts, not a stand-in for readiness.
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn probe(stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(START_LIMIT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if !line.starts_with("220") {
        return Err(std::io::Error::other(format!("greeting was {line:?}")));
    }
    (&stream).write_all(b"QUIT\r\n")?;
    line.clear();
    reader.read_line(&mut line)?;
    Ok(())
}

/// Counters `smtp-sink -c` prints: sessions ended, QUIT commands, messages received (each
/// updated before the server replies, so they are current once the client has its reply).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkCounters {
    pub sessions: u64,
    pub quits: u64,
    pub messages: u64,
}

/// Options for [`SmtpSink`]: fault flags and where it listens.
#[derive(Debug, Clone, Default)]
pub struct SmtpSinkBuilder {
    args: Vec<String>,
    port: Option<u16>,
}

impl SmtpSinkBuilder {
    /// An extra `smtp-sink` flag or value, e.g. `.arg("-r").arg("rcpt")` (4xx on RCPT),
    /// `.arg("-f").arg("rcpt")` (5xx), `.arg("-b").arg("452 4.2.2 Mailbox full")` (the 4xx
    /// text), `.arg("-q").arg(".")` (disconnect after the content without replying). See
    /// `man smtp-sink`.
    pub fn arg(mut self, arg: impl Into<String>) -> SmtpSinkBuilder {
        self.args.push(arg.into());
        self
    }

    /// Listen on this port (e.g. to bring a server back where a stopped one was).
    pub fn port(mut self, port: u16) -> SmtpSinkBuilder {
        self.port = Some(port);
        self
    }

    /// Starts the sink, or skips/panics per [`crate::smtp_required`] when it cannot run.
    pub fn start(self) -> Option<SmtpSink> {
        match self.try_start() {
            Ok(sink) => Some(sink),
            Err(why) => unavailable("postfix smtp-sink", &why),
        }
    }

    /// Starts the sink or says why not (for benchmarks, which decide for themselves).
    pub fn try_start(self) -> Result<SmtpSink, String> {
        if !Path::new(SMTP_SINK).exists() {
            return Err(format!("{SMTP_SINK} not found (Debian package postfix)"));
        }
        let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
        // smtp-sink drops to `nobody` when started as root; it must still write here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))
            .map_err(|err| err.to_string())?;
        let port = self.port.unwrap_or_else(free_port);
        let log = dir.path().join("counters.log");
        let mut command = Command::new(SMTP_SINK);
        if running_as_root() {
            command.args(["-u", "nobody"]);
        }
        command.arg("-c");
        command.args(&self.args);
        command.arg(format!("127.0.0.1:{port}")).arg("256");
        let log_file = std::fs::File::create(&log).map_err(|err| err.to_string())?;
        let err_file = log_file.try_clone().map_err(|err| err.to_string())?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .map_err(|err| format!("cannot run {SMTP_SINK}: {err}"))?;
        if let Err(why) = wait_until_ready(&mut child, port, "smtp-sink", &log) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(why);
        }
        let mut sink = SmtpSink {
            port,
            child,
            log,
            baseline: SinkCounters::default(),
            _dir: dir,
        };
        // The readiness probe is a session of its own, counted around its QUIT reply; wait
        // for it to show, then discount exactly it: one session, one QUIT, no message. (Not
        // whatever the counters say then: a client already retrying against this port may
        // have delivered messages meanwhile, and those count.)
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let raw = sink.raw_counters();
            if raw.sessions >= 1 && raw.quits >= 1 {
                sink.baseline = SinkCounters {
                    sessions: 1,
                    quits: 1,
                    messages: 0,
                };
                return Ok(sink);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "smtp-sink never counted the probe session: {raw:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// A running postfix `smtp-sink`.
pub struct SmtpSink {
    pub port: u16,
    child: Child,
    log: PathBuf,
    baseline: SinkCounters,
    _dir: tempfile::TempDir,
}

impl SmtpSink {
    pub fn builder() -> SmtpSinkBuilder {
        SmtpSinkBuilder::default()
    }

    /// A sink that accepts everything.
    pub fn start() -> Option<SmtpSink> {
        SmtpSink::builder().start()
    }

    /// `smtp://127.0.0.1:PORT?tls=none` (smtp-sink has no TLS).
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}?tls=none", self.port)
    }

    fn raw_counters(&self) -> SinkCounters {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.rsplit(['\r', '\n'])
            .find_map(parse_counters)
            .unwrap_or_default()
    }

    /// Sessions, QUITs and messages since the sink became ready (the probe excluded).
    pub fn counters(&self) -> SinkCounters {
        let raw = self.raw_counters();
        SinkCounters {
            sessions: raw.sessions.saturating_sub(self.baseline.sessions),
            quits: raw.quits.saturating_sub(self.baseline.quits),
            messages: raw.messages.saturating_sub(self.baseline.messages),
        }
    }

    /// What smtp-sink printed (counters, warnings, `-v` conversations), for diagnostics.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls the counters until `done` holds, up to `limit`; returns the last seen. For the
    /// server side of a session that the client has already closed without waiting.
    pub fn wait_for(&self, limit: Duration, done: impl Fn(&SinkCounters) -> bool) -> SinkCounters {
        let deadline = Instant::now() + limit;
        loop {
            let counters = self.counters();
            if done(&counters) || Instant::now() > deadline {
                return counters;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the server now (the port is free again when this returns).
    pub fn stop(self) {}
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_counters(record: &str) -> Option<SinkCounters> {
    let mut counters = SinkCounters::default();
    let mut fields = 0;
    for field in record.split_whitespace() {
        let (name, value) = field.split_once('=')?;
        let value = value.parse().ok()?;
        match name {
            "sess" => counters.sessions = value,
            "quit" => counters.quits = value,
            "mesg" => counters.messages = value,
            _ => return None,
        }
        fields += 1;
    }
    (fields == 3).then_some(counters)
}

/// Which TLS, if any, [`Aiosmtpd`] offers (certificate and key are PEM files).
#[derive(Debug, Clone)]
pub enum AiosmtpdTls {
    None,
    /// STARTTLS offered; clients may also stay in plain text.
    StartTls {
        cert: PathBuf,
        key: PathBuf,
    },
    /// TLS from the first byte (SMTPS).
    Implicit {
        cert: PathBuf,
        key: PathBuf,
    },
}

/// Which aiosmtpd handler answers: both keep every accepted message in a Maildir.
enum Handler {
    /// aiosmtpd's own `Mailbox`.
    Mailbox,
    /// `aiosmtpd_refusing.py` (a `Mailbox` that refuses on request).
    Refusing { pipelining: bool },
}

/// A running `aiosmtpd` with the Mailbox handler (or testkit's refusing one): every accepted
/// message lands in a Maildir.
pub struct Aiosmtpd {
    pub port: u16,
    child: Child,
    maildir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Aiosmtpd {
    /// Plain aiosmtpd, or skip/panic per [`crate::smtp_required`].
    pub fn start() -> Option<Aiosmtpd> {
        Aiosmtpd::start_with(AiosmtpdTls::None)
    }

    pub fn start_with(tls: AiosmtpdTls) -> Option<Aiosmtpd> {
        match Aiosmtpd::try_start(tls) {
            Ok(server) => Some(server),
            Err(why) => unavailable("aiosmtpd", &why),
        }
    }

    /// aiosmtpd with the handler in `aiosmtpd_refusing.py`: MAIL and RCPT refused as the
    /// addresses say (`refuse-550@…`, `refuse-450-keep@…`, `forget@…`; see that file),
    /// PIPELINING announced or not, and each stored message's `X-Pipelined-With-Mail` header
    /// naming the commands that arrived together with MAIL. For pipelined refusals, which
    /// smtp-sink cannot give: its `-f` and `-r` turn PIPELINING off.
    pub fn start_refusing(pipelining: bool) -> Option<Aiosmtpd> {
        match Aiosmtpd::launch(AiosmtpdTls::None, Handler::Refusing { pipelining }) {
            Ok(server) => Some(server),
            Err(why) => unavailable("aiosmtpd", &why),
        }
    }

    pub fn try_start(tls: AiosmtpdTls) -> Result<Aiosmtpd, String> {
        Aiosmtpd::launch(tls, Handler::Mailbox)
    }

    fn launch(tls: AiosmtpdTls, handler: Handler) -> Result<Aiosmtpd, String> {
        if !Path::new(PYTHON).exists() {
            return Err(format!("{PYTHON} not found"));
        }
        let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
        let maildir = dir.path().join("Maildir");
        let log = dir.path().join("aiosmtpd.log");
        let port = free_port();
        let mut command = Command::new(PYTHON);
        command.args(["-m", "aiosmtpd", "-n", "-l"]);
        command.arg(format!("127.0.0.1:{port}"));
        let handler_arguments = match handler {
            Handler::Mailbox => {
                command.args(["-c", "aiosmtpd.handlers.Mailbox"]);
                None
            }
            Handler::Refusing { pipelining } => {
                std::fs::write(
                    dir.path().join("aiosmtpd_refusing.py"),
                    include_str!("aiosmtpd_refusing.py"),
                )
                .map_err(|err| err.to_string())?;
                command.env("PYTHONPATH", dir.path());
                command.args(["-c", "aiosmtpd_refusing.Refusing"]);
                Some(if pipelining {
                    "pipelining"
                } else {
                    "one-by-one"
                })
            }
        };
        let implicit = matches!(tls, AiosmtpdTls::Implicit { .. });
        match &tls {
            AiosmtpdTls::None => {}
            AiosmtpdTls::StartTls { cert, key } => {
                command.arg("--tlscert").arg(cert).arg("--tlskey").arg(key);
                command.arg("--no-requiretls");
            }
            AiosmtpdTls::Implicit { cert, key } => {
                command
                    .arg("--smtpscert")
                    .arg(cert)
                    .arg("--smtpskey")
                    .arg(key);
            }
        }
        command.arg(&maildir);
        command.args(handler_arguments);
        let log_file = std::fs::File::create(&log).map_err(|err| err.to_string())?;
        let err_file = log_file.try_clone().map_err(|err| err.to_string())?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(err_file)
            .spawn()
            .map_err(|err| format!("cannot run {PYTHON} -m aiosmtpd: {err}"))?;
        let ready = if implicit {
            // A plain-text probe would fail the TLS handshake; a listening port is enough.
            wait_until_listening(&mut child, port, &log)
        } else {
            wait_until_ready(&mut child, port, "aiosmtpd", &log)
        };
        if let Err(why) = ready {
            let _ = child.kill();
            let _ = child.wait();
            return Err(why);
        }
        Ok(Aiosmtpd {
            port,
            child,
            maildir,
            _dir: dir,
        })
    }

    /// `smtp://127.0.0.1:PORT?tls=none`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}?tls=none", self.port)
    }

    /// How many messages the Maildir holds (without reading them).
    pub fn message_count(&self) -> usize {
        ["new", "cur"]
            .iter()
            .filter_map(|sub| std::fs::read_dir(self.maildir.join(sub)).ok())
            .map(|entries| entries.count())
            .sum()
    }

    /// Every message in the Maildir (`new/` and `cur/`), as aiosmtpd stored it: the message
    /// with LF line ends and `X-Peer`, `X-MailFrom`, `X-RcptTo` headers added in front.
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let mut files = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) {
                files.extend(entries.filter_map(|entry| entry.ok().map(|e| e.path())));
            }
        }
        files.sort();
        files
            .iter()
            .map(|path| std::fs::read(path).expect("Maildir message"))
            .collect()
    }
}

impl Drop for Aiosmtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_until_listening(child: &mut Child, port: u16, log: &Path) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + START_LIMIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let output = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!(
                "aiosmtpd exited with {status} before listening: {output}"
            ));
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "aiosmtpd did not listen on port {port} within {START_LIMIT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A private CA and a server certificate it signed for `localhost` and 127.0.0.1, made with
/// the `openssl` command, for TLS tests; the files live as long as the value.
pub struct TestCertificate {
    /// The CA certificate a client must trust.
    pub ca: PathBuf,
    /// The server certificate (PEM) and its key.
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCertificate {
    pub fn create() -> Option<TestCertificate> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = |name: &str| dir.path().join(name);
        // rustls refuses a self-signed CA certificate as the server's own, so: CA, then leaf.
        let extensions = "basicConstraints=CA:FALSE\n\
                          subjectAltName=DNS:localhost,IP:127.0.0.1\n\
                          extendedKeyUsage=serverAuth\n";
        if let Err(err) = std::fs::write(path("leaf.ext"), extensions) {
            return unavailable("a temporary directory", &err.to_string());
        }
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let steps: [Vec<std::ffi::OsString>; 3] = [
            args(&[
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                "/CN=marketing-base test CA",
            ])
            .chain(args(&ec))
            .chain(args(&["-keyout"]))
            .chain([path("ca.key").into()])
            .chain(args(&["-out"]))
            .chain([path("ca.pem").into()])
            .collect(),
            args(&["req", "-subj", "/CN=localhost"])
                .chain(args(&ec))
                .chain(args(&["-keyout"]))
                .chain([path("key.pem").into()])
                .chain(args(&["-out"]))
                .chain([path("leaf.csr").into()])
                .collect(),
            args(&["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
                .chain([path("leaf.csr").into()])
                .chain(args(&["-CA"]))
                .chain([path("ca.pem").into()])
                .chain(args(&["-CAkey"]))
                .chain([path("ca.key").into()])
                .chain(args(&["-extfile"]))
                .chain([path("leaf.ext").into()])
                .chain(args(&["-out"]))
                .chain([path("cert.pem").into()])
                .collect(),
        ];
        for step in steps {
            match Command::new("openssl").args(&step).output() {
                Ok(output) if output.status.success() => {}
                Ok(output) => {
                    return unavailable("openssl", &String::from_utf8_lossy(&output.stderr));
                }
                Err(err) => return unavailable("openssl", &err.to_string()),
            }
        }
        Some(TestCertificate {
            ca: path("ca.pem"),
            cert: path("cert.pem"),
            key: path("key.pem"),
            _dir: dir,
        })
    }
}

fn args<'a>(list: &'a [&'a str]) -> impl Iterator<Item = std::ffi::OsString> + 'a {
    list.iter().map(std::ffi::OsString::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_counters_parse_the_last_complete_record() {
        assert_eq!(
            parse_counters("sess=2 quit=1 mesg=7"),
            Some(SinkCounters {
                sessions: 2,
                quits: 1,
                messages: 7
            })
        );
        assert_eq!(parse_counters("sess=2 quit=1"), None);
        assert_eq!(parse_counters("warning: something"), None);
    }
}
