//! End to end on object storage: `sftpgate serve` with a user whose storage is a key prefix
//! of the Garage bucket `.ci/garage.sh` starts (`SFTPGATE_TEST_S3_*`), driven by OpenSSH's
//! `sftp` and by rclone. Without those variables the tests print why and skip; under
//! `CI=true` they fail.
//!
//! Sizes are for debug builds, where SSH crypto is slow: 64 MiB, 300 small files, 2,500
//! keys in one listing. The 1 GiB run and the throughput comparison are `bench/object.sh`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_same_file, pseudo_random, Fixture, Server, SSH_OPTIONS, USER};
use sftpgate_fs_object::object_store::path::Path as Key;
use sftpgate_fs_object::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sftpgate_fs_object::S3Settings;

/// The Garage the tests use, or `None` after saying why.
struct S3 {
    settings: S3Settings,
    store: Arc<dyn ObjectStore>,
    /// This test's key prefix (the user's root).
    prefix: String,
    rt: tokio::runtime::Runtime,
}

impl S3 {
    fn new(test: &str) -> Option<S3> {
        let var = |name: &str| std::env::var(name).ok();
        let (Some(endpoint), Some(bucket), Some(access), Some(secret)) = (
            var("SFTPGATE_TEST_S3_ENDPOINT"),
            var("SFTPGATE_TEST_S3_BUCKET"),
            var("SFTPGATE_TEST_S3_ACCESS_KEY"),
            var("SFTPGATE_TEST_S3_SECRET_KEY"),
        ) else {
            let why = "SFTPGATE_TEST_S3_* is not set (run .ci/garage.sh start)";
            if var("CI").as_deref() == Some("true") {
                panic!("object storage tests must run under CI=true: {why}");
            }
            eprintln!("skipping: no S3 server: {why}");
            return None;
        };
        let region = var("SFTPGATE_TEST_S3_REGION").unwrap_or_else(|| "garage".into());
        let settings = S3Settings::new(Some(endpoint), &region, &bucket, &access, &secret);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        let store = {
            let _guard = rt.enter();
            settings.build().expect("the S3 store")
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_nanos();
        Some(S3 {
            settings,
            store,
            prefix: format!("e2e/{test}-{}-{nanos}", std::process::id()),
            rt,
        })
    }

    /// `[s3]` for the server's config file.
    fn config(&self, fx: &Fixture) -> std::path::PathBuf {
        let s = &self.settings;
        fx.write(
            "sftpgate.toml",
            &format!(
                "[s3]\nendpoint = {:?}\nregion = {:?}\naccess_key_id = {:?}\nsecret_access_key = {:?}\n",
                s.endpoint.as_deref().unwrap_or_default(),
                s.region,
                s.access_key_id,
                s.secret_access_key
            ),
        )
    }

    /// A server whose user `alice` lives at this test's prefix.
    fn start(&self, fx: &Fixture) -> Server {
        fx.add_user(USER);
        let location = format!("s3://{}/{}", self.settings.bucket, self.prefix);
        fx.cli_ok(&["user", "set-storage", USER, &location]);
        fx.start_server(Some(&self.config(fx)))
    }

    fn key(&self, path: &str) -> Key {
        Key::parse(format!("{}/{path}", self.prefix)).expect("a key")
    }

    fn get(&self, path: &str) -> Option<Vec<u8>> {
        self.rt.block_on(async {
            match self.store.get(&self.key(path)).await {
                Ok(r) => Some(r.bytes().await.expect("object body").to_vec()),
                Err(sftpgate_fs_object::object_store::Error::NotFound { .. }) => None,
                Err(e) => panic!("GET {path}: {e}"),
            }
        })
    }

    /// Multipart uploads in progress below the prefix (rclone's view of the server);
    /// `None` when rclone is missing outside CI.
    fn uploads(&self) -> Option<Vec<String>> {
        if !common::require(&["rclone"]) {
            return None;
        }
        let s = &self.settings;
        let out = Command::new("rclone")
            .args(["backend", "list-multipart-uploads"])
            // A CA bundle set for the machine's proxy breaks rclone's S3 client (and the
            // endpoint is plain HTTP on loopback anyway).
            .env_remove("AWS_CA_BUNDLE")
            .arg(format!("garage:{}", s.bucket))
            .envs(rclone_s3_env(s))
            .output()
            .expect("running rclone");
        assert!(
            out.status.success(),
            "rclone: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        Some(
            text.split("\"Key\":")
                .skip(1)
                .filter_map(|rest| rest.trim_start().strip_prefix('"'))
                .filter_map(|rest| rest.split('"').next())
                .filter(|key| key.starts_with(&self.prefix))
                .map(str::to_owned)
                .collect(),
        )
    }
}

fn rclone_s3_env(s: &S3Settings) -> Vec<(String, String)> {
    [
        ("RCLONE_CONFIG_GARAGE_TYPE", "s3"),
        ("RCLONE_CONFIG_GARAGE_PROVIDER", "Other"),
        (
            "RCLONE_CONFIG_GARAGE_ENDPOINT",
            s.endpoint.as_deref().unwrap_or_default(),
        ),
        ("RCLONE_CONFIG_GARAGE_REGION", &s.region),
        ("RCLONE_CONFIG_GARAGE_ACCESS_KEY_ID", &s.access_key_id),
        (
            "RCLONE_CONFIG_GARAGE_SECRET_ACCESS_KEY",
            &s.secret_access_key,
        ),
        ("RCLONE_CONFIG_GARAGE_FORCE_PATH_STYLE", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[test]
fn upload_download_rename_with_openssh() {
    let Some(s3) = S3::new("openssh") else { return };
    let Some(fx) = Fixture::new() else { return };
    let server = s3.start(&fx);
    let local = fx.local();
    let data = pseudo_random(64 << 20, 0x0b1e_c75a_11ce_5eed);
    std::fs::write(local.join("big.bin"), &data).unwrap();

    let started = Instant::now();
    let out = fx.sftp(&server, USER, "put big.bin\nget big.bin back.bin\n");
    assert!(out.status.success(), "the transfer failed\n{}", out.show());
    eprintln!("64 MiB up and down: {:?}", started.elapsed());
    assert_same_file(&local.join("big.bin"), &local.join("back.bin"));
    assert!(
        s3.get("big.bin").expect("the object") == data,
        "stored bytes"
    );
    drop(data);

    // A tree of small files, renames of a file and of a directory.
    let tree = local.join("tree");
    for d in 0..10 {
        std::fs::create_dir_all(tree.join(format!("d{d}"))).unwrap();
        for f in 0..30 {
            let body = format!("file {d}/{f}\n").repeat(f + 1);
            std::fs::write(tree.join(format!("d{d}/f{f}.txt")), body).unwrap();
        }
    }
    let started = Instant::now();
    let out = fx.sftp(
        &server,
        USER,
        "put -r tree\nrename tree/d0/f0.txt tree/d0/renamed.txt\nrename tree/d1 tree/moved\n\
         mkdir empty\nls -1 tree\nget -r tree tree-back\nrmdir empty\n",
    );
    assert!(out.status.success(), "the tree failed\n{}", out.show());
    eprintln!("300 small files up, renamed, down: {:?}", started.elapsed());
    let back = local.join("tree-back");
    assert_same_file(&tree.join("d0/f0.txt"), &back.join("d0/renamed.txt"));
    assert!(!back.join("d0/f0.txt").exists(), "the old name remains");
    assert!(!back.join("d1").exists(), "the old directory remains");
    for f in 0..30 {
        let name = format!("f{f}.txt");
        assert_same_file(
            &tree.join("d1").join(&name),
            &back.join("moved").join(&name),
        );
        assert_same_file(&tree.join("d9").join(&name), &back.join("d9").join(&name));
    }
    assert!(s3.get("tree/moved/f3.txt").is_some(), "renamed key");
    assert!(s3.get("tree/d1/f3.txt").is_none(), "old key left behind");
    if let Some(uploads) = s3.uploads() {
        assert!(uploads.is_empty(), "orphaned uploads: {uploads:?}");
    }
}

#[test]
fn large_listing_is_paginated() {
    const COUNT: usize = 2_500;
    let Some(s3) = S3::new("listing") else { return };
    let Some(fx) = Fixture::new() else { return };
    let server = s3.start(&fx);
    // Keys written straight to the bucket (faster than 2,500 uploads over SSH): more than
    // two pages of S3's 1,000 keys.
    s3.rt.block_on(async {
        use futures_util::StreamExt as _;
        futures_util::stream::iter(0..COUNT)
            .map(|i| {
                let store = s3.store.clone();
                let key = s3.key(&format!("many/entry-{i:05}"));
                async move { store.put(&key, PutPayload::from_static(b"x")).await }
            })
            .buffer_unordered(32)
            .for_each(|r| async move {
                r.expect("put");
            })
            .await;
    });
    let out = fx.sftp(&server, USER, "ls -1 many\n");
    assert!(out.status.success(), "ls failed\n{}", out.show());
    let names: std::collections::BTreeSet<&str> = out
        .stdout
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("many/").or(Some(l)))
        .filter(|l| l.starts_with("entry-"))
        .collect();
    assert_eq!(names.len(), COUNT, "entries listed");
}

#[test]
fn killed_client_leaves_no_object_and_no_upload() {
    let Some(s3) = S3::new("killed") else { return };
    let Some(fx) = Fixture::new() else { return };
    if !common::require(&["rclone"]) {
        return;
    }
    let server = s3.start(&fx);
    let local = fx.local();
    // Large enough that the client is still sending when killed.
    std::fs::write(local.join("huge.bin"), pseudo_random(256 << 20, 7)).unwrap();
    let batch = fx.write("put.batch", "put huge.bin\n");
    let mut client = Command::new("sftp")
        .current_dir(&local)
        .env_remove("SSH_AUTH_SOCK")
        .args(SSH_OPTIONS)
        .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-i"])
        .arg(&fx.key)
        .arg("-P")
        .arg(server.port.to_string())
        .arg("-b")
        .arg(&batch)
        .arg(format!("{USER}@127.0.0.1"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting sftp");
    // Wait until the upload is under way on the S3 server (its first part went out).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if s3.uploads().is_some_and(|u| !u.is_empty()) {
            break;
        }
        assert!(
            client.try_wait().expect("sftp status").is_none(),
            "the client finished before it could be killed"
        );
        assert!(Instant::now() < deadline, "no multipart upload appeared");
        std::thread::sleep(Duration::from_millis(200));
    }
    client.kill().expect("killing sftp");
    client.wait().expect("reaping sftp");

    // The session ends on the TCP drop; its handle is abandoned and the upload aborted.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let uploads = s3.uploads().expect("rclone present");
        if uploads.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orphaned multipart upload after the session ended: {uploads:?}\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        s3.get("huge.bin").is_none(),
        "a half-written object is visible"
    );
}

#[test]
fn rclone_copies_a_tree_through_sftpgate() {
    let Some(s3) = S3::new("rclone") else { return };
    let Some(fx) = Fixture::new() else { return };
    if !common::require(&["rclone"]) {
        return;
    }
    let server = s3.start(&fx);
    let local = fx.local();
    let tree = local.join("rtree");
    for f in 0..40 {
        let dir = tree.join(format!("d{}", f % 4));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("f{f}")),
            pseudo_random(1000 * f + 1, f as u64),
        )
        .unwrap();
    }
    std::fs::write(tree.join("big"), pseudo_random(12 << 20, 99)).unwrap();
    let rclone = |args: &[&str]| {
        let out = Command::new("rclone")
            .args(args)
            .env("RCLONE_CONFIG_SG_TYPE", "sftp")
            .env("RCLONE_CONFIG_SG_HOST", "127.0.0.1")
            .env("RCLONE_CONFIG_SG_PORT", server.port.to_string())
            .env("RCLONE_CONFIG_SG_USER", USER)
            .env("RCLONE_CONFIG_SG_KEY_FILE", &fx.key)
            // Object storage keeps no times: SETSTAT of them is OP_UNSUPPORTED.
            .env("RCLONE_CONFIG_SG_SET_MODTIME", "false")
            .env("RCLONE_CONFIG_SG_KNOWN_HOSTS_FILE", "")
            .env("RCLONE_CONFIG_SG_DISABLE_HASHCHECK", "true")
            .env("RCLONE_CONFIG_SG_SHELL_TYPE", "none")
            .output()
            .expect("running rclone");
        assert!(
            out.status.success(),
            "rclone {args:?} failed\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            server.stderr()
        );
    };
    let started = Instant::now();
    rclone(&["copy", path(&tree), "sg:rtree"]);
    rclone(&["copy", "sg:rtree", path(&local.join("rback"))]);
    eprintln!("rclone: 41 files up and down: {:?}", started.elapsed());
    for f in 0..40 {
        let rel = format!("d{}/f{f}", f % 4);
        assert_same_file(&tree.join(&rel), &local.join("rback").join(&rel));
    }
    assert_same_file(&tree.join("big"), &local.join("rback/big"));
    assert!(
        s3.get("rtree/big").is_some(),
        "stored under the user's prefix"
    );
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}
