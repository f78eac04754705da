//! Reading a SoftHSMv2 token from its file object store with the user PIN, as SoftHSMv2 itself
//! does, for `ferrohsm import-softhsm`. Nothing here writes to the SoftHSM directory.
//!
//! The format, as SoftHSMv2 2.x writes it (read from its source: `src/lib/object_store/
//! OSToken.cpp`, `ObjectFile.cpp`, `File.cpp`, `OSAttributes.h`; `src/lib/data_mgr/
//! SecureDataManager.cpp`, `RFC4880.cpp`, `ByteString.cpp`; `src/lib/P11Attributes.cpp`):
//!
//! - `directories.tokendir` holds one directory per token. A token directory of the file store
//!   holds `token.object` (the token's own attributes) and one `<uuid>.object` per object
//!   (besides `.lock` files and `generation`); one of the DB store holds `sqlite3.db` instead.
//! - An object file is an 8-byte generation counter, then attributes to the end of the file:
//!   each a type, a kind and a value. Every integer is 8 bytes, big-endian. Kinds: 1 boolean
//!   (one byte, non-zero is true), 2 unsigned long, 3 byte string (length, bytes), 4 attribute
//!   map (its length in bytes, then entries of type, kind — 1 boolean, 2 integer, 3 binary,
//!   5 mechanism set — and value), 5 mechanism set (count, then each mechanism).
//! - `token.object` holds vendor attributes `CKA_VENDOR_DEFINED + 0x5348 + n`: 1 the label (32
//!   bytes, space-padded), 2 the serial, 3 the flags, 4 the SO PIN blob, 5 the user PIN blob.
//! - A PIN blob is salt (8 bytes) ‖ IV (16) ‖ AES-256-CBC with PKCS#7 padding of the magic
//!   `RJR` ‖ the 32-byte token key, under a key derived from the PIN: SHA-256 of salt ‖ PIN,
//!   then SHA-256 of the previous hash, `1500 + salt[7]` hashes in all (what SoftHSM calls its
//!   RFC 4880 PBE: the idea of RFC 4880's iterated and salted S2K, not its encoding). A wrong
//!   PIN fails the padding or the magic.
//! - In an object whose `CKA_PRIVATE` is true (or absent: SoftHSM's default), every non-empty
//!   byte string attribute — labels and ids too, not the values inside attribute maps — is
//!   IV (16) ‖ AES-256-CBC with PKCS#7 padding under the token key.
//!
//! What is read becomes, per object, a `C_CreateObject` template ([`SoftObject::template`]):
//! the attributes the firmware's policy lets an application give (the token-maintained ones —
//! `CKA_LOCAL`, `CKA_ALWAYS_SENSITIVE`, `CKA_NEVER_EXTRACTABLE`, `CKA_KEY_GEN_MECHANISM`,
//! lengths, check values, the public key info — are the new token's own), so that every
//! object enters the new token through the firmware's own object creation and its protection
//! rule. Decrypted values are zeroized when the objects are dropped.

use std::path::{Path, PathBuf};

use aws_lc_rs::cipher::{AES_256, DecryptionContext, PaddedBlockDecryptingKey, UnboundCipherKey};
use aws_lc_rs::digest;
use aws_lc_rs::iv::FixedLength;
use bridge::{AttrValue, Attribute, Template};
use cryptoki_sys::*;
use zeroize::{Zeroize, Zeroizing};

use crate::crypto::Secret;
use crate::object::policy::{self, f};

/// `CKA_VENDOR_SOFTHSM` (`'SH'`), the base of the token file's own attributes.
const VENDOR_SOFTHSM: CK_ATTRIBUTE_TYPE = CKA_VENDOR_DEFINED + 0x5348;
const TOKEN_LABEL: CK_ATTRIBUTE_TYPE = VENDOR_SOFTHSM + 1;
const TOKEN_SERIAL: CK_ATTRIBUTE_TYPE = VENDOR_SOFTHSM + 2;
const USER_PIN_BLOB: CK_ATTRIBUTE_TYPE = VENDOR_SOFTHSM + 5;

/// The token file of a token directory of the file store.
const TOKEN_FILE: &str = "token.object";
/// The database of a token directory of the DB store.
const DB_FILE: &str = "sqlite3.db";

/// SoftHSM's magic before the token key in a PIN blob.
const MAGIC: &[u8] = b"RJR";
/// SoftHSM's PBE: this many hashes plus the salt's last byte.
const PBE_BASE_ITERATIONS: u32 = 1500;
const SALT_LEN: usize = 8;
const IV_LEN: usize = 16;
const TOKEN_KEY_LEN: usize = 32;

/// The largest object file read: SoftHSM's objects are a few KiB (an RSA-16384 key about 20).
const MAX_FILE: u64 = 16 << 20;

/// Why a SoftHSM token cannot be read or imported. Never holds a PIN or a key byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportError {
    /// A file or directory that cannot be read.
    Io(String),
    /// No token with the label asked for: the labels of the tokens found, and the token
    /// directories of SoftHSM's DB store (which cannot be read).
    NotFound {
        /// The label asked for.
        label: String,
        /// The labels of the file-store tokens found.
        found: Vec<String>,
        /// Token directories of the DB store.
        db: Vec<PathBuf>,
    },
    /// The user PIN does not open the token.
    WrongPin,
    /// The token has no user PIN.
    NoUserPin,
    /// A file that is not what SoftHSM writes.
    Corrupt {
        /// The file.
        file: PathBuf,
        /// What is wrong, in words.
        why: String,
    },
    /// An object the new token cannot hold as it is.
    Unsupported {
        /// The object.
        object: ObjectSummary,
        /// Why, in words.
        why: String,
    },
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(why) => f.write_str(why),
            Self::NotFound { label, found, db } => {
                write!(f, "no SoftHSM token labelled {label:?}")?;
                if found.is_empty() {
                    f.write_str("; no token of SoftHSM's file store there")?;
                } else {
                    let list: Vec<String> = found.iter().map(|l| format!("{l:?}")).collect();
                    write!(f, "; the tokens there are labelled {}", list.join(", "))?;
                }
                if !db.is_empty() {
                    write!(
                        f,
                        " ({} token(s) of SoftHSM's DB object store, which import-softhsm \
                         cannot read)",
                        db.len()
                    )?;
                }
                Ok(())
            }
            Self::WrongPin => f.write_str("the user PIN does not open the token"),
            Self::NoUserPin => {
                f.write_str("the token has no user PIN (nothing is encrypted for one)")
            }
            Self::Corrupt { file, why } => write!(f, "{}: {why}", file.display()),
            Self::Unsupported { object, why } => {
                write!(f, "{}: {why}", object.file.display())
            }
        }
    }
}

impl std::error::Error for ImportError {}

type Result<T> = std::result::Result<T, ImportError>;

/// A token of a SoftHSM directory.
#[derive(Debug, Clone)]
pub struct FoundToken {
    /// Its label (trailing spaces removed).
    pub label: String,
    /// Its serial number.
    pub serial: String,
    /// Its directory.
    pub dir: PathBuf,
}

/// What an object is, for the report: never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectSummary {
    /// `CKA_CLASS`.
    pub class: CK_OBJECT_CLASS,
    /// `CKA_KEY_TYPE`, or `CKA_CERTIFICATE_TYPE` for a certificate.
    pub subtype: Option<CK_ULONG>,
    /// `CKA_LABEL`.
    pub label: Vec<u8>,
    /// `CKA_ID`.
    pub id: Vec<u8>,
    /// The SoftHSM file it comes from.
    pub file: PathBuf,
}

/// One object of the SoftHSM token, decrypted, as the new token will be asked to create it.
pub struct SoftObject {
    /// What it is.
    pub summary: ObjectSummary,
    /// `CKA_TRUSTED` is true in SoftHSM: only the SO may give it, so the SO creates the
    /// object, with `CKA_TRUSTED` added to the template.
    pub trusted: bool,
    /// Where the template is stricter than SoftHSM's object, in words (one line each).
    pub notes: Vec<String>,
    template: Template,
}

impl SoftObject {
    /// The `C_CreateObject` template (with the key material; never logged or printed).
    pub fn template(&self) -> &Template {
        &self.template
    }
}

impl Drop for SoftObject {
    fn drop(&mut self) {
        wipe(&mut self.template);
    }
}

impl std::fmt::Debug for SoftObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SoftObject({:?})", self.summary)
    }
}

/// Zeroizes every value of a template (a copy of [`SoftObject::template`]).
pub fn wipe(t: &mut Template) {
    for a in &mut t.0 {
        match &mut a.value {
            AttrValue::Bytes(b) => b.zeroize(),
            AttrValue::Template(inner) => wipe(inner),
        }
    }
}

/// A SoftHSM token opened with its user PIN.
#[derive(Debug)]
pub struct SoftToken {
    /// Its label.
    pub label: String,
    /// Its objects, in a stable order: secret keys, private keys, public keys, certificates,
    /// data objects; then by label and id.
    pub objects: Vec<SoftObject>,
}

fn io_error(p: &Path, e: &std::io::Error) -> ImportError {
    ImportError::Io(format!("{}: {e}", p.display()))
}

/// The tokens of `dir`: SoftHSM's `directories.tokendir` (one token per subdirectory), or one
/// token's own directory. Also the token directories of the DB store found there.
pub fn tokens(dir: &Path) -> Result<(Vec<FoundToken>, Vec<PathBuf>)> {
    let candidates = if dir.join(TOKEN_FILE).exists() || dir.join(DB_FILE).exists() {
        vec![dir.to_path_buf()]
    } else {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| io_error(dir, &e))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        v.sort();
        v
    };
    let mut found = Vec::new();
    let mut db = Vec::new();
    for d in candidates {
        let file = d.join(TOKEN_FILE);
        if file.exists() {
            let attrs = read_object_file(&file)?;
            let text = |ty| {
                attrs
                    .iter()
                    .find(|(t, _)| *t == ty)
                    .and_then(|(_, v)| match v {
                        Value::Bytes(b) => Some(trimmed(b)),
                        _ => None,
                    })
                    .unwrap_or_default()
            };
            found.push(FoundToken {
                label: text(TOKEN_LABEL),
                serial: text(TOKEN_SERIAL),
                dir: d,
            });
        } else if d.join(DB_FILE).exists() {
            db.push(d);
        }
    }
    Ok((found, db))
}

fn trimmed(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches([' ', '\0'])
        .to_owned()
}

/// The token labelled `label` in `dir` (see [`tokens`]).
pub fn find(dir: &Path, label: &str) -> Result<FoundToken> {
    let (found, db) = tokens(dir)?;
    let labels: Vec<String> = found.iter().map(|t| t.label.clone()).collect();
    let mut matching = found.into_iter().filter(|t| t.label == label);
    match (matching.next(), matching.next()) {
        (Some(t), None) => Ok(t),
        (Some(a), Some(b)) => Err(ImportError::Io(format!(
            "two SoftHSM tokens are labelled {label:?} ({} and {}); give the token's own \
             directory as --tokendir",
            a.dir.display(),
            b.dir.display()
        ))),
        (None, _) => Err(ImportError::NotFound {
            label: label.to_owned(),
            found: labels,
            db,
        }),
    }
}

/// Opens `token` with the user PIN and reads every object, decrypted. Reads only; a wrong PIN
/// is [`ImportError::WrongPin`] (SoftHSM's own files record no try).
pub fn open(token: &FoundToken, pin: &[u8]) -> Result<SoftToken> {
    let token_file = token.dir.join(TOKEN_FILE);
    let attrs = read_object_file(&token_file)?;
    let blob = attrs
        .iter()
        .find(|(t, _)| *t == USER_PIN_BLOB)
        .map(|(_, v)| v);
    let blob = match blob {
        Some(Value::Bytes(b)) if !b.is_empty() => b,
        Some(_) => {
            return Err(ImportError::Corrupt {
                file: token_file,
                why: "the user PIN's key blob is not a byte string".into(),
            });
        }
        None => return Err(ImportError::NoUserPin),
    };
    let key = open_pin_blob(&token_file, blob, pin)?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(&token.dir)
        .map_err(|e| io_error(&token.dir, &e))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.len() > ".object".len() && n.ends_with(".object") && n != TOKEN_FILE
            })
        })
        .collect();
    files.sort();
    let mut objects = Vec::with_capacity(files.len());
    for file in files {
        let attrs = read_object_file(&file)?;
        objects.push(object(&file, attrs, &key)?);
    }
    let rank = |c: CK_OBJECT_CLASS| match c {
        CKO_SECRET_KEY => 0,
        CKO_PRIVATE_KEY => 1,
        CKO_PUBLIC_KEY => 2,
        CKO_CERTIFICATE => 3,
        _ => 4,
    };
    objects.sort_by(|a, b| {
        let key = |o: &SoftObject| {
            (
                rank(o.summary.class),
                o.summary.label.clone(),
                o.summary.id.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    Ok(SoftToken {
        label: token.label.clone(),
        objects,
    })
}

// ---- the PINs and the encryption ---------------------------------------------------------

/// SoftHSM's PBE key for `pin` and `salt` (see the module's docs).
fn pbe_key(pin: &[u8], salt: &[u8; SALT_LEN]) -> Secret {
    let iterations = PBE_BASE_ITERATIONS + u32::from(salt[SALT_LEN - 1]);
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(salt);
    ctx.update(pin);
    let mut h = Zeroizing::new(ctx.finish().as_ref().to_vec());
    for _ in 1..iterations {
        let next = digest::digest(&digest::SHA256, &h);
        h.copy_from_slice(next.as_ref());
    }
    Secret::new(std::mem::take(&mut *h))
}

/// AES-256-CBC with PKCS#7 padding, decrypted; `None` if the padding is wrong.
fn cbc_decrypt(key: &Secret, iv: &[u8; IV_LEN], ct: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let key = UnboundCipherKey::new(&AES_256, key.expose()).ok()?;
    let key = PaddedBlockDecryptingKey::cbc_pkcs7(key).ok()?;
    let mut buf = Zeroizing::new(ct.to_vec());
    let n = key
        .decrypt(&mut buf, DecryptionContext::Iv128(FixedLength::from(iv)))
        .ok()?
        .len();
    buf.truncate(n);
    Some(buf)
}

/// The token key in the user PIN's blob.
fn open_pin_blob(file: &Path, blob: &[u8], pin: &[u8]) -> Result<Secret> {
    let (Some(salt), Some(iv), Some(ct)) = (
        blob.get(..SALT_LEN),
        blob.get(SALT_LEN..SALT_LEN + IV_LEN),
        blob.get(SALT_LEN + IV_LEN..),
    ) else {
        return Err(ImportError::Corrupt {
            file: file.to_owned(),
            why: "the user PIN's key blob is too short".into(),
        });
    };
    let salt: [u8; SALT_LEN] = salt.try_into().map_err(|_| ImportError::WrongPin)?;
    let iv: [u8; IV_LEN] = iv.try_into().map_err(|_| ImportError::WrongPin)?;
    let plain = cbc_decrypt(&pbe_key(pin, &salt), &iv, ct).ok_or(ImportError::WrongPin)?;
    match plain.strip_prefix(MAGIC) {
        Some(key) if key.len() == TOKEN_KEY_LEN => Ok(Secret::copy_from(key)),
        _ => Err(ImportError::WrongPin),
    }
}

/// An attribute value of a private object, decrypted under the token key.
fn decrypt_value(key: &Secret, stored: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let iv: [u8; IV_LEN] = stored.get(..IV_LEN)?.try_into().ok()?;
    cbc_decrypt(key, &iv, stored.get(IV_LEN..)?)
}

// ---- the object files ---------------------------------------------------------------------

/// One attribute value as SoftHSM stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Bool(bool),
    Ulong(u64),
    Bytes(Vec<u8>),
    Mechanisms(Vec<u64>),
    Map(Vec<(u64, Value)>),
}

impl Drop for Value {
    fn drop(&mut self) {
        if let Self::Bytes(b) = self {
            b.zeroize();
        }
    }
}

/// A cursor over an object file.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.data.len()
    }

    fn take(&mut self, n: u64) -> std::result::Result<&[u8], String> {
        let n = usize::try_from(n).map_err(|_| "a length beyond memory".to_owned())?;
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.data.len())
            .ok_or_else(|| format!("cut short at byte {} (needs {n} more)", self.pos))?;
        let out = self.data.get(self.pos..end).unwrap_or_default();
        self.pos = end;
        Ok(out)
    }

    fn ulong(&mut self) -> std::result::Result<u64, String> {
        let b: [u8; 8] = self
            .take(8)?
            .try_into()
            .map_err(|_| "an 8-byte integer".to_owned())?;
        Ok(u64::from_be_bytes(b))
    }

    fn bool(&mut self) -> std::result::Result<bool, String> {
        Ok(self.take(1)?.first().is_some_and(|b| *b != 0))
    }

    fn bytes(&mut self) -> std::result::Result<Vec<u8>, String> {
        let n = self.ulong()?;
        Ok(self.take(n)?.to_vec())
    }

    fn mechanisms(&mut self) -> std::result::Result<Vec<u64>, String> {
        let n = self.ulong()?;
        // Each takes 8 bytes: a count beyond what is left is a corrupt file, not an allocation.
        let left = u64::try_from(self.data.len().saturating_sub(self.pos)).unwrap_or(u64::MAX);
        if n > left / 8 {
            return Err(format!("{n} mechanisms announced, fewer bytes left"));
        }
        (0..n).map(|_| self.ulong()).collect()
    }

    /// An attribute map: its byte length, then entries (kinds: 1 boolean, 2 integer,
    /// 3 binary, 5 mechanism set).
    fn map(&mut self) -> std::result::Result<Vec<(u64, Value)>, String> {
        let len = self.ulong()?;
        let mut inner = Reader {
            data: self.take(len)?,
            pos: 0,
        };
        let mut out = Vec::new();
        while !inner.at_end() {
            let ty = inner.ulong()?;
            let v = match inner.ulong()? {
                1 => Value::Bool(inner.bool()?),
                2 => Value::Ulong(inner.ulong()?),
                3 => Value::Bytes(inner.bytes()?),
                5 => Value::Mechanisms(inner.mechanisms()?),
                k => return Err(format!("attribute map entry of unknown kind {k}")),
            };
            out.push((ty, v));
        }
        Ok(out)
    }
}

/// Parses an object file's bytes: the generation, then (type, value) to the end.
fn parse_object(data: &[u8]) -> std::result::Result<Vec<(u64, Value)>, String> {
    let mut r = Reader { data, pos: 0 };
    if r.at_end() {
        return Err("empty".into());
    }
    r.ulong()?;
    let mut out: Vec<(u64, Value)> = Vec::new();
    while !r.at_end() {
        let ty = r.ulong()?;
        let v = match r.ulong()? {
            1 => Value::Bool(r.bool()?),
            2 => Value::Ulong(r.ulong()?),
            3 => Value::Bytes(r.bytes()?),
            4 => Value::Map(r.map()?),
            5 => Value::Mechanisms(r.mechanisms()?),
            k => return Err(format!("attribute 0x{ty:x} of unknown kind {k}")),
        };
        // SoftHSM keeps the last of a repeated attribute.
        out.retain(|(t, _)| *t != ty);
        out.push((ty, v));
    }
    Ok(out)
}

fn read_object_file(file: &Path) -> Result<Vec<(CK_ATTRIBUTE_TYPE, Value)>> {
    let len = std::fs::metadata(file)
        .map_err(|e| io_error(file, &e))?
        .len();
    if len > MAX_FILE {
        return Err(ImportError::Corrupt {
            file: file.to_owned(),
            why: format!("{len} bytes: larger than any SoftHSM object"),
        });
    }
    let data = Zeroizing::new(std::fs::read(file).map_err(|e| io_error(file, &e))?);
    let attrs = parse_object(&data).map_err(|why| ImportError::Corrupt {
        file: file.to_owned(),
        why: format!("not a SoftHSM object file: {why}"),
    })?;
    attrs
        .into_iter()
        .map(|(t, v)| {
            CK_ATTRIBUTE_TYPE::try_from(t)
                .map(|t| (t, v))
                .map_err(|_| ImportError::Corrupt {
                    file: file.to_owned(),
                    why: format!("attribute type 0x{t:x} out of range"),
                })
        })
        .collect()
}

// ---- from SoftHSM's attributes to a template -----------------------------------------------

fn ulong_of(v: u64) -> Option<CK_ULONG> {
    CK_ULONG::try_from(v).ok()
}

/// Whether a value is what an attribute holds when nobody set it (false, zero, empty).
fn is_default(v: &Value) -> bool {
    match v {
        Value::Bool(b) => !b,
        Value::Ulong(u) => *u == 0,
        Value::Bytes(b) => b.is_empty(),
        Value::Mechanisms(m) => m.is_empty(),
        Value::Map(m) => m.is_empty(),
    }
}

/// A value in the template's form; `None` for a value that does not fit (a `CK_ULONG` beyond
/// this platform's).
fn attr_value(v: &Value) -> Option<AttrValue> {
    Some(match v {
        Value::Bool(b) => AttrValue::Bytes(vec![u8::from(*b)]),
        Value::Ulong(u) => AttrValue::Bytes(ulong_of(*u)?.to_ne_bytes().to_vec()),
        Value::Bytes(b) => AttrValue::Bytes(b.clone()),
        Value::Mechanisms(m) => AttrValue::Bytes(
            m.iter()
                .map(|x| ulong_of(*x).map(CK_ULONG::to_ne_bytes))
                .collect::<Option<Vec<_>>>()?
                .concat(),
        ),
        Value::Map(entries) => AttrValue::Template(Template(
            entries
                .iter()
                .map(|(t, v)| {
                    Some(Attribute {
                        ty: ulong_of(*t)?,
                        value: attr_value(v)?,
                    })
                })
                .collect::<Option<Vec<_>>>()?,
        )),
    })
}

/// One SoftHSM object, decrypted with the token key, as a template for the new token.
fn object(
    file: &Path,
    mut attrs: Vec<(CK_ATTRIBUTE_TYPE, Value)>,
    key: &Secret,
) -> Result<SoftObject> {
    let corrupt = |why: String| ImportError::Corrupt {
        file: file.to_owned(),
        why,
    };
    fn get(attrs: &[(CK_ATTRIBUTE_TYPE, Value)], ty: CK_ATTRIBUTE_TYPE) -> Option<&Value> {
        attrs.iter().find(|(t, _)| *t == ty).map(|(_, v)| v)
    }
    let ulong = |attrs: &[(CK_ATTRIBUTE_TYPE, Value)], ty| match get(attrs, ty) {
        Some(Value::Ulong(u)) => ulong_of(*u),
        _ => None,
    };
    let flag = |attrs: &[(CK_ATTRIBUTE_TYPE, Value)], ty| match get(attrs, ty) {
        Some(Value::Bool(b)) => Some(*b),
        _ => None,
    };
    let class = ulong(&attrs, CKA_CLASS).ok_or_else(|| corrupt("no CKA_CLASS".into()))?;
    // A file cut at an attribute's boundary reads as an object without its last attributes,
    // and SoftHSM writes them in ascending type order: the protection attributes it writes
    // for every object of the class must be there, or the object would come out less
    // protected than it was (CKA_ALLOWED_MECHANISMS and CKA_DESTROYABLE are the last ones).
    let is_key = matches!(class, CKO_SECRET_KEY | CKO_PRIVATE_KEY | CKO_PUBLIC_KEY);
    let protected_class = matches!(class, CKO_SECRET_KEY | CKO_PRIVATE_KEY);
    for (ty, needed) in [
        (CKA_PRIVATE, true),
        (CKA_MODIFIABLE, true),
        (CKA_COPYABLE, true),
        (CKA_DESTROYABLE, true),
        (CKA_SENSITIVE, protected_class),
        (CKA_EXTRACTABLE, protected_class),
        (CKA_ALLOWED_MECHANISMS, is_key),
    ] {
        if needed && get(&attrs, ty).is_none() {
            return Err(corrupt(format!(
                "no {}, which SoftHSM writes for every such object (a damaged or cut file)",
                bridge::attr_name(ty)
            )));
        }
    }
    // SoftHSM encrypts the byte strings of an object that is private or says nothing.
    let private = flag(&attrs, CKA_PRIVATE).unwrap_or(true);
    if private {
        for (ty, v) in &mut attrs {
            if let Value::Bytes(b) = v {
                if !b.is_empty() {
                    let plain = decrypt_value(key, b).ok_or_else(|| {
                        corrupt(format!(
                            "attribute 0x{ty:x} does not decrypt under the token key (a damaged \
                             file, or one from another token)"
                        ))
                    })?;
                    b.zeroize();
                    *b = plain.to_vec();
                }
            }
        }
    }
    let subtype = match class {
        CKO_CERTIFICATE => ulong(&attrs, CKA_CERTIFICATE_TYPE),
        CKO_DATA => None,
        _ => ulong(&attrs, CKA_KEY_TYPE),
    };
    let bytes = |ty| match get(&attrs, ty) {
        Some(Value::Bytes(b)) => b.clone(),
        _ => Vec::new(),
    };
    let summary = ObjectSummary {
        class,
        subtype,
        label: bytes(CKA_LABEL),
        id: bytes(CKA_ID),
        file: file.to_owned(),
    };
    let unsupported = |why: String| ImportError::Unsupported {
        object: summary.clone(),
        why,
    };
    let Some(tables) = policy::rules_for(class, subtype) else {
        return Err(unsupported(
            "FerroHSM holds no object of this class and type".into(),
        ));
    };
    let mut template = Template::new();
    let mut trusted = false;
    let mut notes = Vec::new();
    for (ty, v) in &attrs {
        let rule = policy::find(&tables, *ty);
        match rule {
            // What the new token maintains itself: provenance, lengths, the check value and
            // the public key info (computed from the material).
            Some(r) if r.flags & f::NO_CREATE != 0 => continue,
            Some(_) if matches!(*ty, CKA_CHECK_VALUE | CKA_PUBLIC_KEY_INFO) => continue,
            // Only the SO may give it: the SO creates the object (see `trusted`).
            Some(r) if r.flags & f::SO_TRUE != 0 => {
                trusted = *v == Value::Bool(true);
                continue;
            }
            // An empty value is the default, except where one must be given.
            Some(r)
                if is_default(v)
                    && !matches!(v, Value::Bool(_) | Value::Ulong(_))
                    && r.flags & f::MUST_CREATE == 0 =>
            {
                continue;
            }
            Some(_) => {}
            None if is_default(v) => continue,
            None => {
                return Err(unsupported(format!(
                    "it has {} set, which FerroHSM does not keep on this kind of object",
                    bridge::attr_name(*ty)
                )));
            }
        }
        let value = attr_value(v).ok_or_else(|| {
            corrupt(format!(
                "{} holds a number beyond this platform's",
                bridge::attr_name(*ty)
            ))
        })?;
        template.0.push(Attribute { ty: *ty, value });
    }
    if trusted && private {
        return Err(unsupported(
            "CKA_TRUSTED is set on a private object: only the SO may set it, and the SO cannot \
             see private objects"
                .into(),
        ));
    }
    // The firmware keeps sensitive and unextractable keys private (the protection rule); a
    // SoftHSM key that is not is made private, and the report says so.
    let t_flag = |t: &Template, ty| t.get(ty).and_then(|a| a.as_bool().ok());
    if bridge::protection::check_private(
        Some(class),
        t_flag(&template, CKA_SENSITIVE),
        t_flag(&template, CKA_EXTRACTABLE),
        t_flag(&template, CKA_PRIVATE),
    )
    .is_err()
    {
        template.0.retain(|a| a.ty != CKA_PRIVATE);
        template.0.push(Attribute::bool(CKA_PRIVATE, true));
        notes.push(
            "CKA_PRIVATE: FALSE in SoftHSM, TRUE here: FerroHSM keeps sensitive and \
             unextractable keys private"
                .to_owned(),
        );
    }
    Ok(SoftObject {
        summary,
        trusted,
        notes,
        template,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::cipher::{EncryptionContext, PaddedBlockEncryptingKey};

    fn be(v: u64) -> [u8; 8] {
        v.to_be_bytes()
    }

    fn cbc_encrypt(key: &[u8], iv: [u8; 16], plain: &[u8]) -> Vec<u8> {
        let k = PaddedBlockEncryptingKey::cbc_pkcs7(UnboundCipherKey::new(&AES_256, key).unwrap())
            .unwrap();
        let mut buf = plain.to_vec();
        k.less_safe_encrypt(&mut buf, EncryptionContext::Iv128(FixedLength::from(iv)))
            .unwrap();
        buf
    }

    /// A PIN blob written as SoftHSM's `pbeEncryptKey` does.
    fn blob(pin: &[u8], token_key: &[u8], salt: [u8; 8]) -> Vec<u8> {
        let iv = [7u8; 16];
        let k = pbe_key(pin, &salt);
        let ct = cbc_encrypt(k.expose(), iv, &[MAGIC, token_key].concat());
        [&salt[..], &iv[..], &ct[..]].concat()
    }

    #[test]
    fn the_pbe_is_sha256_iterated_1500_plus_the_last_salt_byte_times() {
        let salt = [1, 2, 3, 4, 5, 6, 7, 2];
        let mut h = digest::digest(&digest::SHA256, b"\x01\x02\x03\x04\x05\x06\x07\x02pin")
            .as_ref()
            .to_vec();
        for _ in 1..1502 {
            h = digest::digest(&digest::SHA256, &h).as_ref().to_vec();
        }
        assert_eq!(pbe_key(b"pin", &salt).expose(), &h[..]);
    }

    #[test]
    fn a_pin_blob_opens_with_its_pin_only() {
        let key = [0x42u8; 32];
        let b = blob(b"123456", &key, [9; 8]);
        assert_eq!(
            open_pin_blob(Path::new("t"), &b, b"123456")
                .unwrap()
                .expose(),
            &key
        );
        assert_eq!(
            open_pin_blob(Path::new("t"), &b, b"654321").err(),
            Some(ImportError::WrongPin)
        );
        // Right padding, wrong magic: still a wrong PIN.
        let k = pbe_key(b"x", &[9; 8]);
        let ct = cbc_encrypt(k.expose(), [7; 16], &[b"XYZ", &key[..]].concat());
        let bad = [&[9u8; 8][..], &[7u8; 16][..], &ct[..]].concat();
        assert_eq!(
            open_pin_blob(Path::new("t"), &bad, b"x").err(),
            Some(ImportError::WrongPin)
        );
    }

    fn file(attrs: &[(u64, u64, Vec<u8>)]) -> Vec<u8> {
        let mut out = be(3).to_vec();
        for (ty, kind, v) in attrs {
            out.extend_from_slice(&be(*ty));
            out.extend_from_slice(&be(*kind));
            out.extend_from_slice(v);
        }
        out
    }

    fn bytes_value(b: &[u8]) -> Vec<u8> {
        [&be(b.len() as u64)[..], b].concat()
    }

    #[test]
    fn object_files_parse_every_kind_and_refuse_truncation() {
        let mechs = [&be(2)[..], &be(0x1081)[..], &be(0x1082)[..]].concat();
        let map_entries = [&be(0x104)[..], &be(1)[..], &[1u8][..]].concat();
        let map = [&be(map_entries.len() as u64)[..], &map_entries[..]].concat();
        let data = file(&[
            (0, 2, be(4).to_vec()),
            (1, 1, vec![0xff]),
            (3, 3, bytes_value(b"label")),
            (0x4000_0600, 5, mechs),
            (0x4000_0211, 4, map),
        ]);
        let attrs = parse_object(&data).unwrap();
        assert_eq!(attrs[0], (0, Value::Ulong(4)));
        assert_eq!(attrs[1], (1, Value::Bool(true)));
        assert_eq!(attrs[2], (3, Value::Bytes(b"label".to_vec())));
        assert_eq!(
            attrs[3],
            (0x4000_0600, Value::Mechanisms(vec![0x1081, 0x1082]))
        );
        assert_eq!(
            attrs[4],
            (0x4000_0211, Value::Map(vec![(0x104, Value::Bool(true))]))
        );
        // A cut inside an attribute is an error; one between attributes reads as an object
        // without its last attributes (which `object` then refuses: see below).
        let boundaries = [8, 32, 49, 78, 118];
        for cut in 1..data.len() {
            assert_eq!(
                parse_object(&data[..cut]).is_err(),
                !boundaries.contains(&cut),
                "cut at {cut}"
            );
        }
        // A length beyond the file is an error, not an allocation.
        let huge = file(&[(3, 3, be(u64::MAX).to_vec())]);
        assert!(parse_object(&huge).is_err());
        let many = file(&[(0x4000_0600, 5, be(u64::MAX).to_vec())]);
        assert!(parse_object(&many).is_err());
    }

    /// The storage attributes SoftHSM writes for every object.
    fn storage(private: bool) -> Vec<(CK_ATTRIBUTE_TYPE, Value)> {
        vec![
            (CKA_TOKEN, Value::Bool(true)),
            (CKA_PRIVATE, Value::Bool(private)),
            (CKA_MODIFIABLE, Value::Bool(true)),
            (CKA_COPYABLE, Value::Bool(true)),
            (CKA_DESTROYABLE, Value::Bool(true)),
        ]
    }

    #[test]
    fn a_file_without_its_last_protection_attributes_is_refused() {
        let key = Secret::copy_from(&[0x11; 32]);
        let full = || {
            let mut a = vec![
                (CKA_CLASS, Value::Ulong(CKO_SECRET_KEY)),
                (CKA_KEY_TYPE, Value::Ulong(CKK_GENERIC_SECRET)),
                (CKA_VALUE, Value::Bytes(vec![1; 20])),
                (CKA_SENSITIVE, Value::Bool(false)),
                (CKA_EXTRACTABLE, Value::Bool(true)),
                (
                    CKA_ALLOWED_MECHANISMS,
                    Value::Mechanisms(vec![CKM_SHA256_HMAC]),
                ),
            ];
            a.extend(storage(false));
            a
        };
        assert!(object(Path::new("x.object"), full(), &key).is_ok());
        for ty in [
            CKA_ALLOWED_MECHANISMS,
            CKA_DESTROYABLE,
            CKA_SENSITIVE,
            CKA_EXTRACTABLE,
            CKA_PRIVATE,
        ] {
            let mut a = full();
            a.retain(|(t, _)| *t != ty);
            assert!(
                matches!(
                    object(Path::new("x.object"), a, &key),
                    Err(ImportError::Corrupt { .. })
                ),
                "{ty:x}"
            );
        }
    }

    #[test]
    fn a_private_object_is_decrypted_and_its_provenance_left_to_the_token() {
        let key = Secret::copy_from(&[0x11; 32]);
        let enc = |b: &[u8]| [&[3u8; 16][..], &cbc_encrypt(key.expose(), [3; 16], b)[..]].concat();
        let mut attrs = storage(true);
        attrs.extend([
            (CKA_CLASS, Value::Ulong(CKO_SECRET_KEY)),
            (CKA_KEY_TYPE, Value::Ulong(CKK_AES)),
            (CKA_LABEL, Value::Bytes(enc(b"aes"))),
            (CKA_VALUE, Value::Bytes(enc(&[0x55; 32]))),
            (CKA_SENSITIVE, Value::Bool(true)),
            (CKA_EXTRACTABLE, Value::Bool(false)),
            (CKA_LOCAL, Value::Bool(true)),
            (CKA_ALWAYS_SENSITIVE, Value::Bool(true)),
            (CKA_NEVER_EXTRACTABLE, Value::Bool(true)),
            (CKA_VALUE_LEN, Value::Ulong(32)),
            (CKA_ALLOWED_MECHANISMS, Value::Mechanisms(vec![])),
            (CKA_TRUSTED, Value::Bool(false)),
        ]);
        let o = object(Path::new("x.object"), attrs, &key).unwrap();
        let t = o.template();
        assert_eq!(o.summary.label, b"aes");
        assert_eq!(t.get(CKA_VALUE).unwrap().as_bytes().unwrap(), &[0x55; 32]);
        for gone in [
            CKA_LOCAL,
            CKA_ALWAYS_SENSITIVE,
            CKA_NEVER_EXTRACTABLE,
            CKA_VALUE_LEN,
            CKA_ALLOWED_MECHANISMS,
            CKA_TRUSTED,
        ] {
            assert!(t.get(gone).is_none(), "{gone:x}");
        }
        assert_eq!(t.get(CKA_EXTRACTABLE).unwrap().as_bool(), Ok(false));
        assert!(!o.trusted);
        // Under another key: a damaged file, never garbage values.
        let other = Secret::copy_from(&[0x12; 32]);
        let mut attrs = storage(true);
        attrs.extend([
            (CKA_CLASS, Value::Ulong(CKO_SECRET_KEY)),
            (CKA_KEY_TYPE, Value::Ulong(CKK_AES)),
            (CKA_VALUE, Value::Bytes(enc(&[0x55; 32]))),
            (CKA_SENSITIVE, Value::Bool(true)),
            (CKA_EXTRACTABLE, Value::Bool(false)),
            (CKA_ALLOWED_MECHANISMS, Value::Mechanisms(vec![])),
        ]);
        let e = object(Path::new("x.object"), attrs, &other).unwrap_err();
        assert!(e.to_string().contains("does not decrypt"), "{e}");
    }

    #[test]
    fn a_public_sensitive_key_is_made_private_and_noted() {
        let key = Secret::copy_from(&[0x11; 32]);
        let mut attrs = storage(false);
        attrs.extend([
            (CKA_CLASS, Value::Ulong(CKO_SECRET_KEY)),
            (CKA_KEY_TYPE, Value::Ulong(CKK_GENERIC_SECRET)),
            (CKA_VALUE, Value::Bytes(vec![1; 20])),
            (CKA_SENSITIVE, Value::Bool(true)),
            (CKA_EXTRACTABLE, Value::Bool(true)),
            (CKA_ALLOWED_MECHANISMS, Value::Mechanisms(vec![])),
        ]);
        let o = object(Path::new("x.object"), attrs, &key).unwrap();
        assert_eq!(o.template().get(CKA_PRIVATE).unwrap().as_bool(), Ok(true));
        assert_eq!(o.notes.len(), 1);
    }

    #[test]
    fn unknown_classes_and_unkept_attributes_are_refused_by_name() {
        let key = Secret::copy_from(&[0x11; 32]);
        let mut dsa = storage(false);
        dsa.extend([
            (CKA_CLASS, Value::Ulong(CKO_PRIVATE_KEY)),
            (CKA_KEY_TYPE, Value::Ulong(CKK_DSA)),
            (CKA_SENSITIVE, Value::Bool(false)),
            (CKA_EXTRACTABLE, Value::Bool(true)),
            (CKA_ALLOWED_MECHANISMS, Value::Mechanisms(vec![])),
        ]);
        assert!(matches!(
            object(Path::new("x.object"), dsa, &key),
            Err(ImportError::Unsupported { .. })
        ));
        let mut odd = storage(false);
        odd.extend([
            (CKA_CLASS, Value::Ulong(CKO_DATA)),
            (CKA_SIGN, Value::Bool(true)),
        ]);
        assert!(matches!(
            object(Path::new("x.object"), odd, &key),
            Err(ImportError::Unsupported { .. })
        ));
        let mut unset = storage(false);
        unset.extend([
            (CKA_CLASS, Value::Ulong(CKO_DATA)),
            (CKA_SIGN, Value::Bool(false)),
        ]);
        assert!(object(Path::new("x.object"), unset, &key).is_ok());
    }
}
