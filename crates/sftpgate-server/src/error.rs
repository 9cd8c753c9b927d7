//! The server's error type.

/// What can go wrong running the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The SSH layer failed.
    #[error("SSH: {0}")]
    Ssh(#[from] russh::Error),
    /// Listening or accepting failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration cannot work (for example no host key).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A lifecycle hook refused the session; the message is for the client.
    #[error("{0}")]
    Refused(String),
}
