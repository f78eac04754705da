//! Black-box smoke tests of the built `libferrohsm_pkcs11.so`, loaded with `dlopen` exactly as
//! an application would load it.
//!
//! The module has process-global state (`C_Initialize`) and reads its configuration from the
//! environment, so every scenario that initializes it runs in a child process of its own: the
//! visible test re-runs this test binary filtered to one `#[ignore]`d scenario, with the
//! environment that scenario needs. Nothing here calls `set_var`, and the result does not
//! depend on whether the runner is `cargo test` or `cargo nextest`.
//!
//! The module is found through `TEST_PKCS11_MODULE`, else next to this binary: in
//! `target/<profile>/deps/` (built for this test run) or `target/<profile>/`.
//!
//! Tests that need a working firmware (sessions, objects, crypto) belong to `tests/` (e2e).

// Calling into the loaded module is unsafe by nature; each call has its SAFETY line.
#![allow(unsafe_code)]
// clippy.toml allows these in `#[test]` functions; the helpers below are test code too.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::ffi::c_void;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::ptr;

use cryptoki_sys::*;
use libloading::Library;

/// Every function of the 3.0 interface, by its exact exported name.
const FUNCTIONS_3_0: [&str; 92] = [
    "C_Initialize",
    "C_Finalize",
    "C_GetInfo",
    "C_GetFunctionList",
    "C_GetSlotList",
    "C_GetSlotInfo",
    "C_GetTokenInfo",
    "C_GetMechanismList",
    "C_GetMechanismInfo",
    "C_InitToken",
    "C_InitPIN",
    "C_SetPIN",
    "C_OpenSession",
    "C_CloseSession",
    "C_CloseAllSessions",
    "C_GetSessionInfo",
    "C_GetOperationState",
    "C_SetOperationState",
    "C_Login",
    "C_Logout",
    "C_CreateObject",
    "C_CopyObject",
    "C_DestroyObject",
    "C_GetObjectSize",
    "C_GetAttributeValue",
    "C_SetAttributeValue",
    "C_FindObjectsInit",
    "C_FindObjects",
    "C_FindObjectsFinal",
    "C_EncryptInit",
    "C_Encrypt",
    "C_EncryptUpdate",
    "C_EncryptFinal",
    "C_DecryptInit",
    "C_Decrypt",
    "C_DecryptUpdate",
    "C_DecryptFinal",
    "C_DigestInit",
    "C_Digest",
    "C_DigestUpdate",
    "C_DigestKey",
    "C_DigestFinal",
    "C_SignInit",
    "C_Sign",
    "C_SignUpdate",
    "C_SignFinal",
    "C_SignRecoverInit",
    "C_SignRecover",
    "C_VerifyInit",
    "C_Verify",
    "C_VerifyUpdate",
    "C_VerifyFinal",
    "C_VerifyRecoverInit",
    "C_VerifyRecover",
    "C_DigestEncryptUpdate",
    "C_DecryptDigestUpdate",
    "C_SignEncryptUpdate",
    "C_DecryptVerifyUpdate",
    "C_GenerateKey",
    "C_GenerateKeyPair",
    "C_WrapKey",
    "C_UnwrapKey",
    "C_DeriveKey",
    "C_SeedRandom",
    "C_GenerateRandom",
    "C_GetFunctionStatus",
    "C_CancelFunction",
    "C_WaitForSlotEvent",
    "C_GetInterfaceList",
    "C_GetInterface",
    "C_LoginUser",
    "C_SessionCancel",
    "C_MessageEncryptInit",
    "C_EncryptMessage",
    "C_EncryptMessageBegin",
    "C_EncryptMessageNext",
    "C_MessageEncryptFinal",
    "C_MessageDecryptInit",
    "C_DecryptMessage",
    "C_DecryptMessageBegin",
    "C_DecryptMessageNext",
    "C_MessageDecryptFinal",
    "C_MessageSignInit",
    "C_SignMessage",
    "C_SignMessageBegin",
    "C_SignMessageNext",
    "C_MessageSignFinal",
    "C_MessageVerifyInit",
    "C_VerifyMessage",
    "C_VerifyMessageBegin",
    "C_VerifyMessageNext",
    "C_MessageVerifyFinal",
];

/// The number of functions in the 2.40 list: the 3.0 list without its last 24.
const FUNCTIONS_2_40: usize = 68;

/// Marks the environment of a child process running one scenario.
const CHILD_MARKER: &str = "FERROHSM_ABI_SMOKE_CHILD";

fn module_path() -> PathBuf {
    if let Some(path) = std::env::var_os("TEST_PKCS11_MODULE") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("deps directory");
    let profile = deps.parent().expect("profile directory");
    // `cargo test` and `cargo nextest` build the cdylib into `deps/` for this run; only
    // `cargo build` copies it up to `target/<profile>/`, where it may be stale.
    for dir in [deps, profile] {
        let candidate = dir.join("libferrohsm_pkcs11.so");
        if candidate.exists() {
            return candidate;
        }
    }
    panic!(
        "libferrohsm_pkcs11.so not found next to {}; set TEST_PKCS11_MODULE",
        exe.display()
    );
}

fn load() -> Library {
    // SAFETY: loading our own module runs no foreign initialisers beyond Rust's std setup.
    unsafe { Library::new(module_path()) }.expect("dlopen libferrohsm_pkcs11.so")
}

/// The 2.40 function list, via the exported `C_GetFunctionList`.
fn function_list(lib: &Library) -> &CK_FUNCTION_LIST {
    // SAFETY: the symbol has the CK_C_GetFunctionList type by the PKCS#11 ABI.
    let get = unsafe { lib.get::<CK_C_GetFunctionList>(b"C_GetFunctionList\0") }
        .expect("C_GetFunctionList exported");
    let get = get.expect("non-null C_GetFunctionList");
    let mut list: CK_FUNCTION_LIST_PTR = ptr::null_mut();
    // SAFETY: `list` is a live pointer slot.
    assert_eq!(unsafe { get(&raw mut list) }, CKR_OK);
    assert!(!list.is_null());
    // SAFETY: the module returned a pointer to its static function list, alive as long as
    // `lib` is loaded.
    unsafe { &*list }
}

/// The function pointers of a function list: everything after `version`, read as addresses.
fn entries<T>(list: &T, count: usize) -> Vec<usize> {
    let first = size_of::<CK_VERSION>().next_multiple_of(align_of::<usize>());
    assert_eq!(
        size_of::<T>(),
        first + count * size_of::<usize>(),
        "list size"
    );
    let base = ptr::from_ref(list).cast::<u8>();
    (0..count)
        .map(|i| {
            let at = base
                .wrapping_add(first + i * size_of::<usize>())
                .cast::<usize>();
            // SAFETY: the lists are repr(C) structures of a version followed by `count`
            // function pointers, as the size check above confirms.
            unsafe { at.read_unaligned() }
        })
        .collect()
}

/// The address `dlsym` gives for `name`.
fn symbol(lib: &Library, name: &str) -> usize {
    let mut cname = name.as_bytes().to_vec();
    cname.push(0);
    // SAFETY: only the address is taken; it is not called with this type.
    let sym = unsafe { lib.get::<*const c_void>(&cname) }
        .unwrap_or_else(|e| panic!("{name} not exported: {e}"));
    (*sym).addr()
}

/// Runs the `#[ignore]`d scenario `name` of this binary in a child process, with `FERROHSM_HOME`
/// set to a fresh directory and the other variables given, and checks it passed.
fn run_child(name: &str, env: &[(&str, &Path)]) -> Output {
    let home = tempfile::tempdir().expect("temporary home");
    let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
    cmd.args([
        "--ignored",
        "--exact",
        name,
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_MARKER, "1")
    .env("FERROHSM_HOME", home.path())
    .env_remove("FERROHSM_CONF")
    .env_remove("FERROHSM_LOG");
    for (key, value) in env {
        cmd.env(key, value);
    }
    let output = cmd.output().expect("spawn child test process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{name} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("1 passed"), "{name} did not run:\n{stdout}");
    output
}

/// Whether this process is a child started by [`run_child`]; scenarios do nothing otherwise
/// (for example under `--include-ignored`).
fn is_child() -> bool {
    std::env::var_os(CHILD_MARKER).is_some()
}

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

unsafe extern "C" fn create_mutex(_: *mut *mut c_void) -> CK_RV {
    CKR_OK
}

unsafe extern "C" fn mutex_op(_: *mut c_void) -> CK_RV {
    CKR_OK
}

fn with_mutexes(flags: CK_FLAGS) -> CK_C_INITIALIZE_ARGS {
    CK_C_INITIALIZE_ARGS {
        CreateMutex: Some(create_mutex),
        DestroyMutex: Some(mutex_op),
        LockMutex: Some(mutex_op),
        UnlockMutex: Some(mutex_op),
        ..init_args(flags)
    }
}

/// `C_Initialize` with `args` (NULL for `None`).
fn initialize(f: &CK_FUNCTION_LIST, args: Option<&mut CK_C_INITIALIZE_ARGS>) -> CK_RV {
    let p = args.map_or(ptr::null_mut(), |a| ptr::from_mut(a).cast::<c_void>());
    // SAFETY: `p` is NULL or a live CK_C_INITIALIZE_ARGS.
    unsafe { f.C_Initialize.expect("C_Initialize")(p) }
}

fn finalize(f: &CK_FUNCTION_LIST) -> CK_RV {
    // SAFETY: NULL is the documented argument.
    unsafe { f.C_Finalize.expect("C_Finalize")(ptr::null_mut()) }
}

fn get_info(f: &CK_FUNCTION_LIST, info: *mut CK_INFO) -> CK_RV {
    // SAFETY: `info` is NULL or a live CK_INFO.
    unsafe { f.C_GetInfo.expect("C_GetInfo")(info) }
}

#[test]
fn function_lists_and_symbols() {
    let lib = load();
    let f = function_list(&lib);
    assert_eq!((f.version.major, f.version.minor), (2, 40));
    let list_240 = entries(f, FUNCTIONS_2_40);
    assert!(list_240.iter().all(|p| *p != 0), "a 2.40 entry is NULL");

    // C_GetInterfaceList: two interfaces, 3.0 first.
    // SAFETY: the symbol has the CK_C_GetInterfaceList type by the PKCS#11 ABI.
    let get_list = unsafe { lib.get::<CK_C_GetInterfaceList>(b"C_GetInterfaceList\0") }
        .expect("C_GetInterfaceList exported")
        .expect("non-null");
    let mut count: CK_ULONG = 0;
    // SAFETY: `count` is live; the list is NULL.
    assert_eq!(unsafe { get_list(ptr::null_mut(), &raw mut count) }, CKR_OK);
    assert_eq!(count, 2);
    let empty = CK_INTERFACE {
        pInterfaceName: ptr::null_mut(),
        pFunctionList: ptr::null_mut(),
        flags: 0,
    };
    let mut interfaces = [empty; 2];
    assert_eq!(
        // SAFETY: `interfaces` holds `count` entries.
        unsafe { get_list(interfaces.as_mut_ptr(), &raw mut count) },
        CKR_OK
    );
    for (interface, want) in interfaces.iter().zip([(3, 0), (2, 40)]) {
        // SAFETY: the module's interface names are NUL-terminated static strings.
        let name = unsafe { std::ffi::CStr::from_ptr(interface.pInterfaceName.cast()) };
        assert_eq!(name, c"PKCS 11");
        // SAFETY: every function list starts with a CK_VERSION.
        let version = unsafe { interface.pFunctionList.cast::<CK_VERSION>().read() };
        assert_eq!((version.major, version.minor), want);
    }
    assert_eq!(
        interfaces[1].pFunctionList.cast_const(),
        ptr::from_ref(f).cast()
    );

    // C_GetInterface: the default is 3.0; 3.0 by name and version; 3.2 is not offered.
    // SAFETY: the symbol has the CK_C_GetInterface type by the PKCS#11 ABI.
    let get = unsafe { lib.get::<CK_C_GetInterface>(b"C_GetInterface\0") }
        .expect("C_GetInterface exported")
        .expect("non-null");
    let mut found: CK_INTERFACE_PTR = ptr::null_mut();
    assert_eq!(
        // SAFETY: NULL name and version ask for the default; `found` is a live slot.
        unsafe { get(ptr::null_mut(), ptr::null_mut(), &raw mut found, 0) },
        CKR_OK
    );
    // SAFETY: the module returned a pointer to one of its static interfaces.
    let default = unsafe { &*found };
    assert_eq!(default.pFunctionList, interfaces[0].pFunctionList);
    let mut name = *b"PKCS 11\0";
    let mut v30 = CK_VERSION { major: 3, minor: 0 };
    // SAFETY: `name` is NUL-terminated, `v30` and `found` are live.
    let rv = unsafe { get(name.as_mut_ptr(), &raw mut v30, &raw mut found, 0) };
    assert_eq!(rv, CKR_OK);
    // SAFETY: the module returned a pointer to one of its static interfaces.
    let interface_30 = unsafe { &*found };
    // SAFETY: that interface points at the module's static 3.0 function list.
    let list_30 = unsafe { &*interface_30.pFunctionList.cast::<CK_FUNCTION_LIST_3_0>() };
    assert_eq!((list_30.version.major, list_30.version.minor), (3, 0));
    let mut v32 = CK_VERSION { major: 3, minor: 2 };
    // SAFETY: as above.
    let rv = unsafe { get(name.as_mut_ptr(), &raw mut v32, &raw mut found, 0) };
    assert_eq!(
        rv, CKR_ARGUMENTS_BAD,
        "no 3.2 interface: CKR_ARGUMENTS_BAD by our choice"
    );
    // SAFETY: a NULL output pointer is refused before anything is written.
    let rv = unsafe { get(ptr::null_mut(), ptr::null_mut(), ptr::null_mut(), 0) };
    assert_eq!(rv, CKR_ARGUMENTS_BAD);

    // Every table entry is an exported symbol of the same name set, and vice versa.
    let list_30 = entries(list_30, FUNCTIONS_3_0.len());
    assert!(list_30.iter().all(|p| *p != 0), "a 3.0 entry is NULL");
    let exported: Vec<usize> = FUNCTIONS_3_0.iter().map(|n| symbol(&lib, n)).collect();
    assert_eq!(list_30, exported, "3.0 table order or symbols differ");
    assert_eq!(
        list_240,
        exported[..FUNCTIONS_2_40],
        "2.40 table order or symbols differ"
    );
    assert_eq!(
        exported.iter().collect::<BTreeSet<_>>().len(),
        FUNCTIONS_3_0.len()
    );
}

#[test]
fn lifecycle() {
    let output = run_child("child_lifecycle", &[]);
    // Without FERROHSM_LOG and with a good configuration the module prints nothing.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("ferrohsm"), "unexpected output: {stderr}");
}

#[test]
#[ignore = "runs in a child process of `lifecycle`"]
fn child_lifecycle() {
    if !is_child() {
        return;
    }
    let lib = load();
    let f = function_list(&lib);
    let mut info = CK_INFO {
        cryptokiVersion: CK_VERSION { major: 0, minor: 0 },
        manufacturerID: [0; 32],
        flags: 0,
        libraryDescription: [0; 32],
        libraryVersion: CK_VERSION { major: 0, minor: 0 },
    };

    // Before C_Initialize.
    assert_eq!(get_info(f, &raw mut info), CKR_CRYPTOKI_NOT_INITIALIZED);
    assert_eq!(finalize(f), CKR_CRYPTOKI_NOT_INITIALIZED);
    let mut count: CK_ULONG = 0;
    // SAFETY: `count` is live; the list is NULL.
    let rv = unsafe {
        f.C_GetSlotList.expect("C_GetSlotList")(CK_FALSE, ptr::null_mut(), &raw mut count)
    };
    assert_eq!(rv, CKR_CRYPTOKI_NOT_INITIALIZED);

    // Initialize, twice.
    assert_eq!(initialize(f, None), CKR_OK);
    assert_eq!(initialize(f, None), CKR_CRYPTOKI_ALREADY_INITIALIZED);

    // C_GetInfo: 3.0, blank-padded strings.
    assert_eq!(get_info(f, &raw mut info), CKR_OK);
    assert_eq!(
        (info.cryptokiVersion.major, info.cryptokiVersion.minor),
        (3, 0)
    );
    assert_eq!(&info.manufacturerID, b"FerroHSM                        ");
    assert_eq!(
        &info.libraryDescription,
        b"FerroHSM PKCS#11 module         "
    );

    // C_Finalize with pReserved set; then for real; then the module is uninitialized.
    // SAFETY: a non-NULL pReserved is only compared with NULL.
    let rv = unsafe { f.C_Finalize.expect("C_Finalize")(ptr::NonNull::dangling().as_ptr()) };
    assert_eq!(rv, CKR_ARGUMENTS_BAD);
    assert_eq!(finalize(f), CKR_OK);
    assert_eq!(get_info(f, &raw mut info), CKR_CRYPTOKI_NOT_INITIALIZED);
    assert_eq!(finalize(f), CKR_CRYPTOKI_NOT_INITIALIZED);

    // Re-initialize after finalize.
    assert_eq!(initialize(f, None), CKR_OK);
    assert_eq!(get_info(f, &raw mut info), CKR_OK);
    assert_eq!(finalize(f), CKR_OK);

    // CK_C_INITIALIZE_ARGS rules.
    let mut reserved = init_args(CKF_OS_LOCKING_OK);
    reserved.pReserved = ptr::NonNull::dangling().as_ptr();
    assert_eq!(initialize(f, Some(&mut reserved)), CKR_ARGUMENTS_BAD);
    let mut partial = CK_C_INITIALIZE_ARGS {
        UnlockMutex: None,
        ..with_mutexes(CKF_OS_LOCKING_OK)
    };
    assert_eq!(initialize(f, Some(&mut partial)), CKR_ARGUMENTS_BAD);
    assert_eq!(initialize(f, Some(&mut with_mutexes(0))), CKR_CANT_LOCK);
    assert_eq!(get_info(f, &raw mut info), CKR_CRYPTOKI_NOT_INITIALIZED);
    assert_eq!(
        initialize(f, Some(&mut with_mutexes(CKF_OS_LOCKING_OK))),
        CKR_OK
    );
    assert_eq!(finalize(f), CKR_OK);
    assert_eq!(
        initialize(f, Some(&mut init_args(CKF_OS_LOCKING_OK))),
        CKR_OK
    );
    assert_eq!(finalize(f), CKR_OK);
    assert_eq!(initialize(f, Some(&mut init_args(0))), CKR_OK);
    assert_eq!(finalize(f), CKR_OK);
}

#[test]
fn null_pointer_matrix() {
    run_child("child_null_pointer_matrix", &[]);
}

#[test]
#[ignore = "runs in a child process of `null_pointer_matrix`"]
fn child_null_pointer_matrix() {
    if !is_child() {
        return;
    }
    let lib = load();
    let f = function_list(&lib);
    assert_eq!(initialize(f, None), CKR_OK);
    let null_ulong = ptr::null_mut::<CK_ULONG>();

    assert_eq!(get_info(f, ptr::null_mut()), CKR_ARGUMENTS_BAD);
    // SAFETY: each call below passes NULL where the module must refuse it before touching
    // memory, and live locals elsewhere.
    let rv =
        unsafe { f.C_GetSlotList.expect("C_GetSlotList")(CK_TRUE, ptr::null_mut(), null_ulong) };
    assert_eq!(rv, CKR_ARGUMENTS_BAD);
    // SAFETY: as above.
    let rv = unsafe { f.C_GetSlotInfo.expect("C_GetSlotInfo")(0, ptr::null_mut()) };
    assert_eq!(rv, CKR_ARGUMENTS_BAD);
    // SAFETY: as above.
    let rv = unsafe { f.C_GetTokenInfo.expect("C_GetTokenInfo")(0, ptr::null_mut()) };
    assert_eq!(rv, CKR_ARGUMENTS_BAD);
    let flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
    // SAFETY: as above.
    let rv = unsafe {
        f.C_OpenSession.expect("C_OpenSession")(0, flags, ptr::null_mut(), None, ptr::null_mut())
    };
    assert_eq!(rv, CKR_ARGUMENTS_BAD);
    // SAFETY: as above.
    let rv = unsafe {
        f.C_GetMechanismInfo.expect("C_GetMechanismInfo")(0, CKM_SHA256, ptr::null_mut())
    };
    assert_eq!(rv, CKR_ARGUMENTS_BAD);

    // The slot list convention: a count query, then a list too short for it.
    let mut count: CK_ULONG = 0;
    // SAFETY: `count` is live; the list is NULL.
    let rv = unsafe {
        f.C_GetSlotList.expect("C_GetSlotList")(CK_FALSE, ptr::null_mut(), &raw mut count)
    };
    assert_eq!(rv, CKR_OK);
    if count > 0 {
        let needed = count;
        let mut none: [CK_SLOT_ID; 1] = [0];
        count = 0;
        // SAFETY: `none` has room for `count` (0) entries.
        let rv = unsafe {
            f.C_GetSlotList.expect("C_GetSlotList")(CK_FALSE, none.as_mut_ptr(), &raw mut count)
        };
        assert_eq!(rv, CKR_BUFFER_TOO_SMALL);
        assert_eq!(count, needed);
    }

    // Output pointers are checked before the session is even looked up.
    let session: CK_SESSION_HANDLE = 0x7777;
    let mut data = *b"data";
    // SAFETY: as above.
    let rv = unsafe {
        f.C_Sign.expect("C_Sign")(session, data.as_mut_ptr(), 4, ptr::null_mut(), null_ulong)
    };
    assert_eq!(rv, CKR_ARGUMENTS_BAD);
    // SAFETY: as above.
    let rv = unsafe { f.C_Login.expect("C_Login")(session, CKU_USER, ptr::null_mut(), 4) };
    assert_eq!(rv, CKR_ARGUMENTS_BAD);
    // SAFETY: as above.
    let rv = unsafe {
        f.C_GetAttributeValue.expect("C_GetAttributeValue")(session, 1, ptr::null_mut(), 1)
    };
    assert_eq!(rv, CKR_ARGUMENTS_BAD);
    // SAFETY: as above.
    let rv =
        unsafe { f.C_FindObjects.expect("C_FindObjects")(session, ptr::null_mut(), 1, null_ulong) };
    assert_eq!(rv, CKR_ARGUMENTS_BAD);
    // SAFETY: as above.
    let rv = unsafe { f.C_GenerateRandom.expect("C_GenerateRandom")(session, ptr::null_mut(), 16) };
    assert_eq!(rv, CKR_ARGUMENTS_BAD);
    let mut slot: CK_SLOT_ID = 0;
    // SAFETY: as above; pReserved is only compared with NULL.
    let rv = unsafe {
        f.C_WaitForSlotEvent.expect("C_WaitForSlotEvent")(
            CKF_DONT_BLOCK,
            &raw mut slot,
            ptr::NonNull::dangling().as_ptr(),
        )
    };
    assert_eq!(rv, CKR_ARGUMENTS_BAD);
    // An unknown session reaches the router, which does not know it.
    // SAFETY: the function takes no pointer.
    let rv = unsafe { f.C_GetFunctionStatus.expect("C_GetFunctionStatus")(session) };
    assert_eq!(rv, CKR_SESSION_HANDLE_INVALID);

    assert_eq!(finalize(f), CKR_OK);
}

#[test]
fn bad_config_is_general_error_with_one_line_on_stderr() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let conf = dir.path().join("ferrohsm.toml");
    std::fs::write(&conf, "colour = \"blue\"\n").expect("write configuration");
    let output = run_child("child_bad_config", &[("FERROHSM_CONF", &conf)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("ferrohsm"))
        .collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {stderr}");
    assert!(lines[0].starts_with("ferrohsm: "), "{stderr}");
    assert!(
        lines[0].contains("colour"),
        "the message names the unknown key: {stderr}"
    );
}

#[test]
#[ignore = "runs in a child process of `bad_config_is_general_error_with_one_line_on_stderr`"]
fn child_bad_config() {
    if !is_child() {
        return;
    }
    let lib = load();
    let f = function_list(&lib);
    assert_eq!(initialize(f, None), CKR_GENERAL_ERROR);
    let mut info = std::mem::MaybeUninit::<CK_INFO>::uninit();
    assert_eq!(get_info(f, info.as_mut_ptr()), CKR_CRYPTOKI_NOT_INITIALIZED);
}

#[test]
fn log_level_from_environment() {
    let level = Path::new("debug");
    let output = run_child("child_logging", &[("FERROHSM_LOG", level)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("C_GetSlotInfo: CKR_SLOT_ID_INVALID"),
        "{stderr}"
    );
}

#[test]
#[ignore = "runs in a child process of `log_level_from_environment`"]
fn child_logging() {
    if !is_child() {
        return;
    }
    let lib = load();
    let f = function_list(&lib);
    assert_eq!(initialize(f, None), CKR_OK);
    let mut info = std::mem::MaybeUninit::<CK_SLOT_INFO>::uninit();
    // SAFETY: `info` is live; the slot id is one no configuration has.
    let rv = unsafe { f.C_GetSlotInfo.expect("C_GetSlotInfo")(0xdead, info.as_mut_ptr()) };
    assert_eq!(rv, CKR_SLOT_ID_INVALID);
    assert_eq!(finalize(f), CKR_OK);
}
