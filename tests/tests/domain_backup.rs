//! Disaster recovery: `ferrohsm domain init` (2 of 3 holders, RSA keys made by `openssl
//! genpkey`), `ferrohsm backup create`, and `ferrohsm backup restore` into a fresh home with
//! two holders' keys. The restored keys sign exactly as before (checked by plain openssl with
//! the public keys exported before the backup); one key, a stranger's key, a flipped byte or a
//! truncated file are refused and leave the target home empty; an older backup does not
//! replace a newer state.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use ferrohsm_e2e::*;

/// An RSA-2048 holder key pair made by openssl: (private key PEM, public key PEM).
fn holder(h: &Home, name: &str) -> (PathBuf, PathBuf) {
    let key = h.file(&format!("{name}.key"));
    let public = h.file(&format!("{name}.pem"));
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        s(&key),
    ])
    .ok();
    openssl(&["pkey", "-in", s(&key), "-pubout", "-out", s(&public)]).ok();
    (key, public)
}

/// A source home: token "dr" with an RSA and an EC key pair, a 2-of-3 domain. Returns the
/// home, the domain file and the holders' private keys (the third as a traditional RSA key).
fn source() -> (Home, PathBuf, Vec<PathBuf>) {
    require("openssl");
    let h = Home::with_token("dr");
    h.keypair("rsa:2048", "01", "rsa-key");
    h.keypair("EC:prime256v1", "02", "ec-key");
    let mut keys = Vec::new();
    let mut publics = Vec::new();
    for i in 1..=3 {
        let (key, public) = holder(&h, &format!("h{i}"));
        keys.push(key);
        publics.push(public);
    }
    // The third holder keeps a traditional ("BEGIN RSA PRIVATE KEY") file.
    let traditional = h.file("h3.trad.key");
    openssl(&[
        "rsa",
        "-in",
        s(&keys[2]),
        "-traditional",
        "-out",
        s(&traditional),
    ])
    .ok();
    assert!(
        std::fs::read_to_string(&traditional)
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY")
    );
    keys[2] = traditional;
    let domain = h.file("domain.json");
    let holders = publics.iter().map(|p| s(p)).collect::<Vec<_>>().join(",");
    let r = h
        .ferrohsm(&[
            "domain",
            "init",
            "--holders",
            &holders,
            "--threshold",
            "2",
            "--out",
            s(&domain),
        ])
        .ok();
    assert!(r.stdout.contains("created"), "{}", r.all());
    (h, domain, keys)
}

fn backup(h: &Home, name: &str) -> PathBuf {
    let out = h.file(name);
    let r = h.ferrohsm(&["backup", "create", "--out", s(&out)]).ok();
    assert!(r.stderr.contains("token \"dr\""), "progress: {}", r.all());
    out
}

fn restore(target: &Home, file: &Path, domain: &Path, keys: &[&Path]) -> Run {
    let mut args = vec!["backup", "restore", "--in", s(file), "--domain", s(domain)];
    for k in keys {
        args.extend_from_slice(&["--key", s(k)]);
    }
    target.ferrohsm(&args)
}

/// Signs `msg` with the key whose CKA_ID is `id` through pkcs11-tool (openssl signature
/// format). (pkcs11-tool 0.23 ignores `--label` when choosing the signing key.)
fn sign(h: &Home, id: &str, mech: &str, msg: &Path, out: &Path) {
    h.user(&[
        "--sign",
        "-m",
        mech,
        "--id",
        id,
        "-i",
        s(msg),
        "-o",
        s(out),
        "--signature-format",
        "openssl",
    ])
    .ok();
}

fn verify(public: &Path, sig: &Path, msg: &Path) {
    let v = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        s(public),
        "-signature",
        s(sig),
        s(msg),
    ]);
    assert!(v.stdout.contains("Verified OK"), "{}", v.all());
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).map_or_else(
        |_| Vec::new(),
        |d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        },
    )
}

#[test]
fn two_of_three_holders_restore_a_fresh_home_whose_keys_sign_as_before() {
    let (src, domain, keys) = source();
    let rsa_pub = src.public_pem("01");
    let ec_pub = src.public_pem("02");
    let msg = src.file("msg");
    std::fs::write(&msg, b"signed before and after the disaster").unwrap();
    let rsa_before = src.file("rsa-before.sig");
    sign(&src, "01", "SHA256-RSA-PKCS", &msg, &rsa_before);
    verify(&rsa_pub, &rsa_before, &msg);
    let listing_before = src.user(&["--list-objects"]).stdout;
    let file = backup(&src, "home.backup");
    // No key bytes, and not even a label, in clear.
    let bytes = std::fs::read(&file).unwrap();
    assert!(!bytes.windows(7).any(|w| w == b"rsa-key"));

    let dst = Home::new();
    let r = restore(&dst, &file, &domain, &[&keys[0], &keys[2]]).ok();
    assert!(r.stdout.contains("restored 1 tokens"), "{}", r.all());
    assert!(r.stderr.contains("restoring token \"dr\""), "{}", r.all());

    // The same objects (labels, ids, types, flags) under the same user PIN; RSA PKCS#1 v1.5
    // is deterministic, so the signature is the very same bytes.
    let listing = dst.user(&["--list-objects"]).stdout;
    assert!(
        listing.contains("rsa-key") && listing.contains("ec-key"),
        "{listing}"
    );
    assert_eq!(listing, listing_before);
    let rsa_after = dst.file("rsa-after.sig");
    sign(&dst, "01", "SHA256-RSA-PKCS", &msg, &rsa_after);
    verify(&rsa_pub, &rsa_after, &msg);
    assert_eq!(
        std::fs::read(&rsa_before).unwrap(),
        std::fs::read(&rsa_after).unwrap()
    );
    let ec_after = dst.file("ec-after.sig");
    sign(&dst, "02", "ECDSA-SHA256", &msg, &ec_after);
    verify(&ec_pub, &ec_after, &msg);
    // The SO PIN came along too (C_InitPIN needs an SO login; the user PIN is set to itself).
    dst.tool(&[
        "--slot",
        "0",
        "--init-pin",
        "--login",
        "--so-pin",
        SO_PIN,
        "--pin",
        USER_PIN,
    ])
    .ok();

    // The restored home belongs to the domain: it makes backups of its own.
    let again = dst.file("again.backup");
    dst.ferrohsm(&["backup", "create", "--out", s(&again)]).ok();
}

#[test]
fn one_key_a_strangers_key_or_a_modified_backup_is_refused_and_the_home_stays_empty() {
    let (src, domain, keys) = source();
    let file = backup(&src, "home.backup");
    let (stranger, _) = holder(&src, "stranger");
    let bytes = std::fs::read(&file).unwrap();
    let flipped = src.file("flipped.backup");
    let mut b = bytes.clone();
    let mid = b.len() / 2;
    b[mid] ^= 0x01;
    std::fs::write(&flipped, &b).unwrap();
    let truncated = src.file("truncated.backup");
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    let mut altered: serde_like::Doc = serde_like::Doc(std::fs::read_to_string(&domain).unwrap());
    altered.set_threshold(1);
    let altered_domain = src.file("altered-domain.json");
    std::fs::write(&altered_domain, &altered.0).unwrap();

    let cases: Vec<(&str, &Path, &Path, Vec<&Path>, &str)> = vec![
        (
            "one key",
            &file,
            &domain,
            vec![&keys[0]],
            "2 holder keys are needed",
        ),
        (
            "the same key twice",
            &file,
            &domain,
            vec![&keys[1], &keys[1]],
            "2 holder keys are needed",
        ),
        (
            "a stranger's key",
            &file,
            &domain,
            vec![&keys[0], &stranger],
            "not a holder",
        ),
        (
            "a flipped byte",
            &flipped,
            &domain,
            vec![&keys[0], &keys[1]],
            "does not authenticate",
        ),
        (
            "a truncated file",
            &truncated,
            &domain,
            vec![&keys[0], &keys[1]],
            "does not authenticate",
        ),
        (
            "an altered domain file",
            &file,
            &altered_domain,
            vec![&keys[0], &keys[2]],
            "altered",
        ),
    ];
    for (what, file, domain, keys, expect) in cases {
        let dst = Home::new();
        let r = restore(&dst, file, domain, &keys);
        assert_ne!(r.status, 0, "{what}: restore succeeded\n{}", r.all());
        assert!(r.stderr.contains(expect), "{what}: {}", r.all());
        assert_eq!(
            entries(dst.path()),
            Vec::<String>::new(),
            "{what}: the home was written"
        );
    }
}

#[test]
fn an_older_backup_does_not_replace_a_newer_state() {
    let (src, domain, keys) = source();
    let old = backup(&src, "old.backup");
    // A change after the first backup, then a second backup.
    src.keypair("EC:prime256v1", "03", "later-key");
    let new = backup(&src, "new.backup");
    let two = [keys[0].as_path(), keys[1].as_path()];

    let r = restore(&src, &old, &domain, &two);
    assert_ne!(r.status, 0, "{}", r.all());
    assert!(r.stderr.contains("older than"), "{}", r.all());
    assert!(src.user(&["--list-objects"]).stdout.contains("later-key"));

    // A change after the newest backup: restoring it would lose that change.
    src.keypair("EC:prime256v1", "04", "latest-key");
    let r = restore(&src, &new, &domain, &two);
    assert_ne!(r.status, 0, "{}", r.all());
    assert!(
        r.stderr.contains("changed after this backup"),
        "{}",
        r.all()
    );
    assert!(src.user(&["--list-objects"]).stdout.contains("latest-key"));

    // Into an empty home, any backup of the domain goes.
    let dst = Home::new();
    restore(&dst, &old, &domain, &two).ok();
    let listing = dst.user(&["--list-objects"]).stdout;
    assert!(
        listing.contains("rsa-key") && !listing.contains("later-key"),
        "{listing}"
    );
    // ...and then a newer one over it, but not the older one again.
    restore(&dst, &new, &domain, &two).ok();
    assert!(dst.user(&["--list-objects"]).stdout.contains("later-key"));
    let r = restore(&dst, &old, &domain, &two);
    assert_ne!(r.status, 0, "{}", r.all());
}

/// Just enough JSON editing for the altered-domain case, without a JSON dependency.
mod serde_like {
    pub(super) struct Doc(pub(super) String);

    impl Doc {
        pub(super) fn set_threshold(&mut self, m: u32) {
            let i = self.0.find("\"threshold\":").expect("threshold") + "\"threshold\":".len();
            let rest = &self.0[i..];
            let end = rest.find([',', '\n', '}']).expect("end of value");
            self.0 = format!("{}{}{}", &self.0[..i], format_args!(" {m}"), &rest[end..]);
        }
    }
}
