//! A connection thread that has just answered a small request looks for the next one
//! before it sleeps.
//!
//! A small-file transfer is a chain of round trips: the client sends one request, waits for
//! the answer, sends the next. Between two requests a connection thread has nothing to do
//! and sleeps in `epoll_wait`; the next request then pays for a wake-up: on a virtual
//! machine the idle vCPU halts and the host has to schedule it again, and the client's send
//! pays for waking it. Captured on loopback (`bench/turns.sh`, 2 vCPU VM), the server's
//! turn of a 4 KiB WRITE or READ took 68-80 us when its thread slept and 26-30 us when it
//! polled instead, and the client's turn shrank too (92-99 -> 78-80 us): 1.5-1.6x the
//! round trips a second. Seastar's reactor polls the same way before it sleeps (200 us by
//! default); Go's scheduler spins briefly before it parks.
//!
//! What this does: when a connection runtime's worker is about to park, it may instead run
//! a short-lived task that yields in a loop for up to a budget (`idle_spin`). While a task
//! yields, tokio polls its I/O and time drivers with a zero timeout between turns instead
//! of sleeping in them, so every source of work is seen as soon as it is ready: the
//! connections' sockets, any other socket a task on the thread waits on (an S3 or database
//! connection), timers, tasks woken from other threads (the storage pool). The spin ends
//! when the thread's connections have read or written something (the next request came), or
//! at the budget. What it costs is CPU the thread would have spent asleep, so it spins only
//! where that buys latency:
//! - only after a wake-up that sent an answer and moved little data through its sockets
//!   (under [`SMALL_WAKE_BYTES`], read and written): request-response traffic. A bulk
//!   transfer moves 32 KiB and more per wake-up, and a download that the client cannot
//!   keep up with wakes on small requests whose answers wait for room in the socket (a
//!   write that would block rules the spin out); spinning in those took up to 20-30 % more
//!   server CPU per GiB, and on a small machine the CPU from the client;
//! - a spin that ends without work (a client whose next request is further away than the
//!   budget: across a WAN, or a person typing) makes the next ones skip: 1, 2, 4, ... up to
//!   [`MAX_SKIP`] parks without spinning, back to spinning on the first spin that finds work;
//! - it never keeps another program off its CPU: every turn of the spin calls
//!   `sched_yield(2)`, which runs whatever else is runnable there first. Without it, a
//!   client on the same machine that the kernel woke onto the spinning CPU waited out the
//!   spin: with one core busy in another program, 2,000 x 4 KiB `put -r` took 0.74 s
//!   against 0.51 s with the yield (medians of 6 alternating pairs, 2 vCPU VM, OpenSSH's
//!   sftp; docs/performance.md, "Twenty-fourth run"), and no longer on a quiet machine.
//!
//! Metrics: `sftpgate_idle_spins_total{result="found"|"missed"}` and
//! `sftpgate_idle_spin_microseconds_total` (the time spent spinning, all of it CPU).
//!
//! Only threads that [`install`] a budget spin, and only the traffic of sockets wrapped in
//! [`Watched`] on such a thread counts; everywhere else both are no-ops.

use std::cell::{Cell, OnceCell};
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes through a thread's sockets since it last parked under which it spins before
/// parking again: one small request and its answer (a 4 KiB file's WRITE or READ reply
/// with SSH framing is ~4.2 KiB), well under one bulk request (32 KiB by default).
pub const SMALL_WAKE_BYTES: usize = 16 * 1024;

/// Most parks skipped after spins that found nothing.
pub const MAX_SKIP: u32 = 64;

/// A thread's spin state.
struct Spinner {
    budget: Duration,
    /// Bytes read from and written to watched sockets since the last park (or since the
    /// spin began), and whether a write found a socket's buffer full.
    read: Cell<usize>,
    written: Cell<usize>,
    write_blocked: Cell<bool>,
    /// Parks still to skip, and how many the next miss makes skip.
    skip: Cell<u32>,
    next_skip: Cell<u32>,
    /// Made on the first spin: when the thread starts, the process's metrics recorder need
    /// not be there yet.
    counters: OnceCell<Counters>,
}

struct Counters {
    found: metrics::Counter,
    missed: metrics::Counter,
    micros: metrics::Counter,
}

impl Counters {
    fn new() -> Self {
        Counters {
            found: metrics::counter!("sftpgate_idle_spins_total", "result" => "found"),
            missed: metrics::counter!("sftpgate_idle_spins_total", "result" => "missed"),
            micros: metrics::counter!("sftpgate_idle_spin_microseconds_total"),
        }
    }
}

thread_local! {
    static SPINNER: OnceCell<Spinner> = const { OnceCell::new() };
}

/// Makes the calling thread spin for up to `budget` before it parks: call it from the
/// runtime's `on_thread_start`, and [`before_park`] from its `on_thread_park`. A zero
/// budget leaves the thread as it is.
pub(crate) fn install(budget: Duration) {
    if !budget.is_zero() {
        SPINNER.with(|s| {
            let _ = s.set(Spinner::new(budget));
        });
    }
}

/// Runs `f` on this thread's spinner, if it has one.
fn with_spinner<R>(f: impl FnOnce(&Spinner) -> R) -> Option<R> {
    // `try_with`: the thread may be shutting down.
    SPINNER.try_with(|s| s.get().map(f)).ok().flatten()
}

/// Run by tokio before the worker parks: if a spin is worth it (see the module), spawns
/// the spinning task, which keeps the worker from parking (tokio documents this hook as
/// the place to start work when the executor is idle).
pub(crate) fn before_park() {
    if with_spinner(Spinner::before_park) == Some(true) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(spin());
        }
    }
}

/// Yields, so that the worker polls its drivers instead of sleeping in them, until the
/// thread's connections move data or the budget is spent; records which.
async fn spin() {
    let Some(budget) = with_spinner(|s| s.budget) else {
        return;
    };
    let start = Instant::now();
    let found = loop {
        tokio::task::yield_now().await;
        // Anything else runnable on this CPU runs first (see the module); with nothing
        // there, sched_yield(2) returns at once.
        std::thread::yield_now();
        if with_spinner(Spinner::moved).unwrap_or(true) {
            break true;
        }
        if start.elapsed() >= budget {
            break false;
        }
    };
    with_spinner(|s| s.spun(found, start.elapsed()));
}

impl Spinner {
    fn new(budget: Duration) -> Self {
        Spinner {
            budget,
            read: Cell::new(0),
            written: Cell::new(0),
            write_blocked: Cell::new(false),
            skip: Cell::new(0),
            next_skip: Cell::new(1),
            counters: OnceCell::new(),
        }
    }

    /// Whether to spin now; starts the counts afresh either way.
    fn before_park(&self) -> bool {
        let read = self.read.replace(0);
        let written = self.written.replace(0);
        let write_blocked = self.write_blocked.replace(false);
        if written == 0 || write_blocked || read + written >= SMALL_WAKE_BYTES {
            // No answer sent (woken by a timer, the pool, a request still being worked
            // on), an answer waiting for the client to make room (a download the client
            // cannot keep up with), or bulk data: nothing that a spin would shorten.
            return false;
        }
        if self.skip.get() > 0 {
            self.skip.set(self.skip.get() - 1);
            return false;
        }
        true
    }

    /// Whether the connections moved data since the counts started.
    fn moved(&self) -> bool {
        self.read.get() > 0 || self.written.get() > 0
    }

    /// A spin ended: a miss makes the next small answers skip the spin, a find ends that.
    fn spun(&self, found: bool, took: Duration) {
        let counters = self.counters.get_or_init(Counters::new);
        counters
            .micros
            .increment(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
        if found {
            counters.found.increment(1);
            self.next_skip.set(1);
        } else {
            counters.missed.increment(1);
            self.skip.set(self.next_skip.get());
            self.next_skip.set((self.next_skip.get() * 2).min(MAX_SKIP));
        }
    }
}

/// A connection socket whose traffic tells the thread it was made on whether to spin, and
/// when a spin has found work. On a thread without a spinner it only passes through.
pub(crate) struct Watched<S> {
    inner: S,
    counted: bool,
}

impl<S> Watched<S> {
    /// Wraps `socket`; its traffic counts if this thread spins.
    pub(crate) fn new(socket: S) -> Self {
        let counted = with_spinner(|_| ()).is_some();
        Watched {
            inner: socket,
            counted,
        }
    }
}

impl<S> Watched<S> {
    fn count_read(&self, bytes: usize) {
        if self.counted && bytes > 0 {
            with_spinner(|spinner| spinner.read.set(spinner.read.get().saturating_add(bytes)));
        }
    }

    fn count_write(&self, written: &Poll<std::io::Result<usize>>) {
        if !self.counted {
            return;
        }
        match written {
            Poll::Ready(Ok(n)) => {
                with_spinner(|s| s.written.set(s.written.get().saturating_add(*n)));
            }
            Poll::Pending => {
                with_spinner(|s| s.write_blocked.set(true));
            }
            Poll::Ready(Err(_)) => {}
        }
    }
}

impl<S: AsFd> AsFd for Watched<S> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.as_fd()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.count_read(buf.filled().len() - before);
        read
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.count_write(&written);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.count_write(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A wake-up that answered a small request.
    fn answered(spinner: &Spinner) {
        spinner.read.set(4200);
        spinner.written.set(40);
    }

    #[test]
    fn spins_only_after_a_small_answer_with_room_to_send() {
        let spinner = Spinner::new(Duration::from_micros(200));
        answered(&spinner);
        assert!(spinner.before_park());
        // The counts start again from zero: a park without traffic does not spin.
        assert!(!spinner.before_park());
        // Woken by a timer or the storage pool: nothing sent.
        spinner.read.set(100);
        assert!(!spinner.before_park());
        // A bulk WRITE, a bulk READ reply.
        spinner.read.set(32 * 1024);
        spinner.written.set(40);
        assert!(!spinner.before_park());
        spinner.read.set(100);
        spinner.written.set(SMALL_WAKE_BYTES - 100);
        assert!(!spinner.before_park());
        // An answer that waits for the client to make room.
        answered(&spinner);
        spinner.write_blocked.set(true);
        assert!(!spinner.before_park());
        answered(&spinner);
        assert!(spinner.before_park());
    }

    #[test]
    fn misses_make_the_next_parks_skip_doubling_up_to_a_limit_and_a_find_resets_that() {
        let spinner = Spinner::new(Duration::from_micros(200));
        // Every spin misses: spins, then 1, 2, 4 and 8 small answers without one between.
        let spins: Vec<bool> = (0..20)
            .map(|_| {
                answered(&spinner);
                let spin = spinner.before_park();
                if spin {
                    spinner.spun(false, spinner.budget);
                }
                spin
            })
            .collect();
        let mut expected = Vec::new();
        for skipped in [1, 2, 4, 8] {
            expected.push(true);
            expected.extend([false].repeat(skipped));
        }
        expected.push(true);
        assert_eq!(spins, expected);

        // At the limit, it stays there.
        spinner.next_skip.set(MAX_SKIP);
        spinner.spun(false, spinner.budget);
        assert_eq!(
            (spinner.skip.get(), spinner.next_skip.get()),
            (MAX_SKIP, MAX_SKIP)
        );

        // A find puts it back to spinning after every small answer.
        spinner.skip.set(0);
        spinner.spun(true, Duration::from_micros(30));
        assert_eq!(spinner.next_skip.get(), 1);
        answered(&spinner);
        assert!(spinner.before_park());
    }

    /// A thread that spins for up to `budget`, running `f` on a runtime of its own.
    fn on_spinning_thread<R: Send + 'static>(
        budget: Duration,
        f: impl AsyncFnOnce() -> R + Send + 'static,
    ) -> R {
        std::thread::spawn(move || {
            install(budget);
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(f())
        })
        .join()
        .unwrap()
    }

    /// A connected loopback pair: (client, server watched on this thread).
    async fn pair() -> (TcpStream, Watched<TcpStream>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), Watched::new(accepted.unwrap().0))
    }

    #[test]
    fn watched_sockets_count_their_traffic_only_on_a_spinning_thread() {
        let exchange = async || {
            let (mut client, mut server) = pair().await;
            client.write_all(b"request").await.unwrap();
            let mut got = [0u8; 7];
            server.read_exact(&mut got).await.unwrap();
            server.write_all(b"an answer").await.unwrap();
            (
                server.counted,
                with_spinner(|s| (s.read.get(), s.written.get())),
            )
        };
        assert_eq!(
            on_spinning_thread(Duration::from_micros(200), exchange),
            (true, Some((7, 9)))
        );
        assert_eq!(on_spinning_thread(Duration::ZERO, exchange), (false, None));
    }

    #[test]
    fn a_spin_ends_when_the_next_request_is_read() {
        let found = on_spinning_thread(Duration::from_secs(10), async || {
            let (mut client, mut server) = pair().await;
            tokio::spawn(async move {
                let mut got = [0u8; 4];
                server.read_exact(&mut got).await.unwrap();
            });
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                client.write_all(b"next").await.unwrap();
                client
            });
            with_spinner(|s| s.read.set(0));
            // With 10 s of budget, only the request (read by the task above) ends it soon.
            let start = Instant::now();
            spin().await;
            let took = start.elapsed();
            (
                with_spinner(|s| s.next_skip.get()),
                took < Duration::from_secs(10),
            )
        });
        assert_eq!(found, (Some(1), true));
    }

    #[test]
    fn timers_and_other_sockets_are_served_during_a_spin() {
        // Without any traffic the spin runs its whole budget; what was due in the meantime
        // (a timer, a socket that is not a connection's) must have run before it ended.
        let served = on_spinning_thread(Duration::from_millis(300), async || {
            let timer = Arc::new(AtomicBool::new(false));
            let socket = Arc::new(AtomicBool::new(false));
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut other = TcpStream::connect(addr).await.unwrap();
            let (peer, _) = listener.accept().await.unwrap();
            tokio::spawn({
                let timer = timer.clone();
                async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    timer.store(true, Ordering::SeqCst);
                }
            });
            tokio::spawn({
                let socket = socket.clone();
                async move {
                    let mut got = [0u8; 1];
                    other.read_exact(&mut got).await.unwrap();
                    socket.store(true, Ordering::SeqCst);
                }
            });
            // Let both tasks start waiting, then make the socket readable from a thread
            // that is not this runtime's.
            tokio::task::yield_now().await;
            let writer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(5));
                let mut peer = peer.into_std().unwrap();
                std::io::Write::write_all(&mut peer, b"x").unwrap();
                peer
            });
            spin().await;
            let _peer = writer.join().unwrap();
            (timer.load(Ordering::SeqCst), socket.load(Ordering::SeqCst))
        });
        assert_eq!(served, (true, true));
    }
}
