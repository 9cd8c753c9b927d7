//! What happened, as values: logins, sessions and file operations, for audit trails and
//! message buses. An [`EventSink`] receives them synchronously and must not block: a sink
//! that publishes somewhere slow buffers (boundedly) and counts what it drops.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sftpgate_vfs::{EndReason, VPath};

use crate::hooks::{ConnectionInfo, SessionId};

/// One event.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A connection authenticated and its auth-completed hook succeeded.
    Login {
        /// The connection.
        connection: Arc<ConnectionInfo>,
    },
    /// An authentication attempt was rejected.
    LoginFailed {
        /// The client's address.
        peer: SocketAddr,
        /// The user name tried.
        user: String,
        /// The method tried (`password`, `publickey`, …).
        method: &'static str,
    },
    /// An SFTP session's factory returned: the session is being served.
    SessionStarted {
        /// The connection.
        connection: Arc<ConnectionInfo>,
        /// The session.
        session: SessionId,
    },
    /// An SFTP session ended and its exit ran.
    SessionEnded {
        /// The connection.
        connection: Arc<ConnectionInfo>,
        /// The session.
        session: SessionId,
        /// Why it ended.
        reason: EndReason,
        /// From the factory's return to the end of the exit.
        duration: Duration,
        /// File bytes the client wrote.
        bytes_in: u64,
        /// File bytes the client read.
        bytes_out: u64,
    },
    /// A file operation succeeded.
    File {
        /// The connection.
        connection: Arc<ConnectionInfo>,
        /// The session.
        session: SessionId,
        /// What was done.
        op: FileOp,
    },
}

/// A successful file operation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileOp {
    /// A file opened for writing was closed.
    Upload {
        /// The file.
        path: VPath,
        /// Its size after the upload (bytes written when the size could not be read).
        size: u64,
        /// Bytes written through the handle.
        bytes: u64,
    },
    /// A file read through a handle was closed.
    Download {
        /// The file.
        path: VPath,
        /// Bytes read through the handle.
        bytes: u64,
    },
    /// REMOVE.
    Remove {
        /// The file.
        path: VPath,
    },
    /// RENAME or posix-rename.
    Rename {
        /// The old name.
        from: VPath,
        /// The new name.
        to: VPath,
    },
    /// MKDIR.
    Mkdir {
        /// The new directory.
        path: VPath,
    },
    /// RMDIR.
    Rmdir {
        /// The removed directory.
        path: VPath,
    },
    /// SYMLINK.
    Symlink {
        /// The new link.
        link: VPath,
        /// Its target, as the client gave it.
        target: String,
    },
    /// hardlink@openssh.com.
    Hardlink {
        /// The existing file.
        existing: VPath,
        /// The new link.
        link: VPath,
    },
    /// SETSTAT, FSETSTAT or lsetstat.
    Setstat {
        /// The file.
        path: VPath,
    },
}

impl FileOp {
    /// A short stable label (`upload`, `remove`, …).
    pub fn label(&self) -> &'static str {
        match self {
            FileOp::Upload { .. } => "upload",
            FileOp::Download { .. } => "download",
            FileOp::Remove { .. } => "remove",
            FileOp::Rename { .. } => "rename",
            FileOp::Mkdir { .. } => "mkdir",
            FileOp::Rmdir { .. } => "rmdir",
            FileOp::Symlink { .. } => "symlink",
            FileOp::Hardlink { .. } => "hardlink",
            FileOp::Setstat { .. } => "setstat",
        }
    }
}

/// Receives events. Called on the serving path: return quickly, never block.
pub trait EventSink: Send + Sync + 'static {
    /// Takes one event.
    fn emit(&self, event: Event);

    /// Whether this sink wants [`Event::File`] events. When it does not, the server skips
    /// the work that only feeds them (an `fstat` per uploaded file for its final size).
    fn wants_file_events(&self) -> bool {
        true
    }
}

/// Drops every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEvents;

impl EventSink for NoEvents {
    fn emit(&self, _event: Event) {}

    fn wants_file_events(&self) -> bool {
        false
    }
}
