//! The firmware daemon end to end: `ferrohsm serve` on a socket, the built module with a
//! `kind = "remote"` slot, pkcs11-tool processes as the applications, openssl as the verifier.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::indexing_slicing
)]

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
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("daemon.log"))
            .unwrap();
        let child = Command::new(cli())
            .args([
                "serve",
                "--socket",
                s(&self.socket()),
                "--home",
                s(&self.home()),
            ])
            .env("FERROHSM_CONF", self.path("ferrohsm.toml"))
            .env_remove("FERROHSM_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
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
