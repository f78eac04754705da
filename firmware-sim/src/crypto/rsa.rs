//! RSA keys and operations: PKCS#1 v1.5, PSS, OAEP, raw RSA, and the AES key wrap with padding
//! that `CKM_RSA_AES_KEY_WRAP` needs.
//!
//! aws-lc-rs does the work wherever it offers the primitive (docs/architecture.md §5): keys of 2048 bits
//! and more; PKCS#1 v1.5 and PSS (salt length = hash length) signatures with SHA-256/384/512;
//! OAEP with SHA-1/256/384/512 and the same hash for MGF1; PKCS#1 v1.5 encryption; key
//! generation of 2048/3072/4096-bit keys with e = 65537; AES-128/256 key wrap with padding.
//! The RustCrypto crates do the rest: 1024-bit keys, SHA-1 and SHA-224 signatures, other PSS
//! salt lengths, OAEP with SHA-224 or with an MGF1 hash other than the label hash, raw RSA
//! (`CKM_RSA_X_509`), PKCS#1 v1.5 signatures over data that is not a DigestInfo, key generation
//! of other sizes or exponents, and AES-192 key wrap with padding.
//!
//! Which implementation runs depends only on public facts (key size, parameters), never on a
//! secret. RustCrypto's `rsa` carries RUSTSEC-2023-0071 (Marvin, a timing side channel in its
//! private-key operation): its decryptions are blinded, and every decryption failure here is the
//! one error `CKR_ENCRYPTED_DATA_INVALID`, reported on one path.

use std::sync::OnceLock;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::key_wrap::{self, KeyWrapPadded};
use aws_lc_rs::{digest as lc_digest, rsa as lc, signature as lc_sig};
use bridge::{Error, Result};
use rsa::pkcs1::{self, der::Encode};
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, ObjectIdentifier};
use rsa::rand_core::OsRng;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use rsa::{BigUint, Oaep, Pkcs1v15Encrypt, Pkcs1v15Sign, Pss};
use sha2::digest::DynDigest;
use zeroize::Zeroizing;

use super::{Hash, Secret};

/// The smallest modulus the firmware works with, in bits.
pub(crate) const MIN_BITS: usize = 1024;
/// The largest modulus the firmware works with, in bits.
pub(crate) const MAX_BITS: usize = 4096;
/// The largest public exponent (the limit of both libraries: 33 bits).
pub(crate) const MAX_EXPONENT: u64 = (1 << 33) - 1;
/// The smallest modulus aws-lc-rs accepts for a private key, in bits.
const AWS_MIN_BITS: usize = 2048;
/// `rsaEncryption` (PKCS#1).
const RSA_ENCRYPTION: ObjectIdentifier = pkcs1::ALGORITHM_OID;

/// PSS parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PssSpec {
    /// The message hash.
    pub(crate) hash: Hash,
    /// The MGF1 hash.
    pub(crate) mgf: Hash,
    /// Salt length in bytes.
    pub(crate) salt_len: usize,
}

/// OAEP parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OaepSpec {
    /// The label hash.
    pub(crate) hash: Hash,
    /// The MGF1 hash.
    pub(crate) mgf: Hash,
    /// The label (empty for none).
    pub(crate) label: Vec<u8>,
}

/// The hashes RSA works with here: SHA-1 and SHA-2.
pub(crate) fn is_rsa_hash(h: Hash) -> bool {
    rc_digest(h).is_some()
}

/// Big-endian bytes without leading zeros.
pub(crate) fn strip(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    b.get(start..).unwrap_or_default()
}

/// The length in bits of a big-endian integer.
pub(crate) fn bit_len(b: &[u8]) -> usize {
    let b = strip(b);
    b.first().map_or(0, |top| {
        let top_bits = 8 - usize::try_from(top.leading_zeros()).unwrap_or(0);
        (b.len() - 1) * 8 + top_bits
    })
}

/// `emLen` of PSS for a modulus of `bits` bits: `ceil((bits - 1) / 8)`.
pub(crate) fn pss_em_len(bits: usize) -> usize {
    bits.saturating_sub(1).div_ceil(8)
}

// ---- key material ---------------------------------------------------------------------------

/// The components of a two-prime RSA private key, big-endian without leading zeros.
pub(crate) struct Components {
    pub(crate) n: Vec<u8>,
    pub(crate) e: Vec<u8>,
    pub(crate) d: Secret,
    pub(crate) p: Secret,
    pub(crate) q: Secret,
    pub(crate) dp: Secret,
    pub(crate) dq: Secret,
    pub(crate) qinv: Secret,
}

/// A fresh key pair of `bits` bits with public exponent `e` (big-endian, checked by the caller).
pub(crate) fn generate(bits: usize, e: &[u8]) -> Result<Components> {
    let aws_size = match bits {
        2048 => Some(lc::KeySize::Rsa2048),
        3072 => Some(lc::KeySize::Rsa3072),
        4096 => Some(lc::KeySize::Rsa4096),
        _ => None,
    };
    if let (Some(size), [1, 0, 1]) = (aws_size, strip(e)) {
        let pair = lc::KeyPair::generate(size).map_err(|_| Error::FunctionFailed)?;
        let der = pair.as_der().map_err(|_| Error::FunctionFailed)?;
        return Components::from_pkcs8(der.as_ref()).map_err(|_| Error::FunctionFailed);
    }
    let e = BigUint::from_bytes_be(e);
    let key = rsa::RsaPrivateKey::new_with_exp(&mut OsRng, bits, &e)
        .map_err(|_| Error::FunctionFailed)?;
    Components::of(&key)
}

fn secret_of(v: &BigUint) -> Secret {
    Secret::new(v.to_bytes_be())
}

impl Components {
    /// The components of a RustCrypto key.
    fn of(key: &rsa::RsaPrivateKey) -> Result<Self> {
        let [p, q] = key.primes() else {
            return Err(Error::AttributeValueInvalid);
        };
        let missing = || Error::Internal("rsa key without CRT values");
        let qinv = key.crt_coefficient().ok_or_else(missing)?;
        Ok(Self {
            n: key.n().to_bytes_be(),
            e: key.e().to_bytes_be(),
            d: secret_of(key.d()),
            p: secret_of(p),
            q: secret_of(q),
            dp: secret_of(key.dp().ok_or_else(missing)?),
            dq: secret_of(key.dq().ok_or_else(missing)?),
            qinv: Secret::new(qinv.to_bytes_be()),
        })
    }

    /// Completes and checks a key from `n`, `e`, `d` and, if known, the primes: the primes are
    /// recovered from `d` when absent (NIST SP 800-56B appendix C.2), the CRT values computed.
    /// `CKR_ATTRIBUTE_VALUE_INVALID` if the values do not form a key of a supported size.
    pub(crate) fn complete(
        n: &[u8],
        e: &[u8],
        d: &[u8],
        primes: Option<(&[u8], &[u8])>,
    ) -> Result<Self> {
        let (n, e, d) = (strip(n), strip(e), strip(d));
        let bits = bit_len(n);
        // The preconditions that keep RustCrypto's arithmetic away from panics (a zero or even
        // modulus, a zero private exponent).
        let n_odd = n.last().is_some_and(|b| b & 1 == 1);
        if !(MIN_BITS..=MAX_BITS).contains(&bits)
            || !n_odd
            || exponent_value(e).is_none()
            || d.is_empty()
            || d.len() > n.len()
        {
            return Err(Error::AttributeValueInvalid);
        }
        let mut ps = Vec::new();
        if let Some((p, q)) = primes {
            ps.push(BigUint::from_bytes_be(p));
            ps.push(BigUint::from_bytes_be(q));
        }
        let key = rsa::RsaPrivateKey::from_components(
            BigUint::from_bytes_be(n),
            BigUint::from_bytes_be(e),
            BigUint::from_bytes_be(d),
            ps,
        )
        .map_err(|_| Error::AttributeValueInvalid)?;
        Self::of(&key)
    }

    /// Parses and checks an unencrypted PKCS#8 `PrivateKeyInfo`. A well-formed one of another
    /// algorithm is `CKR_TEMPLATE_INCONSISTENT`; anything else wrong `CKR_WRAPPED_KEY_INVALID`.
    pub(crate) fn from_pkcs8(der: &[u8]) -> Result<Self> {
        let info = pkcs8::PrivateKeyInfo::try_from(der).map_err(|_| Error::WrappedKeyInvalid)?;
        if info.algorithm.oid != RSA_ENCRYPTION {
            return Err(Error::TemplateInconsistent);
        }
        let key = rsa::RsaPrivateKey::from_pkcs8_der(der).map_err(|_| Error::WrappedKeyInvalid)?;
        if !(MIN_BITS..=MAX_BITS).contains(&key.n().bits()) {
            return Err(Error::WrappedKeyInvalid);
        }
        Self::of(&key).map_err(|_| Error::WrappedKeyInvalid)
    }

    /// Takes components already known to belong together (stored with a key object that was
    /// checked when it was made); only leading zeros are removed.
    pub(crate) fn from_parts(parts: [&[u8]; 8]) -> Self {
        let [n, e, d, p, q, dp, dq, qinv] = parts.map(strip);
        Self {
            n: n.to_vec(),
            e: e.to_vec(),
            d: Secret::copy_from(d),
            p: Secret::copy_from(p),
            q: Secret::copy_from(q),
            dp: Secret::copy_from(dp),
            dq: Secret::copy_from(dq),
            qinv: Secret::copy_from(qinv),
        }
    }

    /// The key as an unencrypted PKCS#8 `PrivateKeyInfo` (an RSAPrivateKey of two primes).
    pub(crate) fn to_pkcs8(&self) -> Result<Secret> {
        let encoding = |_| Error::Internal("pkcs8 encoding");
        let uint = |b| pkcs1::UintRef::new(b).map_err(encoding);
        let key = pkcs1::RsaPrivateKey {
            modulus: uint(&self.n)?,
            public_exponent: uint(&self.e)?,
            private_exponent: uint(self.d.expose())?,
            prime1: uint(self.p.expose())?,
            prime2: uint(self.q.expose())?,
            exponent1: uint(self.dp.expose())?,
            exponent2: uint(self.dq.expose())?,
            coefficient: uint(self.qinv.expose())?,
            other_prime_infos: None,
        };
        let inner = Zeroizing::new(key.to_der().map_err(encoding)?);
        let info = pkcs8::PrivateKeyInfo::new(pkcs1::ALGORITHM_ID, &inner);
        Ok(Secret::new(info.to_der().map_err(encoding)?))
    }

    fn rc_key(&self) -> Result<rsa::RsaPrivateKey> {
        let b = |s: &Secret| BigUint::from_bytes_be(s.expose());
        rsa::RsaPrivateKey::from_components(
            BigUint::from_bytes_be(&self.n),
            BigUint::from_bytes_be(&self.e),
            b(&self.d),
            vec![b(&self.p), b(&self.q)],
        )
        .map_err(|_| Error::Internal("rsa components"))
    }
}

/// The value of a public exponent the firmware can use (odd, 3 ..= 2^33 - 1).
pub(crate) fn exponent_value(e: &[u8]) -> Option<u64> {
    let e = strip(e);
    if e.len() > 8 {
        return None;
    }
    let mut v = [0u8; 8];
    v.get_mut(8 - e.len()..)?.copy_from_slice(e);
    let v = u64::from_be_bytes(v);
    (v >= 3 && v % 2 == 1 && v <= MAX_EXPONENT).then_some(v)
}

/// The DER `SubjectPublicKeyInfo` of the public key `(n, e)`.
pub(crate) fn public_key_info(n: &[u8], e: &[u8]) -> Result<Vec<u8>> {
    let key = rsa::RsaPublicKey::new(
        BigUint::from_bytes_be(strip(n)),
        BigUint::from_bytes_be(strip(e)),
    )
    .map_err(|_| Error::AttributeValueInvalid)?;
    let der = key
        .to_public_key_der()
        .map_err(|_| Error::AttributeValueInvalid)?;
    Ok(der.into_vec())
}

// ---- the hash tables of both libraries ------------------------------------------------------

fn rc_digest(h: Hash) -> Option<Box<dyn DynDigest + Send + Sync>> {
    Some(match h {
        Hash::Sha1 => Box::new(sha1::Sha1::default()),
        Hash::Sha224 => Box::new(sha2::Sha224::default()),
        Hash::Sha256 => Box::new(sha2::Sha256::default()),
        Hash::Sha384 => Box::new(sha2::Sha384::default()),
        Hash::Sha512 => Box::new(sha2::Sha512::default()),
        Hash::Sha3_256 | Hash::Sha3_384 | Hash::Sha3_512 => return None,
    })
}

fn rc_pkcs1(h: Hash) -> Option<Pkcs1v15Sign> {
    Some(match h {
        Hash::Sha1 => Pkcs1v15Sign::new::<sha1::Sha1>(),
        Hash::Sha224 => Pkcs1v15Sign::new::<sha2::Sha224>(),
        Hash::Sha256 => Pkcs1v15Sign::new::<sha2::Sha256>(),
        Hash::Sha384 => Pkcs1v15Sign::new::<sha2::Sha384>(),
        Hash::Sha512 => Pkcs1v15Sign::new::<sha2::Sha512>(),
        Hash::Sha3_256 | Hash::Sha3_384 | Hash::Sha3_512 => return None,
    })
}

fn rc_pss(spec: &PssSpec) -> Result<Pss> {
    if spec.mgf != spec.hash {
        return Err(Error::MechanismParamInvalid);
    }
    Ok(Pss {
        blinded: false,
        digest: rc_digest(spec.hash).ok_or(Error::MechanismParamInvalid)?,
        salt_len: spec.salt_len,
    })
}

fn rc_oaep(spec: &OaepSpec) -> Result<Oaep> {
    // RustCrypto 0.9 takes the label as a `String`.
    let label = match spec.label.as_slice() {
        [] => None,
        l => Some(String::from_utf8(l.to_vec()).map_err(|_| Error::MechanismParamInvalid)?),
    };
    Ok(Oaep {
        digest: rc_digest(spec.hash).ok_or(Error::MechanismParamInvalid)?,
        mgf_digest: rc_digest(spec.mgf).ok_or(Error::MechanismParamInvalid)?,
        label,
    })
}

fn lc_digest_alg(h: Hash) -> &'static lc_digest::Algorithm {
    h.algorithm()
}

fn lc_pkcs1_signing(h: Hash) -> Option<&'static dyn lc_sig::RsaEncoding> {
    Some(match h {
        Hash::Sha256 => &lc_sig::RSA_PKCS1_SHA256,
        Hash::Sha384 => &lc_sig::RSA_PKCS1_SHA384,
        Hash::Sha512 => &lc_sig::RSA_PKCS1_SHA512,
        _ => return None,
    })
}

fn lc_pss_signing(spec: &PssSpec) -> Option<&'static dyn lc_sig::RsaEncoding> {
    if spec.mgf != spec.hash || spec.salt_len != spec.hash.len() {
        return None;
    }
    Some(match spec.hash {
        Hash::Sha256 => &lc_sig::RSA_PSS_SHA256,
        Hash::Sha384 => &lc_sig::RSA_PSS_SHA384,
        Hash::Sha512 => &lc_sig::RSA_PSS_SHA512,
        _ => return None,
    })
}

fn lc_pkcs1_verifying(h: Hash) -> Option<&'static lc_sig::RsaParameters> {
    Some(match h {
        Hash::Sha1 => &lc_sig::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
        Hash::Sha256 => &lc_sig::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
        Hash::Sha384 => &lc_sig::RSA_PKCS1_2048_8192_SHA384,
        Hash::Sha512 => &lc_sig::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY,
        _ => return None,
    })
}

fn lc_pss_verifying(spec: &PssSpec) -> Option<&'static lc_sig::RsaParameters> {
    if spec.mgf != spec.hash || spec.salt_len != spec.hash.len() {
        return None;
    }
    Some(match spec.hash {
        Hash::Sha256 => &lc_sig::RSA_PSS_2048_8192_SHA256,
        Hash::Sha384 => &lc_sig::RSA_PSS_2048_8192_SHA384,
        Hash::Sha512 => &lc_sig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

fn lc_oaep(spec: &OaepSpec) -> Option<&'static lc::OaepAlgorithm> {
    Some(match (spec.hash, spec.mgf) {
        (Hash::Sha1, Hash::Sha1) => &lc::OAEP_SHA1_MGF1SHA1,
        (Hash::Sha256, Hash::Sha256) => &lc::OAEP_SHA256_MGF1SHA256,
        (Hash::Sha384, Hash::Sha384) => &lc::OAEP_SHA384_MGF1SHA384,
        (Hash::Sha512, Hash::Sha512) => &lc::OAEP_SHA512_MGF1SHA512,
        _ => return None,
    })
}

/// Whether these OAEP parameters work with a key of `bits` bits: the RustCrypto route (keys
/// under 2048 bits, SHA-224, differing hashes) needs a UTF-8 label.
pub(crate) fn oaep_supported(spec: &OaepSpec, bits: usize) -> bool {
    if bits >= AWS_MIN_BITS && lc_oaep(spec).is_some() {
        return true;
    }
    rc_oaep(spec).is_ok()
}

/// Whether these PSS parameters can be used (one hash for the message and MGF1).
pub(crate) fn pss_supported(spec: &PssSpec) -> bool {
    rc_pss(spec).is_ok()
}

/// `v` left-padded with zeros to `k` bytes.
fn left_pad(v: &[u8], k: usize) -> Result<Zeroizing<Vec<u8>>> {
    let pad = k
        .checked_sub(v.len())
        .ok_or(Error::Internal("rsa output length"))?;
    let mut out = Zeroizing::new(vec![0u8; k]);
    out.get_mut(pad..)
        .ok_or(Error::Internal("rsa output length"))?
        .copy_from_slice(v);
    Ok(out)
}

// ---- public keys ----------------------------------------------------------------------------

/// A parsed RSA public key.
pub(crate) struct PublicKey {
    n: Vec<u8>,
    bits: usize,
    info: Vec<u8>,
    rc: rsa::RsaPublicKey,
    aws: Option<AwsPublic>,
}

/// The aws-lc-rs forms of a public key.
struct AwsPublic {
    pkcs1: lc::Pkcs1PublicEncryptingKey,
    oaep: lc::OaepPublicEncryptingKey,
}

impl PublicKey {
    /// Parses `(n, e)`: `CKR_ATTRIBUTE_VALUE_INVALID` unless it is a key of a supported size.
    pub(crate) fn new(n: &[u8], e: &[u8]) -> Result<Self> {
        let (n, e) = (strip(n), strip(e));
        let bits = bit_len(n);
        if !(MIN_BITS..=MAX_BITS).contains(&bits) || exponent_value(e).is_none() {
            return Err(Error::AttributeValueInvalid);
        }
        let rc = rsa::RsaPublicKey::new(BigUint::from_bytes_be(n), BigUint::from_bytes_be(e))
            .map_err(|_| Error::AttributeValueInvalid)?;
        let info = rc
            .to_public_key_der()
            .map_err(|_| Error::AttributeValueInvalid)?
            .into_vec();
        let aws = if bits >= AWS_MIN_BITS {
            let key = lc::PublicEncryptingKey::from_der(&info)
                .map_err(|_| Error::AttributeValueInvalid)?;
            Some(AwsPublic {
                pkcs1: lc::Pkcs1PublicEncryptingKey::new(key.clone())
                    .map_err(|_| Error::AttributeValueInvalid)?,
                oaep: lc::OaepPublicEncryptingKey::new(key)
                    .map_err(|_| Error::AttributeValueInvalid)?,
            })
        } else {
            None
        };
        Ok(Self {
            n: n.to_vec(),
            bits,
            info,
            rc,
            aws,
        })
    }

    /// Modulus length in bytes (`k`).
    pub(crate) fn len(&self) -> usize {
        self.n.len()
    }

    /// Modulus length in bits.
    pub(crate) fn bits(&self) -> usize {
        self.bits
    }

    /// The DER `SubjectPublicKeyInfo`.
    pub(crate) fn info(&self) -> &[u8] {
        &self.info
    }

    /// Whether `x` (at most `k` bytes, big-endian) is below the modulus.
    pub(crate) fn below_modulus(&self, x: &[u8]) -> bool {
        let x = strip(x);
        x.len() < self.n.len() || (x.len() == self.n.len() && x < self.n.as_slice())
    }

    /// Verifies a PKCS#1 v1.5 signature over a message whose `hash` is `digest`.
    pub(crate) fn verify_pkcs1_digest(&self, hash: Hash, digest: &[u8], sig: &[u8]) -> Result<()> {
        if let Some(params) = lc_pkcs1_verifying(hash).filter(|p| self.lc_fits(p)) {
            return self.lc_verify(params, hash, digest, sig);
        }
        let scheme = rc_pkcs1(hash).ok_or(Error::MechanismParamInvalid)?;
        self.rc
            .verify(scheme, digest, sig)
            .map_err(|_| Error::SignatureInvalid)
    }

    /// Verifies a PKCS#1 v1.5 signature whose encoded content is `data` (`CKM_RSA_PKCS`).
    pub(crate) fn verify_pkcs1_raw(&self, data: &[u8], sig: &[u8]) -> Result<()> {
        self.rc
            .verify(Pkcs1v15Sign::new_unprefixed(), data, sig)
            .map_err(|_| Error::SignatureInvalid)
    }

    /// Verifies a PSS signature over a message whose hash is `digest`.
    pub(crate) fn verify_pss(&self, spec: &PssSpec, digest: &[u8], sig: &[u8]) -> Result<()> {
        if let Some(params) = lc_pss_verifying(spec).filter(|p| self.lc_fits(p)) {
            return self.lc_verify(params, spec.hash, digest, sig);
        }
        self.rc
            .verify(rc_pss(spec)?, digest, sig)
            .map_err(|_| Error::SignatureInvalid)
    }

    fn lc_fits(&self, params: &lc_sig::RsaParameters) -> bool {
        u32::try_from(self.bits).is_ok_and(|b| b >= params.min_modulus_len())
    }

    fn lc_verify(
        &self,
        params: &'static lc_sig::RsaParameters,
        hash: Hash,
        digest: &[u8],
        sig: &[u8],
    ) -> Result<()> {
        let digest = lc_digest::Digest::import_less_safe(digest, lc_digest_alg(hash))
            .map_err(|_| Error::SignatureInvalid)?;
        lc_sig::UnparsedPublicKey::new(params, &self.info)
            .verify_digest(&digest, sig)
            .map_err(|_| Error::SignatureInvalid)
    }

    /// PKCS#1 v1.5 encryption (block type 2).
    pub(crate) fn encrypt_pkcs1(&self, plaintext: &[u8]) -> Result<Vec<u8>> {
        if let Some(aws) = &self.aws {
            let mut out = vec![0u8; aws.pkcs1.ciphertext_size()];
            let n = aws
                .pkcs1
                .encrypt(plaintext, &mut out)
                .map_err(|_| Error::FunctionFailed)?
                .len();
            out.truncate(n);
            return Ok(out);
        }
        self.rc
            .encrypt(&mut OsRng, Pkcs1v15Encrypt, plaintext)
            .map_err(|_| Error::FunctionFailed)
    }

    /// OAEP encryption.
    pub(crate) fn encrypt_oaep(&self, spec: &OaepSpec, plaintext: &[u8]) -> Result<Vec<u8>> {
        if let (Some(aws), Some(alg)) = (&self.aws, lc_oaep(spec)) {
            let mut out = vec![0u8; aws.oaep.ciphertext_size()];
            let n = aws
                .oaep
                .encrypt(alg, plaintext, &mut out, Some(&spec.label))
                .map_err(|_| Error::FunctionFailed)?
                .len();
            out.truncate(n);
            return Ok(out);
        }
        self.rc
            .encrypt(&mut OsRng, rc_oaep(spec)?, plaintext)
            .map_err(|_| Error::FunctionFailed)
    }

    /// Raw RSA, `x^e mod n`, as `k` bytes; `x` must be below the modulus.
    pub(crate) fn raw(&self, x: &[u8]) -> Result<Vec<u8>> {
        let y = rsa::hazmat::rsa_encrypt(&self.rc, &BigUint::from_bytes_be(x))
            .map_err(|_| Error::FunctionFailed)?;
        Ok(left_pad(&y.to_bytes_be(), self.len())?.to_vec())
    }
}

// ---- private keys ---------------------------------------------------------------------------

/// A parsed RSA private key: the aws-lc-rs forms when the key size allows them, the RustCrypto
/// form built on first need.
pub(crate) struct PrivateKey {
    public: PublicKey,
    components: Components,
    aws: Option<AwsPrivate>,
    rc: OnceLock<rsa::RsaPrivateKey>,
}

/// The aws-lc-rs forms of a private key.
struct AwsPrivate {
    sign: lc::KeyPair,
    pkcs1: lc::Pkcs1PrivateDecryptingKey,
    oaep: lc::OaepPrivateDecryptingKey,
}

impl PrivateKey {
    /// Parses complete components (see `Components::complete`).
    pub(crate) fn new(components: Components) -> Result<Self> {
        let public = PublicKey::new(&components.n, &components.e)?;
        let aws = if public.bits >= AWS_MIN_BITS {
            let der = components.to_pkcs8()?;
            const REJECTED: Error = Error::Internal("aws-lc rejected an rsa key");
            let sign = lc::KeyPair::from_pkcs8(der.expose()).map_err(|_| REJECTED)?;
            let decrypt =
                lc::PrivateDecryptingKey::from_pkcs8(der.expose()).map_err(|_| REJECTED)?;
            Some(AwsPrivate {
                sign,
                pkcs1: lc::Pkcs1PrivateDecryptingKey::new(decrypt.clone()).map_err(|_| REJECTED)?,
                oaep: lc::OaepPrivateDecryptingKey::new(decrypt).map_err(|_| REJECTED)?,
            })
        } else {
            None
        };
        Ok(Self {
            public,
            components,
            aws,
            rc: OnceLock::new(),
        })
    }

    /// The public half.
    pub(crate) fn public(&self) -> &PublicKey {
        &self.public
    }

    fn rc(&self) -> Result<&rsa::RsaPrivateKey> {
        if let Some(k) = self.rc.get() {
            return Ok(k);
        }
        let key = self.components.rc_key()?;
        Ok(self.rc.get_or_init(|| key))
    }

    fn lc_sign(
        &self,
        encoding: &'static dyn lc_sig::RsaEncoding,
        hash: Hash,
        digest: &[u8],
    ) -> Option<Result<Vec<u8>>> {
        let pair = &self.aws.as_ref()?.sign;
        let sign = || {
            let digest = lc_digest::Digest::import_less_safe(digest, lc_digest_alg(hash))
                .map_err(|_| Error::DataLenRange)?;
            let mut sig = vec![0u8; pair.public_modulus_len()];
            pair.sign_digest(encoding, &digest, &mut sig)
                .map_err(|_| Error::FunctionFailed)?;
            Ok(sig)
        };
        Some(sign())
    }

    /// A PKCS#1 v1.5 signature over a message whose `hash` is `digest`.
    pub(crate) fn sign_pkcs1_digest(&self, hash: Hash, digest: &[u8]) -> Result<Vec<u8>> {
        if let Some(r) = lc_pkcs1_signing(hash).and_then(|enc| self.lc_sign(enc, hash, digest)) {
            return r;
        }
        let scheme = rc_pkcs1(hash).ok_or(Error::MechanismParamInvalid)?;
        self.rc()?
            .sign_with_rng(&mut OsRng, scheme, digest)
            .map_err(|_| Error::FunctionFailed)
    }

    /// A PKCS#1 v1.5 signature (block type 1) of `data` itself, a DigestInfo or other data of
    /// at most `k - 11` bytes (`CKM_RSA_PKCS`).
    pub(crate) fn sign_pkcs1_raw(&self, data: &[u8]) -> Result<Vec<u8>> {
        // A DigestInfo of a hash aws-lc-rs signs with goes to aws-lc-rs (the same bytes result).
        for hash in [Hash::Sha256, Hash::Sha384, Hash::Sha512] {
            let Some(prefix) = rc_pkcs1(hash).map(|s| s.prefix) else {
                continue;
            };
            if let Some(digest) = data
                .strip_prefix(&*prefix)
                .filter(|d| d.len() == hash.len())
            {
                if let Some(r) =
                    lc_pkcs1_signing(hash).and_then(|enc| self.lc_sign(enc, hash, digest))
                {
                    return r;
                }
            }
        }
        self.rc()?
            .sign_with_rng(&mut OsRng, Pkcs1v15Sign::new_unprefixed(), data)
            .map_err(|_| Error::FunctionFailed)
    }

    /// A PSS signature over a message whose hash is `digest`.
    pub(crate) fn sign_pss(&self, spec: &PssSpec, digest: &[u8]) -> Result<Vec<u8>> {
        if let Some(r) = lc_pss_signing(spec).and_then(|enc| self.lc_sign(enc, spec.hash, digest)) {
            return r;
        }
        self.rc()?
            .sign_with_rng(&mut OsRng, rc_pss(spec)?, digest)
            .map_err(|_| Error::FunctionFailed)
    }

    /// PKCS#1 v1.5 decryption. Every failure is `CKR_ENCRYPTED_DATA_INVALID`.
    pub(crate) fn decrypt_pkcs1(&self, ciphertext: &[u8]) -> Result<Secret> {
        let plain = match &self.aws {
            Some(aws) => {
                let mut out = Zeroizing::new(vec![0u8; aws.pkcs1.min_output_size()]);
                aws.pkcs1
                    .decrypt(ciphertext, &mut out)
                    .map(|plain| plain.len())
                    .map(|n| {
                        out.truncate(n);
                        out
                    })
                    .map_err(|_| ())
            }
            None => self.rc().map_err(|_| ()).and_then(|key| {
                key.decrypt_blinded(&mut OsRng, Pkcs1v15Encrypt, ciphertext)
                    .map(Zeroizing::new)
                    .map_err(|_| ())
            }),
        };
        plain
            .map(|p| Secret::copy_from(&p))
            .map_err(|()| Error::EncryptedDataInvalid)
    }

    /// OAEP decryption. Every failure is `CKR_ENCRYPTED_DATA_INVALID`.
    pub(crate) fn decrypt_oaep(&self, spec: &OaepSpec, ciphertext: &[u8]) -> Result<Secret> {
        let plain = match (&self.aws, lc_oaep(spec)) {
            (Some(aws), Some(alg)) => {
                let mut out = Zeroizing::new(vec![0u8; aws.oaep.min_output_size()]);
                aws.oaep
                    .decrypt(alg, ciphertext, &mut out, Some(&spec.label))
                    .map(|plain| plain.len())
                    .map(|n| {
                        out.truncate(n);
                        out
                    })
                    .map_err(|_| ())
            }
            _ => {
                let scheme = rc_oaep(spec)?;
                self.rc().map_err(|_| ()).and_then(|key| {
                    key.decrypt_blinded(&mut OsRng, scheme, ciphertext)
                        .map(Zeroizing::new)
                        .map_err(|_| ())
                })
            }
        };
        plain
            .map(|p| Secret::copy_from(&p))
            .map_err(|()| Error::EncryptedDataInvalid)
    }

    /// Raw RSA, `x^d mod n` (blinded, and checked against `x`), as `k` bytes; `x` must be below
    /// the modulus.
    pub(crate) fn raw(&self, x: &[u8]) -> Result<Secret> {
        let key = self.rc()?;
        let y =
            rsa::hazmat::rsa_decrypt_and_check(key, Some(&mut OsRng), &BigUint::from_bytes_be(x))
                .map_err(|_| Error::FunctionFailed)?;
        let bytes = Zeroizing::new(y.to_bytes_be());
        Ok(Secret::copy_from(&left_pad(&bytes, self.public.len())?))
    }
}

// ---- AES key wrap with padding (RFC 5649) ---------------------------------------------------

/// Wraps `data` under the AES key `kek` (16, 24 or 32 bytes) with AES key wrap with padding.
pub(crate) fn aes_kwp_wrap(kek: &Secret, data: &[u8]) -> Result<Vec<u8>> {
    if data.is_empty() {
        return Err(Error::DataLenRange);
    }
    let mut out = vec![0u8; data.len().div_ceil(8) * 8 + 8];
    let n = match kek.len() {
        16 | 32 => {
            let cipher = if kek.len() == 16 {
                &key_wrap::AES_128
            } else {
                &key_wrap::AES_256
            };
            let kek =
                key_wrap::AesKek::new(cipher, kek.expose()).map_err(|_| Error::FunctionFailed)?;
            kek.wrap_with_padding(data, &mut out)
                .map_err(|_| Error::FunctionFailed)?
                .len()
        }
        24 => {
            let kek =
                aes_kw::KekAes192::try_from(kek.expose()).map_err(|_| Error::FunctionFailed)?;
            kek.wrap_with_padding(data, &mut out)
                .map_err(|_| Error::FunctionFailed)?;
            out.len()
        }
        _ => return Err(Error::MechanismParamInvalid),
    };
    out.truncate(n);
    Ok(out)
}

/// Unwraps what `aes_kwp_wrap` made; `None` if the key or the bytes are wrong.
pub(crate) fn aes_kwp_unwrap(kek: &[u8], wrapped: &[u8]) -> Option<Secret> {
    let mut out = Zeroizing::new(vec![0u8; wrapped.len()]);
    let n = match kek.len() {
        16 | 32 => {
            let cipher = if kek.len() == 16 {
                &key_wrap::AES_128
            } else {
                &key_wrap::AES_256
            };
            let kek = key_wrap::AesKek::new(cipher, kek).ok()?;
            kek.unwrap_with_padding(wrapped, &mut out).ok()?.len()
        }
        24 => {
            let kek = aes_kw::KekAes192::try_from(kek).ok()?;
            let exact = out.get_mut(..wrapped.len().checked_sub(8)?)?;
            kek.unwrap_with_padding(wrapped, exact).ok()?.len()
        }
        _ => return None,
    };
    out.truncate(n);
    Some(Secret::copy_from(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_lengths_and_exponents() {
        assert_eq!(bit_len(&[0, 0, 1, 0]), 9);
        assert_eq!(bit_len(&[0x80]), 8);
        assert_eq!(bit_len(&[]), 0);
        assert_eq!(exponent_value(&[1, 0, 1]), Some(65537));
        assert_eq!(exponent_value(&[0, 0, 3]), Some(3));
        assert_eq!(exponent_value(&[1, 0, 0]), None);
        assert_eq!(exponent_value(&[1]), None);
        assert_eq!(exponent_value(&[2, 0, 0, 0, 1]), None);
        assert_eq!(
            exponent_value(&[1, 0xff, 0xff, 0xff, 0xff]),
            Some(MAX_EXPONENT)
        );
        assert_eq!(pss_em_len(2048), 256);
        assert_eq!(pss_em_len(2049), 256);
        assert_eq!(pss_em_len(2050), 257);
    }

    /// The two implementations agree where both can do the work, so the choice between them
    /// (by key size and parameters) never changes a result.
    #[test]
    fn aws_lc_and_rustcrypto_agree() {
        let key = PrivateKey::new(generate(2048, &[1, 0, 1]).unwrap()).unwrap();
        assert!(key.aws.is_some() && key.public.aws.is_some());
        let rc = key.rc().unwrap();
        let rc_public = rc.to_public_key();
        let digest = Hash::Sha256.digest(b"agree");

        // PKCS#1 v1.5 signatures are deterministic: the same bytes from both.
        let ours = key.sign_pkcs1_digest(Hash::Sha256, &digest).unwrap();
        let theirs = rc.sign(rc_pkcs1(Hash::Sha256).unwrap(), &digest).unwrap();
        assert_eq!(ours, theirs);
        let mut info = rc_pkcs1(Hash::Sha256).unwrap().prefix.to_vec();
        info.extend_from_slice(&digest);
        assert_eq!(key.sign_pkcs1_raw(&info).unwrap(), theirs);
        key.public.verify_pkcs1_raw(&info, &ours).unwrap();

        // PSS (salt = hash length): aws-lc-rs signs, RustCrypto verifies, and back.
        let spec = PssSpec {
            hash: Hash::Sha256,
            mgf: Hash::Sha256,
            salt_len: 32,
        };
        let sig = key.sign_pss(&spec, &digest).unwrap();
        rc_public
            .verify(rc_pss(&spec).unwrap(), &digest, &sig)
            .unwrap();
        let sig = rc
            .sign_with_rng(&mut OsRng, rc_pss(&spec).unwrap(), &digest)
            .unwrap();
        key.public.verify_pss(&spec, &digest, &sig).unwrap();

        // OAEP and PKCS#1 v1.5 encryption, each way.
        let spec = OaepSpec {
            hash: Hash::Sha384,
            mgf: Hash::Sha384,
            label: b"label".to_vec(),
        };
        let ct = key.public.encrypt_oaep(&spec, b"secret").unwrap();
        let plain = rc.decrypt(rc_oaep(&spec).unwrap(), &ct).unwrap();
        assert_eq!(plain, b"secret");
        let ct = rc_public
            .encrypt(&mut OsRng, rc_oaep(&spec).unwrap(), b"secret")
            .unwrap();
        assert_eq!(key.decrypt_oaep(&spec, &ct).unwrap().expose(), b"secret");
        let ct = key.public.encrypt_pkcs1(b"secret").unwrap();
        assert_eq!(rc.decrypt(Pkcs1v15Encrypt, &ct).unwrap(), b"secret");

        // Raw RSA round trip, and the PKCS#8 form parses in both libraries.
        let x = [0x42u8; 200];
        let y = key.public.raw(&x).unwrap();
        assert_eq!(strip(key.raw(&y).unwrap().expose()), &x[..]);
        let der = key.components.to_pkcs8().unwrap();
        assert_eq!(
            &rsa::RsaPrivateKey::from_pkcs8_der(der.expose()).unwrap(),
            rc
        );
        lc::KeyPair::from_pkcs8(der.expose()).unwrap();
    }

    #[test]
    fn small_keys_use_rustcrypto_only() {
        let key = PrivateKey::new(generate(1024, &[1, 0, 1]).unwrap()).unwrap();
        assert!(key.aws.is_none() && key.public.aws.is_none());
        let digest = Hash::Sha512.digest(b"small");
        let sig = key.sign_pkcs1_digest(Hash::Sha512, &digest).unwrap();
        // aws-lc-rs verifies 1024-bit PKCS#1 v1.5 signatures (its legacy parameters).
        key.public
            .verify_pkcs1_digest(Hash::Sha512, &digest, &sig)
            .unwrap();
        assert_eq!(
            key.public
                .verify_pkcs1_digest(Hash::Sha256, &digest[..32], &sig),
            Err(Error::SignatureInvalid)
        );
    }

    #[test]
    fn kwp_round_trips_for_every_key_size() {
        for len in [16, 24, 32] {
            let kek = Secret::random(len).unwrap();
            for data in [&b"k"[..], &[7u8; 16], &[9u8; 45]] {
                let w = aes_kwp_wrap(&kek, data).unwrap();
                assert_eq!(w.len(), data.len().div_ceil(8) * 8 + 8);
                assert_eq!(aes_kwp_unwrap(kek.expose(), &w).unwrap().expose(), data);
                let mut bad = w.clone();
                bad[3] ^= 1;
                assert!(aes_kwp_unwrap(kek.expose(), &bad).is_none());
            }
        }
    }
}
