//! Bring your own key: `ferrohsm byok create-kek | import | export`.
//!
//! The file format is Azure Key Vault's `.byok` (JSON: `schema_version` "1.0.0", `header.kid`
//! naming the key exchange key, `header.alg` "dir", `header.enc` "CKM_RSA_AES_KEY_WRAP",
//! `ciphertext` base64url, `generator`). The ciphertext is `CKM_RSA_AES_KEY_WRAP`: RSA-OAEP of an
//! ephemeral AES-256 key, then AES key wrap with padding (RFC 5649) of the target — PKCS#8 for a
//! private key, the raw value for a secret key. The unwrap happens inside the token
//! (`C_UnwrapKey`): the key exists in clear nowhere else.

use base16ct::lower::encode_string as hex;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bridge::BackendExt as _;
use bridge::{
    AttrAnswer, AttrValue, Attribute, Error, Mechanism, MechanismParams, OaepParams, ObjectHandle,
    Router, SessionHandle, SlotId, Template,
};
use cryptoki_sys::*;
use der::asn1::{BitStringRef, ObjectIdentifier, OctetStringRef, UintRef};
use der::{Decode, Encode};
use serde_json::{Value, json};
use spki::SubjectPublicKeyInfoRef;

use crate::explain;

/// A logged-in R/W session on a token.
pub(crate) struct Token<'a> {
    r: &'a Router,
    s: SessionHandle,
}

impl Drop for Token<'_> {
    fn drop(&mut self) {
        let _ = self.r.close_session(self.s);
    }
}

impl<'a> Token<'a> {
    pub(crate) fn open(r: &'a Router, slot: SlotId, pin: &[u8]) -> Result<Self, String> {
        let s = r
            .open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
            .map_err(|e| explain("opening a session", &e))?;
        let t = Self { r, s };
        match r.login(s, CKU_USER, Some(pin)) {
            Ok(()) | Err(Error::UserAlreadyLoggedIn) => Ok(t),
            Err(e) => Err(explain("logging in", &e)),
        }
    }

    fn find(&self, template: &Template) -> Result<Vec<ObjectHandle>, String> {
        self.r
            .find_objects_init(self.s, template)
            .map_err(|e| explain("searching", &e))?;
        let found = self.r.find_objects(self.s, usize::MAX);
        let _ = self.r.find_objects_final(self.s);
        found.map_err(|e| explain("searching", &e))
    }

    fn bytes(&self, o: ObjectHandle, ty: CK_ATTRIBUTE_TYPE) -> Option<Vec<u8>> {
        match self.r.get_attribute_value(self.s, o, &[ty]).ok()?.first() {
            Some(AttrAnswer::Value(AttrValue::Bytes(b))) => Some(b.clone()),
            _ => None,
        }
    }

    /// The one object of `class` labelled `label`.
    fn by_label(&self, class: CK_OBJECT_CLASS, label: &str) -> Result<ObjectHandle, String> {
        let found = self.find(
            &Template::new()
                .with(Attribute::ulong(CKA_CLASS, class))
                .with(Attribute::bytes(CKA_LABEL, label.as_bytes().to_vec())),
        )?;
        match found.as_slice() {
            [one] => Ok(*one),
            [] => Err(format!("no key labelled {label:?} in the token")),
            _ => Err(format!(
                "several keys are labelled {label:?}; labels must be unique here"
            )),
        }
    }
}

// ---------------------------------------------------------------- SPKI and PEM

/// A DER encoding failed (it cannot for keys of sane sizes).
fn encoding(e: der::Error) -> String {
    format!("encoding the public key: {e}")
}

/// The SubjectPublicKeyInfo of the RSA public key `(modulus, exponent)` (big-endian).
fn rsa_spki(modulus: &[u8], exponent: &[u8]) -> Result<Vec<u8>, String> {
    let key = pkcs1::RsaPublicKey {
        modulus: UintRef::new(modulus).map_err(encoding)?,
        public_exponent: UintRef::new(exponent).map_err(encoding)?,
    }
    .to_der()
    .map_err(encoding)?;
    SubjectPublicKeyInfoRef {
        algorithm: pkcs1::ALGORITHM_ID,
        subject_public_key: BitStringRef::from_bytes(&key).map_err(encoding)?,
    }
    .to_der()
    .map_err(encoding)
}

/// (modulus, exponent) of an RSA SubjectPublicKeyInfo in strict DER (`rsaEncryption` with
/// NULL or absent parameters, as the `rsa` crate reads it).
fn parse_rsa_spki(spki: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let info = SubjectPublicKeyInfoRef::from_der(spki).ok()?;
    if info.algorithm.oid != pkcs1::ALGORITHM_OID
        || info.algorithm.parameters.is_some_and(|p| !p.is_null())
    {
        return None;
    }
    let key = pkcs1::RsaPublicKey::from_der(info.subject_public_key.as_bytes()?).ok()?;
    Some((
        key.modulus.as_bytes().to_vec(),
        key.public_exponent.as_bytes().to_vec(),
    ))
}

/// The EC point (`04 ‖ X ‖ Y`) of a SubjectPublicKeyInfo in strict DER.
fn spki_point(spki: &[u8]) -> Option<&[u8]> {
    SubjectPublicKeyInfoRef::from_der(spki)
        .ok()?
        .subject_public_key
        .as_bytes()
}

/// `der` as a PEM document labelled `label` (64-column lines, LF).
fn pem(label: &str, der: &[u8]) -> Result<String, String> {
    bridge::pem::encode(label, der).map_err(|e| e.to_string())
}

/// The contents of the PEM document `text` if it is labelled `label` (see [`bridge::pem`]).
fn unpem(text: &str, label: &str) -> Option<Vec<u8>> {
    let (l, der) = bridge::pem::decode(text).ok()?;
    (l == label).then(|| der.to_vec())
}

fn random_id(t: &Token<'_>) -> Result<Vec<u8>, String> {
    let mut id = vec![0u8; 8];
    t.r.generate_random(t.s, &mut id)
        .map_err(|e| explain("drawing a key id", &e))?;
    Ok(id)
}

fn rsa_aes(hash: CK_MECHANISM_TYPE, mgf: CK_RSA_PKCS_MGF_TYPE) -> Mechanism {
    Mechanism::with(
        CKM_RSA_AES_KEY_WRAP,
        MechanismParams::RsaAesKeyWrap {
            aes_key_bits: 256,
            oaep: OaepParams {
                hash_alg: hash,
                mgf,
                source: CKZ_DATA_SPECIFIED,
                source_data: Vec::new(),
            },
        },
    )
}

// ---------------------------------------------------------------- create-kek

/// `byok create-kek`: an RSA key that can only unwrap; writes its public key as PEM.
pub(crate) fn create_kek(
    t: &Token<'_>,
    label: &str,
    bits: CK_ULONG,
    out: &bridge::output::OutputFile,
) -> Result<(), String> {
    let existing = t.find(
        &Template::new()
            .with(Attribute::ulong(CKA_CLASS, CKO_PRIVATE_KEY))
            .with(Attribute::bytes(CKA_LABEL, label.as_bytes().to_vec())),
    )?;
    if !existing.is_empty() {
        return Err(format!("a key labelled {label:?} exists already"));
    }
    let id = random_id(t)?;
    let public = Template::new()
        .with(Attribute::bool(CKA_TOKEN, true))
        .with(Attribute::ulong(CKA_MODULUS_BITS, bits))
        .with(Attribute::bytes(CKA_PUBLIC_EXPONENT, vec![1, 0, 1]))
        .with(Attribute::bytes(CKA_LABEL, label.as_bytes().to_vec()))
        .with(Attribute::bytes(CKA_ID, id.clone()))
        .with(Attribute::bool(CKA_WRAP, true))
        .with(Attribute::bool(CKA_ENCRYPT, false))
        .with(Attribute::bool(CKA_VERIFY, false));
    let private = Template::new()
        .with(Attribute::bool(CKA_TOKEN, true))
        .with(Attribute::bool(CKA_PRIVATE, true))
        .with(Attribute::bool(CKA_SENSITIVE, true))
        .with(Attribute::bool(CKA_EXTRACTABLE, false))
        .with(Attribute::bytes(CKA_LABEL, label.as_bytes().to_vec()))
        .with(Attribute::bytes(CKA_ID, id.clone()))
        .with(Attribute::bool(CKA_UNWRAP, true))
        .with(Attribute::bool(CKA_DECRYPT, false))
        .with(Attribute::bool(CKA_SIGN, false))
        .with(Attribute::bool(CKA_SIGN_RECOVER, false))
        .with(Attribute::bool(CKA_DERIVE, false))
        // As in Azure's model, the KEK can only import: RSA-AES key wrap alone (a plain OAEP
        // unwrap of the file's first block would hand out the ephemeral AES key), and what it
        // imports is sensitive and never extractable.
        .with(Attribute::bytes(
            CKA_ALLOWED_MECHANISMS,
            CKM_RSA_AES_KEY_WRAP.to_ne_bytes().to_vec(),
        ))
        .with(Attribute::template(
            CKA_UNWRAP_TEMPLATE,
            bridge::protection::default_unwrap_template(),
        ));
    let (pub_key, _) =
        t.r.generate_key_pair(
            t.s,
            &Mechanism::new(CKM_RSA_PKCS_KEY_PAIR_GEN),
            &public,
            &private,
        )
        .map_err(|e| explain("generating the key exchange key", &e))?;
    let (Some(n), Some(e)) = (
        t.bytes(pub_key, CKA_MODULUS),
        t.bytes(pub_key, CKA_PUBLIC_EXPONENT),
    ) else {
        return Err("the new key's public half cannot be read".to_owned());
    };
    out.write(pem("PUBLIC KEY", &rsa_spki(&n, &e)?)?.as_bytes())
        .map_err(|e| e.to_string())?;
    println!(
        "Key exchange key {label:?} created (id {}); public key in {}.",
        hex(&id),
        out.display()
    );
    println!("It can only unwrap: import .byok files made for kid {label:?}.");
    Ok(())
}

// ---------------------------------------------------------------- import

/// The target of an import.
#[derive(Clone, Copy)]
pub(crate) enum KeyKind {
    Rsa,
    /// The curve's OID.
    Ec(ObjectIdentifier),
    Aes,
}

pub(crate) fn parse_key_type(s: &str) -> Result<KeyKind, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "rsa" => KeyKind::Rsa,
        "ec:p256" | "ec:p-256" => KeyKind::Ec(ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7")),
        "ec:p384" | "ec:p-384" => KeyKind::Ec(ObjectIdentifier::new_unwrap("1.3.132.0.34")),
        "ec:p521" | "ec:p-521" => KeyKind::Ec(ObjectIdentifier::new_unwrap("1.3.132.0.35")),
        "aes" => KeyKind::Aes,
        other => {
            return Err(format!(
                "unknown --key-type {other:?} (rsa, ec:p256, ec:p384, ec:p521, aes)"
            ));
        }
    })
}

/// The checked contents of a `.byok` file: (kid, wrapped bytes).
fn read_byok(text: &str) -> Result<(String, Vec<u8>), String> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("not a .byok file (JSON: {e})"))?;
    let field =
        |path: &[&str]| -> Option<&Value> { path.iter().try_fold(&v, |node, key| node.get(*key)) };
    let text_of = |path: &[&str]| field(path).and_then(Value::as_str);
    if text_of(&["schema_version"]) != Some("1.0.0") {
        return Err("schema_version must be \"1.0.0\"".to_owned());
    }
    if text_of(&["header", "alg"]) != Some("dir") {
        return Err("header.alg must be \"dir\"".to_owned());
    }
    if text_of(&["header", "enc"]) != Some("CKM_RSA_AES_KEY_WRAP") {
        return Err("header.enc must be \"CKM_RSA_AES_KEY_WRAP\"".to_owned());
    }
    let kid = text_of(&["header", "kid"])
        .ok_or("header.kid is missing")?
        .to_owned();
    let ct = text_of(&["ciphertext"]).ok_or("ciphertext is missing")?;
    let wrapped = URL_SAFE_NO_PAD
        .decode(ct.trim_end_matches('='))
        .map_err(|e| format!("ciphertext is not base64url: {e}"))?;
    Ok((kid, wrapped))
}

/// Whether `kid` (a label, an id in hex, or a key URL ending in the label, with or without a
/// version) names the KEK.
fn kid_names(kid: &str, label: &str, id: &[u8]) -> bool {
    let parts: Vec<&str> = kid.trim_end_matches('/').split('/').collect();
    kid == label
        || kid.eq_ignore_ascii_case(&hex(id))
        || parts.last() == Some(&label)
        || (parts.len() >= 2 && parts.get(parts.len() - 2) == Some(&label))
}

/// `byok import`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn import(
    t: &Token<'_>,
    kek_label: &str,
    file: &std::path::Path,
    label: &str,
    kind: KeyKind,
    usage: &[String],
) -> Result<(), String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let (kid, wrapped) = read_byok(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    let kek = t.by_label(CKO_PRIVATE_KEY, kek_label)?;
    let kek_id = t.bytes(kek, CKA_ID).unwrap_or_default();
    if !kid_names(&kid, kek_label, &kek_id) {
        return Err(format!(
            "{}: made for key exchange key {kid:?}, not {kek_label:?}",
            file.display()
        ));
    }
    let (class, key_type, default_usage): (_, _, &[&str]) = match kind {
        KeyKind::Rsa => (CKO_PRIVATE_KEY, CKK_RSA, &["sign", "decrypt"]),
        KeyKind::Ec(_) => (CKO_PRIVATE_KEY, CKK_EC, &["sign"]),
        KeyKind::Aes => (CKO_SECRET_KEY, CKK_AES, &["encrypt", "decrypt"]),
    };
    let usage: Vec<String> = if usage.is_empty() {
        default_usage.iter().map(|s| (*s).to_owned()).collect()
    } else {
        usage.to_vec()
    };
    let id = random_id(t)?;
    let mut template = Template::new()
        .with(Attribute::ulong(CKA_CLASS, class))
        .with(Attribute::ulong(CKA_KEY_TYPE, key_type))
        .with(Attribute::bool(CKA_TOKEN, true))
        .with(Attribute::bool(CKA_PRIVATE, true))
        .with(Attribute::bool(CKA_SENSITIVE, true))
        // The KEK's unwrap template makes it so anyway: an imported key never leaves.
        .with(Attribute::bool(CKA_EXTRACTABLE, false))
        .with(Attribute::bytes(CKA_LABEL, label.as_bytes().to_vec()))
        .with(Attribute::bytes(CKA_ID, id.clone()));
    for u in &usage {
        let ty = match u.as_str() {
            "sign" => CKA_SIGN,
            "decrypt" => CKA_DECRYPT,
            "encrypt" if class == CKO_SECRET_KEY => CKA_ENCRYPT,
            "verify" if class == CKO_SECRET_KEY => CKA_VERIFY,
            "wrap" if class == CKO_SECRET_KEY => CKA_WRAP,
            "unwrap" => CKA_UNWRAP,
            "derive" => CKA_DERIVE,
            other => return Err(format!("--usage {other:?} does not fit this key type")),
        };
        template = template.with(Attribute::bool(ty, true));
    }
    // OAEP with SHA-1 (the format's default), else SHA-256.
    let mut last = Error::WrappedKeyInvalid;
    let mut key = None;
    for (hash, mgf) in [(CKM_SHA_1, CKG_MGF1_SHA1), (CKM_SHA256, CKG_MGF1_SHA256)] {
        match t
            .r
            .unwrap_key(t.s, &rsa_aes(hash, mgf), kek, &wrapped, &template)
        {
            Ok(k) => {
                key = Some(k);
                break;
            }
            Err(e) => last = e,
        }
    }
    let key = key.ok_or_else(|| {
        format!(
            "{}: the key does not unwrap under {kek_label:?} ({}): a tampered or truncated file, another KEK, or another key type",
            file.display(),
            last.name()
        )
    })?;
    // The curve must be the one asked for; otherwise nothing stays.
    if let KeyKind::Ec(oid) = kind {
        let params = t.bytes(key, CKA_EC_PARAMS).unwrap_or_default();
        if ObjectIdentifier::from_der(&params).ok() != Some(oid) {
            let _ = t.r.destroy_object(t.s, key);
            return Err(format!(
                "{}: the key is on another curve than --key-type says",
                file.display()
            ));
        }
    }
    let public = match public_for(t, key, kind, label, &id) {
        Ok(p) => p,
        Err(e) => {
            let _ = t.r.destroy_object(t.s, key);
            return Err(e);
        }
    };
    println!(
        "Imported {label:?} (id {}){}.",
        hex(&id),
        if public { ", with its public key" } else { "" }
    );
    Ok(())
}

/// Creates the public key object of an imported private key (from its public attributes).
fn public_for(
    t: &Token<'_>,
    key: ObjectHandle,
    kind: KeyKind,
    label: &str,
    id: &[u8],
) -> Result<bool, String> {
    let base = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_PUBLIC_KEY))
        .with(Attribute::bool(CKA_TOKEN, true))
        .with(Attribute::bytes(CKA_LABEL, label.as_bytes().to_vec()))
        .with(Attribute::bytes(CKA_ID, id.to_vec()))
        .with(Attribute::bool(CKA_VERIFY, true));
    let template = match kind {
        KeyKind::Aes => return Ok(false),
        KeyKind::Rsa => {
            let (Some(n), Some(e)) = (t.bytes(key, CKA_MODULUS), t.bytes(key, CKA_PUBLIC_EXPONENT))
            else {
                return Ok(false);
            };
            base.with(Attribute::ulong(CKA_KEY_TYPE, CKK_RSA))
                .with(Attribute::bool(CKA_ENCRYPT, true))
                .with(Attribute::bytes(CKA_MODULUS, n))
                .with(Attribute::bytes(CKA_PUBLIC_EXPONENT, e))
        }
        KeyKind::Ec(oid) => {
            // The point, from the private key's SubjectPublicKeyInfo.
            let Some(spki) = t.bytes(key, CKA_PUBLIC_KEY_INFO) else {
                return Ok(false);
            };
            let point =
                spki_point(&spki).ok_or("the imported key's public point cannot be read")?;
            let point = OctetStringRef::new(point)
                .and_then(|p| p.to_der())
                .map_err(encoding)?;
            base.with(Attribute::ulong(CKA_KEY_TYPE, CKK_EC))
                .with(Attribute::bytes(
                    CKA_EC_PARAMS,
                    oid.to_der().map_err(encoding)?,
                ))
                .with(Attribute::bytes(CKA_EC_POINT, point))
        }
    };
    t.r.create_object(t.s, &template)
        .map_err(|e| explain("creating the public key", &e))?;
    Ok(true)
}

// ---------------------------------------------------------------- export

/// `byok export`: wraps an extractable key for another HSM's KEK.
pub(crate) fn export(
    t: &Token<'_>,
    key_label: &str,
    kek_pem: &std::path::Path,
    kid: Option<&str>,
    out: &bridge::output::OutputFile,
) -> Result<(), String> {
    let text = std::fs::read_to_string(kek_pem)
        .map_err(|e| format!("cannot read {}: {e}", kek_pem.display()))?;
    let spki = unpem(&text, "PUBLIC KEY")
        .ok_or_else(|| format!("{}: no PEM public key", kek_pem.display()))?;
    let (n, e) = parse_rsa_spki(&spki)
        .ok_or_else(|| format!("{}: not an RSA public key", kek_pem.display()))?;
    let key = match t.by_label(CKO_SECRET_KEY, key_label) {
        Ok(k) => k,
        Err(_) => t.by_label(CKO_PRIVATE_KEY, key_label)?,
    };
    let kek =
        t.r.create_object(
            t.s,
            &Template::new()
                .with(Attribute::ulong(CKA_CLASS, CKO_PUBLIC_KEY))
                .with(Attribute::ulong(CKA_KEY_TYPE, CKK_RSA))
                .with(Attribute::bool(CKA_TOKEN, false))
                .with(Attribute::bool(CKA_WRAP, true))
                .with(Attribute::bytes(CKA_MODULUS, n))
                .with(Attribute::bytes(CKA_PUBLIC_EXPONENT, e)),
        )
        .map_err(|e| explain("loading the key exchange key", &e))?;
    let mech = rsa_aes(CKM_SHA_1, CKG_MGF1_SHA1);
    let wrapped = (|| {
        let n = t.r.wrap_key(t.s, &mech, kek, key, None)?;
        let mut buf = vec![0u8; n];
        let n = t.r.wrap_key(t.s, &mech, kek, key, Some(&mut buf))?;
        buf.truncate(n);
        Ok::<_, Error>(buf)
    })()
    .map_err(|e| {
        explain(
            &format!("wrapping {key_label:?} (it must be extractable)"),
            &e,
        )
    })?;
    let _ = t.r.destroy_object(t.s, kek);
    let doc = json!({
        "schema_version": "1.0.0",
        "header": {
            "kid": kid.unwrap_or_else(|| kek_pem.file_stem().and_then(|s| s.to_str()).unwrap_or("kek")),
            "alg": "dir",
            "enc": "CKM_RSA_AES_KEY_WRAP",
        },
        "ciphertext": URL_SAFE_NO_PAD.encode(&wrapped),
        "generator": format!("ferrohsm {}", env!("CARGO_PKG_VERSION")),
    });
    out.write(format!("{doc:#}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    println!(
        "Wrapped {key_label:?} for {} into {}.",
        kek_pem.display(),
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_spki_round_trips_and_kids_match() {
        let n = [0xc1u8; 256];
        let spki = rsa_spki(&n, &[1, 0, 1]).unwrap();
        let (n2, e2) = parse_rsa_spki(&spki).expect("parse");
        assert_eq!(n2, n);
        assert_eq!(e2, vec![1, 0, 1]);
        assert!(unpem(&pem("PUBLIC KEY", &spki).unwrap(), "PUBLIC KEY") == Some(spki));
        assert!(kid_names(
            "https://v.vault.azure.net/keys/KEK1/0123",
            "KEK1",
            &[1]
        ));
        assert!(kid_names("KEK1", "KEK1", &[1]));
        assert!(kid_names("01", "KEK1", &[1]));
        assert!(!kid_names("KEK2", "KEK1", &[1]));
    }

    /// The bytes the hand-written encoder wrote: the SubjectPublicKeyInfo of RFC 8017 with
    /// NULL parameters, and PEM in 64-column lines.
    #[test]
    fn kek_public_key_is_the_reference_encoding() {
        let spki = rsa_spki(&[0x00, 0xc1, 0x02], &[3]).unwrap();
        let expect = [
            0x30, 0x1c, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01,
            0x01, 0x05, 0x00, 0x03, 0x0b, 0x00, 0x30, 0x08, 0x02, 0x03, 0x00, 0xc1, 0x02, 0x02,
            0x01, 0x03,
        ];
        assert_eq!(spki, expect);
        let long = rsa_spki(&[0xc1; 256], &[1, 0, 1]).unwrap();
        let text = pem("PUBLIC KEY", &long).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "-----BEGIN PUBLIC KEY-----");
        assert_eq!(lines[lines.len() - 1], "-----END PUBLIC KEY-----");
        assert!(lines[1..lines.len() - 2].iter().all(|l| l.len() == 64));
        assert!(text.ends_with("-----\n"));
    }

    /// What the hand-written reader let through: non-minimal lengths, bytes after the
    /// structure, other parameters than NULL; and PEM that is not RFC 7468's.
    #[test]
    fn malformed_spki_and_pem_are_refused() {
        let good = rsa_spki(&[0xc1; 3], &[3]).unwrap();
        assert!(parse_rsa_spki(&good).is_some());
        // The outer length (1d) as 81 1d.
        let long = [&[0x30, 0x81][..], &good[1..]].concat();
        assert!(parse_rsa_spki(&long).is_none());
        // The modulus INTEGER's length as 81 04 (inside the BIT STRING).
        let modulus_at = good.len() - 9;
        assert_eq!(&good[modulus_at..modulus_at + 2], &[0x02, 0x04]);
        let mut inner = good[..modulus_at].to_vec();
        inner.extend_from_slice(&[0x02, 0x81]);
        inner.extend_from_slice(&good[modulus_at + 1..]);
        // ... with the enclosing lengths grown by one.
        inner[1] += 1;
        inner[18] += 1;
        inner[21] += 1;
        assert!(parse_rsa_spki(&inner).is_none());
        // Bytes after it.
        let after = [&good[..], &[0]].concat();
        assert!(parse_rsa_spki(&after).is_none());
        // Parameters that are not NULL (an OID), lengths adjusted.
        let mut params = good.clone();
        params.splice(15..17, [0x06, 0x01, 0x2a]);
        params[1] += 1;
        params[3] += 1;
        assert!(parse_rsa_spki(&params).is_none());
        // Parameters absent: what some encoders write; taken, as the `rsa` crate does.
        let mut absent = good.clone();
        absent.drain(15..17);
        absent[1] -= 2;
        absent[3] -= 2;
        assert!(parse_rsa_spki(&absent).is_some());
        // An EC key is not a KEK.
        let mut ec = good.clone();
        ec.splice(
            4..15,
            [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01],
        );
        ec[1] -= 2;
        ec[3] -= 2;
        assert!(parse_rsa_spki(&ec).is_none());
        // PEM (bridge::pem has the rest): another label, a header, text after the block.
        let text = pem("PUBLIC KEY", &good).unwrap();
        assert_eq!(unpem(&text, "PUBLIC KEY"), Some(good.clone()));
        assert_eq!(
            unpem(&format!("a key:\n{text}"), "PUBLIC KEY"),
            Some(good.clone())
        );
        assert_eq!(unpem(&text, "RSA PUBLIC KEY"), None);
        let with_header = text.replacen("\n", "\nProc-Type: 4,ENCRYPTED\n\n", 1);
        assert_eq!(unpem(&with_header, "PUBLIC KEY"), None);
        assert_eq!(unpem(&format!("{text}trailing\n"), "PUBLIC KEY"), None);
    }
}
