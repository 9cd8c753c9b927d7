//! The jailed local filesystem backend of sftpgate: [`LocalFs`] serves a session from one
//! directory of the host, which is the session's `/`.
//!
//! **Linux only** (5.6 or newer): every resolution of a client's path is one
//! `openat2(2)` call with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`, relative to a
//! descriptor of the root opened once by [`LocalFs::new`]. The kernel then treats the root
//! as `/` for the whole lookup, the way a chroot does: `..` stops at it and absolute symlink
//! targets start from it, so no symlink, rename or link destination can lead outside. No
//! path is ever checked by string prefix and no host path is ever joined and opened.
//!
//! Operations on a final name (REMOVE, MKDIR, RMDIR, RENAME, SYMLINK, hardlink, READLINK,
//! LSTAT) resolve the *parent* that way to an `O_PATH` directory descriptor and then call
//! the `*at` system call with the bare name, which does not follow a final symlink where
//! the call would not. STAT, OPEN, SETSTAT and OPENDIR follow a final symlink, inside the
//! root.
//!
//! Semantics follow OpenSSH's sftp-server on Linux (open flags, default modes, RENAME that
//! does not replace, `.` and `..` in listings, the order SETSTAT applies attributes in).
//! Blocking system calls run on Tokio's blocking pool, so a Tokio runtime must be running.
//! Error messages sent to clients never carry host paths.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "sftpgate-fs-local supports Linux only: its jail is openat2(2) with RESOLVE_IN_ROOT"
);

mod attrs;
mod blocking;
mod dir;
mod error;
mod file;
mod fs;
mod jail;
mod procfs;

pub use fs::LocalFs;
