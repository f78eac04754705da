//! The connection registry: every connection with its peer, phase and last activity, the
//! limits counted over them, and the eviction of idle connections to make room
//! ([`make_room`]); the rate-limited log of refusals.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::{
    EVICT_WAIT, FD_BASE, FD_MARGIN, LOG_BURST, Shared, descriptor_limit, open_descriptors,
    out_of_descriptors,
};

/// Closes idle connections until `peer` fits every limit (its own, the total, the
/// descriptors); the limit it could not fit otherwise. Called with [`Shared::admission`] held.
///
/// Connections whose TLS handshake has not completed are counted apart: at most
/// `max_connections` of them, making room only among themselves, so that a flood of connects
/// never closes an application's connection; an authenticated peer (a uid, a certificate
/// identity) counts against `max_connections` with the other authenticated ones and makes
/// room among them.
pub(super) fn make_room(shared: &Shared, peer: &Peer) -> Result<(), String> {
    let limits = &shared.limits;
    let registry = &shared.registry;
    let unverified = matches!(peer.key, Key::Unverified(_));
    let (class, total_why) = if unverified {
        (Scope::Unverified, "TLS handshakes in progress")
    } else {
        (Scope::Verified, "connections open")
    };
    // Each round closes one connection; a handful is more than any one limit needs.
    for _ in 0..8 {
        let (scope, why) =
            if registry.count(Scope::Key(&peer.key)) >= limits.max_connections_per_uid {
                (
                    Scope::Key(&peer.key),
                    format!(
                        "{} has {} connections (max_connections_per_uid)",
                        peer.key, limits.max_connections_per_uid
                    ),
                )
            } else if registry.count(class) >= limits.max_connections {
                (
                    class,
                    format!("{} {total_why} (max_connections)", limits.max_connections),
                )
            } else if let Some(short) = registry.descriptors_short() {
                (
                    if unverified {
                        Scope::Unverified
                    } else {
                        Scope::All
                    },
                    short,
                )
            } else {
                return Ok(());
            };
        let Some(victim) = registry.evict(scope) else {
            return Err(format!("{why}, none of them idle"));
        };
        shared.log.lock().line(|| {
            format!(
                "closed the idle connection #{} of {} (idle {:.1}s) to serve {peer}: {why}",
                victim.id,
                victim.peer,
                victim.idle.as_secs_f64()
            )
        });
        if !registry.wait_gone(victim.id, EVICT_WAIT) {
            return Err(format!("{why}; an idle connection is slow to close"));
        }
    }
    Err("still at a limit after closing idle connections".into())
}

/// The warnings about peers (refusals, closed connections), at most [`LOG_BURST`] a second; the
/// rest are counted and the count is logged once the second is over, so that a peer that
/// misbehaves on purpose cannot flood the log.
#[derive(Default)]
pub(super) struct LogBudget {
    window: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

impl LogBudget {
    pub(super) fn line(&mut self, text: impl FnOnce() -> String) {
        self.tick();
        self.window.get_or_insert_with(Instant::now);
        if self.lines < LOG_BURST {
            self.lines += 1;
            log::warn!("remote server: {}", text());
        } else {
            self.suppressed += 1;
        }
    }

    pub(super) fn tick(&mut self) {
        let Some(start) = self.window else { return };
        if start.elapsed() < Duration::from_secs(1) {
            return;
        }
        if self.suppressed > 0 {
            log::warn!(
                "remote server: {} more refused peers or closed connections in the last second, not logged one by one",
                self.suppressed
            );
        }
        *self = Self::default();
    }
}

/// A peer's verified identity: what the server logs, limits connections by and authorizes
/// with.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A local process's uid (`SO_PEERCRED` on the Unix socket).
    Uid(u32),
    /// The identity of a client certificate verified by the TLS handshake (its common name,
    /// the NAME of `ferrohsm tls issue --name`; `super::tls::identity`).
    Cert(String),
}

impl Identity {
    /// The identity as tenants grant it: a certificate's NAME, or `uid:N`.
    pub fn grant_name(&self) -> String {
        match self {
            Self::Uid(uid) => format!("uid:{uid}"),
            Self::Cert(name) => name.clone(),
        }
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Uid(uid) => write!(f, "uid {uid}"),
            // Only well-formed identities exist (letters, digits, '.', '_', '-').
            Self::Cert(name) => write!(f, "identity {name}"),
        }
    }
}

/// What a connection counts under for the per-peer limit.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum Key {
    /// Authenticated.
    Id(Identity),
    /// A TCP peer whose TLS handshake has not completed: only its address is known.
    Unverified(IpAddr),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(id) => id.fmt(f),
            Self::Unverified(ip) => write!(f, "unauthenticated {ip}"),
        }
    }
}

/// Which connections may be closed to make room.
#[derive(Clone, Copy)]
enum Scope<'a> {
    /// Those of one peer (its own limit).
    Key(&'a Key),
    /// Those whose TLS handshake has not completed (room for another such peer).
    Unverified,
    /// The authenticated ones (room for an authenticated peer at the total limit).
    Verified,
    /// Any (descriptors for an authenticated peer).
    All,
}

impl Scope<'_> {
    fn holds(&self, key: &Key) -> bool {
        match self {
            Self::Key(k) => *k == key,
            Self::Unverified => matches!(key, Key::Unverified(_)),
            Self::Verified => !matches!(key, Key::Unverified(_)),
            Self::All => true,
        }
    }
}

/// Where the peer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum At {
    /// A local process.
    Pid(i32),
    /// A network address.
    Addr(SocketAddr),
}

/// Who is at the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Peer {
    pub(super) key: Key,
    pub(super) at: At,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.key, self.at) {
            (Key::Unverified(_), At::Addr(addr)) => write!(f, "unauthenticated {addr}"),
            (key, At::Pid(pid)) => write!(f, "{key} (pid {pid})"),
            (key, At::Addr(addr)) => write!(f, "{key} ({addr})"),
        }
    }
}

/// How the registry closes a connection from another thread.
pub(super) enum Closer {
    Unix(Arc<UnixStream>),
    Tcp(TcpStream),
}

impl Closer {
    fn shutdown(&self, how: std::net::Shutdown) {
        let _ = match self {
            Self::Unix(s) => s.shutdown(how),
            Self::Tcp(s) => s.shutdown(how),
        };
    }
}

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Accepted, waiting for the hello or for its backend to open: idle.
    Hello,
    /// Waiting for the next request: idle.
    Idle,
    /// Receiving, running or answering a request: never closed for another peer.
    Working,
}

struct Entry {
    peer: Peer,
    closer: Closer,
    phase: Phase,
    /// When it entered its phase.
    since: Instant,
    evicted: bool,
    /// Whether its backend is open (until then, the descriptors it will take are reserved).
    opened: bool,
    /// The application it serves, once open ([`App::serial`]).
    app: Option<u64>,
}

struct Evicted {
    id: u64,
    peer: Peer,
    idle: Duration,
}

#[derive(Default)]
struct Table {
    conns: HashMap<u64, Entry>,
    next_id: u64,
    /// The most descriptors one connection was seen to take.
    fd_cost: usize,
    /// A backend is being opened (they are opened one at a time, so that the descriptors one
    /// takes can be counted).
    opening: bool,
}

/// The live connections, their phases, and the descriptors they cost.
pub(super) struct Registry {
    table: Mutex<Table>,
    /// Signalled when a connection is removed or evicted, and when a backend has opened.
    changed: Condvar,
}

impl Registry {
    pub(super) fn new(fd_cost: usize) -> Self {
        Self {
            table: Mutex::new(Table {
                fd_cost,
                ..Table::default()
            }),
            changed: Condvar::new(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.table.lock().conns.len()
    }

    /// Connections in `scope`.
    fn count(&self, scope: Scope<'_>) -> usize {
        self.table
            .lock()
            .conns
            .values()
            .filter(|e| scope.holds(&e.peer.key))
            .count()
    }

    /// Enters connection `id` under the identity its TLS handshake proved; `false` if it was
    /// closed to make room meanwhile.
    pub(super) fn identify(&self, id: u64, peer: Peer) -> bool {
        match self.table.lock().conns.get_mut(&id) {
            Some(e) if !e.evicted => {
                e.peer = peer;
                true
            }
            _ => false,
        }
    }

    pub(super) fn insert(&self, peer: Peer, closer: Closer) -> u64 {
        let mut t = self.table.lock();
        t.next_id += 1;
        let id = t.next_id;
        t.conns.insert(
            id,
            Entry {
                peer,
                closer,
                phase: Phase::Hello,
                since: Instant::now(),
                evicted: false,
                opened: false,
                app: None,
            },
        );
        id
    }

    /// Moves a connection to `phase`; `false` if it was closed to make room (it must end).
    pub(super) fn enter(&self, id: u64, phase: Phase) -> bool {
        let mut t = self.table.lock();
        match t.conns.get_mut(&id) {
            Some(e) if !e.evicted => {
                e.phase = phase;
                e.since = Instant::now();
                true
            }
            _ => false,
        }
    }

    /// Records that connection `id` serves application `app` (its descriptors are taken, no
    /// longer reserved).
    pub(super) fn opened(&self, id: u64, app: u64) {
        if let Some(e) = self.table.lock().conns.get_mut(&id) {
            e.opened = true;
            e.app = Some(app);
        }
    }

    pub(super) fn evicted(&self, id: u64) -> bool {
        self.table.lock().conns.get(&id).is_none_or(|e| e.evicted)
    }

    pub(super) fn remove(&self, id: u64) {
        self.table.lock().conns.remove(&id);
        self.changed.notify_all();
    }

    /// Closes the connection idle longest in `scope`, preferring the peer that holds the most
    /// connections and, among its connections, one whose application keeps others (closing
    /// it costs the application nothing), by shutting its socket down; its thread then ends.
    fn evict(&self, scope: Scope<'_>) -> Option<Evicted> {
        let mut t = self.table.lock();
        let mut per_key: HashMap<&Key, usize> = HashMap::new();
        let mut per_app: HashMap<u64, usize> = HashMap::new();
        for e in t.conns.values() {
            *per_key.entry(&e.peer.key).or_default() += 1;
            if let Some(app) = e.app {
                *per_app.entry(app).or_default() += 1;
            }
        }
        let now = Instant::now();
        let (id, idle) = t
            .conns
            .iter()
            .filter(|(_, e)| !e.evicted && e.phase != Phase::Working)
            .filter(|(_, e)| scope.holds(&e.peer.key))
            .map(|(id, e)| {
                let held = per_key.get(&e.peer.key).copied().unwrap_or(0);
                let spare = e
                    .app
                    .is_some_and(|a| per_app.get(&a).copied().unwrap_or(0) > 1);
                (held, spare, now.saturating_duration_since(e.since), *id)
            })
            .max()
            .map(|(_, _, idle, id)| (id, idle))?;
        let e = t.conns.get_mut(&id)?;
        e.evicted = true;
        e.closer.shutdown(std::net::Shutdown::Both);
        let victim = Evicted {
            id,
            peer: e.peer.clone(),
            idle,
        };
        // A victim waiting for its turn to open a backend learns it at once.
        self.changed.notify_all();
        Some(victim)
    }

    /// Waits for connection `id`'s turn to open its backend; `false` (and no turn) if it was
    /// evicted meanwhile. A `true` must be followed by [`Registry::end_open`].
    pub(super) fn begin_open(&self, id: u64) -> bool {
        let mut t = self.table.lock();
        loop {
            if t.conns.get(&id).is_none_or(|e| e.evicted) {
                return false;
            }
            if !t.opening {
                t.opening = true;
                return true;
            }
            self.changed.wait(&mut t);
        }
    }

    /// Ends a turn begun by [`Registry::begin_open`].
    pub(super) fn end_open(&self) {
        self.table.lock().opening = false;
        self.changed.notify_all();
    }

    /// Waits until connection `id` has ended (its backend closed), at most `timeout`.
    fn wait_gone(&self, id: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut t = self.table.lock();
        while t.conns.contains_key(&id) {
            if self.changed.wait_until(&mut t, deadline).timed_out() {
                return !t.conns.contains_key(&id);
            }
        }
        true
    }

    /// Records that one connection took `n` descriptors.
    pub(super) fn note_cost(&self, n: usize) {
        let mut t = self.table.lock();
        t.fd_cost = t.fd_cost.max(n);
    }

    /// Why one more connection would not fit in the descriptors left under `RLIMIT_NOFILE`,
    /// or `None` if it fits (or the count is unknown: no `/proc`, no limit). Connections
    /// admitted whose backend is not open yet count with what it will take.
    fn descriptors_short(&self) -> Option<String> {
        let limit = usize::try_from(descriptor_limit()?).ok()?;
        let need = {
            let t = self.table.lock();
            // Far from the limit (every connection at twice its cost, and a base of
            // FD_BASE): no need to count.
            let bound = (t.conns.len() + 1) * t.fd_cost * 2 + FD_BASE;
            if bound < limit {
                return None;
            }
            let pending = t.conns.values().filter(|e| !e.opened).count();
            t.fd_cost + pending * t.fd_cost.saturating_sub(1) + FD_MARGIN
        };
        let free = match open_descriptors() {
            Ok(open) => limit.saturating_sub(open),
            Err(e) if out_of_descriptors(&e) => 0,
            Err(_) => return None,
        };
        (free < need).then(|| {
            format!(
                "{free} descriptors left under RLIMIT_NOFILE {limit}, {need} needed to admit one more"
            )
        })
    }

    /// Shuts the read side of every connection: idle ones end, working ones answer first.
    pub(super) fn shutdown_reads(&self) {
        for e in self.table.lock().conns.values() {
            e.closer.shutdown(std::net::Shutdown::Read);
        }
    }
}

/// The identity connection `id` was admitted under (`None`: it is gone).
pub(super) fn peer_identity(registry: &Registry, id: u64) -> Option<Identity> {
    match registry.table.lock().conns.get(&id).map(|e| &e.peer.key) {
        Some(Key::Id(identity)) => Some(identity.clone()),
        _ => None,
    }
}
