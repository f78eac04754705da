//! The client side: a `Backend` whose every call is one request/response round trip to a
//! daemon, over its Unix socket or over TLS to one of its network endpoints.
//!
//! - The connection is made lazily, by the first call, and again by the first call after it
//!   broke: construction never fails because the daemon is down.
//! - Calls are serialised on one connection (a mutex); every round trip ends by a deadline
//!   (the call timeout), connecting and the hello by the connect timeout.
//! - After `fork()` the child notices the pid change and makes its own connection (it never
//!   writes to the parent's), remembering nothing of the parent's sessions or logins.
//!
//! # The Unix socket
//!
//! - A call whose connection breaks (the daemon died or restarted) fails with
//!   `CKR_DEVICE_REMOVED`; a call that cannot connect fails the same way; a malformed answer or
//!   a timeout gives `CKR_DEVICE_ERROR` and drops the connection.
//! - Sessions belong to the connection that opened them: this client hands out its own
//!   session handles and maps them to the daemon's, so a handle from a previous connection
//!   is `CKR_SESSION_HANDLE_INVALID`, never a session of the new one.
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
//! - It uses one endpoint at a time, the first that answers, from the one after the endpoint
//!   that failed last; it stays there until that one fails.
//! - It remembers, per application session, what re-opens it (slot, flags), and per slot the
//!   login (user type, PIN, user name), in memory, zeroized when forgotten; the PIN is kept
//!   only while logged in.
//! - When the connection in use breaks (an I/O error, the end of the stream, a timeout, a
//!   malformed answer) it is dropped; the next connection (to the next endpoint) re-opens
//!   every session and logs each slot in again before anything else is sent, so the
//!   application's session handles stay valid and logged in. Token-object handles are the
//!   store's row ids, the same on every endpoint of the store. Session objects and active
//!   operations (signing, finding, ...) do not survive: they lived in the daemon that is gone.
//! - The call in flight when the connection broke fails with `CKR_DEVICE_ERROR`, except the
//!   calls that neither change anything nor belong to an operation ([`retried`]), which are
//!   sent once more on the next endpoint. A call found to be headed for a connection that
//!   has already closed (checked without blocking just before sending) is not in flight: it
//!   goes to the next endpoint.
//! - A session that had an operation active on the lost endpoint answers the next call that
//!   continues or finishes that operation with `CKR_DEVICE_ERROR`, once ([`Phase`]); the call
//!   after that works (e.g. a new `C_SignInit`).
//! - A session object handle handed out before the failover answers
//!   `CKR_OBJECT_HANDLE_INVALID` until the new endpoint hands out the same number.
//! - A session that cannot be re-opened, or whose login is refused on the new endpoint (the
//!   PIN was changed meanwhile), is forgotten: `CKR_SESSION_HANDLE_INVALID`.
//! - When no endpoint answers, calls fail with `CKR_DEVICE_REMOVED`; the sessions are still
//!   remembered and come back with the first endpoint that does.

use std::collections::{BTreeMap, HashMap};
use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use parking_lot::Mutex;
use zeroize::Zeroizing;

use crate::call::{Backend, Call, Reply, Target};
use crate::error::{Error, Result};
use crate::types::*;

use super::proto::{
    HELLO_MAX, Hello, MAX_FRAME, Response, VERSION, Welcome, decode_response, read_frame_max,
};
use super::server::{Timed, framed, send_frame};
use super::tls::{Endpoint, TlsReader, TlsStream};

/// How long connecting and the hello exchange may take by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default bound on one call's round trip (a live daemon answers within it even for a
/// large RSA key generation; a dead one is noticed at once, by the end of the stream).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A `Backend` served by a daemon (`ferrohsm serve`), on a Unix socket or on TLS endpoints.
pub struct RemoteBackend {
    transport: Transport,
    timeout: Duration,
    connect_timeout: Duration,
    state: Mutex<State>,
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

struct Conn {
    stream: Stream,
    /// The endpoint (index) it goes to; 0 for the Unix socket.
    endpoint: usize,
}

/// An application session, as this client remembers it.
struct Sess {
    /// The connection it is open on (its `remote` handle means nothing on another).
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
    conn: Option<Conn>,
    /// Bumped whenever a connection is dropped.
    generation: u64,
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
    /// Drops the connection (the Unix socket: its sessions become invalid).
    fn drop_conn(&mut self) {
        if self.conn.take().is_some() {
            self.generation += 1;
        }
    }

    /// Drops a broken connection of a failover client: every remembered session is to be
    /// re-opened, the operations active on the lost daemon are lost, and the next connection
    /// starts with the next endpoint.
    fn fail_over(&mut self, endpoints: usize) {
        if let Some(conn) = self.conn.take() {
            self.generation += 1;
            self.next_endpoint = (conn.endpoint + 1) % endpoints.max(1);
        }
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

    /// After `fork()`: the child is another application; nothing of the parent's is used.
    fn forked(&mut self) {
        let pid = std::process::id();
        if self.pid != pid {
            // Closing our copy of the parent's socket leaves the parent's connection intact.
            self.drop_conn();
            self.sessions.clear();
            self.logins.clear();
            self.session_objects.clear();
            self.pid = pid;
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
            state: Mutex::new(State {
                next_handle: 1,
                pid: std::process::id(),
                ..State::default()
            }),
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

    /// The endpoint the connection goes to now (`None`: not connected, or the Unix socket).
    pub fn endpoint(&self) -> Option<String> {
        let st = self.state.lock();
        match (&self.transport, &st.conn) {
            (Transport::Tls { endpoints, .. }, Some(conn)) => {
                endpoints.get(conn.endpoint).map(|e| e.text.clone())
            }
            _ => None,
        }
    }

    /// Connects if not connected.
    pub fn ping(&self) -> Result<()> {
        let mut st = self.state.lock();
        st.forked();
        self.connection(&mut st).map(|_| ())
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

    /// A new connection to the Unix socket, after the hello.
    fn open_unix(&self, path: &Path, daemon_uid: u32) -> Result<Stream> {
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
        self.hello(&mut stream, &path.display().to_string())?;
        Ok(stream)
    }

    /// A new TLS connection to endpoint `e`, after the hello.
    fn open_tls(&self, e: &Endpoint, config: &Arc<rustls::ClientConfig>) -> Result<Stream> {
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
        self.hello(&mut stream, &e.text)?;
        Ok(stream)
    }

    /// The hello exchange, within the connect timeout.
    fn hello(&self, stream: &mut Stream, name: &str) -> Result<()> {
        let until = Instant::now() + self.connect_timeout;
        let gone = |e: std::io::Error| {
            log::debug!("remote {name}: hello: {e}");
            Error::DeviceRemoved
        };
        let hello = Hello {
            min: VERSION,
            max: VERSION,
        };
        // A daemon that refuses this client answers and closes without reading the hello, so
        // a failed send is not the end: the refusal may be waiting to be read.
        let sent = stream.send(&hello.encode(), until);
        let answer = match stream.receive(HELLO_MAX, until) {
            Ok(Some(answer)) => answer,
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
            Welcome::Accepted(VERSION) => Ok(()),
            Welcome::Accepted(v) => {
                log::error!("remote {name}: daemon chose version {v}");
                Err(Error::DeviceError)
            }
            Welcome::Refused(rv) => {
                let hint = match rv {
                    CKR_FUNCTION_REJECTED => "is this uid allowed (--allow-uid)?",
                    CKR_DEVICE_MEMORY => "it is at a connection limit; see its log",
                    CKR_ACTION_PROHIBITED => {
                        "this identity holds no role in any tenant (`ferrohsm tenant grant`), or the tenants file is refused; see its log"
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

    /// The connection, made if there is none (and, for a failover client, checked first for
    /// a daemon that has gone away since the last call; a new one gets the remembered
    /// sessions and logins before anything else).
    fn connection<'s>(&self, st: &'s mut State) -> Result<&'s mut Stream> {
        if self.failover() && st.conn.as_mut().is_some_and(|c| c.stream.closed()) {
            log::warn!(
                "remote {}: the daemon closed the connection; failing over",
                self.endpoint_name(st)
            );
            st.fail_over(self.endpoints());
        }
        if st.conn.is_none() {
            let conn = match &self.transport {
                Transport::Unix { path, daemon_uid } => Conn {
                    stream: self.open_unix(path, *daemon_uid)?,
                    endpoint: 0,
                },
                Transport::Tls { endpoints, config } => self.open_any(st, endpoints, config)?,
            };
            st.conn = Some(conn);
        }
        st.conn
            .as_mut()
            .map(|c| &mut c.stream)
            .ok_or(Error::DeviceRemoved)
    }

    fn endpoint_name(&self, st: &State) -> String {
        match (&self.transport, &st.conn) {
            (Transport::Tls { endpoints, .. }, Some(c)) => endpoints
                .get(c.endpoint)
                .map_or_else(String::new, |e| e.text.clone()),
            _ => self.name(),
        }
    }

    /// Connects to the first endpoint that answers, from `st.next_endpoint` on, and restores
    /// the sessions there.
    fn open_any(
        &self,
        st: &mut State,
        endpoints: &[Endpoint],
        config: &Arc<rustls::ClientConfig>,
    ) -> Result<Conn> {
        let n = endpoints.len();
        let mut last = Error::DeviceRemoved;
        for i in 0..n {
            let index = (st.next_endpoint + i) % n.max(1);
            let Some(e) = endpoints.get(index) else {
                continue;
            };
            let mut stream = match self.open_tls(e, config) {
                Ok(s) => s,
                Err(err) => {
                    last = err;
                    continue;
                }
            };
            match self.restore(st, &mut stream, &e.text) {
                Ok(()) => {
                    if st.generation > 0 || i > 0 {
                        log::warn!(
                            "remote: now using {} ({} sessions restored)",
                            e.text,
                            st.sessions.len()
                        );
                    }
                    st.next_endpoint = index;
                    return Ok(Conn {
                        stream,
                        endpoint: index,
                    });
                }
                Err(err) => {
                    log::warn!("remote {}: restoring the sessions failed: {err}", e.text);
                    last = Error::DeviceRemoved;
                    // Whatever was re-opened there belongs to the dropped connection.
                    st.generation += 1;
                }
            }
        }
        Err(last)
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

    /// One round trip; session handles are translated both ways, outputs delivered into the
    /// call's buffers.
    fn round(&self, mut call: Call<'_>) -> Result<Reply> {
        let mut st = self.state.lock();
        st.forked();
        if self.failover() {
            return self.round_failover(&mut st, call);
        }
        let mut local = None;
        let opening = matches!(call, Call::OpenSession { .. });
        let closing_all = matches!(call, Call::CloseAllSessions { .. });
        let mut open_slot = None;
        let mut close_all = None;
        match call.target() {
            Target::Session(s) => {
                local = Some(*s);
                let current = st.generation;
                let live = st.conn.is_some();
                let remote = match st.sessions.get(&s.0) {
                    Some(x) if x.generation == current && live => x.remote,
                    Some(_) => {
                        st.sessions.remove(&s.0);
                        return Err(Error::SessionHandleInvalid);
                    }
                    None => return Err(Error::SessionHandleInvalid),
                };
                *s = remote;
            }
            Target::Slot(slot) => {
                if opening {
                    open_slot = Some(*slot);
                } else if closing_all {
                    close_all = Some(*slot);
                }
            }
            Target::None => {}
        }
        let name = call.name();
        let closing = matches!(call, Call::CloseSession { .. });
        let stream = self.connection(&mut st)?;
        let response = match self.exchange(stream, &call) {
            Ok(r) => r,
            Err(e) => {
                log::warn!(
                    "remote {}: {name} failed, connection dropped: {e}",
                    self.name(),
                );
                st.drop_conn();
                return Err(io_error(&e));
            }
        };
        let gone = |st: &mut State| {
            if let Some(local) = local {
                st.sessions.remove(&local.0);
            }
        };
        match (response, open_slot) {
            (Ok(Reply::Session(remote)), Some(slot)) => {
                let handle = new_handle(&mut st);
                let generation = st.generation;
                st.sessions.insert(
                    handle,
                    Sess {
                        generation,
                        remote,
                        slot,
                        flags: 0,
                        op: false,
                        lost_op: false,
                    },
                );
                Ok(Reply::Session(SessionHandle(handle)))
            }
            (Ok(mut reply), _) => {
                if let Some(slot) = close_all {
                    st.sessions.retain(|_, s| s.slot != slot);
                }
                if closing {
                    gone(&mut st);
                }
                drop(st);
                call.deliver(&mut reply)?;
                Ok(reply)
            }
            (Err(e @ (Error::SessionHandleInvalid | Error::SessionClosed)), _) => {
                gone(&mut st);
                Err(e)
            }
            (Err(e), _) => Err(e),
        }
    }

    /// [`RemoteBackend::round`] for a failover client (module documentation).
    fn round_failover(&self, st: &mut State, mut call: Call<'_>) -> Result<Reply> {
        let name = call.name();
        let phase = Phase::of(name);
        let local = match call.target() {
            Target::Session(s) => Some(s.0),
            _ => None,
        };
        if local.is_some_and(|l| !st.sessions.contains_key(&l)) {
            return Err(Error::SessionHandleInvalid);
        }
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            // Connecting notices a daemon that went away since the last call, and fails over.
            self.connection(st)?;
            if let Some(local) = local {
                let s = st
                    .sessions
                    .get_mut(&local)
                    .ok_or(Error::SessionHandleInvalid)?;
                // An operation lost with its daemon fails the call that continues it, once.
                if s.lost_op {
                    match phase {
                        Phase::Continue | Phase::End => {
                            s.lost_op = false;
                            log::info!(
                                "remote: {name}: the operation of session {local} was lost with its daemon"
                            );
                            return Err(Error::DeviceError);
                        }
                        Phase::Begin => s.lost_op = false,
                        Phase::None => {}
                    }
                }
                // The session's handle on this connection (a failover just re-opened it).
                let remote = s.remote;
                if let Target::Session(s) = call.target() {
                    *s = remote;
                }
            }
            // Session objects made on a lost connection are gone.
            let current = st.generation;
            if call.objects().iter().any(|h| {
                st.session_objects
                    .get(h)
                    .is_some_and(|(g, _)| *g != current)
            }) {
                return Err(Error::ObjectHandleInvalid);
            }
            let Some(conn) = st.conn.as_mut() else {
                return Err(Error::DeviceRemoved);
            };
            match self.exchange(&mut conn.stream, &call) {
                Ok(r) => break r,
                Err(e) => {
                    log::warn!(
                        "remote {}: {name} failed, connection dropped: {e}",
                        self.endpoint_name(st)
                    );
                    st.fail_over(self.endpoints());
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
        };
        self.settle(st, &mut call, local, phase, response)
    }

    /// Keeps the remembered state after an answered call (sessions, logins, operations,
    /// session objects) and delivers the outputs.
    fn settle(
        &self,
        st: &mut State,
        call: &mut Call<'_>,
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
        let mut reply = match response {
            Ok(reply) => reply,
            Err(e @ (Error::SessionHandleInvalid | Error::SessionClosed)) => {
                if let Some(l) = local {
                    st.sessions.remove(&l);
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        match &*call {
            Call::OpenSession { slot, flags } => {
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
            let made: Vec<ObjectHandle> = match (&*call, &reply) {
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
            if let (Call::DestroyObject { object, .. }, Reply::Unit(())) = (&*call, &reply) {
                st.session_objects.remove(object);
            }
        }
        call.deliver(&mut reply)?;
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
