//! The SMTP transport against servers this project did not write: postfix `smtp-sink` (with
//! its own fault flags) and `aiosmtpd` (messages read back from its Maildir).

use delivery::{
    Envelope, FailureClass, OutgoingMessage, SendError, SmtpConfig, SmtpTransport, Stage, Timeouts,
    Transport, TransportConfig, transport_from_config,
};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use testkit::smtp::{Aiosmtpd, AiosmtpdTls, SmtpSink, TestCertificate};

fn content(i: usize, to: &str) -> String {
    format!(
        "From: Sender <sender@example.com>\r\n\
         To: <{to}>\r\n\
         Subject: Test message {i}\r\n\
         Message-ID: <msg-{i}@example.com>\r\n\
         X-Campaign-ID: c1\r\n\
         X-Recipient-ID: r{i}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         Hello recipient {i},\r\n\
         .a line that starts with a dot (needs dot-stuffing)\r\n\
         ..and one with two\r\n\
         \r\n\
         bye\r\n"
    )
}

fn message(i: usize) -> OutgoingMessage {
    message_between(i, "bounce@example.com", &[&format!("user{i}@example.org")])
}

/// Message `i` (Message-ID `<msg-i@example.com>`) with this envelope.
fn message_between(i: usize, from: &str, to: &[&str]) -> OutgoingMessage {
    let envelope = Envelope::new(from, to.iter().copied()).expect("valid envelope");
    OutgoingMessage::new(envelope, content(i, to[0]))
}

/// Bound on waiting for smtp-sink's counters to catch up with replies already received.
const SETTLE: Duration = Duration::from_secs(10);

fn smtp(url: &str, connections: usize) -> SmtpTransport {
    let mut config = SmtpConfig::from_url(url).expect("valid SMTP_URL");
    config.connections = connections;
    SmtpTransport::new(config).expect("transport")
}

fn smtp_with_timeout(url: &str, limit: Duration) -> SmtpTransport {
    let mut config = SmtpConfig::from_url(url).expect("valid SMTP_URL");
    config.timeouts = Timeouts::uniform(limit);
    SmtpTransport::new(config).expect("transport")
}

/// The message as smtp-sink and aiosmtpd store it: LF line ends.
fn lf(text: &str) -> Vec<u8> {
    text.replace("\r\n", "\n").into_bytes()
}

fn message_id(content: &[u8]) -> Option<String> {
    header(content, "Message-ID")
}

/// A header's value (name case-insensitive, leading and trailing blanks removed) in a stored
/// message's header section.
fn header(content: &[u8], name: &str) -> Option<String> {
    String::from_utf8_lossy(content)
        .lines()
        .take_while(|line| !line.is_empty())
        .find_map(|line| {
            let (field, value) = line.split_once(':')?;
            field
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_string())
        })
}

/// The stored message whose Message-ID is `<msg-i@example.com>`.
fn stored_message(stored: &[Vec<u8>], i: usize) -> &[u8] {
    stored
        .iter()
        .find(|m| message_id(m).as_deref() == Some(&format!("<msg-{i}@example.com>")))
        .unwrap_or_else(|| panic!("message {i} not in the Maildir"))
}

#[tokio::test]
async fn smtp_delivers_to_aiosmtpd_with_headers_and_body_intact() {
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let transport = smtp(&server.url(), 1);
    for i in 0..3 {
        let accepted = transport.send(message(i)).await.expect("accepted");
        assert_eq!(accepted.reply.code, 250, "{}", accepted.reply);
        assert!(accepted.refused.is_empty());
    }
    transport.close().await;

    let stored = server.messages();
    assert_eq!(stored.len(), 3);
    for i in 0..3 {
        let sent = lf(&content(i, &format!("user{i}@example.org")));
        let found = stored
            .iter()
            .find(|m| message_id(m).as_deref() == Some(&format!("<msg-{i}@example.com>")))
            .unwrap_or_else(|| panic!("message {i} not in the Maildir"));
        let text = String::from_utf8_lossy(found);
        // aiosmtpd appends X-Peer, X-MailFrom and X-RcptTo to the header section; everything
        // we sent is there unchanged: our headers first, then the body byte for byte (dots
        // un-stuffed, no line added at the end).
        let (headers, body) = text.split_once("\n\n").expect("header/body separator");
        let (sent_headers, sent_body) = std::str::from_utf8(&sent)
            .expect("ASCII")
            .split_once("\n\n")
            .expect("separator");
        assert!(headers.starts_with(sent_headers), "{headers}");
        assert!(
            headers.contains("\nX-MailFrom: bounce@example.com"),
            "{headers}"
        );
        assert!(
            headers.contains(&format!("\nX-RcptTo: user{i}@example.org")),
            "{headers}"
        );
        assert_eq!(body, sent_body, "message {i}");
    }
}

#[tokio::test]
async fn smtp_delivers_to_smtp_sink_and_the_sink_counts_every_message() {
    // smtp-sink announces PIPELINING unless given -p: both ways of sending the envelope.
    for flags in [&[][..], &["-p"]] {
        let mut builder = SmtpSink::builder();
        for flag in flags {
            builder = builder.arg(*flag);
        }
        let Some(sink) = builder.start() else {
            return;
        };
        let transport = smtp(&sink.url(), 2);
        for i in 0..20 {
            let accepted = transport.send(message(i)).await.expect("accepted");
            assert_eq!(accepted.reply.code, 250, "{flags:?}: {}", accepted.reply);
            assert!(accepted.reply.text.contains("Ok"), "{}", accepted.reply);
        }
        transport.close().await;
        let counters = sink.wait_for(SETTLE, |c| c.messages >= 20 && c.quits >= 2);
        assert_eq!(counters.messages, 20, "{flags:?}: {counters:?}");
        // Every message went over the two connections, each ended by QUIT.
        assert_eq!((counters.sessions, counters.quits), (2, 2), "{flags:?}");
    }
}

#[tokio::test]
async fn smtp_pipelining_sends_mail_rcpt_and_data_together_when_the_server_announces_it() {
    for pipelining in [true, false] {
        let Some(server) = Aiosmtpd::start_refusing(pipelining) else {
            return;
        };
        let transport = smtp(&server.url(), 1);
        transport.send(message(0)).await.expect("accepted");
        let three = ["a@example.org", "b@example.org", "c@example.org"];
        let accepted = transport
            .send(message_between(1, "bounce@example.com", &three))
            .await
            .expect("accepted");
        assert!(accepted.refused.is_empty(), "{accepted:?}");
        // Past the pipelining cap (100 recipients) the envelope goes one command at a time,
        // so the server's replies can never fill the socket while commands are still written.
        let many: Vec<String> = (0..101).map(|n| format!("r{n}@example.org")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let accepted = transport
            .send(message_between(2, "bounce@example.com", &many))
            .await
            .expect("accepted");
        assert!(accepted.refused.is_empty(), "{accepted:?}");
        transport.close().await;

        // The server notes which commands had already arrived when it read MAIL: all the
        // rest of the envelope when pipelined, nothing when the client waited for each reply.
        let stored = server.messages();
        assert_eq!(stored.len(), 3);
        let expected = if pipelining {
            ["RCPT DATA", "RCPT RCPT RCPT DATA", ""]
        } else {
            ["", "", ""]
        };
        for (i, expected) in expected.iter().enumerate() {
            let pipelined = header(stored_message(&stored, i), "X-Pipelined-With-Mail");
            assert_eq!(
                pipelined.as_deref(),
                Some(*expected),
                "pipelining announced: {pipelining}, message {i}"
            );
        }
        let rcpt_to = header(stored_message(&stored, 1), "X-RcptTo");
        assert_eq!(rcpt_to.as_deref(), Some(three.join(", ").as_str()));
        let rcpt_to = header(stored_message(&stored, 2), "X-RcptTo");
        assert_eq!(rcpt_to.as_deref(), Some(many.join(", ").as_str()));
    }
}

/// testkit's refusing aiosmtpd: the text of every refusal its address rules make.
fn rule_refusal(code: u16) -> delivery::Reply {
    delivery::Reply {
        code,
        text: format!("{}.7.1 Refused by the test's address rule", code / 100),
    }
}

fn rcpt_refused(address: &str, code: u16) -> delivery::RecipientRefused {
    let reply = rule_refusal(code);
    let error = if code < 500 {
        SendError::TransientReply {
            stage: Stage::RcptTo,
            reply,
        }
    } else {
        SendError::PermanentReply {
            stage: Stage::RcptTo,
            reply,
        }
    };
    delivery::RecipientRefused {
        address: address.to_string(),
        error,
    }
}

#[tokio::test]
async fn smtp_pipelined_refusals_end_as_one_by_one_and_the_connection_carries_the_next_message() {
    let mail_refused = |code, stage: Stage| {
        let reply = rule_refusal(code);
        if code < 500 {
            SendError::TransientReply { stage, reply }
        } else {
            SendError::PermanentReply { stage, reply }
        }
    };
    // (sender, recipients, the outcome: Ok with the refused recipients, or the error)
    type Outcome = Result<Vec<delivery::RecipientRefused>, SendError>;
    let cases: Vec<(&str, Vec<&str>, Outcome)> = vec![
        (
            "refuse-550@example.com",
            vec!["a@example.org"],
            Err(mail_refused(550, Stage::MailFrom)),
        ),
        (
            "refuse-450@example.com",
            vec!["a@example.org", "b@example.org"],
            Err(mail_refused(450, Stage::MailFrom)),
        ),
        (
            "bounce@example.com",
            vec!["refuse-450@example.org"],
            Err(rcpt_refused("refuse-450@example.org", 450).error),
        ),
        (
            "bounce@example.com",
            vec!["refuse-550@example.org"],
            Err(rcpt_refused("refuse-550@example.org", 550).error),
        ),
        (
            "bounce@example.com",
            vec!["refuse-450@example.org", "refuse-550@example.org"],
            Err(SendError::AllRecipientsRefused(vec![
                rcpt_refused("refuse-450@example.org", 450),
                rcpt_refused("refuse-550@example.org", 550),
            ])),
        ),
        (
            "bounce@example.com",
            vec!["a@example.org", "refuse-550@example.org", "b@example.org"],
            Ok(vec![rcpt_refused("refuse-550@example.org", 550)]),
        ),
        // RCPT accepted but not kept: aiosmtpd itself refuses DATA.
        (
            "bounce@example.com",
            vec!["forget@example.org"],
            Err(SendError::PermanentReply {
                stage: Stage::Data,
                reply: delivery::Reply {
                    code: 503,
                    text: "Error: need RCPT command".to_string(),
                },
            }),
        ),
        // RCPT refused yet kept: DATA gets 354 although no recipient was accepted.
        (
            "bounce@example.com",
            vec!["refuse-550-keep@example.org"],
            Err(rcpt_refused("refuse-550-keep@example.org", 550).error),
        ),
    ];
    for pipelining in [true, false] {
        let Some(server) = Aiosmtpd::start_refusing(pipelining) else {
            return;
        };
        let transport = smtp(&server.url(), 1);
        for (i, (from, to, expected)) in cases.iter().enumerate() {
            let outcome = transport
                .send(message_between(100 + i, from, to))
                .await
                .map(|accepted| accepted.refused);
            assert_eq!(
                &outcome, expected,
                "pipelining: {pipelining}, case {i}: {from} -> {to:?}"
            );
            // After a refusal the same connection takes the next message.
            transport
                .send(message(i))
                .await
                .unwrap_or_else(|err| panic!("pipelining: {pipelining}, after case {i}: {err}"));
        }
        transport.close().await;

        let stored = server.messages();
        for i in 0..cases.len() {
            stored_message(&stored, i);
        }
        // The partly refused message reached the other two recipients.
        let partly = cases.iter().position(|(_, _, e)| e.is_ok()).expect("case");
        assert_eq!(
            header(stored_message(&stored, 100 + partly), "X-RcptTo").as_deref(),
            Some("a@example.org, b@example.org")
        );
        // Where the server took DATA with no recipient accepted, the pipelined client ended
        // it with a lone dot (RFC 2920 §3.1): an empty message the server stored. The
        // one-by-one client never sent DATA.
        let empty: Vec<_> = stored.iter().filter(|m| message_id(m).is_none()).collect();
        assert_eq!(
            empty.len(),
            usize::from(pipelining),
            "pipelining: {pipelining}"
        );
        for message in &empty {
            assert_eq!(
                header(message, "X-RcptTo").as_deref(),
                Some("refuse-550-keep@example.org")
            );
            let text = String::from_utf8_lossy(message);
            assert_eq!(text.split_once("\n\n").map(|(_, body)| body), Some(""));
        }
        assert_eq!(stored.len(), cases.len() + 1 + empty.len());
        // One connection carried them all.
        let peers: HashSet<_> = stored.iter().map(|m| header(m, "X-Peer")).collect();
        assert_eq!(peers.len(), 1, "{peers:?}");
    }
}

// smtp-sink's -r and -f (refusals) imply -p: the tests with them send one command at a
// time. Pipelined refusals are tested against aiosmtpd below
// (smtp_pipelined_refusals_end_as_one_by_one_and_the_connection_carries_the_next_message).

#[tokio::test]
async fn smtp_fault_4xx_at_rcpt_is_temporary_with_the_server_text_and_keeps_the_connection() {
    let Some(sink) = SmtpSink::builder()
        .arg("-r")
        .arg("rcpt")
        .arg("-b")
        .arg("452 4.2.2 Mailbox full")
        .start()
    else {
        return;
    };
    let transport = smtp(&sink.url(), 1);
    for i in 0..3 {
        let error = transport.send(message(i)).await.expect_err("rejected");
        assert_eq!(error.class(), FailureClass::Temporary, "{error}");
        match &error {
            SendError::TransientReply { stage, reply } => {
                assert_eq!(*stage, Stage::RcptTo);
                assert_eq!(reply.code, 452);
                assert_eq!(reply.text, "4.2.2 Mailbox full");
            }
            other => panic!("expected a 4xx reply, got {other:?}"),
        }
        assert!(!error.may_have_been_delivered());
    }
    transport.close().await;
    // RSET kept the one connection usable: three rejections, one session, ended by QUIT.
    let counters = sink.wait_for(SETTLE, |c| c.quits >= 1);
    assert_eq!((counters.sessions, counters.quits), (1, 1), "{counters:?}");
    assert_eq!(counters.messages, 0);
}

#[tokio::test]
async fn smtp_fault_4xx_at_data_and_at_end_of_data_is_temporary() {
    for (command, stage) in [("data", Stage::Data), (".", Stage::Message)] {
        let Some(sink) = SmtpSink::builder().arg("-r").arg(command).start() else {
            return;
        };
        let transport = smtp(&sink.url(), 1);
        for i in 0..2 {
            let error = transport.send(message(i)).await.expect_err("rejected");
            assert_eq!(error.class(), FailureClass::Temporary, "{error}");
            assert_eq!(
                error,
                SendError::TransientReply {
                    stage,
                    reply: delivery::Reply {
                        code: 450,
                        text: "4.3.0 Error: command failed".to_string()
                    }
                }
            );
        }
        transport.close().await;
        let counters = sink.wait_for(SETTLE, |c| c.quits >= 1);
        assert_eq!((counters.sessions, counters.quits), (1, 1), "-r {command}");
    }
}

#[tokio::test]
async fn smtp_fault_5xx_at_rcpt_is_permanent_with_code_and_text() {
    let Some(sink) = SmtpSink::builder()
        .arg("-f")
        .arg("rcpt")
        .arg("-B")
        .arg("550 5.1.1 No such user here")
        .start()
    else {
        return;
    };
    let transport = smtp(&sink.url(), 1);
    for i in 0..2 {
        let error = transport.send(message(i)).await.expect_err("rejected");
        assert_eq!(error.class(), FailureClass::Permanent, "{error}");
        assert_eq!(error.code(), Some(550));
        assert_eq!(
            error.reply().map(|r| r.text.as_str()),
            Some("5.1.1 No such user here")
        );
        assert!(matches!(
            error,
            SendError::PermanentReply {
                stage: Stage::RcptTo,
                ..
            }
        ));
        assert_eq!(
            error.to_string(),
            "RCPT TO: permanent failure: 550 5.1.1 No such user here"
        );
    }
    transport.close().await;
    let counters = sink.wait_for(SETTLE, |c| c.quits >= 1);
    assert_eq!((counters.sessions, counters.quits), (1, 1));
}

#[tokio::test]
async fn smtp_fault_5xx_at_end_of_data_is_permanent() {
    let Some(sink) = SmtpSink::builder()
        .arg("-f")
        .arg(".")
        .arg("-B")
        .arg("554 5.7.1 Message rejected as spam")
        .start()
    else {
        return;
    };
    let transport = smtp(&sink.url(), 1);
    let error = transport.send(message(0)).await.expect_err("rejected");
    assert_eq!(error.class(), FailureClass::Permanent);
    assert!(
        matches!(
            error,
            SendError::PermanentReply {
                stage: Stage::Message,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.code(), Some(554));
    transport.close().await;
}

/// The server drops the connection without a reply at `command`; then it is replaced by a
/// healthy one on the same port and the transport must reconnect for the next message.
async fn disconnect_then_recover(command: &str, stage: Stage, maybe_delivered: bool) {
    let Some(faulty) = SmtpSink::builder().arg("-q").arg(command).start() else {
        return;
    };
    let port = faulty.port;
    let transport = smtp(&faulty.url(), 1);
    for i in 0..2 {
        let error = transport.send(message(i)).await.expect_err("disconnected");
        assert_eq!(error.class(), FailureClass::Temporary, "{error}");
        match &error {
            SendError::ConnectionLost { stage: got, .. } => assert_eq!(*got, stage, "{error}"),
            other => panic!("-q {command}: expected a lost connection, got {other:?}"),
        }
        assert_eq!(error.may_have_been_delivered(), maybe_delivered, "{error}");
    }
    faulty.stop();
    let Some(healthy) = SmtpSink::builder().port(port).start() else {
        return;
    };
    let accepted = transport
        .send(message(7))
        .await
        .expect("delivered after reconnect");
    assert_eq!(accepted.reply.code, 250);
    transport.close().await;
    assert_eq!(healthy.wait_for(SETTLE, |c| c.messages >= 1).messages, 1);
}

#[tokio::test]
async fn smtp_fault_disconnect_at_rcpt_is_temporary_and_the_transport_reconnects() {
    disconnect_then_recover("rcpt", Stage::RcptTo, false).await;
}

#[tokio::test]
async fn smtp_fault_disconnect_mid_data_is_temporary_and_the_transport_reconnects() {
    // After the content, before the reply: the one case where the message may have arrived.
    disconnect_then_recover(".", Stage::Message, true).await;
}

#[tokio::test]
async fn smtp_fault_421_closing_is_temporary_and_the_transport_reconnects() {
    let Some(sink) = SmtpSink::builder().arg("-Q").arg("rcpt").start() else {
        return;
    };
    let transport = smtp(&sink.url(), 1);
    for i in 0..2 {
        let error = transport.send(message(i)).await.expect_err("421");
        assert_eq!(error.class(), FailureClass::Temporary);
        assert_eq!(error.code(), Some(421), "{error}");
    }
    transport.close().await;
    // 421 means the server closes: each message needed a connection of its own.
    let counters = sink.wait_for(SETTLE, |c| c.sessions >= 2);
    assert_eq!(counters.sessions, 2, "{counters:?}");
}

#[tokio::test]
async fn smtp_fault_server_not_running_is_temporary_with_a_clear_error() {
    let port = testkit::smtp::free_port();
    let transport = smtp(&format!("smtp://127.0.0.1:{port}?tls=none"), 1);
    let error = transport
        .send(message(0))
        .await
        .expect_err("nobody listens");
    assert_eq!(error.class(), FailureClass::Temporary);
    let text = error.to_string();
    assert!(
        text.contains(&format!("cannot connect to 127.0.0.1:{port}")) && text.contains("refused"),
        "{text}"
    );
    // The server comes up: the next message goes through on a fresh connection.
    let Some(sink) = SmtpSink::builder().port(port).start() else {
        return;
    };
    transport
        .send(message(1))
        .await
        .expect("delivered once the server is up");
    transport.close().await;
    assert_eq!(sink.wait_for(SETTLE, |c| c.messages >= 1).messages, 1);
}

#[tokio::test]
async fn smtp_fault_silent_server_times_out_as_temporary() {
    // smtp-sink waits 5 s before answering DATA; our limit is 300 ms. One by one (-p), the
    // wait is for DATA's reply. Pipelined, smtp-sink holds the replies to MAIL and RCPT until
    // it answers the group's last command (RFC 2920 lets a server send a group's replies
    // together), so the first reply awaited, MAIL's, is the one that times out.
    for (flags, stage) in [(&["-p"][..], Stage::Data), (&[], Stage::MailFrom)] {
        let mut builder = SmtpSink::builder().arg("-w").arg("5");
        for flag in flags {
            builder = builder.arg(*flag);
        }
        let Some(sink) = builder.start() else {
            return;
        };
        let transport = smtp_with_timeout(&sink.url(), Duration::from_millis(300));
        let started = std::time::Instant::now();
        let error = transport.send(message(0)).await.expect_err("timed out");
        assert_eq!(
            error,
            SendError::Timeout {
                stage,
                after: Duration::from_millis(300)
            },
            "{flags:?}"
        );
        assert_eq!(error.class(), FailureClass::Temporary);
        assert!(!error.may_have_been_delivered());
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        transport.close().await;
    }
}

#[tokio::test]
async fn smtp_many_messages_over_four_connections_arrive_exactly_once() {
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let transport = Arc::new(smtp(&server.url(), 4));
    let count = 300;
    let sends: Vec<_> = (0..count)
        .map(|i| {
            let transport = transport.clone();
            tokio::spawn(async move { transport.send(message(i)).await })
        })
        .collect();
    for send in sends {
        send.await.expect("task").expect("accepted");
    }
    transport.close().await;

    let stored = server.messages();
    let mut seen: HashMap<String, usize> = HashMap::new();
    // aiosmtpd records each message's client as X-Peer: ('127.0.0.1', <port>): one source
    // port per connection.
    let mut peers = HashSet::new();
    for message in &stored {
        *seen
            .entry(message_id(message).expect("Message-ID"))
            .or_default() += 1;
        let text = String::from_utf8_lossy(message);
        let peer = text
            .lines()
            .find_map(|line| line.strip_prefix("X-Peer: "))
            .expect("X-Peer")
            .to_string();
        peers.insert(peer);
    }
    assert_eq!(stored.len(), count);
    assert_eq!(seen.len(), count);
    assert!(seen.values().all(|&n| n == 1), "duplicates: {seen:?}");
    assert!((2..=4).contains(&peers.len()), "connections: {peers:?}");
}

#[tokio::test]
async fn smtp_auth_plain_is_offered_to_a_server_that_announces_it() {
    // smtp-sink announces AUTH PLAIN LOGIN and accepts any credentials.
    let Some(sink) = SmtpSink::start() else {
        return;
    };
    let url = format!("smtp://mailer:s%40cret@127.0.0.1:{}?tls=none", sink.port);
    let transport = smtp(&url, 1);
    assert!(transport.describe().contains("AUTH as mailer"));
    assert!(!transport.describe().contains("cret"));
    transport
        .send(message(0))
        .await
        .expect("accepted after AUTH");
    transport.close().await;
    assert_eq!(sink.wait_for(SETTLE, |c| c.messages >= 1).messages, 1);
}

#[tokio::test]
async fn smtp_tls_required_refuses_a_server_without_starttls() {
    let Some(sink) = SmtpSink::start() else {
        return;
    };
    let transport = smtp(&format!("smtp://127.0.0.1:{}?tls=required", sink.port), 1);
    let error = transport.send(message(0)).await.expect_err("no STARTTLS");
    assert!(
        matches!(
            error,
            SendError::Protocol {
                stage: Stage::StartTls,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.class(), FailureClass::Temporary);
    assert!(
        error.to_string().contains("does not offer STARTTLS"),
        "{error}"
    );
    transport.close().await;
    assert_eq!(sink.counters().messages, 0);
}

#[tokio::test]
async fn smtp_tls_starttls_to_aiosmtpd_with_a_private_ca() {
    let Some(cert) = TestCertificate::create() else {
        return;
    };
    let Some(server) = Aiosmtpd::start_with(AiosmtpdTls::StartTls {
        cert: cert.cert.clone(),
        key: cert.key.clone(),
    }) else {
        return;
    };
    let url = format!(
        "smtp://localhost:{}?tls=required&tls_ca={}",
        server.port,
        cert.ca.display()
    );
    let transport = smtp(&url, 1);
    transport
        .send(message(0))
        .await
        .expect("accepted over STARTTLS");
    transport.close().await;
    assert_eq!(server.messages().len(), 1);

    // Without the CA the certificate is not trusted: no delivery in plain text instead.
    let transport = smtp(&format!("smtp://localhost:{}?tls=required", server.port), 1);
    let error = transport
        .send(message(1))
        .await
        .expect_err("untrusted certificate");
    assert!(
        matches!(
            error,
            SendError::Protocol {
                stage: Stage::StartTls,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.class(), FailureClass::Temporary);
    transport.close().await;
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn smtp_tls_implicit_smtps_to_aiosmtpd() {
    let Some(cert) = TestCertificate::create() else {
        return;
    };
    let Some(server) = Aiosmtpd::start_with(AiosmtpdTls::Implicit {
        cert: cert.cert.clone(),
        key: cert.key.clone(),
    }) else {
        return;
    };
    let url = format!(
        "smtps://localhost:{}?tls_ca={}",
        server.port,
        cert.ca.display()
    );
    let transport = smtp(&url, 2);
    assert!(transport.describe().contains("implicit TLS"));
    for i in 0..3 {
        transport
            .send(message(i))
            .await
            .expect("accepted over SMTPS");
    }
    transport.close().await;
    assert_eq!(server.messages().len(), 3);
}

#[tokio::test]
async fn smtp_transport_from_config_describes_itself() {
    let Some(sink) = SmtpSink::start() else {
        return;
    };
    let transport = transport_from_config(&TransportConfig {
        smtp_url: Some(sink.url()),
        connections: 3,
        ..TransportConfig::default()
    })
    .expect("transport");
    assert_eq!(
        transport.describe(),
        format!("smtp://127.0.0.1:{}, 3 connections, no TLS", sink.port)
    );
    transport.send(message(0)).await.expect("accepted");
    transport.close().await;
    assert!(matches!(
        transport.send(message(1)).await,
        Err(SendError::Closed)
    ));
    assert_eq!(sink.wait_for(SETTLE, |c| c.messages >= 1).messages, 1);
}

#[tokio::test]
async fn smtp_idle_connection_closed_by_the_server_is_replaced_without_failing_a_message() {
    // smtp-sink drops a session that sends nothing for 1 s, as a real server does after its
    // idle timeout; the next message must not pay for it.
    let Some(sink) = SmtpSink::builder().arg("-t").arg("1").start() else {
        return;
    };
    let transport = smtp(&sink.url(), 1);
    transport.send(message(0)).await.expect("accepted");
    // Wait (bounded) until the server has really ended the idle session.
    let counters = sink.wait_for(SETTLE, |c| c.sessions >= 1);
    assert_eq!(counters.sessions, 1, "{counters:?}");
    transport
        .send(message(1))
        .await
        .expect("accepted on a fresh connection");
    transport.close().await;
    let counters = sink.wait_for(SETTLE, |c| c.quits >= 1);
    assert_eq!(
        (counters.messages, counters.sessions, counters.quits),
        (2, 2, 1),
        "{counters:?}"
    );
}

#[tokio::test]
async fn smtp_idn_domain_reaches_a_server_without_smtputf8_as_a_labels() {
    // testkit's aiosmtpd runs without --smtputf8: it does not announce SMTPUTF8.
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let transport = smtp(&server.url(), 1);
    let envelope =
        Envelope::new("bounce@bücher.example", ["idn@Bücher.example"]).expect("valid envelope");
    assert_eq!(
        envelope.to().collect::<Vec<_>>(),
        ["idn@xn--bcher-kva.example"]
    );
    let accepted = transport
        .send(OutgoingMessage::new(
            envelope,
            content(1, "idn@xn--bcher-kva.example"),
        ))
        .await
        .expect("an IDN domain needs no SMTPUTF8");
    assert_eq!(accepted.reply.code, 250, "{}", accepted.reply);

    // A non-ASCII local part has no ASCII form: a clear failure for that recipient alone.
    let envelope =
        Envelope::new("bounce@example.com", ["josé@bücher.example"]).expect("valid envelope");
    let refused = transport
        .send(OutgoingMessage::new(envelope, content(2, "x@example.org")))
        .await
        .expect_err("no SMTPUTF8 for a non-ASCII local part");
    assert!(
        matches!(&refused, SendError::Unsendable(why) if why.contains("SMTPUTF8")),
        "{refused:?}"
    );
    transport.close().await;

    let stored = server.messages();
    assert_eq!(stored.len(), 1);
    let text = String::from_utf8_lossy(&stored[0]);
    assert!(
        text.contains("\nX-RcptTo: idn@xn--bcher-kva.example"),
        "{text}"
    );
    assert!(
        text.contains("\nX-MailFrom: bounce@xn--bcher-kva.example"),
        "{text}"
    );
}

/// Bodies that exercise dot-stuffing: a dot at the start of the body, lone-dot lines (which
/// would end DATA early if left single), doubled dots, dot lines around the 8 KiB and 64 KiB
/// buffer sizes with the CRLF split across each, and a last line without its CRLF. (No bare
/// LF: servers differ on whether it ends a line; the unit tests cover it against lettre.)
fn dotted_bodies() -> Vec<String> {
    let mut large = String::new();
    for boundary in [8192usize, 65536] {
        for offset in [-3i64, -2, -1, 0, 1, 2] {
            let target = (boundary as i64 + offset) as usize;
            while large.len() < target {
                large.push_str(if large.len() % 78 == 76 { "\r\n" } else { "x" });
            }
            large.push_str("\r\n.\r\n..\r\n.x\r\n");
        }
    }
    large.push_str("end\r\n");
    vec![
        ".starts with a dot\r\n.\r\n..\r\n...\r\n. \r\nend\r\n".to_string(),
        "é and ü in 8-bit\r\n.é\r\n.".to_string(),
        large,
    ]
}

fn dotted_message(i: usize, body: &str) -> (String, OutgoingMessage) {
    let to = format!("dots{i}@example.org");
    let content = format!(
        "From: <sender@example.com>\r\nTo: <{to}>\r\nSubject: dots {i}\r\nMessage-ID: <dots-{i}@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{body}"
    );
    let envelope = Envelope::new("bounce@example.com", [to.as_str()]).expect("valid envelope");
    (content.clone(), OutgoingMessage::new(envelope, content))
}

#[tokio::test]
async fn smtp_dot_stuffing_delivers_every_dot_line_intact_to_aiosmtpd() {
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let transport = smtp(&server.url(), 1);
    let bodies = dotted_bodies();
    let mut sent = Vec::new();
    for (i, body) in bodies.iter().enumerate() {
        let (content, outgoing) = dotted_message(i, body);
        let accepted = transport.send(outgoing).await.expect("accepted");
        assert_eq!(accepted.reply.code, 250, "{}", accepted.reply);
        sent.push(content);
    }
    transport.close().await;

    let stored = server.messages();
    assert_eq!(stored.len(), bodies.len());
    for (i, content) in sent.iter().enumerate() {
        let found = stored
            .iter()
            .find(|m| message_id(m).as_deref() == Some(&format!("<dots-{i}@example.com>")))
            .unwrap_or_else(|| panic!("message {i} not in the Maildir"));
        let text = String::from_utf8_lossy(found);
        let (_, body) = text.split_once("\n\n").expect("header/body separator");
        // The server un-stuffs; a last line without CRLF ends with the terminator's CRLF.
        let mut expected = content
            .split_once("\r\n\r\n")
            .expect("separator")
            .1
            .to_string();
        if !expected.ends_with("\r\n") {
            expected.push_str("\r\n");
        }
        assert_eq!(body.as_bytes(), lf(&expected).as_slice(), "message {i}");
    }
}

#[tokio::test]
async fn smtp_dot_stuffing_keeps_smtp_sink_in_step_also_for_non_utf8_content() {
    let Some(sink) = SmtpSink::start() else {
        return;
    };
    let transport = smtp(&sink.url(), 1);
    let mut count = 0u64;
    for (i, body) in dotted_bodies().iter().enumerate() {
        let (_, outgoing) = dotted_message(i, body);
        let accepted = transport.send(outgoing).await.expect("accepted");
        assert_eq!(accepted.reply.code, 250, "{}", accepted.reply);
        count += 1;
    }
    // Latin-1 bytes are not UTF-8: this content goes through lettre's own stuffing.
    let (content, _) = dotted_message(99, ".\r\n..\r\nend\r\n");
    let mut bytes = content.into_bytes();
    bytes.extend_from_slice(b"caf\xe9\r\n.\r\n");
    let envelope = Envelope::new("bounce@example.com", ["latin1@example.org"]).expect("valid");
    let accepted = transport
        .send(OutgoingMessage::new(envelope, bytes))
        .await
        .expect("accepted");
    assert_eq!(accepted.reply.code, 250, "{}", accepted.reply);
    count += 1;
    // A lone dot left unstuffed would end DATA early and the rest would be read as commands:
    // the next transaction on the same connection would fail.
    let accepted = transport.send(message(1)).await.expect("still in step");
    assert_eq!(accepted.reply.code, 250, "{}", accepted.reply);
    count += 1;
    transport.close().await;
    let counters = sink.wait_for(SETTLE, |c| c.messages >= count && c.quits >= 1);
    assert_eq!(counters.messages, count, "{counters:?}");
}
