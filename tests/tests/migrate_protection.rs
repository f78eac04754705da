//! `ferrohsm migrate` keeps every restriction (issue 25, class 2), decided by what the copy in
//! the destination does and says, read through the built module:
//!
//! - against a lying source (`tests/c/liar.c`, a PKCS#11 library forwarding to SoftHSMv2 that
//!   stays silent about attributes, claims odd values, writes lengths beyond its buffers,
//!   announces huge lengths and hands out malformed wrapped keys) the CLI does not crash, and
//!   every copy it makes is at least as protected as the source: silence means sensitive,
//!   private, always-authenticate, not extractable, usage off; an unreadable mechanism list
//!   holds the key back unless `--allow-loss`; malformed wrapped keys create nothing;
//! - from SoftHSMv2 through the bridge, a key with `CKA_ALWAYS_AUTHENTICATE` still demands its
//!   context login in the destination (`C_Sign` without it: `CKR_USER_NOT_LOGGED_IN`; with it,
//!   the signature verifies with openssl), its `CKA_ALLOWED_MECHANISMS` still refuses another
//!   mechanism (`CKR_MECHANISM_INVALID`), it stays extractable as in the source with honest
//!   provenance, and a key that is not extractable is not copied.
//!
//! The destination is read in a child process (this binary, an `#[ignore]`d test) that loads
//! the module with a configuration naming only the simulated slot.

// The children call the module through its C function list: each call is one `unsafe` block.
#![allow(unsafe_code)]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr;

use cryptoki_sys::*;
use ferrohsm_e2e::*;
use libloading::Library;

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// Set in the child processes; the visible tests' re-runs do nothing.
const CHILD: &str = "FERROHSM_MIGRATE_PROTECTION_CHILD";

/// Where `migrate` copies from: a PKCS#11 library over SoftHSM's token "real" (SoftHSM
/// itself, or the liar in front of it), or a second simulated token "src".
#[derive(Clone, Copy)]
enum Source<'a> {
    Module(&'a Path),
    Sim,
}

/// A source, a simulated destination token "dst", and two configurations: the CLI's (slot 0
/// the destination, slot 1 the source) and the reader's (the destination alone).
struct World {
    dir: tempfile::TempDir,
    sim_source: bool,
}

impl World {
    fn new(source: Source<'_>) -> Self {
        require("softhsm2-util");
        assert!(Path::new(SOFTHSM).exists(), "softhsm2 is not installed");
        let dir = tempfile::tempdir().unwrap();
        softhsm_config(dir.path());
        let sim = format!(
            "[[slot]]\nkind = \"sim\"\nlabel = \"sim\"\nstore = {:?}\n",
            dir.path().join("sim")
        );
        let second = match source {
            Source::Module(path) => {
                format!("[[slot]]\nkind = \"module\"\npath = {path:?}\ntoken_label = \"real\"\n")
            }
            Source::Sim => format!(
                "[[slot]]\nkind = \"sim\"\nlabel = \"src\"\nstore = {:?}\n",
                dir.path().join("src")
            ),
        };
        std::fs::write(dir.path().join("ferrohsm.toml"), format!("{sim}\n{second}")).unwrap();
        std::fs::write(dir.path().join("reader.toml"), sim).unwrap();
        let w = Self {
            dir,
            sim_source: matches!(source, Source::Sim),
        };
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
        for (slot, label) in [("0", "dst"), ("1", "src")] {
            if slot == "1" && !w.sim_source {
                continue;
            }
            w.ferrohsm(&[
                "init-token",
                "--slot",
                slot,
                "--label",
                label,
                "--so-pin",
                SO_PIN,
                "--pin",
                USER_PIN,
            ])
            .ok();
        }
        w
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn env(&self, c: &mut Command) {
        c.env("SOFTHSM2_CONF", self.file("softhsm2.conf"))
            .env("FERROHSM_CONF", self.file("ferrohsm.toml"))
            .env("LIAR_REAL_MODULE", SOFTHSM)
            .env_remove("FERROHSM_HOME")
            .env_remove("FERROHSM_LOG");
    }

    fn ferrohsm(&self, args: &[&str]) -> Run {
        let mut c = timed(cli());
        self.env(&mut c);
        c.args(args);
        run(&mut c)
    }

    /// pkcs11-tool on the source, logged in: SoftHSM itself (never through the liar), or
    /// the simulated source token through the built module.
    fn source(&self, args: &[&str]) -> Run {
        require("pkcs11-tool");
        let mut c = timed("pkcs11-tool");
        self.env(&mut c);
        if self.sim_source {
            c.arg("--module").arg(module()).args(["--slot", "1"]);
        } else {
            c.args(["--module", SOFTHSM, "--token-label", "real"]);
        }
        c.args(["--login", "--pin", USER_PIN]).args(args);
        run(&mut c)
    }

    fn migrate(&self, extra: &[&str]) -> Run {
        let mut args = vec![
            "migrate",
            "--from",
            "1",
            "--to",
            "0",
            "--from-pin",
            USER_PIN,
            "--to-pin",
            USER_PIN,
        ];
        args.extend_from_slice(extra);
        let r = self.ferrohsm(&args);
        println!("{}", r.all());
        // Exit 0 or 1: never a panic (101), an abort or a signal.
        assert!(
            r.status == 0 || r.status == 1,
            "migrate crashed: {}",
            r.all()
        );
        r
    }

    /// A child test of this binary, reading the destination through the built module.
    fn child(&self, name: &str) -> Command {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.args([
            "--ignored",
            "--exact",
            name,
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("FERROHSM_CONF", self.file("reader.toml"))
        .env("TEST_PKCS11_MODULE", module())
        .env_remove("FERROHSM_HOME")
        .env_remove("FERROHSM_LOG");
        c
    }

    /// Every object of the destination: (class, id in hex) → attribute name → value (hex;
    /// `-` when not returned).
    fn destination(&self) -> BTreeMap<(CK_ULONG, String), BTreeMap<String, String>> {
        let out = run(&mut self.child("dump_destination_child"));
        assert!(
            out.status == 0 && out.stdout.contains("DUMP DONE"),
            "the dump child failed:\n{}",
            out.all()
        );
        let mut objects = BTreeMap::new();
        for line in out.stdout.lines() {
            // The harness prints "test NAME ... " before the child's first line.
            let Some((_, rest)) = line.split_once("OBJ ") else {
                continue;
            };
            let fields: BTreeMap<String, String> = rest
                .split(' ')
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            let class = CK_ULONG::from_str_radix(&fields["CKA_CLASS"], 16).unwrap();
            objects.insert((class, fields["CKA_ID"].clone()), fields);
        }
        objects
    }
}

/// The line of `report` about the object with CKA_ID `id` and the note lines under it.
fn block<'a>(report: &'a str, id: &str) -> Vec<&'a str> {
    let mut lines = report
        .lines()
        .skip_while(|l| !l.contains(&format!("(id {id})")));
    let mut out: Vec<&str> = lines.next().into_iter().collect();
    out.extend(lines.take_while(|l| l.starts_with("  ")));
    out
}

fn has_line(block: &[&str], prefix: &str, text: &str) -> bool {
    block
        .iter()
        .any(|l| l.trim_start().starts_with(prefix) && l.contains(text))
}

// ---- the lying source ---------------------------------------------------------------------

fn build_liar() -> PathBuf {
    require("cc");
    let out = tempfile::Builder::new()
        .prefix("liar-")
        .tempdir()
        .unwrap()
        .keep();
    let lib = out.join("libliar.so");
    let root = workspace();
    run(Command::new("cc")
        .args([
            "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-O1", "-I",
        ])
        .arg(root.join("include"))
        .arg("-o")
        .arg(&lib)
        .arg(root.join("tests/c/liar.c"))
        .arg("-ldl"))
    .ok();
    lib
}

/// Keys made in SoftHSM, by label (what the liar lies about) and id.
const LIES_ABOUT_AES: &[(&str, &str)] = &[
    ("silent-sensitive", "31"),
    ("silent-mechs", "33"),
    ("odd", "34"),
    ("odd-mechs", "35"),
    ("oversize", "36"),
    ("huge", "37"),
    ("failing", "38"),
    ("class-lie", "39"),
    ("garbage-blob", "3a"),
    ("huge-blob", "3b"),
    ("oversize-blob", "3c"),
    ("silent-all", "3e"),
    ("secret-auth", "41"),
];

#[test]
fn migrate_from_a_lying_module_never_crashes_nor_makes_a_weaker_key() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let w = World::new(Source::Module(&build_liar()));
    for (label, id) in LIES_ABOUT_AES {
        w.source(&[
            "--keygen",
            "--key-type",
            "AES:32",
            "--label",
            label,
            "--id",
            id,
            "--extractable",
        ])
        .ok();
    }
    // Sensitive in truth; the liar says it is not, and that it was never extractable.
    w.source(&[
        "--keygen",
        "--key-type",
        "AES:32",
        "--label",
        "contradiction",
        "--id",
        "40",
        "--extractable",
        "--sensitive",
    ])
    .ok();
    for (label, id) in [("silent-auth", "32"), ("truncated-blob", "3d")] {
        w.source(&[
            "--keypairgen",
            "--key-type",
            "rsa:2048",
            "--label",
            label,
            "--id",
            id,
            "--extractable",
        ])
        .ok();
    }

    // First run: no --allow-loss.
    let r = w.migrate(&[]);
    assert_eq!(r.status, 1, "losses and failures must fail the run");
    assert!(
        r.stderr.starts_with("ferrohsm: ") && r.stderr.lines().count() == 1,
        "one error line: {}",
        r.stderr
    );
    let out = &r.stdout;
    for id in ["31", "32", "34", "36", "38", "40"] {
        assert!(block(out, id)[0].starts_with("migrated"), "{id}: {out}");
    }
    for id in ["33", "35", "37", "3e"] {
        assert!(block(out, id)[0].starts_with("HELD BACK"), "{id}: {out}");
        assert!(
            has_line(&block(out, id), "lost", "CKA_ALLOWED_MECHANISMS")
                || has_line(&block(out, id), "lost", "CKA_WRAP_TEMPLATE"),
            "{id}: {out}"
        );
    }
    for id in ["39", "3a", "3b", "3c", "3d"] {
        assert!(block(out, id)[0].starts_with("FAILED"), "{id}: {out}");
    }
    // A secret key that demands a login per use: the destination's secret keys cannot.
    assert!(
        block(out, "41")[0].starts_with("FAILED") && block(out, "41")[0].contains("refused"),
        "{out}"
    );
    // Each attribute the source would not give, or gave malformed, has its line.
    for (id, attr) in [
        ("31", "CKA_SENSITIVE"),
        ("31", "CKA_PRIVATE"),
        ("32", "CKA_ALWAYS_AUTHENTICATE"),
        ("34", "CKA_SENSITIVE"),
        ("34", "CKA_PRIVATE"),
        ("34", "CKA_DESTROYABLE"),
        ("36", "CKA_SENSITIVE"),
        ("38", "CKA_SENSITIVE"),
        ("40", "CKA_SENSITIVE"),
        ("40", "CKA_EXTRACTABLE"),
    ] {
        assert!(
            has_line(&block(out, id), "stricter", attr),
            "{id} {attr}: {out}"
        );
    }
    assert!(has_line(&block(out, "34"), "lost", "CKA_START_DATE"));

    let dst = w.destination();
    let secret = |id: &str| dst.get(&(CKO_SECRET_KEY, id.to_owned()));
    let private = |id: &str| dst.get(&(CKO_PRIVATE_KEY, id.to_owned()));
    // Nothing for what failed or was held back.
    for id in ["33", "35", "37", "39", "3a", "3b", "3c", "3e", "41"] {
        assert!(secret(id).is_none(), "{id} was created: {dst:?}");
    }
    assert!(private("3d").is_none(), "3d was created");
    // Silence and malformed values made the copies stricter.
    for id in ["31", "34", "36", "38", "40"] {
        let k = secret(id).unwrap_or_else(|| panic!("{id} missing: {dst:?}"));
        assert_eq!(k["CKA_SENSITIVE"], "01", "{id}");
        assert_eq!(k["CKA_PRIVATE"], "01", "{id}");
    }
    assert_eq!(secret("34").unwrap()["CKA_DESTROYABLE"], "00");
    assert_eq!(secret("40").unwrap()["CKA_EXTRACTABLE"], "00");
    let k = private("32").expect("32 missing");
    assert_eq!(k["CKA_ALWAYS_AUTHENTICATE"], "01");
    assert_eq!(k["CKA_PRIVATE"], "01");
    assert_eq!(k["CKA_SENSITIVE"], "01");
    let pubkey = dst
        .get(&(CKO_PUBLIC_KEY, "32".to_owned()))
        .expect("32's public key");
    assert_eq!(pubkey["CKA_PRIVATE"], "01");
    // Provenance is the destination's own: never "always sensitive" or "local" for a copy.
    for ((class, id), k) in &dst {
        if matches!(*class, CKO_SECRET_KEY | CKO_PRIVATE_KEY) {
            assert_eq!(k["CKA_ALWAYS_SENSITIVE"], "00", "{id}");
            assert_eq!(k["CKA_LOCAL"], "00", "{id}");
        }
    }

    // Second run: --allow-loss copies the held-back keys, stricter wherever the source was
    // silent, and names each loss; the malformed wrapped keys still create nothing.
    let r = w.migrate(&["--allow-loss"]);
    assert_eq!(r.status, 1, "the failed keys still fail the run");
    let out = &r.stdout;
    for id in ["33", "35", "37", "3e"] {
        assert!(block(out, id)[0].starts_with("migrated"), "{id}: {out}");
    }
    assert!(has_line(
        &block(out, "33"),
        "lost",
        "CKA_ALLOWED_MECHANISMS"
    ));
    let dst = w.destination();
    let secret = |id: &str| dst.get(&(CKO_SECRET_KEY, id.to_owned()));
    let all = secret("3e").expect("3e missing");
    for (attr, want) in [
        ("CKA_SENSITIVE", "01"),
        ("CKA_PRIVATE", "01"),
        ("CKA_EXTRACTABLE", "00"),
        ("CKA_WRAP_WITH_TRUSTED", "01"),
        ("CKA_MODIFIABLE", "00"),
        ("CKA_COPYABLE", "00"),
        ("CKA_DESTROYABLE", "00"),
        ("CKA_ENCRYPT", "00"),
        ("CKA_DECRYPT", "00"),
        ("CKA_SIGN", "00"),
        ("CKA_VERIFY", "00"),
        ("CKA_WRAP", "00"),
        ("CKA_UNWRAP", "00"),
        ("CKA_DERIVE", "00"),
    ] {
        assert_eq!(all[attr], want, "3e {attr}");
    }
    assert_eq!(secret("37").expect("37 missing")["CKA_PRIVATE"], "01");
    for id in ["39", "3a", "3b", "3c"] {
        assert!(secret(id).is_none(), "{id} was created");
    }
    assert!(!dst.contains_key(&(CKO_PRIVATE_KEY, "3d".to_owned())));
}

// ---- SoftHSM through the bridge, and a simulated token ------------------------------------

#[test]
fn a_key_migrated_from_softhsm_still_demands_its_context_login_and_keeps_its_mechanisms() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    context_login_and_mechanisms_survive(Source::Module(Path::new(SOFTHSM)));
}

#[test]
fn a_key_migrated_between_simulated_tokens_still_demands_its_context_login() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    context_login_and_mechanisms_survive(Source::Sim);
}

fn context_login_and_mechanisms_survive(source: Source<'_>) {
    let w = World::new(source);
    w.source(&[
        "--keypairgen",
        "--key-type",
        "rsa:2048",
        "--label",
        "per-signature",
        "--id",
        "51",
        "--extractable",
        "--always-auth",
        "--allowed-mechanisms",
        "SHA256-RSA-PKCS",
        "--usage-sign",
    ])
    .ok();
    // Extractable, and usable to wrap and unwrap (no attribute template: none is carried).
    w.source(&[
        "--keygen",
        "--key-type",
        "AES:32",
        "--label",
        "moving",
        "--id",
        "53",
        "--extractable",
        "--usage-wrap",
    ])
    .ok();
    w.source(&[
        "--keygen",
        "--key-type",
        "AES:32",
        "--label",
        "kept-in",
        "--id",
        "52",
        "--sensitive",
        "--private",
    ])
    .ok();

    let r = w.migrate(&[]);
    // The key that is not extractable is left behind: named, and the run fails.
    assert_eq!(r.status, 1, "{}", r.all());
    assert!(
        r.stderr
            .contains("objects were left behind in the source (1 not extractable"),
        "{}",
        r.stderr
    );
    let out = &r.stdout;
    assert_eq!(block(out, "51").len(), 1, "no attribute lost: {out}");
    assert!(block(out, "51")[0].starts_with("migrated   private key \"per-signature\""));
    assert!(out.contains("migrated   public key \"per-signature\" (id 51)"));
    assert!(block(out, "52")[0].starts_with("NOT MOVED"), "{out}");
    assert_eq!(
        block(out, "53"),
        ["migrated   secret key \"moving\" (id 53)"]
    );

    let dst = w.destination();
    let k = &dst[&(CKO_PRIVATE_KEY, "51".to_owned())];
    assert_eq!(k["CKA_ALWAYS_AUTHENTICATE"], "01");
    assert_eq!(
        k["CKA_ALLOWED_MECHANISMS"],
        hex(&CKM_SHA256_RSA_PKCS.to_ne_bytes())
    );
    // Extractable exactly as in the source; provenance honest (the source says it was always
    // sensitive and generated there; the copy was neither).
    assert_eq!(k["CKA_EXTRACTABLE"], "01");
    assert_eq!(k["CKA_SENSITIVE"], "01");
    assert_eq!(k["CKA_NEVER_EXTRACTABLE"], "00");
    assert_eq!(k["CKA_ALWAYS_SENSITIVE"], "00");
    assert_eq!(k["CKA_LOCAL"], "00");
    assert!(!dst.contains_key(&(CKO_SECRET_KEY, "52".to_owned())));
    assert_eq!(dst[&(CKO_SECRET_KEY, "53".to_owned())]["CKA_WRAP"], "01");

    // The context login, objectively.
    let msg = w.file("msg");
    std::fs::write(&msg, b"one signature, one PIN").unwrap();
    let sig = w.file("sig");
    let out = run(w
        .child("sign_in_destination_child")
        .env("MIGRATE_SIGN_IN", &msg)
        .env("MIGRATE_SIGN_OUT", &sig));
    println!("{}", out.all());
    assert!(out.stdout.contains("SIGN DONE"), "{}", out.all());
    assert!(
        out.stdout
            .contains("sign without context login: CKR_USER_NOT_LOGGED_IN"),
        "{}",
        out.all()
    );
    assert!(
        out.stdout.contains("sign with context login: CKR_OK"),
        "{}",
        out.all()
    );
    assert!(
        out.stdout
            .contains("sign with CKM_SHA384_RSA_PKCS: CKR_MECHANISM_INVALID"),
        "{}",
        out.all()
    );
    let pub_der = w.file("pub.der");
    w.source(&[
        "--read-object",
        "--type",
        "pubkey",
        "--id",
        "51",
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

/// Certificates and data objects move with the keys, each named on its line and counted; a
/// second run skips what the destination has; a key left behind fails the run.
#[test]
fn certificates_and_data_objects_are_migrated_and_listed() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let w = World::new(Source::Sim);
    w.source(&[
        "--keygen",
        "--key-type",
        "AES:32",
        "--label",
        "moving",
        "--id",
        "61",
        "--extractable",
    ])
    .ok();
    let cert = ec_certificate(w.dir.path(), "migrate");
    w.source(&[
        "--write-object",
        s(&cert),
        "--type",
        "cert",
        "--id",
        "62",
        "--label",
        "cert",
    ])
    .ok();
    std::fs::write(w.file("data.bin"), b"data object bytes").unwrap();
    w.source(&[
        "--write-object",
        s(&w.file("data.bin")),
        "--type",
        "data",
        "--label",
        "blob",
        "--application-label",
        "migrate test",
    ])
    .ok();

    let r = w.migrate(&[]);
    assert_eq!(r.status, 0, "{}", r.all());
    let out = &r.stdout;
    for line in [
        "migrated   secret key \"moving\" (id 61)",
        "migrated   certificate \"cert\" (id 62)",
        "migrated   data object \"blob\" (id ?)",
    ] {
        assert!(out.lines().any(|l| l == line), "{line:?}: {out}");
    }
    assert!(
        out.contains("3 migrated (1 keys, 1 certificates, 1 data objects)"),
        "{out}"
    );

    // Again: everything is there already.
    let r = w.migrate(&[]);
    assert_eq!(r.status, 0, "{}", r.all());
    let out = &r.stdout;
    for line in [
        "skipped    certificate \"cert\" (id 62): the destination already has it",
        "skipped    data object \"blob\" (id ?): the destination already has it",
    ] {
        assert!(out.lines().any(|l| l.starts_with(line)), "{line:?}: {out}");
    }
    assert!(
        out.contains(
            "0 migrated (0 keys, 0 certificates, 0 data objects), 3 already there \
                      (1 keys, 1 certificates, 1 data objects)"
        ),
        "{out}"
    );

    // A key that cannot leave: named, counted, and the run fails.
    w.source(&[
        "--keygen",
        "--key-type",
        "AES:32",
        "--label",
        "staying",
        "--id",
        "63",
        "--sensitive",
        "--private",
    ])
    .ok();
    let r = w.migrate(&[]);
    assert_eq!(r.status, 1, "{}", r.all());
    assert!(block(&r.stdout, "63")[0].starts_with("NOT MOVED  secret key \"staying\""));
    assert!(
        r.stderr
            .starts_with("ferrohsm: objects were left behind in the source (1 not extractable")
            && r.stderr.lines().count() == 1,
        "{}",
        r.stderr
    );
}

// ---- the children: the destination through the built module ------------------------------

fn rv_name(rv: CK_RV) -> String {
    match rv {
        CKR_OK => "CKR_OK".to_owned(),
        CKR_USER_NOT_LOGGED_IN => "CKR_USER_NOT_LOGGED_IN".to_owned(),
        CKR_MECHANISM_INVALID => "CKR_MECHANISM_INVALID".to_owned(),
        CKR_KEY_FUNCTION_NOT_PERMITTED => "CKR_KEY_FUNCTION_NOT_PERMITTED".to_owned(),
        rv => format!("{rv:#x}"),
    }
}

/// The module under test, initialised, with a logged-in R/W session on its first slot.
struct Module {
    f: CK_FUNCTION_LIST,
    _lib: Library,
}

impl Module {
    fn open() -> (Self, CK_SESSION_HANDLE) {
        // SAFETY: loading the module under test runs its initialisers, which is the point.
        let lib = unsafe { Library::new(module()) }.unwrap();
        // SAFETY: every PKCS#11 module exports C_GetFunctionList with this type.
        let get = unsafe { lib.get::<CK_C_GetFunctionList>(b"C_GetFunctionList") }.unwrap();
        let get = (*get).unwrap();
        let mut list: CK_FUNCTION_LIST_PTR = ptr::null_mut();
        // SAFETY: `list` is a valid place for the pointer.
        assert_eq!(unsafe { get(&raw mut list) }, CKR_OK);
        assert!(!list.is_null());
        // SAFETY: C_GetFunctionList returned CKR_OK and a non-NULL pointer to the module's
        // function list, which lives as long as the library (held in `_lib`).
        let f = unsafe { *list };
        let m = Self { f, _lib: lib };
        // SAFETY: NULL asks for the default initialisation.
        let rv = unsafe { m.f.C_Initialize.unwrap()(ptr::null_mut()) };
        assert_eq!(rv, CKR_OK);
        let s = m.session();
        let pin = USER_PIN.as_bytes();
        // SAFETY: `pin` is readable for its length.
        let rv = unsafe { m.f.C_Login.unwrap()(s, CKU_USER, pin.as_ptr().cast_mut(), ulen(pin)) };
        assert_eq!(rv, CKR_OK);
        (m, s)
    }

    fn session(&self) -> CK_SESSION_HANDLE {
        let mut s = CK_INVALID_HANDLE;
        let flags = CKF_SERIAL_SESSION | CKF_RW_SESSION;
        // SAFETY: no callback; `s` is a valid place for the handle.
        let rv =
            unsafe { self.f.C_OpenSession.unwrap()(0, flags, ptr::null_mut(), None, &raw mut s) };
        assert_eq!(rv, CKR_OK);
        s
    }

    fn find(&self, s: CK_SESSION_HANDLE, template: &mut [CK_ATTRIBUTE]) -> Vec<CK_OBJECT_HANDLE> {
        // SAFETY: `template` holds valid attributes pointing to live values.
        let rv =
            unsafe { self.f.C_FindObjectsInit.unwrap()(s, template.as_mut_ptr(), ulen(template)) };
        assert_eq!(rv, CKR_OK);
        let mut found = vec![CK_INVALID_HANDLE; 1000];
        let mut n: CK_ULONG = 0;
        // SAFETY: `found` holds room for its length in handles; `n` is a valid place.
        let rv = unsafe {
            self.f.C_FindObjects.unwrap()(s, found.as_mut_ptr(), ulen(&found), &raw mut n)
        };
        assert_eq!(rv, CKR_OK);
        // SAFETY: a plain call on a live session.
        assert_eq!(unsafe { self.f.C_FindObjectsFinal.unwrap()(s) }, CKR_OK);
        found.truncate(usize::try_from(n).unwrap());
        found
    }

    /// The value of `ty`, or None when the module does not return it.
    fn attr(
        &self,
        s: CK_SESSION_HANDLE,
        o: CK_OBJECT_HANDLE,
        ty: CK_ATTRIBUTE_TYPE,
    ) -> Option<Vec<u8>> {
        let mut a = CK_ATTRIBUTE {
            type_: ty,
            pValue: ptr::null_mut(),
            ulValueLen: 0,
        };
        // SAFETY: one attribute with a NULL value: a length query.
        let rv = unsafe { self.f.C_GetAttributeValue.unwrap()(s, o, &raw mut a, 1) };
        if rv != CKR_OK || a.ulValueLen == CK_UNAVAILABLE_INFORMATION {
            return None;
        }
        let mut value = vec![0u8; usize::try_from(a.ulValueLen).unwrap()];
        a.pValue = value.as_mut_ptr().cast();
        // SAFETY: `value` has room for the length the module gave.
        let rv = unsafe { self.f.C_GetAttributeValue.unwrap()(s, o, &raw mut a, 1) };
        assert_eq!(rv, CKR_OK);
        value.truncate(usize::try_from(a.ulValueLen).unwrap());
        Some(value)
    }

    fn sign_init(
        &self,
        s: CK_SESSION_HANDLE,
        mech: CK_MECHANISM_TYPE,
        key: CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let mut m = CK_MECHANISM {
            mechanism: mech,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        };
        // SAFETY: a mechanism without parameters.
        unsafe { self.f.C_SignInit.unwrap()(s, &raw mut m, key) }
    }

    fn sign(&self, s: CK_SESSION_HANDLE, data: &[u8]) -> (CK_RV, Vec<u8>) {
        let mut out = vec![0u8; 1024];
        let mut n = ulen(&out);
        // SAFETY: `data` is readable and `out` writable for their lengths; `n` is valid.
        let rv = unsafe {
            self.f.C_Sign.unwrap()(
                s,
                data.as_ptr().cast_mut(),
                ulen(data),
                out.as_mut_ptr(),
                &raw mut n,
            )
        };
        out.truncate(usize::try_from(n).unwrap_or(0));
        (rv, out)
    }

    fn context_login(&self, s: CK_SESSION_HANDLE) -> CK_RV {
        let pin = USER_PIN.as_bytes();
        // SAFETY: `pin` is readable for its length.
        unsafe {
            self.f.C_Login.unwrap()(s, CKU_CONTEXT_SPECIFIC, pin.as_ptr().cast_mut(), ulen(pin))
        }
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        // SAFETY: NULL is the only argument C_Finalize takes.
        let _ = unsafe { self.f.C_Finalize.unwrap()(ptr::null_mut()) };
    }
}

fn ulen<T>(s: &[T]) -> CK_ULONG {
    CK_ULONG::try_from(s.len()).unwrap()
}

/// What the dump prints for every object.
const DUMPED: &[(CK_ATTRIBUTE_TYPE, &str)] = &[
    (CKA_CLASS, "CKA_CLASS"),
    (CKA_ID, "CKA_ID"),
    (CKA_PRIVATE, "CKA_PRIVATE"),
    (CKA_SENSITIVE, "CKA_SENSITIVE"),
    (CKA_EXTRACTABLE, "CKA_EXTRACTABLE"),
    (CKA_ALWAYS_AUTHENTICATE, "CKA_ALWAYS_AUTHENTICATE"),
    (CKA_WRAP_WITH_TRUSTED, "CKA_WRAP_WITH_TRUSTED"),
    (CKA_MODIFIABLE, "CKA_MODIFIABLE"),
    (CKA_COPYABLE, "CKA_COPYABLE"),
    (CKA_DESTROYABLE, "CKA_DESTROYABLE"),
    (CKA_ENCRYPT, "CKA_ENCRYPT"),
    (CKA_DECRYPT, "CKA_DECRYPT"),
    (CKA_SIGN, "CKA_SIGN"),
    (CKA_VERIFY, "CKA_VERIFY"),
    (CKA_WRAP, "CKA_WRAP"),
    (CKA_UNWRAP, "CKA_UNWRAP"),
    (CKA_DERIVE, "CKA_DERIVE"),
    (CKA_ALLOWED_MECHANISMS, "CKA_ALLOWED_MECHANISMS"),
    (CKA_ALWAYS_SENSITIVE, "CKA_ALWAYS_SENSITIVE"),
    (CKA_NEVER_EXTRACTABLE, "CKA_NEVER_EXTRACTABLE"),
    (CKA_LOCAL, "CKA_LOCAL"),
];

#[test]
#[ignore = "a child process of the tests above"]
fn dump_destination_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let (m, s) = Module::open();
    for o in m.find(s, &mut []) {
        let mut line = String::from("OBJ");
        for (ty, name) in DUMPED {
            let v = m
                .attr(s, o, *ty)
                .map_or_else(|| "-".to_owned(), |v| hex(&v));
            // CK_ULONG class: as a number, in hex.
            let v = if *ty == CKA_CLASS {
                let b: [u8; size_of::<CK_ULONG>()] = unhex(&v).try_into().unwrap();
                format!("{:x}", CK_ULONG::from_ne_bytes(b))
            } else {
                v
            };
            line.push_str(&format!(" {name}={v}"));
        }
        println!("{line}");
    }
    println!("DUMP DONE");
}

#[test]
#[ignore = "a child process of the tests above"]
fn sign_in_destination_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let data = std::fs::read(std::env::var_os("MIGRATE_SIGN_IN").unwrap()).unwrap();
    let (m, s) = Module::open();
    let mut class = CKO_PRIVATE_KEY;
    let mut id = [0x51u8];
    let mut t = [
        CK_ATTRIBUTE {
            type_: CKA_CLASS,
            pValue: (&raw mut class).cast(),
            ulValueLen: CK_ULONG::try_from(size_of::<CK_OBJECT_CLASS>()).unwrap(),
        },
        CK_ATTRIBUTE {
            type_: CKA_ID,
            pValue: id.as_mut_ptr().cast(),
            ulValueLen: 1,
        },
    ];
    let found = m.find(s, &mut t);
    assert_eq!(found.len(), 1, "the migrated key");
    let key = found[0];

    // C_SignInit + C_Sign without C_Login(CKU_CONTEXT_SPECIFIC).
    assert_eq!(m.sign_init(s, CKM_SHA256_RSA_PKCS, key), CKR_OK);
    let (rv, _) = m.sign(s, &data);
    println!("sign without context login: {}", rv_name(rv));

    // With it, on a fresh session (whatever the first failure left behind).
    let s2 = m.session();
    assert_eq!(m.sign_init(s2, CKM_SHA256_RSA_PKCS, key), CKR_OK);
    assert_eq!(m.context_login(s2), CKR_OK);
    let (rv, sig) = m.sign(s2, &data);
    println!("sign with context login: {}", rv_name(rv));
    std::fs::write(std::env::var_os("MIGRATE_SIGN_OUT").unwrap(), sig).unwrap();

    // A mechanism the key does not allow.
    let s3 = m.session();
    let rv = m.sign_init(s3, CKM_SHA384_RSA_PKCS, key);
    println!("sign with CKM_SHA384_RSA_PKCS: {}", rv_name(rv));
    println!("SIGN DONE");
}
