//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`, never in the shipped
//! module): arbitrary bytes are turned into the C structures a caller hands us — templates
//! with nested attribute arrays, mechanisms with every parameter structure this module reads
//! — and decoded by the same functions the `C_*` entry points use.
//!
//! The harness plays a caller that keeps the C contract on memory (every pointer it passes is
//! NULL or points to as many bytes as it says, so that a crash is ours, not the harness's) and
//! breaks every other rule: NULL with non-zero lengths, lengths that do not match the
//! structure, absurd lengths (which must be refused before anything is read), nesting deeper
//! than allowed, unknown types.

use std::ffi::c_void;

use bridge::{Error, Mechanism, Template, is_template_attribute};
use cryptoki_sys::*;

use super::mechanism::{MessageParams, TagFlow, mechanism_in};
use super::template::template_in;

/// A cursor over the fuzzer's bytes; reads past the end give zeros.
struct Src<'a>(&'a [u8]);

impl Src<'_> {
    fn u8(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
        self.0 = rest;
        first
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head.to_vec()
    }

    /// A `CK_ULONG` that is mostly small, sometimes at the edges.
    fn ulong(&mut self) -> CK_ULONG {
        match self.u8() % 8 {
            0 => 0,
            1 => CK_ULONG::MAX,
            2 => CK_ULONG::from(self.u32()),
            3 => CK_ULONG::from(u32::MAX) + 1,
            _ => CK_ULONG::from(self.u16()),
        }
    }
}

/// Owns every buffer a built structure points into, so the pointers stay valid while decoding.
#[derive(Default)]
struct Arena {
    bytes: Vec<Box<[u8]>>,
    attrs: Vec<Box<[CK_ATTRIBUTE]>>,
}

impl Arena {
    fn keep(&mut self, b: Vec<u8>) -> *mut u8 {
        let mut b = b.into_boxed_slice();
        let p = if b.is_empty() {
            // A non-null pointer to nothing: valid for reads of zero bytes.
            std::ptr::NonNull::<u8>::dangling().as_ptr()
        } else {
            b.as_mut_ptr()
        };
        self.bytes.push(b);
        p
    }

    /// A (pointer, length) pair as a caller might pass it: NULL and 0, NULL with a length
    /// (to be refused), an absurd length (to be refused before reading), or real bytes.
    fn buf(&mut self, src: &mut Src<'_>) -> (*mut u8, CK_ULONG) {
        match src.u8() % 8 {
            0 => (std::ptr::null_mut(), 0),
            1 => (std::ptr::null_mut(), src.ulong().max(1)),
            2 => {
                let p = self.keep(vec![0; 16]);
                (p, CK_ULONG::MAX)
            }
            _ => {
                let n = usize::from(src.u8());
                let b = src.bytes(n);
                let len = to_ulong(b.len());
                (self.keep(b), len)
            }
        }
    }

    /// Stores the bytes of a C structure (with `extra` bytes after it, so that a caller's
    /// longer `ulParameterLen` still covers readable memory).
    fn keep_struct<T: Copy>(&mut self, value: T, extra: usize) -> *mut c_void {
        let mut b = vec![0u8; size_of::<T>() + extra];
        // SAFETY: `b` holds at least `size_of::<T>()` bytes; `write_unaligned` has no
        // alignment requirement.
        unsafe { b.as_mut_ptr().cast::<T>().write_unaligned(value) };
        self.keep(b).cast()
    }
}

fn to_ulong(n: usize) -> CK_ULONG {
    CK_ULONG::try_from(n).unwrap_or(CK_ULONG::MAX)
}

/// The attribute types worth trying most: classes, key material, booleans and the three
/// attribute-array attributes.
const ATTR_TYPES: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_CLASS,
    CKA_KEY_TYPE,
    CKA_TOKEN,
    CKA_PRIVATE,
    CKA_LABEL,
    CKA_ID,
    CKA_VALUE,
    CKA_VALUE_LEN,
    CKA_SENSITIVE,
    CKA_EXTRACTABLE,
    CKA_MODULUS,
    CKA_MODULUS_BITS,
    CKA_PUBLIC_EXPONENT,
    CKA_EC_PARAMS,
    CKA_EC_POINT,
    CKA_WRAP_TEMPLATE,
    CKA_UNWRAP_TEMPLATE,
    CKA_DERIVE_TEMPLATE,
    CKA_ALLOWED_MECHANISMS,
];

/// Builds a `CK_ATTRIBUTE[]` from the fuzzer's bytes; returns its pointer and count.
fn build_template(
    src: &mut Src<'_>,
    arena: &mut Arena,
    depth: usize,
) -> (*mut CK_ATTRIBUTE, usize) {
    let count = usize::from(src.u8() % 12);
    let mut attrs = Vec::with_capacity(count);
    for _ in 0..count {
        let pick = src.u8();
        let type_ = match ATTR_TYPES.get(usize::from(pick)) {
            Some(t) => *t,
            None => CK_ULONG::from(src.u32()),
        };
        let (pValue, ulValueLen) = match src.u8() % 8 {
            // An attribute array, possibly nested deeper than allowed, possibly with a length
            // that is not a whole number of `CK_ATTRIBUTE`s (but never more than it holds).
            0 | 1 if depth < 4 => {
                let (p, n) = build_template(src, arena, depth + 1);
                let full = n * size_of::<CK_ATTRIBUTE>();
                let len = if src.u8() % 8 == 0 {
                    full.saturating_sub(usize::from(src.u8() % 8) + 1)
                } else {
                    full
                };
                (p.cast::<c_void>(), to_ulong(len))
            }
            // Over the per-value limit: refused before any byte is read.
            2 => {
                let p = arena.keep(vec![0; 8]);
                let len = match src.u8() % 3 {
                    0 => CK_ULONG::MAX,
                    1 => (64 << 20) + 1,
                    _ => CK_ULONG::from(u32::MAX),
                };
                (p.cast(), len)
            }
            _ => {
                let (p, mut len) = arena.buf(src);
                // Plain bytes under an attribute-array type would be read as attributes
                // (wild pointers: a caller breaking the memory contract); a length that is
                // not a whole number of attributes is refused instead.
                let whole = usize::try_from(len)
                    .is_ok_and(|n| n != 0 && n <= 1 << 20 && n % size_of::<CK_ATTRIBUTE>() == 0);
                if is_template_attribute(type_) && !p.is_null() && whole {
                    len -= 1;
                }
                (p.cast(), len)
            }
        };
        attrs.push(CK_ATTRIBUTE {
            type_,
            pValue,
            ulValueLen,
        });
    }
    let mut attrs = attrs.into_boxed_slice();
    let n = attrs.len();
    let p = if n == 0 && src.u8() % 2 == 0 {
        std::ptr::null_mut()
    } else {
        attrs.as_mut_ptr()
    };
    arena.attrs.push(attrs);
    (p, n)
}

/// Decodes a template built from `data` exactly as `C_CreateObject` does.
pub fn template(data: &[u8]) -> Result<Template, Error> {
    let mut src = Src(data);
    let mut arena = Arena::default();
    let (ptr, n) = build_template(&mut src, &mut arena, 0);
    // Sometimes an absurd count, which must be refused before the array is read.
    let count = if src.u8() == 0xff {
        CK_ULONG::MAX
    } else {
        to_ulong(n)
    };
    // SAFETY: `ptr` is NULL or points to `n` attributes whose values are NULL, or readable
    // for their length, or nested arrays of the same kind, all owned by `arena` until the end
    // of this function; the only counts and lengths over what is readable are over the
    // decoder's limits, which it checks before reading.
    unsafe { template_in(ptr, count) }
}

/// Mechanism types, one or more per parameter structure the decoder knows, and some without.
const MECHANISMS: &[CK_MECHANISM_TYPE] = &[
    CKM_RSA_PKCS_PSS,
    CKM_SHA256_RSA_PKCS_PSS,
    CKM_RSA_PKCS_OAEP,
    CKM_AES_CTR,
    CKM_AES_GCM,
    CKM_AES_CCM,
    CKM_CHACHA20_POLY1305,
    CKM_ECDH1_DERIVE,
    CKM_ECDH1_COFACTOR_DERIVE,
    CKM_HKDF_DERIVE,
    CKM_HKDF_DATA,
    CKM_RSA_AES_KEY_WRAP,
    CKM_AES_CBC_ENCRYPT_DATA,
    CKM_CONCATENATE_DATA_AND_BASE,
    CKM_AES_ECB_ENCRYPT_DATA,
    CKM_SHA256_HMAC_GENERAL,
    CKM_AES_CMAC_GENERAL,
    CKM_CONCATENATE_BASE_AND_KEY,
    CKM_EDDSA,
    CKM_PKCS5_PBKD2,
    CKM_AES_CBC,
    CKM_AES_CBC_PAD,
    CKM_AES_KEY_WRAP_PAD,
    CKM_SHA256_RSA_PKCS,
    CKM_ECDSA,
    CKM_AES_ECB,
    CKM_DES3_CBC_PAD,
];

/// The structure mechanism `ty` takes when it holds pointers (a block of exactly that size
/// is read as the structure, so raw bytes of that size would be wild pointers).
fn pointer_struct_size(ty: CK_MECHANISM_TYPE) -> Option<usize> {
    Some(match ty {
        CKM_RSA_PKCS_OAEP => size_of::<CK_RSA_PKCS_OAEP_PARAMS>(),
        CKM_AES_GCM => size_of::<CK_GCM_PARAMS>(),
        CKM_AES_CCM => size_of::<CK_CCM_PARAMS>(),
        CKM_CHACHA20_POLY1305 => size_of::<CK_SALSA20_CHACHA20_POLY1305_PARAMS>(),
        CKM_ECDH1_DERIVE | CKM_ECDH1_COFACTOR_DERIVE => size_of::<CK_ECDH1_DERIVE_PARAMS>(),
        CKM_HKDF_DERIVE | CKM_HKDF_DATA => size_of::<CK_HKDF_PARAMS>(),
        CKM_RSA_AES_KEY_WRAP => size_of::<CK_RSA_AES_KEY_WRAP_PARAMS>(),
        CKM_AES_CBC_ENCRYPT_DATA => size_of::<CK_AES_CBC_ENCRYPT_DATA_PARAMS>(),
        CKM_CONCATENATE_DATA_AND_BASE
        | CKM_CONCATENATE_BASE_AND_DATA
        | CKM_XOR_BASE_AND_DATA
        | CKM_AES_ECB_ENCRYPT_DATA => size_of::<CK_KEY_DERIVATION_STRING_DATA>(),
        CKM_EDDSA => size_of::<CK_EDDSA_PARAMS>(),
        CKM_PKCS5_PBKD2 => size_of::<CK_PKCS5_PBKD2_PARAMS2>(),
        _ => return None,
    })
}

fn oaep(src: &mut Src<'_>, arena: &mut Arena) -> CK_RSA_PKCS_OAEP_PARAMS {
    let (pSourceData, ulSourceDataLen) = arena.buf(src);
    CK_RSA_PKCS_OAEP_PARAMS {
        hashAlg: src.ulong(),
        mgf: src.ulong(),
        source: src.ulong(),
        pSourceData: pSourceData.cast(),
        ulSourceDataLen,
    }
}

/// The well-formed (pointer-wise) parameter structure of `ty`, fields from the fuzzer.
fn build_struct(
    ty: CK_MECHANISM_TYPE,
    src: &mut Src<'_>,
    arena: &mut Arena,
) -> (*mut c_void, usize) {
    let extra = usize::from(src.u8() % 4);
    let p = match ty {
        CKM_RSA_PKCS_OAEP => {
            let p = oaep(src, arena);
            (arena.keep_struct(p, extra), size_of_val(&p))
        }
        CKM_AES_GCM => {
            let (pIv, ulIvLen) = arena.buf(src);
            let (pAAD, ulAADLen) = arena.buf(src);
            let p = CK_GCM_PARAMS {
                pIv,
                ulIvLen,
                ulIvBits: src.ulong(),
                pAAD,
                ulAADLen,
                ulTagBits: src.ulong(),
            };
            (arena.keep_struct(p, extra), size_of_val(&p))
        }
        CKM_AES_CCM => {
            let (pNonce, ulNonceLen) = arena.buf(src);
            let (pAAD, ulAADLen) = arena.buf(src);
            let p = CK_CCM_PARAMS {
                ulDataLen: src.ulong(),
                pNonce,
                ulNonceLen,
                pAAD,
                ulAADLen,
                ulMACLen: src.ulong(),
            };
            (arena.keep_struct(p, extra), size_of_val(&p))
        }
        CKM_CHACHA20_POLY1305 => {
            let (pNonce, ulNonceLen) = arena.buf(src);
            let (pAAD, ulAADLen) = arena.buf(src);
            let p = CK_SALSA20_CHACHA20_POLY1305_PARAMS {
                pNonce,
                ulNonceLen,
                pAAD,
                ulAADLen,
            };
            (arena.keep_struct(p, extra), size_of_val(&p))
        }
        CKM_ECDH1_DERIVE | CKM_ECDH1_COFACTOR_DERIVE => {
            let (pSharedData, ulSharedDataLen) = arena.buf(src);
            let (pPublicData, ulPublicDataLen) = arena.buf(src);
            let p = CK_ECDH1_DERIVE_PARAMS {
                kdf: src.ulong(),
                ulSharedDataLen,
                pSharedData,
                ulPublicDataLen,
                pPublicData,
            };
            (arena.keep_struct(p, extra), size_of_val(&p))
        }
        CKM_HKDF_DERIVE | CKM_HKDF_DATA => {
            let (pSalt, ulSaltLen) = arena.buf(src);
            let (pInfo, ulInfoLen) = arena.buf(src);
            let p = CK_HKDF_PARAMS {
                bExtract: src.u8(),
                bExpand: src.u8(),
                prfHashMechanism: src.ulong(),
                ulSaltType: src.ulong(),
                pSalt,
                ulSaltLen,
                hSaltKey: src.ulong(),
                pInfo,
                ulInfoLen,
            };
            (arena.keep_struct(p, extra), size_of_val(&p))
        }
        CKM_RSA_AES_KEY_WRAP => {
            let inner = oaep(src, arena);
            let pOAEPParams = if src.u8() % 4 == 0 {
                std::ptr::null_mut()
            } else {
                arena.keep_struct(inner, 0).cast()
            };
            let p = CK_RSA_AES_KEY_WRAP_PARAMS {
                ulAESKeyBits: src.ulong(),
                pOAEPParams,
            };
            (arena.keep_struct(p, extra), size_of_val(&p))
        }
        CKM_AES_CBC_ENCRYPT_DATA => {
            let (pData, length) = arena.buf(src);
            let mut iv = [0u8; 16];
            iv.copy_from_slice(&{
                let mut b = src.bytes(16);
                b.resize(16, 0);
                b
            });
            let p = CK_AES_CBC_ENCRYPT_DATA_PARAMS { iv, pData, length };
            (arena.keep_struct(p, extra), size_of_val(&p))
        }
        CKM_EDDSA => {
            let (pContextData, ulContextDataLen) = arena.buf(src);
            let p = CK_EDDSA_PARAMS {
                phFlag: src.u8(),
                ulContextDataLen,
                pContextData,
            };
            (arena.keep_struct(p, extra), size_of_val(&p))
        }
        CKM_PKCS5_PBKD2 => {
            let (pSaltSourceData, ulSaltSourceDataLen) = arena.buf(src);
            let (pPrfData, ulPrfDataLen) = arena.buf(src);
            let (pPassword, ulPasswordLen) = arena.buf(src);
            let p = CK_PKCS5_PBKD2_PARAMS2 {
                saltSource: src.ulong(),
                pSaltSourceData: pSaltSourceData.cast(),
                ulSaltSourceDataLen,
                iterations: src.ulong(),
                prf: src.ulong(),
                pPrfData: pPrfData.cast(),
                ulPrfDataLen,
                pPassword,
                ulPasswordLen,
            };
            (arena.keep_struct(p, extra), size_of_val(&p))
        }
        _ if pointer_struct_size(ty).is_some() => {
            // The string-data structures.
            let (pData, ulLen) = arena.buf(src);
            let p = CK_KEY_DERIVATION_STRING_DATA { pData, ulLen };
            (arena.keep_struct(p, extra), size_of_val(&p))
        }
        _ => {
            // Pointer-free: any bytes of any length.
            let n = usize::from(src.u8());
            let mut b = src.bytes(n);
            let len = b.len();
            b.resize(len + extra, 0);
            (arena.keep(b).cast(), len)
        }
    };
    // Sometimes a `ulParameterLen` off by a little (never past what was allocated).
    match src.u8() % 8 {
        0 => (p.0, p.1.saturating_sub(1)),
        1 => (p.0, p.1 + extra),
        _ => p,
    }
}

/// Builds a `CK_MECHANISM` from the fuzzer's bytes and decodes it as every `C_*Init` does.
pub fn mechanism(data: &[u8]) -> Result<Mechanism, Error> {
    let mut src = Src(data);
    let mut arena = Arena::default();
    let pick = src.u8();
    let ty = match MECHANISMS.get(usize::from(pick)) {
        Some(t) => *t,
        None => CK_ULONG::from(src.u32()),
    };
    let (pParameter, ulParameterLen) = match src.u8() % 4 {
        0 => {
            let (p, len) = arena.buf(&mut src);
            match pointer_struct_size(ty) {
                // Raw bytes exactly the size of a structure with pointers would be read as
                // one: a caller breaking the memory contract, which no module can detect.
                Some(size) if !p.is_null() && usize::try_from(len).ok() == Some(size) => {
                    (p.cast::<c_void>(), len - 1)
                }
                _ => (p.cast::<c_void>(), len),
            }
        }
        _ => {
            let (p, len) = build_struct(ty, &mut src, &mut arena);
            (p, to_ulong(len))
        }
    };
    let m = CK_MECHANISM {
        mechanism: ty,
        pParameter,
        ulParameterLen,
    };
    let ptr: *const CK_MECHANISM = if src.u8() == 0xff {
        std::ptr::null()
    } else {
        &raw const m
    };
    // SAFETY: `ptr` is NULL or points to `m`, whose parameter is NULL, or readable for
    // `ulParameterLen` bytes, or a structure whose inner pointers are NULL or readable for
    // their lengths (all owned by `arena` until the end of this function); lengths over what
    // is readable are over the decoder's limits, which it checks before reading.
    unsafe { mechanism_in(ptr) }
}

/// Builds per-message parameters (`CK_GCM_MESSAGE_PARAMS` or opaque bytes) and decodes them
/// as `C_EncryptMessage`/`C_DecryptMessage`/`C_SignMessage` do.
pub fn message_params(data: &[u8]) -> Result<(), Error> {
    let mut src = Src(data);
    let mut arena = Arena::default();
    let mode = src.u8() % 4;
    let flow = if src.u8() % 2 == 0 {
        TagFlow::Input
    } else {
        TagFlow::Output
    };
    let (ptr, len) = if mode == 0 {
        let (pIv, ulIvLen) = arena.buf(&mut src);
        // The tag is read for `ulTagBits / 8` bytes: a buffer that large, or a size over
        // the decoder's limit.
        let (pTag, ulTagBits) = match src.u8() % 4 {
            0 => (std::ptr::null_mut(), src.ulong()),
            1 => (arena.keep(vec![0; 16]), CK_ULONG::MAX),
            _ => {
                let bits = src.u16() % 2048;
                let p = arena.keep(vec![0; usize::from(bits).div_ceil(8)]);
                (p, CK_ULONG::from(bits))
            }
        };
        let p = CK_GCM_MESSAGE_PARAMS {
            pIv,
            ulIvLen,
            ulIvFixedBits: src.ulong(),
            ivGenerator: src.ulong(),
            pTag,
            ulTagBits,
        };
        (arena.keep_struct(p, 0), to_ulong(size_of_val(&p)))
    } else {
        let (p, len) = arena.buf(&mut src);
        let len = match usize::try_from(len) {
            // Raw bytes the size of the structure would be read as one (see `mechanism`).
            Ok(n) if !p.is_null() && n == size_of::<CK_GCM_MESSAGE_PARAMS>() => len - 1,
            _ => len,
        };
        (p.cast::<c_void>(), len)
    };
    if mode == 1 {
        // SAFETY: `ptr` is NULL or readable for `len` bytes (owned by `arena`), or `len` is
        // over the decoder's limit.
        return unsafe { MessageParams::decode_opaque(ptr, len) }.map(drop);
    }
    // SAFETY: as above; a `CK_GCM_MESSAGE_PARAMS` holds pointers to buffers of the sizes it
    // declares (or sizes over the decoder's limits), owned by `arena`.
    unsafe { MessageParams::decode(ptr, len, flow) }.map(drop)
}
