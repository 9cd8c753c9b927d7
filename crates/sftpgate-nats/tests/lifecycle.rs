//! The hooks and the factory against the machine's NATS, driven directly through the
//! server's traits (no SSH): auth, provisioning (ready, accepted, slow, refused, invalid,
//! cancelled), release exactly once, 50 sessions at once.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use futures_util::StreamExt as _;
use serde_json::json;
use sftpgate_nats::wire::{AuthRequest, ReleaseReply, ReleaseRequest};
use sftpgate_nats::*;
use sftpgate_proto::{FileAttributes, OpenFlags};
use sftpgate_server::{Cleanup, Hooks, SftpFactory};
use sftpgate_vfs::{EndReason, Filesystem, ReadPart, VPath};

const WAIT: Duration = Duration::from_secs(10);

/// Answers `<prefix>.auth`: bob is refused, everyone else accepted with a tenant.
async fn auth_service(fx: &Fixture) -> tokio::task::JoinHandle<Vec<AuthRequest>> {
    let mut requests = fx
        .client
        .subscribe(fx.config.subjects().auth())
        .await
        .unwrap();
    fx.client.flush().await.unwrap();
    let client = fx.client.clone();
    tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Some(message) = requests.next().await {
            let request: AuthRequest = serde_json::from_slice(&message.payload).unwrap();
            let reply = if request.user == "bob" {
                json!({"status":"refused","reason":"bob is on holiday"})
            } else {
                json!({"status":"accepted","metadata":{"tenant":"acme","quota_gb":5}})
            };
            client
                .publish(message.reply.unwrap(), reply.to_string().into())
                .await
                .unwrap();
            seen.push(request);
            if seen.len() == 2 {
                return seen;
            }
        }
        seen
    })
}

#[tokio::test]
async fn auth_accepts_with_metadata_and_refuses_with_reason() {
    let Some(url) = shared_nats().await else {
        return;
    };
    let fx = Fixture::new(&url).await;
    let service = auth_service(&fx).await;
    let hooks = NatsHooks::new(fx.client.clone(), &fx.config);

    let state = hooks.auth_completed(&connection(1, "alice")).await.unwrap();
    assert_eq!(state.0["tenant"], json!("acme"));
    assert_eq!(state.0["quota_gb"], json!(5));

    let refused = hooks
        .auth_completed(&connection(2, "bob"))
        .await
        .unwrap_err();
    assert_eq!(refused.message(), "bob is on holiday");

    let seen = tokio::time::timeout(WAIT, service).await.unwrap().unwrap();
    assert_eq!(
        seen[0],
        AuthRequest {
            version: 1,
            connection_id: "c1".into(),
            user: "alice".into(),
            peer: "127.0.0.1:40000".into(),
            method: "password".into(),
            key_fingerprint: None,
        }
    );
}

#[tokio::test]
async fn auth_without_responder_refuses_by_default() {
    let Some(url) = shared_nats().await else {
        return;
    };
    let fx = Fixture::new(&url).await;
    let hooks = NatsHooks::new(fx.client.clone(), &fx.config);
    let error = hooks
        .auth_completed(&connection(1, "alice"))
        .await
        .unwrap_err();
    assert_eq!(
        error.message(),
        "authorisation service unavailable, try again later"
    );
    let source = std::error::Error::source(&error).unwrap().to_string();
    assert!(source.contains("no responders"), "{source}");
}

#[tokio::test]
async fn auth_without_responder_continues_when_configured() {
    let Some(url) = shared_nats().await else {
        return;
    };
    let mut fx = Fixture::new(&url).await;
    fx.config.auth.on_unavailable = OnUnavailable::Continue;
    let hooks = NatsHooks::new(fx.client.clone(), &fx.config);
    let state = hooks.auth_completed(&connection(1, "alice")).await.unwrap();
    assert_eq!(state, AuthMetadata::default());
}

#[tokio::test]
async fn auth_timeout_is_unavailable() {
    let Some(url) = shared_nats().await else {
        return;
    };
    let fx = Fixture::new(&url).await;
    // Subscribed but silent: the request times out.
    let _silent = fx
        .client
        .subscribe(fx.config.subjects().auth())
        .await
        .unwrap();
    fx.client.flush().await.unwrap();
    let hooks = NatsHooks::new(fx.client.clone(), &fx.config);
    let error = hooks
        .auth_completed(&connection(1, "alice"))
        .await
        .unwrap_err();
    let source = std::error::Error::source(&error).unwrap().to_string();
    assert!(source.contains("within 500ms"), "{source}");
}

#[tokio::test]
async fn auth_disabled_asks_nobody() {
    let Some(url) = shared_nats().await else {
        return;
    };
    let mut fx = Fixture::new(&url).await;
    fx.config.auth.enabled = false;
    let hooks = NatsHooks::new(fx.client.clone(), &fx.config);
    // No responder exists; a request would fail under the default `refuse`.
    let state = hooks.auth_completed(&connection(1, "alice")).await.unwrap();
    assert_eq!(state, AuthMetadata::default());
}

async fn write_file(fs: &dyn Filesystem, name: &str, data: &'static [u8]) {
    let path = VPath::parse(name.as_bytes()).unwrap();
    let flags = OpenFlags::WRITE | OpenFlags::CREAT | OpenFlags::TRUNC;
    let file = fs
        .open(&path, flags, &FileAttributes::default())
        .await
        .unwrap();
    file.write(0, Bytes::from_static(data)).await.unwrap();
    file.close().await.unwrap();
}

fn only(provisioner: &ReferenceProvisioner) -> (String, AllocationRecord) {
    let all = provisioner.allocations();
    assert_eq!(all.len(), 1, "{all:?}");
    all.into_iter().next().unwrap()
}

#[tokio::test]
async fn ready_at_once_serves_then_releases_exactly_once() {
    let Some(url) = shared_nats().await else {
        return;
    };
    let fx = Fixture::new(&url).await;
    let provisioner = fx.provisioner(Duration::ZERO).await;
    let (factory, outbox) = fx.factory().await;
    let mut metadata = serde_json::Map::new();
    metadata.insert("tenant".into(), json!("acme"));
    let ctx = context(AuthMetadata(metadata.clone()), "alice", 7);

    let mut cleanup = Cleanup::default();
    let fs = factory.open(&ctx, &mut cleanup).await.unwrap();
    let (id, record) = only(&provisioner);
    assert_eq!((record.provisions, record.ready), (1, true));
    assert_eq!(record.user, "alice");
    assert_eq!(record.metadata, metadata);

    write_file(fs.as_ref(), "/hello.txt", b"hello").await;
    let on_disk = std::fs::read(fx.volumes().join(&id).join("hello.txt")).unwrap();
    assert_eq!(on_disk, b"hello");
    // Bytes read count in the release's statistics, read whole or into a reply's packets.
    let path = VPath::parse(b"/hello.txt").unwrap();
    let file = fs
        .open(&path, OpenFlags::READ, &FileAttributes::default())
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    assert_eq!(file.read(0, 2, &mut buf).await.unwrap(), 2);
    let mut parts = vec![
        ReadPart::new(BytesMut::new(), 2),
        ReadPart::new(BytesMut::new(), 10),
    ];
    assert_eq!(file.read_parts(1, &mut parts).await.unwrap(), 4);
    assert_eq!(
        (&parts[0].buf[..], &parts[1].buf[..]),
        (&b"el"[..], &b"lo"[..])
    );
    file.close().await.unwrap();
    // While the session lives, its allocation is held (not pending).
    assert!(outbox.pending().await.unwrap().is_empty());
    assert!(outbox.dir().join(format!("{id}.json")).exists());

    drop(cleanup); // what the server does on success (disarm): nothing may run
    fs.exit(&EndReason::ClientEof).await;
    fs.exit(&EndReason::ClientEof).await; // a second exit sends nothing
    let record = provisioner.allocation(&id).unwrap();
    assert_eq!((record.releases, record.release_requests), (1, 1));
    assert_eq!(record.reason.as_deref(), Some("client_eof"));
    let stats = record.stats.unwrap();
    assert_eq!((stats.bytes_in, stats.bytes_out), (5, 6));
    assert!(!fx.volumes().join(&id).exists(), "the volume is removed");
    assert!(!outbox.dir().join(format!("{id}.json")).exists());
}

#[tokio::test]
async fn accepted_then_ready_later() {
    let Some(url) = shared_nats().await else {
        return;
    };
    let fx = Fixture::new(&url).await;
    let provisioner = fx.provisioner(Duration::from_millis(300)).await;
    let (factory, _outbox) = fx.factory().await;
    let mut cleanup = Cleanup::default();
    let fs = factory
        .open(&context((), "alice", 1), &mut cleanup)
        .await
        .unwrap();
    let (id, record) = only(&provisioner);
    assert_eq!((record.provision_requests, record.provisions), (1, 1));
    assert!(record.ready);
    write_file(fs.as_ref(), "/a", b"x").await;
    assert!(fx.volumes().join(&id).join("a").exists());
    drop(cleanup);
    fs.exit(&EndReason::ClientClosed).await;
    let record = provisioner.allocation(&id).unwrap();
    assert_eq!(record.releases, 1);
    assert_eq!(record.reason.as_deref(), Some("client_closed"));
}

#[tokio::test]
async fn provisioner_slower_than_the_timeout() {
    let Some(url) = shared_nats().await else {
        return;
    };
    let mut fx = Fixture::new(&url).await;
    fx.config.provision.timeout = Duration::from_millis(500);
    let provisioner = fx.provisioner(Duration::from_millis(1500)).await;
    let (factory, _outbox) = fx.factory().await;
    let mut cleanup = Cleanup::default();
    let error = factory
        .open(&context((), "alice", 1), &mut cleanup)
        .await
        .err()
        .expect("a timeout");
    assert_eq!(
        error.message(),
        "storage provisioning timed out: not ready within 500ms"
    );
    // The server runs the cleanups of a failed factory: the allocation is released.
    assert_eq!(cleanup.len(), 1);
    cleanup.run().await;
    let (id, record) = only(&provisioner);
    assert_eq!((record.provisions, record.releases), (1, 1));
    assert_eq!(record.reason.as_deref(), Some("provision_timeout"));
    // When the provisioner finishes it finds the tombstone and creates nothing.
    assert!(provisioner.wait_for(WAIT, |all| all[&id].settled).await);
    let record = provisioner.allocation(&id).unwrap();
    assert!(!record.ready);
    assert!(!record.dir.exists());
}

#[tokio::test]
async fn refused_allocates_and_releases_nothing() {
    let Some(url) = shared_nats().await else {
        return;
    };
    let fx = Fixture::new(&url).await;
    let provisioner = fx.provisioner(Duration::ZERO).await;
    provisioner.set_refuse(Some("quota exceeded".into()));
    let (factory, outbox) = fx.factory().await;
    let mut cleanup = Cleanup::default();
    let error = factory
        .open(&context((), "alice", 1), &mut cleanup)
        .await
        .err()
        .expect("refused");
    assert_eq!(
        error.message(),
        "storage provisioning refused: quota exceeded"
    );
    cleanup.run().await;
    let (_, record) = only(&provisioner);
    assert_eq!(
        (record.provisions, record.release_requests),
        (0, 0),
        "{record:?}"
    );
    assert_eq!(std::fs::read_dir(outbox.dir()).unwrap().count(), 0);
}

#[tokio::test]
async fn no_provisioner_is_a_clear_error_and_nothing_to_release() {
    let Some(url) = shared_nats().await else {
        return;
    };
    let fx = Fixture::new(&url).await;
    let (factory, outbox) = fx.factory().await;
    let mut cleanup = Cleanup::default();
    let error = factory
        .open(&context((), "alice", 1), &mut cleanup)
        .await
        .err()
        .expect("no provisioner");
    assert_eq!(
        error.message(),
        "storage provisioning is unavailable: no provisioner is answering"
    );
    cleanup.run().await;
    assert_eq!(std::fs::read_dir(outbox.dir()).unwrap().count(), 0);
}

#[tokio::test]
async fn unknown_backend_kind_is_refused_clearly_and_released() {
    let Some(url) = shared_nats().await else {
        return;
    };
    let fx = Fixture::new(&url).await;
    let mut requests = fx
        .client
        .subscribe(fx.config.subjects().provision())
        .await
        .unwrap();
    fx.client.flush().await.unwrap();
    let client = fx.client.clone();
    tokio::spawn(async move {
        while let Some(message) = requests.next().await {
            let reply = json!({"status":"ready","backend":{"kind":"s3","bucket":"b"}});
            let _ = client
                .publish(message.reply.unwrap(), reply.to_string().into())
                .await;
        }
    });
    let (factory, outbox) = fx.factory().await;
    let mut cleanup = Cleanup::default();
    let error = factory
        .open(&context((), "alice", 1), &mut cleanup)
        .await
        .err()
        .expect("unsupported kind");
    assert_eq!(
        error.message(),
        "storage provisioning failed: invalid answer from the provisioner: \
         unsupported backend kind \"s3\" (this server supports: local, object_store)"
    );
    // It may exist: released. Nobody answers releases here, so it waits in the outbox.
    cleanup.run().await;
    let pending = outbox.pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].reason, "provision_failed");
}

#[tokio::test]
async fn cancelled_factory_still_releases() {
    let Some(url) = shared_nats().await else {
        return;
    };
    let fx = Fixture::new(&url).await;
    let provisioner = fx.provisioner(Duration::from_secs(30)).await;
    let (factory, _outbox) = fx.factory().await;
    let mut cleanup = Cleanup::default();
    let ctx = context((), "alice", 1);
    // The client leaves while the factory awaits readiness: the server drops the future.
    let mut open = Box::pin(factory.open(&ctx, &mut cleanup));
    tokio::select! {
        _ = &mut open => panic!("ready before the delay"),
        true = provisioner.wait_for(WAIT, |all| all.values().any(|r| r.provisions == 1)) => {}
    }
    drop(open);
    cleanup.run().await;
    let (_, record) = only(&provisioner);
    assert_eq!(record.releases, 1);
    assert_eq!(record.reason.as_deref(), Some("provision_cancelled"));
}

#[tokio::test]
async fn release_is_retried_until_acknowledged() {
    let Some(url) = shared_nats().await else {
        return;
    };
    let fx = Fixture::new(&url).await;
    let provisioner = fx.provisioner(Duration::ZERO).await;
    let (factory, outbox) = fx.factory().await;
    let mut cleanup = Cleanup::default();
    let fs = factory
        .open(&context((), "alice", 1), &mut cleanup)
        .await
        .unwrap();
    drop(cleanup);
    provisioner.fail_next_releases(2);
    fs.exit(&EndReason::IdleTimeout).await;
    let (_, record) = only(&provisioner);
    assert_eq!((record.release_requests, record.releases), (3, 1));
    assert!(outbox.pending().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_repeated_release_is_not_a_second_release() {
    let Some(url) = shared_nats().await else {
        return;
    };
    let fx = Fixture::new(&url).await;
    let provisioner = fx.provisioner(Duration::ZERO).await;
    let request = ReleaseRequest {
        version: 1,
        allocation_id: "0123456789abcdef".into(),
        idempotency_key: "0123456789abcdef.release".into(),
        reason: "client_eof".into(),
        reason_detail: String::new(),
        connection_id: "c1".into(),
        session_id: "s1".into(),
        user: "alice".into(),
        stats: None,
        time: "2030-01-01T00:00:00Z".into(),
    };
    let subject = fx.config.subjects().release();
    let mut replies = Vec::new();
    for _ in 0..3 {
        // The provisioner's subscription is on another connection: under load the first
        // request can reach the server before it knows of it ("no responders"). Retry that,
        // boundedly; any other error fails the test.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let reply = loop {
            let payload = serde_json::to_vec(&request).unwrap();
            match fx.client.request(subject.clone(), payload.into()).await {
                Ok(reply) => break reply,
                Err(e)
                    if e.kind() == async_nats::RequestErrorKind::NoResponders
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("release request failed: {e}"),
            }
        };
        replies.push(serde_json::from_slice::<ReleaseReply>(&reply.payload).unwrap());
    }
    assert_eq!(
        replies,
        [
            ReleaseReply::Released,
            ReleaseReply::AlreadyReleased,
            ReleaseReply::AlreadyReleased
        ]
    );
    let record = provisioner.allocation("0123456789abcdef").unwrap();
    assert_eq!((record.release_requests, record.releases), (3, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_sessions_each_provisioned_and_released_once() {
    let Some(url) = shared_nats().await else {
        return;
    };
    let fx = Fixture::new(&url).await;
    let provisioner = fx.provisioner(Duration::from_millis(50)).await;
    let (factory, outbox) = fx.factory().await;
    let factory = Arc::new(factory);
    let mut sessions = tokio::task::JoinSet::new();
    for i in 0..50u64 {
        let factory = factory.clone();
        sessions.spawn(async move {
            let ctx = context((), &format!("user{i}"), i);
            let mut cleanup = Cleanup::default();
            let fs = factory.open(&ctx, &mut cleanup).await.expect("provisioned");
            drop(cleanup);
            write_file(fs.as_ref(), "/data", b"fifty").await;
            fs.exit(&EndReason::ClientEof).await;
        });
    }
    let all_done = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(result) = sessions.join_next().await {
            result.expect("session task");
        }
    })
    .await;
    assert!(all_done.is_ok(), "50 sessions did not finish in 30 s");
    let all = provisioner.allocations();
    assert_eq!(all.len(), 50);
    for (id, record) in &all {
        assert_eq!(
            (
                record.provision_requests,
                record.provisions,
                record.releases,
                record.release_requests
            ),
            (1, 1, 1, 1),
            "{id}: {record:?}"
        );
        assert_eq!(record.stats.unwrap().bytes_in, 5);
    }
    let users: std::collections::HashSet<_> = all.values().map(|r| r.user.clone()).collect();
    assert_eq!(users.len(), 50);
    assert!(outbox.pending().await.unwrap().is_empty());
    assert_eq!(std::fs::read_dir(fx.volumes()).unwrap().count(), 0);
}
