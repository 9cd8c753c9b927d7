//! [`ObjectFs`]: the `Filesystem` over a key prefix of an object store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use sftpgate_proto::{FileAttributes, FileType, OpenFlags, StatvfsReply, Times};
use sftpgate_vfs::{Dir, EndReason, File, Filesystem, FsError, ReadPart, RenameMode, VPath};
use tokio::sync::Semaphore;

use crate::call::call;
use crate::config::ObjectConfig;
use crate::dir::ObjectDir;
use crate::keys::{marker_of, KeyMap};
use crate::reader::Reader;
use crate::writer::{Writer, WriterStart};

/// A session's storage on an object store, below one key prefix.
///
/// Cheap to create (no store call): one per session, or one per user shared by sessions
/// (uploads are tracked per `ObjectFs`, and [`Filesystem::exit`] aborts the unfinished
/// ones, so a shared instance should not be exited per session).
pub struct ObjectFs {
    shared: Arc<Shared>,
}

/// What every handle of the filesystem shares.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) keys: KeyMap,
    pub(crate) config: ObjectConfig,
    /// Parts uploading at once, across all of the session's files.
    pub(crate) parts: Arc<Semaphore>,
    /// Files open for writing at once.
    pub(crate) writer_slots: Arc<Semaphore>,
    /// Unfinished uploads, aborted at exit.
    writers: Mutex<HashMap<u64, Weak<Writer>>>,
    next_writer: AtomicU64,
}

/// What a key is.
pub(crate) enum Kind {
    File(ObjectMeta),
    Dir,
    Missing,
}

impl ObjectFs {
    /// Serves the keys below `prefix` (`""`: the whole bucket) of `store`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        config: ObjectConfig,
    ) -> Result<ObjectFs, FsError> {
        config.validate()?;
        Ok(ObjectFs {
            shared: Arc::new(Shared {
                store,
                keys: KeyMap::new(prefix)?,
                parts: Arc::new(Semaphore::new(config.parts_in_flight)),
                writer_slots: Arc::new(Semaphore::new(config.max_writers)),
                config,
                writers: Mutex::new(HashMap::new()),
                next_writer: AtomicU64::new(0),
            }),
        })
    }

    /// Uploads started and not yet completed or aborted (for tests and metrics).
    pub fn open_uploads(&self) -> usize {
        self.shared
            .writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

impl Shared {
    pub(crate) async fn head(&self, key: &Path) -> Result<Option<ObjectMeta>, FsError> {
        match call(self.config.call_timeout, "HEAD", self.store.head(key)).await {
            Ok(meta) => Ok(Some(meta)),
            Err(FsError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether any key lies below `dir` (the marker included): one LIST page at most.
    async fn has_children(&self, dir: &Path) -> Result<bool, FsError> {
        let prefix = (!dir.as_ref().is_empty()).then_some(dir);
        let mut listing = self.store.list(prefix);
        let first = call(self.config.call_timeout, "LIST", async {
            listing.next().await.transpose()
        })
        .await?;
        Ok(first.is_some())
    }

    pub(crate) async fn kind(&self, path: &VPath) -> Result<Kind, FsError> {
        if path.is_root() {
            return Ok(Kind::Dir);
        }
        let key = self.keys.key(path)?;
        // A file shadows keys below the same name (S3 allows both `a` and `a/b`).
        if let Some(meta) = self.head(&key).await? {
            return Ok(Kind::File(meta));
        }
        // A marker first: one small HEAD, where a LIST of a big directory returns a page
        // of 1,000 keys just to say it is not empty.
        if self.head(&marker_of(&key)).await?.is_some() || self.has_children(&key).await? {
            return Ok(Kind::Dir);
        }
        Ok(Kind::Missing)
    }

    /// Why a missing `path` is missing: below a file (NotADirectory) or simply absent.
    pub(crate) async fn missing(&self, path: &VPath) -> FsError {
        let mut ancestor = path.parent();
        while let Some(dir) = ancestor {
            if dir.is_root() {
                break;
            }
            match self.keys.key(&dir) {
                Ok(key) => match self.head(&key).await {
                    Ok(Some(_)) => return FsError::NotADirectory,
                    Ok(None) => {}
                    Err(e) => return e,
                },
                Err(e) => return e,
            }
            ancestor = dir.parent();
        }
        FsError::NotFound
    }

    /// The parent of `path` must be a directory for a new name to be made there.
    async fn require_parent(&self, path: &VPath) -> Result<(), FsError> {
        let parent = path.parent().ok_or(FsError::PermissionDenied)?;
        // The usual case first: a directory made by MKDIR (clients make the directories of
        // a tree before its files) answers with one HEAD of its marker.
        if parent.is_root() || self.head(&self.keys.marker(&parent)?).await?.is_some() {
            return Ok(());
        }
        match self.kind(&parent).await? {
            Kind::Dir => Ok(()),
            Kind::File(_) => Err(FsError::NotADirectory),
            Kind::Missing => Err(self.missing(&parent).await),
        }
    }

    async fn put(&self, key: &Path, data: Bytes) -> Result<(), FsError> {
        call(
            self.config.call_timeout,
            "PUT",
            self.store.put(key, PutPayload::from(data)),
        )
        .await
        .map(drop)
    }

    async fn delete(&self, key: &Path) -> Result<(), FsError> {
        call(self.config.call_timeout, "DELETE", self.store.delete(key)).await
    }

    async fn copy(&self, from: &Path, to: &Path) -> Result<(), FsError> {
        call(self.config.call_timeout, "COPY", self.store.copy(from, to)).await
    }

    /// Every key below `dir`, recursively (the whole listing, page after page).
    async fn list_all(&self, dir: &Path) -> Result<Vec<ObjectMeta>, FsError> {
        let prefix = (!dir.as_ref().is_empty()).then_some(dir);
        call(
            self.config.call_timeout,
            "LIST",
            self.store.list(prefix).try_collect::<Vec<_>>(),
        )
        .await
    }

    pub(crate) fn register(&self, writer: Weak<Writer>) -> u64 {
        let id = self.next_writer.fetch_add(1, Ordering::Relaxed);
        let mut writers = self.writers.lock().unwrap_or_else(|p| p.into_inner());
        writers.insert(id, writer);
        id
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.writers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

/// Attributes of an object: a regular file, rw-r--r--, its size and modification time.
pub(crate) fn file_attrs(meta: &ObjectMeta) -> FileAttributes {
    let mtime = u32::try_from(meta.last_modified.timestamp().max(0)).unwrap_or(u32::MAX);
    FileAttributes {
        size: Some(meta.size),
        permissions: Some(FileType::Regular.mode_bits() | 0o644),
        times: Some(Times {
            atime: mtime,
            mtime,
        }),
        ..FileAttributes::new()
    }
}

/// Attributes of a directory (a prefix): rwxr-xr-x, no size or time of its own.
pub(crate) fn dir_attrs() -> FileAttributes {
    FileAttributes {
        size: Some(0),
        permissions: Some(FileType::Directory.mode_bits() | 0o755),
        ..FileAttributes::new()
    }
}

/// SETSTAT on object storage: only what changes nothing, or truncation to zero.
pub(crate) enum SizeChange {
    Nothing,
    TruncateToZero,
}

pub(crate) fn check_setstat(attrs: &FileAttributes, current: u64) -> Result<SizeChange, FsError> {
    if attrs.permissions.is_some() || attrs.times.is_some() || attrs.owner.is_some() {
        return Err(FsError::Unsupported(
            "object storage keeps no permissions, owner or times".into(),
        ));
    }
    match attrs.size {
        None => Ok(SizeChange::Nothing),
        Some(size) if size == current => Ok(SizeChange::Nothing),
        Some(0) => Ok(SizeChange::TruncateToZero),
        Some(_) => Err(FsError::Unsupported(
            "object storage cannot change a file's size except to zero".into(),
        )),
    }
}

#[async_trait::async_trait]
impl Filesystem for ObjectFs {
    async fn open(
        &self,
        path: &VPath,
        flags: OpenFlags,
        _attrs: &FileAttributes,
    ) -> Result<Box<dyn File>, FsError> {
        let s = &self.shared;
        let key = s.keys.key(path)?;
        let kind = s.kind(path).await?;
        let existing = match kind {
            Kind::Dir => return Err(FsError::IsADirectory),
            Kind::File(meta) => Some(meta),
            Kind::Missing => None,
        };
        if !flags.contains(OpenFlags::WRITE) {
            let meta = match existing {
                Some(meta) => meta,
                None => return Err(s.missing(path).await),
            };
            return Ok(Box::new(ObjectFile {
                shared: s.clone(),
                key: key.clone(),
                reader: Some(Reader::new(s.clone(), key, meta.size)),
                writer: None,
                opened: Some(meta),
            }));
        }
        if existing.is_some() && flags.contains(OpenFlags::CREAT | OpenFlags::EXCL) {
            // Garage ignores If-None-Match, so this check is not atomic with the upload.
            return Err(FsError::AlreadyExists);
        }
        if existing.is_none() {
            if !flags.contains(OpenFlags::CREAT) {
                return Err(s.missing(path).await);
            }
            s.require_parent(path).await?;
        }
        let start = match &existing {
            None => WriterStart::New,
            Some(_) if flags.contains(OpenFlags::TRUNC) => WriterStart::New,
            Some(meta) => WriterStart::Continue { len: meta.size },
        };
        let writer = Writer::open(
            s.clone(),
            key.clone(),
            start,
            flags.contains(OpenFlags::APPEND),
        )?;
        let reader = match (&existing, flags.contains(OpenFlags::READ)) {
            (Some(meta), true) if !flags.contains(OpenFlags::TRUNC) => {
                Some(Reader::new(s.clone(), key.clone(), meta.size))
            }
            _ => None,
        };
        Ok(Box::new(ObjectFile {
            shared: s.clone(),
            key,
            reader,
            writer: Some(writer),
            opened: existing,
        }))
    }

    async fn opendir(&self, path: &VPath) -> Result<Box<dyn Dir>, FsError> {
        let s = &self.shared;
        match s.kind(path).await? {
            Kind::Dir => Ok(Box::new(ObjectDir::new(s.clone(), s.keys.key(path)?))),
            Kind::File(_) => Err(FsError::NotADirectory),
            Kind::Missing => Err(s.missing(path).await),
        }
    }

    async fn stat(&self, path: &VPath) -> Result<FileAttributes, FsError> {
        let s = &self.shared;
        match s.kind(path).await? {
            Kind::File(meta) => Ok(file_attrs(&meta)),
            Kind::Dir => Ok(dir_attrs()),
            Kind::Missing => Err(s.missing(path).await),
        }
    }

    async fn lstat(&self, path: &VPath) -> Result<FileAttributes, FsError> {
        self.stat(path).await
    }

    async fn setstat(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
        let s = &self.shared;
        match s.kind(path).await? {
            Kind::File(meta) => match check_setstat(attrs, meta.size)? {
                SizeChange::Nothing => Ok(()),
                SizeChange::TruncateToZero => s.put(&meta.location, Bytes::new()).await,
            },
            Kind::Dir => check_setstat(attrs, 0).map(drop),
            Kind::Missing => Err(s.missing(path).await),
        }
    }

    async fn remove(&self, path: &VPath) -> Result<(), FsError> {
        let s = &self.shared;
        match s.kind(path).await? {
            Kind::File(meta) => s.delete(&meta.location).await,
            Kind::Dir => Err(FsError::IsADirectory),
            Kind::Missing => Err(s.missing(path).await),
        }
    }

    async fn mkdir(&self, path: &VPath, _attrs: &FileAttributes) -> Result<(), FsError> {
        let s = &self.shared;
        if path.is_root() {
            return Err(FsError::AlreadyExists);
        }
        let marker = s.keys.marker(path)?;
        s.require_parent(path).await?;
        match s.kind(path).await? {
            Kind::Missing => s.put(&marker, Bytes::new()).await,
            _ => Err(FsError::AlreadyExists),
        }
    }

    async fn rmdir(&self, path: &VPath) -> Result<(), FsError> {
        let s = &self.shared;
        if path.is_root() {
            return Err(FsError::PermissionDenied);
        }
        match s.kind(path).await? {
            Kind::File(_) => return Err(FsError::NotADirectory),
            Kind::Missing => return Err(s.missing(path).await),
            Kind::Dir => {}
        }
        let key = s.keys.key(path)?;
        let marker = marker_of(&key);
        // Two keys are enough to know: anything but the marker means not empty.
        let mut listing = s.store.list(Some(&key));
        for _ in 0..2 {
            let next = call(s.config.call_timeout, "LIST", async {
                listing.next().await.transpose()
            })
            .await?;
            match next {
                Some(meta) if meta.location != marker => return Err(FsError::DirectoryNotEmpty),
                Some(_) => {}
                None => break,
            }
        }
        s.delete(&marker).await
    }

    async fn rename(&self, from: &VPath, to: &VPath, mode: RenameMode) -> Result<(), FsError> {
        let s = &self.shared;
        if from.is_root() || to.is_root() {
            return Err(FsError::PermissionDenied);
        }
        let from_key = s.keys.key(from)?;
        let to_key = s.keys.key(to)?;
        let from_kind = s.kind(from).await?;
        if matches!(from_kind, Kind::Missing) {
            return Err(s.missing(from).await);
        }
        if from == to {
            return Ok(());
        }
        if to.starts_with(from) {
            return Err(FsError::InvalidInput(
                "cannot move a directory into itself".into(),
            ));
        }
        s.require_parent(to).await?;
        match (s.kind(to).await?, mode) {
            (Kind::Missing, _) => {}
            (_, RenameMode::NoReplace) => return Err(FsError::AlreadyExists),
            (Kind::File(_), RenameMode::Replace) => {
                if matches!(from_kind, Kind::Dir) {
                    return Err(FsError::NotADirectory);
                }
            }
            (Kind::Dir, RenameMode::Replace) => {
                if matches!(from_kind, Kind::File(_)) {
                    return Err(FsError::IsADirectory);
                }
                // Replacing a directory needs it empty, as rename(2) does.
                let marker = marker_of(&to_key);
                if s.list_all(&to_key)
                    .await?
                    .iter()
                    .any(|m| m.location != marker)
                {
                    return Err(FsError::DirectoryNotEmpty);
                }
                s.delete(&marker).await?;
            }
        }
        match from_kind {
            Kind::File(_) => {
                // Not atomic: between the copy and the delete both names exist.
                s.copy(&from_key, &to_key).await?;
                s.delete(&from_key).await
            }
            Kind::Dir => rename_tree(s.clone(), &from_key, &to_key).await,
            Kind::Missing => unreachable!("checked above"),
        }
    }

    async fn readlink(&self, _path: &VPath) -> Result<Bytes, FsError> {
        Err(FsError::Unsupported(
            "object storage has no symbolic links".into(),
        ))
    }

    async fn symlink(&self, _target: &[u8], _link: &VPath) -> Result<(), FsError> {
        Err(FsError::Unsupported(
            "object storage has no symbolic links".into(),
        ))
    }

    async fn statvfs(&self, _path: &VPath) -> Result<StatvfsReply, FsError> {
        Ok(statvfs())
    }

    async fn exit(&self, reason: &EndReason) {
        let open: Vec<Arc<Writer>> = {
            let writers = self
                .shared
                .writers
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            writers.values().filter_map(Weak::upgrade).collect()
        };
        if !open.is_empty() {
            tracing::info!(uploads = open.len(), %reason, "aborting unfinished uploads at exit");
        }
        for writer in open {
            writer.abandon().await;
        }
    }
}

/// A bucket has no size: report a large, constant free space so clients that check it
/// (`df`, some GUI clients) go ahead, and S3's 1024-byte key limit as the name limit.
fn statvfs() -> StatvfsReply {
    const BLOCK: u64 = 4096;
    const BLOCKS: u64 = (1 << 50) / BLOCK; // 1 PiB
    StatvfsReply {
        bsize: BLOCK,
        frsize: BLOCK,
        blocks: BLOCKS,
        bfree: BLOCKS,
        bavail: BLOCKS,
        files: u64::from(u32::MAX),
        ffree: u64::from(u32::MAX),
        favail: u64::from(u32::MAX),
        fsid: 0,
        flag: 0,
        namemax: 1024,
    }
}

/// A directory rename: copy every key below `from` to the same place below `to`, then
/// delete the sources. If a copy fails, the copies made so far are deleted and the source
/// is left whole; a failed delete leaves both trees (reported, never silent).
async fn rename_tree(s: Arc<Shared>, from: &Path, to: &Path) -> Result<(), FsError> {
    const CONCURRENCY: usize = 8;
    let sources = s.list_all(from).await?;
    let mut pairs = Vec::with_capacity(sources.len());
    for meta in sources {
        let dest = s
            .keys
            .moved(&meta.location, from, to)
            .ok_or_else(|| FsError::Other("listing returned a key outside the directory".into()))?;
        pairs.push((meta.location, dest));
    }
    let copies: Vec<Result<Path, FsError>> = futures_util::stream::iter(pairs.clone())
        .map(|(src, dst)| {
            let s = s.clone();
            async move { s.copy(&src, &dst).await.map(|()| dst) }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    if copies.iter().any(Result::is_err) {
        let mut first_error = None;
        for copy in copies {
            match copy {
                Ok(dst) => {
                    if let Err(e) = s.delete(&dst).await {
                        tracing::warn!(error = %e, "removing a partial copy after a failed rename");
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        return Err(first_error.expect("one copy failed"));
    }
    let deletes: Vec<Result<(), FsError>> = futures_util::stream::iter(pairs)
        .map(|(src, _)| {
            let s = s.clone();
            async move { s.delete(&src).await }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    if deletes.iter().any(Result::is_err) {
        return Err(FsError::Other(
            "the directory was copied but not all of the old one could be removed".into(),
        ));
    }
    Ok(())
}

/// An open file: a reader, a writer, or both.
struct ObjectFile {
    shared: Arc<Shared>,
    key: Path,
    reader: Option<Reader>,
    writer: Option<Arc<Writer>>,
    /// The object as it was at OPEN, if it existed.
    opened: Option<ObjectMeta>,
}

#[async_trait::async_trait]
impl File for ObjectFile {
    async fn read(
        &self,
        offset: u64,
        len: u32,
        buf: &mut bytes::BytesMut,
    ) -> Result<usize, FsError> {
        match &self.reader {
            Some(reader) => reader.read(offset, len, buf).await,
            None if self.writer.is_some() && self.opened.is_none() => Err(FsError::Eof),
            None => Err(FsError::Other(
                "the file is not open for reading (reads see the object as it was at open)".into(),
            )),
        }
    }

    /// Each chunk's bytes go straight into the READ's packets (no buffer of its own).
    async fn read_parts(&self, offset: u64, parts: &mut [ReadPart]) -> Result<usize, FsError> {
        match &self.reader {
            Some(reader) => reader.read_parts(offset, parts).await,
            None => sftpgate_vfs::read_parts_joined(self, offset, parts).await,
        }
    }

    async fn write(&self, offset: u64, data: Bytes) -> Result<(), FsError> {
        match &self.writer {
            Some(writer) => writer.write(offset, data).await,
            None => Err(FsError::Other("the file is not open for writing".into())),
        }
    }

    async fn stat(&self) -> Result<FileAttributes, FsError> {
        let mut attrs = match &self.opened {
            Some(meta) => file_attrs(meta),
            None => FileAttributes {
                size: Some(0),
                permissions: Some(FileType::Regular.mode_bits() | 0o644),
                ..FileAttributes::new()
            },
        };
        if let Some(writer) = &self.writer {
            attrs.size = Some(writer.size().await);
        }
        Ok(attrs)
    }

    async fn setstat(&self, attrs: &FileAttributes) -> Result<(), FsError> {
        let current = match &self.writer {
            Some(writer) => writer.size().await,
            None => self.opened.as_ref().map_or(0, |m| m.size),
        };
        match check_setstat(attrs, current)? {
            SizeChange::Nothing => Ok(()),
            SizeChange::TruncateToZero => match &self.writer {
                Some(writer) => writer.truncate_to_zero().await,
                None => self.shared.put(&self.key, Bytes::new()).await,
            },
        }
    }

    async fn sync(&self) -> Result<(), FsError> {
        match &self.writer {
            Some(writer) => writer.commit().await,
            None => Ok(()),
        }
    }

    async fn statvfs(&self) -> Result<StatvfsReply, FsError> {
        Ok(statvfs())
    }

    async fn close(&self) -> Result<(), FsError> {
        match &self.writer {
            Some(writer) => writer.close().await,
            None => Ok(()),
        }
    }

    async fn abandon(&self) -> Result<(), FsError> {
        if let Some(writer) = &self.writer {
            writer.abandon().await;
        }
        Ok(())
    }
}
