//! Render + MIME build per message for an ~8 KB HTML newsletter with a loop (its parts are
//! quoted-printable: the blurbs carry non-ASCII), the same with Ed25519 and RSA-2048 DKIM
//! signing, and the delivery benchmark's campaign (`render+build-7bit`: the templates of
//! scripts/bench/gen_campaign.py, ASCII, so both parts are 7bit). Results: docs/BENCHMARKS.md,
//! "Message building" and the render + build sections.

use campaign::{CampaignDocument, Recipient};
use criterion::{Criterion, criterion_group, criterion_main};
use message::{BuildOptions, CompiledCampaign, DkimSigner, MessageSettings, RecipientContext};
use serde_json::json;
use std::hint::black_box;
use time::macros::datetime;

/// The allocator the shipped binary uses (crates/marketing/src/main.rs), so that a
/// message's allocations cost here what they cost when the service builds it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fixture() -> (CompiledCampaign, Recipient, RecipientContext, BuildOptions) {
    let doc: CampaignDocument = serde_json::from_value(json!({
        "name": "Riverside Books — December newsletter",
        "from": {"email": "newsletter@riverside-books.example", "name": "Riverside Books"},
        "reply_to": {"email": "hello@riverside-books.example"},
        "templates": {
            "subject": "{{ first_name | default('Reader') }}, your December reading list is here",
            "html": include_str!("newsletter.html.jinja"),
            "text": "Hello {{ first_name }},\n\nOur December picks:\n{% for book in books %}- {{ book.title }} ({{ book.price | currency('GBP') }}): https://riverside-books.example/books/{{ book.slug }}\n{% endfor %}\nUnsubscribe: {{ unsubscribe_url }}\n"
        },
        "metadata": {"issue": "2026-12"}
    }))
    .expect("benchmark campaign");
    let books: Vec<_> = (0..8)
        .map(|i| json!({
            "slug": format!("book-{i}"),
            "title": format!("The Winter Orchard, volume {i}"),
            "blurb": "A quiet novel about a family farm in its last season, told over one long winter.",
            "price": 12.99 + i as f64
        }))
        .collect();
    let recipient: Recipient = serde_json::from_value(json!({
        "email": "amelia.hughes0@mail.example", "first_name": "amelia", "city": "Bristol",
        "points": 2450, "event_date": "2026-12-10", "books": books
    }))
    .expect("benchmark recipient");
    let compiled = CompiledCampaign::compile(&doc, &MessageSettings::default()).expect("compiles");
    let ctx = RecipientContext {
        campaign_id: campaign::CampaignId::from_uuid(uuid::Uuid::from_u128(
            0x0190_0000_0000_7000_8000_0000_0000_00ab,
        )),
        recipient_id: campaign::RecipientId::new(123_456),
        unsubscribe_url: "https://mail.riverside-books.example/u/AQEBkAAAAAAAcACAAAAAAAAAqwAAAAAAAeJA3q2-7w8gXhZ6yqkHc1Tz0Q".into(),
        unsubscribe_mailto: None,
        tracking: Default::default(),
    };
    let options = BuildOptions {
        envelope_from: None,
        date: datetime!(2026-12-01 09:30:00 UTC),
    };
    (compiled, recipient, ctx, options)
}

/// The campaign scripts/bench/gen_campaign.py writes, built the same way (keep the two in
/// step), and one of its recipients with the tracking URLs the delivery worker signs.
fn seven_bit_fixture() -> (CompiledCampaign, Recipient, RecipientContext) {
    const PARAGRAPHS: usize = 40;
    let paragraph = "<p>Dear {{ first_name }}, this month in {{ city }} our booksellers picked stories for \
        every taste: crime, poetry, history and more. Come by the shop for a warm drink and a \
        chat about {{ genre }}.</p>\n";
    let html = format!(
        "<html><body><h1>Hello {{{{ first_name }}}}</h1>\n{}<p><a href=\"{{{{ unsubscribe_url }}}}\">Unsubscribe</a></p></body></html>",
        paragraph.repeat(PARAGRAPHS)
    );
    let line = "This month in {{ city }} our booksellers picked stories about {{ genre }}.\n";
    let text = format!(
        "Hello {{{{ first_name }}}},\n{}Unsubscribe: {{{{ unsubscribe_url }}}}\n",
        line.repeat(30)
    );
    let doc: CampaignDocument = serde_json::from_value(json!({
        "name": "Benchmark",
        "from": {"email": "news@bench.example", "name": "Bench"},
        "templates": {
            "subject": "{{ first_name }}, your {{ city }} reading list",
            "html": html,
            "text": text,
        },
        "batch_size": 500
    }))
    .expect("7bit benchmark campaign");
    let recipient: Recipient = serde_json::from_value(json!({
        "email": "reader7@bench7.example", "first_name": "Hugo", "city": "Oslo",
        "genre": "history"
    }))
    .expect("7bit benchmark recipient");
    let compiled = CompiledCampaign::compile(&doc, &MessageSettings::default()).expect("compiles");
    let base = "https://mail.bench.example";
    let token = "AQEBkAAAAAAAcACAAAAAAAAAqwAAAAAAAAAH3q2-7w8gXhZ6yqkHc1Tz0Q";
    let ctx = RecipientContext {
        campaign_id: campaign::CampaignId::from_uuid(uuid::Uuid::from_u128(
            0x0190_0000_0000_7000_8000_0000_0000_00cd,
        )),
        recipient_id: campaign::RecipientId::new(7),
        unsubscribe_url: format!("{base}/u/{token}"),
        unsubscribe_mailto: None,
        tracking: message::TrackingUrls {
            open_pixel: compiled
                .tracks_opens()
                .then(|| format!("{base}/o/{token}.gif")),
            clicks: (0..compiled.tracked_link_count())
                .map(|i| format!("{base}/c/{token}/{i}"))
                .collect(),
        },
    };
    (compiled, recipient, ctx)
}

fn bench(c: &mut Criterion) {
    let (compiled, recipient, ctx, options) = fixture();
    let sample = compiled.render(&recipient, &ctx).expect("renders");
    eprintln!(
        "html template {} B, rendered html {} B, message {} B",
        include_str!("newsletter.html.jinja").len(),
        sample.html.as_ref().map_or(0, String::len),
        compiled
            .build(&sample, &options)
            .expect("builds")
            .content
            .len()
    );
    let mut group = c.benchmark_group("message");
    group.bench_function("render", |b| {
        b.iter(|| {
            black_box(
                compiled
                    .render(black_box(&recipient), &ctx)
                    .expect("renders"),
            )
        })
    });
    group.bench_function("render+build", |b| {
        b.iter(|| {
            black_box(
                compiled
                    .message(black_box(&recipient), &ctx, &options, None)
                    .expect("builds"),
            )
        })
    });
    let (seven_bit, seven_bit_recipient, seven_bit_ctx) = seven_bit_fixture();
    let seven_bit_sample = seven_bit
        .message(&seven_bit_recipient, &seven_bit_ctx, &options, None)
        .expect("builds");
    let seven_bit_content = String::from_utf8_lossy(&seven_bit_sample.content);
    assert_eq!(
        seven_bit_content
            .matches("Content-Transfer-Encoding: 7bit")
            .count(),
        2,
        "the delivery benchmark's parts are 7bit"
    );
    eprintln!("7bit message {} B", seven_bit_content.len());
    group.bench_function("render+build-7bit", |b| {
        b.iter(|| {
            black_box(
                seven_bit
                    .message(
                        black_box(&seven_bit_recipient),
                        &seven_bit_ctx,
                        &options,
                        None,
                    )
                    .expect("builds"),
            )
        })
    });
    let keys = [
        (
            "ed25519",
            include_str!("../tests/fixtures/dkim-test-ed25519.pem"),
        ),
        (
            "rsa2048",
            include_str!("../tests/fixtures/dkim-test-rsa.pem"),
        ),
    ];
    for (name, pem) in keys {
        let signer = DkimSigner::from_pem(pem, "riverside-books.example", "bench").expect("key");
        group.bench_function(format!("render+build+dkim-{name}"), |b| {
            b.iter(|| {
                black_box(
                    compiled
                        .message(black_box(&recipient), &ctx, &options, Some(&signer))
                        .expect("signs"),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
