//! NSS: `modutil -add` the built module into a fresh database, `certutil` lists the token,
//! creates a self-signed certificate whose key is generated in the token and validates it, and
//! NSS's `selfserv` serves TLS 1.2 and 1.3 with that RSA token key to plain `openssl s_client`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use ferrohsm_e2e::*;

const TOKEN: &str = "nss";

/// A home with a token and an NSS database that has the module added.
struct Nss {
    h: Home,
    db: String,
    pwfile: String,
}

impl Nss {
    fn new() -> Self {
        for t in ["modutil", "certutil", "selfserv", "openssl"] {
            require(t);
        }
        let h = Home::with_token(TOKEN);
        let dir = h.file("nssdb");
        std::fs::create_dir_all(&dir).unwrap();
        let db = format!("sql:{}", s(&dir));
        let pwfile = s(&h.file("pin.txt")).to_owned();
        std::fs::write(&pwfile, format!("{USER_PIN}\n")).unwrap();
        let n = Self { h, db, pwfile };
        n.run("certutil", &["-N", "--empty-password"]).ok();
        // The README's modutil line. FRIENDLY tells NSS that the token's certificates are
        // public (they are: CKA_PRIVATE defaults to FALSE for certificates), so NSS looks them
        // up without logging in; without it `certutil -V -n nss:...` and `-L -n` want a PIN from
        // the terminal (certutil does not use `-f` there), with any token.
        let r = n
            .run(
                "modutil",
                &[
                    "-add",
                    "FerroHSM",
                    "-libfile",
                    s(&module()),
                    "-mechanisms",
                    "FRIENDLY",
                    "-force",
                ],
            )
            .ok();
        assert!(r.all().contains("Module \"FerroHSM\" added"), "{}", r.all());
        n
    }

    fn run(&self, program: &str, args: &[&str]) -> Run {
        let mut c = self.h.timed(program);
        let dbflag = if program == "modutil" { "-dbdir" } else { "-d" };
        c.arg(dbflag).arg(&self.db).args(args);
        run(&mut c)
    }

    fn certutil(&self, args: &[&str]) -> Run {
        let mut all = args.to_vec();
        all.extend_from_slice(&["-f", &self.pwfile]);
        self.run("certutil", &all)
    }

    /// `certutil -S`: a key pair generated in the token and a self-signed certificate for it.
    fn self_signed(&self, nick: &str, cn: &str, keyargs: &[&str]) -> String {
        let noise = self.h.file("noise.bin");
        std::fs::write(
            &noise,
            (0..2048u32)
                .map(|i| (i * 131 % 251) as u8)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let mut args = vec![
            "-S",
            "-h",
            TOKEN,
            "-n",
            nick,
            "-s",
            cn,
            "-x",
            "-t",
            "CT,C,C",
            "-v",
            "2",
            "-Z",
            "SHA256",
            "--extKeyUsage",
            "serverAuth",
            "-z",
            s(&noise),
        ];
        args.extend_from_slice(keyargs);
        self.certutil(&args).ok();
        let pem = s(&self.h.file(&format!("{nick}.pem"))).to_owned();
        let r = self
            .certutil(&["-L", "-n", &format!("{TOKEN}:{nick}"), "-a"])
            .ok();
        std::fs::write(&pem, r.stdout.as_bytes()).unwrap();
        let r = openssl(&["verify", "-check_ss_sig", "-CAfile", &pem, &pem]);
        assert!(r.stdout.contains(": OK"), "{nick}: {}", r.all());
        pem
    }
}

#[test]
fn modutil_adds_the_module_and_certutil_makes_a_token_certificate() {
    let n = Nss::new();
    let r = n.run("modutil", &["-list", "FerroHSM"]).ok();
    assert!(
        r.stdout.contains(&format!("Token Name: {TOKEN}")),
        "{}",
        r.all()
    );
    // An empty token lists no certificates.
    let r = n.certutil(&["-L", "-h", TOKEN]);
    assert!(!r.stdout.contains(&format!("{TOKEN}:")), "{}", r.all());

    let rsa = n.self_signed(
        "nssrsa",
        "CN=rsa.nss.ferrohsm.test",
        &["-k", "rsa", "-g", "2048"],
    );
    let ec = n.self_signed(
        "nssec",
        "CN=ec.nss.ferrohsm.test",
        &["-k", "ec", "-q", "secp256r1"],
    );
    let r = n.certutil(&["-L", "-h", TOKEN]).ok();
    for want in ["nss:nssrsa", "nss:nssec"] {
        assert!(r.stdout.contains(want), "{want}: {}", r.all());
    }
    for nick in ["nssrsa", "nssec"] {
        let r = n
            .certutil(&["-V", "-n", &format!("{TOKEN}:{nick}"), "-u", "V"])
            .ok();
        assert!(r.all().contains("certificate is valid"), "{}", r.all());
    }
    // The private keys live in the token, where other applications see them.
    let r = n.certutil(&["-K", "-h", TOKEN]).ok();
    assert!(
        r.stdout.contains("rsa") && r.stdout.contains("ec"),
        "{}",
        r.all()
    );
    let r = n.h.user(&["--list-objects", "--type", "privkey"]).ok();
    assert!(
        r.stdout.contains("Private Key Object; RSA") && r.stdout.contains("Private Key Object; EC"),
        "{}",
        r.stdout
    );
    let r = openssl(&["x509", "-in", &rsa, "-noout", "-text"]).ok();
    assert!(r.stdout.contains("sha256WithRSAEncryption"), "{}", r.stdout);
    let r = openssl(&["x509", "-in", &ec, "-noout", "-text"]).ok();
    assert!(r.stdout.contains("ecdsa-with-SHA256"), "{}", r.stdout);
}

#[test]
fn selfserv_serves_tls_with_an_rsa_token_key() {
    let n = Nss::new();
    let cert = n.self_signed("server", "CN=localhost", &["-k", "rsa", "-g", "2048"]);
    let port = free_port();
    let mut c = n.h.timed("selfserv");
    c.args([
        "-d",
        &n.db,
        "-n",
        &format!("{TOKEN}:server"),
        "-p",
        &port.to_string(),
        "-f",
        &n.pwfile,
        "-V",
        "tls1.2:tls1.3",
    ]);
    let log = n.h.file("selfserv");
    let mut server = Background::start(c, &log);
    server.wait_for_port(port, &log);
    for (flag, want) in [
        ("-tls1_2", "Protocol version: TLSv1.2"),
        ("-tls1_3", "Protocol version: TLSv1.3"),
    ] {
        let mut c = timed("openssl");
        c.env_remove("OPENSSL_CONF").args([
            "s_client",
            "-brief",
            "-ign_eof",
            "-verify_return_error",
            "-connect",
            &format!("127.0.0.1:{port}"),
            flag,
            "-CAfile",
            &cert,
        ]);
        let r = run_with_input(&mut c, b"GET / HTTP/1.0\r\n\r\n");
        let all = r.all();
        assert_eq!(r.status, 0, "{flag}: {all}");
        assert!(all.contains("CONNECTION ESTABLISHED"), "{all}");
        assert!(all.contains("Verification: OK"), "{all}");
        assert!(all.contains(want), "{all}");
        assert!(r.stdout.contains("HTTP/1.0 200 OK"), "{flag}: {all}");
    }
    drop(server);
}
