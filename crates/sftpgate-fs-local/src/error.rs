//! Operating-system errors to [`FsError`], in one place.

use std::io;

use rustix::io::Errno;
use sftpgate_vfs::FsError;

/// An errno as the storage error a client sees (the message is the OS's text for the code,
/// never a path).
pub(crate) fn from_errno(errno: Errno) -> FsError {
    FsError::from(io::Error::from(errno))
}

/// OPEN of a FIFO, socket or device: refused before any I/O can block on it.
pub(crate) fn not_regular() -> FsError {
    FsError::Other("Not a regular file".into())
}

/// A final-name operation aimed at the session's root itself.
pub(crate) fn root_itself() -> FsError {
    FsError::Forbidden("the session's root directory cannot be removed or replaced".into())
}

/// Retries `op` while it fails with EINTR.
pub(crate) fn retry_eintr<T>(mut op: impl FnMut() -> Result<T, Errno>) -> Result<T, Errno> {
    loop {
        match op() {
            Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}
