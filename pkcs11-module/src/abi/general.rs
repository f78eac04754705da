//! General-purpose functions: `C_Initialize`, `C_Finalize`, `C_GetInfo`,
//! `C_GetFunctionList`, `C_GetInterfaceList`, `C_GetInterface`.

use std::io::Write as _;

use bridge::Error;
use cryptoki_sys::*;

use super::entry::guard;
use super::interface::{FUNCTION_LIST, INTERFACES, find_interface};
use super::ptr::{OutList, out_value, padded, read_value};
use super::state;

/// `cryptokiVersion` reported by `C_GetInfo`.
const CRYPTOKI_VERSION: CK_VERSION = CK_VERSION { major: 3, minor: 0 };
/// `manufacturerID` reported by `C_GetInfo`.
const MANUFACTURER: &str = "FerroHSM";
/// `libraryDescription` reported by `C_GetInfo`.
const DESCRIPTION: &str = "FerroHSM PKCS#11 module";
/// `libraryVersion`: this crate's version.
const LIBRARY_VERSION: CK_VERSION = CK_VERSION {
    major: parse_u8(env!("CARGO_PKG_VERSION_MAJOR")),
    minor: parse_u8(env!("CARGO_PKG_VERSION_MINOR")),
};

/// A decimal version component, saturating at 255.
const fn parse_u8(s: &str) -> u8 {
    let mut rest = s.as_bytes();
    let mut value: u8 = 0;
    while let [first, tail @ ..] = rest {
        let digit = first.wrapping_sub(b'0');
        if digit > 9 {
            break;
        }
        value = value.saturating_mul(10).saturating_add(digit);
        rest = tail;
    }
    value
}

/// `C_Initialize`: initializes the library.
///
/// Spec: [PKCS #11 v3.2], General-purpose functions, C_Initialize.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// `pInitArgs` may be NULL. Otherwise `pReserved` must be NULL, the four mutex functions all
/// NULL or all set (`CKR_ARGUMENTS_BAD`), and if they are set `CKF_OS_LOCKING_OK` must be too:
/// the module only uses native locks (`CKR_CANT_LOCK`). The router is built from
/// `FERROHSM_CONF` / `FERROHSM_HOME`; a configuration error is reported on stderr and gives
/// `CKR_GENERAL_ERROR`.
///
/// # Safety
///
/// `pInitArgs` must be NULL or point to a readable `CK_C_INITIALIZE_ARGS`.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Initialize(pInitArgs: CK_VOID_PTR) -> CK_RV {
    guard("C_Initialize", || {
        // SAFETY: `pInitArgs` is NULL or a CK_C_INITIALIZE_ARGS per the C_Initialize contract.
        let args = unsafe { read_value(pInitArgs.cast_const().cast::<CK_C_INITIALIZE_ARGS>()) };
        check_init_args(args.as_ref())?;
        crate::logger::init_from_env();
        let result = state::initialize(crate::wiring::module_from_env);
        if let Err(Error::Config(msg)) = &result {
            report_config_error(msg);
        }
        result
    })
}

/// The argument rules of `C_Initialize`.
fn check_init_args(args: Option<&CK_C_INITIALIZE_ARGS>) -> Result<(), Error> {
    let Some(args) = args else {
        return Ok(());
    };
    // "the value of pReserved thereby obtained MUST be NULL_PTR; if it's not, then
    // C_Initialize should return with the value CKR_ARGUMENTS_BAD"
    if !args.pReserved.is_null() {
        return Err(Error::ArgumentsBad);
    }
    let supplied = [
        args.CreateMutex.is_some(),
        args.DestroyMutex.is_some(),
        args.LockMutex.is_some(),
        args.UnlockMutex.is_some(),
    ];
    // "If some, but not all, of the supplied function pointers to C_Initialize are
    // non-NULL_PTR, then C_Initialize should return with the value CKR_ARGUMENTS_BAD."
    if supplied.iter().any(|s| *s) && !supplied.iter().all(|s| *s) {
        return Err(Error::ArgumentsBad);
    }
    // Case 3 of the four locking modes: application mutexes only. We cannot use them, only
    // native locks, so: CKR_CANT_LOCK. Case 4 (both) is fine: we use native locks.
    if supplied.iter().all(|s| *s) && args.flags & CKF_OS_LOCKING_OK == 0 {
        return Err(Error::CantLock);
    }
    Ok(())
}

/// The one line the module writes on its own: docs/architecture.md §4, "A bad config is a clear message
/// on stderr and CKR_GENERAL_ERROR from C_Initialize". Written with `writeln!` rather than
/// `eprintln!`, which panics when stderr fails; a failed write is dropped.
#[allow(clippy::print_stderr)] // marks the module's only deliberate output on stderr
fn report_config_error(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "ferrohsm: {}", one_line(msg));
}

/// A multi-line message (a TOML error quotes the offending line and underlines it) as one
/// line: the quoted-source lines are dropped and the rest joined with "; ".
fn one_line(msg: &str) -> String {
    let is_quote = |line: &str| {
        let rest = line
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .trim_start();
        rest.starts_with('|')
    };
    msg.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !is_quote(line))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `C_Finalize`: finishes with the library; sessions die with the router.
///
/// Spec: [PKCS #11 v3.2], General-purpose functions, C_Finalize.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// None beyond the C_Finalize contract: `pReserved` is only compared with NULL.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_Finalize(pReserved: CK_VOID_PTR) -> CK_RV {
    guard("C_Finalize", || {
        if !pReserved.is_null() {
            return Err(Error::ArgumentsBad);
        }
        state::finalize()
    })
}

/// `C_GetInfo`: general information about the library.
///
/// Spec: [PKCS #11 v3.2], General-purpose functions, C_GetInfo.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pInfo` must be NULL or valid for writes of a `CK_INFO`.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetInfo(pInfo: CK_INFO_PTR) -> CK_RV {
    guard("C_GetInfo", || {
        state::router()?;
        // SAFETY: `pInfo` is NULL or writable per the C_GetInfo contract.
        let out = unsafe { out_value(pInfo) }?;
        out.write(CK_INFO {
            cryptokiVersion: CRYPTOKI_VERSION,
            manufacturerID: padded(MANUFACTURER),
            flags: 0,
            libraryDescription: padded(DESCRIPTION),
            libraryVersion: LIBRARY_VERSION,
        });
        Ok(())
    })
}

/// `C_GetFunctionList`: the version 2.40 function list.
///
/// Spec: [PKCS #11 v3.2], General-purpose functions, C_GetFunctionList.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `ppFunctionList` must be NULL or valid for writes of a pointer.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(ppFunctionList: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    guard("C_GetFunctionList", || {
        // SAFETY: `ppFunctionList` is NULL or writable per the C_GetFunctionList contract.
        let out = unsafe { out_value(ppFunctionList) }?;
        // The caller receives a `*mut` because the C type says so, but "no attempt should be
        // made to write to this memory".
        out.write((&raw const FUNCTION_LIST).cast_mut());
        Ok(())
    })
}

/// `C_GetInterfaceList`: the interfaces this library offers, "PKCS 11" 3.0 then 2.40.
///
/// Spec: [PKCS #11 v3.2], General-purpose functions, C_GetInterfaceList.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// # Safety
///
/// `pulCount` must be NULL or valid for reads and writes of a `CK_ULONG`; `pInterfaceList`
/// must be NULL or valid for writes of `*pulCount` `CK_INTERFACE`s.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetInterfaceList(
    pInterfaceList: CK_INTERFACE_PTR,
    pulCount: CK_ULONG_PTR,
) -> CK_RV {
    guard("C_GetInterfaceList", || {
        // SAFETY: the pointers follow the C_GetInterfaceList contract.
        let out = unsafe { OutList::new(pInterfaceList, pulCount) }?;
        let list: Vec<CK_INTERFACE> = INTERFACES.iter().map(|i| i.0).collect();
        out.fill(&list)
    })
}

/// `C_GetInterface`: one interface by name, version and flags; NULL name and version give the
/// default, "PKCS 11" 3.0.
///
/// Spec: [PKCS #11 v3.2], General-purpose functions, C_GetInterface.
///
/// [PKCS #11 v3.2]: https://docs.oasis-open.org/pkcs11/pkcs11-spec/v3.2/pkcs11-spec-v3.2.html
///
/// No interface matching is `CKR_ARGUMENTS_BAD`: the specification names no code for it, and
/// this is the one its list of return values offers for a request that cannot be met
/// (SoftHSM and kryoptic answer the same).
///
/// # Safety
///
/// `pInterfaceName` must be NULL or a NUL-terminated string, `pVersion` NULL or a readable
/// `CK_VERSION`, `ppInterface` NULL or valid for writes of a pointer.
// SAFETY: PKCS#11 requires this exact unmangled name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetInterface(
    pInterfaceName: CK_UTF8CHAR_PTR,
    pVersion: CK_VERSION_PTR,
    ppInterface: CK_INTERFACE_PTR_PTR,
    flags: CK_FLAGS,
) -> CK_RV {
    guard("C_GetInterface", || {
        // SAFETY: `ppInterface` is NULL or writable per the C_GetInterface contract.
        let out = unsafe { out_value(ppInterface) }?;
        // SAFETY: `pVersion` is NULL or a readable CK_VERSION per the contract.
        let version = unsafe { read_value(pVersion.cast_const()) };
        // SAFETY: `pInterfaceName` is NULL or NUL-terminated per the contract.
        let interface = unsafe { find_interface(pInterfaceName.cast_const(), version, flags) }
            .ok_or(Error::ArgumentsBad)?;
        // Read-only for the caller, as the specification says of interfaces.
        out.write(ptr_to_interface(interface));
        Ok(())
    })
}

/// The `CK_INTERFACE_PTR` handed out for one of our static interfaces.
fn ptr_to_interface(interface: &'static CK_INTERFACE) -> CK_INTERFACE_PTR {
    std::ptr::from_ref(interface).cast_mut()
}

#[cfg(test)]
mod tests {
    use std::ptr;

    use super::*;

    fn init_args(flags: CK_FLAGS) -> CK_C_INITIALIZE_ARGS {
        CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags,
            pReserved: ptr::null_mut(),
        }
    }

    unsafe extern "C" fn create(_: *mut *mut std::ffi::c_void) -> CK_RV {
        CKR_OK
    }
    unsafe extern "C" fn other(_: *mut std::ffi::c_void) -> CK_RV {
        CKR_OK
    }

    fn with_mutexes(flags: CK_FLAGS) -> CK_C_INITIALIZE_ARGS {
        CK_C_INITIALIZE_ARGS {
            CreateMutex: Some(create),
            DestroyMutex: Some(other),
            LockMutex: Some(other),
            UnlockMutex: Some(other),
            ..init_args(flags)
        }
    }

    #[test]
    fn init_args_rules() {
        assert_eq!(check_init_args(None), Ok(()));
        assert_eq!(check_init_args(Some(&init_args(0))), Ok(()));
        assert_eq!(check_init_args(Some(&init_args(CKF_OS_LOCKING_OK))), Ok(()));
        let mut reserved = init_args(0);
        reserved.pReserved = ptr::NonNull::dangling().as_ptr();
        assert_eq!(check_init_args(Some(&reserved)), Err(Error::ArgumentsBad));
        let partial = CK_C_INITIALIZE_ARGS {
            LockMutex: None,
            ..with_mutexes(CKF_OS_LOCKING_OK)
        };
        assert_eq!(check_init_args(Some(&partial)), Err(Error::ArgumentsBad));
        assert_eq!(
            check_init_args(Some(&with_mutexes(0))),
            Err(Error::CantLock)
        );
        assert_eq!(
            check_init_args(Some(&with_mutexes(CKF_OS_LOCKING_OK))),
            Ok(())
        );
    }

    #[test]
    fn config_errors_are_reported_on_one_line() {
        let toml = "/etc/f.toml: TOML parse error at line 1, column 1\n  |\n1 | colour = 1\n  \
                    | ^^^^^^\nunknown field `colour`, expected `firmware` or `slot`\n";
        assert_eq!(
            one_line(toml),
            "/etc/f.toml: TOML parse error at line 1, column 1; unknown field `colour`, expected \
             `firmware` or `slot`"
        );
        assert_eq!(
            one_line("slot 1: kind = \"module\" is not available yet"),
            "slot 1: kind = \"module\" is not available yet"
        );
    }

    #[test]
    fn library_version_is_the_crate_version() {
        assert_eq!(parse_u8("0"), 0);
        assert_eq!(parse_u8("12"), 12);
        assert_eq!(parse_u8("999"), 255);
        assert_eq!(parse_u8("3-rc"), 3);
        let major: u8 = env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap();
        assert_eq!(LIBRARY_VERSION.major, major);
    }

    #[test]
    fn get_function_list_null_is_arguments_bad() {
        assert_eq!(
            // SAFETY: NULL is refused before any write.
            unsafe { C_GetFunctionList(ptr::null_mut()) },
            CKR_ARGUMENTS_BAD
        );
        let mut list = ptr::null_mut();
        // SAFETY: `list` is a live pointer slot.
        assert_eq!(unsafe { C_GetFunctionList(&raw mut list) }, CKR_OK);
        assert_eq!(list.cast_const(), &raw const FUNCTION_LIST);
    }

    #[test]
    fn get_interface_list_counts_and_fills() {
        let mut count: CK_ULONG = 0;
        assert_eq!(
            // SAFETY: `count` is live; the list is NULL.
            unsafe { C_GetInterfaceList(ptr::null_mut(), &raw mut count) },
            CKR_OK
        );
        assert_eq!(count, 2);
        let empty = CK_INTERFACE {
            pInterfaceName: ptr::null_mut(),
            pFunctionList: ptr::null_mut(),
            flags: 0,
        };
        let mut list = [empty; 1];
        let mut count: CK_ULONG = 1;
        assert_eq!(
            // SAFETY: `list` holds `count` entries.
            unsafe { C_GetInterfaceList(list.as_mut_ptr(), &raw mut count) },
            CKR_BUFFER_TOO_SMALL
        );
        assert_eq!(count, 2);
        let mut list = [empty; 2];
        assert_eq!(
            // SAFETY: as above.
            unsafe { C_GetInterfaceList(list.as_mut_ptr(), &raw mut count) },
            CKR_OK
        );
        assert!(!list[0].pFunctionList.is_null() && !list[1].pFunctionList.is_null());
        assert_eq!(
            // SAFETY: NULL count is refused.
            unsafe { C_GetInterfaceList(list.as_mut_ptr(), ptr::null_mut()) },
            CKR_ARGUMENTS_BAD
        );
    }
}
