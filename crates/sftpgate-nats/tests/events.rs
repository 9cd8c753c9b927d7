//! Events in JetStream: what a consumer reads matches what was emitted; a full buffer drops
//! and counts instead of blocking.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use sftpgate_nats::*;
use sftpgate_server::{Event, EventSink, FileOp, SessionId};
use sftpgate_vfs::{EndReason, VPath};
use tokio_util::sync::CancellationToken;

fn p(s: &str) -> VPath {
    VPath::parse(s.as_bytes()).unwrap()
}

/// A session's worth of events, in order, with the type each must be published as.
fn session_events() -> Vec<(Event, &'static str)> {
    let connection = Arc::new(connection(4, "alice"));
    let file = |op| Event::File {
        connection: connection.clone(),
        session: SessionId(8),
        op,
    };
    vec![
        (
            Event::LoginFailed {
                peer: "127.0.0.1:40000".parse().unwrap(),
                user: "alice".into(),
                method: "password",
            },
            "connection.login_failed",
        ),
        (
            Event::Login {
                connection: connection.clone(),
            },
            "connection.login",
        ),
        (
            Event::SessionStarted {
                connection: connection.clone(),
                session: SessionId(8),
            },
            "session.started",
        ),
        (file(FileOp::Mkdir { path: p("/in") }), "file.mkdir"),
        (
            file(FileOp::Upload {
                path: p("/in/a.csv"),
                size: 1234,
                bytes: 1234,
            }),
            "file.upload",
        ),
        (
            file(FileOp::Rename {
                from: p("/in/a.csv"),
                to: p("/in/b.csv"),
            }),
            "file.rename",
        ),
        (
            file(FileOp::Download {
                path: p("/in/b.csv"),
                bytes: 1234,
            }),
            "file.download",
        ),
        (
            file(FileOp::Setstat {
                path: p("/in/b.csv"),
            }),
            "file.setstat",
        ),
        (
            file(FileOp::Symlink {
                link: p("/l"),
                target: "in/b.csv".into(),
            }),
            "file.symlink",
        ),
        (
            file(FileOp::Remove {
                path: p("/in/b.csv"),
            }),
            "file.remove",
        ),
        (file(FileOp::Rmdir { path: p("/in") }), "file.rmdir"),
        (
            Event::SessionEnded {
                connection: connection.clone(),
                session: SessionId(8),
                reason: EndReason::ClientEof,
                duration: Duration::from_millis(250),
                bytes_in: 1234,
                bytes_out: 1234,
            },
            "session.ended",
        ),
    ]
}

#[tokio::test]
async fn a_consumer_reads_what_was_emitted() {
    let Some(url) = shared_nats().await else {
        return;
    };
    let fx = Fixture::new(&url).await;
    let _guard = StreamGuard {
        url: url.clone(),
        stream: fx.config.events.stream.clone(),
    };
    let (sink, publisher) = event_channel(fx.client.clone(), &fx.config);
    publisher.ensure_stream().await.unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(publisher.run(stop.clone()));
    let expected = session_events();
    for (event, _) in &expected {
        sink.emit(event.clone());
    }
    let events = read_events(
        &fx.client,
        &fx.config.events.stream,
        expected.len(),
        Duration::from_secs(10),
    )
    .await;
    for (i, ((_, event_type), got)) in expected.iter().zip(&events).enumerate() {
        assert_eq!(got["schema"], json!("sftpgate.event.v1"));
        assert_eq!(got["type"], json!(event_type), "event {i}: {got}");
        assert_eq!(got["seq"], json!(i + 1), "event {i}: {got}");
        assert_eq!(got["server"], json!("sftpgate-test"));
        assert_eq!(got["user"], json!("alice"));
        assert!(got["time"].as_str().unwrap().ends_with('Z'), "{got}");
    }
    let upload = &events[4];
    assert_eq!(upload["path"], json!("/in/a.csv"));
    assert_eq!(upload["size"], json!(1234));
    assert_eq!(upload["session_id"], json!("s8"));
    assert_eq!(upload["connection_id"], json!("c4"));
    let rename = &events[5];
    assert_eq!(
        (&rename["from"], &rename["to"]),
        (&json!("/in/a.csv"), &json!("/in/b.csv"))
    );
    let ended = &events[11];
    assert_eq!(ended["reason"], json!("client_eof"));
    assert_eq!(ended["duration_ms"], json!(250));
    assert_eq!(events[0]["connection_id"], json!(null));
    // Subjects: one per type under `<prefix>.events.`.
    let jetstream = async_nats::jetstream::new(fx.client.clone());
    let mut stream = jetstream
        .get_stream(&fx.config.events.stream)
        .await
        .unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.messages, expected.len() as u64);
    assert_eq!(
        info.config.subjects,
        vec![format!("{}.events.>", fx.config.subject_prefix)]
    );
    assert_eq!(sink.dropped(), 0);
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("publisher stops")
        .unwrap();
}

#[tokio::test]
async fn a_full_buffer_drops_and_counts_without_blocking() {
    // No NATS needed: nothing is published, the publisher is not even running.
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config("nats://127.0.0.1:1", &unique_prefix(), dir.path());
    config.connect_timeout = Duration::from_millis(10);
    config.events.buffer = 8;
    let client = connect(&config).await.unwrap();
    let (sink, _publisher) = event_channel(client, &config);
    let (event, _) = session_events().remove(3);
    let started = Instant::now();
    for _ in 0..10_000 {
        sink.emit(event.clone());
    }
    assert_eq!(sink.dropped(), 10_000 - 8);
    // Not a benchmark: a generous bound that a blocking emit (waiting for a publisher that
    // never runs) could never meet.
    assert!(started.elapsed() < Duration::from_secs(5));
}
