//! The one logger of FerroHSM, and the one reading of `FERROHSM_LOG` (docs/architecture.md §4).
//!
//! - The PKCS#11 module (at `C_Initialize`) and the KSP (at `OpenProvider`) live in someone
//!   else's process: they install it only when `FERROHSM_LOG` names a level
//!   ([`init_from_env`]); otherwise the host's logger, if any, receives our `log` records.
//! - The CLI installs it for every command with a recorder of warnings and errors (its
//!   one-line error names their cause) and prints nothing unless `FERROHSM_LOG` asks
//!   ([`install`]); `ferrohsm serve` prints warnings and errors by default.
//!
//! Records go to stderr, one line each, written with `writeln!` and any write error dropped:
//! a logger must not fail (nor, as `eprintln!` would, panic in) its caller. What is logged is a
//! function name, an error or a reason; never PINs, key bytes or attribute values.

use std::io::Write as _;
use std::sync::Once;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The environment variable naming the level: `error`, `warn`, `info`, `debug`, `trace`, or
/// `off` (print nothing).
pub const ENV_LOG: &str = "FERROHSM_LOG";

/// What `FERROHSM_LOG` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requested {
    /// Unset or empty.
    Nothing,
    /// A level name (any case, spaces around it ignored).
    Level(LevelFilter),
    /// Something that is not a level name.
    NotALevel(String),
}

/// Reads a value of `FERROHSM_LOG`: the one parser every logger uses.
pub fn parse(value: Option<&str>) -> Requested {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Requested::Nothing;
    };
    match v.to_ascii_lowercase().as_str() {
        "error" => Requested::Level(LevelFilter::Error),
        "warn" => Requested::Level(LevelFilter::Warn),
        "info" => Requested::Level(LevelFilter::Info),
        "debug" => Requested::Level(LevelFilter::Debug),
        "trace" => Requested::Level(LevelFilter::Trace),
        "off" => Requested::Level(LevelFilter::Off),
        _ => Requested::NotALevel(v.to_owned()),
    }
}

/// What `FERROHSM_LOG` asks for in this process's environment.
pub fn requested() -> Requested {
    parse(std::env::var(ENV_LOG).ok().as_deref())
}

/// Where warnings and errors go besides stderr (the CLI's diagnostics).
pub type Keep = fn(&Record<'_>);

/// Writes records at or above `print` to stderr, and hands warnings and errors to `keep`.
struct Logger {
    print: Option<LevelFilter>,
    keep: Option<Keep>,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.print.is_some_and(|p| metadata.level() <= p)
            || (self.keep.is_some() && metadata.level() <= Level::Warn)
    }

    fn log(&self, record: &Record<'_>) {
        if self.print.is_some_and(|p| record.level() <= p) {
            // A write error is dropped: logging never fails its caller.
            let _ = writeln!(
                std::io::stderr().lock(),
                "ferrohsm[{}] {}: {}",
                record.level(),
                record.target(),
                record.args()
            );
        }
        if let Some(keep) = self.keep {
            if record.level() <= Level::Warn {
                keep(record);
            }
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().lock().flush();
    }
}

static INSTALL: Once = Once::new();

/// Installs the logger, once per process (a host's logger, installed first, is left alone):
/// it prints the records at or above the level `FERROHSM_LOG` names, else at or above
/// `default` (`None`: prints nothing), and hands every warning and error to `keep`. A value
/// that is no level name is said once on stderr when `tell` (a command line program) and
/// otherwise ignored (a library in someone else's process).
pub fn install(default: Option<LevelFilter>, keep: Option<Keep>, tell: bool) {
    INSTALL.call_once(|| {
        let print = match requested() {
            Requested::Level(LevelFilter::Off) => None,
            Requested::Level(l) => Some(l),
            Requested::Nothing => default,
            Requested::NotALevel(v) => {
                if tell {
                    let _ = writeln!(
                        std::io::stderr().lock(),
                        "ferrohsm: {ENV_LOG}={v:?} is not a level (error, warn, info, debug, \
                         trace); it is ignored"
                    );
                }
                default
            }
        };
        if print.is_none() && keep.is_none() {
            return;
        }
        let max = match (print, keep.is_some()) {
            (Some(p), true) => p.max(LevelFilter::Warn),
            (Some(p), false) => p,
            (None, _) => LevelFilter::Warn,
        };
        let logger: &'static Logger = Box::leak(Box::new(Logger { print, keep }));
        if log::set_logger(logger).is_ok() {
            log::set_max_level(max);
        }
    });
}

/// The libraries' logger: installed only if `FERROHSM_LOG` names a level.
pub fn init_from_env() {
    install(None, None, false);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_parsed_leniently_and_other_values_named() {
        assert_eq!(parse(None), Requested::Nothing);
        assert_eq!(parse(Some("  ")), Requested::Nothing);
        assert_eq!(parse(Some("debug")), Requested::Level(LevelFilter::Debug));
        assert_eq!(parse(Some(" WARN ")), Requested::Level(LevelFilter::Warn));
        assert_eq!(parse(Some("trace")), Requested::Level(LevelFilter::Trace));
        assert_eq!(
            parse(Some("verbose")),
            Requested::NotALevel("verbose".into())
        );
        assert_eq!(parse(Some("Off")), Requested::Level(LevelFilter::Off));
    }
}
