//! The client side: a `Backend` whose every call is one request/response round trip to a
//! daemon, over its Unix socket or over TLS to one of its network endpoints.
//!
//! - Connections are made lazily, by the calls that need one: construction never fails because
//!   the daemon is down.
//! - Every round trip ends by a deadline (the call timeout); connecting and the hello by the
//!   connect timeout.
//! - After `fork()` the child notices the pid change and makes its own connections (it never
//!   writes to the parent's), as an application of its own (a new application key),
//!   remembering nothing of the parent's sessions or logins.
//!
//! # One application, several connections
//!
//! The client is one PKCS#11 application to the daemon, and its threads' calls run side by
//! side: each call borrows an idle connection of a small pool for its round trip (opening one
//! when all are busy, up to [`DEFAULT_CONNECTIONS`] or the slot's `connections`), and no lock
//! is held while a request or its answer travels. Every connection's hello carries the same
//! application key (`super::proto::AppKey`, 32 random bytes drawn per process, again after
//! `fork` and after a failover), so the daemon serves them as one application: one session
//! table, one login, one tenant's accounting (`super::server`). Where a daemon refuses one more
//! connection (its limits) while others of this client are open, the calls wait for those
//! instead, for a few seconds before one more is tried.
//!
//! Each welcome says whether the connection joined the application the daemon already had or
//! opened a new one: a new one where the client had an application means the daemon lost it
//! (it restarted, or closed every connection of it), and the client treats its sessions as
//! lost with it, as below.
//!
//! # The Unix socket
//!
//! - A call whose connection breaks (the daemon died or restarted) fails with
//!   `CKR_DEVICE_REMOVED`; a call that cannot connect fails the same way; a malformed answer or
//!   a timeout gives `CKR_DEVICE_ERROR` and drops the connection.
//! - Sessions belong to the application that opened them: this client hands out its own
//!   session handles and maps them to the daemon's, so a handle of an application the daemon
//!   lost is `CKR_SESSION_HANDLE_INVALID`, never a session of the new one.
//! - Before a byte is written to a new connection, the uid of the process serving the socket
//!   (`SO_PEERCRED`) is checked against the daemon uid this client expects (by default its
//!   own effective uid) or root: a socket planted by another user, e.g. in a directory others
//!   can write, never receives a hello, let alone a PIN.
//!
//! # Network endpoints and failover
//!
//! Over TLS (`super::tls`: the daemon's certificate checked against the slot's CA and the
//! endpoint's name, this client's certificate presented) the client knows several endpoints
//! sharing one store, and its sessions outlive a connection:
//!
//! - It uses one endpoint at a time (all its connections go there), the first that answers,
//!   from the one after the endpoint that failed last; it stays there until that one fails.
//! - It remembers, per application session, what re-opens it (slot, flags), and per slot the
//!   login (user type, PIN, user name), in memory, zeroized when forgotten; the PIN is kept
//!   only while logged in.
//! - When a connection of the current endpoint breaks (an I/O error, the end of the stream, a
//!   timeout, a malformed answer), the whole application moves: every pooled connection is
//!   dropped, a new application key is drawn, and the next connection (to the next endpoint)
//!   re-opens every session and logs each slot in again before anything else is sent on it,
//!   once, so the application's session handles stay valid and logged in. Token-object handles
//!   are the store's row ids, the same on every endpoint of the store. Session objects and
//!   active operations (signing, finding, ...) do not survive: they lived in the daemon that is
//!   gone.
//! - The call in flight when its connection broke fails with `CKR_DEVICE_ERROR`, except the
//!   calls that neither change anything nor belong to an operation ([`retried`]), which are
//!   sent once more on the next endpoint; so does a call answered on a connection of the
//!   endpoint the application left meanwhile (another thread's call moved it). A connection
//!   found to have closed (checked without blocking just before a request is sent on it) is
//!   not in flight: the call goes to the next endpoint.
//! - A session that had an operation active on the lost endpoint answers the next call that
//!   continues or finishes that operation with `CKR_DEVICE_ERROR`, once ([`Phase`]); the call
//!   after that works (e.g. a new `C_SignInit`).
//! - A session object handle handed out before the failover answers
//!   `CKR_OBJECT_HANDLE_INVALID` until the new endpoint hands out the same number.
//! - A session that cannot be re-opened, or whose login is refused on the new endpoint (the
//!   PIN was changed meanwhile), is forgotten: `CKR_SESSION_HANDLE_INVALID`.
//! - When no endpoint answers, calls fail with `CKR_DEVICE_REMOVED`; the sessions are still
//!   remembered and come back with the first endpoint that does.
//!
//! # No init and operation in one round trip
//!
//! `C_SignInit` then `C_Sign` stay two round trips. Sending the init with the operation would
//! have `C_SignInit` return before the daemon has decided it, so its own code (a key handle
//! not valid, `CKR_KEY_FUNCTION_NOT_PERMITTED`, a mechanism the key may not use, a missing
//! login) would arrive with `C_Sign` instead, or never if the application calls something
//! else next; no local check can decide those codes exactly, since they depend on the daemon's
//! objects, policy and login state.

use std::collections::{BTreeMap, HashMap};
use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use parking_lot::{Condvar, Mutex};
use zeroize::Zeroizing;

use crate::call::{Backend, Call, Reply, Target};
use crate::error::{Error, Result};
use crate::types::*;

use super::proto::{
    AppKey, DAEMON_VERSION, DaemonReply, DaemonRequest, HELLO_MAX, Hello, MAX_FRAME, MIN_VERSION,
    MODULE_VERSION, Response, VERSION, Welcome, decode_daemon_response, decode_response,
    read_frame_max,
};
use super::server::{Timed, framed, send_frame};

mod usage_log;
use super::tls::{Endpoint, TlsReader, TlsStream};
pub use usage_log::LogReadError;

/// How long connecting and the hello exchange may take by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default bound on one call's round trip (a live daemon answers within it even for a
/// large RSA key generation; a dead one is noticed at once, by the end of the stream).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The most connections a client opens to its daemon by default: as many calls run at once.
pub const DEFAULT_CONNECTIONS: usize = 8;
/// How long a client keeps to the connections it has after the daemon refused one more.
const CAPPED_FOR: Duration = Duration::from_secs(5);

/// A `Backend` served by a daemon (`ferrohsm serve`), on a Unix socket or on TLS endpoints.
pub struct RemoteBackend {
    transport: Transport,
    timeout: Duration,
    connect_timeout: Duration,
    /// The most connections open at once (at least 1).
    max_connections: usize,
    /// Never held while a request or an answer travels (but while a failover restores the
    /// sessions on a new connection: nothing else may be sent before that is done).
    state: Mutex<State>,
    /// Signalled when a connection goes back to the pool or is given up.
    freed: Condvar,
    /// Held while a connection is made: one at a time, so that the first connection of an
    /// application (and, after a failover, its restoring) comes before the others.
    dialing: Mutex<()>,
}

enum Transport {
    Unix {
        path: PathBuf,
        /// The uid the daemon must run under (root is accepted too: a process running as root
        /// can read this process's memory anyway, so refusing it would protect nothing).
        daemon_uid: u32,
    },
    Tls {
        endpoints: Vec<Endpoint>,
        config: Arc<rustls::ClientConfig>,
    },
}

/// A connection's stream.
enum Stream {
    Unix(UnixStream),
    Tls(Box<TlsStream>),
}

impl Stream {
    fn send(&mut self, payload: &[u8], until: Instant) -> std::io::Result<()> {
        match self {
            Self::Unix(s) => send_frame(s, payload, Some(until)),
            Self::Tls(s) => s.write_until(&framed(payload)?, Some(until)),
        }
    }

    fn receive(&mut self, max: usize, until: Instant) -> std::io::Result<Option<Vec<u8>>> {
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

    /// Whether the daemon has closed this connection (or sent something unasked, which it
    /// never does): looked at without blocking, before a request is sent on it.
    fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        let peeked = match self {
            Self::Unix(s) => rustix::net::recv(
                &*s,
                &mut byte,
                rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
            ),
            Self::Tls(s) => return s.peer_gone(),
        };
        !matches!(
            peeked,
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR)
        )
    }
}

/// A connection of the pool.
struct Conn {
    stream: Stream,
    /// The endpoint (index) it goes to; 0 for the Unix socket.
    endpoint: usize,
    /// The generation of the application it serves.
    generation: u64,
}

/// An application session, as this client remembers it.
struct Sess {
    /// The application it is open in (its `remote` handle means nothing in another).
    generation: u64,
    remote: SessionHandle,
    slot: SlotId,
    /// What `C_OpenSession` was given, to re-open it after a failover.
    flags: CK_FLAGS,
    /// An operation may be active in it.
    op: bool,
    /// An operation was active in it on a connection that broke: the next call continuing it
    /// fails with `CKR_DEVICE_ERROR`.
    lost_op: bool,
}

/// A slot's login, kept to log in again after a failover (zeroized when dropped; never
/// printed: no `Debug`).
struct Login {
    user: UserType,
    pin: Option<Zeroizing<Vec<u8>>>,
    username: Option<Zeroizing<Vec<u8>>>,
}

#[derive(Default)]
struct State {
    /// The idle connections of the current generation.
    idle: Vec<Conn>,
    /// Connections open: idle, in use, or being made.
    open: usize,
    /// A daemon refused one more connection: at most this many until then.
    capped: Option<(usize, Instant)>,
    /// Bumped whenever the application is lost (the daemon no longer has it) or moved (a
    /// failover).
    generation: u64,
    /// The generation the daemon has an application for (a connection of it was accepted).
    established: Option<u64>,
    /// The key every connection's hello carries.
    key: Option<AppKey>,
    /// The endpoint of the application (index; 0 for the Unix socket).
    endpoint: Option<usize>,
    /// By this client's handle, in the order they were opened.
    sessions: BTreeMap<CK_SESSION_HANDLE, Sess>,
    next_handle: CK_SESSION_HANDLE,
    /// Failover only: the login of each slot that has one.
    logins: HashMap<SlotId, Login>,
    /// Failover only: session objects this client saw created, with the generation and the
    /// session they belong to; those of older generations are gone.
    session_objects: HashMap<ObjectHandle, (u64, CK_SESSION_HANDLE)>,
    /// Failover only: the endpoint to try first.
    next_endpoint: usize,
    /// The pid the state belongs to.
    pid: u32,
}

/// At most this many session objects are remembered as gone after failovers.
const MAX_SESSION_OBJECTS: usize = 1 << 16;

impl State {
    /// The daemon no longer has the application (the Unix socket: its sessions become
    /// invalid): a new generation, none of the pooled connections.
    fn lost(&mut self) {
        self.generation += 1;
        self.open = self.open.saturating_sub(self.idle.len());
        self.idle.clear();
        self.endpoint = None;
    }

    /// A failover client's application is to be restored in a new one: every remembered
    /// session is to be re-opened, the operations active in the old one are lost.
    fn moved(&mut self) {
        self.lost();
        for s in self.sessions.values_mut() {
            if s.op {
                s.op = false;
                s.lost_op = true;
            }
        }
        if self.session_objects.len() > MAX_SESSION_OBJECTS {
            let current = self.generation;
            self.session_objects.retain(|_, (g, _)| *g + 1 >= current);
        }
    }

    /// Moves a failover client's application off `endpoint`, whose connection broke: the next
    /// connection starts with the next endpoint, with a new key (the old application, if it
    /// lives on, keeps only the connections still in flight there, and ends with them).
    fn fail_over(&mut self, endpoint: usize, endpoints: usize) {
        self.moved();
        self.key = AppKey::random();
        self.next_endpoint = (endpoint + 1) % endpoints.max(1);
    }

    /// After `fork()`: the child is another application; nothing of the parent's is used.
    fn forked(&mut self) {
        let pid = std::process::id();
        if self.pid != pid {
            // Closing our copies of the parent's sockets leaves the parent's connections
            // intact (nothing is written on them).
            self.open = 0;
            self.lost();
            self.key = AppKey::random();
            self.established = None;
            self.capped = None;
            self.sessions.clear();
            self.logins.clear();
            self.session_objects.clear();
            self.pid = pid;
        }
    }

    /// The most connections that may be open now.
    fn cap(&self, max: usize) -> usize {
        match self.capped {
            Some((n, until)) if Instant::now() < until => n.max(1),
            _ => max.max(1),
        }
    }

    /// Gives a connection back after its round trip: to the pool if it serves the current
    /// application, else closed.
    fn put_back(&mut self, conn: Conn) {
        if conn.generation == self.generation {
            self.idle.push(conn);
        } else {
            self.open = self.open.saturating_sub(1);
        }
    }
}

/// Where a call stands with respect to the session's active operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Starts one (`C_*Init`, `C_SetOperationState`).
    Begin,
    /// Continues one (`C_*Update`, `C_FindObjects`, message parts, `C_GetOperationState`).
    Continue,
    /// Ends one unless it is a length query or `CKR_BUFFER_TOO_SMALL` (single-part and final
    /// calls, `C_SessionCancel`).
    End,
    /// Has nothing to do with operations.
    None,
}

impl Phase {
    pub(super) fn of(name: &str) -> Self {
        const END: &[&str] = &[
            "C_Encrypt",
            "C_Decrypt",
            "C_Digest",
            "C_Sign",
            "C_SignRecover",
            "C_Verify",
            "C_VerifyRecover",
            "C_SessionCancel",
        ];
        const CONTINUE: &[&str] = &[
            "C_FindObjects",
            "C_DigestKey",
            "C_GetOperationState",
            "C_EncryptMessage",
            "C_DecryptMessage",
            "C_SignMessage",
            "C_VerifyMessage",
        ];
        if name.ends_with("Init") || name == "C_SetOperationState" {
            Self::Begin
        } else if name.ends_with("Final") || END.contains(&name) {
            Self::End
        } else if name.ends_with("Update")
            || name.ends_with("MessageBegin")
            || name.ends_with("MessageNext")
            || CONTINUE.contains(&name)
        {
            Self::Continue
        } else {
            Self::None
        }
    }
}

/// Whether a call whose answer was lost with its connection is sent again to the next
/// endpoint: lookups, random numbers, and the session calls whose effect the failover itself
/// re-creates; never anything that changes the store, a login or an operation.
pub(super) fn retried(name: &str) -> bool {
    matches!(
        name,
        "C_GetSlotList"
            | "C_GetSlotInfo"
            | "C_GetTokenInfo"
            | "C_GetMechanismList"
            | "C_GetMechanismInfo"
            | "C_GetSessionInfo"
            | "C_GetObjectSize"
            | "C_GetAttributeValue"
            | "C_GenerateRandom"
            | "C_SeedRandom"
            | "C_OpenSession"
            | "C_CloseSession"
            | "C_CloseAllSessions"
            | "C_Logout"
    )
}

/// Whether `template` makes a session object (no `CKA_TOKEN`, or false).
fn session_object(template: Option<&Template>) -> bool {
    template
        .and_then(|t| t.get(CKA_TOKEN))
        .is_none_or(|a| !a.as_bool().unwrap_or(false))
}

impl RemoteBackend {
    /// A client of the daemon at `socket`. Nothing is connected until the first call; use
    /// [`RemoteBackend::ping`] to check the daemon now.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self::with_transport(Transport::Unix {
            path: socket.into(),
            daemon_uid: rustix::process::geteuid().as_raw(),
        })
    }

    /// A client of the daemons at `endpoints` (all serving the same store), over TLS with
    /// `config` (`super::tls::client_config`), failing over from one to the next. Nothing is
    /// connected until the first call.
    pub fn tls(endpoints: Vec<Endpoint>, config: Arc<rustls::ClientConfig>) -> Self {
        Self::with_transport(Transport::Tls { endpoints, config })
    }

    fn with_transport(transport: Transport) -> Self {
        Self {
            transport,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_connections: DEFAULT_CONNECTIONS,
            state: Mutex::new(State {
                next_handle: 1,
                pid: std::process::id(),
                key: AppKey::random(),
                ..State::default()
            }),
            freed: Condvar::new(),
            dialing: Mutex::new(()),
        }
    }

    /// A client connected now: errors (`CKR_DEVICE_REMOVED`, ...) if the daemon is not there.
    pub fn connect(socket: impl Into<PathBuf>) -> Result<Self> {
        let b = Self::new(socket);
        b.ping()?;
        Ok(b)
    }

    /// Bounds each round trip by `timeout` instead of [`DEFAULT_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(100));
        self
    }

    /// Bounds connecting (TCP, TLS handshake, hello) to one endpoint by `timeout` instead of
    /// [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.max(Duration::from_millis(100));
        self
    }

    /// Opens at most `n` connections at once (at least 1) instead of [`DEFAULT_CONNECTIONS`]:
    /// as many of the application's calls run at the same time.
    pub fn with_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Expects the daemon to run under `uid` instead of this process's effective uid (root is
    /// accepted either way). Only for the Unix socket.
    pub fn with_daemon_uid(mut self, uid: u32) -> Self {
        if let Transport::Unix { daemon_uid, .. } = &mut self.transport {
            *daemon_uid = uid;
        }
        self
    }

    /// The socket (`None` for a TLS client).
    pub fn socket(&self) -> Option<&Path> {
        match &self.transport {
            Transport::Unix { path, .. } => Some(path),
            Transport::Tls { .. } => None,
        }
    }

    /// The endpoint the application is at now (`None`: not connected, or the Unix socket).
    pub fn endpoint(&self) -> Option<String> {
        let st = self.state.lock();
        match (&self.transport, st.endpoint) {
            (Transport::Tls { endpoints, .. }, Some(e)) => endpoints.get(e).map(|e| e.text.clone()),
            _ => None,
        }
    }

    /// Connects if not connected.
    pub fn ping(&self) -> Result<()> {
        let conn = self.checkout()?;
        self.give_back(conn);
        Ok(())
    }

    /// The connections open now (idle or in use).
    #[cfg(test)]
    pub(super) fn connections(&self) -> usize {
        self.state.lock().open
    }

    /// The application key the connections present now.
    #[cfg(test)]
    pub(super) fn app_key(&self) -> Option<AppKey> {
        self.state.lock().key
    }

    /// Presents `key` from now on (an attacker's client that stole it).
    #[cfg(test)]
    pub(super) fn set_app_key(&self, key: AppKey) {
        self.state.lock().key = Some(key);
    }

    /// Opens `n` connections at once (as `n` calls at the same time would), then lets them
    /// idle in the pool.
    #[cfg(test)]
    pub(super) fn grow(&self, n: usize) -> Result<()> {
        let mut held = Vec::new();
        for _ in 0..n {
            held.push(self.checkout()?);
        }
        for conn in held {
            self.give_back(conn);
        }
        Ok(())
    }

    /// Makes the next call behave as in the child of a `fork()` (another pid).
    #[cfg(test)]
    pub(super) fn pretend_forked(&self) {
        let mut st = self.state.lock();
        st.pid = st.pid.wrapping_add(1);
    }

    fn failover(&self) -> bool {
        matches!(self.transport, Transport::Tls { .. })
    }

    fn endpoints(&self) -> usize {
        match &self.transport {
            Transport::Unix { .. } => 1,
            Transport::Tls { endpoints, .. } => endpoints.len(),
        }
    }

    fn name(&self) -> String {
        match &self.transport {
            Transport::Unix { path, .. } => path.display().to_string(),
            Transport::Tls { endpoints, .. } => {
                let all: Vec<&str> = endpoints.iter().map(|e| e.text.as_str()).collect();
                all.join(", ")
            }
        }
    }

    fn endpoint_name(&self, endpoint: usize) -> String {
        match &self.transport {
            Transport::Tls { endpoints, .. } => endpoints
                .get(endpoint)
                .map_or_else(String::new, |e| e.text.clone()),
            Transport::Unix { .. } => self.name(),
        }
    }

    /// A new connection to the Unix socket, after the hello; whether it joined the
    /// application.
    fn open_unix(
        &self,
        path: &Path,
        daemon_uid: u32,
        key: Option<AppKey>,
    ) -> Result<(Stream, bool)> {
        let gone = |e: std::io::Error| {
            log::warn!(
                "the daemon at {} does not answer ({e}): is `ferrohsm serve --socket {}` running?",
                path.display(),
                path.display()
            );
            Error::DeviceRemoved
        };
        let stream = UnixStream::connect(path).map_err(gone)?;
        check_daemon(path, &stream, daemon_uid)?;
        let mut stream = Stream::Unix(stream);
        let joined = self.hello(&mut stream, &path.display().to_string(), key)?;
        Ok((stream, joined))
    }

    /// A new TLS connection to endpoint `e`, after the hello; whether it joined the
    /// application.
    fn open_tls(
        &self,
        e: &Endpoint,
        config: &Arc<rustls::ClientConfig>,
        key: Option<AppKey>,
    ) -> Result<(Stream, bool)> {
        let tls = e.connect(config, self.connect_timeout).map_err(|err| {
            if err.kind() == ErrorKind::InvalidData {
                // The handshake failed: a certificate, a name, a version; rustls says which.
                log::error!("remote {}: TLS: {err}", e.text);
                Error::DeviceError
            } else {
                log::warn!(
                    "the daemon at {} does not answer ({err}): is `ferrohsm serve --listen` running there?",
                    e.text
                );
                Error::DeviceRemoved
            }
        })?;
        let mut stream = Stream::Tls(Box::new(tls));
        let joined = self.hello(&mut stream, &e.text, key)?;
        Ok((stream, joined))
    }

    /// The hello exchange, within the connect timeout; whether the connection joined the
    /// application the daemon had for `key`.
    fn hello(&self, stream: &mut Stream, name: &str, key: Option<AppKey>) -> Result<bool> {
        let until = Instant::now() + self.connect_timeout;
        let gone = |e: std::io::Error| {
            log::debug!("remote {name}: hello: {e}");
            Error::DeviceRemoved
        };
        let hello = Hello {
            min: MODULE_VERSION,
            max: MODULE_VERSION,
            app: key,
        };
        // A daemon that refuses this client answers and closes without reading the hello, so
        // a failed send is not the end: the refusal may be waiting to be read.
        let sent = stream.send(&hello.encode(), until);
        let answer = match stream.receive(HELLO_MAX, until) {
            Ok(Some(answer)) => answer,
            Ok(None) if sent.is_ok() => {
                // Every daemon that refuses says why first; one of protocol version 1 cannot
                // read this hello and closes without a word.
                log::error!(
                    "remote {name}: the daemon closed the connection at the hello without an \
                     answer: a daemon older than this module (protocol {MODULE_VERSION}) does that; \
                     see its log, and run the same FerroHSM release on both sides"
                );
                return Err(Error::DeviceError);
            }
            Ok(None) => return Err(sent.err().map_or(Error::DeviceRemoved, gone)),
            Err(e) if matches!(stream, Stream::Tls(_)) && e.kind() == ErrorKind::InvalidData => {
                // TLS 1.3: the daemon's verdict on this client's certificate comes after the
                // client's side of the handshake, as an alert.
                log::error!(
                    "remote {name}: the daemon refused the TLS connection ({e}): is this client's \
                     certificate issued by its --client-ca, and its identity allowed?"
                );
                return Err(Error::DeviceError);
            }
            Err(e) => return Err(gone(sent.err().unwrap_or(e))),
        };
        match Welcome::decode(&answer)? {
            Welcome::Accepted {
                version: MODULE_VERSION,
                joined,
            } => Ok(joined),
            Welcome::Accepted { version, .. } => {
                log::error!(
                    "remote {name}: the daemon chose protocol version {version}, this module \
                     speaks {MODULE_VERSION}: run the same FerroHSM release on both sides"
                );
                Err(Error::DeviceError)
            }
            Welcome::Refused(rv) => {
                let hint = match rv {
                    CKR_FUNCTION_REJECTED => "is this uid allowed (--allow-uid)?",
                    CKR_DEVICE_MEMORY => "it is at a connection limit; see its log",
                    CKR_ACTION_PROHIBITED => {
                        "this identity holds no role in any tenant (`ferrohsm tenant grant`), or the tenants file is refused; see its log"
                    }
                    CKR_DEVICE_ERROR => {
                        "see its log (a daemon that speaks none of this module's protocol \
                         versions refuses this way: run the same FerroHSM release on both sides)"
                    }
                    _ => "see its log",
                };
                log::error!(
                    "remote {name}: the daemon refused this client ({}): {hint}",
                    crate::error::rv_name(rv)
                );
                Err(Error::DeviceError)
            }
        }
    }

    /// A connection for one round trip: an idle one of the application, else a new one while
    /// fewer than the cap are open, else the first one given back.
    fn checkout(&self) -> Result<Conn> {
        let deadline = Instant::now() + self.timeout;
        let mut st = self.state.lock();
        loop {
            st.forked();
            while let Some(mut conn) = st.idle.pop() {
                if !conn.stream.closed() {
                    return Ok(conn);
                }
                self.give_up(&mut st);
                if self.failover() {
                    log::warn!(
                        "remote {}: the daemon closed a connection; failing over",
                        self.endpoint_name(conn.endpoint)
                    );
                    st.fail_over(conn.endpoint, self.endpoints());
                }
            }
            if st.open < st.cap(self.max_connections) {
                st.open += 1;
                break;
            }
            if self.freed.wait_until(&mut st, deadline).timed_out() {
                log::error!(
                    "remote {}: no connection came free within {}s ({} open, all busy)",
                    self.name(),
                    self.timeout.as_secs_f64(),
                    st.open
                );
                return Err(Error::DeviceError);
            }
        }
        drop(st);
        match self.dial() {
            Ok(conn) => Ok(conn),
            Err(e) => {
                let mut st = self.state.lock();
                st.open = st.open.saturating_sub(1);
                self.freed.notify_one();
                if st.open == 0 {
                    return Err(e);
                }
                // The daemon may be at a limit for this peer or tenant: the connections this
                // client has will do.
                log::info!(
                    "remote {}: one more connection failed ({}); using the {} open",
                    self.name(),
                    e.name(),
                    st.open
                );
                st.capped = Some((st.open, Instant::now() + CAPPED_FOR));
                drop(st);
                self.checkout()
            }
        }
    }

    /// Gives a connection back after a round trip that went through.
    fn give_back(&self, conn: Conn) {
        self.state.lock().put_back(conn);
        self.freed.notify_one();
    }

    /// Gives a broken (or closed) connection up. The Unix socket: when no other connection is
    /// left, not even one being made, the daemon has ended the application (it lives while
    /// one of its connections does).
    fn give_up(&self, st: &mut State) {
        st.open = st.open.saturating_sub(1);
        if st.open == 0 && !self.failover() && st.established == Some(st.generation) {
            st.lost();
        }
        self.freed.notify_one();
    }

    /// Makes a connection: to the socket, or to the application's endpoint (a failover
    /// client: the first that answers, from the one after the endpoint that failed last, the
    /// sessions and logins restored there before anything else).
    fn dial(&self) -> Result<Conn> {
        let _one = self.dialing.lock();
        match &self.transport {
            Transport::Unix { path, daemon_uid } => {
                let key = self.state.lock().key;
                let (stream, joined) = self.open_unix(path, *daemon_uid, key)?;
                let mut st = self.state.lock();
                if st.key != key {
                    // Forked meanwhile: the connection is the parent's application's.
                    return Err(Error::DeviceRemoved);
                }
                if !joined && st.established == Some(st.generation) {
                    log::warn!(
                        "remote {}: the daemon no longer has this application (it restarted, \
                         or closed its connections): its sessions are gone",
                        self.name()
                    );
                    st.lost();
                }
                st.established = Some(st.generation);
                st.endpoint = Some(0);
                Ok(Conn {
                    stream,
                    endpoint: 0,
                    generation: st.generation,
                })
            }
            Transport::Tls { endpoints, config } => self.dial_tls(endpoints, config),
        }
    }

    /// [`RemoteBackend::dial`] over TLS.
    fn dial_tls(&self, endpoints: &[Endpoint], config: &Arc<rustls::ClientConfig>) -> Result<Conn> {
        let n = endpoints.len();
        let mut last = Error::DeviceRemoved;
        let start = {
            let st = self.state.lock();
            st.endpoint.unwrap_or(st.next_endpoint)
        };
        for i in 0..n {
            let index = (start + i) % n.max(1);
            let key = self.state.lock().key;
            let Some(e) = endpoints.get(index) else {
                continue;
            };
            let (mut stream, joined) = match self.open_tls(e, config, key) {
                Ok(s) => s,
                Err(err) => {
                    last = err;
                    let mut st = self.state.lock();
                    if st.endpoint == Some(index) {
                        // The application's endpoint is gone: it moves.
                        st.fail_over(index, n);
                    }
                    continue;
                }
            };
            let mut st = self.state.lock();
            if st.key != key {
                // Moved (or forked) meanwhile: this connection is of the old application.
                last = Error::DeviceRemoved;
                continue;
            }
            if !joined && st.established == Some(st.generation) {
                // Its connections all ended there (closed to make room, say): this one opened
                // a new application, where the sessions are restored as after a failover.
                log::warn!(
                    "remote {}: the daemon no longer has this application; restoring it",
                    e.text
                );
                st.moved();
            }
            // The state stays locked while the sessions are restored: nothing else may be
            // sent to the new application before that (and nothing can: every connection is
            // made under `dialing`, and this one is the only one of its generation).
            match self.restore(&mut st, &mut stream, &e.text) {
                Ok(()) => {
                    if st.established.is_some_and(|g| g != st.generation) || i > 0 {
                        log::warn!(
                            "remote: now using {} ({} sessions restored)",
                            e.text,
                            st.sessions.len()
                        );
                    }
                    st.established = Some(st.generation);
                    st.endpoint = Some(index);
                    st.next_endpoint = index;
                    return Ok(Conn {
                        stream,
                        endpoint: index,
                        generation: st.generation,
                    });
                }
                Err(err) => {
                    log::warn!("remote {}: restoring the sessions failed: {err}", e.text);
                    last = Error::DeviceRemoved;
                    // Whatever was re-opened there belongs to the dropped connection.
                    st.fail_over(index, n);
                }
            }
        }
        Err(last)
    }

    /// One round trip on a connection of the pool, no lock held while it travels; session
    /// handles are translated both ways, outputs delivered into the call's buffers.
    fn round(&self, mut call: Call<'_>) -> Result<Reply> {
        let name = call.name();
        let phase = Phase::of(name);
        let local = match call.target() {
            Target::Session(s) => Some(s.0),
            _ => None,
        };
        {
            let mut st = self.state.lock();
            st.forked();
            if let Some(l) = local {
                // A session of an application the daemon no longer has is invalid whether or
                // not the daemon answers now.
                let current = st.generation;
                match st.sessions.get(&l) {
                    None => return Err(Error::SessionHandleInvalid),
                    Some(s) if s.generation != current && !self.failover() => {
                        st.sessions.remove(&l);
                        return Err(Error::SessionHandleInvalid);
                    }
                    Some(_) => {}
                }
            }
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut conn = self.checkout()?;
            {
                let mut st = self.state.lock();
                if conn.generation != st.generation {
                    // The application moved while the connection was made.
                    self.give_up(&mut st);
                    if attempt > self.endpoints() + 1 {
                        return Err(Error::DeviceRemoved);
                    }
                    continue;
                }
                if let Err(e) = self.prepare(&mut st, &mut call, local, phase) {
                    st.put_back(conn);
                    self.freed.notify_one();
                    return Err(e);
                }
            }
            let exchanged = self.exchange(&mut conn.stream, &call);
            let mut st = self.state.lock();
            let failed = match exchanged {
                Ok(response) if conn.generation == st.generation => {
                    st.put_back(conn);
                    self.freed.notify_one();
                    let mut reply = self.settle(&mut st, &call, local, phase, response)?;
                    drop(st);
                    call.deliver(&mut reply)?;
                    return Ok(reply);
                }
                Ok(_) => {
                    // Answered by the application this client has left meanwhile (another
                    // call's connection broke and moved it): what it did is lost with it.
                    log::info!("remote: {name} was answered by an application since left");
                    None
                }
                Err(e) => {
                    log::warn!(
                        "remote {}: {name} failed, connection dropped: {e}",
                        self.endpoint_name(conn.endpoint)
                    );
                    Some(e)
                }
            };
            self.give_up(&mut st);
            if !self.failover() {
                return Err(failed.as_ref().map_or(Error::DeviceRemoved, io_error));
            }
            if failed.is_some() && conn.generation == st.generation {
                st.fail_over(conn.endpoint, self.endpoints());
            }
            if let Some(s) = local.and_then(|l| st.sessions.get_mut(&l)) {
                if phase != Phase::None {
                    // This call reports the loss itself.
                    s.lost_op = false;
                }
            }
            if attempt == 1 && retried(name) {
                continue;
            }
            return Err(Error::DeviceError);
        }
    }

    /// Checks the call's session against what this client remembers and puts the daemon's
    /// handle of it into the call (the application's handle may stand for another after a
    /// failover).
    fn prepare(
        &self,
        st: &mut State,
        call: &mut Call<'_>,
        local: Option<CK_SESSION_HANDLE>,
        phase: Phase,
    ) -> Result<()> {
        let Some(local) = local else {
            return Ok(());
        };
        let current = st.generation;
        let s = st
            .sessions
            .get_mut(&local)
            .ok_or(Error::SessionHandleInvalid)?;
        if s.generation != current {
            // The Unix socket: the application it was open in is gone. (A failover client
            // re-opened its sessions in the new one before this call got its connection.)
            st.sessions.remove(&local);
            return Err(Error::SessionHandleInvalid);
        }
        // An operation lost with its daemon fails the call that continues it, once.
        if s.lost_op {
            match phase {
                Phase::Continue | Phase::End => {
                    s.lost_op = false;
                    log::info!(
                        "remote: {}: the operation of session {local} was lost with its daemon",
                        call.name()
                    );
                    return Err(Error::DeviceError);
                }
                Phase::Begin => s.lost_op = false,
                Phase::None => {}
            }
        }
        let remote = s.remote;
        if let Target::Session(s) = call.target() {
            *s = remote;
        }
        // Session objects made in an application since left are gone.
        if call.objects().iter().any(|h| {
            st.session_objects
                .get(h)
                .is_some_and(|(g, _)| *g != current)
        }) {
            return Err(Error::ObjectHandleInvalid);
        }
        Ok(())
    }

    /// Re-opens every remembered session of an older connection on `stream` (a new one) and
    /// logs each slot in again. A session or login the daemon refuses is forgotten (logged);
    /// a broken connection is an error (the caller tries the next endpoint).
    fn restore(&self, st: &mut State, stream: &mut Stream, name: &str) -> std::io::Result<()> {
        let generation = st.generation;
        if st.sessions.values().all(|s| s.generation == generation) {
            return Ok(());
        }
        let mut forget = Vec::new();
        for (local, s) in &mut st.sessions {
            let call = Call::OpenSession {
                slot: s.slot,
                flags: s.flags,
            };
            match self.exchange(stream, &call)? {
                Ok(Reply::Session(remote)) => {
                    s.remote = remote;
                    s.generation = generation;
                }
                other => {
                    log::warn!(
                        "remote {name}: session {local} of slot {} cannot be re-opened ({}); it is closed",
                        s.slot.0,
                        other.err().map_or("an unexpected reply", |e| e.name())
                    );
                    forget.push(*local);
                }
            }
        }
        for local in forget {
            st.sessions.remove(&local);
        }
        let mut failed_slots = Vec::new();
        for (slot, login) in &st.logins {
            let Some(session) = st
                .sessions
                .values()
                .find(|s| s.slot == *slot)
                .map(|s| s.remote)
            else {
                continue;
            };
            let call = match &login.username {
                Some(username) => Call::LoginUser {
                    session,
                    user: login.user,
                    pin: login.pin.as_deref().map(Vec::as_slice),
                    username,
                },
                None => Call::Login {
                    session,
                    user: login.user,
                    pin: login.pin.as_deref().map(Vec::as_slice),
                },
            };
            match self.exchange(stream, &call)? {
                Ok(_) | Err(Error::UserAlreadyLoggedIn) => {}
                Err(e) => {
                    log::warn!(
                        "remote {name}: logging slot {} in again failed ({}); its sessions are closed",
                        slot.0,
                        e.name()
                    );
                    failed_slots.push(*slot);
                }
            }
        }
        for slot in failed_slots {
            st.logins.remove(&slot);
            let gone: Vec<(CK_SESSION_HANDLE, SessionHandle)> = st
                .sessions
                .iter()
                .filter(|(_, s)| s.slot == slot)
                .map(|(l, s)| (*l, s.remote))
                .collect();
            for (local, remote) in gone {
                st.sessions.remove(&local);
                let _ = self.exchange(stream, &Call::CloseSession { session: remote })?;
            }
        }
        Ok(())
    }

    /// One request and its response on `stream`, by the call timeout. The outer error is the
    /// connection's.
    fn exchange(&self, stream: &mut Stream, call: &Call<'_>) -> std::io::Result<Response> {
        let until = Instant::now() + self.timeout;
        // A login carries the PIN: the encoded request is wiped when dropped.
        stream.send(&Zeroizing::new(call.encode()), until)?;
        let frame = stream
            .receive(MAX_FRAME, until)?
            .ok_or(ErrorKind::UnexpectedEof)?;
        decode_response(&frame).map_err(|_| ErrorKind::InvalidData.into())
    }

    /// Keeps the remembered state after an answered call (sessions, logins, operations,
    /// session objects); the reply, its outputs still to be delivered.
    fn settle(
        &self,
        st: &mut State,
        call: &Call<'_>,
        local: Option<CK_SESSION_HANDLE>,
        phase: Phase,
        response: Response,
    ) -> Result<Reply> {
        let generation = st.generation;
        let query = call.is_query();
        if let Some(s) = local.and_then(|l| st.sessions.get_mut(&l)) {
            match (&response, phase) {
                (Ok(_), Phase::Begin) => s.op = true,
                (Ok(_), Phase::Continue) => {}
                (Err(Error::BufferTooSmall { .. }), _) => {}
                (Ok(_), Phase::End) if query => {}
                (_, Phase::End) => s.op = false,
                _ => {}
            }
        }
        let reply = match response {
            Ok(reply) => reply,
            Err(e @ (Error::SessionHandleInvalid | Error::SessionClosed)) => {
                if let Some(l) = local {
                    st.sessions.remove(&l);
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        if let Call::OpenSession { slot, flags } = call {
            let Reply::Session(remote) = reply else {
                return Err(Error::DeviceError);
            };
            let handle = new_handle(st);
            st.sessions.insert(
                handle,
                Sess {
                    generation,
                    remote,
                    slot: *slot,
                    flags: *flags,
                    op: false,
                    lost_op: false,
                },
            );
            return Ok(Reply::Session(SessionHandle(handle)));
        }
        if !self.failover() {
            // Nothing is restored on the Unix socket: no login or session object to keep.
            match call {
                Call::CloseSession { .. } => {
                    if let Some(l) = local {
                        st.sessions.remove(&l);
                    }
                }
                Call::CloseAllSessions { slot } => st.sessions.retain(|_, s| s.slot != *slot),
                _ => {}
            }
            return Ok(reply);
        }
        match call {
            Call::CloseSession { .. } => {
                if let Some(l) = local {
                    self.forget_session(st, l);
                }
            }
            Call::CloseAllSessions { slot } => {
                let mine: Vec<CK_SESSION_HANDLE> = st
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.slot == *slot)
                    .map(|(l, _)| *l)
                    .collect();
                for l in mine {
                    self.forget_session(st, l);
                }
                st.logins.remove(slot);
            }
            Call::Login { user, pin, .. } if *user != CKU_CONTEXT_SPECIFIC => {
                if let Some(slot) = local.and_then(|l| st.sessions.get(&l)).map(|s| s.slot) {
                    st.logins.insert(
                        slot,
                        Login {
                            user: *user,
                            pin: pin.map(|p| Zeroizing::new(p.to_vec())),
                            username: None,
                        },
                    );
                }
            }
            Call::LoginUser {
                user,
                pin,
                username,
                ..
            } if *user != CKU_CONTEXT_SPECIFIC => {
                if let Some(slot) = local.and_then(|l| st.sessions.get(&l)).map(|s| s.slot) {
                    st.logins.insert(
                        slot,
                        Login {
                            user: *user,
                            pin: pin.map(|p| Zeroizing::new(p.to_vec())),
                            username: Some(Zeroizing::new(username.to_vec())),
                        },
                    );
                }
            }
            Call::Logout { .. } => {
                if let Some(slot) = local.and_then(|l| st.sessions.get(&l)).map(|s| s.slot) {
                    st.logins.remove(&slot);
                }
            }
            Call::SetPin { new_pin, .. } => {
                // The PIN of the user logged in changed: the new one logs in again.
                if let Some(slot) = local.and_then(|l| st.sessions.get(&l)).map(|s| s.slot) {
                    if let Some(login) = st.logins.get_mut(&slot) {
                        login.pin = Some(Zeroizing::new(new_pin.to_vec()));
                    }
                }
            }
            _ => {}
        }
        // Session objects created now, so that their handles are refused after a failover.
        if let Some(l) = local {
            let made: Vec<ObjectHandle> = match (call, &reply) {
                (
                    Call::CreateObject { template, .. }
                    | Call::GenerateKey { template, .. }
                    | Call::UnwrapKey { template, .. }
                    | Call::DeriveKey { template, .. },
                    Reply::Object(h),
                ) if session_object(Some(template)) => vec![*h],
                (Call::CopyObject { template, .. }, Reply::Object(h))
                    if template.get(CKA_TOKEN).is_some() && session_object(Some(template)) =>
                {
                    vec![*h]
                }
                (
                    Call::GenerateKeyPair {
                        public_template,
                        private_template,
                        ..
                    },
                    Reply::KeyPair((public, private)),
                ) => {
                    let mut v = Vec::new();
                    if session_object(Some(public_template)) {
                        v.push(*public);
                    }
                    if session_object(Some(private_template)) {
                        v.push(*private);
                    }
                    v
                }
                _ => Vec::new(),
            };
            for h in made {
                st.session_objects.insert(h, (generation, l));
            }
            if let (Call::DestroyObject { object, .. }, Reply::Unit(())) = (call, &reply) {
                st.session_objects.remove(object);
            }
        }
        Ok(reply)
    }

    /// Forgets a closed session, its session objects, and its slot's login with the last
    /// session of the slot (PKCS#11: closing the last session logs the application out).
    fn forget_session(&self, st: &mut State, local: CK_SESSION_HANDLE) {
        let Some(s) = st.sessions.remove(&local) else {
            return;
        };
        let generation = st.generation;
        st.session_objects
            .retain(|_, (g, owner)| !(*g == generation && *owner == local));
        if !st.sessions.values().any(|x| x.slot == s.slot) {
            st.logins.remove(&s.slot);
        }
    }
}

fn new_handle(st: &mut State) -> CK_SESSION_HANDLE {
    let handle = st.next_handle;
    st.next_handle = st.next_handle.wrapping_add(1).max(1);
    handle
}

/// The error of a call whose connection broke (the Unix socket).
fn io_error(e: &std::io::Error) -> Error {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            log::error!("remote: the daemon did not answer in time");
            Error::DeviceError
        }
        ErrorKind::InvalidData => Error::DeviceError,
        _ => Error::DeviceRemoved,
    }
}

/// Refuses a socket served by a process under another uid than the expected daemon's (or
/// root), before anything is sent on it.
fn check_daemon(path: &Path, stream: &UnixStream, daemon_uid: u32) -> Result<()> {
    let peer = rustix::net::sockopt::socket_peercred(stream).map_err(|e| {
        log::error!(
            "remote {}: cannot read the daemon's credentials (SO_PEERCRED): {e}; not using it",
            path.display()
        );
        Error::DeviceError
    })?;
    let uid = peer.uid.as_raw();
    if uid == daemon_uid || uid == 0 {
        return Ok(());
    }
    log::error!(
        "remote {}: the socket is served by uid {uid} (pid {}), not the daemon's uid {} \
         (or root); nothing sent (set daemon_uid in the slot if the daemon runs as another \
         user)",
        path.display(),
        peer.pid.as_raw_nonzero(),
        daemon_uid
    );
    Err(Error::DeviceError)
}

impl Backend for RemoteBackend {
    fn call(&self, call: Call<'_>) -> Result<Reply> {
        if let Call::WaitForSlotEvent { flags } = call {
            if flags & CKF_DONT_BLOCK == 0 {
                // A blocking wait would hold the connection (and time out): not forwarded.
                return Err(Error::FunctionNotSupported);
            }
        }
        self.round(call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_follow_the_function_names() {
        for n in [
            "C_SignInit",
            "C_FindObjectsInit",
            "C_MessageEncryptInit",
            "C_SetOperationState",
        ] {
            assert_eq!(Phase::of(n), Phase::Begin, "{n}");
        }
        for n in [
            "C_Sign",
            "C_SignFinal",
            "C_FindObjectsFinal",
            "C_Verify",
            "C_SessionCancel",
        ] {
            assert_eq!(Phase::of(n), Phase::End, "{n}");
        }
        for n in [
            "C_SignUpdate",
            "C_FindObjects",
            "C_EncryptMessageNext",
            "C_SignMessageBegin",
        ] {
            assert_eq!(Phase::of(n), Phase::Continue, "{n}");
        }
        for n in [
            "C_InitToken",
            "C_InitPIN",
            "C_Login",
            "C_GenerateKeyPair",
            "C_OpenSession",
        ] {
            assert_eq!(Phase::of(n), Phase::None, "{n}");
        }
    }

    #[test]
    fn nothing_that_changes_the_store_or_an_operation_is_retried() {
        for n in [
            "C_GetAttributeValue",
            "C_GetTokenInfo",
            "C_OpenSession",
            "C_GenerateRandom",
        ] {
            assert!(retried(n), "{n}");
        }
        for n in [
            "C_Login",
            "C_Sign",
            "C_SignInit",
            "C_GenerateKeyPair",
            "C_DestroyObject",
            "C_SetPIN",
            "C_FindObjects",
            "C_SetAttributeValue",
        ] {
            assert!(!retried(n), "{n}");
        }
    }
}
