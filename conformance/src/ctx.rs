//! Modules under test, a fresh token per scenario, and running the real tools against it.

use std::path::{Path, PathBuf};
use std::process::Command;

use bridge::config::Personality;

use crate::report::Outcome;
use crate::scenarios::Scenario;

/// The SO PIN of every scenario's token.
pub(crate) const SO_PIN: &str = "12345678";
/// The user PIN of every scenario's token.
pub(crate) const USER_PIN: &str = "123456";
/// The label of every scenario's token.
pub(crate) const TOKEN: &str = "conformance";
/// The `[firmware]` configuration of a personality's scenario.
const FIRMWARE_CONF: &str = "firmware.toml";
/// FerroHSM's shortest user PIN: a scenario PIN shorter than this is a length probe.
const MIN_PIN: usize = 4;
/// Upper bound on any one external command, in seconds.
const TIMEOUT_SECS: &str = "180";

/// How a module keeps its tokens, so that each scenario gets a fresh one in a temporary place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// FerroHSM: `FERROHSM_HOME` names the device's home.
    Ferro,
    /// SoftHSMv2: `SOFTHSM2_CONF` names a config whose `directories.tokendir` is temporary.
    SoftHsm,
    /// FerroHSM's module bridging to SoftHSMv2 (`kind = "module"` in `FERROHSM_CONF`), each
    /// scenario with its own SoftHSM token directory.
    Bridge,
    /// FerroHSM's module with a `kind = "remote"` slot, served by a `ferrohsm serve` daemon
    /// started per scenario on that scenario's home.
    Daemon,
    /// The same over the network: `ferrohsm serve --listen` on a loopback port, TLS 1.3 with
    /// certificates made by `ferrohsm tls`, an `endpoints` slot.
    DaemonTls,
    /// Anything else: the suite initializes the first slot's token (destructive!) and relies on
    /// the environment the caller gave.
    Other,
}

/// One module under test.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// Display name (the report's column).
    pub(crate) name: String,
    /// The module's path.
    pub(crate) module: PathBuf,
    /// How to give it a fresh token.
    pub(crate) kind: Kind,
    /// The real module behind a bridge.
    pub(crate) real: Option<PathBuf>,
    /// The `ferrohsm` binary that serves a daemon target.
    pub(crate) daemon: Option<PathBuf>,
    /// For a TLS daemon target: the directory with the CA (`ca.pem`), the daemon's
    /// certificate (`daemon.pem`, `daemon.key`) and the client's (`conformance.pem`, `.key`).
    pub(crate) pki: Option<PathBuf>,
    /// FerroHSM's firmware personality (`[firmware] personality`), `None`: its default.
    pub(crate) personality: Option<Personality>,
    /// The personality the suite's client side writes for: user PINs in its form (see
    /// [`Target::pin`]) and, where it refuses read-only sessions, `pkcs11-tool --session-rw`,
    /// as a user of that HSM does.
    pub(crate) client_for: Option<Personality>,
    /// Where the module records every call (`FERROHSM_TRACE`), for `--personality`.
    pub(crate) trace: Option<PathBuf>,
}

impl Target {
    /// Recognizes the module by its file name.
    pub(crate) fn new(module: &Path) -> Self {
        let file = module
            .file_name()
            .map(|f| f.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let (name, kind) = if file.contains("ferrohsm") {
            ("FerroHSM".to_owned(), Kind::Ferro)
        } else if file.contains("softhsm") {
            ("SoftHSM".to_owned(), Kind::SoftHsm)
        } else {
            (
                module
                    .file_stem()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "module".to_owned()),
                Kind::Other,
            )
        };
        let module = std::fs::canonicalize(module).unwrap_or_else(|_| module.to_owned());
        Self {
            name,
            module,
            kind,
            real: None,
            daemon: None,
            pki: None,
            personality: None,
            client_for: None,
            trace: None,
        }
    }

    /// The same column under FerroHSM's personality `p`, its user PINs written as `p` wants
    /// them.
    pub(crate) fn under(&self, p: Personality) -> Self {
        Self {
            name: format!("{} as {}", self.name, p.name()),
            personality: Some(p),
            client_for: Some(p),
            ..self.clone()
        }
    }

    /// A user PIN of the scenarios (`123456`, `999999` ...) as this target's personality writes
    /// one: unchanged without a PIN rule; else the first of `PIN`, `PIN-pin`, `cu1:PIN`,
    /// `cu1:PIN-pin` the rule accepts. A PIN shorter than FerroHSM accepts (the scenarios'
    /// `CKR_PIN_LEN_RANGE` probes) becomes the first candidate the rule refuses for its length
    /// (or, `u:P`, one still shorter than FerroHSM's shortest), so that the probe asks the
    /// same question.
    pub(crate) fn pin(&self, base: &str) -> String {
        let Some(p) = self.client_for else {
            return base.to_owned();
        };
        let profile = p.profile();
        let candidates = [
            base.to_owned(),
            format!("{base}-pin"),
            format!("cu1:{base}"),
            format!("cu1:{base}-pin"),
            format!("u:{}", base.get(..1).unwrap_or_default()),
        ];
        let short = base.len() < MIN_PIN;
        let wanted = |c: &String| match profile.judge_pin(c.as_bytes()) {
            Ok(()) => (c.len() < MIN_PIN) == short,
            Err(f) => short && f.code == Some(bridge::Error::PinLenRange),
        };
        candidates
            .iter()
            .find(|c| wanted(c))
            .cloned()
            .unwrap_or_else(|| base.to_owned())
    }

    /// FerroHSM's module (`ours`) with one slot bridged to the SoftHSMv2 library `real`.
    pub(crate) fn bridged(ours: &Path, real: &Path) -> Self {
        Self {
            name: "SoftHSM via FerroHSM".to_owned(),
            module: std::fs::canonicalize(ours).unwrap_or_else(|_| ours.to_owned()),
            kind: Kind::Bridge,
            real: Some(std::fs::canonicalize(real).unwrap_or_else(|_| real.to_owned())),
            daemon: None,
            pki: None,
            personality: None,
            client_for: None,
            trace: None,
        }
    }

    /// FerroHSM's module (`ours`) reaching the firmware through a daemon: `ferrohsm serve`
    /// (the binary next to the module) per scenario, a `kind = "remote"` slot.
    pub(crate) fn daemon(ours: &Path) -> Self {
        let module = std::fs::canonicalize(ours).unwrap_or_else(|_| ours.to_owned());
        let cli = module.with_file_name("ferrohsm");
        Self {
            name: "FerroHSM via daemon".to_owned(),
            module,
            kind: Kind::Daemon,
            real: None,
            daemon: Some(cli),
            pki: None,
            personality: None,
            client_for: None,
            trace: None,
        }
    }

    /// FerroHSM's module (`ours`) reaching the firmware through a daemon over TLS: `ferrohsm
    /// serve --listen` per scenario, certificates made once in `pki` by `ferrohsm tls`.
    pub(crate) fn daemon_tls(ours: &Path, pki: &Path) -> Result<Self, String> {
        let mut t = Self::daemon(ours);
        t.name = "FerroHSM via TLS daemon".to_owned();
        t.kind = Kind::DaemonTls;
        let cli = t.daemon.clone().unwrap_or_default();
        let dir = pki.display().to_string();
        for args in [
            vec!["tls", "init-ca", "--out", &dir],
            vec![
                "tls",
                "issue",
                "--ca",
                &dir,
                "--name",
                "daemon",
                "--server",
                "127.0.0.1",
                "--out",
                &dir,
            ],
            vec![
                "tls",
                "issue",
                "--ca",
                &dir,
                "--name",
                "conformance",
                "--out",
                &dir,
            ],
        ] {
            let out = Command::new(&cli)
                .args(&args)
                .env_remove("FERROHSM_CONF")
                .output()
                .map_err(|e| format!("cannot run {}: {e}", cli.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "ferrohsm {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        t.pki = Some(pki.to_owned());
        Ok(t)
    }
}

/// Why a scenario did not pass.
#[derive(Debug)]
pub(crate) enum Fail {
    /// It ran and the module misbehaved.
    Failed(String),
    /// It could not run (a tool is missing, or the module lacks what the scenario needs to
    /// start); reported loudly, never counted as a pass.
    Skipped(String),
}

impl From<String> for Fail {
    fn from(s: String) -> Self {
        Fail::Failed(s)
    }
}

impl From<&str> for Fail {
    fn from(s: &str) -> Self {
        Fail::Failed(s.to_owned())
    }
}

/// A scenario's result.
pub(crate) type R = Result<(), Fail>;

/// Fails with `msg` unless `cond`.
pub(crate) fn ensure(cond: bool, msg: impl Into<String>) -> R {
    if cond {
        Ok(())
    } else {
        Err(Fail::Failed(msg.into()))
    }
}

/// The result of one command.
#[derive(Debug)]
pub(crate) struct Run {
    /// What ran (for messages).
    pub(crate) what: String,
    /// Exit status (-1: killed by a signal).
    pub(crate) status: i32,
    /// Standard output, as text.
    pub(crate) stdout: String,
    /// Standard error, as text.
    pub(crate) stderr: String,
}

impl Run {
    /// Stdout and stderr together.
    pub(crate) fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// The first line naming a `CKR_*` code, or the tail of the output.
    pub(crate) fn brief(&self) -> String {
        let all = self.all();
        if let Some(l) = all.lines().find(|l| l.contains("CKR_")) {
            return l.trim().to_owned();
        }
        let tail: Vec<&str> = all.lines().rev().take(3).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("exit {}: {}", self.status, tail.join(" | "))
    }

    /// Passes through a successful run; otherwise fails with the tool's own words.
    pub(crate) fn ok(self) -> Result<Self, Fail> {
        if self.status == 0 {
            Ok(self)
        } else {
            Err(Fail::Failed(format!("{}: {}", self.what, self.brief())))
        }
    }

    /// The command must fail, and its output must name `code`.
    pub(crate) fn fails_with(self, code: &str) -> R {
        if self.status == 0 {
            return Err(Fail::Failed(format!(
                "{}: succeeded, expected {code}",
                self.what
            )));
        }
        ensure(
            self.all().contains(code),
            format!("{}: expected {code}, got {}", self.what, self.brief()),
        )
    }

    /// The output must contain `text`.
    pub(crate) fn shows(self, text: &str) -> Result<Self, Fail> {
        if self.all().contains(text) {
            Ok(self)
        } else {
            Err(Fail::Failed(format!(
                "{}: output lacks {text:?}: {}",
                self.what,
                self.brief()
            )))
        }
    }
}

/// Whether a program is on PATH.
pub(crate) fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

fn run(mut cmd: Command, what: String) -> Run {
    match cmd.output() {
        Ok(o) => Run {
            what,
            status: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        },
        Err(e) => Run {
            what,
            status: -1,
            stdout: String::new(),
            stderr: format!("cannot run: {e}"),
        },
    }
}

/// One scenario's world: a module with a fresh token in a temporary directory.
pub(crate) struct Ctx<'a> {
    /// The module.
    pub(crate) target: &'a Target,
    dir: tempfile::TempDir,
    /// The scenario's daemon (kind `Daemon`), killed when the scenario ends.
    daemon: Option<std::process::Child>,
}

impl Drop for Ctx<'_> {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

impl<'a> Ctx<'a> {
    /// A fresh, initialized token (SO PIN [`SO_PIN`], user PIN [`USER_PIN`], label [`TOKEN`]).
    pub(crate) fn new(target: &'a Target) -> Result<Self, Fail> {
        let ctx = Self::bare(target)?;
        ctx.init_token()?;
        Ok(ctx)
    }

    /// A fresh home with no token initialized yet.
    pub(crate) fn bare(target: &'a Target) -> Result<Self, Fail> {
        let dir = tempfile::Builder::new()
            .prefix("conformance-")
            .tempdir()
            .map_err(|e| Fail::Skipped(format!("cannot make a temporary directory: {e}")))?;
        if matches!(target.kind, Kind::SoftHsm | Kind::Bridge) {
            let tokens = dir.path().join("tokens");
            std::fs::create_dir_all(&tokens)
                .map_err(|e| Fail::Skipped(format!("cannot make {}: {e}", tokens.display())))?;
            let conf = format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                tokens.display()
            );
            std::fs::write(dir.path().join("softhsm2.conf"), conf)
                .map_err(|e| Fail::Skipped(format!("cannot write softhsm2.conf: {e}")))?;
        }
        std::fs::create_dir_all(dir.path().join("work"))
            .map_err(|e| Fail::Skipped(format!("cannot make the work directory: {e}")))?;
        if let Some(p) = target.personality {
            std::fs::write(
                dir.path().join(FIRMWARE_CONF),
                format!("[firmware]\npersonality = {:?}\n", p.name()),
            )
            .map_err(|e| Fail::Skipped(format!("cannot write {FIRMWARE_CONF}: {e}")))?;
        }
        let mut ctx = Self {
            target,
            dir,
            daemon: None,
        };
        ctx.start_daemon()?;
        // Before C_InitToken the bridged slot is SoftHSM's first (uninitialized) slot; after it,
        // the token by its label (SoftHSM renumbers initialized tokens).
        ctx.write_bridge_conf(false)?;
        Ok(ctx)
    }

    /// For a daemon target: writes the `kind = "remote"` configuration and starts
    /// `ferrohsm serve` on this scenario's home (default firmware settings, as the embedded
    /// column has), waiting until it listens.
    fn start_daemon(&mut self) -> R {
        let Some(cli) = &self.target.daemon else {
            return Ok(());
        };
        if let Some(pki) = &self.target.pki {
            return self.start_tls_daemon(cli, pki);
        }
        let socket = self.dir.path().join("d.sock");
        std::fs::write(
            self.dir.path().join("ferrohsm.toml"),
            format!("[[slot]]\nkind = \"remote\"\nsocket = {:?}\n", socket),
        )
        .map_err(|e| Fail::Skipped(format!("cannot write ferrohsm.toml: {e}")))?;
        let child = Command::new(cli)
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--home")
            .arg(self.dir.path())
            .env_remove("FERROHSM_CONF")
            .envs(self.firmware_conf())
            .env_remove("FERROHSM_HOME")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| Fail::Skipped(format!("cannot start {}: {e}", cli.display())))?;
        self.daemon = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if std::time::Instant::now() > deadline {
                return Err(Fail::Skipped("the daemon never listened".to_owned()));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(())
    }

    /// `ferrohsm serve --listen 127.0.0.1:0` on this scenario's home; the port it got is read
    /// from its first line, then the `endpoints` configuration is written.
    fn start_tls_daemon(&mut self, cli: &Path, pki: &Path) -> R {
        let log = self.dir.path().join("daemon.log");
        let err = std::fs::File::create(&log)
            .map_err(|e| Fail::Skipped(format!("cannot write {}: {e}", log.display())))?;
        let child = Command::new(cli)
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--tls-cert")
            .arg(pki.join("daemon.pem"))
            .arg("--tls-key")
            .arg(pki.join("daemon.key"))
            .arg("--client-ca")
            .arg(pki.join("ca.pem"))
            .arg("--home")
            .arg(self.dir.path())
            .env_remove("FERROHSM_CONF")
            .envs(self.firmware_conf())
            .env_remove("FERROHSM_HOME")
            .env_remove("FERROHSM_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|e| Fail::Skipped(format!("cannot start {}: {e}", cli.display())))?;
        self.daemon = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let port = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let port = text
                .lines()
                .find_map(|l| l.strip_prefix("ferrohsm: serving "))
                .and_then(|l| l.split(" on 127.0.0.1:").nth(1))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|p| p.parse::<u16>().ok());
            if let Some(port) = port {
                break port;
            }
            if std::time::Instant::now() > deadline {
                return Err(Fail::Skipped(format!(
                    "the TLS daemon never listened: {text}"
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        std::fs::write(
            self.dir.path().join("ferrohsm.toml"),
            format!(
                "[[slot]]\nkind = \"remote\"\nendpoints = [\"tls://127.0.0.1:{port}\"]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
                pki.join("ca.pem"),
                pki.join("conformance.pem"),
                pki.join("conformance.key"),
            ),
        )
        .map_err(|e| Fail::Skipped(format!("cannot write ferrohsm.toml: {e}")))
    }

    /// The bridge's `FERROHSM_CONF`.
    fn write_bridge_conf(&self, initialized: bool) -> R {
        let Some(real) = &self.target.real else {
            return Ok(());
        };
        let select = if initialized {
            format!("token_label = \"{TOKEN}\"")
        } else {
            "slot_id = 0".to_owned()
        };
        let conf = format!(
            "[[slot]]\nkind = \"module\"\npath = \"{}\"\n{select}\n",
            real.display()
        );
        std::fs::write(self.dir.path().join("ferrohsm.toml"), conf)
            .map_err(|e| Fail::Skipped(format!("cannot write ferrohsm.toml: {e}")))
    }

    /// `C_InitToken` on the first slot, then `C_InitPIN`, through pkcs11-tool.
    pub(crate) fn init_token(&self) -> R {
        self.raw_tool(&[
            "--init-token",
            "--slot-index",
            "0",
            "--label",
            TOKEN,
            "--so-pin",
            SO_PIN,
        ])
        .ok()
        .map_err(|e| match e {
            Fail::Failed(m) => Fail::Failed(format!("token set-up: {m}")),
            s => s,
        })?;
        self.write_bridge_conf(true)?;
        self.tool(&[
            "--init-pin",
            "--login",
            "--so-pin",
            SO_PIN,
            "--pin",
            USER_PIN,
        ])
        .ok()?;
        Ok(())
    }

    /// Sets this module's environment on a command.
    pub(crate) fn env(&self, cmd: &mut Command) {
        match self.target.kind {
            Kind::Ferro => {
                cmd.env("FERROHSM_HOME", self.dir.path())
                    .env_remove("FERROHSM_CONF")
                    .envs(self.firmware_conf())
                    .env_remove("FERROHSM_LOG");
            }
            Kind::SoftHsm => {
                cmd.env("SOFTHSM2_CONF", self.dir.path().join("softhsm2.conf"));
            }
            Kind::Bridge => {
                cmd.env("SOFTHSM2_CONF", self.dir.path().join("softhsm2.conf"))
                    .env("FERROHSM_CONF", self.dir.path().join("ferrohsm.toml"))
                    .env_remove("FERROHSM_HOME")
                    .env_remove("FERROHSM_LOG");
            }
            Kind::Daemon | Kind::DaemonTls => {
                cmd.env("FERROHSM_CONF", self.dir.path().join("ferrohsm.toml"))
                    .env_remove("FERROHSM_HOME")
                    .env_remove("FERROHSM_LOG");
            }
            Kind::Other => {}
        }
        if self.target.kind != Kind::Other {
            match &self.target.trace {
                Some(t) => cmd.env("FERROHSM_TRACE", t),
                None => cmd.env_remove("FERROHSM_TRACE"),
            };
        }
        cmd.current_dir(self.dir.path().join("work"));
    }

    /// `FERROHSM_CONF` for FerroHSM's own firmware (the embedded module, a daemon) under a
    /// personality: its `[firmware]` section.
    fn firmware_conf(&self) -> Option<(&'static str, PathBuf)> {
        self.target
            .personality
            .map(|_| ("FERROHSM_CONF", self.dir.path().join(FIRMWARE_CONF)))
    }

    /// A command bounded in time, in this module's environment.
    pub(crate) fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.arg(TIMEOUT_SECS).arg(program).args(args);
        self.env(&mut c);
        c
    }

    /// Any program, in this module's environment.
    pub(crate) fn sh(&self, program: &str, args: &[&str]) -> Run {
        let what = format!("{program} {}", args.join(" "));
        run(self.command(program, args), what)
    }

    /// `pkcs11-tool --module M args` (no slot selection).
    pub(crate) fn raw_tool(&self, args: &[&str]) -> Run {
        // User PINs as the personality writes them (SO PINs it does not judge).
        let so = args.windows(2).any(|w| w == ["--login-type", "so"]);
        let mut user_pin = false;
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                let mapped = if user_pin {
                    self.target.pin(a)
                } else {
                    (*a).to_owned()
                };
                user_pin = *a == "--pin" || (*a == "--new-pin" && !so);
                mapped
            })
            .collect();
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        let rw_only = self
            .target
            .client_for
            .is_some_and(|p| p.profile().read_only_sessions.is_some());
        if rw_only && !args.contains(&"--session-rw") {
            args.push("--session-rw");
        }
        let mut c = self.command("pkcs11-tool", &[]);
        c.arg("--module").arg(&self.target.module).args(&args);
        run(c, format!("pkcs11-tool {}", redact(&args)))
    }

    /// `pkcs11-tool --module M --token-label conformance args`.
    pub(crate) fn tool(&self, args: &[&str]) -> Run {
        let mut all = vec!["--token-label", TOKEN];
        all.extend_from_slice(args);
        self.raw_tool(&all)
    }

    /// `pkcs11-tool` logged in as the user.
    pub(crate) fn user(&self, args: &[&str]) -> Run {
        let mut all = vec!["--login", "--pin", USER_PIN];
        all.extend_from_slice(args);
        self.tool(&all)
    }

    /// `openssl args`.
    pub(crate) fn openssl(&self, args: &[&str]) -> Run {
        self.sh("openssl", args)
    }

    /// A path in the scenario's work directory.
    pub(crate) fn path(&self, name: &str) -> String {
        self.dir
            .path()
            .join("work")
            .join(name)
            .display()
            .to_string()
    }

    /// Writes a file in the work directory.
    pub(crate) fn write(&self, name: &str, bytes: &[u8]) -> R {
        std::fs::write(self.path(name), bytes)
            .map_err(|e| Fail::Failed(format!("write {name}: {e}")))
    }

    /// Reads a file of the work directory.
    pub(crate) fn read(&self, name: &str) -> Result<Vec<u8>, Fail> {
        std::fs::read(self.path(name)).map_err(|e| Fail::Failed(format!("read {name}: {e}")))
    }

    /// Runs a client-side check of `client.rs` in a worker process against this token.
    pub(crate) fn worker(&self, check: &str, extra: &[&str]) -> R {
        self.worker_run(check, extra).map(|_| ())
    }

    /// Runs a worker check and returns its detail (a golden rule's code).
    pub(crate) fn worker_detail(&self, check: &str) -> Result<String, Fail> {
        self.worker_run(check, &[])
    }

    fn worker_run(&self, check: &str, extra: &[&str]) -> Result<String, Fail> {
        let exe = std::env::current_exe()
            .map_err(|e| Fail::Skipped(format!("cannot find the conformance binary: {e}")))?;
        let mut c = Command::new("timeout");
        c.arg(TIMEOUT_SECS)
            .arg(exe)
            .arg("--worker")
            .arg(check)
            .arg(&self.target.module)
            .args(extra);
        self.env(&mut c);
        c.env(crate::client::PIN_ENV, self.target.pin(USER_PIN));
        let r = run(c, format!("worker {check}"));
        crate::client::worker_verdict(&r)
    }
}

/// Hides PINs in a command line shown in the report.
fn redact(args: &[&str]) -> String {
    let mut out = Vec::with_capacity(args.len());
    let mut hide = false;
    for a in args {
        if hide {
            out.push("***");
        } else {
            out.push(a);
        }
        hide = matches!(*a, "--pin" | "--so-pin" | "--new-pin" | "-p");
    }
    out.join(" ")
}

/// The tools every scenario needs.
pub(crate) fn missing_tools(needs: &[&str]) -> Option<String> {
    let missing: Vec<&str> = ["pkcs11-tool", "timeout"]
        .iter()
        .chain(needs.iter())
        .copied()
        .filter(|t| !have(t))
        .collect();
    if missing.is_empty() {
        None
    } else {
        Some(format!("SKIPPED: {} not installed", missing.join(", ")))
    }
}

/// Runs one scenario on a fresh token of `target`.
pub(crate) fn run_scenario(target: &Target, s: &Scenario) -> Outcome {
    if let Some(m) = missing_tools(s.needs) {
        return Outcome::skip(m);
    }
    let ctx = if s.bare {
        Ctx::bare(target)
    } else {
        Ctx::new(target)
    };
    let result = ctx.and_then(|ctx| (s.run)(&ctx));
    match result {
        Ok(()) => Outcome::pass(String::new()),
        Err(Fail::Failed(m)) => Outcome::fail(m),
        Err(Fail::Skipped(m)) => Outcome::skip(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn under(p: Personality) -> Target {
        Target::new(Path::new("libferrohsm_pkcs11.so")).under(p)
    }

    #[test]
    fn user_pins_take_each_personality_s_form() {
        let plain = Target::new(Path::new("libferrohsm_pkcs11.so"));
        assert_eq!(plain.pin("123456"), "123456");
        let aws = under(Personality::AwsCloudhsm);
        assert_eq!(aws.pin("123456"), "cu1:123456-pin");
        assert_eq!(aws.pin("999999"), "cu1:999999-pin");
        // A length probe stays one: the password part too short for AWS.
        assert_eq!(aws.pin("12"), "cu1:12");
        let azure = under(Personality::AzureCloudhsm);
        assert_eq!(azure.pin("123456"), "cu1:123456");
        // Azure states no password length: FerroHSM's own shortest PIN is the probe.
        assert_eq!(azure.pin("12"), "u:1");
        let luna = under(Personality::Luna);
        assert_eq!(luna.pin("123456"), "123456-pin");
        assert_eq!(luna.pin("12"), "12");
        assert_eq!(under(Personality::Strict).pin("123456"), "123456");
        assert_eq!(aws.name, "FerroHSM as aws-cloudhsm");
    }
}
