//! Step 3 of the lifecycle, owned rather than remembered: an [`ExitGuard`] holds a session's
//! exit from the moment its factory returned, and runs it exactly once.
//!
//! At most once: the exit is taken out of the guard before it runs. At least once: the
//! session task calls [`ExitGuard::close`] on every path it controls, and `Drop` covers the
//! rest (the task was cancelled or panicked) by handing the exit to the runtime on the
//! server's task tracker, which shutdown waits for.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use sftpgate_vfs::{EndReason, Filesystem};
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::sftp::HandleTable;

/// The message a panic was raised with, for the log (`"<no message>"` when it carried
/// something other than a string).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&'static str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<no message>")
}

/// What ending a session takes: close what is open, then the filesystem's exit.
pub(crate) struct Exit {
    pub(crate) fs: Arc<dyn Filesystem>,
    pub(crate) handles: Arc<HandleTable>,
    pub(crate) timeout: Duration,
    pub(crate) span: tracing::Span,
}

impl Exit {
    async fn run(self, reason: EndReason) {
        let Exit {
            fs,
            handles,
            timeout,
            span,
        } = self;
        async move {
            let started = Instant::now();
            // Every end path closes all open handles first, so that the exit sees finished
            // files (an upload's last bytes flushed, an object-store upload completed).
            let closed = handles.close_all();
            if tokio::time::timeout(timeout, closed).await.is_err() {
                tracing::error!(?timeout, "closing open handles timed out");
            }
            let exit = AssertUnwindSafe(fs.exit(&reason)).catch_unwind();
            match tokio::time::timeout(timeout, exit).await {
                Ok(Ok(())) => {
                    metrics::histogram!("sftpgate_lifecycle_hook_seconds", "step" => "exit")
                        .record(started.elapsed().as_secs_f64());
                    tracing::info!(reason = %reason, elapsed = ?started.elapsed(), "session exit done");
                }
                Ok(Err(panic)) => {
                    metrics::counter!("sftpgate_lifecycle_hook_failures_total", "step" => "exit")
                        .increment(1);
                    tracing::error!(reason = %reason, panic = panic_message(&*panic), "session exit panicked");
                }
                Err(_) => {
                    metrics::counter!("sftpgate_lifecycle_hook_timeouts_total", "step" => "exit")
                        .increment(1);
                    tracing::error!(reason = %reason, ?timeout, "session exit timed out and was abandoned");
                }
            }
        }
        .instrument(span)
        .await
    }
}

/// Owns a session's exit. Call [`ExitGuard::close`]; `Drop` is only the fallback.
#[must_use = "call close().await; Drop is only the fallback"]
pub(crate) struct ExitGuard {
    armed: Option<Exit>,
    tracker: TaskTracker,
}

impl ExitGuard {
    /// Arms the guard: from now on the exit runs exactly once.
    pub(crate) fn new(exit: Exit, tracker: TaskTracker) -> Self {
        ExitGuard {
            armed: Some(exit),
            tracker,
        }
    }

    /// Runs the exit with `reason` and waits for it.
    pub(crate) async fn close(mut self, reason: EndReason) {
        if let Some(exit) = self.armed.take() {
            exit.run(reason).await;
        }
    }
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if let Some(exit) = self.armed.take() {
            // The task that owned the session was cancelled or panicked. The runtime is
            // still up (the tracker keeps shutdown waiting for this), so run it there.
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    drop(runtime.spawn(self.tracker.track_future(exit.run(EndReason::Aborted))));
                }
                Err(_) => {
                    tracing::error!("session exit could not run: no runtime left");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use bytes::Bytes;
    use sftpgate_proto::{FileAttributes, OpenFlags};
    use sftpgate_vfs::{Dir, File, FsError, RenameMode, VPath};

    use super::*;

    /// How long the fake exit takes: long enough that a `TaskTracker::wait` that did not
    /// cover it would return first (time is paused, so it costs nothing).
    const EXIT_TAKES: Duration = Duration::from_secs(5);

    /// A filesystem that only records its exit: `started` when called, `finished` when it
    /// returns after [`EXIT_TAKES`].
    #[derive(Default)]
    struct FakeFs {
        started: Mutex<Vec<EndReason>>,
        finished: Mutex<Vec<EndReason>>,
        hangs: bool,
        panics: bool,
    }

    impl FakeFs {
        fn started(&self) -> Vec<EndReason> {
            self.started.lock().unwrap().clone()
        }
        fn finished(&self) -> Vec<EndReason> {
            self.finished.lock().unwrap().clone()
        }
    }

    fn unsupported<T>() -> Result<T, FsError> {
        Err(FsError::Unsupported("fake".into()))
    }

    #[async_trait::async_trait]
    impl Filesystem for FakeFs {
        async fn open(
            &self,
            _: &VPath,
            _: OpenFlags,
            _: &FileAttributes,
        ) -> Result<Box<dyn File>, FsError> {
            unsupported()
        }
        async fn opendir(&self, _: &VPath) -> Result<Box<dyn Dir>, FsError> {
            unsupported()
        }
        async fn stat(&self, _: &VPath) -> Result<FileAttributes, FsError> {
            unsupported()
        }
        async fn lstat(&self, _: &VPath) -> Result<FileAttributes, FsError> {
            unsupported()
        }
        async fn setstat(&self, _: &VPath, _: &FileAttributes) -> Result<(), FsError> {
            unsupported()
        }
        async fn remove(&self, _: &VPath) -> Result<(), FsError> {
            unsupported()
        }
        async fn mkdir(&self, _: &VPath, _: &FileAttributes) -> Result<(), FsError> {
            unsupported()
        }
        async fn rmdir(&self, _: &VPath) -> Result<(), FsError> {
            unsupported()
        }
        async fn rename(&self, _: &VPath, _: &VPath, _: RenameMode) -> Result<(), FsError> {
            unsupported()
        }
        async fn readlink(&self, _: &VPath) -> Result<Bytes, FsError> {
            unsupported()
        }
        async fn symlink(&self, _: &[u8], _: &VPath) -> Result<(), FsError> {
            unsupported()
        }
        async fn exit(&self, reason: &EndReason) {
            self.started.lock().unwrap().push(reason.clone());
            tokio::time::sleep(EXIT_TAKES).await;
            if self.hangs {
                std::future::pending::<()>().await;
            }
            if self.panics {
                panic!("exit panicked");
            }
            self.finished.lock().unwrap().push(reason.clone());
        }
    }

    fn guard(fs: &Arc<FakeFs>, tracker: &TaskTracker, timeout: Duration) -> ExitGuard {
        let exit = Exit {
            fs: fs.clone(),
            handles: Arc::new(HandleTable::new(4)),
            timeout,
            span: tracing::Span::none(),
        };
        ExitGuard::new(exit, tracker.clone())
    }

    /// Closes the tracker and waits for it, as shutdown does.
    async fn drain(tracker: &TaskTracker) {
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test(start_paused = true)]
    async fn close_runs_the_exit_once_with_its_reason() {
        let fs = Arc::new(FakeFs::default());
        let tracker = TaskTracker::new();
        guard(&fs, &tracker, Duration::from_secs(30))
            .close(EndReason::ClientEof)
            .await;
        drain(&tracker).await;
        assert_eq!(fs.started(), vec![EndReason::ClientEof]);
        assert_eq!(
            fs.finished(),
            vec![EndReason::ClientEof],
            "close awaits the exit"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn drop_in_a_panicking_task_runs_aborted_once_tracked() {
        let fs = Arc::new(FakeFs::default());
        let tracker = TaskTracker::new();
        let g = guard(&fs, &tracker, Duration::from_secs(30));
        let task = tracker.spawn(async move {
            let _guard = g;
            panic!("session task panicked");
        });
        assert!(task.await.unwrap_err().is_panic());
        drain(&tracker).await;
        assert_eq!(fs.started(), vec![EndReason::Aborted]);
        assert_eq!(
            fs.finished(),
            vec![EndReason::Aborted],
            "tracker.wait() returned before the exit spawned by Drop finished"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn drop_in_an_aborted_task_runs_aborted_once_tracked() {
        let fs = Arc::new(FakeFs::default());
        let tracker = TaskTracker::new();
        let g = guard(&fs, &tracker, Duration::from_secs(30));
        let (running_tx, running_rx) = tokio::sync::oneshot::channel();
        let task = tracker.spawn(async move {
            let _guard = g;
            let _ = running_tx.send(());
            std::future::pending::<()>().await;
        });
        running_rx.await.unwrap();
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        drain(&tracker).await;
        assert_eq!(fs.started(), vec![EndReason::Aborted]);
        assert_eq!(fs.finished(), vec![EndReason::Aborted]);
    }

    #[tokio::test(start_paused = true)]
    async fn drop_after_close_does_not_run_it_again() {
        let fs = Arc::new(FakeFs::default());
        let tracker = TaskTracker::new();
        let g = guard(&fs, &tracker, Duration::from_secs(30));
        let task = tracker.spawn(async move {
            g.close(EndReason::Shutdown).await;
            panic!("after close");
        });
        assert!(task.await.unwrap_err().is_panic());
        drain(&tracker).await;
        assert_eq!(fs.started(), vec![EndReason::Shutdown]);
        assert_eq!(fs.finished(), vec![EndReason::Shutdown]);
    }

    /// A task aborted while its `close` is running: the exit was already taken out of the
    /// guard, so it is not run a second time (at most once wins over at least once here).
    #[tokio::test(start_paused = true)]
    async fn abort_during_close_does_not_run_it_again() {
        let fs = Arc::new(FakeFs::default());
        let tracker = TaskTracker::new();
        let g = guard(&fs, &tracker, Duration::from_secs(30));
        let task = tracker.spawn(g.close(EndReason::ClientClosed));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(fs.started(), vec![EndReason::ClientClosed]);
        task.abort();
        let _ = task.await;
        drain(&tracker).await;
        assert_eq!(fs.started(), vec![EndReason::ClientClosed]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_exit_is_abandoned_after_the_timeout() {
        let fs = Arc::new(FakeFs {
            hangs: true,
            ..FakeFs::default()
        });
        let tracker = TaskTracker::new();
        let limit = Duration::from_secs(30);
        let started = tokio::time::Instant::now();
        guard(&fs, &tracker, limit)
            .close(EndReason::IdleTimeout)
            .await;
        assert_eq!(started.elapsed(), limit);
        assert_eq!(fs.started(), vec![EndReason::IdleTimeout]);
        assert!(fs.finished().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_exit_does_not_take_the_caller_down() {
        let fs = Arc::new(FakeFs {
            panics: true,
            ..FakeFs::default()
        });
        let tracker = TaskTracker::new();
        guard(&fs, &tracker, Duration::from_secs(30))
            .close(EndReason::ClientEof)
            .await;
        assert_eq!(fs.started(), vec![EndReason::ClientEof]);
        assert!(fs.finished().is_empty());
    }
}
