//! The report: one row per scenario, one column per module, a note where they differ.

use serde_json::{Value, json};

use crate::ctx::Target;
use crate::known::Known;

/// How a scenario ended on one module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    /// It did what the specification and the scenario require.
    Pass,
    /// It did not.
    Fail,
    /// It could not run (said loudly; never counted as a pass).
    Skip,
    /// Under a personality: it fails for a reason the personality gives (a mechanism the
    /// vendor does not offer ...): not a rule of that HSM (`--personality`).
    NotApplicable,
}

impl Status {
    fn word(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Skip => "SKIPPED",
            Status::NotApplicable => "n/a",
        }
    }
}

/// A result and what explains it.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    /// Pass, fail or skip.
    pub(crate) status: Status,
    /// The failure, the skip reason, or (golden rows) the code returned.
    pub(crate) detail: String,
}

impl Outcome {
    /// A pass, with an optional detail (the code a golden row got).
    pub(crate) fn pass(detail: String) -> Self {
        Self {
            status: Status::Pass,
            detail,
        }
    }
    /// A failure.
    pub(crate) fn fail(detail: String) -> Self {
        Self {
            status: Status::Fail,
            detail,
        }
    }
    /// A scenario that could not run.
    pub(crate) fn skip(detail: String) -> Self {
        Self {
            status: Status::Skip,
            detail,
        }
    }
    /// A scenario that is not a rule of the column's personality, and why.
    pub(crate) fn na(detail: String) -> Self {
        Self {
            status: Status::NotApplicable,
            detail,
        }
    }

    fn cell(&self) -> String {
        if self.status == Status::Pass && !self.detail.is_empty() {
            format!("pass {}", self.detail)
        } else {
            self.status.word().to_owned()
        }
    }
}

/// One scenario across the modules.
#[derive(Debug)]
pub(crate) struct Row {
    /// Scenario name.
    pub(crate) name: String,
    /// One result per module, in the order given.
    pub(crate) results: Vec<Outcome>,
    /// Module names, in the same order.
    modules: Vec<String>,
    /// Explanations: known differences, unexpected results, failure details.
    pub(crate) notes: Vec<String>,
}

impl Row {
    /// Builds the row and its notes.
    pub(crate) fn new(
        name: &str,
        results: Vec<Outcome>,
        targets: &[Target],
        known: &Known,
    ) -> Self {
        let mut notes = Vec::new();
        for (i, (t, r)) in targets.iter().zip(&results).enumerate() {
            let reason = known.reason(&t.name, name);
            match (r.status, reason) {
                (Status::Pass, None) => {}
                (Status::Pass, Some(why)) => {
                    notes.push(format!(
                        "{}: UNEXPECTED pass (known-differences says: {why})",
                        t.name
                    ));
                }
                (Status::Fail, Some(why)) if i > 0 => {
                    notes.push(format!("{}: known: {why} [{}]", t.name, r.detail));
                }
                (Status::Fail, _) => {
                    let tag = if i == 0 { "" } else { "no reason on file: " };
                    notes.push(format!("{}: {tag}{}", t.name, r.detail));
                }
                (Status::Skip, _) => notes.push(format!("{}: {}", t.name, r.detail)),
                (Status::NotApplicable, _) => {
                    notes.push(format!("{}: not a rule there: {}", t.name, r.detail));
                }
            }
        }
        // A bridge must add nothing and lose nothing: its result is the real module's own.
        let of = |k: crate::ctx::Kind| targets.iter().position(|t| t.kind == k);
        if let (Some(real), Some(bridge)) =
            (of(crate::ctx::Kind::SoftHsm), of(crate::ctx::Kind::Bridge))
            && let (Some(a), Some(b)) = (results.get(real), results.get(bridge))
            && (a.status != b.status || (a.status == Status::Pass && a.detail != b.detail))
        {
            notes.push(format!(
                "BRIDGE DIFFERS: {} {} {}, {} {} {}",
                targets.get(real).map_or("", |t| t.name.as_str()),
                a.status.word(),
                a.detail,
                targets.get(bridge).map_or("", |t| t.name.as_str()),
                b.status.word(),
                b.detail
            ));
        }
        // The daemon must add nothing and lose nothing, on either transport: its result is the
        // embedded firmware's.
        for transport in [crate::ctx::Kind::Daemon, crate::ctx::Kind::DaemonTls] {
            if let (Some(embedded), Some(daemon)) = (of(crate::ctx::Kind::Ferro), of(transport))
                && let (Some(a), Some(b)) = (results.get(embedded), results.get(daemon))
                && (a.status != b.status || (a.status == Status::Pass && a.detail != b.detail))
            {
                notes.push(format!(
                    "DAEMON DIFFERS: {} {} {}, {} {} {}",
                    targets.get(embedded).map_or("", |t| t.name.as_str()),
                    a.status.word(),
                    a.detail,
                    targets.get(daemon).map_or("", |t| t.name.as_str()),
                    b.status.word(),
                    b.detail
                ));
            }
        }
        // Golden rows: where both pass with different codes, say so.
        if results.len() > 1
            && results.iter().all(|r| r.status == Status::Pass)
            && results
                .windows(2)
                .any(|w| w.first().map(|a| &a.detail) != w.get(1).map(|b| &b.detail))
        {
            notes.push("codes differ; both within the specification".to_owned());
        }
        Self {
            name: name.to_owned(),
            results,
            modules: targets.iter().map(|t| t.name.clone()).collect(),
            notes,
        }
    }

    /// Prints the row as soon as it is known.
    pub(crate) fn print_live(&self) {
        let mut line = format!("{:<46}", self.name);
        for r in &self.results {
            line.push_str(&format!(" {:<30}", r.cell()));
        }
        println!("{}", line.trim_end());
        for n in &self.notes {
            println!("    note: {n}");
        }
    }

    fn to_json(&self) -> Value {
        let results: Vec<Value> = self
            .modules
            .iter()
            .zip(&self.results)
            .map(|(m, r)| json!({"module": m, "status": r.status.word().to_lowercase(), "detail": r.detail}))
            .collect();
        json!({"scenario": self.name, "results": results, "notes": self.notes})
    }
}

/// The whole run.
#[derive(Debug)]
pub(crate) struct Report {
    modules: Vec<(String, String)>,
    /// The columns under a personality (`--personality`).
    personalities: Vec<usize>,
    /// Scenario rows.
    pub(crate) rows: Vec<Row>,
    /// Golden return-code rows.
    pub(crate) golden: Vec<Row>,
}

impl Report {
    /// An empty report; prints the header.
    pub(crate) fn new(targets: &[Target]) -> Self {
        let mut header = format!("{:<46}", "scenario");
        for t in targets {
            header.push_str(&format!(" {:<30}", t.name));
        }
        println!("{}", header.trim_end());
        println!("{}", "-".repeat(46 + 31 * targets.len()));
        Self {
            modules: targets
                .iter()
                .map(|t| (t.name.clone(), t.module.display().to_string()))
                .collect(),
            personalities: targets
                .iter()
                .enumerate()
                .filter(|(_, t)| t.personality.is_some())
                .map(|(i, _)| i)
                .collect(),
            rows: Vec::new(),
            golden: Vec::new(),
        }
    }

    fn count(&self, module: usize, status: Status) -> usize {
        self.rows
            .iter()
            .chain(&self.golden)
            .filter(|r| r.results.get(module).map(|o| o.status) == Some(status))
            .count()
    }

    /// Failures of the module under test (the first one).
    pub(crate) fn primary_failures(&self) -> usize {
        self.count(0, Status::Fail)
    }

    /// Failures, without a reason on file, of the columns under a personality.
    pub(crate) fn personality_failures(&self) -> usize {
        self.rows
            .iter()
            .chain(&self.golden)
            .map(|r| {
                self.personalities
                    .iter()
                    .filter(|&&i| {
                        let name = self.modules.get(i).map_or("", |m| m.0.as_str());
                        r.results.get(i).map(|o| o.status) == Some(Status::Fail)
                            && r.notes
                                .iter()
                                .any(|n| n.starts_with(&format!("{name}: no reason")))
                    })
                    .count()
            })
            .sum()
    }

    /// Rows where a daemon (either transport) answered otherwise than the embedded firmware.
    pub(crate) fn daemon_differences(&self) -> usize {
        self.rows
            .iter()
            .chain(&self.golden)
            .filter(|r| r.notes.iter().any(|n| n.starts_with("DAEMON DIFFERS")))
            .count()
    }

    /// Prints the per-module totals, then the one line that counts the module under test.
    pub(crate) fn print_summary(&self) {
        println!();
        println!(
            "{} scenarios, {} golden return-code rules",
            self.rows.len(),
            self.golden.len()
        );
        for (i, (name, path)) in self.modules.iter().enumerate() {
            let unexplained = self
                .rows
                .iter()
                .chain(&self.golden)
                .filter(|r| {
                    r.results.get(i).map(|o| o.status) == Some(Status::Fail)
                        && r.notes
                            .iter()
                            .any(|n| n.starts_with(&format!("{name}: no reason")))
                })
                .count();
            let na = self.count(i, Status::NotApplicable);
            println!(
                "{name} ({path}): {} passed, {} failed ({} without a reason on file), {} skipped{}",
                self.count(i, Status::Pass),
                self.count(i, Status::Fail),
                unexplained,
                self.count(i, Status::Skip),
                if self.personalities.contains(&i) {
                    format!(", {na} not rules of that personality")
                } else {
                    String::new()
                }
            );
        }
        let skipped = self.count(0, Status::Skip);
        if skipped > 0 {
            println!("WARNING: {skipped} scenarios SKIPPED on the module under test");
        }
        println!(
            "{} passed, {} failed",
            self.count(0, Status::Pass),
            self.count(0, Status::Fail)
        );
    }

    /// The same report as JSON.
    pub(crate) fn to_json(&self) -> String {
        let modules: Vec<Value> = self
            .modules
            .iter()
            .enumerate()
            .map(|(i, (n, p))| {
                json!({
                    "name": n, "path": p,
                    "passed": self.count(i, Status::Pass),
                    "failed": self.count(i, Status::Fail),
                    "skipped": self.count(i, Status::Skip),
                    "not_applicable": self.count(i, Status::NotApplicable),
                })
            })
            .collect();
        let v = json!({
            "modules": modules,
            "scenarios": self.rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "golden": self.golden.iter().map(Row::to_json).collect::<Vec<_>>(),
            "passed": self.count(0, Status::Pass),
            "failed": self.count(0, Status::Fail),
        });
        serde_json::to_string_pretty(&v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}
