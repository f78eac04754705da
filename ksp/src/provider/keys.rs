//! Key handles and names: opening a key by name, creating and generating one, deleting and
//! freeing it, and what a pair of firmware objects is as a CNG key.

use bridge::BackendExt as _;
use bridge::{Attribute, Mechanism, ObjectHandle, Template};
use cryptoki_sys::*;

use super::alg::Alg;
use super::properties::MAX_NAME_CHARS;
use super::state::{
    Key, KeyState, Pending, Provider, Ready, STATE, check_flags, key, new_key, provider,
};
use crate::blob::{self, Curve};
use crate::error::{INVALID_PARAMETER, KResult, NOT_SUPPORTED, Status};
use crate::types::*;

/// The stable `CKA_ID` of a named key: the first 16 bytes of SHA-256 over the UTF-8 name, so a
/// PKCS#11 application finds the same id for the same name in every process.
pub(super) fn key_id(name: &str) -> Vec<u8> {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes());
    d.as_ref().iter().take(16).copied().collect()
}

/// The `CKA_ID` of a new key: [`key_id`] of its name, or 16 bytes from the firmware's generator
/// for an unnamed (ephemeral) key.
pub(super) fn new_id(p: &Provider, name: Option<&str>) -> KResult<Vec<u8>> {
    Ok(match name {
        Some(n) => key_id(n),
        None => {
            let mut id = vec![0u8; 16];
            p.backend.generate_random(p.session, &mut id)?;
            id
        }
    })
}

/// Makes room for a new key named `name`: the objects of either class under that label go if
/// the caller said to overwrite, else `NTE_EXISTS`.
pub(super) fn make_room(p: &Provider, name: &str, overwrite: bool) -> KResult<()> {
    let existing: Vec<ObjectHandle> = [CKO_PRIVATE_KEY, CKO_PUBLIC_KEY]
        .into_iter()
        .map(|c| p.find_labelled(c, name))
        .collect::<KResult<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    if existing.is_empty() {
        return Ok(());
    }
    if !overwrite {
        return Err(Status(NTE_EXISTS));
    }
    let _op = p.op.lock();
    for h in existing {
        p.backend.destroy_object(p.session, h)?;
    }
    Ok(())
}

/// The key a pair of firmware objects makes (either may be missing, not both).
pub(super) fn describe(
    p: &Provider,
    name: Option<String>,
    private: Option<ObjectHandle>,
    public: Option<ObjectHandle>,
) -> KResult<Ready> {
    let main = private.or(public).ok_or(Status(NTE_BAD_KEYSET))?;
    let key_type = p.ulong(main, CKA_KEY_TYPE)?.ok_or(Status(NTE_BAD_KEY))?;
    let id = p
        .attr(main, CKA_ID)?
        .map(|v| v.to_vec())
        .unwrap_or_default();
    let (sign, decrypt, derive) = match private {
        Some(k) => (
            p.flag(k, CKA_SIGN)?,
            p.flag(k, CKA_DECRYPT)?,
            p.flag(k, CKA_DERIVE)?,
        ),
        None => (true, true, false),
    };
    let (alg, bits) = match key_type {
        CKK_RSA => {
            let n = p.need(main, CKA_MODULUS)?;
            let bits = u32::try_from(blob::trim(&n).len() * 8).map_err(|_| Status(NTE_BAD_KEY))?;
            (Alg::Rsa, bits)
        }
        CKK_EC => {
            let params = p.need(main, CKA_EC_PARAMS)?;
            let curve = Curve::from_oid_der(&params).ok_or(NOT_SUPPORTED)?;
            let alg = if derive && !sign {
                Alg::Ecdh(curve)
            } else {
                Alg::Ecdsa(curve)
            };
            (alg, curve.bits())
        }
        _ => return Err(NOT_SUPPORTED),
    };
    let mut usage = 0;
    if sign {
        usage |= NCRYPT_ALLOW_SIGNING_FLAG;
    }
    if decrypt && alg == Alg::Rsa {
        usage |= NCRYPT_ALLOW_DECRYPT_FLAG;
    }
    if derive {
        usage |= NCRYPT_ALLOW_KEY_AGREEMENT_FLAG;
    }
    let export_policy = match private {
        Some(k) => {
            let extractable = p.flag(k, CKA_EXTRACTABLE)?;
            let sensitive = p.flag(k, CKA_SENSITIVE)?;
            match (extractable, sensitive) {
                (true, false) => NCRYPT_ALLOW_EXPORT_FLAG | NCRYPT_ALLOW_PLAINTEXT_EXPORT_FLAG,
                (true, true) => NCRYPT_ALLOW_EXPORT_FLAG,
                _ => 0,
            }
        }
        None => NCRYPT_ALLOW_EXPORT_FLAG | NCRYPT_ALLOW_PLAINTEXT_EXPORT_FLAG,
    };
    Ok(Ready {
        alg,
        name,
        id,
        private,
        public,
        export_policy,
        usage,
        bits,
        ephemeral: false,
    })
}

/// `OpenKey`: a key by name (its `CKA_LABEL`), whichever API created it.
pub(crate) fn open_key(hp: usize, name: &str, flags: u32) -> KResult<usize> {
    check_flags(flags, NCRYPT_MACHINE_KEY_FLAG)?;
    let p = provider(hp)?;
    let private = p.find_labelled(CKO_PRIVATE_KEY, name)?.first().copied();
    let mut public = p.find_labelled(CKO_PUBLIC_KEY, name)?.first().copied();
    if private.is_none() && public.is_none() {
        return Err(Status(NTE_BAD_KEYSET));
    }
    if public.is_none() {
        if let Some(k) = private {
            // The public half under another label: the same CKA_ID.
            if let Some(id) = p.attr(k, CKA_ID)? {
                public = p
                    .find(
                        &Template::new()
                            .with(Attribute::ulong(CKA_CLASS, CKO_PUBLIC_KEY))
                            .with(Attribute::bytes(CKA_ID, id.to_vec())),
                    )?
                    .first()
                    .copied();
            }
        }
    }
    let r = describe(&p, Some(name.to_owned()), private, public)?;
    new_key(hp, KeyState::Ready(r))
}

/// `CreatePersistedKey`: a pending key; `FinalizeKey` makes it.
pub(crate) fn create_persisted_key(
    hp: usize,
    alg: &str,
    name: Option<&str>,
    flags: u32,
) -> KResult<usize> {
    check_flags(flags, NCRYPT_MACHINE_KEY_FLAG | NCRYPT_OVERWRITE_KEY_FLAG)?;
    let _ = provider(hp)?;
    let alg = Alg::from_name(alg).ok_or(NOT_SUPPORTED)?;
    if let Some(n) = name {
        if n.is_empty() || n.encode_utf16().count() > MAX_NAME_CHARS as usize {
            return Err(INVALID_PARAMETER);
        }
    }
    new_key(
        hp,
        KeyState::Pending(Pending {
            alg,
            name: name.map(str::to_owned),
            length: None,
            export_policy: 0,
            usage: None,
            overwrite: flags & NCRYPT_OVERWRITE_KEY_FLAG != 0,
        }),
    )
}

/// `FinalizeKey`: the firmware generates the pair, as token objects for a named key.
pub(crate) fn finalize_key(hp: usize, hk: usize, flags: u32) -> KResult<()> {
    check_flags(
        flags,
        NCRYPT_NO_KEY_VALIDATION | NCRYPT_WRITE_KEY_TO_LEGACY_STORE_FLAG,
    )?;
    let (p, k) = key(hp, hk)?;
    let mut st = k.state.lock();
    let KeyState::Pending(pending) = &*st else {
        return Err(Status(NTE_BAD_KEY_STATE));
    };
    let pending = pending.clone();
    let r = generate(&p, &pending)?;
    *st = KeyState::Ready(r);
    Ok(())
}

fn generate(p: &Provider, k: &Pending) -> KResult<Ready> {
    let persisted = k.name.is_some();
    if let Some(name) = &k.name {
        make_room(p, name, k.overwrite)?;
    }
    let id = new_id(p, k.name.as_deref())?;
    let usage = k.usage.unwrap_or_else(|| k.alg.default_usage());
    let sign = usage & NCRYPT_ALLOW_SIGNING_FLAG != 0;
    let decrypt = usage & NCRYPT_ALLOW_DECRYPT_FLAG != 0;
    let agree = usage & NCRYPT_ALLOW_KEY_AGREEMENT_FLAG != 0;
    let plaintext = k.export_policy & NCRYPT_ALLOW_PLAINTEXT_EXPORT_FLAG != 0;
    let exportable = plaintext || k.export_policy & NCRYPT_ALLOW_EXPORT_FLAG != 0;
    let mut public = Template::new()
        .with(Attribute::bool(CKA_TOKEN, persisted))
        .with(Attribute::bool(CKA_PRIVATE, false))
        .with(Attribute::bytes(CKA_ID, id.clone()));
    let mut private = Template::new()
        .with(Attribute::bool(CKA_TOKEN, persisted))
        .with(Attribute::bool(CKA_PRIVATE, true))
        .with(Attribute::bool(CKA_SENSITIVE, !plaintext))
        .with(Attribute::bool(CKA_EXTRACTABLE, exportable))
        .with(Attribute::bytes(CKA_ID, id.clone()));
    if let Some(n) = &k.name {
        public = public.with(Attribute::bytes(CKA_LABEL, n.as_bytes().to_vec()));
        private = private.with(Attribute::bytes(CKA_LABEL, n.as_bytes().to_vec()));
    }
    let (mech, bits) = match k.alg {
        Alg::Rsa => {
            let bits = k.length.unwrap_or(2048);
            public = public
                .with(Attribute::ulong(CKA_MODULUS_BITS, CK_ULONG::from(bits)))
                .with(Attribute::bytes(CKA_PUBLIC_EXPONENT, vec![1, 0, 1]))
                .with(Attribute::bool(CKA_VERIFY, sign))
                .with(Attribute::bool(CKA_ENCRYPT, decrypt))
                .with(Attribute::bool(CKA_WRAP, decrypt));
            // A decryption key is also the KEK of `PKCS11RsaAesWrapBlob` imports (BYOK).
            private = private
                .with(Attribute::bool(CKA_SIGN, sign))
                .with(Attribute::bool(CKA_DECRYPT, decrypt))
                .with(Attribute::bool(CKA_UNWRAP, decrypt));
            (CKM_RSA_PKCS_KEY_PAIR_GEN, bits)
        }
        Alg::Ecdsa(c) | Alg::Ecdh(c) => {
            let is_ecdh = matches!(k.alg, Alg::Ecdh(_));
            public = public
                .with(Attribute::bytes(CKA_EC_PARAMS, c.oid_der()?))
                .with(Attribute::bool(CKA_VERIFY, sign && !is_ecdh));
            private = private
                .with(Attribute::bool(CKA_SIGN, sign && !is_ecdh))
                .with(Attribute::bool(CKA_DERIVE, agree || is_ecdh));
            (CKM_EC_KEY_PAIR_GEN, c.bits())
        }
    };
    let (pub_h, priv_h) = {
        let _op = p.op.lock();
        p.backend
            .generate_key_pair(p.session, &Mechanism::new(mech), &public, &private)?
    };
    Ok(Ready {
        alg: k.alg,
        name: k.name.clone(),
        id,
        private: Some(priv_h),
        public: Some(pub_h),
        export_policy: k.export_policy,
        usage,
        bits,
        ephemeral: !persisted,
    })
}

/// `DeleteKey`: the firmware objects go, and so does the handle.
pub(crate) fn delete_key(hp: usize, hk: usize, flags: u32) -> KResult<()> {
    check_flags(flags, 0)?;
    let (p, k) = key(hp, hk)?;
    if let KeyState::Ready(r) = &*k.state.lock() {
        let _op = p.op.lock();
        for h in [r.private, r.public].into_iter().flatten() {
            p.backend.destroy_object(p.session, h)?;
        }
    }
    STATE.lock().keys.remove(hk).map(|_| ())
}

/// `FreeKey`: the handle dies; an ephemeral key's session objects with it.
pub(crate) fn free_key(hp: usize, hk: usize) -> KResult<()> {
    let (p, k) = key(hp, hk)?;
    STATE.lock().keys.remove(hk)?;
    drop_ephemeral(&p, &k);
    Ok(())
}

/// What goes with a key's handle: an ephemeral key's session objects (errors ignored).
pub(super) fn drop_ephemeral(p: &Provider, k: &Key) {
    if let KeyState::Ready(r) = &*k.state.lock() {
        if r.ephemeral {
            let _op = p.op.lock();
            for h in [r.private, r.public].into_iter().flatten() {
                let _ = p.backend.destroy_object(p.session, h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_ids_are_stable() {
        assert_eq!(key_id("a"), key_id("a"));
        assert_ne!(key_id("a"), key_id("b"));
        assert_eq!(key_id("a").len(), 16);
    }
}
