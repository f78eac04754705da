//! Tenants and roles of a daemon (docs/architecture.md §8): which identities may use which
//! tenant's tokens, and what each role may do there.
//!
//! The tenants of a home are a file, `HOME/tenants.json` (mode 0600, written whole), that
//! `ferrohsm tenant add|grant|revoke|remove` maintains and `ferrohsm serve` reads at every
//! connection. A tenant's tokens are a home of their own, `HOME/tenants/NAME`: a connection
//! admitted for tenant A opens the firmware on A's directory only, so B's slots, serials,
//! labels and handles do not exist for it — not hidden by a filter, absent. Every token has its
//! own keys (its token key wrapped under its PINs), so A's files open under none of B's keys.
//!
//! Roles ([`Role`]) are enforced by [`RoleGate`], in front of the tenant's firmware in the
//! daemon (never in the application's process), from each call's [`Access`]: the column of
//! the vocabulary's table (`call.rs`) that every function must have, so a function is placed
//! by its one line there.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use cryptoki_sys::{
    CK_ATTRIBUTE_TYPE, CKA_DERIVE_TEMPLATE, CKA_TOKEN, CKA_UNWRAP_TEMPLATE, CKU_SO, CKU_USER,
};
use serde::{Deserialize, Serialize};

use crate::call::{Access, Backend, BackendExt, Call, Reply};
use crate::error::{Error, Result};
use crate::output::{self, WriteOptions};
use crate::overlay::answer_bool;
use crate::types::*;

/// The file that lists a home's tenants.
pub const FILE: &str = "tenants.json";

/// What an identity may do inside its tenant. One identity may hold several roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Token initialization, PINs, creating and destroying keys and their attributes: logs in
    /// as the SO, and as the user to create private keys; uses no key.
    CryptoOfficer,
    /// Uses keys (sign, verify, encrypt, decrypt, wrap, unwrap, derive), creates session
    /// objects, and token objects only where the tenant allows it; logs in as the user only.
    CryptoUser,
    /// Reads the tenant's usage log (`ferrohsm audit show --tenant`); through PKCS#11 sees the
    /// slots and tokens' descriptions only, logs in as nobody and uses no key.
    Auditor,
}

impl Role {
    /// Every role, as the commands spell them.
    pub const ALL: [(Self, &'static str); 3] = [
        (Self::CryptoOfficer, "crypto-officer"),
        (Self::CryptoUser, "crypto-user"),
        (Self::Auditor, "auditor"),
    ];

    /// The role named `text` (`crypto-officer`, `crypto-user`, `auditor`).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == text).map(|(r, _)| *r)
    }

    /// The role's name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(r, _)| *r == self)
            .map_or("?", |(_, n)| n)
    }
}

/// One tenant: who may reach it, as what.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Identity (a TLS client certificate's NAME, or `uid:N` on the local socket) → roles.
    #[serde(default)]
    pub grants: BTreeMap<String, BTreeSet<Role>>,
    /// Whether crypto users may create, change and destroy token objects (keys that persist);
    /// by default only crypto officers may.
    #[serde(default)]
    pub users_create_keys: bool,
    /// Its share of the daemon.
    #[serde(default)]
    pub limits: Limits,
}

/// A tenant's share of the daemon, so that one tenant's flood cannot starve another
/// (`ferrohsm tenant set --max-sessions ... --max-concurrent ... --ops-per-sec ... --burst ...`).
/// Counted across all the tenant's connections; `None`: no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Sessions open at once; one more is refused with `CKR_SESSION_COUNT`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_sessions: Option<u32>,
    /// Calls (every call: any may be recorded in the usage log) running at once; more wait
    /// their turn, and one that waits longer than [`WAIT`] is refused with
    /// `CKR_DEVICE_MEMORY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Operations started per second, on average (a token bucket): faster callers are slowed
    /// down, and refused with `CKR_DEVICE_MEMORY` past [`WAIT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops_per_sec: Option<u32>,
    /// Operations that may start at once above the rate [default: `ops_per_sec`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Connections at once on this daemon (each of a module's pooled connections counts; a
    /// module refused one more keeps working on those it has); one more is refused at its
    /// hello. Keep the tenants' sum under the daemon's `--max-connections`, so that making
    /// room never closes another tenant's connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// The tenant's usage log may grow to this many MiB on this daemon; past it the
    /// tenant's calls that would be recorded fail (`CKR_DEVICE_ERROR`: no record, no
    /// answer) until the log is archived, and the other tenants' disk stays free.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_log_mib: Option<u32>,
}

/// The longest an operation waits for its tenant's turn before it is refused.
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The live counts of one tenant in this daemon (shared by its connections).
#[derive(Debug, Default)]
struct Meter {
    connections: Mutex<u64>,
    sessions: Mutex<u64>,
    running: Mutex<u64>,
    turn: Condvar,
    /// Tokens left and when they were counted.
    bucket: Mutex<Option<(f64, Instant)>>,
}

/// The meter of tenant `name`.
fn meter(name: &str) -> Arc<Meter> {
    static METERS: Mutex<BTreeMap<String, Arc<Meter>>> = Mutex::new(BTreeMap::new());
    let mut m = METERS.lock().unwrap_or_else(PoisonError::into_inner);
    Arc::clone(m.entry(name.to_owned()).or_default())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The tenants of a home.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenants {
    /// Name → tenant.
    #[serde(default)]
    pub tenants: BTreeMap<String, Tenant>,
    /// Counts the document's changes (each command adds one): a node that has seen version N
    /// refuses an older one (a replayed value on a cluster).
    #[serde(default)]
    pub version: u64,
    /// Whether the tenants were read from a file or document (even one that lists none): then
    /// the daemon serves tenants only, never the home to every peer.
    #[serde(skip)]
    pub present: bool,
}

/// Whether `name` may name a tenant: 1 to 64 letters, digits, `.`, `_`, `-`, starting with a
/// letter or digit (it is a directory name and appears in logs as it is).
pub fn valid_name(name: &str) -> bool {
    crate::remote::tls::valid_identity(name)
}

/// Whether `id` may be granted: a certificate identity, or `uid:N`.
pub fn valid_identity(id: &str) -> bool {
    match id.strip_prefix("uid:") {
        Some(n) => n.parse::<u32>().is_ok_and(|u| u.to_string() == n),
        None => crate::remote::tls::valid_identity(id),
    }
}

impl Tenants {
    /// The tenants of `home` (none when it has no tenants file).
    pub fn load(home: &Path) -> Result<Self> {
        let path = home.join(FILE);
        match std::fs::read(&path) {
            Ok(t) => Self::from_json(&t, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(Error::Config(format!(
                "{}: cannot read: {e}",
                path.display()
            ))),
        }
    }

    /// The tenants a document describes (`what` names it in errors), every name and identity
    /// checked.
    pub fn from_json(text: &[u8], what: &str) -> Result<Self> {
        let mut t: Self =
            serde_json::from_slice(text).map_err(|e| Error::Config(format!("{what}: {e}")))?;
        let mut seen = BTreeSet::new();
        for (name, tenant) in &t.tenants {
            if !valid_name(name) || tenant.grants.keys().any(|id| !valid_identity(id)) {
                return Err(Error::Config(format!(
                    "{what}: tenant {name:?}: a name or identity that is not valid"
                )));
            }
            for id in tenant.grants.keys() {
                if !seen.insert(id.as_str()) {
                    return Err(Error::Config(format!(
                        "{what}: identity {id} is granted in two tenants (an identity serves one)"
                    )));
                }
            }
        }
        t.present = true;
        Ok(t)
    }

    /// The document [`Tenants::from_json`] reads.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map(|t| format!("{t}\n"))
            .map_err(|e| Error::Config(format!("tenants: {e}")))
    }

    /// Writes the tenants of `home` (whole, mode 0600).
    pub fn save(&self, home: &Path) -> Result<()> {
        output::write_file(
            &home.join(FILE),
            self.to_json()?.as_bytes(),
            &WriteOptions::private(),
        )
        .map_err(|e| Error::Config(e.to_string()))
    }

    /// Whether the daemon serves tenants (else it serves the home to every allowed peer): a
    /// tenants file or document exists, even one that lists no tenant (then nobody is served).
    pub fn any(&self) -> bool {
        self.present
    }

    /// The tenant `identity` belongs to, and its roles there.
    pub fn of(&self, identity: &str) -> Option<(&str, &Tenant, BTreeSet<Role>)> {
        self.tenants.iter().find_map(|(name, t)| {
            t.grants
                .get(identity)
                .map(|roles| (name.as_str(), t, roles.clone()))
        })
    }
}

/// The home of tenant `name`'s tokens.
pub fn home_of(home: &Path, name: &str) -> PathBuf {
    home.join("tenants").join(name)
}

/// The home of tenant `name`'s tokens, created (mode 0700) if it does not exist yet.
pub fn prepare_home(home: &Path, name: &str) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    let dir = home_of(home, name);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::Config(format!("{}: cannot create: {e}", dir.display())))?;
    Ok(dir)
}

/// The usage log of tenant `name`.
pub fn audit_log_of(home: &Path, name: &str) -> PathBuf {
    home_of(home, name).join("audit.log")
}

/// The roles of one connection, in front of its tenant's firmware.
pub struct RoleGate {
    inner: Arc<dyn Backend>,
    who: String,
    tenant: String,
    meter: Arc<Meter>,
    /// The grant as last read: roles, whether users keep keys, limits.
    grant: Mutex<Grant>,
    /// Reads the grant again (`None`: revoked, or moved to another tenant); asked at most once
    /// per [`RECHECK`], so a revocation reaches open connections too.
    regrant: Option<Regrant>,
    /// This connection's open sessions (their slots), counted in the tenant's meter.
    sessions: Mutex<BTreeMap<SessionHandle, SlotId>>,
    /// Its place among the tenant's connections, given back when the connection ends.
    _admission: Admission,
}

/// One connection's place among its tenant's `max_connections`, given back when dropped.
pub struct Admission {
    tenant: String,
    meter: Arc<Meter>,
}

/// Lets one more connection of tenant `name` in, or refuses it with `CKR_DEVICE_MEMORY` (and a
/// log line) when the tenant has its `max_connections` open. Called before anything is opened
/// for the connection.
pub fn admit(name: &str, tenant: &Tenant, who: &str) -> Result<Admission> {
    let meter = meter(name);
    {
        let mut n = lock(&meter.connections);
        if let Some(max) = tenant.limits.max_connections {
            if *n >= u64::from(max) {
                log::warn!(
                    "{who}: refused: tenant {name} has its {max} connections open (max_connections)"
                );
                return Err(Error::DeviceMemory);
            }
        }
        *n += 1;
    }
    Ok(Admission {
        tenant: name.to_owned(),
        meter,
    })
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut c = lock(&self.meter.connections);
        *c = c.saturating_sub(1);
    }
}

/// Reads an identity's grant in its tenant again.
pub type Regrant = Box<dyn Fn() -> Result<Option<(BTreeSet<Role>, Tenant)>> + Send + Sync>;

/// How often an open connection's grant is read again.
pub const RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

struct Grant {
    roles: BTreeSet<Role>,
    users_create_keys: bool,
    limits: Limits,
    checked: Instant,
}

impl RoleGate {
    /// `inner` as seen by `who` holding `roles` in tenant `name`, on a connection
    /// [`admit`] let in.
    pub fn new(
        inner: Arc<dyn Backend>,
        who: &str,
        roles: BTreeSet<Role>,
        tenant: &Tenant,
        regrant: Option<Regrant>,
        admission: Admission,
    ) -> Self {
        Self {
            inner,
            who: who.to_owned(),
            tenant: admission.tenant.clone(),
            meter: Arc::clone(&admission.meter),
            grant: Mutex::new(Grant {
                roles,
                users_create_keys: tenant.users_create_keys,
                limits: tenant.limits,
                checked: Instant::now(),
            }),
            regrant,
            sessions: Mutex::new(BTreeMap::new()),
            _admission: admission,
        }
    }

    /// The grant, read again if it is older than [`RECHECK`] (a revocation empties it).
    fn grant(&self) -> MutexGuard<'_, Grant> {
        let mut g = lock(&self.grant);
        if let Some(regrant) = &self.regrant {
            if g.checked.elapsed() >= RECHECK {
                g.checked = Instant::now();
                match regrant() {
                    Ok(Some((roles, tenant))) => {
                        g.roles = roles;
                        g.users_create_keys = tenant.users_create_keys;
                        g.limits = tenant.limits;
                    }
                    Ok(None) => {
                        if !g.roles.is_empty() {
                            log::warn!(
                                "{}: its grant in tenant {} was revoked: its open connection is refused from now on",
                                self.who,
                                self.tenant
                            );
                        }
                        g.roles.clear();
                    }
                    // The grants cannot be read now: the last ones stand.
                    Err(e) => log::warn!("tenants: {e}; {} keeps its last grant", self.who),
                }
            }
        }
        g
    }

    fn limits(&self) -> Limits {
        self.grant().limits
    }

    /// Counts one more session of the tenant, or refuses it.
    fn reserve_session(&self) -> Result<()> {
        let max_sessions = self.limits().max_sessions;
        let mut n = lock(&self.meter.sessions);
        if let Some(max) = max_sessions {
            if *n >= u64::from(max) {
                log::warn!(
                    "{}: C_OpenSession refused: tenant {} has its {max} sessions open (max_sessions)",
                    self.who,
                    self.tenant
                );
                return Err(Error::SessionCount);
            }
        }
        *n += 1;
        Ok(())
    }

    fn release_sessions(&self, count: usize) {
        let mut n = lock(&self.meter.sessions);
        *n = n.saturating_sub(u64::try_from(count).unwrap_or(u64::MAX));
    }

    /// Waits for the tenant's turn to run one operation (its concurrency and rate limits);
    /// the guard gives the turn back.
    fn turn(&self, function: &str) -> Result<Turn<'_>> {
        let limits = self.limits();
        let deadline = Instant::now() + WAIT;
        let refused = |why: &str| {
            log::warn!(
                "{}: {function} refused: tenant {} {why} for {}s",
                self.who,
                self.tenant,
                WAIT.as_secs()
            );
            Error::DeviceMemory
        };
        if let Some(per_sec) = limits.ops_per_sec.filter(|r| *r > 0) {
            let rate = f64::from(per_sec);
            let burst = f64::from(limits.burst.unwrap_or(per_sec).max(1));
            let mut b = lock(&self.meter.bucket);
            let now = Instant::now();
            let (tokens, then) = b.unwrap_or((burst, now));
            let tokens = (tokens + now.duration_since(then).as_secs_f64() * rate).min(burst) - 1.0;
            // Below zero: this operation starts when the bucket has refilled to it.
            let wait = std::time::Duration::from_secs_f64((-tokens).max(0.0) / rate);
            if now + wait > deadline {
                return Err(refused("is over its ops_per_sec"));
            }
            *b = Some((tokens, now));
            drop(b);
            std::thread::sleep(wait);
        }
        let Some(max) = limits.max_concurrent else {
            return Ok(Turn(None));
        };
        let mut running = lock(&self.meter.running);
        while *running >= u64::from(max.max(1)) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(refused("had max_concurrent operations running"));
            }
            running = self
                .meter
                .turn
                .wait_timeout(running, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *running += 1;
        Ok(Turn(Some(&self.meter)))
    }

    fn has(&self, role: Role) -> bool {
        self.grant().roles.contains(&role)
    }

    /// Refuses `function` unless one of `roles` is held.
    fn need(&self, function: &str, roles: &[Role]) -> Result<()> {
        if roles.iter().any(|r| self.has(*r)) {
            return Ok(());
        }
        let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
        log::warn!(
            "{}: {function} refused: it needs the role {} (holds {})",
            self.who,
            names.join(" or "),
            self.held()
        );
        Err(Error::ActionProhibited)
    }

    fn held(&self) -> String {
        let g = self.grant();
        let v: Vec<&str> = g.roles.iter().map(|r| r.name()).collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    }

    /// Who may make or change a token object (a key that persists).
    fn keeper(&self) -> &'static [Role] {
        if self.grant().users_create_keys {
            OBJECTS
        } else {
            &[Role::CryptoOfficer]
        }
    }

    /// Refuses a new object that would be a token object unless the role may keep keys.
    fn new_object(&self, function: &str, template: &Template) -> Result<()> {
        if says_token(template) {
            self.need(function, self.keeper())
        } else {
            self.need(function, OBJECTS)
        }
    }

    /// Whether `key`'s template attribute `ty` (`CKA_UNWRAP_TEMPLATE`, `CKA_DERIVE_TEMPLATE`)
    /// makes what comes out of it a token object. Unreadable: the firmware's own answer to the
    /// call stands (and the check after the call still holds).
    fn key_template_keeps(
        &self,
        session: SessionHandle,
        key: ObjectHandle,
        ty: CK_ATTRIBUTE_TYPE,
    ) -> bool {
        match self.inner.get_attribute_value(session, key, &[ty]) {
            Ok(a) => {
                matches!(a.first(), Some(AttrAnswer::Value(AttrValue::Template(t))) if says_token(t))
            }
            Err(_) => false,
        }
    }

    /// Whether `object` is a token object (what cannot be read as a single byte counts as
    /// one); `None` if the firmware refuses to answer (no such object or session).
    fn is_token(&self, session: SessionHandle, object: ObjectHandle) -> Option<bool> {
        let a = self
            .inner
            .get_attribute_value(session, object, &[CKA_TOKEN])
            .ok()?;
        Some(answer_bool(a.first()) != Some(false))
    }

    /// After a call that made objects: a token object made by a role that may not keep keys
    /// (whatever template merge made it one) is destroyed again and the call refused.
    fn undo_kept(&self, session: Option<SessionHandle>, reply: &Result<Reply>) -> Result<()> {
        let (Some(session), Ok(reply)) = (session, reply) else {
            return Ok(());
        };
        let made: Vec<ObjectHandle> = match reply {
            Reply::Object(o) => vec![*o],
            Reply::KeyPair((a, b)) => vec![*a, *b],
            _ => return Ok(()),
        };
        let keeper = self.keeper();
        if keeper.iter().any(|r| self.has(*r)) {
            return Ok(());
        }
        let token = made
            .iter()
            .any(|o| self.is_token(session, *o).unwrap_or(true));
        if !token {
            return Ok(());
        }
        for o in made {
            if let Err(e) = self.inner.destroy_object(session, o) {
                log::error!(
                    "{}: a token object its role may not make could not be destroyed ({}): object {}",
                    self.who,
                    e.name(),
                    o.0
                );
            }
        }
        log::error!(
            "{}: a token object came out of a call its role may not make one with; destroyed",
            self.who
        );
        Err(Error::ActionProhibited)
    }

    /// The role check of one call, from its [`Access`] (its column in the vocabulary's
    /// table): first the roles that may call such a function at all ([`roles_for`]), then
    /// what the call's arguments decide (the user type of a login, whether an object is or
    /// becomes a token object).
    fn check(&self, call: &Call<'_>) -> Result<()> {
        let name = call.name();
        let access = call.access();
        self.need(name, roles_for(access))?;
        match access {
            Access::Describe
            | Access::AdministerToken
            | Access::OwnPin
            | Access::ReadObjects
            | Access::Digest
            | Access::UseKey => Ok(()),
            Access::Login => self.login(call),
            Access::MakeObject => self.new_objects(call),
            Access::ChangeObject => self.existing_object(call),
            Access::CopyObject => {
                self.existing_object(call)?;
                self.new_objects(call)
            }
            // A new key from a key is also a new object, whose template the firmware merges
            // with the key's CKA_UNWRAP_TEMPLATE or CKA_DERIVE_TEMPLATE: a CKA_TOKEN=TRUE
            // there makes a token object too.
            Access::Unwrap => self.key_from_key(call, CKA_UNWRAP_TEMPLATE),
            Access::Derive => self.key_from_key(call, CKA_DERIVE_TEMPLATE),
        }
    }

    /// A login, by the user type it names.
    fn login(&self, call: &Call<'_>) -> Result<()> {
        let (Call::Login { user, .. } | Call::LoginUser { user, .. }) = call else {
            // A login that names no user type: no role is sure to be allowed it.
            return self.need(call.name(), &[]);
        };
        match *user {
            CKU_SO => self.need("C_Login as the SO", &[Role::CryptoOfficer]),
            CKU_USER => self.need("C_Login as the user", OBJECTS),
            _ => self.need("C_Login for a key", KEYS),
        }
    }

    /// Refuses a call's new objects that would be token objects unless the role may keep
    /// keys.
    fn new_objects(&self, call: &Call<'_>) -> Result<()> {
        call.templates()
            .into_iter()
            .try_for_each(|t| self.new_object(call.name(), t))
    }

    /// Refuses a call that changes its object if that is a token object and the role may not
    /// keep keys.
    fn existing_object(&self, call: &Call<'_>) -> Result<()> {
        let (Some(session), Some(object)) = (call.session(), call.object()) else {
            return self.need(call.name(), self.keeper());
        };
        // The firmware's own answer to an invalid handle or a closed session stands.
        match self.is_token(session, object) {
            Some(true) => self.need(call.name(), self.keeper()),
            _ => Ok(()),
        }
    }

    /// A new key from the call's key, whose template attribute `ty` may make it a token
    /// object.
    fn key_from_key(&self, call: &Call<'_>, ty: CK_ATTRIBUTE_TYPE) -> Result<()> {
        self.new_objects(call)?;
        let (Some(session), Some(key)) = (call.session(), call.objects().first().copied()) else {
            return Ok(());
        };
        if self.key_template_keeps(session, key, ty) {
            self.need(
                &format!("{} into a token object", call.name()),
                self.keeper(),
            )?;
        }
        Ok(())
    }
}

/// The roles that may call a function of this kind at all (what its arguments decide comes
/// after: [`RoleGate`]'s `check`). Exhaustive on purpose: a new kind is placed here.
pub fn roles_for(access: Access) -> &'static [Role] {
    match access {
        Access::Describe => &[Role::CryptoOfficer, Role::CryptoUser, Role::Auditor],
        Access::AdministerToken => &[Role::CryptoOfficer],
        Access::OwnPin
        | Access::Login
        | Access::ReadObjects
        | Access::Digest
        | Access::MakeObject
        | Access::ChangeObject
        | Access::CopyObject => OBJECTS,
        Access::UseKey | Access::Unwrap | Access::Derive => KEYS,
    }
}

/// The roles that handle objects.
const OBJECTS: &[Role] = &[Role::CryptoOfficer, Role::CryptoUser];
/// The roles that use keys.
const KEYS: &[Role] = &[Role::CryptoUser];

/// Whether a template makes a token object (a `CKA_TOKEN` that is not a clear FALSE counts).
fn says_token(t: &Template) -> bool {
    t.get(CKA_TOKEN)
        .is_some_and(|a| a.as_bool().unwrap_or(true))
}

/// One operation's turn in its tenant's meter, given back when dropped.
struct Turn<'a>(Option<&'a Meter>);

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if let Some(m) = self.0 {
            let mut running = lock(&m.running);
            *running = running.saturating_sub(1);
            m.turn.notify_one();
        }
    }
}

impl Backend for RoleGate {
    fn call(&self, call: Call<'_>) -> Result<Reply> {
        // The tenant's turn first, for every call: any call may be recorded in the usage log
        // (a refusal, a read of a secret value), and the log's disk is shared.
        let _turn = self.turn(call.name())?;
        self.check(&call)?;
        match call {
            Call::OpenSession { slot, .. } => {
                self.reserve_session()?;
                let r = self.inner.call(call);
                match &r {
                    Ok(Reply::Session(h)) => {
                        lock(&self.sessions).insert(*h, slot);
                    }
                    _ => self.release_sessions(1),
                }
                r
            }
            Call::CloseSession { session } => {
                let r = self.inner.call(call);
                if r.is_ok() && lock(&self.sessions).remove(&session).is_some() {
                    self.release_sessions(1);
                }
                r
            }
            Call::CloseAllSessions { slot } => {
                let r = self.inner.call(call);
                if r.is_ok() {
                    let mut own = lock(&self.sessions);
                    let before = own.len();
                    own.retain(|_, s| *s != slot);
                    self.release_sessions(before - own.len());
                }
                r
            }
            call if call.access().makes_objects() => {
                let session = call.session();
                let r = self.inner.call(call);
                self.undo_kept(session, &r)?;
                r
            }
            call => self.inner.call(call),
        }
    }
}

impl Drop for RoleGate {
    fn drop(&mut self) {
        // The connection's sessions end with it.
        let n = lock(&self.sessions).len();
        self.release_sessions(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_identities_are_plain() {
        for ok in ["alice", "uid:0", "uid:1000", "a.b-c_d"] {
            assert!(valid_identity(ok), "{ok}");
        }
        for bad in [
            "", "uid:", "uid:01", "uid:-1", "uid:x", "../x", ".hidden", "a/b", "a b",
        ] {
            assert!(!valid_identity(bad), "{bad}");
        }
        assert!(!valid_name(".."));
        assert!(!valid_name("a/b"));
        for (r, n) in Role::ALL {
            assert_eq!(Role::parse(n), Some(r));
            assert_eq!(r.name(), n);
        }
        assert_eq!(Role::parse("admin"), None);
    }

    /// A backend whose calls wait while `hold` is set (one operation that takes long).
    struct Slow {
        hold: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Backend for Slow {
        fn call(&self, _: Call<'_>) -> Result<Reply> {
            while self.hold.load(std::sync::atomic::Ordering::Acquire) {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Ok(Reply::Slots(Vec::new()))
        }
    }

    /// `max_concurrent`: with the tenant's one operation running, another (on another
    /// connection) waits its turn, and is refused with `CKR_DEVICE_MEMORY` after [`WAIT`].
    #[test]
    fn an_operation_past_max_concurrent_waits_then_is_refused_after_ten_seconds() {
        let hold = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let mut tenant = Tenant::default();
        tenant.limits.max_concurrent = Some(1);
        let roles: BTreeSet<Role> = [Role::CryptoUser].into_iter().collect();
        let gate = |who: &str| {
            RoleGate::new(
                Arc::new(Slow {
                    hold: Arc::clone(&hold),
                }),
                who,
                roles.clone(),
                &tenant,
                None,
                admit("max-concurrent-test", &tenant, who).unwrap(),
            )
        };
        let first = gate("uid:1");
        let second = gate("uid:2");
        let list = || Call::SlotList {
            token_present: false,
        };
        std::thread::scope(|s| {
            let running = s.spawn(|| first.call(list()));
            std::thread::sleep(std::time::Duration::from_millis(200));
            let t = Instant::now();
            assert_eq!(second.call(list()).err(), Some(Error::DeviceMemory));
            let waited = t.elapsed();
            assert!(
                waited >= WAIT && waited < WAIT + std::time::Duration::from_secs(3),
                "refused after {waited:?}"
            );
            hold.store(false, std::sync::atomic::Ordering::Release);
            assert!(running.join().unwrap().is_ok());
        });
        // The turn is back: the next operation runs at once.
        let t = Instant::now();
        assert!(second.call(list()).is_ok());
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }

    /// What each function's class lets each role do, on the sensitive functions: token
    /// administration is the officer's, key use the user's, and the auditor gets nothing but
    /// descriptions.
    #[test]
    fn the_sensitive_functions_are_pinned_to_their_roles() {
        let access = |name: &str| {
            Call::ACCESS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, a)| *a)
                .unwrap()
        };
        assert_eq!(Call::ACCESS.len(), crate::call::Request::TAGS.len());
        assert_eq!(roles_for(access("C_InitToken")), [Role::CryptoOfficer]);
        assert_eq!(roles_for(access("C_InitPIN")), [Role::CryptoOfficer]);
        for f in [
            "C_Sign",
            "C_Decrypt",
            "C_UnwrapKey",
            "C_DeriveKey",
            "C_WrapKey",
        ] {
            assert_eq!(roles_for(access(f)), [Role::CryptoUser], "{f}");
        }
        for (name, a) in Call::ACCESS {
            assert_eq!(
                roles_for(*a).contains(&Role::Auditor),
                *a == Access::Describe,
                "{name}"
            );
        }
        for f in [
            "C_GetSlotList",
            "C_GetTokenInfo",
            "C_GetMechanismInfo",
            "C_OpenSession",
            "C_CloseSession",
            "C_GenerateRandom",
        ] {
            assert_eq!(access(f), Access::Describe, "{f}");
        }
        for f in [
            "C_Login",
            "C_LoginUser",
            "C_FindObjects",
            "C_GetAttributeValue",
        ] {
            assert_ne!(access(f), Access::Describe, "{f}");
        }

        // Through the gate: each role against C_InitToken, C_Sign and C_GetSlotList.
        struct Yes;
        impl Backend for Yes {
            fn call(&self, _: Call<'_>) -> Result<Reply> {
                Ok(Reply::Unit(()))
            }
        }
        let tenant = Tenant::default();
        let gate = |role: Role| {
            RoleGate::new(
                Arc::new(Yes),
                "uid:1",
                [role].into_iter().collect(),
                &tenant,
                None,
                admit("pinned-roles-test", &tenant, "uid:1").unwrap(),
            )
        };
        let label = [b' '; 32];
        let allowed = |role: Role, call: Call<'_>| match gate(role).call(call) {
            Ok(_) => true,
            Err(Error::ActionProhibited) => false,
            Err(e) => panic!("{e:?}"),
        };
        for (role, init, sign, describe) in [
            (Role::CryptoOfficer, true, false, true),
            (Role::CryptoUser, false, true, true),
            (Role::Auditor, false, false, true),
        ] {
            let init_token = Call::InitToken {
                slot: SlotId(0),
                so_pin: b"1234",
                label: &label,
            };
            let c_sign = Call::Sign {
                session: SessionHandle(1),
                data: b"x",
                out: None,
            };
            assert_eq!(allowed(role, init_token), init, "{role:?} C_InitToken");
            assert_eq!(allowed(role, c_sign), sign, "{role:?} C_Sign");
            let list = Call::SlotList {
                token_present: false,
            };
            assert_eq!(allowed(role, list), describe, "{role:?} C_GetSlotList");
        }
        let so_login = Call::Login {
            session: SessionHandle(1),
            user: CKU_SO,
            pin: None,
        };
        assert!(!allowed(Role::CryptoUser, so_login));
    }

    #[test]
    fn the_file_round_trips_and_refuses_what_is_not_valid() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!Tenants::load(dir.path()).unwrap().any());
        let mut t = Tenants::default();
        t.tenants.entry("A".into()).or_default().grants.insert(
            "alice".into(),
            [Role::CryptoOfficer, Role::CryptoUser]
                .into_iter()
                .collect(),
        );
        t.save(dir.path()).unwrap();
        let back = Tenants::load(dir.path()).unwrap();
        assert!(back.present && back.any());
        assert_eq!(back.tenants, t.tenants);
        let (name, _, roles) = back.of("alice").unwrap();
        assert_eq!(name, "A");
        assert_eq!(roles.len(), 2);
        assert!(back.of("bob").is_none());
        std::fs::write(
            dir.path().join(FILE),
            r#"{"tenants":{"../etc":{"grants":{}}}}"#,
        )
        .unwrap();
        assert!(Tenants::load(dir.path()).is_err());
        std::fs::write(dir.path().join(FILE), r#"{"tenants":{},"extra":1}"#).unwrap();
        assert!(Tenants::load(dir.path()).is_err());
        // One identity, one tenant, even in a hand-edited file.
        std::fs::write(
            dir.path().join(FILE),
            r#"{"tenants":{"A":{"grants":{"x":["auditor"]}},"B":{"grants":{"x":["auditor"]}}}}"#,
        )
        .unwrap();
        assert!(Tenants::load(dir.path()).is_err());
        // A file that lists nobody still means tenants: nobody is served.
        std::fs::write(dir.path().join(FILE), r#"{"tenants":{}}"#).unwrap();
        assert!(Tenants::load(dir.path()).unwrap().any());
    }
}
