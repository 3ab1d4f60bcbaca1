//! Email addresses and mailboxes (address plus optional display name).

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use std::borrow::Cow;
use std::fmt;
use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Why a string is not an address we will send to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The value is empty (or only whitespace).
    #[error("the address is empty")]
    Empty,
    /// Longer than the 254 characters SMTP allows in a path.
    #[error("the address is longer than 254 characters")]
    TooLong,
    /// There must be exactly one `@` separating local part and domain.
    #[error("the address must contain exactly one '@'")]
    At,
    /// The part before `@` is empty, too long or contains a character not allowed there.
    #[error("the local part (before '@') {0}")]
    LocalPart(&'static str),
    /// The part after `@` is not a valid domain name.
    #[error("the domain (after '@') {0}")]
    Domain(&'static str),
    /// An invisible or text-direction character (general category Cf, such as U+202E or
    /// U+200B): it makes one address display as another.
    #[error(
        "the address contains the invisible or text-direction character U+{:04X}, which can make it look like another address",
        u32::from(*.0)
    )]
    Invisible(char),
}

/// A syntactically valid address (RFC 5321/5322 dot-atom, RFC 6531 UTF-8 allowed).
///
/// Quoted local parts and address literals (`user@[192.0.2.1]`) are refused on purpose: they
/// are legal but practically never belong to a real subscriber, and refusing them keeps every
/// address safe to place in a header without quoting.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, JsonSchema, utoipa::ToSchema)]
#[serde(transparent)]
#[schemars(transparent)]
#[schema(value_type = String, format = "email", example = "ann@example.com")]
pub struct EmailAddress(#[schemars(with = "String", extend("format" = "email"))] String);

const LOCAL_SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";

impl EmailAddress {
    /// The only way to make an `EmailAddress`. Surrounding whitespace is not trimmed here:
    /// callers that read user files trim first, so that what is stored is what was checked.
    pub fn parse(input: &str) -> Result<EmailAddress, AddressError> {
        if input.trim().is_empty() {
            return Err(AddressError::Empty);
        }
        if input.chars().count() > 254 {
            return Err(AddressError::TooLong);
        }
        let mut parts = input.split('@');
        let (local, domain) = match (parts.next(), parts.next(), parts.next()) {
            (Some(local), Some(domain), None) => (local, domain),
            _ => return Err(AddressError::At),
        };
        if let Some(invisible) = invisible_character(input) {
            return Err(AddressError::Invisible(invisible));
        }
        check_local_part(local)?;
        check_domain(domain)?;
        Ok(EmailAddress(input.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn domain(&self) -> &str {
        self.split().1
    }

    /// The key two addresses are compared by for de-duplication and suppression (stored as
    /// `email_key`). Two spellings of one mailbox have one key:
    ///
    /// - the domain is converted to its ASCII form (IDNA, UTS #46 non-transitional) and
    ///   lower-cased, so `bücher.example`, `BÜCHER.example` and `xn--bcher-kva.example` agree;
    /// - the local part is NFKC-normalised and lower-cased, so composed and decomposed accents
    ///   (NFC vs NFD) and compatibility forms (full-width `ａｎｎ`, ligatures) agree.
    ///
    /// Lower-casing the local part: RFC 5321 lets a server treat it case-sensitively, but no
    /// mainstream mailbox provider does, while a list holding `Ann@x.org` and `ann@x.org` is
    /// common; sending twice to one person is the worse failure. NFKC rather than NFC for the
    /// same reason: a key that merges two look-alike spellings can at worst suppress a
    /// mailbox that only looks like a suppressed one, never send to one that is suppressed.
    /// Letters of different scripts that look alike (Latin `a`, Cyrillic `а`) are different
    /// mailboxes to every server and keep different keys; invisible and text-direction
    /// characters, which could hide that, are refused by [`EmailAddress::parse`].
    ///
    /// For an ASCII address the key is the address lower-cased. The address itself is still
    /// delivered exactly as first written.
    pub fn key(&self) -> String {
        let (local, domain) = self.split();
        let local: String = local.nfkc().collect::<String>().to_lowercase();
        // Lower-casing can leave a sequence that composes (and a key must be a fixed point).
        let mut key: String = local.nfc().collect();
        key.push('@');
        key.push_str(&ascii_domain(domain).to_ascii_lowercase());
        key
    }

    /// The domain as A-labels (`xn--bcher-kva.example` for `bücher.example`), for places
    /// that must stay ASCII such as a Message-ID.
    pub fn ascii_domain(&self) -> Cow<'_, str> {
        ascii_domain(self.domain())
    }

    /// The address with its domain as A-labels (`idn@xn--bcher-kva.example`), for an SMTP
    /// server that does not offer SMTPUTF8; `None` when the local part is not ASCII, which
    /// such a server cannot accept in any spelling.
    pub fn with_ascii_domain(&self) -> Option<String> {
        let (local, domain) = self.split();
        local
            .is_ascii()
            .then(|| format!("{local}@{}", ascii_domain(domain)))
    }

    /// Local part and domain; `parse` guarantees exactly one `@`.
    fn split(&self) -> (&str, &str) {
        self.0.rsplit_once('@').unwrap_or((self.0.as_str(), ""))
    }
}

/// The domain in ASCII (A-labels), exactly as IDNA gives it; the domain as written if the
/// conversion fails, which `parse` has already ruled out.
fn ascii_domain(domain: &str) -> Cow<'_, str> {
    idna_to_ascii(domain).unwrap_or(Cow::Borrowed(domain))
}

/// UTS #46 ToASCII with the checks a mail domain needs: letters, digits and hyphens only
/// (STD3), and DNS lengths.
fn idna_to_ascii(domain: &str) -> Option<Cow<'_, str>> {
    Uts46::new()
        .to_ascii(
            domain.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::Allow,
            DnsLength::Verify,
        )
        .ok()
}

/// Invisible and text-direction characters (general category Cf: U+200B–U+200F,
/// U+202A–U+202E, U+2066–U+2069, U+FEFF, the soft hyphen, …). None belongs in an address,
/// and each can make one address display as another.
fn invisible_character(address: &str) -> Option<char> {
    address
        .chars()
        .find(|&c| !c.is_ascii() && c.general_category() == GeneralCategory::Format)
}

fn check_local_part(local: &str) -> Result<(), AddressError> {
    if local.is_empty() {
        return Err(AddressError::LocalPart("is empty"));
    }
    if local.len() > 64 {
        return Err(AddressError::LocalPart("is longer than 64 octets"));
    }
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(AddressError::LocalPart(
            "may not start or end with '.' or contain '..'",
        ));
    }
    let allowed = |c: char| {
        c.is_ascii_alphanumeric()
            || LOCAL_SPECIALS.contains(c)
            || c == '.'
            || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
    };
    if !local.chars().all(allowed) {
        return Err(AddressError::LocalPart(
            "contains a character that is not allowed (spaces, quotes, brackets, commas, control characters)",
        ));
    }
    Ok(())
}

fn check_domain(domain: &str) -> Result<(), AddressError> {
    if domain.is_empty() {
        return Err(AddressError::Domain("is empty"));
    }
    if domain.len() > 253 {
        return Err(AddressError::Domain("is longer than 253 octets"));
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2 {
        return Err(AddressError::Domain(
            "needs at least two labels, like example.com",
        ));
    }
    for label in &labels {
        if label.is_empty() {
            return Err(AddressError::Domain(
                "has an empty label ('..' or a trailing '.')",
            ));
        }
        if label.len() > 63 {
            return Err(AddressError::Domain("has a label longer than 63 octets"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(AddressError::Domain(
                "has a label that starts or ends with '-'",
            ));
        }
        let allowed = |c: char| {
            c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && c.is_alphanumeric())
        };
        if !label.chars().all(allowed) {
            return Err(AddressError::Domain(
                "may contain only letters, digits, '-' and '.'",
            ));
        }
    }
    if labels
        .last()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(AddressError::Domain("ends in a numeric label"));
    }
    if idna_to_ascii(domain).is_none() {
        return Err(AddressError::Domain(
            "is not a valid internationalised domain name (IDNA)",
        ));
    }
    Ok(())
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for EmailAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        EmailAddress::parse(&raw).map_err(|err| {
            serde::de::Error::custom(format!("invalid email address {raw:?}: {err}"))
        })
    }
}

/// An address with an optional display name, as used for From and Reply-To.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Mailbox {
    pub email: EmailAddress,
    /// Display name, e.g. "Riverside Books". A single line (CR and LF are refused) of at most
    /// 200 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_and_international_addresses() {
        for ok in [
            "ann@example.com",
            "first.last+tag@sub.example.co.uk",
            "o'neil@example.ie",
            "josé@exämple.de",
            "user_1@xn--bcher-kva.example",
        ] {
            assert!(EmailAddress::parse(ok).is_ok(), "{ok} should be valid");
        }
    }

    #[test]
    fn refuses_what_cannot_be_sent_or_would_inject_headers() {
        let cases = [
            ("", AddressError::Empty),
            ("plainaddress", AddressError::At),
            ("a@b@example.com", AddressError::At),
            ("@example.com", AddressError::LocalPart("is empty")),
            ("ann@", AddressError::Domain("is empty")),
            (
                "ann@localhost",
                AddressError::Domain("needs at least two labels, like example.com"),
            ),
            (
                ".ann@example.com",
                AddressError::LocalPart("may not start or end with '.' or contain '..'"),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(EmailAddress::parse(input), Err(expected), "{input:?}");
        }
        for bad in [
            "ann smith@example.com",
            "ann@example.com\r\nBcc: victim@example.com",
            "ann\n@example.com",
            "<ann@example.com>",
            "ann,bob@example.com",
            "ann@exa_mple.com",
            "ann@-example.com",
            "ann@example.123",
            "ann@example..com",
        ] {
            assert!(
                EmailAddress::parse(bad).is_err(),
                "{bad:?} should be refused"
            );
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(EmailAddress::parse(&long_local).is_err());
    }

    #[test]
    fn key_ignores_case_but_the_address_keeps_it() {
        let a = EmailAddress::parse("Ann.Smith@Example.COM").unwrap();
        let b = EmailAddress::parse("ann.smith@example.com").unwrap();
        assert_eq!(a.key(), b.key());
        assert_eq!(a.as_str(), "Ann.Smith@Example.COM");
    }

    #[test]
    fn refuses_invisible_and_text_direction_characters() {
        for c in [
            '\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}', '\u{200B}', '\u{200D}', '\u{200F}',
            '\u{FEFF}', '\u{00AD}',
        ] {
            let address = format!("ann{c}moc@example.com");
            assert_eq!(
                EmailAddress::parse(&address),
                Err(AddressError::Invisible(c)),
                "{address:?}"
            );
        }
        let message = AddressError::Invisible('\u{202E}').to_string();
        assert!(message.contains("U+202E"), "{message}");
    }

    #[test]
    fn idn_domains_must_be_valid_idna() {
        for bad in ["ann@xn--zz.example", "ann@xn--a.example"] {
            assert!(
                matches!(EmailAddress::parse(bad), Err(AddressError::Domain(_))),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn key_joins_the_spellings_of_one_mailbox() {
        let key = |s: &str| EmailAddress::parse(s).unwrap().key();
        assert_eq!(key("idn@bücher.example"), "idn@xn--bcher-kva.example");
        assert_eq!(
            key("IDN@XN--BCHER-KVA.EXAMPLE"),
            "idn@xn--bcher-kva.example"
        );
        assert_eq!(key("idn@BÜCHER.example"), "idn@xn--bcher-kva.example");
        // NFD (e + combining acute) and NFC (é) local parts, full-width letters.
        assert_eq!(key("jose\u{301}@example.com"), key("JOSÉ@example.com"));
        assert_eq!(key("ａｎｎ@example.com"), "ann@example.com");
        // Different scripts are different mailboxes: Cyrillic а is not Latin a.
        assert_ne!(key("\u{430}nn@example.com"), key("ann@example.com"));
    }

    #[test]
    fn with_ascii_domain_writes_a_labels_or_nothing() {
        let ascii = |s: &str| EmailAddress::parse(s).unwrap().with_ascii_domain();
        assert_eq!(
            ascii("Idn@Bücher.example").as_deref(),
            Some("Idn@xn--bcher-kva.example")
        );
        assert_eq!(ascii("ann@example.com").as_deref(), Some("ann@example.com"));
        assert_eq!(ascii("josé@example.com"), None);
    }

    mod canonical_key {
        use super::*;
        use proptest::prelude::*;
        use unicode_normalization::UnicodeNormalization;

        /// Local-part letters, with accents that have composed and decomposed forms.
        fn local_part() -> impl Strategy<Value = String> {
            proptest::collection::vec(
                prop_oneof![
                    proptest::char::range('a', 'z'),
                    proptest::char::range('A', 'Z'),
                    proptest::char::range('0', '9'),
                    Just('+'),
                    Just('_'),
                    proptest::sample::select(vec![
                        'é', 'Ü', 'ñ', 'Å', 'ç', 'ø', 'ß', 'Ω', 'ж', '日'
                    ]),
                ],
                1..20,
            )
            .prop_map(|chars| chars.into_iter().collect())
        }

        /// A domain of one or two labels mixing ASCII and non-ASCII letters, under `.example`.
        fn domain() -> impl Strategy<Value = String> {
            let label = proptest::collection::vec(
                prop_oneof![
                    proptest::char::range('a', 'z'),
                    proptest::sample::select(vec!['ü', 'ö', 'é', 'ñ', 'ж', 'ı', 'ç']),
                ],
                1..12,
            )
            .prop_map(|chars| chars.into_iter().collect::<String>());
            proptest::collection::vec(label, 1..3).prop_map(|labels| labels.join(".") + ".example")
        }

        /// Another spelling of one mailbox: any letter's case, the domain as U-labels or
        /// A-labels, the local part composed or decomposed.
        fn respell(local: &str, domain: &str, flips: &[bool], a_label: bool, nfd: bool) -> String {
            let mut flip = flips.iter().copied().cycle();
            let mut recase = |text: &str| -> String {
                text.chars()
                    .map(|c| {
                        if flip.next().unwrap_or(false) {
                            c.to_uppercase()
                                .next()
                                .filter(|u| u.to_lowercase().eq(c.to_lowercase()))
                                .unwrap_or(c)
                        } else {
                            c
                        }
                    })
                    .collect()
            };
            let local = recase(local);
            let local: String = if nfd {
                local.nfd().collect()
            } else {
                local.nfc().collect()
            };
            let domain = if a_label {
                recase(&idna::domain_to_ascii(domain).unwrap())
            } else {
                recase(domain)
            };
            format!("{local}@{domain}")
        }

        proptest! {
            #[test]
            fn every_spelling_of_a_mailbox_has_its_key(
                local in local_part(),
                domain in domain(),
                flips in proptest::collection::vec(any::<bool>(), 1..16),
                a_label: bool,
                nfd: bool,
            ) {
                let original = format!("{local}@{domain}");
                let parsed = EmailAddress::parse(&original);
                // A label IDNA refuses (rare): not a mailbox. Too many would fail the test.
                prop_assume!(parsed.is_ok());
                let address = parsed.unwrap_or_else(|err| panic!("{err}"));
                let spelling = respell(&local, &domain, &flips, a_label, nfd);
                let other = EmailAddress::parse(&spelling)
                    .unwrap_or_else(|err| panic!("{spelling:?} of {original:?}: {err}"));
                prop_assert_eq!(address.key(), other.key(), "{:?} vs {:?}", original, spelling);
                // The key is itself an address with the same key, in ASCII past the '@'.
                let key = address.key();
                prop_assert!(key.rsplit('@').next().is_some_and(|d| d.is_ascii()));
                prop_assert_eq!(EmailAddress::parse(&key).map(|k| k.key()), Ok(key.clone()));
            }
        }
    }
}
