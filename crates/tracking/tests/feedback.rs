//! Bounce and complaint parsing against the real Postfix and Dovecot reports in
//! /work/shared/fixtures (expected values from the fixtures' README files).

use std::path::PathBuf;

use tracking::feedback::{
    Action, BounceNotice, ComplaintReport, DeliveryReport, Feedback, FeedbackError, FeedbackType,
    ReportKind, Returned, Severity, StatusClass, StatusCode, parse_report, verp_address,
    verp_token,
};

fn fixture(path: &str) -> Vec<u8> {
    let dir = std::env::var_os("FIXTURES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/shared/fixtures"));
    let file = dir.join(path);
    std::fs::read(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
}

fn bounce(path: &str) -> (Feedback, DeliveryReport) {
    let feedback = parse_report(&fixture(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let ReportKind::Bounce(report) = feedback.kind.clone() else {
        panic!("{path}: parsed as {:?}, expected a bounce", feedback.kind);
    };
    (feedback, report)
}

/// One row of bounces/README.md.
struct Expected {
    file: &'static str,
    sent_to: &'static str,
    recipient: &'static str,
    action: Action,
    status: &'static str,
    diagnostic: &'static str,
    returned: Returned,
    message_id: &'static str,
    severity: Severity,
    expired: bool,
}

const BOUNCES: &[Expected] = &[
    Expected {
        file: "bounces/postfix-hard-bounce-unknown-user.eml",
        sent_to: "bounces+c123-r456@example.test",
        recipient: "nosuchuser@example.test",
        action: Action::Failed,
        status: "5.1.1",
        diagnostic: "X-Postfix; unknown user: \"nosuchuser\"",
        returned: Returned::Message,
        message_id: "<c123.r456@mailer.example.test>",
        severity: Severity::Hard,
        expired: false,
    },
    Expected {
        file: "bounces/postfix-remote-550-user-unknown.eml",
        sent_to: "bounces+c123-r458@example.test",
        recipient: "nobody@rejects.example.net",
        action: Action::Failed,
        status: "5.1.1",
        diagnostic: "smtp; 550 5.1.1 <nobody@rejects.example.net>: Recipient address rejected: \
                     User unknown in virtual mailbox table",
        returned: Returned::Message,
        message_id: "<c123.r458@mailer.example.test>",
        severity: Severity::Hard,
        expired: false,
    },
    Expected {
        file: "bounces/postfix-delayed-452-insufficient-storage.eml",
        sent_to: "bounces+c123-r457@example.test",
        recipient: "jane.doe@softfail.example.net",
        action: Action::Delayed,
        status: "4.3.1",
        diagnostic: "smtp; 452 4.3.1 Insufficient system storage",
        returned: Returned::Headers,
        message_id: "<c123.r457@mailer.example.test>",
        severity: Severity::Soft,
        expired: false,
    },
    Expected {
        file: "bounces/postfix-expired-452-insufficient-storage.eml",
        sent_to: "bounces+c123-r457@example.test",
        recipient: "jane.doe@softfail.example.net",
        action: Action::Failed,
        status: "4.3.1",
        diagnostic: "smtp; 452 4.3.1 Insufficient system storage",
        returned: Returned::Message,
        message_id: "<c123.r457@mailer.example.test>",
        severity: Severity::Soft,
        expired: true,
    },
    Expected {
        file: "bounces/postfix-delivered-notify-success.eml",
        sent_to: "bounces+c123-r459@example.test",
        recipient: "alice@example.test",
        action: Action::Delivered,
        status: "2.0.0",
        diagnostic: "X-Postfix; delivery via local: delivered to mailbox",
        returned: Returned::Headers,
        message_id: "<c123.r459@mailer.example.test>",
        severity: Severity::None,
        expired: false,
    },
    Expected {
        file: "bounces/postfix-relayed-notify-success.eml",
        sent_to: "bounces+c123-r460@example.test",
        recipient: "carol@legacy.example.net",
        action: Action::Relayed,
        status: "2.0.0",
        diagnostic: "smtp; 250 2.0.0 Ok",
        returned: Returned::Headers,
        message_id: "<c123.r460@mailer.example.test>",
        severity: Severity::None,
        expired: false,
    },
];

#[test]
fn every_bounce_fixture_parses_to_its_readme_row() {
    let listed: Vec<_> = BOUNCES.iter().map(|e| e.file).collect();
    let mut on_disk: Vec<_> = std::fs::read_dir(
        std::env::var_os("FIXTURES_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/work/shared/fixtures"))
            .join("bounces"),
    )
    .expect("bounce fixtures")
    .map(|entry| {
        entry
            .expect("entry")
            .file_name()
            .into_string()
            .expect("utf-8")
    })
    .filter(|name| name.ends_with(".eml"))
    .collect();
    on_disk.sort();
    for name in &on_disk {
        assert!(
            listed.contains(&format!("bounces/{name}").as_str()),
            "fixture {name} has no expectation here"
        );
    }

    for expected in BOUNCES {
        let (feedback, report) = bounce(expected.file);
        let file = expected.file;
        assert_eq!(report.recipients.len(), 1, "{file}");
        let recipient = &report.recipients[0];
        assert_eq!(recipient.final_recipient, expected.recipient, "{file}");
        assert_eq!(
            recipient.original_recipient.as_deref(),
            Some(expected.recipient),
            "{file}: Original-Recipient has no space after `;`"
        );
        assert_eq!(recipient.action, expected.action, "{file}");
        assert_eq!(recipient.status.to_string(), expected.status, "{file}");
        assert_eq!(
            recipient.diagnostic_code.as_deref(),
            Some(expected.diagnostic),
            "{file}"
        );
        assert_eq!(recipient.severity(), expected.severity, "{file}");
        assert_eq!(recipient.expired(), expected.expired, "{file}");
        assert_eq!(feedback.message_id(), Some(expected.message_id), "{file}");

        let original = feedback.original.as_ref().expect("original returned");
        assert_eq!(original.returned, expected.returned, "{file}");
        assert_eq!(
            original.return_path.as_deref(),
            Some(expected.sent_to),
            "{file}"
        );
        assert_eq!(original.to, [expected.recipient], "{file}");

        assert_eq!(
            feedback.addressed_to.x_original_to,
            [expected.sent_to],
            "{file}"
        );
        assert_eq!(
            feedback.addressed_to.delivered_to,
            [expected.sent_to],
            "{file}"
        );
        assert_eq!(feedback.addressed_to.to, [expected.sent_to], "{file}");
        let token = expected.sent_to.strip_prefix("bounces+").unwrap();
        let token = token.split('@').next().unwrap();
        assert_eq!(feedback.verp_token("bounces"), Some(token), "{file}");

        // Per-message fields: the ENVID is the Message-ID's local part in these fixtures.
        assert_eq!(
            report.reporting_mta.as_deref(),
            Some("mail.example.test"),
            "{file}"
        );
        let envid = expected
            .message_id
            .trim_matches(['<', '>'])
            .split('@')
            .next();
        assert_eq!(report.original_envelope_id.as_deref(), envid, "{file}");
    }
}

#[test]
fn remote_failures_name_the_remote_mta_and_local_ones_do_not() {
    let (_, remote) = bounce("bounces/postfix-remote-550-user-unknown.eml");
    assert_eq!(
        remote.recipients[0].remote_mta.as_deref(),
        Some("127.0.0.1")
    );
    let (_, local) = bounce("bounces/postfix-hard-bounce-unknown-user.eml");
    assert_eq!(local.recipients[0].remote_mta, None);
}

#[test]
fn only_the_delay_warning_carries_will_retry_until() {
    let (_, delayed) = bounce("bounces/postfix-delayed-452-insufficient-storage.eml");
    assert_eq!(
        delayed.recipients[0].will_retry_until.as_deref(),
        Some("Sat, 28 Nov 2026 04:35:48 +0000 (UTC)")
    );
    let (_, expired) = bounce("bounces/postfix-expired-452-insufficient-storage.eml");
    assert_eq!(expired.recipients[0].will_retry_until, None);
}

#[test]
fn crlf_line_endings_parse_the_same_as_lf() {
    for expected in BOUNCES {
        let lf = parse_report(&fixture(expected.file)).expect("LF");
        let crlf = String::from_utf8(fixture(expected.file))
            .expect("utf-8")
            .replace('\n', "\r\n");
        let crlf = parse_report(crlf.as_bytes()).expect("CRLF");
        assert_eq!(crlf, lf, "{}", expected.file);
    }
}

fn complaint() -> (Feedback, ComplaintReport) {
    let path = "complaints/dovecot-pigeonhole-arf-abuse.eml";
    let feedback = parse_report(&fixture(path)).unwrap_or_else(|e| panic!("{path}: {e}"));
    let ReportKind::Complaint(report) = feedback.kind.clone() else {
        panic!("parsed as {:?}, expected a complaint", feedback.kind);
    };
    (feedback, report)
}

#[test]
fn the_arf_complaint_parses_to_its_readme_row() {
    let (feedback, report) = complaint();
    assert_eq!(report.feedback_type, FeedbackType::Abuse);
    assert_eq!(report.version.as_deref(), Some("1"));
    assert_eq!(
        report.user_agent.as_deref(),
        Some("Dovecot/2.3.19.1 Pigeonhole/0.5.19")
    );
    assert_eq!(
        report.original_mail_from.as_deref(),
        Some("bounces+c123-r461@example.test")
    );
    assert_eq!(report.original_rcpt_to, ["alice@example.test"]);
    assert_eq!(
        report.arrival_date, None,
        "Pigeonhole sends no Arrival-Date"
    );

    assert_eq!(
        feedback.message_id(),
        Some("<c123.r461@mailer.example.test>")
    );
    let original = feedback.original.as_ref().expect("original returned");
    assert_eq!(original.returned, Returned::Message);
    assert_eq!(
        original.return_path.as_deref(),
        Some("bounces+c123-r461@example.test")
    );
    assert_eq!(original.to, ["alice@example.test"]);
    assert_eq!(feedback.addressed_to.to, ["fbl@example.test"]);
    assert_eq!(feedback.addressed_to.x_original_to, ["fbl@example.test"]);
    assert!(
        feedback.bounce_notices().is_empty(),
        "a complaint is no bounce"
    );
}

#[test]
fn a_complaint_is_attributed_by_its_original_mail_from_not_the_feedback_mailbox() {
    let (mut feedback, _) = complaint();
    assert_eq!(feedback.verp_token("bounces"), Some("c123-r461"));
    // Without Original-Mail-From the returned original's Return-Path still carries it.
    if let ReportKind::Complaint(report) = &mut feedback.kind {
        report.original_mail_from = None;
    }
    assert_eq!(feedback.verp_token("bounces"), Some("c123-r461"));
    feedback.original = None;
    assert_eq!(feedback.verp_token("bounces"), None);
}

#[test]
fn a_plain_email_is_not_a_report() {
    let plain = b"From: a@example.test\nTo: b@example.test\nSubject: hi\n\nhello\n";
    let err = parse_report(plain).unwrap_err();
    assert_eq!(
        err,
        FeedbackError::NotAReport {
            found: "text/plain (no Content-Type)".to_string()
        }
    );
    assert!(err.to_string().contains("not multipart/report"), "{err}");

    let html = b"Content-Type: text/html\n\n<p>hi</p>\n";
    assert!(matches!(
        parse_report(html),
        Err(FeedbackError::NotAReport { found }) if found == "text/html"
    ));
    assert!(matches!(
        parse_report(b""),
        Err(FeedbackError::NotAReport { .. })
    ));
}

fn hard_bounce_text() -> String {
    String::from_utf8(fixture("bounces/postfix-hard-bounce-unknown-user.eml")).expect("utf-8")
}

fn cut_before(text: &str, marker: &str) -> String {
    let at = text
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} in fixture"));
    text[..at].to_string()
}

#[test]
fn a_report_truncated_before_its_delivery_status_part_says_so() {
    let text = cut_before(&hard_bounce_text(), "Content-Description: Delivery report");
    assert_eq!(
        parse_report(text.as_bytes()),
        Err(FeedbackError::MissingDeliveryStatus)
    );
}

#[test]
fn a_report_truncated_before_the_recipient_fields_has_no_recipients() {
    let text = cut_before(&hard_bounce_text(), "Final-Recipient:");
    assert_eq!(
        parse_report(text.as_bytes()),
        Err(FeedbackError::NoRecipients)
    );
}

#[test]
fn a_report_truncated_inside_a_recipient_group_names_the_missing_field() {
    let text = cut_before(&hard_bounce_text(), "Action:");
    let err = parse_report(text.as_bytes()).unwrap_err();
    assert_eq!(
        err,
        FeedbackError::MissingField {
            field: "Action",
            context: "the delivery status of nosuchuser@example.test".to_string()
        }
    );
}

#[test]
fn a_garbage_status_is_a_malformed_status_naming_the_recipient() {
    for garbage in ["9.9", "9.1.1", "5.1", "5.1.1.1", "5.a.1", "5.1.1234", ""] {
        let text = hard_bounce_text().replace("Status: 5.1.1", &format!("Status: {garbage}"));
        let err = parse_report(text.as_bytes()).unwrap_err();
        match &err {
            FeedbackError::MalformedStatus { recipient, source } => {
                assert_eq!(recipient, "nosuchuser@example.test");
                assert_eq!(source.value, garbage);
            }
            other => panic!("status {garbage:?}: {other:?}"),
        }
        assert!(err.to_string().contains("nosuchuser@example.test"), "{err}");
    }
}

#[test]
fn an_unknown_action_is_refused() {
    let text = hard_bounce_text().replace("Action: failed", "Action: bounced");
    assert_eq!(
        parse_report(text.as_bytes()),
        Err(FeedbackError::UnknownAction {
            recipient: "nosuchuser@example.test".to_string(),
            value: "bounced".to_string()
        })
    );
}

#[test]
fn other_report_types_are_refused_by_name() {
    let text = hard_bounce_text().replace(
        "report-type=delivery-status",
        "report-type=disposition-notification",
    );
    assert_eq!(
        parse_report(text.as_bytes()),
        Err(FeedbackError::UnsupportedReportType {
            report_type: "disposition-notification".to_string()
        })
    );
}

#[test]
fn a_complaint_without_its_feedback_report_part_says_so() {
    let text = String::from_utf8(fixture("complaints/dovecot-pigeonhole-arf-abuse.eml"))
        .expect("utf-8")
        .replace("message/feedback-report", "text/plain");
    assert_eq!(
        parse_report(text.as_bytes()),
        Err(FeedbackError::MissingFeedbackReport)
    );
}

#[test]
fn severity_follows_action_and_status_class_together() {
    let code = |s: &str| s.parse::<StatusCode>().expect("valid");
    let cases = [
        (Action::Failed, "5.1.1", Severity::Hard, false),
        (Action::Failed, "4.3.1", Severity::Soft, true),
        (Action::Delayed, "4.4.7", Severity::Soft, false),
        (Action::Delayed, "5.0.0", Severity::Soft, false),
        (Action::Delivered, "2.0.0", Severity::None, false),
        (Action::Relayed, "2.0.0", Severity::None, false),
        (Action::Expanded, "2.0.0", Severity::None, false),
    ];
    for (action, status, severity, expired) in cases {
        let notice = BounceNotice {
            recipient: "a@example.test".to_string(),
            status: code(status),
            action,
            diagnostic: None,
            message_id: None,
        };
        assert_eq!(notice.severity(), severity, "{action} {status}");
        assert_eq!(notice.expired(), expired, "{action} {status}");
    }
}

#[test]
fn status_codes_read_class_subject_detail() {
    let code: StatusCode = "5.7.26".parse().expect("valid");
    assert_eq!(
        (code.class, code.subject, code.detail),
        (StatusClass::Permanent, 7, 26)
    );
    let commented: StatusCode = "4.4.1 (connection timed out)".parse().expect("comment");
    assert_eq!(commented.to_string(), "4.4.1");
}

#[test]
fn the_simple_json_form_is_classified_like_a_parsed_dsn() {
    let json = r#"{"recipient": "nobody@rejects.example.net", "status": "5.1.1",
        "action": "failed", "diagnostic": "smtp; 550 5.1.1 User unknown",
        "message_id": "<c123.r458@mailer.example.test>"}"#;
    let notice: BounceNotice = serde_json::from_str(json).expect("valid notice");
    assert_eq!(notice.severity(), Severity::Hard);
    assert_eq!(notice.status.to_string(), "5.1.1");

    let minimal: BounceNotice = serde_json::from_str(
        r#"{"recipient": "jane.doe@softfail.example.net", "status": "4.3.1", "action": "failed"}"#,
    )
    .expect("diagnostic and message_id are optional");
    assert_eq!(
        (minimal.severity(), minimal.expired()),
        (Severity::Soft, true)
    );

    let bad = serde_json::from_str::<BounceNotice>(
        r#"{"recipient": "a@example.test", "status": "9.9", "action": "failed"}"#,
    )
    .unwrap_err();
    assert!(
        bad.to_string()
            .contains("`9.9` is not an enhanced status code"),
        "{bad}"
    );
    let bad = serde_json::from_str::<BounceNotice>(
        r#"{"recipient": "a@example.test", "status": "5.1.1", "action": "bounced"}"#,
    );
    assert!(bad.is_err());

    // A parsed DSN gives the same notice the JSON form would.
    let (feedback, _) = bounce("bounces/postfix-remote-550-user-unknown.eml");
    let notices = feedback.bounce_notices();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].recipient, "nobody@rejects.example.net");
    assert_eq!(
        notices[0].message_id.as_deref(),
        Some("<c123.r458@mailer.example.test>")
    );
    assert_eq!(notices[0].severity(), Severity::Hard);
    let round_trip: BounceNotice =
        serde_json::from_str(&serde_json::to_string(&notices[0]).unwrap()).unwrap();
    assert_eq!(round_trip, notices[0]);
}

#[test]
fn parsed_reports_survive_a_json_round_trip() {
    let (feedback, _) = bounce("bounces/postfix-expired-452-insufficient-storage.eml");
    let json = serde_json::to_value(&feedback).expect("serialize");
    assert_eq!(json["kind"], "bounce");
    assert_eq!(json["recipients"][0]["status"], "4.3.1");
    assert_eq!(json["recipients"][0]["action"], "failed");
    let back: Feedback = serde_json::from_value(json).expect("deserialize");
    assert_eq!(back, feedback);

    let (feedback, _) = complaint();
    let json = serde_json::to_value(&feedback).expect("serialize");
    assert_eq!(json["kind"], "complaint");
    assert_eq!(json["feedback_type"], "abuse");
    let back: Feedback = serde_json::from_value(json).expect("deserialize");
    assert_eq!(back, feedback);
}

#[test]
fn verp_addresses_round_trip() {
    let token = "AQFnhL3tZbR4oVr2-dUAAAAAAAAAKg_x9Jz6";
    let address = verp_address("bounces", token, "mail.example.com");
    assert_eq!(address, format!("bounces+{token}@mail.example.com"));
    assert_eq!(verp_token(&address, "bounces"), Some(token));
    assert_eq!(verp_token(&format!("<{address}>"), "bounces"), Some(token));
    assert_eq!(
        verp_token("BOUNCES+abc@example.test", "bounces"),
        Some("abc"),
        "the prefix is matched ignoring case"
    );
    assert_eq!(
        verp_token("Bounces+AbC@example.test", "bounces"),
        Some("AbC"),
        "the token keeps its case"
    );
}

#[test]
fn verp_rejects_addresses_without_the_prefix_or_a_valid_token() {
    for address in [
        "bounces@example.test",         // no '+'
        "news+abc@example.test",        // another prefix
        "xbounces+abc@example.test",    // prefix must be the whole part before '+'
        "bounces+@example.test",        // empty token
        "bounces+abc",                  // no domain
        "bounces+abc@",                 // empty domain
        "bounces+a.b@example.test",     // not base64url
        "bounces+abc+def@example.test", // '+' is not base64url either
        "",
    ] {
        assert_eq!(verp_token(address, "bounces"), None, "{address:?}");
    }
}
