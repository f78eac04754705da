//! `SignHash` and `VerifySignature`: RSA PKCS#1 v1.5 and PSS, ECDSA.

use bridge::BackendExt as _;
use bridge::{Mechanism, MechanismParams};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::alg::{Alg, Hash};
use super::firmware::private_of;
use super::state::{Ready, check_flags, key, modulus_len, ready};
use super::{Out, Padding};
use crate::error::{INVALID_PARAMETER, KResult, Status};
use crate::types::*;

/// `SignHash`.
pub(crate) fn sign_hash(
    hp: usize,
    hk: usize,
    padding: Padding,
    hash: &[u8],
    probe: bool,
    flags: u32,
) -> KResult<Out> {
    check_flags(flags, BCRYPT_PAD_PKCS1 | BCRYPT_PAD_PSS)?;
    let (p, k) = key(hp, hk)?;
    let r = ready(&k)?;
    let (size, mech, data) = signature_mechanism(&r, padding, hash)?;
    if probe {
        return Ok(Out::Size(size));
    }
    let key = private_of(&p, &r)?;
    let _op = p.op.lock();
    p.backend.sign_init(p.session, &mech, key)?;
    let mut out = Zeroizing::new(vec![0u8; size]);
    let n = p.backend.sign(p.session, &data, Some(&mut out))?;
    out.truncate(n);
    Ok(Out::Data(out))
}

/// `VerifySignature`.
pub(crate) fn verify_signature(
    hp: usize,
    hk: usize,
    padding: Padding,
    hash: &[u8],
    signature: &[u8],
    flags: u32,
) -> KResult<()> {
    check_flags(flags, BCRYPT_PAD_PKCS1 | BCRYPT_PAD_PSS)?;
    let (p, k) = key(hp, hk)?;
    let r = ready(&k)?;
    let (_, mech, data) = signature_mechanism(&r, padding, hash)?;
    let key = r.public.ok_or(Status(NTE_BAD_KEY))?;
    let _op = p.op.lock();
    p.backend.verify_init(p.session, &mech, key)?;
    Ok(p.backend.verify(p.session, &data, signature)?)
}

fn signature_mechanism(
    r: &Ready,
    padding: Padding,
    hash: &[u8],
) -> KResult<(usize, Mechanism, Vec<u8>)> {
    match (r.alg, padding) {
        (Alg::Rsa, Padding::Pkcs1(alg)) => {
            let data = match alg {
                Some(name) => {
                    let h = named_hash(&name, hash)?;
                    let mut d = h.digest_info_prefix().into_vec();
                    d.extend_from_slice(hash);
                    d
                }
                None => hash.to_vec(),
            };
            Ok((modulus_len(r), Mechanism::new(CKM_RSA_PKCS), data))
        }
        (Alg::Rsa, Padding::Pss(name, salt)) => {
            let h = named_hash(&name, hash)?;
            let mech = Mechanism::with(
                CKM_RSA_PKCS_PSS,
                MechanismParams::RsaPkcsPss {
                    hash_alg: h.ckm(),
                    mgf: h.mgf(),
                    salt_len: CK_ULONG::from(salt),
                },
            );
            Ok((modulus_len(r), mech, hash.to_vec()))
        }
        (Alg::Rsa, _) => Err(INVALID_PARAMETER),
        (Alg::Ecdsa(c), Padding::None) => {
            if hash.is_empty() {
                return Err(INVALID_PARAMETER);
            }
            Ok((2 * c.field_len(), Mechanism::new(CKM_ECDSA), hash.to_vec()))
        }
        (Alg::Ecdsa(_), _) => Err(INVALID_PARAMETER),
        (Alg::Ecdh(_), _) => Err(Status(NTE_BAD_KEY)),
    }
}

/// The hash the padding info names, which `hash` must be a value of (by its length).
fn named_hash(name: &str, hash: &[u8]) -> KResult<Hash> {
    let h = Hash::from_name(name)?;
    if hash.len() != h.len() {
        return Err(INVALID_PARAMETER);
    }
    Ok(h)
}
