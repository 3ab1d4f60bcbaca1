//! Recipients: an address plus free personalization fields, read from CSV, a JSON array or
//! JSON Lines — each streamed row by row, so a file's size never decides the memory used.

mod json;

pub use json::{JsonLinesRecipients, JsonRecipients, MAX_ELEMENT_BYTES};

use crate::address::EmailAddress;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;
use std::io::Read;
use std::path::Path;

/// One recipient: the address and the fields templates can use (`{{ first_name }}`).
#[derive(Debug, Clone, PartialEq)]
pub struct Recipient {
    pub email: EmailAddress,
    pub fields: Map<String, Value>,
}

/// The largest value of one recipient field, in bytes: a CSV cell, or a JSON value as written.
pub const MAX_FIELD_BYTES: usize = 64 * 1024;
/// The largest recipient row, in bytes: its field names and values (the address included).
pub const MAX_ROW_BYTES: usize = 256 * 1024;

/// Why a row cannot be a recipient, with the column (field) to blame when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RowProblem {
    column: Option<String>,
    message: String,
}

impl RowProblem {
    /// A problem of the row as a whole, no one field to blame.
    fn whole_row(message: String) -> RowProblem {
        RowProblem {
            column: None,
            message,
        }
    }

    fn in_email(message: String) -> RowProblem {
        RowProblem {
            column: Some("email".into()),
            message,
        }
    }
}

/// Checks a row's field sizes (name, value bytes) against [`MAX_FIELD_BYTES`] and
/// [`MAX_ROW_BYTES`] before anything else reads the values (an error message must not echo a
/// 60 MB cell).
fn check_size<'a>(fields: impl Iterator<Item = (&'a str, usize)>) -> Result<(), RowProblem> {
    let mut row = 0usize;
    for (column, size) in fields {
        if size > MAX_FIELD_BYTES {
            return Err(RowProblem {
                column: Some(column.to_string()),
                message: format!(
                    "field `{column}` is {size} bytes; a recipient field may be at most {MAX_FIELD_BYTES} bytes (64 KiB)"
                ),
            });
        }
        row = row.saturating_add(column.len()).saturating_add(size);
    }
    if row > MAX_ROW_BYTES {
        return Err(RowProblem {
            column: None,
            message: format!(
                "the recipient is {row} bytes (field names and values); a recipient row may be at most {MAX_ROW_BYTES} bytes (256 KiB)"
            ),
        });
    }
    Ok(())
}

/// A JSON field's size as counted by the limits: a string's bytes, anything else as written.
fn json_size(value: &Value) -> usize {
    match value {
        Value::String(text) => text.len(),
        other => serde_json::to_string(other).map_or(usize::MAX, |text| text.len()),
    }
}

impl Recipient {
    /// Builds a recipient from a JSON object: `email` is required, every other key is a
    /// personalization field (nested objects and arrays allowed).
    pub fn from_object(object: Map<String, Value>) -> Result<Recipient, String> {
        recipient_from_object(object).map_err(|problem| problem.message)
    }
}

/// As [`Recipient::from_object`], naming the field at fault.
fn recipient_from_object(mut object: Map<String, Value>) -> Result<Recipient, RowProblem> {
    check_size(
        object
            .iter()
            .map(|(key, value)| (key.as_str(), json_size(value))),
    )?;
    let email = match object.remove("email") {
        Some(Value::String(email)) => email,
        Some(other) => {
            return Err(RowProblem::in_email(format!(
                "`email` must be a string, got {}",
                json_type(&other)
            )));
        }
        None => return Err(RowProblem::in_email("`email` is missing".to_string())),
    };
    let email = EmailAddress::parse(email.trim())
        .map_err(|err| RowProblem::in_email(format!("invalid email address {email:?}: {err}")))?;
    Ok(Recipient {
        email,
        fields: object,
    })
}

/// A recipient from one JSON element or line, which must be an object.
fn recipient_from_value(value: Value) -> Result<Recipient, RowProblem> {
    match value {
        Value::Object(object) => recipient_from_object(object),
        other => Err(RowProblem::whole_row(format!(
            "a recipient must be a JSON object with an `email`, got {}",
            json_type(&other)
        ))),
    }
}

/// How a JSON value's type is named in error messages.
pub(crate) fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'de> Deserialize<'de> for Recipient {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let object = Map::<String, Value>::deserialize(deserializer)?;
        Recipient::from_object(object).map_err(serde::de::Error::custom)
    }
}

impl Serialize for Recipient {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.fields.len() + 1))?;
        map.serialize_entry("email", self.email.as_str())?;
        for (key, value) in &self.fields {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl JsonSchema for Recipient {
    fn schema_name() -> Cow<'static, str> {
        "Recipient".into()
    }

    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "description": "A recipient: `email` plus any personalization fields.",
            "required": ["email"],
            "properties": { "email": { "type": "string", "format": "email" } },
            "additionalProperties": true
        })
    }
}

impl utoipa::PartialSchema for Recipient {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{
            AdditionalProperties, KnownFormat, ObjectBuilder, SchemaFormat, Type,
        };
        ObjectBuilder::new()
            .description(Some(
                "A recipient: `email` plus any personalization fields.",
            ))
            .property(
                "email",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Email))),
            )
            .required("email")
            .additional_properties(Some(AdditionalProperties::FreeForm(true)))
            .into()
    }
}

impl utoipa::ToSchema for Recipient {}

/// A recipient row that cannot be used, located for the person who has to fix the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, utoipa::ToSchema)]
#[error("row {row} (line {line}): {message}")]
pub struct RowError {
    /// 1-based data row (the header is not counted).
    pub row: u64,
    /// 1-based line in the file.
    pub line: u64,
    /// The column (field) at fault, when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    pub message: String,
}

/// Why a recipient file cannot be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecipientError {
    /// The CSV has no header row (empty input).
    #[error("the CSV file is empty: it needs a header row with an `email` column")]
    EmptyCsv,
    /// The header row has no `email` column.
    #[error("the CSV header has no `email` column (found: {0})")]
    NoEmailColumn(String),
    /// Two columns have the same name, so a field would be ambiguous.
    #[error("the CSV header names column {0:?} twice")]
    DuplicateColumn(String),
    /// The header row itself could not be read.
    #[error("the CSV header cannot be read: {0}")]
    Header(String),
    /// The JSON input is empty.
    #[error(
        "the JSON input is empty: it needs an array of recipient objects, each with an `email`"
    )]
    EmptyJson,
    /// The JSON input is something other than an array.
    #[error("the JSON input is not an array of recipient objects: {0}")]
    NotJsonArray(String),
    /// The input could not be read before its first row.
    #[error("the recipients cannot be read: {0}")]
    Unreadable(String),
}

/// The ways a recipient list is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientFormat {
    /// CSV with a header row naming an `email` column.
    Csv,
    /// One JSON array of objects.
    JsonArray,
    /// JSON Lines (NDJSON): one object per line.
    JsonLines,
}

impl RecipientFormat {
    /// The media types read as JSON Lines: the de facto `application/x-ndjson` and the
    /// registered-to-be `application/jsonl`.
    pub const JSON_LINES_MEDIA_TYPES: [&'static str; 2] =
        ["application/x-ndjson", "application/jsonl"];

    /// By a file's extension: `.csv`, `.jsonl` or `.ndjson` (any case); anything else is read
    /// as a JSON array.
    pub fn from_path(path: &Path) -> RecipientFormat {
        let extension = path
            .extension()
            .and_then(|ext| ext.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        match extension.as_str() {
            "csv" => RecipientFormat::Csv,
            "jsonl" | "ndjson" => RecipientFormat::JsonLines,
            _ => RecipientFormat::JsonArray,
        }
    }

    /// By a request's media type (lower case, without parameters); `None` for one that holds
    /// no recipient list.
    pub fn from_media_type(media_type: &str) -> Option<RecipientFormat> {
        match media_type {
            "text/csv" => Some(RecipientFormat::Csv),
            "application/json" => Some(RecipientFormat::JsonArray),
            other if Self::JSON_LINES_MEDIA_TYPES.contains(&other) => {
                Some(RecipientFormat::JsonLines)
            }
            _ => None,
        }
    }

    /// Starts reading `input` in this format: what comes before the first row (the CSV header,
    /// the array's `[`) is checked here, the rows are read as they are asked for.
    pub fn read<R: Read>(self, input: R) -> Result<RecipientRows<R>, RecipientError> {
        Ok(match self {
            RecipientFormat::Csv => RecipientRows::Csv(CsvRecipients::new(input)?),
            RecipientFormat::JsonArray => RecipientRows::JsonArray(JsonRecipients::new(input)?),
            RecipientFormat::JsonLines => {
                RecipientRows::JsonLines(JsonLinesRecipients::new(input)?)
            }
        })
    }
}

/// Rows of a recipient list in any [`RecipientFormat`], read one at a time.
pub enum RecipientRows<R: Read> {
    Csv(CsvRecipients<R>),
    JsonArray(JsonRecipients<R>),
    JsonLines(JsonLinesRecipients<R>),
}

impl<R: Read> Iterator for RecipientRows<R> {
    type Item = Result<Recipient, RowError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            RecipientRows::Csv(rows) => rows.next(),
            RecipientRows::JsonArray(rows) => rows.next(),
            RecipientRows::JsonLines(rows) => rows.next(),
        }
    }
}

/// Streams recipients out of a CSV file one row at a time, so a million-row file never has
/// to be held in memory. The header row names the fields; `email` (any case) is required.
/// Values are trimmed; every other column becomes a string field.
pub struct CsvRecipients<R: Read> {
    reader: csv::Reader<R>,
    columns: Vec<String>,
    email_column: usize,
    record: csv::StringRecord,
    row: u64,
}

impl<R: Read> CsvRecipients<R> {
    pub fn new(input: R) -> Result<CsvRecipients<R>, RecipientError> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(csv::Trim::All)
            .from_reader(input);
        let headers = reader
            .headers()
            .map_err(|err| RecipientError::Header(err.to_string()))?
            .clone();
        if headers.is_empty() || (headers.len() == 1 && headers[0].is_empty()) {
            return Err(RecipientError::EmptyCsv);
        }
        let columns: Vec<String> = headers.iter().map(str::to_string).collect();
        for (index, column) in columns.iter().enumerate() {
            if columns[..index].contains(column) {
                return Err(RecipientError::DuplicateColumn(column.clone()));
            }
        }
        let email_column = columns
            .iter()
            .position(|c| c.eq_ignore_ascii_case("email"))
            .ok_or_else(|| RecipientError::NoEmailColumn(columns.join(", ")))?;
        Ok(CsvRecipients {
            reader,
            columns,
            email_column,
            record: csv::StringRecord::new(),
            row: 0,
        })
    }

    fn current_recipient(&self) -> Result<Recipient, RowProblem> {
        check_size(
            self.columns
                .iter()
                .zip(self.record.iter())
                .map(|(column, value)| (column.as_str(), value.len())),
        )?;
        let email = &self.record[self.email_column];
        let email = EmailAddress::parse(email).map_err(|err| RowProblem {
            column: Some(self.columns[self.email_column].clone()),
            message: format!("invalid email address {email:?}: {err}"),
        })?;
        let fields = self
            .columns
            .iter()
            .zip(self.record.iter())
            .enumerate()
            .filter(|(index, _)| *index != self.email_column)
            .map(|(_, (column, value))| (column.clone(), Value::String(value.to_string())))
            .collect();
        Ok(Recipient { email, fields })
    }
}

impl<R: Read> Iterator for CsvRecipients<R> {
    type Item = Result<Recipient, RowError>;

    fn next(&mut self) -> Option<Self::Item> {
        let result = self.reader.read_record(&mut self.record);
        self.row += 1;
        let line = self
            .record
            .position()
            .map_or_else(|| self.reader.position().line(), csv::Position::line);
        match result {
            Ok(false) => None,
            Ok(true) => Some(self.current_recipient().map_err(|problem| RowError {
                row: self.row,
                line,
                column: problem.column,
                message: problem.message,
            })),
            Err(err) => {
                let message = match err.kind() {
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => format!("has {len} fields but the header has {expected_len}"),
                    csv::ErrorKind::Utf8 { .. } => "is not valid UTF-8".to_string(),
                    _ => err.to_string(),
                };
                let line = err.position().map(|p| p.line()).unwrap_or(line);
                Some(Err(RowError {
                    row: self.row,
                    line,
                    column: None,
                    message,
                }))
            }
        }
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.email.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_become_recipients_with_string_fields() {
        let csv = "Email,first_name,city\n ann@example.com , Ann ,Lyon\nbob@example.org,Bob,\n";
        let rows: Vec<_> = CsvRecipients::new(csv.as_bytes()).unwrap().collect();
        assert_eq!(rows.len(), 2);
        let ann = rows[0].as_ref().unwrap();
        assert_eq!(ann.email.as_str(), "ann@example.com");
        assert_eq!(ann.fields["first_name"], "Ann");
        assert_eq!(ann.fields["city"], "Lyon");
        assert!(!ann.fields.contains_key("Email"));
        assert_eq!(rows[1].as_ref().unwrap().fields["city"], "");
    }

    #[test]
    fn a_bad_row_is_located_and_reading_goes_on() {
        let csv = "email,name\nann@example.com,Ann\nnot-an-address,Bob\ncid@example.com,Cid,extra\ndee@example.com,Dee\n";
        let rows: Vec<_> = CsvRecipients::new(csv.as_bytes()).unwrap().collect();
        assert_eq!(rows.len(), 4);
        let bad = rows[1].as_ref().unwrap_err();
        assert_eq!((bad.row, bad.line), (2, 3));
        assert!(bad.message.contains("not-an-address"), "{bad}");
        let short = rows[2].as_ref().unwrap_err();
        assert_eq!(short.row, 3);
        assert!(short.message.contains("3 fields"), "{short}");
        assert!(rows[3].is_ok());
    }

    #[test]
    fn header_problems_are_named() {
        assert_eq!(
            CsvRecipients::new("name,city\nAnn,Lyon\n".as_bytes()).err(),
            Some(RecipientError::NoEmailColumn("name, city".into()))
        );
        assert_eq!(
            CsvRecipients::new("email,name,name\n".as_bytes()).err(),
            Some(RecipientError::DuplicateColumn("name".into()))
        );
        assert_eq!(
            CsvRecipients::new("".as_bytes()).err(),
            Some(RecipientError::EmptyCsv)
        );
    }

    #[test]
    fn json_recipient_needs_a_string_email_and_keeps_nested_fields() {
        let ok: Recipient =
            serde_json::from_str(r#"{"email":"ann@example.com","orders":[{"sku":"A1"}]}"#).unwrap();
        assert_eq!(ok.fields["orders"][0]["sku"], "A1");
        let round_trip: Recipient =
            serde_json::from_value(serde_json::to_value(&ok).unwrap()).unwrap();
        assert_eq!(round_trip, ok);
        let err = serde_json::from_str::<Recipient>(r#"{"email":42}"#).unwrap_err();
        assert!(err.to_string().contains("must be a string"), "{err}");
        let err = serde_json::from_str::<Recipient>(r#"{"name":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("`email` is missing"), "{err}");
    }
}
