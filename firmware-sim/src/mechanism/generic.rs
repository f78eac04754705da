//! Generic secrets: `CKM_GENERIC_SECRET_KEY_GEN` and PKCS #5 PBKDF2 key generation
//! (`CKM_PKCS5_PBKD2`, a `C_GenerateKey` mechanism: the password is in the parameter, there is
//! no base key).
//!
//! Lengths are `CKA_VALUE_LEN` bytes, 1 to 512: 0 is `CKR_ATTRIBUTE_VALUE_INVALID`, more than
//! 512 `CKR_KEY_SIZE_RANGE`.

use bridge::{Attribute, Error, MechanismInfo, MechanismParams, Result, Template};
use cryptoki_sys::*;

use super::aes::{random_secret, value_len};
use super::hmac::{KEY_MAX, KEY_MIN};
use super::{Generated, Mechanism, no_params};
use crate::crypto::Hash;
use crate::crypto::mac::pbkdf2;
use crate::object::policy;

/// A random secret of `len` bytes, within the generic bounds.
pub(super) fn secret_of_len(key_type: CK_KEY_TYPE, len: usize) -> Result<Generated> {
    check_len(len)?;
    random_secret(key_type, len)
}

fn check_len(len: usize) -> Result<()> {
    let max = usize::try_from(KEY_MAX).map_err(|_| Error::KeySizeRange)?;
    match len {
        0 => Err(Error::AttributeValueInvalid),
        n if n > max => Err(Error::KeySizeRange),
        _ => Ok(()),
    }
}

fn info(flags: CK_FLAGS) -> MechanismInfo {
    MechanismInfo {
        min_key_size: KEY_MIN,
        max_key_size: KEY_MAX,
        flags: CKF_HW | flags,
    }
}

/// `CKM_GENERIC_SECRET_KEY_GEN`.
pub(crate) struct GenericKeyGen;

pub(crate) static GENERIC_SECRET_KEY_GEN: GenericKeyGen = GenericKeyGen;

impl Mechanism for GenericKeyGen {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        CKM_GENERIC_SECRET_KEY_GEN
    }

    fn info(&self) -> MechanismInfo {
        info(CKF_GENERATE)
    }

    fn generate_key(&self, template: &Template, params: &MechanismParams) -> Result<Generated> {
        no_params(params)?;
        secret_of_len(CKK_GENERIC_SECRET, value_len(template)?)
    }
}

/// `CKM_PKCS5_PBKD2` (`CK_PKCS5_PBKD2_PARAMS2`): PRFs HMAC-SHA-1/256/384/512, salt source
/// `CKZ_SALT_SPECIFIED`. The template names the key type (`CKR_TEMPLATE_INCOMPLETE`
/// without it) and, except for nothing of fixed length here, `CKA_VALUE_LEN`.
pub(crate) struct Pbkd2;

pub(crate) static PKCS5_PBKD2: Pbkd2 = Pbkd2;

impl Mechanism for Pbkd2 {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        CKM_PKCS5_PBKD2
    }

    fn info(&self) -> MechanismInfo {
        info(CKF_GENERATE)
    }

    fn generate_key(&self, template: &Template, params: &MechanismParams) -> Result<Generated> {
        let MechanismParams::Pbkdf2 {
            salt_source,
            salt,
            iterations,
            prf,
            prf_data,
            password,
        } = params
        else {
            return Err(Error::MechanismParamInvalid);
        };
        let hash = match *prf {
            CKP_PKCS5_PBKD2_HMAC_SHA1 => Hash::Sha1,
            CKP_PKCS5_PBKD2_HMAC_SHA256 => Hash::Sha256,
            CKP_PKCS5_PBKD2_HMAC_SHA384 => Hash::Sha384,
            CKP_PKCS5_PBKD2_HMAC_SHA512 => Hash::Sha512,
            _ => return Err(Error::MechanismParamInvalid),
        };
        if *salt_source != CKZ_SALT_SPECIFIED || !prf_data.is_empty() {
            return Err(Error::MechanismParamInvalid);
        }
        let iterations = u32::try_from(*iterations)
            .ok()
            .filter(|i| *i > 0)
            .ok_or(Error::MechanismParamInvalid)?;
        let key_type = template
            .get(CKA_KEY_TYPE)
            .ok_or(Error::TemplateIncomplete)?
            .as_ulong()?;
        if !policy::is_secret_key_type(key_type) {
            return Err(Error::TemplateInconsistent);
        }
        let len = value_len(template)?;
        if key_type == CKK_AES && !matches!(len, 16 | 24 | 32) {
            return Err(Error::AttributeValueInvalid);
        }
        check_len(len)?;
        let value = pbkdf2(hash, password, salt, iterations, len)?;
        Ok(Generated {
            class: CKO_SECRET_KEY,
            key_type,
            attrs: vec![Attribute::bytes(CKA_VALUE, value.to_vec())],
        })
    }
}
