//! Placeholder API of the simulated firmware (being written).
#![forbid(unsafe_code)]

use std::path::Path;

use bridge::config::FirmwareConfig;
use bridge::*;
use cryptoki_sys::*;

/// The simulated HSM.
pub struct Device;

impl Device {
    /// The default home: every token directory under `home`, plus one empty slot.
    pub fn open_home(_home: &Path, _config: &FirmwareConfig) -> Result<Self> {
        Ok(Self)
    }
    /// One token whose store is the directory `store`.
    pub fn open_token(_store: &Path, _description: Option<&str>, _config: &FirmwareConfig) -> Result<Self> {
        Ok(Self)
    }
}

impl Backend for Device {
    fn slot_list(&self, _: bool) -> Result<Vec<SlotId>> { Ok(vec![SlotId(0)]) }
    fn slot_info(&self, _: SlotId) -> Result<SlotInfo> { Err(Error::SlotIdInvalid) }
    fn token_info(&self, _: SlotId) -> Result<TokenInfo> { Err(Error::SlotIdInvalid) }
    fn mechanism_list(&self, _: SlotId) -> Result<Vec<CK_MECHANISM_TYPE>> { Ok(vec![]) }
    fn mechanism_info(&self, _: SlotId, _: CK_MECHANISM_TYPE) -> Result<MechanismInfo> { Err(Error::MechanismInvalid) }
    fn open_session(&self, _: SlotId, _: CK_FLAGS) -> Result<SessionHandle> { Err(Error::SlotIdInvalid) }
    fn close_session(&self, _: SessionHandle) -> Result<()> { Err(Error::SessionHandleInvalid) }
    fn close_all_sessions(&self, _: SlotId) -> Result<()> { Ok(()) }
    fn session_info(&self, _: SessionHandle) -> Result<SessionInfo> { Err(Error::SessionHandleInvalid) }
}
