//! The firmware daemon end to end: `ferrohsm serve` on a socket, the built module with a
//! `kind = "remote"` slot, pkcs11-tool processes as the applications, openssl as the verifier.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferrohsm_e2e::*;

/// A temporary world: the daemon's home, its socket, and a `FERROHSM_CONF` naming the socket.
struct World {
    dir: tempfile::TempDir,
    daemon: Option<Child>,
}

impl World {
    fn new() -> Self {
        require("pkcs11-tool");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("ferrohsm.toml"),
            format!(
                "[firmware]\npin_kdf_iterations = 1000\n\n[[slot]]\nkind = \"remote\"\nsocket = {:?}\ntimeout_secs = 20\n",
                dir.path().join("d.sock")
            ),
        )
        .unwrap();
        Self { dir, daemon: None }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn socket(&self) -> PathBuf {
        self.path("d.sock")
    }

    fn home(&self) -> PathBuf {
        self.path("home")
    }

    /// Starts `ferrohsm serve` and waits for its socket.
    fn start(&mut self) {
        self.start_with(&[], None, "warn");
    }

    /// Starts `ferrohsm serve` with `extra` flags, under `ulimit -n nofile` if given, logging
    /// at `level`, and waits for its socket. The child's pid is the daemon's (`exec`).
    fn start_with(&mut self, extra: &[&str], nofile: Option<u32>, level: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("daemon.log"))
            .unwrap();
        let mut cmd = Command::new("sh");
        let limit = nofile.map_or_else(String::new, |n| format!("ulimit -n {n} && "));
        cmd.arg("-c")
            .arg(format!("{limit}exec \"$0\" \"$@\""))
            .arg(cli())
            .args([
                "serve",
                "--socket",
                s(&self.socket()),
                "--home",
                s(&self.home()),
            ])
            .args(extra);
        let child = cmd
            .env("FERROHSM_CONF", self.path("ferrohsm.toml"))
            .env("FERROHSM_LOG", level)
            .env_remove("FERROHSM_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(self.socket()).is_err() {
            if let Some(status) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
                panic!("daemon exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "daemon never listened:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }

    /// `pkcs11-tool --module <ours> args...` with the remote configuration.
    fn tool(&self, args: &[&str]) -> Run {
        let mut c = timed("pkcs11-tool");
        c.arg("--module")
            .arg(module())
            .args(args)
            .env("FERROHSM_CONF", self.path("ferrohsm.toml"))
            .env_remove("FERROHSM_HOME")
            .env_remove("FERROHSM_LOG");
        run(&mut c)
    }

    fn user(&self, args: &[&str]) -> Run {
        let mut all = vec!["--slot", "0", "--login", "--pin", USER_PIN];
        all.extend_from_slice(args);
        self.tool(&all)
    }

    /// Signs `data` with the key of id 01 in a new pkcs11-tool process and checks the signature
    /// with openssl against the public key read from the token.
    fn sign_and_verify(&self, name: &str) {
        let data = self.path(&format!("{name}.txt"));
        let sig = self.path(&format!("{name}.sig"));
        std::fs::write(&data, format!("signed through the daemon: {name}\n")).unwrap();
        self.user(&[
            "--sign",
            "-m",
            "ECDSA-SHA256",
            "--id",
            "01",
            "--signature-format",
            "openssl",
            "-i",
            s(&data),
            "-o",
            s(&sig),
        ])
        .ok();
        let der = self.path("pub.der");
        let pem = self.path("pub.pem");
        if !pem.exists() {
            self.tool(&[
                "--slot",
                "0",
                "--read-object",
                "--type",
                "pubkey",
                "--id",
                "01",
                "--output-file",
                s(&der),
            ])
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
        }
        let v = openssl(&[
            "dgst",
            "-sha256",
            "-verify",
            s(&pem),
            "-signature",
            s(&sig),
            s(&data),
        ])
        .ok();
        assert!(v.stdout.contains("Verified OK"), "{}", v.all());
    }

    fn kill9(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill().unwrap();
            d.wait().unwrap();
        }
    }

    /// SIGTERM, and the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut d = self.daemon.take().unwrap();
        let pid = d.id().to_string();
        run(Command::new("kill").args(["-TERM", &pid])).ok();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = d.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "daemon ignores SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("daemon log:\n{}", self.log());
        }
        self.kill9();
    }
}

fn files_under(p: &Path) -> usize {
    std::fs::read_dir(p)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        files_under(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn daemon_serves_several_processes_survives_restarts_and_stops_cleanly() {
    let mut w = World::new();
    w.start();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(w.socket()).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "socket mode");

    // One process per step: init token, init PIN, generate a key pair.
    w.tool(&[
        "--init-token",
        "--slot",
        "0",
        "--label",
        "daemon",
        "--so-pin",
        SO_PIN,
    ])
    .ok();
    w.tool(&[
        "--slot",
        "0",
        "--init-pin",
        "--login",
        "--so-pin",
        SO_PIN,
        "--pin",
        USER_PIN,
    ])
    .ok();
    w.user(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        "01",
        "--label",
        "dkey",
    ])
    .ok();
    // Another process lists and signs; openssl verifies.
    let listed = w.user(&["--list-objects", "--type", "privkey"]).ok();
    assert!(listed.stdout.contains("dkey"), "{}", listed.stdout);
    w.sign_and_verify("first");
    // The store lives in the daemon's home.
    assert!(files_under(&w.home()) > 0, "the daemon's home is empty");

    // kill -9: the next call fails with an error code, quickly, without hanging.
    w.kill9();
    let t0 = Instant::now();
    let dead = w.tool(&["--slot", "0", "--list-objects"]);
    let took = t0.elapsed();
    assert_ne!(
        dead.status,
        0,
        "a call to a dead daemon succeeded: {}",
        dead.all()
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        dead.all().contains("CKR_DEVICE_REMOVED") || dead.all().contains("0x32"),
        "{}",
        dead.all()
    );

    // Restarted (over the stale socket file): everything works again, keys intact.
    w.start();
    w.sign_and_verify("after-restart");

    // SIGTERM: a clean exit, the socket removed; the store is intact for the next start.
    let status = w.terminate();
    assert!(status.success(), "{status}\n{}", w.log());
    assert!(!w.socket().exists(), "socket left behind");
    w.start();
    w.sign_and_verify("after-sigterm");
}

// ---------------------------------------------------------------------------------------------
// A daemon that bounds its peers (issue 25, class 4), and a module that checks who the daemon
// is. The raw peers below speak the protocol's first bytes by hand: a frame is a big-endian
// u32 length and the payload; the hello is "FHSM", then the lowest and highest version (u16,
// little-endian).

/// The client's hello, framed.
const HELLO: [u8; 12] = [0, 0, 0, 8, b'F', b'H', b'S', b'M', 1, 0, 1, 0];
/// The server's welcome when it accepts (version 1), framed.
const ACCEPTED: [u8; 11] = [0, 0, 0, 7, b'F', b'H', b'S', b'M', 0, 1, 0];
/// `CKR_DEVICE_MEMORY`: the daemon is at a connection limit.
const CKR_DEVICE_MEMORY: u64 = 0x31;
/// `CKR_FUNCTION_REJECTED`: the peer's uid is not allowed.
const CKR_FUNCTION_REJECTED: u64 = 0x200;
/// The uid of the other peers (nobody).
const OTHER_UID: &str = "65534";

/// The server's refusal with `rv`, framed.
fn refused(rv: u64) -> Vec<u8> {
    let mut v = vec![0, 0, 0, 13, b'F', b'H', b'S', b'M', 1];
    v.extend_from_slice(&rv.to_le_bytes());
    v
}

impl World {
    fn pid(&self) -> u32 {
        self.daemon.as_ref().unwrap().id()
    }

    /// Token, PINs, an EC key pair of id 01.
    fn provision(&self) {
        self.tool(&[
            "--init-token",
            "--slot",
            "0",
            "--label",
            "daemon",
            "--so-pin",
            SO_PIN,
        ])
        .ok();
        self.tool(&[
            "--slot",
            "0",
            "--init-pin",
            "--login",
            "--so-pin",
            SO_PIN,
            "--pin",
            USER_PIN,
        ])
        .ok();
        self.user(&[
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--id",
            "01",
            "--label",
            "dkey",
        ])
        .ok();
    }

    /// Lets other uids reach the world's directory (the daemon's socket is still guarded by
    /// its mode and the allow-list).
    fn open_to_others(&self) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Waits until the daemon's log has `n` lines containing `text`.
    fn wait_log(&self, text: &str, n: usize, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if log.lines().filter(|l| l.contains(text)).count() >= n {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "fewer than {n} lines with {text:?} in the daemon's log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon is still running.
    fn assert_alive(&mut self) {
        if let Some(status) = self.daemon.as_mut().unwrap().try_wait().unwrap() {
            panic!("the daemon exited ({status}):\n{}", self.log());
        }
    }
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

/// A connection that said hello (without waiting for the answer; a daemon that refuses the
/// peer may have closed before the hello, and its answer is still there to read).
fn hello(socket: &Path) -> UnixStream {
    let mut c = UnixStream::connect(socket).unwrap();
    let _ = c.write_all(&HELLO);
    c
}

/// Reads what the server sends until it closes the connection, at most `within`.
fn read_to_close(c: &mut UnixStream, within: Duration) -> Vec<u8> {
    c.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    match c.read_to_end(&mut got) {
        Ok(_) => got,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => got,
        Err(e) => panic!("the daemon did not close the connection within {within:?}: {e}"),
    }
}

/// Whether the daemon has closed `c` (without waiting).
fn is_closed(c: &mut UnixStream) -> bool {
    c.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// `n` connections that each said hello and then nothing, as an idle hog would hold them.
fn hog(socket: &Path, n: usize) -> Vec<UnixStream> {
    (0..n).map(|_| hello(socket)).collect()
}

#[test]
fn a_client_is_served_while_another_peer_holds_hundreds_of_idle_connections() {
    let mut w = World::new();
    w.start();
    w.provision();
    // 300 idle connections of the same uid: more than the 128 a uid may hold at once.
    let mut idle = hog(&w.socket(), 300);
    w.sign_and_verify("beside-300-idle");
    w.assert_alive();
    // The daemon held at most its per-uid limit: the oldest idle ones were closed for the
    // newer ones and for the client, each with a line saying why.
    let closed = idle.iter_mut().map(is_closed).filter(|c| *c).count();
    assert!(closed >= 300 - 128, "only {closed} of 300 closed");
    let log = w.wait_log("(max_connections_per_uid)", 1, Duration::from_secs(5));
    assert!(log.contains("closed the idle connection #"), "{log}");
    assert!(!log.contains("accept:"), "{log}");
}

#[test]
fn under_a_low_descriptor_limit_idle_connections_make_room_and_accept_never_loops() {
    let mut w = World::new();
    // 64 descriptors: about a dozen connections with their store handles.
    w.start_with(&[], Some(64), "warn");
    w.provision();
    let mut idle = hog(&w.socket(), 200);
    w.sign_and_verify("under-ulimit-64");
    w.assert_alive();
    let closed = idle.iter_mut().map(is_closed).filter(|c| *c).count();
    assert!(closed >= 150, "only {closed} of 200 closed");
    let log = w.wait_log(
        "descriptors left under RLIMIT_NOFILE 64",
        1,
        Duration::from_secs(5),
    );
    // No accept error loop: at most one line about a failed accept.
    let accept_errors = log.lines().filter(|l| l.contains("accept:")).count();
    assert!(accept_errors <= 1, "{log}");
    // Every line of the log is a line of its own ("ferrohsm: LEVEL: ...").
    assert!(log.lines().all(|l| l.starts_with("ferrohsm")), "{log}");
    // And the daemon is still usable by the next applications.
    drop(idle);
    w.sign_and_verify("after-the-hog");
}

/// Holds a connection in the middle of a request: a header announcing 1000 bytes, 1 byte.
fn busy(socket: &Path) -> UnixStream {
    let mut c = UnixStream::connect(socket).unwrap();
    c.write_all(&HELLO).unwrap();
    let mut welcome = [0u8; ACCEPTED.len()];
    c.read_exact(&mut welcome).unwrap();
    assert_eq!(welcome, ACCEPTED);
    c.write_all(&[0, 0, 3, 0xe8, 1]).unwrap();
    c
}

#[test]
fn per_uid_and_total_limits_refuse_with_a_closed_connection_and_a_log_line_when_none_is_idle() {
    let me = std::process::id();
    for (flag, log_says) in [
        (
            "--max-connections-per-uid",
            "uid 0 has 2 connections (max_connections_per_uid), none of them idle",
        ),
        (
            "--max-connections",
            "2 connections open (max_connections), none of them idle",
        ),
    ] {
        let mut w = World::new();
        w.start_with(&[flag, "2", "--frame-timeout", "3"], None, "warn");
        let mut held = [busy(&w.socket()), busy(&w.socket())];
        std::thread::sleep(Duration::from_millis(300));
        // A third: the refusal, then the end of the stream.
        let mut third = hello(&w.socket());
        let got = read_to_close(&mut third, Duration::from_secs(5));
        assert_eq!(got, refused(CKR_DEVICE_MEMORY), "{flag}");
        let log = w.wait_log(log_says, 1, Duration::from_secs(5));
        assert!(
            log.contains(&format!("refused uid 0 (pid {me}): {log_says}")),
            "{log}"
        );
        // The module says so too, in one line, and fails cleanly.
        let mut c = timed("pkcs11-tool");
        c.arg("--module")
            .arg(module())
            .arg("-L")
            .env("FERROHSM_CONF", w.path("ferrohsm.toml"))
            .env("FERROHSM_LOG", "error");
        let r = run(&mut c);
        assert_ne!(r.status, 0, "{}", r.all());
        assert!(r.stderr.contains("at a connection limit"), "{}", r.all());
        // The held requests never complete: the frame timeout closes them, and the daemon
        // serves again.
        for c in &mut held {
            read_to_close(c, Duration::from_secs(10));
        }
        w.wait_log(
            "a request or its answer took over 3s",
            2,
            Duration::from_secs(5),
        );
        w.tool(&["-L"]).ok();
    }
}

#[test]
fn a_header_announcing_16_mib_costs_the_daemon_nothing_and_the_peer_is_dropped() {
    let mut w = World::new();
    w.start_with(&["--frame-timeout", "3"], None, "warn");
    let pid = w.pid();
    let mut peers: Vec<UnixStream> = (0..16)
        .map(|_| {
            let mut c = hello(&w.socket());
            let mut welcome = [0u8; ACCEPTED.len()];
            c.read_exact(&mut welcome).unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = proc_status(pid, "VmData");
    // Each announces the largest frame (16 MiB) and sends 10 bytes of it.
    let t0 = Instant::now();
    for c in &mut peers {
        c.write_all(&[1, 0, 0, 0]).unwrap();
        c.write_all(&[0; 10]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = proc_status(pid, "VmData");
    // 16 x 16 MiB = 256 MiB if the daemon believed the headers; it holds only what arrived
    // (64 KiB buffers). Allow 16 MiB in all for everything else.
    let grown_kib = after.saturating_sub(before);
    assert!(grown_kib < 16 * 1024, "VmData grew by {grown_kib} kB");
    // Each is dropped by the frame timeout (3 s), not before, and logged.
    for c in &mut peers {
        read_to_close(c, Duration::from_secs(10));
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        t0.elapsed()
    );
    w.wait_log(
        "a request or its answer took over 3s",
        16,
        Duration::from_secs(5),
    );
    w.assert_alive();
}

#[test]
fn silent_and_idle_peers_are_closed_after_their_timeouts() {
    let mut w = World::new();
    w.start_with(
        &["--handshake-timeout", "2", "--idle-timeout", "2"],
        None,
        "info",
    );
    let t0 = Instant::now();
    let mut silent = UnixStream::connect(w.socket()).unwrap();
    let mut idle = hello(&w.socket());
    assert_eq!(read_to_close(&mut silent, Duration::from_secs(10)), b"");
    assert_eq!(read_to_close(&mut idle, Duration::from_secs(10)), ACCEPTED);
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(1800), "{took:?}");
    let log = w.wait_log("no hello within 2s", 1, Duration::from_secs(5));
    assert!(log.contains("idle for 2s"), "{log}");
}

#[test]
fn a_refused_uid_and_a_silent_peer_leave_no_trace_in_the_daemon() {
    require("setpriv");
    require("perl");
    let mut w = World::new();
    w.open_to_others();
    w.start_with(&["--socket-mode", "666"], None, "warn");
    w.provision();
    let pid = w.pid();
    // Every application has gone: no firmware instance is open.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(token_db_descriptors(pid), 0);
    let threads = proc_status(pid, "Threads");
    // A peer under another uid, not in the allow-list: it says hello, prints the answer and
    // holds its connection open for two seconds.
    let mut other = Command::new("setpriv")
        .args([
            &format!("--reuid={OTHER_UID}"),
            &format!("--regid={OTHER_UID}"),
            "--clear-groups",
            "perl",
            "-e",
            r#"use IO::Socket::UNIX; $| = 1; $SIG{PIPE} = 'IGNORE';
               my $c = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $ARGV[0]) or die "connect: $!";
               syswrite($c, pack("N", 8) . "FHSM" . pack("vv", 1, 1));
               my $got = ""; while (length($got) < 17) { my $n = sysread($c, my $b, 64); last if !$n; $got .= $b }
               print unpack("H*", $got), "\n"; sleep 2;"#,
            s(&w.socket()),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(other.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), hex(&refused(CKR_FUNCTION_REJECTED)));
    // While it holds the connection: no store handle, no thread was spent on it.
    assert_eq!(token_db_descriptors(pid), 0);
    assert_eq!(proc_status(pid, "Threads"), threads);
    let log = w.wait_log("not in the allow-list", 1, Duration::from_secs(5));
    assert!(
        log.contains(&format!(
            "refused uid {OTHER_UID} (pid {}): not in the allow-list",
            other.id()
        )),
        "{log}"
    );
    other.wait().unwrap();
    // An allowed peer that has not said hello yet: no firmware instance either...
    let silent = UnixStream::connect(w.socket()).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(token_db_descriptors(pid), 0);
    // ...which the hello opens (the measurement sees one when there is one).
    let _said_hello = hello(&w.socket());
    let deadline = Instant::now() + Duration::from_secs(5);
    while token_db_descriptors(pid) == 0 {
        assert!(
            Instant::now() < deadline,
            "no firmware instance after a hello"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(silent);
}

/// A man in the middle under another uid: listens on `listen`, relays every connection to
/// `upstream`, and appends what the client sends to `record`.
const RELAY: &str = r#"use strict; use warnings; use IO::Socket::UNIX; use IO::Select;
$| = 1; $SIG{CHLD} = 'IGNORE'; $SIG{PIPE} = 'IGNORE';
my ($listen, $upstream, $record) = @ARGV;
my $srv = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Local => $listen, Listen => 8) or die "listen: $!";
chmod 0666, $listen; print "listening\n";
while (1) {
  my $c = $srv->accept or next;
  my $pid = fork(); if (!defined $pid || $pid) { close $c; next }
  close $srv;
  open(my $r, '>>', $record) or exit 1; binmode $r;
  my $u = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $upstream) or exit 1;
  my $sel = IO::Select->new($c, $u);
  while (1) { for my $fh ($sel->can_read) {
    my $n = sysread($fh, my $buf, 65536); exit 0 if !$n;
    if ($fh == $c) { syswrite($r, $buf); syswrite($u, $buf) } else { syswrite($c, $buf) }
  } }
}"#;

#[test]
fn the_module_refuses_a_socket_served_by_another_uid_and_never_sends_it_the_pin() {
    require("setpriv");
    require("perl");
    let mut w = World::new();
    w.open_to_others();
    // The real daemon lets the relay's uid in, so that the relay could pass a login through.
    w.start_with(
        &[
            "--socket-mode",
            "666",
            "--allow-uid",
            "0",
            "--allow-uid",
            OTHER_UID,
        ],
        None,
        "warn",
    );
    w.provision();
    let fake_dir = w.path("planted");
    std::fs::create_dir(&fake_dir).unwrap();
    std::os::unix::fs::chown(&fake_dir, Some(65534), Some(65534)).unwrap();
    let fake = fake_dir.join("f.sock");
    let record = fake_dir.join("received.bin");
    let mut relay = Reap(
        Command::new("setpriv")
            .args([
                &format!("--reuid={OTHER_UID}"),
                &format!("--regid={OTHER_UID}"),
                "--clear-groups",
                "perl",
                "-e",
                RELAY,
                s(&fake),
                s(&w.socket()),
                s(&record),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(relay.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "listening");
    let login_through = |conf: &Path| {
        let mut c = timed("pkcs11-tool");
        c.arg("--module")
            .arg(module())
            .args([
                "--slot",
                "0",
                "--login",
                "--pin",
                USER_PIN,
                "--list-objects",
            ])
            .env("FERROHSM_CONF", conf)
            .env("FERROHSM_LOG", "error")
            .env_remove("FERROHSM_HOME");
        run(&mut c)
    };
    let recorded = || std::fs::read(&record).unwrap_or_default();
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);

    // The application's configuration names the planted socket; it expects the daemon under
    // its own uid (root), so it refuses the relay's before sending a byte.
    let conf = w.path("planted.toml");
    std::fs::write(
        &conf,
        format!("[[slot]]\nkind = \"remote\"\nsocket = {fake:?}\ntimeout_secs = 20\n"),
    )
    .unwrap();
    let r = login_through(&conf);
    assert_ne!(r.status, 0, "{}", r.all());
    assert!(
        r.stderr
            .contains(&format!("the socket is served by uid {OTHER_UID}")),
        "{}",
        r.all()
    );
    assert!(
        r.all().contains("CKR_DEVICE_ERROR") || r.all().contains("0x30"),
        "{}",
        r.all()
    );
    std::thread::sleep(Duration::from_millis(300));
    let got = recorded();
    assert!(
        !contains(&got, USER_PIN.as_bytes()),
        "the PIN reached the fake daemon"
    );
    assert!(got.is_empty(), "the module sent {} bytes to it", got.len());

    // Control: told that the daemon runs under the relay's uid, the module talks to it, and
    // the recording catches the PIN — which is what the check above prevents.
    let trusting = w.path("trusting.toml");
    std::fs::write(
        &trusting,
        format!(
            "[[slot]]\nkind = \"remote\"\nsocket = {fake:?}\ntimeout_secs = 20\ndaemon_uid = {OTHER_UID}\n"
        ),
    )
    .unwrap();
    let r = login_through(&trusting);
    assert_eq!(r.status, 0, "{}", r.all());
    assert!(r.stdout.contains("dkey"), "{}", r.all());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !contains(&recorded(), USER_PIN.as_bytes()) {
        assert!(Instant::now() < deadline, "the control never saw the PIN");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed and reaped on drop (the relay's per-connection children end with
/// their connections).
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_client_of_another_uid_is_answered_promptly_while_a_peer_floods_connections() {
    require("setpriv");
    require("perl");
    let mut w = World::new();
    w.open_to_others();
    w.start_with(
        &[
            "--socket-mode",
            "666",
            "--allow-uid",
            "0",
            "--allow-uid",
            OTHER_UID,
        ],
        None,
        "warn",
    );
    w.provision();
    // nobody connects and says hello in a loop for 6 s, holding its last 300 connections:
    // far more than its 128 places, so every new one closes one of its own.
    let _flood = Reap(
        Command::new("setpriv")
            .args([
                &format!("--reuid={OTHER_UID}"),
                &format!("--regid={OTHER_UID}"),
                "--clear-groups",
                "perl",
                "-e",
                r#"use IO::Socket::UNIX; $SIG{PIPE} = 'IGNORE'; my @c; my $end = time + 6;
                   while (time < $end) {
                     my $c = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $ARGV[0]) or next;
                     syswrite($c, pack("N", 8) . "FHSM" . pack("vv", 1, 1));
                     push @c, $c; shift @c if @c > 300;
                   }"#,
                s(&w.socket()),
            ])
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_secs(1));
    // Root's hello is answered without waiting behind the flood's queue of connections (with
    // the system's default listen queue it waited seconds), and a signature verifies.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let t0 = Instant::now();
        let mut c = hello(&w.socket());
        let mut welcome = [0u8; ACCEPTED.len()];
        c.read_exact(&mut welcome).unwrap();
        assert_eq!(welcome, ACCEPTED);
        slowest = slowest.max(t0.elapsed());
    }
    assert!(slowest < Duration::from_secs(1), "a hello took {slowest:?}");
    w.sign_and_verify("during-a-flood");
    w.wait_log(
        &format!("to serve uid {OTHER_UID}"),
        1,
        Duration::from_secs(5),
    );
}

/// A raw peer of the daemon, with no module and so no C door in between, sends templates that
/// name an attribute type twice; the daemon has no slot policy (no overlay). They are refused
/// at the daemon's door, before any backend reads them, with the C door's code
/// (`CKR_TEMPLATE_INCONSISTENT`): even where the firmware would first have answered something
/// else (an unknown attribute type before the duplicate), and inside an attribute array
/// (`CKA_UNWRAP_TEMPLATE`) that a later unwrap would read. A search template may repeat a type.
#[test]
fn a_raw_peer_is_refused_templates_with_a_duplicated_attribute_type_at_the_daemons_door() {
    use bridge::call::Call;
    use bridge::{Attribute, Error, Reply, SlotId, Template};
    use cryptoki_sys::*;

    let mut w = World::new();
    w.start();
    w.provision();
    let mut c = UnixStream::connect(w.socket()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(&HELLO).unwrap();
    let mut welcome = [0u8; ACCEPTED.len()];
    c.read_exact(&mut welcome).unwrap();
    assert_eq!(welcome, ACCEPTED);
    let mut call = |call: &Call<'_>| {
        bridge::remote::proto::write_frame(&mut c, &call.encode()).unwrap();
        let frame = bridge::remote::proto::read_frame(&mut c).unwrap().unwrap();
        bridge::remote::proto::decode_response(&frame).unwrap()
    };
    let Ok(Reply::Session(session)) = call(&Call::OpenSession {
        slot: SlotId(0),
        flags: CKF_SERIAL_SESSION | CKF_RW_SESSION,
    }) else {
        panic!("no session");
    };
    call(&Call::Login {
        session,
        user: CKU_USER,
        pin: Some(USER_PIN.as_bytes()),
    })
    .unwrap();
    let key = |more: &[Attribute]| {
        let mut t = Template::new()
            .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
            .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES))
            .with(Attribute::bytes(CKA_VALUE, vec![7; 32]))
            .with(Attribute::bytes(CKA_LABEL, b"dup".to_vec()));
        t.0.extend(more.iter().cloned());
        t
    };
    let unknown = Attribute::bytes(CKA_VENDOR_DEFINED | 0x4242, vec![1]);
    let twice = [
        Attribute::bool(CKA_SENSITIVE, true),
        Attribute::bool(CKA_SENSITIVE, false),
    ];
    // Control: the firmware alone answers the unknown type first.
    assert_eq!(
        call(&Call::CreateObject {
            session,
            template: &key(std::slice::from_ref(&unknown)),
        }),
        Err(Error::AttributeTypeInvalid)
    );
    let mut first_unknown = Template::new().with(unknown);
    first_unknown.0.extend(key(&twice).0);
    let nested = key(&[Attribute::template(
        CKA_UNWRAP_TEMPLATE,
        Template(twice.to_vec()),
    )]);
    for (what, template) in [
        ("an unknown type, then a duplicate", &first_unknown),
        ("a duplicate inside CKA_UNWRAP_TEMPLATE", &nested),
        ("a duplicate", &key(&twice)),
    ] {
        assert_eq!(
            call(&Call::CreateObject { session, template }),
            Err(Error::TemplateInconsistent),
            "C_CreateObject with {what}"
        );
    }
    let Ok(Reply::Object(made)) = call(&Call::CreateObject {
        session,
        template: &key(&[]),
    }) else {
        panic!("control: the key without duplicates");
    };
    assert_eq!(
        call(&Call::SetAttributeValue {
            session,
            object: made,
            template: &Template(vec![
                Attribute::bytes(CKA_LABEL, b"a".to_vec()),
                Attribute::bytes(CKA_LABEL, b"b".to_vec()),
            ]),
        }),
        Err(Error::TemplateInconsistent),
        "C_SetAttributeValue with a duplicate"
    );
    let label = Attribute::bytes(CKA_LABEL, b"dup".to_vec());
    call(&Call::FindObjectsInit {
        session,
        template: &Template(vec![label.clone(), label]),
    })
    .expect("a search may repeat a type");
}
