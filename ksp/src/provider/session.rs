//! The provider itself: the backend built from the configuration, the token it opens a session
//! on, and the user login from the environment.

use bridge::BackendExt as _;
use std::sync::Arc;

use bridge::{Backend, Error, SlotId};
use cryptoki_sys::*;
use parking_lot::Mutex;
use zeroize::Zeroizing;

use super::keys::drop_ephemeral;
use super::state::{Buffer, Provider, STATE, check_flags, provider};
use crate::error::{KResult, NOT_SUPPORTED, Status};
use crate::types::*;

/// The provider's registered name.
pub const PROVIDER_NAME: &str = "FerroHSM Key Storage Provider";

/// The environment variable naming the token (its label).
pub const TOKEN_ENV: &str = "FERROHSM_KSP_TOKEN";
/// The environment variable holding the user PIN.
pub const PIN_ENV: &str = "FERROHSM_PIN";

/// The backend and the configured token label, built once per process from the same
/// configuration as the PKCS#11 module.
type Configured = (Arc<dyn Backend>, Option<String>);
static BACKEND: Mutex<Option<Configured>> = Mutex::new(None);

fn backend() -> KResult<Configured> {
    let mut guard = BACKEND.lock();
    if let Some((b, token)) = guard.as_ref() {
        return Ok((Arc::clone(b), token.clone()));
    }
    let built = bridge::config::Config::from_env().and_then(|config| {
        // FERROHSM_TRACE records the provider's calls as it does the module's.
        let trace = ferrohsm_wiring::trace_from_env();
        let backend = ferrohsm_wiring::build_backend(&config, trace.as_deref())?;
        Ok((backend, config.ksp.token))
    });
    let (b, token) = built.map_err(|e| {
        log::error!("ferrohsm-ksp: cannot build the backend from the configuration: {e}");
        Status::from(e)
    })?;
    *guard = Some((Arc::clone(&b), token.clone()));
    Ok((b, token))
}

/// `OpenProvider`.
pub(crate) fn open_provider(name: Option<&str>, flags: u32) -> KResult<usize> {
    ferrohsm_wiring::logger::init_from_env();
    check_flags(flags, 0)?;
    if let Some(n) = name {
        if n != PROVIDER_NAME {
            log::debug!("ferrohsm-ksp: opened under the name {n:?}");
        }
    }
    let (backend, configured_token) = backend()?;
    let slot = choose_slot(backend.as_ref(), configured_token)?;
    let session = backend.open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)?;
    let mut p = Provider {
        backend: Arc::clone(&backend),
        session,
        slot,
        logged_in: false,
        op: Mutex::new(()),
    };
    match std::env::var(PIN_ENV) {
        Ok(pin) => {
            let pin = Zeroizing::new(pin);
            match backend.login(session, CKU_USER, Some(pin.as_bytes())) {
                Ok(()) | Err(Error::UserAlreadyLoggedIn) => p.logged_in = true,
                Err(e) => {
                    log::error!("ferrohsm-ksp: user login refused: {e}");
                    return Err(e.into());
                }
            }
        }
        Err(_) => log::warn!(
            "ferrohsm-ksp: {PIN_ENV} is not set: the token is open without login, so private \
             keys are out of reach (NTE_PERM); the provider never prompts"
        ),
    }
    STATE.lock().providers.insert(Arc::new(p))
}

fn choose_slot(b: &dyn Backend, configured: Option<String>) -> KResult<SlotId> {
    let want = std::env::var(TOKEN_ENV).ok().or(configured);
    for slot in b.slot_list(true)? {
        let Ok(info) = b.token_info(slot) else {
            continue;
        };
        let label = info.label.trim_end();
        match &want {
            Some(w) if label == w => return Ok(slot),
            Some(_) => {}
            None if info.flags & CKF_TOKEN_INITIALIZED != 0 => return Ok(slot),
            None => {}
        }
    }
    match want {
        Some(w) => log::error!(
            "ferrohsm-ksp: no token labelled {w:?} ({TOKEN_ENV} or [ksp] token in the configuration)"
        ),
        None => log::error!("ferrohsm-ksp: no initialized token"),
    }
    Err(Status(NTE_DEVICE_NOT_FOUND))
}

/// `FreeProvider`: the handle dies, and with it the provider's key and secret handles.
pub(crate) fn free_provider(hp: usize) -> KResult<()> {
    let mut st = STATE.lock();
    let p = st.providers.remove(hp)?;
    for (h, k) in st.keys.live() {
        if k.provider == hp {
            let _ = st.keys.remove(h);
            drop_ephemeral(&p, &k);
        }
    }
    for (h, s) in st.secrets.live() {
        if s.provider == hp {
            let _ = st.secrets.remove(h);
        }
    }
    st.buffers.retain(|_, b| match b {
        Buffer::EnumState { provider, .. } => *provider != hp,
        Buffer::Block(_) => true,
    });
    Ok(())
}

/// Checks the provider handle of the entry points that only ever return `NTE_NOT_SUPPORTED`.
pub(crate) fn unsupported(hp: usize) -> KResult<()> {
    let _ = provider(hp)?;
    Err(NOT_SUPPORTED)
}
