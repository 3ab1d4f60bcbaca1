//! The outbox transport: one `.eml` file per message, for development and for the one-shot
//! `send` without an SMTP server.

use crate::OutgoingMessage;
use crate::outcome::{Accepted, Reply, SendError};
use crate::transport::Transport;
use async_trait::async_trait;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Writes each message to `OUTBOX_DIR/<campaign>/<recipient>-<address>.eml`, taking the ids
/// from the send call or else from the `X-Campaign-ID` / `X-Recipient-ID` headers. The same
/// recipient sent twice overwrites its file, so retries leave one file per recipient.
#[derive(Debug)]
pub struct OutboxTransport {
    dir: PathBuf,
    closed: AtomicBool,
}

/// Directory for messages without a campaign id.
const NO_CAMPAIGN: &str = "no-campaign";

impl OutboxTransport {
    /// The directory is created on first write, so a mistyped path shows up in the first
    /// delivery row rather than never.
    pub fn new(dir: impl Into<PathBuf>) -> OutboxTransport {
        OutboxTransport {
            dir: dir.into(),
            closed: AtomicBool::new(false),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a message goes (the same path for the same campaign, recipient and address).
    pub fn path_for(&self, message: &OutgoingMessage) -> PathBuf {
        let campaign = message
            .campaign_id
            .clone()
            .or_else(|| message.header("X-Campaign-ID"))
            .map(|id| file_name_part(&id))
            .filter(|id| !id.is_empty())
            .unwrap_or_else(|| NO_CAMPAIGN.to_string());
        let address = message.envelope.to().next().unwrap_or("unknown");
        let recipient = message
            .recipient_id
            .clone()
            .or_else(|| message.header("X-Recipient-ID"));
        let name = match recipient {
            Some(id) => format!("{}-{}.eml", file_name_part(&id), file_name_part(address)),
            // Without an id nothing tells two messages to one address apart: keep both.
            None => format!(
                "{}-{}.eml",
                file_name_part(address),
                uuid::Uuid::now_v7().simple()
            ),
        };
        self.dir.join(campaign).join(name)
    }
}

/// Keeps a file name to characters that are safe everywhere and cannot climb out of the
/// outbox (`/`, `..`), and short enough for any file system.
fn file_name_part(raw: &str) -> String {
    let cleaned: String = raw
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '@' | '+' | '-' | '_' | '.' => c,
            _ => '_',
        })
        .take(100)
        .collect();
    cleaned.trim_start_matches('.').to_string()
}

/// Writes `content` next to `path` under a temporary name and renames it into place: readers
/// (and a crash) see either no file or the whole message, never a part of it.
fn write_atomically(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut temp = tempfile::Builder::new()
        .prefix(".")
        .suffix(".eml.tmp")
        .tempfile_in(dir)?;
    temp.write_all(content)?;
    temp.persist(path).map_err(|err| err.error)?;
    Ok(())
}

#[async_trait]
impl Transport for OutboxTransport {
    async fn send(&self, message: OutgoingMessage) -> Result<Accepted, SendError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SendError::Closed);
        }
        let path = self.path_for(&message);
        let target = path.clone();
        let written =
            tokio::task::spawn_blocking(move || write_atomically(&target, &message.content)).await;
        let result = match written {
            Ok(result) => result,
            Err(join) => Err(std::io::Error::other(join.to_string())),
        };
        match result {
            Ok(()) => Ok(Accepted {
                reply: Reply {
                    code: 250,
                    text: format!("written to {}", path.display()),
                },
                refused: Vec::new(),
            }),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "outbox write failed");
                Err(SendError::Storage {
                    path,
                    detail: err.to_string(),
                })
            }
        }
    }

    fn describe(&self) -> String {
        format!("outbox at {}", self.dir.display())
    }

    async fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::file_name_part;

    #[test]
    fn outbox_file_names_cannot_escape_the_directory() {
        assert_eq!(file_name_part("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(file_name_part("a b/c@x.org"), "a_b_c@x.org");
        assert_eq!(file_name_part("..hidden"), "hidden");
        assert_eq!(file_name_part(&"x".repeat(300)).len(), 100);
    }
}
