//! The network daemon end to end (issue 18): `ferrohsm serve --listen` over TLS 1.3 with mutual
//! authentication, certificates made by the built `ferrohsm tls`, the built module with a
//! `kind = "remote"` slot on two endpoints, openssl as the verifier.
//!
//! - Failover: two daemons sharing one home; an application (a child process over the module)
//!   keeps its session handles and its login across `kill -9` of the endpoint in use, and the
//!   operation in flight fails exactly once with `CKR_DEVICE_ERROR`.
//! - Refusals: no certificate, a certificate of another CA, an identity not allowed, TLS 1.2,
//!   a handshake that never ends, a replayed connection — each refused before the protocol,
//!   leaving nothing in the daemon (no firmware instance: no descriptor on a token.db, no
//!   "opening the firmware" line) or in the store (files unchanged).
//! - Hostile frames behind TLS: garbage after the handshake, a 16 MiB header, a flood of TCP
//!   connects, per-identity limits.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::{SessionState, UserType};
use cryptoki::types::AuthPin;
use ferrohsm_e2e::*;
use rustls::pki_types::pem::PemObject as _;

const CHILD: &str = "TLS_FAILOVER_CHILD";
/// The client's hello, framed.
const HELLO: [u8; 12] = [0, 0, 0, 8, b'F', b'H', b'S', b'M', 1, 0, 1, 0];
/// The server's welcome when it accepts (version 1), framed.
const ACCEPTED: [u8; 11] = [0, 0, 0, 7, b'F', b'H', b'S', b'M', 0, 1, 0];

/// A PKI made by `ferrohsm tls`, a shared home, and daemons on loopback ports.
struct World {
    dir: tempfile::TempDir,
    daemons: Vec<Option<Child>>,
    ports: Vec<u16>,
}

impl World {
    fn new() -> Self {
        require("openssl");
        let dir = tempfile::tempdir().unwrap();
        let w = Self {
            dir,
            daemons: Vec::new(),
            ports: Vec::new(),
        };
        w.ferrohsm(&["tls", "init-ca", "--out", s(&w.path("pki"))]);
        w.ferrohsm(&[
            "tls",
            "issue",
            "--ca",
            s(&w.path("pki")),
            "--name",
            "daemon",
            "--server",
            "127.0.0.1,localhost",
            "--out",
            s(&w.path("pki")),
        ]);
        for name in ["app", "other"] {
            w.ferrohsm(&[
                "tls",
                "issue",
                "--ca",
                s(&w.path("pki")),
                "--name",
                name,
                "--out",
                s(&w.path("pki")),
            ]);
        }
        // Another CA, with a client certificate of the same name as the allowed one.
        w.ferrohsm(&["tls", "init-ca", "--out", s(&w.path("rogue"))]);
        w.ferrohsm(&[
            "tls",
            "issue",
            "--ca",
            s(&w.path("rogue")),
            "--name",
            "app",
            "--out",
            s(&w.path("rogue")),
        ]);
        std::fs::write(
            w.path("daemon.toml"),
            "[firmware]\npin_kdf_iterations = 1000\n",
        )
        .unwrap();
        std::fs::create_dir_all(w.home()).unwrap();
        w
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn home(&self) -> PathBuf {
        self.path("home")
    }

    fn ferrohsm(&self, args: &[&str]) -> Run {
        let mut c = timed(cli());
        c.args(args)
            .env_remove("FERROHSM_CONF")
            .env_remove("FERROHSM_HOME");
        run(&mut c).ok()
    }

    /// A module configuration for the endpoints of daemons `which`, with client certificate
    /// `cert` of the PKI in `pki`; returns its path.
    fn client_conf(&self, which: &[usize], pki: &str, cert: &str) -> PathBuf {
        let endpoints: Vec<String> = which
            .iter()
            .map(|i| format!("\"tls://127.0.0.1:{}\"", self.ports[*i]))
            .collect();
        let conf = self.path(&format!("client-{pki}-{cert}-{which:?}.toml"));
        std::fs::write(
            &conf,
            format!(
                "[[slot]]\nkind = \"remote\"\nendpoints = [{}]\nca = {:?}\ncert = {:?}\nkey = {:?}\ntimeout_secs = 20\nconnect_timeout_secs = 5\n",
                endpoints.join(", "),
                self.path("pki/ca.pem"),
                self.path(&format!("{pki}/{cert}.pem")),
                self.path(&format!("{pki}/{cert}.key")),
            ),
        )
        .unwrap();
        conf
    }

    /// Starts daemon `i` (a new port the first time, the same port after) with `extra` flags,
    /// logging at info, and waits until it listens.
    fn start(&mut self, i: usize, extra: &[&str]) {
        self.start_as(i, "daemon", extra);
    }

    /// [`World::start`] with the certificate and key `pki/<cert>.pem`, `.key`.
    fn start_as(&mut self, i: usize, cert: &str, extra: &[&str]) {
        while self.ports.len() <= i {
            self.ports.push(free_port());
            self.daemons.push(None);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap();
        let before = self.log(i).matches("ferrohsm: serving").count();
        let listen = format!("127.0.0.1:{}", self.ports[i]);
        let child = Command::new(cli())
            .args([
                "serve",
                "--home",
                s(&self.home()),
                "--listen",
                &listen,
                "--tls-cert",
                s(&self.path(&format!("pki/{cert}.pem"))),
                "--tls-key",
                s(&self.path(&format!("pki/{cert}.key"))),
                "--client-ca",
                s(&self.path("pki/ca.pem")),
            ])
            .args(extra)
            .env("FERROHSM_CONF", self.path("daemon.toml"))
            .env("FERROHSM_LOG", "info")
            .env_remove("FERROHSM_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemons[i] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.log(i).matches("ferrohsm: serving").count() <= before {
            if let Some(status) = self.daemons[i].as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon {i} exited ({status}):\n{}", self.log(i));
            }
            assert!(Instant::now() < deadline, "daemon {i} never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.path(&format!("daemon-{i}.log"))
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// Waits until daemon `i`'s log has `n` lines containing `text`; the log.
    fn wait_log(&self, i: usize, text: &str, n: usize, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log(i);
            if log.lines().filter(|l| l.contains(text)).count() >= n {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "fewer than {n} lines with {text:?} in daemon {i}'s log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self, i: usize) -> u32 {
        self.daemons[i].as_ref().unwrap().id()
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut d) = self.daemons.get_mut(i).and_then(Option::take) {
            d.kill().unwrap();
            d.wait().unwrap();
        }
    }

    /// `pkcs11-tool --module <ours> args...` with the module configuration `conf`.
    fn tool(&self, conf: &Path, args: &[&str]) -> Run {
        require("pkcs11-tool");
        let mut c = timed("pkcs11-tool");
        c.arg("--module")
            .arg(module())
            .args(args)
            .env("FERROHSM_CONF", conf)
            .env_remove("FERROHSM_HOME")
            .env("FERROHSM_LOG", "warn");
        run(&mut c)
    }

    /// Token and PINs, through endpoint `i`.
    fn provision(&self, i: usize) {
        let conf = self.client_conf(&[i], "pki", "app");
        self.tool(
            &conf,
            &[
                "--init-token",
                "--slot",
                "0",
                "--label",
                "net",
                "--so-pin",
                SO_PIN,
            ],
        )
        .ok();
        self.tool(
            &conf,
            &[
                "--slot",
                "0",
                "--init-pin",
                "--login",
                "--so-pin",
                SO_PIN,
                "--pin",
                USER_PIN,
            ],
        )
        .ok();
    }

    /// Every file of the home with its size and modification time: what "no trace in the
    /// store" is checked against.
    fn store_state(&self) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
        fn walk(p: &Path, out: &mut Vec<(PathBuf, u64, std::time::SystemTime)>) {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    walk(&e.path(), out);
                } else {
                    out.push((e.path(), m.len(), m.modified().unwrap()));
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.home(), &mut v);
        v.sort();
        v
    }

    /// A TLS client (rustls) to daemon `i` with the CA of `pki` and, if given, the client
    /// certificate `cert` of `pki`; the handshake done.
    fn tls_client(&self, i: usize, cert: Option<(&str, &str)>) -> Tls {
        let ca = self.path("pki/ca.pem");
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::CertificateDer::pem_file_iter(&ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots);
        let config = match cert {
            Some((pki, name)) => {
                let chain = rustls::pki_types::CertificateDer::pem_file_iter(
                    self.path(&format!("{pki}/{name}.pem")),
                )
                .unwrap()
                .map(Result::unwrap)
                .collect();
                let key = rustls::pki_types::PrivateKeyDer::from_pem_file(
                    self.path(&format!("{pki}/{name}.key")),
                )
                .unwrap();
                builder.with_client_auth_cert(chain, key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        let tcp = TcpStream::connect(("127.0.0.1", self.ports[i])).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), "127.0.0.1".try_into().unwrap())
            .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).unwrap();
        }
        tls
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.daemons.len() {
                eprintln!("daemon {i} log:\n{}", self.log(i));
            }
        }
        for i in 0..self.daemons.len() {
            self.kill9(i);
        }
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Reads what the daemon sends until it closes the connection (or a TLS error ends it), at
/// most `within`: the bytes, and how long it took.
fn read_to_close(c: &mut Tls, within: Duration) -> (Vec<u8>, Duration) {
    let t0 = Instant::now();
    c.sock.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("the daemon did not close the connection within {within:?}")
            }
            Err(_) => break,
        }
    }
    (got, t0.elapsed())
}

/// A field of /proc/PID/status, in its unit (kB for memory).
fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// How many of the daemon's descriptors are open on a token database.
fn token_db_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|target| target.to_string_lossy().contains("token.db"))
        .count()
}

/// Waits until the daemon holds no firmware instance (the connections of earlier clients have
/// ended).
fn wait_no_firmware(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while token_db_descriptors(pid) != 0 {
        assert!(Instant::now() < deadline, "a firmware instance stays open");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// openssl verifies `sig` (RSA PKCS#1 v1.5, SHA-256) over `data` with `pem`.
fn verify(pem: &Path, data: &Path, sig: &Path) {
    let v = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        s(pem),
        "-signature",
        s(sig),
        s(data),
    ])
    .ok();
    assert!(v.stdout.contains("Verified OK"), "{}", v.all());
}

// ---------------------------------------------------------------------------------------------
// Failover.

fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

fn is_device_error<T: std::fmt::Debug>(r: &Result<T, CkError>) -> bool {
    matches!(r, Err(CkError::Pkcs11(RvError::DeviceError, _)))
}

/// The application: generates an RSA key through the first endpoint, signs, and goes on
/// signing with the same sessions across a `kill -9` of the endpoint it uses. Talks to the
/// test over stdin/stdout; writes its signatures to `$TLS_OUT`.
#[test]
#[ignore = "run by failover_keeps_sessions_and_login_and_fails_the_lost_operation_once"]
fn failover_child() {
    if !is_child() {
        return;
    }
    let out = PathBuf::from(std::env::var("TLS_OUT").unwrap());
    let mut stdin = BufReader::new(std::io::stdin());
    let wait = |stdin: &mut BufReader<std::io::Stdin>, what: &str| {
        let mut line = String::new();
        stdin.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), what);
    };
    let say = |what: &str| {
        println!("{what}");
        std::io::stdout().flush().unwrap();
    };
    let p = Pkcs11::new(module()).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = p.get_slots_with_initialized_token().unwrap()[0];
    let s1 = p.open_rw_session(slot).unwrap();
    let s2 = p.open_rw_session(slot).unwrap();
    s1.login(UserType::User, Some(&AuthPin::from(USER_PIN.to_owned())))
        .unwrap();
    let (_, key) = s1
        .generate_key_pair(
            &Mechanism::RsaPkcsKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::ModulusBits(2048.into()),
                Attribute::PublicExponent(vec![1, 0, 1]),
                Attribute::Verify(true),
                Attribute::Id(vec![2]),
                Attribute::Label(b"failover".to_vec()),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Sign(true),
                Attribute::Id(vec![2]),
                Attribute::Label(b"failover".to_vec()),
            ],
        )
        .unwrap();
    let sign = |session: &cryptoki::session::Session, name: &str| {
        let data = format!("signed through the network: {name}\n");
        std::fs::write(out.join(format!("{name}.txt")), &data).unwrap();
        let sig = session
            .sign(&Mechanism::Sha256RsaPkcs, key, data.as_bytes())
            .unwrap();
        std::fs::write(out.join(format!("{name}.sig")), sig).unwrap();
    };
    sign(&s1, "before");
    // An operation in flight on s2 when the endpoint dies.
    s2.sign_init(&Mechanism::Sha256RsaPkcs, key).unwrap();
    s2.sign_update(b"half of a message").unwrap();
    say("READY");
    wait(&mut stdin, "KILLED");

    // The operation that was in flight fails once, with CKR_DEVICE_ERROR...
    let lost = s2.sign_update(b"the other half");
    assert!(is_device_error(&lost), "{lost:?}");
    // ...and the next call on that session works: same handle, still logged in (the key is
    // private: signing needs the login).
    sign(&s2, "after-on-s2");
    // The other session: same handle, logged in, no error at all.
    assert_eq!(
        s1.get_session_info().unwrap().session_state(),
        SessionState::RwUser
    );
    sign(&s1, "after-on-s1");
    // Token-object handles are the same on the new endpoint.
    let found = s1
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(b"failover".to_vec()),
        ])
        .unwrap();
    assert_eq!(found, vec![key]);
    let label = s2.get_attributes(key, &[AttributeType::Label]).unwrap();
    assert_eq!(label, vec![Attribute::Label(b"failover".to_vec())]);
    say("FAILED-OVER");

    // Mid-run: sign in a loop while the test kills the endpoint now in use. At most one call
    // fails, with CKR_DEVICE_ERROR; the loop goes on.
    wait(&mut stdin, "LOOP");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let reader = std::thread::spawn(move || {
        let mut line = String::new();
        stdin.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "STOP");
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    say("LOOPING");
    let (mut ok, mut failed, mut ok_after_failure) = (0u32, Vec::new(), 0u32);
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let r = s1.sign(&Mechanism::Sha256RsaPkcs, key, b"in a loop");
        match r {
            Ok(_) => {
                ok += 1;
                if !failed.is_empty() {
                    ok_after_failure += 1;
                }
            }
            Err(e) => failed.push(format!("{e:?}")),
        }
    }
    reader.join().unwrap();
    assert!(failed.len() <= 1, "{failed:?}");
    assert!(
        failed.iter().all(|e| e.contains("DeviceError")),
        "{failed:?}"
    );
    assert!(failed.is_empty() || ok_after_failure > 0);
    sign(&s1, "after-loop");
    say(&format!("DONE ok={ok} failed={}", failed.len()));
}

#[test]
fn failover_keeps_sessions_and_login_and_fails_the_lost_operation_once() {
    require("pkcs11-tool");
    let mut w = World::new();
    w.start(0, &[]);
    w.start(1, &[]);
    w.provision(0);
    let conf = w.client_conf(&[0, 1], "pki", "app");
    let out = w.path("sigs");
    std::fs::create_dir_all(&out).unwrap();
    let mut cmd = child_test("failover_child", &Home::new(), CHILD);
    cmd.env("FERROHSM_CONF", &conf)
        .env("FERROHSM_LOG", "warn")
        .env("TLS_OUT", &out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(w.path("app.log")).unwrap());
    let mut app = cmd.spawn().unwrap();
    let mut to_app = app.stdin.take().unwrap();
    let mut from_app = BufReader::new(app.stdout.take().unwrap());
    let app_log = w.path("app.log");
    let mut expect = |what: &str| -> String { expect_line(&mut from_app, &app_log, what) };
    expect("READY");
    // The key was made through endpoint A (the first), and only A served the application.
    assert!(w.log(0).contains("opening the firmware for identity app"));
    assert!(!w.log(1).contains("opening the firmware for identity app"));
    let pem = w.path("pub.pem");
    let der = w.path("pub.der");
    w.tool(
        &w.client_conf(&[0], "pki", "app"),
        &[
            "--slot",
            "0",
            "--read-object",
            "--type",
            "pubkey",
            "--id",
            "02",
            "-o",
            s(&der),
        ],
    )
    .ok();
    openssl(&[
        "pkey",
        "-pubin",
        "-inform",
        "DER",
        "-in",
        s(&der),
        "-out",
        s(&pem),
    ])
    .ok();
    verify(&pem, &out.join("before.txt"), &out.join("before.sig"));

    w.kill9(0);
    writeln!(to_app, "KILLED").unwrap();
    expect("FAILED-OVER");
    for name in ["after-on-s2", "after-on-s1"] {
        verify(
            &pem,
            &out.join(format!("{name}.txt")),
            &out.join(format!("{name}.sig")),
        );
    }
    // B serves it now, under the same identity.
    w.wait_log(
        1,
        "opening the firmware for identity app",
        1,
        Duration::from_secs(5),
    );

    // A comes back; the application stays on B until B dies mid-run.
    w.start(0, &[]);
    let opened_on_a = w
        .log(0)
        .matches("opening the firmware for identity app")
        .count();
    writeln!(to_app, "LOOP").unwrap();
    expect("LOOPING");
    std::thread::sleep(Duration::from_millis(700));
    w.kill9(1);
    w.wait_log(
        0,
        "opening the firmware for identity app",
        opened_on_a + 1,
        Duration::from_secs(10),
    );
    std::thread::sleep(Duration::from_millis(700));
    writeln!(to_app, "STOP").unwrap();
    let done = expect("DONE");
    println!("{}", done.trim());
    verify(
        &pem,
        &out.join("after-loop.txt"),
        &out.join("after-loop.sig"),
    );
    let status = app.wait().unwrap();
    assert!(
        status.success(),
        "{status}\n{}",
        std::fs::read_to_string(&app_log).unwrap_or_default()
    );
}

/// The next line of the application that starts with `what` (panics, with its log, if it
/// ends first).
fn expect_line(from_app: &mut impl BufRead, app_log: &Path, what: &str) -> String {
    loop {
        let mut line = String::new();
        if from_app.read_line(&mut line).unwrap() == 0 {
            panic!(
                "the application ended before {what}:\n{}",
                std::fs::read_to_string(app_log).unwrap_or_default()
            );
        }
        // libtest may print "test NAME ... " on the same line first.
        if let Some(at) = line.find(what) {
            return line[at..].to_owned();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Refusals at the handshake.

#[test]
fn clients_without_a_valid_allowed_certificate_are_refused_at_the_handshake_leaving_no_trace() {
    require("pkcs11-tool");
    let mut w = World::new();
    w.start(0, &[]);
    w.provision(0);
    w.kill9(0);
    let base = w.log(0).len();
    w.start(0, &["--allow-identity", "app", "--handshake-timeout", "2"]);
    let pid = w.pid(0);
    let since_start = |w: &World| w.log(0).get(base..).unwrap_or_default().to_owned();
    std::thread::sleep(Duration::from_millis(200));
    let store = w.store_state();
    let threads = proc_status(pid, "Threads");
    assert_eq!(token_db_descriptors(pid), 0);

    // No certificate: rustls finishes its side of the handshake; the daemon's alert ends it.
    let mut bare = w.tls_client(0, None);
    let _ = bare.write_all(&HELLO);
    let (got, _) = read_to_close(&mut bare, Duration::from_secs(5));
    assert!(got.is_empty(), "{got:?}");
    w.wait_log(
        0,
        "at the TLS handshake: peer sent no certificates",
        1,
        Duration::from_secs(5),
    );

    // A certificate of another CA, through the module: refused; the module says why.
    let rogue = w.client_conf(&[0], "rogue", "app");
    let r = w.tool(&rogue, &["-L"]);
    assert_ne!(r.status, 0, "{}", r.all());
    assert!(
        r.all().contains("refused the TLS connection"),
        "{}",
        r.all()
    );
    w.wait_log(
        0,
        "invalid peer certificate: UnknownIssuer",
        1,
        Duration::from_secs(5),
    );

    // The right CA, an identity not on the allow-list.
    let other = w.client_conf(&[0], "pki", "other");
    let r = w.tool(&other, &["-L"]);
    assert_ne!(r.status, 0, "{}", r.all());
    w.wait_log(
        0,
        "at the TLS handshake: identity other is not in the allow-list (--allow-identity)",
        1,
        Duration::from_secs(5),
    );

    // TLS 1.2: refused (openssl, which still speaks it).
    let mut old = timed("openssl");
    old.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{}", w.ports[0]),
        "-tls1_2",
        "-CAfile",
        s(&w.path("pki/ca.pem")),
        "-cert",
        s(&w.path("pki/app.pem")),
        "-key",
        s(&w.path("pki/app.key")),
    ]);
    let r = run_with_input(&mut old, b"");
    assert_ne!(r.status, 0, "{}", r.all());
    w.wait_log(
        0,
        "at the TLS handshake: peer is incompatible",
        1,
        Duration::from_secs(5),
    );

    // A handshake that never completes: a partial ClientHello, then silence. Closed at the
    // handshake timeout (2 s), not before.
    let t0 = Instant::now();
    let mut slow = TcpStream::connect(("127.0.0.1", w.ports[0])).unwrap();
    slow.write_all(&[0x16, 0x03, 0x01, 0x01, 0x00, 0x01])
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = Vec::new();
    let _ = slow.read_to_end(&mut sink);
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(1800), "{took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    w.wait_log(0, "no TLS handshake within 2s", 1, Duration::from_secs(5));

    // None of them reached the firmware: no instance opened, no store file touched, no thread
    // left.
    assert_eq!(token_db_descriptors(pid), 0);
    assert!(
        !since_start(&w).contains("opening the firmware"),
        "{}",
        since_start(&w)
    );
    assert_eq!(w.store_state(), store);
    let deadline = Instant::now() + Duration::from_secs(5);
    while proc_status(pid, "Threads") > threads {
        assert!(Instant::now() < deadline, "threads left behind");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A replayed connection: the bytes a real client (identity app) sent, recorded by a relay,
    // sent again. Refused at the handshake; only the real client was served.
    let recorded = record_client(&w, 0);
    let refusals = since_start(&w).matches("at the TLS handshake").count();
    let mut replay = TcpStream::connect(("127.0.0.1", w.ports[0])).unwrap();
    let _ = replay.write_all(&recorded);
    replay
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = Vec::new();
    let _ = replay.read_to_end(&mut sink);
    w.wait_log(
        0,
        "at the TLS handshake",
        refusals + 1,
        Duration::from_secs(5),
    );
    let log = since_start(&w);
    assert_eq!(log.matches("opening the firmware").count(), 1, "{log}");
    assert_eq!(
        log.matches("opening the firmware for identity app").count(),
        1,
        "{log}"
    );

    // The allowed identity is served.
    let app = w.client_conf(&[0], "pki", "app");
    let listed = w.tool(&app, &["-L"]).ok();
    assert!(listed.stdout.contains("token label"), "{}", listed.stdout);

    // A client posing as an endpoint with its own certificate (same CA, client usage only):
    // the module refuses it before sending a byte of the protocol, let alone a PIN.
    w.start_as(1, "other", &[]);
    let conf = w.client_conf(&[1], "pki", "app");
    let r = w.tool(&conf, &["--slot", "0", "--login", "--pin", USER_PIN, "-O"]);
    assert_ne!(r.status, 0, "{}", r.all());
    assert!(
        r.all().contains("TLS: invalid peer certificate"),
        "{}",
        r.all()
    );
    assert!(!w.log(1).contains("opening the firmware"), "{}", w.log(1));
}

/// Relays one connection of a real client (pkcs11-tool -L through the module, identity app)
/// to daemon `i` and returns what the client sent.
fn record_client(w: &World, i: usize) -> Vec<u8> {
    let relay = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = relay.local_addr().unwrap().port();
    let upstream = w.ports[i];
    let handle = std::thread::spawn(move || {
        let (mut client, _) = relay.accept().unwrap();
        let mut server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
        let mut back_server = server.try_clone().unwrap();
        let mut back_client = client.try_clone().unwrap();
        let down = std::thread::spawn(move || {
            let _ = std::io::copy(&mut back_server, &mut back_client);
            let _ = back_client.shutdown(std::net::Shutdown::Write);
        });
        let mut recorded = Vec::new();
        let mut buf = [0u8; 16384];
        loop {
            match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    recorded.extend_from_slice(&buf[..n]);
                    if server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = server.shutdown(std::net::Shutdown::Write);
        let _ = down.join();
        recorded
    });
    let conf = w.path("relay.toml");
    std::fs::write(
        &conf,
        format!(
            "[[slot]]\nkind = \"remote\"\nendpoints = [\"tls://127.0.0.1:{port}\"]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            w.path("pki/ca.pem"),
            w.path("pki/app.pem"),
            w.path("pki/app.key"),
        ),
    )
    .unwrap();
    let listed = w.tool(&conf, &["-L"]).ok();
    assert!(listed.stdout.contains("token label"), "{}", listed.stdout);
    let recorded = handle.join().unwrap();
    assert!(recorded.len() > 500, "{}", recorded.len());
    recorded
}

// ---------------------------------------------------------------------------------------------
// Hostile frames and floods behind TLS.

#[test]
fn hostile_frames_behind_tls_cost_nothing_and_close_the_connection() {
    let mut w = World::new();
    w.start(0, &["--frame-timeout", "3"]);
    let pid = w.pid(0);

    // Garbage instead of the hello: an oversized "frame" header, closed at once.
    let mut c = w.tls_client(0, Some(("pki", "app")));
    c.write_all(b"GARBAGE!GARBAGE!").unwrap();
    let (got, took) = read_to_close(&mut c, Duration::from_secs(5));
    assert!(
        got.is_empty() && took < Duration::from_secs(2),
        "{got:?} {took:?}"
    );

    // A valid hello, then a request that does not decode: closed at once.
    let mut c = w.tls_client(0, Some(("pki", "app")));
    c.write_all(&HELLO).unwrap();
    let mut welcome = [0u8; ACCEPTED.len()];
    c.read_exact(&mut welcome).unwrap();
    assert_eq!(welcome, ACCEPTED);
    c.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).unwrap();
    let (got, took) = read_to_close(&mut c, Duration::from_secs(5));
    assert!(
        got.is_empty() && took < Duration::from_secs(2),
        "{got:?} {took:?}"
    );
    w.wait_log(
        0,
        "a malformed or oversized frame",
        2,
        Duration::from_secs(5),
    );

    // A header one byte over 16 MiB: closed at once.
    let mut c = w.tls_client(0, Some(("pki", "app")));
    c.write_all(&HELLO).unwrap();
    c.read_exact(&mut welcome).unwrap();
    c.write_all(&[1, 0, 0, 1]).unwrap();
    let (_, took) = read_to_close(&mut c, Duration::from_secs(5));
    assert!(took < Duration::from_secs(2), "{took:?}");

    // 16 connections each announce 16 MiB and send 10 bytes: the daemon holds what arrived,
    // not what was announced, and drops each at the frame timeout (3 s).
    let mut peers: Vec<Tls> = (0..16)
        .map(|_| {
            let mut c = w.tls_client(0, Some(("pki", "app")));
            c.write_all(&HELLO).unwrap();
            let mut welcome = [0u8; ACCEPTED.len()];
            c.read_exact(&mut welcome).unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = proc_status(pid, "VmData");
    let t0 = Instant::now();
    for c in &mut peers {
        c.write_all(&[1, 0, 0, 0]).unwrap();
        c.write_all(&[0; 10]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let grown_kib = proc_status(pid, "VmData").saturating_sub(before);
    assert!(grown_kib < 16 * 1024, "VmData grew by {grown_kib} kB");
    for c in &mut peers {
        read_to_close(c, Duration::from_secs(10));
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        t0.elapsed()
    );
    w.wait_log(
        0,
        "a request or its answer took over 3s",
        16,
        Duration::from_secs(5),
    );
    assert!(w.daemons[0].as_mut().unwrap().try_wait().unwrap().is_none());
}

#[test]
fn a_flood_of_connects_and_another_identity_at_its_limit_leave_a_client_served() {
    require("pkcs11-tool");
    let mut w = World::new();
    w.start(0, &["--max-connections-per-uid", "3"]);
    w.provision(0);
    let pid = w.pid(0);
    let app = w.client_conf(&[0], "pki", "app");

    wait_no_firmware(pid);
    // 300 TCP connections that never start their handshake, from one address: they count as
    // that address's, the oldest make room for the newest, none reaches the firmware.
    let flood: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(("127.0.0.1", w.ports[0])).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(token_db_descriptors(pid), 0);
    w.wait_log(
        0,
        "of unauthenticated 127.0.0.1",
        1,
        Duration::from_secs(10),
    );
    let listed = w.tool(&app, &["-L"]).ok();
    assert!(listed.stdout.contains("token label"), "{}", listed.stdout);
    drop(flood);

    // The warnings about the flood are rate-limited (20 a second): let the second pass.
    std::thread::sleep(Duration::from_millis(1200));
    // Identity "other" holds three idle connections (its limit); a fourth closes its oldest;
    // "app" is not affected.
    let mut others: Vec<Tls> = (0..4)
        .map(|_| {
            let mut c = w.tls_client(0, Some(("pki", "other")));
            c.write_all(&HELLO).unwrap();
            let mut welcome = [0u8; ACCEPTED.len()];
            c.read_exact(&mut welcome).unwrap();
            assert_eq!(welcome, ACCEPTED);
            std::thread::sleep(Duration::from_millis(50));
            c
        })
        .collect();
    let (got, _) = read_to_close(&mut others[0], Duration::from_secs(5));
    assert!(got.is_empty());
    w.wait_log(
        0,
        "to serve identity other (127.0.0.1:",
        1,
        Duration::from_secs(5),
    );
    assert!(
        w.log(0)
            .contains("identity other has 3 connections (max_connections_per_uid)")
    );
    let listed = w.tool(&app, &["-L"]).ok();
    assert!(listed.stdout.contains("token label"), "{}", listed.stdout);
    drop(others);
}

// ---------------------------------------------------------------------------------------------
// `ferrohsm tls`.

#[test]
fn tls_commands_make_a_verifiable_pki_keep_keys_private_and_never_overwrite() {
    use std::os::unix::fs::PermissionsExt as _;
    let w = World::new();
    let pki = w.path("pki");
    for key in ["ca.key", "daemon.key", "app.key"] {
        let mode = std::fs::metadata(pki.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    // openssl agrees: both chain to the CA, with the names and usages asked for.
    let v = openssl(&[
        "verify",
        "-CAfile",
        s(&pki.join("ca.pem")),
        s(&pki.join("daemon.pem")),
        s(&pki.join("app.pem")),
    ])
    .ok();
    assert!(
        v.stdout.contains("daemon.pem: OK") && v.stdout.contains("app.pem: OK"),
        "{}",
        v.all()
    );
    let text = |name: &str| {
        openssl(&["x509", "-noout", "-text", "-in", s(&pki.join(name))])
            .ok()
            .stdout
    };
    let server = text("daemon.pem");
    assert!(
        server.contains("IP Address:127.0.0.1") && server.contains("DNS:localhost"),
        "{server}"
    );
    assert!(server.contains("TLS Web Server Authentication"), "{server}");
    let client = text("app.pem");
    assert!(
        client.contains("Subject: CN = app") && client.contains("DNS:app"),
        "{client}"
    );
    assert!(client.contains("TLS Web Client Authentication"), "{client}");
    assert!(!client.contains("Server Authentication"), "{client}");
    // Nothing is overwritten; a bad name or a missing CA is one line saying what to do.
    let before = std::fs::read(pki.join("ca.key")).unwrap();
    let mut again = timed(cli());
    again.args(["tls", "init-ca", "--out", s(&pki)]);
    let r = run(&mut again);
    assert_ne!(r.status, 0);
    assert!(
        r.stderr.contains("already exists; nothing written"),
        "{}",
        r.all()
    );
    assert_eq!(std::fs::read(pki.join("ca.key")).unwrap(), before);
    let mut bad = timed(cli());
    bad.args([
        "tls",
        "issue",
        "--ca",
        s(&pki),
        "--name",
        "a b",
        "--out",
        s(&pki),
    ]);
    let r = run(&mut bad);
    assert_ne!(r.status, 0);
    assert!(
        r.stderr.contains("--name \"a b\": use 1 to 64 letters"),
        "{}",
        r.all()
    );
    let mut none = timed(cli());
    none.args([
        "tls",
        "issue",
        "--ca",
        s(&w.path("nope")),
        "--name",
        "x",
        "--out",
        s(&pki),
    ]);
    let r = run(&mut none);
    assert_ne!(r.status, 0);
    assert!(
        r.stderr.contains("make a CA with `ferrohsm tls init-ca"),
        "{}",
        r.all()
    );
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.all());
}
