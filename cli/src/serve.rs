//! `ferrohsm serve`: the firmware daemon.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bridge::Backend;
use bridge::audit::{AuditLog, Durability};
use bridge::config::{Config, DaemonConfig, ENV_CONF};
use bridge::overlay::{Overlay, Policy};
use bridge::remote::{AUDIT_PAGE, DaemonReply, DaemonRequest};
use bridge::remote::{Limits, Listener, Server, descriptor_limit, open_descriptors};
use bridge::tenant::{self, Role, RoleGate, Tenants};
use firmware_sim::Device;

/// The bounds on the daemon's peers (each overrides the `[daemon]` setting of the same name;
/// the defaults are [`Limits::default`]).
#[derive(clap::Args, Debug, Default)]
pub(crate) struct LimitArgs {
    /// Connections at once, all peers together [default: 256]. At the limit (or when the
    /// file descriptors left under RLIMIT_NOFILE would not serve one more), the connection
    /// idle longest is closed to serve the new one; only when none is idle is it refused.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: Option<u64>,
    /// Connections at once from one peer [default: 128]: a uid on the socket, a certificate
    /// identity over TLS, a network address while its TLS handshake runs; at the limit, that
    /// peer's connection idle longest makes room.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_connections_per_uid: Option<u64>,
    /// Seconds a new connection has to complete its TLS handshake and say hello [default: 5].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    handshake_timeout: Option<u64>,
    /// Seconds a request has from its first byte to its last, and its answer to be taken
    /// [default: 30].
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    frame_timeout: Option<u64>,
    /// Seconds a connection may stay idle between requests [default: 0, for ever: an idle
    /// connection is closed only to make room at a limit, since closing it costs its
    /// application its sessions and login].
    #[arg(long, value_name = "SECS")]
    idle_timeout: Option<u64>,
}

impl LimitArgs {
    /// The flags over the `[daemon]` settings over the defaults.
    fn limits(&self, file: &DaemonConfig) -> Limits {
        let d = Limits::default();
        let count = |flag: Option<u64>, file: Option<usize>, default: usize| {
            flag.map_or(file, |n| Some(usize::try_from(n).unwrap_or(usize::MAX)))
                .unwrap_or(default)
        };
        let secs = |flag: Option<u64>, file: Option<u64>| flag.or(file).map(Duration::from_secs);
        Limits {
            max_connections: count(
                self.max_connections,
                file.max_connections,
                d.max_connections,
            ),
            max_connections_per_uid: count(
                self.max_connections_per_uid,
                file.max_connections_per_uid,
                d.max_connections_per_uid,
            ),
            handshake_timeout: secs(self.handshake_timeout, file.handshake_timeout_secs)
                .unwrap_or(d.handshake_timeout),
            frame_timeout: secs(self.frame_timeout, file.frame_timeout_secs)
                .unwrap_or(d.frame_timeout),
            idle_timeout: match secs(self.idle_timeout, file.idle_timeout_secs) {
                Some(t) if t.is_zero() => None,
                Some(t) => Some(t),
                None => d.idle_timeout,
            },
        }
    }
}

/// A node of a cluster: its tokens in etcd (`ferrohsm cluster init` made the cluster; the
/// home holds the domain key, `ferrohsm domain join` brought it).
#[derive(clap::Args, Debug, Default)]
pub(crate) struct ClusterArgs {
    /// Serve the tokens of this cluster (in etcd) instead of the home's [default: `cluster`
    /// in the `[daemon]` section].
    #[arg(long, value_name = "NAME")]
    cluster: Option<String>,
    /// The etcd members' client URLs, comma-separated [default: `etcd` in the `[daemon]`
    /// section].
    #[arg(long, value_delimiter = ',', value_name = "URL,URL,...")]
    etcd: Vec<String>,
    /// This node's name in `cluster status` [default: `node` in the `[daemon]` section, else
    /// the host name and the pid].
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
}

/// A node of a cluster, as the flags and the `[daemon]` section name it.
#[derive(Debug, PartialEq, Eq)]
struct ClusterNode {
    /// The cluster's name.
    name: String,
    /// The etcd members' client URLs.
    etcd: Vec<String>,
    /// This node's name, if given.
    node: Option<String>,
}

impl ClusterArgs {
    /// The flags over the `[daemon]` section: the cluster's name, its etcd members and this
    /// node's name, or none (the home's tokens).
    fn resolve(&self, file: &DaemonConfig) -> Result<Option<ClusterNode>, String> {
        let cluster = self.cluster.clone().or_else(|| file.cluster.clone());
        let etcd = if self.etcd.is_empty() {
            file.etcd.clone().unwrap_or_default()
        } else {
            self.etcd.clone()
        };
        let node = self.node.clone().or_else(|| file.node.clone());
        match cluster {
            Some(name) if etcd.is_empty() => Err(format!(
                "cluster {name}: give the etcd members with --etcd URL,... (or etcd in the \
                 [daemon] section)"
            )),
            Some(name) => Ok(Some(ClusterNode { name, etcd, node })),
            None if !etcd.is_empty() || node.is_some() => Err(
                "--etcd and --node (or etcd and node in the [daemon] section) need a cluster: \
                 --cluster NAME (or cluster in the [daemon] section)"
                    .into(),
            ),
            None => Ok(None),
        }
    }
}

/// Where the daemon's tokens are: the home's directories, or a cluster's keys in etcd.
#[derive(Clone)]
enum Tokens {
    Home(std::path::PathBuf),
    Cluster(Arc<firmware_sim::cluster::Cluster>),
}

impl Tokens {
    /// The tenants served: the home's file, or the cluster's document in etcd.
    fn tenants(&self, home: &Path) -> bridge::Result<Tenants> {
        match self {
            Self::Home(_) => Tenants::load(home),
            Self::Cluster(c) => crate::tenant::cluster_tenants_of(c),
        }
    }

    fn open(&self, firmware: &bridge::config::FirmwareConfig) -> bridge::Result<Device> {
        match self {
            Self::Home(dir) => Device::open_home(dir, firmware),
            Self::Cluster(c) => Device::open_cluster(c, firmware),
        }
    }
}

fn node_name(flag: Option<&str>) -> String {
    flag.map_or_else(
        || format!("{}-{}", host_name(), std::process::id()),
        str::to_owned,
    )
}

/// This machine's host name (the kernel's), announced in the node's heartbeat: where its
/// listeners on an unspecified address (`0.0.0.0`, `[::]`) are reached.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}

/// The network listeners: TLS 1.3 with mutual authentication (each overrides the `[daemon]`
/// setting of the same name).
#[derive(clap::Args, Debug, Default)]
pub(crate) struct TlsArgs {
    /// Also serve on this TCP address (HOST:PORT; repeatable), over TLS 1.3: the daemon shows
    /// --tls-cert, every client must show a certificate issued by --client-ca.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<String>,
    /// The daemon's certificate (PEM; `ferrohsm tls issue --server ...` makes one).
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<std::path::PathBuf>,
    /// The daemon's private key (PEM).
    #[arg(long, value_name = "PEM")]
    tls_key: Option<std::path::PathBuf>,
    /// The CA every client certificate must chain to (PEM; `ferrohsm tls init-ca` makes one).
    #[arg(long, value_name = "PEM")]
    client_ca: Option<std::path::PathBuf>,
    /// A client identity allowed (the NAME of `ferrohsm tls issue --name`; repeatable;
    /// default: every certificate --client-ca issued).
    #[arg(long = "allow-identity", value_name = "NAME")]
    allow_identity: Vec<String>,
}

impl TlsArgs {
    /// The TLS listeners the flags and the `[daemon]` section describe (bound), or none.
    fn listeners(&self, file: &DaemonConfig) -> Result<Vec<(String, Listener)>, String> {
        let addrs = if self.listen.is_empty() {
            file.listen.clone().unwrap_or_default()
        } else {
            self.listen.clone()
        };
        if addrs.is_empty() {
            return Ok(Vec::new());
        }
        let need = |flag: &Option<std::path::PathBuf>,
                    file: &Option<std::path::PathBuf>,
                    name: &str| {
            flag.clone().or_else(|| file.clone()).ok_or_else(|| {
                format!(
                    "--listen needs --{name} (or {} in the [daemon] section); `ferrohsm tls` makes the files",
                    name.replace('-', "_")
                )
            })
        };
        let cert = need(&self.tls_cert, &file.tls_cert, "tls-cert")?;
        let key = need(&self.tls_key, &file.tls_key, "tls-key")?;
        let ca = need(&self.client_ca, &file.client_ca, "client-ca")?;
        let allow = if self.allow_identity.is_empty() {
            file.allow_identities.clone()
        } else {
            Some(self.allow_identity.clone())
        };
        let config = bridge::remote::tls::server_config(&cert, &key, &ca, allow)
            .map_err(|e| e.to_string())?;
        addrs
            .into_iter()
            .map(|a| {
                let l = bridge::remote::bind_tcp(&a).map_err(|e| e.to_string())?;
                let shown = shown_address(&a, l.local_addr().ok());
                Ok((shown, Listener::Tls(l, config.clone())))
            })
            .collect()
    }
}

/// How a TLS listener given as `given` and bound at `bound` is shown and announced: the bound
/// address (its port, when 0 was asked), except that a host name stays a name (a certificate
/// names the host, not the address it resolved to).
fn shown_address(given: &str, bound: Option<std::net::SocketAddr>) -> String {
    let Some(bound) = bound else {
        return given.to_owned();
    };
    match given.rsplit_once(':') {
        Some((host, _)) if given.parse::<std::net::SocketAddr>().is_err() => {
            format!("{host}:{}", bound.port())
        }
        _ => bound.to_string(),
    }
}

/// `ferrohsm serve`'s flags.
#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// The socket to create (mode 0600; a stale one is replaced).
    #[arg(long, value_name = "PATH", required_unless_present = "listen")]
    socket: Option<std::path::PathBuf>,
    #[command(flatten)]
    tls: TlsArgs,
    /// The device's home (its token stores).
    #[arg(long, value_name = "DIR")]
    home: std::path::PathBuf,
    /// A uid allowed to connect (repeatable; default: the daemon's own uid).
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uid: Vec<u32>,
    /// The socket file's mode, in octal (e.g. 660 to let a group reach it; peers are
    /// still checked against --allow-uid).
    #[arg(long, value_name = "OCTAL", default_value = "600")]
    socket_mode: String,
    /// Accept a socket directory that others can write, if it is sticky (as /tmp). By default
    /// the directory must belong to the daemon's user (or root) and be writable by no one else.
    #[arg(long)]
    allow_shared_dir: bool,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// The firmware of `identity`'s tenant under its roles, and the tenant's usage log (the
/// caller puts the overlay that writes it, and the daemon's policy, in front: the log records
/// what the roles refuse, too); refused (`CKR_ACTION_PROHIBITED`, and a log line) for an
/// identity no tenant grants anything.
fn tenant_backend(
    source: &Arc<TenantSource>,
    tenants: &Tenants,
    identity: &bridge::remote::Identity,
    firmware: &bridge::config::FirmwareConfig,
    durability: Durability,
) -> bridge::Result<Arc<dyn Backend>> {
    let who = identity.grant_name();
    let Some((name, tenant, roles)) = tenants.of(&who) else {
        log::warn!(
            "{identity}: refused: no tenant grants it a role (ferrohsm tenant grant --identity {who})"
        );
        return Err(bridge::Error::ActionProhibited);
    };
    // Its place among the tenant's connections first: nothing is opened for one too many.
    let admission = tenant::admit(name, tenant, &who)?;
    log::info!("opening tenant {name}'s firmware for {identity}");
    // Its tokens: its directory of the home, or its part of the cluster; its usage log: in
    // its directory of this daemon's home (on a cluster, each node logs what it served).
    let home = &source.home;
    let dir = tenant::prepare_home(home, name)?;
    let device = match &source.tokens {
        Tokens::Home(_) => {
            // Sealed under the tenant's key when the home has a security domain; without one,
            // a tenant's tokens are isolated by their directory and their own keys only
            // (`ferrohsm tenant add` says so).
            let seal = source
                .domain
                .as_ref()
                .map(|d| firmware_sim::TenantSeal::for_home(d, name))
                .transpose()?;
            Device::open_tenant_home(&dir, firmware, seal)?
        }
        Tokens::Cluster(c) => Device::open_cluster(&c.tenant(name)?, firmware)?,
    };
    let log = AuditLog::open(&tenant::audit_log_of(home, name))?
        .with_quota(tenant.limits.max_log_mib.map(|m| u64::from(m) << 20))
        .with_durability(durability);
    let regrant: tenant::Regrant = {
        let source = Arc::clone(source);
        let (who, name) = (who.clone(), name.to_owned());
        Box::new(move || {
            let t = source.read()?;
            Ok(t.of(&who)
                .filter(|(n, _, _)| *n == name)
                .map(|(_, tenant, roles)| (roles, tenant.clone())))
        })
    };
    let gate = RoleGate::new(
        Arc::new(device),
        &who,
        roles,
        tenant,
        Some(regrant),
        admission,
    );
    // The usage log outside the roles: it records what they refuse, too; no record, no
    // answer.
    Ok(Arc::new(
        Overlay::new(Arc::new(gate), None, Some(log))
            .recording_who(&who)
            .failing_closed(),
    ))
}

/// A daemon request (protocol version 3) of `identity`: a page of its tenant's usage log, for
/// an identity holding the `auditor` role in that very tenant. Every other case — another
/// role, another tenant's identity, a tenant that does not exist, a daemon without tenants,
/// tenants that cannot be read — is the same `CKR_ACTION_PROHIBITED`, decided from the grants
/// in memory before any file is looked at, so neither the code nor the time tells one from
/// another; the daemon's log says which it was. A log that does not verify is sent as
/// `AuditBroken` (the line and why), never in part, and logged as an error.
fn daemon_request(
    source: &TenantSource,
    seal: &CursorSeal,
    identity: &bridge::remote::Identity,
    request: DaemonRequest,
) -> bridge::Result<DaemonReply> {
    let DaemonRequest::AuditRead {
        tenant: wanted,
        cursor,
    } = request;
    let who = identity.grant_name();
    let tenants = source.read();
    let grant = tenants
        .as_ref()
        .ok()
        .filter(|t| t.any())
        .and_then(|t| t.of(&who).map(|(name, _, roles)| (name.to_owned(), roles)));
    let refuse = |why: &str| {
        log::warn!("{identity}: refused to read the usage log of tenant {wanted:?}: {why}");
        Err(bridge::Error::ActionProhibited)
    };
    let name = match grant {
        Some((name, roles)) if name == wanted && roles.contains(&Role::Auditor) => name,
        Some((name, _)) if name == wanted => {
            return refuse("it does not hold the auditor role there");
        }
        Some(_) | None => {
            return refuse("it holds no role in that tenant (or there is no such tenant)");
        }
    };
    match &cursor {
        None => log::info!("{identity}: reads the usage log of tenant {name}"),
        // A page starts only where the daemon said the last one ended.
        Some(c) if !seal.opens(&name, c) => {
            return refuse("its cursor is not one this daemon made");
        }
        Some(_) => {}
    }
    let path = tenant::audit_log_of(&source.home, &name);
    match bridge::audit::read_page(&path, cursor.as_ref(), AUDIT_PAGE) {
        Ok(page) => Ok(DaemonReply::AuditPage {
            lines: page.lines,
            next: page.next.map(|c| seal.sealed(&name, c)),
        }),
        Err((line, why)) => {
            log::error!(
                "the usage log of tenant {name} ({}) does not verify at line {line}: {why}; \
                 refused to send it to {identity}",
                path.display()
            );
            Ok(DaemonReply::AuditBroken { line, why })
        }
    }
}

/// The key of this daemon's usage-log cursors (HMAC-SHA-256, made at start, never stored): a
/// cursor names a place in a tenant's log and the chain up to it, and the daemon takes back
/// only the cursors it handed out, for the tenant it handed them out for, so a reader cannot
/// start a page past a line that does not verify.
struct CursorSeal(aws_lc_rs::hmac::Key);

impl CursorSeal {
    fn new() -> Result<Self, String> {
        aws_lc_rs::hmac::Key::generate(
            aws_lc_rs::hmac::HMAC_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .map(Self)
        .map_err(|_| "cannot make the usage-log cursor key (no randomness)".to_owned())
    }

    fn message(tenant: &str, c: &bridge::audit::Cursor) -> Vec<u8> {
        let mut m = Vec::new();
        for part in [tenant.as_bytes(), c.chain.prev().as_bytes()] {
            m.extend_from_slice(&(part.len() as u64).to_be_bytes());
            m.extend_from_slice(part);
        }
        for n in [c.offset, c.file.0, c.file.1, c.chain.seq()] {
            m.extend_from_slice(&n.to_be_bytes());
        }
        m
    }

    fn sealed(&self, tenant: &str, mut c: bridge::audit::Cursor) -> bridge::audit::Cursor {
        let tag = aws_lc_rs::hmac::sign(&self.0, &Self::message(tenant, &c));
        c.seal.copy_from_slice(tag.as_ref());
        c
    }

    fn opens(&self, tenant: &str, c: &bridge::audit::Cursor) -> bool {
        aws_lc_rs::hmac::verify(&self.0, &Self::message(tenant, c), &c.seal).is_ok()
    }
}

/// Where the daemon reads its tenants, and what it has seen of them.
struct TenantSource {
    tokens: Tokens,
    home: std::path::PathBuf,
    /// The home's security domain, if it has one: each tenant's tokens in the home are sealed
    /// under a key derived from it (not on a cluster, which seals every value itself).
    domain: Option<Arc<firmware_sim::domain::DomainKey>>,
    /// The tenants last read, and the highest version seen.
    seen: std::sync::Mutex<(Option<Tenants>, u64)>,
}

impl TenantSource {
    /// The tenants now. A document older than one this daemon has seen (replayed into etcd)
    /// is refused; so is a cluster's document that vanished after it was seen. When etcd does
    /// not answer (no quorum), the tenants last read stand.
    fn read(&self) -> bridge::Result<Tenants> {
        let fresh = self.tokens.tenants(&self.home);
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let cluster = matches!(self.tokens, Tokens::Cluster(_));
        match fresh {
            Ok(t) => {
                if t.present && t.version < seen.1 {
                    log::error!(
                        "tenants: version {} is older than version {} seen before (replayed?): nobody is served until it is fixed",
                        t.version,
                        seen.1
                    );
                    return Err(bridge::Error::ActionProhibited);
                }
                if cluster && !t.present && seen.0.as_ref().is_some_and(|l| l.present) {
                    log::error!(
                        "tenants: the cluster's tenants document vanished: nobody is served until it is back"
                    );
                    return Err(bridge::Error::ActionProhibited);
                }
                seen.1 = seen.1.max(t.version);
                seen.0 = Some(t.clone());
                Ok(t)
            }
            Err(bridge::Error::DeviceError) if cluster && seen.0.is_some() => {
                log::warn!("tenants: etcd does not answer; serving the grants last read");
                Ok(seen.0.clone().unwrap_or_default())
            }
            Err(e) => Err(e),
        }
    }
}

/// The configuration of `--conf`, else of `$FERROHSM_CONF`, else the defaults.
fn config(conf: Option<&Path>) -> Result<Config, String> {
    let path = match conf {
        Some(p) => Some(p.to_path_buf()),
        None => std::env::var_os(ENV_CONF)
            .filter(|v| !v.is_empty())
            .map(Into::into),
    };
    match path {
        Some(p) => Config::load(&p).map_err(|e| e.to_string()),
        None => Ok(Config::default()),
    }
}

/// The daemon's log: warnings and errors (refused peers, malformed frames, dropped
/// connections) to stderr, `FERROHSM_LOG=info|debug|trace` for more, `off` for none. Never
/// PINs or key bytes: the protocol code logs method names and reasons only.
fn init_log() {
    crate::diag::install(Some(log::LevelFilter::Warn));
}

/// Runs the daemon until SIGTERM or SIGINT.
pub(crate) fn serve(conf: Option<&Path>, args: &ServeArgs) -> Result<(), String> {
    let ServeArgs {
        socket,
        tls,
        home,
        allow_uid,
        socket_mode,
        allow_shared_dir,
        limits: limit_args,
        cluster: cluster_args,
    } = args;
    let socket = socket.as_deref();
    let socket_mode = u32::from_str_radix(socket_mode, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("--socket-mode {socket_mode}: not an octal file mode"))?;
    init_log();
    let config = config(conf)?;
    let cluster_args = cluster_args.resolve(&config.daemon)?;
    let tokens = match &cluster_args {
        Some(c) => Tokens::Cluster(crate::cluster::connect(home, &c.etcd, &c.name)?),
        None => Tokens::Home(home.to_path_buf()),
    };
    let firmware = config.firmware;
    let limits = limit_args.limits(&config.daemon);
    // Each connection gets its own Device over the shared store: a client is one PKCS#11
    // application, with its own sessions and login state, exactly as a process is with the
    // embedded module (a Device shared by all would share one client's login with every
    // other). Opening one now checks the home before listening, and counts the descriptors
    // a connection will take (its socket and the store's files), which the server keeps free.
    let before = open_descriptors().ok();
    let device = tokens
        .open(&firmware)
        .map_err(|e| format!("{}: {e}", home.display()))?;
    let per_connection = match (before, open_descriptors()) {
        (Some(before), Ok(after)) => after.saturating_sub(before) + 1,
        _ => 1,
    };
    drop(device);
    let mut listeners = tls.listeners(&config.daemon)?;
    if let Some(socket) = socket {
        let l = bridge::remote::bind_socket(socket, socket_mode, *allow_shared_dir)
            .map_err(|e| e.to_string())?;
        listeners.insert(0, (socket.display().to_string(), Listener::Unix(l)));
    }
    if listeners.is_empty() {
        return Err("nothing to serve on: give --socket PATH and/or --listen ADDR:PORT".into());
    }
    let names: Vec<String> = listeners.iter().map(|(n, _)| n.clone()).collect();
    if let (Tokens::Cluster(cluster), Some(c)) = (&tokens, &cluster_args) {
        cluster.announce(&node_name(c.node.as_deref()), &host_name(), &names);
        log::info!("node of cluster {}", c.name);
    }
    let what = match &cluster_args {
        Some(c) => format!("cluster {} (domain from {})", c.name, home.display()),
        None => home.display().to_string(),
    };
    let tenant_home = home.clone();
    let domain = match &tokens {
        Tokens::Home(_) => firmware_sim::domain::load(home)
            .map_err(|e| format!("{}: {e}", home.display()))?
            .map(Arc::new),
        Tokens::Cluster(_) => None,
    };
    let source = Arc::new(TenantSource {
        tokens: tokens.clone(),
        home: tenant_home.clone(),
        domain,
        seen: std::sync::Mutex::new((None, 0)),
    });
    // The trusted side's policy and audit (checked now: a bad mechanism name or log
    // directory stops the daemon before it listens).
    let policy = config
        .daemon
        .policy
        .as_ref()
        .map(Policy::from_config)
        .transpose()
        .map_err(|e| format!("[daemon] policy: {e}"))?;
    let audit_log = config.daemon.audit_log.clone();
    let durability = Durability::from_millis(config.audit.sync_ms);
    if let Some(path) = &audit_log {
        AuditLog::open(path).map_err(|e| e.to_string())?;
    }
    if !config.slot.is_empty() {
        log::warn!(
            "the [[slot]] entries of the configuration are for applications' modules, not the daemon: its policy and audit log are [daemon] policy and audit_log"
        );
    }
    let join_source = Arc::clone(&source);
    let mut server = Server::per_identity(move |identity| {
        // Read at every connection (and by each open connection once a second: a revocation
        // reaches it too).
        let tenants = source.read()?;
        let who = identity.grant_name();
        let daemon_log = audit_log
            .as_deref()
            .map(|p| AuditLog::open(p).map(|l| l.with_durability(durability)))
            .transpose()?;
        let backend = if tenants.any() {
            tenant_backend(&source, &tenants, identity, &firmware, durability)?
        } else {
            log::info!("opening the firmware for {identity}");
            Arc::new(tokens.open(&firmware)?) as Arc<dyn Backend>
        };
        if policy.is_none() && daemon_log.is_none() {
            return Ok(backend);
        }
        // The daemon's own policy and log, in front of everything (the tenant's usage log
        // too): no record, no answer.
        Ok(Arc::new(
            Overlay::new(backend, policy.clone(), daemon_log)
                .recording_who(&who)
                .failing_closed(),
        ) as Arc<dyn Backend>)
    });
    // Daemon requests: the tenant's auditor reads its usage log.
    let audit_source = Arc::clone(&join_source);
    let seal = CursorSeal::new()?;
    server = server.daemon_requests(move |identity, request| {
        daemon_request(&audit_source, &seal, identity, request)
    });
    // A connection that joins an application already open (another of its pooled
    // connections) takes a place among its tenant's connections too: the tenants' sum under
    // --max-connections keeps holding.
    server = server.joining(move |identity| {
        let tenants = join_source.read()?;
        if !tenants.any() {
            return Ok(Box::new(()) as Box<dyn Send + Sync>);
        }
        let who = identity.grant_name();
        let Some((name, tenant, _)) = tenants.of(&who) else {
            log::warn!("{identity}: refused: no tenant grants it a role any more");
            return Err(bridge::Error::ActionProhibited);
        };
        Ok(Box::new(tenant::admit(name, tenant, &who)?))
    });
    if !allow_uid.is_empty() {
        server = server.allow_uids(allow_uid.iter().copied());
    }
    let nofile = descriptor_limit().map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    log::info!(
        "limits: {} connections, {} per peer, hello {}s, request {}s, idle {}; RLIMIT_NOFILE {nofile}, about {per_connection} descriptors per connection",
        limits.max_connections,
        limits.max_connections_per_uid,
        limits.handshake_timeout.as_secs(),
        limits.frame_timeout.as_secs(),
        limits
            .idle_timeout
            .map_or_else(|| "for ever".to_owned(), |t| format!("{}s", t.as_secs())),
    );
    server = server
        .limits(limits)
        .descriptors_per_connection(per_connection);
    let stop = server.shutdown_flag();
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| format!("cannot handle signal {signal}: {e}"))?;
    }
    eprintln!(
        "ferrohsm: serving {what} on {} (pid {})",
        names.join(", "),
        std::process::id()
    );
    let result = server.serve_all(listeners.into_iter().map(|(_, l)| l).collect());
    // Every connection has ended and dropped its Device (which flushes the store).
    drop(server);
    if let Some(socket) = socket {
        let _ = std::fs::remove_file(socket);
    }
    eprintln!("ferrohsm: stopped");
    result.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_announced_by_its_host_name_or_its_bound_address() {
        let bound = |a: &str| Some(a.parse::<std::net::SocketAddr>().unwrap());
        assert_eq!(
            shown_address("127.0.0.1:0", bound("127.0.0.1:41234")),
            "127.0.0.1:41234"
        );
        assert_eq!(
            shown_address("0.0.0.0:7400", bound("0.0.0.0:7400")),
            "0.0.0.0:7400"
        );
        assert_eq!(shown_address("[::]:0", bound("[::]:7401")), "[::]:7401");
        assert_eq!(
            shown_address("hsm1.example:0", bound("10.1.2.3:7402")),
            "hsm1.example:7402"
        );
        assert_eq!(shown_address("hsm1:7400", None), "hsm1:7400");
    }

    fn file(cluster: Option<&str>, etcd: &[&str], node: Option<&str>) -> DaemonConfig {
        DaemonConfig {
            cluster: cluster.map(str::to_owned),
            etcd: (!etcd.is_empty()).then(|| etcd.iter().map(|e| (*e).to_owned()).collect()),
            node: node.map(str::to_owned),
            ..DaemonConfig::default()
        }
    }

    #[test]
    fn the_cluster_comes_from_the_daemon_section_and_flags_override_it() {
        let none = ClusterArgs::default();
        let f = file(
            Some("prod"),
            &["http://a:2379", "http://b:2379"],
            Some("n1"),
        );
        assert_eq!(
            none.resolve(&f).unwrap(),
            Some(ClusterNode {
                name: "prod".into(),
                etcd: vec!["http://a:2379".into(), "http://b:2379".into()],
                node: Some("n1".into())
            })
        );
        let flags = ClusterArgs {
            cluster: Some("test".into()),
            etcd: vec!["http://c:2379".into()],
            node: None,
        };
        assert_eq!(
            flags.resolve(&f).unwrap(),
            Some(ClusterNode {
                name: "test".into(),
                etcd: vec!["http://c:2379".into()],
                node: Some("n1".into())
            })
        );
        assert_eq!(none.resolve(&DaemonConfig::default()).unwrap(), None);
        assert!(none.resolve(&file(Some("prod"), &[], None)).is_err());
        assert!(none.resolve(&file(None, &["http://a:2379"], None)).is_err());
    }
}
