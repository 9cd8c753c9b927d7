//! A session's open handles: the wire handle strings the client holds, mapped to open files
//! and directories, bounded in number, and all closed when the session ends.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::FutureExt as _;
use sftpgate_proto::OpenFlags;
use sftpgate_vfs::{Dir, File, FsError, VPath};

/// An open file.
pub(crate) struct FileHandle {
    pub(crate) file: Box<dyn File>,
    pub(crate) path: VPath,
    pub(crate) flags: OpenFlags,
    /// Bytes written through this handle.
    pub(crate) written: AtomicU64,
    /// Bytes read through this handle.
    pub(crate) read: AtomicU64,
}

/// An open directory listing.
pub(crate) struct DirHandle {
    pub(crate) dir: tokio::sync::Mutex<Box<dyn Dir>>,
}

#[derive(Clone)]
pub(crate) enum Handle {
    File(Arc<FileHandle>),
    Dir(Arc<DirHandle>),
}

/// The table of a session's handles. Handles are 4-byte strings of a counter, never reused
/// while open.
pub(crate) struct HandleTable {
    inner: Mutex<Inner>,
    max: usize,
}

struct Inner {
    next: u32,
    open: HashMap<u32, Handle>,
    /// Set once the session ends: no handle can be added after `close_all`.
    closed: bool,
}

impl HandleTable {
    pub(crate) fn new(max: usize) -> Self {
        HandleTable {
            inner: Mutex::new(Inner {
                next: 1,
                open: HashMap::new(),
                closed: false,
            }),
            max,
        }
    }

    /// Adds a handle; gives it back when the table is full or closed, so the caller can
    /// close what it opened.
    pub(crate) fn insert(&self, handle: Handle) -> Result<Bytes, (Handle, FsError)> {
        let mut inner = self.lock();
        if inner.closed {
            return Err((handle, FsError::Other("Session is ending".into())));
        }
        if inner.open.len() >= self.max {
            let max = self.max;
            metrics::counter!("sftpgate_limit_hits_total", "limit" => "handles").increment(1);
            tracing::info!(limit = max, "open handle limit reached; OPEN refused");
            return Err((
                handle,
                FsError::Other(format!("Too many open handles (limit {max})")),
            ));
        }
        let mut id = inner.next;
        while id == 0 || inner.open.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        inner.next = id.wrapping_add(1);
        inner.open.insert(id, handle);
        Ok(Bytes::copy_from_slice(&id.to_be_bytes()))
    }

    /// The open file behind a wire handle.
    pub(crate) fn file(&self, handle: &[u8]) -> Result<Arc<FileHandle>, FsError> {
        match self.get(handle)? {
            Handle::File(f) => Ok(f),
            Handle::Dir(_) => Err(FsError::Other("Handle is a directory, not a file".into())),
        }
    }

    /// The open directory behind a wire handle.
    pub(crate) fn dir(&self, handle: &[u8]) -> Result<Arc<DirHandle>, FsError> {
        match self.get(handle)? {
            Handle::Dir(d) => Ok(d),
            Handle::File(_) => Err(FsError::Other("Handle is a file, not a directory".into())),
        }
    }

    /// Whether the handle is a file opened for appending (its writes ignore offsets).
    pub(crate) fn is_append(&self, handle: &[u8]) -> bool {
        matches!(self.get(handle), Ok(Handle::File(f)) if f.flags.contains(OpenFlags::APPEND))
    }

    /// Takes a handle out of the table (CLOSE).
    pub(crate) fn remove(&self, handle: &[u8]) -> Result<Handle, FsError> {
        let id = parse(handle)?;
        self.lock().open.remove(&id).ok_or_else(invalid)
    }

    /// Number of open handles.
    pub(crate) fn len(&self) -> usize {
        self.lock().open.len()
    }

    /// Closes every open handle and refuses new ones: the end of the session. A backend
    /// whose `close` panics is logged and counted; the other handles are still closed and
    /// the session's exit still runs after this.
    pub(crate) async fn close_all(&self) {
        let handles: Vec<Handle> = {
            let mut inner = self.lock();
            inner.closed = true;
            inner.open.drain().map(|(_, h)| h).collect()
        };
        for handle in handles {
            if let Handle::File(f) = handle {
                // `abandon`, not `close`: the client never closed it (see `File::abandon`).
                match AssertUnwindSafe(f.file.abandon()).catch_unwind().await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(path = %f.path, error = %e, "closing a file left open failed");
                    }
                    Err(panic) => {
                        metrics::counter!("sftpgate_request_panics_total").increment(1);
                        tracing::error!(
                            path = %f.path,
                            panic = crate::lifecycle::panic_message(&*panic),
                            "closing a file left open panicked"
                        );
                    }
                }
            }
        }
    }

    fn get(&self, handle: &[u8]) -> Result<Handle, FsError> {
        let id = parse(handle)?;
        self.lock().open.get(&id).cloned().ok_or_else(invalid)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the map inconsistent (every critical
        // section is a single map operation), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn parse(handle: &[u8]) -> Result<u32, FsError> {
    <[u8; 4]>::try_from(handle)
        .map(u32::from_be_bytes)
        .map_err(|_| invalid())
}

fn invalid() -> FsError {
    FsError::Other("Invalid handle".into())
}
