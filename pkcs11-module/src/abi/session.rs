//! Session management functions: `C_OpenSession`, `C_CloseSession`, `C_CloseAllSessions`,
//! `C_GetSessionInfo`, `C_SessionCancel`, `C_GetOperationState`, `C_SetOperationState`,
//! `C_Login`, `C_LoginUser`, `C_Logout`.

use bridge::{BackendExt as _, Error, ObjectHandle, SessionHandle, SlotId};
use cryptoki_sys::*;

use super::entry::guard;
use super::ptr::{OutBuf, in_bytes, out_value};
use super::router;

/// `C_OpenSession`: opens a session with the token in a slot. Notification callbacks
/// (`pApplication`, `Notify`) are accepted and not forwarded: no backend produces
/// notifications.
///
/// Spec: [PKCS #11 v3.2], Session management functions, C_OpenSession.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `phSession` must be NULL or valid for writes of a `CK_SESSION_HANDLE`.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_OpenSession(
    slotID: CK_SLOT_ID,
    flags: CK_FLAGS,
    pApplication: CK_VOID_PTR,
    Notify: CK_NOTIFY,
    phSession: CK_SESSION_HANDLE_PTR,
) -> CK_RV {
    let _ = (pApplication, Notify);
    guard("C_OpenSession", || {
        let router = router()?;
        // SAFETY: `phSession` is NULL or writable per the C_OpenSession contract.
        let out = unsafe { out_value(phSession) }?;
        out.write(router.open_session(SlotId(slotID), flags)?.0);
        Ok(())
    })
}

/// `C_CloseSession`: closes a session.
///
/// Spec: [PKCS #11 v3.2], Session management functions, C_CloseSession.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// None: the function takes no pointer.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_CloseSession(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_CloseSession", || {
        router()?.close_session(SessionHandle(hSession))
    })
}

/// `C_CloseAllSessions`: closes every session of the application with a slot's token.
///
/// Spec: [PKCS #11 v3.2], Session management functions, C_CloseAllSessions.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// None: the function takes no pointer.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_CloseAllSessions(slotID: CK_SLOT_ID) -> CK_RV {
    guard("C_CloseAllSessions", || {
        router()?.close_all_sessions(SlotId(slotID))
    })
}

/// `C_GetSessionInfo`: information about a session.
///
/// Spec: [PKCS #11 v3.2], Session management functions, C_GetSessionInfo.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pInfo` must be NULL or valid for writes of a `CK_SESSION_INFO`.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetSessionInfo(
    hSession: CK_SESSION_HANDLE,
    pInfo: CK_SESSION_INFO_PTR,
) -> CK_RV {
    guard("C_GetSessionInfo", || {
        let router = router()?;
        // SAFETY: `pInfo` is NULL or writable per the C_GetSessionInfo contract.
        let out = unsafe { out_value(pInfo) }?;
        let info = router.session_info(SessionHandle(hSession))?;
        out.write(CK_SESSION_INFO {
            slotID: info.slot.0,
            state: info.state,
            flags: info.flags,
            ulDeviceError: info.device_error,
        });
        Ok(())
    })
}

/// `C_SessionCancel` (3.0): terminates the session's operations named by `flags`.
///
/// Spec: [PKCS #11 v3.2], Session management functions, C_SessionCancel.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// None: the function takes no pointer.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SessionCancel(hSession: CK_SESSION_HANDLE, flags: CK_FLAGS) -> CK_RV {
    guard("C_SessionCancel", || {
        router()?.session_cancel(SessionHandle(hSession), flags)
    })
}

/// `C_GetOperationState`: saves the session's cryptographic operation state.
///
/// Spec: [PKCS #11 v3.2], Session management functions, C_GetOperationState.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pulOperationStateLen` must be NULL or valid for reads and writes of a `CK_ULONG`;
/// `pOperationState` NULL or valid for writes of `*pulOperationStateLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetOperationState(
    hSession: CK_SESSION_HANDLE,
    pOperationState: CK_BYTE_PTR,
    pulOperationStateLen: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_GetOperationState", || {
        let router = router()?;
        // SAFETY: the pointers follow the C_GetOperationState contract.
        let out = unsafe { OutBuf::new(pOperationState, pulOperationStateLen) }?;
        out.fill(|buf| router.operation_state(SessionHandle(hSession), buf))
    })
}

/// `C_SetOperationState`: restores a saved operation state. A key handle of
/// `CK_INVALID_HANDLE` means "no key".
///
/// Spec: [PKCS #11 v3.2], Session management functions, C_SetOperationState.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pOperationState` must be NULL or valid for reads of `ulOperationStateLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_SetOperationState(
    hSession: CK_SESSION_HANDLE,
    pOperationState: CK_BYTE_PTR,
    ulOperationStateLen: CK_ULONG,
    hEncryptionKey: CK_OBJECT_HANDLE,
    hAuthenticationKey: CK_OBJECT_HANDLE,
) -> CK_RV {
    guard("C_SetOperationState", || {
        let router = router()?;
        // SAFETY: `pOperationState` is NULL or readable per the C_SetOperationState contract.
        let state = unsafe { in_bytes(pOperationState, ulOperationStateLen) }?;
        let key = |h: CK_OBJECT_HANDLE| (h != CK_INVALID_HANDLE).then_some(ObjectHandle(h));
        router.set_operation_state(
            SessionHandle(hSession),
            state,
            key(hEncryptionKey),
            key(hAuthenticationKey),
        )
    })
}

/// The PIN of `C_Login` / `C_LoginUser`: NULL with length 0 asks for the protected
/// authentication path (`None`); NULL with a length is `CKR_ARGUMENTS_BAD`.
///
/// # Safety
///
/// `pin` must be NULL or valid for reads of `len` bytes for `'a`.
unsafe fn login_pin<'a>(pin: CK_UTF8CHAR_PTR, len: CK_ULONG) -> Result<Option<&'a [u8]>, Error> {
    if pin.is_null() {
        return if len == 0 {
            Ok(None)
        } else {
            Err(Error::ArgumentsBad)
        };
    }
    // SAFETY: non-null and readable for `len` bytes per the caller's contract.
    unsafe { in_bytes(pin, len) }.map(Some)
}

/// `C_Login`: logs a user into the token.
///
/// Spec: [PKCS #11 v3.2], Session management functions, C_Login.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pPin` must be NULL or valid for reads of `ulPinLen` bytes.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Login(
    hSession: CK_SESSION_HANDLE,
    userType: CK_USER_TYPE,
    pPin: CK_UTF8CHAR_PTR,
    ulPinLen: CK_ULONG,
) -> CK_RV {
    guard("C_Login", || {
        let router = router()?;
        // SAFETY: `pPin` follows the C_Login contract.
        let pin = unsafe { login_pin(pPin, ulPinLen) }?;
        router.login(SessionHandle(hSession), userType, pin)
    })
}

/// `C_LoginUser` (3.0): logs a named user into the token.
///
/// Spec: [PKCS #11 v3.2], Session management functions, C_LoginUser.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pPin` and `pUsername` must each be NULL or valid for reads of their lengths.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_LoginUser(
    hSession: CK_SESSION_HANDLE,
    userType: CK_USER_TYPE,
    pPin: CK_UTF8CHAR_PTR,
    ulPinLen: CK_ULONG,
    pUsername: CK_UTF8CHAR_PTR,
    ulUsernameLen: CK_ULONG,
) -> CK_RV {
    guard("C_LoginUser", || {
        let router = router()?;
        // SAFETY: `pPin` follows the C_LoginUser contract.
        let pin = unsafe { login_pin(pPin, ulPinLen) }?;
        // SAFETY: `pUsername` is NULL or readable for `ulUsernameLen` bytes per the contract.
        let username = unsafe { in_bytes(pUsername, ulUsernameLen) }?;
        router.login_user(SessionHandle(hSession), userType, pin, username)
    })
}

/// `C_Logout`: logs the user out of the token.
///
/// Spec: [PKCS #11 v3.2], Session management functions, C_Logout.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// None: the function takes no pointer.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Logout(hSession: CK_SESSION_HANDLE) -> CK_RV {
    guard("C_Logout", || router()?.logout(SessionHandle(hSession)))
}

#[cfg(test)]
mod tests {
    use std::ptr;

    use super::*;

    #[test]
    fn login_pin_null_means_protected_path_only_without_length() {
        // SAFETY: NULL is never read.
        assert_eq!(unsafe { login_pin(ptr::null_mut(), 0) }, Ok(None));
        assert_eq!(
            // SAFETY: as above.
            unsafe { login_pin(ptr::null_mut(), 4) },
            Err(Error::ArgumentsBad)
        );
        let mut pin = *b"1234";
        assert_eq!(
            // SAFETY: `pin` holds 4 bytes.
            unsafe { login_pin(pin.as_mut_ptr(), 4) },
            Ok(Some(&b"1234"[..]))
        );
        assert_eq!(
            // SAFETY: length 0 is never read.
            unsafe { login_pin(pin.as_mut_ptr(), 0) },
            Ok(Some(&b""[..]))
        );
    }
}
