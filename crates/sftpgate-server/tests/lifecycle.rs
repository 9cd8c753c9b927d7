//! The session lifecycle end to end, against the real server on 127.0.0.1 with OpenSSH's
//! clients and a Rust client: step 1 (`auth_completed`), step 2 (the SFTP factory, with its
//! cleanups) and step 3 (`exit`, exactly once, with the right reason) on every end path.
//!
//! Each test ends with `server.stop()`: once `run` has returned, every tracked task has
//! finished, so the event log is final and counts can be asserted exactly.

mod common;

use std::time::{Duration, Instant};

use common::*;
use sftpgate_proto::{OpenFlags, Request};
use sftpgate_server::{Limits, Timeouts};
use sftpgate_vfs::EndReason;

fn labels(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// 1. OpenSSH `sftp -b`: auth_completed once, then the factory once, then exactly one exit.
/// OpenSSH's `sftp` ends a session by closing its pipe to `ssh`, which sends channel EOF:
/// the reason is `ClientEof` (pinned here).
#[tokio::test(flavor = "multi_thread")]
async fn openssh_happy_path_runs_each_step_once() {
    let Some(sftp) = openssh("sftp") else { return };
    let mut server = TestServer::start(Options::default()).await;
    let upload = server.scratch.join("upload.bin");
    let download = server.scratch.join("download.bin");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&upload, &content).unwrap();

    let batch = format!(
        "put {} /up.bin\nls -l /\nget /up.bin {}\n",
        upload.display(),
        download.display()
    );
    let out = sftp_batch(&server, &sftp, &batch).await;
    assert!(out.status.success(), "sftp failed: {out:?}");
    assert!(out.stdout.contains("up.bin"), "ls output: {out:?}");
    assert_eq!(std::fs::read(server.root.join("up.bin")).unwrap(), content);
    assert_eq!(std::fs::read(&download).unwrap(), content);

    server.log.wait_exits(1).await;
    server.stop().await;

    assert_eq!(
        server.log.lifecycle_labels(),
        labels(&[
            "auth_start",
            "auth_end(ok)",
            "factory_start",
            "factory_end(ok)",
            "exit(client_eof)",
            "exit_end",
        ])
    );
    let events = server.log.events();
    let Event::AuthCompletedStart { conn, user, method } = &events[0] else {
        panic!("{events:?}")
    };
    assert_eq!((user.as_str(), *method), (USER, "publickey"));
    let Event::FactoryStart {
        conn: factory_conn,
        session,
        user,
        state,
        ..
    } = &events[2]
    else {
        panic!("{events:?}")
    };
    assert_eq!(
        factory_conn, conn,
        "factory runs on the authenticated connection"
    );
    assert_eq!(user, USER);
    assert_eq!(
        state,
        &state_of(*conn),
        "the factory gets what auth_completed returned"
    );
    assert_eq!(server.log.exits(), vec![(*session, EndReason::ClientEof)]);
    // put and get each closed their file before the exit.
    assert_eq!(server.log.count_label("file_close(ok)"), 2);
}

/// The client was told its channel request failed: a CHANNEL_FAILURE reply, or the request
/// was taken and the "program" exited non-zero.
fn told_it_failed(end: &ChannelEnd) -> bool {
    end.failure == 1 || end.exit_status.is_some_and(|status| status != 0)
}

/// 2. Shell, exec and other subsystems are refused with a message on stderr; the factory
/// never runs for them, and the connection stays usable for SFTP.
#[tokio::test(flavor = "multi_thread")]
async fn exec_and_shell_are_refused() {
    let mut server = TestServer::start(Options::default()).await;
    let client = server.client().await;

    let mut exec = client.open_session().await;
    exec.exec(true, "true").await.unwrap();
    let (end, stdout) = drain_channel(&mut exec).await;
    assert!(
        end.stderr_text().contains("sftp connections only"),
        "{end:?}"
    );
    assert!(told_it_failed(&end), "{end:?}");
    assert!(stdout.is_empty());

    let mut shell = client.open_session().await;
    shell.request_shell(true).await.unwrap();
    let (end, _) = drain_channel(&mut shell).await;
    assert!(
        end.stderr_text().contains("sftp connections only"),
        "{end:?}"
    );
    assert!(told_it_failed(&end), "{end:?}");

    let mut other = client.open_session().await;
    other.request_subsystem(true, "netconf").await.unwrap();
    let (end, _) = drain_channel(&mut other).await;
    assert!(
        end.stderr_text().contains("sftp connections only"),
        "{end:?}"
    );
    assert!(told_it_failed(&end), "{end:?}");

    // The connection is still usable for SFTP afterwards.
    let mut sftp = client.open_sftp().await;
    assert_eq!(sftp.init().await, 3);
    sftp.eof().await;
    sftp.wait_closed().await;

    server.log.wait_exits(1).await;
    server.stop().await;
    assert_eq!(server.log.count_label("auth_start"), 1);
    assert_eq!(
        server.log.count_label("factory_start"),
        1,
        "only the sftp channel"
    );
    assert_eq!(server.log.exits().len(), 1);
}

/// 2b. OpenSSH's `ssh host true` shows the "sftp connections only" message on stderr.
///
/// OpenSSH's client treats CHANNEL_FAILURE for the exec/shell/subsystem request of its
/// primary channel as fatal at once (`client_status_confirm` in clientloop.c), before it
/// writes out the stderr data that arrived just ahead of it: a refusal by CHANNEL_FAILURE
/// shows only "exec request failed on channel 0".
#[tokio::test(flavor = "multi_thread")]
async fn openssh_exec_shows_the_sftp_only_message() {
    let Some(ssh) = openssh("ssh") else { return };
    let mut server = TestServer::start(Options::default()).await;
    let out = ssh_exec(&server, &ssh, "true").await;
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stderr.contains("sftp connections only"), "{out:?}");
    server.stop().await;
    assert_eq!(server.log.count_label("auth_start"), 1);
    assert_eq!(server.log.count_label("factory_start"), 0);
}

/// 3. The client process is killed (`sftp` and its `ssh`, SIGKILL): one exit, ConnectionLost.
#[tokio::test(flavor = "multi_thread")]
async fn killed_openssh_client_is_connection_lost() {
    let Some(sftp) = openssh("sftp") else { return };
    let mut server = TestServer::start(Options::default()).await;
    // Interactive: commands from a pipe that stays open, so sftp waits.
    let mut child = sftp_command(&server, &sftp, &[])
        .spawn()
        .expect("spawn sftp");
    let stdin = child.stdin.take();
    server.log.wait_label("factory_end(ok)", 1).await;

    kill_group(&child);
    let status = bounded("sftp to die", child.wait()).await.unwrap();
    assert!(!status.success());
    drop(stdin);

    server.log.wait_exits(1).await;
    server.stop().await;
    let exits = server.log.exits();
    assert_eq!(exits.len(), 1, "{exits:?}");
    assert!(
        matches!(exits[0].1, EndReason::ConnectionLost { .. }),
        "{exits:?}"
    );
}

/// 4. The TCP connection drops under an open session, by RST and by FIN, without SSH or
/// channel goodbyes: one exit each, ConnectionLost.
#[tokio::test(flavor = "multi_thread")]
async fn tcp_drop_is_connection_lost() {
    let mut server = TestServer::start(Options::default()).await;
    for (i, how) in [Kill::Reset, Kill::Fin].into_iter().enumerate() {
        let (mut client, mut sftp) = server.sftp_client().await;
        sftp.round_trip(&format!("/file{i}")).await;
        client.kill(how);
        client.wait_killed().await;
        server.log.wait_exits(i + 1).await;
    }
    server.stop().await;
    let exits = server.log.exits();
    assert_eq!(exits.len(), 2, "{exits:?}");
    for (_, reason) in &exits {
        assert!(
            matches!(reason, EndReason::ConnectionLost { .. }),
            "{exits:?}"
        );
    }
}

/// 5. No traffic for `Timeouts::idle` (keepalives off): one exit, IdleTimeout.
#[tokio::test(flavor = "multi_thread")]
async fn idle_connection_times_out() {
    let idle = Duration::from_millis(1500);
    let mut server = TestServer::start(Options {
        timeouts: Timeouts {
            idle: Some(idle),
            keepalive_interval: None,
            ..Timeouts::default()
        },
        ..Options::default()
    })
    .await;
    let (client, mut sftp) = server.sftp_client().await;
    sftp.round_trip("/f").await;
    let quiet_since = Instant::now();
    server.log.wait_exits(1).await;
    let exit_at = server.log.first_at(Event::is_exit).unwrap();
    assert!(
        exit_at.duration_since(quiet_since) >= idle - Duration::from_millis(500),
        "exit came {:?} after the last request; idle timeout is {idle:?}",
        exit_at.duration_since(quiet_since)
    );
    client.wait_closed().await;
    server.stop().await;
    assert_eq!(
        server
            .log
            .exits()
            .into_iter()
            .map(|(_, r)| r)
            .collect::<Vec<_>>(),
        vec![EndReason::IdleTimeout]
    );
}

/// 6. Shutdown with two live sessions (OpenSSH and Rust): `run` returns after both exits
/// ran once each with Shutdown, and both clients see their connection end.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_ends_every_session_once() {
    let mut server = TestServer::start(Options::default()).await;
    let openssh_client = match openssh("sftp") {
        Some(sftp) => {
            let mut child = sftp_command(&server, &sftp, &[])
                .spawn()
                .expect("spawn sftp");
            let stdin = child.stdin.take();
            server.log.wait_label("factory_end(ok)", 1).await;
            Some((child, stdin))
        }
        None => None,
    };
    let sessions = usize::from(openssh_client.is_some()) + 1;
    let (client, mut sftp) = server.sftp_client().await;
    sftp.round_trip("/f").await;
    server.log.wait_label("factory_end(ok)", sessions).await;

    server.shutdown.shutdown();
    let returned = server.wait_run(Duration::from_secs(20)).await;

    let records = server.log.records();
    let exit_ends: Vec<Instant> = records
        .iter()
        .filter(|r| matches!(r.event, Event::ExitEnd { .. }))
        .map(|r| r.at)
        .collect();
    assert_eq!(exit_ends.len(), sessions, "{records:#?}");
    assert!(
        exit_ends.iter().all(|at| *at <= returned),
        "run returned before an exit ended"
    );
    let exits = server.log.exits();
    assert_eq!(exits.len(), sessions, "{exits:?}");
    assert!(
        exits.iter().all(|(_, r)| *r == EndReason::Shutdown),
        "{exits:?}"
    );

    // The clients see the end.
    assert!(sftp.wait_closed().await.is_empty());
    assert_eq!(
        client.wait_disconnect_message().await,
        "server is shutting down"
    );
    client.wait_closed().await;
    if let Some((child, stdin)) = openssh_client {
        // Interactive sftp notices a dead connection when it next talks to the server; its
        // stdin stays open, so an exit here is the connection's end, not end of input.
        let mut stdin = stdin.expect("sftp stdin");
        use tokio::io::AsyncWriteExt as _;
        let _ = stdin.write_all(b"ls /\n").await;
        let _ = stdin.flush().await;
        let out = finish(child).await;
        drop(stdin);
        assert!(!out.status.success(), "{out:?}");
        assert!(out.stderr.contains("Connection closed"), "{out:?}");
    }
}

/// 7. Two SFTP channels on one connection: auth_completed once, the factory twice (two
/// session ids), two exits.
#[tokio::test(flavor = "multi_thread")]
async fn two_sftp_channels_on_one_connection() {
    let mut server = TestServer::start(Options::default()).await;
    let client = server.client().await;
    let mut first = client.open_sftp().await;
    let mut second = client.open_sftp().await;
    assert_eq!(first.init().await, 3);
    assert_eq!(second.init().await, 3);
    first.round_trip("/one").await;
    second.round_trip("/two").await;
    // One ends by EOF (as OpenSSH does), the other by CLOSE without EOF.
    first.eof().await;
    first.wait_closed().await;
    // (russh's client forgets a channel once it sent CLOSE, so the server's CLOSE is not
    // observable here; the exit is.)
    second.writer().close().await.unwrap();
    server.log.wait_exits(2).await;
    server.stop().await;

    assert_eq!(server.log.count_label("auth_start"), 1);
    let sessions = server.log.factory_sessions();
    assert_eq!(sessions.len(), 2);
    assert_ne!(sessions[0], sessions[1]);
    let channels: Vec<u32> = server
        .log
        .events()
        .iter()
        .filter_map(|e| match e {
            Event::FactoryStart { channel, .. } => Some(*channel),
            _ => None,
        })
        .collect();
    assert_ne!(channels[0], channels[1]);
    let mut exits = server.log.exits();
    exits.sort_by_key(|(s, _)| *s);
    assert_eq!(
        exits,
        vec![
            (sessions[0], EndReason::ClientEof),
            (sessions[1], EndReason::ClientClosed)
        ]
    );
}

/// 8. The factory fails: the client sees its message (OpenSSH on stderr; the Rust client as
/// extended data, then the channel closes), the cleanup ran, no exit.
#[tokio::test(flavor = "multi_thread")]
async fn factory_failure_is_shown_and_cleaned_up() {
    let message = "quota service unavailable, try later";
    let mut server = TestServer::start(Options {
        factory: FactoryBehavior {
            fail: Some(message.into()),
            register_cleanup: true,
            ..FactoryBehavior::default()
        },
        ..Options::default()
    })
    .await;

    let client = server.client().await;
    let mut sftp = client.open_sftp().await;
    sftp.send(&Request::Init {
        version: 3,
        extensions: Vec::new(),
    })
    .await;
    let packets = sftp.wait_closed().await;
    assert!(
        packets.is_empty(),
        "no VERSION for a session that never started: {packets:?}"
    );
    assert!(sftp.end.stderr_text().contains(message), "{:?}", sftp.end);
    assert_eq!(sftp.end.exit_status, Some(1));
    let mut sessions = 1;

    if let Some(sftp) = openssh("sftp") {
        let out = sftp_batch(&server, &sftp, "ls /\n").await;
        assert!(!out.status.success(), "{out:?}");
        assert!(out.stderr.contains(message), "{out:?}");
        sessions += 1;
    }

    server.log.wait_label("cleanup", sessions).await;
    server.stop().await;
    for session in server.log.factory_sessions() {
        assert_eq!(
            server.log.session_labels(session),
            labels(&["factory_start", "factory_end(err)", "cleanup"])
        );
    }
    assert_eq!(server.log.count_label("factory_start"), sessions);
    assert!(server.log.exits().is_empty());
}

/// 9. The factory outlives `Timeouts::sftp_factory`: it is dropped, its cleanup runs, the
/// client is told it timed out, no exit.
#[tokio::test(flavor = "multi_thread")]
async fn factory_timeout_is_shown_and_cleaned_up() {
    let mut server = TestServer::start(Options {
        timeouts: Timeouts {
            sftp_factory: Duration::from_secs(1),
            ..Timeouts::default()
        },
        factory: FactoryBehavior {
            delay: Some(Duration::from_secs(60)),
            register_cleanup: true,
            ..FactoryBehavior::default()
        },
        ..Options::default()
    })
    .await;

    let rust = async {
        let client = server.client().await;
        let mut sftp = client.open_sftp().await;
        let packets = sftp.wait_closed().await;
        assert!(packets.is_empty(), "{packets:?}");
        sftp.end.stderr_text()
    };
    let openssh = async {
        match openssh("sftp") {
            Some(sftp) => Some(sftp_batch(&server, &sftp, "ls /\n").await),
            None => None,
        }
    };
    let (stderr, out) = tokio::join!(rust, openssh);
    assert!(stderr.contains("timed out"), "{stderr:?}");
    let mut sessions = 1;
    if let Some(out) = out {
        assert!(!out.status.success(), "{out:?}");
        assert!(out.stderr.contains("timed out"), "{out:?}");
        sessions += 1;
    }

    server.log.wait_label("cleanup", sessions).await;
    server.stop().await;
    for session in server.log.factory_sessions() {
        assert_eq!(
            server.log.session_labels(session),
            labels(&["factory_start", "factory_dropped", "cleanup"])
        );
    }
    assert_eq!(server.log.count_label("factory_start"), sessions);
    assert!(server.log.exits().is_empty());
}

/// 10. The client leaves while the factory is still running (it waits forever): the
/// factory's future is dropped, then its cleanup runs; no exit. Once by a TCP drop, once by
/// closing the channel.
#[tokio::test(flavor = "multi_thread")]
async fn client_leaving_cancels_the_factory() {
    let mut server = TestServer::start(Options {
        factory: FactoryBehavior {
            hang: true,
            register_cleanup: true,
            ..FactoryBehavior::default()
        },
        ..Options::default()
    })
    .await;

    // TCP reset while the factory runs.
    let mut client = server.client().await;
    let _sftp = client.open_sftp().await;
    server.log.wait_label("factory_start", 1).await;
    client.kill(Kill::Reset);
    server.log.wait_label("cleanup", 1).await;

    // Channel EOF while the factory runs.
    let client = server.client().await;
    let sftp = client.open_sftp().await;
    server.log.wait_label("factory_start", 2).await;
    sftp.eof().await;
    server.log.wait_label("cleanup", 2).await;

    server.stop().await;
    let sessions = server.log.factory_sessions();
    assert_eq!(sessions.len(), 2);
    for session in sessions {
        assert_eq!(
            server.log.session_labels(session),
            labels(&["factory_start", "factory_dropped", "cleanup"])
        );
    }
    assert!(server.log.exits().is_empty());
}

/// 11. A slow auth_completed (1 s) delays everything after it: the factory starts only once
/// the hook has returned, and OpenSSH's sftp still works.
#[tokio::test(flavor = "multi_thread")]
async fn slow_auth_completed_holds_back_channel_requests() {
    let Some(sftp) = openssh("sftp") else { return };
    let delay = Duration::from_secs(1);
    let mut server = TestServer::start(Options {
        hook: HookBehavior {
            delay: Some(delay),
            ..HookBehavior::default()
        },
        ..Options::default()
    })
    .await;
    let out = sftp_batch(&server, &sftp, "ls /\n").await;
    assert!(out.status.success(), "{out:?}");
    server.log.wait_exits(1).await;
    server.stop().await;

    assert_eq!(
        server.log.lifecycle_labels(),
        labels(&[
            "auth_start",
            "auth_end(ok)",
            "factory_start",
            "factory_end(ok)",
            "exit(client_eof)",
            "exit_end",
        ])
    );
    let auth_start = server.log.first_at(|e| e.label() == "auth_start").unwrap();
    let auth_end = server
        .log
        .first_at(|e| e.label() == "auth_end(ok)")
        .unwrap();
    let factory = server
        .log
        .first_at(|e| e.label() == "factory_start")
        .unwrap();
    assert!(auth_end.duration_since(auth_start) >= delay);
    assert!(
        factory >= auth_end,
        "the factory started before auth_completed returned"
    );
}

/// 12a. auth_completed fails: the client gets a DISCONNECT with its message (OpenSSH prints
/// it on stderr), nothing else runs.
#[tokio::test(flavor = "multi_thread")]
async fn auth_completed_failure_disconnects_with_its_message() {
    let message = "account is locked until 12:00";
    let mut server = TestServer::start(Options {
        hook: HookBehavior {
            fail: Some(message.into()),
            ..HookBehavior::default()
        },
        ..Options::default()
    })
    .await;
    let mut connections = 1;
    let mut client = SshClient::connect(server.addr).await;
    let _ = client.auth_key(USER, server.client_key.clone()).await;
    assert_eq!(client.wait_disconnect_message().await, message);
    client.wait_closed().await;

    if let Some(sftp) = openssh("sftp") {
        let out = sftp_batch(&server, &sftp, "ls /\n").await;
        assert!(!out.status.success(), "{out:?}");
        assert!(out.stderr.contains(message), "{out:?}");
        connections += 1;
    }
    server.stop().await;
    assert_eq!(server.log.count_label("auth_start"), connections);
    assert_eq!(server.log.count_label("auth_end(err)"), connections);
    assert_eq!(server.log.count_label("factory_start"), 0);
    assert!(server.log.exits().is_empty());
}

/// 12b. auth_completed outlives `Timeouts::auth_completed`: DISCONNECT saying it timed out.
#[tokio::test(flavor = "multi_thread")]
async fn auth_completed_timeout_disconnects() {
    let mut server = TestServer::start(Options {
        timeouts: Timeouts {
            auth_completed: Duration::from_secs(1),
            ..Timeouts::default()
        },
        hook: HookBehavior {
            hang: true,
            ..HookBehavior::default()
        },
        ..Options::default()
    })
    .await;
    let rust = async {
        let mut client = SshClient::connect(server.addr).await;
        let _ = client.auth_key(USER, server.client_key.clone()).await;
        let message = client.wait_disconnect_message().await;
        client.wait_closed().await;
        message
    };
    let openssh = async {
        match openssh("sftp") {
            Some(sftp) => Some(sftp_batch(&server, &sftp, "ls /\n").await),
            None => None,
        }
    };
    let (message, out) = tokio::join!(rust, openssh);
    assert!(message.contains("timed out"), "{message:?}");
    let mut connections = 1;
    if let Some(out) = out {
        assert!(!out.status.success(), "{out:?}");
        assert!(out.stderr.contains("timed out"), "{out:?}");
        connections += 1;
    }
    server.stop().await;
    assert_eq!(server.log.count_label("auth_start"), connections);
    assert_eq!(server.log.count_label("factory_start"), 0);
    assert!(server.log.exits().is_empty());
}

/// 13a. A slow exit (2 s) during shutdown: `run` returns only after it finished.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_waits_for_a_slow_exit() {
    let exit_delay = Duration::from_secs(2);
    let mut server = TestServer::start(Options {
        fs: FsBehavior {
            exit_delay: Some(exit_delay),
            ..FsBehavior::default()
        },
        ..Options::default()
    })
    .await;
    let (_client, mut sftp) = server.sftp_client().await;
    sftp.round_trip("/f").await;
    let asked = Instant::now();
    server.shutdown.shutdown();
    let returned = server.wait_run(Duration::from_secs(20)).await;
    let exit_end = server
        .log
        .first_at(|e| matches!(e, Event::ExitEnd { .. }))
        .expect("the exit finished");
    assert!(
        exit_end <= returned,
        "run returned before the exit finished"
    );
    assert!(returned.duration_since(asked) >= exit_delay);
    assert_eq!(
        server.log.lifecycle_labels(),
        labels(&[
            "auth_start",
            "auth_end(ok)",
            "factory_start",
            "factory_end(ok)",
            "exit(shutdown)",
            "exit_end",
        ])
    );
}

/// 13b. An exit that never returns is abandoned after `Timeouts::exit`: shutdown does not
/// wait for the drain timeout, and the exit was attempted exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_abandons_a_hanging_exit() {
    let drain = Duration::from_secs(10);
    let mut server = TestServer::start(Options {
        timeouts: Timeouts {
            exit: Duration::from_secs(1),
            shutdown_drain: drain,
            ..Timeouts::default()
        },
        fs: FsBehavior {
            exit_hangs: true,
            ..FsBehavior::default()
        },
        ..Options::default()
    })
    .await;
    let (_client, mut sftp) = server.sftp_client().await;
    sftp.round_trip("/f").await;
    let asked = Instant::now();
    server.shutdown.shutdown();
    let returned = server.wait_run(drain * 2).await;
    let took = returned.duration_since(asked);
    eprintln!("shutdown with a hanging exit took {took:?}");
    assert!(
        took >= Duration::from_secs(1),
        "the exit got its timeout: {took:?}"
    );
    assert!(
        took < drain / 2,
        "shutdown took {took:?}: the hanging exit held it up"
    );
    assert_eq!(
        server.log.lifecycle_labels(),
        labels(&[
            "auth_start",
            "auth_end(ok)",
            "factory_start",
            "factory_end(ok)",
            "exit(shutdown)",
        ])
    );
}

/// 14. The client leaves a file open and disconnects; closing it fails: the exit still runs,
/// once, after the close was attempted once.
#[tokio::test(flavor = "multi_thread")]
async fn exit_runs_when_closing_an_open_handle_fails() {
    let mut server = TestServer::start(Options {
        fs: FsBehavior {
            close_fails: true,
            ..FsBehavior::default()
        },
        ..Options::default()
    })
    .await;
    let (client, mut sftp) = server.sftp_client().await;
    let flags = OpenFlags::WRITE | OpenFlags::CREAT | OpenFlags::TRUNC;
    let handle = sftp.open("/left-open", flags).await.unwrap();
    sftp.write(&handle, 0, b"unfinished upload").await.unwrap();
    client.disconnect().await;
    server.log.wait_exits(1).await;
    server.stop().await;

    let session = server.log.factory_sessions()[0];
    assert_eq!(
        server.log.session_labels(session),
        labels(&[
            "factory_start",
            "factory_end(ok)",
            "file_close(err)",
            "exit(connection_lost)",
            "exit_end",
        ])
    );
    assert_eq!(
        std::fs::read(server.root.join("left-open")).unwrap(),
        b"unfinished upload"
    );
}

/// Limits and budgets are per session: a client at its handle limit gets a clear error and
/// the session goes on.
#[tokio::test(flavor = "multi_thread")]
async fn handle_limit_is_a_status_not_an_end() {
    let mut server = TestServer::start(Options {
        limits: Limits {
            max_handles: 2,
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    let (_client, mut sftp) = server.sftp_client().await;
    let flags = OpenFlags::WRITE | OpenFlags::CREAT;
    let a = sftp.open("/a", flags).await.unwrap();
    let _b = sftp.open("/b", flags).await.unwrap();
    let (code, message) = sftp.open("/c", flags).await.unwrap_err();
    assert_eq!(code, sftpgate_proto::StatusCode::Failure);
    assert!(message.contains("Too many open handles"), "{message}");
    sftp.close(&a).await.unwrap();
    sftp.round_trip("/d").await;
    sftp.eof().await;
    server.log.wait_exits(1).await;
    server.stop().await;
    // The file opened past the limit was closed at once; the one left open was closed at
    // the end, before the exit.
    let session = server.log.factory_sessions()[0];
    assert_eq!(
        server.log.session_labels(session),
        labels(&[
            "factory_start",
            "factory_end(ok)",
            "file_close(ok)",
            "file_close(ok)",
            "file_close(ok)",
            "file_close(ok)",
            "exit(client_eof)",
            "exit_end",
        ])
    );
}

/// A request handler that panics fails that request only (FAILURE); the session goes on
/// and ends with exactly one exit.
#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_request_fails_only_that_request() {
    let mut server = TestServer::start(Options {
        fs: FsBehavior {
            panic_on_stat: true,
            ..FsBehavior::default()
        },
        ..Options::default()
    })
    .await;
    let (_client, mut sftp) = server.sftp_client().await;
    let (code, message) = sftp.stat(PANIC_PATH).await.unwrap_err();
    assert_eq!(code, sftpgate_proto::StatusCode::Failure);
    assert!(
        !message.contains("panic"),
        "internals leak to the client: {message}"
    );
    sftp.round_trip("/after-panic").await;
    sftp.eof().await;
    sftp.wait_closed().await;
    server.log.wait_exits(1).await;
    server.stop().await;
    assert_eq!(
        server.log.lifecycle_labels(),
        labels(&[
            "auth_start",
            "auth_end(ok)",
            "factory_start",
            "factory_end(ok)",
            "exit(client_eof)",
            "exit_end",
        ])
    );
}

/// Requests a client sends while the factory is still running (OpenSSH sends INIT at once)
/// are kept and served once the session has started, in order.
#[tokio::test(flavor = "multi_thread")]
async fn requests_sent_while_the_factory_runs_are_served_after_it() {
    let mut server = TestServer::start(Options {
        factory: FactoryBehavior {
            delay: Some(Duration::from_millis(500)),
            ..FactoryBehavior::default()
        },
        ..Options::default()
    })
    .await;
    std::fs::write(server.root.join("early"), b"12345").unwrap();
    let client = server.client().await;
    let mut sftp = client.open_sftp().await;
    sftp.send(&Request::Init {
        version: 3,
        extensions: Vec::new(),
    })
    .await;
    sftp.send(&Request::Stat {
        id: 77,
        path: "/early".into(),
    })
    .await;
    server.log.wait_label("factory_start", 1).await;
    assert_eq!(
        server.log.count_label("factory_end(ok)"),
        0,
        "the requests went out while the factory ran"
    );
    match sftp.recv().await {
        Some(sftpgate_proto::Response::Version { version: 3, .. }) => {}
        other => panic!("expected VERSION first, got {other:?}"),
    }
    match sftp.recv().await {
        Some(sftpgate_proto::Response::Attrs { id: 77, attrs }) => {
            assert_eq!(attrs.size, Some(5))
        }
        other => panic!("expected ATTRS for 77, got {other:?}"),
    }
    sftp.eof().await;
    server.log.wait_exits(1).await;
    server.stop().await;
    assert_eq!(
        server
            .log
            .exits()
            .into_iter()
            .map(|(_, r)| r)
            .collect::<Vec<_>>(),
        vec![EndReason::ClientEof]
    );
}

/// Shutdown while a factory runs: the factory is dropped, its cleanup runs, no exit, and
/// `run` returns.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_cancels_a_running_factory() {
    let mut server = TestServer::start(Options {
        factory: FactoryBehavior {
            hang: true,
            register_cleanup: true,
            ..FactoryBehavior::default()
        },
        ..Options::default()
    })
    .await;
    let client = server.client().await;
    let _sftp = client.open_sftp().await;
    server.log.wait_label("factory_start", 1).await;
    server.stop().await;
    assert_eq!(
        server.log.lifecycle_labels(),
        labels(&[
            "auth_start",
            "auth_end(ok)",
            "factory_start",
            "factory_dropped",
            "cleanup"
        ])
    );
}

/// Shutdown while auth_completed runs: the client is told the server is shutting down, and
/// `run` returns without waiting for the hook.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_interrupts_a_running_auth_completed() {
    let mut server = TestServer::start(Options {
        hook: HookBehavior {
            hang: true,
            ..HookBehavior::default()
        },
        ..Options::default()
    })
    .await;
    let mut client = SshClient::connect(server.addr).await;
    let key = server.client_key.clone();
    let auth = tokio::spawn(async move {
        let _ = client.auth_key(USER, key).await;
        client
    });
    server.log.wait_label("auth_start", 1).await;
    server.stop().await;
    let client = bounded("authentication to end", auth).await.unwrap();
    assert_eq!(
        client.wait_disconnect_message().await,
        "server is shutting down"
    );
    assert_eq!(server.log.lifecycle_labels(), labels(&["auth_start"]));
}

/// A client that goes silent without closing anything (a network partition) is noticed by
/// unanswered keepalives: one exit, KeepaliveTimeout.
#[tokio::test(flavor = "multi_thread")]
async fn unanswered_keepalives_end_the_session() {
    let mut server = TestServer::start(Options {
        timeouts: Timeouts {
            idle: None,
            keepalive_interval: Some(Duration::from_millis(300)),
            keepalive_max: 2,
            ..Timeouts::default()
        },
        ..Options::default()
    })
    .await;
    let (mut client, mut sftp) = server.sftp_client().await;
    sftp.round_trip("/f").await;
    client.kill(Kill::Freeze);
    server.log.wait_exits(1).await;
    server.stop().await;
    assert_eq!(
        server
            .log
            .exits()
            .into_iter()
            .map(|(_, r)| r)
            .collect::<Vec<_>>(),
        vec![EndReason::KeepaliveTimeout]
    );
}

/// `Timeouts::login_grace` closes a connection that has not authenticated, with a message;
/// an authenticated one outlives it.
#[tokio::test(flavor = "multi_thread")]
async fn login_grace_closes_unauthenticated_connections_only() {
    let grace = Duration::from_secs(1);
    let mut server = TestServer::start(Options {
        timeouts: Timeouts {
            login_grace: grace,
            ..Timeouts::default()
        },
        ..Options::default()
    })
    .await;
    let lingering = SshClient::connect(server.addr).await;
    let (_client, mut sftp) = server.sftp_client().await;
    let since = Instant::now();
    assert_eq!(
        lingering.wait_disconnect_message().await,
        "login grace time exceeded"
    );
    lingering.wait_closed().await;
    // Past the authenticated connection's own grace time too: it still works.
    tokio::time::sleep(grace.saturating_sub(since.elapsed()) + Duration::from_millis(200)).await;
    sftp.round_trip("/still-here").await;
    sftp.eof().await;
    server.log.wait_exits(1).await;
    server.stop().await;
    assert_eq!(server.log.count_label("auth_start"), 1);
    assert_eq!(
        server
            .log
            .exits()
            .into_iter()
            .map(|(_, r)| r)
            .collect::<Vec<_>>(),
        vec![EndReason::ClientEof]
    );
}

/// `Limits::max_sessions_per_connection`: a channel past it is refused; the live ones go on.
#[tokio::test(flavor = "multi_thread")]
async fn session_limit_per_connection() {
    let mut server = TestServer::start(Options {
        limits: Limits {
            max_sessions_per_connection: 1,
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    let (client, mut sftp) = server.sftp_client().await;
    let refused = bounded("channel open", client.handle.channel_open_session()).await;
    assert!(refused.is_err(), "a second session channel was accepted");
    sftp.round_trip("/f").await;
    sftp.eof().await;
    sftp.wait_closed().await;
    server.log.wait_exits(1).await;
    // The slot is free again once the session ended.
    let mut again = client.open_sftp().await;
    assert_eq!(again.init().await, 3);
    again.eof().await;
    server.log.wait_exits(2).await;
    server.stop().await;
    assert_eq!(server.log.count_label("factory_start"), 2);
}

/// `Limits::max_connections`: "further ones are refused with a disconnect message" (its
/// docs). The client must learn why, not just see the TCP connection close.
#[tokio::test(flavor = "multi_thread")]
async fn connection_limit_refuses_with_a_message() {
    let mut server = TestServer::start(Options {
        limits: Limits {
            max_connections: 1,
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    let (first, mut sftp) = server.sftp_client().await;
    match SshClient::try_connect(server.addr).await {
        Ok(refused) => {
            let message = refused.wait_disconnect_message().await;
            assert!(!message.is_empty());
        }
        Err(e) => panic!(
            "the connection over the limit was closed without an SSH DISCONNECT message \
             (handshake error: {e})"
        ),
    }
    sftp.round_trip("/first").await;
    first.disconnect().await;
    server.log.wait_exits(1).await;
    // Once the first one is gone, a new connection is accepted.
    let (_again, mut sftp) = server.sftp_client().await;
    sftp.round_trip("/again").await;
    server.stop().await;
}

/// Shutdown while a storage request hangs (no request timeout): the session must still end
/// and run its exit within `Timeouts::shutdown_drain`, since `run` stops waiting then (and
/// a binary exits, so an exit not run by then never runs).
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_with_a_hung_request_still_runs_the_exit() {
    let drain = Duration::from_secs(4);
    let mut server = TestServer::start(Options {
        timeouts: Timeouts {
            shutdown_drain: drain,
            exit: Duration::from_secs(1),
            request: None,
            ..Timeouts::default()
        },
        fs: FsBehavior {
            read_hangs: true,
            ..FsBehavior::default()
        },
        ..Options::default()
    })
    .await;
    std::fs::write(server.root.join("stuck"), b"data").unwrap();
    let (_client, mut sftp) = server.sftp_client().await;
    let handle = sftp.open("/stuck", OpenFlags::READ).await.unwrap();
    sftp.send(&Request::Read {
        id: 99,
        handle,
        offset: 0,
        len: 4,
    })
    .await;
    server.log.wait_label("read_hangs", 1).await;
    let asked = Instant::now();
    server.shutdown.shutdown();
    let returned = server.wait_run(drain * 3).await;
    let took = returned.duration_since(asked);
    assert!(
        took < drain + Duration::from_secs(1),
        "shutdown took {took:?}"
    );
    assert_eq!(
        server
            .log
            .exits()
            .into_iter()
            .map(|(_, r)| r)
            .collect::<Vec<_>>(),
        vec![EndReason::Shutdown],
        "the session's exit did not run before Server::run returned (after {took:?})"
    );
}
