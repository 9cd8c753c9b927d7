//! Behaviour of the local backend beyond the shared conformance suite: special files,
//! every SETSTAT attribute by path, handle and without following links, listings,
//! the root's own edge cases, statvfs, buffers, and errors without host paths.

use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rustix::fs::{FileType as OsFileType, Mode, CWD};
use sftpgate_fs_local::LocalFs;
use sftpgate_proto::{FileAttributes, FileType, OpenFlags, Owner, StatusCode, Times};
use sftpgate_vfs::{Filesystem, FsError, RenameMode, VPath};

fn fresh() -> (tempfile::TempDir, LocalFs) {
    let dir = tempfile::tempdir().expect("tempdir");
    let fs = LocalFs::new(dir.path()).expect("LocalFs::new");
    (dir, fs)
}

/// A root in memory (`/dev/shm`), where small reads and writes run inline and reads skip
/// zero-filling; `None` (the test says it skips) where `/dev/shm` is not a tmpfs.
fn fresh_in_memory() -> Option<(tempfile::TempDir, LocalFs)> {
    let shm = Path::new("/dev/shm");
    let tmpfs = rustix::fs::statfs(shm).is_ok_and(|fs| fs.f_type as u64 == 0x0102_1994);
    if !tmpfs {
        eprintln!("skipping: /dev/shm is not a tmpfs here");
        return None;
    }
    let dir = tempfile::tempdir_in(shm).expect("tempdir in /dev/shm");
    let fs = LocalFs::new(dir.path()).expect("LocalFs::new on tmpfs");
    Some((dir, fs))
}

fn p(path: &str) -> VPath {
    VPath::parse(path.as_bytes()).expect("test path")
}

fn status(err: &FsError) -> StatusCode {
    StatusCode::from(err)
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

async fn list(fs: &LocalFs, path: &VPath) -> Vec<Vec<sftpgate_vfs::DirEntry>> {
    let mut dir = fs.opendir(path).await.expect("opendir");
    let mut batches = Vec::new();
    loop {
        let batch = dir.next_batch().await.expect("next_batch");
        if batch.is_empty() {
            return batches;
        }
        batches.push(batch);
    }
}

fn host_mtime(path: &Path) -> i64 {
    std::fs::symlink_metadata(path).expect("lstat").mtime()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_files_do_not_block_open() {
    let (dir, fs) = fresh();
    let fifo = dir.path().join("fifo");
    rustix::fs::mknodat(CWD, &fifo, OsFileType::Fifo, Mode::from_raw_mode(0o666), 0)
        .expect("mkfifo");
    let socket = dir.path().join("socket");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");

    for path in ["/fifo", "/socket"] {
        for flags in [
            OpenFlags::READ,
            OpenFlags::WRITE,
            OpenFlags::READ | OpenFlags::WRITE,
            OpenFlags::WRITE | OpenFlags::CREAT | OpenFlags::TRUNC,
        ] {
            let result = tokio::time::timeout(
                Duration::from_secs(10),
                fs.open(&p(path), flags, &FileAttributes::new()),
            )
            .await
            .unwrap_or_else(|_| panic!("open {path} {flags:?} blocked"));
            let err = result.err().expect("special file opened");
            assert_eq!(status(&err), StatusCode::Failure, "{path}: {err:?}");
            assert_eq!(err.to_string(), "Not a regular file", "{path} {flags:?}");
        }
        let size = FileAttributes {
            size: Some(0),
            ..FileAttributes::new()
        };
        let err = tokio::time::timeout(Duration::from_secs(10), fs.setstat(&p(path), &size))
            .await
            .expect("setstat size blocked")
            .expect_err("size of a special file");
        assert_eq!(err.to_string(), "Not a regular file");
        let err = fs.opendir(&p(path)).await.err().expect("opendir fifo");
        assert_eq!(status(&err), StatusCode::Failure);
        // STAT and the listing report the type.
        let attrs = fs.stat(&p(path)).await.expect("stat");
        let expected = if path == "/fifo" {
            FileType::Fifo
        } else {
            FileType::Socket
        };
        assert_eq!(attrs.file_type(), Some(expected));
    }
    let names: Vec<_> = list(&fs, &VPath::root())
        .await
        .into_iter()
        .flatten()
        .filter(|e| e.name == "fifo")
        .map(|e| e.attrs.file_type())
        .collect();
    assert_eq!(names, [Some(FileType::Fifo)]);
}

#[test]
fn new_refuses_missing_and_non_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = LocalFs::new(dir.path().join("missing")).expect_err("missing root");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    assert!(err.to_string().contains("root directory"), "{err}");
    std::fs::write(dir.path().join("file"), b"").expect("file");
    let err = LocalFs::new(dir.path().join("file")).expect_err("file as root");
    assert_eq!(err.kind(), std::io::ErrorKind::NotADirectory, "{err}");
}

#[test]
fn outside_a_runtime_is_an_error_not_a_panic() {
    let (_dir, fs) = fresh();
    let root = VPath::root();
    let mut future = std::pin::pin!(fs.stat(&root));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(Err(FsError::Other(msg))) => {
            assert!(msg.contains("Tokio"), "{msg}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setstat_each_attribute_by_path() {
    let (dir, fs) = fresh();
    std::fs::write(dir.path().join("f"), b"0123456789").expect("file");
    let f = p("/f");
    let set = |attrs: FileAttributes| {
        let fs = fs.clone();
        let f = f.clone();
        async move { fs.setstat(&f, &attrs).await }
    };

    set(FileAttributes {
        size: Some(3),
        ..FileAttributes::new()
    })
    .await
    .expect("size");
    assert_eq!(std::fs::read(dir.path().join("f")).expect("read"), b"012");

    set(FileAttributes {
        permissions: Some(0o4750),
        ..FileAttributes::new()
    })
    .await
    .expect("permissions");
    let meta = std::fs::metadata(dir.path().join("f")).expect("stat");
    assert_eq!(meta.mode() & 0o7777, 0o4750);

    let times = Times {
        atime: 1_111_111_111,
        mtime: 1_222_222_222,
    };
    set(FileAttributes {
        times: Some(times),
        ..FileAttributes::new()
    })
    .await
    .expect("times");
    let meta = std::fs::metadata(dir.path().join("f")).expect("stat");
    assert_eq!((meta.atime(), meta.mtime()), (1_111_111_111, 1_222_222_222));

    if is_root() {
        let owner = Owner {
            uid: 4321,
            gid: 4322,
        };
        set(FileAttributes {
            owner: Some(owner),
            ..FileAttributes::new()
        })
        .await
        .expect("owner");
        let meta = std::fs::metadata(dir.path().join("f")).expect("stat");
        assert_eq!((meta.uid(), meta.gid()), (4321, 4322));
        assert_eq!(fs.stat(&f).await.expect("stat").owner, Some(owner));
        // u32::MAX leaves an id as it is, as chown(2) does.
        set(FileAttributes {
            owner: Some(Owner {
                uid: 4400,
                gid: u32::MAX,
            }),
            ..FileAttributes::new()
        })
        .await
        .expect("uid only");
        let meta = std::fs::metadata(dir.path().join("f")).expect("stat");
        assert_eq!((meta.uid(), meta.gid()), (4400, 4322));
    } else {
        eprintln!("skipping: chown to another user needs root");
    }

    // Through a symlink, the target changes and the link does not.
    fs.symlink(b"f", &p("/link")).await.expect("symlink");
    let link_mtime = host_mtime(&dir.path().join("link"));
    fs.setstat(
        &p("/link"),
        &FileAttributes {
            permissions: Some(0o600),
            times: Some(Times { atime: 5, mtime: 6 }),
            ..FileAttributes::new()
        },
    )
    .await
    .expect("setstat via link");
    let meta = std::fs::metadata(dir.path().join("f")).expect("stat");
    assert_eq!((meta.mode() & 0o7777, meta.mtime()), (0o600, 6));
    assert_eq!(host_mtime(&dir.path().join("link")), link_mtime);

    // A size on a directory.
    fs.mkdir(&p("/d"), &FileAttributes::new())
        .await
        .expect("mkdir");
    let err = fs
        .setstat(
            &p("/d"),
            &FileAttributes {
                size: Some(0),
                ..FileAttributes::new()
            },
        )
        .await
        .expect_err("size of a directory");
    assert!(matches!(err, FsError::IsADirectory), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lsetstat_does_not_follow() {
    let (dir, fs) = fresh();
    std::fs::write(dir.path().join("target"), b"t").expect("file");
    fs.symlink(b"target", &p("/link")).await.expect("symlink");
    let target_before = std::fs::metadata(dir.path().join("target")).expect("stat");

    let times = Times {
        atime: 1_000_000_000,
        mtime: 1_000_000_001,
    };
    fs.lsetstat(
        &p("/link"),
        &FileAttributes {
            times: Some(times),
            ..FileAttributes::new()
        },
    )
    .await
    .expect("lsetstat times");
    assert_eq!(host_mtime(&dir.path().join("link")), 1_000_000_001);
    assert_eq!(
        fs.lstat(&p("/link")).await.expect("lstat").times,
        Some(times)
    );
    assert_eq!(
        host_mtime(&dir.path().join("target")),
        target_before.mtime(),
        "target untouched"
    );

    let err = fs
        .lsetstat(
            &p("/link"),
            &FileAttributes {
                permissions: Some(0o600),
                ..FileAttributes::new()
            },
        )
        .await
        .expect_err("chmod of a symlink");
    assert_eq!(status(&err), StatusCode::OpUnsupported, "{err:?}");
    assert!(err.to_string().contains("symlink"), "{err}");
    let meta = std::fs::metadata(dir.path().join("target")).expect("stat");
    assert_eq!(meta.mode(), target_before.mode(), "target mode untouched");

    if is_root() {
        fs.lsetstat(
            &p("/link"),
            &FileAttributes {
                owner: Some(Owner { uid: 777, gid: 778 }),
                ..FileAttributes::new()
            },
        )
        .await
        .expect("lchown");
        let link = std::fs::symlink_metadata(dir.path().join("link")).expect("lstat");
        assert_eq!((link.uid(), link.gid()), (777, 778));
        let target = std::fs::metadata(dir.path().join("target")).expect("stat");
        assert_eq!(
            (target.uid(), target.gid()),
            (target_before.uid(), target_before.gid())
        );
    } else {
        eprintln!("skipping: lchown to another user needs root");
    }

    // On a regular file lsetstat changes permissions like setstat.
    fs.lsetstat(
        &p("/target"),
        &FileAttributes {
            permissions: Some(0o640),
            ..FileAttributes::new()
        },
    )
    .await
    .expect("lsetstat of a file");
    let meta = std::fs::metadata(dir.path().join("target")).expect("stat");
    assert_eq!(meta.mode() & 0o7777, 0o640);

    let err = fs
        .lsetstat(
            &p("/target"),
            &FileAttributes {
                size: Some(0),
                ..FileAttributes::new()
            },
        )
        .await
        .expect_err("lsetstat size");
    assert_eq!(status(&err), StatusCode::BadMessage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_attributes_and_modes() {
    let (dir, fs) = fresh();
    std::fs::write(dir.path().join("ro"), b"read only").expect("file");
    let file = fs
        .open(&p("/ro"), OpenFlags::READ, &FileAttributes::new())
        .await
        .expect("open");
    let err = file
        .write(0, Bytes::from_static(b"x"))
        .await
        .expect_err("write on a read-only handle");
    assert_eq!(status(&err), StatusCode::Failure);
    let err = file
        .setstat(&FileAttributes {
            size: Some(0),
            ..FileAttributes::new()
        })
        .await
        .expect_err("truncate through a read-only handle");
    assert_eq!(status(&err), StatusCode::Failure);
    file.setstat(&FileAttributes {
        permissions: Some(0o604),
        times: Some(Times { atime: 7, mtime: 8 }),
        ..FileAttributes::new()
    })
    .await
    .expect("fsetstat on a read-only handle");
    let meta = std::fs::metadata(dir.path().join("ro")).expect("stat");
    assert_eq!((meta.mode() & 0o7777, meta.mtime()), (0o604, 8));
    file.sync().await.expect("fsync");
    let vfs = file.statvfs().await.expect("fstatvfs");
    assert!(vfs.bsize > 0 && vfs.namemax > 0, "{vfs:?}");
    assert_eq!(
        fs.statvfs(&VPath::root()).await.expect("statvfs").fsid,
        vfs.fsid
    );
    file.close().await.expect("close");
    let err = file
        .read(0, 1, &mut BytesMut::new())
        .await
        .expect_err("read after close");
    assert_eq!(status(&err), StatusCode::Failure);
    assert!(file.close().await.is_err(), "second close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_fills_reserved_capacity_in_place() {
    reads_in_place(fresh()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_fills_reserved_capacity_in_place_in_memory() {
    if let Some(root) = fresh_in_memory() {
        reads_in_place(root).await;
    }
}

#[tokio::test(flavor = "current_thread")]
async fn read_fills_reserved_capacity_in_place_inline() {
    reads_in_place(fresh()).await;
}

async fn reads_in_place((dir, fs): (tempfile::TempDir, LocalFs)) {
    std::fs::write(dir.path().join("f"), vec![b'a'; 4096]).expect("file");
    let file = fs
        .open(&p("/f"), OpenFlags::READ, &FileAttributes::new())
        .await
        .expect("open");
    let mut buf = BytesMut::with_capacity(8192);
    buf.extend_from_slice(b"header");
    let start = buf.as_ptr();
    let n = file.read(0, 4096, &mut buf).await.expect("read");
    assert_eq!(n, 4096);
    assert_eq!(&buf[..6], b"header", "earlier bytes kept");
    assert!(buf[6..].iter().all(|b| *b == b'a'));
    assert_eq!(buf.as_ptr(), start, "no reallocation, no copy");
    // An EOF read leaves the buffer as it was.
    let err = file.read(4096, 10, &mut buf).await.expect_err("eof");
    assert!(matches!(err, FsError::Eof));
    assert_eq!(buf.len(), 6 + 4096);
    assert_eq!(&buf[..6], b"header");
    // More room than asked for: only what was asked for is read.
    std::fs::write(dir.path().join("g"), vec![b'b'; 64 * 1024]).expect("file");
    let g = fs
        .open(&p("/g"), OpenFlags::READ, &FileAttributes::new())
        .await
        .expect("open");
    let mut buf = BytesMut::with_capacity(60 * 1024);
    buf.extend_from_slice(b"h");
    assert_eq!(g.read(100, 1000, &mut buf).await.expect("read"), 1000);
    assert_eq!(buf.len(), 1001);
    assert!(buf[1..].iter().all(|b| *b == b'b'));
    g.close().await.expect("close");
    file.close().await.expect("close");
}

/// Reads served partly from the page cache and partly from the disk, wholly from the disk,
/// wholly from the cache, and at the end of the file all give the file's bytes, appended
/// after what the buffer held. (Where the filesystem has no `RWF_NOWAIT`, tmpfs say, every
/// read takes the pool and this still checks the bytes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_partly_cached_give_the_whole_range() {
    let (dir, fs) = fresh();
    let content: Vec<u8> = (0..512 * 1024u32).map(|i| (i % 251) as u8).collect();
    let host = dir.path().join("f");
    std::fs::write(&host, &content).expect("file");
    // Evicts the whole file (ranges smaller than a large folio are not evicted), then
    // caches `cached` bytes at `from` without readahead.
    let cache_only = |from: u64, cached: usize| {
        use rustix::fs::{fadvise, Advice};
        let f = std::fs::File::open(&host).expect("open host file");
        f.sync_all().expect("fsync");
        fadvise(&f, 0, None, Advice::DontNeed).expect("fadvise DONTNEED");
        fadvise(&f, 0, None, Advice::Random).expect("fadvise RANDOM");
        let mut warm = vec![0; cached];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut warm, from).expect("warm");
    };
    let file = fs
        .open(&p("/f"), OpenFlags::READ, &FileAttributes::new())
        .await
        .expect("open");
    for (offset, len, cached) in [
        (0u64, 256 * 1024u32, 64 * 1024), // the first quarter cached
        (256 * 1024, 128 * 1024, 0),      // nothing cached
        (384 * 1024, 256 * 1024, 0),      // past the end, nothing cached
        (0, 64 * 1024, 64 * 1024),        // all cached
    ] {
        cache_only(offset, cached);
        let mut buf = BytesMut::with_capacity(8 + len as usize);
        buf.extend_from_slice(b"kept");
        let n = file.read(offset, len, &mut buf).await.expect("read");
        let end = (offset as usize + len as usize).min(content.len());
        assert_eq!(n, end - offset as usize, "no short read at {offset}");
        assert_eq!(&buf[..4], b"kept");
        assert_eq!(
            &buf[4..],
            &content[offset as usize..end],
            "bytes at {offset}"
        );
    }
    let mut buf = BytesMut::new();
    let err = file
        .read(content.len() as u64, 10, &mut buf)
        .await
        .expect_err("eof");
    assert!(matches!(err, FsError::Eof));
    assert!(buf.is_empty());
    file.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_batches_and_dot_entries() {
    let (dir, fs) = fresh();
    for i in 0..250 {
        std::fs::write(dir.path().join(format!("f{i}")), b"").expect("file");
    }
    std::fs::create_dir(dir.path().join("sub")).expect("sub");
    fs.symlink(b"f0", &p("/link")).await.expect("symlink");
    // Make the root's and the host parent's attributes tell apart.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o751),
    )
    .expect("chmod root");
    fs.setstat(
        &VPath::root(),
        &FileAttributes {
            times: Some(Times {
                atime: 123_456,
                mtime: 654_321,
            }),
            ..FileAttributes::new()
        },
    )
    .await
    .expect("root times");
    let root_attrs = fs.stat(&VPath::root()).await.expect("stat /");

    let batches = list(&fs, &VPath::root()).await;
    assert!(
        batches.iter().all(|b| b.len() <= 100),
        "batches of at most 100"
    );
    assert!(batches.len() >= 3);
    let entries: Vec<_> = batches.into_iter().flatten().collect();
    assert_eq!(entries.len(), 250 + 2 + 2, "files, sub, link, . and ..");
    let find = |name: &str| {
        let found: Vec<_> = entries.iter().filter(|e| e.name == name).collect();
        assert_eq!(found.len(), 1, "{name} listed once");
        found[0].clone()
    };
    // Listing reads the directory, so compare all but the access time.
    let key = |a: &FileAttributes| (a.permissions, a.owner, a.size, a.times.map(|t| t.mtime));
    assert_eq!(key(&find(".").attrs), key(&root_attrs));
    assert_eq!(
        key(&find("..").attrs),
        key(&root_attrs),
        "`..` of the root is the root, not the host's parent"
    );
    assert_eq!(find("link").attrs.file_type(), Some(FileType::Symlink));
    assert_eq!(find("f7").nlink, 1);
    assert!(find("sub").nlink >= 2);

    // `..` of a subdirectory, reached through a symlink, is its real parent: the root.
    fs.symlink(b"sub", &p("/sublink")).await.expect("symlink");
    let entries: Vec<_> = list(&fs, &p("/sublink"))
        .await
        .into_iter()
        .flatten()
        .collect();
    let dotdot = entries.iter().find(|e| e.name == "..").expect("..");
    assert_eq!(
        dotdot.attrs.times,
        fs.stat(&VPath::root()).await.expect("stat /").times
    );
    assert_eq!(dotdot.attrs.permissions, root_attrs.permissions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_itself() {
    let (_dir, fs) = fresh();
    let root = VPath::root();
    assert!(fs.lstat(&root).await.expect("lstat /").is_dir());
    for (what, err) in [
        ("remove /", fs.remove(&root).await.expect_err("remove /")),
        ("rmdir /", fs.rmdir(&root).await.expect_err("rmdir /")),
        (
            "rename /",
            fs.rename(&root, &p("/x"), RenameMode::NoReplace)
                .await
                .expect_err("rename /"),
        ),
    ] {
        assert_eq!(
            status(&err),
            StatusCode::PermissionDenied,
            "{what}: {err:?}"
        );
    }
    fs.mkdir(&p("/a"), &FileAttributes::new())
        .await
        .expect("mkdir");
    let err = fs
        .rename(&p("/a"), &root, RenameMode::Replace)
        .await
        .expect_err("rename onto /");
    assert_eq!(status(&err), StatusCode::PermissionDenied);
    let err = fs
        .mkdir(&root, &FileAttributes::new())
        .await
        .expect_err("mkdir /");
    assert!(matches!(err, FsError::AlreadyExists));
    let err = fs.readlink(&root).await.expect_err("readlink /");
    assert_eq!(status(&err), StatusCode::Failure);
    assert_eq!(fs.realpath(&root).await.expect("realpath"), root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_of_links_and_renames_onto_links() {
    let (dir, fs) = fresh();
    std::fs::write(dir.path().join("f"), b"f").expect("file");
    fs.symlink(b"f", &p("/link")).await.expect("symlink");
    // A hard link of a symlink is another symlink, not the file.
    fs.hardlink(&p("/link"), &p("/hard"))
        .await
        .expect("hardlink");
    assert_eq!(
        fs.lstat(&p("/hard")).await.expect("lstat").file_type(),
        Some(FileType::Symlink)
    );
    // A dangling symlink counts as an existing destination for RENAME.
    fs.symlink(b"nowhere", &p("/dangling"))
        .await
        .expect("symlink");
    std::fs::write(dir.path().join("g"), b"g").expect("file");
    let err = fs
        .rename(&p("/g"), &p("/dangling"), RenameMode::NoReplace)
        .await
        .expect_err("rename onto a dangling link");
    assert!(matches!(err, FsError::AlreadyExists), "{err:?}");
    // REMOVE of a directory is refused with "Is a directory".
    fs.mkdir(&p("/d"), &FileAttributes::new())
        .await
        .expect("mkdir");
    let err = fs.remove(&p("/d")).await.expect_err("remove dir");
    assert!(matches!(err, FsError::IsADirectory), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_names_never_show_host_paths() {
    let (dir, fs) = fresh();
    let host = dir.path().to_str().expect("utf-8").to_owned();
    std::fs::write(dir.path().join("f"), b"f").expect("file");
    fs.symlink(host.as_bytes(), &p("/hostlink"))
        .await
        .expect("symlink");
    let errors = [
        fs.stat(&p("/missing/x")).await.map(drop),
        fs.stat(&p("/f/x")).await.map(drop),
        fs.stat(&p("/hostlink")).await.map(drop),
        fs.opendir(&p("/f")).await.map(drop),
        fs.open(&p("/"), OpenFlags::READ, &FileAttributes::new())
            .await
            .map(drop),
        fs.rmdir(&p("/")).await,
        fs.rename(&p("/f"), &p("/nowhere/f"), RenameMode::NoReplace)
            .await,
        fs.realpath(&p("/missing/x")).await.map(drop),
    ];
    for result in errors {
        let err = result.expect_err("fails");
        let text = err.to_string();
        assert!(!text.contains(&host), "host path in {text:?}");
        assert!(!text.contains("/tmp"), "host path in {text:?}");
    }
    for path in ["/", "/f", "/missing", "/hostlink", "/hostlink/x"] {
        if let Ok(real) = fs.realpath(&p(path)).await {
            assert!(
                !real.to_string().contains(&host),
                "realpath {path} = {real}"
            );
        }
    }
    // The stored target is the client's own; READLINK returns it unchanged.
    assert_eq!(
        &fs.readlink(&p("/hostlink")).await.expect("readlink")[..],
        host.as_bytes()
    );
}

/// Reads `path` from `offset` to the end with `len`-byte READs, as a client does.
async fn read_to_end(file: &dyn sftpgate_vfs::File, mut offset: u64, len: u32) -> Vec<u8> {
    let mut all = Vec::new();
    loop {
        let mut buf = BytesMut::new();
        match file.read(offset, len, &mut buf).await {
            Ok(n) => {
                assert_eq!(n, buf.len());
                offset += n as u64;
                all.extend_from_slice(&buf);
            }
            Err(FsError::Eof) => return all,
            Err(e) => panic!("read at {offset}: {e}"),
        }
    }
}

/// Reads are sized by what the handle knows of the file (so a 255 KiB READ of a 4 KiB file
/// does not zero 255 KiB): a file that grew after OPEN, or whose size says nothing, must
/// still be read whole, on both runtimes (inline and on the pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_a_file_that_grew_after_open() {
    grows_after_open(fresh()).await;
}

#[tokio::test(flavor = "current_thread")]
async fn reads_see_a_file_that_grew_after_open_inline() {
    grows_after_open(fresh()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_a_file_that_grew_after_open_in_memory() {
    if let Some(root) = fresh_in_memory() {
        grows_after_open(root).await;
    }
}

async fn grows_after_open((dir, fs): (tempfile::TempDir, LocalFs)) {
    let host = dir.path().join("log");
    std::fs::write(&host, b"0123456789").expect("write");
    let file = fs
        .open(&p("/log"), OpenFlags::READ, &FileAttributes::default())
        .await
        .expect("open");
    let mut buf = BytesMut::new();
    assert_eq!(file.read(0, 261_120, &mut buf).await.expect("read"), 10);
    assert_eq!(&buf[..], b"0123456789");
    // Another writer appends 300 KiB after the OPEN.
    let more: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&host)
            .expect("reopen");
        f.write_all(&more).expect("append");
    }
    let rest = read_to_end(&*file, 10, 261_120).await;
    assert_eq!(rest, more, "every byte appended after OPEN is read");

    // Written through the handle itself: read back at once.
    let rw = fs
        .open(
            &p("/rw"),
            OpenFlags::READ | OpenFlags::WRITE | OpenFlags::CREAT,
            &FileAttributes::default(),
        )
        .await
        .expect("open rw");
    rw.write(0, Bytes::from(more.clone())).await.expect("write");
    assert_eq!(read_to_end(&*rw, 0, 32 * 1024).await, more);
}

/// A file whose size says 0 though it has content (as in /proc) is read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_a_file_whose_size_says_nothing() {
    let fs = LocalFs::new("/proc/self").expect("LocalFs::new /proc/self");
    let file = fs
        .open(&p("/status"), OpenFlags::READ, &FileAttributes::default())
        .await
        .expect("open /proc/self/status");
    let data = read_to_end(&*file, 0, 261_120).await;
    let text = String::from_utf8(data).expect("text");
    assert!(text.contains("Name:") && text.contains("VmRSS:"), "{text}");
}

/// With the root in memory, OPEN, STAT and LSTAT resolve on the calling thread as long as
/// the path stays on the root's filesystem, and fall back to the pool when it crosses a
/// mount point: both ways must give the same answers. `/dev` (devtmpfs, a memory
/// filesystem) is the root, with `/dev/shm` (a tmpfs of its own) mounted inside it. Skipped
/// (and says so) where the machine's `/dev` is not laid out like that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_across_a_mount_inside_a_memory_root() {
    const TMPFS_MAGIC: u64 = 0x0102_1994;
    let memory =
        |path: &str| rustix::fs::statfs(path).is_ok_and(|fs| fs.f_type as u64 == TMPFS_MAGIC);
    let dev = |path: &str| std::fs::metadata(path).map(|m| m.dev()).ok();
    if !(memory("/dev") && memory("/dev/shm") && dev("/dev") != dev("/dev/shm")) {
        eprintln!("skipping: needs /dev and /dev/shm as two memory filesystems");
        return;
    }
    let host = tempfile::tempdir_in("/dev/shm").expect("tempdir in /dev/shm");
    std::fs::write(host.path().join("f"), b"across").expect("file");
    let name = host
        .path()
        .file_name()
        .and_then(|n| n.to_str())
        .expect("name");
    let inside = |rest: &str| p(&format!("/shm/{name}/{rest}"));
    let fs = LocalFs::new("/dev").expect("LocalFs on /dev");

    // Across the mount: the pool's way.
    assert_eq!(fs.stat(&inside("f")).await.expect("stat").size, Some(6));
    assert_eq!(fs.lstat(&inside("f")).await.expect("lstat").size, Some(6));
    let shm = fs.stat(&p("/shm")).await.expect("stat of the mount point");
    assert_eq!(shm.file_type(), Some(FileType::Directory));
    let file = fs
        .open(&inside("f"), OpenFlags::READ, &FileAttributes::new())
        .await
        .expect("open across the mount");
    let mut buf = BytesMut::with_capacity(64);
    assert_eq!(file.read(0, 64, &mut buf).await.expect("read"), 6);
    assert_eq!(&buf[..], b"across");
    file.close().await.expect("close");
    let created = fs
        .open(
            &inside("new"),
            OpenFlags::WRITE | OpenFlags::CREAT | OpenFlags::EXCL,
            &FileAttributes::new(),
        )
        .await
        .expect("create across the mount");
    created
        .write(0, Bytes::from_static(b"x"))
        .await
        .expect("write");
    created.close().await.expect("close");
    assert_eq!(std::fs::read(host.path().join("new")).expect("host"), b"x");
    let err = fs
        .stat(&inside("missing"))
        .await
        .expect_err("missing across the mount");
    assert!(matches!(err, FsError::NotFound), "{err:?}");

    // On the root's own filesystem: inline, same rules.
    let null = fs.stat(&p("/null")).await.expect("stat /null");
    assert_eq!(null.file_type(), Some(FileType::CharDevice));
    let err = fs
        .open(&p("/null"), OpenFlags::READ, &FileAttributes::new())
        .await
        .err()
        .expect("a device is refused");
    assert_eq!(status(&err), StatusCode::Failure, "{err:?}");
    let err = fs
        .lstat(&p("/no-such-entry"))
        .await
        .expect_err("missing on the root's filesystem");
    assert!(matches!(err, FsError::NotFound), "{err:?}");
}

/// Bulk writes to a file in memory run inline when the file's write lane is idle and queue
/// for the pool while one runs (blocking.rs, `run_sized_or_when_idle`): many at once, from
/// tasks on both workers, all finish and the file reads back as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bulk_writes_to_a_file_in_memory_all_land() {
    let Some((dir, fs)) = fresh_in_memory() else {
        return;
    };
    const PIECE: usize = 255 * 1024;
    const PIECES: usize = 48;
    let file: std::sync::Arc<dyn sftpgate_vfs::File> = fs
        .open(
            &p("/bulk"),
            OpenFlags::WRITE | OpenFlags::CREAT | OpenFlags::TRUNC,
            &FileAttributes::default(),
        )
        .await
        .expect("open")
        .into();
    let content: Vec<u8> = (0..PIECE * PIECES).map(|i| (i % 253) as u8).collect();
    // All released at once, so that writes from both workers meet at the lane.
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(PIECES));
    let writes: Vec<_> = (0..PIECES)
        .map(|k| {
            let (file, start) = (file.clone(), start.clone());
            let piece = Bytes::copy_from_slice(&content[k * PIECE..(k + 1) * PIECE]);
            tokio::spawn(async move {
                start.wait().await;
                file.write((k * PIECE) as u64, piece).await
            })
        })
        .collect();
    for write in writes {
        tokio::time::timeout(Duration::from_secs(30), write)
            .await
            .expect("a write never finished")
            .expect("write task")
            .expect("write");
    }
    file.close().await.expect("close");
    let written = std::fs::read(dir.path().join("bulk")).expect("read back");
    assert!(written == content, "the file differs from what was written");
}

/// A file on tmpfs says its reads never wait (the server then reads it only a little
/// ahead of what it can send); a file on the temporary directory's filesystem says so
/// only if that is a tmpfs too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_in_memory_say_so() {
    let (dir, fs) = fresh();
    std::fs::write(dir.path().join("f"), b"x").expect("file");
    let file = fs
        .open(&p("/f"), OpenFlags::READ, &FileAttributes::new())
        .await
        .expect("open");
    let tmpfs = rustix::fs::statfs(dir.path()).is_ok_and(|fs| fs.f_type as u64 == 0x0102_1994);
    assert_eq!(file.reads_from_memory(), tmpfs);
    if let Some((dir, fs)) = fresh_in_memory() {
        std::fs::write(dir.path().join("f"), b"x").expect("file");
        let file = fs
            .open(&p("/f"), OpenFlags::READ, &FileAttributes::new())
            .await
            .expect("open");
        assert!(file.reads_from_memory());
    }
}
