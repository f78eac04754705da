//! The messages: the hello exchange, one request variant per `Backend` method, one response
//! shape.
//!
//! # Frames
//!
//! Every message travels in a frame: a big-endian `u32` payload length, then the payload. A
//! length above [`MAX_FRAME`] is refused before anything is read or allocated; below it, the
//! reader's buffer grows with the bytes that arrive (at most [`READ_CHUNK`] ahead of them), so
//! a header announcing 16 MiB followed by nothing costs the reader nothing.
//!
//! # Hello
//!
//! The client's first frame is `"FHSM"`, `u16` lowest and `u16` highest protocol version it
//! speaks. The server answers `"FHSM"`, then `0` and the `u16` version chosen, or `1` and a
//! `u64` `CK_RV` saying why it refuses (an unknown version, a peer uid not allowed); then it
//! closes. After the hello, each request frame gets exactly one response frame, in order.
//!
//! # Requests and responses
//!
//! A request is a one-byte method tag and the method's arguments ([`Request`]). A response is
//! `0` then a [`Reply`], or `1` then the error (`u64` `CK_RV`, and `u64` `needed` for
//! `CKR_BUFFER_TOO_SMALL`).
//!
//! Output buffers (`out: Option<&mut [u8]>`) travel as their length only (`None` is a length
//! query); the reply carries the bytes produced ([`Reply::Out`]) or the length
//! ([`Reply::Len`]), so the two-call convention of PKCS#11 is preserved exactly: the server
//! calls the backend with a buffer of the caller's length.

use std::io::{Read, Write};

use crate::error::{Error, Result};
use crate::types::*;

use super::wire::{Bytes, Reader, Wire, Writer, malformed};

/// The largest frame payload either side accepts (16 MiB).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// The protocol versions this build speaks.
pub const VERSION: u16 = 1;
/// The hello's magic.
pub const MAGIC: &[u8; 4] = b"FHSM";

/// Writes one frame.
pub fn write_frame(out: &mut impl Write, payload: &[u8]) -> std::io::Result<()> {
    if payload.len() > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "frame larger than the protocol's limit",
        ));
    }
    let len = u32::try_from(payload.len()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(payload);
    out.write_all(&frame)?;
    out.flush()
}

/// The most a frame reader asks of its input in one read, and so the most its buffer runs
/// ahead of the bytes received (64 KiB).
pub const READ_CHUNK: usize = 64 * 1024;

/// Reads one frame; `Ok(None)` on a clean end of stream before the first byte.
///
/// The payload buffer grows as bytes arrive, [`READ_CHUNK`] at a time: its size never runs
/// more than one chunk (and the `Vec`'s doubling) ahead of what the peer actually sent, whatever
/// the header announced.
pub fn read_frame(input: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    read_frame_max(input, MAX_FRAME)
}

/// The largest hello or welcome either side reads (they are 8 and at most 13 bytes).
pub const HELLO_MAX: usize = 64;

/// [`read_frame`] with a lower limit than [`MAX_FRAME`] (e.g. [`HELLO_MAX`] for the hello).
pub fn read_frame_max(input: &mut impl Read, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        let Some(rest) = len.get_mut(got..) else {
            break;
        };
        match input.read(rest) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len =
        usize::try_from(u32::from_be_bytes(len)).map_err(|_| std::io::ErrorKind::InvalidData)?;
    if len > max.min(MAX_FRAME) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "frame larger than the protocol's limit",
        ));
    }
    let mut payload = Vec::new();
    read_payload(input, len, &mut payload)?;
    Ok(Some(payload))
}

/// Reads `len` payload bytes onto `payload`, growing it as they arrive; on an error, what
/// arrived stays in `payload`.
pub(super) fn read_payload(
    input: &mut impl Read,
    len: usize,
    payload: &mut Vec<u8>,
) -> std::io::Result<()> {
    payload.reserve(len.min(READ_CHUNK));
    while payload.len() < len {
        let start = payload.len();
        let want = (len - start).min(READ_CHUNK);
        payload.resize(start + want, 0);
        let Some(room) = payload.get_mut(start..) else {
            break;
        };
        match input.read(room) {
            Ok(0) => {
                payload.truncate(start);
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            Ok(n) => payload.truncate(start + n.min(want)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => payload.truncate(start),
            Err(e) => {
                payload.truncate(start);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The client's hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Lowest version spoken.
    pub min: u16,
    /// Highest version spoken.
    pub max: u16,
}

impl Hello {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(MAGIC);
        w.u16(self.min);
        w.u16(self.max);
        w.into_bytes()
    }
    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self> {
        let mut r = Reader::new(b);
        if r.take(4)? != MAGIC {
            return Err(malformed("hello magic"));
        }
        let h = Self {
            min: r.u16()?,
            max: r.u16()?,
        };
        r.finish()?;
        Ok(h)
    }
}

/// The server's answer to the hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Welcome {
    /// Accepted, speaking this version.
    Accepted(u16),
    /// Refused, with the reason as a `CK_RV`.
    Refused(u64),
}

impl Welcome {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(MAGIC);
        match self {
            Self::Accepted(v) => {
                w.u8(0);
                w.u16(*v);
            }
            Self::Refused(rv) => {
                w.u8(1);
                w.u64(*rv);
            }
        }
        w.into_bytes()
    }
    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self> {
        let mut r = Reader::new(b);
        if r.take(4)? != MAGIC {
            return Err(malformed("welcome magic"));
        }
        let w = match r.u8()? {
            0 => Self::Accepted(r.u16()?),
            1 => Self::Refused(r.u64()?),
            _ => return Err(malformed("welcome tag")),
        };
        r.finish()?;
        Ok(w)
    }
}

macro_rules! requests {
    (
        slot { $( $tag:literal $name:ident { $($field:ident : $ty:ty),* $(,)? } )* }
        session { $( $stag:literal $sname:ident { $($sfield:ident : $sty:ty),* $(,)? } )* }
    ) => {
        /// One request per `Backend` method, with the method's arguments (output buffers as
        /// their length). Session-scoped requests carry the session first.
        #[derive(Clone, Debug, PartialEq, Eq)]
        #[allow(missing_docs)]
        pub enum Request {
            $( $name { $($field: $ty),* }, )*
            $( $sname { session: SessionHandle, $($sfield: $sty),* }, )*
        }

        impl Request {
            /// Encodes.
            pub fn encode(&self) -> Vec<u8> {
                let mut w = Writer::new();
                match self {
                    $( Self::$name { $($field),* } => {
                        w.u8($tag);
                        $( $field.put(&mut w); )*
                    } )*
                    $( Self::$sname { session, $($sfield),* } => {
                        w.u8($stag);
                        session.put(&mut w);
                        $( $sfield.put(&mut w); )*
                    } )*
                }
                w.into_bytes()
            }

            /// Decodes a whole frame.
            pub fn decode(b: &[u8]) -> Result<Self> {
                let mut r = Reader::new(b);
                let req = match r.u8()? {
                    $( $tag => Self::$name { $($field: <$ty as Wire>::get(&mut r)?),* }, )*
                    $( $stag => Self::$sname {
                        session: SessionHandle::get(&mut r)?,
                        $($sfield: <$sty as Wire>::get(&mut r)?),*
                    }, )*
                    _ => return Err(malformed("unknown request tag")),
                };
                r.finish()?;
                Ok(req)
            }

            /// The method's name, for logs.
            pub fn name(&self) -> &'static str {
                match self {
                    $( Self::$name { .. } => stringify!($name), )*
                    $( Self::$sname { .. } => stringify!($sname), )*
                }
            }

            /// The session the request acts on, if it names one.
            pub fn session_mut(&mut self) -> Option<&mut SessionHandle> {
                match self {
                    $( Self::$name { .. } => None, )*
                    $( Self::$sname { session, .. } => Some(session), )*
                }
            }

            /// Every method tag, for tests.
            #[cfg(test)]
            pub(crate) const TAGS: &'static [u8] = &[$($tag,)* $($stag),*];
        }
    };
}

type O = ObjectHandle;
type OutLen = Option<usize>;
type Params = MechanismParams;

requests! {
    slot {
        1 SlotList { token_present: bool }
        2 SlotInfo { slot: SlotId }
        3 TokenInfo { slot: SlotId }
        4 MechanismList { slot: SlotId }
        5 MechanismInfo { slot: SlotId, ty: u64 }
        6 InitToken { slot: SlotId, so_pin: Bytes, label: [u8; 32] }
        7 WaitForSlotEvent { flags: u64 }
        8 OpenSession { slot: SlotId, flags: u64 }
        10 CloseAllSessions { slot: SlotId }
    }
    session {
        9 CloseSession {}
        11 SessionInfo {}
        12 SessionCancel { flags: u64 }
        13 OperationState { out: OutLen }
        14 SetOperationState { state: Bytes, encryption_key: Option<O>, authentication_key: Option<O> }
        15 InitPin { pin: Bytes }
        16 SetPin { old_pin: Bytes, new_pin: Bytes }
        17 Login { user: u64, pin: Option<Bytes> }
        18 LoginUser { user: u64, pin: Option<Bytes>, username: Bytes }
        19 Logout {}
        20 CreateObject { template: Template }
        21 CopyObject { object: O, template: Template }
        22 DestroyObject { object: O }
        23 ObjectSize { object: O }
        24 GetAttributeValue { object: O, types: Vec<u64> }
        25 SetAttributeValue { object: O, template: Template }
        26 FindObjectsInit { template: Template }
        27 FindObjects { max: usize }
        28 FindObjectsFinal {}
        29 EncryptInit { mech: Mechanism, key: O }
        30 Encrypt { data: Bytes, out: OutLen }
        31 EncryptUpdate { data: Bytes, out: OutLen }
        32 EncryptFinal { out: OutLen }
        33 DecryptInit { mech: Mechanism, key: O }
        34 Decrypt { data: Bytes, out: OutLen }
        35 DecryptUpdate { data: Bytes, out: OutLen }
        36 DecryptFinal { out: OutLen }
        37 DigestInit { mech: Mechanism }
        38 Digest { data: Bytes, out: OutLen }
        39 DigestUpdate { data: Bytes }
        40 DigestKey { key: O }
        41 DigestFinal { out: OutLen }
        42 SignInit { mech: Mechanism, key: O }
        43 Sign { data: Bytes, out: OutLen }
        44 SignUpdate { data: Bytes }
        45 SignFinal { out: OutLen }
        46 SignRecoverInit { mech: Mechanism, key: O }
        47 SignRecover { data: Bytes, out: OutLen }
        48 VerifyInit { mech: Mechanism, key: O }
        49 Verify { data: Bytes, signature: Bytes }
        50 VerifyUpdate { data: Bytes }
        51 VerifyFinal { signature: Bytes }
        52 VerifyRecoverInit { mech: Mechanism, key: O }
        53 VerifyRecover { signature: Bytes, out: OutLen }
        54 DigestEncryptUpdate { data: Bytes, out: OutLen }
        55 DecryptDigestUpdate { data: Bytes, out: OutLen }
        56 SignEncryptUpdate { data: Bytes, out: OutLen }
        57 DecryptVerifyUpdate { data: Bytes, out: OutLen }
        58 GenerateKey { mech: Mechanism, template: Template }
        59 GenerateKeyPair { mech: Mechanism, public_template: Template, private_template: Template }
        60 WrapKey { mech: Mechanism, wrapping_key: O, key: O, out: OutLen }
        61 UnwrapKey { mech: Mechanism, unwrapping_key: O, wrapped: Bytes, template: Template }
        62 DeriveKey { mech: Mechanism, base_key: O, template: Template }
        63 SeedRandom { seed: Bytes }
        64 GenerateRandom { len: usize }
        65 MessageEncryptInit { mech: Mechanism, key: O }
        66 EncryptMessage { params: Params, aad: Bytes, data: Bytes, out: OutLen }
        67 EncryptMessageBegin { params: Params, aad: Bytes }
        68 EncryptMessageNext { params: Params, data: Bytes, out: OutLen, last: bool }
        69 MessageEncryptFinal {}
        70 MessageDecryptInit { mech: Mechanism, key: O }
        71 DecryptMessage { params: Params, aad: Bytes, data: Bytes, out: OutLen }
        72 DecryptMessageBegin { params: Params, aad: Bytes }
        73 DecryptMessageNext { params: Params, data: Bytes, out: OutLen, last: bool }
        74 MessageDecryptFinal {}
        75 MessageSignInit { mech: Mechanism, key: O }
        76 SignMessage { params: Params, data: Bytes, out: OutLen }
        77 SignMessageBegin { params: Params }
        78 SignMessageNext { params: Params, data: Bytes, last: bool, out: OutLen }
        79 MessageSignFinal {}
        80 MessageVerifyInit { mech: Mechanism, key: O }
        81 VerifyMessage { params: Params, data: Bytes, signature: Bytes }
        82 VerifyMessageBegin { params: Params }
        83 VerifyMessageNext { params: Params, data: Bytes, signature: Option<Bytes> }
        84 MessageVerifyFinal {}
    }
}

/// The value a successful call returns.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Reply {
    /// `()`.
    Unit,
    Slots(Vec<SlotId>),
    Slot(SlotId),
    SlotInfo(SlotInfo),
    TokenInfo(TokenInfo),
    Mechanisms(Vec<u64>),
    MechanismInfo(MechanismInfo),
    Session(SessionHandle),
    SessionInfo(SessionInfo),
    Object(ObjectHandle),
    KeyPair(ObjectHandle, ObjectHandle),
    Ulong(u64),
    Answers(Vec<AttrAnswer>),
    Objects(Vec<ObjectHandle>),
    /// The bytes an output call produced (the caller gave a buffer).
    Out(Bytes),
    /// The length an output call needs (the caller asked for the length).
    Len(usize),
    /// Random bytes.
    Random(Bytes),
    /// A message call's updated parameters and its output (`Out` or `Len`), or `Unit`.
    Message(MechanismParams, Box<Reply>),
}

impl Wire for Reply {
    fn put(&self, w: &mut Writer) {
        match self {
            Self::Unit => w.u8(0),
            Self::Slots(v) => {
                w.u8(1);
                v.put(w);
            }
            Self::Slot(v) => {
                w.u8(2);
                v.put(w);
            }
            Self::SlotInfo(v) => {
                w.u8(3);
                v.put(w);
            }
            Self::TokenInfo(v) => {
                w.u8(4);
                v.put(w);
            }
            Self::Mechanisms(v) => {
                w.u8(5);
                v.put(w);
            }
            Self::MechanismInfo(v) => {
                w.u8(6);
                v.put(w);
            }
            Self::Session(v) => {
                w.u8(7);
                v.put(w);
            }
            Self::SessionInfo(v) => {
                w.u8(8);
                v.put(w);
            }
            Self::Object(v) => {
                w.u8(9);
                v.put(w);
            }
            Self::KeyPair(a, b) => {
                w.u8(10);
                a.put(w);
                b.put(w);
            }
            Self::Ulong(v) => {
                w.u8(11);
                v.put(w);
            }
            Self::Answers(v) => {
                w.u8(12);
                v.put(w);
            }
            Self::Objects(v) => {
                w.u8(13);
                v.put(w);
            }
            Self::Out(v) => {
                w.u8(14);
                v.put(w);
            }
            Self::Len(v) => {
                w.u8(15);
                v.put(w);
            }
            Self::Random(v) => {
                w.u8(16);
                v.put(w);
            }
            Self::Message(p, inner) => {
                w.u8(17);
                p.put(w);
                inner.put(w);
            }
        }
    }

    fn get(r: &mut Reader<'_>) -> Result<Self> {
        Ok(match r.u8()? {
            0 => Self::Unit,
            1 => Self::Slots(Wire::get(r)?),
            2 => Self::Slot(Wire::get(r)?),
            3 => Self::SlotInfo(Wire::get(r)?),
            4 => Self::TokenInfo(Wire::get(r)?),
            5 => Self::Mechanisms(Wire::get(r)?),
            6 => Self::MechanismInfo(Wire::get(r)?),
            7 => Self::Session(Wire::get(r)?),
            8 => Self::SessionInfo(Wire::get(r)?),
            9 => Self::Object(Wire::get(r)?),
            10 => Self::KeyPair(Wire::get(r)?, Wire::get(r)?),
            11 => Self::Ulong(Wire::get(r)?),
            12 => Self::Answers(Wire::get(r)?),
            13 => Self::Objects(Wire::get(r)?),
            14 => Self::Out(Wire::get(r)?),
            15 => Self::Len(Wire::get(r)?),
            16 => Self::Random(Wire::get(r)?),
            17 => {
                let params = MechanismParams::get(r)?;
                // One level only: a message reply never nests another message reply.
                let inner = match r.u8()? {
                    0 => Self::Unit,
                    14 => Self::Out(Wire::get(r)?),
                    15 => Self::Len(Wire::get(r)?),
                    _ => return Err(malformed("message reply")),
                };
                Self::Message(params, Box::new(inner))
            }
            _ => return Err(malformed("unknown reply tag")),
        })
    }
}

/// A response: the reply or the error.
pub type Response = Result<Reply>;

/// Encodes a response.
pub fn encode_response(resp: &Response) -> Vec<u8> {
    let mut w = Writer::new();
    match resp {
        Ok(reply) => {
            w.u8(0);
            reply.put(&mut w);
        }
        Err(e) => {
            w.u8(1);
            e.put(&mut w);
        }
    }
    w.into_bytes()
}

/// Decodes a response frame. The outer `Err` is a malformed frame; the inner one the call's
/// error.
pub fn decode_response(b: &[u8]) -> Result<Response> {
    let mut r = Reader::new(b);
    let resp = match r.u8()? {
        0 => Ok(Reply::get(&mut r)?),
        1 => Err(Error::get(&mut r)?),
        _ => return Err(malformed("response tag")),
    };
    r.finish()?;
    Ok(resp)
}
