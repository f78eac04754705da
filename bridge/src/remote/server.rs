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

use std::collections::HashMap;
use std::fs::File;
use std::io::{ErrorKind, Read};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use parking_lot::{Condvar, Mutex, RwLock};
use rustix::io::Errno;

use crate::call::{Backend, BackendExt, Reply, Request};
use crate::error::{Error, Result};
use crate::types::*;

use super::proto::{
    APP_KEY_VERSION, AppKey, DAEMON_TAG, DAEMON_VERSION, DaemonReply, DaemonRequest, HELLO_MAX,
    Hello, MAX_FRAME, MIN_VERSION, Response, VERSION, Welcome, encode_daemon_response,
    encode_response, read_frame_max,
};
use super::tls::{TlsReader, TlsStream};

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

/// Creates the socket at `path`, mode 0600. A stale socket file (nobody listening) is replaced;
/// a live one is an error.
pub fn bind(path: &Path) -> Result<UnixListener> {
    bind_with_mode(path, 0o600)
}

/// [`bind`] with another file mode (e.g. 0660 for a group of clients; the peer uid check
/// applies all the same). Bits beyond 0o777 are ignored.
pub fn bind_with_mode(path: &Path, mode: u32) -> Result<UnixListener> {
    bind_socket(path, mode, false)
}

/// [`bind_with_mode`], under the rules every file the CLI writes follows (`crate::output`):
///
/// - the socket's directory is opened once, and must belong to the daemon's user (or root)
///   and be writable by nobody else — anyone who could write there could remove the socket and
///   put their own in its place, or swap a path between the checks and the bind. With
///   `allow_shared_dir` (the operator's explicit choice) a directory others can write is
///   accepted only if it is sticky (as `/tmp`: others may add names there, but not remove or
///   rename this one);
/// - the socket is bound in that directory through its descriptor (`/proc/self/fd/N/NAME`), so
///   the directory checked is the one bound in, even if a path component is replaced meanwhile;
/// - its mode is set by the umask while binding and never changed afterwards: a `chmod` by
///   path would follow a symbolic link planted between the bind and the change;
/// - a stale socket (nobody listening) is removed relative to the directory; anything else at
///   the path (a file, a symbolic link) is an error and left as it is.
pub fn bind_socket(path: &Path, mode: u32, allow_shared_dir: bool) -> Result<UnixListener> {
    use std::os::fd::AsRawFd as _;

    use rustix::fs::{AtFlags, FileType};

    let mode = mode & 0o777;
    let at_path = |what: &str| Error::Config(format!("{}: {what}", path.display()));
    let opts = crate::output::WriteOptions::private()
        .allow_shared_dir(allow_shared_dir)
        .shared_dir_remedy(
            "use a directory only the daemon's user can write, or a sticky one with \
             --allow-shared-dir",
        );
    let (dir, name) =
        crate::output::checked_dir(path, &opts).map_err(|e| Error::Config(e.to_string()))?;
    if allow_shared_dir {
        let st = rustix::fs::fstat(&dir)
            .map_err(|e| at_path(&format!("cannot stat its directory: {e}")))?;
        if st.st_mode & 0o022 != 0 && st.st_mode & 0o1000 == 0 {
            return Err(at_path(&format!(
                "its directory is writable by others and not sticky (mode {:o}): others could \
                 replace the socket",
                st.st_mode & 0o7777
            )));
        }
    }
    // The checked directory itself, through its descriptor (where /proc is mounted and the
    // address fits a socket address; else the path, in the directory just checked).
    let via_fd = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(&name);
    let at = if via_fd.as_os_str().len() < 100 && Path::new("/proc/self/fd").is_dir() {
        via_fd
    } else {
        path.to_owned()
    };
    match rustix::fs::statat(&dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => {
            if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
                return Err(at_path("exists and is not a socket"));
            }
            if UnixStream::connect(&at).is_ok() {
                return Err(at_path("another daemon is listening there"));
            }
            rustix::fs::unlinkat(&dir, &name, AtFlags::empty())
                .map_err(|e| at_path(&format!("cannot remove: {e}")))?;
        }
        Err(Errno::NOENT) => {}
        Err(e) => return Err(at_path(&format!("cannot stat: {e}"))),
    }
    // The socket is created with its mode: the umask takes away every other bit while binding.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o777 & !mode));
    let listener = listen(&at);
    rustix::process::umask(old);
    listener.map_err(|e| at_path(&format!("cannot listen: {e}")))
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

/// A listening TCP socket at `addr` (`HOST:PORT`, an IPv6 address in brackets) with a short
/// queue ([`BACKLOG`]), for a [`Listener::Tls`].
pub fn bind_tcp(addr: &str) -> Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    use std::net::ToSocketAddrs as _;
    let bad = |e: &dyn std::fmt::Display| Error::Config(format!("--listen {addr}: {e}"));
    let mut last = None;
    for a in addr.to_socket_addrs().map_err(|e| bad(&e))? {
        let family = if a.is_ipv4() {
            AddressFamily::INET
        } else {
            AddressFamily::INET6
        };
        let bound = (|| -> std::io::Result<TcpListener> {
            let fd =
                rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
            rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
            rustix::net::bind(&fd, &a)?;
            rustix::net::listen(&fd, BACKLOG)?;
            Ok(TcpListener::from(fd))
        })();
        match bound {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(match last {
        Some(e) => bad(&e),
        None => bad(&"names no address"),
    })
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

/// Closes idle connections until `peer` fits every limit (its own, the total, the
/// descriptors); the limit it could not fit otherwise. Called with [`Shared::admission`] held.
///
/// Connections whose TLS handshake has not completed are counted apart: at most
/// `max_connections` of them, making room only among themselves, so that a flood of connects
/// never closes an application's connection; an authenticated peer (a uid, a certificate
/// identity) counts against `max_connections` with the other authenticated ones and makes
/// room among them.
fn make_room(shared: &Shared, peer: &Peer) -> core::result::Result<(), String> {
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
enum Key {
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
enum At {
    /// A local process.
    Pid(i32),
    /// A network address.
    Addr(SocketAddr),
}

/// Who is at the other end of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Peer {
    key: Key,
    at: At,
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
enum Closer {
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
    fn identify(&self, id: u64, peer: Peer) -> bool {
        match self.table.lock().conns.get_mut(&id) {
            Some(e) if !e.evicted => {
                e.peer = peer;
                true
            }
            _ => false,
        }
    }

    fn insert(&self, peer: Peer, closer: Closer) -> u64 {
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

    /// Records that connection `id` serves application `app` (its descriptors are taken, no
    /// longer reserved).
    fn opened(&self, id: u64, app: u64) {
        if let Some(e) = self.table.lock().conns.get_mut(&id) {
            e.opened = true;
            e.app = Some(app);
        }
    }

    fn evicted(&self, id: u64) -> bool {
        self.table.lock().conns.get(&id).is_none_or(|e| e.evicted)
    }

    fn remove(&self, id: u64) {
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
            e.closer.shutdown(std::net::Shutdown::Read);
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
    let frame = framed(payload)?;
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

/// `payload` as one frame: its length, then it.
pub(super) fn framed(payload: &[u8]) -> std::io::Result<zeroize::Zeroizing<Vec<u8>>> {
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|_| payload.len() <= MAX_FRAME)
        .ok_or(ErrorKind::InvalidInput)?;
    // A request may carry a PIN: the copy is wiped when it is dropped.
    let mut frame = zeroize::Zeroizing::new(Vec::with_capacity(4 + payload.len()));
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// A stream whose reads all end by one deadline (`SO_RCVTIMEO` set to what is left before
/// each read), so that a peer trickling bytes cannot stretch a frame past it.
pub(super) struct Timed<'a> {
    pub(super) stream: &'a UnixStream,
    pub(super) until: Instant,
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
fn wait_request(stream: &impl AsFd, timeout: Option<Duration>) -> std::io::Result<bool> {
    rustix::net::sockopt::set_socket_timeout(
        stream,
        rustix::net::sockopt::Timeout::Recv,
        timeout.filter(|t| !t.is_zero()),
    )?;
    let mut byte = [0u8; 1];
    loop {
        match rustix::net::recv(stream, &mut byte, rustix::net::RecvFlags::PEEK) {
            Ok((n, _)) => return Ok(n > 0),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// A connection's stream: the Unix socket, or TLS over TCP.
enum Link {
    Unix(Arc<UnixStream>),
    Tls(Box<TlsStream>),
}

impl Link {
    /// Reads one frame of at most `max` bytes, all of it by `until`.
    fn read_frame(&mut self, max: usize, until: Instant) -> std::io::Result<Option<Vec<u8>>> {
        match self {
            Self::Unix(stream) => read_frame_max(&mut Timed { stream, until }, max),
            Self::Tls(stream) => read_frame_max(
                &mut TlsReader {
                    stream,
                    until: Some(until),
                },
                max,
            ),
        }
    }

    /// Sends one frame; with a deadline, by then.
    fn send(&mut self, payload: &[u8], until: Option<Instant>) -> std::io::Result<()> {
        match self {
            Self::Unix(stream) => send_frame(stream, payload, until),
            Self::Tls(stream) => stream.write_until(&framed(payload)?, until),
        }
    }

    /// Waits until the next request has begun to arrive (`Ok(true)`) or the stream ended.
    fn wait_request(&mut self, timeout: Option<Duration>) -> std::io::Result<bool> {
        match self {
            Self::Unix(stream) => wait_request(&**stream, timeout),
            Self::Tls(stream) => {
                if stream.buffered() {
                    return Ok(true);
                }
                wait_request(stream.tcp(), timeout)
            }
        }
    }
}

/// How a connection ended.
enum End {
    /// The peer closed it, or the server is shutting down.
    Closed,
    /// Closed to make room for another peer (logged by the accept loop).
    Evicted,
    /// No TLS handshake in time.
    NoHandshake,
    /// The TLS handshake failed: no certificate, one the client CA did not issue, an identity
    /// not allowed, another protocol version... (rustls' reason).
    Handshake(String),
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

/// Runs one connection to its end, then leaves its application (closing its sessions if it was
/// the last connection of it) and the registry.
fn connection(shared: &Shared, id: u64, peer: Peer, mut link: Link, hello_by: Instant) {
    let mut conn = Connection::default();
    let end = conn.run(shared, id, &mut link, hello_by);
    finish(shared, id, &peer, end, conn);
}

/// Runs a TLS connection: the handshake, the identity's limits, then the protocol as on the
/// Unix socket. Until the handshake has verified the client's certificate, nothing of the
/// backend exists for the peer.
fn tls_connection(
    shared: &Shared,
    id: u64,
    peer: Peer,
    tcp: TcpStream,
    config: &Arc<rustls::ServerConfig>,
) {
    let hello_by = Instant::now() + shared.limits.handshake_timeout;
    match tls_handshake(shared, id, &peer, tcp, config, hello_by) {
        Ok((peer, tls)) => connection(shared, id, peer, Link::Tls(tls), hello_by),
        Err((peer, end)) => finish(shared, id, &peer, end, Connection::default()),
    }
}

/// The handshake by `until`, then the per-identity limit (the idle connections of the same
/// identity make room); the authenticated peer and its stream, or how it ended.
fn tls_handshake(
    shared: &Shared,
    id: u64,
    peer: &Peer,
    tcp: TcpStream,
    config: &Arc<rustls::ServerConfig>,
    until: Instant,
) -> core::result::Result<(Peer, Box<TlsStream>), (Peer, End)> {
    let fail = |end: End| (peer.clone(), end);
    let mut tls = Box::new(TlsStream::accept(config, tcp).map_err(|e| fail(End::Io(e)))?);
    if let Err(e) = tls.handshake(until) {
        if e.kind() == ErrorKind::InvalidData {
            // Refused: the alert says why; let the peer read it (a second at most).
            tls.linger(until.min(Instant::now() + Duration::from_secs(1)));
        }
        return Err(fail(if shared.registry.evicted(id) {
            End::Evicted
        } else if timed_out(&e) {
            End::NoHandshake
        } else if e.kind() == ErrorKind::InvalidData {
            End::Handshake(super::tls::describe(&e))
        } else {
            End::Io(e)
        }));
    }
    let name = tls
        .peer_identity()
        .map_err(|why| fail(End::Handshake(why.to_owned())))?;
    let at = peer.at;
    let peer = Peer {
        key: Key::Id(Identity::Cert(name)),
        at,
    };
    let admission = shared.admission.lock();
    let room = make_room(shared, &peer);
    let entered = room.is_ok() && shared.registry.identify(id, peer.clone());
    drop(admission);
    match room {
        Ok(()) if entered => Ok((peer, tls)),
        Ok(()) => Err((peer, End::Evicted)),
        Err(why) => {
            let answer_by = Some(Instant::now() + shared.limits.frame_timeout.min(EVICT_WAIT));
            let refusal = framed(&Welcome::Refused(CKR_DEVICE_MEMORY).encode());
            if let Ok(refusal) = refusal {
                let _ = tls.write_until(&refusal, answer_by);
            }
            Err((peer, End::Refused(why)))
        }
    }
}

/// Logs how connection `id` ended, leaves its application (the last connection of one closes
/// its sessions), and removes it from the registry.
fn finish(shared: &Shared, id: u64, peer: &Peer, end: End, mut conn: Connection) {
    let end = match end {
        End::Closed | End::Io(_) if shared.registry.evicted(id) => End::Evicted,
        other => other,
    };
    let limits = &shared.limits;
    let warn = |text: String| shared.log.lock().line(|| text);
    match end {
        End::Closed | End::Evicted => {}
        End::NoHandshake => warn(format!(
            "closed connection #{id} of {peer}: no TLS handshake within {}s",
            limits.handshake_timeout.as_secs_f64()
        )),
        End::Handshake(why) => warn(format!(
            "refused {peer} (#{id}) at the TLS handshake: {why}"
        )),
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
    let last = conn.member.take().is_none_or(|m| shared.apps.leave(&m));
    if let Some(app) = conn.app.take() {
        if last {
            app.close_all();
        }
    }
    drop(conn.place.take());
    shared.registry.remove(id);
}

/// One PKCS#11 application: the backend its connections share (its login state), the sessions
/// it owns. It lives while any of its connections does; its sessions are closed when the last
/// one ends.
struct App {
    /// Unique in this server: which connections serve one application (the registry's
    /// eviction prefers a connection whose application keeps others).
    serial: u64,
    backend: Arc<dyn Backend>,
    /// Its sessions (→ slot).
    sessions: Mutex<HashMap<SessionHandle, SlotId>>,
    /// Taken shared by every request, exclusively by the requests that close sessions: a
    /// session closed by one connection is never used by a call of another that passed the
    /// ownership check before it (a backend may hand the handle out again, to another
    /// application when it is shared).
    closing: RwLock<()>,
}

impl App {
    fn new(backend: Arc<dyn Backend>) -> Arc<Self> {
        static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Arc::new(Self {
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            backend,
            sessions: Mutex::new(HashMap::new()),
            closing: RwLock::new(()),
        })
    }

    /// Closes every session of the application (its last connection ended).
    fn close_all(&self) {
        let _excl = self.closing.write();
        let sessions = std::mem::take(&mut *self.sessions.lock());
        for s in sessions.into_keys() {
            let _ = self.backend.close_session(s);
        }
    }

    fn owns(&self, s: &SessionHandle) -> bool {
        self.sessions.lock().contains_key(s)
    }

    /// Checks ownership, runs the request, keeps the session table.
    fn handle(&self, mut request: Request) -> Response {
        let backend = &self.backend;
        let closes = matches!(
            request,
            Request::CloseSession { .. } | Request::CloseAllSessions { .. }
        );
        let _guard = if closes {
            Err(self.closing.write())
        } else {
            Ok(self.closing.read())
        };
        if let Some(s) = request.session_mut() {
            if !self.owns(s) {
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
                self.sessions.lock().insert(s, slot);
                Ok(Reply::Session(s))
            }
            Request::CloseSession { session } => {
                let r = backend.close_session(session);
                if matches!(
                    r,
                    Ok(()) | Err(Error::SessionHandleInvalid | Error::SessionClosed)
                ) {
                    self.sessions.lock().remove(&session);
                }
                r.map(|()| Reply::Unit(()))
            }
            Request::CloseAllSessions { slot } => {
                // This application's sessions only: other clients are other applications.
                if !backend.slot_list(false)?.contains(&slot) {
                    return Err(Error::SlotIdInvalid);
                }
                let mine: Vec<SessionHandle> = self
                    .sessions
                    .lock()
                    .iter()
                    .filter(|(_, s)| **s == slot)
                    .map(|(h, _)| *h)
                    .collect();
                for s in mine {
                    let _ = backend.close_session(s);
                    self.sessions.lock().remove(&s);
                }
                Ok(Reply::Unit(()))
            }
            mut other => {
                let session = other.session_mut().copied();
                let r = other.serve(|call| backend.call(call));
                if let (Some(s), Err(Error::SessionHandleInvalid | Error::SessionClosed)) =
                    (session, &r)
                {
                    self.sessions.lock().remove(&s);
                }
                r
            }
        }
    }
}

/// An application whose connections said a key: the peer's identity and the key. A key joins
/// only connections of the identity that opened the application.
#[derive(Clone, PartialEq, Eq, Hash)]
struct AppId {
    identity: Identity,
    key: AppKey,
}

/// Where the connections of one application meet: the application, once its first connection
/// has opened it (locked while it opens, so that the others wait and join it).
type Cell = Arc<Mutex<Option<Arc<App>>>>;

/// The applications whose connections said a key, with the number of connections of each
/// (counted from the hello to the end of the connection, opened or not).
#[derive(Default)]
struct Apps(Mutex<HashMap<AppId, (usize, Cell)>>);

impl Apps {
    /// Counts one more connection of application `id`; its meeting place.
    fn enter(&self, id: &AppId) -> Cell {
        let mut t = self.0.lock();
        let (n, cell) = t.entry(id.clone()).or_default();
        *n += 1;
        cell.clone()
    }

    /// Counts one connection less; `true` if it was the application's last (the application
    /// is gone: a connection saying the key from now on opens a new one).
    fn leave(&self, id: &AppId) -> bool {
        let mut t = self.0.lock();
        let Some((n, _)) = t.get_mut(id) else {
            return true;
        };
        *n = n.saturating_sub(1);
        if *n == 0 {
            t.remove(id);
            return true;
        }
        false
    }
}

/// One client connection: the application it serves.
#[derive(Default)]
struct Connection {
    app: Option<Arc<App>>,
    /// The application it counts in, when its hello said a key.
    member: Option<AppId>,
    /// What [`Server::joining`] gave a connection that joined an application.
    place: Option<Box<dyn Send + Sync>>,
}

impl Connection {
    fn run(&mut self, shared: &Shared, id: u64, link: &mut Link, hello_by: Instant) -> End {
        let limits = &shared.limits;
        let registry = &shared.registry;
        // Hello, within the handshake timeout from accept.
        let hello = match link.read_frame(HELLO_MAX, hello_by) {
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
        let Some(version) = hello.choose() else {
            let _ = link.send(&Welcome::Refused(CKR_DEVICE_ERROR).encode(), answer_by());
            return End::Refused(format!(
                "it speaks protocol versions {}..={}, this server {MIN_VERSION}..={VERSION}: \
                 the module and the daemon are of incompatible releases",
                hello.min, hello.max
            ));
        };
        let key = hello.app.filter(|_| version >= APP_KEY_VERSION);
        // Accepted: only now is the backend opened. Until it is, the connection counts as
        // idle (it may wait for other connections' backends to open: a flood of hellos must
        // not make every place busy).
        // Descriptors the connection itself holds: its socket, and over TLS the copy the
        // registry closes it with.
        let own_fds = match link {
            Link::Unix(_) => 1,
            Link::Tls(_) => 2,
        };
        let joined = match self.open(shared, id, key, own_fds) {
            Ok(None) => return End::Evicted,
            Ok(Some(joined)) => joined,
            Err(e) => {
                let _ = link.send(&Welcome::Refused(e.rv()).encode(), answer_by());
                return End::NoBackend(e);
            }
        };
        let Some(app) = self.app.clone() else {
            return End::Evicted;
        };
        if let Err(e) = link.send(&Welcome::Accepted { version, joined }.encode(), answer_by()) {
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
            match link.wait_request(limits.idle_timeout) {
                Ok(true) => {}
                Ok(false) => return End::Closed,
                Err(e) if timed_out(&e) => return End::Idle,
                Err(e) => return End::Io(e),
            }
            if !registry.enter(id, Phase::Working) {
                return End::Evicted;
            }
            let frame = match link.read_frame(MAX_FRAME, Instant::now() + limits.frame_timeout) {
                // The request may carry a PIN: wiped when dropped.
                Ok(Some(f)) => zeroize::Zeroizing::new(f),
                Ok(None) => return End::Closed,
                Err(e) if timed_out(&e) => return End::SlowFrame,
                Err(e) if e.kind() == ErrorKind::InvalidData => return End::Malformed,
                Err(e) => return End::Io(e),
            };
            let answer = if version >= DAEMON_VERSION && frame.first() == Some(&DAEMON_TAG) {
                // A request to the daemon itself: no backend sees it.
                let Ok(request) = DaemonRequest::decode(&frame) else {
                    return End::Malformed;
                };
                drop(frame);
                let response = match (&shared.daemon, peer_identity(registry, id)) {
                    (Some(handler), Some(identity)) => handler(&identity, request),
                    (None, _) => Err(Error::FunctionNotSupported),
                    (_, None) => return End::Evicted,
                };
                encode_daemon_response(&response)
            } else {
                let Ok(request) = Request::decode(&frame) else {
                    return End::Malformed;
                };
                drop(frame);
                encode_response(&app.handle(request))
            };
            if let Err(e) = link.send(&answer, answer_by()) {
                return if timed_out(&e) {
                    End::SlowFrame
                } else {
                    End::Io(e)
                };
            }
        }
    }

    /// Opens the connection's application, or joins the one its key names (opened by a
    /// connection of the same identity); whether it joined (`None`: the connection was closed
    /// to make room meanwhile).
    fn open(
        &mut self,
        shared: &Shared,
        id: u64,
        key: Option<AppKey>,
        own_fds: usize,
    ) -> Result<Option<bool>> {
        // Only authenticated connections get here; a missing identity means the connection
        // was closed meanwhile.
        let Some(identity) = peer_identity(&shared.registry, id) else {
            return Ok(None);
        };
        let Some(key) = key else {
            // An application of its own.
            let Some(backend) = open_backend(shared, id, &identity, own_fds)? else {
                return Ok(None);
            };
            let app = App::new(backend);
            shared.registry.opened(id, app.serial);
            self.app = Some(app);
            return Ok(Some(false));
        };
        let member = AppId {
            identity: identity.clone(),
            key,
        };
        let cell = shared.apps.enter(&member);
        self.member = Some(member);
        let mut place = cell.lock();
        if let Some(app) = place.as_ref() {
            if let Some(check) = &shared.join {
                self.place = Some(check(&identity)?);
            }
            shared.registry.opened(id, app.serial);
            self.app = Some(app.clone());
            return Ok(Some(true));
        }
        let Some(backend) = open_backend(shared, id, &identity, own_fds)? else {
            return Ok(None);
        };
        let app = App::new(backend);
        shared.registry.opened(id, app.serial);
        *place = Some(app.clone());
        self.app = Some(app);
        Ok(Some(false))
    }
}

/// Opens connection `id`'s backend: a factory's one at a time, counting the descriptors it
/// took. `None` if the connection was closed to make room meanwhile.
fn open_backend(
    shared: &Shared,
    id: u64,
    identity: &Identity,
    own_fds: usize,
) -> Result<Option<Arc<dyn Backend>>> {
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
            let backend = factory(identity)?;
            if let (Some(before), Ok(after)) = (before, open_descriptors()) {
                // Its socket(s), and what the backend opened.
                shared
                    .registry
                    .note_cost(after.saturating_sub(before) + own_fds);
            }
            Ok(Some(backend))
        }
    }
}

/// The identity connection `id` was admitted under (`None`: it is gone).
fn peer_identity(registry: &Registry, id: u64) -> Option<Identity> {
    match registry.table.lock().conns.get(&id).map(|e| &e.peer.key) {
        Some(Key::Id(identity)) => Some(identity.clone()),
        _ => None,
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
