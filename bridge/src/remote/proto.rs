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
//! speaks, and from version 2 on, optionally, the 32 bytes of its application key
//! ([`AppKey`]). The server answers `"FHSM"`, then `0`, the `u16` version chosen and, from
//! version 2 on, a byte saying whether the connection joined an application already open (`1`)
//! or opened a new one (`0`); or `1` and a `u64` `CK_RV` saying why it refuses (an unknown
//! version, a peer uid not allowed); then it closes. After the hello, each request frame gets
//! exactly one response frame, in order.
//!
//! # Versions
//!
//! - 1: every connection is an application of its own.
//! - 2: the hello may carry an application key: the connections of one authenticated peer
//!   that present the same key are one application (one backend, one session table, one
//!   login), so that a client can run calls side by side on several connections. Requests and
//!   responses are those of version 1. A server of version 2 still speaks version 1 (a client
//!   of version 1 is an application per connection, as before); a server of version 1 cannot
//!   decode a hello with a key and closes the connection without an answer.
//!
//! - 3: daemon requests ([`DaemonRequest`]): after the hello, a frame that starts with
//!   [`DAEMON_TAG`] asks the daemon itself, not the PKCS#11 backend (today: a page of the
//!   tenant's usage log, for its auditor). PKCS#11 requests and responses are those of version
//!   2, and the module still asks for version 2 ([`MODULE_VERSION`]): a module of this release
//!   works with a daemon of the last one. A client that needs daemon requests says
//!   `1..=3` and is told which version the daemon chose: a daemon of version 2 chooses 2, and
//!   the client stops with one line saying the daemon is too old, before sending anything.
//!
//! # Requests and responses
//!
//! A request is a one-byte tag and the function's arguments, in the order of the call table
//! (`crate::call`: [`Call::encode`] writes it, [`Request::decode`] reads it). A response is `0`
//! then a [`Reply`], or `1` then the error (`u64` `CK_RV`, and `u64` `needed` for
//! `CKR_BUFFER_TOO_SMALL`).
//!
//! Output buffers (`out: Option<&mut [u8]>`) travel as their length only (`None` is a length
//! query); the reply carries the bytes produced ([`Reply::Out`]) or the length
//! ([`Reply::Len`]), so the two-call convention of PKCS#11 is preserved exactly: the server
//! calls the backend with a buffer of the caller's length.

use std::io::{Read, Write};

use crate::audit::{Chain, Cursor};
use crate::call::Reply;
#[cfg(doc)]
use crate::call::{Call, Request};
use crate::error::{Error, Result};
use crate::types::*;

use super::wire::{Reader, Wire, Writer, malformed};

/// The largest frame payload either side accepts (16 MiB).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// The newest protocol version this build speaks (the server's highest).
pub const VERSION: u16 = 3;
/// The version the module's client speaks (only it): the PKCS#11 requests have not changed
/// since, so it also works with a daemon of version 2.
pub const MODULE_VERSION: u16 = 2;
/// The first version with daemon requests ([`DaemonRequest`]).
pub const DAEMON_VERSION: u16 = 3;
/// The first byte of a daemon request: no PKCS#11 request has this tag.
pub const DAEMON_TAG: u8 = 0xff;
/// The most bytes of log lines one [`DaemonReply::AuditPage`] carries (at least one line):
/// far under [`MAX_FRAME`], so a log of any size crosses in pages, and neither side holds
/// more than a page of it.
pub const AUDIT_PAGE: usize = 1024 * 1024;
/// The oldest protocol version the server still speaks.
pub const MIN_VERSION: u16 = 1;
/// The first version whose hello may carry an application key.
pub const APP_KEY_VERSION: u16 = 2;
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

/// The largest hello or welcome either side reads (they are at most 40 and 13 bytes).
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

/// A client's application key: 32 random bytes a process draws (again after `fork`), the same
/// in the hello of each of its connections, so that the server serves them as one application.
/// It is a capability within one authenticated identity only: the server groups connections by
/// (identity, key), so the key of another identity's application joins nothing of it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AppKey(pub [u8; 32]);

impl AppKey {
    /// A fresh key from aws-lc-rs' random generator (through rustls' provider, the one the
    /// TLS transport uses); `None` if it fails.
    pub fn random() -> Option<Self> {
        let mut k = [0u8; 32];
        rustls::crypto::aws_lc_rs::default_provider()
            .secure_random
            .fill(&mut k)
            .ok()?;
        Some(Self(k))
    }
}

impl std::fmt::Debug for AppKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Whoever reads logs must not be able to join the application.
        f.write_str("AppKey(..)")
    }
}

/// The client's hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Lowest version spoken.
    pub min: u16,
    /// Highest version spoken.
    pub max: u16,
    /// The application this connection belongs to (from version 2; `None`: an application of
    /// its own).
    pub app: Option<AppKey>,
}

impl Hello {
    /// A hello speaking `min..=max`, for an application of its own.
    pub fn versions(min: u16, max: u16) -> Self {
        Self {
            min,
            max,
            app: None,
        }
    }

    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(MAGIC);
        w.u16(self.min);
        w.u16(self.max);
        if let Some(key) = &self.app {
            w.raw(&key.0);
        }
        w.into_bytes()
    }
    /// Decodes.
    pub fn decode(b: &[u8]) -> Result<Self> {
        let mut r = Reader::new(b);
        if r.take(4)? != MAGIC {
            return Err(malformed("hello magic"));
        }
        let (min, max) = (r.u16()?, r.u16()?);
        let app = match r.remaining() {
            0 => None,
            32 => {
                let mut k = [0u8; 32];
                k.copy_from_slice(r.take(32)?);
                Some(AppKey(k))
            }
            _ => return Err(malformed("hello length")),
        };
        r.finish()?;
        Ok(Self { min, max, app })
    }

    /// The version a server speaking `MIN_VERSION..=VERSION` chooses (`None`: none in
    /// common).
    pub fn choose(&self) -> Option<u16> {
        let v = self.max.min(VERSION);
        (v >= self.min.max(MIN_VERSION)).then_some(v)
    }
}

/// The server's answer to the hello.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Welcome {
    /// Accepted, speaking `version`; `joined`: the connection joined an application already
    /// open (said from version 2 on; always `false` in version 1).
    Accepted {
        /// The version chosen.
        version: u16,
        /// Whether an application with this key was already open.
        joined: bool,
    },
    /// Refused, with the reason as a `CK_RV`.
    Refused(u64),
}

impl Welcome {
    /// Encodes.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.raw(MAGIC);
        match self {
            Self::Accepted { version, joined } => {
                w.u8(0);
                w.u16(*version);
                if *version >= APP_KEY_VERSION {
                    w.u8(u8::from(*joined));
                }
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
            0 => {
                let version = r.u16()?;
                let joined = if version >= APP_KEY_VERSION {
                    match r.u8()? {
                        0 => false,
                        1 => true,
                        _ => return Err(malformed("welcome joined")),
                    }
                } else {
                    false
                };
                Self::Accepted { version, joined }
            }
            1 => Self::Refused(r.u64()?),
            _ => return Err(malformed("welcome tag")),
        };
        r.finish()?;
        Ok(w)
    }
}

impl Wire for Reply {
    fn put(&self, w: &mut Writer) {
        match self {
            Self::Unit(()) => w.u8(0),
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
            Self::KeyPair((a, b)) => {
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
            0 => Self::Unit(()),
            1 => Self::Slots(Wire::get(r)?),
            2 => Self::Slot(Wire::get(r)?),
            3 => Self::SlotInfo(Wire::get(r)?),
            4 => Self::TokenInfo(Wire::get(r)?),
            5 => Self::Mechanisms(Wire::get(r)?),
            6 => Self::MechanismInfo(Wire::get(r)?),
            7 => Self::Session(Wire::get(r)?),
            8 => Self::SessionInfo(Wire::get(r)?),
            9 => Self::Object(Wire::get(r)?),
            10 => Self::KeyPair((Wire::get(r)?, Wire::get(r)?)),
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
                    0 => Self::Unit(()),
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
    encode_result(resp)
}

/// Decodes a response frame. The outer `Err` is a malformed frame; the inner one the call's
/// error.
pub fn decode_response(b: &[u8]) -> Result<Response> {
    decode_result(b)
}

/// `0` then the answer, or `1` then the error: the shape of every response frame.
fn encode_result<T: Wire>(resp: &Result<T>) -> Vec<u8> {
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

/// Reads what [`encode_result`] wrote; the outer `Err` is a malformed frame.
fn decode_result<T: Wire>(b: &[u8]) -> Result<Result<T>> {
    let mut r = Reader::new(b);
    let resp = match r.u8()? {
        0 => Ok(T::get(&mut r)?),
        1 => Err(Error::get(&mut r)?),
        _ => return Err(malformed("response tag")),
    };
    r.finish()?;
    Ok(resp)
}

/// A request to the daemon itself (protocol version 3 on): not a PKCS#11 function, so no
/// backend sees it; the daemon decides by the connection's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DaemonRequest {
    /// A page of tenant `tenant`'s usage log: from its start (`cursor` `None`), or where the
    /// last page ended. Only an identity holding the `auditor` role in that tenant is
    /// answered; every other refusal is the same `CKR_ACTION_PROHIBITED` (another tenant, a
    /// tenant that does not exist and another role look alike).
    AuditRead {
        /// The tenant.
        tenant: String,
        /// Where to go on (`None`: from the first line).
        cursor: Option<Cursor>,
    },
}

/// The daemon's answer to a [`DaemonRequest`] (in a response frame: `0` then this, or `1` and
/// the error, as for a PKCS#11 request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DaemonReply {
    /// Lines of the log, as they are in the file, verified (`crate::audit::read_page`); the
    /// client checks the chain again. `next`: where the next page starts (`None`: this page
    /// ends at the end of the log).
    AuditPage {
        /// The lines, without their newlines.
        lines: Vec<String>,
        /// Where to go on.
        next: Option<Cursor>,
    },
    /// The log does not verify: nothing of it is sent. `line`: the first bad line (0: the
    /// log as a whole, its head file, or a log archived while it was read).
    AuditBroken {
        /// The line.
        line: u64,
        /// Why.
        why: String,
    },
}

impl Wire for Cursor {
    fn put(&self, w: &mut Writer) {
        w.u64(self.offset);
        w.u64(self.file.0);
        w.u64(self.file.1);
        w.u64(self.chain.seq());
        self.chain.prev().to_owned().put(w);
        self.seal.put(w);
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        let offset = r.u64()?;
        let file = (r.u64()?, r.u64()?);
        let seq = r.u64()?;
        let prev = String::get(r)?;
        let seal = <[u8; 32]>::get(r)?;
        Ok(Self {
            offset,
            file,
            chain: Chain::after(seq, prev),
            seal,
        })
    }
}

impl DaemonRequest {
    /// Encodes: [`DAEMON_TAG`], the request's tag, its fields.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(DAEMON_TAG);
        match self {
            Self::AuditRead { tenant, cursor } => {
                w.u8(1);
                tenant.put(&mut w);
                cursor.put(&mut w);
            }
        }
        w.into_bytes()
    }

    /// Decodes a frame that starts with [`DAEMON_TAG`].
    pub fn decode(b: &[u8]) -> Result<Self> {
        let mut r = Reader::new(b);
        if r.u8()? != DAEMON_TAG {
            return Err(malformed("daemon request tag"));
        }
        let req = match r.u8()? {
            1 => {
                let tenant = String::get(&mut r)?;
                // Only a name a tenant could have: nothing longer reaches the daemon's log.
                if !crate::tenant::valid_name(&tenant) {
                    return Err(malformed("tenant name"));
                }
                Self::AuditRead {
                    tenant,
                    cursor: Wire::get(&mut r)?,
                }
            }
            _ => return Err(malformed("unknown daemon request")),
        };
        r.finish()?;
        Ok(req)
    }
}

impl Wire for DaemonReply {
    fn put(&self, w: &mut Writer) {
        match self {
            Self::AuditPage { lines, next } => {
                w.u8(1);
                lines.put(w);
                next.put(w);
            }
            Self::AuditBroken { line, why } => {
                w.u8(2);
                line.put(w);
                why.put(w);
            }
        }
    }
    fn get(r: &mut Reader<'_>) -> Result<Self> {
        Ok(match r.u8()? {
            1 => Self::AuditPage {
                lines: Wire::get(r)?,
                next: Wire::get(r)?,
            },
            2 => Self::AuditBroken {
                line: r.u64()?,
                why: String::get(r)?,
            },
            _ => return Err(malformed("unknown daemon reply")),
        })
    }
}

/// Encodes the answer to a daemon request.
pub fn encode_daemon_response(resp: &Result<DaemonReply>) -> Vec<u8> {
    encode_result(resp)
}

/// Decodes the answer to a daemon request. The outer `Err` is a malformed frame; the inner
/// one the daemon's refusal.
pub fn decode_daemon_response(b: &[u8]) -> Result<Result<DaemonReply>> {
    decode_result(b)
}
