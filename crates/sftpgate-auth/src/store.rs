//! [`Store`]: users, public keys and permission rules in SQL, over SQLite (one file, the
//! default) or PostgreSQL (shared by several server nodes), with the same API and the same
//! queries on both.
//!
//! Every change is one transaction: inputs are parsed and checked first (names, key lines,
//! prefixes, passwords hashed), then the transaction checks what depends on the database
//! (unknown user, duplicate name or key) and writes; any error rolls everything back.
//! Queries are built at run time (no compile-time checked macros), so building needs no
//! database.

use std::path::Path;
use std::str::FromStr as _;
use std::time::{Duration, SystemTime};

use sftpgate_server::keys::PublicKey;
use sftpgate_vfs::VPath;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Row as _;

use crate::error::StoreError;
use crate::keys::AuthorizedKey;
use crate::model::{
    from_unix, to_unix, KeyRecord, KeySelector, NewUser, Password, Storage, UserDetails,
    UserProfile, UserRecord,
};
use crate::password::{hash_password_blocking, is_argon2id_hash, PasswordParams};
use crate::permissions::{normalize_prefix, PermissionRule, PermissionTable, Permissions};

/// The SQLite file `sftpgate serve` uses in its data directory when no URL is given.
pub const DEFAULT_DATABASE_FILE: &str = "sftpgate.db";

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// How the store connects and hashes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct StoreConfig {
    /// Most connections the pool opens (default 10). Logins beyond it wait for one.
    pub max_connections: u32,
    /// How long an operation waits for a pooled connection before failing (default 10 s).
    pub acquire_timeout: Duration,
    /// How long SQLite waits for another writer's lock before failing (default 5 s).
    pub sqlite_busy_timeout: Duration,
    /// Cost of the password hashes the store writes.
    pub password: PasswordParams,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            sqlite_busy_timeout: Duration::from_secs(5),
            password: PasswordParams::default(),
        }
    }
}

/// Which database a [`Store`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file (WAL mode).
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// Users, keys and permission rules. Cheap to clone (the clones share one connection pool);
/// every read goes to the database, so a change made by anyone (another node, the CLI)
/// applies to the next login at once.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    config: StoreConfig,
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .finish_non_exhaustive()
    }
}

/// Runs `$body` once per backend with `$pool` bound to that backend's pool: the queries are
/// the same text, the types differ.
macro_rules! with_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.pool {
            Pool::Sqlite($pool) => $body,
            Pool::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` in a write transaction bound to `$tx` and commits it; a `?` inside returns
/// early and drops (rolls back) the transaction. SQLite starts with `BEGIN IMMEDIATE`, so a
/// transaction that reads before it writes waits for the write lock up front instead of
/// failing with "database is locked" when it upgrades.
macro_rules! in_transaction {
    ($store:expr, |$tx:ident, $backend:ident| $body:block) => {
        match &$store.pool {
            Pool::Sqlite(pool) => {
                #[allow(unused_variables)]
                let $backend = Backend::Sqlite;
                let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let result = $body;
                $tx.commit().await?;
                result
            }
            Pool::Postgres(pool) => {
                #[allow(unused_variables)]
                let $backend = Backend::Postgres;
                let mut $tx = pool.begin().await?;
                let result = $body;
                $tx.commit().await?;
                result
            }
        }
    };
}

/// Runs `$body` in a read-only transaction bound to `$tx`: one snapshot for all its
/// queries (PostgreSQL: REPEATABLE READ; SQLite: a deferred transaction, which in WAL mode
/// reads one snapshot from its first query on).
macro_rules! in_read_transaction {
    ($store:expr, |$tx:ident| $body:block) => {
        match &$store.pool {
            Pool::Sqlite(pool) => {
                let mut $tx = pool.begin().await?;
                let result = $body;
                $tx.commit().await?;
                result
            }
            Pool::Postgres(pool) => {
                let mut $tx = pool
                    .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?;
                let result = $body;
                $tx.commit().await?;
                result
            }
        }
    };
}

/// The id of user `$name` inside transaction `$tx`, or `UnknownUser`.
macro_rules! user_id {
    ($tx:ident, $name:expr) => {
        sqlx::query("SELECT id FROM users WHERE name = $1")
            .bind($name)
            .fetch_optional(&mut *$tx)
            .await?
            .map(|row| row.try_get::<i64, _>("id"))
            .transpose()?
            .ok_or_else(|| StoreError::UnknownUser {
                name: $name.to_owned(),
            })?
    };
}

/// Marks user `$id` as changed now.
macro_rules! touch {
    ($tx:ident, $id:expr) => {
        sqlx::query("UPDATE users SET updated_at = $1 WHERE id = $2")
            .bind(to_unix(SystemTime::now()))
            .bind($id)
            .execute(&mut *$tx)
            .await?
    };
}

/// Inserts a parsed key for user id `$id`; a key the user has is `DuplicateKey`.
macro_rules! insert_key {
    ($tx:ident, $user:expr, $id:expr, $key:expr, $now:expr) => {{
        let key: &AuthorizedKey = $key;
        let duplicate = || StoreError::DuplicateKey {
            user: $user.to_owned(),
            fingerprint: key.fingerprint().to_owned(),
        };
        let exists =
            sqlx::query("SELECT 1 AS one FROM public_keys WHERE user_id = $1 AND fingerprint = $2")
                .bind($id)
                .bind(key.fingerprint())
                .fetch_optional(&mut *$tx)
                .await?;
        if exists.is_some() {
            return Err(duplicate());
        }
        sqlx::query(
            "INSERT INTO public_keys (user_id, fingerprint, algorithm, key_line, created_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind($id)
        .bind(key.fingerprint())
        .bind(key.algorithm())
        .bind(key.line())
        .bind($now)
        .execute(&mut *$tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                duplicate()
            } else {
                e.into()
            }
        })?;
    }};
}

/// Inserts or replaces the rule for `$prefix` of user id `$id`.
macro_rules! upsert_rule {
    ($tx:ident, $id:expr, $prefix:expr, $permissions:expr) => {{
        let prefix: &VPath = $prefix;
        let permissions: Permissions = $permissions;
        sqlx::query(
            "INSERT INTO permissions (user_id, path_prefix, flags) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id, path_prefix) DO UPDATE SET flags = excluded.flags",
        )
        .bind($id)
        .bind(prefix.to_string())
        .bind(permissions.to_string())
        .execute(&mut *$tx)
        .await?;
    }};
}

/// A [`UserRecord`] from a row of [`USER_COLUMNS`].
macro_rules! user_from_row {
    ($row:expr) => {{
        let row = $row;
        (|| -> Result<UserRecord, StoreError> {
            Ok(UserRecord {
                name: row.try_get("name")?,
                enabled: row.try_get("enabled")?,
                expires_at: row
                    .try_get::<Option<i64>, _>("expires_at")?
                    .map(from_unix)
                    .transpose()?,
                has_password: row.try_get("has_password")?,
                root_dir: row.try_get("root_dir")?,
                storage: Storage::from_columns(
                    row.try_get("storage_kind")?,
                    row.try_get("storage_settings")?,
                ),
                key_count: u64::try_from(row.try_get::<i64, _>("key_count")?).unwrap_or(0),
                rule_count: u64::try_from(row.try_get::<i64, _>("rule_count")?).unwrap_or(0),
                created_at: from_unix(row.try_get("created_at")?)?,
                updated_at: from_unix(row.try_get("updated_at")?)?,
            })
        })()
    }};
}

/// The columns of a [`KEYS_OF_USER`] row.
macro_rules! key_columns {
    ($row:expr) => {{
        let row = $row;
        (|| -> Result<KeyColumns, StoreError> {
            Ok(KeyColumns {
                fingerprint: row.try_get("fingerprint")?,
                algorithm: row.try_get("algorithm")?,
                line: row.try_get("key_line")?,
                created_at: row.try_get("created_at")?,
            })
        })()
    }};
}

/// The columns of a [`RULES_OF_USER`] row.
macro_rules! rule_columns {
    ($row:expr) => {{
        let row = $row;
        (|| -> Result<(String, String), StoreError> {
            Ok((row.try_get("path_prefix")?, row.try_get("flags")?))
        })()
    }};
}

const USER_COLUMNS: &str = "u.name, u.enabled, u.expires_at, \
     u.password_hash IS NOT NULL AS has_password, u.root_dir, u.storage_kind, \
     u.storage_settings, u.created_at, u.updated_at, \
     (SELECT COUNT(*) FROM public_keys k WHERE k.user_id = u.id) AS key_count, \
     (SELECT COUNT(*) FROM permissions p WHERE p.user_id = u.id) AS rule_count";

impl Store {
    /// Connects to `url` and brings the schema up to date (migrations are versioned and
    /// idempotent; PostgreSQL serialises concurrent migrators with an advisory lock).
    ///
    /// - `sqlite://PATH?mode=rwc` (creates the file; `mode=rw` requires it to exist). WAL
    ///   journal, `synchronous=NORMAL`, foreign keys on, busy timeout from `config`.
    /// - `postgres://USER@HOST:PORT/DB` (or `postgresql://`), with libpq-style parameters
    ///   such as `?options=-c%20search_path%3Dmy_schema`. No TLS support is built in.
    pub async fn connect(url: &str, config: StoreConfig) -> Result<Store, StoreError> {
        let scheme = url.split_once(':').map_or(url, |(scheme, _)| scheme);
        match scheme {
            "sqlite" => {
                let options = SqliteConnectOptions::from_str(url)?;
                Store::open_sqlite(options, config).await
            }
            "postgres" | "postgresql" => {
                let options = PgConnectOptions::from_str(url)?;
                let pool = PgPoolOptions::new()
                    .max_connections(config.max_connections)
                    .acquire_timeout(config.acquire_timeout)
                    .connect_with(options)
                    .await?;
                POSTGRES_MIGRATIONS.run(&pool).await?;
                Ok(Store {
                    pool: Pool::Postgres(pool),
                    config,
                })
            }
            other => Err(StoreError::UnsupportedUrl {
                scheme: other.chars().take(32).collect(),
            }),
        }
    }

    /// Opens (creating it and the directory if needed) the default SQLite store in
    /// `data_dir`: `data_dir/sftpgate.db`.
    pub async fn open_data_dir(data_dir: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        tokio::fs::create_dir_all(data_dir)
            .await
            .map_err(sqlx::Error::Io)?;
        let options = SqliteConnectOptions::new()
            .filename(data_dir.join(DEFAULT_DATABASE_FILE))
            .create_if_missing(true);
        Store::open_sqlite(options, config).await
    }

    async fn open_sqlite(
        options: SqliteConnectOptions,
        config: StoreConfig,
    ) -> Result<Store, StoreError> {
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(config.sqlite_busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options)
            .await?;
        SQLITE_MIGRATIONS.run(&pool).await?;
        Ok(Store {
            pool: Pool::Sqlite(pool),
            config,
        })
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Closes every pooled connection (waits for the ones in use to come back).
    pub async fn close(&self) {
        with_pool!(self, |pool| pool.close().await)
    }

    // ---- users ----------------------------------------------------------------------

    /// Adds a user with their password, keys and rules, all in one transaction.
    /// Errors: [`StoreError::InvalidUserName`], [`StoreError::InvalidRoot`],
    /// [`StoreError::EmptyPassword`], key errors, [`StoreError::InvalidPrefix`],
    /// [`StoreError::DuplicateUser`]; nothing is written then.
    pub async fn add_user(&self, user: &NewUser) -> Result<UserRecord, StoreError> {
        let prepared = self.prepare(user).await?;
        self.insert(&prepared, AddMode::Always).await?;
        self.user_record(&prepared.name).await
    }

    /// Adds `user` only if the store has no user at all (the first start of `sftpgate
    /// serve`): `Ok(None)` if there was one. Atomic across server nodes (PostgreSQL locks
    /// the users table for the check).
    pub async fn add_first_user(&self, user: &NewUser) -> Result<Option<UserRecord>, StoreError> {
        let prepared = self.prepare(user).await?;
        if self.insert(&prepared, AddMode::OnlyIfEmpty).await? {
            Ok(Some(self.user_record(&prepared.name).await?))
        } else {
            Ok(None)
        }
    }

    /// How many users there are.
    pub async fn user_count(&self) -> Result<u64, StoreError> {
        let count: i64 = with_pool!(self, |pool| {
            sqlx::query("SELECT COUNT(*) AS n FROM users")
                .fetch_one(pool)
                .await?
                .try_get("n")?
        });
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<UserRecord>, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users u");
        let mut users = with_pool!(self, |pool| {
            sqlx::query(&sql)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| user_from_row!(row))
                .collect::<Result<Vec<_>, StoreError>>()?
        });
        // Sorted here: SQLite and PostgreSQL collate text differently.
        users.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(users)
    }

    /// One user, without keys and rules.
    pub async fn user_record(&self, name: &str) -> Result<UserRecord, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users u WHERE u.name = $1");
        with_pool!(self, |pool| {
            match sqlx::query(&sql).bind(name).fetch_optional(pool).await? {
                Some(row) => user_from_row!(&row),
                None => Err(StoreError::UnknownUser {
                    name: name.to_owned(),
                }),
            }
        })
    }

    /// One user with their keys and rules, read in one transaction (a consistent view).
    pub async fn user(&self, name: &str) -> Result<UserDetails, StoreError> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users u WHERE u.name = $1");
        in_read_transaction!(self, |tx| {
            let user = match sqlx::query(&sql)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?
            {
                Some(row) => user_from_row!(&row)?,
                None => {
                    return Err(StoreError::UnknownUser {
                        name: name.to_owned(),
                    })
                }
            };
            let keys = keys_from_rows(
                &sqlx::query(KEYS_OF_USER)
                    .bind(name)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|row| key_columns!(row))
                    .collect::<Result<Vec<_>, StoreError>>()?,
            )?;
            let rules = rules_from_rows(
                sqlx::query(RULES_OF_USER)
                    .bind(name)
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|row| rule_columns!(row))
                    .collect::<Result<Vec<_>, StoreError>>()?,
            )?;
            Ok(UserDetails {
                user,
                keys,
                permissions: rules.rules().to_vec(),
            })
        })
    }

    /// Removes a user with their keys and rules.
    pub async fn remove_user(&self, name: &str) -> Result<(), StoreError> {
        let removed = with_pool!(self, |pool| {
            sqlx::query("DELETE FROM users WHERE name = $1")
                .bind(name)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if removed == 0 {
            return Err(StoreError::UnknownUser {
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    /// Sets (or replaces) the user's password. A plain password is hashed with argon2id on
    /// a blocking thread first; an empty one is [`StoreError::EmptyPassword`].
    pub async fn set_password(&self, name: &str, password: &Password) -> Result<(), StoreError> {
        let hash = self.hash(password).await?;
        self.update_user(name, "password_hash", Some(hash)).await
    }

    /// Removes the user's password: from then on only their keys log them in.
    pub async fn clear_password(&self, name: &str) -> Result<(), StoreError> {
        self.update_user(name, "password_hash", None::<String>)
            .await
    }

    /// Lets the user log in again.
    pub async fn enable_user(&self, name: &str) -> Result<(), StoreError> {
        self.update_user(name, "enabled", true).await
    }

    /// Refuses the user's logins from now on (running sessions go on).
    pub async fn disable_user(&self, name: &str) -> Result<(), StoreError> {
        self.update_user(name, "enabled", false).await
    }

    /// Sets when the account expires (`None`: never). Second resolution.
    pub async fn set_expiry(
        &self,
        name: &str,
        expires_at: Option<SystemTime>,
    ) -> Result<(), StoreError> {
        self.update_user(name, "expires_at", expires_at.map(to_unix))
            .await
    }

    /// Sets the user's root directory (applies to new sessions).
    pub async fn set_root(&self, name: &str, root_dir: &str) -> Result<(), StoreError> {
        check_root(root_dir, &Storage::Local)?;
        self.update_user(name, "root_dir", root_dir.to_owned())
            .await
    }

    /// Sets where the user's files live and their root in it (a host directory for
    /// [`Storage::Local`], a key prefix for [`Storage::ObjectStore`]), in one update;
    /// applies to new sessions, files are not moved.
    pub async fn set_storage(
        &self,
        name: &str,
        storage: &Storage,
        root_dir: &str,
    ) -> Result<(), StoreError> {
        check_root(root_dir, storage)?;
        let now = to_unix(SystemTime::now());
        let (kind, settings) = (storage.kind().to_owned(), storage.settings());
        let updated = with_pool!(self, |pool| {
            sqlx::query(
                "UPDATE users SET storage_kind = $1, storage_settings = $2, root_dir = $3, \
                 updated_at = $4 WHERE name = $5",
            )
            .bind(kind.clone())
            .bind(settings.clone())
            .bind(root_dir)
            .bind(now)
            .bind(name)
            .execute(pool)
            .await?
            .rows_affected()
        });
        if updated == 0 {
            return Err(StoreError::UnknownUser {
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    // ---- keys -----------------------------------------------------------------------

    /// Adds one key line to the user.
    pub async fn add_key(&self, name: &str, line: &str) -> Result<KeyRecord, StoreError> {
        let mut added = self.add_keys(name, &[line]).await?;
        // Empty only if another writer removed the key again right after it was added.
        added.pop().ok_or_else(|| StoreError::UnknownKey {
            user: name.to_owned(),
            selector: "just added".to_owned(),
        })
    }

    /// Adds several key lines (an `authorized_keys` file without comments or blank lines)
    /// in one transaction: all are added, or none if any is malformed, weak, repeated or
    /// already the user's.
    pub async fn add_keys(&self, name: &str, lines: &[&str]) -> Result<Vec<KeyRecord>, StoreError> {
        let keys = parse_keys(name, lines.iter().copied())?;
        let now = to_unix(SystemTime::now());
        let fingerprints: Vec<String> = keys.iter().map(|k| k.fingerprint().to_owned()).collect();
        in_transaction!(self, |tx, backend| {
            let id = user_id!(tx, name);
            for key in &keys {
                insert_key!(tx, name, id, key, now);
            }
            touch!(tx, id);
        });
        let all = self.keys(name).await?;
        Ok(all
            .into_iter()
            .filter(|k| fingerprints.contains(&k.fingerprint))
            .collect())
    }

    /// The user's keys, oldest first.
    pub async fn keys(&self, name: &str) -> Result<Vec<KeyRecord>, StoreError> {
        in_read_transaction!(self, |tx| {
            let _ = user_id!(tx, name);
            let rows = sqlx::query(KEYS_OF_USER)
                .bind(name)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| key_columns!(row))
                .collect::<Result<Vec<_>, StoreError>>()?;
            keys_from_rows(&rows)
        })
    }

    /// Removes one of the user's keys; returns it.
    pub async fn remove_key(
        &self,
        name: &str,
        selector: &KeySelector,
    ) -> Result<KeyRecord, StoreError> {
        in_transaction!(self, |tx, backend| {
            let id = user_id!(tx, name);
            let rows = sqlx::query(KEYS_OF_USER)
                .bind(name)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| key_columns!(row))
                .collect::<Result<Vec<_>, StoreError>>()?;
            let keys = keys_from_rows(&rows)?;
            let found = match selector {
                KeySelector::Fingerprint(fp) => keys.into_iter().find(|k| k.fingerprint == *fp),
                KeySelector::Index(i) => keys.into_iter().nth(i.wrapping_sub(1)),
            };
            let Some(key) = found else {
                return Err(StoreError::UnknownKey {
                    user: name.to_owned(),
                    selector: selector.to_string(),
                });
            };
            sqlx::query("DELETE FROM public_keys WHERE user_id = $1 AND fingerprint = $2")
                .bind(id)
                .bind(&key.fingerprint)
                .execute(&mut *tx)
                .await?;
            touch!(tx, id);
            Ok(key)
        })
    }

    // ---- permissions ----------------------------------------------------------------

    /// Sets the user's rule for `prefix` (normalised; must start with `/`), replacing any
    /// rule for the same prefix. A user's first rule ends their unrestricted access (see
    /// [`PermissionTable`]).
    pub async fn set_permission(
        &self,
        name: &str,
        prefix: &str,
        permissions: Permissions,
    ) -> Result<PermissionRule, StoreError> {
        let prefix = normalize_prefix(prefix)?;
        in_transaction!(self, |tx, backend| {
            let id = user_id!(tx, name);
            upsert_rule!(tx, id, &prefix, permissions);
            touch!(tx, id);
        });
        Ok(PermissionRule {
            prefix,
            permissions,
        })
    }

    /// The user's rules, longest prefix first.
    pub async fn permissions(&self, name: &str) -> Result<Vec<PermissionRule>, StoreError> {
        Ok(self.permission_table(name).await?.rules().to_vec())
    }

    /// Removes the user's rule for `prefix`.
    pub async fn remove_permission(&self, name: &str, prefix: &str) -> Result<(), StoreError> {
        let prefix = normalize_prefix(prefix)?;
        let prefix_text = prefix.to_string();
        in_transaction!(self, |tx, backend| {
            let id = user_id!(tx, name);
            let removed =
                sqlx::query("DELETE FROM permissions WHERE user_id = $1 AND path_prefix = $2")
                    .bind(id)
                    .bind(&prefix_text)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            if removed == 0 {
                return Err(StoreError::UnknownRule {
                    user: name.to_owned(),
                    prefix: prefix_text,
                });
            }
            touch!(tx, id);
        });
        Ok(())
    }

    async fn permission_table(&self, name: &str) -> Result<PermissionTable, StoreError> {
        in_read_transaction!(self, |tx| {
            let _ = user_id!(tx, name);
            let rows = sqlx::query(RULES_OF_USER)
                .bind(name)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| rule_columns!(row))
                .collect::<Result<Vec<_>, StoreError>>()?;
            rules_from_rows(rows)
        })
    }

    // ---- sessions -------------------------------------------------------------------

    /// What the SFTP factory needs for a new session of `name`, read now. Refuses users
    /// that were disabled or expired since they authenticated
    /// ([`StoreError::UserDisabled`], [`StoreError::UserExpired`]).
    ///
    /// The result is a snapshot: the session it builds keeps these rules and this root
    /// until it ends, whatever changes in the store meanwhile.
    pub async fn session_profile(&self, name: &str) -> Result<UserProfile, StoreError> {
        self.session_profile_at(name, SystemTime::now()).await
    }

    /// [`Store::session_profile`] with the clock passed in.
    pub async fn session_profile_at(
        &self,
        name: &str,
        now: SystemTime,
    ) -> Result<UserProfile, StoreError> {
        let details = self.user(name).await?;
        let user = details.user;
        if !user.enabled {
            return Err(StoreError::UserDisabled { name: user.name });
        }
        if user.is_expired_at(now) {
            return Err(StoreError::UserExpired { name: user.name });
        }
        Ok(UserProfile {
            name: user.name,
            root_dir: user.root_dir,
            storage: user.storage,
            permissions: PermissionTable::new(details.permissions),
        })
    }

    /// What a password login of `name` checks, if the user exists.
    pub(crate) async fn login(&self, name: &str) -> Result<Option<Login>, StoreError> {
        with_pool!(self, |pool| {
            sqlx::query("SELECT enabled, expires_at, password_hash FROM users WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
                .map(|row| {
                    Ok::<_, StoreError>(Login {
                        enabled: row.try_get("enabled")?,
                        expires_at: row.try_get("expires_at")?,
                        password_hash: row.try_get("password_hash")?,
                    })
                })
                .transpose()
        })
    }

    /// Whether `key` is one of `name`'s keys, with the user's login state; `None` if not.
    pub(crate) async fn key_login(
        &self,
        name: &str,
        key: &PublicKey,
    ) -> Result<Option<Login>, StoreError> {
        let fingerprint = crate::keys::fingerprint(key);
        let row = with_pool!(self, |pool| {
            sqlx::query(
                "SELECT u.enabled, u.expires_at, k.key_line FROM users u \
                 JOIN public_keys k ON k.user_id = u.id \
                 WHERE u.name = $1 AND k.fingerprint = $2",
            )
            .bind(name)
            .bind(&fingerprint)
            .fetch_optional(pool)
            .await?
            .map(|row| {
                Ok::<_, StoreError>((
                    row.try_get::<bool, _>("enabled")?,
                    row.try_get::<Option<i64>, _>("expires_at")?,
                    row.try_get::<String, _>("key_line")?,
                ))
            })
            .transpose()?
        });
        let Some((enabled, expires_at, line)) = row else {
            return Ok(None);
        };
        // The fingerprint found it; the stored key itself must match too.
        let stored = AuthorizedKey::parse(&line).map_err(|e| StoreError::Corrupt {
            what: format!("stored key {fingerprint} of {name:?}: {e}"),
        })?;
        if stored.key().key_data() != key.key_data() {
            return Ok(None);
        }
        Ok(Some(Login {
            enabled,
            expires_at,
            password_hash: None,
        }))
    }

    // ---- helpers --------------------------------------------------------------------

    async fn hash(&self, password: &Password) -> Result<String, StoreError> {
        match password {
            Password::Plain(plain) if plain.is_empty() => Err(StoreError::EmptyPassword),
            Password::Plain(plain) => hash_password_blocking(plain, &self.config.password).await,
            Password::Hash(hash) if is_argon2id_hash(hash) => Ok(hash.clone()),
            Password::Hash(_) => Err(StoreError::InvalidPasswordHash),
        }
    }

    /// Checks and converts everything about a new user that needs no database.
    async fn prepare(&self, user: &NewUser) -> Result<Prepared, StoreError> {
        check_name(&user.name)?;
        check_root(&user.root_dir, &user.storage)?;
        let keys = parse_keys(&user.name, user.keys.iter().map(String::as_str))?;
        let mut rules = Vec::new();
        for (prefix, permissions) in &user.permissions {
            rules.push(PermissionRule {
                prefix: normalize_prefix(prefix)?,
                permissions: *permissions,
            });
        }
        let rules = PermissionTable::new(rules).rules().to_vec();
        let password_hash = match &user.password {
            Some(password) => Some(self.hash(password).await?),
            None => None,
        };
        Ok(Prepared {
            name: user.name.clone(),
            root_dir: user.root_dir.clone(),
            password_hash,
            keys,
            rules,
            enabled: user.enabled,
            expires_at: user.expires_at.map(to_unix),
            storage: user.storage.clone(),
        })
    }

    /// Inserts a prepared user; false if `mode` is `OnlyIfEmpty` and there are users.
    async fn insert(&self, user: &Prepared, mode: AddMode) -> Result<bool, StoreError> {
        let now = to_unix(SystemTime::now());
        let duplicate = || StoreError::DuplicateUser {
            name: user.name.clone(),
        };
        in_transaction!(self, |tx, backend| {
            if mode == AddMode::OnlyIfEmpty {
                if backend == Backend::Postgres {
                    // Two nodes starting at once must not both create a first user.
                    sqlx::query("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
                        .execute(&mut *tx)
                        .await?;
                }
                let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM users")
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
                if count > 0 {
                    return Ok(false);
                }
            }
            let exists = sqlx::query("SELECT 1 AS one FROM users WHERE name = $1")
                .bind(&user.name)
                .fetch_optional(&mut *tx)
                .await?;
            if exists.is_some() {
                return Err(duplicate());
            }
            let id: i64 = sqlx::query(
                "INSERT INTO users (name, enabled, expires_at, password_hash, root_dir, \
                 storage_kind, storage_settings, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING id",
            )
            .bind(&user.name)
            .bind(user.enabled)
            .bind(user.expires_at)
            .bind(&user.password_hash)
            .bind(&user.root_dir)
            .bind(user.storage.kind())
            .bind(user.storage.settings())
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            // A concurrent writer added the same name after our check.
            .map_err(|e| {
                if is_unique_violation(&e) {
                    duplicate()
                } else {
                    e.into()
                }
            })?
            .try_get("id")?;
            for key in &user.keys {
                insert_key!(tx, &user.name, id, key, now);
            }
            for rule in &user.rules {
                upsert_rule!(tx, id, &rule.prefix, rule.permissions);
            }
        });
        Ok(true)
    }

    /// Sets one column of user `name` (and `updated_at`).
    async fn update_user<T>(
        &self,
        name: &str,
        column: &'static str,
        value: T,
    ) -> Result<(), StoreError>
    where
        T: for<'q> sqlx::Encode<'q, sqlx::Sqlite>
            + for<'q> sqlx::Encode<'q, sqlx::Postgres>
            + sqlx::Type<sqlx::Sqlite>
            + sqlx::Type<sqlx::Postgres>
            + Send
            + Clone
            + 'static,
    {
        let sql = format!("UPDATE users SET {column} = $1, updated_at = $2 WHERE name = $3");
        let now = to_unix(SystemTime::now());
        let updated = with_pool!(self, |pool| {
            sqlx::query(&sql)
                .bind(value.clone())
                .bind(now)
                .bind(name)
                .execute(pool)
                .await?
                .rows_affected()
        });
        if updated == 0 {
            return Err(StoreError::UnknownUser {
                name: name.to_owned(),
            });
        }
        Ok(())
    }
}

/// What a login checks about a user.
#[derive(Debug)]
pub(crate) struct Login {
    pub(crate) enabled: bool,
    /// Unix seconds.
    pub(crate) expires_at: Option<i64>,
    pub(crate) password_hash: Option<String>,
}

impl Login {
    /// Whether the user may log in at `now`.
    pub(crate) fn is_active_at(&self, now: SystemTime) -> bool {
        self.enabled && self.expires_at.is_none_or(|at| to_unix(now) < at)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddMode {
    Always,
    OnlyIfEmpty,
}

/// A new user, checked and converted.
struct Prepared {
    name: String,
    root_dir: String,
    password_hash: Option<String>,
    keys: Vec<AuthorizedKey>,
    rules: Vec<PermissionRule>,
    enabled: bool,
    expires_at: Option<i64>,
    storage: Storage,
}

const KEYS_OF_USER: &str = "SELECT k.fingerprint, k.algorithm, k.key_line, k.created_at \
     FROM public_keys k JOIN users u ON u.id = k.user_id WHERE u.name = $1 ORDER BY k.id";

const RULES_OF_USER: &str = "SELECT p.path_prefix, p.flags \
     FROM permissions p JOIN users u ON u.id = p.user_id WHERE u.name = $1";

struct KeyColumns {
    fingerprint: String,
    algorithm: String,
    line: String,
    created_at: i64,
}

fn keys_from_rows(rows: &[KeyColumns]) -> Result<Vec<KeyRecord>, StoreError> {
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            let comment = PublicKey::from_openssh(&row.line)
                .map(|k| k.comment().as_str_lossy().to_owned())
                .unwrap_or_default();
            Ok(KeyRecord {
                index: i + 1,
                fingerprint: row.fingerprint.clone(),
                algorithm: row.algorithm.clone(),
                comment,
                line: row.line.clone(),
                created_at: from_unix(row.created_at)?,
            })
        })
        .collect()
}

fn rules_from_rows(rows: Vec<(String, String)>) -> Result<PermissionTable, StoreError> {
    let mut rules = Vec::with_capacity(rows.len());
    for (prefix, flags) in rows {
        let path = VPath::parse(prefix.as_bytes())
            .ok()
            .filter(|p| p.as_bytes() == prefix.as_bytes())
            .ok_or_else(|| StoreError::Corrupt {
                what: format!("permission prefix {prefix:?} is not a normalised path"),
            })?;
        let permissions = flags.parse().map_err(|e| StoreError::Corrupt {
            what: format!("permission flags {flags:?} of {prefix}: {e}"),
        })?;
        rules.push(PermissionRule {
            prefix: path,
            permissions,
        });
    }
    Ok(PermissionTable::new(rules))
}

/// Parses the key lines of one change; a key given twice is `DuplicateKey`.
fn parse_keys<'a>(
    user: &str,
    lines: impl Iterator<Item = &'a str>,
) -> Result<Vec<AuthorizedKey>, StoreError> {
    let mut keys: Vec<AuthorizedKey> = Vec::new();
    for line in lines {
        let key = AuthorizedKey::parse(line)?;
        if keys.iter().any(|k| k.fingerprint() == key.fingerprint()) {
            return Err(StoreError::DuplicateKey {
                user: user.to_owned(),
                fingerprint: key.fingerprint().to_owned(),
            });
        }
        keys.push(key);
    }
    Ok(keys)
}

/// Login names: 1 to 64 characters from `A-Z a-z 0-9 . _ - @`, not starting with `-` (so a
/// name can never be read as a command-line option).
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let invalid = |reason| StoreError::InvalidUserName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("the name is empty"));
    }
    if name.len() > 64 {
        return Err(invalid("longer than 64 characters"));
    }
    if name.starts_with('-') {
        return Err(invalid("starts with -"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
    {
        return Err(invalid("only letters, digits and . _ - @ are allowed"));
    }
    Ok(())
}

fn check_root(root: &str, storage: &Storage) -> Result<(), StoreError> {
    let invalid = |reason| StoreError::InvalidRoot {
        root: root.to_owned(),
        reason,
    };
    if root.is_empty() {
        return Err(invalid("the root directory is empty"));
    }
    if root.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    if *storage == Storage::Local && !root.starts_with('/') {
        return Err(invalid("must be an absolute path"));
    }
    Ok(())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "alice",
            "a",
            "bob.smith",
            "svc_backup-1",
            "carol@example.com",
        ] {
            check_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            "-rf",
            "with space",
            "tab\t",
            "slash/",
            "ünï",
            &"x".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn roots() {
        check_root("/srv/sftp/alice", &Storage::Local).unwrap();
        assert!(check_root("", &Storage::Local).is_err());
        assert!(check_root("relative", &Storage::Local).is_err());
        assert!(check_root("/a\0b", &Storage::Local).is_err());
    }

    #[test]
    fn logins_respect_enabled_and_expiry() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let login = |enabled, expires_at| Login {
            enabled,
            expires_at,
            password_hash: None,
        };
        assert!(login(true, None).is_active_at(now));
        assert!(login(true, Some(1001)).is_active_at(now));
        assert!(!login(true, Some(1000)).is_active_at(now));
        assert!(!login(false, None).is_active_at(now));
    }
}
