//! What goes into the store ([`NewUser`], [`Password`]) and what comes out of it
//! ([`UserRecord`], [`UserDetails`], [`KeyRecord`], [`UserProfile`]).

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use crate::error::StoreError;
use crate::permissions::{PermissionRule, PermissionTable, Permissions};

/// Where a user's files live. Stored as a kind (`storage_kind`) and backend settings
/// (`storage_settings`, JSON text) so that backends other than the local one need no schema
/// change.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Storage {
    /// A directory on the server: the user's `root_dir`.
    #[default]
    Local,
    /// Keys of a bucket on the server's object store (its `[s3]` section); the user's
    /// `root_dir` is the key prefix (docs/object-storage.md).
    ObjectStore {
        /// The bucket.
        bucket: String,
    },
    /// A kind this version does not know (written by a newer version, or by hand); the SFTP
    /// factory should refuse the session with a message naming the kind.
    Unknown {
        /// The stored kind.
        kind: String,
        /// The stored settings (JSON text).
        settings: String,
    },
}

impl Storage {
    /// The stored kind: `local`, …
    pub fn kind(&self) -> &str {
        match self {
            Storage::Local => "local",
            Storage::ObjectStore { .. } => "object_store",
            Storage::Unknown { kind, .. } => kind,
        }
    }

    /// The stored settings (JSON text).
    pub fn settings(&self) -> String {
        match self {
            Storage::Local => "{}".to_owned(),
            Storage::ObjectStore { bucket } => serde_json::json!({ "bucket": bucket }).to_string(),
            Storage::Unknown { settings, .. } => settings.clone(),
        }
    }

    /// Reads the columns back; settings that do not parse leave the kind unknown (the
    /// factory then refuses the session naming it).
    pub(crate) fn from_columns(kind: String, settings: String) -> Storage {
        match kind.as_str() {
            "local" => Storage::Local,
            "object_store" => {
                let bucket = serde_json::from_str::<serde_json::Value>(&settings)
                    .ok()
                    .and_then(|v| v.get("bucket")?.as_str().map(str::to_owned))
                    .filter(|b| !b.is_empty());
                match bucket {
                    Some(bucket) => Storage::ObjectStore { bucket },
                    None => Storage::Unknown { kind, settings },
                }
            }
            _ => Storage::Unknown { kind, settings },
        }
    }
}

/// A password to set: a plain one (hashed with argon2id by the store, on a blocking thread)
/// or an existing argon2id PHC string (to import users from elsewhere).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Password {
    /// A plain password; must not be empty.
    Plain(String),
    /// An argon2id PHC string (`$argon2id$v=19$…`).
    Hash(String),
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Password::Plain(_) => f.write_str("Password::Plain(<redacted>)"),
            Password::Hash(_) => f.write_str("Password::Hash(<redacted>)"),
        }
    }
}

/// A user to add with [`Store::add_user`](crate::Store::add_user): the user, their keys and
/// their rules are written in one transaction, or nothing is.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NewUser {
    /// Login name: 1 to 64 characters from `A-Z a-z 0-9 . _ - @`, not starting with `-`.
    pub name: String,
    /// Root directory of the user's files. For [`Storage::Local`] an absolute host path
    /// (the CLI resolves relative ones before storing).
    pub root_dir: String,
    /// The password, if the user may log in with one.
    pub password: Option<Password>,
    /// OpenSSH public key lines (`authorized_keys` format, without options).
    pub keys: Vec<String>,
    /// Permission rules: (prefix, flags). None means full access (see [`PermissionTable`]).
    pub permissions: Vec<(String, Permissions)>,
    /// Whether the user may log in (default true).
    pub enabled: bool,
    /// When the account expires (none by default).
    pub expires_at: Option<SystemTime>,
    /// Where the files live (default [`Storage::Local`]).
    pub storage: Storage,
}

impl NewUser {
    /// An enabled user without password, keys, rules or expiry, on local storage.
    pub fn new(name: impl Into<String>, root_dir: impl Into<String>) -> NewUser {
        NewUser {
            name: name.into(),
            root_dir: root_dir.into(),
            password: None,
            keys: Vec::new(),
            permissions: Vec::new(),
            enabled: true,
            expires_at: None,
            storage: Storage::Local,
        }
    }
}

/// A user as stored (without secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserRecord {
    /// Login name.
    pub name: String,
    /// Whether the user may log in.
    pub enabled: bool,
    /// When the account expires; it is expired from that second on.
    pub expires_at: Option<SystemTime>,
    /// Whether a password is set.
    pub has_password: bool,
    /// Root directory of the user's files.
    pub root_dir: String,
    /// Where the files live.
    pub storage: Storage,
    /// How many public keys the user has.
    pub key_count: u64,
    /// How many permission rules the user has (0: full access).
    pub rule_count: u64,
    /// When the user was added (second resolution).
    pub created_at: SystemTime,
    /// When the user, their keys or their rules last changed (second resolution).
    pub updated_at: SystemTime,
}

impl UserRecord {
    /// Whether the account is expired at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// A user with their keys and rules (`user show`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserDetails {
    /// The user.
    pub user: UserRecord,
    /// Their keys, oldest first.
    pub keys: Vec<KeyRecord>,
    /// Their rules, longest prefix first.
    pub permissions: Vec<PermissionRule>,
}

/// One stored public key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyRecord {
    /// Position among the user's keys, from 1, oldest first (what `key remove #N` names).
    /// Removing a key renumbers the ones after it.
    pub index: usize,
    /// `SHA256:…` fingerprint.
    pub fingerprint: String,
    /// SSH algorithm name.
    pub algorithm: String,
    /// The comment, empty if none.
    pub comment: String,
    /// The canonical `authorized_keys` line.
    pub line: String,
    /// When it was added.
    pub created_at: SystemTime,
}

/// Which key of a user: by fingerprint or by position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySelector {
    /// `SHA256:…`, as `key list` and `ssh-keygen -l` print it.
    Fingerprint(String),
    /// Position from 1, as [`KeyRecord::index`].
    Index(usize),
}

impl FromStr for KeySelector {
    type Err = StoreError;

    /// `SHA256:…` is a fingerprint; `3` or `#3` an index.
    fn from_str(text: &str) -> Result<KeySelector, StoreError> {
        let text = text.trim();
        if text.starts_with("SHA256:") {
            return Ok(KeySelector::Fingerprint(text.to_owned()));
        }
        text.strip_prefix('#')
            .unwrap_or(text)
            .parse::<usize>()
            .ok()
            .filter(|i| *i >= 1)
            .map(KeySelector::Index)
            .ok_or_else(|| StoreError::InvalidKey {
                reason: format!(
                    "{text:?} names no key: give a SHA256:… fingerprint or a position from 1"
                ),
            })
    }
}

impl fmt::Display for KeySelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySelector::Fingerprint(fp) => f.write_str(fp),
            KeySelector::Index(i) => write!(f, "#{i}"),
        }
    }
}

/// What the SFTP factory needs to build a session, read once at its start
/// ([`Store::session_profile`](crate::Store::session_profile)). A running session keeps
/// this snapshot: later changes to the store (rules, root, even disabling the user) apply
/// to new sessions only.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct UserProfile {
    /// Login name.
    pub name: String,
    /// Root directory of the user's files.
    pub root_dir: String,
    /// Where the files live.
    pub storage: Storage,
    /// The user's rules (empty: full access).
    pub permissions: PermissionTable,
}

/// Unix seconds of `time` (0 for times before 1970; saturating far in the future).
pub(crate) fn to_unix(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The time `secs` Unix seconds after the epoch.
pub(crate) fn from_unix(secs: i64) -> Result<SystemTime, StoreError> {
    u64::try_from(secs)
        .ok()
        .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(s)))
        .ok_or_else(|| StoreError::Corrupt {
            what: format!("timestamp {secs} out of range"),
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn key_selectors() {
        assert_eq!(
            "SHA256:abc".parse::<KeySelector>().unwrap(),
            KeySelector::Fingerprint("SHA256:abc".into())
        );
        assert_eq!("2".parse::<KeySelector>().unwrap(), KeySelector::Index(2));
        assert_eq!("#2".parse::<KeySelector>().unwrap(), KeySelector::Index(2));
        assert!("0".parse::<KeySelector>().is_err());
        assert!("md5:xx".parse::<KeySelector>().is_err());
        assert_eq!(KeySelector::Index(3).to_string(), "#3");
    }

    #[test]
    fn unix_times_round_trip() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(from_unix(to_unix(t)).unwrap(), t);
        assert!(from_unix(-1).is_err());
    }

    #[test]
    fn passwords_never_show_in_debug() {
        let shown = format!("{:?}", Password::Plain("hunter2".into()));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn storage_columns() {
        assert_eq!(
            Storage::from_columns("local".into(), "{}".into()),
            Storage::Local
        );
        let s3 = Storage::from_columns("s3".into(), "{\"bucket\":\"b\"}".into());
        assert_eq!(
            (s3.kind(), s3.settings().as_str()),
            ("s3", "{\"bucket\":\"b\"}")
        );
        let object = Storage::from_columns("object_store".into(), "{\"bucket\":\"b\"}".into());
        assert_eq!(object, Storage::ObjectStore { bucket: "b".into() });
        assert_eq!(
            Storage::from_columns(object.kind().into(), object.settings()),
            object
        );
        // Settings without a bucket stay unknown, for the factory to refuse.
        let broken = Storage::from_columns("object_store".into(), "{}".into());
        assert!(matches!(broken, Storage::Unknown { .. }), "{broken:?}");
    }
}
