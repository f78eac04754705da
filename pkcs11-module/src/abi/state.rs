//! The module's global state: the router built at `C_Initialize`, and the process it was
//! built in.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};

use bridge::{Backend, Error};
use parking_lot::RwLock;

/// What `C_Initialize` sets up and `C_Finalize` tears down.
struct State {
    /// The router, behind the recorder when the module records (`FERROHSM_TRACE`).
    router: Arc<dyn Backend>,
    /// `std::process::id()` at `C_Initialize`: a different pid means the state was inherited
    /// across `fork()` (checked where a syscall costs nothing: initialize, finalize).
    pid: u32,
    /// [`FORKS`] at `C_Initialize`: a different count means the same, and is what every call
    /// checks (`getpid()` is a system call, three per signature otherwise).
    forks: u64,
}

/// How many times this process image has been forked into a child: 0 in the process that
/// loaded the module, incremented in each child by the `pthread_atfork` child handler.
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn forked_child() {
    // An atomic increment only: the child of a multi-threaded parent may call nothing else
    // that is not async-signal-safe here.
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// Registers [`forked_child`] once per process.
fn watch_forks() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registers a handler that only increments an atomic; the module is linked
        // with `-z nodelete` (build.rs), so the handler's code stays mapped for the life of
        // the process even after `dlclose`. Failure (ENOMEM) leaves the pid checks in place.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(forked_child)) };
        if rc != 0 {
            log::warn!("pthread_atfork failed ({rc}): fork detection relies on C_Initialize");
        }
    });
}

/// Whether `state` was set up in this process.
fn is_ours(state: &State) -> bool {
    state.forks == FORKS.load(Ordering::Relaxed)
}

/// The one piece of global state. `parking_lot::RwLock::new` is `const`, so no lazy
/// initialisation is needed; lock order is this lock, then anything inside the router.
static MODULE: RwLock<Option<State>> = RwLock::new(None);

/// The router, if the module is initialized in this process; else
/// `CKR_CRYPTOKI_NOT_INITIALIZED`. The `Arc` is cloned under the read lock and the lock is
/// released before the caller uses it, so no backend call ever runs under this lock.
pub(crate) fn router() -> Result<Arc<dyn Backend>, Error> {
    let module = MODULE.read();
    match module.as_ref() {
        Some(state) if is_ours(state) => Ok(Arc::clone(&state.router)),
        // None, or state inherited from the parent across fork(): docs/architecture.md §4, "After
        // fork(), the child gets CKR_CRYPTOKI_NOT_INITIALIZED until it calls C_Initialize".
        _ => Err(Error::CryptokiNotInitialized),
    }
}

/// `C_Initialize`: builds the router with `build` and installs it, unless the module is
/// already initialized in this process (`CKR_CRYPTOKI_ALREADY_INITIALIZED`). The write lock is
/// held while building, so two racing `C_Initialize` calls cannot both build a router.
pub(crate) fn initialize(
    build: impl FnOnce() -> Result<Arc<dyn Backend>, Error>,
) -> Result<(), Error> {
    watch_forks();
    let mut module = MODULE.write();
    if let Some(state) = module.take() {
        if is_ours(&state) && state.pid == std::process::id() {
            *module = Some(state);
            return Err(Error::CryptokiAlreadyInitialized);
        }
        abandon_inherited(state);
    }
    let router = build()?;
    *module = Some(State {
        router,
        pid: std::process::id(),
        forks: FORKS.load(Ordering::Relaxed),
    });
    Ok(())
}

/// `C_Finalize`: takes the router out, so that sessions die with it and a later
/// `C_Initialize` starts afresh. The router is dropped after the lock is released; calls
/// still in flight on other threads keep their clone alive until they return.
pub(crate) fn finalize() -> Result<(), Error> {
    let state = {
        let mut module = MODULE.write();
        match module.take() {
            Some(state) if is_ours(&state) && state.pid == std::process::id() => state,
            Some(inherited) => {
                abandon_inherited(inherited);
                return Err(Error::CryptokiNotInitialized);
            }
            None => return Err(Error::CryptokiNotInitialized),
        }
    };
    drop(state);
    Ok(())
}

/// Lets go of state inherited from the parent process across `fork()` without running its
/// destructors: the backends behind it may hold file locks, database handles or sockets that
/// belong to the parent, and dropping them in the child could release or corrupt the parent's
/// resources. The `Arc` is deliberately leaked (one router per fork-then-initialize, in the
/// child only); `Arc::into_raw` is used because `mem::forget` is denied workspace-wide.
fn abandon_inherited(state: State) {
    let _leaked = Arc::into_raw(state.router);
}

/// An argument error in a single-part, update or final call ends the active operation, as every
/// error of those calls does but `CKR_BUFFER_TOO_SMALL` (PKCS#11 §5: "A call to C_Encrypt always
/// terminates the active encryption operation unless it returns CKR_BUFFER_TOO_SMALL or is a
/// successful call ... to determine the length"; likewise for update and final calls). The
/// backend ends its operations on its own errors; this covers the ones the shim finds first.
pub(crate) fn ends_operation(
    router: &dyn Backend,
    session: cryptoki_sys::CK_SESSION_HANDLE,
    operation: cryptoki_sys::CK_FLAGS,
    e: Error,
) -> Error {
    if !matches!(e, Error::BufferTooSmall { .. }) {
        use bridge::BackendExt as _;
        // A backend without C_SessionCancel (a 2.40 library) keeps its own rules.
        let _ = router.session_cancel(bridge::SessionHandle(session), operation);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one test that touches the global state (unit tests share a process).
    #[test]
    fn lifecycle_and_fork_inheritance() {
        let empty =
            || -> Result<Arc<dyn Backend>, Error> { Ok(Arc::new(bridge::Router::new(Vec::new()))) };
        assert_eq!(router().err(), Some(Error::CryptokiNotInitialized));
        assert_eq!(finalize(), Err(Error::CryptokiNotInitialized));

        // A failing build leaves the module uninitialized.
        assert_eq!(
            initialize(|| Err(Error::Config("bad".into()))),
            Err(Error::Config("bad".into()))
        );
        assert!(router().is_err());

        assert_eq!(initialize(empty), Ok(()));
        assert!(router().is_ok());
        assert_eq!(initialize(empty), Err(Error::CryptokiAlreadyInitialized));
        assert_eq!(finalize(), Ok(()));
        assert_eq!(router().err(), Some(Error::CryptokiNotInitialized));

        // Re-initialisation after finalize works.
        assert_eq!(initialize(empty), Ok(()));

        // Pretend the state was inherited across fork(): it counts as not initialized, and
        // C_Initialize in the "child" succeeds. The atfork handler is what every call sees;
        // initialize and finalize also compare the pid.
        forked_child();
        assert_eq!(router().err(), Some(Error::CryptokiNotInitialized));
        assert_eq!(initialize(empty), Ok(()));
        assert!(router().is_ok());
        assert_eq!(finalize(), Ok(()));

        // Finalize of inherited state is "not initialized" and leaves the module clean.
        assert_eq!(initialize(empty), Ok(()));
        let parent = std::process::id().wrapping_add(1);
        if let Some(state) = MODULE.write().as_mut() {
            state.pid = parent;
        }
        assert_eq!(finalize(), Err(Error::CryptokiNotInitialized));
        assert!(MODULE.read().is_none());
    }
}
