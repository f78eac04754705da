//! A new token built where no application looks, then made visible in one rename
//! (`ferrohsm import-softhsm`): a token exists whole or not at all.
//!
//! The token is built by a `Device` of its own over a staging directory: in the home's
//! `tokens/` directory under a name no device reads as a slot (`.staging-<random>`), or next
//! to the store directory a configuration names. [`StagedToken::commit`] closes that device
//! (SQLite checkpoints its WAL) and renames the directory into place: as the home's next slot
//! number, or as the store. Dropped without a commit, the staging directory is removed. This
//! is `backup restore`'s staging (`domain/backup.rs`), for one token.

use std::path::{Path, PathBuf};

use bridge::config::FirmwareConfig;
use cryptoki_sys::CK_SLOT_ID;

use super::Device;

/// Where a staged token goes.
enum Target {
    /// The home's `tokens/` directory, as its next slot.
    Home(PathBuf),
    /// This directory (a `[[slot]] kind = "sim"` store).
    Store(PathBuf),
}

/// Where a committed token went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Its directory.
    pub dir: PathBuf,
    /// Its slot in the home (none for a store a configuration names).
    pub slot: Option<CK_SLOT_ID>,
}

/// A token under construction, invisible to every application until [`StagedToken::commit`].
pub struct StagedToken {
    staging: PathBuf,
    target: Target,
    device: Option<Device>,
}

impl std::fmt::Debug for StagedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StagedToken({})", self.staging.display())
    }
}

fn io(p: &Path, e: &std::io::Error) -> String {
    format!("{}: {e}", p.display())
}

fn random_name(prefix: &str) -> Result<String, String> {
    let mut tag = [0u8; 8];
    crate::crypto::fill_random(&mut tag).map_err(|e| e.to_string())?;
    Ok(format!("{prefix}{}", base16ct::lower::encode_string(&tag)))
}

impl StagedToken {
    /// A new token for the home `home` (its next slot once committed).
    pub fn in_home(home: &Path, config: &FirmwareConfig) -> Result<Self, String> {
        let tokens = home.join("tokens");
        crate::storage::create_private_dir(&tokens).map_err(|e| io(&tokens, &e))?;
        let staging = tokens.join(random_name(".staging-")?);
        Self::start(staging, Target::Home(tokens), config)
    }

    /// A new token whose store will be the directory `store`, which must not exist or be
    /// empty.
    pub fn at_store(store: &Path, config: &FirmwareConfig) -> Result<Self, String> {
        if let Ok(mut entries) = std::fs::read_dir(store) {
            if entries.next().is_some() {
                return Err(format!(
                    "{} is not empty; name a new directory for the token's store",
                    store.display()
                ));
            }
        } else if store.exists() {
            return Err(format!("{} is not a directory", store.display()));
        }
        let name = store
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{}: not a directory name", store.display()))?;
        let parent = store
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        crate::storage::create_private_dir(parent).map_err(|e| io(parent, &e))?;
        let staging = parent.join(random_name(&format!(".{name}.staging-"))?);
        Self::start(staging, Target::Store(store.to_owned()), config)
    }

    fn start(staging: PathBuf, target: Target, config: &FirmwareConfig) -> Result<Self, String> {
        let mut me = Self {
            staging,
            target,
            device: None,
        };
        crate::storage::create_private_dir(&me.staging).map_err(|e| io(&me.staging, &e))?;
        me.device = Some(
            Device::open_token(&me.staging, Some("FerroHSM staged token"), config)
                .map_err(|e| format!("{}: {e}", me.staging.display()))?,
        );
        Ok(me)
    }

    /// The device that builds the token: slot 0, uninitialized until `C_InitToken`.
    pub fn device(&self) -> Option<&Device> {
        self.device.as_ref()
    }

    /// Closes the token and moves it into place.
    pub fn commit(mut self) -> Result<Placed, String> {
        // The store closes (its WAL checkpointed) before the directory moves.
        drop(self.device.take());
        let placed = match &self.target {
            Target::Store(store) => {
                // Replaces an empty directory; refuses anything else.
                std::fs::rename(&self.staging, store).map_err(|e| io(store, &e))?;
                Placed {
                    dir: store.clone(),
                    slot: None,
                }
            }
            Target::Home(tokens) => self.move_into_home(tokens)?,
        };
        // Nothing is left to remove: the staging directory is the token now.
        self.staging = PathBuf::new();
        Ok(placed)
    }

    /// Renames the staging directory to the home's next free slot number. The number is
    /// claimed with `mkdir` (which fails if another process took it), then the token renamed
    /// over that empty directory (which fails if another process's `C_InitToken` filled it
    /// meanwhile: then the next number).
    fn move_into_home(&self, tokens: &Path) -> Result<Placed, String> {
        let used = std::fs::read_dir(tokens)
            .map_err(|e| io(tokens, &e))?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<CK_SLOT_ID>().ok())
            .max();
        let mut n = used.map_or(0, |m| m + 1);
        for _ in 0..64 {
            let dir = tokens.join(n.to_string());
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    n += 1;
                    continue;
                }
                Err(e) => return Err(io(&dir, &e)),
            }
            match std::fs::rename(&self.staging, &dir) {
                Ok(()) => {
                    return Ok(Placed { dir, slot: Some(n) });
                }
                Err(_) if std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) => {
                    n += 1;
                }
                Err(e) => {
                    let _ = std::fs::remove_dir(&dir);
                    return Err(io(&dir, &e));
                }
            }
        }
        Err(format!(
            "{}: no free slot number found (other processes keep adding tokens)",
            tokens.display()
        ))
    }
}

impl Drop for StagedToken {
    fn drop(&mut self) {
        drop(self.device.take());
        if !self.staging.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridge::BackendExt as _;

    fn config() -> FirmwareConfig {
        FirmwareConfig {
            pin_kdf_iterations: 1000,
            ..FirmwareConfig::default()
        }
    }

    fn init(staged: &StagedToken) {
        let mut label = [b' '; 32];
        label[..4].copy_from_slice(b"kept");
        staged
            .device()
            .unwrap()
            .init_token(bridge::SlotId(0), b"12345678", &label)
            .unwrap();
    }

    #[test]
    fn a_dropped_staged_token_leaves_nothing() {
        let home = tempfile::tempdir().unwrap();
        let staged = StagedToken::in_home(home.path(), &config()).unwrap();
        init(&staged);
        drop(staged);
        let left: Vec<_> = std::fs::read_dir(home.path().join("tokens"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn a_committed_token_is_the_homes_next_slot() {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join("tokens/0")).unwrap();
        let staged = StagedToken::in_home(home.path(), &config()).unwrap();
        init(&staged);
        let placed = staged.commit().unwrap();
        assert_eq!(placed.slot, Some(1));
        let device = Device::open_home(home.path(), &config()).unwrap();
        let info = device.token_info(bridge::SlotId(1)).unwrap();
        assert_eq!(info.label.trim_end(), "kept");
        let names: Vec<String> = std::fs::read_dir(home.path().join("tokens"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    }

    #[test]
    fn a_store_must_be_new() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("x"), b"").unwrap();
        assert!(StagedToken::at_store(dir.path(), &config()).is_err());
        let store = dir.path().join("store");
        let staged = StagedToken::at_store(&store, &config()).unwrap();
        init(&staged);
        let placed = staged.commit().unwrap();
        assert_eq!(placed.dir, store);
        assert!(store.join(crate::storage::DB_FILE).exists());
    }
}
