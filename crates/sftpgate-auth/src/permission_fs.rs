//! [`PermissionFs`]: a [`Filesystem`] decorator that enforces a user's [`PermissionTable`]
//! on every operation before the inner filesystem sees it, refusing with
//! [`FsError::Forbidden`] (PERMISSION_DENIED) and a message naming the missing permission
//! and the virtual path.
//!
//! # The mapping
//!
//! | operation | needs, on the path's longest matching rule |
//! |---|---|
//! | OPENDIR (and so READDIR) | `list` |
//! | STAT, LSTAT, READLINK, STATVFS | `list` or `download` |
//! | REALPATH | `list` or `download`; `/` always (clients resolve `.` at start) |
//! | OPEN for reading (READ, or no access flag) | `download` |
//! | OPEN with WRITE/APPEND/CREAT/TRUNC of a file that does not exist | `upload` |
//! | OPEN with WRITE/APPEND/CREAT/TRUNC of an existing file | `overwrite` |
//! | READ+WRITE | both of the above |
//! | SETSTAT, LSETSTAT, FSETSTAT | `chattr`, plus `overwrite` if it sets the size |
//! | REMOVE, RMDIR | `delete` |
//! | MKDIR | `mkdir` |
//! | RENAME, posix-rename | `rename` on source and destination; `overwrite` on the destination if it exists (posix-rename) |
//! | SYMLINK | `symlink` on the link |
//! | hardlink | `symlink` and `upload` on the new name, `download` on the existing file |
//!
//! `upload` and `overwrite` are independent: `upload` alone is a drop box (new files only,
//! nothing replaced); `overwrite` alone lets a user update existing files but not add any.
//! Whether the file exists is read with a STAT first; the race with a concurrent change is
//! closed by adjusting the flags passed on: without `overwrite` a create gets `EXCL` (an
//! existing file then fails with "File exists"), without `upload` a write to an existing
//! file loses `CREAT` (a file deleted meanwhile is not re-created).
//!
//! Links must not grant more than their target: a symlink (its target resolved lexically
//! against the link's directory) or hard link is refused unless everything allowed at the
//! link's path is also allowed at the target's path; otherwise a link in a writable area
//! could reach into a read-only or hidden one. Renames are refused when a rule exists
//! strictly below the source or the destination, since the move would change which rule
//! governs the entries below it. Links already in the tree (made by an administrator) are
//! trusted.
//!
//! Reads, writes and closes on an open handle are not checked again: the handle was
//! checked when it was opened (copy-data needs a handle open for reading and one open for
//! writing, so it is covered too).
//!
//! A session keeps the table it was built with: changes in the store apply to new sessions.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use sftpgate_proto::{FileAttributes, OpenFlags, StatvfsReply, UsersGroupsReply, WriteData};
use sftpgate_vfs::{Dir, EndReason, File, Filesystem, FsError, ReadPart, RenameMode, VPath};

use crate::permissions::{PermissionTable, Permissions};

/// Enforces a [`PermissionTable`] on an inner filesystem (see the module docs for the
/// mapping).
pub struct PermissionFs {
    inner: Arc<dyn Filesystem>,
    table: Arc<PermissionTable>,
}

impl PermissionFs {
    /// Wraps `inner` with `table`.
    pub fn new(inner: Arc<dyn Filesystem>, table: PermissionTable) -> PermissionFs {
        PermissionFs {
            inner,
            table: Arc::new(table),
        }
    }

    /// The rules enforced.
    pub fn table(&self) -> &PermissionTable {
        &self.table
    }

    /// The flags granted on `path`, if they include `needed`.
    fn require(&self, path: &VPath, needed: Permissions) -> Result<Permissions, FsError> {
        let granted = self.table.for_path(path);
        match (needed - granted).iter().next() {
            None => Ok(granted),
            Some(missing) => Err(denied(missing.name(), path)),
        }
    }

    /// `list` or `download` on `path`: enough to see that it exists and what it is.
    fn require_visible(&self, path: &VPath) -> Result<(), FsError> {
        if self
            .table
            .for_path(path)
            .intersects(Permissions::LIST | Permissions::DOWNLOAD)
        {
            Ok(())
        } else {
            Err(denied("list or download", path))
        }
    }

    /// What changing `attrs` needs.
    fn require_setstat(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
        setstat_needs(attrs).map_or(Ok(()), |needed| self.require(path, needed).map(drop))
    }

    /// A link at `link` to `target` must not grant more than `target`'s own rule.
    fn require_no_escalation(&self, link: &VPath, target: &VPath) -> Result<(), FsError> {
        let (at_link, at_target) = (self.table.for_path(link), self.table.for_path(target));
        if at_target.contains(at_link) {
            return Ok(());
        }
        let extra = at_link - at_target;
        Err(FsError::Forbidden(Cow::Owned(format!(
            "a link at {link} would grant {extra_names} on {target}",
            extra_names = display_names(extra),
        ))))
    }
}

/// What a SETSTAT with `attrs` needs; `None` if it changes nothing.
fn setstat_needs(attrs: &FileAttributes) -> Option<Permissions> {
    let changes_something = attrs.size.is_some()
        || attrs.owner.is_some()
        || attrs.permissions.is_some()
        || attrs.times.is_some()
        || !attrs.extended.is_empty();
    if !changes_something {
        return None;
    }
    let mut needed = Permissions::CHATTR;
    if attrs.size.is_some() {
        needed |= Permissions::OVERWRITE;
    }
    Some(needed)
}

fn denied(what: &str, path: &VPath) -> FsError {
    FsError::Forbidden(Cow::Owned(format!("no {what} permission on {path}")))
}

fn display_names(perms: Permissions) -> String {
    perms
        .iter()
        .map(Permissions::name)
        .collect::<Vec<_>>()
        .join(", ")
}

const WRITE_FLAGS: OpenFlags = OpenFlags::WRITE
    .union(OpenFlags::APPEND)
    .union(OpenFlags::CREAT)
    .union(OpenFlags::TRUNC);

#[async_trait::async_trait]
impl Filesystem for PermissionFs {
    async fn open(
        &self,
        path: &VPath,
        flags: OpenFlags,
        attrs: &FileAttributes,
    ) -> Result<Box<dyn File>, FsError> {
        let writes = flags.intersects(WRITE_FLAGS);
        let reads = flags.contains(OpenFlags::READ) || !writes;
        let granted = self.table.for_path(path);
        if reads {
            self.require(path, Permissions::DOWNLOAD)?;
        }
        let mut flags = flags;
        // With both upload and overwrite granted, whether the file exists decides nothing
        // here: no lookup (a system call per OPEN for writing, most of them).
        let both = granted.contains(Permissions::UPLOAD | Permissions::OVERWRITE);
        if writes && !both {
            // Refuse before looking, so that existence is not revealed where nothing may
            // be written.
            if !granted.intersects(Permissions::UPLOAD | Permissions::OVERWRITE) {
                let what = if flags.contains(OpenFlags::CREAT) {
                    "upload"
                } else {
                    "overwrite"
                };
                return Err(denied(what, path));
            }
            let exists = match self.inner.stat(path).await {
                Ok(_) => true,
                Err(FsError::NotFound) => false,
                Err(e) => return Err(e),
            };
            if exists {
                self.require(path, Permissions::OVERWRITE)?;
                if !granted.contains(Permissions::UPLOAD) {
                    flags.remove(OpenFlags::CREAT);
                }
            } else if flags.contains(OpenFlags::CREAT) {
                self.require(path, Permissions::UPLOAD)?;
                if !granted.contains(Permissions::OVERWRITE) {
                    flags.insert(OpenFlags::EXCL);
                }
            }
        }
        let file = self.inner.open(path, flags, attrs).await?;
        Ok(Box::new(PermissionFile {
            inner: file,
            path: path.clone(),
            granted,
        }))
    }

    async fn opendir(&self, path: &VPath) -> Result<Box<dyn Dir>, FsError> {
        self.require(path, Permissions::LIST)?;
        self.inner.opendir(path).await
    }

    async fn stat(&self, path: &VPath) -> Result<FileAttributes, FsError> {
        self.require_visible(path)?;
        self.inner.stat(path).await
    }

    async fn lstat(&self, path: &VPath) -> Result<FileAttributes, FsError> {
        self.require_visible(path)?;
        self.inner.lstat(path).await
    }

    async fn setstat(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
        self.require_setstat(path, attrs)?;
        self.inner.setstat(path, attrs).await
    }

    async fn lsetstat(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
        self.require_setstat(path, attrs)?;
        self.inner.lsetstat(path, attrs).await
    }

    async fn remove(&self, path: &VPath) -> Result<(), FsError> {
        self.require(path, Permissions::DELETE)?;
        self.inner.remove(path).await
    }

    async fn mkdir(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
        self.require(path, Permissions::MKDIR)?;
        self.inner.mkdir(path, attrs).await
    }

    async fn rmdir(&self, path: &VPath) -> Result<(), FsError> {
        self.require(path, Permissions::DELETE)?;
        self.inner.rmdir(path).await
    }

    async fn rename(&self, from: &VPath, to: &VPath, mode: RenameMode) -> Result<(), FsError> {
        self.require(from, Permissions::RENAME)?;
        self.require(to, Permissions::RENAME)?;
        for path in [from, to] {
            if self.table.has_rules_below(path) {
                return Err(FsError::Forbidden(Cow::Owned(format!(
                    "cannot rename {path}: paths below it have their own permissions"
                ))));
            }
        }
        if mode == RenameMode::Replace {
            match self.inner.lstat(to).await {
                Ok(_) => {
                    self.require(to, Permissions::OVERWRITE)?;
                }
                Err(FsError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        self.inner.rename(from, to, mode).await
    }

    async fn readlink(&self, path: &VPath) -> Result<Bytes, FsError> {
        self.require_visible(path)?;
        self.inner.readlink(path).await
    }

    async fn symlink(&self, target: &[u8], link: &VPath) -> Result<(), FsError> {
        self.require(link, Permissions::SYMLINK)?;
        let base = link.parent().unwrap_or_else(VPath::root);
        let resolved = VPath::resolve(&base, target)?;
        self.require_no_escalation(link, &resolved)?;
        self.inner.symlink(target, link).await
    }

    async fn hardlink(&self, existing: &VPath, new: &VPath) -> Result<(), FsError> {
        self.require(new, Permissions::SYMLINK | Permissions::UPLOAD)?;
        self.require(existing, Permissions::DOWNLOAD)?;
        self.require_no_escalation(new, existing)?;
        self.inner.hardlink(existing, new).await
    }

    async fn realpath(&self, path: &VPath) -> Result<VPath, FsError> {
        if !path.is_root() {
            self.require_visible(path)?;
        }
        self.inner.realpath(path).await
    }

    async fn statvfs(&self, path: &VPath) -> Result<StatvfsReply, FsError> {
        self.require_visible(path)?;
        self.inner.statvfs(path).await
    }

    async fn names_by_id(&self, uids: &[u32], gids: &[u32]) -> Result<UsersGroupsReply, FsError> {
        self.inner.names_by_id(uids, gids).await
    }

    async fn exit(&self, reason: &EndReason) {
        self.inner.exit(reason).await;
    }
}

/// An open file: FSETSTAT is checked against the flags granted on its path when it was
/// opened; everything else was decided by the open.
struct PermissionFile {
    inner: Box<dyn File>,
    path: VPath,
    granted: Permissions,
}

#[async_trait::async_trait]
impl File for PermissionFile {
    async fn read(&self, offset: u64, len: u32, buf: &mut BytesMut) -> Result<usize, FsError> {
        self.inner.read(offset, len, buf).await
    }
    fn read_len_hint(&self, offset: u64, len: u32) -> Option<u32> {
        self.inner.read_len_hint(offset, len)
    }
    fn reads_from_memory(&self) -> bool {
        self.inner.reads_from_memory()
    }
    async fn read_parts(&self, offset: u64, parts: &mut [ReadPart]) -> Result<usize, FsError> {
        self.inner.read_parts(offset, parts).await
    }
    async fn write(&self, offset: u64, data: Bytes) -> Result<(), FsError> {
        self.inner.write(offset, data).await
    }
    async fn write_data(&self, offset: u64, data: WriteData) -> Result<(), FsError> {
        self.inner.write_data(offset, data).await
    }
    async fn stat(&self) -> Result<FileAttributes, FsError> {
        self.inner.stat().await
    }
    async fn setstat(&self, attrs: &FileAttributes) -> Result<(), FsError> {
        if let Some(needed) = setstat_needs(attrs) {
            if let Some(missing) = (needed - self.granted).iter().next() {
                return Err(denied(missing.name(), &self.path));
            }
        }
        self.inner.setstat(attrs).await
    }
    async fn sync(&self) -> Result<(), FsError> {
        self.inner.sync().await
    }
    async fn statvfs(&self) -> Result<StatvfsReply, FsError> {
        self.inner.statvfs().await
    }
    async fn close(&self) -> Result<(), FsError> {
        self.inner.close().await
    }
    async fn abandon(&self) -> Result<(), FsError> {
        self.inner.abandon().await
    }
}

#[cfg(test)]
mod tests {
    use sftpgate_fs_local::LocalFs;
    use sftpgate_proto::StatusCode;
    use tempfile::TempDir;

    use super::*;
    use crate::permissions::PermissionRule;

    /// A tempdir with `/pub/a.txt`, `/in/existing.txt`, `/in/empty/`, `/out/o.txt`,
    /// `/secret/s.txt`, wrapped with `rules` (`(prefix, flags)`).
    fn fixture(rules: &[(&str, &str)]) -> (TempDir, PermissionFs) {
        let dir = tempfile::tempdir().expect("a tempdir");
        for d in ["pub", "in", "in/empty", "out", "secret"] {
            std::fs::create_dir(dir.path().join(d)).expect("mkdir");
        }
        for f in ["pub/a.txt", "in/existing.txt", "out/o.txt", "secret/s.txt"] {
            std::fs::write(dir.path().join(f), f).expect("write");
        }
        let local = LocalFs::new(dir.path()).expect("openat2 works here");
        let table = PermissionTable::new(rules.iter().map(|(prefix, flags)| PermissionRule {
            prefix: p(prefix),
            permissions: flags.parse().expect("flags"),
        }));
        (dir, PermissionFs::new(Arc::new(local), table))
    }

    fn p(path: &str) -> VPath {
        VPath::parse(path.as_bytes()).expect("a path")
    }

    /// Asserts `result` is Forbidden with `message` and maps to PERMISSION_DENIED.
    fn check_denied<T>(result: Result<T, FsError>, message: &str) {
        let Err(err) = result else {
            panic!("allowed, expected: {message}");
        };
        assert!(matches!(err, FsError::Forbidden(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("Permission denied: {message}"),
            "{err:?}"
        );
        assert_eq!(StatusCode::from(&err), StatusCode::PermissionDenied);
    }

    fn check_ok<T>(result: Result<T, FsError>, what: &str) -> T {
        result.unwrap_or_else(|e| panic!("{what}: {e:?}"))
    }

    const READ: OpenFlags = OpenFlags::READ;
    fn create() -> OpenFlags {
        OpenFlags::WRITE | OpenFlags::CREAT | OpenFlags::TRUNC
    }
    fn attrs() -> FileAttributes {
        FileAttributes::default()
    }
    fn chmod() -> FileAttributes {
        FileAttributes {
            permissions: Some(0o600),
            ..FileAttributes::default()
        }
    }
    fn truncate() -> FileAttributes {
        FileAttributes {
            size: Some(0),
            ..FileAttributes::default()
        }
    }

    async fn write_new(fs: &PermissionFs, path: &str) -> Result<(), FsError> {
        let file = fs.open(&p(path), create(), &attrs()).await?;
        file.write(0, Bytes::from_static(b"data")).await?;
        file.close().await
    }

    #[tokio::test]
    async fn no_rules_allow_everything() {
        let (dir, fs) = fixture(&[]);
        assert!(fs.table().is_unrestricted());
        check_ok(write_new(&fs, "/secret/new").await, "upload");
        check_ok(write_new(&fs, "/secret/new").await, "overwrite");
        check_ok(fs.mkdir(&p("/secret/d"), &attrs()).await, "mkdir");
        check_ok(fs.remove(&p("/secret/s.txt")).await, "remove");
        check_ok(fs.opendir(&p("/")).await, "list /");
        assert!(dir.path().join("secret/new").exists());
    }

    #[tokio::test]
    async fn opendir_needs_list() {
        let (_dir, fs) = fixture(&[("/pub", "list"), ("/out", "download")]);
        let mut listing = check_ok(fs.opendir(&p("/pub")).await, "list /pub");
        assert!(!check_ok(listing.next_batch().await, "readdir").is_empty());
        check_denied(fs.opendir(&p("/out")).await, "no list permission on /out");
        check_denied(fs.opendir(&p("/")).await, "no list permission on /");
    }

    #[tokio::test]
    async fn stat_needs_list_or_download() {
        let (_dir, fs) = fixture(&[("/pub", "list"), ("/out", "download"), ("/in", "upload")]);
        check_ok(fs.stat(&p("/pub/a.txt")).await, "stat with list");
        check_ok(fs.lstat(&p("/out/o.txt")).await, "lstat with download");
        check_denied(
            fs.stat(&p("/in/existing.txt")).await,
            "no list or download permission on /in/existing.txt",
        );
        check_denied(
            fs.lstat(&p("/in/existing.txt")).await,
            "no list or download permission on /in/existing.txt",
        );
        // Denied before the backend is asked: no difference between present and absent.
        check_denied(
            fs.stat(&p("/secret/nothing")).await,
            "no list or download permission on /secret/nothing",
        );
    }

    #[tokio::test]
    async fn readlink_statvfs_and_realpath_need_visibility() {
        let (dir, fs) = fixture(&[("/pub", "list"), ("/in", "upload")]);
        std::os::unix::fs::symlink("a.txt", dir.path().join("pub/link")).unwrap();
        std::os::unix::fs::symlink("x", dir.path().join("in/link")).unwrap();
        assert_eq!(
            check_ok(fs.readlink(&p("/pub/link")).await, "readlink"),
            Bytes::from_static(b"a.txt")
        );
        check_denied(
            fs.readlink(&p("/in/link")).await,
            "no list or download permission on /in/link",
        );
        check_ok(fs.statvfs(&p("/pub")).await, "statvfs");
        check_denied(
            fs.statvfs(&p("/in")).await,
            "no list or download permission on /in",
        );
        assert_eq!(check_ok(fs.realpath(&p("/")).await, "realpath /"), p("/"));
        check_ok(fs.realpath(&p("/pub/a.txt")).await, "realpath");
        check_denied(
            fs.realpath(&p("/in/x")).await,
            "no list or download permission on /in/x",
        );
    }

    #[tokio::test]
    async fn open_for_reading_needs_download() {
        let (_dir, fs) = fixture(&[("/pub", "list"), ("/out", "download")]);
        let file = check_ok(fs.open(&p("/out/o.txt"), READ, &attrs()).await, "read");
        let mut buf = BytesMut::with_capacity(100);
        check_ok(file.read(0, 100, &mut buf).await, "read bytes");
        assert_eq!(&buf[..], b"out/o.txt");
        check_denied(
            fs.open(&p("/pub/a.txt"), READ, &attrs()).await,
            "no download permission on /pub/a.txt",
        );
        // No access flag at all means read-only.
        check_denied(
            fs.open(&p("/pub/a.txt"), OpenFlags::empty(), &attrs())
                .await,
            "no download permission on /pub/a.txt",
        );
    }

    #[tokio::test]
    async fn creating_a_file_needs_upload() {
        let (dir, fs) = fixture(&[("/in", "upload"), ("/out", "overwrite"), ("/pub", "list")]);
        check_ok(write_new(&fs, "/in/new").await, "upload");
        assert_eq!(std::fs::read(dir.path().join("in/new")).unwrap(), b"data");
        check_denied(
            write_new(&fs, "/out/new").await,
            "no upload permission on /out/new",
        );
        check_denied(
            write_new(&fs, "/pub/new").await,
            "no upload permission on /pub/new",
        );
        assert!(!dir.path().join("out/new").exists());
        assert!(!dir.path().join("pub/new").exists());
    }

    /// Counts the lookups (`stat`) made through it; everything else goes to `inner`.
    struct CountingStats {
        inner: LocalFs,
        stats: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl Filesystem for CountingStats {
        async fn open(
            &self,
            path: &VPath,
            flags: OpenFlags,
            attrs: &FileAttributes,
        ) -> Result<Box<dyn File>, FsError> {
            self.inner.open(path, flags, attrs).await
        }
        async fn opendir(&self, path: &VPath) -> Result<Box<dyn Dir>, FsError> {
            self.inner.opendir(path).await
        }
        async fn stat(&self, path: &VPath) -> Result<FileAttributes, FsError> {
            self.stats
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.inner.stat(path).await
        }
        async fn lstat(&self, path: &VPath) -> Result<FileAttributes, FsError> {
            self.inner.lstat(path).await
        }
        async fn setstat(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
            self.inner.setstat(path, attrs).await
        }
        async fn remove(&self, path: &VPath) -> Result<(), FsError> {
            self.inner.remove(path).await
        }
        async fn mkdir(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
            self.inner.mkdir(path, attrs).await
        }
        async fn rmdir(&self, path: &VPath) -> Result<(), FsError> {
            self.inner.rmdir(path).await
        }
        async fn rename(&self, from: &VPath, to: &VPath, mode: RenameMode) -> Result<(), FsError> {
            self.inner.rename(from, to, mode).await
        }
        async fn readlink(&self, path: &VPath) -> Result<Bytes, FsError> {
            self.inner.readlink(path).await
        }
        async fn symlink(&self, target: &[u8], link: &VPath) -> Result<(), FsError> {
            self.inner.symlink(target, link).await
        }
    }

    #[tokio::test]
    async fn an_open_for_writing_looks_the_file_up_only_where_that_decides_something() {
        for (rules, lookups) in [
            (vec![], 0),
            (vec![("/in", "upload,overwrite")], 0),
            (vec![("/in", "upload")], 3),
            (vec![("/in", "overwrite")], 3),
        ] {
            let dir = tempfile::tempdir().expect("a tempdir");
            std::fs::create_dir(dir.path().join("in")).expect("mkdir");
            std::fs::write(dir.path().join("in/existing.txt"), "x").expect("write");
            let inner = Arc::new(CountingStats {
                inner: LocalFs::new(dir.path()).expect("openat2 works here"),
                stats: Default::default(),
            });
            let table = PermissionTable::new(rules.iter().map(|(prefix, flags)| PermissionRule {
                prefix: p(prefix),
                permissions: flags.parse().expect("flags"),
            }));
            let fs = PermissionFs::new(inner.clone(), table);
            let _ = write_new(&fs, "/in/new").await;
            let _ = write_new(&fs, "/in/existing.txt").await;
            let _ = fs
                .open(&p("/in/existing.txt"), OpenFlags::WRITE, &attrs())
                .await;
            assert_eq!(
                inner.stats.load(std::sync::atomic::Ordering::Relaxed),
                lookups,
                "rules {rules:?}"
            );
        }
    }

    #[tokio::test]
    async fn writing_an_existing_file_needs_overwrite() {
        let (dir, fs) = fixture(&[("/in", "upload"), ("/out", "overwrite")]);
        check_ok(write_new(&fs, "/out/o.txt").await, "overwrite");
        assert_eq!(
            std::fs::read(dir.path().join("out/o.txt")).unwrap(),
            b"data"
        );
        check_denied(
            write_new(&fs, "/in/existing.txt").await,
            "no overwrite permission on /in/existing.txt",
        );
        check_denied(
            fs.open(&p("/in/existing.txt"), OpenFlags::APPEND, &attrs())
                .await,
            "no overwrite permission on /in/existing.txt",
        );
        assert_eq!(
            std::fs::read(dir.path().join("in/existing.txt")).unwrap(),
            b"in/existing.txt"
        );
        // A drop box: the first upload works, replacing it does not.
        check_ok(write_new(&fs, "/in/once").await, "first upload");
        check_denied(
            write_new(&fs, "/in/once").await,
            "no overwrite permission on /in/once",
        );
    }

    #[tokio::test]
    async fn read_write_needs_both() {
        let (_dir, fs) = fixture(&[("/out", "overwrite"), ("/pub", "download,overwrite")]);
        let rw = OpenFlags::READ | OpenFlags::WRITE;
        check_denied(
            fs.open(&p("/out/o.txt"), rw, &attrs()).await,
            "no download permission on /out/o.txt",
        );
        check_ok(fs.open(&p("/pub/a.txt"), rw, &attrs()).await, "read+write");
    }

    #[tokio::test]
    async fn setstat_needs_chattr_and_size_needs_overwrite_too() {
        let (_dir, fs) = fixture(&[
            ("/pub", "chattr"),
            ("/out", "chattr,overwrite"),
            ("/in", "list"),
        ]);
        check_ok(fs.setstat(&p("/pub/a.txt"), &chmod()).await, "chmod");
        check_ok(fs.lsetstat(&p("/pub/a.txt"), &chmod()).await, "lchmod");
        check_denied(
            fs.setstat(&p("/in/existing.txt"), &chmod()).await,
            "no chattr permission on /in/existing.txt",
        );
        check_denied(
            fs.lsetstat(&p("/in/existing.txt"), &chmod()).await,
            "no chattr permission on /in/existing.txt",
        );
        check_denied(
            fs.setstat(&p("/pub/a.txt"), &truncate()).await,
            "no overwrite permission on /pub/a.txt",
        );
        check_ok(fs.setstat(&p("/out/o.txt"), &truncate()).await, "truncate");
        // Changing nothing needs nothing.
        check_ok(
            fs.setstat(&p("/in/existing.txt"), &attrs()).await,
            "empty setstat",
        );
    }

    #[tokio::test]
    async fn fsetstat_is_checked_against_the_open_files_path() {
        let (_dir, fs) = fixture(&[("/out", "download"), ("/pub", "download,chattr")]);
        let file = check_ok(fs.open(&p("/out/o.txt"), READ, &attrs()).await, "open");
        check_denied(
            file.setstat(&chmod()).await,
            "no chattr permission on /out/o.txt",
        );
        check_ok(file.close().await, "close");
        let file = check_ok(fs.open(&p("/pub/a.txt"), READ, &attrs()).await, "open");
        check_ok(file.setstat(&chmod()).await, "fchmod");
        check_ok(file.close().await, "close");
    }

    #[tokio::test]
    async fn remove_and_rmdir_need_delete() {
        let (dir, fs) = fixture(&[("/pub", "list,download"), ("/in", "delete")]);
        check_ok(fs.remove(&p("/in/existing.txt")).await, "remove");
        check_ok(fs.rmdir(&p("/in/empty")).await, "rmdir");
        check_denied(
            fs.remove(&p("/pub/a.txt")).await,
            "no delete permission on /pub/a.txt",
        );
        std::fs::create_dir(dir.path().join("pub/d")).unwrap();
        check_denied(
            fs.rmdir(&p("/pub/d")).await,
            "no delete permission on /pub/d",
        );
        assert!(dir.path().join("pub/a.txt").exists());
        assert!(dir.path().join("pub/d").exists());
    }

    #[tokio::test]
    async fn mkdir_needs_mkdir() {
        let (dir, fs) = fixture(&[("/in", "mkdir"), ("/pub", "upload")]);
        check_ok(fs.mkdir(&p("/in/d"), &attrs()).await, "mkdir");
        check_denied(
            fs.mkdir(&p("/pub/d"), &attrs()).await,
            "no mkdir permission on /pub/d",
        );
        assert!(dir.path().join("in/d").is_dir());
        assert!(!dir.path().join("pub/d").exists());
    }

    #[tokio::test]
    async fn rename_needs_rename_on_both_sides() {
        let (dir, fs) = fixture(&[("/in", "rename"), ("/out", "rename"), ("/pub", "list")]);
        check_ok(
            fs.rename(
                &p("/in/existing.txt"),
                &p("/out/moved"),
                RenameMode::NoReplace,
            )
            .await,
            "rename",
        );
        assert!(dir.path().join("out/moved").exists());
        check_denied(
            fs.rename(&p("/out/moved"), &p("/pub/x"), RenameMode::NoReplace)
                .await,
            "no rename permission on /pub/x",
        );
        check_denied(
            fs.rename(&p("/pub/a.txt"), &p("/in/x"), RenameMode::NoReplace)
                .await,
            "no rename permission on /pub/a.txt",
        );
        assert!(dir.path().join("pub/a.txt").exists());
    }

    #[tokio::test]
    async fn posix_rename_over_an_existing_file_needs_overwrite() {
        let (dir, fs) = fixture(&[("/in", "rename"), ("/out", "rename,overwrite")]);
        std::fs::write(dir.path().join("in/second"), "2").unwrap();
        check_denied(
            fs.rename(
                &p("/out/o.txt"),
                &p("/in/existing.txt"),
                RenameMode::Replace,
            )
            .await,
            "no overwrite permission on /in/existing.txt",
        );
        // Onto a name that does not exist, rename alone does.
        check_ok(
            fs.rename(&p("/in/second"), &p("/in/third"), RenameMode::Replace)
                .await,
            "posix-rename to a new name",
        );
        check_ok(
            fs.rename(
                &p("/in/existing.txt"),
                &p("/out/o.txt"),
                RenameMode::Replace,
            )
            .await,
            "posix-rename over a file",
        );
        assert_eq!(
            std::fs::read(dir.path().join("out/o.txt")).unwrap(),
            b"in/existing.txt"
        );
    }

    #[tokio::test]
    async fn rename_refuses_to_move_paths_with_their_own_rules() {
        let (_dir, fs) = fixture(&[("/", "all"), ("/in/empty", "list")]);
        check_denied(
            fs.rename(&p("/in"), &p("/moved"), RenameMode::NoReplace)
                .await,
            "cannot rename /in: paths below it have their own permissions",
        );
        check_denied(
            fs.rename(&p("/pub"), &p("/in"), RenameMode::NoReplace)
                .await,
            "cannot rename /in: paths below it have their own permissions",
        );
    }

    #[tokio::test]
    async fn symlink_needs_symlink_and_must_not_grant_more_than_its_target() {
        let (dir, fs) = fixture(&[
            ("/in", "list,download,upload,symlink"),
            ("/pub", "list,download,upload,symlink,overwrite"),
            ("/out", "list,download"),
        ]);
        check_ok(fs.symlink(b"../pub/a.txt", &p("/in/l1")).await, "symlink");
        check_ok(fs.symlink(b"/pub", &p("/in/l2")).await, "absolute target");
        assert!(dir.path().join("in/l1").is_symlink());
        check_denied(
            fs.symlink(b"a.txt", &p("/out/l")).await,
            "no symlink permission on /out/l",
        );
        check_denied(
            fs.symlink(b"../secret/s.txt", &p("/in/l3")).await,
            "a link at /in/l3 would grant list, download, upload, symlink on /secret/s.txt",
        );
        check_denied(
            fs.symlink(b"/out", &p("/in/l4")).await,
            "a link at /in/l4 would grant upload, symlink on /out",
        );
        assert!(!dir.path().join("in/l3").exists());
    }

    #[tokio::test]
    async fn hardlink_needs_symlink_upload_and_download() {
        let (dir, fs) = fixture(&[
            ("/in", "list,download,upload,symlink"),
            ("/pub", "list,download,upload,symlink,overwrite"),
            ("/out", "list"),
            ("/secret", "upload"),
        ]);
        check_ok(fs.hardlink(&p("/pub/a.txt"), &p("/in/h")).await, "hardlink");
        assert!(dir.path().join("in/h").exists());
        check_denied(
            fs.hardlink(&p("/pub/a.txt"), &p("/secret/h")).await,
            "no symlink permission on /secret/h",
        );
        check_denied(
            fs.hardlink(&p("/out/o.txt"), &p("/in/h2")).await,
            "no download permission on /out/o.txt",
        );
        check_denied(
            fs.hardlink(&p("/in/existing.txt"), &p("/pub/h3")).await,
            "a link at /pub/h3 would grant overwrite on /in/existing.txt",
        );
    }

    #[tokio::test]
    async fn exit_and_names_pass_through() {
        let (_dir, fs) = fixture(&[("/pub", "none")]);
        let names = check_ok(fs.names_by_id(&[0], &[]).await, "names");
        assert_eq!(names.usernames.len(), 1);
        fs.exit(&EndReason::ClientEof).await;
    }
}
