//! `ferrohsm tenant ...` and `ferrohsm audit show`: the tenants of a daemon's home, their
//! grants, and their usage logs (`bridge::tenant`).

use std::path::{Path, PathBuf};

use bridge::tenant::{self, Role, Tenant, Tenants};

#[derive(clap::Subcommand)]
pub(crate) enum TenantCommand {
    /// Add a tenant: its own slots and tokens, reached by the identities granted to it.
    Add {
        #[command(flatten)]
        place: Where,
        /// The tenant's name (letters, digits, '.', '_', '-').
        #[arg(long)]
        name: String,
        /// Let crypto users create, change and destroy token objects (default: officers only).
        #[arg(long)]
        users_create_keys: bool,
        #[command(flatten)]
        limits: LimitFlags,
    },
    /// Change a tenant's share of the daemon (from its next connections); 0 removes a limit.
    Set {
        #[command(flatten)]
        place: Where,
        #[arg(long)]
        name: String,
        /// Let crypto users create token objects (true or false).
        #[arg(long, value_name = "BOOL")]
        users_create_keys: Option<bool>,
        #[command(flatten)]
        limits: LimitFlags,
    },
    /// Grant a role in a tenant to an identity (a TLS client certificate's NAME, or uid:N on
    /// the local socket); an identity may hold several roles, in one tenant only.
    Grant {
        #[command(flatten)]
        place: Where,
        /// The tenant.
        #[arg(long)]
        name: String,
        /// The identity.
        #[arg(long)]
        identity: String,
        /// crypto-officer, crypto-user or auditor.
        #[arg(long)]
        role: String,
    },
    /// Take a role (or, without --role, every role) from an identity; its next connection
    /// gets the rest.
    Revoke {
        #[command(flatten)]
        place: Where,
        #[arg(long)]
        name: String,
        #[arg(long)]
        identity: String,
        #[arg(long)]
        role: Option<String>,
    },
    /// List the tenants and their grants.
    List {
        #[command(flatten)]
        place: Where,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a tenant from the list; its tokens stay on disk (in HOME/tenants/NAME) unless
    /// --delete-tokens is given.
    Remove {
        #[command(flatten)]
        place: Where,
        #[arg(long)]
        name: String,
        /// Also delete the tenant's tokens and usage log (cannot be undone).
        #[arg(long)]
        delete_tokens: bool,
    },
}

/// A tenant's limits (`bridge::tenant::Limits`), counted over all its connections.
#[derive(clap::Args)]
pub(crate) struct LimitFlags {
    /// The tenant's usage log may grow to this many MiB on a daemon; past it the tenant's
    /// recorded calls fail until the log is archived.
    #[arg(long, value_name = "MIB")]
    max_log_mib: Option<u32>,
    /// Connections at once on one daemon (one more is refused at its hello).
    #[arg(long, value_name = "N")]
    max_connections: Option<u32>,
    /// Sessions open at once (one more: CKR_SESSION_COUNT).
    #[arg(long, value_name = "N")]
    max_sessions: Option<u32>,
    /// Operations running at once; more wait their turn (up to 10 s, then CKR_DEVICE_MEMORY).
    #[arg(long, value_name = "N")]
    max_concurrent: Option<u32>,
    /// Operations started per second on average; faster callers are slowed down.
    #[arg(long, value_name = "N")]
    ops_per_sec: Option<u32>,
    /// Operations that may start at once above the rate [default: --ops-per-sec].
    #[arg(long, value_name = "N")]
    burst: Option<u32>,
}

impl LimitFlags {
    /// `limits` with the flags given applied (0: no limit).
    fn apply(&self, limits: &mut tenant::Limits) {
        let set = |slot: &mut Option<u32>, flag: Option<u32>| {
            if let Some(n) = flag {
                *slot = (n > 0).then_some(n);
            }
        };
        set(&mut limits.max_connections, self.max_connections);
        set(&mut limits.max_log_mib, self.max_log_mib);
        set(&mut limits.max_sessions, self.max_sessions);
        set(&mut limits.max_concurrent, self.max_concurrent);
        set(&mut limits.ops_per_sec, self.ops_per_sec);
        set(&mut limits.burst, self.burst);
    }
}

fn describe(l: &tenant::Limits) -> String {
    let mut parts = Vec::new();
    for (name, v) in [
        ("max_connections", l.max_connections),
        ("max_log_mib", l.max_log_mib),
        ("max_sessions", l.max_sessions),
        ("max_concurrent", l.max_concurrent),
        ("ops_per_sec", l.ops_per_sec),
        ("burst", l.burst),
    ] {
        if let Some(v) = v {
            parts.push(format!("{name} {v}"));
        }
    }
    if parts.is_empty() {
        "no limits".into()
    } else {
        parts.join(", ")
    }
}

/// Where the tenants are: a daemon's home, or a cluster in etcd.
#[derive(clap::Args)]
pub(crate) struct Where {
    /// The daemon's home (with --cluster: the home holding the cluster's domain, by default
    /// $FERROHSM_HOME or the default data directory).
    #[arg(long, value_name = "DIR", required_unless_present = "cluster")]
    home: Option<PathBuf>,
    #[command(flatten)]
    at: ClusterFlags,
}

/// `--cluster NAME --etcd URL,...`: a cluster in etcd, for the tenant commands and `audit
/// show` alike (`--etcd` read by `cluster::endpoints`, as every command's).
#[derive(clap::Args, Debug, Default)]
pub(crate) struct ClusterFlags {
    /// A cluster in etcd instead of a home: its tenants (sealed under the cluster's key); for
    /// `audit show`, every node of it, found by its heartbeat.
    #[arg(long, value_name = "NAME", requires = "etcd")]
    cluster: Option<String>,
    /// The etcd members' client URLs, comma-separated (with --cluster).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "URL,URL,...",
        requires = "cluster"
    )]
    etcd: Vec<String>,
}

/// The tenants as read, and how to write them back.
pub(crate) enum Place {
    Home(PathBuf),
    /// The cluster and the revision of its tenants document that was read.
    Cluster(std::sync::Arc<firmware_sim::cluster::Cluster>, i64),
}

/// The cluster's document of tenants.
pub(crate) const CLUSTER_DOC: &str = "tenants.json";

fn load(place: &Where) -> Result<(Tenants, Place), String> {
    if let Some(name) = &place.at.cluster {
        let home = crate::domain::home(place.home.clone())?;
        let cluster = crate::cluster::connect(&home, &place.at.etcd, name)?;
        return cluster_tenants(cluster);
    }
    let home = place.home.clone().unwrap_or_default();
    if !home.is_dir() {
        return Err(format!(
            "{}: not a directory (give the daemon's --home)",
            home.display()
        ));
    }
    let t = Tenants::load(&home).map_err(|e| e.to_string())?;
    Ok((t, Place::Home(home)))
}

/// The tenants of a cluster (none when it has no document yet).
pub(crate) fn cluster_tenants(
    cluster: std::sync::Arc<firmware_sim::cluster::Cluster>,
) -> Result<(Tenants, Place), String> {
    let (doc, rev) = cluster.document(CLUSTER_DOC).map_err(|e| e.to_string())?;
    let t = parse_cluster_doc(&cluster, doc).map_err(|e| e.to_string())?;
    Ok((t, Place::Cluster(cluster, rev)))
}

/// The daemon's read of a cluster's tenants: `CKR_DEVICE_ERROR` when etcd does not answer, a
/// configuration error when the document does not open or parse.
pub(crate) fn cluster_tenants_of(
    cluster: &firmware_sim::cluster::Cluster,
) -> bridge::Result<Tenants> {
    let (doc, _) = cluster.document(CLUSTER_DOC)?;
    parse_cluster_doc(cluster, doc)
}

fn parse_cluster_doc(
    cluster: &firmware_sim::cluster::Cluster,
    doc: Option<Vec<u8>>,
) -> bridge::Result<Tenants> {
    let what = format!("cluster {} tenants", cluster.name());
    match doc {
        Some(d) => Tenants::from_json(&d, &what),
        None => Ok(Tenants::default()),
    }
}

fn save(place: &Place, t: &Tenants) -> Result<(), String> {
    // Every change is a new version: nodes refuse an older one.
    let mut t = t.clone();
    t.version += 1;
    let t = &t;
    match place {
        Place::Home(home) => t.save(home).map_err(|e| e.to_string()),
        Place::Cluster(cluster, rev) => {
            let body = t.to_json().map_err(|e| e.to_string())?;
            if cluster
                .put_document(CLUSTER_DOC, body.as_bytes(), *rev)
                .map_err(|e| e.to_string())?
            {
                Ok(())
            } else {
                Err("the cluster's tenants changed meanwhile (another operator?); nothing was written: run the command again".into())
            }
        }
    }
}

impl Place {
    /// A tenant's directory (its tokens, or on a cluster node its usage log), made now.
    fn prepare(&self, name: &str) -> Result<(), String> {
        match self {
            Self::Home(home) => tenant::prepare_home(home, name)
                .map(drop)
                .map_err(|e| e.to_string()),
            Self::Cluster(..) => Ok(()),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Home(home) => format!("--home {}", home.display()),
            Self::Cluster(c, _) => format!("--cluster {} --etcd ...", c.name()),
        }
    }
}

fn role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| {
        format!("--role {text}: not a role (crypto-officer, crypto-user or auditor)")
    })
}

fn existing<'a>(t: &'a mut Tenants, name: &str) -> Result<&'a mut Tenant, String> {
    t.tenants.get_mut(name).ok_or_else(|| {
        format!("no tenant {name:?} (ferrohsm tenant list shows them; tenant add makes one)")
    })
}

pub(crate) fn run(command: TenantCommand) -> Result<(), String> {
    match command {
        TenantCommand::Add {
            place,
            name,
            users_create_keys,
            limits,
        } => {
            let (mut t, at) = load(&place)?;
            if !tenant::valid_name(&name) {
                return Err(format!(
                    "--name {name:?}: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
                ));
            }
            if t.tenants.contains_key(&name) {
                return Err(format!("tenant {name} exists already"));
            }
            let mut tenant = Tenant {
                users_create_keys,
                ..Tenant::default()
            };
            limits.apply(&mut tenant.limits);
            t.tenants.insert(name.clone(), tenant);
            at.prepare(&name)?;
            save(&at, &t)?;
            println!(
                "tenant {name} added; grant it identities with `ferrohsm tenant grant {} --name {name} --identity ID --role crypto-officer`",
                at.describe()
            );
            if let Place::Home(home) = &at {
                if matches!(firmware_sim::domain::load(home), Ok(None)) {
                    eprintln!(
                        "note: {} has no security domain: tenant {name}'s tokens are kept apart by \
                         their directory and their own PINs, but not sealed under a key of the \
                         tenant's; run `ferrohsm domain init` first to seal them (tokens made \
                         before stay unsealed)",
                        home.display()
                    );
                }
            }
            Ok(())
        }
        TenantCommand::Set {
            place,
            name,
            users_create_keys,
            limits,
        } => {
            let (mut t, at) = load(&place)?;
            let tenant = existing(&mut t, &name)?;
            if let Some(yes) = users_create_keys {
                tenant.users_create_keys = yes;
            }
            limits.apply(&mut tenant.limits);
            let now = describe(&tenant.limits);
            save(&at, &t)?;
            println!("tenant {name}: {now} (from its next connections)");
            Ok(())
        }
        TenantCommand::Grant {
            place,
            name,
            identity,
            role: r,
        } => {
            let r = role(&r)?;
            let (mut t, at) = load(&place)?;
            if !tenant::valid_identity(&identity) {
                return Err(format!(
                    "--identity {identity:?}: a certificate NAME (letters, digits, '.', '_', '-') or uid:N"
                ));
            }
            if let Some((other, _, _)) = t.of(&identity).filter(|(o, _, _)| *o != name) {
                return Err(format!(
                    "{identity} belongs to tenant {other}: an identity serves one tenant (revoke it there first)"
                ));
            }
            existing(&mut t, &name)?
                .grants
                .entry(identity.clone())
                .or_default()
                .insert(r);
            save(&at, &t)?;
            println!(
                "{identity} is {} in tenant {name} (from its next connection)",
                r.name()
            );
            Ok(())
        }
        TenantCommand::Revoke {
            place,
            name,
            identity,
            role: r,
        } => {
            let r = r.as_deref().map(role).transpose()?;
            let (mut t, at) = load(&place)?;
            let tenant = existing(&mut t, &name)?;
            let Some(roles) = tenant.grants.get_mut(&identity) else {
                return Err(format!("{identity} holds no role in tenant {name}"));
            };
            match r {
                Some(r) => {
                    roles.remove(&r);
                }
                None => roles.clear(),
            }
            if roles.is_empty() {
                tenant.grants.remove(&identity);
            }
            save(&at, &t)?;
            println!("done (from {identity}'s next connection)");
            Ok(())
        }
        TenantCommand::List { place, json } => {
            let (t, _) = load(&place)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&t).map_err(|e| e.to_string())?
                );
                return Ok(());
            }
            if !t.any() {
                println!("no tenants: the daemon serves the home to every allowed peer");
            } else if t.tenants.is_empty() {
                println!(
                    "no tenant listed: the daemon serves nobody (delete the home's {} to serve the home to every allowed peer)",
                    tenant::FILE
                );
            }
            for (name, tenant) in &t.tenants {
                println!(
                    "{name} ({}){}",
                    describe(&tenant.limits),
                    if tenant.users_create_keys {
                        " (crypto users may create token keys)"
                    } else {
                        ""
                    }
                );
                for (id, roles) in &tenant.grants {
                    let r: Vec<&str> = roles.iter().map(|r| r.name()).collect();
                    println!("  {id}: {}", r.join(", "));
                }
            }
            Ok(())
        }
        TenantCommand::Remove {
            place,
            name,
            delete_tokens,
        } => {
            let (mut t, at) = load(&place)?;
            existing(&mut t, &name)?;
            t.tenants.remove(&name);
            save(&at, &t)?;
            let Place::Home(home) = &at else {
                if delete_tokens {
                    println!(
                        "tenant {name} removed; --delete-tokens is not done on a cluster: its tokens stay in etcd under /ferrohsm/{}/tenants/{name}/ (etcdctl del --prefix removes them)",
                        place.at.cluster.as_deref().unwrap_or("?")
                    );
                } else {
                    println!(
                        "tenant {name} removed; its tokens stay in etcd (tenant add {name} serves them again)"
                    );
                }
                return Ok(());
            };
            let dir = tenant::home_of(home, &name);
            if delete_tokens {
                std::fs::remove_dir_all(&dir)
                    .or_else(|e| {
                        if e.kind() == std::io::ErrorKind::NotFound {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(|e| format!("{}: cannot delete: {e}", dir.display()))?;
                println!("tenant {name} removed, with its tokens and usage log");
            } else {
                println!(
                    "tenant {name} removed; its tokens stay in {} (tenant add {name} serves them again)",
                    dir.display()
                );
            }
            Ok(())
        }
    }
}

/// How `ferrohsm audit show` reaches a daemon: the flags of a `kind = "remote"` slot (checked
/// and built by the same code as the slot's), one read per node.
#[derive(clap::Args, Debug, Default)]
pub(crate) struct DaemonArgs {
    /// Read through the daemon's Unix socket (a remote slot's `socket`).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["endpoint", "cluster"])]
    socket: Option<PathBuf>,
    /// The uid the daemon at --socket runs under (a remote slot's `daemon_uid`) [default: this
    /// process's effective uid].
    #[arg(long, value_name = "UID", requires = "socket")]
    daemon_uid: Option<u32>,
    /// Read from the daemon at this network endpoint, tls://HOST:PORT (a remote slot's
    /// `endpoints`); repeat it, or separate with commas, for the nodes of a cluster: each
    /// node's log (the calls it served) is read and the records merged by time.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "tls://HOST:PORT",
        conflicts_with = "cluster"
    )]
    endpoint: Vec<String>,
    /// The CA the daemons' certificates chain to (a remote slot's `ca`; with --endpoint).
    #[arg(long, value_name = "PEM")]
    ca: Option<PathBuf>,
    /// This client's certificate: the auditor's (a remote slot's `cert`; with --endpoint).
    #[arg(long, value_name = "PEM")]
    cert: Option<PathBuf>,
    /// This client's private key (a remote slot's `key`; named --tls-key because --key is the
    /// key label to show).
    #[arg(long = "tls-key", value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// Every node of this cluster instead of --endpoint: each found by its heartbeat in etcd
    /// and read at its TLS listener (with --ca, --cert and --tls-key).
    #[command(flatten)]
    at: ClusterFlags,
}

/// One node to read: the name its records carry, the name its errors give, its remote slot,
/// what to add when it cannot be reached, and what to say once it has been read.
struct NodeSlot {
    name: String,
    label: String,
    slot: bridge::config::SlotConfig,
    unreached: String,
    read_note: Option<String>,
}

impl NodeSlot {
    /// A node named by its slot (its socket or endpoint).
    fn of(slot: bridge::config::SlotConfig) -> Self {
        let name = node_name(&slot);
        Self {
            label: name.clone(),
            name,
            slot,
            unreached: String::new(),
            read_note: None,
        }
    }
}

/// A heartbeat older than this (seconds; nodes write one every 2 s) is said to be stale.
const STALE_SECS: i64 = 10;

/// Where a node of a cluster is read, from its heartbeat: its first TLS listener on a given
/// address (`ADDR:PORT` or `NAME:PORT`; a Unix socket's path is not reachable from here), else
/// its first on an unspecified address (`0.0.0.0`, `[::]`), reached at the host name the node
/// announced (which its certificate must then name). Returns `tls://HOST:PORT`, and how it was
/// found when mapped; or why the node cannot be reached.
fn node_endpoint(
    listen: &[String],
    host: Option<&str>,
) -> Result<(String, Option<String>), String> {
    use std::net::SocketAddr;
    let tcp: Vec<(&str, Option<SocketAddr>)> = listen
        .iter()
        .filter_map(|l| match l.parse::<SocketAddr>() {
            Ok(a) => Some((l.as_str(), Some(a))),
            Err(_) => l
                .rsplit_once(':')
                .filter(|(h, p)| !h.is_empty() && !h.contains('/') && p.parse::<u16>().is_ok())
                .map(|_| (l.as_str(), None)),
        })
        .collect();
    if let Some((l, _)) = tcp
        .iter()
        .find(|(_, a)| a.is_none_or(|a| !a.ip().is_unspecified()))
    {
        return Ok((format!("tls://{l}"), None));
    }
    let Some((l, Some(a))) = tcp.first() else {
        return Err(format!(
            "it listens on no TLS address ({}): read it on its host with `ferrohsm audit show \
             --socket PATH` or --home, or serve it with --listen HOST:PORT too",
            if listen.is_empty() {
                "-".to_owned()
            } else {
                listen.join(", ")
            }
        ));
    };
    match host {
        Some(h) if !h.is_empty() => Ok((
            format!("tls://{h}:{}", a.port()),
            Some(format!(
                "it listens on {l} (every address), so it was reached at the host name it \
                 announced, {h}, which its certificate must name (`ferrohsm tls issue --server \
                 {h}`)"
            )),
        )),
        _ => Err(format!(
            "it listens on {l} (every address) and its heartbeat names no host (a node of an \
             older release): serve it with --listen HOST:PORT on a name or address its \
             certificate names, or read it with --endpoint tls://HOST:{}",
            a.port()
        )),
    }
}

impl DaemonArgs {
    fn given(&self) -> bool {
        self.socket.is_some()
            || !self.endpoint.is_empty()
            || self.ca.is_some()
            || self.cert.is_some()
            || self.tls_key.is_some()
    }

    /// The remote slots to read, one per node: the nodes of `--cluster`, else the flags, else
    /// the `kind = "remote"` slots of the configuration (`--conf`, else `$FERROHSM_CONF`), an
    /// endpoint each.
    fn slots(&self, conf: Option<&Path>) -> Result<Vec<NodeSlot>, String> {
        use bridge::config::{Config, SlotConfig};
        let remote = |socket, endpoints, ca, cert, key, daemon_uid| SlotConfig::Remote {
            socket,
            endpoints,
            ca,
            cert,
            key,
            timeout_secs: None,
            connect_timeout_secs: None,
            daemon_uid,
            connections: None,
            audit_log: None,
            trace: None,
            policy: None,
        };
        if let Some(cluster) = &self.at.cluster {
            let (Some(ca), Some(cert), Some(key)) = (&self.ca, &self.cert, &self.tls_key) else {
                return Err(format!(
                    "--cluster {cluster}: each node is read over TLS as the auditor: give --ca, \
                     --cert and --tls-key"
                ));
            };
            let etcd = crate::cluster::endpoints(&self.at.etcd)?;
            let nodes = firmware_sim::cluster::nodes(&etcd, cluster)
                .map_err(|e| format!("cluster {cluster}: its nodes' heartbeats in etcd: {e}"))?;
            if nodes.is_empty() {
                return Err(format!(
                    "cluster {cluster}: no node has written a heartbeat in etcd (is the name \
                     right? `ferrohsm cluster status` shows the nodes)"
                ));
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
            let mut out = Vec::new();
            for n in nodes {
                let label = format!("node {}", n.name);
                let (endpoint, mapped) = node_endpoint(&n.listen, n.host.as_deref())
                    .map_err(|why| format!("{label}: {why}"))?;
                let slot = remote(
                    None,
                    Some(vec![endpoint.clone()]),
                    Some(ca.clone()),
                    Some(cert.clone()),
                    Some(key.clone()),
                    None,
                );
                slot.check_remote()
                    .map_err(|why| format!("{label} ({endpoint}): {why}"))?;
                let age = (now - n.at).max(0);
                let stale = age > STALE_SECS;
                let mut unreached = String::new();
                if let Some(m) = &mapped {
                    unreached.push_str(&format!("; {m}"));
                }
                unreached.push_str(&if stale {
                    format!(
                        "; its last heartbeat is {age} s old: start the node again, or, if it is \
                         gone for good, delete its heartbeat (`etcdctl del /ferrohsm/{cluster}/\
                         nodes/{}`) and read its log on its host with `ferrohsm audit show \
                         --home`",
                        n.name
                    )
                } else {
                    format!(
                        "; every node of the cluster is read (a merge without one would look \
                         complete): bring {} back, or read the others with --endpoint",
                        n.name
                    )
                });
                out.push(NodeSlot {
                    name: n.name.clone(),
                    label: format!("{label} ({endpoint})"),
                    slot,
                    unreached,
                    read_note: stale.then(|| {
                        format!(
                            "note: node {}'s last heartbeat is {age} s old (stopped, or cut off \
                             from etcd?), but it answered at {endpoint}: its records are shown",
                            n.name
                        )
                    }),
                });
            }
            return Ok(out);
        }
        let slots = if self.given() {
            let slot = remote(
                self.socket.clone(),
                (!self.endpoint.is_empty()).then(|| self.endpoint.clone()),
                self.ca.clone(),
                self.cert.clone(),
                self.tls_key.clone(),
                self.daemon_uid,
            );
            // The slot's own check, its words put in the flags' names.
            slot.check_remote().map_err(|why| {
                why.replace("endpoints need", "--endpoint needs")
                    .replace("endpoints", "--endpoint")
                    .replace("with socket", "with --socket")
                    .replace("either socket", "either --socket")
                    .replace("ca, cert and key", "--ca, --cert and --tls-key")
                    .replace("kind = \"remote\" needs", "a daemon needs")
            })?;
            vec![slot]
        } else {
            let config = match conf {
                Some(p) => Config::load(p),
                None => Config::from_env(),
            }
            .map_err(|e| e.to_string())?;
            config
                .slot
                .into_iter()
                .filter(|s| matches!(s, SlotConfig::Remote { .. }))
                .collect()
        };
        if slots.is_empty() {
            return Err(
                "which daemon? give --socket PATH, or --endpoint tls://HOST:PORT with --ca, --cert \
                 and --tls-key, or a --conf (or $FERROHSM_CONF) with a kind = \"remote\" slot; \
                 or --home DIR to read the daemon's home on its host"
                    .into(),
            );
        }
        // One slot per node: a slot's endpoints are the nodes of one cluster.
        let mut nodes = Vec::new();
        for slot in slots {
            match &slot {
                SlotConfig::Remote {
                    endpoints: Some(list),
                    ..
                } if list.len() > 1 => {
                    for e in list {
                        let mut one = slot.clone();
                        if let SlotConfig::Remote { endpoints, .. } = &mut one {
                            *endpoints = Some(vec![e.clone()]);
                        }
                        nodes.push(one);
                    }
                }
                _ => nodes.push(slot),
            }
        }
        Ok(nodes.into_iter().map(NodeSlot::of).collect())
    }
}

/// The name of the node a remote slot reads.
fn node_name(slot: &bridge::config::SlotConfig) -> String {
    match slot {
        bridge::config::SlotConfig::Remote {
            socket: Some(s), ..
        } => s.display().to_string(),
        bridge::config::SlotConfig::Remote {
            endpoints: Some(e), ..
        } => e.join(","),
        _ => "?".into(),
    }
}

/// What `audit show` keeps of a log's records: those of the key label, at or after the time.
struct Filter<'a> {
    key: Option<&'a str>,
    since: Option<String>,
}

impl Filter<'_> {
    fn keeps(&self, v: &serde_json::Value) -> bool {
        if let Some(k) = self.key {
            if v.get("label").and_then(serde_json::Value::as_str) != Some(k) {
                return false;
            }
        }
        if let Some(t) = &self.since {
            let at = v
                .get("time")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            if at < t.as_str() {
                return false;
            }
        }
        true
    }
}

/// `ferrohsm audit show`: tenant `name`'s usage log, verified, filtered and listed; from the
/// daemon's home (`home`), or from daemons through their protocol (`daemon`: its flags, the
/// nodes of its cluster, or the remote slots of `conf`), each node read on its own and the
/// records merged by time, each saying which node served it.
pub(crate) fn audit_show(
    conf: Option<&Path>,
    home: Option<&Path>,
    daemon: &DaemonArgs,
    name: &str,
    key: Option<&str>,
    since: Option<&str>,
    json: bool,
) -> Result<(), String> {
    // The log's times are `YYYY-MM-DDTHH:MM:SS.mmmZ`: one of the same form (or a prefix of
    // it) compares as text.
    let since = since.map(|t| t.trim_end_matches('Z').replace(' ', "T"));
    if let Some(t) = &since {
        let ok = t.len() >= 4
            && t.bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'T' | b':' | b'.'));
        if !ok {
            return Err(format!(
                "--since {t:?}: a UTC time like 2026-12-07 or 2026-12-07T16:00:00Z"
            ));
        }
    }
    if !tenant::valid_name(name) {
        return Err(format!("--tenant {name:?}: not a tenant name"));
    }
    let filter = Filter { key, since };
    // Several nodes (or a cluster's, however many): each line says which one served the call.
    let (rows, by_node) = match home {
        Some(home) => (local_rows(home, name, &filter)?, false),
        None => {
            let slots = daemon.slots(conf)?;
            let by_node = slots.len() > 1 || daemon.at.cluster.is_some();
            (remote_rows(&slots, name, &filter)?, by_node)
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    // Control and format characters (a label may hold tabs, newlines, bidirectional
    // overrides) are shown escaped: one record, one line, in the order it was written.
    let field = |v: &serde_json::Value, k: &str| {
        v.get(k)
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .map(|t| bridge::audit::printable(&t))
            .unwrap_or_else(|| "-".into())
    };
    for v in &rows {
        let node = if by_node {
            format!("{}\t", field(v, "node"))
        } else {
            String::new()
        };
        println!(
            "{node}{}\t{}\t{}\t{}\t{}\t{}",
            field(v, "time"),
            field(v, "who"),
            field(v, "function"),
            field(v, "mechanism"),
            field(v, "label"),
            field(v, "rv")
        );
    }
    Ok(())
}

/// The records of tenant `name`'s log in the daemon's home, verified first.
fn local_rows(
    home: &Path,
    name: &str,
    filter: &Filter<'_>,
) -> Result<Vec<serde_json::Value>, String> {
    let path = tenant::audit_log_of(home, name);
    if !path.exists() {
        return Err(format!(
            "{}: no usage log (tenant {name} has not been used yet, or the --home is not the daemon's)",
            path.display()
        ));
    }
    bridge::audit::verify(&path).map_err(|(line, why)| {
        format!(
            "{}: line {line}: {why}: the log was changed after it was written",
            path.display()
        )
    })?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rows = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("{}: {e}", path.display()))?;
        if filter.keeps(&v) {
            rows.push(v);
        }
    }
    Ok(rows)
}

/// The records of tenant `name`'s log on every node of `slots`, each read through the
/// protocol (verified by the daemon, then by this client), filtered here page by page (only
/// what is kept stays in memory), tagged with its node (`"node"`) and merged by time (a
/// node's own order kept for records of the same millisecond). Any node that cannot be read
/// fails the whole: a merge missing a node would look complete.
fn remote_rows(
    slots: &[NodeSlot],
    name: &str,
    filter: &Filter<'_>,
) -> Result<Vec<serde_json::Value>, String> {
    use bridge::remote::LogReadError;
    let mut rows: Vec<(String, usize, u64, serde_json::Value)> = Vec::new();
    for (index, at) in slots.iter().enumerate() {
        let (node, label) = (&at.name, &at.label);
        let client = ferrohsm_wiring::remote_backend(&at.slot)
            .map_err(|e| format!("{label}: {e}{}", at.unreached))?;
        let mut seq = 0u64;
        client
            .read_usage_log(name, |lines| {
                for line in lines {
                    seq += 1;
                    let mut v: serde_json::Value =
                        serde_json::from_str(line).map_err(|e| format!("{label}: {e}"))?;
                    if !filter.keeps(&v) {
                        continue;
                    }
                    let time = v
                        .get("time")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    if let Some(m) = v.as_object_mut() {
                        m.insert("node".into(), serde_json::Value::String(node.clone()));
                    }
                    rows.push((time, index, seq, v));
                }
                Ok(())
            })
            .map_err(|e| {
                // A node that did not answer gets what to do; a refusal or a broken log is the
                // node's answer, said as it is.
                let unreached = match &e {
                    LogReadError::Failed(_) => at.unreached.as_str(),
                    LogReadError::Refused(e) if *e != bridge::Error::ActionProhibited => {
                        at.unreached.as_str()
                    }
                    _ => "",
                };
                format!("{label}: tenant {name}'s usage log: {e}{unreached}")
            })?;
        if let Some(note) = &at.read_note {
            eprintln!("{note}");
        }
    }
    rows.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
    Ok(rows.into_iter().map(|(_, _, _, v)| v).collect())
}

#[cfg(test)]
mod tests {
    use super::node_endpoint;

    fn listen(l: &[&str]) -> Vec<String> {
        l.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_node_is_read_at_its_first_tls_listener_on_a_given_address() {
        let (e, mapped) =
            node_endpoint(&listen(&["/run/n1.sock", "127.0.0.1:7400"]), Some("h1")).unwrap();
        assert_eq!((e.as_str(), mapped), ("tls://127.0.0.1:7400", None));
        let (e, _) = node_endpoint(&listen(&["0.0.0.0:7400", "hsm1:7401"]), None).unwrap();
        assert_eq!(e, "tls://hsm1:7401");
        let (e, _) = node_endpoint(&listen(&["[::1]:7400"]), None).unwrap();
        assert_eq!(e, "tls://[::1]:7400");
    }

    #[test]
    fn an_unspecified_listener_is_reached_at_the_announced_host_or_refused() {
        for any in ["0.0.0.0:7400", "[::]:7400"] {
            let (e, mapped) = node_endpoint(&listen(&[any]), Some("hsm2")).unwrap();
            assert_eq!(e, "tls://hsm2:7400");
            assert!(mapped.unwrap().contains("--server hsm2"));
            let why = node_endpoint(&listen(&[any]), None).unwrap_err();
            assert!(why.contains("names no host"), "{why}");
            assert!(why.contains("--endpoint tls://HOST:7400"), "{why}");
        }
        let why = node_endpoint(&listen(&["/run/n1.sock"]), Some("h")).unwrap_err();
        assert!(why.contains("no TLS address (/run/n1.sock)"), "{why}");
        let why = node_endpoint(&[], Some("h")).unwrap_err();
        assert!(why.contains("no TLS address (-)"), "{why}");
    }
}
