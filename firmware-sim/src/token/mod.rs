//! A token: its store, its login state (per application, i.e. per process), its PINs and
//! lockout counters, and the object cache kept fresh from the store's change counter.

pub(crate) mod pin;
mod table;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bridge::config::FirmwareConfig;
use bridge::personality::Profile;
use bridge::{AttrValue, Error, Result, SlotInfo, Template, TokenInfo, Version};
use cryptoki_sys::*;
use parking_lot::RwLock;

use crate::crypto::{self, Secret};
use crate::object::{Material, NewObject, Object, Sealed, SecretAttrs, policy, protection};
use crate::storage::{self, Counter, Meta, Store, TryStart, codec};
use pin::Role;
pub(crate) use table::ObjectTable;

/// Firmware version reported in slot and token info.
pub(crate) const FIRMWARE_VERSION: Version = Version { major: 0, minor: 1 };

/// The mutable state of a token, behind one lock.
#[derive(Default)]
struct State {
    store: Option<Arc<dyn Store>>,
    /// Why the store cannot be used (a corrupt or foreign file).
    broken: Option<String>,
    meta: Option<Meta>,
    /// The store counter this cache reflects.
    counter: u64,
    /// SQLite's `data_version` when the cache was last refreshed.
    data_version: i64,
    /// Who is logged in, for this application.
    login: Option<CK_USER_TYPE>,
    /// The token key, while someone is logged in.
    token_key: Option<Secret>,
    /// While the user is logged in: proof of the user PIN last found right, so that a
    /// context-specific login with it need not run the PIN derivation again.
    pin_proof: Option<pin::Proof>,
    /// The key sealing public objects' secrets.
    device_key: Option<Secret>,
    objects: ObjectTable,
}

impl State {
    /// Nobody is logged in any more: the token key and the PIN proof go.
    fn log_out(&mut self) {
        self.login = None;
        self.token_key = None;
        self.pin_proof = None;
    }
}

/// Where a token's store lives.
pub(crate) trait Source: Send + Sync {
    /// The store, if the token exists there.
    fn open(&self) -> Result<Option<Arc<dyn Store>>>;
    /// The store, made if needed (`C_InitToken`).
    fn create(&self) -> Result<Arc<dyn Store>>;
    /// Whether the store exists (cheap; asked before every lookup of a token never attached).
    fn exists(&self) -> bool;
    /// Where, for log lines.
    fn describe(&self) -> String;
}

/// A token directory holding an SQLite database (the embedded default, a single daemon).
impl Source for PathBuf {
    fn open(&self) -> Result<Option<Arc<dyn Store>>> {
        Ok(storage::SqliteStore::open(self)?.map(|s| Arc::new(s) as Arc<dyn Store>))
    }
    fn create(&self) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(storage::SqliteStore::create(self)?))
    }
    fn exists(&self) -> bool {
        Path::exists(&self.join(storage::DB_FILE))
    }
    fn describe(&self) -> String {
        self.display().to_string()
    }
}

/// A token of a cluster: its store in etcd.
pub(crate) struct ClusterSlot {
    cluster: Arc<storage::Cluster>,
    slot: u64,
}

impl ClusterSlot {
    pub(crate) fn new(cluster: &Arc<storage::Cluster>, slot: u64) -> Self {
        Self {
            cluster: Arc::clone(cluster),
            slot,
        }
    }
}

impl Source for ClusterSlot {
    fn open(&self) -> Result<Option<Arc<dyn Store>>> {
        Ok(Some(Arc::new(self.cluster.store(self.slot))))
    }
    fn create(&self) -> Result<Arc<dyn Store>> {
        Ok(Arc::new(self.cluster.store(self.slot)))
    }
    fn exists(&self) -> bool {
        true
    }
    fn describe(&self) -> String {
        format!("cluster {}, slot {}", self.cluster.name(), self.slot)
    }
}

/// How long an operation may go on trusting the cache after the store was last asked whether
/// another process or node changed it (see `Token::key`).
const FRESH_FOR_USE: Duration = Duration::from_millis(1);

/// Microseconds since the first call of this process, never 0 (0 means "never checked").
fn now_micros() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// One token (one slot of the simulated device).
pub(crate) struct Token {
    source: Box<dyn Source>,
    description: String,
    config: FirmwareConfig,
    state: RwLock<State>,
    /// When the cache was last found current with the store (`now_micros`; 0: never).
    checked: AtomicU64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token({})", self.source.describe())
    }
}

/// The AAD that binds an object's sealed part to its token, its id and its public part.
// `CK_ULONG` is 32 bits on Windows, where the conversion is not useless.
#[allow(clippy::useless_conversion)]
fn object_aad(uuid: &[u8], id: CK_OBJECT_HANDLE, public: &[u8]) -> Vec<u8> {
    let mut a = Vec::with_capacity(32 + public.len());
    a.extend_from_slice(b"ferrohsm-object:");
    a.extend_from_slice(uuid);
    a.extend_from_slice(&u64::from(id).to_le_bytes());
    a.extend_from_slice(public);
    a
}

fn pad32(label: &[u8]) -> String {
    String::from_utf8_lossy(label)
        .trim_end_matches([' ', '\0'])
        .to_owned()
}

impl Token {
    /// A token whose store is (or will be) the directory `dir`.
    pub(crate) fn new(dir: &Path, description: String, config: FirmwareConfig) -> Self {
        Self::with_source(Box::new(dir.to_path_buf()), description, config)
    }

    /// A token whose store is (or will be) at `source`.
    pub(crate) fn with_source(
        source: Box<dyn Source>,
        description: String,
        config: FirmwareConfig,
    ) -> Self {
        let token = Self {
            source,
            description,
            config,
            state: RwLock::new(State::default()),
            checked: AtomicU64::new(0),
        };
        {
            let mut st = token.state.write();
            if let Err(e) = token.attach(&mut st) {
                log::error!("token {}: {e}", token.source.describe());
                st.broken = Some(e.to_string());
            }
        }
        token
    }

    /// Opens the store if it exists and loads everything.
    fn attach(&self, st: &mut State) -> Result<()> {
        if st.store.is_none() {
            match self.source.open()? {
                Some(s) => st.store = Some(s),
                None => return Ok(()),
            }
        }
        self.reload(st, true)
    }

    /// Catches up with the store: meta always, objects from the last counter (or all).
    fn reload(&self, st: &mut State, full: bool) -> Result<()> {
        let Some(store) = st.store.clone() else {
            return Ok(());
        };
        // Read before the store, recorded after: a failed reload is tried again.
        let data_version = store.data_version()?;
        let Some((meta, _)) = store.load_meta()? else {
            *st = State {
                store: Some(store),
                data_version,
                ..State::default()
            };
            return Ok(());
        };
        let reinitialized = st.meta.as_ref().is_some_and(|m| m.uuid != meta.uuid);
        let full = full || reinitialized || st.meta.is_none();
        if full {
            st.objects.clear_token_objects(reinitialized);
            st.counter = 0;
            if reinitialized {
                st.log_out();
            }
        }
        st.device_key = Some(Secret::copy_from(&meta.device_key));
        let delta = store.changes_since(st.counter)?;
        for id in delta.deleted {
            if let Ok(h) = CK_OBJECT_HANDLE::try_from(id) {
                st.objects.remove(h);
            }
        }
        // Records are decoded (public ones unsealed, so authenticated) when first used.
        let decode: Arc<table::Decode> = {
            let uuid = meta.uuid.clone();
            let device_key = Secret::copy_from(&meta.device_key);
            Arc::new(move |handle, rev, record: &[u8]| {
                decode_object(handle, rev, record, &uuid, Some(&device_key))
            })
        };
        for row in delta.rows {
            let Ok(handle) = CK_OBJECT_HANDLE::try_from(row.id) else {
                continue;
            };
            if st.objects.rev(handle) == Some(row.rev) {
                continue;
            }
            st.objects
                .insert_stored(handle, row.rev, row.record, &decode);
        }
        st.counter = delta.counter;
        st.meta = Some(meta);
        st.data_version = data_version;
        Ok(())
    }

    /// Refreshes from the store if another process changed it (one cheap pragma otherwise).
    fn refresh(&self) -> Result<()> {
        let started = now_micros();
        let r = self.refresh_now();
        if r.is_ok() {
            self.checked.fetch_max(started, Ordering::Relaxed);
        }
        r
    }

    /// Refreshes unless the cache was found current less than `FRESH_FOR_USE` ago: no system
    /// call in the common case (the store's change counter costs two file locks).
    fn refresh_for_use(&self) -> Result<()> {
        let checked = self.checked.load(Ordering::Relaxed);
        let fresh = u64::try_from(FRESH_FOR_USE.as_micros()).unwrap_or(u64::MAX);
        if checked != 0 && now_micros().saturating_sub(checked) < fresh {
            return Ok(());
        }
        self.refresh()
    }

    fn refresh_now(&self) -> Result<()> {
        {
            let st = self.state.read();
            if let Some(msg) = &st.broken {
                return Err(Error::Store(msg.clone()));
            }
            match &st.store {
                Some(store) => {
                    if store.data_version()? == st.data_version {
                        return Ok(());
                    }
                }
                None => {
                    if !self.source.exists() {
                        return Ok(());
                    }
                }
            }
        }
        let mut st = self.state.write();
        let r = if st.store.is_none() {
            self.attach(&mut st)
        } else {
            self.reload(&mut st, false)
        };
        if let Err(e) = &r {
            log::error!("token {}: {e}", self.source.describe());
            // A cluster without quorum: what is loaded goes on serving (writes and logins,
            // which need the store, fail on their own).
            if st.meta.is_some() && st.store.as_ref().is_some_and(|s| s.tolerate_stale()) {
                return Ok(());
            }
        }
        r
    }

    /// Catches up with every change made before this call, on any node (a handle not found
    /// may name an object another node made a moment ago).
    fn catch_up(&self) -> Result<()> {
        let store = self.state.read().store.clone();
        match store {
            Some(store) if store.tolerate_stale() => {
                store.sync()?;
                self.refresh()
            }
            _ => Ok(()),
        }
    }

    /// Catches up before a PIN is checked or changed: on a cluster the PIN verifiers another
    /// node changed a moment ago must be the ones checked (an old PIN must not open the token
    /// through a node that has not polled yet); elsewhere the usual refresh.
    fn fresh_for_pin(&self) -> Result<()> {
        let store = self.state.read().store.clone();
        if let Some(store) = store.filter(|s| s.tolerate_stale()) {
            store.sync()?;
        }
        self.refresh()
    }

    /// Whether the token has been initialized.
    pub(crate) fn is_initialized(&self) -> bool {
        let _ = self.refresh();
        self.state.read().meta.is_some()
    }

    /// The token's personality: what the HSM it models offers and refuses.
    pub(crate) fn profile(&self) -> &'static Profile {
        self.config.personality.profile()
    }

    /// Whether the token follows the strict (HSM firmware) profile.
    pub(crate) fn strict(&self) -> bool {
        self.profile().strict
    }

    /// `C_GetSlotInfo`.
    pub(crate) fn slot_info(&self) -> SlotInfo {
        SlotInfo {
            description: self.description.clone(),
            manufacturer: "FerroHSM".into(),
            flags: CKF_TOKEN_PRESENT,
            hardware_version: Version { major: 0, minor: 0 },
            firmware_version: FIRMWARE_VERSION,
        }
    }

    /// `C_GetTokenInfo`; the session counts come from the device.
    pub(crate) fn token_info(
        &self,
        sessions: CK_ULONG,
        rw_sessions: CK_ULONG,
    ) -> Result<TokenInfo> {
        self.refresh()?;
        let st = self.state.read();
        let max = CK_ULONG::from(self.config.max_login_failures);
        let mut flags =
            CKF_RNG | CKF_LOGIN_REQUIRED | CKF_CLOCK_ON_TOKEN | CKF_RESTORE_KEY_NOT_NEEDED;
        let (label, serial) = match &st.meta {
            Some(m) => {
                flags |= CKF_TOKEN_INITIALIZED;
                if m.user_wrap.is_some() {
                    flags |= CKF_USER_PIN_INITIALIZED;
                }
                if m.user_pin_to_be_changed {
                    flags |= CKF_USER_PIN_TO_BE_CHANGED;
                }
                flags |= counter_flags(
                    CK_ULONG::from(m.user_failures),
                    max,
                    [
                        CKF_USER_PIN_COUNT_LOW,
                        CKF_USER_PIN_FINAL_TRY,
                        CKF_USER_PIN_LOCKED,
                    ],
                );
                flags |= counter_flags(
                    CK_ULONG::from(m.so_failures),
                    max,
                    [
                        CKF_SO_PIN_COUNT_LOW,
                        CKF_SO_PIN_FINAL_TRY,
                        CKF_SO_PIN_LOCKED,
                    ],
                );
                (pad32(&m.label), m.serial.clone())
            }
            None => (String::new(), String::new()),
        };
        Ok(TokenInfo {
            label,
            manufacturer: "FerroHSM".into(),
            model: "FerroHSM sim".into(),
            serial_number: serial,
            flags,
            max_session_count: CK_EFFECTIVELY_INFINITE,
            session_count: sessions,
            max_rw_session_count: CK_EFFECTIVELY_INFINITE,
            rw_session_count: rw_sessions,
            max_pin_len: CK_ULONG::try_from(pin::MAX_PIN_LEN).unwrap_or(64),
            min_pin_len: CK_ULONG::try_from(pin::MIN_PIN_LEN).unwrap_or(4),
            total_public_memory: CK_UNAVAILABLE_INFORMATION,
            free_public_memory: CK_UNAVAILABLE_INFORMATION,
            total_private_memory: CK_UNAVAILABLE_INFORMATION,
            free_private_memory: CK_UNAVAILABLE_INFORMATION,
            hardware_version: Version { major: 0, minor: 0 },
            firmware_version: FIRMWARE_VERSION,
            utc_time: utc_now(),
        })
    }

    /// `C_InitToken`: the device has checked that no session is open.
    pub(crate) fn init(&self, so_pin: &[u8], label: &[u8; 32]) -> Result<()> {
        let _ = self.refresh();
        if self.state.read().meta.is_some() {
            // Re-initialization needs the current SO PIN; it counts as an SO login attempt.
            self.check_pin(Role::So, so_pin)?;
        }
        pin::check_new_pin(so_pin)?;
        let uuid = crypto::random_vec(16)?;
        let token_key = Secret::random(32)?;
        let iterations = self.config.pin_kdf_iterations;
        let meta = Meta {
            so_wrap: pin::wrap(so_pin, &token_key, iterations, Role::So, &uuid)?,
            serial: base16ct::lower::encode_string(uuid.get(..8).unwrap_or_default()),
            uuid,
            label: label.to_vec(),
            kdf_iterations: iterations,
            user_wrap: None,
            device_key: crypto::random_vec(32)?,
            so_failures: 0,
            user_failures: 0,
            user_pin_to_be_changed: false,
        };
        let mut st = self.state.write();
        let store = match &st.store {
            Some(s) => Arc::clone(s),
            None => self.source.create()?,
        };
        store.initialize(&meta)?;
        store.scrub();
        *st = State {
            store: Some(store),
            ..State::default()
        };
        st.broken = None;
        self.reload(&mut st, true)
    }

    /// Verifies `pin` for `role` under the lockout, and on success returns the token key.
    ///
    /// The try is counted in the store, in the write transaction that decides whether it may
    /// run at all, before the PIN derivation (`storage::Store::begin_try`); the derivation runs
    /// outside every lock; its outcome is recorded in a second transaction (`end_try`). So
    /// parallel callers — threads, processes, daemons sharing the store — never try more
    /// wrong PINs than the limit, and correct PINs started together all succeed (a try that
    /// finds the limit filled by tries in progress waits for them).
    ///
    /// Returns the token key and the wrap of it that the PIN opened.
    fn check_pin(&self, role: Role, pin_bytes: &[u8]) -> Result<(Secret, Vec<u8>)> {
        let (store, meta) = {
            let st = self.state.read();
            (
                st.store.clone().ok_or(Error::TokenNotRecognized)?,
                Self::meta(&st)?,
            )
        };
        let wrapped = match role {
            Role::So => Some(&meta.so_wrap),
            Role::User => meta.user_wrap.as_ref(),
        }
        .ok_or(Error::UserPinNotInitialized)?;
        let counter = match role {
            Role::So => Counter::So,
            Role::User => Counter::User,
        };
        let max = self.config.max_login_failures;
        let ticket = if max == 0 {
            None
        } else {
            Some(Self::begin_try(store.as_ref(), counter, max)?)
        };
        let opened = pin::unwrap(pin_bytes, wrapped, meta.kdf_iterations, role, &meta.uuid);
        let outcome = match ticket {
            None => opened
                .and_then(|o| o.ok_or(Error::PinIncorrect))
                .map(|key| (key, wrapped.clone())),
            Some(t) => {
                let success = matches!(opened, Ok(Some(_)));
                let failures = store.end_try(t, success)?;
                match opened? {
                    Some(key) => Ok((key, wrapped.clone())),
                    None if failures >= max => Err(Error::PinLocked),
                    None => Err(Error::PinIncorrect),
                }
            }
        };
        // The token info's counter flags follow the store.
        self.reread_meta(store.as_ref());
        outcome
    }

    /// Waits for a PIN try to be allowed to begin (see `check_pin`). Tries in progress end
    /// within one PIN derivation, or go stale and count as failures: the wait is bounded.
    fn begin_try(store: &dyn Store, counter: Counter, max: u32) -> Result<storage::Try> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut pause = Duration::from_millis(2);
        loop {
            match store.begin_try(counter, max)? {
                TryStart::Go(t) => return Ok(t),
                TryStart::Locked => return Err(Error::PinLocked),
                TryStart::Busy if Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                TryStart::Busy => {
                    log::error!("PIN tries in progress did not end within two minutes");
                    return Err(Error::FunctionFailed);
                }
            }
        }
    }

    /// The meta of an initialized token.
    fn meta(st: &State) -> Result<Meta> {
        st.meta.clone().ok_or(Error::TokenNotRecognized)
    }

    /// Who is logged in.
    pub(crate) fn login_state(&self) -> Option<CK_USER_TYPE> {
        self.state.read().login
    }

    /// Whether `user` may log in now (nobody, or somebody else, is logged in).
    fn may_log_in(st: &State, user: CK_USER_TYPE) -> Result<()> {
        match st.login {
            Some(u) if u == user => Err(Error::UserAlreadyLoggedIn),
            Some(_) => Err(Error::UserAnotherAlreadyLoggedIn),
            None => Ok(()),
        }
    }

    /// `C_Login` for the SO or the user; the device has checked the session rules. The PIN
    /// derivation runs without the token's lock: other threads go on meanwhile.
    pub(crate) fn login(&self, user: CK_USER_TYPE, pin_bytes: &[u8]) -> Result<()> {
        self.fresh_for_pin()?;
        let role = {
            let st = self.state.read();
            let meta = Self::meta(&st)?;
            Self::may_log_in(&st, user)?;
            let role = match user {
                CKU_SO => Role::So,
                CKU_USER => Role::User,
                _ => return Err(Error::UserTypeInvalid),
            };
            if role == Role::User && meta.user_wrap.is_none() {
                return Err(Error::UserPinNotInitialized);
            }
            role
        };
        let (key, wrap) = self.check_pin(role, pin_bytes)?;
        let proof = match role {
            Role::User => Some(pin::Proof::new(pin_bytes, wrap)?),
            Role::So => None,
        };
        let mut st = self.state.write();
        // Another thread of this application may have logged in meanwhile.
        Self::may_log_in(&st, user)?;
        st.login = Some(user);
        st.token_key = Some(key);
        st.pin_proof = proof;
        Ok(())
    }

    /// Re-authentication for a key with `CKA_ALWAYS_AUTHENTICATE` (the user PIN).
    ///
    /// The PIN this application's user last proved (at `C_Login` or a previous context login)
    /// is recognized without the PIN derivation, from an HMAC of it under a random key of the
    /// login's own (never the PIN itself), as long as the store still holds the same wrap of
    /// the token key (no PIN change anywhere since) and records no failed try (a lockout in
    /// progress is decided by the store, as ever). Anything else — another PIN, a changed PIN,
    /// failures on record — takes the full path: counted under the lockout, then the
    /// derivation.
    pub(crate) fn verify_user_pin(&self, pin_bytes: &[u8]) -> Result<()> {
        self.fresh_for_pin()?;
        {
            let st = self.state.read();
            if let (Some(proof), Some(CKU_USER), Some(meta)) = (&st.pin_proof, st.login, &st.meta) {
                if meta.user_failures == 0
                    && meta
                        .user_wrap
                        .as_deref()
                        .is_some_and(|w| proof.proves(pin_bytes, w))
                {
                    return Ok(());
                }
            }
        }
        match self.check_pin(Role::User, pin_bytes) {
            Err(Error::PinLocked) => {
                // The spec: a locked PIN here also logs the user out.
                self.state.write().log_out();
                Err(Error::PinLocked)
            }
            Err(e) => Err(e),
            Ok((_, wrap)) => {
                let proof = pin::Proof::new(pin_bytes, wrap)?;
                let mut st = self.state.write();
                if st.login == Some(CKU_USER) {
                    st.pin_proof = Some(proof);
                }
                Ok(())
            }
        }
    }

    /// `C_Logout`.
    pub(crate) fn logout(&self) -> Result<()> {
        let mut st = self.state.write();
        if st.login.is_none() {
            return Err(Error::UserNotLoggedIn);
        }
        st.log_out();
        Ok(())
    }

    /// Logs out silently (the last session closed).
    pub(crate) fn forget_login(&self) {
        self.state.write().log_out();
    }

    /// `C_InitPIN` by the logged-in SO.
    pub(crate) fn init_pin(&self, new_pin: &[u8]) -> Result<()> {
        pin::check_new_pin(new_pin)?;
        self.fresh_for_pin()?;
        let (store, wrapped) = {
            // A read lock: other threads' lookups go on during the PIN derivation.
            let st = self.state.read();
            if st.login != Some(CKU_SO) {
                return Err(Error::UserNotLoggedIn);
            }
            let meta = Self::meta(&st)?;
            let key = st.token_key.as_ref().ok_or(Error::UserNotLoggedIn)?;
            let wrapped = pin::wrap(new_pin, key, meta.kdf_iterations, Role::User, &meta.uuid)?;
            (st.store.clone().ok_or(Error::TokenNotRecognized)?, wrapped)
        };
        store.update_wrap(Counter::User, None, &wrapped, None, true)?;
        store.scrub();
        self.reread_meta(store.as_ref());
        Ok(())
    }

    /// Takes the store's meta table into the cache (after a change this process made).
    fn reread_meta(&self, store: &dyn Store) {
        if let Ok(Some((fresh, _))) = store.load_meta() {
            let mut st = self.state.write();
            if st.meta.as_ref().is_some_and(|m| m.uuid == fresh.uuid) {
                st.meta = Some(fresh);
            }
        }
    }

    /// `C_SetPIN`: the SO's PIN when the SO is logged in, else the user's.
    pub(crate) fn set_pin(&self, old_pin: &[u8], new_pin: &[u8]) -> Result<()> {
        self.fresh_for_pin()?;
        let role = {
            let st = self.state.read();
            let meta = Self::meta(&st)?;
            let role = if st.login == Some(CKU_SO) {
                Role::So
            } else {
                Role::User
            };
            if role == Role::User && meta.user_wrap.is_none() {
                return Err(Error::UserPinNotInitialized);
            }
            role
        };
        let (key, opened) = self.check_pin(role, old_pin)?;
        pin::check_new_pin(new_pin)?;
        let (store, meta) = {
            let st = self.state.read();
            (
                st.store.clone().ok_or(Error::TokenNotRecognized)?,
                Self::meta(&st)?,
            )
        };
        let wrapped = pin::wrap(new_pin, &key, meta.kdf_iterations, role, &meta.uuid)?;
        match role {
            Role::So => store.update_wrap(Counter::So, Some(&opened), &wrapped, None, false)?,
            Role::User => {
                store.update_wrap(Counter::User, Some(&opened), &wrapped, Some(false), false)?
            }
        };
        // The old wrap of the token key must not linger on disk.
        store.scrub();
        self.reread_meta(store.as_ref());
        Ok(())
    }

    // ---- objects ------------------------------------------------------------------------

    /// Whether the application may see `obj` in its current login state.
    fn visible(st: &State, obj: &Object) -> bool {
        !obj.is_private() || st.login == Some(CKU_USER)
    }

    /// The object `handle`, if visible, exactly as the store has it now (for attribute reads
    /// and changes, copies, destruction: what another process changed shows at once).
    pub(crate) fn object(&self, handle: CK_OBJECT_HANDLE) -> Result<Arc<Object>> {
        self.lookup(handle, false)
    }

    /// The key `handle`, if visible, for an operation. A session object is this process's
    /// alone, so the store is not asked at all; for a token object the store's change counter
    /// is asked at most once per `FRESH_FOR_USE` (1 ms): a change another process made (a
    /// usage attribute cleared, the key destroyed) reaches operations started within 1 ms of
    /// it, and every attribute read, search and change at once. A handle not in the cache
    /// always asks the store.
    pub(crate) fn key(&self, handle: CK_OBJECT_HANDLE) -> Result<Arc<Object>> {
        self.lookup(handle, true)
    }

    fn lookup(&self, handle: CK_OBJECT_HANDLE, for_use: bool) -> Result<Arc<Object>> {
        {
            let st = self.state.read();
            if let Some(o) = st.objects.get(handle) {
                if !o.is_token() && st.broken.is_none() && Self::visible(&st, o) {
                    return Ok(Arc::clone(o));
                }
            }
        }
        if for_use {
            self.refresh_for_use()?;
        } else {
            self.refresh()?;
        }
        let found = || {
            let st = self.state.read();
            match st.objects.get(handle) {
                Some(o) if Self::visible(&st, o) => Some(Arc::clone(o)),
                _ => None,
            }
        };
        if let Some(o) = found() {
            return Ok(o);
        }
        if for_use {
            // Not in a cache up to 1 ms old: maybe made a moment ago by another process.
            self.refresh()?;
            if let Some(o) = found() {
                return Ok(o);
            }
        }
        if self.catch_up().is_ok() {
            if let Some(o) = found() {
                return Ok(o);
            }
        }
        Err(Error::ObjectHandleInvalid)
    }

    /// The secret attributes of a visible object, unsealing them on first use.
    pub(crate) fn with_secrets<T>(
        &self,
        obj: &Object,
        f: impl FnOnce(&SecretAttrs) -> Result<T>,
    ) -> Result<T> {
        let st = self.state.read();
        // A protected key is used only by the logged-in user, whatever its CKA_PRIVATE
        // (CKF_LOGIN_REQUIRED: "some cryptographic functions ... a user must be logged in to
        // perform"); its material is sealed under the token key anyway.
        if obj.is_protected() && st.login != Some(CKU_USER) {
            return Err(Error::UserNotLoggedIn);
        }
        let secrets = obj.material.secrets(|sealed| open_sealed(&st, sealed))?;
        f(secrets)
    }

    /// The handles matching `template` that the application can see, in handle order.
    pub(crate) fn find(
        &self,
        template: &Template,
        owner_ok: impl Fn(&Object) -> bool,
    ) -> Result<Vec<CK_OBJECT_HANDLE>> {
        self.refresh()?;
        let st = self.state.read();
        let mut out = Vec::new();
        for obj in st.objects.candidates(template) {
            if !Self::visible(&st, obj) || !owner_ok(obj) {
                continue;
            }
            let needs_secrets = template.iter().any(|a| obj.is_sealed_type(a.ty));
            let ok = if needs_secrets {
                let secrets = obj.material.secrets(|sealed| open_sealed(&st, sealed));
                secrets.is_ok_and(|s| obj.matches(template, Some(s)))
            } else {
                obj.matches(template, None)
            };
            if ok {
                out.push(obj.handle);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Stores a new object (in the store for a token object) and returns its handle.
    pub(crate) fn insert(
        &self,
        new: NewObject,
        owner: Option<CK_SESSION_HANDLE>,
        session_handle: CK_OBJECT_HANDLE,
    ) -> Result<CK_OBJECT_HANDLE> {
        self.refresh()?;
        let is_token = new.flag(CKA_TOKEN);
        let private = new.flag(CKA_PRIVATE);
        let mut st = self.state.write();
        if private && st.login != Some(CKU_USER) {
            return Err(Error::UserNotLoggedIn);
        }
        if !is_token {
            let obj = new.into_object(session_handle, owner);
            st.objects.insert(Arc::new(obj));
            return Ok(session_handle);
        }
        let meta = Self::meta(&st)?;
        // A protected key's material is sealed under the token key even when the key is public:
        // the device key is in the store for anyone who can read it.
        let key = if private || protection::new_is_protected(&new.attrs) {
            st.token_key.as_ref()
        } else {
            st.device_key.as_ref()
        }
        .ok_or(Error::UserNotLoggedIn)?;
        let store = st.store.clone().ok_or(Error::TokenNotRecognized)?;
        let public = codec::encode_public(new.attrs.iter().map(|(t, v)| (*t, v)));
        let plain = secret_plaintext(&new.secrets);
        let (id, rev) = store.insert(&mut |id| {
            let handle = CK_OBJECT_HANDLE::try_from(id).map_err(|_| Error::DeviceMemory)?;
            let sealed = crypto::seal(key, &object_aad(&meta.uuid, handle, &public), &plain)?;
            Ok(codec::encode_record(&public, &sealed))
        })?;
        let handle = CK_OBJECT_HANDLE::try_from(id).map_err(|_| Error::DeviceMemory)?;
        let mut obj = new.into_object(handle, None);
        obj.rev = rev;
        st.objects.insert(Arc::new(obj));
        Ok(handle)
    }

    /// Changes the object `handle` (visible to the application) as `change` makes it from the
    /// current version, all or nothing. A token object changed meanwhile by another process or
    /// node is read again and changed again: a change is never made from a stale copy.
    pub(crate) fn modify(
        &self,
        handle: CK_OBJECT_HANDLE,
        change: impl Fn(&Object) -> Result<Object>,
    ) -> Result<()> {
        for _ in 0..16 {
            let obj = self.object(handle)?;
            if self.replace(change(&obj)?)? {
                return Ok(());
            }
            let store = self.state.read().store.clone();
            if let Some(store) = store {
                store.sync()?;
            }
            let mut st = self.state.write();
            self.reload(&mut st, false)?;
        }
        log::error!("{}: object {handle} keeps changing", self.source.describe());
        Err(Error::FunctionFailed)
    }

    /// Replaces an object by a changed version (all or nothing); `false` if the stored record
    /// is no longer the one `obj` was made from.
    fn replace(&self, mut obj: Object) -> Result<bool> {
        let mut st = self.state.write();
        if !obj.is_token() {
            st.objects.insert(Arc::new(obj));
            return Ok(true);
        }
        let meta = Self::meta(&st)?;
        let key = if obj.under_token_key() {
            st.token_key.as_ref()
        } else {
            st.device_key.as_ref()
        }
        .ok_or(Error::UserNotLoggedIn)?;
        let secrets = obj.material.secrets(|sealed| open_sealed(&st, sealed))?;
        let public = codec::encode_public(obj.attrs.iter().map(|(t, v)| (*t, v)));
        let sealed = crypto::seal(
            key,
            &object_aad(&meta.uuid, obj.handle, &public),
            &secret_plaintext(secrets),
        )?;
        let store = st.store.clone().ok_or(Error::TokenNotRecognized)?;
        let id = i64::try_from(obj.handle).map_err(|_| Error::ObjectHandleInvalid)?;
        match store.update(id, obj.rev, &codec::encode_record(&public, &sealed))? {
            Some(rev) => obj.rev = rev,
            None => return Ok(false),
        }
        st.objects.insert(Arc::new(obj));
        Ok(true)
    }

    /// Removes an object.
    pub(crate) fn remove(&self, obj: &Object) -> Result<()> {
        let mut st = self.state.write();
        if obj.is_token() {
            let store = st.store.clone().ok_or(Error::TokenNotRecognized)?;
            let id = i64::try_from(obj.handle).map_err(|_| Error::ObjectHandleInvalid)?;
            match store.delete(id) {
                Ok(_) | Err(Error::ObjectHandleInvalid) => {}
                Err(e) => return Err(e),
            }
            store.scrub();
        }
        st.objects.remove(obj.handle);
        Ok(())
    }

    /// Drops the session objects a closed session owned.
    pub(crate) fn drop_session_objects(&self, owner: CK_SESSION_HANDLE) {
        self.state.write().objects.remove_owned_by(owner);
    }

    /// How many keys (public, private, secret) the token holds, token and session objects:
    /// what the vendors' key-handle limits count.
    pub(crate) fn key_count(&self) -> usize {
        self.state
            .read()
            .objects
            .count_classes(&[CKO_PUBLIC_KEY, CKO_PRIVATE_KEY, CKO_SECRET_KEY])
    }
}

/// PIN counter flags: COUNT_LOW after a failure, FINAL_TRY when one attempt is left, LOCKED.
fn counter_flags(
    failures: CK_ULONG,
    max: CK_ULONG,
    [low, last, locked]: [CK_FLAGS; 3],
) -> CK_FLAGS {
    if max == 0 || failures == 0 {
        0
    } else if failures >= max {
        locked
    } else if failures + 1 == max {
        last | low
    } else {
        low
    }
}

fn secret_plaintext(secrets: &SecretAttrs) -> zeroize::Zeroizing<Vec<u8>> {
    let list: Vec<(CK_ATTRIBUTE_TYPE, &[u8])> =
        secrets.0.iter().map(|(t, s)| (*t, s.expose())).collect();
    zeroize::Zeroizing::new(codec::encode_secret(&list))
}

/// Opens an object's sealed material with the key it is sealed under.
fn open_sealed(st: &State, sealed: &Sealed) -> Result<SecretAttrs> {
    if !sealed.under_token_key {
        let key = st.device_key.as_ref().ok_or(Error::UserNotLoggedIn)?;
        return unseal(key, sealed);
    }
    let key = st.token_key.as_ref().ok_or(Error::UserNotLoggedIn)?;
    match unseal(key, sealed) {
        // A protected public key written by an earlier version, under the device key; the next
        // change of the object seals it under the token key.
        Err(_) if sealed.public => {
            let device = st.device_key.as_ref().ok_or(Error::UserNotLoggedIn)?;
            unseal(device, sealed)
        }
        r => r,
    }
}

fn unseal(key: &Secret, sealed: &Sealed) -> Result<SecretAttrs> {
    let plain = crypto::open(key, &sealed.aad, &sealed.bytes)
        .ok_or_else(|| Error::Store("an object's sealed part does not authenticate".into()))?;
    let attrs = codec::decode_attr_list(plain.expose())?;
    let mut out = SecretAttrs::default();
    for a in attrs {
        if let AttrValue::Bytes(b) = &a.value {
            out.0.push((a.ty, Secret::copy_from(b)));
        }
    }
    Ok(out)
}

/// Rebuilds an object from its record; public objects are unsealed (and so authenticated)
/// at once, private ones when the user logs in and uses them.
fn decode_object(
    handle: CK_OBJECT_HANDLE,
    rev: u64,
    record: &[u8],
    uuid: &[u8],
    device_key: Option<&Secret>,
) -> Result<Object> {
    let (rec, public_bytes) = codec::decode_record(record)?;
    let aad = object_aad(uuid, handle, public_bytes);
    let attrs: std::collections::BTreeMap<_, _> = rec
        .public
        .into_iter()
        .map(|a| (a.ty, a.value.clone()))
        .collect();
    let mut obj = Object {
        handle,
        rev,
        owner: None,
        attrs,
        material: Material::plain(SecretAttrs::default()),
    };
    if policy::rules_for(obj.class(), obj.subtype()).is_none() {
        return Err(Error::Store("record of an unknown object class".into()));
    }
    let under_token_key = obj.under_token_key();
    let sealed = Sealed {
        bytes: rec.sealed,
        aad,
        under_token_key,
        public: !obj.is_private(),
    };
    obj.material = if under_token_key {
        Material::sealed(sealed)
    } else {
        // Opened now (and so authenticated); the sealed copy is not kept.
        let key = device_key.ok_or(Error::Internal("device key"))?;
        Material::plain(unseal(key, &sealed)?)
    };
    Ok(obj)
}

/// The current UTC time as `YYYYMMDDhhmmss00`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}00",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_flags_follow_the_failures() {
        let f = [
            CKF_USER_PIN_COUNT_LOW,
            CKF_USER_PIN_FINAL_TRY,
            CKF_USER_PIN_LOCKED,
        ];
        assert_eq!(counter_flags(0, 3, f), 0);
        assert_eq!(counter_flags(1, 3, f), CKF_USER_PIN_COUNT_LOW);
        assert_eq!(
            counter_flags(2, 3, f),
            CKF_USER_PIN_COUNT_LOW | CKF_USER_PIN_FINAL_TRY
        );
        assert_eq!(counter_flags(3, 3, f), CKF_USER_PIN_LOCKED);
        assert_eq!(counter_flags(5, 0, f), 0);
    }

    #[test]
    fn utc_time_is_sixteen_digits() {
        let t = utc_now();
        assert_eq!(t.len(), 16);
        assert!(t.bytes().all(|b| b.is_ascii_digit()));
        assert!(t.starts_with("20"));
    }
}
