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
//! Files in memory (tmpfs, ramfs) get an inline [`Lane`] for their small operations:
//! no device to wait for, so nothing to hand off (see [`in_memory`]).

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

/// An operation started on the blocking pool before its result is asked for, so that it
/// runs while the client is busy with the previous result (a listing's next batch, see
/// `dir.rs`) instead of after the client's next request arrives.
pub(crate) struct Ahead<T>(tokio::task::JoinHandle<Result<T, FsError>>);

impl<T: Send + 'static> Ahead<T> {
    /// Starts `op` on the blocking pool, or returns `None` where there is no pool to
    /// overlap with (a current-thread runtime, where [`blocking`] runs inline, or no runtime):
    /// the caller then runs it through [`blocking`] when the result is wanted.
    pub(crate) fn start<F>(op: F) -> Option<Ahead<T>>
    where
        F: FnOnce() -> Result<T, FsError> + Send + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            return None;
        }
        Some(Ahead(runtime.spawn_blocking(op)))
    }

    /// Waits for the operation's result. Dropping this future leaves the operation running
    /// and the `Ahead` able to deliver its result later; once it has delivered, the caller
    /// drops the `Ahead` (polling it again would wait on a finished task).
    pub(crate) async fn result(&mut self) -> Result<T, FsError> {
        match (&mut self.0).await {
            Ok(result) => result,
            Err(err) if err.is_panic() => Err(FsError::Other("storage operation panicked".into())),
            Err(_) => Err(FsError::Other("storage operation was cancelled".into())),
        }
    }
}

/// Most pool threads one [`Lane`] keeps busy at once.
const LANE_THREADS: usize = 4;

/// Largest read an inline lane makes on the calling thread: all of them at the default
/// `max_read` (255 KiB). A read from memory is a copy, and inline it also skips the
/// zero-filling that a read on the pool needs (file.rs): deep-pipelined downloads took
/// 7-14 % less server CPU per GiB than with reads above 64 KiB on the pool (two A/B runs,
/// docs/performance.md, "Fourth run").
pub(crate) const INLINE_READ_MAX: usize = 256 * 1024;
/// Largest write an inline lane always makes on the calling thread, whatever else runs.
pub(crate) const INLINE_WRITE_MAX: usize = 64 * 1024;
/// Largest write an inline lane makes on the calling thread when the lane is idle (no
/// operation running or queued): all of them at the default `max_write` (255 KiB); while
/// one runs, the next go to the pool as before ([`Lane::run_sized_or_when_idle`]).
///
/// Why both: with OpenSSH's `sftp` as the client (64 or 256 WRITEs of 255 KiB in flight,
/// the client the limit), every WRITE found the pool idle, so each one woke a pool thread
/// and the pool woke the runtime back: inline, `put` took 13-22 % less server CPU per GiB.
/// With a client faster than the server (the load generator), the pool keeps busy without
/// sleeping and overlaps the copy with the SSH work on the other core, and writes inline
/// on both workers at once only contend for the inode's lock (deep chacha20-poly1305
/// uploads: 1.72 against 1.29 s/GiB, and slower). docs/performance.md, "Sixteenth run".
pub(crate) const INLINE_WRITE_IDLE_MAX: usize = 256 * 1024;

/// `statfs(2)` magic numbers of filesystems whose files live in memory.
const TMPFS_MAGIC: u64 = 0x0102_1994;
const RAMFS_MAGIC: u64 = 0x8584_58f6;

/// Whether the file behind `fd` lives in memory (tmpfs, ramfs), so that reading or writing
/// it never waits for a device. The kernel does not support `RWF_NOWAIT` there (EOPNOTSUPP:
/// there is nothing to wait for), so without this every cached-by-definition read would
/// take a pool hop that reads on disk filesystems skip. Swapped-out tmpfs pages can still
/// take a while to come back, as any memory of the process can.
pub(crate) fn in_memory(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    rustix::fs::fstatfs(fd).is_ok_and(|fs| {
        u64::try_from(fs.f_type).is_ok_and(|t| t == TMPFS_MAGIC || t == RAMFS_MAGIC)
    })
}

type Job = Box<dyn FnOnce() + Send>;

/// The blocking work of one open file, run on at most [`LANE_THREADS`] pool threads (one
/// for its writes, see [`Lane::one_at_a_time`]) that each take queued operations one after
/// the other.
///
/// Why not one `spawn_blocking` per operation: a client pipelining 64 reads or writes puts
/// 64 operations in flight, and the pool would wake (or start) a thread for each, then
/// wake the runtime for each result — on a few cores the context switches cost more than
/// the copies. A lane wakes a thread only when it has none yet or falls behind, and a
/// thread that finishes an operation takes the next one without sleeping. Several threads
/// remain, so a slow device still overlaps a few operations.
pub(crate) struct Lane {
    state: std::sync::Mutex<LaneState>,
    /// Reads and writes up to [`INLINE_READ_MAX`] and [`INLINE_WRITE_MAX`] bytes, and
    /// everything else, run on the calling thread (a file in memory, see [`in_memory`]).
    inline: bool,
    /// Most pool threads at once: [`LANE_THREADS`], or 1 ([`Lane::one_at_a_time`]).
    max_threads: usize,
}

impl Default for Lane {
    fn default() -> Lane {
        Lane {
            state: std::sync::Mutex::default(),
            inline: false,
            max_threads: LANE_THREADS,
        }
    }
}

#[derive(Default)]
struct LaneState {
    queue: std::collections::VecDeque<Job>,
    threads: usize,
    /// An operation of [`Lane::run_sized_or_when_idle`] running on its caller's thread: it
    /// takes one of the lane's `max_threads` places.
    inline_busy: bool,
}

impl Lane {
    /// A lane whose operations run on the calling thread, reads and writes up to a size.
    pub(crate) fn inline() -> Lane {
        Lane {
            inline: true,
            ..Lane::default()
        }
    }

    /// This lane, running one operation at a time on the pool. For a file's writes: Linux
    /// takes the inode's lock for every buffered write (ext4, XFS, tmpfs, NFS alike), so a
    /// second thread writing the same file only waits, and its first moments of waiting
    /// are spinning on the lock (`rwsem_spin_on_owner`: 3 % of the machine's CPU samples,
    /// both cores, in a deep-pipelined upload of one file; docs/performance.md, "Fifth
    /// run"). Inline writes (small ones, files in memory) run on the caller's thread, and
    /// so do big ones that find the lane idle ([`Lane::run_sized_or_when_idle`]), holding
    /// the lane's one place while they run.
    pub(crate) fn one_at_a_time(self) -> Lane {
        Lane {
            max_threads: 1,
            ..self
        }
    }

    /// Whether an operation moving `bytes` bytes, inline up to `limit`, would run on the
    /// calling thread (an inline lane, or a current-thread runtime), so that it may borrow
    /// the caller's buffers.
    pub(crate) fn runs_inline(&self, bytes: usize, limit: usize) -> bool {
        (self.inline && bytes <= limit)
            || tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
                runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread
            })
    }

    /// Runs an operation that moves at most `bytes` bytes: inline on an inline lane when
    /// that is at most `limit`, else on the lane's pool threads.
    pub(crate) async fn run_sized<T, F>(
        self: &std::sync::Arc<Self>,
        bytes: usize,
        limit: usize,
        op: F,
    ) -> Result<T, FsError>
    where
        F: FnOnce() -> Result<T, FsError> + Send + 'static,
        T: Send + 'static,
    {
        if self.inline && bytes <= limit {
            return catch_panic(op);
        }
        self.pooled(op).await
    }

    /// As [`Lane::run_sized`] (inline up to `limit`), and also inline up to `idle_limit`
    /// when nothing else of the lane runs or waits, so that an operation that finds the
    /// lane idle costs no thread wake-ups. While one runs inline, the others queue for the
    /// pool, which starts when it ends: a one-at-a-time lane still runs one at a time.
    pub(crate) async fn run_sized_or_when_idle<T, F>(
        self: &std::sync::Arc<Self>,
        bytes: usize,
        limit: usize,
        idle_limit: usize,
        op: F,
    ) -> Result<T, FsError>
    where
        F: FnOnce() -> Result<T, FsError> + Send + 'static,
        T: Send + 'static,
    {
        if self.inline && bytes > limit && bytes <= idle_limit && self.begin_inline() {
            let result = catch_panic(op);
            self.end_inline();
            return result;
        }
        self.run_sized(bytes, limit, op).await
    }

    /// Takes the lane for an inline operation if it is idle.
    fn begin_inline(&self) -> bool {
        let mut state = self.lock();
        let idle = state.threads == 0 && !state.inline_busy && state.queue.is_empty();
        if idle {
            state.inline_busy = true;
        }
        idle
    }

    /// Gives the lane back after an inline operation, and starts a pool thread for what
    /// queued meanwhile.
    fn end_inline(self: &std::sync::Arc<Self>) {
        let start_thread = {
            let mut state = self.lock();
            state.inline_busy = false;
            let start = !state.queue.is_empty() && state.threads < self.max_threads;
            if start {
                state.threads += 1;
            }
            start
        };
        if start_thread {
            let lane = self.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn_blocking(move || lane.drain());
                }
                // Only on a runtime do operations queue (`pooled`); drained here otherwise.
                Err(_) => lane.drain(),
            }
        }
    }

    /// Runs `op` on the lane's threads and waits for it, or inline on a current-thread
    /// runtime (see [`blocking`]) or on an inline lane (`op` moves no data: a stat, a
    /// close). Errors as for [`blocking`]; if this future is dropped the operation still
    /// runs to its end.
    pub(crate) async fn run<T, F>(self: &std::sync::Arc<Self>, op: F) -> Result<T, FsError>
    where
        F: FnOnce() -> Result<T, FsError> + Send + 'static,
        T: Send + 'static,
    {
        if self.inline {
            return catch_panic(op);
        }
        self.pooled(op).await
    }

    /// Runs `op` on the lane's pool threads (inline on a current-thread runtime).
    async fn pooled<T, F>(self: &std::sync::Arc<Self>, op: F) -> Result<T, FsError>
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
            // ones will take next; an inline operation holds a place (`end_inline` starts
            // the thread when it ends).
            let wanted = state.threads == 0 || state.queue.len() > state.threads;
            if wanted && state.threads + usize::from(state.inline_busy) < self.max_threads {
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
    use std::os::fd::AsFd as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// The lane's pool threads once they have had time to leave: a thread hands over its
    /// last result before it takes the lock to find the queue empty and leave, so a test
    /// that has every result may still see it (seen under load).
    async fn threads_left(lane: &Lane) -> usize {
        for _ in 0..500 {
            if lane.lock().threads == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        lane.lock().threads
    }

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
            threads_left(&lane).await,
            0,
            "threads leave when the queue is empty"
        );
        assert!(lane.lock().queue.is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_one_at_a_time_lane_never_overlaps_its_jobs() {
        let lane = Arc::new(Lane::default().one_at_a_time());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let started = std::time::Instant::now();
        let tasks: Vec<_> = (0..40usize)
            .map(|i| {
                let (lane, running, most) = (lane.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    lane.run_sized(1 << 20, INLINE_WRITE_MAX, move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_micros(500));
                        running.fetch_sub(1, Ordering::SeqCst);
                        Ok(i)
                    })
                    .await
                })
            })
            .collect();
        for (i, task) in tasks.into_iter().enumerate() {
            assert_eq!(task.await.expect("task").expect("job"), i);
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "jobs overlapped");
        assert!(
            started.elapsed() >= Duration::from_millis(20),
            "40 x 0.5 ms, one after the other"
        );
        assert_eq!(threads_left(&lane).await, 0);
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_inline_lane_runs_small_operations_here_and_big_ones_on_the_pool() {
        let lane = Arc::new(Lane::inline());
        let here = std::thread::current().id();
        let thread = || Ok(std::thread::current().id());
        assert_eq!(lane.run(thread).await.expect("stat-like"), here);
        for limit in [INLINE_READ_MAX, INLINE_WRITE_MAX] {
            assert!(lane.runs_inline(limit, limit));
            assert!(!lane.runs_inline(limit + 1, limit));
            assert_eq!(
                lane.run_sized(limit, limit, thread).await.expect("small"),
                here
            );
            assert_ne!(
                lane.run_sized(limit + 1, limit, thread).await.expect("big"),
                here,
                "a big operation goes to the pool"
            );
        }
        let err = lane
            .run_sized(1, INLINE_WRITE_MAX, || -> Result<(), FsError> {
                panic!("boom")
            })
            .await
            .expect_err("panic");
        assert!(err.to_string().contains("panicked"), "{err}");

        let pooled = Arc::new(Lane::default());
        assert!(!pooled.runs_inline(1, INLINE_READ_MAX));
        assert_ne!(
            pooled
                .run_sized(1, INLINE_READ_MAX, thread)
                .await
                .expect("pooled"),
            here
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_big_write_runs_inline_only_on_an_idle_lane_and_never_beside_another() {
        const BIG: usize = INLINE_WRITE_MAX + 1;
        let lane = Arc::new(Lane::inline().one_at_a_time());
        let here = std::thread::current().id();
        let thread = || Ok(std::thread::current().id());
        async fn on<T: Send + 'static>(
            lane: &Arc<Lane>,
            bytes: usize,
            op: impl FnOnce() -> Result<T, FsError> + Send + 'static,
        ) -> Result<T, FsError> {
            lane.run_sized_or_when_idle(bytes, INLINE_WRITE_MAX, INLINE_WRITE_IDLE_MAX, op)
                .await
        }
        /// A task writing `BIG` bytes that calls `during` inside the write: the task's
        /// thread and the write's.
        fn spawn_write(
            lane: &Arc<Lane>,
            during: impl FnOnce() + Send + 'static,
        ) -> tokio::task::JoinHandle<(std::thread::ThreadId, std::thread::ThreadId)> {
            let lane = lane.clone();
            tokio::spawn(async move {
                let caller = std::thread::current().id();
                let ran_on = on(&lane, BIG, move || {
                    during();
                    Ok(std::thread::current().id())
                })
                .await
                .expect("write");
                (caller, ran_on)
            })
        }
        assert_eq!(on(&lane, BIG, thread).await.expect("idle"), here);
        assert_ne!(
            on(&lane, INLINE_WRITE_IDLE_MAX + 1, thread)
                .await
                .expect("too big"),
            here,
            "past the idle limit: the pool"
        );

        // One write held inline on a worker: the next one queues for the pool and starts
        // only once the first has ended.
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let first = spawn_write(&lane, move || {
            started_tx.send(()).expect("started");
            release_rx.recv().expect("release");
        });
        started_rx.recv().expect("first write started");
        let second_ran = Arc::new(AtomicUsize::new(0));
        let second = spawn_write(&lane, {
            let second_ran = second_ran.clone();
            move || {
                second_ran.fetch_add(1, Ordering::SeqCst);
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            second_ran.load(Ordering::SeqCst),
            0,
            "the second write ran beside the first"
        );
        release_tx.send(()).expect("release");
        let (caller, ran_on) = first.await.expect("first task");
        assert_eq!(caller, ran_on, "the first write ran inline");
        let (caller, ran_on) = second.await.expect("second task");
        assert_ne!(caller, ran_on, "the second write ran on the pool");
        assert_eq!(threads_left(&lane).await, 0);

        // A panic inline is an error and leaves the lane idle.
        let err = on(&lane, BIG, || -> Result<std::thread::ThreadId, FsError> {
            panic!("boom")
        })
        .await
        .expect_err("panic");
        assert!(err.to_string().contains("panicked"), "{err}");
        assert_eq!(on(&lane, BIG, thread).await.expect("idle again"), here);

        // A lane on the pool (a file on disk) never runs them inline.
        let pooled = Arc::new(Lane::default().one_at_a_time());
        assert_ne!(on(&pooled, BIG, thread).await.expect("pooled"), here);
    }

    #[test]
    fn memory_filesystems_are_told_from_disk_ones() {
        // /proc/mounts says what each mount point is, independently of statfs.
        let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
        // A later mount on the same point hides an earlier one: the last entry counts.
        let mut kinds = std::collections::HashMap::new();
        for line in mounts.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let (Some(point), Some(kind)) = (fields.get(1), fields.get(2)) {
                kinds.insert(*point, *kind);
            }
        }
        let mut checked = 0;
        for (point, kind) in &kinds {
            if !matches!(*kind, "tmpfs" | "ramfs" | "proc" | "ext4" | "xfs" | "btrfs") {
                continue;
            }
            let Ok(dir) = std::fs::File::open(point) else {
                continue;
            };
            let expected = matches!(*kind, "tmpfs" | "ramfs");
            assert_eq!(in_memory(dir.as_fd()), expected, "{point} ({kind})");
            checked += 1;
        }
        assert!(checked > 0, "no mount point to check in /proc/mounts");
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
