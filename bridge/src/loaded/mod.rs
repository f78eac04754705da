//! The real-HSM back end: a vendor's PKCS#11 library, loaded at run time, behind [`Backend`].
//!
//! [`LoadedModule::open`] loads the library with `libloading`, takes its 3.0 function list
//! from `C_GetInterface("PKCS 11", {3, 0})` when it offers one (else the 2.x list from
//! `C_GetFunctionList`, and the 3.0-only functions answer `CKR_FUNCTION_NOT_SUPPORTED`), and
//! initialises it with `CKF_OS_LOCKING_OK`. Every `Backend` method marshals our owned types
//! into C structures that own their memory for the whole call (`marshal`), calls the one
//! wrapper for that function (`ffi`, the only file with `unsafe`), and converts the answer back.
//!
//! # Trust
//!
//! The loaded library is **trusted in-process code**. It runs in our address space with our
//! privileges, and nothing here can stop a malicious or badly broken module from reading or
//! corrupting memory: configuring a module is trusting it, exactly as an application trusts
//! the PKCS#11 library it loads. What this back end does guarantee is that it never hands the
//! module a pointer to less memory than the length next to it, and never believes the module
//! blindly: a length or count written back is checked against what was allocated before
//! anything is read, and one that exceeds it is reported as `CKR_GENERAL_ERROR` (and logged)
//! instead of being used.
//!
//! # Errors
//!
//! Return codes pass through unchanged: a standard code becomes its `Error` variant and
//! anything else `Error::Foreign(rv)` (`Error::from_rv`), so `err.rv()` is what the module
//! returned. A `CKR_BUFFER_TOO_SMALL` for an output buffer becomes
//! `Error::BufferTooSmall { needed }` with the length the module wrote.
//!
//! # Threads and lifetime
//!
//! `CKF_OS_LOCKING_OK` tells the module to expect calls from several threads at once, which
//! is what makes [`LoadedModule`] `Send + Sync`. A library is initialised once per process:
//! [`LoadedModule::open`] hands out the instance already open for the same path, and `Drop`
//! calls `C_Finalize` only if our `C_Initialize` succeeded (a module some other part of the
//! process initialised first answers `CKR_CRYPTOKI_ALREADY_INITIALIZED`, and is left to it).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use cryptoki_sys::*;
use parking_lot::Mutex;

use crate::call::*;
use crate::error::{Error, Result};
use crate::types::*;

mod attributes;
#[allow(unsafe_code)]
mod ffi;
mod marshal;

use marshal::{CMechanism, CParams, CTemplate};

/// How many handles one `C_FindObjects` call asks for.
const FIND_CHUNK: usize = 64;

/// The libraries open in this process, by canonical path, so that each is initialised once.
static OPEN: Mutex<Vec<(PathBuf, Weak<LoadedModule>)>> = Mutex::new(Vec::new());

/// The error for a module that broke the PKCS#11 contract (a length beyond its buffer, a count
/// beyond the maximum, ...): logged, and `CKR_GENERAL_ERROR` to the application.
fn contract_broken(what: &'static str) -> Error {
    log::error!("loaded PKCS#11 module broke the interface contract: {what}");
    Error::GeneralError
}

/// A real HSM's PKCS#11 library, loaded at run time and initialised.
pub struct LoadedModule {
    module: ffi::Module,
    path: PathBuf,
    /// The entry in `OPEN`.
    key: PathBuf,
}

impl Drop for LoadedModule {
    fn drop(&mut self) {
        // Finalize and leave the registry in one step, so that `open` never initialises the
        // library again while this C_Finalize is pending.
        let mut open = OPEN.lock();
        self.module.finalize();
        open.retain(|(k, m)| !(*k == self.key && m.strong_count() == 0));
    }
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("path", &self.path)
            .field("function_list_version", &self.function_list_version())
            .finish_non_exhaustive()
    }
}

impl LoadedModule {
    /// Loads and initialises the PKCS#11 library at `path`, or returns the instance already
    /// open in this process for the same file.
    ///
    /// A library that cannot be loaded, has no function list or fails `C_Initialize` is an
    /// `Error::Config` naming `path`.
    pub fn open(path: &Path) -> Result<Arc<Self>> {
        // A bare file name is found by the dynamic loader's search; it has no canonical path.
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        loop {
            let mut open = OPEN.lock();
            match open.iter().find(|(k, _)| *k == key) {
                Some((_, module)) => match module.upgrade() {
                    Some(module) => return Ok(module),
                    // Its last handle is being dropped on another thread, which finalizes it
                    // and then removes the entry. Initialising it again before that would
                    // find it "already initialised" and then lose it to that C_Finalize.
                    None => {
                        drop(open);
                        std::thread::yield_now();
                    }
                },
                None => {
                    let module = Arc::new(Self {
                        module: ffi::Module::load(path)?,
                        path: path.to_path_buf(),
                        key,
                    });
                    open.push((module.key.clone(), Arc::downgrade(&module)));
                    return Ok(module);
                }
            }
        }
    }

    /// The path the library was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The version of the function list in use: 3.x when the library offered its 3.0
    /// interface, else the version of its 2.x list.
    pub fn function_list_version(&self) -> Version {
        let v = self.module.list_version();
        Version {
            major: v.major,
            minor: v.minor,
        }
    }

    /// Whether the 3.0 functions (message-based operations, `C_LoginUser`,
    /// `C_SessionCancel`) are available.
    pub fn has_3_0_interface(&self) -> bool {
        self.function_list_version().major >= 3
    }

    /// Whether our `C_Initialize` initialised the library (so that dropping the last handle
    /// calls `C_Finalize`), as opposed to finding it already initialised in this process.
    pub fn initialized_by_us(&self) -> bool {
        self.module.initialized_by_us()
    }

    /// The library's `C_GetInfo`.
    pub fn info(&self) -> Result<Info> {
        Ok(marshal::info(&self.module.get_info()?))
    }

    /// The slot holding the token labelled `label`. Labels are compared without their blank
    /// padding; the first match in slot order wins. No such token is an `Error::Config`.
    pub fn slot_by_token_label(&self, label: &str) -> Result<SlotId> {
        let wanted = label.trim_end_matches(' ');
        let mut seen = Vec::new();
        for slot in self.module.get_slot_list(true)? {
            // A slot whose token cannot be read (removed meanwhile, ...) is not the one.
            let Ok(info) = self.module.get_token_info(slot) else {
                continue;
            };
            let found = marshal::text(&info.label);
            if found == wanted {
                return Ok(SlotId(slot));
            }
            seen.push(found);
        }
        Err(Error::Config(format!(
            "{}: no token labelled {wanted:?} (tokens present: {seen:?})",
            self.path.display()
        )))
    }
}

/// Runs `call` with the C form of `params`, then copies what the module wrote back into
/// `params` (a generated IV, a tag) when the call succeeded and was not a length query.
fn with_params<T>(
    params: &mut MechanismParams,
    query: bool,
    call: impl FnOnce(&mut CParams) -> Result<T>,
) -> Result<T> {
    let mut c = CParams::new(params)?;
    let r = call(&mut c);
    if r.is_ok() && !query {
        c.copy_back(params);
    }
    r
}

fn end_of_message(last: bool) -> CK_FLAGS {
    if last { CKF_END_OF_MESSAGE } else { 0 }
}

impl Backend for LoadedModule {
    fn call(&self, call: Call<'_>) -> Result<Reply> {
        call.dispatch(self)
    }
}

impl SlotFunctions for LoadedModule {
    // ---- slots and tokens ---------------------------------------------------------------

    fn slot_list(&self, token_present: bool) -> Result<Vec<SlotId>> {
        let slots = self.module.get_slot_list(token_present)?;
        Ok(slots.into_iter().map(SlotId).collect())
    }

    fn slot_info(&self, slot: SlotId) -> Result<SlotInfo> {
        Ok(marshal::slot_info(&self.module.get_slot_info(slot.0)?))
    }

    fn token_info(&self, slot: SlotId) -> Result<TokenInfo> {
        Ok(marshal::token_info(&self.module.get_token_info(slot.0)?))
    }

    fn mechanism_list(&self, slot: SlotId) -> Result<Vec<CK_MECHANISM_TYPE>> {
        self.module.get_mechanism_list(slot.0)
    }

    fn mechanism_info(&self, slot: SlotId, ty: CK_MECHANISM_TYPE) -> Result<MechanismInfo> {
        Ok(marshal::mechanism_info(
            &self.module.get_mechanism_info(slot.0, ty)?,
        ))
    }

    fn init_token(&self, slot: SlotId, so_pin: &[u8], label: &[u8; 32]) -> Result<()> {
        self.module.init_token(slot.0, so_pin, label)
    }

    fn wait_for_slot_event(&self, flags: CK_FLAGS) -> Result<SlotId> {
        self.module.wait_for_slot_event(flags).map(SlotId)
    }
}

impl SessionFunctions for LoadedModule {
    // ---- sessions -----------------------------------------------------------------------

    fn open_session(&self, slot: SlotId, flags: CK_FLAGS) -> Result<SessionHandle> {
        self.module.open_session(slot.0, flags).map(SessionHandle)
    }

    fn close_session(&self, session: SessionHandle) -> Result<()> {
        self.module.close_session(session.0)
    }

    fn close_all_sessions(&self, slot: SlotId) -> Result<()> {
        self.module.close_all_sessions(slot.0)
    }

    fn session_info(&self, session: SessionHandle) -> Result<SessionInfo> {
        Ok(marshal::session_info(
            &self.module.get_session_info(session.0)?,
        ))
    }

    fn session_cancel(&self, session: SessionHandle, flags: CK_FLAGS) -> Result<()> {
        self.module.session_cancel(session.0, flags)
    }

    fn operation_state(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        self.module.get_operation_state(session.0, out)
    }

    fn set_operation_state(
        &self,
        session: SessionHandle,
        state: &[u8],
        encryption_key: Option<ObjectHandle>,
        authentication_key: Option<ObjectHandle>,
    ) -> Result<()> {
        let handle = |h: Option<ObjectHandle>| h.map_or(CK_INVALID_HANDLE, |h| h.0);
        self.module.set_operation_state(
            session.0,
            state,
            handle(encryption_key),
            handle(authentication_key),
        )
    }

    // ---- PINs and login -------------------------------------------------------------------

    fn init_pin(&self, session: SessionHandle, pin: &[u8]) -> Result<()> {
        self.module.init_pin(session.0, pin)
    }

    fn set_pin(&self, session: SessionHandle, old_pin: &[u8], new_pin: &[u8]) -> Result<()> {
        self.module.set_pin(session.0, old_pin, new_pin)
    }

    fn login(&self, session: SessionHandle, user: UserType, pin: Option<&[u8]>) -> Result<()> {
        self.module.login(session.0, user, pin)
    }

    fn login_user(
        &self,
        session: SessionHandle,
        user: UserType,
        pin: Option<&[u8]>,
        username: &[u8],
    ) -> Result<()> {
        self.module.login_user(session.0, user, pin, username)
    }

    fn logout(&self, session: SessionHandle) -> Result<()> {
        self.module.logout(session.0)
    }
}

impl ObjectFunctions for LoadedModule {
    // ---- objects ------------------------------------------------------------------------

    fn create_object(&self, session: SessionHandle, template: &Template) -> Result<ObjectHandle> {
        let template = CTemplate::new(template)?;
        self.module
            .create_object(session.0, &template)
            .map(ObjectHandle)
    }

    fn copy_object(
        &self,
        session: SessionHandle,
        object: ObjectHandle,
        template: &Template,
    ) -> Result<ObjectHandle> {
        let template = CTemplate::new(template)?;
        self.module
            .copy_object(session.0, object.0, &template)
            .map(ObjectHandle)
    }

    fn destroy_object(&self, session: SessionHandle, object: ObjectHandle) -> Result<()> {
        self.module.destroy_object(session.0, object.0)
    }

    fn object_size(&self, session: SessionHandle, object: ObjectHandle) -> Result<CK_ULONG> {
        self.module.get_object_size(session.0, object.0)
    }

    fn get_attribute_value(
        &self,
        session: SessionHandle,
        object: ObjectHandle,
        types: &[CK_ULONG],
    ) -> Result<Vec<AttrAnswer>> {
        attributes::get(&self.module, session.0, object.0, types)
    }

    fn set_attribute_value(
        &self,
        session: SessionHandle,
        object: ObjectHandle,
        template: &Template,
    ) -> Result<()> {
        let template = CTemplate::new(template)?;
        self.module
            .set_attribute_value(session.0, object.0, &template)
    }

    fn find_objects_init(&self, session: SessionHandle, template: &Template) -> Result<()> {
        let template = CTemplate::new(template)?;
        self.module.find_objects_init(session.0, &template)
    }

    fn find_objects(&self, session: SessionHandle, max: usize) -> Result<Vec<ObjectHandle>> {
        let mut found = Vec::new();
        let mut chunk = [CK_INVALID_HANDLE; FIND_CHUNK];
        loop {
            let want = max.saturating_sub(found.len()).min(FIND_CHUNK);
            let buf = chunk.get_mut(..want).unwrap_or_default();
            let n = self.module.find_objects(session.0, buf)?;
            found.extend(buf.iter().take(n).map(|h| ObjectHandle(*h)));
            if n == 0 || found.len() >= max {
                return Ok(found);
            }
        }
    }

    fn find_objects_final(&self, session: SessionHandle) -> Result<()> {
        self.module.find_objects_final(session.0)
    }
}

impl CipherFunctions for LoadedModule {
    // ---- encryption ---------------------------------------------------------------------

    fn encrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        let mut mech = CMechanism::new(mech)?;
        self.module.encrypt_init(session.0, &mut mech, key.0)
    }

    fn encrypt(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.module.encrypt(session.0, data, out)
    }

    fn encrypt_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.module.encrypt_update(session.0, data, out)
    }

    fn encrypt_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        self.module.encrypt_final(session.0, out)
    }

    // ---- decryption ---------------------------------------------------------------------

    fn decrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        let mut mech = CMechanism::new(mech)?;
        self.module.decrypt_init(session.0, &mut mech, key.0)
    }

    fn decrypt(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.module.decrypt(session.0, data, out)
    }

    fn decrypt_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.module.decrypt_update(session.0, data, out)
    }

    fn decrypt_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        self.module.decrypt_final(session.0, out)
    }
}

impl DigestFunctions for LoadedModule {
    // ---- digests ------------------------------------------------------------------------

    fn digest_init(&self, session: SessionHandle, mech: &Mechanism) -> Result<()> {
        let mut mech = CMechanism::new(mech)?;
        self.module.digest_init(session.0, &mut mech)
    }

    fn digest(&self, session: SessionHandle, data: &[u8], out: Option<&mut [u8]>) -> Result<usize> {
        self.module.digest(session.0, data, out)
    }

    fn digest_update(&self, session: SessionHandle, data: &[u8]) -> Result<()> {
        self.module.digest_update(session.0, data)
    }

    fn digest_key(&self, session: SessionHandle, key: ObjectHandle) -> Result<()> {
        self.module.digest_key(session.0, key.0)
    }

    fn digest_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        self.module.digest_final(session.0, out)
    }
}

impl SignFunctions for LoadedModule {
    // ---- signatures ---------------------------------------------------------------------

    fn sign_init(&self, session: SessionHandle, mech: &Mechanism, key: ObjectHandle) -> Result<()> {
        let mut mech = CMechanism::new(mech)?;
        self.module.sign_init(session.0, &mut mech, key.0)
    }

    fn sign(&self, session: SessionHandle, data: &[u8], out: Option<&mut [u8]>) -> Result<usize> {
        self.module.sign(session.0, data, out)
    }

    fn sign_update(&self, session: SessionHandle, data: &[u8]) -> Result<()> {
        self.module.sign_update(session.0, data)
    }

    fn sign_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        self.module.sign_final(session.0, out)
    }

    fn sign_recover_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        let mut mech = CMechanism::new(mech)?;
        self.module.sign_recover_init(session.0, &mut mech, key.0)
    }

    fn sign_recover(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.module.sign_recover(session.0, data, out)
    }

    fn verify_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        let mut mech = CMechanism::new(mech)?;
        self.module.verify_init(session.0, &mut mech, key.0)
    }

    fn verify(&self, session: SessionHandle, data: &[u8], signature: &[u8]) -> Result<()> {
        self.module.verify(session.0, data, signature)
    }

    fn verify_update(&self, session: SessionHandle, data: &[u8]) -> Result<()> {
        self.module.verify_update(session.0, data)
    }

    fn verify_final(&self, session: SessionHandle, signature: &[u8]) -> Result<()> {
        self.module.verify_final(session.0, signature)
    }

    fn verify_recover_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        let mut mech = CMechanism::new(mech)?;
        self.module.verify_recover_init(session.0, &mut mech, key.0)
    }

    fn verify_recover(
        &self,
        session: SessionHandle,
        signature: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.module.verify_recover(session.0, signature, out)
    }
}

impl DualFunctions for LoadedModule {
    // ---- dual-function ------------------------------------------------------------------

    fn digest_encrypt_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.module.digest_encrypt_update(session.0, data, out)
    }

    fn decrypt_digest_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.module.decrypt_digest_update(session.0, data, out)
    }

    fn sign_encrypt_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.module.sign_encrypt_update(session.0, data, out)
    }

    fn decrypt_verify_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        self.module.decrypt_verify_update(session.0, data, out)
    }
}

impl KeyFunctions for LoadedModule {
    // ---- key management -----------------------------------------------------------------

    fn generate_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        template: &Template,
    ) -> Result<ObjectHandle> {
        let mut mech = CMechanism::new(mech)?;
        let template = CTemplate::new(template)?;
        self.module
            .generate_key(session.0, &mut mech, &template)
            .map(ObjectHandle)
    }

    fn generate_key_pair(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        public_template: &Template,
        private_template: &Template,
    ) -> Result<(ObjectHandle, ObjectHandle)> {
        let mut mech = CMechanism::new(mech)?;
        let public = CTemplate::new(public_template)?;
        let private = CTemplate::new(private_template)?;
        let (public, private) = self
            .module
            .generate_key_pair(session.0, &mut mech, &public, &private)?;
        Ok((ObjectHandle(public), ObjectHandle(private)))
    }

    fn wrap_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        wrapping_key: ObjectHandle,
        key: ObjectHandle,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        let mut mech = CMechanism::new(mech)?;
        self.module
            .wrap_key(session.0, &mut mech, wrapping_key.0, key.0, out)
    }

    fn unwrap_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        unwrapping_key: ObjectHandle,
        wrapped: &[u8],
        template: &Template,
    ) -> Result<ObjectHandle> {
        let mut mech = CMechanism::new(mech)?;
        let template = CTemplate::new(template)?;
        self.module
            .unwrap_key(session.0, &mut mech, unwrapping_key.0, wrapped, &template)
            .map(ObjectHandle)
    }

    fn derive_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        base_key: ObjectHandle,
        template: &Template,
    ) -> Result<ObjectHandle> {
        let mut mech = CMechanism::new(mech)?;
        let template = CTemplate::new(template)?;
        self.module
            .derive_key(session.0, &mut mech, base_key.0, &template)
            .map(ObjectHandle)
    }
}

impl RandomFunctions for LoadedModule {
    // ---- random -------------------------------------------------------------------------

    fn seed_random(&self, session: SessionHandle, seed: &[u8]) -> Result<()> {
        self.module.seed_random(session.0, seed)
    }

    fn generate_random(&self, session: SessionHandle, out: &mut [u8]) -> Result<()> {
        self.module.generate_random(session.0, out)
    }
}

impl MessageFunctions for LoadedModule {
    // ---- message-based encryption (3.0) -------------------------------------------------

    fn message_encrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        let mut mech = CMechanism::new(mech)?;
        self.module
            .message_encrypt_init(session.0, &mut mech, key.0)
    }

    fn encrypt_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        with_params(params, out.is_none(), |p| {
            self.module.encrypt_message(session.0, p, aad, data, out)
        })
    }

    fn encrypt_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
    ) -> Result<()> {
        with_params(params, false, |p| {
            self.module.encrypt_message_begin(session.0, p, aad)
        })
    }

    fn encrypt_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        out: Option<&mut [u8]>,
        last: bool,
    ) -> Result<usize> {
        with_params(params, out.is_none(), |p| {
            let flags = end_of_message(last);
            self.module
                .encrypt_message_next(session.0, p, data, out, flags)
        })
    }

    fn message_encrypt_final(&self, session: SessionHandle) -> Result<()> {
        self.module.message_encrypt_final(session.0)
    }

    fn message_decrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        let mut mech = CMechanism::new(mech)?;
        self.module
            .message_decrypt_init(session.0, &mut mech, key.0)
    }

    fn decrypt_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        with_params(params, out.is_none(), |p| {
            self.module.decrypt_message(session.0, p, aad, data, out)
        })
    }

    fn decrypt_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
    ) -> Result<()> {
        with_params(params, false, |p| {
            self.module.decrypt_message_begin(session.0, p, aad)
        })
    }

    fn decrypt_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        out: Option<&mut [u8]>,
        last: bool,
    ) -> Result<usize> {
        with_params(params, out.is_none(), |p| {
            let flags = end_of_message(last);
            self.module
                .decrypt_message_next(session.0, p, data, out, flags)
        })
    }

    fn message_decrypt_final(&self, session: SessionHandle) -> Result<()> {
        self.module.message_decrypt_final(session.0)
    }

    // ---- message-based signatures (3.0) -------------------------------------------------

    fn message_sign_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        let mut mech = CMechanism::new(mech)?;
        self.module.message_sign_init(session.0, &mut mech, key.0)
    }

    fn sign_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        with_params(params, out.is_none(), |p| {
            self.module.sign_message(session.0, p, data, out)
        })
    }

    fn sign_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
    ) -> Result<()> {
        with_params(params, false, |p| {
            self.module.sign_message_begin(session.0, p)
        })
    }

    fn sign_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        last: bool,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        with_params(params, last && out.is_none(), |p| {
            self.module.sign_message_next(session.0, p, data, last, out)
        })
    }

    fn message_sign_final(&self, session: SessionHandle) -> Result<()> {
        self.module.message_sign_final(session.0)
    }

    fn message_verify_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        let mut mech = CMechanism::new(mech)?;
        self.module.message_verify_init(session.0, &mut mech, key.0)
    }

    fn verify_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        signature: &[u8],
    ) -> Result<()> {
        with_params(params, false, |p| {
            self.module.verify_message(session.0, p, data, signature)
        })
    }

    fn verify_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
    ) -> Result<()> {
        with_params(params, false, |p| {
            self.module.verify_message_begin(session.0, p)
        })
    }

    fn verify_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        signature: Option<&[u8]>,
    ) -> Result<()> {
        with_params(params, false, |p| {
            self.module
                .verify_message_next(session.0, p, data, signature)
        })
    }

    fn message_verify_final(&self, session: SessionHandle) -> Result<()> {
        self.module.message_verify_final(session.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_names_the_path_when_the_library_is_missing() {
        let err = LoadedModule::open(Path::new("/nonexistent/libnothing.so")).unwrap_err();
        let Error::Config(msg) = err else {
            panic!("{err:?}")
        };
        assert!(msg.contains("/nonexistent/libnothing.so"), "{msg}");
    }

    #[test]
    fn open_refuses_a_library_that_is_not_pkcs11() {
        // libc is loadable everywhere this crate builds and has no C_GetFunctionList.
        let err = LoadedModule::open(Path::new("libc.so.6")).unwrap_err();
        let Error::Config(msg) = err else {
            panic!("{err:?}")
        };
        assert!(msg.contains("C_GetFunctionList"), "{msg}");
    }

    #[test]
    fn loaded_module_is_send_and_sync() {
        fn assert_backend<T: Backend + Send + Sync>() {}
        assert_backend::<LoadedModule>();
    }
}
