//! A tenant's token stores in a daemon's home, sealed under the tenant's key
//! (`docs/architecture.md` §6).
//!
//! A token's secrets rest on three meta values: the device key (it seals public objects'
//! secrets) and the wraps of the token key under the SO and user PINs (the token key seals
//! everything else). In a tenant's store these three are sealed again (AES-256-GCM) under the
//! tenant's key, derived from the home's domain master key with the tenant's name bound in —
//! the derivation a cluster uses for its tenants ([`tenant_key`]). So tenant A's files,
//! copied or renamed into tenant B's directory, open under B's key to nothing: no PIN unwraps
//! the token key, and no public object's secret unseals.

use std::sync::Arc;

use bridge::{Error, Result};
use parking_lot::Mutex;

use super::*;
use crate::crypto::{self, Secret};

/// The start of a sealed meta value (an older, unsealed value has none: see
/// [`SealedStore::open_value`]).
const MAGIC: &[u8] = b"ferrohsm-tenant-seal-1:";

/// Whether a stored meta value is sealed under a tenant's key.
pub(crate) fn is_sealed(value: &[u8]) -> bool {
    value.starts_with(MAGIC)
}

/// Tenant `tenant`'s key, from the root of the tenants' keys (HKDF-SHA256 with the tenant's
/// name bound in): the same step on a cluster (`Cluster::tenant`) and in a home
/// ([`TenantSeal::for_home`]).
pub(crate) fn tenant_key(root: &Secret, tenant: &str) -> Result<Secret> {
    let prk = crypto::mac::hkdf_extract(
        crypto::Hash::Sha256,
        b"ferrohsm cluster tenant v1",
        root.expose(),
    )?;
    let key = crypto::mac::hkdf_expand(crypto::Hash::Sha256, &prk, tenant.as_bytes(), 32)?;
    Ok(Secret::copy_from(&key))
}

/// The key that seals one tenant's stores in a home.
pub struct TenantSeal {
    tenant: String,
    key: Secret,
}

impl std::fmt::Debug for TenantSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TenantSeal({})", self.tenant)
    }
}

impl TenantSeal {
    /// Tenant `tenant`'s key in a home whose security domain is `domain`.
    pub fn for_home(domain: &crate::domain::DomainKey, tenant: &str) -> Result<Arc<Self>> {
        let root = domain
            .derive(b"ferrohsm home tenants v1", b"")
            .map_err(|e| Error::Store(e.to_string()))?;
        Ok(Arc::new(Self {
            tenant: tenant.to_owned(),
            key: tenant_key(&root, tenant)?,
        }))
    }

    fn aad(&self, field: &str, uuid: &[u8]) -> Vec<u8> {
        let mut aad = MAGIC.to_vec();
        for part in [self.tenant.as_bytes(), field.as_bytes(), uuid] {
            aad.extend_from_slice(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
            aad.extend_from_slice(part);
        }
        aad
    }

    fn seal(&self, field: &str, uuid: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&crypto::seal(&self.key, &self.aad(field, uuid), plain)?);
        Ok(out)
    }
}

/// A token directory of a tenant: its SQLite store, sealed under the tenant's key.
pub(crate) struct SealedDir {
    pub(crate) dir: std::path::PathBuf,
    pub(crate) seal: Arc<TenantSeal>,
}

impl crate::token::Source for SealedDir {
    fn open(&self) -> Result<Option<Arc<dyn Store>>> {
        Ok(SqliteStore::open(&self.dir)?.map(|s| self.wrap(s)))
    }
    fn create(&self) -> Result<Arc<dyn Store>> {
        Ok(self.wrap(SqliteStore::create(&self.dir)?))
    }
    fn exists(&self) -> bool {
        self.dir.join(DB_FILE).exists()
    }
    fn describe(&self) -> String {
        format!("{} (tenant {})", self.dir.display(), self.seal.tenant)
    }
}

impl SealedDir {
    fn wrap(&self, inner: SqliteStore) -> Arc<dyn Store> {
        Arc::new(SealedStore {
            inner: inner.for_tenant(),
            seal: Arc::clone(&self.seal),
            seen: Mutex::new(Seen::default()),
        })
    }
}

/// The PIN wraps as last read: (clear, stored) of each, so that a PIN change made from the
/// clear wrap its check opened compares the stored form (sealing is randomized).
#[derive(Default)]
struct Seen {
    so: Option<(Vec<u8>, Vec<u8>)>,
    user: Option<(Vec<u8>, Vec<u8>)>,
}

impl Seen {
    fn of(&mut self, pin: Counter) -> &mut Option<(Vec<u8>, Vec<u8>)> {
        match pin {
            Counter::So => &mut self.so,
            Counter::User => &mut self.user,
        }
    }
}

/// A tenant's store: the SQLite store with the device key and the PIN wraps sealed under the
/// tenant's key. Everything else passes through.
pub(crate) struct SealedStore {
    inner: SqliteStore,
    seal: Arc<TenantSeal>,
    seen: Mutex<Seen>,
}

impl std::fmt::Debug for SealedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedStore({})", self.describe())
    }
}

impl SealedStore {
    /// A stored value in clear. An unsealed value (a token made before its home had a
    /// security domain) is taken as it is, with a warning: it was never sealed, so accepting
    /// it uncovers nothing sealed.
    fn open_value(&self, field: &str, uuid: &[u8], stored: &[u8]) -> Result<Vec<u8>> {
        let Some(sealed) = stored.strip_prefix(MAGIC) else {
            log::warn!(
                "{}: {field} is not sealed under the tenant's key (the token was made before \
                 the home had a security domain); initialize the token again to seal it",
                self.describe()
            );
            return Ok(stored.to_vec());
        };
        crypto::open(&self.seal.key, &self.seal.aad(field, uuid), sealed)
            .map(|p| p.expose().to_vec())
            .ok_or_else(|| {
                Error::Store(format!(
                    "{}: {field} does not open under tenant {}'s key (another tenant's token, \
                     a renamed or copied directory, another domain, or a tampered value)",
                    self.describe(),
                    self.seal.tenant
                ))
            })
    }
}

impl Store for SealedStore {
    fn describe(&self) -> String {
        format!("{} (tenant {})", self.inner.describe(), self.seal.tenant)
    }
    fn data_version(&self) -> Result<i64> {
        self.inner.data_version()
    }
    fn load_meta(&self) -> Result<Option<(Meta, u64)>> {
        let Some((mut meta, counter)) = self.inner.load_meta()? else {
            return Ok(None);
        };
        let uuid = meta.uuid.clone();
        meta.device_key = self.open_value("device_key", &uuid, &meta.device_key)?;
        let so = meta.so_wrap.clone();
        meta.so_wrap = self.open_value("so_wrap", &uuid, &so)?;
        let mut seen = Seen {
            so: Some((meta.so_wrap.clone(), so)),
            user: None,
        };
        if let Some(user) = meta.user_wrap.take() {
            let clear = self.open_value("user_wrap", &uuid, &user)?;
            seen.user = Some((clear.clone(), user));
            meta.user_wrap = Some(clear);
        }
        if meta.device_key.len() != 32 || meta.so_wrap.is_empty() {
            return Err(Error::Store(format!(
                "{}: corrupt token metadata",
                self.describe()
            )));
        }
        *self.seen.lock() = seen;
        Ok(Some((meta, counter)))
    }
    fn initialize(&self, meta: &Meta) -> Result<u64> {
        let mut sealed = meta.clone();
        let s = &self.seal;
        sealed.device_key = s.seal("device_key", &meta.uuid, &meta.device_key)?;
        sealed.so_wrap = s.seal("so_wrap", &meta.uuid, &meta.so_wrap)?;
        sealed.user_wrap = meta
            .user_wrap
            .as_ref()
            .map(|w| s.seal("user_wrap", &meta.uuid, w))
            .transpose()?;
        self.inner.initialize(&sealed)
    }
    fn update_wrap(
        &self,
        pin: Counter,
        based_on: Option<&[u8]>,
        wrap: &[u8],
        to_be_changed: Option<bool>,
        reset: bool,
    ) -> Result<u64> {
        let uuid = self
            .inner
            .load_meta()?
            .map(|(m, _)| m.uuid)
            .ok_or(Error::TokenNotRecognized)?;
        let field = match pin {
            Counter::So => "so_wrap",
            Counter::User => "user_wrap",
        };
        let stored = self.seal.seal(field, &uuid, wrap)?;
        // The stored form of the wrap the PIN check opened; another one (the PIN changed
        // since this store last read it) matches nothing stored, and the change is refused.
        let base = based_on.map(|clear| match self.seen.lock().of(pin).as_ref() {
            Some((c, s)) if c.as_slice() == clear => s.clone(),
            _ => Vec::new(),
        });
        let rev = self
            .inner
            .update_wrap(pin, base.as_deref(), &stored, to_be_changed, reset)?;
        *self.seen.lock().of(pin) = Some((wrap.to_vec(), stored));
        Ok(rev)
    }
    fn begin_try(&self, counter: Counter, limit: u32) -> Result<TryStart> {
        self.inner.begin_try(counter, limit)
    }
    fn end_try(&self, t: Try, success: bool) -> Result<u32> {
        self.inner.end_try(t, success)
    }
    fn insert(&self, encode: &mut dyn FnMut(i64) -> Result<Vec<u8>>) -> Result<(i64, u64)> {
        self.inner.insert(encode)
    }
    fn update(&self, id: i64, based_on: u64, record: &[u8]) -> Result<Option<u64>> {
        self.inner.update(id, based_on, record)
    }
    fn delete(&self, id: i64) -> Result<u64> {
        self.inner.delete(id)
    }
    fn changes_since(&self, since: u64) -> Result<Delta> {
        self.inner.changes_since(since)
    }
    fn scrub(&self) {
        self.inner.scrub();
    }
}
