//! `ferrohsm trace --out FILE [--conf CONF] -- COMMAND ARGS…`: runs an application with the
//! module recording every call into FILE (`FERROHSM_TRACE`, docs/trace.md), waits for it, says
//! how many records it wrote and what to do next, and exits with the application's code.
//!
//! The application finds the module itself (it is the user's command line, e.g. `pkcs11-tool
//! --module …/libferrohsm_pkcs11.so`); every process of it that loads the module appends to
//! the file.

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader, Seek as _, SeekFrom};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use bridge::config::{ENV_CONF, ENV_TRACE};
use bridge::output;
use bridge::trace::TRACE_OUTPUT;

/// The exit code when the command cannot be started (as a shell says "command not found").
const NOT_STARTED: u8 = 127;

/// What the run appended to the trace file.
#[derive(Debug, Default, PartialEq, Eq)]
struct Summary {
    records: usize,
    calls: usize,
    processes: usize,
    unreadable: usize,
}

/// Runs `command` recorded into `out`; the exit code is the command's (128 + the signal that
/// ended it, 127 when it could not be started).
pub(crate) fn run(
    out: &Path,
    conf: Option<&Path>,
    command: &[OsString],
) -> Result<ExitCode, String> {
    let Some((program, args)) = command.split_first() else {
        return Err("trace: no command (ferrohsm trace --out FILE -- COMMAND ARGS…)".into());
    };
    // The module checks the same way and, refused, records nothing: say so before the run.
    output::check(out, &TRACE_OUTPUT).map_err(|e| format!("trace: {e}"))?;
    // Absolute: the application may change its directory before it loads the module.
    let out = std::path::absolute(out).map_err(|e| format!("trace: {}: {e}", out.display()))?;
    let before = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let mut cmd = Command::new(program);
    cmd.args(args).env(ENV_TRACE, &out);
    if let Some(conf) = conf {
        let conf =
            std::path::absolute(conf).map_err(|e| format!("trace: {}: {e}", conf.display()))?;
        cmd.env(ENV_CONF, conf);
    }
    // Ctrl-C goes to the application (its process group is ours); this process stays to
    // report what was recorded. The application gets the default handlers back at exec.
    let interrupted = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGQUIT] {
        signal_hook::flag::register(signal, Arc::clone(&interrupted))
            .map_err(|e| format!("trace: cannot handle signals: {e}"))?;
    }
    let status = match cmd.status() {
        Ok(status) => status,
        Err(e) => {
            eprintln!(
                "ferrohsm: trace: cannot run {}: {e}",
                program.to_string_lossy()
            );
            return Ok(ExitCode::from(NOT_STARTED));
        }
    };
    report(&out, &summarize(&out, before));
    let code = match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    };
    Ok(ExitCode::from(code))
}

/// Counts the records appended to `path` after its first `before` bytes.
fn summarize(path: &Path, before: u64) -> Summary {
    let mut s = Summary::default();
    let Ok(mut f) = std::fs::File::open(path) else {
        return s;
    };
    if f.seek(SeekFrom::Start(before)).is_err() {
        return s;
    }
    for line in BufReader::new(f).lines() {
        let Ok(line) = line else {
            s.unreadable += 1;
            continue;
        };
        s.records += 1;
        let record = serde_json::from_str::<serde_json::Value>(&line);
        match record
            .as_ref()
            .map(|v| v.get("kind").and_then(|k| k.as_str()))
        {
            Ok(Some("call")) => s.calls += 1,
            Ok(Some("start")) => s.processes += 1,
            Ok(_) => {}
            Err(_) => s.unreadable += 1,
        }
    }
    s
}

/// The summary and the next step, on stderr (stdout is the application's).
fn report(out: &Path, s: &Summary) {
    let file = out.display();
    if s.records == 0 {
        eprintln!(
            "ferrohsm trace: no record was written to {file}: the command did not load the \
             module (give it {})",
            module_path().display()
        );
        return;
    }
    let plural = |n: usize, one: &str, many: &str| {
        if n == 1 {
            format!("{n} {one}")
        } else {
            format!("{n} {many}")
        }
    };
    eprintln!(
        "ferrohsm trace: {} written to {file} ({} from {})",
        plural(s.records, "record", "records"),
        plural(s.calls, "call", "calls"),
        plural(s.processes, "process", "processes"),
    );
    if s.unreadable > 0 {
        eprintln!(
            "ferrohsm trace: {} could not be read",
            plural(s.unreadable, "line", "lines")
        );
    }
    eprintln!("next: ferrohsm check --trace {file} --target aws-cloudhsm");
}

/// Where the module is: next to this program, as a build or an installation puts it.
fn module_path() -> PathBuf {
    let name = "libferrohsm_pkcs11.so";
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_lines_appended_by_the_run_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let old = "{\"v\":1,\"kind\":\"call\"}\n";
        std::fs::write(&path, old).unwrap();
        let new = "{\"v\":1,\"kind\":\"start\"}\n{\"v\":1,\"kind\":\"call\"}\n\
                   {\"v\":1,\"kind\":\"call\"}\nnot json\n{\"v\":1,\"kind\":\"end\"}\n";
        std::fs::write(&path, format!("{old}{new}")).unwrap();
        let s = summarize(&path, u64::try_from(old.len()).unwrap());
        assert_eq!(
            s,
            Summary {
                records: 5,
                calls: 2,
                processes: 1,
                unreadable: 1
            }
        );
        assert_eq!(summarize(&dir.path().join("none"), 0), Summary::default());
    }
}
