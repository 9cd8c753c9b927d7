//! Users from the configuration (or from `<data_dir>/users.toml`, created with a first user
//! on first start), and the [`Authenticator`] that checks logins against them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _};
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::Argon2;
use rand::RngExt as _;
use sftpgate_server::keys::PublicKey;
use sftpgate_server::Authenticator;

use crate::config::{Config, UserConfig};

/// The file holding the users sftpgate manages itself.
pub const USERS_FILE: &str = "users.toml";

/// One user, parsed.
#[derive(Debug)]
pub struct User {
    password_hash: Option<String>,
    keys: Vec<PublicKey>,
    /// Root directory of the user's files.
    pub root: PathBuf,
}

/// All users, by name.
#[derive(Debug)]
pub struct Users {
    by_name: HashMap<String, User>,
    /// A hash verified for unknown users and users without a password, so that a failed
    /// lookup costs the same time as a wrong password.
    dummy_hash: String,
}

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
    /// Where the user was written.
    pub users_file: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct UsersFile {
    #[serde(default)]
    users: Vec<UserConfig>,
}

impl Users {
    /// The users of `config`: its `[[users]]`, or else the managed users file, which is
    /// created with a first user (named after the invoking user) when it does not exist.
    pub fn load_or_create(config: &Config) -> anyhow::Result<(Users, Option<FirstUser>)> {
        if !config.users.is_empty() {
            return Ok((Users::from_config(&config.users, &config.data_dir)?, None));
        }
        let path = config.data_dir.join(USERS_FILE);
        let mut first = None;
        if !path.exists() {
            let (user, created) = first_user(&config.data_dir, &path)?;
            let text = toml::to_string(&UsersFile { users: vec![user] })?;
            write_private(&path, &text)?;
            first = Some(created);
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let file: UsersFile =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok((Users::from_config(&file.users, &config.data_dir)?, first))
    }

    /// Parses user entries; every malformed key or hash is an error naming the user.
    pub fn from_config(users: &[UserConfig], data_dir: &Path) -> anyhow::Result<Users> {
        let mut by_name = HashMap::new();
        for u in users {
            let mut keys = Vec::new();
            for (i, line) in u.authorized_keys.iter().enumerate() {
                let key = parse_authorized_key(line).with_context(|| {
                    format!(
                        "user {:?}: authorized key #{} is not a valid key line",
                        u.name,
                        i + 1
                    )
                })?;
                keys.push(key);
            }
            if let Some(hash) = &u.password_hash {
                PasswordHash::new(hash).map_err(|e| {
                    anyhow::anyhow!("user {:?}: password_hash is not a PHC string: {e}", u.name)
                })?;
            }
            let root = match &u.root {
                Some(root) => data_dir.join(root),
                None => data_dir.join("files").join(&u.name),
            };
            if by_name
                .insert(
                    u.name.clone(),
                    User {
                        password_hash: u.password_hash.clone(),
                        keys,
                        root,
                    },
                )
                .is_some()
            {
                bail!("user {:?} is defined twice", u.name);
            }
        }
        Ok(Users {
            by_name,
            dummy_hash: hash_password(&random_password())?,
        })
    }

    /// The user called `name`.
    pub fn get(&self, name: &str) -> Option<&User> {
        self.by_name.get(name)
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    fn check_password(&self, name: &str, password: &str) -> bool {
        let (hash, real) = match self
            .by_name
            .get(name)
            .and_then(|u| u.password_hash.as_deref())
        {
            Some(hash) => (hash, true),
            None => (self.dummy_hash.as_str(), false),
        };
        verify_password(hash, password) && real
    }
}

/// Checks logins against [`Users`]. Password checks run off the connection's event loop
/// (argon2 is deliberately slow).
#[derive(Clone)]
pub struct UsersAuthenticator(pub Arc<Users>);

impl Authenticator for UsersAuthenticator {
    async fn password(&self, user: &str, password: &str, _peer: SocketAddr) -> bool {
        if password.is_empty() {
            return false;
        }
        let users = self.0.clone();
        let (user, password) = (user.to_owned(), password.to_owned());
        tokio::task::spawn_blocking(move || users.check_password(&user, &password))
            .await
            .unwrap_or(false)
    }

    async fn publickey(&self, user: &str, key: &PublicKey, _peer: SocketAddr) -> bool {
        self.0
            .get(user)
            .is_some_and(|u| u.keys.iter().any(|k| k.key_data() == key.key_data()))
    }
}

/// Parses one `authorized_keys` line (options before the key type are not supported).
pub fn parse_authorized_key(line: &str) -> anyhow::Result<PublicKey> {
    let key = PublicKey::from_openssh(line.trim())?;
    Ok(key)
}

/// An argon2id PHC string for `password`.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt_bytes: [u8; 16] = rand::rng().random();
    let salt =
        SaltString::encode_b64(&salt_bytes).map_err(|e| anyhow::anyhow!("encoding a salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing a password: {e}"))?
        .to_string())
}

/// Whether `password` matches the PHC string `hash` (constant-time comparison inside).
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A password of 20 characters from an alphabet without look-alikes.
pub fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn first_user(data_dir: &Path, users_file: &Path) -> anyhow::Result<(UserConfig, FirstUser)> {
    let name = invoking_user_name().unwrap_or_else(|| "sftp".to_owned());
    let password = random_password();
    let mut keys = Vec::new();
    let mut key_files = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        let ssh = Path::new(&home).join(".ssh");
        if let Ok(entries) = std::fs::read_dir(&ssh) {
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "pub"))
                .collect();
            files.sort();
            for file in files {
                let Ok(text) = std::fs::read_to_string(&file) else {
                    continue;
                };
                let line = text.trim();
                if parse_authorized_key(line).is_ok() {
                    keys.push(line.to_owned());
                    key_files.push(file);
                }
            }
        }
    }
    let root = data_dir.join("files").join(&name);
    let user = UserConfig {
        name: name.clone(),
        password_hash: Some(hash_password(&password)?),
        authorized_keys: keys,
        root: None,
    };
    Ok((
        user,
        FirstUser {
            name,
            password,
            key_files,
            root,
            users_file: users_file.to_owned(),
        },
    ))
}

/// The name of the user running the server: `$USER`, `$LOGNAME`, else the passwd entry of
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

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl test";

    #[test]
    fn password_round_trip() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "wrong"));
        assert!(!verify_password("not a hash", "x"));
    }

    #[test]
    fn users_check_passwords_and_unknown_names() {
        let users = Users::from_config(
            &[UserConfig {
                name: "alice".into(),
                password_hash: Some(hash_password("pw").unwrap()),
                authorized_keys: vec![KEY.into()],
                root: None,
            }],
            Path::new("/data"),
        )
        .unwrap();
        assert!(users.check_password("alice", "pw"));
        assert!(!users.check_password("alice", "nope"));
        assert!(!users.check_password("bob", "pw"));
        assert_eq!(
            users.get("alice").unwrap().root,
            Path::new("/data/files/alice")
        );
    }

    #[test]
    fn malformed_key_names_the_user() {
        let err = Users::from_config(
            &[UserConfig {
                name: "alice".into(),
                password_hash: None,
                authorized_keys: vec!["ssh-ed25519 notbase64".into()],
                root: None,
            }],
            Path::new("/data"),
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("alice"), "{err:#}");
    }

    #[test]
    fn first_start_creates_a_user_once() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_owned(),
            ..Config::default()
        };
        let (users, first) = Users::load_or_create(&config).unwrap();
        let first = first.expect("a first user");
        assert_eq!(users.len(), 1);
        assert!(users.check_password(&first.name, &first.password));
        let (again, none) = Users::load_or_create(&config).unwrap();
        assert!(none.is_none());
        assert!(again.check_password(&first.name, &first.password));
    }
}
