//! Triple DES (legacy; refused by the strict personality, see `mechanism::legacy`):
//! `CKM_DES2_KEY_GEN`, `CKM_DES3_KEY_GEN`, and `CKM_DES3_ECB`, `CKM_DES3_CBC`,
//! `CKM_DES3_CBC_PAD` over `CKK_DES2` (16 bytes, K1 K2 K1) and `CKK_DES3` (24 bytes) keys.
//!
//! Key rules (PKCS#11 "DES2/DES3 secret key objects", FIPS 46-3, SP 800-67):
//! - generated keys have odd parity in every byte, and no weak or semi-weak component, nor two
//!   equal adjacent components (which make EDE single DES): such draws are made again;
//! - a key given to `C_CreateObject` or `C_UnwrapKey` must have odd parity ("attempting to
//!   create or unwrap a DES3 key with incorrect parity will return an error"):
//!   `CKR_ATTRIBUTE_VALUE_INVALID`, or `CKR_WRAPPED_KEY_INVALID` when unwrapped. Imported
//!   keys with a weak component are accepted (the specification asks nothing of them; a
//!   migrated key is what it is).
//!
//! The modes are AES's (`aes::BlockMode` over a 64-bit block): multi-part, zero padding of
//! wrapped keys for ECB/CBC, PKCS#7 for CBC_PAD, one code for any padding failure.

use std::sync::Arc;

use bridge::{Attribute, Error, MechanismInfo, MechanismParams, Result, Template};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::aes::{BlockMode, Family};
use super::{Generated, Key, Mechanism, no_params};
use crate::crypto::des::{DES_BLOCK, Des3Key, has_odd_parity, is_strong, set_odd_parity};
use crate::crypto::{BlockCipher, fill_random};

/// Key sizes in bytes, as `C_GetMechanismInfo` reports them (DES2 16, DES3 24).
fn info_between(min: CK_ULONG, max: CK_ULONG, flags: CK_FLAGS) -> MechanismInfo {
    MechanismInfo {
        min_key_size: min,
        max_key_size: max,
        flags: CKF_HW | flags,
    }
}

fn modes_info(flags: CK_FLAGS) -> MechanismInfo {
    info_between(16, 24, flags)
}

/// The cached expanded form of a DES2 or DES3 key.
fn des3_key(key: &Key<'_>) -> Result<Arc<dyn BlockCipher>> {
    let value = key
        .secrets
        .get(CKA_VALUE)
        .ok_or(Error::KeyTypeInconsistent)?;
    let k = key.obj.material.parsed(|| Des3Key::new(value.expose()))?;
    Ok(k as Arc<dyn BlockCipher>)
}

static DES3: Family = Family {
    key_types: &[CKK_DES2, CKK_DES3],
    block: DES_BLOCK,
    info: modes_info,
    cipher: des3_key,
};

pub(crate) static DES3_ECB: BlockMode = BlockMode::ecb(CKM_DES3_ECB, &DES3);
pub(crate) static DES3_CBC: BlockMode = BlockMode::cbc(CKM_DES3_CBC, &DES3);
pub(crate) static DES3_CBC_PAD: BlockMode = BlockMode::cbc_pad(CKM_DES3_CBC_PAD, &DES3);

/// `CKM_DES2_KEY_GEN` and `CKM_DES3_KEY_GEN`.
pub(crate) struct DesKeyGen {
    ty: CK_MECHANISM_TYPE,
    key_type: CK_KEY_TYPE,
    len: usize,
}

pub(crate) static DES2_KEY_GEN: DesKeyGen = DesKeyGen {
    ty: CKM_DES2_KEY_GEN,
    key_type: CKK_DES2,
    len: 16,
};
pub(crate) static DES3_KEY_GEN: DesKeyGen = DesKeyGen {
    ty: CKM_DES3_KEY_GEN,
    key_type: CKK_DES3,
    len: 24,
};

impl Mechanism for DesKeyGen {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        self.ty
    }

    fn info(&self) -> MechanismInfo {
        let n = CK_ULONG::try_from(self.len).unwrap_or_default();
        info_between(n, n, CKF_GENERATE)
    }

    /// The key length is the key type's; a `CKA_VALUE_LEN` in the template must say the same
    /// (`CKR_ATTRIBUTE_VALUE_INVALID` otherwise).
    fn generate_key(&self, template: &Template, params: &MechanismParams) -> Result<Generated> {
        no_params(params)?;
        let len = CK_ULONG::try_from(self.len).map_err(|_| Error::Internal("des length"))?;
        if let Some(asked) = template
            .get(CKA_VALUE_LEN)
            .map(Attribute::as_ulong)
            .transpose()?
        {
            if asked != len {
                return Err(Error::AttributeValueInvalid);
            }
        }
        let mut value = Zeroizing::new(vec![0u8; self.len]);
        loop {
            fill_random(&mut value)?;
            set_odd_parity(&mut value);
            if is_strong(&value) {
                break;
            }
        }
        Ok(Generated {
            class: CKO_SECRET_KEY,
            key_type: self.key_type,
            attrs: vec![Attribute::bytes(CKA_VALUE, value.to_vec())],
        })
    }
}

/// The import rule for `CKK_DES2`/`CKK_DES3` values: the length of the type, odd parity.
pub(super) fn check_value(key_type: CK_KEY_TYPE, value: &[u8]) -> Result<()> {
    let len = if key_type == CKK_DES2 { 16 } else { 24 };
    if value.len() == len && has_odd_parity(value) {
        Ok(())
    } else {
        Err(Error::AttributeValueInvalid)
    }
}
