//! Connections placed on connection runtimes (`Server::with_connection_runtimes`): each one
//! wholly on one runtime (hooks, factory, requests, exit), on the one serving the fewest
//! connections when it arrives; the lifecycle and the shutdown drain as on one runtime.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::*;
use sftpgate_server::{ConnectionId, SessionId};
use sftpgate_vfs::EndReason;

/// Runtimes of one worker each, named `conn-test-<i>` (their blocking threads too), shut
/// down without waiting when dropped (dropping a runtime in async code would panic).
struct Runtimes(Vec<tokio::runtime::Runtime>);

impl Runtimes {
    fn new(count: usize) -> Self {
        Runtimes(
            sftpgate_server::connection_runtimes(
                count,
                "conn-test",
                sftpgate_server::DEFAULT_IDLE_SPIN,
            )
            .expect("runtimes"),
        )
    }

    fn handles(&self) -> Vec<tokio::runtime::Handle> {
        self.0.iter().map(|r| r.handle().clone()).collect()
    }

    fn alive_tasks(&self, i: usize) -> usize {
        self.0[i].metrics().num_alive_tasks()
    }
}

impl Drop for Runtimes {
    fn drop(&mut self) {
        for runtime in self.0.drain(..) {
            runtime.shutdown_background();
        }
    }
}

/// The threads each connection's events were recorded on: its `auth_completed`, and every
/// event of its SFTP sessions (factory, file closes, exit).
fn threads_by_connection(log: &EventLog) -> HashMap<ConnectionId, BTreeSet<String>> {
    let records = log.records();
    let sessions: HashMap<SessionId, ConnectionId> = records
        .iter()
        .filter_map(|r| match &r.event {
            Event::FactoryStart { conn, session, .. } => Some((*session, *conn)),
            _ => None,
        })
        .collect();
    let mut threads: HashMap<ConnectionId, BTreeSet<String>> = HashMap::new();
    for record in &records {
        let conn = match &record.event {
            Event::AuthCompletedStart { conn, .. } | Event::AuthCompletedEnd { conn, .. } => {
                Some(*conn)
            }
            event => event.session().and_then(|s| sessions.get(&s).copied()),
        };
        if let Some(conn) = conn {
            threads
                .entry(conn)
                .or_default()
                .insert(record.thread.clone().unwrap_or_else(|| "<unnamed>".into()));
        }
    }
    threads
}

fn on(name: &str) -> BTreeSet<String> {
    BTreeSet::from([name.to_owned()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_runs_wholly_on_the_least_busy_connection_runtime() {
    let runtimes = Runtimes::new(2);
    let mut server = TestServer::start(Options {
        connection_runtimes: runtimes.handles(),
        ..Options::default()
    })
    .await;

    // The first two connections, one on each runtime.
    let (first, mut first_sftp) = server.sftp_client().await;
    first_sftp.round_trip("/first").await;
    let (second, mut second_sftp) = server.sftp_client().await;
    second_sftp.round_trip("/second").await;
    let threads = threads_by_connection(&server.log);
    assert_eq!(threads.len(), 2, "{threads:?}");
    let mut placed: Vec<_> = threads.into_iter().collect();
    placed.sort_by_key(|(conn, _)| conn.0);
    assert_eq!(
        placed[0].1,
        on("conn-test-0"),
        "first connection: {placed:?}"
    );
    assert_eq!(
        placed[1].1,
        on("conn-test-1"),
        "second connection: {placed:?}"
    );
    let second_conn = placed[1].0;
    assert!(runtimes.alive_tasks(0) > 0 && runtimes.alive_tasks(1) > 0);

    // The second one leaves: its exit ran on its runtime, which is then empty.
    second.disconnect().await;
    server.log.wait_exits(1).await;
    poll_until(
        "the second runtime's tasks to end",
        || runtimes.alive_tasks(1) == 0,
        || format!("{} tasks alive", runtimes.alive_tasks(1)),
    )
    .await;
    drop(second_sftp);

    // The third goes where the second was, the runtime that serves none now (a tie would
    // have gone to the first).
    let (_third, mut third_sftp) = server.sftp_client().await;
    third_sftp.round_trip("/third").await;
    let threads = threads_by_connection(&server.log);
    assert_eq!(threads[&second_conn], on("conn-test-1"), "{threads:?}");
    let third_conn = threads
        .keys()
        .copied()
        .max_by_key(|c| c.0)
        .expect("three connections");
    assert_eq!(threads[&third_conn], on("conn-test-1"), "{threads:?}");

    // Shutdown drains sessions on connection runtimes as on one: each remaining exit once,
    // before `run` returns.
    server.stop().await;
    let exits = server.log.exits();
    assert_eq!(exits.len(), 3, "{exits:?}");
    assert_eq!(
        exits
            .iter()
            .filter(|(_, reason)| *reason == EndReason::Shutdown)
            .count(),
        2,
        "{exits:?}"
    );
    let threads = threads_by_connection(&server.log);
    assert_eq!(threads.len(), 3, "{threads:?}");
    assert!(
        threads
            .values()
            .all(|t| t.len() == 1 && t.iter().all(|name| name.starts_with("conn-test-"))),
        "every event of a connection on its one connection runtime: {threads:?}"
    );
    drop(first);
}
