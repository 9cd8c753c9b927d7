//! The crate's one error type, [`Error`].

use std::path::PathBuf;
use std::time::Duration;

/// What went wrong talking to NATS, keeping the outbox, or reading a reply.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot be used.
    #[error("invalid NATS configuration: {0}")]
    Config(String),
    /// The client could not be set up (credentials file unreadable, bad URL, …).
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    /// The client is not connected to any NATS server right now.
    #[error("not connected to NATS (request on {subject} not sent)")]
    NotConnected {
        /// The subject the request was for.
        subject: String,
    },
    /// Nobody subscribes to the subject.
    #[error("no responders on {subject}")]
    NoResponders {
        /// The subject the request was for.
        subject: String,
    },
    /// No reply within the timeout.
    #[error("no reply on {subject} within {}", humantime::format_duration(*after))]
    Timeout {
        /// The subject the request was for.
        subject: String,
        /// The timeout that passed.
        after: Duration,
    },
    /// The request could not be sent or its reply not received.
    #[error("request on {subject} failed: {detail}")]
    Request {
        /// The subject the request was for.
        subject: String,
        /// What the client reported.
        detail: String,
    },
    /// The reply was not what the protocol (docs/nats.md) allows.
    #[error("invalid reply on {subject}: {detail}")]
    BadReply {
        /// The subject the request was for.
        subject: String,
        /// What was wrong with it.
        detail: String,
    },
    /// Subscribing failed.
    #[error("cannot subscribe to {subject}: {detail}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// What the client reported.
        detail: String,
    },
    /// A JetStream operation (stream creation, publish, ack) failed.
    #[error("JetStream: {0}")]
    JetStream(String),
    /// The release outbox could not be read or written.
    #[error("release outbox {}: {source}", path.display())]
    Outbox {
        /// The file or directory.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the service simply could not be reached (not connected, nobody listening, no
    /// reply in time), as opposed to answering something invalid.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::NotConnected { .. }
                | Error::NoResponders { .. }
                | Error::Timeout { .. }
                | Error::Request { .. }
        )
    }
}
