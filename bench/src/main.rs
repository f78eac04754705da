//! `ferrohsm-bench`: the same workloads against any list of PKCS#11 modules through the C ABI,
//! interleaved in one run (A B A B ...), several repetitions, medians; ops/s (MB/s for bulk) and
//! the ratio of each module to the first. The raw crypto library (aws-lc-rs) is measured too.
//!
//! ```text
//! ferrohsm-bench --module softhsm=/usr/lib/softhsm/libsofthsm2.so \
//!     --module ferrohsm=target/release/libferrohsm_pkcs11.so [--quick] [--json FILE]
//! ```
//!
//! Each module gets a fresh token in a temporary directory and runs in a worker process of its
//! own (this binary, `--worker`), whose environment names that directory (`SOFTHSM2_CONF`,
//! `FERROHSM_HOME`). Nothing here asserts a timing: `--quick` only proves every workload runs.

// A command-line report: printing is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cluster;
mod noisy;
mod worker;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use worker::{ANSWER, BESIDE_LOGINS_WORKLOAD, INIT_WORKLOAD, LOGIN_WORKLOAD, WORKLOADS};

const USAGE: &str = "usage: ferrohsm-bench --module NAME=PATH [--module NAME=PATH]... \
(a NAME containing \"cluster\" runs FerroHSM's module through a node of a three-member etcd \
cluster, one containing \"tls\" through `ferrohsm serve --listen` over TLS, one containing \
\"daemon\" through `ferrohsm serve --socket`, one containing \"audit\" embedded with an audited slot, \"sync\" too: each record on disk before the call returns) \
[--quick] [--json FILE] [--millis MS] [--reps N] [--objects N] [--filter TEXT,TEXT...]";

struct Args {
    modules: Vec<(String, PathBuf)>,
    json: Option<PathBuf>,
    millis: u64,
    reps: usize,
    objects: usize,
    filter: Option<String>,
    quick: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        modules: Vec::new(),
        json: None,
        millis: 500,
        reps: 5,
        objects: 10_000,
        filter: None,
        quick: false,
    };
    let (mut millis, mut reps, mut objects) = (None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--module" => {
                let v = value(&arg)?;
                let (name, path) = match v.split_once('=') {
                    Some((n, p)) => (n.to_owned(), PathBuf::from(p)),
                    None => {
                        let p = PathBuf::from(&v);
                        let n = p
                            .file_stem()
                            .map(|s| s.to_string_lossy().trim_start_matches("lib").to_owned())
                            .unwrap_or_else(|| v.clone());
                        (n, p)
                    }
                };
                a.modules.push((name, path));
            }
            "--json" => a.json = Some(PathBuf::from(value(&arg)?)),
            "--millis" => millis = Some(value(&arg)?.parse().map_err(|e| format!("{e}"))?),
            "--reps" => reps = Some(value(&arg)?.parse().map_err(|e| format!("{e}"))?),
            "--objects" => objects = Some(value(&arg)?.parse().map_err(|e| format!("{e}"))?),
            "--filter" => a.filter = Some(value(&arg)?),
            "--quick" => a.quick = true,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if a.quick {
        (a.millis, a.reps, a.objects) = (50, 1, 200);
    }
    a.millis = millis.unwrap_or(a.millis);
    a.reps = reps.unwrap_or(a.reps).max(1);
    a.objects = objects.unwrap_or(a.objects);
    if a.modules.is_empty() {
        return Err(format!("no module given\n{USAGE}"));
    }
    Ok(a)
}

/// One module under test: its temporary home and its worker.
struct Module {
    name: String,
    path: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
    setup_secs: Option<f64>,
    dead: Option<String>,
}

/// Writes the module's configuration into its temporary directory and sets its environment.
fn environment(name: &str, path: &Path, dir: &Path, cmd: &mut Command) -> Result<(), String> {
    let what = format!("{name} {}", path.display()).to_lowercase();
    if what.contains("softhsm") {
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).map_err(|e| e.to_string())?;
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .map_err(|e| e.to_string())?;
        cmd.env("SOFTHSM2_CONF", conf);
    } else if name.to_lowercase().contains("cluster") {
        let mut started = Vec::new();
        let r = cluster::start(path, dir, &mut started);
        if let Ok(mut d) = DAEMONS.lock() {
            d.extend(started);
        }
        r?;
        cmd.env("FERROHSM_CONF", dir.join("ferrohsm.toml"))
            .env_remove("FERROHSM_HOME")
            .env_remove("FERROHSM_LOG");
    } else if name.to_lowercase().contains("audit") {
        // FerroHSM embedded, its slot audited: every call recorded in a chained log, durable
        // within the default window (10 ms), or before each call returns for a NAME that
        // contains "sync" (`[audit] sync_ms = 0`).
        let conf = dir.join("ferrohsm.toml");
        let sync_ms = if name.to_lowercase().contains("sync") {
            0
        } else {
            10
        };
        std::fs::write(
            &conf,
            format!(
                "[audit]\nsync_ms = {sync_ms}\n\n[[slot]]\nkind = \"sim\"\nstore = \"{}\"\naudit_log = \"{}\"\n",
                dir.join("token").display(),
                dir.join("audit.log").display()
            ),
        )
        .map_err(|e| e.to_string())?;
        cmd.env("FERROHSM_CONF", conf)
            .env_remove("FERROHSM_HOME")
            .env_remove("FERROHSM_LOG");
    } else if name.to_lowercase().contains("tls") {
        tls_daemon(path, dir)?;
        cmd.env("FERROHSM_CONF", dir.join("ferrohsm.toml"))
            .env_remove("FERROHSM_HOME")
            .env_remove("FERROHSM_LOG");
    } else if what.contains("daemon") {
        // FerroHSM through `ferrohsm serve` (the binary beside the module): a `kind = "remote"`
        // slot, so the figures show the daemon's round trip next to the embedded path.
        let socket = dir.join("daemon.sock");
        if !socket.exists() {
            let serve = path.with_file_name("ferrohsm");
            let child = Command::new(&serve)
                .arg("serve")
                .arg("--socket")
                .arg(&socket)
                .arg("--home")
                .arg(dir.join("home"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start {}: {e}", serve.display()))?;
            if let Ok(mut d) = DAEMONS.lock() {
                d.push(child);
            }
            let start = Instant::now();
            while !socket.exists() && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let conf = dir.join("ferrohsm.toml");
            std::fs::write(
                &conf,
                format!(
                    "[[slot]]\nkind = \"remote\"\nsocket = \"{}\"\n",
                    socket.display()
                ),
            )
            .map_err(|e| e.to_string())?;
        }
        cmd.env("FERROHSM_CONF", dir.join("ferrohsm.toml"))
            .env_remove("FERROHSM_HOME")
            .env_remove("FERROHSM_LOG");
    } else if what.contains("ferrohsm") {
        cmd.env("FERROHSM_HOME", dir)
            .env_remove("FERROHSM_CONF")
            .env_remove("FERROHSM_LOG");
    }
    cmd.current_dir(dir);
    Ok(())
}

/// FerroHSM over the network: certificates made by `ferrohsm tls` (the binary beside the
/// module), `ferrohsm serve --listen 127.0.0.1:0` on `dir/home`, and a `kind = "remote"` slot
/// with the port the daemon reports. Once per module directory.
fn tls_daemon(path: &Path, dir: &Path) -> Result<(), String> {
    let conf = dir.join("ferrohsm.toml");
    if conf.exists() {
        return Ok(());
    }
    let cli = path.with_file_name("ferrohsm");
    let pki = dir.join("pki");
    let p = pki.display().to_string();
    for args in [
        vec!["tls", "init-ca", "--out", &p],
        vec![
            "tls",
            "issue",
            "--ca",
            &p,
            "--name",
            "daemon",
            "--server",
            "127.0.0.1",
            "--out",
            &p,
        ],
        vec!["tls", "issue", "--ca", &p, "--name", "bench", "--out", &p],
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
    let log = dir.join("daemon.log");
    let err = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let child = Command::new(&cli)
        .args(["serve", "--listen", "127.0.0.1:0", "--home"])
        .arg(dir.join("home"))
        .arg("--tls-cert")
        .arg(pki.join("daemon.pem"))
        .arg("--tls-key")
        .arg(pki.join("daemon.key"))
        .arg("--client-ca")
        .arg(pki.join("ca.pem"))
        .env_remove("FERROHSM_CONF")
        .env_remove("FERROHSM_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", cli.display()))?;
    if let Ok(mut d) = DAEMONS.lock() {
        d.push(child);
    }
    let start = Instant::now();
    let port = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(port) = text
            .lines()
            .find_map(|l| l.strip_prefix("ferrohsm: serving "))
            .and_then(|l| l.split(" on 127.0.0.1:").nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|p| p.parse::<u16>().ok())
        {
            break port;
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err(format!("the TLS daemon never listened: {text}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::fs::write(
        &conf,
        format!(
            "[[slot]]\nkind = \"remote\"\nendpoints = [\"tls://127.0.0.1:{port}\"]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.join("ca.pem").display(),
            pki.join("bench.pem").display(),
            pki.join("bench.key").display(),
        ),
    )
    .map_err(|e| e.to_string())
}

impl Module {
    fn start(name: &str, path: &Path, objects: usize) -> Result<Self, String> {
        let path = std::fs::canonicalize(path)
            .map_err(|e| format!("{name}: no such module {}: {e}", path.display()))?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(exe);
        cmd.arg("--worker")
            .arg(&path)
            .arg(objects.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        environment(name, &path, dir.path(), &mut cmd)?;
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start worker: {e}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().map(BufReader::new);
        let mut m = Self {
            name: name.to_owned(),
            path,
            dir,
            child: Some(child),
            stdin,
            stdout,
            setup_secs: None,
            dead: None,
        };
        // The first answer: the data objects are made (or the worker gave up).
        match m.answer()? {
            a if a.starts_with("created ") => {
                m.setup_secs = a.split(' ').nth(2).and_then(|s| s.parse().ok());
                Ok(m)
            }
            a => Err(format!("{name}: {a}")),
        }
    }

    /// The next answer line of the worker.
    fn answer(&mut self) -> Result<String, String> {
        let out = self.stdout.as_mut().ok_or("worker gone")?;
        let mut line = String::new();
        loop {
            line.clear();
            let n = out.read_line(&mut line).map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("worker exited".to_owned());
            }
            if let Some(a) = line.trim_end().strip_prefix(ANSWER) {
                return Ok(a.to_owned());
            }
        }
    }

    /// One measurement: (operations, seconds), or why not.
    fn measure(&mut self, workload: &str, millis: u64) -> Result<(u64, f64), String> {
        if let Some(d) = &self.dead {
            return Err(d.clone());
        }
        if [INIT_WORKLOAD, LOGIN_WORKLOAD, BESIDE_LOGINS_WORKLOAD].contains(&workload) {
            return self.measure_aside(workload, millis);
        }
        if let Some(n) = worker::processes(workload) {
            return self.measure_processes(workload, n, millis);
        }
        let sent = self
            .stdin
            .as_mut()
            .ok_or("worker gone".to_owned())
            .and_then(|i| {
                writeln!(i, "run {millis} {workload}")
                    .and_then(|()| i.flush())
                    .map_err(|e| e.to_string())
            });
        let a = match sent.and_then(|()| self.answer()) {
            Ok(a) => a,
            Err(e) => {
                let why = format!("worker died: {e}");
                self.dead = Some(why.clone());
                return Err(why);
            }
        };
        parse_ok(&a)
    }

    /// `C_Initialize` + `C_Finalize` (the worker keeps the module initialized) or login +
    /// logout (per process) in a process of their own.
    fn measure_aside(&mut self, workload: &str, millis: u64) -> Result<(u64, f64), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(exe);
        cmd.arg("--side-worker")
            .arg(workload)
            .arg(&self.path)
            .arg(millis.to_string())
            .stderr(Stdio::inherit());
        environment(&self.name, &self.path, self.dir.path(), &mut cmd)?;
        let out = cmd.output().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout);
        let a = text
            .lines()
            .find_map(|l| l.strip_prefix(ANSWER))
            .ok_or_else(|| format!("side worker: exit {:?}", out.status.code()))?;
        parse_ok(a)
    }

    /// A "…, N processes" workload: N side workers, each an application of its own; they
    /// prepare (log in, make a key), then all start together; the rate is their operations
    /// over the longest run.
    fn measure_processes(
        &mut self,
        workload: &str,
        n: usize,
        millis: u64,
    ) -> Result<(u64, f64), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut workers = Vec::new();
        for _ in 0..n {
            let mut cmd = Command::new(&exe);
            cmd.arg("--side-worker")
                .arg(workload)
                .arg(&self.path)
                .arg(millis.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            environment(&self.name, &self.path, self.dir.path(), &mut cmd)?;
            let mut child = cmd.spawn().map_err(|e| e.to_string())?;
            let stdout = child.stdout.take().map(BufReader::new);
            workers.push((child, stdout));
        }
        let answer = |out: &mut Option<BufReader<ChildStdout>>| -> Result<String, String> {
            let out = out.as_mut().ok_or("side worker gone")?;
            let mut line = String::new();
            loop {
                line.clear();
                if out.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                    return Err("side worker exited".to_owned());
                }
                if let Some(a) = line.trim_end().strip_prefix(ANSWER) {
                    return Ok(a.to_owned());
                }
            }
        };
        let mut result = Ok(());
        for (_, out) in &mut workers {
            match answer(out) {
                Ok(a) if a == "ready" => {}
                Ok(a) => result = Err(a.strip_prefix("na ").unwrap_or(&a).to_owned()),
                Err(e) => result = Err(e),
            }
        }
        for (child, _) in &mut workers {
            if let Some(i) = child.stdin.as_mut() {
                let _ = writeln!(i, "go").and_then(|()| i.flush());
            }
        }
        let (mut ops, mut secs) = (0, 0.0f64);
        for (child, out) in &mut workers {
            if result.is_ok() {
                match answer(out).and_then(|a| parse_ok(&a)) {
                    Ok((o, s)) => {
                        ops += o;
                        secs = secs.max(s);
                    }
                    Err(e) => result = Err(e),
                }
            }
            drop(child.stdin.take());
            let _ = child.wait();
        }
        result.map(|()| (ops, secs))
    }

    fn stop(&mut self) {
        if let Some(mut i) = self.stdin.take() {
            let _ = writeln!(i, "quit");
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

fn parse_ok(a: &str) -> Result<(u64, f64), String> {
    let mut p = a.split(' ');
    match (p.next(), p.next(), p.next()) {
        (Some("ok"), Some(ops), Some(secs)) => Ok((
            ops.parse().map_err(|e| format!("{e}"))?,
            secs.parse().map_err(|e| format!("{e}"))?,
        )),
        _ => Err(a.strip_prefix("na ").unwrap_or(a).to_owned()),
    }
}

/// The raw library's workloads, measured in this process.
const RAW: &[&str] = &[
    "raw aws-lc-rs RSA-2048 sign PKCS#1 SHA-256",
    "raw aws-lc-rs ECDSA P-256 sign",
];

/// Which module row each raw row is compared with.
const RAW_VS: &[&str] = &["RSA-2048 sign PKCS#1 SHA-256", "ECDSA P-256 sign"];

struct Raw {
    rsa: aws_lc_rs::rsa::KeyPair,
    ec: aws_lc_rs::signature::EcdsaKeyPair,
}

impl Raw {
    fn new() -> Result<Self, String> {
        Ok(Self {
            rsa: aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|e| e.to_string())?,
            ec: aws_lc_rs::signature::EcdsaKeyPair::generate(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            )
            .map_err(|e| e.to_string())?,
        })
    }

    fn measure(&self, which: usize, millis: u64) -> Result<(u64, f64), String> {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let msg = [0x42u8; 64];
        let mut sig = vec![0u8; self.rsa.public_modulus_len()];
        let limit = Duration::from_millis(millis);
        let start = Instant::now();
        let mut ops = 0u64;
        while ops == 0 || start.elapsed() < limit {
            let r = if which == 0 {
                self.rsa.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &rng,
                    &msg,
                    &mut sig,
                )
            } else {
                self.ec.sign(&rng, &msg).map(drop)
            };
            r.map_err(|e| e.to_string())?;
            ops += 1;
        }
        Ok((ops, start.elapsed().as_secs_f64()))
    }
}

/// A row's samples per module (ops/s or MB/s), or why the module cannot run it.
struct Row {
    name: String,
    bytes: usize,
    samples: Vec<Result<Vec<f64>, String>>,
}

impl Row {
    fn median(&self, m: usize) -> Option<f64> {
        median(self.samples.get(m)?.as_ref().ok()?.clone())
    }
}

/// The median of `v` (none if empty).
fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v.get(mid).copied()
    } else {
        Some((v.get(mid - 1)? + v.get(mid)?) / 2.0)
    }
}

fn rate(bytes: usize, (ops, secs): (u64, f64)) -> f64 {
    let per_sec = ops as f64 / secs.max(1e-9);
    if bytes == 0 {
        per_sec
    } else {
        per_sec * bytes as f64 / 1e6
    }
}

fn fmt_rate(v: Option<f64>) -> String {
    match v {
        None => "n/a".to_owned(),
        Some(v) if v >= 100.0 => {
            // Thousands separators for legibility.
            let s = format!("{v:.0}");
            let mut out = String::new();
            for (i, c) in s.chars().enumerate() {
                if i > 0 && (s.len() - i) % 3 == 0 {
                    out.push(',');
                }
                out.push(c);
            }
            out
        }
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn fmt_ratio(a: Option<f64>, base: Option<f64>) -> String {
    match (a, base) {
        (Some(a), Some(b)) if b > 0.0 => {
            let r = a / b;
            if r >= 100.0 {
                format!("{r:.0}x")
            } else {
                format!("{r:.2}x")
            }
        }
        _ => "n/a".to_owned(),
    }
}

/// The daemons started for `*daemon*` modules, stopped when the run ends.
static DAEMONS: std::sync::Mutex<Vec<Child>> = std::sync::Mutex::new(Vec::new());

fn main() -> ExitCode {
    let code = real_main();
    if let Ok(mut daemons) = DAEMONS.lock() {
        for d in daemons.iter_mut() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
    code
}

fn real_main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    match argv.get(1).map(String::as_str) {
        Some("--worker") => return worker::worker_main(argv.get(2..).unwrap_or_default()),
        Some("--noisy-child") => {
            return match noisy::child_main(argv.get(2..).unwrap_or_default()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some("--noisy-neighbour") => {
            let module = argv
                .iter()
                .position(|a| a == "--module")
                .and_then(|i| argv.get(i + 1));
            let secs = argv
                .iter()
                .position(|a| a == "--secs")
                .and_then(|i| argv.get(i + 1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(5.0);
            let Some(module) = module else {
                eprintln!("usage: ferrohsm-bench --noisy-neighbour --module PATH [--secs N]");
                return ExitCode::from(2);
            };
            return match noisy::main(Path::new(module), secs) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("noisy neighbour: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        Some("--side-worker") => {
            return worker::side_worker_main(argv.get(2..).unwrap_or_default());
        }
        _ => {}
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    let mut modules = Vec::new();
    for (name, path) in &args.modules {
        eprintln!(
            "{name}: initializing a fresh token and creating {} token objects...",
            args.objects
        );
        match Module::start(name, path, args.objects) {
            Ok(m) => {
                if let Some(s) = m.setup_secs {
                    eprintln!(
                        "{name}: {} objects created in {s:.1} s ({:.0}/s)",
                        args.objects,
                        args.objects as f64 / s.max(1e-9)
                    );
                }
                modules.push(m);
            }
            Err(e) => {
                eprintln!("{e}");
                for m in &mut modules {
                    m.stop();
                }
                return ExitCode::FAILURE;
            }
        }
    }
    let wanted = |n: &str| {
        args.filter
            .as_ref()
            .is_none_or(|f| f.split(',').any(|f| n.contains(f)))
    };
    let mut rows: Vec<Row> = WORKLOADS
        .iter()
        .filter(|w| wanted(w.name))
        .map(|w| Row {
            name: w.name.replace(" N ", &format!(" {} ", args.objects)),
            bytes: w.bytes,
            samples: modules.iter().map(|_| Ok(Vec::new())).collect(),
        })
        .collect();
    let workloads: Vec<&worker::Workload> = WORKLOADS.iter().filter(|w| wanted(w.name)).collect();
    let raw = match Raw::new() {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("raw library: {e}");
            None
        }
    };
    let mut raw_samples: Vec<Vec<f64>> = RAW.iter().map(|_| Vec::new()).collect();
    for rep in 0..args.reps {
        eprintln!("repetition {} of {}", rep + 1, args.reps);
        for (w, row) in workloads.iter().zip(rows.iter_mut()) {
            for (m, samples) in modules.iter_mut().zip(row.samples.iter_mut()) {
                let Ok(v) = samples else { continue };
                match m.measure(w.name, args.millis) {
                    Ok(r) => v.push(rate(w.bytes, r)),
                    Err(e) => {
                        eprintln!("{}: {}: n/a: {e}", m.name, w.name);
                        *samples = Err(e);
                    }
                }
            }
            // The raw library right after the modules' run of the same workload, so that
            // both see the same moment of the machine (a later slot would compare a quiet
            // moment with a busy one).
            let Some(raw) = &raw else { continue };
            for (i, (v, vs)) in raw_samples.iter_mut().zip(RAW_VS).enumerate() {
                if *vs != w.name {
                    continue;
                }
                match raw.measure(i, args.millis) {
                    Ok(r) => v.push(rate(0, r)),
                    Err(e) => eprintln!("raw library: {e}"),
                }
            }
        }
    }
    for m in &mut modules {
        m.stop();
    }
    let raw_rows: Vec<Row> = RAW
        .iter()
        .zip(raw_samples)
        .map(|(n, s)| Row {
            name: (*n).to_owned(),
            bytes: 0,
            samples: vec![Ok(s)],
        })
        .collect();
    print_table(&args, &modules, &rows, &raw_rows);
    eprintln!("total time {:.1} s", started.elapsed().as_secs_f64());
    if let Some(path) = &args.json {
        let json = to_json(&args, &modules, &rows, &raw_rows);
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}

fn print_table(args: &Args, modules: &[Module], rows: &[Row], raw: &[Row]) {
    let first = modules.first().map(|m| m.name.clone()).unwrap_or_default();
    let mut header = vec!["workload (ops/s; MB/s where marked)".to_owned()];
    header.extend(modules.iter().map(|m| m.name.clone()));
    header.extend(
        modules
            .iter()
            .skip(1)
            .map(|m| format!("{}/{first}", m.name)),
    );
    let mut table = vec![header];
    for r in rows {
        let mut line = vec![r.name.clone()];
        line.extend((0..modules.len()).map(|m| fmt_rate(r.median(m))));
        line.extend((1..modules.len()).map(|m| fmt_ratio(r.median(m), r.median(0))));
        table.push(line);
    }
    println!(
        "\n{} ms per measurement, {} repetitions interleaved, medians; {} token objects",
        args.millis, args.reps, args.objects
    );
    print_markdown(&table);
    // The PKCS#11 path against the library itself.
    let mut header = vec![
        "PKCS#11 path vs raw library (median of back-to-back ratios)".to_owned(),
        "raw aws-lc-rs".to_owned(),
    ];
    header.extend(modules.iter().map(|m| format!("{} / raw", m.name)));
    let mut table = vec![header];
    for (r, vs) in raw.iter().zip(RAW_VS) {
        let mut line = vec![vs.to_string(), fmt_rate(r.median(0))];
        let via = rows.iter().find(|x| x.name == *vs);
        line.extend((0..modules.len()).map(|m| {
            let samples = via.and_then(|x| x.samples.get(m)?.as_ref().ok());
            match (samples, r.samples.first().and_then(|s| s.as_ref().ok())) {
                (Some(v), Some(raw)) => fmt_percent(paired_median(v, raw)),
                _ => "n/a".to_owned(),
            }
        }));
        table.push(line);
    }
    println!();
    print_markdown(&table);
    for m in modules {
        if let Some(s) = m.setup_secs {
            println!(
                "{}: creating {} token objects took {s:.1} s",
                m.name, args.objects
            );
        }
    }
}

/// The median of the per-repetition ratios `v[i] / raw[i]` (each pair measured back to back).
fn paired_median(v: &[f64], raw: &[f64]) -> Option<f64> {
    if v.len() != raw.len() {
        return None;
    }
    median(
        v.iter()
            .zip(raw)
            .filter(|(_, b)| **b > 0.0)
            .map(|(a, b)| a / b)
            .collect(),
    )
}

fn fmt_percent(r: Option<f64>) -> String {
    r.map_or_else(|| "n/a".to_owned(), |r| format!("{:.0}%", 100.0 * r))
}

fn print_markdown(table: &[Vec<String>]) {
    let cols = table.first().map_or(0, Vec::len);
    let width: Vec<usize> = (0..cols)
        .map(|c| {
            table
                .iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (i, r) in table.iter().enumerate() {
        let cells: Vec<String> = r
            .iter()
            .zip(&width)
            .enumerate()
            .map(|(c, (s, w))| {
                if c == 0 {
                    format!("{s:<w$}")
                } else {
                    format!("{s:>w$}")
                }
            })
            .collect();
        println!("| {} |", cells.join(" | "));
        if i == 0 {
            let rule: Vec<String> = width
                .iter()
                .enumerate()
                .map(|(c, w)| {
                    if c == 0 {
                        "-".repeat(*w)
                    } else {
                        format!("{}:", "-".repeat(w.saturating_sub(1)))
                    }
                })
                .collect();
            println!("| {} |", rule.join(" | "));
        }
    }
}

fn to_json(args: &Args, modules: &[Module], rows: &[Row], raw: &[Row]) -> String {
    use serde_json::{Value, json};
    let row = |r: &Row, names: &[String]| -> Value {
        let mut per = serde_json::Map::new();
        for (i, n) in names.iter().enumerate() {
            let v = match r.samples.get(i) {
                Some(Ok(s)) => json!({ "median": r.median(i), "samples": s }),
                Some(Err(e)) => json!({ "na": e }),
                None => Value::Null,
            };
            per.insert(n.clone(), v);
        }
        json!({
            "workload": r.name,
            "unit": if r.bytes == 0 { "ops/s" } else { "MB/s" },
            "modules": per,
        })
    };
    let names: Vec<String> = modules.iter().map(|m| m.name.clone()).collect();
    let raw_name = vec!["aws-lc-rs".to_owned()];
    let doc = json!({
        "millis_per_measurement": args.millis,
        "repetitions": args.reps,
        "token_objects": args.objects,
        "modules": modules.iter().map(|m| json!({
            "name": m.name,
            "path": m.path.display().to_string(),
            "object_creation_seconds": m.setup_secs,
        })).collect::<Vec<_>>(),
        "rows": rows.iter().map(|r| row(r, &names)).collect::<Vec<_>>(),
        "raw": raw.iter().map(|r| row(r, &raw_name)).collect::<Vec<_>>(),
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}
