//! A session provisioned over NATS onto a fresh prefix of a bucket (the `object_store`
//! backend) on the real S3 server `.ci/garage.sh` starts: the files land under the prefix,
//! and the release after exit is where the provisioner cleans the prefix up. Skipped with
//! the reason without NATS or `SFTPGATE_TEST_S3_*`; under `CI=true` both must be there.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::*;
use futures_util::{StreamExt as _, TryStreamExt as _};
use serde_json::json;
use sftpgate_fs_object::object_store::path::Path as Key;
use sftpgate_fs_object::object_store::{ObjectStore, ObjectStoreExt as _};
use sftpgate_fs_object::{ObjectConfig, ObjectFs, S3Settings};
use sftpgate_nats::wire::{ProvisionRequest, ReleaseRequest};
use sftpgate_nats::*;
use sftpgate_proto::{FileAttributes, OpenFlags};
use sftpgate_server::{Cleanup, SftpFactory};
use sftpgate_vfs::{EndReason, Filesystem, VPath};

fn s3() -> Option<(S3Settings, Arc<dyn ObjectStore>)> {
    let var = |name: &str| std::env::var(name).ok();
    let (Some(endpoint), Some(bucket), Some(access), Some(secret)) = (
        var("SFTPGATE_TEST_S3_ENDPOINT"),
        var("SFTPGATE_TEST_S3_BUCKET"),
        var("SFTPGATE_TEST_S3_ACCESS_KEY"),
        var("SFTPGATE_TEST_S3_SECRET_KEY"),
    ) else {
        assert!(
            !under_ci(),
            "SFTPGATE_TEST_S3_* must be set under CI=true (.ci/garage.sh start)"
        );
        eprintln!("skipping: no S3 server: SFTPGATE_TEST_S3_* is not set");
        return None;
    };
    let region = var("SFTPGATE_TEST_S3_REGION").unwrap_or_else(|| "garage".into());
    let settings = S3Settings::new(Some(endpoint), &region, &bucket, &access, &secret);
    let store = settings.build().expect("S3 store");
    Some((settings, store))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioned_prefix_holds_the_files_and_release_cleans_it() {
    let Some(url) = shared_nats().await else {
        return;
    };
    let Some((settings, store)) = s3() else {
        return;
    };
    let fx = Fixture::new(&url).await;
    let root = format!("nats-test/{}", unique_prefix());

    // The provisioner: a fresh prefix per allocation; on release, delete its keys.
    let mut provisions = fx
        .client
        .subscribe(fx.config.subjects().provision())
        .await
        .unwrap();
    let mut releases = fx
        .client
        .subscribe(fx.config.subjects().release())
        .await
        .unwrap();
    fx.client.flush().await.unwrap();
    let (client, bucket, prefix_root) = (fx.client.clone(), settings.bucket.clone(), root.clone());
    tokio::spawn(async move {
        while let Some(message) = provisions.next().await {
            let request: ProvisionRequest = serde_json::from_slice(&message.payload).unwrap();
            let reply = json!({"status": "ready", "backend": {
                "kind": "object_store",
                "bucket": bucket,
                "prefix": format!("{prefix_root}/{}", request.allocation_id),
            }});
            let _ = client
                .publish(message.reply.unwrap(), reply.to_string().into())
                .await;
        }
    });
    let (client, cleaner, prefix_root) = (fx.client.clone(), store.clone(), root.clone());
    let released = tokio::spawn(async move {
        let message = releases.next().await.expect("a release");
        let request: ReleaseRequest = serde_json::from_slice(&message.payload).unwrap();
        let prefix = Key::parse(format!("{prefix_root}/{}", request.allocation_id)).unwrap();
        let keys: Vec<_> = cleaner.list(Some(&prefix)).try_collect().await.unwrap();
        for meta in &keys {
            cleaner.delete(&meta.location).await.unwrap();
        }
        client
            .publish(
                message.reply.unwrap(),
                json!({"status": "released"}).to_string().into(),
            )
            .await
            .unwrap();
        (request, keys.len())
    });

    // The binary's builder, reduced to the object store.
    let outbox = fx.outbox().await;
    let build_store = store.clone();
    let factory = NatsFactory::new(
        fx.client.clone(),
        &fx.config,
        outbox.clone(),
        move |backend: Backend| {
            let store = build_store.clone();
            async move {
                match backend {
                    Backend::ObjectStore { prefix, .. } => {
                        Ok(
                            Arc::new(ObjectFs::new(store, &prefix, ObjectConfig::default())?)
                                as Arc<dyn Filesystem>,
                        )
                    }
                    other => Err(format!("unexpected {other:?}").into()),
                }
            }
        },
    );
    let mut cleanup = Cleanup::default();
    let fs = factory
        .open(&context((), "alice", 3), &mut cleanup)
        .await
        .unwrap();
    let file = fs
        .open(
            &VPath::parse(b"/report.txt").unwrap(),
            OpenFlags::WRITE | OpenFlags::CREAT | OpenFlags::TRUNC,
            &FileAttributes::default(),
        )
        .await
        .unwrap();
    file.write(0, Bytes::from_static(b"quarterly"))
        .await
        .unwrap();
    file.close().await.unwrap();

    // Under the provisioned prefix, and only there.
    let under_root: Vec<String> = store
        .list(Some(&Key::parse(&root).unwrap()))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap();
    assert_eq!(under_root.len(), 1, "{under_root:?}");
    assert!(under_root[0].starts_with(&format!("{root}/")));
    assert!(under_root[0].ends_with("/report.txt"));
    let body = store
        .get(&Key::parse(&under_root[0]).unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&body[..], b"quarterly");

    drop(cleanup);
    fs.exit(&EndReason::ClientEof).await;
    let (request, deleted) = tokio::time::timeout(std::time::Duration::from_secs(10), released)
        .await
        .expect("released in time")
        .unwrap();
    assert_eq!(request.reason, "client_eof");
    assert_eq!(deleted, 1);
    let left: Vec<_> = store
        .list(Some(&Key::parse(&root).unwrap()))
        .try_collect()
        .await
        .unwrap();
    assert!(left.is_empty(), "the release cleaned the prefix: {left:?}");
}
