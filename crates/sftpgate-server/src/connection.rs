//! One SSH connection: the russh [`Handler`] that authenticates, runs the auth-completed hook
//! (step 1) on the connection's event loop, and starts an SFTP session task for each `sftp`
//! subsystem channel. Everything else (shell, exec, other subsystems, forwarding) is refused
//! with a message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt as _;
use russh::keys::{HashAlg, PublicKey};
use russh::server::{Auth, Handler, Msg, Session};
use russh::{Channel, ChannelId, ChannelOpenFailure, Disconnect};
use sftpgate_vfs::{EndReason, VPath};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::admission::Ticket;
use crate::config::ServerConfig;
use crate::events::{Event, EventSink};
use crate::hooks::{
    AuthMethod, Authenticator, ConnectionId, ConnectionInfo, HookError, Hooks, SessionId,
    SftpContext, SftpFactory,
};
use crate::sftp::{self, SessionCore, SessionParams};

/// What every connection shares: settings, hooks, and the server's task bookkeeping.
pub(crate) struct Shared<A, H, F> {
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) authenticator: A,
    pub(crate) hooks: H,
    pub(crate) factory: Arc<F>,
    pub(crate) tracker: TaskTracker,
    pub(crate) next_session: AtomicU64,
    pub(crate) events: Arc<dyn EventSink>,
}

/// The message shown to clients that ask for anything but SFTP.
const SFTP_ONLY: &str = "This service allows sftp connections only.\r\n";

/// The russh handler of one connection.
pub(crate) struct Connection<A, H: Hooks, F> {
    shared: Arc<Shared<A, H, F>>,
    id: ConnectionId,
    peer: SocketAddr,
    /// Cancelled when the server shuts down (a child of the server's token).
    shutdown: CancellationToken,
    /// The connection's SFTP session tasks.
    sessions: TaskTracker,
    /// Set once step 1 succeeded (stops the login grace timer).
    pub(crate) authenticated: Arc<AtomicBool>,
    /// The connection's place in the per-address, per-user and unauthenticated counts.
    ticket: Arc<Ticket>,
    connection_end: watch::Receiver<Option<EndReason>>,
    /// Who the last accepted authentication was for, until `auth_succeeded` consumes it.
    accepted: Option<(String, AuthMethod)>,
    state: State<H::State>,
    /// Session channels opened but not yet given a subsystem.
    channels: HashMap<ChannelId, Channel<Msg>>,
    span: tracing::Span,
}

enum State<S> {
    Authenticating,
    Ready {
        info: Arc<ConnectionInfo>,
        state: Arc<S>,
    },
    Refused,
}

impl<A, H, F> Connection<A, H, F>
where
    A: Authenticator,
    H: Hooks,
    F: SftpFactory<H::State>,
{
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: Arc<Shared<A, H, F>>,
        id: ConnectionId,
        peer: SocketAddr,
        shutdown: CancellationToken,
        sessions: TaskTracker,
        authenticated: Arc<AtomicBool>,
        ticket: Arc<Ticket>,
        connection_end: watch::Receiver<Option<EndReason>>,
        span: tracing::Span,
    ) -> Self {
        Connection {
            shared,
            id,
            peer,
            shutdown,
            sessions,
            authenticated,
            ticket,
            connection_end,
            accepted: None,
            state: State::Authenticating,
            channels: HashMap::new(),
            span,
        }
    }

    fn accept(&mut self, user: &str, method: AuthMethod) -> Auth {
        metrics::counter!("sftpgate_auth_attempts_total", "method" => method.name(), "result" => "accepted")
            .increment(1);
        self.accepted = Some((user.to_owned(), method));
        Auth::Accept
    }

    /// A rejected login attempt: logged, counted and reported as an event.
    fn reject(&self, user: &str, method: &'static str) -> Auth {
        metrics::counter!("sftpgate_auth_attempts_total", "method" => method, "result" => "rejected")
            .increment(1);
        tracing::info!(parent: &self.span, user, method, "authentication rejected");
        self.shared.events.emit(Event::LoginFailed {
            peer: self.peer,
            user: user.to_owned(),
            method,
        });
        self.decline()
    }

    /// "Not this one, try again": the full method list, since without one russh drops the
    /// method just tried from the offer (no retry after a typo, no second key). Used alone
    /// for key probes, which are not login attempts.
    fn decline(&self) -> Auth {
        Auth::Reject {
            proceed_with_methods: Some(self.shared.config.methods()),
            partial_success: false,
        }
    }

    /// Refuses a channel request with a message on the channel's stderr.
    ///
    /// The request is accepted and then ended with exit status 1: OpenSSH's client treats a
    /// failure reply on its main channel as fatal at once and would exit before printing
    /// the message that arrived just ahead of it.
    fn refuse_channel(
        &mut self,
        channel: ChannelId,
        what: &str,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        tracing::info!(parent: &self.span, what, "refused a non-SFTP channel request");
        self.channels.remove(&channel);
        session.channel_success(channel)?;
        session.extended_data(channel, 1, SFTP_ONLY.as_bytes().to_vec())?;
        session.exit_status_request(channel, 1)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}

impl<A, H, F> Handler for Connection<A, H, F>
where
    A: Authenticator,
    H: Hooks,
    F: SftpFactory<H::State>,
{
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        if self
            .shared
            .authenticator
            .password(user, password, self.peer)
            .await
        {
            Ok(self.accept(user, AuthMethod::Password))
        } else {
            Ok(self.reject(user, "password"))
        }
    }

    /// Keyboard-interactive with a single password prompt, for clients that only speak
    /// that method; checked like a password.
    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<russh::server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        let Some(mut answers) = response else {
            return Ok(Auth::Partial {
                name: "".into(),
                instructions: "".into(),
                prompts: vec![("Password: ".into(), false)].into(),
            });
        };
        let password = answers.next().unwrap_or_default();
        let password = String::from_utf8_lossy(&password);
        if self
            .shared
            .authenticator
            .password(user, &password, self.peer)
            .await
        {
            Ok(self.accept(user, AuthMethod::KeyboardInteractive))
        } else {
            Ok(self.reject(user, "keyboard-interactive"))
        }
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if self
            .shared
            .authenticator
            .publickey(user, offer.public_key, self.peer)
            .await
        {
            Ok(Auth::Accept)
        } else {
            Ok(self.decline())
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if self
            .shared
            .authenticator
            .publickey(user, key.public_key, self.peer)
            .await
        {
            let fingerprint = fingerprint(key.public_key);
            Ok(self.accept(user, AuthMethod::PublicKey { fingerprint }))
        } else {
            Ok(self.reject(user, "publickey"))
        }
    }

    /// Step 1. russh awaits this before USERAUTH_SUCCESS goes out, so no channel request
    /// of this connection can be acted on while it runs: the client's channel open and
    /// `subsystem sftp` wait in the transport.
    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        let Some((user, method)) = self.accepted.take() else {
            // Cannot happen: russh calls this only after one of our methods accepted.
            session.disconnect(Disconnect::ByApplication, "authentication state lost", "")?;
            self.state = State::Refused;
            return Ok(());
        };
        self.span.record("user", user.as_str());
        // Out of the unauthenticated budget, into the user's count; before the hook, so a
        // user over the limit costs no setup.
        if let Err(refusal) = self.ticket.authenticate(&user) {
            metrics::counter!("sftpgate_connections_rejected_total", "reason" => refusal.label())
                .increment(1);
            tracing::warn!(parent: &self.span, user, reason = refusal.label(), "connection refused: {}", refusal.message());
            self.state = State::Refused;
            session.disconnect(Disconnect::TooManyConnections, &refusal.message(), "")?;
            return Ok(());
        }
        let info = Arc::new(ConnectionInfo {
            id: self.id,
            peer: self.peer,
            user,
            method,
            client_software: client_software(session.remote_sshid()),
        });
        let timeout = self.shared.config.timeouts.auth_completed;
        let started = Instant::now();
        let result = tokio::select! {
            r = tokio::time::timeout(timeout, AssertUnwindSafe(self.shared.hooks.auth_completed(&info)).catch_unwind()) => Some(r.map(|r| r.unwrap_or_else(|panic| {
                // A panicking hook is a failed one: this connection is refused, no other
                // is touched.
                tracing::error!(parent: &self.span, panic = crate::lifecycle::panic_message(&*panic), "auth-completed hook panicked");
                Err(HookError::new("internal error in login setup"))
            }))),
            () = self.shutdown.cancelled() => None,
        };
        let elapsed = started.elapsed();
        let refusal = match result {
            Some(Ok(Ok(state))) => {
                metrics::histogram!("sftpgate_lifecycle_hook_seconds", "step" => "auth_completed")
                    .record(elapsed.as_secs_f64());
                tracing::info!(parent: &self.span, user = %info.user, method = info.method.name(), ?elapsed, "authenticated");
                self.authenticated.store(true, Ordering::SeqCst);
                self.shared.events.emit(Event::Login {
                    connection: info.clone(),
                });
                self.state = State::Ready {
                    info,
                    state: Arc::new(state),
                };
                return Ok(());
            }
            Some(Ok(Err(error))) => {
                metrics::counter!("sftpgate_lifecycle_hook_failures_total", "step" => "auth_completed")
                    .increment(1);
                tracing::warn!(parent: &self.span, error = %error, source = ?std::error::Error::source(&error), "auth-completed hook failed");
                error.message().to_owned()
            }
            Some(Err(_)) => {
                metrics::counter!("sftpgate_lifecycle_hook_timeouts_total", "step" => "auth_completed")
                    .increment(1);
                tracing::warn!(parent: &self.span, ?timeout, "auth-completed hook timed out");
                format!("login setup timed out after {} s", timeout.as_secs_f64())
            }
            None => "server is shutting down".to_owned(),
        };
        // The client is told authentication succeeded (USERAUTH_SUCCESS is already queued)
        // and then, in the same flush, why the connection ends: never a silent reset.
        self.state = State::Refused;
        session.disconnect(Disconnect::ByApplication, &refusal, "")?;
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let State::Ready { .. } = self.state else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let limit = self.shared.config.limits.max_sessions_per_connection;
        let live = self.channels.len() + self.sessions.len();
        if live >= limit {
            tracing::warn!(parent: &self.span, limit, "session limit per connection reached");
            metrics::counter!("sftpgate_limit_hits_total", "limit" => "sessions_per_connection")
                .increment(1);
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel_id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name != "sftp" {
            return self.refuse_channel(channel_id, "subsystem", session);
        }
        let State::Ready { info, state } = &self.state else {
            return self.refuse_channel(channel_id, "subsystem before login", session);
        };
        let Some(channel) = self.channels.remove(&channel_id) else {
            // A second subsystem request on a channel that already has one.
            session.channel_failure(channel_id)?;
            return Ok(());
        };
        session.channel_success(channel_id)?;
        let session_id = SessionId(self.shared.next_session.fetch_add(1, Ordering::Relaxed));
        let span = tracing::info_span!(parent: &self.span, "sftp", session = %session_id, channel = u32::from(channel_id));
        metrics::counter!("sftpgate_sftp_sessions_total").increment(1);
        let params = SessionParams {
            core: SessionCore {
                ctx: SftpContext {
                    connection: info.clone(),
                    session: session_id,
                    channel: u32::from(channel_id),
                    state: state.clone(),
                },
                config: self.shared.config.clone(),
                shutdown: self.shutdown.child_token(),
                tracker: self.shared.tracker.clone(),
                events: self.shared.events.clone(),
                start_dir: VPath::root(),
            },
            channel,
            connection_end: self.connection_end.clone(),
        };
        let task = sftp::run(self.shared.factory.clone(), params).instrument(span);
        self.shared.tracker.spawn(self.sessions.track_future(task));
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel(channel, "exec", session)
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refuse_channel(channel, "shell", session)
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }
}

fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The software part of an SSH identification string: `SSH-2.0-OpenSSH_9.2p1 Debian-2`
/// gives `OpenSSH_9.2p1`.
fn client_software(id: &[u8]) -> String {
    let id = String::from_utf8_lossy(id);
    let id = id.trim_end();
    let software = id
        .strip_prefix("SSH-2.0-")
        .or_else(|| id.strip_prefix("SSH-1.99-"))
        .unwrap_or(id);
    software.split(' ').next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod client_software_tests {
    use super::client_software;

    #[test]
    fn the_software_part_of_an_identification_string() {
        assert_eq!(
            client_software(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10\r\n"),
            "OpenSSH_9.2p1"
        );
        assert_eq!(
            client_software(b"SSH-2.0-AsyncSSH_2.24.1"),
            "AsyncSSH_2.24.1"
        );
        assert_eq!(
            client_software(b"SSH-1.99-paramiko_5.1.0"),
            "paramiko_5.1.0"
        );
        assert_eq!(client_software(b""), "");
    }
}
