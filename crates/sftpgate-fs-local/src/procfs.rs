//! `/proc/self/fd`, opened once and checked to be procfs: how Linux lets a process name an
//! `O_PATH` descriptor (REALPATH) and change its permissions.
//!
//! Why it is needed: SETSTAT by path works on an `O_PATH` descriptor of the object the
//! jail resolved (so the object changed is exactly the one found inside the root), but
//! `fchmod(2)` refuses `O_PATH` descriptors (EBADF) and plain `fchmodat(2)` has no
//! `AT_EMPTY_PATH`. The kernel's answer, `fchmodat2(2)` (Linux 6.6), is not wrapped by
//! rustix, and this crate has no `unsafe`. So permissions go through
//! `/proc/self/fd/<n>`: a "magic link" that leads to the very inode the descriptor holds,
//! wherever it is, so no second path resolution takes place. The same trick (glibc uses it
//! for `fchmodat(AT_SYMLINK_NOFOLLOW)`) serves `utimensat` on kernels older than 5.8, which
//! lack `AT_EMPTY_PATH` there. Following a magic link to a *symlink* would be ambiguous, so
//! callers never pass one.
//!
//! REALPATH reads the same links: the kernel's name for a descriptor and for the root,
//! compared component-wise; only the part below the root is ever returned.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use rustix::fs::{AtFlags, Mode, OFlags, Timestamps};
use rustix::io::Errno;
use rustix::path::DecInt;
use sftpgate_vfs::FsError;

use crate::error::from_errno;

/// `/proc/self/fd` of this process, or why it is not usable. Shared by every session.
static SELF_FD: OnceLock<Result<OwnedFd, Errno>> = OnceLock::new();

/// Changes the permissions of the object `fd` holds. `fd` must not be a symlink.
pub(crate) fn chmod(fd: BorrowedFd<'_>, mode: Mode) -> Result<(), FsError> {
    rustix::fs::chmodat(self_fd()?, DecInt::from_fd(fd), mode, AtFlags::empty()).map_err(from_errno)
}

/// Sets the times of the object `fd` holds. `fd` must not be a symlink.
pub(crate) fn utimes(fd: BorrowedFd<'_>, times: &Timestamps) -> Result<(), FsError> {
    rustix::fs::utimensat(self_fd()?, DecInt::from_fd(fd), times, AtFlags::empty())
        .map_err(from_errno)
}

/// The kernel's current name for `fd`: an absolute path in this process's mount namespace.
/// Never shown to clients.
pub(crate) fn name(fd: BorrowedFd<'_>) -> Result<Vec<u8>, FsError> {
    let target =
        rustix::fs::readlinkat(self_fd()?, DecInt::from_fd(fd), Vec::new()).map_err(from_errno)?;
    Ok(target.into_bytes())
}

fn self_fd() -> Result<BorrowedFd<'static>, FsError> {
    match SELF_FD.get_or_init(open_self_fd) {
        Ok(fd) => Ok(fd.as_fd()),
        Err(_) => Err(FsError::Unsupported(
            "this operation needs procfs mounted at /proc on the server".into(),
        )),
    }
}

fn open_self_fd() -> Result<OwnedFd, Errno> {
    let fd = rustix::fs::open(
        "/proc/self/fd",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // Something other than procfs mounted on /proc would make these links mean anything.
    if rustix::fs::fstatfs(&fd)?.f_type != rustix::fs::PROC_SUPER_MAGIC {
        return Err(Errno::NOTSUP);
    }
    Ok(fd)
}
