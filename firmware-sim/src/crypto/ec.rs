//! Elliptic-curve primitives: ECDSA and ECDH over P-256, P-384 and P-521, and Ed25519, from
//! aws-lc-rs.
//!
//! One gap is filled from RustCrypto (docs/architecture.md §5): aws-lc-rs signs and verifies a pre-hashed
//! input only as a digest of one of its own hash lengths (at most 64 bytes), while `CKM_ECDSA`
//! on P-521 must accept any input and use its leftmost 521 bits. When that integer does not fit
//! in 512 bits, the `p521` crate signs and verifies it instead.

use std::sync::OnceLock;

use aws_lc_rs::encoding::{AsBigEndian, AsDer, EcPrivateKeyBin};
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ParsedPublicKey};
use aws_lc_rs::{agreement, digest, signature};
use bridge::{Error, Result};
use p521::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};

use super::Secret;

/// The short Weierstrass curves the firmware implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Curve {
    /// NIST P-256 (secp256r1, prime256v1).
    P256,
    /// NIST P-384 (secp384r1).
    P384,
    /// NIST P-521 (secp521r1).
    P521,
}

impl Curve {
    /// Every curve, smallest first.
    pub(crate) const ALL: [Self; 3] = [Self::P256, Self::P384, Self::P521];

    /// Length in bytes of a field element, of the scalar, and of each half of a signature
    /// (the bit lengths of p and n are equal for these curves).
    pub(crate) fn field_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
            Self::P521 => 66,
        }
    }

    /// Bit length of the base point order n.
    pub(crate) fn order_bits(self) -> usize {
        match self {
            Self::P256 => 256,
            Self::P384 => 384,
            Self::P521 => 521,
        }
    }

    /// Length of an uncompressed point `04 ‖ X ‖ Y`.
    pub(crate) fn point_len(self) -> usize {
        1 + 2 * self.field_len()
    }

    fn signing(self) -> &'static signature::EcdsaSigningAlgorithm {
        match self {
            Self::P256 => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            Self::P384 => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            Self::P521 => &signature::ECDSA_P521_SHA512_FIXED_SIGNING,
        }
    }

    fn verification(self) -> &'static signature::EcdsaVerificationAlgorithm {
        match self {
            Self::P256 => &signature::ECDSA_P256_SHA256_FIXED,
            Self::P384 => &signature::ECDSA_P384_SHA384_FIXED,
            Self::P521 => &signature::ECDSA_P521_SHA512_FIXED,
        }
    }

    /// The digest the aws-lc-rs algorithms above are bound to: `sign_digest` and
    /// `verify_digest_sig` take a value of exactly its length.
    fn digest(self) -> &'static digest::Algorithm {
        match self {
            Self::P256 => &digest::SHA256,
            Self::P384 => &digest::SHA384,
            Self::P521 => &digest::SHA512,
        }
    }

    fn agreement(self) -> &'static agreement::Algorithm {
        match self {
            Self::P256 => &agreement::ECDH_P256,
            Self::P384 => &agreement::ECDH_P384,
            Self::P521 => &agreement::ECDH_P521,
        }
    }
}

/// The integer `e` that ECDSA signs for a pre-hashed input `hash` (ANSI X9.62 §7.3, SEC 1
/// §4.1.3 step 5): the leftmost `order_bits` bits of `hash` if it is longer, else `hash`
/// itself; as `field_len` big-endian bytes.
pub(crate) fn hash_to_e(curve: Curve, hash: &[u8]) -> Vec<u8> {
    let n = curve.field_len();
    let mut e = vec![0u8; n];
    if hash.len().saturating_mul(8) > curve.order_bits() {
        // The leftmost `n` bytes, then shifted right by the bits beyond the order's length.
        let shift = 8 * n - curve.order_bits();
        let mut carry = 0u8;
        for (dst, src) in e.iter_mut().zip(hash.iter()) {
            if shift == 0 {
                *dst = *src;
            } else {
                *dst = (src >> shift) | carry;
                carry = src << (8 - shift);
            }
        }
    } else if let Some(tail) = e.get_mut(n - hash.len()..) {
        tail.copy_from_slice(hash);
    }
    e
}

/// `e` as a digest aws-lc-rs accepts for `curve`, if it fits (always, except for P-521 inputs
/// whose leftmost 521 bits do not fit in 512).
fn as_lc_digest(curve: Curve, e: &[u8]) -> Option<digest::Digest> {
    let alg = curve.digest();
    let (high, low) = e.split_at_checked(e.len().checked_sub(alg.output_len())?)?;
    if high.iter().any(|b| *b != 0) {
        return None;
    }
    digest::Digest::import_less_safe(low, alg).ok()
}

/// An EC private key, parsed once: the signing key and the agreement key over one scalar.
pub(crate) struct EcPrivateKey {
    curve: Curve,
    pair: EcdsaKeyPair,
    ecdh: agreement::PrivateKey,
    /// The RustCrypto form, built on first use by a P-521 signature over a wide input.
    wide: OnceLock<p521::ecdsa::SigningKey>,
}

impl EcPrivateKey {
    /// A fresh key.
    pub(crate) fn generate(curve: Curve) -> Result<Self> {
        let ecdh = agreement::PrivateKey::generate(curve.agreement())
            .map_err(|_| Error::Internal("ec key generation"))?;
        Self::from_ecdh(curve, ecdh)
    }

    /// The key with the big-endian scalar `scalar` of exactly `field_len` bytes; `None` when it
    /// is not in [1, n-1].
    pub(crate) fn from_scalar(curve: Curve, scalar: &[u8]) -> Option<Self> {
        let ecdh = agreement::PrivateKey::from_private_key(curve.agreement(), scalar).ok()?;
        Self::from_ecdh(curve, ecdh).ok()
    }

    fn from_ecdh(curve: Curve, ecdh: agreement::PrivateKey) -> Result<Self> {
        let scalar: EcPrivateKeyBin<'static> = ecdh
            .as_be_bytes()
            .map_err(|_| Error::Internal("ec private key"))?;
        let point = ecdh
            .compute_public_key()
            .map_err(|_| Error::Internal("ec public key"))?;
        let pair = EcdsaKeyPair::from_private_key_and_public_key(
            curve.signing(),
            scalar.as_ref(),
            point.as_ref(),
        )
        .map_err(|_| Error::Internal("ec key pair"))?;
        Ok(Self {
            curve,
            pair,
            ecdh,
            wide: OnceLock::new(),
        })
    }

    /// The curve.
    pub(crate) fn curve(&self) -> Curve {
        self.curve
    }

    /// The scalar, big-endian, `field_len` bytes.
    pub(crate) fn scalar(&self) -> Result<Secret> {
        let bin = self
            .pair
            .private_key()
            .as_be_bytes()
            .map_err(|_| Error::Internal("ec private key"))?;
        Ok(Secret::copy_from(bin.as_ref()))
    }

    /// The public point, uncompressed.
    pub(crate) fn public_point(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// The public key as a DER SubjectPublicKeyInfo.
    pub(crate) fn spki(&self) -> Result<Vec<u8>> {
        let der = self
            .pair
            .public_key()
            .as_der()
            .map_err(|_| Error::Internal("ec spki"))?;
        Ok(der.as_ref().to_vec())
    }

    /// The key as PKCS#8 v1 (RFC 5208 with an RFC 5915 ECPrivateKey, named curve).
    pub(crate) fn to_pkcs8(&self) -> Result<Secret> {
        let doc = self
            .pair
            .to_pkcs8v1()
            .map_err(|_| Error::Internal("ec pkcs8"))?;
        Ok(Secret::copy_from(doc.as_ref()))
    }

    /// Parses a PKCS#8 EC private key on one of the curves; `None` if it is not one.
    pub(crate) fn from_pkcs8(der: &[u8]) -> Option<Self> {
        Curve::ALL.into_iter().find_map(|curve| {
            let pair = EcdsaKeyPair::from_pkcs8(curve.signing(), der).ok()?;
            let scalar = pair.private_key().as_be_bytes().ok()?;
            Self::from_scalar(curve, scalar.as_ref())
        })
    }

    /// An ECDSA signature, `r ‖ s` each `field_len` bytes, over the pre-hashed input `hash`
    /// (any length; see [`hash_to_e`]).
    pub(crate) fn sign_hash(&self, hash: &[u8]) -> Result<Vec<u8>> {
        let e = hash_to_e(self.curve, hash);
        if let Some(d) = as_lc_digest(self.curve, &e) {
            let sig = self
                .pair
                .sign_digest(&d)
                .map_err(|_| Error::Internal("ecdsa sign"))?;
            return Ok(sig.as_ref().to_vec());
        }
        // Only P-521 gets here: `e` needs more than 512 bits.
        let key = match self.wide.get() {
            Some(k) => k,
            None => {
                let scalar = self.scalar()?;
                let k = p521::ecdsa::SigningKey::from_slice(scalar.expose())
                    .map_err(|_| Error::Internal("p521 key"))?;
                let _ = self.wide.set(k);
                self.wide.get().ok_or(Error::Internal("p521 key"))?
            }
        };
        let sig: p521::ecdsa::Signature = key
            .sign_prehash(&e)
            .map_err(|_| Error::Internal("ecdsa sign"))?;
        Ok(sig.to_bytes().to_vec())
    }

    /// The ECDH shared secret with the uncompressed point `peer` (the x-coordinate,
    /// `field_len` bytes); `None` if `peer` is not a point of the curve.
    pub(crate) fn agree(&self, peer: &[u8]) -> Option<Secret> {
        agreement::agree(
            &self.ecdh,
            agreement::UnparsedPublicKey::new(self.curve.agreement(), peer),
            (),
            |z| Ok(Secret::copy_from(z)),
        )
        .ok()
    }
}

/// An EC public key, parsed (and checked to be on the curve) once.
pub(crate) struct EcPublicKey {
    curve: Curve,
    key: ParsedPublicKey,
    point: Vec<u8>,
    wide: OnceLock<p521::ecdsa::VerifyingKey>,
}

impl EcPublicKey {
    /// The key with the uncompressed point `point`; `None` if it is not a point of the curve.
    pub(crate) fn from_point(curve: Curve, point: &[u8]) -> Option<Self> {
        if point.len() != curve.point_len() || point.first() != Some(&4) {
            return None;
        }
        let key = ParsedPublicKey::new(curve.verification(), point).ok()?;
        Some(Self {
            curve,
            key,
            point: point.to_vec(),
            wide: OnceLock::new(),
        })
    }

    /// The curve.
    pub(crate) fn curve(&self) -> Curve {
        self.curve
    }

    /// The public key as a DER SubjectPublicKeyInfo.
    pub(crate) fn spki(&self) -> Result<Vec<u8>> {
        let der = self.key.as_der().map_err(|_| Error::Internal("ec spki"))?;
        Ok(der.as_ref().to_vec())
    }

    /// Whether `sig` (`r ‖ s`, each exactly `field_len` bytes) is an ECDSA signature of the
    /// pre-hashed input `hash`.
    pub(crate) fn verify_hash(&self, hash: &[u8], sig: &[u8]) -> bool {
        let e = hash_to_e(self.curve, hash);
        if let Some(d) = as_lc_digest(self.curve, &e) {
            return self.key.verify_digest_sig(&d, sig).is_ok();
        }
        let key = match self.wide.get() {
            Some(k) => k,
            None => {
                let Ok(k) = p521::ecdsa::VerifyingKey::from_sec1_bytes(&self.point) else {
                    return false;
                };
                let _ = self.wide.set(k);
                let Some(k) = self.wide.get() else {
                    return false;
                };
                k
            }
        };
        let Ok(sig) = p521::ecdsa::Signature::from_slice(sig) else {
            return false;
        };
        key.verify_prehash(&e, &sig).is_ok()
    }
}

/// Length of an Ed25519 seed, public key, and half signature.
pub(crate) const ED25519_LEN: usize = 32;

/// An Ed25519 private key, parsed once.
pub(crate) struct Ed25519PrivateKey(Ed25519KeyPair);

impl Ed25519PrivateKey {
    /// A fresh key.
    pub(crate) fn generate() -> Result<Self> {
        Ed25519KeyPair::generate()
            .map(Self)
            .map_err(|_| Error::Internal("ed25519 key generation"))
    }

    /// The key with the 32-byte seed `seed` (RFC 8032 §5.1.5); `None` for another length.
    pub(crate) fn from_seed(seed: &[u8]) -> Option<Self> {
        if seed.len() != ED25519_LEN {
            return None;
        }
        Ed25519KeyPair::from_seed_unchecked(seed).ok().map(Self)
    }

    /// Parses a PKCS#8 (v1 or v2) Ed25519 private key.
    pub(crate) fn from_pkcs8(der: &[u8]) -> Option<Self> {
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .ok()
            .map(Self)
    }

    /// The 32-byte seed.
    pub(crate) fn seed(&self) -> Result<Secret> {
        let seed = self.0.seed().map_err(|_| Error::Internal("ed25519 seed"))?;
        let bin = seed
            .as_be_bytes()
            .map_err(|_| Error::Internal("ed25519 seed"))?;
        Ok(Secret::copy_from(bin.as_ref()))
    }

    /// The 32-byte public key.
    pub(crate) fn public_key(&self) -> Vec<u8> {
        self.0.public_key().as_ref().to_vec()
    }

    /// The public key as a DER SubjectPublicKeyInfo (RFC 8410).
    pub(crate) fn spki(&self) -> Result<Vec<u8>> {
        let der = self
            .0
            .public_key()
            .as_der()
            .map_err(|_| Error::Internal("ed25519 spki"))?;
        Ok(der.as_ref().to_vec())
    }

    /// The key as PKCS#8 v1 (RFC 8410, as `openssl genpkey` writes it).
    pub(crate) fn to_pkcs8(&self) -> Result<Secret> {
        let doc = self
            .0
            .to_pkcs8v1()
            .map_err(|_| Error::Internal("ed25519 pkcs8"))?;
        Ok(Secret::copy_from(doc.as_ref()))
    }

    /// The 64-byte Ed25519 signature of `msg` (RFC 8032 pure Ed25519).
    pub(crate) fn sign(&self, msg: &[u8]) -> Result<Vec<u8>> {
        self.0
            .try_sign(msg)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| Error::Internal("ed25519 sign"))
    }
}

/// An Ed25519 public key, parsed once.
pub(crate) struct Ed25519PublicKey(ParsedPublicKey);

impl Ed25519PublicKey {
    /// The key with the 32 bytes `public_key`; `None` if aws-lc-rs rejects it.
    pub(crate) fn from_bytes(public_key: &[u8]) -> Option<Self> {
        if public_key.len() != ED25519_LEN {
            return None;
        }
        ParsedPublicKey::new(&signature::ED25519, public_key)
            .ok()
            .map(Self)
    }

    /// The public key as a DER SubjectPublicKeyInfo (RFC 8410).
    pub(crate) fn spki(&self) -> Result<Vec<u8>> {
        let der = self
            .0
            .as_der()
            .map_err(|_| Error::Internal("ed25519 spki"))?;
        Ok(der.as_ref().to_vec())
    }

    /// Whether `sig` is the Ed25519 signature of `msg`.
    pub(crate) fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        self.0.verify_sig(msg, sig).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e_is_the_leftmost_order_bits() {
        // Short: left-padded.
        assert_eq!(hash_to_e(Curve::P256, &[1, 2]), {
            let mut v = vec![0u8; 32];
            v[30] = 1;
            v[31] = 2;
            v
        });
        // Long, byte-aligned order: truncated.
        let long: Vec<u8> = (0..=99).collect();
        assert_eq!(hash_to_e(Curve::P384, &long), long[..48].to_vec());
        // P-521: 66 leftmost bytes shifted right by 7 bits.
        let ff = vec![0xffu8; 70];
        let e = hash_to_e(Curve::P521, &ff);
        assert_eq!(e[0], 0x01);
        assert!(e[1..].iter().all(|b| *b == 0xff));
        // 65 bytes = 520 bits: not truncated.
        let e = hash_to_e(Curve::P521, &[0xab; 65]);
        assert_eq!(e[0], 0);
        assert!(e[1..].iter().all(|b| *b == 0xab));
    }

    #[test]
    fn scalar_out_of_range_is_refused() {
        for curve in Curve::ALL {
            assert!(EcPrivateKey::from_scalar(curve, &vec![0u8; curve.field_len()]).is_none());
            assert!(EcPrivateKey::from_scalar(curve, &vec![0xffu8; curve.field_len()]).is_none());
            let mut one = vec![0u8; curve.field_len()];
            *one.last_mut().unwrap() = 1;
            assert!(EcPrivateKey::from_scalar(curve, &one).is_some());
        }
    }

    #[test]
    fn wide_p521_inputs_sign_and_verify_through_either_path() {
        let k = EcPrivateKey::generate(Curve::P521).unwrap();
        let public = EcPublicKey::from_point(Curve::P521, &k.public_point()).unwrap();
        for hash in [
            vec![0x5a; 64],
            vec![0xa5; 66],
            vec![0x80; 100],
            vec![0x00; 80],
        ] {
            let sig = k.sign_hash(&hash).unwrap();
            assert_eq!(sig.len(), 132);
            assert!(public.verify_hash(&hash, &sig));
            let mut other = hash.clone();
            other[0] ^= 0x80;
            assert!(!public.verify_hash(&other, &sig));
        }
    }
}
