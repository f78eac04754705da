//! The one codec of the store: attribute lists and object records as bytes.
//!
//! Length-prefixed, little-endian, strict ([`bridge::bytes`] reads and writes the fields): any
//! decoding problem is an error, never a panic, and nothing trails a record. (No serde format
//! crate: bincode carries RUSTSEC-2025-0141, and a forty-line format is easier to fuzz and to
//! keep stable.)
//!
//! ```text
//! attrs   := count:u32 attr*
//! attr    := type:u64 kind:u8 (kind 0: len:u32 bytes | kind 1: attrs)
//! record  := "FHO1" public:attrs sealed_len:u32 sealed
//! ```

use bridge::bytes::{self, Put, Reader};
use bridge::{AttrValue, Attribute, Error, Result, Template};
use cryptoki_sys::CK_ATTRIBUTE_TYPE;

/// Magic and version of an object record.
pub(crate) const RECORD_MAGIC: &[u8; 4] = b"FHO1";

/// Largest value the codec accepts (a store written by us never comes close).
const MAX_VALUE: usize = 64 << 20;
/// Deepest nesting of attribute arrays.
const MAX_DEPTH: u32 = 3;
/// Most attributes in one list.
const MAX_ATTRS: usize = 4096;

fn corrupt(e: bytes::Error) -> Error {
    Error::Store(format!("corrupt record: {e}"))
}

/// A count or length as written: saturated at `u32::MAX` (no value comes near it; one that did
/// would make a record that does not decode, not a panic).
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Appends the encoding of `attrs` to `out`.
pub(crate) fn encode_attrs<'a>(
    attrs: impl ExactSizeIterator<Item = (CK_ATTRIBUTE_TYPE, &'a AttrValue)>,
    out: &mut Vec<u8>,
) {
    out.put_u32(len32(attrs.len()));
    for (ty, value) in attrs {
        encode_one(ty, value, out);
    }
}

// `CK_ULONG` is 32 bits on Windows, where the conversion is not useless.
#[allow(clippy::useless_conversion)]
fn encode_one(ty: CK_ATTRIBUTE_TYPE, value: &AttrValue, out: &mut Vec<u8>) {
    out.put_u64(u64::from(ty));
    match value {
        AttrValue::Bytes(b) => {
            out.put_u8(0);
            out.put_u32(len32(b.len()));
            out.put(b);
        }
        AttrValue::Template(t) => {
            out.put_u8(1);
            out.put_u32(len32(t.len()));
            for a in t.iter() {
                encode_one(a.ty, &a.value, out);
            }
        }
    }
}

/// Decodes one whole attribute list (a sealed part's plaintext): nothing may follow it.
pub(crate) fn decode_attr_list(bytes: &[u8]) -> Result<Vec<Attribute>> {
    let mut r = Reader::new(bytes);
    let attrs = decode_attrs_at(&mut r, 0).map_err(corrupt)?;
    r.finish().map_err(corrupt)?;
    Ok(attrs)
}

fn decode_attrs_at(
    r: &mut Reader<'_>,
    depth: u32,
) -> std::result::Result<Vec<Attribute>, bytes::Error> {
    if depth > MAX_DEPTH {
        return Err(bytes::Error::Invalid("nesting too deep"));
    }
    let n = usize::try_from(r.u32()?).map_err(|_| bytes::Error::Invalid("count"))?;
    if n > MAX_ATTRS {
        return Err(bytes::Error::Invalid("too many attributes"));
    }
    let mut attrs = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let ty =
            CK_ATTRIBUTE_TYPE::try_from(r.u64()?).map_err(|_| bytes::Error::Invalid("type"))?;
        let value = match r.u8()? {
            0 => {
                let len = r.len32()?;
                if len > MAX_VALUE {
                    return Err(bytes::Error::Invalid("value too long"));
                }
                AttrValue::Bytes(r.take(len)?.to_vec())
            }
            1 => AttrValue::Template(Template(decode_attrs_at(r, depth + 1)?)),
            _ => return Err(bytes::Error::Invalid("value kind")),
        };
        attrs.push(Attribute { ty, value });
    }
    Ok(attrs)
}

/// An object record: the public attributes and the sealed secret part.
pub(crate) struct Record {
    pub(crate) public: Vec<Attribute>,
    pub(crate) sealed: Vec<u8>,
}

/// Encodes the public part of a record (also what the seal's AAD covers).
pub(crate) fn encode_public<'a>(
    attrs: impl ExactSizeIterator<Item = (CK_ATTRIBUTE_TYPE, &'a AttrValue)>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.put(RECORD_MAGIC);
    encode_attrs(attrs, &mut out);
    out
}

/// A whole record from its encoded public part and sealed part.
pub(crate) fn encode_record(public: &[u8], sealed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(public.len() + 4 + sealed.len());
    out.put(public);
    out.put_u32(len32(sealed.len()));
    out.put(sealed);
    out
}

/// Decodes a record; returns it with the bytes of its public part (for the AAD).
pub(crate) fn decode_record(bytes: &[u8]) -> Result<(Record, &[u8])> {
    let mut r = Reader::new(bytes);
    if r.take(4).map_err(corrupt)? != RECORD_MAGIC {
        return Err(corrupt(bytes::Error::Invalid("unknown record format")));
    }
    let public = decode_attrs_at(&mut r, 0).map_err(corrupt)?;
    let public_len = bytes.len() - r.rest().len();
    let sealed = r.bytes32().map_err(corrupt)?.to_vec();
    r.finish().map_err(corrupt)?;
    let public_bytes = bytes
        .get(..public_len)
        .ok_or_else(|| corrupt(bytes::Error::Invalid("length")))?;
    Ok((Record { public, sealed }, public_bytes))
}

/// The top-level byte values among `wanted` in a record's public part, without decoding the
/// rest (what a token indexes an object by before it is first used). `None` if the record's
/// public part does not parse.
pub(crate) fn scan_public<'a>(
    record: &'a [u8],
    wanted: &[CK_ATTRIBUTE_TYPE],
) -> Option<Vec<(CK_ATTRIBUTE_TYPE, &'a [u8])>> {
    fn skip(r: &mut Reader<'_>, depth: u32) -> std::result::Result<(), bytes::Error> {
        if depth > MAX_DEPTH {
            return Err(bytes::Error::Invalid("nesting too deep"));
        }
        let n = usize::try_from(r.u32()?).map_err(|_| bytes::Error::Invalid("count"))?;
        for _ in 0..n.min(MAX_ATTRS) {
            r.u64()?;
            match r.u8()? {
                0 => {
                    r.bytes32()?;
                }
                1 => skip(r, depth + 1)?,
                _ => return Err(bytes::Error::Invalid("value kind")),
            }
        }
        Ok(())
    }
    let mut r = Reader::new(record);
    if r.take(4).ok()? != RECORD_MAGIC {
        return None;
    }
    let n = usize::try_from(r.u32().ok()?).ok()?;
    if n > MAX_ATTRS {
        return None;
    }
    let mut found = Vec::new();
    for _ in 0..n {
        let ty = CK_ATTRIBUTE_TYPE::try_from(r.u64().ok()?).ok()?;
        match r.u8().ok()? {
            0 => {
                let v = r.bytes32().ok()?;
                if wanted.contains(&ty) {
                    found.push((ty, v));
                }
            }
            1 => skip(&mut r, 1).ok()?,
            _ => return None,
        }
    }
    Some(found)
}

/// The length of [`encode_public`]'s output for `attrs`, without encoding them.
pub(crate) fn public_len<'a>(
    attrs: impl Iterator<Item = (CK_ATTRIBUTE_TYPE, &'a AttrValue)>,
) -> usize {
    RECORD_MAGIC.len() + 4 + attrs.map(|(_, v)| one_len(v)).sum::<usize>()
}

/// The length of [`encode_one`]'s output for `value`.
fn one_len(value: &AttrValue) -> usize {
    8 + 1
        + 4
        + match value {
            AttrValue::Bytes(b) => b.len(),
            AttrValue::Template(t) => t.iter().map(|a| one_len(&a.value)).sum(),
        }
}

/// The length of [`encode_secret`]'s output for values of these lengths.
pub(crate) fn secret_len(value_lens: impl Iterator<Item = usize>) -> usize {
    4 + value_lens.map(|n| 8 + 1 + 4 + n).sum::<usize>()
}

/// The length of [`encode_record`]'s output for parts of these lengths.
pub(crate) fn record_len(public_len: usize, sealed_len: usize) -> usize {
    public_len + 4 + sealed_len
}

/// Encodes a secret attribute list (the plaintext that gets sealed), in one allocation (no
/// copy of the secrets is left behind by a reallocation).
// `CK_ULONG` is 32 bits on Windows, where the conversion is not useless.
#[allow(clippy::useless_conversion)]
pub(crate) fn encode_secret(attrs: &[(CK_ATTRIBUTE_TYPE, &[u8])]) -> Vec<u8> {
    let len = attrs
        .iter()
        .map(|(_, v)| 8 + 1 + 4 + v.len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(4 + len);
    out.put_u32(len32(attrs.len()));
    for (ty, v) in attrs {
        out.put_u64(u64::from(*ty));
        out.put_u8(0);
        out.put_u32(len32(v.len()));
        out.put(v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cryptoki_sys::*;

    fn sample() -> Vec<Attribute> {
        vec![
            Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY),
            Attribute::bytes(CKA_LABEL, b"k".to_vec()),
            Attribute::template(
                CKA_WRAP_TEMPLATE,
                Template(vec![Attribute::bool(CKA_EXTRACTABLE, true)]),
            ),
        ]
    }

    #[test]
    fn lengths_are_what_the_encoders_write() {
        let attrs = sample();
        let public = encode_public(attrs.iter().map(|a| (a.ty, &a.value)));
        assert_eq!(
            public_len(attrs.iter().map(|a| (a.ty, &a.value))),
            public.len()
        );
        let secrets: [(CK_ATTRIBUTE_TYPE, &[u8]); 2] =
            [(CKA_VALUE, &[7; 100]), (CKA_PRIME_1, b"p")];
        let secret = encode_secret(&secrets);
        assert_eq!(
            secret_len(secrets.iter().map(|(_, v)| v.len())),
            secret.len()
        );
        assert_eq!(secret_len(std::iter::empty()), encode_secret(&[]).len());
        assert_eq!(
            record_len(public.len(), secret.len()),
            encode_record(&public, &secret).len()
        );
    }

    #[test]
    fn record_round_trips() {
        let attrs = sample();
        let public = encode_public(attrs.iter().map(|a| (a.ty, &a.value)));
        let rec = encode_record(&public, b"sealed");
        let (back, pubbytes) = decode_record(&rec).unwrap();
        assert_eq!(back.public, attrs);
        assert_eq!(back.sealed, b"sealed");
        assert_eq!(pubbytes, &public[..]);
    }

    #[test]
    fn every_truncation_and_flip_is_an_error_not_a_panic() {
        let attrs = sample();
        let public = encode_public(attrs.iter().map(|a| (a.ty, &a.value)));
        let rec = encode_record(&public, b"sealed");
        for n in 0..rec.len() {
            assert!(decode_record(&rec[..n]).is_err(), "prefix {n}");
        }
        for i in 0..rec.len() {
            for bit in 0..8 {
                let mut t = rec.clone();
                t[i] ^= 1 << bit;
                let _ = decode_record(&t);
            }
        }
        let mut long = rec.clone();
        long.push(0);
        assert!(decode_record(&long).is_err());
    }

    /// The committed seeds of the `store_record` fuzz target (records as the codec wrote
    /// them, and damaged ones): what decodes re-encodes to the same bytes.
    #[test]
    fn fuzz_seeds_round_trip() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../fuzz/corpus/store_record");
        let (mut records, mut lists, mut seeds) = (0, 0, 0);
        for entry in std::fs::read_dir(dir).unwrap() {
            let seed = std::fs::read(entry.unwrap().path()).unwrap();
            seeds += 1;
            if let Ok((rec, public)) = decode_record(&seed) {
                records += 1;
                let again = encode_public(rec.public.iter().map(|a| (a.ty, &a.value)));
                assert_eq!(again, public);
                assert_eq!(encode_record(&again, &rec.sealed), seed);
            }
            if let Ok(attrs) = decode_attr_list(&seed) {
                lists += 1;
                let mut out = Vec::new();
                encode_attrs(attrs.iter().map(|a| (a.ty, &a.value)), &mut out);
                assert_eq!(out, seed);
            }
        }
        // As many as decoded when the seeds were committed (a stricter decoder shows here).
        assert!(
            seeds >= 97 && records >= 8 && lists >= 33,
            "{records} {lists}"
        );
    }
}
