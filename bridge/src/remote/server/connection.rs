//! One connection: frames with deadlines, the TLS handshake, the hello, joining or opening an
//! application (its backend, its sessions), and the requests it serves until it ends.

use std::collections::HashMap;
use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use parking_lot::{Mutex, RwLock};
use rustix::io::Errno;

use crate::call::{Backend, BackendExt, Reply, Request};
use crate::error::{Error, Result};
use crate::types::{SessionHandle, SlotId};

use crate::remote::proto::{
    APP_KEY_VERSION, AppKey, DAEMON_TAG, DAEMON_VERSION, DaemonRequest, HELLO_MAX, Hello,
    MAX_FRAME, MIN_VERSION, Response, VERSION, Welcome, encode_daemon_response, encode_response,
    read_frame_max,
};
use crate::remote::tls::{TlsReader, TlsStream};

use super::registry::{Identity, Key, Peer, Phase, Registry, make_room, peer_identity};
use super::{EVICT_WAIT, Shared, Source, open_descriptors};

/// Sends one frame without raising `SIGPIPE` on a closed peer; with a deadline, each write
/// waits only until then.
pub(in crate::remote) fn send_frame(
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
pub(in crate::remote) fn framed(payload: &[u8]) -> std::io::Result<zeroize::Zeroizing<Vec<u8>>> {
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
pub(in crate::remote) struct Timed<'a> {
    pub(in crate::remote) stream: &'a UnixStream,
    pub(in crate::remote) until: Instant,
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
pub(super) enum Link {
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
pub(super) fn connection(shared: &Shared, id: u64, peer: Peer, mut link: Link, hello_by: Instant) {
    let mut conn = Connection::default();
    let end = conn.run(shared, id, &mut link, hello_by);
    finish(shared, id, &peer, end, conn);
}

/// Runs a TLS connection: the handshake, the identity's limits, then the protocol as on the
/// Unix socket. Until the handshake has verified the client's certificate, nothing of the
/// backend exists for the peer.
pub(super) fn tls_connection(
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
            End::Handshake(crate::remote::tls::describe(&e))
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
    pub(super) fn new(backend: Arc<dyn Backend>) -> Arc<Self> {
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
pub(super) struct Apps(Mutex<HashMap<AppId, (usize, Cell)>>);

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

/// One request frame in, one response frame out, as a connection runs it (without the
/// per-connection session table): decodes, calls `backend`, encodes. A malformed frame is an
/// error (the server closes the connection on it). For fuzzing and for embedding the protocol
/// in other transports.
pub fn respond(backend: &dyn Backend, frame: &[u8]) -> Result<Vec<u8>> {
    let request = Request::decode(frame)?;
    Ok(encode_response(&request.serve(|call| backend.call(call))))
}
