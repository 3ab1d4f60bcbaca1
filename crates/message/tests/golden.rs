//! The exact bytes of built messages, compared with golden files written by an earlier
//! implementation of the renderer and the MIME writer: a change made for speed must not change
//! a single byte of what recipients receive (nor of what DKIM signs).
//!
//! The cases cover each body encoding (7bit, quoted-printable, base64), single and
//! multipart bodies, tracking links and the open pixel, List-Id with a name, Feedback-ID, a
//! mailto unsubscribe, a VERP return path, an IDN address, strict and lenient campaigns,
//! recipients with fields the templates never read, and an Ed25519 signature (deterministic).
//!
//! `UPDATE_GOLDEN=1 cargo nextest run -p message -E 'binary(golden)'` rewrites the files; only
//! do that for a change that is meant to change the output, and say so in its commit.

mod common;

use common::*;
use message::{BuildOptions, CompiledCampaign, DkimSigner, MessageSettings, RecipientContext};
use serde_json::json;
use std::path::PathBuf;

struct Case {
    name: &'static str,
    bytes: Vec<u8>,
}

fn build(
    doc: &campaign::CampaignDocument,
    value: serde_json::Value,
    ctx: &RecipientContext,
    options: &BuildOptions,
    signer: Option<&DkimSigner>,
) -> Vec<u8> {
    let compiled = CompiledCampaign::compile(doc, &MessageSettings::default()).expect("compiles");
    compiled
        .message(&recipient(value), ctx, options, signer)
        .expect("builds")
        .content
        .to_vec()
}

fn newsletter() -> campaign::CampaignDocument {
    document(json!({
        "name": "Riverside Books — December newsletter",
        "from": {"email": "newsletter@riverside-books.example", "name": "Riverside Books"},
        "reply_to": {"email": "hello@riverside-books.example"},
        "templates": {
            "subject": "{{ first_name | default('Reader') }}, your December reading list is here",
            "html": include_str!("../benches/newsletter.html.jinja"),
            "text": "Hello {{ first_name }},\n\nOur December picks:\n{% for book in books %}- {{ book.title }} ({{ book.price | currency('GBP') }}): https://riverside-books.example/books/{{ book.slug }}\n{% endfor %}\nUnsubscribe: {{ unsubscribe_url }}\n"
        },
        "metadata": {"issue": "2026-12"}
    }))
}

fn books(count: usize) -> serde_json::Value {
    (0..count)
        .map(|i| json!({
            "slug": format!("book-{i}"),
            "title": format!("The Winter Orchard, volume {i} <{i}> & \"friends\""),
            "blurb": "A quiet novel about a family farm in its last season, told over one long winter.",
            "price": 12.99 + i as f64
        }))
        .collect()
}

fn newsletter_context(recipient_id: i64) -> RecipientContext {
    RecipientContext {
        campaign_id: CAMPAIGN_ID,
        recipient_id: campaign::RecipientId::new(recipient_id),
        unsubscribe_url: format!("https://mail.riverside-books.example/u/AQEB{recipient_id}q2-7w8"),
        unsubscribe_mailto: None,
        tracking: Default::default(),
    }
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let newsletter = newsletter();
    let options = options();
    cases.push(Case {
        name: "newsletter-full",
        bytes: build(
            &newsletter,
            json!({
                "email": "amelia.hughes0@mail.example", "first_name": "amelia", "city": "Bristol",
                "points": 2450, "event_date": "2026-12-10", "books": books(8)
            }),
            &newsletter_context(123_456),
            &options,
            None,
        ),
    });
    cases.push(Case {
        name: "newsletter-sparse-with-unused-fields",
        bytes: build(
            &newsletter,
            json!({
                "email": "b@mail.example", "first_name": "O'Brien & sons", "points": 17.5, "event_date": 1_765_000_000,
                "books": books(2), "unused_column": "x".repeat(300),
                "nested_unused": {"a": [1, 2, {"b": null}], "c": true}, "shoe_size": 44
            }),
            &newsletter_context(7),
            &options,
            None,
        ),
    });
    let signer = DkimSigner::from_pem(
        include_str!("fixtures/dkim-test-ed25519.pem"),
        "riverside-books.example",
        "golden",
    )
    .expect("key");
    cases.push(Case {
        name: "newsletter-ed25519",
        bytes: build(
            &newsletter,
            json!({
                "email": "c@mail.example", "first_name": "Zoë", "city": "Bath",
                "points": 0, "event_date": "2026-12-24", "books": books(1)
            }),
            &newsletter_context(8),
            &options,
            Some(&signer),
        ),
    });

    // The sample campaign: lenient, tracked opens and clicks, an IDN recipient.
    let sample = sample_campaign();
    let compiled = CompiledCampaign::compile(&sample, &MessageSettings::default()).unwrap();
    let links = compiled.tracked_link_count();
    for (name, id, value, tracked) in [
        (
            "sample-tracked",
            21,
            json!({"email": "reader@bücher.example", "first_name": "Jonas", "favourite_genre": "crime & <noir>", "unused": 1}),
            true,
        ),
        (
            "sample-untracked",
            22,
            json!({"email": "quiet@mail.example", "city": "Leeds"}),
            false,
        ),
    ] {
        let ctx = RecipientContext {
            tracking: message::TrackingUrls {
                open_pixel: tracked.then(|| format!("https://t.riverside.example/o/{id}.gif")),
                clicks: if tracked {
                    (0..links)
                        .map(|n| format!("https://t.riverside.example/c/{id}/{n}?a=1&b=2"))
                        .collect()
                } else {
                    Vec::new()
                },
            },
            ..newsletter_context(id)
        };
        cases.push(Case {
            name,
            bytes: build(&sample, value, &ctx, &options, None),
        });
    }

    // Strict, non-ASCII headers and bodies, a mailto unsubscribe from the context.
    let tricky = campaign(
        "{{ first_name }}, 🎉 your Ünïcode digest — {{ city }}",
        "<h1>Hello {{ first_name }}</h1>\n<p>From {{ city }} with “quotes” and a long line: {{ long }}</p>\n<a href=\"{{ unsubscribe_url }}\">Unsubscribe</a>\n",
        "Hello {{ first_name }}\nFrom {{ city }}\n{{ long }}\n.leading dot\n.\nUnsubscribe: {{ unsubscribe_url }}\n",
        "strict",
    );
    cases.push(Case {
        name: "tricky-strict",
        bytes: build(
            &tricky,
            json!({
                "email": "zoë@shop.example",
                "first_name": "<script>alert(\"x\")</script> Zoë 😀",
                "city": "מרכז תל אביב",
                "long": "word ".repeat(60),
                "never_read": [1, 2, 3],
            }),
            &context(42),
            &options,
            None,
        ),
    });

    // Mostly non-ASCII text only (base64), List-Id with a name, Feedback-ID, mailto
    // unsubscribe from the campaign, a VERP return path.
    let hebrew = document(json!({
        "name": "חדשות",
        "from": {"email": "news@shop.example", "name": "Shop, News"},
        "list_id": {"name": "Shop news — weekly", "id": "news.shop.example"},
        "unsubscribe_mailto": "unsubscribe@shop.example",
        "feedback_id": "shop-weekly",
        "templates": {
            "subject": "שלום {{ name }}",
            "text": "שלום {{ name }}, ברוכים הבאים לחנות שלנו. {{ name }}\nהמבצעים של השבוע מחכים לך.\n"
        }
    }));
    let verp = BuildOptions {
        envelope_from: Some(campaign::EmailAddress::parse("bounces+abc@shop.example").unwrap()),
        ..options.clone()
    };
    let ctx = RecipientContext {
        unsubscribe_mailto: None,
        ..context(5)
    };
    cases.push(Case {
        name: "text-only-base64",
        bytes: build(
            &hebrew,
            json!({"email": "d@mail.example", "name": "דנה"}),
            &ctx,
            &verp,
            None,
        ),
    });

    // HTML only, 7bit.
    let html_only = document(json!({
        "name": "Plain",
        "from": {"email": "news@shop.example"},
        "list_id": "news.shop.example",
        "templates": {
            "subject": "A very long subject line that goes on and on {{ n }} so that the header has to be folded at its spaces",
            "html": "<p>Hi {{ n }}</p>\r\n<p>Bye</p>"
        }
    }));
    cases.push(Case {
        name: "html-only-7bit",
        bytes: build(
            &html_only,
            json!({"email": "e@mail.example", "n": 3, "extra": "unused"}),
            &context(6),
            &options,
            None,
        ),
    });
    cases
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

#[test]
fn built_messages_are_byte_identical_to_the_golden_files() {
    let update = std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1");
    let dir = golden_dir();
    let mut differing = Vec::new();
    for case in cases() {
        let path = dir.join(format!("{}.eml", case.name));
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &case.bytes).unwrap();
            continue;
        }
        let golden = std::fs::read(&path)
            .unwrap_or_else(|err| panic!("{}: {err} (UPDATE_GOLDEN=1 writes it)", path.display()));
        if golden != case.bytes {
            let at = golden
                .iter()
                .zip(&case.bytes)
                .position(|(a, b)| a != b)
                .unwrap_or(golden.len().min(case.bytes.len()));
            differing.push(format!(
                "{}: first difference at byte {at}: golden {:?}, built {:?}",
                case.name,
                String::from_utf8_lossy(
                    &golden[at.saturating_sub(20)..(at + 40).min(golden.len())]
                ),
                String::from_utf8_lossy(
                    &case.bytes[at.saturating_sub(20)..(at + 40).min(case.bytes.len())]
                ),
            ));
        }
    }
    assert!(differing.is_empty(), "{}", differing.join("\n"));
}
