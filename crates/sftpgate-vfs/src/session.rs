//! Why a session ended: what [`crate::Filesystem::exit`] is told.

use std::fmt;

/// The way an SFTP session ended. Every session ends with exactly one of these, passed to
/// exactly one call of [`crate::Filesystem::exit`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// The client sent EOF on the channel.
    ClientEof,
    /// The client closed the channel.
    ClientClosed,
    /// The SSH connection ended under the session: TCP dropped or reset, or the client
    /// disconnected without closing the channel first.
    ConnectionLost {
        /// What the transport reported.
        detail: String,
    },
    /// No request arrived within the idle timeout.
    IdleTimeout,
    /// The client stopped answering keepalives.
    KeepaliveTimeout,
    /// The client broke the protocol so badly that the session could not go on (for
    /// example a packet over the size limit).
    ProtocolError {
        /// What was wrong.
        detail: String,
    },
    /// The server is shutting down.
    Shutdown,
    /// The session's task was cancelled or panicked; its exit ran from the drop guard.
    Aborted,
}

impl EndReason {
    /// A short stable label, for logs, metrics and events.
    pub fn label(&self) -> &'static str {
        match self {
            EndReason::ClientEof => "client_eof",
            EndReason::ClientClosed => "client_closed",
            EndReason::ConnectionLost { .. } => "connection_lost",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::KeepaliveTimeout => "keepalive_timeout",
            EndReason::ProtocolError { .. } => "protocol_error",
            EndReason::Shutdown => "shutdown",
            EndReason::Aborted => "aborted",
        }
    }
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::ConnectionLost { detail } => write!(f, "connection lost: {detail}"),
            EndReason::ProtocolError { detail } => write!(f, "protocol error: {detail}"),
            other => f.write_str(other.label()),
        }
    }
}
