//! The router: one `Backend` in front of several, so that a single module shows simulated,
//! bridged and remote slots together.
//!
//! It virtualises slot ids and session handles only. Object handles pass through unchanged:
//! every call that carries one also carries the session that owns it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cryptoki_sys::*;
use parking_lot::{Mutex, RwLock};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::types::*;

/// Which slots of a backend the router shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlotSelect {
    /// Every slot the backend reports (the simulator's default home).
    All,
    /// Exactly one slot of the backend (a `[[slot]]` entry of the configuration).
    Only(SlotId),
}

/// A backend as the router mounts it.
pub struct Mount {
    /// The backend.
    pub backend: Arc<dyn Backend>,
    /// The slots of it that are shown.
    pub select: SlotSelect,
}

#[derive(Clone, Copy)]
struct Route {
    mount: usize,
    inner: SessionHandle,
    slot: SlotId,
}

/// Maps the application's slot ids and session handles onto mounted backends.
pub struct Router {
    mounts: Vec<Mount>,
    /// Virtual slot id → (mount, inner slot), and the reverse; ids are assigned in discovery
    /// order and stay stable for the router's life.
    slots: Mutex<SlotTable>,
    sessions: RwLock<HashMap<CK_SESSION_HANDLE, Route>>,
    next_session: AtomicU64,
}

#[derive(Default)]
struct SlotTable {
    by_virtual: Vec<(usize, SlotId)>,
    by_inner: HashMap<(usize, SlotId), SlotId>,
}

impl SlotTable {
    fn virtual_id(&mut self, mount: usize, inner: SlotId) -> SlotId {
        if let Some(v) = self.by_inner.get(&(mount, inner)) {
            return *v;
        }
        let v = SlotId(self.by_virtual.len() as CK_SLOT_ID);
        self.by_virtual.push((mount, inner));
        self.by_inner.insert((mount, inner), v);
        v
    }
}

impl Router {
    /// The inner slots mount `m` contributes to `C_GetSlotList`.
    fn mount_slots(m: &Mount, token_present: bool) -> Result<Vec<SlotId>> {
        match &m.select {
            SlotSelect::All => m.backend.slot_list(token_present),
            SlotSelect::Only(s) => {
                if token_present {
                    let info = m.backend.slot_info(*s)?;
                    if info.flags & CKF_TOKEN_PRESENT == 0 {
                        return Ok(Vec::new());
                    }
                }
                Ok(vec![*s])
            }
        }
    }
    /// A router over `mounts`, shown in order.
    pub fn new(mounts: Vec<Mount>) -> Self {
        let router = Self {
            mounts,
            slots: Mutex::new(SlotTable::default()),
            sessions: RwLock::new(HashMap::new()),
            next_session: AtomicU64::new(1),
        };
        // Number the slots known now, so ids follow configuration order.
        let _ = router.slot_list(false);
        router
    }

    /// The mounted backends.
    pub fn mounts(&self) -> &[Mount] {
        &self.mounts
    }

    fn resolve_slot(&self, slot: SlotId) -> Result<(&dyn Backend, SlotId, usize)> {
        let table = self.slots.lock();
        let (mount, inner) = *usize::try_from(slot.0)
            .ok()
            .and_then(|i| table.by_virtual.get(i))
            .ok_or(Error::SlotIdInvalid)?;
        let m = self.mounts.get(mount).ok_or(Error::SlotIdInvalid)?;
        Ok((m.backend.as_ref(), inner, mount))
    }

    fn route(&self, session: SessionHandle) -> Result<(&dyn Backend, SessionHandle)> {
        let route = *self
            .sessions
            .read()
            .get(&session.0)
            .ok_or(Error::SessionHandleInvalid)?;
        let m = self
            .mounts
            .get(route.mount)
            .ok_or(Error::SessionHandleInvalid)?;
        Ok((m.backend.as_ref(), route.inner))
    }

    fn route_full(&self, session: SessionHandle) -> Result<Route> {
        self.sessions
            .read()
            .get(&session.0)
            .copied()
            .ok_or(Error::SessionHandleInvalid)
    }

    /// Forgets a session whose backend says it no longer exists.
    fn forget_if_gone<T>(&self, session: SessionHandle, r: Result<T>) -> Result<T> {
        if matches!(
            r,
            Err(Error::SessionHandleInvalid) | Err(Error::SessionClosed)
        ) {
            self.sessions.write().remove(&session.0);
        }
        r
    }
}

/// Routes a session-scoped call to its backend, with the inner session handle.
macro_rules! via_session {
    ($self:ident, $session:ident, |$b:ident, $s:ident| $call:expr) => {{
        let ($b, $s) = $self.route($session)?;
        let r = $call;
        $self.forget_if_gone($session, r)
    }};
}

impl Backend for Router {
    /// Every mount's slots. A mount that cannot answer (a daemon that is down, a real HSM
    /// that lost its device) is left out of the list, with a warning, so that the other
    /// mounts' slots stay usable; only when no mount answers is its error the call's.
    fn slot_list(&self, token_present: bool) -> Result<Vec<SlotId>> {
        let mut out = Vec::new();
        let mut answered = false;
        let mut first_error = None;
        for (i, m) in self.mounts.iter().enumerate() {
            let inner = match Self::mount_slots(m, token_present) {
                Ok(inner) => inner,
                Err(e) => {
                    log::warn!("slot list: mount {i} did not answer ({e}); its slots are left out");
                    first_error.get_or_insert(e);
                    continue;
                }
            };
            answered = true;
            let mut table = self.slots.lock();
            out.extend(inner.into_iter().map(|s| table.virtual_id(i, s)));
        }
        match first_error {
            Some(e) if !answered => Err(e),
            _ => Ok(out),
        }
    }

    fn slot_info(&self, slot: SlotId) -> Result<SlotInfo> {
        let (b, s, _) = self.resolve_slot(slot)?;
        b.slot_info(s)
    }

    fn token_info(&self, slot: SlotId) -> Result<TokenInfo> {
        let (b, s, _) = self.resolve_slot(slot)?;
        b.token_info(s)
    }

    fn mechanism_list(&self, slot: SlotId) -> Result<Vec<CK_MECHANISM_TYPE>> {
        let (b, s, _) = self.resolve_slot(slot)?;
        b.mechanism_list(s)
    }

    fn mechanism_info(&self, slot: SlotId, ty: CK_MECHANISM_TYPE) -> Result<MechanismInfo> {
        let (b, s, _) = self.resolve_slot(slot)?;
        b.mechanism_info(s, ty)
    }

    fn init_token(&self, slot: SlotId, so_pin: &[u8], label: &[u8; 32]) -> Result<()> {
        let (b, s, _) = self.resolve_slot(slot)?;
        b.init_token(s, so_pin, label)
    }

    fn wait_for_slot_event(&self, flags: CK_FLAGS) -> Result<SlotId> {
        if flags & CKF_DONT_BLOCK != 0 {
            return Err(Error::NoEvent);
        }
        Err(Error::FunctionNotSupported)
    }

    fn open_session(&self, slot: SlotId, flags: CK_FLAGS) -> Result<SessionHandle> {
        let (b, s, mount) = self.resolve_slot(slot)?;
        let inner = b.open_session(s, flags)?;
        let handle = self.next_session.fetch_add(1, Ordering::Relaxed);
        let handle = CK_SESSION_HANDLE::try_from(handle).map_err(|_| Error::SessionCount)?;
        self.sessions
            .write()
            .insert(handle, Route { mount, inner, slot });
        Ok(SessionHandle(handle))
    }

    fn close_session(&self, session: SessionHandle) -> Result<()> {
        let (b, s) = self.route(session)?;
        let r = b.close_session(s);
        if r.is_ok()
            || matches!(
                r,
                Err(Error::SessionHandleInvalid) | Err(Error::SessionClosed)
            )
        {
            self.sessions.write().remove(&session.0);
        }
        r
    }

    fn close_all_sessions(&self, slot: SlotId) -> Result<()> {
        let (b, s, _) = self.resolve_slot(slot)?;
        b.close_all_sessions(s)?;
        self.sessions.write().retain(|_, r| r.slot != slot);
        Ok(())
    }

    fn session_info(&self, session: SessionHandle) -> Result<SessionInfo> {
        let route = self.route_full(session)?;
        let (b, s) = self.route(session)?;
        let r = b.session_info(s).map(|mut info| {
            info.slot = route.slot;
            info
        });
        self.forget_if_gone(session, r)
    }

    fn session_cancel(&self, session: SessionHandle, flags: CK_FLAGS) -> Result<()> {
        via_session!(self, session, |b, s| b.session_cancel(s, flags))
    }

    fn operation_state(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        via_session!(self, session, |b, s| b.operation_state(s, out))
    }

    fn set_operation_state(
        &self,
        session: SessionHandle,
        state: &[u8],
        encryption_key: Option<ObjectHandle>,
        authentication_key: Option<ObjectHandle>,
    ) -> Result<()> {
        via_session!(self, session, |b, s| b.set_operation_state(
            s,
            state,
            encryption_key,
            authentication_key
        ))
    }

    fn init_pin(&self, session: SessionHandle, pin: &[u8]) -> Result<()> {
        via_session!(self, session, |b, s| b.init_pin(s, pin))
    }

    fn set_pin(&self, session: SessionHandle, old_pin: &[u8], new_pin: &[u8]) -> Result<()> {
        via_session!(self, session, |b, s| b.set_pin(s, old_pin, new_pin))
    }

    fn login(&self, session: SessionHandle, user: UserType, pin: Option<&[u8]>) -> Result<()> {
        via_session!(self, session, |b, s| b.login(s, user, pin))
    }

    fn login_user(
        &self,
        session: SessionHandle,
        user: UserType,
        pin: Option<&[u8]>,
        username: &[u8],
    ) -> Result<()> {
        via_session!(self, session, |b, s| b.login_user(s, user, pin, username))
    }

    fn logout(&self, session: SessionHandle) -> Result<()> {
        via_session!(self, session, |b, s| b.logout(s))
    }

    fn create_object(&self, session: SessionHandle, template: &Template) -> Result<ObjectHandle> {
        via_session!(self, session, |b, s| b.create_object(s, template))
    }

    fn copy_object(
        &self,
        session: SessionHandle,
        object: ObjectHandle,
        template: &Template,
    ) -> Result<ObjectHandle> {
        via_session!(self, session, |b, s| b.copy_object(s, object, template))
    }

    fn destroy_object(&self, session: SessionHandle, object: ObjectHandle) -> Result<()> {
        via_session!(self, session, |b, s| b.destroy_object(s, object))
    }

    fn object_size(&self, session: SessionHandle, object: ObjectHandle) -> Result<CK_ULONG> {
        via_session!(self, session, |b, s| b.object_size(s, object))
    }

    fn get_attribute_value(
        &self,
        session: SessionHandle,
        object: ObjectHandle,
        types: &[CK_ULONG],
    ) -> Result<Vec<AttrAnswer>> {
        via_session!(self, session, |b, s| b
            .get_attribute_value(s, object, types))
    }

    fn set_attribute_value(
        &self,
        session: SessionHandle,
        object: ObjectHandle,
        template: &Template,
    ) -> Result<()> {
        via_session!(self, session, |b, s| b
            .set_attribute_value(s, object, template))
    }

    fn find_objects_init(&self, session: SessionHandle, template: &Template) -> Result<()> {
        via_session!(self, session, |b, s| b.find_objects_init(s, template))
    }

    fn find_objects(&self, session: SessionHandle, max: usize) -> Result<Vec<ObjectHandle>> {
        via_session!(self, session, |b, s| b.find_objects(s, max))
    }

    fn find_objects_final(&self, session: SessionHandle) -> Result<()> {
        via_session!(self, session, |b, s| b.find_objects_final(s))
    }

    fn encrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        via_session!(self, session, |b, s| b.encrypt_init(s, mech, key))
    }

    fn encrypt(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        via_session!(self, session, |b, s| b.encrypt(s, data, out))
    }

    fn encrypt_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        via_session!(self, session, |b, s| b.encrypt_update(s, data, out))
    }

    fn encrypt_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        via_session!(self, session, |b, s| b.encrypt_final(s, out))
    }

    fn decrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        via_session!(self, session, |b, s| b.decrypt_init(s, mech, key))
    }

    fn decrypt(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        via_session!(self, session, |b, s| b.decrypt(s, data, out))
    }

    fn decrypt_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        via_session!(self, session, |b, s| b.decrypt_update(s, data, out))
    }

    fn decrypt_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        via_session!(self, session, |b, s| b.decrypt_final(s, out))
    }

    fn digest_init(&self, session: SessionHandle, mech: &Mechanism) -> Result<()> {
        via_session!(self, session, |b, s| b.digest_init(s, mech))
    }

    fn digest(&self, session: SessionHandle, data: &[u8], out: Option<&mut [u8]>) -> Result<usize> {
        via_session!(self, session, |b, s| b.digest(s, data, out))
    }

    fn digest_update(&self, session: SessionHandle, data: &[u8]) -> Result<()> {
        via_session!(self, session, |b, s| b.digest_update(s, data))
    }

    fn digest_key(&self, session: SessionHandle, key: ObjectHandle) -> Result<()> {
        via_session!(self, session, |b, s| b.digest_key(s, key))
    }

    fn digest_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        via_session!(self, session, |b, s| b.digest_final(s, out))
    }

    fn sign_init(&self, session: SessionHandle, mech: &Mechanism, key: ObjectHandle) -> Result<()> {
        via_session!(self, session, |b, s| b.sign_init(s, mech, key))
    }

    fn sign(&self, session: SessionHandle, data: &[u8], out: Option<&mut [u8]>) -> Result<usize> {
        via_session!(self, session, |b, s| b.sign(s, data, out))
    }

    fn sign_update(&self, session: SessionHandle, data: &[u8]) -> Result<()> {
        via_session!(self, session, |b, s| b.sign_update(s, data))
    }

    fn sign_final(&self, session: SessionHandle, out: Option<&mut [u8]>) -> Result<usize> {
        via_session!(self, session, |b, s| b.sign_final(s, out))
    }

    fn sign_recover_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        via_session!(self, session, |b, s| b.sign_recover_init(s, mech, key))
    }

    fn sign_recover(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        via_session!(self, session, |b, s| b.sign_recover(s, data, out))
    }

    fn verify_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        via_session!(self, session, |b, s| b.verify_init(s, mech, key))
    }

    fn verify(&self, session: SessionHandle, data: &[u8], signature: &[u8]) -> Result<()> {
        via_session!(self, session, |b, s| b.verify(s, data, signature))
    }

    fn verify_update(&self, session: SessionHandle, data: &[u8]) -> Result<()> {
        via_session!(self, session, |b, s| b.verify_update(s, data))
    }

    fn verify_final(&self, session: SessionHandle, signature: &[u8]) -> Result<()> {
        via_session!(self, session, |b, s| b.verify_final(s, signature))
    }

    fn verify_recover_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        via_session!(self, session, |b, s| b.verify_recover_init(s, mech, key))
    }

    fn verify_recover(
        &self,
        session: SessionHandle,
        signature: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        via_session!(self, session, |b, s| b.verify_recover(s, signature, out))
    }

    fn digest_encrypt_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        via_session!(self, session, |b, s| b.digest_encrypt_update(s, data, out))
    }

    fn decrypt_digest_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        via_session!(self, session, |b, s| b.decrypt_digest_update(s, data, out))
    }

    fn sign_encrypt_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        via_session!(self, session, |b, s| b.sign_encrypt_update(s, data, out))
    }

    fn decrypt_verify_update(
        &self,
        session: SessionHandle,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        via_session!(self, session, |b, s| b.decrypt_verify_update(s, data, out))
    }

    fn generate_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        template: &Template,
    ) -> Result<ObjectHandle> {
        via_session!(self, session, |b, s| b.generate_key(s, mech, template))
    }

    fn generate_key_pair(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        public_template: &Template,
        private_template: &Template,
    ) -> Result<(ObjectHandle, ObjectHandle)> {
        via_session!(self, session, |b, s| b.generate_key_pair(
            s,
            mech,
            public_template,
            private_template
        ))
    }

    fn wrap_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        wrapping_key: ObjectHandle,
        key: ObjectHandle,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        via_session!(self, session, |b, s| b.wrap_key(
            s,
            mech,
            wrapping_key,
            key,
            out
        ))
    }

    fn unwrap_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        unwrapping_key: ObjectHandle,
        wrapped: &[u8],
        template: &Template,
    ) -> Result<ObjectHandle> {
        via_session!(self, session, |b, s| b.unwrap_key(
            s,
            mech,
            unwrapping_key,
            wrapped,
            template
        ))
    }

    fn derive_key(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        base_key: ObjectHandle,
        template: &Template,
    ) -> Result<ObjectHandle> {
        via_session!(self, session, |b, s| b
            .derive_key(s, mech, base_key, template))
    }

    fn seed_random(&self, session: SessionHandle, seed: &[u8]) -> Result<()> {
        via_session!(self, session, |b, s| b.seed_random(s, seed))
    }

    fn generate_random(&self, session: SessionHandle, out: &mut [u8]) -> Result<()> {
        via_session!(self, session, |b, s| b.generate_random(s, out))
    }

    fn message_encrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        via_session!(self, session, |b, s| b.message_encrypt_init(s, mech, key))
    }

    fn encrypt_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        via_session!(self, session, |b, s| b
            .encrypt_message(s, params, aad, data, out))
    }

    fn encrypt_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
    ) -> Result<()> {
        via_session!(self, session, |b, s| b
            .encrypt_message_begin(s, params, aad))
    }

    fn encrypt_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        out: Option<&mut [u8]>,
        last: bool,
    ) -> Result<usize> {
        via_session!(self, session, |b, s| b
            .encrypt_message_next(s, params, data, out, last))
    }

    fn message_encrypt_final(&self, session: SessionHandle) -> Result<()> {
        via_session!(self, session, |b, s| b.message_encrypt_final(s))
    }

    fn message_decrypt_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        via_session!(self, session, |b, s| b.message_decrypt_init(s, mech, key))
    }

    fn decrypt_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        via_session!(self, session, |b, s| b
            .decrypt_message(s, params, aad, data, out))
    }

    fn decrypt_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        aad: &[u8],
    ) -> Result<()> {
        via_session!(self, session, |b, s| b
            .decrypt_message_begin(s, params, aad))
    }

    fn decrypt_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        out: Option<&mut [u8]>,
        last: bool,
    ) -> Result<usize> {
        via_session!(self, session, |b, s| b
            .decrypt_message_next(s, params, data, out, last))
    }

    fn message_decrypt_final(&self, session: SessionHandle) -> Result<()> {
        via_session!(self, session, |b, s| b.message_decrypt_final(s))
    }

    fn message_sign_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        via_session!(self, session, |b, s| b.message_sign_init(s, mech, key))
    }

    fn sign_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        via_session!(self, session, |b, s| b.sign_message(s, params, data, out))
    }

    fn sign_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
    ) -> Result<()> {
        via_session!(self, session, |b, s| b.sign_message_begin(s, params))
    }

    fn sign_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        last: bool,
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        via_session!(self, session, |b, s| b
            .sign_message_next(s, params, data, last, out))
    }

    fn message_sign_final(&self, session: SessionHandle) -> Result<()> {
        via_session!(self, session, |b, s| b.message_sign_final(s))
    }

    fn message_verify_init(
        &self,
        session: SessionHandle,
        mech: &Mechanism,
        key: ObjectHandle,
    ) -> Result<()> {
        via_session!(self, session, |b, s| b.message_verify_init(s, mech, key))
    }

    fn verify_message(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        signature: &[u8],
    ) -> Result<()> {
        via_session!(self, session, |b, s| b
            .verify_message(s, params, data, signature))
    }

    fn verify_message_begin(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
    ) -> Result<()> {
        via_session!(self, session, |b, s| b.verify_message_begin(s, params))
    }

    fn verify_message_next(
        &self,
        session: SessionHandle,
        params: &mut MechanismParams,
        data: &[u8],
        signature: Option<&[u8]>,
    ) -> Result<()> {
        via_session!(self, session, |b, s| b
            .verify_message_next(s, params, data, signature))
    }

    fn message_verify_final(&self, session: SessionHandle) -> Result<()> {
        via_session!(self, session, |b, s| b.message_verify_final(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A backend with `n` slots whose session handles all start at 1, to provoke collisions.
    struct Fake {
        slots: Vec<SlotId>,
        next: AtomicU64,
        /// A backend that cannot answer (a daemon that is down).
        down: bool,
    }

    impl Fake {
        fn new(slots: &[CK_SLOT_ID]) -> Arc<Self> {
            Arc::new(Self {
                slots: slots.iter().map(|s| SlotId(*s)).collect(),
                next: AtomicU64::new(1),
                down: false,
            })
        }

        fn down() -> Arc<Self> {
            Arc::new(Self {
                slots: Vec::new(),
                next: AtomicU64::new(1),
                down: true,
            })
        }
    }

    impl Backend for Fake {
        fn slot_list(&self, _: bool) -> Result<Vec<SlotId>> {
            if self.down {
                return Err(Error::DeviceRemoved);
            }
            Ok(self.slots.clone())
        }
        fn slot_info(&self, slot: SlotId) -> Result<SlotInfo> {
            if self.down {
                return Err(Error::DeviceRemoved);
            }
            Ok(SlotInfo {
                description: format!("fake {}", slot.0),
                manufacturer: String::new(),
                flags: CKF_TOKEN_PRESENT,
                hardware_version: Version::default(),
                firmware_version: Version::default(),
            })
        }
        fn token_info(&self, _: SlotId) -> Result<TokenInfo> {
            Err(Error::TokenNotPresent)
        }
        fn mechanism_list(&self, _: SlotId) -> Result<Vec<CK_MECHANISM_TYPE>> {
            Ok(vec![])
        }
        fn mechanism_info(&self, _: SlotId, _: CK_MECHANISM_TYPE) -> Result<MechanismInfo> {
            Err(Error::MechanismInvalid)
        }
        fn open_session(&self, slot: SlotId, _: CK_FLAGS) -> Result<SessionHandle> {
            if !self.slots.contains(&slot) {
                return Err(Error::SlotIdInvalid);
            }
            Ok(SessionHandle(self.next.fetch_add(1, Ordering::Relaxed)))
        }
        fn close_session(&self, _: SessionHandle) -> Result<()> {
            Ok(())
        }
        fn close_all_sessions(&self, _: SlotId) -> Result<()> {
            Ok(())
        }
        fn session_info(&self, s: SessionHandle) -> Result<SessionInfo> {
            Ok(SessionInfo {
                slot: SlotId(99),
                state: CKS_RO_PUBLIC_SESSION,
                flags: s.0,
                device_error: 0,
            })
        }
    }

    #[test]
    fn slots_of_two_backends_get_distinct_virtual_ids() {
        let a = Fake::new(&[0, 1]);
        let b = Fake::new(&[0x2a3b]);
        let r = Router::new(vec![
            Mount {
                backend: a,
                select: SlotSelect::All,
            },
            Mount {
                backend: b,
                select: SlotSelect::Only(SlotId(0x2a3b)),
            },
        ]);
        assert_eq!(
            r.slot_list(true).unwrap(),
            vec![SlotId(0), SlotId(1), SlotId(2)]
        );
        assert_eq!(r.slot_info(SlotId(2)).unwrap().description, "fake 10811");
        assert_eq!(r.slot_info(SlotId(3)), Err(Error::SlotIdInvalid));
    }

    #[test]
    fn a_mount_that_is_down_leaves_the_others_listed() {
        let mount = |backend: Arc<Fake>, select| Mount { backend, select };
        let r = Router::new(vec![
            mount(Fake::down(), SlotSelect::All),
            mount(Fake::new(&[3]), SlotSelect::All),
            mount(Fake::down(), SlotSelect::Only(SlotId(9))),
        ]);
        let slots = r.slot_list(true).unwrap();
        assert_eq!(slots.len(), 1);
        assert_eq!(r.slot_info(slots[0]).unwrap().description, "fake 3");
        // Without the token-present filter, a configured slot (`Only`) is listed unasked.
        let all = r.slot_list(false).unwrap();
        assert_eq!((all.len(), all[0]), (2, slots[0]), "virtual ids are stable");
        // Alone, a mount that is down is the call's error.
        let alone = Router::new(vec![mount(Fake::down(), SlotSelect::All)]);
        assert_eq!(alone.slot_list(false), Err(Error::DeviceRemoved));
    }

    #[test]
    fn colliding_inner_session_handles_stay_distinct() {
        let r = Router::new(vec![
            Mount {
                backend: Fake::new(&[0]),
                select: SlotSelect::All,
            },
            Mount {
                backend: Fake::new(&[7]),
                select: SlotSelect::All,
            },
        ]);
        let s1 = r.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
        let s2 = r.open_session(SlotId(1), CKF_SERIAL_SESSION).unwrap();
        assert_ne!(s1, s2);
        assert_eq!(r.session_info(s1).unwrap().slot, SlotId(0));
        assert_eq!(r.session_info(s2).unwrap().slot, SlotId(1));
        r.close_session(s1).unwrap();
        assert_eq!(r.session_info(s1), Err(Error::SessionHandleInvalid));
        r.close_all_sessions(SlotId(1)).unwrap();
        assert_eq!(r.session_info(s2), Err(Error::SessionHandleInvalid));
    }
}
