//! The cluster store: tokens kept in etcd, so that every node of a cluster serves every token
//! (`docs/architecture.md` §6).
//!
//! etcd's v3 API is spoken through its JSON gateway (`POST /v3/kv/range`, `/v3/kv/txn` …, on
//! every member's client URL) with a synchronous HTTP client: the firmware stays free of an async
//! runtime, and the build needs no `protoc`. Every value is sealed (AES-256-GCM, the etcd key as
//! AAD) under a key derived from the domain master key for this cluster, so etcd, its
//! operators and its backups see key names and ciphertext only; a node that has not joined the
//! domain can unseal nothing.
//!
//! Layout under `/ferrohsm/<cluster>/`:
//!
//! ```text
//! cluster                        the cluster's marker (domain id), sealed
//! slots/<slot>                   one key per initialized token
//! tokens/<slot>/meta/<name>      the meta values, as the SQLite store's meta table
//! tokens/<slot>/lockout/<pin>    failures and tries in progress of one PIN (one key: one CAS)
//! tokens/<slot>/next_id          the next object id
//! tokens/<slot>/objects/<id>     an object record (the token layer's own sealing inside)
//! tokens/<slot>/tombstones/<id>  a destroyed object, for other nodes' caches
//! nodes/<node>                   a node's heartbeat (the revision it applied, when)
//! ```
//!
//! Every change is one etcd transaction; those that read before they write compare the
//! revision they read (no lost update between nodes: two nodes initializing one token, or a
//! set-attribute racing a destroy, end with exactly one outcome). Other nodes' changes are
//! noticed within [`POLL`] (a cheap range of the tokens' latest revision), then read as the
//! objects and tombstones changed since the revision a node's cache reflects.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bridge::{Error, Result};
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::*;
use crate::crypto::{self, Secret};

/// How often a node asks etcd whether another node changed a token (the bound on how long a
/// key made on one node takes to be usable on another, besides the request itself).
pub(crate) const POLL: Duration = Duration::from_millis(50);
/// How often a node writes its heartbeat.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long one request to etcd may take before the next endpoint is tried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);
/// How long one call may take over all endpoints: with no quorum, writes and logins fail with
/// `CKR_DEVICE_ERROR` and a log line after at most this.
const DEADLINE: Duration = Duration::from_secs(10);
/// The life of the lease that the write transactions' markers are attached to (see
/// [`Cluster::txn`]); a new lease is taken when the current one is a third through.
const MARKER_TTL_SECS: u64 = 60;
/// How long connecting to one endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest response read (a token's whole state).
const MAX_RESPONSE: u64 = 256 * 1024 * 1024;

fn unavailable(what: &str) -> Error {
    log::error!("etcd: {what}");
    Error::DeviceError
}

fn b64(b: &[u8]) -> String {
    B64.encode(b)
}

/// The end of the key range of `prefix` (etcd's `range_end` for "every key starting with").
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `v` with the field `k` set to `x` (`v` is an object).
fn with(mut v: Value, k: &str, x: Value) -> Value {
    if let Value::Object(m) = &mut v {
        m.insert(k.to_owned(), x);
    }
    v
}

fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// One key-value of a range or an event.
#[derive(Clone)]
struct Kv {
    key: String,
    value: Vec<u8>,
    mod_revision: i64,
}

fn kvs(range: &Value) -> Vec<Kv> {
    range
        .get("kvs")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|kv| {
                    let key = B64.decode(kv.get("key")?.as_str()?).ok()?;
                    let value = match kv.get("value").and_then(Value::as_str) {
                        Some(v) => B64.decode(v).ok()?,
                        None => Vec::new(),
                    };
                    Some(Kv {
                        key: String::from_utf8(key).ok()?,
                        value,
                        mod_revision: int(kv.get("mod_revision").unwrap_or(&Value::Null)),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn header_revision(v: &Value) -> i64 {
    int(v
        .get("header")
        .and_then(|h| h.get("revision"))
        .unwrap_or(&Value::Null))
}

/// What a guarded write transaction's answer means (see [`Cluster::txn`]): whether its
/// writes were made — by this copy, or by an earlier copy whose answer was lost, which the
/// failure branch's read of the marker shows — and at which revision.
fn txn_outcome(v: &Value) -> (bool, i64) {
    if v.get("succeeded").and_then(Value::as_bool).unwrap_or(false) {
        return (true, header_revision(v));
    }
    let earlier = v
        .get("responses")
        .and_then(Value::as_array)
        .and_then(|r| r.first())
        .and_then(|r| r.get("response_range"))
        .map(kvs)
        .and_then(|k| k.into_iter().next());
    match earlier {
        Some(marker) => {
            log::info!("etcd: a write whose answer was lost had been applied; not applied again");
            (true, marker.mod_revision)
        }
        None => (false, header_revision(v)),
    }
}

/// The etcd members' client URLs, tried in turn.
struct Client {
    agent: ureq::Agent,
    endpoints: Vec<String>,
    current: AtomicUsize,
    /// The lease the write transactions' markers are attached to, and when it was granted.
    lease: Mutex<Option<(i64, Instant)>>,
}

impl Client {
    fn new(endpoints: &[String]) -> Result<Self> {
        if endpoints.is_empty() {
            return Err(Error::Config("no etcd endpoint given".into()));
        }
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(REQUEST_TIMEOUT))
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .http_status_as_error(false)
            .build();
        Ok(Self {
            agent: ureq::Agent::new_with_config(config),
            endpoints: endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_owned())
                .collect(),
            current: AtomicUsize::new(0),
            lease: Mutex::new(None),
        })
    }

    /// One gateway call, on the endpoint that answered last, then on the others, within
    /// [`DEADLINE`] in all. A request that got no answer may still have been applied: only
    /// reads and the guarded transactions of [`Cluster::txn`] come here, which may be sent
    /// again safely.
    fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.post_all(path, body).map_err(|errors| {
            unavailable(&format!(
                "no member answered {path} within {}s ({}); with no quorum, writes and logins \
                 are refused",
                DEADLINE.as_secs(),
                errors.join("; ")
            ))
        })
    }

    /// [`Client::post`], with each member's error on failure.
    fn post_all(&self, path: &str, body: &Value) -> std::result::Result<Value, Vec<String>> {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed);
        let deadline = Instant::now() + DEADLINE;
        let body = body.to_string();
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let Some(base) = self.endpoints.get(idx) else {
                continue;
            };
            // A pooled connection the member closed fails before the request is read: once
            // more on a new connection before the next member.
            for attempt in 0..2 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    errors.push(format!("{base}: not tried, the deadline passed"));
                    break;
                }
                match self.post_to(base, path, &body, left.min(REQUEST_TIMEOUT)) {
                    Ok(v) => {
                        self.current.store(idx, Ordering::Relaxed);
                        return Ok(v);
                    }
                    Err(Failure::Transport(e)) if attempt == 0 && e.contains("disconnected") => {
                        continue;
                    }
                    Err(Failure::Transport(e) | Failure::Answer(e)) => {
                        errors.push(format!("{base}: {e}"));
                        break;
                    }
                }
            }
        }
        Err(errors)
    }

    /// The lease for the write markers: the current one, or a new one.
    fn lease(&self) -> Result<i64> {
        let mut lease = self.lease.lock();
        if let Some((id, at)) = *lease {
            if at.elapsed() < Duration::from_secs(MARKER_TTL_SECS / 3) {
                return Ok(id);
            }
        }
        let v = self.post(
            "/v3/lease/grant",
            &json!({ "TTL": MARKER_TTL_SECS.to_string() }),
        )?;
        let id = int(v.get("ID").unwrap_or(&Value::Null));
        if id == 0 {
            return Err(unavailable("etcd granted no lease"));
        }
        *lease = Some((id, Instant::now()));
        Ok(id)
    }

    /// Forgets the lease (etcd no longer knows it).
    fn drop_lease(&self) {
        *self.lease.lock() = None;
    }

    fn post_to(
        &self,
        base: &str,
        path: &str,
        body: &str,
        timeout: Duration,
    ) -> std::result::Result<Value, Failure> {
        let transport = |e: ureq::Error| Failure::Transport(e.to_string());
        let mut resp = self
            .agent
            .post(&format!("{base}{path}"))
            .config()
            .timeout_global(Some(timeout))
            .build()
            .header("content-type", "application/json")
            .send(body)
            .map_err(transport)?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_string()
            .map_err(transport)?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Failure::Answer(e.to_string()))?;
        if !status.is_success() {
            let msg = v
                .get("message")
                .or_else(|| v.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("error");
            return Err(Failure::Answer(format!("HTTP {}: {msg}", status.as_u16())));
        }
        Ok(v)
    }
}

/// Why a request to one member failed.
enum Failure {
    /// No answer (connection refused or lost, timeout).
    Transport(String),
    /// An answer that is an error.
    Answer(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Transport(e) | Self::Answer(e) => f.write_str(e),
        }
    }
}

/// A cluster as one node sees it: the etcd endpoints, the cluster's sealing key (derived from
/// the domain master key), and the latest revision of its tokens this node knows.
pub struct Cluster {
    name: String,
    client: Arc<Client>,
    key: Secret,
    /// Empty for the cluster's own tokens; `tenants/NAME/` for a tenant's (see
    /// [`Cluster::tenant`]).
    scope: String,
    /// The root of the tenants' sealing keys (from the domain master key, the cluster's name
    /// bound in); each tenant's key binds its name in again.
    tenant_root: Secret,
    /// The tenants' views, made once each.
    tenants: Mutex<std::collections::BTreeMap<String, Arc<Cluster>>>,
    /// The latest revision of a change under `tokens/` this node has seen.
    seen: AtomicI64,
    /// Whether the poller runs.
    polling: AtomicBool,
    /// This node's name, host name and listeners, for its heartbeat.
    node: Mutex<Option<Announced>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cluster({})", self.name)
    }
}

/// A cluster name: letters, digits, `-`, `_`, `.` (it is part of every etcd key).
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "cluster name {name:?}: use 1 to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// What a node says of itself in its heartbeat.
#[derive(Clone, Debug)]
struct Announced {
    node: String,
    host: String,
    listen: Vec<String>,
}

/// What `cluster init` found: whether the cluster existed, and how many tokens it imported.
#[derive(Debug)]
pub struct Created {
    /// Tokens imported from the home.
    pub imported: Vec<u64>,
}

/// One node's heartbeat, as `cluster status` shows it.
#[derive(Debug)]
pub struct NodeState {
    /// The node's name.
    pub name: String,
    /// The revision of the tokens the node had applied.
    pub applied: i64,
    /// When (Unix seconds) it said so.
    pub at: i64,
    /// What it listens on: its socket's path, its TLS listeners' `ADDR:PORT` (as given when
    /// a host name, else the address bound, which may be unspecified: `0.0.0.0:7400`).
    pub listen: Vec<String>,
    /// The host name it runs on (absent from a heartbeat of an older node): where its
    /// unspecified listeners are reached.
    pub host: Option<String>,
}

/// One etcd member, as `cluster status` shows it.
#[derive(Debug)]
pub struct MemberState {
    /// Its client URL.
    pub endpoint: String,
    /// etcd's version, or why it did not answer.
    pub status: std::result::Result<String, String>,
    /// Its raft index.
    pub raft_index: i64,
    /// Whether it is the leader.
    pub leader: bool,
}

impl Cluster {
    fn prefix(&self) -> String {
        format!("/ferrohsm/{}/{}", self.name, self.scope)
    }

    /// A cluster value as it is to be, from the cluster's fields (the keys derived from the
    /// domain).
    fn build(endpoints: &[String], name: &str, domain: &crate::domain::DomainKey) -> Result<Self> {
        check_name(name)?;
        Ok(Self {
            name: name.to_owned(),
            client: Arc::new(Client::new(endpoints)?),
            key: Self::derive_key(domain, name)?,
            scope: String::new(),
            tenant_root: domain
                .derive(b"ferrohsm cluster tenants v1", name.as_bytes())
                .map_err(|e| Error::Store(e.to_string()))?,
            tenants: Mutex::new(std::collections::BTreeMap::new()),
            seen: AtomicI64::new(0),
            polling: AtomicBool::new(false),
            node: Mutex::new(None),
        })
    }

    /// Tenant `tenant`'s part of the cluster: its own tokens under `tenants/NAME/`, sealed
    /// under its own key (HKDF from the tenants' root with the tenant's name bound in), so a
    /// value of one tenant opens under no other's key. Made once per tenant; its poller runs
    /// from its first store on.
    pub fn tenant(self: &Arc<Self>, tenant: &str) -> Result<Arc<Self>> {
        check_name(tenant)?;
        if !self.scope.is_empty() {
            return Err(Error::Internal("a tenant has no tenants"));
        }
        let mut views = self.tenants.lock();
        if let Some(v) = views.get(tenant) {
            return Ok(Arc::clone(v));
        }
        let view = Arc::new(Self {
            name: self.name.clone(),
            client: Arc::clone(&self.client),
            key: tenant_key(&self.tenant_root, tenant)?,
            scope: format!("tenants/{tenant}/"),
            tenant_root: Secret::copy_from(&[]),
            tenants: Mutex::new(std::collections::BTreeMap::new()),
            seen: AtomicI64::new(0),
            polling: AtomicBool::new(false),
            node: Mutex::new(None),
        });
        views.insert(tenant.to_owned(), Arc::clone(&view));
        Ok(view)
    }

    /// A document of the cluster's configuration (e.g. `tenants.json`), sealed under the
    /// cluster's key, and the revision to compare when it is written again (0: none yet).
    pub fn document(&self, doc: &str) -> Result<(Option<Vec<u8>>, i64)> {
        let key = format!("{}config/{doc}", self.prefix());
        // Serializable: answered by the member without a round of the quorum, so a node whose
        // etcd has lost its quorum still reads it at once (a node cut off keeps what its
        // member last applied; logins there need the quorum anyway, for the lockout).
        let r = with(self.range(&key, false), "serializable", json!(true));
        let v = self.client.post("/v3/kv/range", &r)?;
        match kvs(&v).into_iter().next() {
            Some(kv) => Ok((Some(self.open(&kv)?.expose().to_vec()), kv.mod_revision)),
            None => Ok((None, 0)),
        }
    }

    /// Writes a configuration document if it is still at revision `base` (what
    /// [`Cluster::document`] returned): `false` if someone changed it meanwhile.
    pub fn put_document(&self, doc: &str, body: &[u8], base: i64) -> Result<bool> {
        let key = format!("{}config/{doc}", self.prefix());
        let cmp = if base == 0 {
            json!({ "key": b64(key.as_bytes()), "target": "CREATE", "create_revision": "0" })
        } else {
            json!({ "key": b64(key.as_bytes()), "target": "MOD",
                    "mod_revision": base.to_string() })
        };
        let (ok, _) = self.txn(vec![cmp], vec![self.put(&key, body)?])?;
        Ok(ok)
    }

    fn token_prefix(&self, slot: u64) -> String {
        format!("{}tokens/{slot:08}/", self.prefix())
    }

    /// The cluster's sealing key: from the domain master key, with the cluster's name bound in.
    fn derive_key(domain: &crate::domain::DomainKey, name: &str) -> Result<Secret> {
        domain
            .derive(b"ferrohsm cluster v1", name.as_bytes())
            .map_err(|e| Error::Store(e.to_string()))
    }

    fn seal(&self, key: &str, plain: &[u8]) -> Result<String> {
        Ok(b64(&crypto::seal(&self.key, key.as_bytes(), plain)?))
    }

    fn open(&self, kv: &Kv) -> Result<Secret> {
        crypto::open(&self.key, kv.key.as_bytes(), &kv.value).ok_or_else(|| {
            Error::Store(format!(
                "etcd key {}: does not open under this node's domain (a node of another domain, \
                 or a tampered value)",
                kv.key
            ))
        })
    }

    fn range(&self, key: &str, prefix: bool) -> Value {
        let mut r = json!({ "key": b64(key.as_bytes()) });
        if prefix {
            r = with(r, "range_end", json!(b64(&prefix_end(key))));
        }
        r
    }

    fn get(&self, key: &str) -> Result<(Option<Kv>, i64)> {
        let v = self.client.post("/v3/kv/range", &self.range(key, false))?;
        Ok((kvs(&v).into_iter().next(), header_revision(&v)))
    }

    /// One write transaction: whether its compares held (its writes were made), and the
    /// revision it was applied at (or read at, if they did not hold).
    ///
    /// A request that got no answer may have been applied all the same (a member that
    /// committed it and then died or timed out), so it is sent again to the next member; to
    /// make that safe, every transaction also creates a marker key of its own
    /// (`txns/<random>`, on a lease of [`MARKER_TTL_SECS`]) and compares that the marker does
    /// not exist yet. Of the copies of one transaction at most one is applied, and a copy that
    /// finds the marker learns that an earlier one was: its outcome is that one's (see
    /// [`txn_outcome`]). An insert therefore never writes its record twice, a delete that was
    /// applied is not answered "no such object", and a PIN try is never begun twice.
    fn txn(&self, mut compare: Vec<Value>, success: Vec<Value>) -> Result<(bool, i64)> {
        let marker = format!(
            "/ferrohsm/{}/txns/{}",
            self.name,
            crate::object::hex(&crypto::random_vec(16)?)
        );
        let marker = b64(marker.as_bytes());
        compare.push(json!({ "key": marker, "target": "CREATE", "create_revision": "0" }));
        let failure = vec![json!({ "request_range": { "key": marker } })];
        for again in [false, true] {
            let lease = self.client.lease()?;
            let mut ops = success.clone();
            ops.push(json!({ "request_put": {
                "key": marker, "value": "", "lease": lease.to_string() } }));
            let body = json!({ "compare": compare, "success": ops, "failure": failure });
            match self.client.post_all("/v3/kv/txn", &body) {
                Ok(v) => return Ok(txn_outcome(&v)),
                // etcd lost the lease (it expired while etcd was down): a new one, once.
                Err(e) if !again && e.iter().any(|e| e.contains("lease not found")) => {
                    self.client.drop_lease();
                }
                Err(e) => {
                    return Err(unavailable(&format!(
                        "no member answered a write within {}s ({}); with no quorum, writes \
                         and logins are refused",
                        DEADLINE.as_secs(),
                        e.join("; ")
                    )));
                }
            }
        }
        Err(unavailable("etcd keeps losing the write markers' lease"))
    }

    /// A read-only transaction (no marker: reads may be sent again as they are).
    fn read_txn(&self, success: Vec<Value>) -> Result<Value> {
        self.client
            .post("/v3/kv/txn", &json!({ "compare": [], "success": success }))
    }

    /// Several range reads at one revision (one read-only transaction): each one's key-values,
    /// and the revision.
    fn ranges(&self, reads: Vec<Value>) -> Result<(Vec<Vec<Kv>>, i64)> {
        let ops = reads
            .into_iter()
            .map(|r| json!({ "request_range": r }))
            .collect();
        let v = self.read_txn(ops)?;
        let parts = v
            .get("responses")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|r| r.get("response_range").map(kvs).unwrap_or_default())
                    .collect()
            })
            .unwrap_or_default();
        Ok((parts, header_revision(&v)))
    }

    fn put(&self, key: &str, plain: &[u8]) -> Result<Value> {
        Ok(
            json!({ "request_put": { "key": b64(key.as_bytes()), "value": self.seal(key, plain)? } }),
        )
    }

    /// The compare "the key is as this read saw it" (absent: never created).
    fn unchanged(key: &str, seen: Option<&Kv>) -> Value {
        match seen {
            Some(kv) => json!({ "key": b64(key.as_bytes()), "target": "MOD",
                                "mod_revision": kv.mod_revision.to_string() }),
            None => json!({ "key": b64(key.as_bytes()), "target": "CREATE",
                            "create_revision": "0" }),
        }
    }

    /// Joins a cluster (as a node, or as a tool): checks that the cluster exists and that this
    /// domain master key is the cluster's.
    pub fn connect(
        endpoints: &[String],
        name: &str,
        domain: &crate::domain::DomainKey,
    ) -> Result<Arc<Self>> {
        let cluster = Self::build(endpoints, name, domain)?;
        let marker = format!("{}cluster", cluster.prefix());
        let Some(kv) = cluster.get(&marker)?.0 else {
            return Err(Error::Config(format!(
                "no cluster {name:?} in etcd (create it with `ferrohsm cluster init`)"
            )));
        };
        let (id, check) = marker_parts(&kv.value);
        let opened = check
            .and_then(|c| crypto::open(&cluster.key, marker.as_bytes(), &c))
            .is_some_and(|plain| plain.expose() == domain.id_hex().as_bytes());
        if !opened {
            return Err(Error::Config(format!(
                "cluster {name:?} belongs to security domain {}, not to this home's domain {} \
                 (or its marker was altered): bring the cluster's domain to this home with \
                 `ferrohsm domain join`",
                id.as_deref().unwrap_or("?"),
                domain.id_hex()
            )));
        }
        Ok(Arc::new(cluster))
    }

    /// Creates the cluster (`ferrohsm cluster init`): its marker, then every token of `home`
    /// (their databases as they are: meta values, object records with their ids). Refused if
    /// the cluster exists.
    pub fn create(
        endpoints: &[String],
        name: &str,
        domain: &crate::domain::DomainKey,
        home: &Path,
    ) -> Result<Created> {
        let cluster = Self::build(endpoints, name, domain)?;
        // Every token of the home, read first (nothing is written if one cannot be read).
        let mut dumps = Vec::new();
        if let Ok(entries) = std::fs::read_dir(home.join("tokens")) {
            for e in entries.flatten() {
                let Some(slot) = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()) else {
                    continue;
                };
                if let Some(store) = SqliteStore::open(&e.path())? {
                    let dump = store.dump()?;
                    if dump.is_initialized() {
                        dumps.push((slot, dump));
                    }
                }
            }
        }
        dumps.sort_by_key(|(slot, _)| *slot);
        let marker = format!("{}cluster", cluster.prefix());
        let check = crypto::seal(&cluster.key, marker.as_bytes(), domain.id_hex().as_bytes())?;
        let value = json!({ "domain": domain.id_hex(), "check": b64(&check) }).to_string();
        let (ok, _) = cluster.txn(
            vec![Self::unchanged(&marker, None)],
            vec![json!({ "request_put": {
                "key": b64(marker.as_bytes()), "value": b64(value.as_bytes()) } })],
        )?;
        if !ok {
            return Err(Error::Config(format!(
                "cluster {name:?} exists already in etcd; nothing was changed"
            )));
        }
        let mut imported = Vec::new();
        for (slot, dump) in &dumps {
            cluster.import(*slot, dump)?;
            imported.push(*slot);
        }
        Ok(Created { imported })
    }

    /// Writes one token from an SQLite dump: its meta values, lockout state and records.
    fn import(&self, slot: u64, dump: &Dump) -> Result<()> {
        let p = self.token_prefix(slot);
        let mut ops = Vec::new();
        let mut user_failures = 0i64;
        let mut so_failures = 0i64;
        for (k, v) in &dump.meta {
            match (k.as_str(), v) {
                ("counter", _) => {}
                ("user_failures", MetaValue::Int(i)) => user_failures = *i,
                ("so_failures", MetaValue::Int(i)) => so_failures = *i,
                (k, v) => ops.push(self.put(&format!("{p}meta/{k}"), &meta_bytes(v))?),
            }
        }
        for (c, f) in [(Counter::So, so_failures), (Counter::User, user_failures)] {
            let l = Lockout {
                failures: f,
                tries: Vec::new(),
                next: 1,
            };
            ops.push(self.put(&lockout_key(&p, c), l.encode().as_bytes())?);
        }
        let mut next = dump.id_seq;
        for (id, _, record) in &dump.objects {
            next = next.max(*id);
            ops.push(self.put(&format!("{p}objects/{id:016}"), record)?);
        }
        ops.push(self.put(&format!("{p}next_id"), (next + 1).to_string().as_bytes())?);
        ops.push(self.put(&format!("{}slots/{slot:08}", self.prefix()), b"")?);
        // One transaction per token (etcd limits operations per transaction: 128 by default),
        // objects in batches after the meta values.
        for chunk in ops.chunks(100) {
            let (ok, _) = self.txn(Vec::new(), chunk.to_vec())?;
            if !ok {
                return Err(unavailable("a write was refused"));
            }
        }
        Ok(())
    }

    /// The slots of the cluster's initialized tokens.
    pub(crate) fn slots(&self) -> Result<Vec<u64>> {
        slots(&self.client, &self.prefix())
    }

    /// Asks etcd for the latest revision of any change to the cluster's tokens (one range of
    /// one key, newest first), and records it.
    fn poll(&self) -> Result<i64> {
        let mut r = self.range(&format!("{}tokens/", self.prefix()), true);
        r = with(r, "sort_order", json!("DESCEND"));
        r = with(r, "sort_target", json!("MOD"));
        r = with(r, "limit", json!("1"));
        r = with(r, "keys_only", json!(true));
        let v = self.client.post("/v3/kv/range", &r)?;
        let latest = kvs(&v).first().map_or(0, |kv| kv.mod_revision);
        self.seen.fetch_max(latest, Ordering::Relaxed);
        Ok(self.seen.load(Ordering::Relaxed))
    }

    /// The latest revision of the cluster's tokens the poller has seen: what a token compares
    /// with the revision its cache reflects (no request on the path of a call).
    fn tokens_revision(&self) -> i64 {
        self.seen.load(Ordering::Relaxed)
    }

    /// Starts (once) the thread that polls etcd every [`POLL`] and writes this node's
    /// heartbeat; it ends when the cluster is dropped. While etcd does not answer, the last
    /// revision stays: tokens go on serving what they have loaded.
    fn start_poller(self: &Arc<Self>) {
        if self.polling.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("ferrohsm-etcd-poll".into())
            .spawn(move || {
                let mut beat: Option<Instant> = None;
                let mut failing = false;
                loop {
                    std::thread::sleep(POLL);
                    let Some(cluster) = weak.upgrade() else {
                        return;
                    };
                    match cluster.poll() {
                        Ok(_) if failing => {
                            log::warn!("etcd: answering again; cluster {} in sync", cluster.name);
                            failing = false;
                        }
                        Ok(_) => {}
                        Err(_) => failing = true,
                    }
                    if beat.is_none_or(|t| t.elapsed() >= HEARTBEAT) {
                        beat = Some(Instant::now());
                        if let Some(me) = cluster.node.lock().clone() {
                            let _ = cluster.heartbeat(&me);
                        }
                    }
                }
            });
        if spawned.is_err() {
            self.polling.store(false, Ordering::Release);
            log::error!(
                "etcd: cannot start the poller; changes made on other nodes are seen on demand only"
            );
        }
    }

    /// Names this node, on `host`, listening on `listen`: the poller writes its heartbeat
    /// (what `cluster status` shows, and where `audit show --cluster` reaches the node) every
    /// [`HEARTBEAT`].
    pub fn announce(self: &Arc<Self>, node: &str, host: &str, listen: &[String]) {
        *self.node.lock() = Some(Announced {
            node: node.to_owned(),
            host: host.to_owned(),
            listen: listen.to_vec(),
        });
        self.start_poller();
    }

    /// Writes this node's heartbeat.
    fn heartbeat(&self, me: &Announced) -> Result<()> {
        let applied = self.tokens_revision();
        let body = json!({ "applied": applied, "at": unix_now(), "listen": me.listen,
                           "host": me.host })
        .to_string();
        // In clear: a node's name, listeners and progress are no secret, and `cluster status`
        // reads them without the domain.
        let key = format!("{}nodes/{}", self.prefix(), me.node);
        let (ok, _) = self.txn(
            Vec::new(),
            vec![json!({ "request_put": {
                "key": b64(key.as_bytes()), "value": b64(body.as_bytes()) } })],
        )?;
        if ok {
            Ok(())
        } else {
            Err(unavailable("the heartbeat was refused"))
        }
    }

    /// The store of the token in `slot`.
    pub(crate) fn store(self: &Arc<Self>, slot: u64) -> EtcdStore {
        self.start_poller();
        EtcdStore {
            cluster: Arc::clone(self),
            slot,
            prefix: self.token_prefix(slot),
            uuid_seen: Mutex::new(None),
        }
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A meta value from its stored form (`meta_bytes`).
fn meta_value(raw: &[u8]) -> Option<MetaValue> {
    let (tag, body) = raw.split_at_checked(2)?;
    match tag {
        b"i:" => std::str::from_utf8(body)
            .ok()?
            .parse()
            .ok()
            .map(MetaValue::Int),
        b"b:" => Some(MetaValue::Blob(body.to_vec())),
        b"t:" => Some(MetaValue::Text(String::from_utf8(body.to_vec()).ok()?)),
        _ => None,
    }
}

/// The cluster marker's domain id (clear) and check (the id sealed under the cluster's key).
fn marker_parts(value: &[u8]) -> (Option<String>, Option<Vec<u8>>) {
    let v: Value = serde_json::from_slice(value).unwrap_or(Value::Null);
    let id = v.get("domain").and_then(Value::as_str).map(str::to_owned);
    let check = v
        .get("check")
        .and_then(Value::as_str)
        .and_then(|c| B64.decode(c).ok());
    (id, check)
}

fn slots(client: &Client, prefix: &str) -> Result<Vec<u64>> {
    let prefix = format!("{prefix}slots/");
    let mut r = json!({ "key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(&prefix)) });
    r = with(r, "keys_only", json!(true));
    let v = client.post("/v3/kv/range", &r)?;
    let mut out: Vec<u64> = kvs(&v)
        .iter()
        .filter_map(|kv| kv.key.strip_prefix(&prefix)?.parse().ok())
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// One token, as `cluster status` shows it.
#[derive(Debug)]
pub struct TokenState {
    /// Its slot id (the same on every node).
    pub slot: u64,
    /// How many objects it holds.
    pub objects: u64,
    /// The revision of its latest change.
    pub revision: i64,
}

/// A cluster as `cluster status` shows it: read without the domain (what it shows is no
/// secret: the members, the nodes' heartbeats, the tokens' slots and sizes).
#[derive(Debug)]
pub struct Status {
    /// The cluster's security domain (its id), if the cluster exists.
    pub domain: Option<String>,
    /// etcd's current revision.
    pub revision: i64,
    /// Every member, asked in turn.
    pub members: Vec<MemberState>,
    /// Every node that wrote a heartbeat.
    pub nodes: Vec<NodeState>,
    /// Every initialized token.
    pub tokens: Vec<TokenState>,
}

/// `ferrohsm cluster status`: the members are asked one by one (a member down is shown, not
/// an error); the rest needs a quorum.
pub fn status(endpoints: &[String], name: &str) -> Result<Status> {
    check_name(name)?;
    let client = Client::new(endpoints)?;
    let members = members(&client);
    let prefix = format!("/ferrohsm/{name}/");
    let marker = format!("{prefix}cluster");
    let v = client.post("/v3/kv/range", &json!({ "key": b64(marker.as_bytes()) }))?;
    let revision = header_revision(&v);
    let domain = kvs(&v)
        .first()
        .map(|kv| marker_parts(&kv.value).0.unwrap_or_default());
    let nodes = read_nodes(&client, &prefix)?;
    let mut tokens = Vec::new();
    for slot in slots(&client, &prefix)? {
        let objects = format!("{prefix}tokens/{slot:08}/objects/");
        let v = client.post(
            "/v3/kv/range",
            &json!({ "key": b64(objects.as_bytes()),
                     "range_end": b64(&prefix_end(&objects)), "count_only": true }),
        )?;
        let count = u64::try_from(int(v.get("count").unwrap_or(&Value::Null))).unwrap_or(0);
        let token = format!("{prefix}tokens/{slot:08}/");
        let v = client.post(
            "/v3/kv/range",
            &json!({ "key": b64(token.as_bytes()), "range_end": b64(&prefix_end(&token)),
                     "sort_order": "DESCEND", "sort_target": "MOD", "limit": "1",
                     "keys_only": true }),
        )?;
        tokens.push(TokenState {
            slot,
            objects: count,
            revision: kvs(&v).first().map_or(0, |kv| kv.mod_revision),
        });
    }
    Ok(Status {
        domain,
        revision,
        members,
        nodes,
        tokens,
    })
}

/// The heartbeats of cluster `name`'s nodes, read without the domain (they are in clear): what
/// `audit show --cluster` reaches. A cluster that does not exist has none.
pub fn nodes(endpoints: &[String], name: &str) -> Result<Vec<NodeState>> {
    check_name(name)?;
    read_nodes(&Client::new(endpoints)?, &format!("/ferrohsm/{name}/"))
}

/// The heartbeats under the cluster's `prefix`.
fn read_nodes(client: &Client, prefix: &str) -> Result<Vec<NodeState>> {
    let nodes_prefix = format!("{prefix}nodes/");
    let v = client.post(
        "/v3/kv/range",
        &json!({ "key": b64(nodes_prefix.as_bytes()),
                 "range_end": b64(&prefix_end(&nodes_prefix)) }),
    )?;
    Ok(kvs(&v)
        .into_iter()
        .map(|kv| {
            let j: Value = serde_json::from_slice(&kv.value).unwrap_or(Value::Null);
            NodeState {
                name: kv.key.strip_prefix(&nodes_prefix).unwrap_or("?").to_owned(),
                applied: int(j.get("applied").unwrap_or(&Value::Null)),
                at: int(j.get("at").unwrap_or(&Value::Null)),
                listen: j
                    .get("listen")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(|s| s.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default(),
                host: j.get("host").and_then(Value::as_str).map(str::to_owned),
            }
        })
        .collect())
}

/// Every member's state, asked of each endpoint in turn.
fn members(client: &Client) -> Vec<MemberState> {
    client
        .endpoints
        .iter()
        .map(
            |e| match client.post_to(e, "/v3/maintenance/status", "{}", REQUEST_TIMEOUT) {
                Ok(v) => {
                    let id = v.get("header").and_then(|h| h.get("member_id")).cloned();
                    MemberState {
                        endpoint: e.clone(),
                        status: Ok(v
                            .get("version")
                            .and_then(Value::as_str)
                            .unwrap_or("?")
                            .to_owned()),
                        raft_index: int(v.get("raftIndex").unwrap_or(&Value::Null)),
                        leader: id.is_some() && v.get("leader") == id.as_ref(),
                    }
                }
                Err(err) => MemberState {
                    endpoint: e.clone(),
                    status: Err(err.to_string()),
                    raft_index: 0,
                    leader: false,
                },
            },
        )
        .collect()
}

fn meta_bytes(v: &MetaValue) -> Vec<u8> {
    match v {
        MetaValue::Int(i) => format!("i:{i}").into_bytes(),
        MetaValue::Blob(b) => {
            let mut out = b"b:".to_vec();
            out.extend_from_slice(b);
            out
        }
        MetaValue::Text(t) => format!("t:{t}").into_bytes(),
    }
}

/// Whether a stored wrap value (`meta_bytes` of a blob) is `wrap`.
fn wrap_is(stored: Option<&[u8]>, wrap: &[u8]) -> bool {
    matches!(stored.and_then(meta_value), Some(MetaValue::Blob(b)) if b == wrap)
}

fn lockout_key(token_prefix: &str, c: Counter) -> String {
    let pin = match c {
        Counter::So => "so",
        Counter::User => "user",
    };
    format!("{token_prefix}lockout/{pin}")
}

/// One PIN's failures and tries in progress: one key, so one compare-and-swap decides a try.
struct Lockout {
    failures: i64,
    /// (id, started at, Unix seconds)
    tries: Vec<(i64, i64)>,
    next: i64,
}

impl Lockout {
    fn decode(b: &[u8]) -> Self {
        let v: Value = serde_json::from_slice(b).unwrap_or(Value::Null);
        Self {
            failures: int(v.get("failures").unwrap_or(&Value::Null)).max(0),
            tries: v
                .get("tries")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .map(|t| {
                            (
                                int(t.get("id").unwrap_or(&Value::Null)),
                                int(t.get("started").unwrap_or(&Value::Null)),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
            next: int(v.get("next").unwrap_or(&Value::Null)).max(1),
        }
    }

    fn encode(&self) -> String {
        let tries: Vec<Value> = self
            .tries
            .iter()
            .map(|(id, started)| json!({ "id": id, "started": started }))
            .collect();
        json!({ "failures": self.failures, "tries": tries, "next": self.next }).to_string()
    }
}

/// One token's store in a cluster.
pub(crate) struct EtcdStore {
    cluster: Arc<Cluster>,
    slot: u64,
    prefix: String,
    /// The revision of `meta/uuid` the last `load_meta` saw (`Some(0)`: absent), which
    /// `initialize` compares: of two nodes initializing one token, one succeeds.
    uuid_seen: Mutex<Option<i64>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EtcdStore({}/{})", self.cluster.name, self.slot)
    }
}

impl EtcdStore {
    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    fn object_key(&self, id: i64) -> String {
        self.key(&format!("objects/{id:016}"))
    }

    fn id_of(&self, key: &str, dir: &str) -> Option<i64> {
        key.strip_prefix(&self.key(dir))?.parse().ok()
    }

    /// A read-modify-write of one key, retried while another node changed it in between.
    fn cas<T>(
        &self,
        key: &str,
        mut change: impl FnMut(Option<&Kv>, Option<Secret>) -> Result<(Option<Vec<u8>>, T)>,
    ) -> Result<(T, i64)> {
        for _ in 0..64 {
            let (seen, _) = self.cluster.get(key)?;
            let plain = seen.as_ref().map(|kv| self.cluster.open(kv)).transpose()?;
            let (new, out) = change(seen.as_ref(), plain)?;
            let Some(new) = new else {
                return Ok((out, 0));
            };
            let (ok, v) = self.cluster.txn(
                vec![Cluster::unchanged(key, seen.as_ref())],
                vec![self.cluster.put(key, &new)?],
            )?;
            if ok {
                return Ok((out, v));
            }
        }
        Err(unavailable(&format!("{key}: too many concurrent changes")))
    }
}

impl Store for EtcdStore {
    fn describe(&self) -> String {
        format!("etcd cluster {}, token {}", self.cluster.name, self.slot)
    }

    fn data_version(&self) -> Result<i64> {
        Ok(self.cluster.tokens_revision())
    }

    fn tolerate_stale(&self) -> bool {
        true
    }

    fn sync(&self) -> Result<()> {
        self.cluster.poll().map(drop)
    }

    fn load_meta(&self) -> Result<Option<(Meta, u64)>> {
        let c = &self.cluster;
        let meta_prefix = self.key("meta/");
        let (parts, rev) = c.ranges(vec![
            c.range(&meta_prefix, true),
            c.range(&self.key("lockout/"), true),
        ])?;
        let part = |i: usize| parts.get(i).cloned().unwrap_or_default();
        let mut meta = Meta::default();
        let mut seen_format = false;
        let mut uuid_rev = 0;
        let corrupt =
            |name: &str| Error::Store(format!("{}: corrupt meta value {name}", self.describe()));
        for kv in part(0) {
            let plain = c.open(&kv)?;
            let name = kv.key.strip_prefix(&meta_prefix).unwrap_or("");
            let value = meta_value(plain.expose()).ok_or_else(|| corrupt(name))?;
            let blob = || match &value {
                MetaValue::Blob(b) => Ok(b.clone()),
                MetaValue::Text(t) => Ok(t.as_bytes().to_vec()),
                MetaValue::Int(_) => Err(corrupt(name)),
            };
            let num = || match &value {
                MetaValue::Int(i) => Ok(*i),
                _ => Err(corrupt(name)),
            };
            match name {
                "format" => seen_format = true,
                "uuid" => {
                    meta.uuid = blob()?;
                    uuid_rev = kv.mod_revision;
                }
                "label" => meta.label = blob()?,
                "serial" => meta.serial = String::from_utf8_lossy(&blob()?).into_owned(),
                "kdf_iterations" => meta.kdf_iterations = to_u32(num()?),
                "so_wrap" => meta.so_wrap = blob()?,
                "user_wrap" => meta.user_wrap = Some(blob()?),
                "device_key" => meta.device_key = blob()?,
                "user_pin_to_be_changed" => meta.user_pin_to_be_changed = num()? != 0,
                _ => {}
            }
        }
        for kv in part(1) {
            let l = Lockout::decode(c.open(&kv)?.expose());
            if kv.key.ends_with("/so") {
                meta.so_failures = to_u32(l.failures);
            } else {
                meta.user_failures = to_u32(l.failures);
            }
        }
        *self.uuid_seen.lock() = Some(uuid_rev);
        if !seen_format {
            return Ok(None);
        }
        if meta.uuid.len() != 16 || meta.device_key.len() != 32 || meta.so_wrap.is_empty() {
            return Err(Error::Store(format!(
                "{}: corrupt token metadata",
                self.describe()
            )));
        }
        Ok(Some((meta, u64::try_from(rev).unwrap_or(0))))
    }

    fn initialize(&self, meta: &Meta) -> Result<u64> {
        let c = &self.cluster;
        let uuid_key = self.key("meta/uuid");
        let seen = *self.uuid_seen.lock();
        let compare = match seen {
            Some(0) | None => Cluster::unchanged(&uuid_key, None),
            Some(rev) => json!({ "key": b64(uuid_key.as_bytes()), "target": "MOD",
                                 "mod_revision": rev.to_string() }),
        };
        // Every object and tombstone goes; the meta values and lockouts are replaced (etcd
        // refuses a put inside a range the same transaction deletes, hence the ranges). Object
        // ids go on from `next_id`: a handle never names two objects.
        let mut ops = Vec::new();
        for dir in ["objects/", "tombstones/"] {
            let k = self.key(dir);
            ops.push(json!({ "request_delete_range": {
                "key": b64(k.as_bytes()),
                "range_end": b64(&prefix_end(&k)),
            }}));
        }
        if meta.user_wrap.is_none() {
            ops.push(json!({ "request_delete_range": {
                "key": b64(self.key("meta/user_wrap").as_bytes()) }}));
        }
        let mut put = |k: &str, v: MetaValue| -> Result<()> {
            ops.push(c.put(&self.key(&format!("meta/{k}")), &meta_bytes(&v))?);
            Ok(())
        };
        put("format", MetaValue::Text("ferrohsm-token-1".into()))?;
        put("uuid", MetaValue::Blob(meta.uuid.clone()))?;
        put("label", MetaValue::Blob(meta.label.clone()))?;
        put("serial", MetaValue::Blob(meta.serial.as_bytes().to_vec()))?;
        put(
            "kdf_iterations",
            MetaValue::Int(i64::from(meta.kdf_iterations)),
        )?;
        put("device_key", MetaValue::Blob(meta.device_key.clone()))?;
        put("so_wrap", MetaValue::Blob(meta.so_wrap.clone()))?;
        if let Some(w) = &meta.user_wrap {
            put("user_wrap", MetaValue::Blob(w.clone()))?;
        }
        put(
            "user_pin_to_be_changed",
            MetaValue::Int(i64::from(meta.user_pin_to_be_changed)),
        )?;
        let empty = Lockout {
            failures: 0,
            tries: Vec::new(),
            next: 1,
        }
        .encode();
        ops.push(c.put(&lockout_key(&self.prefix, Counter::So), empty.as_bytes())?);
        ops.push(c.put(&lockout_key(&self.prefix, Counter::User), empty.as_bytes())?);
        ops.push(c.put(&format!("{}slots/{:08}", c.prefix(), self.slot), b"")?);
        let (ok, v) = c.txn(vec![compare], ops)?;
        if !ok {
            log::warn!(
                "{}: another node initialized this token meanwhile; this initialization is refused",
                self.describe()
            );
            return Err(Error::FunctionFailed);
        }
        Ok(u64::try_from(v).unwrap_or(0))
    }

    fn update_wrap(
        &self,
        pin: Counter,
        based_on: Option<&[u8]>,
        wrap: &[u8],
        to_be_changed: Option<bool>,
        reset: bool,
    ) -> Result<u64> {
        let c = &self.cluster;
        let name = match pin {
            Counter::So => "so_wrap",
            Counter::User => "user_wrap",
        };
        let wrap_key = self.key(&format!("meta/{name}"));
        let mut ops = vec![c.put(&wrap_key, &meta_bytes(&MetaValue::Blob(wrap.to_vec())))?];
        if let Some(v) = to_be_changed {
            ops.push(c.put(
                &self.key("meta/user_pin_to_be_changed"),
                &meta_bytes(&MetaValue::Int(i64::from(v))),
            )?);
        }
        if reset {
            let empty = Lockout {
                failures: 0,
                tries: Vec::new(),
                next: 1,
            }
            .encode();
            ops.push(c.put(&lockout_key(&self.prefix, pin), empty.as_bytes())?);
        }
        for _ in 0..64 {
            // The wrap as it is now: with `based_on`, it must be the one the PIN check opened,
            // and the write compares its revision (a PIN another node changed between the
            // check and this write is not replaced); without (the SO's C_InitPIN), the write
            // replaces whatever is there, still as one compare-and-swap.
            let (seen, _) = c.get(&wrap_key)?;
            if let Some(based_on) = based_on {
                let now = seen.as_ref().map(|kv| c.open(kv)).transpose()?;
                if !wrap_is(now.as_ref().map(|p| p.expose()), based_on) {
                    log::warn!(
                        "{}: the PIN was changed on another node meanwhile; this change is refused",
                        self.describe()
                    );
                    return Err(Error::DeviceError);
                }
            }
            let (ok, rev) = c.txn(
                vec![Cluster::unchanged(&wrap_key, seen.as_ref())],
                ops.clone(),
            )?;
            if ok {
                return Ok(u64::try_from(rev).unwrap_or(0));
            }
        }
        Err(unavailable(&format!(
            "{wrap_key}: too many concurrent changes"
        )))
    }

    fn begin_try(&self, counter: Counter, limit: u32) -> Result<TryStart> {
        let key = lockout_key(&self.prefix, counter);
        let limit = i64::from(limit);
        let (start, _) = self.cas(&key, |_, plain| {
            // Every initialized token has both lockout keys (init, import and PIN changes write
            // them): one that is gone was deleted behind FerroHSM's back, and an absent count
            // read as zero would hand out fresh tries. The SO's C_InitPIN writes it anew.
            let Some(plain) = plain else {
                return Err(unavailable(&format!(
                    "{key} is missing (deleted in etcd?): the PIN stays locked until the SO sets it again"
                )));
            };
            let mut l = Lockout::decode(plain.expose());
            let now = unix_now();
            let before = l.tries.len();
            l.tries
                .retain(|(_, started)| *started >= now - STALE_TRY_SECS);
            let stale = i64::try_from(before - l.tries.len()).unwrap_or(0);
            l.failures = l.failures.saturating_add(stale);
            let changed = stale > 0;
            if l.failures >= limit {
                return Ok((changed.then(|| l.encode().into_bytes()), TryStart::Locked));
            }
            if l.failures + i64::try_from(l.tries.len()).unwrap_or(i64::MAX) >= limit {
                return Ok((changed.then(|| l.encode().into_bytes()), TryStart::Busy));
            }
            let id = l.next;
            l.next += 1;
            l.tries.push((id, now));
            let seen = l.failures;
            Ok((
                Some(l.encode().into_bytes()),
                TryStart::Go(Try { id, counter, seen }),
            ))
        })?;
        Ok(start)
    }

    fn end_try(&self, t: Try, success: bool) -> Result<u32> {
        let key = lockout_key(&self.prefix, t.counter);
        let (failures, _) = self.cas(&key, |_, plain| {
            let Some(plain) = plain else {
                return Err(unavailable(&format!("{key} vanished during a PIN try")));
            };
            let mut l = Lockout::decode(plain.expose());
            let before = l.tries.len();
            l.tries.retain(|(id, _)| *id != t.id);
            let removed = before != l.tries.len();
            if success {
                let own = i64::from(!removed);
                l.failures = l.failures.saturating_sub(t.seen.saturating_add(own)).max(0);
            } else if removed {
                l.failures = l.failures.saturating_add(1);
            }
            let f = u32::try_from(l.failures).unwrap_or(u32::MAX);
            Ok((Some(l.encode().into_bytes()), f))
        })?;
        Ok(failures)
    }

    fn insert(&self, encode: &mut dyn FnMut(i64) -> Result<Vec<u8>>) -> Result<(i64, u64)> {
        let c = &self.cluster;
        let next_key = self.key("next_id");
        for _ in 0..64 {
            let (seen, _) = c.get(&next_key)?;
            let id = match &seen {
                Some(kv) => String::from_utf8_lossy(c.open(kv)?.expose())
                    .parse::<i64>()
                    .map_err(|_| Error::Store(format!("{next_key}: corrupt")))?,
                None => 1,
            };
            let record = encode(id)?;
            let (ok, v) = c.txn(
                vec![Cluster::unchanged(&next_key, seen.as_ref())],
                vec![
                    c.put(&next_key, (id + 1).to_string().as_bytes())?,
                    c.put(&self.object_key(id), &record)?,
                ],
            )?;
            if ok {
                return Ok((id, u64::try_from(v).unwrap_or(0)));
            }
        }
        Err(unavailable("too many concurrent object creations"))
    }

    fn update(&self, id: i64, based_on: u64, record: &[u8]) -> Result<Option<u64>> {
        let c = &self.cluster;
        let key = self.object_key(id);
        // The record as the change saw it (its mod revision is the object's rev): a node whose
        // cache is a poll behind must not replace a newer record with one made from an older.
        let (ok, v) = c.txn(
            vec![json!({ "key": b64(key.as_bytes()), "target": "MOD",
                         "mod_revision": based_on.to_string() })],
            vec![c.put(&key, record)?],
        )?;
        if ok {
            return Ok(Some(u64::try_from(v).unwrap_or(0)));
        }
        match c.get(&key)?.0 {
            Some(_) => Ok(None),
            None => Err(Error::ObjectHandleInvalid),
        }
    }

    fn delete(&self, id: i64) -> Result<u64> {
        let c = &self.cluster;
        let key = self.object_key(id);
        let (ok, v) = c.txn(
            vec![json!({ "key": b64(key.as_bytes()), "target": "VERSION",
                         "result": "GREATER", "version": "0" })],
            vec![
                json!({ "request_delete_range": { "key": b64(key.as_bytes()) } }),
                c.put(&self.key(&format!("tombstones/{id:016}")), b"")?,
            ],
        )?;
        if !ok {
            return Err(Error::ObjectHandleInvalid);
        }
        Ok(u64::try_from(v).unwrap_or(0))
    }

    fn changes_since(&self, since: u64) -> Result<Delta> {
        let c = &self.cluster;
        let min = (i64::try_from(since).unwrap_or(i64::MAX) + 1).to_string();
        let mut objects = c.range(&self.key("objects/"), true);
        let mut tombstones = c.range(&self.key("tombstones/"), true);
        if since > 0 {
            objects = with(objects, "min_mod_revision", json!(min));
            tombstones = with(tombstones, "min_mod_revision", json!(min));
            tombstones = with(tombstones, "keys_only", json!(true));
        }
        let mut reads = vec![objects];
        if since > 0 {
            reads.push(tombstones);
        }
        let (parts, revision) = c.ranges(reads)?;
        let part = |i: usize| parts.get(i).cloned().unwrap_or_default();
        let mut rows = Vec::new();
        for kv in part(0) {
            let Some(id) = self.id_of(&kv.key, "objects/") else {
                continue;
            };
            // A value that does not open (tampered, or not ours) is passed on empty: the
            // token leaves that one object out and goes on following the cluster.
            let record = c.open(&kv).map_or_else(
                |e| {
                    log::error!("{e}");
                    Vec::new()
                },
                |r| r.expose().to_vec(),
            );
            rows.push(Changed {
                id,
                rev: u64::try_from(kv.mod_revision).unwrap_or(0),
                record,
            });
        }
        let deleted = part(1)
            .iter()
            .filter_map(|kv| self.id_of(&kv.key, "tombstones/"))
            .collect();
        Ok(Delta {
            counter: u64::try_from(revision).unwrap_or(0),
            rows,
            deleted,
        })
    }
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_are_the_next_key() {
        assert_eq!(prefix_end("/a/"), b"/a0");
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }

    #[test]
    fn lockout_round_trips() {
        let l = Lockout {
            failures: 3,
            tries: vec![(7, 100), (8, 101)],
            next: 9,
        };
        let back = Lockout::decode(l.encode().as_bytes());
        assert_eq!(
            (back.failures, back.tries, back.next),
            (3, vec![(7, 100), (8, 101)], 9)
        );
    }

    /// A transaction sent again after its answer was lost: the copy that finds its marker
    /// reports the earlier copy's success (and revision), so the caller does not write again.
    #[test]
    fn a_resent_write_that_finds_its_marker_succeeded_before() {
        let applied = json!({ "header": { "revision": "41" }, "succeeded": true });
        assert_eq!(txn_outcome(&applied), (true, 41));
        let marker = b64(b"/ferrohsm/c/txns/00");
        let earlier = json!({
            "header": { "revision": "57" },
            "responses": [{ "response_range": {
                "kvs": [{ "key": marker, "mod_revision": "41", "value": "" }], "count": "1" } }],
        });
        assert_eq!(txn_outcome(&earlier), (true, 41));
        // A compare that failed and no marker: a real conflict (the caller reads again).
        let conflict = json!({
            "header": { "revision": "57" },
            "responses": [{ "response_range": { "count": "0" } }],
        });
        assert_eq!(txn_outcome(&conflict), (false, 57));
        assert_eq!(
            txn_outcome(&json!({ "header": { "revision": "9" } })),
            (false, 9)
        );
    }

    #[test]
    fn a_pin_change_compares_the_wrap_the_check_opened() {
        let stored = meta_bytes(&MetaValue::Blob(b"wrap-1".to_vec()));
        assert!(wrap_is(Some(&stored), b"wrap-1"));
        assert!(!wrap_is(Some(&stored), b"wrap-2"));
        assert!(!wrap_is(None, b"wrap-1"));
        assert!(!wrap_is(Some(b"i:1"), b"wrap-1"));
    }

    #[test]
    fn cluster_names_are_checked() {
        assert!(check_name("prod-1").is_ok());
        assert!(check_name("a/b").is_err());
        assert!(check_name("").is_err());
    }
}
