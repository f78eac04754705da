//! The scenarios: what OpenSC's pkcs11-tool test scripts exercise (key generation per type,
//! sign/verify per mechanism checked by `openssl`, encryption, wrapping, allowed mechanisms,
//! import, URIs, `--test`), plus token and object management flows. Each runs on a fresh token.

use base16ct::lower::encode_string as hex;
use der::asn1::{AnyRef, BitStringRef, ObjectIdentifier, OctetStringRef, PrintableStringRef};
use der::{Decode, Encode};
use spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};

use crate::ctx::{Ctx, Fail, R, SO_PIN, TOKEN, USER_PIN, ensure};

/// One scenario.
pub(crate) struct Scenario {
    /// `group/name`, stable (the known-differences file refers to it).
    pub(crate) name: String,
    /// Tools it needs besides pkcs11-tool.
    pub(crate) needs: &'static [&'static str],
    /// Starts from an uninitialized token instead of an initialized one.
    pub(crate) bare: bool,
    /// The scenario itself.
    pub(crate) run: Box<dyn Fn(&Ctx) -> R + Send + Sync>,
}

const OPENSSL: &[&str] = &["openssl"];
const NONE: &[&str] = &[];

struct List(Vec<Scenario>);

impl List {
    fn add(
        &mut self,
        name: impl Into<String>,
        needs: &'static [&'static str],
        run: impl Fn(&Ctx) -> R + Send + Sync + 'static,
    ) {
        self.0.push(Scenario {
            name: name.into(),
            needs,
            bare: false,
            run: Box::new(run),
        });
    }
    fn add_bare(&mut self, name: &str, run: impl Fn(&Ctx) -> R + Send + Sync + 'static) {
        self.0.push(Scenario {
            name: name.to_owned(),
            needs: NONE,
            bare: true,
            run: Box::new(run),
        });
    }
}

/// A message to sign and encrypt (not a multiple of any block size).
const MESSAGE: &[u8] = b"FerroHSM conformance: the quick brown fox jumps over the lazy dog, \
    and every PKCS#11 module should sign this message the same way. 0123456789";

/// Every scenario, in report order.
pub(crate) fn all() -> Vec<Scenario> {
    let mut l = List(Vec::new());
    token(&mut l);
    pins(&mut l);
    objects(&mut l);
    keygen(&mut l);
    rsa(&mut l);
    ec(&mut l);
    symmetric(&mut l);
    wrapping(&mut l);
    policy(&mut l);
    import(&mut l);
    selftest(&mut l);
    crate::client::scenarios(&mut |name, run| {
        l.0.push(Scenario {
            name,
            needs: OPENSSL,
            bare: false,
            run,
        })
    });
    l.0
}

// ---------------------------------------------------------------- helpers

/// Generates a key pair with `--id id`.
fn keypair(ctx: &Ctx, key_type: &str, id: &str, extra: &[&str]) -> R {
    let mut args = vec![
        "--keypairgen",
        "--key-type",
        key_type,
        "--id",
        id,
        "--label",
        "kp",
    ];
    args.extend_from_slice(extra);
    ctx.user(&args).ok()?;
    Ok(())
}

/// Exports the public key `id` as `name.pem` (SubjectPublicKeyInfo), parsed by openssl.
///
/// pkcs11-tool 0.23 exports RSA and P-256 keys but fails on P-384/P-521 ("cannot create
/// EVP_PKEY") and writes Ed25519 keys in a form openssl does not read, whatever the module; for
/// those the SubjectPublicKeyInfo is built here from the `CKA_EC_PARAMS` and `CKA_EC_POINT` that
/// pkcs11-tool lists.
fn pubkey_pem(ctx: &Ctx, id: &str, name: &str) -> R {
    let der = format!("{name}.der");
    let pem = format!("{name}.pem");
    let read = ctx.tool(&[
        "--read-object",
        "--type",
        "pubkey",
        "--id",
        id,
        "-o",
        &ctx.path(&der),
    ]);
    let parsed = read.status == 0
        && ctx
            .openssl(&["pkey", "-pubin", "-inform", "DER", "-in", &der, "-noout"])
            .status
            == 0;
    if !parsed {
        let listing = ctx.tool(&["--list-objects", "--type", "pubkey"]).ok()?;
        let spki = spki_from_listing(&listing.stdout, id).ok_or_else(|| {
            Fail::Failed(format!(
                "public key {id}: pkcs11-tool could not export it ({}) and its listing has no EC_POINT/EC_PARAMS",
                read.brief()
            ))
        })?;
        ctx.write(&der, &spki)?;
    }
    ctx.openssl(&[
        "pkey", "-pubin", "-inform", "DER", "-in", &der, "-out", &pem,
    ])
    .ok()?;
    Ok(())
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    base16ct::mixed::decode_vec(s).ok()
}

/// The SubjectPublicKeyInfo of the EC or EdDSA public key `id` in a pkcs11-tool listing.
fn spki_from_listing(listing: &str, id: &str) -> Option<Vec<u8>> {
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    for line in listing.lines() {
        if !line.starts_with(' ') {
            blocks.push(Vec::new());
        }
        if let Some(b) = blocks.last_mut() {
            b.push(line);
        }
    }
    let block = blocks.iter().find(|b| {
        b.iter()
            .any(|l| l.trim_start().strip_prefix("ID:").map(str::trim) == Some(id))
    })?;
    let field = |name: &str| {
        block
            .iter()
            .find_map(|l| l.trim_start().strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(unhex)
    };
    let point_der = field("EC_POINT:")?;
    let params = field("EC_PARAMS:")?;
    // CKA_EC_POINT is a DER OCTET STRING around the point (or the raw point).
    let point = OctetStringRef::from_der(&point_der).map_or(&point_der[..], |o| o.as_bytes());
    let params = AnyRef::from_der(&params).ok()?;
    // Ed25519's parameters: the OID 1.3.101.112, or the printable string "edwards25519".
    let ed25519 = params.decode_as::<ObjectIdentifier>().ok() == Some(ED25519)
        || params
            .decode_as::<PrintableStringRef<'_>>()
            .is_ok_and(|s| s.as_str().contains("25519"));
    let algorithm = if ed25519 {
        AlgorithmIdentifierRef {
            oid: ED25519,
            parameters: None,
        }
    } else {
        AlgorithmIdentifierRef {
            oid: EC_PUBLIC_KEY,
            parameters: Some(params),
        }
    };
    SubjectPublicKeyInfoRef {
        algorithm,
        subject_public_key: BitStringRef::from_bytes(point).ok()?,
    }
    .to_der()
    .ok()
}

/// `id-ecPublicKey` (RFC 5480) and Ed25519 (RFC 8410).
const EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// The first `n` bytes of [`MESSAGE`].
fn prefix(n: usize) -> &'static [u8] {
    MESSAGE.get(..n).unwrap_or(MESSAGE)
}

fn message(ctx: &Ctx) -> R {
    ctx.write("msg", MESSAGE)
}

/// Signs `input` with key `id` and mechanism `mech`, writing `sig`.
fn sign(ctx: &Ctx, id: &str, mech: &str, input: &str, extra: &[&str]) -> R {
    let mut args = vec!["--sign", "--id", id, "-m", mech, "-i", input, "-o", "sig"];
    args.extend_from_slice(extra);
    ctx.user(&args).ok()?;
    Ok(())
}

/// Verifies `sig` over `input` inside the token.
fn token_verify(ctx: &Ctx, id: &str, mech: &str, input: &str, extra: &[&str]) -> R {
    let mut args = vec![
        "--verify",
        "--id",
        id,
        "-m",
        mech,
        "-i",
        input,
        "--signature-file",
        "sig",
    ];
    args.extend_from_slice(extra);
    ctx.user(&args).ok()?.shows("Signature is valid")?;
    Ok(())
}

fn openssl_verified(r: crate::ctx::Run) -> R {
    let r = r.ok()?;
    ensure(
        r.all().contains("Verified OK") || r.all().contains("Signature Verified Successfully"),
        format!("openssl did not verify: {}", r.brief()),
    )
}

/// The OpenSSL digest option for a PKCS#11 hash name.
fn ossl_md(hash: &str) -> &'static str {
    match hash {
        "SHA1" | "SHA-1" => "sha1",
        "SHA224" => "sha224",
        "SHA256" => "sha256",
        "SHA384" => "sha384",
        _ => "sha512",
    }
}

// ---------------------------------------------------------------- token

fn token(l: &mut List) {
    l.add("token/show-info", NONE, |ctx| {
        ctx.raw_tool(&["--show-info"])
            .ok()?
            .shows("Cryptoki version")?;
        Ok(())
    });
    l.add("token/list-slots-flags", NONE, |ctx| {
        let r = ctx.raw_tool(&["--list-token-slots"]).ok()?;
        let r = r.shows(TOKEN)?;
        for flag in ["login required", "PIN initialized", "token initialized"] {
            ensure(r.all().contains(flag), format!("token flags lack {flag:?}"))?;
        }
        Ok(())
    });
    l.add("token/list-mechanisms", NONE, |ctx| {
        let r = ctx.tool(&["--list-mechanisms"]).ok()?;
        for m in ["SHA256-RSA-PKCS", "ECDSA", "AES-CBC-PAD", "SHA256"] {
            ensure(r.all().contains(m), format!("mechanism list lacks {m}"))?;
        }
        Ok(())
    });
    l.add_bare("token/init-token", |ctx| {
        ctx.init_token()?;
        ctx.tool(&["--list-token-slots"]).ok()?.shows(TOKEN)?;
        ctx.user(&["--list-objects"]).ok()?;
        Ok(())
    });
    l.add("token/reinit-wipes-objects", NONE, |ctx| {
        message(ctx)?;
        ctx.user(&["--write-object", "msg", "--type", "data", "--label", "d1"])
            .ok()?;
        ctx.raw_tool(&[
            "--init-token",
            "--token-label",
            TOKEN,
            "--label",
            TOKEN,
            "--so-pin",
            SO_PIN,
        ])
        .ok()?;
        ctx.tool(&[
            "--init-pin",
            "--login",
            "--so-pin",
            SO_PIN,
            "--pin",
            USER_PIN,
        ])
        .ok()?;
        let r = ctx.user(&["--list-objects"]).ok()?;
        ensure(!r.all().contains("d1"), "objects survived C_InitToken")
    });
    l.add_bare("token/so-pin-length-range", |ctx| {
        ctx.raw_tool(&[
            "--init-token",
            "--slot-index",
            "0",
            "--label",
            TOKEN,
            "--so-pin",
            "123",
        ])
        .fails_with("CKR_PIN_LEN_RANGE")
    });
    l.add("token/generate-random", NONE, |ctx| {
        ctx.tool(&["--generate-random", "64", "-o", "rnd"]).ok()?;
        let r = ctx.read("rnd")?;
        ensure(r.len() == 64, format!("{} random bytes, asked 64", r.len()))?;
        ensure(r.iter().any(|b| *b != 0), "random bytes are all zero")
    });
    l.add("token/uri", &["p11tool"], |ctx| {
        // pkcs11-tool 0.23 prints no URIs; GnuTLS's p11tool lists RFC 7512 token URIs.
        let module = ctx.target.module.display().to_string();
        let r = ctx
            .sh("p11tool", &["--provider", &module, "--list-token-urls"])
            .ok()?;
        let r = r.shows(&format!("token={TOKEN}"))?;
        ensure(
            r.stdout
                .lines()
                .any(|l| l.starts_with("pkcs11:") && l.contains("manufacturer=")),
            "token URI lacks pkcs11: or manufacturer=",
        )
    });
    for (mech, tool) in [
        ("SHA-1", "sha1sum"),
        ("SHA224", "sha224sum"),
        ("SHA256", "sha256sum"),
        ("SHA384", "sha384sum"),
        ("SHA512", "sha512sum"),
        ("MD5", "md5sum"),
    ] {
        l.add(format!("hash/{mech}"), NONE, move |ctx| {
            message(ctx)?;
            ctx.tool(&["--hash", "-m", mech, "-i", "msg", "-o", "h"])
                .ok()?;
            let ours = hex(&ctx.read("h")?);
            let r = ctx.sh(tool, &["msg"]).ok()?;
            ensure(
                r.stdout.starts_with(&ours) && !ours.is_empty(),
                format!("{mech}: token {ours}, {tool} {}", r.stdout.trim()),
            )
        });
    }
}

// ---------------------------------------------------------------- PINs

fn pins(l: &mut List) {
    l.add("pin/login-user", NONE, |ctx| {
        ctx.user(&["--list-objects"]).ok()?;
        Ok(())
    });
    l.add("pin/wrong-pin", NONE, |ctx| {
        ctx.tool(&["--login", "--pin", "999999", "--list-objects"])
            .fails_with("CKR_PIN_INCORRECT")
    });
    l.add("pin/change-user-pin", NONE, |ctx| {
        ctx.tool(&[
            "--change-pin",
            "--login",
            "--pin",
            USER_PIN,
            "--new-pin",
            "654321",
        ])
        .ok()?;
        ctx.tool(&["--login", "--pin", "654321", "--list-objects"])
            .ok()?;
        ctx.tool(&["--login", "--pin", USER_PIN, "--list-objects"])
            .fails_with("CKR_PIN_INCORRECT")
    });
    l.add("pin/change-so-pin", NONE, |ctx| {
        ctx.tool(&[
            "--change-pin",
            "--login",
            "--login-type",
            "so",
            "--so-pin",
            SO_PIN,
            "--new-pin",
            "87654321",
        ])
        .ok()?;
        ctx.tool(&[
            "--init-pin",
            "--login",
            "--so-pin",
            "87654321",
            "--pin",
            "111111",
        ])
        .ok()?;
        ctx.tool(&["--login", "--pin", "111111", "--list-objects"])
            .ok()?;
        Ok(())
    });
    l.add("pin/so-resets-user-pin", NONE, |ctx| {
        ctx.tool(&[
            "--init-pin",
            "--login",
            "--so-pin",
            SO_PIN,
            "--pin",
            "222222",
        ])
        .ok()?;
        ctx.tool(&["--login", "--pin", "222222", "--list-objects"])
            .ok()?;
        Ok(())
    });
    l.add("pin/user-pin-length-range", NONE, |ctx| {
        ctx.tool(&["--init-pin", "--login", "--so-pin", SO_PIN, "--pin", "12"])
            .fails_with("CKR_PIN_LEN_RANGE")
    });
    l.add("pin/count-low-flag", NONE, |ctx| {
        ctx.tool(&["--login", "--pin", "999999", "--list-objects"])
            .fails_with("CKR_PIN_INCORRECT")?;
        ctx.raw_tool(&["--list-token-slots"])
            .ok()?
            .shows("user PIN count low")?;
        // A good login resets the counter.
        ctx.user(&["--list-objects"]).ok()?;
        let r = ctx.raw_tool(&["--list-token-slots"]).ok()?;
        ensure(
            !r.all().contains("user PIN count low"),
            "counter not reset by a good login",
        )
    });
    l.add("pin/lockout-and-so-unlock", NONE, |ctx| {
        let mut locked = false;
        for _ in 0..12 {
            let r = ctx.tool(&["--login", "--pin", "999999", "--list-objects"]);
            if r.all().contains("CKR_PIN_LOCKED") {
                locked = true;
                break;
            }
        }
        ensure(
            locked,
            "the user PIN never locked after repeated wrong PINs",
        )?;
        ctx.tool(&["--login", "--pin", USER_PIN, "--list-objects"])
            .fails_with("CKR_PIN_LOCKED")?;
        ctx.raw_tool(&["--list-token-slots"])
            .ok()?
            .shows("user PIN locked")?;
        ctx.tool(&[
            "--init-pin",
            "--login",
            "--so-pin",
            SO_PIN,
            "--pin",
            USER_PIN,
        ])
        .ok()?;
        ctx.user(&["--list-objects"]).ok()?;
        Ok(())
    });
}

// ---------------------------------------------------------------- objects

fn objects(l: &mut List) {
    l.add("data/write-read", NONE, |ctx| {
        message(ctx)?;
        ctx.user(&["--write-object", "msg", "--type", "data", "--label", "d1"])
            .ok()?;
        ctx.user(&[
            "--read-object",
            "--type",
            "data",
            "--label",
            "d1",
            "-o",
            "back",
        ])
        .ok()?;
        ensure(
            ctx.read("back")? == MESSAGE,
            "data object read back differs",
        )
    });
    l.add("data/private-needs-login", NONE, |ctx| {
        message(ctx)?;
        ctx.user(&[
            "--write-object",
            "msg",
            "--type",
            "data",
            "--label",
            "secret-data",
            "--private",
        ])
        .ok()?;
        let anon = ctx.tool(&["--list-objects"]).ok()?;
        ensure(
            !anon.all().contains("secret-data"),
            "private object visible without login",
        )?;
        ctx.user(&["--list-objects"]).ok()?.shows("secret-data")?;
        Ok(())
    });
    l.add("data/delete", NONE, |ctx| {
        message(ctx)?;
        ctx.user(&["--write-object", "msg", "--type", "data", "--label", "gone"])
            .ok()?;
        ctx.user(&["--delete-object", "--type", "data", "--label", "gone"])
            .ok()?;
        let r = ctx.user(&["--list-objects"]).ok()?;
        ensure(!r.all().contains("gone"), "deleted object still listed")
    });
    l.add("cert/import-read", OPENSSL, |ctx| {
        ctx.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "k.pem",
            "-subj",
            "/CN=conformance",
            "-days",
            "2",
            "-outform",
            "DER",
            "-out",
            "cert.der",
        ])
        .ok()?;
        ctx.user(&[
            "--write-object",
            "cert.der",
            "--type",
            "cert",
            "--id",
            "0a",
            "--label",
            "c1",
        ])
        .ok()?;
        ctx.tool(&[
            "--read-object",
            "--type",
            "cert",
            "--id",
            "0a",
            "-o",
            "back.der",
        ])
        .ok()?;
        ensure(
            ctx.read("back.der")? == ctx.read("cert.der")?,
            "certificate read back differs",
        )?;
        ctx.tool(&["--list-objects", "--type", "cert"])
            .ok()?
            .shows("conformance")?;
        Ok(())
    });
    l.add("objects/set-id", NONE, |ctx| {
        keypair(ctx, "rsa:1024", "01", &[])?;
        ctx.user(&["--set-id", "42", "--id", "01", "--type", "privkey"])
            .ok()?;
        message(ctx)?;
        sign(ctx, "42", "SHA256-RSA-PKCS", "msg", &[])?;
        Ok(())
    });
    l.add("objects/secret-value-unreadable", NONE, |ctx| {
        ctx.user(&[
            "--keygen",
            "--private",
            "--key-type",
            "AES:32",
            "--id",
            "07",
            "--label",
            "s",
            "--sensitive",
        ])
        .ok()?;
        let r = ctx.user(&[
            "--read-object",
            "--type",
            "secrkey",
            "--id",
            "07",
            "-o",
            "v",
        ]);
        ensure(r.status != 0, "the value of a sensitive key was read")?;
        ensure(
            std::fs::metadata(ctx.path("v"))
                .map(|m| m.len())
                .unwrap_or(0)
                == 0,
            "key bytes were written out",
        )
    });
}

// ---------------------------------------------------------------- key generation

fn keygen(l: &mut List) {
    // pkcs11-tool 0.23 prints the EC_POINT size as (octets - 1) * 4: 528 for P-521.
    for (name, kt, shows, bits) in [
        ("rsa-1024", "rsa:1024", "RSA 1024", "1024"),
        ("rsa-2048", "rsa:2048", "RSA 2048", "2048"),
        ("rsa-3072", "rsa:3072", "RSA 3072", "3072"),
        ("rsa-4096", "rsa:4096", "RSA 4096", "4096"),
        ("ec-p256", "EC:prime256v1", "EC_POINT 256", "256"),
        ("ec-p384", "EC:secp384r1", "EC_POINT 384", "384"),
        ("ec-p521", "EC:secp521r1", "EC_POINT 528", "521"),
    ] {
        l.add(format!("keygen/{name}"), OPENSSL, move |ctx| {
            keypair(ctx, kt, "01", &[])?;
            ctx.tool(&["--list-objects", "--type", "pubkey"])
                .ok()?
                .shows(shows)?;
            pubkey_pem(ctx, "01", "pub")?;
            let r = ctx
                .openssl(&["pkey", "-pubin", "-in", "pub.pem", "-noout", "-text"])
                .ok()?;
            ensure(
                r.all().contains(&format!("{bits} bit")),
                format!("openssl sees a different key size: {}", r.brief()),
            )
        });
    }
    l.add("keygen/ed25519", OPENSSL, |ctx| {
        keypair(ctx, "EC:edwards25519", "01", &[])?;
        ctx.tool(&["--list-objects", "--type", "pubkey"]).ok()?;
        pubkey_pem(ctx, "01", "pub")?;
        ctx.openssl(&["pkey", "-pubin", "-in", "pub.pem", "-noout", "-text"])
            .ok()?
            .shows("ED25519")?;
        Ok(())
    });
    for (name, kt, shows) in [
        ("aes-128", "AES:16", "AES length 16"),
        ("aes-192", "AES:24", "AES length 24"),
        ("aes-256", "AES:32", "AES length 32"),
        ("generic-32", "GENERIC:32", "Generic secret length 32"),
    ] {
        l.add(format!("keygen/{name}"), NONE, move |ctx| {
            ctx.user(&[
                "--keygen",
                "--private",
                "--key-type",
                kt,
                "--id",
                "02",
                "--label",
                "sk",
            ])
            .ok()?;
            ctx.user(&["--list-objects", "--type", "secrkey"])
                .ok()?
                .shows(shows)?;
            Ok(())
        });
    }
}

// ---------------------------------------------------------------- RSA

fn rsa(l: &mut List) {
    for hash in ["SHA1", "SHA224", "SHA256", "SHA384", "SHA512"] {
        l.add(format!("sign/{hash}-RSA-PKCS"), OPENSSL, move |ctx| {
            keypair(ctx, "rsa:2048", "01", &[])?;
            pubkey_pem(ctx, "01", "pub")?;
            message(ctx)?;
            let mech = format!("{hash}-RSA-PKCS");
            sign(ctx, "01", &mech, "msg", &[])?;
            let md = format!("-{}", ossl_md(hash));
            openssl_verified(ctx.openssl(&[
                "dgst",
                &md,
                "-verify",
                "pub.pem",
                "-signature",
                "sig",
                "msg",
            ]))?;
            token_verify(ctx, "01", &mech, "msg", &[])
        });
        l.add(format!("sign/{hash}-RSA-PKCS-PSS"), OPENSSL, move |ctx| {
            keypair(ctx, "rsa:2048", "01", &[])?;
            pubkey_pem(ctx, "01", "pub")?;
            message(ctx)?;
            let mech = format!("{hash}-RSA-PKCS-PSS");
            // pkcs11-tool derives the hash, MGF1 and salt length from the mechanism.
            sign(ctx, "01", &mech, "msg", &[])?;
            let md = format!("-{}", ossl_md(hash));
            openssl_verified(ctx.openssl(&[
                "dgst",
                &md,
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:-1",
                "-verify",
                "pub.pem",
                "-signature",
                "sig",
                "msg",
            ]))?;
            token_verify(ctx, "01", &mech, "msg", &[])
        });
    }
    l.add("sign/RSA-PKCS-PSS-prehashed", OPENSSL, |ctx| {
        keypair(ctx, "rsa:2048", "01", &[])?;
        pubkey_pem(ctx, "01", "pub")?;
        message(ctx)?;
        ctx.openssl(&["dgst", "-sha256", "-binary", "-out", "h", "msg"])
            .ok()?;
        let pss = ["--hash-algorithm", "SHA256", "--mgf", "MGF1-SHA256"];
        sign(ctx, "01", "RSA-PKCS-PSS", "h", &pss)?;
        openssl_verified(ctx.openssl(&[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            "pub.pem",
            "-in",
            "h",
            "-sigfile",
            "sig",
            "-pkeyopt",
            "digest:sha256",
            "-pkeyopt",
            "rsa_padding_mode:pss",
            "-pkeyopt",
            "rsa_pss_saltlen:-1",
        ]))
    });
    l.add("sign/RSA-PKCS-raw", OPENSSL, |ctx| {
        keypair(ctx, "rsa:2048", "01", &[])?;
        pubkey_pem(ctx, "01", "pub")?;
        ctx.write("short", b"DigestInfo-or-anything-short")?;
        sign(ctx, "01", "RSA-PKCS", "short", &[])?;
        let r = ctx
            .openssl(&[
                "pkeyutl",
                "-verifyrecover",
                "-pubin",
                "-inkey",
                "pub.pem",
                "-in",
                "sig",
                "-out",
                "rec",
            ])
            .ok()?;
        drop(r);
        ensure(
            ctx.read("rec")? == b"DigestInfo-or-anything-short",
            "openssl recovered different data",
        )?;
        token_verify(ctx, "01", "RSA-PKCS", "short", &[])
    });
    l.add("sign/RSA-X-509", OPENSSL, |ctx| {
        keypair(ctx, "rsa:2048", "01", &[])?;
        pubkey_pem(ctx, "01", "pub")?;
        let mut block = vec![0u8; 256];
        for (i, b) in block.iter_mut().enumerate().skip(1) {
            *b = u8::try_from(i % 251).unwrap_or(0);
        }
        ctx.write("block", &block)?;
        sign(ctx, "01", "RSA-X-509", "block", &[])?;
        ctx.openssl(&[
            "pkeyutl",
            "-verifyrecover",
            "-pubin",
            "-inkey",
            "pub.pem",
            "-in",
            "sig",
            "-pkeyopt",
            "rsa_padding_mode:none",
            "-out",
            "rec",
        ])
        .ok()?;
        ensure(
            ctx.read("rec")? == block,
            "raw RSA: openssl recovered different data",
        )
    });
    l.add("decrypt/RSA-PKCS", OPENSSL, |ctx| {
        keypair(ctx, "rsa:2048", "01", &[])?;
        pubkey_pem(ctx, "01", "pub")?;
        message(ctx)?;
        ctx.openssl(&[
            "pkeyutl", "-encrypt", "-pubin", "-inkey", "pub.pem", "-in", "msg", "-out", "ct",
        ])
        .ok()?;
        ctx.user(&[
            "--decrypt",
            "--id",
            "01",
            "-m",
            "RSA-PKCS",
            "-i",
            "ct",
            "-o",
            "pt",
        ])
        .ok()?;
        ensure(
            ctx.read("pt")? == MESSAGE,
            "RSA-PKCS: decrypted text differs",
        )
    });
    for hash in ["SHA1", "SHA224", "SHA256", "SHA384", "SHA512"] {
        l.add(
            format!("decrypt/RSA-PKCS-OAEP-{hash}"),
            OPENSSL,
            move |ctx| {
                keypair(ctx, "rsa:2048", "01", &[])?;
                pubkey_pem(ctx, "01", "pub")?;
                ctx.write("short", prefix(64))?;
                let md = format!("rsa_oaep_md:{}", ossl_md(hash));
                let mgf = format!("rsa_mgf1_md:{}", ossl_md(hash));
                ctx.openssl(&[
                    "pkeyutl",
                    "-encrypt",
                    "-pubin",
                    "-inkey",
                    "pub.pem",
                    "-in",
                    "short",
                    "-out",
                    "ct",
                    "-pkeyopt",
                    "rsa_padding_mode:oaep",
                    "-pkeyopt",
                    &md,
                    "-pkeyopt",
                    &mgf,
                ])
                .ok()?;
                let hname = if hash == "SHA1" { "SHA-1" } else { hash };
                let tmgf = format!("MGF1-{hash}");
                ctx.user(&[
                    "--decrypt",
                    "--id",
                    "01",
                    "-m",
                    "RSA-PKCS-OAEP",
                    "--hash-algorithm",
                    hname,
                    "--mgf",
                    &tmgf,
                    "-i",
                    "ct",
                    "-o",
                    "pt",
                ])
                .ok()?;
                ensure(
                    ctx.read("pt")? == *prefix(64),
                    "RSA-OAEP: decrypted text differs",
                )
            },
        );
    }
}

// ---------------------------------------------------------------- EC, EdDSA, ECDH

fn ec(l: &mut List) {
    for (mech, curve, md) in [
        ("ECDSA-SHA1", "prime256v1", "sha1"),
        ("ECDSA-SHA224", "prime256v1", "sha224"),
        ("ECDSA-SHA256", "prime256v1", "sha256"),
        ("ECDSA-SHA384", "secp384r1", "sha384"),
        ("ECDSA-SHA512", "secp521r1", "sha512"),
    ] {
        l.add(format!("sign/{mech}-{curve}"), OPENSSL, move |ctx| {
            keypair(ctx, &format!("EC:{curve}"), "01", &[])?;
            pubkey_pem(ctx, "01", "pub")?;
            message(ctx)?;
            sign(ctx, "01", mech, "msg", &["--signature-format", "openssl"])?;
            let md = format!("-{md}");
            openssl_verified(ctx.openssl(&[
                "dgst",
                &md,
                "-verify",
                "pub.pem",
                "-signature",
                "sig",
                "msg",
            ]))?;
            // The token verifies its own raw (r||s) signature too.
            sign(ctx, "01", mech, "msg", &[])?;
            token_verify(ctx, "01", mech, "msg", &[])
        });
    }
    for (curve, md) in [
        ("prime256v1", "sha256"),
        ("secp384r1", "sha384"),
        ("secp521r1", "sha512"),
    ] {
        l.add(
            format!("sign/ECDSA-prehashed-{curve}"),
            OPENSSL,
            move |ctx| {
                keypair(ctx, &format!("EC:{curve}"), "01", &[])?;
                pubkey_pem(ctx, "01", "pub")?;
                message(ctx)?;
                let md = format!("-{md}");
                ctx.openssl(&["dgst", &md, "-binary", "-out", "h", "msg"])
                    .ok()?;
                sign(ctx, "01", "ECDSA", "h", &["--signature-format", "openssl"])?;
                openssl_verified(ctx.openssl(&[
                    "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-in", "h", "-sigfile",
                    "sig",
                ]))
            },
        );
    }
    l.add("sign/EDDSA-ed25519", OPENSSL, |ctx| {
        keypair(ctx, "EC:edwards25519", "01", &[])?;
        pubkey_pem(ctx, "01", "pub")?;
        message(ctx)?;
        sign(ctx, "01", "EDDSA", "msg", &[])?;
        openssl_verified(ctx.openssl(&[
            "pkeyutl", "-verify", "-pubin", "-inkey", "pub.pem", "-rawin", "-in", "msg",
            "-sigfile", "sig",
        ]))?;
        token_verify(ctx, "01", "EDDSA", "msg", &[])
    });
    for (curve, ocurve) in [("prime256v1", "P-256"), ("secp384r1", "P-384")] {
        l.add(format!("derive/ECDH1-{curve}"), OPENSSL, move |ctx| {
            keypair(ctx, &format!("EC:{curve}"), "01", &["--usage-derive"])?;
            pubkey_pem(ctx, "01", "token")?;
            let opt = format!("ec_paramgen_curve:{ocurve}");
            ctx.openssl(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                &opt,
                "-out",
                "peer.pem",
            ])
            .ok()?;
            ctx.openssl(&[
                "pkey", "-in", "peer.pem", "-pubout", "-outform", "DER", "-out", "peer.der",
            ])
            .ok()?;
            ctx.user(&[
                "--derive",
                "-m",
                "ECDH1-DERIVE",
                "--id",
                "01",
                "--input-file",
                "peer.der",
                "-o",
                "z-token",
            ])
            .ok()?;
            ctx.openssl(&[
                "pkeyutl",
                "-derive",
                "-inkey",
                "peer.pem",
                "-peerkey",
                "token.pem",
                "-out",
                "z-openssl",
            ])
            .ok()?;
            let (a, b) = (ctx.read("z-token")?, ctx.read("z-openssl")?);
            ensure(
                !a.is_empty() && a == b,
                format!("shared secrets differ ({} vs {} bytes)", a.len(), b.len()),
            )
        });
    }
}

// ---------------------------------------------------------------- AES, HMAC, CMAC

/// Imports a known AES key (extractable, so openssl can be given the same bytes).
fn known_aes(ctx: &Ctx, bytes: usize) -> Result<String, Fail> {
    let key: Vec<u8> = (0..bytes)
        .map(|i| {
            u8::try_from(i % 256)
                .unwrap_or(0)
                .wrapping_mul(7)
                .wrapping_add(3)
        })
        .collect();
    ctx.write("aes.key", &key)?;
    let kt = format!("AES:{bytes}");
    ctx.user(&[
        "--write-object",
        "aes.key",
        "--type",
        "secrkey",
        "--key-type",
        &kt,
        "--id",
        "05",
        "--label",
        "aes",
        "--usage-decrypt",
        "--usage-wrap",
        "--extractable",
    ])
    .ok()?;
    Ok(hex(&key))
}

fn symmetric(l: &mut List) {
    const IV: &str = "000102030405060708090a0b0c0d0e0f";
    for (mech, cipher, pad, len) in [
        ("AES-ECB", "aes-128-ecb", false, 16),
        ("AES-CBC", "aes-128-cbc", false, 16),
        ("AES-CBC-PAD", "aes-128-cbc", true, 16),
        ("AES-CBC-PAD", "aes-256-cbc", true, 32),
    ] {
        l.add(format!("encrypt/{mech}-{}", len * 8), OPENSSL, move |ctx| {
            let key = known_aes(ctx, len)?;
            let input: &[u8] = if pad { MESSAGE } else { prefix(128) };
            ctx.write("pt", input)?;
            let mut args = vec![
                "--encrypt",
                "--id",
                "05",
                "-m",
                mech,
                "-i",
                "pt",
                "-o",
                "ct",
            ];
            if mech != "AES-ECB" {
                args.extend_from_slice(&["--iv", IV]);
            }
            ctx.user(&args).ok()?;
            let c = format!("-{cipher}");
            let mut o = vec![
                "enc",
                c.as_str(),
                "-K",
                key.as_str(),
                "-in",
                "pt",
                "-out",
                "ct-openssl",
            ];
            if mech != "AES-ECB" {
                o.extend_from_slice(&["-iv", IV]);
            }
            if !pad {
                o.push("-nopad");
            }
            ctx.openssl(&o).ok()?;
            ensure(
                ctx.read("ct")? == ctx.read("ct-openssl")?,
                format!("{mech}: ciphertext differs from openssl's"),
            )?;
            // And back.
            let mut d = vec![
                "--decrypt",
                "--id",
                "05",
                "-m",
                mech,
                "-i",
                "ct-openssl",
                "-o",
                "back",
            ];
            if mech != "AES-ECB" {
                d.extend_from_slice(&["--iv", IV]);
            }
            ctx.user(&d).ok()?;
            ensure(
                ctx.read("back")? == input,
                format!("{mech}: decryption differs"),
            )
        });
    }
    l.add("encrypt/AES-CBC-PAD-generated-key", NONE, |ctx| {
        ctx.user(&[
            "--keygen",
            "--private",
            "--key-type",
            "AES:32",
            "--id",
            "06",
            "--label",
            "g",
        ])
        .ok()?;
        message(ctx)?;
        ctx.user(&[
            "--encrypt",
            "--id",
            "06",
            "-m",
            "AES-CBC-PAD",
            "--iv",
            IV,
            "-i",
            "msg",
            "-o",
            "ct",
        ])
        .ok()?;
        ctx.user(&[
            "--decrypt",
            "--id",
            "06",
            "-m",
            "AES-CBC-PAD",
            "--iv",
            IV,
            "-i",
            "ct",
            "-o",
            "pt",
        ])
        .ok()?;
        ensure(ctx.read("pt")? == MESSAGE, "round trip differs")
    });
}

// ---------------------------------------------------------------- wrap / unwrap

fn wrapping(l: &mut List) {
    l.add("wrap/AES-KEY-WRAP", OPENSSL, |ctx| {
        // KEK: a known key; target: a known extractable key; compare with openssl's wrap.
        let kek = known_aes(ctx, 16)?;
        let target: Vec<u8> = (100u8..132).collect();
        ctx.write("target.key", &target)?;
        ctx.user(&[
            "--write-object",
            "target.key",
            "--type",
            "secrkey",
            "--key-type",
            "AES:32",
            "--id",
            "09",
            "--label",
            "target",
            "--extractable",
        ])
        .ok()?;
        ctx.user(&[
            "--wrap",
            "-m",
            "AES-KEY-WRAP",
            "--id",
            "05",
            "--application-id",
            "09",
            "-o",
            "wrapped",
        ])
        .ok()?;
        ctx.openssl(&[
            "enc",
            "-id-aes128-wrap",
            "-K",
            &kek,
            "-iv",
            "A6A6A6A6A6A6A6A6",
            "-in",
            "target.key",
            "-out",
            "wrapped-openssl",
        ])
        .ok()?;
        ensure(
            ctx.read("wrapped")? == ctx.read("wrapped-openssl")?,
            "AES key wrap (RFC 3394) differs from openssl's",
        )
    });
    l.add("unwrap/AES-KEY-WRAP", OPENSSL, |ctx| {
        let kek = known_aes(ctx, 16)?;
        let target: Vec<u8> = (200u8..216).collect();
        ctx.write("target.key", &target)?;
        ctx.openssl(&[
            "enc",
            "-id-aes128-wrap",
            "-K",
            &kek,
            "-iv",
            "A6A6A6A6A6A6A6A6",
            "-in",
            "target.key",
            "-out",
            "wrapped",
        ])
        .ok()?;
        ctx.user(&[
            "--unwrap",
            "-m",
            "AES-KEY-WRAP",
            "--id",
            "05",
            "-i",
            "wrapped",
            "--key-type",
            "AES:",
            "--application-id",
            "0b",
            "--application-label",
            "unwrapped",
            "--extractable",
        ])
        .ok()?;
        // Use the unwrapped key and compare with openssl using the original bytes.
        ctx.write("block", prefix(64))?;
        ctx.user(&[
            "--encrypt",
            "--id",
            "0b",
            "-m",
            "AES-ECB",
            "-i",
            "block",
            "-o",
            "ct",
        ])
        .ok()?;
        ctx.openssl(&[
            "enc",
            "-aes-128-ecb",
            "-nopad",
            "-K",
            &hex(&target),
            "-in",
            "block",
            "-out",
            "ct-openssl",
        ])
        .ok()?;
        ensure(
            ctx.read("ct")? == ctx.read("ct-openssl")?,
            "the unwrapped key encrypts differently from the original",
        )
    });
    l.add("wrap/unextractable-refused", NONE, |ctx| {
        known_aes(ctx, 16)?;
        ctx.user(&[
            "--keygen",
            "--private",
            "--key-type",
            "AES:16",
            "--id",
            "0c",
            "--label",
            "locked",
        ])
        .ok()?;
        ctx.user(&[
            "--wrap",
            "-m",
            "AES-KEY-WRAP",
            "--id",
            "05",
            "--application-id",
            "0c",
            "-o",
            "wrapped",
        ])
        .fails_with("CKR_KEY_UNEXTRACTABLE")
    });
}

// ---------------------------------------------------------------- allowed mechanisms

fn policy(l: &mut List) {
    l.add("allowed-mechanisms/rsa", OPENSSL, |ctx| {
        keypair(
            ctx,
            "rsa:2048",
            "01",
            &["--allowed-mechanisms", "SHA256-RSA-PKCS,RSA-PKCS-PSS"],
        )?;
        message(ctx)?;
        sign(ctx, "01", "SHA256-RSA-PKCS", "msg", &[])?;
        ctx.user(&[
            "--sign",
            "--id",
            "01",
            "-m",
            "SHA384-RSA-PKCS",
            "-i",
            "msg",
            "-o",
            "sig2",
        ])
        .fails_with("CKR_MECHANISM_INVALID")
    });
    l.add("allowed-mechanisms/ec", OPENSSL, |ctx| {
        keypair(
            ctx,
            "EC:prime256v1",
            "01",
            &["--allowed-mechanisms", "ECDSA-SHA256"],
        )?;
        message(ctx)?;
        sign(ctx, "01", "ECDSA-SHA256", "msg", &[])?;
        ctx.user(&[
            "--sign",
            "--id",
            "01",
            "-m",
            "ECDSA-SHA384",
            "-i",
            "msg",
            "-o",
            "sig2",
        ])
        .fails_with("CKR_MECHANISM_INVALID")
    });
    l.add("always-authenticate/sign", OPENSSL, |ctx| {
        keypair(ctx, "EC:prime256v1", "01", &["--always-auth"])?;
        pubkey_pem(ctx, "01", "pub")?;
        message(ctx)?;
        // pkcs11-tool logs in again (CKU_CONTEXT_SPECIFIC) after C_SignInit.
        sign(
            ctx,
            "01",
            "ECDSA-SHA256",
            "msg",
            &["--signature-format", "openssl"],
        )?;
        openssl_verified(ctx.openssl(&[
            "dgst",
            "-sha256",
            "-verify",
            "pub.pem",
            "-signature",
            "sig",
            "msg",
        ]))
    });
}

// ---------------------------------------------------------------- import

fn import(l: &mut List) {
    for (name, gen_args, mech, md) in [
        (
            "rsa",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
            "SHA256-RSA-PKCS",
            "-sha256",
        ),
        (
            "ec-p256",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..],
            "ECDSA-SHA256",
            "-sha256",
        ),
        (
            "ec-p384",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"][..],
            "ECDSA-SHA384",
            "-sha384",
        ),
    ] {
        l.add(format!("import/{name}-private-key"), OPENSSL, move |ctx| {
            let mut g = vec!["genpkey"];
            g.extend_from_slice(gen_args);
            g.extend_from_slice(&["-out", "k.pem"]);
            ctx.openssl(&g).ok()?;
            ctx.openssl(&["pkey", "-in", "k.pem", "-pubout", "-out", "pub.pem"])
                .ok()?;
            ctx.user(&[
                "--write-object",
                "k.pem",
                "--type",
                "privkey",
                "--id",
                "0d",
                "--label",
                "imported",
            ])
            .ok()?;
            message(ctx)?;
            sign(ctx, "0d", mech, "msg", &["--signature-format", "openssl"])?;
            openssl_verified(ctx.openssl(&[
                "dgst",
                md,
                "-verify",
                "pub.pem",
                "-signature",
                "sig",
                "msg",
            ]))
        });
    }
    l.add("import/public-key-verifies", OPENSSL, |ctx| {
        ctx.openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "k.pem",
        ])
        .ok()?;
        ctx.openssl(&[
            "pkey", "-in", "k.pem", "-pubout", "-outform", "DER", "-out", "pub.der",
        ])
        .ok()?;
        ctx.user(&[
            "--write-object",
            "pub.der",
            "--type",
            "pubkey",
            "--id",
            "0e",
            "--label",
            "pub",
        ])
        .ok()?;
        message(ctx)?;
        ctx.openssl(&["dgst", "-sha256", "-sign", "k.pem", "-out", "sig", "msg"])
            .ok()?;
        token_verify(ctx, "0e", "SHA256-RSA-PKCS", "msg", &[])
    });
    l.add("import/secret-key-read-back", NONE, |ctx| {
        known_aes(ctx, 32)?;
        ctx.user(&[
            "--read-object",
            "--type",
            "secrkey",
            "--id",
            "05",
            "-o",
            "back",
        ])
        .ok()?;
        ensure(
            ctx.read("back")? == ctx.read("aes.key")?,
            "extractable, non-sensitive secret read back differs",
        )
    });
}

// ---------------------------------------------------------------- pkcs11-tool's own tests

fn selftest(l: &mut List) {
    l.add("selftest/test", NONE, |ctx| {
        // The set: RSA-2048, P-256, P-384, P-521 key pairs and an AES key.
        keypair(ctx, "rsa:2048", "01", &[])?;
        keypair(ctx, "EC:prime256v1", "03", &[])?;
        keypair(ctx, "EC:secp384r1", "04", &[])?;
        keypair(ctx, "EC:secp521r1", "05", &[])?;
        ctx.user(&[
            "--keygen",
            "--private",
            "--key-type",
            "AES:32",
            "--id",
            "02",
            "--label",
            "aes",
        ])
        .ok()?;
        let r = ctx.user(&["--test"]);
        let all = r.all();
        ensure(
            r.status == 0 && all.contains("No errors"),
            format!("pkcs11-tool --test: {}", r.brief()),
        )
    });
    l.add("selftest/test-ec", NONE, |ctx| {
        let r = ctx.tool(&[
            "--login",
            "--pin",
            USER_PIN,
            "--session-rw",
            "--test-ec",
            "--key-type",
            "EC:prime256v1",
            "--id",
            "03",
            "--label",
            "ec-test",
        ]);
        ensure(
            r.status == 0 && !r.all().contains("ERR"),
            format!("pkcs11-tool --test-ec: {}", r.brief()),
        )
    });
    l.add("selftest/test-fork", NONE, |ctx| {
        let r = ctx.tool(&["--test-fork"]);
        ensure(
            r.status == 0,
            format!("pkcs11-tool --test-fork: {}", r.brief()),
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(point: &str, params: &str) -> String {
        format!(
            "Public Key Object; EC  EC_POINT 256 bits\n  EC_POINT:   {point}\n  \
             EC_PARAMS:  {params}\n  label:      kp\n  ID:         01\n"
        )
    }

    #[test]
    fn spki_from_a_listing() {
        let xy = "11".repeat(64);
        let p256 = "06082a8648ce3d030107";
        let spki = spki_from_listing(&listing(&format!("044104{xy}"), p256), "01").unwrap();
        let expect = format!("3059301306072a8648ce3d0201{p256}03420004{xy}");
        assert_eq!(hex(&spki), expect);
        // The raw point, as some modules list it.
        let raw = spki_from_listing(&listing(&format!("04{xy}"), p256), "01").unwrap();
        assert_eq!(raw, spki);
        // Ed25519, named by OID or by name.
        let a = "22".repeat(32);
        let expect = format!("302a300506032b6570032100{a}");
        for params in ["06032b6570", "130c656477617264733235353139"] {
            let spki = spki_from_listing(&listing(&format!("0420{a}"), params), "01").unwrap();
            assert_eq!(hex(&spki), expect);
        }
        // Parameters that are not one DER element, and another id.
        assert!(spki_from_listing(&listing(&format!("04{xy}"), "0608"), "01").is_none());
        assert!(spki_from_listing(&listing(&format!("04{xy}"), p256), "02").is_none());
    }
}
