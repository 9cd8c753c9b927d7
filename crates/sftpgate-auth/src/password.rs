//! Password hashing: argon2id PHC strings, their verification, and generated passwords.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngExt as _;

use crate::error::StoreError;

/// Cost of the argon2id hashes the store writes (and of the dummy hash the authenticator
/// verifies for unknown users). Verification always uses the parameters recorded in the
/// stored hash itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism (lanes).
    pub parallelism: u32,
}

impl Default for PasswordParams {
    /// The argon2 crate's defaults, which are OWASP's recommendation for argon2id:
    /// 19 MiB, 2 passes, 1 lane (about 15–30 ms per hash on a server core).
    fn default() -> Self {
        PasswordParams {
            memory_kib: Params::DEFAULT_M_COST,
            iterations: Params::DEFAULT_T_COST,
            parallelism: Params::DEFAULT_P_COST,
        }
    }
}

impl PasswordParams {
    /// The cheapest parameters argon2 accepts (8 KiB, 1 pass). Only for tests that hash
    /// hundreds of passwords; never for real users.
    pub fn insecure_for_tests() -> Self {
        PasswordParams {
            memory_kib: Params::MIN_M_COST,
            iterations: Params::MIN_T_COST,
            parallelism: 1,
        }
    }

    fn argon2(&self) -> Result<Argon2<'static>, StoreError> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| StoreError::Hashing {
                reason: format!("invalid argon2 parameters: {e}"),
            })?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// An argon2id PHC string (`$argon2id$v=19$m=…`) for `password`, with a random salt.
/// CPU- and memory-heavy by design: call it on a blocking thread.
pub fn hash_password(password: &str, params: &PasswordParams) -> Result<String, StoreError> {
    let salt_bytes: [u8; 16] = rand::rng().random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| StoreError::Hashing {
        reason: format!("encoding a salt: {e}"),
    })?;
    Ok(params
        .argon2()?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| StoreError::Hashing {
            reason: e.to_string(),
        })?
        .to_string())
}

/// Whether `password` matches the PHC string `hash` (the comparison inside is constant
/// time). A malformed hash matches nothing. CPU-heavy: call it on a blocking thread.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Whether `hash` is an argon2id PHC string this crate can verify.
pub fn is_argon2id_hash(hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| parsed.algorithm == Algorithm::Argon2id.ident())
}

/// A password of 20 characters from an alphabet without look-alikes (about 115 bits), for
/// generated first-run credentials.
pub fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// [`hash_password`] on the blocking pool.
pub(crate) async fn hash_password_blocking(
    password: &str,
    params: &PasswordParams,
) -> Result<String, StoreError> {
    let (password, params) = (password.to_owned(), *params);
    tokio::task::spawn_blocking(move || hash_password(&password, &params))
        .await
        .map_err(|e| StoreError::Hashing {
            reason: format!("hashing task failed: {e}"),
        })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_fast_params() {
        let hash = hash_password("correct horse", &PasswordParams::insecure_for_tests()).unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{hash}");
        assert!(is_argon2id_hash(&hash));
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "wrong"));
    }

    #[test]
    fn production_defaults_are_strong() {
        let params = PasswordParams::default();
        assert!(params.memory_kib >= 19 * 1024, "{params:?}");
        assert!(params.iterations >= 2, "{params:?}");
    }

    #[test]
    fn malformed_hash_matches_nothing() {
        assert!(!verify_password("not a hash", "x"));
        assert!(!is_argon2id_hash("not a hash"));
        assert!(!is_argon2id_hash(
            "$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA"
        ));
    }

    #[test]
    fn random_passwords_differ() {
        let (a, b) = (random_password(), random_password());
        assert_eq!(a.len(), 20);
        assert_ne!(a, b);
    }
}
