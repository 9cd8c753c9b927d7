//! Public key lines: parsing an OpenSSH `authorized_keys` line into an accepted key
//! (ed25519, ecdsa, rsa of at least [`MIN_RSA_BITS`]) with its fingerprint.

use std::str::FromStr as _;

use sftpgate_server::keys::ssh_key::authorized_keys::Entry;
use sftpgate_server::keys::ssh_key::public::KeyData;
use sftpgate_server::keys::{HashAlg, PublicKey};

use crate::error::StoreError;

/// The smallest RSA modulus accepted, in bits (as OpenSSH's `RequiredRSASize` default).
pub const MIN_RSA_BITS: u32 = 2048;

/// A public key line that passed every check: what the store keeps.
#[derive(Debug, Clone)]
pub struct AuthorizedKey {
    key: PublicKey,
    fingerprint: String,
    line: String,
}

impl AuthorizedKey {
    /// Parses one `authorized_keys` line: `ALGORITHM BASE64 [COMMENT]`. Lines with
    /// `authorized_keys` options (`from=…`, `command=…`, …) are refused rather than stored
    /// with their options silently ignored; so are certificates, DSA, security-key (`sk-`)
    /// keys and RSA keys under [`MIN_RSA_BITS`] bits.
    pub fn parse(line: &str) -> Result<AuthorizedKey, StoreError> {
        let line = line.trim();
        if line.is_empty() {
            return Err(StoreError::InvalidKey {
                reason: "the line is empty".into(),
            });
        }
        if line.contains(['\n', '\r']) {
            return Err(StoreError::InvalidKey {
                reason: "one key per line: the text holds several lines".into(),
            });
        }
        let entry = Entry::from_str(line).map_err(|e| StoreError::InvalidKey {
            reason: format!("{e} (expected \"ssh-ed25519 AAAA… comment\")"),
        })?;
        if !entry.config_opts().is_empty() {
            return Err(StoreError::InvalidKey {
                reason: format!(
                    "authorized_keys options are not supported: {:?}",
                    entry.config_opts().as_str()
                ),
            });
        }
        let key = entry.public_key().clone();
        check_algorithm(&key)?;
        let fingerprint = fingerprint(&key);
        let line = key.to_openssh().map_err(|e| StoreError::InvalidKey {
            reason: format!("cannot re-encode the key: {e}"),
        })?;
        Ok(AuthorizedKey {
            key,
            fingerprint,
            line,
        })
    }

    /// The key.
    pub fn key(&self) -> &PublicKey {
        &self.key
    }

    /// The `SHA256:…` fingerprint, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The key's SSH algorithm name (`ssh-ed25519`, `ecdsa-sha2-nistp256`, `ssh-rsa`, …).
    pub fn algorithm(&self) -> String {
        self.key.algorithm().to_string()
    }

    /// The line in canonical form (`ALGORITHM BASE64 [COMMENT]`), as stored.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// The comment (often `user@host`), empty if none.
    pub fn comment(&self) -> &str {
        self.key.comment().as_str_lossy()
    }
}

/// The key lines of an `authorized_keys` (or `.pub`) file: every line that is not blank
/// and not a `#` comment, trimmed. What `--key-file` hands to
/// [`Store::add_keys`](crate::Store::add_keys).
pub fn key_lines(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
}

/// The `SHA256:…` fingerprint of `key`.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn check_algorithm(key: &PublicKey) -> Result<(), StoreError> {
    match key.key_data() {
        KeyData::Ed25519(_) | KeyData::Ecdsa(_) => Ok(()),
        KeyData::Rsa(rsa) if rsa.key_size() >= MIN_RSA_BITS => Ok(()),
        KeyData::Rsa(rsa) => Err(StoreError::WeakKey {
            bits: rsa.key_size(),
            min_bits: MIN_RSA_BITS,
        }),
        other => Err(StoreError::UnsupportedKeyAlgorithm {
            algorithm: other.algorithm().to_string(),
            min_rsa_bits: MIN_RSA_BITS,
        }),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop";

    pub(crate) const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBLh86UqDLlilgx5X0vxrX6SfQebY7NEZ89ZgldEjDvMedd6kzKvWqJqOdKGk1hgF8vPiAjp7nCBY2lZ4RLgTrIU= ecdsa-256@test";
    pub(crate) const RSA_2048: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDgAnjRJu+W2NMqVyGDpP4EZtBz9f16o3Clql4keinPPZ+1OPv0KaXPDtNP9S/vZYJNRDTgWjl99bM7TTGjPiMaFk2pA+ZkPv5/HNRES2fVBwbAPoAkvblarPCZJNKVewY437qUQ7g2u52G7yMZjEPQrVHHR6kqvPei60K39O5NtNDA5ptVI+rtBqFFaXqo93Ql15AoGQ2P820dWedoue8Nd3WiLjkVsGVlxF3YhshYNsmXl1BQq0oMsy6bm6QcQIkx9HBymSkDA72gnhks8GqT8W7i2+7PsW6Di5QPOx4IJztrwLi3ByC6uZ9aIBxuu4/KLQZ8Yq3uFe/CFnCuzkcP rsa-2048@test";
    const RSA_1024: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC8/TfLYznfikUb2J1W0+pC7Rx/XTkdPqqlWV/B8fJ7cptLXA9aVxT50BE49FjZ7ya0p+cUkxvkiHgnr5HOoJDo59SXNgfurWJIPrF2xVT5cALKdTAQM/zx355ELwI1m3dvl13To/bGoM0socbPZTaVqYeMz4LAw9a2eCXVq1jjHw== rsa-1024@test";
    const DSA: &str = "ssh-dss AAAAB3NzaC1kc3MAAACBAJ9O2AZ81hLDCJ4dsG3wEipBEmRApVhiVuIyQ9SGhjYBinc0wrSwfVPVGO94WnK+zafTwkJ9GXOUtdKdiR/gIGUTpQV98IEBdBYjCWWjXaS+NeP8teHMQO8MVcm3gKr/7lb90IC9/ZdQqZCv7YANR7vyc3dXjbaygKfXB/4vOb57AAAAFQClzhCxf3sli0TU40GfZxQlYu8AXQAAAIAiz388BE5T+hxWZzqvp1oAYuNFO6W51lQcQ6UGNl3TCcZvYuJ5hQYQ6lWqaPjmrnS8YpoDuvPg9v2OhtFpAnOfFa/ZCQPiJWFZ3nUWnM8BqBoMCCi0bqVGryhSJzjXUMlJueAD8n1SZtv1fcDTCPTh9EOZK6uv2i1Pb7a/HICcFgAAAIAoAkA+DflOv0pqdZD4wob6p1LxpuuK/XrdlhRP3E5AHDjeXV8HiC5MjiISxje+L7AyEJPzuls18oX41pwG2VHAukmPVnss0rrLVXBXTJ/f8C25pqLtzIO3+wo0SXnPnQfz9WzGVKbW8nnn4r5MBucYcGeG24Y838UJ0d+8eczcKg== dsa-1024@test";

    fn check_ok(line: &str, algorithm: &str) {
        let key = AuthorizedKey::parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(key.algorithm(), algorithm);
        assert!(
            key.fingerprint().starts_with("SHA256:"),
            "{}",
            key.fingerprint()
        );
    }

    fn check_err(line: &str, expected: &str) {
        let err = AuthorizedKey::parse(line).unwrap_err();
        assert!(err.to_string().contains(expected), "{line}: {err}");
        assert!(err.is_input_error());
    }

    #[test]
    fn ed25519() {
        check_ok(ED25519, "ssh-ed25519");
    }

    #[test]
    fn ecdsa() {
        check_ok(ECDSA, "ecdsa-sha2-nistp256");
    }

    #[test]
    fn rsa_2048() {
        check_ok(RSA_2048, "ssh-rsa");
    }

    #[test]
    fn rsa_1024_is_weak() {
        check_err(RSA_1024, "RSA key of 1024 bits is too weak");
    }

    #[test]
    fn dsa_refused() {
        check_err(DSA, "ssh-dss keys are not accepted");
    }

    #[test]
    fn canonical_line_keeps_the_comment() {
        let key = AuthorizedKey::parse(&format!("  {ED25519}  \n")).unwrap();
        assert_eq!(key.line(), ED25519);
        assert_eq!(key.comment(), "alice@laptop");
    }

    #[test]
    fn comment_with_spaces() {
        let line = ED25519.replace("alice@laptop", "Alice's old laptop");
        let key = AuthorizedKey::parse(&line).unwrap();
        assert_eq!(key.comment(), "Alice's old laptop");
        assert_eq!(key.line(), line);
    }

    #[test]
    fn key_file_lines() {
        let text = format!("# keys\n\n  {ED25519}  \n{ECDSA}\n");
        assert_eq!(key_lines(&text), vec![ED25519, ECDSA]);
    }

    #[test]
    fn empty() {
        check_err("   ", "empty");
    }

    #[test]
    fn garbage() {
        check_err("ssh-ed25519 notbase64", "not a valid public key line");
    }

    #[test]
    fn two_lines() {
        check_err(&format!("{ED25519}\n{ED25519}"), "several lines");
    }

    #[test]
    fn options_refused() {
        check_err(&format!("no-pty,from=\"10.0.0.1\" {ED25519}"), "options");
    }
}
