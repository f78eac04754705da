//! HKDF (RFC 5869): `CKM_HKDF_DERIVE` (a secret key), `CKM_HKDF_DATA` (a data object) and
//! `CKM_HKDF_KEY_GEN` (a random `CKK_HKDF` key).
//!
//! Base keys: `CKK_HKDF` and `CKK_GENERIC_SECRET`, as the spec names them (others are
//! `CKR_KEY_TYPE_INCONSISTENT`). PRF hashes: SHA-1, SHA-256, SHA-384, SHA-512 (the ones
//! aws-lc-rs' HKDF offers); others are `CKR_MECHANISM_PARAM_INVALID`. The salt is NULL (a
//! HashLen zero salt, RFC 5869 §2.2), data, or the value of a secret key the caller may use
//! for derivation (`CKF_HKDF_SALT_KEY`). Extract only yields the PRK (HashLen bytes; a
//! different `CKA_VALUE_LEN` is `CKR_TEMPLATE_INCONSISTENT`); expanding needs `CKA_VALUE_LEN`
//! (`CKR_TEMPLATE_INCOMPLETE` without it), at most 255 × HashLen (`CKR_KEY_SIZE_RANGE`).

use bridge::{Error, MechanismInfo, MechanismParams, Result, Template};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::aes::value_len;
use super::hmac::{KEY_MAX, KEY_MIN};
use super::{DeriveCtx, Generated, Key, Mechanism, Output, no_params};
use crate::crypto::Hash;
use crate::crypto::mac::{hkdf_expand, hkdf_extract, hkdf_supports};
use crate::object::Object;

/// `CKM_HKDF_DERIVE` / `CKM_HKDF_DATA`.
pub(crate) struct HkdfDerive(CK_MECHANISM_TYPE);

pub(crate) static HKDF_DERIVE: HkdfDerive = HkdfDerive(CKM_HKDF_DERIVE);
pub(crate) static HKDF_DATA: HkdfDerive = HkdfDerive(CKM_HKDF_DATA);

impl Mechanism for HkdfDerive {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        self.0
    }

    fn info(&self) -> MechanismInfo {
        MechanismInfo {
            min_key_size: KEY_MIN,
            max_key_size: KEY_MAX,
            flags: CKF_HW | CKF_DERIVE,
        }
    }

    fn check_key(&self, key: &Object, _usage: CK_ATTRIBUTE_TYPE) -> Result<()> {
        super::secret_key(key, &[CKK_HKDF, CKK_GENERIC_SECRET])
    }

    fn derive(
        &self,
        base: &Key<'_>,
        params: &MechanismParams,
        ctx: &DeriveCtx<'_>,
    ) -> Result<Output> {
        let MechanismParams::Hkdf {
            extract,
            expand,
            prf_hash,
            salt_type,
            salt,
            salt_key,
            info,
        } = params
        else {
            return Err(Error::MechanismParamInvalid);
        };
        // HKDF_DERIVE makes keys, HKDF_DATA data objects.
        let want_class = if self.0 == CKM_HKDF_DATA {
            CKO_DATA
        } else {
            CKO_SECRET_KEY
        };
        if ctx.class != want_class {
            return Err(Error::TemplateInconsistent);
        }
        if base.obj.class() != CKO_SECRET_KEY
            || !matches!(base.obj.key_type(), Some(CKK_HKDF | CKK_GENERIC_SECRET))
        {
            return Err(Error::KeyTypeInconsistent);
        }
        let hash = Hash::from_ckm(*prf_hash)
            .filter(|h| hkdf_supports(*h))
            .ok_or(Error::MechanismParamInvalid)?;
        if !extract && !expand {
            return Err(Error::MechanismParamInvalid);
        }
        let ikm = base
            .secrets
            .get(CKA_VALUE)
            .ok_or(Error::KeyTypeInconsistent)?;
        let prk = if *extract {
            let salt: Zeroizing<Vec<u8>> = match *salt_type {
                CKF_HKDF_SALT_NULL => Zeroizing::new(vec![0u8; hash.len()]),
                CKF_HKDF_SALT_DATA => Zeroizing::new(salt.clone()),
                CKF_HKDF_SALT_KEY => (ctx.key_value)(*salt_key)?,
                _ => return Err(Error::MechanismParamInvalid),
            };
            hkdf_extract(hash, &salt, ikm.expose())?
        } else {
            Zeroizing::new(ikm.expose().to_vec())
        };
        if !expand {
            if ctx.value_len.is_some_and(|n| n != prk.len()) {
                return Err(Error::TemplateInconsistent);
            }
            return Ok(prk);
        }
        let len = ctx.value_len.ok_or(Error::TemplateIncomplete)?;
        if len == 0 {
            return Err(Error::KeySizeRange);
        }
        hkdf_expand(hash, &prk, info, len)
    }
}

/// `CKM_HKDF_KEY_GEN`: a random `CKK_HKDF` key of `CKA_VALUE_LEN` bytes (1 to 512).
pub(crate) struct HkdfKeyGen;

pub(crate) static HKDF_KEY_GEN: HkdfKeyGen = HkdfKeyGen;

impl Mechanism for HkdfKeyGen {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        CKM_HKDF_KEY_GEN
    }

    fn info(&self) -> MechanismInfo {
        MechanismInfo {
            min_key_size: KEY_MIN,
            max_key_size: KEY_MAX,
            flags: CKF_HW | CKF_GENERATE,
        }
    }

    fn generate_key(&self, template: &Template, params: &MechanismParams) -> Result<Generated> {
        no_params(params)?;
        super::generic::secret_of_len(CKK_HKDF, value_len(template)?)
    }
}
