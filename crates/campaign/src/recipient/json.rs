//! Recipients streamed out of JSON: an array of objects, or JSON Lines (one object per line).
//! Only one element (or line) is held at a time, so a million-recipient file reads in the same
//! memory as a ten-recipient one.

use super::{RecipientError, RowError, RowProblem, recipient_from_value};
use crate::Recipient;
use crate::document::strip_position;
use serde_json::Value;
use std::io::{self, BufRead, BufReader, Read};

/// The largest JSON text of one element or line that is parsed. A recipient row may be at most
/// `MAX_ROW_BYTES` (256 KiB) of names and values; as written, escapes (`\u00e9`) and layout can
/// make it several times larger. Anything beyond is refused without being held, which bounds
/// the memory one bad element can take.
pub const MAX_ELEMENT_BYTES: usize = 8 * super::MAX_ROW_BYTES;

/// A byte-order mark some editors put at the start of a UTF-8 file.
const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// Streams recipients out of a JSON array of objects, element by element. Each element is
/// located by a scan that only follows strings and brackets, then parsed on its own, so one
/// bad element is reported (by its position and line) and reading goes on with the next.
pub struct JsonRecipients<R: Read> {
    input: BufReader<R>,
    /// 1-based line of the next unread byte.
    line: u64,
    /// Elements started so far.
    row: u64,
    /// The current element's text (at most [`MAX_ELEMENT_BYTES`] of it).
    element: Vec<u8>,
    state: ArrayState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArrayState {
    /// Right after `[`: an element or `]` comes next.
    Opened,
    /// After a `,`: an element must come next.
    AfterComma,
    /// The `]` was read: only whitespace may follow.
    Closed,
    /// Nothing more to read (the end, or an error that leaves no way to go on).
    Done,
}

/// How an element's text ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ElementEnd {
    Comma,
    CloseBracket,
    EndOfInput,
}

impl<R: Read> JsonRecipients<R> {
    /// Reads up to the array's opening `[`: an input that is empty or not an array is refused
    /// before any recipient is read.
    pub fn new(input: R) -> Result<JsonRecipients<R>, RecipientError> {
        let mut reader = JsonRecipients {
            input: BufReader::new(input),
            line: 1,
            row: 0,
            element: Vec::new(),
            state: ArrayState::Opened,
        };
        skip_bom(&mut reader.input).map_err(|err| RecipientError::Unreadable(err.to_string()))?;
        match reader.skip_whitespace() {
            Ok(Some(b'[')) => {
                reader.input.consume(1);
                Ok(reader)
            }
            Ok(Some(b'{')) => Err(RecipientError::NotJsonArray(
                "it starts with `{`; for one object per line, name the file .jsonl (or send application/x-ndjson)".into(),
            )),
            Ok(Some(byte)) => Err(RecipientError::NotJsonArray(format!(
                "it starts with {:?}",
                char::from(byte)
            ))),
            Ok(None) => Err(RecipientError::EmptyJson),
            Err(err) => Err(RecipientError::Unreadable(err.to_string())),
        }
    }

    /// Skips whitespace, counting lines, and returns the next byte without consuming it.
    fn skip_whitespace(&mut self) -> io::Result<Option<u8>> {
        loop {
            let buffer = self.input.fill_buf()?;
            if buffer.is_empty() {
                return Ok(None);
            }
            match buffer.iter().position(|byte| !byte.is_ascii_whitespace()) {
                Some(index) => {
                    let byte = buffer[index];
                    self.line += count_lines(&buffer[..index]);
                    self.input.consume(index);
                    return Ok(Some(byte));
                }
                None => {
                    let length = buffer.len();
                    self.line += count_lines(buffer);
                    self.input.consume(length);
                }
            }
        }
    }

    /// Reads one element's text into `self.element` up to the `,` or `]` that ends it (outside
    /// strings and brackets), consuming that delimiter. Text beyond [`MAX_ELEMENT_BYTES`] is
    /// read but not kept; the returned flag says whether any was dropped.
    fn read_element(&mut self) -> io::Result<(ElementEnd, bool)> {
        self.element.clear();
        let mut overflow = false;
        let (mut depth, mut in_string, mut escaped) = (0u32, false, false);
        loop {
            let buffer = self.input.fill_buf()?;
            if buffer.is_empty() {
                return Ok((ElementEnd::EndOfInput, overflow));
            }
            let mut end = None;
            for (index, &byte) in buffer.iter().enumerate() {
                if in_string {
                    if escaped {
                        escaped = false;
                    } else if byte == b'\\' {
                        escaped = true;
                    } else if byte == b'"' {
                        in_string = false;
                    }
                    continue;
                }
                match byte {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b',' | b']' if depth == 0 => {
                        end = Some((index, byte));
                        break;
                    }
                    // An unmatched closing bracket stays in the text for the parser to name.
                    b'}' | b']' => depth = depth.saturating_sub(1),
                    _ => {}
                }
            }
            let taken = end.map_or(buffer.len(), |(index, _)| index);
            self.line += count_lines(&buffer[..taken]);
            let room = MAX_ELEMENT_BYTES.saturating_sub(self.element.len());
            overflow |= taken > room;
            self.element.extend_from_slice(&buffer[..taken.min(room)]);
            match end {
                Some((index, delimiter)) => {
                    self.input.consume(index + 1);
                    let end = if delimiter == b',' {
                        ElementEnd::Comma
                    } else {
                        ElementEnd::CloseBracket
                    };
                    return Ok((end, overflow));
                }
                None => self.input.consume(taken),
            }
        }
    }

    /// The recipient in `self.element`, or why it is not one.
    fn current_recipient(&self, start_line: u64, overflow: bool) -> Result<Recipient, RowError> {
        let located = |line: u64, problem: RowProblem| RowError {
            row: self.row,
            line,
            column: problem.column,
            message: problem.message,
        };
        if overflow {
            return Err(located(
                start_line,
                RowProblem::whole_row(format!(
                    "the element is more than {MAX_ELEMENT_BYTES} bytes of JSON (or its brackets do not balance); a recipient row may be at most {} bytes",
                    super::MAX_ROW_BYTES
                )),
            ));
        }
        match serde_json::from_slice::<Value>(&self.element) {
            Ok(value) => {
                recipient_from_value(value).map_err(|problem| located(start_line, problem))
            }
            Err(err) => Err(located(
                start_line + err.line().saturating_sub(1) as u64,
                RowProblem::whole_row(format!(
                    "malformed JSON: {}",
                    strip_position(&err.to_string())
                )),
            )),
        }
    }

    fn error(&self, message: String) -> RowError {
        RowError {
            row: self.row,
            line: self.line,
            column: None,
            message,
        }
    }

    fn next_row(&mut self) -> io::Result<Option<Result<Recipient, RowError>>> {
        loop {
            if self.state == ArrayState::Done {
                return Ok(None);
            }
            let next = self.skip_whitespace()?;
            match (self.state, next) {
                (ArrayState::Done, _) | (ArrayState::Closed, None) => {
                    self.state = ArrayState::Done;
                    return Ok(None);
                }
                (ArrayState::Closed, Some(_)) => {
                    self.state = ArrayState::Done;
                    self.row += 1;
                    return Ok(Some(Err(self.error(
                        "unexpected characters after the array's closing `]`".into(),
                    ))));
                }
                (ArrayState::Opened, Some(b']')) => {
                    self.input.consume(1);
                    self.state = ArrayState::Closed;
                }
                (ArrayState::AfterComma, Some(b']')) => {
                    self.state = ArrayState::Done;
                    self.row += 1;
                    return Ok(Some(Err(self.error(
                        "a `,` is followed by `]`: an element is missing (JSON allows no trailing comma)".into(),
                    ))));
                }
                (_, None) => {
                    self.state = ArrayState::Done;
                    self.row += 1;
                    return Ok(Some(Err(
                        self.error("the input ends before the array's closing `]`".into())
                    )));
                }
                (ArrayState::Opened | ArrayState::AfterComma, Some(_)) => {
                    self.row += 1;
                    let start_line = self.line;
                    let (end, overflow) = self.read_element()?;
                    self.state = match end {
                        ElementEnd::Comma => ArrayState::AfterComma,
                        ElementEnd::CloseBracket => ArrayState::Closed,
                        ElementEnd::EndOfInput => ArrayState::Done,
                    };
                    let mut row = self.current_recipient(start_line, overflow);
                    if end == ElementEnd::EndOfInput && row.is_ok() {
                        // A whole value, but the array around it never closed.
                        row =
                            Err(self.error("the input ends before the array's closing `]`".into()));
                    }
                    return Ok(Some(row));
                }
            }
        }
    }
}

impl<R: Read> Iterator for JsonRecipients<R> {
    type Item = Result<Recipient, RowError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_row() {
            Ok(row) => row,
            Err(err) => {
                self.state = ArrayState::Done;
                self.row += 1;
                Some(Err(self.error(format!("the input cannot be read: {err}"))))
            }
        }
    }
}

/// Streams recipients out of JSON Lines (also called NDJSON): one JSON object per line. Lines
/// are independent, so a bad line is reported by its number and the next is read as usual.
/// Blank lines are skipped (they are not counted as rows, but as lines).
pub struct JsonLinesRecipients<R: Read> {
    input: BufReader<R>,
    /// Lines read so far (the 1-based number of the current one).
    line: u64,
    /// Recipients (non-blank lines) read so far.
    row: u64,
    /// The current line's text (at most [`MAX_ELEMENT_BYTES`] of it).
    text: Vec<u8>,
    done: bool,
}

impl<R: Read> JsonLinesRecipients<R> {
    pub fn new(input: R) -> Result<JsonLinesRecipients<R>, RecipientError> {
        let mut input = BufReader::new(input);
        skip_bom(&mut input).map_err(|err| RecipientError::Unreadable(err.to_string()))?;
        Ok(JsonLinesRecipients {
            input,
            line: 0,
            row: 0,
            text: Vec::new(),
            done: false,
        })
    }

    /// Reads the next line into `self.text` (without its `\n`); false at the end of the input.
    /// A line longer than [`MAX_ELEMENT_BYTES`] is read to its end; the flag says so.
    fn read_line(&mut self) -> io::Result<Option<bool>> {
        self.text.clear();
        let (mut overflow, mut read_any) = (false, false);
        loop {
            let buffer = self.input.fill_buf()?;
            if buffer.is_empty() {
                return Ok(read_any.then_some(overflow));
            }
            read_any = true;
            let newline = buffer.iter().position(|&byte| byte == b'\n');
            let taken = newline.unwrap_or(buffer.len());
            let room = MAX_ELEMENT_BYTES.saturating_sub(self.text.len());
            overflow |= taken > room;
            self.text.extend_from_slice(&buffer[..taken.min(room)]);
            match newline {
                Some(index) => {
                    self.input.consume(index + 1);
                    return Ok(Some(overflow));
                }
                None => {
                    let length = buffer.len();
                    self.input.consume(length);
                }
            }
        }
    }

    fn located(&self, problem: RowProblem) -> RowError {
        RowError {
            row: self.row,
            line: self.line,
            column: problem.column,
            message: problem.message,
        }
    }
}

impl<R: Read> Iterator for JsonLinesRecipients<R> {
    type Item = Result<Recipient, RowError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            let overflow = match self.read_line() {
                Ok(Some(overflow)) => overflow,
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(err) => {
                    self.done = true;
                    self.row += 1;
                    self.line += 1;
                    return Some(Err(self.located(RowProblem::whole_row(format!(
                        "the input cannot be read: {err}"
                    )))));
                }
            };
            self.line += 1;
            if !overflow && self.text.trim_ascii().is_empty() {
                continue;
            }
            self.row += 1;
            if overflow {
                return Some(Err(self.located(RowProblem::whole_row(format!(
                    "the line is more than {MAX_ELEMENT_BYTES} bytes; a recipient row may be at most {} bytes",
                    super::MAX_ROW_BYTES
                )))));
            }
            let row = match serde_json::from_slice::<Value>(&self.text) {
                Ok(value) => recipient_from_value(value),
                Err(err) => Err(RowProblem::whole_row(format!(
                    "malformed JSON at column {}: {}",
                    err.column(),
                    strip_position(&err.to_string())
                ))),
            };
            return Some(row.map_err(|problem| self.located(problem)));
        }
    }
}

fn count_lines(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&byte| byte == b'\n').count() as u64
}

fn skip_bom<R: Read>(input: &mut BufReader<R>) -> io::Result<()> {
    if input.fill_buf()?.starts_with(UTF8_BOM) {
        input.consume(UTF8_BOM.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn array(text: &str) -> Vec<Result<Recipient, RowError>> {
        JsonRecipients::new(text.as_bytes()).unwrap().collect()
    }

    fn lines(text: &str) -> Vec<Result<Recipient, RowError>> {
        JsonLinesRecipients::new(text.as_bytes()).unwrap().collect()
    }

    fn located(row: &Result<Recipient, RowError>) -> (u64, u64, Option<&str>) {
        let err = row.as_ref().unwrap_err();
        (err.row, err.line, err.column.as_deref())
    }

    #[test]
    fn array_elements_become_recipients_with_their_fields() {
        let rows = array(
            "\u{feff}[\n {\"email\": \"ann@example.com\", \"orders\": [{\"sku\": \"A]1,\"}]},\n {\"email\":\"bob@example.org\",\"note\":\"a \\\"quoted\\\" ], {\"}\n]\n",
        );
        assert_eq!(rows.len(), 2);
        let ann = rows[0].as_ref().unwrap();
        assert_eq!(ann.email.as_str(), "ann@example.com");
        assert_eq!(ann.fields["orders"][0]["sku"], "A]1,");
        assert_eq!(
            rows[1].as_ref().unwrap().fields["note"],
            "a \"quoted\" ], {"
        );
        assert!(array("[]").is_empty());
        assert!(array("  [ \n ]  \n").is_empty());
    }

    #[test]
    fn a_bad_element_is_named_by_position_line_and_field_and_reading_goes_on() {
        let rows = array(
            "[\n{\"email\": \"ann@example.com\"},\n{\"email\": 7},\n{\"name\": \"x\"},\n42,\n{\"email\": \"cid@example.com\",\n \"a\": tru},\n{\"email\": \"not-an-address\"},\n{\"email\": \"dee@example.com\"}\n]",
        );
        assert_eq!(rows.len(), 7);
        assert_eq!(located(&rows[1]), (2, 3, Some("email")));
        assert!(
            rows[1]
                .as_ref()
                .unwrap_err()
                .message
                .contains("must be a string")
        );
        assert_eq!(located(&rows[2]), (3, 4, Some("email")));
        assert!(rows[2].as_ref().unwrap_err().message.contains("missing"));
        assert_eq!(located(&rows[3]), (4, 5, None));
        assert!(rows[3].as_ref().unwrap_err().message.contains("a number"));
        // A syntax error is placed on the line it is on, not where its element starts.
        assert_eq!(located(&rows[4]), (5, 7, None));
        assert!(
            rows[4]
                .as_ref()
                .unwrap_err()
                .message
                .contains("malformed JSON")
        );
        assert_eq!(located(&rows[5]), (6, 8, Some("email")));
        assert!(rows[6].is_ok());
    }

    #[test]
    fn a_broken_array_ends_in_one_located_error() {
        let unclosed =
            array("[{\"email\": \"ann@example.com\"},\n{\"email\": \"bob@example.com\"}");
        assert!(unclosed[0].is_ok());
        assert_eq!(located(&unclosed[1]), (2, 2, None));
        assert!(
            unclosed[1]
                .as_ref()
                .unwrap_err()
                .message
                .contains("closing `]`")
        );

        let trailing_comma = array("[{\"email\": \"ann@example.com\"},\n]");
        assert_eq!(trailing_comma.len(), 2);
        assert_eq!(located(&trailing_comma[1]), (2, 2, None));

        let garbage = array("[{\"email\": \"ann@example.com\"}]\n}");
        assert_eq!(located(&garbage[1]), (2, 2, None));
        assert!(
            garbage[1]
                .as_ref()
                .unwrap_err()
                .message
                .contains("after the array")
        );

        let truncated = array("[{\"email\": \"ann@exa");
        assert_eq!(truncated.len(), 1);
        assert!(
            truncated[0]
                .as_ref()
                .unwrap_err()
                .message
                .contains("malformed JSON")
        );
    }

    #[test]
    fn input_that_is_not_an_array_is_refused_before_any_row() {
        assert_eq!(
            JsonRecipients::new(" \n".as_bytes()).err(),
            Some(RecipientError::EmptyJson)
        );
        let object = JsonRecipients::new("{\"email\": \"a@example.com\"}\n".as_bytes()).err();
        assert!(
            matches!(&object, Some(RecipientError::NotJsonArray(why)) if why.contains(".jsonl")),
            "{object:?}"
        );
    }

    #[test]
    fn an_oversized_element_is_refused_without_being_held_and_the_next_is_read() {
        let big = "x".repeat(MAX_ELEMENT_BYTES + 1);
        let rows = array(&format!(
            "[{{\"email\": \"ann@example.com\", \"big\": \"{big}\"}}, {{\"email\": \"bob@example.com\"}}]"
        ));
        assert_eq!(located(&rows[0]), (1, 1, None));
        assert!(rows[0].as_ref().unwrap_err().message.contains("more than"));
        assert!(rows[1].is_ok());

        let rows = lines(&format!(
            "{{\"email\": \"ann@example.com\", \"big\": \"{big}\"}}\n{{\"email\": \"bob@example.com\"}}\n"
        ));
        assert_eq!(located(&rows[0]), (1, 1, None));
        assert!(rows[1].is_ok());
    }

    #[test]
    fn json_lines_rows_are_numbered_and_blank_lines_only_counted_as_lines() {
        let rows = lines(
            "{\"email\": \"ann@example.com\", \"first_name\": \"Ann\"}\r\n\n{\"email\": \"bob@example.org\"}\n{\"email\": \"cid@example.com\", \"x\": }\n[1]\n{\"email\": \"nope\"}\n{\"email\": \"dee@example.com\"}",
        );
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[0].as_ref().unwrap().fields["first_name"], "Ann");
        assert_eq!(rows[1].as_ref().unwrap().email.as_str(), "bob@example.org");
        assert_eq!(located(&rows[2]), (3, 4, None));
        let syntax = &rows[2].as_ref().unwrap_err().message;
        assert!(syntax.contains("malformed JSON at column 35"), "{syntax}");
        assert_eq!(located(&rows[3]), (4, 5, None));
        assert!(rows[3].as_ref().unwrap_err().message.contains("an array"));
        assert_eq!(located(&rows[4]), (5, 6, Some("email")));
        assert!(rows[5].is_ok(), "the last line needs no newline");
        assert!(lines("").is_empty());
        assert!(lines("\n \n").is_empty());
    }

    proptest::proptest! {
        /// Whatever the fields hold (brackets, commas, quotes, escapes, newlines) and however
        /// the array is laid out, the scan finds the elements serde_json finds.
        #[test]
        fn the_scan_reads_what_serde_json_reads(
            fields in proptest::collection::vec(
                proptest::collection::btree_map("[a-z_]{1,8}", "[\\[\\]{},\"\\\\:\n a-zé]{0,12}", 0..4),
                0..6,
            ),
            pretty in proptest::bool::ANY,
        ) {
            let recipients: Vec<Recipient> = fields
                .into_iter()
                .enumerate()
                .map(|(index, fields)| Recipient {
                    email: crate::EmailAddress::parse(&format!("r{index}@example.com")).unwrap(),
                    fields: fields.into_iter().map(|(key, value)| (key, Value::String(value))).filter(|(key, _)| key != "email").collect(),
                })
                .collect();
            let text = if pretty {
                serde_json::to_string_pretty(&recipients).unwrap()
            } else {
                serde_json::to_string(&recipients).unwrap()
            };
            let read: Vec<Recipient> = array(&text).into_iter().map(Result::unwrap).collect();
            proptest::prop_assert_eq!(&read, &recipients);
            let lines: String = recipients.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
            let read: Vec<Recipient> = super::tests::lines(&lines).into_iter().map(Result::unwrap).collect();
            proptest::prop_assert_eq!(read, recipients);
        }
    }

    #[test]
    fn the_format_follows_the_extension_or_the_media_type() {
        use crate::RecipientFormat;
        use std::path::Path;
        for (path, format) in [
            ("r.csv", RecipientFormat::Csv),
            ("r.CSV", RecipientFormat::Csv),
            ("r.json", RecipientFormat::JsonArray),
            ("r", RecipientFormat::JsonArray),
            ("r.jsonl", RecipientFormat::JsonLines),
            ("dir.d/r.NDJSON", RecipientFormat::JsonLines),
        ] {
            assert_eq!(
                RecipientFormat::from_path(Path::new(path)),
                format,
                "{path}"
            );
        }
        assert_eq!(
            RecipientFormat::from_media_type("application/x-ndjson"),
            Some(RecipientFormat::JsonLines)
        );
        assert_eq!(
            RecipientFormat::from_media_type("application/jsonl"),
            Some(RecipientFormat::JsonLines)
        );
        assert_eq!(
            RecipientFormat::from_media_type("text/csv"),
            Some(RecipientFormat::Csv)
        );
        assert_eq!(
            RecipientFormat::from_media_type("application/json"),
            Some(RecipientFormat::JsonArray)
        );
        assert_eq!(RecipientFormat::from_media_type("application/xml"), None);
    }
}
