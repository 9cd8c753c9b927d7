// Copyright 2016 Pierre-Étienne Meunier
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.
//

// http://cvsweb.openbsd.org/cgi-bin/cvsweb/src/usr.bin/ssh/PROTOCOL.chacha20poly1305?annotate=HEAD

use std::convert::TryInto;

#[cfg(feature = "aws-lc-rs")]
use aws_lc_rs::{
    aead::{
        Aad, Algorithm, BoundKey, NONCE_LEN, Nonce as AeadNonce, NonceSequence,
        OpeningKey as AeadOpeningKey, SealingKey as AeadSealingKey, UnboundKey,
    },
    error::Unspecified,
};
use rand_core::Rng;
#[cfg(all(not(feature = "aws-lc-rs"), feature = "ring"))]
use ring::{
    aead::{
        Aad, Algorithm, BoundKey, NONCE_LEN, Nonce as AeadNonce, NonceSequence,
        OpeningKey as AeadOpeningKey, SealingKey as AeadSealingKey, UnboundKey,
    },
    error::Unspecified,
};
// sftpgate: ring as well, for the CPUs where its AES-GCM is the faster one (`AesGcmLibrary`).
use ring::aead as ring_aead;

use super::super::Error;
use crate::keys::key::safe_rng;
use crate::mac::MacAlgorithm;

pub struct GcmCipher(pub(crate) &'static Algorithm);

impl super::Cipher for GcmCipher {
    fn key_len(&self) -> usize {
        self.0.key_len()
    }

    fn nonce_len(&self) -> usize {
        self.0.nonce_len()
    }

    fn make_opening_key(
        &self,
        k: &[u8],
        n: &[u8],
        _: &[u8],
        _: &dyn MacAlgorithm,
    ) -> Box<dyn super::OpeningKey + Send> {
        #[allow(clippy::unwrap_used)]
        let nonce = Nonce(n.try_into().unwrap());
        #[allow(clippy::unwrap_used)]
        Box::new(match self.ring_algorithm() {
            Some(ring) => OpeningKey::Ring(ring_aead::BoundKey::new(
                ring_aead::UnboundKey::new(ring, k).unwrap(),
                nonce,
            )),
            None => OpeningKey::Default(AeadOpeningKey::new(
                UnboundKey::new(self.0, k).unwrap(),
                nonce,
            )),
        })
    }

    fn make_sealing_key(
        &self,
        k: &[u8],
        n: &[u8],
        _: &[u8],
        _: &dyn MacAlgorithm,
    ) -> Box<dyn super::SealingKey + Send> {
        #[allow(clippy::unwrap_used)]
        let nonce = Nonce(n.try_into().unwrap());
        #[allow(clippy::unwrap_used)]
        Box::new(match self.ring_algorithm() {
            Some(ring) => SealingKey::Ring(ring_aead::BoundKey::new(
                ring_aead::UnboundKey::new(ring, k).unwrap(),
                nonce,
            )),
            None => SealingKey::Default(AeadSealingKey::new(
                UnboundKey::new(self.0, k).unwrap(),
                nonce,
            )),
        })
    }
}

/// sftpgate: which library seals and opens AES-GCM in this process. aws-lc (russh's choice)
/// has fast AES-GCM code for AES-NI with AVX (the `aesni_gcm` "6x" code) and for VAES with
/// AVX-512, but none for VAES with AVX2 only (AMD Zen 3, some Intel client parts): there it
/// runs the AES-NI code. ring 0.17.14 has BoringSSL's VAES + VPCLMULQDQ + AVX2 code, twice
/// as fast on such a CPU (docs/performance.md, "Twenty-second run"). The bytes are the same
/// either way (AES-GCM is deterministic).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AesGcmLibrary {
    /// aws-lc, as upstream russh.
    AwsLc,
    /// ring.
    Ring,
}

/// The library of this process, fixed by the first AES-GCM key or [`set_aes_gcm_library`].
static AES_GCM_LIBRARY: std::sync::OnceLock<AesGcmLibrary> = std::sync::OnceLock::new();

impl AesGcmLibrary {
    /// The faster one on this CPU: ring where it has VAES, VPCLMULQDQ and AVX2 but not
    /// AVX-512, aws-lc everywhere else.
    pub fn for_this_cpu() -> AesGcmLibrary {
        #[cfg(target_arch = "x86_64")]
        {
            let vaes = std::arch::is_x86_feature_detected!("vaes")
                && std::arch::is_x86_feature_detected!("vpclmulqdq")
                && std::arch::is_x86_feature_detected!("avx2");
            // What aws-lc asks for its AVX-512 code (crypto_gcm_avx512_enabled).
            let avx512 = std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512dq")
                && std::arch::is_x86_feature_detected!("avx512vl");
            if vaes && !avx512 {
                return AesGcmLibrary::Ring;
            }
        }
        AesGcmLibrary::AwsLc
    }
}

/// The library AES-GCM keys use in this process: the one [`set_aes_gcm_library`] chose, or
/// [`AesGcmLibrary::for_this_cpu`] if nothing chose before the first key was made.
pub fn aes_gcm_library() -> AesGcmLibrary {
    *AES_GCM_LIBRARY.get_or_init(AesGcmLibrary::for_this_cpu)
}

/// Chooses the library for the whole process (one choice per process, so that no key
/// changes library midway). `Err` with the library in use when another one was already
/// chosen or a key was already made with it.
pub fn set_aes_gcm_library(library: AesGcmLibrary) -> Result<(), AesGcmLibrary> {
    match *AES_GCM_LIBRARY.get_or_init(|| library) {
        current if current == library => Ok(()),
        current => Err(current),
    }
}

impl GcmCipher {
    /// ring's algorithm for this one, where ring seals AES-GCM in this process.
    fn ring_algorithm(&self) -> Option<&'static ring_aead::Algorithm> {
        if aes_gcm_library() != AesGcmLibrary::Ring {
            return None;
        }
        match self.0.key_len() {
            16 => Some(&ring_aead::AES_128_GCM),
            32 => Some(&ring_aead::AES_256_GCM),
            _ => None,
        }
    }
}

enum OpeningKey {
    Default(AeadOpeningKey<Nonce>),
    Ring(ring_aead::OpeningKey<Nonce>),
}

enum SealingKey {
    Default(AeadSealingKey<Nonce>),
    Ring(ring_aead::SealingKey<Nonce>),
}

struct Nonce([u8; NONCE_LEN]);

impl Nonce {
    /// The nonce to use now; the next one is this one plus 1 (big-endian).
    fn next(&mut self) -> [u8; NONCE_LEN] {
        let mut previous_nonce = [0u8; NONCE_LEN];
        #[allow(clippy::indexing_slicing)] // length checked
        previous_nonce.clone_from_slice(&self.0[..]);
        let mut carry = 1;
        #[allow(clippy::indexing_slicing)] // length checked
        for i in (0..NONCE_LEN).rev() {
            let n = self.0[i] as u16 + carry;
            self.0[i] = n as u8;
            carry = n >> 8;
        }
        previous_nonce
    }
}

impl NonceSequence for Nonce {
    fn advance(&mut self) -> Result<AeadNonce, Unspecified> {
        Ok(AeadNonce::assume_unique_for_key(self.next()))
    }
}

impl ring_aead::NonceSequence for Nonce {
    fn advance(&mut self) -> Result<ring_aead::Nonce, ring::error::Unspecified> {
        Ok(ring_aead::Nonce::assume_unique_for_key(self.next()))
    }
}

impl super::OpeningKey for OpeningKey {
    fn decrypt_packet_length(
        &self,
        _sequence_number: u32,
        encrypted_packet_length: &[u8],
    ) -> [u8; 4] {
        // Fine because of self.packet_length_to_read_for_block_length()
        #[allow(clippy::unwrap_used, clippy::indexing_slicing)]
        encrypted_packet_length.try_into().unwrap()
    }

    fn tag_len(&self) -> usize {
        match self {
            Self::Default(key) => key.algorithm().tag_len(),
            Self::Ring(key) => ring_aead::BoundKey::algorithm(key).tag_len(),
        }
    }

    fn open<'a>(
        &mut self,
        _sequence_number: u32,
        ciphertext_and_tag: &'a mut [u8],
    ) -> Result<&'a [u8], Error> {
        // Packet length is sent unencrypted
        let mut packet_length = [0; super::PACKET_LENGTH_LEN];

        #[allow(clippy::indexing_slicing)] // length checked
        packet_length.clone_from_slice(&ciphertext_and_tag[..super::PACKET_LENGTH_LEN]);

        #[allow(clippy::indexing_slicing)] // length checked
        let in_out = &mut ciphertext_and_tag[super::PACKET_LENGTH_LEN..];
        let buf = match self {
            Self::Default(key) => key
                .open_in_place(Aad::from(&packet_length), in_out)
                .map_err(|_| Error::DecryptionError)?,
            Self::Ring(key) => key
                .open_in_place(ring_aead::Aad::from(&packet_length), in_out)
                .map_err(|_| Error::DecryptionError)?,
        };

        Ok(buf)
    }
}

impl super::SealingKey for SealingKey {
    fn padding_length(&self, payload: &[u8]) -> usize {
        let block_size = 16;
        let extra_len = super::PACKET_LENGTH_LEN + super::PADDING_LENGTH_LEN;
        let padding_len = if payload.len() + extra_len <= super::MINIMUM_PACKET_LEN {
            super::MINIMUM_PACKET_LEN - payload.len() - super::PADDING_LENGTH_LEN
        } else {
            block_size - ((super::PADDING_LENGTH_LEN + payload.len()) % block_size)
        };
        if padding_len < super::PACKET_LENGTH_LEN {
            padding_len + block_size
        } else {
            padding_len
        }
    }

    fn fill_padding(&self, padding_out: &mut [u8]) {
        safe_rng().fill_bytes(padding_out);
    }

    fn tag_len(&self) -> usize {
        match self {
            Self::Default(key) => key.algorithm().tag_len(),
            Self::Ring(key) => ring_aead::BoundKey::algorithm(key).tag_len(),
        }
    }

    fn seal(
        &mut self,
        _sequence_number: u32,
        plaintext_in_ciphertext_out: &mut [u8],
        tag: &mut [u8],
    ) {
        // Packet length is received unencrypted
        let mut packet_length = [0; super::PACKET_LENGTH_LEN];
        #[allow(clippy::indexing_slicing)] // length checked
        packet_length.clone_from_slice(&plaintext_in_ciphertext_out[..super::PACKET_LENGTH_LEN]);

        #[allow(clippy::indexing_slicing)]
        let in_out = &mut plaintext_in_ciphertext_out[super::PACKET_LENGTH_LEN..];
        #[allow(clippy::unwrap_used)]
        match self {
            Self::Default(key) => {
                let tag_out = key
                    .seal_in_place_separate_tag(Aad::from(&packet_length), in_out)
                    .unwrap();
                tag.clone_from_slice(tag_out.as_ref());
            }
            Self::Ring(key) => {
                let tag_out = key
                    .seal_in_place_separate_tag(ring_aead::Aad::from(&packet_length), in_out)
                    .unwrap();
                tag.clone_from_slice(tag_out.as_ref());
            }
        }
    }
}
