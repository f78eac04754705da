//! `ferrohsm-bench --noisy-neighbour --module PATH [--secs N]`: two tenants on one daemon over
//! TLS (certificates from `ferrohsm tls`, tenants from `ferrohsm tenant`). Tenant B signs at a
//! steady pace (one ECDSA P-256 signature every 5 ms) and records each latency; meanwhile
//! tenant A signs as fast as 8 processes can, first with no limits, then with its
//! `--max-concurrent` set to 1. Reports B's median and 99th percentile in each phase next to
//! B alone, and A's throughput. Each tenant's client is its own process, as two customers'
//! applications are. Nothing is asserted: these are measurements.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

const PIN: &str = "bench-pin-1";
const SO: &str = "bench-so-12";

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

/// A child of this binary in `role`, as the identity whose configuration is `conf`.
fn child(role: &str, conf: &Path, module: &Path, secs: f64) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    Command::new(exe)
        .args(["--noisy-child", role, &secs.to_string()])
        .env("FERROHSM_CONF", conf)
        .env("NOISY_MODULE", module)
        .env_remove("FERROHSM_HOME")
        .env_remove("FERROHSM_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| e.to_string())
}

fn finish(c: Child) -> Result<String, String> {
    let out = c.wait_with_output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!("a client failed: {text}"));
    }
    Ok(text.trim().to_owned())
}

/// The parent: sets up, runs the three phases, prints the table.
pub(crate) fn main(module: &Path, secs: f64) -> Result<(), String> {
    let cli = module.with_file_name("ferrohsm");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let d = dir.path();
    let pki = d.join("pki");
    let f = |args: &[&str]| run(Command::new(&cli).args(args).env_remove("FERROHSM_CONF"));
    f(&["tls", "init-ca", "--out", s(&pki)])?;
    f(&[
        "tls",
        "issue",
        "--ca",
        s(&pki),
        "--name",
        "hsm",
        "--server",
        "127.0.0.1",
        "--out",
        s(&pki),
    ])?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let home = d.join("home");
    std::fs::create_dir(&home).map_err(|e| e.to_string())?;
    let mut confs: Vec<PathBuf> = Vec::new();
    for who in ["a", "b"] {
        f(&[
            "tls",
            "issue",
            "--ca",
            s(&pki),
            "--name",
            who,
            "--out",
            s(&pki),
        ])?;
        let tenant = who.to_uppercase();
        f(&["tenant", "add", "--home", s(&home), "--name", &tenant])?;
        for role in ["crypto-officer", "crypto-user"] {
            f(&[
                "tenant",
                "grant",
                "--home",
                s(&home),
                "--name",
                &tenant,
                "--identity",
                who,
                "--role",
                role,
            ])?;
        }
        let conf = d.join(format!("{who}.toml"));
        std::fs::write(
            &conf,
            format!(
                "[[slot]]\nkind = \"remote\"\nendpoints = [\"tls://127.0.0.1:{port}\"]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
                pki.join("ca.pem"),
                pki.join(format!("{who}.pem")),
                pki.join(format!("{who}.key"))
            ),
        )
        .map_err(|e| e.to_string())?;
        confs.push(conf);
    }
    let daemon_conf = d.join("daemon.toml");
    std::fs::write(&daemon_conf, "[firmware]\npin_kdf_iterations = 1000\n")
        .map_err(|e| e.to_string())?;
    let mut daemon = Command::new(&cli)
        .args(["--conf", s(&daemon_conf), "serve", "--home", s(&home)])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--tls-cert", s(&pki.join("hsm.pem"))])
        .args(["--tls-key", s(&pki.join("hsm.key"))])
        .args(["--client-ca", s(&pki.join("ca.pem"))])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let result = (|| {
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if start.elapsed() > Duration::from_secs(10) {
                return Err("the daemon does not listen".to_owned());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for conf in &confs {
            finish(child("setup", conf, module, 0.0)?)?;
        }
        let [a, b] = confs.as_slice() else {
            return Err("two tenants".to_owned());
        };
        let alone = finish(child("steady", b, module, secs)?)?;
        let mut rows = vec![("B alone".to_owned(), alone, String::new())];
        for (phase, limit) in [
            ("A floods, no limits", None),
            // One limit per phase (0 lifts the other).
            (
                "A floods, A max_concurrent 1",
                Some(["--max-concurrent", "1", "--ops-per-sec", "0"]),
            ),
            (
                "A floods, A ops_per_sec 400",
                Some(["--max-concurrent", "0", "--ops-per-sec", "400"]),
            ),
        ] {
            if let Some(flags) = limit {
                let home = s(&home);
                let mut args = vec!["tenant", "set", "--home", home, "--name", "A"];
                args.extend(flags);
                f(&args)?;
            }
            // Eight processes: a flood is several applications (one application's threads
            // share its pool of connections, one application on the daemon's side).
            let flood = (0..8)
                .map(|_| child("flood", a, module, secs + 0.5))
                .collect::<Result<Vec<_>, _>>()?;
            std::thread::sleep(Duration::from_millis(250));
            let steady = finish(child("steady", b, module, secs)?)?;
            let mut rate = 0.0;
            for c in flood {
                rate += finish(c)?.parse::<f64>().unwrap_or(0.0);
            }
            rows.push((phase.to_owned(), steady, format!("{rate:.0}")));
        }
        println!(
            "noisy neighbour: tenant B signs ECDSA P-256 every 5 ms for {secs}s, tenant A floods with 8 processes"
        );
        println!(
            "{:<32} {:>12} {:>12} {:>8} {:>14}",
            "phase", "B median", "B p99", "B n", "A signs/s"
        );
        for (phase, steady, flood) in rows {
            let v: Vec<&str> = steady.split_whitespace().collect();
            println!(
                "{:<32} {:>10}µs {:>10}µs {:>8} {:>14}",
                phase,
                v.first().unwrap_or(&"?"),
                v.get(1).unwrap_or(&"?"),
                v.get(2).unwrap_or(&"?"),
                if flood.is_empty() {
                    "-"
                } else {
                    flood.as_str()
                }
            );
        }
        Ok(())
    })();
    let _ = daemon.kill();
    let _ = daemon.wait();
    result
}

/// A child: `setup` (token, PIN, key), `steady` (prints median and p99 in µs and the count),
/// or `flood` (prints signatures per second).
pub(crate) fn child_main(args: &[String]) -> Result<(), String> {
    let role = args.first().map_or("", String::as_str);
    let secs: f64 = args.get(1).and_then(|t| t.parse().ok()).unwrap_or(2.0);
    let module = std::env::var_os("NOISY_MODULE").ok_or("NOISY_MODULE is not set")?;
    let err = |e: cryptoki::error::Error| e.to_string();
    let p11 = Pkcs11::new(module).map_err(err)?;
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(err)?;
    let slot = *p11.get_all_slots().map_err(err)?.first().ok_or("no slot")?;
    let pin = AuthPin::new(PIN.into());
    if role == "setup" {
        p11.init_token(slot, &AuthPin::new(SO.into()), "bench")
            .map_err(err)?;
        let so = p11.open_rw_session(slot).map_err(err)?;
        so.login(UserType::So, Some(&AuthPin::new(SO.into())))
            .map_err(err)?;
        so.init_pin(&pin).map_err(err)?;
        drop(so);
        let s = p11.open_rw_session(slot).map_err(err)?;
        s.login(UserType::User, Some(&pin)).map_err(err)?;
        let params = der::Encode::to_der(&der::asn1::ObjectIdentifier::new_unwrap(
            "1.2.840.10045.3.1.7",
        ))
        .map_err(|e| e.to_string())?;
        s.generate_key_pair(
            &Mechanism::EccKeyPairGen,
            &[
                Attribute::Token(true),
                Attribute::EcParams(params),
                Attribute::Verify(true),
            ],
            &[
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sign(true),
                Attribute::Label(b"k".to_vec()),
            ],
        )
        .map_err(err)?;
        println!("ok");
        return Ok(());
    }
    let session = p11.open_ro_session(slot).map_err(err)?;
    session.login(UserType::User, Some(&pin)).map_err(err)?;
    let key = *session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(b"k".to_vec()),
        ])
        .map_err(err)?
        .first()
        .ok_or("no key")?;
    let digest = [0x5au8; 32];
    let until = Instant::now() + Duration::from_secs_f64(secs);
    match role {
        "steady" => {
            // NOISY_PACE_US overrides the pace (5000 µs) for experiments.
            let pace = Duration::from_micros(
                std::env::var("NOISY_PACE_US")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(5000),
            );
            let mut lat = Vec::new();
            let mut next = Instant::now();
            while Instant::now() < until {
                let t = Instant::now();
                session.sign(&Mechanism::Ecdsa, key, &digest).map_err(err)?;
                lat.push(t.elapsed().as_micros());
                next += pace;
                if let Some(w) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(w);
                }
            }
            lat.sort_unstable();
            // Nearest rank: the p-th percent of n sorted values is at index ceil(p·n/100) − 1.
            let at = |p: usize| {
                let i = (p * lat.len()).div_ceil(100).saturating_sub(1);
                lat.get(i).copied().unwrap_or(0)
            };
            println!("{} {} {}", at(50), at(99), lat.len());
        }
        "flood" => {
            let start = Instant::now();
            let mut n = 0u64;
            while Instant::now() < until {
                if session.sign(&Mechanism::Ecdsa, key, &digest).is_ok() {
                    n += 1;
                }
            }
            println!("{:.0}", n as f64 / start.elapsed().as_secs_f64());
        }
        other => return Err(format!("unknown child role {other}")),
    }
    Ok(())
}
