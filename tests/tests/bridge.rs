//! The bridge end to end: SoftHSMv2 (the "real HSM") as a `kind = "module"` slot next to a
//! simulated slot, through the built module and pkcs11-tool, under a policy and an audit log.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ferrohsm_e2e::*;

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A temporary world: a SoftHSM token directory with a token "real", a simulated store, and a
/// `FERROHSM_CONF` naming both.
struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new(policy: &str) -> Self {
        require("softhsm2-util");
        assert!(Path::new(SOFTHSM).exists(), "softhsm2 is not installed");
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("softhsm");
        std::fs::create_dir_all(&tokens).unwrap();
        std::fs::write(
            dir.path().join("softhsm2.conf"),
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let w = Self { dir };
        let mut c = Command::new("softhsm2-util");
        w.env(&mut c);
        c.args([
            "--init-token",
            "--free",
            "--label",
            "real",
            "--so-pin",
            SO_PIN,
            "--pin",
            USER_PIN,
        ]);
        run(&mut c).ok();
        std::fs::write(
            w.dir.path().join("ferrohsm.toml"),
            format!(
                "[[slot]]\nkind = \"sim\"\nlabel = \"sim\"\nstore = {:?}\n\n\
                 [[slot]]\nkind = \"module\"\npath = \"{SOFTHSM}\"\ntoken_label = \"real\"\n\
                 audit_log = {:?}\n{policy}",
                w.dir.path().join("sim"),
                w.audit_log(),
            ),
        )
        .unwrap();
        w
    }

    fn audit_log(&self) -> PathBuf {
        self.dir.path().join("real-audit.log")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn env(&self, c: &mut Command) {
        c.env("SOFTHSM2_CONF", self.dir.path().join("softhsm2.conf"))
            .env("FERROHSM_CONF", self.dir.path().join("ferrohsm.toml"))
            .env_remove("FERROHSM_HOME")
            .env_remove("FERROHSM_LOG");
    }

    /// pkcs11-tool through our module.
    fn tool(&self, args: &[&str]) -> Run {
        require("pkcs11-tool");
        let mut c = timed("pkcs11-tool");
        self.env(&mut c);
        c.arg("--module").arg(module()).args(args);
        run(&mut c)
    }

    /// pkcs11-tool logged in on the bridged token.
    fn real(&self, args: &[&str]) -> Run {
        let mut all = vec!["--token-label", "real", "--login", "--pin", USER_PIN];
        all.extend_from_slice(args);
        self.tool(&all)
    }

    fn ferrohsm(&self, args: &[&str]) -> Run {
        let mut c = timed(cli());
        self.env(&mut c);
        c.args(args);
        run(&mut c)
    }
}

#[test]
fn simulated_and_bridged_slots_side_by_side_sign_verified_by_openssl_and_audited() {
    let w = World::new("");
    let listing = w.tool(&["--list-slots"]).ok();
    assert!(
        listing.stdout.contains("Slot 0 (0x0): sim"),
        "{}",
        listing.all()
    );
    assert!(listing.stdout.contains("SoftHSM"), "{}", listing.all());
    assert!(
        listing.stdout.contains("token label        : real"),
        "{}",
        listing.all()
    );

    // A key pair generated in SoftHSM through our module signs; openssl verifies.
    w.real(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        "01",
        "--label",
        "bridged-key",
    ])
    .ok();
    let msg = w.file("msg");
    std::fs::write(&msg, b"signed in the real HSM, through the bridge").unwrap();
    let sig = w.file("sig");
    // SoftHSM 2.6.1 has no CKM_ECDSA_SHA256: sign the digest with CKM_ECDSA instead.
    let digest = w.file("digest");
    openssl(&["dgst", "-sha256", "-binary", "-out", s(&digest), s(&msg)]).ok();
    w.real(&[
        "--sign",
        "-m",
        "ECDSA",
        "--id",
        "01",
        "-i",
        s(&digest),
        "-o",
        s(&sig),
        "--signature-format",
        "openssl",
    ])
    .ok();
    let pub_der = w.file("pub.der");
    w.tool(&[
        "--token-label",
        "real",
        "--read-object",
        "--type",
        "pubkey",
        "--id",
        "01",
        "-o",
        s(&pub_der),
    ])
    .ok();
    let v = openssl(&[
        "pkeyutl",
        "-verify",
        "-pubin",
        "-keyform",
        "DER",
        "-inkey",
        s(&pub_der),
        "-in",
        s(&digest),
        "-sigfile",
        s(&sig),
    ]);
    assert!(
        v.stdout.contains("Signature Verified Successfully"),
        "{}",
        v.all()
    );

    // The audit log holds the sign, chained; one changed byte breaks the chain.
    let log = std::fs::read_to_string(w.audit_log()).unwrap();
    assert!(log.contains("\"function\":\"C_Sign\""), "{log}");
    assert!(log.contains("\"label\":\"bridged-key\""), "{log}");
    assert!(!log.contains(USER_PIN), "a PIN in the audit log");
    let ok = w.ferrohsm(&["audit", "verify", s(&w.audit_log())]);
    assert_eq!(ok.status, 0, "{}", ok.all());
    let tampered = log.replacen("C_SignInit", "C_SignInjt", 1);
    std::fs::write(w.audit_log(), tampered).unwrap();
    let bad = w.ferrohsm(&["audit", "verify", s(&w.audit_log())]);
    assert_ne!(bad.status, 0, "{}", bad.all());
    assert!(bad.stderr.contains("line"), "{}", bad.all());
}

#[test]
fn non_exportable_policy_refuses_extractable_keys_and_sensitive_reads() {
    let w = World::new(
        "[slot.policy]\nnon_exportable = true\nallowed_mechanisms = [\"CKM_AES_KEY_GEN\", \"CKM_AES_CBC_PAD\", \"CKM_EC_KEY_PAIR_GEN\", \"CKM_ECDSA\"]\n",
    );
    // An extractable key: refused.
    w.real(&[
        "--keygen",
        "--private",
        "--key-type",
        "AES:16",
        "--label",
        "leaky",
        "--extractable",
    ])
    .fails_with("CKR_TEMPLATE_INCONSISTENT");
    // A sensitive key is made, and its value cannot be read.
    w.real(&[
        "--keygen",
        "--private",
        "--key-type",
        "AES:16",
        "--id",
        "02",
        "--label",
        "kept",
        "--sensitive",
    ])
    .ok();
    let r = w.real(&[
        "--read-object",
        "--type",
        "secrkey",
        "--id",
        "02",
        "-o",
        "/dev/null",
    ]);
    assert_ne!(
        r.status,
        0,
        "a secret was read through a non_exportable slot: {}",
        r.all()
    );
    // Mechanisms outside the allow-list are not offered and not usable.
    let mechs = w.tool(&["--token-label", "real", "--list-mechanisms"]).ok();
    assert!(mechs.stdout.contains("AES-CBC-PAD"), "{}", mechs.all());
    assert!(!mechs.stdout.contains("SHA256-RSA-PKCS"), "{}", mechs.all());
    let data = w.file("block");
    std::fs::write(&data, [7u8; 32]).unwrap();
    // SoftHSM does AES-ECB; the policy does not let it through.
    w.real(&[
        "--encrypt",
        "-m",
        "AES-ECB",
        "--id",
        "02",
        "-i",
        s(&data),
        "-o",
        "/dev/null",
    ])
    .fails_with("CKR_MECHANISM_INVALID");
    w.real(&[
        "--encrypt",
        "-m",
        "AES-CBC-PAD",
        "--iv",
        "00000000000000000000000000000000",
        "--id",
        "02",
        "-i",
        s(&data),
        "-o",
        "/dev/null",
    ])
    .ok();
}

trait RunExt {
    fn fails_with(self, code: &str);
}

impl RunExt for Run {
    fn fails_with(self, code: &str) {
        assert_ne!(self.status, 0, "expected {code}: {}", self.all());
        assert!(self.all().contains(code), "expected {code}: {}", self.all());
    }
}

#[test]
fn migrate_moves_extractable_keys_from_softhsm_into_a_simulated_token() {
    let w = World::new("");
    // The destination: the simulated slot, initialized.
    w.ferrohsm(&[
        "init-token",
        "--slot",
        "0",
        "--label",
        "dst",
        "--so-pin",
        SO_PIN,
        "--pin",
        USER_PIN,
    ])
    .ok();
    // In SoftHSM: an extractable AES key with known bytes, an extractable RSA key pair, and a
    // key that cannot leave.
    let key_bytes: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(29).wrapping_add(1))
        .collect();
    let key_file = w.file("aes.key");
    std::fs::write(&key_file, &key_bytes).unwrap();
    let softhsm = |args: &[&str]| {
        let mut c = timed("pkcs11-tool");
        w.env(&mut c);
        c.args([
            "--module",
            SOFTHSM,
            "--token-label",
            "real",
            "--login",
            "--pin",
            USER_PIN,
        ])
        .args(args);
        run(&mut c)
    };
    softhsm(&[
        "--write-object",
        s(&key_file),
        "--type",
        "secrkey",
        "--key-type",
        "AES:32",
        "--id",
        "11",
        "--label",
        "moving-aes",
        "--extractable",
        "--usage-decrypt",
    ])
    .ok();
    softhsm(&[
        "--keypairgen",
        "--key-type",
        "rsa:2048",
        "--id",
        "12",
        "--label",
        "moving-rsa",
        "--extractable",
    ])
    .ok();
    softhsm(&[
        "--keygen",
        "--key-type",
        "AES:16",
        "--id",
        "13",
        "--label",
        "staying",
    ])
    .ok();

    let mut m = timed(cli());
    w.env(&mut m);
    m.args(["migrate", "--from", "1", "--to", "0"])
        .env("FERROHSM_FROM_PIN", USER_PIN)
        .env("FERROHSM_TO_PIN", USER_PIN);
    // The key that cannot leave fails the run, after the others moved.
    let report = run(&mut m);
    assert_eq!(report.status, 1, "{}", report.all());
    assert!(
        report
            .stderr
            .contains("objects were left behind in the source (1 not extractable"),
        "{}",
        report.all()
    );
    assert!(
        report
            .stdout
            .contains("migrated   secret key \"moving-aes\""),
        "{}",
        report.all()
    );
    assert!(
        report
            .stdout
            .contains("migrated   private key \"moving-rsa\""),
        "{}",
        report.all()
    );
    assert!(
        report.stdout.contains("NOT MOVED  secret key \"staying\"")
            && report.stdout.contains("re-create"),
        "{}",
        report.all()
    );

    // The AES key works in the destination: same ciphertext as openssl with the original bytes.
    let block = w.file("block");
    std::fs::write(&block, [0x5au8; 32]).unwrap();
    let ct = w.file("ct");
    w.tool(&[
        "--token-label",
        "dst",
        "--login",
        "--pin",
        USER_PIN,
        "--encrypt",
        "-m",
        "AES-ECB",
        "--id",
        "11",
        "-i",
        s(&block),
        "-o",
        s(&ct),
    ])
    .ok();
    let hex = hex(&key_bytes);
    let ct_ossl = w.file("ct-openssl");
    openssl(&[
        "enc",
        "-aes-256-ecb",
        "-nopad",
        "-K",
        &hex,
        "-in",
        s(&block),
        "-out",
        s(&ct_ossl),
    ])
    .ok();
    assert_eq!(
        std::fs::read(&ct).unwrap(),
        std::fs::read(&ct_ossl).unwrap()
    );

    // The RSA key signs in the destination; openssl verifies with SoftHSM's public key.
    let msg = w.file("msg");
    std::fs::write(&msg, b"moved between HSMs").unwrap();
    let sig = w.file("sig");
    w.tool(&[
        "--token-label",
        "dst",
        "--login",
        "--pin",
        USER_PIN,
        "--sign",
        "-m",
        "SHA256-RSA-PKCS",
        "--id",
        "12",
        "-i",
        s(&msg),
        "-o",
        s(&sig),
    ])
    .ok();
    let pub_der = w.file("pub.der");
    softhsm(&[
        "--read-object",
        "--type",
        "pubkey",
        "--id",
        "12",
        "-o",
        s(&pub_der),
    ])
    .ok();
    let v = openssl(&[
        "dgst",
        "-sha256",
        "-keyform",
        "DER",
        "-verify",
        s(&pub_der),
        "-signature",
        s(&sig),
        s(&msg),
    ]);
    assert!(v.stdout.contains("Verified OK"), "{}", v.all());
}
