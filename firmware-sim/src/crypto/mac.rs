//! MACs and KDFs: HMAC, AES-CMAC, HKDF and PBKDF2.
//!
//! aws-lc-rs provides HMAC over SHA-1/2, CMAC, HKDF and PBKDF2. HMAC over SHA-3, SHA-512/224,
//! SHA-512/256 and MD5 comes from RustCrypto `hmac` over `sha3`, `sha2` and `md-5`, because
//! aws-lc-rs has no HMAC over them.

use ::hmac::digest::KeyInit;
use ::hmac::{Hmac, Mac};
use aws_lc_rs::{cmac, hkdf, hmac as lc_hmac, pbkdf2};
use bridge::{Error, Result};
use parking_lot::Mutex;
use zeroize::Zeroizing;

use super::{Hash, RcHash};

/// The hashes HMAC is offered over: SHA-1, SHA-2 and SHA-3, and MD5 (legacy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MacHash {
    /// One of the firmware's digest hashes (SHA-1, SHA-2, SHA3-256/384/512).
    Digest(Hash),
    /// One of the hashes only RustCrypto has (MD5, SHA3-224, SHA-512/224, SHA-512/256).
    Rc(RcHash),
}

impl MacHash {
    /// Output length in bytes.
    pub(crate) fn len(self) -> usize {
        match self {
            Self::Digest(h) => h.len(),
            Self::Rc(h) => h.len(),
        }
    }

    fn lc(self) -> Option<lc_hmac::Algorithm> {
        Some(match self {
            Self::Digest(Hash::Sha1) => lc_hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Self::Digest(Hash::Sha224) => lc_hmac::HMAC_SHA224,
            Self::Digest(Hash::Sha256) => lc_hmac::HMAC_SHA256,
            Self::Digest(Hash::Sha384) => lc_hmac::HMAC_SHA384,
            Self::Digest(Hash::Sha512) => lc_hmac::HMAC_SHA512,
            _ => return None,
        })
    }
}

/// A RustCrypto HMAC behind one object-safe face, for the hashes aws-lc-rs has no HMAC over.
trait RcMac: Send + Sync {
    fn boxed_clone(&self) -> Box<dyn RcMac>;
    fn absorb(&mut self, data: &[u8]);
    fn tag(self: Box<Self>) -> Vec<u8>;
}

impl<M: Mac + Clone + Send + Sync + 'static> RcMac for M {
    fn boxed_clone(&self) -> Box<dyn RcMac> {
        Box::new(self.clone())
    }

    fn absorb(&mut self, data: &[u8]) {
        self.update(data);
    }

    fn tag(self: Box<Self>) -> Vec<u8> {
        self.finalize().into_bytes().to_vec()
    }
}

fn rc_hmac<M: Mac + KeyInit + Clone + Send + Sync + 'static>(key: &[u8]) -> Result<Box<dyn RcMac>> {
    <M as KeyInit>::new_from_slice(key)
        .map(|m| Box::new(m) as Box<dyn RcMac>)
        .map_err(|_| Error::KeySizeRange)
}

/// A keyed HMAC (the key's precomputed pads), cloned into each running MAC.
enum Keyed {
    Lc(Box<lc_hmac::Key>),
    Rc(Box<dyn RcMac>),
}

impl Clone for Keyed {
    fn clone(&self) -> Self {
        match self {
            Self::Lc(k) => Self::Lc(k.clone()),
            Self::Rc(m) => Self::Rc(m.boxed_clone()),
        }
    }
}

impl Keyed {
    fn new(hash: MacHash, key: &[u8]) -> Result<Self> {
        Ok(match hash {
            MacHash::Rc(RcHash::Md5) => Self::Rc(rc_hmac::<Hmac<md5::Md5>>(key)?),
            MacHash::Rc(RcHash::Sha3_224) => Self::Rc(rc_hmac::<Hmac<sha3::Sha3_224>>(key)?),
            MacHash::Rc(RcHash::Sha512_224) => Self::Rc(rc_hmac::<Hmac<sha2::Sha512_224>>(key)?),
            MacHash::Rc(RcHash::Sha512_256) => Self::Rc(rc_hmac::<Hmac<sha2::Sha512_256>>(key)?),
            MacHash::Digest(Hash::Sha3_256) => Self::Rc(rc_hmac::<Hmac<sha3::Sha3_256>>(key)?),
            MacHash::Digest(Hash::Sha3_384) => Self::Rc(rc_hmac::<Hmac<sha3::Sha3_384>>(key)?),
            MacHash::Digest(Hash::Sha3_512) => Self::Rc(rc_hmac::<Hmac<sha3::Sha3_512>>(key)?),
            other => Self::Lc(Box::new(lc_hmac::Key::new(
                other.lc().ok_or(Error::Internal("hmac hash"))?,
                key,
            ))),
        })
    }
}

/// The HMAC keys built from one key object, one per hash it was used with. Cached in the
/// object's parsed forms.
pub(crate) struct HmacKeys {
    value: Zeroizing<Vec<u8>>,
    keyed: Mutex<Vec<(MacHash, Keyed)>>,
}

impl HmacKeys {
    /// The cache for a key value.
    pub(crate) fn new(value: &[u8]) -> Self {
        Self {
            value: Zeroizing::new(value.to_vec()),
            keyed: Mutex::new(Vec::new()),
        }
    }

    /// A running HMAC over `hash`.
    pub(crate) fn start(&self, hash: MacHash) -> Result<HmacCtx> {
        let mut keyed = self.keyed.lock();
        let k = match keyed.iter().find(|(h, _)| *h == hash) {
            Some((_, k)) => k.clone(),
            None => {
                let k = Keyed::new(hash, &self.value)?;
                keyed.push((hash, k.clone()));
                k
            }
        };
        Ok(HmacCtx(match k {
            Keyed::Lc(k) => Running::Lc(Box::new(lc_hmac::Context::with_key(&k))),
            Keyed::Rc(m) => Running::Rc(m),
        }))
    }
}

enum Running {
    Lc(Box<lc_hmac::Context>),
    Rc(Box<dyn RcMac>),
}

/// A running HMAC.
pub(crate) struct HmacCtx(Running);

impl HmacCtx {
    /// Absorbs data.
    pub(crate) fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            Running::Lc(c) => c.update(data),
            Running::Rc(m) => m.absorb(data),
        }
    }

    /// The full-length MAC.
    pub(crate) fn finish(self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(match self.0 {
            Running::Lc(c) => c.sign().as_ref().to_vec(),
            Running::Rc(m) => m.tag(),
        })
    }
}

/// One-shot HMAC.
pub(crate) fn hmac(hash: MacHash, key: &[u8], data: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let keys = HmacKeys::new(key);
    let mut c = keys.start(hash)?;
    c.update(data);
    Ok(c.finish())
}

/// An AES-CMAC key (cached per object).
pub(crate) struct CmacKey(cmac::Key);

impl CmacKey {
    /// A CMAC key from an AES key value (16, 24 or 32 bytes).
    pub(crate) fn new(key: &[u8]) -> Result<Self> {
        let alg = match key.len() {
            16 => cmac::AES_128,
            24 => cmac::AES_192,
            32 => cmac::AES_256,
            _ => return Err(Error::KeySizeRange),
        };
        cmac::Key::new(alg, key)
            .map(Self)
            .map_err(|_| Error::KeySizeRange)
    }

    /// A running CMAC.
    pub(crate) fn start(&self) -> CmacCtx {
        CmacCtx(cmac::Context::with_key(&self.0))
    }
}

/// A running AES-CMAC.
pub(crate) struct CmacCtx(cmac::Context);

impl CmacCtx {
    /// Absorbs data.
    pub(crate) fn update(&mut self, data: &[u8]) -> Result<()> {
        self.0
            .update(data)
            .map_err(|_| Error::Internal("cmac update"))
    }

    /// The 16-byte MAC.
    pub(crate) fn finish(self) -> Result<Zeroizing<Vec<u8>>> {
        self.0
            .sign()
            .map(|t| Zeroizing::new(t.as_ref().to_vec()))
            .map_err(|_| Error::Internal("cmac sign"))
    }
}

fn hkdf_alg(hash: Hash) -> Option<hkdf::Algorithm> {
    Some(match hash {
        Hash::Sha1 => hkdf::HKDF_SHA1_FOR_LEGACY_USE_ONLY,
        Hash::Sha256 => hkdf::HKDF_SHA256,
        Hash::Sha384 => hkdf::HKDF_SHA384,
        Hash::Sha512 => hkdf::HKDF_SHA512,
        _ => return None,
    })
}

/// Whether HKDF is offered over `hash`.
pub(crate) fn hkdf_supports(hash: Hash) -> bool {
    hkdf_alg(hash).is_some()
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Extract (RFC 5869 §2.2): `PRK = HMAC-Hash(salt, IKM)`.
pub(crate) fn hkdf_extract(hash: Hash, salt: &[u8], ikm: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    if !hkdf_supports(hash) {
        return Err(Error::MechanismParamInvalid);
    }
    hmac(MacHash::Digest(hash), salt, ikm)
}

/// HKDF-Expand (RFC 5869 §2.3) of `prk` to `len` bytes; `CKR_KEY_SIZE_RANGE` past
/// 255 × HashLen.
pub(crate) fn hkdf_expand(
    hash: Hash,
    prk: &[u8],
    info: &[u8],
    len: usize,
) -> Result<Zeroizing<Vec<u8>>> {
    let alg = hkdf_alg(hash).ok_or(Error::MechanismParamInvalid)?;
    let mut out = Zeroizing::new(vec![0u8; len]);
    if prk.len() > AWS_LC_MAX_PRK {
        // aws-lc-rs panics on a longer PRK; RustCrypto's HKDF takes any (an expand-only step
        // from a generic secret of up to 512 bytes).
        let r = match hash {
            Hash::Sha1 => long_prk_expand::<sha1::Sha1>(prk, info, &mut out),
            Hash::Sha256 => long_prk_expand::<sha2::Sha256>(prk, info, &mut out),
            Hash::Sha384 => long_prk_expand::<sha2::Sha384>(prk, info, &mut out),
            Hash::Sha512 => long_prk_expand::<sha2::Sha512>(prk, info, &mut out),
            _ => Err(Error::MechanismParamInvalid),
        };
        r?;
        return Ok(out);
    }
    let prk = hkdf::Prk::new_less_safe(alg, prk);
    prk.expand(&[info], Len(len))
        .and_then(|okm| okm.fill(&mut out))
        .map_err(|_| Error::KeySizeRange)?;
    Ok(out)
}

/// The longest PRK aws-lc-rs's HKDF takes (`EVP_MAX_MD_SIZE`).
const AWS_LC_MAX_PRK: usize = 64;

fn long_prk_expand<D>(prk: &[u8], info: &[u8], out: &mut [u8]) -> Result<()>
where
    D: sha2::digest::Digest + sha2::digest::core_api::BlockSizeUser + Clone,
    ::hkdf::hmac::SimpleHmac<D>: KeyInit,
{
    ::hkdf::SimpleHkdf::<D>::from_prk(prk)
        .map_err(|_| Error::KeySizeRange)?
        .expand(info, out)
        .map_err(|_| Error::KeySizeRange)
}

/// PBKDF2 with HMAC over `hash` (SHA-1, SHA-256, SHA-384, SHA-512).
pub(crate) fn pbkdf2(
    hash: Hash,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
    len: usize,
) -> Result<Zeroizing<Vec<u8>>> {
    let alg = match hash {
        Hash::Sha1 => pbkdf2::PBKDF2_HMAC_SHA1,
        Hash::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
        Hash::Sha384 => pbkdf2::PBKDF2_HMAC_SHA384,
        Hash::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        _ => return Err(Error::MechanismParamInvalid),
    };
    let iterations = std::num::NonZeroU32::new(iterations).ok_or(Error::MechanismParamInvalid)?;
    let mut out = Zeroizing::new(vec![0u8; len]);
    pbkdf2::derive(alg, iterations, salt, password, &mut out);
    Ok(out)
}
