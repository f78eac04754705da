//! The `Backend` trait: PKCS#11 shaped, owned types only.
//!
//! Every slot the module shows is served by one backend: the simulated firmware, a loaded
//! vendor module, or a remote daemon. The router holds several and virtualises slot ids and
//! session handles; object handles pass through unchanged.
//!
//! # Output convention
//!
//! Every method that produces bytes takes `out: Option<&mut [u8]>` and returns the number of
//! bytes produced (or needed). `None` is a length query. A buffer that is too short gives
//! `Err(Error::BufferTooSmall { needed })`. Neither a length query nor `BufferTooSmall` ends
//! the active operation; any other outcome of a single-part or final call does (PKCS#11 v3.1
//! §5.2: "A call to C_Sign always terminates the active signing operation unless it returns
//! CKR_BUFFER_TOO_SMALL or is a successful call ... to determine the length of the buffer").
//!
//! Methods a backend does not implement keep the default: `CKR_FUNCTION_NOT_SUPPORTED`.

use cryptoki_sys::{CK_FLAGS, CK_MECHANISM_TYPE, CK_ULONG};

use crate::error::{Error, Result};
use crate::types::*;

/// `Err(CKR_FUNCTION_NOT_SUPPORTED)`, the default of every optional method.
fn unsupported<T>() -> Result<T> {
    Err(Error::FunctionNotSupported)
}

/// A provider of PKCS#11 slots: the simulated firmware, a real HSM's module, a remote daemon.
#[allow(unused_variables)]
pub trait Backend: Send + Sync {
    // ---- slots and tokens ---------------------------------------------------------------

    /// `C_GetSlotList`.
    fn slot_list(&self, token_present: bool) -> Result<Vec<SlotId>>;
    /// `C_GetSlotInfo`.
    fn slot_info(&self, slot: SlotId) -> Result<SlotInfo>;
    /// `C_GetTokenInfo`.
    fn token_info(&self, slot: SlotId) -> Result<TokenInfo>;
    /// `C_GetMechanismList`.
    fn mechanism_list(&self, slot: SlotId) -> Result<Vec<CK_MECHANISM_TYPE>>;
    /// `C_GetMechanismInfo`.
    fn mechanism_info(&self, slot: SlotId, ty: CK_MECHANISM_TYPE) -> Result<MechanismInfo>;
    /// `C_InitToken`; `label` is the 32-byte blank-padded label.
    fn init_token(&self, slot: SlotId, so_pin: &[u8], label: &[u8; 32]) -> Result<()> {
        unsupported()
    }
    /// `C_WaitForSlotEvent`.
    fn wait_for_slot_event(&self, flags: CK_FLAGS) -> Result<SlotId> {
        unsupported()
    }

    // ---- sessions -----------------------------------------------------------------------

    /// `C_OpenSession` (notification callbacks are not forwarded).
    fn open_session(&self, slot: SlotId, flags: CK_FLAGS) -> Result<SessionHandle>;
    /// `C_CloseSession`.
    fn close_session(&self, session: SessionHandle) -> Result<()>;
    /// `C_CloseAllSessions`.
    fn close_all_sessions(&self, slot: SlotId) -> Result<()>;
    /// `C_GetSessionInfo`.
    fn session_info(&self, session: SessionHandle) -> Result<SessionInfo>;
    /// `C_SessionCancel` (3.0).
    fn session_cancel(&self, session: SessionHandle, flags: CK_FLAGS) -> Result<()> {
        unsupported()
    }
    /// `C_GetOperationState`.
    fn operation_state(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        unsupported()
    }
    /// `C_SetOperationState`.
    fn set_operation_state(
        &self,
        session: SessionHandle,
        state: &[u8],
        encryption_key: Option<ObjectHandle>,
        authentication_key: Option<ObjectHandle>,
    ) -> Result<()> {
        unsupported()
    }

    // ---- PINs and login -------------------------------------------------------------------

    /// `C_InitPIN`.
    fn init_pin(&self, session: SessionHandle, pin: &[u8]) -> Result<()> {
        unsupported()
    }
    /// `C_SetPIN`.
    fn set_pin(&self, session: SessionHandle, old_pin: &[u8], new_pin: &[u8]) -> Result<()> {
        unsupported()
    }
    /// `C_Login`; `pin` is `None` for a protected authentication path.
    fn login(&self, session: SessionHandle, user: UserType, pin: Option<&[u8]>) -> Result<()> {
        unsupported()
    }
    /// `C_LoginUser` (3.0).
    fn login_user(
        &self,
        session: SessionHandle,
        user: UserType,
        pin: Option<&[u8]>,
        username: &[u8],
    ) -> Result<()> {
        unsupported()
    }
    /// `C_Logout`.
    fn logout(&self, session: SessionHandle) -> Result<()> {
        unsupported()
    }

    // ---- objects ------------------------------------------------------------------------

    /// `C_CreateObject`.
    fn create_object(&self, session: SessionHandle, template: &Template) -> Result<ObjectHandle> {
        unsupported()
    }
    /// `C_CopyObject`.
    fn copy_object(
        &self,
        session: SessionHandle,
        object: ObjectHandle,
        template: &Template,
    ) -> Result<ObjectHandle> {
        unsupported()
    }
    /// `C_DestroyObject`.
    fn destroy_object(&self, session: SessionHandle, object: ObjectHandle) -> Result<()> {
        unsupported()
    }
    /// `C_GetObjectSize`.
    fn object_size(&self, session: SessionHandle, object: ObjectHandle) -> Result<CK_ULONG> {
        unsupported()
    }
    /// `C_GetAttributeValue`: one answer per requested type, in order. The shim applies the
    /// buffer rules (`CK_UNAVAILABLE_INFORMATION`, `CKR_BUFFER_TOO_SMALL`) and computes the
    /// combined return code.
    fn get_attribute_value(
        &self,
        session: SessionHandle,
        object: ObjectHandle,
        types: &[CK_ULONG],
    ) -> Result<Vec<AttrAnswer>> {
        unsupported()
    }
    /// `C_SetAttributeValue`: all or nothing.
    fn set_attribute_value(
        &self,
        session: SessionHandle,
        object: ObjectHandle,
        template: &Template,
    ) -> Result<()> {
        unsupported()
    }
    /// `C_FindObjectsInit`.
    fn find_objects_init(&self, session: SessionHandle, template: &Template) -> Result<()> {
        unsupported()
    }
    /// `C_FindObjects`: at most `max` handles.
    fn find_objects(&self, session: SessionHandle, max: usize) -> Result<Vec<ObjectHandle>> {
        unsupported()
    }
    /// `C_FindObjectsFinal`.
    fn find_objects_final(&self, session: SessionHandle) -> Result<()> {
        unsupported()
    }

    // ---- encryption ---------------------------------------------------------------------

    /// `C_EncryptInit`.
    fn encrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        unsupported()
    }
    /// `C_Encrypt`.
    fn encrypt(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        unsupported()
    }
    /// `C_EncryptUpdate`.
    fn encrypt_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        unsupported()
    }
    /// `C_EncryptFinal`.
    fn encrypt_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        unsupported()
    }

    // ---- decryption ---------------------------------------------------------------------

    /// `C_DecryptInit`.
    fn decrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        unsupported()
    }
    /// `C_Decrypt`.
    fn decrypt(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        unsupported()
    }
    /// `C_DecryptUpdate`.
    fn decrypt_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        unsupported()
    }
    /// `C_DecryptFinal`.
    fn decrypt_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        unsupported()
    }

    // ---- digests ------------------------------------------------------------------------

    /// `C_DigestInit`.
    fn digest_init(&self, session: SessionHandle, mech: &Mechanism) -> Result<()> {
        unsupported()
    }
    /// `C_Digest`.
    fn digest(&self, session: SessionHandle, data: &[u8], out: Option<&mut [u8]>) -> Result<usize> {
        unsupported()
    }
    /// `C_DigestUpdate`.
    fn digest_update(&self, session: SessionHandle, data: &[u8]) -> Result<()> {
        unsupported()
    }
    /// `C_DigestKey`.
    fn digest_key(&self, session: SessionHandle, key: ObjectHandle) -> Result<()> {
        unsupported()
    }
    /// `C_DigestFinal`.
    fn digest_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        unsupported()
    }

    // ---- signatures ---------------------------------------------------------------------

    /// `C_SignInit`.
    fn sign_init(&self, session: SessionHandle, mech: &Mechanism, key: ObjectHandle) -> Result<()> {
        unsupported()
    }
    /// `C_Sign`.
    fn sign(&self, session: SessionHandle, data: &[u8], out: Option<&mut [u8]>) -> Result<usize> {
        unsupported()
    }
    /// `C_SignUpdate`.
    fn sign_update(&self, session: SessionHandle, data: &[u8]) -> Result<()> {
        unsupported()
    }
    /// `C_SignFinal`.
    fn sign_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        unsupported()
    }
    /// `C_SignRecoverInit`.
    fn sign_recover_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        unsupported()
    }
    /// `C_SignRecover`.
    fn sign_recover(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        unsupported()
    }
    /// `C_VerifyInit`.
    fn verify_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        unsupported()
    }
    /// `C_Verify`.
    fn verify(&self, session: SessionHandle, data: &[u8], signature: &[u8]) -> Result<()> {
        unsupported()
    }
    /// `C_VerifyUpdate`.
    fn verify_update(&self, session: SessionHandle, data: &[u8]) -> Result<()> {
        unsupported()
    }
    /// `C_VerifyFinal`.
    fn verify_final(&self, session: SessionHandle, signature: &[u8]) -> Result<()> {
        unsupported()
    }
    /// `C_VerifyRecoverInit`.
    fn verify_recover_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        unsupported()
    }
    /// `C_VerifyRecover`.
    fn verify_recover(
        &self,
        session: SessionHandle,
        signature: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        unsupported()
    }

    // ---- dual-function ------------------------------------------------------------------

    /// `C_DigestEncryptUpdate`.
    fn digest_encrypt_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        unsupported()
    }
    /// `C_DecryptDigestUpdate`.
    fn decrypt_digest_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        unsupported()
    }
    /// `C_SignEncryptUpdate`.
    fn sign_encrypt_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        unsupported()
    }
    /// `C_DecryptVerifyUpdate`.
    fn decrypt_verify_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        unsupported()
    }

    // ---- key management -----------------------------------------------------------------

    /// `C_GenerateKey`.
    fn generate_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        template: &Template,
    ) -> Result<ObjectHandle> {
        unsupported()
    }
    /// `C_GenerateKeyPair`: (public, private).
    fn generate_key_pair(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        public_template: &Template,
        private_template: &Template,
    ) -> Result<(ObjectHandle, ObjectHandle)> {
        unsupported()
    }
    /// `C_WrapKey`.
    fn wrap_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        wrapping_key: ObjectHandle,
        key: ObjectHandle,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        unsupported()
    }
    /// `C_UnwrapKey`.
    fn unwrap_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        unwrapping_key: ObjectHandle,
        wrapped: &[u8],
        template: &Template,
    ) -> Result<ObjectHandle> {
        unsupported()
    }
    /// `C_DeriveKey`.
    fn derive_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        base_key: ObjectHandle,
        template: &Template,
    ) -> Result<ObjectHandle> {
        unsupported()
    }

    // ---- random -------------------------------------------------------------------------

    /// `C_SeedRandom`.
    fn seed_random(&self, session: SessionHandle, seed: &[u8]) -> Result<()> {
        unsupported()
    }
    /// `C_GenerateRandom`: fills `out`.
    fn generate_random(&self, session: SessionHandle, out: &mut [u8]) -> Result<()> {
        unsupported()
    }

    // ---- message-based encryption (3.0) -------------------------------------------------

    /// `C_MessageEncryptInit`.
    fn message_encrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        unsupported()
    }
    /// `C_EncryptMessage`. `params` is updated in place (a generated IV, the tag); the shim
    /// writes it back to the caller's structure.
    fn encrypt_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        unsupported()
    }
    /// `C_EncryptMessageBegin`.
    fn encrypt_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
    ) -> Result<()> {
        unsupported()
    }
    /// `C_EncryptMessageNext`; `last` is `flags & CKF_END_OF_MESSAGE`.
    fn encrypt_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        out: Option<&mut [u8]>,
        last: bool,
    ) -> Result<usize> {
        unsupported()
    }
    /// `C_MessageEncryptFinal`.
    fn message_encrypt_final(&self, session: SessionHandle) -> Result<()> {
        unsupported()
    }
    /// `C_MessageDecryptInit`.
    fn message_decrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        unsupported()
    }
    /// `C_DecryptMessage`.
    fn decrypt_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        unsupported()
    }
    /// `C_DecryptMessageBegin`.
    fn decrypt_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
    ) -> Result<()> {
        unsupported()
    }
    /// `C_DecryptMessageNext`.
    fn decrypt_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        out: Option<&mut [u8]>,
        last: bool,
    ) -> Result<usize> {
        unsupported()
    }
    /// `C_MessageDecryptFinal`.
    fn message_decrypt_final(&self, session: SessionHandle) -> Result<()> {
        unsupported()
    }

    // ---- message-based signatures (3.0) -------------------------------------------------

    /// `C_MessageSignInit`.
    fn message_sign_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        unsupported()
    }
    /// `C_SignMessage`.
    fn sign_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        unsupported()
    }
    /// `C_SignMessageBegin`.
    fn sign_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
    ) -> Result<()> {
        unsupported()
    }
    /// `C_SignMessageNext`. `last` is false when the caller passed no signature length pointer
    /// (more data follows); then `out` is `None` and nothing is produced.
    fn sign_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        last: bool,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        unsupported()
    }
    /// `C_MessageSignFinal`.
    fn message_sign_final(&self, session: SessionHandle) -> Result<()> {
        unsupported()
    }
    /// `C_MessageVerifyInit`.
    fn message_verify_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        unsupported()
    }
    /// `C_VerifyMessage`.
    fn verify_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        signature: &[u8],
    ) -> Result<()> {
        unsupported()
    }
    /// `C_VerifyMessageBegin`.
    fn verify_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
    ) -> Result<()> {
        unsupported()
    }
    /// `C_VerifyMessageNext`; `signature` is `Some` on the last part.
    fn verify_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        signature: Option<&[u8]>,
    ) -> Result<()> {
        unsupported()
    }
    /// `C_MessageVerifyFinal`.
    fn message_verify_final(&self, session: SessionHandle) -> Result<()> {
        unsupported()
    }
}
