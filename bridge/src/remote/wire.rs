//! The byte codec of the remote protocol: a small, strict, hand-written binary format.
//!
//! - integers are little-endian, fixed width (`u8`, `u16`, `u32`, `u64`); a `CK_ULONG` is a
//!   `u64` (the protocol is host-local: attribute values keep the platform's C layout);
//! - `bool` is one byte, 0 or 1 (anything else is an error);
//! - byte strings and sequences are a `u32` count followed by the items; a count larger than
//!   the bytes left is an error before anything is allocated;
//! - `Option<T>` is a tag byte (0 none, 1 some) then `T`;
//! - strings are byte strings that must be UTF-8;
//! - nested templates may be at most [`MAX_DEPTH`] levels deep;
//! - a decoded message must use every byte of its frame.
//!
//! Every malformed input gives `Error::DeviceError` (never a panic), and closes the connection
//! that carried it.

use cryptoki_sys::CK_ULONG;

use crate::error::{Error, Result};
use crate::types::*;

/// How deep nested templates (`CKA_WRAP_TEMPLATE` inside `CKA_UNWRAP_TEMPLATE` ...) may go.
pub const MAX_DEPTH: usize = 4;

// The codec writes CK_ULONG as u64; the remote protocol is for 64-bit hosts.
const _: () = assert!(size_of::<CK_ULONG>() == 8);

/// A decoding failure: logged with its reason, reported as `CKR_DEVICE_ERROR`.
pub(crate) fn malformed(what: &'static str) -> Error {
    log::warn!("remote protocol: malformed message ({what})");
    Error::DeviceError
}

/// Appends encoded values to a buffer.
#[derive(Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }
    /// The encoded bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// A little-endian `u16`.
    pub fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// A little-endian `u32`.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// A little-endian `u64`.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    /// A count (`u32`); counts above `u32::MAX` are clamped, and the frame limit refuses them
    /// long before.
    pub fn count(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    /// Raw bytes, without a length.
    pub fn raw(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }
    /// A byte string.
    pub fn bytes(&mut self, b: &[u8]) {
        self.count(b.len());
        self.raw(b);
    }
}

/// Reads encoded values from a frame.
pub struct Reader<'a> {
    buf: &'a [u8],
    depth: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, depth: 0 }
    }
    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    /// Errors unless every byte was read.
    pub fn finish(&self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(malformed("trailing bytes"))
        }
    }
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(malformed("truncated"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let b = self.take(N)?;
        b.try_into().map_err(|_| malformed("truncated"))
    }
    /// One byte.
    pub fn u8(&mut self) -> Result<u8> {
        Ok(u8::from_le_bytes(self.array()?))
    }
    /// A `u16`.
    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    /// A `u32`.
    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// A `u64`.
    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    /// A count of items of at least `min_item` bytes each, checked against what is left.
    pub fn count(&mut self, min_item: usize) -> Result<usize> {
        let n = usize::try_from(self.u32()?).map_err(|_| malformed("count"))?;
        if n.saturating_mul(min_item.max(1)) > self.buf.len() {
            return Err(malformed("count larger than the frame"));
        }
        Ok(n)
    }
    /// A byte string.
    pub fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = self.count(1)?;
        Ok(self.take(n)?.to_vec())
    }
}

/// A value that crosses the wire.
pub trait Wire: Sized {
    /// Appends the encoding.
    fn put(&self, w: &mut Writer);
    /// Decodes one value.
    fn get(r: &mut Reader<'_>) -> Result<Self>;
}

impl Wire for u8 {
    fn put(&self, w: &mut Writer) {
        w.u8(*self);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        r.u8()
    }
}

impl Wire for u64 {
    fn put(&self, w: &mut Writer) {
        w.u64(*self);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        r.u64()
    }
}

impl Wire for bool {
    fn put(&self, w: &mut Writer) {
        w.u8(u8::from(*self));
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        match r.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(malformed("bool")),
        }
    }
}

impl Wire for usize {
    fn put(&self, w: &mut Writer) {
        w.u64(u64::try_from(*self).unwrap_or(u64::MAX));
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        usize::try_from(r.u64()?).map_err(|_| malformed("usize"))
    }
}

impl Wire for String {
    fn put(&self, w: &mut Writer) {
        w.bytes(self.as_bytes());
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        String::from_utf8(r.bytes()?).map_err(|_| malformed("utf-8"))
    }
}

impl<const N: usize> Wire for [u8; N] {
    fn put(&self, w: &mut Writer) {
        w.raw(self);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        r.array()
    }
}

impl<T: Wire> Wire for Option<T> {
    fn put(&self, w: &mut Writer) {
        match self {
            None => w.u8(0),
            Some(v) => {
                w.u8(1);
                v.put(w);
            }
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        match r.u8()? {
            0 => Ok(None),
            1 => Ok(Some(T::get(r)?)),
            _ => Err(malformed("option tag")),
        }
    }
}

impl<T: Wire> Wire for Vec<T> {
    fn put(&self, w: &mut Writer) {
        w.count(self.len());
        for v in self {
            v.put(w);
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        // Every item takes at least one byte, so the count is bounded by the frame; but an item
        // in memory is larger than a byte (an `Attribute` is 40), so reserving the count would
        // let a 16 MiB frame of counts (nested templates each have one) reserve half a
        // gigabyte before a single item decodes. Reserve a little, and grow as items arrive:
        // each consumes bytes the frame really has.
        let n = r.count(1)?;
        let mut v = Vec::with_capacity(n.min(PREALLOC_ITEMS));
        for _ in 0..n {
            v.push(T::get(r)?);
        }
        Ok(v)
    }
}

/// The most items a decoded count reserves room for before they arrive.
const PREALLOC_ITEMS: usize = 1024;

/// A byte string (`Vec<u8>` through [`Wire`] would be an item-by-item sequence; this is the
/// same encoding, read in one go).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl Wire for Bytes {
    fn put(&self, w: &mut Writer) {
        w.bytes(&self.0);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        Ok(Self(r.bytes()?))
    }
}

impl<A: Wire, B: Wire> Wire for (A, B) {
    fn put(&self, w: &mut Writer) {
        self.0.put(w);
        self.1.put(w);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        Ok((A::get(r)?, B::get(r)?))
    }
}

macro_rules! newtype_wire {
    ($($t:ident),*) => {$(
        impl Wire for $t {
            fn put(&self, w: &mut Writer) {
                w.u64(self.0);
            }
            fn get(r: &mut Reader<'_>) -> Result<Self> {
                Ok(Self(r.u64()?))
            }
        }
    )*};
}
newtype_wire!(SlotId, SessionHandle, ObjectHandle);

impl Wire for Template {
    fn put(&self, w: &mut Writer) {
        self.0.put(w);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        if r.depth >= MAX_DEPTH {
            return Err(malformed("templates nested too deep"));
        }
        r.depth += 1;
        let t = Vec::<Attribute>::get(r);
        r.depth -= 1;
        Ok(Self(t?))
    }
}

impl Wire for AttrValue {
    fn put(&self, w: &mut Writer) {
        match self {
            Self::Bytes(b) => {
                w.u8(0);
                w.bytes(b);
            }
            Self::Template(t) => {
                w.u8(1);
                t.put(w);
            }
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        match r.u8()? {
            0 => Ok(Self::Bytes(r.bytes()?)),
            1 => Ok(Self::Template(<Template as Wire>::get(r)?)),
            _ => Err(malformed("attribute value tag")),
        }
    }
}

impl Wire for Attribute {
    fn put(&self, w: &mut Writer) {
        w.u64(self.ty);
        self.value.put(w);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        Ok(Self {
            ty: r.u64()?,
            value: AttrValue::get(r)?,
        })
    }
}

impl Wire for AttrAnswer {
    fn put(&self, w: &mut Writer) {
        match self {
            Self::Value(v) => {
                w.u8(0);
                v.put(w);
            }
            Self::Sensitive => w.u8(1),
            Self::Invalid => w.u8(2),
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        match r.u8()? {
            0 => Ok(Self::Value(AttrValue::get(r)?)),
            1 => Ok(Self::Sensitive),
            2 => Ok(Self::Invalid),
            _ => Err(malformed("attribute answer tag")),
        }
    }
}

impl Wire for OaepParams {
    fn put(&self, w: &mut Writer) {
        w.u64(self.hash_alg);
        w.u64(self.mgf);
        w.u64(self.source);
        w.bytes(&self.source_data);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        Ok(Self {
            hash_alg: r.u64()?,
            mgf: r.u64()?,
            source: r.u64()?,
            source_data: r.bytes()?,
        })
    }
}

impl Wire for MechanismParams {
    fn put(&self, w: &mut Writer) {
        match self {
            Self::None => w.u8(0),
            Self::Bytes(b) => {
                w.u8(1);
                w.bytes(b);
            }
            Self::Ulong(v) => {
                w.u8(2);
                w.u64(*v);
            }
            Self::RsaPkcsPss {
                hash_alg,
                mgf,
                salt_len,
            } => {
                w.u8(3);
                w.u64(*hash_alg);
                w.u64(*mgf);
                w.u64(*salt_len);
            }
            Self::RsaPkcsOaep(p) => {
                w.u8(4);
                p.put(w);
            }
            Self::AesCtr { counter_bits, cb } => {
                w.u8(5);
                w.u64(*counter_bits);
                w.raw(cb);
            }
            Self::Gcm {
                iv,
                iv_bits,
                aad,
                tag_bits,
            } => {
                w.u8(6);
                w.bytes(iv);
                w.u64(*iv_bits);
                w.bytes(aad);
                w.u64(*tag_bits);
            }
            Self::Ccm {
                data_len,
                nonce,
                aad,
                mac_len,
            } => {
                w.u8(7);
                w.u64(*data_len);
                w.bytes(nonce);
                w.bytes(aad);
                w.u64(*mac_len);
            }
            Self::ChaCha20Poly1305 { nonce, aad } => {
                w.u8(17);
                w.bytes(nonce);
                w.bytes(aad);
            }
            Self::Ecdh1Derive {
                kdf,
                shared_data,
                public_data,
            } => {
                w.u8(8);
                w.u64(*kdf);
                w.bytes(shared_data);
                w.bytes(public_data);
            }
            Self::Hkdf {
                extract,
                expand,
                prf_hash,
                salt_type,
                salt,
                salt_key,
                info,
            } => {
                w.u8(9);
                extract.put(w);
                expand.put(w);
                w.u64(*prf_hash);
                w.u64(*salt_type);
                w.bytes(salt);
                w.u64(*salt_key);
                w.bytes(info);
            }
            Self::RsaAesKeyWrap { aes_key_bits, oaep } => {
                w.u8(10);
                w.u64(*aes_key_bits);
                oaep.put(w);
            }
            Self::AesCbcEncryptData { iv, data } => {
                w.u8(11);
                w.raw(iv);
                w.bytes(data);
            }
            Self::Eddsa { ph_flag, context } => {
                w.u8(12);
                ph_flag.put(w);
                w.bytes(context);
            }
            Self::Pbkdf2 {
                salt_source,
                salt,
                iterations,
                prf,
                prf_data,
                password,
            } => {
                w.u8(13);
                w.u64(*salt_source);
                w.bytes(salt);
                w.u64(*iterations);
                w.u64(*prf);
                w.bytes(prf_data);
                w.bytes(password);
            }
            Self::GcmMessage {
                iv,
                iv_fixed_bits,
                iv_generator,
                tag,
                tag_bits,
            } => {
                w.u8(14);
                w.bytes(iv);
                w.u64(*iv_fixed_bits);
                w.u64(*iv_generator);
                w.bytes(tag);
                w.u64(*tag_bits);
            }
            Self::StringData(b) => {
                w.u8(16);
                w.bytes(b);
            }
            Self::Raw(b) => {
                w.u8(15);
                w.bytes(b);
            }
        }
    }

    fn get(r: &mut Reader<'_>) -> Result<Self> {
        Ok(match r.u8()? {
            0 => Self::None,
            1 => Self::Bytes(r.bytes()?),
            2 => Self::Ulong(r.u64()?),
            3 => Self::RsaPkcsPss {
                hash_alg: r.u64()?,
                mgf: r.u64()?,
                salt_len: r.u64()?,
            },
            4 => Self::RsaPkcsOaep(OaepParams::get(r)?),
            5 => Self::AesCtr {
                counter_bits: r.u64()?,
                cb: r.array()?,
            },
            6 => Self::Gcm {
                iv: r.bytes()?,
                iv_bits: r.u64()?,
                aad: r.bytes()?,
                tag_bits: r.u64()?,
            },
            7 => Self::Ccm {
                data_len: r.u64()?,
                nonce: r.bytes()?,
                aad: r.bytes()?,
                mac_len: r.u64()?,
            },
            8 => Self::Ecdh1Derive {
                kdf: r.u64()?,
                shared_data: r.bytes()?,
                public_data: r.bytes()?,
            },
            9 => Self::Hkdf {
                extract: bool::get(r)?,
                expand: bool::get(r)?,
                prf_hash: r.u64()?,
                salt_type: r.u64()?,
                salt: r.bytes()?,
                salt_key: r.u64()?,
                info: r.bytes()?,
            },
            10 => Self::RsaAesKeyWrap {
                aes_key_bits: r.u64()?,
                oaep: OaepParams::get(r)?,
            },
            11 => Self::AesCbcEncryptData {
                iv: r.array()?,
                data: r.bytes()?,
            },
            12 => Self::Eddsa {
                ph_flag: bool::get(r)?,
                context: r.bytes()?,
            },
            13 => Self::Pbkdf2 {
                salt_source: r.u64()?,
                salt: r.bytes()?,
                iterations: r.u64()?,
                prf: r.u64()?,
                prf_data: r.bytes()?,
                password: r.bytes()?,
            },
            14 => Self::GcmMessage {
                iv: r.bytes()?,
                iv_fixed_bits: r.u64()?,
                iv_generator: r.u64()?,
                tag: r.bytes()?,
                tag_bits: r.u64()?,
            },
            15 => Self::Raw(r.bytes()?),
            16 => Self::StringData(r.bytes()?),
            17 => Self::ChaCha20Poly1305 {
                nonce: r.bytes()?,
                aad: r.bytes()?,
            },
            _ => return Err(malformed("mechanism parameter tag")),
        })
    }
}

impl Wire for Mechanism {
    fn put(&self, w: &mut Writer) {
        w.u64(self.ty);
        self.params.put(w);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        Ok(Self {
            ty: r.u64()?,
            params: MechanismParams::get(r)?,
        })
    }
}

impl Wire for Version {
    fn put(&self, w: &mut Writer) {
        w.u8(self.major);
        w.u8(self.minor);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        Ok(Self {
            major: r.u8()?,
            minor: r.u8()?,
        })
    }
}

impl Wire for SlotInfo {
    fn put(&self, w: &mut Writer) {
        self.description.put(w);
        self.manufacturer.put(w);
        w.u64(self.flags);
        self.hardware_version.put(w);
        self.firmware_version.put(w);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        Ok(Self {
            description: String::get(r)?,
            manufacturer: String::get(r)?,
            flags: r.u64()?,
            hardware_version: Version::get(r)?,
            firmware_version: Version::get(r)?,
        })
    }
}

impl Wire for TokenInfo {
    fn put(&self, w: &mut Writer) {
        self.label.put(w);
        self.manufacturer.put(w);
        self.model.put(w);
        self.serial_number.put(w);
        for v in [
            self.flags,
            self.max_session_count,
            self.session_count,
            self.max_rw_session_count,
            self.rw_session_count,
            self.max_pin_len,
            self.min_pin_len,
            self.total_public_memory,
            self.free_public_memory,
            self.total_private_memory,
            self.free_private_memory,
        ] {
            w.u64(v);
        }
        self.hardware_version.put(w);
        self.firmware_version.put(w);
        self.utc_time.put(w);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        Ok(Self {
            label: String::get(r)?,
            manufacturer: String::get(r)?,
            model: String::get(r)?,
            serial_number: String::get(r)?,
            flags: r.u64()?,
            max_session_count: r.u64()?,
            session_count: r.u64()?,
            max_rw_session_count: r.u64()?,
            rw_session_count: r.u64()?,
            max_pin_len: r.u64()?,
            min_pin_len: r.u64()?,
            total_public_memory: r.u64()?,
            free_public_memory: r.u64()?,
            total_private_memory: r.u64()?,
            free_private_memory: r.u64()?,
            hardware_version: Version::get(r)?,
            firmware_version: Version::get(r)?,
            utc_time: String::get(r)?,
        })
    }
}

impl Wire for SessionInfo {
    fn put(&self, w: &mut Writer) {
        self.slot.put(w);
        w.u64(self.state);
        w.u64(self.flags);
        w.u64(self.device_error);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        Ok(Self {
            slot: SlotId::get(r)?,
            state: r.u64()?,
            flags: r.u64()?,
            device_error: r.u64()?,
        })
    }
}

impl Wire for MechanismInfo {
    fn put(&self, w: &mut Writer) {
        w.u64(self.min_key_size);
        w.u64(self.max_key_size);
        w.u64(self.flags);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        Ok(Self {
            min_key_size: r.u64()?,
            max_key_size: r.u64()?,
            flags: r.u64()?,
        })
    }
}

/// An error as it crosses the wire: its `CK_RV`, and `needed` for `CKR_BUFFER_TOO_SMALL`.
impl Wire for Error {
    fn put(&self, w: &mut Writer) {
        w.u64(self.rv());
        if let Self::BufferTooSmall { needed } = self {
            needed.put(w);
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        let rv = r.u64()?;
        if rv == cryptoki_sys::CKR_BUFFER_TOO_SMALL {
            return Ok(Self::BufferTooSmall {
                needed: usize::get(r)?,
            });
        }
        if rv == cryptoki_sys::CKR_OK {
            return Err(malformed("CKR_OK as an error"));
        }
        Ok(Self::from_rv(rv))
    }
}
