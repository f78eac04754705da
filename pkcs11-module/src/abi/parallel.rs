//! Parallel function management functions (legacy): `C_GetFunctionStatus`,
//! `C_CancelFunction`. No function ever runs in parallel with the application.

use bridge::{Backend, BackendExt as _, Error, SessionHandle};
use cryptoki_sys::*;

use super::entry::guard;
use super::router;

/// "CKR_FUNCTION_NOT_PARALLEL", once the session is known to exist.
fn not_parallel(router: &dyn Backend, session: SessionHandle) -> Result<(), Error> {
    router.session_info(session)?;
    Err(Error::FunctionNotParallel)
}

/// `C_GetFunctionStatus`: legacy; always `CKR_FUNCTION_NOT_PARALLEL` for a valid session.
///
/// Spec: [PKCS #11 v3.2], Parallel function management functions, C_GetFunctionStatus.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// None: the function takes no pointer.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionStatus(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_GetFunctionStatus", || {
        let router = router()?;
        not_parallel(&router, SessionHandle(hSession))
    })
}

/// `C_CancelFunction`: legacy; always `CKR_FUNCTION_NOT_PARALLEL` for a valid session.
///
/// Spec: [PKCS #11 v3.2], Parallel function management functions, C_CancelFunction.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// None: the function takes no pointer.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_CancelFunction(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_CancelFunction", || {
        let router = router()?;
        not_parallel(&router, SessionHandle(hSession))
    })
}
