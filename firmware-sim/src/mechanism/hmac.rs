//! HMAC over SHA-1, SHA-2 (with SHA-512/224 and /256), SHA-3 and MD5 (legacy): `CKM_<hash>_HMAC` (full-length MAC) and
//! `CKM_<hash>_HMAC_GENERAL` (`CK_MAC_GENERAL_PARAMS`: 1 to the hash length).
//!
//! Keys: `CKK_GENERIC_SECRET`, the `CKK_<hash>_HMAC` type of the same hash, and `CKK_AES`
//! (pkcs11-tool and some applications MAC with AES-typed keys). Key sizes 1 to 512 bytes.
//! Verification compares in constant time.

use std::sync::Arc;

use bridge::{Error, MechanismInfo, MechanismParams, Result};
use cryptoki_sys::*;

use super::{Key, Mechanism, Output, SIGN_VERIFY, SignOp, VerifyOp, no_params};
use crate::crypto::mac::{HmacCtx, HmacKeys, MacHash};
use crate::crypto::{Hash, RcHash, ct_eq};
use crate::object::Object;

/// Key sizes in bytes, as `C_GetMechanismInfo` reports them (HMAC and generic secrets).
pub(super) const KEY_MIN: CK_ULONG = 1;
/// See [`KEY_MIN`].
pub(super) const KEY_MAX: CK_ULONG = 512;

/// An HMAC mechanism.
pub(crate) struct Hmac {
    ty: CK_MECHANISM_TYPE,
    hash: MacHash,
    /// The `CKK_*_HMAC` key type of this hash.
    key_type: CK_KEY_TYPE,
    general: bool,
}

macro_rules! hmac_pair {
    ($full:ident, $general:ident, $ckm:ident, $ckm_general:ident, $hash:expr, $ckk:ident) => {
        pub(crate) static $full: Hmac = Hmac {
            ty: $ckm,
            hash: $hash,
            key_type: $ckk,
            general: false,
        };
        pub(crate) static $general: Hmac = Hmac {
            ty: $ckm_general,
            hash: $hash,
            key_type: $ckk,
            general: true,
        };
    };
}

hmac_pair!(
    SHA_1_HMAC,
    SHA_1_HMAC_GENERAL,
    CKM_SHA_1_HMAC,
    CKM_SHA_1_HMAC_GENERAL,
    MacHash::Digest(Hash::Sha1),
    CKK_SHA_1_HMAC
);
hmac_pair!(
    SHA224_HMAC,
    SHA224_HMAC_GENERAL,
    CKM_SHA224_HMAC,
    CKM_SHA224_HMAC_GENERAL,
    MacHash::Digest(Hash::Sha224),
    CKK_SHA224_HMAC
);
hmac_pair!(
    SHA256_HMAC,
    SHA256_HMAC_GENERAL,
    CKM_SHA256_HMAC,
    CKM_SHA256_HMAC_GENERAL,
    MacHash::Digest(Hash::Sha256),
    CKK_SHA256_HMAC
);
hmac_pair!(
    SHA384_HMAC,
    SHA384_HMAC_GENERAL,
    CKM_SHA384_HMAC,
    CKM_SHA384_HMAC_GENERAL,
    MacHash::Digest(Hash::Sha384),
    CKK_SHA384_HMAC
);
hmac_pair!(
    SHA512_HMAC,
    SHA512_HMAC_GENERAL,
    CKM_SHA512_HMAC,
    CKM_SHA512_HMAC_GENERAL,
    MacHash::Digest(Hash::Sha512),
    CKK_SHA512_HMAC
);
hmac_pair!(
    SHA3_224_HMAC,
    SHA3_224_HMAC_GENERAL,
    CKM_SHA3_224_HMAC,
    CKM_SHA3_224_HMAC_GENERAL,
    MacHash::Rc(RcHash::Sha3_224),
    CKK_SHA3_224_HMAC
);
hmac_pair!(
    MD5_HMAC,
    MD5_HMAC_GENERAL,
    CKM_MD5_HMAC,
    CKM_MD5_HMAC_GENERAL,
    MacHash::Rc(RcHash::Md5),
    CKK_MD5_HMAC
);
hmac_pair!(
    SHA512_224_HMAC,
    SHA512_224_HMAC_GENERAL,
    CKM_SHA512_224_HMAC,
    CKM_SHA512_224_HMAC_GENERAL,
    MacHash::Rc(RcHash::Sha512_224),
    CKK_SHA512_224_HMAC
);
hmac_pair!(
    SHA512_256_HMAC,
    SHA512_256_HMAC_GENERAL,
    CKM_SHA512_256_HMAC,
    CKM_SHA512_256_HMAC_GENERAL,
    MacHash::Rc(RcHash::Sha512_256),
    CKK_SHA512_256_HMAC
);
hmac_pair!(
    SHA3_256_HMAC,
    SHA3_256_HMAC_GENERAL,
    CKM_SHA3_256_HMAC,
    CKM_SHA3_256_HMAC_GENERAL,
    MacHash::Digest(Hash::Sha3_256),
    CKK_SHA3_256_HMAC
);
hmac_pair!(
    SHA3_384_HMAC,
    SHA3_384_HMAC_GENERAL,
    CKM_SHA3_384_HMAC,
    CKM_SHA3_384_HMAC_GENERAL,
    MacHash::Digest(Hash::Sha3_384),
    CKK_SHA3_384_HMAC
);
hmac_pair!(
    SHA3_512_HMAC,
    SHA3_512_HMAC_GENERAL,
    CKM_SHA3_512_HMAC,
    CKM_SHA3_512_HMAC_GENERAL,
    MacHash::Digest(Hash::Sha3_512),
    CKK_SHA3_512_HMAC
);

/// The cached HMAC keys of a MAC key object, after the key type and size checks.
pub(super) fn hmac_keys(key: &Key<'_>, own_type: CK_KEY_TYPE) -> Result<Arc<HmacKeys>> {
    let type_ok = key.obj.class() == CKO_SECRET_KEY
        && matches!(key.obj.key_type(), Some(t) if t == CKK_GENERIC_SECRET || t == CKK_AES || t == own_type);
    if !type_ok {
        return Err(Error::KeyTypeInconsistent);
    }
    let value = key
        .secrets
        .get(CKA_VALUE)
        .ok_or(Error::KeyTypeInconsistent)?;
    let len = CK_ULONG::try_from(value.len()).map_err(|_| Error::KeySizeRange)?;
    if !(KEY_MIN..=KEY_MAX).contains(&len) {
        return Err(Error::KeySizeRange);
    }
    key.obj
        .material
        .parsed(|| Ok(HmacKeys::new(value.expose())))
}

impl Hmac {
    fn start(&self, key: &Key<'_>, params: &MechanismParams) -> Result<HmacOp> {
        let full = self.hash.len();
        let len = if self.general {
            match params {
                MechanismParams::Ulong(n) => usize::try_from(*n)
                    .ok()
                    .filter(|n| (1..=full).contains(n))
                    .ok_or(Error::MechanismParamInvalid)?,
                _ => return Err(Error::MechanismParamInvalid),
            }
        } else {
            no_params(params)?;
            full
        };
        let keys = hmac_keys(key, self.key_type)?;
        Ok(HmacOp {
            ctx: Some(keys.start(self.hash)?),
            len,
        })
    }
}

impl Mechanism for Hmac {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        self.ty
    }

    fn info(&self) -> MechanismInfo {
        MechanismInfo {
            min_key_size: KEY_MIN,
            max_key_size: KEY_MAX,
            flags: CKF_HW | SIGN_VERIFY,
        }
    }

    fn check_key(&self, key: &Object, _usage: CK_ATTRIBUTE_TYPE) -> Result<()> {
        super::secret_key(key, &[CKK_GENERIC_SECRET, CKK_AES, self.key_type])
    }

    fn sign_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn SignOp>> {
        Ok(Box::new(self.start(key, params)?))
    }

    fn verify_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn VerifyOp>> {
        Ok(Box::new(self.start(key, params)?))
    }
}

struct HmacOp {
    ctx: Option<HmacCtx>,
    len: usize,
}

impl HmacOp {
    fn mac(&mut self) -> Result<Output> {
        let mut full = self
            .ctx
            .take()
            .ok_or(Error::OperationNotInitialized)?
            .finish();
        full.truncate(self.len);
        Ok(full)
    }
}

impl SignOp for HmacOp {
    fn len(&self) -> usize {
        self.len
    }

    fn update(&mut self, data: &[u8]) -> Result<()> {
        self.ctx
            .as_mut()
            .ok_or(Error::OperationNotInitialized)?
            .update(data);
        Ok(())
    }

    fn finish(&mut self) -> Result<Output> {
        self.mac()
    }
}

impl VerifyOp for HmacOp {
    fn update(&mut self, data: &[u8]) -> Result<()> {
        SignOp::update(self, data)
    }

    fn finish(&mut self, signature: &[u8]) -> Result<()> {
        if signature.len() != self.len {
            return Err(Error::SignatureLenRange);
        }
        if ct_eq(&self.mac()?, signature) {
            Ok(())
        } else {
            Err(Error::SignatureInvalid)
        }
    }
}
