//! Known differences: which scenario is expected not to pass on which module, and why. Data,
//! not code, so that an unexpected pass or failure on either side shows in the report.

use std::path::Path;

use serde::Deserialize;

/// One entry of `known-differences.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Difference {
    /// The report columns (module display names, case-insensitive) it applies to.
    pub(crate) modules: Vec<String>,
    /// A scenario name, or a prefix followed by `*`.
    pub(crate) scenario: String,
    /// Why the module does not pass it.
    pub(crate) reason: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    difference: Vec<Difference>,
}

/// The loaded file.
#[derive(Debug, Default)]
pub(crate) struct Known {
    entries: Vec<Difference>,
}

impl Known {
    /// Loads the file; a missing file means no known differences.
    pub(crate) fn load(path: &Path) -> Result<Self, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let f: File = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self {
            entries: f.difference,
        })
    }

    /// The recorded reason why `module` does not pass `scenario`, if any.
    pub(crate) fn reason(&self, module: &str, scenario: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|d| {
                d.modules.iter().any(|m| m.eq_ignore_ascii_case(module))
                    && match d.scenario.strip_suffix('*') {
                        Some(prefix) => scenario.starts_with(prefix),
                        None => scenario == d.scenario,
                    }
            })
            .map(|d| d.reason.as_str())
    }
}
