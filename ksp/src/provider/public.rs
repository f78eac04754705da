//! A key's public material, and the encodings of an EC point (`CKA_EC_POINT`, SPKI).

use cryptoki_sys::*;
use der::asn1::OctetStringRef;
use der::{Decode, Encode};
use spki::SubjectPublicKeyInfoRef;

use super::alg::Alg;
use super::state::{Provider, Ready};
use crate::blob::{self, Curve};
use crate::error::{KResult, NOT_SUPPORTED, Status};
use crate::types::*;

/// A key's public half, as its attributes give it.
pub(super) enum PublicKey {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    Ec {
        curve: Curve,
        x: Vec<u8>,
        y: Vec<u8>,
    },
}

/// `04 ‖ X ‖ Y` from a `CKA_EC_POINT` (its DER OCTET STRING, or the raw point).
fn ec_point(curve: Curve, v: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let len = curve.field_len();
    let raw = if v.len() == 1 + 2 * len {
        v
    } else {
        OctetStringRef::from_der(v).ok()?.as_bytes()
    };
    let xy = raw.strip_prefix(&[0x04])?;
    if xy.len() != 2 * len {
        return None;
    }
    let (x, y) = xy.split_at(len);
    Some((x.to_vec(), y.to_vec()))
}

pub(super) fn public_key(p: &Provider, r: &Ready) -> KResult<PublicKey> {
    match r.alg {
        Alg::Rsa => {
            let obj = r.public.or(r.private).ok_or(Status(NTE_BAD_KEY))?;
            Ok(PublicKey::Rsa {
                n: p.need(obj, CKA_MODULUS)?.to_vec(),
                e: p.need(obj, CKA_PUBLIC_EXPONENT)?.to_vec(),
            })
        }
        Alg::Ecdsa(curve) | Alg::Ecdh(curve) => {
            let obj = r.public.ok_or(NOT_SUPPORTED)?;
            let point = p.need(obj, CKA_EC_POINT)?;
            let (x, y) = ec_point(curve, &point).ok_or(Status(NTE_BAD_KEY))?;
            Ok(PublicKey::Ec { curve, x, y })
        }
    }
}

/// `CKA_EC_POINT` of `(x, y)`: the DER OCTET STRING of `04 ‖ X ‖ Y`.
pub(super) fn der_point(x: &[u8], y: &[u8]) -> KResult<Vec<u8>> {
    der_octets(&blob::uncompressed_point(x, y))
}

/// The public point (`04 ‖ X ‖ Y`) in a SubjectPublicKeyInfo (strict DER).
pub(super) fn spki_point(spki: &[u8]) -> Option<&[u8]> {
    SubjectPublicKeyInfoRef::from_der(spki)
        .ok()?
        .subject_public_key
        .as_bytes()
}

/// A DER OCTET STRING.
pub(super) fn der_octets(point: &[u8]) -> KResult<Vec<u8>> {
    OctetStringRef::new(point)
        .and_then(|o| o.to_der())
        .map_err(|_| Status(NTE_BAD_DATA))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_point_forms() {
        let mut raw = vec![4u8];
        raw.extend_from_slice(&[1; 64]);
        let der = der_point(&[1; 32], &[1; 32]).unwrap();
        assert_eq!(ec_point(Curve::P256, &raw), ec_point(Curve::P256, &der));
        assert!(ec_point(Curve::P256, &raw).is_some());
        let big = der_point(&[2; 66], &[3; 66]).unwrap();
        assert_eq!(big.get(1), Some(&0x81));
        assert_eq!(
            ec_point(Curve::P521, &big),
            Some((vec![2; 66], vec![3; 66]))
        );
        assert_eq!(ec_point(Curve::P384, &raw), None);
    }
    /// What the hand-written readers let through and DER forbids.
    #[test]
    fn non_minimal_or_trailing_der_is_refused() {
        let mut raw = vec![4u8];
        raw.extend_from_slice(&[1; 64]);
        // The OCTET STRING's length in long form (04 81 41): the old reader took it.
        let long = [&[0x04, 0x81, 0x41][..], &raw].concat();
        assert_eq!(ec_point(Curve::P256, &long), None);
        // Something after the OCTET STRING (the length check caught this before too).
        let mut trailing = der_point(&[1; 32], &[1; 32]).unwrap();
        trailing.push(0);
        assert_eq!(ec_point(Curve::P256, &trailing), None);
        // A SubjectPublicKeyInfo: well formed, then with its outer length in long form and
        // with bytes after it (the old reader took both), then with a BIT STRING that
        // declares unused bits.
        let alg = [
            0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
            0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
        ];
        let bits = [&[0x03, 0x42, 0x00][..], &raw].concat();
        let body = [&alg[..], &bits].concat();
        let good = [&[0x30, 0x59][..], &body].concat();
        assert_eq!(spki_point(&good), Some(&raw[..]));
        let long = [&[0x30, 0x81, 0x59][..], &body].concat();
        assert_eq!(spki_point(&long), None);
        let after = [&good[..], &[0]].concat();
        assert_eq!(spki_point(&after), None);
        let mut unused = good.clone();
        unused[alg.len() + 4] = 0x01;
        assert_eq!(spki_point(&unused), None);
    }
}
