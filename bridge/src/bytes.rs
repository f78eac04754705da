//! Little-endian binary formats: the one reader and writer of the store's object records
//! (`firmware_sim::storage::codec`), the backup file (`firmware_sim::domain::backup`) and
//! the CNG key blobs (`ferrohsm_ksp::blob`).
//!
//! [`Reader`] takes fields off the front of a byte slice and fails, never panics, when the
//! input ends early; [`Reader::finish`] fails when bytes are left over. [`Put`] appends fields
//! to a `Vec<u8>`. Each format keeps its layout, its limits and its own error type; what is
//! shared is the bounds checking and the byte order.
//!
//! The remote protocol's codec (`remote::wire`) keeps its own reader and writer: it is the
//! encoding of the call vocabulary and changes with it (its types, `CK_ULONG` as `u64`,
//! `Option` and `bool` tags, nesting limits), and every malformed frame there is logged and
//! answered `CKR_DEVICE_ERROR` before the connection closes. It can sit on [`Reader`] once
//! that vocabulary settles; until then the formats here must not move with it, because
//! stores, backups and blobs written today must read back byte for byte.

use std::fmt;

/// Why bytes did not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The input ended before the field.
    Truncated,
    /// Bytes were left after the last field.
    Trailing,
    /// A field holds a value the format does not allow (the format says which).
    Invalid(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("truncated"),
            Self::Trailing => f.write_str("trailing bytes"),
            Self::Invalid(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for Error {}

/// Reads little-endian fields off the front of a byte slice.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let (head, rest) = self.buf.split_at_checked(n).ok_or(Error::Truncated)?;
        self.buf = rest;
        Ok(head)
    }

    /// The next `N` bytes, as an array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let (head, rest) = self.buf.split_first_chunk().ok_or(Error::Truncated)?;
        self.buf = rest;
        Ok(*head)
    }

    /// A byte.
    pub fn u8(&mut self) -> Result<u8, Error> {
        Ok(u8::from_le_bytes(self.array()?))
    }

    /// A little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A little-endian `i64`.
    pub fn i64(&mut self) -> Result<i64, Error> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    /// A length or count written as a little-endian `u32`.
    pub fn len32(&mut self) -> Result<usize, Error> {
        usize::try_from(self.u32()?).map_err(|_| Error::Invalid("length"))
    }

    /// Bytes preceded by their length as a little-endian `u32`.
    pub fn bytes32(&mut self) -> Result<&'a [u8], Error> {
        let n = self.len32()?;
        self.take(n)
    }

    /// The bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    /// Whether every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Ends the reading: every byte must have been read.
    pub fn finish(self) -> Result<(), Error> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::Trailing)
        }
    }
}

/// Appends little-endian fields to a byte vector (and so to a `Zeroizing<Vec<u8>>`).
pub trait Put {
    /// Raw bytes.
    fn put(&mut self, bytes: &[u8]);

    /// A byte.
    fn put_u8(&mut self, v: u8) {
        self.put(&[v]);
    }

    /// A little-endian `u16`.
    fn put_u16(&mut self, v: u16) {
        self.put(&v.to_le_bytes());
    }

    /// A little-endian `u32`.
    fn put_u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }

    /// A little-endian `u64`.
    fn put_u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }

    /// A little-endian `i64`.
    fn put_i64(&mut self, v: i64) {
        self.put(&v.to_le_bytes());
    }

    /// A length or count as a little-endian `u32`; `Error::Invalid` beyond `u32::MAX`.
    fn put_len32(&mut self, n: usize) -> Result<(), Error> {
        let n = u32::try_from(n).map_err(|_| Error::Invalid("length beyond 32 bits"))?;
        self.put_u32(n);
        Ok(())
    }

    /// `bytes` preceded by their length as a little-endian `u32`.
    fn put_bytes32(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.put_len32(bytes.len())?;
        self.put(bytes);
        Ok(())
    }
}

impl Put for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_little_endian() {
        let mut out = Vec::new();
        out.put_u8(1);
        out.put_u16(0x0302);
        out.put_u32(0x0706_0504);
        out.put_u64(0x0f0e_0d0c_0b0a_0908);
        out.put_i64(-2);
        out.put_bytes32(b"xy").unwrap();
        out.put(b"z");
        assert_eq!(
            out[..15],
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
        );
        let mut r = Reader::new(&out);
        assert_eq!(r.u8(), Ok(1));
        assert_eq!(r.u16(), Ok(0x0302));
        assert_eq!(r.u32(), Ok(0x0706_0504));
        assert_eq!(r.u64(), Ok(0x0f0e_0d0c_0b0a_0908));
        assert_eq!(r.i64(), Ok(-2));
        assert_eq!(r.bytes32(), Ok(&b"xy"[..]));
        assert!(!r.is_empty());
        assert_eq!(r.rest(), b"z");
        assert_eq!(r.clone().finish(), Err(Error::Trailing));
        assert_eq!(r.array::<1>(), Ok(*b"z"));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn short_input_is_an_error_and_reads_nothing() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u32(), Err(Error::Truncated));
        assert_eq!(r.take(4), Err(Error::Truncated));
        assert_eq!(r.rest(), [1, 2, 3]);
        // A length prefix larger than what is left.
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff, 0]);
        assert_eq!(r.bytes32(), Err(Error::Truncated));
        assert_eq!(Error::Truncated.to_string(), "truncated");
        assert_eq!(Error::Trailing.to_string(), "trailing bytes");
    }
}
