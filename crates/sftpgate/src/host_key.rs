//! The server's host key: generated (ed25519) on first start, reused afterwards, and never
//! used while others can read it.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::{bail, Context as _};
use sftpgate_server::keys::{Algorithm, PrivateKey};

/// Loads the key at `path`, generating it first if the file does not exist.
pub fn load_or_generate(path: &Path) -> anyhow::Result<PrivateKey> {
    if !path.exists() {
        let key = PrivateKey::random(&mut rand::rng(), Algorithm::Ed25519)
            .context("generating an ed25519 host key")?;
        let text = key
            .to_openssh(sftpgate_server::keys::ssh_key::LineEnding::LF)
            .context("encoding the host key")?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating host key {}", path.display()))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing host key {}", path.display()))?;
        tracing::info!(path = %path.display(), "generated a new ed25519 host key");
    }
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading host key {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        // Like sshd ("UNPROTECTED PRIVATE KEY FILE"): whoever can read the key can pose as
        // this server, and a refusal is what gets the mode fixed.
        bail!(
            "refusing to start: host key {path} is readable by others (mode {mode:03o}: group or \
             other bits set); \
             anyone who can read it can impersonate this server. Run `chmod 600 {path}` \
             (and replace the key if others may have copied it)",
            path = path.display(),
            mode = mode & 0o777,
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading host key {}", path.display()))?;
    PrivateKey::from_openssh(text.trim())
        .with_context(|| format!("host key {} is not an OpenSSH private key", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/host_key");
        let a = load_or_generate(&path).unwrap();
        let b = load_or_generate(&path).unwrap();
        assert_eq!(a.public_key(), b.public_key());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn readable_key_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host_key");
        load_or_generate(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_generate(&path).unwrap_err().to_string();
        assert!(err.contains("readable by others (mode 644"), "{err}");
        assert!(err.contains("chmod 600"), "{err}");
    }
}
