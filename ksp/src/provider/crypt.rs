//! `Encrypt` and `Decrypt`: RSA PKCS#1 v1.5 and OAEP.

use bridge::BackendExt as _;
use bridge::{Mechanism, MechanismParams, OaepParams};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::alg::{Alg, Hash};
use super::firmware::private_of;
use super::state::{Ready, check_flags, key, modulus_len, ready};
use super::{Out, Padding};
use crate::error::{INVALID_PARAMETER, KResult, Status};
use crate::types::*;

fn cipher_mechanism(r: &Ready, padding: Padding) -> KResult<Mechanism> {
    if r.alg != Alg::Rsa {
        return Err(Status(NTE_BAD_KEY));
    }
    match padding {
        // A PKCS#1 padding info names a signature hash; encryption has none to use.
        Padding::Pkcs1(_) => Ok(Mechanism::new(CKM_RSA_PKCS)),
        Padding::Oaep(name, label) => {
            let h = Hash::from_name(&name)?;
            Ok(Mechanism::with(
                CKM_RSA_PKCS_OAEP,
                MechanismParams::RsaPkcsOaep(OaepParams {
                    hash_alg: h.ckm(),
                    mgf: h.mgf(),
                    source: CKZ_DATA_SPECIFIED,
                    source_data: label,
                }),
            ))
        }
        _ => Err(INVALID_PARAMETER),
    }
}

/// Which way `crypt` goes.
#[derive(Clone, Copy)]
pub(crate) enum Direction {
    /// `Encrypt`, with the public key.
    Encrypt,
    /// `Decrypt`, with the private key.
    Decrypt,
}

/// `Encrypt` (public key) and `Decrypt` (private key). A probe answers the modulus length,
/// the most either can produce.
pub(crate) fn crypt(
    dir: Direction,
    hp: usize,
    hk: usize,
    padding: Padding,
    input: &[u8],
    probe: bool,
    flags: u32,
) -> KResult<Out> {
    check_flags(flags, BCRYPT_PAD_NONE | BCRYPT_PAD_PKCS1 | BCRYPT_PAD_OAEP)?;
    let (p, k) = key(hp, hk)?;
    let r = ready(&k)?;
    let mech = cipher_mechanism(&r, padding)?;
    let size = modulus_len(&r);
    if probe {
        return Ok(Out::Size(size));
    }
    let mut out = Zeroizing::new(vec![0u8; size]);
    let n = match dir {
        Direction::Encrypt => {
            let key = r.public.ok_or(Status(NTE_BAD_KEY))?;
            let _op = p.op.lock();
            p.backend.encrypt_init(p.session, &mech, key)?;
            p.backend.encrypt(p.session, input, Some(&mut out))?
        }
        Direction::Decrypt => {
            let key = private_of(&p, &r)?;
            let _op = p.op.lock();
            p.backend.decrypt_init(p.session, &mech, key)?;
            p.backend.decrypt(p.session, input, Some(&mut out))?
        }
    };
    out.truncate(n);
    Ok(Out::Data(out))
}
