//! The one place where blocking system calls meet the async runtime: every storage
//! operation of this crate runs through [`blocking`], so the I/O strategy can be swapped
//! here alone.
//!
//! On a multi-threaded runtime (the SSH server: many sessions) each operation runs on
//! Tokio's blocking pool, so a slow disk never stalls other sessions; an open file's
//! operations go through its [`Lane`], which keeps a few pool threads busy instead of waking
//! one per operation. (Reads the page cache can answer at once do not come here at all:
//! see `LocalFile::read`.) On a current-thread
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
        return catch_panic(op);
    }
    match runtime.spawn_blocking(op).await {
        Ok(result) => result,
        Err(err) if err.is_panic() => Err(FsError::Other("storage operation panicked".into())),
        Err(_) => Err(FsError::Other("storage operation was cancelled".into())),
    }
}

/// Most pool threads one [`Lane`] keeps busy at once.
const LANE_THREADS: usize = 4;

type Job = Box<dyn FnOnce() + Send>;

/// The blocking work of one open file, run on at most [`LANE_THREADS`] pool threads that
/// each take queued operations one after the other.
///
/// Why not one `spawn_blocking` per operation: a client pipelining 64 reads or writes puts
/// 64 operations in flight, and the pool would wake (or start) a thread for each, then
/// wake the runtime for each result — on a few cores the context switches cost more than
/// the copies. A lane wakes a thread only when it has none yet or falls behind, and a
/// thread that finishes an operation takes the next one without sleeping. Several threads
/// remain, so a slow device still overlaps a few operations.
#[derive(Default)]
pub(crate) struct Lane {
    state: std::sync::Mutex<LaneState>,
}

#[derive(Default)]
struct LaneState {
    queue: std::collections::VecDeque<Job>,
    threads: usize,
}

impl Lane {
    /// Runs `op` on the lane's threads and waits for it, or inline on a current-thread
    /// runtime (see [`blocking`]). Errors as for [`blocking`]; if this future is dropped
    /// the operation still runs to its end.
    pub(crate) async fn run<T, F>(self: &std::sync::Arc<Self>, op: F) -> Result<T, FsError>
    where
        F: FnOnce() -> Result<T, FsError> + Send + 'static,
        T: Send + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| FsError::Other("storage used outside a Tokio runtime".into()))?;
        if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            return catch_panic(op);
        }
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(catch_panic(op));
        });
        let start_thread = {
            let mut state = self.lock();
            state.queue.push_back(job);
            // A new thread when there is none, or when the queue grows past what the busy
            // ones will take next.
            let wanted = state.threads == 0 || state.queue.len() > state.threads;
            if wanted && state.threads < LANE_THREADS {
                state.threads += 1;
                true
            } else {
                false
            }
        };
        if start_thread {
            let lane = self.clone();
            runtime.spawn_blocking(move || lane.drain());
        }
        result
            .await
            .unwrap_or_else(|_| Err(FsError::Other("storage operation was cancelled".into())))
    }

    fn drain(&self) {
        loop {
            let job = {
                let mut state = self.lock();
                match state.queue.pop_front() {
                    Some(job) => job,
                    None => {
                        state.threads -= 1;
                        return;
                    }
                }
            };
            job();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LaneState> {
        // Jobs run outside the lock and catch their panics: poisoning cannot happen, but
        // would leave the state consistent anyway.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn catch_panic<T>(op: impl FnOnce() -> Result<T, FsError>) -> Result<T, FsError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(op))
        .unwrap_or_else(|_| Err(FsError::Other("storage operation panicked".into())))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lane_runs_everything_on_a_few_threads() {
        let lane = Arc::new(Lane::default());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..200usize)
            .map(|i| {
                let (lane, running, most) = (lane.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    lane.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(200));
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok(i * 2)
                    })
                    .await
                })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.expect("task").expect("job"), i * 2);
        }
        let most = most.load(Ordering::SeqCst);
        assert!(
            (1..=LANE_THREADS).contains(&most),
            "{most} jobs ran at once"
        );
        assert_eq!(
            lane.lock().threads,
            0,
            "threads leave when the queue is empty"
        );
        assert!(lane.lock().queue.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_job_is_an_error_and_the_lane_goes_on() {
        let lane = Arc::new(Lane::default());
        let err = lane
            .run(|| -> Result<(), FsError> { panic!("boom") })
            .await
            .expect_err("panic");
        assert!(err.to_string().contains("panicked"), "{err}");
        assert_eq!(lane.run(|| Ok(7)).await.expect("next job"), 7);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn on_a_current_thread_runtime_jobs_run_inline() {
        let lane = Arc::new(Lane::default());
        let here = std::thread::current().id();
        let there = lane
            .run(|| Ok(std::thread::current().id()))
            .await
            .expect("job");
        assert_eq!(here, there);
    }
}
