//! The first start of `sftpgate serve`: with an empty store, create a user named after the
//! invoking user, with a generated password (shown once) and their `~/.ssh/*.pub` keys.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use sftpgate_auth::{password::random_password, AuthorizedKey, NewUser, Password, Store};

/// What the first start created, to be shown to the person starting the server.
#[derive(Debug)]
pub struct FirstUser {
    /// Login name.
    pub name: String,
    /// The generated password, shown once.
    pub password: String,
    /// The public key files whose keys were authorised.
    pub key_files: Vec<PathBuf>,
    /// Where the user's files live.
    pub root: PathBuf,
}

/// Creates the first user if the store has none; `None` if it has users (or another node
/// created the first one meanwhile).
pub async fn create_first_user(
    store: &Store,
    data_dir: &Path,
) -> anyhow::Result<Option<FirstUser>> {
    // Checked first so that an ordinary start does not hash a password for nothing;
    // `add_first_user` checks again, atomically.
    if store.user_count().await.context("counting users")? > 0 {
        return Ok(None);
    }
    let name = invoking_user_name()
        .filter(|n| sftpgate_auth::check_name(n).is_ok())
        .unwrap_or_else(|| "sftp".to_owned());
    let password = random_password();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let (keys, key_files) = match &home {
        Some(home) => ssh_public_keys(&home.join(".ssh")),
        None => (Vec::new(), Vec::new()),
    };
    let root = std::path::absolute(data_dir.join("files").join(&name))
        .context("making the data directory absolute")?;
    let root_text = root
        .to_str()
        .with_context(|| format!("the data directory {} is not UTF-8", data_dir.display()))?;
    let mut user = NewUser::new(name.clone(), root_text);
    user.password = Some(Password::Plain(password.clone()));
    user.keys = keys;
    let created = store
        .add_first_user(&user)
        .await
        .with_context(|| format!("creating the first user {name:?}"))?;
    Ok(created.map(|_| FirstUser {
        name,
        password,
        key_files,
        root,
    }))
}

/// The accepted keys of the `*.pub` files in `dir` (sorted by file name; files that hold no
/// accepted key, and keys already taken from an earlier file, are skipped), with the files
/// they came from.
fn ssh_public_keys(dir: &Path) -> (Vec<String>, Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (Vec::new(), Vec::new());
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pub"))
        .collect();
    files.sort();
    let mut seen = HashSet::new();
    let (mut keys, mut key_files) = (Vec::new(), Vec::new());
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let mut used = false;
        for line in sftpgate_auth::key_lines(&text) {
            if let Ok(key) = AuthorizedKey::parse(line) {
                if seen.insert(key.fingerprint().to_owned()) {
                    keys.push(key.line().to_owned());
                    used = true;
                }
            }
        }
        if used {
            key_files.push(file);
        }
    }
    (keys, key_files)
}

/// The name of the user running the process: `$USER`, `$LOGNAME`, else the passwd entry of
/// the process's uid. Only names that are safe on a command line are taken.
pub fn invoking_user_name() -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let usable = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    for var in ["USER", "LOGNAME"] {
        if let Ok(name) = std::env::var(var) {
            if usable(&name) {
                return Some(name);
            }
        }
    }
    let uid = std::fs::metadata("/proc/self").ok()?.uid().to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd
        .lines()
        .map(|line| line.split(':').collect::<Vec<_>>())
        .find(|fields| fields.len() > 2 && fields[2] == uid)
        .map(|fields| fields[0].to_owned())
        .filter(|n| usable(n))
}

#[cfg(test)]
mod tests {
    use sftpgate_auth::{PasswordParams, StoreConfig};

    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test";

    #[test]
    fn public_key_files_are_read_once_per_key() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.pub"), format!("{KEY}\n")).unwrap();
        std::fs::write(dir.path().join("b.pub"), format!("# same key\n{KEY}\n")).unwrap();
        std::fs::write(dir.path().join("c.pub"), "ssh-ed25519 notbase64\n").unwrap();
        std::fs::write(dir.path().join("id_ed25519"), "private").unwrap();
        let (keys, files) = ssh_public_keys(dir.path());
        assert_eq!(keys.len(), 1);
        assert_eq!(files, [dir.path().join("a.pub")]);
        assert_eq!(ssh_public_keys(&dir.path().join("missing")).0.len(), 0);
    }

    #[tokio::test]
    async fn first_start_creates_a_user_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::default();
        config.password = PasswordParams::insecure_for_tests();
        let store = Store::open_data_dir(dir.path(), config).await.unwrap();
        let first = create_first_user(&store, dir.path())
            .await
            .unwrap()
            .expect("a first user");
        assert_eq!(first.password.len(), 20);
        assert!(first.root.is_absolute());
        let record = store.user_record(&first.name).await.unwrap();
        assert!(record.has_password);
        assert_eq!(record.root_dir, first.root.to_str().unwrap());
        assert!(create_first_user(&store, dir.path())
            .await
            .unwrap()
            .is_none());
        assert_eq!(store.user_count().await.unwrap(), 1);
        store.close().await;
    }
}
