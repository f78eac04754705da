//! Owned values → C structures, and C answers → owned values. Safe code only.
//!
//! Every C structure built here owns the memory its pointers point into, so it stays valid for
//! as long as the structure lives, however long the foreign call takes. Pointers are taken once,
//! at construction, from heap buffers (`Vec`s) that are never resized afterwards; moving the
//! owning struct does not move them. `ffi` relies on this: each type below documents what its
//! pointers are valid for.
//!
//! Nothing the module writes back is trusted: lengths are checked against what was allocated
//! before a single byte is read, and values are read from our own buffers, never through a
//! pointer the module could have changed.

use std::ffi::c_void;
use std::ptr;

use cryptoki_sys::*;
use zeroize::Zeroize;

use super::contract_broken;
use crate::error::{Error, Result};
use crate::types::*;

/// The largest attribute value or parameter buffer we allocate on a module's word (64 MiB). A
/// larger length is a broken module, not a value: allocating it would abort the process.
const MAX_LEN: usize = 64 << 20;

/// `usize` → `CK_ULONG` for a length we pass in.
pub(super) fn ulen(len: usize) -> Result<CK_ULONG> {
    CK_ULONG::try_from(len).map_err(|_| Error::ArgumentsBad)
}

/// `CK_ULONG` → `usize` for a length the module wrote.
pub(super) fn from_ulen(len: CK_ULONG) -> Result<usize> {
    usize::try_from(len).map_err(|_| contract_broken("length does not fit in memory"))
}

/// A zeroized-on-drop byte buffer aligned for `CK_ULONG`: modules read and write `CK_ULONG`
/// and `CK_BBOOL` attribute values and parameter blocks through casts, so a plain `Vec<u8>`
/// (alignment 1) is not enough.
pub(super) struct Buf {
    words: Vec<CK_ULONG>,
    len: usize,
}

impl Buf {
    /// `len` zero bytes.
    pub(super) fn zeroed(len: usize) -> Result<Self> {
        if len > MAX_LEN {
            return Err(contract_broken("asked for an implausibly large buffer"));
        }
        Ok(Self {
            words: vec![0; len.div_ceil(ULONG_SIZE)],
            len,
        })
    }

    /// A copy of `bytes`.
    pub(super) fn copy_of(bytes: &[u8]) -> Result<Self> {
        Self::copy_padded(bytes, bytes.len())
    }

    /// A copy of `bytes`, followed by zeros up to `len` bytes in all (at least `bytes.len()`).
    pub(super) fn copy_padded(bytes: &[u8], len: usize) -> Result<Self> {
        let mut buf = Self::zeroed(len.max(bytes.len()))?;
        for (word, chunk) in buf.words.iter_mut().zip(bytes.chunks(ULONG_SIZE)) {
            let mut w = [0u8; ULONG_SIZE];
            w.iter_mut().zip(chunk).for_each(|(d, s)| *d = *s);
            *word = CK_ULONG::from_ne_bytes(w);
        }
        Ok(buf)
    }

    /// The length in bytes.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The start of the buffer, valid for reads and writes of `len()` bytes while `self` lives
    /// (dangling but aligned when `len()` is 0).
    pub(super) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.words.as_mut_ptr().cast()
    }

    /// The first `n` bytes (`n <= len()`, checked by the caller).
    pub(super) fn bytes(&self, n: usize) -> Vec<u8> {
        self.words
            .iter()
            .flat_map(|w| w.to_ne_bytes())
            .take(n.min(self.len))
            .collect()
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        self.words.zeroize();
    }
}

/// Memory that C pointers point into, kept alive with the structure holding those pointers.
#[derive(Default)]
struct Arena {
    bufs: Vec<Buf>,
    arrays: Vec<Vec<CK_ATTRIBUTE>>,
    structs: Vec<Box<dyn Keep>>,
}

/// Anything the arena can hold. Only `Vec<T>` implements it: the pointer handed out points
/// into the vector's heap buffer, which stays put when the box and the vector move.
trait Keep {}
impl<T> Keep for Vec<T> {}

impl Arena {
    /// A copy of `bytes`, returning its index, a pointer to it and its length.
    fn bytes(&mut self, bytes: &[u8]) -> Result<(usize, *mut u8, CK_ULONG)> {
        self.buf(Buf::copy_of(bytes)?)
    }

    fn buf(&mut self, mut buf: Buf) -> Result<(usize, *mut u8, CK_ULONG)> {
        let len = ulen(buf.len())?;
        let p = buf.as_mut_ptr();
        self.bufs.push(buf);
        Ok((self.bufs.len() - 1, p, len))
    }

    /// Optional byte strings inside parameter structures: `(NULL, 0)` when empty, the C idiom
    /// for "absent" (an OAEP label, GCM AAD, HKDF info, ...).
    fn opt_bytes(&mut self, bytes: &[u8]) -> Result<(*mut u8, CK_ULONG)> {
        if bytes.is_empty() {
            return Ok((ptr::null_mut(), 0));
        }
        let (_, p, len) = self.bytes(bytes)?;
        Ok((p, len))
    }

    /// Moves `value` to the heap and returns a pointer to it.
    fn put<T: 'static>(&mut self, value: T) -> *mut T {
        let mut v = vec![value];
        let p = v.as_mut_ptr();
        self.structs.push(Box::new(v));
        p
    }

    /// Keeps a nested attribute array, returning its pointer and its length in bytes.
    fn array(&mut self, mut attrs: Vec<CK_ATTRIBUTE>) -> Result<(*mut c_void, CK_ULONG)> {
        let bytes = attrs
            .len()
            .checked_mul(size_of::<CK_ATTRIBUTE>())
            .ok_or(Error::ArgumentsBad)?;
        let p = attrs.as_mut_ptr().cast();
        self.arrays.push(attrs);
        Ok((p, ulen(bytes)?))
    }
}

// ---- templates (input) -----------------------------------------------------------------------

/// An input template as `CK_ATTRIBUTE[]`, nested arrays (`CKA_WRAP_TEMPLATE`, ...) included.
///
/// Invariant (relied on by `ffi`): `as_ptr()` points to `count()` attributes, and every
/// `pValue` in them, at every level, points to `ulValueLen` bytes owned by this value (or is a
/// dangling, aligned pointer with `ulValueLen == 0`).
pub(super) struct CTemplate {
    attrs: Vec<CK_ATTRIBUTE>,
    _arena: Arena,
}

impl CTemplate {
    /// Encodes `template`; every value is copied into aligned, zeroized-on-drop memory.
    pub(super) fn new(template: &Template) -> Result<Self> {
        let mut arena = Arena::default();
        let attrs = encode_template(template, &mut arena)?;
        Ok(Self {
            attrs,
            _arena: arena,
        })
    }

    /// The first attribute (dangling when empty: `count()` is then 0).
    pub(super) fn as_ptr(&self) -> *const CK_ATTRIBUTE {
        self.attrs.as_ptr()
    }

    /// The number of attributes.
    pub(super) fn count(&self) -> Result<CK_ULONG> {
        ulen(self.attrs.len())
    }
}

fn encode_template(template: &Template, arena: &mut Arena) -> Result<Vec<CK_ATTRIBUTE>> {
    template
        .iter()
        .map(|a| {
            let (p_value, len) = match &a.value {
                AttrValue::Bytes(b) => {
                    let (_, p, len) = arena.bytes(b)?;
                    (p.cast(), len)
                }
                AttrValue::Template(inner) => {
                    let nested = encode_template(inner, arena)?;
                    arena.array(nested)?
                }
            };
            Ok(CK_ATTRIBUTE {
                type_: a.ty,
                pValue: p_value,
                ulValueLen: len,
            })
        })
        .collect()
}

// ---- templates (output: C_GetAttributeValue) -------------------------------------------------

/// What to ask `C_GetAttributeValue` for, per entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Want {
    /// The length only (`pValue` NULL).
    Length(CK_ATTRIBUTE_TYPE),
    /// The value, into a buffer of this many bytes.
    Value(CK_ATTRIBUTE_TYPE, usize),
    /// An attribute array: a `CK_ATTRIBUTE[]` with one element per inner want.
    Array(CK_ATTRIBUTE_TYPE, Vec<Want>),
}

/// Adds the bytes `wants` will allocate to `total`; an error once it passes `MAX_LEN`.
fn budget(wants: &[Want], total: &mut usize) -> Result<()> {
    for want in wants {
        let n = match want {
            Want::Length(_) => 0,
            Want::Value(_, n) => *n,
            Want::Array(_, inner) => {
                budget(inner, total)?;
                inner.len().saturating_mul(size_of::<CK_ATTRIBUTE>())
            }
        };
        *total = total.saturating_add(n);
        if *total > MAX_LEN {
            return Err(contract_broken(
                "C_GetAttributeValue: the values asked for exceed the size limit together",
            ));
        }
    }
    Ok(())
}

/// What `C_GetAttributeValue` wrote back for one entry.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Got {
    /// The type as the module left it (it sets the types of array elements).
    pub(super) ty: CK_ATTRIBUTE_TYPE,
    /// The answer.
    pub(super) kind: GotKind,
}

/// The answer of one entry.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum GotKind {
    /// `ulValueLen` is `CK_UNAVAILABLE_INFORMATION`.
    Unavailable,
    /// The length of a value not asked for.
    Length(usize),
    /// A value.
    Value(Vec<u8>),
    /// The elements of an attribute array.
    Array(Vec<Got>),
}

enum Slot {
    Length,
    Value(Buf),
    Array(OutTemplate),
}

/// A `CK_ATTRIBUTE[]` for `C_GetAttributeValue`, with the buffers its entries point to.
///
/// Invariant (relied on by `ffi`): `as_mut_ptr()` points to `count()` attributes; each `pValue`
/// is NULL or points to `ulValueLen` writable bytes owned by this value (an element array of a
/// nested template is itself an `OutTemplate` with the same invariant).
pub(super) struct OutTemplate {
    attrs: Vec<CK_ATTRIBUTE>,
    slots: Vec<Slot>,
}

impl OutTemplate {
    /// One entry per want; all the buffers of one query together hold at most `MAX_LEN` bytes
    /// (each within bounds, many could still exhaust memory).
    pub(super) fn new(wants: &[Want]) -> Result<Self> {
        let mut total = 0usize;
        budget(wants, &mut total)?;
        let mut attrs = Vec::with_capacity(wants.len());
        let mut slots = Vec::with_capacity(wants.len());
        for want in wants {
            let (ty, p_value, len, slot) = match want {
                Want::Length(ty) => (*ty, ptr::null_mut(), 0, Slot::Length),
                Want::Value(ty, n) => {
                    let mut buf = Buf::zeroed(*n)?;
                    let p = buf.as_mut_ptr().cast();
                    (*ty, p, ulen(*n)?, Slot::Value(buf))
                }
                Want::Array(ty, inner) => {
                    let mut nested = Self::new(inner)?;
                    let bytes = inner
                        .len()
                        .checked_mul(size_of::<CK_ATTRIBUTE>())
                        .ok_or(Error::ArgumentsBad)?;
                    let p = nested.attrs.as_mut_ptr().cast();
                    (*ty, p, ulen(bytes)?, Slot::Array(nested))
                }
            };
            attrs.push(CK_ATTRIBUTE {
                type_: ty,
                pValue: p_value,
                ulValueLen: len,
            });
            slots.push(slot);
        }
        Ok(Self { attrs, slots })
    }

    /// The first attribute.
    pub(super) fn as_mut_ptr(&mut self) -> *mut CK_ATTRIBUTE {
        self.attrs.as_mut_ptr()
    }

    /// The number of attributes.
    pub(super) fn count(&self) -> Result<CK_ULONG> {
        ulen(self.attrs.len())
    }

    /// Reads what the module wrote, checking every length against what was allocated.
    pub(super) fn results(&self) -> Result<Vec<Got>> {
        self.attrs
            .iter()
            .zip(&self.slots)
            .map(|(a, slot)| {
                let kind = if a.ulValueLen == CK_UNAVAILABLE_INFORMATION {
                    GotKind::Unavailable
                } else {
                    let n = from_ulen(a.ulValueLen)?;
                    match slot {
                        Slot::Length => GotKind::Length(n),
                        Slot::Value(buf) => {
                            if n > buf.len() {
                                return Err(contract_broken(
                                    "C_GetAttributeValue: a value length exceeds its buffer",
                                ));
                            }
                            GotKind::Value(buf.bytes(n))
                        }
                        Slot::Array(nested) => {
                            let size = size_of::<CK_ATTRIBUTE>();
                            if n % size != 0 || n / size > nested.attrs.len() {
                                return Err(contract_broken(
                                    "C_GetAttributeValue: an attribute array exceeds its buffer",
                                ));
                            }
                            let mut elements = nested.results()?;
                            elements.truncate(n / size);
                            GotKind::Array(elements)
                        }
                    }
                };
                Ok(Got { ty: a.type_, kind })
            })
            .collect()
    }
}

// ---- mechanisms and parameters ---------------------------------------------------------------

/// What to copy back into the owned parameters after a call.
enum CopyBack {
    None,
    /// `MechanismParams::Raw`: the whole block, at this arena index.
    Raw(usize),
    /// `MechanismParams::GcmMessage`: the IV and tag buffers, at these arena indices.
    GcmMessage {
        iv: usize,
        tag: usize,
    },
}

/// A mechanism parameter block as C sees it (`pParameter`, `ulParameterLen`).
///
/// Invariant (relied on by `ffi`): `ptr()` is NULL with `len()` 0, or points to `len()` bytes
/// (a parameter structure, aligned for it) owned by this value, and every pointer inside that
/// structure points to memory owned by this value, valid for the lengths written next to it.
pub(super) struct CParams {
    ptr: *mut c_void,
    len: CK_ULONG,
    arena: Arena,
    copy_back: CopyBack,
}

impl CParams {
    /// Encodes `params` into the matching C structure.
    pub(super) fn new(params: &MechanismParams) -> Result<Self> {
        let mut arena = Arena::default();
        let mut copy_back = CopyBack::None;
        let (ptr, len): (*mut c_void, usize) = match params {
            MechanismParams::None => (ptr::null_mut(), 0),
            MechanismParams::Bytes(b) => {
                let (p, _) = arena.opt_bytes(b)?;
                (p.cast(), b.len())
            }
            MechanismParams::Raw(b) if b.is_empty() => (ptr::null_mut(), 0),
            MechanismParams::Raw(b) => {
                let (i, p, _) = arena.bytes(b)?;
                copy_back = CopyBack::Raw(i);
                (p.cast(), b.len())
            }
            MechanismParams::StringData(b) => {
                let (data, n) = arena.opt_bytes(b)?;
                let p = arena.put(CK_KEY_DERIVATION_STRING_DATA {
                    pData: data,
                    ulLen: n,
                });
                (p.cast(), size_of::<CK_KEY_DERIVATION_STRING_DATA>())
            }
            MechanismParams::Ulong(v) => (arena.put(*v).cast(), size_of::<CK_ULONG>()),
            MechanismParams::RsaPkcsPss {
                hash_alg,
                mgf,
                salt_len,
            } => {
                let p = arena.put(CK_RSA_PKCS_PSS_PARAMS {
                    hashAlg: *hash_alg,
                    mgf: *mgf,
                    sLen: *salt_len,
                });
                (p.cast(), size_of::<CK_RSA_PKCS_PSS_PARAMS>())
            }
            MechanismParams::RsaPkcsOaep(oaep) => {
                let p = encode_oaep(oaep, &mut arena)?;
                (p.cast(), size_of::<CK_RSA_PKCS_OAEP_PARAMS>())
            }
            MechanismParams::AesCtr { counter_bits, cb } => {
                let p = arena.put(CK_AES_CTR_PARAMS {
                    ulCounterBits: *counter_bits,
                    cb: *cb,
                });
                (p.cast(), size_of::<CK_AES_CTR_PARAMS>())
            }
            MechanismParams::Gcm {
                iv,
                iv_bits,
                aad,
                tag_bits,
            } => {
                let (p_iv, iv_len) = arena.opt_bytes(iv)?;
                let (p_aad, aad_len) = arena.opt_bytes(aad)?;
                let p = arena.put(CK_GCM_PARAMS {
                    pIv: p_iv,
                    ulIvLen: iv_len,
                    ulIvBits: *iv_bits,
                    pAAD: p_aad,
                    ulAADLen: aad_len,
                    ulTagBits: *tag_bits,
                });
                (p.cast(), size_of::<CK_GCM_PARAMS>())
            }
            MechanismParams::Ccm {
                data_len,
                nonce,
                aad,
                mac_len,
            } => {
                let (p_nonce, nonce_len) = arena.opt_bytes(nonce)?;
                let (p_aad, aad_len) = arena.opt_bytes(aad)?;
                let p = arena.put(CK_CCM_PARAMS {
                    ulDataLen: *data_len,
                    pNonce: p_nonce,
                    ulNonceLen: nonce_len,
                    pAAD: p_aad,
                    ulAADLen: aad_len,
                    ulMACLen: *mac_len,
                });
                (p.cast(), size_of::<CK_CCM_PARAMS>())
            }
            MechanismParams::ChaCha20Poly1305 { nonce, aad } => {
                let (p_nonce, nonce_len) = arena.opt_bytes(nonce)?;
                let (p_aad, aad_len) = arena.opt_bytes(aad)?;
                let p = arena.put(CK_SALSA20_CHACHA20_POLY1305_PARAMS {
                    pNonce: p_nonce,
                    ulNonceLen: nonce_len,
                    pAAD: p_aad,
                    ulAADLen: aad_len,
                });
                (p.cast(), size_of::<CK_SALSA20_CHACHA20_POLY1305_PARAMS>())
            }
            MechanismParams::Ecdh1Derive {
                kdf,
                shared_data,
                public_data,
            } => {
                let (p_shared, shared_len) = arena.opt_bytes(shared_data)?;
                let (p_public, public_len) = arena.opt_bytes(public_data)?;
                let p = arena.put(CK_ECDH1_DERIVE_PARAMS {
                    kdf: *kdf,
                    ulSharedDataLen: shared_len,
                    pSharedData: p_shared,
                    ulPublicDataLen: public_len,
                    pPublicData: p_public,
                });
                (p.cast(), size_of::<CK_ECDH1_DERIVE_PARAMS>())
            }
            MechanismParams::Hkdf {
                extract,
                expand,
                prf_hash,
                salt_type,
                salt,
                salt_key,
                info,
            } => {
                let (p_salt, salt_len) = arena.opt_bytes(salt)?;
                let (p_info, info_len) = arena.opt_bytes(info)?;
                let p = arena.put(CK_HKDF_PARAMS {
                    bExtract: CK_BBOOL::from(*extract),
                    bExpand: CK_BBOOL::from(*expand),
                    prfHashMechanism: *prf_hash,
                    ulSaltType: *salt_type,
                    pSalt: p_salt,
                    ulSaltLen: salt_len,
                    hSaltKey: *salt_key,
                    pInfo: p_info,
                    ulInfoLen: info_len,
                });
                (p.cast(), size_of::<CK_HKDF_PARAMS>())
            }
            MechanismParams::RsaAesKeyWrap { aes_key_bits, oaep } => {
                let p_oaep = encode_oaep(oaep, &mut arena)?;
                let p = arena.put(CK_RSA_AES_KEY_WRAP_PARAMS {
                    ulAESKeyBits: *aes_key_bits,
                    pOAEPParams: p_oaep,
                });
                (p.cast(), size_of::<CK_RSA_AES_KEY_WRAP_PARAMS>())
            }
            MechanismParams::AesCbcEncryptData { iv, data } => {
                let (p_data, data_len) = arena.opt_bytes(data)?;
                let p = arena.put(CK_AES_CBC_ENCRYPT_DATA_PARAMS {
                    iv: *iv,
                    pData: p_data,
                    length: data_len,
                });
                (p.cast(), size_of::<CK_AES_CBC_ENCRYPT_DATA_PARAMS>())
            }
            MechanismParams::Eddsa { ph_flag, context } => {
                let (p_context, context_len) = arena.opt_bytes(context)?;
                let p = arena.put(CK_EDDSA_PARAMS {
                    phFlag: CK_BBOOL::from(*ph_flag),
                    ulContextDataLen: context_len,
                    pContextData: p_context,
                });
                (p.cast(), size_of::<CK_EDDSA_PARAMS>())
            }
            MechanismParams::Pbkdf2 {
                salt_source,
                salt,
                iterations,
                prf,
                prf_data,
                password,
            } => {
                let (p_salt, salt_len) = arena.opt_bytes(salt)?;
                let (p_prf, prf_len) = arena.opt_bytes(prf_data)?;
                let (p_password, password_len) = arena.opt_bytes(password)?;
                let p = arena.put(CK_PKCS5_PBKD2_PARAMS2 {
                    saltSource: *salt_source,
                    pSaltSourceData: p_salt.cast(),
                    ulSaltSourceDataLen: salt_len,
                    iterations: *iterations,
                    prf: *prf,
                    pPrfData: p_prf.cast(),
                    ulPrfDataLen: prf_len,
                    pPassword: p_password,
                    ulPasswordLen: password_len,
                });
                (p.cast(), size_of::<CK_PKCS5_PBKD2_PARAMS2>())
            }
            MechanismParams::GcmMessage {
                iv,
                iv_fixed_bits,
                iv_generator,
                tag,
                tag_bits,
            } => {
                // The IV is input, or output when the token generates it: a buffer of the
                // caller's length. The tag is output on encrypt and input on decrypt: room for
                // ulTagBits, holding the caller's tag.
                let (iv_index, p_iv, iv_len) = arena.bytes(iv)?;
                let tag_len = usize::try_from(tag_bits.div_ceil(8))
                    .map_err(|_| Error::MechanismParamInvalid)?
                    .max(tag.len());
                let tag_buf = Buf::copy_padded(tag, tag_len)?;
                let (tag_index, p_tag, _) = arena.buf(tag_buf)?;
                copy_back = CopyBack::GcmMessage {
                    iv: iv_index,
                    tag: tag_index,
                };
                let p = arena.put(CK_GCM_MESSAGE_PARAMS {
                    pIv: p_iv,
                    ulIvLen: iv_len,
                    ulIvFixedBits: *iv_fixed_bits,
                    ivGenerator: *iv_generator,
                    pTag: p_tag,
                    ulTagBits: *tag_bits,
                });
                (p.cast(), size_of::<CK_GCM_MESSAGE_PARAMS>())
            }
        };
        Ok(Self {
            ptr,
            len: ulen(len)?,
            arena,
            copy_back,
        })
    }

    /// `pParameter`.
    pub(super) fn ptr(&mut self) -> *mut c_void {
        self.ptr
    }

    /// `ulParameterLen`.
    pub(super) fn len(&self) -> CK_ULONG {
        self.len
    }

    /// Copies what the module may have written (a generated IV, a tag, a raw block) back into
    /// `params`, which must be the value this was built from.
    pub(super) fn copy_back(&self, params: &mut MechanismParams) {
        match (&self.copy_back, params) {
            (CopyBack::Raw(i), MechanismParams::Raw(b)) => {
                if let Some(buf) = self.arena.bufs.get(*i) {
                    *b = buf.bytes(buf.len());
                }
            }
            (
                CopyBack::GcmMessage { iv: i, tag: t },
                MechanismParams::GcmMessage {
                    iv, tag, tag_bits, ..
                },
            ) => {
                if let Some(buf) = self.arena.bufs.get(*i) {
                    *iv = buf.bytes(buf.len());
                }
                if let Some(buf) = self.arena.bufs.get(*t) {
                    let n = usize::try_from(tag_bits.div_ceil(8)).unwrap_or(buf.len());
                    *tag = buf.bytes(n);
                }
            }
            _ => {}
        }
    }
}

fn encode_oaep(oaep: &OaepParams, arena: &mut Arena) -> Result<*mut CK_RSA_PKCS_OAEP_PARAMS> {
    let (p_source, source_len) = arena.opt_bytes(&oaep.source_data)?;
    Ok(arena.put(CK_RSA_PKCS_OAEP_PARAMS {
        hashAlg: oaep.hash_alg,
        mgf: oaep.mgf,
        source: oaep.source,
        pSourceData: p_source.cast(),
        ulSourceDataLen: source_len,
    }))
}

/// A `CK_MECHANISM` with its parameter block.
///
/// Invariant (relied on by `ffi`): `as_mut_ptr()` points to a `CK_MECHANISM` whose parameter
/// pointer satisfies the `CParams` invariant.
pub(super) struct CMechanism {
    mech: CK_MECHANISM,
    _params: CParams,
}

impl CMechanism {
    /// Encodes `mech`.
    pub(super) fn new(mech: &Mechanism) -> Result<Self> {
        let mut params = CParams::new(&mech.params)?;
        Ok(Self {
            mech: CK_MECHANISM {
                mechanism: mech.ty,
                pParameter: params.ptr(),
                ulParameterLen: params.len(),
            },
            _params: params,
        })
    }

    /// The `CK_MECHANISM`.
    pub(super) fn as_mut_ptr(&mut self) -> *mut CK_MECHANISM {
        &raw mut self.mech
    }
}

// ---- information structures (C → owned) ------------------------------------------------------

/// A blank-padded fixed-size field as a trimmed string (trailing blanks and NULs removed).
pub(super) fn text(field: &[u8]) -> String {
    String::from_utf8_lossy(field)
        .trim_end_matches([' ', '\0'])
        .to_owned()
}

fn version(v: CK_VERSION) -> Version {
    Version {
        major: v.major,
        minor: v.minor,
    }
}

/// `CK_INFO` → `Info`.
pub(super) fn info(i: &CK_INFO) -> Info {
    Info {
        cryptoki_version: version(i.cryptokiVersion),
        manufacturer: text(&i.manufacturerID),
        flags: i.flags,
        description: text(&i.libraryDescription),
        library_version: version(i.libraryVersion),
    }
}

/// `CK_SLOT_INFO` → `SlotInfo`.
pub(super) fn slot_info(i: &CK_SLOT_INFO) -> SlotInfo {
    SlotInfo {
        description: text(&i.slotDescription),
        manufacturer: text(&i.manufacturerID),
        flags: i.flags,
        hardware_version: version(i.hardwareVersion),
        firmware_version: version(i.firmwareVersion),
    }
}

/// `CK_TOKEN_INFO` → `TokenInfo`.
pub(super) fn token_info(i: &CK_TOKEN_INFO) -> TokenInfo {
    TokenInfo {
        label: text(&i.label),
        manufacturer: text(&i.manufacturerID),
        model: text(&i.model),
        serial_number: text(&i.serialNumber),
        flags: i.flags,
        max_session_count: i.ulMaxSessionCount,
        session_count: i.ulSessionCount,
        max_rw_session_count: i.ulMaxRwSessionCount,
        rw_session_count: i.ulRwSessionCount,
        max_pin_len: i.ulMaxPinLen,
        min_pin_len: i.ulMinPinLen,
        total_public_memory: i.ulTotalPublicMemory,
        free_public_memory: i.ulFreePublicMemory,
        total_private_memory: i.ulTotalPrivateMemory,
        free_private_memory: i.ulFreePrivateMemory,
        hardware_version: version(i.hardwareVersion),
        firmware_version: version(i.firmwareVersion),
        utc_time: text(&i.utcTime),
    }
}

/// `CK_SESSION_INFO` → `SessionInfo`.
pub(super) fn session_info(i: &CK_SESSION_INFO) -> SessionInfo {
    SessionInfo {
        slot: SlotId(i.slotID),
        state: i.state,
        flags: i.flags,
        device_error: i.ulDeviceError,
    }
}

/// `CK_MECHANISM_INFO` → `MechanismInfo`.
pub(super) fn mechanism_info(i: &CK_MECHANISM_INFO) -> MechanismInfo {
    MechanismInfo {
        min_key_size: i.ulMinKeySize,
        max_key_size: i.ulMaxKeySize,
        flags: i.flags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buf_round_trips_and_is_aligned() {
        let mut b = Buf::copy_of(b"abcdefghijk").unwrap();
        assert_eq!(b.len(), 11);
        assert_eq!(b.bytes(11), b"abcdefghijk");
        assert_eq!(b.bytes(3), b"abc");
        assert_eq!(b.as_mut_ptr().align_offset(align_of::<CK_ULONG>()), 0);
        assert!(Buf::zeroed(MAX_LEN + 1).is_err());
    }

    #[test]
    fn text_trims_blank_and_nul_padding() {
        assert_eq!(text(b"SoftHSM   \0\0"), "SoftHSM");
        assert_eq!(text(b"  lead"), "  lead");
        assert_eq!(text(b"                "), "");
    }

    #[test]
    fn template_encodes_values_and_nested_arrays() {
        let t = Template::new()
            .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
            .with(Attribute::bool(CKA_TOKEN, true))
            .with(Attribute::template(
                CKA_WRAP_TEMPLATE,
                Template::new().with(Attribute::bytes(CKA_LABEL, b"x".to_vec())),
            ));
        let c = CTemplate::new(&t).unwrap();
        assert_eq!(c.count().unwrap(), 3);
        let attrs = &c.attrs;
        assert_eq!(attrs[0].ulValueLen, ULONG_SIZE as CK_ULONG);
        assert_eq!(attrs[1].ulValueLen, 1);
        assert_eq!(attrs[2].type_, CKA_WRAP_TEMPLATE);
        assert_eq!(attrs[2].ulValueLen, size_of::<CK_ATTRIBUTE>() as CK_ULONG);
        assert_eq!(c._arena.arrays.len(), 1);
        assert_eq!(c._arena.arrays[0][0].type_, CKA_LABEL);
        assert_eq!(
            attrs[2].pValue,
            c._arena.arrays[0].as_ptr().cast_mut().cast()
        );
        for a in attrs.iter().take(2) {
            assert_eq!(a.pValue.align_offset(align_of::<CK_ULONG>()), 0);
        }
    }

    #[test]
    fn out_template_refuses_lengths_beyond_its_buffers() {
        let mut t = OutTemplate::new(&[Want::Value(CKA_LABEL, 4), Want::Length(CKA_ID)]).unwrap();
        t.attrs[0].ulValueLen = 5;
        assert_eq!(t.results(), Err(Error::GeneralError));
        t.attrs[0].ulValueLen = 2;
        t.attrs[1].ulValueLen = CK_UNAVAILABLE_INFORMATION;
        let got = t.results().unwrap();
        assert_eq!(got[0].kind, GotKind::Value(vec![0, 0]));
        assert_eq!(got[1].kind, GotKind::Unavailable);
    }

    #[test]
    fn out_template_bounds_the_whole_query() {
        let half = MAX_LEN / 2 + 1;
        assert!(OutTemplate::new(&[Want::Value(CKA_LABEL, half)]).is_ok());
        assert!(
            OutTemplate::new(&[Want::Value(CKA_LABEL, half), Want::Value(CKA_ID, half)]).is_err()
        );
        let nested = Want::Array(CKA_WRAP_TEMPLATE, vec![Want::Value(CKA_LABEL, half); 2]);
        assert!(OutTemplate::new(&[nested]).is_err());
    }

    #[test]
    fn out_template_checks_nested_array_counts() {
        let wants = [Want::Array(CKA_WRAP_TEMPLATE, vec![Want::Length(0)])];
        let mut t = OutTemplate::new(&wants).unwrap();
        let size = size_of::<CK_ATTRIBUTE>() as CK_ULONG;
        t.attrs[0].ulValueLen = 2 * size;
        assert!(t.results().is_err());
        t.attrs[0].ulValueLen = size + 1;
        assert!(t.results().is_err());
        t.attrs[0].ulValueLen = size;
        if let Slot::Array(n) = &mut t.slots[0] {
            n.attrs[0].type_ = CKA_EXTRACTABLE;
            n.attrs[0].ulValueLen = 1;
        }
        let got = t.results().unwrap();
        assert_eq!(
            got[0].kind,
            GotKind::Array(vec![Got {
                ty: CKA_EXTRACTABLE,
                kind: GotKind::Length(1)
            }])
        );
    }

    #[test]
    fn params_encode_into_their_structures() {
        let mut p = CParams::new(&MechanismParams::Gcm {
            iv: vec![1; 12],
            iv_bits: 96,
            aad: vec![],
            tag_bits: 128,
        })
        .unwrap();
        assert_eq!(p.len(), size_of::<CK_GCM_PARAMS>() as CK_ULONG);
        assert!(!p.ptr().is_null());
        let none = CParams::new(&MechanismParams::None).unwrap();
        assert_eq!((none.ptr.is_null(), none.len()), (true, 0));
    }

    #[test]
    fn gcm_message_params_copy_back_iv_and_tag() {
        let mut params = MechanismParams::GcmMessage {
            iv: vec![0; 12],
            iv_fixed_bits: 0,
            iv_generator: CKG_GENERATE_RANDOM,
            tag: vec![],
            tag_bits: 128,
        };
        let mut c = CParams::new(&params).unwrap();
        // Play the module: write an IV and a tag through our own buffers.
        let CopyBack::GcmMessage { iv, tag } = c.copy_back else {
            panic!("no copy back")
        };
        c.arena.bufs[iv] = Buf::copy_of(&[7; 12]).unwrap();
        assert_eq!(c.arena.bufs[tag].len(), 16);
        c.arena.bufs[tag] = Buf::copy_of(&[9; 16]).unwrap();
        c.copy_back(&mut params);
        let MechanismParams::GcmMessage { iv, tag, .. } = &params else {
            panic!()
        };
        assert_eq!(iv, &vec![7; 12]);
        assert_eq!(tag, &vec![9; 16]);
    }
}
