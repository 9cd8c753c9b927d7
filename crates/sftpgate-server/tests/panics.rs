//! Panic containment: a panic in a storage call, a request handler, the factory or the
//! auth-completed hook is caught and logged with the session, fails only what it was part
//! of, and never stops the session's exit (exactly once) or any other session.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use common::*;
use sftpgate_proto::{OpenFlags, StatusCode};
use sftpgate_vfs::EndReason;

/// Everything the server logged in this test binary. Installed before any server starts
/// (the harness's own subscriber then stays out: only one can be global).
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Capture(sink.clone()))
            .try_init()
            .expect("the first subscriber of this test binary");
        buffer
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The log lines that contain every one of `parts`.
fn log_lines(parts: &[&str]) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    text.lines()
        .filter(|line| parts.iter().all(|p| line.contains(p)))
        .map(str::to_owned)
        .collect()
}

/// The case: a panicking filesystem call in one of two sessions. That request gets
/// FAILURE (no internals in the message), the panic is logged with the session id, both
/// sessions go on, and each ends with exactly one exit.
#[tokio::test(flavor = "multi_thread")]
async fn a_panic_in_one_session_leaves_the_other_alone() {
    logs();
    let mut server = TestServer::start(Options {
        fs: FsBehavior {
            panic_on_stat: true,
            ..FsBehavior::default()
        },
        ..Options::default()
    })
    .await;
    let (_a, mut panicking) = server.sftp_client().await;
    let (_b, mut other) = server.sftp_client().await;
    let sessions = server.log.factory_sessions();
    let (panicking_id, other_id) = (sessions[0], sessions[1]);
    other.round_trip("/other-before").await;
    let (code, message) = panicking.stat(PANIC_PATH).await.unwrap_err();
    assert_eq!(code, StatusCode::Failure);
    assert!(!message.contains("panic"), "internals leak: {message}");
    other.round_trip("/other-after").await;
    panicking.round_trip("/panicking-after").await;
    panicking.eof().await;
    other.eof().await;
    server.log.wait_exits(2).await;
    server.stop().await;
    let mut exits = server.log.exits();
    exits.sort_by_key(|(s, _)| s.0);
    assert_eq!(
        exits,
        vec![
            (panicking_id, EndReason::ClientEof),
            (other_id, EndReason::ClientEof)
        ]
    );
    let lines = log_lines(&[
        "request handler panicked",
        &format!("session={panicking_id}"),
        "stat of /panic panics (test)",
    ]);
    assert_eq!(lines.len(), 1, "the panic's log line: {lines:#?}");
}

/// A backend whose `close` panics: CLOSE gets FAILURE; at the session's end the handles
/// left open are still all closed, and the exit runs once with the real reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_close_still_runs_the_exit_once() {
    logs();
    let mut server = TestServer::start(Options {
        fs: FsBehavior {
            close_panics: true,
            ..FsBehavior::default()
        },
        ..Options::default()
    })
    .await;
    let (_a, mut sftp) = server.sftp_client().await;
    let (_b, mut other) = server.sftp_client().await;
    let flags = OpenFlags::WRITE | OpenFlags::CREAT;
    let closed = sftp.open("/closed", flags).await.unwrap();
    sftp.write(&closed, 0, b"data").await.unwrap();
    let (code, message) = sftp.close(&closed).await.unwrap_err();
    assert_eq!(code, StatusCode::Failure);
    assert!(!message.contains("panic"), "internals leak: {message}");
    // Two handles left open: both are closed at the end although the first close panics.
    let _x = sftp.open("/left-open-1", flags).await.unwrap();
    let _y = sftp.open("/left-open-2", flags).await.unwrap();
    assert!(other.stat("/closed").await.is_ok());
    sftp.eof().await;
    sftp.wait_closed().await;
    server.log.wait_exits(1).await;
    assert!(
        other.stat("/left-open-1").await.is_ok(),
        "the other session goes on"
    );
    other.eof().await;
    server.log.wait_exits(2).await;
    server.stop().await;
    let session = server.log.factory_sessions()[0];
    assert_eq!(
        server.log.session_labels(session),
        [
            "factory_start",
            "factory_end(ok)",
            "file_close(err)",
            "file_close(err)",
            "file_close(err)",
            "exit(client_eof)",
            "exit_end",
        ]
    );
    assert_eq!(
        log_lines(&[
            "closing a file left open panicked",
            &format!("session={session}")
        ])
        .len(),
        2
    );
}

/// A panicking factory is a failed one: the client is told, the cleanups run, no exit (the
/// session never started), and the server goes on serving.
#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_factory_is_a_refusal() {
    logs();
    let mut server = TestServer::start(Options {
        factory: FactoryBehavior {
            panic: true,
            register_cleanup: true,
            ..FactoryBehavior::default()
        },
        ..Options::default()
    })
    .await;
    let client = server.client().await;
    let mut sftp = client.open_sftp().await;
    let packets = sftp.wait_closed().await;
    assert!(packets.is_empty(), "{packets:?}");
    let stderr = sftp.end.stderr_text();
    assert!(
        stderr.contains("internal error in session setup"),
        "{stderr}"
    );
    server.log.wait_label("cleanup", 1).await;
    // The connection is still usable for another channel (which panics too, and is told).
    let mut again = client.open_sftp().await;
    again.wait_closed().await;
    assert!(again.end.stderr_text().contains("internal error"));
    server.log.wait_label("cleanup", 2).await;
    server.stop().await;
    assert_eq!(server.log.count(|e| e.is_exit()), 0);
    let session = server.log.factory_sessions()[0];
    assert_eq!(
        log_lines(&["SFTP factory panicked", &format!("session={session}")]).len(),
        1
    );
}

/// A panicking auth-completed hook refuses that connection with a message; the server
/// goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_auth_completed_hook_refuses_the_connection() {
    logs();
    let mut server = TestServer::start(Options {
        hook: HookBehavior {
            panic: true,
            ..HookBehavior::default()
        },
        ..Options::default()
    })
    .await;
    for _ in 0..2 {
        let mut client = SshClient::connect(server.addr).await;
        let _ = client.auth_key(USER, server.client_key.clone()).await;
        assert_eq!(
            client.wait_disconnect_message().await,
            "internal error in login setup"
        );
    }
    server.stop().await;
    assert_eq!(server.log.count_label("auth_start"), 2);
    assert_eq!(log_lines(&["auth-completed hook panicked"]).len(), 2);
}
