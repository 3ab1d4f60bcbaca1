//! The MIME writer: a rendered message to the exact bytes sent over SMTP.
//!
//! Hand-written rather than built with lettre's `MessageBuilder` because the writer runs once
//! per recipient and must stay a few microseconds; the format produced is narrow and fixed
//! (one multipart/alternative or one text part), which keeps it easy to get right:
//! CRLF everywhere, UTF-8 headers as RFC 2047 encoded-words, bodies in 7bit when they already
//! are 7-bit with short lines, otherwise quoted-printable (mostly ASCII) or base64.

use crate::outgoing::{Envelope, EnvelopeError, OutgoingMessage};
use crate::template::{CompiledCampaign, RenderedMessage};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use campaign::{EmailAddress, Mailbox};
use std::fmt::Write as _;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc2822;

/// Per-message choices the caller makes (the delivery worker or the preview).
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// SMTP envelope sender (MAIL FROM). `None` uses the campaign's From address; the bounce
    /// handling uses a VERP address such as `bounces+TOKEN@domain`.
    pub envelope_from: Option<EmailAddress>,
    /// The Date header (and DKIM `t=`). Passed in so a build is reproducible.
    pub date: OffsetDateTime,
}

/// Why a message could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The Date cannot be formatted (a year outside RFC 5322's range).
    #[error("the date cannot be written as an RFC 5322 date: {0}")]
    Date(String),
    /// The unsubscribe URL or mailto contains a character that cannot stand in a header.
    #[error("the unsubscribe link {0:?} contains a character not allowed in List-Unsubscribe")]
    UnsubscribeLink(String),
    /// The message has neither an HTML nor a text body.
    #[error("the message has no body")]
    NoBody,
    /// The return path or the recipient is not an address an SMTP envelope can carry.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
}

impl CompiledCampaign {
    /// Writes the message: headers, then one body part or multipart/alternative (text, HTML).
    pub fn build(
        &self,
        message: &RenderedMessage,
        options: &BuildOptions,
    ) -> Result<OutgoingMessage, BuildError> {
        build(self, message, options, &BodyLiterals::default())
    }
}

/// Where a body's plan wrote template literals that hold complete lines, so the
/// quoted-printable encoder can copy those lines' encoding instead of encoding them again.
/// Empty for a body rendered by minijinja (or given by the caller).
#[derive(Debug, Default)]
pub(crate) struct BodyLiterals<'a> {
    pub html: Vec<LiteralAt<'a>>,
    pub text: Vec<LiteralAt<'a>>,
}

pub(crate) fn build(
    campaign: &CompiledCampaign,
    message: &RenderedMessage,
    options: &BuildOptions,
    literals: &BodyLiterals<'_>,
) -> Result<OutgoingMessage, BuildError> {
    let headers = &campaign.headers;
    for link in std::iter::once(&message.unsubscribe_url).chain(&message.unsubscribe_mailto) {
        if link.is_empty() || link.bytes().any(unfit_in_list_unsubscribe) {
            return Err(BuildError::UnsubscribeLink(link.clone()));
        }
    }
    let date = options
        .date
        .format(&Rfc2822)
        .map_err(|err| BuildError::Date(err.to_string()))?;
    // The ids are written into several headers, the boundary and the outgoing message:
    // formatted once, and the header text put together by pushes, not the formatter (a
    // tenth of building a newsletter went to `format!` and `write!` here).
    let campaign_id = message.campaign_id.to_string();
    let recipient_id = message.recipient_id.to_string();
    let message_id = [
        "<",
        &campaign_id,
        ".",
        &recipient_id,
        "@",
        &headers.message_id_domain,
        ">",
    ]
    .concat();
    let body_len =
        message.html.as_ref().map_or(0, String::len) + message.text.as_ref().map_or(0, String::len);
    let mut out = String::with_capacity(body_len + body_len / 8 + 1024);

    header(&mut out, "Date", &date);
    out.push_str(&headers.from);
    header(
        &mut out,
        "To",
        &["<", &header_address(&message.to), ">"].concat(),
    );
    if let Some(reply_to) = &headers.reply_to {
        out.push_str(reply_to);
    }
    let mut col = field_name(&mut out, "Subject");
    unstructured(&mut out, &mut col, &message.subject);
    out.push_str("\r\n");
    header(&mut out, "Message-ID", &message_id);
    let mut col = field_name(&mut out, "List-Unsubscribe");
    match &message.unsubscribe_mailto {
        Some(mailto) => {
            token(
                &mut out,
                &mut col,
                &["<", &message.unsubscribe_url, ">,"].concat(),
            );
            token(&mut out, &mut col, &["<", mailto, ">"].concat());
        }
        None => token(
            &mut out,
            &mut col,
            &["<", &message.unsubscribe_url, ">"].concat(),
        ),
    }
    out.push_str("\r\n");
    header(
        &mut out,
        "List-Unsubscribe-Post",
        "List-Unsubscribe=One-Click",
    );
    out.push_str(&headers.list_id);
    if let Some(sender) = &campaign.feedback_id {
        header(
            &mut out,
            "Feedback-ID",
            &[&campaign_id, ":", sender].concat(),
        );
    }
    if let Some(variant) = &campaign.variant_header {
        // Variant names are validated as letters, digits, `-` and `_`: safe as they are.
        header(&mut out, "X-Campaign-Variant", variant);
    }
    for piece in [
        "X-Campaign-ID: ",
        &campaign_id,
        "\r\nX-Recipient-ID: ",
        &recipient_id,
        "\r\nMIME-Version: 1.0\r\n",
    ] {
        out.push_str(piece);
    }

    match (&message.text, &message.html) {
        (Some(text), Some(html)) => {
            // "=_" cannot occur in quoted-printable or base64 output, and 7bit bodies are
            // checked for the boundary before they are used as they are.
            let mut simple = uuid::Uuid::encode_buffer();
            let boundary = [
                BOUNDARY_PREFIX,
                message
                    .campaign_id
                    .as_uuid()
                    .simple()
                    .encode_lower(&mut simple),
                "_",
                &recipient_id,
            ]
            .concat();
            for piece in [
                "Content-Type: multipart/alternative;\r\n boundary=\"",
                &boundary,
                "\"\r\n\r\n",
            ] {
                out.push_str(piece);
            }
            for (subtype, body, literals) in [
                ("plain", text, &literals.text),
                ("html", html, &literals.html),
            ] {
                for piece in ["--", &boundary, "\r\n"] {
                    out.push_str(piece);
                }
                part(&mut out, subtype, body, Some(&boundary), literals);
            }
            for piece in ["--", &boundary, "--\r\n"] {
                out.push_str(piece);
            }
        }
        (Some(text), None) => part(&mut out, "plain", text, None, &literals.text),
        (None, Some(html)) => part(&mut out, "html", html, None, &literals.html),
        (None, None) => return Err(BuildError::NoBody),
    }

    let envelope = match &options.envelope_from {
        Some(envelope_from) => Envelope::new(envelope_from.as_str(), [message.to.as_str()])?,
        // The From address, checked when the campaign was compiled.
        None => Envelope::with_return_path(&campaign.return_path, [message.to.as_str()])?,
    };
    Ok(OutgoingMessage::new(envelope, out.into_bytes()).with_ids(campaign_id, recipient_id))
}

/// The header lines a campaign's messages share, written once when it is compiled: the
/// address checks and IDNA conversion they take are not repeated per recipient.
#[derive(Debug)]
pub(crate) struct CampaignHeaders {
    /// `From: …` with its CRLF.
    from: String,
    /// `Reply-To: …` with its CRLF, when the campaign has one.
    reply_to: Option<String>,
    /// `List-Id: …` with its CRLF.
    list_id: String,
    /// The From address's domain as A-labels, the right side of each Message-ID.
    message_id_domain: String,
}

impl CampaignHeaders {
    /// `list_id`: the description (if any) and the identifier.
    pub(crate) fn new(
        from: &Mailbox,
        reply_to: Option<&Mailbox>,
        list_id: &(Option<String>, String),
    ) -> CampaignHeaders {
        let mailbox_line = |name: &str, address: &Mailbox| {
            let mut out = String::new();
            let mut col = field_name(&mut out, name);
            mailbox(&mut out, &mut col, address);
            out.push_str("\r\n");
            out
        };
        let (list_name, list_id) = list_id;
        let mut list_id_line = String::new();
        let mut col = field_name(&mut list_id_line, "List-Id");
        if let Some(name) = list_name {
            phrase(&mut list_id_line, &mut col, name);
        }
        token(&mut list_id_line, &mut col, &format!("<{list_id}>"));
        list_id_line.push_str("\r\n");
        CampaignHeaders {
            from: mailbox_line("From", from),
            reply_to: reply_to.map(|address| mailbox_line("Reply-To", address)),
            list_id: list_id_line,
            message_id_domain: from.email.ascii_domain().to_string(),
        }
    }
}

/// The `List-Id` of a campaign that names none: the From address read as a list name
/// (`news@riverside.example` → `news.riverside.example`), lowercase, the domain as A-labels
/// and any character of the local part other than a letter, digit, `-` or `_` as `-`. Every
/// campaign of one sender shares it, as the messages of one list do.
pub(crate) fn default_list_id(from: &EmailAddress) -> String {
    let local = from
        .as_str()
        .rsplit_once('@')
        .map_or("", |(local, _)| local);
    let label: String = local
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let label = label.trim_matches('-');
    let label = if label.is_empty() { "list" } else { label };
    format!("{label}.{}", from.ascii_domain().to_ascii_lowercase())
}

/// The `mailto:` List-Unsubscribe of a campaign with an unsubscribe address (RFC 6068):
/// subject `unsubscribe`, the recipient's signed https link as the body, so whoever reads
/// that mailbox (or a script) can act on it. Everything outside RFC 6068's `qchar` is
/// percent-encoded, which keeps the link free of the characters List-Unsubscribe refuses.
pub(crate) fn unsubscribe_mailto(address: &EmailAddress, unsubscribe_url: &str) -> String {
    fn encode(out: &mut String, value: &str, also_allowed: &[u8]) {
        for byte in value.bytes() {
            if byte.is_ascii_alphanumeric()
                || b"-._~!$'()*+;:".contains(&byte)
                || also_allowed.contains(&byte)
            {
                out.push(char::from(byte));
            } else {
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
    let mut link = String::from("mailto:");
    encode(&mut link, &header_address(address.as_str()), b"@");
    link.push_str("?subject=unsubscribe&body=");
    encode(&mut link, unsubscribe_url, b"");
    link
}

/// The campaign and recipient a Message-ID written by this module names: the inverse of the
/// `<CAMPAIGN.RECIPIENT@domain>` format above, so a bounce or complaint that returns only the
/// original's Message-ID still finds its recipient without a stored copy of every id. Angle
/// brackets and surrounding whitespace are optional; anything else is `None`.
pub fn recipient_of_message_id(
    message_id: &str,
) -> Option<(campaign::CampaignId, campaign::RecipientId)> {
    let id = message_id.trim();
    let id = id
        .strip_prefix('<')
        .and_then(|inner| inner.strip_suffix('>'))
        .unwrap_or(id);
    let (local, _domain) = id.rsplit_once('@')?;
    let (campaign_id, recipient_id) = local.split_once('.')?;
    let campaign_id = campaign_id.parse().ok()?;
    let recipient_id = recipient_id.parse().ok()?;
    Some((campaign_id, recipient_id))
}

/// Header lines are folded to at most this many octets wherever the value has a place to
/// fold (RFC 5322 §2.1.1: SHOULD 78, MUST 998).
const LINE: usize = 78;

/// A header whose value is folded at its spaces (RFC 5322 §2.2.3). Its tokens are short by
/// construction (dates, ids, addresses of at most 254 characters), so no line passes 998.
fn header(out: &mut String, name: &str, value: &str) {
    // A value that fits the first line, its words separated by single spaces, is written
    // as it is: what folding it word by word writes, without a copy call per word.
    let fits_as_is = name.len() + 2 + value.len() <= LINE
        && !value.is_empty()
        && !value.starts_with(' ')
        && !value.ends_with(' ')
        && !value.contains("  ");
    if fits_as_is {
        for piece in [name, ": ", value, "\r\n"] {
            out.push_str(piece);
        }
        return;
    }
    header_by_words(out, name, value);
}

/// [`header`], folding the value word by word.
fn header_by_words(out: &mut String, name: &str, value: &str) {
    let mut col = field_name(out, name);
    for word in value.split(' ').filter(|word| !word.is_empty()) {
        token(out, &mut col, word);
    }
    out.push_str("\r\n");
}

/// `Name:`; the value's tokens follow, each after one space. Returns the column reached.
fn field_name(out: &mut String, name: &str) -> usize {
    out.push_str(name);
    out.push(':');
    name.len() + 1
}

/// One space and `token`, folded onto a new line first (CRLF before the space) when it would
/// pass LINE. A header's first line always holds at least `Name:`, so no line is left empty.
fn token(out: &mut String, col: &mut usize, token: &str) {
    if *col + 1 + token.len() > LINE {
        out.push_str("\r\n");
        *col = 0;
    }
    out.push(' ');
    out.push_str(token);
    *col += 1 + token.len();
}

/// An address as the To header carries it: the domain as A-labels when the local part is
/// ASCII, so the header stays ASCII (and matches the envelope) for an IDN domain.
fn header_address(address: &str) -> std::borrow::Cow<'_, str> {
    // An ASCII address whose domain is lowercase letters, digits, dots and hyphens comes out
    // as it went in, whatever the checks below find: IDNA leaves such a domain as it is (or
    // refuses it, which keeps the address as written), as does a failed parse. Most
    // recipients' addresses are such, and skip the parse.
    if let Some((_, domain)) = address.rsplit_once('@')
        && address.is_ascii()
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return std::borrow::Cow::Borrowed(address);
    }
    std::borrow::Cow::Owned(header_address_parsed(address))
}

fn header_address_parsed(address: &str) -> String {
    EmailAddress::parse(address)
        .ok()
        .and_then(|parsed| parsed.with_ascii_domain())
        .unwrap_or_else(|| address.to_string())
}

/// Whether `value` can be written as it is, as words separated by single spaces, each word
/// short enough to fit a folded line. Anything else (non-ASCII, control characters, runs of
/// spaces, a very long word, text that looks like an encoded-word) is written as
/// encoded-words, which fold anywhere and decode to exactly the value.
fn foldable_as_words(value: &str, col: usize, word_char: impl Fn(char) -> bool) -> bool {
    !value.is_empty()
        && !value.contains("=?")
        && value.chars().all(|c| c == ' ' || word_char(c))
        && value.split(' ').enumerate().all(|(i, word)| {
            let room = if i == 0 { LINE - col - 1 } else { LINE - 1 };
            !word.is_empty() && word.len() <= room
        })
}

/// `Display Name <address>`: the name as atoms, a quoted string or encoded-words as needed,
/// the address's domain as A-labels when its local part is ASCII.
fn mailbox(out: &mut String, col: &mut usize, mailbox: &Mailbox) {
    if let Some(name) = mailbox.name.as_deref().map(str::trim)
        && !name.is_empty()
    {
        phrase(out, col, name);
    }
    token(
        out,
        col,
        &format!("<{}>", header_address(mailbox.email.as_str())),
    );
}

fn phrase(out: &mut String, col: &mut usize, name: &str) {
    let atext = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c);
    if foldable_as_words(name, *col, atext) {
        for word in name.split(' ') {
            token(out, col, word);
        }
        return;
    }
    let printable = |c: char| (' '..='~').contains(&c);
    // A quoted string is not folded inside: it is used when it fits one folded line.
    if name.chars().all(printable) && !name.contains("=?") && name.len() + 4 <= LINE {
        let mut quoted = String::with_capacity(name.len() + 4);
        quoted.push('"');
        for c in name.chars() {
            if c == '"' || c == '\\' {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        quoted.push('"');
        if quoted.len() < LINE {
            token(out, col, &quoted);
            return;
        }
    }
    encoded_words(out, col, name);
}

/// An unstructured header value (Subject): its words as they are, folded at the spaces,
/// when that represents it exactly; RFC 2047 encoded-words otherwise.
fn unstructured(out: &mut String, col: &mut usize, value: &str) {
    if foldable_as_words(value, *col, |c| ('!'..='~').contains(&c)) {
        for word in value.split(' ') {
            token(out, col, word);
        }
    } else {
        encoded_words(out, col, value);
    }
}

/// `=?UTF-8?B?…?=` words of at most 75 characters, never splitting a character (RFC 2047
/// §5), separated by folding white space, which decoders drop between encoded-words. The
/// first word is sized to the room left on the current line.
fn encoded_words(out: &mut String, col: &mut usize, value: &str) {
    // 45 bytes of UTF-8 → 60 base64 characters → 72 with the `=?UTF-8?B?` `?=` wrapping.
    const CHUNK: usize = 45;
    const WRAPPING: usize = "=?UTF-8?B??=".len();
    let mut rest = value;
    let mut word = String::with_capacity(LINE);
    while !rest.is_empty() {
        // Bytes whose base64 fits the line after a space and the wrapping; a word too short
        // to hold a few characters goes on the next line instead.
        let room = (LINE.saturating_sub(*col + 1 + WRAPPING) / 4 * 3).min(CHUNK);
        let budget = if room < 12 { CHUNK } else { room };
        let mut end = rest.len().min(budget);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (chunk, tail) = rest.split_at(end);
        word.clear();
        word.push_str("=?UTF-8?B?");
        STANDARD.encode_string(chunk.as_bytes(), &mut word);
        word.push_str("?=");
        token(out, col, &word);
        rest = tail;
    }
}

/// Whether a link's byte may not go into `List-Unsubscribe` as it is: an ASCII control, `<`,
/// `>`, a space or a comma. All ASCII, so testing bytes finds what testing characters found
/// (a multi-byte character's bytes are 0x80 and above), without decoding the characters and
/// searching `"<> ,"` for each (about 1.5 k instructions for a newsletter's link).
fn unfit_in_list_unsubscribe(byte: u8) -> bool {
    byte.is_ascii_control() || matches!(byte, b'<' | b'>' | b' ' | b',')
}

/// How every multipart boundary begins: `=_` cannot occur in quoted-printable or base64
/// output, and a 7bit body is searched for the boundary before it is used as it is.
const BOUNDARY_PREFIX: &str = "=_mb_";

/// One text part: its headers, a blank line and the encoded body.
fn part(
    out: &mut String,
    subtype: &str,
    body: &str,
    boundary: Option<&str>,
    literals: &[LiteralAt<'_>],
) {
    let part_start = out.len();
    let encoding = choose_encoding(body, boundary);
    part_headers(out, subtype, encoding);
    match encoding {
        Encoding::SevenBit => {
            // The line lengths are checked by the copy, which finds the line ends anyway; a
            // body with a line too long for 7bit (rare: ASCII text without line breaks) is
            // written again as quoted-printable.
            if !seven_bit(out, body) {
                out.truncate(part_start);
                part_headers(out, subtype, Encoding::QuotedPrintable);
                quoted_printable(out, body, literals);
            }
        }
        Encoding::QuotedPrintable => quoted_printable(out, body, literals),
        Encoding::Base64 => base64_lines(out, body),
    }
    // The CRLF before a boundary belongs to the boundary (RFC 2046 §5.1.1), so a body that
    // ends in a line break keeps it; a single part only needs its last line terminated.
    if boundary.is_some() || !out.ends_with("\r\n") {
        out.push_str("\r\n");
    }
}

fn part_headers(out: &mut String, subtype: &str, encoding: Encoding) {
    let _ = write!(
        out,
        "Content-Type: text/{subtype}; charset=utf-8\r\nContent-Transfer-Encoding: {}\r\n\r\n",
        encoding.name()
    );
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    SevenBit,
    QuotedPrintable,
    Base64,
}

impl Encoding {
    fn name(self) -> &'static str {
        match self {
            Encoding::SevenBit => "7bit",
            Encoding::QuotedPrintable => "quoted-printable",
            Encoding::Base64 => "base64",
        }
    }
}

/// The encoding of a body. `SevenBit` is provisional: its lines must also be at most 998
/// octets, which [`seven_bit`] checks as it copies them.
fn choose_encoding(body: &str, boundary: Option<&str>) -> Encoding {
    let bytes = body.as_bytes();
    if bytes.is_ascii() {
        if seven_bit_bytes(bytes, boundary) {
            return Encoding::SevenBit;
        }
        return Encoding::QuotedPrintable;
    }
    // Quoted-printable triples every non-ASCII byte; past about a sixth of the text base64's
    // flat 4/3 is smaller (and a right-to-left or CJK newsletter is mostly non-ASCII).
    let non_ascii = non_ascii_count(bytes);
    if non_ascii * 6 > bytes.len() {
        Encoding::Base64
    } else {
        Encoding::QuotedPrintable
    }
}

/// Whether ASCII `bytes` may go as 7bit as far as their bytes go: no NUL, no CR outside a
/// CRLF, and the multipart boundary absent (the line lengths are [`seven_bit`]'s to check).
/// Each test is a SIMD search (memchr), a fraction of an instruction per byte.
fn seven_bit_bytes(bytes: &[u8], boundary: Option<&str>) -> bool {
    memchr::memchr2_iter(0, b'\r', bytes)
        .all(|at| bytes[at] == b'\r' && bytes.get(at + 1) == Some(&b'\n'))
        && boundary.is_none_or(|boundary| !contains_boundary(bytes, boundary))
}

/// Whether `bytes` contain `boundary`. Boundaries differ per message but share their
/// beginning, so the searcher for that is built once rather than one per body.
fn contains_boundary(bytes: &[u8], boundary: &str) -> bool {
    static PREFIX: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(BOUNDARY_PREFIX));
    if !boundary.starts_with(BOUNDARY_PREFIX) {
        return memchr::memmem::find(bytes, boundary.as_bytes()).is_some();
    }
    PREFIX
        .find_iter(bytes)
        .any(|at| bytes[at..].starts_with(boundary.as_bytes()))
}

/// Bytes of 0x80 and above. Counted in byte-wide sums over blocks of at most 255 bytes
/// (which cannot overflow), a loop the compiler turns into SIMD adds of the high bits; the
/// word-at-a-time count it replaces spent most of its time in a software `count_ones` (the
/// x86_64 baseline has no POPCNT). The blocks are exactly 224 bytes, seven turns of the
/// compiler's 32-byte loop: blocks of 255 left 31 bytes of each to a loop byte by byte,
/// which took most of the time.
fn non_ascii_count(bytes: &[u8]) -> usize {
    const BLOCK: usize = 224;
    let count_in =
        |block: &[u8]| usize::from(block.iter().fold(0u8, |count, &byte| count + (byte >> 7)));
    let mut blocks = bytes.chunks_exact(BLOCK);
    let whole: usize = (&mut blocks).map(count_in).sum();
    whole + count_in(blocks.remainder())
}

/// The body as it is, line endings made CRLF: each `\n` or `\r\n` becomes CRLF, and a `\r`
/// that ends the body is dropped (the last line's terminator, as in quoted-printable). The
/// line ends are found by SIMD search and the runs between them copied whole. Returns
/// whether every line is at most 998 octets (RFC 5322; a CR before the LF counts, as it did
/// when lines were split at LF), which 7bit requires.
fn seven_bit(out: &mut String, body: &str) -> bool {
    const MAX_LINE: usize = 998;
    let mut fits = true;
    let mut line_start = 0;
    for lf in memchr::memchr_iter(b'\n', body.as_bytes()) {
        fits &= lf - line_start <= MAX_LINE;
        let line = &body[line_start..lf];
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push_str("\r\n");
        line_start = lf + 1;
    }
    let last = &body[line_start..];
    out.push_str(last.strip_suffix('\r').unwrap_or(last));
    fits && last.len() <= MAX_LINE
}

/// Bytes quoted-printable may carry as they are (RFC 2045 §6.7 rules 2 and 3): printable
/// ASCII except `=`, and space and tab (except at the end of a line, checked separately).
const QP_LITERAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = b'!';
    while b <= b'~' {
        table[b as usize] = b != b'=';
        b += 1;
    }
    table[b' ' as usize] = true;
    table[b'\t' as usize] = true;
    table
};

/// Where the run of [`QP_LITERAL`] bytes from `start` ends, searching no further than
/// `limit` (at most `bytes.len()`). Read in 16-byte blocks of the body, also past `limit`
/// (the bytes there do not matter: the result is capped at `limit`), so that a run ending
/// anywhere costs one block test per 16 bytes and the block that holds its end tells where
/// in it the end is; only the body's last 15 bytes are read one at a time.
fn literal_run_end(bytes: &[u8], start: usize, limit: usize) -> usize {
    let mut i = start;
    while i < limit {
        let Some(block) = bytes.get(i..i + 16) else {
            break;
        };
        let to_encode = bytes_to_encode(block.try_into().unwrap_or(&[0; 16]));
        if to_encode != 0 {
            return limit.min(i + (to_encode.trailing_zeros() / 8) as usize);
        }
        i += 16;
    }
    while i < limit && QP_LITERAL[bytes[i] as usize] {
        i += 1;
    }
    i.min(limit)
}

/// The bytes of `block` that are not [`QP_LITERAL`], as all-ones bytes in a 128-bit word
/// (byte k of the block is byte k of the word, little-endian): below 0x20 but not a tab,
/// `=`, DEL, or 0x80 and above (negative as `i8`, so "below 0x20" takes them too). A map
/// over a fixed-size block, which the compiler turns into SIMD compares (SSE2 on x86_64,
/// which every x86_64 has): no `unsafe` intrinsics needed.
fn bytes_to_encode(block: &[u8; 16]) -> u128 {
    u128::from_le_bytes(block.map(|byte| {
        let signed = byte as i8;
        let encode = ((signed < 0x20) & (byte != b'\t')) | (byte == b'=') | (byte == 0x7f);
        u8::from(encode).wrapping_neg()
    }))
}

/// A template literal's quoted-printable encoding, made once when the campaign is compiled,
/// with the encoder's state (byte, column) at each turn of its loop. From a state, the
/// output depends only on the bytes from there on (and at most 3 bytes ahead of each
/// decision), so wherever a body holds the literal and the encoder is at column 0 at a
/// state with column 0 (after a line end or a soft break), its output up to the last state
/// is this encoding's, whatever came before the literal or comes after it, and it goes on
/// from the last state's column. States closer than 5 bytes to the literal's end are left
/// out: the decisions there can look past it (or at a final line break taken off).
#[derive(Debug, Default)]
pub(crate) struct EncodedLiteral {
    /// Per state: its offset in the literal and in `encoded`, and its column; ascending.
    points: Vec<(usize, usize, usize)>,
    encoded: String,
    /// Whether something can be copied from a point after the literal's first line end,
    /// where the encoder is at column 0 wherever the literal is written; otherwise only a
    /// literal written at the start of a line has something to copy.
    copies_mid_line: bool,
}

/// The fewest bytes of a literal worth copying from its encoding.
const MIN_COPY: usize = 16;

impl EncodedLiteral {
    pub(crate) fn of(literal: &str) -> EncodedLiteral {
        let mut encoded = String::new();
        let mut points = Vec::new();
        encode_quoted_printable(&mut encoded, literal, &[], Some(&mut points));
        points.retain(|&(at, _, _)| at + 5 <= literal.len());
        let (last, end, _) = points.last().copied().unwrap_or_default();
        // A short copy saves less than noting the literal costs the plan; so does a literal
        // without a line end, which is nearly always written in the middle of a line.
        let Some(lf) = memchr::memchr(b'\n', literal.as_bytes()) else {
            return EncodedLiteral::default();
        };
        if last < MIN_COPY {
            return EncodedLiteral::default();
        }
        encoded.truncate(end);
        let copies_mid_line = points
            .iter()
            .any(|&(at, _, col)| col == 0 && at > lf && at + MIN_COPY <= last);
        EncodedLiteral {
            points,
            encoded,
            copies_mid_line,
        }
    }

    /// Whether there is anything to copy: a literal without is written as it is.
    pub(crate) fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Whether the encoder can copy something of the literal written after `before` (the
    /// body so far).
    pub(crate) fn copies_after(&self, before: &str) -> bool {
        self.copies_mid_line
            || (!self.points.is_empty() && matches!(before.as_bytes().last(), None | Some(b'\n')))
    }
}

/// A template literal with an [`EncodedLiteral`], written by a plan at byte `at` of a body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LiteralAt<'a> {
    pub at: usize,
    pub text: &'a str,
    pub encoded: &'a EncodedLiteral,
}

/// The encoder's place in a body's [`LiteralAt`]s.
struct LiteralCursor<'a, 'b> {
    literals: &'b [LiteralAt<'a>],
    literal: usize,
    point: usize,
    /// Where the literal `literal` starts (`usize::MAX` past the last): before it there is
    /// nothing to copy, which the encoder tests at each line start without calling `copy`.
    literal_at: usize,
}

impl LiteralCursor<'_, '_> {
    /// At column 0 at byte `i` of the body (final line break taken off): when `i` is a state
    /// with column 0 of the literal there, copies the literal's encoding up to its last state
    /// and returns that state (byte and column); otherwise returns `i` and 0. The plan that wrote the body noted where
    /// the literal is, so the body holds it there (checked in debug builds: a full comparison
    /// costs about 4 k instructions per newsletter).
    fn copy(&mut self, out: &mut String, bytes: &[u8], i: usize) -> (usize, usize) {
        let state = self.copy_from_literal(out, bytes, i);
        self.literal_at = self
            .literals
            .get(self.literal)
            .map_or(usize::MAX, |literal| literal.at);
        state
    }

    /// [`LiteralCursor::copy`] but for keeping `literal_at`.
    fn copy_from_literal(&mut self, out: &mut String, bytes: &[u8], i: usize) -> (usize, usize) {
        while let Some(literal) = self.literals.get(self.literal) {
            let points = &literal.encoded.points;
            let Some(&(last, last_encoded, last_col)) = points.last() else {
                self.literal += 1;
                self.point = 0;
                continue;
            };
            if literal.at + last <= i {
                self.literal += 1;
                self.point = 0;
                continue;
            }
            let Some(offset) = i.checked_sub(literal.at) else {
                return (i, 0);
            };
            // The last state lies past `offset`, so the search stops before the end.
            while points[self.point].0 < offset
                || (points[self.point].0 == offset && points[self.point].2 != 0)
            {
                self.point += 1;
            }
            let (point, encoded, _) = points[self.point];
            // The encoder reads at most 3 bytes past a state (see `EncodedLiteral`).
            let read_end = literal.at + last + 4;
            if point != offset || read_end > bytes.len() {
                return (i, 0);
            }
            debug_assert_eq!(
                &bytes[i..read_end],
                &literal.text.as_bytes()[offset..last + 4]
            );
            out.push_str(&literal.encoded.encoded[encoded..last_encoded]);
            self.point = points.len() - 1;
            return (literal.at + last, last_col);
        }
        (i, 0)
    }
}

/// Quoted-printable (RFC 2045 §6.7): encoded lines at most 76 characters, soft breaks `=`,
/// trailing white space encoded so transports cannot strip it. Line ends (`\n` or `\r\n`,
/// written as CRLF) are found by the same scan that finds the bytes to encode, so the body
/// is read once. Where `literals` say a template literal was written, its encoding made once
/// is copied (see [`EncodedLiteral`]).
fn quoted_printable(out: &mut String, body: &str, literals: &[LiteralAt<'_>]) {
    encode_quoted_printable(out, body, literals, None);
}

/// [`quoted_printable`], noting in `points` the state at each turn of the loop: the byte of
/// the body, the length of the output and the column.
fn encode_quoted_printable(
    out: &mut String,
    body: &str,
    literals: &[LiteralAt<'_>],
    mut points: Option<&mut Vec<(usize, usize, usize)>>,
) {
    let (body, final_break) = match body.strip_suffix('\n') {
        Some(rest) => (rest, true),
        None => (body, false),
    };
    let bytes = body.as_bytes();
    let len = bytes.len();
    let mut cursor = LiteralCursor {
        literals,
        literal: 0,
        point: 0,
        literal_at: literals.first().map_or(usize::MAX, |literal| literal.at),
    };
    let base = out.len();
    let mut col = 0;
    let mut i: usize = 0;
    loop {
        if let Some(points) = points.as_deref_mut() {
            points.push((i, out.len() - base, col));
        }
        if col == 0 && i >= cursor.literal_at {
            (i, col) = cursor.copy(out, bytes, i);
        }
        // Copy the longest literal run that fits before a soft break (75 columns leave
        // room for the `=`). Runs hold only ASCII, so their ends are char boundaries. A line
        // end stops a run (CR and LF are not literal), so the one test after the run finds
        // it, also when the run is empty. Column 76 is only ever reached just before a line
        // end, where `end` is then `i`.
        let start = i;
        let end = len.min((i + 75).saturating_sub(col)).max(i);
        // The run is searched first only as far as where the byte after it is at column 72
        // at most: a byte to encode there fits with its `=XX` whether or not the line ends
        // after it, and a line end there has no line limit to consider. Those two, the
        // common cases (HTML has an `=` in nearly every tag), are done right away; the rest
        // go on to the tests below.
        let near_end = len.min(i + 73usize.saturating_sub(col));
        i = literal_run_end(bytes, i, near_end);
        if i < near_end {
            let b = bytes[i];
            if b != b'\n' && b != b'\r' {
                out.push_str(body.get(start..i).unwrap_or_default());
                out.push_str(escape(b));
                col += i - start + 3;
                i += 1;
                // The bytes after a non-ASCII one are mostly the rest of its character: each
                // that needs encoding and whose `=XX` ends by column 75 is encoded here, as
                // the turn it would have had does (from an empty run), without that turn.
                while let Some(&b) = bytes.get(i) {
                    if col > 72 || QP_LITERAL[b as usize] || b == b'\n' || b == b'\r' {
                        break;
                    }
                    if let Some(points) = points.as_deref_mut() {
                        points.push((i, out.len() - base, col));
                    }
                    out.push_str(escape(b));
                    col += 3;
                    i += 1;
                }
                continue;
            }
            let crlf = b == b'\r' && bytes.get(i + 1) == Some(&b'\n');
            let trailing_white_space = i > start && matches!(bytes[i - 1], b' ' | b'\t');
            if (b == b'\n' || crlf) && !trailing_white_space {
                out.push_str(body.get(start..i).unwrap_or_default());
                out.push_str("\r\n");
                i += 1 + usize::from(crlf);
                col = 0;
                continue;
            }
        } else if col + (i - start) == 73
            && i + 3 < len
            && QP_LITERAL[bytes[i] as usize]
            && QP_LITERAL[bytes[i + 1] as usize]
            && bytes[i + 2] != b'\n'
            && !matches!(bytes[i + 3], b'\n' | b'\r')
        {
            // The commonest line limit: two more literal bytes fill the line to column 75,
            // and the third is not a line end and not the line's last (a literal last one
            // could use column 76; one to encode does not fit either way), so a soft break
            // follows them, as the tests below find.
            out.push_str(body.get(start..i + 2).unwrap_or_default());
            out.push_str("=\r\n");
            i += 2;
            col = 0;
            continue;
        } else {
            // At most two bytes more: the run goes on to `end`.
            while i < end && QP_LITERAL[bytes[i] as usize] {
                i += 1;
            }
        }
        let mut terminator = line_end(bytes, i);
        if i > start && terminator.is_some() && matches!(bytes[i - 1], b' ' | b'\t') {
            i -= 1; // trailing white space is encoded below
            terminator = None;
        }
        if i > start {
            out.push_str(body.get(start..i).unwrap_or_default());
            col += i - start;
        }
        if let Some(terminator) = terminator {
            if i == len {
                break;
            }
            // A CR that ends the body is dropped with nothing after it, as the last line's
            // terminator; any other ends a line that another follows.
            if !(terminator == 1 && bytes[i] == b'\r') {
                out.push_str("\r\n");
            }
            i += terminator;
            col = 0;
            continue;
        }
        let b = bytes[i];
        let last = line_end(bytes, i + 1).is_some();
        if QP_LITERAL[b as usize] && !(last && matches!(b, b' ' | b'\t')) {
            // The run stopped at the line limit: the last character may use column 76.
            if last && col < 76 {
                out.push(b as char);
                i += 1;
            } else {
                out.push_str("=\r\n");
                col = 0;
            }
            continue;
        }
        if col + 3 > if last { 76 } else { 75 } {
            // Encoded on the next turn, from column 0 (where a literal's encoding may be
            // copied instead).
            out.push_str("=\r\n");
            col = 0;
            continue;
        }
        out.push_str(escape(b));
        col += 3;
        i += 1;
    }
    if final_break {
        out.push_str("\r\n");
    }
}

/// `=XX` for every byte value, in byte order.
const ESCAPES: &str = {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    const BYTES: [u8; 768] = {
        let mut bytes = [0; 768];
        let mut b = 0;
        while b < 256 {
            bytes[3 * b] = b'=';
            bytes[3 * b + 1] = HEX[b >> 4];
            bytes[3 * b + 2] = HEX[b & 0x0f];
            b += 1;
        }
        bytes
    };
    match std::str::from_utf8(&BYTES) {
        Ok(escapes) => escapes,
        Err(_) => panic!("the escapes are ASCII"),
    }
};

/// A byte's quoted-printable escape, `=XX`: one push of three bytes instead of three of one,
/// each of which tests the capacity.
fn escape(b: u8) -> &'static str {
    let at = 3 * usize::from(b);
    ESCAPES.get(at..at + 3).unwrap_or_default()
}

/// Whether a line ends at `at` of a body whose final `\n` is already taken off, and the
/// length of its terminator: `\n`, `\r\n`, a `\r` that ends the body, or the body's end (0).
/// A `\r` elsewhere is a character of the line, encoded like any control character.
fn line_end(bytes: &[u8], at: usize) -> Option<usize> {
    match bytes.get(at..) {
        Some([]) => Some(0),
        Some([b'\n', ..]) | Some([b'\r']) => Some(1),
        Some([b'\r', b'\n', ..]) => Some(2),
        _ => None,
    }
}

/// Base64 in 76-character lines (57 input bytes each).
fn base64_lines(out: &mut String, body: &str) {
    // Line endings become CRLF first: the decoded text is what the reader's client shows.
    let mut text = String::with_capacity(body.len() + body.len() / 32);
    let _any_line_length_will_do = seven_bit(&mut text, body);
    for (i, chunk) in text.as_bytes().chunks(57).enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        STANDARD.encode_string(chunk, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Strategy as _;

    fn qp(body: &str) -> String {
        let mut out = String::new();
        quoted_printable(&mut out, body, &[]);
        out
    }

    #[test]
    fn quoted_printable_keeps_lines_short_and_encodes_what_it_must() {
        let encoded = qp(&format!("{}\nend with space \nA=B é", "x".repeat(200)));
        for line in encoded.split("\r\n") {
            assert!(line.len() <= 76, "{line:?}");
        }
        assert!(encoded.contains("end with space=20\r\n"));
        assert!(encoded.ends_with("\r\nA=3DB =C3=A9"));
    }

    /// A plain decoder, to check that encoding loses nothing.
    fn qp_decode(encoded: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let joined = encoded.replace("=\r\n", "");
        let bytes = joined.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'=' {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        out
    }

    /// Lines without their terminators (`\n` or `\r\n`), and whether the body ended with one:
    /// how the encoders read a body before they searched for line ends themselves.
    fn lines(body: &str) -> (impl Iterator<Item = &str>, bool) {
        let (body, final_break) = match body.strip_suffix('\n') {
            Some(rest) => (rest, true),
            None => (body, false),
        };
        let lines = body
            .split('\n')
            .map(|line| line.strip_suffix('\r').unwrap_or(line));
        (lines, final_break)
    }

    /// The 7bit copy as it was before the SIMD line search: line by line, joined with CRLF.
    fn seven_bit_by_lines(out: &mut String, body: &str) {
        let (lines, final_break) = lines(body);
        for (i, line) in lines.enumerate() {
            if i > 0 {
                out.push_str("\r\n");
            }
            out.push_str(line);
        }
        if final_break {
            out.push_str("\r\n");
        }
    }

    /// The 7bit test as it was before the SIMD searches: split into lines, then a search
    /// for NUL, bare CR and the boundary each.
    fn fits_seven_bit_by_lines(body: &str, boundary: Option<&str>) -> bool {
        let bytes = body.as_bytes();
        body.split('\n').all(|line| line.len() <= 998)
            && !bytes.contains(&0)
            && !bytes
                .iter()
                .enumerate()
                .any(|(i, &b)| b == b'\r' && bytes.get(i + 1) != Some(&b'\n'))
            && boundary.is_none_or(|b| !body.contains(b))
    }

    proptest::proptest! {
        /// The SIMD 7bit test and copy agree with the line-by-line ones, on ASCII text made
        /// of the cases that matter: LF, CRLF and bare CR, NUL, the boundary or part of it,
        /// and lines just under, at and over 998 octets.
        #[test]
        fn seven_bit_by_search_agrees_with_line_by_line(
            pieces in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("\n".to_string()),
                    proptest::strategy::Just("\r\n".to_string()),
                    proptest::strategy::Just("\r".to_string()),
                    proptest::strategy::Just("\0".to_string()),
                    proptest::strategy::Just("=_mb_b".to_string()),
                    proptest::strategy::Just("=_mb_".to_string()),
                    proptest::strategy::Just("plain words, ".to_string()),
                    (990..1000usize).prop_map(|n| "x".repeat(n)),
                    // A whole line of 996 to 999 octets, the CR of a CRLF counted.
                    (995..1000usize).prop_map(|n| format!("\n{}\n", "x".repeat(n))),
                    (995..999usize).prop_map(|n| format!("\n{}\r\n", "x".repeat(n))),
                ],
                0..12,
            ),
            boundary in proptest::option::of(proptest::strategy::Just("=_mb_b")),
        ) {
            let body: String = pieces.concat();
            let (mut by_search, mut by_lines) = (String::new(), String::new());
            let lines_fit = seven_bit(&mut by_search, &body);
            seven_bit_by_lines(&mut by_lines, &body);
            proptest::prop_assert_eq!(
                seven_bit_bytes(body.as_bytes(), boundary) && lines_fit,
                fits_seven_bit_by_lines(&body, boundary),
                "{:?}", body
            );
            proptest::prop_assert_eq!(by_search, by_lines, "{:?}", body);
        }
    }

    /// The encoder as it was before it found line ends itself: line by line, split first.
    fn quoted_printable_by_lines(out: &mut String, body: &str) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let (lines, final_break) = lines(body);
        for (n, line) in lines.enumerate() {
            if n > 0 {
                out.push_str("\r\n");
            }
            let bytes = line.as_bytes();
            let len = bytes.len();
            let mut col = 0;
            let mut i = 0;
            while i < len {
                // Copy the longest literal run that fits before a soft break (75 columns leave
                // room for the `=`). Runs hold only ASCII, so their ends are char boundaries.
                let start = i;
                let end = len.min(i + 75 - col);
                while i < end && QP_LITERAL[bytes[i] as usize] {
                    i += 1;
                }
                if i == len && matches!(bytes[len - 1], b' ' | b'\t') {
                    i -= 1; // trailing white space is encoded below
                }
                if i > start {
                    out.push_str(line.get(start..i).unwrap_or_default());
                    col += i - start;
                }
                if i == len {
                    break;
                }
                let b = bytes[i];
                let last = i + 1 == len;
                if QP_LITERAL[b as usize] && !(last && matches!(b, b' ' | b'\t')) {
                    // The run stopped at the line limit: the last character may use column 76.
                    if last && col < 76 {
                        out.push(b as char);
                        i += 1;
                    } else {
                        out.push_str("=\r\n");
                        col = 0;
                    }
                    continue;
                }
                if col + 3 > if last { 76 } else { 75 } {
                    out.push_str("=\r\n");
                    col = 0;
                }
                out.push('=');
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 0x0f) as usize] as char);
                col += 3;
                i += 1;
            }
        }
        if final_break {
            out.push_str("\r\n");
        }
    }

    proptest::proptest! {
        /// The one-pass encoder writes what the line-by-line one did, for text full of the
        /// cases that matter: line ends of each kind, bare CRs, trailing white space, `=`,
        /// multi-byte characters and lines around the 76-column limit.
        #[test]
        fn quoted_printable_in_one_pass_writes_what_line_by_line_did(
            pieces in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("\n"), proptest::strategy::Just("\r\n"),
                    proptest::strategy::Just("\r"), proptest::strategy::Just(" "),
                    proptest::strategy::Just("\t"), proptest::strategy::Just("="),
                    proptest::strategy::Just("é"), proptest::strategy::Just("😀"),
                    proptest::strategy::Just("x"), proptest::strategy::Just("word "),
                    proptest::strategy::Just("a longer run of plain words, "),
                ],
                0..60,
            ),
        ) {
            let body: String = pieces.concat();
            let mut by_lines = String::new();
            quoted_printable_by_lines(&mut by_lines, &body);
            proptest::prop_assert_eq!(qp(&body), by_lines, "{:?}", body);
        }
    }

    /// Text full of what quoted-printable treats specially: line ends of each kind, bare CRs,
    /// white space (also before a line end), `=`, multi-byte characters, and runs that put a
    /// line end at, just before or just after the 75th and 76th columns.
    fn tricky_text(max_pieces: usize) -> impl proptest::strategy::Strategy<Value = String> {
        proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just("\n".to_string()),
                proptest::strategy::Just("\r\n".to_string()),
                proptest::strategy::Just("\r".to_string()),
                proptest::strategy::Just(" ".to_string()),
                proptest::strategy::Just("\t".to_string()),
                proptest::strategy::Just("=".to_string()),
                proptest::strategy::Just("é".to_string()),
                proptest::strategy::Just("😀".to_string()),
                proptest::strategy::Just("x".to_string()),
                proptest::strategy::Just("<a href=\"x\">".to_string()),
                proptest::strategy::Just("a longer run of plain words, ".to_string()),
                (72usize..78).prop_map(|n| "y".repeat(n)),
            ],
            0..max_pieces,
        )
        .prop_map(|pieces| pieces.concat())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// A body made of template literals and values between them, encoded with the
        /// literals' encodings copied where the encoder meets them, is byte for byte the
        /// body encoded without them: literals at the start, middle and end of the body,
        /// adjacent to each other or to values, with a final line break or without.
        #[test]
        fn copied_literal_encodings_write_what_encoding_writes(
            pieces in proptest::collection::vec(
                (proptest::prelude::any::<bool>(), tricky_text(40)),
                0..8,
            ),
            final_break in proptest::prelude::any::<bool>(),
        ) {
            let encodings: Vec<EncodedLiteral> = pieces
                .iter()
                .map(|(_, text)| EncodedLiteral::of(text))
                .collect();
            let mut body = String::new();
            let mut literals = Vec::new();
            for ((is_literal, text), encoded) in pieces.iter().zip(&encodings) {
                if *is_literal && !encoded.points.is_empty() {
                    literals.push(LiteralAt { at: body.len(), text, encoded });
                }
                body.push_str(text);
            }
            if final_break {
                body.push('\n');
            }
            let mut copied = String::new();
            quoted_printable(&mut copied, &body, &literals);
            proptest::prop_assert_eq!(copied, qp(&body), "{:?}", body);
        }
    }

    /// The copies are made: a long literal with lines of every kind is written from its
    /// encoding (checked by giving the encoder an encoding that differs where it copies).
    #[test]
    fn a_literal_with_lines_is_copied_from_its_encoding() {
        let text = format!(
            "{}\n{}{}\n<p class=\"a\">plain words =\t</p>\r\n\n",
            "z".repeat(200),
            "z".repeat(100),
            "é".repeat(30)
        );
        let mut encoded = EncodedLiteral::of(&text);
        assert!(encoded.points.len() > 4, "{:?}", encoded.points);
        let right = qp(&format!("value {text}value"));
        encoded.encoded = encoded.encoded.replace('z', "Z");
        let literals = [LiteralAt {
            at: "value ".len(),
            text: &text,
            encoded: &encoded,
        }];
        let mut copied = String::new();
        quoted_printable(&mut copied, &format!("value {text}value"), &literals);
        assert_ne!(copied, right);
        assert_eq!(copied.replace('Z', "z"), right);
    }

    #[test]
    fn quoted_printable_round_trips_any_text() {
        let samples = [
            "x".repeat(75),
            "x".repeat(76),
            "x".repeat(77),
            format!("{} ", "y".repeat(74)),
            format!("{}=", "z".repeat(74)),
            "é".repeat(40),
            format!("{}😀{}", "a".repeat(73), "b".repeat(10)),
            "tab\tend\t\nspace end \n\n=start".to_string(),
        ];
        for sample in samples {
            let encoded = qp(&sample);
            for line in encoded.split("\r\n") {
                assert!(line.len() <= 76, "{line:?}");
                assert!(!line.ends_with(' ') && !line.ends_with('\t'), "{line:?}");
            }
            let expected = sample.replace('\n', "\r\n");
            assert_eq!(qp_decode(&encoded), expected.as_bytes(), "{sample:?}");
        }
    }

    /// Every kind of byte after a literal run that puts it at each column around the line
    /// limit (the one-pass encoder decides bytes up to column 72 without the limit's tests,
    /// the rest with them), each followed by what decides it: a line end of each kind, the
    /// body's end, more text, an encoded byte. The reference is the line-by-line encoder.
    #[test]
    fn bytes_at_every_column_near_the_line_limit_are_written_as_line_by_line() {
        let bytes_there = [
            "=", "é", "😀", "\u{7f}", "\u{1}", "\r", " ", "\t", "x", "\n", "\r\n",
        ];
        let after = [
            "", "\n", "\r\n", "\r", "y", "=", "é", " \n", "x\r\nz", "\n\n", "abcdef", "ab=cd",
            "a \nb", "ab\r\n", "a\r", "abc", "abc\n", "ab \tc", "a\rb",
        ];
        for run in 60..=80usize {
            for there in bytes_there {
                for next in after {
                    for start in ["", "=", "é ", "\t"] {
                        let prefix = "x".repeat(run.saturating_sub(start.chars().count()));
                        let body = format!("{start}{prefix}{there}{next}");
                        let mut by_lines = String::new();
                        quoted_printable_by_lines(&mut by_lines, &body);
                        assert_eq!(qp(&body), by_lines, "{body:?}");
                        // Again after a line, so that the run starts at column 0 mid-body.
                        let body = format!("line\n{body}");
                        let mut by_lines = String::new();
                        quoted_printable_by_lines(&mut by_lines, &body);
                        assert_eq!(qp(&body), by_lines, "{body:?}");
                    }
                }
            }
        }
    }

    proptest::proptest! {
        /// The byte test refuses the links the character test refused: text with each of
        /// the refused characters, other ASCII controls, a C1 control (not ASCII, so not
        /// refused) and other non-ASCII characters.
        #[test]
        fn unsubscribe_links_are_refused_by_bytes_as_by_characters(
            link in "[a-z:/.é€😀<>, \t\u{7f}\u{1}\u{85}]{0,12}",
        ) {
            let by_characters =
                link.contains(|c: char| c.is_ascii_control() || "<> ,".contains(c));
            proptest::prop_assert_eq!(
                link.bytes().any(unfit_in_list_unsubscribe),
                by_characters,
                "{:?}",
                link
            );
        }
    }

    /// The run's end by the table, byte by byte.
    fn literal_run_end_by_table(bytes: &[u8], start: usize, limit: usize) -> usize {
        start
            + bytes[start..limit]
                .iter()
                .take_while(|&&b| QP_LITERAL[b as usize])
                .count()
    }

    proptest::proptest! {
        /// The block scan stops where the table says, on mostly printable bytes (long runs,
        /// so whole 16-byte blocks pass) with any byte among them, from any start to any
        /// limit (blocks read past the limit, or cannot be read whole near the end).
        #[test]
        fn literal_run_by_blocks_agrees_with_the_table(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    8 => b' '..=b'~',
                    1 => proptest::num::u8::ANY,
                ],
                0..200,
            ),
            limit_back in 0..40usize,
        ) {
            for start in 0..=bytes.len() {
                let limit = bytes.len().saturating_sub(limit_back).max(start);
                proptest::prop_assert_eq!(
                    literal_run_end(&bytes, start, limit),
                    literal_run_end_by_table(&bytes, start, limit),
                    "from {} to {}", start, limit
                );
            }
        }
    }

    /// The scan agrees with the table for every byte at every place in three 16-byte blocks
    /// and the bytes after them, after a tab too (the one control byte that is literal), with
    /// the limit before (where the block read holds the byte), at and after that byte, in a
    /// body that ends at that byte or goes on.
    #[test]
    fn literal_run_stops_where_the_table_says() {
        for byte in 0..=255u8 {
            for place in 0..52 {
                for filler in [b'a', b'\t'] {
                    let mut bytes = [filler; 60];
                    bytes[place] = byte;
                    for len in [place + 1, 60] {
                        let bytes = &bytes[..len];
                        for limit in [place.saturating_sub(2), place, place + 1, len] {
                            for start in [0, 1, place.saturating_sub(3)] {
                                let start = start.min(limit);
                                assert_eq!(
                                    literal_run_end(bytes, start, limit),
                                    literal_run_end_by_table(bytes, start, limit),
                                    "byte {byte:#04x} at {place} among {filler:#04x}, \
                                     {len} bytes, from {start} to {limit}"
                                );
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(literal_run_end(b"", 0, 0), 0);
    }

    proptest::proptest! {
        /// A header written as it is when it fits is the header folded word by word: values
        /// of words and runs of spaces (leading, trailing, doubled) around the line's length.
        #[test]
        fn headers_that_fit_are_written_as_folding_writes_them(
            name in "[A-Za-z-]{1,20}",
            words in proptest::collection::vec("[a-z<>@.:+0-9]{1,12}", 0..8),
            separators in proptest::collection::vec(proptest::prop_oneof![
                proptest::strategy::Just(" "),
                proptest::strategy::Just("  "),
            ], 8),
            (leading, trailing) in proptest::prelude::any::<(bool, bool)>(),
            filler in 0usize..70,
        ) {
            let mut value = String::from(if leading { " " } else { "" });
            value.push_str(&"x".repeat(filler));
            for (word, separator) in words.iter().zip(&separators) {
                value.push_str(separator);
                value.push_str(word);
            }
            if trailing {
                value.push(' ');
            }
            let (mut as_is, mut by_words) = (String::new(), String::new());
            header(&mut as_is, &name, &value);
            header_by_words(&mut by_words, &name, &value);
            proptest::prop_assert_eq!(as_is, by_words, "{:?}", value);
        }
    }

    #[test]
    fn non_ascii_bytes_are_counted_wherever_they_are() {
        // Past three 224-byte blocks; and all non-ASCII, as many as a block's byte-wide sum
        // can hold.
        for text in ["é a😀b ".repeat(70), "é".repeat(300)] {
            for start in 0..text.len() {
                let bytes = &text.as_bytes()[start..];
                assert_eq!(
                    non_ascii_count(bytes),
                    bytes.iter().filter(|b| !b.is_ascii()).count()
                );
            }
        }
    }

    #[test]
    fn encoded_words_never_split_a_character_and_stay_short() {
        let mut out = String::new();
        encoded_words(&mut out, &mut 9, &"é🎉".repeat(30));
        for word in out.split(['\r', '\n', ' ']).filter(|w| !w.is_empty()) {
            assert!(word.len() <= 75, "{word}");
            let b64 = word
                .strip_prefix("=?UTF-8?B?")
                .and_then(|w| w.strip_suffix("?="))
                .unwrap();
            let decoded = STANDARD.decode(b64).unwrap();
            assert!(
                String::from_utf8(decoded).is_ok(),
                "a word split a character"
            );
        }
    }

    #[test]
    fn ascii_subject_folds_at_spaces() {
        let mut out = String::from("Subject:");
        let subject = "word ".repeat(40);
        unstructured(&mut out, &mut 8, subject.trim());
        for line in out.split("\r\n") {
            assert!(line.len() <= LINE, "{line:?}");
        }
        assert_eq!(
            out.replace("\r\n", ""),
            format!("Subject: {}", subject.trim())
        );
        assert!(out.contains("\r\n "), "a 200-character subject is folded");
    }

    #[test]
    fn display_names_are_quoted_or_encoded_when_needed() {
        let cases = [
            ("Riverside Books", "Riverside Books"),
            ("Smith, John", "\"Smith, John\""),
            ("Say \"hi\"", "\"Say \\\"hi\\\"\""),
        ];
        for (name, expected) in cases {
            let mut out = String::new();
            phrase(&mut out, &mut 5, name);
            assert_eq!(out, format!(" {expected}"));
        }
        let mut out = String::new();
        phrase(&mut out, &mut 5, "Zoë");
        assert_eq!(out, " =?UTF-8?B?Wm/Dqw==?=");
    }

    /// The Content-Transfer-Encoding a part is written with.
    fn part_encoding(body: &str, boundary: Option<&str>) -> String {
        let mut out = String::new();
        part(&mut out, "plain", body, boundary, &[]);
        let header = out.lines().nth(1).unwrap_or_default();
        header
            .strip_prefix("Content-Transfer-Encoding: ")
            .unwrap_or(header)
            .to_string()
    }

    /// The shortcut for plain ASCII addresses gives what the parse and IDNA give, for
    /// domains IDNA accepts (A-labels too), refuses (bad punycode, hyphens at a label's
    /// ends, empty or overlong labels, a trailing dot) and addresses that do not parse.
    #[test]
    fn plain_addresses_skip_the_parse_with_the_same_result() {
        let long_label = "a".repeat(64);
        let domains = [
            "example.com",
            "mail-1.example.co.uk",
            "xn--bcher-kva.example",
            "xn--zz.example",
            "xn--.example",
            "-lead.example",
            "trail-.example",
            "a..b",
            "example.com.",
            ".example",
            "",
            "1.2.3.4",
            long_label.as_str(),
        ];
        for local in ["reader", "first.last+tag", "a\"b", ""] {
            for domain in domains {
                let address = format!("{local}@{domain}");
                assert_eq!(
                    header_address(&address).into_owned(),
                    header_address_parsed(&address),
                    "{address:?}"
                );
            }
        }
        for address in ["no-at-sign", "two@at@signs.example"] {
            assert_eq!(
                header_address(address).into_owned(),
                header_address_parsed(address)
            );
        }
    }

    #[test]
    fn encoding_follows_content() {
        assert_eq!(choose_encoding("plain\nascii\n", None), Encoding::SevenBit);
        assert_eq!(part_encoding("plain\nascii\n", None), "7bit");
        // A line too long for 7bit is found while copying: the part is written again.
        let long_line = format!("short\n{}\nshort\n", "x".repeat(1000));
        assert_eq!(part_encoding(&long_line, None), "quoted-printable");
        let mut again = String::new();
        part(&mut again, "plain", &long_line, None, &[]);
        let mut expected = String::from(
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n",
        );
        quoted_printable(&mut expected, &long_line, &[]);
        assert_eq!(again, expected);
        assert_eq!(part_encoding(&"x".repeat(998), None), "7bit");
        assert_eq!(
            choose_encoding("a --=_mb_x b", Some("=_mb_x")),
            Encoding::QuotedPrintable
        );
        assert_eq!(
            choose_encoding("Hello Zoë, welcome back", None),
            Encoding::QuotedPrintable
        );
        assert_eq!(
            choose_encoding("مرحبا بكم في متجرنا", None),
            Encoding::Base64
        );
    }
}
