//! The security domain of a home: its domain master key (DMK), split M-of-N among key holders,
//! and the encrypted backups that only the domain can open.
//!
//! What the DMK protects, and what it does not:
//! - Every backup of the home is encrypted (AES-256-GCM) under a key derived from the DMK
//!   (HKDF-SHA256, a fresh salt per backup). A backup is the token databases row for row: the
//!   object records whose secrets are already sealed under each token's key, and the token key
//!   wrapped under keys derived from the SO and user PINs. So a backup needs the domain to be
//!   opened at all, and the PINs to be used after restore: the quorum of holders restores keys,
//!   it does not learn them, and it cannot bypass a PIN.
//! - The live store is not re-wrapped under the DMK. The home must keep the DMK to make
//!   backups without the holders, and it can keep it only as it keeps the device key (a file
//!   readable by its owner only): a DMK-wrapped copy of each token key in the home would let
//!   anyone who reads the home unwrap every token key without a PIN. That would weaken the
//!   store, so it is not done.
//!
//! What authenticates a domain: the DMK is split among holders by public-key encryption, so
//! anyone who knows the holders' public keys can seal shares of a master key of their own
//! choosing. A domain file is therefore trusted only through its [`Fingerprint`], a SHA-256
//! over the domain id, the threshold, the holders' public keys and a commitment to the DMK
//! (see [`split`]), which `domain init` prints and the holders record. A restore into a home
//! without a domain key needs that recorded value; a restore into a home with one compares the
//! recovered DMK with it (constant time). Either check runs before anything is written.
//!
//! Home layout: `home/domain/domain.key` (magic, domain id, DMK; mode 0600 in a 0700
//! directory) and `home/domain/generation` (the state generation, see [`backup`]).

pub mod backup;
mod file;

use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::crypto::sharing::{HolderPrivate, HolderPublic};
use crate::crypto::{self, Hash, Secret, mac};

pub use file::{RecoveredDomain, fingerprint_of, recover, split};

/// A security-domain failure, in words for the operator. Never carries key material.
#[derive(Debug)]
pub struct DomainError(String);

impl DomainError {
    pub(crate) fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

impl fmt::Display for DomainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DomainError {}

/// The result of the domain API.
pub type DomainResult<T> = Result<T, DomainError>;

fn internal(e: bridge::Error) -> DomainError {
    DomainError::new(format!("internal error: {e}"))
}

/// The directory of the domain's files inside a home.
const DOMAIN_DIR: &str = "domain";
/// The DMK file.
const KEY_FILE: &str = "domain.key";
/// The state generation file.
const GENERATION_FILE: &str = "generation";
/// Magic and version of the DMK file.
const KEY_MAGIC: &[u8; 8] = b"FHSMDMK1";
/// Length of the domain id.
pub(crate) const ID_LEN: usize = 16;
/// Length of the DMK.
const DMK_LEN: usize = 32;
/// Length of a domain fingerprint and of a DMK commitment.
pub(crate) const DIGEST_LEN: usize = 32;

/// A domain master key and the domain's id. `Debug` shows the id only.
pub struct DomainKey {
    id: [u8; ID_LEN],
    dmk: Secret,
}

impl fmt::Debug for DomainKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DomainKey({})", self.id_hex())
    }
}

impl DomainKey {
    fn generate() -> DomainResult<Self> {
        let mut id = [0u8; ID_LEN];
        crypto::fill_random(&mut id).map_err(internal)?;
        Ok(Self {
            id,
            dmk: Secret::random(DMK_LEN).map_err(internal)?,
        })
    }

    /// The domain id (random, public).
    pub fn id(&self) -> [u8; ID_LEN] {
        self.id
    }

    /// The domain id in hex.
    pub fn id_hex(&self) -> String {
        hex(&self.id)
    }

    /// A 32-byte key for `purpose`: HKDF-SHA256 with `salt`, info `purpose ‖ domain id`.
    pub(crate) fn derive(&self, purpose: &[u8], salt: &[u8]) -> DomainResult<Secret> {
        let prk = mac::hkdf_extract(Hash::Sha256, salt, self.dmk.expose()).map_err(internal)?;
        let mut info = purpose.to_vec();
        info.extend_from_slice(&self.id);
        let okm = mac::hkdf_expand(Hash::Sha256, &prk, &info, 32).map_err(internal)?;
        Ok(Secret::copy_from(&okm))
    }

    /// A public commitment to the DMK and the domain id: HKDF-SHA256 of the DMK with info
    /// `"ferrohsm domain commitment v2" ‖ domain id`, 32 bytes. Anyone can read it; nobody can
    /// find another DMK with the same commitment (nor the DMK from it), so it pins the DMK.
    pub(crate) fn commitment(&self) -> DomainResult<[u8; DIGEST_LEN]> {
        let k = self.derive(b"ferrohsm domain commitment v2", b"")?;
        <[u8; DIGEST_LEN]>::try_from(k.expose())
            .map_err(|_| DomainError::new("internal error: commitment"))
    }

    /// Whether `other` is the same domain: the same id and the same DMK, compared in constant
    /// time.
    pub(crate) fn same_as(&self, other: &DomainKey) -> bool {
        let same_key = crypto::ct_eq(self.dmk.expose(), other.dmk.expose());
        let same_id = crypto::ct_eq(&self.id, &other.id);
        same_key & same_id
    }
}

/// A domain fingerprint: SHA-256 over the domain file's format version, domain id, threshold,
/// holders' public keys (in share order) and the commitment to the DMK. It is public; holders
/// record it at `domain init` and `backup restore --expect-fingerprint` checks a domain
/// against it. Shown as 8 groups of 8 hex digits joined by `-`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub(crate) [u8; DIGEST_LEN]);

impl Fingerprint {
    /// Parses what an operator types: 64 hex digits, any case, with or without `-`, `:` or
    /// spaces between them.
    pub fn parse(text: &str) -> DomainResult<Self> {
        let digits: String = text
            .chars()
            .filter(|c| !matches!(c, '-' | ':') && !c.is_whitespace())
            .map(|c| c.to_ascii_lowercase())
            .collect();
        unhex(&digits)
            .and_then(|b| <[u8; DIGEST_LEN]>::try_from(b).ok())
            .map(Self)
            .ok_or_else(|| {
                DomainError::new(format!(
                    "{text:?} is not a domain fingerprint (64 hex digits, as `domain init` \
                     printed it)"
                ))
            })
    }

    /// Equality in constant time.
    pub fn matches(&self, other: &Fingerprint) -> bool {
        crypto::ct_eq(&self.0, &other.0)
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, chunk) in self.0.chunks(4).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            f.write_str(&hex(chunk))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

fn domain_dir(home: &Path) -> PathBuf {
    home.join(DOMAIN_DIR)
}

/// Loads the home's DMK, if the home has a domain.
pub fn load(home: &Path) -> DomainResult<Option<DomainKey>> {
    let path = domain_dir(home).join(KEY_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => Zeroizing::new(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DomainError::new(format!("{}: {e}", path.display()))),
    };
    let corrupt = || DomainError::new(format!("{}: not a FerroHSM domain key", path.display()));
    let rest = bytes
        .strip_prefix(KEY_MAGIC.as_slice())
        .ok_or_else(corrupt)?;
    let (id, dmk) = rest.split_at_checked(ID_LEN).ok_or_else(corrupt)?;
    if dmk.len() != DMK_LEN {
        return Err(corrupt());
    }
    Ok(Some(DomainKey {
        id: id.try_into().map_err(|_| corrupt())?,
        dmk: Secret::copy_from(dmk),
    }))
}

/// Loads the home's DMK, or creates one. Returns the key and whether it was created.
pub fn load_or_create(home: &Path) -> DomainResult<(DomainKey, bool)> {
    if let Some(k) = load(home)? {
        return Ok((k, false));
    }
    let key = DomainKey::generate()?;
    store_key(home, &key)?;
    if read_generation(home)?.is_none() {
        write_generation(home, 0)?;
    }
    Ok((key, true))
}

/// Brings the domain recovered from the holders into `home`, checked as a restore checks it
/// ([`backup::authenticate`]: the fingerprint the holders recorded is required when the home
/// has no key): a new node of a cluster joins its domain this way. Returns whether the key was
/// written (`false`: the home held this domain's key already).
pub fn join(
    home: &Path,
    recovered: &RecoveredDomain,
    expect: Option<&Fingerprint>,
) -> DomainResult<bool> {
    if backup::authenticate(home, recovered, expect)?.is_some() {
        return Ok(false);
    }
    store_key(home, &recovered.key)?;
    if read_generation(home)?.is_none() {
        write_generation(home, 0)?;
    }
    Ok(true)
}

/// Writes the DMK file (temp file, then rename; owner-only permissions). An existing DMK file
/// is never replaced: if another process created one since this one looked, this fails rather
/// than swap the key under a domain file already written for the other.
fn store_key(home: &Path, key: &DomainKey) -> DomainResult<()> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(8 + ID_LEN + DMK_LEN));
    bytes.extend_from_slice(KEY_MAGIC);
    bytes.extend_from_slice(&key.id);
    bytes.extend_from_slice(key.dmk.expose());
    write_private(&domain_dir(home), KEY_FILE, &bytes, false)
}

/// Writes `dir/name` atomically, readable by the owner only ([`bridge::output`]: random
/// temporary name, no symbolic link followed, no directory others can write), replacing an
/// existing file only if `replace`; creates `dir` (0700).
fn write_private(dir: &Path, name: &str, bytes: &[u8], replace: bool) -> DomainResult<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| DomainError::new(format!("cannot create {}: {e}", dir.display())))?;
    restrict(dir, 0o700);
    let mut opts = bridge::output::WriteOptions::private()
        .shared_dir_remedy("the home's domain directory must be writable by its owner only");
    if !replace {
        opts = opts.no_replace();
    }
    let path = dir.join(name);
    bridge::output::write_file(&path, bytes, &opts).map_err(|e| {
        if e.is_exists() {
            DomainError::new(format!(
                "{} was created by another process meanwhile; nothing was changed (run the \
                 command again)",
                path.display()
            ))
        } else {
            DomainError::new(e.to_string())
        }
    })
}

fn restrict(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    }
}

/// The home's state generation (`None` if never set).
pub fn read_generation(home: &Path) -> DomainResult<Option<u64>> {
    let path = domain_dir(home).join(GENERATION_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => {
            s.trim().parse().map(Some).map_err(|_| {
                DomainError::new(format!("{}: not a state generation", path.display()))
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(DomainError::new(format!("{}: {e}", path.display()))),
    }
}

fn write_generation(home: &Path, generation: u64) -> DomainResult<()> {
    write_private(
        &domain_dir(home),
        GENERATION_FILE,
        format!("{generation}\n").as_bytes(),
        true,
    )
}

/// A holder's public key, from PEM (SubjectPublicKeyInfo, `BEGIN PUBLIC KEY`).
pub struct Holder {
    name: String,
    key: HolderPublic,
}

impl fmt::Debug for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Holder({})", self.name)
    }
}

impl Holder {
    /// Parses `pem`; `name` (e.g. the file name) names the holder in messages and in the
    /// domain file.
    pub fn from_pem(name: &str, pem: &str) -> DomainResult<Self> {
        let der = match bridge::pem::decode(pem) {
            Ok(("PUBLIC KEY", der)) => der,
            _ => {
                return Err(DomainError::new(format!(
                    "{name}: no PEM public key (BEGIN PUBLIC KEY)"
                )));
            }
        };
        let key = HolderPublic::from_spki(&der).map_err(|_| {
            DomainError::new(format!(
                "{name}: not an RSA public key of 2048 to 8192 bits"
            ))
        })?;
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    /// `sha256:` and the hex SHA-256 of the SubjectPublicKeyInfo.
    pub fn fingerprint(&self) -> String {
        format!("sha256:{}", hex(&self.key.fingerprint()))
    }
}

/// A holder's private key, from PEM (PKCS#8 `BEGIN PRIVATE KEY` or traditional
/// `BEGIN RSA PRIVATE KEY`). `Debug` shows the name only.
pub struct HolderKey {
    name: String,
    key: HolderPrivate,
}

impl fmt::Debug for HolderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HolderKey({})", self.name)
    }
}

impl HolderKey {
    /// Parses `pem` (zeroized by the caller).
    pub fn from_pem(name: &str, pem: &str) -> DomainResult<Self> {
        let bad = || {
            DomainError::new(format!(
                "{name}: not an RSA private key of 2048 to 8192 bits"
            ))
        };
        let key = match bridge::pem::decode(pem) {
            Ok(("PRIVATE KEY", der)) => HolderPrivate::from_pkcs8(&der).map_err(|_| bad())?,
            Ok(("RSA PRIVATE KEY", der)) => HolderPrivate::from_pkcs1(&der).map_err(|_| bad())?,
            _ if pem.contains("ENCRYPTED PRIVATE KEY")
                || pem.contains("Proc-Type: 4,ENCRYPTED") =>
            {
                return Err(DomainError::new(format!(
                    "{name}: an encrypted private key; decrypt it first (openssl pkey -in {name})"
                )));
            }
            _ => {
                return Err(DomainError::new(format!(
                    "{name}: no PEM private key (BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY)"
                )));
            }
        };
        Ok(Self {
            name: name.to_owned(),
            key,
        })
    }

    /// `sha256:` and the hex SHA-256 of the public key's SubjectPublicKeyInfo.
    pub fn fingerprint(&self) -> String {
        format!("sha256:{}", hex(self.key.fingerprint()))
    }
}

pub(crate) use base16ct::lower::encode_string as hex;

/// Hex of either case; `None` for anything else (an odd length, a sign, a space).
pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    base16ct::mixed::decode_vec(s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dmk_file_round_trip_and_adoption() {
        let home = tempfile::tempdir().unwrap();
        assert!(load(home.path()).unwrap().is_none());
        let (k, created) = load_or_create(home.path()).unwrap();
        assert!(created);
        let (k2, created) = load_or_create(home.path()).unwrap();
        assert!(!created);
        assert_eq!(k.id(), k2.id());
        assert_eq!(k.commitment().unwrap(), k2.commitment().unwrap());
        assert!(k.same_as(&k2));
        assert_eq!(read_generation(home.path()).unwrap(), Some(0));
        assert!(!format!("{k:?}").contains(&hex(k.dmk.expose())));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let path = home.path().join("domain/domain.key");
            let mode = std::fs::metadata(path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn another_dmk_or_id_is_another_domain() {
        let a = DomainKey::generate().unwrap();
        let same_id_other_key = DomainKey {
            id: a.id,
            dmk: Secret::random(DMK_LEN).unwrap(),
        };
        let same_key_other_id = DomainKey {
            id: [0; ID_LEN],
            dmk: Secret::copy_from(a.dmk.expose()),
        };
        assert!(!a.same_as(&same_id_other_key));
        assert!(!a.same_as(&same_key_other_id));
        assert_ne!(
            a.commitment().unwrap(),
            same_id_other_key.commitment().unwrap()
        );
        assert_ne!(
            a.commitment().unwrap(),
            same_key_other_id.commitment().unwrap()
        );
    }

    #[test]
    fn fingerprints_parse_as_printed_and_leniently() {
        let f = Fingerprint([0xab; DIGEST_LEN]);
        let shown = f.to_string();
        assert_eq!(shown.len(), 64 + 7);
        assert!(Fingerprint::parse(&shown).unwrap().matches(&f));
        assert!(
            Fingerprint::parse(&shown.to_uppercase())
                .unwrap()
                .matches(&f)
        );
        assert!(
            Fingerprint::parse(&shown.replace('-', ""))
                .unwrap()
                .matches(&f)
        );
        assert!(
            Fingerprint::parse(&shown.replace('-', " : "))
                .unwrap()
                .matches(&f)
        );
        assert!(Fingerprint::parse(&shown[..shown.len() - 1]).is_err());
        assert!(Fingerprint::parse(&format!("{shown}ab")).is_err());
        assert!(Fingerprint::parse("").is_err());
        assert!(Fingerprint::parse(&shown.replace('a', "g")).is_err());
    }

    #[test]
    fn an_existing_dmk_file_is_never_replaced() {
        let home = tempfile::tempdir().unwrap();
        let (k, _) = load_or_create(home.path()).unwrap();
        let before = std::fs::read(home.path().join("domain/domain.key")).unwrap();
        let other = DomainKey::generate().unwrap();
        let err = store_key(home.path(), &other).unwrap_err();
        assert!(err.to_string().contains("meanwhile"), "{err}");
        assert_eq!(
            std::fs::read(home.path().join("domain/domain.key")).unwrap(),
            before
        );
        assert!(load(home.path()).unwrap().unwrap().same_as(&k));
    }

    #[test]
    fn corrupt_dmk_file_is_an_error() {
        let home = tempfile::tempdir().unwrap();
        load_or_create(home.path()).unwrap();
        let path = home.path().join("domain/domain.key");
        let mut b = std::fs::read(&path).unwrap();
        b.pop();
        std::fs::write(&path, b).unwrap();
        assert!(load(home.path()).is_err());
    }
}
