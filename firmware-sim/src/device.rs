//! `Device`: the simulated HSM, behind the `Backend` trait.
//!
//! This file holds the PKCS#11 session and access rules (who may do what, in which session
//! state); tokens hold their objects and PINs, mechanisms do the crypto.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bridge::call::Functions;
use bridge::config::FirmwareConfig;
use bridge::*;
use cryptoki_sys::*;
use parking_lot::{Mutex, RwLock};

use crate::mechanism::{self, Generated, Key};
use crate::object::{self, Assembly, NewObject, Object, Origin, SecretAttrs, policy};
use crate::session::{Active, Auth, Find, MessageMac, Session, deliver};
use crate::token::Token;

/// First handle given to session objects (token objects use their store row id, far below).
const SESSION_OBJECT_BASE: u64 = 0x8000_0000;

/// The simulated HSM: a set of tokens (one per slot) and the application's sessions on them.
pub struct Device {
    /// Slot id → token.
    tokens: RwLock<BTreeMap<CK_SLOT_ID, Arc<Token>>>,
    /// In the default layout, where new tokens go (`home/tokens/<slot>`).
    home: Option<PathBuf>,
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

fn to_handle(v: u64) -> Result<CK_ULONG> {
    CK_ULONG::try_from(v).map_err(|_| Error::DeviceMemory)
}

impl Device {
    /// The default layout: every token directory under `home/tokens/<n>` is a slot (id `n`),
    /// plus one slot with an uninitialized token, ready for `C_InitToken`.
    pub fn open_home(home: &Path, config: &FirmwareConfig) -> Result<Self> {
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
                        Arc::new(Token::new(&e.path(), slot_description(n), config.clone())),
                    );
                }
            }
        }
        let device = Self::with_tokens(tokens, Some(home.to_owned()), config);
        device.ensure_empty_slot();
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
        Ok(Self::with_tokens(tokens, None, config))
    }

    fn with_tokens(
        tokens: BTreeMap<CK_SLOT_ID, Arc<Token>>,
        home: Option<PathBuf>,
        config: &FirmwareConfig,
    ) -> Self {
        Self {
            tokens: RwLock::new(tokens),
            home,
            config: config.clone(),
            sessions: RwLock::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            next_object: AtomicU64::new(SESSION_OBJECT_BASE),
        }
    }

    /// In the default layout, keeps one uninitialized slot after the last token.
    fn ensure_empty_slot(&self) {
        let Some(home) = &self.home else { return };
        let mut tokens = self.tokens.write();
        if tokens.values().any(|t| !t.is_initialized()) {
            return;
        }
        let next = tokens.keys().next_back().map_or(0, |k| k + 1);
        let dir = home.join("tokens").join(next.to_string());
        tokens.insert(
            next,
            Arc::new(Token::new(
                &dir,
                slot_description(next),
                self.config.clone(),
            )),
        );
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

    /// An object the session may see, with `KEY_HANDLE_INVALID` for key uses.
    fn key_object(token: &Token, h: ObjectHandle) -> Result<Arc<Object>> {
        token.object(h.0).map_err(|e| {
            if e == Error::ObjectHandleInvalid {
                Error::KeyHandleInvalid
            } else {
                e
            }
        })
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
        let m = mechanism::lookup(mech.ty)?;
        if m.info().flags & flag == 0 {
            return Err(Error::MechanismInvalid);
        }
        Self::may_use(m, key, usage)?;
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
            strict: token.strict(),
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
        call.dispatch(self)
    }
}

impl Functions for Device {
    fn slot_list(&self, _token_present: bool) -> Result<Vec<SlotId>> {
        // Every slot holds a token (possibly uninitialized).
        Ok(self.tokens.read().keys().map(|k| SlotId(*k)).collect())
    }

    fn slot_info(&self, slot: SlotId) -> Result<SlotInfo> {
        Ok(self.token(slot)?.slot_info())
    }

    fn token_info(&self, slot: SlotId) -> Result<TokenInfo> {
        let token = self.token(slot)?;
        let (all, rw) = self.session_counts(slot.0);
        token.token_info(all, rw)
    }

    fn mechanism_list(&self, slot: SlotId) -> Result<Vec<CK_MECHANISM_TYPE>> {
        self.token(slot)?;
        Ok(mechanism::MECHANISMS.iter().map(|m| m.ty()).collect())
    }

    fn mechanism_info(&self, slot: SlotId, ty: CK_MECHANISM_TYPE) -> Result<MechanismInfo> {
        self.token(slot)?;
        Ok(mechanism::lookup(ty)?.info())
    }

    fn init_token(&self, slot: SlotId, so_pin: &[u8], label: &[u8; 32]) -> Result<()> {
        let token = self.token(slot)?;
        if self.session_counts(slot.0).0 > 0 {
            return Err(Error::SessionExists);
        }
        token.init(so_pin, label)?;
        self.ensure_empty_slot();
        Ok(())
    }

    fn wait_for_slot_event(&self, flags: CK_FLAGS) -> Result<SlotId> {
        if flags & CKF_DONT_BLOCK != 0 {
            Err(Error::NoEvent)
        } else {
            Err(Error::FunctionNotSupported)
        }
    }

    fn open_session(&self, slot: SlotId, flags: CK_FLAGS) -> Result<SessionHandle> {
        let token = self.token(slot)?;
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(Error::SessionParallelNotSupported);
        }
        if !token.is_initialized() {
            return Err(Error::TokenNotRecognized);
        }
        let rw = flags & CKF_RW_SESSION != 0;
        if !rw && token.login_state() == Some(CKU_SO) {
            return Err(Error::SessionReadWriteSoExists);
        }
        let h = to_handle(self.next_session.fetch_add(1, Ordering::Relaxed))?;
        self.sessions
            .write()
            .insert(h, Arc::new(Mutex::new(Session::new(h, slot.0, rw))));
        Ok(SessionHandle(h))
    }

    fn close_session(&self, session: SessionHandle) -> Result<()> {
        let slot = self.session(session)?.lock().slot;
        self.forget_sessions(slot, Some(session.0))
    }

    fn close_all_sessions(&self, slot: SlotId) -> Result<()> {
        self.token(slot)?;
        self.forget_sessions(slot.0, None)
    }

    fn session_info(&self, session: SessionHandle) -> Result<SessionInfo> {
        self.with_session(session, |s, token| {
            let state = match (token.login_state(), s.rw) {
                (Some(CKU_SO), _) => CKS_RW_SO_FUNCTIONS,
                (Some(_), true) => CKS_RW_USER_FUNCTIONS,
                (Some(_), false) => CKS_RO_USER_FUNCTIONS,
                (None, true) => CKS_RW_PUBLIC_SESSION,
                (None, false) => CKS_RO_PUBLIC_SESSION,
            };
            let flags = CKF_SERIAL_SESSION | if s.rw { CKF_RW_SESSION } else { 0 };
            Ok(SessionInfo {
                slot: SlotId(s.slot),
                state,
                flags,
                device_error: 0,
            })
        })
    }

    fn session_cancel(&self, session: SessionHandle, flags: CK_FLAGS) -> Result<()> {
        self.with_session(session, |s, _| {
            if flags & CKF_FIND_OBJECTS != 0 {
                s.find = None;
            }
            if flags & CKF_DIGEST != 0 {
                s.digest = None;
            }
            if flags & CKF_ENCRYPT != 0 {
                s.encrypt = None;
            }
            if flags & CKF_DECRYPT != 0 {
                s.decrypt = None;
            }
            if flags & CKF_SIGN != 0 {
                s.sign = None;
            }
            if flags & CKF_VERIFY != 0 {
                s.verify = None;
            }
            if flags & CKF_MESSAGE_ENCRYPT != 0 {
                s.msg_encrypt = None;
            }
            if flags & CKF_MESSAGE_DECRYPT != 0 {
                s.msg_decrypt = None;
            }
            if flags & CKF_MESSAGE_SIGN != 0 {
                s.msg_sign = None;
            }
            if flags & CKF_MESSAGE_VERIFY != 0 {
                s.msg_verify = None;
            }
            Ok(())
        })
    }

    fn init_pin(&self, session: SessionHandle, pin: &[u8]) -> Result<()> {
        self.with_session(session, |s, token| {
            if token.login_state() != Some(CKU_SO) {
                return Err(Error::UserNotLoggedIn);
            }
            if !s.rw {
                return Err(Error::SessionReadOnly);
            }
            token.init_pin(pin)
        })
    }

    fn set_pin(&self, session: SessionHandle, old_pin: &[u8], new_pin: &[u8]) -> Result<()> {
        self.with_session(session, |s, token| {
            if !s.rw {
                return Err(Error::SessionReadOnly);
            }
            token.set_pin(old_pin, new_pin)
        })
    }

    fn login(&self, session: SessionHandle, user: UserType, pin: Option<&[u8]>) -> Result<()> {
        // No protected authentication path: a PIN is always needed.
        let pin = pin.ok_or(Error::ArgumentsBad)?;
        let (slot, rw) = {
            let s = self.session(session)?;
            let s = s.lock();
            (s.slot, s.rw)
        };
        let _ = rw;
        let token = self.slot_token(slot)?;
        match user {
            CKU_CONTEXT_SPECIFIC => {
                let s = self.session(session)?;
                let mut s = s.lock();
                if token.login_state().is_none() {
                    return Err(Error::UserNotLoggedIn);
                }
                if s.auth_slot().is_none() {
                    return Err(Error::OperationNotInitialized);
                }
                token.verify_user_pin(pin)?;
                if let Some(a) = s.auth_slot() {
                    *a = Auth::Done;
                }
                Ok(())
            }
            CKU_SO => {
                let ro_exists = self.sessions.read().values().any(|s| {
                    let s = s.lock();
                    s.slot == slot && !s.rw
                });
                if ro_exists && token.login_state().is_none() {
                    return Err(Error::SessionReadOnlyExists);
                }
                token.login(user, pin)
            }
            CKU_USER => token.login(user, pin),
            _ => Err(Error::UserTypeInvalid),
        }
    }

    fn login_user(
        &self,
        session: SessionHandle,
        user: UserType,
        pin: Option<&[u8]>,
        username: &[u8],
    ) -> Result<()> {
        // A token here has one normal user and one SO, and neither has a name: without a user
        // name, C_LoginUser is C_Login (the user type alone says who logs in). A name cannot
        // denote either of them, so authenticating that named user fails, which is
        // CKR_PIN_INCORRECT ("more generally, when authentication to the token involves
        // something other than a PIN, the attempt to authenticate the user has failed"). No
        // PIN was tried: the failure counters are left alone.
        if username.is_empty() {
            return Functions::login(self, session, user, pin);
        }
        self.session(session)?;
        if !matches!(user, CKU_SO | CKU_USER | CKU_CONTEXT_SPECIFIC) {
            return Err(Error::UserTypeInvalid);
        }
        log::info!("C_LoginUser with a user name: this token's users have no names");
        Err(Error::PinIncorrect)
    }

    fn logout(&self, session: SessionHandle) -> Result<()> {
        self.with_session(session, |_, token| token.logout())
    }

    fn create_object(&self, session: SessionHandle, template: &Template) -> Result<ObjectHandle> {
        self.with_session(session, |s, token| {
            let (class, subtype) = Self::class_of(template)?;
            let is_token = Self::template_flag(template, CKA_TOKEN, false)?;
            let private =
                Self::template_flag(template, CKA_PRIVATE, policy::default_private(class))?;
            Self::may_create(s, token, is_token, private)?;
            mechanism::check_import(class, subtype, template)?;
            let new = object::assemble(Assembly {
                origin: Origin::Create,
                class,
                subtype,
                template,
                supplied: mechanism::computed_on_import(class, subtype, template)?,
                so: token.login_state() == Some(CKU_SO),
                strict: token.strict(),
            })?;
            self.store_new(s, token, new)
        })
    }

    fn copy_object(
        &self,
        session: SessionHandle,
        object: ObjectHandle,
        template: &Template,
    ) -> Result<ObjectHandle> {
        self.with_session(session, |s, token| {
            let obj = token.object(object.0)?;
            if !obj.flag(CKA_COPYABLE).unwrap_or(true) {
                return Err(Error::ActionProhibited);
            }
            let changed =
                object::apply_changes(&obj, template, true, token.login_state() == Some(CKU_SO))?;
            let secrets = token.with_secrets(&obj, |sec| {
                Ok(SecretAttrs(
                    sec.0.iter().map(|(t, v)| (*t, v.duplicate())).collect(),
                ))
            })?;
            let mut attrs = changed.attrs;
            let mut unique = [0u8; 16];
            crate::crypto::fill_random(&mut unique)?;
            attrs.insert(
                CKA_UNIQUE_ID,
                AttrValue::Bytes(object::hex(&unique).into_bytes()),
            );
            self.store_new(s, token, NewObject { attrs, secrets })
        })
    }

    fn destroy_object(&self, session: SessionHandle, object: ObjectHandle) -> Result<()> {
        self.with_session(session, |s, token| {
            let obj = token.object(object.0)?;
            if obj.is_token() && !s.rw {
                return Err(Error::SessionReadOnly);
            }
            if !obj.flag(CKA_DESTROYABLE).unwrap_or(true) {
                return Err(Error::ActionProhibited);
            }
            token.remove(&obj)
        })
    }

    fn object_size(&self, session: SessionHandle, object: ObjectHandle) -> Result<CK_ULONG> {
        self.with_session(session, |_, token| Ok(token.object(object.0)?.size()))
    }

    fn get_attribute_value(
        &self,
        session: SessionHandle,
        object: ObjectHandle,
        types: &[CK_ULONG],
    ) -> Result<Vec<AttrAnswer>> {
        self.with_session(session, |_, token| {
            let obj = token.object(object.0)?;
            let needs = types
                .iter()
                .any(|t| obj.is_sealed_type(*t) && obj.may_reveal(*t));
            if needs {
                token.with_secrets(&obj, |sec| {
                    Ok(types.iter().map(|t| obj.answer(*t, Some(sec))).collect())
                })
            } else {
                Ok(types.iter().map(|t| obj.answer(*t, None)).collect())
            }
        })
    }

    fn set_attribute_value(
        &self,
        session: SessionHandle,
        object: ObjectHandle,
        template: &Template,
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            let obj = token.object(object.0)?;
            if obj.is_token() && !s.rw {
                return Err(Error::SessionReadOnly);
            }
            let changed =
                object::apply_changes(&obj, template, false, token.login_state() == Some(CKU_SO))?;
            token.replace(changed)
        })
    }

    fn find_objects_init(&self, session: SessionHandle, template: &Template) -> Result<()> {
        self.with_session(session, |s, token| {
            if s.find.is_some() {
                return Err(Error::OperationActive);
            }
            let handles = token.find(template, |_| true)?;
            s.find = Some(Find { handles, pos: 0 });
            Ok(())
        })
    }

    fn find_objects(&self, session: SessionHandle, max: usize) -> Result<Vec<ObjectHandle>> {
        self.with_session(session, |s, _| {
            let f = s.find.as_mut().ok_or(Error::OperationNotInitialized)?;
            let rest = f.handles.get(f.pos..).unwrap_or_default();
            let n = rest.len().min(max);
            let out = rest.iter().take(n).map(|h| ObjectHandle(*h)).collect();
            f.pos += n;
            Ok(out)
        })
    }

    fn find_objects_final(&self, session: SessionHandle) -> Result<()> {
        self.with_session(session, |s, _| {
            s.find
                .take()
                .map(|_| ())
                .ok_or(Error::OperationNotInitialized)
        })
    }

    // ---- digests ------------------------------------------------------------------------

    fn digest_init(&self, session: SessionHandle, mech: &Mechanism) -> Result<()> {
        self.with_session(session, |s, _| {
            if s.digest.is_some() {
                return Err(Error::OperationActive);
            }
            let m = mechanism::lookup(mech.ty)?;
            if m.info().flags & CKF_DIGEST == 0 {
                return Err(Error::MechanismInvalid);
            }
            s.digest = Some(Active::new(m.digest_init(&mech.params)?, None));
            Ok(())
        })
    }

    fn digest(&self, session: SessionHandle, data: &[u8], out: Option<&mut [u8]>) -> Result<usize> {
        self.with_session(session, |s, _| {
            let a = s.digest.as_mut().ok_or(Error::OperationNotInitialized)?;
            if a.multi {
                return Err(Error::OperationActive);
            }
            let len = a.op.len();
            let r = deliver(
                &mut a.pending,
                out,
                || len,
                || {
                    a.op.update(data)?;
                    a.op.finish()
                },
            );
            settle(&mut s.digest, &r);
            r.map(|(n, _)| n)
        })
    }

    fn digest_update(&self, session: SessionHandle, data: &[u8]) -> Result<()> {
        self.with_session(session, |s, _| {
            let a = s.digest.as_mut().ok_or(Error::OperationNotInitialized)?;
            a.multi = true;
            let r = a.op.update(data);
            end_on_error(&mut s.digest, &r);
            r
        })
    }

    fn digest_key(&self, session: SessionHandle, key: ObjectHandle) -> Result<()> {
        self.with_session(session, |s, token| {
            let a = s.digest.as_mut().ok_or(Error::OperationNotInitialized)?;
            let r = (|| {
                let obj = Self::key_object(token, key)?;
                // Only secret keys whose value could be read anyway: a digest of a sensitive
                // key would be an oracle on it.
                if obj.class() != CKO_SECRET_KEY || !obj.may_reveal(CKA_VALUE) {
                    return Err(Error::KeyIndigestible);
                }
                token.with_secrets(&obj, |sec| {
                    let v = sec.get(CKA_VALUE).ok_or(Error::KeyIndigestible)?;
                    a.op.update(v.expose())
                })
            })();
            a.multi = true;
            end_on_error(&mut s.digest, &r);
            r
        })
    }

    fn digest_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        self.with_session(session, |s, _| {
            let a = s.digest.as_mut().ok_or(Error::OperationNotInitialized)?;
            let len = a.op.len();
            let r = deliver(&mut a.pending, out, || len, || a.op.finish());
            settle(&mut s.digest, &r);
            r.map(|(n, _)| n)
        })
    }

    // ---- signatures ---------------------------------------------------------------------

    fn sign_init(&self, session: SessionHandle, mech: &Mechanism, key: ObjectHandle) -> Result<()> {
        self.with_session(session, |s, token| {
            if s.sign.is_some() {
                return Err(Error::OperationActive);
            }
            let obj = Self::key_object(token, key)?;
            let op = Self::key_op(token, &obj, mech, CKF_SIGN, CKA_SIGN, |m, k| {
                m.sign_init(k, &mech.params)
            })?;
            s.sign = Some(Active::new(op, Some(obj)));
            Ok(())
        })
    }

    fn sign(&self, session: SessionHandle, data: &[u8], out: Option<&mut [u8]>) -> Result<usize> {
        self.with_session(session, |s, _| {
            let a = s.sign.as_mut().ok_or(Error::OperationNotInitialized)?;
            if a.multi {
                return Err(Error::OperationActive);
            }
            let r = a.check_auth().and_then(|()| {
                let len = a.op.len();
                deliver(&mut a.pending, out, || len, || a.op.one_shot(data))
            });
            settle(&mut s.sign, &r);
            r.map(|(n, _)| n)
        })
    }

    fn sign_update(&self, session: SessionHandle, data: &[u8]) -> Result<()> {
        self.with_session(session, |s, _| {
            let a = s.sign.as_mut().ok_or(Error::OperationNotInitialized)?;
            let r = a.check_auth().and_then(|()| {
                if !a.op.multi_part() {
                    return Err(Error::FunctionNotSupported);
                }
                a.multi = true;
                a.op.update(data)
            });
            end_on_error(&mut s.sign, &r);
            r
        })
    }

    fn sign_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        self.with_session(session, |s, _| {
            let a = s.sign.as_mut().ok_or(Error::OperationNotInitialized)?;
            let r = a.check_auth().and_then(|()| {
                if !a.op.multi_part() {
                    return Err(Error::FunctionNotSupported);
                }
                let len = a.op.len();
                deliver(&mut a.pending, out, || len, || a.op.finish())
            });
            settle(&mut s.sign, &r);
            r.map(|(n, _)| n)
        })
    }

    fn verify_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            if s.verify.is_some() {
                return Err(Error::OperationActive);
            }
            let obj = Self::key_object(token, key)?;
            let op = Self::key_op(token, &obj, mech, CKF_VERIFY, CKA_VERIFY, |m, k| {
                m.verify_init(k, &mech.params)
            })?;
            s.verify = Some(Active::new(op, Some(obj)));
            Ok(())
        })
    }

    fn verify(&self, session: SessionHandle, data: &[u8], signature: &[u8]) -> Result<()> {
        self.with_session(session, |s, _| {
            let a = s.verify.as_mut().ok_or(Error::OperationNotInitialized)?;
            if a.multi {
                return Err(Error::OperationActive);
            }
            let r = a.op.one_shot(data, signature);
            s.verify = None;
            r
        })
    }

    fn verify_update(&self, session: SessionHandle, data: &[u8]) -> Result<()> {
        self.with_session(session, |s, _| {
            let a = s.verify.as_mut().ok_or(Error::OperationNotInitialized)?;
            let r = if a.op.multi_part() {
                a.multi = true;
                a.op.update(data)
            } else {
                Err(Error::FunctionNotSupported)
            };
            end_on_error(&mut s.verify, &r);
            r
        })
    }

    fn verify_final(&self, session: SessionHandle, signature: &[u8]) -> Result<()> {
        self.with_session(session, |s, _| {
            let a = s.verify.as_mut().ok_or(Error::OperationNotInitialized)?;
            let r = if a.op.multi_part() {
                a.op.finish(signature)
            } else {
                Err(Error::FunctionNotSupported)
            };
            s.verify = None;
            r
        })
    }

    // ---- encryption ---------------------------------------------------------------------

    fn encrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            if s.encrypt.is_some() {
                return Err(Error::OperationActive);
            }
            let obj = Self::key_object(token, key)?;
            let op = Self::key_op(token, &obj, mech, CKF_ENCRYPT, CKA_ENCRYPT, |m, k| {
                m.encrypt_init(k, &mech.params)
            })?;
            s.encrypt = Some(Active::new(op, Some(obj)));
            Ok(())
        })
    }

    fn encrypt(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.with_session(session, |s, _| cipher_one_shot(&mut s.encrypt, data, out))
    }

    fn encrypt_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.with_session(session, |s, _| cipher_update(&mut s.encrypt, data, out))
    }

    fn encrypt_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        self.with_session(session, |s, _| cipher_final(&mut s.encrypt, out))
    }

    fn decrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            if s.decrypt.is_some() {
                return Err(Error::OperationActive);
            }
            let obj = Self::key_object(token, key)?;
            let op = Self::key_op(token, &obj, mech, CKF_DECRYPT, CKA_DECRYPT, |m, k| {
                m.decrypt_init(k, &mech.params)
            })?;
            s.decrypt = Some(Active::new(op, Some(obj)));
            Ok(())
        })
    }

    fn decrypt(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.with_session(session, |s, _| cipher_one_shot(&mut s.decrypt, data, out))
    }

    fn decrypt_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.with_session(session, |s, _| cipher_update(&mut s.decrypt, data, out))
    }

    fn decrypt_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        self.with_session(session, |s, _| cipher_final(&mut s.decrypt, out))
    }

    // ---- message-based encryption (3.0) -------------------------------------------------

    fn message_encrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            if s.msg_encrypt.is_some() {
                return Err(Error::OperationActive);
            }
            let obj = Self::key_object(token, key)?;
            let op = Self::key_op(
                token,
                &obj,
                mech,
                CKF_MESSAGE_ENCRYPT,
                CKA_ENCRYPT,
                |m, k| m.message_encrypt_init(k, &mech.params),
            )?;
            s.msg_encrypt = Some(Active::new(op, Some(obj)));
            Ok(())
        })
    }

    fn encrypt_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.with_session(session, |s, _| {
            message_one_shot(&mut s.msg_encrypt, params, aad, data, out)
        })
    }

    fn encrypt_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
    ) -> Result<()> {
        self.with_session(session, |s, _| {
            message_begin(&mut s.msg_encrypt, params, aad)
        })
    }

    fn encrypt_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        out: Option<&mut [u8]>,
        last: bool,
    ) -> Result<usize> {
        self.with_session(session, |s, _| {
            message_next(&mut s.msg_encrypt, params, data, out, last)
        })
    }

    fn message_encrypt_final(&self, session: SessionHandle) -> Result<()> {
        self.with_session(session, |s, _| {
            s.msg_encrypt
                .take()
                .map(|_| ())
                .ok_or(Error::OperationNotInitialized)
        })
    }

    fn message_decrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            if s.msg_decrypt.is_some() {
                return Err(Error::OperationActive);
            }
            let obj = Self::key_object(token, key)?;
            let op = Self::key_op(
                token,
                &obj,
                mech,
                CKF_MESSAGE_DECRYPT,
                CKA_DECRYPT,
                |m, k| m.message_decrypt_init(k, &mech.params),
            )?;
            s.msg_decrypt = Some(Active::new(op, Some(obj)));
            Ok(())
        })
    }

    fn decrypt_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.with_session(session, |s, _| {
            message_one_shot(&mut s.msg_decrypt, params, aad, data, out)
        })
    }

    fn decrypt_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
    ) -> Result<()> {
        self.with_session(session, |s, _| {
            message_begin(&mut s.msg_decrypt, params, aad)
        })
    }

    fn decrypt_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        out: Option<&mut [u8]>,
        last: bool,
    ) -> Result<usize> {
        self.with_session(session, |s, _| {
            message_next(&mut s.msg_decrypt, params, data, out, last)
        })
    }

    fn message_decrypt_final(&self, session: SessionHandle) -> Result<()> {
        self.with_session(session, |s, _| {
            s.msg_decrypt
                .take()
                .map(|_| ())
                .ok_or(Error::OperationNotInitialized)
        })
    }

    // ---- message-based signatures and MACs (3.0) -------------------------------------------

    fn message_sign_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            if s.msg_sign.is_some() {
                return Err(Error::OperationActive);
            }
            let obj = Self::key_object(token, key)?;
            // The checks of C_SignInit, once; each message gets a fresh operation.
            Self::key_op(token, &obj, mech, CKF_MESSAGE_SIGN, CKA_SIGN, |m, k| {
                m.sign_init(k, &mech.params)
            })?;
            s.msg_sign = Some(MessageMac::new(mech.clone(), obj));
            Ok(())
        })
    }

    fn sign_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.with_session(session, |s, token| {
            let a = s.msg_sign.as_mut().ok_or(Error::OperationNotInitialized)?;
            if a.current.is_some() {
                return Err(Error::OperationActive);
            }
            a.check_auth()?;
            // The exact length is known before signing, so a length query or a short buffer
            // spends no (randomized) signature and leaves nothing pending.
            let r = no_message_params(params).and_then(|()| {
                let mut op = Self::message_sign_op(token, a)?;
                let needed = op.len();
                let Some(buf) = out else {
                    return Ok((needed, false));
                };
                let dst = buf
                    .get_mut(..needed)
                    .ok_or(Error::BufferTooSmall { needed })?;
                let sig = op.one_shot(data)?;
                let dst = dst
                    .get_mut(..sig.len())
                    .ok_or(Error::Internal("signature length"))?;
                dst.copy_from_slice(&sig);
                Ok((sig.len(), true))
            });
            // The message ends unless this was a length query or the buffer was short.
            match &r {
                Ok((_, false)) | Err(Error::BufferTooSmall { .. }) => {}
                Ok((_, true)) | Err(_) => a.end_message(),
            }
            r.map(|(n, _)| n)
        })
    }

    fn sign_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            let a = s.msg_sign.as_mut().ok_or(Error::OperationNotInitialized)?;
            if a.current.is_some() {
                return Err(Error::OperationActive);
            }
            a.check_auth()?;
            no_message_params(params)?;
            let op = Self::message_sign_op(token, a)?;
            if !op.multi_part() {
                return Err(Error::FunctionNotSupported);
            }
            a.current = Some(op);
            Ok(())
        })
    }

    fn sign_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        last: bool,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.with_session(session, |s, _| {
            let a = s.msg_sign.as_mut().ok_or(Error::OperationNotInitialized)?;
            let op = a.current.as_mut().ok_or(Error::OperationNotInitialized)?;
            let r = no_message_params(params).and_then(|()| {
                if !last {
                    return op.update(data).map(|()| (0, false));
                }
                let needed = op.len();
                let Some(buf) = out else {
                    return Ok((needed, false));
                };
                let dst = buf
                    .get_mut(..needed)
                    .ok_or(Error::BufferTooSmall { needed })?;
                op.update(data)?;
                let sig = op.finish()?;
                let dst = dst
                    .get_mut(..sig.len())
                    .ok_or(Error::Internal("signature length"))?;
                dst.copy_from_slice(&sig);
                Ok((sig.len(), true))
            });
            // The last part ends the message unless it was a length query or the buffer was
            // short; an earlier part ends it only by failing.
            match &r {
                Ok((_, false)) | Err(Error::BufferTooSmall { .. }) => {}
                Ok((_, true)) | Err(_) => a.end_message(),
            }
            r.map(|(n, _)| n)
        })
    }

    fn message_sign_final(&self, session: SessionHandle) -> Result<()> {
        self.with_session(session, |s, _| {
            s.msg_sign
                .take()
                .map(|_| ())
                .ok_or(Error::OperationNotInitialized)
        })
    }

    fn message_verify_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            if s.msg_verify.is_some() {
                return Err(Error::OperationActive);
            }
            let obj = Self::key_object(token, key)?;
            Self::key_op(token, &obj, mech, CKF_MESSAGE_VERIFY, CKA_VERIFY, |m, k| {
                m.verify_init(k, &mech.params)
            })?;
            s.msg_verify = Some(MessageMac::new(mech.clone(), obj));
            Ok(())
        })
    }

    fn verify_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        signature: &[u8],
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            let a = s
                .msg_verify
                .as_mut()
                .ok_or(Error::OperationNotInitialized)?;
            if a.current.is_some() {
                return Err(Error::OperationActive);
            }
            a.check_auth()?;
            let r = no_message_params(params)
                .and_then(|()| Self::message_verify_op(token, a)?.one_shot(data, signature));
            a.end_message();
            r
        })
    }

    fn verify_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
    ) -> Result<()> {
        self.with_session(session, |s, token| {
            let a = s
                .msg_verify
                .as_mut()
                .ok_or(Error::OperationNotInitialized)?;
            if a.current.is_some() {
                return Err(Error::OperationActive);
            }
            a.check_auth()?;
            no_message_params(params)?;
            let op = Self::message_verify_op(token, a)?;
            if !op.multi_part() {
                return Err(Error::FunctionNotSupported);
            }
            a.current = Some(op);
            Ok(())
        })
    }

    fn verify_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        signature: Option<&[u8]>,
    ) -> Result<()> {
        self.with_session(session, |s, _| {
            let a = s
                .msg_verify
                .as_mut()
                .ok_or(Error::OperationNotInitialized)?;
            let op = a.current.as_mut().ok_or(Error::OperationNotInitialized)?;
            let r = no_message_params(params).and_then(|()| {
                op.update(data)?;
                match signature {
                    Some(sig) => op.finish(sig),
                    None => Ok(()),
                }
            });
            // The last part ends the message whatever the outcome; an earlier failure too.
            if signature.is_some() || r.is_err() {
                a.end_message();
            }
            r
        })
    }

    fn message_verify_final(&self, session: SessionHandle) -> Result<()> {
        self.with_session(session, |s, _| {
            s.msg_verify
                .take()
                .map(|_| ())
                .ok_or(Error::OperationNotInitialized)
        })
    }

    // ---- key management -----------------------------------------------------------------

    fn generate_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        template: &Template,
    ) -> Result<ObjectHandle> {
        self.with_session(session, |s, token| {
            let m = mechanism::lookup(mech.ty)?;
            if m.info().flags & CKF_GENERATE == 0 {
                return Err(Error::MechanismInvalid);
            }
            let is_token = Self::template_flag(template, CKA_TOKEN, false)?;
            let private = Self::template_flag(template, CKA_PRIVATE, true)?;
            Self::may_create(s, token, is_token, private)?;
            let generated = m.generate_key(template, &mech.params)?;
            let new = self.store_generated(s, token, mech.ty, template, generated)?;
            self.store_new(s, token, new)
        })
    }

    fn generate_key_pair(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        public_template: &Template,
        private_template: &Template,
    ) -> Result<(ObjectHandle, ObjectHandle)> {
        self.with_session(session, |s, token| {
            let m = mechanism::lookup(mech.ty)?;
            if m.info().flags & CKF_GENERATE_KEY_PAIR == 0 {
                return Err(Error::MechanismInvalid);
            }
            for (t, private_default) in [(public_template, false), (private_template, true)] {
                let is_token = Self::template_flag(t, CKA_TOKEN, false)?;
                let private = Self::template_flag(t, CKA_PRIVATE, private_default)?;
                Self::may_create(s, token, is_token, private)?;
            }
            let (pub_gen, priv_gen) =
                m.generate_key_pair(public_template, private_template, &mech.params)?;
            let pub_new = self.store_generated(s, token, mech.ty, public_template, pub_gen)?;
            let priv_new = self.store_generated(s, token, mech.ty, private_template, priv_gen)?;
            let public = self.store_new(s, token, pub_new)?;
            match self.store_new(s, token, priv_new) {
                Ok(private) => Ok((public, private)),
                Err(e) => {
                    // All or nothing: do not leave half a pair behind.
                    if let Ok(obj) = token.object(public.0) {
                        let _ = token.remove(&obj);
                    }
                    Err(e)
                }
            }
        })
    }

    fn wrap_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        wrapping_key: ObjectHandle,
        key: ObjectHandle,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.with_session(session, |_, token| {
            let wrapper = token.object(wrapping_key.0).map_err(|e| match e {
                Error::ObjectHandleInvalid => Error::WrappingKeyHandleInvalid,
                e => e,
            })?;
            let target = Self::key_object(token, key)?;
            if !target.is_key() {
                return Err(Error::KeyHandleInvalid);
            }
            let m = mechanism::lookup(mech.ty)?;
            if m.info().flags & CKF_WRAP == 0 {
                return Err(Error::MechanismInvalid);
            }
            // The wrapping key first: whether it may wrap at all, before the target is looked
            // at or any key material unsealed.
            Self::may_use(m, &wrapper, CKA_WRAP).map_err(|e| match e {
                Error::KeyTypeInconsistent => Error::WrappingKeyTypeInconsistent,
                e => e,
            })?;
            target.wrap_check(&wrapper)?;
            if token.strict() && !wrapper.is(CKA_TRUSTED) {
                // Strict firmware: keys leave only under keys the SO marked trusted.
                return Err(Error::KeyNotWrappable);
            }
            if let Some(required) = wrapper.template(CKA_WRAP_TEMPLATE) {
                let ok =
                    token.with_secrets(&target, |sec| Ok(target.matches(required, Some(sec))))?;
                if !ok {
                    return Err(Error::KeyNotWrappable);
                }
            }
            let material =
                token.with_secrets(&target, |sec| mechanism::key_to_wrap(&target, sec))?;
            let wrapped = token
                .with_secrets(&wrapper, |secrets| {
                    m.wrap(
                        &Key {
                            obj: &wrapper,
                            secrets,
                        },
                        &material,
                        &mech.params,
                    )
                })
                .map_err(|e| match e {
                    Error::KeyTypeInconsistent => Error::WrappingKeyTypeInconsistent,
                    e => e,
                })?;
            let mut pending = Some(zeroize::Zeroizing::new(wrapped));
            deliver(
                &mut pending,
                out,
                || 0,
                || Err(Error::Internal("wrap output")),
            )
            .map(|(n, _)| n)
        })
    }

    fn unwrap_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        unwrapping_key: ObjectHandle,
        wrapped: &[u8],
        template: &Template,
    ) -> Result<ObjectHandle> {
        self.with_session(session, |s, token| {
            let unwrapper = token.object(unwrapping_key.0).map_err(|e| match e {
                Error::ObjectHandleInvalid => Error::UnwrappingKeyHandleInvalid,
                e => e,
            })?;
            let m = mechanism::lookup(mech.ty)?;
            if m.info().flags & CKF_UNWRAP == 0 {
                return Err(Error::MechanismInvalid);
            }
            // Usage before any work: an unwrapping key that may not unwrap must not answer
            // differently for well- and ill-formed ciphertexts (a padding oracle).
            Self::may_use(m, &unwrapper, CKA_UNWRAP).map_err(|e| match e {
                Error::KeyTypeInconsistent => Error::UnwrappingKeyTypeInconsistent,
                e => e,
            })?;
            let imposed = object::protection::unwrap_template(&unwrapper);
            let template = merge_templates(imposed.as_ref(), template)?;
            let class = template
                .get(CKA_CLASS)
                .ok_or(Error::TemplateIncomplete)?
                .as_ulong()?;
            let key_type = template
                .get(CKA_KEY_TYPE)
                .ok_or(Error::TemplateIncomplete)?
                .as_ulong()?;
            if policy::rules_for(class, Some(key_type)).is_none()
                || !matches!(class, CKO_SECRET_KEY | CKO_PRIVATE_KEY)
            {
                return Err(Error::TemplateInconsistent);
            }
            let is_token = Self::template_flag(&template, CKA_TOKEN, false)?;
            let private = Self::template_flag(&template, CKA_PRIVATE, true)?;
            Self::may_create(s, token, is_token, private)?;
            let material = token
                .with_secrets(&unwrapper, |secrets| {
                    m.unwrap(
                        &Key {
                            obj: &unwrapper,
                            secrets,
                        },
                        wrapped,
                        &mech.params,
                    )
                })
                .map_err(|e| match e {
                    Error::KeyTypeInconsistent => Error::UnwrappingKeyTypeInconsistent,
                    e => e,
                })?;
            let supplied = mechanism::key_from_unwrap(class, key_type, &material)?;
            let new = object::assemble(Assembly {
                origin: Origin::Unwrap,
                class,
                subtype: Some(key_type),
                template: &template,
                supplied,
                so: token.login_state() == Some(CKU_SO),
                strict: token.strict(),
            })?;
            // What the unwrapping key's template keeps protected is never public.
            if imposed.is_some() {
                object::protection::check_private(&new.attrs)?;
            }
            self.store_new(s, token, new)
        })
    }

    fn derive_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        base_key: ObjectHandle,
        template: &Template,
    ) -> Result<ObjectHandle> {
        self.with_session(session, |s, token| {
            let base = Self::key_object(token, base_key)?;
            let m = mechanism::lookup(mech.ty)?;
            if m.info().flags & CKF_DERIVE == 0 {
                return Err(Error::MechanismInvalid);
            }
            Self::may_use(m, &base, CKA_DERIVE)?;
            // Every other key the parameters name (an HKDF salt key) is an input too: it must
            // be a secret key the caller may derive with, by this mechanism, and its
            // protection joins the base key's.
            let others = mech
                .params
                .key_handles()
                .into_iter()
                .map(|h| {
                    let k = Self::key_object(token, ObjectHandle(h))?;
                    if k.class() != CKO_SECRET_KEY || !k.is(CKA_DERIVE) {
                        return Err(Error::MechanismParamInvalid);
                    }
                    Self::may_use(m, &k, CKA_DERIVE).map_err(|_| Error::MechanismParamInvalid)?;
                    Ok(k)
                })
                .collect::<Result<Vec<_>>>()?;
            let unnamed = object::protection::meet(others.iter().map(|k| &**k));
            let meet = object::protection::of(&base).and(unnamed);
            let template = merge_templates(base.template(CKA_DERIVE_TEMPLATE), template)?;
            let default_class = if mech.ty == CKM_HKDF_DATA {
                CKO_DATA
            } else {
                CKO_SECRET_KEY
            };
            let class = template
                .get(CKA_CLASS)
                .map(Attribute::as_ulong)
                .transpose()?
                .unwrap_or(default_class);
            let key_type = match class {
                CKO_SECRET_KEY => Some(
                    template
                        .get(CKA_KEY_TYPE)
                        .map(Attribute::as_ulong)
                        .transpose()?
                        .unwrap_or(CKK_GENERIC_SECRET),
                ),
                CKO_DATA => None,
                _ => return Err(Error::TemplateInconsistent),
            };
            if policy::rules_for(class, key_type).is_none() {
                return Err(Error::TemplateInconsistent);
            }
            let value_len = template
                .get(CKA_VALUE_LEN)
                .map(|a| {
                    a.as_ulong()
                        .and_then(|v| usize::try_from(v).map_err(|_| Error::AttributeValueInvalid))
                })
                .transpose()?;
            let is_token = Self::template_flag(&template, CKA_TOKEN, false)?;
            let private = Self::template_flag(&template, CKA_PRIVATE, class == CKO_SECRET_KEY)?;
            Self::may_create(s, token, is_token, private)?;
            // The protection rule decides the new object's template before any derivation
            // runs: never below the meet of the inputs, unless the mechanism's text lets the
            // template choose (bridge::protection::template_chooses).
            let user_template = protection::derived_template(
                meet,
                unnamed,
                mech.ty,
                class,
                &template,
                token.strict(),
            )?;
            let key_value = |h: CK_OBJECT_HANDLE| -> Result<mechanism::Output> {
                let k = others
                    .iter()
                    .find(|k| k.handle == h)
                    .ok_or(Error::MechanismParamInvalid)?;
                token.with_secrets(k, |sec| {
                    let v = sec.get(CKA_VALUE).ok_or(Error::MechanismParamInvalid)?;
                    Ok(zeroize::Zeroizing::new(v.expose().to_vec()))
                })
            };
            let ctx = mechanism::DeriveCtx {
                value_len,
                class,
                key_type,
                key_value: &key_value,
            };
            let value = token.with_secrets(&base, |secrets| {
                m.derive(
                    &Key {
                        obj: &base,
                        secrets,
                    },
                    &mech.params,
                    &ctx,
                )
            })?;
            if let Some(kt) = key_type {
                mechanism::check_import(
                    class,
                    Some(kt),
                    &Template::new().with(Attribute::bytes(CKA_VALUE, value.to_vec())),
                )
                .map_err(|_| Error::TemplateInconsistent)?;
            }
            let mut new = object::assemble(Assembly {
                origin: Origin::Derive,
                class,
                subtype: key_type,
                template: &user_template,
                supplied: vec![Attribute::bytes(CKA_VALUE, value.to_vec())],
                so: token.login_state() == Some(CKU_SO),
                strict: token.strict(),
            })?;
            object::protection::finish_derived(&mut new, meet)?;
            // A key made from a protected key is never public.
            if meet.is_protected() {
                object::protection::check_private(&new.attrs)?;
            }
            self.store_new(s, token, new)
        })
    }

    // ---- random -------------------------------------------------------------------------

    fn seed_random(&self, session: SessionHandle, _seed: &[u8]) -> Result<()> {
        // The generator (AWS-LC's) reseeds itself from the OS and takes no outside seed.
        self.session(session)?;
        Err(Error::RandomSeedNotSupported)
    }

    fn generate_random(&self, session: SessionHandle, out: &mut [u8]) -> Result<()> {
        self.session(session)?;
        crate::crypto::fill_random(out)
    }
}

/// `C_Encrypt`/`C_Decrypt`.
fn cipher_one_shot(
    slot: &mut Option<Active<dyn mechanism::CipherOp>>,
    data: &[u8],
    out: Option<&mut [u8]>,
) -> Result<usize> {
    let a = slot.as_mut().ok_or(Error::OperationNotInitialized)?;
    if a.multi {
        return Err(Error::OperationActive);
    }
    let r = a.check_auth().and_then(|()| {
        let bound = a.op.output_len(data.len(), true);
        deliver(&mut a.pending, out, || bound, || a.op.one_shot(data))
    });
    settle(slot, &r);
    r.map(|(n, _)| n)
}

/// `C_EncryptUpdate`/`C_DecryptUpdate`.
fn cipher_update(
    slot: &mut Option<Active<dyn mechanism::CipherOp>>,
    data: &[u8],
    out: Option<&mut [u8]>,
) -> Result<usize> {
    let a = slot.as_mut().ok_or(Error::OperationNotInitialized)?;
    let r = a.check_auth().and_then(|()| {
        if !a.op.multi_part() {
            return Err(Error::FunctionNotSupported);
        }
        a.multi = true;
        let bound = a.op.output_len(data.len(), false);
        deliver(&mut a.pending, out, || bound, || a.op.update(data))
    });
    // An update never ends the operation unless it failed.
    match &r {
        Ok(_) | Err(Error::BufferTooSmall { .. }) => {}
        Err(_) => *slot = None,
    }
    r.map(|(n, _)| n)
}

/// `C_EncryptFinal`/`C_DecryptFinal`.
fn cipher_final(
    slot: &mut Option<Active<dyn mechanism::CipherOp>>,
    out: Option<&mut [u8]>,
) -> Result<usize> {
    let a = slot.as_mut().ok_or(Error::OperationNotInitialized)?;
    let r = a.check_auth().and_then(|()| {
        let bound = a.op.final_len();
        deliver(&mut a.pending, out, || bound, || a.op.finish())
    });
    settle(slot, &r);
    r.map(|(n, _)| n)
}

/// `C_EncryptMessage`/`C_DecryptMessage`: one whole message. The output length is known
/// before any work (the tag travels in the parameters), so a length query or a short buffer
/// is answered without running, generating an IV or ending anything. A message that fails
/// ends; the message-based process stays initialized.
fn message_one_shot(
    slot: &mut Option<Active<dyn mechanism::MessageCipherOp>>,
    params: &mut MechanismParams,
    aad: &[u8],
    data: &[u8],
    out: Option<&mut [u8]>,
) -> Result<usize> {
    let a = slot.as_mut().ok_or(Error::OperationNotInitialized)?;
    if a.op.in_message() {
        return Err(Error::OperationActive);
    }
    a.check_auth()?;
    let needed = data.len();
    let Some(buf) = out else {
        return Ok(needed);
    };
    let dst = buf
        .get_mut(..needed)
        .ok_or(Error::BufferTooSmall { needed })?;
    let r =
        a.op.begin(params, aad)
            .and_then(|()| a.op.next(params, data, true));
    match r {
        Ok(produced) => {
            let dst = dst
                .get_mut(..produced.len())
                .ok_or(Error::Internal("message output length"))?;
            dst.copy_from_slice(&produced);
            Ok(produced.len())
        }
        Err(e) => {
            a.op.abort();
            Err(e)
        }
    }
}

/// `C_EncryptMessageBegin`/`C_DecryptMessageBegin`.
fn message_begin(
    slot: &mut Option<Active<dyn mechanism::MessageCipherOp>>,
    params: &mut MechanismParams,
    aad: &[u8],
) -> Result<()> {
    let a = slot.as_mut().ok_or(Error::OperationNotInitialized)?;
    if a.op.in_message() {
        return Err(Error::OperationActive);
    }
    a.check_auth()?;
    let r = a.op.begin(params, aad);
    if r.is_err() {
        a.op.abort();
    }
    r
}

/// `C_EncryptMessageNext`/`C_DecryptMessageNext`: the exact output length is known first, so
/// a length query or a short buffer changes nothing; any other failure ends the message.
fn message_next(
    slot: &mut Option<Active<dyn mechanism::MessageCipherOp>>,
    params: &mut MechanismParams,
    data: &[u8],
    out: Option<&mut [u8]>,
    last: bool,
) -> Result<usize> {
    let a = slot.as_mut().ok_or(Error::OperationNotInitialized)?;
    if !a.op.in_message() {
        return Err(Error::OperationNotInitialized);
    }
    a.check_auth()?;
    let needed = a.op.next_len(data.len(), last);
    // A NULL output buffer is a length query, even when the part produces nothing.
    let Some(buf) = out else {
        return Ok(needed);
    };
    let dst = buf
        .get_mut(..needed)
        .ok_or(Error::BufferTooSmall { needed })?;
    match a.op.next(params, data, last) {
        Ok(produced) => {
            let dst = dst
                .get_mut(..produced.len())
                .ok_or(Error::Internal("message output length"))?;
            dst.copy_from_slice(&produced);
            Ok(produced.len())
        }
        Err(e) => {
            a.op.abort();
            Err(e)
        }
    }
}

/// The MAC mechanisms take no per-message parameter.
fn no_message_params(params: &MechanismParams) -> Result<()> {
    match params {
        MechanismParams::None => Ok(()),
        MechanismParams::Raw(b) | MechanismParams::Bytes(b) if b.is_empty() => Ok(()),
        _ => Err(Error::MechanismParamInvalid),
    }
}
