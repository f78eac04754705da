//! GnuTLS through `p11tool` and `certtool --provider <module>`: tokens and objects listed, RSA
//! and ECDSA keys generated in the token, public keys exported (and compared with what
//! pkcs11-tool reads), a self-signed certificate made with a `pkcs11:` key and verified by plain
//! openssl.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use ferrohsm_e2e::*;

const TOKEN: &str = "gnutls";

fn gnutls(h: &Home, program: &str, args: &[&str]) -> Run {
    require(program);
    let mut c = h.timed(program);
    c.arg("--provider")
        .arg(module())
        .args(args)
        // p11tool and certtool take the PIN from the environment when asked to log in.
        .env("GNUTLS_PIN", USER_PIN)
        .env("GNUTLS_SO_PIN", SO_PIN);
    run(&mut c)
}

fn key_uri(label: &str, ty: &str) -> String {
    format!("pkcs11:token={TOKEN};object={label};type={ty}")
}

/// The public key `p11tool --export-pubkey` gives, as the same PEM plain openssl writes.
fn exported_pubkey(h: &Home, label: &str) -> String {
    let pem = h.file(&format!("{label}-p11tool.pem"));
    // With --outfile: printing a key to the terminal makes p11tool sleep 3 s after a warning.
    gnutls(
        h,
        "p11tool",
        &[
            "--login",
            "--export-pubkey",
            &key_uri(label, "public"),
            "--outfile",
            s(&pem),
        ],
    )
    .ok();
    openssl(&["pkey", "-pubin", "-in", s(&pem)]).ok().stdout
}

#[test]
fn p11tool_lists_generates_and_exports_rsa_and_ecdsa_keys() {
    let h = Home::with_token(TOKEN);
    let r = gnutls(&h, "p11tool", &["--list-tokens"]).ok();
    assert!(r.stdout.contains(&format!("token={TOKEN}")), "{}", r.all());
    assert!(r.stdout.contains("Label: gnutls"), "{}", r.all());

    for (label, id, args) in [
        (
            "gtrsa",
            "71",
            vec!["--generate-privkey", "rsa", "--bits", "2048"],
        ),
        (
            "gtp256",
            "72",
            vec!["--generate-privkey", "ecdsa", "--curve", "secp256r1"],
        ),
        (
            "gtp384",
            "73",
            vec!["--generate-privkey", "ecdsa", "--curve", "secp384r1"],
        ),
    ] {
        let mut all = vec!["--login", "--label", label, "--id", id];
        all.extend_from_slice(&args);
        let token = format!("pkcs11:token={TOKEN}");
        all.push(&token);
        let r = gnutls(&h, "p11tool", &all).ok();
        assert!(r.stdout.contains("BEGIN PUBLIC KEY"), "{}", r.all());
        // p11tool's idea of the public key is the token's (read by pkcs11-tool).
        let from_token = std::fs::read_to_string(h.public_pem(id)).unwrap();
        assert_eq!(exported_pubkey(&h, label), from_token, "{label}");
        // GnuTLS signs with the private key and verifies with the public one.
        let r = gnutls(
            &h,
            "p11tool",
            &["--login", "--test-sign", &key_uri(label, "private")],
        )
        .ok();
        assert!(
            r.all()
                .contains("Verifying against public key in the token... ok"),
            "{}",
            r.all()
        );
    }

    let r = gnutls(
        &h,
        "p11tool",
        &["--login", "--list-all", &format!("pkcs11:token={TOKEN}")],
    )
    .ok();
    for want in ["gtrsa", "gtp256", "gtp384", "Private key", "Public key"] {
        assert!(r.stdout.contains(want), "{want}: {}", r.stdout);
    }
    let r = gnutls(
        &h,
        "p11tool",
        &[
            "--login",
            "--list-privkeys",
            &format!("pkcs11:token={TOKEN}"),
        ],
    )
    .ok();
    assert_eq!(
        r.stdout.matches("Type: Private key").count(),
        3,
        "{}",
        r.stdout
    );
}

#[test]
fn certtool_generates_a_self_signed_certificate_with_a_token_key() {
    let h = Home::with_token(TOKEN);
    let tmpl = h.file("cert.tmpl");
    std::fs::write(
        &tmpl,
        "cn = \"gnutls.ferrohsm.test\"\nserial = 7\nexpiration_days = 2\nca\ncert_signing_key\nsigning_key\n",
    )
    .unwrap();
    for (label, id, keygen, sigalg) in [
        ("ctrsa", "81", "rsa:2048", "sha256WithRSAEncryption"),
        ("ctec", "82", "EC:prime256v1", "ecdsa-with-SHA256"),
    ] {
        // Keys made by another application (pkcs11-tool), used by GnuTLS.
        h.keypair(keygen, id, label);
        let cert = h.file(&format!("{label}.crt"));
        gnutls(
            &h,
            "certtool",
            &[
                "--generate-self-signed",
                "--load-privkey",
                &key_uri(label, "private"),
                "--template",
                s(&tmpl),
                "--outfile",
                s(&cert),
            ],
        )
        .ok();
        let r = openssl(&["verify", "-check_ss_sig", "-CAfile", s(&cert), s(&cert)]);
        assert!(r.stdout.contains(": OK"), "{label}: {}", r.all());
        let r = openssl(&["x509", "-in", s(&cert), "-noout", "-text"]).ok();
        assert!(r.stdout.contains(sigalg), "{}", r.stdout);
        assert!(r.stdout.contains("gnutls.ferrohsm.test"), "{}", r.stdout);
        let from_cert = openssl(&["x509", "-in", s(&cert), "-noout", "-pubkey"])
            .ok()
            .stdout;
        let from_token = std::fs::read_to_string(h.public_pem(id)).unwrap();
        assert_eq!(
            from_cert, from_token,
            "{label}: the certificate holds the token key"
        );
    }
}
