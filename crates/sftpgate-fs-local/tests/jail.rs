//! The jail holds: hostile symlinks made by a client (relative `..` chains, absolute host
//! paths, directories pointing out, `..` loops) and by the administrator, used with every
//! operation, either resolve inside the root or fail; and afterwards nothing outside the
//! root changed, byte for byte, and no host path reached a client.
//!
//! Safety of the test itself: these tests run as root in CI, and a broken jail is exactly
//! the regression they exist to catch. So every target used with a *mutating* operation
//! lies inside the test's temporary directory even when resolved on the host: the root is
//! nested [`DEPTH`] levels deep (`..` chains land on canaries in the levels above) and
//! absolute targets name paths inside the tempdir. Host paths outside it (`/etc/passwd`,
//! `/proc/self/root`, `/`) are only ever read.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use sftpgate_fs_local::LocalFs;
use sftpgate_proto::{FileAttributes, OpenFlags, Times};
use sftpgate_vfs::{Filesystem, FsError, RenameMode, VPath};

const CANARY: &[u8] = b"CANARY-7f3a9c: must never be read, written or moved by a client\n";
const DECOY: &[u8] = b"decoy inside the root\n";
/// Levels between the tempdir and the host directory holding the root; more than any
/// `..` chain below climbs.
const DEPTH: usize = 12;

/// tempdir/l1/l2/…/l12/ (= `home`; every level also holds `canary` and `HOST-ONLY`)
///   canary           (CANARY)           ← the host file a client must never reach
///   HOST-ONLY
///   outside/secret   (CANARY)
///   outside/OUTSIDE-ONLY
///   root/            ← the session's `/`
///     canary         (DECOY)            ← where `../../canary` lands inside the root
///     inside         (a client's file)
struct Fixture {
    base: tempfile::TempDir,
    home: PathBuf,
    fs: LocalFs,
    before: BTreeMap<PathBuf, Snapshot>,
}

#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    content: Option<Vec<u8>>,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Fixture {
    fn new() -> Fixture {
        let base = tempfile::tempdir().expect("tempdir");
        let mut home = base.path().to_owned();
        for level in 1..=DEPTH {
            std::fs::write(home.join("canary"), CANARY).expect("canary");
            std::fs::write(home.join("HOST-ONLY"), b"").expect("marker");
            home.push(format!("l{level}"));
            std::fs::create_dir(&home).expect("level");
        }
        std::fs::write(home.join("canary"), CANARY).expect("canary");
        std::fs::write(home.join("HOST-ONLY"), b"").expect("marker");
        std::fs::create_dir(home.join("outside")).expect("outside dir");
        std::fs::write(home.join("outside/secret"), CANARY).expect("secret");
        std::fs::write(home.join("outside/OUTSIDE-ONLY"), b"").expect("marker");
        let root = home.join("root");
        std::fs::create_dir(&root).expect("root");
        std::fs::write(root.join("canary"), DECOY).expect("decoy");
        std::fs::write(root.join("inside"), b"client data").expect("inside");
        let fs = LocalFs::new(&root).expect("LocalFs::new");
        let mut fixture = Fixture {
            base,
            home,
            fs,
            before: BTreeMap::new(),
        };
        fixture.before = fixture.outside_snapshot();
        fixture
    }

    /// A path in the host directory that holds the root.
    fn host(&self, relative: &str) -> PathBuf {
        self.home.join(relative)
    }

    fn host_str(&self, relative: &str) -> String {
        self.host(relative)
            .to_str()
            .expect("utf-8 tempdir")
            .to_owned()
    }

    /// Everything in the tempdir except `root/`, with its content and metadata.
    fn outside_snapshot(&self) -> BTreeMap<PathBuf, Snapshot> {
        fn walk(dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, Snapshot>) {
            for entry in std::fs::read_dir(dir).expect("read_dir") {
                let path = entry.expect("entry").path();
                if path == skip {
                    continue;
                }
                let meta = std::fs::symlink_metadata(&path).expect("lstat");
                out.insert(
                    path.clone(),
                    Snapshot {
                        content: meta.is_file().then(|| std::fs::read(&path).expect("read")),
                        mode: meta.mode(),
                        uid: meta.uid(),
                        gid: meta.gid(),
                        nlink: meta.nlink(),
                        mtime: (meta.mtime(), meta.mtime_nsec()),
                        ctime: (meta.ctime(), meta.ctime_nsec()),
                    },
                );
                if meta.is_dir() {
                    walk(&path, skip, out);
                }
            }
        }
        let mut out = BTreeMap::new();
        let base = self.base.path();
        let meta = std::fs::metadata(base).expect("stat base");
        out.insert(
            base.to_owned(),
            Snapshot {
                content: None,
                mode: meta.mode(),
                uid: meta.uid(),
                gid: meta.gid(),
                nlink: meta.nlink(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                ctime: (meta.ctime(), meta.ctime_nsec()),
            },
        );
        walk(base, &self.home.join("root"), &mut out);
        out
    }

    /// Nothing outside the root changed: same names, same bytes, same metadata.
    fn assert_outside_untouched(&self) {
        let after = self.outside_snapshot();
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            self.before.keys().collect::<Vec<_>>(),
            "files appeared or vanished outside the root"
        );
        for (path, before) in &self.before {
            assert_eq!(&after[path], before, "{} changed", path.display());
        }
        assert_eq!(std::fs::read(self.host("canary")).expect("canary"), CANARY);
    }

    /// A result that may fail, but whose error must not name a host path.
    fn allowed<T>(&self, what: &str, result: Result<T, FsError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.assert_no_host_path(what, e.to_string().as_bytes());
                None
            }
        }
    }

    fn assert_no_host_path(&self, what: &str, text: &[u8]) {
        let base = self.base.path().as_os_str().as_encoded_bytes();
        assert!(
            !text.windows(base.len()).any(|w| w == base),
            "{what}: host path in {:?}",
            String::from_utf8_lossy(text)
        );
    }
}

fn p(path: &str) -> VPath {
    VPath::parse(path.as_bytes()).expect("test path")
}

async fn read_all(fs: &LocalFs, path: &VPath) -> Result<Vec<u8>, FsError> {
    let file = fs
        .open(path, OpenFlags::READ, &FileAttributes::new())
        .await?;
    let mut buf = BytesMut::new();
    loop {
        match file.read(buf.len() as u64, 4096, &mut buf).await {
            Ok(_) => {}
            Err(FsError::Eof) => break,
            Err(e) => return Err(e),
        }
    }
    file.close().await?;
    Ok(buf.to_vec())
}

async fn write_all(fs: &LocalFs, path: &VPath, flags: OpenFlags) -> Result<(), FsError> {
    let file = fs.open(path, flags, &FileAttributes::new()).await?;
    file.write(0, Bytes::from_static(b"PWNED")).await?;
    file.close().await
}

async fn list(fs: &LocalFs, path: &VPath) -> Result<Vec<Vec<u8>>, FsError> {
    let mut dir = fs.opendir(path).await?;
    let mut names = Vec::new();
    loop {
        let batch = dir.next_batch().await?;
        if batch.is_empty() {
            return Ok(names);
        }
        names.extend(batch.into_iter().map(|e| e.name.to_vec()));
    }
}

/// Every operation through `path` (a hostile link, or a path below one): reads never see
/// the canary, listings never show the base directory, realpath never names the host.
async fn attack(f: &Fixture, path: &str) {
    let fs = &f.fs;
    let path = p(path);
    let what = |op: &str| format!("{op} {path}");

    if let Some(data) = f.allowed(&what("read"), read_all(fs, &path).await) {
        assert_ne!(data, CANARY, "{} read the canary", what("read"));
    }
    if let Some(attrs) = f.allowed(&what("stat"), fs.stat(&path).await) {
        assert_ne!(attrs.size, Some(CANARY.len() as u64), "{}", what("stat"));
    }
    f.allowed(&what("lstat"), fs.lstat(&path).await);
    if let Some(names) = f.allowed(&what("opendir"), list(fs, &path).await) {
        // Names only the host directories have (a client may create `outside` or
        // `secret` inside the root through a dangling link, legitimately).
        for forbidden in [&b"root"[..], b"HOST-ONLY", b"OUTSIDE-ONLY"] {
            assert!(
                !names.iter().any(|n| n == forbidden),
                "{} lists the host's {:?}",
                what("opendir"),
                String::from_utf8_lossy(forbidden)
            );
        }
    }
    if let Some(real) = f.allowed(&what("realpath"), fs.realpath(&path).await) {
        f.assert_no_host_path(&what("realpath"), real.as_bytes());
    }
    f.allowed(&what("readlink"), fs.readlink(&path).await);
    f.allowed(&what("statvfs"), fs.statvfs(&path).await);

    for flags in [
        OpenFlags::WRITE,
        OpenFlags::WRITE | OpenFlags::APPEND,
        OpenFlags::WRITE | OpenFlags::CREAT | OpenFlags::TRUNC,
        OpenFlags::READ | OpenFlags::WRITE | OpenFlags::CREAT,
    ] {
        f.allowed(&what("write"), write_all(fs, &path, flags).await);
    }
    let attrs = FileAttributes {
        permissions: Some(0o777),
        times: Some(Times { atime: 1, mtime: 1 }),
        owner: Some(sftpgate_proto::Owner {
            uid: 4242,
            gid: 4242,
        }),
        ..FileAttributes::new()
    };
    f.allowed(&what("setstat"), fs.setstat(&path, &attrs).await);
    let truncate = FileAttributes {
        size: Some(0),
        ..FileAttributes::new()
    };
    f.allowed(&what("setstat size"), fs.setstat(&path, &truncate).await);
    f.allowed(&what("lsetstat"), fs.lsetstat(&path, &attrs).await);
    f.allowed(&what("statvfs"), fs.statvfs(&path).await);

    // Links, renames and new names below or onto the path.
    f.allowed(
        &what("hardlink from"),
        fs.hardlink(&path, &p("/hl-from")).await,
    );
    f.allowed(
        &what("hardlink to"),
        fs.hardlink(&p("/inside"), &path).await,
    );
    if let Ok(below) = path.join_name(b"new") {
        f.allowed(
            &what("mkdir below"),
            fs.mkdir(&below, &FileAttributes::new()).await,
        );
        f.allowed(&what("symlink below"), fs.symlink(b"/", &below).await);
        f.allowed(&what("rmdir below"), fs.rmdir(&below).await);
        f.allowed(&what("remove below"), fs.remove(&below).await);
    }
    f.allowed(&what("remove"), fs.remove(&path).await);
    f.allowed(&what("rmdir"), fs.rmdir(&path).await);
}

/// Moves in and out of the path, which may be hostile; restores `/inside` afterwards.
async fn rename_attack(f: &Fixture, path: &str) {
    let fs = &f.fs;
    let path = p(path);
    for mode in [RenameMode::NoReplace, RenameMode::Replace] {
        // Out of: whatever `path` names must not come into the root from outside.
        if f.allowed(
            &format!("rename out of {path}"),
            fs.rename(&path, &p("/stolen"), mode).await,
        )
        .is_some()
        {
            if let Ok(data) = read_all(fs, &p("/stolen")).await {
                assert_ne!(data, CANARY, "rename brought the canary in");
            }
            let _ = fs.rename(&p("/stolen"), &path, RenameMode::Replace).await;
        }
        // Into: a client file sent through the path must stay inside.
        let _ = write_all(
            fs,
            &p("/mover"),
            OpenFlags::WRITE | OpenFlags::CREAT | OpenFlags::TRUNC,
        )
        .await;
        f.allowed(
            &format!("rename into {path}"),
            fs.rename(&p("/mover"), &path, mode).await,
        );
    }
}

fn hostile_links(f: &Fixture) -> Vec<(String, Vec<u8>)> {
    vec![
        ("/rel".into(), b"../../canary".to_vec()),
        ("/rel1".into(), b"../canary".to_vec()),
        (
            "/rel_deep".into(),
            b"../../../../../../../../../../canary".to_vec(),
        ),
        ("/abs".into(), f.host_str("canary").into_bytes()),
        (
            "/absdir".into(),
            f.home.as_os_str().as_encoded_bytes().to_vec(),
        ),
        ("/outdir".into(), b"../outside".to_vec()),
        ("/outdir_abs".into(), f.host_str("outside").into_bytes()),
        ("/secret".into(), b"../outside/secret".to_vec()),
        ("/up".into(), b"..".to_vec()),
        ("/dotdot_dir".into(), b"../..".to_vec()),
        ("/create_out".into(), b"../../created-through-link".to_vec()),
        ("/loop".into(), b"loop".to_vec()),
    ]
}

fn targets_below(name: &str) -> Vec<String> {
    vec![
        name.to_owned(),
        format!("{name}/canary"),
        format!("{name}/secret"),
        format!("{name}/outside/secret"),
        format!("{name}/root/canary"),
        format!("{name}/up/up/canary"),
        format!("{name}/x"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_symlinks_stay_inside() {
    let f = Fixture::new();
    let links = hostile_links(&f);
    for (link, target) in &links {
        f.fs.symlink(target, &p(link))
            .await
            .unwrap_or_else(|e| panic!("symlink {link}: {e:?}"));
        assert_eq!(
            &f.fs.readlink(&p(link)).await.expect("readlink")[..],
            &target[..]
        );
    }
    for (link, target) in &links {
        for path in targets_below(link) {
            // Put back the link an earlier attack may have removed or replaced.
            let _ = f.fs.remove(&p(link)).await;
            let _ = f.fs.rmdir(&p(link)).await;
            f.fs.symlink(target, &p(link))
                .await
                .expect("re-create link");
            attack(&f, &path).await;
        }
        rename_attack(&f, &format!("{link}/secret")).await;
        rename_attack(&f, &format!("{link}/canary")).await;
        f.assert_outside_untouched();
    }
    rename_attack(&f, "/rel").await;
    f.assert_outside_untouched();
    assert!(!f
        .home
        .parent()
        .expect("level")
        .join("created-through-link")
        .exists());
    assert_eq!(
        std::fs::read(f.host("outside/secret")).expect("secret"),
        CANARY
    );
}

/// Positive evidence that resolution is a chroot's: `..` stops at the root, absolute
/// targets start from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn links_resolve_like_a_chroot() {
    let f = Fixture::new();
    let fs = &f.fs;
    for (link, target) in hostile_links(&f) {
        fs.symlink(&target, &p(&link)).await.expect("symlink");
    }
    // `../../canary` and `..`-chains land on the decoy inside the root.
    for path in [
        "/rel",
        "/rel1",
        "/rel_deep",
        "/up/canary",
        "/up/up/up/up/canary",
        "/dotdot_dir/canary",
    ] {
        assert_eq!(read_all(fs, &p(path)).await.expect(path), DECOY, "{path}");
    }
    assert_eq!(
        fs.realpath(&p("/up/up/up")).await.expect("realpath"),
        VPath::root()
    );
    assert_eq!(
        fs.realpath(&p("/rel")).await.expect("realpath"),
        p("/canary")
    );
    assert_eq!(
        fs.realpath(&p("/dotdot_dir")).await.expect("realpath"),
        VPath::root()
    );
    // The root's listing through `/up/up` is the root's.
    let names = list(fs, &p("/up/up")).await.expect("list");
    assert!(names.iter().any(|n| n == b"inside"));
    // Absolute host paths are looked up inside the root, where they do not exist.
    let err = read_all(fs, &p("/abs"))
        .await
        .expect_err("absolute host path");
    assert!(matches!(err, FsError::NotFound), "{err:?}");
    f.assert_no_host_path("error", err.to_string().as_bytes());
    // Host paths outside the tempdir: only read, never written (see the module docs).
    fs.symlink(b"/etc/passwd", &p("/passwd"))
        .await
        .expect("symlink");
    fs.symlink(b"/proc/self/root", &p("/procroot"))
        .await
        .expect("symlink");
    for path in ["/passwd", "/procroot", "/procroot/etc/passwd"] {
        let err = fs.stat(&p(path)).await.expect_err(path);
        assert!(matches!(err, FsError::NotFound), "{path}: {err:?}");
        let err = read_all(fs, &p(path)).await.expect_err(path);
        assert!(matches!(err, FsError::NotFound), "{path}: {err:?}");
    }
    let err = list(fs, &p("/procroot")).await.expect_err("/procroot");
    assert!(matches!(err, FsError::NotFound), "{err:?}");
    // Mirror the host path inside the root: now it resolves, to the file inside.
    let mirror = f
        .host("root")
        .join(f.host("canary").strip_prefix("/").expect("absolute"));
    std::fs::create_dir_all(mirror.parent().expect("parent")).expect("mkdir -p");
    std::fs::write(&mirror, DECOY).expect("mirror");
    assert_eq!(read_all(fs, &p("/abs")).await.expect("mirrored"), DECOY);
    // A write through a dangling `../..` link creates the file inside the root.
    write_all(fs, &p("/create_out"), OpenFlags::WRITE | OpenFlags::CREAT)
        .await
        .expect("create through link");
    assert!(f.host("root/created-through-link").exists());
    assert!(!f
        .home
        .parent()
        .expect("level")
        .join("created-through-link")
        .exists());
    // A symlink loop is an error, not a hang.
    let err = fs.stat(&p("/loop")).await.expect_err("loop");
    assert!(matches!(err, FsError::SymlinkLoop), "{err:?}");
    f.assert_outside_untouched();
}

/// Symlinks the administrator planted inside the root (with the host's view of paths)
/// are resolved inside the root too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_symlinks_stay_inside() {
    let f = Fixture::new();
    let root = f.host("root");
    std::os::unix::fs::symlink(f.host("canary"), root.join("admin_abs")).expect("symlink");
    std::os::unix::fs::symlink(&f.home, root.join("admin_home")).expect("symlink");
    std::os::unix::fs::symlink(f.host("outside"), root.join("admin_outside")).expect("symlink");
    std::os::unix::fs::symlink("../canary", root.join("admin_rel")).expect("symlink");
    std::os::unix::fs::symlink("/", root.join("admin_slash")).expect("symlink");
    assert_eq!(
        read_all(&f.fs, &p("/admin_rel")).await.expect("in root"),
        DECOY
    );
    let names = list(&f.fs, &p("/admin_slash")).await.expect("list /");
    assert!(names.iter().any(|n| n == b"inside"), "`/` is the root");
    let err = f.fs.stat(&p("/admin_abs")).await.expect_err("host path");
    assert!(matches!(err, FsError::NotFound), "{err:?}");
    // `/admin_slash` (the host's `/`) is only read, above.
    for link in ["/admin_abs", "/admin_home", "/admin_outside", "/admin_rel"] {
        for path in targets_below(link) {
            attack(&f, &path).await;
        }
        rename_attack(&f, &format!("{link}/secret")).await;
        f.assert_outside_untouched();
    }
}

/// If the administrator moves the root directory itself, the session keeps working on the
/// moved directory and REALPATH stays relative to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_moved_by_admin() {
    let f = Fixture::new();
    f.fs.mkdir(&p("/sub"), &FileAttributes::new())
        .await
        .expect("mkdir");
    std::fs::rename(f.host("root"), f.host("moved-root")).expect("move root");
    assert_eq!(
        read_all(&f.fs, &p("/inside")).await.expect("read"),
        b"client data"
    );
    assert_eq!(
        f.fs.realpath(&p("/sub")).await.expect("realpath"),
        p("/sub")
    );
    assert_eq!(
        f.fs.realpath(&VPath::root()).await.expect("realpath"),
        VPath::root()
    );
}
