//! Elliptic curves over prime fields (P-256, P-384, P-521): `CKM_EC_KEY_PAIR_GEN`, `CKM_ECDSA`
//! and `CKM_ECDSA_SHA1/224/256/384/512`, `CKM_ECDH1_DERIVE` and `CKM_ECDH1_COFACTOR_DERIVE`,
//! and the import and wrap forms of `CKK_EC` keys. Also the `CKA_EC_PARAMS` and
//! `CKA_EC_POINT` codecs the Edwards family shares.
//!
//! Behaviour, where the specification leaves a choice (elliptic_curves.md):
//! - `CKA_EC_PARAMS` is accepted as a DER OBJECT IDENTIFIER (the `oId` choice) or a DER
//!   PrintableString curve name (the `curveName` choice: `prime256v1`, `secp256r1`, `P-256`,
//!   `nistp256`, ... any ASCII case). Generated keys carry the OID form, whatever the template
//!   said; imported keys keep what the application gave. A well-formed OID or name of another
//!   curve is `CKR_CURVE_NOT_SUPPORTED`; malformed DER, explicit `ecParameters` and
//!   `implicitlyCA` are `CKR_DOMAIN_PARAMS_INVALID`.
//! - `CKA_EC_POINT` is the DER OCTET STRING of the uncompressed point `04 ‖ X ‖ Y`, as
//!   SoftHSM stores it and pkcs11-tool expects. On import the raw point is accepted as well;
//!   a point that is not on the curve is `CKR_PUBLIC_KEY_INVALID` (3.2: "fails a public key
//!   validation"), any other malformed value `CKR_ATTRIBUTE_VALUE_INVALID`.
//! - An imported `CKA_VALUE` may be shorter than the field (pkcs11-tool sends the minimal
//!   big-endian encoding); it must be in [1, n-1].
//! - ECDSA signatures are `r ‖ s`, each the field length. `CKM_ECDSA` takes any input length and
//!   uses its leftmost bits up to the order's length (X9.62). Verification also takes the
//!   shorter even-length signatures §6.3.1 allows; an odd, empty or longer signature is
//!   `CKR_SIGNATURE_LEN_RANGE`.
//! - `CKM_ECDH1_DERIVE`: `pPublicData` is the raw uncompressed point or its DER OCTET STRING.
//!   With `CKD_NULL` the value is the x-coordinate, truncated to `CKA_VALUE_LEN` by removing
//!   bytes from the leading end (the specification's words; SoftHSM does the same). Without
//!   `CKA_VALUE_LEN` a generic secret gets the whole x-coordinate and an AES key is
//!   `CKR_TEMPLATE_INCOMPLETE`. The `CKD_SHA*_KDF` functions are the ANSI X9.63 KDF and need
//!   `CKA_VALUE_LEN`. A length the mechanism cannot produce is `CKR_ATTRIBUTE_VALUE_INVALID`.
//!   The cofactor variant is the same computation: every supported curve has cofactor 1.

use std::sync::Arc;

use bridge::{Attribute, Error, MechanismInfo, MechanismParams, Result, Template};
use cryptoki_sys::*;
use der::asn1::{AnyRef, ObjectIdentifier, OctetStringRef, PrintableStringRef};
use der::{Decode, Encode, Tag, Tagged};
use zeroize::Zeroizing;

use super::{
    DeriveCtx, Generated, Key, Mechanism, Output, SIGN_VERIFY, SignOp, VerifyOp, no_params,
};
use crate::crypto::ec::{Curve, EcPrivateKey, EcPublicKey};
use crate::crypto::{Hash, Hasher, Secret};
use crate::object::{Object, SecretAttrs};

/// The capability flags of every prime-curve mechanism: curves over Fp, named by OID or by
/// name, points uncompressed. (`CKF_EC_OID` is the 3.0 name of `CKF_EC_NAMEDCURVE`.)
const EC_FLAGS: CK_FLAGS = CKF_EC_F_P | CKF_EC_OID | CKF_EC_CURVENAME | CKF_EC_UNCOMPRESS;

/// Field sizes in bits, as `C_GetMechanismInfo` reports them.
const MIN_BITS: CK_ULONG = 256;
const MAX_BITS: CK_ULONG = 521;

/// The most a KDF is asked to produce (a device limit; X9.63 itself allows far more).
const MAX_DERIVED_LEN: usize = 8192;

fn info(flags: CK_FLAGS) -> MechanismInfo {
    MechanismInfo {
        min_key_size: MIN_BITS,
        max_key_size: MAX_BITS,
        flags: CKF_HW | flags | EC_FLAGS,
    }
}

// ---- CKA_EC_PARAMS and CKA_EC_POINT ------------------------------------------------------

/// A curve that `CKA_EC_PARAMS` can name here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NamedCurve {
    /// A short Weierstrass curve (`CKK_EC`).
    Weierstrass(Curve),
    /// Ed25519 (`CKK_EC_EDWARDS`).
    Ed25519,
}

/// The OIDs of the curves (SEC 2, RFC 8410).
const P256_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const P521_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");
const ED25519_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// The names `CKA_EC_PARAMS` may give instead of an OID (any ASCII case).
const NAMES: &[(&str, NamedCurve)] = &[
    ("prime256v1", NamedCurve::Weierstrass(Curve::P256)),
    ("secp256r1", NamedCurve::Weierstrass(Curve::P256)),
    ("P-256", NamedCurve::Weierstrass(Curve::P256)),
    ("nistp256", NamedCurve::Weierstrass(Curve::P256)),
    ("secp384r1", NamedCurve::Weierstrass(Curve::P384)),
    ("prime384v1", NamedCurve::Weierstrass(Curve::P384)),
    ("P-384", NamedCurve::Weierstrass(Curve::P384)),
    ("nistp384", NamedCurve::Weierstrass(Curve::P384)),
    ("secp521r1", NamedCurve::Weierstrass(Curve::P521)),
    ("prime521v1", NamedCurve::Weierstrass(Curve::P521)),
    ("P-521", NamedCurve::Weierstrass(Curve::P521)),
    ("nistp521", NamedCurve::Weierstrass(Curve::P521)),
    ("edwards25519", NamedCurve::Ed25519),
    ("Ed25519", NamedCurve::Ed25519),
];

/// A DER encoding of ours failed (it cannot for the values used here).
fn encoding(_: der::Error) -> Error {
    Error::Internal("der encoding")
}

impl NamedCurve {
    const ALL: [Self; 4] = [
        Self::Weierstrass(Curve::P256),
        Self::Weierstrass(Curve::P384),
        Self::Weierstrass(Curve::P521),
        Self::Ed25519,
    ];

    /// The curve's OBJECT IDENTIFIER.
    pub(crate) fn oid(self) -> ObjectIdentifier {
        match self {
            Self::Weierstrass(Curve::P256) => P256_OID,
            Self::Weierstrass(Curve::P384) => P384_OID,
            Self::Weierstrass(Curve::P521) => P521_OID,
            Self::Ed25519 => ED25519_OID,
        }
    }

    /// The canonical `CKA_EC_PARAMS`: the DER OBJECT IDENTIFIER.
    pub(crate) fn oid_der(self) -> Result<Vec<u8>> {
        self.oid().to_der().map_err(encoding)
    }
}

/// A DER OCTET STRING (the `CKA_EC_POINT` encoding).
pub(crate) fn der_octet_string(content: &[u8]) -> Result<Vec<u8>> {
    OctetStringRef::new(content)
        .and_then(|o| o.to_der())
        .map_err(encoding)
}

/// The content of `der` if it is exactly one DER OCTET STRING (minimal length, nothing after).
pub(crate) fn octet_string_content(der: &[u8]) -> Option<&[u8]> {
    OctetStringRef::from_der(der).ok().map(<&[u8]>::from)
}

/// Parses `CKA_EC_PARAMS`: exactly one DER element, an OBJECT IDENTIFIER or a PrintableString.
pub(crate) fn parse_ec_params(der: &[u8]) -> Result<NamedCurve> {
    let any = AnyRef::from_der(der).map_err(|_| Error::DomainParamsInvalid)?;
    match any.tag() {
        Tag::ObjectIdentifier => {
            let oid: ObjectIdentifier = any.decode_as().map_err(|_| Error::DomainParamsInvalid)?;
            NamedCurve::ALL
                .into_iter()
                .find(|c| c.oid() == oid)
                .ok_or(Error::CurveNotSupported)
        }
        Tag::PrintableString => {
            let name: PrintableStringRef<'_> =
                any.decode_as().map_err(|_| Error::DomainParamsInvalid)?;
            NAMES
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name.as_str()))
                .map(|(_, c)| *c)
                .ok_or(Error::CurveNotSupported)
        }
        // `ecParameters` (a SEQUENCE), `implicitlyCA` (NULL) and anything else: a
        // representation this token does not support.
        _ => Err(Error::DomainParamsInvalid),
    }
}

/// The short Weierstrass curve `CKA_EC_PARAMS` names.
fn weierstrass(params: &[u8]) -> Result<Curve> {
    match parse_ec_params(params)? {
        NamedCurve::Weierstrass(c) => Ok(c),
        NamedCurve::Ed25519 => Err(Error::CurveNotSupported),
    }
}

/// The uncompressed point in `bytes`: its DER OCTET STRING, or the raw octets. The two are
/// told apart by length (the raw form is exactly `point_len` bytes).
pub(crate) fn uncompressed_point(curve: Curve, bytes: &[u8]) -> Option<&[u8]> {
    let point = if bytes.len() == curve.point_len() {
        bytes
    } else {
        octet_string_content(bytes)?
    };
    (point.len() == curve.point_len() && point.first() == Some(&4)).then_some(point)
}

/// `value` as exactly `len` big-endian bytes: a shorter value is left-padded, a longer one may
/// only carry leading zeros.
fn fixed_be(value: &[u8], len: usize) -> Option<Secret> {
    let mut out = Zeroizing::new(vec![0u8; len]);
    if value.len() <= len {
        out.get_mut(len - value.len()..)?.copy_from_slice(value);
    } else {
        let (extra, tail) = value.split_at(value.len() - len);
        if extra.iter().any(|b| *b != 0) {
            return None;
        }
        out.copy_from_slice(tail);
    }
    Some(Secret::copy_from(&out))
}

// ---- keys ----------------------------------------------------------------------------------

/// The parsed private key of a `CKK_EC` private key object (cached on the object).
fn private_key(key: &Key<'_>) -> Result<Arc<EcPrivateKey>> {
    if key.obj.class() != CKO_PRIVATE_KEY || key.obj.key_type() != Some(CKK_EC) {
        return Err(Error::KeyTypeInconsistent);
    }
    key.obj.material.parsed(|| {
        private_from_parts(
            key.obj.bytes(CKA_EC_PARAMS),
            key.secrets.get(CKA_VALUE).map(Secret::expose),
        )
        .map_err(|_| Error::Internal("ec private key object"))
    })
}

/// A private key from `CKA_EC_PARAMS` and `CKA_VALUE`.
fn private_from_parts(params: Option<&[u8]>, value: Option<&[u8]>) -> Result<EcPrivateKey> {
    let curve = weierstrass(params.ok_or(Error::TemplateIncomplete)?)?;
    let value = value.ok_or(Error::TemplateIncomplete)?;
    let scalar = fixed_be(value, curve.field_len()).ok_or(Error::AttributeValueInvalid)?;
    EcPrivateKey::from_scalar(curve, scalar.expose()).ok_or(Error::AttributeValueInvalid)
}

/// The parsed public key of a `CKK_EC` public key object (cached on the object).
fn public_key(obj: &Object) -> Result<Arc<EcPublicKey>> {
    if obj.class() != CKO_PUBLIC_KEY || obj.key_type() != Some(CKK_EC) {
        return Err(Error::KeyTypeInconsistent);
    }
    obj.material.parsed(|| {
        public_from_parts(obj.bytes(CKA_EC_PARAMS), obj.bytes(CKA_EC_POINT))
            .map_err(|_| Error::Internal("ec public key object"))
    })
}

/// A public key from `CKA_EC_PARAMS` and `CKA_EC_POINT`.
fn public_from_parts(params: Option<&[u8]>, point: Option<&[u8]>) -> Result<EcPublicKey> {
    let curve = weierstrass(params.ok_or(Error::TemplateIncomplete)?)?;
    let point = point.ok_or(Error::TemplateIncomplete)?;
    let point = uncompressed_point(curve, point).ok_or(Error::AttributeValueInvalid)?;
    EcPublicKey::from_point(curve, point).ok_or(Error::PublicKeyInvalid)
}

/// A `CKA_PUBLIC_KEY_INFO` the application gave must describe the key.
fn check_key_info(template: &Template, spki: Result<Vec<u8>>) -> Result<()> {
    match template.get(CKA_PUBLIC_KEY_INFO) {
        Some(a) if !a.as_bytes()?.is_empty() && a.as_bytes()? != spki?.as_slice() => {
            Err(Error::AttributeValueInvalid)
        }
        _ => Ok(()),
    }
}

/// Checks a `CKK_EC` key given to `C_CreateObject`.
pub(crate) fn check_import(class: CK_OBJECT_CLASS, template: &Template) -> Result<()> {
    let bytes = |ty| template.get(ty).map(Attribute::as_bytes).transpose();
    match class {
        CKO_PRIVATE_KEY => {
            let key = private_from_parts(bytes(CKA_EC_PARAMS)?, bytes(CKA_VALUE)?)?;
            check_key_info(template, key.spki())
        }
        CKO_PUBLIC_KEY => {
            let key = public_from_parts(bytes(CKA_EC_PARAMS)?, bytes(CKA_EC_POINT)?)?;
            check_key_info(template, key.spki())
        }
        _ => Ok(()),
    }
}

/// The PKCS#8 form of a `CKK_EC` private key object.
pub(crate) fn to_pkcs8(obj: &Object, secrets: &SecretAttrs) -> Result<Output> {
    let key = obj.material.parsed(|| {
        private_from_parts(
            obj.bytes(CKA_EC_PARAMS),
            secrets.get(CKA_VALUE).map(Secret::expose),
        )
        .map_err(|_| Error::KeyNotWrappable)
    })?;
    Ok(Zeroizing::new(key.to_pkcs8()?.expose().to_vec()))
}

/// The attributes of a `CKK_EC` private key unwrapped from PKCS#8.
pub(crate) fn from_pkcs8(der: &[u8]) -> Result<Vec<Attribute>> {
    let info = super::strict_pkcs8(der)?;
    sec1::EcPrivateKey::from_der(info.private_key).map_err(|_| Error::WrappedKeyInvalid)?;
    let key = EcPrivateKey::from_pkcs8(der).ok_or(Error::WrappedKeyInvalid)?;
    Ok(vec![
        Attribute::bytes(
            CKA_EC_PARAMS,
            NamedCurve::Weierstrass(key.curve()).oid_der()?,
        ),
        Attribute::bytes(CKA_VALUE, key.scalar()?.expose().to_vec()),
        Attribute::bytes(CKA_PUBLIC_KEY_INFO, key.spki()?),
    ])
}

// ---- key pair generation -------------------------------------------------------------------

/// `CKM_EC_KEY_PAIR_GEN`.
pub(crate) struct KeyPairGen;

pub(crate) static EC_KEY_PAIR_GEN: KeyPairGen = KeyPairGen;

impl Mechanism for KeyPairGen {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        CKM_EC_KEY_PAIR_GEN
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
        let ec_params = public
            .get(CKA_EC_PARAMS)
            .ok_or(Error::TemplateIncomplete)?
            .as_bytes()?;
        let curve = weierstrass(ec_params)?;
        let key = EcPrivateKey::generate(curve)?;
        let oid = NamedCurve::Weierstrass(curve).oid_der()?;
        let spki = key.spki()?;
        let public = Generated {
            class: CKO_PUBLIC_KEY,
            key_type: CKK_EC,
            attrs: vec![
                Attribute::bytes(CKA_EC_PARAMS, oid.clone()),
                Attribute::bytes(CKA_EC_POINT, der_octet_string(&key.public_point())?),
                Attribute::bytes(CKA_PUBLIC_KEY_INFO, spki.clone()),
            ],
        };
        let private = Generated {
            class: CKO_PRIVATE_KEY,
            key_type: CKK_EC,
            attrs: vec![
                Attribute::bytes(CKA_EC_PARAMS, oid),
                Attribute::bytes(CKA_VALUE, key.scalar()?.expose().to_vec()),
                Attribute::bytes(CKA_PUBLIC_KEY_INFO, spki),
            ],
        };
        Ok((public, private))
    }
}

// ---- ECDSA ---------------------------------------------------------------------------------

/// `CKM_ECDSA` (no hash: the input is the hash) and `CKM_ECDSA_<hash>`.
pub(crate) struct Ecdsa(Option<Hash>);

pub(crate) static ECDSA: Ecdsa = Ecdsa(None);
pub(crate) static ECDSA_SHA1: Ecdsa = Ecdsa(Some(Hash::Sha1));
pub(crate) static ECDSA_SHA224: Ecdsa = Ecdsa(Some(Hash::Sha224));
pub(crate) static ECDSA_SHA256: Ecdsa = Ecdsa(Some(Hash::Sha256));
pub(crate) static ECDSA_SHA384: Ecdsa = Ecdsa(Some(Hash::Sha384));
pub(crate) static ECDSA_SHA512: Ecdsa = Ecdsa(Some(Hash::Sha512));

struct EcdsaSign {
    key: Arc<EcPrivateKey>,
    /// The running hash of `CKM_ECDSA_<hash>`; `None` for `CKM_ECDSA` (single-part).
    hash: Option<Hash>,
    ctx: Option<Hasher>,
}

impl SignOp for EcdsaSign {
    fn len(&self) -> usize {
        2 * self.key.curve().field_len()
    }

    fn update(&mut self, data: &[u8]) -> Result<()> {
        match &mut self.ctx {
            Some(ctx) => {
                ctx.update(data);
                Ok(())
            }
            None => Err(Error::FunctionNotSupported),
        }
    }

    fn finish(&mut self) -> Result<Output> {
        let hash = self.hash.ok_or(Error::FunctionNotSupported)?;
        let ctx = self.ctx.take().unwrap_or_else(|| hash.start());
        Ok(Zeroizing::new(self.key.sign_hash(&ctx.finish())?))
    }

    fn one_shot(&mut self, data: &[u8]) -> Result<Output> {
        if self.hash.is_none() {
            return Ok(Zeroizing::new(self.key.sign_hash(data)?));
        }
        self.update(data)?;
        self.finish()
    }

    fn multi_part(&self) -> bool {
        self.hash.is_some()
    }
}

struct EcdsaVerify {
    key: Arc<EcPublicKey>,
    field_len: usize,
    hash: Option<Hash>,
    ctx: Option<Hasher>,
}

impl EcdsaVerify {
    /// `sig` as `r ‖ s` of exactly twice the field length (§6.3.1: a signature may be shorter,
    /// with `r` and `s` of equal length).
    fn fixed(&self, sig: &[u8]) -> Result<Vec<u8>> {
        let n = self.field_len;
        if sig.is_empty() || sig.len() % 2 != 0 || sig.len() > 2 * n {
            return Err(Error::SignatureLenRange);
        }
        let (r, s) = sig.split_at(sig.len() / 2);
        let mut out = vec![0u8; 2 * n];
        let (r_out, s_out) = out.split_at_mut(n);
        r_out
            .get_mut(n - r.len()..)
            .ok_or(Error::SignatureLenRange)?
            .copy_from_slice(r);
        s_out
            .get_mut(n - s.len()..)
            .ok_or(Error::SignatureLenRange)?
            .copy_from_slice(s);
        Ok(out)
    }

    fn check(&self, hash: &[u8], sig: &[u8]) -> Result<()> {
        let sig = self.fixed(sig)?;
        if self.key.verify_hash(hash, &sig) {
            Ok(())
        } else {
            Err(Error::SignatureInvalid)
        }
    }
}

impl VerifyOp for EcdsaVerify {
    fn update(&mut self, data: &[u8]) -> Result<()> {
        match &mut self.ctx {
            Some(ctx) => {
                ctx.update(data);
                Ok(())
            }
            None => Err(Error::FunctionNotSupported),
        }
    }

    fn finish(&mut self, signature: &[u8]) -> Result<()> {
        let hash = self.hash.ok_or(Error::FunctionNotSupported)?;
        let ctx = self.ctx.take().unwrap_or_else(|| hash.start());
        self.check(&ctx.finish(), signature)
    }

    fn one_shot(&mut self, data: &[u8], signature: &[u8]) -> Result<()> {
        if self.hash.is_none() {
            return self.check(data, signature);
        }
        self.update(data)?;
        self.finish(signature)
    }

    fn multi_part(&self) -> bool {
        self.hash.is_some()
    }
}

impl Mechanism for Ecdsa {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        match self.0 {
            None => CKM_ECDSA,
            Some(Hash::Sha1) => CKM_ECDSA_SHA1,
            Some(Hash::Sha224) => CKM_ECDSA_SHA224,
            Some(Hash::Sha256) => CKM_ECDSA_SHA256,
            Some(Hash::Sha384) => CKM_ECDSA_SHA384,
            Some(Hash::Sha512) => CKM_ECDSA_SHA512,
            Some(Hash::Sha3_256) => CKM_ECDSA_SHA3_256,
            Some(Hash::Sha3_384) => CKM_ECDSA_SHA3_384,
            Some(Hash::Sha3_512) => CKM_ECDSA_SHA3_512,
        }
    }

    fn info(&self) -> MechanismInfo {
        info(SIGN_VERIFY)
    }

    fn check_key(&self, key: &Object, usage: CK_ATTRIBUTE_TYPE) -> Result<()> {
        super::asymmetric_key(key, usage, CKK_EC)
    }

    fn sign_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn SignOp>> {
        let key = private_key(key)?;
        no_params(params)?;
        Ok(Box::new(EcdsaSign {
            key,
            hash: self.0,
            ctx: self.0.map(Hash::start),
        }))
    }

    fn verify_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn VerifyOp>> {
        let key = public_key(key.obj)?;
        no_params(params)?;
        let field_len = key.curve().field_len();
        Ok(Box::new(EcdsaVerify {
            key,
            field_len,
            hash: self.0,
            ctx: self.0.map(Hash::start),
        }))
    }
}

// ---- ECDH ----------------------------------------------------------------------------------

/// `CKM_ECDH1_DERIVE` and `CKM_ECDH1_COFACTOR_DERIVE`.
pub(crate) struct Ecdh(CK_MECHANISM_TYPE);

pub(crate) static ECDH1_DERIVE: Ecdh = Ecdh(CKM_ECDH1_DERIVE);
pub(crate) static ECDH1_COFACTOR_DERIVE: Ecdh = Ecdh(CKM_ECDH1_COFACTOR_DERIVE);

/// The hash of an X9.63 KDF, `None` for `CKD_NULL`.
fn kdf_hash(kdf: CK_EC_KDF_TYPE) -> Result<Option<Hash>> {
    Ok(Some(match kdf {
        CKD_NULL => return Ok(None),
        CKD_SHA1_KDF => Hash::Sha1,
        CKD_SHA224_KDF => Hash::Sha224,
        CKD_SHA256_KDF => Hash::Sha256,
        CKD_SHA384_KDF => Hash::Sha384,
        CKD_SHA512_KDF => Hash::Sha512,
        _ => return Err(Error::MechanismParamInvalid),
    }))
}

/// The ANSI X9.63 KDF (SEC 1 §3.6.1): `Hash(Z ‖ counter ‖ SharedInfo)` for counter = 1, 2, ...
/// (32-bit big-endian), concatenated and cut to `len` bytes.
pub(crate) fn x963_kdf(hash: Hash, z: &[u8], shared_info: &[u8], len: usize) -> Result<Output> {
    let mut out = Zeroizing::new(Vec::with_capacity(len + hash.len()));
    let mut counter: u32 = 1;
    while out.len() < len {
        let mut ctx = hash.start();
        ctx.update(z);
        ctx.update(&counter.to_be_bytes());
        ctx.update(shared_info);
        out.extend_from_slice(&Zeroizing::new(ctx.finish()));
        counter = counter.checked_add(1).ok_or(Error::AttributeValueInvalid)?;
    }
    out.truncate(len);
    Ok(out)
}

impl Mechanism for Ecdh {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        self.0
    }

    fn info(&self) -> MechanismInfo {
        info(CKF_DERIVE)
    }

    fn check_key(&self, key: &Object, usage: CK_ATTRIBUTE_TYPE) -> Result<()> {
        super::asymmetric_key(key, usage, CKK_EC)
    }

    fn derive(
        &self,
        base: &Key<'_>,
        params: &MechanismParams,
        ctx: &DeriveCtx<'_>,
    ) -> Result<Output> {
        let key = private_key(base)?;
        let MechanismParams::Ecdh1Derive {
            kdf,
            shared_data,
            public_data,
        } = params
        else {
            return Err(Error::MechanismParamInvalid);
        };
        let hash = kdf_hash(*kdf)?;
        if hash.is_none() && !shared_data.is_empty() {
            return Err(Error::MechanismParamInvalid);
        }
        if ctx.class != CKO_SECRET_KEY {
            return Err(Error::TemplateInconsistent);
        }
        let curve = key.curve();
        let peer = uncompressed_point(curve, public_data).ok_or(Error::MechanismParamInvalid)?;
        let z = key.agree(peer).ok_or(Error::PublicKeyInvalid)?;
        let len = match (ctx.value_len, hash) {
            (Some(0), _) => return Err(Error::AttributeValueInvalid),
            (Some(n), _) => n,
            // Without CKA_VALUE_LEN: the whole x-coordinate for key types of any length; AES
            // (16, 24 or 32 bytes) and the KDFs have no length to choose.
            (None, None) if ctx.key_type != Some(CKK_AES) => z.len(),
            (None, _) => return Err(Error::TemplateIncomplete),
        };
        match hash {
            None => {
                let start = z
                    .len()
                    .checked_sub(len)
                    .ok_or(Error::AttributeValueInvalid)?;
                let tail = z
                    .expose()
                    .get(start..)
                    .ok_or(Error::AttributeValueInvalid)?;
                Ok(Zeroizing::new(tail.to_vec()))
            }
            Some(h) => {
                if len > MAX_DERIVED_LEN {
                    return Err(Error::AttributeValueInvalid);
                }
                x963_kdf(h, z.expose(), shared_data, len)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `CKA_EC_PARAMS` as the PrintableString `name` (what pkcs11-tool sends).
    fn printable(name: &str) -> Vec<u8> {
        PrintableStringRef::new(name).unwrap().to_der().unwrap()
    }

    #[test]
    fn ec_params_forms() {
        let p256 = NamedCurve::Weierstrass(Curve::P256);
        assert_eq!(parse_ec_params(&p256.oid_der().unwrap()), Ok(p256));
        assert_eq!(
            p256.oid_der().unwrap(),
            [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]
        );
        for name in ["prime256v1", "secp256r1", "P-256", "p-256"] {
            assert_eq!(parse_ec_params(&printable(name)), Ok(p256));
        }
        assert_eq!(
            parse_ec_params(&printable("edwards25519")),
            Ok(NamedCurve::Ed25519)
        );
        // secp256k1: well formed, not supported.
        assert_eq!(
            parse_ec_params(&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x0a]),
            Err(Error::CurveNotSupported)
        );
        assert_eq!(
            parse_ec_params(&printable("brainpoolP256r1")),
            Err(Error::CurveNotSupported)
        );
        // Malformed, implicitlyCA, explicit parameters.
        for bad in [
            &[][..],
            &[0x06],
            &[0x06, 0x00],
            &[0x06, 0x03, 0x2b, 0x65],
            &[0x06, 0x01, 0x2b, 0x00],
            &[0x06, 0x01, 0x81],
            &[0x05, 0x00],
            &[0x30, 0x00],
            &[0x13, 0x81, 0x05, b'P', b'-', b'2', b'5', b'6'],
        ] {
            assert_eq!(
                parse_ec_params(bad),
                Err(Error::DomainParamsInvalid),
                "{bad:02x?}"
            );
        }
    }

    /// Malformed DER: a long-form length that fits a shorter form and an indefinite length
    /// (this module's reader refused those too), and characters outside PrintableString
    /// (which it took, answering `CKR_CURVE_NOT_SUPPORTED`).
    #[test]
    fn non_minimal_or_malformed_der_is_refused() {
        let p256_oid = [0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        for bad in [
            // OID 1.2.840.10045.3.1.7 with the length as 81 08 and as 82 00 08.
            [&[0x06, 0x81, 0x08][..], &p256_oid].concat(),
            [&[0x06, 0x82, 0x00, 0x08][..], &p256_oid].concat(),
            // Indefinite length, with end-of-contents.
            [&[0x06, 0x80][..], &p256_oid, &[0, 0]].concat(),
            // "P-256" with a NUL and with an '@': not PrintableString characters (the old
            // reader took any UTF-8 and answered CKR_CURVE_NOT_SUPPORTED).
            b"\x13\x06P-256\0".to_vec(),
            b"\x13\x06@P-256".to_vec(),
            // A PrintableString "P-256" with the length in long form.
            b"\x13\x81\x05P-256".to_vec(),
        ] {
            assert_eq!(
                parse_ec_params(&bad),
                Err(Error::DomainParamsInvalid),
                "{bad:02x?}"
            );
        }
        // CKA_EC_POINT: the P-256 point's OCTET STRING with a long-form length (04 81 41).
        let raw = [4u8; 65];
        let long = [&[0x04, 0x81, 0x41][..], &raw].concat();
        assert_eq!(uncompressed_point(Curve::P256, &long), None);
        // ... and with something after it.
        let mut trailing = der_octet_string(&raw).unwrap();
        trailing.push(0);
        assert_eq!(uncompressed_point(Curve::P256, &trailing), None);
        // An Ed25519 public key the same ways.
        let long = [&[0x04, 0x81, 0x20][..], &[9u8; 32]].concat();
        assert_eq!(octet_string_content(&long), None);
        assert_eq!(
            octet_string_content(&der_octet_string(&[9u8; 32]).unwrap()),
            Some(&[9u8; 32][..])
        );
    }

    #[test]
    fn octet_strings_and_points() {
        let raw = [4u8; 65];
        assert_eq!(uncompressed_point(Curve::P256, &raw), Some(&raw[..]));
        let der = der_octet_string(&raw).unwrap();
        assert_eq!(&der[..2], &[0x04, 0x41]);
        assert_eq!(uncompressed_point(Curve::P256, &der), Some(&raw[..]));
        let big = [4u8; 133];
        let der = der_octet_string(&big).unwrap();
        assert_eq!(&der[..3], &[0x04, 0x81, 0x85]);
        assert_eq!(uncompressed_point(Curve::P521, &der), Some(&big[..]));
        assert_eq!(uncompressed_point(Curve::P384, &der), None);
        let mut compressed = [2u8; 33];
        compressed[0] = 2;
        assert_eq!(uncompressed_point(Curve::P256, &compressed), None);
    }

    #[test]
    fn x963_kdf_known_answer() {
        // ANSI X9.63 KDF with SHA-256 (NIST CAVS SP 800-135 "ansx963_2001" test vector,
        // COUNT = 0 of [SHA-256] [shared secret length = 192] [SharedInfo length = 0]).
        let z = hex("96c05619d56c328ab95fe84b18264b08725b85e33fd34f08");
        let out = x963_kdf(Hash::Sha256, &z, &[], 16).unwrap();
        assert_eq!(out.to_vec(), hex("443024c3dae66b95e6f5670601558f71"));
    }

    /// A key object as `C_GenerateKeyPair` would store it.
    fn object(mech: CK_MECHANISM_TYPE, g: Generated) -> Arc<Object> {
        let new = crate::object::assemble(crate::object::Assembly {
            origin: crate::object::Origin::Generate(mech),
            class: g.class,
            subtype: Some(g.key_type),
            template: &Template::new(),
            supplied: g.attrs,
            so: false,
            profile: bridge::config::Personality::Default.profile(),
        })
        .unwrap();
        Arc::new(new.into_object(1, None))
    }

    fn generate(mech: &dyn Mechanism, params: Vec<u8>) -> (Arc<Object>, Arc<Object>) {
        let public = Template::new().with(Attribute::bytes(CKA_EC_PARAMS, params));
        let (p, k) = mech
            .generate_key_pair(&public, &Template::new(), &MechanismParams::None)
            .unwrap();
        (object(mech.ty(), p), object(mech.ty(), k))
    }

    fn secrets(obj: &Object) -> &SecretAttrs {
        obj.material
            .secrets(|_| Err(Error::Internal("not sealed")))
            .unwrap()
    }

    fn attr(attrs: &[Attribute], ty: CK_ATTRIBUTE_TYPE) -> Vec<u8> {
        attrs
            .iter()
            .find(|a| a.ty == ty)
            .unwrap()
            .as_bytes()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn parsed_keys_are_cached_on_the_object() {
        let (public, private) = generate(&EC_KEY_PAIR_GEN, Curve::P256.oid_der_for_test());
        let key = Key {
            obj: &private,
            secrets: secrets(&private),
        };
        assert!(Arc::ptr_eq(
            &private_key(&key).unwrap(),
            &private_key(&key).unwrap()
        ));
        assert!(Arc::ptr_eq(
            &public_key(&public).unwrap(),
            &public_key(&public).unwrap()
        ));
    }

    #[test]
    fn ec_pkcs8_round_trips_and_reads_rustcrypto_pkcs8() {
        use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
        for curve in Curve::ALL {
            let (_, private) = generate(&EC_KEY_PAIR_GEN, curve.oid_der_for_test());
            let value = secrets(&private).get(CKA_VALUE).unwrap().expose().to_vec();
            let der = super::super::key_to_wrap(&private, secrets(&private)).unwrap();
            // RustCrypto reads what we wrap.
            let theirs = match curve {
                Curve::P256 => p256::SecretKey::from_pkcs8_der(&der)
                    .unwrap()
                    .to_bytes()
                    .to_vec(),
                Curve::P384 => p384::SecretKey::from_pkcs8_der(&der)
                    .unwrap()
                    .to_bytes()
                    .to_vec(),
                Curve::P521 => p521::SecretKey::from_pkcs8_der(&der)
                    .unwrap()
                    .to_bytes()
                    .to_vec(),
            };
            assert_eq!(theirs, value);
            // And back: the same attributes as the generated key.
            let attrs = super::super::key_from_unwrap(CKO_PRIVATE_KEY, CKK_EC, &der).unwrap();
            assert_eq!(attr(&attrs, CKA_VALUE), value);
            assert_eq!(
                attr(&attrs, CKA_EC_PARAMS),
                private.bytes(CKA_EC_PARAMS).unwrap()
            );
            assert_eq!(
                attr(&attrs, CKA_PUBLIC_KEY_INFO),
                private.bytes(CKA_PUBLIC_KEY_INFO).unwrap()
            );
            // A PKCS#8 that RustCrypto wrote.
            let scalar = {
                let mut v = vec![0x33u8; curve.field_len()];
                v[0] = 0;
                v
            };
            let der = match curve {
                Curve::P256 => p256::SecretKey::from_slice(&scalar).unwrap().to_pkcs8_der(),
                Curve::P384 => p384::SecretKey::from_slice(&scalar).unwrap().to_pkcs8_der(),
                Curve::P521 => p521::SecretKey::from_slice(&scalar).unwrap().to_pkcs8_der(),
            }
            .unwrap();
            let attrs =
                super::super::key_from_unwrap(CKO_PRIVATE_KEY, CKK_EC, der.as_bytes()).unwrap();
            assert_eq!(attr(&attrs, CKA_VALUE), scalar);
            assert_eq!(attr(&attrs, CKA_EC_PARAMS), curve.oid_der_for_test());
        }
    }

    #[test]
    fn ed25519_pkcs8_round_trips_and_reads_dalek_pkcs8() {
        use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
        let (_, private) = generate(
            &super::super::eddsa::EC_EDWARDS_KEY_PAIR_GEN,
            printable("edwards25519"),
        );
        let seed = secrets(&private).get(CKA_VALUE).unwrap().expose().to_vec();
        assert_eq!(seed.len(), 32);
        let der = super::super::key_to_wrap(&private, secrets(&private)).unwrap();
        let dalek = ed25519_dalek::SigningKey::from_pkcs8_der(&der).unwrap();
        assert_eq!(dalek.to_bytes().to_vec(), seed);
        let attrs = super::super::key_from_unwrap(CKO_PRIVATE_KEY, CKK_EC_EDWARDS, &der).unwrap();
        assert_eq!(attr(&attrs, CKA_VALUE), seed);
        assert_eq!(attr(&attrs, CKA_EC_PARAMS), hex("06032b6570"));
        // dalek writes PKCS#8 v2 (with the public key); it reads back too.
        let theirs = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
        let der = theirs.to_pkcs8_der().unwrap();
        let attrs =
            super::super::key_from_unwrap(CKO_PRIVATE_KEY, CKK_EC_EDWARDS, der.as_bytes()).unwrap();
        assert_eq!(attr(&attrs, CKA_VALUE), [7u8; 32]);
        // A key of the other kind, or garbage, is not a wrapped key of this type.
        let (_, ec_private) = generate(&EC_KEY_PAIR_GEN, Curve::P256.oid_der_for_test());
        let ec_der = super::super::key_to_wrap(&ec_private, secrets(&ec_private)).unwrap();
        for (key_type, bad) in [
            (CKK_EC, der.as_bytes().to_vec()),
            (CKK_EC_EDWARDS, ec_der.to_vec()),
            (CKK_EC_EDWARDS, vec![0x30, 0x00]),
            (CKK_EC, vec![]),
        ] {
            assert_eq!(
                super::super::key_from_unwrap(CKO_PRIVATE_KEY, key_type, &bad).err(),
                Some(Error::WrappedKeyInvalid)
            );
        }
    }

    impl Curve {
        fn oid_der_for_test(self) -> Vec<u8> {
            NamedCurve::Weierstrass(self).oid_der().unwrap()
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
