//! `ImportKey`: CNG blobs made into firmware objects, PKCS#8 and BYOK blobs unwrapped by the
//! firmware.

use bridge::BackendExt as _;
use bridge::{Attribute, Mechanism, MechanismParams, OaepParams, ObjectHandle, Template};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::alg::{Alg, Hash};
use super::firmware::{create, private_of};
use super::keys::{describe, make_room, new_id};
use super::properties::{param, utf16_bytes};
use super::public::{der_octets, der_point, spki_point};
use super::state::{KeyState, Provider, Ready, check_flags, key, new_key, provider, ready};
use crate::blob::{self, BlobType, Curve, KeyBlob, RsaCrt};
use crate::error::{INVALID_PARAMETER, KResult, NOT_SUPPORTED, Status};
use crate::types::*;

/// `ImportKey`.
pub(crate) fn import_key(
    hp: usize,
    import_key: Option<usize>,
    blob_type: &str,
    params: &[(u32, Vec<u8>)],
    data: &[u8],
    flags: u32,
) -> KResult<usize> {
    check_flags(
        flags,
        NCRYPT_NO_KEY_VALIDATION
            | NCRYPT_MACHINE_KEY_FLAG
            | NCRYPT_OVERWRITE_KEY_FLAG
            | NCRYPT_DO_NOT_FINALIZE_FLAG,
    )?;
    if flags & NCRYPT_DO_NOT_FINALIZE_FLAG != 0 {
        return Err(NOT_SUPPORTED);
    }
    let p = provider(hp)?;
    let ty = BlobType::from_name(blob_type).ok_or(Status(NTE_BAD_TYPE))?;
    let text = |t| param(params, t).map(utf16_bytes).transpose();
    let name = text(NCRYPTBUFFER_PKCS_KEY_NAME)?;
    let overwrite = flags & NCRYPT_OVERWRITE_KEY_FLAG != 0;
    if let Some(n) = &name {
        make_room(&p, n, overwrite)?;
    }
    let r = match ty {
        BlobType::RsaAesWrap => {
            let kek = import_key.ok_or(INVALID_PARAMETER)?;
            let (_, kek) = key(hp, kek)?;
            let alg = match text(NCRYPTBUFFER_PKCS_ALG_ID)? {
                Some(a) => Alg::from_name(&a).ok_or(NOT_SUPPORTED)?,
                None => Alg::Rsa,
            };
            import_wrapped(&p, &ready(&kek)?, alg, name, data)?
        }
        BlobType::Pkcs8 => {
            if import_key.is_some() {
                return Err(INVALID_PARAMETER);
            }
            let hint = match text(NCRYPTBUFFER_PKCS_ALG_ID)? {
                Some(a) => Some(Alg::from_name(&a).ok_or(NOT_SUPPORTED)?),
                None => None,
            };
            let alg = match (blob::pkcs8_algorithm(data)?, hint) {
                (None, None | Some(Alg::Rsa)) => Alg::Rsa,
                (Some(c), None) => Alg::Ecdsa(c),
                (Some(c), Some(a)) if a.curve() == Some(c) => a,
                _ => return Err(INVALID_PARAMETER),
            };
            import_pkcs8(&p, alg, name, data)?
        }
        _ => {
            if import_key.is_some() {
                return Err(INVALID_PARAMETER);
            }
            let parsed = blob::parse_as(ty, data)?;
            import_blob(&p, parsed, name)?
        }
    };
    new_key(hp, KeyState::Ready(r))
}

fn labelled(t: Template, persisted: bool, id: &[u8], name: Option<&str>) -> Template {
    let t = t
        .with(Attribute::bool(CKA_TOKEN, persisted))
        .with(Attribute::bytes(CKA_ID, id.to_vec()));
    match name {
        Some(n) => t.with(Attribute::bytes(CKA_LABEL, n.as_bytes().to_vec())),
        None => t,
    }
}

/// A public key object of type `kt`.
fn public_template(kt: CK_KEY_TYPE) -> Template {
    Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_PUBLIC_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, kt))
}

/// A private key object of type `kt`, as every import makes it: sensitive, never extractable.
fn private_template(kt: CK_KEY_TYPE) -> Template {
    Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_PRIVATE_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, kt))
        .with(Attribute::bool(CKA_PRIVATE, true))
        .with(Attribute::bool(CKA_SENSITIVE, true))
        .with(Attribute::bool(CKA_EXTRACTABLE, false))
}

/// An imported RSA public key: it verifies and encrypts.
fn rsa_public(t: Template, n: Vec<u8>, e: Vec<u8>) -> Template {
    t.with(Attribute::bool(CKA_VERIFY, true))
        .with(Attribute::bool(CKA_ENCRYPT, true))
        .with(Attribute::bytes(CKA_MODULUS, n))
        .with(Attribute::bytes(CKA_PUBLIC_EXPONENT, e))
}

/// An imported EC public key at `point` (its `CKA_EC_POINT`): it verifies unless it is an ECDH
/// key.
fn ec_public(t: Template, curve: Curve, ecdh: bool, point: Vec<u8>) -> KResult<Template> {
    Ok(t.with(Attribute::bool(CKA_VERIFY, !ecdh))
        .with(Attribute::bytes(CKA_EC_PARAMS, curve.oid_der()?))
        .with(Attribute::bytes(CKA_EC_POINT, point)))
}

fn import_blob(p: &Provider, b: KeyBlob, name: Option<String>) -> KResult<Ready> {
    let persisted = name.is_some();
    let id = new_id(p, name.as_deref())?;
    let pubt = |kt| labelled(public_template(kt), persisted, &id, name.as_deref());
    let privt = |kt| labelled(private_template(kt), persisted, &id, name.as_deref());
    let (public, private) = match &b {
        KeyBlob::RsaPublic { n, e } => (rsa_public(pubt(CKK_RSA), n.clone(), e.clone()), None),
        KeyBlob::EccPublic { curve, x, y, ecdh } => (
            ec_public(pubt(CKK_EC), *curve, *ecdh, der_point(x, y)?)?,
            None,
        ),
        KeyBlob::RsaPrivate {
            n,
            e,
            p: p1,
            q,
            crt: None,
        } => {
            let crt = complete_rsa(n, e, p1, q)?;
            return import_blob(
                p,
                KeyBlob::RsaPrivate {
                    n: n.clone(),
                    e: e.clone(),
                    p: p1.clone(),
                    q: q.clone(),
                    crt: Some(crt),
                },
                name,
            );
        }
        KeyBlob::RsaPrivate {
            n,
            e,
            p: p1,
            q,
            crt: Some(c),
        } => (
            rsa_public(pubt(CKK_RSA), n.clone(), e.clone()),
            Some(
                privt(CKK_RSA)
                    .with(Attribute::bool(CKA_SIGN, true))
                    .with(Attribute::bool(CKA_DECRYPT, true))
                    .with(Attribute::bytes(CKA_MODULUS, n.clone()))
                    .with(Attribute::bytes(CKA_PUBLIC_EXPONENT, e.clone()))
                    .with(Attribute::bytes(CKA_PRIVATE_EXPONENT, c.d.to_vec()))
                    .with(Attribute::bytes(CKA_PRIME_1, p1.to_vec()))
                    .with(Attribute::bytes(CKA_PRIME_2, q.to_vec()))
                    .with(Attribute::bytes(CKA_EXPONENT_1, c.dp.to_vec()))
                    .with(Attribute::bytes(CKA_EXPONENT_2, c.dq.to_vec()))
                    .with(Attribute::bytes(CKA_COEFFICIENT, c.qinv.to_vec())),
            ),
        ),
        KeyBlob::EccPrivate {
            curve,
            ecdh,
            x,
            y,
            d,
        } => (
            ec_public(pubt(CKK_EC), *curve, *ecdh, der_point(x, y)?)?,
            Some(
                privt(CKK_EC)
                    .with(Attribute::bool(CKA_SIGN, !ecdh))
                    .with(Attribute::bool(CKA_DERIVE, *ecdh))
                    .with(Attribute::bytes(CKA_EC_PARAMS, curve.oid_der()?))
                    .with(Attribute::bytes(CKA_VALUE, d.to_vec())),
            ),
        ),
    };
    let private_h = private.map(|t| create(p, &t)).transpose()?;
    let public_h = match create(p, &public) {
        Ok(h) => h,
        Err(e) => {
            if let Some(h) = private_h {
                let _op = p.op.lock();
                let _ = p.backend.destroy_object(p.session, h);
            }
            return Err(e);
        }
    };
    let mut r = describe(p, name, private_h, Some(public_h))?;
    if let KeyBlob::EccPublic {
        curve, ecdh: true, ..
    } = b
    {
        r.alg = Alg::Ecdh(curve);
    }
    r.ephemeral = !persisted;
    Ok(r)
}

/// The private exponent and CRT values of an `RSAPRIVATEBLOB` (which carries only n, e, p and
/// q), computed by RustCrypto's `rsa` (aws-lc-rs has no such constructor); the primes must
/// multiply to the modulus.
fn complete_rsa(n: &[u8], e: &[u8], p: &[u8], q: &[u8]) -> KResult<RsaCrt> {
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};
    use rsa::{BigUint, RsaPrivateKey};
    let bad = |_| Status(NTE_BAD_DATA);
    let mut key = RsaPrivateKey::from_p_q(
        BigUint::from_bytes_be(p),
        BigUint::from_bytes_be(q),
        BigUint::from_bytes_be(e),
    )
    .map_err(bad)?;
    if key.n().to_bytes_be() != blob::trim(n) {
        return Err(Status(NTE_BAD_DATA));
    }
    key.precompute().map_err(bad)?;
    let value = |v: Option<&BigUint>| -> KResult<Zeroizing<Vec<u8>>> {
        Ok(Zeroizing::new(v.ok_or(Status(NTE_BAD_DATA))?.to_bytes_be()))
    };
    Ok(RsaCrt {
        dp: value(key.dp())?,
        dq: value(key.dq())?,
        qinv: value(key.crt_coefficient().as_ref())?,
        d: value(Some(key.d()))?,
    })
}

/// PKCS#8: the firmware's own PKCS#8 decoder makes the key. The provider wraps the bytes
/// (AES key wrap with padding, RFC 5649) under a one-use AES-256 session key whose value it drew
/// from the firmware, and `C_UnwrapKey(CKM_AES_KEY_WRAP_KWP)` opens them inside; the transport
/// key is destroyed at once.
fn import_pkcs8(p: &Provider, alg: Alg, name: Option<String>, data: &[u8]) -> KResult<Ready> {
    use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrapPadded};
    let mut kek = Zeroizing::new(vec![0u8; 32]);
    p.backend.generate_random(p.session, &mut kek)?;
    let mut out = vec![0u8; data.len() + 16];
    let wrapped = AesKek::new(&AES_256, &kek)
        .and_then(|k| k.wrap_with_padding(data, &mut out))
        .map_err(|_| Status(NTE_BAD_DATA))?
        .to_vec();
    let transport = create(
        p,
        &Template::new()
            .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
            .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES))
            .with(Attribute::bool(CKA_TOKEN, false))
            .with(Attribute::bool(CKA_SENSITIVE, true))
            .with(Attribute::bool(CKA_EXTRACTABLE, false))
            .with(Attribute::bool(CKA_UNWRAP, true))
            .with(Attribute::bytes(CKA_VALUE, kek.to_vec())),
    )?;
    let r = unwrap_private(
        p,
        &Mechanism::new(CKM_AES_KEY_WRAP_KWP),
        transport,
        &wrapped,
        alg,
        name,
    );
    {
        let _op = p.op.lock();
        let _ = p.backend.destroy_object(p.session, transport);
    }
    r
}

/// BYOK: the firmware unwraps the `CKM_RSA_AES_KEY_WRAP` blob under our RSA key.
fn import_wrapped(
    p: &Provider,
    kek: &Ready,
    alg: Alg,
    name: Option<String>,
    data: &[u8],
) -> KResult<Ready> {
    let b = blob::parse_rsa_aes_wrap(data)?;
    let kek_h = private_of(p, kek)?;
    let hash = Hash::from_name(&b.oaep_hash)?;
    let mech = Mechanism::with(
        CKM_RSA_AES_KEY_WRAP,
        MechanismParams::RsaAesKeyWrap {
            aes_key_bits: 256,
            oaep: OaepParams {
                hash_alg: hash.ckm(),
                mgf: hash.mgf(),
                source: CKZ_DATA_SPECIFIED,
                source_data: b.label.clone(),
            },
        },
    );
    unwrap_private(p, &mech, kek_h, &b.wrapped, alg, name)
}

/// A private key unwrapped by the firmware, and its public half as a second object.
fn unwrap_private(
    p: &Provider,
    mech: &Mechanism,
    unwrapping_key: ObjectHandle,
    wrapped: &[u8],
    alg: Alg,
    name: Option<String>,
) -> KResult<Ready> {
    let persisted = name.is_some();
    let id = new_id(p, name.as_deref())?;
    let kt = match alg {
        Alg::Rsa => CKK_RSA,
        Alg::Ecdsa(_) | Alg::Ecdh(_) => CKK_EC,
    };
    let t = labelled(private_template(kt), persisted, &id, name.as_deref());
    let t = match alg {
        Alg::Rsa => t
            .with(Attribute::bool(CKA_SIGN, true))
            .with(Attribute::bool(CKA_DECRYPT, true)),
        Alg::Ecdsa(_) => t.with(Attribute::bool(CKA_SIGN, true)),
        Alg::Ecdh(_) => t.with(Attribute::bool(CKA_DERIVE, true)),
    };
    let priv_h = {
        let _op = p.op.lock();
        p.backend
            .unwrap_key(p.session, mech, unwrapping_key, wrapped, &t)?
    };
    // The public half, from the unwrapped key's public attributes.
    let public = match alg {
        Alg::Rsa => {
            let n = p.need(priv_h, CKA_MODULUS)?;
            let e = p.need(priv_h, CKA_PUBLIC_EXPONENT)?;
            Some(labelled(
                rsa_public(public_template(CKK_RSA), n.to_vec(), e.to_vec()),
                persisted,
                &id,
                name.as_deref(),
            ))
        }
        // An EC key's point, from the unwrapped key's SubjectPublicKeyInfo.
        Alg::Ecdsa(c) | Alg::Ecdh(c) => {
            let spki = p.need(priv_h, CKA_PUBLIC_KEY_INFO)?;
            let point = spki_point(&spki).ok_or(Status(NTE_BAD_KEY))?;
            Some(labelled(
                ec_public(
                    public_template(CKK_EC),
                    c,
                    matches!(alg, Alg::Ecdh(_)),
                    der_octets(point)?,
                )?,
                persisted,
                &id,
                name.as_deref(),
            ))
        }
    };
    let pub_h = public.map(|t| create(p, &t)).transpose()?;
    let mut r = describe(p, name, Some(priv_h), pub_h)?;
    r.ephemeral = !persisted;
    Ok(r)
}
