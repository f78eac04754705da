//! `Device`: the simulated HSM, behind the `Backend` trait.
//!
//! `Backend::call` hands every call to the function groups of `bridge::call` (`dispatch`); each
//! group is implemented in the file of its family: `slots.rs` (slots, tokens, sessions, login),
//! `objects.rs`, `crypt.rs` (encryption, decryption, digests), `sign.rs`, `message.rs` (the 3.0
//! message API), `keys.rs` (generate, wrap, unwrap, derive, random). This file holds the device
//! itself and the access rules every family shares: the session and its token, the checks
//! before a key is used (`key_op`, `may_use`), object creation. Tokens hold their objects and
//! PINs, mechanisms do the crypto.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bridge::config::FirmwareConfig;
use bridge::personality::enforce;
use bridge::*;
use cryptoki_sys::*;
use parking_lot::{Mutex, RwLock};

use crate::mechanism::{self, Generated, Key};
use crate::object::{self, Assembly, NewObject, Object, Origin, SecretAttrs, policy};
use crate::session::{Active, Auth, Find, MessageMac, Session, deliver};
use crate::token::Token;

mod crypt;
mod keys;
mod message;
mod objects;
mod sign;
mod slots;
mod staged;

pub use staged::{Placed, StagedToken};

/// First handle given to session objects (token objects use their store row id, far below).
const SESSION_OBJECT_BASE: u64 = 0x8000_0000;

/// Where a device's tokens are, and where a new one goes.
enum Layout {
    /// One token, given.
    Fixed,
    /// The default layout: `home/tokens/<slot>`, one directory per token; a tenant's home
    /// has its tenant's seal.
    Home(PathBuf, Option<Arc<crate::storage::TenantSeal>>),
    /// A cluster's tokens in etcd; tokens initialized on other nodes join the slot list.
    Cluster(Arc<crate::storage::Cluster>),
}

/// The simulated HSM: a set of tokens (one per slot) and the application's sessions on them.
pub struct Device {
    /// Slot id → token.
    tokens: RwLock<BTreeMap<CK_SLOT_ID, Arc<Token>>>,
    /// Where new tokens go.
    layout: Layout,
    config: FirmwareConfig,
    sessions: RwLock<HashMap<CK_SESSION_HANDLE, Arc<Mutex<Session>>>>,
    next_session: AtomicU64,
    next_object: AtomicU64,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Device({} slots)", self.tokens.read().len())
    }
}

/// The token in directory `dir` of a home (sealed under `seal`, a tenant's).
fn home_token(
    dir: &Path,
    seal: Option<&Arc<crate::storage::TenantSeal>>,
    description: String,
    config: &FirmwareConfig,
) -> Token {
    match seal {
        Some(seal) => Token::with_source(
            Box::new(crate::storage::SealedDir {
                dir: dir.to_owned(),
                seal: Arc::clone(seal),
            }),
            description,
            config.clone(),
        ),
        None => Token::new(dir, description, config.clone()),
    }
}

fn to_handle(v: u64) -> Result<CK_ULONG> {
    CK_ULONG::try_from(v).map_err(|_| Error::DeviceMemory)
}

impl Device {
    /// The default layout: every token directory under `home/tokens/<n>` is a slot (id `n`),
    /// plus one slot with an uninitialized token, ready for `C_InitToken`.
    pub fn open_home(home: &Path, config: &FirmwareConfig) -> Result<Self> {
        Self::open_tenant_home(home, config, None)
    }

    /// A tenant's home in a daemon's home (`open_home`'s layout): with `seal`, each token's
    /// device key and PIN wraps are sealed under the tenant's key (`storage/sealed.rs`).
    pub fn open_tenant_home(
        home: &Path,
        config: &FirmwareConfig,
        seal: Option<Arc<crate::storage::TenantSeal>>,
    ) -> Result<Self> {
        let dir = home.join("tokens");
        let mut tokens = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let Some(n) = e
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<CK_SLOT_ID>().ok())
                else {
                    continue;
                };
                if e.path().join(crate::storage::DB_FILE).exists() {
                    tokens.insert(
                        n,
                        Arc::new(home_token(
                            &e.path(),
                            seal.as_ref(),
                            slot_description(n),
                            config,
                        )),
                    );
                }
            }
        }
        let device = Self::with_tokens(tokens, Layout::Home(home.to_owned(), seal), config);
        device.ensure_empty_slot();
        Ok(device)
    }

    /// A node of a cluster: every token the cluster holds in etcd (slot ids as everywhere in
    /// the cluster), plus one slot with an uninitialized token.
    pub fn open_cluster(
        cluster: &Arc<crate::storage::Cluster>,
        config: &FirmwareConfig,
    ) -> Result<Self> {
        let device = Self::with_tokens(
            BTreeMap::new(),
            Layout::Cluster(Arc::clone(cluster)),
            config,
        );
        device.discover()?;
        Ok(device)
    }

    /// One token whose store is the directory `store`, as slot 0.
    pub fn open_token(
        store: &Path,
        description: Option<&str>,
        config: &FirmwareConfig,
    ) -> Result<Self> {
        let desc = description.map_or_else(|| slot_description(0), str::to_owned);
        let mut tokens = BTreeMap::new();
        tokens.insert(0, Arc::new(Token::new(store, desc, config.clone())));
        Ok(Self::with_tokens(tokens, Layout::Fixed, config))
    }

    fn with_tokens(
        tokens: BTreeMap<CK_SLOT_ID, Arc<Token>>,
        layout: Layout,
        config: &FirmwareConfig,
    ) -> Self {
        Self {
            tokens: RwLock::new(tokens),
            layout,
            config: config.clone(),
            sessions: RwLock::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            next_object: AtomicU64::new(SESSION_OBJECT_BASE),
        }
    }

    /// In a cluster, adds the tokens other nodes initialized, then keeps one uninitialized
    /// slot (elsewhere: nothing to discover).
    fn discover(&self) -> Result<()> {
        if let Layout::Cluster(cluster) = &self.layout {
            let slots = cluster.slots()?;
            let mut tokens = self.tokens.write();
            for n in slots
                .into_iter()
                .filter_map(|s| CK_SLOT_ID::try_from(s).ok())
            {
                tokens
                    .entry(n)
                    .or_insert_with(|| Arc::new(self.new_token(n)));
            }
        }
        self.ensure_empty_slot();
        Ok(())
    }

    /// The token of a new slot `n`.
    fn new_token(&self, n: CK_SLOT_ID) -> Token {
        let description = slot_description(n);
        match &self.layout {
            Layout::Cluster(cluster) => Token::with_source(
                Box::new(crate::token::ClusterSlot::new(cluster, u64::from(n))),
                description,
                self.config.clone(),
            ),
            Layout::Home(home, seal) => home_token(
                &home.join("tokens").join(n.to_string()),
                seal.as_ref(),
                description,
                &self.config,
            ),
            Layout::Fixed => Token::new(Path::new(""), description, self.config.clone()),
        }
    }

    /// Unless the device holds one given token, keeps one uninitialized slot after the last.
    fn ensure_empty_slot(&self) {
        if matches!(self.layout, Layout::Fixed) {
            return;
        }
        let mut tokens = self.tokens.write();
        if tokens.values().any(|t| !t.is_initialized()) {
            return;
        }
        let next = tokens.keys().next_back().map_or(0, |k| k + 1);
        tokens.insert(next, Arc::new(self.new_token(next)));
    }

    fn token(&self, slot: SlotId) -> Result<Arc<Token>> {
        self.tokens
            .read()
            .get(&slot.0)
            .cloned()
            .ok_or(Error::SlotIdInvalid)
    }

    fn session(&self, h: SessionHandle) -> Result<Arc<Mutex<Session>>> {
        self.sessions
            .read()
            .get(&h.0)
            .cloned()
            .ok_or(Error::SessionHandleInvalid)
    }

    /// The session (locked) and its token.
    fn with_session<T>(
        &self,
        h: SessionHandle,
        f: impl FnOnce(&mut Session, &Token) -> Result<T>,
    ) -> Result<T> {
        let s = self.session(h)?;
        let mut s = s.lock();
        let token = self.slot_token(s.slot)?;
        f(&mut s, &token)
    }

    fn slot_token(&self, slot: CK_SLOT_ID) -> Result<Arc<Token>> {
        self.tokens
            .read()
            .get(&slot)
            .cloned()
            .ok_or(Error::SessionHandleInvalid)
    }

    /// Sessions of a slot: (all, read-write).
    fn session_counts(&self, slot: CK_SLOT_ID) -> (CK_ULONG, CK_ULONG) {
        let sessions: Vec<_> = self.sessions.read().values().cloned().collect();
        let mut all = 0;
        let mut rw = 0;
        for s in sessions {
            let s = s.lock();
            if s.slot == slot {
                all += 1;
                if s.rw {
                    rw += 1;
                }
            }
        }
        (all, rw)
    }

    fn forget_sessions(&self, slot: CK_SLOT_ID, only: Option<CK_SESSION_HANDLE>) -> Result<()> {
        let token = self.slot_token(slot)?;
        let removed: Vec<CK_SESSION_HANDLE> = {
            let mut map = self.sessions.write();
            let gone: Vec<_> = map
                .iter()
                .filter(|(h, s)| only.map_or_else(|| s.lock().slot == slot, |o| **h == o))
                .map(|(h, _)| *h)
                .collect();
            for h in &gone {
                map.remove(h);
            }
            gone
        };
        for h in removed {
            token.drop_session_objects(h);
        }
        // "When the last session an application has with a token is closed, the application is
        // logged out" (PKCS#11 §5.6, C_CloseSession).
        if self.session_counts(slot).0 == 0 {
            token.forget_login();
        }
        Ok(())
    }

    /// An operation's key (encrypt, decrypt, sign, verify, digest, messages): see `Token::key`
    /// for how fresh it is with respect to other processes.
    fn key_object(token: &Token, h: ObjectHandle) -> Result<Arc<Object>> {
        token.key(h.0).map_err(key_handle_error)
    }

    /// A key that is about to leave or to make other keys (wrap, derive): exactly as the store
    /// has it now, like attribute reads (a one-way change another process just made, such as
    /// `CKA_EXTRACTABLE` cleared, holds at once).
    fn key_object_now(token: &Token, h: ObjectHandle) -> Result<Arc<Object>> {
        token.object(h.0).map_err(key_handle_error)
    }

    /// Checks that a key may be used with `mech` for the operation whose usage attribute is
    /// `usage` and whose mechanism flag is `flag`, and runs `init` with the key's secrets.
    fn key_op<T>(
        token: &Token,
        key: &Arc<Object>,
        mech: &Mechanism,
        flag: CK_FLAGS,
        usage: CK_ATTRIBUTE_TYPE,
        init: impl FnOnce(&dyn mechanism::Mechanism, &Key<'_>) -> Result<T>,
    ) -> Result<T> {
        let m = mechanism::for_use(mech.ty, token.profile(), flag)?;
        Self::may_use(m, key, usage)?;
        let profile = token.profile();
        if profile.judges_keys() {
            enforce(profile.judge_key(&key.shape()))?;
        }
        token.with_secrets(key, |secrets| init(m, &Key { obj: key, secrets }))
    }

    /// Whether `key` may be used with mechanism `m` for the use whose usage attribute is
    /// `usage` — decided before any key material is unsealed and before any cryptographic
    /// work, from public attributes only, so that no answer depends on a secret the caller may
    /// not use (a padding or integrity failure under a key without `CKA_UNWRAP` must look like
    /// any other refusal). In order: a key at all, `CKA_ALLOWED_MECHANISMS`, the mechanism's
    /// key-type rule (which the specification ranks above the usage code), the usage
    /// attribute, and `CKA_ALWAYS_AUTHENTICATE` for the one-call uses (`C_UnwrapKey`,
    /// `C_DeriveKey`), which leave no moment for the context-specific login the key demands.
    fn may_use(m: &dyn mechanism::Mechanism, key: &Object, usage: CK_ATTRIBUTE_TYPE) -> Result<()> {
        if !key.is_key() {
            return Err(Error::KeyTypeInconsistent);
        }
        if let Some(allowed) = key.bytes(CKA_ALLOWED_MECHANISMS).filter(|b| !b.is_empty()) {
            let list = Attribute::bytes(CKA_ALLOWED_MECHANISMS, allowed.to_vec()).as_ulongs()?;
            if !list.contains(&m.ty()) {
                return Err(Error::MechanismInvalid);
            }
        }
        m.check_key(key, usage)?;
        if !key.is(usage) {
            return Err(Error::KeyFunctionNotPermitted);
        }
        if matches!(usage, CKA_UNWRAP | CKA_DERIVE) && key.is(CKA_ALWAYS_AUTHENTICATE) {
            return Err(Error::UserNotLoggedIn);
        }
        Ok(())
    }

    /// A fresh signing operation for the next message of a message-based signing process.
    fn message_sign_op(
        token: &Token,
        a: &MessageMac<dyn mechanism::SignOp>,
    ) -> Result<Box<dyn mechanism::SignOp>> {
        let m = mechanism::lookup(a.mech.ty)?;
        token.with_secrets(&a.key, |secrets| {
            m.sign_init(
                &Key {
                    obj: &a.key,
                    secrets,
                },
                &a.mech.params,
            )
        })
    }

    /// A fresh verification operation for the next message.
    fn message_verify_op(
        token: &Token,
        a: &MessageMac<dyn mechanism::VerifyOp>,
    ) -> Result<Box<dyn mechanism::VerifyOp>> {
        let m = mechanism::lookup(a.mech.ty)?;
        token.with_secrets(&a.key, |secrets| {
            m.verify_init(
                &Key {
                    obj: &a.key,
                    secrets,
                },
                &a.mech.params,
            )
        })
    }

    /// The class and subtype a `C_CreateObject` template names.
    fn class_of(template: &Template) -> Result<(CK_OBJECT_CLASS, Option<CK_ULONG>)> {
        let class = template
            .get(CKA_CLASS)
            .ok_or(Error::TemplateIncomplete)?
            .as_ulong()?;
        let sub_ty = match class {
            CKO_CERTIFICATE => Some(CKA_CERTIFICATE_TYPE),
            CKO_PUBLIC_KEY | CKO_PRIVATE_KEY | CKO_SECRET_KEY => Some(CKA_KEY_TYPE),
            CKO_DATA => None,
            _ => return Err(Error::AttributeValueInvalid),
        };
        let subtype = match sub_ty {
            Some(ty) => Some(
                template
                    .get(ty)
                    .ok_or(Error::TemplateIncomplete)?
                    .as_ulong()?,
            ),
            None => None,
        };
        if policy::rules_for(class, subtype).is_none() {
            return Err(Error::AttributeValueInvalid);
        }
        Ok((class, subtype))
    }

    /// Checks that the session may create an object with these storage attributes.
    fn may_create(s: &Session, token: &Token, is_token: bool, private: bool) -> Result<()> {
        if is_token && !s.rw {
            return Err(Error::SessionReadOnly);
        }
        if private && token.login_state() != Some(CKU_USER) {
            return Err(Error::UserNotLoggedIn);
        }
        Ok(())
    }

    fn template_flag(template: &Template, ty: CK_ATTRIBUTE_TYPE, default: bool) -> Result<bool> {
        template
            .get(ty)
            .map(Attribute::as_bool)
            .transpose()
            .map(|v| v.unwrap_or(default))
    }

    fn new_session_object_handle(&self) -> Result<CK_OBJECT_HANDLE> {
        to_handle(self.next_object.fetch_add(1, Ordering::Relaxed))
    }

    /// Stores a new object for session `s`.
    fn store_new(&self, s: &Session, token: &Token, new: NewObject) -> Result<ObjectHandle> {
        Self::may_create(s, token, new.flag(CKA_TOKEN), new.flag(CKA_PRIVATE))?;
        let profile = token.profile();
        if profile.max_key_handles.is_some() && new.is_key() {
            // Every key the token holds counts, session keys too (they take the HSM's key
            // handles as token keys do); certificates and data objects do not.
            let held = u64::try_from(token.key_count()).unwrap_or(u64::MAX);
            enforce(profile.judge_key_handles(held, 1))?;
        }
        let handle = if new.flag(CKA_TOKEN) {
            0
        } else {
            self.new_session_object_handle()?
        };
        token.insert(new, Some(s.handle), handle).map(ObjectHandle)
    }

    /// Assembles and stores a generated key.
    fn store_generated(
        &self,
        s: &Session,
        token: &Token,
        mech: CK_MECHANISM_TYPE,
        template: &Template,
        generated: Generated,
    ) -> Result<NewObject> {
        let _ = s;
        object::assemble(Assembly {
            origin: Origin::Generate(mech),
            class: generated.class,
            subtype: Some(generated.key_type),
            template,
            supplied: generated.attrs,
            so: token.login_state() == Some(CKU_SO),
            profile: token.profile(),
        })
    }
}

fn slot_description(n: CK_SLOT_ID) -> String {
    format!("FerroHSM simulated slot {n}")
}

/// A template attribute (`CKA_UNWRAP_TEMPLATE`, `CKA_DERIVE_TEMPLATE`) applied first, then the
/// application's template; a conflict is `CKR_TEMPLATE_INCONSISTENT`.
fn merge_templates(first: Option<&Template>, then: &Template) -> Result<Template> {
    let Some(first) = first else {
        return Ok(then.clone());
    };
    let mut out = first.clone();
    for a in then.iter() {
        match out.get(a.ty) {
            Some(b) if b.value != a.value => return Err(Error::TemplateInconsistent),
            Some(_) => {}
            None => out.0.push(a.clone()),
        }
    }
    Ok(out)
}

/// Ends an operation slot unless the result was a length query or `BUFFER_TOO_SMALL`.
fn settle<T: ?Sized, R>(slot: &mut Option<Active<T>>, r: &Result<(R, bool)>) {
    match r {
        Ok((_, true)) => *slot = None,
        Ok((_, false)) | Err(Error::BufferTooSmall { .. }) => {}
        Err(_) => *slot = None,
    }
}

/// Ends an operation slot on any error (for update calls).
fn end_on_error<T: ?Sized, R>(slot: &mut Option<Active<T>>, r: &Result<R>) {
    if r.is_err() {
        *slot = None;
    }
}

impl Backend for Device {
    fn call(&self, call: Call<'_>) -> Result<Reply> {
        let profile = self.config.personality.profile();
        if !profile.unsupported.is_empty() {
            enforce(profile.judge_function(call.name()))?;
        }
        call.dispatch(self)
    }
}

/// `CKR_KEY_HANDLE_INVALID` for a key use of a handle that names no visible object.
fn key_handle_error(e: Error) -> Error {
    if e == Error::ObjectHandleInvalid {
        Error::KeyHandleInvalid
    } else {
        e
    }
}
