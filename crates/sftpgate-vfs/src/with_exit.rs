//! [`WithExit`]: any filesystem plus an async action at the session's end — the usual shape
//! of a provisioned session (serve from what was allocated, release it on exit).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use sftpgate_proto::{FileAttributes, OpenFlags, StatvfsReply, UsersGroupsReply};

use crate::{Dir, EndReason, File, Filesystem, FsError, RenameMode, VPath};

type ExitAction = Box<dyn Fn(EndReason) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// Delegates every operation to `inner`; its `exit` first runs the inner filesystem's exit,
/// then `action` with the reason.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use sftpgate_vfs::{Filesystem, WithExit};
/// # fn example(local: Arc<dyn Filesystem>) -> WithExit {
/// WithExit::new(local, |reason| async move {
///     println!("releasing the volume: session ended ({reason})");
/// })
/// # }
/// ```
pub struct WithExit {
    inner: Arc<dyn Filesystem>,
    action: ExitAction,
}

impl WithExit {
    /// Wraps `inner`, running `action` at exit.
    pub fn new<A, Fut>(inner: Arc<dyn Filesystem>, action: A) -> Self
    where
        A: Fn(EndReason) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        WithExit {
            inner,
            action: Box::new(move |reason| Box::pin(action(reason))),
        }
    }
}

#[async_trait::async_trait]
impl Filesystem for WithExit {
    async fn open(
        &self,
        path: &VPath,
        flags: OpenFlags,
        attrs: &FileAttributes,
    ) -> Result<Box<dyn File>, FsError> {
        self.inner.open(path, flags, attrs).await
    }
    async fn opendir(&self, path: &VPath) -> Result<Box<dyn Dir>, FsError> {
        self.inner.opendir(path).await
    }
    async fn stat(&self, path: &VPath) -> Result<FileAttributes, FsError> {
        self.inner.stat(path).await
    }
    async fn lstat(&self, path: &VPath) -> Result<FileAttributes, FsError> {
        self.inner.lstat(path).await
    }
    async fn setstat(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
        self.inner.setstat(path, attrs).await
    }
    async fn lsetstat(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
        self.inner.lsetstat(path, attrs).await
    }
    async fn remove(&self, path: &VPath) -> Result<(), FsError> {
        self.inner.remove(path).await
    }
    async fn mkdir(&self, path: &VPath, attrs: &FileAttributes) -> Result<(), FsError> {
        self.inner.mkdir(path, attrs).await
    }
    async fn rmdir(&self, path: &VPath) -> Result<(), FsError> {
        self.inner.rmdir(path).await
    }
    async fn rename(&self, from: &VPath, to: &VPath, mode: RenameMode) -> Result<(), FsError> {
        self.inner.rename(from, to, mode).await
    }
    async fn readlink(&self, path: &VPath) -> Result<Bytes, FsError> {
        self.inner.readlink(path).await
    }
    async fn symlink(&self, target: &[u8], link: &VPath) -> Result<(), FsError> {
        self.inner.symlink(target, link).await
    }
    async fn hardlink(&self, existing: &VPath, new: &VPath) -> Result<(), FsError> {
        self.inner.hardlink(existing, new).await
    }
    async fn realpath(&self, path: &VPath) -> Result<VPath, FsError> {
        self.inner.realpath(path).await
    }
    async fn statvfs(&self, path: &VPath) -> Result<StatvfsReply, FsError> {
        self.inner.statvfs(path).await
    }
    async fn names_by_id(&self, uids: &[u32], gids: &[u32]) -> Result<UsersGroupsReply, FsError> {
        self.inner.names_by_id(uids, gids).await
    }
    async fn exit(&self, reason: &EndReason) {
        self.inner.exit(reason).await;
        (self.action)(reason.clone()).await;
    }
}
