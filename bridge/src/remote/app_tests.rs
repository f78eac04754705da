//! One application, several connections (protocol version 2), on the Unix socket in process:
//! a client's threads run side by side on pooled connections of one application; what joins an
//! application and what does not (the attacks: another key, a stolen key after its owner is
//! gone, a forked child); pooled connections against the daemon's limits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::HashSet;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use parking_lot::{Condvar, Mutex};

use super::proto::*;
use super::*;
use crate::call::*;
use crate::error::{Error, Result};
use crate::types::*;

/// What the applications' backends share: how many were opened, and a meeting point where
/// signing calls wait until `want` of them are inside a backend at once.
#[derive(Default)]
struct World {
    apps: AtomicU64,
    want: AtomicUsize,
    inside: Mutex<usize>,
    met: Condvar,
    /// The sessions of every backend closed by the server (application ended).
    closed: AtomicU64,
}

/// One application's backend: its sessions and its login.
struct App {
    world: Arc<World>,
    next: AtomicU64,
    open: Mutex<HashSet<u64>>,
    logged_in: AtomicBool,
}

impl Backend for App {
    fn call(&self, call: Call<'_>) -> Result<Reply> {
        call.dispatch(self)
    }
}

impl ObjectFunctions for App {}
impl CipherFunctions for App {}
impl DigestFunctions for App {}
impl DualFunctions for App {}
impl KeyFunctions for App {}
impl RandomFunctions for App {}
impl MessageFunctions for App {}

impl SlotFunctions for App {
    fn slot_list(&self, _: bool) -> Result<Vec<SlotId>> {
        Ok(vec![SlotId(0)])
    }
}

impl App {
    fn session(&self, s: SessionHandle) -> Result<()> {
        if self.open.lock().contains(&s.0) {
            Ok(())
        } else {
            Err(Error::SessionHandleInvalid)
        }
    }
}

impl SessionFunctions for App {
    fn open_session(&self, _: SlotId, _: CK_FLAGS) -> Result<SessionHandle> {
        let h = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        self.open.lock().insert(h);
        Ok(SessionHandle(h))
    }

    fn close_session(&self, s: SessionHandle) -> Result<()> {
        if self.open.lock().remove(&s.0) {
            self.world.closed.fetch_add(1, Ordering::SeqCst);
            Ok(())
        } else {
            Err(Error::SessionHandleInvalid)
        }
    }

    fn session_info(&self, s: SessionHandle) -> Result<SessionInfo> {
        self.session(s)?;
        Ok(SessionInfo {
            slot: SlotId(0),
            state: if self.logged_in.load(Ordering::SeqCst) {
                CKS_RW_USER_FUNCTIONS
            } else {
                CKS_RW_PUBLIC_SESSION
            },
            flags: CKF_SERIAL_SESSION | CKF_RW_SESSION,
            device_error: 0,
        })
    }

    fn login(&self, s: SessionHandle, _: UserType, _: Option<&[u8]>) -> Result<()> {
        self.session(s)?;
        if self.logged_in.swap(true, Ordering::SeqCst) {
            return Err(Error::UserAlreadyLoggedIn);
        }
        Ok(())
    }
}

impl SignFunctions for App {
    /// Signs only when logged in, and only once `want` signing calls are inside backends at
    /// the same time (within 5 s; else `CKR_FUNCTION_FAILED`): calls serialised on one
    /// connection never get there.
    fn sign(&self, s: SessionHandle, data: &[u8], out: Option<&mut [u8]>) -> Result<usize> {
        self.session(s)?;
        if !self.logged_in.load(Ordering::SeqCst) {
            return Err(Error::UserNotLoggedIn);
        }
        let Some(out) = out else { return Ok(8) };
        let want = || self.world.want.load(Ordering::SeqCst);
        let mut inside = self.world.inside.lock();
        *inside += 1;
        self.world.met.notify_all();
        let deadline = Instant::now() + Duration::from_secs(5);
        while *inside < want() {
            if self.world.met.wait_until(&mut inside, deadline).timed_out() {
                break;
            }
        }
        let met = *inside >= want();
        drop(inside);
        if !met {
            return Err(Error::FunctionFailed);
        }
        out[..8].fill(u8::try_from(data.len()).unwrap());
        Ok(8)
    }
}

/// A server of an `App` per application on a socket in `dir`, with `limits`.
fn daemon(
    dir: &Path,
    limits: Limits,
) -> (
    Arc<World>,
    std::path::PathBuf,
    std::thread::JoinHandle<()>,
    Arc<AtomicBool>,
) {
    let world = Arc::new(World::default());
    let path = dir.join("d.sock");
    let listener = bind(&path).unwrap();
    let w = world.clone();
    let server = Server::per_connection(move || {
        w.apps.fetch_add(1, Ordering::SeqCst);
        Ok(Arc::new(App {
            world: w.clone(),
            next: AtomicU64::new(0),
            open: Mutex::new(HashSet::new()),
            logged_in: AtomicBool::new(false),
        }) as Arc<dyn Backend>)
    })
    .limits(limits);
    let flag = server.shutdown_flag();
    let h = std::thread::spawn(move || server.serve(listener).unwrap());
    (world, path, h, flag)
}

fn stop(h: std::thread::JoinHandle<()>, flag: &AtomicBool) {
    flag.store(true, Ordering::SeqCst);
    h.join().unwrap();
}

/// A raw connection whose hello says `key` (none: an application of its own); the welcome.
fn raw(path: &Path, key: Option<AppKey>) -> (UnixStream, Welcome) {
    let mut s = UnixStream::connect(path).unwrap();
    let hello = Hello {
        min: VERSION,
        max: VERSION,
        app: key,
    };
    write_frame(&mut s, &hello.encode()).unwrap();
    let welcome = Welcome::decode(&read_frame(&mut s).unwrap().unwrap()).unwrap();
    (s, welcome)
}

/// The welcome of a connection accepted at this version.
fn accepted(joined: bool) -> Welcome {
    Welcome::Accepted {
        version: VERSION,
        joined,
    }
}

/// `C_GetSessionInfo` on the daemon's session handle `h`, on a raw connection.
fn raw_session_info(s: &mut UnixStream, h: u64) -> Response {
    let call = Call::SessionInfo {
        session: SessionHandle(h),
    };
    write_frame(s, &call.encode()).unwrap();
    decode_response(&read_frame(s).unwrap().unwrap()).unwrap()
}

fn sign(c: &RemoteBackend, s: SessionHandle) -> Result<usize> {
    let mut out = [0u8; 8];
    c.sign(s, b"data", Some(&mut out))
}

#[test]
fn threads_of_one_client_run_side_by_side_on_connections_of_one_application() {
    let dir = tempfile::tempdir().unwrap();
    let (world, path, h, flag) = daemon(dir.path(), Limits::default());
    let c = Arc::new(RemoteBackend::new(&path));
    // Sessions opened and logged in on this thread...
    let sessions: Vec<SessionHandle> = (0..3)
        .map(|_| c.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap())
        .collect();
    c.login(sessions[0], CKU_USER, Some(b"1234")).unwrap();
    assert_eq!(c.connections(), 1);
    // ... used by three threads at once: each signature waits inside the backend until all
    // three are there, which only calls on three connections at the same time can do. The
    // login (made on the first connection) holds on the others: one application.
    world.want.store(3, Ordering::SeqCst);
    let results: Vec<Result<usize>> = std::thread::scope(|scope| {
        let handles: Vec<_> = sessions
            .iter()
            .map(|s| {
                let c = c.clone();
                let s = *s;
                scope.spawn(move || sign(&c, s))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in results {
        assert_eq!(r, Ok(8));
    }
    assert_eq!(c.connections(), 3);
    assert_eq!(world.apps.load(Ordering::SeqCst), 1, "one application");
    // Every connection sees the same sessions and login state.
    for s in &sessions {
        assert_eq!(c.session_info(*s).unwrap().state, CKS_RW_USER_FUNCTIONS);
    }
    // C_CloseAllSessions closes the application's sessions (on whichever connection).
    c.close_all_sessions(SlotId(0)).unwrap();
    for s in &sessions {
        assert_eq!(c.session_info(*s), Err(Error::SessionHandleInvalid));
    }
    stop(h, &flag);
}

#[test]
fn a_pool_never_exceeds_its_connections_and_the_calls_wait_their_turn() {
    let dir = tempfile::tempdir().unwrap();
    let (world, path, h, flag) = daemon(dir.path(), Limits::default());
    let c = Arc::new(RemoteBackend::new(&path).with_connections(2));
    let s = c.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    c.login(s, CKU_USER, Some(b"1234")).unwrap();
    // Two at a time meet; the six calls of six threads all get their turn.
    world.want.store(2, Ordering::SeqCst);
    let ok = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let c = c.clone();
                scope.spawn(move || sign(&c, s))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|r| *r == Ok(8))
            .count()
    });
    assert_eq!(ok, 6);
    assert_eq!(c.connections(), 2);
    assert_eq!(world.apps.load(Ordering::SeqCst), 1);
    stop(h, &flag);
}

#[test]
fn another_key_is_another_application_and_a_key_outlives_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (world, path, h, flag) = daemon(dir.path(), Limits::default());
    let c = RemoteBackend::connect(&path).unwrap();
    let s = c.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    c.login(s, CKU_USER, Some(b"1234")).unwrap();
    // The daemon's handle of that session is 1 (the application's backend counts from 1).
    let key = c.app_key().unwrap();
    // Another application (a guessed key, or none): the session is not there.
    let guessed = AppKey::random().unwrap();
    for k in [Some(guessed), None] {
        let (mut other, welcome) = raw(&path, k);
        assert_eq!(welcome, accepted(false));
        assert_eq!(
            raw_session_info(&mut other, 1).unwrap_err(),
            Error::SessionHandleInvalid
        );
    }
    // The key itself joins, within the same identity (here the same uid: a process that can
    // read this one's memory anyway): that is what it is for.
    let (mut joined, welcome) = raw(&path, Some(key));
    assert_eq!(welcome, accepted(true));
    assert!(raw_session_info(&mut joined, 1).is_ok());
    drop(joined);
    // The owner goes: its application ends with its last connection, its sessions closed;
    // the key opens nothing of it afterwards.
    drop(c);
    let deadline = Instant::now() + Duration::from_secs(5);
    while world.closed.load(Ordering::SeqCst) < 1 {
        assert!(
            Instant::now() < deadline,
            "the application outlived its owner"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let (mut late, welcome) = raw(&path, Some(key));
    assert_eq!(welcome, accepted(false));
    assert_eq!(
        raw_session_info(&mut late, 1).unwrap_err(),
        Error::SessionHandleInvalid
    );
    stop(h, &flag);
}

#[test]
fn a_forked_child_is_an_application_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (world, path, h, flag) = daemon(dir.path(), Limits::default());
    let c = RemoteBackend::connect(&path).unwrap();
    let s = c.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    c.login(s, CKU_USER, Some(b"1234")).unwrap();
    let parent_key = c.app_key();
    c.pretend_forked();
    // The child knows none of the parent's sessions, draws its own key, and the daemon opens
    // it an application of its own: not logged in.
    assert_eq!(c.session_info(s), Err(Error::SessionHandleInvalid));
    let child = c.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    assert_ne!(c.app_key(), parent_key);
    assert_eq!(world.apps.load(Ordering::SeqCst), 2);
    assert_eq!(c.session_info(child).unwrap().state, CKS_RW_PUBLIC_SESSION);
    stop(h, &flag);
}

#[test]
fn pooled_connections_count_against_the_per_peer_limit() {
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_connections_per_uid: 3,
        ..Limits::default()
    };
    let (world, path, h, flag) = daemon(dir.path(), limits);
    let c = Arc::new(RemoteBackend::new(&path));
    let s = c.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    c.login(s, CKU_USER, Some(b"1234")).unwrap();
    // Three calls at once hold three connections, the uid's limit: nothing of it is idle,
    // so another client of the uid is refused while they run.
    world.want.store(4, Ordering::SeqCst);
    let refused = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                let c = c.clone();
                scope.spawn(move || sign(&c, s))
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while *world.inside.lock() < 3 {
            assert!(Instant::now() < deadline, "three calls never ran at once");
            std::thread::sleep(Duration::from_millis(5));
        }
        let refused = RemoteBackend::connect(&path).err();
        // The fourth arrival releases the three.
        world.want.store(3, Ordering::SeqCst);
        world.met.notify_all();
        for h in handles {
            h.join().unwrap().unwrap();
        }
        refused
    });
    assert_eq!(refused, Some(Error::DeviceError));
    assert_eq!(c.connections(), 3);
    // Idle now: a newcomer takes one of the pool's places, and the application lives on in
    // the others (the server closes a connection whose application keeps others).
    let other = RemoteBackend::connect(&path).unwrap();
    assert!(other.slot_list(false).is_ok());
    assert_eq!(c.session_info(s).unwrap().state, CKS_RW_USER_FUNCTIONS);
    stop(h, &flag);
}

#[test]
fn a_daemon_of_protocol_1_closing_at_the_hello_and_a_client_of_protocol_1_are_handled() {
    let dir = tempfile::tempdir().unwrap();
    let (_world, path, h, flag) = daemon(dir.path(), Limits::default());
    // A client of version 1 is served, an application per connection.
    let (mut old, welcome) = {
        let mut s = UnixStream::connect(&path).unwrap();
        write_frame(&mut s, &Hello::versions(1, 1).encode()).unwrap();
        let w = Welcome::decode(&read_frame(&mut s).unwrap().unwrap()).unwrap();
        (s, w)
    };
    assert_eq!(
        welcome,
        Welcome::Accepted {
            version: 1,
            joined: false
        }
    );
    write_frame(
        &mut old,
        &Call::SlotList {
            token_present: false,
        }
        .encode(),
    )
    .unwrap();
    assert!(
        decode_response(&read_frame(&mut old).unwrap().unwrap())
            .unwrap()
            .is_ok()
    );
    // A client speaking only a version this daemon does not: refused, with a reason.
    let mut s = UnixStream::connect(&path).unwrap();
    write_frame(&mut s, &Hello::versions(VERSION + 1, VERSION + 1).encode()).unwrap();
    assert_eq!(
        Welcome::decode(&read_frame(&mut s).unwrap().unwrap()).unwrap(),
        Welcome::Refused(CKR_DEVICE_ERROR)
    );
    stop(h, &flag);
    // A daemon of version 1 cannot read this client's hello and closes without an answer:
    // the call fails with CKR_DEVICE_ERROR (and one line saying why), not a hang.
    let path = dir.path().join("old.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let old_daemon = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let hello = read_frame(&mut s).unwrap().unwrap();
        assert_eq!(hello.len(), 8 + 32, "a hello with a key");
    });
    assert_eq!(
        RemoteBackend::connect(&path).err(),
        Some(Error::DeviceError)
    );
    old_daemon.join().unwrap();
}

/// Daemon requests (protocol version 3): answered by the server's handler, by the identity it
/// verified; refused without one; closing a connection of version 2 that sends one (it never
/// reaches a backend); and a client asking a daemon of version 2 is told so in one line,
/// before it sends anything.
#[test]
fn daemon_requests_need_version_3_and_a_handler() {
    let dir = tempfile::tempdir().unwrap();
    // Without a handler: refused, and the connection goes on.
    let (_world, path, h, flag) = daemon(dir.path(), Limits::default());
    let client = RemoteBackend::new(&path);
    assert_eq!(
        client.read_usage_log("A", |_| Ok(())),
        Err(LogReadError::Refused(Error::FunctionNotSupported))
    );
    // A version-2 connection sending one: malformed, closed, no backend reached.
    let mut s = UnixStream::connect(&path).unwrap();
    write_frame(&mut s, &Hello::versions(2, 2).encode()).unwrap();
    let _ = read_frame(&mut s).unwrap().unwrap();
    let ask = DaemonRequest::AuditRead {
        tenant: "A".into(),
        cursor: None,
    };
    write_frame(&mut s, &ask.encode()).unwrap();
    assert!(read_frame(&mut s).unwrap_or(None).is_none());
    stop(h, &flag);

    // With a handler: it sees the peer's identity, the pages arrive and are checked.
    let path = dir.path().join("h.sock");
    let listener = bind(&path).unwrap();
    let log_dir = tempfile::tempdir().unwrap();
    let log_path = log_dir.path().join("audit.log");
    let log = crate::audit::AuditLog::open(&log_path).unwrap();
    for _ in 0..30 {
        log.append(&crate::audit::Entry {
            function: "C_Sign",
            rv: "CKR_OK".into(),
            ..crate::audit::Entry::default()
        })
        .unwrap();
    }
    let uid = rustix::process::getuid().as_raw();
    // Pages of `log_path` (400 bytes each) for this process's uid, of tenant "A" only.
    let handler = |served: std::path::PathBuf| {
        move |identity: &Identity, request: DaemonRequest| {
            let DaemonRequest::AuditRead { tenant, cursor } = request;
            if *identity != Identity::Uid(uid) || tenant != "A" {
                return Err(Error::ActionProhibited);
            }
            let page = crate::audit::read_page(&served, cursor.as_ref(), 400)
                .map_err(|_| Error::DeviceError)?;
            Ok(DaemonReply::AuditPage {
                lines: page.lines,
                next: page.next,
            })
        }
    };
    let server = Server::per_connection(|| Err(Error::DeviceError))
        .daemon_requests(handler(log_path.clone()));
    let flag = server.shutdown_flag();
    let h = std::thread::spawn(move || server.serve(listener).unwrap());
    // The backend cannot open: the hello is refused, so nothing is read.
    let client = RemoteBackend::new(&path);
    assert_eq!(
        client.read_usage_log("A", |_| Ok(())),
        Err(LogReadError::Refused(Error::DeviceError))
    );
    stop(h, &flag);
    let path = dir.path().join("h2.sock");
    let listener = bind(&path).unwrap();
    let server = Server::per_connection(|| Ok(Arc::new(Denied) as Arc<dyn Backend>))
        .daemon_requests(handler(log_path.clone()));
    let flag = server.shutdown_flag();
    let h = std::thread::spawn(move || server.serve(listener).unwrap());
    let client = RemoteBackend::new(&path);
    let mut pages = 0;
    let mut lines = Vec::new();
    let n = client
        .read_usage_log("A", |page| {
            pages += 1;
            lines.extend_from_slice(page);
            Ok(())
        })
        .unwrap();
    assert_eq!(n, 30);
    assert!(pages >= 10, "{pages} pages");
    assert_eq!(
        lines.join("\n") + "\n",
        std::fs::read_to_string(&log_path).unwrap()
    );
    assert_eq!(
        client.read_usage_log("B", |_| Ok(())),
        Err(LogReadError::Refused(Error::ActionProhibited))
    );
    stop(h, &flag);

    // A daemon of version 2: it chooses 2, and the client says so.
    let path = dir.path().join("old.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let old_daemon = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let hello = Hello::decode(&read_frame(&mut s).unwrap().unwrap()).unwrap();
        assert_eq!(
            (hello.min, hello.max, hello.app),
            (MIN_VERSION, VERSION, None)
        );
        write_frame(
            &mut s,
            &Welcome::Accepted {
                version: 2,
                joined: false,
            }
            .encode(),
        )
        .unwrap();
        // Nothing more comes.
        assert!(read_frame(&mut s).unwrap_or(None).is_none());
    });
    let e = RemoteBackend::new(&path)
        .read_usage_log("A", |_| Ok(()))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("speaks protocol version 2")
            && e.contains("needs version 3")
            && !e.contains('\n'),
        "{e}"
    );
    old_daemon.join().unwrap();
}

/// A backend that answers nothing (the daemon requests never reach it).
struct Denied;

impl Backend for Denied {
    fn call(&self, _: Call<'_>) -> Result<Reply> {
        Err(Error::ActionProhibited)
    }
}
