//! Bounces and spam complaints, read from the raw mail that arrives at the bounce and
//! feedback-loop mailboxes. Pure: bytes in, values out; storing events and suppressing
//! addresses is the business of the [`crate::intake`].
//!
//! # What arrives
//!
//! - A **delivery status notification** (DSN, RFC 3464) is a
//!   `multipart/report; report-type=delivery-status`: a human-readable part, a
//!   `message/delivery-status` part, and the original (whole as `message/rfc822`, or only its
//!   headers as `text/rfc822-headers`). The delivery-status part is one group of per-message
//!   fields, then one group per recipient (`Final-Recipient`, `Action`, `Status`, …) separated
//!   by blank lines. Only that part is read for the outcome: the human-readable text is written
//!   for people and varies by MTA, locale and even timer settings (Postfix's delay warning says
//!   "0 hour(s)" under short timers) while the fields are standardised.
//! - A **complaint** (ARF, RFC 5965) is a `multipart/report; report-type=feedback-report` with a
//!   `message/feedback-report` part (`Feedback-Type`, `Original-Rcpt-To`, …) and the original.
//!
//! # Classification
//!
//! [`Severity`] is derived from `Action` and the class of `Status` together, never from one
//! alone:
//!
//! - `failed` with a 5.x.x status is **hard**: the address is permanently undeliverable.
//! - `delayed` is **soft** whatever the status: the MTA is still trying.
//! - `failed` with a 4.x.x status is also **soft**, flagged [`RecipientStatus::expired`]. This
//!   is what an MTA sends when a *temporary* condition (mailbox full, remote out of storage,
//!   greylisting, an outage) outlasted its queue lifetime: Postfix returns such a message as
//!   `Action: failed` with the 4.x.x status of its last attempt. Delivery of that message is
//!   over, but the address itself was never refused, so treating it as hard would suppress
//!   valid subscribers after one bad day at their provider. Callers that want to escalate
//!   repeated expiries can count them through `expired`.
//! - `delivered`, `relayed`, `expanded` are informational ([`Severity::None`]): success DSNs,
//!   requested with `NOTIFY=SUCCESS` or sent by MTAs handing off to a server without DSN support.
//! - A `failed` whose status is not 4.x.x is hard: `failed` means the MTA gave up for good, and
//!   only 4.x.x is known to mark a give-up after retrying.
//!
//! Complaints are their own kind, not a severity: a complaint is about consent, not
//! deliverability.
//!
//! # Attribution: why VERP
//!
//! A report's recipient fields name the address, not the message, and anyone can mail the
//! bounce mailbox. Messages are therefore sent with the envelope sender (Return-Path)
//! `bounces+TOKEN@domain` ([`verp_address`]); MTAs send DSNs to exactly that address, and it
//! comes back in the report's `X-Original-To`/`Delivered-To`/`To`, in a complaint's
//! `Original-Mail-From`, and in the returned original's `Return-Path`.
//! [`Feedback::verp_token`] finds it there; a signed token (see [`crate::token`]) then says
//! which campaign and recipient the report is about, in a way a forged report cannot fake.

use std::fmt;
use std::str::FromStr;

use mail_parser::{Message, MessageParser, MimeHeaders, PartType};
use serde::{Deserialize, Serialize};

/// Why a raw message could not be read as a bounce or complaint report.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedbackError {
    /// The message is not `multipart/report`: an ordinary email, or a bounce written as free
    /// text by an MTA that does not produce RFC 3464 reports.
    #[error("not a report: the message is {found}, not multipart/report")]
    NotAReport { found: String },
    /// A `multipart/report` of another kind, e.g. a read receipt (`disposition-notification`).
    #[error(
        "unsupported report type `{report_type}`: only delivery-status and feedback-report are read"
    )]
    UnsupportedReportType { report_type: String },
    /// A delivery report without its machine-readable part (typically truncated).
    #[error("the report has no message/delivery-status part (truncated, or not a DSN)")]
    MissingDeliveryStatus,
    /// A feedback report without its machine-readable part (typically truncated).
    #[error("the report has no message/feedback-report part (truncated, or not an ARF report)")]
    MissingFeedbackReport,
    /// The delivery-status part holds only per-message fields.
    #[error(
        "the delivery-status part has no per-recipient fields (no Final-Recipient); the report may be truncated"
    )]
    NoRecipients,
    /// A required field is absent.
    #[error("{context} has no {field} field")]
    MissingField {
        field: &'static str,
        context: String,
    },
    /// `Action` is not one of RFC 3464's five values.
    #[error(
        "unknown Action `{value}` for {recipient}: expected failed, delayed, delivered, relayed or expanded"
    )]
    UnknownAction { recipient: String, value: String },
    /// `Status` is not an RFC 3463 enhanced status code.
    #[error("malformed Status for {recipient}: {source}")]
    MalformedStatus {
        recipient: String,
        source: StatusCodeError,
    },
}

/// A value that is not an RFC 3463 enhanced status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{value}` is not an enhanced status code (class.subject.detail, class 2, 4 or 5, 1-3 digits each)"
)]
pub struct StatusCodeError {
    pub value: String,
}

/// One parsed report: what happened, where the report was sent, and what it was about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    #[serde(flatten)]
    pub kind: ReportKind,
    /// The addresses the report itself was delivered to (where a VERP token is found).
    pub addressed_to: ReportAddresses,
    /// The message the report is about, when the report returned it (whole or headers only).
    pub original: Option<OriginalMessage>,
}

/// Bounce or complaint, with the fields of its machine-readable part. What it means for the
/// address (hard or soft bounce, complaint) is a [`crate::FeedbackKind`], decided by the
/// [`crate::intake`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReportKind {
    Bounce(DeliveryReport),
    Complaint(ComplaintReport),
}

/// The `message/delivery-status` part of a DSN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryReport {
    /// `Reporting-MTA`, without its type (`dns; mx.example` → `mx.example`).
    pub reporting_mta: Option<String>,
    /// `Original-Envelope-Id`: the ENVID the message was submitted with, if any.
    pub original_envelope_id: Option<String>,
    /// `Arrival-Date`, as written.
    pub arrival_date: Option<String>,
    /// One entry per recipient group, in report order; never empty.
    pub recipients: Vec<RecipientStatus>,
}

/// What happened to one recipient, per RFC 3464.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientStatus {
    /// `Final-Recipient` address, without its type (`rfc822; a@b` → `a@b`).
    pub final_recipient: String,
    /// `Original-Recipient` address (as given to the MTA in `ORCPT`), without its type.
    pub original_recipient: Option<String>,
    pub action: Action,
    pub status: StatusCode,
    /// `Diagnostic-Code` unfolded, type included (`smtp; 550 5.1.1 …` or `X-Postfix; …`): the
    /// type says whether the text is a remote SMTP reply or the reporting MTA's own words.
    pub diagnostic_code: Option<String>,
    /// `Remote-MTA`, without its type.
    pub remote_mta: Option<String>,
    /// `Will-Retry-Until` (delay reports), as written.
    pub will_retry_until: Option<String>,
}

impl RecipientStatus {
    pub fn severity(&self) -> Severity {
        Severity::classify(self.action, self.status)
    }

    /// A final failure of a temporary condition (`failed` + 4.x.x); see the module docs.
    pub fn expired(&self) -> bool {
        is_expired(self.action, self.status)
    }
}

/// RFC 3464 `Action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The MTA gave up on this recipient.
    Failed,
    /// Not delivered yet; the MTA keeps trying.
    Delayed,
    /// Delivered to the recipient's mailbox.
    Delivered,
    /// Handed to a system that does not send further DSNs.
    Relayed,
    /// Delivered, and forwarded to further addresses (a list or alias).
    Expanded,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
            Action::Expanded => "expanded",
        }
    }

    /// Case-insensitive, ignoring a trailing comment (`failed (bad mailbox)`).
    fn parse(value: &str) -> Option<Action> {
        let word = value.split_whitespace().next().unwrap_or_default();
        [
            Action::Failed,
            Action::Delayed,
            Action::Delivered,
            Action::Relayed,
            Action::Expanded,
        ]
        .into_iter()
        .find(|action| action.as_str().eq_ignore_ascii_case(word))
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The class digit of an enhanced status code (RFC 3463).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusClass {
    /// 2.x.x
    Success,
    /// 4.x.x: persistent transient failure; the same message may succeed later.
    Transient,
    /// 5.x.x: permanent failure; resending the same message will not succeed.
    Permanent,
}

/// An enhanced status code such as `5.1.1`; written and read as that text (also in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StatusCode {
    pub class: StatusClass,
    pub subject: u16,
    pub detail: u16,
}

impl FromStr for StatusCode {
    type Err = StatusCodeError;

    /// `class.subject.detail`; a trailing comment (`5.0.0 (permanent failure)`) is ignored.
    fn from_str(value: &str) -> Result<StatusCode, StatusCodeError> {
        let malformed = || StatusCodeError {
            value: value.trim().to_string(),
        };
        let code = value.split_whitespace().next().ok_or_else(malformed)?;
        let mut parts = code.split('.');
        let (Some(class), Some(subject), Some(detail), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let class = match class {
            "2" => StatusClass::Success,
            "4" => StatusClass::Transient,
            "5" => StatusClass::Permanent,
            _ => return Err(malformed()),
        };
        let number = |digits: &str| {
            (1..=3).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
        };
        if !number(subject) || !number(detail) {
            return Err(malformed());
        }
        Ok(StatusCode {
            class,
            subject: subject.parse().map_err(|_| malformed())?,
            detail: detail.parse().map_err(|_| malformed())?,
        })
    }
}

impl TryFrom<String> for StatusCode {
    type Error = StatusCodeError;

    fn try_from(value: String) -> Result<StatusCode, StatusCodeError> {
        value.parse()
    }
}

impl From<StatusCode> for String {
    fn from(code: StatusCode) -> String {
        code.to_string()
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let class = match self.class {
            StatusClass::Success => 2,
            StatusClass::Transient => 4,
            StatusClass::Permanent => 5,
        };
        write!(f, "{class}.{}.{}", self.subject, self.detail)
    }
}

/// How a delivery outcome bears on the address; see the module docs for the rules and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Permanently undeliverable: suppress the address.
    Hard,
    /// Temporarily undeliverable (delayed, or expired after retries).
    Soft,
    /// Informational: delivered, relayed or expanded.
    None,
}

impl Severity {
    /// The one classification used for parsed DSNs and for [`BounceNotice`]s.
    pub fn classify(action: Action, status: StatusCode) -> Severity {
        match action {
            Action::Delayed => Severity::Soft,
            Action::Failed if status.class == StatusClass::Transient => Severity::Soft,
            Action::Failed => Severity::Hard,
            Action::Delivered | Action::Relayed | Action::Expanded => Severity::None,
        }
    }
}

fn is_expired(action: Action, status: StatusCode) -> bool {
    action == Action::Failed && status.class == StatusClass::Transient
}

/// The `message/feedback-report` part of an ARF complaint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComplaintReport {
    pub feedback_type: FeedbackType,
    /// `Version` (always `1` today).
    pub version: Option<String>,
    /// `User-Agent`: the software that generated the report.
    pub user_agent: Option<String>,
    /// `Original-Mail-From`: the envelope sender of the original, i.e. our VERP address.
    pub original_mail_from: Option<String>,
    /// `Original-Rcpt-To` (may repeat): who received the message and complained.
    pub original_rcpt_to: Vec<String>,
    /// `Arrival-Date`, as written.
    pub arrival_date: Option<String>,
}

/// ARF `Feedback-Type` (RFC 5965 and its registry); unregistered values are kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum FeedbackType {
    /// Unsolicited mail: the recipient marked it as spam.
    Abuse,
    /// An email authentication failure report (RFC 6591).
    AuthFailure,
    /// Phishing or other fraud.
    Fraud,
    /// The recipient marked it as not spam.
    NotSpam,
    /// The registered catch-all `other`.
    Other,
    /// Malware.
    Virus,
    /// A value outside the registry, lower-cased.
    Unregistered(String),
}

impl FeedbackType {
    pub fn as_str(&self) -> &str {
        match self {
            FeedbackType::Abuse => "abuse",
            FeedbackType::AuthFailure => "auth-failure",
            FeedbackType::Fraud => "fraud",
            FeedbackType::NotSpam => "not-spam",
            FeedbackType::Other => "other",
            FeedbackType::Virus => "virus",
            FeedbackType::Unregistered(value) => value,
        }
    }
}

impl From<String> for FeedbackType {
    fn from(value: String) -> FeedbackType {
        let value = value.trim().to_ascii_lowercase();
        match value.as_str() {
            "abuse" => FeedbackType::Abuse,
            "auth-failure" => FeedbackType::AuthFailure,
            "fraud" => FeedbackType::Fraud,
            "not-spam" => FeedbackType::NotSpam,
            "other" => FeedbackType::Other,
            "virus" => FeedbackType::Virus,
            _ => FeedbackType::Unregistered(value),
        }
    }
}

impl From<FeedbackType> for String {
    fn from(value: FeedbackType) -> String {
        value.as_str().to_string()
    }
}

impl fmt::Display for FeedbackType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The addresses the report was delivered to, most reliable first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAddresses {
    /// `X-Original-To` (Postfix): the envelope recipient before any rewriting.
    pub x_original_to: Vec<String>,
    /// `Delivered-To`: the mailbox it was delivered to (repeats across forwarding hops).
    pub delivered_to: Vec<String>,
    /// The report's `To` header.
    pub to: Vec<String>,
}

impl ReportAddresses {
    /// All addresses in the order above.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.x_original_to
            .iter()
            .chain(&self.delivered_to)
            .chain(&self.to)
            .map(String::as_str)
    }
}

/// The original message as returned inside the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginalMessage {
    /// `Message-ID` with its angle brackets, as our MIME writer sets it (`<…@…>`).
    pub message_id: Option<String>,
    /// `Return-Path` address without brackets; `None` when absent or the null path `<>`.
    pub return_path: Option<String>,
    /// The `To` header's addresses.
    pub to: Vec<String>,
    /// Whether the whole message or only its headers came back.
    pub returned: Returned,
}

/// How a report returned the original.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Returned {
    /// `message/rfc822` (or `message/global`): the whole message.
    Message,
    /// `text/rfc822-headers` (or `message/global-headers`): the header block only.
    Headers,
}

impl Feedback {
    /// The original's Message-ID (with angle brackets), when the report returned it.
    pub fn message_id(&self) -> Option<&str> {
        self.original.as_ref()?.message_id.as_deref()
    }

    /// The VERP token the report can be attributed by: from the addresses the report was
    /// delivered to, then a complaint's `Original-Mail-From`, then the original's
    /// `Return-Path`. `None` when no address carries `local_prefix+TOKEN`.
    pub fn verp_token(&self, local_prefix: &str) -> Option<&str> {
        let original_mail_from = match &self.kind {
            ReportKind::Complaint(complaint) => complaint.original_mail_from.as_deref(),
            ReportKind::Bounce(_) => None,
        };
        let return_path = self
            .original
            .as_ref()
            .and_then(|original| original.return_path.as_deref());
        self.addressed_to
            .iter()
            .chain(original_mail_from)
            .chain(return_path)
            .find_map(|address| verp_token(address, local_prefix))
    }

    /// A bounce as the simple notices the API also accepts as JSON, one per recipient, so
    /// both intake paths are classified and recorded the same way. Empty for complaints.
    pub fn bounce_notices(&self) -> Vec<BounceNotice> {
        let ReportKind::Bounce(report) = &self.kind else {
            return Vec::new();
        };
        report
            .recipients
            .iter()
            .map(|recipient| BounceNotice {
                recipient: recipient.final_recipient.clone(),
                status: recipient.status,
                action: recipient.action,
                diagnostic: recipient.diagnostic_code.clone(),
                message_id: self.message_id().map(str::to_string),
            })
            .collect()
    }
}

/// One recipient's bounce as the intake classifies and records it, whether it came in a
/// parsed DSN ([`Feedback::bounce_notices`]) or in the API's JSON form
/// ([`crate::intake::BounceJson`]). As JSON:
/// `{"recipient": "a@b", "status": "5.1.1", "action": "failed", "diagnostic": "…", "message_id": "<…>"}`.
/// `status` must be a valid enhanced status code and `action` one of the five RFC 3464 values
/// (lower case); `diagnostic` and `message_id` are optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BounceNotice {
    pub recipient: String,
    pub status: StatusCode,
    pub action: Action,
    pub diagnostic: Option<String>,
    pub message_id: Option<String>,
}

impl BounceNotice {
    pub fn severity(&self) -> Severity {
        Severity::classify(self.action, self.status)
    }

    /// See [`RecipientStatus::expired`].
    pub fn expired(&self) -> bool {
        is_expired(self.action, self.status)
    }
}

/// The TOKEN of a VERP address `PREFIX+TOKEN@domain`: everything between the first `+` and the
/// `@`, when the part before the `+` equals `local_prefix` (ignoring ASCII case, as mail
/// systems may change the case of local parts). Surrounding whitespace and angle brackets are
/// ignored. `None` without the prefix, or when the token is empty or not base64url
/// (`[A-Za-z0-9_-]`), which our tokens always are.
pub fn verp_token<'a>(address: &'a str, local_prefix: &str) -> Option<&'a str> {
    let address = address.trim();
    let address = address
        .strip_prefix('<')
        .and_then(|inner| inner.strip_suffix('>'))
        .unwrap_or(address);
    let (local, domain) = address.rsplit_once('@')?;
    let (prefix, token) = local.split_once('+')?;
    let base64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    (prefix.eq_ignore_ascii_case(local_prefix)
        && !domain.is_empty()
        && !token.is_empty()
        && token.bytes().all(base64url))
    .then_some(token)
}

/// `prefix+token@domain`, the envelope sender that makes bounces come back with `token`.
/// SMTP limits a local part to 64 octets (RFC 5321): with the current 56-character signed
/// tokens that leaves 7 characters for the prefix (`bounces` fits exactly).
pub fn verp_address(local_prefix: &str, token: &str, domain: &str) -> String {
    format!("{local_prefix}+{token}@{domain}")
}

/// Reads a raw report as received at the bounce or feedback mailbox (LF or CRLF line endings).
pub fn parse_report(raw: &[u8]) -> Result<Feedback, FeedbackError> {
    let message = MessageParser::new()
        .parse(raw)
        .ok_or_else(|| FeedbackError::NotAReport {
            found: "not a MIME message (no header fields)".to_string(),
        })?;

    let report_type = match message.content_type() {
        Some(ct) if is_type(ct.ctype(), ct.subtype(), "multipart", "report") => ct
            .attributes()
            .unwrap_or_default()
            .iter()
            .find(|attribute| attribute.name.eq_ignore_ascii_case("report-type"))
            .map(|attribute| attribute.value.to_ascii_lowercase()),
        Some(ct) => {
            return Err(FeedbackError::NotAReport {
                found: format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default()),
            });
        }
        None => {
            return Err(FeedbackError::NotAReport {
                found: "text/plain (no Content-Type)".to_string(),
            });
        }
    };

    let parts = ReportParts::find(&message);
    let kind = match report_type.as_deref() {
        Some("delivery-status") => bounce(parts.delivery_status)?,
        Some("feedback-report") => complaint(parts.feedback_report)?,
        Some(other) => {
            return Err(FeedbackError::UnsupportedReportType {
                report_type: other.to_string(),
            });
        }
        // Without the parameter, go by the machine-readable part that is there.
        None if parts.feedback_report.is_some() => complaint(parts.feedback_report)?,
        None => bounce(parts.delivery_status)?,
    };

    Ok(Feedback {
        kind,
        addressed_to: report_addresses(&message),
        original: parts.original,
    })
}

/// The parts of a `multipart/report` this module reads.
struct ReportParts<'m> {
    delivery_status: Option<&'m [u8]>,
    feedback_report: Option<&'m [u8]>,
    original: Option<OriginalMessage>,
}

impl<'m> ReportParts<'m> {
    /// Looks at every part of the report itself; a returned `message/rfc822` is parsed as a
    /// nested message by mail-parser, so its own parts are not mistaken for the report's.
    fn find(message: &'m Message<'m>) -> ReportParts<'m> {
        let mut found = ReportParts {
            delivery_status: None,
            feedback_report: None,
            original: None,
        };
        for part in message.parts.iter().skip(1) {
            let Some(ct) = part.content_type() else {
                continue;
            };
            let (ctype, subtype) = (ct.ctype(), ct.subtype());
            if is_type(ctype, subtype, "message", "delivery-status")
                || is_type(ctype, subtype, "message", "global-delivery-status")
            {
                found.delivery_status.get_or_insert(part.contents());
            } else if is_type(ctype, subtype, "message", "feedback-report") {
                found.feedback_report.get_or_insert(part.contents());
            } else if found.original.is_none() {
                if let PartType::Message(original) = &part.body {
                    found.original = Some(original_message(original, Returned::Message));
                } else if is_type(ctype, subtype, "text", "rfc822-headers")
                    || is_type(ctype, subtype, "message", "global-headers")
                {
                    found.original = MessageParser::new()
                        .parse_headers(part.contents())
                        .map(|headers| original_message(&headers, Returned::Headers));
                }
            }
        }
        found
    }
}

fn is_type(ctype: &str, subtype: Option<&str>, want_type: &str, want_subtype: &str) -> bool {
    ctype.eq_ignore_ascii_case(want_type)
        && subtype.is_some_and(|subtype| subtype.eq_ignore_ascii_case(want_subtype))
}

fn bounce(delivery_status: Option<&[u8]>) -> Result<ReportKind, FeedbackError> {
    let text =
        String::from_utf8_lossy(delivery_status.ok_or(FeedbackError::MissingDeliveryStatus)?);
    let mut groups = field_groups(&text).into_iter().peekable();
    // The first group holds the per-message fields, unless a non-conforming MTA left them out.
    let per_message = match groups.peek() {
        Some(first) if field(first, "Final-Recipient").is_none() => groups.next(),
        _ => None,
    }
    .unwrap_or_default();
    let recipients = groups
        .map(|group| recipient_status(&group))
        .collect::<Result<Vec<_>, _>>()?;
    if recipients.is_empty() {
        return Err(FeedbackError::NoRecipients);
    }
    Ok(ReportKind::Bounce(DeliveryReport {
        reporting_mta: field(&per_message, "Reporting-MTA").map(untyped),
        original_envelope_id: field(&per_message, "Original-Envelope-Id").map(str::to_string),
        arrival_date: field(&per_message, "Arrival-Date").map(str::to_string),
        recipients,
    }))
}

fn recipient_status(group: &[Field]) -> Result<RecipientStatus, FeedbackError> {
    let final_recipient = field(group, "Final-Recipient")
        .map(|value| bare_address(&untyped(value)))
        .ok_or_else(|| FeedbackError::MissingField {
            field: "Final-Recipient",
            context: "a per-recipient group of the delivery-status part".to_string(),
        })?;
    let required = |name: &'static str| {
        field(group, name).ok_or_else(|| FeedbackError::MissingField {
            field: name,
            context: format!("the delivery status of {final_recipient}"),
        })
    };
    let action = required("Action")?;
    let action = Action::parse(action).ok_or_else(|| FeedbackError::UnknownAction {
        recipient: final_recipient.clone(),
        value: action.to_string(),
    })?;
    let status = required("Status")?
        .parse()
        .map_err(|source| FeedbackError::MalformedStatus {
            recipient: final_recipient.clone(),
            source,
        })?;
    Ok(RecipientStatus {
        original_recipient: field(group, "Original-Recipient")
            .map(|value| bare_address(&untyped(value))),
        action,
        status,
        diagnostic_code: field(group, "Diagnostic-Code").map(str::to_string),
        remote_mta: field(group, "Remote-MTA").map(untyped),
        will_retry_until: field(group, "Will-Retry-Until").map(str::to_string),
        final_recipient,
    })
}

fn complaint(feedback_report: Option<&[u8]>) -> Result<ReportKind, FeedbackError> {
    let text =
        String::from_utf8_lossy(feedback_report.ok_or(FeedbackError::MissingFeedbackReport)?);
    // One group per RFC 5965; tolerate stray blank lines by reading all of them.
    let fields: Vec<Field> = field_groups(&text).into_iter().flatten().collect();
    let feedback_type =
        field(&fields, "Feedback-Type").ok_or_else(|| FeedbackError::MissingField {
            field: "Feedback-Type",
            context: "the feedback-report part".to_string(),
        })?;
    Ok(ReportKind::Complaint(ComplaintReport {
        feedback_type: FeedbackType::from(feedback_type.to_string()),
        version: field(&fields, "Version").map(str::to_string),
        user_agent: field(&fields, "User-Agent").map(str::to_string),
        original_mail_from: field(&fields, "Original-Mail-From").map(bare_address),
        original_rcpt_to: fields
            .iter()
            .filter(|f| f.name.eq_ignore_ascii_case("Original-Rcpt-To"))
            .map(|f| bare_address(&f.value))
            .collect(),
        arrival_date: field(&fields, "Arrival-Date").map(str::to_string),
    }))
}

fn report_addresses(message: &Message<'_>) -> ReportAddresses {
    ReportAddresses {
        x_original_to: raw_addresses(message, "X-Original-To"),
        delivered_to: raw_addresses(message, "Delivered-To"),
        to: header_addresses(message),
    }
}

fn original_message(message: &Message<'_>, returned: Returned) -> OriginalMessage {
    OriginalMessage {
        message_id: message.message_id().map(|id| format!("<{id}>")),
        return_path: raw_addresses(message, "Return-Path")
            .into_iter()
            .find(|address| !address.is_empty()),
        to: header_addresses(message),
        returned,
    }
}

/// Single-address trace fields, read raw: mail-parser leaves them unparsed.
fn raw_addresses(message: &Message<'_>, name: &str) -> Vec<String> {
    message
        .headers_raw()
        .filter(|(header, _)| header.eq_ignore_ascii_case(name))
        .map(|(_, value)| bare_address(value))
        .collect()
}

fn header_addresses(message: &Message<'_>) -> Vec<String> {
    message
        .to()
        .into_iter()
        .flat_map(|to| to.iter())
        .filter_map(|addr| addr.address())
        .map(str::to_string)
        .collect()
}

/// `<a@b>` or ` a@b ` → `a@b`.
fn bare_address(value: &str) -> String {
    let value = value.trim();
    value
        .strip_prefix('<')
        .and_then(|inner| inner.strip_suffix('>'))
        .unwrap_or(value)
        .trim()
        .to_string()
}

/// The value of a typed DSN field without its type: `rfc822; a@b` → `a@b`. Postfix writes
/// `rfc822; a@b` in Final-Recipient but `rfc822;a@b` in Original-Recipient; both are accepted,
/// and so is a value with no type at all.
fn untyped(value: &str) -> String {
    value
        .split_once(';')
        .map_or(value, |(_, rest)| rest)
        .trim()
        .to_string()
}

/// One header-style field of a report part, unfolded.
struct Field {
    name: String,
    value: String,
}

fn field<'f>(fields: &'f [Field], name: &str) -> Option<&'f str> {
    fields
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case(name))
        .map(|f| f.value.as_str())
}

/// Splits a `message/delivery-status` or `message/feedback-report` body into its groups of
/// fields (separated by blank lines), unfolding continuation lines. A fold becomes one space:
/// MTAs fold long values such as Diagnostic-Code at a space and indent the continuation, so
/// that restores the text they folded. Lines that are not fields are skipped.
fn field_groups(text: &str) -> Vec<Vec<Field>> {
    let mut groups = Vec::new();
    let mut group: Vec<Field> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !group.is_empty() {
                groups.push(std::mem::take(&mut group));
            }
        } else if line.starts_with([' ', '\t']) {
            if let Some(last) = group.last_mut() {
                if !last.value.is_empty() {
                    last.value.push(' ');
                }
                last.value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            group.push(Field {
                name: name.trim().to_string(),
                value: value.trim().to_string(),
            });
        }
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}
