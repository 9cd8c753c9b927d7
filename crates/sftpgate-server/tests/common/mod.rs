//! The harness of the server's integration tests: the real [`Server`] on `127.0.0.1:0` with
//! recording hooks, factory and filesystem writing one event log; a small SFTP client on a
//! russh client channel; runners for OpenSSH's `sftp` and `ssh`.
//!
//! Waiting is always bounded polling ([`WAIT`]): a test that waits for something that never
//! happens fails with the event log instead of hanging.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use russh::client;
use russh::keys::{
    Algorithm, PrivateKey, PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate,
};
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Disconnect};
use sftpgate_fs_local::LocalFs;
use sftpgate_proto::{
    Decoder, FileAttributes, OpenFlags, Request, Response, StatusCode, StatvfsReply,
    UsersGroupsReply,
};
use sftpgate_server::{
    Authenticator, Cleanup, ConnectionId, ConnectionInfo, HookError, Hooks, Limits, Server,
    ServerConfig, SessionId, SftpContext, SftpFactory, ShutdownHandle, Timeouts,
};
use sftpgate_vfs::{Dir, EndReason, File, Filesystem, FsError, RenameMode, VPath};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

/// The longest any test waits for something to happen.
pub const WAIT: Duration = Duration::from_secs(10);
/// The user the test authenticator accepts.
pub const USER: &str = "tester";
/// The password the test authenticator accepts for [`USER`].
pub const PASSWORD: &str = "correct horse battery staple";

// ---------------------------------------------------------------------------------------------
// The event log

/// Something the server did to one of the recording hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    AuthCompletedStart {
        conn: ConnectionId,
        user: String,
        method: &'static str,
    },
    AuthCompletedEnd {
        conn: ConnectionId,
        ok: bool,
    },
    FactoryStart {
        conn: ConnectionId,
        session: SessionId,
        channel: u32,
        user: String,
        /// What `auth_completed` returned for the connection.
        state: String,
    },
    FactoryEnd {
        session: SessionId,
        ok: bool,
    },
    /// The factory's future was dropped before it finished.
    FactoryDropped {
        session: SessionId,
    },
    CleanupRan {
        session: SessionId,
    },
    /// `Filesystem::exit` was called.
    Exit {
        session: SessionId,
        reason: EndReason,
    },
    /// `Filesystem::exit` returned.
    ExitEnd {
        session: SessionId,
    },
    /// `File::close` was called (`ok`: what it returned).
    FileClose {
        session: SessionId,
        ok: bool,
    },
    /// A `File::read` started that will never return ([`FsBehavior::read_hangs`]).
    ReadHangs {
        session: SessionId,
    },
}

impl Event {
    /// A short label without ids, for asserting sequences.
    pub fn label(&self) -> String {
        match self {
            Event::AuthCompletedStart { .. } => "auth_start".into(),
            Event::AuthCompletedEnd { ok, .. } => format!("auth_end({})", ok_label(*ok)),
            Event::FactoryStart { .. } => "factory_start".into(),
            Event::FactoryEnd { ok, .. } => format!("factory_end({})", ok_label(*ok)),
            Event::FactoryDropped { .. } => "factory_dropped".into(),
            Event::CleanupRan { .. } => "cleanup".into(),
            Event::Exit { reason, .. } => format!("exit({})", reason.label()),
            Event::ExitEnd { .. } => "exit_end".into(),
            Event::FileClose { ok, .. } => format!("file_close({})", ok_label(*ok)),
            Event::ReadHangs { .. } => "read_hangs".into(),
        }
    }

    /// The SFTP session the event belongs to, if any.
    pub fn session(&self) -> Option<SessionId> {
        match self {
            Event::AuthCompletedStart { .. } | Event::AuthCompletedEnd { .. } => None,
            Event::FactoryStart { session, .. }
            | Event::FactoryEnd { session, .. }
            | Event::FactoryDropped { session }
            | Event::CleanupRan { session }
            | Event::Exit { session, .. }
            | Event::ExitEnd { session }
            | Event::FileClose { session, .. }
            | Event::ReadHangs { session } => Some(*session),
        }
    }

    pub fn is_exit(&self) -> bool {
        matches!(self, Event::Exit { .. })
    }
}

fn ok_label(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "err"
    }
}

/// One event, when it happened, and on which thread.
#[derive(Debug, Clone)]
pub struct Record {
    pub at: Instant,
    pub event: Event,
    pub thread: Option<String>,
}

/// The events of one test server, in the order they happened.
#[derive(Clone, Default)]
pub struct EventLog {
    records: Arc<Mutex<Vec<Record>>>,
}

impl EventLog {
    pub fn push(&self, event: Event) {
        let record = Record {
            at: Instant::now(),
            event,
            thread: std::thread::current().name().map(str::to_owned),
        };
        self.records
            .lock()
            .expect("event log poisoned")
            .push(record);
    }

    pub fn records(&self) -> Vec<Record> {
        self.records.lock().expect("event log poisoned").clone()
    }

    pub fn events(&self) -> Vec<Event> {
        self.records().into_iter().map(|r| r.event).collect()
    }

    /// Labels of every event.
    pub fn labels(&self) -> Vec<String> {
        self.events().iter().map(Event::label).collect()
    }

    /// Labels of the events of one session (the connection's auth events excluded).
    pub fn session_labels(&self, session: SessionId) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| e.session() == Some(session))
            .map(Event::label)
            .collect()
    }

    /// Labels of the lifecycle events: everything but file operations.
    pub fn lifecycle_labels(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter(|e| !matches!(e, Event::FileClose { .. } | Event::ReadHangs { .. }))
            .map(Event::label)
            .collect()
    }

    pub fn count(&self, what: impl Fn(&Event) -> bool) -> usize {
        self.events().iter().filter(|e| what(e)).count()
    }

    pub fn count_label(&self, label: &str) -> usize {
        self.events().iter().filter(|e| e.label() == label).count()
    }

    /// The reasons of every `exit` call, in order.
    pub fn exits(&self) -> Vec<(SessionId, EndReason)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Exit { session, reason } => Some((session, reason)),
                _ => None,
            })
            .collect()
    }

    /// The session ids the factory was called with, in the order the server accepted their
    /// `sftp` subsystem requests (ascending ids). Not in the order the factory calls started:
    /// each session runs in a task of its own, so two sessions opened back to back on one
    /// connection may start their factories in either order.
    pub fn factory_sessions(&self) -> Vec<SessionId> {
        let mut sessions: Vec<SessionId> = self
            .events()
            .into_iter()
            .filter_map(|e| match e {
                Event::FactoryStart { session, .. } => Some(session),
                _ => None,
            })
            .collect();
        sessions.sort();
        sessions
    }

    /// When the first event matching `what` happened.
    pub fn first_at(&self, what: impl Fn(&Event) -> bool) -> Option<Instant> {
        self.records()
            .into_iter()
            .find(|r| what(&r.event))
            .map(|r| r.at)
    }

    /// Waits (bounded) until `done` holds for the events so far.
    pub async fn wait_until(&self, what: &str, done: impl Fn(&[Event]) -> bool) {
        let log = self.clone();
        poll_until(
            what,
            || done(&log.events()),
            || format!("{:#?}", log.records()),
        )
        .await;
    }

    /// Waits (bounded) until at least `n` events have the label `label`.
    pub async fn wait_label(&self, label: &str, n: usize) {
        let what = format!("{n} × {label}");
        self.wait_until(&what, |events| {
            events.iter().filter(|e| e.label() == label).count() >= n
        })
        .await;
    }

    /// Waits (bounded) until at least `n` exits were called.
    pub async fn wait_exits(&self, n: usize) {
        self.wait_until(&format!("{n} exit call(s)"), |events| {
            events.iter().filter(|e| e.is_exit()).count() >= n
        })
        .await;
    }
}

/// Polls `done` every 10 ms for up to [`WAIT`]; panics with `context()` if it never holds.
pub async fn poll_until(what: &str, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let deadline = Instant::now() + WAIT;
    loop {
        if done() {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {WAIT:?} waiting for {what}; state:\n{}",
                context()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Awaits `fut` for up to [`WAIT`]; panics naming `what` if it does not finish.
pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Options

/// How the recording `auth_completed` hook behaves.
#[derive(Debug, Clone, Default)]
pub struct HookBehavior {
    /// Sleeps this long first.
    pub delay: Option<Duration>,
    /// Fails with this message.
    pub fail: Option<String>,
    /// Never returns.
    pub hang: bool,
    /// Panics.
    pub panic: bool,
}

/// How the recording SFTP factory behaves.
#[derive(Debug, Clone, Default)]
pub struct FactoryBehavior {
    /// Sleeps this long before building the filesystem.
    pub delay: Option<Duration>,
    /// Fails with this message.
    pub fail: Option<String>,
    /// Waits on a `Notify` that is never notified.
    pub hang: bool,
    /// Registers a cleanup that records [`Event::CleanupRan`].
    pub register_cleanup: bool,
    /// Panics (after registering its cleanup).
    pub panic: bool,
}

/// How the recording filesystem behaves.
#[derive(Debug, Clone, Default)]
pub struct FsBehavior {
    /// `exit` takes this long.
    pub exit_delay: Option<Duration>,
    /// `exit` never returns.
    pub exit_hangs: bool,
    /// `File::close` fails (after closing the real file).
    pub close_fails: bool,
    /// Every `File::read` takes this long more.
    pub read_delay: Option<Duration>,
    /// Every `File::write` takes this long more.
    pub write_delay: Option<Duration>,
    /// `stat` of [`PANIC_PATH`] panics.
    pub panic_on_stat: bool,
    /// Every `File::read` records [`Event::ReadHangs`] and never returns.
    pub read_hangs: bool,
    /// `File::close` panics (after closing the real file and recording
    /// [`Event::FileClose`] with `ok: false`).
    pub close_panics: bool,
    /// Files say that they read from memory (`File::reads_from_memory`), wherever they are:
    /// the server then reads large READs into one buffer per SSH packet.
    pub reads_from_memory: bool,
    /// Every `File::read` at or past this offset fails.
    pub read_fails_from: Option<u64>,
}

/// The path whose `stat` panics with [`FsBehavior::panic_on_stat`].
pub const PANIC_PATH: &str = "/panic";

/// Everything a test can vary about its server.
#[derive(Debug, Clone)]
pub struct Options {
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub hook: HookBehavior,
    pub factory: FactoryBehavior,
    pub fs: FsBehavior,
    /// Where connections run (`Server::with_connection_runtimes`); empty: the test's own.
    pub connection_runtimes: Vec<tokio::runtime::Handle>,
    /// `ServerConfig::send_ahead`.
    pub send_ahead: Option<russh::SendAhead>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            hook: HookBehavior::default(),
            factory: FactoryBehavior {
                register_cleanup: true,
                ..FactoryBehavior::default()
            },
            fs: FsBehavior::default(),
            connection_runtimes: Vec::new(),
            send_ahead: ServerConfig::default().send_ahead,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The server

/// A running server and what the tests need to talk to it.
pub struct TestServer {
    pub addr: SocketAddr,
    pub log: EventLog,
    pub shutdown: ShutdownHandle,
    run: Option<JoinHandle<Result<(), sftpgate_server::Error>>>,
    /// The directory the sessions' `LocalFs` serve (the session's `/`).
    pub root: PathBuf,
    /// The client's private key in OpenSSH format (mode 0600).
    pub key_path: PathBuf,
    pub client_key: Arc<PrivateKey>,
    /// Scratch space for the test (OpenSSH batch files, local copies).
    pub scratch: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start(opts: Options) -> TestServer {
        init_tracing();
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let scratch = dir.path().join("scratch");
        std::fs::create_dir(&root).expect("mkdir root");
        std::fs::create_dir(&scratch).expect("mkdir scratch");

        let client_key =
            PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).expect("client key");
        let key_path = dir.path().join("id_ed25519");
        let pem = client_key
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .expect("encode client key");
        std::fs::write(&key_path, pem.as_bytes()).expect("write client key");
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
                .expect("chmod client key");
        }
        let host_key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519).expect("host key");

        let log = EventLog::default();
        let config = ServerConfig {
            host_keys: vec![host_key],
            timeouts: opts.timeouts.clone(),
            limits: opts.limits.clone(),
            send_ahead: opts.send_ahead,
            ..ServerConfig::default()
        };
        let auth = TestAuth {
            key: client_key.public_key().clone(),
        };
        let hooks = RecordingHooks {
            log: log.clone(),
            behavior: opts.hook.clone(),
        };
        let factory = RecordingFactory {
            log: log.clone(),
            behavior: opts.factory.clone(),
            fs: opts.fs.clone(),
            root: root.clone(),
            never: Arc::new(Notify::new()),
        };
        let server = Server::new(config, auth, hooks, factory)
            .expect("server")
            .with_connection_runtimes(opts.connection_runtimes.clone());
        let shutdown = server.shutdown_handle();
        let listener = sftpgate_server::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let run = tokio::spawn(server.run(listener));
        TestServer {
            addr,
            log,
            shutdown,
            run: Some(run),
            root,
            key_path,
            client_key: Arc::new(client_key),
            scratch,
            _dir: dir,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Starts the shutdown and waits (bounded) for `run` to return `Ok`. Once it has, every
    /// tracked task (exits, cleanups) has finished: the event log is final.
    pub async fn stop(&mut self) {
        self.shutdown.shutdown();
        self.wait_run(Duration::from_secs(40)).await;
    }

    /// Waits up to `limit` for `run` to return `Ok`; returns when it did.
    pub async fn wait_run(&mut self, limit: Duration) -> Instant {
        let run = self.run.take().expect("run already awaited");
        match tokio::time::timeout(limit, run).await {
            Ok(Ok(Ok(()))) => Instant::now(),
            Ok(Ok(Err(e))) => panic!("Server::run failed: {e}"),
            Ok(Err(e)) => panic!("Server::run panicked: {e}"),
            Err(_) => panic!(
                "Server::run did not return within {limit:?}; events:\n{:#?}",
                self.log.records()
            ),
        }
    }

    /// A Rust client, authenticated with the test key.
    pub async fn client(&self) -> SshClient {
        let mut client = SshClient::connect(self.addr).await;
        assert!(
            client.auth_key(USER, self.client_key.clone()).await,
            "public key authentication failed"
        );
        client
    }

    /// A Rust client with an SFTP session that has done INIT/VERSION.
    pub async fn sftp_client(&self) -> (SshClient, SftpChannel) {
        let client = self.client().await;
        let mut sftp = client.open_sftp().await;
        assert_eq!(sftp.init().await, 3, "negotiated SFTP version");
        (client, sftp)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.shutdown();
        if let Some(run) = self.run.take() {
            run.abort();
        }
    }
}

fn init_tracing() {
    // RUST_LOG=sftpgate_server=debug shows the server's logs for a failing test.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

struct TestAuth {
    key: PublicKey,
}

impl Authenticator for TestAuth {
    async fn password(&self, user: &str, password: &str, _peer: SocketAddr) -> bool {
        user == USER && password == PASSWORD
    }

    async fn publickey(&self, user: &str, key: &PublicKey, _peer: SocketAddr) -> bool {
        user == USER && key.key_data() == self.key.key_data()
    }
}

struct RecordingHooks {
    log: EventLog,
    behavior: HookBehavior,
}

impl Hooks for RecordingHooks {
    type State = String;

    async fn auth_completed(&self, connection: &ConnectionInfo) -> Result<String, HookError> {
        self.log.push(Event::AuthCompletedStart {
            conn: connection.id,
            user: connection.user.clone(),
            method: connection.method.name(),
        });
        if let Some(delay) = self.behavior.delay {
            tokio::time::sleep(delay).await;
        }
        if self.behavior.hang {
            std::future::pending::<()>().await;
        }
        if self.behavior.panic {
            panic!("auth_completed panics (test)");
        }
        let result = match &self.behavior.fail {
            Some(message) => Err(HookError::new(message.clone())),
            None => Ok(state_of(connection.id)),
        };
        self.log.push(Event::AuthCompletedEnd {
            conn: connection.id,
            ok: result.is_ok(),
        });
        result
    }
}

/// What the recording hook returns for a connection.
pub fn state_of(conn: ConnectionId) -> String {
    format!("state-of-{conn}")
}

struct RecordingFactory {
    log: EventLog,
    behavior: FactoryBehavior,
    fs: FsBehavior,
    root: PathBuf,
    /// Never notified: what a hanging factory waits on.
    never: Arc<Notify>,
}

/// Records [`Event::FactoryDropped`] if the factory's future is dropped before it finished.
struct DropRecorder {
    log: EventLog,
    session: SessionId,
    finished: bool,
}

impl Drop for DropRecorder {
    fn drop(&mut self) {
        if !self.finished {
            self.log.push(Event::FactoryDropped {
                session: self.session,
            });
        }
    }
}

impl SftpFactory<String> for RecordingFactory {
    async fn open(
        &self,
        ctx: &SftpContext<String>,
        cleanup: &mut Cleanup,
    ) -> Result<Arc<dyn Filesystem>, HookError> {
        let session = ctx.session;
        self.log.push(Event::FactoryStart {
            conn: ctx.connection.id,
            session,
            channel: ctx.channel,
            user: ctx.connection.user.clone(),
            state: (*ctx.state).clone(),
        });
        let mut running = DropRecorder {
            log: self.log.clone(),
            session,
            finished: false,
        };
        if self.behavior.register_cleanup {
            let log = self.log.clone();
            cleanup.register(async move { log.push(Event::CleanupRan { session }) });
        }
        if let Some(delay) = self.behavior.delay {
            tokio::time::sleep(delay).await;
        }
        if self.behavior.hang {
            self.never.notified().await;
        }
        if self.behavior.panic {
            running.finished = true;
            panic!("the SFTP factory panics (test)");
        }
        running.finished = true;
        if let Some(message) = &self.behavior.fail {
            self.log.push(Event::FactoryEnd { session, ok: false });
            return Err(HookError::new(message.clone()));
        }
        let inner = LocalFs::new(&self.root)
            .map_err(|e| HookError::with_source("storage unavailable", e))?;
        self.log.push(Event::FactoryEnd { session, ok: true });
        Ok(Arc::new(RecordingFs {
            inner,
            log: self.log.clone(),
            session,
            behavior: self.fs.clone(),
        }))
    }
}

/// `LocalFs` that records its exit and its files' closes, with optional misbehaviour.
struct RecordingFs {
    inner: LocalFs,
    log: EventLog,
    session: SessionId,
    behavior: FsBehavior,
}

#[async_trait::async_trait]
impl Filesystem for RecordingFs {
    async fn open(
        &self,
        path: &VPath,
        flags: OpenFlags,
        attrs: &FileAttributes,
    ) -> Result<Box<dyn File>, FsError> {
        let inner = self.inner.open(path, flags, attrs).await?;
        Ok(Box::new(RecordingFile {
            inner,
            log: self.log.clone(),
            session: self.session,
            behavior: self.behavior.clone(),
        }))
    }
    async fn opendir(&self, path: &VPath) -> Result<Box<dyn Dir>, FsError> {
        self.inner.opendir(path).await
    }
    async fn stat(&self, path: &VPath) -> Result<FileAttributes, FsError> {
        if self.behavior.panic_on_stat && path.as_bytes() == PANIC_PATH.as_bytes() {
            panic!("stat of {PANIC_PATH} panics (test)");
        }
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
        self.log.push(Event::Exit {
            session: self.session,
            reason: reason.clone(),
        });
        self.inner.exit(reason).await;
        if let Some(delay) = self.behavior.exit_delay {
            tokio::time::sleep(delay).await;
        }
        if self.behavior.exit_hangs {
            std::future::pending::<()>().await;
        }
        self.log.push(Event::ExitEnd {
            session: self.session,
        });
    }
}

struct RecordingFile {
    inner: Box<dyn File>,
    log: EventLog,
    session: SessionId,
    behavior: FsBehavior,
}

#[async_trait::async_trait]
impl File for RecordingFile {
    async fn read(&self, offset: u64, len: u32, buf: &mut BytesMut) -> Result<usize, FsError> {
        if let Some(delay) = self.behavior.read_delay {
            tokio::time::sleep(delay).await;
        }
        if self.behavior.read_hangs {
            self.log.push(Event::ReadHangs {
                session: self.session,
            });
            std::future::pending::<()>().await;
        }
        if self
            .behavior
            .read_fails_from
            .is_some_and(|from| offset >= from)
        {
            return Err(FsError::Other("simulated read failure".into()));
        }
        self.inner.read(offset, len, buf).await
    }
    fn reads_from_memory(&self) -> bool {
        self.behavior.reads_from_memory
    }
    async fn write(&self, offset: u64, data: Bytes) -> Result<(), FsError> {
        if let Some(delay) = self.behavior.write_delay {
            tokio::time::sleep(delay).await;
        }
        self.inner.write(offset, data).await
    }
    async fn stat(&self) -> Result<FileAttributes, FsError> {
        self.inner.stat().await
    }
    async fn setstat(&self, attrs: &FileAttributes) -> Result<(), FsError> {
        self.inner.setstat(attrs).await
    }
    async fn sync(&self) -> Result<(), FsError> {
        self.inner.sync().await
    }
    async fn statvfs(&self) -> Result<StatvfsReply, FsError> {
        self.inner.statvfs().await
    }
    async fn close(&self) -> Result<(), FsError> {
        let mut result = self.inner.close().await;
        if self.behavior.close_fails {
            result = Err(FsError::Other("simulated close failure".into()));
        }
        if self.behavior.close_panics {
            self.log.push(Event::FileClose {
                session: self.session,
                ok: false,
            });
            panic!("File::close panics (test)");
        }
        self.log.push(Event::FileClose {
            session: self.session,
            ok: result.is_ok(),
        });
        result
    }
}

// ---------------------------------------------------------------------------------------------
// The Rust client

/// How [`SshClient::kill`] ends the TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    /// An RST (`SO_LINGER` 0), as when a client host vanishes.
    Reset,
    /// A plain close (FIN) without any SSH goodbye.
    Fin,
    /// Nothing more gets through either way, but the sockets stay open: a silent network
    /// partition (only keepalives notice it).
    Freeze,
}

/// The client's view of its connection's end.
#[derive(Clone, Default)]
pub struct ClientHandler {
    disconnect: Arc<Mutex<Option<String>>>,
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        match reason {
            client::DisconnectReason::ReceivedDisconnect(info) => {
                *self.disconnect.lock().expect("poisoned") = Some(info.message);
                Ok(())
            }
            client::DisconnectReason::Error(e) => Err(e),
        }
    }
}

/// A russh client connection. Its TCP stream runs through a pump task so that a test can
/// drop the connection under the client's feet ([`SshClient::kill`]).
pub struct SshClient {
    pub handle: client::Handle<ClientHandler>,
    disconnect: Arc<Mutex<Option<String>>>,
    kill: Option<oneshot::Sender<Kill>>,
    pump: JoinHandle<()>,
}

impl SshClient {
    /// Connects (SSH handshake done, not authenticated).
    pub async fn connect(addr: SocketAddr) -> SshClient {
        Self::try_connect(addr).await.expect("SSH handshake")
    }

    /// Connects; the error if the SSH handshake fails.
    pub async fn try_connect(addr: SocketAddr) -> Result<SshClient, russh::Error> {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        Self::over(tcp).await
    }

    /// Connects from the loopback address `from` (e.g. 127.0.0.2: another source address
    /// for the server's per-address limits); the error if the SSH handshake fails.
    pub async fn try_connect_from(
        addr: SocketAddr,
        from: std::net::IpAddr,
    ) -> Result<SshClient, russh::Error> {
        Self::over(connect_from(addr, from).await).await
    }

    async fn over(tcp: TcpStream) -> Result<SshClient, russh::Error> {
        tcp.set_nodelay(true).expect("nodelay");
        let (near, mut far) = tokio::io::duplex(256 * 1024);
        let (kill_tx, kill_rx) = oneshot::channel::<Kill>();
        let pump = tokio::spawn(async move {
            let mut tcp = tcp;
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut far, &mut tcp) => {}
                how = kill_rx => match how {
                    Ok(Kill::Reset) => tcp.set_zero_linger().expect("SO_LINGER 0"),
                    Ok(Kill::Freeze) => {
                        // Hold both ends open and forward nothing, until the test ends.
                        std::future::pending::<()>().await;
                    }
                    Ok(Kill::Fin) | Err(_) => {}
                },
            }
            drop(tcp);
            drop(far);
        });
        let handler = ClientHandler::default();
        let disconnect = handler.disconnect.clone();
        let config = Arc::new(client::Config::default());
        let handle = bounded(
            "SSH handshake",
            client::connect_stream(config, near, handler),
        )
        .await?;
        Ok(SshClient {
            handle,
            disconnect,
            kill: Some(kill_tx),
            pump,
        })
    }

    pub async fn auth_key(&mut self, user: &str, key: Arc<PrivateKey>) -> bool {
        bounded(
            "publickey authentication",
            self.handle
                .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, None)),
        )
        .await
        .map(|r| r.success())
        .unwrap_or(false)
    }

    pub async fn auth_password(&mut self, user: &str, password: &str) -> bool {
        bounded(
            "password authentication",
            self.handle.authenticate_password(user, password),
        )
        .await
        .map(|r| r.success())
        .unwrap_or(false)
    }

    /// Opens a session channel.
    pub async fn open_session(&self) -> russh::Channel<client::Msg> {
        bounded("channel open", self.handle.channel_open_session())
            .await
            .expect("channel open")
    }

    /// Opens a session channel and asks for the `sftp` subsystem (not yet INIT).
    pub async fn open_sftp(&self) -> SftpChannel {
        let channel = self.open_session().await;
        channel
            .request_subsystem(true, "sftp")
            .await
            .expect("subsystem request");
        SftpChannel::new(channel)
    }

    /// Drops the TCP connection without any SSH or channel goodbye.
    pub fn kill(&mut self, how: Kill) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(how);
        }
    }

    /// Waits (bounded) until the pump has dropped the TCP connection.
    pub async fn wait_killed(&mut self) {
        bounded("the TCP connection to drop", &mut self.pump)
            .await
            .expect("pump task");
    }

    /// Sends SSH DISCONNECT (closing no channel first).
    pub async fn disconnect(&self) {
        let _ = self
            .handle
            .disconnect(Disconnect::ByApplication, "bye", "en")
            .await;
    }

    /// The server's DISCONNECT message, once one arrived.
    pub fn disconnect_message(&self) -> Option<String> {
        self.disconnect.lock().expect("poisoned").clone()
    }

    /// Waits (bounded) for the server's DISCONNECT message. (russh marks the handle closed
    /// before it calls `Handler::disconnected`, so `wait_closed` alone races with it.)
    pub async fn wait_disconnect_message(&self) -> String {
        poll_until(
            "a DISCONNECT message from the server",
            || self.disconnect_message().is_some(),
            || format!("connection closed: {}", self.handle.is_closed()),
        )
        .await;
        self.disconnect_message().expect("just seen")
    }

    /// Waits (bounded) until the connection is closed.
    pub async fn wait_closed(&self) {
        poll_until(
            "the SSH connection to close",
            || self.handle.is_closed(),
            String::new,
        )
        .await;
    }
}

/// A TCP connection to `addr` from the loopback address `from` (port 0).
pub async fn connect_from(addr: SocketAddr, from: std::net::IpAddr) -> TcpStream {
    let socket = match from {
        std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .expect("socket");
    assert!(from.is_loopback(), "tests use loopback addresses only");
    socket
        .bind(SocketAddr::new(from, 0))
        .expect("bind the client socket");
    socket.connect(addr).await.expect("connect")
}

/// What arrived on a channel besides SFTP bytes.
#[derive(Debug, Default, Clone)]
pub struct ChannelEnd {
    pub stderr: Vec<u8>,
    pub success: usize,
    pub failure: usize,
    pub exit_status: Option<u32>,
    pub eof: bool,
    pub closed: bool,
}

impl ChannelEnd {
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Takes in one channel message; returns the data of a `Data` message.
    fn absorb(&mut self, msg: Option<ChannelMsg>) -> Option<Bytes> {
        match msg {
            Some(ChannelMsg::Data { data }) => return Some(data),
            Some(ChannelMsg::ExtendedData { data, ext: 1 }) => self.stderr.extend_from_slice(&data),
            Some(ChannelMsg::Success) => self.success += 1,
            Some(ChannelMsg::Failure) => self.failure += 1,
            Some(ChannelMsg::ExitStatus { exit_status }) => self.exit_status = Some(exit_status),
            Some(ChannelMsg::Eof) => self.eof = true,
            Some(ChannelMsg::Close) | None => self.closed = true,
            Some(_) => {}
        }
        None
    }
}

/// Reads a non-SFTP channel until the server closes it (bounded).
pub async fn drain_channel(channel: &mut russh::Channel<client::Msg>) -> (ChannelEnd, Vec<u8>) {
    let mut end = ChannelEnd::default();
    let mut stdout = Vec::new();
    while !end.closed {
        let msg = bounded("the server to close the channel", channel.wait()).await;
        if let Some(data) = end.absorb(msg) {
            stdout.extend_from_slice(&data);
        }
    }
    (end, stdout)
}

/// An SFTP session over a russh client channel. Requests are sent through a shareable write
/// half, so a test can pipeline from another task while it reads replies here.
pub struct SftpChannel {
    reader: ChannelReadHalf,
    writer: Arc<ChannelWriteHalf<client::Msg>>,
    input: BytesMut,
    decoder: Decoder,
    next_id: u32,
    pub end: ChannelEnd,
    /// The length of every channel data message received, in order.
    pub data_messages: Vec<usize>,
}

/// A failed request: its STATUS code and message.
pub type StatusError = (StatusCode, String);

impl SftpChannel {
    fn new(channel: russh::Channel<client::Msg>) -> SftpChannel {
        let (reader, writer) = channel.split();
        SftpChannel {
            reader,
            writer: Arc::new(writer),
            input: BytesMut::new(),
            decoder: Decoder::with_max_packet(u32::MAX),
            next_id: 1,
            end: ChannelEnd::default(),
            data_messages: Vec::new(),
        }
    }

    pub fn writer(&self) -> Arc<ChannelWriteHalf<client::Msg>> {
        self.writer.clone()
    }

    /// A fresh request id.
    pub fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub async fn send(&self, request: &Request) {
        let mut out = BytesMut::new();
        request.encode(&mut out);
        self.send_raw(&out).await;
    }

    /// Sends arbitrary bytes on the channel.
    pub async fn send_raw(&self, bytes: &[u8]) {
        self.writer
            .data_bytes(Bytes::copy_from_slice(bytes))
            .await
            .expect("send on the SFTP channel");
    }

    /// Sends EOF on the channel.
    pub async fn eof(&self) {
        self.writer.eof().await.expect("send EOF");
    }

    /// The next SFTP packet from the server; `None` when the channel closed first. Panics
    /// if nothing arrives within [`WAIT`].
    pub async fn recv(&mut self) -> Option<Response> {
        loop {
            if let Some(response) = self
                .decoder
                .decode_response(&mut self.input)
                .expect("the server sent an undecodable packet")
            {
                return Some(response);
            }
            if self.end.closed {
                return None;
            }
            let msg = bounded("a message from the server", self.reader.wait()).await;
            if let Some(data) = self.end.absorb(msg) {
                self.data_messages.push(data.len());
                self.input.extend_from_slice(&data);
            }
        }
    }

    /// Reads until the server closes the channel; returns the SFTP packets that came first.
    pub async fn wait_closed(&mut self) -> Vec<Response> {
        let mut packets = Vec::new();
        while let Some(response) = self.recv().await {
            packets.push(response);
        }
        packets
    }

    /// INIT; returns the server's version.
    pub async fn init(&mut self) -> u32 {
        self.send(&Request::Init {
            version: 3,
            extensions: Vec::new(),
        })
        .await;
        match self.recv().await {
            Some(Response::Version { version, .. }) => version,
            other => panic!("expected VERSION, got {other:?} ({:?})", self.end),
        }
    }

    /// Sends a request and returns the reply, which must carry its id.
    pub async fn request(&mut self, request: Request) -> Response {
        let id = request.id();
        self.send(&request).await;
        let response = self.recv().await.unwrap_or_else(|| {
            panic!(
                "channel closed before the reply to {request:?}: {:?}",
                self.end
            )
        });
        assert_eq!(response.id(), id, "reply to {request:?}");
        response
    }

    pub async fn open(&mut self, path: &str, flags: OpenFlags) -> Result<Bytes, StatusError> {
        let id = self.id();
        let request = Request::Open {
            id,
            filename: Bytes::copy_from_slice(path.as_bytes()),
            pflags: flags,
            attrs: FileAttributes::new(),
        };
        match self.request(request).await {
            Response::Handle { handle, .. } => Ok(handle),
            other => Err(status_error(other)),
        }
    }

    pub async fn write(
        &mut self,
        handle: &Bytes,
        offset: u64,
        data: &[u8],
    ) -> Result<(), StatusError> {
        let id = self.id();
        let request = Request::Write {
            id,
            handle: handle.clone(),
            offset,
            data: Bytes::copy_from_slice(data).into(),
        };
        expect_ok(self.request(request).await)
    }

    pub async fn read(
        &mut self,
        handle: &Bytes,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, StatusError> {
        let id = self.id();
        let request = Request::Read {
            id,
            handle: handle.clone(),
            offset,
            len,
        };
        match self.request(request).await {
            Response::Data { data, .. } => Ok(data),
            other => Err(status_error(other)),
        }
    }

    pub async fn close(&mut self, handle: &Bytes) -> Result<(), StatusError> {
        let id = self.id();
        let request = Request::Close {
            id,
            handle: handle.clone(),
        };
        expect_ok(self.request(request).await)
    }

    pub async fn stat(&mut self, path: &str) -> Result<FileAttributes, StatusError> {
        let id = self.id();
        let request = Request::Stat {
            id,
            path: Bytes::copy_from_slice(path.as_bytes()),
        };
        match self.request(request).await {
            Response::Attrs { attrs, .. } => Ok(attrs),
            other => Err(status_error(other)),
        }
    }

    /// Writes `name` with some bytes, reads them back, closes it: the session works.
    pub async fn round_trip(&mut self, name: &str) {
        let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let flags = OpenFlags::READ | OpenFlags::WRITE | OpenFlags::CREAT | OpenFlags::TRUNC;
        let handle = self
            .open(name, flags)
            .await
            .expect("open for the round trip");
        self.write(&handle, 0, &data).await.expect("write");
        let mut back = Vec::new();
        while back.len() < data.len() {
            let chunk = self
                .read(&handle, back.len() as u64, 32 * 1024)
                .await
                .expect("read back");
            back.extend_from_slice(&chunk);
        }
        assert_eq!(back, data, "round trip of {name}");
        self.close(&handle).await.expect("close");
        let attrs = self.stat(name).await.expect("stat");
        assert_eq!(attrs.size, Some(data.len() as u64));
    }
}

pub fn status_error(response: Response) -> StatusError {
    match response {
        Response::Status { code, message, .. } => (code, message),
        other => panic!("expected STATUS, got {other:?}"),
    }
}

pub fn expect_ok(response: Response) -> Result<(), StatusError> {
    match status_error(response) {
        (StatusCode::Ok, _) => Ok(()),
        error => Err(error),
    }
}

/// An SFTP packet: the length field, then `body` (type byte onwards).
pub fn packet(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

// ---------------------------------------------------------------------------------------------
// OpenSSH

/// The path of an OpenSSH client binary. When it is missing: `None` after a "skipping"
/// note, or a panic under `CI=true`.
pub fn openssh(binary: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(binary))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("OpenSSH `{binary}` is not on PATH, and CI=true requires it");
        }
        eprintln!("skipping: OpenSSH `{binary}` is not on PATH");
    }
    found
}

/// Options that make OpenSSH's clients ignore the user's configuration and known hosts.
pub fn openssh_options(server: &TestServer) -> Vec<String> {
    let key = server.key_path.display().to_string();
    [
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",
        "-i",
        &key,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `sftp` for the test server, all three streams piped, in its own process group (so that
/// killing the group also kills the `ssh` it runs), killed if dropped.
pub fn sftp_command(server: &TestServer, sftp: &Path, extra: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(sftp);
    command
        .args(openssh_options(server))
        .args(["-P", &server.port().to_string()])
        .args(extra)
        .arg(format!("{USER}@127.0.0.1"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    command
}

/// What an OpenSSH client printed and how it exited.
#[derive(Debug)]
pub struct Finished {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `sftp -b` with these batch commands; bounded.
pub async fn sftp_batch(server: &TestServer, sftp: &Path, commands: &str) -> Finished {
    let batch = server.scratch.join(format!("batch-{}", unique()));
    std::fs::write(&batch, commands).expect("write batch file");
    let batch = batch.display().to_string();
    let mut command = sftp_command(server, sftp, &["-b", &batch]);
    command.stdin(Stdio::null());
    let child = command.spawn().expect("spawn sftp");
    finish(child).await
}

/// Runs `ssh … command`; bounded.
pub async fn ssh_exec(server: &TestServer, ssh: &Path, remote_command: &str) -> Finished {
    let mut command = tokio::process::Command::new(ssh);
    command
        .args(openssh_options(server))
        .args(["-p", &server.port().to_string()])
        .arg(format!("{USER}@127.0.0.1"))
        .arg(remote_command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("spawn ssh");
    finish(child).await
}

/// Waits (bounded) for a child and collects its output.
pub async fn finish(child: tokio::process::Child) -> Finished {
    let output = bounded("the OpenSSH client to exit", child.wait_with_output())
        .await
        .expect("wait for the OpenSSH client");
    Finished {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// SIGKILL to the child's whole process group (`sftp` and its `ssh`).
pub fn kill_group(child: &tokio::process::Child) {
    let pid = child.id().expect("child still running") as i32;
    let group = rustix::process::Pid::from_raw(pid).expect("valid pid");
    rustix::process::kill_process_group(group, rustix::process::Signal::KILL)
        .expect("kill the process group");
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
