//! Messages per second through the SMTP transport into postfix smtp-sink on 127.0.0.1, with
//! 1 and 8 connections, beside the ceiling smtp-source → smtp-sink (8 sessions, same message
//! size) measured in the same run.
//!
//! cargo bench -p delivery --bench smtp_throughput            (BENCH_MESSAGES=20000 default)

use delivery::{Envelope, OutgoingMessage, SmtpConfig, SmtpTransport, Transport};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::smtp::{SMTP_SOURCE, SmtpSink};

const MESSAGE_SIZE: usize = 10 * 1024;

/// A ~10 KB ASCII message with CRLF lines, like a rendered newsletter.
fn content(i: usize) -> bytes::Bytes {
    let mut text = format!(
        "From: News <news@example.com>\r\nTo: <user{i}@example.org>\r\n\
         Subject: Newsletter {i}\r\nMessage-ID: <bench-{i}@example.com>\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    );
    let line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\r\n";
    while text.len() + line.len() <= MESSAGE_SIZE {
        text.push_str(line);
    }
    bytes::Bytes::from(text)
}

fn messages(count: usize) -> Vec<OutgoingMessage> {
    (0..count)
        .map(|i| {
            let to = format!("user{i}@example.org");
            let envelope = Envelope::new("bounce@example.com", [to.as_str()]).expect("envelope");
            OutgoingMessage::new(envelope, content(i))
        })
        .collect()
}

/// Sends `count` messages with enough concurrent callers to keep every connection busy.
async fn transport_rate(connections: usize, count: usize) -> Result<f64, String> {
    let sink = SmtpSink::builder().try_start()?;
    let mut config = SmtpConfig::from_url(&sink.url()).map_err(|e| e.to_string())?;
    config.connections = connections;
    let transport = Arc::new(SmtpTransport::new(config).map_err(|e| e.to_string())?);
    // Warm-up: open the connections.
    for message in messages(connections * 20) {
        transport.send(message).await.map_err(|e| e.to_string())?;
    }
    let callers = connections * 4;
    let all = messages(count);
    let mut batches: Vec<Vec<OutgoingMessage>> = (0..callers).map(|_| Vec::new()).collect();
    for (i, message) in all.into_iter().enumerate() {
        batches[i % callers].push(message);
    }
    let started = Instant::now();
    let tasks: Vec<_> = batches
        .into_iter()
        .map(|batch| {
            let transport = transport.clone();
            tokio::spawn(async move {
                for message in batch {
                    transport.send(message).await.map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.map_err(|e| e.to_string())??;
    }
    let elapsed = started.elapsed();
    transport.close().await;
    let counters = sink.wait_for(Duration::from_secs(10), |c| {
        c.messages >= (count + connections * 20) as u64
    });
    if counters.messages != (count + connections * 20) as u64 {
        return Err(format!("sink counted {counters:?}"));
    }
    Ok(count as f64 / elapsed.as_secs_f64())
}

/// postfix's own client into the same kind of sink: the ceiling for this machine. By default
/// smtp-source opens a session per message; `-d` keeps sessions open, as our transport does.
fn smtp_source_rate(count: usize, keep_sessions: bool) -> Result<f64, String> {
    let sink = SmtpSink::builder().try_start()?;
    let started = Instant::now();
    let mut command = Command::new(SMTP_SOURCE);
    if keep_sessions {
        command.arg("-d");
    }
    let status = command
        .args([
            "-s",
            "8",
            "-m",
            &count.to_string(),
            "-l",
            &MESSAGE_SIZE.to_string(),
        ])
        .arg(format!("127.0.0.1:{}", sink.port))
        .status()
        .map_err(|e| format!("{SMTP_SOURCE}: {e}"))?;
    let elapsed = started.elapsed();
    if !status.success() {
        return Err(format!("{SMTP_SOURCE} exited with {status}"));
    }
    let counters = sink.wait_for(Duration::from_secs(10), |c| c.messages >= count as u64);
    if counters.messages != count as u64 {
        return Err(format!("sink counted {counters:?}"));
    }
    Ok(count as f64 / elapsed.as_secs_f64())
}

fn main() {
    // `cargo bench` passes --bench; a plain `cargo test --benches` run passes nothing and
    // should not spend a minute here.
    if !std::env::args().any(|arg| arg == "--bench") {
        return;
    }
    let count: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let run = || -> Result<(), String> {
        let ceiling = smtp_source_rate(count, false)?;
        let ceiling_kept = smtp_source_rate(count, true)?;
        let one = runtime.block_on(transport_rate(1, count))?;
        let eight = runtime.block_on(transport_rate(8, count))?;
        println!("{count} messages of {MESSAGE_SIZE} bytes into smtp-sink on 127.0.0.1");
        println!("| client | msg/s | ratio to smtp-source |");
        println!("|---|---:|---:|");
        println!("| smtp-source -s 8 (ceiling) | {ceiling:.0} | 1.00 |");
        println!(
            "| smtp-source -d -s 8 (sessions kept open) | {ceiling_kept:.0} | {:.2} |",
            ceiling_kept / ceiling
        );
        println!(
            "| SmtpTransport, 1 connection | {one:.0} | {:.2} |",
            one / ceiling
        );
        println!(
            "| SmtpTransport, 8 connections | {eight:.0} | {:.2} |",
            eight / ceiling
        );
        Ok(())
    };
    if let Err(why) = run() {
        eprintln!("benchmark not run: {why}");
        std::process::exit(1);
    }
}
