//! One SFTP session over a plain byte stream instead of SSH: what `sftpgate sftp-server`
//! runs on stdin/stdout when another SSH server (OpenSSH's `Subsystem sftp`) has already
//! authenticated the user. Same lifecycle, same dispatcher, same limits: the stream is a
//! second front end, not a second engine.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use sftpgate_proto::{Decoder, RequestInput};
use sftpgate_vfs::{EndReason, VPath};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ServerConfig;
use crate::error::Error;
use crate::events::{EventSink, NoEvents};
use crate::hooks::{ConnectionInfo, Hooks, SessionId, SftpContext, SftpFactory};
use crate::server::ShutdownHandle;
use crate::sftp::transport::{Inlet, Outlet};
use crate::sftp::{run_session, SessionCore};

/// Read size from the stream.
const READ_CHUNK: usize = 256 * 1024;

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// Serves one session over a reader and a writer (stdin and stdout for a subsystem).
///
/// ```no_run
/// # use sftpgate_server::*;
/// # async fn example(factory: impl SftpFactory<()>, connection: ConnectionInfo) -> Result<(), Error> {
/// let session = StreamSession::new(ServerConfig::default(), NoHooks, factory);
/// let reason = session.run(connection, tokio::io::stdin(), tokio::io::stdout()).await?;
/// # Ok(()) }
/// ```
pub struct StreamSession<H, F> {
    config: ServerConfig,
    hooks: H,
    factory: Arc<F>,
    events: Arc<dyn EventSink>,
    start_dir: VPath,
    shutdown: CancellationToken,
}

impl<H, F> StreamSession<H, F>
where
    H: Hooks,
    F: SftpFactory<H::State>,
{
    /// A session with these settings (host keys and authentication settings are unused).
    pub fn new(config: ServerConfig, hooks: H, factory: F) -> Self {
        StreamSession {
            config,
            hooks,
            factory: Arc::new(factory),
            events: Arc::new(NoEvents),
            start_dir: VPath::root(),
            shutdown: CancellationToken::new(),
        }
    }

    /// Sends every event to `sink`.
    pub fn with_events(mut self, sink: impl EventSink) -> Self {
        self.events = Arc::new(sink);
        self
    }

    /// Where relative paths start (OpenSSH's `-d`).
    pub fn with_start_dir(mut self, dir: VPath) -> Self {
        self.start_dir = dir;
        self
    }

    /// Ends the session from outside (SIGTERM): it ends with [`EndReason::Shutdown`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle::new(self.shutdown.clone())
    }

    /// Runs step 1 (the auth-completed hook) for `connection`, then the session; returns
    /// why it ended once its exit has run. A refusing hook or factory is
    /// [`Error::Refused`] with the message for the client.
    pub async fn run<R, W>(
        self,
        connection: ConnectionInfo,
        reader: R,
        writer: W,
    ) -> Result<EndReason, Error>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let timeouts = &self.config.timeouts;
        let started = Instant::now();
        let state = match tokio::time::timeout(
            timeouts.auth_completed,
            self.hooks.auth_completed(&connection),
        )
        .await
        {
            Ok(Ok(state)) => state,
            Ok(Err(error)) => {
                tracing::warn!(error = %error, "auth-completed hook failed");
                return Err(Error::Refused(error.message().to_owned()));
            }
            Err(_) => {
                let secs = timeouts.auth_completed.as_secs_f64();
                return Err(Error::Refused(format!(
                    "login setup timed out after {secs} s"
                )));
            }
        };
        tracing::debug!(elapsed = ?started.elapsed(), "auth-completed hook done");
        let tracker = TaskTracker::new();
        let outlet = StreamOutlet {
            writer: tokio::sync::Mutex::new(writer),
            refusal: Mutex::new(None),
        };
        let outlet = Arc::new(outlet);
        let core = SessionCore {
            ctx: SftpContext {
                connection: Arc::new(connection),
                session: SessionId(NEXT_SESSION.fetch_add(1, Ordering::Relaxed)),
                channel: 0,
                state: Arc::new(state),
            },
            config: Arc::new(self.config.clone()),
            shutdown: self.shutdown.clone(),
            tracker: tracker.clone(),
            events: self.events.clone(),
            start_dir: self.start_dir.clone(),
        };
        let inlet = StreamInlet { reader };
        let reason = run_session(
            self.factory.clone(),
            core,
            inlet,
            SharedOutlet(outlet.clone()),
        )
        .await;
        // Exits or cleanups handed to the runtime (a panic) finish before we return.
        tracker.close();
        if tokio::time::timeout(self.config.timeouts.shutdown_drain, tracker.wait())
            .await
            .is_err()
        {
            tracing::error!("session tasks still running after the drain timeout");
        }
        match reason {
            Some(reason) => Ok(reason),
            None => {
                let message = outlet
                    .refusal
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                Err(Error::Refused(message.unwrap_or_else(|| {
                    "the session ended before it started".into()
                })))
            }
        }
    }
}

struct StreamInlet<R> {
    reader: R,
}

impl<R: AsyncRead + Unpin + Send> Inlet for StreamInlet<R> {
    fn input(&self, decoder: Decoder) -> RequestInput {
        RequestInput::in_place(decoder)
    }

    /// Reads straight into the session's decode buffer: no copy of the input in between.
    async fn recv_into(&mut self, input: &mut RequestInput) -> Option<EndReason> {
        let input = input.buffer_mut();
        input.reserve(READ_CHUNK);
        // Cancel-safe: if another branch wins, nothing was read.
        match self.reader.read_buf(input).await {
            Ok(0) => Some(EndReason::ClientEof),
            Ok(_) => None,
            Err(e) => Some(EndReason::ConnectionLost {
                detail: format!("reading input: {e}"),
            }),
        }
    }
}

struct StreamOutlet<W> {
    writer: tokio::sync::Mutex<W>,
    /// Why the session was refused, for [`StreamSession::run`] to return.
    refusal: Mutex<Option<String>>,
}

/// The outlet is shared with `run` (which reads the refusal afterwards).
struct SharedOutlet<W>(Arc<StreamOutlet<W>>);

impl<W: AsyncWrite + Unpin + Send + 'static> Outlet for SharedOutlet<W> {
    async fn send(&self, bytes: Bytes) -> Result<(), String> {
        let mut writer = self.0.writer.lock().await;
        writer.write_all(&bytes).await.map_err(|e| e.to_string())?;
        writer.flush().await.map_err(|e| e.to_string())
    }

    async fn refuse(&self, message: &str) {
        *self.0.refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(message.to_owned());
        self.finish().await;
    }

    async fn finish(&self) {
        let mut writer = self.0.writer.lock().await;
        let _ = writer.flush().await;
        let _ = writer.shutdown().await;
    }

    /// A byte stream: the SSH server on the other end (OpenSSH's sshd) packs it.
    fn packet_size(&self) -> Option<usize> {
        None
    }
}
