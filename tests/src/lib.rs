//! Helpers for end-to-end tests: find the built module, make a fresh home, run real tools.
//!
//! The module under test is `$TEST_PKCS11_MODULE`, else `target/release/libferrohsm_pkcs11.so`,
//! else `target/debug/libferrohsm_pkcs11.so` (build it first: `cargo build --release`).

// Test support prints what it runs, to make failures readable.
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The SO PIN every test token gets.
pub const SO_PIN: &str = "12345678";
/// The user PIN every test token gets.
pub const USER_PIN: &str = "123456";

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// The built module.
pub fn module() -> PathBuf {
    if let Some(p) = std::env::var_os("TEST_PKCS11_MODULE") {
        return PathBuf::from(p);
    }
    for profile in ["release", "debug"] {
        let p = workspace()
            .join("target")
            .join(profile)
            .join("libferrohsm_pkcs11.so");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "libferrohsm_pkcs11.so not built: run `cargo build --release` first (or set TEST_PKCS11_MODULE)"
    );
}

/// The built key storage provider: `$TEST_KSP_MODULE`, else `libferrohsm_ksp.so` next to the
/// PKCS#11 module (both come out of the same `cargo build --release`).
pub fn ksp_module() -> PathBuf {
    if let Some(p) = std::env::var_os("TEST_KSP_MODULE") {
        return PathBuf::from(p);
    }
    let p = module()
        .parent()
        .expect("target dir")
        .join("libferrohsm_ksp.so");
    assert!(
        p.exists(),
        "{} not built: run `cargo build --release` first (or set TEST_KSP_MODULE)",
        p.display()
    );
    p
}

/// The `ferrohsm` binary, next to the module.
pub fn cli() -> PathBuf {
    let m = module();
    let p = m.parent().expect("target dir").join("ferrohsm");
    assert!(
        p.exists(),
        "{} not built: run `cargo build --release` first",
        p.display()
    );
    p
}

/// Whether a program is on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Fails the test loudly when a tool the README's test command installs is missing.
pub fn require(program: &str) {
    assert!(
        have(program),
        "{program} is not installed: the test command (scripts/test.sh) installs it"
    );
}

/// The result of a command, with its output as text.
#[derive(Debug)]
pub struct Run {
    /// Exit code (-1 if killed by a signal).
    pub status: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The raw output.
    pub raw: Output,
}

impl Run {
    /// Panics with the whole output unless the command succeeded.
    pub fn ok(self) -> Self {
        assert_eq!(
            self.status, 0,
            "command failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Stdout and stderr together.
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs a command and captures its output.
pub fn run(cmd: &mut Command) -> Run {
    let raw = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    Run {
        status: raw.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&raw.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&raw.stderr).into_owned(),
        raw,
    }
}

/// A fresh FerroHSM home in a temporary directory, with helpers to drive it.
pub struct Home {
    /// The temporary directory (removed on drop).
    pub dir: tempfile::TempDir,
}

impl Home {
    /// An empty home (one uninitialized slot).
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A home with a token labelled `label`, SO PIN [`SO_PIN`] and user PIN [`USER_PIN`].
    pub fn with_token(label: &str) -> Self {
        Self::with_token_pins(label, SO_PIN, USER_PIN)
    }

    /// A home with a token labelled `label` and these PINs.
    pub fn with_token_pins(label: &str, so_pin: &str, user_pin: &str) -> Self {
        let h = Self::new();
        h.tool(&[
            "--init-token",
            "--slot",
            "0",
            "--label",
            label,
            "--so-pin",
            so_pin,
        ])
        .ok();
        h.tool(&[
            "--slot",
            "0",
            "--init-pin",
            "--login",
            "--so-pin",
            so_pin,
            "--pin",
            user_pin,
        ])
        .ok();
        h
    }

    /// The home directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path inside the home's scratch area.
    pub fn file(&self, name: &str) -> PathBuf {
        let d = self.path().join("scratch");
        std::fs::create_dir_all(&d).expect("scratch dir");
        d.join(name)
    }

    /// A command with this home's environment.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.env("FERROHSM_HOME", self.path())
            .env_remove("FERROHSM_CONF")
            .env_remove("FERROHSM_LOG");
        c
    }

    /// `pkcs11-tool --module <ours> args...`.
    pub fn tool(&self, args: &[&str]) -> Run {
        require("pkcs11-tool");
        let mut c = self.timed("pkcs11-tool");
        c.arg("--module").arg(module()).args(args);
        run(&mut c)
    }

    /// `pkcs11-tool` logged in as the user, on slot 0.
    pub fn user(&self, args: &[&str]) -> Run {
        let mut all = vec!["--slot", "0", "--login", "--pin", USER_PIN];
        all.extend_from_slice(args);
        self.tool(&all)
    }

    /// `ferrohsm args...`.
    pub fn ferrohsm(&self, args: &[&str]) -> Run {
        let mut c = self.command(cli());
        c.args(args);
        run(&mut c)
    }
}

impl Default for Home {
    fn default() -> Self {
        Self::new()
    }
}

/// Seconds an external program may run before `timeout` kills it (every application test runs
/// its programs through [`timed`] or [`Home::timed`], so a hang is a failure, not a stuck CI).
pub const LIMIT_SECS: u32 = 60;

/// `timeout -k 5 LIMIT_SECS program`: a command that cannot hang.
pub fn timed(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("timeout");
    c.arg("-k")
        .arg("5")
        .arg(LIMIT_SECS.to_string())
        .arg(program);
    c
}

impl Home {
    /// [`Home::command`] under `timeout`: this home's environment, bounded in time.
    pub fn timed(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = timed(program);
        c.env("FERROHSM_HOME", self.path())
            .env_remove("FERROHSM_CONF")
            .env_remove("FERROHSM_LOG");
        c
    }

    /// Generates a key pair in the token with pkcs11-tool (`rsa:2048`, `EC:prime256v1`, ...),
    /// with CKA_ID `id` and CKA_LABEL `label` on both halves.
    pub fn keypair(&self, key_type: &str, id: &str, label: &str) {
        self.user(&[
            "--keypairgen",
            "--key-type",
            key_type,
            "--id",
            id,
            "--label",
            label,
        ])
        .ok();
    }

    /// The public key with CKA_ID `id`, read from the token by pkcs11-tool and written as PEM
    /// by plain openssl: the reference every signature made through an application is verified
    /// against.
    ///
    /// RSA keys come from `--read-object --type pubkey`. EC keys are assembled here from the
    /// CKA_EC_PARAMS and CKA_EC_POINT that `--list-objects` prints, because Debian 12's
    /// pkcs11-tool (OpenSC 0.23) cannot export P-384 and P-521 public keys ("cannot create
    /// EVP_PKEY", with SoftHSM as well).
    pub fn public_pem(&self, id: &str) -> PathBuf {
        public_pem_with(
            &|args: &[&str]| {
                let mut all = vec!["--slot", "0"];
                all.extend_from_slice(args);
                self.tool(&all)
            },
            &self.file(&format!("pub-{id}.der")),
            id,
        )
    }
}

/// The public key with CKA_ID `id`, as PEM written next to `der_file`, read by the
/// pkcs11-tool that `tool` runs (any module; `tool` adds the slot or token): see
/// [`Home::public_pem`].
pub fn public_pem_with(tool: &dyn Fn(&[&str]) -> Run, der_file: &Path, id: &str) -> PathBuf {
    let pem = der_file.with_extension("pem");
    // pkcs11-tool lists every public key; keep the one whose ID is `id`.
    let all = tool(&["--list-objects", "--type", "pubkey"]).ok().stdout;
    let mut objects: Vec<String> = Vec::new();
    for line in all.lines() {
        if !line.starts_with(' ') || objects.is_empty() {
            objects.push(String::new());
        }
        if let Some(o) = objects.last_mut() {
            o.push_str(line);
            o.push('\n');
        }
    }
    let listing = objects
        .into_iter()
        .find(|o| o.lines().any(|l| l.trim() == format!("ID:         {id}")))
        .unwrap_or_else(|| panic!("no public key with ID {id}:\n{all}"));
    if listing.contains("Public Key Object; EC ") {
        let field = |name: &str| -> Vec<u8> {
            let line = listing
                .lines()
                .find_map(|l| l.trim().strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {listing}"));
            unhex(line.trim())
        };
        let params = field("EC_PARAMS:");
        let point = field("EC_POINT:");
        // CKA_EC_POINT is a DER OCTET STRING holding the uncompressed point.
        std::fs::write(der_file, ec_spki(&params, &octet_string(&point))).expect("write DER");
    } else {
        tool(&[
            "--read-object",
            "--type",
            "pubkey",
            "--id",
            id,
            "--output-file",
            der_file.to_str().expect("utf-8 path"),
        ])
        .ok();
    }
    // pkcs11-tool writes RSA keys as DER, EdDSA keys as PEM.
    let pem_in = std::fs::read(der_file)
        .expect("public key file")
        .starts_with(b"-----BEGIN");
    openssl(&[
        "pkey",
        "-pubin",
        "-inform",
        if pem_in { "PEM" } else { "DER" },
        "-in",
        der_file.to_str().expect("utf-8 path"),
        "-out",
        pem.to_str().expect("utf-8 path"),
    ])
    .ok();
    pem
}

/// Writes `dir/softhsm2.conf` for a SoftHSMv2 of its own: the file object store in
/// `dir/tokens` (made here), errors only in its log. Point `SOFTHSM2_CONF` at the returned path.
pub fn softhsm_config(dir: &Path) -> PathBuf {
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).expect("SoftHSM token directory");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .expect("softhsm2.conf");
    conf
}

/// A self-signed X.509 certificate (EC P-256, subject `CN=cn`) made by openssl: its DER file
/// `dir/<cn>.der` (the key beside it, `<cn>.key`).
pub fn ec_certificate(dir: &Path, cn: &str) -> PathBuf {
    let key = dir.join(format!("{cn}.key"));
    let cert = dir.join(format!("{cn}.der"));
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        &format!("/CN={cn}"),
        "-days",
        "2",
        "-keyout",
        s(&key),
        "-outform",
        "DER",
        "-out",
        s(&cert),
    ])
    .ok();
    cert
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    base16ct::lower::encode_string(bytes)
}

/// Bytes from hex (either case).
pub fn unhex(s: &str) -> Vec<u8> {
    base16ct::mixed::decode_vec(s).expect("hex")
}

/// `id-ecPublicKey` (RFC 5480).
const EC_PUBLIC_KEY: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// `prime256v1` (P-256).
const PRIME256V1: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// `rsaEncryption` (RFC 8017).
const RSA_ENCRYPTION: der::asn1::ObjectIdentifier =
    der::asn1::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// A SubjectPublicKeyInfo (DER) of algorithm `oid` with `parameters` and key bits `key`.
fn spki(oid: der::asn1::ObjectIdentifier, parameters: der::AnyRef<'_>, key: &[u8]) -> Vec<u8> {
    use der::Encode as _;
    spki::SubjectPublicKeyInfoRef {
        algorithm: spki::AlgorithmIdentifierRef {
            oid,
            parameters: Some(parameters),
        },
        subject_public_key: der::asn1::BitStringRef::from_bytes(key).expect("key bits"),
    }
    .to_der()
    .expect("SubjectPublicKeyInfo")
}

/// The SubjectPublicKeyInfo (DER) of a P-256 public key, its uncompressed `point`.
pub fn p256_spki(point: &[u8]) -> Vec<u8> {
    spki(EC_PUBLIC_KEY, der::AnyRef::from(&PRIME256V1), point)
}

/// The SubjectPublicKeyInfo (DER) of an EC public key: the curve as `CKA_EC_PARAMS` gives it
/// (DER), its uncompressed `point`.
pub fn ec_spki(params: &[u8], point: &[u8]) -> Vec<u8> {
    use der::Decode as _;
    let params = der::AnyRef::from_der(params).expect("DER EC parameters");
    spki(EC_PUBLIC_KEY, params, point)
}

/// The SubjectPublicKeyInfo (DER) of the RSA public key of modulus `n` and exponent `e`
/// (unsigned big-endian).
pub fn rsa_spki(n: &[u8], e: &[u8]) -> Vec<u8> {
    use der::Encode as _;
    let key = pkcs1::RsaPublicKey {
        modulus: der::asn1::UintRef::new(n).expect("modulus"),
        public_exponent: der::asn1::UintRef::new(e).expect("exponent"),
    }
    .to_der()
    .expect("RSAPublicKey");
    spki(RSA_ENCRYPTION, der::AnyRef::NULL, &key)
}

/// The DER ECDSA-Sig-Value (SEQUENCE of the INTEGERs r and s) of a raw `r ‖ s` signature.
pub fn ecdsa_der(raw: &[u8]) -> Vec<u8> {
    use der::Encode as _;
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut seq = der::asn1::SequenceOf::<der::asn1::UintRef<'_>, 2>::new();
    for half in [r, s] {
        seq.add(der::asn1::UintRef::new(half).expect("INTEGER"))
            .expect("two INTEGERs");
    }
    seq.to_der().expect("ECDSA-Sig-Value")
}

/// The contents of a DER OCTET STRING (a `CKA_EC_POINT`).
pub fn octet_string(tlv: &[u8]) -> Vec<u8> {
    use der::Decode as _;
    der::asn1::OctetStringRef::from_der(tlv)
        .expect("DER OCTET STRING")
        .as_bytes()
        .to_vec()
}

/// Plain `openssl` (no engine, no configuration from the environment), bounded in time.
pub fn openssl(args: &[&str]) -> Run {
    require("openssl");
    let mut c = timed("openssl");
    c.args(args).env_remove("OPENSSL_CONF");
    run(&mut c)
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr").port()
}

/// A background process (a TLS server) killed and reaped when dropped.
pub struct Background {
    child: std::process::Child,
    what: String,
}

impl Background {
    /// Starts `cmd` with its output going to files `<log>.out` / `<log>.err`.
    pub fn start(mut cmd: Command, log: &Path) -> Self {
        let out = std::fs::File::create(log.with_extension("out")).expect("server log");
        let err = std::fs::File::create(log.with_extension("err")).expect("server log");
        cmd.stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err);
        let what = format!("{cmd:?}");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Self { child, what }
    }

    /// Waits until something accepts connections on 127.0.0.1:`port` (at most 30 s); panics,
    /// with the server's output, if it exits or never listens.
    pub fn wait_for_port(&mut self, port: u16, log: &Path) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before listening:\n{}\n{}",
                    self.what,
                    std::fs::read_to_string(log.with_extension("out")).unwrap_or_default(),
                    std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} does not listen on {port}",
                self.what
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` with `input` on its standard input.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Run {
    use std::io::Write;
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    let raw = child.wait_with_output().expect("wait");
    Run {
        status: raw.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&raw.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&raw.stderr).into_owned(),
        raw,
    }
}

/// A path as `&str` (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// A command that re-runs the current test binary's `#[ignore]`d test `name` alone, as a child
/// process with `FERROHSM_HOME` = `home`, the module under test, no configuration file or log
/// level inherited, and the variable `marker` set (the child test checks it and the visible
/// test's re-run does nothing). For tests that need process-global state of their own
/// (`C_Initialize`, an environment), or a process to kill.
///
/// The test harness exits 0 when `name` matches no test (a rename would do that), so a caller
/// must require a line that only the child's own body prints, never the exit status alone.
pub fn child_test(name: &str, home: &Home, marker: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("test binary"));
    c.args([
        "--ignored",
        "--exact",
        name,
        "--nocapture",
        "--test-threads=1",
    ])
    .env(marker, "1")
    .env("FERROHSM_HOME", home.path())
    .env("TEST_PKCS11_MODULE", module())
    .env_remove("FERROHSM_CONF")
    .env_remove("FERROHSM_LOG");
    c
}

/// An RSA-2048 key pair made by openssl in `dir` (a domain holder's): the private key PEM
/// (`<name>.key`) and the public key PEM (`<name>.pem`).
pub fn rsa_key_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pem"));
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

/// The domain fingerprint `ferrohsm domain init` printed.
pub fn printed_fingerprint(r: &Run) -> String {
    r.stdout
        .lines()
        .find_map(|l| l.strip_prefix("domain fingerprint: "))
        .unwrap_or_else(|| panic!("no fingerprint printed: {}", r.all()))
        .trim()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The DER the tests build, byte for byte as the hand-written encoder made it.
    #[test]
    fn der_helpers_make_the_expected_bytes() {
        let point = [[4u8].as_slice(), &[0x11; 64]].concat();
        assert_eq!(
            p256_spki(&point),
            [
                unhex("3059301306072a8648ce3d020106082a8648ce3d030107034200").as_slice(),
                &point,
            ]
            .concat()
        );
        assert_eq!(
            ec_spki(&unhex("06082a8648ce3d030107"), &point),
            p256_spki(&point)
        );
        assert_eq!(
            rsa_spki(&[0x80, 0x01], &[0x01, 0x00, 0x01]),
            unhex("301e300d06092a864886f70d0101010500030d00300a02030080010203010001")
        );
        // r with its top bit set gains a 0 byte, s loses its leading 0.
        let raw = [
            [0u8, 0x80].as_slice(),
            &[0x01; 30],
            &[0x00, 0x7f],
            &[0x02; 30],
        ]
        .concat();
        assert_eq!(
            ecdsa_der(&raw),
            [
                unhex("304302200080").as_slice(),
                &[0x01; 30],
                &unhex("021f7f"),
                &[0x02; 30],
            ]
            .concat()
        );
        assert_eq!(octet_string(&unhex("0403010203")), [1, 2, 3]);
        assert_eq!(hex(&[0xab, 0x01]), "ab01");
        assert_eq!(unhex("AB01"), [0xab, 0x01]);
    }
}
