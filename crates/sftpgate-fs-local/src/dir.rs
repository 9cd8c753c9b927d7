//! A directory being listed: `getdents64` batches of at most [`BATCH`] entries, each with
//! `lstat` attributes, `.` and `..` included as OpenSSH lists them.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rustix::fs::{AtFlags, Mode, OFlags};
use sftpgate_vfs::{Dir, DirEntry, FsError};

use crate::attrs;
use crate::blocking::blocking;
use crate::error::from_errno;
use crate::jail::Jail;

/// Entries per READDIR reply, as OpenSSH's sftp-server sends.
pub(crate) const BATCH: usize = 100;

/// A listing opened by [`crate::LocalFs`]. The state sits behind a mutex the blocking
/// task locks, so a dropped `next_batch` future leaves the listing usable.
pub(crate) struct LocalDir {
    state: Arc<Mutex<Listing>>,
}

struct Listing {
    jail: Arc<Jail>,
    /// The directory's path relative to the root, to resolve `..` inside the root.
    relative: Vec<u8>,
    entries: rustix::fs::Dir,
    done: bool,
}

impl LocalDir {
    /// Starts listing `dir` (opened for reading), found at `relative` below the root.
    pub(crate) fn new(jail: Arc<Jail>, relative: Vec<u8>, dir: OwnedFd) -> Result<Self, FsError> {
        Ok(LocalDir {
            state: Arc::new(Mutex::new(Listing {
                jail,
                relative,
                entries: rustix::fs::Dir::new(dir).map_err(from_errno)?,
                done: false,
            })),
        })
    }
}

#[async_trait::async_trait]
impl Dir for LocalDir {
    async fn next_batch(&mut self) -> Result<Vec<DirEntry>, FsError> {
        let state = self.state.clone();
        blocking(move || {
            state
                .lock()
                .map_err(|_| FsError::Other("the directory listing failed earlier".into()))?
                .next_batch()
        })
        .await
    }
}

impl Listing {
    fn next_batch(&mut self) -> Result<Vec<DirEntry>, FsError> {
        let mut batch = Vec::with_capacity(BATCH);
        while batch.len() < BATCH && !self.done {
            let name = match self.entries.read() {
                None => {
                    self.done = true;
                    break;
                }
                Some(Err(e)) => return Err(from_errno(e)),
                Some(Ok(entry)) => entry.file_name().to_bytes().to_vec(),
            };
            // Like OpenSSH, an entry that vanished (or cannot be stat'ed) is left out.
            if let Ok(st) = self.lstat(&name) {
                batch.push(DirEntry {
                    name: Bytes::from(name),
                    attrs: attrs::from_stat(&st),
                    nlink: attrs::nlink(&st),
                });
            }
        }
        Ok(batch)
    }

    /// `lstat` of one entry. `..` is resolved inside the root, so the root's `..` is the
    /// root itself, never the host directory above it.
    fn lstat(&self, name: &[u8]) -> Result<rustix::fs::Stat, FsError> {
        if name == b".." {
            let mut up = self.relative.clone();
            up.extend_from_slice(b"/..");
            let parent = self
                .jail
                .open_relative(&up, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
                .map_err(from_errno)?;
            return rustix::fs::fstat(parent).map_err(from_errno);
        }
        let dir = self.entries.fd().map_err(from_errno)?;
        rustix::fs::statat(dir.as_fd(), name, AtFlags::SYMLINK_NOFOLLOW).map_err(from_errno)
    }
}
