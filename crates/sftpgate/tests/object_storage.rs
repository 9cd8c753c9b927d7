//! End to end on object storage: `sftpgate serve` with a user whose storage is a key prefix
//! of the Garage bucket `.ci/garage.sh` starts (`SFTPGATE_TEST_S3_*`), driven by OpenSSH's
//! `sftp` and by rclone. Without those variables the tests print why and skip; under
//! `CI=true` they fail.
//!
//! Sizes are the issue's: a 1 GiB file up and down (compared byte for byte, and the stored
//! object streamed back and compared), a tree of 2,000 small files, a listing of 10,000
//! entries (ten pages of S3's LIST). Debug builds move data fast enough for that: russh's
//! aes128-gcm is aws-lc-rs and chacha20-poly1305 OpenSSL's libcrypto (crates/sftpgate-chacha),
//! C and assembly, fast at any opt-level;
//! on the shared 2-core machine the 1 GiB took 21 s up and 12 s down, and the whole file
//! about 2.5 minutes (the 2,000 files, one at a time through `sftp`, are the longest part).
//! Throughput against direct S3 is `bench/object.sh`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{assert_same_file, pseudo_random, Fixture, Server, SSH_OPTIONS, USER};

/// Longest one rclone command may run (a copy of 41 files takes seconds).
const RCLONE_TIMEOUT: Duration = Duration::from_secs(180);
use sftpgate_fs_object::object_store::path::Path as Key;
use sftpgate_fs_object::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use sftpgate_fs_object::S3Settings;

/// The big file sent up and down with OpenSSH's sftp.
const BIG: usize = 1 << 30;
/// The tree of small files: directories × files.
const TREE_DIRS: usize = 20;
const TREE_FILES_PER_DIR: usize = 100;
/// Limit of each sftp run over the tree (a hang guard, not a measure).
const TREE_LIMIT: Duration = Duration::from_secs(240);

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

    /// Asserts that the object at `path` holds the bytes of the local file `expected`,
    /// streaming both (the big file is not held in memory).
    fn assert_stored(&self, path: &str, expected: &Path) {
        use futures_util::StreamExt as _;
        use std::io::Read as _;
        let mut file = std::fs::File::open(expected).expect("opening the original");
        let size = file.metadata().expect("its size").len();
        let mut buf = Vec::new();
        let stored = self.rt.block_on(async {
            let mut body = self
                .store
                .get(&self.key(path))
                .await
                .unwrap_or_else(|e| panic!("GET {path}: {e}"))
                .into_stream();
            let mut offset = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.unwrap_or_else(|e| panic!("GET {path} body: {e}"));
                buf.resize(chunk.len(), 0);
                file.read_exact(&mut buf).unwrap_or_else(|_| {
                    panic!("{path}: the object is longer than the original ({size} bytes)")
                });
                assert!(buf == chunk, "{path}: stored bytes differ near {offset}");
                offset += chunk.len() as u64;
            }
            offset
        });
        assert_eq!(stored, size, "{path}: stored length");
    }

    /// Multipart uploads in progress below the prefix (rclone's view of the server);
    /// `None` when rclone is missing outside CI.
    fn uploads(&self) -> Option<Vec<String>> {
        if !common::require(&["rclone"]) {
            return None;
        }
        let s = &self.settings;
        let mut cmd = Command::new("rclone");
        cmd.args(["backend", "list-multipart-uploads"])
            // A CA bundle set for the machine's proxy breaks rclone's S3 client (and the
            // endpoint is plain HTTP on loopback anyway).
            .env_remove("AWS_CA_BUNDLE")
            .arg(format!("garage:{}", s.bucket))
            .envs(rclone_s3_env(s));
        let out = common::run(&mut cmd, RCLONE_TIMEOUT);
        assert!(out.status.success(), "rclone: {}", out.stderr);
        let text = &out.stdout;
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
    write_big_file(&local.join("big.bin"), BIG);

    // One sftp run each way: each has the fixture's timeout to itself.
    for (batch, way) in [("put big.bin\n", "up"), ("get big.bin back.bin\n", "down")] {
        let started = Instant::now();
        let out = fx.sftp(&server, USER, batch);
        assert!(out.status.success(), "{batch:?} failed\n{}", out.show());
        eprintln!("{} MiB {way}: {:?}", BIG >> 20, started.elapsed());
    }
    assert_same_file(&local.join("big.bin"), &local.join("back.bin"));
    s3.assert_stored("big.bin", &local.join("big.bin"));

    // A tree of small files, renames of a file and of a directory.
    let tree = local.join("tree");
    for d in 0..TREE_DIRS {
        std::fs::create_dir_all(tree.join(format!("d{d}"))).unwrap();
        for f in 0..TREE_FILES_PER_DIR {
            let body = format!("file {d}/{f}\n").repeat(f % 50 + 1);
            std::fs::write(tree.join(format!("d{d}/f{f}.txt")), body).unwrap();
        }
    }
    // One sftp run per phase, each with its own limit: the client stores 2,000 files one
    // after another (a PUT each at CLOSE), 35-75 s on this kind of machine, more under load.
    for (batch, what) in [
        ("put -r tree\n", "up"),
        (
            "rename tree/d0/f0.txt tree/d0/renamed.txt\nrename tree/d1 tree/moved\n\
             mkdir empty\nls -1 tree\n",
            "renamed",
        ),
        ("get -r tree tree-back\nrmdir empty\n", "down"),
    ] {
        let started = Instant::now();
        let out = fx.sftp_within(&local, &server, USER, batch, TREE_LIMIT);
        assert!(
            out.status.success(),
            "the tree ({what}) failed\n{}",
            out.show()
        );
        eprintln!(
            "{} small files {what}: {:?}",
            TREE_DIRS * TREE_FILES_PER_DIR,
            started.elapsed()
        );
    }
    let back = local.join("tree-back");
    assert_same_file(&tree.join("d0/f0.txt"), &back.join("d0/renamed.txt"));
    assert!(!back.join("d0/f0.txt").exists(), "the old name remains");
    assert!(!back.join("d1").exists(), "the old directory remains");
    for d in 0..TREE_DIRS {
        let (sent, got) = match d {
            1 => (tree.join("d1"), back.join("moved")),
            _ => (tree.join(format!("d{d}")), back.join(format!("d{d}"))),
        };
        for f in 0..TREE_FILES_PER_DIR {
            let name = format!("f{f}.txt");
            let got = match (d, f) {
                (0, 0) => got.join("renamed.txt"),
                _ => got.join(&name),
            };
            assert_same_file(&sent.join(&name), &got);
        }
        assert_eq!(
            std::fs::read_dir(&got).unwrap().count(),
            TREE_FILES_PER_DIR,
            "files in {}",
            got.display()
        );
    }
    assert!(s3.get("tree/moved/f3.txt").is_some(), "renamed key");
    assert!(s3.get("tree/d1/f3.txt").is_none(), "old key left behind");
    if let Some(uploads) = s3.uploads() {
        assert!(uploads.is_empty(), "orphaned uploads: {uploads:?}");
    }
}

#[test]
fn large_listing_is_paginated() {
    const COUNT: usize = 10_000;
    let Some(s3) = S3::new("listing") else { return };
    let Some(fx) = Fixture::new() else { return };
    let server = s3.start(&fx);
    // Keys written straight to the bucket, 32 at once (much faster than 10,000 uploads
    // over SSH): ten pages of S3's 1,000 keys.
    let started = Instant::now();
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
    eprintln!("{COUNT} keys written: {:?}", started.elapsed());
    let started = Instant::now();
    let out = fx.sftp(&server, USER, "ls -l many\n");
    assert!(out.status.success(), "ls failed\n{}", out.show());
    eprintln!("ls -l of {COUNT} entries: {:?}", started.elapsed());
    // `ls -l` prints mode, links, owner, size, date, then the path (`many/entry-…`).
    let listed: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("-rw-r--r--"))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| p.strip_prefix("many/").unwrap_or(p))
        .collect();
    let names: std::collections::BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(listed.len(), names.len(), "an entry listed twice");
    let expected: std::collections::BTreeSet<String> =
        (0..COUNT).map(|i| format!("entry-{i:05}")).collect();
    let expected: std::collections::BTreeSet<&str> = expected.iter().map(String::as_str).collect();
    let missing: Vec<&&str> = expected.difference(&names).take(5).collect();
    let unexpected: Vec<&&str> = names.difference(&expected).take(5).collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "{} entries listed of {COUNT}; missing {missing:?}…, unexpected {unexpected:?}…; \
         first lines:\n{}",
        names.len(),
        out.stdout.lines().take(5).collect::<Vec<_>>().join("\n")
    );
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
        let mut cmd = Command::new("rclone");
        cmd.args(args)
            .env("RCLONE_CONFIG_SG_TYPE", "sftp")
            .env("RCLONE_CONFIG_SG_HOST", "127.0.0.1")
            .env("RCLONE_CONFIG_SG_PORT", server.port.to_string())
            .env("RCLONE_CONFIG_SG_USER", USER)
            .env("RCLONE_CONFIG_SG_KEY_FILE", &fx.key)
            // Object storage keeps no times: SETSTAT of them is OP_UNSUPPORTED.
            .env("RCLONE_CONFIG_SG_SET_MODTIME", "false")
            .env("RCLONE_CONFIG_SG_KNOWN_HOSTS_FILE", "")
            .env("RCLONE_CONFIG_SG_DISABLE_HASHCHECK", "true")
            .env("RCLONE_CONFIG_SG_SHELL_TYPE", "none");
        // Bounded: rclone retries a server that has gone away for a long time, and the
        // test should fail, not hang.
        let out = common::run(&mut cmd, RCLONE_TIMEOUT);
        assert!(
            out.status.success(),
            "rclone {args:?} failed\n{}\n{}",
            out.stderr,
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

/// Writes `len` pseudo-random bytes to `path`, 64 MiB at a time.
fn write_big_file(path: &Path, len: usize) {
    use std::io::Write as _;
    const PIECE: usize = 64 << 20;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for (i, start) in (0..len).step_by(PIECE).enumerate() {
        let piece = pseudo_random(PIECE.min(len - start), 0x0b1e_c75a_11ce_5eed + i as u64);
        file.write_all(&piece).unwrap();
    }
    file.flush().unwrap();
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}
