//! What the module's layers log while a command runs (a daemon that does not answer, a peer
//! refused, a store that cannot be read): kept in memory so that a failing command can say it
//! in its one-line error, and printed as it comes when `FERROHSM_LOG` asks for a level. Never
//! PINs or key bytes: the layers log reasons only.

use std::sync::Mutex;

/// The last warnings and errors logged (at most [`KEEP`]).
static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
const KEEP: usize = 8;

struct Diag;

/// The level `FERROHSM_LOG` asks to print (none: print nothing).
static PRINT: std::sync::OnceLock<Option<log::LevelFilter>> = std::sync::OnceLock::new();

fn print_level() -> Option<log::LevelFilter> {
    PRINT.get().copied().flatten()
}

impl log::Log for Diag {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        meta.level() <= log::Level::Warn || print_level().is_some_and(|p| meta.level() <= p)
    }

    fn log(&self, record: &log::Record<'_>) {
        if print_level().is_some_and(|p| record.level() <= p) {
            eprintln!("ferrohsm: {}: {}", record.level(), record.args());
        }
        if record.level() <= log::Level::Warn {
            let mut seen = SEEN
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if seen.len() == KEEP {
                seen.remove(0);
            }
            seen.push(record.args().to_string());
        }
    }

    fn flush(&self) {}
}

/// Installs the recorder (once). `FERROHSM_LOG` with a level name also prints; another value
/// is said once rather than ignored.
pub(crate) fn install() {
    let print = std::env::var("FERROHSM_LOG").ok().and_then(|v| {
        let level = v.parse::<log::LevelFilter>().ok();
        if level.is_none() && !v.is_empty() {
            eprintln!(
                "ferrohsm: FERROHSM_LOG={v:?} is not a level (error, warn, info, debug, trace); nothing more is printed"
            );
        }
        level
    });
    let max = print.map_or(log::LevelFilter::Warn, |p| p.max(log::LevelFilter::Warn));
    let _ = PRINT.set(print);
    static DIAG: Diag = Diag;
    if log::set_logger(&DIAG).is_ok() {
        log::set_max_level(max);
    }
}

/// The causes logged so far, each once, in order (taken: each is told once). The router's
/// own "left out" notes are dropped when a layer below said why.
pub(crate) fn take() -> Vec<String> {
    let all = std::mem::take(
        &mut *SEEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let mut causes: Vec<String> = Vec::new();
    for m in all {
        if !causes.contains(&m) {
            causes.push(m);
        }
    }
    let below = |m: &String| !m.starts_with("slot group ");
    if causes.iter().any(below) {
        causes.retain(below);
    }
    causes
}

/// The first cause, if any (for an error line).
pub(crate) fn first() -> Option<String> {
    take().into_iter().next()
}
