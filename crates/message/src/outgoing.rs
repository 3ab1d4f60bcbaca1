//! What a transport sends: an envelope and the finished message bytes, as the MIME writer
//! produces them (the one message type from build to SMTP).

use bytes::Bytes;
use std::str::FromStr;

/// The SMTP envelope: return path (`MAIL FROM`) and recipients (`RCPT TO`). Addresses are
/// checked once here, so a transport never meets a malformed one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// `None` is the null return path `<>`.
    from: Option<lettre::Address>,
    to: Vec<lettre::Address>,
}

/// Why an envelope could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// An address is not a valid `local@domain` mailbox.
    #[error("invalid address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },
    /// The envelope has no recipient.
    #[error("an envelope needs at least one recipient")]
    NoRecipients,
}

/// An envelope address, its domain as A-labels (IDNA) when the local part is ASCII: an IDN
/// domain is then deliverable by a server without SMTPUTF8, and every server accepts the
/// A-label form. Only a non-ASCII local part still needs SMTPUTF8.
fn parse_address(address: &str) -> Result<lettre::Address, EnvelopeError> {
    let ascii;
    let address = match address.rsplit_once('@') {
        Some((local, domain)) if local.is_ascii() && !domain.is_ascii() => {
            let domain =
                idna::domain_to_ascii(domain).map_err(|err| EnvelopeError::InvalidAddress {
                    address: address.to_string(),
                    reason: format!("the domain is not a valid IDN: {err}"),
                })?;
            ascii = format!("{local}@{domain}");
            ascii.as_str()
        }
        _ => address,
    };
    lettre::Address::from_str(address).map_err(|err| EnvelopeError::InvalidAddress {
        address: address.to_string(),
        reason: err.to_string(),
    })
}

/// A return path checked once, for the envelopes of many messages (a campaign's From
/// address, the return path of every message that names no other): the same check as
/// [`Envelope::new`]'s, and its result, without repeating it per message.
#[derive(Debug, Clone)]
pub(crate) struct ReturnPath(Result<Option<lettre::Address>, EnvelopeError>);

impl ReturnPath {
    /// `from` as [`Envelope::new`] takes it; an empty string is the null path `<>`.
    pub(crate) fn parse(from: &str) -> ReturnPath {
        ReturnPath(if from.is_empty() {
            Ok(None)
        } else {
            parse_address(from).map(Some)
        })
    }
}

impl Envelope {
    /// `from` is the return path (where bounces go); an empty string is the null path `<>`.
    pub fn new<I, S>(from: &str, to: I) -> Result<Envelope, EnvelopeError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Envelope::with_return_path(&ReturnPath::parse(from), to)
    }

    /// [`Envelope::new`] with the return path already checked: its error, when it has one,
    /// comes first, as `new` checks it first.
    pub(crate) fn with_return_path<I, S>(
        from: &ReturnPath,
        to: I,
    ) -> Result<Envelope, EnvelopeError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let from = from.0.clone()?;
        let to = to
            .into_iter()
            .map(|address| parse_address(address.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if to.is_empty() {
            return Err(EnvelopeError::NoRecipients);
        }
        Ok(Envelope { from, to })
    }

    /// The return path; empty for `<>`.
    pub fn from(&self) -> &str {
        self.from.as_ref().map(AsRef::as_ref).unwrap_or("")
    }

    pub fn to(&self) -> impl Iterator<Item = &str> {
        self.to.iter().map(AsRef::as_ref)
    }

    /// The return path as the SMTP client takes it; `None` is `<>`.
    pub fn return_path(&self) -> Option<&lettre::Address> {
        self.from.as_ref()
    }

    /// The recipients as the SMTP client takes them.
    pub fn to_addresses(&self) -> &[lettre::Address] {
        &self.to
    }

    /// Whether sending needs SMTPUTF8 (a non-ASCII local part; domains are A-labels).
    pub fn has_non_ascii_addresses(&self) -> bool {
        !self.from().is_ascii() || self.to().any(|address| !address.is_ascii())
    }
}

/// One message ready to go: envelope, the complete RFC 5322 bytes (CRLF line endings, built
/// by [`crate::CompiledCampaign::build`], perhaps DKIM-signed; sent unchanged), and optional ids that name it in the
/// outbox and in logs.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    pub envelope: Envelope,
    /// `Bytes` so a retry or the queue to a sender task never copies the content.
    pub content: Bytes,
    pub campaign_id: Option<String>,
    pub recipient_id: Option<String>,
    /// The campaign's `max_rate` (messages per second across the deployment), which a
    /// rate-limited transport keeps per `campaign_id` besides its own limits.
    pub campaign_max_rate: Option<f64>,
}

impl OutgoingMessage {
    pub fn new(envelope: Envelope, content: impl Into<Bytes>) -> OutgoingMessage {
        OutgoingMessage {
            envelope,
            content: content.into(),
            campaign_id: None,
            recipient_id: None,
            campaign_max_rate: None,
        }
    }

    /// Names the message after its campaign and recipient (outbox file name, logs).
    pub fn with_ids(
        mut self,
        campaign_id: impl Into<String>,
        recipient_id: impl Into<String>,
    ) -> OutgoingMessage {
        self.campaign_id = Some(campaign_id.into());
        self.recipient_id = Some(recipient_id.into());
        self
    }

    /// The value of a header field in the message's header section (first occurrence,
    /// unfolded, trimmed); names compare case-insensitively.
    pub fn header(&self, name: &str) -> Option<String> {
        header_value(&self.content, name)
    }
}

fn header_value(content: &[u8], name: &str) -> Option<String> {
    let mut lines = content
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line));
    while let Some(line) = lines.next() {
        if line.is_empty() {
            return None; // end of the header section
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon].eq_ignore_ascii_case(name.as_bytes()) {
            continue;
        }
        let mut value = String::from_utf8_lossy(&line[colon + 1..])
            .trim()
            .to_string();
        // Folded continuation lines start with white space.
        for next in lines.by_ref() {
            match next.first() {
                Some(b' ') | Some(b'\t') => {
                    value.push(' ');
                    value.push_str(String::from_utf8_lossy(next).trim());
                }
                _ => break,
            }
        }
        return Some(value);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_checks_addresses_and_needs_a_recipient() {
        let envelope = Envelope::new("bounce@example.com", ["a@example.org"]).expect("valid");
        assert_eq!(envelope.from(), "bounce@example.com");
        assert_eq!(envelope.to().collect::<Vec<_>>(), ["a@example.org"]);
        assert!(matches!(
            Envelope::new("bounce@example.com", ["not an address"]),
            Err(EnvelopeError::InvalidAddress { .. })
        ));
        assert_eq!(
            Envelope::new("bounce@example.com", Vec::<&str>::new()),
            Err(EnvelopeError::NoRecipients)
        );
        assert_eq!(
            Envelope::new("", ["a@example.org"])
                .expect("null path")
                .from(),
            ""
        );
    }

    /// An envelope with a return path checked beforehand is the one the checks of both
    /// addresses at send time build (the code before the return path was checked once), or
    /// the same error: valid, IDN and invalid return paths and recipients, the null path.
    #[test]
    fn a_return_path_checked_once_builds_what_checking_both_builds() {
        let checking_both = |from: &str, to: &[&str]| -> Result<Envelope, EnvelopeError> {
            let from = if from.is_empty() {
                None
            } else {
                Some(parse_address(from)?)
            };
            let to = to
                .iter()
                .map(|address| parse_address(address))
                .collect::<Result<Vec<_>, _>>()?;
            if to.is_empty() {
                return Err(EnvelopeError::NoRecipients);
            }
            Ok(Envelope { from, to })
        };
        let addresses = [
            "",
            "bounce@example.com",
            "bounces+AbC_123@mail.example.org",
            "news@bücher.example",
            "zoë@example.com",
            "not an address",
            "a@b@c.example",
            "@example.com",
            "x@",
        ];
        for from in addresses {
            let return_path = ReturnPath::parse(from);
            for to in addresses {
                assert_eq!(
                    Envelope::with_return_path(&return_path, [to]),
                    checking_both(from, &[to]),
                    "{from:?} -> {to:?}"
                );
            }
            assert_eq!(
                Envelope::with_return_path(&return_path, Vec::<&str>::new()),
                checking_both(from, &[]),
            );
        }
        let envelope = Envelope::with_return_path(
            &ReturnPath::parse("news@bücher.example"),
            ["reader@example.com"],
        )
        .unwrap();
        assert_eq!(envelope.from(), "news@xn--bcher-kva.example");
        assert_eq!(envelope.to().collect::<Vec<_>>(), ["reader@example.com"]);
    }

    #[test]
    fn header_lookup_is_case_insensitive_unfolds_and_stops_at_the_body() {
        let content =
            b"Subject: hi\r\nx-campaign-id: c1\r\nX-Long: a\r\n b\r\n\r\nX-Recipient-ID: body\r\n";
        assert_eq!(
            header_value(content, "X-Campaign-ID").as_deref(),
            Some("c1")
        );
        assert_eq!(header_value(content, "x-long").as_deref(), Some("a b"));
        assert_eq!(header_value(content, "X-Recipient-ID"), None);
    }
}
