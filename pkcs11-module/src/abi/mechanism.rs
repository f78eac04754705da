//! `CK_MECHANISM` → owned `bridge::Mechanism`, and the per-message parameters of the 3.0
//! message API.
//!
//! The parameter structure is chosen by mechanism type ([`param_kind`]). Every structure is
//! read only if `ulParameterLen` is exactly its size, and every pointer and length inside it
//! goes through [`in_bytes`]; anything malformed is `CKR_MECHANISM_PARAM_INVALID`. A mechanism
//! this module has no structure for gets its parameter copied byte for byte
//! (`MechanismParams::Raw`).

use std::ffi::c_void;
use std::marker::PhantomData;

use bridge::{
    Backend, BackendExt as _, Error, Mechanism, MechanismParams, OaepParams, SessionHandle,
};
use cryptoki_sys::*;

use super::ptr::{MAX_IO_LEN, in_bytes, read_struct, read_value, to_usize, write_bytes};

/// Decodes the caller's mechanism; NULL is `CKR_ARGUMENTS_BAD`.
///
/// # Safety
///
/// `ptr` must be NULL or valid for reads of a `CK_MECHANISM` whose parameter satisfies
/// [`decode_params`]'s contract.
pub(crate) unsafe fn mechanism_in(ptr: *const CK_MECHANISM) -> Result<Mechanism, Error> {
    // SAFETY: forwarded from the caller.
    unsafe { mechanism_opt(ptr) }?.ok_or(Error::ArgumentsBad)
}

/// Decodes the caller's mechanism; NULL is `None`.
///
/// # Safety
///
/// As [`mechanism_in`].
unsafe fn mechanism_opt(ptr: *const CK_MECHANISM) -> Result<Option<Mechanism>, Error> {
    // SAFETY: forwarded from the caller.
    let Some(raw) = (unsafe { read_value(ptr) }) else {
        return Ok(None);
    };
    // SAFETY: the caller vouches for the parameter of the mechanism.
    let params = unsafe { decode_params(raw.mechanism, raw.pParameter, raw.ulParameterLen) }?;
    Ok(Some(Mechanism::with(raw.mechanism, params)))
}

/// The shape of every `C_*Init` that takes a mechanism: decode it and start the operation, or,
/// for a NULL mechanism, terminate the active one. The specification defines the NULL case
/// ("C_EncryptInit can be called with pMechanism set to NULL_PTR to terminate an active
/// encryption operation"); it is forwarded as `C_SessionCancel` with the operation's flag,
/// the 3.0 call with exactly that meaning.
///
/// # Safety
///
/// As [`mechanism_in`].
pub(crate) unsafe fn init_or_cancel(
    router: &dyn Backend,
    session: SessionHandle,
    ptr: *const CK_MECHANISM,
    cancel_flag: CK_FLAGS,
    init: impl FnOnce(&Mechanism) -> Result<(), Error>,
) -> Result<(), Error> {
    // SAFETY: forwarded from the caller.
    match unsafe { mechanism_opt(ptr) }? {
        Some(mech) => init(&mech),
        None => router.session_cancel(session, cancel_flag),
    }
}

/// [`init_or_cancel`] for `C_MessageEncryptInit`/`C_MessageDecryptInit`: there an AEAD
/// mechanism's parameter is its message form or absent, never the structure of `C_EncryptInit`
/// ([`message_init_params`]).
///
/// # Safety
///
/// `ptr` must be NULL or valid for reads of a `CK_MECHANISM` whose parameter satisfies
/// [`message_init_params`]'s contract.
pub(crate) unsafe fn message_init_or_cancel(
    router: &dyn Backend,
    session: SessionHandle,
    ptr: *const CK_MECHANISM,
    cancel_flag: CK_FLAGS,
    init: impl FnOnce(&Mechanism) -> Result<(), Error>,
) -> Result<(), Error> {
    // SAFETY: forwarded from the caller.
    let Some(raw) = (unsafe { read_value(ptr) }) else {
        return router.session_cancel(session, cancel_flag);
    };
    // SAFETY: the caller vouches for the parameter of the mechanism.
    let params = unsafe { message_init_params(raw.mechanism, raw.pParameter, raw.ulParameterLen) }?;
    init(&Mechanism::with(raw.mechanism, params))
}

/// The parameter of a message-based encryption or decryption init. For `CKM_AES_GCM` it is
/// NULL or a `CK_GCM_MESSAGE_PARAMS` (PKCS#11 3.0, "AES-GCM": "the mechanism parameter ... of
/// C_MessageEncryptInit" is the message form; the per-message values come with each
/// `C_EncryptMessage`), which has the size of `CK_GCM_PARAMS` and so cannot be told from it by
/// length: the message form is the one decoded. Its IV is copied (a module behind the bridge
/// gets the structure whole); its tag buffer, an output of each message, is not read. Other
/// mechanisms take what `C_EncryptInit` would.
///
/// # Safety
///
/// If `ptr` is non-null it must be valid for reads of `len` bytes; for `CKM_AES_GCM` with `len`
/// the size of `CK_GCM_MESSAGE_PARAMS`, `pIv` must be NULL or valid for reads of `ulIvLen`
/// bytes; otherwise as [`decode_params`].
unsafe fn message_init_params(
    ty: CK_MECHANISM_TYPE,
    ptr: *const c_void,
    len: CK_ULONG,
) -> Result<MechanismParams, Error> {
    if param_kind(ty) != ParamKind::Gcm {
        // SAFETY: forwarded from the caller.
        return unsafe { decode_params(ty, ptr, len) };
    }
    let size = to_usize(len, Error::MechanismParamInvalid)?;
    if size > MAX_IO_LEN || (ptr.is_null() && size != 0) {
        return Err(Error::MechanismParamInvalid);
    }
    if ptr.is_null() || size == 0 {
        return Ok(MechanismParams::None);
    }
    // SAFETY: `ptr` is readable for `len` bytes, exactly the structure's size (contract).
    let p: CK_GCM_MESSAGE_PARAMS = unsafe { param_struct(ptr, len) }?;
    Ok(MechanismParams::GcmMessage {
        // SAFETY: the caller vouches for `pIv` holding `ulIvLen` bytes.
        iv: unsafe { param_bytes(p.pIv.cast(), p.ulIvLen) }?,
        iv_fixed_bits: p.ulIvFixedBits,
        iv_generator: p.ivGenerator,
        tag: Vec::new(),
        tag_bits: p.ulTagBits,
    })
}

/// Which parameter structure a mechanism takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ParamKind {
    /// `CK_RSA_PKCS_PSS_PARAMS`.
    Pss,
    /// `CK_RSA_PKCS_OAEP_PARAMS`.
    Oaep,
    /// `CK_AES_CTR_PARAMS`.
    AesCtr,
    /// `CK_GCM_PARAMS`.
    Gcm,
    /// `CK_CCM_PARAMS`.
    Ccm,
    /// `CK_SALSA20_CHACHA20_POLY1305_PARAMS`.
    ChaCha20Poly1305,
    /// `CK_ECDH1_DERIVE_PARAMS`.
    Ecdh1,
    /// `CK_HKDF_PARAMS`.
    Hkdf,
    /// `CK_RSA_AES_KEY_WRAP_PARAMS`.
    RsaAesKeyWrap,
    /// `CK_AES_CBC_ENCRYPT_DATA_PARAMS`.
    AesCbcEncryptData,
    /// `CK_KEY_DERIVATION_STRING_DATA`, decoded to `Bytes`.
    StringData,
    /// `CK_MAC_GENERAL_PARAMS`, decoded to `Ulong`.
    MacGeneral,
    /// `CK_OBJECT_HANDLE`, decoded to `Ulong`.
    ObjectHandle,
    /// `CK_EDDSA_PARAMS`, optional.
    Eddsa,
    /// `CK_PKCS5_PBKD2_PARAMS2`.
    Pbkdf2,
    /// A raw IV, optional, decoded to `Bytes`.
    Iv,
    /// Anything else: no parameter, or a pointer-free block copied as `Raw`.
    Other,
}

/// The parameter structure of mechanism `ty`.
fn param_kind(ty: CK_MECHANISM_TYPE) -> ParamKind {
    match ty {
        CKM_RSA_PKCS_PSS
        | CKM_SHA1_RSA_PKCS_PSS
        | CKM_SHA224_RSA_PKCS_PSS
        | CKM_SHA256_RSA_PKCS_PSS
        | CKM_SHA384_RSA_PKCS_PSS
        | CKM_SHA512_RSA_PKCS_PSS
        | CKM_SHA3_224_RSA_PKCS_PSS
        | CKM_SHA3_256_RSA_PKCS_PSS
        | CKM_SHA3_384_RSA_PKCS_PSS
        | CKM_SHA3_512_RSA_PKCS_PSS => ParamKind::Pss,
        CKM_RSA_PKCS_OAEP => ParamKind::Oaep,
        CKM_AES_CTR => ParamKind::AesCtr,
        CKM_AES_GCM => ParamKind::Gcm,
        CKM_AES_CCM => ParamKind::Ccm,
        CKM_CHACHA20_POLY1305 => ParamKind::ChaCha20Poly1305,
        CKM_ECDH1_DERIVE | CKM_ECDH1_COFACTOR_DERIVE => ParamKind::Ecdh1,
        CKM_HKDF_DERIVE | CKM_HKDF_DATA => ParamKind::Hkdf,
        CKM_RSA_AES_KEY_WRAP => ParamKind::RsaAesKeyWrap,
        CKM_AES_CBC_ENCRYPT_DATA => ParamKind::AesCbcEncryptData,
        CKM_CONCATENATE_DATA_AND_BASE
        | CKM_CONCATENATE_BASE_AND_DATA
        | CKM_XOR_BASE_AND_DATA
        | CKM_AES_ECB_ENCRYPT_DATA => ParamKind::StringData,
        CKM_MD5_HMAC_GENERAL
        | CKM_SHA_1_HMAC_GENERAL
        | CKM_SHA224_HMAC_GENERAL
        | CKM_SHA256_HMAC_GENERAL
        | CKM_SHA384_HMAC_GENERAL
        | CKM_SHA512_HMAC_GENERAL
        | CKM_SHA512_224_HMAC_GENERAL
        | CKM_SHA512_256_HMAC_GENERAL
        | CKM_SHA512_T_HMAC_GENERAL
        | CKM_SHA3_224_HMAC_GENERAL
        | CKM_SHA3_256_HMAC_GENERAL
        | CKM_SHA3_384_HMAC_GENERAL
        | CKM_SHA3_512_HMAC_GENERAL
        | CKM_AES_MAC_GENERAL
        | CKM_AES_CMAC_GENERAL => ParamKind::MacGeneral,
        CKM_CONCATENATE_BASE_AND_KEY => ParamKind::ObjectHandle,
        CKM_EDDSA => ParamKind::Eddsa,
        CKM_PKCS5_PBKD2 => ParamKind::Pbkdf2,
        CKM_AES_CBC | CKM_AES_CBC_PAD | CKM_AES_CFB1 | CKM_AES_CFB8 | CKM_AES_CFB64
        | CKM_AES_CFB128 | CKM_AES_OFB | CKM_AES_KEY_WRAP | CKM_AES_KEY_WRAP_PAD
        | CKM_AES_KEY_WRAP_KWP | CKM_DES3_CBC | CKM_DES3_CBC_PAD => ParamKind::Iv,
        _ => ParamKind::Other,
    }
}

/// A parameter structure `T` given as (`ptr`, `len`): exactly `size_of::<T>()` bytes, else
/// `CKR_MECHANISM_PARAM_INVALID`.
///
/// # Safety
///
/// If `ptr` is non-null it must be valid for reads of `len` bytes.
unsafe fn param_struct<T: Copy>(ptr: *const c_void, len: CK_ULONG) -> Result<T, Error> {
    // SAFETY: forwarded from the caller; every T here is a cryptoki-sys structure.
    unsafe { read_struct(ptr, len) }.ok_or(Error::MechanismParamInvalid)
}

/// An embedded (pointer, length) pair, copied; NULL with a length, or an absurd length, is
/// `CKR_MECHANISM_PARAM_INVALID`.
///
/// # Safety
///
/// If `ptr` is non-null it must be valid for reads of `len` bytes.
unsafe fn param_bytes(ptr: *const c_void, len: CK_ULONG) -> Result<Vec<u8>, Error> {
    // SAFETY: forwarded from the caller.
    let bytes = unsafe { in_bytes(ptr.cast::<u8>(), len) };
    bytes
        .map(<[u8]>::to_vec)
        .map_err(|_| Error::MechanismParamInvalid)
}

/// Decodes the parameter of mechanism `ty`.
///
/// # Safety
///
/// If `ptr` is non-null it must be valid for reads of `len` bytes, and when `len` is the size
/// of the structure `ty` takes, every pointer and length inside it must describe readable
/// memory as the specification of `ty` says.
unsafe fn decode_params(
    ty: CK_MECHANISM_TYPE,
    ptr: *const c_void,
    len: CK_ULONG,
) -> Result<MechanismParams, Error> {
    let size = to_usize(len, Error::MechanismParamInvalid)?;
    if size > MAX_IO_LEN || (ptr.is_null() && size != 0) {
        return Err(Error::MechanismParamInvalid);
    }
    // Structures whose parameter may be absent.
    let absent = ptr.is_null() || size == 0;
    // In every arm: `param_struct` reads the structure only when `len` is exactly its size,
    // and the caller vouches for the structure and for the pointers inside it.
    let params = match param_kind(ty) {
        ParamKind::Pss => {
            // SAFETY: `ptr` is readable for `len` bytes (contract).
            let p: CK_RSA_PKCS_PSS_PARAMS = unsafe { param_struct(ptr, len) }?;
            MechanismParams::RsaPkcsPss {
                hash_alg: p.hashAlg,
                mgf: p.mgf,
                salt_len: p.sLen,
            }
        }
        ParamKind::Oaep => {
            // SAFETY: `ptr` is readable for `len` bytes (contract).
            let p: CK_RSA_PKCS_OAEP_PARAMS = unsafe { param_struct(ptr, len) }?;
            // SAFETY: the contract covers the pointers inside the structure.
            MechanismParams::RsaPkcsOaep(unsafe { oaep(&p) }?)
        }
        ParamKind::AesCtr => {
            // SAFETY: `ptr` is readable for `len` bytes (contract).
            let p: CK_AES_CTR_PARAMS = unsafe { param_struct(ptr, len) }?;
            MechanismParams::AesCtr {
                counter_bits: p.ulCounterBits,
                cb: p.cb,
            }
        }
        ParamKind::Gcm => {
            // SAFETY: `ptr` is readable for `len` bytes (contract).
            let p: CK_GCM_PARAMS = unsafe { param_struct(ptr, len) }?;
            MechanismParams::Gcm {
                // SAFETY: the contract covers the pointers inside the structure.
                iv: unsafe { param_bytes(p.pIv.cast(), p.ulIvLen) }?,
                iv_bits: p.ulIvBits,
                // SAFETY: the contract covers the pointers inside the structure.
                aad: unsafe { param_bytes(p.pAAD.cast(), p.ulAADLen) }?,
                tag_bits: p.ulTagBits,
            }
        }
        ParamKind::Ccm => {
            // SAFETY: `ptr` is readable for `len` bytes (contract).
            let p: CK_CCM_PARAMS = unsafe { param_struct(ptr, len) }?;
            MechanismParams::Ccm {
                data_len: p.ulDataLen,
                // SAFETY: the contract covers the pointers inside the structure.
                nonce: unsafe { param_bytes(p.pNonce.cast(), p.ulNonceLen) }?,
                // SAFETY: the contract covers the pointers inside the structure.
                aad: unsafe { param_bytes(p.pAAD.cast(), p.ulAADLen) }?,
                mac_len: p.ulMACLen,
            }
        }
        ParamKind::ChaCha20Poly1305 => {
            // SAFETY: `ptr` is readable for `len` bytes (contract).
            let p: CK_SALSA20_CHACHA20_POLY1305_PARAMS = unsafe { param_struct(ptr, len) }?;
            MechanismParams::ChaCha20Poly1305 {
                // SAFETY: the contract covers the pointers inside the structure.
                nonce: unsafe { param_bytes(p.pNonce.cast(), p.ulNonceLen) }?,
                // SAFETY: the contract covers the pointers inside the structure.
                aad: unsafe { param_bytes(p.pAAD.cast(), p.ulAADLen) }?,
            }
        }
        ParamKind::Ecdh1 => {
            // SAFETY: `ptr` is readable for `len` bytes (contract).
            let p: CK_ECDH1_DERIVE_PARAMS = unsafe { param_struct(ptr, len) }?;
            MechanismParams::Ecdh1Derive {
                kdf: p.kdf,
                // SAFETY: the contract covers the pointers inside the structure.
                shared_data: unsafe { param_bytes(p.pSharedData.cast(), p.ulSharedDataLen) }?,
                // SAFETY: the contract covers the pointers inside the structure.
                public_data: unsafe { param_bytes(p.pPublicData.cast(), p.ulPublicDataLen) }?,
            }
        }
        ParamKind::Hkdf => {
            // SAFETY: `ptr` is readable for `len` bytes (contract).
            let p: CK_HKDF_PARAMS = unsafe { param_struct(ptr, len) }?;
            MechanismParams::Hkdf {
                extract: p.bExtract != CK_FALSE,
                expand: p.bExpand != CK_FALSE,
                prf_hash: p.prfHashMechanism,
                salt_type: p.ulSaltType,
                // SAFETY: the contract covers the pointers inside the structure.
                salt: unsafe { param_bytes(p.pSalt.cast(), p.ulSaltLen) }?,
                salt_key: p.hSaltKey,
                // SAFETY: the contract covers the pointers inside the structure.
                info: unsafe { param_bytes(p.pInfo.cast(), p.ulInfoLen) }?,
            }
        }
        ParamKind::RsaAesKeyWrap => {
            // SAFETY: `ptr` is readable for `len` bytes (contract).
            let p: CK_RSA_AES_KEY_WRAP_PARAMS = unsafe { param_struct(ptr, len) }?;
            // SAFETY: the contract covers the structure `pOAEPParams` points to.
            let o = unsafe { read_value(p.pOAEPParams.cast_const()) }
                .ok_or(Error::MechanismParamInvalid)?;
            MechanismParams::RsaAesKeyWrap {
                aes_key_bits: p.ulAESKeyBits,
                // SAFETY: the contract covers the pointers inside the OAEP structure.
                oaep: unsafe { oaep(&o) }?,
            }
        }
        ParamKind::AesCbcEncryptData => {
            // SAFETY: `ptr` is readable for `len` bytes (contract).
            let p: CK_AES_CBC_ENCRYPT_DATA_PARAMS = unsafe { param_struct(ptr, len) }?;
            MechanismParams::AesCbcEncryptData {
                iv: p.iv,
                // SAFETY: the contract covers the pointers inside the structure.
                data: unsafe { param_bytes(p.pData.cast(), p.length) }?,
            }
        }
        ParamKind::StringData => {
            // SAFETY: `ptr` is readable for `len` bytes (contract).
            let p: CK_KEY_DERIVATION_STRING_DATA = unsafe { param_struct(ptr, len) }?;
            // SAFETY: the contract covers the pointers inside the structure.
            MechanismParams::StringData(unsafe { param_bytes(p.pData.cast(), p.ulLen) }?)
        }
        ParamKind::MacGeneral => {
            // SAFETY: `ptr` is readable for `len` bytes (contract).
            MechanismParams::Ulong(unsafe { param_struct::<CK_MAC_GENERAL_PARAMS>(ptr, len) }?)
        }
        ParamKind::ObjectHandle => {
            // SAFETY: `ptr` is readable for `len` bytes (contract).
            MechanismParams::Ulong(unsafe { param_struct::<CK_OBJECT_HANDLE>(ptr, len) }?)
        }
        ParamKind::Eddsa if absent => MechanismParams::None,
        ParamKind::Eddsa => {
            // SAFETY: `ptr` is readable for `len` bytes (contract).
            let p: CK_EDDSA_PARAMS = unsafe { param_struct(ptr, len) }?;
            MechanismParams::Eddsa {
                ph_flag: p.phFlag != CK_FALSE,
                // SAFETY: the contract covers the pointers inside the structure.
                context: unsafe { param_bytes(p.pContextData.cast(), p.ulContextDataLen) }?,
            }
        }
        ParamKind::Pbkdf2 => {
            // SAFETY: `ptr` is readable for `len` bytes (contract).
            let p: CK_PKCS5_PBKD2_PARAMS2 = unsafe { param_struct(ptr, len) }?;
            MechanismParams::Pbkdf2 {
                salt_source: p.saltSource,
                // SAFETY: the contract covers the pointers inside the structure.
                salt: unsafe { param_bytes(p.pSaltSourceData, p.ulSaltSourceDataLen) }?,
                iterations: p.iterations,
                prf: p.prf,
                // SAFETY: the contract covers the pointers inside the structure.
                prf_data: unsafe { param_bytes(p.pPrfData, p.ulPrfDataLen) }?,
                // SAFETY: the contract covers the pointers inside the structure.
                password: unsafe { param_bytes(p.pPassword.cast(), p.ulPasswordLen) }?,
            }
        }
        ParamKind::Iv | ParamKind::Other if absent => MechanismParams::None,
        // SAFETY: the contract covers the pointers inside the structure.
        ParamKind::Iv => MechanismParams::Bytes(unsafe { param_bytes(ptr, len) }?),
        // SAFETY: the contract covers the pointers inside the structure.
        ParamKind::Other => MechanismParams::Raw(unsafe { param_bytes(ptr, len) }?),
    };
    Ok(params)
}

/// `CK_RSA_PKCS_OAEP_PARAMS` → `OaepParams`.
///
/// # Safety
///
/// `p.pSourceData` must be NULL or valid for reads of `p.ulSourceDataLen` bytes.
unsafe fn oaep(p: &CK_RSA_PKCS_OAEP_PARAMS) -> Result<OaepParams, Error> {
    Ok(OaepParams {
        hash_alg: p.hashAlg,
        mgf: p.mgf,
        source: p.source,
        // SAFETY: forwarded from the caller.
        source_data: unsafe { param_bytes(p.pSourceData, p.ulSourceDataLen) }?,
    })
}

/// Which way the tag of per-message parameters flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TagFlow {
    /// The caller supplies the tag (decryption, verification): it is read.
    Input,
    /// The token produces the tag (encryption, signing): it is not read, and is written back
    /// with the IV by [`MessageParams::write_back`].
    Output,
}

/// The per-message parameters of the 3.0 message API (`C_EncryptMessage`, ...), decoded by
/// size: `CK_GCM_MESSAGE_PARAMS` becomes `MechanismParams::GcmMessage`, an empty parameter
/// `None`, anything else `Raw`.
pub(crate) struct MessageParams<'a> {
    /// What the backend sees and may update (a generated IV, the tag).
    pub(crate) params: MechanismParams,
    /// The caller's GCM structure, for writing back.
    gcm: Option<CK_GCM_MESSAGE_PARAMS>,
    _caller: PhantomData<&'a mut c_void>,
}

impl MessageParams<'_> {
    /// Decodes (`ptr`, `len`).
    ///
    /// # Safety
    ///
    /// If `ptr` is non-null it must be valid for reads of `len` bytes for `'a`. When `len` is
    /// the size of `CK_GCM_MESSAGE_PARAMS`, `pIv` must be valid for reads and writes of
    /// `ulIvLen` bytes and `pTag` for reads and writes of `ulTagBits / 8` bytes (rounded up),
    /// for `'a`.
    pub(crate) unsafe fn decode(
        ptr: *const c_void,
        len: CK_ULONG,
        flow: TagFlow,
    ) -> Result<Self, Error> {
        let size = to_usize(len, Error::MechanismParamInvalid)?;
        if size > MAX_IO_LEN || (ptr.is_null() && size != 0) {
            return Err(Error::MechanismParamInvalid);
        }
        let mut gcm = None;
        let params = if ptr.is_null() || size == 0 {
            MechanismParams::None
        } else if size == size_of::<CK_GCM_MESSAGE_PARAMS>() {
            // SAFETY: `len` is exactly the structure's size and readable per the contract.
            let p: CK_GCM_MESSAGE_PARAMS = unsafe { param_struct(ptr, len) }?;
            let tag_len = tag_len(p.ulTagBits)?;
            let tag = match flow {
                // SAFETY: the caller vouches for `pTag` holding the tag.
                TagFlow::Input => unsafe { param_bytes(p.pTag.cast(), to_ulong_param(tag_len)?) }?,
                TagFlow::Output if tag_len != 0 && p.pTag.is_null() => {
                    return Err(Error::MechanismParamInvalid);
                }
                TagFlow::Output => Vec::new(),
            };
            gcm = Some(p);
            MechanismParams::GcmMessage {
                // SAFETY: the caller vouches for `pIv` holding `ulIvLen` bytes.
                iv: unsafe { param_bytes(p.pIv.cast(), p.ulIvLen) }?,
                iv_fixed_bits: p.ulIvFixedBits,
                iv_generator: p.ivGenerator,
                tag,
                tag_bits: p.ulTagBits,
            }
        } else {
            // SAFETY: `len` readable bytes per the contract.
            MechanismParams::Raw(unsafe { param_bytes(ptr, len) }?)
        };
        Ok(Self {
            params,
            gcm,
            _caller: PhantomData,
        })
    }

    /// Decodes (`ptr`, `len`) as opaque bytes, never as a structure whose pointers are
    /// followed: the per-message parameters of signing and verification, which no signing
    /// mechanism here defines (a 40-byte block is not mistaken for `CK_GCM_MESSAGE_PARAMS`).
    ///
    /// # Safety
    ///
    /// If `ptr` is non-null it must be valid for reads of `len` bytes.
    pub(crate) unsafe fn decode_opaque(ptr: *const c_void, len: CK_ULONG) -> Result<Self, Error> {
        let size = to_usize(len, Error::MechanismParamInvalid)?;
        if size > MAX_IO_LEN || (ptr.is_null() && size != 0) {
            return Err(Error::MechanismParamInvalid);
        }
        let params = if ptr.is_null() || size == 0 {
            MechanismParams::None
        } else {
            // SAFETY: `len` readable bytes per the contract.
            MechanismParams::Raw(unsafe { param_bytes(ptr, len) }?)
        };
        Ok(Self {
            params,
            gcm: None,
            _caller: PhantomData,
        })
    }

    /// Writes the IV (possibly generated by the token) and the tag (if produced) back into the
    /// caller's `CK_GCM_MESSAGE_PARAMS` buffers. Does nothing for other parameters.
    pub(crate) fn write_back(&self) -> Result<(), Error> {
        let (Some(p), MechanismParams::GcmMessage { iv, tag, .. }) = (&self.gcm, &self.params)
        else {
            return Ok(());
        };
        let iv_room = to_usize(p.ulIvLen, Error::MechanismParamInvalid)?;
        if iv.len() > iv_room || (!iv.is_empty() && p.pIv.is_null()) {
            return Err(Error::Internal(
                "backend produced an IV longer than the caller's",
            ));
        }
        if tag.len() > tag_len(p.ulTagBits)? || (!tag.is_empty() && p.pTag.is_null()) {
            return Err(Error::Internal(
                "backend produced a tag longer than requested",
            ));
        }
        if !iv.is_empty() {
            // SAFETY: `decode`'s contract makes `pIv` writable for `ulIvLen >= iv.len()` bytes.
            unsafe { write_bytes(p.pIv, iv) };
        }
        if !tag.is_empty() {
            // SAFETY: `decode`'s contract makes `pTag` writable for the tag length, which is
            // at least `tag.len()`.
            unsafe { write_bytes(p.pTag, tag) };
        }
        Ok(())
    }
}

/// Bytes of a tag of `bits` bits, rounded up; absurd sizes are
/// `CKR_MECHANISM_PARAM_INVALID`.
fn tag_len(bits: CK_ULONG) -> Result<usize, Error> {
    let bits = to_usize(bits, Error::MechanismParamInvalid)?;
    let bytes = bits.div_ceil(8);
    if bytes > MAX_IO_LEN {
        return Err(Error::MechanismParamInvalid);
    }
    Ok(bytes)
}

fn to_ulong_param(n: usize) -> Result<CK_ULONG, Error> {
    CK_ULONG::try_from(n).map_err(|_| Error::MechanismParamInvalid)
}

#[cfg(test)]
mod tests {
    use std::ptr;

    use super::*;

    fn ulen<T>() -> CK_ULONG {
        CK_ULONG::try_from(size_of::<T>()).unwrap()
    }

    fn len_of(b: &[u8]) -> CK_ULONG {
        CK_ULONG::try_from(b.len()).unwrap()
    }

    /// Decodes `ty` with `param` as its parameter structure.
    fn decode<T>(ty: CK_MECHANISM_TYPE, param: &mut T) -> Result<Mechanism, Error> {
        decode_len(ty, param, ulen::<T>())
    }

    fn decode_len<T>(
        ty: CK_MECHANISM_TYPE,
        param: &mut T,
        len: CK_ULONG,
    ) -> Result<Mechanism, Error> {
        let m = CK_MECHANISM {
            mechanism: ty,
            pParameter: ptr::from_mut(param).cast::<c_void>(),
            ulParameterLen: len,
        };
        // SAFETY: the tests build every structure and buffer they point to; a length that
        // does not match the structure is refused before it is read.
        unsafe { mechanism_in(&raw const m) }
    }

    fn decode_none(ty: CK_MECHANISM_TYPE) -> Result<Mechanism, Error> {
        let m = CK_MECHANISM {
            mechanism: ty,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        };
        // SAFETY: no parameter.
        unsafe { mechanism_in(&raw const m) }
    }

    #[test]
    fn null_mechanism_is_arguments_bad() {
        assert_eq!(
            // SAFETY: NULL is never read.
            unsafe { mechanism_in(ptr::null()) },
            Err(Error::ArgumentsBad)
        );
        // SAFETY: as above.
        assert_eq!(unsafe { mechanism_opt(ptr::null()) }, Ok(None));
    }

    #[test]
    fn null_parameter_with_length_is_param_invalid() {
        let m = CK_MECHANISM {
            mechanism: CKM_SHA256,
            pParameter: ptr::null_mut(),
            ulParameterLen: 8,
        };
        assert_eq!(
            // SAFETY: the NULL parameter is refused before reading.
            unsafe { mechanism_in(&raw const m) },
            Err(Error::MechanismParamInvalid)
        );
    }

    #[test]
    fn no_parameter_is_none() {
        assert_eq!(decode_none(CKM_SHA256), Ok(Mechanism::new(CKM_SHA256)));
        assert_eq!(
            decode_none(CKM_AES_KEY_WRAP),
            Ok(Mechanism::new(CKM_AES_KEY_WRAP))
        );
        assert_eq!(decode_none(CKM_EDDSA), Ok(Mechanism::new(CKM_EDDSA)));
    }

    #[test]
    fn structures_are_required_where_the_mechanism_takes_one() {
        for ty in [
            CKM_RSA_PKCS_PSS,
            CKM_SHA256_RSA_PKCS_PSS,
            CKM_RSA_PKCS_OAEP,
            CKM_AES_CTR,
            CKM_AES_GCM,
            CKM_AES_CCM,
            CKM_ECDH1_DERIVE,
            CKM_HKDF_DERIVE,
            CKM_RSA_AES_KEY_WRAP,
            CKM_AES_CBC_ENCRYPT_DATA,
            CKM_XOR_BASE_AND_DATA,
            CKM_SHA256_HMAC_GENERAL,
            CKM_CONCATENATE_BASE_AND_KEY,
            CKM_PKCS5_PBKD2,
        ] {
            assert_eq!(
                decode_none(ty),
                Err(Error::MechanismParamInvalid),
                "0x{ty:x}"
            );
        }
    }

    #[test]
    fn pss() {
        let mut p = CK_RSA_PKCS_PSS_PARAMS {
            hashAlg: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            sLen: 32,
        };
        let want = MechanismParams::RsaPkcsPss {
            hash_alg: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            salt_len: 32,
        };
        assert_eq!(
            decode(CKM_SHA256_RSA_PKCS_PSS, &mut p).unwrap().params,
            want
        );
        assert_eq!(decode(CKM_RSA_PKCS_PSS, &mut p).unwrap().params, want);
        assert_eq!(
            decode_len(
                CKM_RSA_PKCS_PSS,
                &mut p,
                ulen::<CK_RSA_PKCS_PSS_PARAMS>() - 1
            ),
            Err(Error::MechanismParamInvalid)
        );
    }

    #[test]
    fn oaep_with_label() {
        let mut label = *b"label";
        let mut p = CK_RSA_PKCS_OAEP_PARAMS {
            hashAlg: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            source: CKZ_DATA_SPECIFIED,
            pSourceData: label.as_mut_ptr().cast(),
            ulSourceDataLen: len_of(&label),
        };
        let want = MechanismParams::RsaPkcsOaep(OaepParams {
            hash_alg: CKM_SHA256,
            mgf: CKG_MGF1_SHA256,
            source: CKZ_DATA_SPECIFIED,
            source_data: b"label".to_vec(),
        });
        assert_eq!(decode(CKM_RSA_PKCS_OAEP, &mut p).unwrap().params, want);
        p.pSourceData = ptr::null_mut();
        assert_eq!(
            decode(CKM_RSA_PKCS_OAEP, &mut p),
            Err(Error::MechanismParamInvalid)
        );
        assert_eq!(
            decode_len(
                CKM_RSA_PKCS_OAEP,
                &mut p,
                ulen::<CK_RSA_PKCS_OAEP_PARAMS>() + 8
            ),
            Err(Error::MechanismParamInvalid)
        );
    }

    #[test]
    fn aes_ctr() {
        let mut p = CK_AES_CTR_PARAMS {
            ulCounterBits: 32,
            cb: [7; 16],
        };
        assert_eq!(
            decode(CKM_AES_CTR, &mut p).unwrap().params,
            MechanismParams::AesCtr {
                counter_bits: 32,
                cb: [7; 16]
            }
        );
        assert_eq!(
            decode_len(CKM_AES_CTR, &mut p, 16),
            Err(Error::MechanismParamInvalid)
        );
    }

    #[test]
    fn gcm() {
        let mut iv = [1u8; 12];
        let mut aad = *b"header";
        let mut p = CK_GCM_PARAMS {
            pIv: iv.as_mut_ptr(),
            ulIvLen: 12,
            ulIvBits: 96,
            pAAD: aad.as_mut_ptr(),
            ulAADLen: len_of(&aad),
            ulTagBits: 128,
        };
        assert_eq!(
            decode(CKM_AES_GCM, &mut p).unwrap().params,
            MechanismParams::Gcm {
                iv: vec![1; 12],
                iv_bits: 96,
                aad: b"header".to_vec(),
                tag_bits: 128
            }
        );
        assert_eq!(
            decode_len(CKM_AES_GCM, &mut p, ulen::<CK_GCM_PARAMS>() - 8),
            Err(Error::MechanismParamInvalid)
        );
    }

    #[test]
    fn gcm_null_iv_with_length_is_an_error_not_a_crash() {
        let mut p = CK_GCM_PARAMS {
            pIv: ptr::null_mut(),
            ulIvLen: 12,
            ulIvBits: 96,
            pAAD: ptr::null_mut(),
            ulAADLen: 0,
            ulTagBits: 128,
        };
        assert_eq!(
            decode(CKM_AES_GCM, &mut p),
            Err(Error::MechanismParamInvalid)
        );
        // An absurd AAD length is refused before it is read.
        let mut p = CK_GCM_PARAMS {
            pIv: ptr::null_mut(),
            ulIvLen: 0,
            ulIvBits: 0,
            pAAD: ptr::NonNull::dangling().as_ptr(),
            ulAADLen: CK_ULONG::MAX,
            ulTagBits: 128,
        };
        assert_eq!(
            decode(CKM_AES_GCM, &mut p),
            Err(Error::MechanismParamInvalid)
        );
    }

    #[test]
    fn ccm() {
        let mut nonce = [2u8; 13];
        let mut p = CK_CCM_PARAMS {
            ulDataLen: 100,
            pNonce: nonce.as_mut_ptr(),
            ulNonceLen: 13,
            pAAD: ptr::null_mut(),
            ulAADLen: 0,
            ulMACLen: 16,
        };
        assert_eq!(
            decode(CKM_AES_CCM, &mut p).unwrap().params,
            MechanismParams::Ccm {
                data_len: 100,
                nonce: vec![2; 13],
                aad: vec![],
                mac_len: 16
            }
        );
        assert_eq!(
            decode_len(CKM_AES_CCM, &mut p, 8),
            Err(Error::MechanismParamInvalid)
        );
    }

    #[test]
    fn chacha20_poly1305() {
        let mut nonce = [2u8; 12];
        let mut aad = [3u8; 5];
        let mut p = CK_SALSA20_CHACHA20_POLY1305_PARAMS {
            pNonce: nonce.as_mut_ptr(),
            ulNonceLen: 12,
            pAAD: aad.as_mut_ptr(),
            ulAADLen: 5,
        };
        assert_eq!(
            decode(CKM_CHACHA20_POLY1305, &mut p).unwrap().params,
            MechanismParams::ChaCha20Poly1305 {
                nonce: vec![2; 12],
                aad: vec![3; 5],
            }
        );
        assert_eq!(
            decode_len(CKM_CHACHA20_POLY1305, &mut p, 8),
            Err(Error::MechanismParamInvalid)
        );
    }

    #[test]
    fn ecdh1() {
        let mut point = [4u8; 65];
        let mut p = CK_ECDH1_DERIVE_PARAMS {
            kdf: CKD_NULL,
            ulSharedDataLen: 0,
            pSharedData: ptr::null_mut(),
            ulPublicDataLen: len_of(&point),
            pPublicData: point.as_mut_ptr(),
        };
        let want = MechanismParams::Ecdh1Derive {
            kdf: CKD_NULL,
            shared_data: vec![],
            public_data: vec![4; 65],
        };
        assert_eq!(decode(CKM_ECDH1_DERIVE, &mut p).unwrap().params, want);
        assert_eq!(
            decode(CKM_ECDH1_COFACTOR_DERIVE, &mut p).unwrap().params,
            want
        );
        assert_eq!(
            decode_len(CKM_ECDH1_DERIVE, &mut p, 0),
            Err(Error::MechanismParamInvalid)
        );
    }

    #[test]
    fn hkdf() {
        let mut salt = *b"salt";
        let mut info = *b"info";
        let mut p = CK_HKDF_PARAMS {
            bExtract: CK_TRUE,
            bExpand: CK_TRUE,
            prfHashMechanism: CKM_SHA256,
            ulSaltType: CKF_HKDF_SALT_DATA,
            pSalt: salt.as_mut_ptr(),
            ulSaltLen: 4,
            hSaltKey: 0,
            pInfo: info.as_mut_ptr(),
            ulInfoLen: 4,
        };
        let want = MechanismParams::Hkdf {
            extract: true,
            expand: true,
            prf_hash: CKM_SHA256,
            salt_type: CKF_HKDF_SALT_DATA,
            salt: b"salt".to_vec(),
            salt_key: 0,
            info: b"info".to_vec(),
        };
        assert_eq!(decode(CKM_HKDF_DERIVE, &mut p).unwrap().params, want);
        assert_eq!(decode(CKM_HKDF_DATA, &mut p).unwrap().params, want);
        assert_eq!(
            decode_len(CKM_HKDF_DERIVE, &mut p, ulen::<CK_HKDF_PARAMS>() + 1),
            Err(Error::MechanismParamInvalid)
        );
    }

    #[test]
    fn rsa_aes_key_wrap() {
        let mut oaep = CK_RSA_PKCS_OAEP_PARAMS {
            hashAlg: CKM_SHA_1,
            mgf: CKG_MGF1_SHA1,
            source: CKZ_DATA_SPECIFIED,
            pSourceData: ptr::null_mut(),
            ulSourceDataLen: 0,
        };
        let mut p = CK_RSA_AES_KEY_WRAP_PARAMS {
            ulAESKeyBits: 256,
            pOAEPParams: &raw mut oaep,
        };
        assert_eq!(
            decode(CKM_RSA_AES_KEY_WRAP, &mut p).unwrap().params,
            MechanismParams::RsaAesKeyWrap {
                aes_key_bits: 256,
                oaep: OaepParams {
                    hash_alg: CKM_SHA_1,
                    mgf: CKG_MGF1_SHA1,
                    source: CKZ_DATA_SPECIFIED,
                    source_data: vec![],
                },
            }
        );
        let mut p = CK_RSA_AES_KEY_WRAP_PARAMS {
            ulAESKeyBits: 256,
            pOAEPParams: ptr::null_mut(),
        };
        assert_eq!(
            decode(CKM_RSA_AES_KEY_WRAP, &mut p),
            Err(Error::MechanismParamInvalid)
        );
        assert_eq!(
            decode_len(CKM_RSA_AES_KEY_WRAP, &mut p, 8),
            Err(Error::MechanismParamInvalid)
        );
    }

    #[test]
    fn aes_cbc_encrypt_data() {
        let mut data = [5u8; 32];
        let mut p = CK_AES_CBC_ENCRYPT_DATA_PARAMS {
            iv: [9; 16],
            pData: data.as_mut_ptr(),
            length: 32,
        };
        assert_eq!(
            decode(CKM_AES_CBC_ENCRYPT_DATA, &mut p).unwrap().params,
            MechanismParams::AesCbcEncryptData {
                iv: [9; 16],
                data: vec![5; 32]
            }
        );
        p.pData = ptr::null_mut();
        assert_eq!(
            decode(CKM_AES_CBC_ENCRYPT_DATA, &mut p),
            Err(Error::MechanismParamInvalid)
        );
        assert_eq!(
            decode_len(CKM_AES_CBC_ENCRYPT_DATA, &mut p, 16),
            Err(Error::MechanismParamInvalid)
        );
    }

    #[test]
    fn key_derivation_string_data() {
        let mut data = *b"abc";
        let mut p = CK_KEY_DERIVATION_STRING_DATA {
            pData: data.as_mut_ptr(),
            ulLen: 3,
        };
        for ty in [
            CKM_CONCATENATE_DATA_AND_BASE,
            CKM_CONCATENATE_BASE_AND_DATA,
            CKM_XOR_BASE_AND_DATA,
            CKM_AES_ECB_ENCRYPT_DATA,
        ] {
            assert_eq!(
                decode(ty, &mut p).unwrap().params,
                MechanismParams::StringData(b"abc".to_vec())
            );
            assert_eq!(decode_len(ty, &mut p, 8), Err(Error::MechanismParamInvalid));
        }
    }

    #[test]
    fn mac_general_and_object_handle() {
        let mut v: CK_ULONG = 16;
        for ty in [
            CKM_SHA256_HMAC_GENERAL,
            CKM_SHA_1_HMAC_GENERAL,
            CKM_AES_MAC_GENERAL,
            CKM_AES_CMAC_GENERAL,
        ] {
            assert_eq!(
                decode(ty, &mut v).unwrap().params,
                MechanismParams::Ulong(16)
            );
        }
        let mut h: CK_OBJECT_HANDLE = 42;
        assert_eq!(
            decode(CKM_CONCATENATE_BASE_AND_KEY, &mut h).unwrap().params,
            MechanismParams::Ulong(42)
        );
        let mut short = [0u8; 4];
        assert_eq!(
            decode(CKM_SHA256_HMAC_GENERAL, &mut short),
            Err(Error::MechanismParamInvalid)
        );
    }

    #[test]
    fn eddsa_optional() {
        let mut ctx = *b"ctx";
        let mut p = CK_EDDSA_PARAMS {
            phFlag: CK_FALSE,
            ulContextDataLen: 3,
            pContextData: ctx.as_mut_ptr(),
        };
        assert_eq!(
            decode(CKM_EDDSA, &mut p).unwrap().params,
            MechanismParams::Eddsa {
                ph_flag: false,
                context: b"ctx".to_vec()
            }
        );
        assert_eq!(
            decode_len(CKM_EDDSA, &mut p, 4),
            Err(Error::MechanismParamInvalid)
        );
        assert_eq!(
            decode_none(CKM_EDDSA).unwrap().params,
            MechanismParams::None
        );
    }

    #[test]
    fn pbkdf2() {
        let mut salt = *b"NaCl";
        let mut password = *b"password";
        let mut p = CK_PKCS5_PBKD2_PARAMS2 {
            saltSource: CKZ_SALT_SPECIFIED,
            pSaltSourceData: salt.as_mut_ptr().cast(),
            ulSaltSourceDataLen: 4,
            iterations: 1000,
            prf: CKP_PKCS5_PBKD2_HMAC_SHA256,
            pPrfData: ptr::null_mut(),
            ulPrfDataLen: 0,
            pPassword: password.as_mut_ptr(),
            ulPasswordLen: 8,
        };
        assert_eq!(
            decode(CKM_PKCS5_PBKD2, &mut p).unwrap().params,
            MechanismParams::Pbkdf2 {
                salt_source: CKZ_SALT_SPECIFIED,
                salt: b"NaCl".to_vec(),
                iterations: 1000,
                prf: CKP_PKCS5_PBKD2_HMAC_SHA256,
                prf_data: vec![],
                password: b"password".to_vec(),
            }
        );
        // The old CK_PKCS5_PBKD2_PARAMS has a pointer where PARAMS2 has the password length:
        // read as a length it is absurd and refused.
        p.ulPasswordLen = CK_ULONG::MAX;
        assert_eq!(
            decode(CKM_PKCS5_PBKD2, &mut p),
            Err(Error::MechanismParamInvalid)
        );
        assert_eq!(
            decode_len(CKM_PKCS5_PBKD2, &mut p, 8),
            Err(Error::MechanismParamInvalid)
        );
    }

    #[test]
    fn raw_iv_and_unknown_parameters() {
        let mut iv = [3u8; 16];
        for ty in [
            CKM_AES_CBC,
            CKM_AES_CBC_PAD,
            CKM_AES_CFB128,
            CKM_AES_OFB,
            CKM_AES_KEY_WRAP_PAD,
            CKM_DES3_CBC,
            CKM_DES3_CBC_PAD,
        ] {
            assert_eq!(
                decode(ty, &mut iv).unwrap().params,
                MechanismParams::Bytes(vec![3; 16])
            );
        }
        assert_eq!(
            decode(CKM_CAST5_CBC, &mut iv).unwrap().params,
            MechanismParams::Raw(vec![3; 16])
        );
        assert_eq!(
            decode_len(CKM_SHA256, &mut iv, 0).unwrap().params,
            MechanismParams::None
        );
    }

    #[test]
    fn every_kind_is_reachable() {
        let kinds = [
            (CKM_SHA3_256_RSA_PKCS_PSS, ParamKind::Pss),
            (CKM_RSA_PKCS_OAEP, ParamKind::Oaep),
            (CKM_AES_CTR, ParamKind::AesCtr),
            (CKM_AES_GCM, ParamKind::Gcm),
            (CKM_AES_CCM, ParamKind::Ccm),
            (CKM_CHACHA20_POLY1305, ParamKind::ChaCha20Poly1305),
            (CKM_ECDH1_COFACTOR_DERIVE, ParamKind::Ecdh1),
            (CKM_HKDF_DATA, ParamKind::Hkdf),
            (CKM_RSA_AES_KEY_WRAP, ParamKind::RsaAesKeyWrap),
            (CKM_AES_CBC_ENCRYPT_DATA, ParamKind::AesCbcEncryptData),
            (CKM_AES_ECB_ENCRYPT_DATA, ParamKind::StringData),
            (CKM_SHA3_512_HMAC_GENERAL, ParamKind::MacGeneral),
            (CKM_CONCATENATE_BASE_AND_KEY, ParamKind::ObjectHandle),
            (CKM_EDDSA, ParamKind::Eddsa),
            (CKM_PKCS5_PBKD2, ParamKind::Pbkdf2),
            (CKM_AES_KEY_WRAP_KWP, ParamKind::Iv),
            (CKM_DES3_CBC_PAD, ParamKind::Iv),
            (CKM_ECDSA, ParamKind::Other),
        ];
        for (ty, kind) in kinds {
            assert_eq!(param_kind(ty), kind, "0x{ty:x}");
        }
    }

    fn message(
        p: &mut CK_GCM_MESSAGE_PARAMS,
        flow: TagFlow,
    ) -> Result<MessageParams<'static>, Error> {
        // SAFETY: the tests' structures and buffers outlive every use of the result.
        unsafe {
            MessageParams::decode(
                ptr::from_mut(p).cast(),
                ulen::<CK_GCM_MESSAGE_PARAMS>(),
                flow,
            )
        }
    }

    #[test]
    fn gcm_message_params_decode_and_write_back() {
        let mut iv = [0u8; 12];
        let mut tag = [0u8; 16];
        let mut p = CK_GCM_MESSAGE_PARAMS {
            pIv: iv.as_mut_ptr(),
            ulIvLen: 12,
            ulIvFixedBits: 0,
            ivGenerator: CKG_GENERATE_RANDOM,
            pTag: tag.as_mut_ptr(),
            ulTagBits: 128,
        };
        let mut m = message(&mut p, TagFlow::Output).unwrap();
        match &mut m.params {
            MechanismParams::GcmMessage {
                iv,
                tag,
                iv_generator,
                tag_bits,
                ..
            } => {
                assert_eq!(*iv_generator, CKG_GENERATE_RANDOM);
                assert_eq!(*tag_bits, 128);
                assert!(tag.is_empty());
                // What a backend does: generate the IV, produce the tag.
                iv.copy_from_slice(&[0xAA; 12]);
                *tag = vec![0xBB; 16];
            }
            other => panic!("{other:?}"),
        }
        m.write_back().unwrap();
        drop(m);
        assert_eq!(iv, [0xAA; 12]);
        assert_eq!(tag, [0xBB; 16]);

        // Decryption reads the tag.
        let m = message(&mut p, TagFlow::Input).unwrap();
        match &m.params {
            MechanismParams::GcmMessage { iv, tag, .. } => {
                assert_eq!(iv, &[0xAA; 12]);
                assert_eq!(tag, &[0xBB; 16]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn gcm_message_params_errors() {
        let mut p = CK_GCM_MESSAGE_PARAMS {
            pIv: ptr::null_mut(),
            ulIvLen: 12,
            ulIvFixedBits: 0,
            ivGenerator: CKG_NO_GENERATE,
            pTag: ptr::null_mut(),
            ulTagBits: 0,
        };
        assert!(matches!(
            message(&mut p, TagFlow::Input),
            Err(Error::MechanismParamInvalid)
        ));
        p.ulIvLen = 0;
        p.ulTagBits = 128;
        assert!(matches!(
            message(&mut p, TagFlow::Output),
            Err(Error::MechanismParamInvalid)
        ));
        assert!(matches!(
            message(&mut p, TagFlow::Input),
            Err(Error::MechanismParamInvalid)
        ));
        p.ulTagBits = CK_ULONG::MAX;
        assert!(matches!(
            message(&mut p, TagFlow::Output),
            Err(Error::MechanismParamInvalid)
        ));
    }

    #[test]
    fn message_init_takes_the_message_form_of_gcm() {
        // NULL: no parameter (the per-message values come with each message).
        // SAFETY: NULL is never read.
        let p = unsafe { message_init_params(CKM_AES_GCM, ptr::null(), 0) };
        assert_eq!(p, Ok(MechanismParams::None));
        // A CK_GCM_MESSAGE_PARAMS, not misread as the CK_GCM_PARAMS of the same size; its tag
        // buffer (an output of each message) is not read, so NULL there is fine.
        let mut iv = [7u8; 12];
        let mut m = CK_GCM_MESSAGE_PARAMS {
            pIv: iv.as_mut_ptr(),
            ulIvLen: 12,
            ulIvFixedBits: 96,
            ivGenerator: CKG_NO_GENERATE,
            pTag: ptr::null_mut(),
            ulTagBits: 128,
        };
        assert_eq!(
            size_of::<CK_GCM_MESSAGE_PARAMS>(),
            size_of::<CK_GCM_PARAMS>()
        );
        // SAFETY: `m` and `iv` are live for the call.
        let p = unsafe {
            message_init_params(
                CKM_AES_GCM,
                ptr::from_mut(&mut m).cast(),
                ulen::<CK_GCM_MESSAGE_PARAMS>(),
            )
        };
        assert_eq!(
            p,
            Ok(MechanismParams::GcmMessage {
                iv: vec![7; 12],
                iv_fixed_bits: 96,
                iv_generator: CKG_NO_GENERATE,
                tag: Vec::new(),
                tag_bits: 128,
            })
        );
        // Another size is no GCM structure at all.
        // SAFETY: `iv` holds 12 bytes.
        let p = unsafe { message_init_params(CKM_AES_GCM, iv.as_ptr().cast(), 12) };
        assert_eq!(p, Err(Error::MechanismParamInvalid));
        // Other mechanisms decode as for C_EncryptInit.
        // SAFETY: `iv` holds 12 bytes.
        let p = unsafe { message_init_params(CKM_AES_CBC, iv.as_ptr().cast(), 12) };
        assert_eq!(p, Ok(MechanismParams::Bytes(vec![7; 12])));
    }

    #[test]
    fn message_params_by_size() {
        // SAFETY: NULL is never read.
        let m = unsafe { MessageParams::decode(ptr::null(), 0, TagFlow::Input) }.unwrap();
        assert_eq!(m.params, MechanismParams::None);
        // SAFETY: as above.
        let r = unsafe { MessageParams::decode(ptr::null(), 4, TagFlow::Input) };
        assert!(matches!(r, Err(Error::MechanismParamInvalid)));
        let nonce = [1u8; 12];
        // SAFETY: `nonce` holds 12 bytes.
        let m =
            unsafe { MessageParams::decode(nonce.as_ptr().cast(), 12, TagFlow::Input) }.unwrap();
        assert_eq!(m.params, MechanismParams::Raw(vec![1; 12]));
        assert_eq!(m.write_back(), Ok(()));
    }
}
