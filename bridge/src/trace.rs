//! The recorder (`docs/trace.md`): a decorator on any `Backend`, like the overlay, that writes
//! one JSON line per call into a trace file — the function, the slot or session, the mechanism
//! and the shape of its parameter, the key's class, type and size, templates with their
//! non-secret values, lengths, the return code and the time the call took.
//!
//! It describes every call from the vocabulary alone ([`Call::args`]: each argument's name
//! and kind), so a function added to the table is recorded by construction. What it never
//! writes: a PIN or its length, key bytes or any secret attribute's value (only its length),
//! data, signatures, IVs, salts or AAD (only their lengths).
//!
//! Recording never changes a call's outcome: the key's attributes are read (public ones only)
//! before the call is passed on, the call's result is returned as the layer below gave it, and
//! a record that cannot be written is logged and dropped.
//!
//! A trace file is shared: each process (and each thread) appends whole lines, each with one
//! `write` on a descriptor opened with `O_APPEND`, so lines of many processes never mix. The
//! file is created mode 0600, never through a symbolic link (see [`crate::output`]).

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use cryptoki_sys::*;
use serde_json::{Map, Value, json};

use crate::call::{Backend, BackendExt, Call, Reply, Target, View};
use crate::error::{Error, Result};
use crate::names;
use crate::output::{self, WriteOptions};
use crate::overlay::{SECRET_VALUES, answer_ulong, capped};
use crate::types::*;

/// The format's version, `"v"` in every record.
pub const FORMAT_VERSION: u64 = 1;

/// How a trace file is opened: mode 0600, never through a symbolic link, only a regular file of
/// this user with no other link. A directory others can write (`/tmp`) is accepted: the file
/// holds no secret, and those checks leave another user nothing to redirect.
pub const TRACE_OUTPUT: WriteOptions = WriteOptions::private().allow_shared_dir(true);

/// The attributes read about an operation's key: public ones only.
const KEY_FACTS: [CK_ATTRIBUTE_TYPE; 6] = [
    CKA_CLASS,
    CKA_KEY_TYPE,
    CKA_MODULUS_BITS,
    CKA_MODULUS,
    CKA_VALUE_LEN,
    CKA_EC_PARAMS,
];

/// Whether an attribute holds key material or is computed from it (a check value): recorded by
/// length only.
fn is_secret(ty: CK_ATTRIBUTE_TYPE) -> bool {
    SECRET_VALUES.contains(&ty) || ty == CKA_CHECK_VALUE
}

/// Byte values longer than this are recorded by length (a label is capped, an id left out).
const MAX_SHOWN: usize = 128;

/// The process's call records, numbered from 1 over the process's life (every trace file).
static SEQ: AtomicU64 = AtomicU64::new(0);
/// The number the next thread to make a call gets.
static NEXT_THREAD: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's number, given at its first recorded call.
    static THREAD: u64 = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

/// Who records into a trace file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every call of the module (`FERROHSM_TRACE`): slots and sessions as the application
    /// sees them.
    Module,
    /// The calls to the configuration's `[[slot]]` number `n` (from 1): slots and sessions as
    /// that slot's backend sees them.
    Slot(usize),
}

/// A trace file as one process writes it: a start record when it is opened, one line per
/// call, and an end record with the count when it is let go of (`C_Finalize`).
pub struct TraceLog {
    path: PathBuf,
    file: File,
    calls: AtomicU64,
}

impl TraceLog {
    /// Opens (creating it, mode 0600) the trace file at `path` and writes the start record.
    pub fn open(path: &Path, scope: Scope) -> Result<Arc<Self>> {
        let file = output::open_append(path, &TRACE_OUTPUT)
            .map_err(|e| Error::Config(format!("trace: {e}")))?;
        let log = Self {
            path: path.to_path_buf(),
            file,
            calls: AtomicU64::new(0),
        };
        let mut start = Map::new();
        start.insert("kind".into(), json!("start"));
        start.insert("program".into(), json!(program()));
        start.insert("time".into(), json!(crate::audit::now_rfc3339()));
        start.insert(
            "module".into(),
            json!(concat!("ferrohsm ", env!("CARGO_PKG_VERSION"))),
        );
        match scope {
            Scope::Module => {
                start.insert("scope".into(), json!("module"));
            }
            Scope::Slot(n) => {
                start.insert("scope".into(), json!("slot"));
                start.insert("slot_config".into(), json!(n));
            }
        }
        log.write(start);
        Ok(Arc::new(log))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one record as one line with one `write`; a failure is logged, never returned.
    fn write(&self, mut record: Map<String, Value>) -> bool {
        record.insert("v".into(), json!(FORMAT_VERSION));
        record.insert("pid".into(), json!(std::process::id()));
        let mut line = Value::Object(record).to_string();
        line.push('\n');
        match (&self.file).write_all(line.as_bytes()) {
            Ok(()) => true,
            Err(e) => {
                log::error!(
                    "trace {}: a record was not written: {e}",
                    self.path.display()
                );
                false
            }
        }
    }

    /// Writes one call's record, numbered.
    fn call(&self, mut record: Map<String, Value>) {
        record.insert("kind".into(), json!("call"));
        record.insert("seq".into(), json!(SEQ.fetch_add(1, Ordering::Relaxed) + 1));
        record.insert("thread".into(), json!(THREAD.with(|t| *t)));
        if self.write(record) {
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for TraceLog {
    /// The end record: the module let go of the recorder (`C_Finalize`, or the end of a
    /// process that finalizes).
    fn drop(&mut self) {
        let mut end = Map::new();
        end.insert("kind".into(), json!("end"));
        end.insert("calls".into(), json!(self.calls.load(Ordering::Relaxed)));
        end.insert("time".into(), json!(crate::audit::now_rfc3339()));
        self.write(end);
    }
}

/// The base name of the program this process runs.
fn program() -> String {
    let argv0 = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .or_else(|| std::env::current_exe().ok());
    argv0
        .as_deref()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A backend whose calls are recorded.
pub struct Trace {
    inner: Arc<dyn Backend>,
    log: Arc<TraceLog>,
}

impl Trace {
    /// Records the calls to `inner` into `log`.
    pub fn new(inner: Arc<dyn Backend>, log: Arc<TraceLog>) -> Self {
        Self { inner, log }
    }

    /// Describes the call's arguments into `rec`; returns the attribute types a
    /// `C_GetAttributeValue` asks for (their lengths come with the reply).
    fn describe(
        &self,
        call: &Call<'_>,
        session: Option<SessionHandle>,
        rec: &mut Map<String, Value>,
    ) -> Option<Vec<CK_ATTRIBUTE_TYPE>> {
        let mut keys = Vec::new();
        let mut asked = None;
        for (name, view) in call.args() {
            match view {
                View::Bool(b) => put(rec, name, json!(b)),
                View::Ulong(v) => match name {
                    "user" => put(rec, "user", enum_json(names::user_name(v), v)),
                    "ty" => put(rec, "mechanism_type", json!(mechanism_text(v))),
                    _ => put(rec, name, json!(v)),
                },
                View::Count(n) => put(rec, name, json!(n)),
                View::Slot(s) => put(rec, name, json!(s.0)),
                View::Session(s) => put(rec, name, json!(s.0)),
                // The keys an operation uses: the first is "key", a second (the key a wrap
                // exports) "target".
                View::Object(o) if name.ends_with("key") => keys.push(o),
                View::Object(o) => put(rec, name, json!(o.0)),
                View::MaybeObject(o) => {
                    if let Some(o) = o {
                        put(rec, name, json!(o.0));
                    }
                }
                View::Bytes(b) => bytes(rec, name, Some(b)),
                View::MaybeBytes(b) => bytes(rec, name, b),
                View::Label(l) => put(rec, name, text(trim_blanks(l))),
                View::Types(t) => asked = Some(t.to_vec()),
                View::Template(t) => put(rec, name, template_json(t)),
                View::Mechanism(m) => put(
                    rec,
                    "mechanism",
                    json!({"type": mechanism_text(m.ty), "param": param_shape(&m.params)}),
                ),
                View::Params(p) => put(rec, "params", json!(param_shape(p))),
                View::Out(None) => put(rec, "query", json!(true)),
                View::Out(Some(n)) => put(rec, "out_cap", json!(n)),
                View::Fill(n) => put(rec, "out_len", json!(n)),
            }
        }
        for (field, key) in ["key", "target"].into_iter().zip(keys) {
            put(rec, field, self.key_json(session, key));
        }
        asked
    }

    /// A key as the record shows it: its handle, and what its public attributes say (class,
    /// key type, size in bits, curve), read through the layer below.
    fn key_json(&self, session: Option<SessionHandle>, key: ObjectHandle) -> Value {
        let mut m = Map::new();
        m.insert("handle".into(), json!(key.0));
        let Some(a) = session.and_then(|s| self.inner.get_attribute_value(s, key, &KEY_FACTS).ok())
        else {
            return Value::Object(m);
        };
        if let Some(c) = answer_ulong(a.first()) {
            m.insert("class".into(), enum_json(names::class_name(c), c));
        }
        if let Some(k) = answer_ulong(a.get(1)) {
            m.insert("key_type".into(), enum_json(names::key_type_name(k), k));
        }
        let modulus = match a.get(3) {
            Some(AttrAnswer::Value(AttrValue::Bytes(b))) if !b.is_empty() => Some(b.len() * 8),
            _ => None,
        };
        let bits = answer_ulong(a.get(2))
            .and_then(|b| usize::try_from(b).ok())
            .or(modulus)
            .or_else(|| {
                answer_ulong(a.get(4))
                    .and_then(|l| usize::try_from(l).ok())
                    .map(|l| l * 8)
            });
        if let Some(bits) = bits {
            m.insert("bits".into(), json!(bits));
        }
        if let Some(AttrAnswer::Value(AttrValue::Bytes(p))) = a.get(5) {
            m.insert("curve".into(), curve_json(p));
        }
        Value::Object(m)
    }
}

impl Backend for Trace {
    /// Every call is described, passed on, and recorded with its outcome and duration.
    fn call(&self, mut call: Call<'_>) -> Result<Reply> {
        let mut rec = Map::new();
        rec.insert("fn".into(), json!(call.name()));
        let session = match call.target() {
            Target::Slot(s) => {
                rec.insert("slot".into(), json!(s.0));
                None
            }
            Target::Session(s) => {
                rec.insert("session".into(), json!(s.0));
                Some(*s)
            }
            Target::None => None,
        };
        let asked = self.describe(&call, session, &mut rec);
        let started = Instant::now();
        let r = self.inner.call(call);
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        rec.insert("us".into(), json!(us));
        outcome(&r, asked.as_deref(), &mut rec);
        self.log.call(rec);
        r
    }
}

/// What the call returned, into `rec`: the return code the application sees, and what the
/// reply says without a secret (lengths, new handles, counts).
fn outcome(r: &Result<Reply>, asked: Option<&[CK_ATTRIBUTE_TYPE]>, rec: &mut Map<String, Value>) {
    let answers = match r {
        Ok(Reply::Answers(a)) => Some(a.as_slice()),
        _ => None,
    };
    let rv = match (r, answers) {
        (_, Some(a)) => answers_outcome(a),
        (Ok(_), None) => Ok(()),
        (Err(e), None) => Err(e.clone()),
    };
    put(
        rec,
        "rv",
        json!(rv.as_ref().map_or_else(Error::name, |()| "CKR_OK")),
    );
    if let Some(types) = asked {
        let entries = types
            .iter()
            .enumerate()
            .map(|(i, ty)| {
                let mut m = Map::new();
                m.insert("type".into(), json!(attr_name(*ty)));
                match answers.and_then(|a| a.get(i)) {
                    Some(AttrAnswer::Value(AttrValue::Bytes(b))) => {
                        m.insert("len".into(), json!(b.len()));
                    }
                    Some(AttrAnswer::Value(AttrValue::Template(t))) => {
                        m.insert("attributes".into(), json!(t.len()));
                    }
                    Some(AttrAnswer::Sensitive) => {
                        m.insert("sensitive".into(), json!(true));
                    }
                    Some(AttrAnswer::Invalid) => {
                        m.insert("invalid".into(), json!(true));
                    }
                    None => {}
                }
                Value::Object(m)
            })
            .collect();
        put(rec, "template", Value::Array(entries));
    }
    match r {
        Ok(Reply::Len(n)) => put(rec, "out_len", json!(n)),
        Err(Error::BufferTooSmall { needed }) => put(rec, "out_len", json!(needed)),
        Ok(Reply::Session(s)) => put(rec, "session", json!(s.0)),
        Ok(Reply::Object(o)) => put(rec, "new_objects", json!([o.0])),
        Ok(Reply::KeyPair((public, private))) => {
            put(rec, "new_objects", json!([public.0, private.0]));
        }
        Ok(Reply::Objects(found)) => put(rec, "found", json!(found.len())),
        Ok(Reply::Slots(slots)) => put(
            rec,
            "slots",
            Value::Array(slots.iter().map(|s| json!(s.0)).collect()),
        ),
        Ok(Reply::Slot(s)) => put(rec, "event_slot", json!(s.0)),
        Ok(Reply::Mechanisms(list)) => put(rec, "count", json!(list.len())),
        _ => {}
    }
}

fn put(rec: &mut Map<String, Value>, name: &str, value: Value) {
    rec.insert(name.to_owned(), value);
}

/// Input bytes by their argument's name: a PIN by its form only, the PIN a change replaces and
/// a user name not at all, anything else by its length.
fn bytes(rec: &mut Map<String, Value>, name: &str, b: Option<&[u8]>) {
    match (name, b) {
        ("pin" | "so_pin" | "new_pin", b) => put(rec, "pin_form", json!(pin_form(b))),
        ("old_pin" | "username", _) | (_, None) => {}
        ("data" | "wrapped" | "state" | "seed", Some(b)) => put(rec, "in_len", json!(b.len())),
        (other, Some(b)) => put(rec, &format!("{other}_len"), json!(b.len())),
    }
}

/// What kind of PIN was given, never the PIN or its length: `user:password` (AWS CloudHSM's
/// form), `plain`, `empty`, or `protected` (none: a protected authentication path).
fn pin_form(pin: Option<&[u8]>) -> &'static str {
    match pin {
        None => "protected",
        Some([]) => "empty",
        Some(p) if p.contains(&b':') => "user:password",
        Some(_) => "plain",
    }
}

/// A name from a table, or the number when the table does not know it.
fn enum_json(name: Option<&'static str>, v: CK_ULONG) -> Value {
    name.map_or_else(|| json!(v), |n| json!(n))
}

/// A mechanism's `CKM_*` name, or `CKM_0x…` for one without a name.
fn mechanism_text(ty: CK_MECHANISM_TYPE) -> String {
    names::mechanism_name(ty).map_or_else(|| format!("CKM_0x{ty:x}"), str::to_owned)
}

fn mgf_text(mgf: CK_RSA_PKCS_MGF_TYPE) -> String {
    names::mgf_name(mgf).map_or_else(|| format!("0x{mgf:x}"), str::to_owned)
}

/// The curve of a `CKA_EC_PARAMS` value: its name, `oid:…`, or its length when it names none.
fn curve_json(ec_params: &[u8]) -> Value {
    names::curve_name(ec_params).map_or_else(|| json!({"len": ec_params.len()}), |c| json!(c))
}

fn oaep_shape(p: &OaepParams) -> String {
    format!(
        "CK_RSA_PKCS_OAEP_PARAMS{{hash={},mgf={},source={},label_len={}}}",
        mechanism_text(p.hash_alg),
        mgf_text(p.mgf),
        if p.source == CKZ_DATA_SPECIFIED {
            "CKZ_DATA_SPECIFIED"
        } else {
            "0"
        },
        p.source_data.len()
    )
}

/// A mechanism parameter's shape: the structure's name and its non-secret fields; IVs, nonces,
/// salts, AAD and data by length only; a password not at all.
fn param_shape(p: &MechanismParams) -> String {
    use MechanismParams as P;
    match p {
        P::None => "none".into(),
        P::Bytes(b) => format!("bytes{{len={}}}", b.len()),
        P::Raw(b) => format!("raw{{len={}}}", b.len()),
        P::StringData(b) => format!("CK_KEY_DERIVATION_STRING_DATA{{len={}}}", b.len()),
        P::Ulong(v) => format!("CK_ULONG{{value={v}}}"),
        P::RsaPkcsPss {
            hash_alg,
            mgf,
            salt_len,
        } => format!(
            "CK_RSA_PKCS_PSS_PARAMS{{hash={},mgf={},slen={salt_len}}}",
            mechanism_text(*hash_alg),
            mgf_text(*mgf)
        ),
        P::RsaPkcsOaep(o) => oaep_shape(o),
        P::AesCtr { counter_bits, .. } => {
            format!("CK_AES_CTR_PARAMS{{counter_bits={counter_bits}}}")
        }
        P::Gcm {
            iv, aad, tag_bits, ..
        } => format!(
            "CK_GCM_PARAMS{{iv_len={},aad_len={},tag_bits={tag_bits}}}",
            iv.len(),
            aad.len()
        ),
        P::Ccm {
            data_len,
            nonce,
            aad,
            mac_len,
        } => format!(
            "CK_CCM_PARAMS{{data_len={data_len},nonce_len={},aad_len={},mac_len={mac_len}}}",
            nonce.len(),
            aad.len()
        ),
        P::ChaCha20Poly1305 { nonce, aad } => format!(
            "CK_SALSA20_CHACHA20_POLY1305_PARAMS{{nonce_len={},aad_len={}}}",
            nonce.len(),
            aad.len()
        ),
        P::Ecdh1Derive {
            kdf,
            shared_data,
            public_data,
        } => format!(
            "CK_ECDH1_DERIVE_PARAMS{{kdf={},shared_len={},public_len={}}}",
            names::kdf_name(*kdf).map_or_else(|| format!("0x{kdf:x}"), str::to_owned),
            shared_data.len(),
            public_data.len()
        ),
        P::Hkdf {
            extract,
            expand,
            prf_hash,
            salt_type,
            salt,
            salt_key,
            info,
        } => {
            let salt = match *salt_type {
                CKF_HKDF_SALT_NULL => "null".to_owned(),
                CKF_HKDF_SALT_DATA => format!("data,salt_len={}", salt.len()),
                CKF_HKDF_SALT_KEY => format!("key,salt_key={salt_key}"),
                other => format!("0x{other:x}"),
            };
            format!(
                "CK_HKDF_PARAMS{{extract={extract},expand={expand},prf={},salt={salt},info_len={}}}",
                mechanism_text(*prf_hash),
                info.len()
            )
        }
        P::RsaAesKeyWrap { aes_key_bits, oaep } => format!(
            "CK_RSA_AES_KEY_WRAP_PARAMS{{aes_key_bits={aes_key_bits},oaep={}}}",
            oaep_shape(oaep)
        ),
        P::AesCbcEncryptData { data, .. } => {
            format!("CK_AES_CBC_ENCRYPT_DATA_PARAMS{{data_len={}}}", data.len())
        }
        P::Eddsa { ph_flag, context } => format!(
            "CK_EDDSA_PARAMS{{ph={ph_flag},context_len={}}}",
            context.len()
        ),
        P::Pbkdf2 {
            salt_source,
            salt,
            iterations,
            prf,
            ..
        } => format!(
            "CK_PKCS5_PBKD2_PARAMS2{{salt_source={salt_source},salt_len={},iterations={iterations},prf={prf}}}",
            salt.len()
        ),
        P::GcmMessage {
            iv,
            iv_fixed_bits,
            iv_generator,
            tag_bits,
            ..
        } => format!(
            "CK_GCM_MESSAGE_PARAMS{{iv_len={},iv_fixed_bits={iv_fixed_bits},iv_generator={iv_generator},tag_bits={tag_bits}}}",
            iv.len()
        ),
    }
}

/// How an attribute's value is recorded.
enum Shown {
    /// By length, marked secret.
    Secret,
    /// A `CK_BBOOL`, as a JSON boolean.
    Bool,
    /// A `CK_ULONG`, as a number.
    Number,
    /// A `CK_ULONG` enumeration, by name.
    Enum(fn(CK_ULONG) -> Option<&'static str>),
    /// Text (a label, a date).
    Text,
    /// Bytes as `hex:…` (an id, a public exponent).
    Hex,
    /// `CKA_EC_PARAMS`, as the curve.
    Curve,
    /// A list of mechanisms, by name.
    Mechanisms,
    /// Anything else: by length.
    Length,
}

fn shown(ty: CK_ATTRIBUTE_TYPE) -> Shown {
    if is_secret(ty) {
        return Shown::Secret;
    }
    match ty {
        CKA_TOKEN
        | CKA_PRIVATE
        | CKA_MODIFIABLE
        | CKA_COPYABLE
        | CKA_DESTROYABLE
        | CKA_SENSITIVE
        | CKA_EXTRACTABLE
        | CKA_ENCRYPT
        | CKA_DECRYPT
        | CKA_WRAP
        | CKA_UNWRAP
        | CKA_SIGN
        | CKA_SIGN_RECOVER
        | CKA_VERIFY
        | CKA_VERIFY_RECOVER
        | CKA_DERIVE
        | CKA_LOCAL
        | CKA_NEVER_EXTRACTABLE
        | CKA_ALWAYS_SENSITIVE
        | CKA_ALWAYS_AUTHENTICATE
        | CKA_WRAP_WITH_TRUSTED
        | CKA_TRUSTED => Shown::Bool,
        CKA_VALUE_LEN | CKA_MODULUS_BITS | CKA_VALUE_BITS | CKA_CERTIFICATE_CATEGORY => {
            Shown::Number
        }
        CKA_CLASS => Shown::Enum(names::class_name),
        CKA_KEY_TYPE => Shown::Enum(names::key_type_name),
        CKA_CERTIFICATE_TYPE => Shown::Enum(names::certificate_type_name),
        CKA_KEY_GEN_MECHANISM | CKA_NAME_HASH_ALGORITHM => Shown::Enum(names::mechanism_name),
        CKA_LABEL | CKA_APPLICATION | CKA_URL | CKA_START_DATE | CKA_END_DATE => Shown::Text,
        CKA_ID | CKA_PUBLIC_EXPONENT | CKA_OBJECT_ID => Shown::Hex,
        CKA_EC_PARAMS => Shown::Curve,
        CKA_ALLOWED_MECHANISMS => Shown::Mechanisms,
        _ => Shown::Length,
    }
}

/// A template as the record shows it.
fn template_json(t: &Template) -> Value {
    Value::Array(t.iter().map(attribute_json).collect())
}

fn attribute_json(a: &Attribute) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), json!(attr_name(a.ty)));
    let b = match &a.value {
        AttrValue::Template(t) => {
            m.insert("value".into(), template_json(t));
            return Value::Object(m);
        }
        AttrValue::Bytes(b) => b.as_slice(),
    };
    let value = match shown(a.ty) {
        Shown::Secret => {
            m.insert("secret".into(), json!(true));
            None
        }
        Shown::Bool => a.as_bool().ok().map(|v| json!(v)),
        Shown::Number => a.as_ulong().ok().map(|v| json!(v)),
        Shown::Enum(name) => a.as_ulong().ok().map(|v| enum_json(name(v), v)),
        Shown::Text if b.len() <= MAX_SHOWN => Some(text(b)),
        Shown::Hex if b.len() <= MAX_SHOWN => {
            Some(json!(format!("hex:{}", base16ct::lower::encode_string(b))))
        }
        Shown::Curve => names::curve_name(b).map(|c| json!(c)),
        Shown::Mechanisms => a
            .as_ulongs()
            .ok()
            .map(|list| Value::Array(list.into_iter().map(|m| json!(mechanism_text(m))).collect())),
        Shown::Text | Shown::Hex | Shown::Length => None,
    };
    match value {
        Some(v) => {
            m.insert("value".into(), v);
        }
        None => {
            m.insert("len".into(), json!(b.len()));
        }
    }
    Value::Object(m)
}

/// Text as a JSON string (invalid UTF-8 replaced), at most 256 bytes of it.
fn text(b: &[u8]) -> Value {
    json!(capped(&String::from_utf8_lossy(b)))
}

/// A blank-padded field without its padding.
fn trim_blanks(b: &[u8]) -> &[u8] {
    let end = b.iter().rposition(|c| *c != b' ').map_or(0, |i| i + 1);
    b.get(..end).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use parking_lot::Mutex;

    use super::*;
    use crate::call::Functions;

    /// A backend that answers every call as the firmware might, and remembers which
    /// attributes were read.
    #[derive(Default)]
    struct Fake {
        read: Mutex<Vec<CK_ATTRIBUTE_TYPE>>,
    }

    impl crate::call::SessionFunctions for Fake {
        fn login(&self, _: SessionHandle, _: UserType, _: Option<&[u8]>) -> Result<()> {
            Err(Error::PinIncorrect)
        }
    }

    impl crate::call::ObjectFunctions for Fake {
        fn get_attribute_value(
            &self,
            _: SessionHandle,
            _: ObjectHandle,
            types: &[CK_ATTRIBUTE_TYPE],
        ) -> Result<Vec<AttrAnswer>> {
            self.read.lock().extend_from_slice(types);
            Ok(types
                .iter()
                .map(|t| match *t {
                    CKA_CLASS => {
                        AttrAnswer::Value(AttrValue::Bytes(CKO_PRIVATE_KEY.to_ne_bytes().to_vec()))
                    }
                    CKA_KEY_TYPE => {
                        AttrAnswer::Value(AttrValue::Bytes(CKK_RSA.to_ne_bytes().to_vec()))
                    }
                    CKA_MODULUS => AttrAnswer::Value(AttrValue::Bytes(vec![0xc5; 256])),
                    CKA_LABEL => AttrAnswer::Value(AttrValue::Bytes(b"k".to_vec())),
                    CKA_PRIVATE_EXPONENT => AttrAnswer::Sensitive,
                    _ => AttrAnswer::Invalid,
                })
                .collect())
        }
    }

    impl crate::call::SignFunctions for Fake {
        fn sign_init(&self, _: SessionHandle, _: &Mechanism, _: ObjectHandle) -> Result<()> {
            Ok(())
        }
        fn sign(&self, _: SessionHandle, _: &[u8], out: Option<&mut [u8]>) -> Result<usize> {
            match out {
                None => Ok(256),
                Some(o) if o.len() < 256 => Err(Error::BufferTooSmall { needed: 256 }),
                Some(o) => {
                    o.fill(7);
                    Ok(256)
                }
            }
        }
    }

    impl crate::call::KeyFunctions for Fake {
        fn generate_key(
            &self,
            _: SessionHandle,
            _: &Mechanism,
            _: &Template,
        ) -> Result<ObjectHandle> {
            Ok(ObjectHandle(9))
        }
    }

    impl crate::call::SlotFunctions for Fake {}
    impl crate::call::CipherFunctions for Fake {}
    impl crate::call::DigestFunctions for Fake {}
    impl crate::call::DualFunctions for Fake {}
    impl crate::call::RandomFunctions for Fake {}
    impl crate::call::MessageFunctions for Fake {}

    impl Backend for Fake {
        fn call(&self, call: Call<'_>) -> Result<Reply> {
            call.dispatch(self)
        }
    }

    fn assert_functions<T: Functions>() {}

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn calls_are_described_without_secrets_and_outcomes_pass_through() {
        assert_functions::<Fake>();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let fake = Arc::new(Fake::default());
        let log = TraceLog::open(&path, Scope::Module).unwrap();
        let t = Trace::new(fake.clone(), log);
        let s = SessionHandle(3);
        assert_eq!(
            t.login(s, CKU_USER, Some(b"alice:s3cret-pin")),
            Err(Error::PinIncorrect)
        );
        let pss = Mechanism::with(
            CKM_SHA256_RSA_PKCS_PSS,
            MechanismParams::RsaPkcsPss {
                hash_alg: CKM_SHA256,
                mgf: CKG_MGF1_SHA256,
                salt_len: 32,
            },
        );
        t.sign_init(s, &pss, ObjectHandle(5)).unwrap();
        assert_eq!(t.sign(s, b"data!", None), Ok(256));
        let mut small = [0u8; 8];
        assert_eq!(
            t.sign(s, b"data!", Some(&mut small)),
            Err(Error::BufferTooSmall { needed: 256 })
        );
        let template = Template::new()
            .with(Attribute::bool(CKA_TOKEN, true))
            .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES))
            .with(Attribute::ulong(CKA_VALUE_LEN, 32))
            .with(Attribute::bytes(CKA_LABEL, b"my key".to_vec()))
            .with(Attribute::bytes(CKA_ID, vec![1, 0xab]))
            .with(Attribute::bytes(CKA_VALUE, vec![0x5a; 32]));
        let gen_mech = Mechanism::new(CKM_AES_KEY_GEN);
        assert_eq!(t.generate_key(s, &gen_mech, &template), Ok(ObjectHandle(9)));
        // What the recorder itself read about the key: never a secret attribute.
        let read = fake.read.lock().clone();
        assert!(read.contains(&CKA_KEY_TYPE), "{read:?}");
        assert!(read.iter().all(|t| !is_secret(*t)), "{read:?}");
        let answers = t
            .get_attribute_value(s, ObjectHandle(5), &[CKA_LABEL, CKA_PRIVATE_EXPONENT])
            .unwrap();
        assert_eq!(answers.len(), 2);
        drop(t);

        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains("s3cret") && !text.contains("alice"),
            "{text}"
        );
        assert!(!text.contains("5a5a") && !text.contains("c5c5"), "{text}");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let l = lines(&path);
        assert_eq!(l.len(), 8, "{text}");
        assert_eq!(l[0]["kind"], "start");
        assert_eq!(l[0]["scope"], "module");
        assert_eq!(l[0]["v"], 1);
        assert!(l[0]["module"].as_str().unwrap().starts_with("ferrohsm "));
        assert_eq!(l[1]["fn"], "C_Login");
        assert_eq!(l[1]["rv"], "CKR_PIN_INCORRECT");
        assert_eq!(l[1]["user"], "CKU_USER");
        assert_eq!(l[1]["pin_form"], "user:password");
        assert_eq!(l[1]["session"], 3);
        assert_eq!(l[2]["fn"], "C_SignInit");
        assert_eq!(
            l[2]["mechanism"],
            json!({"type": "CKM_SHA256_RSA_PKCS_PSS",
                   "param": "CK_RSA_PKCS_PSS_PARAMS{hash=CKM_SHA256,mgf=CKG_MGF1_SHA256,slen=32}"})
        );
        assert_eq!(
            l[2]["key"],
            json!({"handle": 5, "class": "CKO_PRIVATE_KEY", "key_type": "CKK_RSA", "bits": 2048})
        );
        assert_eq!(l[3]["fn"], "C_Sign");
        assert_eq!(l[3]["query"], true);
        assert_eq!(l[3]["in_len"], 5);
        assert_eq!(l[3]["out_len"], 256);
        assert_eq!(l[4]["rv"], "CKR_BUFFER_TOO_SMALL");
        assert_eq!(l[4]["out_cap"], 8);
        assert_eq!(l[4]["out_len"], 256);
        assert_eq!(l[5]["fn"], "C_GenerateKey");
        assert_eq!(l[5]["new_objects"], json!([9]));
        assert_eq!(
            l[5]["template"],
            json!([
                {"type": "CKA_TOKEN", "value": true},
                {"type": "CKA_KEY_TYPE", "value": "CKK_AES"},
                {"type": "CKA_VALUE_LEN", "value": 32},
                {"type": "CKA_LABEL", "value": "my key"},
                {"type": "CKA_ID", "value": "hex:01ab"},
                {"type": "CKA_VALUE", "len": 32, "secret": true},
            ])
        );
        assert_eq!(l[6]["fn"], "C_GetAttributeValue");
        assert_eq!(l[6]["object"], 5);
        assert_eq!(l[6]["rv"], "CKR_ATTRIBUTE_SENSITIVE");
        assert_eq!(
            l[6]["template"],
            json!([{"type": "CKA_LABEL", "len": 1},
                   {"type": "CKA_PRIVATE_EXPONENT", "sensitive": true}])
        );
        for (i, r) in l.iter().enumerate().skip(1).take(6) {
            assert_eq!(r["kind"], "call");
            assert!(r["us"].is_u64() && r["thread"].is_u64() && r["pid"].is_u64());
            assert!(r["seq"].as_u64().unwrap() >= u64::try_from(i).unwrap());
        }
        assert_eq!(
            l[7],
            json!({"v": 1, "kind": "end", "pid": std::process::id(),
                                "calls": 6, "time": l[7]["time"]})
        );
    }

    #[test]
    fn threads_append_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let log = TraceLog::open(&path, Scope::Slot(2)).unwrap();
        let t = Arc::new(Trace::new(Arc::new(Fake::default()), log));
        std::thread::scope(|scope| {
            for _ in 0..8 {
                let t = Arc::clone(&t);
                scope.spawn(move || {
                    for _ in 0..200 {
                        let _ = t.sign(SessionHandle(1), &[0u8; 300], None);
                    }
                });
            }
        });
        drop(t);
        let l = lines(&path);
        assert_eq!(l.len(), 2 + 8 * 200);
        assert_eq!(l[0]["slot_config"], 2);
        let threads: std::collections::BTreeSet<u64> =
            l.iter().filter_map(|r| r["thread"].as_u64()).collect();
        assert_eq!(threads.len(), 8);
        let seqs: std::collections::BTreeSet<u64> =
            l.iter().filter_map(|r| r["seq"].as_u64()).collect();
        assert_eq!(seqs.len(), 8 * 200, "sequence numbers are unique");
    }

    #[test]
    fn parameter_shapes_and_pins_hold_no_secret() {
        let gcm = MechanismParams::Gcm {
            iv: vec![1; 12],
            iv_bits: 96,
            aad: Vec::new(),
            tag_bits: 128,
        };
        assert_eq!(
            param_shape(&gcm),
            "CK_GCM_PARAMS{iv_len=12,aad_len=0,tag_bits=128}"
        );
        assert_eq!(
            param_shape(&MechanismParams::Bytes(vec![0; 16])),
            "bytes{len=16}"
        );
        assert_eq!(param_shape(&MechanismParams::None), "none");
        let pbkdf2 = MechanismParams::Pbkdf2 {
            salt_source: 1,
            salt: vec![0; 8],
            iterations: 1000,
            prf: 2,
            prf_data: Vec::new(),
            password: b"hunter2".to_vec(),
        };
        let shape = param_shape(&pbkdf2);
        assert!(
            !shape.contains("hunter2") && !shape.contains("7"),
            "{shape}"
        );
        assert_eq!(pin_form(Some(b"")), "empty");
        assert_eq!(pin_form(Some(b"123456")), "plain");
        assert_eq!(pin_form(None), "protected");
        let ec = Attribute::bytes(CKA_EC_PARAMS, vec![6, 5, 0x2b, 0x81, 4, 0, 0x22]);
        assert_eq!(
            attribute_json(&ec),
            json!({"type": "CKA_EC_PARAMS", "value": "P-384"})
        );
        let prime = Attribute::bytes(CKA_PRIME_1, vec![0xee; 128]);
        assert_eq!(
            attribute_json(&prime),
            json!({"type": "CKA_PRIME_1", "len": 128, "secret": true})
        );
        assert_eq!(trim_blanks(b"tok   "), b"tok");
        assert_eq!(trim_blanks(b"    "), b"");
    }
}
