//! The foundation through the real door: Debian's pkcs11-tool loading the built module.

//! Every pkcs11-tool invocation is its own process, so each step also proves that a second
//! process sees what the first one wrote.

// Test helpers panic on purpose; clippy.toml exempts only `#[test]` functions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::process::Command;

use ferrohsm_e2e::*;

#[test]
fn list_init_token_init_pin_login_change_pin() {
    let h = Home::new();
    let r = h.tool(&["-L"]).ok();
    assert!(
        r.stdout.contains("token state:   uninitialized") || r.stdout.contains("uninitialized"),
        "{}",
        r.stdout
    );
    h.tool(&[
        "--init-token",
        "--slot",
        "0",
        "--label",
        "e2e",
        "--so-pin",
        SO_PIN,
    ])
    .ok();
    let r = h.tool(&["-L"]).ok();
    assert!(r.stdout.contains("e2e"), "{}", r.stdout);
    assert!(
        r.stdout.contains("PIN not initialized") || !r.stdout.contains("PIN initialized"),
        "{}",
        r.stdout
    );
    h.tool(&[
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
    let r = h.tool(&["-L"]).ok();
    assert!(r.stdout.contains("PIN initialized"), "{}", r.stdout);
    h.tool(&["--slot", "0", "--login", "--pin", USER_PIN, "-O"])
        .ok();
    h.tool(&[
        "--slot",
        "0",
        "--change-pin",
        "--pin",
        USER_PIN,
        "--new-pin",
        "654321",
    ])
    .ok();
    let r = h.tool(&["--slot", "0", "--login", "--pin", USER_PIN, "-O"]);
    assert_ne!(r.status, 0);
    assert!(r.all().contains("CKR_PIN_INCORRECT"), "{}", r.all());
    h.tool(&["--slot", "0", "--login", "--pin", "654321", "-O"])
        .ok();
}

#[test]
fn wrong_pin_is_pin_incorrect_and_the_counter_shows() {
    let h = Home::with_token("pins");
    let r = h.tool(&["--slot", "0", "--login", "--pin", "000000", "-O"]);
    assert_ne!(r.status, 0);
    assert!(r.all().contains("CKR_PIN_INCORRECT"), "{}", r.all());
    let r = h.tool(&["-L"]).ok();
    assert!(
        r.all().contains("user PIN count low") || r.all().contains("PIN count low"),
        "{}",
        r.all()
    );
    h.user(&["-O"]).ok();
}

#[test]
fn data_objects_write_read_delete() {
    let h = Home::with_token("data");
    let input = h.file("data.txt");
    std::fs::write(&input, b"hello from a data object\n").unwrap();
    h.user(&[
        "--write-object",
        input.to_str().unwrap(),
        "--type",
        "data",
        "--label",
        "greeting",
    ])
    .ok();
    let out = h.file("out.txt");
    h.user(&[
        "--read-object",
        "--type",
        "data",
        "--label",
        "greeting",
        "--output-file",
        out.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(std::fs::read(&out).unwrap(), b"hello from a data object\n");
    // Public data objects are visible without login.
    let r = h.tool(&["--slot", "0", "-O"]).ok();
    assert!(r.stdout.contains("greeting"), "{}", r.stdout);
    // A private one is not.
    h.user(&[
        "--write-object",
        input.to_str().unwrap(),
        "--type",
        "data",
        "--label",
        "secretdata",
        "--private",
    ])
    .ok();
    let r = h.tool(&["--slot", "0", "-O"]).ok();
    assert!(!r.stdout.contains("secretdata"), "{}", r.stdout);
    let r = h.user(&["-O"]).ok();
    assert!(r.stdout.contains("secretdata"), "{}", r.stdout);
    h.user(&["--delete-object", "--type", "data", "--label", "greeting"])
        .ok();
    let r = h.user(&["-O"]).ok();
    assert!(!r.stdout.contains("greeting"), "{}", r.stdout);
}

#[test]
fn certificates_write_read_delete() {
    require("openssl");
    let h = Home::with_token("certs");
    let key = h.file("k.pem");
    let cert = h.file("c.der");
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=ferrohsm e2e",
        "-days",
        "1",
        "-keyout",
        key.to_str().unwrap(),
        "-outform",
        "DER",
        "-out",
        cert.to_str().unwrap(),
    ]))
    .ok();
    h.user(&[
        "--write-object",
        cert.to_str().unwrap(),
        "--type",
        "cert",
        "--id",
        "20",
        "--label",
        "mycert",
    ])
    .ok();
    let r = h.tool(&["--slot", "0", "-O", "--type", "cert"]).ok();
    assert!(r.stdout.contains("mycert"), "{}", r.stdout);
    assert!(
        r.stdout.contains("ferrohsm e2e"),
        "subject is shown: {}",
        r.stdout
    );
    let back = h.file("back.der");
    h.user(&[
        "--read-object",
        "--type",
        "cert",
        "--id",
        "20",
        "--output-file",
        back.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&cert).unwrap());
    h.user(&["--delete-object", "--type", "cert", "--id", "20"])
        .ok();
    let r = h.tool(&["--slot", "0", "-O", "--type", "cert"]).ok();
    assert!(!r.stdout.contains("mycert"), "{}", r.stdout);
}

#[test]
fn a_sensitive_secret_key_cannot_be_read_back() {
    let h = Home::with_token("secret");
    let key = h.file("aes.key");
    std::fs::write(&key, [0x5au8; 32]).unwrap();
    h.user(&[
        "--write-object",
        key.to_str().unwrap(),
        "--type",
        "secrkey",
        "--key-type",
        "AES:32",
        "--id",
        "33",
        "--label",
        "aeskey",
        "--sensitive",
        "--private",
    ])
    .ok();
    let out = h.file("back.key");
    let r = h.user(&[
        "--read-object",
        "--type",
        "secrkey",
        "--id",
        "33",
        "--output-file",
        out.to_str().unwrap(),
    ]);
    assert_ne!(
        r.status,
        0,
        "a sensitive key must not be readable: {}",
        r.all()
    );
    assert!(r.all().contains("CKR_ATTRIBUTE_SENSITIVE"), "{}", r.all());
    assert!(!out.exists() || std::fs::read(&out).unwrap() != [0x5au8; 32]);
    // An extractable, non-sensitive one can.
    h.user(&[
        "--write-object",
        key.to_str().unwrap(),
        "--type",
        "secrkey",
        "--key-type",
        "AES:32",
        "--id",
        "34",
        "--label",
        "open",
        "--extractable",
    ])
    .ok();
    h.user(&[
        "--read-object",
        "--type",
        "secrkey",
        "--id",
        "34",
        "--output-file",
        out.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(std::fs::read(&out).unwrap(), [0x5au8; 32]);
}

#[test]
fn hash_matches_sha256sum_and_random_has_the_asked_length() {
    require("sha256sum");
    let h = Home::with_token("hash");
    let input = h.file("in.bin");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&input, &data).unwrap();
    let out = h.file("h.bin");
    h.tool(&[
        "--slot",
        "0",
        "--hash",
        "-m",
        "SHA256",
        "-i",
        input.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ])
    .ok();
    let ours = hex(&std::fs::read(&out).unwrap());
    let theirs = run(Command::new("sha256sum").arg(&input)).ok().stdout;
    assert!(theirs.starts_with(&ours), "{ours} vs {theirs}");
    let rnd = h.file("rnd.bin");
    h.tool(&[
        "--slot",
        "0",
        "--generate-random",
        "48",
        "-o",
        rnd.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(std::fs::read(&rnd).unwrap().len(), 48);
}

#[test]
fn secret_key_bytes_are_nowhere_in_clear_under_the_home() {
    let h = Home::with_token("scan");
    let private_key: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(29).wrapping_add(3))
        .collect();
    let public_key: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(71).wrapping_add(5))
        .collect();
    let k1 = h.file("k1");
    let k2 = h.file("k2");
    std::fs::write(&k1, &private_key).unwrap();
    std::fs::write(&k2, &public_key).unwrap();
    h.user(&[
        "--write-object",
        k1.to_str().unwrap(),
        "--type",
        "secrkey",
        "--key-type",
        "AES:32",
        "--private",
        "--label",
        "p",
    ])
    .ok();
    h.user(&[
        "--write-object",
        k2.to_str().unwrap(),
        "--type",
        "secrkey",
        "--key-type",
        "AES:32",
        "--label",
        "q",
        // Public, so not protected: sealed under the device key, still not in clear.
        "--extractable",
    ])
    .ok();
    std::fs::remove_file(&k1).unwrap();
    std::fs::remove_file(&k2).unwrap();
    let mut scanned = 0;
    for f in walk(h.path()) {
        let bytes = std::fs::read(&f).unwrap();
        scanned += 1;
        for needle in [
            &private_key[..],
            &public_key[..],
            USER_PIN.as_bytes(),
            SO_PIN.as_bytes(),
        ] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds a secret in clear",
                f.display()
            );
        }
    }
    assert!(scanned > 0);
}

fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(p).unwrap().flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[test]
fn the_cli_lists_slots_and_objects_without_values() {
    let h = Home::with_token("cli");
    let key = h.file("aes.key");
    std::fs::write(&key, [0x42u8; 16]).unwrap();
    h.user(&[
        "--write-object",
        key.to_str().unwrap(),
        "--type",
        "secrkey",
        "--key-type",
        "AES:16",
        "--id",
        "0a0b",
        "--label",
        "k16",
        "--private",
    ])
    .ok();
    let r = h.ferrohsm(&["slots"]).ok();
    assert!(r.stdout.contains("cli"), "{}", r.stdout);
    let r = h.ferrohsm(&["objects", "--pin", USER_PIN]).ok();
    assert!(
        r.stdout.contains("k16") && r.stdout.contains("0a0b") && r.stdout.contains("AES"),
        "{}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("4242424242"),
        "no key values: {}",
        r.stdout
    );
    let r = h.ferrohsm(&["objects", "--pin", "999999"]);
    assert_ne!(r.status, 0);
    assert!(r.stderr.contains("wrong PIN"), "{}", r.stderr);
    let r = h.ferrohsm(&["init-token", "--label", "second", "--so-pin", "123"]);
    assert_ne!(r.status, 0);
    assert!(r.stderr.contains("4 to 64"), "{}", r.stderr);
    h.ferrohsm(&[
        "init-token",
        "--label",
        "second",
        "--so-pin",
        SO_PIN,
        "--pin",
        USER_PIN,
    ])
    .ok();
    let r = h.tool(&["-L"]).ok();
    assert!(r.stdout.contains("second"), "{}", r.stdout);
}

/// Token administration from the CLI: nothing is wiped by mistake or half-done (an initialized
/// token needs --force; a PIN the token would refuse is refused before anything changes), and
/// the SO can set, unlock and change PINs without another tool.
#[test]
fn token_administration_checks_before_it_changes_anything() {
    let h = Home::with_token("kept");
    h.user(&[
        "--keygen",
        "--private",
        "--key-type",
        "AES:32",
        "--label",
        "precious",
    ])
    .ok();
    let keeps = |why: &str| {
        let r = h.user(&["-O"]).ok();
        assert!(r.stdout.contains("precious"), "{why}: {}", r.stdout);
    };
    let r = h.ferrohsm(&[
        "init-token",
        "--slot",
        "0",
        "--label",
        "new",
        "--so-pin",
        SO_PIN,
    ]);
    assert!(
        r.status != 0 && r.stderr.contains("add --force") && r.stderr.contains("\"kept\""),
        "{}",
        r.all()
    );
    keeps("init-token without --force");
    let r = h.ferrohsm(&[
        "init-token",
        "--slot",
        "0",
        "--label",
        "new",
        "--so-pin",
        SO_PIN,
        "--pin",
        "1",
        "--force",
    ]);
    assert!(
        r.status != 0 && r.stderr.contains("nothing was changed"),
        "{}",
        r.all()
    );
    keeps("init-token with a user PIN the token refuses");
    // Locked by wrong tries, unlocked by the SO, changed by the user.
    for _ in 0..10 {
        let _ = h.tool(&["--slot", "0", "--login", "--pin", "wrong-pin", "-O"]);
    }
    let locked = h.user(&["-O"]);
    assert!(locked.all().contains("CKR_PIN_LOCKED"), "{}", locked.all());
    let r = h.ferrohsm(&["objects", "--pin", USER_PIN]);
    assert!(r.stderr.contains("ferrohsm unlock"), "{}", r.all());
    h.ferrohsm(&[
        "unlock",
        "--slot",
        "0",
        "--so-pin",
        SO_PIN,
        "--pin",
        "fresh-pin-1",
    ])
    .ok();
    h.ferrohsm(&[
        "set-pin",
        "--slot",
        "0",
        "--old-pin",
        "fresh-pin-1",
        "--new-pin",
        USER_PIN,
    ])
    .ok();
    keeps("after unlock and set-pin");
    let r = h.ferrohsm(&[
        "set-pin",
        "--slot",
        "0",
        "--old-pin",
        "fresh-pin-1",
        "--new-pin",
        "other-pin",
    ]);
    assert!(
        r.status != 0 && r.stderr.contains("wrong PIN"),
        "{}",
        r.all()
    );
    // The SO PIN too, and init-pin.
    h.ferrohsm(&[
        "set-pin",
        "--so",
        "--slot",
        "0",
        "--old-pin",
        SO_PIN,
        "--new-pin",
        "new-so-pin",
    ])
    .ok();
    h.ferrohsm(&[
        "init-pin",
        "--slot",
        "0",
        "--so-pin",
        "new-so-pin",
        "--pin",
        USER_PIN,
    ])
    .ok();
    keeps("after init-pin");
    // PINs on standard input, one per line, in the order asked (old, new), and from a file
    // only others cannot read.
    let mut c = h.command(cli());
    c.args(["set-pin", "--slot", "0", "--pin-stdin"]);
    run_with_input(&mut c, format!("{USER_PIN}\nstdin-pin-22\n").as_bytes()).ok();
    let pins = h.file("pins.txt");
    std::fs::write(&pins, format!("stdin-pin-22\n{USER_PIN}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&pins, std::fs::Permissions::from_mode(0o644)).unwrap();
    let shared = h.ferrohsm(&["set-pin", "--slot", "0", "--pin-file", s(&pins)]);
    assert!(
        shared.status != 0 && shared.stderr.contains("chmod 600"),
        "{}",
        shared.all()
    );
    std::fs::set_permissions(&pins, std::fs::Permissions::from_mode(0o600)).unwrap();
    h.ferrohsm(&["set-pin", "--slot", "0", "--pin-file", s(&pins)])
        .ok();
    keeps("after PINs from standard input and a file");
    let short = h
        .command(cli())
        .args(["objects", "--login", "--pin-stdin"])
        .output()
        .unwrap();
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("no User PIN on standard input"));
}

/// A daemon that does not answer is named, with the next step, in the CLI's one-line error;
/// beside a simulated slot its slots are not silently left out (the listing fails, saying so).
#[test]
fn an_unreachable_daemon_is_named_not_hidden() {
    let h = Home::new();
    let socket = h.file("nobody-serves-this.sock");
    let alone = h.file("alone.toml");
    std::fs::write(
        &alone,
        format!("[[slot]]\nkind = \"remote\"\nsocket = {socket:?}\n"),
    )
    .unwrap();
    let r = h.ferrohsm(&["--conf", s(&alone), "slots"]);
    assert!(
        r.status != 0
            && r.stderr.contains(s(&socket))
            && r.stderr.contains("ferrohsm serve")
            && r.stderr.contains("CKR_DEVICE_REMOVED"),
        "{}",
        r.all()
    );
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    let store = h.file("sim");
    std::fs::create_dir(&store).unwrap();
    let beside = h.file("beside.toml");
    std::fs::write(
        &beside,
        format!(
            "[[slot]]\nkind = \"sim\"\nstore = {store:?}\n[[slot]]\nkind = \"remote\"\nsocket = {socket:?}\n"
        ),
    )
    .unwrap();
    let r = h.ferrohsm(&["--conf", s(&beside), "slots"]);
    assert!(
        r.status != 0 && r.stdout.contains("Slot 0") && r.stderr.contains(s(&socket)),
        "{}",
        r.all()
    );
}
