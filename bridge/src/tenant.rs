//! Tenants and roles of a daemon (docs/architecture.md §8): which identities may use which
//! tenant's tokens, and what each role may do there.
//!
//! The tenants of a home are a file, `HOME/tenants.json` (mode 0600, written whole), that
//! `ferrohsm tenant add|grant|revoke|remove` maintains and `ferrohsm serve` reads at every
//! connection. A tenant's tokens are a home of their own, `HOME/tenants/NAME`: a connection
//! admitted for tenant A opens the firmware on A's directory only, so B's slots, serials,
//! labels and handles do not exist for it — not hidden by a filter, absent. Every token has its
//! own keys (its token key wrapped under its PINs), so A's files open under none of B's keys.
//!
//! Roles ([`Role`]) are enforced by [`RoleGate`], in front of the tenant's firmware in the
//! daemon (never in the application's process): one `match` over [`Call`], so a function
//! added to the vocabulary is refused to a role until it is placed here.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cryptoki_sys::{CKA_TOKEN, CKU_SO, CKU_USER};
use serde::{Deserialize, Serialize};

use crate::call::{Backend, BackendExt, Call, Reply};
use crate::error::{Error, Result};
use crate::output::{self, WriteOptions};
use crate::types::*;

/// The file that lists a home's tenants.
pub const FILE: &str = "tenants.json";

/// What an identity may do inside its tenant. One identity may hold several roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Token initialization, PINs, creating and destroying keys and their attributes: logs in
    /// as the SO, and as the user to create private keys; uses no key.
    CryptoOfficer,
    /// Uses keys (sign, verify, encrypt, decrypt, wrap, unwrap, derive), creates session
    /// objects, and token objects only where the tenant allows it; logs in as the user only.
    CryptoUser,
    /// Reads the tenant's usage log (`ferrohsm audit show --tenant`); through PKCS#11 sees the
    /// slots and tokens' descriptions only, logs in as nobody and uses no key.
    Auditor,
}

impl Role {
    /// Every role, as the commands spell them.
    pub const ALL: [(Self, &'static str); 3] = [
        (Self::CryptoOfficer, "crypto-officer"),
        (Self::CryptoUser, "crypto-user"),
        (Self::Auditor, "auditor"),
    ];

    /// The role named `text` (`crypto-officer`, `crypto-user`, `auditor`).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == text).map(|(r, _)| *r)
    }

    /// The role's name.
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(r, _)| *r == self)
            .map_or("?", |(_, n)| n)
    }
}

/// One tenant: who may reach it, as what.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    /// Identity (a TLS client certificate's NAME, or `uid:N` on the local socket) → roles.
    #[serde(default)]
    pub grants: BTreeMap<String, BTreeSet<Role>>,
    /// Whether crypto users may create, change and destroy token objects (keys that persist);
    /// by default only crypto officers may.
    #[serde(default)]
    pub users_create_keys: bool,
}

/// The tenants of a home.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenants {
    /// Name → tenant.
    #[serde(default)]
    pub tenants: BTreeMap<String, Tenant>,
}

/// Whether `name` may name a tenant: 1 to 64 letters, digits, `.`, `_`, `-`, starting with a
/// letter or digit (it is a directory name and appears in logs as it is).
pub fn valid_name(name: &str) -> bool {
    crate::remote::tls::valid_identity(name)
}

/// Whether `id` may be granted: a certificate identity, or `uid:N`.
pub fn valid_identity(id: &str) -> bool {
    match id.strip_prefix("uid:") {
        Some(n) => n.parse::<u32>().is_ok_and(|u| u.to_string() == n),
        None => crate::remote::tls::valid_identity(id),
    }
}

impl Tenants {
    /// The tenants of `home` (none when it has no tenants file).
    pub fn load(home: &Path) -> Result<Self> {
        let path = home.join(FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => {
                return Err(Error::Config(format!(
                    "{}: cannot read: {e}",
                    path.display()
                )));
            }
        };
        let t: Self = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        for (name, tenant) in &t.tenants {
            if !valid_name(name) || tenant.grants.keys().any(|id| !valid_identity(id)) {
                return Err(Error::Config(format!(
                    "{}: tenant {name:?}: a name or identity that is not valid",
                    path.display()
                )));
            }
        }
        Ok(t)
    }

    /// Writes the tenants of `home` (whole, mode 0600).
    pub fn save(&self, home: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Config(format!("tenants: {e}")))?;
        output::write_file(
            &home.join(FILE),
            format!("{text}\n").as_bytes(),
            &WriteOptions::private(),
        )
        .map_err(|e| Error::Config(e.to_string()))
    }

    /// Whether the daemon serves tenants (else it serves the home to every allowed peer).
    pub fn any(&self) -> bool {
        !self.tenants.is_empty()
    }

    /// The tenant `identity` belongs to, and its roles there.
    pub fn of(&self, identity: &str) -> Option<(&str, &Tenant, BTreeSet<Role>)> {
        self.tenants.iter().find_map(|(name, t)| {
            t.grants
                .get(identity)
                .map(|roles| (name.as_str(), t, roles.clone()))
        })
    }
}

/// The home of tenant `name`'s tokens.
pub fn home_of(home: &Path, name: &str) -> PathBuf {
    home.join("tenants").join(name)
}

/// The home of tenant `name`'s tokens, created (mode 0700) if it does not exist yet.
pub fn prepare_home(home: &Path, name: &str) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    let dir = home_of(home, name);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::Config(format!("{}: cannot create: {e}", dir.display())))?;
    Ok(dir)
}

/// The usage log of tenant `name`.
pub fn audit_log_of(home: &Path, name: &str) -> PathBuf {
    home_of(home, name).join("audit.log")
}

/// The roles of one connection, in front of its tenant's firmware.
pub struct RoleGate {
    inner: Arc<dyn Backend>,
    roles: BTreeSet<Role>,
    users_create_keys: bool,
    who: String,
}

impl RoleGate {
    /// `inner` as seen by `who` holding `roles`.
    pub fn new(inner: Arc<dyn Backend>, who: &str, roles: BTreeSet<Role>, tenant: &Tenant) -> Self {
        Self {
            inner,
            roles,
            users_create_keys: tenant.users_create_keys,
            who: who.to_owned(),
        }
    }

    fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Refuses `function` unless one of `roles` is held.
    fn need(&self, function: &str, roles: &[Role]) -> Result<()> {
        if roles.iter().any(|r| self.has(*r)) {
            return Ok(());
        }
        let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
        log::warn!(
            "{}: {function} refused: it needs the role {} (holds {})",
            self.who,
            names.join(" or "),
            self.held()
        );
        Err(Error::ActionProhibited)
    }

    fn held(&self) -> String {
        let v: Vec<&str> = self.roles.iter().map(|r| r.name()).collect();
        if v.is_empty() {
            "none".into()
        } else {
            v.join(", ")
        }
    }

    /// Who may make or change a token object (a key that persists).
    fn keeper(&self) -> &'static [Role] {
        if self.users_create_keys {
            &[Role::CryptoOfficer, Role::CryptoUser]
        } else {
            &[Role::CryptoOfficer]
        }
    }

    /// Refuses a new object that would be a token object unless the role may keep keys.
    fn new_object(&self, function: &str, template: &Template) -> Result<()> {
        let token = template
            .get(CKA_TOKEN)
            .is_some_and(|a| a.as_bool().unwrap_or(true));
        if token {
            self.need(function, self.keeper())
        } else {
            self.need(function, &[Role::CryptoOfficer, Role::CryptoUser])
        }
    }

    /// Refuses a change to `object` if it is a token object and the role may not keep keys.
    fn existing_object(
        &self,
        function: &str,
        session: SessionHandle,
        object: ObjectHandle,
    ) -> Result<()> {
        self.need(function, &[Role::CryptoOfficer, Role::CryptoUser])?;
        let token = match self
            .inner
            .get_attribute_value(session, object, &[CKA_TOKEN])
        {
            Ok(a) => match a.first() {
                Some(AttrAnswer::Value(AttrValue::Bytes(b))) => b.first().is_some_and(|v| *v != 0),
                _ => true,
            },
            // The firmware's own answer (an invalid handle, a closed session) stands.
            Err(_) => return Ok(()),
        };
        if token {
            self.need(function, self.keeper())
        } else {
            Ok(())
        }
    }

    /// The role check of one call.
    fn check(&self, call: &Call<'_>) -> Result<()> {
        use Role::{Auditor, CryptoOfficer as Officer, CryptoUser as User};
        let any: &[Role] = &[Officer, User, Auditor];
        let keys: &[Role] = &[User];
        let objects: &[Role] = &[Officer, User];
        match call {
            // Descriptions, sessions and randomness: every role.
            Call::SlotList { .. }
            | Call::SlotInfo { .. }
            | Call::TokenInfo { .. }
            | Call::MechanismList { .. }
            | Call::MechanismInfo { .. }
            | Call::WaitForSlotEvent { .. }
            | Call::OpenSession { .. }
            | Call::CloseSession { .. }
            | Call::CloseAllSessions { .. }
            | Call::SessionInfo { .. }
            | Call::SessionCancel { .. }
            | Call::Logout { .. }
            | Call::GenerateRandom { .. }
            | Call::SeedRandom { .. } => self.need("this function", any),
            Call::InitToken { .. } => self.need("C_InitToken", &[Officer]),
            Call::InitPin { .. } => self.need("C_InitPIN", &[Officer]),
            Call::SetPin { .. } => self.need("C_SetPIN", objects),
            Call::Login { user, .. } | Call::LoginUser { user, .. } => match *user {
                CKU_SO => self.need("C_Login as the SO", &[Officer]),
                CKU_USER => self.need("C_Login as the user", objects),
                _ => self.need("C_Login for a key", keys),
            },
            Call::OperationState { .. } | Call::SetOperationState { .. } => {
                self.need("the operation state", keys)
            }
            // Reading objects: officers and users.
            Call::ObjectSize { .. }
            | Call::GetAttributeValue { .. }
            | Call::FindObjectsInit { .. }
            | Call::FindObjects { .. }
            | Call::FindObjectsFinal { .. } => self.need("reading objects", objects),
            Call::CreateObject { template, .. } => self.new_object("C_CreateObject", template),
            Call::GenerateKey { template, .. } => self.new_object("C_GenerateKey", template),
            Call::GenerateKeyPair {
                public_template,
                private_template,
                ..
            } => {
                self.new_object("C_GenerateKeyPair", public_template)?;
                self.new_object("C_GenerateKeyPair", private_template)
            }
            Call::CopyObject {
                session,
                object,
                template,
                ..
            } => {
                self.existing_object("C_CopyObject", *session, *object)?;
                self.new_object("C_CopyObject", template)
            }
            Call::DestroyObject {
                session, object, ..
            } => self.existing_object("C_DestroyObject", *session, *object),
            Call::SetAttributeValue {
                session, object, ..
            } => self.existing_object("C_SetAttributeValue", *session, *object),
            // Using a key: crypto users; a new key from it is also a new object.
            Call::UnwrapKey { template, .. } | Call::DeriveKey { template, .. } => {
                self.need("using a key", keys)?;
                self.new_object("making a key", template)
            }
            Call::EncryptInit { .. }
            | Call::Encrypt { .. }
            | Call::EncryptUpdate { .. }
            | Call::EncryptFinal { .. }
            | Call::DecryptInit { .. }
            | Call::Decrypt { .. }
            | Call::DecryptUpdate { .. }
            | Call::DecryptFinal { .. }
            | Call::DigestKey { .. }
            | Call::SignInit { .. }
            | Call::Sign { .. }
            | Call::SignUpdate { .. }
            | Call::SignFinal { .. }
            | Call::SignRecoverInit { .. }
            | Call::SignRecover { .. }
            | Call::VerifyInit { .. }
            | Call::Verify { .. }
            | Call::VerifyUpdate { .. }
            | Call::VerifyFinal { .. }
            | Call::VerifyRecoverInit { .. }
            | Call::VerifyRecover { .. }
            | Call::DigestEncryptUpdate { .. }
            | Call::DecryptDigestUpdate { .. }
            | Call::SignEncryptUpdate { .. }
            | Call::DecryptVerifyUpdate { .. }
            | Call::WrapKey { .. }
            | Call::MessageEncryptInit { .. }
            | Call::EncryptMessage { .. }
            | Call::EncryptMessageBegin { .. }
            | Call::EncryptMessageNext { .. }
            | Call::MessageEncryptFinal { .. }
            | Call::MessageDecryptInit { .. }
            | Call::DecryptMessage { .. }
            | Call::DecryptMessageBegin { .. }
            | Call::DecryptMessageNext { .. }
            | Call::MessageDecryptFinal { .. }
            | Call::MessageSignInit { .. }
            | Call::SignMessage { .. }
            | Call::SignMessageBegin { .. }
            | Call::SignMessageNext { .. }
            | Call::MessageSignFinal { .. }
            | Call::MessageVerifyInit { .. }
            | Call::VerifyMessage { .. }
            | Call::VerifyMessageBegin { .. }
            | Call::VerifyMessageNext { .. }
            | Call::MessageVerifyFinal { .. } => self.need("using a key", keys),
            // Digests use no key.
            Call::DigestInit { .. }
            | Call::Digest { .. }
            | Call::DigestUpdate { .. }
            | Call::DigestFinal { .. } => self.need("digesting", objects),
        }
    }
}

impl Backend for RoleGate {
    fn call(&self, call: Call<'_>) -> Result<Reply> {
        self.check(&call)?;
        self.inner.call(call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_identities_are_plain() {
        for ok in ["alice", "uid:0", "uid:1000", "a.b-c_d"] {
            assert!(valid_identity(ok), "{ok}");
        }
        for bad in [
            "", "uid:", "uid:01", "uid:-1", "uid:x", "../x", ".hidden", "a/b", "a b",
        ] {
            assert!(!valid_identity(bad), "{bad}");
        }
        assert!(!valid_name(".."));
        assert!(!valid_name("a/b"));
        for (r, n) in Role::ALL {
            assert_eq!(Role::parse(n), Some(r));
            assert_eq!(r.name(), n);
        }
        assert_eq!(Role::parse("admin"), None);
    }

    #[test]
    fn the_file_round_trips_and_refuses_what_is_not_valid() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!Tenants::load(dir.path()).unwrap().any());
        let mut t = Tenants::default();
        t.tenants.entry("A".into()).or_default().grants.insert(
            "alice".into(),
            [Role::CryptoOfficer, Role::CryptoUser]
                .into_iter()
                .collect(),
        );
        t.save(dir.path()).unwrap();
        let back = Tenants::load(dir.path()).unwrap();
        assert_eq!(back, t);
        let (name, _, roles) = back.of("alice").unwrap();
        assert_eq!(name, "A");
        assert_eq!(roles.len(), 2);
        assert!(back.of("bob").is_none());
        std::fs::write(
            dir.path().join(FILE),
            r#"{"tenants":{"../etc":{"grants":{}}}}"#,
        )
        .unwrap();
        assert!(Tenants::load(dir.path()).is_err());
        std::fs::write(dir.path().join(FILE), r#"{"tenants":{},"extra":1}"#).unwrap();
        assert!(Tenants::load(dir.path()).is_err());
    }
}
