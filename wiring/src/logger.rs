//! The opt-in logger, shared by the PKCS#11 module (at `C_Initialize`) and the KSP (at
//! `OpenProvider`): installed once, and only when `FERROHSM_LOG` names a
//! level (docs/architecture.md §4). Both libraries live in someone else's process, so by default they
//! install nothing and the host's logger, if any, receives our `log` records.
//!
//! What is logged is the function name and the error (see `abi::entry::guard`); never PINs,
//! key bytes or attribute values.

use std::io::Write as _;
use std::sync::Once;

use log::{LevelFilter, Log, Metadata, Record};

/// The environment variable naming the level: `error`, `warn`, `info`, `debug` or `trace`.
pub const ENV_LOG: &str = "FERROHSM_LOG";

/// Writes records to stderr, one line each.
struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            // A logger must not fail its caller: a write error is dropped (`eprintln!` would
            // panic on one).
            let _ = writeln!(
                std::io::stderr().lock(),
                "ferrohsm[{}] {}: {}",
                record.level(),
                record.target(),
                record.args()
            );
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().lock().flush();
    }
}

static LOGGER: StderrLogger = StderrLogger;
static INSTALL: Once = Once::new();

/// The level `FERROHSM_LOG` asks for; `None` when unset or not a level name.
fn requested_level(value: Option<&str>) -> Option<LevelFilter> {
    match value?.trim().to_ascii_lowercase().as_str() {
        "error" => Some(LevelFilter::Error),
        "warn" => Some(LevelFilter::Warn),
        "info" => Some(LevelFilter::Info),
        "debug" => Some(LevelFilter::Debug),
        "trace" => Some(LevelFilter::Trace),
        _ => None,
    }
}

/// Installs the logger if `FERROHSM_LOG` asks for it. Runs at most once per process; if the
/// host already installed a logger, ours is not installed and theirs is left alone.
pub fn init_from_env() {
    INSTALL.call_once(|| {
        let value = std::env::var(ENV_LOG).ok();
        if let Some(level) = requested_level(value.as_deref()) {
            if log::set_logger(&LOGGER).is_ok() {
                log::set_max_level(level);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_parsed_leniently_and_unknown_ones_ignored() {
        assert_eq!(requested_level(None), None);
        assert_eq!(requested_level(Some("debug")), Some(LevelFilter::Debug));
        assert_eq!(requested_level(Some(" WARN ")), Some(LevelFilter::Warn));
        assert_eq!(requested_level(Some("trace")), Some(LevelFilter::Trace));
        assert_eq!(requested_level(Some("verbose")), None);
        assert_eq!(requested_level(Some("")), None);
    }
}
