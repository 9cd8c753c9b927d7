//! sftpgate's server framework: an SFTP server on [`russh`] whose design centres on an async
//! session lifecycle.
//!
//! 1. **Auth completed** — [`Hooks::auth_completed`], awaited once per connection after
//!    authentication succeeds and before any channel request is acted on.
//! 2. **SFTP factory** — [`SftpFactory::open`], called only when a client opens the `sftp`
//!    subsystem; it finishes all async setup and returns the session's
//!    [`Filesystem`](sftpgate_vfs::Filesystem).
//! 3. **Exit** — [`Filesystem::exit`](sftpgate_vfs::Filesystem::exit), awaited exactly once
//!    on every way a session ends, with the [`EndReason`](sftpgate_vfs::EndReason).
//!
//! Each step runs under its own timeout ([`Timeouts`]). Requests of a session are served
//! concurrently, in the order the protocol requires, within per-session budgets
//! ([`Limits`]).
//!
//! ```no_run
//! use std::sync::Arc;
//! use sftpgate_server::*;
//! use sftpgate_vfs::Filesystem;
//!
//! struct Factory;
//! impl SftpFactory<()> for Factory {
//!     async fn open(&self, ctx: &SftpContext<()>, cleanup: &mut Cleanup)
//!         -> Result<Arc<dyn Filesystem>, HookError>
//!     {
//!         // ask for storage, await it, register how to release it if we are cancelled …
//!         # unimplemented!()
//!     }
//! }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod admission;
mod config;
mod connection;
mod error;
mod events;
mod hooks;
mod idle_spin;
mod lifecycle;
mod quick_ack;
mod server;
mod sftp;
mod stream;

pub use config::{Limits, RequestPolicy, ServerConfig, Timeouts, SEND_AHEAD};
pub use error::Error;
pub use events::{Event, EventSink, FileOp, NoEvents};
pub use hooks::{
    AuthMethod, Authenticator, Cleanup, ConnectionId, ConnectionInfo, HookError, Hooks, NoHooks,
    SessionId, SftpContext, SftpFactory,
};
pub use server::{
    bind, connection_runtimes, Server, ShutdownHandle, DEFAULT_IDLE_SPIN, LISTEN_BACKLOG,
};
pub use stream::StreamSession;

/// Re-exported so that library users name the same key types as the server.
pub use russh::keys;

/// Which library seals and opens AES-GCM (aes128-gcm@openssh.com, aes256-gcm@openssh.com)
/// in this process: ring on x86-64 CPUs with VAES and AVX2 but no AVX-512, where its code
/// is twice as fast as aws-lc's, aws-lc everywhere else; or the one
/// [`set_aes_gcm_library`] chose before the first connection (vendored russh, change 4 in
/// vendor/README.md). The bytes on the wire are the same either way.
pub use russh::cipher::{aes_gcm_library, set_aes_gcm_library, AesGcmLibrary};
