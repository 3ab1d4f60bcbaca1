//! Recipient data as template values, and the filters users expect beyond minijinja's own.

use minijinja::value::{Enumerator, Kwargs, Object, ObjectExt, Value};
use minijinja::{Environment, Error, ErrorKind, State};
use serde_json::{Map, Value as Json};
use std::collections::HashSet;
use std::sync::Arc;

/// Converts JSON directly (not through serde): cheaper per recipient, and it keeps numbers as
/// integers where they are integers so `{{ count }}` prints `3`, not `3.0`.
pub(crate) fn from_json(value: &Json) -> Value {
    match value {
        Json::Null => Value::from(()),
        Json::Bool(b) => Value::from(*b),
        Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Value::from(i),
            (None, Some(u), _) => Value::from(u),
            (None, None, Some(f)) => Value::from(f),
            (None, None, None) => Value::from(n.to_string()),
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => items.iter().map(from_json).collect(),
        Json::Object(map) => from_json_map(map),
    }
}

/// An object's entries as template values, sorted by key: the order a `BTreeMap` gave them
/// (for `items`, `dictsort` and printing), without its nodes and a `String` per key (keys of
/// up to 22 bytes are stored inline in their `Value`). Built for every recipient, so the
/// allocations count.
#[derive(Debug)]
pub(crate) struct Fields(Vec<(Value, Value)>);

impl Fields {
    /// `entries` must not repeat a key.
    fn new(mut entries: Vec<(Value, Value)>) -> Fields {
        entries.sort_unstable_by(|(a, _), (b, _)| key_str(a).cmp(key_str(b)));
        Fields(entries)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&Value> {
        // Most objects are a record's few fields: a scan that compares lengths first beats
        // a binary search's ordered comparisons there.
        if self.0.len() <= 16 {
            return self
                .0
                .iter()
                .find(|(entry, _)| entry.as_str() == Some(key))
                .map(|(_, value)| value);
        }
        self.0
            .binary_search_by(|(entry, _)| key_str(entry).cmp(key))
            .ok()
            .map(|index| &self.0[index].1)
    }
}

fn key_str(key: &Value) -> &str {
    key.as_str().unwrap_or_default()
}

impl Object for Fields {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.get(key.as_str()?).cloned()
    }

    fn get_value_by_str(self: &Arc<Self>, key: &str) -> Option<Value> {
        self.get(key).cloned()
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        self.mapped_rev_key_value_enumerator(|this| {
            Box::new(
                this.0
                    .iter()
                    .map(|(key, value)| (key.clone(), value.clone())),
            )
        })
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        Some(self.0.len())
    }
}

/// A recipient's fields named in `only` (all when `None`) and its `email`, which replaces a
/// field of that name.
pub(crate) fn recipient_fields(
    map: &Map<String, Json>,
    only: Option<&HashSet<String>>,
    email: Value,
) -> Fields {
    let mut entries: Vec<(Value, Value)> = map
        .iter()
        .filter(|(key, _)| *key != "email" && only.is_none_or(|only| only.contains(*key)))
        .map(|(key, value)| (Value::from(key.as_str()), from_json(value)))
        .collect();
    entries.push((Value::from("email"), email));
    Fields::new(entries)
}

pub(crate) fn from_json_map(map: &Map<String, Json>) -> Value {
    let entries = map
        .iter()
        .map(|(key, value)| (Value::from(key.as_str()), from_json(value)))
        .collect();
    Value::from_object(Fields::new(entries))
}

/// Entries with distinct keys, as a template object.
pub(crate) fn object<const N: usize>(pairs: [(&str, Value); N]) -> Fields {
    Fields::new(
        pairs
            .into_iter()
            .map(|(key, value)| (Value::from(key), value))
            .collect(),
    )
}

pub(crate) fn add_filters(env: &mut Environment<'static>) {
    env.add_filter("number", number);
    env.add_filter("currency", currency);
    env.add_filter("date", date);
    // Replaces minijinja-contrib's own, whose `length + leeway` overflows on huge arguments.
    env.add_filter("truncate", truncate);
}

/// `number(decimals)`: more digits than an f64 carries would only print noise.
pub const MAX_DECIMALS: i64 = 20;
/// The `thousands` and `point` separators of `number` and `currency`, in characters.
pub const MAX_SEPARATOR_CHARS: usize = 8;
/// A `date` format string, in characters.
pub const MAX_DATE_FORMAT_CHARS: usize = 256;
/// `truncate`'s `length` and `leeway`.
pub const MAX_TRUNCATE_LENGTH: i64 = 1_000_000;
/// How much of a bad value an error message quotes, in characters.
const QUOTED_CHARS: usize = 40;

/// One argument of a filter the service provides, and what it must be. The filter checks it
/// on every call; campaign creation checks it where the template gives it as a literal, so a
/// value that can never work is refused before anything is stored.
pub(crate) struct Argument {
    pub filter: &'static str,
    /// Its place among the positional arguments after the filtered value (0 = the first).
    pub position: Option<usize>,
    /// Its name as a keyword argument.
    pub keyword: Option<&'static str>,
    pub check: fn(&Value) -> Result<(), String>,
}

pub(crate) const ARGUMENTS: &[Argument] = &[
    Argument {
        filter: "number",
        position: Some(0),
        keyword: None,
        check: |v| decimals_arg(v).map(drop),
    },
    Argument {
        filter: "number",
        position: None,
        keyword: Some("thousands"),
        check: |v| separator_arg("thousands", v).map(drop),
    },
    Argument {
        filter: "number",
        position: None,
        keyword: Some("point"),
        check: |v| separator_arg("point", v).map(drop),
    },
    Argument {
        filter: "currency",
        position: Some(0),
        keyword: None,
        check: |v| currency_code_arg(v).map(drop),
    },
    Argument {
        filter: "currency",
        position: None,
        keyword: Some("thousands"),
        check: |v| separator_arg("thousands", v).map(drop),
    },
    Argument {
        filter: "currency",
        position: None,
        keyword: Some("point"),
        check: |v| separator_arg("point", v).map(drop),
    },
    Argument {
        filter: "date",
        position: Some(0),
        keyword: None,
        check: |v| date_format_arg(v).map(drop),
    },
    Argument {
        filter: "truncate",
        position: None,
        keyword: Some("length"),
        check: |v| truncate_arg("length", v).map(drop),
    },
    Argument {
        filter: "truncate",
        position: None,
        keyword: Some("leeway"),
        check: |v| truncate_arg("leeway", v).map(drop),
    },
];

/// The first literal argument of a service filter that its check refuses: the byte offset
/// where the argument starts in `source`, and why. Arguments that are expressions are checked
/// when the filter runs. A source the lexer refuses is left to the template compiler.
pub(crate) fn refused_literal_argument(
    source: &str,
    syntax: &minijinja::syntax::SyntaxConfig,
) -> Option<(usize, String)> {
    use minijinja::machinery::{Token, tokenize};
    let tokens: Vec<(Token<'_>, minijinja::machinery::Span)> =
        tokenize(source, false, syntax.clone())
            .collect::<Result<_, _>>()
            .ok()?;
    for (index, (token, _)) in tokens.iter().enumerate() {
        // `value | name(` or `{% filter name(`.
        let name_at = match (token, tokens.get(index + 1), tokens.get(index + 2)) {
            (Token::Pipe, Some((Token::Ident(_), _)), _) => index + 1,
            (Token::BlockStart, Some((Token::Ident("filter"), _)), Some((Token::Ident(_), _))) => {
                index + 2
            }
            _ => continue,
        };
        let Some((Token::Ident(filter), _)) = tokens.get(name_at) else {
            continue;
        };
        if !ARGUMENTS.iter().any(|a| a.filter == *filter) {
            continue;
        }
        if !matches!(tokens.get(name_at + 1), Some((Token::ParenOpen, _))) {
            continue;
        }
        for (position, keyword, argument) in call_arguments(&tokens[name_at + 2..]) {
            let Some(value) = literal(argument) else {
                continue;
            };
            let rule = ARGUMENTS.iter().find(|a| {
                a.filter == *filter
                    && match keyword {
                        Some(keyword) => a.keyword == Some(keyword),
                        None => a.position == Some(position),
                    }
            });
            if let Some(rule) = rule
                && let Err(message) = (rule.check)(&value)
            {
                let offset = argument.first().map_or(0, |(_, span)| span.start_offset);
                return Some((offset as usize, format!("{filter}: {message}")));
            }
        }
    }
    None
}

type Spanned<'a> = (minijinja::machinery::Token<'a>, minijinja::machinery::Span);

/// The arguments of a call whose `(` has just been read, up to its `)`: each with its
/// position among the positional ones, its keyword when it has one, and its tokens.
fn call_arguments<'t, 'a>(
    tokens: &'t [Spanned<'a>],
) -> Vec<(usize, Option<&'a str>, &'t [Spanned<'a>])> {
    use minijinja::machinery::Token;
    let mut arguments = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut position = 0;
    let mut push = |slice: &'t [Spanned<'a>]| {
        if slice.is_empty() {
            return;
        }
        match slice {
            [(Token::Ident(keyword), _), (Token::Assign, _), rest @ ..] => {
                arguments.push((0, Some(*keyword), rest))
            }
            _ => {
                arguments.push((position, None, slice));
                position += 1;
            }
        }
    };
    for (index, (token, _)) in tokens.iter().enumerate() {
        match token {
            Token::ParenOpen | Token::BracketOpen | Token::BraceOpen => depth += 1,
            Token::ParenClose | Token::BracketClose | Token::BraceClose if depth > 0 => depth -= 1,
            Token::ParenClose => {
                push(&tokens[start..index]);
                break;
            }
            Token::Comma if depth == 0 => {
                push(&tokens[start..index]);
                start = index + 1;
            }
            Token::VariableEnd | Token::BlockEnd => break,
            _ => {}
        }
    }
    arguments
}

/// The value of an argument written as one literal (`2`, `-1`, `1e400`, `"EUR"`).
fn literal(tokens: &[Spanned<'_>]) -> Option<Value> {
    use minijinja::machinery::Token;
    let (negative, rest) = match tokens {
        [(Token::Minus, _), rest @ ..] => (true, rest),
        rest => (false, rest),
    };
    let value = match rest {
        [(Token::Int(n), _)] => match i64::try_from(*n) {
            Ok(n) if negative => Value::from(-n),
            Ok(n) => Value::from(n),
            Err(_) if negative => Value::from(-(*n as i128)),
            Err(_) => Value::from(*n),
        },
        [(Token::Int128(n), _)] => match i128::try_from(**n) {
            Ok(n) if negative => Value::from(-n),
            Ok(n) => Value::from(n),
            Err(_) => Value::from(**n),
        },
        [(Token::Float(f), _)] => Value::from(if negative { -*f } else { *f }),
        [(Token::Str(s), _)] if !negative => Value::from(*s),
        [(Token::String(s), _)] if !negative => Value::from(&**s),
        _ => return None,
    };
    Some(value)
}

/// `{{ total | number }}` → `1,234,567`; `{{ x | number(2) }}` → `1,234.50`;
/// `{{ x | number(2, thousands=".", point=",") }}` → `1.234,50`. Numeric strings (as CSV
/// fields always are) are accepted.
fn number(value: Value, decimals: Option<Value>, kwargs: Kwargs) -> Result<String, Error> {
    let (amount, decimals) = number_parts(&value, decimals.as_ref())?;
    let (thousands, point) = separators("number", &kwargs)?;
    kwargs.assert_all_used()?;
    let mut out = String::with_capacity(16);
    group(&mut out, amount, decimals, sep(&thousands), sep(&point));
    Ok(out)
}

/// `number` without keyword arguments (the default separators), for the compiled evaluator:
/// the same checks in the same order, so the same result or error.
pub(crate) fn number_plain(value: &Value, decimals: Option<&Value>) -> Result<String, Error> {
    let mut out = String::with_capacity(16);
    number_plain_into(&mut out, value, decimals)?;
    Ok(out)
}

/// [`number_plain`] appended to `out` (nothing is appended on an error). The text is digits,
/// `,`, `.` and `-`: nothing HTML escaping would change.
pub(crate) fn number_plain_into(
    out: &mut String,
    value: &Value,
    decimals: Option<&Value>,
) -> Result<(), Error> {
    let (amount, decimals) = number_parts(value, decimals)?;
    group(out, amount, decimals, ",", ".");
    Ok(())
}

/// The amount and the decimals `number` prints it with.
fn number_parts(value: &Value, decimals: Option<&Value>) -> Result<(f64, usize), Error> {
    let (amount, is_integer) = to_number(value)?;
    let decimals = match decimals {
        Some(decimals) => decimals_arg(decimals).map_err(|m| invalid("number", m))?,
        None if is_integer => 0,
        None => 2,
    };
    Ok((amount, decimals))
}

/// `{{ price | currency("EUR") }}` → `€12.50`. Symbols for common codes, the ISO code itself
/// otherwise (`CHF 12.50`); yen and won have no minor unit. Same `thousands`/`point` kwargs as
/// `number`.
fn currency(value: Value, code: Option<Value>, kwargs: Kwargs) -> Result<String, Error> {
    let (amount, code) = currency_parts(&value, code.as_ref())?;
    let (thousands, point) = separators("currency", &kwargs)?;
    kwargs.assert_all_used()?;
    Ok(currency_text(amount, code, sep(&thousands), sep(&point)))
}

/// `currency` without keyword arguments (the default separators), for the compiled
/// evaluator: the same checks in the same order, so the same result or error.
pub(crate) fn currency_plain(value: &Value, code: Option<&Value>) -> Result<String, Error> {
    let (amount, code) = currency_parts(value, code)?;
    Ok(currency_text(amount, code, ",", "."))
}

/// [`currency_plain`] appended to `out` (nothing is appended on an error). The text is a
/// symbol from the table below or three ASCII letters, digits, `,`, `.`, `-` and a space:
/// nothing HTML escaping would change.
pub(crate) fn currency_plain_into(
    out: &mut String,
    value: &Value,
    code: Option<&Value>,
) -> Result<(), Error> {
    let (amount, code) = currency_parts(value, code)?;
    write_currency(out, amount, code, ",", ".");
    Ok(())
}

/// The amount and the upper-case ISO code `currency` prints.
fn currency_parts(value: &Value, code: Option<&Value>) -> Result<(f64, [u8; 3]), Error> {
    let (amount, _) = to_number(value)?;
    let code = match code {
        Some(code) => currency_code_arg(code).map_err(|m| invalid("currency", m))?,
        None => *b"USD",
    };
    Ok((amount, code))
}

fn currency_text(amount: f64, code: [u8; 3], thousands: &str, point: &str) -> String {
    let mut out = String::with_capacity(16);
    write_currency(&mut out, amount, code, thousands, point);
    out
}

fn write_currency(out: &mut String, amount: f64, code: [u8; 3], thousands: &str, point: &str) {
    // The symbol, whether a space follows it, and the minor unit's digits.
    let (symbol, spaced, decimals) = match &code {
        b"USD" | b"CAD" | b"AUD" | b"NZD" => ("$", false, 2),
        b"EUR" => ("€", false, 2),
        b"GBP" => ("£", false, 2),
        b"JPY" => ("¥", false, 0),
        b"KRW" => ("₩", false, 0),
        b"INR" => ("₹", false, 2),
        // Three ASCII letters, as currency_code_arg checked.
        other => (std::str::from_utf8(other).unwrap_or_default(), true, 2),
    };
    if amount < 0.0 {
        out.push('-');
    }
    out.push_str(symbol);
    if spaced {
        out.push(' ');
    }
    group(out, amount.abs(), decimals, thousands, point);
}

/// `{{ signup | date }}`, `{{ signup | date("%e %B %Y") }}` (strftime, or `short`, `medium`,
/// `long`, `full`). Accepts RFC 3339 / ISO dates and Unix timestamps. A positional front end
/// for minijinja-contrib's `dateformat`, whose format is keyword-only.
fn date(state: &State, value: Value, format: Option<Value>) -> Result<String, Error> {
    let kwargs = match format {
        Some(format) => {
            let format = date_format_arg(&format).map_err(|m| invalid("date", m))?;
            Kwargs::from_iter([("format", Value::from(format))])
        }
        None => Kwargs::from_iter(std::iter::empty::<(&str, Value)>()),
    };
    minijinja_contrib::filters::dateformat(state, value, kwargs)
}

/// minijinja-contrib's `truncate`, its `length` and `leeway` bounded first.
fn truncate(state: &mut State, value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    for keyword in ["length", "leeway"] {
        if let Some(given) = kwargs.peek::<Option<Value>>(keyword)? {
            truncate_arg(keyword, &given).map_err(|m| invalid("truncate", m))?;
        }
    }
    minijinja_contrib::filters::truncate(state, value, kwargs)
}

fn invalid(filter: &str, message: String) -> Error {
    Error::new(ErrorKind::InvalidOperation, format!("{filter}: {message}"))
}

/// A value as an error message shows it: quoted when a string, and cut short.
fn quoted(value: &Value) -> String {
    let shown = match value.as_str() {
        Some(s) => format!("{s:?}"),
        None => value.to_string(),
    };
    match shown.char_indices().nth(QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", &shown[..cut]),
        None => shown,
    }
}

/// A whole number in `0..=max`: an integer, a float such as `2.0`, or a string of digits (as
/// CSV fields always are).
fn bounded_integer(value: &Value, max: i64) -> Option<i64> {
    let n = match value.as_str() {
        Some(s) => s.trim().parse::<i64>().ok()?,
        None => i64::try_from(value.clone()).ok().or_else(|| {
            f64::try_from(value.clone())
                .ok()
                .filter(|f| f.fract() == 0.0 && (0.0..=max as f64).contains(f))
                .map(|f| f as i64)
        })?,
    };
    (0..=max).contains(&n).then_some(n)
}

fn decimals_arg(value: &Value) -> Result<usize, String> {
    bounded_integer(value, MAX_DECIMALS)
        .map(|n| n as usize)
        .ok_or_else(|| {
            format!(
                "decimals must be a whole number from 0 to {MAX_DECIMALS}, not {}",
                quoted(value)
            )
        })
}

fn truncate_arg(name: &str, value: &Value) -> Result<i64, String> {
    bounded_integer(value, MAX_TRUNCATE_LENGTH).ok_or_else(|| {
        format!(
            "{name} must be a whole number from 0 to {MAX_TRUNCATE_LENGTH}, not {}",
            quoted(value)
        )
    })
}

fn separator_arg(name: &str, value: &Value) -> Result<String, String> {
    match value.as_str() {
        Some(s) if s.chars().count() <= MAX_SEPARATOR_CHARS => Ok(s.to_string()),
        _ => Err(format!(
            "{name} must be a string of at most {MAX_SEPARATOR_CHARS} characters, not {}",
            quoted(value)
        )),
    }
}

/// `thousands` and `point` (checked strings; short ones are stored inline, no allocation).
fn separators(filter: &str, kwargs: &Kwargs) -> Result<(Value, Value), Error> {
    // The usual call gives neither: skip the look-ups, which record each name as used.
    if kwargs.args().next().is_none() {
        return Ok((Value::from(","), Value::from(".")));
    }
    let pick = |name: &str, default: &'static str| -> Result<Value, Error> {
        match kwargs.get::<Option<Value>>(name)? {
            Some(given) => separator_arg(name, &given)
                .map(|_| given)
                .map_err(|m| invalid(filter, m)),
            None => Ok(Value::from(default)),
        }
    };
    Ok((pick("thousands", ",")?, pick("point", ".")?))
}

fn sep(value: &Value) -> &str {
    value.as_str().unwrap_or_default()
}

/// An ISO 4217 code: three letters, any case.
fn currency_code_arg(value: &Value) -> Result<[u8; 3], String> {
    value.as_str().and_then(currency_code).ok_or_else(|| {
        format!(
            "the currency must be a three-letter ISO 4217 code such as \"EUR\", not {}",
            quoted(value)
        )
    })
}

/// A currency code's text upper-cased; `None` unless it is three ASCII letters.
fn currency_code(code: &str) -> Option<[u8; 3]> {
    match code.as_bytes() {
        &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_alphabetic) => Some([
            a.to_ascii_uppercase(),
            b.to_ascii_uppercase(),
            c.to_ascii_uppercase(),
        ]),
        _ => None,
    }
}

fn date_format_arg(value: &Value) -> Result<String, String> {
    match value.as_str() {
        Some(format) if format.chars().count() <= MAX_DATE_FORMAT_CHARS => Ok(format.to_string()),
        _ => Err(format!(
            "the format must be a string of at most {MAX_DATE_FORMAT_CHARS} characters, not {}",
            quoted(value)
        )),
    }
}

fn to_number(value: &Value) -> Result<(f64, bool), Error> {
    let (amount, is_integer) = if let Some(s) = value.as_str() {
        let s = s.trim();
        let amount = s.parse::<f64>().map_err(|_| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("{} is not a number", quoted(value)),
            )
        })?;
        (amount, !s.contains(['.', 'e', 'E']))
    } else if value.is_number() && !value.is_integer() {
        float_amount(f64::try_from(value.clone())?)
    } else if let Ok(i) = i64::try_from(value.clone()) {
        // Precision loss above 2^53 only affects the digits shown, never memory safety.
        (i as f64, true)
    } else {
        let f = f64::try_from(value.clone()).map_err(|_| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("{} is not a number", quoted(value)),
            )
        })?;
        (f, false)
    };
    if !amount.is_finite() {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("{} is not a finite number", quoted(value)),
        ));
    }
    Ok((amount, is_integer))
}

/// A float's amount and whether it counts as an integer: whole ones do, as
/// `i64::try_from` would take them, without building (and dropping) that conversion's error
/// for every price.
fn float_amount(f: f64) -> (f64, bool) {
    let whole = f as i64;
    if whole as f64 == f {
        (whole as f64, true)
    } else {
        (f, false)
    }
}

/// A number as the compiled evaluator holds it, formatted without making a minijinja value
/// of it (and of the currency code) first.
#[derive(Debug, Clone, Copy)]
pub(crate) enum PlanNumber {
    Int(i64),
    Float(f64),
}

impl PlanNumber {
    /// [`to_number`]'s amount and integer flag for the value minijinja would be given;
    /// `None` where it fails (a float that is not finite).
    fn amount(self) -> Option<(f64, bool)> {
        let (amount, is_integer) = match self {
            // Precision loss above 2^53 only affects the digits shown.
            PlanNumber::Int(i) => (i as f64, true),
            PlanNumber::Float(f) => float_amount(f),
        };
        amount.is_finite().then_some((amount, is_integer))
    }
}

/// [`number_plain_into`] without decimals, for a number the evaluator holds; `None` where
/// that gives an error (nothing is appended then).
pub(crate) fn plan_number_into(out: &mut String, number: PlanNumber) -> Option<()> {
    let (amount, is_integer) = number.amount()?;
    group(out, amount, if is_integer { 0 } else { 2 }, ",", ".");
    Some(())
}

/// [`currency_plain_into`] for a number the evaluator holds and the code's text (`None`:
/// no code given); `None` where that gives an error (nothing is appended then).
pub(crate) fn plan_currency_into(
    out: &mut String,
    number: PlanNumber,
    code: Option<&str>,
) -> Option<()> {
    let (amount, _) = number.amount()?;
    let code = match code {
        Some(code) => currency_code(code)?,
        None => *b"USD",
    };
    write_currency(out, amount, code, ",", ".");
    Some(())
}

/// What `write!(out, "{:.*}", decimals, amount)` writes for a finite, non-negative `amount`:
/// the exact binary value rounded half to even. See [`fixed_parts`] for the amounts rounded
/// in integers; the rest go to the formatter.
fn write_fixed(out: &mut String, amount: f64, decimals: usize) {
    use std::fmt::Write as _;
    match fixed_parts(amount, decimals) {
        Some((whole, fraction)) => {
            push_decimal(out, whole, 1);
            if decimals > 0 {
                out.push('.');
                push_decimal(out, fraction, decimals);
            }
        }
        None => {
            let _ = write!(out, "{:.*}", decimals, amount);
        }
    }
}

/// `10^n` for the decimals [`fixed_parts`] rounds at: a load instead of a loop of 128-bit
/// multiplications.
const POWERS_OF_TEN: [u128; 21] = {
    let mut powers = [1u128; 21];
    let mut n = 1;
    while n < powers.len() {
        powers[n] = powers[n - 1] * 10;
        n += 1;
    }
    powers
};

/// A finite, non-negative `amount` rounded half to even at `decimals` places, as its whole
/// part and its fraction in units of `10^-decimals`; `None` from 2^53 up and past 20
/// decimals (and for a negative amount), which the formatter writes. Below 2^53 the value is
/// `m·2^e` exactly, so `amount·10^decimals` is `m·10^decimals` shifted right: integer
/// arithmetic, a fraction of the formatter's exact-mode float printing.
fn fixed_parts(amount: f64, decimals: usize) -> Option<(u128, u128)> {
    let bits = amount.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1u64 << 52) - 1);
    let (mantissa, exponent) = match biased {
        0 => (fraction, -1074),
        _ => (fraction | (1 << 52), biased - 1075),
    };
    if exponent > 0 || decimals > 20 || amount.is_sign_negative() {
        return None;
    }
    let scale = POWERS_OF_TEN[decimals];
    // Below 2^53 · 10^20 < 2^120.
    let scaled = mantissa as u128 * scale;
    let shift = exponent.unsigned_abs();
    let rounded = if shift == 0 {
        scaled
    } else if shift > 120 {
        // The remainder is below half of 2^shift: rounds to zero.
        0
    } else {
        let quotient = scaled >> shift;
        let remainder = scaled & ((1u128 << shift) - 1);
        let half = 1u128 << (shift - 1);
        if remainder > half || (remainder == half && quotient & 1 == 1) {
            quotient + 1
        } else {
            quotient
        }
    };
    // Prices and counts fit a u64, whose division is one instruction; a u128 division is a
    // call into a software routine.
    Some(match (u64::try_from(rounded), u64::try_from(scale)) {
        (Ok(rounded), Ok(scale)) => ((rounded / scale).into(), (rounded % scale).into()),
        _ => (rounded / scale, rounded % scale),
    })
}

/// `n` in decimal, zero-padded to at least `width` digits (at most 40).
fn push_decimal(out: &mut String, n: u128, width: usize) {
    let mut digits = [b'0'; 40];
    let start = decimal_digits(&mut digits, n, width);
    out.extend(digits[start..].iter().map(|&digit| digit as char));
}

/// The decimal digits of `n`, zero-padded to at least `width` (at most 40), at the end of
/// `digits`; returns where they start.
fn decimal_digits(digits: &mut [u8; 40], mut n: u128, width: usize) -> usize {
    let mut start = digits.len();
    // Most amounts fit a u64, whose division by 10 is a multiplication.
    while n > u64::MAX as u128 {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let mut small = n as u64;
    while small > 0 {
        start -= 1;
        digits[start] = b'0' + (small % 10) as u8;
        small /= 10;
    }
    start.min(digits.len() - width.min(digits.len()))
}

/// `decimals` is at most [`MAX_DECIMALS`] and `amount` finite, so the digits are at most
/// about 330 and the separators at most a hundred.
fn group(out: &mut String, amount: f64, decimals: usize, thousands: &str, point: &str) {
    // The common case (an amount below 2^53, at most 20 decimals: what `fixed_parts` rounds
    // in integers) is written from the integer digits, separators included, in order: no
    // formatter, no insertions that move the text after them.
    let Some((whole, fraction)) = fixed_parts(amount.abs(), decimals) else {
        return group_in_place(out, amount, decimals, thousands, point);
    };
    let mut whole_digits = [b'0'; 40];
    let whole_start = decimal_digits(&mut whole_digits, whole, 1);
    let whole_digits = &whole_digits[whole_start..];
    let mut fraction_digits = [b'0'; 40];
    let fraction_start = decimal_digits(&mut fraction_digits, fraction, decimals);
    let fraction_digits = &fraction_digits[fraction_start..];
    // The sign only when a digit shown is not zero, as the formatter's text would show it.
    if amount < 0.0 && (whole != 0 || fraction != 0) {
        out.push('-');
    }
    // Digits before the first separator: 1 to 3.
    let mut until_separator = (whole_digits.len() - 1) % 3 + 1;
    for &digit in whole_digits {
        if until_separator == 0 {
            push_separator(out, thousands);
            until_separator = 3;
        }
        out.push(char::from(digit));
        until_separator -= 1;
    }
    if decimals > 0 {
        push_separator(out, point);
        for &digit in fraction_digits {
            out.push(char::from(digit));
        }
    }
}

/// A separator appended: one ASCII character (the defaults) without a copy call.
fn push_separator(out: &mut String, separator: &str) {
    match separator.as_bytes() {
        &[byte] if byte.is_ascii() => out.push(char::from(byte)),
        _ => out.push_str(separator),
    }
}

/// [`group`] for any amount and separators: the digits written into `out` by
/// [`write_fixed`], then the sign, separators and point put in.
fn group_in_place(out: &mut String, amount: f64, decimals: usize, thousands: &str, point: &str) {
    let mut start = out.len();
    write_fixed(out, amount.abs(), decimals);
    if amount < 0.0
        && out.as_bytes()[start..]
            .iter()
            .any(|b| (b'1'..=b'9').contains(b))
    {
        out.insert(start, '-');
        start += 1;
    }
    let int_end = match out[start..].find('.') {
        Some(dot) => {
            // The default point is the one written: nothing to replace.
            if point != "." {
                out.replace_range(start + dot..start + dot + 1, point);
            }
            start + dot
        }
        None => out.len(),
    };
    // Right to left, so the places still to fill keep their offsets.
    let int_len = int_end - start;
    let mut digits_before = int_len;
    while digits_before > 3 {
        digits_before -= 3;
        out.insert_str(start + digits_before, thousands);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, ctx: Value) -> String {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        add_filters(&mut env);
        env.render_str(template, ctx).unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// The integer rounding writes what the formatter's `{:.N}` writes: any finite
        /// non-negative double (from its bits, so subnormals and huge ones too), halves that
        /// are exact in binary (`k / 2^n`, where the tie rule decides) and prices.
        #[test]
        fn write_fixed_writes_what_the_formatter_writes(
            bits in 0u64..0x7ff0_0000_0000_0000,
            k in 0u64..1_000_000,
            n in 0u32..12,
            cents in 0u64..10_000_000,
            decimals in 0usize..=22,
        ) {
            let half = k as f64 / 2f64.powi(n as i32);
            let price = cents as f64 / 100.0 + 12.99;
            for amount in [f64::from_bits(bits), half, price, price / 100.0] {
                let mut out = String::from("x");
                write_fixed(&mut out, amount, decimals);
                proptest::prop_assert_eq!(out, format!("x{:.*}", decimals, amount));
            }
        }
    }

    #[test]
    fn number_groups_thousands_and_rounds() {
        let ctx = minijinja::context! { n => 1234567, f => 1234.5, neg => -9876.555, s => "42000" };
        assert_eq!(render("{{ n | number }}", ctx.clone()), "1,234,567");
        assert_eq!(render("{{ f | number }}", ctx.clone()), "1,234.50");
        assert_eq!(render("{{ f | number(0) }}", ctx.clone()), "1,234");
        assert_eq!(render("{{ neg | number(1) }}", ctx.clone()), "-9,876.6");
        assert_eq!(render("{{ s | number }}", ctx.clone()), "42,000");
        // A whole float is printed as an integer; a fractional one with two decimals.
        let floats = minijinja::context! { whole => 12000.0, negative_zero => -0.0, half => 0.5 };
        assert_eq!(render("{{ whole | number }}", floats.clone()), "12,000");
        assert_eq!(render("{{ negative_zero | number }}", floats.clone()), "0");
        assert_eq!(render("{{ half | number }}", floats), "0.50");
        assert_eq!(
            render("{{ f | number(2, thousands='.', point=',') }}", ctx),
            "1.234,50"
        );
    }

    #[test]
    fn currency_uses_symbols_and_minor_units() {
        let ctx = minijinja::context! { p => 1299.5, y => 1500, neg => -3 };
        assert_eq!(render("{{ p | currency }}", ctx.clone()), "$1,299.50");
        assert_eq!(
            render("{{ p | currency('eur') }}", ctx.clone()),
            "€1,299.50"
        );
        assert_eq!(render("{{ y | currency('JPY') }}", ctx.clone()), "¥1,500");
        assert_eq!(
            render("{{ p | currency('CHF') }}", ctx.clone()),
            "CHF 1,299.50"
        );
        assert_eq!(render("{{ neg | currency('GBP') }}", ctx), "-£3.00");
    }

    #[test]
    fn not_a_number_is_an_error_not_a_zero() {
        let env = {
            let mut env = Environment::new();
            add_filters(&mut env);
            env
        };
        let err = env.render_str("{{ 'abc' | number }}", ()).unwrap_err();
        assert!(err.to_string().contains("not a number"), "{err}");
    }

    fn environment() -> Environment<'static> {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        add_filters(&mut env);
        env
    }

    fn render_err(template: &str, ctx: Value) -> String {
        match environment().render_str(template, ctx) {
            Ok(rendered) => panic!("{template} rendered {rendered:?}"),
            Err(err) => err.detail().unwrap_or_default().to_string(),
        }
    }

    #[test]
    fn decimals_out_of_range_are_an_error_naming_the_bound() {
        let ctx = minijinja::context! { n => 5, big => 70000, neg => -1, half => 2.5, text => "x" };
        for template in [
            "{{ n | number(70000) }}",
            "{{ n | number(big) }}",
            "{{ n | number(4294967295) }}",
            "{{ n | number(18446744073709551615) }}",
            "{{ n | number(neg) }}",
            "{{ n | number(half) }}",
            "{{ n | number(text) }}",
            "{{ n | number(21) }}",
        ] {
            let err = render_err(template, ctx.clone());
            assert!(
                err.starts_with("number: decimals must be a whole number from 0 to 20"),
                "{template}: {err}"
            );
        }
        // The bound itself works, and so does a field holding digits (as CSV fields do).
        let ctx = minijinja::context! { n => 1.5, d => "20" };
        assert_eq!(render("{{ n | number(d) }}", ctx), "1.50000000000000000000");
    }

    #[test]
    fn separators_are_short_strings() {
        let ctx = minijinja::context! { n => 1234567, long => "x".repeat(100_000) };
        let err = render_err("{{ n | number(thousands=long) }}", ctx.clone());
        assert!(
            err.contains("thousands must be a string of at most 8 characters"),
            "{err}"
        );
        assert!(err.len() < 200, "the message quotes only the start: {err}");
        let err = render_err("{{ n | currency('EUR', point=3) }}", ctx.clone());
        assert!(err.contains("point must be a string"), "{err}");
        assert_eq!(
            render("{{ n | number(thousands='\u{a0}') }}", ctx),
            "1\u{a0}234\u{a0}567"
        );
    }

    #[test]
    fn non_finite_numbers_are_an_error() {
        let ctx = minijinja::context! { inf => f64::INFINITY, nan => f64::NAN, huge => "1e400" };
        for template in [
            "{{ inf | number }}",
            "{{ nan | number(2) }}",
            "{{ huge | currency }}",
        ] {
            let err = render_err(template, ctx.clone());
            assert!(err.contains("is not a finite number"), "{template}: {err}");
        }
        // The largest finite numbers print all their digits.
        let ctx = minijinja::context! { max => f64::MAX, min => i64::MIN };
        let max = render("{{ max | number }}", ctx.clone());
        assert_eq!(max.matches(',').count(), 102, "{max}");
        assert!(max.starts_with("179,769,313,486,231,570"), "{max}");
        assert_eq!(
            render("{{ min | number }}", ctx),
            "-9,223,372,036,854,775,808"
        );
    }

    #[test]
    fn currency_codes_are_three_letters() {
        let ctx = minijinja::context! { p => 1, code => "EURO".repeat(10_000) };
        for template in [
            "{{ p | currency(code) }}",
            "{{ p | currency('E') }}",
            "{{ p | currency(978) }}",
        ] {
            let err = render_err(template, ctx.clone());
            assert!(
                err.contains("three-letter ISO 4217 code"),
                "{template}: {err}"
            );
        }
    }

    #[test]
    fn date_formats_and_truncate_lengths_are_bounded() {
        let ctx = minijinja::context! {
            d => "2026-03-07", long => "%Y".repeat(200), s => "a b c d e f g",
        };
        let err = render_err("{{ d | date(long) }}", ctx.clone());
        assert!(err.contains("at most 256 characters"), "{err}");
        let err = render_err("{{ d | date(5) }}", ctx.clone());
        assert!(err.contains("format must be a string"), "{err}");
        let err = render_err(
            "{{ s | truncate(length=18446744073709551615) }}",
            ctx.clone(),
        );
        assert!(err.starts_with("truncate: length must be"), "{err}");
        let err = render_err("{{ s | truncate(length=5, leeway=9999999) }}", ctx.clone());
        assert!(err.starts_with("truncate: leeway must be"), "{err}");
        assert_eq!(
            render("{{ s | truncate(length=7, leeway=0) }}", ctx),
            "a b..."
        );
    }

    #[test]
    fn literal_arguments_a_filter_refuses_are_found_with_their_offset() {
        let syntax = minijinja::syntax::SyntaxConfig::default();
        let refused = |source: &str| refused_literal_argument(source, &syntax);
        let source = "Total: {{ n|number(70000) }}";
        let (offset, message) = refused(source).expect("refused");
        assert_eq!(&source[offset..offset + 5], "70000");
        assert!(message.starts_with("number: decimals"), "{message}");
        for source in [
            "{{ n | number(-1) }}",
            "{{ n | number(2.5) }}",
            "{{ n | number(2, thousands='0123456789') }}",
            "{{ p | currency('EURO') }}",
            "{{ p | currency(point=1) }}",
            "{% filter number(99) %}5{% endfilter %}",
            "{{ s | upper | truncate(length=99999999999) }}",
            "{% for x in xs %}{{ x | number(1) }}{{ x | number(1e3) }}{% endfor %}",
        ] {
            assert!(refused(source).is_some(), "{source}");
        }
        // Expressions are checked when the filter runs; valid literals pass.
        for source in [
            "{{ n | number(d) }}",
            "{{ n | number(d + 70000) }}",
            "{{ n | number(2, thousands='.', point=',') }}",
            "{{ p | currency('eur') }}",
            "{{ d | date('%d %B %Y') }}",
            "{{ n | round(70000) }}",
            "{{ number(70000) }}",
            "{{ x | number( }}",
        ] {
            assert_eq!(refused(source), None, "{source}");
        }
    }

    #[test]
    fn date_formats_iso_dates_with_strftime() {
        let ctx = minijinja::context! { d => "2026-03-07", t => "2026-03-07T09:30:00Z" };
        assert_eq!(
            render("{{ d | date('%d %B %Y') }}", ctx.clone()),
            "07 March 2026"
        );
        assert_eq!(
            render("{{ t | date('%Y-%m-%d') }}", ctx.clone()),
            "2026-03-07"
        );
        assert_eq!(render("{{ d | date }}", ctx), "Mar 7 2026");
    }
}

/// Any argument, from a template literal or a recipient's field, gives a value or an error:
/// never a panic, never output out of proportion to the arguments.
#[cfg(test)]
mod properties {
    use super::add_filters;
    use minijinja::Environment;
    use minijinja::value::Value;
    use proptest::prelude::*;

    fn any_value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (0u32..=u32::MAX).prop_map(Value::from),
            any::<i128>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            prop_oneof![
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                Just(f64::MAX),
                Just(f64::MIN_POSITIVE),
                Just(-0.0),
            ]
            .prop_map(Value::from),
            ".{0,40}".prop_map(Value::from),
            "[0-9eE.+%-]{0,30}".prop_map(Value::from),
            (0usize..200_000).prop_map(|n| Value::from("9".repeat(n))),
            any::<bool>().prop_map(Value::from),
            Just(Value::from(())),
            Just(Value::UNDEFINED),
        ]
    }

    const TEMPLATES: &[&str] = &[
        "{{ v | number }}",
        "{{ v | number(a) }}",
        "{{ v | number(a, thousands=b, point=c) }}",
        "{{ v | currency }}",
        "{{ v | currency(b) }}",
        "{{ v | currency(b, thousands=a, point=c) }}",
        "{{ v | date }}",
        "{{ v | date(b) }}",
        "{{ v | dateformat(format=b) }}",
        "{{ v | datetimeformat(format=b) }}",
        "{{ v | timeformat(format=b) }}",
        "{{ v | truncate(length=a, leeway=c) }}",
        "{{ b | truncate(length=a, end=c) }}",
        "{{ v | filesizeformat(a) }}",
        "{{ v | pluralize(b, c) }}",
        "{{ b | striptags }}",
    ];

    /// `group` as it was first written (a formatted copy, then digit by digit): the in-place
    /// version must write the same text.
    fn group_by_copy(amount: f64, decimals: usize, thousands: &str, point: &str) -> String {
        let mut out = String::new();
        let fixed = format!("{:.*}", decimals, amount.abs());
        let (int_part, frac_part) = fixed.split_once('.').unwrap_or((&fixed, ""));
        if amount < 0.0 && fixed.bytes().any(|b| b.is_ascii_digit() && b != b'0') {
            out.push('-');
        }
        for (i, digit) in int_part.chars().enumerate() {
            if i > 0 && (int_part.len() - i).is_multiple_of(3) {
                out.push_str(thousands);
            }
            out.push(digit);
        }
        if !frac_part.is_empty() {
            out.push_str(point);
            out.push_str(frac_part);
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn grouping_in_place_writes_what_a_copy_would(
            amount in prop_oneof![
                any::<f64>().prop_filter("finite", |f| f.is_finite()),
                -1e7..1e7f64,
                (-1_000_000i64..1_000_000).prop_map(|n| n as f64),
            ],
            decimals in 0usize..=super::MAX_DECIMALS as usize,
            thousands in prop_oneof![Just(","), Just("."), Just("\u{a0}"), Just(""), Just("'’")],
            point in prop_oneof![Just("."), Just(","), Just("·")],
            prefix in prop_oneof![Just(""), Just("£")],
        ) {
            let mut out = String::from(prefix);
            super::group(&mut out, amount, decimals, thousands, point);
            prop_assert_eq!(out, format!("{prefix}{}", group_by_copy(amount, decimals, thousands, point)));
        }

        /// The grouping put together on the stack writes what the grouping in the output
        /// writes: amounts of every size (past 2^53 and 2^64 too, where the formatter writes
        /// the digits), halves that round either way, tiny negatives that round to zero,
        /// and separators up to the longest allowed, which take it past its stack room.
        #[test]
        fn grouping_on_the_stack_writes_what_grouping_in_place_writes(
            amount in prop_oneof![
                any::<f64>().prop_filter("finite", |f| f.is_finite()),
                (-1_000_000_000_000i64..1_000_000_000_000).prop_map(|cents| cents as f64 / 100.0),
                (0u32..64, -1i64..=1).prop_map(|(power, step)| 2f64.powi(power as i32) + step as f64),
                (0i32..22, any::<bool>()).prop_map(|(power, negative)| {
                    let amount = 10f64.powi(power) - 0.5;
                    if negative { -amount } else { amount }
                }),
                (-1e-3..1e-3f64),
            ],
            decimals in 0usize..=super::MAX_DECIMALS as usize,
            thousands in prop_oneof![Just(","), Just(""), Just("\u{a0}"), Just("'’"), Just("€€€€€€€€")],
            point in prop_oneof![Just("."), Just(","), Just("·"), Just("--------")],
            prefix in prop_oneof![Just(""), Just("£")],
        ) {
            let mut on_stack = String::from(prefix);
            super::group(&mut on_stack, amount, decimals, thousands, point);
            let mut in_place = String::from(prefix);
            super::group_in_place(&mut in_place, amount, decimals, thousands, point);
            prop_assert_eq!(on_stack, in_place);
        }

        #[test]
        fn filters_return_a_value_or_an_error_for_any_argument(
            v in any_value(),
            a in any_value(),
            b in any_value(),
            c in any_value(),
        ) {
            let mut env = Environment::new();
            minijinja_contrib::add_to_environment(&mut env);
            add_filters(&mut env);
            let ctx = minijinja::context! { v => v, a => a, b => b, c => c };
            for template in TEMPLATES {
                if let Ok(rendered) = env.render_str(template, ctx.clone()) {
                    prop_assert!(
                        rendered.len() < 1_000_000,
                        "{template}: {} bytes",
                        rendered.len()
                    );
                }
            }
        }
    }
}
