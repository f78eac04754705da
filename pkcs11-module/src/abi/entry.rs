//! The boundary every exported function goes through.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};

use bridge::Error;
use cryptoki_sys::{CK_RV, CKR_GENERAL_ERROR, CKR_OK};

/// Set once a panic has been caught: state may be inconsistent, so the module fails closed
/// until the process unloads it.
static POISONED: AtomicBool = AtomicBool::new(false);

/// Runs the body of an entry point: refuses work after a caught panic, catches panics, and maps
/// `Error` to `CK_RV`. The only place a `CK_RV` is produced.
///
/// A body that must write several outputs and still report an error (`C_GetAttributeValue`,
/// `CKR_BUFFER_TOO_SMALL` with the needed length) writes them first and then returns the
/// error.
pub(crate) fn guard(name: &'static str, body: impl FnOnce() -> Result<(), Error>) -> CK_RV {
    guard_with(&POISONED, name, body)
}

/// [`guard`] over an explicit poison flag, so that tests can exercise the panic path without
/// disabling the module for every other test in the process.
fn guard_with(
    poisoned: &AtomicBool,
    name: &'static str,
    body: impl FnOnce() -> Result<(), Error>,
) -> CK_RV {
    if poisoned.load(Ordering::Acquire) {
        return CKR_GENERAL_ERROR;
    }
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(err)) => {
            // Never log attribute values, key bytes or PINs: `Error`'s Display carries none.
            log::debug!("{name}: {err}");
            err.rv()
        }
        Err(_) => {
            poisoned.store(true, Ordering::Release);
            log::error!("{name}: panic caught; module disabled");
            CKR_GENERAL_ERROR
        }
    }
}

#[cfg(test)]
mod tests {
    use cryptoki_sys::{CKR_BUFFER_TOO_SMALL, CKR_SESSION_HANDLE_INVALID};

    use super::*;

    #[test]
    fn guard_maps_ok_and_errors() {
        let flag = AtomicBool::new(false);
        assert_eq!(guard_with(&flag, "t", || Ok(())), CKR_OK);
        assert_eq!(
            guard_with(&flag, "t", || Err(Error::SessionHandleInvalid)),
            CKR_SESSION_HANDLE_INVALID
        );
        assert_eq!(
            guard_with(&flag, "t", || Err(Error::BufferTooSmall { needed: 3 })),
            CKR_BUFFER_TOO_SMALL
        );
        assert!(!flag.load(Ordering::Acquire));
    }

    #[test]
    fn guard_panic_is_general_error_then_poisoned() {
        let flag = AtomicBool::new(false);
        let rv = guard_with(&flag, "t", || panic!("boom"));
        assert_eq!(rv, CKR_GENERAL_ERROR);
        assert!(flag.load(Ordering::Acquire));
        // Fail closed: even a body that would succeed is refused, and not run.
        let mut ran = false;
        assert_eq!(
            guard_with(&flag, "t", || {
                ran = true;
                Ok(())
            }),
            CKR_GENERAL_ERROR
        );
        assert!(!ran);
    }
}
