//! The module side: one process per module (so that each gets its own environment), driven over
//! stdin/stdout by the orchestrator. `ferrohsm-bench --worker MODULE OBJECTS` initializes the
//! token, creates the data objects for the find workload, then answers `run WORKLOAD MILLIS`
//! lines with `BENCH ok OPS SECONDS` or `BENCH na REASON`, until `quit`.
//!
//! `ferrohsm-bench --side-worker WORKLOAD MODULE MILLIS` measures `C_Initialize` + `C_Finalize`,
//! or login + logout, in a process of their own, or is one of the N processes of a "sign, N
//! processes" row (it says `ready` once logged in with a key, and signs after `go`).

use std::collections::HashMap;
use std::io::BufRead;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

/// Prefix of every answer line (anything else on stdout is the module talking).
pub(crate) const ANSWER: &str = "BENCH ";
/// The token's label.
const TOKEN: &str = "bench";
/// SO PIN.
const SO_PIN: &str = "12345678";
/// User PIN.
const USER_PIN: &str = "123456";

/// DER OIDs of the curves.
const P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
const P521: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x23];

/// A workload: a name and, in MB/s rows, the bytes processed per operation.
pub(crate) struct Workload {
    /// Row name.
    pub(crate) name: &'static str,
    /// Bytes per operation for MB/s rows; 0 for ops/s rows.
    pub(crate) bytes: usize,
}

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// Every workload, in table order.
pub(crate) const WORKLOADS: &[Workload] = &[
    w("RSA-2048 sign PKCS#1 SHA-256", 0),
    w("RSA-2048 sign PSS SHA-256", 0),
    w("RSA-3072 sign PKCS#1 SHA-256", 0),
    w("RSA-3072 sign PSS SHA-256", 0),
    w("RSA-2048 verify PKCS#1 SHA-256", 0),
    w("RSA-2048 decrypt OAEP SHA-1", 0),
    w("ECDSA P-256 sign", 0),
    w("ECDSA P-384 sign", 0),
    w("ECDSA P-521 sign", 0),
    w("ECDSA P-256 verify", 0),
    w("ECDSA P-384 verify", 0),
    w("ECDSA P-521 verify", 0),
    w("ECDH P-256 derive", 0),
    w("AES-256-GCM encrypt 1 KiB", 0),
    w("AES-256-GCM encrypt 1 KiB, session key", 0),
    w("ECDSA P-256 sign, session key", 0),
    w("RSA-2048 sign, context login each (always-authenticate)", 0),
    w("ECDSA P-256 verify beside a login + logout loop", 0),
    w("AES-256-GCM encrypt 1 MiB (MB/s)", MIB),
    w("AES-256-CBC-PAD encrypt 1 MiB (MB/s)", MIB),
    w("SHA-256 digest 1 MiB (MB/s)", MIB),
    w("HMAC-SHA256 sign 1 KiB", 0),
    w("AES key wrap (AES-256 under AES-256)", 0),
    w("keygen RSA-2048 session", 0),
    w("keygen EC P-256 session", 0),
    w("keygen AES-256 session", 0),
    w("keygen AES-256 token (persistent)", 0),
    w("keygen AES-256 token (persistent), 4 threads", 0),
    w("find 1 label among N token objects", 0),
    w("open + close session", 0),
    w("round trip (C_GetSessionInfo)", 0),
    w("login + logout", 0),
    w("C_Initialize + first find + C_Finalize (N objects)", 0),
    w("ECDSA P-256 sign, 1 thread", 0),
    w("ECDSA P-256 sign, 2 threads", 0),
    w("ECDSA P-256 sign, 4 threads", 0),
    w("ECDSA P-256 sign, 8 threads", 0),
    w("ECDSA P-256 sign, 4 processes", 0),
    w("ECDSA P-256 sign, 8 processes", 0),
    w("RSA-2048 sign, 1 thread", 0),
    w("RSA-2048 sign, 4 threads", 0),
    w("RSA-2048 sign, 8 threads", 0),
    w("RSA-2048 sign, 4 processes", 0),
    w("RSA-2048 sign, 8 processes", 0),
];

const fn w(name: &'static str, bytes: usize) -> Workload {
    Workload { name, bytes }
}

/// Workloads measured by a separate process (`--side-worker`).
pub(crate) const INIT_WORKLOAD: &str = "C_Initialize + first find + C_Finalize (N objects)";
pub(crate) const LOGIN_WORKLOAD: &str = "login + logout";
pub(crate) const BESIDE_LOGINS_WORKLOAD: &str = "ECDSA P-256 verify beside a login + logout loop";

/// The processes a "…, N processes" workload runs in (each a `--side-worker`), if it is one.
pub(crate) fn processes(workload: &str) -> Option<usize> {
    workload
        .strip_suffix(" processes")?
        .rsplit(", ")
        .next()?
        .parse()
        .ok()
}

/// `CKR_*`-ish text of an error.
fn err(e: CkError) -> String {
    format!("{e}")
}

fn pin(p: &str) -> AuthPin {
    AuthPin::from(p.to_owned())
}

fn say(line: &str) {
    println!("{ANSWER}{line}");
}

/// Loads and initializes the module.
fn load(module: &str) -> Result<Pkcs11, String> {
    let p11 = Pkcs11::new(module).map_err(|e| format!("cannot load {module}: {e}"))?;
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .map_err(|e| format!("C_Initialize: {}", err(e)))?;
    Ok(p11)
}

/// Entry point of `--side-worker WORKLOAD MODULE MILLIS`: the workloads that cannot run in the
/// main worker (`C_Initialize` while it holds the module initialized; login, which is per
/// process and whose logout would invalidate its private objects' handles in some modules).
pub(crate) fn side_worker_main(args: &[String]) -> ExitCode {
    let (Some(what), Some(rest)) = (args.first(), args.get(1..)) else {
        say("na side-worker: missing arguments");
        return ExitCode::SUCCESS;
    };
    if what == LOGIN_WORKLOAD {
        return login_worker(rest);
    }
    if what == BESIDE_LOGINS_WORKLOAD {
        return beside_logins_worker(rest);
    }
    if processes(what).is_some() {
        return sign_process(what, rest);
    }
    init_worker(rest)
}

/// A side worker's run: `MODULE MILLIS` from `args`, a session of the bench token given to
/// `body` with the time limit, and its answer said.
fn side_session(
    what: &str,
    args: &[String],
    body: impl FnOnce(&Pkcs11, Slot, &Session, Duration) -> Result<(u64, f64), String>,
) -> ExitCode {
    let (Some(module), Some(ms)) = (args.first(), args.get(1)) else {
        say(&format!("na {what}: missing arguments"));
        return ExitCode::SUCCESS;
    };
    let limit = Duration::from_millis(ms.parse().unwrap_or(500));
    let r = load(module).and_then(|p11| {
        let slot = token_slot(&p11)?;
        let s = p11
            .open_rw_session(slot)
            .map_err(|e| format!("C_OpenSession: {}", err(e)))?;
        body(&p11, slot, &s, limit)
    });
    match r {
        Ok((ops, secs)) => say(&format!("ok {ops} {secs}")),
        Err(e) => say(&format!("na {e}")),
    }
    ExitCode::SUCCESS
}

/// `login + logout` in a loop, in a process of its own.
fn login_worker(args: &[String]) -> ExitCode {
    side_session("login-worker", args, |_, _, s, limit| {
        let pin = pin(USER_PIN);
        timed(limit, || {
            s.login(UserType::User, Some(&pin))
                .map_err(|e| format!("C_Login: {}", err(e)))?;
            s.logout().map_err(|e| format!("C_Logout: {}", err(e)))
        })
    })
}

/// One process of a "sign, N processes" workload: logs in, makes a session key pair
/// (untimed), says `ready`, waits for `go` on stdin (so that every process signs at the same
/// time), then signs in a loop.
fn sign_process(what: &str, args: &[String]) -> ExitCode {
    side_session("sign-process", args, |_, _, s, limit| {
        s.login(UserType::User, Some(&pin(USER_PIN)))
            .map_err(|e| format!("C_Login: {}", err(e)))?;
        let key = if what.starts_with("RSA") {
            "rsa2048"
        } else {
            "p256"
        };
        let (mech, public, private) = pair_templates(key, false)?;
        let (_, private) = s
            .generate_key_pair(&mech, &public, &private)
            .map_err(|e| format!("C_GenerateKeyPair: {}", err(e)))?;
        let (mech, data) = thread_sign(key);
        say("ready");
        let mut go = String::new();
        std::io::stdin()
            .read_line(&mut go)
            .map_err(|e| e.to_string())?;
        timed(limit, || {
            s.sign(&mech, private, data)
                .map(drop)
                .map_err(|e| format!("C_Sign: {}", err(e)))
        })
    })
}

/// The mechanism and input of the thread and process signing rows for `key`.
fn thread_sign(key: &str) -> (Mechanism<'static>, &'static [u8]) {
    if key == "p256" {
        (Mechanism::Ecdsa, &[0x5a; 32])
    } else {
        (Mechanism::Sha256RsaPkcs, &[0x42; 64])
    }
}

/// ECDSA P-256 verifications (a public session key: no login needed) while another session
/// of this application logs in and out without pause, in a process of its own: whether a login
/// holds up the application's other threads.
fn beside_logins_worker(args: &[String]) -> ExitCode {
    side_session("beside-logins-worker", args, |p11, slot, s, limit| {
        let pin = pin(USER_PIN);
        s.login(UserType::User, Some(&pin))
            .map_err(|e| format!("C_Login: {}", err(e)))?;
        let (public, private) = s
            .generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &[
                    Attribute::Token(false),
                    Attribute::Private(false),
                    Attribute::EcParams(P256.to_vec()),
                    Attribute::Verify(true),
                ],
                &[Attribute::Token(false), Attribute::Sign(true)],
            )
            .map_err(|e| format!("C_GenerateKeyPair: {}", err(e)))?;
        let digest = [0x5au8; 32];
        let sig = s
            .sign(&Mechanism::Ecdsa, private, &digest)
            .map_err(|e| format!("C_Sign: {}", err(e)))?;
        s.logout().map_err(|e| format!("C_Logout: {}", err(e)))?;
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let logins = scope.spawn(|| -> Result<(), String> {
                let other = p11
                    .open_rw_session(slot)
                    .map_err(|e| format!("C_OpenSession: {}", err(e)))?;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    other
                        .login(UserType::User, Some(&pin))
                        .map_err(|e| format!("C_Login: {}", err(e)))?;
                    other
                        .logout()
                        .map_err(|e| format!("C_Logout: {}", err(e)))?;
                }
                Ok(())
            });
            let r = timed(limit, || {
                s.verify(&Mechanism::Ecdsa, public, &digest, &sig)
                    .map_err(|e| format!("C_Verify: {}", err(e)))
            });
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let l = logins
                .join()
                .unwrap_or_else(|_| Err("login thread panicked".to_owned()));
            r.and_then(|r| l.map(|()| r))
        })
    })
}

/// The slot of the bench token.
fn token_slot(p11: &Pkcs11) -> Result<Slot, String> {
    p11.get_slots_with_token()
        .map_err(|e| format!("C_GetSlotList: {}", err(e)))?
        .into_iter()
        .find(|s| {
            p11.get_token_info(*s)
                .map(|t| t.label().trim_end() == TOKEN)
                .unwrap_or(false)
        })
        .ok_or_else(|| "no bench token".to_owned())
}

/// `C_Initialize` + `C_Finalize` in a loop.
fn init_worker(args: &[String]) -> ExitCode {
    let (Some(module), Some(ms)) = (args.first(), args.get(1)) else {
        say("na init-worker: missing arguments");
        return ExitCode::SUCCESS;
    };
    let ms: u64 = ms.parse().unwrap_or(500);
    // Kept loaded throughout, so that the loop measures initialization, not dlopen.
    let keep = match Pkcs11::new(module) {
        Ok(p) => p,
        Err(e) => {
            say(&format!("na cannot load {module}: {e}"));
            return ExitCode::SUCCESS;
        }
    };
    let limit = Duration::from_millis(ms);
    let start = Instant::now();
    let mut ops = 0u64;
    let before = resident_kib();
    while ops == 0 || start.elapsed() < limit {
        let p = keep.clone();
        if let Err(e) = p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            say(&format!("na C_Initialize: {}", err(e)));
            return ExitCode::SUCCESS;
        }
        // Touch the token, as an application would, so that lazy loaders do their work: the
        // slot list, then one search by label among the token's objects.
        let found = token_slot(&p).and_then(|slot| {
            let s = p
                .open_ro_session(slot)
                .map_err(|e| format!("C_OpenSession: {}", err(e)))?;
            s.find_objects(&[Attribute::Label(b"bench-object-0".to_vec())])
                .map_err(|e| format!("C_FindObjects: {}", err(e)))
        });
        if let Err(e) = found {
            say(&format!("na {e}"));
            return ExitCode::SUCCESS;
        }
        if ops == 0 {
            if let (Some(a), Some(b)) = (before, resident_kib()) {
                eprintln!(
                    "{module}: resident memory {a} KiB before the first C_Initialize, {b} KiB after"
                );
            }
        }
        if let Err(e) = p.finalize() {
            say(&format!("na C_Finalize: {}", err(e)));
            return ExitCode::SUCCESS;
        }
        ops += 1;
    }
    say(&format!("ok {ops} {}", start.elapsed().as_secs_f64()));
    ExitCode::SUCCESS
}

/// This process's resident memory (`VmRSS`), in KiB.
fn resident_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The worker's state: the module, the token's slot, a logged-in session and keys made once.
struct Bench {
    p11: Pkcs11,
    slot: Slot,
    s: Session,
    keys: HashMap<&'static str, (ObjectHandle, ObjectHandle)>,
    /// Precomputed inputs (signatures to verify, ciphertexts to decrypt).
    blobs: HashMap<&'static str, Vec<u8>>,
    objects: usize,
}

/// Entry point of `--worker MODULE OBJECTS`.
pub(crate) fn worker_main(args: &[String]) -> ExitCode {
    let (Some(module), Some(objects)) = (args.first(), args.get(1)) else {
        say("fatal worker: missing arguments");
        return ExitCode::SUCCESS;
    };
    let objects: usize = objects.parse().unwrap_or(0);
    let mut b = match Bench::setup(module, objects) {
        Ok(b) => b,
        Err(e) => {
            say(&format!("fatal {e}"));
            return ExitCode::SUCCESS;
        }
    };
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let mut parts = line.splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("run"), Some(ms), Some(name)) => {
                let ms: u64 = ms.parse().unwrap_or(500);
                match b.run(name, Duration::from_millis(ms)) {
                    Ok((ops, secs)) => say(&format!("ok {ops} {secs}")),
                    Err(e) => say(&format!("na {}", e.replace('\n', " "))),
                }
            }
            (Some("quit"), _, _) => break,
            _ => say(&format!("na bad command {line}")),
        }
    }
    ExitCode::SUCCESS
}

/// Runs `op` until `limit` has passed (at least once); returns (operations, seconds).
fn timed(
    limit: Duration,
    mut op: impl FnMut() -> Result<(), String>,
) -> Result<(u64, f64), String> {
    let start = Instant::now();
    let mut ops = 0u64;
    while ops == 0 || start.elapsed() < limit {
        op()?;
        ops += 1;
    }
    Ok((ops, start.elapsed().as_secs_f64()))
}

fn digest_len(name: &str) -> usize {
    if name.contains("P-384") {
        48
    } else if name.contains("P-521") {
        64
    } else {
        32
    }
}

fn pss() -> PkcsPssParams {
    PkcsPssParams {
        hash_alg: MechanismType::SHA256,
        mgf: PkcsMgfType::MGF1_SHA256,
        s_len: 32.into(),
    }
}

fn oaep() -> PkcsOaepParams<'static> {
    PkcsOaepParams::new(
        MechanismType::SHA1,
        PkcsMgfType::MGF1_SHA1,
        PkcsOaepSource::empty(),
    )
}

/// The raw point inside a DER `CKA_EC_POINT` (an OCTET STRING), for ECDH public data; the
/// value itself if it is not one.
fn raw_point(der: &[u8]) -> Vec<u8> {
    use der::Decode as _;
    der::asn1::OctetStringRef::from_der(der)
        .map_or(der, |o| o.as_bytes())
        .to_vec()
}

impl Bench {
    fn setup(module: &str, objects: usize) -> Result<Self, String> {
        let p11 = load(module)?;
        let slot = *p11
            .get_all_slots()
            .map_err(|e| format!("C_GetSlotList: {}", err(e)))?
            .first()
            .ok_or("no slot")?;
        p11.init_token(slot, &pin(SO_PIN), TOKEN)
            .map_err(|e| format!("C_InitToken: {}", err(e)))?;
        // Some modules (SoftHSM) move the initialized token to a new slot.
        let slot = token_slot(&p11)?;
        {
            let so = p11
                .open_rw_session(slot)
                .map_err(|e| format!("C_OpenSession: {}", err(e)))?;
            so.login(UserType::So, Some(&pin(SO_PIN)))
                .map_err(|e| format!("C_Login(SO): {}", err(e)))?;
            so.init_pin(&pin(USER_PIN))
                .map_err(|e| format!("C_InitPIN: {}", err(e)))?;
            so.logout().map_err(|e| format!("C_Logout: {}", err(e)))?;
        }
        let s = p11
            .open_rw_session(slot)
            .map_err(|e| format!("C_OpenSession: {}", err(e)))?;
        s.login(UserType::User, Some(&pin(USER_PIN)))
            .map_err(|e| format!("C_Login: {}", err(e)))?;
        let start = Instant::now();
        for i in 0..objects {
            s.create_object(&[
                Attribute::Class(ObjectClass::DATA),
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Label(format!("bench-object-{i}").into_bytes()),
                Attribute::Value(b"payload".to_vec()),
            ])
            .map_err(|e| format!("C_CreateObject #{i}: {}", err(e)))?;
        }
        say(&format!(
            "created {objects} {}",
            start.elapsed().as_secs_f64()
        ));
        Ok(Self {
            p11,
            slot,
            s,
            keys: HashMap::new(),
            blobs: HashMap::new(),
            objects,
        })
    }

    /// A token key pair for `name` (made on first use).
    fn pair(&mut self, name: &'static str) -> Result<(ObjectHandle, ObjectHandle), String> {
        if let Some(k) = self.keys.get(name) {
            return Ok(*k);
        }
        let label = Attribute::Label(name.as_bytes().to_vec());
        let (mech, public, private) = match name {
            "rsa2048" | "rsa3072" | "p256" | "p384" | "p521" => pair_templates(name, true)?,
            "p256-session" => pair_templates("p256", false)?,
            "rsa2048-always" => {
                let (mech, public, mut private) = pair_templates("rsa2048", true)?;
                private.push(Attribute::AlwaysAuthenticate(true));
                (mech, public, private)
            }
            "aes" | "wrapkey" | "wrapped" | "aes-session" => {
                let k = self
                    .s
                    .generate_key(
                        &Mechanism::AesKeyGen,
                        &[
                            Attribute::Token(name != "aes-session"),
                            Attribute::ValueLen(32.into()),
                            Attribute::Encrypt(true),
                            Attribute::Decrypt(true),
                            Attribute::Wrap(true),
                            Attribute::Unwrap(true),
                            Attribute::Extractable(true),
                            Attribute::Sensitive(name != "wrapped"),
                            label,
                        ],
                    )
                    .map_err(|e| format!("C_GenerateKey: {}", err(e)))?;
                self.keys.insert(name, (k, k));
                return Ok((k, k));
            }
            "hmac" => {
                let k = self
                    .s
                    .create_object(&[
                        Attribute::Class(ObjectClass::SECRET_KEY),
                        Attribute::KeyType(KeyType::GENERIC_SECRET),
                        Attribute::Token(true),
                        Attribute::Sign(true),
                        Attribute::Verify(true),
                        Attribute::Value((0u8..64).collect()),
                        label,
                    ])
                    .map_err(|e| format!("C_CreateObject: {}", err(e)))?;
                self.keys.insert(name, (k, k));
                return Ok((k, k));
            }
            other => return Err(format!("no key {other}")),
        };
        let k = self
            .s
            .generate_key_pair(&mech, &public, &private)
            .map_err(|e| format!("C_GenerateKeyPair: {}", err(e)))?;
        self.keys.insert(name, k);
        Ok(k)
    }

    fn sign_loop(
        &mut self,
        key: &'static str,
        mech: &Mechanism,
        data: &[u8],
        limit: Duration,
    ) -> Result<(u64, f64), String> {
        let (_, private) = self.pair(key)?;
        let s = &self.s;
        timed(limit, || {
            s.sign(mech, private, data)
                .map(drop)
                .map_err(|e| format!("C_Sign: {}", err(e)))
        })
    }

    fn verify_loop(
        &mut self,
        key: &'static str,
        mech: &Mechanism,
        data: &[u8],
        limit: Duration,
    ) -> Result<(u64, f64), String> {
        let (public, private) = self.pair(key)?;
        let sig = match self.blobs.get(key) {
            Some(s) => s.clone(),
            None => {
                let sig = self
                    .s
                    .sign(mech, private, data)
                    .map_err(|e| format!("C_Sign: {}", err(e)))?;
                self.blobs.insert(key, sig.clone());
                sig
            }
        };
        let s = &self.s;
        timed(limit, || {
            s.verify(mech, public, data, &sig)
                .map_err(|e| format!("C_Verify: {}", err(e)))
        })
    }

    /// Runs `op` (which creates objects) for `limit`, then destroys what it made (untimed).
    fn keygen_loop(
        &self,
        limit: Duration,
        mut op: impl FnMut(&Session) -> cryptoki::error::Result<Vec<ObjectHandle>>,
    ) -> Result<(u64, f64), String> {
        let mut made = Vec::new();
        let r = timed(limit, || {
            made.extend(op(&self.s).map_err(|e| format!("keygen: {}", err(e)))?);
            Ok(())
        });
        for o in made {
            let _ = self.s.destroy_object(o);
        }
        r
    }

    /// `op` in a loop on `n` threads, each with its session, for `limit`; what the ops made
    /// is destroyed afterwards.
    fn threads<F>(&self, n: usize, limit: Duration, op: F) -> Result<(u64, f64), String>
    where
        F: Fn(&Session) -> Result<Vec<ObjectHandle>, String> + Sync,
    {
        let start = Instant::now();
        let op = &op;
        let results: Vec<Result<u64, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    let p11 = self.p11.clone();
                    let slot = self.slot;
                    scope.spawn(move || {
                        let s = p11
                            .open_rw_session(slot)
                            .map_err(|e| format!("C_OpenSession: {}", err(e)))?;
                        let mut made = Vec::new();
                        let r = timed(limit, || {
                            made.extend(op(&s)?);
                            Ok(())
                        });
                        for o in made {
                            let _ = s.destroy_object(o);
                        }
                        r.map(|(ops, _)| ops)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err("thread panicked".to_owned()))
                })
                .collect()
        });
        let secs = start.elapsed().as_secs_f64();
        let mut total = 0;
        for r in results {
            total += r?;
        }
        Ok((total, secs))
    }

    /// Signatures with token key `key` (`p256`: ECDSA on a digest; `rsa2048`: PKCS#1 v1.5
    /// SHA-256) on `n` threads.
    fn sign_threads(
        &mut self,
        key: &'static str,
        n: usize,
        limit: Duration,
    ) -> Result<(u64, f64), String> {
        let (_, private) = self.pair(key)?;
        self.threads(n, limit, |s| {
            // A mechanism is not `Sync` (it may hold pointers): one per call.
            let (mech, data) = thread_sign(key);
            s.sign(&mech, private, data)
                .map(|_| Vec::new())
                .map_err(|e| format!("C_Sign: {}", err(e)))
        })
    }

    fn run(&mut self, name: &str, limit: Duration) -> Result<(u64, f64), String> {
        let msg = [0x42u8; 64];
        let kib = vec![0x17u8; KIB];
        let mib = vec![0x17u8; MIB];
        match name {
            "RSA-2048 sign PKCS#1 SHA-256" => {
                self.sign_loop("rsa2048", &Mechanism::Sha256RsaPkcs, &msg, limit)
            }
            "RSA-2048 sign PSS SHA-256" => {
                self.sign_loop("rsa2048", &Mechanism::Sha256RsaPkcsPss(pss()), &msg, limit)
            }
            "RSA-3072 sign PKCS#1 SHA-256" => {
                self.sign_loop("rsa3072", &Mechanism::Sha256RsaPkcs, &msg, limit)
            }
            "RSA-3072 sign PSS SHA-256" => {
                self.sign_loop("rsa3072", &Mechanism::Sha256RsaPkcsPss(pss()), &msg, limit)
            }
            "RSA-2048 verify PKCS#1 SHA-256" => {
                self.verify_loop("rsa2048", &Mechanism::Sha256RsaPkcs, &msg, limit)
            }
            "RSA-2048 decrypt OAEP SHA-1" => {
                let (public, private) = self.pair("rsa2048")?;
                let mech = Mechanism::RsaPkcsOaep(oaep());
                let ct = self
                    .s
                    .encrypt(&mech, public, &[7u8; 32])
                    .map_err(|e| format!("C_Encrypt: {}", err(e)))?;
                let s = &self.s;
                timed(limit, || {
                    s.decrypt(&mech, private, &ct)
                        .map(drop)
                        .map_err(|e| format!("C_Decrypt: {}", err(e)))
                })
            }
            "ECDSA P-256 sign" | "ECDSA P-384 sign" | "ECDSA P-521 sign" => {
                let key = curve_key(name);
                let digest = vec![0x5au8; digest_len(name)];
                self.sign_loop(key, &Mechanism::Ecdsa, &digest, limit)
            }
            "ECDSA P-256 sign, session key" => {
                self.sign_loop("p256-session", &Mechanism::Ecdsa, &[0x5a; 32], limit)
            }
            "RSA-2048 sign, context login each (always-authenticate)" => {
                let (_, private) = self.pair("rsa2048-always")?;
                let (s, pin) = (&self.s, pin(USER_PIN));
                timed(limit, || {
                    s.sign_init(&Mechanism::Sha256RsaPkcs, private)
                        .map_err(|e| format!("C_SignInit: {}", err(e)))?;
                    s.login(UserType::ContextSpecific, Some(&pin))
                        .map_err(|e| format!("C_Login(CONTEXT_SPECIFIC): {}", err(e)))?;
                    s.sign_update(&msg)
                        .map_err(|e| format!("C_SignUpdate: {}", err(e)))?;
                    s.sign_final()
                        .map(drop)
                        .map_err(|e| format!("C_SignFinal: {}", err(e)))
                })
            }
            "ECDSA P-256 verify" | "ECDSA P-384 verify" | "ECDSA P-521 verify" => {
                let key = curve_key(name);
                let digest = vec![0x5au8; digest_len(name)];
                self.verify_loop(key, &Mechanism::Ecdsa, &digest, limit)
            }
            "ECDH P-256 derive" => {
                let (public, private) = self.pair("p256")?;
                let point = self
                    .s
                    .get_attributes(public, &[AttributeType::EcPoint])
                    .map_err(|e| format!("C_GetAttributeValue: {}", err(e)))?;
                let Some(Attribute::EcPoint(der)) = point.into_iter().next() else {
                    return Err("no CKA_EC_POINT".to_owned());
                };
                let raw = raw_point(&der);
                let template = [
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::GENERIC_SECRET),
                    Attribute::ValueLen(32.into()),
                    Attribute::Token(false),
                ];
                self.keygen_loop(limit, |s| {
                    let params = Ecdh1DeriveParams::new(EcKdf::null(), &raw);
                    s.derive_key(&Mechanism::Ecdh1Derive(params), private, &template)
                        .map(|k| vec![k])
                })
            }
            "AES-256-GCM encrypt 1 KiB"
            | "AES-256-GCM encrypt 1 MiB (MB/s)"
            | "AES-256-GCM encrypt 1 KiB, session key" => {
                let (k, _) = self.pair(if name.contains("session") {
                    "aes-session"
                } else {
                    "aes"
                })?;
                let data = if name.contains("KiB") { &kib } else { &mib };
                let s = &self.s;
                timed(limit, || {
                    let mut iv = [9u8; 12];
                    let params = GcmParams::new(&mut iv, &[], 128.into()).map_err(err)?;
                    s.encrypt(&Mechanism::AesGcm(params), k, data)
                        .map(drop)
                        .map_err(|e| format!("C_Encrypt: {}", err(e)))
                })
            }
            "AES-256-CBC-PAD encrypt 1 MiB (MB/s)" => {
                let (k, _) = self.pair("aes")?;
                let s = &self.s;
                timed(limit, || {
                    s.encrypt(&Mechanism::AesCbcPad([3u8; 16]), k, &mib)
                        .map(drop)
                        .map_err(|e| format!("C_Encrypt: {}", err(e)))
                })
            }
            "SHA-256 digest 1 MiB (MB/s)" => {
                let s = &self.s;
                timed(limit, || {
                    s.digest(&Mechanism::Sha256, &mib)
                        .map(drop)
                        .map_err(|e| format!("C_Digest: {}", err(e)))
                })
            }
            "HMAC-SHA256 sign 1 KiB" => self.sign_loop("hmac", &Mechanism::Sha256Hmac, &kib, limit),
            "AES key wrap (AES-256 under AES-256)" => {
                let (wrapping, _) = self.pair("wrapkey")?;
                let (wrapped, _) = self.pair("wrapped")?;
                let s = &self.s;
                timed(limit, || {
                    s.wrap_key(&Mechanism::AesKeyWrap, wrapping, wrapped)
                        .map(drop)
                        .map_err(|e| format!("C_WrapKey: {}", err(e)))
                })
            }
            "keygen RSA-2048 session" => self.keygen_loop(limit, |s| {
                s.generate_key_pair(
                    &Mechanism::RsaPkcsKeyPairGen,
                    &[
                        Attribute::Token(false),
                        Attribute::ModulusBits(2048.into()),
                        Attribute::PublicExponent(vec![1, 0, 1]),
                        Attribute::Verify(true),
                    ],
                    &[Attribute::Token(false), Attribute::Sign(true)],
                )
                .map(|(a, b)| vec![a, b])
            }),
            "keygen EC P-256 session" => self.keygen_loop(limit, |s| {
                s.generate_key_pair(
                    &Mechanism::EccKeyPairGen,
                    &[
                        Attribute::Token(false),
                        Attribute::EcParams(P256.to_vec()),
                        Attribute::Verify(true),
                    ],
                    &[Attribute::Token(false), Attribute::Sign(true)],
                )
                .map(|(a, b)| vec![a, b])
            }),
            "keygen AES-256 session" | "keygen AES-256 token (persistent)" => {
                let token = name.contains("token");
                self.keygen_loop(limit, |s| aes_keygen(s, token))
            }
            "keygen AES-256 token (persistent), 4 threads" => self.threads(4, limit, |s| {
                aes_keygen(s, true).map_err(|e| format!("C_GenerateKey: {}", err(e)))
            }),
            "find 1 label among N token objects" => {
                if self.objects == 0 {
                    return Err("no objects".to_owned());
                }
                let label = format!("bench-object-{}", self.objects / 2).into_bytes();
                let s = &self.s;
                timed(limit, || {
                    let found = s
                        .find_objects(&[
                            Attribute::Class(ObjectClass::DATA),
                            Attribute::Label(label.clone()),
                        ])
                        .map_err(|e| format!("C_FindObjects: {}", err(e)))?;
                    if found.len() == 1 {
                        Ok(())
                    } else {
                        Err(format!("found {} objects, expected 1", found.len()))
                    }
                })
            }
            "open + close session" => {
                let (p11, slot) = (&self.p11, self.slot);
                timed(limit, || {
                    p11.open_rw_session(slot)
                        .map(drop)
                        .map_err(|e| format!("C_OpenSession: {}", err(e)))
                })
            }
            "ECDSA P-256 sign, 1 thread" => self.sign_threads("p256", 1, limit),
            "ECDSA P-256 sign, 2 threads" => self.sign_threads("p256", 2, limit),
            "ECDSA P-256 sign, 4 threads" => self.sign_threads("p256", 4, limit),
            "ECDSA P-256 sign, 8 threads" => self.sign_threads("p256", 8, limit),
            "RSA-2048 sign, 1 thread" => self.sign_threads("rsa2048", 1, limit),
            "RSA-2048 sign, 4 threads" => self.sign_threads("rsa2048", 4, limit),
            "RSA-2048 sign, 8 threads" => self.sign_threads("rsa2048", 8, limit),
            "round trip (C_GetSessionInfo)" => {
                let s = &self.s;
                timed(limit, || {
                    s.get_session_info()
                        .map(drop)
                        .map_err(|e| format!("C_GetSessionInfo: {}", err(e)))
                })
            }
            other => Err(format!("no workload {other}")),
        }
    }
}

/// The templates of key pair `name` (`rsa2048`, `rsa3072`, `p256`, `p384`, `p521`), token
/// objects or session objects.
fn pair_templates(
    name: &str,
    token: bool,
) -> Result<(Mechanism<'static>, Vec<Attribute>, Vec<Attribute>), String> {
    let label = Attribute::Label(name.as_bytes().to_vec());
    Ok(match name {
        "rsa2048" | "rsa3072" => {
            let bits: u64 = if name == "rsa2048" { 2048 } else { 3072 };
            (
                Mechanism::RsaPkcsKeyPairGen,
                vec![
                    Attribute::Token(token),
                    Attribute::ModulusBits(bits.into()),
                    Attribute::PublicExponent(vec![1, 0, 1]),
                    Attribute::Verify(true),
                    Attribute::Encrypt(true),
                    label.clone(),
                ],
                vec![
                    Attribute::Token(token),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Sign(true),
                    Attribute::Decrypt(true),
                    label,
                ],
            )
        }
        "p256" | "p384" | "p521" => {
            let oid = match name {
                "p256" => P256,
                "p384" => P384,
                _ => P521,
            };
            (
                Mechanism::EccKeyPairGen,
                vec![
                    Attribute::Token(token),
                    Attribute::EcParams(oid.to_vec()),
                    Attribute::Verify(true),
                    label.clone(),
                ],
                vec![
                    Attribute::Token(token),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Sign(true),
                    Attribute::Derive(true),
                    label,
                ],
            )
        }
        other => return Err(format!("no key pair {other}")),
    })
}

/// An AES-256 key, a token object or not.
fn aes_keygen(s: &Session, token: bool) -> Result<Vec<ObjectHandle>, CkError> {
    s.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Token(token),
            Attribute::ValueLen(32.into()),
            Attribute::Encrypt(true),
        ],
    )
    .map(|k| vec![k])
}

fn curve_key(name: &str) -> &'static str {
    if name.contains("P-384") {
        "p384"
    } else if name.contains("P-521") {
        "p521"
    } else {
        "p256"
    }
}
