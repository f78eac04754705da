//! `ferrohsm migrate`: copies the extractable keys of one slot into another by wrapping them
//! under a fresh transport key, and names the keys that cannot move (non-extractable: they must
//! be re-created in the destination — the limit every real HSM migration runs into).
//!
//! The transport key: the destination makes an RSA-2048 key pair (session objects); its public
//! half is copied into the source, which makes a fresh AES-256 key and hands it over wrapped
//! with RSA-OAEP (SHA-1: the one hash every token's OAEP has). Then each key is wrapped in the
//! source under that AES key and unwrapped in the destination with the same attributes: secret
//! keys whose length is a multiple of 8 with `CKM_AES_KEY_WRAP` (RFC 3394, the same
//! everywhere), the others — private keys as PKCS#8 — with RFC 5649: `CKM_AES_KEY_WRAP_KWP` on a
//! token that lists it, else `CKM_AES_KEY_WRAP_PAD` (the number SoftHSMv2 and older tokens
//! gave RFC 5649). A private key's public key moves with it (its public attributes are copied).
//! The session objects are gone when the command ends.

use bridge::{
    AttrAnswer, AttrValue, Attribute, Backend, Error, Mechanism, MechanismParams, OaepParams,
    ObjectHandle, Router, SessionHandle, SlotId, Template, ULONG_SIZE,
};
use cryptoki_sys::*;

use crate::explain;

/// One side of the migration: a logged-in R/W session.
struct Side<'a> {
    r: &'a Router,
    s: SessionHandle,
    mechanisms: Vec<CK_MECHANISM_TYPE>,
}

impl Drop for Side<'_> {
    fn drop(&mut self) {
        let _ = self.r.close_session(self.s);
    }
}

impl<'a> Side<'a> {
    fn open(r: &'a Router, slot: SlotId, pin: &[u8], what: &str) -> Result<Self, String> {
        let s = r
            .open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
            .map_err(|e| explain(&format!("opening a session on the {what} slot"), &e))?;
        let side = Self {
            r,
            s,
            mechanisms: r.mechanism_list(slot).unwrap_or_default(),
        };
        match r.login(s, CKU_USER, Some(pin)) {
            Ok(()) | Err(Error::UserAlreadyLoggedIn) => {}
            Err(e) => return Err(explain(&format!("logging in to the {what} slot"), &e)),
        }
        Ok(side)
    }

    fn has(&self, m: CK_MECHANISM_TYPE) -> bool {
        self.mechanisms.contains(&m)
    }

    fn find(&self, template: &Template) -> Result<Vec<ObjectHandle>, String> {
        self.r
            .find_objects_init(self.s, template)
            .map_err(|e| explain("searching", &e))?;
        let found = self.r.find_objects(self.s, usize::MAX);
        let _ = self.r.find_objects_final(self.s);
        found.map_err(|e| explain("searching", &e))
    }

    /// The raw values of `types` (None where unavailable).
    fn attrs(&self, o: ObjectHandle, types: &[CK_ATTRIBUTE_TYPE]) -> Vec<Option<Vec<u8>>> {
        let answers = self
            .r
            .get_attribute_value(self.s, o, types)
            .unwrap_or_default();
        (0..types.len())
            .map(|i| match answers.get(i) {
                Some(AttrAnswer::Value(AttrValue::Bytes(b))) => Some(b.clone()),
                _ => None,
            })
            .collect()
    }
}

fn ulong(v: &Option<Vec<u8>>) -> Option<CK_ULONG> {
    v.as_ref()
        .and_then(|b| <[u8; ULONG_SIZE]>::try_from(b.as_slice()).ok())
        .map(CK_ULONG::from_ne_bytes)
}

fn flag(v: &Option<Vec<u8>>) -> bool {
    v.as_ref().and_then(|b| b.first()).is_some_and(|x| *x != 0)
}

fn text(v: &Option<Vec<u8>>) -> String {
    v.as_ref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
}

fn oaep_sha1() -> Mechanism {
    Mechanism::with(
        CKM_RSA_PKCS_OAEP,
        MechanismParams::RsaPkcsOaep(OaepParams {
            hash_alg: CKM_SHA_1,
            mgf: CKG_MGF1_SHA1,
            source: CKZ_DATA_SPECIFIED,
            source_data: Vec::new(),
        }),
    )
}

/// What happened to each key.
#[derive(Default)]
struct Outcome {
    moved: Vec<String>,
    present: Vec<String>,
    stuck: Vec<String>,
    failed: Vec<String>,
}

/// Runs the migration; prints the report. Fails if any extractable key could not be moved.
pub(crate) fn migrate(
    r: &Router,
    from: SlotId,
    to: SlotId,
    label: Option<&str>,
    from_pin: &[u8],
    to_pin: &[u8],
) -> Result<(), String> {
    if from == to {
        return Err("--from and --to name the same slot".to_owned());
    }
    let src = Side::open(r, from, from_pin, "source")?;
    let dst = Side::open(r, to, to_pin, "destination")?;

    let mut keys = Vec::new();
    for class in [CKO_SECRET_KEY, CKO_PRIVATE_KEY] {
        let mut t = Template::new().with(Attribute::ulong(CKA_CLASS, class));
        if let Some(l) = label {
            t = t.with(Attribute::bytes(CKA_LABEL, l.as_bytes().to_vec()));
        }
        for k in src.find(&t)? {
            // Token objects only: session objects of this run are not keys to move.
            let a = src.attrs(k, &[CKA_TOKEN]);
            if a.first().is_some_and(flag) {
                keys.push((class, k));
            }
        }
    }
    if keys.is_empty() {
        println!("No keys to migrate.");
        return Ok(());
    }

    let transport = transport_key(&src, &dst)?;
    let mut out = Outcome::default();
    for (class, k) in keys {
        move_key(&src, &dst, &transport, class, k, &mut out);
    }

    for m in &out.moved {
        println!("migrated   {m}");
    }
    for p in &out.present {
        println!("skipped    {p}: the destination already has it (same class, label and id)");
    }
    for s in &out.stuck {
        println!("NOT MOVED  {s}: not extractable; re-create it in the destination");
    }
    for f in &out.failed {
        println!("FAILED     {f}");
    }
    println!(
        "{} migrated, {} already there, {} not extractable (re-create), {} failed",
        out.moved.len(),
        out.present.len(),
        out.stuck.len(),
        out.failed.len()
    );
    if out.failed.is_empty() {
        Ok(())
    } else {
        Err(format!("{} keys could not be migrated", out.failed.len()))
    }
}

/// The AES transport key in both tokens: (source handle, destination handle).
fn transport_key(src: &Side<'_>, dst: &Side<'_>) -> Result<(ObjectHandle, ObjectHandle), String> {
    // The destination's RSA key pair, as session objects.
    let public = Template::new()
        .with(Attribute::bool(CKA_TOKEN, false))
        .with(Attribute::ulong(CKA_MODULUS_BITS, 2048))
        .with(Attribute::bytes(CKA_PUBLIC_EXPONENT, vec![1, 0, 1]))
        .with(Attribute::bool(CKA_WRAP, true))
        .with(Attribute::bool(CKA_ENCRYPT, true));
    let private = Template::new()
        .with(Attribute::bool(CKA_TOKEN, false))
        .with(Attribute::bool(CKA_SENSITIVE, true))
        .with(Attribute::bool(CKA_UNWRAP, true))
        .with(Attribute::bool(CKA_DECRYPT, true));
    let (dst_pub, dst_priv) = dst
        .r
        .generate_key_pair(
            dst.s,
            &Mechanism::new(CKM_RSA_PKCS_KEY_PAIR_GEN),
            &public,
            &private,
        )
        .map_err(|e| explain("making the transport key pair in the destination", &e))?;
    let v = dst.attrs(dst_pub, &[CKA_MODULUS, CKA_PUBLIC_EXPONENT]);
    let (Some(modulus), Some(exponent)) =
        (v.first().cloned().flatten(), v.get(1).cloned().flatten())
    else {
        return Err("the destination's transport public key cannot be read".to_owned());
    };
    let src_pub = src
        .r
        .create_object(
            src.s,
            &Template::new()
                .with(Attribute::ulong(CKA_CLASS, CKO_PUBLIC_KEY))
                .with(Attribute::ulong(CKA_KEY_TYPE, CKK_RSA))
                .with(Attribute::bool(CKA_TOKEN, false))
                .with(Attribute::bool(CKA_WRAP, true))
                .with(Attribute::bool(CKA_ENCRYPT, true))
                .with(Attribute::bytes(CKA_MODULUS, modulus))
                .with(Attribute::bytes(CKA_PUBLIC_EXPONENT, exponent)),
        )
        .map_err(|e| explain("copying the transport public key into the source", &e))?;
    let aes = src
        .r
        .generate_key(
            src.s,
            &Mechanism::new(CKM_AES_KEY_GEN),
            &Template::new()
                .with(Attribute::bool(CKA_TOKEN, false))
                .with(Attribute::ulong(CKA_VALUE_LEN, 32))
                .with(Attribute::bool(CKA_SENSITIVE, true))
                .with(Attribute::bool(CKA_EXTRACTABLE, true))
                .with(Attribute::bool(CKA_WRAP, true))
                .with(Attribute::bool(CKA_ENCRYPT, true)),
        )
        .map_err(|e| explain("making the transport key in the source", &e))?;
    let wrapped = wrap(src, &oaep_sha1(), src_pub, aes)
        .map_err(|e| explain("wrapping the transport key", &e))?;
    let dst_aes = dst
        .r
        .unwrap_key(
            dst.s,
            &oaep_sha1(),
            dst_priv,
            &wrapped,
            &Template::new()
                .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
                .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES))
                .with(Attribute::bool(CKA_TOKEN, false))
                .with(Attribute::bool(CKA_SENSITIVE, true))
                .with(Attribute::bool(CKA_EXTRACTABLE, false))
                .with(Attribute::bool(CKA_UNWRAP, true))
                .with(Attribute::bool(CKA_DECRYPT, true)),
        )
        .map_err(|e| explain("unwrapping the transport key in the destination", &e))?;
    Ok((aes, dst_aes))
}

/// `C_WrapKey` with the two-call length convention.
fn wrap(
    side: &Side<'_>,
    mech: &Mechanism,
    wrapping: ObjectHandle,
    key: ObjectHandle,
) -> Result<Vec<u8>, Error> {
    let n = side.r.wrap_key(side.s, mech, wrapping, key, None)?;
    let mut buf = vec![0u8; n];
    let n = side
        .r
        .wrap_key(side.s, mech, wrapping, key, Some(&mut buf))?;
    buf.truncate(n);
    Ok(buf)
}

/// The RFC 5649 mechanism a side knows it by.
fn rfc5649(side: &Side<'_>) -> CK_MECHANISM_TYPE {
    if side.has(CKM_AES_KEY_WRAP_KWP) {
        CKM_AES_KEY_WRAP_KWP
    } else {
        CKM_AES_KEY_WRAP_PAD
    }
}

const KEY_USAGE: &[CK_ATTRIBUTE_TYPE] = &[
    CKA_ENCRYPT,
    CKA_DECRYPT,
    CKA_SIGN,
    CKA_VERIFY,
    CKA_WRAP,
    CKA_UNWRAP,
    CKA_DERIVE,
];

fn move_key(
    src: &Side<'_>,
    dst: &Side<'_>,
    transport: &(ObjectHandle, ObjectHandle),
    class: CK_OBJECT_CLASS,
    k: ObjectHandle,
    out: &mut Outcome,
) {
    let mut types = vec![
        CKA_LABEL,
        CKA_ID,
        CKA_KEY_TYPE,
        CKA_EXTRACTABLE,
        CKA_SENSITIVE,
        CKA_PRIVATE,
        CKA_VALUE_LEN,
    ];
    types.extend_from_slice(KEY_USAGE);
    let a = src.attrs(k, &types);
    let get = |i: usize| a.get(i).cloned().flatten();
    let name = format!(
        "{} {:?} (id {})",
        if class == CKO_SECRET_KEY {
            "secret key"
        } else {
            "private key"
        },
        text(&get(0)),
        get(1)
            .map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>())
            .unwrap_or_default()
    );
    let mut same = Template::new().with(Attribute::ulong(CKA_CLASS, class));
    for (i, ty) in [(0, CKA_LABEL), (1, CKA_ID)] {
        if let Some(v) = get(i) {
            same = same.with(Attribute::bytes(ty, v));
        }
    }
    if dst.find(&same).is_ok_and(|found| !found.is_empty()) {
        out.present.push(name);
        return;
    }
    if !flag(&get(3)) {
        out.stuck.push(name);
        return;
    }
    let Some(key_type) = ulong(&get(2)) else {
        out.failed
            .push(format!("{name}: its key type cannot be read"));
        return;
    };
    let whole_blocks =
        class == CKO_SECRET_KEY && ulong(&get(6)).is_some_and(|n| n % 8 == 0 && n >= 16);
    let (wrap_mech, unwrap_mech) = if whole_blocks {
        (CKM_AES_KEY_WRAP, CKM_AES_KEY_WRAP)
    } else {
        (rfc5649(src), rfc5649(dst))
    };
    let wrapped = match wrap(src, &Mechanism::new(wrap_mech), transport.0, k) {
        Ok(w) => w,
        Err(e) => {
            out.failed
                .push(format!("{name}: {}", explain("wrapping", &e)));
            return;
        }
    };
    let mut t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, class))
        .with(Attribute::ulong(CKA_KEY_TYPE, key_type))
        .with(Attribute::bool(CKA_TOKEN, true))
        .with(Attribute::bool(CKA_PRIVATE, flag(&get(5))))
        .with(Attribute::bool(CKA_SENSITIVE, flag(&get(4))))
        .with(Attribute::bool(CKA_EXTRACTABLE, true));
    for (i, ty) in [(0, CKA_LABEL), (1, CKA_ID)] {
        if let Some(v) = get(i) {
            t = t.with(Attribute::bytes(ty, v));
        }
    }
    for (i, ty) in KEY_USAGE.iter().enumerate() {
        let usable = if class == CKO_PRIVATE_KEY {
            matches!(*ty, CKA_DECRYPT | CKA_SIGN | CKA_UNWRAP | CKA_DERIVE)
        } else {
            true
        };
        if usable {
            t = t.with(Attribute::bool(*ty, flag(&get(7 + i))));
        }
    }
    if let Err(e) = dst.r.unwrap_key(
        dst.s,
        &Mechanism::new(unwrap_mech),
        transport.1,
        &wrapped,
        &t,
    ) {
        out.failed.push(format!(
            "{name}: {}",
            explain("unwrapping in the destination", &e)
        ));
        return;
    }
    if class == CKO_PRIVATE_KEY {
        if let Err(e) = copy_public(src, dst, get(1), key_type) {
            out.failed
                .push(format!("{name}: moved, but its public key did not: {e}"));
            return;
        }
    }
    out.moved.push(name);
}

/// Copies the public key with CKA_ID `id` (its public attributes) into the destination.
fn copy_public(
    src: &Side<'_>,
    dst: &Side<'_>,
    id: Option<Vec<u8>>,
    key_type: CK_KEY_TYPE,
) -> Result<(), String> {
    let Some(id) = id else {
        return Ok(());
    };
    let found = src.find(
        &Template::new()
            .with(Attribute::ulong(CKA_CLASS, CKO_PUBLIC_KEY))
            .with(Attribute::bytes(CKA_ID, id.clone())),
    )?;
    let Some(p) = found.first() else {
        return Ok(());
    };
    let material: &[CK_ATTRIBUTE_TYPE] = match key_type {
        CKK_RSA => &[CKA_MODULUS, CKA_PUBLIC_EXPONENT],
        _ => &[CKA_EC_PARAMS, CKA_EC_POINT],
    };
    let mut types = vec![CKA_LABEL, CKA_VERIFY, CKA_ENCRYPT, CKA_WRAP];
    types.extend_from_slice(material);
    let a = src.attrs(*p, &types);
    let mut t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_PUBLIC_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, key_type))
        .with(Attribute::bool(CKA_TOKEN, true))
        .with(Attribute::bytes(CKA_ID, id));
    if let Some(l) = a.first().cloned().flatten() {
        t = t.with(Attribute::bytes(CKA_LABEL, l));
    }
    for (i, ty) in [(1, CKA_VERIFY), (2, CKA_ENCRYPT), (3, CKA_WRAP)] {
        t = t.with(Attribute::bool(ty, a.get(i).is_some_and(flag)));
    }
    for (i, ty) in material.iter().enumerate() {
        let v = a
            .get(4 + i)
            .cloned()
            .flatten()
            .ok_or("the public key's material cannot be read")?;
        t = t.with(Attribute::bytes(*ty, v));
    }
    dst.r
        .create_object(dst.s, &t)
        .map(|_| ())
        .map_err(|e| explain("creating the public key", &e))
}
