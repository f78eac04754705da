//! OpenSSL 3 through Debian's libp11 engine (`libengine-pkcs11-openssl`, engine id `pkcs11`)
//! loading the built module: keys generated in the token, used by `openssl` with `pkcs11:`
//! URIs, and every result checked by plain `openssl` (no engine) against the public key
//! pkcs11-tool reads from the token.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::path::PathBuf;

use ferrohsm_e2e::*;

const ENGINE_SO: &str = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so";

/// One home with a token and an `openssl.cnf` that loads the pkcs11 engine with our module.
struct Engine {
    h: Home,
    token: String,
    conf: PathBuf,
}

impl Engine {
    fn new(token: &str) -> Self {
        require("openssl");
        require("pkcs11-tool");
        assert!(
            std::path::Path::new(ENGINE_SO).exists(),
            "{ENGINE_SO} is missing: the test command (scripts/test.sh) installs libengine-pkcs11-openssl"
        );
        let h = Home::with_token(token);
        let conf = h.file("openssl.cnf");
        // The same configuration as the README's "Use it from OpenSSL" section.
        std::fs::write(
            &conf,
            format!(
                "openssl_conf = openssl_init\n\
                 \n\
                 [openssl_init]\n\
                 engines = engine_section\n\
                 \n\
                 [engine_section]\n\
                 pkcs11 = pkcs11_section\n\
                 \n\
                 [pkcs11_section]\n\
                 engine_id = pkcs11\n\
                 dynamic_path = {ENGINE_SO}\n\
                 MODULE_PATH = {}\n\
                 init = 0\n",
                module().display()
            ),
        )
        .unwrap();
        Self {
            h,
            token: token.to_owned(),
            conf,
        }
    }

    /// `openssl` with the engine configuration, bounded in time.
    fn cmd(&self) -> std::process::Command {
        let mut c = self.h.timed("openssl");
        c.env("OPENSSL_CONF", &self.conf);
        c
    }

    fn openssl(&self, args: &[&str]) -> Run {
        let mut c = self.cmd();
        c.args(args);
        run(&mut c)
    }

    /// The RFC 7512 URI of the private key labelled `label`, PIN included.
    fn key(&self, label: &str) -> String {
        format!(
            "pkcs11:token={};object={label};type=private?pin-value={USER_PIN}",
            self.token
        )
    }

    fn file(&self, name: &str) -> String {
        s(&self.h.file(name)).to_owned()
    }

    /// A self-signed certificate for the token key `label`, made by `openssl req -x509`
    /// through the engine; checked by plain openssl (self-signature, public key).
    fn self_signed(&self, label: &str, id: &str, cn: &str) -> String {
        let cert = self.file(&format!("{label}.crt"));
        self.openssl(&[
            "req",
            "-new",
            "-x509",
            "-engine",
            "pkcs11",
            "-keyform",
            "engine",
            "-key",
            &self.key(label),
            "-sha256",
            "-days",
            "2",
            "-subj",
            &format!("/CN={cn}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-out",
            &cert,
        ])
        .ok();
        // The certificate's signature verifies, and its key is the token's public key.
        let r = openssl(&["verify", "-check_ss_sig", "-CAfile", &cert, &cert]).ok();
        assert!(r.stdout.contains(": OK"), "{}", r.all());
        let from_cert = openssl(&["x509", "-in", &cert, "-noout", "-pubkey"])
            .ok()
            .stdout;
        let from_token = std::fs::read_to_string(self.h.public_pem(id)).unwrap();
        assert_eq!(from_cert, from_token, "the certificate holds the token key");
        cert
    }
}

fn write(path: &str, data: &[u8]) {
    std::fs::write(path, data).unwrap();
}

/// `openssl dgst -sign` and `openssl pkeyutl -sign` with a token key, verified by plain openssl.
fn sign_and_verify(e: &Engine, key_type: &str, id: &str, label: &str, rsa: bool) {
    e.h.keypair(key_type, id, label);
    let pubkey = e.h.public_pem(id);
    let pubkey = s(&pubkey);
    let data = e.file(&format!("{label}.txt"));
    write(
        &data,
        format!("signed by {key_type} in FerroHSM through the OpenSSL engine\n").as_bytes(),
    );

    // openssl dgst -sign, SHA-256 and SHA-384.
    for md in ["-sha256", "-sha384"] {
        let sig = e.file(&format!("{label}{md}.sig"));
        e.openssl(&[
            "dgst",
            md,
            "-engine",
            "pkcs11",
            "-keyform",
            "engine",
            "-sign",
            &e.key(label),
            "-out",
            &sig,
            &data,
        ])
        .ok();
        let r = openssl(&["dgst", md, "-verify", pubkey, "-signature", &sig, &data]).ok();
        assert!(
            r.stdout.contains("Verified OK"),
            "{key_type} {md}: {}",
            r.all()
        );
        // A changed message does not verify.
        let other = e.file(&format!("{label}.other"));
        write(&other, b"something else\n");
        let r = openssl(&["dgst", md, "-verify", pubkey, "-signature", &sig, &other]);
        assert_ne!(r.status, 0, "{}", r.all());
    }

    // openssl pkeyutl -sign over a SHA-256 digest.
    let digest = e.file(&format!("{label}.sha256"));
    openssl(&["dgst", "-sha256", "-binary", "-out", &digest, &data]).ok();
    let mut paddings: Vec<Vec<&str>> = vec![vec!["-pkeyopt", "digest:sha256"]];
    if rsa {
        paddings.push(vec![
            "-pkeyopt",
            "digest:sha256",
            "-pkeyopt",
            "rsa_padding_mode:pss",
            "-pkeyopt",
            "rsa_pss_saltlen:32",
            "-pkeyopt",
            "rsa_mgf1_md:sha256",
        ]);
    }
    for (i, opts) in paddings.iter().enumerate() {
        let sig = e.file(&format!("{label}.pkeyutl{i}.sig"));
        let mut args = vec![
            "pkeyutl", "-sign", "-engine", "pkcs11", "-keyform", "engine", "-inkey",
        ];
        let key = e.key(label);
        args.push(&key);
        args.extend_from_slice(&["-in", &digest, "-out", &sig]);
        args.extend_from_slice(opts);
        e.openssl(&args).ok();
        let mut verify = vec![
            "pkeyutl", "-verify", "-pubin", "-inkey", pubkey, "-in", &digest, "-sigfile", &sig,
        ];
        verify.extend_from_slice(opts);
        let r = openssl(&verify).ok();
        assert!(
            r.stdout.contains("Signature Verified Successfully"),
            "{key_type} {opts:?}: {}",
            r.all()
        );
    }
}

#[test]
fn rsa_2048_and_3072_keys_sign_with_dgst_and_pkeyutl() {
    let e = Engine::new("osslrsa");
    sign_and_verify(&e, "rsa:2048", "01", "rsa2048", true);
    sign_and_verify(&e, "rsa:3072", "02", "rsa3072", true);
}

#[test]
fn ec_p256_p384_p521_keys_sign_with_dgst_and_pkeyutl() {
    let e = Engine::new("osslec");
    sign_and_verify(&e, "EC:prime256v1", "11", "p256", false);
    sign_and_verify(&e, "EC:secp384r1", "12", "p384", false);
    sign_and_verify(&e, "EC:secp521r1", "13", "p521", false);
}

#[test]
fn rsa_pkeyutl_decrypt_pkcs1_and_oaep() {
    let e = Engine::new("ossldec");
    e.h.keypair("rsa:2048", "21", "dec");
    let pubkey = e.h.public_pem("21");
    let plain: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(37) ^ 0x5c).collect();
    let pt = e.file("plain.bin");
    write(&pt, &plain);
    for (name, opts) in [
        ("pkcs1", vec!["-pkeyopt", "rsa_padding_mode:pkcs1"]),
        (
            "oaep-sha1",
            vec![
                "-pkeyopt",
                "rsa_padding_mode:oaep",
                "-pkeyopt",
                "rsa_oaep_md:sha1",
            ],
        ),
        (
            "oaep-sha256",
            vec![
                "-pkeyopt",
                "rsa_padding_mode:oaep",
                "-pkeyopt",
                "rsa_oaep_md:sha256",
                "-pkeyopt",
                "rsa_mgf1_md:sha256",
            ],
        ),
    ] {
        let ct = e.file(&format!("{name}.ct"));
        let back = e.file(&format!("{name}.back"));
        let mut enc = vec![
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            s(&pubkey),
            "-in",
            &pt,
            "-out",
            &ct,
        ];
        enc.extend_from_slice(&opts);
        openssl(&enc).ok();
        let key = e.key("dec");
        let mut dec = vec![
            "pkeyutl", "-decrypt", "-engine", "pkcs11", "-keyform", "engine", "-inkey", &key,
            "-in", &ct, "-out", &back,
        ];
        dec.extend_from_slice(&opts);
        e.openssl(&dec).ok();
        assert_eq!(std::fs::read(&back).unwrap(), plain, "{name}");
    }
}

#[test]
fn req_x509_self_signed_with_rsa_and_ec_token_keys() {
    let e = Engine::new("osslreq");
    e.h.keypair("rsa:2048", "31", "reqrsa");
    e.h.keypair("EC:prime256v1", "32", "reqec");
    let c1 = e.self_signed("reqrsa", "31", "rsa.ferrohsm.test");
    let c2 = e.self_signed("reqec", "32", "ec.ferrohsm.test");
    let r = openssl(&["x509", "-in", &c1, "-noout", "-text"]).ok();
    assert!(r.stdout.contains("sha256WithRSAEncryption"), "{}", r.stdout);
    let r = openssl(&["x509", "-in", &c2, "-noout", "-text"]).ok();
    assert!(r.stdout.contains("ecdsa-with-SHA256"), "{}", r.stdout);
}

/// `openssl s_client` (plain, no engine) connecting to 127.0.0.1:`port`, sending a GET.
fn client(args: &[&str], port: u16) -> Run {
    let mut c = timed("openssl");
    c.env_remove("OPENSSL_CONF").args([
        "s_client",
        "-brief",
        "-ign_eof",
        "-verify_return_error",
        "-connect",
        &format!("127.0.0.1:{port}"),
    ]);
    c.args(args);
    run_with_input(&mut c, b"GET / HTTP/1.0\r\n\r\n")
}

/// `openssl s_server -www` with a token key, on a free port of 127.0.0.1.
fn server(e: &Engine, label: &str, cert: &str, extra: &[&str], log: &str) -> (Background, u16) {
    let port = free_port();
    let mut c = e.cmd();
    c.args([
        "s_server",
        "-engine",
        "pkcs11",
        "-keyform",
        "engine",
        "-key",
        &e.key(label),
        "-cert",
        cert,
        "-accept",
        &format!("127.0.0.1:{port}"),
        "-www",
    ])
    .args(extra);
    let log = e.h.file(log);
    let mut b = Background::start(c, &log);
    b.wait_for_port(port, &log);
    (b, port)
}

#[test]
fn tls_1_2_and_1_3_servers_with_rsa_and_ec_token_keys() {
    let e = Engine::new("ossltls");
    e.h.keypair("rsa:2048", "41", "tlsrsa");
    e.h.keypair("EC:prime256v1", "42", "tlsec");
    for (label, id) in [("tlsrsa", "41"), ("tlsec", "42")] {
        let cert = e.self_signed(label, id, "localhost");
        let (_server, port) = server(&e, label, &cert, &[], label);
        for version in ["-tls1_2", "-tls1_3"] {
            let r = client(&[version, "-CAfile", &cert], port);
            let all = r.all();
            assert_eq!(r.status, 0, "{label} {version}: {all}");
            assert!(all.contains("CONNECTION ESTABLISHED"), "{all}");
            assert!(all.contains("Verification: OK"), "{all}");
            let want = if version == "-tls1_2" {
                "Protocol version: TLSv1.2"
            } else {
                "Protocol version: TLSv1.3"
            };
            assert!(all.contains(want), "{label} {version}: {all}");
            // The server answered over the channel its token key authenticated.
            assert!(r.stdout.contains("HTTP/1.0 200 ok"), "{all}");
        }
    }
}

#[test]
fn mutual_tls_with_a_token_held_client_key() {
    let e = Engine::new("osslmtls");
    // The server's key is an ordinary file; the client's key is in the token.
    let skey = e.file("server.key");
    let scert = e.file("server.crt");
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &skey,
        "-out",
        &scert,
        "-subj",
        "/CN=localhost",
        "-days",
        "2",
    ])
    .ok();
    e.h.keypair("rsa:2048", "51", "client");
    let ccert = e.self_signed("client", "51", "token client");
    let port = free_port();
    let mut c = timed("openssl");
    c.env_remove("OPENSSL_CONF").args([
        "s_server",
        "-key",
        &skey,
        "-cert",
        &scert,
        "-accept",
        &format!("127.0.0.1:{port}"),
        "-www",
        "-Verify",
        "1",
        "-verify_return_error",
        "-CAfile",
        &ccert,
    ]);
    let log = e.h.file("mtls-server");
    let mut b = Background::start(c, &log);
    b.wait_for_port(port, &log);
    for version in ["-tls1_2", "-tls1_3"] {
        let mut c = e.cmd();
        c.args([
            "s_client",
            "-brief",
            "-ign_eof",
            "-verify_return_error",
            "-connect",
            &format!("127.0.0.1:{port}"),
            version,
            "-CAfile",
            &scert,
            "-engine",
            "pkcs11",
            "-keyform",
            "engine",
            "-key",
            &e.key("client"),
            "-cert",
            &ccert,
        ]);
        let r = run_with_input(&mut c, b"GET / HTTP/1.0\r\n\r\n");
        let all = r.all();
        assert_eq!(r.status, 0, "{version}: {all}");
        assert!(all.contains("CONNECTION ESTABLISHED"), "{all}");
        // The server saw and verified the token-held client certificate.
        assert!(r.stdout.contains("HTTP/1.0 200 ok"), "{version}: {all}");
        assert!(
            r.stdout.contains("Client certificate") && r.stdout.contains("token client"),
            "{version}: {all}"
        );
    }
    drop(b);
}

/// The `pkcs11:` URI `ferrohsm objects --json` prints for a key (its label has a space and a
/// semicolon, which the URI percent-encodes) is one the OpenSSL engine finds and signs with;
/// `ferrohsm slots --json` names the same token.
#[test]
fn the_uris_the_cli_prints_reach_the_keys() {
    let e = Engine::new("uri token");
    e.h.user(&[
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        "0a1b",
        "--label",
        "web key;1",
    ])
    .ok();
    let slots: serde_json::Value =
        serde_json::from_str(&e.h.ferrohsm(&["slots", "--json"]).ok().stdout).unwrap();
    let token = &slots[0]["token"];
    assert_eq!(token["label"], "uri token");
    assert!(
        token["uri"]
            .as_str()
            .unwrap()
            .starts_with("pkcs11:token=uri%20token;"),
        "{token}"
    );
    let objects: serde_json::Value = serde_json::from_str(
        &e.h.ferrohsm(&["objects", "--json", "--pin", USER_PIN])
            .ok()
            .stdout,
    )
    .unwrap();
    let private = objects["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["class"] == "private-key")
        .unwrap();
    assert_eq!(private["label"], "web key;1");
    let uri = private["uri"].as_str().unwrap();
    assert!(
        uri.contains(";object=web%20key%3B1;id=%0a%1b;type=private"),
        "{uri}"
    );
    let data = e.file("data.txt");
    write(&data, b"signed through the printed URI\n");
    let sig = e.file("data.sig");
    e.openssl(&[
        "dgst",
        "-sha256",
        "-engine",
        "pkcs11",
        "-keyform",
        "engine",
        "-sign",
        &format!("{uri}?pin-value={USER_PIN}"),
        "-out",
        &sig,
        &data,
    ])
    .ok();
    let public = objects["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["class"] == "public-key")
        .unwrap();
    let pub_uri = public["uri"].as_str().unwrap();
    let pem = e.file("pub.pem");
    e.openssl(&[
        "pkey", "-engine", "pkcs11", "-pubin", "-inform", "engine", "-in", pub_uri, "-out", &pem,
    ])
    .ok();
    let v = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        &pem,
        "-signature",
        &sig,
        &data,
    ])
    .ok();
    assert!(v.stdout.contains("Verified OK"), "{}", v.all());
}
