//! `--personality NAME`: every scenario and golden rule on FerroHSM under a vendor personality,
//! each judged by the rules that apply to it.
//!
//! Which rules apply is not a list kept by hand: the scenario runs twice. First under FerroHSM's
//! default personality (with the personality's PIN form), recorded by the module
//! (`FERROHSM_TRACE`, `docs/trace.md`); `ferrohsm check` replays that trace against the
//! personality and says which calls the personality refuses or answers differently. Then it runs
//! under the personality, recorded too. The cell is
//!
//! - `pass` when the scenario passes;
//! - `n/a` when it fails and the check named a difference on its way (a mechanism the vendor
//!   does not offer, a key size outside its range, an attribute default): the rule is not one
//!   the personality has;
//! - `FAIL` when it fails and nothing the personality says explains it, or when the check
//!   predicted a refusal (`CKR_*`) that the personality's run did not show: the report and the
//!   firmware disagree, which is the one thing a rehearsal must never let happen.
//!
//! The first recording is made once per row and personality, and shared by the personality's
//! columns (embedded, daemon, TLS daemon).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bridge::names;
use bridge::personality::{Profile, init_kind};
use serde_json::Value;

use crate::ctx::Target;
use crate::report::{Outcome, Status};

/// The default-personality recordings of one row, by PIN form.
#[derive(Default)]
struct Baselines {
    runs: HashMap<String, Baseline>,
}

struct Baseline {
    outcome: Outcome,
    trace: PathBuf,
    /// Holds the trace file.
    _dir: tempfile::TempDir,
}

/// A difference `ferrohsm check` predicts.
#[derive(Debug)]
struct Predicted {
    function: String,
    mechanism: Option<String>,
    code: Option<String>,
    what: String,
    pid: u64,
    seq: u64,
}

impl Predicted {
    fn describe(&self) -> String {
        format!(
            "{}{} → {}: {}",
            self.function,
            self.mechanism
                .as_deref()
                .map(|m| format!(" {m}"))
                .unwrap_or_default(),
            self.code.as_deref().unwrap_or("differs"),
            self.what
        )
    }
}

/// One row: `run` on every column. The columns under a personality run beside the others, on
/// as many threads as the machine has cores (each scenario has its own home, so they cannot
/// meet); the columns without one run one after the other on this thread, as they always have
/// (the daemon columns are compared with the embedded one, and timing-sensitive scenarios are
/// kept from competing with each other).
pub(crate) fn row(targets: &[Target], run: &(dyn Fn(&Target) -> Outcome + Sync)) -> Vec<Outcome> {
    let results: Vec<Mutex<Option<Outcome>>> = targets.iter().map(|_| Mutex::new(None)).collect();
    // One group per personality: its columns share the default-personality recording.
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let Some(p) = t.personality else { continue };
        match groups
            .iter_mut()
            .find(|g| g.first().and_then(|&j| targets.get(j)?.personality) == Some(p))
        {
            Some(g) => g.push(i),
            None => groups.push(vec![i]),
        }
    }
    let next = AtomicUsize::new(0);
    let set = |i: usize, o: Outcome| {
        if let Some(slot) = results.get(i) {
            *slot
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(o);
        }
    };
    let workers = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(groups.len());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                while let Some(group) = groups.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let mut baselines = Baselines::default();
                    for &i in group {
                        if let Some(t) = targets.get(i) {
                            set(i, judged(t, &mut baselines, run));
                        }
                    }
                }
            });
        }
        for (i, t) in targets.iter().enumerate() {
            if t.personality.is_none() {
                set(i, run(t));
            }
        }
    });
    results
        .into_iter()
        .map(|r| {
            r.into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .unwrap_or_else(|| Outcome::skip("the column did not run".to_owned()))
        })
        .collect()
}

/// Runs `run` on `target` (a FerroHSM column under a personality) and judges its outcome as
/// the module doc says.
fn judged(target: &Target, baselines: &mut Baselines, run: &dyn Fn(&Target) -> Outcome) -> Outcome {
    let Some(personality) = target.personality else {
        return run(target);
    };
    let key = personality.name().to_owned();
    let baseline = match baselines.runs.get(&key) {
        Some(b) => b,
        None => {
            let b = match record(target, None, run) {
                Ok(b) => b,
                Err(e) => return Outcome::skip(e),
            };
            baselines.runs.entry(key).or_insert(b)
        }
    };
    let ours = match record(target, Some(personality), run) {
        Ok(b) => b,
        Err(e) => return Outcome::skip(e),
    };
    if baseline.outcome.status != Status::Pass {
        // Nothing to compare with: the scenario does not pass on FerroHSM's defaults written
        // as this personality's client writes (a PIN probe whose PIN the form changes).
        return match ours.outcome.status {
            Status::Fail => Outcome::na(format!(
                "fails under FerroHSM's default personality with {}'s PIN form too: {}",
                personality.name(),
                baseline.outcome.detail
            )),
            _ => ours.outcome,
        };
    }
    let predicted = match predict(target, &baseline.trace, personality.name()) {
        Ok(p) => p,
        Err(e) => return Outcome::fail(e),
    };
    let calls = calls(&ours.trace);
    let refused: Vec<Call> = calls.iter().filter(|c| c.2 != "CKR_OK").cloned().collect();
    // The earliest refusal the report predicts must be there, unless the application never
    // made the call (pkcs11-tool reads the mechanism list and leaves out what is not offered);
    // later ones may never be reached.
    if let Some(first) = predicted.iter().find(|p| p.code.is_some()) {
        let call = |(f, m, _): &&Call| {
            *f == first.function && (first.mechanism.is_none() || *m == first.mechanism)
        };
        let made: Vec<&Call> = calls.iter().filter(call).collect();
        if !made.is_empty() && !made.iter().any(|c| Some(&c.2) == first.code.as_ref()) {
            return Outcome::fail(format!(
                "`ferrohsm check` says {} under {}, but the personality's run made that call \
                 without that refusal",
                first.describe(),
                personality.name()
            ));
        }
    }
    match (ours.outcome.status, predicted.first()) {
        (Status::Fail, Some(p)) => Outcome::na(p.describe()),
        (Status::Fail, None) => match explain(personality.profile(), &refused) {
            Some(why) => Outcome::na(why),
            None => Outcome::fail(format!(
                "{} (no rule of {} explains it)",
                ours.outcome.detail,
                personality.name()
            )),
        },
        _ => ours.outcome,
    }
}

/// A refusal of the personality's run that one of its rules gives whatever the call's
/// arguments: a function or mechanism the vendor does not offer, a read-only session. (The
/// replay judges only the calls that succeeded under the default personality; a scenario's
/// probe of an error code is a call that failed there, so it is explained here.)
fn explain(profile: &Profile, refused: &[Call]) -> Option<String> {
    refused.iter().find_map(|(function, mechanism, rv)| {
        let mechanism_rule = || {
            let ty = names::parse_mechanism(mechanism.as_deref()?)?;
            let (_, flag) = init_kind(function)?;
            profile.judge_mechanism(ty, flag).err()
        };
        let finding = profile
            .judge_function(function)
            .err()
            .or_else(mechanism_rule)
            .or_else(|| {
                (function == "C_OpenSession")
                    .then(|| profile.judge_open_session(false).err())
                    .flatten()
            })?;
        (finding.code.as_ref().map(bridge::Error::name) == Some(rv.as_str())).then(|| {
            format!(
                "{function}{} → {rv}: {}",
                mechanism
                    .as_deref()
                    .map(|m| format!(" {m}"))
                    .unwrap_or_default(),
                finding.what
            )
        })
    })
}

/// Runs `run` on `target` under `personality` (else FerroHSM's default), with `target`'s PIN
/// form, recording every call.
fn record(
    target: &Target,
    personality: Option<bridge::config::Personality>,
    run: &dyn Fn(&Target) -> Outcome,
) -> Result<Baseline, String> {
    let dir = tempfile::Builder::new()
        .prefix("conformance-trace-")
        .tempdir()
        .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    let trace = dir.path().join("trace.jsonl");
    let mut t = match personality {
        Some(_) => target.clone(),
        // The default personality's run needs no daemon: the replay is the same on any door.
        None => Target::new(&target.module),
    };
    t.personality = personality;
    t.client_for = target.client_for;
    t.trace = Some(trace.clone());
    let outcome = run(&t);
    Ok(Baseline {
        outcome,
        trace,
        _dir: dir,
    })
}

/// `ferrohsm check --trace TRACE --target NAME --json`: the differences that can change a
/// scenario's course (not the administration steps a vendor does with its own tools, which
/// FerroHSM keeps available).
fn predict(target: &Target, trace: &Path, name: &str) -> Result<Vec<Predicted>, String> {
    let cli = target.module.with_file_name("ferrohsm");
    let out = Command::new(&cli)
        .args(["check", "--trace"])
        .arg(trace)
        .args(["--target", name, "--from", "default", "--json"])
        .env_remove("FERROHSM_CONF")
        .output()
        .map_err(|e| format!("cannot run {}: {e}", cli.display()))?;
    let report: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "ferrohsm check: {e}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    let text = |f: &Value, k: &str| f.get(k).and_then(Value::as_str).map(str::to_owned);
    let mut found: Vec<Predicted> = report
        .get("findings")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|f| Predicted {
            function: text(f, "function").unwrap_or_default(),
            mechanism: text(f, "mechanism"),
            code: text(f, "code"),
            what: text(f, "what").unwrap_or_default(),
            pid: f.get("pid").and_then(Value::as_u64).unwrap_or(0),
            seq: f.get("first_seq").and_then(Value::as_u64).unwrap_or(0),
        })
        .filter(|p| {
            p.code.is_some()
                || !matches!(
                    p.function.as_str(),
                    "C_InitToken" | "C_InitPIN" | "C_SetPIN"
                )
        })
        .collect();
    found.sort_by_key(|p| (p.pid, p.seq));
    Ok(found)
}

/// A call of a trace: function, mechanism, code.
type Call = (String, Option<String>, String);

/// The calls of a trace.
fn calls(trace: &Path) -> Vec<Call> {
    let text = std::fs::read_to_string(trace).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r.get("kind").and_then(Value::as_str) == Some("call"))
        .filter_map(|r| {
            let rv = r.get("rv").and_then(Value::as_str)?;
            let function = r.get("fn").and_then(Value::as_str)?.to_owned();
            let mechanism = r
                .get("mechanism")
                .and_then(|m| m.get("type"))
                .or_else(|| r.get("mechanism_type"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            Some((function, mechanism, rv.to_owned()))
        })
        .collect()
}
