//! sftpgate's session lifecycle as NATS messages: the storage of each SFTP session is
//! provisioned on demand through a message bus, awaited until ready, and released when the
//! session ends, however it ends; and what happens is published to JetStream.
//!
//! - [`NatsHooks`] (a [`sftpgate_server::Hooks`]): optionally asks `<prefix>.auth` whether an
//!   authenticated connection may go on; the answer's metadata is kept for the connection.
//! - [`NatsFactory`] (a [`sftpgate_server::SftpFactory`]): asks `<prefix>.provision` for a
//!   session's storage, awaits `<prefix>.ready.<allocation_id>` when the answer is
//!   `accepted`, and serves the session from the filesystem the caller's builder makes of
//!   the backend description.
//! - [`ReleaseOutbox`]: every allocation is released exactly once on `<prefix>.release`,
//!   recorded durably first and retried with backoff until acknowledged, across NATS
//!   outages and server restarts; the idempotency key makes a repeat harmless.
//! - [`NatsEvents`] (a [`sftpgate_server::EventSink`]) and its [`EventPublisher`]: events as
//!   `sftpgate.event.v1` JSON on `<prefix>.events.>` in a JetStream stream, at least once,
//!   never blocking the transfer path.
//! - [`ReferenceProvisioner`]: the other end, with directories standing in for volumes.
//!
//! Subjects, payloads, timeouts and the sequence of a session are in `docs/nats.md`.
//!
//! Wiring, as the binary does it:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use sftpgate_nats::*;
//! # use sftpgate_server::{Authenticator, Server, ServerConfig};
//! # use sftpgate_vfs::Filesystem;
//! # async fn example(auth: impl Authenticator, server_config: ServerConfig, config: NatsConfig,
//! #     build: fn(Backend) -> std::future::Ready<Result<Arc<dyn Filesystem>, BoxError>>)
//! #     -> Result<(), Box<dyn std::error::Error>> {
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let client = connect(&config).await?;
//! let outbox = ReleaseOutbox::open(client.clone(), &config).await?;
//! tokio::spawn(outbox.run(shutdown.clone()));
//! let (events, publisher) = event_channel(client.clone(), &config);
//! tokio::spawn(publisher.run(shutdown.clone()));
//! let hooks = NatsHooks::new(client.clone(), &config);
//! let factory = NatsFactory::new(client, &config, outbox, build);
//! let server = Server::new(server_config, auth, hooks, factory)?.with_events(events);
//! // … server.run(listener).await, then shutdown.cancel() once it returned.
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auth;
mod config;
mod error;
mod events;
mod outbox;
mod provision;
mod provisioner;
mod request;
pub mod wire;

pub use auth::{AuthMetadata, MetadataSource, NatsHooks};
pub use config::{
    connect, wait_connected, AuthHookConfig, EventsConfig, NatsConfig, OnUnavailable,
    ProvisionConfig, ReleaseConfig, Subjects,
};
pub use error::Error;
pub use events::{event_channel, EventPublisher, NatsEvents, EVENT_SCHEMA};
pub use outbox::{Delivery, ReleaseOutbox};
pub use provision::{BoxError, NatsFactory};
pub use provisioner::{AllocationRecord, ProvisionerConfig, ReferenceProvisioner};
pub use wire::Backend;

/// Re-exported so that callers name the same client type.
pub use async_nats;
