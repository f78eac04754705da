//! Helpers for end-to-end tests: find the built module, make a fresh home, run real tools.
//!
//! The module under test is `$TEST_PKCS11_MODULE`, else `target/release/libferrohsm_pkcs11.so`,
//! else `target/debug/libferrohsm_pkcs11.so` (build it first: `cargo build --release`).

// Test support prints what it runs, to make failures readable.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The SO PIN every test token gets.
pub const SO_PIN: &str = "12345678";
/// The user PIN every test token gets.
pub const USER_PIN: &str = "123456";

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// The built module.
pub fn module() -> PathBuf {
    if let Some(p) = std::env::var_os("TEST_PKCS11_MODULE") {
        return PathBuf::from(p);
    }
    for profile in ["release", "debug"] {
        let p = workspace()
            .join("target")
            .join(profile)
            .join("libferrohsm_pkcs11.so");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "libferrohsm_pkcs11.so not built: run `cargo build --release` first (or set TEST_PKCS11_MODULE)"
    );
}

/// The `ferrohsm` binary, next to the module.
pub fn cli() -> PathBuf {
    let m = module();
    let p = m.parent().expect("target dir").join("ferrohsm");
    assert!(
        p.exists(),
        "{} not built: run `cargo build --release` first",
        p.display()
    );
    p
}

/// Whether a program is on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Fails the test loudly when a tool the README's test command installs is missing.
pub fn require(program: &str) {
    assert!(
        have(program),
        "{program} is not installed: the test command (scripts/test.sh) installs it"
    );
}

/// The result of a command, with its output as text.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 if killed by a signal).
    pub status: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The raw output.
    pub raw: Output,
}

impl Run {
    /// Panics with the whole output unless the command succeeded.
    pub fn ok(self) -> Self {
        assert_eq!(
            self.status, 0,
            "command failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Stdout and stderr together.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs a command and captures its output.
pub fn run(cmd: &mut Command) -> Run {
    let raw = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    Run {
        status: raw.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&raw.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&raw.stderr).into_owned(),
        raw,
    }
}

/// A fresh FerroHSM home in a temporary directory, with helpers to drive it.
pub struct Home {
    /// The temporary directory (removed on drop).
    pub dir: tempfile::TempDir,
}

impl Home {
    /// An empty home (one uninitialized slot).
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A home with a token labelled `label`, SO PIN [`SO_PIN`] and user PIN [`USER_PIN`].
    pub fn with_token(label: &str) -> Self {
        let h = Self::new();
        h.tool(&[
            "--init-token",
            "--slot",
            "0",
            "--label",
            label,
            "--so-pin",
            SO_PIN,
        ])
        .ok();
        h.tool(&[
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
        h
    }

    /// The home directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the home's scratch area.
    pub fn file(&self, name: &str) -> PathBuf {
        let d = self.path().join("scratch");
        std::fs::create_dir_all(&d).expect("scratch dir");
        d.join(name)
    }

    /// A command with this home's environment.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("FERROHSM_HOME", self.path())
            .env_remove("FERROHSM_CONF")
            .env_remove("FERROHSM_LOG");
        c
    }

    /// `pkcs11-tool --module <ours> args...`.
    pub fn tool(&self, args: &[&str]) -> Run {
        require("pkcs11-tool");
        let mut c = self.command("pkcs11-tool");
        c.arg("--module").arg(module()).args(args);
        run(&mut c)
    }

    /// `pkcs11-tool` logged in as the user, on slot 0.
    pub fn user(&self, args: &[&str]) -> Run {
        let mut all = vec!["--slot", "0", "--login", "--pin", USER_PIN];
        all.extend_from_slice(args);
        self.tool(&all)
    }

    /// `ferrohsm args...`.
    pub fn ferrohsm(&self, args: &[&str]) -> Run {
        let mut c = self.command(cli());
        c.args(args);
        run(&mut c)
    }
}

impl Default for Home {
    fn default() -> Self {
        Self::new()
    }
}
