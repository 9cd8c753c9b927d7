//! A directory listing: one delimited LIST of the directory's prefix (the store follows
//! S3's continuation tokens, 1,000 keys a page), handed out in batches of [`BATCH`].
//!
//! Objects are files, common prefixes are directories, the marker is hidden. A name that
//! is both an object and a prefix (S3 allows `a` next to `a/b`) is listed once, as the
//! file, the way STAT sees it. No `.` and `..`: a prefix has neither.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use sftpgate_vfs::{Dir, DirEntry, FsError};

use crate::call::call;
use crate::fs::{dir_attrs, file_attrs, Shared};

/// Entries per READDIR reply, as OpenSSH's sftp-server sends.
const BATCH: usize = 100;

pub(crate) struct ObjectDir {
    shared: Arc<Shared>,
    key: Path,
    entries: Option<std::vec::IntoIter<DirEntry>>,
}

impl ObjectDir {
    pub(crate) fn new(shared: Arc<Shared>, key: Path) -> ObjectDir {
        ObjectDir {
            shared,
            key,
            entries: None,
        }
    }

    async fn load(&self) -> Result<Vec<DirEntry>, FsError> {
        let prefix = (!self.key.as_ref().is_empty()).then_some(&self.key);
        let listing = call(
            self.shared.config.call_timeout,
            "LIST",
            self.shared.store.list_with_delimiter(prefix),
        )
        .await?;
        let keys = &self.shared.keys;
        let mut entries = Vec::with_capacity(listing.objects.len() + listing.common_prefixes.len());
        let mut files = BTreeSet::new();
        for meta in &listing.objects {
            if let Some(name) = keys.child_name(&self.key, &meta.location) {
                files.insert(name.to_owned());
                entries.push(DirEntry {
                    name: Bytes::copy_from_slice(name.as_bytes()),
                    attrs: file_attrs(meta),
                    nlink: 1,
                });
            }
        }
        for prefix in &listing.common_prefixes {
            if let Some(name) = keys.child_name(&self.key, prefix) {
                if !files.contains(name) {
                    entries.push(DirEntry {
                        name: Bytes::copy_from_slice(name.as_bytes()),
                        attrs: dir_attrs(),
                        nlink: 2,
                    });
                }
            }
        }
        Ok(entries)
    }
}

#[async_trait::async_trait]
impl Dir for ObjectDir {
    async fn next_batch(&mut self) -> Result<Vec<DirEntry>, FsError> {
        if self.entries.is_none() {
            self.entries = Some(self.load().await?.into_iter());
        }
        let entries = self.entries.as_mut().expect("loaded above");
        Ok(entries.by_ref().take(BATCH).collect())
    }
}
