//! The outbox transport: one findable `.eml` per message, written atomically.

use delivery::{
    ConfigError, Envelope, FailureClass, OutboxTransport, OutgoingMessage, SendError, Transport,
    TransportConfig, transport_from_config,
};
use std::path::{Path, PathBuf};

fn message(to: &str, headers: &str) -> OutgoingMessage {
    let envelope = Envelope::new("bounce@example.com", [to]).expect("valid envelope");
    OutgoingMessage::new(
        envelope,
        format!("{headers}Subject: Hello\r\nTo: <{to}>\r\n\r\nBody for {to}\r\n"),
    )
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("readable directory") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[tokio::test]
async fn outbox_writes_one_findable_file_per_recipient_and_leaves_no_temp_files() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let outbox = OutboxTransport::new(dir.path().join("outbox"));

    // Ids from the send call …
    let first = message("ann@example.org", "").with_ids("camp-1", "r-17");
    let accepted = outbox.send(first.clone()).await.expect("written");
    let expected = dir.path().join("outbox/camp-1/r-17-ann@example.org.eml");
    assert_eq!(accepted.reply.code, 250);
    assert!(
        accepted
            .reply
            .text
            .contains(&expected.display().to_string())
    );
    assert_eq!(std::fs::read(&expected).expect("file"), first.content);

    // … or from the headers the message builder puts in.
    let second = message(
        "bob@example.org",
        "X-Campaign-ID: camp-1\r\nX-Recipient-ID: r-18\r\n",
    );
    outbox.send(second.clone()).await.expect("written");
    let expected_second = dir.path().join("outbox/camp-1/r-18-bob@example.org.eml");
    assert_eq!(
        std::fs::read(&expected_second).expect("file"),
        second.content
    );

    // Neither: still one file per message, under no-campaign.
    outbox
        .send(message("cy@example.org", ""))
        .await
        .expect("written");
    outbox
        .send(message("cy@example.org", ""))
        .await
        .expect("written");

    let files = files_under(&dir.path().join("outbox"));
    assert_eq!(files.len(), 4, "{files:?}");
    for file in &files {
        let name = file.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(name.ends_with(".eml") && !name.starts_with('.'), "{name}");
    }
    let anonymous: Vec<_> = files
        .iter()
        .filter(|f| f.parent().and_then(|p| p.file_name()) == Some("no-campaign".as_ref()))
        .collect();
    assert_eq!(anonymous.len(), 2, "{files:?}");
}

#[tokio::test]
async fn outbox_retry_of_a_recipient_replaces_its_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let outbox = OutboxTransport::new(dir.path());
    let original = message("ann@example.org", "").with_ids("c", "r1");
    outbox.send(original.clone()).await.expect("written");
    outbox.send(original.clone()).await.expect("written again");
    assert_eq!(files_under(dir.path()).len(), 1);
}

#[tokio::test]
async fn outbox_ids_cannot_escape_the_directory() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let root = dir.path().join("outbox");
    let outbox = OutboxTransport::new(&root);
    outbox
        .send(message("ann@example.org", "").with_ids("../../etc", "../x"))
        .await
        .expect("written");
    let files = files_under(dir.path());
    assert_eq!(files.len(), 1);
    assert!(files[0].starts_with(&root), "{files:?}");
}

#[tokio::test]
async fn outbox_write_failure_is_temporary_and_names_the_path() {
    let dir = tempfile::tempdir().expect("temporary directory");
    // A file where the outbox directory should be.
    let blocked = dir.path().join("outbox");
    std::fs::write(&blocked, b"not a directory").expect("file");
    let outbox = OutboxTransport::new(&blocked);
    let error = outbox
        .send(message("ann@example.org", "").with_ids("c", "r"))
        .await
        .expect_err("cannot write");
    assert_eq!(error.class(), FailureClass::Temporary);
    assert!(matches!(error, SendError::Storage { .. }), "{error:?}");
    assert!(
        error.to_string().contains("outbox/c/r-ann@example.org.eml"),
        "{error}"
    );
}

#[tokio::test]
async fn outbox_is_the_default_without_smtp_url_and_config_errors_name_the_variable() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let transport = transport_from_config(&TransportConfig {
        outbox_dir: dir.path().join("out"),
        ..TransportConfig::default()
    })
    .expect("outbox");
    assert_eq!(
        transport.describe(),
        format!("outbox at {}", dir.path().join("out").display())
    );
    transport
        .send(message("ann@example.org", "").with_ids("c", "r"))
        .await
        .expect("written");
    transport.close().await;
    assert!(matches!(
        transport.send(message("bob@example.org", "")).await,
        Err(SendError::Closed)
    ));

    let error = |config: TransportConfig| match transport_from_config(&config) {
        Ok(transport) => panic!("accepted: {}", transport.describe()),
        Err(err) => err,
    };
    let url = |url: &str| TransportConfig {
        smtp_url: Some(url.to_string()),
        ..TransportConfig::default()
    };
    assert!(matches!(
        error(url("mailto:x")),
        ConfigError::SmtpUrl { .. }
    ));
    assert_eq!(
        error(TransportConfig {
            connections: 0,
            ..url("smtp://127.0.0.1:25")
        }),
        ConfigError::Connections
    );
    assert!(
        error(url("smtps://127.0.0.1?tls_ca=/nonexistent/ca.pem"))
            .to_string()
            .starts_with("SMTP_URL tls_ca=/nonexistent/ca.pem")
    );
}

#[test]
fn transport_config_smtp_outside_a_runtime_is_an_error() {
    let result = transport_from_config(&TransportConfig {
        smtp_url: Some("smtp://127.0.0.1:25".to_string()),
        ..TransportConfig::default()
    });
    assert!(matches!(result, Err(ConfigError::NoRuntime)));
}
