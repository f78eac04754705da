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
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bridge::{
    AttrAnswer, AttrValue, Attribute, Backend, Error, Mechanism, MechanismParams, OaepParams,
    ObjectHandle, Router, SessionHandle, SlotId, Template,
};
use cryptoki_sys::*;
use serde_json::{Value, json};

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

// ---------------------------------------------------------------- DER and PEM

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let n = content.len();
    let mut out = vec![tag];
    if n < 0x80 {
        out.push(u8::try_from(n).unwrap_or(0));
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let len_bytes = bytes.get(skip..).unwrap_or_default();
        out.push(0x80 | u8::try_from(len_bytes.len()).unwrap_or(0));
        out.extend_from_slice(len_bytes);
    }
    out.extend_from_slice(content);
    out
}

fn der_uint(v: &[u8]) -> Vec<u8> {
    let v = match v.iter().position(|b| *b != 0) {
        Some(i) => v.get(i..).unwrap_or_default(),
        None => &[0u8][..],
    };
    let mut c = Vec::with_capacity(v.len() + 1);
    if v.first().is_some_and(|b| b & 0x80 != 0) {
        c.push(0);
    }
    c.extend_from_slice(v);
    der(0x02, &c)
}

/// One DER element: (tag, content, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (len_bytes, rest) = rest.split_at_checked(n)?;
        (
            len_bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)),
            rest,
        )
    };
    let (content, rest) = rest.split_at_checked(len)?;
    Some((tag, content, rest))
}

const RSA_ALG: &[u8] = &[
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];

fn rsa_spki(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let mut key = der_uint(modulus);
    key.extend(der_uint(exponent));
    let mut bits = vec![0u8];
    bits.extend(der(0x30, &key));
    let mut body = RSA_ALG.to_vec();
    body.extend(der(0x03, &bits));
    der(0x30, &body)
}

/// (modulus, exponent) of an RSA SubjectPublicKeyInfo.
fn parse_rsa_spki(spki: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (0x30, body, _) = tlv(spki)? else {
        return None;
    };
    let (0x30, alg, rest) = tlv(body)? else {
        return None;
    };
    let (0x06, oid, _) = tlv(alg)? else {
        return None;
    };
    if oid != RSA_ALG.get(4..13)? {
        return None;
    }
    let (0x03, bits, _) = tlv(rest)? else {
        return None;
    };
    let (0x30, key, _) = tlv(bits.strip_prefix(&[0])?)? else {
        return None;
    };
    let (0x02, n, rest) = tlv(key)? else {
        return None;
    };
    let (0x02, e, _) = tlv(rest)? else {
        return None;
    };
    Some((n.to_vec(), e.to_vec()))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn unpem(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = text.get(start..)?.find(&end)? + start;
    let body: String = text
        .get(start..stop)?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    STANDARD.decode(body).ok()
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
    out.write(pem("PUBLIC KEY", &rsa_spki(&n, &e)).as_bytes())
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
    Ec(&'static [u8]),
    Aes,
}

pub(crate) fn parse_key_type(s: &str) -> Result<KeyKind, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "rsa" => KeyKind::Rsa,
        "ec:p256" | "ec:p-256" => {
            KeyKind::Ec(&[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07])
        }
        "ec:p384" | "ec:p-384" => KeyKind::Ec(&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]),
        "ec:p521" | "ec:p-521" => KeyKind::Ec(&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23]),
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
        if t.bytes(key, CKA_EC_PARAMS).as_deref() != Some(oid) {
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
            let point = tlv(&spki)
                .and_then(|(_, body, _)| tlv(body))
                .and_then(|(_, _, rest)| tlv(rest))
                .and_then(|(tag, bits, _)| (tag == 0x03).then_some(bits))
                .and_then(|bits| bits.strip_prefix(&[0]))
                .ok_or("the imported key's public point cannot be read")?;
            base.with(Attribute::ulong(CKA_KEY_TYPE, CKK_EC))
                .with(Attribute::bytes(CKA_EC_PARAMS, oid.to_vec()))
                .with(Attribute::bytes(CKA_EC_POINT, der(0x04, point)))
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
        let spki = rsa_spki(&n, &[1, 0, 1]);
        let (n2, e2) = parse_rsa_spki(&spki).expect("parse");
        assert_eq!(
            n2.iter()
                .skip_while(|b| **b == 0)
                .copied()
                .collect::<Vec<_>>(),
            n
        );
        assert_eq!(e2, vec![1, 0, 1]);
        assert!(unpem(&pem("PUBLIC KEY", &spki), "PUBLIC KEY") == Some(spki));
        assert!(kid_names(
            "https://v.vault.azure.net/keys/KEK1/0123",
            "KEK1",
            &[1]
        ));
        assert!(kid_names("KEK1", "KEK1", &[1]));
        assert!(kid_names("01", "KEK1", &[1]));
        assert!(!kid_names("KEK2", "KEK1", &[1]));
    }
}
