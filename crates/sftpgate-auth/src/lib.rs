//! Users, public keys and per-path permissions for sftpgate, in SQL: an SQLite file by
//! default (nothing to install), PostgreSQL when several server nodes share one store.
//!
//! - [`Store`]: the data, with the same API and the same queries on both databases.
//!   Versioned migrations are embedded and applied on open. Every change is one
//!   transaction; bad input is a typed [`StoreError`] and writes nothing.
//! - [`StoreAuthenticator`]: the server's [`Authenticator`](sftpgate_server::Authenticator)
//!   on the store: argon2id passwords verified on blocking threads (a failed lookup costs
//!   what a wrong password costs), public keys of enabled, unexpired users, and brute-force
//!   protection per address and per user ([`LoginGuard`]). Lookups are live.
//! - [`PermissionFs`]: a [`Filesystem`](sftpgate_vfs::Filesystem) decorator that enforces
//!   the user's [`PermissionTable`] on every operation.
//!
//! The SFTP factory reads a [`UserProfile`] with [`Store::session_profile`] when a session
//! starts and wraps the user's storage in a [`PermissionFs`]:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use sftpgate_auth::{PermissionFs, Store, StoreError};
//! # use sftpgate_vfs::Filesystem;
//! # async fn example(store: &Store, user: &str, storage: Arc<dyn Filesystem>) -> Result<(), StoreError> {
//! let profile = store.session_profile(user).await?; // refuses disabled/expired users
//! // … build `storage` for profile.root_dir / profile.storage …
//! let fs: Arc<dyn Filesystem> = Arc::new(PermissionFs::new(storage, profile.permissions));
//! # Ok(()) }
//! ```
//!
//! A running session keeps the profile it started with; the store's changes apply to new
//! logins and new sessions at once.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod authenticator;
mod error;
mod guard;
mod keys;
mod model;
pub mod password;
mod permission_fs;
mod permissions;
mod store;

pub use authenticator::{AuthConfig, KeyStage, Outcome, StoreAuthenticator};
pub use error::StoreError;
pub use guard::{BanConfig, BanKind, LoginGuard};
pub use keys::{fingerprint, key_lines, AuthorizedKey, MIN_RSA_BITS};
pub use model::{
    KeyRecord, KeySelector, NewUser, Password, Storage, UserDetails, UserProfile, UserRecord,
};
pub use password::PasswordParams;
pub use permission_fs::PermissionFs;
pub use permissions::{normalize_prefix, PermissionRule, PermissionTable, Permissions};
pub use store::{check_name, Backend, Store, StoreConfig, DEFAULT_DATABASE_FILE};
