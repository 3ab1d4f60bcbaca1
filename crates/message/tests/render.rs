//! Rendering: escaping, strict/lenient undefined handling, limits, errors with positions.

mod common;

use common::*;
use message::{
    CompiledCampaign, Limit, MessageSettings, RenderError, TemplatePart, UnknownVariable,
    field_names,
};
use serde_json::json;
use std::collections::HashSet;

fn compile(doc: &campaign::CampaignDocument) -> CompiledCampaign {
    CompiledCampaign::compile(doc, &MessageSettings::default()).expect("templates compile")
}

#[test]
fn html_escapes_values_text_and_subject_keep_them() {
    let doc = campaign(
        "{{ first_name }}, 🎉 Ünïcode news",
        "<p>Hello {{ first_name }} from {{ city }}</p>",
        "Hello {{ first_name }} from {{ city }}",
        "strict",
    );
    let compiled = compile(&doc);
    let nasty = "<script>alert(\"x\")</script> O'Brien 😀";
    let rendered = compiled
        .render(
            &recipient(
                json!({"email": "a@b.example", "first_name": nasty, "city": "مرحبا القاهرة"}),
            ),
            &context(1),
        )
        .unwrap();
    let html = rendered.html.unwrap();
    assert_eq!(
        html,
        "<p>Hello &lt;script&gt;alert(&quot;x&quot;)&lt;&#x2f;script&gt; O&#x27;Brien 😀 from مرحبا القاهرة</p>"
    );
    assert!(!html.contains("<script>"));
    assert_eq!(
        rendered.text.unwrap(),
        format!("Hello {nasty} from مرحبا القاهرة")
    );
    assert_eq!(rendered.subject, format!("{nasty}, 🎉 Ünïcode news"));
}

#[test]
fn strict_campaign_fails_the_recipient_missing_a_field_and_names_it() {
    let doc = campaign(
        "Hi",
        "<p>{% if city %}{{ city }}{% endif %}</p>\n<p>{{ first_name }}</p>",
        "x",
        "strict",
    );
    let compiled = compile(&doc);
    let err = compiled
        .render(&recipient(json!({"email": "a@b.example"})), &context(1))
        .unwrap_err();
    match &err {
        RenderError::Undefined {
            template,
            line,
            detail,
        } => {
            assert_eq!(*template, TemplatePart::Html);
            assert_eq!(*line, 2);
            assert!(detail.contains("first_name"), "{detail}");
        }
        other => panic!("expected Undefined, got {other:?}"),
    }
    assert!(err.to_string().contains("html template, line 2"), "{err}");
    // The same campaign renders a recipient who has the field; `if city` is allowed.
    let ok = compiled
        .render(
            &recipient(json!({"email": "a@b.example", "first_name": "Ann"})),
            &context(2),
        )
        .unwrap();
    assert_eq!(ok.html.unwrap(), "<p></p>\n<p>Ann</p>");
}

#[test]
fn lenient_campaign_renders_a_missing_field_as_empty() {
    let doc = campaign(
        "Hi {{ first_name }}!",
        "<p>[{{ first_name }}] [{{ address.city }}]</p>",
        "[{{ first_name }}]",
        "lenient",
    );
    let rendered = compile(&doc)
        .render(&recipient(json!({"email": "a@b.example"})), &context(1))
        .unwrap();
    assert_eq!(rendered.subject, "Hi !");
    assert_eq!(rendered.html.unwrap(), "<p>[] []</p>");
    assert_eq!(rendered.text.unwrap(), "[]");
}

#[test]
fn a_loop_over_ten_thousand_items_hits_the_fuel_limit() {
    let doc = campaign(
        "Hi",
        "{% for item in items %}<li>{{ item }}</li>{% endfor %}",
        "x",
        "strict",
    );
    let compiled = compile(&doc);
    let items: Vec<u32> = (0..10_000).collect();
    let err = compiled
        .render(
            &recipient(json!({"email": "a@b.example", "items": items})),
            &context(1),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            RenderError::LimitExceeded {
                template: TemplatePart::Html,
                limit: Limit::Fuel,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("Fuel limit"), "{err}");
    // A realistic list (a few hundred products) stays well inside the default.
    let items: Vec<u32> = (0..300).collect();
    compiled
        .render(
            &recipient(json!({"email": "a@b.example", "items": items})),
            &context(1),
        )
        .unwrap();
    // range() in the template itself is stopped the same way.
    let doc = campaign(
        "{% for i in range(10000) %}{{ i }}{% endfor %}",
        "x",
        "x",
        "strict",
    );
    let err = compile(&doc)
        .render(&recipient(json!({"email": "a@b.example"})), &context(1))
        .unwrap_err();
    assert!(
        matches!(
            err,
            RenderError::LimitExceeded {
                template: TemplatePart::Subject,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn deep_recursion_is_stopped_with_a_clear_error() {
    let doc = campaign(
        "Hi",
        "{% macro down(n) %}{{ down(n + 1) }}{% endmacro %}{{ down(0) }}",
        "x",
        "strict",
    );
    let err = compile(&doc)
        .render(&recipient(json!({"email": "a@b.example"})), &context(1))
        .unwrap_err();
    match err {
        RenderError::LimitExceeded { limit, .. } => {
            assert!(matches!(limit, Limit::Recursion | Limit::Fuel), "{limit:?}")
        }
        other => panic!("expected a limit, got {other:?}"),
    }
}

#[test]
fn output_size_limit_stops_huge_output() {
    let doc = campaign("Hi", "{{ blob }}{{ blob }}", "x", "strict");
    let settings = MessageSettings {
        max_rendered_bytes: 1000,
        ..MessageSettings::default()
    };
    let compiled = CompiledCampaign::compile(&doc, &settings).unwrap();
    let err = compiled
        .render(
            &recipient(json!({"email": "a@b.example", "blob": "x".repeat(600)})),
            &context(1),
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            RenderError::LimitExceeded {
                limit: Limit::OutputSize,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn syntax_error_names_template_line_and_column() {
    let doc = campaign(
        "Hi",
        "<p>ok</p>\n<p>{{ first_name }</p>\n",
        "fine",
        "strict",
    );
    let err = CompiledCampaign::compile(&doc, &MessageSettings::default()).unwrap_err();
    assert_eq!(err.template, TemplatePart::Html);
    assert_eq!(err.line, 2);
    assert_eq!(err.column, 18, "{err}");
    assert!(
        err.to_string()
            .starts_with("html template, line 2, column 18: "),
        "{err}"
    );

    let doc = campaign("Hi {% if x %}", "x", "x", "strict");
    let err = CompiledCampaign::compile(&doc, &MessageSettings::default()).unwrap_err();
    assert_eq!(err.template, TemplatePart::Subject);
    assert_eq!(err.line, 1);
    let json = serde_json::to_value(&err).unwrap();
    assert_eq!(json["template"], "subject");
    assert!(json["column"].as_u64().is_some());
}

#[test]
fn a_line_break_rendered_into_the_subject_fails_that_recipient() {
    let doc = campaign("Hello {{ name }}", "x", "x", "strict");
    let compiled = compile(&doc);
    for injected in ["Ann\r\nBcc: victim@example.com", "Ann\nX", "Ann\u{2028}"] {
        let err = compiled
            .render(
                &recipient(json!({"email": "a@b.example", "name": injected})),
                &context(1),
            )
            .unwrap_err();
        assert_eq!(err, RenderError::SubjectLineBreak, "{injected:?}");
    }
    let err = compiled
        .render(
            &recipient(json!({"email": "a@b.example", "name": "A\u{7}"})),
            &context(1),
        )
        .unwrap_err();
    assert_eq!(err, RenderError::SubjectControlCharacter(7));
}

#[test]
fn unknown_variables_are_listed_with_template_and_line() {
    let doc = campaign(
        "{{ first_name }} {{ campaign.name }}",
        "<p>{{ email }}</p>\n<a href=\"{{ unsubscribe_url }}\">u</a>\n{{ loyalty_tier }}\n{{ nickname | default('friend') }}\n{% for b in books %}{{ b.title }}{% endfor %}",
        "{{ recipient.first_name }}\n\n{{ coupon.code }}",
        "strict",
    );
    let compiled = compile(&doc);
    let recipients = [
        recipient(json!({"email": "a@b.example", "first_name": "A"})),
        recipient(json!({"email": "c@b.example", "books": []})),
    ];
    let fields = field_names(&recipients);
    assert_eq!(
        fields,
        HashSet::from(["first_name".to_string(), "books".to_string()])
    );
    let unknown = compiled.unknown_variables(&fields);
    assert_eq!(
        unknown,
        vec![
            UnknownVariable {
                template: TemplatePart::Html,
                name: "loyalty_tier".into(),
                line: 3
            },
            UnknownVariable {
                template: TemplatePart::Text,
                name: "coupon".into(),
                line: 3
            },
        ]
    );
    assert_eq!(
        unknown[0].to_string(),
        "html template, line 3: `loyalty_tier` is not a field of any recipient"
    );
}

#[test]
fn service_variables_are_provided_and_cannot_be_overridden() {
    let doc = campaign(
        "{{ campaign.name }} #{{ campaign.metadata.issue }}",
        "<a href=\"{{ unsubscribe_url }}\">Unsubscribe</a> {{ email }} {{ recipient.first_name }}",
        "{{ unsubscribe_url }}",
        "strict",
    );
    let rendered = compile(&doc)
        .render(
            &recipient(json!({
                "email": "ann@b.example",
                "first_name": "Ann",
                "unsubscribe_url": "https://evil.example/"
            })),
            &context(7),
        )
        .unwrap();
    assert_eq!(rendered.subject, "Test campaign #2026-07");
    // The URL is shown verbatim (not `https:&#x2f;&#x2f;…`) and is the service's, not the field.
    assert_eq!(
        rendered.html.unwrap(),
        "<a href=\"https://m.shop.example/u/TOKEN7\">Unsubscribe</a> ann@b.example Ann"
    );
    assert_eq!(rendered.text.unwrap(), "https://m.shop.example/u/TOKEN7");
}

#[test]
fn filters_users_expect() {
    let doc = campaign(
        "{{ name | upper }} {{ name | lower }} {{ 'the winter orchard' | title }}",
        "x",
        "{{ nick | default('friend') }}|{{ total | number }}|{{ price | currency('EUR') }}|{{ joined | date('%d/%m/%Y') }}|{% for b in books %}{{ loop.index }}.{{ b }} {% endfor %}",
        "strict",
    );
    let rendered = compile(&doc)
        .render(
            &recipient(json!({
                "email": "a@b.example", "name": "Zoë", "total": 1234567,
                "price": "19.9", "joined": "2025-12-24", "books": ["A", "B"]
            })),
            &context(1),
        )
        .unwrap();
    assert_eq!(rendered.subject, "ZOË zoë The Winter Orchard");
    assert_eq!(
        rendered.text.unwrap(),
        "friend|1,234,567|€19.90|24/12/2025|1.A 2.B "
    );
}

#[test]
fn the_sample_campaign_renders_every_sample_recipient() {
    let doc = sample_campaign();
    let compiled = compile(&doc);
    let recipients: Vec<campaign::Recipient> =
        serde_json::from_str(include_str!("../../../examples/sample_recipients.json")).unwrap();
    assert!(
        compiled
            .unknown_variables(&field_names(&recipients))
            .is_empty()
    );
    for (i, r) in recipients.iter().enumerate() {
        let rendered = compiled.render(r, &context(i as i64)).unwrap();
        let first = r.fields["first_name"].as_str().unwrap();
        assert!(rendered.subject.starts_with(first));
        let html = rendered.html.unwrap();
        assert!(html.contains(&format!("href=\"https://m.shop.example/u/TOKEN{i}\"")));
        assert!(
            rendered
                .text
                .unwrap()
                .ends_with(&format!("Unsubscribe: https://m.shop.example/u/TOKEN{i}\n"))
        );
    }
}

#[test]
fn the_benchmark_newsletter_renders_within_default_limits() {
    let doc = document(json!({
        "name": "Riverside Books", "from": {"email": "news@riverside-books.example"},
        "templates": {"subject": "Hi {{ first_name }}", "html": include_str!("../benches/newsletter.html.jinja")},
        "metadata": {"issue": "2026-12"}
    }));
    let books: Vec<_> = (0..8)
        .map(|i| json!({"slug": format!("book-{i}"), "title": format!("Book {i}"), "blurb": "A quiet novel about a family farm in its last season, told over one long winter.", "price": 12.99 + i as f64}))
        .collect();
    let r = recipient(
        json!({"email": "a@b.example", "first_name": "amelia", "city": "Bristol", "points": 2450, "event_date": "2026-12-10", "books": books}),
    );
    let html = compile(&doc).render(&r, &context(1)).unwrap().html.unwrap();
    assert!(html.contains("Hello Amelia,"));
    assert!(html.contains("2,450 points, worth £24.50"));
    assert!(html.contains("Thursday 10 December"));
    assert_eq!(html.matches("class=\"product\"").count(), 8);
    assert!(html.len() > 8000, "{}", html.len());
}

#[test]
fn tracked_links_and_the_pixel_carry_the_recipients_urls_and_opt_outs_stay() {
    let html = "<html><body><a href=\"https://shop.example/a?x=1&amp;y=2\">a</a> \
                <a data-notrack href=\"https://shop.example/private\">p</a> \
                <a href=\"{{ unsubscribe_url }}\">unsubscribe</a> \
                <a href=\"https://shop.example/{{ first_name }}\">personal</a></body></html>";
    let doc = campaign("Hi", html, "Hi", "lenient");
    let compiled = compile(&doc);
    assert_eq!(compiled.tracked_link_count(), 1);
    assert!(compiled.tracks_opens());
    assert_eq!(
        message::tracked_links(html),
        ["https://shop.example/a?x=1&y=2"]
    );
    let someone = recipient(json!({"email": "a@b.example", "first_name": "ann"}));
    let mut ctx = context(7);
    ctx.tracking = message::TrackingUrls {
        open_pixel: Some("https://m.shop.example/t/o/OPEN7".into()),
        clicks: vec!["https://m.shop.example/t/c/CLICK7".into()],
    };
    let rendered = compiled.render(&someone, &ctx).unwrap().html.unwrap();
    assert!(
        rendered.contains("<a href=\"https://m.shop.example/t/c/CLICK7\">a</a>"),
        "{rendered}"
    );
    assert!(rendered.contains("href=\"https://shop.example/private\""));
    assert!(rendered.contains("href=\"https://m.shop.example/u/TOKEN7\""));
    assert!(rendered.contains("href=\"https://shop.example/ann\""));
    let pixel = rendered
        .find("<img src=\"https://m.shop.example/t/o/OPEN7\"")
        .expect("pixel");
    assert!(pixel < rendered.find("</body>").unwrap());

    // Without URLs (a preview) the links stay as written and there is no pixel.
    let plain = compiled
        .render(&someone, &context(7))
        .unwrap()
        .html
        .unwrap();
    assert!(plain.contains("<a href=\"https://shop.example/a?x=1&amp;y=2\">a</a>"));
    assert!(!plain.contains("<img"));

    // Tracking switched off in the campaign: nothing is rewritten even with URLs given.
    let mut untracked = doc.clone();
    untracked.tracking.clicks = false;
    untracked.tracking.opens = false;
    let compiled = compile(&untracked);
    assert_eq!(compiled.tracked_link_count(), 0);
    let html_out = compiled.render(&someone, &ctx).unwrap().html.unwrap();
    assert!(!html_out.contains("/t/c/") && !html_out.contains("<img"));
}

#[test]
fn a_literal_filter_argument_out_of_range_is_a_template_error_with_its_position() {
    let doc = campaign(
        "Hi",
        "<p>Hello</p>\n<p>Total: {{ total|number(70000) }}</p>",
        "x",
        "lenient",
    );
    let err = CompiledCampaign::compile(&doc, &MessageSettings::default()).unwrap_err();
    assert_eq!(err.template, TemplatePart::Html);
    assert_eq!((err.line, err.column), (2, 27), "{err}");
    assert!(
        err.message
            .starts_with("number: decimals must be a whole number from 0 to 20"),
        "{err}"
    );
}

#[test]
fn a_filter_argument_from_a_field_fails_only_the_recipient_that_has_it() {
    let doc = campaign(
        "Your total",
        "<p>{{ total|number(decimals) }}</p>",
        "{{ total|currency(code) }}",
        "strict",
    );
    let compiled = compile(&doc);
    let good = json!({"email": "a@b.example", "total": "1234.5", "decimals": 1, "code": "EUR"});
    let rendered = compiled.render(&recipient(good), &context(1)).unwrap();
    assert_eq!(rendered.html.as_deref(), Some("<p>1,234.5</p>"));
    assert_eq!(rendered.text.as_deref(), Some("€1,234.50"));
    let poison = json!({"email": "b@b.example", "total": 1, "decimals": 70000, "code": "EUR"});
    match compiled
        .render(&recipient(poison), &context(2))
        .unwrap_err()
    {
        RenderError::Evaluation {
            template, detail, ..
        } => {
            assert_eq!(template, TemplatePart::Html);
            assert!(
                detail.contains("decimals must be a whole number"),
                "{detail}"
            );
        }
        other => panic!("expected an evaluation error, got {other:?}"),
    }
}
