//! The CNG key storage provider (`libferrohsm_ksp.so`) through a C stand-in for `ncrypt.dll`
//! (`tests/c/ksp_host.c`, built here against `include/ferrohsm_ksp.h`): keys created through
//! the KSP, their public blobs turned into SubjectPublicKeyInfo here and their signatures and
//! ciphertexts checked by plain `openssl`; the same keys used through pkcs11-tool, and a
//! pkcs11-tool key used through the KSP.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ferrohsm_e2e::*;

fn build() -> PathBuf {
    require("cc");
    let out = tempfile::Builder::new()
        .prefix("ksp-host-")
        .tempdir()
        .unwrap()
        .keep();
    let exe = out.join("ksp_host");
    let root = workspace();
    run(Command::new("cc")
        .args(["-Wall", "-Wextra", "-Werror", "-O1", "-std=gnu11", "-I"])
        .arg(root.join("include"))
        .arg("-o")
        .arg(&exe)
        .arg(root.join("tests/c/ksp_host.c"))
        .arg("-ldl"))
    .ok();
    exe
}

/// Runs `ksp_host <ksp> <command> <dir> [arg]` in `home` with the user PIN; every check passes.
fn host(home: &Home, exe: &Path, command: &str, dir: &Path, arg: Option<&str>) -> Run {
    let mut c = home.timed(exe);
    c.env("FERROHSM_PIN", USER_PIN)
        .arg(ksp_module())
        .arg(command)
        .arg(dir);
    if let Some(a) = arg {
        c.arg(a);
    }
    let r = run(&mut c);
    println!("{}", r.stdout);
    assert_eq!(r.status, 0, "ksp_host {command}:\n{}", r.all());
    assert!(r.stdout.contains("\n0 failures"), "{}", r.all());
    r
}

fn u32le(b: &[u8], at: usize) -> usize {
    usize::try_from(u32::from_le_bytes(b[at..at + 4].try_into().unwrap())).unwrap()
}

/// SubjectPublicKeyInfo (DER) from a `BCRYPT_RSAPUBLIC_BLOB`.
fn spki_from_rsa_blob(blob: &[u8]) -> Vec<u8> {
    assert_eq!(&blob[..4], b"RSA1");
    let (bits, cb_e, cb_n) = (u32le(blob, 4), u32le(blob, 8), u32le(blob, 12));
    assert_eq!(bits, 3072);
    let e = &blob[24..24 + cb_e];
    let n = &blob[24 + cb_e..24 + cb_e + cb_n];
    assert_eq!(blob.len(), 24 + cb_e + cb_n);
    rsa_spki(n, e)
}

/// SubjectPublicKeyInfo (DER) from a P-256 `BCRYPT_ECCPUBLIC_BLOB`.
fn spki_from_p256_blob(blob: &[u8]) -> Vec<u8> {
    assert_eq!(&blob[..4], b"ECS1");
    assert_eq!(u32le(blob, 4), 32);
    assert_eq!(blob.len(), 8 + 64);
    p256_spki(&[&[4u8][..], &blob[8..]].concat())
}

fn pem_from_spki(dir: &Path, name: &str, spki: &[u8]) -> String {
    let der_path = dir.join(format!("{name}.der"));
    let pem_path = dir.join(format!("{name}.pem"));
    std::fs::write(&der_path, spki).unwrap();
    openssl(&[
        "pkey",
        "-pubin",
        "-inform",
        "DER",
        "-in",
        der_path.to_str().unwrap(),
        "-out",
        pem_path.to_str().unwrap(),
    ])
    .ok();
    pem_path.to_str().unwrap().to_owned()
}

fn verify(pem: &str, sig: &Path, msg: &Path, extra: &[&str]) {
    let mut args = vec!["dgst", "-sha256", "-verify", pem, "-signature"];
    args.push(sig.to_str().unwrap());
    args.extend_from_slice(extra);
    args.push(msg.to_str().unwrap());
    let r = openssl(&args);
    assert!(r.stdout.contains("Verified OK"), "{}", r.all());
}

/// The stable CKA_ID the KSP gives a named key: the first 16 bytes of SHA-256 of the name.
fn key_id_hex(dir: &Path, name: &str) -> String {
    let f = dir.join("name");
    std::fs::write(&f, name).unwrap();
    let out = openssl(&["dgst", "-sha256", "-hex", "-r", s(&f)])
        .ok()
        .stdout;
    out[..32].to_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn ksp_keys_sign_decrypt_and_refuse_through_the_table_verified_by_openssl_and_pkcs11_tool() {
    let exe = build();
    let home = Home::with_token("ksp");
    let dir = home.file("x").parent().unwrap().to_path_buf();
    let msg = dir.join("msg");
    std::fs::write(&msg, b"signed through the CNG key storage provider").unwrap();
    openssl(&[
        "dgst",
        "-sha256",
        "-binary",
        "-out",
        s(&dir.join("hash")),
        s(&msg),
    ])
    .ok();

    // Create, finalize, export, sign (PKCS#1, PSS, ECDSA), refuse plaintext export.
    host(&home, &exe, "create", &dir, None);

    let rsa_pem = pem_from_spki(
        &dir,
        "rsa",
        &spki_from_rsa_blob(&std::fs::read(dir.join("rsa.blob")).unwrap()),
    );
    let ec_pem = pem_from_spki(
        &dir,
        "ec",
        &spki_from_p256_blob(&std::fs::read(dir.join("ec.blob")).unwrap()),
    );
    verify(&rsa_pem, &dir.join("rsa-pkcs1.sig"), &msg, &[]);
    verify(
        &rsa_pem,
        &dir.join("rsa-pss.sig"),
        &msg,
        &[
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:32",
        ],
    );
    let ec_der = dir.join("ec.sig.der");
    std::fs::write(
        &ec_der,
        ecdsa_der(&std::fs::read(dir.join("ec.sig")).unwrap()),
    )
    .unwrap();
    verify(&ec_pem, &ec_der, &msg, &[]);

    // The exportable key's PKCS#8 is a key openssl reads, with the blob's public key.
    let exported_pub = pem_from_spki(
        &dir,
        "exported",
        &spki_from_p256_blob(&std::fs::read(dir.join("exported.blob")).unwrap()),
    );
    let from_p8 = openssl(&[
        "pkey",
        "-inform",
        "DER",
        "-in",
        s(&dir.join("exported.p8")),
        "-pubout",
    ])
    .ok()
    .stdout;
    assert_eq!(from_p8, std::fs::read_to_string(&exported_pub).unwrap());

    // Ciphertexts made by openssl with the exported public key, decrypted through the KSP.
    let pt = dir.join("pt");
    std::fs::write(&pt, b"a secret for the KSP").unwrap();
    let oaep = [
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha256",
        "-pkeyopt",
        "rsa_mgf1_md:sha256",
    ];
    let encrypt = |out: &str, opts: &[&str]| {
        let mut args = vec!["pkeyutl", "-encrypt", "-pubin", "-inkey", &rsa_pem];
        args.extend_from_slice(opts);
        let out = dir.join(out);
        args.extend_from_slice(&["-in", s(&pt), "-out", s(&out)]);
        openssl(&args).ok();
    };
    encrypt("oaep.ct", &oaep);
    encrypt(
        "oaepl.ct",
        &[&oaep[..], &["-pkeyopt", "rsa_oaep_label:6c6162656c"]].concat(),
    );
    encrypt("pkcs1.ct", &["-pkeyopt", "rsa_padding_mode:pkcs1"]);
    host(&home, &exe, "decrypt", &dir, None);
    for f in ["oaep.pt", "oaepl.pt", "pkcs1.pt"] {
        assert_eq!(
            std::fs::read(dir.join(f)).unwrap(),
            b"a secret for the KSP",
            "{f}"
        );
    }

    // One key, two APIs: the KSP's keys sign through pkcs11-tool, found by the stable CKA_ID
    // derived from their name (and labelled with it).
    let listing = home
        .user(&["--list-objects", "--type", "privkey"])
        .ok()
        .stdout;
    let ec_id = key_id_hex(&dir, "ksp-p256");
    let rsa_id = key_id_hex(&dir, "ksp-rsa");
    assert!(listing.contains("label:      ksp-p256"), "{listing}");
    assert!(
        listing.contains(&format!("ID:         {ec_id}")),
        "{listing}"
    );
    assert!(
        listing.contains(&format!("ID:         {rsa_id}")),
        "{listing}"
    );
    let p11_sig = dir.join("p11-ec.sig");
    home.user(&[
        "--sign",
        "--mechanism",
        "ECDSA-SHA256",
        "--id",
        &ec_id,
        "--signature-format",
        "openssl",
        "-i",
        s(&msg),
        "-o",
        s(&p11_sig),
    ])
    .ok();
    verify(&ec_pem, &p11_sig, &msg, &[]);
    let p11_rsa = dir.join("p11-rsa.sig");
    home.user(&[
        "--sign",
        "--mechanism",
        "SHA256-RSA-PKCS",
        "--id",
        &rsa_id,
        "-i",
        s(&msg),
        "-o",
        s(&p11_rsa),
    ])
    .ok();
    verify(&rsa_pem, &p11_rsa, &msg, &[]);

    // A key made by pkcs11-tool opens by name through the KSP and signs.
    home.keypair("EC:prime256v1", "0a", "p11-made");
    host(&home, &exe, "sign", &dir, Some("p11-made"));
    let sig_der = dir.join("p11-made.sig.der");
    std::fs::write(
        &sig_der,
        ecdsa_der(&std::fs::read(dir.join("p11-made.sig")).unwrap()),
    )
    .unwrap();
    let pem = home.public_pem("0a");
    verify(s(&pem), &sig_der, &msg, &[]);

    // Handles, buffers and flags (after the keys above exist).
    host(&home, &exe, "handles", &dir, None);
}

#[test]
fn ksp_ecdh_agreement_and_kdfs() {
    let exe = build();
    let home = Home::with_token("ksp-ecdh");
    let dir = home.file("x").parent().unwrap().to_path_buf();
    host(&home, &exe, "ecdh", &dir, None);
    assert_eq!(std::fs::read(dir.join("z.le")).unwrap().len(), 32);
}

#[test]
fn ksp_without_a_pin_refuses_private_key_use_with_nte_perm() {
    let exe = build();
    let home = Home::with_token("ksp-nopin");
    let dir = home.file("x").parent().unwrap().to_path_buf();
    std::fs::write(dir.join("hash"), [7u8; 32]).unwrap();
    home.keypair("EC:prime256v1", "0b", "nopin");
    let mut c = home.timed(&exe);
    c.env_remove("FERROHSM_PIN")
        .env("FERROHSM_LOG", "warn")
        .arg(ksp_module())
        .arg("sign")
        .arg(&dir)
        .arg("nopin");
    let r = run(&mut c);
    // Without a PIN the private half is out of reach: OpenKey finds the public half, and
    // SignHash is NTE_PERM, never a prompt and never a crash.
    assert_eq!(r.status, 1, "{}", r.all());
    assert!(
        r.stdout.contains("check SignHash FAIL: got 0x80090010"),
        "{}",
        r.all()
    );
    // ... and says why, once, on the opt-in log.
    assert!(r.stderr.contains("FERROHSM_PIN is not set"), "{}", r.all());
    assert!(!r.stderr.contains(USER_PIN), "{}", r.all());
}

#[test]
fn ksp_byok_imports_a_pkcs11_rsa_aes_wrap_blob_under_a_ksp_kek() {
    let exe = build();
    let home = Home::with_token("ksp-byok");
    let dir = home.file("x").parent().unwrap().to_path_buf();
    let msg = dir.join("msg");
    std::fs::write(&msg, b"brought my own key").unwrap();
    openssl(&[
        "dgst",
        "-sha256",
        "-binary",
        "-out",
        s(&dir.join("hash")),
        s(&msg),
    ])
    .ok();
    host(&home, &exe, "byok-kek", &dir, None);
    let kek_pem = pem_from_spki(
        &dir,
        "kek",
        &spki_from_rsa_blob(&std::fs::read(dir.join("kek.blob")).unwrap()),
    );
    // The target: a P-256 key made by openssl, as PKCS#8, wrapped the CKM_RSA_AES_KEY_WRAP way
    // (OAEP-SHA256 of an ephemeral AES-256 key, then AES key wrap with padding).
    let target_pem = dir.join("target.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        s(&target_pem),
    ])
    .ok();
    let target = dir.join("target.p8");
    openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-outform",
        "DER",
        "-in",
        s(&target_pem),
        "-out",
        s(&target),
    ])
    .ok();
    let target_pub = dir.join("target.pub.pem");
    openssl(&[
        "pkey",
        "-inform",
        "DER",
        "-in",
        s(&target),
        "-pubout",
        "-out",
        s(&target_pub),
    ])
    .ok();
    let eph: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(57).wrapping_add(3))
        .collect();
    let eph_file = dir.join("eph");
    std::fs::write(&eph_file, &eph).unwrap();
    let (ct1, ct2) = (dir.join("ct1"), dir.join("ct2"));
    openssl(&[
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-inkey",
        &kek_pem,
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha256",
        "-pkeyopt",
        "rsa_mgf1_md:sha256",
        "-in",
        s(&eph_file),
        "-out",
        s(&ct1),
    ])
    .ok();
    let eph_hex = hex(&eph);
    openssl(&[
        "enc",
        "-id-aes256-wrap-pad",
        "-K",
        &eph_hex,
        "-iv",
        "A65959A6",
        "-in",
        s(&target),
        "-out",
        s(&ct2),
    ])
    .ok();
    let mut wrapped = std::fs::read(&ct1).unwrap();
    wrapped.extend(std::fs::read(&ct2).unwrap());
    let alg: Vec<u8> = "SHA256\0"
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let mut blob = b"RAPW".to_vec();
    for n in [wrapped.len(), alg.len(), 0] {
        blob.extend_from_slice(&u32::try_from(n).unwrap().to_le_bytes());
    }
    blob.extend_from_slice(&wrapped);
    blob.extend_from_slice(&alg);
    std::fs::write(dir.join("byok.blob"), &blob).unwrap();

    host(&home, &exe, "byok-import", &dir, None);
    let sig = dir.join("byok.sig.der");
    std::fs::write(
        &sig,
        ecdsa_der(&std::fs::read(dir.join("byok.sig")).unwrap()),
    )
    .unwrap();
    verify(s(&target_pub), &sig, &msg, &[]);
}

#[test]
fn ksp_imports_an_openssl_pkcs8_key_through_the_firmware() {
    let exe = build();
    let home = Home::with_token("ksp-p8");
    let dir = home.file("x").parent().unwrap().to_path_buf();
    let msg = dir.join("msg");
    std::fs::write(&msg, b"imported as PKCS#8").unwrap();
    openssl(&[
        "dgst",
        "-sha256",
        "-binary",
        "-out",
        s(&dir.join("hash")),
        s(&msg),
    ])
    .ok();
    let pem = dir.join("import.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        s(&pem),
    ])
    .ok();
    openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-outform",
        "DER",
        "-in",
        s(&pem),
        "-out",
        s(&dir.join("import.p8")),
    ])
    .ok();
    let public = dir.join("import.pub.pem");
    openssl(&["pkey", "-in", s(&pem), "-pubout", "-out", s(&public)]).ok();
    host(&home, &exe, "pkcs8", &dir, None);
    verify(s(&public), &dir.join("p8.sig"), &msg, &[]);
    // The imported key is a token object under its name, usable through PKCS#11.
    let listing = home
        .user(&["--list-objects", "--type", "privkey"])
        .ok()
        .stdout;
    assert!(listing.contains("label:      p8-rsa"), "{listing}");
}

#[test]
fn ksp_uses_a_daemon_slot_and_token_chosen_by_the_same_config_as_pkcs11() {
    require("pkcs11-tool");
    let exe = build();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let conf = d.join("ferrohsm.toml");
    let socket = d.join("d.sock");
    std::fs::write(
        &conf,
        format!(
            "[firmware]\npin_kdf_iterations = 1000\n\n[ksp]\ntoken = \"remote\"\n\n[[slot]]\nkind = \"remote\"\nsocket = {socket:?}\ntimeout_secs = 20\n"
        ),
    )
    .unwrap();
    let mut serve = Command::new(cli());
    serve
        .args([
            "serve",
            "--socket",
            s(&socket),
            "--home",
            s(&d.join("home")),
        ])
        .env("FERROHSM_CONF", &conf)
        .env_remove("FERROHSM_HOME");
    let _daemon = Background::start(serve, &d.join("daemon.log"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never listened"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let with_conf = |mut c: Command| {
        c.env("FERROHSM_CONF", &conf)
            .env_remove("FERROHSM_HOME")
            .env_remove("FERROHSM_LOG");
        c
    };
    let tool = |args: &[&str]| {
        let mut c = with_conf(timed("pkcs11-tool"));
        c.arg("--module").arg(module()).args(args);
        run(&mut c).ok()
    };
    // Two tokens: the configuration, not "the first initialized token", picks "remote".
    tool(&[
        "--init-token",
        "--slot",
        "0",
        "--label",
        "first",
        "--so-pin",
        SO_PIN,
    ]);
    tool(&[
        "--init-token",
        "--slot",
        "1",
        "--label",
        "remote",
        "--so-pin",
        SO_PIN,
    ]);
    tool(&[
        "--token-label",
        "remote",
        "--init-pin",
        "--login",
        "--so-pin",
        SO_PIN,
        "--pin",
        USER_PIN,
    ]);
    let work = d.join("work");
    std::fs::create_dir(&work).unwrap();
    let msg = work.join("msg");
    std::fs::write(&msg, b"through the daemon").unwrap();
    openssl(&[
        "dgst",
        "-sha256",
        "-binary",
        "-out",
        s(&work.join("hash")),
        s(&msg),
    ])
    .ok();
    let mut c = with_conf(timed(&exe));
    // The token comes from the configuration's [ksp] section.
    c.env("FERROHSM_PIN", USER_PIN)
        .env_remove("FERROHSM_KSP_TOKEN")
        .arg(ksp_module())
        .arg("create")
        .arg(&work);
    let r = run(&mut c);
    assert_eq!(r.status, 0, "{}", r.all());
    assert!(r.stdout.contains("\n0 failures"), "{}", r.all());
    let ec_pem = pem_from_spki(
        &work,
        "ec",
        &spki_from_p256_blob(&std::fs::read(work.join("ec.blob")).unwrap()),
    );
    let sig = work.join("ec.sig.der");
    std::fs::write(
        &sig,
        ecdsa_der(&std::fs::read(work.join("ec.sig")).unwrap()),
    )
    .unwrap();
    verify(&ec_pem, &sig, &msg, &[]);
    // The keys live in the daemon's store, where the PKCS#11 module sees them.
    let listing = tool(&[
        "--token-label",
        "remote",
        "--login",
        "--pin",
        USER_PIN,
        "--list-objects",
    ])
    .stdout;
    assert!(listing.contains("label:      ksp-rsa"), "{listing}");
    assert!(listing.contains("label:      ksp-p256"), "{listing}");
    // ... and not on the first token (its public objects are readable without a login).
    let first = tool(&["--token-label", "first", "--list-objects"]).stdout;
    assert!(!first.contains("ksp-"), "{first}");
}

#[test]
fn ksp_handles_and_ecdh_under_valgrind_memcheck() {
    require("valgrind");
    let exe = build();
    let home = Home::with_token("ksp-vg");
    let dir = home.file("x").parent().unwrap().to_path_buf();
    std::fs::write(dir.join("hash"), [0x5au8; 32]).unwrap();
    host(&home, &exe, "create", &dir, None);
    for command in ["handles", "ecdh"] {
        let mut c = home.timed("valgrind");
        c.args(["-q", "--error-exitcode=99"])
            .arg(&exe)
            .arg(ksp_module())
            .arg(command)
            .arg(&dir)
            .env("FERROHSM_PIN", USER_PIN);
        let r = run(&mut c);
        assert_eq!(
            r.status,
            0,
            "memcheck found errors (exit 99) or a check failed in {command}:\n{}",
            r.all()
        );
        assert!(r.stdout.contains("\n0 failures"), "{}", r.all());
    }
}
