//! [`LocalFs`]: the [`Filesystem`] of a session served from one jailed host directory.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use rustix::fs::{AtFlags, FileType as OsFileType, Mode, OFlags, RenameFlags};
use rustix::io::Errno;
use sftpgate_proto::{FileAttributes, OpenFlags, StatvfsReply};
use sftpgate_vfs::{Dir, File, Filesystem, FsError, RenameMode, VPath};

use crate::attrs::{self, Target};
use crate::blocking::blocking;
use crate::dir::LocalDir;
use crate::error::{from_errno, not_regular, root_itself};
use crate::file::LocalFile;
use crate::jail::{relative, Jail};
use crate::procfs;

/// A session's storage: one host directory, which is the session's `/` (Linux only).
///
/// Cloning is cheap and shares the root descriptor. See the crate docs for how paths are
/// kept inside the root.
#[derive(Debug, Clone)]
pub struct LocalFs {
    jail: Arc<Jail>,
}

impl LocalFs {
    /// Opens `root` once (`O_PATH | O_DIRECTORY | O_CLOEXEC`; symlinks in `root` itself are
    /// followed, it is the administrator's) and checks that `openat2(2)` works. Fails when
    /// `root` is not a directory, or with [`io::ErrorKind::Unsupported`] and a clear
    /// message on kernels without openat2 (before Linux 5.6) or where seccomp blocks it.
    ///
    /// This makes blocking system calls; call it where blocking is fine (the SFTP factory
    /// may wrap it in `spawn_blocking`).
    pub fn new(root: impl AsRef<Path>) -> io::Result<LocalFs> {
        Ok(LocalFs {
            jail: Arc::new(Jail::open_root(root.as_ref())?),
        })
    }

    /// STAT (`flags` = `O_PATH`) or LSTAT (`O_PATH | O_NOFOLLOW`: the descriptor of a
    /// final symlink itself) on this thread, when the root is in memory and the path stays
    /// on its filesystem; `None` when it cannot be done here (then the pool does it).
    fn stat_on_root_fs(
        &self,
        path: &VPath,
        flags: OFlags,
    ) -> Result<Option<FileAttributes>, FsError> {
        if !self.jail.root_in_memory() {
            return Ok(None);
        }
        match self.jail.open_on_root_fs(path, flags, Mode::empty()) {
            Ok(fd) => fstat(fd.as_fd()).map(Some),
            Err(Errno::XDEV) => Ok(None),
            Err(e) => Err(from_errno(e)),
        }
    }

    /// Runs `op` with the jail on the blocking pool.
    async fn run<T, F>(&self, op: F) -> Result<T, FsError>
    where
        F: FnOnce(&Jail) -> Result<T, FsError> + Send + 'static,
        T: Send + 'static,
    {
        let jail = self.jail.clone();
        blocking(move || op(&jail)).await
    }
}

#[async_trait::async_trait]
impl Filesystem for LocalFs {
    /// OPEN as OpenSSH maps it: READ/WRITE to the access mode, APPEND, CREAT, TRUNC and
    /// EXCL to their `O_*` flags; a new file gets `attrs.permissions & 0o7777`, else 0o666
    /// (the process umask applies). Opened with `O_NONBLOCK` so a FIFO cannot hang the
    /// thread, then anything but a regular file is refused (a directory with
    /// [`FsError::IsADirectory`]) and `O_NONBLOCK` cleared again.
    async fn open(
        &self,
        path: &VPath,
        flags: OpenFlags,
        attrs: &FileAttributes,
    ) -> Result<Box<dyn File>, FsError> {
        let permissions = attrs.permissions;
        if self.jail.root_in_memory() {
            if let Some(file) = open(&self.jail, path, flags, permissions, Resolve::OnRootFs)? {
                return Ok(Box::new(file));
            }
        }
        let path = path.clone();
        let file = self
            .run(move |jail| open(jail, &path, flags, permissions, Resolve::Anywhere))
            .await?
            .ok_or_else(|| FsError::Other("open left the root's filesystem".into()))?;
        Ok(Box::new(file))
    }

    async fn opendir(&self, path: &VPath) -> Result<Box<dyn Dir>, FsError> {
        let path = path.clone();
        let jail = self.jail.clone();
        let dir = blocking(move || {
            let fd = jail
                .open(
                    &path,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NONBLOCK,
                    Mode::empty(),
                )
                .map_err(from_errno)?;
            let relative = relative(&path).to_vec();
            LocalDir::new(jail, relative, fd)
        })
        .await?;
        Ok(Box::new(dir))
    }

    async fn stat(&self, path: &VPath) -> Result<FileAttributes, FsError> {
        if let Some(attrs) = self.stat_on_root_fs(path, OFlags::PATH)? {
            return Ok(attrs);
        }
        let path = path.clone();
        self.run(move |jail| {
            let fd = jail.open_path(&path)?;
            fstat(fd.as_fd())
        })
        .await
    }

    /// `fstatat(parent, name, AT_SYMLINK_NOFOLLOW)` (with a root in memory, inline: the
    /// fstat of an `O_PATH | O_NOFOLLOW` descriptor, see `stat_on_root_fs`).
    async fn lstat(&self, path: &VPath) -> Result<FileAttributes, FsError> {
        if let Some(attrs) = self.stat_on_root_fs(path, OFlags::PATH | OFlags::NOFOLLOW)? {
            return Ok(attrs);
        }
        let path = path.clone();
        self.run(move |jail| match jail.parent(&path)? {
            None => fstat(jail.root()),
            Some((dir, name)) => {
                let st = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(from_errno)?;
                Ok(attrs::from_stat(&st))
            }
        })
        .await
    }

    /// Size (by reopening the file for writing, inside the root, and checking it is the
    /// same inode), permissions, times and owner, on the object the path resolves to.
    async fn setstat(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
        let path = path.clone();
        let attrs = attrs.clone();
        self.run(move |jail| setstat(jail, &path, &attrs)).await
    }

    /// Like SETSTAT on the path itself (an `O_PATH | O_NOFOLLOW` descriptor from the
    /// jail). A size is refused as OpenSSH does ("nonsensical for links"), and so are
    /// permissions on a symlink, which Linux cannot change.
    async fn lsetstat(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
        if attrs.size.is_some() {
            return Err(FsError::InvalidInput(
                "lsetstat cannot change the size".into(),
            ));
        }
        let path = path.clone();
        let attrs = attrs.clone();
        self.run(move |jail| {
            let fd = jail
                .open(&path, OFlags::PATH | OFlags::NOFOLLOW, Mode::empty())
                .map_err(from_errno)?;
            attrs::apply(Target::Path(fd.as_fd()), &attrs)
        })
        .await
    }

    /// `unlinkat(parent, name, 0)`: a symlink is removed, not its target; a directory is
    /// refused ([`FsError::IsADirectory`]).
    async fn remove(&self, path: &VPath) -> Result<(), FsError> {
        let path = path.clone();
        self.run(move |jail| {
            let (dir, name) = jail.parent(&path)?.ok_or_else(root_itself)?;
            rustix::fs::unlinkat(&dir, name, AtFlags::empty()).map_err(from_errno)
        })
        .await
    }

    /// `mkdirat(parent, name, mode)` with `attrs.permissions & 0o7777`, else 0o777 (the
    /// umask applies), as OpenSSH.
    async fn mkdir(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
        let path = path.clone();
        let mode = Mode::from_raw_mode(attrs.permissions.map_or(0o777, |p| p & 0o7777));
        self.run(move |jail| {
            let (dir, name) = jail.parent(&path)?.ok_or(FsError::AlreadyExists)?;
            rustix::fs::mkdirat(&dir, name, mode).map_err(from_errno)
        })
        .await
    }

    /// `unlinkat(parent, name, AT_REMOVEDIR)`.
    async fn rmdir(&self, path: &VPath) -> Result<(), FsError> {
        let path = path.clone();
        self.run(move |jail| {
            let (dir, name) = jail.parent(&path)?.ok_or_else(root_itself)?;
            rustix::fs::unlinkat(&dir, name, AtFlags::REMOVEDIR).map_err(from_errno)
        })
        .await
    }

    /// Both parents are resolved inside the root. [`RenameMode::NoReplace`] is
    /// `renameat2(RENAME_NOREPLACE)`, falling back to OpenSSH's link-then-unlink where the
    /// filesystem does not support the flag (EINVAL); [`RenameMode::Replace`] is
    /// `renameat`.
    async fn rename(&self, from: &VPath, to: &VPath, mode: RenameMode) -> Result<(), FsError> {
        let from = from.clone();
        let to = to.clone();
        self.run(move |jail| {
            let (from_dir, from_name) = jail.parent(&from)?.ok_or_else(root_itself)?;
            let (to_dir, to_name) = jail.parent(&to)?.ok_or_else(root_itself)?;
            let (from_dir, to_dir) = (from_dir.as_fd(), to_dir.as_fd());
            match mode {
                RenameMode::Replace => {
                    rustix::fs::renameat(from_dir, from_name, to_dir, to_name).map_err(from_errno)
                }
                RenameMode::NoReplace => match rustix::fs::renameat_with(
                    from_dir,
                    from_name,
                    to_dir,
                    to_name,
                    RenameFlags::NOREPLACE,
                ) {
                    Err(Errno::INVAL | Errno::NOSYS) => {
                        rename_no_replace_fallback(from_dir, from_name, to_dir, to_name)
                    }
                    other => other.map_err(from_errno),
                },
            }
        })
        .await
    }

    /// `readlinkat(parent, name)`: the target bytes as stored.
    async fn readlink(&self, path: &VPath) -> Result<Bytes, FsError> {
        let path = path.clone();
        self.run(move |jail| {
            let (dir, name) = jail
                .parent(&path)?
                .ok_or_else(|| from_errno(Errno::INVAL))?;
            let target = rustix::fs::readlinkat(&dir, name, Vec::new()).map_err(from_errno)?;
            Ok(Bytes::from(target.into_bytes()))
        })
        .await
    }

    /// `symlinkat(target, parent, name)`, the target stored exactly as the client sent it;
    /// every later resolution through it happens inside the root.
    async fn symlink(&self, target: &[u8], link: &VPath) -> Result<(), FsError> {
        let target = target.to_vec();
        let link = link.clone();
        self.run(move |jail| {
            let (dir, name) = jail.parent(&link)?.ok_or(FsError::AlreadyExists)?;
            rustix::fs::symlinkat(target.as_slice(), &dir, name).map_err(from_errno)
        })
        .await
    }

    /// `linkat(parent, name, new_parent, new_name, 0)`: a symlink `existing` is linked
    /// itself, not followed (as link(2) on Linux).
    async fn hardlink(&self, existing: &VPath, new: &VPath) -> Result<(), FsError> {
        let existing = existing.clone();
        let new = new.clone();
        self.run(move |jail| {
            let (from_dir, from_name) = jail.parent(&existing)?.ok_or_else(root_itself)?;
            let (to_dir, to_name) = jail.parent(&new)?.ok_or(FsError::AlreadyExists)?;
            rustix::fs::linkat(&from_dir, from_name, &to_dir, to_name, AtFlags::empty())
                .map_err(from_errno)
        })
        .await
    }

    /// Symlinks resolved inside the root: the object is opened `O_PATH` through the jail
    /// and the kernel's name for it (from `/proc/self/fd`) is mapped back below the root,
    /// compared with the root's own name component-wise; only the part below the root is
    /// ever returned. A missing last component is appended to its parent's canonical
    /// path; a missing parent is [`FsError::NotFound`].
    async fn realpath(&self, path: &VPath) -> Result<VPath, FsError> {
        let path = path.clone();
        self.run(move |jail| realpath(jail, &path)).await
    }

    /// `fstatvfs` of the object the path resolves to (the root for `/`).
    async fn statvfs(&self, path: &VPath) -> Result<StatvfsReply, FsError> {
        let path = path.clone();
        self.run(move |jail| {
            let fd = jail.open_path(&path)?;
            let v = rustix::fs::fstatvfs(&fd).map_err(from_errno)?;
            Ok(attrs::statvfs_reply(&v))
        })
        .await
    }
}

/// Where a path may lead while it is resolved.
#[derive(Clone, Copy, PartialEq)]
enum Resolve {
    /// Anywhere inside the root (the pool's way).
    Anywhere,
    /// Only on the root's own filesystem (in memory: inline), see
    /// [`Jail::open_on_root_fs`].
    OnRootFs,
}

/// `Ok(None)`: with [`Resolve::OnRootFs`], the path leaves the root's filesystem (nothing
/// was opened or created); open it with [`Resolve::Anywhere`] on the pool instead.
fn open(
    jail: &Jail,
    path: &VPath,
    flags: OpenFlags,
    permissions: Option<u32>,
    resolve: Resolve,
) -> Result<Option<LocalFile>, FsError> {
    let mut os = match (
        flags.contains(OpenFlags::READ),
        flags.contains(OpenFlags::WRITE),
    ) {
        (true, true) => OFlags::RDWR,
        (false, true) => OFlags::WRONLY,
        _ => OFlags::RDONLY,
    };
    for (sftp, linux) in [
        (OpenFlags::APPEND, OFlags::APPEND),
        (OpenFlags::CREAT, OFlags::CREATE),
        (OpenFlags::TRUNC, OFlags::TRUNC),
        (OpenFlags::EXCL, OFlags::EXCL),
    ] {
        if flags.contains(sftp) {
            os |= linux;
        }
    }
    // openat2 refuses a mode without O_CREAT.
    let mode = if flags.contains(OpenFlags::CREAT) {
        Mode::from_raw_mode(permissions.map_or(0o666, |p| p & 0o7777))
    } else {
        Mode::empty()
    };
    let os = os | OFlags::NONBLOCK | OFlags::NOCTTY;
    let opened = match resolve {
        Resolve::Anywhere => jail.open(path, os, mode),
        Resolve::OnRootFs => jail.open_on_root_fs(path, os, mode),
    };
    let fd = match opened {
        Ok(fd) => fd,
        Err(Errno::XDEV) if resolve == Resolve::OnRootFs => return Ok(None),
        // A FIFO without a reader (opened write-only) or a socket.
        Err(Errno::NXIO) => return Err(not_regular()),
        Err(e) => return Err(from_errno(e)),
    };
    let st = rustix::fs::fstat(&fd).map_err(from_errno)?;
    match OsFileType::from_raw_mode(st.st_mode) {
        OsFileType::RegularFile => {}
        OsFileType::Directory => return Err(FsError::IsADirectory),
        _ => return Err(not_regular()),
    }
    // Harmless on regular files for most filesystems, but some (FUSE, network) honour it.
    // F_SETFL sets only APPEND, ASYNC, DIRECT, NOATIME and NONBLOCK (fcntl(2)), and of
    // those the file was opened with APPEND at most: no F_GETFL needed (one system call
    // less per OPEN).
    rustix::fs::fcntl_setfl(&fd, os & OFlags::APPEND).map_err(from_errno)?;
    let in_memory = jail.in_memory(&fd, st.st_dev);
    Ok(Some(LocalFile::new(
        fd,
        u64::try_from(st.st_size).unwrap_or(0),
        in_memory,
    )))
}

fn setstat(jail: &Jail, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
    let fd = jail.open_path(path)?;
    if attrs.size.is_none() {
        return attrs::apply(Target::Path(fd.as_fd()), attrs);
    }
    // truncate(2) needs a descriptor open for writing; reopen, and make sure it is the
    // file checked first (and a regular one: no opening of FIFOs or devices).
    let before = rustix::fs::fstat(&fd).map_err(from_errno)?;
    match OsFileType::from_raw_mode(before.st_mode) {
        OsFileType::RegularFile => {}
        OsFileType::Directory => return Err(FsError::IsADirectory),
        _ => return Err(not_regular()),
    }
    let writable = jail
        .open(
            path,
            OFlags::WRONLY | OFlags::NONBLOCK | OFlags::NOCTTY,
            Mode::empty(),
        )
        .map_err(from_errno)?;
    let after = rustix::fs::fstat(&writable).map_err(from_errno)?;
    if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino) {
        return Err(FsError::Other(
            "the file was replaced during SETSTAT".into(),
        ));
    }
    attrs::apply(Target::Open(writable.as_fd()), attrs)
}

/// RENAME that must not replace, on a filesystem without `RENAME_NOREPLACE`: as OpenSSH's
/// sftp-server, a regular file is hard-linked to the new name (which fails if it exists)
/// and then unlinked from the old; where links are not supported, and for other types, it
/// checks that the destination is free and renames (a small race OpenSSH accepts too).
pub(crate) fn rename_no_replace_fallback(
    from_dir: BorrowedFd<'_>,
    from_name: &[u8],
    to_dir: BorrowedFd<'_>,
    to_name: &[u8],
) -> Result<(), FsError> {
    let source =
        rustix::fs::statat(from_dir, from_name, AtFlags::SYMLINK_NOFOLLOW).map_err(from_errno)?;
    if OsFileType::from_raw_mode(source.st_mode) == OsFileType::RegularFile {
        match rustix::fs::linkat(from_dir, from_name, to_dir, to_name, AtFlags::empty()) {
            Ok(()) => {
                return rustix::fs::unlinkat(from_dir, from_name, AtFlags::empty()).map_err(|e| {
                    // Leave things as they were: drop the new name again.
                    let _ = rustix::fs::unlinkat(to_dir, to_name, AtFlags::empty());
                    from_errno(e)
                });
            }
            // No hard links on this filesystem: fall through to check-then-rename.
            Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::XDEV | Errno::PERM) => {}
            Err(e) => return Err(from_errno(e)),
        }
    }
    match rustix::fs::statat(to_dir, to_name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Err(FsError::AlreadyExists),
        Err(Errno::NOENT) => {
            rustix::fs::renameat(from_dir, from_name, to_dir, to_name).map_err(from_errno)
        }
        Err(e) => Err(from_errno(e)),
    }
}

fn realpath(jail: &Jail, path: &VPath) -> Result<VPath, FsError> {
    match jail.open(path, OFlags::PATH, Mode::empty()) {
        Ok(fd) => virtual_name(jail, fd.as_fd()),
        Err(Errno::NOENT) => {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(FsError::NotFound);
            };
            let dir = jail
                .open(&parent, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
                .map_err(|_| FsError::NotFound)?;
            Ok(virtual_name(jail, dir.as_fd())?.join_name(name)?)
        }
        Err(e) => Err(from_errno(e)),
    }
}

/// The path below the root of `fd`, an object the jail resolved: the kernel's names for
/// `fd` and for the root (read from `/proc/self/fd`, at this moment, so a root the
/// administrator renamed is still right) compared component-wise. Only the part below the
/// root leaves this function; if `fd` is not below the root (it was moved out meanwhile),
/// the answer is an error that names nothing.
fn virtual_name(jail: &Jail, fd: BorrowedFd<'_>) -> Result<VPath, FsError> {
    let root = procfs::name(jail.root())?;
    let target = procfs::name(fd)?;
    let below = below_root(&root, &target)
        .ok_or_else(|| FsError::Other("the path's location cannot be determined".into()))?;
    Ok(VPath::parse(below)?)
}

/// `target` as a path from `root` (both absolute): `/` for the root itself, `/rest` for
/// `root/rest`, `None` for anything else (`/ab` is not below `/a`).
fn below_root<'t>(root: &[u8], target: &'t [u8]) -> Option<&'t [u8]> {
    if root == b"/" {
        return target.starts_with(b"/").then_some(target);
    }
    let rest = target.strip_prefix(root)?;
    match rest {
        [] => Some(b"/"),
        [b'/', ..] => Some(rest),
        _ => None,
    }
}

fn fstat(fd: BorrowedFd<'_>) -> Result<FileAttributes, FsError> {
    let st = rustix::fs::fstat(fd).map_err(from_errno)?;
    Ok(attrs::from_stat(&st))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(root: &str, target: &str, expected: Option<&str>) {
        assert_eq!(
            below_root(root.as_bytes(), target.as_bytes()),
            expected.map(str::as_bytes),
            "{target} below {root}"
        );
    }

    #[test]
    fn root_itself_is_slash() {
        check("/srv/r", "/srv/r", Some("/"));
    }
    #[test]
    fn below() {
        check("/srv/r", "/srv/r/a/b", Some("/a/b"));
    }
    #[test]
    fn sibling_with_common_prefix_is_not_below() {
        check("/srv/r", "/srv/rx/a", None);
    }
    #[test]
    fn outside() {
        check("/srv/r", "/etc/passwd", None);
        check("/srv/r", "/srv", None);
    }
    #[test]
    fn host_root_as_jail() {
        check("/", "/", Some("/"));
        check("/", "/etc", Some("/etc"));
    }

    /// The RENAME fallback for filesystems without RENAME_NOREPLACE, run directly (every
    /// filesystem a test can use here supports the flag).
    fn fallback(dir: &Path, from: &str, to: &str) -> Result<(), FsError> {
        let fd = rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
            .expect("open tempdir");
        rename_no_replace_fallback(fd.as_fd(), from.as_bytes(), fd.as_fd(), to.as_bytes())
    }

    /// OPEN clears the O_NONBLOCK it opened with (one F_SETFL) and keeps O_APPEND.
    #[test]
    fn opened_files_are_blocking_and_keep_append() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f"), b"x").expect("write");
        let jail = Jail::open_root(dir.path()).expect("jail");
        let path = VPath::parse(b"/f").expect("path");
        for (flags, append) in [
            (OpenFlags::READ, false),
            (OpenFlags::WRITE | OpenFlags::APPEND, true),
            (OpenFlags::READ | OpenFlags::WRITE, false),
        ] {
            let file = open(&jail, &path, flags, None, Resolve::Anywhere)
                .expect("open")
                .expect("on the root's filesystem");
            let status = rustix::fs::fcntl_getfl(&*file.fd().expect("fd")).expect("getfl");
            assert!(!status.contains(OFlags::NONBLOCK), "{flags:?}: {status:?}");
            assert_eq!(
                status.contains(OFlags::APPEND),
                append,
                "{flags:?}: {status:?}"
            );
        }
    }

    #[test]
    fn fallback_moves_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a"), b"A").expect("write");
        fallback(dir.path(), "a", "b").expect("rename");
        assert!(!dir.path().join("a").exists());
        assert_eq!(std::fs::read(dir.path().join("b")).expect("read"), b"A");
    }

    #[test]
    fn fallback_refuses_existing_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a"), b"A").expect("write");
        std::fs::write(dir.path().join("b"), b"B").expect("write");
        let err = fallback(dir.path(), "a", "b").expect_err("exists");
        assert!(matches!(err, FsError::AlreadyExists), "{err:?}");
        assert_eq!(std::fs::read(dir.path().join("a")).expect("read"), b"A");
        assert_eq!(std::fs::read(dir.path().join("b")).expect("read"), b"B");
    }

    #[test]
    fn fallback_moves_a_directory_and_a_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("d")).expect("mkdir");
        fallback(dir.path(), "d", "e").expect("rename dir");
        assert!(dir.path().join("e").is_dir());
        std::os::unix::fs::symlink("nowhere", dir.path().join("l")).expect("symlink");
        fallback(dir.path(), "l", "m").expect("rename link");
        assert_eq!(
            std::fs::read_link(dir.path().join("m")).expect("readlink"),
            Path::new("nowhere")
        );
    }

    #[test]
    fn fallback_refuses_existing_directory_and_missing_source() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("d")).expect("mkdir");
        std::fs::create_dir(dir.path().join("e")).expect("mkdir");
        let err = fallback(dir.path(), "d", "e").expect_err("exists");
        assert!(matches!(err, FsError::AlreadyExists), "{err:?}");
        let err = fallback(dir.path(), "missing", "x").expect_err("missing");
        assert!(matches!(err, FsError::NotFound), "{err:?}");
    }
}
