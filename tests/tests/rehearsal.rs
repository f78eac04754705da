//! Migration rehearsal end to end (README, "Migration rehearsal"): a real application is
//! recorded with `ferrohsm trace` against a token of the default personality, `ferrohsm check`
//! names the calls AWS CloudHSM's documentation says would fail there (and nothing else), and
//! the same application run against the same token with `personality = "aws-cloudhsm"` fails
//! at exactly those calls, with the codes the report gave, and at no other.
//!
//! The applications: the JCA/JCE program of the Java tests (tests/java/FerroJce.java, through
//! SunPKCS11) and an OpenSSL TLS server (`openssl s_server` through the pkcs11 engine).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stdout
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ferrohsm_e2e::*;
use serde_json::Value;

/// The user PIN in AWS CloudHSM's form (pkcs11-pin.html: `<CU_user_name>:<password>`), set
/// on the token from the start so that only the personality changes between the two runs.
const PIN: &str = "cu1:password1";

/// One token (a `kind = "sim"` slot on `store`) and two configurations of it: the default
/// personality and AWS CloudHSM's.
struct Rehearsal {
    h: Home,
    default: PathBuf,
    aws: PathBuf,
}

impl Rehearsal {
    fn new() -> Self {
        let h = Home::new();
        let store = h.path().join("store");
        let conf = |name: &str, personality: &str| {
            let p = h.file(name);
            std::fs::write(
                &p,
                format!(
                    "[[slot]]\nkind = \"sim\"\nlabel = \"app\"\nstore = {store:?}\npersonality = \"{personality}\"\n"
                ),
            )
            .unwrap();
            p
        };
        let default = conf("default.toml", "default");
        let aws = conf("aws.toml", "aws-cloudhsm");
        let r = Self { h, default, aws };
        r.tool(&[
            "--init-token",
            "--slot",
            "0",
            "--label",
            "app",
            "--so-pin",
            SO_PIN,
        ]);
        r.tool(&[
            "--slot",
            "0",
            "--init-pin",
            "--login",
            "--so-pin",
            SO_PIN,
            "--pin",
            PIN,
        ]);
        r
    }

    /// `pkcs11-tool` on the token under the default personality.
    fn tool(&self, args: &[&str]) -> Run {
        let mut c = self.h.timed("pkcs11-tool");
        c.env("FERROHSM_CONF", &self.default)
            .arg("--module")
            .arg(module())
            .args(args);
        run(&mut c).ok()
    }

    /// `ferrohsm trace --out TRACE --conf CONF -- program args…`.
    fn traced(&self, trace: &Path, conf: &Path, program: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = self.h.timed(cli());
        c.args(["trace", "--out", s(trace), "--conf", s(conf), "--"])
            .args(program);
        for (k, v) in env {
            c.env(k, v);
        }
        run(&mut c)
    }

    /// `ferrohsm check --trace TRACE --target aws-cloudhsm --json`: the report, and whether
    /// the command said something would break (exit 1).
    fn check(&self, trace: &Path) -> (Value, bool) {
        let mut c = self.h.command(cli());
        c.args([
            "check",
            "--trace",
            s(trace),
            "--target",
            "aws-cloudhsm",
            "--json",
        ]);
        let r = run(&mut c);
        assert!(r.status == 0 || r.status == 1, "{}", r.all());
        (serde_json::from_str(&r.stdout).unwrap(), r.status == 1)
    }
}

/// The report's errors as (function, mechanism, code).
fn errors(report: &Value) -> BTreeSet<(String, String, String)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "error")
        .map(|f| {
            (
                f["function"].as_str().unwrap().to_owned(),
                f["mechanism"].as_str().unwrap_or("").to_owned(),
                f["code"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn calls(trace: &Path) -> Vec<Value> {
    std::fs::read_to_string(trace)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r["kind"] == "call")
        .collect()
}

/// The failures of the rehearsal run the recorded run did not have: (function, code) of every
/// call that failed with a code the recorded run never got from that function. (The two runs
/// need not call alike: an application adapts to a shorter mechanism list.)
fn new_failures(recorded: &Path, rehearsed: &Path) -> BTreeSet<(String, String)> {
    let pair = |r: &Value| {
        (
            r["fn"].as_str().unwrap().to_owned(),
            r["rv"].as_str().unwrap().to_owned(),
        )
    };
    let before: BTreeSet<(String, String)> = calls(recorded).iter().map(pair).collect();
    calls(rehearsed)
        .iter()
        .map(pair)
        .filter(|p| p.1 != "CKR_OK" && !before.contains(p))
        .collect()
}

/// The report's errors as (function, code).
fn error_calls(report: &Value) -> BTreeSet<(String, String)> {
    errors(report).into_iter().map(|(f, _, c)| (f, c)).collect()
}

#[test]
fn a_java_program_is_checked_against_aws_cloudhsm_and_fails_there_where_the_report_says() {
    for t in ["java", "javac"] {
        require(t);
    }
    let r = Rehearsal::new();
    r.tool(&[
        "--slot",
        "0",
        "--login",
        "--pin",
        PIN,
        "--keygen",
        "--key-type",
        "AES:32",
        "--id",
        "61",
        "--label",
        "aestoken",
        "--private",
    ]);
    let classes = r.h.file("classes");
    std::fs::create_dir_all(&classes).unwrap();
    let src = workspace().join("tests/java/FerroJce.java");
    run(r.h.timed("javac").args(["-d", s(&classes), s(&src)])).ok();
    let cfg = r.h.file("sunpkcs11.cfg");
    std::fs::write(
        &cfg,
        format!(
            "name = FerroHSM\nlibrary = {}\nslotListIndex = 0\n\
             attributes(generate, CKO_PRIVATE_KEY, CKK_EC) = {{\n  CKA_DERIVE = true\n}}\n",
            module().display()
        ),
    )
    .unwrap();
    let out = r.h.file("jce-out");
    std::fs::create_dir_all(&out).unwrap();
    let java = |trace: &Path, conf: &Path| {
        r.traced(
            trace,
            conf,
            &[
                "java",
                "-cp",
                s(&classes),
                "FerroJce",
                s(&cfg),
                s(&out),
                PIN,
                "aestoken",
            ],
            &[],
        )
    };

    let recorded = r.h.file("java.jsonl");
    let run1 = java(&recorded, &r.default);
    assert_eq!(run1.status, 0, "{}", run1.all());
    assert!(run1.stdout.contains("CHECKS PASSED"), "{}", run1.all());

    let (report, breaks) = r.check(&recorded);
    println!("{report:#}");
    assert!(breaks, "{report:#}");
    let want: BTreeSet<(String, String, String)> = [
        // pkcs11-mechanisms.html, annotation 1: "When performing AES-GCM encryption, the HSM
        // does not accept initialization vector (IV) data from the application."
        (
            "C_EncryptInit",
            "CKM_AES_GCM",
            "CKR_MECHANISM_PARAM_INVALID",
        ),
    ]
    .iter()
    .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
    .collect();
    assert_eq!(errors(&report), want, "{report:#}");

    let rehearsed = r.h.file("java-aws.jsonl");
    let run2 = java(&rehearsed, &r.aws);
    assert_ne!(run2.status, 0, "{}", run2.all());
    assert_eq!(new_failures(&recorded, &rehearsed), error_calls(&report));
    assert!(
        run2.all().contains("CKR_MECHANISM_PARAM_INVALID"),
        "{}",
        run2.all()
    );
}

#[test]
fn an_openssl_tls_server_is_checked_against_aws_cloudhsm_and_fails_there_where_the_report_says() {
    const ENGINE_SO: &str = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so";
    require("openssl");
    assert!(Path::new(ENGINE_SO).exists(), "{ENGINE_SO} is missing");
    let r = Rehearsal::new();
    r.tool(&[
        "--slot",
        "0",
        "--login",
        "--pin",
        PIN,
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        "42",
        "--label",
        "tls",
    ]);
    let conf = r.h.file("openssl.cnf");
    std::fs::write(
        &conf,
        format!(
            "openssl_conf = openssl_init\n[openssl_init]\nengines = engine_section\n\
             [engine_section]\npkcs11 = pkcs11_section\n[pkcs11_section]\nengine_id = pkcs11\n\
             dynamic_path = {ENGINE_SO}\nMODULE_PATH = {}\ninit = 0\n",
            module().display()
        ),
    )
    .unwrap();
    let key = format!("pkcs11:token=app;object=tls;type=private?pin-value={PIN}");
    // A certificate for the token key, signed through the engine (not recorded).
    let cert = r.h.file("tls.crt");
    let mut c = r.h.timed("openssl");
    c.env("OPENSSL_CONF", &conf)
        .env("FERROHSM_CONF", &r.default)
        .args([
            "req",
            "-new",
            "-x509",
            "-engine",
            "pkcs11",
            "-keyform",
            "engine",
            "-key",
            &key,
            "-subj",
            "/CN=localhost",
            "-days",
            "1",
            "-out",
            s(&cert),
        ]);
    run(&mut c).ok();
    // The server is recorded through FERROHSM_TRACE directly (what `ferrohsm trace` sets), so
    // that stopping it stops the server itself.
    let server = |trace: &Path, conf_file: &Path, port: u16| {
        let mut c = r.h.command("openssl");
        c.env("OPENSSL_CONF", &conf)
            .env("FERROHSM_TRACE", trace)
            .env("FERROHSM_CONF", conf_file)
            .args([
                "s_server",
                "-engine",
                "pkcs11",
                "-keyform",
                "engine",
                "-key",
                &key,
                "-cert",
                s(&cert),
                "-accept",
                &format!("127.0.0.1:{port}"),
                "-www",
            ]);
        c
    };
    // The server answers a TLS 1.3 client, its handshake signed by the token key.
    let serve_one = |trace: &Path, conf_file: &Path, log: &str| {
        let port = free_port();
        let log = r.h.file(log);
        let mut b = Background::start(server(trace, conf_file, port), &log);
        b.wait_for_port(port, &log);
        let mut c = timed("openssl");
        c.env_remove("OPENSSL_CONF").args([
            "s_client",
            "-brief",
            "-ign_eof",
            "-tls1_3",
            "-verify_return_error",
            "-CAfile",
            s(&cert),
            "-connect",
            &format!("127.0.0.1:{port}"),
        ]);
        let client = run_with_input(&mut c, b"GET / HTTP/1.0\r\n\r\n");
        assert!(
            client.stdout.contains("HTTP/1.0 200 ok"),
            "{}",
            client.all()
        );
    };
    let recorded = r.h.file("openssl.jsonl");
    serve_one(&recorded, &r.default, "server");

    let (report, breaks) = r.check(&recorded);
    println!("{report:#}");
    assert!(breaks, "{report:#}");
    let want: BTreeSet<(String, String, String)> = [
        // ki-pkcs11-sdk.html#ki-pkcs11-13: "If you attempt to call C_OpenSession without
        // providing CKF_RW_SESSION, the call will fail with the error CKR_FUNCTION_FAILED."
        ("C_OpenSession", "", "CKR_FUNCTION_FAILED"),
    ]
    .iter()
    .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
    .collect();
    assert_eq!(errors(&report), want, "{report:#}");

    // Rehearsed: the read-only session is refused where the report said, with its code, and
    // nothing else is; libp11 then opens a read-write session, so this server survives the
    // move (the report names the call, the rehearsal shows the application copes).
    // Rehearsed: the read-only session is refused where the report said, with its code, and no
    // other call fails; the server never comes up (given 15 s, it has not served a byte).
    let rehearsed = r.h.file("openssl-aws.jsonl");
    let port = free_port();
    let cmd = server(&rehearsed, &r.aws, port);
    let mut bounded = std::process::Command::new("timeout");
    bounded
        .args(["-k", "2", "15"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => bounded.env(k, v),
            None => bounded.env_remove(k),
        };
    }
    let run2 = run(&mut bounded);
    assert_ne!(run2.status, 0, "{}", run2.all());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens after the server was stopped"
    );
    assert_eq!(new_failures(&recorded, &rehearsed), error_calls(&report));
}
