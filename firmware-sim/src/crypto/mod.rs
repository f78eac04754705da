//! The one place that names crypto crates. Mechanism files, the token and the store call these
//! small functions; a crate upgrade touches this folder only.
//!
//! Primary provider: `aws-lc-rs` (docs/architecture.md §5).

pub(crate) mod aeads;
pub(crate) mod aes;
pub(crate) mod des;
pub(crate) mod ec;
pub(crate) mod mac;
pub(crate) mod rsa;
pub(crate) mod sharing;

use std::fmt;

use aws_lc_rs::{aead, digest, pbkdf2, rand};
use bridge::{Error, Result};
use zeroize::{Zeroize, Zeroizing};

/// Key bytes or other secret material: not `Clone`, no serialisation, `Debug` prints nothing,
/// zeroized on drop.
pub(crate) struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Wraps bytes (taking ownership, so no stray copy remains with the caller).
    pub(crate) fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// `len` fresh random bytes.
    pub(crate) fn random(len: usize) -> Result<Self> {
        let mut v = Zeroizing::new(vec![0u8; len]);
        fill_random(&mut v)?;
        Ok(Self(v))
    }

    /// Copies `bytes` into a new secret.
    pub(crate) fn copy_from(bytes: &[u8]) -> Self {
        Self(Zeroizing::new(bytes.to_vec()))
    }

    /// The bytes, for the crypto that needs them.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.0
    }

    /// A second copy, for the rare place that must hold two (re-encryption under a new key).
    pub(crate) fn duplicate(&self) -> Self {
        Self::copy_from(&self.0)
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A block cipher the block modes of `mechanism` run over (AES, triple DES): ECB and CBC on
/// whole blocks, in place.
pub(crate) trait BlockCipher: Send + Sync {
    /// The block size in bytes.
    fn block_len(&self) -> usize;
    /// ECB-encrypts whole blocks.
    fn ecb_encrypt(&self, buf: &mut [u8]) -> Result<()>;
    /// ECB-decrypts whole blocks.
    fn ecb_decrypt(&self, buf: &mut [u8]) -> Result<()>;
    /// CBC-encrypts whole blocks chaining from `iv` (one block), which becomes the last
    /// ciphertext block so that the next call continues the chain.
    fn cbc_encrypt(&self, iv: &mut [u8], buf: &mut [u8]) -> Result<()>;
    /// CBC-decrypts whole blocks chaining from `iv`, which becomes the last ciphertext block.
    fn cbc_decrypt(&self, iv: &mut [u8], buf: &mut [u8]) -> Result<()>;
}

/// Fills `out` from the system CSPRNG.
pub(crate) fn fill_random(out: &mut [u8]) -> Result<()> {
    rand::fill(out).map_err(|_| Error::Internal("random generator failed"))
}

/// `n` random bytes (not secret: salts, nonces, ids).
pub(crate) fn random_vec(n: usize) -> Result<Vec<u8>> {
    let mut v = vec![0u8; n];
    fill_random(&mut v)?;
    Ok(v)
}

/// Hash algorithms the firmware knows, by their `CKM_*` digest mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hash {
    /// SHA-1.
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
    /// SHA3-256.
    Sha3_256,
    /// SHA3-384.
    Sha3_384,
    /// SHA3-512.
    Sha3_512,
}

impl Hash {
    /// The hash whose digest mechanism is `ckm` (`CKM_SHA256`, ...).
    pub(crate) fn from_ckm(ckm: cryptoki_sys::CK_MECHANISM_TYPE) -> Option<Self> {
        use cryptoki_sys::*;
        Some(match ckm {
            CKM_SHA_1 => Self::Sha1,
            CKM_SHA224 => Self::Sha224,
            CKM_SHA256 => Self::Sha256,
            CKM_SHA384 => Self::Sha384,
            CKM_SHA512 => Self::Sha512,
            CKM_SHA3_256 => Self::Sha3_256,
            CKM_SHA3_384 => Self::Sha3_384,
            CKM_SHA3_512 => Self::Sha3_512,
            _ => return None,
        })
    }

    /// The digest mechanism.
    pub(crate) fn ckm(self) -> cryptoki_sys::CK_MECHANISM_TYPE {
        use cryptoki_sys::*;
        match self {
            Self::Sha1 => CKM_SHA_1,
            Self::Sha224 => CKM_SHA224,
            Self::Sha256 => CKM_SHA256,
            Self::Sha384 => CKM_SHA384,
            Self::Sha512 => CKM_SHA512,
            Self::Sha3_256 => CKM_SHA3_256,
            Self::Sha3_384 => CKM_SHA3_384,
            Self::Sha3_512 => CKM_SHA3_512,
        }
    }

    pub(crate) fn algorithm(self) -> &'static digest::Algorithm {
        match self {
            Self::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha224 => &digest::SHA224,
            Self::Sha256 => &digest::SHA256,
            Self::Sha384 => &digest::SHA384,
            Self::Sha512 => &digest::SHA512,
            Self::Sha3_256 => &digest::SHA3_256,
            Self::Sha3_384 => &digest::SHA3_384,
            Self::Sha3_512 => &digest::SHA3_512,
        }
    }

    /// Output length in bytes.
    pub(crate) fn len(self) -> usize {
        self.algorithm().output_len()
    }

    /// One-shot digest.
    #[allow(dead_code)] // used by tests and the MAC/derive families
    pub(crate) fn digest(self, data: &[u8]) -> Vec<u8> {
        digest::digest(self.algorithm(), data).as_ref().to_vec()
    }

    /// A streaming context.
    pub(crate) fn start(self) -> Hasher {
        Hasher(digest::Context::new(self.algorithm()))
    }
}

/// Hashes only RustCrypto offers (aws-lc-rs has none of them): MD5 (legacy: practical
/// collisions), SHA3-224, SHA-512/224 and SHA-512/256. Kept apart from [`Hash`], which the
/// signature families take from aws-lc-rs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RcHash {
    /// MD5 (RFC 1321).
    Md5,
    /// SHA3-224.
    Sha3_224,
    /// SHA-512/224.
    Sha512_224,
    /// SHA-512/256.
    Sha512_256,
}

impl RcHash {
    /// The digest mechanism.
    pub(crate) fn ckm(self) -> cryptoki_sys::CK_MECHANISM_TYPE {
        use cryptoki_sys::*;
        match self {
            Self::Md5 => CKM_MD5,
            Self::Sha3_224 => CKM_SHA3_224,
            Self::Sha512_224 => CKM_SHA512_224,
            Self::Sha512_256 => CKM_SHA512_256,
        }
    }

    /// Output length in bytes.
    pub(crate) fn len(self) -> usize {
        match self {
            Self::Md5 => 16,
            Self::Sha3_224 | Self::Sha512_224 => 28,
            Self::Sha512_256 => 32,
        }
    }

    /// A streaming context.
    pub(crate) fn start(self) -> Box<dyn sha2::digest::DynDigest + Send> {
        match self {
            Self::Md5 => Box::new(md5::Md5::default()),
            Self::Sha3_224 => Box::new(sha3::Sha3_224::default()),
            Self::Sha512_224 => Box::new(sha2::Sha512_224::default()),
            Self::Sha512_256 => Box::new(sha2::Sha512_256::default()),
        }
    }
}

/// A streaming digest.
#[derive(Clone)]
pub(crate) struct Hasher(digest::Context);

impl Hasher {
    /// Absorbs data.
    pub(crate) fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest.
    pub(crate) fn finish(self) -> Vec<u8> {
        self.0.finish().as_ref().to_vec()
    }
}

/// PBKDF2-HMAC-SHA256 into a 32-byte key.
pub(crate) fn pbkdf2_sha256(secret: &[u8], salt: &[u8], iterations: u32) -> Result<Secret> {
    let iterations =
        std::num::NonZeroU32::new(iterations).ok_or(Error::Internal("kdf iterations"))?;
    let mut out = Zeroizing::new(vec![0u8; 32]);
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        iterations,
        salt,
        secret,
        &mut out,
    );
    Ok(Secret(out))
}

/// Size of the nonce `seal` prepends.
pub(crate) const SEAL_NONCE_LEN: usize = 12;

/// Size of the tag `seal` appends.
pub(crate) const SEAL_TAG_LEN: usize = 16;

/// AES-256-GCM under `key` (32 bytes) with a fresh random nonce: `nonce ‖ ciphertext ‖ tag`.
pub(crate) fn seal(key: &Secret, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, key.expose())
        .map_err(|_| Error::Internal("storage key"))?;
    let key = aead::LessSafeKey::new(unbound);
    let mut nonce = [0u8; SEAL_NONCE_LEN];
    fill_random(&mut nonce)?;
    let mut buf = Vec::with_capacity(SEAL_NONCE_LEN + plaintext.len() + 16);
    buf.extend_from_slice(&nonce);
    buf.extend_from_slice(plaintext);
    let mut body = buf.split_off(SEAL_NONCE_LEN);
    key.seal_in_place_append_tag(
        aead::Nonce::assume_unique_for_key(nonce),
        aead::Aad::from(aad),
        &mut body,
    )
    .map_err(|_| Error::Internal("seal"))?;
    buf.extend_from_slice(&body);
    body.zeroize();
    Ok(buf)
}

/// Opens what `seal` produced; `None` if the key, the AAD or the bytes are wrong.
pub(crate) fn open(key: &Secret, aad: &[u8], sealed: &[u8]) -> Option<Secret> {
    let (nonce, body) = sealed.split_at_checked(SEAL_NONCE_LEN)?;
    let nonce: [u8; SEAL_NONCE_LEN] = nonce.try_into().ok()?;
    let unbound = aead::UnboundKey::new(&aead::AES_256_GCM, key.expose()).ok()?;
    let key = aead::LessSafeKey::new(unbound);
    let mut buf = Zeroizing::new(body.to_vec());
    let plain_len = key
        .open_in_place(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(aad),
            &mut buf,
        )
        .ok()?
        .len();
    buf.truncate(plain_len);
    Some(Secret(buf))
}

/// Constant-time equality.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding() {
        let k = Secret::random(32).unwrap();
        let c = seal(&k, b"aad", b"hello").unwrap();
        assert_eq!(open(&k, b"aad", &c).unwrap().expose(), b"hello");
        assert!(open(&k, b"other", &c).is_none());
        let k2 = Secret::random(32).unwrap();
        assert!(open(&k2, b"aad", &c).is_none());
        let mut t = c.clone();
        t[15] ^= 1;
        assert!(open(&k, b"aad", &t).is_none());
        assert!(open(&k, b"aad", &c[..5]).is_none());
    }

    #[test]
    fn secret_debug_prints_nothing() {
        let s = Secret::copy_from(b"topsecret");
        assert_eq!(format!("{s:?}"), "Secret(..)");
    }

    #[test]
    fn sha256_known_answer() {
        assert_eq!(
            Hash::Sha256.digest(b"abc"),
            [
                0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae,
                0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61,
                0xf2, 0x00, 0x15, 0xad
            ]
        );
    }
}
