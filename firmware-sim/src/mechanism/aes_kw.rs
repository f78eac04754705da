//! AES key wrap: `CKM_AES_KEY_WRAP` (RFC 3394), `CKM_AES_KEY_WRAP_KWP` (RFC 5649),
//! `CKM_AES_KEY_WRAP_PKCS7` (RFC 3394 over PKCS#7-padded input) and `CKM_AES_KEY_WRAP_PAD`.
//!
//! `CKM_AES_KEY_WRAP_PAD` (0x210A) has two readings. PKCS#11 v2.40 defined it as PKCS#7
//! padding to the 8-byte semiblock followed by RFC 3394 (what 3.1 renamed
//! `CKM_AES_KEY_WRAP_PKCS7`, deprecating 0x210A: "CKM_AES_KEY_WRAP_KWP resp.
//! CKM_AES_KEY_WRAP_PKCS7 shall be used instead"); SoftHSMv2, OpenSSL's `id-aes*-wrap-pad` and
//! OpenSC's test scripts use it for RFC 5649. So keys move between us and those tools:
//! - without a parameter it wraps (and encrypts) as RFC 5649, and unwraps (and decrypts) either
//!   form, told apart by the initial value RFC 3394 recovers (`A6A6A6A6A6A6A6A6` for the
//!   PKCS#7 form, `A65959A6` and the length for RFC 5649; one ciphertext cannot carry both).
//!   Both forms are always tried and every failure is the one integrity outcome, so the pair
//!   is no padding oracle (and usage is checked before any of it, `Device::may_use`);
//! - a 4-byte parameter is an RFC 5649 prefix: RFC 5649 only;
//! - an 8-byte parameter is the v2.40 initial value: the PKCS#7 form only;
//! - the strict personality keeps the v2.40 reading throughout ([`AES_KEY_WRAP_PAD_STRICT`]).
//!
//! The optional parameter of the others is the initial value: 8 bytes for KEY_WRAP/PKCS7, 4
//! bytes for KWP; none means the RFC default. Single-part only.
//!
//! `CKM_AES_KEY_WRAP` zero-pads key material to a multiple of 8 bytes when wrapping (spec);
//! unwrapping returns the padded bytes (the device truncates nothing by `CKA_VALUE_LEN`), so
//! only keys of a multiple of 8 bytes round-trip unchanged under it (every AES key does).

use std::sync::Arc;

use bridge::{Error, MechanismInfo, MechanismParams, Result};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::aes::{aes_key, info, pad, unpad};
use super::{CipherOp, Key, Mechanism, Output};
use crate::crypto::aes::{AesKey, KW_DEFAULT_IV, KWP_DEFAULT_PREFIX};
use crate::crypto::ct_eq;
use crate::object::Object;

const SEMIBLOCK: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// RFC 3394.
    Kw,
    /// PKCS#7 padding + RFC 3394.
    Pkcs7,
    /// RFC 5649.
    Kwp,
    /// `CKM_AES_KEY_WRAP_PAD` without a parameter: RFC 5649 out, either RFC 5649 or the
    /// PKCS#7 form in.
    Pad,
}

/// One of the AES key-wrap mechanisms.
pub(crate) struct KeyWrap {
    ty: CK_MECHANISM_TYPE,
    kind: Kind,
}

pub(crate) static AES_KEY_WRAP: KeyWrap = KeyWrap {
    ty: CKM_AES_KEY_WRAP,
    kind: Kind::Kw,
};
pub(crate) static AES_KEY_WRAP_PAD: KeyWrap = KeyWrap {
    ty: CKM_AES_KEY_WRAP_PAD,
    kind: Kind::Pad,
};
/// `CKM_AES_KEY_WRAP_PAD` for the strict personality: the v2.40 reading (PKCS#7 + RFC 3394)
/// only. Not in the mechanism table: `mechanism::lookup_for` chooses it.
pub(crate) static AES_KEY_WRAP_PAD_STRICT: KeyWrap = KeyWrap {
    ty: CKM_AES_KEY_WRAP_PAD,
    kind: Kind::Pkcs7,
};
pub(crate) static AES_KEY_WRAP_KWP: KeyWrap = KeyWrap {
    ty: CKM_AES_KEY_WRAP_KWP,
    kind: Kind::Kwp,
};
pub(crate) static AES_KEY_WRAP_PKCS7: KeyWrap = KeyWrap {
    ty: CKM_AES_KEY_WRAP_PKCS7,
    kind: Kind::Pkcs7,
};

/// Why an unwrap failed, before it is mapped to the operation's code.
enum Fail {
    Length,
    Integrity,
    Other(Error),
}

impl KeyWrap {
    /// The construction and the initial value `params` select.
    fn resolve(&self, params: &MechanismParams) -> Result<(Kind, Vec<u8>)> {
        let given = match params {
            MechanismParams::None => None,
            MechanismParams::Bytes(b) if b.is_empty() => None,
            MechanismParams::Bytes(b) => Some(b.clone()),
            _ => return Err(Error::MechanismParamInvalid),
        };
        let default = |kind| match kind {
            Kind::Kwp => KWP_DEFAULT_PREFIX.to_vec(),
            _ => KW_DEFAULT_IV.to_vec(),
        };
        match (self.kind, given) {
            (Kind::Pad, None) => Ok((Kind::Pad, Vec::new())),
            (Kind::Pad, Some(iv)) if iv.len() == KWP_DEFAULT_PREFIX.len() => Ok((Kind::Kwp, iv)),
            (Kind::Pad, Some(iv)) if iv.len() == KW_DEFAULT_IV.len() => Ok((Kind::Pkcs7, iv)),
            (kind, None) => Ok((kind, default(kind))),
            (kind, Some(iv)) if kind != Kind::Pad && iv.len() == default(kind).len() => {
                Ok((kind, iv))
            }
            _ => Err(Error::MechanismParamInvalid),
        }
    }

    fn op(&self, key: &Key<'_>, params: &MechanismParams, encrypt: bool) -> Result<KwOp> {
        let (kind, iv) = self.resolve(params)?;
        Ok(KwOp {
            key: aes_key(key)?,
            kind,
            iv,
            encrypt,
            buf: Zeroizing::new(Vec::new()),
        })
    }
}

impl Mechanism for KeyWrap {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        self.ty
    }

    fn info(&self) -> MechanismInfo {
        info(CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP)
    }

    fn check_key(&self, key: &Object, _usage: CK_ATTRIBUTE_TYPE) -> Result<()> {
        super::secret_key(key, &[CKK_AES])
    }

    fn encrypt_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn CipherOp>> {
        Ok(Box::new(self.op(key, params, true)?))
    }

    fn decrypt_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn CipherOp>> {
        Ok(Box::new(self.op(key, params, false)?))
    }

    fn wrap(
        &self,
        wrapping_key: &Key<'_>,
        material: &[u8],
        params: &MechanismParams,
    ) -> Result<Vec<u8>> {
        let op = self.op(wrapping_key, params, true)?;
        let mut data = Zeroizing::new(material.to_vec());
        if self.kind == Kind::Kw {
            data.resize(material.len().div_ceil(SEMIBLOCK) * SEMIBLOCK, 0);
        }
        op.seal(&data).map_err(|e| match e {
            Error::DataLenRange => Error::KeySizeRange,
            e => e,
        })
    }

    fn unwrap(
        &self,
        unwrapping_key: &Key<'_>,
        wrapped: &[u8],
        params: &MechanismParams,
    ) -> Result<Output> {
        let op = self.op(unwrapping_key, params, false)?;
        op.open(wrapped).map_err(|f| match f {
            Fail::Length => Error::WrappedKeyLenRange,
            Fail::Integrity => Error::WrappedKeyInvalid,
            Fail::Other(e) => e,
        })
    }
}

struct KwOp {
    key: Arc<AesKey>,
    kind: Kind,
    iv: Vec<u8>,
    encrypt: bool,
    buf: Zeroizing<Vec<u8>>,
}

impl KwOp {
    fn iv8(&self) -> [u8; 8] {
        let mut a = KW_DEFAULT_IV;
        if let Ok(iv) = <[u8; 8]>::try_from(self.iv.as_slice()) {
            a = iv;
        }
        a
    }

    fn iv4(&self) -> [u8; 4] {
        let mut a = KWP_DEFAULT_PREFIX;
        if let Ok(iv) = <[u8; 4]>::try_from(self.iv.as_slice()) {
            a = iv;
        }
        a
    }

    /// Wraps `data`; `CKR_DATA_LEN_RANGE` for a length the construction cannot take.
    fn seal(&self, data: &[u8]) -> Result<Vec<u8>> {
        match self.kind {
            Kind::Kw => self.key.kw_wrap(&self.iv8(), data),
            Kind::Pkcs7 => {
                let mut padded = Zeroizing::new(data.to_vec());
                pad(&mut padded, SEMIBLOCK);
                self.key.kw_wrap(&self.iv8(), &padded)
            }
            Kind::Kwp => self.key.kwp_wrap(&self.iv4(), data),
            Kind::Pad => self.key.kwp_wrap(&KWP_DEFAULT_PREFIX, data),
        }
    }

    /// Unwraps `wrapped`; every integrity failure (initial value, padding, length indicator)
    /// is one outcome.
    fn open(&self, wrapped: &[u8]) -> std::result::Result<Output, Fail> {
        match self.kind {
            Kind::Kw => self.open_kw(wrapped, &self.iv8(), false),
            Kind::Pkcs7 => self.open_kw(wrapped, &self.iv8(), true),
            Kind::Kwp => self.open_kwp(wrapped, &self.iv4()),
            Kind::Pad => {
                // Both readings, always both: which one failed, and how, shows nowhere.
                let kwp = self.open_kwp(wrapped, &KWP_DEFAULT_PREFIX);
                let pkcs7 = self.open_kw(wrapped, &KW_DEFAULT_IV, true);
                match (kwp, pkcs7) {
                    (Ok(plain), _) | (_, Ok(plain)) => Ok(plain),
                    // Lengths are public: neither construction takes this one.
                    (Err(Fail::Length), Err(Fail::Length)) => Err(Fail::Length),
                    (Err(Fail::Other(e)), _) | (_, Err(Fail::Other(e))) => Err(Fail::Other(e)),
                    _ => Err(Fail::Integrity),
                }
            }
        }
    }

    /// RFC 3394 with initial value `iv`, then PKCS#7 unpadding if `pkcs7`.
    fn open_kw(
        &self,
        wrapped: &[u8],
        iv: &[u8; 8],
        pkcs7: bool,
    ) -> std::result::Result<Output, Fail> {
        let (a, mut plain) = self.key.kw_unwrap(wrapped).map_err(length)?;
        let iv_ok = ct_eq(&a, iv);
        let keep = if pkcs7 {
            unpad(
                plain
                    .get(plain.len().saturating_sub(SEMIBLOCK)..)
                    .unwrap_or_default(),
                SEMIBLOCK,
            )
            .map(|tail| plain.len() - SEMIBLOCK + tail)
        } else {
            Some(plain.len())
        };
        match (iv_ok, keep) {
            (true, Some(n)) => {
                plain.truncate(n);
                Ok(plain)
            }
            _ => Err(Fail::Integrity),
        }
    }

    /// RFC 5649 with initial value prefix `prefix`.
    fn open_kwp(&self, wrapped: &[u8], prefix: &[u8; 4]) -> std::result::Result<Output, Fail> {
        self.key
            .kwp_unwrap(prefix, wrapped)
            .map_err(length)?
            .ok_or(Fail::Integrity)
    }
}

/// A length the construction cannot take is its own outcome; other errors pass.
fn length(e: Error) -> Fail {
    match e {
        Error::EncryptedDataLenRange => Fail::Length,
        e => Fail::Other(e),
    }
}

impl CipherOp for KwOp {
    fn output_len(&self, input_len: usize, _whole: bool) -> usize {
        let total = self.buf.len() + input_len;
        if !self.encrypt {
            return total.saturating_sub(SEMIBLOCK);
        }
        match self.kind {
            Kind::Kw => total + SEMIBLOCK,
            Kind::Pkcs7 => (total / SEMIBLOCK + 1) * SEMIBLOCK + SEMIBLOCK,
            Kind::Kwp | Kind::Pad => total.div_ceil(SEMIBLOCK).max(1) * SEMIBLOCK + SEMIBLOCK,
        }
    }

    fn update(&mut self, data: &[u8]) -> Result<Output> {
        self.buf.extend_from_slice(data);
        Ok(Zeroizing::new(Vec::new()))
    }

    fn finish(&mut self) -> Result<Output> {
        let data = Zeroizing::new(std::mem::take(&mut *self.buf));
        if self.encrypt {
            return self.seal(&data).map(Zeroizing::new);
        }
        self.open(&data).map_err(|f| match f {
            Fail::Length => Error::EncryptedDataLenRange,
            Fail::Integrity => Error::EncryptedDataInvalid,
            Fail::Other(e) => e,
        })
    }

    fn final_len(&self) -> usize {
        self.output_len(0, true)
    }

    /// "The mechanisms support only single-part operations".
    fn multi_part(&self) -> bool {
        false
    }
}
