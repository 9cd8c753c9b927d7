//! What the object backend adds to the conformance suite: uploads visible only at
//! CLOSE/fsync, no orphaned multipart upload whatever ends a file, refused write patterns
//! that fail loudly, continued (resumed) files, read-ahead, the jail, timeouts, and the
//! documented unsupported operations. Each test runs on an in-memory store and on the real
//! S3 server (Garage) when `SFTPGATE_TEST_S3_*` is set.

mod common;

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use sftpgate_fs_object::object_store::memory::InMemory;
use sftpgate_fs_object::object_store::path::Path;
use sftpgate_fs_object::object_store::{
    self, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use sftpgate_fs_object::{ObjectConfig, ObjectFs, S3Settings};
use sftpgate_proto::{FileAttributes, OpenFlags, StatusCode};
use sftpgate_vfs::{EndReason, File, Filesystem, FsError, ReadPart, RenameMode, VPath};

const MIB: usize = 1024 * 1024;

/// Runs `body` on memory and on S3 (`$name::memory`, `$name::s3`).
macro_rules! both {
    ($name:ident, $config:expr, $body:ident) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                let (store, fs) = common::memory_fs($config);
                $body(Setup {
                    store,
                    prefix: "tenant".into(),
                    fs,
                    s3: false,
                })
                .await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn s3() {
                let Some((store, prefix, fs)) = common::s3_fs(stringify!($name), $config) else {
                    return;
                };
                $body(Setup {
                    store,
                    prefix,
                    fs,
                    s3: true,
                })
                .await;
            }
        }
    };
}

struct Setup {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    fs: ObjectFs,
    s3: bool,
}

impl Setup {
    /// On S3: no multipart upload is left below this test's prefix.
    fn assert_no_orphans(&self) {
        if self.s3 {
            if let Some(uploads) = common::multipart_uploads(&self.prefix) {
                assert!(
                    uploads.is_empty(),
                    "orphaned multipart uploads: {uploads:?}"
                );
            }
        }
        assert_eq!(self.fs.open_uploads(), 0, "uploads still tracked");
    }
}

fn p(path: &str) -> VPath {
    VPath::parse(path.as_bytes()).expect("test path")
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i / 7) as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn flags(f: &[OpenFlags]) -> OpenFlags {
    f.iter().fold(OpenFlags::empty(), |a, b| a | *b)
}

async fn create(fs: &ObjectFs, path: &str) -> Box<dyn File> {
    fs.open(
        &p(path),
        flags(&[OpenFlags::WRITE, OpenFlags::CREAT, OpenFlags::TRUNC]),
        &FileAttributes::new(),
    )
    .await
    .expect("create")
}

async fn read_all(fs: &ObjectFs, path: &str) -> Vec<u8> {
    let file = fs
        .open(&p(path), OpenFlags::READ, &FileAttributes::new())
        .await
        .expect("open for reading");
    let mut buf = BytesMut::new();
    loop {
        match file.read(buf.len() as u64, 256 * 1024, &mut buf).await {
            Ok(_) => {}
            Err(FsError::Eof) => break,
            Err(e) => panic!("read {path}: {e:?}"),
        }
    }
    file.close().await.expect("close reader");
    buf.to_vec()
}

fn assert_status(err: &FsError, code: StatusCode, what: &str) {
    assert_eq!(StatusCode::from(err), code, "{what}: {err:?} ({err})");
}

/// Writes `data` in 32 KiB blocks, eight at a time in reverse order within each group (as
/// a pipelining client's concurrent writes may arrive), so the reorder window works.
async fn write_shuffled(file: &dyn File, data: &[u8]) {
    const BLOCK: usize = 32 * 1024;
    let blocks: Vec<(u64, Bytes)> = data
        .chunks(BLOCK)
        .enumerate()
        .map(|(i, c)| ((i * BLOCK) as u64, Bytes::copy_from_slice(c)))
        .collect();
    for group in blocks.chunks(8) {
        let writes = group.iter().rev().map(|(o, d)| file.write(*o, d.clone()));
        for result in futures_util::future::join_all(writes).await {
            result.expect("write");
        }
    }
}

// ---- uploads ----

both!(
    upload_visible_only_at_close,
    ObjectConfig::default(),
    upload_visible_only_at_close_body
);
async fn upload_visible_only_at_close_body(s: Setup) {
    // Over two parts of 8 MiB, so it is a real multipart upload.
    let data = pattern(17 * MIB + 123, 1);
    let file = create(&s.fs, "/big.bin").await;
    write_shuffled(&*file, &data).await;
    assert_eq!(
        file.stat().await.expect("fstat").size,
        Some(data.len() as u64)
    );
    let err =
        s.fs.stat(&p("/big.bin"))
            .await
            .expect_err("visible before close");
    assert_status(&err, StatusCode::NoSuchFile, "stat during upload");
    file.close().await.expect("close completes the upload");
    assert_eq!(
        s.fs.stat(&p("/big.bin")).await.expect("stat").size,
        Some(data.len() as u64)
    );
    assert!(
        read_all(&s.fs, "/big.bin").await == data,
        "content read back"
    );
    s.assert_no_orphans();
}

both!(
    abandoned_upload_leaves_nothing,
    ObjectConfig::default(),
    abandoned_body
);
async fn abandoned_body(s: Setup) {
    // A handle the client never closed: the server abandons it at session end.
    let file = create(&s.fs, "/left-open.bin").await;
    write_shuffled(&*file, &pattern(9 * MIB, 2)).await;
    file.abandon().await.expect("abandon");
    let err =
        s.fs.stat(&p("/left-open.bin"))
            .await
            .expect_err("abandoned upload visible");
    assert_status(&err, StatusCode::NoSuchFile, "stat after abandon");
    s.assert_no_orphans();

    // A session whose task died: exit aborts what is still open.
    let file = create(&s.fs, "/at-exit.bin").await;
    write_shuffled(&*file, &pattern(9 * MIB, 3)).await;
    s.fs.exit(&EndReason::Aborted).await;
    let err =
        s.fs.stat(&p("/at-exit.bin"))
            .await
            .expect_err("visible after exit");
    assert_status(&err, StatusCode::NoSuchFile, "stat after exit");
    let err = file.close().await.expect_err("close after exit must fail");
    assert_status(&err, StatusCode::Failure, "close after exit");
    assert!(
        s.fs.stat(&p("/at-exit.bin")).await.is_err(),
        "close after exit stored it"
    );
    drop(file);
    s.assert_no_orphans();
}

fn small_window() -> ObjectConfig {
    ObjectConfig {
        reorder_window: MIB,
        reorder_wait: Duration::from_millis(200),
        ..ObjectConfig::default()
    }
}

both!(refused_writes_fail_the_upload, small_window(), refused_body);
async fn refused_body(s: Setup) {
    let cases: [(&str, &[(u64, usize)]); 3] = [
        // A rewrite of bytes already taken.
        ("rewrite", &[(0, 1000), (500, 10)]),
        // Overlapping writes held in the window.
        ("overlap", &[(100, 50), (120, 50)]),
        // Beyond the window, and nothing fills the gap within `reorder_wait`.
        ("beyond", &[(0, 10), (2 * MIB as u64, 10)]),
    ];
    for (name, writes) in cases {
        let path = format!("/{name}");
        let file = create(&s.fs, &path).await;
        let mut failed = None;
        for (offset, len) in writes {
            if let Err(e) = file.write(*offset, Bytes::from(vec![7; *len])).await {
                failed = Some(e);
                break;
            }
        }
        let err = failed.unwrap_or_else(|| panic!("{name}: every write succeeded"));
        assert_status(&err, StatusCode::Failure, name);
        assert!(err.to_string().contains("byte"), "{name}: message {err}");
        // The upload is dead: more writes and CLOSE fail, nothing is stored.
        let err = file.close().await.expect_err("close of a failed upload");
        assert_status(&err, StatusCode::Failure, "close after a refused write");
        assert!(s.fs.stat(&p(&path)).await.is_err(), "{name}: stored anyway");
    }

    // A gap left open at CLOSE.
    let file = create(&s.fs, "/gap").await;
    file.write(100, Bytes::from_static(b"late"))
        .await
        .expect("held write");
    let err = file.close().await.expect_err("close with a gap");
    assert_status(&err, StatusCode::Failure, "close with a gap");
    assert!(err.to_string().contains("gap"), "message: {err}");
    assert!(
        s.fs.stat(&p("/gap")).await.is_err(),
        "a file with a hole was stored"
    );

    // A rewrite after a part went out, in a multipart upload.
    let file = create(&s.fs, "/rewrite-part").await;
    write_shuffled(&*file, &pattern(9 * MIB, 4)).await;
    let err = file
        .write(0, Bytes::from_static(b"again"))
        .await
        .expect_err("rewrite of an uploaded part");
    assert_status(&err, StatusCode::Failure, "rewrite of an uploaded part");
    assert!(file.close().await.is_err());
    assert!(s.fs.stat(&p("/rewrite-part")).await.is_err());
    s.assert_no_orphans();
}

both!(
    continue_existing_file,
    ObjectConfig::default(),
    continue_body
);
async fn continue_body(s: Setup) {
    let file = create(&s.fs, "/partial").await;
    file.write(0, Bytes::from_static(b"hello"))
        .await
        .expect("write");
    file.close().await.expect("close");

    // A resumed upload: open without TRUNC, go on at the end.
    let file =
        s.fs.open(&p("/partial"), OpenFlags::WRITE, &FileAttributes::new())
            .await
            .expect("open without TRUNC");
    file.write(5, Bytes::from_static(b" world"))
        .await
        .expect("continue");
    file.close().await.expect("close");
    assert_eq!(read_all(&s.fs, "/partial").await, b"hello world");

    // Writing over existing bytes is refused and the file stays as it was.
    let file =
        s.fs.open(&p("/partial"), OpenFlags::WRITE, &FileAttributes::new())
            .await
            .expect("open without TRUNC");
    let err = file
        .write(0, Bytes::from_static(b"J"))
        .await
        .expect_err("overwrite in place");
    assert_status(&err, StatusCode::Failure, "overwrite in place");
    assert!(file.close().await.is_err());
    assert_eq!(read_all(&s.fs, "/partial").await, b"hello world");

    // A large existing file continued past a part boundary (its bytes are copied in).
    let big = pattern(6 * MIB, 5);
    let file = create(&s.fs, "/big-partial").await;
    write_shuffled(&*file, &big[..3 * MIB]).await;
    file.close().await.expect("close");
    let file =
        s.fs.open(
            &p("/big-partial"),
            OpenFlags::WRITE | OpenFlags::APPEND,
            &FileAttributes::new(),
        )
        .await
        .expect("open for append");
    for (i, chunk) in big[3 * MIB..].chunks(32 * 1024).enumerate() {
        // APPEND ignores the offset.
        file.write(i as u64, Bytes::copy_from_slice(chunk))
            .await
            .expect("append");
    }
    file.close().await.expect("close");
    assert!(
        read_all(&s.fs, "/big-partial").await == big,
        "continued content"
    );
    s.assert_no_orphans();
}

both!(fsync_commits, ObjectConfig::default(), fsync_body);
async fn fsync_body(s: Setup) {
    let file = create(&s.fs, "/synced").await;
    file.write(0, Bytes::from_static(b"abc"))
        .await
        .expect("write");
    file.sync().await.expect("fsync");
    assert_eq!(
        s.fs.stat(&p("/synced"))
            .await
            .expect("visible after fsync")
            .size,
        Some(3)
    );
    file.write(3, Bytes::from_static(b"def"))
        .await
        .expect("write after fsync");
    assert_eq!(
        read_all(&s.fs, "/synced").await,
        b"abc",
        "not yet the new bytes"
    );
    file.close().await.expect("close");
    assert_eq!(read_all(&s.fs, "/synced").await, b"abcdef");
    s.assert_no_orphans();
}

// ---- names, the jail, unsupported operations ----

both!(names_and_jail, ObjectConfig::default(), names_body);
async fn names_body(s: Setup) {
    // Byte-exact keys: no percent-encoding on the way in, on listing, or in a rename.
    let odd = "/dir %41#?[x]";
    s.fs.mkdir(&p(odd), &FileAttributes::new())
        .await
        .expect("mkdir");
    let file = create(&s.fs, &format!("{odd}/f ü%2F")).await;
    file.write(0, Bytes::from_static(b"x"))
        .await
        .expect("write");
    file.close().await.expect("close");
    let key = Path::parse(format!("{}{odd}/f ü%2F", s.prefix)).expect("key");
    assert_eq!(s.store.head(&key).await.expect("the exact key").size, 1);
    s.fs.rename(&p(odd), &p("/moved %42"), RenameMode::NoReplace)
        .await
        .expect("rename dir");
    let moved = Path::parse(format!("{}/moved %42/f ü%2F", s.prefix)).expect("key");
    assert_eq!(s.store.head(&moved).await.expect("moved key").size, 1);
    assert!(s.fs.stat(&p(odd)).await.is_err(), "old directory remains");

    // Keys next to the prefix are out of reach.
    let sibling = Path::parse(format!("{}-other/secret", s.prefix)).expect("key");
    s.store
        .put(&sibling, PutPayload::from_static(b"s"))
        .await
        .expect("put sibling");
    let own_name = s.prefix.rsplit('/').next().expect("a last part");
    for path in [
        "/../secret".to_owned(),
        format!("/../{own_name}-other/secret"),
    ] {
        let err = s.fs.stat(&p(&path)).await.expect_err("outside reached");
        assert_status(&err, StatusCode::NoSuchFile, &path);
    }
    let mut listing = s.fs.opendir(&VPath::root()).await.expect("opendir /");
    let mut names = Vec::new();
    loop {
        let batch = listing.next_batch().await.expect("batch");
        if batch.is_empty() {
            break;
        }
        names.extend(batch.into_iter().map(|e| e.name));
    }
    assert_eq!(names, vec![Bytes::from_static("moved %42".as_bytes())]);

    // Names object storage cannot hold, and the reserved marker name.
    let err =
        s.fs.stat(&VPath::parse(b"/a\xff").unwrap())
            .await
            .expect_err("non-UTF-8");
    assert_status(&err, StatusCode::BadMessage, "non-UTF-8 name");
    let err =
        s.fs.mkdir(&p("/x/.sftpgate-dir"), &FileAttributes::new())
            .await
            .expect_err("marker");
    assert_status(&err, StatusCode::PermissionDenied, "reserved name");
    let _ = s.store.delete(&sibling).await;
}

both!(
    unsupported_operations,
    ObjectConfig::default(),
    unsupported_body
);
async fn unsupported_body(s: Setup) {
    let file = create(&s.fs, "/f").await;
    file.write(0, Bytes::from_static(b"12345"))
        .await
        .expect("write");
    file.close().await.expect("close");
    let perms = FileAttributes {
        permissions: Some(0o600),
        ..FileAttributes::new()
    };
    let err = s.fs.setstat(&p("/f"), &perms).await.expect_err("chmod");
    assert_status(&err, StatusCode::OpUnsupported, "setstat permissions");
    let err = s.fs.symlink(b"f", &p("/l")).await.expect_err("symlink");
    assert_status(&err, StatusCode::OpUnsupported, "symlink");
    let err =
        s.fs.hardlink(&p("/f"), &p("/h"))
            .await
            .expect_err("hardlink");
    assert_status(&err, StatusCode::OpUnsupported, "hardlink");
    let grow = FileAttributes {
        size: Some(9),
        ..FileAttributes::new()
    };
    let err = s.fs.setstat(&p("/f"), &grow).await.expect_err("grow");
    assert_status(&err, StatusCode::OpUnsupported, "setstat size 9");
    // Truncation to zero and "no change" work.
    let same = FileAttributes {
        size: Some(5),
        ..FileAttributes::new()
    };
    s.fs.setstat(&p("/f"), &same).await.expect("same size");
    s.fs.setstat(
        &p("/f"),
        &FileAttributes {
            size: Some(0),
            ..FileAttributes::new()
        },
    )
    .await
    .expect("truncate to zero");
    assert_eq!(s.fs.stat(&p("/f")).await.expect("stat").size, Some(0));
    let vfs = s.fs.statvfs(&p("/")).await.expect("statvfs");
    assert!(vfs.bavail > 0 && vfs.namemax == 1024);
}

// ---- read-ahead (counted on memory) ----

/// Counts GETs on the way to an in-memory store.
#[derive(Debug, Default)]
struct CountingStore {
    inner: InMemory,
    gets: AtomicUsize,
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CountingStore")
    }
}

#[async_trait::async_trait]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        if !options.head {
            self.gets.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_sequential_reads_cost_few_gets() {
    let store = Arc::new(CountingStore::default());
    let fs = ObjectFs::new(store.clone(), "t", ObjectConfig::default()).expect("fs");
    let data = pattern(16 * MIB, 6);
    let file = create(&fs, "/f").await;
    write_shuffled(&*file, &data).await;
    file.close().await.expect("close");
    store.gets.store(0, Ordering::Relaxed);

    // 64 reads of 32 KiB in flight at a time, as OpenSSH's sftp pipelines them.
    let file = fs
        .open(&p("/f"), OpenFlags::READ, &FileAttributes::new())
        .await
        .expect("open");
    let file: &dyn File = &*file;
    const READ: usize = 32 * 1024;
    let mut got = vec![0u8; data.len()];
    for window in (0..data.len() / READ).collect::<Vec<_>>().chunks(64) {
        let reads = window.iter().map(|i| async move {
            let mut buf = BytesMut::with_capacity(READ);
            let n = file.read((i * READ) as u64, READ as u32, &mut buf).await?;
            Ok::<_, FsError>((*i, n, buf))
        });
        for result in futures_util::future::join_all(reads).await {
            let (i, n, buf) = result.expect("read");
            assert_eq!(n, READ, "full read at block {i}");
            got[i * READ..(i + 1) * READ].copy_from_slice(&buf);
        }
    }
    assert!(got == data, "content");
    let gets = store.gets.load(Ordering::Relaxed);
    // 16 MiB in 4 MiB chunks: 4 GETs (read-ahead never goes past the end).
    assert!(gets <= 5, "{gets} GETs for 512 reads of 32 KiB");

    // A random read costs one GET of what it asks.
    store.gets.store(0, Ordering::Relaxed);
    let mut buf = BytesMut::new();
    file.read(1000, 10, &mut buf).await.expect("random read");
    assert_eq!(&buf[..], &data[1000..1010]);
    assert_eq!(store.gets.load(Ordering::Relaxed), 1);

    // Into a reply's packets (`read_parts`), the same: a random read is one GET, copied
    // into the parts in turn; one across two chunks still held takes both pieces, no GET.
    let parts_of = |lens: &[u32]| -> Vec<ReadPart> {
        lens.iter()
            .map(|&len| ReadPart::new(BytesMut::new(), len))
            .collect()
    };
    let joined = |parts: &[ReadPart]| -> Vec<u8> {
        parts.iter().flat_map(|p| p.buf.iter().copied()).collect()
    };
    store.gets.store(0, Ordering::Relaxed);
    let mut parts = parts_of(&[7, 13]);
    assert_eq!(file.read_parts(2000, &mut parts).await.expect("random"), 20);
    assert_eq!(joined(&parts), &data[2000..2020]);
    assert_eq!((parts[0].buf.len(), parts[1].buf.len()), (7, 13));
    assert_eq!(store.gets.load(Ordering::Relaxed), 1);
    store.gets.store(0, Ordering::Relaxed);
    let at = 3 * 4 * MIB - 100;
    let mut parts = parts_of(&[60, 100]);
    assert_eq!(
        file.read_parts(at as u64, &mut parts).await.expect("seq"),
        160
    );
    assert_eq!(joined(&parts), &data[at..at + 160]);
    assert_eq!(
        store.gets.load(Ordering::Relaxed),
        0,
        "the chunks were held"
    );
    file.close().await.expect("close");
}

// ---- timeouts ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unanswering_store_times_out_with_a_status() {
    // A listener that accepts and never answers: a store that hangs.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let settings = S3Settings::new(
        Some(format!("http://{addr}")),
        "garage",
        "bucket",
        "GK000000000000000000000000",
        "secret",
    );
    let config = ObjectConfig {
        call_timeout: Duration::from_millis(500),
        ..ObjectConfig::default()
    };
    let fs = ObjectFs::new(settings.build().expect("store"), "p", config).expect("fs");
    let started = std::time::Instant::now();
    let err = fs
        .stat(&p("/x"))
        .await
        .expect_err("a hanging store answered");
    assert!(matches!(err, FsError::TimedOut), "{err:?}");
    assert_status(&err, StatusCode::Failure, "timeout");
    assert_eq!(err.to_string(), "Storage operation timed out");
    // Bounded by the call timeout (with slack for a loaded machine), not the HTTP retries.
    assert!(started.elapsed() < Duration::from_secs(10));
    hold.abort();
}
