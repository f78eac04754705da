//! `ferrohsm import-softhsm` (issue 22) through the real tools: a SoftHSMv2 token made by
//! softhsm2-util and pkcs11-tool (its own SOFTHSM2_CONF and token directory) — RSA-2048, EC
//! P-256 and Ed25519 key pairs, AES-256 keys (one sensitive and not extractable, one
//! extractable), a certificate made by openssl and a private data object — is imported into a
//! fresh home, and then, through the built module:
//!
//! - the RSA, EC and Ed25519 keys sign, and openssl verifies the signatures against the public
//!   keys exported from SoftHSM before the import;
//! - both AES keys encrypt the same plaintext to the same bytes as in SoftHSM (AES-CBC-PAD,
//!   the same IV);
//! - the certificate's and the data object's bytes, and every label and id, are SoftHSM's;
//!   a certificate SoftHSM's SO made `CKA_TRUSTED` is trusted (the new SO created it);
//! - the keys that were not extractable say `CKA_EXTRACTABLE` FALSE and refuse `C_WrapKey`
//!   (`CKR_KEY_UNEXTRACTABLE`) and a read of their value (`CKR_ATTRIBUTE_SENSITIVE`); every
//!   key says `CKA_LOCAL`, `CKA_ALWAYS_SENSITIVE`, `CKA_NEVER_EXTRACTABLE` FALSE;
//! - the token label and the user PIN are SoftHSM's, the SO PIN is the new one (SoftHSM's is
//!   refused).
//!
//! And what must leave nothing behind: a wrong PIN (one line saying what to do), a label not
//! found (the labels there listed), an object file cut short, and an object that the new token
//! refuses half-way through (an EC point off its curve, in an unencrypted public key): the home
//! has no token afterwards.
//!
//! The reads through the module run in a child process (this binary, an `#[ignore]`d test)
//! with its own `FERROHSM_HOME`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, CertificateType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use ferrohsm_e2e::*;

const SOFTHSM: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The SoftHSM token's SO PIN: the imported token must not take it.
const SOFT_SO_PIN: &str = "87654321";
/// The imported token's SO PIN.
const NEW_SO_PIN: &str = "new-so-pin-1";
const LABEL: &str = "moving token";
const IV: &str = "000102030405060708090a0b0c0d0e0f";
const CHILD: &str = "FERROHSM_IMPORT_SOFTHSM_CHILD";

/// A SoftHSM installation of its own: a configuration and a token directory.
struct Soft {
    dir: tempfile::TempDir,
}

impl Soft {
    fn new() -> Self {
        require("softhsm2-util");
        assert!(Path::new(SOFTHSM).exists(), "softhsm2 is not installed");
        let dir = tempfile::tempdir().unwrap();
        softhsm_config(dir.path());
        Self { dir }
    }

    fn tokens(&self) -> PathBuf {
        self.dir.path().join("tokens")
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn init(&self, label: &str) {
        let mut c = timed("softhsm2-util");
        c.env("SOFTHSM2_CONF", self.file("softhsm2.conf")).args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            SOFT_SO_PIN,
            "--pin",
            USER_PIN,
        ]);
        run(&mut c).ok();
    }

    /// pkcs11-tool on SoftHSM's token `LABEL`, logged in as the user.
    fn tool(&self, args: &[&str]) -> Run {
        require("pkcs11-tool");
        let mut c = timed("pkcs11-tool");
        c.env("SOFTHSM2_CONF", self.file("softhsm2.conf"))
            .args(["--module", SOFTHSM, "--token-label", LABEL])
            .args(["--login", "--pin", USER_PIN])
            .args(args);
        run(&mut c)
    }

    /// The token SoftHSM made, with every kind of object; the references the imported token
    /// is checked against are written next to it.
    fn populate(&self) {
        self.init(LABEL);
        for (key_type, id, label, extra) in [
            ("rsa:2048", "01", "rsa", &["--usage-sign"][..]),
            (
                "EC:prime256v1",
                "02",
                "ec",
                &["--usage-sign", "--extractable"][..],
            ),
            ("EC:edwards25519", "05", "ed", &["--usage-sign"][..]),
        ] {
            self.tool(
                &[
                    &[
                        "--keypairgen",
                        "--key-type",
                        key_type,
                        "--id",
                        id,
                        "--label",
                        label,
                    ][..],
                    extra,
                ]
                .concat(),
            )
            .ok();
        }
        self.tool(&[
            "--keygen",
            "--key-type",
            "AES:32",
            "--id",
            "03",
            "--label",
            "aes",
            "--sensitive",
        ])
        .ok();
        self.tool(&[
            "--keygen",
            "--key-type",
            "AES:32",
            "--id",
            "04",
            "--label",
            "aes-open",
            "--extractable",
        ])
        .ok();
        let cert = ec_certificate(self.dir.path(), "import-softhsm");
        self.tool(&[
            "--write-object",
            s(&cert),
            "--type",
            "cert",
            "--id",
            "06",
            "--label",
            "cert",
        ])
        .ok();
        std::fs::write(self.file("data.bin"), b"a data object's bytes\x00\xff").unwrap();
        self.tool(&[
            "--write-object",
            s(&self.file("data.bin")),
            "--type",
            "data",
            "--label",
            "blob",
            "--application-label",
            "import test",
            "--private",
        ])
        .ok();
        // The references: public keys, and the AES ciphertexts.
        for id in ["01", "02", "05"] {
            public_pem_with(
                &|args: &[&str]| self.tool(args),
                &self.file(&format!("pub-{id}.der")),
                id,
            );
        }
        std::fs::write(self.file("plain"), b"the same bytes, before and after").unwrap();
        for id in ["03", "04"] {
            aes_cbc_pad(
                &|a: &[&str]| self.tool(a),
                id,
                &self.file("plain"),
                &self.file(&format!("soft-{id}.enc")),
            );
        }
    }

    /// The object file holding `needle` in clear (an unencrypted public value).
    fn object_file_with(&self, needle: &[u8]) -> PathBuf {
        for token in std::fs::read_dir(self.tokens()).unwrap().flatten() {
            for f in std::fs::read_dir(token.path()).unwrap().flatten() {
                let bytes = std::fs::read(f.path()).unwrap();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    return f.path();
                }
            }
        }
        panic!("no object file holds the bytes");
    }
}

/// `pkcs11-tool --encrypt` of `input` with the AES key `id`, CBC with PKCS#7 padding under
/// [`IV`], through `tool` (SoftHSM's or ours).
fn aes_cbc_pad(tool: &dyn Fn(&[&str]) -> Run, id: &str, input: &Path, output: &Path) {
    tool(&[
        "--encrypt",
        "--mechanism",
        "AES-CBC-PAD",
        "--iv",
        IV,
        "--id",
        id,
        "--input-file",
        s(input),
        "--output-file",
        s(output),
    ])
    .ok();
}

/// `ferrohsm import-softhsm` of SoftHSM's token [`LABEL`] into `home`.
fn import(home: &Home, soft: &Soft, pin: &str) -> Run {
    import_from(home, &soft.tokens(), LABEL, pin)
}

fn import_from(home: &Home, tokendir: &Path, label: &str, pin: &str) -> Run {
    let r = home.ferrohsm(&[
        "import-softhsm",
        "--tokendir",
        s(tokendir),
        "--token",
        label,
        "--pin",
        pin,
        "--so-pin",
        NEW_SO_PIN,
    ]);
    println!("{}", r.all());
    r
}

/// The home holds no token: no slot directory, no staging directory.
fn assert_no_token(home: &Home) {
    let tokens = home.path().join("tokens");
    let left: Vec<String> = std::fs::read_dir(&tokens)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", tokens.display());
    let slots = home.ferrohsm(&["slots"]).ok().stdout;
    assert!(!slots.contains(LABEL), "{slots}");
}

/// The one error line of a failed run.
fn error_line(r: &Run) -> &str {
    assert_eq!(r.status, 1, "{}", r.all());
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one error line: {}", r.stderr);
    assert!(lines[0].starts_with("ferrohsm: "), "{}", r.stderr);
    lines[0]
}

#[test]
fn a_softhsm_token_moves_whole_and_its_keys_work_as_before() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let soft = Soft::new();
    soft.populate();
    // SoftHSM's SO makes a trusted certificate (pkcs11-tool cannot).
    let home = Home::new();
    let out = run(child_test("trust_in_softhsm_child", &home, CHILD)
        .env("SOFTHSM2_CONF", soft.file("softhsm2.conf")));
    assert!(out.stdout.contains("TRUSTED IN SOFTHSM"), "{}", out.all());
    let r = import(&home, &soft, USER_PIN).ok();
    let out = &r.stdout;
    for line in [
        "imported   secret key AES \"aes\" (id 03)",
        "imported   secret key AES \"aes-open\" (id 04)",
        "imported   private key RSA \"rsa\" (id 01)",
        "imported   private key EC \"ec\" (id 02)",
        "imported   private key EdDSA \"ed\" (id 05)",
        "imported   public key RSA \"rsa\" (id 01)",
        "imported   public key EC \"ec\" (id 02)",
        "imported   public key EdDSA \"ed\" (id 05)",
        "imported   certificate \"cert\" (id 06)",
        "imported   certificate \"trusted\" (id 07)",
        "imported   data object \"blob\" (id )",
    ] {
        assert!(out.lines().any(|l| l == line), "{line:?} in:\n{out}");
    }
    // pkcs11-tool made the sensitive AES key CKA_PRIVATE=FALSE in SoftHSM: private here, said.
    let lines: Vec<&str> = out.lines().collect();
    let cert_at = lines
        .iter()
        .position(|l| *l == "imported   certificate \"trusted\" (id 07)")
        .unwrap();
    assert_eq!(
        lines[cert_at + 1],
        "  CKA_TRUSTED: TRUE, given by the new token's SO"
    );
    let at = lines
        .iter()
        .position(|l| *l == "imported   secret key AES \"aes\" (id 03)")
        .unwrap();
    assert!(
        lines[at + 1].starts_with("  stricter CKA_PRIVATE: FALSE in SoftHSM, TRUE here"),
        "{out}"
    );
    assert!(
        out.contains("Imported 11 objects of SoftHSM token \"moving token\" into slot 0"),
        "{out}"
    );
    assert!(
        out.contains(
            "2 secret keys, 3 private keys, 3 public keys, 2 certificates, 1 data objects"
        ),
        "{out}"
    );
    // No PIN, no key byte on the output.
    assert!(!r.all().contains(USER_PIN) && !r.all().contains(NEW_SO_PIN));

    // Signatures through the module, verified against SoftHSM's public keys.
    let msg = home.file("msg");
    std::fs::write(&msg, b"signed after the move").unwrap();
    for (id, mech) in [
        ("01", "SHA256-RSA-PKCS"),
        ("02", "ECDSA-SHA256"),
        ("05", "EDDSA"),
    ] {
        let sig = home.file(&format!("sig-{id}"));
        home.user(&[
            "--sign",
            "--mechanism",
            mech,
            "--id",
            id,
            "--signature-format",
            "openssl",
            "--input-file",
            s(&msg),
            "--output-file",
            s(&sig),
        ])
        .ok();
        let pem = soft.file(&format!("pub-{id}.pem"));
        let v = if id == "05" {
            openssl(&[
                "pkeyutl",
                "-verify",
                "-pubin",
                "-inkey",
                s(&pem),
                "-rawin",
                "-in",
                s(&msg),
                "-sigfile",
                s(&sig),
            ])
        } else {
            openssl(&[
                "dgst",
                "-sha256",
                "-verify",
                s(&pem),
                "-signature",
                s(&sig),
                s(&msg),
            ])
        };
        assert!(
            v.stdout.contains("Verified OK") || v.stdout.contains("Signature Verified"),
            "{id}: {}",
            v.all()
        );
    }
    // The AES keys encrypt as they did in SoftHSM.
    for id in ["03", "04"] {
        let enc = home.file(&format!("ferro-{id}.enc"));
        aes_cbc_pad(&|a: &[&str]| home.user(a), id, &soft.file("plain"), &enc);
        assert_eq!(
            std::fs::read(&enc).unwrap(),
            std::fs::read(soft.file(&format!("soft-{id}.enc"))).unwrap(),
            "key {id}"
        );
    }

    // Everything else, read through the module.
    let out = run(child_test("imported_token_child", &home, CHILD)
        .env("IMPORT_CERT", soft.file("import-softhsm.der"))
        .env("IMPORT_DATA", soft.file("data.bin")));
    println!("{}", out.all());
    assert!(
        out.status == 0 && out.stdout.contains("IMPORTED TOKEN CHECKED"),
        "{}",
        out.all()
    );
}

/// `module`, initialized, and a read-write session on its token labelled [`LABEL`].
fn open_labelled(module: &Path) -> (Pkcs11, Session) {
    let p = Pkcs11::new(module).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = p
        .get_slots_with_initialized_token()
        .unwrap()
        .into_iter()
        .find(|s| p.get_token_info(*s).unwrap().label() == LABEL)
        .unwrap_or_else(|| panic!("no token labelled {LABEL:?} in {}", module.display()));
    let session = p.open_rw_session(slot).unwrap();
    (p, session)
}

#[test]
#[ignore = "a child process of the test above"]
fn imported_token_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    // The imported token, found by SoftHSM's label.
    let (p, session) = open_labelled(&module());
    // The SO PIN is the new one; SoftHSM's is refused.
    assert!(matches!(
        session.login(UserType::So, Some(&AuthPin::new(SOFT_SO_PIN.into()))),
        Err(CkError::Pkcs11(RvError::PinIncorrect, _))
    ));
    session
        .login(UserType::So, Some(&AuthPin::new(NEW_SO_PIN.into())))
        .unwrap();
    session.logout().unwrap();
    session
        .login(UserType::User, Some(&AuthPin::new(USER_PIN.into())))
        .unwrap();

    let one = |class: ObjectClass, id: &[u8]| -> ObjectHandle {
        let found = session
            .find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())])
            .unwrap();
        assert_eq!(found.len(), 1, "{class:?} {id:?}");
        found[0]
    };
    let flag = |h: ObjectHandle, ty: AttributeType| -> bool {
        match session.get_attributes(h, &[ty]).unwrap().as_slice() {
            [
                Attribute::Local(b)
                | Attribute::AlwaysSensitive(b)
                | Attribute::NeverExtractable(b)
                | Attribute::Extractable(b)
                | Attribute::Sensitive(b)
                | Attribute::Private(b),
            ] => *b,
            other => panic!("{ty:?}: {other:?}"),
        }
    };
    let keys = [
        (ObjectClass::PRIVATE_KEY, &[1u8][..], false),
        (ObjectClass::PRIVATE_KEY, &[2], true),
        (ObjectClass::PRIVATE_KEY, &[5], false),
        (ObjectClass::SECRET_KEY, &[3], false),
        (ObjectClass::SECRET_KEY, &[4], true),
    ];
    // A wrapping key of the new token's own, for the wrap attempts.
    let wrapping = session
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32.into()),
                Attribute::Wrap(true),
            ],
        )
        .unwrap();
    for (class, id, extractable) in keys {
        let h = one(class, id);
        for ty in [
            AttributeType::Local,
            AttributeType::AlwaysSensitive,
            AttributeType::NeverExtractable,
        ] {
            assert!(!flag(h, ty), "{id:?} {ty:?}: an import is not local");
        }
        assert_eq!(flag(h, AttributeType::Extractable), extractable, "{id:?}");
        // Protected keys are private (SoftHSM's, and the firmware's rule).
        if !extractable {
            assert!(flag(h, AttributeType::Private), "{id:?}");
        }
        let wrapped = session.wrap_key(&Mechanism::AesKeyWrapPad, wrapping, h);
        if extractable {
            assert!(wrapped.is_ok(), "{id:?}: {wrapped:?}");
        } else {
            assert!(
                matches!(wrapped, Err(CkError::Pkcs11(RvError::KeyUnextractable, _))),
                "{id:?}: {wrapped:?}"
            );
            let value = if class == ObjectClass::SECRET_KEY {
                AttributeType::Value
            } else if id == [1] {
                AttributeType::PrivateExponent
            } else {
                AttributeType::Value
            };
            assert!(
                matches!(
                    session.get_attribute_info(h, &[value]).unwrap().as_slice(),
                    [AttributeInfo::Sensitive]
                ),
                "{id:?}: CKR_ATTRIBUTE_SENSITIVE"
            );
        }
        println!("key {id:?} checked");
    }
    // Labels and ids as in SoftHSM.
    for (class, id, label) in [
        (ObjectClass::PRIVATE_KEY, &[1u8][..], "rsa"),
        (ObjectClass::PUBLIC_KEY, &[2], "ec"),
        (ObjectClass::SECRET_KEY, &[4], "aes-open"),
        (ObjectClass::CERTIFICATE, &[6], "cert"),
    ] {
        let h = one(class, id);
        assert_eq!(
            session.get_attributes(h, &[AttributeType::Label]).unwrap(),
            [Attribute::Label(label.as_bytes().to_vec())]
        );
    }
    // The certificate's and the data object's bytes; the trusted one still trusted.
    for (id, trusted) in [(6u8, false), (7, true)] {
        let h = one(ObjectClass::CERTIFICATE, &[id]);
        assert_eq!(
            session
                .get_attributes(h, &[AttributeType::Trusted])
                .unwrap(),
            [Attribute::Trusted(trusted)]
        );
    }
    let cert = one(ObjectClass::CERTIFICATE, &[6]);
    assert_eq!(
        session
            .get_attributes(cert, &[AttributeType::Value])
            .unwrap(),
        [Attribute::Value(
            std::fs::read(std::env::var_os("IMPORT_CERT").unwrap()).unwrap()
        )]
    );
    let data = session
        .find_objects(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Label(b"blob".to_vec()),
        ])
        .unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(
        session
            .get_attributes(
                data[0],
                &[
                    AttributeType::Value,
                    AttributeType::Application,
                    AttributeType::Private
                ]
            )
            .unwrap(),
        [
            Attribute::Value(std::fs::read(std::env::var_os("IMPORT_DATA").unwrap()).unwrap()),
            Attribute::Application(b"import test".to_vec()),
            Attribute::Private(true),
        ]
    );
    session.close().unwrap();
    p.finalize().unwrap();
    println!("IMPORTED TOKEN CHECKED");
}

#[test]
#[ignore = "a child process of the test above"]
fn trust_in_softhsm_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let (p, session) = open_labelled(Path::new(SOFTHSM));
    session
        .login(UserType::So, Some(&AuthPin::new(SOFT_SO_PIN.into())))
        .unwrap();
    let cert = session
        .find_objects(&[
            Attribute::Class(ObjectClass::CERTIFICATE),
            Attribute::Id(vec![6]),
        ])
        .unwrap();
    assert_eq!(cert.len(), 1);
    // SoftHSM takes CKA_TRUSTED at creation only: a second, trusted copy.
    let copied = session
        .get_attributes(cert[0], &[AttributeType::Subject, AttributeType::Value])
        .unwrap();
    let mut template = vec![
        Attribute::Class(ObjectClass::CERTIFICATE),
        Attribute::CertificateType(CertificateType::X_509),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Trusted(true),
        Attribute::Id(vec![7]),
        Attribute::Label(b"trusted".to_vec()),
    ];
    template.extend(copied);
    session.create_object(&template).unwrap();
    session.close().unwrap();
    p.finalize().unwrap();
    println!("TRUSTED IN SOFTHSM");
}

#[test]
fn a_wrong_pin_or_an_unknown_label_leaves_no_token_and_says_what_to_do() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let soft = Soft::new();
    soft.init(LABEL);
    soft.init("another");
    soft.tool(&[
        "--keygen",
        "--key-type",
        "AES:16",
        "--id",
        "01",
        "--label",
        "k",
    ])
    .ok();
    let home = Home::new();
    let r = import(&home, &soft, "999999");
    let line = error_line(&r);
    assert!(
        line.contains("does not open SoftHSM token \"moving token\"")
            && line.contains("give that token's user PIN")
            && line.contains("nothing was written"),
        "{line}"
    );
    assert_no_token(&home);

    let r = import_from(&home, &soft.tokens(), "missing", USER_PIN);
    let line = error_line(&r);
    assert!(
        line.contains("no SoftHSM token labelled \"missing\"")
            && line.contains("\"another\"")
            && line.contains("\"moving token\""),
        "{line}"
    );
    assert_no_token(&home);

    // A token of SoftHSM's DB store is named as such.
    let db = soft.tokens().join("db-token");
    std::fs::create_dir(&db).unwrap();
    std::fs::write(db.join("sqlite3.db"), b"").unwrap();
    let r = import_from(&home, &db, LABEL, USER_PIN);
    let line = error_line(&r);
    assert!(line.contains("objectstore.backend = db"), "{line}");
    assert_no_token(&home);
}

#[test]
fn a_damaged_object_file_leaves_no_token() {
    if std::env::var_os(CHILD).is_some() {
        return;
    }
    let soft = Soft::new();
    soft.init(LABEL);
    soft.tool(&[
        "--keygen",
        "--key-type",
        "AES:32",
        "--id",
        "01",
        "--label",
        "first",
    ])
    .ok();
    soft.tool(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        "02",
        "--label",
        "ec",
    ])
    .ok();
    // The EC public key is not private: its point is in its file in clear.
    let listing = soft
        .tool(&["--list-objects", "--type", "pubkey"])
        .ok()
        .stdout;
    let point = listing
        .lines()
        .find_map(|l| l.trim().strip_prefix("EC_POINT:"))
        .map(|p| unhex(p.trim()))
        .expect("EC_POINT listed");
    let file = soft.object_file_with(&point);
    let original = std::fs::read(&file).unwrap();
    let home = Home::new();

    // An EC point off its curve: the file reads, the new token refuses the key after it made
    // the others.
    let at = original
        .windows(point.len())
        .position(|w| w == point.as_slice())
        .unwrap();
    let mut bad = original.clone();
    bad[at + 20] ^= 0x01;
    std::fs::write(&file, &bad).unwrap();
    let r = import(&home, &soft, USER_PIN);
    let line = error_line(&r);
    assert!(
        line.contains("the new token refused public key EC \"ec\" (id 02)")
            && line.contains("nothing was written"),
        "{line}"
    );
    assert!(
        r.stdout.contains("FAILED     public key EC \"ec\" (id 02)"),
        "{}",
        r.stdout
    );
    assert_no_token(&home);

    // The file cut short: not read at all.
    std::fs::write(&file, &original[..original.len() - 5]).unwrap();
    let r = import(&home, &soft, USER_PIN);
    let line = error_line(&r);
    assert!(
        line.contains(s(&file)) && line.contains("not a SoftHSM object file"),
        "{line}"
    );
    assert_no_token(&home);

    // Restored, the same token imports.
    std::fs::write(&file, &original).unwrap();
    import(&home, &soft, USER_PIN).ok();
}
