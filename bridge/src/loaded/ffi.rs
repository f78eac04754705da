//! The only place in `bridge` that runs foreign code: loading the library, reading its function
//! list, and one safe wrapper per PKCS#11 function.
//!
//! Each wrapper takes owned or borrowed Rust values (byte slices, the marshalled structures of
//! `marshal`, whose invariants say what their pointers are valid for) and returns the module's
//! `CK_RV` as `Result`, unchanged (`Error::from_rv`). Output buffers follow the PKCS#11
//! convention: `None` is a length query, and a `CKR_BUFFER_TOO_SMALL` becomes
//! `Error::BufferTooSmall { needed }` with the length the module wrote. A length the module
//! writes back is checked against the buffer before anything is read from it.
//!
//! Wrappers are grouped by the shape of the C prototype; the private shape helpers hold the
//! `unsafe` calls, and each public wrapper only picks the function pointer.

use std::marker::PhantomData;
use std::path::Path;
use std::ptr;

use cryptoki_sys::*;
use libloading::{Library, Symbol};

use super::contract_broken;
use super::marshal::{CMechanism, CParams, CTemplate, OutTemplate, from_ulen, ulen};
use crate::error::{Error, Result, rv_name};

/// How often a list is fetched again when it grew between the count and the fetch.
const LIST_ATTEMPTS: usize = 4;

/// The largest list (slots, mechanisms) accepted from a module.
const MAX_LIST: usize = 1 << 16;

/// A loaded and initialised PKCS#11 library: its function lists and the library itself.
pub(super) struct Module {
    /// The 2.x functions, copied out of the module's list (a 3.0 list starts with the same
    /// fields, so both paths fill this).
    v2: CK_FUNCTION_LIST,
    /// The 3.0 list, when the module offered one through `C_GetInterface`.
    v3: Option<CK_FUNCTION_LIST_3_0>,
    /// Whether our `C_Initialize` succeeded, so that `Drop` must call `C_Finalize`.
    finalize: bool,
    /// Never read, but it keeps every function pointer above valid: dropping it unloads the
    /// code. Declared after the lists, so it is dropped after `Drop::drop` ran `C_Finalize`.
    _lib: Library,
    /// Function pointers are `Send + Sync` to the compiler, but calling foreign code from
    /// several threads is sound only because of how the module was initialised: opt out of the
    /// auto traits and opt back in below, with the reason.
    _threads: PhantomData<*const ()>,
}

// SAFETY: `Module::load` initialises the module with `CKF_OS_LOCKING_OK` and no mutex
// callbacks, which tells it that it will be called from several threads at once and must
// protect itself with the operating system's primitives (PKCS#11 v3.1, C_Initialize). A module
// that cannot do that fails `C_Initialize` with `CKR_CANT_LOCK`, and then no `Module` exists.
// When another part of the process initialised the module first, that party shares the process
// with us and its threads, so it has the same obligation. Apart from the function pointers,
// `Module` holds only plain data, never mutated after construction.
unsafe impl Send for Module {}
// SAFETY: as for `Send`: every method takes `&self` and only calls into the module, which was
// told to expect concurrent calls.
unsafe impl Sync for Module {}

impl Module {
    /// Loads `path`, finds its function list (3.0 through `C_GetInterface` when offered, else
    /// `C_GetFunctionList`) and calls `C_Initialize` with `CKF_OS_LOCKING_OK`.
    pub(super) fn load(path: &Path) -> Result<Self> {
        let name = path.display();
        // SAFETY: loading a library runs its initialisers (ELF constructors) in this process,
        // and the library's code may do anything. The configured PKCS#11 library is trusted
        // in-process code by design (see the `loaded` module docs); this is the point at which
        // we extend that trust.
        let lib = unsafe { Library::new(path) }
            .map_err(|e| Error::Config(format!("{name}: cannot load the PKCS#11 library: {e}")))?;
        let (v2, v3) = match interface_3_0(&lib) {
            Some((v2, v3)) => (v2, Some(v3)),
            None => (function_list(&lib, path)?, None),
        };
        let mut module = Self {
            v2,
            v3,
            finalize: false,
            _lib: lib,
            _threads: PhantomData,
        };
        module.initialize(path)?;
        Ok(module)
    }

    fn initialize(&mut self, path: &Path) -> Result<()> {
        let name = path.display();
        let (Some(init), Some(_)) = (self.v2.C_Initialize, self.v2.C_Finalize) else {
            return Err(Error::Config(format!(
                "{name}: the function list has no C_Initialize or C_Finalize"
            )));
        };
        let mut args = CK_C_INITIALIZE_ARGS {
            CreateMutex: None,
            DestroyMutex: None,
            LockMutex: None,
            UnlockMutex: None,
            flags: CKF_OS_LOCKING_OK,
            pReserved: ptr::null_mut(),
        };
        // SAFETY: `args` is a valid CK_C_INITIALIZE_ARGS (no callbacks, pReserved NULL) that
        // lives on this frame for the whole call; the module only reads it during the call.
        let rv = unsafe { init((&raw mut args).cast()) };
        match rv {
            CKR_OK => self.finalize = true,
            CKR_CRYPTOKI_ALREADY_INITIALIZED => {
                // Someone else in this process owns the module's lifetime: never finalize it.
                log::info!("{name}: already initialised in this process; will not finalize it");
            }
            rv => {
                return Err(Error::Config(format!(
                    "{name}: C_Initialize failed: {} (0x{rv:08x})",
                    rv_name(rv)
                )));
            }
        }
        Ok(())
    }

    /// The version of the function list in use (3.x when `C_GetInterface` gave one).
    pub(super) fn list_version(&self) -> CK_VERSION {
        match &self.v3 {
            Some(v3) => v3.version,
            None => self.v2.version,
        }
    }

    /// Whether we initialised the module (and so finalize it on drop).
    pub(super) fn initialized_by_us(&self) -> bool {
        self.finalize
    }

    /// A 3.0 function, or `None` (→ `CKR_FUNCTION_NOT_SUPPORTED`) on a 2.x module.
    fn v3<F>(&self, pick: impl FnOnce(&CK_FUNCTION_LIST_3_0) -> Option<F>) -> Option<F> {
        self.v3.as_ref().and_then(pick)
    }

    /// `C_Finalize`, if our `C_Initialize` succeeded and it has not run yet. No call can
    /// follow: only `Drop`s call this.
    pub(super) fn finalize(&mut self) {
        if !std::mem::take(&mut self.finalize) {
            return;
        }
        if let Some(finalize) = self.v2.C_Finalize {
            // SAFETY: our C_Initialize succeeded and `finalize` was still set, so this is the
            // one C_Finalize for it; the argument must be NULL. `&mut self` means no call of
            // ours is in flight.
            let rv = unsafe { finalize(ptr::null_mut()) };
            if rv != CKR_OK {
                log::warn!("C_Finalize of a loaded module failed: {}", rv_name(rv));
            }
        }
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        self.finalize();
    }
}

/// The 3.0 function list through `C_GetInterface("PKCS 11", {3, 0})`, if exported and working.
fn interface_3_0(lib: &Library) -> Option<(CK_FUNCTION_LIST, CK_FUNCTION_LIST_3_0)> {
    // SAFETY: a symbol named C_GetInterface in a PKCS#11 library is the function of that name,
    // whose prototype is CK_C_GetInterface (PKCS#11 v3.0, C_GetInterface).
    let symbol: Symbol<'_, CK_C_GetInterface> = unsafe { lib.get(b"C_GetInterface\0") }.ok()?;
    let get_interface = (*symbol)?;
    let mut name = *b"PKCS 11\0";
    let mut version = CK_VERSION { major: 3, minor: 0 };
    let mut interface: *mut CK_INTERFACE = ptr::null_mut();
    // SAFETY: `name` is NUL-terminated, `version` and `interface` are valid for the call, and
    // flags 0 asks for no particular capability.
    let rv = unsafe { get_interface(name.as_mut_ptr(), &raw mut version, &raw mut interface, 0) };
    if rv != CKR_OK || interface.is_null() || !interface.is_aligned() {
        log::debug!(
            "C_GetInterface(\"PKCS 11\", 3.0) gave {} and no usable interface; \
             falling back to C_GetFunctionList",
            rv_name(rv)
        );
        return None;
    }
    // SAFETY: on CKR_OK the module pointed `interface` at a CK_INTERFACE it owns and keeps for
    // as long as it is loaded (checked non-null and aligned above).
    let interface = unsafe { interface.read() };
    let list = interface.pFunctionList.cast::<CK_FUNCTION_LIST_3_0>();
    if list.is_null() || !list.is_aligned() {
        return None;
    }
    // SAFETY: every PKCS#11 function list starts with its CK_VERSION.
    let list_version = unsafe { list.cast::<CK_VERSION>().read() };
    if list_version.major < 3 {
        return None;
    }
    // SAFETY: the interface we asked for is version 3.0, and a list of version 3.x is a
    // CK_FUNCTION_LIST_3_0 (or a later list, which extends it at the end).
    let v3 = unsafe { list.read() };
    // SAFETY: CK_FUNCTION_LIST_3_0 starts with the fields of CK_FUNCTION_LIST, same types and
    // order (both `repr(C)`), so the 2.x list is a prefix of the same memory.
    let v2 = unsafe { list.cast::<CK_FUNCTION_LIST>().read() };
    v2.C_Initialize?;
    Some((v2, v3))
}

/// The 2.x function list through `C_GetFunctionList`.
fn function_list(lib: &Library, path: &Path) -> Result<CK_FUNCTION_LIST> {
    let name = path.display();
    // SAFETY: a symbol named C_GetFunctionList in a PKCS#11 library is the function of that
    // name, whose prototype is CK_C_GetFunctionList.
    let symbol: Symbol<'_, CK_C_GetFunctionList> = unsafe { lib.get(b"C_GetFunctionList\0") }
        .map_err(|e| {
            Error::Config(format!(
                "{name}: not a PKCS#11 library (no C_GetFunctionList): {e}"
            ))
        })?;
    let get_function_list =
        (*symbol).ok_or_else(|| Error::Config(format!("{name}: C_GetFunctionList is NULL")))?;
    let mut list: *mut CK_FUNCTION_LIST = ptr::null_mut();
    // SAFETY: `list` is valid for a write of one pointer during the call.
    let rv = unsafe { get_function_list(&raw mut list) };
    if rv != CKR_OK {
        return Err(Error::Config(format!(
            "{name}: C_GetFunctionList failed: {} (0x{rv:08x})",
            rv_name(rv)
        )));
    }
    if list.is_null() || !list.is_aligned() {
        return Err(Error::Config(format!(
            "{name}: C_GetFunctionList returned no usable list"
        )));
    }
    // SAFETY: on CKR_OK the module pointed `list` at its CK_FUNCTION_LIST, which it keeps for
    // as long as it is loaded (checked non-null and aligned above).
    Ok(unsafe { list.read() })
}

// ---- small helpers -------------------------------------------------------------------------

fn check(rv: CK_RV) -> Result<()> {
    if rv == CKR_OK {
        Ok(())
    } else {
        Err(Error::from_rv(rv))
    }
}

fn func<F>(f: Option<F>) -> Result<F> {
    f.ok_or(Error::FunctionNotSupported)
}

/// Input bytes as C sees them. Input buffers are `const` in the spec's semantics: the module
/// only reads them, so the `*mut` of the prototypes is never written through.
fn input(data: &[u8]) -> Result<(*mut CK_BYTE, CK_ULONG)> {
    Ok((data.as_ptr().cast_mut(), ulen(data.len())?))
}

/// An optional input (a PIN on a protected authentication path, a last signature part):
/// `(NULL, 0)` when absent.
fn opt_input(data: Option<&[u8]>) -> Result<(*mut CK_BYTE, CK_ULONG)> {
    data.map_or(Ok((ptr::null_mut(), 0)), input)
}

/// An output buffer and its length, the PKCS#11 way.
struct Out<'a> {
    buf: Option<&'a mut [u8]>,
    len: CK_ULONG,
}

impl<'a> Out<'a> {
    fn new(buf: Option<&'a mut [u8]>) -> Result<Self> {
        let len = buf.as_ref().map_or(Ok(0), |b| ulen(b.len()))?;
        Ok(Self { buf, len })
    }

    /// NULL for a length query, else the caller's buffer (valid for `len` bytes).
    fn ptr(&mut self) -> *mut CK_BYTE {
        self.buf
            .as_mut()
            .map_or(ptr::null_mut(), |b| b.as_mut_ptr())
    }

    /// The result of a call that wrote `self.len`.
    fn finish(self, rv: CK_RV) -> Result<usize> {
        match rv {
            CKR_OK => {
                let n = from_ulen(self.len)?;
                if self.buf.as_ref().is_some_and(|b| n > b.len()) {
                    return Err(contract_broken("an output length exceeds the buffer"));
                }
                Ok(n)
            }
            CKR_BUFFER_TOO_SMALL => Err(Error::BufferTooSmall {
                needed: from_ulen(self.len)?,
            }),
            rv => Err(Error::from_rv(rv)),
        }
    }
}

/// A zeroed structure for the module to fill (`CK_SLOT_INFO` has no `Default`).
fn empty_slot_info() -> CK_SLOT_INFO {
    CK_SLOT_INFO {
        slotDescription: [0; 64],
        manufacturerID: [0; 32],
        flags: 0,
        hardwareVersion: CK_VERSION::default(),
        firmwareVersion: CK_VERSION::default(),
    }
}

/// The two-call idiom for `CK_ULONG` lists (slots, mechanisms): the count, then the list; again
/// if it grew in between. `call(buffer, count)` gets NULL or a buffer of `*count` elements.
fn ulong_list(
    mut call: impl FnMut(*mut CK_ULONG, *mut CK_ULONG) -> CK_RV,
) -> Result<Vec<CK_ULONG>> {
    for _ in 0..LIST_ATTEMPTS {
        let mut count: CK_ULONG = 0;
        check(call(ptr::null_mut(), &raw mut count))?;
        let capacity = from_ulen(count)?;
        if capacity == 0 {
            return Ok(Vec::new());
        }
        if capacity > MAX_LIST {
            return Err(contract_broken("an implausibly long list"));
        }
        let mut list: Vec<CK_ULONG> = vec![0; capacity];
        let mut count = ulen(capacity)?;
        match call(list.as_mut_ptr(), &raw mut count) {
            CKR_OK => {
                let n = from_ulen(count)?;
                if n > capacity {
                    return Err(contract_broken("a list count exceeds the buffer"));
                }
                list.truncate(n);
                return Ok(list);
            }
            CKR_BUFFER_TOO_SMALL => continue,
            rv => return Err(Error::from_rv(rv)),
        }
    }
    Err(contract_broken("a list kept growing between calls"))
}

// ---- shapes of prototypes ------------------------------------------------------------------
//
// Functions of one C prototype have one Rust type: `CK_C_Encrypt` is also the type of C_Sign,
// C_Digest, ...; the alias names below say which shape a helper serves.

/// `(handle)`: C_CloseSession, C_Logout, C_FindObjectsFinal, C_Message*Final, and
/// C_CloseAllSessions (a slot id is a `CK_ULONG` too).
type HandleFn = CK_C_CloseSession;
/// `(hSession, handle-or-flags)`: C_DestroyObject, C_DigestKey, C_SessionCancel.
type HandleUlongFn = CK_C_DestroyObject;
/// `(hSession, pIn, ulInLen)` read-only: C_DigestUpdate, C_SignUpdate, C_VerifyUpdate,
/// C_VerifyFinal, C_SeedRandom, C_InitPIN. (C_GenerateRandom has this type but writes: it has
/// its own wrapper.)
type InFn = CK_C_DigestUpdate;
/// `(hSession, pIn, ulInLen, pOut, pulOutLen)`: C_Encrypt, C_Sign, C_Digest, the updates ...
type InOutFn = CK_C_Encrypt;
/// `(hSession, pOut, pulOutLen)`: C_EncryptFinal, C_SignFinal, C_GetOperationState ...
type OutFn = CK_C_EncryptFinal;
/// `(hSession, pMechanism, hKey)`: every C_*Init that takes a key.
type InitFn = CK_C_EncryptInit;
/// `(hSession, pParameter, ulParameterLen, pIn, ulInLen, pOut, pulOutLen)`: C_SignMessage,
/// C_SignMessageNext.
type ParamInOutFn = CK_C_SignMessage;
/// `(hSession, pParameter, ulParameterLen, pIn1, ulIn1Len, pIn2, ulIn2Len)`:
/// C_VerifyMessage, C_VerifyMessageNext.
type ParamInInFn = CK_C_VerifyMessage;
/// `(hSession, pParameter, ulParameterLen, pIn, ulInLen)`: C_Encrypt/DecryptMessageBegin.
type ParamInFn = CK_C_EncryptMessageBegin;
/// `(hSession, pParameter, ulParameterLen)`: C_SignMessageBegin, C_VerifyMessageBegin.
type ParamFn = CK_C_SignMessageBegin;
/// `(hSession, pParameter, ulParameterLen, pAad, ulAadLen, pIn, ulInLen, pOut, pulOutLen)`:
/// C_EncryptMessage, C_DecryptMessage.
type MessageFn = CK_C_EncryptMessage;
/// `(hSession, pParameter, ulParameterLen, pIn, ulInLen, pOut, pulOutLen, flags)`:
/// C_EncryptMessageNext, C_DecryptMessageNext.
type MessageNextFn = CK_C_EncryptMessageNext;

impl Module {
    fn handle(&self, f: HandleFn, handle: CK_ULONG) -> Result<()> {
        let f = func(f)?;
        // SAFETY: the prototype takes a handle by value; nothing else is shared.
        check(unsafe { f(handle) })
    }

    fn handle_ulong(&self, f: HandleUlongFn, session: CK_ULONG, value: CK_ULONG) -> Result<()> {
        let f = func(f)?;
        // SAFETY: both arguments are plain values.
        check(unsafe { f(session, value) })
    }

    fn in_only(&self, f: InFn, session: CK_SESSION_HANDLE, data: &[u8]) -> Result<()> {
        let f = func(f)?;
        let (p, len) = input(data)?;
        // SAFETY: `p` is readable for `len` bytes for the call; functions of this shape only
        // read their input (C_GenerateRandom never comes here).
        check(unsafe { f(session, p, len) })
    }

    fn in_out(
        &self,
        f: InOutFn,
        session: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let f = func(f)?;
        let (p, len) = input(data)?;
        let mut out = Out::new(out)?;
        let p_out = out.ptr();
        // SAFETY: `p` is readable for `len` bytes; `p_out` is NULL or writable for `out.len`
        // bytes, and `out.len` is writable, all for the duration of the call.
        let rv = unsafe { f(session, p, len, p_out, &raw mut out.len) };
        out.finish(rv)
    }

    fn out(&self, f: OutFn, session: CK_SESSION_HANDLE, out: Option<&mut [u8]>) -> Result<usize> {
        let f = func(f)?;
        let mut out = Out::new(out)?;
        let p_out = out.ptr();
        // SAFETY: `p_out` is NULL or writable for `out.len` bytes, and `out.len` is writable.
        let rv = unsafe { f(session, p_out, &raw mut out.len) };
        out.finish(rv)
    }

    fn init(
        &self,
        f: InitFn,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        key: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        let f = func(f)?;
        // SAFETY: `mech` is a CK_MECHANISM whose parameter block it owns (CMechanism's
        // invariant), valid for the call.
        check(unsafe { f(session, mech.as_mut_ptr(), key) })
    }

    fn param(&self, f: ParamFn, session: CK_SESSION_HANDLE, params: &mut CParams) -> Result<()> {
        let f = func(f)?;
        // SAFETY: the parameter block is valid for `params.len()` bytes (CParams' invariant).
        check(unsafe { f(session, params.ptr(), params.len()) })
    }

    fn param_in(
        &self,
        f: ParamInFn,
        session: CK_SESSION_HANDLE,
        params: &mut CParams,
        data: &[u8],
    ) -> Result<()> {
        let f = func(f)?;
        let (p, len) = input(data)?;
        // SAFETY: the parameter block is valid (CParams' invariant); `p` is readable for
        // `len` bytes.
        check(unsafe { f(session, params.ptr(), params.len(), p, len) })
    }

    fn param_in_in(
        &self,
        f: ParamInInFn,
        session: CK_SESSION_HANDLE,
        params: &mut CParams,
        data: &[u8],
        signature: Option<&[u8]>,
    ) -> Result<()> {
        let f = func(f)?;
        let (p, len) = input(data)?;
        let (p_sig, sig_len) = opt_input(signature)?;
        // SAFETY: the parameter block is valid (CParams' invariant); `p` and `p_sig` are
        // readable for their lengths (or NULL with length 0).
        check(unsafe { f(session, params.ptr(), params.len(), p, len, p_sig, sig_len) })
    }

    fn param_in_out(
        &self,
        f: ParamInOutFn,
        session: CK_SESSION_HANDLE,
        params: &mut CParams,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let f = func(f)?;
        let (p, len) = input(data)?;
        let mut out = Out::new(out)?;
        let p_out = out.ptr();
        // SAFETY: the parameter block is valid (CParams' invariant); `p` is readable for `len`
        // bytes; `p_out` is NULL or writable for `out.len` bytes; `out.len` is writable.
        let rv = unsafe {
            f(
                session,
                params.ptr(),
                params.len(),
                p,
                len,
                p_out,
                &raw mut out.len,
            )
        };
        out.finish(rv)
    }

    fn message(
        &self,
        f: MessageFn,
        session: CK_SESSION_HANDLE,
        params: &mut CParams,
        aad: &[u8],
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let f = func(f)?;
        let (p_aad, aad_len) = input(aad)?;
        let (p, len) = input(data)?;
        let mut out = Out::new(out)?;
        let p_out = out.ptr();
        // SAFETY: the parameter block is valid (CParams' invariant); `p_aad` and `p` are
        // readable for their lengths; `p_out` is NULL or writable for `out.len` bytes.
        let rv = unsafe {
            f(
                session,
                params.ptr(),
                params.len(),
                p_aad,
                aad_len,
                p,
                len,
                p_out,
                &raw mut out.len,
            )
        };
        out.finish(rv)
    }

    fn message_next(
        &self,
        f: MessageNextFn,
        session: CK_SESSION_HANDLE,
        params: &mut CParams,
        data: &[u8],
        out: Option<&mut [u8]>,
        flags: CK_FLAGS,
    ) -> Result<usize> {
        let f = func(f)?;
        let (p, len) = input(data)?;
        let mut out = Out::new(out)?;
        let p_out = out.ptr();
        // SAFETY: the parameter block is valid (CParams' invariant); `p` is readable for `len`
        // bytes; `p_out` is NULL or writable for `out.len` bytes; `out.len` is writable.
        let rv = unsafe {
            f(
                session,
                params.ptr(),
                params.len(),
                p,
                len,
                p_out,
                &raw mut out.len,
                flags,
            )
        };
        out.finish(rv)
    }
}

// ---- one wrapper per function --------------------------------------------------------------

impl Module {
    // -- general, slots and tokens --

    /// `C_GetInfo`.
    pub(super) fn get_info(&self) -> Result<CK_INFO> {
        let f = func(self.v2.C_GetInfo)?;
        let mut info = CK_INFO::default();
        // SAFETY: `info` is a writable CK_INFO for the call.
        check(unsafe { f(&raw mut info) })?;
        Ok(info)
    }

    /// `C_GetSlotList`.
    pub(super) fn get_slot_list(&self, token_present: bool) -> Result<Vec<CK_SLOT_ID>> {
        let f = func(self.v2.C_GetSlotList)?;
        ulong_list(|list, count| {
            // SAFETY: `ulong_list` passes NULL or a buffer of `*count` slot ids, and a
            // writable count.
            unsafe { f(CK_BBOOL::from(token_present), list, count) }
        })
    }

    /// `C_GetSlotInfo`.
    pub(super) fn get_slot_info(&self, slot: CK_SLOT_ID) -> Result<CK_SLOT_INFO> {
        let f = func(self.v2.C_GetSlotInfo)?;
        let mut info = empty_slot_info();
        // SAFETY: `info` is a writable CK_SLOT_INFO for the call.
        check(unsafe { f(slot, &raw mut info) })?;
        Ok(info)
    }

    /// `C_GetTokenInfo`.
    pub(super) fn get_token_info(&self, slot: CK_SLOT_ID) -> Result<CK_TOKEN_INFO> {
        let f = func(self.v2.C_GetTokenInfo)?;
        let mut info = CK_TOKEN_INFO::default();
        // SAFETY: `info` is a writable CK_TOKEN_INFO for the call.
        check(unsafe { f(slot, &raw mut info) })?;
        Ok(info)
    }

    /// `C_GetMechanismList`.
    pub(super) fn get_mechanism_list(&self, slot: CK_SLOT_ID) -> Result<Vec<CK_MECHANISM_TYPE>> {
        let f = func(self.v2.C_GetMechanismList)?;
        ulong_list(|list, count| {
            // SAFETY: `ulong_list` passes NULL or a buffer of `*count` mechanism types, and a
            // writable count.
            unsafe { f(slot, list, count) }
        })
    }

    /// `C_GetMechanismInfo`.
    pub(super) fn get_mechanism_info(
        &self,
        slot: CK_SLOT_ID,
        ty: CK_MECHANISM_TYPE,
    ) -> Result<CK_MECHANISM_INFO> {
        let f = func(self.v2.C_GetMechanismInfo)?;
        let mut info = CK_MECHANISM_INFO::default();
        // SAFETY: `info` is a writable CK_MECHANISM_INFO for the call.
        check(unsafe { f(slot, ty, &raw mut info) })?;
        Ok(info)
    }

    /// `C_InitToken`.
    pub(super) fn init_token(
        &self,
        slot: CK_SLOT_ID,
        so_pin: &[u8],
        label: &[u8; 32],
    ) -> Result<()> {
        let f = func(self.v2.C_InitToken)?;
        let (p_pin, pin_len) = input(so_pin)?;
        // SAFETY: the PIN is readable for `pin_len` bytes and the label for the 32 bytes the
        // prototype prescribes; the module only reads both.
        check(unsafe { f(slot, p_pin, pin_len, label.as_ptr().cast_mut()) })
    }

    /// `C_WaitForSlotEvent`.
    pub(super) fn wait_for_slot_event(&self, flags: CK_FLAGS) -> Result<CK_SLOT_ID> {
        let f = func(self.v2.C_WaitForSlotEvent)?;
        let mut slot: CK_SLOT_ID = 0;
        // SAFETY: `slot` is writable for the call; pReserved must be NULL.
        check(unsafe { f(flags, &raw mut slot, ptr::null_mut()) })?;
        Ok(slot)
    }

    // -- sessions --

    /// `C_OpenSession`, without a notification callback.
    pub(super) fn open_session(
        &self,
        slot: CK_SLOT_ID,
        flags: CK_FLAGS,
    ) -> Result<CK_SESSION_HANDLE> {
        let f = func(self.v2.C_OpenSession)?;
        let mut session: CK_SESSION_HANDLE = CK_INVALID_HANDLE;
        // SAFETY: no callback and no application pointer are passed; `session` is writable.
        check(unsafe { f(slot, flags, ptr::null_mut(), None, &raw mut session) })?;
        Ok(session)
    }

    /// `C_CloseSession`.
    pub(super) fn close_session(&self, session: CK_SESSION_HANDLE) -> Result<()> {
        self.handle(self.v2.C_CloseSession, session)
    }

    /// `C_CloseAllSessions`.
    pub(super) fn close_all_sessions(&self, slot: CK_SLOT_ID) -> Result<()> {
        self.handle(self.v2.C_CloseAllSessions, slot)
    }

    /// `C_GetSessionInfo`.
    pub(super) fn get_session_info(&self, session: CK_SESSION_HANDLE) -> Result<CK_SESSION_INFO> {
        let f = func(self.v2.C_GetSessionInfo)?;
        let mut info = CK_SESSION_INFO::default();
        // SAFETY: `info` is a writable CK_SESSION_INFO for the call.
        check(unsafe { f(session, &raw mut info) })?;
        Ok(info)
    }

    /// `C_SessionCancel` (3.0).
    pub(super) fn session_cancel(&self, session: CK_SESSION_HANDLE, flags: CK_FLAGS) -> Result<()> {
        self.handle_ulong(self.v3(|l| l.C_SessionCancel), session, flags)
    }

    /// `C_GetOperationState`.
    pub(super) fn get_operation_state(
        &self,
        session: CK_SESSION_HANDLE,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.out(self.v2.C_GetOperationState, session, out)
    }

    /// `C_SetOperationState`.
    pub(super) fn set_operation_state(
        &self,
        session: CK_SESSION_HANDLE,
        state: &[u8],
        encryption_key: CK_OBJECT_HANDLE,
        authentication_key: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        let f = func(self.v2.C_SetOperationState)?;
        let (p, len) = input(state)?;
        // SAFETY: the state is readable for `len` bytes; the module only reads it.
        check(unsafe { f(session, p, len, encryption_key, authentication_key) })
    }

    // -- PINs and login --

    /// `C_InitPIN`.
    pub(super) fn init_pin(&self, session: CK_SESSION_HANDLE, pin: &[u8]) -> Result<()> {
        self.in_only(self.v2.C_InitPIN, session, pin)
    }

    /// `C_SetPIN`.
    pub(super) fn set_pin(&self, session: CK_SESSION_HANDLE, old: &[u8], new: &[u8]) -> Result<()> {
        let f = func(self.v2.C_SetPIN)?;
        let (p_old, old_len) = input(old)?;
        let (p_new, new_len) = input(new)?;
        // SAFETY: both PINs are readable for their lengths; the module only reads them.
        check(unsafe { f(session, p_old, old_len, p_new, new_len) })
    }

    /// `C_Login`; `None` is a protected authentication path (NULL PIN).
    pub(super) fn login(
        &self,
        session: CK_SESSION_HANDLE,
        user: CK_USER_TYPE,
        pin: Option<&[u8]>,
    ) -> Result<()> {
        let f = func(self.v2.C_Login)?;
        let (p, len) = opt_input(pin)?;
        // SAFETY: the PIN is NULL with length 0 or readable for `len` bytes.
        check(unsafe { f(session, user, p, len) })
    }

    /// `C_LoginUser` (3.0).
    pub(super) fn login_user(
        &self,
        session: CK_SESSION_HANDLE,
        user: CK_USER_TYPE,
        pin: Option<&[u8]>,
        username: &[u8],
    ) -> Result<()> {
        let f = func(self.v3(|l| l.C_LoginUser))?;
        let (p, len) = opt_input(pin)?;
        let (p_name, name_len) = input(username)?;
        // SAFETY: the PIN is NULL with length 0 or readable for `len` bytes; the user name is
        // readable for `name_len` bytes.
        check(unsafe { f(session, user, p, len, p_name, name_len) })
    }

    /// `C_Logout`.
    pub(super) fn logout(&self, session: CK_SESSION_HANDLE) -> Result<()> {
        self.handle(self.v2.C_Logout, session)
    }

    // -- objects --

    /// `C_CreateObject`.
    pub(super) fn create_object(
        &self,
        session: CK_SESSION_HANDLE,
        template: &CTemplate,
    ) -> Result<CK_OBJECT_HANDLE> {
        let f = func(self.v2.C_CreateObject)?;
        let count = template.count()?;
        let mut object = CK_INVALID_HANDLE;
        // SAFETY: the template is `count` attributes whose values it owns (CTemplate's
        // invariant); the module only reads it. `object` is writable.
        check(unsafe {
            f(
                session,
                template.as_ptr().cast_mut(),
                count,
                &raw mut object,
            )
        })?;
        Ok(object)
    }

    /// `C_CopyObject`.
    pub(super) fn copy_object(
        &self,
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        template: &CTemplate,
    ) -> Result<CK_OBJECT_HANDLE> {
        let f = func(self.v2.C_CopyObject)?;
        let count = template.count()?;
        let mut copy = CK_INVALID_HANDLE;
        // SAFETY: as for C_CreateObject.
        check(unsafe {
            f(
                session,
                object,
                template.as_ptr().cast_mut(),
                count,
                &raw mut copy,
            )
        })?;
        Ok(copy)
    }

    /// `C_DestroyObject`.
    pub(super) fn destroy_object(
        &self,
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        self.handle_ulong(self.v2.C_DestroyObject, session, object)
    }

    /// `C_GetObjectSize`.
    pub(super) fn get_object_size(
        &self,
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
    ) -> Result<CK_ULONG> {
        let f = func(self.v2.C_GetObjectSize)?;
        let mut size: CK_ULONG = 0;
        // SAFETY: `size` is writable for the call.
        check(unsafe { f(session, object, &raw mut size) })?;
        Ok(size)
    }

    /// `C_GetAttributeValue`: the raw return value, because `CKR_ATTRIBUTE_SENSITIVE`,
    /// `CKR_ATTRIBUTE_TYPE_INVALID` and `CKR_BUFFER_TOO_SMALL` still fill the template.
    pub(super) fn get_attribute_value(
        &self,
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        template: &mut OutTemplate,
    ) -> Result<CK_RV> {
        let f = func(self.v2.C_GetAttributeValue)?;
        let count = template.count()?;
        // SAFETY: the template is `count` attributes, each with a NULL pValue or one pointing
        // to `ulValueLen` writable bytes it owns (OutTemplate's invariant), for the call.
        Ok(unsafe { f(session, object, template.as_mut_ptr(), count) })
    }

    /// `C_SetAttributeValue`.
    pub(super) fn set_attribute_value(
        &self,
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        template: &CTemplate,
    ) -> Result<()> {
        let f = func(self.v2.C_SetAttributeValue)?;
        let count = template.count()?;
        // SAFETY: as for C_CreateObject.
        check(unsafe { f(session, object, template.as_ptr().cast_mut(), count) })
    }

    /// `C_FindObjectsInit`.
    pub(super) fn find_objects_init(
        &self,
        session: CK_SESSION_HANDLE,
        template: &CTemplate,
    ) -> Result<()> {
        let f = func(self.v2.C_FindObjectsInit)?;
        let count = template.count()?;
        // SAFETY: as for C_CreateObject.
        check(unsafe { f(session, template.as_ptr().cast_mut(), count) })
    }

    /// `C_FindObjects` into `found`; returns how many handles were written.
    pub(super) fn find_objects(
        &self,
        session: CK_SESSION_HANDLE,
        found: &mut [CK_OBJECT_HANDLE],
    ) -> Result<usize> {
        let f = func(self.v2.C_FindObjects)?;
        let max = ulen(found.len())?;
        let mut count: CK_ULONG = 0;
        // SAFETY: `found` is writable for `max` handles and `count` is writable.
        check(unsafe { f(session, found.as_mut_ptr(), max, &raw mut count) })?;
        let n = from_ulen(count)?;
        if n > found.len() {
            return Err(contract_broken("C_FindObjects: count exceeds the maximum"));
        }
        Ok(n)
    }

    /// `C_FindObjectsFinal`.
    pub(super) fn find_objects_final(&self, session: CK_SESSION_HANDLE) -> Result<()> {
        self.handle(self.v2.C_FindObjectsFinal, session)
    }

    // -- encryption and decryption --

    /// `C_EncryptInit`.
    pub(super) fn encrypt_init(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        key: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        self.init(self.v2.C_EncryptInit, session, mech, key)
    }

    /// `C_Encrypt`.
    pub(super) fn encrypt(
        &self,
        session: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.in_out(self.v2.C_Encrypt, session, data, out)
    }

    /// `C_EncryptUpdate`.
    pub(super) fn encrypt_update(
        &self,
        session: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.in_out(self.v2.C_EncryptUpdate, session, data, out)
    }

    /// `C_EncryptFinal`.
    pub(super) fn encrypt_final(
        &self,
        session: CK_SESSION_HANDLE,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.out(self.v2.C_EncryptFinal, session, out)
    }

    /// `C_DecryptInit`.
    pub(super) fn decrypt_init(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        key: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        self.init(self.v2.C_DecryptInit, session, mech, key)
    }

    /// `C_Decrypt`.
    pub(super) fn decrypt(
        &self,
        session: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.in_out(self.v2.C_Decrypt, session, data, out)
    }

    /// `C_DecryptUpdate`.
    pub(super) fn decrypt_update(
        &self,
        session: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.in_out(self.v2.C_DecryptUpdate, session, data, out)
    }

    /// `C_DecryptFinal`.
    pub(super) fn decrypt_final(
        &self,
        session: CK_SESSION_HANDLE,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.out(self.v2.C_DecryptFinal, session, out)
    }

    // -- digests --

    /// `C_DigestInit`.
    pub(super) fn digest_init(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
    ) -> Result<()> {
        let f = func(self.v2.C_DigestInit)?;
        // SAFETY: `mech` is a CK_MECHANISM whose parameter block it owns (CMechanism's
        // invariant), valid for the call.
        check(unsafe { f(session, mech.as_mut_ptr()) })
    }

    /// `C_Digest`.
    pub(super) fn digest(
        &self,
        session: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.in_out(self.v2.C_Digest, session, data, out)
    }

    /// `C_DigestUpdate`.
    pub(super) fn digest_update(&self, session: CK_SESSION_HANDLE, data: &[u8]) -> Result<()> {
        self.in_only(self.v2.C_DigestUpdate, session, data)
    }

    /// `C_DigestKey`.
    pub(super) fn digest_key(
        &self,
        session: CK_SESSION_HANDLE,
        key: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        self.handle_ulong(self.v2.C_DigestKey, session, key)
    }

    /// `C_DigestFinal`.
    pub(super) fn digest_final(
        &self,
        session: CK_SESSION_HANDLE,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.out(self.v2.C_DigestFinal, session, out)
    }

    // -- signatures and verification --

    /// `C_SignInit`.
    pub(super) fn sign_init(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        key: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        self.init(self.v2.C_SignInit, session, mech, key)
    }

    /// `C_Sign`.
    pub(super) fn sign(
        &self,
        session: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.in_out(self.v2.C_Sign, session, data, out)
    }

    /// `C_SignUpdate`.
    pub(super) fn sign_update(&self, session: CK_SESSION_HANDLE, data: &[u8]) -> Result<()> {
        self.in_only(self.v2.C_SignUpdate, session, data)
    }

    /// `C_SignFinal`.
    pub(super) fn sign_final(
        &self,
        session: CK_SESSION_HANDLE,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.out(self.v2.C_SignFinal, session, out)
    }

    /// `C_SignRecoverInit`.
    pub(super) fn sign_recover_init(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        key: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        self.init(self.v2.C_SignRecoverInit, session, mech, key)
    }

    /// `C_SignRecover`.
    pub(super) fn sign_recover(
        &self,
        session: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.in_out(self.v2.C_SignRecover, session, data, out)
    }

    /// `C_VerifyInit`.
    pub(super) fn verify_init(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        key: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        self.init(self.v2.C_VerifyInit, session, mech, key)
    }

    /// `C_Verify`.
    pub(super) fn verify(
        &self,
        session: CK_SESSION_HANDLE,
        data: &[u8],
        signature: &[u8],
    ) -> Result<()> {
        let f = func(self.v2.C_Verify)?;
        let (p, len) = input(data)?;
        let (p_sig, sig_len) = input(signature)?;
        // SAFETY: data and signature are readable for their lengths; the module only reads.
        check(unsafe { f(session, p, len, p_sig, sig_len) })
    }

    /// `C_VerifyUpdate`.
    pub(super) fn verify_update(&self, session: CK_SESSION_HANDLE, data: &[u8]) -> Result<()> {
        self.in_only(self.v2.C_VerifyUpdate, session, data)
    }

    /// `C_VerifyFinal`.
    pub(super) fn verify_final(&self, session: CK_SESSION_HANDLE, signature: &[u8]) -> Result<()> {
        self.in_only(self.v2.C_VerifyFinal, session, signature)
    }

    /// `C_VerifyRecoverInit`.
    pub(super) fn verify_recover_init(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        key: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        self.init(self.v2.C_VerifyRecoverInit, session, mech, key)
    }

    /// `C_VerifyRecover`.
    pub(super) fn verify_recover(
        &self,
        session: CK_SESSION_HANDLE,
        signature: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.in_out(self.v2.C_VerifyRecover, session, signature, out)
    }

    // -- dual-function --

    /// `C_DigestEncryptUpdate`.
    pub(super) fn digest_encrypt_update(
        &self,
        session: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.in_out(self.v2.C_DigestEncryptUpdate, session, data, out)
    }

    /// `C_DecryptDigestUpdate`.
    pub(super) fn decrypt_digest_update(
        &self,
        session: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.in_out(self.v2.C_DecryptDigestUpdate, session, data, out)
    }

    /// `C_SignEncryptUpdate`.
    pub(super) fn sign_encrypt_update(
        &self,
        session: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.in_out(self.v2.C_SignEncryptUpdate, session, data, out)
    }

    /// `C_DecryptVerifyUpdate`.
    pub(super) fn decrypt_verify_update(
        &self,
        session: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.in_out(self.v2.C_DecryptVerifyUpdate, session, data, out)
    }

    // -- key management --

    /// `C_GenerateKey`.
    pub(super) fn generate_key(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        template: &CTemplate,
    ) -> Result<CK_OBJECT_HANDLE> {
        let f = func(self.v2.C_GenerateKey)?;
        let count = template.count()?;
        let mut key = CK_INVALID_HANDLE;
        // SAFETY: mechanism and template satisfy their types' invariants (they own what they
        // point to); the template is only read; `key` is writable.
        check(unsafe {
            f(
                session,
                mech.as_mut_ptr(),
                template.as_ptr().cast_mut(),
                count,
                &raw mut key,
            )
        })?;
        Ok(key)
    }

    /// `C_GenerateKeyPair`: (public, private).
    pub(super) fn generate_key_pair(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        public: &CTemplate,
        private: &CTemplate,
    ) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE)> {
        let f = func(self.v2.C_GenerateKeyPair)?;
        let (public_count, private_count) = (public.count()?, private.count()?);
        let (mut public_key, mut private_key) = (CK_INVALID_HANDLE, CK_INVALID_HANDLE);
        // SAFETY: as for C_GenerateKey, with two templates and two writable handles.
        check(unsafe {
            f(
                session,
                mech.as_mut_ptr(),
                public.as_ptr().cast_mut(),
                public_count,
                private.as_ptr().cast_mut(),
                private_count,
                &raw mut public_key,
                &raw mut private_key,
            )
        })?;
        Ok((public_key, private_key))
    }

    /// `C_WrapKey`.
    pub(super) fn wrap_key(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        wrapping_key: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let f = func(self.v2.C_WrapKey)?;
        let mut out = Out::new(out)?;
        let p_out = out.ptr();
        // SAFETY: the mechanism owns its parameters (CMechanism's invariant); `p_out` is NULL
        // or writable for `out.len` bytes, and `out.len` is writable.
        let rv = unsafe {
            f(
                session,
                mech.as_mut_ptr(),
                wrapping_key,
                key,
                p_out,
                &raw mut out.len,
            )
        };
        out.finish(rv)
    }

    /// `C_UnwrapKey`.
    pub(super) fn unwrap_key(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        unwrapping_key: CK_OBJECT_HANDLE,
        wrapped: &[u8],
        template: &CTemplate,
    ) -> Result<CK_OBJECT_HANDLE> {
        let f = func(self.v2.C_UnwrapKey)?;
        let (p, len) = input(wrapped)?;
        let count = template.count()?;
        let mut key = CK_INVALID_HANDLE;
        // SAFETY: mechanism and template satisfy their invariants; the wrapped key is readable
        // for `len` bytes; `key` is writable.
        check(unsafe {
            f(
                session,
                mech.as_mut_ptr(),
                unwrapping_key,
                p,
                len,
                template.as_ptr().cast_mut(),
                count,
                &raw mut key,
            )
        })?;
        Ok(key)
    }

    /// `C_DeriveKey`.
    pub(super) fn derive_key(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        base_key: CK_OBJECT_HANDLE,
        template: &CTemplate,
    ) -> Result<CK_OBJECT_HANDLE> {
        let f = func(self.v2.C_DeriveKey)?;
        let count = template.count()?;
        let mut key = CK_INVALID_HANDLE;
        // SAFETY: mechanism and template satisfy their invariants; `key` is writable.
        check(unsafe {
            f(
                session,
                mech.as_mut_ptr(),
                base_key,
                template.as_ptr().cast_mut(),
                count,
                &raw mut key,
            )
        })?;
        Ok(key)
    }

    // -- random --

    /// `C_SeedRandom`.
    pub(super) fn seed_random(&self, session: CK_SESSION_HANDLE, seed: &[u8]) -> Result<()> {
        self.in_only(self.v2.C_SeedRandom, session, seed)
    }

    /// `C_GenerateRandom`.
    pub(super) fn generate_random(&self, session: CK_SESSION_HANDLE, out: &mut [u8]) -> Result<()> {
        let f = func(self.v2.C_GenerateRandom)?;
        let len = ulen(out.len())?;
        // SAFETY: `out` is writable for `len` bytes for the call.
        check(unsafe { f(session, out.as_mut_ptr(), len) })
    }

    // -- message-based encryption and decryption (3.0) --

    /// `C_MessageEncryptInit`.
    pub(super) fn message_encrypt_init(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        key: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        self.init(self.v3(|l| l.C_MessageEncryptInit), session, mech, key)
    }

    /// `C_EncryptMessage`.
    pub(super) fn encrypt_message(
        &self,
        session: CK_SESSION_HANDLE,
        params: &mut CParams,
        aad: &[u8],
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let f = self.v3(|l| l.C_EncryptMessage);
        self.message(f, session, params, aad, data, out)
    }

    /// `C_EncryptMessageBegin`.
    pub(super) fn encrypt_message_begin(
        &self,
        session: CK_SESSION_HANDLE,
        params: &mut CParams,
        aad: &[u8],
    ) -> Result<()> {
        self.param_in(self.v3(|l| l.C_EncryptMessageBegin), session, params, aad)
    }

    /// `C_EncryptMessageNext`.
    pub(super) fn encrypt_message_next(
        &self,
        session: CK_SESSION_HANDLE,
        params: &mut CParams,
        data: &[u8],
        out: Option<&mut [u8]>,
        flags: CK_FLAGS,
    ) -> Result<usize> {
        let f = self.v3(|l| l.C_EncryptMessageNext);
        self.message_next(f, session, params, data, out, flags)
    }

    /// `C_MessageEncryptFinal`.
    pub(super) fn message_encrypt_final(&self, session: CK_SESSION_HANDLE) -> Result<()> {
        self.handle(self.v3(|l| l.C_MessageEncryptFinal), session)
    }

    /// `C_MessageDecryptInit`.
    pub(super) fn message_decrypt_init(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        key: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        self.init(self.v3(|l| l.C_MessageDecryptInit), session, mech, key)
    }

    /// `C_DecryptMessage`.
    pub(super) fn decrypt_message(
        &self,
        session: CK_SESSION_HANDLE,
        params: &mut CParams,
        aad: &[u8],
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let f = self.v3(|l| l.C_DecryptMessage);
        self.message(f, session, params, aad, data, out)
    }

    /// `C_DecryptMessageBegin`.
    pub(super) fn decrypt_message_begin(
        &self,
        session: CK_SESSION_HANDLE,
        params: &mut CParams,
        aad: &[u8],
    ) -> Result<()> {
        self.param_in(self.v3(|l| l.C_DecryptMessageBegin), session, params, aad)
    }

    /// `C_DecryptMessageNext`.
    pub(super) fn decrypt_message_next(
        &self,
        session: CK_SESSION_HANDLE,
        params: &mut CParams,
        data: &[u8],
        out: Option<&mut [u8]>,
        flags: CK_FLAGS,
    ) -> Result<usize> {
        let f = self.v3(|l| l.C_DecryptMessageNext);
        self.message_next(f, session, params, data, out, flags)
    }

    /// `C_MessageDecryptFinal`.
    pub(super) fn message_decrypt_final(&self, session: CK_SESSION_HANDLE) -> Result<()> {
        self.handle(self.v3(|l| l.C_MessageDecryptFinal), session)
    }

    // -- message-based signatures and verification (3.0) --

    /// `C_MessageSignInit`.
    pub(super) fn message_sign_init(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        key: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        self.init(self.v3(|l| l.C_MessageSignInit), session, mech, key)
    }

    /// `C_SignMessage`.
    pub(super) fn sign_message(
        &self,
        session: CK_SESSION_HANDLE,
        params: &mut CParams,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.param_in_out(self.v3(|l| l.C_SignMessage), session, params, data, out)
    }

    /// `C_SignMessageBegin`.
    pub(super) fn sign_message_begin(
        &self,
        session: CK_SESSION_HANDLE,
        params: &mut CParams,
    ) -> Result<()> {
        self.param(self.v3(|l| l.C_SignMessageBegin), session, params)
    }

    /// `C_SignMessageNext`. When `last` is false the signature pointer and its length pointer
    /// are both NULL ("more data follows") and nothing is produced.
    pub(super) fn sign_message_next(
        &self,
        session: CK_SESSION_HANDLE,
        params: &mut CParams,
        data: &[u8],
        last: bool,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let f = self.v3(|l| l.C_SignMessageNext);
        if last {
            return self.param_in_out(f, session, params, data, out);
        }
        let f = func(f)?;
        let (p, len) = input(data)?;
        // SAFETY: the parameter block is valid (CParams' invariant) and `p` is readable for
        // `len` bytes; NULL signature and length pointers are the spec's "not the last part".
        check(unsafe {
            f(
                session,
                params.ptr(),
                params.len(),
                p,
                len,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        })?;
        Ok(0)
    }

    /// `C_MessageSignFinal`.
    pub(super) fn message_sign_final(&self, session: CK_SESSION_HANDLE) -> Result<()> {
        self.handle(self.v3(|l| l.C_MessageSignFinal), session)
    }

    /// `C_MessageVerifyInit`.
    pub(super) fn message_verify_init(
        &self,
        session: CK_SESSION_HANDLE,
        mech: &mut CMechanism,
        key: CK_OBJECT_HANDLE,
    ) -> Result<()> {
        self.init(self.v3(|l| l.C_MessageVerifyInit), session, mech, key)
    }

    /// `C_VerifyMessage`.
    pub(super) fn verify_message(
        &self,
        session: CK_SESSION_HANDLE,
        params: &mut CParams,
        data: &[u8],
        signature: &[u8],
    ) -> Result<()> {
        let f = self.v3(|l| l.C_VerifyMessage);
        self.param_in_in(f, session, params, data, Some(signature))
    }

    /// `C_VerifyMessageBegin`.
    pub(super) fn verify_message_begin(
        &self,
        session: CK_SESSION_HANDLE,
        params: &mut CParams,
    ) -> Result<()> {
        self.param(self.v3(|l| l.C_VerifyMessageBegin), session, params)
    }

    /// `C_VerifyMessageNext`; `signature` is `Some` on the last part (NULL, 0 otherwise).
    pub(super) fn verify_message_next(
        &self,
        session: CK_SESSION_HANDLE,
        params: &mut CParams,
        data: &[u8],
        signature: Option<&[u8]>,
    ) -> Result<()> {
        let f = self.v3(|l| l.C_VerifyMessageNext);
        self.param_in_in(f, session, params, data, signature)
    }

    /// `C_MessageVerifyFinal`.
    pub(super) fn message_verify_final(&self, session: CK_SESSION_HANDLE) -> Result<()> {
        self.handle(self.v3(|l| l.C_MessageVerifyFinal), session)
    }
}
