//! RSA: key pair generation, PKCS#1 v1.5 (`CKM_RSA_PKCS`), raw RSA (`CKM_RSA_X_509`), PSS,
//! OAEP, the hash-and-sign variants with SHA-1 and SHA-2, and `CKM_RSA_AES_KEY_WRAP` (the
//! BYOK import format); the import, wrap and unwrap forms of RSA keys.
//!
//! Key sizes are 1024 to 4096 bits for every mechanism. Choices the specification leaves open:
//! - PSS and OAEP need their parameter structure (`CKR_MECHANISM_PARAM_INVALID` without it);
//!   PSS uses one hash for the message and MGF1 (a different MGF1 hash is
//!   `CKR_MECHANISM_PARAM_INVALID`); OAEP accepts any SHA-1/SHA-2 pair and a label, and also
//!   `source = 0` with no label (what pkcs11-tool 0.23 sends).
//! - An RSA private key imported without its primes gets them computed from `d` (which needs
//!   `e > 2^16`; otherwise `CKR_TEMPLATE_INCOMPLETE`). Given CRT values must be the right ones.
//! - The hash-and-sign mechanisms are multi-part; `CKM_RSA_PKCS`, `CKM_RSA_X_509` and
//!   `CKM_RSA_PKCS_PSS` are single-part only, as the specification says.

use std::sync::Arc;

use bridge::{Attribute, Error, MechanismInfo, MechanismParams, OaepParams, Result, Template};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::{
    CipherOp, Generated, Key, Mechanism, Output, SIGN_VERIFY, SignOp, VerifyOp, no_params,
};
use crate::crypto::rsa::{
    self as crsa, Components, MAX_BITS, MIN_BITS, OaepSpec, PrivateKey, PssSpec, PublicKey,
};
use crate::crypto::{Hash, Hasher, Secret, ct_eq};
use crate::object::{Object, SecretAttrs};

/// `CKM_RSA_PKCS_KEY_PAIR_GEN`.
pub(crate) struct KeyPairGen;

/// `CKM_RSA_PKCS`: PKCS#1 v1.5 signatures over given content, encryption, key wrapping.
pub(crate) struct RsaPkcs;

/// `CKM_RSA_X_509`: raw RSA.
pub(crate) struct RsaX509;

/// `CKM_RSA_PKCS_OAEP`: encryption and key wrapping.
pub(crate) struct RsaOaep;

/// `CKM_RSA_PKCS_PSS`: PSS over a hash the application computed.
pub(crate) struct RsaPss;

/// `CKM_<hash>_RSA_PKCS`: hash, then PKCS#1 v1.5.
pub(crate) struct HashRsaPkcs(Hash);

/// `CKM_<hash>_RSA_PKCS_PSS`: hash, then PSS.
pub(crate) struct HashRsaPss(Hash);

/// `CKM_RSA_AES_KEY_WRAP`.
pub(crate) struct RsaAesKeyWrap;

pub(crate) static RSA_PKCS_KEY_PAIR_GEN: KeyPairGen = KeyPairGen;
pub(crate) static RSA_PKCS: RsaPkcs = RsaPkcs;
pub(crate) static RSA_X_509: RsaX509 = RsaX509;
pub(crate) static RSA_PKCS_OAEP: RsaOaep = RsaOaep;
pub(crate) static RSA_PKCS_PSS: RsaPss = RsaPss;
pub(crate) static SHA1_RSA_PKCS: HashRsaPkcs = HashRsaPkcs(Hash::Sha1);
pub(crate) static SHA224_RSA_PKCS: HashRsaPkcs = HashRsaPkcs(Hash::Sha224);
pub(crate) static SHA256_RSA_PKCS: HashRsaPkcs = HashRsaPkcs(Hash::Sha256);
pub(crate) static SHA384_RSA_PKCS: HashRsaPkcs = HashRsaPkcs(Hash::Sha384);
pub(crate) static SHA512_RSA_PKCS: HashRsaPkcs = HashRsaPkcs(Hash::Sha512);
pub(crate) static SHA1_RSA_PKCS_PSS: HashRsaPss = HashRsaPss(Hash::Sha1);
pub(crate) static SHA224_RSA_PKCS_PSS: HashRsaPss = HashRsaPss(Hash::Sha224);
pub(crate) static SHA256_RSA_PKCS_PSS: HashRsaPss = HashRsaPss(Hash::Sha256);
pub(crate) static SHA384_RSA_PKCS_PSS: HashRsaPss = HashRsaPss(Hash::Sha384);
pub(crate) static SHA512_RSA_PKCS_PSS: HashRsaPss = HashRsaPss(Hash::Sha512);
pub(crate) static RSA_AES_KEY_WRAP: RsaAesKeyWrap = RsaAesKeyWrap;

/// The mechanism information of every RSA mechanism: the modulus range in bits and `flags`.
fn info(flags: CK_FLAGS) -> MechanismInfo {
    MechanismInfo {
        min_key_size: CK_ULONG::try_from(MIN_BITS).unwrap_or(CK_ULONG::MAX),
        max_key_size: CK_ULONG::try_from(MAX_BITS).unwrap_or(0),
        flags: CKF_HW | flags,
    }
}

// ---- keys -----------------------------------------------------------------------------------

/// The modulus of a key object, checked against the supported sizes (`CKR_KEY_SIZE_RANGE`).
fn modulus(obj: &Object) -> Result<&[u8]> {
    let n = obj
        .bytes(CKA_MODULUS)
        .ok_or(Error::Internal("rsa key without modulus"))?;
    if !(MIN_BITS..=MAX_BITS).contains(&crsa::bit_len(n)) {
        return Err(Error::KeySizeRange);
    }
    Ok(n)
}

/// The parsed private key of `key`, or `CKR_KEY_TYPE_INCONSISTENT` for another kind of key.
fn private_key(key: &Key<'_>) -> Result<Arc<PrivateKey>> {
    let obj = key.obj;
    if obj.class() != CKO_PRIVATE_KEY || obj.key_type() != Some(CKK_RSA) {
        return Err(Error::KeyTypeInconsistent);
    }
    modulus(obj)?;
    obj.material.parsed(|| {
        let c = components(obj, key.secrets).map_err(|_| Error::Internal("rsa key material"))?;
        PrivateKey::new(c).map_err(|_| Error::Internal("rsa key material"))
    })
}

/// The parsed public key of `key`, or `CKR_KEY_TYPE_INCONSISTENT` for another kind of key.
fn public_key(key: &Key<'_>) -> Result<Arc<PublicKey>> {
    let obj = key.obj;
    if obj.class() != CKO_PUBLIC_KEY || obj.key_type() != Some(CKK_RSA) {
        return Err(Error::KeyTypeInconsistent);
    }
    let n = modulus(obj)?;
    let e = obj
        .bytes(CKA_PUBLIC_EXPONENT)
        .ok_or(Error::Internal("rsa key without exponent"))?;
    obj.material
        .parsed(|| PublicKey::new(n, e).map_err(|_| Error::Internal("rsa key material")))
}

/// The complete components of a private key object (primes and CRT values computed when the
/// object lacks them).
fn components(obj: &Object, secrets: &SecretAttrs) -> Result<Components> {
    let n = obj.bytes(CKA_MODULUS).ok_or(Error::TemplateIncomplete)?;
    let e = obj
        .bytes(CKA_PUBLIC_EXPONENT)
        .ok_or(Error::TemplateIncomplete)?;
    let secret = |ty| secrets.get(ty).map(Secret::expose);
    let d = secret(CKA_PRIVATE_EXPONENT).ok_or(Error::TemplateIncomplete)?;
    match [
        CKA_PRIME_1,
        CKA_PRIME_2,
        CKA_EXPONENT_1,
        CKA_EXPONENT_2,
        CKA_COEFFICIENT,
    ]
    .map(secret)
    {
        // Everything stored (generated, unwrapped, or imported complete and checked then).
        [Some(p), Some(q), Some(dp), Some(dq), Some(qinv)] => {
            Ok(Components::from_parts([n, e, d, p, q, dp, dq, qinv]))
        }
        [Some(p), Some(q), ..] => Components::complete(n, e, d, Some((p, q))),
        _ => Components::complete(n, e, d, None),
    }
}

/// The attributes of a private key object holding `c`.
fn private_attributes(c: &Components) -> Result<Vec<Attribute>> {
    let secret = |ty, s: &Secret| Attribute::bytes(ty, s.expose().to_vec());
    Ok(vec![
        Attribute::bytes(CKA_MODULUS, c.n.clone()),
        Attribute::bytes(CKA_PUBLIC_EXPONENT, c.e.clone()),
        secret(CKA_PRIVATE_EXPONENT, &c.d),
        secret(CKA_PRIME_1, &c.p),
        secret(CKA_PRIME_2, &c.q),
        secret(CKA_EXPONENT_1, &c.dp),
        secret(CKA_EXPONENT_2, &c.dq),
        secret(CKA_COEFFICIENT, &c.qinv),
        Attribute::bytes(CKA_PUBLIC_KEY_INFO, crsa::public_key_info(&c.n, &c.e)?),
    ])
}

/// The wrappable form of an RSA private key: PKCS#8.
pub(crate) fn key_to_wrap(obj: &Object, secrets: &SecretAttrs) -> Result<Output> {
    let c = components(obj, secrets).map_err(|_| Error::KeyNotWrappable)?;
    let der = c.to_pkcs8()?;
    Ok(Zeroizing::new(der.expose().to_vec()))
}

/// The attributes of an RSA private key unwrapped from PKCS#8.
pub(crate) fn key_from_unwrap(pkcs8: &[u8]) -> Result<Vec<Attribute>> {
    private_attributes(&Components::from_pkcs8(pkcs8)?)
}

/// Checks the key material of an RSA key given to `C_CreateObject`.
pub(crate) fn check_import(class: CK_OBJECT_CLASS, template: &Template) -> Result<()> {
    let get = |ty| template.get(ty).map(Attribute::as_bytes).transpose();
    let n = get(CKA_MODULUS)?.ok_or(Error::TemplateIncomplete)?;
    let e = get(CKA_PUBLIC_EXPONENT)?.ok_or(Error::TemplateIncomplete)?;
    let public = PublicKey::new(n, e)?;
    if get(CKA_PUBLIC_KEY_INFO)?.is_some_and(|i| !i.is_empty() && i != public.info()) {
        return Err(Error::AttributeValueInvalid);
    }
    if class != CKO_PRIVATE_KEY {
        return Ok(());
    }
    let d = get(CKA_PRIVATE_EXPONENT)?.ok_or(Error::TemplateIncomplete)?;
    let primes = match (get(CKA_PRIME_1)?, get(CKA_PRIME_2)?) {
        (Some(p), Some(q)) => Some((p, q)),
        (None, None) => None,
        _ => return Err(Error::TemplateIncomplete),
    };
    if primes.is_none() && crsa::exponent_value(e).is_some_and(|v| v <= 1 << 16) {
        // Recovering the primes from d (NIST SP 800-56B C.2) needs e > 2^16.
        return Err(Error::TemplateIncomplete);
    }
    let c = Components::complete(n, e, d, primes)?;
    for (ty, computed) in [
        (CKA_PRIME_1, &c.p),
        (CKA_PRIME_2, &c.q),
        (CKA_EXPONENT_1, &c.dp),
        (CKA_EXPONENT_2, &c.dq),
        (CKA_COEFFICIENT, &c.qinv),
    ] {
        if let Some(given) = get(ty)? {
            if !ct_eq(crsa::strip(given), computed.expose()) {
                return Err(Error::AttributeValueInvalid);
            }
        }
    }
    Ok(())
}

/// The attributes the token computes for an RSA key given to `C_CreateObject` (after
/// `check_import`): `CKA_MODULUS_BITS` of a public key, `CKA_PUBLIC_KEY_INFO`.
pub(crate) fn computed_on_import(
    class: CK_OBJECT_CLASS,
    template: &Template,
) -> Result<Vec<Attribute>> {
    let get = |ty| {
        template
            .get(ty)
            .ok_or(Error::TemplateIncomplete)
            .and_then(Attribute::as_bytes)
    };
    let (n, e) = (get(CKA_MODULUS)?, get(CKA_PUBLIC_EXPONENT)?);
    let mut out = vec![Attribute::bytes(
        CKA_PUBLIC_KEY_INFO,
        crsa::public_key_info(n, e)?,
    )];
    if class == CKO_PUBLIC_KEY {
        let bits =
            CK_ULONG::try_from(crsa::bit_len(n)).map_err(|_| Error::AttributeValueInvalid)?;
        out.push(Attribute::ulong(CKA_MODULUS_BITS, bits));
    }
    Ok(out)
}

// ---- parameters -----------------------------------------------------------------------------

/// A hash RSA works with, from its `CKM_*` digest mechanism.
fn hash_of(ckm: CK_MECHANISM_TYPE) -> Result<Hash> {
    Hash::from_ckm(ckm)
        .filter(|h| crsa::is_rsa_hash(*h))
        .ok_or(Error::MechanismParamInvalid)
}

/// The hash of an MGF1 (`CKG_MGF1_*`).
fn mgf_hash(mgf: CK_RSA_PKCS_MGF_TYPE) -> Result<Hash> {
    Ok(match mgf {
        CKG_MGF1_SHA1 => Hash::Sha1,
        CKG_MGF1_SHA224 => Hash::Sha224,
        CKG_MGF1_SHA256 => Hash::Sha256,
        CKG_MGF1_SHA384 => Hash::Sha384,
        CKG_MGF1_SHA512 => Hash::Sha512,
        _ => return Err(Error::MechanismParamInvalid),
    })
}

/// `CK_RSA_PKCS_PSS_PARAMS` for a key of `bits` bits; `hash` is the mechanism's own hash, if
/// it has one (the parameters must name the same).
fn pss_spec(params: &MechanismParams, hash: Option<Hash>, bits: usize) -> Result<PssSpec> {
    let MechanismParams::RsaPkcsPss {
        hash_alg,
        mgf,
        salt_len,
    } = params
    else {
        return Err(Error::MechanismParamInvalid);
    };
    let spec = PssSpec {
        hash: hash_of(*hash_alg)?,
        mgf: mgf_hash(*mgf)?,
        salt_len: usize::try_from(*salt_len).map_err(|_| Error::MechanismParamInvalid)?,
    };
    if hash.is_some_and(|h| h != spec.hash) || !crsa::pss_supported(&spec) {
        return Err(Error::MechanismParamInvalid);
    }
    // sLen <= emLen - hLen - 2.
    let room = crsa::pss_em_len(bits).checked_sub(spec.hash.len() + 2);
    if room.is_none_or(|room| spec.salt_len > room) {
        return Err(Error::MechanismParamInvalid);
    }
    Ok(spec)
}

/// `CK_RSA_PKCS_OAEP_PARAMS` for a key of `bits` bits.
fn oaep_spec(p: &OaepParams, bits: usize) -> Result<OaepSpec> {
    let source_ok = match p.source {
        CKZ_DATA_SPECIFIED => true,
        // pkcs11-tool 0.23 sends source 0 when it means "no label".
        0 => p.source_data.is_empty(),
        _ => false,
    };
    if !source_ok {
        return Err(Error::MechanismParamInvalid);
    }
    let spec = OaepSpec {
        hash: hash_of(p.hash_alg)?,
        mgf: mgf_hash(p.mgf)?,
        label: p.source_data.clone(),
    };
    // The key must leave room for at least an empty message: k >= 2 hLen + 2.
    if bits.div_ceil(8) < 2 * spec.hash.len() + 2 || !crsa::oaep_supported(&spec, bits) {
        return Err(Error::MechanismParamInvalid);
    }
    Ok(spec)
}

fn oaep_params(params: &MechanismParams, bits: usize) -> Result<OaepSpec> {
    match params {
        MechanismParams::RsaPkcsOaep(p) => oaep_spec(p, bits),
        _ => Err(Error::MechanismParamInvalid),
    }
}

// ---- signatures -----------------------------------------------------------------------------

/// What a signature mechanism does with its input (or with the hash of it).
#[derive(Clone, Copy)]
enum Scheme {
    /// PKCS#1 v1.5 over the input itself (`CKM_RSA_PKCS`).
    Pkcs1Raw,
    /// PKCS#1 v1.5 over a hash.
    Pkcs1(Hash),
    /// PSS over a hash.
    Pss(PssSpec),
    /// Raw RSA (`CKM_RSA_X_509`).
    Raw,
}

/// A running signature: multi-part when it hashes the message itself.
struct Signer {
    key: Arc<PrivateKey>,
    scheme: Scheme,
    /// Whether the mechanism hashes the message (multi-part), even after `finish` took the
    /// hasher.
    hashing: bool,
    hasher: Option<Hasher>,
}

/// A running verification.
struct Verifier {
    key: Arc<PublicKey>,
    scheme: Scheme,
    hasher: Option<Hasher>,
}

fn hasher_for(scheme: Scheme, hashing: bool) -> Option<Hasher> {
    match scheme {
        Scheme::Pkcs1(h) if hashing => Some(h.start()),
        Scheme::Pss(spec) if hashing => Some(spec.hash.start()),
        _ => None,
    }
}

/// Checks the length of a single-part input: `CKR_DATA_LEN_RANGE`.
fn check_input(scheme: Scheme, k: usize, input: &[u8]) -> Result<()> {
    let ok = match scheme {
        Scheme::Pkcs1Raw => input.len() + 11 <= k,
        Scheme::Pkcs1(h) => input.len() == h.len(),
        Scheme::Pss(spec) => input.len() == spec.hash.len(),
        Scheme::Raw => input.len() <= k,
    };
    if ok { Ok(()) } else { Err(Error::DataLenRange) }
}

impl Signer {
    fn new(
        key: &Key<'_>,
        scheme: impl FnOnce(usize) -> Result<Scheme>,
        hashing: bool,
    ) -> Result<Self> {
        let key = private_key(key)?;
        let scheme = scheme(key.public().bits())?;
        let hasher = hasher_for(scheme, hashing);
        Ok(Self {
            hashing: hasher.is_some(),
            hasher,
            key,
            scheme,
        })
    }

    /// Signs `input`: the message hash, or the content itself for the raw schemes.
    fn sign(&self, input: &[u8]) -> Result<Output> {
        let k = self.key.public().len();
        check_input(self.scheme, k, input)?;
        let sig = match self.scheme {
            Scheme::Pkcs1Raw => self.key.sign_pkcs1_raw(input)?,
            Scheme::Pkcs1(h) => self.key.sign_pkcs1_digest(h, input)?,
            Scheme::Pss(spec) => self.key.sign_pss(&spec, input)?,
            Scheme::Raw => {
                if !self.key.public().below_modulus(input) {
                    return Err(Error::DataInvalid);
                }
                return Ok(Zeroizing::new(self.key.raw(input)?.expose().to_vec()));
            }
        };
        Ok(Zeroizing::new(sig))
    }
}

impl SignOp for Signer {
    fn len(&self) -> usize {
        self.key.public().len()
    }

    fn update(&mut self, data: &[u8]) -> Result<()> {
        let h = self.hasher.as_mut().ok_or(Error::FunctionNotSupported)?;
        h.update(data);
        Ok(())
    }

    fn finish(&mut self) -> Result<Output> {
        let h = self.hasher.take().ok_or(Error::FunctionNotSupported)?;
        self.sign(&h.finish())
    }

    fn one_shot(&mut self, data: &[u8]) -> Result<Output> {
        if self.hasher.is_some() {
            self.update(data)?;
            self.finish()
        } else {
            self.sign(data)
        }
    }

    fn multi_part(&self) -> bool {
        self.hashing
    }
}

impl Verifier {
    fn new(
        key: &Key<'_>,
        scheme: impl FnOnce(usize) -> Result<Scheme>,
        hashing: bool,
    ) -> Result<Self> {
        let key = public_key(key)?;
        let scheme = scheme(key.bits())?;
        Ok(Self {
            hasher: hasher_for(scheme, hashing),
            key,
            scheme,
        })
    }

    fn verify(&self, input: &[u8], sig: &[u8]) -> Result<()> {
        let k = self.key.len();
        if sig.len() != k {
            return Err(Error::SignatureLenRange);
        }
        check_input(self.scheme, k, input)?;
        match self.scheme {
            Scheme::Pkcs1Raw => self.key.verify_pkcs1_raw(input, sig),
            Scheme::Pkcs1(h) => self.key.verify_pkcs1_digest(h, input, sig),
            Scheme::Pss(spec) => self.key.verify_pss(&spec, input, sig),
            Scheme::Raw => {
                if !self.key.below_modulus(sig) {
                    return Err(Error::SignatureInvalid);
                }
                let recovered = self.key.raw(sig)?;
                let mut expected = vec![0u8; k - input.len()];
                expected.extend_from_slice(input);
                if ct_eq(&recovered, &expected) {
                    Ok(())
                } else {
                    Err(Error::SignatureInvalid)
                }
            }
        }
    }
}

impl VerifyOp for Verifier {
    fn update(&mut self, data: &[u8]) -> Result<()> {
        let h = self.hasher.as_mut().ok_or(Error::FunctionNotSupported)?;
        h.update(data);
        Ok(())
    }

    fn finish(&mut self, signature: &[u8]) -> Result<()> {
        let h = self.hasher.take().ok_or(Error::FunctionNotSupported)?;
        self.verify(&h.finish(), signature)
    }

    fn one_shot(&mut self, data: &[u8], signature: &[u8]) -> Result<()> {
        if self.hasher.is_some() {
            self.update(data)?;
            self.finish(signature)
        } else {
            self.verify(data, signature)
        }
    }

    fn multi_part(&self) -> bool {
        self.hasher.is_some()
    }
}

// ---- encryption -----------------------------------------------------------------------------

/// The padding of an encryption mechanism.
#[derive(Clone)]
enum Padding {
    Pkcs1,
    Oaep(OaepSpec),
    Raw,
}

impl Padding {
    /// The longest plaintext for a modulus of `k` bytes.
    fn max_input(&self, k: usize) -> usize {
        match self {
            Self::Pkcs1 => k.saturating_sub(11),
            Self::Oaep(spec) => k.saturating_sub(2 * spec.hash.len() + 2),
            Self::Raw => k,
        }
    }
}

/// Encrypts under a public key: `CKR_DATA_LEN_RANGE` for a plaintext too long.
fn encrypt(key: &PublicKey, padding: &Padding, plaintext: &[u8]) -> Result<Vec<u8>> {
    if plaintext.len() > padding.max_input(key.len()) {
        return Err(Error::DataLenRange);
    }
    match padding {
        Padding::Pkcs1 => key.encrypt_pkcs1(plaintext),
        Padding::Oaep(spec) => key.encrypt_oaep(spec, plaintext),
        Padding::Raw => {
            if !key.below_modulus(plaintext) {
                return Err(Error::DataInvalid);
            }
            key.raw(plaintext)
        }
    }
}

/// Decrypts with a private key: `CKR_ENCRYPTED_DATA_LEN_RANGE` unless the ciphertext is `k`
/// bytes; every other failure `CKR_ENCRYPTED_DATA_INVALID`.
fn decrypt(key: &PrivateKey, padding: &Padding, ciphertext: &[u8]) -> Result<Secret> {
    if ciphertext.len() != key.public().len() {
        return Err(Error::EncryptedDataLenRange);
    }
    match padding {
        Padding::Pkcs1 => key.decrypt_pkcs1(ciphertext),
        Padding::Oaep(spec) => key.decrypt_oaep(spec, ciphertext),
        Padding::Raw => {
            if !key.public().below_modulus(ciphertext) {
                return Err(Error::EncryptedDataInvalid);
            }
            key.raw(ciphertext).map_err(|_| Error::EncryptedDataInvalid)
        }
    }
}

/// A single-part encryption.
struct Encrypter {
    key: Arc<PublicKey>,
    padding: Padding,
}

/// A single-part decryption.
struct Decrypter {
    key: Arc<PrivateKey>,
    padding: Padding,
}

impl CipherOp for Encrypter {
    fn output_len(&self, _input_len: usize, _whole: bool) -> usize {
        self.key.len()
    }

    fn update(&mut self, _data: &[u8]) -> Result<Output> {
        Err(Error::FunctionNotSupported)
    }

    fn finish(&mut self) -> Result<Output> {
        Err(Error::FunctionNotSupported)
    }

    fn final_len(&self) -> usize {
        0
    }

    fn one_shot(&mut self, data: &[u8]) -> Result<Output> {
        encrypt(&self.key, &self.padding, data).map(Zeroizing::new)
    }

    fn multi_part(&self) -> bool {
        false
    }
}

impl CipherOp for Decrypter {
    fn output_len(&self, _input_len: usize, _whole: bool) -> usize {
        self.key.public().len()
    }

    fn update(&mut self, _data: &[u8]) -> Result<Output> {
        Err(Error::FunctionNotSupported)
    }

    fn finish(&mut self) -> Result<Output> {
        Err(Error::FunctionNotSupported)
    }

    fn final_len(&self) -> usize {
        0
    }

    fn one_shot(&mut self, data: &[u8]) -> Result<Output> {
        let plain = decrypt(&self.key, &self.padding, data)?;
        Ok(Zeroizing::new(plain.expose().to_vec()))
    }

    fn multi_part(&self) -> bool {
        false
    }
}

fn encrypter(
    key: &Key<'_>,
    padding: impl FnOnce(usize) -> Result<Padding>,
) -> Result<Box<dyn CipherOp>> {
    let key = public_key(key)?;
    let padding = padding(key.bits())?;
    Ok(Box::new(Encrypter { key, padding }))
}

fn decrypter(
    key: &Key<'_>,
    padding: impl FnOnce(usize) -> Result<Padding>,
) -> Result<Box<dyn CipherOp>> {
    let key = private_key(key)?;
    let padding = padding(key.public().bits())?;
    Ok(Box::new(Decrypter { key, padding }))
}

/// `C_WrapKey` with a padding: the key material is the plaintext (`CKR_KEY_SIZE_RANGE` if it
/// does not fit).
fn wrap_with(
    key: &Key<'_>,
    padding: impl FnOnce(usize) -> Result<Padding>,
    material: &[u8],
) -> Result<Vec<u8>> {
    let key = public_key(key)?;
    let padding = padding(key.bits())?;
    if material.len() > padding.max_input(key.len()) {
        return Err(Error::KeySizeRange);
    }
    encrypt(&key, &padding, material)
}

/// `C_UnwrapKey` with a padding: every failure after the parameter checks is
/// `CKR_WRAPPED_KEY_INVALID` (or `CKR_WRAPPED_KEY_LEN_RANGE` for a wrong length).
fn unwrap_with(
    key: &Key<'_>,
    padding: impl FnOnce(usize) -> Result<Padding>,
    wrapped: &[u8],
) -> Result<Output> {
    let key = private_key(key)?;
    let padding = padding(key.public().bits())?;
    if wrapped.len() != key.public().len() {
        return Err(Error::WrappedKeyLenRange);
    }
    let plain = decrypt(&key, &padding, wrapped).map_err(|_| Error::WrappedKeyInvalid)?;
    Ok(Zeroizing::new(plain.expose().to_vec()))
}

// ---- the mechanisms -------------------------------------------------------------------------

impl Mechanism for KeyPairGen {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        CKM_RSA_PKCS_KEY_PAIR_GEN
    }

    fn info(&self) -> MechanismInfo {
        info(CKF_GENERATE_KEY_PAIR)
    }

    fn generate_key_pair(
        &self,
        public: &Template,
        _private: &Template,
        params: &MechanismParams,
    ) -> Result<(Generated, Generated)> {
        no_params(params)?;
        let bits = public
            .get(CKA_MODULUS_BITS)
            .ok_or(Error::TemplateIncomplete)?
            .as_ulong()?;
        let bits = usize::try_from(bits).map_err(|_| Error::KeySizeRange)?;
        if !(MIN_BITS..=MAX_BITS).contains(&bits) {
            return Err(Error::KeySizeRange);
        }
        let e = match public.get(CKA_PUBLIC_EXPONENT) {
            Some(a) => a.as_bytes()?.to_vec(),
            None => vec![1, 0, 1],
        };
        if crsa::exponent_value(&e).is_none() {
            // An even exponent, or one below 3, is no RSA exponent; an odd one above 2^33 is a
            // valid value this token cannot use.
            let stripped = crsa::strip(&e);
            let odd = stripped.last().is_some_and(|b| b & 1 == 1);
            let at_least_3 = stripped.len() > 1 || stripped.first().is_some_and(|b| *b >= 3);
            return Err(if odd && at_least_3 {
                Error::TemplateInconsistent
            } else {
                Error::AttributeValueInvalid
            });
        }
        let c = crsa::generate(bits, &e)?;
        let bits = CK_ULONG::try_from(crsa::bit_len(&c.n)).map_err(|_| Error::FunctionFailed)?;
        let info = crsa::public_key_info(&c.n, &c.e)?;
        let public = Generated {
            class: CKO_PUBLIC_KEY,
            key_type: CKK_RSA,
            attrs: vec![
                Attribute::bytes(CKA_MODULUS, c.n.clone()),
                Attribute::ulong(CKA_MODULUS_BITS, bits),
                Attribute::bytes(CKA_PUBLIC_EXPONENT, c.e.clone()),
                Attribute::bytes(CKA_PUBLIC_KEY_INFO, info),
            ],
        };
        let private = Generated {
            class: CKO_PRIVATE_KEY,
            key_type: CKK_RSA,
            attrs: private_attributes(&c)?,
        };
        Ok((public, private))
    }
}

impl Mechanism for RsaPkcs {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        CKM_RSA_PKCS
    }

    fn info(&self) -> MechanismInfo {
        info(SIGN_VERIFY | CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP)
    }

    fn check_key(&self, key: &Object, usage: CK_ATTRIBUTE_TYPE) -> Result<()> {
        super::asymmetric_key(key, usage, CKK_RSA)
    }

    fn sign_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn SignOp>> {
        no_params(params)?;
        Ok(Box::new(Signer::new(key, |_| Ok(Scheme::Pkcs1Raw), false)?))
    }

    fn verify_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn VerifyOp>> {
        no_params(params)?;
        Ok(Box::new(Verifier::new(
            key,
            |_| Ok(Scheme::Pkcs1Raw),
            false,
        )?))
    }

    fn encrypt_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn CipherOp>> {
        no_params(params)?;
        encrypter(key, |_| Ok(Padding::Pkcs1))
    }

    fn decrypt_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn CipherOp>> {
        no_params(params)?;
        decrypter(key, |_| Ok(Padding::Pkcs1))
    }

    fn wrap(&self, key: &Key<'_>, material: &[u8], params: &MechanismParams) -> Result<Vec<u8>> {
        no_params(params)?;
        wrap_with(key, |_| Ok(Padding::Pkcs1), material)
    }

    fn unwrap(&self, key: &Key<'_>, wrapped: &[u8], params: &MechanismParams) -> Result<Output> {
        no_params(params)?;
        unwrap_with(key, |_| Ok(Padding::Pkcs1), wrapped)
    }
}

impl Mechanism for RsaX509 {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        CKM_RSA_X_509
    }

    fn info(&self) -> MechanismInfo {
        info(SIGN_VERIFY | CKF_ENCRYPT | CKF_DECRYPT)
    }

    fn check_key(&self, key: &Object, usage: CK_ATTRIBUTE_TYPE) -> Result<()> {
        super::asymmetric_key(key, usage, CKK_RSA)
    }

    fn sign_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn SignOp>> {
        no_params(params)?;
        Ok(Box::new(Signer::new(key, |_| Ok(Scheme::Raw), false)?))
    }

    fn verify_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn VerifyOp>> {
        no_params(params)?;
        Ok(Box::new(Verifier::new(key, |_| Ok(Scheme::Raw), false)?))
    }

    fn encrypt_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn CipherOp>> {
        no_params(params)?;
        encrypter(key, |_| Ok(Padding::Raw))
    }

    fn decrypt_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn CipherOp>> {
        no_params(params)?;
        decrypter(key, |_| Ok(Padding::Raw))
    }
}

impl Mechanism for RsaOaep {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        CKM_RSA_PKCS_OAEP
    }

    fn info(&self) -> MechanismInfo {
        info(CKF_ENCRYPT | CKF_DECRYPT | CKF_WRAP | CKF_UNWRAP)
    }

    fn check_key(&self, key: &Object, usage: CK_ATTRIBUTE_TYPE) -> Result<()> {
        super::asymmetric_key(key, usage, CKK_RSA)
    }

    fn encrypt_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn CipherOp>> {
        encrypter(key, |bits| Ok(Padding::Oaep(oaep_params(params, bits)?)))
    }

    fn decrypt_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn CipherOp>> {
        decrypter(key, |bits| Ok(Padding::Oaep(oaep_params(params, bits)?)))
    }

    fn wrap(&self, key: &Key<'_>, material: &[u8], params: &MechanismParams) -> Result<Vec<u8>> {
        wrap_with(
            key,
            |bits| Ok(Padding::Oaep(oaep_params(params, bits)?)),
            material,
        )
    }

    fn unwrap(&self, key: &Key<'_>, wrapped: &[u8], params: &MechanismParams) -> Result<Output> {
        unwrap_with(
            key,
            |bits| Ok(Padding::Oaep(oaep_params(params, bits)?)),
            wrapped,
        )
    }
}

impl Mechanism for RsaPss {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        CKM_RSA_PKCS_PSS
    }

    fn info(&self) -> MechanismInfo {
        info(SIGN_VERIFY)
    }

    fn check_key(&self, key: &Object, usage: CK_ATTRIBUTE_TYPE) -> Result<()> {
        super::asymmetric_key(key, usage, CKK_RSA)
    }

    fn sign_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn SignOp>> {
        let scheme = |bits| Ok(Scheme::Pss(pss_spec(params, None, bits)?));
        Ok(Box::new(Signer::new(key, scheme, false)?))
    }

    fn verify_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn VerifyOp>> {
        let scheme = |bits| Ok(Scheme::Pss(pss_spec(params, None, bits)?));
        Ok(Box::new(Verifier::new(key, scheme, false)?))
    }
}

impl Mechanism for HashRsaPkcs {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        match self.0 {
            Hash::Sha1 => CKM_SHA1_RSA_PKCS,
            Hash::Sha224 => CKM_SHA224_RSA_PKCS,
            Hash::Sha256 => CKM_SHA256_RSA_PKCS,
            Hash::Sha384 => CKM_SHA384_RSA_PKCS,
            Hash::Sha512 => CKM_SHA512_RSA_PKCS,
            Hash::Sha3_256 => CKM_SHA3_256_RSA_PKCS,
            Hash::Sha3_384 => CKM_SHA3_384_RSA_PKCS,
            Hash::Sha3_512 => CKM_SHA3_512_RSA_PKCS,
        }
    }

    fn info(&self) -> MechanismInfo {
        info(SIGN_VERIFY)
    }

    fn check_key(&self, key: &Object, usage: CK_ATTRIBUTE_TYPE) -> Result<()> {
        super::asymmetric_key(key, usage, CKK_RSA)
    }

    fn sign_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn SignOp>> {
        no_params(params)?;
        Ok(Box::new(Signer::new(
            key,
            |_| Ok(Scheme::Pkcs1(self.0)),
            true,
        )?))
    }

    fn verify_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn VerifyOp>> {
        no_params(params)?;
        Ok(Box::new(Verifier::new(
            key,
            |_| Ok(Scheme::Pkcs1(self.0)),
            true,
        )?))
    }
}

impl Mechanism for HashRsaPss {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        match self.0 {
            Hash::Sha1 => CKM_SHA1_RSA_PKCS_PSS,
            Hash::Sha224 => CKM_SHA224_RSA_PKCS_PSS,
            Hash::Sha256 => CKM_SHA256_RSA_PKCS_PSS,
            Hash::Sha384 => CKM_SHA384_RSA_PKCS_PSS,
            Hash::Sha512 => CKM_SHA512_RSA_PKCS_PSS,
            Hash::Sha3_256 => CKM_SHA3_256_RSA_PKCS_PSS,
            Hash::Sha3_384 => CKM_SHA3_384_RSA_PKCS_PSS,
            Hash::Sha3_512 => CKM_SHA3_512_RSA_PKCS_PSS,
        }
    }

    fn info(&self) -> MechanismInfo {
        info(SIGN_VERIFY)
    }

    fn check_key(&self, key: &Object, usage: CK_ATTRIBUTE_TYPE) -> Result<()> {
        super::asymmetric_key(key, usage, CKK_RSA)
    }

    fn sign_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn SignOp>> {
        let scheme = |bits| Ok(Scheme::Pss(pss_spec(params, Some(self.0), bits)?));
        Ok(Box::new(Signer::new(key, scheme, true)?))
    }

    fn verify_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn VerifyOp>> {
        let scheme = |bits| Ok(Scheme::Pss(pss_spec(params, Some(self.0), bits)?));
        Ok(Box::new(Verifier::new(key, scheme, true)?))
    }
}

/// `CK_RSA_AES_KEY_WRAP_PARAMS`: the AES key length in bytes and the OAEP parameters.
fn rsa_aes_params(params: &MechanismParams, bits: usize) -> Result<(usize, OaepSpec)> {
    let MechanismParams::RsaAesKeyWrap { aes_key_bits, oaep } = params else {
        return Err(Error::MechanismParamInvalid);
    };
    let aes_len = match aes_key_bits {
        128 => 16,
        192 => 24,
        256 => 32,
        _ => return Err(Error::MechanismParamInvalid),
    };
    let spec = oaep_spec(oaep, bits)?;
    if aes_len > Padding::Oaep(spec.clone()).max_input(bits.div_ceil(8)) {
        return Err(Error::MechanismParamInvalid);
    }
    Ok((aes_len, spec))
}

impl Mechanism for RsaAesKeyWrap {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        CKM_RSA_AES_KEY_WRAP
    }

    fn info(&self) -> MechanismInfo {
        info(CKF_WRAP | CKF_UNWRAP)
    }

    fn check_key(&self, key: &Object, usage: CK_ATTRIBUTE_TYPE) -> Result<()> {
        super::asymmetric_key(key, usage, CKK_RSA)
    }

    /// A fresh AES key wraps the material (AES key wrap with padding, RFC 5649); OAEP wraps the
    /// AES key; the output is the wrapped AES key followed by the wrapped material.
    fn wrap(&self, key: &Key<'_>, material: &[u8], params: &MechanismParams) -> Result<Vec<u8>> {
        let key = public_key(key)?;
        let (aes_len, spec) = rsa_aes_params(params, key.bits())?;
        let aes = Secret::random(aes_len)?;
        let mut out = key.encrypt_oaep(&spec, aes.expose())?;
        out.extend_from_slice(&crsa::aes_kwp_wrap(&aes, material)?);
        Ok(out)
    }

    fn unwrap(&self, key: &Key<'_>, wrapped: &[u8], params: &MechanismParams) -> Result<Output> {
        let key = private_key(key)?;
        let (aes_len, spec) = rsa_aes_params(params, key.public().bits())?;
        let k = key.public().len();
        // The wrapped material is at least two semiblocks.
        let (head, tail) = wrapped
            .split_at_checked(k)
            .filter(|(_, tail)| tail.len() >= 16 && tail.len() % 8 == 0)
            .ok_or(Error::WrappedKeyLenRange)?;
        // One failure, one path: a bad OAEP block, a key of the wrong length and a failed
        // integrity check are the same error.
        let material = key
            .decrypt_oaep(&spec, head)
            .ok()
            .filter(|aes| aes.len() == aes_len)
            .and_then(|aes| crsa::aes_kwp_unwrap(aes.expose(), tail))
            .ok_or(Error::WrappedKeyInvalid)?;
        Ok(Zeroizing::new(material.expose().to_vec()))
    }
}
