//! The KSP's blob parsers on arbitrary bytes: `BCRYPT_RSAKEY_BLOB` and `BCRYPT_ECCKEY_BLOB`
//! in every variant, and the BYOK `BCRYPT_PKCS11_RSA_AES_WRAP_BLOB`. Any input must give a
//! value or an error, never a panic; a decoded key re-encodes to a blob that decodes again
//! (an ECC blob, whose fields have fixed widths, to the same bytes).
#![no_main]

use ferrohsm_ksp::blob::{self, KeyBlob};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(key) = blob::parse(data) {
        let again = match &key {
            KeyBlob::RsaPublic { n, e } => blob::encode_rsa(n, e, None),
            KeyBlob::RsaPrivate { n, e, p, q, crt } => {
                blob::encode_rsa(n, e, Some((p, q, crt.as_ref())))
            }
            KeyBlob::EccPublic { curve, ecdh, x, y } => {
                let b = blob::encode_ecc(*curve, *ecdh, x, y, None);
                assert_eq!(b.as_deref().map(Vec::as_slice), Ok(data));
                b
            }
            KeyBlob::EccPrivate {
                curve,
                ecdh,
                x,
                y,
                d,
            } => {
                let b = blob::encode_ecc(*curve, *ecdh, x, y, Some(d));
                assert_eq!(b.as_deref().map(Vec::as_slice), Ok(data));
                b
            }
        };
        if let Ok(bytes) = again {
            // Integers may have had leading zeros; what re-encodes must decode.
            let _ = blob::parse(&bytes);
        }
    }
    let _ = blob::parse_rsa_aes_wrap(data);
    let _ = blob::pkcs8_algorithm(data);
});
