//! The lifecycle as traits: who may log in ([`Authenticator`]), what runs once a connection
//! is authenticated ([`Hooks`]), and what builds a session's storage when a client opens the
//! `sftp` subsystem ([`SftpFactory`]). The third step, `exit`, lives on
//! [`sftpgate_vfs::Filesystem`].

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use russh::keys::PublicKey;
use sftpgate_vfs::Filesystem;
use tokio_util::task::TaskTracker;

/// Identifies one SSH connection for the life of the server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// Identifies one SFTP session (one `sftp` subsystem channel) for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// How the user authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthMethod {
    /// The `password` method.
    Password,
    /// The `publickey` method, with the key's SHA-256 fingerprint.
    PublicKey {
        /// `SHA256:…` fingerprint of the key.
        fingerprint: String,
    },
    /// The `keyboard-interactive` method.
    KeyboardInteractive,
    /// Authenticated by whatever runs sftpgate (OpenSSH's sshd for `sftpgate sftp-server`).
    External,
}

impl AuthMethod {
    /// The method's name as SSH spells it.
    pub fn name(&self) -> &'static str {
        match self {
            AuthMethod::Password => "password",
            AuthMethod::PublicKey { .. } => "publickey",
            AuthMethod::KeyboardInteractive => "keyboard-interactive",
            AuthMethod::External => "external",
        }
    }
}

/// What is known about a connection once it has authenticated.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The connection's id.
    pub id: ConnectionId,
    /// The client's address.
    pub peer: SocketAddr,
    /// The authenticated user name.
    pub user: String,
    /// How the user authenticated.
    pub method: AuthMethod,
    /// The client's software as its SSH identification string names it (`OpenSSH_9.2p1`,
    /// `AsyncSSH_2.24.1`, …); empty when the session does not come over SSH
    /// ([`crate::StreamSession`]). Clients differ in protocol details (see `SYMLINK` in
    /// sftp/dispatch.rs), and logs and events can say which client it was.
    pub client_software: String,
}

/// What the SFTP factory is given for one session.
#[derive(Debug)]
pub struct SftpContext<S> {
    /// The connection the session runs on.
    pub connection: Arc<ConnectionInfo>,
    /// The session's id.
    pub session: SessionId,
    /// The SSH channel number of the `sftp` subsystem channel.
    pub channel: u32,
    /// What [`Hooks::auth_completed`] returned for this connection.
    pub state: Arc<S>,
}

/// Why a lifecycle hook failed. The message is shown to the client (in the SSH disconnect
/// reason, or on the client's stderr for the SFTP factory), so it must be something a person
/// can act on and must not leak internals.
#[derive(Debug)]
pub struct HookError {
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl HookError {
    /// An error with a message for the client.
    pub fn new(message: impl Into<String>) -> Self {
        HookError {
            message: message.into(),
            source: None,
        }
    }

    /// An error with a message for the client and an underlying cause for the logs.
    pub fn with_source(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        HookError {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// The message for the client.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for HookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HookError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Decides who may log in. Called on the connection's event loop, once per attempt; russh
/// delays every rejection to the configured rejection time so that timing reveals nothing.
pub trait Authenticator: Send + Sync + 'static {
    /// Whether `user` may log in with `password`.
    fn password(
        &self,
        user: &str,
        password: &str,
        peer: SocketAddr,
    ) -> impl Future<Output = bool> + Send;

    /// Whether `key` is authorised for `user`. Called when the client offers the key and
    /// again once it has proved possession by signing.
    fn publickey(
        &self,
        user: &str,
        key: &PublicKey,
        peer: SocketAddr,
    ) -> impl Future<Output = bool> + Send;
}

/// Step 1 of the lifecycle: awaited once per connection, right after authentication
/// succeeds and before the server acts on any channel request.
///
/// At this point nobody knows whether the client will ask for SFTP. What it returns is
/// connection-scoped state handed to every [`SftpFactory::open`] on this connection. If it
/// fails or times out the connection is closed with an SSH DISCONNECT carrying the error's
/// message, and nothing else runs for it.
pub trait Hooks: Send + Sync + 'static {
    /// Connection-scoped state.
    type State: Send + Sync + 'static;

    /// Runs the connection's auth-related setup.
    fn auth_completed(
        &self,
        connection: &ConnectionInfo,
    ) -> impl Future<Output = Result<Self::State, HookError>> + Send;
}

/// Hooks that do nothing and keep no state.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {
    type State = ();

    async fn auth_completed(&self, _connection: &ConnectionInfo) -> Result<(), HookError> {
        Ok(())
    }
}

/// Step 2 of the lifecycle: called only when a client opens the `sftp` subsystem (never for
/// shell, exec or other subsystems). It finishes all SFTP-specific async setup before it
/// returns the filesystem that serves the session; no SFTP request is served before then.
///
/// If the client leaves, the server shuts down or the timeout fires while it runs, the
/// future is dropped (cancelled) and every cleanup registered on `cleanup` is awaited, so
/// nothing it had already set up leaks. If it returns an error, the registered cleanups run
/// too, the client sees the message, and `exit` is not called for a session that never
/// started. Once it returns a filesystem, the cleanups are discarded: from then on
/// [`Filesystem::exit`] is responsible for releasing what the session holds.
pub trait SftpFactory<S>: Send + Sync + 'static {
    /// Builds the session's filesystem.
    fn open(
        &self,
        ctx: &SftpContext<S>,
        cleanup: &mut Cleanup,
    ) -> impl Future<Output = Result<Arc<dyn Filesystem>, HookError>> + Send;
}

type CleanupFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Undo actions a factory registers while it sets things up. They run (in reverse order of
/// registration) only if the factory does not complete: cancelled, failed or timed out.
///
/// The server awaits them itself; should the task holding them be torn down first (a panic),
/// `Drop` hands what is left to the runtime so that they still run.
#[derive(Default)]
pub struct Cleanup {
    actions: Vec<CleanupFuture>,
    tracker: Option<TaskTracker>,
}

impl Cleanup {
    /// Cleanups whose drop fallback is tracked by `tracker` (so shutdown waits for them).
    pub(crate) fn tracked(tracker: TaskTracker) -> Self {
        Cleanup {
            actions: Vec::new(),
            tracker: Some(tracker),
        }
    }

    /// Registers an async action that releases something the factory has set up.
    pub fn register(&mut self, action: impl Future<Output = ()> + Send + 'static) {
        self.actions.push(Box::pin(action));
    }

    /// How many actions are registered.
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    /// Whether nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// Runs every registered action, last registered first.
    pub async fn run(mut self) {
        while let Some(action) = self.actions.pop() {
            action.await;
        }
    }

    /// Forgets every registered action (the factory succeeded).
    pub(crate) fn disarm(mut self) {
        self.actions.clear();
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.actions.is_empty() {
            return;
        }
        let actions = std::mem::take(&mut self.actions);
        let run = async move {
            for action in actions.into_iter().rev() {
                action.await;
            }
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            match &self.tracker {
                Some(tracker) => drop(runtime.spawn(tracker.track_future(run))),
                None => drop(runtime.spawn(run)),
            }
        }
    }
}

impl fmt::Debug for Cleanup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cleanup")
            .field("actions", &self.actions.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A cleanup registry whose actions append their number to `ran`.
    fn numbered(count: usize, tracker: Option<&TaskTracker>) -> (Cleanup, Arc<Mutex<Vec<usize>>>) {
        let ran = Arc::new(Mutex::new(Vec::new()));
        let mut cleanup = match tracker {
            Some(tracker) => Cleanup::tracked(tracker.clone()),
            None => Cleanup::default(),
        };
        for i in 0..count {
            let ran = ran.clone();
            cleanup.register(async move {
                // Takes a while, so that an untracked run would still be pending.
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                ran.lock().unwrap().push(i);
            });
        }
        (cleanup, ran)
    }

    #[tokio::test(start_paused = true)]
    async fn cleanup_runs_last_registered_first() {
        let (cleanup, ran) = numbered(3, None);
        assert_eq!((cleanup.len(), cleanup.is_empty()), (3, false));
        cleanup.run().await;
        assert_eq!(*ran.lock().unwrap(), vec![2, 1, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_cleanup_runs_on_the_tracker() {
        let tracker = TaskTracker::new();
        let (cleanup, ran) = numbered(2, Some(&tracker));
        drop(cleanup);
        tracker.close();
        tracker.wait().await;
        assert_eq!(*ran.lock().unwrap(), vec![1, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn cleanup_dropped_in_a_panicking_task_still_runs() {
        let tracker = TaskTracker::new();
        let (cleanup, ran) = numbered(1, Some(&tracker));
        let task = tracker.spawn(async move {
            let _cleanup = cleanup;
            panic!("factory task panicked");
        });
        assert!(task.await.unwrap_err().is_panic());
        tracker.close();
        tracker.wait().await;
        assert_eq!(*ran.lock().unwrap(), vec![0]);
    }

    #[tokio::test(start_paused = true)]
    async fn disarmed_cleanup_never_runs() {
        let tracker = TaskTracker::new();
        let (cleanup, ran) = numbered(2, Some(&tracker));
        cleanup.disarm();
        tracker.close();
        tracker.wait().await;
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        assert!(ran.lock().unwrap().is_empty());
    }

    #[test]
    fn cleanup_dropped_outside_a_runtime_does_not_panic() {
        let (cleanup, ran) = numbered(1, None);
        drop(cleanup);
        assert!(ran.lock().unwrap().is_empty());
    }

    #[test]
    fn hook_error_shows_its_message_and_keeps_its_source() {
        let plain = HookError::new("volume not ready");
        assert_eq!(plain.message(), "volume not ready");
        assert_eq!(plain.to_string(), "volume not ready");
        assert!(std::error::Error::source(&plain).is_none());

        let cause = std::io::Error::other("connection refused by 10.0.0.7");
        let wrapped = HookError::with_source("volume service unavailable", cause);
        assert_eq!(wrapped.to_string(), "volume service unavailable");
        let source = std::error::Error::source(&wrapped).expect("a source");
        assert_eq!(source.to_string(), "connection refused by 10.0.0.7");
    }

    fn check_name(method: AuthMethod, expected: &str) {
        assert_eq!(method.name(), expected);
    }

    #[test]
    fn auth_method_names() {
        check_name(AuthMethod::Password, "password");
        check_name(
            AuthMethod::PublicKey {
                fingerprint: "SHA256:x".into(),
            },
            "publickey",
        );
        check_name(AuthMethod::KeyboardInteractive, "keyboard-interactive");
    }

    #[test]
    fn ids_display_with_their_prefix() {
        assert_eq!(ConnectionId(7).to_string(), "c7");
        assert_eq!(SessionId(12).to_string(), "s12");
    }
}
