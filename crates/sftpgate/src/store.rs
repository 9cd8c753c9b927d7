//! Opens the user store that `sftpgate serve` and the `user`/`key`/`perm` commands share:
//! `database_url` when set, otherwise the SQLite file `sftpgate.db` in the data directory
//! (created private: it holds password hashes).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sftpgate_auth::{Store, StoreConfig, DEFAULT_DATABASE_FILE};

use crate::config::Config;

/// Opens (creating and migrating it if needed) the store `config` names.
pub async fn open(config: &Config) -> anyhow::Result<Store> {
    let store = if config.database_url.is_empty() {
        let file = prepare_sqlite_file(&config.data_dir)?;
        Store::open_data_dir(&config.data_dir, StoreConfig::default())
            .await
            .with_context(|| format!("opening the user store {}", file.display()))?
    } else {
        Store::connect(&config.database_url, StoreConfig::default())
            .await
            .with_context(|| {
                format!("opening the user store at {}", redact(&config.database_url))
            })?
    };
    Ok(store)
}

/// Where the store is, for people: the SQLite file, or the URL without its password.
pub fn describe(config: &Config) -> String {
    if config.database_url.is_empty() {
        config
            .data_dir
            .join(DEFAULT_DATABASE_FILE)
            .display()
            .to_string()
    } else {
        redact(&config.database_url)
    }
}

/// Creates the data directory (0700) and an empty database file (0600) if they do not exist:
/// SQLite keeps an existing file's mode and gives its `-wal` and `-shm` files the same one,
/// whereas a file it creates itself would be world-readable under the usual umask.
fn prepare_sqlite_file(data_dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let file = data_dir.join(DEFAULT_DATABASE_FILE);
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&file)
        .with_context(|| format!("creating the user store {}", file.display()))?;
    Ok(file)
}

/// `url` with the password of its user-info part replaced by `***`, and without its query
/// (which may carry one too).
pub fn redact(url: &str) -> String {
    let url = url.split_once('?').map_or(url, |(base, _)| base);
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, expected: &str) {
        assert_eq!(redact(url), expected, "{url}");
    }

    #[test]
    fn passwords_are_redacted() {
        check(
            "postgres://u:secret@db:5432/x",
            "postgres://u:***@db:5432/x",
        );
        check("postgres://u@db/x?password=secret", "postgres://u@db/x");
        check("postgres://db/x", "postgres://db/x");
        check("sqlite:///var/lib/s.db?mode=rwc", "sqlite:///var/lib/s.db");
        check("postgres://u:p%40ss@db", "postgres://u:***@db");
    }

    #[tokio::test]
    async fn sqlite_file_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        let store = open(&config).await.unwrap();
        assert_eq!(store.user_count().await.unwrap(), 0);
        store.close().await;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&config.data_dir), 0o700);
        assert_eq!(mode(&config.data_dir.join(DEFAULT_DATABASE_FILE)), 0o600);
        assert_eq!(
            describe(&config),
            config.data_dir.join("sftpgate.db").display().to_string()
        );
    }
}
