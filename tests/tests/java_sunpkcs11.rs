//! Java 17 through the JDK's SunPKCS11 provider loading the built module: keytool and jarsigner
//! with `-keystore NONE -storetype PKCS11`, and a small JCA/JCE program (tests/java/FerroJce.java).
//! Certificates and signatures are checked again with plain openssl.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::path::PathBuf;
use std::process::Command;

use ferrohsm_e2e::*;

/// A home with a token and a SunPKCS11 configuration file for it.
struct Jdk {
    h: Home,
    cfg: PathBuf,
}

impl Jdk {
    fn new(token: &str) -> Self {
        for t in ["java", "javac", "jar", "keytool", "jarsigner", "openssl"] {
            require(t);
        }
        let h = Home::with_token(token);
        let cfg = h.file("sunpkcs11.cfg");
        // The same configuration as the README's "Use it from Java" section. The attributes
        // line lets EC private keys that Java generates derive (ECDH): CKA_DERIVE defaults to
        // CK_FALSE (PKCS#11 common key attributes) and SunPKCS11 does not ask for it.
        std::fs::write(
            &cfg,
            format!(
                "name = FerroHSM\n\
                 library = {}\n\
                 slotListIndex = 0\n\
                 attributes(generate, CKO_PRIVATE_KEY, CKK_EC) = {{\n  CKA_DERIVE = true\n}}\n",
                module().display()
            ),
        )
        .unwrap();
        Self { h, cfg }
    }

    /// A JDK tool with the SunPKCS11 keystore options.
    fn tool(&self, program: &str, args: &[&str]) -> Run {
        let mut c = self.h.timed(program);
        c.args(args).args([
            "-keystore",
            "NONE",
            "-storetype",
            "PKCS11",
            "-addprovider",
            "SunPKCS11",
            "-providerArg",
            s(&self.cfg),
            "-storepass",
            USER_PIN,
        ]);
        run(&mut c)
    }

    fn keytool(&self, args: &[&str]) -> Run {
        self.tool("keytool", args)
    }

    fn genkeypair(&self, alias: &str, alg: &[&str], sigalg: &str) {
        let mut args = vec![
            "-genkeypair",
            "-alias",
            alias,
            "-sigalg",
            sigalg,
            "-dname",
            "CN=FerroHSM keytool",
            "-validity",
            "2",
        ];
        args.extend_from_slice(alg);
        self.keytool(&args).ok();
    }

    /// The certificate of `alias`, exported by keytool as PEM, its self-signature verified by
    /// plain openssl.
    fn export_cert(&self, alias: &str) -> String {
        let pem = s(&self.h.file(&format!("{alias}.pem"))).to_owned();
        self.keytool(&["-exportcert", "-rfc", "-alias", alias, "-file", &pem])
            .ok();
        let r = openssl(&["verify", "-check_ss_sig", "-CAfile", &pem, &pem]);
        assert!(r.stdout.contains(": OK"), "{alias}: {}", r.all());
        pem
    }
}

#[test]
fn keytool_lists_and_generates_rsa_and_ec_keys_in_the_token() {
    let j = Jdk::new("keytool");
    let r = j.keytool(&["-list"]).ok();
    assert!(
        r.stdout.contains("Your keystore contains 0 entries"),
        "{}",
        r.all()
    );
    j.genkeypair(
        "rsakey",
        &["-keyalg", "RSA", "-keysize", "2048"],
        "SHA256withRSA",
    );
    j.genkeypair(
        "eckey",
        &["-keyalg", "EC", "-groupname", "secp256r1"],
        "SHA256withECDSA",
    );
    let r = j.keytool(&["-list"]).ok();
    assert!(
        r.stdout.contains("Your keystore contains 2 entries"),
        "{}",
        r.all()
    );
    assert!(r.stdout.contains("rsakey, PrivateKeyEntry"), "{}", r.all());
    assert!(r.stdout.contains("eckey, PrivateKeyEntry"), "{}", r.all());
    // The keys and certificates are token objects another application sees.
    let r = j.h.user(&["--list-objects"]).ok();
    for want in [
        "Private Key Object; RSA",
        "Private Key Object; EC",
        "rsakey",
        "eckey",
    ] {
        assert!(r.stdout.contains(want), "{want}: {}", r.stdout);
    }
    let rsa = j.export_cert("rsakey");
    let ec = j.export_cert("eckey");
    let r = openssl(&["x509", "-in", &rsa, "-noout", "-text"]).ok();
    assert!(r.stdout.contains("sha256WithRSAEncryption"), "{}", r.stdout);
    let r = openssl(&["x509", "-in", &ec, "-noout", "-text"]).ok();
    assert!(r.stdout.contains("ecdsa-with-SHA256"), "{}", r.stdout);
}

#[test]
fn jarsigner_signs_with_token_keys_and_the_signature_verifies() {
    let j = Jdk::new("jarsign");
    let content = j.h.file("content");
    std::fs::create_dir_all(content.join("app")).unwrap();
    std::fs::write(content.join("app/hello.txt"), b"hello from a signed jar\n").unwrap();
    for (alias, alg, sigalg, block) in [
        (
            "rsasig",
            ["-keyalg", "RSA", "-keysize", "2048"],
            "SHA256withRSA",
            "RSA",
        ),
        (
            "ecsig",
            ["-keyalg", "EC", "-groupname", "secp384r1"],
            "SHA384withECDSA",
            "EC",
        ),
    ] {
        j.genkeypair(alias, &alg, sigalg);
        let cert = j.export_cert(alias);
        let jar = j.h.file(&format!("{alias}.jar"));
        run(j
            .h
            .timed("jar")
            .args(["cf", s(&jar), "-C", s(&content), "."]))
        .ok();
        j.tool("jarsigner", &["-sigalg", sigalg, s(&jar), alias])
            .ok();
        let r = run(j
            .h
            .timed("jarsigner")
            .args(["-verify", "-verbose", "-certs", s(&jar)]))
        .ok();
        assert!(r.stdout.contains("jar verified."), "{}", r.all());

        // Independently: the PKCS#7 signature block over the .SF file, checked by openssl.
        let x = j.h.file(&format!("{alias}-x"));
        std::fs::create_dir_all(&x).unwrap();
        run(Command::new("timeout")
            .args(["60", "jar", "xf", s(&jar), "META-INF"])
            .current_dir(&x))
        .ok();
        let upper = alias.to_uppercase();
        let sf = x.join(format!("META-INF/{upper}.SF"));
        let blk = x.join(format!("META-INF/{upper}.{block}"));
        let r = openssl(&[
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            s(&blk),
            "-content",
            s(&sf),
            "-binary",
            "-noverify",
            "-out",
            "/dev/null",
        ])
        .ok();
        assert!(r.all().contains("Verification successful"), "{}", r.all());
        // ... by the certificate keytool exported.
        let signer = s(&j.h.file(&format!("{alias}-signer.pem"))).to_owned();
        openssl(&[
            "pkcs7",
            "-inform",
            "DER",
            "-in",
            s(&blk),
            "-print_certs",
            "-out",
            &signer,
        ])
        .ok();
        let a = openssl(&["x509", "-in", &signer, "-noout", "-fingerprint", "-sha256"])
            .ok()
            .stdout;
        let b = openssl(&["x509", "-in", &cert, "-noout", "-fingerprint", "-sha256"])
            .ok()
            .stdout;
        assert_eq!(a, b, "the jar is signed by the token key's certificate");
    }
}

/// Compiles tests/java/FerroJce.java and runs it on a token holding an AES key `aestoken`.
fn run_program(j: &Jdk, extra: &[&str]) -> (Run, PathBuf) {
    // A persistent AES key made by another application, used by Java through the KeyStore.
    j.h.user(&[
        "--keygen",
        "--private",
        "--key-type",
        "AES:32",
        "--id",
        "61",
        "--label",
        "aestoken",
    ])
    .ok();
    let classes = j.h.file("classes");
    std::fs::create_dir_all(&classes).unwrap();
    let src = workspace().join("tests/java/FerroJce.java");
    run(j.h.timed("javac").args(["-d", s(&classes), s(&src)])).ok();
    let out = j.h.file("jce-out");
    std::fs::create_dir_all(&out).unwrap();
    let r = run(j
        .h
        .timed("java")
        .args([
            "-cp",
            s(&classes),
            "FerroJce",
            s(&j.cfg),
            s(&out),
            USER_PIN,
            "aestoken",
        ])
        .args(extra));
    println!("{}", r.stdout);
    (r, out)
}

#[test]
fn jca_jce_program_signatures_ciphers_mac_random_ecdh() {
    let j = Jdk::new("jce");
    let (r, out) = run_program(&j, &[]);
    assert_eq!(r.status, 0, "{}", r.all());
    assert!(r.stdout.contains("CHECKS PASSED"), "{}", r.all());

    // Every signature again, with plain openssl and the public key Java exported.
    let data = out.join("data.txt");
    for (name, opts) in [
        ("sha256withrsa", vec!["-sha256"]),
        (
            "rsassa-pss",
            vec![
                "-sha256",
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:32",
                "-sigopt",
                "rsa_mgf1_md:sha256",
            ],
        ),
        (
            "sha256withrsassa-pss",
            vec![
                "-sha256",
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:32",
                "-sigopt",
                "rsa_mgf1_md:sha256",
            ],
        ),
        ("sha256withecdsa", vec!["-sha256"]),
        ("sha384withecdsa", vec!["-sha384"]),
    ] {
        let pem = out.join(format!("{name}.pub.pem"));
        openssl(&[
            "pkey",
            "-pubin",
            "-inform",
            "DER",
            "-in",
            s(&out.join(format!("{name}.pub.der"))),
            "-out",
            s(&pem),
        ])
        .ok();
        let sig = out.join(format!("{name}.sig"));
        let mut args = vec!["dgst"];
        args.extend_from_slice(&opts);
        args.extend_from_slice(&["-verify", s(&pem), "-signature", s(&sig), s(&data)]);
        let r = openssl(&args).ok();
        assert!(r.stdout.contains("Verified OK"), "{name}: {}", r.all());
    }
}

/// `KeyAgreement.generateSecret()` (the secret as bytes) with a token EC key: SunPKCS11 derives
/// a CKK_GENERIC_SECRET from the (sensitive, unextractable) private key with a template naming
/// only class and key type, then reads its CKA_VALUE. ECDH lets the template (or the token's
/// default: extractable) decide, unlike the derivations that inherit the base key's protection.
#[test]
fn jca_ecdh_generate_secret_as_bytes() {
    let j = Jdk::new("ecdhraw");
    let (r, _) = run_program(&j, &["ecdh-raw"]);
    assert_eq!(r.status, 0, "{}", r.all());
    assert!(r.stdout.contains("CHECKS PASSED"), "{}", r.all());
}
