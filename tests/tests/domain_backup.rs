//! Disaster recovery: `ferrohsm domain init` (2 of 3 holders, RSA keys made by `openssl
//! genpkey`), `ferrohsm backup create`, and `ferrohsm backup restore` into a fresh home with
//! two holders' keys. The restored keys sign exactly as before (checked by plain openssl with
//! the public keys exported before the backup); one key, a stranger's key, a flipped byte or a
//! truncated file are refused and leave the target home empty; an older backup does not
//! replace a newer state. A domain file and backup forged from public values only (the
//! holders' public keys and the domain id) around another master key are refused by the real
//! holders, with nothing written, into a new home (against the recorded fingerprint) and into a
//! home that holds the real key (against that key); so is a wrong `--expect-fingerprint`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use ferrohsm_e2e::*;

/// An RSA-2048 holder key pair made by openssl: (private key PEM, public key PEM).
fn holder(h: &Home, name: &str) -> (PathBuf, PathBuf) {
    rsa_key_pair(&h.file(""), name)
}

/// A source home: token "dr" with an RSA and an EC key pair, a 2-of-3 domain. Returns the
/// home, the domain file, the holders' private keys (the third as a traditional RSA key) and
/// the domain fingerprint the holders record.
fn source() -> (Home, PathBuf, Vec<PathBuf>, String) {
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
    let fingerprint = printed_fingerprint(&r);
    (h, domain, keys, fingerprint)
}

fn backup(h: &Home, name: &str) -> PathBuf {
    let out = h.file(name);
    let r = h.ferrohsm(&["backup", "create", "--out", s(&out)]).ok();
    assert!(r.stderr.contains("token \"dr\""), "progress: {}", r.all());
    out
}

fn restore(
    target: &Home,
    file: &Path,
    domain: &Path,
    keys: &[&Path],
    expect_fingerprint: Option<&str>,
) -> Run {
    let mut args = vec!["backup", "restore", "--in", s(file), "--domain", s(domain)];
    for k in keys {
        args.extend_from_slice(&["--key", s(k)]);
    }
    if let Some(fp) = expect_fingerprint {
        args.extend_from_slice(&["--expect-fingerprint", fp]);
    }
    target.ferrohsm(&args)
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
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
    let (src, domain, keys, fingerprint) = source();
    assert_eq!(mode(&domain), 0o600, "the domain file");
    let rsa_pub = src.public_pem("01");
    let ec_pub = src.public_pem("02");
    let msg = src.file("msg");
    std::fs::write(&msg, b"signed before and after the disaster").unwrap();
    let rsa_before = src.file("rsa-before.sig");
    sign(&src, "01", "SHA256-RSA-PKCS", &msg, &rsa_before);
    verify(&rsa_pub, &rsa_before, &msg);
    let listing_before = src.user(&["--list-objects"]).stdout;
    let file = backup(&src, "home.backup");
    assert_eq!(mode(&file), 0o600, "the backup");
    // No key bytes, and not even a label, in clear.
    let bytes = std::fs::read(&file).unwrap();
    assert!(!bytes.windows(7).any(|w| w == b"rsa-key"));

    let dst = Home::new();
    // The fingerprint as the holders wrote it down: any case, with or without dashes.
    let typed = fingerprint.replace('-', "").to_uppercase();
    let r = restore(&dst, &file, &domain, &[&keys[0], &keys[2]], Some(&typed)).ok();
    assert!(r.stdout.contains("restored 1 tokens"), "{}", r.all());
    assert!(r.stderr.contains("as expected"), "{}", r.all());
    assert_eq!(mode(&dst.path().join("domain/domain.key")), 0o600);
    assert_eq!(mode(&dst.path().join("domain/generation")), 0o600);
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
    assert_eq!(mode(&again), 0o600);
    // And `domain init` there, for the same holders and threshold, prints the same fingerprint.
    let publics: Vec<String> = (1..=3)
        .map(|i| s(&src.file(&format!("h{i}.pem"))).to_owned())
        .collect();
    let again_domain = dst.file("again-domain.json");
    let r = dst
        .ferrohsm(&[
            "domain",
            "init",
            "--holders",
            &publics.join(","),
            "--threshold",
            "2",
            "--out",
            s(&again_domain),
            "--world-readable",
        ])
        .ok();
    assert!(r.stdout.contains("adopted"), "{}", r.all());
    assert_eq!(printed_fingerprint(&r), fingerprint);
    assert_eq!(mode(&again_domain), 0o644, "--world-readable");
}

#[test]
fn one_key_a_strangers_key_or_a_modified_backup_is_refused_and_the_home_stays_empty() {
    let (src, domain, keys, fingerprint) = source();
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
        let r = restore(&dst, file, domain, &keys, Some(&fingerprint));
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
    let (src, domain, keys, fingerprint) = source();
    let old = backup(&src, "old.backup");
    // A change after the first backup, then a second backup.
    src.keypair("EC:prime256v1", "03", "later-key");
    let new = backup(&src, "new.backup");
    let two = [keys[0].as_path(), keys[1].as_path()];

    // Over the home itself: its own key authenticates the domain, no fingerprint needed.
    let r = restore(&src, &old, &domain, &two, None);
    assert_ne!(r.status, 0, "{}", r.all());
    assert!(r.stderr.contains("older than"), "{}", r.all());
    assert!(src.user(&["--list-objects"]).stdout.contains("later-key"));

    // A change after the newest backup: restoring it would lose that change.
    src.keypair("EC:prime256v1", "04", "latest-key");
    let r = restore(&src, &new, &domain, &two, None);
    assert_ne!(r.status, 0, "{}", r.all());
    assert!(
        r.stderr.contains("changed after this backup"),
        "{}",
        r.all()
    );
    assert!(src.user(&["--list-objects"]).stdout.contains("latest-key"));

    // Into an empty home, any backup of the domain goes.
    let dst = Home::new();
    restore(&dst, &old, &domain, &two, Some(&fingerprint)).ok();
    let listing = dst.user(&["--list-objects"]).stdout;
    assert!(
        listing.contains("rsa-key") && !listing.contains("later-key"),
        "{listing}"
    );
    // ...and then a newer one over it, but not the older one again.
    restore(&dst, &new, &domain, &two, None).ok();
    assert!(dst.user(&["--list-objects"]).stdout.contains("later-key"));
    let r = restore(&dst, &old, &domain, &two, None);
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

/// The value of a top-level string field of a domain file (`"name": "value"`).
fn json_str(text: &str, name: &str) -> String {
    let key = format!("\"{name}\":");
    let at = text
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        + key.len();
    let rest = text[at..].trim_start().strip_prefix('"').unwrap();
    rest[..rest.find('"').unwrap()].to_owned()
}

/// An attacker's home that forges the real domain from public values only: the holders'
/// public keys and the domain id (printed by every command and written in clear in the domain
/// file and every backup header). The attacker writes the home's domain key file around a
/// master key of their choosing and the real domain id, lets `domain init` seal shares of it to
/// the real holders' public keys (2 of 3, as the real domain), and makes a backup of their
/// own token under it. Returns the attacker's home, forged domain file and forged backup.
fn forge(real_domain: &Path, holder_pems: &[PathBuf]) -> (Home, PathBuf, PathBuf) {
    let real = std::fs::read_to_string(real_domain).unwrap();
    let id = unhex(&json_str(&real, "domain_id"));
    assert_eq!(id.len(), 16);
    let attacker = Home::with_token("dr");
    attacker.keypair("EC:prime256v1", "01", "attacker-key");
    let dir = attacker.path().join("domain");
    std::fs::create_dir_all(&dir).unwrap();
    let mut key_file = b"FHSMDMK1".to_vec();
    key_file.extend_from_slice(&id);
    key_file.extend_from_slice(&[0x42; 32]); // the attacker's master key
    std::fs::write(dir.join("domain.key"), key_file).unwrap();
    // A generation far ahead, so that no anti-rollback rule stands in the way.
    std::fs::write(dir.join("generation"), "1000\n").unwrap();
    let domain = attacker.file("forged-domain.json");
    let holders = holder_pems
        .iter()
        .map(|p| s(p))
        .collect::<Vec<_>>()
        .join(",");
    let r = attacker
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
    assert!(r.stdout.contains("adopted"), "{}", r.all());
    let file = backup(&attacker, "forged.backup");
    (attacker, domain, file)
}

#[test]
fn a_domain_and_backup_forged_from_public_values_are_refused_with_nothing_written() {
    let (src, domain, keys, fingerprint) = source();
    let publics: Vec<PathBuf> = (1..=3).map(|i| src.file(&format!("h{i}.pem"))).collect();
    let (_attacker, forged_domain, forged_backup) = forge(&domain, &publics);
    let real_text = std::fs::read_to_string(&domain).unwrap();
    let forged_text = std::fs::read_to_string(&forged_domain).unwrap();
    assert_eq!(
        json_str(&forged_text, "domain_id"),
        json_str(&real_text, "domain_id")
    );
    let h1_h3 = [keys[0].as_path(), keys[2].as_path()];

    // The forgery is consistent in itself: the real holders' keys open its shares and they
    // combine into the key it commits to. What it cannot carry is the real fingerprint.
    // 1. Into a new home, without a fingerprint: nothing to check against, refused.
    let dst = Home::new();
    let r = restore(&dst, &forged_backup, &forged_domain, &h1_h3, None);
    assert_ne!(r.status, 0, "the forgery was restored:\n{}", r.all());
    assert!(r.stderr.contains("--expect-fingerprint"), "{}", r.all());
    assert_eq!(entries(dst.path()), Vec::<String>::new(), "{}", r.all());
    // 2. With the fingerprint the holders recorded: refused.
    let r = restore(
        &dst,
        &forged_backup,
        &forged_domain,
        &h1_h3,
        Some(&fingerprint),
    );
    assert_ne!(r.status, 0, "the forgery was restored:\n{}", r.all());
    assert!(r.stderr.contains("not the expected one"), "{}", r.all());
    assert_eq!(entries(dst.path()), Vec::<String>::new(), "{}", r.all());
    // 3. The forged file dressed in the real commitment and written fingerprint, so that its
    //    fingerprint is the recorded one: its shares no longer open.
    let dressed = src.file("dressed-domain.json");
    let mut text = forged_text.clone();
    for field in ["commitment", "fingerprint"] {
        text = text.replace(&json_str(&forged_text, field), &json_str(&real_text, field));
    }
    std::fs::write(&dressed, &text).unwrap();
    let r = restore(&dst, &forged_backup, &dressed, &h1_h3, Some(&fingerprint));
    assert_ne!(r.status, 0, "the forgery was restored:\n{}", r.all());
    assert!(r.stderr.contains("altered"), "{}", r.all());
    assert_eq!(entries(dst.path()), Vec::<String>::new(), "{}", r.all());
    // 4. The real domain file with the forged backup: the backup does not authenticate.
    let r = restore(&dst, &forged_backup, &domain, &h1_h3, Some(&fingerprint));
    assert_ne!(r.status, 0, "the forgery was restored:\n{}", r.all());
    assert!(r.stderr.contains("does not authenticate"), "{}", r.all());
    assert_eq!(entries(dst.path()), Vec::<String>::new(), "{}", r.all());

    // 5. Into a home that holds the real domain key (and no tokens yet), without a
    //    fingerprint: the recovered key is compared with the home's own.
    let keyed = Home::new();
    std::fs::create_dir_all(keyed.path().join("domain")).unwrap();
    std::fs::copy(
        src.path().join("domain/domain.key"),
        keyed.path().join("domain/domain.key"),
    )
    .unwrap();
    let before = std::fs::read(keyed.path().join("domain/domain.key")).unwrap();
    let r = restore(&keyed, &forged_backup, &forged_domain, &h1_h3, None);
    assert_ne!(
        r.status,
        0,
        "the forgery was restored over the home's key:\n{}",
        r.all()
    );
    assert!(
        r.stderr.contains("forged around another key"),
        "{}",
        r.all()
    );
    assert_eq!(
        entries(keyed.path()),
        vec!["domain".to_owned()],
        "{}",
        r.all()
    );
    assert_eq!(
        entries(&keyed.path().join("domain")),
        vec!["domain.key".to_owned()]
    );
    assert_eq!(
        std::fs::read(keyed.path().join("domain/domain.key")).unwrap(),
        before
    );

    // The real domain and backup still restore, both ways.
    let file = backup(&src, "real.backup");
    restore(&keyed, &file, &domain, &h1_h3, None).ok();
    restore(&Home::new(), &file, &domain, &h1_h3, Some(&fingerprint)).ok();
}

#[test]
fn a_wrong_or_malformed_expected_fingerprint_is_refused_with_nothing_written() {
    let (src, domain, keys, fingerprint) = source();
    let file = backup(&src, "home.backup");
    let two = [keys[0].as_path(), keys[1].as_path()];
    // One digit off.
    let last = fingerprint.chars().last().unwrap();
    let wrong = format!(
        "{}{}",
        &fingerprint[..fingerprint.len() - 1],
        if last == '0' { '1' } else { '0' }
    );
    for (expect, why) in [
        (wrong.as_str(), "not the expected one"),
        (&fingerprint[..20], "not a domain fingerprint"),
        ("sha256:nothex", "not a domain fingerprint"),
    ] {
        let dst = Home::new();
        let r = restore(&dst, &file, &domain, &two, Some(expect));
        assert_ne!(r.status, 0, "{expect}: restore succeeded\n{}", r.all());
        assert!(r.stderr.contains(why), "{expect}: {}", r.all());
        assert_eq!(
            entries(dst.path()),
            Vec::<String>::new(),
            "{expect}: {}",
            r.all()
        );
    }
    // Over a home with the key, a wrong fingerprint is still refused.
    let r = restore(&src, &file, &domain, &two, Some(&wrong));
    assert_ne!(r.status, 0, "{}", r.all());
    assert!(r.stderr.contains("not the expected one"), "{}", r.all());
}
