//! The server side: any `Backend` served to the clients of a Unix socket.
//!
//! One thread per connection. The sessions a connection opens belong to it: other connections
//! cannot use them (`CKR_SESSION_HANDLE_INVALID`), `C_CloseAllSessions` closes only its own, and
//! they are closed when the connection ends. Peers are checked with `SO_PEERCRED` against an
//! allow-list of uids (default: the server's own uid).
//!
//! # Bounding the peers
//!
//! - **Checked before anything is spent on them.** The accept loop reads the peer's uid, checks
//!   the allow-list and the limits below, and only then starts a thread. The backend of a
//!   connection (for the simulated firmware: a `Device` and its store handles) is opened after
//!   the hello, so a refused peer, or one that never says hello, costs one socket for at most
//!   the handshake timeout.
//! - **Limits** ([`Limits`]): connections in all, connections per peer uid, and the file
//!   descriptors the process may still open under `RLIMIT_NOFILE` (the most one connection was
//!   seen to take, plus a margin, must stay free).
//! - **At a limit, the idle make room.** The connection idle longest is closed to serve the
//!   new one: among the uid's own for the per-uid limit, otherwise among all, preferring the
//!   uid that holds the most. Idle means waiting for the hello, for the backend to open or
//!   for the next request; a connection in the middle of a request (receiving it, running
//!   it, answering it) is never closed for another, since each of those steps is bounded by a
//!   timeout or by the backend.
//!   Only when nothing is idle is the new peer refused: a `Welcome::Refused`, the connection
//!   closed, one log line.
//! - **Timeouts**: the hello within [`Limits::handshake_timeout`]; a request, once its first
//!   byte arrived, and its answer, each within [`Limits::frame_timeout`]; the next request
//!   within [`Limits::idle_timeout`].
//! - **Frames grow as bytes arrive** ([`read_frame`]): a header announcing 16 MiB costs nothing
//!   until the bytes come.
//! - **No accept error loop**: a spare descriptor is held so that at `EMFILE` the loop can
//!   still take the connection off the queue and then close an idle one (or refuse it); other
//!   accept errors back off up to a second, logged once per episode.
//!
//! # One backend per connection
//!
//! The simulated firmware is served with a `Device` per connection ([`Server::per_connection`])
//! rather than one shared by all: in PKCS#11 the login state belongs to the application (one
//! `C_Login` logs in every session of the application on that token), and each connection is
//! one application. A shared `Device` would log every connection — other uids included — in
//! with one client's PIN. What the connections share is the store (token objects, PINs, the
//! lockout counters), as processes do in the embedded placement. The price is a store handle
//! per connection, which is what the limits bound.

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use parking_lot::{Condvar, Mutex};
use rustix::io::Errno;

use crate::call::{Backend, BackendExt, Reply, Request};
use crate::error::{Error, Result};
use crate::types::*;

use super::proto::{
    HELLO_MAX, Hello, MAX_FRAME, Response, VERSION, Welcome, encode_response, read_frame,
    read_frame_max,
};

/// How long the accept loop waits for a connection before it looks at the shutdown flag.
const POLL: Duration = Duration::from_millis(50);
/// The longest the accept loop sleeps after an accept error (it starts at 10 ms and doubles).
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long the accept loop waits for a closed idle connection to release its descriptors.
const EVICT_WAIT: Duration = Duration::from_secs(2);
/// Descriptors kept free beyond one connection's cost: the spare, and the one that counts
/// them.
const FD_MARGIN: usize = 2;
/// Descriptors assumed open besides the connections' (standard streams, the listener, the
/// spare, the log) when deciding whether counting them is needed at all.
const FD_BASE: usize = 64;
/// The listening socket's queue of connections not yet accepted.
const BACKLOG: i32 = 64;
/// At most this many refusal and eviction lines per second; the rest are counted.
const LOG_BURST: u32 = 20;

/// The bounds on the server's peers. The defaults suit one host's applications: a few hundred
/// processes at once, no uid able to take more than half the connections, hello within 5 s,
/// a request within 30 s of its first byte (the client's default round trip), and no idle
/// timeout: an idle connection is closed only to make room at a limit, because closing it
/// costs its application its sessions and login (a server that signs once a night would
/// fail every morning), while idle connections cannot lock anyone out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections at once, all peers together (at least 1).
    pub max_connections: usize,
    /// Connections at once from one peer uid (at least 1).
    pub max_connections_per_uid: usize,
    /// From accept to the end of the hello.
    pub handshake_timeout: Duration,
    /// From a request's first byte to its last, and for its answer to be taken.
    pub frame_timeout: Duration,
    /// Between requests (`None`: for ever; idle connections still make room at a limit).
    pub idle_timeout: Option<Duration>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_connections_per_uid: 128,
            handshake_timeout: Duration::from_secs(5),
            frame_timeout: Duration::from_secs(30),
            idle_timeout: None,
        }
    }
}

/// Creates the socket at `path`, mode 0600. A stale socket file (nobody listening) is replaced;
/// a live one is an error.
pub fn bind(path: &Path) -> Result<UnixListener> {
    bind_with_mode(path, 0o600)
}

/// [`bind`] with another file mode (e.g. 0660 for a group of clients; the peer uid check
/// applies all the same). Bits beyond 0o777 are ignored.
pub fn bind_with_mode(path: &Path, mode: u32) -> Result<UnixListener> {
    let mode = mode & 0o777;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::Config(format!(
                "{}: exists and is not a socket",
                path.display()
            )));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(Error::Config(format!(
                "{}: another daemon is listening there",
                path.display()
            )));
        }
        std::fs::remove_file(path)
            .map_err(|e| Error::Config(format!("{}: cannot remove: {e}", path.display())))?;
    }
    // The socket is created 0600 (umask 0177 while binding), then given its mode.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let listener = listen(path);
    rustix::process::umask(old);
    let listener =
        listener.map_err(|e| Error::Config(format!("{}: cannot listen: {e}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::Config(format!("{}: cannot chmod: {e}", path.display())))?;
    Ok(listener)
}

/// A listening socket at `path` with a short queue ([`BACKLOG`]).
///
/// `std` listens with the system's largest queue (4096 on current Linux): a peer connecting in
/// a loop could park thousands of connections there, and a client arriving behind them would
/// wait for every one to be accepted and dealt with. With a short queue the flood's connects
/// wait in the kernel instead, and a newcomer is at most a queue's length behind.
fn listen(path: &Path) -> std::io::Result<UnixListener> {
    use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::bind(&fd, &SocketAddrUnix::new(path)?)?;
    rustix::net::listen(&fd, BACKLOG)?;
    Ok(UnixListener::from(fd))
}

/// Serves `backend` on `listener` until the process ends, to peers with the server's own uid.
pub fn serve(backend: Arc<dyn Backend>, listener: UnixListener) -> Result<()> {
    Server::new(backend).serve(listener)
}

/// The file descriptors this process has open (the entries of `/proc/self/fd`, less the one
/// that reads them). An error where `/proc` is not mounted, or when no descriptor is left.
pub fn open_descriptors() -> std::io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?
        .count()
        .saturating_sub(1))
}

/// The soft `RLIMIT_NOFILE` of this process (`None`: unlimited).
pub fn descriptor_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Opens the backend of one connection.
pub type BackendFactory = dyn Fn() -> Result<Arc<dyn Backend>> + Send + Sync;

#[derive(Clone)]
enum Source {
    /// One backend for every connection (a loaded real HSM: its own login semantics).
    Shared(Arc<dyn Backend>),
    /// A backend per connection: each connection is one PKCS#11 application, with its own
    /// login state and sessions, as a process is in the embedded placement.
    PerConnection(Arc<BackendFactory>),
}

/// A configurable server.
pub struct Server {
    source: Source,
    allow_uids: Vec<u32>,
    limits: Limits,
    fd_cost: usize,
    shutdown: Arc<AtomicBool>,
}

impl Server {
    /// A server of `backend`, shared by every connection, that allows the server's own uid.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self::with_source(Source::Shared(backend))
    }

    /// A server that opens a backend per connection with `factory` (the simulated firmware:
    /// a `Device` per connection over the shared store, so that each client is an application
    /// of its own, with its own login state). The factory runs only for a peer that was
    /// accepted and said hello.
    pub fn per_connection(
        factory: impl Fn() -> Result<Arc<dyn Backend>> + Send + Sync + 'static,
    ) -> Self {
        Self::with_source(Source::PerConnection(Arc::new(factory)))
    }

    fn with_source(source: Source) -> Self {
        Self {
            source,
            allow_uids: vec![rustix::process::getuid().as_raw()],
            limits: Limits::default(),
            fd_cost: 1,
            shutdown: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Allows exactly these uids (replacing the default).
    pub fn allow_uids(mut self, uids: impl IntoIterator<Item = u32>) -> Self {
        self.allow_uids = uids.into_iter().collect();
        self
    }

    /// Bounds the peers by `limits` instead of [`Limits::default`] (counts below 1 count as 1).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Limits {
            max_connections: limits.max_connections.max(1),
            max_connections_per_uid: limits.max_connections_per_uid.max(1),
            ..limits
        };
        self
    }

    /// The descriptors one connection is expected to take (its socket and its backend's
    /// files) until one is measured; default 1. The server keeps this many (plus a margin)
    /// free when it admits a peer, and raises the figure when a connection takes more.
    pub fn descriptors_per_connection(mut self, n: usize) -> Self {
        self.fd_cost = n.max(1);
        self
    }

    /// The flag that stops [`Server::serve`]: set it (from a signal handler, another thread)
    /// and the server stops accepting, lets in-flight requests finish, closes every
    /// connection's sessions and returns.
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    /// Accepts connections until the shutdown flag is set.
    pub fn serve(&self, listener: UnixListener) -> Result<()> {
        let socket_err = |e: std::io::Error| Error::Config(format!("socket: {e}"));
        listener.set_nonblocking(false).map_err(socket_err)?;
        // accept(2) honours SO_RCVTIMEO: it waits at most POLL, so the flag is seen.
        rustix::net::sockopt::set_socket_timeout(
            &listener,
            rustix::net::sockopt::Timeout::Recv,
            Some(POLL),
        )
        .map_err(|e| socket_err(e.into()))?;
        let shared = Arc::new(Shared {
            source: self.source.clone(),
            limits: self.limits.clone(),
            registry: Registry::new(self.fd_cost),
            log: Mutex::new(LogBudget::default()),
        });
        let mut acceptor = Acceptor {
            shared: &shared,
            allow_uids: &self.allow_uids,
            spare: spare_descriptor(),
            backoff: None,
            workers: Vec::new(),
        };
        while !self.shutdown.load(Ordering::SeqCst) {
            acceptor.step(&listener);
        }
        let workers = std::mem::take(&mut acceptor.workers);
        log::info!(
            "remote server: shutting down ({} connections)",
            shared.registry.len()
        );
        // Wake the readers: a connection waiting for its next request sees the end of its
        // stream; one in the middle of a request finishes it and answers first.
        shared.registry.shutdown_reads();
        for h in workers {
            let _ = h.join();
        }
        Ok(())
    }
}

/// What the accept loop and the connection threads share.
struct Shared {
    source: Source,
    limits: Limits,
    registry: Registry,
    /// The lines about peers (refused, closed), shared by the accept loop and the connections.
    log: Mutex<LogBudget>,
}

/// The accept loop's state.
struct Acceptor<'a> {
    shared: &'a Arc<Shared>,
    allow_uids: &'a [u32],
    /// A descriptor held in reserve: given up to accept a connection at `EMFILE`.
    spare: Option<File>,
    /// The sleep after the last accept error and how many errors in a row (`None`: none).
    backoff: Option<(Duration, u64)>,
    workers: Vec<JoinHandle<()>>,
}

fn spare_descriptor() -> Option<File> {
    File::open("/dev/null").ok()
}

/// Whether an error says the process (`EMFILE`) or the system (`ENFILE`) is out of
/// descriptors.
fn out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(Errno::from_io_error(e), Some(Errno::MFILE | Errno::NFILE))
}

impl Acceptor<'_> {
    /// Accepts and admits at most one connection.
    fn step(&mut self, listener: &UnixListener) {
        let accepted = match listener.accept() {
            Err(e) if out_of_descriptors(&e) && self.spare.is_some() => {
                // Give up the spare to take the connection off the queue; admitting it will
                // close an idle connection or refuse it, and the spare comes back after.
                self.spare = None;
                listener.accept()
            }
            other => other,
        };
        match accepted {
            Ok((stream, _)) => {
                if let Some((_, errors)) = self.backoff.take() {
                    log::warn!("remote server: accepting again after {errors} failed accepts");
                }
                self.admit(stream);
                if self.spare.is_none() {
                    self.spare = spare_descriptor();
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                let (sleep, errors) = match self.backoff {
                    None => {
                        log::warn!("remote server: accept: {e}; backing off until it succeeds");
                        (Duration::from_millis(10), 1)
                    }
                    Some((sleep, errors)) => ((sleep * 2).min(MAX_BACKOFF), errors + 1),
                };
                self.backoff = Some((sleep, errors));
                std::thread::sleep(sleep);
                if self.spare.is_none() {
                    self.spare = spare_descriptor();
                }
            }
        }
        self.workers.retain(|h| !h.is_finished());
        self.shared.log.lock().tick();
    }

    /// Checks a new peer and starts its connection, or refuses it.
    fn admit(&mut self, stream: UnixStream) {
        let peer = match rustix::net::sockopt::socket_peercred(&stream) {
            Ok(c) => Peer {
                uid: c.uid.as_raw(),
                pid: c.pid.as_raw_nonzero().get(),
            },
            Err(e) => {
                self.refuse(stream, CKR_FUNCTION_REJECTED, || {
                    format!("refused a peer whose credentials cannot be read: {e}")
                });
                return;
            }
        };
        if !self.allow_uids.contains(&peer.uid) {
            self.refuse(stream, CKR_FUNCTION_REJECTED, || {
                format!("refused {peer}: not in the allow-list (--allow-uid)")
            });
            return;
        }
        if let Err(why) = self.make_room(peer) {
            self.refuse(stream, CKR_DEVICE_MEMORY, || {
                format!("refused {peer}: {why}")
            });
            return;
        }
        let stream = Arc::new(stream);
        let id = self.shared.registry.insert(peer, stream.clone());
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("ferrohsm-conn".into())
            .spawn(move || connection(&shared, id, peer, &stream));
        match spawned {
            Ok(h) => self.workers.push(h),
            Err(e) => {
                self.shared.registry.remove(id);
                log::error!("remote server: refused {peer}: cannot start a thread: {e}");
            }
        }
    }

    /// Closes idle connections until `peer` fits every limit; the limit it could not fit
    /// otherwise.
    fn make_room(&mut self, peer: Peer) -> core::result::Result<(), String> {
        let limits = &self.shared.limits;
        let registry = &self.shared.registry;
        // Each round closes one connection; a handful is more than any one limit needs.
        for _ in 0..8 {
            let (scope, why) = if registry.count(Some(peer.uid)) >= limits.max_connections_per_uid {
                (
                    Some(peer.uid),
                    format!(
                        "uid {} has {} connections (max_connections_per_uid)",
                        peer.uid, limits.max_connections_per_uid
                    ),
                )
            } else if registry.len() >= limits.max_connections {
                (
                    None,
                    format!(
                        "{} connections open (max_connections)",
                        limits.max_connections
                    ),
                )
            } else if let Some(short) = registry.descriptors_short() {
                (None, short)
            } else {
                return Ok(());
            };
            let Some(victim) = registry.evict(scope) else {
                return Err(format!("{why}, none of them idle"));
            };
            self.shared.log.lock().line(|| {
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

    /// Refuses a peer: one frame saying why (never blocking the loop), the connection closed,
    /// one log line.
    fn refuse(&mut self, stream: UnixStream, rv: CK_RV, why: impl FnOnce() -> String) {
        self.shared.log.lock().line(why);
        if stream.set_nonblocking(true).is_ok() {
            let _ = send_frame(&stream, &Welcome::Refused(rv).encode(), None);
        }
    }
}

/// The warnings about peers (refusals, closed connections), at most [`LOG_BURST`] a second; the
/// rest are counted and the count is logged once the second is over, so that a peer that
/// misbehaves on purpose cannot flood the log.
#[derive(Default)]
struct LogBudget {
    window: Option<Instant>,
    lines: u32,
    suppressed: u64,
}

impl LogBudget {
    fn line(&mut self, text: impl FnOnce() -> String) {
        self.tick();
        self.window.get_or_insert_with(Instant::now);
        if self.lines < LOG_BURST {
            self.lines += 1;
            log::warn!("remote server: {}", text());
        } else {
            self.suppressed += 1;
        }
    }

    fn tick(&mut self) {
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

/// Who is at the other end of a connection (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Peer {
    uid: u32,
    pid: i32,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "uid {} (pid {})", self.uid, self.pid)
    }
}

/// Where a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Accepted, waiting for the hello or for its backend to open: idle.
    Hello,
    /// Waiting for the next request: idle.
    Idle,
    /// Receiving, running or answering a request: never closed for another peer.
    Working,
}

struct Entry {
    peer: Peer,
    stream: Arc<UnixStream>,
    phase: Phase,
    /// When it entered its phase.
    since: Instant,
    evicted: bool,
    /// Whether its backend is open (until then, the descriptors it will take are reserved).
    opened: bool,
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
struct Registry {
    table: Mutex<Table>,
    /// Signalled when a connection is removed or evicted, and when a backend has opened.
    changed: Condvar,
}

impl Registry {
    fn new(fd_cost: usize) -> Self {
        Self {
            table: Mutex::new(Table {
                fd_cost,
                ..Table::default()
            }),
            changed: Condvar::new(),
        }
    }

    fn len(&self) -> usize {
        self.table.lock().conns.len()
    }

    /// Connections of `uid`, or of everyone.
    fn count(&self, uid: Option<u32>) -> usize {
        let t = self.table.lock();
        match uid {
            Some(u) => t.conns.values().filter(|e| e.peer.uid == u).count(),
            None => t.conns.len(),
        }
    }

    fn insert(&self, peer: Peer, stream: Arc<UnixStream>) -> u64 {
        let mut t = self.table.lock();
        t.next_id += 1;
        let id = t.next_id;
        t.conns.insert(
            id,
            Entry {
                peer,
                stream,
                phase: Phase::Hello,
                since: Instant::now(),
                evicted: false,
                opened: false,
            },
        );
        id
    }

    /// Moves a connection to `phase`; `false` if it was closed to make room (it must end).
    fn enter(&self, id: u64, phase: Phase) -> bool {
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

    /// Records that connection `id` has its backend (its descriptors are taken, no longer
    /// reserved).
    fn opened(&self, id: u64) {
        if let Some(e) = self.table.lock().conns.get_mut(&id) {
            e.opened = true;
        }
    }

    fn evicted(&self, id: u64) -> bool {
        self.table.lock().conns.get(&id).is_none_or(|e| e.evicted)
    }

    fn remove(&self, id: u64) {
        self.table.lock().conns.remove(&id);
        self.changed.notify_all();
    }

    /// Closes the connection idle longest — of `uid` if given, else preferring the uid that
    /// holds the most connections — by shutting its socket down; its thread then ends.
    fn evict(&self, uid: Option<u32>) -> Option<Evicted> {
        let mut t = self.table.lock();
        let mut per_uid: HashMap<u32, usize> = HashMap::new();
        for e in t.conns.values() {
            *per_uid.entry(e.peer.uid).or_default() += 1;
        }
        let now = Instant::now();
        let (id, idle) = t
            .conns
            .iter()
            .filter(|(_, e)| !e.evicted && e.phase != Phase::Working)
            .filter(|(_, e)| uid.is_none_or(|u| e.peer.uid == u))
            .map(|(id, e)| {
                let held = per_uid.get(&e.peer.uid).copied().unwrap_or(0);
                (held, now.saturating_duration_since(e.since), *id)
            })
            .max()
            .map(|(_, idle, id)| (id, idle))?;
        let e = t.conns.get_mut(&id)?;
        e.evicted = true;
        let _ = e.stream.shutdown(std::net::Shutdown::Both);
        let victim = Evicted {
            id,
            peer: e.peer,
            idle,
        };
        // A victim waiting for its turn to open a backend learns it at once.
        self.changed.notify_all();
        Some(victim)
    }

    /// Waits for connection `id`'s turn to open its backend; `false` (and no turn) if it was
    /// evicted meanwhile. A `true` must be followed by [`Registry::end_open`].
    fn begin_open(&self, id: u64) -> bool {
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
    fn end_open(&self) {
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
    fn note_cost(&self, n: usize) {
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
    fn shutdown_reads(&self) {
        for e in self.table.lock().conns.values() {
            let _ = e.stream.shutdown(std::net::Shutdown::Read);
        }
    }
}

/// Sends one frame without raising `SIGPIPE` on a closed peer; with a deadline, each write
/// waits only until then.
pub(super) fn send_frame(
    stream: &UnixStream,
    payload: &[u8],
    until: Option<Instant>,
) -> std::io::Result<()> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|_| payload.len() <= MAX_FRAME)
        .ok_or(ErrorKind::InvalidInput)?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    let mut rest = frame.as_slice();
    while !rest.is_empty() {
        if let Some(until) = until {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ErrorKind::TimedOut.into());
            }
            stream.set_write_timeout(Some(left))?;
        }
        match rustix::net::send(stream, rest, rustix::net::SendFlags::NOSIGNAL) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => rest = rest.get(n..).unwrap_or_default(),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Sends all of `payload` as one frame without raising `SIGPIPE` on a closed peer.
pub(super) fn send_all(stream: &UnixStream, payload: &[u8]) -> std::io::Result<()> {
    send_frame(stream, payload, None)
}

/// A stream whose reads all end by one deadline (`SO_RCVTIMEO` set to what is left before
/// each read), so that a peer trickling bytes cannot stretch a frame past it.
struct Timed<'a> {
    stream: &'a UnixStream,
    until: Instant,
}

impl Read for Timed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut s = self.stream;
        s.read(buf)
    }
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Waits until the next request's first byte is there (`Ok(true)`) or the stream ended
/// (`Ok(false)`); a timeout is an error.
fn wait_request(stream: &UnixStream, timeout: Option<Duration>) -> std::io::Result<bool> {
    stream.set_read_timeout(timeout.filter(|t| !t.is_zero()))?;
    let mut byte = [0u8; 1];
    loop {
        match rustix::net::recv(stream, &mut byte, rustix::net::RecvFlags::PEEK) {
            Ok((n, _)) => return Ok(n > 0),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// How a connection ended.
enum End {
    /// The peer closed it, or the server is shutting down.
    Closed,
    /// Closed to make room for another peer (logged by the accept loop).
    Evicted,
    /// No hello in time.
    NoHello,
    /// A request or its answer did not get through in time.
    SlowFrame,
    /// Idle past the idle timeout.
    Idle,
    /// Refused after the hello (logged as `warn` with the reason).
    Refused(String),
    /// The backend could not be opened.
    NoBackend(Error),
    /// A frame that does not decode.
    Malformed,
    /// Another I/O error.
    Io(std::io::Error),
}

/// Runs one connection to its end, then closes its sessions and leaves the registry.
fn connection(shared: &Shared, id: u64, peer: Peer, stream: &UnixStream) {
    let mut conn = Connection {
        backend: None,
        sessions: HashMap::new(),
    };
    let end = conn.run(shared, id, stream);
    let end = match end {
        End::Closed | End::Io(_) if shared.registry.evicted(id) => End::Evicted,
        other => other,
    };
    let limits = &shared.limits;
    let warn = |text: String| shared.log.lock().line(|| text);
    match end {
        End::Closed | End::Evicted => {}
        End::NoHello => warn(format!(
            "closed connection #{id} of {peer}: no hello within {}s",
            limits.handshake_timeout.as_secs_f64()
        )),
        End::SlowFrame => warn(format!(
            "closed connection #{id} of {peer}: a request or its answer took over {}s",
            limits.frame_timeout.as_secs_f64()
        )),
        End::Idle => log::info!(
            "remote server: closed connection #{id} of {peer}: idle for {}s",
            limits.idle_timeout.unwrap_or_default().as_secs_f64()
        ),
        End::Refused(why) => warn(format!("refused {peer} (#{id}): {why}")),
        End::NoBackend(e) => {
            log::error!("remote server: refused {peer} (#{id}): cannot open the backend: {e}");
        }
        End::Malformed => warn(format!(
            "closed connection #{id} of {peer}: a malformed or oversized frame"
        )),
        End::Io(e) => log::info!("remote server: connection #{id} of {peer} closed: {e}"),
    }
    if let Some(backend) = conn.backend.take() {
        for (s, _) in std::mem::take(&mut conn.sessions) {
            let _ = backend.close_session(s);
        }
    }
    shared.registry.remove(id);
}

/// One client connection and the sessions it owns (session → slot).
struct Connection {
    backend: Option<Arc<dyn Backend>>,
    sessions: HashMap<SessionHandle, SlotId>,
}

impl Connection {
    fn run(&mut self, shared: &Shared, id: u64, stream: &UnixStream) -> End {
        let limits = &shared.limits;
        let registry = &shared.registry;
        // Hello, within the handshake timeout from accept.
        let mut hello_in = Timed {
            stream,
            until: Instant::now() + limits.handshake_timeout,
        };
        let hello = match read_frame_max(&mut hello_in, HELLO_MAX) {
            Ok(Some(f)) => f,
            Ok(None) => return End::Closed,
            Err(e) if timed_out(&e) => return End::NoHello,
            Err(e) if e.kind() == ErrorKind::InvalidData => return End::Malformed,
            Err(e) => return End::Io(e),
        };
        let answer_by = || Some(Instant::now() + limits.frame_timeout);
        let Ok(hello) = Hello::decode(&hello) else {
            return End::Malformed;
        };
        if hello.min > VERSION || hello.max < VERSION {
            let _ = send_frame(
                stream,
                &Welcome::Refused(CKR_DEVICE_ERROR).encode(),
                answer_by(),
            );
            return End::Refused(format!(
                "it speaks protocol versions {}..={}, this server {VERSION}",
                hello.min, hello.max
            ));
        }
        // Accepted: only now is the backend opened. Until it is, the connection counts as
        // idle (it may wait for other connections' backends to open: a flood of hellos must
        // not make every place busy).
        match open_backend(shared, id) {
            Ok(None) => return End::Evicted,
            Ok(Some(b)) => {
                self.backend = Some(b);
                registry.opened(id);
            }
            Err(e) => {
                let _ = send_frame(stream, &Welcome::Refused(e.rv()).encode(), answer_by());
                return End::NoBackend(e);
            }
        }
        if let Err(e) = send_frame(stream, &Welcome::Accepted(VERSION).encode(), answer_by()) {
            return if timed_out(&e) {
                End::SlowFrame
            } else {
                End::Io(e)
            };
        }
        loop {
            if !registry.enter(id, Phase::Idle) {
                return End::Evicted;
            }
            match wait_request(stream, limits.idle_timeout) {
                Ok(true) => {}
                Ok(false) => return End::Closed,
                Err(e) if timed_out(&e) => return End::Idle,
                Err(e) => return End::Io(e),
            }
            if !registry.enter(id, Phase::Working) {
                return End::Evicted;
            }
            let mut input = Timed {
                stream,
                until: Instant::now() + limits.frame_timeout,
            };
            let frame = match read_frame(&mut input) {
                Ok(Some(f)) => f,
                Ok(None) => return End::Closed,
                Err(e) if timed_out(&e) => return End::SlowFrame,
                Err(e) if e.kind() == ErrorKind::InvalidData => return End::Malformed,
                Err(e) => return End::Io(e),
            };
            let Ok(request) = Request::decode(&frame) else {
                return End::Malformed;
            };
            drop(frame);
            let response = self.handle(request);
            if let Err(e) = send_frame(stream, &encode_response(&response), answer_by()) {
                return if timed_out(&e) {
                    End::SlowFrame
                } else {
                    End::Io(e)
                };
            }
        }
    }

    /// Checks ownership, runs the request, keeps the session table.
    fn handle(&mut self, mut request: Request) -> Response {
        let Some(backend) = self.backend.clone() else {
            return Err(Error::DeviceError);
        };
        if let Some(s) = request.session_mut() {
            if !self.sessions.contains_key(s) {
                return Err(Error::SessionHandleInvalid);
            }
        }
        match request {
            // A blocking wait would hold the connection (and its thread) for as long as no
            // slot changes; the client never forwards one.
            Request::WaitForSlotEvent { flags } if flags & CKF_DONT_BLOCK == 0 => {
                Err(Error::FunctionNotSupported)
            }
            Request::OpenSession { slot, flags } => {
                let s = backend.open_session(slot, flags)?;
                self.sessions.insert(s, slot);
                Ok(Reply::Session(s))
            }
            Request::CloseSession { session } => {
                let r = backend.close_session(session);
                if matches!(
                    r,
                    Ok(()) | Err(Error::SessionHandleInvalid | Error::SessionClosed)
                ) {
                    self.sessions.remove(&session);
                }
                r.map(|()| Reply::Unit(()))
            }
            Request::CloseAllSessions { slot } => {
                // This connection's sessions only: other clients are other applications.
                if !backend.slot_list(false)?.contains(&slot) {
                    return Err(Error::SlotIdInvalid);
                }
                let mine: Vec<SessionHandle> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| **s == slot)
                    .map(|(h, _)| *h)
                    .collect();
                for s in mine {
                    let _ = backend.close_session(s);
                    self.sessions.remove(&s);
                }
                Ok(Reply::Unit(()))
            }
            mut other => {
                let session = other.session_mut().copied();
                let r = other.serve(|call| backend.call(call));
                if let (Some(s), Err(Error::SessionHandleInvalid | Error::SessionClosed)) =
                    (session, &r)
                {
                    self.sessions.remove(&s);
                }
                r
            }
        }
    }
}

/// Opens connection `id`'s backend: a factory's one at a time, counting the descriptors it
/// took. `None` if the connection was closed to make room meanwhile.
fn open_backend(shared: &Shared, id: u64) -> Result<Option<Arc<dyn Backend>>> {
    match &shared.source {
        Source::Shared(b) => Ok(Some(b.clone())),
        Source::PerConnection(factory) => {
            if !shared.registry.begin_open(id) {
                return Ok(None);
            }
            // Ends the turn however the factory returns (a panic included).
            struct Turn<'a>(&'a Registry);
            impl Drop for Turn<'_> {
                fn drop(&mut self) {
                    self.0.end_open();
                }
            }
            let _turn = Turn(&shared.registry);
            let before = open_descriptors().ok();
            let backend = factory()?;
            if let (Some(before), Ok(after)) = (before, open_descriptors()) {
                // Its socket, and what the backend opened.
                shared.registry.note_cost(after.saturating_sub(before) + 1);
            }
            Ok(Some(backend))
        }
    }
}

/// One request frame in, one response frame out, as a connection runs it (without the
/// per-connection session table): decodes, calls `backend`, encodes. A malformed frame is an
/// error (the server closes the connection on it). For fuzzing and for embedding the protocol
/// in other transports.
pub fn respond(backend: &dyn Backend, frame: &[u8]) -> Result<Vec<u8>> {
    let request = Request::decode(frame)?;
    Ok(encode_response(&request.serve(|call| backend.call(call))))
}
