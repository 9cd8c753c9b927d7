//! The jail: every resolution of a client's path, as one `openat2(2)` with
//! `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS` relative to the root directory's descriptor.
//!
//! Nothing else in this crate turns a path into a descriptor. Callers get either the object
//! itself ([`Jail::open`]) or its parent directory and bare final name ([`Jail::parent`])
//! for the `*at` system calls.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use sftpgate_vfs::{FsError, VPath};

use crate::error::from_errno;

/// `RESOLVE_IN_ROOT`: the root descriptor is `/` for the whole lookup, including symlink
/// targets met on the way (`..` stops at it, absolute targets start from it), as in a
/// chroot. `RESOLVE_NO_MAGICLINKS`: `/proc/*/fd`-style links, which jump anywhere, are
/// refused (ELOOP) should the root ever contain a procfs.
const JAIL: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// openat2 fails with EAGAIN when a concurrent rename or mount made it unable to prove
/// that a `..` stayed inside the root; the man page says to retry. Past this many tries the
/// EAGAIN goes to the client.
const EAGAIN_RETRIES: usize = 64;

/// The root directory of a session, and the only way to resolve paths below it.
#[derive(Debug)]
pub(crate) struct Jail {
    root: OwnedFd,
    /// The root's device, and whether its filesystem lives in memory: most files are on
    /// it, and then [`Jail::in_memory`] needs no `statfs`.
    root_dev: u64,
    root_in_memory: bool,
}

/// A directory descriptor for `*at` calls: the root's, or one opened below it.
pub(crate) enum DirFd<'a> {
    Root(BorrowedFd<'a>),
    Opened(OwnedFd),
}

impl AsFd for DirFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DirFd::Root(fd) => *fd,
            DirFd::Opened(fd) => fd.as_fd(),
        }
    }
}

impl Jail {
    /// Opens the root directory (`O_PATH | O_DIRECTORY | O_CLOEXEC`), and checks that
    /// openat2 works here: without it there is no jail, so no service.
    pub(crate) fn open_root(path: &Path) -> io::Result<Jail> {
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!(
                    "cannot open the root directory {}: {}",
                    path.display(),
                    io::Error::from(e)
                ),
            )
        })?;
        match openat2(root.as_fd(), b".", flags, Mode::empty()) {
            Ok(_) => {
                let root_dev = rustix::fs::fstat(&root).map_err(io::Error::from)?.st_dev;
                Ok(Jail {
                    root_in_memory: crate::blocking::in_memory(root.as_fd()),
                    root_dev,
                    root,
                })
            }
            Err(e @ (Errno::NOSYS | Errno::PERM)) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "openat2(2) is not available ({}): the local filesystem jail needs \
                     Linux 5.6 or newer, and no seccomp filter blocking openat2",
                    io::Error::from(e)
                ),
            )),
            Err(e) => Err(io::Error::new(
                io::Error::from(e).kind(),
                format!(
                    "cannot resolve inside the root directory {}: {}",
                    path.display(),
                    io::Error::from(e)
                ),
            )),
        }
    }

    /// Whether the open file `fd` on device `dev` lives in memory (see
    /// [`crate::blocking::in_memory`]).
    pub(crate) fn in_memory(&self, fd: &OwnedFd, dev: u64) -> bool {
        if dev == self.root_dev {
            self.root_in_memory
        } else {
            crate::blocking::in_memory(fd.as_fd())
        }
    }

    /// Whether the root's filesystem lives in memory (see [`crate::blocking::in_memory`]).
    pub(crate) fn root_in_memory(&self) -> bool {
        self.root_in_memory
    }

    /// [`Jail::open`] that never leaves the root's filesystem (`RESOLVE_NO_XDEV`): `EXDEV`
    /// when the path crosses a mount point, symlinks included. With a root in memory, a
    /// resolution that stays on it never waits for a device, so it may run inline.
    pub(crate) fn open_on_root_fs(
        &self,
        path: &VPath,
        flags: OFlags,
        mode: Mode,
    ) -> Result<OwnedFd, Errno> {
        openat2_resolving(
            self.root.as_fd(),
            relative(path),
            flags | OFlags::CLOEXEC,
            mode,
            JAIL | ResolveFlags::NO_XDEV,
        )
    }

    /// The root directory's own descriptor.
    pub(crate) fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Opens `path` inside the root with `flags` (`O_CLOEXEC` is added). A final symlink is
    /// followed, inside the root, unless `flags` has `O_NOFOLLOW` (with `O_PATH`: a
    /// descriptor of the link itself). `mode` must be empty unless `flags` has `O_CREAT`.
    pub(crate) fn open(&self, path: &VPath, flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
        self.open_relative(relative(path), flags, mode)
    }

    /// [`Jail::open`] for a relative path that is not a [`VPath`] (like `dir/..`), still
    /// resolved inside the root.
    pub(crate) fn open_relative(
        &self,
        relative: &[u8],
        flags: OFlags,
        mode: Mode,
    ) -> Result<OwnedFd, Errno> {
        openat2(self.root.as_fd(), relative, flags | OFlags::CLOEXEC, mode)
    }

    /// An `O_PATH` descriptor of `path`, following a final symlink inside the root.
    pub(crate) fn open_path(&self, path: &VPath) -> Result<OwnedFd, FsError> {
        self.open(path, OFlags::PATH, Mode::empty())
            .map_err(from_errno)
    }

    /// The parent directory of `path` (resolved inside the root, symlinks followed) and the
    /// final name, for the `*at` calls. `None` for the root, which has no parent.
    pub(crate) fn parent<'p>(
        &self,
        path: &'p VPath,
    ) -> Result<Option<(DirFd<'_>, &'p [u8])>, FsError> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Ok(None);
        };
        let dir = if parent.is_root() {
            DirFd::Root(self.root.as_fd())
        } else {
            DirFd::Opened(
                self.open(&parent, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
                    .map_err(from_errno)?,
            )
        };
        Ok(Some((dir, name)))
    }
}

/// What openat2 is given for `path`: `.` for the root, else the path without its `/`.
pub(crate) fn relative(path: &VPath) -> &[u8] {
    if path.is_root() {
        b"."
    } else {
        path.relative()
    }
}

/// openat2 in the jail, retried on EAGAIN (see [`EAGAIN_RETRIES`]) and EINTR.
fn openat2(dir: BorrowedFd<'_>, path: &[u8], flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
    openat2_resolving(dir, path, flags, mode, JAIL)
}

fn openat2_resolving(
    dir: BorrowedFd<'_>,
    path: &[u8],
    flags: OFlags,
    mode: Mode,
    resolve: ResolveFlags,
) -> Result<OwnedFd, Errno> {
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(dir, path, flags, mode, resolve) {
            Err(Errno::AGAIN) if tries < EAGAIN_RETRIES => tries += 1,
            Err(Errno::INTR) => {}
            other => return other,
        }
    }
}
