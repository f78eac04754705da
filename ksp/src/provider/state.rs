//! The handles the provider issues (providers, keys, secrets, buffers), what stands behind
//! each, and their lookups.

use bridge::BackendExt as _;
use std::collections::BTreeMap;
use std::sync::Arc;

use bridge::{Backend, ObjectHandle, SessionHandle, SlotId};
use parking_lot::Mutex;
use zeroize::Zeroizing;

use super::alg::Alg;
use crate::error::{BAD_FLAGS, INVALID_HANDLE, KResult, Status};
use crate::handles::{Kind, Table};
use crate::types::*;

/// An open provider: one session on the chosen token.
pub(super) struct Provider {
    pub(super) backend: Arc<dyn Backend>,
    pub(super) session: SessionHandle,
    /// The token's slot (behind the router).
    pub(super) slot: SlotId,
    /// Whether `FERROHSM_PIN` logged the user in (else private keys are out of reach).
    pub(super) logged_in: bool,
    /// Serialises operations on the session (PKCS#11 has one active operation per session).
    pub(super) op: Mutex<()>,
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.backend.close_session(self.session);
    }
}

/// A key created but not finalized yet.
#[derive(Clone, Debug)]
pub(super) struct Pending {
    pub(super) alg: Alg,
    pub(super) name: Option<String>,
    pub(super) length: Option<u32>,
    pub(super) export_policy: u32,
    pub(super) usage: Option<u32>,
    pub(super) overwrite: bool,
}

/// A usable key: its firmware objects and what the provider reports about it.
#[derive(Clone, Debug)]
pub(super) struct Ready {
    pub(super) alg: Alg,
    pub(super) name: Option<String>,
    pub(super) id: Vec<u8>,
    pub(super) private: Option<ObjectHandle>,
    pub(super) public: Option<ObjectHandle>,
    pub(super) export_policy: u32,
    pub(super) usage: u32,
    pub(super) bits: u32,
    /// A session object (an ephemeral key): destroyed with its handle.
    pub(super) ephemeral: bool,
}

#[derive(Clone, Debug)]
pub(super) enum KeyState {
    Pending(Pending),
    Ready(Ready),
}

/// A key handle's object.
pub(super) struct Key {
    pub(super) provider: usize,
    pub(super) state: Mutex<KeyState>,
}

/// An agreed secret (`NCRYPT_SECRET_HANDLE`): the ECDH shared value Z, big-endian.
pub(super) struct Secret {
    pub(super) provider: usize,
    pub(super) z: Zeroizing<Vec<u8>>,
}

/// Memory handed to the caller, alive until `FreeBuffer`.
pub(super) enum Buffer {
    /// A block of structures and strings.
    Block(#[allow(dead_code)] Vec<u64>),
    /// An `EnumKeys` cursor: the names still to report.
    EnumState {
        #[allow(dead_code)]
        anchor: Vec<u64>,
        provider: usize,
        keys: Vec<(String, &'static str)>,
        next: usize,
    },
}

pub(super) struct State {
    pub(super) providers: Table<Arc<Provider>>,
    pub(super) keys: Table<Arc<Key>>,
    pub(super) secrets: Table<Arc<Secret>>,
    pub(super) buffers: BTreeMap<usize, Buffer>,
}

pub(super) static STATE: Mutex<State> = Mutex::new(State {
    providers: Table::new(Kind::Provider),
    keys: Table::new(Kind::Key),
    secrets: Table::new(Kind::Secret),
    buffers: BTreeMap::new(),
});

pub(super) fn provider(h: usize) -> KResult<Arc<Provider>> {
    STATE.lock().providers.get(h)
}

/// The provider and the key, checking that the key belongs to the provider.
pub(super) fn key(hp: usize, hk: usize) -> KResult<(Arc<Provider>, Arc<Key>)> {
    let st = STATE.lock();
    let p = st.providers.get(hp)?;
    let k = st.keys.get(hk)?;
    if k.provider != hp {
        return Err(INVALID_HANDLE);
    }
    Ok((p, k))
}

/// The provider's secret, checking that it belongs to the provider (`st` locked by the caller).
pub(super) fn secret(st: &State, hp: usize, hs: usize) -> KResult<Arc<Secret>> {
    let _ = st.providers.get(hp)?;
    let s = st.secrets.get(hs)?;
    if s.provider != hp {
        return Err(INVALID_HANDLE);
    }
    Ok(s)
}

pub(super) fn ready(k: &Key) -> KResult<Ready> {
    match &*k.state.lock() {
        KeyState::Ready(r) => Ok(r.clone()),
        KeyState::Pending(_) => Err(Status(NTE_BAD_KEY_STATE)),
    }
}

pub(super) fn check_flags(flags: u32, allowed: u32) -> KResult<()> {
    if flags & !(allowed | NCRYPT_SILENT_FLAG) != 0 {
        return Err(BAD_FLAGS);
    }
    Ok(())
}

pub(super) fn new_key(hp: usize, state: KeyState) -> KResult<usize> {
    STATE.lock().keys.insert(Arc::new(Key {
        provider: hp,
        state: Mutex::new(state),
    }))
}

pub(super) fn modulus_len(r: &Ready) -> usize {
    usize::try_from(r.bits.div_ceil(8)).unwrap_or(0)
}
