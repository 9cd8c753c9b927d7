//! SIGTERM: the server ends open sessions, exits 0 well within its drain time, and the
//! client sees the connection go.

mod common;

use std::time::{Duration, Instant};

use common::{Fixture, Interactive, Server, USER};

/// Well below the default drain time (30 s): a session that does not end on shutdown makes
/// the server wait for the whole drain, and this bound fail.
const EXIT_BOUND: Duration = Duration::from_secs(10);

#[test]
fn sigterm_with_an_open_session_exits_zero_and_ends_the_session() {
    let Some(fx) = Fixture::new() else { return };
    let mut server = fx.start(USER);
    let mut client = Interactive::start(&fx, &server, USER);
    client.send("pwd").unwrap();
    assert!(
        client.wait_for(true, "Remote working directory: /", Duration::from_secs(20)),
        "the session did not open\nstdout: {}\nstderr: {}",
        client.stdout(),
        client.stderr()
    );
    // The session is open and idle, its stdin still open: nothing but the server can end it.
    let started = Instant::now();
    let status = server.terminate(EXIT_BOUND);
    let took = started.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "the server did not exit within {EXIT_BOUND:?} of SIGTERM\n{}",
            server.stderr()
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "exit status {status}\n{}",
        server.stderr()
    );
    eprintln!("server exited {took:?} after SIGTERM");

    // OpenSSH's sftp reports the end of its ssh transport, and the next command fails.
    assert!(
        client.wait_for(false, "Connection closed", EXIT_BOUND),
        "the client did not see the connection end\nstdout: {}\nstderr: {}",
        client.stdout(),
        client.stderr()
    );
    let _ = client.send("ls");
    let exit = common::wait_timeout(&mut client.child, EXIT_BOUND)
        .expect("sftp exits once its connection is gone");
    assert!(!exit.success(), "sftp: {exit}\n{}", client.stderr());
}

/// The listening line says the server is up; from then on SIGTERM must mean a graceful
/// shutdown (exit 0), not the default action of the signal. Tried a few times, as the
/// window is short.
#[test]
fn sigterm_right_after_the_listening_line_is_graceful() {
    let Some(fx) = Fixture::new() else { return };
    fx.add_user(USER);
    for attempt in 1..=5 {
        let mut server = Server::start(fx.serve(None))
            .unwrap_or_else(|out| panic!("the server did not start\n{}", out.show()));
        let status = server.terminate(EXIT_BOUND).unwrap_or_else(|| {
            panic!(
                "no exit within {EXIT_BOUND:?} of SIGTERM\n{}",
                server.stderr()
            )
        });
        assert_eq!(
            status.code(),
            Some(0),
            "attempt {attempt}: SIGTERM right after `sftpgate listening on …` ended the process \
             with {status}: the signal handler is installed only after the listening line is \
             printed\n{}",
            server.stderr()
        );
    }
}
