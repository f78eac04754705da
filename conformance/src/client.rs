//! The suite's own PKCS#11 client (the `cryptoki` crate), for what pkcs11-tool cannot express:
//! multi-threaded use, multi-part operations, copying and changing attributes, live
//! cross-process visibility, and the golden return codes. Each check runs in a worker process
//! (`ferrohsm-conformance --worker CHECK MODULE`), so that a crashing module takes down one
//! check, not the report, and each module keeps its own environment.

use std::process::ExitCode;
use std::sync::Arc;

use base16ct::lower::encode_string as hex;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use crate::ctx::{Fail, R, Run, TOKEN, USER_PIN};

/// The worker's verdict line prefix.
const VERDICT: &str = "CONFORMANCE-RESULT ";

/// What a check returns: a detail (for golden rules: the code) or why it failed.
pub(crate) type Check = Result<String, String>;

/// A connection to the module under test, found by the token label.
pub(crate) struct Env {
    /// The module.
    pub(crate) p11: Pkcs11,
    /// The conformance token's slot.
    pub(crate) slot: Slot,
    /// The module's path (for checks that start other processes).
    pub(crate) module: String,
}

impl Env {
    fn open(module: &str) -> Result<Self, String> {
        let p11 = Pkcs11::new(module).map_err(|e| format!("cannot load {module}: {e}"))?;
        p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(|e| format!("C_Initialize: {}", name(&e)))?;
        let slots = p11
            .get_slots_with_token()
            .map_err(|e| format!("C_GetSlotList: {}", name(&e)))?;
        let slot = slots
            .into_iter()
            .find(|s| {
                p11.get_token_info(*s)
                    .map(|t| t.label().trim_end() == TOKEN)
                    .unwrap_or(false)
            })
            .ok_or_else(|| format!("no token labelled {TOKEN}"))?;
        Ok(Self {
            p11,
            slot,
            module: module.to_owned(),
        })
    }

    /// A read-write session, logged in as the user (login is per application: later sessions
    /// of this process share it).
    pub(crate) fn user(&self) -> Result<Session, String> {
        let s = self.rw()?;
        match s.login(UserType::User, Some(&pin())) {
            Ok(()) => Ok(s),
            Err(CkError::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => Ok(s),
            Err(e) => Err(format!("C_Login: {}", name(&e))),
        }
    }

    /// A read-write session, not logged in.
    pub(crate) fn rw(&self) -> Result<Session, String> {
        self.p11
            .open_rw_session(self.slot)
            .map_err(|e| format!("C_OpenSession: {}", name(&e)))
    }

    /// A read-only session.
    pub(crate) fn ro(&self) -> Result<Session, String> {
        self.p11
            .open_ro_session(self.slot)
            .map_err(|e| format!("C_OpenSession: {}", name(&e)))
    }
}

/// The environment variable by which a worker learns the token's user PIN (the suite's own
/// [`USER_PIN`], as the target's personality writes it).
pub(crate) const PIN_ENV: &str = "FERROHSM_CONFORMANCE_USER_PIN";

/// The token's user PIN.
pub(crate) fn user_pin() -> String {
    std::env::var(PIN_ENV).unwrap_or_else(|_| USER_PIN.to_owned())
}

/// The user PIN as cryptoki wants it.
pub(crate) fn pin() -> AuthPin {
    AuthPin::from(user_pin())
}

/// `CKR_*` name of a cryptoki error.
pub(crate) fn name(e: &CkError) -> String {
    match e {
        CkError::Pkcs11(rv, _) => {
            let debug = format!("{rv:?}");
            if debug.contains('(') {
                return format!("CKR_{debug}");
            }
            let mut out = String::from("CKR");
            for c in debug.chars() {
                if c.is_ascii_uppercase() {
                    out.push('_');
                }
                out.push(c.to_ascii_uppercase());
            }
            out
        }
        other => format!("client error: {other}"),
    }
}

/// The code of a call: `CKR_OK` or the error's name.
pub(crate) fn code<T>(r: cryptoki::error::Result<T>) -> String {
    match r {
        Ok(_) => "CKR_OK".to_owned(),
        Err(e) => name(&e),
    }
}

/// Maps a failed set-up call to a check failure.
pub(crate) fn setup<T>(what: &str, r: cryptoki::error::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("set-up {what}: {}", name(&e)))
}

/// `base` with `extra` applied on top (an attribute in `extra` replaces the same type in
/// `base`), so that no template names an attribute twice.
pub(crate) fn merge(base: &[Attribute], extra: &[Attribute]) -> Vec<Attribute> {
    let mut t: Vec<Attribute> = base
        .iter()
        .filter(|a| {
            !extra
                .iter()
                .any(|e| e.attribute_type() == a.attribute_type())
        })
        .cloned()
        .collect();
    t.extend_from_slice(extra);
    t
}

/// A token AES-128 key from `C_GenerateKey`, with extra attributes.
pub(crate) fn gen_aes(s: &Session, extra: &[Attribute]) -> Result<ObjectHandle, String> {
    let t = merge(
        &[
            Attribute::Token(true),
            Attribute::ValueLen(16.into()),
            Attribute::Label(b"golden-aes".to_vec()),
        ],
        extra,
    );
    setup("C_GenerateKey", s.generate_key(&Mechanism::AesKeyGen, &t))
}

/// A token AES key from `C_CreateObject` with known bytes.
pub(crate) fn create_aes(
    s: &Session,
    value: &[u8],
    extra: &[Attribute],
) -> cryptoki::error::Result<ObjectHandle> {
    let t = merge(
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(true),
            Attribute::Value(value.to_vec()),
        ],
        extra,
    );
    s.create_object(&t)
}

/// A public token data object.
pub(crate) fn data_object(
    s: &Session,
    extra: &[Attribute],
) -> cryptoki::error::Result<ObjectHandle> {
    let t = merge(
        &[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Label(b"golden-data".to_vec()),
            Attribute::Value(b"payload".to_vec()),
        ],
        extra,
    );
    s.create_object(&t)
}

/// The DER OID of P-256.
pub(crate) const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// A P-256 token key pair, with extra private-key attributes.
pub(crate) fn gen_ec(
    s: &Session,
    extra_private: &[Attribute],
) -> Result<(ObjectHandle, ObjectHandle), String> {
    let public = [
        Attribute::Token(true),
        Attribute::EcParams(P256.to_vec()),
        Attribute::Verify(true),
    ];
    let private = merge(
        &[Attribute::Token(true), Attribute::Sign(true)],
        extra_private,
    );
    setup(
        "C_GenerateKeyPair",
        s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private),
    )
}

/// A 2048-bit RSA token key pair, with extra private-key attributes.
pub(crate) fn gen_rsa(
    s: &Session,
    extra_private: &[Attribute],
) -> Result<(ObjectHandle, ObjectHandle), String> {
    let public = [
        Attribute::Token(true),
        Attribute::ModulusBits(2048.into()),
        Attribute::PublicExponent(vec![1, 0, 1]),
        Attribute::Verify(true),
        Attribute::Encrypt(true),
    ];
    let private = merge(
        &[
            Attribute::Token(true),
            Attribute::Sign(true),
            Attribute::Decrypt(true),
        ],
        extra_private,
    );
    setup(
        "C_GenerateKeyPair",
        s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private),
    )
}

/// A boolean attribute of an object.
pub(crate) fn get_bool(
    s: &Session,
    o: ObjectHandle,
    t: cryptoki::object::AttributeType,
) -> Result<bool, String> {
    let v = setup("C_GetAttributeValue", s.get_attributes(o, &[t]))?;
    for a in v {
        match a {
            Attribute::Sensitive(b)
            | Attribute::Extractable(b)
            | Attribute::AlwaysSensitive(b)
            | Attribute::NeverExtractable(b)
            | Attribute::Local(b)
            | Attribute::Token(b)
            | Attribute::Private(b)
            | Attribute::Modifiable(b)
            | Attribute::Copyable(b) => return Ok(b),
            _ => {}
        }
    }
    Err(format!("{t:?} not returned"))
}

/// A byte-string attribute of an object.
pub(crate) fn get_bytes(
    s: &Session,
    o: ObjectHandle,
    t: cryptoki::object::AttributeType,
) -> Result<Vec<u8>, String> {
    let v = setup("C_GetAttributeValue", s.get_attributes(o, &[t]))?;
    for a in v {
        match a {
            Attribute::Value(b)
            | Attribute::Label(b)
            | Attribute::Id(b)
            | Attribute::UniqueId(b)
            | Attribute::EcPoint(b) => return Ok(b),
            _ => {}
        }
    }
    Err(format!("{t:?} not returned"))
}

// ---------------------------------------------------------------- worker plumbing

/// Entry point of `--worker CHECK MODULE [ARGS...]`.
pub(crate) fn worker_main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(2).collect();
    let (Some(check), Some(module)) = (args.first(), args.get(1)) else {
        println!("{VERDICT}fail worker: missing arguments");
        return ExitCode::SUCCESS;
    };
    let env = match Env::open(module) {
        Ok(e) => e,
        Err(e) => {
            println!("{VERDICT}fail {e}");
            return ExitCode::SUCCESS;
        }
    };
    let result = if let Some(rule) = check.strip_prefix("golden:") {
        match crate::golden::rules().into_iter().find(|r| r.name == rule) {
            Some(r) => (r.probe)(&env),
            None => Err(format!("no golden rule {rule}")),
        }
    } else {
        match CHECKS.iter().find(|(n, _)| n == check) {
            Some((_, f)) => f(&env),
            None => Err(format!("no check {check}")),
        }
    };
    match result {
        Ok(detail) => println!("{VERDICT}ok {detail}"),
        Err(e) => println!("{VERDICT}fail {e}"),
    }
    ExitCode::SUCCESS
}

/// Reads a worker's verdict. `Ok(detail)` when the check ran to its end.
pub(crate) fn worker_verdict(r: &Run) -> Result<String, Fail> {
    let line = r.stdout.lines().rev().find_map(|l| l.strip_prefix(VERDICT));
    match line {
        Some(v) => match v.split_once(' ').unwrap_or((v, "")) {
            ("ok", d) => Ok(d.to_owned()),
            (_, d) => Err(Fail::Failed(d.to_owned())),
        },
        None => Err(Fail::Failed(format!(
            "the worker died without a verdict (exit {}, a crash in the module?): {}",
            r.status,
            r.stderr.lines().last().unwrap_or("")
        ))),
    }
}

// ---------------------------------------------------------------- client scenarios

type CheckFn = fn(&Env) -> Check;

const CHECKS: &[(&str, CheckFn)] = &[
    ("threads", threads),
    ("multipart-aes-cbc-pad", multipart_aes),
    ("multipart-sign", multipart_sign),
    ("aes-gcm", aes_gcm),
    ("aes-ctr", aes_ctr),
    ("copy-object", copy_object),
    ("set-attributes", set_attributes),
    ("ro-session", ro_session),
    ("cross-process", cross_process),
    ("session-states", session_states),
    ("find-by-template", find_by_template),
    ("rsa-signature-length", rsa_signature_length),
    ("hmac-sha256", |e| {
        hmac(e, MechanismType::SHA256_HMAC, "sha256")
    }),
    ("hmac-sha384", |e| {
        hmac(e, MechanismType::SHA384_HMAC, "sha384")
    }),
    ("hmac-sha512", |e| {
        hmac(e, MechanismType::SHA512_HMAC, "sha512")
    }),
    ("aes-cmac", aes_cmac),
    ("des3-cbc-pad", des3_cbc_pad),
];

/// A scenario body.
pub(crate) type ScenarioFn = Box<dyn Fn(&crate::ctx::Ctx) -> R + Send + Sync>;

/// Registers the client scenarios (`client/<check>`).
pub(crate) fn scenarios(add: &mut dyn FnMut(String, ScenarioFn)) {
    for (check, _) in CHECKS {
        let check: &'static str = check;
        add(
            format!("client/{check}"),
            Box::new(move |ctx| ctx.worker(check, &[])),
        );
    }
}

fn ensure(cond: bool, msg: impl Into<String>) -> Result<(), String> {
    if cond { Ok(()) } else { Err(msg.into()) }
}

/// Eight threads, each with its own session, sign, verify, digest, create and destroy objects
/// and search concurrently; every result is checked.
fn threads(env: &Env) -> Check {
    // The generating session stays open: a module may renumber token objects once no session
    // of the application is left (PKCS#11 §4.4.1).
    let s = env.user()?;
    let (public, private) = gen_ec(&s, &[])?;
    let env = Arc::new(env);
    let errors: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let env = Arc::clone(&env);
                scope.spawn(move || -> Result<(), String> {
                    let s = env.user()?;
                    for i in 0..20 {
                        let msg = format!("thread {t} message {i}");
                        let d = setup("C_Digest", s.digest(&Mechanism::Sha256, msg.as_bytes()))?;
                        ensure(d.len() == 32, "digest length")?;
                        let sig = setup("C_Sign", s.sign(&Mechanism::Ecdsa, private, &d))?;
                        setup("C_Verify", s.verify(&Mechanism::Ecdsa, public, &d, &sig))?;
                        let label = format!("thread-{t}-{i}");
                        let o = setup(
                            "C_CreateObject",
                            s.create_object(&[
                                Attribute::Class(ObjectClass::DATA),
                                Attribute::Token(true),
                                Attribute::Label(label.clone().into_bytes()),
                                Attribute::Value(msg.clone().into_bytes()),
                            ]),
                        )?;
                        let found = setup(
                            "C_FindObjects",
                            s.find_objects(&[Attribute::Label(label.into_bytes())]),
                        )?;
                        ensure(
                            found == vec![o],
                            format!("thread {t}: search found {found:?}"),
                        )?;
                        let v = get_bytes(&s, o, cryptoki::object::AttributeType::Value)?;
                        ensure(v == msg.as_bytes(), "value read back differs")?;
                        setup("C_DestroyObject", s.destroy_object(o))?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| match h.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some("a thread panicked".to_owned()),
            })
            .collect()
    });
    match errors.first() {
        None => {
            drop(s);
            Ok("8 threads x 20 rounds".to_owned())
        }
        Some(e) => Err(format!("{} of 8 threads failed: {e}", errors.len())),
    }
}

/// Multi-part CBC-PAD encryption and decryption in odd-sized pieces equal the single-part
/// results.
fn multipart_aes(env: &Env) -> Check {
    let s = env.user()?;
    let key = create_aes(
        &s,
        &[7u8; 16],
        &[Attribute::Encrypt(true), Attribute::Decrypt(true)],
    )
    .map_err(|e| format!("set-up C_CreateObject: {}", name(&e)))?;
    let iv = [9u8; 16];
    let mech = Mechanism::AesCbcPad(iv);
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 253) as u8).collect();
    let single = setup("C_Encrypt", s.encrypt(&mech, key, &data))?;
    setup("C_EncryptInit", s.encrypt_init(&mech, key))?;
    let mut multi = Vec::new();
    for chunk in data.chunks(37) {
        multi.extend(setup("C_EncryptUpdate", s.encrypt_update(chunk))?);
    }
    multi.extend(setup("C_EncryptFinal", s.encrypt_final())?);
    ensure(
        multi == single,
        "multi-part ciphertext differs from single-part",
    )?;
    setup("C_DecryptInit", s.decrypt_init(&mech, key))?;
    let mut back = Vec::new();
    for chunk in single.chunks(50) {
        back.extend(setup("C_DecryptUpdate", s.decrypt_update(chunk))?);
    }
    back.extend(setup("C_DecryptFinal", s.decrypt_final())?);
    ensure(back == data, "multi-part decryption differs")?;
    Ok(String::new())
}

/// Multi-part SHA256-RSA-PKCS and HMAC signatures equal single-part ones.
fn multipart_sign(env: &Env) -> Check {
    let s = env.user()?;
    let (public, private) = gen_rsa(&s, &[])?;
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 241) as u8).collect();
    let mech = Mechanism::Sha256RsaPkcs;
    let single = setup("C_Sign", s.sign(&mech, private, &data))?;
    setup("C_SignInit", s.sign_init(&mech, private))?;
    for chunk in data.chunks(333) {
        setup("C_SignUpdate", s.sign_update(chunk))?;
    }
    let multi = setup("C_SignFinal", s.sign_final())?;
    ensure(multi == single, "PKCS#1 v1.5 multi-part signature differs")?;
    setup("C_VerifyInit", s.verify_init(&mech, public))?;
    for chunk in data.chunks(1000) {
        setup("C_VerifyUpdate", s.verify_update(chunk))?;
    }
    setup("C_VerifyFinal", s.verify_final(&multi))?;
    Ok(String::new())
}

/// Runs openssl and returns stdout bytes.
fn openssl(args: &[&str], input: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write;
    let mut child = std::process::Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .map_err(|e| format!("openssl stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("openssl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(out.stdout)
}

/// AES-GCM: the ciphertext equals AES-CTR from J0+1 computed by openssl, the tag authenticates
/// (decryption returns the plaintext) and a flipped tag bit gives `CKR_ENCRYPTED_DATA_INVALID`.
fn aes_gcm(env: &Env) -> Check {
    let s = env.user()?;
    let kbytes: Vec<u8> = (0u8..16).map(|i| i.wrapping_mul(11)).collect();
    let key = create_aes(
        &s,
        &kbytes,
        &[Attribute::Encrypt(true), Attribute::Decrypt(true)],
    )
    .map_err(|e| format!("set-up C_CreateObject: {}", name(&e)))?;
    let data: Vec<u8> = (0..100u8).collect();
    let aad = b"header";
    let mut iv = [0x42u8; 12];
    let params = GcmParams::new(&mut iv, aad, 128.into()).map_err(|e| e.to_string())?;
    let ct = setup(
        "C_Encrypt",
        s.encrypt(&Mechanism::AesGcm(params), key, &data),
    )?;
    ensure(
        ct.len() == data.len() + 16,
        "GCM output is not data + 16-byte tag",
    )?;
    let mut counter = [0x42u8; 16];
    counter[12..].copy_from_slice(&[0, 0, 0, 2]);
    let expect = openssl(
        &[
            "enc",
            "-aes-128-ctr",
            "-K",
            &hex(&kbytes),
            "-iv",
            &hex(&counter),
        ],
        &data,
    )?;
    ensure(
        ct.get(..data.len()) == Some(&expect[..]),
        "GCM ciphertext differs from AES-CTR(J0+1) computed by openssl",
    )?;
    let mut iv = [0x42u8; 12];
    let params = GcmParams::new(&mut iv, aad, 128.into()).map_err(|e| e.to_string())?;
    let back = setup("C_Decrypt", s.decrypt(&Mechanism::AesGcm(params), key, &ct))?;
    ensure(back == data, "GCM decryption differs")?;
    let mut bad = ct.clone();
    if let Some(last) = bad.last_mut() {
        *last ^= 1;
    }
    let mut iv = [0x42u8; 12];
    let params = GcmParams::new(&mut iv, aad, 128.into()).map_err(|e| e.to_string())?;
    let c = code(s.decrypt(&Mechanism::AesGcm(params), key, &bad));
    ensure(
        c == "CKR_ENCRYPTED_DATA_INVALID",
        format!("a forged tag gave {c}, expected CKR_ENCRYPTED_DATA_INVALID"),
    )?;
    Ok(String::new())
}

/// AES-CTR with a 128-bit counter equals openssl's aes-128-ctr.
fn aes_ctr(env: &Env) -> Check {
    let s = env.user()?;
    let kbytes: Vec<u8> = (0u8..16).map(|i| i.wrapping_mul(13)).collect();
    let key = create_aes(
        &s,
        &kbytes,
        &[Attribute::Encrypt(true), Attribute::Decrypt(true)],
    )
    .map_err(|e| format!("set-up C_CreateObject: {}", name(&e)))?;
    let cb = [
        0xf0u8, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe,
        0xff,
    ];
    let params = cryptoki_sys::CK_AES_CTR_PARAMS {
        ulCounterBits: 128,
        cb,
    };
    let mech = Mechanism::VendorDefined(VendorDefinedMechanism::new(
        MechanismType::AES_CTR,
        Some(&params),
    ));
    let data: Vec<u8> = (0..77u8).collect();
    let ct = setup("C_Encrypt", s.encrypt(&mech, key, &data))?;
    let expect = openssl(
        &["enc", "-aes-128-ctr", "-K", &hex(&kbytes), "-iv", &hex(&cb)],
        &data,
    )?;
    ensure(ct == expect, "AES-CTR differs from openssl's")?;
    Ok(String::new())
}

/// `C_CopyObject` with a new label: a new object with the same value, the original untouched.
fn copy_object(env: &Env) -> Check {
    let s = env.user()?;
    let o = setup("C_CreateObject", data_object(&s, &[]))?;
    let c = setup(
        "C_CopyObject",
        s.copy_object(o, &[Attribute::Label(b"the-copy".to_vec())]),
    )?;
    ensure(c != o, "the copy has the original's handle")?;
    ensure(
        get_bytes(&s, c, cryptoki::object::AttributeType::Value)? == b"payload",
        "the copy's value differs",
    )?;
    ensure(
        get_bytes(&s, o, cryptoki::object::AttributeType::Label)? == b"golden-data",
        "the original's label changed",
    )?;
    ensure(
        get_bytes(&s, c, cryptoki::object::AttributeType::Label)? == b"the-copy",
        "the copy's label is not the template's",
    )?;
    Ok(String::new())
}

/// Label and id changes are seen by another process (pkcs11-tool).
fn set_attributes(env: &Env) -> Check {
    let s = env.user()?;
    let o = setup("C_CreateObject", data_object(&s, &[]))?;
    setup(
        "C_SetAttributeValue",
        s.update_attributes(o, &[Attribute::Label(b"renamed".to_vec())]),
    )?;
    drop(s);
    let out = std::process::Command::new("pkcs11-tool")
        .args([
            "--module",
            &env.module,
            "--token-label",
            TOKEN,
            "--list-objects",
        ])
        .output()
        .map_err(|e| format!("cannot run pkcs11-tool: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure(
        text.contains("renamed"),
        "another process does not see the new label",
    )?;
    Ok(String::new())
}

/// A read-only session reads but cannot create token objects.
fn ro_session(env: &Env) -> Check {
    let s = env.ro()?;
    let c = code(data_object(&s, &[]));
    ensure(
        c == "CKR_SESSION_READ_ONLY",
        format!("token object in a R/O session: {c}"),
    )?;
    let c = code(s.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(false),
        Attribute::Private(false),
        Attribute::Value(b"x".to_vec()),
    ]));
    ensure(
        c == "CKR_OK",
        format!("session object in a R/O session: {c}"),
    )?;
    Ok(String::new())
}

/// An object created by another process (pkcs11-tool) while this session is open is found.
fn cross_process(env: &Env) -> Check {
    let s = env.user()?;
    let before = setup(
        "C_FindObjects",
        s.find_objects(&[Attribute::Label(b"from-elsewhere".to_vec())]),
    )?;
    ensure(before.is_empty(), "object exists before it was created")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("payload");
    std::fs::write(&file, b"written by another process").map_err(|e| e.to_string())?;
    let out = std::process::Command::new("pkcs11-tool")
        .args([
            "--module",
            &env.module,
            "--token-label",
            TOKEN,
            "--login",
            "--pin",
            &user_pin(),
        ])
        .args(["--write-object"])
        .arg(&file)
        .args(["--type", "data", "--label", "from-elsewhere"])
        .output()
        .map_err(|e| format!("cannot run pkcs11-tool: {e}"))?;
    ensure(
        out.status.success(),
        format!(
            "pkcs11-tool --write-object: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    )?;
    let after = setup(
        "C_FindObjects",
        s.find_objects(&[Attribute::Label(b"from-elsewhere".to_vec())]),
    )?;
    ensure(
        after.len() == 1,
        format!(
            "found {} objects after another process wrote one",
            after.len()
        ),
    )?;
    let first = *after.first().ok_or("no object found")?;
    let v = get_bytes(&s, first, cryptoki::object::AttributeType::Value)?;
    ensure(v == b"written by another process", "value differs")?;
    Ok(String::new())
}

/// Session states follow logins: RW public, RW user, back to RW public after logout.
fn session_states(env: &Env) -> Check {
    use cryptoki::session::SessionState;
    let s = env.rw()?;
    let st = setup("C_GetSessionInfo", s.get_session_info())?.session_state();
    ensure(
        st == SessionState::RwPublic,
        format!("fresh RW session: {st:?}"),
    )?;
    setup("C_Login", s.login(UserType::User, Some(&pin())))?;
    let r = env.ro()?;
    let st = setup("C_GetSessionInfo", r.get_session_info())?.session_state();
    ensure(
        st == SessionState::RoUser,
        format!("RO session after login: {st:?}"),
    )?;
    let st = setup("C_GetSessionInfo", s.get_session_info())?.session_state();
    ensure(
        st == SessionState::RwUser,
        format!("RW session after login: {st:?}"),
    )?;
    setup("C_Logout", s.logout())?;
    let st = setup("C_GetSessionInfo", r.get_session_info())?.session_state();
    ensure(
        st == SessionState::RoPublic,
        format!("RO session after logout: {st:?}"),
    )?;
    Ok(String::new())
}

/// Searches by class, label, id and key type find exactly what they should.
fn find_by_template(env: &Env) -> Check {
    let s = env.user()?;
    let a = gen_aes(&s, &[Attribute::Id(vec![1])])?;
    let d = setup("C_CreateObject", data_object(&s, &[]))?;
    let (pubk, privk) = gen_ec(&s, &[Attribute::Id(vec![3])])?;
    let by = |t: &[Attribute]| setup("C_FindObjects", s.find_objects(t));
    ensure(
        by(&[Attribute::Class(ObjectClass::SECRET_KEY)])? == vec![a],
        "by class secret key",
    )?;
    ensure(
        by(&[Attribute::Class(ObjectClass::DATA)])? == vec![d],
        "by class data",
    )?;
    ensure(
        by(&[
            Attribute::Id(vec![3]),
            Attribute::Class(ObjectClass::PRIVATE_KEY),
        ])? == vec![privk],
        "by id + class",
    )?;
    ensure(
        by(&[
            Attribute::KeyType(KeyType::EC),
            Attribute::Class(ObjectClass::PUBLIC_KEY),
        ])? == vec![pubk],
        "by key type",
    )?;
    ensure(
        by(&[Attribute::Label(b"no-such".to_vec())])?.is_empty(),
        "by absent label",
    )?;
    Ok(String::new())
}

/// An RSA-2048 signature is 256 bytes (the client asks for the length first, then fetches).
fn rsa_signature_length(env: &Env) -> Check {
    let s = env.user()?;
    let (_public, private) = gen_rsa(&s, &[])?;
    let sig = setup("C_Sign", s.sign(&Mechanism::Sha256RsaPkcs, private, b"abc"))?;
    ensure(
        sig.len() == 256,
        format!("RSA-2048 signature of {} bytes", sig.len()),
    )?;
    Ok(String::new())
}

/// A MAC mechanism without parameters.
fn plain(ty: MechanismType) -> Mechanism<'static> {
    Mechanism::VendorDefined(VendorDefinedMechanism::new::<()>(ty, None))
}

/// HMAC over a known generic secret equals `openssl dgst -hmac`; the token verifies it.
fn hmac(env: &Env, ty: MechanismType, md: &str) -> Check {
    let s = env.user()?;
    // 64 bytes: at least the output size of every HMAC (some modules refuse shorter keys).
    let kbytes: Vec<u8> = (0u8..64).collect();
    let key = setup(
        "C_CreateObject",
        s.create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::GENERIC_SECRET),
            Attribute::Token(true),
            Attribute::Sign(true),
            Attribute::Verify(true),
            Attribute::Value(kbytes.clone()),
        ]),
    )?;
    let data: Vec<u8> = (0..300u32).map(|i| (i % 199) as u8).collect();
    let mac = setup("C_Sign", s.sign(&plain(ty), key, &data))?;
    let expect = openssl(
        &[
            "dgst",
            &format!("-{md}"),
            "-mac",
            "HMAC",
            "-macopt",
            &format!("hexkey:{}", hex(&kbytes)),
            "-binary",
        ],
        &data,
    )?;
    ensure(mac == expect, format!("HMAC-{md} differs from openssl's"))?;
    setup("C_Verify", s.verify(&plain(ty), key, &data, &mac))?;
    Ok(String::new())
}

/// AES-CMAC over a known key equals `openssl mac CMAC`.
fn aes_cmac(env: &Env) -> Check {
    let s = env.user()?;
    let kbytes: Vec<u8> = (0u8..16).map(|i| i.wrapping_mul(5)).collect();
    let key = create_aes(
        &s,
        &kbytes,
        &[Attribute::Sign(true), Attribute::Verify(true)],
    )
    .map_err(|e| format!("set-up C_CreateObject: {}", name(&e)))?;
    let data: Vec<u8> = (0..77u8).collect();
    let mac = setup(
        "C_Sign",
        s.sign(&plain(MechanismType::AES_CMAC), key, &data),
    )?;
    let out = openssl(
        &[
            "mac",
            "-cipher",
            "AES-128-CBC",
            "-macopt",
            &format!("hexkey:{}", hex(&kbytes)),
            "CMAC",
        ],
        &data,
    )?;
    let text = String::from_utf8_lossy(&out).trim().to_lowercase();
    ensure(
        text == hex(&mac),
        format!("AES-CMAC: token {}, openssl {text}", hex(&mac)),
    )?;
    Ok(String::new())
}

/// Triple DES (legacy): a DES3 key the token generates has odd parity, and DES3-CBC-PAD under
/// it equals openssl's des-ede3-cbc both ways.
fn des3_cbc_pad(env: &Env) -> Check {
    let s = env.user()?;
    let key = setup(
        "C_GenerateKey",
        s.generate_key(
            &Mechanism::Des3KeyGen,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::DES3),
                Attribute::Token(false),
                Attribute::Encrypt(true),
                Attribute::Decrypt(true),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
            ],
        ),
    )?;
    let value = get_bytes(&s, key, cryptoki::object::AttributeType::Value)?;
    ensure(value.len() == 24, "a DES3 key is not 24 bytes")?;
    ensure(
        value.iter().all(|b| b.count_ones() % 2 == 1),
        "a generated DES3 key has a byte of even parity",
    )?;
    let iv = [0x3au8; 8];
    let data: Vec<u8> = (0..77u8).collect();
    let ct = setup(
        "C_Encrypt",
        s.encrypt(&Mechanism::Des3CbcPad(iv), key, &data),
    )?;
    let expect = openssl(
        &["enc", "-des-ede3-cbc", "-K", &hex(&value), "-iv", &hex(&iv)],
        &data,
    )?;
    ensure(
        ct == expect,
        "DES3-CBC-PAD differs from openssl's des-ede3-cbc",
    )?;
    let back = setup(
        "C_Decrypt",
        s.decrypt(&Mechanism::Des3CbcPad(iv), key, &expect),
    )?;
    ensure(back == data, "DES3-CBC-PAD decryption differs")?;
    Ok(String::new())
}
