//! AES: key generation, ECB, CBC, CBC with PKCS#7 padding, CTR, and CMAC.
//!
//! Multi-part rules: `C_EncryptUpdate`/`C_DecryptUpdate` return exactly the whole blocks
//! available and keep the rest; CBC_PAD decryption also holds back the last whole block (it
//! may be the padding) until `C_DecryptFinal`. CTR is a stream: output length = input length.

use std::sync::Arc;

use bridge::{Attribute, Error, MechanismInfo, MechanismParams, Result, Template};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::{
    CipherOp, Generated, Key, Mechanism, Output, SIGN_VERIFY, SignOp, VerifyOp, no_params,
};
use crate::crypto::aes::{AesKey, BLOCK, add_to_block};
use crate::crypto::mac::{CmacCtx, CmacKey};
use crate::crypto::{BlockCipher, Secret, ct_eq};
use crate::object::Object;

/// AES key sizes in bytes, as `C_GetMechanismInfo` reports them.
pub(super) const AES_MIN: CK_ULONG = 16;
/// See [`AES_MIN`].
pub(super) const AES_MAX: CK_ULONG = 32;

pub(super) fn info(flags: CK_FLAGS) -> MechanismInfo {
    MechanismInfo {
        min_key_size: AES_MIN,
        max_key_size: AES_MAX,
        flags: CKF_HW | flags,
    }
}

/// The cached expanded form of an AES key; `CKR_KEY_TYPE_INCONSISTENT` for any other key.
pub(super) fn aes_key(key: &Key<'_>) -> Result<Arc<AesKey>> {
    if key.obj.class() != CKO_SECRET_KEY || key.obj.key_type() != Some(CKK_AES) {
        return Err(Error::KeyTypeInconsistent);
    }
    let value = key
        .secrets
        .get(CKA_VALUE)
        .ok_or(Error::KeyTypeInconsistent)?;
    key.obj.material.parsed(|| AesKey::new(value.expose()))
}

/// `CKA_VALUE_LEN` from a generation template: `CKR_TEMPLATE_INCOMPLETE` when absent.
pub(super) fn value_len(template: &Template) -> Result<usize> {
    let len = template
        .get(CKA_VALUE_LEN)
        .ok_or(Error::TemplateIncomplete)?
        .as_ulong()?;
    usize::try_from(len).map_err(|_| Error::AttributeValueInvalid)
}

/// Fresh random key material of `len` bytes as a generated secret key of `key_type`.
pub(super) fn random_secret(key_type: CK_KEY_TYPE, len: usize) -> Result<Generated> {
    let value = Secret::random(len)?;
    Ok(Generated {
        class: CKO_SECRET_KEY,
        key_type,
        attrs: vec![Attribute::bytes(CKA_VALUE, value.expose().to_vec())],
    })
}

// ---- key generation ---------------------------------------------------------------------------

/// `CKM_AES_KEY_GEN`.
pub(crate) struct AesKeyGen;

pub(crate) static AES_KEY_GEN: AesKeyGen = AesKeyGen;

impl Mechanism for AesKeyGen {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        CKM_AES_KEY_GEN
    }

    fn info(&self) -> MechanismInfo {
        info(CKF_GENERATE)
    }

    fn generate_key(&self, template: &Template, params: &MechanismParams) -> Result<Generated> {
        no_params(params)?;
        // 17 is no AES key length at all: the template value is invalid (as for
        // C_CreateObject), rather than a size the token merely cannot handle.
        match value_len(template)? {
            n @ (16 | 24 | 32) => random_secret(CKK_AES, n),
            _ => Err(Error::AttributeValueInvalid),
        }
    }
}

// ---- ECB, CBC, CBC_PAD ------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Ecb,
    Cbc,
    CbcPad,
}

/// A block cipher family the block modes run over: its key types, block size, mechanism
/// info and the cached expanded key.
pub(super) struct Family {
    pub(super) key_types: &'static [CK_KEY_TYPE],
    pub(super) block: usize,
    pub(super) info: fn(CK_FLAGS) -> MechanismInfo,
    pub(super) cipher: fn(&Key<'_>) -> Result<Arc<dyn BlockCipher>>,
}

static AES: Family = Family {
    key_types: &[CKK_AES],
    block: BLOCK,
    info,
    cipher: |k| aes_key(k).map(|c| c as Arc<dyn BlockCipher>),
};

/// `CKM_AES_ECB`, `CKM_AES_CBC`, `CKM_AES_CBC_PAD` (and, over triple DES, `CKM_DES3_*`).
pub(crate) struct BlockMode {
    ty: CK_MECHANISM_TYPE,
    mode: Mode,
    family: &'static Family,
}

pub(crate) static AES_ECB: BlockMode = BlockMode::ecb(CKM_AES_ECB, &AES);
pub(crate) static AES_CBC: BlockMode = BlockMode::cbc(CKM_AES_CBC, &AES);
pub(crate) static AES_CBC_PAD: BlockMode = BlockMode::cbc_pad(CKM_AES_CBC_PAD, &AES);

impl BlockMode {
    pub(super) const fn ecb(ty: CK_MECHANISM_TYPE, family: &'static Family) -> Self {
        Self {
            ty,
            mode: Mode::Ecb,
            family,
        }
    }

    pub(super) const fn cbc(ty: CK_MECHANISM_TYPE, family: &'static Family) -> Self {
        Self {
            ty,
            mode: Mode::Cbc,
            family,
        }
    }

    pub(super) const fn cbc_pad(ty: CK_MECHANISM_TYPE, family: &'static Family) -> Self {
        Self {
            ty,
            mode: Mode::CbcPad,
            family,
        }
    }

    fn iv(&self, params: &MechanismParams) -> Result<Vec<u8>> {
        match (self.mode, params) {
            (Mode::Ecb, p) => no_params(p).map(|()| vec![0u8; self.family.block]),
            (_, MechanismParams::Bytes(iv)) if iv.len() == self.family.block => Ok(iv.clone()),
            _ => Err(Error::MechanismParamInvalid),
        }
    }

    fn op(&self, key: &Key<'_>, params: &MechanismParams, encrypt: bool) -> Result<BlockOp> {
        let iv = self.iv(params)?;
        Ok(BlockOp {
            key: (self.family.cipher)(key)?,
            block: self.family.block,
            mode: self.mode,
            encrypt,
            iv,
            buf: Zeroizing::new(Vec::new()),
        })
    }
}

impl Mechanism for BlockMode {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        self.ty
    }

    fn info(&self) -> MechanismInfo {
        (self.family.info)(CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP)
    }

    fn check_key(&self, key: &Object, _usage: CK_ATTRIBUTE_TYPE) -> Result<()> {
        super::secret_key(key, self.family.key_types)
    }

    fn encrypt_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn CipherOp>> {
        Ok(Box::new(self.op(key, params, true)?))
    }

    fn decrypt_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn CipherOp>> {
        Ok(Box::new(self.op(key, params, false)?))
    }

    /// ECB and CBC pad the key material with zeros to a whole block (PKCS#11 "AES-ECB" and
    /// "AES-CBC", "DES3-ECB", "DES3-CBC": "padded on the trailing end with up to block size
    /// minus one null bytes"); CBC_PAD pads with PKCS#7.
    fn wrap(
        &self,
        wrapping_key: &Key<'_>,
        material: &[u8],
        params: &MechanismParams,
    ) -> Result<Vec<u8>> {
        let mut op = self.op(wrapping_key, params, true)?;
        let mut data = Zeroizing::new(material.to_vec());
        if self.mode != Mode::CbcPad {
            let block = self.family.block;
            data.resize(material.len().div_ceil(block) * block, 0);
        }
        op.one_shot(&data).map(|o| o.to_vec())
    }

    fn unwrap(
        &self,
        unwrapping_key: &Key<'_>,
        wrapped: &[u8],
        params: &MechanismParams,
    ) -> Result<Output> {
        let mut op = self.op(unwrapping_key, params, false)?;
        if wrapped.is_empty() || wrapped.len() % self.family.block != 0 {
            return Err(Error::WrappedKeyLenRange);
        }
        op.one_shot(wrapped).map_err(|e| match e {
            Error::EncryptedDataInvalid | Error::EncryptedDataLenRange => Error::WrappedKeyInvalid,
            e => e,
        })
    }
}

struct BlockOp {
    key: Arc<dyn BlockCipher>,
    block: usize,
    mode: Mode,
    encrypt: bool,
    /// The chaining value (CBC), the last ciphertext block so far.
    iv: Vec<u8>,
    /// Input not yet processed: a partial block (and, for CBC_PAD decryption, the held-back
    /// last block).
    buf: Zeroizing<Vec<u8>>,
}

impl BlockOp {
    /// How many of `total` buffered bytes an update may process now.
    fn ready(&self, total: usize) -> usize {
        let b = self.block;
        if !self.encrypt && self.mode == Mode::CbcPad {
            (total.saturating_sub(1) / b) * b
        } else {
            (total / b) * b
        }
    }

    fn process(&mut self, data: &mut [u8]) -> Result<()> {
        match (self.mode, self.encrypt) {
            (Mode::Ecb, true) => self.key.ecb_encrypt(data),
            (Mode::Ecb, false) => self.key.ecb_decrypt(data),
            (_, true) => self.key.cbc_encrypt(&mut self.iv, data),
            (_, false) => self.key.cbc_decrypt(&mut self.iv, data),
        }
    }
}

/// The plaintext length of a PKCS#7-padded final block, or `None`, decided without branching
/// on the padding bytes.
pub(super) fn unpad(block: &[u8], size: usize) -> Option<usize> {
    let p = *block.last()?;
    let pad = usize::from(p);
    let mut bad = u8::from(pad == 0) | u8::from(pad > size) | u8::from(block.len() != size);
    for (i, b) in block.iter().enumerate() {
        let in_pad = u8::from(size - i <= pad);
        bad |= in_pad & u8::from(*b != p);
    }
    (bad == 0).then(|| size - pad)
}

/// PKCS#7 padding to a multiple of `size` (1 to `size` bytes).
pub(super) fn pad(data: &mut Vec<u8>, size: usize) {
    let n = size - data.len() % size;
    data.resize(data.len() + n, u8::try_from(n).unwrap_or(0));
}

impl CipherOp for BlockOp {
    fn output_len(&self, input_len: usize, whole: bool) -> usize {
        let total = self.buf.len() + input_len;
        if whole {
            match (self.mode, self.encrypt) {
                (Mode::CbcPad, true) => (total / self.block + 1) * self.block,
                _ => total,
            }
        } else {
            self.ready(total)
        }
    }

    fn update(&mut self, data: &[u8]) -> Result<Output> {
        self.buf.extend_from_slice(data);
        let n = self.ready(self.buf.len());
        let mut out = Zeroizing::new(self.buf.drain(..n).collect::<Vec<u8>>());
        self.process(&mut out)?;
        Ok(out)
    }

    fn finish(&mut self) -> Result<Output> {
        let mut rest = Zeroizing::new(std::mem::take(&mut *self.buf));
        match (self.mode, self.encrypt) {
            (Mode::CbcPad, true) => {
                pad(&mut rest, self.block);
                self.process(&mut rest)?;
                Ok(rest)
            }
            (Mode::CbcPad, false) => {
                if rest.len() != self.block {
                    return Err(Error::EncryptedDataLenRange);
                }
                self.process(&mut rest)?;
                let n = unpad(&rest, self.block).ok_or(Error::EncryptedDataInvalid)?;
                rest.truncate(n);
                Ok(rest)
            }
            (_, true) if !rest.is_empty() => Err(Error::DataLenRange),
            (_, false) if !rest.is_empty() => Err(Error::EncryptedDataLenRange),
            _ => Ok(rest),
        }
    }

    fn final_len(&self) -> usize {
        match self.mode {
            Mode::CbcPad => self.block,
            _ => 0,
        }
    }
}

// ---- CTR --------------------------------------------------------------------------------------

/// `CKM_AES_CTR` (`CK_AES_CTR_PARAMS`: the low `ulCounterBits` bits of the counter block count).
pub(crate) struct Ctr;

pub(crate) static AES_CTR: Ctr = Ctr;

impl Ctr {
    fn op(key: &Key<'_>, params: &MechanismParams, encrypt: bool) -> Result<CtrOp> {
        let MechanismParams::AesCtr { counter_bits, cb } = params else {
            return Err(Error::MechanismParamInvalid);
        };
        let bits = u32::try_from(*counter_bits).map_err(|_| Error::MechanismParamInvalid)?;
        if !(1..=128).contains(&bits) {
            return Err(Error::MechanismParamInvalid);
        }
        // Blocks left before the counter bits would wrap (the spec leaves wrap-around to the
        // token; refusing it keeps every counter block unique and equal to a plain 128-bit
        // increment, since no carry ever leaves the counter bits).
        let start = u128::from_be_bytes(*cb);
        let left = if bits == 128 {
            (u128::MAX - start).saturating_add(1)
        } else {
            (1u128 << bits) - (start & ((1u128 << bits) - 1))
        };
        Ok(CtrOp {
            key: aes_key(key)?,
            counter: *cb,
            blocks_left: left,
            stream: Zeroizing::new([0u8; BLOCK]),
            stream_used: BLOCK,
            encrypt,
        })
    }
}

impl Mechanism for Ctr {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        CKM_AES_CTR
    }

    fn info(&self) -> MechanismInfo {
        info(CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP)
    }

    fn check_key(&self, key: &Object, _usage: CK_ATTRIBUTE_TYPE) -> Result<()> {
        super::secret_key(key, &[CKK_AES])
    }

    fn encrypt_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn CipherOp>> {
        Ok(Box::new(Self::op(key, params, true)?))
    }

    fn decrypt_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn CipherOp>> {
        Ok(Box::new(Self::op(key, params, false)?))
    }

    fn wrap(
        &self,
        wrapping_key: &Key<'_>,
        material: &[u8],
        params: &MechanismParams,
    ) -> Result<Vec<u8>> {
        let mut op = Self::op(wrapping_key, params, true)?;
        op.one_shot(material).map(|o| o.to_vec())
    }

    fn unwrap(
        &self,
        unwrapping_key: &Key<'_>,
        wrapped: &[u8],
        params: &MechanismParams,
    ) -> Result<Output> {
        let mut op = Self::op(unwrapping_key, params, false)?;
        op.one_shot(wrapped).map_err(|e| match e {
            Error::EncryptedDataLenRange => Error::WrappedKeyLenRange,
            e => e,
        })
    }
}

struct CtrOp {
    key: Arc<AesKey>,
    /// The counter block of the next fresh key-stream block.
    counter: [u8; BLOCK],
    /// Fresh blocks left before the counter bits wrap.
    blocks_left: u128,
    /// The current key-stream block and how much of it is used.
    stream: Zeroizing<[u8; BLOCK]>,
    stream_used: usize,
    encrypt: bool,
}

impl CipherOp for CtrOp {
    fn output_len(&self, input_len: usize, _whole: bool) -> usize {
        input_len
    }

    fn update(&mut self, data: &[u8]) -> Result<Output> {
        let from_stream = data.len().min(BLOCK - self.stream_used);
        let fresh = u128::try_from((data.len() - from_stream).div_ceil(BLOCK)).unwrap_or(u128::MAX);
        if fresh > self.blocks_left {
            return Err(if self.encrypt {
                Error::DataLenRange
            } else {
                Error::EncryptedDataLenRange
            });
        }
        let mut out = Zeroizing::new(data.to_vec());
        let (head, rest) = out.split_at_mut(from_stream);
        let stream = self.stream.get(self.stream_used..).unwrap_or_default();
        for (o, k) in head.iter_mut().zip(stream) {
            *o ^= k;
        }
        self.stream_used += from_stream;
        let whole = rest.len() / BLOCK * BLOCK;
        let (blocks, tail) = rest.split_at_mut(whole);
        self.key.ctr_xor(&self.counter, blocks)?;
        let n = u128::try_from(whole / BLOCK).unwrap_or(u128::MAX);
        self.counter = add_to_block(&self.counter, n);
        if !tail.is_empty() {
            let mut ks = Zeroizing::new([0u8; BLOCK]);
            self.key.ctr_xor(&self.counter, &mut ks[..])?;
            self.counter = add_to_block(&self.counter, 1);
            for (o, k) in tail.iter_mut().zip(ks.iter()) {
                *o ^= k;
            }
            self.stream_used = tail.len();
            self.stream = ks;
        }
        self.blocks_left -= fresh;
        Ok(out)
    }

    fn finish(&mut self) -> Result<Output> {
        Ok(Zeroizing::new(Vec::new()))
    }

    fn final_len(&self) -> usize {
        0
    }
}

// ---- CMAC -------------------------------------------------------------------------------------

/// `CKM_AES_CMAC` (16-byte MAC) and `CKM_AES_CMAC_GENERAL` (`CK_MAC_GENERAL_PARAMS`: 1..=16).
pub(crate) struct Cmac {
    ty: CK_MECHANISM_TYPE,
    general: bool,
}

pub(crate) static AES_CMAC: Cmac = Cmac {
    ty: CKM_AES_CMAC,
    general: false,
};
pub(crate) static AES_CMAC_GENERAL: Cmac = Cmac {
    ty: CKM_AES_CMAC_GENERAL,
    general: true,
};

impl Cmac {
    fn start(&self, key: &Key<'_>, params: &MechanismParams) -> Result<CmacOp> {
        let len = if self.general {
            match params {
                MechanismParams::Ulong(n) => usize::try_from(*n)
                    .ok()
                    .filter(|n| (1..=BLOCK).contains(n))
                    .ok_or(Error::MechanismParamInvalid)?,
                _ => return Err(Error::MechanismParamInvalid),
            }
        } else {
            no_params(params)?;
            BLOCK
        };
        aes_key(key)?;
        let value = key
            .secrets
            .get(CKA_VALUE)
            .ok_or(Error::KeyTypeInconsistent)?;
        let cmac = key.obj.material.parsed(|| CmacKey::new(value.expose()))?;
        Ok(CmacOp {
            ctx: Some(cmac.start()),
            len,
        })
    }
}

impl Mechanism for Cmac {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        self.ty
    }

    fn info(&self) -> MechanismInfo {
        info(SIGN_VERIFY)
    }

    fn check_key(&self, key: &Object, _usage: CK_ATTRIBUTE_TYPE) -> Result<()> {
        super::secret_key(key, &[CKK_AES])
    }

    fn sign_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn SignOp>> {
        Ok(Box::new(self.start(key, params)?))
    }

    fn verify_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn VerifyOp>> {
        Ok(Box::new(self.start(key, params)?))
    }
}

struct CmacOp {
    ctx: Option<CmacCtx>,
    len: usize,
}

impl CmacOp {
    fn mac(&mut self) -> Result<Output> {
        let ctx = self.ctx.take().ok_or(Error::OperationNotInitialized)?;
        let mut full = ctx.finish()?;
        full.truncate(self.len);
        Ok(full)
    }
}

impl SignOp for CmacOp {
    fn len(&self) -> usize {
        self.len
    }

    fn update(&mut self, data: &[u8]) -> Result<()> {
        self.ctx
            .as_mut()
            .ok_or(Error::OperationNotInitialized)?
            .update(data)
    }

    fn finish(&mut self) -> Result<Output> {
        self.mac()
    }
}

impl VerifyOp for CmacOp {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpad_accepts_exactly_pkcs7() {
        let mut b = [0u8; 16];
        b[15] = 1;
        assert_eq!(unpad(&b, 16), Some(15));
        let b = [16u8; 16];
        assert_eq!(unpad(&b, 16), Some(0));
        let mut b = [3u8; 16];
        b[13] = 2;
        assert_eq!(unpad(&b, 16), None);
        assert_eq!(unpad(&[0u8; 16], 16), None);
        assert_eq!(unpad(&[17u8; 16], 16), None);
        assert_eq!(unpad(&[8u8; 8], 8), Some(0));
        assert_eq!(unpad(&[9u8; 8], 8), None);
    }

    #[test]
    fn pad_adds_one_to_size_bytes() {
        let mut v = vec![1u8; 15];
        pad(&mut v, 16);
        assert_eq!(v.len(), 16);
        assert_eq!(v[15], 1);
        let mut v = vec![1u8; 16];
        pad(&mut v, 16);
        assert_eq!(v.len(), 32);
        assert_eq!(v[31], 16);
    }
}
