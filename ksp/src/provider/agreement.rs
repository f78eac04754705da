//! Secret agreement: `SecretAgreement` (ECDH in the firmware), `DeriveKey` over the agreed
//! secret, `FreeSecret`.

use bridge::BackendExt as _;
use std::sync::Arc;

use bridge::{Attribute, Mechanism, MechanismParams, Template};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::Out;
use super::alg::{Alg, Hash};
use super::firmware::private_of;
use super::properties::{param, utf16_bytes};
use super::public::{PublicKey, public_key};
use super::state::{STATE, Secret, check_flags, key, ready, secret};
use crate::blob;
use crate::error::{INVALID_PARAMETER, KResult, NOT_SUPPORTED, Status};
use crate::types::*;

/// `SecretAgreement`: ECDH in the firmware (`CKM_ECDH1_DERIVE`, `CKD_NULL`); Z is read back
/// from a session-only, non-sensitive derived secret, which is destroyed at once.
pub(crate) fn secret_agreement(hp: usize, hpriv: usize, hpub: usize, flags: u32) -> KResult<usize> {
    check_flags(flags, 0)?;
    let (p, kpriv) = key(hp, hpriv)?;
    let (_, kpub) = key(hp, hpub)?;
    let mine = ready(&kpriv)?;
    let theirs = ready(&kpub)?;
    let Alg::Ecdh(curve) = mine.alg else {
        return Err(Status(NTE_BAD_KEY));
    };
    if theirs.alg.curve() != Some(curve) {
        return Err(INVALID_PARAMETER);
    }
    let PublicKey::Ec { x, y, .. } = public_key(&p, &theirs)? else {
        return Err(INVALID_PARAMETER);
    };
    let point = blob::uncompressed_point(&x, &y);
    let base = private_of(&p, &mine)?;
    let field = CK_ULONG::try_from(curve.field_len()).map_err(|_| INVALID_PARAMETER)?;
    let template = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, CKK_GENERIC_SECRET))
        .with(Attribute::bool(CKA_TOKEN, false))
        .with(Attribute::bool(CKA_SENSITIVE, false))
        .with(Attribute::bool(CKA_EXTRACTABLE, true))
        .with(Attribute::ulong(CKA_VALUE_LEN, field));
    let mech = Mechanism::with(
        CKM_ECDH1_DERIVE,
        MechanismParams::Ecdh1Derive {
            kdf: CKD_NULL,
            shared_data: Vec::new(),
            public_data: point,
        },
    );
    let derived = {
        let _op = p.op.lock();
        p.backend.derive_key(p.session, &mech, base, &template)?
    };
    let z = p.need(derived, CKA_VALUE);
    {
        let _op = p.op.lock();
        let _ = p.backend.destroy_object(p.session, derived);
    }
    let z = z?;
    STATE
        .lock()
        .secrets
        .insert(Arc::new(Secret { provider: hp, z }))
}

/// `DeriveKey`: `HASH`, `HMAC` and `TRUNCATE` (raw secret, little-endian as CNG gives it).
pub(crate) fn derive_key(
    hp: usize,
    hs: usize,
    kdf: &str,
    params: &[(u32, Vec<u8>)],
    probe: bool,
    flags: u32,
) -> KResult<Out> {
    check_flags(flags, KDF_USE_SECRET_AS_HMAC_KEY_FLAG)?;
    let secret = secret(&STATE.lock(), hp, hs)?;
    let hash = match param(params, KDF_HASH_ALGORITHM) {
        Some(v) => Hash::from_name(&utf16_bytes(v)?)?,
        None => Hash::Sha1,
    };
    let prepend = param(params, KDF_SECRET_PREPEND).unwrap_or_default();
    let append = param(params, KDF_SECRET_APPEND).unwrap_or_default();
    let out: Zeroizing<Vec<u8>> = match kdf {
        "TRUNCATE" => {
            if probe {
                return Ok(Out::Size(secret.z.len()));
            }
            Zeroizing::new(secret.z.iter().rev().copied().collect())
        }
        "HASH" => {
            if probe {
                return Ok(Out::Size(hash.len()));
            }
            let mut ctx = aws_lc_rs::digest::Context::new(hash.digest_alg());
            ctx.update(prepend);
            ctx.update(&secret.z);
            ctx.update(append);
            Zeroizing::new(ctx.finish().as_ref().to_vec())
        }
        "HMAC" => {
            if probe {
                return Ok(Out::Size(hash.len()));
            }
            let key_bytes: &[u8] = if flags & KDF_USE_SECRET_AS_HMAC_KEY_FLAG != 0 {
                &secret.z
            } else {
                param(params, KDF_HMAC_KEY).unwrap_or_default()
            };
            let key = aws_lc_rs::hmac::Key::new(hash.hmac_alg(), key_bytes);
            let mut ctx = aws_lc_rs::hmac::Context::with_key(&key);
            ctx.update(prepend);
            ctx.update(&secret.z);
            ctx.update(append);
            Zeroizing::new(ctx.sign().as_ref().to_vec())
        }
        _ => return Err(NOT_SUPPORTED),
    };
    Ok(Out::Data(out))
}

/// `FreeSecret`.
pub(crate) fn free_secret(hp: usize, hs: usize) -> KResult<()> {
    let mut st = STATE.lock();
    secret(&st, hp, hs)?;
    st.secrets.remove(hs).map(|_| ())
}
