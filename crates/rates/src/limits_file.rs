//! `RATE_LIMITS_FILE`: sending rates per destination domain or domain group, in TOML.
//!
//! ```toml
//! # Messages per second to each destination domain in no group, each on its own (optional).
//! default_rate = 20
//!
//! [groups.google]
//! domains = ["gmail.com", "googlemail.com"]
//! rate = 50
//!
//! [groups.microsoft]
//! domains = ["outlook.com", "hotmail.com", "live.com"]
//! rate = 30
//!
//! # How a throttled destination slows down and recovers (optional; these are the defaults).
//! [slow_down]
//! factor = 0.5              # a throttling reply multiplies the destination's rate by this
//! quiet_seconds = 60        # no throttling reply for this long before the rate recovers
//! recovery_per_minute = 0.1 # then the rate grows by this fraction a minute, up to its setting
//! ```
//!
//! Everything unknown or impossible is refused with the line it is on: an unknown key, a rate
//! that is not a positive number, a domain in two groups, a group without domains.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml_edit::{Item, TableLike};

/// A file that cannot be used; the message names the file and the line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LimitsFileError {
    /// The file cannot be read.
    #[error("RATE_LIMITS_FILE {}: cannot read it: {reason}", .path.display())]
    Unreadable { path: PathBuf, reason: String },
    /// Something in the file is wrong, at this line (1-based).
    #[error("RATE_LIMITS_FILE {}, line {line}: {reason}", .path.display())]
    Invalid {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// Destinations sharing one limit.
#[derive(Debug, Clone, PartialEq)]
pub struct DomainGroup {
    /// The group's name in the file (`[groups.NAME]`), used in metrics and status.
    pub name: String,
    /// Lower-case domain names, as the envelope carries them (IDNs as A-labels).
    pub domains: Vec<String>,
    /// Messages per second to all of them together, across the deployment.
    pub rate: f64,
}

/// How a throttled destination slows down and recovers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowDownPolicy {
    /// A throttling reply multiplies the destination's rate by this (0 < factor < 1).
    pub factor: f64,
    /// The rate starts to recover once no throttling reply came for this long.
    pub quiet: Duration,
    /// Then it grows by this fraction a minute (compounding) up to its configured rate.
    pub recovery_per_minute: f64,
}

impl Default for SlowDownPolicy {
    fn default() -> SlowDownPolicy {
        SlowDownPolicy {
            factor: 0.5,
            quiet: Duration::from_secs(60),
            recovery_per_minute: 0.1,
        }
    }
}

/// What `RATE_LIMITS_FILE` says.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RateLimits {
    /// Messages per second to each domain that is in no group, each on its own.
    pub default_rate: Option<f64>,
    pub groups: Vec<DomainGroup>,
    pub slow_down: SlowDownPolicy,
}

impl RateLimits {
    /// Reads and checks the file at `path`.
    pub fn read(path: &Path) -> Result<RateLimits, LimitsFileError> {
        let text = std::fs::read_to_string(path).map_err(|err| LimitsFileError::Unreadable {
            path: path.to_path_buf(),
            reason: err.to_string(),
        })?;
        RateLimits::parse(&text).map_err(|problem| LimitsFileError::Invalid {
            path: path.to_path_buf(),
            line: line_of(&text, problem.at.start),
            reason: problem.reason,
        })
    }

    /// Checks the file's text; a problem carries the byte range it is about.
    pub fn parse(text: &str) -> Result<RateLimits, Problem> {
        let document = toml_edit::Document::parse(text).map_err(|err| Problem {
            at: err.span().unwrap_or(0..0),
            reason: err.message().to_string(),
        })?;
        let mut limits = RateLimits::default();
        let top: &dyn TableLike = document.as_table();
        for (key, item) in top.iter() {
            match key {
                "default_rate" => limits.default_rate = Some(rate(item, "default_rate")?),
                "groups" => limits.groups = groups(item)?,
                "slow_down" => limits.slow_down = slow_down(item)?,
                other => {
                    return Err(unknown_key(top, other, "default_rate, groups, slow_down"));
                }
            }
        }
        Ok(limits)
    }
}

/// A problem at a byte range of the file's text.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub at: Range<usize>,
    pub reason: String,
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn span_of(item: &Item) -> Range<usize> {
    item.span()
        .or_else(|| item.as_value().and_then(|value| value.span()))
        .unwrap_or(0..0)
}

fn unknown_key(table: &dyn TableLike, key: &str, known: &str) -> Problem {
    Problem {
        at: table.key(key).and_then(|k| k.span()).unwrap_or(0..0),
        reason: format!("unknown key {key:?} (known: {known})"),
    }
}

fn table<'a>(item: &'a Item, name: &str) -> Result<&'a dyn TableLike, Problem> {
    item.as_table_like().ok_or_else(|| Problem {
        at: span_of(item),
        reason: format!("{name} must be a table"),
    })
}

fn number(item: &Item, name: &str) -> Result<f64, Problem> {
    let value = item
        .as_float()
        .or_else(|| item.as_integer().map(|n| n as f64));
    value.ok_or_else(|| Problem {
        at: span_of(item),
        reason: format!("{name} must be a number"),
    })
}

/// A rate: a positive, finite number of messages per second.
fn rate(item: &Item, name: &str) -> Result<f64, Problem> {
    let value = number(item, name)?;
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(Problem {
            at: span_of(item),
            reason: format!("{name} must be a positive number of messages per second, not {value}"),
        })
    }
}

fn groups(item: &Item) -> Result<Vec<DomainGroup>, Problem> {
    let groups = table(item, "groups")?;
    let mut found: Vec<DomainGroup> = Vec::new();
    for (name, group_item) in groups.iter() {
        let group = table(group_item, &format!("groups.{name}"))?;
        let at = groups
            .key(name)
            .and_then(|key| key.span())
            .unwrap_or_else(|| span_of(group_item));
        let mut domains = None;
        let mut group_rate = None;
        for (key, value) in group.iter() {
            match key {
                "domains" => domains = Some(domain_list(value, name, &found)?),
                "rate" => group_rate = Some(rate(value, &format!("groups.{name}.rate"))?),
                other => return Err(unknown_key(group, other, "domains, rate")),
            }
        }
        let missing = |what: &str| Problem {
            at: at.clone(),
            reason: format!("group {name:?} needs {what}"),
        };
        let domains = domains.ok_or_else(|| missing("domains = [\"…\"]"))?;
        if domains.is_empty() {
            return Err(missing("at least one domain"));
        }
        found.push(DomainGroup {
            name: name.to_string(),
            domains,
            rate: group_rate.ok_or_else(|| missing("a rate (messages per second)"))?,
        });
    }
    Ok(found)
}

/// A group's domains: lower-cased names, none already in an earlier group or twice in this one.
fn domain_list(item: &Item, group: &str, earlier: &[DomainGroup]) -> Result<Vec<String>, Problem> {
    let array = item.as_array().ok_or_else(|| Problem {
        at: span_of(item),
        reason: format!("groups.{group}.domains must be a list of domain names"),
    })?;
    let mut domains: Vec<String> = Vec::new();
    for value in array.iter() {
        let at = value.span().unwrap_or_else(|| span_of(item));
        let problem = |reason: String| Problem {
            at: at.clone(),
            reason,
        };
        let name = value
            .as_str()
            .ok_or_else(|| problem(format!("groups.{group}.domains holds a non-string")))?;
        let domain = name.trim_end_matches('.').to_ascii_lowercase();
        if domain.is_empty()
            || !domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(problem(format!(
                "{name:?} is not a domain name (write internationalised names as A-labels, xn--…)"
            )));
        }
        if let Some(other) = earlier.iter().find(|g| g.domains.contains(&domain)) {
            return Err(problem(format!(
                "{domain} is already in group {:?}: a domain belongs to one group",
                other.name
            )));
        }
        if domains.contains(&domain) {
            return Err(problem(format!(
                "{domain} is listed twice in group {group:?}"
            )));
        }
        domains.push(domain);
    }
    Ok(domains)
}

fn slow_down(item: &Item) -> Result<SlowDownPolicy, Problem> {
    let section = table(item, "slow_down")?;
    let mut policy = SlowDownPolicy::default();
    for (key, value) in section.iter() {
        let out_of_range = |reason: &str| Problem {
            at: span_of(value),
            reason: format!("slow_down.{key} {reason}"),
        };
        match key {
            "factor" => {
                policy.factor = number(value, "slow_down.factor")?;
                if !(policy.factor > 0.0 && policy.factor < 1.0) {
                    return Err(out_of_range("must be more than 0 and less than 1"));
                }
            }
            "quiet_seconds" => {
                let seconds = number(value, "slow_down.quiet_seconds")?;
                if !(seconds.is_finite() && seconds > 0.0 && seconds <= 86_400.0) {
                    return Err(out_of_range("must be more than 0 and at most 86400"));
                }
                policy.quiet = Duration::from_secs_f64(seconds);
            }
            "recovery_per_minute" => {
                policy.recovery_per_minute = number(value, "slow_down.recovery_per_minute")?;
                if !(policy.recovery_per_minute > 0.0 && policy.recovery_per_minute <= 10.0) {
                    return Err(out_of_range("must be more than 0 and at most 10"));
                }
            }
            other => {
                return Err(unknown_key(
                    section,
                    other,
                    "factor, quiet_seconds, recovery_per_minute",
                ));
            }
        }
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem_line(text: &str) -> (usize, String) {
        let problem = RateLimits::parse(text).expect_err("refused");
        (line_of(text, problem.at.start), problem.reason)
    }

    #[test]
    fn limits_file_reads_groups_default_and_slow_down() {
        let limits = RateLimits::parse(
            "default_rate = 20\n\
             [groups.google]\n\
             domains = [\"Gmail.com\", \"googlemail.com.\"]\n\
             rate = 50\n\
             [groups.microsoft]\n\
             domains = [\"outlook.com\"]\n\
             rate = 2.5\n\
             [slow_down]\n\
             quiet_seconds = 5\n",
        )
        .expect("valid");
        assert_eq!(limits.default_rate, Some(20.0));
        assert_eq!(
            limits.groups,
            [
                DomainGroup {
                    name: "google".into(),
                    domains: vec!["gmail.com".into(), "googlemail.com".into()],
                    rate: 50.0
                },
                DomainGroup {
                    name: "microsoft".into(),
                    domains: vec!["outlook.com".into()],
                    rate: 2.5
                },
            ]
        );
        assert_eq!(limits.slow_down.quiet, Duration::from_secs(5));
        assert_eq!(limits.slow_down.factor, 0.5);
    }

    #[test]
    fn limits_file_refuses_an_unknown_key_naming_its_line() {
        let (line, reason) =
            problem_line("[groups.google]\ndomains = [\"gmail.com\"]\nrate = 5\nburst = 3\n");
        assert_eq!(line, 4);
        assert!(reason.contains("unknown key \"burst\""), "{reason}");
        let (line, reason) = problem_line("default_rate = 5\n\ndefault_rte = 3\n");
        assert_eq!(line, 3);
        assert!(reason.contains("default_rte"), "{reason}");
    }

    #[test]
    fn limits_file_refuses_zero_and_negative_rates_naming_the_line() {
        for bad in ["0", "-5", "-0.5", "\"fast\"", "nan", "inf"] {
            let (line, reason) = problem_line(&format!(
                "[groups.google]\ndomains = [\"gmail.com\"]\nrate = {bad}\n"
            ));
            assert_eq!(line, 3, "{bad}: {reason}");
            assert!(reason.contains("groups.google.rate"), "{reason}");
        }
        let (line, _) = problem_line("# comment\ndefault_rate = 0\n");
        assert_eq!(line, 2);
    }

    #[test]
    fn limits_file_refuses_a_domain_in_two_groups_naming_the_second_line() {
        let (line, reason) = problem_line(
            "[groups.a]\ndomains = [\"x.example\"]\nrate = 1\n\
             [groups.b]\ndomains = [\"y.example\",\n  \"X.example\"]\nrate = 1\n",
        );
        assert_eq!(line, 6);
        assert!(reason.contains("already in group \"a\""), "{reason}");
    }

    #[test]
    fn limits_file_refuses_syntax_errors_and_incomplete_groups_with_their_line() {
        let (line, _) = problem_line("default_rate = 5\n[groups.a\n");
        assert_eq!(line, 2);
        let (line, reason) = problem_line("default_rate = 5\n[groups.a]\nrate = 3\n");
        assert_eq!(line, 2);
        assert!(reason.contains("needs domains"), "{reason}");
        let (line, reason) = problem_line("[slow_down]\nfactor = 1.5\n");
        assert_eq!(line, 2);
        assert!(reason.contains("slow_down.factor"), "{reason}");
    }

    #[test]
    fn limits_file_errors_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("limits.toml");
        std::fs::write(&path, "default_rate = -1\n").unwrap();
        let err = RateLimits::read(&path).expect_err("refused").to_string();
        assert!(err.starts_with("RATE_LIMITS_FILE "), "{err}");
        assert!(
            err.contains("limits.toml, line 1: default_rate must be a positive"),
            "{err}"
        );
        let missing = RateLimits::read(&dir.path().join("absent.toml")).expect_err("refused");
        assert!(matches!(missing, LimitsFileError::Unreadable { .. }));
    }
}
