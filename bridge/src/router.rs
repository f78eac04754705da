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

use crate::call::{Backend, BackendExt, Call, Reply, Target};
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

impl Router {
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
                    log::warn!(
                        "slot group {i} of the configuration did not answer ({}); its slots are left out",
                        e.name()
                    );
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
}

impl Backend for Router {
    /// Routes a call by the slot or session it names, translating the virtual id to the
    /// mount's; the calls that make, end or describe sessions, and the slot list, are the
    /// router's own.
    fn call(&self, mut call: Call<'_>) -> Result<Reply> {
        match call {
            Call::SlotList { token_present } => {
                return self.slot_list(token_present).map(Reply::Slots);
            }
            Call::WaitForSlotEvent { flags } => {
                return Err(if flags & CKF_DONT_BLOCK != 0 {
                    Error::NoEvent
                } else {
                    Error::FunctionNotSupported
                });
            }
            Call::OpenSession { slot, flags } => {
                return self.open_session(slot, flags).map(Reply::Session);
            }
            Call::CloseSession { session } => return self.close_session(session).map(Reply::Unit),
            Call::CloseAllSessions { slot } => {
                return self.close_all_sessions(slot).map(Reply::Unit);
            }
            Call::SessionInfo { session } => {
                return self.session_info(session).map(Reply::SessionInfo);
            }
            _ => {}
        }
        match call.target() {
            Target::Slot(slot) => {
                let (b, inner, _) = self.resolve_slot(*slot)?;
                *slot = inner;
                b.call(call)
            }
            Target::Session(session) => {
                let outer = *session;
                let (b, inner) = self.route(outer)?;
                *session = inner;
                let r = b.call(call);
                self.forget_if_gone(outer, r)
            }
            Target::None => Err(Error::FunctionNotSupported),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::*;

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
        fn call(&self, call: Call<'_>) -> Result<Reply> {
            call.dispatch(self)
        }
    }

    impl ObjectFunctions for Fake {}
    impl CipherFunctions for Fake {}
    impl DigestFunctions for Fake {}
    impl SignFunctions for Fake {}
    impl DualFunctions for Fake {}
    impl KeyFunctions for Fake {}
    impl RandomFunctions for Fake {}
    impl MessageFunctions for Fake {}

    impl SlotFunctions for Fake {
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
    }

    impl SessionFunctions for Fake {
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
