//! Email addresses and mailboxes (address plus optional display name).

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;

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
        check_local_part(local)?;
        check_domain(domain)?;
        Ok(EmailAddress(input.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn domain(&self) -> &str {
        self.0.rsplit('@').next().unwrap_or_default()
    }

    /// The key two addresses are compared by for de-duplication and suppression: the whole
    /// address lower-cased. RFC 5321 lets a server treat the local part case-sensitively, but
    /// no mainstream mailbox provider does, while a list holding `Ann@x.org` and `ann@x.org`
    /// is common; sending twice to one person is the worse failure. The address is still
    /// delivered exactly as first written.
    pub fn key(&self) -> String {
        self.0.to_lowercase()
    }
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
    /// Display name, e.g. "Riverside Books". A single line: CR and LF are refused.
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
}
