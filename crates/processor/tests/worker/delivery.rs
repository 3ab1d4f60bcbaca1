//! Delivering campaigns: every recipient reached once, faults of the server (4xx, 5xx, a
//! hang-up, the server gone), suppressions, pause/cancel bounds, crashes, VERP, local send
//! times, submissions and panics.

use crate::support::*;
use campaign::{
    CampaignDocument, CampaignId, CampaignStatus, DeliveryStatus, EmailAddress, Limits, Recipient,
};
use delivery::Transport;
use processor::{WakingTasks, Worker};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tasks::TaskRepository;
use testkit::smtp::{Aiosmtpd, SmtpSink};
use tokio_util::sync::CancellationToken;

/// 5,000 recipients into aiosmtpd: each gets exactly one message (by Message-ID and RCPT),
/// personalized, and the rows and counters say so.
async fn five_thousand_recipients_each_get_one_personalized_message(harness: Harness) {
    const COUNT: usize = 5_000;
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let id = harness.campaign("Five thousand", COUNT, 100).await;
    let transport = transport(&server.url());
    let started = Instant::now();
    let worker = harness.start(worker_config("big"), transport.clone());
    harness.enqueue(id).await;
    let status = harness.wait_final_within(id, BIG_FINISH_LIMIT).await;
    let elapsed = started.elapsed();
    let stats = worker.stop().await;
    transport.close().await;
    eprintln!(
        "{COUNT} recipients into aiosmtpd on {}: {:.1} s",
        harness.store.backend(),
        elapsed.as_secs_f64()
    );

    assert_eq!(status, CampaignStatus::Completed);
    let counts = harness.counts(id).await;
    assert_eq!(counts.get(DeliveryStatus::Sent), COUNT as i64, "{counts:?}");
    assert_eq!(counts.total(), COUNT as i64, "{counts:?}");
    assert_eq!(stats.sent, COUNT as u64, "the worker's counters agree");

    let sent = harness.deliveries(id, None).await;
    assert_eq!(sent.len(), COUNT);
    for delivery in &sent {
        assert_eq!(delivery.status, DeliveryStatus::Sent, "{delivery:?}");
        assert_eq!(delivery.attempts, 1, "{delivery:?}");
        assert!(
            delivery
                .smtp_reply
                .as_deref()
                .is_some_and(|reply| reply.starts_with("250")),
            "{delivery:?}"
        );
    }

    let arrived = arrivals(&server);
    assert_eq!(arrived.len(), COUNT, "one message per recipient, no more");
    let copies = assert_each_recipient_reached(&arrived, id, &sent);
    assert!(copies.values().all(|&n| n == 1));
    let per_rcpt: HashSet<&str> = arrived.iter().map(|a| a.rcpt.as_str()).collect();
    assert_eq!(per_rcpt.len(), COUNT, "each recipient once");

    // A sample across the whole range has its own subject.
    let subject_of: HashMap<&str, &str> = arrived
        .iter()
        .map(|a| (a.rcpt.as_str(), a.subject.as_str()))
        .collect();
    for n in (0..COUNT).step_by(COUNT / 20).chain([COUNT - 1]) {
        let expected = format!("Hello {}", first_name(n));
        assert_eq!(
            subject_of.get(email(n).as_str()).copied(),
            Some(expected.as_str()),
            "recipient {n}"
        );
    }
}

/// A 4xx at RCPT defers every recipient with the server's text; once the server accepts
/// again, each is delivered.
async fn temporary_rejections_are_deferred_then_delivered(harness: Harness) {
    const COUNT: usize = 200;
    let Some(faulty) = start_sink(
        SmtpSink::builder()
            .arg("-r")
            .arg("rcpt")
            .arg("-b")
            .arg("452 4.2.2 Mailbox full"),
    ) else {
        return;
    };
    let port = faulty.port;
    let id = harness.campaign("Mailbox full", COUNT, 50).await;
    let transport = transport(&faulty.url());
    let worker = harness.start(worker_config("temporary"), transport.clone());
    harness.enqueue(id).await;

    harness
        .wait_counts(id, "every recipient deferred", |c| {
            c.get(DeliveryStatus::Deferred) == COUNT as i64
        })
        .await;
    for delivery in harness.deliveries(id, None).await {
        assert_eq!(delivery.status, DeliveryStatus::Deferred, "{delivery:?}");
        let error = delivery.last_error.as_deref().unwrap_or_default();
        assert!(error.contains("452 4.2.2 Mailbox full"), "{delivery:?}");
        assert!(delivery.next_attempt_at.is_some(), "{delivery:?}");
    }
    assert_eq!(faulty.counters().messages, 0);

    faulty.stop();
    let Some(healthy) = start_sink(SmtpSink::builder().port(port)) else {
        return;
    };
    let status = harness.wait_final(id).await;
    worker.stop().await;
    transport.close().await;

    assert_eq!(status, CampaignStatus::Completed);
    let counts = harness.counts(id).await;
    assert_eq!(counts.get(DeliveryStatus::Sent), COUNT as i64, "{counts:?}");
    assert_eq!(counts.total(), COUNT as i64, "{counts:?}");
    for delivery in harness.deliveries(id, None).await {
        assert_eq!(delivery.status, DeliveryStatus::Sent, "{delivery:?}");
        assert!(delivery.attempts >= 2, "deferred first: {delivery:?}");
    }
    assert_eq!(wait_received(&healthy, COUNT as u64).await, COUNT as u64);
}

/// A 5xx at RCPT fails every recipient at once with the server's text; nothing was sent, so
/// the campaign failed.
async fn permanent_rejections_fail_every_recipient_with_the_server_text(harness: Harness) {
    const COUNT: usize = 100;
    let Some(sink) = start_sink(
        SmtpSink::builder()
            .arg("-f")
            .arg("rcpt")
            .arg("-B")
            .arg("550 5.1.1 No such user here"),
    ) else {
        return;
    };
    let id = harness.campaign("No such user", COUNT, 25).await;
    let transport = transport(&sink.url());
    let worker = harness.start(worker_config("permanent"), transport.clone());
    harness.enqueue(id).await;
    let status = harness.wait_final(id).await;
    let stats = worker.stop().await;
    transport.close().await;

    assert_eq!(status, CampaignStatus::Failed);
    let counts = harness.counts(id).await;
    assert_eq!(
        counts.get(DeliveryStatus::Failed),
        COUNT as i64,
        "{counts:?}"
    );
    assert_eq!(counts.get(DeliveryStatus::Sent), 0, "{counts:?}");
    assert_eq!(counts.total(), COUNT as i64, "{counts:?}");
    assert_eq!((stats.failed, stats.deferred), (COUNT as u64, 0));
    let failed = harness.deliveries(id, Some(DeliveryStatus::Failed)).await;
    assert_eq!(failed.len(), COUNT);
    for delivery in failed {
        let error = delivery.last_error.as_deref().unwrap_or_default();
        assert!(
            error.contains("550 5.1.1 No such user here"),
            "{delivery:?}"
        );
        assert_eq!(delivery.attempts, 1, "a permanent failure is not retried");
    }
    assert_eq!(sink.counters().messages, 0);
}

/// The server hangs up after the content, before its reply: the message may or may not have
/// arrived, so it is retried (deferred), and delivered once the server behaves.
async fn a_hang_up_after_the_content_defers_then_delivers(harness: Harness) {
    const COUNT: usize = 200;
    let Some(faulty) = start_sink(SmtpSink::builder().arg("-q").arg(".")) else {
        return;
    };
    let port = faulty.port;
    let id = harness.campaign("Hang up", COUNT, 50).await;
    let transport = transport(&faulty.url());
    let worker = harness.start(worker_config("hang-up"), transport.clone());
    harness.enqueue(id).await;

    harness
        .wait_counts(id, "every recipient deferred", |c| {
            c.get(DeliveryStatus::Deferred) == COUNT as i64
        })
        .await;
    for delivery in harness.deliveries(id, None).await {
        let error = delivery.last_error.as_deref().unwrap_or_default();
        assert!(
            error.contains("end of data") && error.contains("connection lost"),
            "{delivery:?}"
        );
    }

    faulty.stop();
    let Some(healthy) = start_sink(SmtpSink::builder().port(port)) else {
        return;
    };
    let status = harness.wait_final(id).await;
    worker.stop().await;
    transport.close().await;

    assert_eq!(status, CampaignStatus::Completed);
    let counts = harness.counts(id).await;
    assert_eq!(counts.get(DeliveryStatus::Sent), COUNT as i64, "{counts:?}");
    assert_eq!(counts.total(), COUNT as i64, "{counts:?}");
    assert_eq!(wait_received(&healthy, COUNT as u64).await, COUNT as u64);
}

/// How long the SMTP server stays away in the outage case.
const OUTAGE: Duration = Duration::from_secs(10);

/// The server goes away mid-campaign for about 10 s and comes back on the same port:
/// recipients are deferred meanwhile (retries too), none fails, all are sent in the end.
async fn a_server_gone_mid_campaign_loses_no_recipient(harness: Harness) {
    const COUNT: usize = 3_000;
    let Some(first) = start_sink(SmtpSink::builder()) else {
        return;
    };
    let port = first.port;
    let id = harness.campaign("Server gone", COUNT, 100).await;
    let transport = transport(&first.url());
    let worker = harness.start(worker_config("server-gone"), transport.clone());
    harness.enqueue(id).await;

    wait_until("the first messages at the sink", CONDITION_LIMIT, || {
        first.counters().messages >= 200
    })
    .await;
    first.stop();
    let stopped = Instant::now();
    let at_stop = harness.counts(id).await;
    assert!(
        at_stop.get(DeliveryStatus::Sent) < COUNT as i64,
        "the server must go away mid-campaign: {at_stop:?}"
    );

    // Down long enough that deferred recipients were retried and deferred again.
    let deadline = Instant::now() + CONDITION_LIMIT;
    let retried = loop {
        let deferred = harness
            .store
            .list_deliveries(id, Some(DeliveryStatus::Deferred), None, 1000)
            .await
            .expect("deliveries");
        if let Some(retried) = deferred.into_iter().find(|d| d.attempts >= 2) {
            break retried;
        }
        assert!(
            Instant::now() < deadline,
            "no recipient retried while the server was down: {:?}",
            harness.counts(id).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = retried.last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains(&format!("cannot connect to 127.0.0.1:{port}")),
        "{retried:?}"
    );
    // The outage itself is the scenario (about 10 s, several retries long), not a wait for
    // something to happen.
    tokio::time::sleep(OUTAGE.saturating_sub(stopped.elapsed())).await;
    let during = harness.counts(id).await;
    assert_eq!(during.get(DeliveryStatus::Failed), 0, "{during:?}");
    assert!(during.get(DeliveryStatus::Deferred) > 0, "{during:?}");

    let Some(second) = start_sink(SmtpSink::builder().port(port)) else {
        return;
    };
    let status = harness.wait_final(id).await;
    worker.stop().await;
    transport.close().await;

    assert_eq!(status, CampaignStatus::Completed);
    let counts = harness.counts(id).await;
    assert_eq!(counts.get(DeliveryStatus::Failed), 0, "{counts:?}");
    assert_eq!(counts.get(DeliveryStatus::Sent), COUNT as i64, "{counts:?}");
    assert_eq!(counts.total(), COUNT as i64, "{counts:?}");
    // Every outcome of the first server's session was recorded long before a retry could
    // fail, so the second server gets exactly the recipients not yet sent then.
    let unsent = COUNT as u64 - during.get(DeliveryStatus::Sent) as u64;
    assert_eq!(wait_received(&second, unsent).await, unsent, "{during:?}");
}

/// Suppressed addresses (matched whatever their case) are recorded as suppressed and never
/// reach the server.
async fn suppressed_recipients_are_recorded_and_never_sent(harness: Harness) {
    const COUNT: usize = 100;
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let id = harness.campaign("Suppressed", COUNT, 30).await;
    let suppressed: HashSet<String> = (0..COUNT).step_by(10).map(email).collect();
    for (i, address) in suppressed.iter().enumerate() {
        let written = if i % 2 == 0 {
            address.to_ascii_uppercase()
        } else {
            address.clone()
        };
        harness
            .store
            .suppress(&EmailAddress::parse(&written).unwrap(), "unsubscribed")
            .await
            .expect("suppressed");
    }
    let transport = transport(&server.url());
    let worker = harness.start(worker_config("suppressed"), transport.clone());
    harness.enqueue(id).await;
    let status = harness.wait_final(id).await;
    worker.stop().await;
    transport.close().await;

    assert_eq!(status, CampaignStatus::Completed);
    let counts = harness.counts(id).await;
    let expected_sent = (COUNT - suppressed.len()) as i64;
    assert_eq!(
        counts.get(DeliveryStatus::Suppressed),
        suppressed.len() as i64,
        "{counts:?}"
    );
    assert_eq!(
        counts.get(DeliveryStatus::Sent),
        expected_sent,
        "{counts:?}"
    );
    assert_eq!(counts.total(), COUNT as i64, "{counts:?}");
    let marked: HashSet<String> = harness
        .deliveries(id, Some(DeliveryStatus::Suppressed))
        .await
        .into_iter()
        .map(|d| {
            assert_eq!(d.attempts, 0, "never attempted: {d:?}");
            d.email
        })
        .collect();
    assert_eq!(marked, suppressed);

    let arrived = arrivals(&server);
    assert_eq!(arrived.len(), expected_sent as usize);
    for arrival in &arrived {
        assert!(
            !suppressed.contains(&arrival.rcpt),
            "{} is suppressed but got a message",
            arrival.rcpt
        );
    }
    let sent = harness.deliveries(id, Some(DeliveryStatus::Sent)).await;
    assert_each_recipient_reached(&arrived, id, &sent);
}

/// A worker stopped without grace (its run future aborted, like a crash) and a second worker
/// with another id: every recipient is delivered, and the copies beyond one per recipient are
/// at most the first worker's `in_flight` (messages accepted but not yet recorded).
async fn an_aborted_worker_loses_nothing_and_duplicates_stay_within_in_flight(harness: Harness) {
    const COUNT: usize = 1_000;
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let id = harness.campaign("Crash", COUNT, 100).await;
    let mut first_config = worker_config("crashing");
    first_config.lease = Duration::from_secs(2);
    let bound = first_config.in_flight;
    let first_transport = transport(&server.url());
    let first = harness.start(first_config, first_transport.clone());
    harness.enqueue(id).await;
    wait_until("a part of the mail at the server", CONDITION_LIMIT, || {
        server.message_count() >= COUNT / 5
    })
    .await;
    first.handle.abort();
    let ended = first.handle.await;
    assert!(
        ended.as_ref().is_err_and(|err| err.is_cancelled()),
        "the first worker was aborted mid-campaign, not finished: {ended:?}"
    );
    // Its connections end the message they carry; queued ones whose sender is gone are
    // dropped (a real crash would cut them instead).
    first_transport.close().await;
    let at_crash = harness.counts(id).await;
    assert!(
        at_crash.get(DeliveryStatus::Sent) < COUNT as i64,
        "the crash must come mid-campaign: {at_crash:?}"
    );

    let mut second_config = worker_config("successor");
    second_config.lease = Duration::from_secs(2);
    let second_transport = transport(&server.url());
    let second = harness.start(second_config, second_transport.clone());
    let status = harness.wait_final(id).await;
    second.stop().await;
    second_transport.close().await;

    assert_eq!(status, CampaignStatus::Completed);
    let counts = harness.counts(id).await;
    assert_eq!(counts.get(DeliveryStatus::Sent), COUNT as i64, "{counts:?}");
    assert_eq!(counts.total(), COUNT as i64, "{counts:?}");
    let sent = harness.deliveries(id, None).await;
    let arrived = arrivals(&server);
    let copies = assert_each_recipient_reached(&arrived, id, &sent);
    let duplicates = arrived.len() - copies.len();
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates; the bound is the aborted worker's in_flight = {bound}"
    );
    assert!(copies.values().all(|&n| n <= 2), "at most one extra copy");
    eprintln!(
        "aborted worker on {}: {duplicates} duplicate(s) (bound {bound}), {} sent before the abort",
        harness.store.backend(),
        at_crash.get(DeliveryStatus::Sent)
    );
}

/// Paused mid-campaign, the campaign stops sending (beyond the messages in flight); resumed,
/// it continues with the recipients not yet sent: every recipient gets exactly one message.
async fn a_paused_campaign_resumes_without_a_second_copy_to_anyone(harness: Harness) {
    const COUNT: usize = 1_500;
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let id = harness.campaign("Paused", COUNT, 100).await;
    let transport = transport(&server.url());
    let worker = harness.start(worker_config("pause"), transport.clone());
    harness.enqueue(id).await;
    wait_until("the first messages at the server", CONDITION_LIMIT, || {
        server.message_count() >= 200
    })
    .await;
    assert!(
        harness
            .store
            .transition_campaign(id, &[CampaignStatus::Sending], CampaignStatus::Paused)
            .await
            .unwrap()
    );
    // Running batches notice within their status check; after that nothing more is sent.
    let deadline = Instant::now() + CONDITION_LIMIT;
    let settled = loop {
        let before = server.message_count();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let after = server.message_count();
        if before == after {
            break after;
        }
        assert!(
            Instant::now() < deadline,
            "sending did not stop after the pause"
        );
    };
    assert!(
        settled < COUNT,
        "paused mid-campaign: {settled} of {COUNT} arrived"
    );
    assert_eq!(harness.status(id).await, CampaignStatus::Paused);

    assert!(
        service::CampaignService::new(harness.store.as_ref(), harness.tasks.as_ref())
            .resume(id)
            .await
            .unwrap()
    );
    assert!(
        !service::CampaignService::new(harness.store.as_ref(), harness.tasks.as_ref())
            .resume(id)
            .await
            .unwrap(),
        "resuming twice does nothing more"
    );
    let status = harness.wait_final(id).await;
    worker.stop().await;
    transport.close().await;
    assert_eq!(status, CampaignStatus::Completed);
    assert_eq!(
        harness.counts(id).await.get(DeliveryStatus::Sent),
        COUNT as i64
    );
    let arrived = arrivals(&server);
    let ids: HashSet<&str> = arrived.iter().map(|a| a.message_id.as_str()).collect();
    assert_eq!(arrived.len(), COUNT, "one message per recipient, no more");
    assert_eq!(ids.len(), COUNT);
}

/// Cancel mid-campaign at a real SMTP server: once the cancel has committed (what the API
/// acknowledges), at most the worker's in-flight messages (IN_FLIGHT) still reach the server,
/// because each message checks a status read begun after it took its slot.
async fn a_cancelled_campaign_sends_at_most_its_in_flight_messages_after_the_cancel(
    harness: Harness,
) {
    const COUNT: usize = 3_000;
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let id = harness.campaign("Cancelled", COUNT, 100).await;
    let transport = transport(&server.url());
    let worker = harness.start(worker_config("cancel"), transport.clone());
    harness.enqueue(id).await;
    wait_until("the first messages at the server", CONDITION_LIMIT, || {
        server.message_count() >= 200
    })
    .await;
    assert!(
        harness
            .store
            .cancel_campaign(id, &[CampaignStatus::Sending, CampaignStatus::Paused])
            .await
            .unwrap()
    );
    let at_acknowledgement = server.message_count();
    // A graceful stop waits for any send still running, so the server's count is final.
    worker.stop().await;
    transport.close().await;
    let arrived = arrivals(&server);
    let after = arrived.len() - at_acknowledgement;
    assert!(
        after <= IN_FLIGHT,
        "{after} messages reached the server after the cancel; the bound is {IN_FLIGHT}"
    );
    assert!(arrived.len() < COUNT, "cancelled mid-campaign");
    assert_eq!(harness.status(id).await, CampaignStatus::Cancelled);
    let counts = harness.counts(id).await;
    assert_eq!(
        counts.get(DeliveryStatus::Sent),
        arrived.len() as i64,
        "every message that arrived is recorded as sent"
    );
    assert_eq!(
        counts.get(DeliveryStatus::Sent) + counts.get(DeliveryStatus::Cancelled),
        COUNT as i64
    );
    let ids: HashSet<&str> = arrived.iter().map(|a| a.message_id.as_str()).collect();
    assert_eq!(ids.len(), arrived.len(), "no second copy");
    eprintln!("cancel: {after} message(s) after the acknowledgement (bound {IN_FLIGHT})");
}

/// With a VERP domain, every message's envelope sender (MAIL FROM, as the server recorded it) is
/// `bounces+TOKEN@domain`, and the token names exactly that message's campaign and recipient.
async fn every_message_returns_bounces_to_its_own_verp_address(harness: Harness) {
    const COUNT: usize = 20;
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let id = harness.campaign("VERP", COUNT, 10).await;
    let transport = transport(&server.url());
    let mut services = harness.services(transport.clone());
    let keys = services.links.keys().clone();
    services.links = Arc::new(
        tracking::Links::new("http://127.0.0.1:8000", keys.clone())
            .with_verp_domain(Some("bounce.example.test".into())),
    );
    let worker = Worker::new(worker_config("verp"), services, Some(harness.waker.clone()));
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    harness.enqueue(id).await;
    assert_eq!(harness.wait_final(id).await, CampaignStatus::Completed);
    stop.cancel();
    running.await.unwrap();
    transport.close().await;

    let messages = tokio::task::block_in_place(|| server.messages());
    assert_eq!(messages.len(), COUNT);
    for raw in messages {
        let text = String::from_utf8_lossy(&raw);
        let mail_from = header(&text, "X-MailFrom").expect("aiosmtpd records MAIL FROM");
        let message_id = header(&text, "Message-ID").unwrap();
        let token = tracking::feedback::verp_token(&mail_from, tracking::VERP_PREFIX)
            .unwrap_or_else(|| panic!("{mail_from} is not a VERP address"));
        assert!(mail_from.ends_with("@bounce.example.test"), "{mail_from}");
        let claims = keys.verify(tracking::Purpose::Bounce, token).unwrap();
        assert_eq!(claims.campaign_id, id);
        assert_eq!(message_id, self::message_id(id, claims.recipient_id));
        assert_eq!(
            message::recipient_of_message_id(&message_id),
            Some((id, claims.recipient_id))
        );
    }
}

/// Recipient-local send time on a clock the test moves: a campaign scheduled for 06:00 UTC
/// asking for 09:00 local time releases Berlin at 08:00 UTC, New York at 14:00 UTC, Los
/// Angeles (also the fallback for a missing or unknown zone) at 17:00 UTC and Tokyo, whose
/// 09:00 had passed at the start, at 00:00 UTC the next day. One second before each release
/// nothing more has arrived at aiosmtpd; at it, exactly that zone's recipients have.
async fn recipients_in_three_zones_are_released_at_their_own_local_hour(harness: Harness) {
    use time::macros::datetime;
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let start = datetime!(2030-03-01 06:00 UTC);
    let clock = tasks::ManualClock::new(start);
    let local = tasks::connect_with(
        &harness.url,
        Arc::new(clock.clone()),
        tasks::Backoff::default(),
    )
    .await
    .expect("task repository on the test's clock");
    let waking = Arc::new(WakingTasks::new(local));
    let waker = waking.waker();
    let task_repo: Arc<dyn TaskRepository> = waking;

    // (address, time zone field); batches of 4 mix the zones.
    let people: [(&str, Option<&str>); 12] = [
        ("anna@berlin.example", Some("Europe/Berlin")),
        ("ben@newyork.example", Some("America/New_York")),
        ("chika@tokyo.example", Some("Asia/Tokyo")),
        ("dora@nowhere.example", None),
        ("emil@berlin.example", Some("europe/berlin")),
        ("fay@newyork.example", Some("America/New_York")),
        ("goro@tokyo.example", Some("Asia/Tokyo")),
        ("hal@typo.example", Some("Mars/Olympus_Mons")),
        ("ida@berlin.example", Some("Europe/Berlin")),
        ("jon@newyork.example", Some("America/New_York")),
        ("kei@tokyo.example", Some("Asia/Tokyo")),
        ("lou@nowhere.example", Some("")),
    ];
    let rows = people.iter().map(|(email, zone)| {
        let mut fields = serde_json::Map::new();
        fields.insert("first_name".into(), "Reader".into());
        if let Some(zone) = zone {
            fields.insert("tz".into(), (*zone).into());
        }
        Ok(Recipient {
            email: EmailAddress::parse(email).unwrap(),
            fields,
        })
    });
    let mut document = document("Nine o'clock", 4);
    document.scheduled_at = Some(start);
    document.local_send_time = Some(campaign::LocalSendTime {
        time: "09:00".into(),
        timezone_field: "tz".into(),
        fallback_timezone: "America/Los_Angeles".into(),
    });
    let (record, report) = harness
        .store
        .create_campaign(&document, store::recipient_stream(rows.collect::<Vec<_>>()))
        .await
        .expect("campaign stored");
    let id = record.id;
    assert_eq!(record.status, CampaignStatus::Scheduled);
    assert_eq!(report.imported, 12);
    assert_eq!(report.unrecognised_time_zones, 1, "{report:?}");
    assert_eq!(
        report.unrecognised_time_zone_rows[0].email,
        "hal@typo.example"
    );
    assert_eq!(
        report.unrecognised_time_zone_rows[0].used,
        "America/Los_Angeles"
    );

    // The campaign processor starts it at its time; the worker splits and holds it.
    let scheduler = processor::Scheduler::new(
        processor::SchedulerConfig::new(Duration::from_secs(60)),
        harness.store.clone(),
        task_repo.clone(),
    );
    let transport = transport(&server.url());
    let worker = Worker::new(
        worker_config("local-time"),
        harness.services_on(
            transport.clone(),
            task_repo.clone(),
            Arc::new(clock.clone()),
        ),
        Some(waker.clone()),
    );
    let stop = CancellationToken::new();
    let handle = tokio::spawn(worker.run(stop.clone()));
    let checked = scheduler
        .check(tasks::Clock::now(&clock), false)
        .await
        .unwrap();
    assert_eq!(checked.enqueued.len(), 1);
    waker.notify_one();

    let releases = [
        (datetime!(2030-03-01 08:00 UTC), "berlin"),
        (datetime!(2030-03-01 14:00 UTC), "newyork"),
        (datetime!(2030-03-01 17:00 UTC), "nowhere|typo"),
        (datetime!(2030-03-02 00:00 UTC), "tokyo"),
    ];
    // Held: every zone has its release time, and no task can run before the first.
    wait_idle(&harness, task_repo.as_ref(), id, &clock, 3).await;
    let zones = harness.store.time_zone_releases(id).await.unwrap();
    let due: Vec<(&str, i64, Option<time::OffsetDateTime>)> = zones
        .iter()
        .map(|z| (z.zone.as_str(), z.waiting, z.due_at))
        .collect();
    assert_eq!(
        due,
        vec![
            ("America/Los_Angeles", 3, Some(releases[2].0)),
            ("America/New_York", 3, Some(releases[1].0)),
            ("Asia/Tokyo", 3, Some(releases[3].0)),
            ("Europe/Berlin", 3, Some(releases[0].0)),
        ]
    );
    assert_eq!(
        server.message_count(),
        0,
        "nothing before the first local 09:00"
    );

    let mut expected: Vec<String> = Vec::new();
    for (at, domains) in releases {
        // One second before: nothing new.
        let now = tasks::Clock::now(&clock);
        clock.advance(at - time::Duration::SECOND - now);
        waker.notify_one();
        wait_idle(&harness, task_repo.as_ref(), id, &clock, 0).await;
        assert_eq!(
            rcpts(&server),
            expected,
            "nothing new one second before {at}"
        );

        clock.advance(time::Duration::SECOND);
        waker.notify_one();
        expected.extend(
            people
                .iter()
                .map(|(email, _)| email.to_string())
                .filter(|email| {
                    domains
                        .split('|')
                        .any(|d| email.ends_with(&format!("@{d}.example")))
                }),
        );
        expected.sort();
        let want = expected.len() as i64;
        harness
            .wait_counts(id, "the released zone's messages", |c| {
                c.get(DeliveryStatus::Sent) >= want
            })
            .await;
        wait_idle(&harness, task_repo.as_ref(), id, &clock, 0).await;
        assert_eq!(
            rcpts(&server),
            expected,
            "at {at}: exactly the zones released so far"
        );
    }
    assert_eq!(harness.wait_final(id).await, CampaignStatus::Completed);
    stop.cancel();
    handle.await.unwrap();
    transport.close().await;
    assert!(
        harness
            .store
            .time_zone_releases(id)
            .await
            .unwrap()
            .is_empty()
    );
}

/// The recipients aiosmtpd has received mail for, sorted.
fn rcpts(server: &Aiosmtpd) -> Vec<String> {
    let mut all: Vec<String> = arrivals(server).into_iter().map(|a| a.rcpt).collect();
    all.sort();
    all
}

/// Waits until the campaign's tasks are all either finished or waiting for a time still ahead
/// on `clock` (none running, none claimable), with at least `min_waiting` waiting.
async fn wait_idle(
    harness: &Harness,
    tasks: &dyn TaskRepository,
    id: CampaignId,
    clock: &tasks::ManualClock,
    min_waiting: usize,
) {
    let deadline = Instant::now() + CONDITION_LIMIT;
    loop {
        let all = tasks
            .list(&tasks::TaskFilter {
                status: None,
                kind: None,
                key_prefix: None,
                after: None,
                limit: 1000,
            })
            .await
            .unwrap();
        let ours: Vec<&tasks::Task> = all
            .iter()
            .filter(|task| task.payload["campaign_id"] == id.to_string())
            .collect();
        let now = tasks::Clock::now(clock);
        let busy = ours.iter().any(|task| {
            task.status == tasks::TaskStatus::Running
                || (task.status == tasks::TaskStatus::Pending && task.run_after <= now)
        });
        let waiting = ours
            .iter()
            .filter(|task| task.status == tasks::TaskStatus::Pending)
            .count();
        let split = harness.status(id).await == CampaignStatus::Sending
            || harness.status(id).await == CampaignStatus::Completed;
        if split && !busy && waiting >= min_waiting {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the campaign's tasks did not settle: {ours:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Self-contained `submit_campaign` tasks.

/// A `submit_campaign` payload: the campaign document with `count` recipients inline.
fn submission(name: &str, count: usize) -> serde_json::Value {
    let mut campaign = serde_json::to_value(document(name, 10)).expect("document as JSON");
    campaign["recipients"] = (0..count)
        .map(|n| serde_json::json!({"email": email(n), "first_name": first_name(n)}))
        .collect();
    serde_json::json!({"version": processor::SUBMIT_CAMPAIGN_VERSION, "campaign": campaign})
}

async fn wait_task(harness: &Harness, id: uuid::Uuid, status: tasks::TaskStatus) -> tasks::Task {
    let deadline = Instant::now() + CONDITION_LIMIT;
    loop {
        let task = harness
            .tasks
            .get(id)
            .await
            .unwrap()
            .expect("the task exists");
        if task.status == status {
            return task;
        }
        assert!(
            Instant::now() < deadline,
            "task never became {status}: {task}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Malformed payloads and a schema-valid but invalid campaign: each task is dead after one
/// attempt with the reason on it, and no campaign is stored.
async fn a_bad_submission_is_dead_at_once_and_stores_nothing(harness: Harness) {
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let mut strict = submission("Typo", 3);
    strict["campaign"]["templates"]["subject"] = "Hello {{ frist_name }}".into();
    let mut unknown_field = submission("Unknown field", 1);
    unknown_field["campaign"]["batchsize"] = 10.into();
    let mut newer = submission("Newer", 1);
    newer["version"] = 2.into();
    let cases = [
        (
            serde_json::json!("not an object"),
            "expected {\"version\": 1",
        ),
        (
            serde_json::json!({"campaign": {}}),
            "missing field `version`",
        ),
        (newer, "version: 2 is not supported"),
        (
            unknown_field,
            "campaign.batchsize: unknown field `batchsize`",
        ),
        (
            strict,
            "campaign.templates.subject: line 1: `frist_name` is used but no recipient has that field",
        ),
    ];
    let mut ids = Vec::new();
    for (payload, _) in &cases {
        let task = harness
            .tasks
            .create(tasks::NewTask::new(
                processor::SUBMIT_CAMPAIGN,
                payload.clone(),
            ))
            .await
            .unwrap();
        ids.push(task.id);
    }
    let transport = transport(&server.url());
    let worker = harness.start(worker_config("refuses"), transport.clone());
    for (id, (_, reason)) in ids.iter().zip(&cases) {
        let dead = wait_task(&harness, *id, tasks::TaskStatus::Dead).await;
        assert_eq!(dead.attempts, 1, "never retried: {dead}");
        let error = dead.last_error.unwrap_or_default();
        assert!(
            error.contains(reason),
            "{error:?} should contain {reason:?}"
        );
        let campaign = CampaignId::from(*id);
        assert!(
            harness
                .store
                .get_campaign(campaign)
                .await
                .unwrap()
                .is_none()
        );
    }
    worker.stop().await;
    transport.close().await;
    let stored = harness
        .store
        .list_campaigns(&store::CampaignFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        stored.items.is_empty(),
        "nothing stored: {:?}",
        stored.items
    );
    assert!(arrivals(&server).is_empty());
}

/// A worker stored the campaign and died before completing its task: the task's lease runs
/// out, another worker claims it, finds the campaign under the task's id and sends it — one
/// campaign, each recipient reached once.
async fn a_submission_run_again_after_a_crash_stores_and_sends_once(harness: Harness) {
    const COUNT: usize = 30;
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let payload = submission("Crashed once", COUNT);
    let task = harness
        .tasks
        .create(tasks::NewTask::new(
            processor::SUBMIT_CAMPAIGN,
            payload.clone(),
        ))
        .await
        .unwrap();
    // The first run: claimed, campaign stored under the task's id, then nothing more.
    let claimed = harness
        .tasks
        .claim(
            "crashed",
            &[processor::SUBMIT_CAMPAIGN.to_string()],
            1,
            time::Duration::milliseconds(300),
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let campaign = CampaignId::from(task.id);
    let first: processor::SubmitCampaign = serde_json::from_value(payload).unwrap();
    let rows = first
        .campaign
        .recipients
        .iter()
        .cloned()
        .map(Ok)
        .collect::<Vec<_>>();
    harness
        .store
        .create_campaign_once(campaign, &first.campaign, store::recipient_stream(rows))
        .await
        .unwrap();
    let expired = Instant::now() + Duration::from_millis(300);
    wait_until(
        "the crashed worker's lease runs out",
        CONDITION_LIMIT,
        || Instant::now() > expired,
    )
    .await;

    let transport = transport(&server.url());
    let worker = harness.start(worker_config("takes-over"), transport.clone());
    let done = wait_task(&harness, task.id, tasks::TaskStatus::Completed).await;
    assert_eq!(done.attempts, 2, "{done}");
    assert_eq!(
        done.result.as_ref().unwrap()["campaign_id"],
        task.id.to_string()
    );
    assert_eq!(
        harness.wait_final(campaign).await,
        CampaignStatus::Completed
    );
    worker.stop().await;
    transport.close().await;

    let stored = harness
        .store
        .list_campaigns(&store::CampaignFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        stored.items.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![campaign]
    );
    assert_eq!(stored.items[0].recipient_count, COUNT as i64);
    let sent = harness
        .deliveries(campaign, Some(DeliveryStatus::Sent))
        .await;
    assert_eq!(sent.len(), COUNT);
    let copies = assert_each_recipient_reached(&arrivals(&server), campaign, &sent);
    assert!(copies.values().all(|n| *n == 1), "{copies:?}");
}

/// A submission with scheduled_at is stored scheduled and left to the campaign processor.
async fn a_scheduled_submission_stays_scheduled(harness: Harness) {
    let Some(server) = Aiosmtpd::start() else {
        return;
    };
    let mut payload = submission("Later", 2);
    let tomorrow = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    payload["campaign"]["scheduled_at"] = tomorrow
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
        .into();
    let task = harness
        .tasks
        .create(tasks::NewTask::new(processor::SUBMIT_CAMPAIGN, payload))
        .await
        .unwrap();
    let transport = transport(&server.url());
    let worker = harness.start(worker_config("schedules"), transport.clone());
    let done = wait_task(&harness, task.id, tasks::TaskStatus::Completed).await;
    worker.stop().await;
    transport.close().await;
    assert_eq!(done.result.as_ref().unwrap()["status"], "scheduled");
    let campaign = CampaignId::from(task.id);
    assert_eq!(harness.status(campaign).await, CampaignStatus::Scheduled);
    assert!(
        send_tasks_of(harness.tasks.as_ref(), campaign)
            .await
            .is_empty()
    );
}

/// The tasks of one kind the repository holds for a campaign.
async fn tasks_of(tasks: &dyn TaskRepository, kind: &str, id: CampaignId) -> Vec<tasks::Task> {
    tasks
        .list(&tasks::TaskFilter {
            status: None,
            kind: Some(kind.to_string()),
            key_prefix: None,
            after: None,
            limit: 500,
        })
        .await
        .unwrap()
        .into_iter()
        .filter(|task| task.payload["campaign_id"] == id.to_string())
        .collect()
}

/// The services' clock, panicking while `poisoned` is set. A batch asks it for "now" outside
/// any per-recipient isolation, so it stands in for any defect that panics a task's future.
#[derive(Default)]
struct PoisonedClock {
    poisoned: std::sync::atomic::AtomicBool,
}

impl tasks::Clock for PoisonedClock {
    fn now(&self) -> time::OffsetDateTime {
        if self.poisoned.load(std::sync::atomic::Ordering::SeqCst) {
            panic!("the test's clock is poisoned");
        }
        time::OffsetDateTime::now_utc()
    }
}

/// A batch task whose future panics is a failed attempt: its lease is released and it is
/// retried with the repository's backoff until it is dead, with the panic's message and
/// place as its error. Its recipients are then failed with that reason and the campaign
/// finishes; the same worker goes on to deliver the next campaign.
async fn a_panicking_task_is_retried_until_dead_and_the_worker_goes_on(harness: Harness) {
    let Some(sink) = start_sink(SmtpSink::builder()) else {
        return;
    };
    let fast = tasks::Backoff {
        initial: time::Duration::milliseconds(50),
        max: time::Duration::milliseconds(200),
        jitter: 0.0,
    };
    let local = tasks::connect_with(&harness.url, Arc::new(tasks::SystemClock), fast)
        .await
        .expect("task repository with a short backoff");
    let waking = Arc::new(WakingTasks::new(local));
    let waker = waking.waker();
    let task_repo: Arc<dyn TaskRepository> = waking;
    let clock = Arc::new(PoisonedClock::default());
    clock
        .poisoned
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let transport = transport(&sink.url());
    let worker = Worker::new(
        worker_config("panicking"),
        harness.services_on(transport.clone(), task_repo.clone(), clock.clone()),
        Some(waker),
    );
    let stats = worker.stats();
    let stop = CancellationToken::new();
    let running = Running {
        handle: tokio::spawn(worker.run(stop.clone())),
        stop,
        stats,
    };

    let poisoned = harness.campaign("Poisoned", 3, 10).await;
    service::CampaignService::new(harness.store.as_ref(), task_repo.as_ref())
        .send(poisoned)
        .await
        .expect("campaign enqueued");
    assert_eq!(harness.wait_final(poisoned).await, CampaignStatus::Failed);

    let batches = tasks_of(task_repo.as_ref(), processor::SEND_BATCH, poisoned).await;
    assert_eq!(batches.len(), 1, "{batches:?}");
    let batch = &batches[0];
    assert_eq!(batch.status, tasks::TaskStatus::Dead, "{batch:?}");
    assert_eq!(
        batch.attempts, batch.max_attempts,
        "every attempt was used: {batch:?}"
    );
    assert_eq!(batch.lease_owner, None, "the lease is released: {batch:?}");
    let error = batch.last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains("the task panicked: the test's clock is poisoned (at ")
            && error.contains("delivery.rs"),
        "the error says what panicked and where: {error}"
    );
    let failed = harness.deliveries(poisoned, None).await;
    assert_eq!(failed.len(), 3);
    for delivery in &failed {
        assert_eq!(delivery.status, DeliveryStatus::Failed, "{delivery:?}");
        let reason = delivery.last_error.as_deref().unwrap_or_default();
        assert!(
            reason.contains("its batch task failed on its last attempt")
                && reason.contains("the test's clock is poisoned"),
            "{delivery:?}"
        );
    }

    // The same worker, still running, delivers the next campaign.
    clock
        .poisoned
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let next = harness.campaign("After the panic", 5, 10).await;
    service::CampaignService::new(harness.store.as_ref(), task_repo.as_ref())
        .send(next)
        .await
        .expect("campaign enqueued");
    assert_eq!(harness.wait_final(next).await, CampaignStatus::Completed);
    assert_eq!(harness.counts(next).await.get(DeliveryStatus::Sent), 5);
    assert_eq!(wait_received(&sink, 5).await, 5);
    running.stop().await;
    transport.close().await;
}

/// A filter argument taken from a recipient's field that the filter refuses fails that
/// recipient, with the filter's reason; the others are delivered and the campaign completes.
async fn a_recipient_whose_field_a_filter_refuses_fails_alone(harness: Harness) {
    let Some(sink) = start_sink(SmtpSink::builder()) else {
        return;
    };
    let json = serde_json::json!({
        "name": "Totals",
        "from": {"email": format!("news@{SENDER_DOMAIN}")},
        "templates": {
            "subject": "Your total",
            "text": "Total: {{ total|number(decimals) }}\nUnsubscribe: {{ unsubscribe_url }}\n"
        },
        "batch_size": 10,
    });
    let document =
        CampaignDocument::from_json(json.to_string().as_bytes(), &Limits::default()).unwrap();
    let rows: Vec<_> = (0..5)
        .map(|n| {
            let mut fields = serde_json::Map::new();
            fields.insert("total".into(), "1234.5".into());
            let decimals = if n == 2 { 70000 } else { 2 };
            fields.insert("decimals".into(), decimals.into());
            Ok(Recipient {
                email: EmailAddress::parse(&email(n)).unwrap(),
                fields,
            })
        })
        .collect();
    let (record, _) = harness
        .store
        .create_campaign(&document, store::recipient_stream(rows))
        .await
        .expect("campaign stored");
    let transport = transport(&sink.url());
    let worker = harness.start(worker_config("filters"), transport.clone());
    harness.enqueue(record.id).await;
    assert_eq!(
        harness.wait_final(record.id).await,
        CampaignStatus::Completed
    );
    worker.stop().await;
    transport.close().await;

    let deliveries = harness.deliveries(record.id, None).await;
    let failed: Vec<_> = deliveries
        .iter()
        .filter(|d| d.status == DeliveryStatus::Failed)
        .collect();
    assert_eq!(failed.len(), 1, "{deliveries:?}");
    assert_eq!(failed[0].email, email(2));
    let reason = failed[0].last_error.as_deref().unwrap_or_default();
    assert!(
        reason.contains("number: decimals must be a whole number from 0 to 20, not 70000"),
        "{reason}"
    );
    assert_eq!(harness.counts(record.id).await.get(DeliveryStatus::Sent), 4);
    assert_eq!(wait_received(&sink, 4).await, 4);
}

/// The real SMTP transport, except that sending to one address panics: a defect confined to
/// one message.
struct PanicsForOne {
    inner: Arc<dyn Transport>,
    address: String,
}

#[async_trait::async_trait]
impl Transport for PanicsForOne {
    async fn send(
        &self,
        message: delivery::OutgoingMessage,
    ) -> Result<delivery::Accepted, delivery::SendError> {
        if String::from_utf8_lossy(&message.content).contains(&self.address) {
            panic!("the transport panicked for {}", self.address);
        }
        self.inner.send(message).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    async fn close(&self) {
        self.inner.close().await
    }
}

/// A panic while sending one message fails that recipient with the panic's message, once
/// (it is not left due, to panic again in every follow-up); the others are delivered and the
/// campaign completes.
async fn a_panic_while_sending_one_message_fails_that_recipient_only(harness: Harness) {
    let Some(sink) = start_sink(SmtpSink::builder()) else {
        return;
    };
    let id = harness.campaign("One poisoned send", 6, 3).await;
    let smtp = transport(&sink.url());
    let transport: Arc<dyn Transport> = Arc::new(PanicsForOne {
        inner: smtp.clone(),
        address: email(4),
    });
    let worker = harness.start(worker_config("send-panic"), transport);
    harness.enqueue(id).await;
    assert_eq!(harness.wait_final(id).await, CampaignStatus::Completed);
    worker.stop().await;
    smtp.close().await;

    let deliveries = harness.deliveries(id, None).await;
    for delivery in &deliveries {
        if delivery.email == email(4) {
            assert_eq!(delivery.status, DeliveryStatus::Failed, "{delivery:?}");
            assert_eq!(delivery.attempts, 1, "{delivery:?}");
            let error = delivery.last_error.as_deref().unwrap_or_default();
            assert!(
                error.contains("sending panicked: the transport panicked for reader4@mail.example"),
                "{error}"
            );
        } else {
            assert_eq!(delivery.status, DeliveryStatus::Sent, "{delivery:?}");
        }
    }
    assert_eq!(wait_received(&sink, 5).await, 5);
}

/// Per recipient, answers three times that a sending rate has no slot, then once with the
/// server's temporary failure, then accepts: what a rate-limited transport in front of a busy
/// server does.
#[derive(Default)]
struct RateWaitsThenBusy {
    calls: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

#[async_trait::async_trait]
impl Transport for RateWaitsThenBusy {
    async fn send(
        &self,
        message: delivery::OutgoingMessage,
    ) -> Result<delivery::Accepted, delivery::SendError> {
        let to = message
            .envelope
            .to()
            .next()
            .expect("a recipient")
            .to_string();
        let call = {
            let mut calls = self.calls.lock().unwrap();
            let call = calls.entry(to).or_default();
            *call += 1;
            *call
        };
        let reply = |code, text: &str| delivery::Reply {
            code,
            text: text.into(),
        };
        match call {
            1..=3 => Err(delivery::SendError::RateLimited {
                destination: "group busy".into(),
                retry_in: Duration::from_millis(100),
            }),
            4 => Err(delivery::SendError::TransientReply {
                stage: delivery::Stage::RcptTo,
                reply: reply(451, "4.3.0 Try again"),
            }),
            _ => Ok(delivery::Accepted {
                reply: reply(250, "2.0.0 Ok"),
                refused: vec![],
            }),
        }
    }

    fn describe(&self) -> String {
        "rate waits, then busy, then accepting".into()
    }

    async fn close(&self) {}
}

/// Deferrals for a sending rate use none of a recipient's SMTP attempts: with max_attempts 2,
/// three rate deferrals and one 451 still leave the send that succeeds, and each recipient is
/// recorded with two attempts (the 451 and the acceptance).
async fn rate_deferrals_do_not_use_up_the_retry_policys_attempts(harness: Harness) {
    let mut document = document("Rate waits are no attempts", 10);
    document.retry.max_attempts = 2;
    let (record, _) = harness
        .store
        .create_campaign(&document, store::recipient_stream(recipients(4)))
        .await
        .expect("campaign stored");
    let transport = Arc::new(RateWaitsThenBusy::default());
    let worker = harness.start(worker_config("rate-waits"), transport.clone());
    harness.enqueue(record.id).await;
    assert_eq!(
        harness.wait_final(record.id).await,
        CampaignStatus::Completed
    );
    worker.stop().await;
    let deliveries = harness.deliveries(record.id, None).await;
    assert_eq!(deliveries.len(), 4);
    for delivery in &deliveries {
        assert_eq!(delivery.status, DeliveryStatus::Sent, "{delivery:?}");
        assert_eq!(delivery.attempts, 2, "{delivery:?}");
    }
    assert!(
        transport
            .calls
            .lock()
            .unwrap()
            .values()
            .all(|&calls| calls == 5),
        "each recipient went through every answer once"
    );
}

testkit::backend_suite! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)] with_harness => [
        rate_deferrals_do_not_use_up_the_retry_policys_attempts,
        five_thousand_recipients_each_get_one_personalized_message,
        temporary_rejections_are_deferred_then_delivered,
        permanent_rejections_fail_every_recipient_with_the_server_text,
        a_hang_up_after_the_content_defers_then_delivers,
        a_server_gone_mid_campaign_loses_no_recipient,
        suppressed_recipients_are_recorded_and_never_sent,
        an_aborted_worker_loses_nothing_and_duplicates_stay_within_in_flight,
        a_paused_campaign_resumes_without_a_second_copy_to_anyone,
        a_cancelled_campaign_sends_at_most_its_in_flight_messages_after_the_cancel,
        every_message_returns_bounces_to_its_own_verp_address,
        recipients_in_three_zones_are_released_at_their_own_local_hour,
        a_bad_submission_is_dead_at_once_and_stores_nothing,
        a_submission_run_again_after_a_crash_stores_and_sends_once,
        a_scheduled_submission_stays_scheduled,
        a_panicking_task_is_retried_until_dead_and_the_worker_goes_on,
        a_recipient_whose_field_a_filter_refuses_fails_alone,
        a_panic_while_sending_one_message_fails_that_recipient_only,
    ];
}
