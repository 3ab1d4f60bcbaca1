//! Render + MIME build per message for an ~8 KB HTML newsletter with a loop, and the same with
//! Ed25519 and RSA-2048 DKIM signing. Results: docs/BENCHMARKS.md, "Message building".

use campaign::{CampaignDocument, Recipient};
use criterion::{Criterion, criterion_group, criterion_main};
use message::{BuildOptions, CompiledCampaign, DkimSigner, MessageSettings, RecipientContext};
use serde_json::json;
use std::hint::black_box;
use time::macros::datetime;

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
