//! Click and open tracking, applied to the HTML template's *source* when it is compiled.
//!
//! minijinja escapes `/` in HTML output, and rewriting rendered HTML would mean parsing every
//! message; instead each trackable `<a href="…">` of the template becomes
//! `href="{{ _tracking.clicks[N] }}"` once, and the per-recipient redirect URLs are handed in
//! as values at render time. The click endpoint finds link N's target with
//! [`tracked_links`] over the same stored template, so the redirect can only ever go to a URL
//! the campaign contains (no open redirect).
//!
//! A link is tracked when its `href` is a literal `http://` or `https://` URL. Not tracked:
//! links with a `data-notrack` attribute, hrefs with template syntax (they differ per
//! recipient, so there is no one URL to check a redirect against — this includes
//! `{{ unsubscribe_url }}`, which is never rewritten), and any other scheme (`mailto:`, `#…`).

/// The name of the service variable the rewritten template reads its URLs from. The leading
/// underscore keeps it out of the way of recipient fields.
pub(crate) const TRACKING_VARIABLE: &str = "_tracking";

/// One trackable link of an HTML template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TemplateLink {
    /// Byte range of the href value in the source (inside the quotes, if any).
    value: std::ops::Range<usize>,
    quoted: bool,
    /// The attribute text as written (HTML-escaped), for rendering without tracking.
    pub(crate) raw: String,
    /// The URL the browser would follow (entities decoded): the redirect target.
    pub(crate) url: String,
}

/// The URLs of the template's tracked links, in order: a click token's link index is an
/// index into this list.
pub fn tracked_links(html: &str) -> Vec<String> {
    scan(html).into_iter().map(|link| link.url).collect()
}

/// The template source with tracked hrefs (when `clicks`) and the open pixel (when `opens`)
/// replaced by reads of [`TRACKING_VARIABLE`], and the links that were rewritten.
pub(crate) fn rewrite(html: &str, clicks: bool, opens: bool) -> (String, Vec<TemplateLink>) {
    let links = if clicks { scan(html) } else { Vec::new() };
    let mut out = String::with_capacity(html.len() + links.len() * 40 + 200);
    let mut at = 0;
    for (index, link) in links.iter().enumerate() {
        out.push_str(&html[at..link.value.start]);
        let expression = format!("{{{{ {} }}}}", click_variable(index));
        if link.quoted {
            out.push_str(&expression);
        } else {
            out.push('"');
            out.push_str(&expression);
            out.push('"');
        }
        at = link.value.end;
    }
    out.push_str(&html[at..]);
    if opens {
        let pixel = open_pixel_block();
        match rfind_ignore_case(&out, "</body") {
            Some(position) => out.insert_str(position, &pixel),
            None => out.push_str(&pixel),
        }
    }
    (out, links)
}

/// The expression a tracked link's href is rewritten to: link `index`'s URL.
pub(crate) fn click_variable(index: usize) -> String {
    format!("{TRACKING_VARIABLE}.clicks[{index}]")
}

/// The open pixel's markup around its URL, as [`open_pixel_block`] writes it.
pub(crate) const OPEN_PIXEL_BEFORE_URL: &str = "<img src=\"";
pub(crate) const OPEN_PIXEL_AFTER_URL: &str =
    "\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0;width:1px;height:1px\">";

/// The block added before `</body>` when opens are tracked: the pixel, only when this
/// recipient has a pixel URL (`_tracking.open_pixel` is none for a preview).
pub(crate) fn open_pixel_block() -> String {
    format!(
        "{{% if {TRACKING_VARIABLE}.open_pixel %}}{OPEN_PIXEL_BEFORE_URL}{{{{ {TRACKING_VARIABLE}.open_pixel }}}}{OPEN_PIXEL_AFTER_URL}{{% endif %}}"
    )
}

fn rfind_ignore_case(haystack: &str, needle: &str) -> Option<usize> {
    let lower = haystack.to_ascii_lowercase();
    lower.rfind(needle)
}

/// Finds the trackable `<a>` tags' href values.
fn scan(html: &str) -> Vec<TemplateLink> {
    let bytes = html.as_bytes();
    let mut links = Vec::new();
    let mut i = 0;
    while i + 2 < bytes.len() {
        let is_anchor = bytes[i] == b'<'
            && bytes[i + 1].eq_ignore_ascii_case(&b'a')
            && bytes[i + 2].is_ascii_whitespace();
        if !is_anchor {
            i += 1;
            continue;
        }
        let (tag_end, attributes) = attributes(html, i + 2);
        i = tag_end;
        if attributes
            .iter()
            .any(|a| a.name.eq_ignore_ascii_case("data-notrack"))
        {
            continue;
        }
        // Template syntax among the attributes (`{% if %}` around one) makes the tag's
        // shape depend on the recipient: leave it alone.
        if attributes.iter().any(|a| a.name.contains(['{', '}', '%'])) {
            continue;
        }
        let Some(href) = attributes
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case("href"))
        else {
            continue;
        };
        let Some((value, quoted)) = href.value.clone() else {
            continue;
        };
        let raw = &html[value.clone()];
        if raw.contains("{{") || raw.contains("{%") || raw.contains("{#") {
            continue;
        }
        let url = decode_entities(raw.trim());
        let lower = url.to_ascii_lowercase();
        if !(lower.starts_with("http://") || lower.starts_with("https://")) {
            continue;
        }
        links.push(TemplateLink {
            value,
            quoted,
            raw: raw.to_string(),
            url,
        });
        if links.len() == usize::from(u16::MAX) {
            // Link indices are 16 bits in click tokens; nobody writes more links than that.
            break;
        }
    }
    links
}

struct Attribute<'a> {
    name: &'a str,
    /// The value's byte range and whether it was quoted.
    value: Option<(std::ops::Range<usize>, bool)>,
}

/// Reads attributes from `start` up to the tag's closing `>`; returns the position after it.
fn attributes(html: &str, start: usize) -> (usize, Vec<Attribute<'_>>) {
    let bytes = html.as_bytes();
    let mut attributes = Vec::new();
    let mut i = start;
    loop {
        while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b'/') {
            i += 1;
        }
        if i >= bytes.len() {
            return (i, attributes);
        }
        if bytes[i] == b'>' {
            return (i + 1, attributes);
        }
        let name_start = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() && !b"=>/".contains(&bytes[i]) {
            i += 1;
        }
        let name = &html[name_start..i];
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == b'=' {
            i += 1;
            while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            if i < bytes.len() && (bytes[i] == b'"' || bytes[i] == b'\'') {
                let quote = bytes[i];
                let value_start = i + 1;
                let value_end = html[value_start..]
                    .bytes()
                    .position(|b| b == quote)
                    .map_or(bytes.len(), |p| value_start + p);
                attributes.push(Attribute {
                    name,
                    value: Some((value_start..value_end, true)),
                });
                i = (value_end + 1).min(bytes.len());
            } else {
                let value_start = i;
                while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'>' {
                    i += 1;
                }
                attributes.push(Attribute {
                    name,
                    value: Some((value_start..i, false)),
                });
            }
        } else if name.is_empty() {
            // A stray character the loop cannot consume as a name: step over it.
            i += 1;
        } else {
            attributes.push(Attribute { name, value: None });
        }
    }
}

/// Decodes the character references a URL in an attribute may contain (`&amp;` above all).
fn decode_entities(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let decoded = rest.find(';').filter(|&end| end <= 10).and_then(|end| {
            let entity = &rest[1..end];
            let c = match entity {
                "amp" => Some('&'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "lt" => Some('<'),
                "gt" => Some('>'),
                _ => {
                    let number = entity.strip_prefix('#')?;
                    let code = match number.strip_prefix(['x', 'X']) {
                        Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                        None => number.parse().ok()?,
                    };
                    char::from_u32(code)
                }
            }?;
            Some((c, end + 1))
        });
        match decoded {
            Some((c, consumed)) => {
                out.push(c);
                rest = &rest[consumed..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const HTML: &str = r#"<html><body>
<p>Hi {{ first_name }}, <a href="https://example.com/sale?a=1&amp;b=2">the sale</a>
<A class=x HREF='http://example.com/two'>two</A>
<a href="{{ unsubscribe_url }}">unsubscribe</a>
<a data-notrack href="https://example.com/private">private</a>
<a href="mailto:help@example.com">mail</a>
<a href="https://example.com/{{ id }}">personal</a>
<a href=https://example.com/bare>bare</a>
</body></html>"#;

    #[test]
    fn only_literal_http_links_without_opt_out_are_tracked() {
        assert_eq!(
            tracked_links(HTML),
            [
                "https://example.com/sale?a=1&b=2",
                "http://example.com/two",
                "https://example.com/bare"
            ]
        );
    }

    #[test]
    fn rewriting_replaces_only_the_tracked_hrefs_and_adds_the_pixel_before_body_end() {
        let (source, links) = rewrite(HTML, true, true);
        assert_eq!(links.len(), 3);
        assert!(source.contains(r#"<a href="{{ _tracking.clicks[0] }}">the sale</a>"#));
        assert!(source.contains(r#"<A class=x HREF='{{ _tracking.clicks[1] }}'>two</A>"#));
        assert!(source.contains(r#"<a href="{{ _tracking.clicks[2] }}">bare</a>"#));
        assert!(source.contains(r#"<a href="{{ unsubscribe_url }}">unsubscribe</a>"#));
        assert!(source.contains(r#"href="https://example.com/private""#));
        assert!(source.contains(r#"href="https://example.com/{{ id }}""#));
        let pixel = source.find("_tracking.open_pixel").unwrap();
        assert!(pixel < source.find("</body>").unwrap());

        let (untracked, none) = rewrite(HTML, false, false);
        assert_eq!(untracked, HTML);
        assert!(none.is_empty());
    }

    #[test]
    fn a_template_without_body_gets_the_pixel_at_the_end() {
        let (source, _) = rewrite("<p>short</p>", false, true);
        assert!(source.starts_with("<p>short</p>{% if _tracking.open_pixel %}<img"));
    }

    #[test]
    fn entities_decode_and_broken_ones_stay() {
        assert_eq!(
            decode_entities("a&amp;b&#47;c&#x2F;d&bogus;e&"),
            "a&b/c/d&bogus;e&"
        );
    }
}
