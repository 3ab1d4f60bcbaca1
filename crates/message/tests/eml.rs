//! The produced messages parse back with independent parsers (mail-parser, Python's email)
//! into the same subject, addresses and parts.

mod common;

use common::*;
use mail_parser::MessageParser;
use message::{BuildOptions, CompiledCampaign, MessageSettings, OutgoingMessage, preview};
use serde_json::json;

fn tricky() -> (campaign::CampaignDocument, campaign::Recipient) {
    let doc = campaign(
        "{{ first_name }}, 🎉 your Ünïcode digest — {{ city }}",
        "<h1>Hello {{ first_name }}</h1>\n<p>From {{ city }} with “quotes” and a long line: {{ long }}</p>\n<a href=\"{{ unsubscribe_url }}\">Unsubscribe</a>\n",
        "Hello {{ first_name }}\nFrom {{ city }}\n{{ long }}\nUnsubscribe: {{ unsubscribe_url }}\n",
        "strict",
    );
    let r = recipient(json!({
        "email": "zoë@shop.example",
        "first_name": "<script>alert(\"x\")</script> Zoë 😀",
        "city": "מרכז תל אביב",
        "long": "word ".repeat(60),
    }));
    (doc, r)
}

fn build(
    doc: &campaign::CampaignDocument,
    r: &campaign::Recipient,
    id: i64,
) -> (message::RenderedMessage, OutgoingMessage) {
    let compiled = CompiledCampaign::compile(doc, &MessageSettings::default()).unwrap();
    let rendered = compiled.render(r, &context(id)).unwrap();
    let out = compiled.build(&rendered, &options()).unwrap();
    (rendered, out)
}

fn crlf(s: &str) -> String {
    s.replace('\n', "\r\n")
}

#[test]
fn lines_end_in_crlf_and_stay_under_998_octets() {
    let (doc, r) = tricky();
    let (_, out) = build(&doc, &r, 42);
    let bytes = &out.content;
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            assert_eq!(bytes[i - 1], b'\r', "bare LF at {i}");
        }
        if b == b'\r' {
            assert_eq!(bytes.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
    }
    for line in bytes.split(|&b| b == b'\n') {
        assert!(line.len() <= 998);
    }
    assert!(bytes.ends_with(b"\r\n"));
    let head =
        std::str::from_utf8(&bytes[..bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap()])
            .unwrap();
    assert!(
        head.is_ascii() || head.contains("zoë@"),
        "only the EAI address may be raw UTF-8"
    );
}

#[test]
fn mail_parser_reads_back_subject_addresses_parts_and_list_headers() {
    let (doc, r) = tricky();
    let (rendered, out) = build(&doc, &r, 42);
    let parsed = MessageParser::default()
        .parse(&out.content)
        .expect("parses");
    assert_eq!(parsed.subject(), Some(rendered.subject.as_str()));
    let from = parsed.from().and_then(|a| a.first()).unwrap();
    assert_eq!(from.name(), Some("Shop «Ünïcode» News"));
    assert_eq!(from.address(), Some("news@shop.example"));
    let reply = parsed.reply_to().and_then(|a| a.first()).unwrap();
    assert_eq!(reply.name(), Some("Help, Desk"));
    assert_eq!(reply.address(), Some("help@shop.example"));
    assert_eq!(
        parsed.to().and_then(|a| a.first()).unwrap().address(),
        Some("zoë@shop.example")
    );
    assert_eq!(
        parsed.message_id(),
        Some(format!("{CAMPAIGN_ID}.42@shop.example").as_str())
    );
    assert_eq!(
        out.header("Message-ID"),
        Some(format!("<{CAMPAIGN_ID}.42@shop.example>"))
    );
    // The build names the message after its campaign and recipient (outbox files, logs).
    assert_eq!(out.campaign_id, Some(CAMPAIGN_ID.to_string()));
    assert_eq!(out.recipient_id.as_deref(), Some("42"));
    assert_eq!(parsed.text_body_count(), 1);
    assert_eq!(parsed.html_body_count(), 1);
    assert_eq!(
        parsed.body_text(0).unwrap(),
        crlf(rendered.text.as_ref().unwrap())
    );
    assert_eq!(
        parsed.body_html(0).unwrap(),
        crlf(rendered.html.as_ref().unwrap())
    );
    assert_eq!(
        parsed
            .header_raw("List-Unsubscribe")
            .map(|v| v.split_whitespace().collect::<String>()),
        Some(
            "<https://m.shop.example/u/TOKEN42>,<mailto:unsubscribe@shop.example?subject=TOKEN42>"
                .to_string()
        )
    );
    assert_eq!(
        parsed.header_raw("List-Unsubscribe-Post").map(str::trim),
        Some("List-Unsubscribe=One-Click")
    );
    assert_eq!(
        parsed.header_raw("X-Campaign-ID").map(str::trim),
        Some(CAMPAIGN_ID.to_string().as_str())
    );
    assert_eq!(
        parsed.header_raw("X-Recipient-ID").map(str::trim),
        Some("42")
    );
    assert!(parsed.date().is_some());
    assert_eq!(out.envelope.to().collect::<Vec<_>>(), ["zoë@shop.example"]);
    assert_eq!(out.envelope.from(), "news@shop.example");
}

#[test]
fn python_email_reads_back_the_same_message() {
    if python_with(&["email"]).is_none() {
        return;
    }
    let (doc, r) = tricky();
    let (rendered, out) = build(&doc, &r, 7);
    let script = r#"
import sys, json, email
from email import policy
msg = email.message_from_bytes(sys.stdin.buffer.read(), policy=policy.default)
parts = [(p.get_content_type(), p.get_content()) for p in msg.walk() if not p.is_multipart()]
print(json.dumps({
  "subject": str(msg["subject"]),
  "from_name": msg["from"].addresses[0].display_name,
  "from_addr": msg["from"].addresses[0].addr_spec,
  "reply_name": msg["reply-to"].addresses[0].display_name,
  "type": msg.get_content_type(),
  "parts": parts,
  "defects": [str(d) for p in msg.walk() for d in p.defects],
  "date": msg["date"].datetime.isoformat(),
}))
"#;
    let out = python(script, &out.content, &[]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["subject"], rendered.subject);
    assert_eq!(v["from_name"], "Shop «Ünïcode» News");
    assert_eq!(v["from_addr"], "news@shop.example");
    assert_eq!(v["reply_name"], "Help, Desk");
    assert_eq!(v["type"], "multipart/alternative");
    assert_eq!(v["defects"], json!([]));
    assert_eq!(v["date"], "2026-07-01T09:30:00+00:00");
    assert_eq!(
        v["parts"],
        json!([
            ["text/plain", crlf(rendered.text.as_ref().unwrap())],
            ["text/html", crlf(rendered.html.as_ref().unwrap())]
        ])
    );
}

#[test]
fn single_part_messages_and_encodings_round_trip() {
    // Text only, 7-bit ASCII; HTML only, mostly right-to-left text (base64).
    let cases = [
        (
            json!({"text": "Plain {{ first_name }}\n"}),
            "Plain Ann\n",
            false,
        ),
        (
            json!({"html": "<p dir=\"rtl\">שלום {{ first_name }}, ברוכים הבאים לחנות הספרים שלנו</p>"}),
            "<p dir=\"rtl\">שלום Ann, ברוכים הבאים לחנות הספרים שלנו</p>",
            true,
        ),
    ];
    for (templates, expected, html) in cases {
        let mut t = templates.as_object().unwrap().clone();
        t.insert("subject".into(), json!("Hi"));
        let doc =
            document(json!({"name": "n", "from": {"email": "a@shop.example"}, "templates": t}));
        let (_, out) = build(
            &doc,
            &recipient(json!({"email": "x@y.example", "first_name": "Ann"})),
            1,
        );
        let text = String::from_utf8_lossy(&out.content);
        assert!(!text.contains("multipart"), "{text}");
        let parsed = MessageParser::default().parse(&out.content).unwrap();
        let body = if html {
            parsed.body_html(0)
        } else {
            parsed.body_text(0)
        };
        assert_eq!(body.unwrap(), crlf(expected));
        let cte = if html { "base64" } else { "7bit" };
        assert!(
            text.contains(&format!("Content-Transfer-Encoding: {cte}")),
            "{text}"
        );
    }
}

#[test]
fn message_id_is_deterministic_and_envelope_sender_is_a_parameter() {
    let (doc, r) = tricky();
    let (_, first) = build(&doc, &r, 5);
    let (_, again) = build(&doc, &r, 5);
    assert_eq!(first.content, again.content, "a re-send is byte-identical");
    let compiled = CompiledCampaign::compile(&doc, &MessageSettings::default()).unwrap();
    let verp = campaign::EmailAddress::parse("bounces+TOKEN@shop.example").unwrap();
    let out = compiled
        .message(
            &r,
            &context(6),
            &BuildOptions {
                envelope_from: Some(verp),
                ..options()
            },
            None,
        )
        .unwrap();
    assert_eq!(out.envelope.from(), "bounces+TOKEN@shop.example");
    assert_eq!(
        out.header("Message-ID"),
        Some(format!("<{CAMPAIGN_ID}.6@shop.example>"))
    );
}

#[test]
fn a_message_id_leads_back_to_its_campaign_and_recipient() {
    let (doc, r) = tricky();
    let (_, out) = build(&doc, &r, 77);
    let message_id = out.header("Message-ID").expect("a Message-ID");
    let (campaign_id, recipient_id) =
        message::recipient_of_message_id(&message_id).expect("our own Message-ID parses");
    assert_eq!(
        (campaign_id.to_string(), recipient_id),
        (CAMPAIGN_ID.to_string(), campaign::RecipientId::new(77))
    );
    // Without brackets too, as some reports quote it.
    let bare = message_id.trim_matches(['<', '>']);
    assert_eq!(
        message::recipient_of_message_id(bare),
        Some((campaign_id, campaign::RecipientId::new(77)))
    );
    for foreign in [
        "<c123.r456@mailer.example.test>",
        "<not-ours@example.com>",
        "",
        "<@>",
    ] {
        assert_eq!(message::recipient_of_message_id(foreign), None, "{foreign}");
    }
}

#[test]
fn preview_returns_parts_and_the_eml() {
    let doc = sample_campaign();
    let r = recipient(
        json!({"email": "amelia@mail.example", "first_name": "Amelia", "city": "Bristol"}),
    );
    let p = preview(
        &doc,
        &MessageSettings::default(),
        &r,
        &context(3),
        &options(),
        None,
    )
    .unwrap();
    assert_eq!(p.subject, "Amelia, your December reading list is here");
    assert!(p.html.as_ref().unwrap().contains("the Bristol shop"));
    assert!(
        p.text
            .as_ref()
            .unwrap()
            .contains("Unsubscribe: https://m.shop.example/u/TOKEN3")
    );
    let parsed = MessageParser::default().parse(&p.eml).unwrap();
    assert_eq!(parsed.subject(), Some(p.subject.as_str()));
    assert_eq!(parsed.body_html(0).unwrap(), crlf(p.html.as_ref().unwrap()));
    // A syntax error comes back as the template error, not a panic.
    let mut broken = doc.clone();
    broken.templates.text = Some("{{ oops".into());
    let err = preview(
        &broken,
        &MessageSettings::default(),
        &r,
        &context(3),
        &options(),
        None,
    )
    .unwrap_err();
    assert!(
        matches!(err, message::MessageError::Template(ref e) if e.template == message::TemplatePart::Text),
        "{err:?}"
    );
}
