//! `ExportKey`: CNG public and private blobs and PKCS#8, read through the firmware's export
//! check.

use bridge::ObjectHandle;
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::alg::Alg;
use super::firmware::private_of;
use super::public::{PublicKey, public_key};
use super::state::{Provider, check_flags, key, ready};
use crate::blob::{self, BlobType, RsaCrt};
use crate::error::{KResult, NOT_SUPPORTED, Status};
use crate::types::*;

/// `ExportKey`. Private blobs are read through the firmware's own export check
/// (`C_GetAttributeValue`): a key the firmware will not reveal is `NTE_NOT_SUPPORTED`.
pub(crate) fn export_key(
    hp: usize,
    hk: usize,
    export_key: Option<usize>,
    blob_type: &str,
    flags: u32,
) -> KResult<Zeroizing<Vec<u8>>> {
    check_flags(flags, 0)?;
    let (p, k) = key(hp, hk)?;
    if let Some(h) = export_key {
        key(hp, h)?;
        // Wrapped export (under another key of ours) is not offered.
        return Err(NOT_SUPPORTED);
    }
    let r = ready(&k)?;
    let ty = BlobType::from_name(blob_type).ok_or(Status(NTE_BAD_TYPE))?;
    let ecdh = matches!(r.alg, Alg::Ecdh(_));
    match (ty, public_key(&p, &r)?) {
        (BlobType::RsaPublic, PublicKey::Rsa { n, e }) => Ok(blob::encode_rsa(&n, &e, None)?),
        (BlobType::EccPublic, PublicKey::Ec { curve, x, y }) => {
            Ok(blob::encode_ecc(curve, ecdh, &x, &y, None)?)
        }
        (BlobType::RsaPrivate | BlobType::RsaFullPrivate, PublicKey::Rsa { n, e }) => {
            let k = private_of(&p, &r)?;
            let prime1 = p.need(k, CKA_PRIME_1)?;
            let prime2 = p.need(k, CKA_PRIME_2)?;
            let crt = if ty == BlobType::RsaFullPrivate {
                Some(crt_of(&p, k)?)
            } else {
                None
            };
            Ok(blob::encode_rsa(
                &n,
                &e,
                Some((&prime1, &prime2, crt.as_ref())),
            )?)
        }
        (BlobType::EccPrivate, PublicKey::Ec { curve, x, y }) => {
            let k = private_of(&p, &r)?;
            let d = p.need(k, CKA_VALUE)?;
            Ok(blob::encode_ecc(curve, ecdh, &x, &y, Some(&d))?)
        }
        (BlobType::Pkcs8, PublicKey::Rsa { n, e }) => {
            let k = private_of(&p, &r)?;
            let crt = crt_of(&p, k)?;
            let (p1, q) = (p.need(k, CKA_PRIME_1)?, p.need(k, CKA_PRIME_2)?);
            Ok(blob::pkcs8_rsa(&n, &e, &p1, &q, &crt)?)
        }
        (BlobType::Pkcs8, PublicKey::Ec { curve, x, y }) => {
            let k = private_of(&p, &r)?;
            let d = p.need(k, CKA_VALUE)?;
            Ok(blob::pkcs8_ec(curve, &x, &y, &d)?)
        }
        // The BYOK blob is import-only.
        (BlobType::RsaAesWrap, _) => Err(NOT_SUPPORTED),
        _ => Err(Status(NTE_BAD_TYPE)),
    }
}

/// An RSA private key's private exponent and CRT values.
fn crt_of(p: &Provider, k: ObjectHandle) -> KResult<RsaCrt> {
    Ok(RsaCrt {
        dp: p.need(k, CKA_EXPONENT_1)?,
        dq: p.need(k, CKA_EXPONENT_2)?,
        qinv: p.need(k, CKA_COEFFICIENT)?,
        d: p.need(k, CKA_PRIVATE_EXPONENT)?,
    })
}
