//! Edwards curves: `CKM_EC_EDWARDS_KEY_PAIR_GEN` and `CKM_EDDSA` for Ed25519, and the import
//! and wrap forms of `CKK_EC_EDWARDS` keys.
//!
//! Behaviour, where the specification leaves a choice (elliptic_curves.md):
//! - `CKA_EC_PARAMS`: the RFC 8410 OID 1.3.101.112 (`06 03 2b 65 70`) or the PrintableString
//!   curve name `edwards25519` (what pkcs11-tool 0.23 sends). Generated keys carry the OID form.
//!   Ed448 and other curves are `CKR_CURVE_NOT_SUPPORTED`.
//! - `CKA_EC_POINT` is the DER OCTET STRING of the 32-byte public key (`04 20 ‖ A`). The 3.x
//!   text says "public key bytes", but pkcs11-tool 0.23 only reads the DER form (it has no raw
//!   fallback for Edwards keys), SoftHSM stores the DER form, and OpenSSL's pkcs11-provider
//!   accepts both. On import both forms are accepted.
//! - `CKA_VALUE` is the 32-byte seed of RFC 8032 §5.1.5.
//! - `CKM_EDDSA` is pure Ed25519. Without a parameter, or with a `CK_EDDSA_PARAMS` whose `phFlag`
//!   is false and whose context is empty, the scheme is Ed25519; Ed25519ph and Ed25519ctx are
//!   `CKR_MECHANISM_PARAM_INVALID`. Multi-part input is buffered (the message is hashed twice),
//!   up to 16 MiB (`CKR_TOKEN_RESOURCE_EXCEEDED` beyond).
//! - A signature of another length than 64 bytes is `CKR_SIGNATURE_LEN_RANGE`.

use std::sync::Arc;

use bridge::{Attribute, Error, MechanismInfo, MechanismParams, Result, Template};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::ec::{NamedCurve, der_octet_string, octet_string_content, parse_ec_params};
use super::{Generated, Key, Mechanism, Output, SIGN_VERIFY, SignOp, VerifyOp};
use crate::crypto::Secret;
use crate::crypto::ec::{ED25519_LEN, Ed25519PrivateKey, Ed25519PublicKey};
use crate::object::{Object, SecretAttrs};

/// Capability flags: a curve over Fp, named by OID or by name. (Points have one encoding.)
const EC_FLAGS: CK_FLAGS = CKF_EC_F_P | CKF_EC_OID | CKF_EC_CURVENAME;

/// The field size in bits of Ed25519 (elliptic_curves.md: "the only allowed values are 255
/// and 448").
const BITS: CK_ULONG = 255;

/// The most a multi-part EdDSA operation buffers.
const MAX_MESSAGE: usize = 16 << 20;

fn info(flags: CK_FLAGS) -> MechanismInfo {
    MechanismInfo {
        min_key_size: BITS,
        max_key_size: BITS,
        flags: CKF_HW | flags | EC_FLAGS,
    }
}

fn ed25519(params: &[u8]) -> Result<()> {
    match parse_ec_params(params)? {
        NamedCurve::Ed25519 => Ok(()),
        NamedCurve::Weierstrass(_) => Err(Error::CurveNotSupported),
    }
}

/// The 32-byte public key in `CKA_EC_POINT`: its DER OCTET STRING, or the raw bytes.
fn public_bytes(point: &[u8]) -> Option<&[u8]> {
    let a = if point.len() == ED25519_LEN {
        point
    } else {
        octet_string_content(point)?
    };
    (a.len() == ED25519_LEN).then_some(a)
}

fn private_from_parts(params: Option<&[u8]>, value: Option<&[u8]>) -> Result<Ed25519PrivateKey> {
    ed25519(params.ok_or(Error::TemplateIncomplete)?)?;
    let seed = value.ok_or(Error::TemplateIncomplete)?;
    Ed25519PrivateKey::from_seed(seed).ok_or(Error::AttributeValueInvalid)
}

fn public_from_parts(params: Option<&[u8]>, point: Option<&[u8]>) -> Result<Ed25519PublicKey> {
    ed25519(params.ok_or(Error::TemplateIncomplete)?)?;
    let point = point.ok_or(Error::TemplateIncomplete)?;
    let a = public_bytes(point).ok_or(Error::AttributeValueInvalid)?;
    Ed25519PublicKey::from_bytes(a).ok_or(Error::PublicKeyInvalid)
}

/// The parsed private key of a `CKK_EC_EDWARDS` private key object (cached on the object).
fn private_key(key: &Key<'_>) -> Result<Arc<Ed25519PrivateKey>> {
    if key.obj.class() != CKO_PRIVATE_KEY || key.obj.key_type() != Some(CKK_EC_EDWARDS) {
        return Err(Error::KeyTypeInconsistent);
    }
    key.obj.material.parsed(|| {
        private_from_parts(
            key.obj.bytes(CKA_EC_PARAMS),
            key.secrets.get(CKA_VALUE).map(Secret::expose),
        )
        .map_err(|_| Error::Internal("ed25519 private key object"))
    })
}

/// The parsed public key of a `CKK_EC_EDWARDS` public key object (cached on the object).
fn public_key(obj: &Object) -> Result<Arc<Ed25519PublicKey>> {
    if obj.class() != CKO_PUBLIC_KEY || obj.key_type() != Some(CKK_EC_EDWARDS) {
        return Err(Error::KeyTypeInconsistent);
    }
    obj.material.parsed(|| {
        public_from_parts(obj.bytes(CKA_EC_PARAMS), obj.bytes(CKA_EC_POINT))
            .map_err(|_| Error::Internal("ed25519 public key object"))
    })
}

fn check_key_info(template: &Template, spki: Result<Vec<u8>>) -> Result<()> {
    match template.get(CKA_PUBLIC_KEY_INFO) {
        Some(a) if !a.as_bytes()?.is_empty() && a.as_bytes()? != spki?.as_slice() => {
            Err(Error::AttributeValueInvalid)
        }
        _ => Ok(()),
    }
}

/// Checks a `CKK_EC_EDWARDS` key given to `C_CreateObject`.
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

/// The PKCS#8 form of a `CKK_EC_EDWARDS` private key object.
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

/// The attributes of a `CKK_EC_EDWARDS` private key unwrapped from PKCS#8.
pub(crate) fn from_pkcs8(der: &[u8]) -> Result<Vec<Attribute>> {
    // RFC 8410: the private key is an OCTET STRING inside the PKCS#8 one.
    let info = super::strict_pkcs8(der)?;
    octet_string_content(info.private_key).ok_or(Error::WrappedKeyInvalid)?;
    let key = Ed25519PrivateKey::from_pkcs8(der).ok_or(Error::WrappedKeyInvalid)?;
    Ok(vec![
        Attribute::bytes(CKA_EC_PARAMS, NamedCurve::Ed25519.oid_der()?),
        Attribute::bytes(CKA_VALUE, key.seed()?.expose().to_vec()),
        Attribute::bytes(CKA_PUBLIC_KEY_INFO, key.spki()?),
    ])
}

/// `CKM_EC_EDWARDS_KEY_PAIR_GEN`.
pub(crate) struct KeyPairGen;

pub(crate) static EC_EDWARDS_KEY_PAIR_GEN: KeyPairGen = KeyPairGen;

impl Mechanism for KeyPairGen {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        CKM_EC_EDWARDS_KEY_PAIR_GEN
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
        super::no_params(params)?;
        let ec_params = public
            .get(CKA_EC_PARAMS)
            .ok_or(Error::TemplateIncomplete)?
            .as_bytes()?;
        ed25519(ec_params)?;
        let key = Ed25519PrivateKey::generate()?;
        let oid = NamedCurve::Ed25519.oid_der()?;
        let spki = key.spki()?;
        let public = Generated {
            class: CKO_PUBLIC_KEY,
            key_type: CKK_EC_EDWARDS,
            attrs: vec![
                Attribute::bytes(CKA_EC_PARAMS, oid.clone()),
                Attribute::bytes(CKA_EC_POINT, der_octet_string(&key.public_key())?),
                Attribute::bytes(CKA_PUBLIC_KEY_INFO, spki.clone()),
            ],
        };
        let private = Generated {
            class: CKO_PRIVATE_KEY,
            key_type: CKK_EC_EDWARDS,
            attrs: vec![
                Attribute::bytes(CKA_EC_PARAMS, oid),
                Attribute::bytes(CKA_VALUE, key.seed()?.expose().to_vec()),
                Attribute::bytes(CKA_PUBLIC_KEY_INFO, spki),
            ],
        };
        Ok((public, private))
    }
}

/// `CKM_EDDSA` (pure Ed25519).
pub(crate) struct Eddsa;

pub(crate) static EDDSA: Eddsa = Eddsa;

/// Pure Ed25519 only: no parameter, or one that selects nothing else.
fn check_params(params: &MechanismParams) -> Result<()> {
    match params {
        MechanismParams::None => Ok(()),
        MechanismParams::Eddsa { ph_flag, context } if !ph_flag && context.is_empty() => Ok(()),
        _ => Err(Error::MechanismParamInvalid),
    }
}

/// The message of a multi-part operation.
#[derive(Default)]
struct Message(Zeroizing<Vec<u8>>);

impl Message {
    fn add(&mut self, data: &[u8]) -> Result<()> {
        if self.0.len().saturating_add(data.len()) > MAX_MESSAGE {
            return Err(Error::TokenResourceExceeded);
        }
        self.0.extend_from_slice(data);
        Ok(())
    }
}

struct EddsaSign {
    key: Arc<Ed25519PrivateKey>,
    msg: Message,
}

impl SignOp for EddsaSign {
    fn len(&self) -> usize {
        2 * ED25519_LEN
    }

    fn update(&mut self, data: &[u8]) -> Result<()> {
        self.msg.add(data)
    }

    fn finish(&mut self) -> Result<Output> {
        let msg = std::mem::take(&mut self.msg);
        Ok(Zeroizing::new(self.key.sign(&msg.0)?))
    }

    fn one_shot(&mut self, data: &[u8]) -> Result<Output> {
        Ok(Zeroizing::new(self.key.sign(data)?))
    }
}

struct EddsaVerify {
    key: Arc<Ed25519PublicKey>,
    msg: Message,
}

impl EddsaVerify {
    fn check(&self, msg: &[u8], sig: &[u8]) -> Result<()> {
        if sig.len() != 2 * ED25519_LEN {
            return Err(Error::SignatureLenRange);
        }
        if self.key.verify(msg, sig) {
            Ok(())
        } else {
            Err(Error::SignatureInvalid)
        }
    }
}

impl VerifyOp for EddsaVerify {
    fn update(&mut self, data: &[u8]) -> Result<()> {
        self.msg.add(data)
    }

    fn finish(&mut self, signature: &[u8]) -> Result<()> {
        let msg = std::mem::take(&mut self.msg);
        self.check(&msg.0, signature)
    }

    fn one_shot(&mut self, data: &[u8], signature: &[u8]) -> Result<()> {
        self.check(data, signature)
    }
}

impl Mechanism for Eddsa {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        CKM_EDDSA
    }

    fn info(&self) -> MechanismInfo {
        info(SIGN_VERIFY)
    }

    fn check_key(&self, key: &Object, usage: CK_ATTRIBUTE_TYPE) -> Result<()> {
        super::asymmetric_key(key, usage, CKK_EC_EDWARDS)
    }

    fn sign_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn SignOp>> {
        let key = private_key(key)?;
        check_params(params)?;
        Ok(Box::new(EddsaSign {
            key,
            msg: Message::default(),
        }))
    }

    fn verify_init(&self, key: &Key<'_>, params: &MechanismParams) -> Result<Box<dyn VerifyOp>> {
        let key = public_key(key.obj)?;
        check_params(params)?;
        Ok(Box::new(EddsaVerify {
            key,
            msg: Message::default(),
        }))
    }
}
