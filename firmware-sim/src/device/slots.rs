//! Slots, tokens, sessions, PINs and login (PKCS#11 "Slot and token management" and
//! "Session management" functions).

use bridge::call::*;
use bridge::personality::enforce;
use bridge::*;
use cryptoki_sys::*;

use super::*;

impl SlotFunctions for Device {
    fn slot_list(&self, _token_present: bool) -> Result<Vec<SlotId>> {
        // Every slot holds a token (possibly uninitialized). In a cluster, a token another
        // node initialized appears here (when etcd answers; else the slots known).
        if let Err(e) = self.discover() {
            log::warn!("slot list: {e}");
        }
        Ok(self.tokens.read().keys().map(|k| SlotId(*k)).collect())
    }

    fn slot_info(&self, slot: SlotId) -> Result<SlotInfo> {
        Ok(self.token(slot)?.slot_info())
    }

    fn token_info(&self, slot: SlotId) -> Result<TokenInfo> {
        let token = self.token(slot)?;
        let (all, rw) = self.session_counts(slot.0);
        token.token_info(all, rw)
    }

    fn mechanism_list(&self, slot: SlotId) -> Result<Vec<CK_MECHANISM_TYPE>> {
        let profile = self.token(slot)?.profile();
        Ok(mechanism::list_for(profile).collect())
    }

    fn mechanism_info(&self, slot: SlotId, ty: CK_MECHANISM_TYPE) -> Result<MechanismInfo> {
        let profile = self.token(slot)?.profile();
        let mut info = mechanism::lookup_for(ty, profile)?.info();
        info.flags = profile.mechanism_flags(ty, info.flags);
        Ok(info)
    }

    fn init_token(&self, slot: SlotId, so_pin: &[u8], label: &[u8; 32]) -> Result<()> {
        let token = self.token(slot)?;
        if self.session_counts(slot.0).0 > 0 {
            return Err(Error::SessionExists);
        }
        token.init(so_pin, label)?;
        let _ = self.discover();
        Ok(())
    }

    fn wait_for_slot_event(&self, flags: CK_FLAGS) -> Result<SlotId> {
        if flags & CKF_DONT_BLOCK != 0 {
            Err(Error::NoEvent)
        } else {
            Err(Error::FunctionNotSupported)
        }
    }
}

impl SessionFunctions for Device {
    fn open_session(&self, slot: SlotId, flags: CK_FLAGS) -> Result<SessionHandle> {
        let token = self.token(slot)?;
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(Error::SessionParallelNotSupported);
        }
        if !token.is_initialized() {
            return Err(Error::TokenNotRecognized);
        }
        let rw = flags & CKF_RW_SESSION != 0;
        let profile = token.profile();
        enforce(profile.judge_open_session(rw))?;
        if profile.max_sessions.is_some() {
            let open = u64::from(u32::try_from(self.session_counts(slot.0).0).unwrap_or(u32::MAX));
            enforce(profile.judge_session_count(open))?;
        }
        if !rw && token.login_state() == Some(CKU_SO) {
            return Err(Error::SessionReadWriteSoExists);
        }
        let h = to_handle(self.next_session.fetch_add(1, Ordering::Relaxed))?;
        self.sessions
            .write()
            .insert(h, Arc::new(Mutex::new(Session::new(h, slot.0, rw))));
        Ok(SessionHandle(h))
    }

    fn close_session(&self, session: SessionHandle) -> Result<()> {
        let slot = self.session(session)?.lock().slot;
        self.forget_sessions(slot, Some(session.0))
    }

    fn close_all_sessions(&self, slot: SlotId) -> Result<()> {
        self.token(slot)?;
        self.forget_sessions(slot.0, None)
    }

    fn session_info(&self, session: SessionHandle) -> Result<SessionInfo> {
        self.with_session(session, |s, token| {
            let state = match (token.login_state(), s.rw) {
                (Some(CKU_SO), _) => CKS_RW_SO_FUNCTIONS,
                (Some(_), true) => CKS_RW_USER_FUNCTIONS,
                (Some(_), false) => CKS_RO_USER_FUNCTIONS,
                (None, true) => CKS_RW_PUBLIC_SESSION,
                (None, false) => CKS_RO_PUBLIC_SESSION,
            };
            let flags = CKF_SERIAL_SESSION | if s.rw { CKF_RW_SESSION } else { 0 };
            Ok(SessionInfo {
                slot: SlotId(s.slot),
                state,
                flags,
                device_error: 0,
            })
        })
    }

    fn session_cancel(&self, session: SessionHandle, flags: CK_FLAGS) -> Result<()> {
        self.with_session(session, |s, _| {
            if flags & CKF_FIND_OBJECTS != 0 {
                s.find = None;
            }
            if flags & CKF_DIGEST != 0 {
                s.digest = None;
            }
            if flags & CKF_ENCRYPT != 0 {
                s.encrypt = None;
            }
            if flags & CKF_DECRYPT != 0 {
                s.decrypt = None;
            }
            if flags & CKF_SIGN != 0 {
                s.sign = None;
            }
            if flags & CKF_VERIFY != 0 {
                s.verify = None;
            }
            if flags & CKF_MESSAGE_ENCRYPT != 0 {
                s.msg_encrypt = None;
            }
            if flags & CKF_MESSAGE_DECRYPT != 0 {
                s.msg_decrypt = None;
            }
            if flags & CKF_MESSAGE_SIGN != 0 {
                s.msg_sign = None;
            }
            if flags & CKF_MESSAGE_VERIFY != 0 {
                s.msg_verify = None;
            }
            Ok(())
        })
    }

    fn init_pin(&self, session: SessionHandle, pin: &[u8]) -> Result<()> {
        self.with_session(session, |s, token| {
            if token.login_state() != Some(CKU_SO) {
                return Err(Error::UserNotLoggedIn);
            }
            if !s.rw {
                return Err(Error::SessionReadOnly);
            }
            enforce(token.profile().judge_pin(pin))?;
            token.init_pin(pin)
        })
    }

    fn set_pin(&self, session: SessionHandle, old_pin: &[u8], new_pin: &[u8]) -> Result<()> {
        self.with_session(session, |s, token| {
            if !s.rw {
                return Err(Error::SessionReadOnly);
            }
            if token.login_state() != Some(CKU_SO) {
                enforce(token.profile().judge_pin(new_pin))?;
            }
            token.set_pin(old_pin, new_pin)
        })
    }

    fn login(&self, session: SessionHandle, user: UserType, pin: Option<&[u8]>) -> Result<()> {
        // No protected authentication path: a PIN is always needed.
        let pin = pin.ok_or(Error::ArgumentsBad)?;
        let (slot, rw) = {
            let s = self.session(session)?;
            let s = s.lock();
            (s.slot, s.rw)
        };
        let _ = rw;
        let token = self.slot_token(slot)?;
        if user != CKU_SO {
            // A PIN not in the personality's form is refused before it is tried (and counted).
            enforce(token.profile().judge_pin(pin))?;
        }
        match user {
            CKU_CONTEXT_SPECIFIC => {
                let s = self.session(session)?;
                let mut s = s.lock();
                if token.login_state().is_none() {
                    return Err(Error::UserNotLoggedIn);
                }
                if s.auth_slot().is_none() {
                    return Err(Error::OperationNotInitialized);
                }
                token.verify_user_pin(pin)?;
                if let Some(a) = s.auth_slot() {
                    *a = Auth::Done;
                }
                Ok(())
            }
            CKU_SO => {
                let ro_exists = self.sessions.read().values().any(|s| {
                    let s = s.lock();
                    s.slot == slot && !s.rw
                });
                if ro_exists && token.login_state().is_none() {
                    return Err(Error::SessionReadOnlyExists);
                }
                token.login(user, pin)
            }
            CKU_USER => token.login(user, pin),
            _ => Err(Error::UserTypeInvalid),
        }
    }

    fn login_user(
        &self,
        session: SessionHandle,
        user: UserType,
        pin: Option<&[u8]>,
        username: &[u8],
    ) -> Result<()> {
        // A token here has one normal user and one SO, and neither has a name: without a user
        // name, C_LoginUser is C_Login (the user type alone says who logs in). A name cannot
        // denote either of them, so authenticating that named user fails, which is
        // CKR_PIN_INCORRECT ("more generally, when authentication to the token involves
        // something other than a PIN, the attempt to authenticate the user has failed"). No
        // PIN was tried: the failure counters are left alone.
        if username.is_empty() {
            return SessionFunctions::login(self, session, user, pin);
        }
        self.session(session)?;
        if !matches!(user, CKU_SO | CKU_USER | CKU_CONTEXT_SPECIFIC) {
            return Err(Error::UserTypeInvalid);
        }
        log::info!("C_LoginUser with a user name: this token's users have no names");
        Err(Error::PinIncorrect)
    }

    fn logout(&self, session: SessionHandle) -> Result<()> {
        self.with_session(session, |_, token| token.logout())
    }
}
