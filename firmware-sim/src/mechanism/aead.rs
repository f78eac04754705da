//! The single-message AEADs of `C_Encrypt`/`C_Decrypt`: the buffering every one of them shares
//! ([`Buffered`], also under AES-GCM), `CKM_AES_CCM` (`CK_CCM_PARAMS`) and
//! `CKM_CHACHA20_POLY1305` (`CK_SALSA20_CHACHA20_POLY1305_PARAMS`) with `CKM_CHACHA20_KEY_GEN`.
//!
//! - Multi-part: the input is buffered and processed by the final call (updates return no
//!   output), as for AES-GCM: for decryption that is what the specification asks ("no data
//!   should be returned until C_Decrypt or C_DecryptFinal"); for encryption it keeps one path.
//! - A tag that does not verify is `CKR_ENCRYPTED_DATA_INVALID` (`CKR_WRAPPED_KEY_INVALID` on
//!   unwrap), one code on one path, and nothing of the plaintext is returned.
//! - Nonces are the caller's (`C_EncryptInit` has no token-generated nonce); one init encrypts
//!   one message: the operation ends when its output is delivered, and a retry after
//!   `CKR_BUFFER_TOO_SMALL` gets the ciphertext already made, never a second encryption under
//!   the same nonce.
//! - AES-CCM: nonces of 7 to 13 bytes, MACs of 4, 6, ..., 16 bytes (SP 800-38C);
//!   `ulDataLen` is the plaintext's length on both sides (the specification: on decryption it
//!   "should not include the length of the MAC"), so encryption takes exactly `ulDataLen`
//!   bytes (else `CKR_DATA_LEN_RANGE`) and decryption exactly `ulDataLen + ulMACLen` (else
//!   `CKR_ENCRYPTED_DATA_LEN_RANGE`); a `ulDataLen` the nonce's length field cannot hold is
//!   `CKR_MECHANISM_PARAM_INVALID`.
//! - ChaCha20-Poly1305 is RFC 8439's: a 96-bit nonce (`ulNonceLen` 12), a 16-byte tag. The
//!   64-bit nonce of the original construction and XChaCha's 192-bit one are
//!   `CKR_MECHANISM_PARAM_INVALID`.

use std::sync::Arc;

use bridge::{Error, MechanismInfo, MechanismParams, Result, Template};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::aes::{info as aes_info, random_secret};
use super::{CipherOp, Generated, Key, Mechanism, Output, no_params};
use crate::crypto::Secret;
use crate::crypto::aeads::{
    CCM_NONCE_LENS, CHACHA20_KEY_LEN, CHACHA20_POLY1305_NONCE_LEN, POLY1305_TAG_LEN, ccm_max_len,
    ccm_open, ccm_seal, ccm_tag_len_ok, chacha20_poly1305_open, chacha20_poly1305_seal,
};
use crate::object::Object;

/// A whole-message AEAD under one key and one set of parameters.
pub(super) trait Sealer: Send {
    /// The tag length in bytes.
    fn tag_len(&self) -> usize;
    /// Checks the length of the whole input (plaintext when `encrypt`, else ciphertext and
    /// tag) before any cryptography.
    fn check_len(&self, _len: usize, _encrypt: bool) -> Result<()> {
        Ok(())
    }
    /// `ciphertext ‖ tag`.
    fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>>;
    /// The plaintext, or `None` when `ciphertext` and `tag` do not authenticate.
    fn open(&self, ciphertext: &[u8], tag: &[u8]) -> Result<Option<Output>>;
}

/// A `C_Encrypt*`/`C_Decrypt*` operation of an AEAD: everything is buffered until the final
/// call (or the single-part call), which seals or opens the whole message.
pub(super) struct Buffered {
    aead: Box<dyn Sealer>,
    encrypt: bool,
    buf: Zeroizing<Vec<u8>>,
}

impl Buffered {
    pub(super) fn new(aead: Box<dyn Sealer>, encrypt: bool) -> Self {
        Self {
            aead,
            encrypt,
            buf: Zeroizing::new(Vec::new()),
        }
    }

    fn whole_len(&self, total: usize) -> usize {
        if self.encrypt {
            total + self.aead.tag_len()
        } else {
            total.saturating_sub(self.aead.tag_len())
        }
    }
}

impl CipherOp for Buffered {
    fn output_len(&self, input_len: usize, whole: bool) -> usize {
        if whole {
            self.whole_len(self.buf.len() + input_len)
        } else {
            0
        }
    }

    fn update(&mut self, data: &[u8]) -> Result<Output> {
        self.buf.extend_from_slice(data);
        Ok(Zeroizing::new(Vec::new()))
    }

    fn finish(&mut self) -> Result<Output> {
        let data = Zeroizing::new(std::mem::take(&mut *self.buf));
        self.aead.check_len(data.len(), self.encrypt)?;
        if self.encrypt {
            return self.aead.seal(&data).map(Zeroizing::new);
        }
        let split = data
            .len()
            .checked_sub(self.aead.tag_len())
            .ok_or(Error::EncryptedDataLenRange)?;
        let (ct, tag) = data.split_at(split);
        self.aead.open(ct, tag)?.ok_or(Error::EncryptedDataInvalid)
    }

    fn final_len(&self) -> usize {
        self.whole_len(self.buf.len())
    }

    fn one_shot(&mut self, data: &[u8]) -> Result<Output> {
        self.buf.extend_from_slice(data);
        self.finish()
    }
}

/// `C_WrapKey` with an AEAD: the key material sealed as one message.
pub(super) fn wrap(aead: Box<dyn Sealer>, material: &[u8]) -> Result<Vec<u8>> {
    Buffered::new(aead, true)
        .one_shot(material)
        .map(|o| o.to_vec())
        .map_err(|e| match e {
            Error::DataLenRange => Error::KeySizeRange,
            e => e,
        })
}

/// `C_UnwrapKey` with an AEAD: every failure to authenticate is `CKR_WRAPPED_KEY_INVALID`.
pub(super) fn unwrap(aead: Box<dyn Sealer>, wrapped: &[u8]) -> Result<Output> {
    Buffered::new(aead, false)
        .one_shot(wrapped)
        .map_err(|e| match e {
            Error::EncryptedDataLenRange => Error::WrappedKeyLenRange,
            Error::EncryptedDataInvalid => Error::WrappedKeyInvalid,
            e => e,
        })
}

/// The key's `CKA_VALUE`, copied for an operation that outlives the unsealed secrets.
fn key_value(key: &Key<'_>) -> Result<Arc<Secret>> {
    let v = key
        .secrets
        .get(CKA_VALUE)
        .ok_or(Error::KeyTypeInconsistent)?;
    Ok(Arc::new(v.duplicate()))
}

/// The mechanism flags of the single-message AEADs.
const AEAD_FLAGS: CK_FLAGS = CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP;

/// A single-message AEAD mechanism: encrypt, decrypt, wrap and unwrap, each one message under
/// the parameters given at init.
pub(crate) struct AeadMech {
    pub(super) ty: CK_MECHANISM_TYPE,
    /// The key type it takes.
    pub(super) key_type: CK_KEY_TYPE,
    /// Key sizes and flags.
    pub(super) info: fn(CK_FLAGS) -> MechanismInfo,
    /// The AEAD under a key and the mechanism's parameters (checked here).
    pub(super) sealer: fn(&Key<'_>, &MechanismParams) -> Result<Box<dyn Sealer>>,
}

impl Mechanism for AeadMech {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        self.ty
    }

    fn info(&self) -> MechanismInfo {
        (self.info)(AEAD_FLAGS)
    }

    fn check_key(&self, key: &Object, _usage: CK_ATTRIBUTE_TYPE) -> Result<()> {
        super::secret_key(key, &[self.key_type])
    }

    fn encrypt_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn CipherOp>> {
        Ok(Box::new(Buffered::new((self.sealer)(key, params)?, true)))
    }

    fn decrypt_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn CipherOp>> {
        Ok(Box::new(Buffered::new((self.sealer)(key, params)?, false)))
    }

    fn wrap(&self, key: &Key<'_>, material: &[u8], params: &MechanismParams) -> Result<Vec<u8>> {
        wrap((self.sealer)(key, params)?, material)
    }

    fn unwrap(&self, key: &Key<'_>, wrapped: &[u8], params: &MechanismParams) -> Result<Output> {
        unwrap((self.sealer)(key, params)?, wrapped)
    }
}

// ---- AES-CCM ----------------------------------------------------------------------------------

/// `CKM_AES_CCM`.
pub(crate) static AES_CCM: AeadMech = AeadMech {
    ty: CKM_AES_CCM,
    key_type: CKK_AES,
    info: aes_info,
    sealer: ccm_sealer,
};

struct CcmSealer {
    key: Arc<Secret>,
    nonce: Vec<u8>,
    aad: Vec<u8>,
    tag_len: usize,
    data_len: usize,
}

fn ccm_sealer(key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn Sealer>> {
    let MechanismParams::Ccm {
        data_len,
        nonce,
        aad,
        mac_len,
    } = params
    else {
        return Err(Error::MechanismParamInvalid);
    };
    let tag_len = usize::try_from(*mac_len)
        .ok()
        .filter(|n| ccm_tag_len_ok(*n))
        .ok_or(Error::MechanismParamInvalid)?;
    if !CCM_NONCE_LENS.contains(&nonce.len()) || *data_len > ccm_max_len(nonce.len()) {
        return Err(Error::MechanismParamInvalid);
    }
    let data_len = usize::try_from(*data_len).map_err(|_| Error::MechanismParamInvalid)?;
    Ok(Box::new(CcmSealer {
        key: key_value(key)?,
        nonce: nonce.clone(),
        aad: aad.clone(),
        tag_len,
        data_len,
    }))
}

impl Sealer for CcmSealer {
    fn tag_len(&self) -> usize {
        self.tag_len
    }

    fn check_len(&self, len: usize, encrypt: bool) -> Result<()> {
        match encrypt {
            true if len != self.data_len => Err(Error::DataLenRange),
            false if Some(len) != self.data_len.checked_add(self.tag_len) => {
                Err(Error::EncryptedDataLenRange)
            }
            _ => Ok(()),
        }
    }

    fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        ccm_seal(&self.key, &self.nonce, &self.aad, plaintext, self.tag_len)
    }

    fn open(&self, ciphertext: &[u8], tag: &[u8]) -> Result<Option<Output>> {
        ccm_open(&self.key, &self.nonce, &self.aad, ciphertext, tag)
    }
}

// ---- ChaCha20-Poly1305 ------------------------------------------------------------------------

/// The key size of `CKK_CHACHA20`, as `C_GetMechanismInfo` reports it (bytes).
const CHACHA20_KEY_SIZE: CK_ULONG = 32;

fn chacha_info(flags: CK_FLAGS) -> MechanismInfo {
    MechanismInfo {
        min_key_size: CHACHA20_KEY_SIZE,
        max_key_size: CHACHA20_KEY_SIZE,
        flags: CKF_HW | flags,
    }
}

/// `CKM_CHACHA20_KEY_GEN`: a 32-byte `CKK_CHACHA20` key (`CKA_VALUE_LEN`, if given, must be 32).
pub(crate) struct ChaCha20KeyGen;

pub(crate) static CHACHA20_KEY_GEN: ChaCha20KeyGen = ChaCha20KeyGen;

impl Mechanism for ChaCha20KeyGen {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        CKM_CHACHA20_KEY_GEN
    }

    fn info(&self) -> MechanismInfo {
        chacha_info(CKF_GENERATE)
    }

    fn generate_key(&self, template: &Template, params: &MechanismParams) -> Result<Generated> {
        no_params(params)?;
        match template
            .get(CKA_VALUE_LEN)
            .map(|a| a.as_ulong())
            .transpose()?
        {
            None | Some(CHACHA20_KEY_SIZE) => random_secret(CKK_CHACHA20, CHACHA20_KEY_LEN),
            Some(_) => Err(Error::AttributeValueInvalid),
        }
    }
}

/// `CKM_CHACHA20_POLY1305`.
pub(crate) static CHACHA20_POLY1305: AeadMech = AeadMech {
    ty: CKM_CHACHA20_POLY1305,
    key_type: CKK_CHACHA20,
    info: chacha_info,
    sealer: chacha_sealer,
};

struct ChaChaSealer {
    key: Arc<Secret>,
    nonce: Vec<u8>,
    aad: Vec<u8>,
}

fn chacha_sealer(key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn Sealer>> {
    let MechanismParams::ChaCha20Poly1305 { nonce, aad } = params else {
        return Err(Error::MechanismParamInvalid);
    };
    if nonce.len() != CHACHA20_POLY1305_NONCE_LEN {
        return Err(Error::MechanismParamInvalid);
    }
    let value = key_value(key)?;
    if value.len() != CHACHA20_KEY_LEN {
        return Err(Error::KeySizeRange);
    }
    Ok(Box::new(ChaChaSealer {
        key: value,
        nonce: nonce.clone(),
        aad: aad.clone(),
    }))
}

impl Sealer for ChaChaSealer {
    fn tag_len(&self) -> usize {
        POLY1305_TAG_LEN
    }

    fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        chacha20_poly1305_seal(&self.key, &self.nonce, &self.aad, plaintext)
    }

    fn open(&self, ciphertext: &[u8], tag: &[u8]) -> Result<Option<Output>> {
        chacha20_poly1305_open(&self.key, &self.nonce, &self.aad, ciphertext, tag)
    }
}
