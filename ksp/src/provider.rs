//! The provider's behaviour: CNG calls translated onto the `Backend` trait, the same firmware
//! (or daemon, or real HSM) the PKCS#11 module serves, chosen by the same configuration.
//!
//! No raw pointers are read here: `abi` decodes them into owned values first. The buffers the
//! provider hands out are built here as plain memory (`Vec<u64>`, so 8-byte aligned) and kept
//! in a registry until `FreeBuffer` returns them.

use bridge::BackendExt as _;
use std::collections::BTreeMap;
use std::ffi::c_void;
use std::sync::Arc;

use bridge::{
    AttrAnswer, AttrValue, Attribute, Backend, Error, Mechanism, MechanismParams, OaepParams,
    ObjectHandle, SessionHandle, SlotId, Template,
};
use cryptoki_sys::*;
use der::asn1::OctetStringRef;
use der::{Decode, Encode};
use parking_lot::Mutex;
use spki::SubjectPublicKeyInfoRef;
use zeroize::Zeroizing;

use crate::blob::{self, BlobType, Curve, KeyBlob, RsaCrt};
use crate::error::{BAD_FLAGS, INVALID_HANDLE, INVALID_PARAMETER, KResult, NOT_SUPPORTED, Status};
use crate::handles::{Kind, Table};
use crate::types::*;

/// The provider's registered name.
pub const PROVIDER_NAME: &str = "FerroHSM Key Storage Provider";

/// The environment variable naming the token (its label).
pub const TOKEN_ENV: &str = "FERROHSM_KSP_TOKEN";
/// The environment variable holding the user PIN.
pub const PIN_ENV: &str = "FERROHSM_PIN";

/// The output of a call that writes bytes: the size a probe asked for, or the bytes.
pub(crate) enum Out {
    /// Only the size (the caller passed no output buffer).
    Size(usize),
    /// The bytes.
    Data(Zeroizing<Vec<u8>>),
}

/// A padding request, decoded from `dwFlags` and `pPaddingInfo`.
#[derive(Debug)]
pub(crate) enum Padding {
    /// No padding (ECDSA, or `BCRYPT_PAD_NONE`).
    None,
    /// PKCS#1 v1.5; for signatures, the hash whose DigestInfo to prepend (`None`: raw).
    Pkcs1(Option<String>),
    /// PSS: hash and salt length.
    Pss(String, u32),
    /// OAEP: hash and label.
    Oaep(String, Vec<u8>),
}

// ---- algorithms --------------------------------------------------------------------------

/// A key algorithm the provider supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Alg {
    /// `RSA`.
    Rsa,
    /// `ECDSA_P256` / `_P384` / `_P521`.
    Ecdsa(Curve),
    /// `ECDH_P256` / `_P384` / `_P521`.
    Ecdh(Curve),
}

const CURVES: [Curve; 3] = [Curve::P256, Curve::P384, Curve::P521];

impl Alg {
    fn all() -> Vec<Self> {
        let mut v = vec![Self::Rsa];
        v.extend(CURVES.map(Self::Ecdsa));
        v.extend(CURVES.map(Self::Ecdh));
        v
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::all().into_iter().find(|a| a.name() == name)
    }

    fn name(self) -> &'static str {
        match self {
            Self::Rsa => "RSA",
            Self::Ecdsa(Curve::P256) => "ECDSA_P256",
            Self::Ecdsa(Curve::P384) => "ECDSA_P384",
            Self::Ecdsa(Curve::P521) => "ECDSA_P521",
            Self::Ecdh(Curve::P256) => "ECDH_P256",
            Self::Ecdh(Curve::P384) => "ECDH_P384",
            Self::Ecdh(Curve::P521) => "ECDH_P521",
        }
    }

    fn group(self) -> &'static str {
        match self {
            Self::Rsa => "RSA",
            Self::Ecdsa(_) => "ECDSA",
            Self::Ecdh(_) => "ECDH",
        }
    }

    fn class_and_operations(self) -> (u32, u32) {
        match self {
            Self::Rsa => (
                NCRYPT_ASYMMETRIC_ENCRYPTION_INTERFACE,
                NCRYPT_ASYMMETRIC_ENCRYPTION_OPERATION | NCRYPT_SIGNATURE_OPERATION,
            ),
            Self::Ecdsa(_) => (NCRYPT_SIGNATURE_INTERFACE, NCRYPT_SIGNATURE_OPERATION),
            Self::Ecdh(_) => (
                NCRYPT_SECRET_AGREEMENT_INTERFACE,
                NCRYPT_SECRET_AGREEMENT_OPERATION,
            ),
        }
    }

    fn curve(self) -> Option<Curve> {
        match self {
            Self::Rsa => None,
            Self::Ecdsa(c) | Self::Ecdh(c) => Some(c),
        }
    }

    fn default_usage(self) -> u32 {
        match self {
            Self::Rsa => NCRYPT_ALLOW_DECRYPT_FLAG | NCRYPT_ALLOW_SIGNING_FLAG,
            Self::Ecdsa(_) => NCRYPT_ALLOW_SIGNING_FLAG,
            Self::Ecdh(_) => NCRYPT_ALLOW_KEY_AGREEMENT_FLAG,
        }
    }
}

/// A hash named by its CNG identifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hash {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn from_name(name: &str) -> KResult<Self> {
        Ok(match name {
            "SHA1" => Self::Sha1,
            "SHA256" => Self::Sha256,
            "SHA384" => Self::Sha384,
            "SHA512" => Self::Sha512,
            _ => return Err(NOT_SUPPORTED),
        })
    }

    fn len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    fn ckm(self) -> CK_MECHANISM_TYPE {
        match self {
            Self::Sha1 => CKM_SHA_1,
            Self::Sha256 => CKM_SHA256,
            Self::Sha384 => CKM_SHA384,
            Self::Sha512 => CKM_SHA512,
        }
    }

    fn mgf(self) -> CK_RSA_PKCS_MGF_TYPE {
        match self {
            Self::Sha1 => CKG_MGF1_SHA1,
            Self::Sha256 => CKG_MGF1_SHA256,
            Self::Sha384 => CKG_MGF1_SHA384,
            Self::Sha512 => CKG_MGF1_SHA512,
        }
    }

    /// The DER `DigestInfo` prefix of PKCS#1 v1.5 signatures (RFC 8017 §9.2, note 1), as the
    /// `rsa` crate builds it from the hash's OID.
    fn digest_info_prefix(self) -> Box<[u8]> {
        match self {
            Self::Sha1 => rsa::Pkcs1v15Sign::new::<sha1::Sha1>(),
            Self::Sha256 => rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
            Self::Sha384 => rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
            Self::Sha512 => rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
        }
        .prefix
    }

    fn digest_alg(self) -> &'static aws_lc_rs::digest::Algorithm {
        match self {
            Self::Sha1 => &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => &aws_lc_rs::digest::SHA256,
            Self::Sha384 => &aws_lc_rs::digest::SHA384,
            Self::Sha512 => &aws_lc_rs::digest::SHA512,
        }
    }

    fn hmac_alg(self) -> aws_lc_rs::hmac::Algorithm {
        match self {
            Self::Sha1 => aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            Self::Sha256 => aws_lc_rs::hmac::HMAC_SHA256,
            Self::Sha384 => aws_lc_rs::hmac::HMAC_SHA384,
            Self::Sha512 => aws_lc_rs::hmac::HMAC_SHA512,
        }
    }
}

// ---- state -------------------------------------------------------------------------------

/// An open provider: one session on the chosen token.
pub(crate) struct Provider {
    backend: Arc<dyn Backend>,
    session: SessionHandle,
    /// The token's slot (behind the router).
    slot: SlotId,
    /// Whether `FERROHSM_PIN` logged the user in (else private keys are out of reach).
    logged_in: bool,
    /// Serialises operations on the session (PKCS#11 has one active operation per session).
    op: Mutex<()>,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.backend.close_session(self.session);
    }
}

/// A key created but not finalized yet.
#[derive(Clone, Debug)]
struct Pending {
    alg: Alg,
    name: Option<String>,
    length: Option<u32>,
    export_policy: u32,
    usage: Option<u32>,
    overwrite: bool,
}

/// A usable key: its firmware objects and what the provider reports about it.
#[derive(Clone, Debug)]
struct Ready {
    alg: Alg,
    name: Option<String>,
    id: Vec<u8>,
    private: Option<ObjectHandle>,
    public: Option<ObjectHandle>,
    export_policy: u32,
    usage: u32,
    bits: u32,
    /// A session object (an ephemeral key): destroyed with its handle.
    ephemeral: bool,
}

#[derive(Clone, Debug)]
enum KeyState {
    Pending(Pending),
    Ready(Ready),
}

/// A key handle's object.
pub(crate) struct Key {
    provider: usize,
    state: Mutex<KeyState>,
}

/// An agreed secret (`NCRYPT_SECRET_HANDLE`): the ECDH shared value Z, big-endian.
pub(crate) struct Secret {
    provider: usize,
    z: Zeroizing<Vec<u8>>,
}

/// Memory handed to the caller, alive until `FreeBuffer`.
enum Buffer {
    /// A block of structures and strings.
    Block(#[allow(dead_code)] Vec<u64>),
    /// An `EnumKeys` cursor: the names still to report.
    EnumState {
        #[allow(dead_code)]
        anchor: Vec<u64>,
        provider: usize,
        keys: Vec<(String, &'static str)>,
        next: usize,
    },
}

struct State {
    providers: Table<Arc<Provider>>,
    keys: Table<Arc<Key>>,
    secrets: Table<Arc<Secret>>,
    buffers: BTreeMap<usize, Buffer>,
}

static STATE: Mutex<State> = Mutex::new(State {
    providers: Table::new(Kind::Provider),
    keys: Table::new(Kind::Key),
    secrets: Table::new(Kind::Secret),
    buffers: BTreeMap::new(),
});

/// The backend and the configured token label, built once per process from the same
/// configuration as the PKCS#11 module.
type Configured = (Arc<dyn Backend>, Option<String>);
static BACKEND: Mutex<Option<Configured>> = Mutex::new(None);

fn backend() -> KResult<Configured> {
    let mut guard = BACKEND.lock();
    if let Some((b, token)) = guard.as_ref() {
        return Ok((Arc::clone(b), token.clone()));
    }
    let built = bridge::config::Config::from_env().and_then(|config| {
        let router = ferrohsm_wiring::build_router(&config)?;
        Ok((router, config.ksp.token))
    });
    let (router, token) = built.map_err(|e| {
        log::error!("ferrohsm-ksp: cannot build the backend from the configuration: {e}");
        Status::from(e)
    })?;
    let b: Arc<dyn Backend> = Arc::new(router);
    *guard = Some((Arc::clone(&b), token.clone()));
    Ok((b, token))
}

fn provider(h: usize) -> KResult<Arc<Provider>> {
    STATE.lock().providers.get(h)
}

/// The provider and the key, checking that the key belongs to the provider.
fn key(hp: usize, hk: usize) -> KResult<(Arc<Provider>, Arc<Key>)> {
    let st = STATE.lock();
    let p = st.providers.get(hp)?;
    let k = st.keys.get(hk)?;
    if k.provider != hp {
        return Err(INVALID_HANDLE);
    }
    Ok((p, k))
}

fn ready(k: &Key) -> KResult<Ready> {
    match &*k.state.lock() {
        KeyState::Ready(r) => Ok(r.clone()),
        KeyState::Pending(_) => Err(Status(NTE_BAD_KEY_STATE)),
    }
}

fn check_flags(flags: u32, allowed: u32) -> KResult<()> {
    if flags & !(allowed | NCRYPT_SILENT_FLAG) != 0 {
        return Err(BAD_FLAGS);
    }
    Ok(())
}

/// The stable `CKA_ID` of a named key: the first 16 bytes of SHA-256 over the UTF-8 name, so a
/// PKCS#11 application finds the same id for the same name in every process.
pub(crate) fn key_id(name: &str) -> Vec<u8> {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, name.as_bytes());
    d.as_ref().iter().take(16).copied().collect()
}

// ---- provider-level calls ----------------------------------------------------------------

/// `OpenProvider`.
pub(crate) fn open_provider(name: Option<&str>, flags: u32) -> KResult<usize> {
    ferrohsm_wiring::logger::init_from_env();
    check_flags(flags, 0)?;
    if let Some(n) = name {
        if n != PROVIDER_NAME {
            log::debug!("ferrohsm-ksp: opened under the name {n:?}");
        }
    }
    let (backend, configured_token) = backend()?;
    let slot = choose_slot(backend.as_ref(), configured_token)?;
    let session = backend.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)?;
    let mut p = Provider {
        backend: Arc::clone(&backend),
        session,
        slot,
        logged_in: false,
        op: Mutex::new(()),
    };
    match std::env::var(PIN_ENV) {
        Ok(pin) => {
            let pin = Zeroizing::new(pin);
            match backend.login(session, CKU_USER, Some(pin.as_bytes())) {
                Ok(()) | Err(Error::UserAlreadyLoggedIn) => p.logged_in = true,
                Err(e) => {
                    log::error!("ferrohsm-ksp: user login refused: {e}");
                    return Err(e.into());
                }
            }
        }
        Err(_) => log::warn!(
            "ferrohsm-ksp: {PIN_ENV} is not set: the token is open without login, so private \
             keys are out of reach (NTE_PERM); the provider never prompts"
        ),
    }
    STATE.lock().providers.insert(Arc::new(p))
}

fn choose_slot(b: &dyn Backend, configured: Option<String>) -> KResult<SlotId> {
    let want = std::env::var(TOKEN_ENV).ok().or(configured);
    for slot in b.slot_list(true)? {
        let Ok(info) = b.token_info(slot) else {
            continue;
        };
        let label = info.label.trim_end();
        match &want {
            Some(w) if label == w => return Ok(slot),
            Some(_) => {}
            None if info.flags & CKF_TOKEN_INITIALIZED != 0 => return Ok(slot),
            None => {}
        }
    }
    match want {
        Some(w) => log::error!(
            "ferrohsm-ksp: no token labelled {w:?} ({TOKEN_ENV} or [ksp] token in the configuration)"
        ),
        None => log::error!("ferrohsm-ksp: no initialized token"),
    }
    Err(Status(NTE_DEVICE_NOT_FOUND))
}

/// `FreeProvider`: the handle dies, and with it the provider's key and secret handles.
pub(crate) fn free_provider(hp: usize) -> KResult<()> {
    let mut st = STATE.lock();
    let p = st.providers.remove(hp)?;
    for (h, k) in st.keys.live() {
        if k.provider == hp {
            let _ = st.keys.remove(h);
            if let KeyState::Ready(r) = &*k.state.lock() {
                if r.ephemeral {
                    destroy_objects(&p, r);
                }
            }
        }
    }
    for (h, s) in st.secrets.live() {
        if s.provider == hp {
            let _ = st.secrets.remove(h);
        }
    }
    st.buffers.retain(|_, b| match b {
        Buffer::EnumState { provider, .. } => *provider != hp,
        Buffer::Block(_) => true,
    });
    Ok(())
}

fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

fn dword(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

/// `GetProviderProperty`.
pub(crate) fn get_provider_property(hp: usize, prop: &str, flags: u32) -> KResult<Vec<u8>> {
    check_flags(flags, NCRYPT_PERSIST_ONLY_FLAG)?;
    let _ = provider(hp)?;
    Ok(match prop {
        "Name" => utf16z(PROVIDER_NAME),
        "Impl Type" => dword(NCRYPT_IMPL_HARDWARE_FLAG),
        "Version" => dword(0x0001_0000),
        "Max Name Length" => dword(MAX_NAME_CHARS),
        _ => return Err(NOT_SUPPORTED),
    })
}

/// The longest key name, in UTF-16 units (a CKA_LABEL has no limit; this keeps names sane).
const MAX_NAME_CHARS: u32 = 255;

/// `SetProviderProperty`: the caller-context properties are accepted and ignored.
pub(crate) fn set_provider_property(
    hp: usize,
    prop: &str,
    _value: &[u8],
    flags: u32,
) -> KResult<()> {
    check_flags(flags, NCRYPT_PERSIST_FLAG | NCRYPT_PERSIST_ONLY_FLAG)?;
    let _ = provider(hp)?;
    match prop {
        "Use Context" | "HWND Handle" => Ok(()),
        _ => Err(NOT_SUPPORTED),
    }
}

/// `IsAlgSupported`.
pub(crate) fn is_alg_supported(hp: usize, alg: &str, flags: u32) -> KResult<()> {
    check_flags(flags, 0)?;
    let _ = provider(hp)?;
    Alg::from_name(alg).map(|_| ()).ok_or(NOT_SUPPORTED)
}

/// Lays out `n` records of 24 bytes followed by NUL-terminated UTF-16 strings in one 8-aligned
/// block; `record(i, strings_addr)` writes record `i` given the addresses of its strings.
fn block(
    records: usize,
    strings: &[Vec<&str>],
    mut record: impl FnMut(usize, &[usize], &mut Vec<u8>),
) -> KResult<(usize, Vec<u64>)> {
    const RECORD: usize = 24;
    let encoded: Vec<Vec<Vec<u8>>> = strings
        .iter()
        .map(|ss| ss.iter().map(|s| utf16z(s)).collect())
        .collect();
    let strings_len: usize = encoded.iter().flatten().map(Vec::len).sum();
    let total = records * RECORD + strings_len;
    let mut words = vec![0u64; total.div_ceil(8).max(1)];
    let base = words.as_ptr().addr();
    let mut image = Vec::with_capacity(words.len() * 8);
    let mut cursor = base + records * RECORD;
    let mut addrs = Vec::new();
    for ss in &encoded {
        let mut a = Vec::new();
        for s in ss {
            a.push(cursor);
            cursor += s.len();
        }
        addrs.push(a);
    }
    for i in 0..records {
        let start = image.len();
        record(
            i,
            addrs.get(i).map(Vec::as_slice).unwrap_or_default(),
            &mut image,
        );
        if image.len() != start + RECORD {
            return Err(Status(NTE_INTERNAL_ERROR));
        }
    }
    for s in encoded.iter().flatten() {
        image.extend_from_slice(s);
    }
    image.resize(words.len() * 8, 0);
    for (w, chunk) in words.iter_mut().zip(image.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *w = u64::from_ne_bytes(b);
    }
    Ok((base, words))
}

fn push_ptr(image: &mut Vec<u8>, addr: usize) {
    image.extend_from_slice(&addr.to_ne_bytes());
}

fn register(words: Vec<u64>) -> *mut c_void {
    let mut words = words;
    let ptr = words.as_mut_ptr().cast::<c_void>();
    STATE
        .lock()
        .buffers
        .insert(ptr.addr(), Buffer::Block(words));
    ptr
}

/// `EnumAlgorithms`: the algorithms of the operation classes in `class` (0: all).
pub(crate) fn enum_algorithms(
    hp: usize,
    class: u32,
    flags: u32,
) -> KResult<(u32, *mut NCryptAlgorithmName)> {
    check_flags(flags, 0)?;
    let known = NCRYPT_CIPHER_OPERATION
        | NCRYPT_HASH_OPERATION
        | NCRYPT_ASYMMETRIC_ENCRYPTION_OPERATION
        | NCRYPT_SECRET_AGREEMENT_OPERATION
        | NCRYPT_SIGNATURE_OPERATION
        | NCRYPT_RNG_OPERATION;
    if class & !known != 0 {
        return Err(INVALID_PARAMETER);
    }
    let _ = provider(hp)?;
    let algs: Vec<Alg> = Alg::all()
        .into_iter()
        .filter(|a| class == 0 || a.class_and_operations().1 & class != 0)
        .collect();
    let names: Vec<Vec<&str>> = algs.iter().map(|a| vec![a.name()]).collect();
    let (_, words) = block(algs.len(), &names, |i, s, image| {
        let (cls, ops) = algs
            .get(i)
            .map(|a| a.class_and_operations())
            .unwrap_or_default();
        push_ptr(image, s.first().copied().unwrap_or(0));
        image.extend_from_slice(&cls.to_ne_bytes());
        image.extend_from_slice(&ops.to_ne_bytes());
        image.extend_from_slice(&0u32.to_ne_bytes());
        image.extend_from_slice(&0u32.to_ne_bytes());
    })?;
    let count = u32::try_from(algs.len()).map_err(|_| Status(NTE_INTERNAL_ERROR))?;
    Ok((count, register(words).cast()))
}

/// `FreeBuffer`: only memory this provider handed out, each block once.
pub(crate) fn free_buffer(addr: usize) -> KResult<()> {
    STATE
        .lock()
        .buffers
        .remove(&addr)
        .map(|_| ())
        .ok_or(INVALID_PARAMETER)
}

/// `EnumKeys`: one key per call; the cursor is a buffer of ours, freed with `FreeBuffer`.
pub(crate) fn enum_keys(
    hp: usize,
    state: Option<usize>,
    flags: u32,
) -> KResult<(*mut NCryptKeyName, Option<*mut c_void>)> {
    check_flags(flags, NCRYPT_MACHINE_KEY_FLAG)?;
    let p = provider(hp)?;
    let mut new_state = None;
    let addr = match state {
        Some(a) => a,
        None => {
            let keys = list_keys(&p)?;
            let mut anchor = vec![0u64; 1];
            let ptr = anchor.as_mut_ptr().cast::<c_void>();
            STATE.lock().buffers.insert(
                ptr.addr(),
                Buffer::EnumState {
                    anchor,
                    provider: hp,
                    keys,
                    next: 0,
                },
            );
            new_state = Some(ptr);
            ptr.addr()
        }
    };
    let next = {
        let mut st = STATE.lock();
        match st.buffers.get_mut(&addr) {
            Some(Buffer::EnumState {
                provider,
                keys,
                next,
                ..
            }) if *provider == hp => {
                let item = keys.get(*next).cloned();
                if item.is_some() {
                    *next += 1;
                }
                item
            }
            _ => return Err(INVALID_PARAMETER),
        }
    };
    let Some((name, alg)) = next else {
        // A cursor the caller holds stays theirs to free; a brand-new one over no keys is
        // never handed out, so it is dropped here.
        if let Some(s) = new_state {
            let _ = free_buffer(s.addr());
        }
        return Err(Status(NTE_NO_MORE_ITEMS));
    };
    let (_, words) = block(1, &[vec![name.as_str(), alg]], |_, s, image| {
        push_ptr(image, s.first().copied().unwrap_or(0));
        push_ptr(image, s.get(1).copied().unwrap_or(0));
        image.extend_from_slice(&0u32.to_ne_bytes());
        image.extend_from_slice(&0u32.to_ne_bytes());
    })?;
    Ok((register(words).cast(), new_state))
}

// ---- firmware helpers --------------------------------------------------------------------

impl Provider {
    fn find(&self, template: &Template) -> KResult<Vec<ObjectHandle>> {
        let _op = self.op.lock();
        self.backend.find_objects_init(self.session, template)?;
        let mut all = Vec::new();
        let result = loop {
            match self.backend.find_objects(self.session, 64) {
                Ok(batch) if batch.is_empty() => break Ok(()),
                Ok(batch) => all.extend(batch),
                Err(e) => break Err(e),
            }
        };
        let _ = self.backend.find_objects_final(self.session);
        result?;
        Ok(all)
    }

    fn find_labelled(&self, class: CK_OBJECT_CLASS, name: &str) -> KResult<Vec<ObjectHandle>> {
        self.find(
            &Template::new()
                .with(Attribute::ulong(CKA_CLASS, class))
                .with(Attribute::bytes(CKA_LABEL, name.as_bytes().to_vec())),
        )
    }

    /// One attribute: `Ok(None)` if the object has none, `NTE_NOT_SUPPORTED` if the firmware's
    /// export check withholds it.
    fn attr(
        &self,
        obj: ObjectHandle,
        ty: CK_ATTRIBUTE_TYPE,
    ) -> KResult<Option<Zeroizing<Vec<u8>>>> {
        let answers = {
            let _op = self.op.lock();
            self.backend.get_attribute_value(self.session, obj, &[ty])?
        };
        match answers.first() {
            Some(AttrAnswer::Value(AttrValue::Bytes(b))) => Ok(Some(Zeroizing::new(b.clone()))),
            Some(AttrAnswer::Sensitive) => Err(NOT_SUPPORTED),
            _ => Ok(None),
        }
    }

    fn need(&self, obj: ObjectHandle, ty: CK_ATTRIBUTE_TYPE) -> KResult<Zeroizing<Vec<u8>>> {
        self.attr(obj, ty)?.ok_or(Status(NTE_BAD_KEY))
    }

    fn flag(&self, obj: ObjectHandle, ty: CK_ATTRIBUTE_TYPE) -> KResult<bool> {
        Ok(matches!(self.attr(obj, ty)?.as_deref().map(Vec::as_slice), Some([b]) if *b != 0))
    }

    fn ulong(&self, obj: ObjectHandle, ty: CK_ATTRIBUTE_TYPE) -> KResult<Option<CK_ULONG>> {
        Ok(self.attr(obj, ty)?.and_then(|b| {
            let a: [u8; size_of::<CK_ULONG>()] = b.as_slice().try_into().ok()?;
            Some(CK_ULONG::from_ne_bytes(a))
        }))
    }
}

/// The key's private object; without one, `NTE_PERM` when no user is logged in (the private
/// half may exist but is out of reach), else `NTE_BAD_KEY` (a public-only key).
fn private_of(p: &Provider, r: &Ready) -> KResult<ObjectHandle> {
    match r.private {
        Some(h) => Ok(h),
        None if !p.logged_in => {
            log::warn!("ferrohsm-ksp: a private-key operation without {PIN_ENV}: NTE_PERM");
            Err(Status(NTE_PERM))
        }
        None => Err(Status(NTE_BAD_KEY)),
    }
}

fn destroy_objects(p: &Provider, r: &Ready) {
    let _op = p.op.lock();
    for h in [r.private, r.public].into_iter().flatten() {
        let _ = p.backend.destroy_object(p.session, h);
    }
}

/// The key a pair of firmware objects makes (either may be missing, not both).
fn describe(
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

fn list_keys(p: &Provider) -> KResult<Vec<(String, &'static str)>> {
    let mut out: Vec<(String, &'static str)> = Vec::new();
    for class in [CKO_PRIVATE_KEY, CKO_PUBLIC_KEY] {
        for obj in p.find(&Template::new().with(Attribute::ulong(CKA_CLASS, class)))? {
            let Some(label) = p.attr(obj, CKA_LABEL)? else {
                continue;
            };
            let Ok(name) = String::from_utf8(label.to_vec()) else {
                continue;
            };
            if name.is_empty() || out.iter().any(|(n, _)| *n == name) {
                continue;
            }
            let (private, public) = if class == CKO_PRIVATE_KEY {
                (Some(obj), None)
            } else {
                (None, Some(obj))
            };
            if let Ok(r) = describe(p, Some(name.clone()), private, public) {
                out.push((name, r.alg.name()));
            }
        }
    }
    Ok(out)
}

fn new_key(hp: usize, state: KeyState) -> KResult<usize> {
    STATE.lock().keys.insert(Arc::new(Key {
        provider: hp,
        state: Mutex::new(state),
    }))
}

// ---- key calls ---------------------------------------------------------------------------

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

fn read_dword(value: &[u8]) -> KResult<u32> {
    let b: [u8; 4] = value.try_into().map_err(|_| INVALID_PARAMETER)?;
    Ok(u32::from_le_bytes(b))
}

/// `SetKeyProperty`: Length, Export Policy and Key Usage before `FinalizeKey`.
pub(crate) fn set_key_property(
    hp: usize,
    hk: usize,
    prop: &str,
    value: &[u8],
    flags: u32,
) -> KResult<()> {
    check_flags(flags, NCRYPT_PERSIST_FLAG | NCRYPT_PERSIST_ONLY_FLAG)?;
    let (_, k) = key(hp, hk)?;
    let mut st = k.state.lock();
    if matches!(prop, "Use Context" | "HWND Handle") {
        return Ok(());
    }
    let KeyState::Pending(pending) = &mut *st else {
        return match prop {
            "Length" | "Export Policy" | "Key Usage" => Err(Status(NTE_PERM)),
            _ => Err(NOT_SUPPORTED),
        };
    };
    match prop {
        "Length" => {
            let len = read_dword(value)?;
            let ok = match pending.alg.curve() {
                Some(c) => len == c.bits(),
                None => (1024..=16384).contains(&len) && len % 8 == 0,
            };
            if !ok {
                return Err(INVALID_PARAMETER);
            }
            pending.length = Some(len);
        }
        "Export Policy" => {
            let v = read_dword(value)?;
            if v & !(NCRYPT_ALLOW_EXPORT_FLAG | NCRYPT_ALLOW_PLAINTEXT_EXPORT_FLAG | 0xc) != 0 {
                return Err(INVALID_PARAMETER);
            }
            pending.export_policy = v;
        }
        "Key Usage" => {
            let v = read_dword(value)?;
            if v & !NCRYPT_ALLOW_ALL_USAGES != 0 {
                return Err(INVALID_PARAMETER);
            }
            pending.usage = Some(v);
        }
        _ => return Err(NOT_SUPPORTED),
    }
    Ok(())
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
        let existing: Vec<ObjectHandle> = [CKO_PRIVATE_KEY, CKO_PUBLIC_KEY]
            .into_iter()
            .map(|c| p.find_labelled(c, name))
            .collect::<KResult<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        if !existing.is_empty() {
            if !k.overwrite {
                return Err(Status(NTE_EXISTS));
            }
            let _op = p.op.lock();
            for h in existing {
                p.backend.destroy_object(p.session, h)?;
            }
        }
    }
    let id = match &k.name {
        Some(n) => key_id(n),
        None => {
            let mut id = vec![0u8; 16];
            p.backend.generate_random(p.session, &mut id)?;
            id
        }
    };
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

/// `GetKeyProperty`.
pub(crate) fn get_key_property(hp: usize, hk: usize, prop: &str, flags: u32) -> KResult<Vec<u8>> {
    check_flags(flags, NCRYPT_PERSIST_ONLY_FLAG)?;
    let (p, k) = key(hp, hk)?;
    let st = k.state.lock().clone();
    let (alg, name, bits, usage, policy, id) = match &st {
        KeyState::Pending(pk) => (
            pk.alg,
            pk.name.clone(),
            pk.length
                .or(pk.alg.curve().map(Curve::bits))
                .unwrap_or(2048),
            pk.usage.unwrap_or_else(|| pk.alg.default_usage()),
            pk.export_policy,
            pk.name.as_deref().map(key_id),
        ),
        KeyState::Ready(r) => (
            r.alg,
            r.name.clone(),
            r.bits,
            r.usage,
            r.export_policy,
            Some(r.id.clone()),
        ),
    };
    Ok(match prop {
        "Name" => utf16z(name.as_deref().ok_or(NOT_SUPPORTED)?),
        "Algorithm Name" => utf16z(alg.name()),
        "Algorithm Group" => utf16z(alg.group()),
        "Length" => dword(bits),
        "Lengths" => {
            let (min, max, inc, default) = match alg.curve() {
                Some(c) => (c.bits(), c.bits(), 0, c.bits()),
                // What the firmware's key-pair generator takes.
                None => {
                    let info = p
                        .backend
                        .mechanism_info(p.slot, CKM_RSA_PKCS_KEY_PAIR_GEN)?;
                    let bits = |v: CK_ULONG| u32::try_from(v).unwrap_or(u32::MAX);
                    (bits(info.min_key_size), bits(info.max_key_size), 8, 2048)
                }
            };
            [min, max, inc, default]
                .into_iter()
                .flat_map(u32::to_le_bytes)
                .collect()
        }
        "Key Usage" => dword(usage),
        "Export Policy" => dword(policy),
        "Key Type" => dword(0),
        "Unique Name" => {
            let id = id.filter(|_| name.is_some()).ok_or(NOT_SUPPORTED)?;
            utf16z(&format!("ferrohsm-{}", base16ct::lower::encode_string(&id)))
        }
        "ECCCurveName" => utf16z(alg.curve().ok_or(NOT_SUPPORTED)?.cng_name()),
        _ => return Err(NOT_SUPPORTED),
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
    if let KeyState::Ready(r) = &*k.state.lock() {
        if r.ephemeral {
            destroy_objects(&p, r);
        }
    }
    Ok(())
}

// ---- public material and blobs -----------------------------------------------------------

enum PublicKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ec {
        curve: Curve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
}

/// `04 ‖ X ‖ Y` from a `CKA_EC_POINT` (its DER OCTET STRING, or the raw point).
fn ec_point(curve: Curve, v: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let len = curve.field_len();
    let raw = if v.len() == 1 + 2 * len {
        v
    } else {
        OctetStringRef::from_der(v).ok()?.as_bytes()
    };
    let xy = raw.strip_prefix(&[0x04])?;
    if xy.len() != 2 * len {
        return None;
    }
    let (x, y) = xy.split_at(len);
    Some((x.to_vec(), y.to_vec()))
}

fn public_key(p: &Provider, r: &Ready) -> KResult<PublicKey> {
    match r.alg {
        Alg::Rsa => {
            let obj = r.public.or(r.private).ok_or(Status(NTE_BAD_KEY))?;
            Ok(PublicKey::Rsa {
                n: p.need(obj, CKA_MODULUS)?.to_vec(),
                e: p.need(obj, CKA_PUBLIC_EXPONENT)?.to_vec(),
            })
        }
        Alg::Ecdsa(curve) | Alg::Ecdh(curve) => {
            let obj = r.public.ok_or(NOT_SUPPORTED)?;
            let point = p.need(obj, CKA_EC_POINT)?;
            let (x, y) = ec_point(curve, &point).ok_or(Status(NTE_BAD_KEY))?;
            Ok(PublicKey::Ec { curve, x, y })
        }
    }
}

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
                Some(RsaCrt {
                    dp: p.need(k, CKA_EXPONENT_1)?,
                    dq: p.need(k, CKA_EXPONENT_2)?,
                    qinv: p.need(k, CKA_COEFFICIENT)?,
                    d: p.need(k, CKA_PRIVATE_EXPONENT)?,
                })
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
            let crt = RsaCrt {
                dp: p.need(k, CKA_EXPONENT_1)?,
                dq: p.need(k, CKA_EXPONENT_2)?,
                qinv: p.need(k, CKA_COEFFICIENT)?,
                d: p.need(k, CKA_PRIVATE_EXPONENT)?,
            };
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

/// `ImportKey`.
pub(crate) fn import_key(
    hp: usize,
    import_key: Option<usize>,
    blob_type: &str,
    params: &[(u32, Vec<u8>)],
    data: &[u8],
    flags: u32,
) -> KResult<usize> {
    check_flags(
        flags,
        NCRYPT_NO_KEY_VALIDATION
            | NCRYPT_MACHINE_KEY_FLAG
            | NCRYPT_OVERWRITE_KEY_FLAG
            | NCRYPT_DO_NOT_FINALIZE_FLAG,
    )?;
    if flags & NCRYPT_DO_NOT_FINALIZE_FLAG != 0 {
        return Err(NOT_SUPPORTED);
    }
    let p = provider(hp)?;
    let ty = BlobType::from_name(blob_type).ok_or(Status(NTE_BAD_TYPE))?;
    let text = |t: u32| -> KResult<Option<String>> {
        params
            .iter()
            .find(|(ty, _)| *ty == t)
            .map(|(_, v)| utf16_bytes(v))
            .transpose()
    };
    let name = text(NCRYPTBUFFER_PKCS_KEY_NAME)?;
    let overwrite = flags & NCRYPT_OVERWRITE_KEY_FLAG != 0;
    if let Some(n) = &name {
        let exists = !p.find_labelled(CKO_PRIVATE_KEY, n)?.is_empty()
            || !p.find_labelled(CKO_PUBLIC_KEY, n)?.is_empty();
        if exists && !overwrite {
            return Err(Status(NTE_EXISTS));
        }
        if exists {
            for c in [CKO_PRIVATE_KEY, CKO_PUBLIC_KEY] {
                for h in p.find_labelled(c, n)? {
                    let _op = p.op.lock();
                    p.backend.destroy_object(p.session, h)?;
                }
            }
        }
    }
    let r = match ty {
        BlobType::RsaAesWrap => {
            let kek = import_key.ok_or(INVALID_PARAMETER)?;
            let (_, kek) = key(hp, kek)?;
            let alg = match text(NCRYPTBUFFER_PKCS_ALG_ID)? {
                Some(a) => Alg::from_name(&a).ok_or(NOT_SUPPORTED)?,
                None => Alg::Rsa,
            };
            import_wrapped(&p, &ready(&kek)?, alg, name, data)?
        }
        BlobType::Pkcs8 => {
            if import_key.is_some() {
                return Err(INVALID_PARAMETER);
            }
            let hint = match text(NCRYPTBUFFER_PKCS_ALG_ID)? {
                Some(a) => Some(Alg::from_name(&a).ok_or(NOT_SUPPORTED)?),
                None => None,
            };
            let alg = match (blob::pkcs8_algorithm(data)?, hint) {
                (None, None | Some(Alg::Rsa)) => Alg::Rsa,
                (Some(c), None) => Alg::Ecdsa(c),
                (Some(c), Some(a)) if a.curve() == Some(c) => a,
                _ => return Err(INVALID_PARAMETER),
            };
            import_pkcs8(&p, alg, name, data)?
        }
        _ => {
            if import_key.is_some() {
                return Err(INVALID_PARAMETER);
            }
            let parsed = blob::parse_as(ty, data)?;
            import_blob(&p, parsed, name)?
        }
    };
    new_key(hp, KeyState::Ready(r))
}

fn utf16_bytes(v: &[u8]) -> KResult<String> {
    if v.len() % 2 != 0 {
        return Err(INVALID_PARAMETER);
    }
    let units: Vec<u16> = v
        .chunks_exact(2)
        .map(|c| {
            u16::from_le_bytes([
                c.first().copied().unwrap_or(0),
                c.get(1).copied().unwrap_or(0),
            ])
        })
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).map_err(|_| INVALID_PARAMETER)
}

fn labelled(t: Template, persisted: bool, id: &[u8], name: Option<&str>) -> Template {
    let t = t
        .with(Attribute::bool(CKA_TOKEN, persisted))
        .with(Attribute::bytes(CKA_ID, id.to_vec()));
    match name {
        Some(n) => t.with(Attribute::bytes(CKA_LABEL, n.as_bytes().to_vec())),
        None => t,
    }
}

fn create(p: &Provider, t: &Template) -> KResult<ObjectHandle> {
    let _op = p.op.lock();
    Ok(p.backend.create_object(p.session, t)?)
}

fn import_blob(p: &Provider, b: KeyBlob, name: Option<String>) -> KResult<Ready> {
    let persisted = name.is_some();
    let id = match &name {
        Some(n) => key_id(n),
        None => {
            let mut id = vec![0u8; 16];
            p.backend.generate_random(p.session, &mut id)?;
            id
        }
    };
    let pubt = |kt| {
        labelled(
            Template::new()
                .with(Attribute::ulong(CKA_CLASS, CKO_PUBLIC_KEY))
                .with(Attribute::ulong(CKA_KEY_TYPE, kt)),
            persisted,
            &id,
            name.as_deref(),
        )
    };
    let privt = |kt| {
        labelled(
            Template::new()
                .with(Attribute::ulong(CKA_CLASS, CKO_PRIVATE_KEY))
                .with(Attribute::ulong(CKA_KEY_TYPE, kt))
                .with(Attribute::bool(CKA_PRIVATE, true))
                .with(Attribute::bool(CKA_SENSITIVE, true))
                .with(Attribute::bool(CKA_EXTRACTABLE, false)),
            persisted,
            &id,
            name.as_deref(),
        )
    };
    let (public, private) = match &b {
        KeyBlob::RsaPublic { n, e } => (
            pubt(CKK_RSA)
                .with(Attribute::bool(CKA_VERIFY, true))
                .with(Attribute::bool(CKA_ENCRYPT, true))
                .with(Attribute::bytes(CKA_MODULUS, n.clone()))
                .with(Attribute::bytes(CKA_PUBLIC_EXPONENT, e.clone())),
            None,
        ),
        KeyBlob::EccPublic { curve, x, y, ecdh } => (
            pubt(CKK_EC)
                .with(Attribute::bool(CKA_VERIFY, !ecdh))
                .with(Attribute::bytes(CKA_EC_PARAMS, curve.oid_der()?))
                .with(Attribute::bytes(CKA_EC_POINT, der_point(x, y)?)),
            None,
        ),
        KeyBlob::RsaPrivate {
            n,
            e,
            p: p1,
            q,
            crt: None,
        } => {
            let crt = complete_rsa(n, e, p1, q)?;
            return import_blob(
                p,
                KeyBlob::RsaPrivate {
                    n: n.clone(),
                    e: e.clone(),
                    p: p1.clone(),
                    q: q.clone(),
                    crt: Some(crt),
                },
                name,
            );
        }
        KeyBlob::RsaPrivate {
            n,
            e,
            p: p1,
            q,
            crt: Some(c),
        } => (
            pubt(CKK_RSA)
                .with(Attribute::bool(CKA_VERIFY, true))
                .with(Attribute::bool(CKA_ENCRYPT, true))
                .with(Attribute::bytes(CKA_MODULUS, n.clone()))
                .with(Attribute::bytes(CKA_PUBLIC_EXPONENT, e.clone())),
            Some(
                privt(CKK_RSA)
                    .with(Attribute::bool(CKA_SIGN, true))
                    .with(Attribute::bool(CKA_DECRYPT, true))
                    .with(Attribute::bytes(CKA_MODULUS, n.clone()))
                    .with(Attribute::bytes(CKA_PUBLIC_EXPONENT, e.clone()))
                    .with(Attribute::bytes(CKA_PRIVATE_EXPONENT, c.d.to_vec()))
                    .with(Attribute::bytes(CKA_PRIME_1, p1.to_vec()))
                    .with(Attribute::bytes(CKA_PRIME_2, q.to_vec()))
                    .with(Attribute::bytes(CKA_EXPONENT_1, c.dp.to_vec()))
                    .with(Attribute::bytes(CKA_EXPONENT_2, c.dq.to_vec()))
                    .with(Attribute::bytes(CKA_COEFFICIENT, c.qinv.to_vec())),
            ),
        ),
        KeyBlob::EccPrivate {
            curve,
            ecdh,
            x,
            y,
            d,
        } => (
            pubt(CKK_EC)
                .with(Attribute::bool(CKA_VERIFY, !ecdh))
                .with(Attribute::bytes(CKA_EC_PARAMS, curve.oid_der()?))
                .with(Attribute::bytes(CKA_EC_POINT, der_point(x, y)?)),
            Some(
                privt(CKK_EC)
                    .with(Attribute::bool(CKA_SIGN, !ecdh))
                    .with(Attribute::bool(CKA_DERIVE, *ecdh))
                    .with(Attribute::bytes(CKA_EC_PARAMS, curve.oid_der()?))
                    .with(Attribute::bytes(CKA_VALUE, d.to_vec())),
            ),
        ),
    };
    let private_h = private.map(|t| create(p, &t)).transpose()?;
    let public_h = match create(p, &public) {
        Ok(h) => h,
        Err(e) => {
            if let Some(h) = private_h {
                let _op = p.op.lock();
                let _ = p.backend.destroy_object(p.session, h);
            }
            return Err(e);
        }
    };
    let mut r = describe(p, name, private_h, Some(public_h))?;
    if let KeyBlob::EccPublic {
        curve, ecdh: true, ..
    } = b
    {
        r.alg = Alg::Ecdh(curve);
    }
    r.ephemeral = !persisted;
    Ok(r)
}

/// The private exponent and CRT values of an `RSAPRIVATEBLOB` (which carries only n, e, p and
/// q), computed by RustCrypto's `rsa` (aws-lc-rs has no such constructor); the primes must
/// multiply to the modulus.
fn complete_rsa(n: &[u8], e: &[u8], p: &[u8], q: &[u8]) -> KResult<RsaCrt> {
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};
    use rsa::{BigUint, RsaPrivateKey};
    let bad = |_| Status(NTE_BAD_DATA);
    let mut key = RsaPrivateKey::from_p_q(
        BigUint::from_bytes_be(p),
        BigUint::from_bytes_be(q),
        BigUint::from_bytes_be(e),
    )
    .map_err(bad)?;
    if key.n().to_bytes_be() != blob::trim(n) {
        return Err(Status(NTE_BAD_DATA));
    }
    key.precompute().map_err(bad)?;
    let value = |v: Option<&BigUint>| -> KResult<Zeroizing<Vec<u8>>> {
        Ok(Zeroizing::new(v.ok_or(Status(NTE_BAD_DATA))?.to_bytes_be()))
    };
    Ok(RsaCrt {
        dp: value(key.dp())?,
        dq: value(key.dq())?,
        qinv: value(key.crt_coefficient().as_ref())?,
        d: value(Some(key.d()))?,
    })
}

/// `CKA_EC_POINT` of `(x, y)`: the DER OCTET STRING of `04 ‖ X ‖ Y`.
fn der_point(x: &[u8], y: &[u8]) -> KResult<Vec<u8>> {
    let mut point = vec![0x04];
    point.extend_from_slice(x);
    point.extend_from_slice(y);
    der_octets(&point)
}

/// The public point (`04 ‖ X ‖ Y`) in a SubjectPublicKeyInfo (strict DER).
fn spki_point(spki: &[u8]) -> Option<&[u8]> {
    SubjectPublicKeyInfoRef::from_der(spki)
        .ok()?
        .subject_public_key
        .as_bytes()
}

/// A DER OCTET STRING.
fn der_octets(point: &[u8]) -> KResult<Vec<u8>> {
    OctetStringRef::new(point)
        .and_then(|o| o.to_der())
        .map_err(|_| Status(NTE_BAD_DATA))
}

/// PKCS#8: the firmware's own PKCS#8 decoder makes the key. The provider wraps the bytes
/// (AES key wrap with padding, RFC 5649) under a one-use AES-256 session key whose value it drew
/// from the firmware, and `C_UnwrapKey(CKM_AES_KEY_WRAP_KWP)` opens them inside; the transport
/// key is destroyed at once.
fn import_pkcs8(p: &Provider, alg: Alg, name: Option<String>, data: &[u8]) -> KResult<Ready> {
    use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrapPadded};
    let mut kek = Zeroizing::new(vec![0u8; 32]);
    p.backend.generate_random(p.session, &mut kek)?;
    let mut out = vec![0u8; data.len() + 16];
    let wrapped = AesKek::new(&AES_256, &kek)
        .and_then(|k| k.wrap_with_padding(data, &mut out))
        .map_err(|_| Status(NTE_BAD_DATA))?
        .to_vec();
    let transport = create(
        p,
        &Template::new()
            .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
            .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES))
            .with(Attribute::bool(CKA_TOKEN, false))
            .with(Attribute::bool(CKA_SENSITIVE, true))
            .with(Attribute::bool(CKA_EXTRACTABLE, false))
            .with(Attribute::bool(CKA_UNWRAP, true))
            .with(Attribute::bytes(CKA_VALUE, kek.to_vec())),
    )?;
    let r = unwrap_private(
        p,
        &Mechanism::new(CKM_AES_KEY_WRAP_KWP),
        transport,
        &wrapped,
        alg,
        name,
    );
    {
        let _op = p.op.lock();
        let _ = p.backend.destroy_object(p.session, transport);
    }
    r
}

/// BYOK: the firmware unwraps the `CKM_RSA_AES_KEY_WRAP` blob under our RSA key.
fn import_wrapped(
    p: &Provider,
    kek: &Ready,
    alg: Alg,
    name: Option<String>,
    data: &[u8],
) -> KResult<Ready> {
    let b = blob::parse_rsa_aes_wrap(data)?;
    let kek_h = private_of(p, kek)?;
    let hash = Hash::from_name(&b.oaep_hash)?;
    let mech = Mechanism::with(
        CKM_RSA_AES_KEY_WRAP,
        MechanismParams::RsaAesKeyWrap {
            aes_key_bits: 256,
            oaep: OaepParams {
                hash_alg: hash.ckm(),
                mgf: hash.mgf(),
                source: CKZ_DATA_SPECIFIED,
                source_data: b.label.clone(),
            },
        },
    );
    unwrap_private(p, &mech, kek_h, &b.wrapped, alg, name)
}

/// A private key unwrapped by the firmware, and its public half as a second object.
fn unwrap_private(
    p: &Provider,
    mech: &Mechanism,
    unwrapping_key: ObjectHandle,
    wrapped: &[u8],
    alg: Alg,
    name: Option<String>,
) -> KResult<Ready> {
    let persisted = name.is_some();
    let id = match &name {
        Some(n) => key_id(n),
        None => {
            let mut id = vec![0u8; 16];
            p.backend.generate_random(p.session, &mut id)?;
            id
        }
    };
    let mut t = labelled(
        Template::new()
            .with(Attribute::ulong(CKA_CLASS, CKO_PRIVATE_KEY))
            .with(Attribute::bool(CKA_PRIVATE, true))
            .with(Attribute::bool(CKA_SENSITIVE, true))
            .with(Attribute::bool(CKA_EXTRACTABLE, false)),
        persisted,
        &id,
        name.as_deref(),
    );
    t = match alg {
        Alg::Rsa => t
            .with(Attribute::ulong(CKA_KEY_TYPE, CKK_RSA))
            .with(Attribute::bool(CKA_SIGN, true))
            .with(Attribute::bool(CKA_DECRYPT, true)),
        Alg::Ecdsa(_) => t
            .with(Attribute::ulong(CKA_KEY_TYPE, CKK_EC))
            .with(Attribute::bool(CKA_SIGN, true)),
        Alg::Ecdh(_) => t
            .with(Attribute::ulong(CKA_KEY_TYPE, CKK_EC))
            .with(Attribute::bool(CKA_DERIVE, true)),
    };
    let priv_h = {
        let _op = p.op.lock();
        p.backend
            .unwrap_key(p.session, mech, unwrapping_key, wrapped, &t)?
    };
    // The public half, from the unwrapped key's public attributes.
    let public = match alg {
        Alg::Rsa => {
            let n = p.need(priv_h, CKA_MODULUS)?;
            let e = p.need(priv_h, CKA_PUBLIC_EXPONENT)?;
            Some(labelled(
                Template::new()
                    .with(Attribute::ulong(CKA_CLASS, CKO_PUBLIC_KEY))
                    .with(Attribute::ulong(CKA_KEY_TYPE, CKK_RSA))
                    .with(Attribute::bool(CKA_VERIFY, true))
                    .with(Attribute::bool(CKA_ENCRYPT, true))
                    .with(Attribute::bytes(CKA_MODULUS, n.to_vec()))
                    .with(Attribute::bytes(CKA_PUBLIC_EXPONENT, e.to_vec())),
                persisted,
                &id,
                name.as_deref(),
            ))
        }
        // An EC key's point, from the unwrapped key's SubjectPublicKeyInfo.
        Alg::Ecdsa(c) | Alg::Ecdh(c) => {
            let spki = p.need(priv_h, CKA_PUBLIC_KEY_INFO)?;
            let point = spki_point(&spki).ok_or(Status(NTE_BAD_KEY))?;
            Some(labelled(
                Template::new()
                    .with(Attribute::ulong(CKA_CLASS, CKO_PUBLIC_KEY))
                    .with(Attribute::ulong(CKA_KEY_TYPE, CKK_EC))
                    .with(Attribute::bool(CKA_VERIFY, matches!(alg, Alg::Ecdsa(_))))
                    .with(Attribute::bytes(CKA_EC_PARAMS, c.oid_der()?))
                    .with(Attribute::bytes(CKA_EC_POINT, der_octets(point)?)),
                persisted,
                &id,
                name.as_deref(),
            ))
        }
    };
    let pub_h = public.map(|t| create(p, &t)).transpose()?;
    let mut r = describe(p, name, Some(priv_h), pub_h)?;
    r.ephemeral = !persisted;
    Ok(r)
}

// ---- operations --------------------------------------------------------------------------

fn modulus_len(r: &Ready) -> usize {
    usize::try_from(r.bits.div_ceil(8)).unwrap_or(0)
}

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
                    let h = Hash::from_name(&name)?;
                    if hash.len() != h.len() {
                        return Err(INVALID_PARAMETER);
                    }
                    let mut d = h.digest_info_prefix().into_vec();
                    d.extend_from_slice(hash);
                    d
                }
                None => hash.to_vec(),
            };
            Ok((modulus_len(r), Mechanism::new(CKM_RSA_PKCS), data))
        }
        (Alg::Rsa, Padding::Pss(name, salt)) => {
            let h = Hash::from_name(&name)?;
            if hash.len() != h.len() {
                return Err(INVALID_PARAMETER);
            }
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

// ---- secret agreement --------------------------------------------------------------------

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
    let mut point = vec![0x04];
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
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
    let secret = {
        let st = STATE.lock();
        let _ = st.providers.get(hp)?;
        let s = st.secrets.get(hs)?;
        if s.provider != hp {
            return Err(INVALID_HANDLE);
        }
        s
    };
    let param = |t: u32| {
        params
            .iter()
            .find(|(ty, _)| *ty == t)
            .map(|(_, v)| v.as_slice())
    };
    let hash = match param(KDF_HASH_ALGORITHM) {
        Some(v) => Hash::from_name(&utf16_bytes(v)?)?,
        None => Hash::Sha1,
    };
    let prepend = param(KDF_SECRET_PREPEND).unwrap_or_default();
    let append = param(KDF_SECRET_APPEND).unwrap_or_default();
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
                param(KDF_HMAC_KEY).unwrap_or_default()
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
    let _ = st.providers.get(hp)?;
    let s = st.secrets.get(hs)?;
    if s.provider != hp {
        return Err(INVALID_HANDLE);
    }
    st.secrets.remove(hs).map(|_| ())
}

/// Checks the provider handle of the entry points that only ever return `NTE_NOT_SUPPORTED`.
pub(crate) fn unsupported(hp: usize) -> KResult<()> {
    let _ = provider(hp)?;
    Err(NOT_SUPPORTED)
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

    #[test]
    fn ec_point_forms() {
        let mut raw = vec![4u8];
        raw.extend_from_slice(&[1; 64]);
        let der = der_point(&[1; 32], &[1; 32]).unwrap();
        assert_eq!(ec_point(Curve::P256, &raw), ec_point(Curve::P256, &der));
        assert!(ec_point(Curve::P256, &raw).is_some());
        let big = der_point(&[2; 66], &[3; 66]).unwrap();
        assert_eq!(big.get(1), Some(&0x81));
        assert_eq!(
            ec_point(Curve::P521, &big),
            Some((vec![2; 66], vec![3; 66]))
        );
        assert_eq!(ec_point(Curve::P384, &raw), None);
    }

    #[test]
    fn digest_info_prefixes_are_rfc_8017s() {
        // RFC 8017 §9.2, note 1.
        let sha1 = [
            0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04,
            0x14,
        ];
        assert_eq!(&Hash::Sha1.digest_info_prefix()[..], &sha1[..]);
        for (h, last, len) in [
            (Hash::Sha256, 1, 0x20),
            (Hash::Sha384, 2, 0x30),
            (Hash::Sha512, 3, 0x40),
        ] {
            let prefix = [
                0x30,
                0x11 + len,
                0x30,
                0x0d,
                0x06,
                0x09,
                0x60,
                0x86,
                0x48,
                0x01,
                0x65,
                0x03,
                0x04,
                0x02,
                last,
                0x05,
                0x00,
                0x04,
                len,
            ];
            assert_eq!(&h.digest_info_prefix()[..], &prefix[..], "{h:?}");
        }
    }

    /// What the hand-written readers let through and DER forbids.
    #[test]
    fn non_minimal_or_trailing_der_is_refused() {
        let mut raw = vec![4u8];
        raw.extend_from_slice(&[1; 64]);
        // The OCTET STRING's length in long form (04 81 41): the old reader took it.
        let long = [&[0x04, 0x81, 0x41][..], &raw].concat();
        assert_eq!(ec_point(Curve::P256, &long), None);
        // Something after the OCTET STRING (the length check caught this before too).
        let mut trailing = der_point(&[1; 32], &[1; 32]).unwrap();
        trailing.push(0);
        assert_eq!(ec_point(Curve::P256, &trailing), None);
        // A SubjectPublicKeyInfo: well formed, then with its outer length in long form and
        // with bytes after it (the old reader took both), then with a BIT STRING that
        // declares unused bits.
        let alg = [
            0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
            0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
        ];
        let bits = [&[0x03, 0x42, 0x00][..], &raw].concat();
        let body = [&alg[..], &bits].concat();
        let good = [&[0x30, 0x59][..], &body].concat();
        assert_eq!(spki_point(&good), Some(&raw[..]));
        let long = [&[0x30, 0x81, 0x59][..], &body].concat();
        assert_eq!(spki_point(&long), None);
        let after = [&good[..], &[0]].concat();
        assert_eq!(spki_point(&after), None);
        let mut unused = good.clone();
        unused[alg.len() + 4] = 0x01;
        assert_eq!(spki_point(&unused), None);
    }

    #[test]
    fn algorithms_have_names_and_classes() {
        for a in Alg::all() {
            assert_eq!(Alg::from_name(a.name()), Some(a));
        }
        assert_eq!(Alg::all().len(), 7);
        assert_eq!(Alg::from_name("DSA"), None);
    }
}
