//! `ferrohsm-conformance`: drives `pkcs11-tool` (and a PKCS#11 client of our own, for what the
//! tool cannot express) through scenarios against any list of PKCS#11 modules, side by side, and
//! checks a golden table of return codes.
//!
//! ```text
//! ferrohsm-conformance --module target/release/libferrohsm_pkcs11.so \
//!     --reference /usr/lib/softhsm/libsofthsm2.so [--json report.json] [--filter rsa]
//! ```
//!
//! Every scenario runs on a fresh token in a temporary directory per module. The first module is
//! the one under test: the run fails if any of its scenarios fails. Known differences of the
//! other modules are data (`known-differences.toml`), so that an unexpected result on either
//! side shows.

// A command-line report: printing is its job.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod client;
mod ctx;
mod golden;
mod known;
mod rehearse;
mod report;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;

use bridge::config::Personality;
use ctx::{Kind, Target};
use report::{Report, Row};

const USAGE: &str = "usage: ferrohsm-conformance --module PATH [--reference PATH]... [--json FILE] \
[--bridge REAL-MODULE]... [--daemon] [--tls] [--personality NAME[,NAME...]|all]... [--filter TEXT] \
[--list] [--known FILE] [--no-golden]";

struct Args {
    modules: Vec<PathBuf>,
    bridges: Vec<PathBuf>,
    daemon: bool,
    tls: bool,
    personalities: Vec<Personality>,
    json: Option<PathBuf>,
    filter: Option<String>,
    list: bool,
    known: PathBuf,
    golden: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        modules: Vec::new(),
        bridges: Vec::new(),
        daemon: false,
        tls: false,
        personalities: Vec::new(),
        json: None,
        filter: None,
        list: false,
        known: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("known-differences.toml"),
        golden: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--module" | "--reference" => a.modules.push(PathBuf::from(value(&arg)?)),
            "--bridge" => a.bridges.push(PathBuf::from(value(&arg)?)),
            "--json" => a.json = Some(PathBuf::from(value(&arg)?)),
            "--filter" => a.filter = Some(value(&arg)?),
            "--known" => a.known = PathBuf::from(value(&arg)?),
            "--list" => a.list = true,
            "--daemon" => a.daemon = true,
            "--tls" => a.tls = true,
            "--personality" => {
                for name in value(&arg)?.split(',') {
                    match (name, Personality::from_name(name)) {
                        ("all", _) => a.personalities.extend(
                            Personality::ALL
                                .iter()
                                .filter(|p| **p != Personality::Default),
                        ),
                        (_, Some(p)) => a.personalities.push(p),
                        (_, None) => {
                            let known: Vec<&str> =
                                Personality::ALL.iter().map(|p| p.name()).collect();
                            return Err(format!(
                                "no personality {name:?}: one of {} or all",
                                known.join(", ")
                            ));
                        }
                    }
                }
            }
            "--no-golden" => a.golden = false,
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if a.modules.is_empty() && !a.list {
        return Err(format!("no module given\n{USAGE}"));
    }
    Ok(a)
}

fn main() -> ExitCode {
    // A worker: one client-side check in its own process (so that a module that crashes takes
    // down only that check, and so that each module gets its own environment).
    if std::env::args().nth(1).as_deref() == Some("--worker") {
        return client::worker_main();
    }
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let all = scenarios::all();
    let rules = golden::rules();
    let wanted = |name: &str| {
        args.filter
            .as_ref()
            .is_none_or(|f| name.contains(f.as_str()))
    };
    if args.list {
        for s in all.iter().filter(|s| wanted(&s.name)) {
            println!("{}", s.name);
        }
        for r in rules.iter().filter(|r| wanted(r.name)) {
            println!("golden/{}", r.name);
        }
        return ExitCode::SUCCESS;
    }
    let known = match known::Known::load(&args.known) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut targets: Vec<Target> = args.modules.iter().map(|m| Target::new(m)).collect();
    // `--bridge REAL`: the module under test fronting REAL through a `kind = "module"` slot.
    if let Some(ours) = args.modules.first() {
        for real in &args.bridges {
            targets.push(Target::bridged(ours, real));
        }
        // `--daemon`: the module under test with a `kind = "remote"` slot, `ferrohsm serve`
        // behind it.
        if args.daemon {
            targets.push(Target::daemon(ours));
        }
    }
    // `--tls`: the same daemon over the network (TLS 1.3, mutual authentication), its
    // certificates made once for the run by `ferrohsm tls`.
    let pki = match tempfile::Builder::new()
        .prefix("conformance-pki-")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot make a temporary directory: {e}");
            return ExitCode::from(2);
        }
    };
    if let (Some(ours), true) = (args.modules.first(), args.tls) {
        match Target::daemon_tls(ours, &pki.path().join("pki")) {
            Ok(t) => targets.push(t),
            Err(e) => {
                eprintln!("--tls: {e}");
                return ExitCode::from(2);
            }
        }
    }
    // `--personality NAME`: each FerroHSM column again under NAME (`rehearse.rs`).
    let ours: Vec<Target> = targets
        .iter()
        .filter(|t| matches!(t.kind, Kind::Ferro | Kind::Daemon | Kind::DaemonTls))
        .cloned()
        .collect();
    for p in &args.personalities {
        targets.extend(ours.iter().map(|t| t.under(*p)));
    }
    for t in &targets {
        if !t.module.exists() {
            eprintln!("{}: no such module: {}", t.name, t.module.display());
            return ExitCode::from(2);
        }
    }
    let mut report = Report::new(&targets);
    for s in all.iter().filter(|s| wanted(&s.name)) {
        let results = rehearse::row(&targets, &|t| ctx::run_scenario(t, s));
        let row = Row::new(&s.name, results, &targets, &known);
        row.print_live();
        report.rows.push(row);
    }
    if args.golden {
        for r in rules.iter().filter(|r| wanted(r.name)) {
            let name = format!("golden/{}", r.name);
            let results = rehearse::row(&targets, &|t| golden::check(t, r));
            let row = Row::new(&name, results, &targets, &known);
            row.print_live();
            report.golden.push(row);
        }
    }
    report.print_summary();
    if let Some(path) = &args.json
        && let Err(e) = std::fs::write(path, report.to_json())
    {
        eprintln!("cannot write {}: {e}", path.display());
        return ExitCode::from(2);
    }
    let differences = report.daemon_differences();
    if differences > 0 {
        println!("{differences} rows where a daemon differs from the embedded firmware");
    }
    let personality_failures = report.personality_failures();
    if personality_failures > 0 {
        println!("{personality_failures} failures under a personality that no rule of it explains");
    }
    if report.primary_failures() == 0 && differences == 0 && personality_failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
