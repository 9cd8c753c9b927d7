//! `chacha20-poly1305@openssh.com` (OpenSSH's PROTOCOL.chacha20poly1305) on OpenSSL's
//! libcrypto, for russh.
//!
//! Why this crate exists: russh seals this cipher with aws-lc, whose Poly1305 is its portable
//! SSE2 code (aws-lc's fast Poly1305 lives only inside its fused RFC 8439 AEAD, which the
//! OpenSSH construction cannot use). Sealing a 32 KiB packet took 2.3 times as long as with
//! OpenSSL's ChaCha20 and Poly1305 (`cargo bench -p sftpgate-chacha`), about half of the
//! server's CPU in a transfer, and it is the cipher OpenSSH's clients ask for first.
//! OpenSSL is also what OpenSSH's sshd seals it with.
//! vendor/README.md says how russh is pointed here.
//!
//! The API is that of `aws_lc_rs::aead::chacha20_poly1305_openssh`, so that russh's cipher
//! module changes one `use`; the tests check every output against that implementation.
//!
//! The construction: the 64-byte key is K_2 (first half) and K_1 (second half); the nonce
//! is the packet's sequence number as a big-endian 64-bit value after a 64-bit block counter
//! (ChaCha20 as D. J. Bernstein first defined it). K_1 at counter 0 encrypts the 4-byte
//! packet length; K_2 at counter 0 gives the Poly1305 key, at counter 1 encrypts the rest;
//! the tag is Poly1305 over the encrypted length and the ciphertext.

use std::cell::RefCell;
use std::ptr::NonNull;
use std::sync::OnceLock;

use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use openssl_sys as ffi;

/// Bytes of key material: K_2 then K_1.
pub const KEY_LEN: usize = 64;
/// Bytes of the Poly1305 tag after each packet.
pub const TAG_LEN: usize = 16;
/// Bytes of the packet length at the front of each packet, encrypted with K_1.
pub const PACKET_LENGTH_LEN: usize = 4;

const CHACHA_KEY_LEN: usize = 32;
const POLY_KEY_LEN: usize = 32;
const CHACHA_BLOCK_LEN: usize = 64;

/// A tag did not verify (the packet is forged or damaged). Nothing about which byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unspecified;

impl std::fmt::Display for Unspecified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("chacha20-poly1305@openssh.com: tag mismatch")
    }
}

impl std::error::Error for Unspecified {}

/// Seals packets in one direction of a connection.
pub struct SealingKey {
    keys: Keys,
}

impl SealingKey {
    /// A key from the 64 bytes the key exchange derived (K_2 then K_1).
    pub fn new(key_material: &[u8; KEY_LEN]) -> SealingKey {
        SealingKey {
            keys: Keys::new(key_material),
        }
    }

    /// Encrypts `packet_length || rest` in place and writes the tag of the result.
    pub fn seal_in_place(
        &mut self,
        sequence_number: u32,
        plaintext_in_ciphertext_out: &mut [u8],
        tag_out: &mut [u8; TAG_LEN],
    ) {
        let (length, rest) = split_length(plaintext_in_ciphertext_out);
        self.keys.header.get_mut().apply(sequence_number, length);
        let poly_key = self.keys.poly_key(sequence_number);
        // K_2's keystream goes on from block 1.
        self.keys.main.update(rest);
        *tag_out = self.keys.mac.tag(&poly_key, plaintext_in_ciphertext_out);
    }
}

/// Opens packets in one direction of a connection.
pub struct OpeningKey {
    keys: Keys,
}

impl OpeningKey {
    /// A key from the 64 bytes the key exchange derived (K_2 then K_1).
    pub fn new(key_material: &[u8; KEY_LEN]) -> OpeningKey {
        OpeningKey {
            keys: Keys::new(key_material),
        }
    }

    /// The packet length, decrypted but not yet authenticated: the caller reads that many
    /// bytes and then calls [`OpeningKey::open_in_place`], which checks them.
    pub fn decrypt_packet_length(
        &self,
        sequence_number: u32,
        encrypted_packet_length: [u8; PACKET_LENGTH_LEN],
    ) -> [u8; PACKET_LENGTH_LEN] {
        let mut length = encrypted_packet_length;
        self.keys
            .header
            .borrow_mut()
            .apply(sequence_number, &mut length);
        length
    }

    /// Checks the tag over `encrypted_packet_length || ciphertext` and then decrypts the
    /// ciphertext in place, returning it (without the length). When the tag does not match,
    /// nothing has been decrypted.
    pub fn open_in_place<'a>(
        &mut self,
        sequence_number: u32,
        ciphertext_in_plaintext_out: &'a mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<&'a [u8], Unspecified> {
        if ciphertext_in_plaintext_out.len() < PACKET_LENGTH_LEN {
            return Err(Unspecified);
        }
        let poly_key = self.keys.poly_key(sequence_number);
        let expected = self.keys.mac.tag(&poly_key, ciphertext_in_plaintext_out);
        if !openssl::memcmp::eq(&expected, tag) {
            return Err(Unspecified);
        }
        let (_, rest) = split_length(ciphertext_in_plaintext_out);
        // K_2's keystream goes on from block 1.
        self.keys.main.update(rest);
        Ok(rest)
    }
}

fn split_length(packet: &mut [u8]) -> (&mut [u8], &mut [u8]) {
    let at = PACKET_LENGTH_LEN.min(packet.len());
    packet.split_at_mut(at)
}

/// One direction's state: a ChaCha20 context per key (keyed once, given a new IV per use)
/// and a Poly1305 context (given a new key per packet).
struct Keys {
    /// K_1. In a `RefCell` because russh decrypts the length through `&self`; the key is
    /// owned by one connection task, never shared.
    header: RefCell<ChaCha20>,
    /// K_2.
    main: ChaCha20,
    mac: Poly1305,
}

impl Keys {
    fn new(key_material: &[u8; KEY_LEN]) -> Keys {
        let (k_2, k_1) = key_material.split_at(CHACHA_KEY_LEN);
        Keys {
            header: RefCell::new(ChaCha20::new(k_1)),
            main: ChaCha20::new(k_2),
            mac: Poly1305::new(),
        }
    }

    /// The packet's Poly1305 key: the first 32 bytes of K_2's keystream at counter 0. The
    /// whole first block is used up, so that `main` goes on at block 1, where the payload's
    /// keystream starts (one IV set-up per packet instead of two).
    fn poly_key(&mut self, sequence_number: u32) -> [u8; POLY_KEY_LEN] {
        let mut block = [0u8; CHACHA_BLOCK_LEN];
        self.main.apply(sequence_number, &mut block);
        let mut key = [0u8; POLY_KEY_LEN];
        key.copy_from_slice(&block[..POLY_KEY_LEN]);
        key
    }
}

/// A ChaCha20 context keyed once.
struct ChaCha20(CipherCtx);

impl ChaCha20 {
    fn new(key: &[u8]) -> ChaCha20 {
        ChaCha20::try_new(key)
            .expect("libcrypto has no ChaCha20: offer this cipher only after check()")
    }

    fn try_new(key: &[u8]) -> Result<ChaCha20, openssl::error::ErrorStack> {
        let mut ctx = CipherCtx::new()?;
        ctx.encrypt_init(Some(Cipher::chacha20()), Some(key), None)?;
        Ok(ChaCha20(ctx))
    }

    /// XORs `data` with the keystream for `sequence_number` from block 0 on (every use
    /// starts there; the payload continues from it through [`ChaCha20::update`]).
    /// OpenSSL's 16-byte ChaCha20 IV is the block counter (little-endian) then the nonce;
    /// OpenSSH's 64-bit counter and 64-bit nonce fill it the same way (cipher-chacha-libcrypto.c).
    fn apply(&mut self, sequence_number: u32, data: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[8..].copy_from_slice(&u64::from(sequence_number).to_be_bytes());
        self.0
            .encrypt_init(None, None, Some(&iv))
            .expect("libcrypto: chacha20 takes a 16-byte IV");
        self.update(data);
    }

    /// XORs `data` with the keystream from where the last call left off.
    fn update(&mut self, data: &mut [u8]) {
        let len = data.len();
        self.0
            .cipher_update_inplace(data, len)
            .expect("libcrypto: chacha20 is a stream cipher");
    }
}

/// A Poly1305 context (OpenSSL 3's `EVP_MAC`, which the `openssl` crate does not wrap).
struct Poly1305 {
    ctx: NonNull<ffi::EVP_MAC_CTX>,
}

// SAFETY: the context is owned by this value alone and used only through `&mut self`;
// OpenSSL contexts may move between threads as long as they are not used concurrently.
unsafe impl Send for Poly1305 {}

/// The fetched algorithm, shared by every context: fetching looks it up in the provider's
/// tables, so it is done once. OpenSSL's algorithm objects are immutable and thread-safe.
struct Algorithm(NonNull<ffi::EVP_MAC>);

// SAFETY: see above; the object is never freed (one per process).
unsafe impl Send for Algorithm {}
unsafe impl Sync for Algorithm {}

fn poly1305_algorithm() -> Option<&'static Algorithm> {
    static ALGORITHM: OnceLock<Option<Algorithm>> = OnceLock::new();
    ALGORITHM
        .get_or_init(|| {
            openssl::init();
            // SAFETY: a NUL-terminated name and null library context and properties (the
            // defaults) are what EVP_MAC_fetch takes.
            let mac = unsafe {
                ffi::EVP_MAC_fetch(std::ptr::null_mut(), c"POLY1305".as_ptr(), std::ptr::null())
            };
            NonNull::new(mac).map(Algorithm)
        })
        .as_ref()
}

/// Whether this process's libcrypto provides ChaCha20 and Poly1305. Without them (OpenSSL in
/// FIPS mode, where neither is approved, or a configuration that loads no default provider)
/// the cipher must not be offered: a key made anyway would panic its connection's task.
/// OpenSSH leaves chacha20-poly1305 out in FIPS mode too.
pub fn check() -> Result<(), Unavailable> {
    if poly1305_algorithm().is_none() {
        return Err(Unavailable("Poly1305"));
    }
    ChaCha20::try_new(&[0u8; CHACHA_KEY_LEN]).map_err(|_| Unavailable("ChaCha20"))?;
    Ok(())
}

/// What [`check`] found missing from libcrypto.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable(&'static str);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "libcrypto does not provide {} (FIPS mode, or no default provider loaded)",
            self.0
        )
    }
}

impl std::error::Error for Unavailable {}

impl Poly1305 {
    fn new() -> Poly1305 {
        let algorithm = poly1305_algorithm()
            .expect("libcrypto has no Poly1305: offer this cipher only after check()");
        // SAFETY: the algorithm pointer is valid for the life of the process; the new
        // context holds its own reference.
        let ctx = unsafe { ffi::EVP_MAC_CTX_new(algorithm.0.as_ptr()) };
        Poly1305 {
            ctx: NonNull::new(ctx).expect("libcrypto: allocating a MAC context"),
        }
    }

    fn tag(&mut self, key: &[u8; POLY_KEY_LEN], data: &[u8]) -> [u8; TAG_LEN] {
        let mut tag = [0u8; TAG_LEN];
        let mut written = 0usize;
        // SAFETY: the context is valid and ours alone; every pointer comes with its length
        // from a live slice or array.
        let ok = unsafe {
            ffi::EVP_MAC_init(self.ctx.as_ptr(), key.as_ptr(), key.len(), std::ptr::null()) == 1
                && ffi::EVP_MAC_update(self.ctx.as_ptr(), data.as_ptr(), data.len()) == 1
                && ffi::EVP_MAC_final(self.ctx.as_ptr(), tag.as_mut_ptr(), &mut written, TAG_LEN)
                    == 1
        };
        assert!(ok && written == TAG_LEN, "libcrypto: poly1305 failed");
        tag
    }
}

impl Drop for Poly1305 {
    fn drop(&mut self) {
        // SAFETY: created by EVP_MAC_CTX_new and freed once.
        unsafe { ffi::EVP_MAC_CTX_free(self.ctx.as_ptr()) }
    }
}

#[cfg(test)]
mod tests;
