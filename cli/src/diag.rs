//! What the module's layers log while a command runs (a daemon that does not answer, a peer
//! refused, a store that cannot be read): kept in memory so that a failing command can say it
//! in its one-line error, and printed as it comes when `FERROHSM_LOG` asks for a level. Never
//! PINs or key bytes: the layers log reasons only.

use std::sync::Mutex;

use ferrohsm_wiring::logger;

/// The last warnings and errors logged (at most [`KEEP`]).
static SEEN: Mutex<Vec<String>> = Mutex::new(Vec::new());
const KEEP: usize = 8;

/// Keeps one warning or error for the command's error line.
fn keep(record: &log::Record<'_>) {
    let mut seen = SEEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if seen.len() == KEEP {
        seen.remove(0);
    }
    seen.push(record.args().to_string());
}

/// Installs the one logger (`ferrohsm_wiring::logger`) with this recorder, printing what
/// `FERROHSM_LOG` asks for and by default nothing else (`default`: `ferrohsm serve` prints
/// warnings and errors); a value that is not a level is said once rather than ignored.
pub(crate) fn install(default: Option<log::LevelFilter>) {
    logger::install(default, Some(keep), true);
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
