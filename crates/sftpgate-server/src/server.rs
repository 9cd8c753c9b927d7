//! The accept loop, per-connection tasks, and graceful shutdown: decide (a cancelled token),
//! tell (every connection and session holds a child token), wait (all tasks are on one
//! [`TaskTracker`], awaited up to the drain timeout).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use russh::Disconnect;
use sftpgate_vfs::EndReason;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::admission::{Admission, LogLimiter, Ticket};
use crate::config::ServerConfig;
use crate::connection::{Connection, Shared};
use crate::error::Error;
use crate::events::{EventSink, NoEvents};
use crate::hooks::{Authenticator, ConnectionId, Hooks, SftpFactory};
use crate::idle_spin::{self, Watched};
use crate::quick_ack::QuickAck;

/// How long a connection gets to say goodbye once it has been told to end.
const DISCONNECT_GRACE: Duration = Duration::from_secs(5);
/// Connections over the limit that are told so at once; past this they are just closed.
const MAX_REFUSALS: usize = 32;
/// How long telling one of them may take.
const REFUSAL_TIME: Duration = Duration::from_secs(10);
/// At most one log line per refusal reason this often (the counter counts every one).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The listen backlog [`bind`] asks for (the kernel caps it at `net.core.somaxconn`).
/// tokio's `TcpListener::bind` asks for 128: a burst of a few hundred connections (a flood,
/// or many clients reconnecting at once) then overflows the accept queue, and the
/// connections past it, a real client's among them, wait for SYN-ACK retransmissions
/// (1 s, 3 s, 7 s, …) before the server even sees them.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A TCP listener on the first address `addr` resolves to, with [`LISTEN_BACKLOG`] and
/// `SO_REUSEADDR` (as tokio's `bind`).
pub async fn bind(addr: impl tokio::net::ToSocketAddrs) -> std::io::Result<TcpListener> {
    let mut last = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        match socket
            .bind(addr)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the listen address resolved to nothing",
        )
    }))
}

/// An SFTP server: an authenticator, the lifecycle hooks and the SFTP factory, served on a
/// TCP listener until [`ShutdownHandle::shutdown`] is called.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use sftpgate_server::*;
/// # async fn example(auth: impl Authenticator, factory: impl SftpFactory<()>, config: ServerConfig) -> Result<(), Error> {
/// let server = Server::new(config, auth, NoHooks, factory)?;
/// let stop = server.shutdown_handle();
/// tokio::spawn(async move {
///     let _ = tokio::signal::ctrl_c().await;
///     stop.shutdown();
/// });
/// let listener = sftpgate_server::bind("127.0.0.1:2222").await?;
/// server.run(listener).await
/// # }
/// ```
pub struct Server<A, H, F> {
    shared: Arc<Shared<A, H, F>>,
    russh: Arc<russh::server::Config>,
    shutdown: CancellationToken,
    connections: Arc<Semaphore>,
    admission: Arc<Admission>,
    refusals: Arc<Semaphore>,
    refusal_log: LogLimiter,
    next_connection: AtomicU64,
    /// Where connections run: the runtime `run` is called on if empty.
    runtimes: Vec<ConnectionRuntime>,
}

/// A runtime that connections may be placed on, with how many of them it serves now.
struct ConnectionRuntime {
    handle: tokio::runtime::Handle,
    connections: Arc<AtomicUsize>,
}

/// Stops a running [`Server`]: it stops accepting, ends every session (each exit is
/// awaited) and returns from [`Server::run`] once all of it is done or the drain timeout
/// passed.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    token: CancellationToken,
}

impl ShutdownHandle {
    pub(crate) fn new(token: CancellationToken) -> Self {
        ShutdownHandle { token }
    }

    /// Starts the graceful shutdown.
    pub fn shutdown(&self) {
        self.token.cancel();
    }

    /// Whether shutdown has started.
    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }
}

impl<A, H, F> Server<A, H, F>
where
    A: Authenticator,
    H: Hooks,
    F: SftpFactory<H::State>,
{
    /// A server with these settings and hooks.
    pub fn new(
        config: ServerConfig,
        authenticator: A,
        hooks: H,
        factory: F,
    ) -> Result<Self, Error> {
        if config.host_keys.is_empty() {
            return Err(Error::Config("at least one host key is needed".into()));
        }
        let russh = Arc::new(config.russh_config());
        let connections = Arc::new(Semaphore::new(config.limits.max_connections.max(1)));
        let admission = Admission::new(&config.limits);
        Ok(Server {
            shared: Arc::new(Shared {
                config: Arc::new(config),
                authenticator,
                hooks,
                factory: Arc::new(factory),
                tracker: TaskTracker::new(),
                next_session: AtomicU64::new(1),
                events: Arc::new(NoEvents),
            }),
            russh,
            shutdown: CancellationToken::new(),
            connections,
            admission,
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS)),
            refusal_log: LogLimiter::new(REFUSAL_LOG_INTERVAL),
            next_connection: AtomicU64::new(1),
            runtimes: Vec::new(),
        })
    }

    /// Runs each connection, with all its sessions and requests, on one of `runtimes`: the
    /// one serving the fewest connections when it arrives. Meant for runtimes with one
    /// worker thread each (say, one per CPU): a connection's tasks (the SSH transport, the
    /// SFTP reader, each request, the reply writer) wake each other on one thread then,
    /// instead of waking another worker of a shared runtime to steal them, which is a
    /// thread wake-up and a sleep per hand-off (downloads with OpenSSH's `sftp`: 5-16 %
    /// less server CPU per GiB; docs/performance.md, "Seventeenth run"). Each runtime
    /// needs its I/O and time drivers; storage still blocks on the runtime's own blocking
    /// pool, never on the connection's thread. By default (no runtimes given) connections
    /// run on the runtime that calls [`Server::run`]. [`connection_runtimes`] builds them.
    pub fn with_connection_runtimes(
        mut self,
        runtimes: impl IntoIterator<Item = tokio::runtime::Handle>,
    ) -> Self {
        self.runtimes = runtimes
            .into_iter()
            .map(|handle| ConnectionRuntime {
                handle,
                connections: Arc::new(AtomicUsize::new(0)),
            })
            .collect();
        self
    }

    /// Sends every [`Event`](crate::Event) to `sink` (none are sent by default).
    pub fn with_events(mut self, sink: impl EventSink) -> Self {
        // Nothing else holds the shared state before `run`.
        Arc::get_mut(&mut self.shared)
            .expect("only `run` shares the server's state, and it consumes the server")
            .events = Arc::new(sink);
        self
    }

    /// A handle that shuts the server down.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            token: self.shutdown.clone(),
        }
    }

    /// Serves connections from `listener` until shutdown, then drains.
    pub async fn run(self, listener: TcpListener) -> Result<(), Error> {
        let local = listener.local_addr()?;
        tracing::info!(%local, "listening");
        loop {
            let accepted = tokio::select! {
                () = self.shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => self.spawn_connection(stream, peer),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        drop(listener);
        let tracker = &self.shared.tracker;
        tracker.close();
        let drain = self.shared.config.timeouts.shutdown_drain;
        tracing::info!(
            tasks = tracker.len(),
            ?drain,
            "shutting down: waiting for sessions to end"
        );
        if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
            tracing::error!(
                tasks = tracker.len(),
                ?drain,
                "drain timeout passed; stopping with tasks still running"
            );
        } else {
            tracing::info!("all sessions ended");
        }
        Ok(())
    }

    fn spawn_connection(&self, stream: TcpStream, peer: SocketAddr) {
        // russh applies `Config::nodelay` only in its own accept loop, not in `run_stream`.
        // Without it every reply that ends a write waits for the peer's delayed ACK (Nagle):
        // bulk transfers on loopback lost 20-40 % to it.
        if let Err(e) = stream.set_nodelay(self.russh.nodelay) {
            tracing::debug!(%peer, error = %e, "TCP_NODELAY could not be set");
        }
        let id = ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed));
        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            let limit = self.shared.config.limits.max_connections;
            self.refuse(
                stream,
                peer,
                "max_connections",
                format!("too many connections (limit {limit}); try again later"),
            );
            return;
        };
        let ticket = match self.admission.admit(peer.ip()) {
            Ok(ticket) => Arc::new(ticket),
            Err(refusal) => {
                self.refuse(stream, peer, refusal.label(), refusal.message());
                return;
            }
        };
        metrics::counter!("sftpgate_connections_total").increment(1);
        let span = tracing::info_span!("conn", conn = %id, %peer, user = tracing::field::Empty);
        let shared = self.shared.clone();
        let russh = self.russh.clone();
        let shutdown = self.shutdown.child_token();
        let task_span = span.clone();
        let serve = move |stream: TcpStream| async move {
            metrics::gauge!("sftpgate_connections_open").increment(1.0);
            connection_task(ConnectionTask {
                shared,
                russh,
                shutdown,
                stream,
                peer,
                id,
                ticket,
                span: task_span,
            })
            .await;
            metrics::gauge!("sftpgate_connections_open").decrement(1.0);
            drop(permit);
        };
        let Some(runtime) = self
            .runtimes
            .iter()
            .min_by_key(|r| r.connections.load(Ordering::Relaxed))
        else {
            self.shared.tracker.spawn(serve(stream).instrument(span));
            return;
        };
        // The socket is registered with the I/O driver of the runtime that accepted it;
        // moved as it is, its every readiness event would be a wake-up from this runtime's
        // thread. It is registered again on the connection's runtime instead, from there.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(%peer, error = %e, "accepted connection could not be moved; closed");
                return;
            }
        };
        let placed = Placed::new(runtime.connections.clone());
        let registered = async move {
            let _placed = placed;
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => tracing::warn!(error = %e, "connection could not be registered; closed"),
            }
        };
        self.shared
            .tracker
            .spawn_on(registered.instrument(span), &runtime.handle);
    }
}

/// How long a connection thread that has just answered a small request polls for the next
/// one before it sleeps, by default (see [`connection_runtimes`]).
pub const DEFAULT_IDLE_SPIN: Duration = Duration::from_micros(200);

/// `count` (at least one) runtimes of one worker thread each, named `<name>-<i>`, with
/// their I/O and time drivers: what [`Server::with_connection_runtimes`] is meant for.
/// Keep them until [`Server::run`] has returned; a runtime must not be dropped in async
/// code (tokio panics), so shut them down with `shutdown_background` or drop them outside.
///
/// `idle_spin` ([`DEFAULT_IDLE_SPIN`]; zero: never): after a wake-up that sent a small
/// answer, a thread keeps polling for work (its sockets, timers, tasks woken from other
/// threads) for that long before it sleeps, so that the client's next request finds it
/// awake. On a virtual machine that takes about two thirds off the server's turn of a
/// small-file round trip; it costs CPU the thread would have slept through, and spins that
/// find nothing make the next ones skip (docs/performance.md, "Eighteenth run").
pub fn connection_runtimes(
    count: usize,
    name: &str,
    idle_spin: Duration,
) -> std::io::Result<Vec<tokio::runtime::Runtime>> {
    (0..count.max(1))
        .map(|i| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .on_thread_start(move || idle_spin::install(idle_spin))
                .on_thread_park(idle_spin::before_park)
                .thread_name(format!("{name}-{i}"))
                .enable_all()
                .build()
        })
        .collect()
}

/// A connection counted on its runtime while its task lives.
struct Placed(Arc<AtomicUsize>);

impl Placed {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Placed(count)
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<A, H, F> Server<A, H, F> {
    /// Turns away a connection over a limit: counted (`sftpgate_connections_rejected_total`
    /// with `reason`), logged (at most once a second per reason, so that a flood does not
    /// become a flood of log lines) and told why: key exchange, then an SSH DISCONNECT with
    /// `message` (which OpenSSH prints). Boundedly many are told at once, each bounded in
    /// time; past that the connection is just closed.
    fn refuse(&self, stream: TcpStream, peer: SocketAddr, reason: &'static str, message: String) {
        metrics::counter!("sftpgate_connections_rejected_total", "reason" => reason).increment(1);
        if let Some(suppressed) = self.refusal_log.allow(reason, Instant::now()) {
            tracing::warn!(%peer, reason, suppressed, "connection refused: {message}");
        }
        let Ok(slot) = self.refusals.clone().try_acquire_owned() else {
            return;
        };
        let russh = self.russh.clone();
        self.shared.tracker.spawn(async move {
            let refuse = async {
                let running = russh::server::run_stream(russh, stream, Refuse).await?;
                let _ = running
                    .handle()
                    .disconnect(Disconnect::TooManyConnections, message, String::new())
                    .await;
                running.await
            };
            let _ = tokio::time::timeout(REFUSAL_TIME, refuse).await;
            drop(slot);
        });
    }
}

/// The handler of a refused connection: it authenticates nobody.
struct Refuse;

impl russh::server::Handler for Refuse {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<russh::server::Auth, Self::Error> {
        Ok(russh::server::Auth::reject())
    }
}

/// Read buffer under each connection's SSH transport (see `connection_task`).
const SOCKET_READ_BUFFER: usize = 8 * 1024;

struct ConnectionTask<A, H, F> {
    shared: Arc<Shared<A, H, F>>,
    russh: Arc<russh::server::Config>,
    shutdown: CancellationToken,
    stream: TcpStream,
    peer: SocketAddr,
    id: ConnectionId,
    /// The connection's place in the per-address, per-user and unauthenticated counts.
    ticket: Arc<Ticket>,
    span: tracing::Span,
}

async fn connection_task<A, H, F>(task: ConnectionTask<A, H, F>)
where
    A: Authenticator,
    H: Hooks,
    F: SftpFactory<H::State>,
{
    let ConnectionTask {
        shared,
        russh,
        shutdown,
        stream,
        peer,
        id,
        ticket,
        span,
    } = task;
    let grace = shared.config.timeouts.login_grace;
    let sessions = TaskTracker::new();
    let authenticated = Arc::new(AtomicBool::new(false));
    let (end_tx, end_rx) = watch::channel(None);
    let handler = Connection::new(
        shared.clone(),
        id,
        peer,
        shutdown.clone(),
        sessions.clone(),
        authenticated.clone(),
        ticket.clone(),
        end_rx,
        span,
    );
    // russh reads every SSH packet with two `read_exact` calls (its length, then the rest)
    // on the stream as given: two `recvfrom` per packet, most of them for a few dozen bytes
    // when a client pipelines small requests (64 READs in flight: one syscall per 40 bytes).
    // A small buffer takes whatever has arrived in one call; reads of a big packet's body
    // bypass it once it is empty (tokio's BufReader), so bulk data is copied at most
    // `SOCKET_READ_BUFFER` bytes per packet more than before.
    let stream = tokio::io::BufReader::with_capacity(
        SOCKET_READ_BUFFER,
        QuickAck::new(Watched::new(stream)),
    );
    // The version exchange happens here, under the login grace time too.
    let running = tokio::select! {
        r = tokio::time::timeout(grace, russh::server::run_stream(russh, stream, handler)) => r,
        () = shutdown.cancelled() => return,
    };
    let mut running = match running {
        Ok(Ok(running)) => running,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "SSH handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!("no SSH identification within the login grace time");
            return;
        }
    };
    let handle = running.handle();
    let login_deadline = tokio::time::sleep(grace);
    tokio::pin!(login_deadline);
    let mut grace_over = false;
    let reason = loop {
        tokio::select! {
            result = &mut running => break end_reason(result),
            () = &mut login_deadline, if !grace_over => {
                grace_over = true;
                if !authenticated.load(Ordering::SeqCst) {
                    tracing::info!(?grace, "login grace time exceeded");
                    metrics::counter!("sftpgate_connections_rejected_total", "reason" => "login_grace").increment(1);
                    let _ = handle
                        .disconnect(Disconnect::ByApplication, "login grace time exceeded".into(), String::new())
                        .await;
                    let _ = tokio::time::timeout(DISCONNECT_GRACE, &mut running).await;
                    break EndReason::ConnectionLost { detail: "login grace time exceeded".into() };
                }
            }
            () = shutdown.cancelled() => {
                // Sessions see the same cancellation: let them end and run their exits
                // (they stay tracked by the server), then say goodbye.
                sessions.close();
                sessions.wait().await;
                let _ = handle
                    .disconnect(Disconnect::ByApplication, "server is shutting down".into(), String::new())
                    .await;
                let _ = tokio::time::timeout(DISCONNECT_GRACE, &mut running).await;
                break EndReason::Shutdown;
            }
        }
    };
    tracing::info!(reason = %reason, "connection ended");
    // The slots are free now, even if russh's task still holds the handler for a moment.
    ticket.release();
    let _ = end_tx.send(Some(reason));
}

fn end_reason(result: Result<(), russh::Error>) -> EndReason {
    match result {
        Ok(()) => EndReason::ConnectionLost {
            detail: "client disconnected".into(),
        },
        Err(russh::Error::InactivityTimeout) => EndReason::IdleTimeout,
        Err(russh::Error::KeepaliveTimeout) => EndReason::KeepaliveTimeout,
        Err(e) => EndReason::ConnectionLost {
            detail: e.to_string(),
        },
    }
}
