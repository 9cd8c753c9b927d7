//! Faults, each against a private `nats-server -js` that the test stops and restarts: NATS
//! down before provisioning, NATS restarted mid-session, the server restarted with a
//! release pending or a session live, events published across an outage.

mod common;

use std::time::Duration;

use common::*;
use sftpgate_nats::async_nats::connection::State;
use sftpgate_nats::*;
use sftpgate_server::{Cleanup, EventSink, SftpFactory};
use sftpgate_vfs::{EndReason, Filesystem};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(15);

async fn wait_disconnected(client: &async_nats::Client) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while client.connection_state() == State::Connected {
        assert!(tokio::time::Instant::now() < deadline, "still connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn open_session(factory: &NatsFactory, session: u64) -> std::sync::Arc<dyn Filesystem> {
    let mut cleanup = Cleanup::default();
    let fs = factory
        .open(&context((), "alice", session), &mut cleanup)
        .await
        .expect("provisioned");
    drop(cleanup); // as the server does on success
    fs
}

#[tokio::test]
async fn nats_down_before_provisioning_is_a_clear_error() {
    let Some(mut nats) = NatsProcess::start().await else {
        return;
    };
    let fx = Fixture::new(&nats.url()).await;
    let (factory, outbox) = fx.factory().await;
    nats.stop().await;
    wait_disconnected(&fx.client).await;
    let mut cleanup = Cleanup::default();
    let error = factory
        .open(&context((), "alice", 1), &mut cleanup)
        .await
        .err()
        .expect("NATS is down");
    assert_eq!(
        error.message(),
        "storage provisioning is unavailable: the message bus cannot be reached"
    );
    assert!(cleanup.is_empty(), "nothing was allocated");
    assert_eq!(std::fs::read_dir(outbox.dir()).unwrap().count(), 0);
}

#[tokio::test]
async fn nats_restarted_mid_session_release_delivered_once_after_restart() {
    let Some(mut nats) = NatsProcess::start().await else {
        return;
    };
    let fx = Fixture::new(&nats.url()).await;
    let provisioner = fx.provisioner(Duration::ZERO).await;
    let (factory, outbox) = fx.factory().await;
    let stop = CancellationToken::new();
    tokio::spawn(outbox.run(stop.clone()));
    let fs = open_session(&factory, 1).await;

    nats.stop().await;
    wait_disconnected(&fx.client).await;
    // The exit does not wait for NATS: the release is kept in the outbox.
    tokio::time::timeout(Duration::from_secs(5), fs.exit(&EndReason::ClientEof))
        .await
        .expect("exit returns while NATS is down");
    let pending = outbox.pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].reason, "client_eof");
    let id = pending[0].allocation_id.clone();
    assert_eq!(provisioner.allocation(&id).unwrap().release_requests, 0);

    nats.restart().await;
    assert!(
        provisioner
            .wait_for(WAIT, |all| all[&id].releases == 1)
            .await,
        "released after NATS came back"
    );
    wait_outbox_empty(&outbox, WAIT).await;
    let record = provisioner.allocation(&id).unwrap();
    assert_eq!(record.releases, 1);
    assert_eq!(record.reason.as_deref(), Some("client_eof"));
    assert!(!record.dir.exists());
    stop.cancel();
}

#[tokio::test]
async fn nats_restarted_mid_session_release_at_exit() {
    let Some(mut nats) = NatsProcess::start().await else {
        return;
    };
    let fx = Fixture::new(&nats.url()).await;
    let provisioner = fx.provisioner(Duration::ZERO).await;
    let (factory, outbox) = fx.factory().await;
    let fs = open_session(&factory, 1).await;

    nats.restart().await;
    wait_state(&fx.client, State::Connected, WAIT).await;
    // The provisioner's subscriptions come back with its own reconnect; the exit retries
    // (no responders) until they are there.
    fs.exit(&EndReason::ClientClosed).await;
    assert!(
        provisioner
            .wait_for(WAIT, |all| all.values().all(|r| r.releases == 1))
            .await
    );
    wait_outbox_empty(&outbox, WAIT).await;
    let all = provisioner.allocations();
    assert_eq!(all.len(), 1);
    assert_eq!(all.values().next().unwrap().releases, 1);
}

#[tokio::test]
async fn server_restart_with_a_release_pending() {
    let Some(mut nats) = NatsProcess::start().await else {
        return;
    };
    let fx = Fixture::new(&nats.url()).await;
    let provisioner = fx.provisioner(Duration::ZERO).await;
    let id = {
        // The first server: provisions, loses NATS, ends the session, stops. Its outbox
        // task never ran.
        let (factory, outbox) = fx.factory().await;
        let fs = open_session(&factory, 1).await;
        nats.stop().await;
        wait_disconnected(&fx.client).await;
        fs.exit(&EndReason::Shutdown).await;
        let pending = outbox.pending().await.unwrap();
        assert_eq!(pending.len(), 1);
        pending[0].allocation_id.clone()
    };
    fx.client.clone().drain().await.ok();

    // The second server: a new client, a new outbox over the same directory.
    nats.restart().await;
    let client = connect(&fx.config).await.unwrap();
    assert!(wait_connected(&client, WAIT).await);
    let outbox = ReleaseOutbox::open(client, &fx.config).await.unwrap();
    assert_eq!(outbox.pending().await.unwrap().len(), 1);
    let stop = CancellationToken::new();
    tokio::spawn(outbox.run(stop.clone()));
    assert!(
        provisioner
            .wait_for(WAIT, |all| all[&id].releases == 1)
            .await
    );
    wait_outbox_empty(&outbox, WAIT).await;
    let record = provisioner.allocation(&id).unwrap();
    assert_eq!(record.releases, 1);
    assert_eq!(record.reason.as_deref(), Some("shutdown"));
    stop.cancel();
}

#[tokio::test]
async fn server_crash_with_a_live_session_releases_on_restart() {
    let Some(nats) = NatsProcess::start().await else {
        return;
    };
    let fx = Fixture::new(&nats.url()).await;
    let provisioner = fx.provisioner(Duration::ZERO).await;
    let (factory, _outbox) = fx.factory().await;
    let fs = open_session(&factory, 1).await;
    // A crash: neither the exit nor any destructor runs.
    std::mem::forget(fs);
    let id = provisioner.allocations().into_keys().next().unwrap();
    assert_eq!(provisioner.allocation(&id).unwrap().releases, 0);

    let outbox = ReleaseOutbox::open(fx.client.clone(), &fx.config)
        .await
        .unwrap();
    let pending = outbox.pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].reason, "server_restart");
    let stop = CancellationToken::new();
    tokio::spawn(outbox.run(stop.clone()));
    assert!(
        provisioner
            .wait_for(WAIT, |all| all[&id].releases == 1)
            .await
    );
    assert_eq!(
        provisioner.allocation(&id).unwrap().reason.as_deref(),
        Some("server_restart")
    );
    wait_outbox_empty(&outbox, WAIT).await;
    stop.cancel();
}

#[tokio::test]
async fn events_emitted_during_an_outage_arrive_after_it() {
    let Some(mut nats) = NatsProcess::start().await else {
        return;
    };
    let fx = Fixture::new(&nats.url()).await;
    let (sink, publisher) = event_channel(fx.client.clone(), &fx.config);
    publisher.ensure_stream().await.unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(publisher.run(stop.clone()));
    let connection = std::sync::Arc::new(connection(1, "alice"));
    let event = |session| sftpgate_server::Event::SessionStarted {
        connection: connection.clone(),
        session: sftpgate_server::SessionId(session),
    };
    sink.emit(event(1));
    read_events(&fx.client, &fx.config.events.stream, 1, WAIT).await;

    nats.stop().await;
    wait_disconnected(&fx.client).await;
    for session in 2..=5 {
        sink.emit(event(session));
    }
    nats.restart().await;
    wait_state(&fx.client, State::Connected, WAIT).await;
    let events = read_events(&fx.client, &fx.config.events.stream, 5, WAIT).await;
    let mut sessions: Vec<_> = events
        .iter()
        .map(|e| e["session_id"].as_str().unwrap().to_owned())
        .collect();
    sessions.sort();
    sessions.dedup();
    assert_eq!(sessions, ["s1", "s2", "s3", "s4", "s5"]);
    assert_eq!(sink.dropped(), 0);
    stop.cancel();
    tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
}
