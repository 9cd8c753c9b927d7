//! [`StoreError`]: everything the store refuses or fails at, with what a caller (the CLI, the
//! SFTP factory) needs to act on it.

/// Why a store operation failed. Every input error is detected before anything is written:
/// an operation that returns one of these has changed nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database URL names no supported backend.
    #[error("unsupported database URL scheme {scheme:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl {
        /// The scheme found (never the whole URL, which may hold a password).
        scheme: String,
    },
    /// No user has this name.
    #[error("no user named {name:?}")]
    UnknownUser {
        /// The name asked for.
        name: String,
    },
    /// A user with this name exists already.
    #[error("a user named {name:?} exists already")]
    DuplicateUser {
        /// The name.
        name: String,
    },
    /// The name is not usable as a login name.
    #[error("invalid user name {name:?}: {reason}")]
    InvalidUserName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An empty password was given (remove the password instead).
    #[error("the password is empty")]
    EmptyPassword,
    /// A password hash to import is not an argon2id PHC string.
    #[error("the password hash is not an argon2id PHC string ($argon2id$v=19$…)")]
    InvalidPasswordHash,
    /// The root directory is not usable.
    #[error("invalid root directory {root:?}: {reason}")]
    InvalidRoot {
        /// The root given.
        root: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The line is not an OpenSSH public key line.
    #[error("not a valid public key line: {reason}")]
    InvalidKey {
        /// What the parser found wrong.
        reason: String,
    },
    /// The key's algorithm is not accepted (only ed25519, ecdsa and rsa keys are).
    #[error("{algorithm} keys are not accepted: use ed25519, ecdsa or rsa (at least {min_rsa_bits} bits)")]
    UnsupportedKeyAlgorithm {
        /// The algorithm's SSH name.
        algorithm: String,
        /// The smallest RSA modulus accepted, for the message.
        min_rsa_bits: u32,
    },
    /// An RSA key with too small a modulus.
    #[error("RSA key of {bits} bits is too weak: at least {min_bits} bits are required")]
    WeakKey {
        /// The key's modulus size.
        bits: u32,
        /// The smallest accepted.
        min_bits: u32,
    },
    /// The user has this key already.
    #[error("user {user:?} has the key {fingerprint} already")]
    DuplicateKey {
        /// The user.
        user: String,
        /// The key's `SHA256:…` fingerprint.
        fingerprint: String,
    },
    /// No key of the user matches the selector.
    #[error("user {user:?} has no key {selector}")]
    UnknownKey {
        /// The user.
        user: String,
        /// The fingerprint or `#index` asked for.
        selector: String,
    },
    /// A path prefix of a permission rule is not usable.
    #[error("invalid path prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        /// The prefix given.
        prefix: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A permission name is not one of the known ones.
    #[error("unknown permission {name:?}: use {known}, all or none")]
    UnknownPermission {
        /// The name given.
        name: String,
        /// The known names, comma-separated.
        known: &'static str,
    },
    /// The user has no rule for this prefix.
    #[error("user {user:?} has no permission rule for {prefix}")]
    UnknownRule {
        /// The user.
        user: String,
        /// The normalised prefix.
        prefix: String,
    },
    /// The user is disabled (from [`Store::session_profile`](crate::Store::session_profile)).
    #[error("user {name:?} is disabled")]
    UserDisabled {
        /// The user.
        name: String,
    },
    /// The user's account has expired.
    #[error("the account of user {name:?} has expired")]
    UserExpired {
        /// The user.
        name: String,
    },
    /// A stored value could not be read back (edited by hand, or written by a newer version).
    #[error("corrupt store: {what}")]
    Corrupt {
        /// What could not be read.
        what: String,
    },
    /// Hashing a password failed.
    #[error("hashing the password failed: {reason}")]
    Hashing {
        /// Why.
        reason: String,
    },
    /// Applying the schema migrations failed.
    #[error("migrating the store's schema failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The database failed (unreachable, timed out, constraint violated by a concurrent
    /// writer, …).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl StoreError {
    /// Whether the error is about the caller's input (an unknown name, a malformed key, …)
    /// rather than the database or the store's contents: a CLI exits with a usage error.
    pub fn is_input_error(&self) -> bool {
        !matches!(
            self,
            StoreError::Corrupt { .. }
                | StoreError::Hashing { .. }
                | StoreError::Migration(_)
                | StoreError::Database(_)
        )
    }
}
