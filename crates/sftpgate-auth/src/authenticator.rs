//! [`StoreAuthenticator`]: the server's [`Authenticator`] on the store, with equal-cost
//! password checks and brute-force protection ([`LoginGuard`]).
//!
//! # What counts as a failure
//!
//! The server calls [`Authenticator::password`] for the `password` and
//! `keyboard-interactive` methods, and [`Authenticator::publickey`] both when a client
//! *offers* a key (OpenSSH probes every key in its agent this way, and russh asks again
//! before it checks the signature of a request the client signed without probing) and when
//! the signature is verified. The trait does not say which of the two it is.
//!
//! - Every rejected password or keyboard-interactive answer counts as a failure.
//! - A rejected key offer never counts: a user with six keys in their agent would otherwise
//!   be banned after two logins, and a public key cannot be guessed anyway.
//! - A rejection after the signature was verified would count ([`KeyStage::Signed`]), but
//!   russh asks about a signed key only after the offer of the same key was accepted, so
//!   it happens only if the store changed in between. The trait impl therefore treats
//!   every publickey call as [`KeyStage::Offered`]; should the server tell the stages
//!   apart one day, it can call [`StoreAuthenticator::check_publickey`] with the stage.
//!
//! An address ban refuses every method. A user ban refuses password and
//! keyboard-interactive attempts only, unless [`AuthConfig::user_ban_covers_publickey`]:
//! it exists against password guessing spread over many addresses, and refusing the
//! owner's key would let anyone lock them out.
//!
//! # Live lookups
//!
//! Every attempt reads the store, so adding, disabling, expiring or re-keying a user
//! applies to the next login. Established connections and running sessions are not
//! re-checked.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use sftpgate_server::keys::PublicKey;
use sftpgate_server::Authenticator;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::error::StoreError;
use crate::guard::{BanConfig, BanKind, LoginGuard};
use crate::password::{hash_password, random_password, verify_password};
use crate::store::Store;

/// How the authenticator behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuthConfig {
    /// Brute-force protection.
    pub ban: BanConfig,
    /// Most argon2 verifications running at once (default: the number of CPUs). Each takes
    /// the hash's memory cost (19 MiB by default) for its duration; more attempts wait.
    pub max_concurrent_hashes: usize,
    /// Whether a user ban refuses publickey logins too (default false; see the module
    /// docs).
    pub user_ban_covers_publickey: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            ban: BanConfig::default(),
            max_concurrent_hashes: std::thread::available_parallelism().map_or(2, |n| n.get()),
            user_ban_covers_publickey: false,
        }
    }
}

/// Which publickey call this is (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStage {
    /// The client asks whether the key would do; a rejection is not a failure.
    Offered,
    /// The client proved possession of the key; a rejection is a failure.
    Signed,
}

/// The result of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The credentials are good and the user is enabled and not expired.
    Accepted,
    /// Wrong credentials, or an unknown, disabled or expired user (indistinguishable to the
    /// client).
    Rejected,
    /// Refused without checking the credentials: the address or the user is banned.
    Refused(BanKind),
    /// The store could not be read; not counted as a failure.
    Unavailable,
}

/// Checks logins against a [`Store`]. Cheap to clone.
#[derive(Clone)]
pub struct StoreAuthenticator {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    guard: LoginGuard,
    config: AuthConfig,
    /// Verified for unknown, disabled and expired users and users without a password, so
    /// that a failed lookup costs the same time as a wrong password.
    dummy_hash: String,
    hashing: Semaphore,
    verifications: AtomicU64,
}

impl std::fmt::Debug for StoreAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreAuthenticator")
            .field("store", &self.inner.store)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl StoreAuthenticator {
    /// An authenticator on `store`. Computes the dummy hash with the store's password
    /// parameters (so unknown users cost what known ones do), on a blocking thread.
    pub async fn new(store: Store, config: AuthConfig) -> Result<StoreAuthenticator, StoreError> {
        let params = store.config().password;
        let dummy_hash =
            tokio::task::spawn_blocking(move || hash_password(&random_password(), &params))
                .await
                .map_err(|e| StoreError::Hashing {
                    reason: format!("hashing task failed: {e}"),
                })??;
        Ok(StoreAuthenticator {
            inner: Arc::new(Inner {
                guard: LoginGuard::new(config.ban),
                hashing: Semaphore::new(config.max_concurrent_hashes.max(1)),
                store,
                config,
                dummy_hash,
                verifications: AtomicU64::new(0),
            }),
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The failure counts and bans.
    pub fn guard(&self) -> &LoginGuard {
        &self.inner.guard
    }

    /// How many argon2 verifications have run (the unknown-user path runs one too).
    pub fn password_verifications(&self) -> u64 {
        self.inner.verifications.load(Ordering::Relaxed)
    }

    /// Checks a password (or a keyboard-interactive answer) of `user` from `peer`.
    pub async fn check_password(&self, user: &str, password: &str, peer: IpAddr) -> Outcome {
        self.check_password_at(user, password, peer, Instant::now())
            .await
    }

    /// [`StoreAuthenticator::check_password`] with the brute-force clock passed in (bans
    /// are decided and counted at `now`; account expiry uses the system clock).
    pub async fn check_password_at(
        &self,
        user: &str,
        password: &str,
        peer: IpAddr,
        now: Instant,
    ) -> Outcome {
        let inner = &self.inner;
        if let Some(kind) = self.refusal(user, peer, true, now) {
            return kind;
        }
        let login = match inner.store.login(user).await {
            Ok(login) => login,
            Err(error) => {
                metrics::counter!("sftpgate_auth_store_errors_total").increment(1);
                tracing::error!(%error, user, "reading the user store failed");
                return Outcome::Unavailable;
            }
        };
        let (hash, why_not) = match &login {
            None => (None, Some("unknown user")),
            Some(l) if !l.enabled => (None, Some("user disabled")),
            Some(l) if !l.is_active_at(SystemTime::now()) => (None, Some("account expired")),
            Some(l) => match &l.password_hash {
                None => (None, Some("user has no password")),
                Some(hash) => (Some(hash.as_str()), None),
            },
        };
        // Always verify something: only the empty password is refused outright (no stored
        // password is empty, so that reveals nothing about the user).
        let matched = !password.is_empty()
            && self
                .verify(hash.unwrap_or(&inner.dummy_hash), password)
                .await
            && hash.is_some();
        if matched {
            inner.guard.record_success(user);
            return Outcome::Accepted;
        }
        tracing::info!(
            user,
            %peer,
            reason = why_not.unwrap_or("wrong password"),
            "password rejected"
        );
        inner.guard.record_failure(peer, user, now);
        Outcome::Rejected
    }

    /// Checks that `key` belongs to `user`, who must be enabled and not expired.
    pub async fn check_publickey(
        &self,
        user: &str,
        key: &PublicKey,
        peer: IpAddr,
        stage: KeyStage,
    ) -> Outcome {
        self.check_publickey_at(user, key, peer, stage, Instant::now())
            .await
    }

    /// [`StoreAuthenticator::check_publickey`] with the brute-force clock passed in.
    pub async fn check_publickey_at(
        &self,
        user: &str,
        key: &PublicKey,
        peer: IpAddr,
        stage: KeyStage,
        now: Instant,
    ) -> Outcome {
        let inner = &self.inner;
        let covers = inner.config.user_ban_covers_publickey;
        if let Some(kind) = self.refusal(user, peer, covers, now) {
            return kind;
        }
        let login = match inner.store.key_login(user, key).await {
            Ok(login) => login,
            Err(error) => {
                metrics::counter!("sftpgate_auth_store_errors_total").increment(1);
                tracing::error!(%error, user, "reading the user store failed");
                return Outcome::Unavailable;
            }
        };
        let why_not = match &login {
            None => "key not authorised for this user",
            Some(l) if !l.enabled => "user disabled",
            Some(l) if !l.is_active_at(SystemTime::now()) => "account expired",
            Some(_) => return Outcome::Accepted,
        };
        match stage {
            KeyStage::Offered => {
                tracing::debug!(user, %peer, reason = why_not, "key offer rejected");
            }
            KeyStage::Signed => {
                tracing::info!(user, %peer, reason = why_not, "signed key rejected");
                inner.guard.record_failure(peer, user, now);
            }
        }
        Outcome::Rejected
    }

    /// `Some(Refused(..))` if `peer` (or, if `include_user`, `user`) is banned now.
    fn refusal(
        &self,
        user: &str,
        peer: IpAddr,
        include_user: bool,
        now: Instant,
    ) -> Option<Outcome> {
        let guard = &self.inner.guard;
        let kind = if guard.address_banned_until(peer, now).is_some() {
            BanKind::Address
        } else if include_user && guard.user_banned_until(user, now).is_some() {
            BanKind::User
        } else {
            return None;
        };
        metrics::counter!("sftpgate_auth_refused_total", "kind" => kind.name()).increment(1);
        tracing::debug!(user, %peer, kind = kind.name(), "login refused: banned");
        Some(Outcome::Refused(kind))
    }

    /// Runs one argon2 verification on the blocking pool, at most
    /// [`AuthConfig::max_concurrent_hashes`] at a time.
    async fn verify(&self, hash: &str, password: &str) -> bool {
        let Ok(_permit) = self.inner.hashing.acquire().await else {
            return false; // never closed
        };
        self.inner.verifications.fetch_add(1, Ordering::Relaxed);
        let (hash, password) = (hash.to_owned(), password.to_owned());
        tokio::task::spawn_blocking(move || verify_password(&hash, &password))
            .await
            .unwrap_or(false)
    }
}

impl Authenticator for StoreAuthenticator {
    async fn password(&self, user: &str, password: &str, peer: SocketAddr) -> bool {
        self.check_password(user, password, peer.ip()).await == Outcome::Accepted
    }

    /// Treated as [`KeyStage::Offered`]: the trait does not tell an offer from a verified
    /// signature (see the module docs).
    async fn publickey(&self, user: &str, key: &PublicKey, peer: SocketAddr) -> bool {
        self.check_publickey(user, key, peer.ip(), KeyStage::Offered)
            .await
            == Outcome::Accepted
    }
}
