//! The one place where blocking system calls leave the async runtime: every storage
//! operation of this crate runs through [`blocking`], so the I/O strategy (a thread pool
//! today; io_uring or a dedicated pool later) can be swapped here alone.

use sftpgate_vfs::FsError;

/// Runs `op` on Tokio's blocking pool and waits for it. A panic in `op`, a cancelled task
/// or a missing runtime become [`FsError::Other`] with a message.
pub(crate) async fn blocking<T, F>(op: F) -> Result<T, FsError>
where
    F: FnOnce() -> Result<T, FsError> + Send + 'static,
    T: Send + 'static,
{
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| FsError::Other("storage used outside a Tokio runtime".into()))?;
    match runtime.spawn_blocking(op).await {
        Ok(result) => result,
        Err(err) if err.is_panic() => Err(FsError::Other("storage operation panicked".into())),
        Err(_) => Err(FsError::Other("storage operation was cancelled".into())),
    }
}
