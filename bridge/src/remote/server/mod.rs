//! The server side: any `Backend` served to the clients of a Unix socket and of TLS listeners.
//!
//! One thread per connection. Connections are grouped into applications: the sessions an
//! application opens belong to it (other applications cannot use them:
//! `CKR_SESSION_HANDLE_INVALID`), `C_CloseAllSessions` closes only its own, and they are closed
//! when its last connection ends.
//!
//! # Who the peer is
//!
//! Every connection has a peer [`Identity`], what the server logs, limits and authorizes by:
//! on the Unix socket the peer's uid (`SO_PEERCRED`, checked against an allow-list of uids,
//! default the server's own); on a TLS listener ([`Listener::Tls`], `super::tls`) the identity
//! in the client certificate the TLS 1.3 handshake verified (chaining to the client CA, on the
//! allow-list of identities if there is one). Until its handshake is done a TLS peer is only
//! an address: it counts against the limits (per address, and in all) but reaches nothing, and
//! a peer whose handshake fails gets nothing but the TLS alert and a closed connection.
//!
//! # Bounding the peers
//!
//! - **Checked before anything is spent on them.** The accept loop reads the peer's uid, checks
//!   the allow-list and the limits below, and only then starts a thread (a TLS peer: the limits,
//!   then a thread for its handshake, then the limits of its identity). The backend of a
//!   connection (for the simulated firmware: a `Device` and its store handles) is opened after
//!   the hello, so a refused peer, or one that never completes the TLS handshake or says
//!   hello, costs one socket (and, over TLS, one thread) for at most the handshake timeout.
//! - **Limits** ([`Limits`]): connections in all, connections per peer (uid, certificate
//!   identity, or, before its handshake, network address), and the file descriptors the
//!   process may still open under `RLIMIT_NOFILE` (the most one connection was seen to take,
//!   plus a margin, must stay free).
//! - **At a limit, the idle make room.** The connection idle longest is closed to serve the
//!   new one: among the peer's own for the per-peer limit, otherwise among all, preferring the
//!   peer that holds the most. TLS handshakes in progress are counted apart (at most
//!   `max_connections` of them, idle until done) and make room only among themselves: a flood
//!   of connects that never finish their handshake neither closes an application's connection
//!   nor keeps a real client from starting its handshake. Idle means waiting for the hello, for the backend to open or
//!   for the next request; a connection in the middle of a request (receiving it, running
//!   it, answering it) is never closed for another, since each of those steps is bounded by a
//!   timeout or by the backend.
//!   Only when nothing is idle is the new peer refused: a `Welcome::Refused`, the connection
//!   closed, one log line.
//! - **Timeouts**: the TLS handshake and the hello within [`Limits::handshake_timeout`] of the
//!   accept; a request, once its first
//!   byte arrived, and its answer, each within [`Limits::frame_timeout`]; the next request
//!   within [`Limits::idle_timeout`].
//! - **Frames grow as bytes arrive** ([`read_frame`]): a header announcing 16 MiB costs nothing
//!   until the bytes come.
//! - **No accept error loop**: a spare descriptor is held so that at `EMFILE` the loop can
//!   still take the connection off the queue and then close an idle one (or refuse it); other
//!   accept errors back off up to a second, logged once per episode.
//!
//! # One backend per application
//!
//! The simulated firmware is served with a `Device` per application ([`Server::per_connection`])
//! rather than one shared by all: in PKCS#11 the login state belongs to the application (one
//! `C_Login` logs in every session of the application on that token). A shared `Device` would
//! log every client — other uids included — in with one client's PIN. What the applications
//! share is the store (token objects, PINs, the lockout counters), as processes do in the
//! embedded placement. The price is a store handle per application, which the limits bound.
//!
//! An application is one connection (a hello without a key, and every client of protocol
//! version 1), or every connection whose hello carries the same application key under the same
//! authenticated identity (`super::proto::AppKey`): a client's pool, so that its threads' calls
//! run side by side. The first connection opens the backend (the factory); the others wait for
//! it and join ([`Server::joining`] may refuse them, e.g. at a tenant's connection limit). Each
//! joined connection is a connection like any other for the limits below; the application, its
//! backend and sessions, live while any of its connections does, and a connection presenting
//! the key afterwards opens a new application. A key is 32 random bytes: it cannot be guessed,
//! and one read by another identity joins nothing, since the identity is part of what is
//! matched. Requests of one application run concurrently; closing a session waits for the
//! application's calls in flight (`App::closing`), so a handle a backend reuses never reaches a
//! call that was checked against the old session.

use std::fs::File;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use parking_lot::Mutex;
use rustix::io::Errno;

use crate::call::Backend;
use crate::error::{Error, Result};

use super::proto::{DaemonReply, DaemonRequest, Welcome};

mod bind;
mod connection;
mod registry;

pub use bind::{bind, bind_socket, bind_tcp, bind_with_mode};
pub use connection::respond;
use connection::{Apps, Link, connection, tls_connection};
pub(super) use connection::{Timed, framed, send_frame};
pub use registry::Identity;
use registry::{At, Closer, Key, LogBudget, Peer, Registry, make_room};

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
    /// Connections at once, all authenticated peers together (at least 1); TLS handshakes in
    /// progress are counted apart, at most as many again.
    pub max_connections: usize,
    /// Connections at once from one peer (at least 1): one uid on the Unix socket, one
    /// certificate identity over TLS, one network address while its TLS handshake runs.
    pub max_connections_per_uid: usize,
    /// From accept to the end of the hello (over TLS: the handshake and the hello).
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

/// Where connections come from.
pub enum Listener {
    /// A Unix socket: peers are their uid.
    Unix(UnixListener),
    /// TCP, speaking the protocol inside TLS 1.3 with mutual authentication
    /// (`super::tls::server_config`): peers are their certificate's identity.
    Tls(TcpListener, Arc<rustls::ServerConfig>),
}

impl Listener {
    fn set_nonblocking(&self) -> std::io::Result<()> {
        match self {
            Self::Unix(l) => l.set_nonblocking(true),
            Self::Tls(l, _) => l.set_nonblocking(true),
        }
    }
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

/// Opens the backend of one application (its first connection), for its peer's identity.
pub type BackendFactory = dyn Fn(&Identity) -> Result<Arc<dyn Backend>> + Send + Sync;

/// Lets one more connection join an application already open, for its peer's identity (e.g.
/// its place among its tenant's connections), or refuses it; what it returns is held for as
/// long as the connection lives.
pub type JoinCheck = dyn Fn(&Identity) -> Result<Box<dyn Send + Sync>> + Send + Sync;

/// Answers the daemon requests (protocol version 3) of a connection of `identity`: the
/// decision is the handler's, by the identity the server verified, never by anything the
/// request claims.
pub type DaemonHandler = dyn Fn(&Identity, DaemonRequest) -> Result<DaemonReply> + Send + Sync;

#[derive(Clone)]
enum Source {
    /// One backend for every connection (a loaded real HSM: its own login semantics).
    Shared(Arc<dyn Backend>),
    /// A backend per application (a connection, or the connections of one key): each is one
    /// PKCS#11 application, with its own login state and sessions, as a process is in the
    /// embedded placement.
    PerConnection(Arc<BackendFactory>),
}

/// A configurable server.
pub struct Server {
    source: Source,
    join: Option<Arc<JoinCheck>>,
    daemon: Option<Arc<DaemonHandler>>,
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

    /// A server that opens a backend per application with `factory` (the simulated firmware:
    /// a `Device` per application over the shared store, so that each client is an
    /// application of its own, with its own login state). The factory runs only for a peer
    /// that was accepted and said hello, once per application (not for the connections that
    /// join it).
    pub fn per_connection(
        factory: impl Fn() -> Result<Arc<dyn Backend>> + Send + Sync + 'static,
    ) -> Self {
        Self::per_identity(move |_| factory())
    }

    /// [`Server::per_connection`] with a factory that is told the peer's verified identity
    /// (what a backend would authorize by).
    pub fn per_identity(
        factory: impl Fn(&Identity) -> Result<Arc<dyn Backend>> + Send + Sync + 'static,
    ) -> Self {
        Self::with_source(Source::PerConnection(Arc::new(factory)))
    }

    fn with_source(source: Source) -> Self {
        Self {
            source,
            join: None,
            daemon: None,
            allow_uids: vec![rustix::process::getuid().as_raw()],
            limits: Limits::default(),
            fd_cost: 1,
            shutdown: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Checks every connection that joins an application already open with `check` (the
    /// first connection of an application is the factory's to check).
    pub fn joining(
        mut self,
        check: impl Fn(&Identity) -> Result<Box<dyn Send + Sync>> + Send + Sync + 'static,
    ) -> Self {
        self.join = Some(Arc::new(check));
        self
    }

    /// Answers daemon requests ([`DaemonRequest`], protocol version 3) with `handler`; without
    /// one, every daemon request is refused with `CKR_FUNCTION_NOT_SUPPORTED`.
    pub fn daemon_requests(
        mut self,
        handler: impl Fn(&Identity, DaemonRequest) -> Result<DaemonReply> + Send + Sync + 'static,
    ) -> Self {
        self.daemon = Some(Arc::new(handler));
        self
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
        self.serve_all(vec![Listener::Unix(listener)])
    }

    /// Accepts connections on every listener until the shutdown flag is set; the limits hold
    /// for all of them together.
    pub fn serve_all(&self, listeners: Vec<Listener>) -> Result<()> {
        for l in &listeners {
            l.set_nonblocking()
                .map_err(|e| Error::Config(format!("socket: {e}")))?;
        }
        let shared = Arc::new(Shared {
            source: self.source.clone(),
            join: self.join.clone(),
            daemon: self.daemon.clone(),
            apps: Apps::default(),
            limits: self.limits.clone(),
            registry: Registry::new(self.fd_cost),
            log: Mutex::new(LogBudget::default()),
            admission: Mutex::new(()),
        });
        let mut acceptor = Acceptor {
            shared: &shared,
            allow_uids: &self.allow_uids,
            spare: spare_descriptor(),
            backoff: None,
            workers: Vec::new(),
        };
        while !self.shutdown.load(Ordering::SeqCst) {
            acceptor.step(&listeners);
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
    join: Option<Arc<JoinCheck>>,
    daemon: Option<Arc<DaemonHandler>>,
    /// The applications whose connections said a key.
    apps: Apps,
    limits: Limits,
    registry: Registry,
    /// The lines about peers (refused, closed), shared by the accept loop and the connections.
    log: Mutex<LogBudget>,
    /// Held while a peer is checked against the limits and entered under its identity, so
    /// that two peers of one identity cannot both take its last place.
    admission: Mutex<()>,
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

/// A connection taken off a listener's queue.
enum Accepted {
    Unix(UnixStream),
    Tcp(TcpStream, SocketAddr, Arc<rustls::ServerConfig>),
}

fn accept(listener: &Listener) -> std::io::Result<Accepted> {
    match listener {
        Listener::Unix(l) => l.accept().map(|(s, _)| Accepted::Unix(s)),
        Listener::Tls(l, config) => l
            .accept()
            .map(|(s, addr)| Accepted::Tcp(s, addr, config.clone())),
    }
}

impl Acceptor<'_> {
    /// Waits (at most [`POLL`]) for connections, and accepts and admits at most one per
    /// listener.
    fn step(&mut self, listeners: &[Listener]) {
        let mut fds: Vec<rustix::event::PollFd<'_>> = listeners
            .iter()
            .map(|l| match l {
                Listener::Unix(l) => rustix::event::PollFd::new(l, rustix::event::PollFlags::IN),
                Listener::Tls(l, _) => rustix::event::PollFd::new(l, rustix::event::PollFlags::IN),
            })
            .collect();
        let timeout = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: i64::try_from(POLL.as_nanos()).unwrap_or(50_000_000),
        };
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(0) | Err(Errno::INTR) => {}
            Ok(_) => {
                let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
                drop(fds);
                for (listener, ready) in listeners.iter().zip(ready) {
                    if ready {
                        self.accept_one(listener);
                    }
                }
            }
            Err(e) => {
                log::warn!("remote server: poll: {e}");
                std::thread::sleep(POLL);
            }
        }
        self.workers.retain(|h| !h.is_finished());
        self.shared.log.lock().tick();
    }

    /// Accepts and admits at most one connection of `listener`.
    fn accept_one(&mut self, listener: &Listener) {
        let accepted = match accept(listener) {
            Err(e) if out_of_descriptors(&e) && self.spare.is_some() => {
                // Give up the spare to take the connection off the queue; admitting it will
                // close an idle connection or refuse it, and the spare comes back after.
                self.spare = None;
                accept(listener)
            }
            other => other,
        };
        match accepted {
            Ok(accepted) => {
                if let Some((_, errors)) = self.backoff.take() {
                    log::warn!("remote server: accepting again after {errors} failed accepts");
                }
                match accepted {
                    Accepted::Unix(stream) => self.admit(stream),
                    Accepted::Tcp(stream, addr, config) => self.admit_tcp(stream, addr, config),
                }
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
    }

    /// Checks a new peer and starts its connection, or refuses it.
    fn admit(&mut self, stream: UnixStream) {
        let peer = match rustix::net::sockopt::socket_peercred(&stream) {
            Ok(c) => Peer {
                key: Key::Id(Identity::Uid(c.uid.as_raw())),
                at: At::Pid(c.pid.as_raw_nonzero().get()),
            },
            Err(e) => {
                self.refuse(stream, CKR_FUNCTION_REJECTED, || {
                    format!("refused a peer whose credentials cannot be read: {e}")
                });
                return;
            }
        };
        if !matches!(peer.key, Key::Id(Identity::Uid(uid)) if self.allow_uids.contains(&uid)) {
            self.refuse(stream, CKR_FUNCTION_REJECTED, || {
                format!("refused {peer}: not in the allow-list (--allow-uid)")
            });
            return;
        }
        let admission = self.shared.admission.lock();
        if let Err(why) = make_room(self.shared, &peer) {
            drop(admission);
            self.refuse(stream, CKR_DEVICE_MEMORY, || {
                format!("refused {peer}: {why}")
            });
            return;
        }
        let stream = Arc::new(stream);
        let id = self
            .shared
            .registry
            .insert(peer.clone(), Closer::Unix(stream.clone()));
        drop(admission);
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("ferrohsm-conn".into())
            .spawn({
                let peer = peer.clone();
                move || {
                    let hello_by = Instant::now() + shared.limits.handshake_timeout;
                    connection(&shared, id, peer, Link::Unix(stream), hello_by);
                }
            });
        self.spawned(spawned, id, &peer);
    }

    /// Admits a TCP peer to its TLS handshake: the limits of its address and in all, then a
    /// thread (the handshake must not hold the accept loop). A peer over a limit with none
    /// idle to close is closed at once: it is not authenticated, it is told nothing.
    fn admit_tcp(
        &mut self,
        stream: TcpStream,
        addr: SocketAddr,
        config: Arc<rustls::ServerConfig>,
    ) {
        let peer = Peer {
            key: Key::Unverified(addr.ip()),
            at: At::Addr(addr),
        };
        let admission = self.shared.admission.lock();
        if let Err(why) = make_room(self.shared, &peer) {
            drop(admission);
            self.shared
                .log
                .lock()
                .line(|| format!("refused {peer} before its TLS handshake: {why}"));
            return;
        }
        let closer = match stream.try_clone() {
            Ok(c) => c,
            Err(e) => {
                drop(admission);
                log::error!("remote server: refused {peer}: {e}");
                return;
            }
        };
        let id = self
            .shared
            .registry
            .insert(peer.clone(), Closer::Tcp(closer));
        drop(admission);
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("ferrohsm-tls".into())
            .spawn({
                let peer = peer.clone();
                move || tls_connection(&shared, id, peer, stream, &config)
            });
        self.spawned(spawned, id, &peer);
    }

    fn spawned(&mut self, spawned: std::io::Result<JoinHandle<()>>, id: u64, peer: &Peer) {
        match spawned {
            Ok(h) => self.workers.push(h),
            Err(e) => {
                self.shared.registry.remove(id);
                log::error!("remote server: refused {peer}: cannot start a thread: {e}");
            }
        }
    }
}

impl Acceptor<'_> {
    /// Refuses a peer: one frame saying why (never blocking the loop), the connection closed,
    /// one log line.
    fn refuse(&mut self, stream: UnixStream, rv: CK_RV, why: impl FnOnce() -> String) {
        self.shared.log.lock().line(why);
        if stream.set_nonblocking(true).is_ok() {
            let _ = send_frame(&stream, &Welcome::Refused(rv).encode(), None);
        }
    }
}
