//! The content of the DATA command as it goes on the wire: dot-stuffed (RFC 5321 §4.5.2) and
//! terminated by `CRLF.CRLF`.
//!
//! lettre's `AsyncSmtpConnection::message` stuffs a byte at a time through a state machine
//! (about 34 µs for a 10 KB message, a tenth of a worker's CPU per message). Here the runs
//! between `CRLF.` occurrences, found with `memchr::memmem`, are copied whole, into a buffer
//! the connection keeps from one message to the next.

/// What goes after the `354` reply: `content` with its final line break (if any) removed,
/// every `.` that starts a line doubled, then `CRLF.CRLF`. Replaces what `out` held.
///
/// The same bytes as lettre's `message`: its codec doubles a `.` at the start of the content
/// and after each CRLF (a lone LF does not start a line for it, nor for us), and it always
/// appends `CRLF.CRLF`, which is why a content that already ends with CRLF loses that CRLF
/// first (otherwise the message would gain an empty last line).
pub(crate) fn stuff_into(content: &str, out: &mut String) {
    out.clear();
    let content = content.strip_suffix("\r\n").unwrap_or(content);
    out.reserve(content.len() + content.len() / 256 + 8);
    if content.starts_with('.') {
        out.push('.');
    }
    let mut start = 0;
    for found in memchr::memmem::find_iter(content.as_bytes(), b"\r\n.") {
        // `found + 3` is just past an ASCII `.`, so a char boundary.
        let dot_end = found + 3;
        out.push_str(&content[start..dot_end]);
        out.push('.');
        start = dot_end;
    }
    out.push_str(&content[start..]);
    out.push_str("\r\n.\r\n");
}

/// A preformatted string for lettre's `command`, which writes what `Display` gives and reads
/// one reply: with the stuffed content and its terminator, exactly what `message` would have
/// written, in one write instead of two.
pub(crate) struct Stuffed<'a>(pub(crate) &'a str);

impl std::fmt::Display for Stuffed<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// lettre 0.11's `ClientCodec::encode` and `message_iter`, transcribed: the reference
    /// the memchr version must match byte for byte.
    fn reference(content: &[u8]) -> Vec<u8> {
        #[derive(Clone, Copy)]
        enum Status {
            Middle,
            AfterCr,
            LineStart,
        }
        let content = content.strip_suffix(b"\r\n").unwrap_or(content);
        let mut status = Status::LineStart;
        let mut out = Vec::new();
        for &b in content {
            out.push(b);
            status = match (b, status) {
                (b'\r', _) => Status::AfterCr,
                (b'\n', Status::AfterCr) => Status::LineStart,
                (_, Status::AfterCr) => Status::Middle,
                (b'.', Status::LineStart) => {
                    out.push(b'.');
                    Status::Middle
                }
                (_, Status::LineStart) => Status::Middle,
                (_, status) => status,
            };
        }
        out.extend_from_slice(b"\r\n.\r\n");
        out
    }

    fn stuffed(content: &str) -> String {
        let mut out = String::from("left over from the previous message");
        stuff_into(content, &mut out);
        out
    }

    #[test]
    fn dots_that_start_lines_are_doubled() {
        assert_eq!(stuffed(""), "\r\n.\r\n");
        assert_eq!(stuffed("\r\n"), "\r\n.\r\n");
        assert_eq!(stuffed("."), "..\r\n.\r\n");
        assert_eq!(stuffed(".\r\n"), "..\r\n.\r\n");
        assert_eq!(stuffed("a\r\n.\r\nb"), "a\r\n..\r\nb\r\n.\r\n");
        assert_eq!(stuffed("a\r\n..b\r\n"), "a\r\n...b\r\n.\r\n");
        assert_eq!(stuffed("a\r\n.\r\n.\r\n"), "a\r\n..\r\n..\r\n.\r\n");
        // A lone LF or CR does not start a line; a dot mid-line stays single.
        assert_eq!(stuffed("a\n.b\r.c d.e"), "a\n.b\r.c d.e\r\n.\r\n");
        assert_eq!(stuffed("a\r\r\n.b"), "a\r\r\n..b\r\n.\r\n");
        assert_eq!(stuffed("é\r\n.é"), "é\r\n..é\r\n.\r\n");
    }

    #[test]
    fn matches_lettre_at_every_buffer_boundary_of_a_large_message() {
        // Dot lines around the sizes where buffers fill (8 KiB, 64 KiB), and a CRLF split
        // over each boundary.
        let mut content = String::new();
        for boundary in [8192usize, 65536] {
            for offset in [-3i64, -2, -1, 0, 1, 2] {
                let target = (boundary as i64 + offset) as usize;
                while content.len() < target {
                    content.push('x');
                }
                content.push_str("\r\n.\r\n..\r\n");
            }
        }
        content.push_str("end\r\n");
        assert_eq!(
            stuffed(&content).as_bytes(),
            reference(content.as_bytes()).as_slice()
        );
    }

    proptest! {
        #[test]
        fn matches_lettre_byte_for_byte(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("\r\n".to_string()),
                    Just(".".to_string()),
                    Just("\r".to_string()),
                    Just("\n".to_string()),
                    Just("\r\n.".to_string()),
                    Just("é".to_string()),
                    "[a-z .]{0,12}",
                ],
                0..64,
            )
        ) {
            let content: String = parts.concat();
            let ours = stuffed(&content).into_bytes();
            prop_assert_eq!(ours, reference(content.as_bytes()));
        }
    }
}
