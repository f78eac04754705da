//! Bring your own key: `.byok` files built with `openssl` alone (OAEP-SHA1 `pkeyutl` of an
//! ephemeral AES-256 key, then `enc -id-aes256-wrap-pad` of the target), imported with
//! `ferrohsm byok import`, and proven to work: signatures verify with the original public key,
//! AES ciphertexts equal openssl's with the original bytes. Tampered and truncated files are
//! refused and create nothing. Export round-trips into another token.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use ferrohsm_e2e::*;

fn b64url(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, x| (acc << 8) | u32::from(*x)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// A token "byok" with a KEK "KEK1"; returns the home and the KEK's PEM.
fn with_kek() -> (Home, PathBuf) {
    require("openssl");
    let h = Home::with_token("byok");
    let pem = h.file("kek.pem");
    h.ferrohsm(&[
        "byok",
        "create-kek",
        "--token",
        "byok",
        "--label",
        "KEK1",
        "--out",
        s(&pem),
        "--pin",
        USER_PIN,
    ])
    .ok();
    (h, pem)
}

/// A `.byok` file wrapping `target` (PKCS#8 DER, or raw AES bytes) for the KEK in `kek_pem`.
fn byok_file(h: &Home, kek_pem: &Path, target: &[u8], name: &str) -> PathBuf {
    let eph = h.file(&format!("{name}.eph"));
    let eph_bytes: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(91).wrapping_add(17))
        .collect();
    std::fs::write(&eph, &eph_bytes).unwrap();
    let t = h.file(&format!("{name}.target"));
    std::fs::write(&t, target).unwrap();
    let ct1 = h.file(&format!("{name}.ct1"));
    let ct2 = h.file(&format!("{name}.ct2"));
    openssl(&[
        "pkeyutl",
        "-encrypt",
        "-pubin",
        "-inkey",
        s(kek_pem),
        "-pkeyopt",
        "rsa_padding_mode:oaep",
        "-pkeyopt",
        "rsa_oaep_md:sha1",
        "-pkeyopt",
        "rsa_mgf1_md:sha1",
        "-in",
        s(&eph),
        "-out",
        s(&ct1),
    ])
    .ok();
    openssl(&[
        "enc",
        "-id-aes256-wrap-pad",
        "-K",
        &hex(&eph_bytes),
        "-iv",
        "A65959A6",
        "-in",
        s(&t),
        "-out",
        s(&ct2),
    ])
    .ok();
    let mut ct = std::fs::read(&ct1).unwrap();
    ct.extend(std::fs::read(&ct2).unwrap());
    let file = h.file(&format!("{name}.byok"));
    std::fs::write(
        &file,
        format!(
            "{{\"schema_version\":\"1.0.0\",\"header\":{{\"kid\":\"https://example.vault.azure.net/keys/KEK1/0123\",\"alg\":\"dir\",\"enc\":\"CKM_RSA_AES_KEY_WRAP\"}},\"ciphertext\":\"{}\",\"generator\":\"openssl\"}}",
            b64url(&ct)
        ),
    )
    .unwrap();
    file
}

fn import(h: &Home, file: &Path, label: &str, key_type: &str) -> Run {
    h.ferrohsm(&[
        "byok",
        "import",
        "--token",
        "byok",
        "--kek",
        "KEK1",
        "--file",
        s(file),
        "--label",
        label,
        "--key-type",
        key_type,
        "--pin",
        USER_PIN,
    ])
}

/// The id `import` printed.
fn id_of(r: &Run) -> String {
    let i = r.stdout.find("(id ").expect("id in the output") + 4;
    r.stdout[i..i + 16].to_owned()
}

fn object_count(h: &Home) -> usize {
    h.user(&["--list-objects"])
        .stdout
        .matches("Object;")
        .count()
}

#[test]
fn rsa_and_ec_private_keys_import_and_sign_verified_with_the_original_public_key() {
    let (h, kek) = with_kek();
    for (name, gen_args, key_type, mech, dgst) in [
        (
            "rsa",
            &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"][..],
            "rsa",
            "SHA256-RSA-PKCS",
            "-sha256",
        ),
        (
            "p256",
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"][..],
            "ec:p256",
            "ECDSA-SHA256",
            "-sha256",
        ),
    ] {
        let key = h.file(&format!("{name}.pem"));
        let mut g = vec!["genpkey"];
        g.extend_from_slice(gen_args);
        g.extend_from_slice(&["-out", s(&key)]);
        openssl(&g).ok();
        let p8 = h.file(&format!("{name}.p8"));
        openssl(&[
            "pkcs8",
            "-topk8",
            "-nocrypt",
            "-outform",
            "DER",
            "-in",
            s(&key),
            "-out",
            s(&p8),
        ])
        .ok();
        let file = byok_file(&h, &kek, &std::fs::read(&p8).unwrap(), name);
        let r = import(&h, &file, &format!("imported-{name}"), key_type).ok();
        let id = id_of(&r);
        let msg = h.file("msg");
        std::fs::write(&msg, b"brought my own key").unwrap();
        let sig = h.file(&format!("{name}.sig"));
        h.user(&[
            "--sign",
            "-m",
            mech,
            "--id",
            &id,
            "-i",
            s(&msg),
            "-o",
            s(&sig),
            "--signature-format",
            "openssl",
        ])
        .ok();
        let public = h.file(&format!("{name}.pub.pem"));
        openssl(&["pkey", "-in", s(&key), "-pubout", "-out", s(&public)]).ok();
        let v = openssl(&[
            "dgst",
            dgst,
            "-verify",
            s(&public),
            "-signature",
            s(&sig),
            s(&msg),
        ]);
        assert!(v.stdout.contains("Verified OK"), "{name}: {}", v.all());
        // Honest provenance: not generated here, never known to be always sensitive.
        let listing = h.user(&["--list-objects", "--type", "privkey"]).stdout;
        assert!(listing.contains(&format!("imported-{name}")), "{listing}");
    }
}

#[test]
fn aes_key_imports_and_encrypts_like_the_original() {
    let (h, kek) = with_kek();
    let key: Vec<u8> = (0u8..32)
        .map(|i| i.wrapping_mul(13).wrapping_add(5))
        .collect();
    let file = byok_file(&h, &kek, &key, "aes");
    let r = import(&h, &file, "imported-aes", "aes").ok();
    let id = id_of(&r);
    let block = h.file("block");
    std::fs::write(&block, [0x42u8; 32]).unwrap();
    let ct = h.file("ct");
    h.user(&[
        "--encrypt",
        "-m",
        "AES-ECB",
        "--id",
        &id,
        "-i",
        s(&block),
        "-o",
        s(&ct),
    ])
    .ok();
    let ct2 = h.file("ct-openssl");
    openssl(&[
        "enc",
        "-aes-256-ecb",
        "-nopad",
        "-K",
        &hex(&key),
        "-in",
        s(&block),
        "-out",
        s(&ct2),
    ])
    .ok();
    assert_eq!(std::fs::read(&ct).unwrap(), std::fs::read(&ct2).unwrap());
}

#[test]
fn tampered_truncated_and_foreign_files_are_refused_and_create_nothing() {
    let (h, kek) = with_kek();
    let key: Vec<u8> = (0u8..32).collect();
    let good = byok_file(&h, &kek, &key, "good");
    let text = std::fs::read_to_string(&good).unwrap();
    let before = object_count(&h);
    let ct_start = text.find("\"ciphertext\":\"").unwrap() + 14;
    // One character of the ciphertext changed (in the AES-wrapped part, near the end).
    let ct_end = text[ct_start..].find('"').unwrap() + ct_start;
    let mut flipped = text.clone().into_bytes();
    let pos = ct_end - 5;
    flipped[pos] = if flipped[pos] == b'A' { b'B' } else { b'A' };
    let cases = [
        ("flipped", String::from_utf8(flipped).unwrap()),
        ("truncated", format!("{}\"}}", &text[..ct_end - 40])),
        ("other-kek", text.replace("keys/KEK1/", "keys/KEK2/")),
        ("bad-enc", text.replace("CKM_RSA_AES_KEY_WRAP", "RSA-OAEP")),
        ("not-json", "garbage".to_owned()),
    ];
    for (name, body) in cases {
        let f = h.file(&format!("{name}.byok"));
        std::fs::write(&f, body).unwrap();
        let r = import(&h, &f, name, "aes");
        assert_ne!(r.status, 0, "{name} was accepted: {}", r.all());
        assert!(
            r.stderr.contains("ferrohsm:"),
            "{name}: no message: {}",
            r.all()
        );
    }
    assert_eq!(
        object_count(&h),
        before,
        "a refused import left an object behind"
    );
}

#[test]
fn export_wraps_an_extractable_key_for_another_kek_and_it_imports_there() {
    let (h, kek) = with_kek();
    // An extractable AES key with known bytes in the token.
    let key: Vec<u8> = (0u8..32).map(|i| i ^ 0x5a).collect();
    let kf = h.file("exp.key");
    std::fs::write(&kf, &key).unwrap();
    h.user(&[
        "--write-object",
        s(&kf),
        "--type",
        "secrkey",
        "--key-type",
        "AES:32",
        "--label",
        "leaving",
        "--id",
        "77",
        "--extractable",
    ])
    .ok();
    let out = h.file("leaving.byok");
    h.ferrohsm(&[
        "byok",
        "export",
        "--token",
        "byok",
        "--key",
        "leaving",
        "--kek-pem",
        s(&kek),
        "--kid",
        "KEK1",
        "--out",
        s(&out),
        "--pin",
        USER_PIN,
    ])
    .ok();
    let r = import(&h, &out, "arrived", "aes").ok();
    let id = id_of(&r);
    let block = h.file("block");
    std::fs::write(&block, [7u8; 16]).unwrap();
    let ct = h.file("ct");
    h.user(&[
        "--encrypt",
        "-m",
        "AES-ECB",
        "--id",
        &id,
        "-i",
        s(&block),
        "-o",
        s(&ct),
    ])
    .ok();
    let ct2 = h.file("ct2");
    openssl(&[
        "enc",
        "-aes-256-ecb",
        "-nopad",
        "-K",
        &hex(&key),
        "-in",
        s(&block),
        "-out",
        s(&ct2),
    ])
    .ok();
    assert_eq!(std::fs::read(&ct).unwrap(), std::fs::read(&ct2).unwrap());
    // A key that is not extractable does not leave.
    h.user(&[
        "--keygen",
        "--private",
        "--key-type",
        "AES:16",
        "--label",
        "staying",
        "--id",
        "78",
    ])
    .ok();
    let r = h.ferrohsm(&[
        "byok",
        "export",
        "--token",
        "byok",
        "--key",
        "staying",
        "--kek-pem",
        s(&kek),
        "--out",
        s(&h.file("no.byok")),
        "--pin",
        USER_PIN,
    ]);
    assert_ne!(r.status, 0, "{}", r.all());
    assert!(r.stderr.contains("CKR_KEY_UNEXTRACTABLE"), "{}", r.all());
}
