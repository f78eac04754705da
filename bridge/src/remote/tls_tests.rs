//! The TLS transport in process: certificates made with rcgen, servers on loopback ports, the
//! failover client against them (end to end through the built binaries: `tests/tests/tls.rs`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use cryptoki_sys::*;
use parking_lot::Mutex;

use super::tls::{Endpoint, client_config, server_config};
use super::*;
use crate::call::*;
use crate::error::{Error, Result};
use crate::types::*;

const PIN: &[u8] = b"1234";

/// A CA, a server certificate for 127.0.0.1, client certificates `app` and `other`, and a
/// client certificate `app` from another CA, as PEM files in `dir`.
fn pki(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = p.self_signed(&key).unwrap();
        (cert, Issuer::new(p, key))
    };
    let leaf = |issuer: &Issuer<'_, KeyPair>, name: &str, server: bool, prefix: &str| {
        let key = KeyPair::generate().unwrap();
        let sans = if server {
            vec!["127.0.0.1".to_owned()]
        } else {
            vec![name.to_owned()]
        };
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = p.signed_by(&key, issuer).unwrap();
        std::fs::write(dir.join(format!("{prefix}{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{prefix}{name}.key")), key.serialize_pem()).unwrap();
    };
    let (cert, issuer) = ca("test CA");
    std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
    leaf(&issuer, "server", true, "");
    leaf(&issuer, "app", false, "");
    leaf(&issuer, "other", false, "");
    let (_, rogue) = ca("rogue CA");
    leaf(&rogue, "app", false, "rogue-");
    // From the right CA, but its subject says `app` and its SAN `other`.
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["other".to_owned()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "app");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = p.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join("mismatch-app.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("mismatch-app.key"), key.serialize_pem()).unwrap();
}

/// What every connection's backend shares (the store, as far as these tests go).
#[derive(Default)]
struct Store {
    next: AtomicU64,
    /// Logins seen: the identity and the PIN.
    logins: Mutex<Vec<(Identity, Vec<u8>)>>,
    opened: Mutex<Vec<Identity>>,
}

/// One connection's backend: its sessions, the operation active in each, its login.
struct Conn {
    identity: Identity,
    store: Arc<Store>,
    sessions: Mutex<HashMap<u64, bool>>,
    logged_in: AtomicBool,
}

impl Backend for Conn {
    fn call(&self, call: Call<'_>) -> Result<Reply> {
        call.dispatch(self)
    }
}

impl ObjectFunctions for Conn {}
impl CipherFunctions for Conn {}
impl DigestFunctions for Conn {}
impl DualFunctions for Conn {}
impl KeyFunctions for Conn {}
impl RandomFunctions for Conn {}

impl SlotFunctions for Conn {
    fn slot_list(&self, _: bool) -> Result<Vec<SlotId>> {
        Ok(vec![SlotId(0)])
    }
}

impl Conn {
    fn op(&self, s: SessionHandle, set: Option<bool>) -> Result<bool> {
        let mut sessions = self.sessions.lock();
        let op = sessions.get_mut(&s.0).ok_or(Error::SessionHandleInvalid)?;
        let was = *op;
        if let Some(v) = set {
            *op = v;
        }
        Ok(was)
    }
}

impl SessionFunctions for Conn {
    fn open_session(&self, _: SlotId, _: CK_FLAGS) -> Result<SessionHandle> {
        let h = self.store.next.fetch_add(1, Ordering::SeqCst) + 1;
        self.sessions.lock().insert(h, false);
        Ok(SessionHandle(h))
    }
    fn close_session(&self, s: SessionHandle) -> Result<()> {
        self.sessions
            .lock()
            .remove(&s.0)
            .map(drop)
            .ok_or(Error::SessionHandleInvalid)
    }
    fn session_info(&self, s: SessionHandle) -> Result<SessionInfo> {
        self.op(s, None)?;
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
    fn login(&self, s: SessionHandle, _: UserType, pin: Option<&[u8]>) -> Result<()> {
        self.op(s, None)?;
        if pin != Some(PIN) {
            return Err(Error::PinIncorrect);
        }
        self.store
            .logins
            .lock()
            .push((self.identity.clone(), PIN.to_vec()));
        self.logged_in.store(true, Ordering::SeqCst);
        Ok(())
    }
}

impl SignFunctions for Conn {
    fn sign_init(&self, s: SessionHandle, _: &Mechanism, _: ObjectHandle) -> Result<()> {
        if !self.logged_in.load(Ordering::SeqCst) {
            return Err(Error::UserNotLoggedIn);
        }
        if self.op(s, Some(true))? {
            return Err(Error::OperationActive);
        }
        Ok(())
    }
    fn sign_update(&self, s: SessionHandle, _: &[u8]) -> Result<()> {
        if !self.op(s, None)? {
            return Err(Error::OperationNotInitialized);
        }
        Ok(())
    }
    fn sign_final(&self, s: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        if !self.op(s, None)? {
            return Err(Error::OperationNotInitialized);
        }
        if let Some(o) = out {
            o.get_mut(..8)
                .ok_or(Error::BufferTooSmall { needed: 8 })?
                .fill(7);
            self.op(s, Some(false))?;
        }
        Ok(8)
    }
}

impl MessageFunctions for Conn {
    fn encrypt_message(
        &self,
        _: SessionHandle,
        _: &mut MechanismParams,
        _: &[u8],
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        if let Some(o) = out {
            o.get_mut(..data.len())
                .ok_or(Error::BufferTooSmall { needed: data.len() })?
                .copy_from_slice(data);
        }
        Ok(data.len())
    }
}

/// A TLS server on a loopback port, one backend per connection over `store`.
struct Daemon {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Daemon {
    fn start(dir: &Path, store: &Arc<Store>, allow: Option<Vec<String>>) -> Self {
        Self::start_with(dir, store, allow, Limits::default())
    }

    fn start_with(
        dir: &Path,
        store: &Arc<Store>,
        allow: Option<Vec<String>>,
        limits: Limits,
    ) -> Self {
        let config = server_config(
            &dir.join("server.pem"),
            &dir.join("server.key"),
            &dir.join("ca.pem"),
            allow,
        )
        .unwrap();
        let listener = bind_tcp("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let store = store.clone();
        let server = Server::per_identity(move |identity| {
            store.opened.lock().push(identity.clone());
            Ok(Arc::new(Conn {
                identity: identity.clone(),
                store: store.clone(),
                sessions: Mutex::new(HashMap::new()),
                logged_in: AtomicBool::new(false),
            }) as Arc<dyn Backend>)
        });
        let server = server.limits(limits);
        let stop = server.shutdown_flag();
        let thread = std::thread::spawn(move || {
            server
                .serve_all(vec![Listener::Tls(listener, config)])
                .unwrap();
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::parse(&format!("tls://{}", self.addr)).unwrap()
    }

    /// Stops it: its connections end, their sessions with them.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn client(dir: &Path, daemons: &[&Daemon], prefix: &str, name: &str) -> RemoteBackend {
    let config = client_config(
        &dir.join("ca.pem"),
        &dir.join(format!("{prefix}{name}.pem")),
        &dir.join(format!("{prefix}{name}.key")),
    )
    .unwrap();
    RemoteBackend::tls(daemons.iter().map(|d| d.endpoint()).collect(), config)
        .with_connect_timeout(std::time::Duration::from_secs(5))
}

#[test]
fn frames_of_a_mebibyte_cross_and_the_backend_is_opened_for_the_certificate_identity() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let store = Arc::new(Store::default());
    let d = Daemon::start(dir.path(), &store, None);
    let c = client(dir.path(), &[&d], "", "app");
    let s = c.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    let data = vec![0x5a; 1 << 20];
    let mut out = vec![0; 1 << 20];
    let mut params = MechanismParams::None;
    let n = c
        .encrypt_message(s, &mut params, b"", &data, Some(&mut out))
        .unwrap();
    assert_eq!(n, data.len());
    assert_eq!(out, data);
    assert_eq!(*store.opened.lock(), vec![Identity::Cert("app".into())]);
    assert_eq!(
        c.endpoint().as_deref(),
        Some(format!("tls://{}", d.addr).as_str())
    );
}

#[test]
fn refused_certificates_reach_no_backend() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let store = Arc::new(Store::default());
    let d = Daemon::start(dir.path(), &store, Some(vec!["app".into()]));
    // Another CA's certificate, then an identity not on the allow-list.
    let rogue = client(dir.path(), &[&d], "rogue-", "app");
    assert_eq!(rogue.slot_list(false), Err(Error::DeviceError));
    let other = client(dir.path(), &[&d], "", "other");
    assert_eq!(other.slot_list(false), Err(Error::DeviceError));
    // A certificate whose common name (`app`, allowed) is not among its SAN's DNS names.
    let mismatch = client(dir.path(), &[&d], "mismatch-", "app");
    assert_eq!(mismatch.slot_list(false), Err(Error::DeviceError));
    assert!(store.opened.lock().is_empty());
    // The allowed one gets in.
    let app = client(dir.path(), &[&d], "", "app");
    assert_eq!(app.slot_list(false), Ok(vec![SlotId(0)]));
    assert_eq!(*store.opened.lock(), vec![Identity::Cert("app".into())]);
}

#[test]
fn failover_keeps_session_handles_and_login_and_fails_the_lost_operation_once() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let store = Arc::new(Store::default());
    let mut a = Daemon::start(dir.path(), &store, None);
    let b = Daemon::start(dir.path(), &store, None);
    let c = client(dir.path(), &[&a, &b], "", "app");
    let mech = Mechanism::new(CKM_ECDSA);
    let s1 = c
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    let s2 = c
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    c.login(s1, CKU_USER, Some(PIN)).unwrap();
    c.sign_init(s2, &mech, ObjectHandle(1)).unwrap();
    c.sign_update(s2, b"half").unwrap();
    assert_eq!(c.endpoint(), Some(format!("tls://{}", a.addr)));

    a.stop();
    // The operation in flight on s2 is lost: once CKR_DEVICE_ERROR, then s2 works again.
    assert_eq!(c.sign_update(s2, b"other half"), Err(Error::DeviceError));
    assert_eq!(c.endpoint(), Some(format!("tls://{}", b.addr)));
    c.sign_init(s2, &mech, ObjectHandle(1)).unwrap();
    let mut sig = [0u8; 8];
    assert_eq!(c.sign_final(s2, Some(&mut sig)), Ok(8));
    // s1: the same handle, logged in again on B with the PIN it logged in with.
    assert_eq!(c.session_info(s1).unwrap().state, CKS_RW_USER_FUNCTIONS);
    let logins = store.logins.lock().clone();
    assert_eq!(logins.len(), 2, "once on A, once replayed on B");
    assert!(logins.iter().all(|(_, pin)| pin == PIN));
    // Lookups go on; a closed session is forgotten, the other stays.
    assert_eq!(c.slot_list(false), Ok(vec![SlotId(0)]));
    c.close_session(s2).unwrap();
    assert_eq!(c.session_info(s2), Err(Error::SessionHandleInvalid));
    assert!(c.session_info(s1).is_ok());
}

#[test]
fn with_every_endpoint_down_calls_fail_removed_and_the_sessions_come_back() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let store = Arc::new(Store::default());
    let mut a = Daemon::start(dir.path(), &store, None);
    let c = client(dir.path(), &[&a], "", "app");
    let s = c.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    c.login(s, CKU_USER, Some(PIN)).unwrap();
    let port = a.addr;
    a.stop();
    assert_eq!(c.slot_list(false), Err(Error::DeviceRemoved));
    assert_eq!(c.session_info(s).err(), Some(Error::DeviceRemoved));
    // The same address again (a restart): the session is re-opened, logged in.
    let config = server_config(
        &dir.path().join("server.pem"),
        &dir.path().join("server.key"),
        &dir.path().join("ca.pem"),
        None,
    )
    .unwrap();
    let listener = bind_tcp(&port.to_string()).unwrap();
    let store2 = store.clone();
    let server = Server::per_identity(move |identity| {
        Ok(Arc::new(Conn {
            identity: identity.clone(),
            store: store2.clone(),
            sessions: Mutex::new(HashMap::new()),
            logged_in: AtomicBool::new(false),
        }) as Arc<dyn Backend>)
    });
    let stop = server.shutdown_flag();
    let t = std::thread::spawn(move || {
        server
            .serve_all(vec![Listener::Tls(listener, config)])
            .unwrap();
    });
    assert_eq!(c.session_info(s).unwrap().state, CKS_RW_USER_FUNCTIONS);
    stop.store(true, Ordering::SeqCst);
    t.join().unwrap();
}

#[test]
fn a_flood_of_connects_never_closes_an_authenticated_connection() {
    use std::io::Read as _;
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let store = Arc::new(Store::default());
    let d = Daemon::start_with(
        dir.path(),
        &store,
        None,
        Limits {
            max_connections: 2,
            max_connections_per_uid: 8,
            ..Limits::default()
        },
    );
    let app = client(dir.path(), &[&d], "", "app");
    let s = app.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    // Ten connects that never start a handshake: they take at most two places among
    // themselves (the oldest closed for the newest), never the application's.
    let flood: Vec<std::net::TcpStream> = (0..10)
        .map(|_| std::net::TcpStream::connect(d.addr).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let closed = flood
        .iter()
        .filter(|c| {
            c.set_read_timeout(Some(std::time::Duration::from_millis(20)))
                .unwrap();
            let mut r: &std::net::TcpStream = c;
            matches!(r.read(&mut [0u8; 1]), Ok(0))
        })
        .count();
    assert!(closed >= 8, "{closed} of the flood closed");
    // The application's connection and session are the ones it had: no new backend opened.
    assert!(app.session_info(s).is_ok());
    assert_eq!(store.opened.lock().len(), 1);
    // A second application still gets in (the flood makes room among itself only).
    let other = client(dir.path(), &[&d], "", "other");
    assert_eq!(other.slot_list(false), Ok(vec![SlotId(0)]));
    assert_eq!(store.opened.lock().len(), 2);
}

#[test]
fn failover_with_a_pool_moves_the_whole_application_once() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let store = Arc::new(Store::default());
    let mut a = Daemon::start(dir.path(), &store, None);
    let b = Daemon::start(dir.path(), &store, None);
    let c = client(dir.path(), &[&a, &b], "", "app");
    let s1 = c
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    c.login(s1, CKU_USER, Some(PIN)).unwrap();
    // Three connections to A, one application there.
    c.grow(3).unwrap();
    assert_eq!(c.connections(), 3);
    assert_eq!(store.opened.lock().len(), 1);
    a.stop();
    // The first call notices, and the whole application moves to B: the pool is dropped, the
    // session re-opened and logged in once.
    assert_eq!(c.session_info(s1).unwrap().state, CKS_RW_USER_FUNCTIONS);
    assert_eq!(c.endpoint(), Some(format!("tls://{}", b.addr)));
    assert_eq!(c.connections(), 1);
    c.grow(3).unwrap();
    assert_eq!(c.connections(), 3);
    assert_eq!(
        store.opened.lock().len(),
        2,
        "one application on A, one on B"
    );
    assert_eq!(
        store.logins.lock().len(),
        2,
        "once on A, once replayed on B"
    );
    assert!(c.session_info(s1).is_ok());
}

#[test]
fn a_stolen_application_key_joins_nothing_of_another_identity() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path());
    let store = Arc::new(Store::default());
    let d = Daemon::start(dir.path(), &store, None);
    let app = client(dir.path(), &[&d], "", "app");
    let s = app.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    app.login(s, CKU_USER, Some(PIN)).unwrap();
    // Identity `other` presents app's key: the daemon opens it an application of its own
    // (the key is scoped to the identity that opened the application), not logged in.
    let other = client(dir.path(), &[&d], "", "other");
    other.set_app_key(app.app_key().unwrap());
    let mine = other.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    assert_eq!(
        other.session_info(mine).unwrap().state,
        CKS_RW_PUBLIC_SESSION
    );
    assert_eq!(
        *store.opened.lock(),
        vec![Identity::Cert("app".into()), Identity::Cert("other".into())]
    );
    // The owner's application is untouched.
    assert_eq!(app.session_info(s).unwrap().state, CKS_RW_USER_FUNCTIONS);
}
