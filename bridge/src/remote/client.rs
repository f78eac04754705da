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

use crate::call::{Backend, Call, Reply, Target};
use crate::error::{Error, Result};
use crate::types::*;

use super::proto::{
    HELLO_MAX, Hello, VERSION, Welcome, decode_response, read_frame, read_frame_max,
};
use super::server::send_all;

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

    /// One round trip; session handles are translated both ways, outputs delivered into the
    /// call's buffers.
    fn round(&self, mut call: Call<'_>) -> Result<Reply> {
        let mut st = self.state.lock();
        if st
            .conn
            .as_ref()
            .is_some_and(|c| c.pid != std::process::id())
        {
            st.drop_conn();
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
        let response = match round_trip(stream, &call) {
            Ok(r) => r,
            Err(e) => {
                log::warn!(
                    "remote {}: {name} failed, connection dropped: {e}",
                    self.path.display(),
                );
                st.drop_conn();
                return Err(e);
            }
        };
        let gone = |st: &mut State| {
            if let Some(local) = local {
                st.sessions.remove(&local.0);
            }
        };
        match (response, open_slot) {
            (Ok(Reply::Session(remote)), Some(slot)) => {
                let handle = st.next_handle;
                st.next_handle = st.next_handle.wrapping_add(1).max(1);
                let generation = st.generation;
                st.sessions.insert(
                    handle,
                    Sess {
                        generation,
                        remote,
                        slot,
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
}

fn round_trip(stream: &UnixStream, call: &Call<'_>) -> Result<super::proto::Response> {
    let io = |e: std::io::Error| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            log::error!("remote: the daemon did not answer in time");
            Error::DeviceError
        }
        ErrorKind::InvalidData => Error::DeviceError,
        _ => Error::DeviceRemoved,
    };
    send_all(stream, &call.encode()).map_err(io)?;
    let mut reader = stream;
    let frame = read_frame(&mut reader)
        .map_err(io)?
        .ok_or(Error::DeviceRemoved)?;
    decode_response(&frame)
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
