//! An upload: a file open for writing, streamed into a multipart upload.
//!
//! Writes pass through the [`Reorder`] window; what comes out in order fills a part buffer,
//! and each full part (`part_size` bytes) is sent while the client goes on writing, up to
//! `parts_in_flight` parts per session (the semaphore in `Shared`: a write waits for a free
//! slot, which is the backpressure that bounds memory). Nothing is visible until
//! [`Writer::commit`] (CLOSE or fsync): an upload smaller than one part is a single PUT
//! then, a larger one is completed.
//!
//! Any write the store cannot honour (before bytes already released, overlapping a held
//! write, beyond the window for longer than `reorder_wait`) fails the *upload*, not only
//! the write: its multipart upload is aborted and CLOSE reports the failure, so no object
//! with a hole or stale bytes is ever completed. [`Writer::abandon`] (the session ended
//! without CLOSE, or exit) aborts the same way; dropping a writer that still holds an
//! upload aborts it on the runtime.
//!
//! A file opened without TRUNC keeps its bytes: writes may only continue at its end (a
//! resumed upload, APPEND), and its existing bytes are copied into the new upload through
//! the server with ranged GETs before the first new byte (S3 has no append; the object is
//! replaced at commit). After an fsync the same happens from the committed object.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStoreExt, PutPayload};
use sftpgate_vfs::FsError;
use tokio::sync::{Mutex, Notify, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::call::call;
use crate::fs::Shared;
use crate::reorder::{Refusal, Reorder};

/// How an upload starts.
pub(crate) enum WriterStart {
    /// A new or truncated file: stored (empty if nothing is written) at commit.
    New,
    /// An existing object of `len` bytes, kept unless written after.
    Continue { len: u64 },
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    key: Path,
    id: u64,
    state: Mutex<State>,
    /// Woken whenever the window moves, for writes waiting beyond it.
    progress: Notify,
    _slot: OwnedSemaphorePermit,
}

struct State {
    append: bool,
    reorder: Reorder,
    /// Bytes of the existing object still to copy in before the first new byte.
    base: u64,
    /// Whether commit has something to store.
    dirty: bool,
    buffer: Vec<Bytes>,
    buffered: usize,
    upload: Option<Box<dyn MultipartUpload>>,
    parts: JoinSet<Result<(), FsError>>,
    /// Set once the upload failed: every later call reports it.
    failed: Option<String>,
    /// Closed or abandoned.
    finished: bool,
}

impl Writer {
    pub(crate) fn open(
        shared: Arc<Shared>,
        key: Path,
        start: WriterStart,
        append: bool,
    ) -> Result<Arc<Writer>, FsError> {
        let slot = shared
            .writer_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                FsError::Other(format!(
                    "too many files open for writing in this session (at most {})",
                    shared.config.max_writers
                ))
            })?;
        let (base, dirty) = match start {
            WriterStart::New => (0, true),
            WriterStart::Continue { len } => (len, false),
        };
        let window = shared.config.reorder_window as u64;
        // Registered (weakly) for the abort at exit, under the id it unregisters with.
        Ok(Arc::new_cyclic(|weak| Writer {
            id: shared.register(weak.clone()),
            key,
            state: Mutex::new(State {
                append,
                reorder: Reorder::new(base, window),
                base,
                dirty,
                buffer: Vec::new(),
                buffered: 0,
                upload: None,
                parts: JoinSet::new(),
                failed: None,
                finished: false,
            }),
            progress: Notify::new(),
            _slot: slot,
            shared: shared.clone(),
        }))
    }

    /// Accepts a write: in order, held in the window, or refused (failing the upload).
    pub(crate) async fn write(&self, offset: u64, data: Bytes) -> Result<(), FsError> {
        let deadline = Instant::now() + self.shared.config.reorder_wait;
        loop {
            let mut st = self.state.lock().await;
            st.check()?;
            let offset = if st.append { st.reorder.end() } else { offset };
            match st.reorder.push(offset, data.clone()) {
                Ok(ready) => {
                    st.dirty = true;
                    if !ready.is_empty() {
                        let fed = self.feed(&mut st, ready).await;
                        self.progress.notify_waiters();
                        if let Err(e) = fed {
                            return Err(self.fail(&mut st, e).await);
                        }
                    }
                    return Ok(());
                }
                Err(Refusal::BeyondWindow { .. }) => {
                    // The writes before it are probably still on their way (the server
                    // runs a handle's writes concurrently): wait for the window to move.
                    let notified = self.progress.notified();
                    tokio::pin!(notified);
                    notified.as_mut().enable();
                    drop(st);
                    if tokio::time::timeout_at(deadline, notified).await.is_err() {
                        let mut st = self.state.lock().await;
                        st.check()?;
                        let next = st.reorder.next();
                        let e = FsError::Other(format!(
                            "write at byte {offset} is too far ahead of byte {next}, the next \
                             one the upload needs: object storage takes a file in order \
                             (within {} bytes); the upload was abandoned",
                            self.shared.config.reorder_window
                        ));
                        return Err(self.fail(&mut st, e).await);
                    }
                }
                Err(refusal) => {
                    let e = FsError::Other(describe(&refusal));
                    return Err(self.fail(&mut st, e).await);
                }
            }
        }
    }

    /// The size the file has so far (what FSTAT reports).
    pub(crate) async fn size(&self) -> u64 {
        self.state.lock().await.reorder.end()
    }

    /// FSETSTAT size 0: start over with an empty file.
    pub(crate) async fn truncate_to_zero(&self) -> Result<(), FsError> {
        let mut st = self.state.lock().await;
        st.check()?;
        if st.reorder.end() > 0 && (st.upload.is_some() || st.reorder.next() > st.base) {
            return Err(FsError::Unsupported(
                "truncating a file being uploaded; open it with TRUNC instead".into(),
            ));
        }
        st.reorder = Reorder::new(0, self.shared.config.reorder_window as u64);
        st.base = 0;
        st.buffer.clear();
        st.buffered = 0;
        st.dirty = true;
        Ok(())
    }

    /// Makes what was written visible (fsync): completes the upload. Later writes continue
    /// after the committed bytes.
    pub(crate) async fn commit(&self) -> Result<(), FsError> {
        let mut st = self.state.lock().await;
        st.check()?;
        match self.commit_locked(&mut st).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(&mut st, e).await),
        }
    }

    /// CLOSE: commit, then release the upload slot.
    pub(crate) async fn close(&self) -> Result<(), FsError> {
        let mut st = self.state.lock().await;
        if st.finished {
            return Err(FsError::Other("the handle is closed".into()));
        }
        let result = match st.check() {
            // Failed earlier (and aborted then): report it once more, and let go.
            Err(e) => Err(e),
            Ok(()) => match self.commit_locked(&mut st).await {
                Ok(()) => Ok(()),
                Err(e) => Err(self.fail(&mut st, e).await),
            },
        };
        st.finished = true;
        self.shared.unregister(self.id);
        result
    }

    /// The session ended without CLOSE: abort whatever was uploaded, store nothing.
    pub(crate) async fn abandon(&self) {
        let mut st = self.state.lock().await;
        if st.finished {
            return;
        }
        st.finished = true;
        st.failed = Some("the session ended before the file was closed".into());
        self.abort_locked(&mut st).await;
        self.shared.unregister(self.id);
    }

    async fn commit_locked(&self, st: &mut State) -> Result<(), FsError> {
        if let Some(gap) = st.reorder.gap() {
            return Err(FsError::Other(format!(
                "the file has a gap at byte {gap} (no write covered it); nothing was stored"
            )));
        }
        if !st.dirty {
            return Ok(());
        }
        // Writes may all have been empty: the existing bytes still belong in the object.
        self.copy_base(st).await?;
        let config = &self.shared.config;
        match st.upload.take() {
            None => {
                let payload: PutPayload = st.buffer.drain(..).collect();
                st.buffered = 0;
                call(
                    config.call_timeout,
                    "PUT",
                    self.shared.store.put(&self.key, payload),
                )
                .await?;
            }
            Some(upload) => {
                st.upload = Some(upload);
                if st.buffered > 0 {
                    let chunks: Vec<Bytes> = st.buffer.drain(..).collect();
                    st.buffered = 0;
                    self.send_part(st, chunks).await?;
                }
                while let Some(joined) = st.parts.join_next().await {
                    part_result(joined)?;
                }
                let mut upload = st.upload.take().expect("set above");
                if let Err(e) =
                    call(config.call_timeout, "complete upload", upload.complete()).await
                {
                    st.upload = Some(upload);
                    return Err(e);
                }
            }
        }
        // What follows an fsync continues after the committed bytes.
        st.base = st.reorder.next();
        st.dirty = false;
        Ok(())
    }

    /// Feeds released bytes into the part buffer, sending every full part.
    async fn feed(&self, st: &mut State, ready: Vec<Bytes>) -> Result<(), FsError> {
        self.copy_base(st).await?;
        for chunk in ready {
            self.buffer(st, chunk).await?;
        }
        Ok(())
    }

    /// Copies the existing object's bytes into the upload, once, before any new byte.
    async fn copy_base(&self, st: &mut State) -> Result<(), FsError> {
        let len = std::mem::take(&mut st.base);
        let step = self.shared.config.part_size as u64;
        let mut at = 0;
        while at < len {
            let end = (at + step).min(len);
            let bytes = call(
                self.shared.config.call_timeout,
                "GET",
                self.shared.store.get_range(&self.key, at..end),
            )
            .await?;
            if bytes.len() as u64 != end - at {
                return Err(FsError::Other(
                    "the file changed on the storage while being continued".into(),
                ));
            }
            self.buffer(st, bytes).await?;
            at = end;
        }
        Ok(())
    }

    async fn buffer(&self, st: &mut State, mut chunk: Bytes) -> Result<(), FsError> {
        let part_size = self.shared.config.part_size;
        while !chunk.is_empty() {
            let take = (part_size - st.buffered).min(chunk.len());
            st.buffer.push(chunk.split_to(take));
            st.buffered += take;
            if st.buffered == part_size {
                let chunks: Vec<Bytes> = st.buffer.drain(..).collect();
                st.buffered = 0;
                self.send_part(st, chunks).await?;
            }
        }
        Ok(())
    }

    /// Starts uploading one part; waits first for a free slot (bounded memory).
    async fn send_part(&self, st: &mut State, chunks: Vec<Bytes>) -> Result<(), FsError> {
        let config = &self.shared.config;
        if st.upload.is_none() {
            let upload = call(
                config.call_timeout,
                "start upload",
                self.shared.store.put_multipart(&self.key),
            )
            .await?;
            st.upload = Some(upload);
        }
        // Collect finished parts, and wait for one if this file alone fills the slots.
        while let Some(joined) = st.parts.try_join_next() {
            part_result(joined)?;
        }
        if st.parts.len() >= config.parts_in_flight {
            if let Some(joined) = st.parts.join_next().await {
                part_result(joined)?;
            }
        }
        let permit = self
            .shared
            .parts
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| FsError::Other("the session is ending".into()))?;
        let payload: PutPayload = chunks.into_iter().collect();
        let part = st.upload.as_mut().expect("started above").put_part(payload);
        let timeout = config.call_timeout;
        st.parts.spawn(async move {
            let _permit = permit;
            call(timeout, "upload part", part).await
        });
        Ok(())
    }

    /// Marks the upload failed and aborts it; returns the error to report.
    async fn fail(&self, st: &mut State, e: FsError) -> FsError {
        tracing::warn!(error = %e, "upload failed; aborting it");
        st.failed = Some(e.to_string());
        self.abort_locked(st).await;
        e
    }

    async fn abort_locked(&self, st: &mut State) {
        st.parts.abort_all();
        while st.parts.join_next().await.is_some() {}
        st.buffer.clear();
        st.buffered = 0;
        if let Some(mut upload) = st.upload.take() {
            if let Err(e) = call(
                self.shared.config.call_timeout,
                "abort upload",
                upload.abort(),
            )
            .await
            {
                tracing::warn!(error = %e, "aborting a multipart upload failed; the bucket's \
                    lifecycle rule for incomplete uploads must remove it");
            }
        }
    }
}

impl Drop for Writer {
    /// A writer dropped with an upload still open (a cancelled CLOSE, a handle that
    /// bypassed the table) aborts it on the runtime rather than leave it orphaned.
    fn drop(&mut self) {
        let upload = self.state.get_mut().upload.take();
        self.shared.unregister(self.id);
        if let Some(mut upload) = upload {
            let timeout = self.shared.config.call_timeout;
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = call(timeout, "abort upload", upload.abort()).await;
                });
            } else {
                tracing::warn!("an upload was dropped outside a runtime and not aborted");
            }
        }
    }
}

impl State {
    fn check(&self) -> Result<(), FsError> {
        if let Some(message) = &self.failed {
            return Err(FsError::Other(format!("upload failed earlier: {message}")));
        }
        if self.finished {
            return Err(FsError::Other("the handle is closed".into()));
        }
        Ok(())
    }
}

fn part_result(joined: Result<Result<(), FsError>, tokio::task::JoinError>) -> Result<(), FsError> {
    match joined {
        Ok(result) => result,
        Err(e) if e.is_cancelled() => Err(FsError::Other("a part upload was cancelled".into())),
        Err(_) => Err(FsError::Other("a part upload failed unexpectedly".into())),
    }
}

fn describe(refusal: &Refusal) -> String {
    match refusal {
        Refusal::Rewrite { offset, next } => format!(
            "write at byte {offset} rewrites bytes already uploaded (the upload is at byte \
             {next}): object storage takes a file in order; the upload was abandoned"
        ),
        Refusal::Overlap { offset } => format!(
            "write at byte {offset} overlaps another write not yet uploaded; the upload was \
             abandoned"
        ),
        Refusal::BeyondWindow { offset, next } => format!(
            "write at byte {offset} is too far ahead of byte {next}; the upload was abandoned"
        ),
        Refusal::Overflow => "write offset overflows".into(),
    }
}
