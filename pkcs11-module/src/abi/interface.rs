//! The function lists and the interface table: what `C_GetFunctionList`,
//! `C_GetInterfaceList` and `C_GetInterface` hand out.
//!
//! The lists are plain statics (they hold only function pointers and a version, so they are
//! `Sync`); the interface table holds raw pointers and needs the one [`SyncInterface`] wrapper.

use std::ffi::{CStr, c_void};

use cryptoki_sys::*;

use super::decrypt::*;
use super::digest::*;
use super::dual::*;
use super::encrypt::*;
use super::general::*;
use super::key_mgmt::*;
use super::message::*;
use super::object::*;
use super::parallel::*;
use super::ptr::c_str_eq;
use super::random::*;
use super::session::*;
use super::sign::*;
use super::slot_token::*;
use super::verify::*;

/// The name of both interfaces.
const INTERFACE_NAME: &CStr = c"PKCS 11";
/// The version of [`FUNCTION_LIST`].
const VERSION_2_40: CK_VERSION = CK_VERSION {
    major: 2,
    minor: 40,
};
/// The version of [`FUNCTION_LIST_3_0`].
const VERSION_3_0: CK_VERSION = CK_VERSION { major: 3, minor: 0 };

/// Builds both function lists from the vocabulary's table (`bridge::calls_table!`): every
/// function of the table is in the list of the version its line names (`2.40` or `3.0`) and
/// in the later one, under its C name, pointing at the entry point of that name; the
/// functions that are not calls of a backend (`C_Initialize`, `C_GetInterface` ...) are
/// named here once. Field order does not matter in a struct literal (the layout is
/// `cryptoki_sys`'s, from the header), and a field missing or unknown does not compile.
macro_rules! function_lists {
    // The table: keep each function's version and C name.
    (<$a:lifetime> $( $(#[$gdoc:meta])* $G:ident {
        $( $tag:literal $V:ident $cname:ident [$since:tt $access:ident] $m:ident
            ( $($args:tt)* ) -> $ret:ty = $rv:ident ; )*
    } )* ) => {
        function_lists!(@sort
            // The functions that are not calls of a backend, in 2.40 and in 3.0.
            [C_Initialize C_Finalize C_GetInfo C_GetFunctionList C_GetFunctionStatus C_CancelFunction]
            [C_GetInterfaceList C_GetInterface]
            $( $( $since $cname )* )*);
    };
    // Sorts them into the 2.40 functions and the 3.0 ones.
    (@sort [$($v2:ident)*] [$($v3:ident)*] 2.40 $c:ident $($rest:tt)*) => {
        function_lists!(@sort [$($v2)* $c] [$($v3)*] $($rest)*);
    };
    (@sort [$($v2:ident)*] [$($v3:ident)*] 3.0 $c:ident $($rest:tt)*) => {
        function_lists!(@sort [$($v2)*] [$($v3)* $c] $($rest)*);
    };
    (@sort [$($v2:ident)*] [$($v3:ident)*]) => {
        /// The version 2.40 function list (`C_GetFunctionList`, and the "PKCS 11" 2.40
        /// interface).
        pub(crate) static FUNCTION_LIST: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
            version: VERSION_2_40,
            $( $v2: Some($v2), )*
        };

        /// The version 3.0 function list (the default "PKCS 11" 3.0 interface).
        pub(crate) static FUNCTION_LIST_3_0: CK_FUNCTION_LIST_3_0 = CK_FUNCTION_LIST_3_0 {
            version: VERSION_3_0,
            $( $v2: Some($v2), )*
            $( $v3: Some($v3), )*
        };
    };
}

bridge::calls_table!(function_lists);

/// A `CK_INTERFACE` that may live in a `static`.
#[repr(transparent)]
pub(crate) struct SyncInterface(pub(crate) CK_INTERFACE);

// SAFETY: a `SyncInterface` only ever points at immutable statics (the interface name and the
// function lists above) and is never mutated, so sharing it between threads is sound.
unsafe impl Sync for SyncInterface {}

/// The interfaces, in the order `C_GetInterfaceList` reports them; the first is the default.
pub(crate) static INTERFACES: [SyncInterface; 2] = [
    SyncInterface(CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr().cast::<CK_UTF8CHAR>().cast_mut(),
        pFunctionList: (&raw const FUNCTION_LIST_3_0).cast::<c_void>().cast_mut(),
        flags: 0,
    }),
    SyncInterface(CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr().cast::<CK_UTF8CHAR>().cast_mut(),
        pFunctionList: (&raw const FUNCTION_LIST).cast::<c_void>().cast_mut(),
        flags: 0,
    }),
];

/// The version of each entry of [`INTERFACES`], in the same order.
const INTERFACE_VERSIONS: [CK_VERSION; 2] = [VERSION_3_0, VERSION_2_40];

/// The first interface matching `C_GetInterface`'s three criteria: the name if given, the
/// version if given, and every bit of `flags`.
///
/// # Safety
///
/// `name` must be NULL or point to a NUL-terminated string.
pub(crate) unsafe fn find_interface(
    name: *const CK_UTF8CHAR,
    version: Option<CK_VERSION>,
    flags: CK_FLAGS,
) -> Option<&'static CK_INTERFACE> {
    INTERFACES
        .iter()
        .zip(INTERFACE_VERSIONS)
        .find(|(interface, have)| {
            // SAFETY: `name` is NULL or NUL-terminated per the caller's contract.
            let name_ok = name.is_null() || unsafe { c_str_eq(name, INTERFACE_NAME) };
            let version_ok = version.is_none_or(|v| v.major == have.major && v.minor == have.minor);
            name_ok && version_ok && interface.0.flags & flags == flags
        })
        .map(|(interface, _)| &interface.0)
}

#[cfg(test)]
mod tests {
    use std::ptr;

    use super::*;

    fn find(name: Option<&CStr>, version: Option<(u8, u8)>, flags: CK_FLAGS) -> Option<(u8, u8)> {
        let name = name.map_or(ptr::null(), |n| n.as_ptr().cast::<CK_UTF8CHAR>());
        let version = version.map(|(major, minor)| CK_VERSION { major, minor });
        // SAFETY: `name` is NULL or a C string literal.
        let found = unsafe { find_interface(name, version, flags) }?;
        // SAFETY: every interface points at one of our function lists, which start with a
        // CK_VERSION.
        let v = unsafe { found.pFunctionList.cast::<CK_VERSION>().read() };
        Some((v.major, v.minor))
    }

    #[test]
    fn default_interface_is_3_0() {
        assert_eq!(find(None, None, 0), Some((3, 0)));
        assert_eq!(find(Some(c"PKCS 11"), None, 0), Some((3, 0)));
    }

    #[test]
    fn interfaces_by_version() {
        assert_eq!(find(Some(c"PKCS 11"), Some((3, 0)), 0), Some((3, 0)));
        assert_eq!((find(Some(c"PKCS 11"), Some((2, 40)), 0)), Some((2, 40)));
        assert_eq!(find(None, Some((2, 40)), 0), Some((2, 40)));
        assert_eq!(find(Some(c"PKCS 11"), Some((3, 2)), 0), None);
    }

    #[test]
    fn unknown_names_and_flags_match_nothing() {
        assert_eq!(find(Some(c"Vendor"), None, 0), None);
        assert_eq!(find(Some(c"PKCS 11 "), None, 0), None);
        assert_eq!(find(Some(c""), None, 0), None);
        assert_eq!(find(None, None, CKF_INTERFACE_FORK_SAFE), None);
    }

    #[test]
    fn interface_table_matches_the_lists() {
        assert_eq!(FUNCTION_LIST.version.major, 2);
        assert_eq!(FUNCTION_LIST_3_0.version.major, 3);
        let lists = [
            (&raw const FUNCTION_LIST_3_0).cast::<c_void>(),
            (&raw const FUNCTION_LIST).cast::<c_void>(),
        ];
        for ((interface, version), list) in INTERFACES.iter().zip(INTERFACE_VERSIONS).zip(lists) {
            assert_eq!(interface.0.pFunctionList.cast_const(), list);
            // SAFETY: every function list starts with its CK_VERSION.
            let listed = unsafe { list.cast::<CK_VERSION>().read() };
            assert_eq!((listed.major, listed.minor), (version.major, version.minor));
            // SAFETY: the name points at INTERFACE_NAME, a C string literal.
            assert!(unsafe { c_str_eq(interface.0.pInterfaceName, INTERFACE_NAME) });
        }
    }
}
