//! `CKM_AES_GCM`: encrypt/decrypt (`CK_GCM_PARAMS`), wrap/unwrap, and the PKCS#11 3.0
//! message-based encryption (`CK_GCM_MESSAGE_PARAMS`).
//!
//! - IVs of any length from 1 byte; tags of 32, 64, 96, 104, 112, 120 or 128 bits (the lengths
//!   SP 800-38D §5.2.1.2 allows); anything else is `CKR_MECHANISM_PARAM_INVALID`. `ulIvBits`
//!   is ignored, as the spec asks ("Do not use ulIvBits to specify the length"): pkcs11-tool
//!   sends 0 there.
//! - Multi-part: the input is buffered and processed by the final call, as every AEAD here
//!   does (`mechanism::aead::Buffered`).
//! - A tag that does not verify is `CKR_ENCRYPTED_DATA_INVALID` for `C_Decrypt`: Java's
//!   SunPKCS11 (P11AEADCipher.handleException) turns exactly that code into
//!   `AEADBadTagException`, and PKCS#11 3.0 names no other code for C_Decrypt. The
//!   message-based `C_DecryptMessage` returns `CKR_AEAD_DECRYPT_FAILED`, which the 3.0 spec
//!   prescribes for that function. Each is one code on one path.

use std::sync::Arc;

use bridge::{Error, MechanismInfo, MechanismParams, Result};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::aead::{AeadMech, Sealer};
use super::aes::{aes_key, info};
use super::{CipherOp, Key, Mechanism, MessageCipherOp, Output};
use crate::crypto::aes::AesKey;
use crate::crypto::fill_random;
use crate::object::Object;

/// `CKM_AES_GCM`.
pub(crate) struct Gcm;

pub(crate) static AES_GCM: Gcm = Gcm;

/// The tag length in bytes for `ulTagBits`.
fn tag_len(tag_bits: CK_ULONG) -> Result<usize> {
    match tag_bits {
        32 | 64 | 96 | 104 | 112 | 120 | 128 => {
            usize::try_from(tag_bits / 8).map_err(|_| Error::MechanismParamInvalid)
        }
        _ => Err(Error::MechanismParamInvalid),
    }
}

struct Params {
    iv: Vec<u8>,
    aad: Vec<u8>,
    tag_len: usize,
}

fn params(params: &MechanismParams) -> Result<Params> {
    let MechanismParams::Gcm {
        iv, aad, tag_bits, ..
    } = params
    else {
        return Err(Error::MechanismParamInvalid);
    };
    if iv.is_empty() {
        return Err(Error::MechanismParamInvalid);
    }
    Ok(Params {
        iv: iv.clone(),
        aad: aad.clone(),
        tag_len: tag_len(*tag_bits)?,
    })
}

impl Gcm {
    fn sealer(key: &Key<'_>, p: &MechanismParams) -> Result<Box<dyn Sealer>> {
        let p = params(p)?;
        Ok(Box::new(GcmSealer {
            key: aes_key(key)?,
            p,
        }))
    }
}

/// What AES-GCM shares with the other single-message AEADs (`C_Encrypt*`, `C_Decrypt*`, wrap
/// and unwrap: `ciphertext ‖ tag` under the IV and AAD of the `CK_GCM_PARAMS` given).
static SINGLE: AeadMech = AeadMech {
    ty: CKM_AES_GCM,
    key_type: CKK_AES,
    info,
    sealer: Gcm::sealer,
};

impl Mechanism for Gcm {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        CKM_AES_GCM
    }

    fn info(&self) -> MechanismInfo {
        let single = SINGLE.info();
        MechanismInfo {
            flags: single.flags | CKF_MESSAGE_ENCRYPT | CKF_MESSAGE_DECRYPT,
            ..single
        }
    }

    fn check_key(&self, key: &Object, usage: CK_ATTRIBUTE_TYPE) -> Result<()> {
        SINGLE.check_key(key, usage)
    }

    fn encrypt_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn CipherOp>> {
        SINGLE.encrypt_init(key, params)
    }

    fn decrypt_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn CipherOp>> {
        SINGLE.decrypt_init(key, params)
    }

    fn wrap(&self, key: &Key<'_>, material: &[u8], params: &MechanismParams) -> Result<Vec<u8>> {
        SINGLE.wrap(key, material, params)
    }

    fn unwrap(&self, key: &Key<'_>, wrapped: &[u8], params: &MechanismParams) -> Result<Output> {
        SINGLE.unwrap(key, wrapped, params)
    }

    fn message_encrypt_init(
        &self,
        key: &Key<'_>,
        params: &MechanismParams,
    ) -> Result<Box<dyn MessageCipherOp>> {
        Ok(Box::new(MessageOp::new(key, params, true)?))
    }

    fn message_decrypt_init(
        &self,
        key: &Key<'_>,
        params: &MechanismParams,
    ) -> Result<Box<dyn MessageCipherOp>> {
        Ok(Box::new(MessageOp::new(key, params, false)?))
    }
}

struct GcmSealer {
    key: Arc<AesKey>,
    p: Params,
}

impl Sealer for GcmSealer {
    fn tag_len(&self) -> usize {
        self.p.tag_len
    }

    fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        self.key
            .gcm_seal(&self.p.iv, &self.p.aad, plaintext, self.p.tag_len)
    }

    fn open(&self, ciphertext: &[u8], tag: &[u8]) -> Result<Option<Output>> {
        self.key.gcm_open(&self.p.iv, &self.p.aad, ciphertext, tag)
    }
}

// ---- message-based encryption (PKCS#11 3.0) ---------------------------------------------------

/// One message in progress.
struct Message {
    iv: Vec<u8>,
    aad: Vec<u8>,
    tag_len: usize,
    buf: Zeroizing<Vec<u8>>,
}

/// A `C_MessageEncryptInit`/`C_MessageDecryptInit` context for AES-GCM.
struct MessageOp {
    key: Arc<AesKey>,
    encrypt: bool,
    /// Messages encrypted with a generated counter IV so far (`CKG_GENERATE_COUNTER[_XOR]`).
    counter: u128,
    /// The IV the first `CKG_GENERATE_COUNTER_XOR` message was given: later messages XOR the
    /// counter into this one, whatever the application passes back.
    xor_base: Option<Vec<u8>>,
    message: Option<Message>,
}

/// Fewest generated (non-fixed) IV bits accepted for random generation: below this, random
/// IVs collide too soon (SP 800-38D §8.2.2 uses at least 96 bits in total).
const MIN_RANDOM_BITS: usize = 64;

impl MessageOp {
    fn new(key: &Key<'_>, params: &MechanismParams, encrypt: bool) -> Result<Self> {
        // The per-message parameters come with each message ("The mechanism parameter is
        // passed to all three of these functions"); what the init gets is not used. It may be
        // absent or a CK_GCM_MESSAGE_PARAMS (the spec's example; the C door decodes the init's
        // 48-byte structure as that); a CK_GCM_PARAMS from a Rust caller is accepted too.
        match params {
            MechanismParams::None
            | MechanismParams::GcmMessage { .. }
            | MechanismParams::Gcm { .. } => {}
            _ => return Err(Error::MechanismParamInvalid),
        }
        Ok(Self {
            key: aes_key(key)?,
            encrypt,
            counter: 0,
            xor_base: None,
            message: None,
        })
    }

    /// The IV of the next message on encryption, per `ivGenerator`.
    fn next_iv(&mut self, iv: &[u8], fixed_bits: CK_ULONG, generator: CK_ULONG) -> Result<Vec<u8>> {
        if iv.is_empty() {
            return Err(Error::MechanismParamInvalid);
        }
        let total_bits = iv.len() * 8;
        let fixed = usize::try_from(fixed_bits)
            .ok()
            .filter(|f| *f <= total_bits)
            .ok_or(Error::MechanismParamInvalid)?;
        let free = total_bits - fixed;
        // `mask` selects the generated (non-fixed, least significant) bits.
        let mask: Vec<u8> = (0..iv.len())
            .map(|i| {
                let first_bit = i * 8;
                if first_bit + 8 <= fixed {
                    0x00
                } else if first_bit >= fixed {
                    0xff
                } else {
                    0xffu8 >> (fixed - first_bit)
                }
            })
            .collect();
        let counter_block = |counter: u128| -> Result<Vec<u8>> {
            if free < 128 && counter >> free != 0 {
                // Every IV of this context was used: the key needs a new fixed field.
                return Err(Error::MechanismParamInvalid);
            }
            let bytes = counter.to_be_bytes();
            let mut v = vec![0u8; iv.len()];
            for (dst, src) in v.iter_mut().rev().zip(bytes.iter().rev()) {
                *dst = *src;
            }
            Ok(v)
        };
        let merge = |base: &[u8], generated: &[u8], xor: bool| -> Vec<u8> {
            base.iter()
                .zip(generated)
                .zip(&mask)
                .map(|((b, g), m)| if xor { b ^ (g & m) } else { (b & !m) | (g & m) })
                .collect()
        };
        match generator {
            CKG_NO_GENERATE => Ok(iv.to_vec()),
            CKG_GENERATE | CKG_GENERATE_RANDOM => {
                if free < MIN_RANDOM_BITS {
                    return Err(Error::MechanismParamInvalid);
                }
                let mut r = vec![0u8; iv.len()];
                fill_random(&mut r)?;
                Ok(merge(iv, &r, false))
            }
            CKG_GENERATE_COUNTER => {
                let c = counter_block(self.counter)?;
                self.counter += 1;
                Ok(merge(iv, &c, false))
            }
            CKG_GENERATE_COUNTER_XOR => {
                let base = self.xor_base.get_or_insert_with(|| iv.to_vec()).clone();
                if base.len() != iv.len() {
                    return Err(Error::MechanismParamInvalid);
                }
                let c = counter_block(self.counter)?;
                self.counter += 1;
                Ok(merge(&base, &c, true))
            }
            _ => Err(Error::MechanismParamInvalid),
        }
    }
}

impl MessageCipherOp for MessageOp {
    fn begin(&mut self, params: &mut MechanismParams, aad: &[u8]) -> Result<()> {
        let MechanismParams::GcmMessage {
            iv,
            iv_fixed_bits,
            iv_generator,
            tag_bits,
            ..
        } = params
        else {
            return Err(Error::MechanismParamInvalid);
        };
        let tag_len = tag_len(*tag_bits)?;
        let message_iv = if self.encrypt {
            self.next_iv(iv, *iv_fixed_bits, *iv_generator)?
        } else {
            // "The ulIvFixedBits and ivGenerator fields are ignored" on decryption.
            if iv.is_empty() {
                return Err(Error::MechanismParamInvalid);
            }
            iv.clone()
        };
        iv.clone_from(&message_iv);
        self.message = Some(Message {
            iv: message_iv,
            aad: aad.to_vec(),
            tag_len,
            buf: Zeroizing::new(Vec::new()),
        });
        Ok(())
    }

    fn next_len(&self, input_len: usize, last: bool) -> usize {
        match (&self.message, last) {
            (Some(m), true) => m.buf.len() + input_len,
            _ => 0,
        }
    }

    fn next(&mut self, params: &mut MechanismParams, data: &[u8], last: bool) -> Result<Output> {
        let m = self
            .message
            .as_mut()
            .ok_or(Error::OperationNotInitialized)?;
        m.buf.extend_from_slice(data);
        if !last {
            return Ok(Zeroizing::new(Vec::new()));
        }
        let m = self.message.take().ok_or(Error::OperationNotInitialized)?;
        let MechanismParams::GcmMessage { tag, .. } = params else {
            return Err(Error::MechanismParamInvalid);
        };
        if self.encrypt {
            let mut out = Zeroizing::new(m.buf.to_vec());
            let full = self.key.gcm_seal_in_place(&m.iv, &m.aad, &mut out)?;
            *tag = full.get(..m.tag_len).unwrap_or_default().to_vec();
            Ok(out)
        } else {
            if tag.len() != m.tag_len {
                return Err(Error::MechanismParamInvalid);
            }
            self.key
                .gcm_open(&m.iv, &m.aad, &m.buf, tag)?
                .ok_or(Error::AeadDecryptFailed)
        }
    }

    fn in_message(&self) -> bool {
        self.message.is_some()
    }

    fn abort(&mut self) {
        self.message = None;
    }
}
