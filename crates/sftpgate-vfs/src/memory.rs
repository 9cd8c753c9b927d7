//! [`MemoryFs`]: a whole filesystem in memory, bounded in size, for fuzzing the server's
//! request path and for tests that need storage without a disk. Files and directories only
//! (no symlinks, no hard links); POSIX semantics where the conformance suite checks them
//! (an open file keeps its data after REMOVE, RENAME moves whole trees, …).
//!
//! Every size the client controls (write offsets, SETSTAT sizes) is checked against
//! [`MemoryFs::with_capacity`] before anything is allocated, so arbitrary input cannot make
//! it allocate more than that.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use sftpgate_proto::{FileAttributes, FileType, OpenFlags};

use crate::{Dir, DirEntry, File, Filesystem, FsError, RenameMode, VPath};

/// Default capacity: the most file bytes a [`MemoryFs`] holds.
pub const DEFAULT_CAPACITY: u64 = 64 << 20;
/// Entries per READDIR batch.
const BATCH: usize = 64;

/// A filesystem in memory. Cloning shares the same tree.
#[derive(Clone)]
pub struct MemoryFs {
    tree: Arc<Mutex<Tree>>,
}

struct Tree {
    /// Keyed by the full path's bytes; `/` is always there.
    nodes: BTreeMap<Vec<u8>, Node>,
    /// File bytes held (of files still linked or still open).
    used: Arc<Mutex<u64>>,
    capacity: u64,
}

#[derive(Clone)]
enum Node {
    File(Arc<FileData>),
    Dir { mode: u32, mtime: u32 },
}

struct FileData {
    bytes: Mutex<Vec<u8>>,
    mode: Mutex<u32>,
    used: Arc<Mutex<u64>>,
    capacity: u64,
}

impl Drop for FileData {
    fn drop(&mut self) {
        let len = lock(&self.bytes).len() as u64;
        *lock(&self.used) -= len;
    }
}

impl FileData {
    /// Resizes to `len`, within the filesystem's capacity.
    fn resize(&self, bytes: &mut Vec<u8>, len: u64) -> Result<(), FsError> {
        let mut used = lock(&self.used);
        let old = bytes.len() as u64;
        let new_used = (*used - old).checked_add(len).ok_or(FsError::NoSpace)?;
        if new_used > self.capacity {
            return Err(FsError::NoSpace);
        }
        let len = usize::try_from(len).map_err(|_| FsError::NoSpace)?;
        bytes.resize(len, 0);
        *used = new_used;
        Ok(())
    }

    fn attrs(&self) -> FileAttributes {
        let mut attrs = FileAttributes::new();
        attrs.size = Some(lock(&self.bytes).len() as u64);
        attrs.permissions = Some(FileType::Regular.mode_bits() | *lock(&self.mode));
        attrs
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single step on plain data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for MemoryFs {
    fn default() -> Self {
        MemoryFs::with_capacity(DEFAULT_CAPACITY)
    }
}

impl MemoryFs {
    /// An empty filesystem (just `/`) holding at most `capacity` bytes of file data.
    pub fn with_capacity(capacity: u64) -> MemoryFs {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            b"/".to_vec(),
            Node::Dir {
                mode: 0o755,
                mtime: 0,
            },
        );
        MemoryFs {
            tree: Arc::new(Mutex::new(Tree {
                nodes,
                used: Arc::new(Mutex::new(0)),
                capacity,
            })),
        }
    }

    /// File bytes held now (including removed files still open).
    pub fn used(&self) -> u64 {
        *lock(&lock(&self.tree).used)
    }

    fn tree(&self) -> MutexGuard<'_, Tree> {
        lock(&self.tree)
    }
}

impl Tree {
    fn get(&self, path: &VPath) -> Result<&Node, FsError> {
        self.nodes
            .get(path.as_bytes())
            .ok_or_else(|| self.missing(path))
    }

    /// Why `path` is not there: a file where a directory should be on the way (ENOTDIR),
    /// or simply nothing (ENOENT).
    fn missing(&self, path: &VPath) -> FsError {
        let mut ancestor = path.parent();
        while let Some(dir) = ancestor {
            match self.nodes.get(dir.as_bytes()) {
                Some(Node::File(_)) => return FsError::NotADirectory,
                Some(Node::Dir { .. }) => return FsError::NotFound,
                None => ancestor = dir.parent(),
            }
        }
        FsError::NotFound
    }

    /// The parent of `path` must be an existing directory.
    fn check_parent(&self, path: &VPath) -> Result<(), FsError> {
        let Some(parent) = path.parent() else {
            return Err(FsError::PermissionDenied); // the root has no parent to create in
        };
        match self.get(&parent)? {
            Node::Dir { .. } => Ok(()),
            Node::File(_) => Err(FsError::NotADirectory),
        }
    }

    /// Paths strictly below the directory `dir`.
    fn below(&self, dir: &VPath) -> Vec<Vec<u8>> {
        let mut prefix = dir.as_bytes().to_vec();
        if !dir.is_root() {
            prefix.push(b'/');
        }
        self.nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

fn dir_attrs(mode: u32, mtime: u32) -> FileAttributes {
    let mut attrs = FileAttributes::new();
    attrs.size = Some(0);
    attrs.permissions = Some(FileType::Directory.mode_bits() | mode);
    attrs.times = Some(sftpgate_proto::Times {
        atime: mtime,
        mtime,
    });
    attrs
}

fn node_attrs(node: &Node) -> FileAttributes {
    match node {
        Node::File(data) => data.attrs(),
        Node::Dir { mode, mtime } => dir_attrs(*mode, *mtime),
    }
}

#[async_trait::async_trait]
impl Filesystem for MemoryFs {
    async fn open(
        &self,
        path: &VPath,
        flags: OpenFlags,
        attrs: &FileAttributes,
    ) -> Result<Box<dyn File>, FsError> {
        let mut tree = self.tree();
        let data = match tree.nodes.get(path.as_bytes()) {
            Some(Node::Dir { .. }) => return Err(FsError::IsADirectory),
            Some(Node::File(_)) if flags.contains(OpenFlags::CREAT | OpenFlags::EXCL) => {
                return Err(FsError::AlreadyExists)
            }
            Some(Node::File(data)) => data.clone(),
            None if flags.contains(OpenFlags::CREAT) => {
                tree.check_parent(path)?;
                let data = Arc::new(FileData {
                    bytes: Mutex::new(Vec::new()),
                    mode: Mutex::new(attrs.permissions.map_or(0o644, |p| p & 0o7777)),
                    used: tree.used.clone(),
                    capacity: tree.capacity,
                });
                tree.nodes
                    .insert(path.as_bytes().to_vec(), Node::File(data.clone()));
                data
            }
            None => {
                tree.check_parent(path)?;
                return Err(FsError::NotFound);
            }
        };
        drop(tree);
        if flags.contains(OpenFlags::TRUNC) {
            let mut bytes = lock(&data.bytes);
            data.resize(&mut bytes, 0)?;
        }
        Ok(Box::new(MemoryFile { data, flags }))
    }

    async fn opendir(&self, path: &VPath) -> Result<Box<dyn Dir>, FsError> {
        let tree = self.tree();
        let (mode, mtime) = match tree.get(path)? {
            Node::Dir { mode, mtime } => (*mode, *mtime),
            Node::File(_) => return Err(FsError::NotADirectory),
        };
        let mut entries = vec![
            DirEntry {
                name: Bytes::from_static(b"."),
                attrs: dir_attrs(mode, mtime),
                nlink: 2,
            },
            DirEntry {
                name: Bytes::from_static(b".."),
                attrs: dir_attrs(0o755, 0),
                nlink: 2,
            },
        ];
        let depth = path.components().count() + 1;
        for key in tree.below(path) {
            let child = VPath::parse(&key).map_err(|_| FsError::Other("bad key".into()))?;
            if child.components().count() != depth {
                continue;
            }
            let node = &tree.nodes[&key];
            entries.push(DirEntry {
                name: Bytes::copy_from_slice(child.file_name().unwrap_or_default()),
                attrs: node_attrs(node),
                nlink: 1,
            });
        }
        Ok(Box::new(MemoryDir { entries }))
    }

    async fn stat(&self, path: &VPath) -> Result<FileAttributes, FsError> {
        Ok(node_attrs(self.tree().get(path)?))
    }

    async fn lstat(&self, path: &VPath) -> Result<FileAttributes, FsError> {
        self.stat(path).await
    }

    async fn setstat(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
        let mut tree = self.tree();
        let missing = tree.missing(path);
        match tree.nodes.get_mut(path.as_bytes()).ok_or(missing)? {
            Node::File(data) => {
                let data = data.clone();
                drop(tree);
                set_file_attrs(&data, attrs)
            }
            Node::Dir { mode, mtime } => {
                if attrs.size.is_some() {
                    return Err(FsError::IsADirectory);
                }
                if let Some(p) = attrs.permissions {
                    *mode = p & 0o7777;
                }
                if let Some(t) = attrs.times {
                    *mtime = t.mtime;
                }
                Ok(())
            }
        }
    }

    async fn remove(&self, path: &VPath) -> Result<(), FsError> {
        let mut tree = self.tree();
        match tree.get(path)? {
            Node::Dir { .. } => Err(FsError::IsADirectory),
            Node::File(_) => {
                tree.nodes.remove(path.as_bytes());
                Ok(())
            }
        }
    }

    async fn mkdir(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
        let mut tree = self.tree();
        if tree.nodes.contains_key(path.as_bytes()) {
            return Err(FsError::AlreadyExists);
        }
        tree.check_parent(path)?;
        let mode = attrs.permissions.map_or(0o755, |p| p & 0o7777);
        tree.nodes
            .insert(path.as_bytes().to_vec(), Node::Dir { mode, mtime: 0 });
        Ok(())
    }

    async fn rmdir(&self, path: &VPath) -> Result<(), FsError> {
        let mut tree = self.tree();
        match tree.get(path)? {
            Node::File(_) => return Err(FsError::NotADirectory),
            Node::Dir { .. } if path.is_root() => return Err(FsError::PermissionDenied),
            Node::Dir { .. } => {}
        }
        if !tree.below(path).is_empty() {
            return Err(FsError::DirectoryNotEmpty);
        }
        tree.nodes.remove(path.as_bytes());
        Ok(())
    }

    async fn rename(&self, from: &VPath, to: &VPath, mode: RenameMode) -> Result<(), FsError> {
        let mut tree = self.tree();
        let moving = tree.get(from)?.clone();
        tree.check_parent(to)?;
        if from == to {
            return Ok(());
        }
        if from.is_root() || to.starts_with(from) {
            return Err(FsError::InvalidInput(
                "cannot move a directory into itself".into(),
            ));
        }
        if let Some(existing) = tree.nodes.get(to.as_bytes()) {
            if mode == RenameMode::NoReplace {
                return Err(FsError::AlreadyExists);
            }
            match (existing, &moving) {
                (Node::Dir { .. }, Node::File(_)) => return Err(FsError::IsADirectory),
                (Node::File(_), Node::Dir { .. }) => return Err(FsError::NotADirectory),
                (Node::Dir { .. }, Node::Dir { .. }) if !tree.below(to).is_empty() => {
                    return Err(FsError::DirectoryNotEmpty)
                }
                _ => {}
            }
        }
        let below = tree.below(from);
        tree.nodes.remove(from.as_bytes());
        tree.nodes.insert(to.as_bytes().to_vec(), moving);
        for key in below {
            let node = tree.nodes.remove(&key).expect("listed just now");
            let mut new_key = to.as_bytes().to_vec();
            new_key.extend_from_slice(&key[from.as_bytes().len()..]);
            tree.nodes.insert(new_key, node);
        }
        Ok(())
    }

    async fn readlink(&self, path: &VPath) -> Result<Bytes, FsError> {
        self.tree().get(path)?;
        Err(FsError::InvalidInput("not a symbolic link".into()))
    }

    async fn symlink(&self, _target: &[u8], _link: &VPath) -> Result<(), FsError> {
        Err(FsError::Unsupported("symlink".into()))
    }
}

fn set_file_attrs(data: &FileData, attrs: &FileAttributes) -> Result<(), FsError> {
    if let Some(size) = attrs.size {
        let mut bytes = lock(&data.bytes);
        data.resize(&mut bytes, size)?;
    }
    if let Some(p) = attrs.permissions {
        *lock(&data.mode) = p & 0o7777;
    }
    Ok(())
}

struct MemoryFile {
    data: Arc<FileData>,
    flags: OpenFlags,
}

#[async_trait::async_trait]
impl File for MemoryFile {
    async fn read(&self, offset: u64, len: u32, buf: &mut BytesMut) -> Result<usize, FsError> {
        if !self.flags.contains(OpenFlags::READ) {
            return Err(FsError::PermissionDenied);
        }
        let bytes = lock(&self.data.bytes);
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if start >= bytes.len() {
            return Err(FsError::Eof);
        }
        let end = bytes.len().min(start.saturating_add(len as usize));
        buf.extend_from_slice(&bytes[start..end]);
        Ok(end - start)
    }

    fn read_len_hint(&self, offset: u64, len: u32) -> Option<u32> {
        let size = lock(&self.data.bytes).len() as u64;
        Some(u32::try_from(size.saturating_sub(offset)).map_or(len, |left| len.min(left)))
    }

    fn reads_from_memory(&self) -> bool {
        true
    }

    async fn write(&self, offset: u64, data: Bytes) -> Result<(), FsError> {
        if !self.flags.intersects(OpenFlags::WRITE | OpenFlags::APPEND) {
            return Err(FsError::PermissionDenied);
        }
        let mut bytes = lock(&self.data.bytes);
        let start = if self.flags.contains(OpenFlags::APPEND) {
            bytes.len() as u64
        } else {
            offset
        };
        let end = start
            .checked_add(data.len() as u64)
            .ok_or(FsError::NoSpace)?;
        if end > bytes.len() as u64 {
            self.data.resize(&mut bytes, end)?;
        }
        // Both fit in usize: `resize` succeeded for `end`, or `end` is within the length.
        bytes[start as usize..end as usize].copy_from_slice(&data);
        Ok(())
    }

    async fn stat(&self) -> Result<FileAttributes, FsError> {
        Ok(self.data.attrs())
    }

    async fn setstat(&self, attrs: &FileAttributes) -> Result<(), FsError> {
        set_file_attrs(&self.data, attrs)
    }

    async fn sync(&self) -> Result<(), FsError> {
        Ok(())
    }

    async fn close(&self) -> Result<(), FsError> {
        Ok(())
    }
}

struct MemoryDir {
    entries: Vec<DirEntry>,
}

#[async_trait::async_trait]
impl Dir for MemoryDir {
    async fn next_batch(&mut self) -> Result<Vec<DirEntry>, FsError> {
        let n = self.entries.len().min(BATCH);
        Ok(self.entries.drain(..n).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block<F: std::future::Future>(f: F) -> F::Output {
        // The futures here never wait on anything: one poll each finishes them.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("MemoryFs never waits"),
        }
    }

    fn p(s: &str) -> VPath {
        VPath::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn capacity_is_enforced_before_allocating() {
        let fs = MemoryFs::with_capacity(1024);
        let flags = OpenFlags::WRITE | OpenFlags::CREAT;
        let f = block(fs.open(&p("/a"), flags, &FileAttributes::new())).unwrap();
        assert!(matches!(
            block(f.write(u64::MAX - 2, Bytes::from_static(b"abc"))),
            Err(FsError::NoSpace)
        ));
        assert!(matches!(
            block(f.write(1 << 40, Bytes::from_static(b"abc"))),
            Err(FsError::NoSpace)
        ));
        block(f.write(1000, Bytes::from_static(b"abc"))).unwrap();
        assert_eq!(fs.used(), 1003);
        let mut attrs = FileAttributes::new();
        attrs.size = Some(u64::MAX);
        assert!(matches!(block(f.setstat(&attrs)), Err(FsError::NoSpace)));
        block(fs.remove(&p("/a"))).unwrap();
        assert_eq!(fs.used(), 1003, "still open");
        drop(f);
        assert_eq!(fs.used(), 0);
    }

    #[test]
    fn conformance_core() {
        let fs = MemoryFs::default();
        let mut profile = crate::conformance::Profile::core();
        profile.posix_rename = true;
        profile.append = true;
        profile.random_writes = true;
        block_on_runtime(crate::conformance::run_profile(&fs, &profile));
    }

    /// The conformance suite polls futures concurrently; MemoryFs never waits, so a simple
    /// poll loop suffices.
    fn block_on_runtime<F: std::future::Future>(f: F) -> F::Output {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
        }
    }
}
