//! The one place where blocking system calls meet the async runtime: every storage
//! operation of this crate runs through [`blocking`], so the I/O strategy can be swapped
//! here alone.
//!
//! On a multi-threaded runtime (the SSH server: many sessions) each operation runs on
//! Tokio's blocking pool, so a slow disk never stalls other sessions. On a current-thread
//! runtime (`sftpgate sftp-server`: one process per session, like OpenSSH's sftp-server)
//! operations run inline: there is nothing else for that thread to do meanwhile, and a pool
//! hop per request costs two thread wake-ups, which dominated small-file workloads.

use sftpgate_vfs::FsError;

/// Runs `op` on Tokio's blocking pool and waits for it, or inline on a current-thread
/// runtime. A panic in `op`, a cancelled task or a missing runtime become
/// [`FsError::Other`] with a message.
pub(crate) async fn blocking<T, F>(op: F) -> Result<T, FsError>
where
    F: FnOnce() -> Result<T, FsError> + Send + 'static,
    T: Send + 'static,
{
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| FsError::Other("storage used outside a Tokio runtime".into()))?;
    if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
        return std::panic::catch_unwind(std::panic::AssertUnwindSafe(op))
            .unwrap_or_else(|_| Err(FsError::Other("storage operation panicked".into())));
    }
    match runtime.spawn_blocking(op).await {
        Ok(result) => result,
        Err(err) if err.is_panic() => Err(FsError::Other("storage operation panicked".into())),
        Err(_) => Err(FsError::Other("storage operation was cancelled".into())),
    }
}
