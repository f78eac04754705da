//! The client side: a `Backend` whose every call is one request/response round trip to a
//! daemon.
//!
//! - The connection is made lazily, by the first call, and again by the first call after it
//!   broke: construction never fails because the daemon is down.
//! - A call whose connection breaks (the daemon died or restarted) fails with
//!   `CKR_DEVICE_REMOVED`; a call that cannot connect fails the same way; a malformed answer or
//!   a timeout gives `CKR_DEVICE_ERROR` and drops the connection.
//! - Sessions belong to the connection that opened them: this client hands out its own
//!   session handles and maps them to the daemon's, so a handle from a previous connection
//!   is `CKR_SESSION_HANDLE_INVALID`, never a session of the new one.
//! - After `fork()` the child notices the pid change and makes its own connection (it never
//!   writes to the parent's).
//! - Calls are serialised on one connection (a mutex); timeouts bound every wait.
//! - Before a byte is written to a new connection, the uid of the process serving the socket
//!   (`SO_PEERCRED`) is checked against the daemon uid this client expects (by default its
//!   own effective uid) or root: a socket planted by another user, e.g. in a directory others
//!   can write, never receives a hello, let alone a PIN.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cryptoki_sys::*;
use parking_lot::Mutex;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::types::*;

use super::proto::{
    HELLO_MAX, Hello, Reply, Request, VERSION, Welcome, decode_response, read_frame, read_frame_max,
};
use super::server::send_all;
use super::wire::Bytes;

/// How long connecting and the hello exchange may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default bound on one call's round trip (a live daemon answers within it even for a
/// large RSA key generation; a dead one is noticed at once, by the end of the stream).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A `Backend` served by a daemon (`ferrohsm serve`) on a Unix socket.
pub struct RemoteBackend {
    path: PathBuf,
    timeout: Duration,
    /// The uid the daemon must run under (root is accepted too: a process running as root can
    /// read this process's memory anyway, so refusing it would protect nothing).
    daemon_uid: u32,
    state: Mutex<State>,
}

struct Conn {
    stream: UnixStream,
    pid: u32,
}

struct Sess {
    generation: u64,
    remote: SessionHandle,
    slot: SlotId,
}

#[derive(Default)]
struct State {
    conn: Option<Conn>,
    /// Bumped whenever a connection is dropped: sessions of older generations are gone.
    generation: u64,
    sessions: HashMap<CK_SESSION_HANDLE, Sess>,
    next_handle: CK_SESSION_HANDLE,
}

impl State {
    fn drop_conn(&mut self) {
        if self.conn.take().is_some() {
            self.generation += 1;
        }
    }
}

impl RemoteBackend {
    /// A client of the daemon at `socket`. Nothing is connected until the first call; use
    /// [`RemoteBackend::ping`] to check the daemon now.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            path: socket.into(),
            timeout: DEFAULT_TIMEOUT,
            daemon_uid: rustix::process::geteuid().as_raw(),
            state: Mutex::new(State {
                next_handle: 1,
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

    /// Expects the daemon to run under `uid` instead of this process's effective uid (root is
    /// accepted either way).
    pub fn with_daemon_uid(mut self, uid: u32) -> Self {
        self.daemon_uid = uid;
        self
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.path
    }

    /// Connects if not connected.
    pub fn ping(&self) -> Result<()> {
        let mut st = self.state.lock();
        self.connection(&mut st).map(|_| ())
    }

    fn open(&self) -> Result<UnixStream> {
        let gone = |e: std::io::Error| {
            log::debug!("remote {}: cannot connect: {e}", self.path.display());
            Error::DeviceRemoved
        };
        let stream = UnixStream::connect(&self.path).map_err(gone)?;
        self.check_daemon(&stream)?;
        stream
            .set_read_timeout(Some(CONNECT_TIMEOUT))
            .map_err(gone)?;
        stream
            .set_write_timeout(Some(CONNECT_TIMEOUT))
            .map_err(gone)?;
        let hello = Hello {
            min: VERSION,
            max: VERSION,
        };
        // A daemon that refuses this client answers and closes without reading the hello, so
        // a failed send is not the end: the refusal may be waiting to be read.
        let sent = send_all(&stream, &hello.encode());
        let mut reader = &stream;
        let answer = match read_frame_max(&mut reader, HELLO_MAX) {
            Ok(Some(answer)) => answer,
            Ok(None) => return Err(sent.err().map_or(Error::DeviceRemoved, gone)),
            Err(e) => return Err(gone(sent.err().unwrap_or(e))),
        };
        match Welcome::decode(&answer)? {
            Welcome::Accepted(VERSION) => {}
            Welcome::Accepted(v) => {
                log::error!("remote {}: daemon chose version {v}", self.path.display());
                return Err(Error::DeviceError);
            }
            Welcome::Refused(rv) => {
                let hint = match rv {
                    CKR_FUNCTION_REJECTED => "is this uid allowed (--allow-uid)?",
                    CKR_DEVICE_MEMORY => "it is at a connection limit; see its log",
                    _ => "see its log",
                };
                log::error!(
                    "remote {}: the daemon refused this client ({}): {hint}",
                    self.path.display(),
                    crate::error::rv_name(rv)
                );
                return Err(Error::DeviceError);
            }
        }
        stream.set_read_timeout(Some(self.timeout)).map_err(gone)?;
        stream.set_write_timeout(Some(self.timeout)).map_err(gone)?;
        Ok(stream)
    }

    /// Refuses a socket served by a process under another uid than the expected daemon's (or
    /// root), before anything is sent on it.
    fn check_daemon(&self, stream: &UnixStream) -> Result<()> {
        let peer = rustix::net::sockopt::socket_peercred(stream).map_err(|e| {
            log::error!(
                "remote {}: cannot read the daemon's credentials (SO_PEERCRED): {e}; not using it",
                self.path.display()
            );
            Error::DeviceError
        })?;
        let uid = peer.uid.as_raw();
        if uid == self.daemon_uid || uid == 0 {
            return Ok(());
        }
        log::error!(
            "remote {}: the socket is served by uid {uid} (pid {}), not the daemon's uid {} \
             (or root); nothing sent (set daemon_uid in the slot if the daemon runs as another \
             user)",
            self.path.display(),
            peer.pid.as_raw_nonzero(),
            self.daemon_uid
        );
        Err(Error::DeviceError)
    }

    fn connection<'s>(&self, st: &'s mut State) -> Result<&'s UnixStream> {
        let pid = std::process::id();
        if st.conn.as_ref().is_some_and(|c| c.pid != pid) {
            // A forked child: the socket is the parent's; closing our copy leaves it intact.
            st.drop_conn();
        }
        if st.conn.is_none() {
            let stream = self.open()?;
            st.conn = Some(Conn { stream, pid });
        }
        st.conn
            .as_ref()
            .map(|c| &c.stream)
            .ok_or(Error::DeviceRemoved)
    }

    /// One round trip; session handles are translated both ways.
    fn call(&self, mut request: Request) -> Result<Reply> {
        let mut st = self.state.lock();
        if st
            .conn
            .as_ref()
            .is_some_and(|c| c.pid != std::process::id())
        {
            st.drop_conn();
        }
        let local = request.session_mut().map(|s| *s);
        if let Some(local) = local {
            let current = st.generation;
            let live = st.conn.is_some();
            let remote = match st.sessions.get(&local.0) {
                Some(s) if s.generation == current && live => s.remote,
                Some(_) => {
                    st.sessions.remove(&local.0);
                    return Err(Error::SessionHandleInvalid);
                }
                None => return Err(Error::SessionHandleInvalid),
            };
            if let Some(s) = request.session_mut() {
                *s = remote;
            }
        }
        let stream = self.connection(&mut st)?;
        let response = match round_trip(stream, &request) {
            Ok(r) => r,
            Err(e) => {
                log::warn!(
                    "remote {}: {} failed, connection dropped: {e}",
                    self.path.display(),
                    request.name()
                );
                st.drop_conn();
                return Err(e);
            }
        };
        match (&request, response) {
            (Request::OpenSession { slot, .. }, Ok(Reply::Session(remote))) => {
                let handle = st.next_handle;
                st.next_handle = st.next_handle.wrapping_add(1).max(1);
                let generation = st.generation;
                st.sessions.insert(
                    handle,
                    Sess {
                        generation,
                        remote,
                        slot: *slot,
                    },
                );
                Ok(Reply::Session(SessionHandle(handle)))
            }
            (Request::CloseAllSessions { slot }, Ok(reply)) => {
                st.sessions.retain(|_, s| s.slot != *slot);
                Ok(reply)
            }
            (Request::CloseSession { .. }, r @ (Ok(_) | Err(Error::SessionClosed)))
            | (_, r @ Err(Error::SessionHandleInvalid | Error::SessionClosed)) => {
                if let Some(local) = local {
                    st.sessions.remove(&local.0);
                }
                r
            }
            (_, r) => r,
        }
    }

    fn unit(&self, request: Request) -> Result<()> {
        match self.call(request)? {
            Reply::Unit => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    fn object(&self, request: Request) -> Result<ObjectHandle> {
        match self.call(request)? {
            Reply::Object(h) => Ok(h),
            other => Err(unexpected(&other)),
        }
    }

    fn out(&self, request: Request, out: Option<&mut [u8]>) -> Result<usize> {
        let reply = self.call(request)?;
        copy_out(reply, out)
    }

    fn message(
        &self,
        request: Request,
        params: &mut MechanismParams,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        match self.call(request)? {
            Reply::Message(p, inner) => {
                *params = p;
                match *inner {
                    Reply::Unit => Ok(0),
                    other => copy_out(other, out),
                }
            }
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(reply: &Reply) -> Error {
    log::error!("remote: unexpected reply {reply:?}");
    Error::DeviceError
}

/// Puts an output call's reply into the caller's buffer.
fn copy_out(reply: Reply, out: Option<&mut [u8]>) -> Result<usize> {
    match (reply, out) {
        (Reply::Len(n), None) => Ok(n),
        (Reply::Out(Bytes(bytes)), Some(out)) => {
            let n = bytes.len();
            out.get_mut(..n)
                .ok_or_else(|| unexpected(&Reply::Len(n)))?
                .copy_from_slice(&bytes);
            Ok(n)
        }
        (other, _) => Err(unexpected(&other)),
    }
}

fn round_trip(stream: &UnixStream, request: &Request) -> Result<super::proto::Response> {
    let io = |e: std::io::Error| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            log::error!("remote: the daemon did not answer in time");
            Error::DeviceError
        }
        ErrorKind::InvalidData => Error::DeviceError,
        _ => Error::DeviceRemoved,
    };
    send_all(stream, &request.encode()).map_err(io)?;
    let mut reader = stream;
    let frame = read_frame(&mut reader)
        .map_err(io)?
        .ok_or(Error::DeviceRemoved)?;
    decode_response(&frame)
}

fn len(out: &Option<&mut [u8]>) -> Option<usize> {
    out.as_ref().map(|o| o.len())
}

fn b(v: &[u8]) -> Bytes {
    Bytes(v.to_vec())
}

impl Backend for RemoteBackend {
    fn slot_list(&self, token_present: bool) -> Result<Vec<SlotId>> {
        match self.call(Request::SlotList { token_present })? {
            Reply::Slots(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    fn slot_info(&self, slot: SlotId) -> Result<SlotInfo> {
        match self.call(Request::SlotInfo { slot })? {
            Reply::SlotInfo(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    fn token_info(&self, slot: SlotId) -> Result<TokenInfo> {
        match self.call(Request::TokenInfo { slot })? {
            Reply::TokenInfo(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    fn mechanism_list(&self, slot: SlotId) -> Result<Vec<CK_MECHANISM_TYPE>> {
        match self.call(Request::MechanismList { slot })? {
            Reply::Mechanisms(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    fn mechanism_info(&self, slot: SlotId, ty: CK_MECHANISM_TYPE) -> Result<MechanismInfo> {
        match self.call(Request::MechanismInfo { slot, ty })? {
            Reply::MechanismInfo(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    fn init_token(&self, slot: SlotId, so_pin: &[u8], label: &[u8; 32]) -> Result<()> {
        self.unit(Request::InitToken {
            slot,
            so_pin: b(so_pin),
            label: *label,
        })
    }

    fn wait_for_slot_event(&self, flags: CK_FLAGS) -> Result<SlotId> {
        if flags & CKF_DONT_BLOCK == 0 {
            // A blocking wait would hold the connection (and time out): not forwarded.
            return Err(Error::FunctionNotSupported);
        }
        match self.call(Request::WaitForSlotEvent { flags })? {
            Reply::Slot(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    fn open_session(&self, slot: SlotId, flags: CK_FLAGS) -> Result<SessionHandle> {
        match self.call(Request::OpenSession { slot, flags })? {
            Reply::Session(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    fn close_session(&self, session: SessionHandle) -> Result<()> {
        self.unit(Request::CloseSession { session })
    }

    fn close_all_sessions(&self, slot: SlotId) -> Result<()> {
        self.unit(Request::CloseAllSessions { slot })
    }

    fn session_info(&self, session: SessionHandle) -> Result<SessionInfo> {
        match self.call(Request::SessionInfo { session })? {
            Reply::SessionInfo(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    fn session_cancel(&self, session: SessionHandle, flags: CK_FLAGS) -> Result<()> {
        self.unit(Request::SessionCancel { session, flags })
    }

    fn operation_state(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        let req = Request::OperationState {
            session,
            out: len(&out),
        };
        self.out(req, out)
    }

    fn set_operation_state(
        &self,
        session: SessionHandle,
        state: &[u8],
        encryption_key: Option<ObjectHandle>,
        authentication_key: Option<ObjectHandle>,
    ) -> Result<()> {
        self.unit(Request::SetOperationState {
            session,
            state: b(state),
            encryption_key,
            authentication_key,
        })
    }

    fn init_pin(&self, session: SessionHandle, pin: &[u8]) -> Result<()> {
        self.unit(Request::InitPin {
            session,
            pin: b(pin),
        })
    }

    fn set_pin(&self, session: SessionHandle, old_pin: &[u8], new_pin: &[u8]) -> Result<()> {
        self.unit(Request::SetPin {
            session,
            old_pin: b(old_pin),
            new_pin: b(new_pin),
        })
    }

    fn login(&self, session: SessionHandle, user: UserType, pin: Option<&[u8]>) -> Result<()> {
        self.unit(Request::Login {
            session,
            user,
            pin: pin.map(b),
        })
    }

    fn login_user(
        &self,
        session: SessionHandle,
        user: UserType,
        pin: Option<&[u8]>,
        username: &[u8],
    ) -> Result<()> {
        self.unit(Request::LoginUser {
            session,
            user,
            pin: pin.map(b),
            username: b(username),
        })
    }

    fn logout(&self, session: SessionHandle) -> Result<()> {
        self.unit(Request::Logout { session })
    }

    fn create_object(&self, session: SessionHandle, template: &Template) -> Result<ObjectHandle> {
        self.object(Request::CreateObject {
            session,
            template: template.clone(),
        })
    }

    fn copy_object(
        &self,
        session: SessionHandle,
        object: ObjectHandle,
        template: &Template,
    ) -> Result<ObjectHandle> {
        self.object(Request::CopyObject {
            session,
            object,
            template: template.clone(),
        })
    }

    fn destroy_object(&self, session: SessionHandle, object: ObjectHandle) -> Result<()> {
        self.unit(Request::DestroyObject { session, object })
    }

    fn object_size(&self, session: SessionHandle, object: ObjectHandle) -> Result<CK_ULONG> {
        match self.call(Request::ObjectSize { session, object })? {
            Reply::Ulong(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    fn get_attribute_value(
        &self,
        session: SessionHandle,
        object: ObjectHandle,
        types: &[CK_ULONG],
    ) -> Result<Vec<AttrAnswer>> {
        let req = Request::GetAttributeValue {
            session,
            object,
            types: types.to_vec(),
        };
        match self.call(req)? {
            Reply::Answers(v) if v.len() == types.len() => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    fn set_attribute_value(
        &self,
        session: SessionHandle,
        object: ObjectHandle,
        template: &Template,
    ) -> Result<()> {
        self.unit(Request::SetAttributeValue {
            session,
            object,
            template: template.clone(),
        })
    }

    fn find_objects_init(&self, session: SessionHandle, template: &Template) -> Result<()> {
        self.unit(Request::FindObjectsInit {
            session,
            template: template.clone(),
        })
    }

    fn find_objects(&self, session: SessionHandle, max: usize) -> Result<Vec<ObjectHandle>> {
        match self.call(Request::FindObjects { session, max })? {
            Reply::Objects(v) if v.len() <= max => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    fn find_objects_final(&self, session: SessionHandle) -> Result<()> {
        self.unit(Request::FindObjectsFinal { session })
    }

    fn encrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.unit(Request::EncryptInit {
            session,
            mech: mech.clone(),
            key,
        })
    }

    fn encrypt(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let req = Request::Encrypt {
            session,
            data: b(data),
            out: len(&out),
        };
        self.out(req, out)
    }

    fn encrypt_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let req = Request::EncryptUpdate {
            session,
            data: b(data),
            out: len(&out),
        };
        self.out(req, out)
    }

    fn encrypt_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        let req = Request::EncryptFinal {
            session,
            out: len(&out),
        };
        self.out(req, out)
    }

    fn decrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.unit(Request::DecryptInit {
            session,
            mech: mech.clone(),
            key,
        })
    }

    fn decrypt(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let req = Request::Decrypt {
            session,
            data: b(data),
            out: len(&out),
        };
        self.out(req, out)
    }

    fn decrypt_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let req = Request::DecryptUpdate {
            session,
            data: b(data),
            out: len(&out),
        };
        self.out(req, out)
    }

    fn decrypt_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        let req = Request::DecryptFinal {
            session,
            out: len(&out),
        };
        self.out(req, out)
    }

    fn digest_init(&self, session: SessionHandle, mech: &Mechanism) -> Result<()> {
        self.unit(Request::DigestInit {
            session,
            mech: mech.clone(),
        })
    }

    fn digest(&self, session: SessionHandle, data: &[u8], out: Option<&mut [u8]>) -> Result<usize> {
        let req = Request::Digest {
            session,
            data: b(data),
            out: len(&out),
        };
        self.out(req, out)
    }

    fn digest_update(&self, session: SessionHandle, data: &[u8]) -> Result<()> {
        self.unit(Request::DigestUpdate {
            session,
            data: b(data),
        })
    }

    fn digest_key(&self, session: SessionHandle, key: ObjectHandle) -> Result<()> {
        self.unit(Request::DigestKey { session, key })
    }

    fn digest_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        let req = Request::DigestFinal {
            session,
            out: len(&out),
        };
        self.out(req, out)
    }

    fn sign_init(&self, session: SessionHandle, mech: &Mechanism, key: ObjectHandle) -> Result<()> {
        self.unit(Request::SignInit {
            session,
            mech: mech.clone(),
            key,
        })
    }

    fn sign(&self, session: SessionHandle, data: &[u8], out: Option<&mut [u8]>) -> Result<usize> {
        let req = Request::Sign {
            session,
            data: b(data),
            out: len(&out),
        };
        self.out(req, out)
    }

    fn sign_update(&self, session: SessionHandle, data: &[u8]) -> Result<()> {
        self.unit(Request::SignUpdate {
            session,
            data: b(data),
        })
    }

    fn sign_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        let req = Request::SignFinal {
            session,
            out: len(&out),
        };
        self.out(req, out)
    }

    fn sign_recover_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.unit(Request::SignRecoverInit {
            session,
            mech: mech.clone(),
            key,
        })
    }

    fn sign_recover(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let req = Request::SignRecover {
            session,
            data: b(data),
            out: len(&out),
        };
        self.out(req, out)
    }

    fn verify_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.unit(Request::VerifyInit {
            session,
            mech: mech.clone(),
            key,
        })
    }

    fn verify(&self, session: SessionHandle, data: &[u8], signature: &[u8]) -> Result<()> {
        self.unit(Request::Verify {
            session,
            data: b(data),
            signature: b(signature),
        })
    }

    fn verify_update(&self, session: SessionHandle, data: &[u8]) -> Result<()> {
        self.unit(Request::VerifyUpdate {
            session,
            data: b(data),
        })
    }

    fn verify_final(&self, session: SessionHandle, signature: &[u8]) -> Result<()> {
        self.unit(Request::VerifyFinal {
            session,
            signature: b(signature),
        })
    }

    fn verify_recover_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.unit(Request::VerifyRecoverInit {
            session,
            mech: mech.clone(),
            key,
        })
    }

    fn verify_recover(
        &self,
        session: SessionHandle,
        signature: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let req = Request::VerifyRecover {
            session,
            signature: b(signature),
            out: len(&out),
        };
        self.out(req, out)
    }

    fn digest_encrypt_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let req = Request::DigestEncryptUpdate {
            session,
            data: b(data),
            out: len(&out),
        };
        self.out(req, out)
    }

    fn decrypt_digest_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let req = Request::DecryptDigestUpdate {
            session,
            data: b(data),
            out: len(&out),
        };
        self.out(req, out)
    }

    fn sign_encrypt_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let req = Request::SignEncryptUpdate {
            session,
            data: b(data),
            out: len(&out),
        };
        self.out(req, out)
    }

    fn decrypt_verify_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let req = Request::DecryptVerifyUpdate {
            session,
            data: b(data),
            out: len(&out),
        };
        self.out(req, out)
    }

    fn generate_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        template: &Template,
    ) -> Result<ObjectHandle> {
        self.object(Request::GenerateKey {
            session,
            mech: mech.clone(),
            template: template.clone(),
        })
    }

    fn generate_key_pair(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        public_template: &Template,
        private_template: &Template,
    ) -> Result<(ObjectHandle, ObjectHandle)> {
        let req = Request::GenerateKeyPair {
            session,
            mech: mech.clone(),
            public_template: public_template.clone(),
            private_template: private_template.clone(),
        };
        match self.call(req)? {
            Reply::KeyPair(p, k) => Ok((p, k)),
            other => Err(unexpected(&other)),
        }
    }

    fn wrap_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        wrapping_key: ObjectHandle,
        key: ObjectHandle,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let req = Request::WrapKey {
            session,
            mech: mech.clone(),
            wrapping_key,
            key,
            out: len(&out),
        };
        self.out(req, out)
    }

    fn unwrap_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        unwrapping_key: ObjectHandle,
        wrapped: &[u8],
        template: &Template,
    ) -> Result<ObjectHandle> {
        self.object(Request::UnwrapKey {
            session,
            mech: mech.clone(),
            unwrapping_key,
            wrapped: b(wrapped),
            template: template.clone(),
        })
    }

    fn derive_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        base_key: ObjectHandle,
        template: &Template,
    ) -> Result<ObjectHandle> {
        self.object(Request::DeriveKey {
            session,
            mech: mech.clone(),
            base_key,
            template: template.clone(),
        })
    }

    fn seed_random(&self, session: SessionHandle, seed: &[u8]) -> Result<()> {
        self.unit(Request::SeedRandom {
            session,
            seed: b(seed),
        })
    }

    fn generate_random(&self, session: SessionHandle, out: &mut [u8]) -> Result<()> {
        let req = Request::GenerateRandom {
            session,
            len: out.len(),
        };
        match self.call(req)? {
            Reply::Random(Bytes(bytes)) if bytes.len() == out.len() => {
                out.copy_from_slice(&bytes);
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }

    fn message_encrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.unit(Request::MessageEncryptInit {
            session,
            mech: mech.clone(),
            key,
        })
    }

    fn encrypt_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let req = Request::EncryptMessage {
            session,
            params: params.clone(),
            aad: b(aad),
            data: b(data),
            out: len(&out),
        };
        self.message(req, params, out)
    }

    fn encrypt_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
    ) -> Result<()> {
        let req = Request::EncryptMessageBegin {
            session,
            params: params.clone(),
            aad: b(aad),
        };
        self.message(req, params, None).map(|_| ())
    }

    fn encrypt_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        out: Option<&mut [u8]>,
        last: bool,
    ) -> Result<usize> {
        let req = Request::EncryptMessageNext {
            session,
            params: params.clone(),
            data: b(data),
            out: len(&out),
            last,
        };
        self.message(req, params, out)
    }

    fn message_encrypt_final(&self, session: SessionHandle) -> Result<()> {
        self.unit(Request::MessageEncryptFinal { session })
    }

    fn message_decrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.unit(Request::MessageDecryptInit {
            session,
            mech: mech.clone(),
            key,
        })
    }

    fn decrypt_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let req = Request::DecryptMessage {
            session,
            params: params.clone(),
            aad: b(aad),
            data: b(data),
            out: len(&out),
        };
        self.message(req, params, out)
    }

    fn decrypt_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
    ) -> Result<()> {
        let req = Request::DecryptMessageBegin {
            session,
            params: params.clone(),
            aad: b(aad),
        };
        self.message(req, params, None).map(|_| ())
    }

    fn decrypt_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        out: Option<&mut [u8]>,
        last: bool,
    ) -> Result<usize> {
        let req = Request::DecryptMessageNext {
            session,
            params: params.clone(),
            data: b(data),
            out: len(&out),
            last,
        };
        self.message(req, params, out)
    }

    fn message_decrypt_final(&self, session: SessionHandle) -> Result<()> {
        self.unit(Request::MessageDecryptFinal { session })
    }

    fn message_sign_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.unit(Request::MessageSignInit {
            session,
            mech: mech.clone(),
            key,
        })
    }

    fn sign_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let req = Request::SignMessage {
            session,
            params: params.clone(),
            data: b(data),
            out: len(&out),
        };
        self.message(req, params, out)
    }

    fn sign_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
    ) -> Result<()> {
        let req = Request::SignMessageBegin {
            session,
            params: params.clone(),
        };
        self.message(req, params, None).map(|_| ())
    }

    fn sign_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        last: bool,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let req = Request::SignMessageNext {
            session,
            params: params.clone(),
            data: b(data),
            last,
            out: len(&out),
        };
        self.message(req, params, out)
    }

    fn message_sign_final(&self, session: SessionHandle) -> Result<()> {
        self.unit(Request::MessageSignFinal { session })
    }

    fn message_verify_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        self.unit(Request::MessageVerifyInit {
            session,
            mech: mech.clone(),
            key,
        })
    }

    fn verify_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        signature: &[u8],
    ) -> Result<()> {
        let req = Request::VerifyMessage {
            session,
            params: params.clone(),
            data: b(data),
            signature: b(signature),
        };
        self.message(req, params, None).map(|_| ())
    }

    fn verify_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
    ) -> Result<()> {
        let req = Request::VerifyMessageBegin {
            session,
            params: params.clone(),
        };
        self.message(req, params, None).map(|_| ())
    }

    fn verify_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        signature: Option<&[u8]>,
    ) -> Result<()> {
        let req = Request::VerifyMessageNext {
            session,
            params: params.clone(),
            data: b(data),
            signature: signature.map(b),
        };
        self.message(req, params, None).map(|_| ())
    }

    fn message_verify_final(&self, session: SessionHandle) -> Result<()> {
        self.unit(Request::MessageVerifyFinal { session })
    }
}
