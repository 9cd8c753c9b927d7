//! Connection limits under abuse: per source address, per user, and the separate budget of
//! connections that have not logged in. Each refusal must reach the client as a DISCONNECT
//! message, be counted (`sftpgate_connections_rejected_total{reason}`) and leave every other
//! client alone. Other loopback addresses (127.0.0.2) stand in for other hosts.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;
use sftpgate_server::Limits;
use tokio::io::AsyncWriteExt as _;
use tokio::task::JoinSet;

const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

// ---------------------------------------------------------------------------------------------
// Counters: a minimal `metrics` recorder, installed once for this test binary. Tests run in
// parallel, so they assert on increases, never on absolute values.

#[derive(Default)]
struct Counters {
    values: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

struct CounterCell(Arc<AtomicU64>);

impl metrics::CounterFn for CounterCell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

/// `name{label=value,…}` as the recorder files it.
fn key_text(key: &metrics::Key) -> String {
    let labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl metrics::Recorder for &'static Counters {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let cell = self
            .values
            .lock()
            .unwrap()
            .entry(key_text(key))
            .or_default()
            .clone();
        metrics::Counter::from_arc(Arc::new(CounterCell(cell)))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

fn counters() -> &'static Counters {
    static COUNTERS: OnceLock<&'static Counters> = OnceLock::new();
    COUNTERS.get_or_init(|| {
        let counters: &'static Counters = Box::leak(Box::default());
        metrics::set_global_recorder(counters).expect("the only recorder of this test binary");
        counters
    })
}

/// A counter's value so far, by its key as `key_text` writes it.
fn counter(key: &str) -> u64 {
    counters()
        .values
        .lock()
        .unwrap()
        .get(key)
        .map_or(0, |v| v.load(Ordering::Relaxed))
}

/// `sftpgate_connections_rejected_total{reason}` so far.
fn rejected(reason: &str) -> u64 {
    counter(&format!(
        "sftpgate_connections_rejected_total{{reason={reason}}}"
    ))
}

/// The DISCONNECT message a connection from `from` is refused with.
async fn refused_from(server: &TestServer, from: IpAddr) -> String {
    match SshClient::try_connect_from(server.addr, from).await {
        Ok(client) => client.wait_disconnect_message().await,
        Err(e) => panic!("refused without an SSH DISCONNECT message (handshake error: {e})"),
    }
}

// ---------------------------------------------------------------------------------------------

/// `max_unauthenticated_per_address`: connections from one address that never log in fill
/// only that address's share; the next one from there is told why; other addresses and
/// authenticated connections from the same address are not affected.
#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_per_address() {
    counters();
    let mut server = TestServer::start(Options {
        limits: Limits {
            max_unauthenticated_per_address: 2,
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    // Logged in first from 127.0.0.2: not counted as unauthenticated.
    let mut early = SshClient::try_connect_from(server.addr, OTHER)
        .await
        .unwrap();
    assert!(early.auth_key(USER, server.client_key.clone()).await);
    let _idle_a = connect_from(server.addr, OTHER).await;
    let _idle_b = connect_from(server.addr, OTHER).await;
    let before = rejected("unauthenticated_per_address");
    let message = refused_from(&server, OTHER).await;
    assert!(
        message.contains("unauthenticated connections from your address"),
        "{message}"
    );
    assert!(rejected("unauthenticated_per_address") > before);
    // 127.0.0.1 logs in and works; so does the session opened from 127.0.0.2 before.
    let (_client, mut sftp) = server.sftp_client().await;
    sftp.round_trip("/home").await;
    let mut other = early.open_sftp().await;
    assert_eq!(other.init().await, 3);
    other.round_trip("/other").await;
    server.stop().await;
}

/// `max_connections_per_address` counts authenticated connections too.
#[tokio::test(flavor = "multi_thread")]
async fn per_address_counts_every_connection() {
    counters();
    let mut server = TestServer::start(Options {
        limits: Limits {
            max_connections_per_address: 2,
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    let mut a = SshClient::try_connect_from(server.addr, OTHER)
        .await
        .unwrap();
    assert!(a.auth_key(USER, server.client_key.clone()).await);
    let _b = connect_from(server.addr, OTHER).await;
    let before = rejected("per_address");
    let message = refused_from(&server, OTHER).await;
    assert!(
        message.contains("too many connections from your address"),
        "{message}"
    );
    assert!(rejected("per_address") > before);
    let (_client, mut sftp) = server.sftp_client().await;
    sftp.round_trip("/home").await;
    // Once one from 127.0.0.2 has gone, the address gets a slot again.
    a.disconnect().await;
    a.wait_closed().await;
    // The server frees the slot when it has seen the connection end: retry, bounded.
    let mut again = None;
    let deadline = Instant::now() + WAIT;
    while again.is_none() && Instant::now() < deadline {
        let mut c = SshClient::try_connect_from(server.addr, OTHER)
            .await
            .unwrap();
        if c.auth_key(USER, server.client_key.clone()).await {
            again = Some(c);
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(again.is_some(), "127.0.0.2 never got its slot back");
    server.stop().await;
}

/// `max_unauthenticated`: the total budget of connections that have not logged in, shared
/// by all addresses; logged-in connections are outside it.
#[tokio::test(flavor = "multi_thread")]
async fn unauthenticated_budget_spares_logged_in_connections() {
    counters();
    let mut server = TestServer::start(Options {
        limits: Limits {
            max_unauthenticated: 2,
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    let (_client, mut sftp) = server.sftp_client().await;
    let _a = connect_from(server.addr, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3))).await;
    let _b = connect_from(server.addr, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4))).await;
    let before = rejected("unauthenticated");
    let message = refused_from(&server, OTHER).await;
    assert!(
        message.contains("too many connections are logging in"),
        "{message}"
    );
    assert!(rejected("unauthenticated") > before);
    // The session that had logged in before goes on.
    sftp.round_trip("/still-served").await;
    server.stop().await;
}

/// `max_connections_per_user`: checked when authentication succeeds, before the
/// auth-completed hook; the refused client is told why, the user's other connection goes on.
#[tokio::test(flavor = "multi_thread")]
async fn per_user_limit() {
    counters();
    let mut server = TestServer::start(Options {
        limits: Limits {
            max_connections_per_user: 1,
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    let (first, mut sftp) = server.sftp_client().await;
    let before = rejected("per_user");
    let mut second = SshClient::connect(server.addr).await;
    // USERAUTH_SUCCESS is queued before the DISCONNECT: the client may see either.
    let _ = second.auth_key(USER, server.client_key.clone()).await;
    let message = second.wait_disconnect_message().await;
    assert!(
        message.contains("too many connections for this user"),
        "{message}"
    );
    assert!(rejected("per_user") > before);
    // The hook never ran for the refused connection.
    assert_eq!(server.log.count_label("auth_start"), 1);
    sftp.round_trip("/first").await;
    first.disconnect().await;
    server.log.wait_exits(1).await;
    let (_again, mut sftp) = server.sftp_client().await;
    sftp.round_trip("/again").await;
    server.stop().await;
}

/// How many connections the flood opens from 127.0.0.2.
const FLOOD: usize = 500;
/// The flood's dribbling connections give up after this long at the latest.
const FLOOD_LIFETIME: Duration = Duration::from_secs(90);
/// What the real client moves.
const TRANSFER: usize = 16 << 20;

/// The abuse case, with the default limits: 500 connections from 127.0.0.2 that
/// open TCP and then send nothing (half of them) or one byte a second (the other half) do
/// not stop OpenSSH's `sftp` on 127.0.0.1 from logging in and moving 16 MiB each way.
/// (OpenSSH's own sshd with default settings fails this: MaxStartups 10:30:100 drops new
/// connections at random once 10 are unauthenticated.)
#[tokio::test(flavor = "multi_thread")]
async fn slowloris_flood_from_another_address_does_not_stop_a_real_client() {
    counters();
    let Some(sftp) = openssh("sftp") else { return };
    let mut server = TestServer::start(Options::default()).await;
    let refused_before = rejected("unauthenticated_per_address") + rejected("per_address");

    let mut flood = JoinSet::new();
    let (connected_tx, mut connected_rx) = tokio::sync::mpsc::channel::<()>(FLOOD);
    for i in 0..FLOOD {
        let addr = server.addr;
        let connected = connected_tx.clone();
        flood.spawn(async move {
            let mut tcp = connect_from(addr, OTHER).await;
            let _ = connected.send(()).await;
            if i % 2 == 0 {
                // Silent: hold the socket until the test ends (the set is dropped).
                tokio::time::sleep(FLOOD_LIFETIME).await;
            } else {
                // One byte a second of an identification line that never ends; stops when
                // the server has closed the connection or the lifetime is over.
                let started = Instant::now();
                while started.elapsed() < FLOOD_LIFETIME {
                    if tcp.write_all(b"S").await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            drop(tcp);
        });
    }
    drop(connected_tx);
    for _ in 0..FLOOD {
        bounded("the flood to connect", connected_rx.recv())
            .await
            .expect("a flood task ended before connecting");
    }

    // The server has seen the whole flood before the real client starts: all but the few
    // allowed to try logging in from 127.0.0.2 were refused (and counted).
    let allowed = Limits::default().max_unauthenticated_per_address;
    let refused =
        || rejected("unauthenticated_per_address") + rejected("per_address") - refused_before;
    poll_until(
        "the server to refuse the flood",
        || refused() >= (FLOOD - allowed) as u64,
        || format!("{} of {FLOOD} refused", refused()),
    )
    .await;

    let local = server.scratch.join("big");
    let back = server.scratch.join("big.back");
    let data: Vec<u8> = (0..TRANSFER).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&local, &data).unwrap();
    let started = Instant::now();
    let done = sftp_batch(
        &server,
        &sftp,
        &format!(
            "put {} /big\nget /big {}\n",
            local.display(),
            back.display()
        ),
    )
    .await;
    let took = started.elapsed();
    assert!(
        done.status.success(),
        "sftp failed during the flood: {}\n{}",
        done.stdout,
        done.stderr
    );
    assert_eq!(
        std::fs::read(server.root.join("big")).unwrap(),
        data,
        "uploaded bytes"
    );
    assert_eq!(std::fs::read(&back).unwrap(), data, "downloaded bytes");
    let refused = refused();
    eprintln!("16 MiB up and down with {FLOOD} flood connections: {took:?}; {refused} refused");
    flood.abort_all();
    server.stop().await;
}

/// `sftpgate_limit_hits_total{limit}` so far.
fn limit_hits(limit: &str) -> u64 {
    counter(&format!("sftpgate_limit_hits_total{{limit={limit}}}"))
}

/// Per-session limits (open handles, WRITE size) answer the request that hits them with a
/// STATUS saying which limit, are counted, and the session goes on.
#[tokio::test(flavor = "multi_thread")]
async fn session_limits_are_statuses_and_counted() {
    counters();
    let mut server = TestServer::start(Options {
        limits: Limits {
            max_handles: 1,
            max_write: 1024,
            ..Limits::default()
        },
        ..Options::default()
    })
    .await;
    let (_client, mut sftp) = server.sftp_client().await;
    let flags = sftpgate_proto::OpenFlags::WRITE | sftpgate_proto::OpenFlags::CREAT;
    let (handles_before, writes_before) = (limit_hits("handles"), limit_hits("write"));

    let a = sftp.open("/a", flags).await.expect("first handle");
    let (code, message) = sftp.open("/b", flags).await.expect_err("over max_handles");
    assert_eq!(code, sftpgate_proto::StatusCode::Failure);
    assert!(message.contains("Too many open handles"), "{message}");
    assert!(
        limit_hits("handles") > handles_before,
        "handle limit counted"
    );

    let (code, message) = sftp
        .write(&a, 0, &[1u8; 2048])
        .await
        .expect_err("over max_write");
    assert_eq!(code, sftpgate_proto::StatusCode::BadMessage);
    assert!(
        message.contains("2048") && message.contains("1024"),
        "says the size and the limit: {message}"
    );
    assert!(
        limit_hits("write") > writes_before,
        "WRITE size limit counted"
    );

    // The session goes on: a WRITE within the limit lands, the file holds only it.
    sftp.write(&a, 0, &[2u8; 1024])
        .await
        .expect("write within the limit");
    sftp.close(&a).await.expect("close");
    assert_eq!(
        std::fs::read(server.root.join("a")).unwrap(),
        vec![2u8; 1024]
    );
    sftp.eof().await;
    server.log.wait_exits(1).await;
    server.stop().await;
}
