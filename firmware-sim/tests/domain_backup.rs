//! The security domain's backups through the firmware's public API: a backup restores every
//! token row for row (objects, PINs, counters), holds no secret in clear, and is refused when
//! modified, truncated, of another domain, or older than the state it would replace; the
//! domain itself must match the home's key or the fingerprint the caller expects.

// clippy.toml exempts `#[test]` functions only; the helpers here panic on purpose too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::Path;

use bridge::config::FirmwareConfig;
use bridge::output::WriteOptions;
use bridge::*;
use cryptoki_sys::*;
use firmware_sim::Device;
use firmware_sim::domain::{self, Fingerprint, Holder, HolderKey, RecoveredDomain, backup};

const SO: &[u8] = b"12345678";
const USER: &[u8] = b"1234";
/// A key value that must never appear in a backup file.
const AES_VALUE: &[u8; 32] = b"backup-test-aes-key-value-32byte";
const SECRET_DATA: &[u8] = b"private data object value, never in clear";

fn config() -> FirmwareConfig {
    FirmwareConfig {
        pin_kdf_iterations: 1000,
        max_login_failures: 3,
        ..FirmwareConfig::default()
    }
}

fn label(s: &str) -> [u8; 32] {
    let mut l = [b' '; 32];
    l[..s.len()].copy_from_slice(s.as_bytes());
    l
}

/// A home with one token holding an AES key and a private data object.
fn populated() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::open_home(dir.path(), &config()).unwrap();
    dev.init_token(SlotId(0), SO, &label("backed-up")).unwrap();
    let s = dev
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    dev.login(s, CKU_SO, Some(SO)).unwrap();
    dev.init_pin(s, USER).unwrap();
    dev.logout(s).unwrap();
    dev.login(s, CKU_USER, Some(USER)).unwrap();
    dev.create_object(
        s,
        &Template::new()
            .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
            .with(Attribute::ulong(CKA_KEY_TYPE, CKK_AES))
            .with(Attribute::bool(CKA_TOKEN, true))
            .with(Attribute::bool(CKA_PRIVATE, true))
            .with(Attribute::bool(CKA_SENSITIVE, true))
            .with(Attribute::bool(CKA_ENCRYPT, true))
            .with(Attribute::bytes(CKA_LABEL, b"aes".to_vec()))
            .with(Attribute::bytes(CKA_VALUE, AES_VALUE.to_vec())),
    )
    .unwrap();
    add_data(&dev, s, "note", SECRET_DATA);
    dev.close_session(s).unwrap();
    dir
}

fn add_data(dev: &Device, s: SessionHandle, name: &str, value: &[u8]) {
    dev.create_object(
        s,
        &Template::new()
            .with(Attribute::ulong(CKA_CLASS, CKO_DATA))
            .with(Attribute::bool(CKA_TOKEN, true))
            .with(Attribute::bool(CKA_PRIVATE, true))
            .with(Attribute::bytes(CKA_LABEL, name.as_bytes().to_vec()))
            .with(Attribute::bytes(CKA_VALUE, value.to_vec())),
    )
    .unwrap();
}

/// Adds an object to slot 0 of `home` (a change after a backup).
fn change(home: &Path) {
    let dev = Device::open_home(home, &config()).unwrap();
    let s = dev
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    dev.login(s, CKU_USER, Some(USER)).unwrap();
    add_data(&dev, s, "later", b"x");
    dev.close_session(s).unwrap();
}

fn find(dev: &Device, s: SessionHandle, name: &str) -> ObjectHandle {
    dev.find_objects_init(
        s,
        &Template::new().with(Attribute::bytes(CKA_LABEL, name.as_bytes().to_vec())),
    )
    .unwrap();
    let found = dev.find_objects(s, 10).unwrap();
    dev.find_objects_final(s).unwrap();
    assert_eq!(found.len(), 1, "{name}");
    found[0]
}

/// AES-ECB of one block under the key labelled "aes" of slot 0.
fn encrypt_block(dev: &Device, s: SessionHandle) -> Vec<u8> {
    let key = find(dev, s, "aes");
    dev.encrypt_init(s, &Mechanism::new(CKM_AES_ECB), key)
        .unwrap();
    let mut out = [0u8; 16];
    let n = dev.encrypt(s, b"sixteen byte blk", Some(&mut out)).unwrap();
    out[..n].to_vec()
}

fn quiet() -> impl FnMut(&str) {
    |_: &str| {}
}

fn backup(home: &Path, out: &Path) -> backup::Summary {
    backup::create(
        home,
        out,
        &WriteOptions::private(),
        1_700_000_000,
        &mut quiet(),
    )
    .unwrap()
}

/// The home's domain (created if need be) split to one RSA-2048 holder, 1 of 1, and recovered
/// with that holder's key, as `backup restore` does: the recovered domain and its fingerprint.
fn recovered(home: &Path) -> (RecoveredDomain, Fingerprint) {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey};
    use base64::Engine as _;
    let pem = |label: &str, der: &[u8]| {
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            base64::engine::general_purpose::STANDARD.encode(der)
        )
    };
    let (dk, _) = domain::load_or_create(home).unwrap();
    let k = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
    let spki = k.public_key().as_der().unwrap();
    let holder = Holder::from_pem("h1.pem", &pem("PUBLIC KEY", spki.as_ref())).unwrap();
    let (text, fp) = domain::split(&dk, &[holder], 1).unwrap();
    let key =
        HolderKey::from_pem("h1.key", &pem("PRIVATE KEY", k.as_der().unwrap().as_ref())).unwrap();
    (domain::recover(&text, &[key]).unwrap(), fp)
}

fn is_empty(home: &Path) -> bool {
    std::fs::read_dir(home).map_or(true, |mut d| d.next().is_none())
}

#[test]
fn backup_restores_every_object_pin_and_key_into_an_empty_home() {
    let a = populated();
    let (dk, created) = domain::load_or_create(a.path()).unwrap();
    assert!(created);
    let (rec, fp) = recovered(a.path());
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("home.bak");
    let summary = backup(a.path(), &file);
    assert_eq!(summary.header.generation, 1);
    assert_eq!(summary.tokens.len(), 1);
    assert_eq!(summary.tokens[0].label, "backed-up");
    assert_eq!(domain::read_generation(a.path()).unwrap(), Some(1));

    let bytes = std::fs::read(&file).unwrap();
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(AES_VALUE), "key bytes in clear in the backup");
    assert!(!contains(SECRET_DATA), "secret data in clear in the backup");
    assert!(!contains(b"backed-up"), "the payload is not encrypted");
    let header = backup::Header::parse(&bytes).unwrap();
    assert_eq!(header.domain_id, dk.id());

    let before = {
        let dev = Device::open_home(a.path(), &config()).unwrap();
        let s = dev
            .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
            .unwrap();
        dev.login(s, CKU_USER, Some(USER)).unwrap();
        (encrypt_block(&dev, s), find(&dev, s, "note"))
    };

    let b = tempfile::tempdir().unwrap();
    let home_b = b.path().join("home");
    // A new home has nothing to check the domain against but the expected fingerprint.
    let err = backup::restore(&home_b, &bytes, &rec, None, &mut quiet()).unwrap_err();
    assert!(err.to_string().contains("--expect-fingerprint"), "{err}");
    assert!(!home_b.exists());
    let restored = backup::restore(&home_b, &bytes, &rec, Some(&fp), &mut quiet()).unwrap();
    assert_eq!(restored.tokens[0].objects, summary.tokens[0].objects);
    assert_eq!(domain::read_generation(&home_b).unwrap(), Some(1));
    assert_eq!(domain::load(&home_b).unwrap().unwrap().id(), dk.id());
    let leftovers: Vec<_> = std::fs::read_dir(&home_b)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}"); // tokens/ and domain/ only

    let dev = Device::open_home(&home_b, &config()).unwrap();
    assert_eq!(dev.token_info(SlotId(0)).unwrap().label, "backed-up");
    let s = dev
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    assert_eq!(
        dev.login(s, CKU_USER, Some(b"0000")),
        Err(Error::PinIncorrect)
    );
    dev.login(s, CKU_USER, Some(USER)).unwrap();
    assert_eq!(encrypt_block(&dev, s), before.0);
    let note = find(&dev, s, "note");
    assert_eq!(note, before.1, "object handles are kept");
    match dev
        .get_attribute_value(s, note, &[CKA_VALUE])
        .unwrap()
        .remove(0)
    {
        AttrAnswer::Value(AttrValue::Bytes(ref v)) => assert_eq!(v, SECRET_DATA),
        other => panic!("{other:?}"),
    }
    // The SO PIN is unchanged too, and the restored token takes new objects.
    dev.logout(s).unwrap();
    dev.login(s, CKU_SO, Some(SO)).unwrap();
    dev.logout(s).unwrap();
    dev.login(s, CKU_USER, Some(USER)).unwrap();
    add_data(&dev, s, "after-restore", b"y");
    assert_ne!(find(&dev, s, "after-restore"), note);
}

#[test]
fn modified_truncated_or_foreign_backups_are_refused_and_write_nothing() {
    let a = populated();
    let (dk, fp) = recovered(a.path());
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("home.bak");
    backup(a.path(), &file);
    let bytes = std::fs::read(&file).unwrap();
    let target = tempfile::tempdir().unwrap();
    let fp = Some(&fp);

    // A flipped bit in the header (generation), in the body, in the tag.
    for at in [30, 100, bytes.len() / 2, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        let err = backup::restore(target.path(), &bad, &dk, fp, &mut quiet()).unwrap_err();
        assert!(
            err.to_string().contains("does not authenticate"),
            "byte {at}: {err}"
        );
        assert!(is_empty(target.path()), "byte {at}: something was written");
    }
    for len in [0, 10, 89, 90, 105, bytes.len() - 1] {
        assert!(backup::restore(target.path(), &bytes[..len], &dk, fp, &mut quiet()).is_err());
        assert!(is_empty(target.path()));
    }
    // Another domain's key (the domain id is checked first, then the key).
    let other = tempfile::tempdir().unwrap();
    let (foreign, foreign_fp) = recovered(other.path());
    let err = backup::restore(
        target.path(),
        &bytes,
        &foreign,
        Some(&foreign_fp),
        &mut quiet(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("belongs to domain"), "{err}");
    assert!(is_empty(target.path()));
    // The right domain, but the caller expected another one.
    let err =
        backup::restore(target.path(), &bytes, &dk, Some(&foreign_fp), &mut quiet()).unwrap_err();
    assert!(err.to_string().contains("not the expected one"), "{err}");
    assert!(is_empty(target.path()));
    // Over a home of another domain, with or without a fingerprint.
    let before: Vec<_> = std::fs::read_dir(other.path()).unwrap().collect();
    for expect in [None, fp] {
        let err = backup::restore(other.path(), &bytes, &dk, expect, &mut quiet()).unwrap_err();
        assert!(err.to_string().contains("belongs to domain"), "{err}");
    }
    assert_eq!(
        std::fs::read_dir(other.path()).unwrap().count(),
        before.len()
    );
}

#[test]
fn an_older_backup_does_not_replace_a_newer_state() {
    let a = populated();
    let (dk, fp) = recovered(a.path());
    let files = tempfile::tempdir().unwrap();
    let (old, new) = (files.path().join("1.bak"), files.path().join("2.bak"));
    backup(a.path(), &old);
    change(a.path());
    assert_eq!(backup(a.path(), &new).header.generation, 2);
    let old = std::fs::read(&old).unwrap();
    let new = std::fs::read(&new).unwrap();

    let err = backup::restore(a.path(), &old, &dk, None, &mut quiet()).unwrap_err();
    assert!(err.to_string().contains("older than"), "{err}");
    // The newest backup over the state it recorded is accepted (nothing newer is lost).
    backup::restore(a.path(), &new, &dk, None, &mut quiet()).unwrap();
    // A change after the newest backup: that backup would now roll it back.
    change(a.path());
    let err = backup::restore(a.path(), &new, &dk, None, &mut quiet()).unwrap_err();
    assert!(
        err.to_string().contains("changed after this backup"),
        "{err}"
    );
    // Any backup goes into an empty home.
    let c = tempfile::tempdir().unwrap();
    backup::restore(c.path(), &old, &dk, Some(&fp), &mut quiet()).unwrap();
    // A home with a token the backup does not know refuses it.
    let d = tempfile::tempdir().unwrap();
    let dev = Device::open_home(d.path(), &config()).unwrap();
    dev.init_token(SlotId(0), SO, &label("stranger")).unwrap();
    drop(dev);
    let err = backup::restore(d.path(), &new, &dk, Some(&fp), &mut quiet()).unwrap_err();
    assert!(err.to_string().contains("not in this backup"), "{err}");
}

#[test]
fn backup_needs_a_domain() {
    let a = populated();
    let files = tempfile::tempdir().unwrap();
    let err = backup::create(
        a.path(),
        &files.path().join("x"),
        &WriteOptions::private(),
        0,
        &mut quiet(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("domain init"), "{err}");
    assert!(is_empty(files.path()));
}
