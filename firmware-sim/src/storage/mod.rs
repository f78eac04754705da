//! The token store: what the token layer keeps, behind one trait (`Store`), with two
//! implementations: SQLite in the token's directory (`sqlite.rs`, the embedded default and a
//! single daemon) and etcd (`etcd.rs`, a cluster of daemons).
//!
//! A store only ever holds ciphertext for secrets: records carry their secret attributes
//! sealed by the token layer, and the meta values hold the token key wrapped under PIN-derived
//! keys (`docs/architecture.md` §6).

pub(crate) mod codec;
mod etcd;
mod sealed;
mod sqlite;

use std::path::Path;

use bridge::Result;

pub use etcd::{Cluster, Created, MemberState, NodeState, Status, TokenState, nodes, status};
pub use sealed::TenantSeal;
pub(crate) use sealed::{SealedDir, tenant_key};
pub(crate) use sqlite::{Dump, MetaValue, SqliteStore};

/// The file name of a token's database inside its directory.
pub(crate) const DB_FILE: &str = "token.db";
/// The token-level state kept in the meta table.
#[derive(Clone, Default)]
pub(crate) struct Meta {
    /// Changes at every `C_InitToken`; binds sealed data to this incarnation.
    pub(crate) uuid: Vec<u8>,
    pub(crate) label: Vec<u8>,
    pub(crate) serial: String,
    pub(crate) kdf_iterations: u32,
    /// salt ‖ sealed token key, under the SO PIN.
    pub(crate) so_wrap: Vec<u8>,
    /// salt ‖ sealed token key, under the user PIN (absent until `C_InitPIN`).
    pub(crate) user_wrap: Option<Vec<u8>>,
    /// The key that seals public objects' secrets (see the README's trust boundaries).
    pub(crate) device_key: Vec<u8>,
    pub(crate) so_failures: u32,
    pub(crate) user_failures: u32,
    /// The user PIN must be changed (set by `C_InitPIN`, cleared by `C_SetPIN`).
    pub(crate) user_pin_to_be_changed: bool,
}

impl std::fmt::Debug for Meta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Meta(..)")
    }
}

/// A row that changed since a given counter.
pub(crate) struct Changed {
    pub(crate) id: i64,
    pub(crate) rev: u64,
    pub(crate) record: Vec<u8>,
}

/// What changed since a counter value.
pub(crate) struct Delta {
    pub(crate) counter: u64,
    pub(crate) rows: Vec<Changed>,
    pub(crate) deleted: Vec<i64>,
}

/// A PIN try still in progress for longer than this (its process died during the PIN
/// derivation) counts as a failure.
const STALE_TRY_SECS: i64 = 60;

/// The failure counter of one PIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Counter {
    So,
    User,
}

impl Counter {
    pub(crate) fn key(self) -> &'static str {
        match self {
            Self::So => "so_failures",
            Self::User => "user_failures",
        }
    }
}

/// A PIN try in progress: counted before its PIN derivation runs.
#[derive(Debug)]
pub(crate) struct Try {
    pub(crate) id: i64,
    pub(crate) counter: Counter,
    /// The failures recorded when the try began (a success clears these).
    pub(crate) seen: i64,
}

/// Whether a PIN try may begin.
#[derive(Debug)]
pub(crate) enum TryStart {
    /// Counted; run the PIN derivation, then `end_try`.
    Go(Try),
    /// The limit of failures is reached.
    Locked,
    /// Failures and tries in progress fill the limit: wait for one to end.
    Busy,
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_secs()).ok())
        .unwrap_or(0)
}

/// What the token layer needs of a store: the meta values, object records by id with
/// revisions, a change counter other processes and nodes advance, and the lockout's
/// transactions. Every method is one atomic change or one consistent read.
pub(crate) trait Store: Send + Sync + std::fmt::Debug {
    /// Where the store is, for log lines.
    fn describe(&self) -> String;
    /// A value that changes whenever another process or node changed the store (cheap).
    fn data_version(&self) -> Result<i64>;
    /// The meta values (`None` if the token was never initialized) and the change counter.
    fn load_meta(&self) -> Result<Option<(Meta, u64)>>;
    /// Initializes (or re-initializes) the token in one change: every object goes, the meta
    /// values are replaced.
    fn initialize(&self, meta: &Meta) -> Result<u64>;
    /// Replaces one PIN's wrap of the token key, and nothing else (see `SqliteStore`). With
    /// `based_on` (the wrap a PIN check just opened), only if that is still the wrap stored:
    /// a PIN changed meanwhile by another process or node is not silently replaced
    /// (`CKR_DEVICE_ERROR`, as other lost updates are refused).
    fn update_wrap(
        &self,
        pin: Counter,
        based_on: Option<&[u8]>,
        wrap: &[u8],
        to_be_changed: Option<bool>,
        reset: bool,
    ) -> Result<u64>;
    /// Begins a PIN try under a limit of `limit` failures, counted before the PIN derivation.
    fn begin_try(&self, counter: Counter, limit: u32) -> Result<TryStart>;
    /// Ends a PIN try; returns the failures now recorded.
    fn end_try(&self, t: Try, success: bool) -> Result<u32>;
    /// Inserts an object; `encode(id)` produces its record once the id is known. Returns
    /// (id, rev).
    fn insert(&self, encode: &mut dyn FnMut(i64) -> Result<Vec<u8>>) -> Result<(i64, u64)>;
    /// Replaces an object's record if it is still at rev `based_on` (the one the change was
    /// made from): `Some(new rev)`, or `None` if another process or node changed it meanwhile
    /// (the caller catches up and makes its change again: a stale copy must not undo a newer
    /// change, such as a one-way `CKA_SENSITIVE`). `CKR_OBJECT_HANDLE_INVALID` if it is gone.
    fn update(&self, id: i64, based_on: u64, record: &[u8]) -> Result<Option<u64>>;
    /// Deletes an object, leaving a tombstone for other readers.
    fn delete(&self, id: i64) -> Result<u64>;
    /// Everything that changed after `since` (all objects for `since == 0`).
    fn changes_since(&self, since: u64) -> Result<Delta>;
    /// Best effort: leaves no old copy of what was replaced or deleted.
    fn scrub(&self) {}
    /// Whether the token goes on serving what it has loaded when the store cannot be read (a
    /// cluster without quorum), rather than failing every call.
    fn tolerate_stale(&self) -> bool {
        false
    }
    /// Makes the next `data_version` reflect every change made before this call, on any node
    /// (asked when a handle is not found: it may have been made a moment ago on another node).
    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

/// Creates `dir` and every missing parent with mode 0700 (owner only).
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Creates `path` (if missing) with mode 0600, never following a symbolic link.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    o.open(path).map(drop)
}

/// Best effort: the store is readable by its owner only.
fn restrict_permissions(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    }
}
