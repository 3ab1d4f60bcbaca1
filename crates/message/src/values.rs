//! Recipient data as template values, and the filters users expect beyond minijinja's own.

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, Error, ErrorKind, State};
use serde_json::{Map, Value as Json};
use std::collections::BTreeMap;

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

pub(crate) fn from_json_fields(map: &Map<String, Json>) -> BTreeMap<String, Value> {
    map.iter()
        .map(|(key, value)| (key.clone(), from_json(value)))
        .collect()
}

pub(crate) fn from_json_map(map: &Map<String, Json>) -> Value {
    Value::from_object(from_json_fields(map))
}

pub(crate) fn object<const N: usize>(pairs: [(&str, Value); N]) -> BTreeMap<String, Value> {
    pairs
        .into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect()
}

pub(crate) fn add_filters(env: &mut Environment<'static>) {
    env.add_filter("number", number);
    env.add_filter("currency", currency);
    env.add_filter("date", date);
}

/// `{{ total | number }}` → `1,234,567`; `{{ x | number(2) }}` → `1,234.50`;
/// `{{ x | number(2, thousands=".", point=",") }}` → `1.234,50`. Numeric strings (as CSV
/// fields always are) are accepted.
fn number(value: Value, decimals: Option<u32>, kwargs: Kwargs) -> Result<String, Error> {
    let (amount, is_integer) = to_number(&value)?;
    let decimals = decimals.unwrap_or(if is_integer { 0 } else { 2 });
    let thousands = kwargs.get::<Option<&str>>("thousands")?.unwrap_or(",");
    let point = kwargs.get::<Option<&str>>("point")?.unwrap_or(".");
    kwargs.assert_all_used()?;
    Ok(group(amount, decimals, thousands, point))
}

/// `{{ price | currency("EUR") }}` → `€12.50`. Symbols for common codes, the ISO code itself
/// otherwise (`CHF 12.50`); yen and won have no minor unit. Same `thousands`/`point` kwargs as
/// `number`.
fn currency(value: Value, code: Option<&str>, kwargs: Kwargs) -> Result<String, Error> {
    let (amount, _) = to_number(&value)?;
    let code = code.unwrap_or("USD").to_ascii_uppercase();
    let (symbol, decimals) = match code.as_str() {
        "USD" | "CAD" | "AUD" | "NZD" => ("$".to_string(), 2),
        "EUR" => ("€".to_string(), 2),
        "GBP" => ("£".to_string(), 2),
        "JPY" => ("¥".to_string(), 0),
        "KRW" => ("₩".to_string(), 0),
        "INR" => ("₹".to_string(), 2),
        other => (format!("{other} "), 2),
    };
    let thousands = kwargs.get::<Option<&str>>("thousands")?.unwrap_or(",");
    let point = kwargs.get::<Option<&str>>("point")?.unwrap_or(".");
    kwargs.assert_all_used()?;
    let formatted = group(amount.abs(), decimals, thousands, point);
    let sign = if amount < 0.0 { "-" } else { "" };
    Ok(format!("{sign}{symbol}{formatted}"))
}

/// `{{ signup | date }}`, `{{ signup | date("%e %B %Y") }}` (strftime, or `short`, `medium`,
/// `long`, `full`). Accepts RFC 3339 / ISO dates and Unix timestamps. A positional front end
/// for minijinja-contrib's `dateformat`, whose format is keyword-only.
fn date(state: &State, value: Value, format: Option<&str>) -> Result<String, Error> {
    let kwargs = match format {
        Some(format) => Kwargs::from_iter([("format", Value::from(format))]),
        None => Kwargs::from_iter(std::iter::empty::<(&str, Value)>()),
    };
    minijinja_contrib::filters::dateformat(state, value, kwargs)
}

fn to_number(value: &Value) -> Result<(f64, bool), Error> {
    if let Some(s) = value.as_str() {
        let s = s.trim();
        return s
            .parse::<f64>()
            .map(|n| (n, !s.contains(['.', 'e', 'E'])))
            .map_err(|_| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    format!("{s:?} is not a number"),
                )
            });
    }
    if let Ok(i) = i64::try_from(value.clone()) {
        // Precision loss above 2^53 only affects the digits shown, never memory safety.
        return Ok((i as f64, true));
    }
    f64::try_from(value.clone())
        .map(|f| (f, false))
        .map_err(|_| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("{value} is not a number"),
            )
        })
}

fn group(amount: f64, decimals: u32, thousands: &str, point: &str) -> String {
    let fixed = format!("{:.*}", decimals as usize, amount.abs());
    let (int_part, frac_part) = fixed.split_once('.').unwrap_or((&fixed, ""));
    let mut out = String::with_capacity(fixed.len() + fixed.len() / 3 + 2);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn render(template: &str, ctx: Value) -> String {
        let mut env = Environment::new();
        minijinja_contrib::add_to_environment(&mut env);
        add_filters(&mut env);
        env.render_str(template, ctx).unwrap()
    }

    #[test]
    fn number_groups_thousands_and_rounds() {
        let ctx = minijinja::context! { n => 1234567, f => 1234.5, neg => -9876.555, s => "42000" };
        assert_eq!(render("{{ n | number }}", ctx.clone()), "1,234,567");
        assert_eq!(render("{{ f | number }}", ctx.clone()), "1,234.50");
        assert_eq!(render("{{ f | number(0) }}", ctx.clone()), "1,234");
        assert_eq!(render("{{ neg | number(1) }}", ctx.clone()), "-9,876.6");
        assert_eq!(render("{{ s | number }}", ctx.clone()), "42,000");
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
