//! Windows only: the DLL entry point. Registration with CNG is an installer's job (see the
//! README's KSP section); nothing here touches the registry.

#![allow(unreachable_pub)]

use std::ffi::c_void;

/// `DllMain`: nothing to do on attach or detach (state is built on first `OpenProvider`).
///
/// # Safety
///
/// Called by the Windows loader only.
// SAFETY: the loader's entry point name; nothing else in the library defines it.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn DllMain(
    _hinst: *mut c_void,
    _reason: u32,
    _reserved: *mut c_void,
) -> i32 {
    1
}
