//! Every header the MIME writer emits is folded: no line of the header section passes 998
//! octets, none passes 78 where the value has a place to fold, and an independent parser
//! (mail-parser) decodes each header back to the value it was written from.

mod common;

use common::*;
use mail_parser::MessageParser;
use message::{CompiledCampaign, MessageSettings, RenderedMessage};
use proptest::prelude::*;
use serde_json::json;

/// Text drawn from ASCII letters, punctuation that needs quoting or encoding (`"`, `\`, `,`,
/// `=?`), spaces (single and in runs), non-ASCII letters of 2, 3 and 4 UTF-8 bytes, and long
/// words without a space.
fn text(max_pieces: usize) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => "[a-zA-Z0-9]{1,8}",
        2 => Just(" ".to_string()),
        1 => Just("  ".to_string()),
        1 => "[\"\\\\,.;:()<>@=?!#'~-]{1,3}",
        2 => "[éüßжשלום中文字😀🎉]{1,6}",
        1 => "[a-z]{60,120}",
        1 => "[é中😀]{30,60}",
        1 => Just("=?UTF-8?B?eA==?=".to_string()),
        1 => Just("\t".to_string()),
    ];
    proptest::collection::vec(piece, 0..max_pieces).prop_map(|pieces| pieces.concat())
}

/// A display name as the document validation admits it: no control characters, at most
/// 200 characters.
fn display_name() -> impl Strategy<Value = String> {
    text(30).prop_map(|name| name.replace('\t', " ").chars().take(200).collect())
}

fn subject() -> impl Strategy<Value = String> {
    text(60).prop_filter("a subject is not blank", |s| !s.trim().is_empty())
}

fn build(from_name: &str, reply_name: &str, subject: &str) -> Vec<u8> {
    let doc = document(json!({
        "name": "Headers",
        "from": { "email": "news@shop.example", "name": from_name },
        "reply_to": { "email": "help@bücher.example", "name": reply_name },
        "templates": { "subject": "x", "text": "Hello" },
    }));
    let compiled = CompiledCampaign::compile(&doc, &MessageSettings::default()).unwrap();
    let rendered = RenderedMessage {
        campaign_id: CAMPAIGN_ID,
        recipient_id: campaign::RecipientId::new(7),
        to: "reader@bücher.example".to_string(),
        subject: subject.to_string(),
        html: None,
        text: Some("Hello\n".to_string()),
        unsubscribe_url: "https://m.shop.example/u/TOKEN7".to_string(),
        unsubscribe_mailto: Some("mailto:unsubscribe@shop.example?subject=TOKEN7".to_string()),
    };
    compiled
        .build(&rendered, &options())
        .unwrap()
        .content
        .to_vec()
}

fn header_lines(bytes: &[u8]) -> Vec<&[u8]> {
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header section");
    bytes[..end].split(|&b| b == b'\n').collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn headers_are_folded_and_decode_to_their_values(
        from_name in display_name(),
        reply_name in display_name(),
        subject in subject(),
    ) {
        let bytes = build(&from_name, &reply_name, &subject);
        for line in header_lines(&bytes) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            // Every token here (addresses, links, ids) is short, so every line can fold.
            prop_assert!(line.len() <= 78, "{} octets: {:?}", line.len(), String::from_utf8_lossy(line));
            prop_assert!(line.is_ascii(), "{:?}", String::from_utf8_lossy(line));
            prop_assert!(!line.iter().all(|b| *b == b' '), "a folded line holds only white space");
        }
        let parsed = MessageParser::default().parse(&bytes).expect("parses");
        prop_assert_eq!(parsed.subject(), Some(subject.as_str()));
        let from = parsed.from().and_then(|a| a.first()).expect("a From mailbox");
        let expected = Some(from_name.trim()).filter(|name| !name.is_empty());
        prop_assert_eq!(from.name(), expected);
        prop_assert_eq!(from.address(), Some("news@shop.example"));
        let reply = parsed.reply_to().and_then(|a| a.first()).expect("a Reply-To mailbox");
        let expected = Some(reply_name.trim()).filter(|name| !name.is_empty());
        prop_assert_eq!(reply.name(), expected);
        prop_assert_eq!(reply.address(), Some("help@xn--bcher-kva.example"));
        prop_assert_eq!(
            parsed.to().and_then(|a| a.first()).and_then(|to| to.address()),
            Some("reader@xn--bcher-kva.example")
        );
    }
}

#[test]
fn words_too_long_for_a_line_are_encoded_and_folded() {
    let long_word = "x".repeat(150);
    let bytes = build(&long_word, &"é".repeat(200), &"y".repeat(900));
    for line in header_lines(&bytes) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(line.len() <= 78, "{}", String::from_utf8_lossy(line));
    }
    let parsed = MessageParser::default().parse(&bytes).unwrap();
    assert_eq!(parsed.subject(), Some("y".repeat(900).as_str()));
    assert_eq!(
        parsed.from().and_then(|a| a.first()).and_then(|f| f.name()),
        Some(long_word.as_str())
    );
}

/// The first List-Id mailbox as mail-parser reads it: (description, identifier).
fn list_id(parsed: &mail_parser::Message) -> (Option<String>, String) {
    let entry = parsed
        .list_id()
        .as_address()
        .and_then(|a| a.first())
        .expect("a List-Id");
    (
        entry.name().map(str::to_string),
        entry.address().expect("a List-Id identifier").to_string(),
    )
}

/// The links of List-Unsubscribe, in order.
fn unsubscribe_links(parsed: &mail_parser::Message) -> Vec<String> {
    parsed
        .list_unsubscribe()
        .as_address()
        .map(|links| {
            links
                .iter()
                .filter_map(|link| link.address().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A campaign's List-Id (RFC 2919, with a non-ASCII description), its `mailto:`
/// List-Unsubscribe (after the https one, RFC 8058) and its Feedback-ID reach the message as
/// an independent parser reads them.
#[test]
fn list_id_mailto_unsubscribe_and_feedback_id_come_from_the_document() {
    let doc = document(json!({
        "name": "Headers",
        "from": { "email": "news@shop.example" },
        "templates": { "subject": "Hi", "text": "Hello" },
        "list_id": { "name": "Bücher & Co. «news»", "id": "news.riverside.example" },
        "unsubscribe_mailto": "leave@bücher.example",
        "feedback_id": "riverside-books",
    }));
    let compiled = CompiledCampaign::compile(&doc, &MessageSettings::default()).unwrap();
    let ctx = message::RecipientContext {
        unsubscribe_mailto: None,
        ..context(7)
    };
    let rendered = compiled
        .render(&recipient(json!({"email": "reader@shop.example"})), &ctx)
        .unwrap();
    let bytes = compiled.build(&rendered, &options()).unwrap().content;
    for line in header_lines(&bytes) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(line.is_ascii(), "{:?}", String::from_utf8_lossy(line));
        assert!(line.len() <= 998);
    }
    let parsed = MessageParser::default().parse(&bytes).unwrap();
    assert_eq!(
        list_id(&parsed),
        (
            Some("Bücher & Co. «news»".to_string()),
            "news.riverside.example".to_string()
        )
    );
    let links = unsubscribe_links(&parsed);
    assert_eq!(
        links,
        [
            "https://m.shop.example/u/TOKEN7".to_string(),
            "mailto:leave@xn--bcher-kva.example?subject=unsubscribe&body=https:%2F%2Fm.shop.example%2Fu%2FTOKEN7".to_string(),
        ],
        "the https link first, then the mailto"
    );
    assert_eq!(
        parsed.header_raw("Feedback-ID").map(str::trim),
        Some(format!("{CAMPAIGN_ID}:riverside-books").as_str())
    );
}

/// Without those fields: the List-Id is the From address read as a list name, List-Unsubscribe
/// holds the https link alone and there is no Feedback-ID.
#[test]
fn the_default_list_id_is_derived_from_the_sender() {
    let doc = document(json!({
        "name": "Headers",
        "from": { "email": "Spring.News+promo@Shop.Example", "name": "Shop" },
        "templates": { "subject": "Hi", "text": "Hello" },
    }));
    let compiled = CompiledCampaign::compile(&doc, &MessageSettings::default()).unwrap();
    let ctx = message::RecipientContext {
        unsubscribe_mailto: None,
        ..context(7)
    };
    let rendered = compiled
        .render(&recipient(json!({"email": "reader@shop.example"})), &ctx)
        .unwrap();
    let bytes = compiled.build(&rendered, &options()).unwrap().content;
    let parsed = MessageParser::default().parse(&bytes).unwrap();
    assert_eq!(
        list_id(&parsed),
        (None, "spring-news-promo.shop.example".to_string())
    );
    assert_eq!(
        unsubscribe_links(&parsed),
        ["https://m.shop.example/u/TOKEN7".to_string()]
    );
    assert_eq!(parsed.header_raw("Feedback-ID"), None);
}

#[test]
fn a_variant_sends_its_own_subject_and_sender_and_names_itself_only_when_asked() {
    let mut value = json!({
        "name": "A/B",
        "from": { "email": "news@shop.example", "name": "Shop" },
        "templates": { "subject": "Base {{ first_name }}", "html": "<p>Base</p>", "text": "Base" },
        "variants": [
            { "name": "A" },
            { "name": "B-2", "subject": "Other {{ first_name }}", "from": { "email": "editor@shop.example" } }
        ],
        "ab_test": { "test_fraction": 0.2, "metric": "opens", "decide_after": "4h" }
    });
    let reader = recipient(json!({"email": "reader@shop.example", "first_name": "Ann"}));
    let build_variant = |doc: &campaign::CampaignDocument, index: usize| {
        let compiled =
            CompiledCampaign::compile_variant(doc, index, &MessageSettings::default()).unwrap();
        let rendered = compiled.render(&reader, &context(7)).unwrap();
        let bytes = compiled.build(&rendered, &options()).unwrap().content;
        let parsed = MessageParser::default().parse(&bytes[..]).unwrap();
        (
            parsed.subject().unwrap().to_string(),
            parsed
                .from()
                .unwrap()
                .first()
                .unwrap()
                .address()
                .unwrap()
                .to_string(),
            parsed
                .header_raw("X-Campaign-Variant")
                .map(|v| v.trim().to_string()),
        )
    };
    let doc = document(value.clone());
    assert_eq!(
        build_variant(&doc, 0),
        ("Base Ann".into(), "news@shop.example".into(), None),
        "a variant keeps what it does not name; no header by default"
    );
    assert_eq!(
        build_variant(&doc, 1),
        ("Other Ann".into(), "editor@shop.example".into(), None)
    );
    value["ab_test"]["variant_header"] = json!(true);
    let doc = document(value);
    assert_eq!(build_variant(&doc, 1).2.as_deref(), Some("B-2"));
}
