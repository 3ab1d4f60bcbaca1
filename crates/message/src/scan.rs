//! Locating a variable's uses in template source, for error messages that name a line.
//!
//! minijinja's static analysis says *which* variables a template needs but not *where*; this
//! light scan of the `{{ … }}` and `{% … %}` tags finds the line. It only has to be good
//! enough to point a person at the right place: the set of names comes from minijinja.

/// How a variable is used in a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    /// At least one use that fails or prints empty when the variable is missing.
    Unguarded { line: usize },
    /// Every use is `x | default(…)`, `x is defined` or `x is undefined`.
    OnlyGuarded,
}

pub(crate) fn first_unguarded_use(source: &str, name: &str) -> Use {
    let bytes = source.as_bytes();
    let mut found_any = false;
    let mut i = 0;
    while let Some(open) = find_tag_open(bytes, i) {
        let close_pat: &[u8] = if bytes[open + 1] == b'{' {
            b"}}"
        } else {
            b"%}"
        };
        let body_start = open + 2;
        let body_end = find(bytes, body_start, close_pat).unwrap_or(bytes.len());
        let mut j = body_start;
        while j < body_end {
            let b = bytes[j];
            if b == b'"' || b == b'\'' {
                // Skip string literals: a name inside quotes is not a use.
                j += 1;
                while j < body_end && bytes[j] != b {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                j += 1;
                continue;
            }
            if b.is_ascii_alphabetic() || b == b'_' {
                let start = j;
                while j < body_end && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                    j += 1;
                }
                if &source[start..j] == name && is_variable_position(bytes, body_start, start, j) {
                    found_any = true;
                    if !is_guarded(&source[j..body_end]) {
                        let line = source[..start].matches('\n').count() + 1;
                        return Use::Unguarded { line };
                    }
                }
                continue;
            }
            j += 1;
        }
        i = body_end + 2;
    }
    if found_any {
        Use::OnlyGuarded
    } else {
        // minijinja saw a use the scan did not (unusual syntax): report it, at line 1.
        Use::Unguarded { line: 1 }
    }
}

fn find_tag_open(bytes: &[u8], from: usize) -> Option<usize> {
    let mut k = from;
    while k + 1 < bytes.len() {
        if bytes[k] == b'{' && (bytes[k + 1] == b'{' || bytes[k + 1] == b'%') {
            return Some(k);
        }
        if bytes[k] == b'{' && bytes[k + 1] == b'#' {
            // Comments are not code.
            k = find(bytes, k + 2, b"#}").map_or(bytes.len(), |end| end + 2);
            continue;
        }
        k += 1;
    }
    None
}

fn find(bytes: &[u8], from: usize, pat: &[u8]) -> Option<usize> {
    bytes
        .get(from..)?
        .windows(pat.len())
        .position(|w| w == pat)
        .map(|p| p + from)
}

/// Not an attribute (`x.name`), a filter or test name (`| name`, `is name`) or a keyword
/// argument (`name=`).
fn is_variable_position(bytes: &[u8], body_start: usize, start: usize, end: usize) -> bool {
    let before = bytes[body_start..start]
        .iter()
        .rev()
        .find(|b| !b.is_ascii_whitespace());
    if matches!(before, Some(b'.') | Some(b'|')) {
        return false;
    }
    let prefix = String::from_utf8_lossy(&bytes[body_start..start]);
    let trimmed = prefix.trim_end();
    if trimmed.ends_with(" is") || trimmed.ends_with(" is not") {
        return false;
    }
    let after = bytes[end..].iter().find(|b| !b.is_ascii_whitespace());
    let after2 = bytes[end..]
        .iter()
        .filter(|b| !b.is_ascii_whitespace())
        .nth(1);
    !(after == Some(&b'=') && after2 != Some(&b'='))
}

fn is_guarded(rest: &str) -> bool {
    let rest: String = rest.split_whitespace().collect::<Vec<_>>().join(" ");
    let compact = rest.replace(' ', "");
    compact.starts_with("|default")
        || compact.starts_with("|d(")
        || compact == "|d"
        || rest.starts_with("is defined")
        || rest.starts_with("is not defined")
        || rest.starts_with("is undefined")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_line_of_a_plain_use() {
        let src = "Hello\n{{ user.name }}\n{{ first_name }}";
        assert_eq!(
            first_unguarded_use(src, "first_name"),
            Use::Unguarded { line: 3 }
        );
        assert_eq!(first_unguarded_use(src, "user"), Use::Unguarded { line: 2 });
    }

    #[test]
    fn ignores_attributes_filters_strings_comments_and_kwargs() {
        let src = "{# city #}{{ x.city }}{{ y | city }}{{ 'city' }}{{ f(city=1) }}\n{{ city }}";
        assert_eq!(first_unguarded_use(src, "city"), Use::Unguarded { line: 2 });
    }

    #[test]
    fn default_and_defined_guard_a_use() {
        assert_eq!(
            first_unguarded_use("{{ nick | default('friend') }}", "nick"),
            Use::OnlyGuarded
        );
        assert_eq!(
            first_unguarded_use("{% if nick is defined %}{{ nick }}{% endif %}", "nick"),
            Use::Unguarded { line: 1 }
        );
        assert_eq!(
            first_unguarded_use("{% if nick is defined %}hi{% endif %}", "nick"),
            Use::OnlyGuarded
        );
    }
}
