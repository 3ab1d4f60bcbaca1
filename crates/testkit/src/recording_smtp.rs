//! aiosmtpd with a handler that records when each message arrived (for rates measured at the
//! receiving end) and can throttle one domain on demand, answering `421 4.7.0` at `RCPT TO`
//! as a large mailbox provider does when pushed — for the tests of sending rates.
//!
//! Each accepted recipient is one line `SECONDS RECIPIENT MESSAGE-ID` in a log file, written
//! (and flushed) before the reply to the final `.`, so a message is in the log once accepted.

use crate::smtp::{PYTHON, free_port};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const HANDLER: &str = r#"
import os, re, time

class Recording:
    """Records every accepted recipient with its arrival time and Message-ID; while the flag
    file exists, answers RCPT TO for the throttled domain with 421 4.7.0."""

    def __init__(self, log, throttled_domain="", flag=""):
        self.log = open(log, "a", buffering=1)
        self.throttled_domain = throttled_domain.lower()
        self.flag = flag

    @classmethod
    def from_cli(cls, parser, *args):
        return cls(*args)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        domain = address.rsplit("@", 1)[-1].lower()
        if self.throttled_domain and domain == self.throttled_domain and os.path.exists(self.flag):
            self.log.write("%.6f THROTTLED %s\n" % (time.time(), address))
            return "421 4.7.0 Try again later: too many messages from your IP"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        match = re.search(rb"^Message-ID:\s*(\S+)", envelope.content, re.I | re.M)
        message_id = match.group(1).decode() if match else "-"
        now = time.time()
        for rcpt in envelope.rcpt_tos:
            self.log.write("%.6f %s %s\n" % (now, rcpt, message_id))
        return "250 OK"
"#;

/// One accepted recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    /// Seconds since the Unix epoch.
    pub at: f64,
    pub recipient: String,
    pub message_id: String,
}

/// A running recording aiosmtpd; killed when dropped.
pub struct RecordingSmtp {
    pub port: u16,
    child: Child,
    log: PathBuf,
    flag: PathBuf,
    _dir: tempfile::TempDir,
}

impl RecordingSmtp {
    /// Records everything, throttles nothing; or skip/panic per [`crate::smtp_required`].
    pub fn start() -> Option<RecordingSmtp> {
        RecordingSmtp::start_throttling("")
    }

    /// Records everything; answers `421 4.7.0` for recipients at `domain` while
    /// [`RecordingSmtp::set_throttling`] is on (it starts off).
    pub fn start_throttling(domain: &str) -> Option<RecordingSmtp> {
        match RecordingSmtp::try_start(domain) {
            Ok(server) => Some(server),
            Err(why) => {
                if crate::smtp_required() {
                    panic!("aiosmtpd is required (CI/REQUIRE_SMTP) but unavailable: {why}");
                }
                eprintln!("skipping: aiosmtpd is unavailable: {why}");
                None
            }
        }
    }

    fn try_start(domain: &str) -> Result<RecordingSmtp, String> {
        if !Path::new(PYTHON).exists() {
            return Err(format!("{PYTHON} not found"));
        }
        let dir = tempfile::tempdir().map_err(|err| err.to_string())?;
        std::fs::write(dir.path().join("recording.py"), HANDLER).map_err(|e| e.to_string())?;
        let log = dir.path().join("arrivals.log");
        let flag = dir.path().join("throttle");
        let output = dir.path().join("aiosmtpd.log");
        let port = free_port();
        let out = std::fs::File::create(&output).map_err(|err| err.to_string())?;
        let err = out.try_clone().map_err(|err| err.to_string())?;
        let mut child = Command::new(PYTHON)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "recording.Recording"])
            .arg(&log)
            .arg(domain)
            .arg(&flag)
            .env("PYTHONPATH", dir.path())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|err| format!("cannot run {PYTHON} -m aiosmtpd: {err}"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let said = std::fs::read_to_string(&output).unwrap_or_default();
                return Err(format!("aiosmtpd exited with {status}: {said}"));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("aiosmtpd did not listen on port {port}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(RecordingSmtp {
            port,
            child,
            log,
            flag,
            _dir: dir,
        })
    }

    /// `smtp://127.0.0.1:PORT?tls=none`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}?tls=none", self.port)
    }

    /// Turns the throttling of the domain given at start on or off (effective for the next
    /// `RCPT TO`).
    pub fn set_throttling(&self, on: bool) {
        if on {
            std::fs::write(&self.flag, b"on").expect("throttle flag written");
        } else if self.flag.exists() {
            std::fs::remove_file(&self.flag).expect("throttle flag removed");
        }
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            // A line being written has no end yet; it is read next time.
            .filter(|line| line.split(' ').count() == 3)
            .map(str::to_string)
            .collect()
    }

    /// Every accepted recipient so far, in arrival order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.lines()
            .iter()
            .filter(|line| !line.contains(" THROTTLED "))
            .filter_map(|line| {
                let mut fields = line.split(' ');
                Some(Arrival {
                    at: fields.next()?.parse().ok()?,
                    recipient: fields.next()?.to_string(),
                    message_id: fields.next()?.to_string(),
                })
            })
            .collect()
    }

    /// When each `421` was answered (seconds since the epoch), with the recipient.
    pub fn throttled(&self) -> Vec<(f64, String)> {
        self.lines()
            .iter()
            .filter_map(|line| {
                let mut fields = line.split(' ');
                let at = fields.next()?.parse().ok()?;
                (fields.next()? == "THROTTLED").then(|| (at, fields.next().unwrap_or("").into()))
            })
            .collect()
    }
}

impl Drop for RecordingSmtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
