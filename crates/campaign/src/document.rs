//! The campaign document: everything needed to send a campaign, templates included.

use crate::address::{EmailAddress, Mailbox};
use crate::local_time::LocalSendTime;
use crate::recipient::Recipient;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use time::OffsetDateTime;

/// A campaign as users write it: one self-contained JSON document.
///
/// Unknown fields are refused so that a typo (`"batchsize"`) cannot pass silently; recipients'
/// personalization fields are the one place where any name is allowed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "Campaign",
    description = "A marketing-base campaign document with its templates embedded."
)]
pub struct CampaignDocument {
    /// Human-readable name, shown in lists and reports. One line, at most 200 characters.
    pub name: String,
    /// The sender: address and display name.
    pub from: Mailbox,
    /// Where replies go, when not to the sender.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Mailbox>,
    /// The message templates.
    pub templates: Templates,
    /// Recipients per batch task (1 to MAX_BATCH_SIZE).
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Messages per second at most for this campaign, across every worker: 0.001 (one in
    /// about 17 minutes) to 1,000,000, fractions allowed. The deployment's SMTP_RATE_LIMIT and
    /// destination limits still apply: the lowest wins. Absent: only those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.001, max = 1_000_000.0))]
    #[schema(minimum = 0.001, maximum = 1_000_000.0)]
    pub max_rate: Option<f64>,
    /// How temporary delivery failures are retried.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Which engagement is tracked.
    #[serde(default)]
    pub tracking: TrackingOptions,
    /// When to send (RFC 3339 with an offset, at most microsecond precision), in the future
    /// and at most 5 years ahead when the campaign is created. Absent: send when asked.
    #[serde(
        default,
        with = "crate::timestamp::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>", extend("format" = "date-time"))]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub scheduled_at: Option<OffsetDateTime>,
    /// Deliver at a local time of day in each recipient's own time zone instead of at once:
    /// each recipient is released at the first such moment after the campaign starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_send_time: Option<LocalSendTime>,
    /// The `List-Id` header (RFC 2919): the identifier of the list this campaign goes to, as a
    /// string (`"news.riverside.example"`) or with a description shown by mail clients
    /// (`{"name": "Riverside Books news", "id": "news.riverside.example"}`). The identifier is
    /// domain-like: labels of letters, digits, `-` and `_` joined by dots, at least two, at most
    /// 255 characters. Absent: derived from the From address (`news@riverside.example` gives
    /// `news.riverside.example`), so every campaign from one sender shares one list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_id: Option<ListId>,
    /// An address that unsubscribes by mail: a `mailto:` link (subject `unsubscribe`, the
    /// recipient's signed https link as the body) is added to `List-Unsubscribe` after the
    /// https one, which stays first for one-click unsubscription (RFC 8058). Absent: https only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe_mailto: Option<EmailAddress>,
    /// The sender identifier of a `Feedback-ID: CAMPAIGN_ID:SENDER` header, for mailbox
    /// providers' feedback loops (Gmail's Postmaster Tools) to report complaints per campaign:
    /// 1 to 64 letters, digits, `.`, `_` and `-`. Absent: no Feedback-ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback_id: Option<String>,
    /// Free-form data kept with the campaign and available to templates as `campaign.metadata`.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// A/B test: 2 to 5 variants of the message, each overriding only what it names
    /// (subject, html, text, from). Requires `ab_test`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<Variant>,
    /// How the A/B test runs: a test slice of the list gets the variants, the best one by
    /// `metric` after `decide_after` goes to the rest. Requires `variants`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ab_test: Option<AbTest>,
    /// Recipients given inline. They may also be added later (JSON or CSV).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<Recipient>,
}

/// The fewest and most variants an A/B test may have.
pub const MIN_VARIANTS: usize = 2;
pub const MAX_VARIANTS: usize = 5;

/// One variant of an A/B test: what it changes from the campaign's templates and sender.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// How reports and the `X-Campaign-Variant` header name it: 1 to 32 letters, digits,
    /// `-` and `_`, unique within the campaign.
    pub name: String,
    /// Subject line template, instead of `templates.subject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// HTML body template, instead of `templates.html`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// Plain-text body template, instead of `templates.text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The sender, instead of `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Mailbox>,
}

/// How an A/B test picks its slice and its winner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AbTest {
    /// The share of the list that receives the variants (more than 0, less than 1), chosen
    /// at random but reproducibly (seeded by the campaign id) and split evenly among them.
    pub test_fraction: f64,
    /// What makes a variant win: its unique opens or unique clicks per delivered message.
    pub metric: AbMetric,
    /// How long after the test slice starts sending the winner is chosen: a number and a
    /// unit, `s`, `m`, `h` or `d` (`"4h"`, `"90m"`), at most 30 days.
    pub decide_after: String,
    /// The fewest recipients a variant may get; a `test_fraction` giving fewer is refused
    /// once the recipients are known (when the campaign is sent). Default 1.
    #[serde(default = "default_min_per_variant")]
    pub min_per_variant: u32,
    /// Adds an `X-Campaign-Variant: NAME` header to every message of the campaign.
    #[serde(default)]
    pub variant_header: bool,
}

fn default_min_per_variant() -> u32 {
    1
}

/// What an A/B test compares.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AbMetric {
    Opens,
    Clicks,
}

impl AbMetric {
    pub fn as_str(self) -> &'static str {
        match self {
            AbMetric::Opens => "opens",
            AbMetric::Clicks => "clicks",
        }
    }
}

/// The longest `decide_after` accepted.
pub const MAX_DECIDE_AFTER: time::Duration = time::Duration::days(30);

/// Reads a `decide_after` duration: digits and one unit (`s`, `m`, `h`, `d`).
pub fn parse_decide_after(text: &str) -> Result<time::Duration, String> {
    let text = text.trim();
    let unit_at = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit: write e.g. \"4h\" (s, m, h or d)"))?;
    let (digits, unit) = text.split_at(unit_at);
    let count: i64 = digits
        .parse()
        .map_err(|_| format!("{text:?} must start with a whole number, e.g. \"4h\""))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "{text:?} has an unknown unit {unit:?}: use s, m, h or d"
            ));
        }
    };
    let duration = time::Duration::seconds(count.saturating_mul(seconds));
    if duration <= time::Duration::ZERO || duration > MAX_DECIDE_AFTER {
        return Err(format!("{text:?} must be more than 0 and at most 30 days"));
    }
    Ok(duration)
}

/// How many of `recipients` an A/B test sends each variant, and how many it holds back for
/// the winner: the slice is `test_fraction` of the list rounded to the nearest whole
/// recipient, split evenly (the first variants take one more when it does not divide).
pub fn ab_slice(recipients: u64, test_fraction: f64, variants: usize) -> (Vec<u64>, u64) {
    let slice = ((recipients as f64) * test_fraction).round() as u64;
    let slice = slice.min(recipients);
    let variants = variants.max(1) as u64;
    let sizes = (0..variants)
        .map(|index| slice / variants + u64::from(index < slice % variants))
        .collect();
    (sizes, recipients - slice)
}

/// The `List-Id` of a campaign: the identifier alone, or with a description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ListId {
    /// The identifier alone, e.g. `news.riverside.example`.
    Id(String),
    /// The identifier with a description.
    Named(NamedListId),
}

/// A `List-Id` with its description (`"Riverside Books news" <news.riverside.example>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NamedListId {
    /// The description mail clients may show. One line, at most 200 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The identifier, domain-like (`news.riverside.example`).
    pub id: String,
}

impl ListId {
    /// The identifier (what goes between the angle brackets).
    pub fn id(&self) -> &str {
        match self {
            ListId::Id(id) => id,
            ListId::Named(named) => &named.id,
        }
    }

    /// The description, when one is given.
    pub fn name(&self) -> Option<&str> {
        match self {
            ListId::Id(_) => None,
            ListId::Named(named) => named.name.as_deref(),
        }
    }
}

/// Whether `id` can stand in `List-Id: <…>` (RFC 2919 `list-id`, a dot-atom, kept
/// domain-like): at least two non-empty labels of ASCII letters, digits, `-` and `_`, joined by
/// dots, at most 255 characters.
pub fn is_valid_list_id(id: &str) -> bool {
    id.len() <= 255
        && id.split('.').count() >= 2
        && id.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// The slowest `max_rate` accepted, messages per second (one in about 17 minutes): a slot
/// interval in nanoseconds stays far within the schedules' 64-bit clock.
pub const MIN_MAX_RATE: f64 = 0.001;
/// The fastest `max_rate` accepted, messages per second: beyond what a deployment sends.
pub const MAX_MAX_RATE: f64 = 1_000_000.0;

/// The longest `feedback_id` accepted, in characters.
pub const MAX_FEEDBACK_ID_CHARS: usize = 64;

/// The longest display name (`from.name`, `reply_to.name`) accepted, in characters: as long
/// as a campaign name, far more than a mail client shows, and short enough that the folded
/// header stays a few lines.
pub const MAX_DISPLAY_NAME_CHARS: usize = 200;

fn default_batch_size() -> u32 {
    100
}

/// The message templates (minijinja syntax). At least one of `html` and `text` is required.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Templates {
    /// Subject line template. Must be one line.
    pub subject: String,
    /// HTML body template; values are HTML-escaped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html: Option<String>,
    /// Plain-text body template; values are inserted as they are.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// What a variable missing from a recipient does: `strict` fails that recipient with a
    /// clear reason, `lenient` renders it as an empty string.
    #[serde(default)]
    pub undefined_variables: UndefinedVariables,
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum UndefinedVariables {
    #[default]
    Strict,
    Lenient,
}

/// Retry policy for temporary failures (4xx replies, lost connections).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Delivery attempts per recipient before it is marked failed (1 to 20).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the first retry, in seconds.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff_seconds: u32,
    /// Upper bound of the wait between retries, in seconds.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_seconds: u32,
}

fn default_max_attempts() -> u32 {
    5
}
fn default_initial_backoff() -> u32 {
    60
}
fn default_max_backoff() -> u32 {
    3600
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: default_max_attempts(),
            initial_backoff_seconds: default_initial_backoff(),
            max_backoff_seconds: default_max_backoff(),
        }
    }
}

/// Engagement tracking options.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrackingOptions {
    /// Insert an open-tracking pixel in the HTML part.
    #[serde(default = "yes")]
    pub opens: bool,
    /// Rewrite links in the HTML part to go through the click redirect.
    #[serde(default = "yes")]
    pub clicks: bool,
    /// Privacy: record opens and clicks without saying who (no per-recipient rows; the
    /// links carry no recipient either). Totals stay exact; unique counts are not known.
    #[serde(default)]
    pub aggregate_only: bool,
}

fn yes() -> bool {
    true
}

impl Default for TrackingOptions {
    fn default() -> Self {
        TrackingOptions {
            opens: true,
            clicks: true,
            aggregate_only: false,
        }
    }
}

/// Bounds that come from configuration rather than from the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// MAX_BATCH_SIZE: the largest `batch_size` a campaign may ask for.
    pub max_batch_size: u32,
    /// The largest template (each of subject, html, text), in bytes.
    pub max_template_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch_size: 1000,
            max_template_bytes: 512 * 1024,
        }
    }
}

/// One thing wrong with a document, located by its field path (`templates.subject`,
/// `recipients[3].email`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Why a campaign document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// Not JSON at all (truncated, stray characters): nothing could be read.
    #[error("malformed JSON at line {line}, column {column}: {message}")]
    Malformed {
        line: usize,
        column: usize,
        message: String,
    },
    /// Valid JSON that is not a valid campaign; every problem found is listed.
    #[error("{}", join_problems(.0))]
    Invalid(Vec<Problem>),
}

fn join_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl ValidationError {
    /// The problems to report, one per field; a malformed document is one problem.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ValidationError::Malformed { .. } => vec![Problem {
                field: String::new(),
                message: self.to_string(),
            }],
            ValidationError::Invalid(problems) => problems.clone(),
        }
    }
}

impl CampaignDocument {
    /// Reads and validates a campaign document: the only way from bytes to a campaign.
    pub fn from_json(bytes: &[u8], limits: &Limits) -> Result<CampaignDocument, ValidationError> {
        // serde would also accept a struct written as an array, and then complain about its
        // length; a campaign is an object, so say that instead.
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|b| *b != b'{') {
            let value: serde_json::Value = parse_json(bytes)?;
            return Err(ValidationError::Invalid(vec![Problem {
                field: String::new(),
                message: format!(
                    "invalid type: a campaign must be a JSON object, not {}",
                    crate::recipient::json_type(&value)
                ),
            }]));
        }
        let document: CampaignDocument = parse_json(bytes)?;
        document.validate(limits)?;
        Ok(document)
    }

    /// Checks what types alone cannot: lengths, ranges, single-line headers.
    pub fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        let mut problems = Vec::new();
        let mut problem = |field: &str, message: String| {
            problems.push(Problem {
                field: field.to_string(),
                message,
            })
        };

        if self.name.trim().is_empty() {
            problem("name", "must not be empty".into());
        } else if self.name.chars().count() > 200 {
            problem("name", "must be at most 200 characters".into());
        }
        if self.name.chars().any(char::is_control) {
            problem("name", "must be one line without control characters".into());
        }
        for (field, mailbox) in [
            ("from", Some(&self.from)),
            ("reply_to", self.reply_to.as_ref()),
        ] {
            let Some(name) = mailbox.and_then(|m| m.name.as_deref()) else {
                continue;
            };
            if name.chars().any(char::is_control) {
                problem(
                    &format!("{field}.name"),
                    "must be one line: CR, LF and other control characters are not allowed in a header".into(),
                );
            }
            let length = name.chars().count();
            if length > MAX_DISPLAY_NAME_CHARS {
                problem(
                    &format!("{field}.name"),
                    format!(
                        "is {length} characters; a display name may have at most {MAX_DISPLAY_NAME_CHARS}"
                    ),
                );
            }
        }

        if let Some(list_id) = &self.list_id {
            let field = match list_id {
                ListId::Id(_) => "list_id",
                ListId::Named(_) => "list_id.id",
            };
            if !is_valid_list_id(list_id.id()) {
                problem(
                    field,
                    "must be domain-like, e.g. news.riverside.example: at least two labels of letters, digits, `-` and `_` joined by dots, at most 255 characters".into(),
                );
            }
            if let Some(name) = list_id.name() {
                if name.chars().any(char::is_control) {
                    problem(
                        "list_id.name",
                        "must be one line: CR, LF and other control characters are not allowed in a header".into(),
                    );
                }
                if name.chars().count() > MAX_DISPLAY_NAME_CHARS {
                    problem(
                        "list_id.name",
                        format!("must be at most {MAX_DISPLAY_NAME_CHARS} characters"),
                    );
                }
            }
        }
        if let Some(feedback_id) = &self.feedback_id {
            let allowed = |c: char| c.is_ascii_alphanumeric() || ".-_".contains(c);
            if feedback_id.is_empty()
                || feedback_id.chars().count() > MAX_FEEDBACK_ID_CHARS
                || !feedback_id.chars().all(allowed)
            {
                problem(
                    "feedback_id",
                    format!(
                        "must be 1 to {MAX_FEEDBACK_ID_CHARS} letters, digits, `.`, `_` and `-` (it ends the Feedback-ID header, whose fields are separated by colons)"
                    ),
                );
            }
        }

        if let Some(rate) = self.max_rate
            && !(MIN_MAX_RATE..=MAX_MAX_RATE).contains(&rate)
        {
            problem(
                "max_rate",
                format!(
                    "must be a number of messages per second from {MIN_MAX_RATE} to {MAX_MAX_RATE}, not {rate}"
                ),
            );
        }

        let templates = &self.templates;
        if templates.subject.trim().is_empty() {
            problem("templates.subject", "must not be empty".into());
        }
        if templates.subject.contains(['\r', '\n']) {
            problem(
                "templates.subject",
                "must be one line: CR and LF are not allowed in a header".into(),
            );
        }
        let html_empty = templates
            .html
            .as_deref()
            .is_none_or(|t| t.trim().is_empty());
        let text_empty = templates
            .text
            .as_deref()
            .is_none_or(|t| t.trim().is_empty());
        if html_empty && text_empty {
            problem(
                "templates",
                "needs a non-empty `html` or `text` template (or both)".into(),
            );
        }
        for (field, template) in [
            ("templates.subject", Some(&templates.subject)),
            ("templates.html", templates.html.as_ref()),
            ("templates.text", templates.text.as_ref()),
        ] {
            if let Some(template) = template
                && template.len() > limits.max_template_bytes
            {
                problem(
                    field,
                    format!(
                        "is {} bytes; the limit is {} bytes",
                        template.len(),
                        limits.max_template_bytes
                    ),
                );
            }
        }

        if self.batch_size == 0 || self.batch_size > limits.max_batch_size {
            problem(
                "batch_size",
                format!(
                    "must be between 1 and MAX_BATCH_SIZE ({}), got {}",
                    limits.max_batch_size, self.batch_size
                ),
            );
        }
        let retry = &self.retry;
        if !(1..=20).contains(&retry.max_attempts) {
            problem(
                "retry.max_attempts",
                format!("must be between 1 and 20, got {}", retry.max_attempts),
            );
        }
        if retry.initial_backoff_seconds == 0 {
            problem("retry.initial_backoff_seconds", "must be at least 1".into());
        }
        if retry.max_backoff_seconds < retry.initial_backoff_seconds {
            problem(
                "retry.max_backoff_seconds",
                "must not be smaller than retry.initial_backoff_seconds".into(),
            );
        }
        if let Some(local) = &self.local_send_time {
            for (field, message) in local.problems() {
                problem(field, message);
            }
        }
        for (field, message) in self.ab_problems(limits) {
            problem(&field, message);
        }

        if problems.is_empty() {
            Ok(())
        } else {
            Err(ValidationError::Invalid(problems))
        }
    }

    /// What is wrong with the A/B test: variants and `ab_test` given together, 2 to 5
    /// variants with unique names, templates within the limits, a metric that is tracked.
    fn ab_problems(&self, limits: &Limits) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        match (self.variants.is_empty(), &self.ab_test) {
            (true, None) => return problems,
            (false, None) => problems.push((
                "ab_test".into(),
                "is required with `variants`: give test_fraction, metric and decide_after".into(),
            )),
            (true, Some(_)) => problems.push((
                "variants".into(),
                format!("an A/B test needs {MIN_VARIANTS} to {MAX_VARIANTS} variants"),
            )),
            (false, Some(_)) => {}
        }
        if !self.variants.is_empty()
            && !(MIN_VARIANTS..=MAX_VARIANTS).contains(&self.variants.len())
        {
            problems.push((
                "variants".into(),
                format!(
                    "has {} variants; an A/B test needs {MIN_VARIANTS} to {MAX_VARIANTS}",
                    self.variants.len()
                ),
            ));
        }
        let html_base = self.templates.html.is_some();
        let text_base = self.templates.text.is_some();
        for (index, variant) in self.variants.iter().enumerate() {
            let at = |field: &str| format!("variants[{index}].{field}");
            let name_ok = !variant.name.is_empty()
                && variant.name.len() <= 32
                && variant
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !name_ok {
                problems.push((
                    at("name"),
                    "must be 1 to 32 letters, digits, `-` and `_`".into(),
                ));
            }
            if self.variants[..index]
                .iter()
                .any(|v| v.name == variant.name)
            {
                problems.push((
                    at("name"),
                    format!(
                        "{:?} names two variants; names must be unique",
                        variant.name
                    ),
                ));
            }
            if let Some(subject) = &variant.subject {
                if subject.trim().is_empty() {
                    problems.push((at("subject"), "must not be empty".into()));
                }
                if subject.contains(['\r', '\n']) {
                    problems.push((
                        at("subject"),
                        "must be one line: CR and LF are not allowed in a header".into(),
                    ));
                }
            }
            // A variant changes a body the campaign has; adding a part the others lack
            // would test the message's structure, not its content.
            for (field, given, base) in [
                ("html", variant.html.is_some(), html_base),
                ("text", variant.text.is_some(), text_base),
            ] {
                if given && !base {
                    problems.push((
                        at(field),
                        format!("overrides templates.{field}, which the campaign does not have"),
                    ));
                }
            }
            for (field, template) in [
                ("subject", variant.subject.as_ref()),
                ("html", variant.html.as_ref()),
                ("text", variant.text.as_ref()),
            ] {
                if let Some(template) = template
                    && template.len() > limits.max_template_bytes
                {
                    problems.push((
                        at(field),
                        format!(
                            "is {} bytes; the limit is {} bytes",
                            template.len(),
                            limits.max_template_bytes
                        ),
                    ));
                }
            }
            if let Some(name) = variant.from.as_ref().and_then(|m| m.name.as_deref())
                && (name.chars().any(char::is_control)
                    || name.chars().count() > MAX_DISPLAY_NAME_CHARS)
            {
                problems.push((
                    at("from.name"),
                    format!(
                        "must be one line of at most {MAX_DISPLAY_NAME_CHARS} characters without control characters"
                    ),
                ));
            }
        }
        if let Some(test) = &self.ab_test {
            if !(test.test_fraction > 0.0 && test.test_fraction < 1.0) {
                problems.push((
                    "ab_test.test_fraction".into(),
                    format!(
                        "must be more than 0 and less than 1 (0.2 tests on a fifth of the list), got {}",
                        test.test_fraction
                    ),
                ));
            }
            if let Err(message) = parse_decide_after(&test.decide_after) {
                problems.push(("ab_test.decide_after".into(), message));
            }
            if test.min_per_variant == 0 {
                problems.push((
                    "ab_test.min_per_variant".into(),
                    "must be at least 1".into(),
                ));
            }
            let tracked = match test.metric {
                AbMetric::Opens => self.tracking.opens && html_base,
                AbMetric::Clicks => self.tracking.clicks && html_base,
            };
            if !tracked {
                problems.push((
                    "ab_test.metric".into(),
                    format!(
                        "is {}, but the campaign does not track them: it needs an html template and tracking.{} on",
                        test.metric.as_str(),
                        test.metric.as_str()
                    ),
                ));
            }
        }
        problems
    }

    /// For an A/B test, the problem with its slice for `recipients` recipients: a variant
    /// would get fewer than `min_per_variant`, or nobody would be left for the winner.
    pub fn ab_slice_problem(&self, recipients: u64) -> Option<Problem> {
        let test = self.ab_test.as_ref()?;
        let (sizes, rest) = ab_slice(recipients, test.test_fraction, self.variants.len());
        let smallest = sizes.iter().copied().min().unwrap_or(0);
        if smallest < u64::from(test.min_per_variant) {
            return Some(Problem {
                field: "ab_test.test_fraction".into(),
                message: format!(
                    "gives a variant {smallest} of the {recipients} recipients, fewer than min_per_variant ({})",
                    test.min_per_variant
                ),
            });
        }
        if rest == 0 {
            return Some(Problem {
                field: "ab_test.test_fraction".into(),
                message: format!("leaves none of the {recipients} recipients for the winner"),
            });
        }
        None
    }

    /// The document as variant `index` sends it: the campaign with the variant's subject,
    /// bodies and sender in place of its own. `None` without such a variant.
    pub fn variant_document(&self, index: usize) -> Option<CampaignDocument> {
        let variant = self.variants.get(index)?;
        let mut document = self.without_recipients();
        if let Some(subject) = &variant.subject {
            document.templates.subject = subject.clone();
        }
        if let Some(html) = &variant.html {
            document.templates.html = Some(html.clone());
        }
        if let Some(text) = &variant.text {
            document.templates.text = Some(text.clone());
        }
        if let Some(from) = &variant.from {
            document.from = from.clone();
        }
        Some(document)
    }

    /// Checks what depends on the moment a campaign is created: its `scheduled_at` lies in the
    /// future and within [`crate::timestamp::SCHEDULE_HORIZON`] (the rule `POST …/schedule`
    /// applies). Kept out of [`CampaignDocument::validate`] so stored documents read back
    /// whatever the time.
    pub fn check_schedule(&self, now: OffsetDateTime) -> Result<(), ValidationError> {
        match self.scheduled_at {
            Some(at) => crate::timestamp::check_schedule(at, now).map_err(|message| {
                ValidationError::Invalid(vec![Problem {
                    field: "scheduled_at".into(),
                    message: format!("{} {message}", describe(at)),
                }])
            }),
            None => Ok(()),
        }
    }

    /// The document without its inline recipients: what is stored with the campaign (the
    /// recipients live in their own rows). `scheduled_at` is cut to the microsecond, as the
    /// stores keep it, so the stored document reads back under the rules it was written by.
    pub fn without_recipients(&self) -> CampaignDocument {
        CampaignDocument {
            recipients: Vec::new(),
            scheduled_at: self.scheduled_at.map(crate::timestamp::to_microsecond),
            ..self.clone()
        }
    }
}

/// Deserializes JSON, telling a malformed document from one of the wrong shape and naming the
/// field path of the latter.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ValidationError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        // The document root prints as "."; report it as no field at all.
        let field = err.path().to_string().trim_start_matches('.').to_string();
        classify(field, err.into_inner())
    })?;
    // Trailing characters after a complete document are as malformed as a truncated one.
    deserializer
        .end()
        .map_err(|err| classify(String::new(), err))?;
    Ok(value)
}

fn classify(field: String, err: serde_json::Error) -> ValidationError {
    match err.classify() {
        serde_json::error::Category::Data => ValidationError::Invalid(vec![Problem {
            field,
            message: strip_position(&err.to_string()),
        }]),
        _ => ValidationError::Malformed {
            line: err.line(),
            column: err.column(),
            message: strip_position(&err.to_string()),
        },
    }
}

/// serde_json appends " at line L column C" to its messages; we report position separately.
pub(crate) fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_string(),
        None => message.to_string(),
    }
}

/// A time as RFC 3339 for a message, or as `time` writes it should it be unwritable.
fn describe(at: OffsetDateTime) -> String {
    crate::timestamp::format(at).unwrap_or_else(|_| at.to_string())
}
