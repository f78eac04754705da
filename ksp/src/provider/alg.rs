//! The algorithms and hashes, by their CNG names, and what each is in PKCS#11.

use cryptoki_sys::*;

use crate::blob::Curve;
use crate::error::{KResult, NOT_SUPPORTED};
use crate::types::*;

/// A key algorithm the provider supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Alg {
    /// `RSA`.
    Rsa,
    /// `ECDSA_P256` / `_P384` / `_P521`.
    Ecdsa(Curve),
    /// `ECDH_P256` / `_P384` / `_P521`.
    Ecdh(Curve),
}

const CURVES: [Curve; 3] = [Curve::P256, Curve::P384, Curve::P521];

impl Alg {
    pub(super) fn all() -> Vec<Self> {
        let mut v = vec![Self::Rsa];
        v.extend(CURVES.map(Self::Ecdsa));
        v.extend(CURVES.map(Self::Ecdh));
        v
    }

    pub(super) fn from_name(name: &str) -> Option<Self> {
        Self::all().into_iter().find(|a| a.name() == name)
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Rsa => "RSA",
            Self::Ecdsa(Curve::P256) => "ECDSA_P256",
            Self::Ecdsa(Curve::P384) => "ECDSA_P384",
            Self::Ecdsa(Curve::P521) => "ECDSA_P521",
            Self::Ecdh(Curve::P256) => "ECDH_P256",
            Self::Ecdh(Curve::P384) => "ECDH_P384",
            Self::Ecdh(Curve::P521) => "ECDH_P521",
        }
    }

    pub(super) fn group(self) -> &'static str {
        match self {
            Self::Rsa => "RSA",
            Self::Ecdsa(_) => "ECDSA",
            Self::Ecdh(_) => "ECDH",
        }
    }

    pub(super) fn class_and_operations(self) -> (u32, u32) {
        match self {
            Self::Rsa => (
                NCRYPT_ASYMMETRIC_ENCRYPTION_INTERFACE,
                NCRYPT_ASYMMETRIC_ENCRYPTION_OPERATION | NCRYPT_SIGNATURE_OPERATION,
            ),
            Self::Ecdsa(_) => (NCRYPT_SIGNATURE_INTERFACE, NCRYPT_SIGNATURE_OPERATION),
            Self::Ecdh(_) => (
                NCRYPT_SECRET_AGREEMENT_INTERFACE,
                NCRYPT_SECRET_AGREEMENT_OPERATION,
            ),
        }
    }

    pub(super) fn curve(self) -> Option<Curve> {
        match self {
            Self::Rsa => None,
            Self::Ecdsa(c) | Self::Ecdh(c) => Some(c),
        }
    }

    pub(super) fn default_usage(self) -> u32 {
        match self {
            Self::Rsa => NCRYPT_ALLOW_DECRYPT_FLAG | NCRYPT_ALLOW_SIGNING_FLAG,
            Self::Ecdsa(_) => NCRYPT_ALLOW_SIGNING_FLAG,
            Self::Ecdh(_) => NCRYPT_ALLOW_KEY_AGREEMENT_FLAG,
        }
    }
}

/// A hash named by its CNG identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Hash {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    pub(super) fn from_name(name: &str) -> KResult<Self> {
        Ok(match name {
            "SHA1" => Self::Sha1,
            "SHA256" => Self::Sha256,
            "SHA384" => Self::Sha384,
            "SHA512" => Self::Sha512,
            _ => return Err(NOT_SUPPORTED),
        })
    }

    pub(super) fn len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    pub(super) fn ckm(self) -> CK_MECHANISM_TYPE {
        match self {
            Self::Sha1 => CKM_SHA_1,
            Self::Sha256 => CKM_SHA256,
            Self::Sha384 => CKM_SHA384,
            Self::Sha512 => CKM_SHA512,
        }
    }

    pub(super) fn mgf(self) -> CK_RSA_PKCS_MGF_TYPE {
        match self {
            Self::Sha1 => CKG_MGF1_SHA1,
            Self::Sha256 => CKG_MGF1_SHA256,
            Self::Sha384 => CKG_MGF1_SHA384,
            Self::Sha512 => CKG_MGF1_SHA512,
        }
    }

    /// The DER `DigestInfo` prefix of PKCS#1 v1.5 signatures (RFC 8017 §9.2, note 1), as the
    /// `rsa` crate builds it from the hash's OID.
    pub(super) fn digest_info_prefix(self) -> Box<[u8]> {
        match self {
            Self::Sha1 => rsa::Pkcs1v15Sign::new::<sha1::Sha1>(),
            Self::Sha256 => rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
            Self::Sha384 => rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
            Self::Sha512 => rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
        }
        .prefix
    }

    pub(super) fn digest_alg(self) -> &'static aws_lc_rs::digest::Algorithm {
        match self {
            Self::Sha1 => &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => &aws_lc_rs::digest::SHA256,
            Self::Sha384 => &aws_lc_rs::digest::SHA384,
            Self::Sha512 => &aws_lc_rs::digest::SHA512,
        }
    }

    pub(super) fn hmac_alg(self) -> aws_lc_rs::hmac::Algorithm {
        match self {
            Self::Sha1 => aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => aws_lc_rs::hmac::HMAC_SHA256,
            Self::Sha384 => aws_lc_rs::hmac::HMAC_SHA384,
            Self::Sha512 => aws_lc_rs::hmac::HMAC_SHA512,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn digest_info_prefixes_are_rfc_8017s() {
        // RFC 8017 §9.2, note 1.
        let sha1 = [
            0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04,
            0x14,
        ];
        assert_eq!(&Hash::Sha1.digest_info_prefix()[..], &sha1[..]);
        for (h, last, len) in [
            (Hash::Sha256, 1, 0x20),
            (Hash::Sha384, 2, 0x30),
            (Hash::Sha512, 3, 0x40),
        ] {
            let prefix = [
                0x30,
                0x11 + len,
                0x30,
                0x0d,
                0x06,
                0x09,
                0x60,
                0x86,
                0x48,
                0x01,
                0x65,
                0x03,
                0x04,
                0x02,
                last,
                0x05,
                0x00,
                0x04,
                len,
            ];
            assert_eq!(&h.digest_info_prefix()[..], &prefix[..], "{h:?}");
        }
    }
    #[test]
    fn algorithms_have_names_and_classes() {
        for a in Alg::all() {
            assert_eq!(Alg::from_name(a.name()), Some(a));
        }
        assert_eq!(Alg::all().len(), 7);
        assert_eq!(Alg::from_name("DSA"), None);
    }
}
