//! A directory being listed: `getdents64` batches of at most [`BATCH`] entries, each with
//! `lstat` attributes, `.` and `..` included as OpenSSH lists them. While the client reads
//! one batch the next is read ahead on the blocking pool: clients list with one READDIR at
//! a time, so otherwise every batch's system calls and pool hop sit in the round trip.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rustix::fs::{AtFlags, Mode, OFlags};
use sftpgate_vfs::{Dir, DirEntry, FsError};

use crate::attrs;
use crate::blocking::{blocking, Ahead};
use crate::error::from_errno;
use crate::jail::Jail;

/// Entries per READDIR reply, as OpenSSH's sftp-server sends.
pub(crate) const BATCH: usize = 100;

/// A listing opened by [`crate::LocalFs`]. The state sits behind a mutex the blocking
/// task locks, so a dropped `next_batch` future leaves the listing usable.
pub(crate) struct LocalDir {
    state: Arc<Mutex<Listing>>,
    /// The next batch, being read since the previous one was returned. Dropped with the
    /// listing (a handle closed early): the read finishes on the pool and is discarded.
    ahead: Option<Ahead<Vec<DirEntry>>>,
    /// A batch shorter than [`BATCH`] was returned: the directory has no more entries,
    /// and the READDIR that finds that out needs no system call.
    finished: bool,
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
            ahead: None,
            finished: false,
        })
    }
}

/// Reads the next batch of the listing behind `state` (on a blocking thread).
fn read_batch(state: &Mutex<Listing>) -> Result<Vec<DirEntry>, FsError> {
    state
        .lock()
        .map_err(|_| FsError::Other("the directory listing failed earlier".into()))?
        .next_batch()
}

#[async_trait::async_trait]
impl Dir for LocalDir {
    async fn next_batch(&mut self) -> Result<Vec<DirEntry>, FsError> {
        if self.finished {
            return Ok(Vec::new());
        }
        let batch = match &mut self.ahead {
            Some(ahead) => {
                // Taken only once it has answered: if this future is dropped meanwhile,
                // the next call waits for the same batch instead of skipping it.
                let batch = ahead.result().await;
                self.ahead = None;
                batch?
            }
            None => {
                let state = self.state.clone();
                blocking(move || read_batch(&state)).await?
            }
        };
        if batch.len() < BATCH {
            self.finished = true;
        } else {
            let state = self.state.clone();
            self.ahead = Ahead::start(move || read_batch(&state));
        }
        Ok(batch)
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::future::Future;
    use std::task::{Context, Poll, Waker};

    use super::*;

    /// A listing of a fresh directory holding `count` empty files.
    fn listing(count: usize) -> (tempfile::TempDir, LocalDir) {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("d")).unwrap();
        for i in 0..count {
            std::fs::File::create(root.path().join(format!("d/f{i:05}"))).unwrap();
        }
        let jail = Arc::new(Jail::open_root(root.path()).unwrap());
        let fd = jail
            .open_relative(
                b"d",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NONBLOCK,
                Mode::empty(),
            )
            .unwrap();
        let dir = LocalDir::new(jail, b"d".to_vec(), fd).unwrap();
        (root, dir)
    }

    /// Every name of `batches`, checking that none repeats.
    fn names(batches: &[Vec<DirEntry>]) -> BTreeSet<Vec<u8>> {
        let mut seen = BTreeSet::new();
        for entry in batches.iter().flatten() {
            assert!(
                seen.insert(entry.name.to_vec()),
                "{:?} listed twice",
                entry.name
            );
        }
        seen
    }

    fn expected(count: usize) -> BTreeSet<Vec<u8>> {
        let mut want: BTreeSet<Vec<u8>> = (0..count)
            .map(|i| format!("f{i:05}").into_bytes())
            .collect();
        want.insert(b".".to_vec());
        want.insert(b"..".to_vec());
        want
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_batch_is_read_while_the_client_has_this_one() {
        // 248 files + `.` and `..`: batches of 100, 100 and 50, then the end.
        let (_root, mut dir) = listing(248);
        let mut batches = Vec::new();
        loop {
            let batch = dir.next_batch().await.unwrap();
            if batch.is_empty() {
                break;
            }
            let full = batch.len() == BATCH;
            batches.push(batch);
            assert_eq!(dir.ahead.is_some(), full, "after batch {}", batches.len());
        }
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            [100, 100, 50]
        );
        assert_eq!(names(&batches), expected(248));
        // The end stays the end, without reading again.
        assert!(dir.finished);
        assert!(dir.next_batch().await.unwrap().is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_request_does_not_lose_the_batch_read_ahead() {
        let (_root, mut dir) = listing(298);
        let first = dir.next_batch().await.unwrap();
        assert_eq!(first.len(), BATCH);
        // The second batch's read ahead may already have run: take it as a READDIR
        // would, then hold the listing and start the third batch's read ahead so that it
        // cannot finish (waiting on the lock), ask for it, give up while it waits (a
        // request cancelled mid-way), then ask again.
        let second = dir.ahead.take().unwrap().result().await.unwrap();
        assert_eq!(second.len(), BATCH);
        let state = dir.state.clone();
        let held = state.lock().unwrap();
        let blocked = dir.state.clone();
        dir.ahead = Ahead::start(move || read_batch(&blocked));
        assert!(dir.ahead.is_some());
        {
            let mut request = std::pin::pin!(dir.next_batch());
            let poll = request
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()));
            assert!(matches!(poll, Poll::Pending));
        }
        drop(held);
        let mut batches = vec![first, second];
        loop {
            let batch = dir.next_batch().await.unwrap();
            if batch.is_empty() {
                break;
            }
            batches.push(batch);
        }
        assert_eq!(names(&batches), expected(298));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_thread_reads_each_batch_when_asked() {
        // `sftpgate sftp-server`: no pool to read ahead on, every batch read inline.
        let (_root, mut dir) = listing(150);
        let mut batches = Vec::new();
        loop {
            let batch = dir.next_batch().await.unwrap();
            assert!(dir.ahead.is_none());
            if batch.is_empty() {
                break;
            }
            batches.push(batch);
        }
        assert_eq!(names(&batches), expected(150));
    }
}
