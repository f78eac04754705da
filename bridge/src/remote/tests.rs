//! Tests of the remote protocol: codec round trips of every message, hostile frames, and a
//! client against a server in process (two-call convention, session ownership, reconnect).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cryptoki_sys::*;
use parking_lot::Mutex;

use super::proto::*;
use super::wire::Bytes;
use super::*;
use crate::call::*;
use crate::error::{Error, Result};
use crate::types::*;

fn oaep() -> OaepParams {
    OaepParams {
        hash_alg: CKM_SHA256,
        mgf: CKG_MGF1_SHA256,
        source: CKZ_DATA_SPECIFIED,
        source_data: b"label".to_vec(),
    }
}

fn all_params() -> Vec<MechanismParams> {
    use MechanismParams as P;
    vec![
        P::None,
        P::Bytes(vec![1, 2, 3]),
        P::Ulong(42),
        P::RsaPkcsPss {
            hash_alg: CKM_SHA384,
            mgf: CKG_MGF1_SHA384,
            salt_len: 48,
        },
        P::RsaPkcsOaep(oaep()),
        P::AesCtr {
            counter_bits: 32,
            cb: [7; 16],
        },
        P::Gcm {
            iv: vec![1; 12],
            iv_bits: 96,
            aad: vec![2; 5],
            tag_bits: 128,
        },
        P::Ccm {
            data_len: 100,
            nonce: vec![3; 13],
            aad: vec![],
            mac_len: 16,
        },
        P::ChaCha20Poly1305 {
            nonce: vec![6; 12],
            aad: vec![7; 3],
        },
        P::Ecdh1Derive {
            kdf: CKD_SHA256_KDF,
            shared_data: vec![4; 3],
            public_data: vec![5; 65],
        },
        P::Hkdf {
            extract: true,
            expand: false,
            prf_hash: CKM_SHA256,
            salt_type: CKF_HKDF_SALT_KEY,
            salt: vec![6],
            salt_key: 99,
            info: vec![7; 10],
        },
        P::RsaAesKeyWrap {
            aes_key_bits: 256,
            oaep: oaep(),
        },
        P::AesCbcEncryptData {
            iv: [8; 16],
            data: vec![9; 32],
        },
        P::Eddsa {
            ph_flag: true,
            context: b"ctx".to_vec(),
        },
        P::Pbkdf2 {
            salt_source: CKZ_SALT_SPECIFIED,
            salt: vec![10; 16],
            iterations: 1000,
            prf: CKP_PKCS5_PBKD2_HMAC_SHA256,
            prf_data: vec![],
            password: b"pw".to_vec(),
        },
        P::GcmMessage {
            iv: vec![11; 12],
            iv_fixed_bits: 32,
            iv_generator: CKG_GENERATE_COUNTER,
            tag: vec![12; 16],
            tag_bits: 128,
        },
        P::StringData(vec![14; 5]),
        P::Raw(vec![13; 24]),
    ]
}

fn nested_template() -> Template {
    Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::bool(CKA_TOKEN, true))
        .with(Attribute::bytes(CKA_LABEL, b"k".to_vec()))
        .with(Attribute::template(
            CKA_UNWRAP_TEMPLATE,
            Template::new()
                .with(Attribute::bool(CKA_SENSITIVE, true))
                .with(Attribute::template(
                    CKA_DERIVE_TEMPLATE,
                    Template::new().with(Attribute::bytes(CKA_ID, vec![])),
                )),
        ))
}

/// A server's output buffer of `n` bytes, as decoded.
fn out(n: usize) -> OutBuf {
    let mut w = wire::Writer::new();
    w.u8(1);
    w.u64(u64::try_from(n).unwrap());
    let bytes = w.into_bytes();
    let mut r = wire::Reader::new(&bytes);
    <Option<&mut [u8]> as Arg<'_>>::get(&mut r)
        .unwrap()
        .unwrap()
}

fn mech(params: MechanismParams) -> Mechanism {
    Mechanism::with(CKM_AES_GCM, params)
}

/// One request of every method, every parameter variant in the message calls.
fn all_requests() -> Vec<Request<'static>> {
    use Request as R;
    let s = SessionHandle(7);
    let o = ObjectHandle(9);
    let slot = SlotId(3);
    let t = nested_template;
    let d = || Bytes(b"data".to_vec());
    let m = || mech(MechanismParams::Bytes(vec![0; 16]));
    let mut v = vec![
        R::SlotList {
            token_present: true,
        },
        R::SlotInfo { slot },
        R::TokenInfo { slot },
        R::MechanismList { slot },
        R::MechanismInfo {
            slot,
            ty: CKM_ECDSA,
        },
        R::InitToken {
            slot,
            so_pin: d(),
            label: [b' '; 32],
        },
        R::WaitForSlotEvent {
            flags: CKF_DONT_BLOCK,
        },
        R::OpenSession {
            slot,
            flags: CKF_SERIAL_SESSION,
        },
        R::CloseSession { session: s },
        R::CloseAllSessions { slot },
        R::SessionInfo { session: s },
        R::SessionCancel {
            session: s,
            flags: 1,
        },
        R::OperationState {
            session: s,
            out: None,
        },
        R::SetOperationState {
            session: s,
            state: d(),
            encryption_key: Some(o),
            authentication_key: None,
        },
        R::InitPin {
            session: s,
            pin: d(),
        },
        R::SetPin {
            session: s,
            old_pin: d(),
            new_pin: Bytes(vec![]),
        },
        R::Login {
            session: s,
            user: CKU_USER,
            pin: None,
        },
        R::LoginUser {
            session: s,
            user: CKU_SO,
            pin: Some(d()),
            username: d(),
        },
        R::Logout { session: s },
        R::CreateObject {
            session: s,
            template: t(),
        },
        R::CopyObject {
            session: s,
            object: o,
            template: t(),
        },
        R::DestroyObject {
            session: s,
            object: o,
        },
        R::ObjectSize {
            session: s,
            object: o,
        },
        R::GetAttributeValue {
            session: s,
            object: o,
            types: vec![CKA_VALUE, CKA_UNWRAP_TEMPLATE],
        },
        R::SetAttributeValue {
            session: s,
            object: o,
            template: t(),
        },
        R::FindObjectsInit {
            session: s,
            template: Template::new(),
        },
        R::FindObjects {
            session: s,
            max: 10,
        },
        R::FindObjectsFinal { session: s },
        R::EncryptInit {
            session: s,
            mech: m(),
            key: o,
        },
        R::Encrypt {
            session: s,
            data: d(),
            out: Some(out(64)),
        },
        R::EncryptUpdate {
            session: s,
            data: d(),
            out: None,
        },
        R::EncryptFinal {
            session: s,
            out: Some(out(0)),
        },
        R::DecryptInit {
            session: s,
            mech: m(),
            key: o,
        },
        R::Decrypt {
            session: s,
            data: d(),
            out: Some(out(1)),
        },
        R::DecryptUpdate {
            session: s,
            data: d(),
            out: None,
        },
        R::DecryptFinal {
            session: s,
            out: None,
        },
        R::DigestInit {
            session: s,
            mech: Mechanism::new(CKM_SHA256),
        },
        R::Digest {
            session: s,
            data: d(),
            out: Some(out(32)),
        },
        R::DigestUpdate {
            session: s,
            data: d(),
        },
        R::DigestKey { session: s, key: o },
        R::DigestFinal {
            session: s,
            out: Some(out(32)),
        },
        R::SignInit {
            session: s,
            mech: m(),
            key: o,
        },
        R::Sign {
            session: s,
            data: d(),
            out: None,
        },
        R::SignUpdate {
            session: s,
            data: d(),
        },
        R::SignFinal {
            session: s,
            out: Some(out(64)),
        },
        R::SignRecoverInit {
            session: s,
            mech: m(),
            key: o,
        },
        R::SignRecover {
            session: s,
            data: d(),
            out: None,
        },
        R::VerifyInit {
            session: s,
            mech: m(),
            key: o,
        },
        R::Verify {
            session: s,
            data: d(),
            signature: d(),
        },
        R::VerifyUpdate {
            session: s,
            data: d(),
        },
        R::VerifyFinal {
            session: s,
            signature: d(),
        },
        R::VerifyRecoverInit {
            session: s,
            mech: m(),
            key: o,
        },
        R::VerifyRecover {
            session: s,
            signature: d(),
            out: Some(out(5)),
        },
        R::DigestEncryptUpdate {
            session: s,
            data: d(),
            out: None,
        },
        R::DecryptDigestUpdate {
            session: s,
            data: d(),
            out: Some(out(4)),
        },
        R::SignEncryptUpdate {
            session: s,
            data: d(),
            out: None,
        },
        R::DecryptVerifyUpdate {
            session: s,
            data: d(),
            out: Some(out(4)),
        },
        R::GenerateKey {
            session: s,
            mech: Mechanism::new(CKM_AES_KEY_GEN),
            template: t(),
        },
        R::GenerateKeyPair {
            session: s,
            mech: Mechanism::new(CKM_EC_KEY_PAIR_GEN),
            public_template: t(),
            private_template: Template::new(),
        },
        R::WrapKey {
            session: s,
            mech: m(),
            wrapping_key: o,
            key: ObjectHandle(10),
            out: None,
        },
        R::UnwrapKey {
            session: s,
            mech: m(),
            unwrapping_key: o,
            wrapped: d(),
            template: t(),
        },
        R::DeriveKey {
            session: s,
            mech: m(),
            base_key: o,
            template: t(),
        },
        R::SeedRandom {
            session: s,
            seed: d(),
        },
        R::GenerateRandom {
            session: s,
            out: vec![0; 32],
        },
        R::MessageEncryptInit {
            session: s,
            mech: m(),
            key: o,
        },
        R::EncryptMessageBegin {
            session: s,
            params: MechanismParams::None,
            aad: d(),
        },
        R::EncryptMessageNext {
            session: s,
            params: MechanismParams::None,
            data: d(),
            out: Some(out(8)),
            last: true,
        },
        R::MessageEncryptFinal { session: s },
        R::MessageDecryptInit {
            session: s,
            mech: m(),
            key: o,
        },
        R::DecryptMessageBegin {
            session: s,
            params: MechanismParams::None,
            aad: d(),
        },
        R::DecryptMessageNext {
            session: s,
            params: MechanismParams::None,
            data: d(),
            out: None,
            last: false,
        },
        R::MessageDecryptFinal { session: s },
        R::MessageSignInit {
            session: s,
            mech: m(),
            key: o,
        },
        R::SignMessageBegin {
            session: s,
            params: MechanismParams::None,
        },
        R::SignMessageNext {
            session: s,
            params: MechanismParams::None,
            data: d(),
            last: false,
            out: None,
        },
        R::MessageSignFinal { session: s },
        R::MessageVerifyInit {
            session: s,
            mech: m(),
            key: o,
        },
        R::VerifyMessageBegin {
            session: s,
            params: MechanismParams::None,
        },
        R::VerifyMessageNext {
            session: s,
            params: MechanismParams::None,
            data: d(),
            signature: Some(d()),
        },
        R::MessageVerifyFinal { session: s },
    ];
    for p in all_params() {
        v.push(R::EncryptMessage {
            session: s,
            params: p.clone(),
            aad: d(),
            data: d(),
            out: Some(out(100)),
        });
        v.push(R::DecryptMessage {
            session: s,
            params: p.clone(),
            aad: Bytes(vec![]),
            data: d(),
            out: None,
        });
        v.push(R::SignMessage {
            session: s,
            params: p.clone(),
            data: d(),
            out: Some(out(3)),
        });
        v.push(R::VerifyMessage {
            session: s,
            params: p.clone(),
            data: d(),
            signature: d(),
        });
        v.push(R::SignInit {
            session: s,
            mech: mech(p),
            key: o,
        });
    }
    v
}

fn all_replies() -> Vec<Response> {
    let info = TokenInfo {
        label: "token".into(),
        manufacturer: "FerroHSM".into(),
        model: "sim".into(),
        serial_number: "0001".into(),
        flags: CKF_TOKEN_INITIALIZED,
        max_session_count: 0,
        session_count: 1,
        max_rw_session_count: 0,
        rw_session_count: 1,
        max_pin_len: 64,
        min_pin_len: 4,
        total_public_memory: u64::MAX,
        free_public_memory: u64::MAX,
        total_private_memory: 1,
        free_private_memory: 2,
        hardware_version: Version { major: 1, minor: 2 },
        firmware_version: Version { major: 3, minor: 4 },
        utc_time: "2026120216000000".into(),
    };
    let mut v: Vec<Response> = vec![
        Ok(Reply::Unit(())),
        Ok(Reply::Slots(vec![SlotId(0), SlotId(5)])),
        Ok(Reply::Slot(SlotId(1))),
        Ok(Reply::SlotInfo(SlotInfo {
            description: "slot é".into(),
            manufacturer: "m".into(),
            flags: CKF_TOKEN_PRESENT,
            hardware_version: Version::default(),
            firmware_version: Version { major: 9, minor: 9 },
        })),
        Ok(Reply::TokenInfo(info)),
        Ok(Reply::Mechanisms(vec![CKM_ECDSA, CKM_AES_GCM])),
        Ok(Reply::MechanismInfo(MechanismInfo {
            min_key_size: 256,
            max_key_size: 521,
            flags: CKF_SIGN,
        })),
        Ok(Reply::Session(SessionHandle(4))),
        Ok(Reply::SessionInfo(SessionInfo {
            slot: SlotId(2),
            state: CKS_RW_USER_FUNCTIONS,
            flags: CKF_RW_SESSION,
            device_error: 0,
        })),
        Ok(Reply::Object(ObjectHandle(8))),
        Ok(Reply::KeyPair((ObjectHandle(1), ObjectHandle(2)))),
        Ok(Reply::Ulong(77)),
        Ok(Reply::Answers(vec![
            AttrAnswer::Value(AttrValue::Bytes(vec![1])),
            AttrAnswer::Value(AttrValue::Template(nested_template())),
            AttrAnswer::Sensitive,
            AttrAnswer::Invalid,
        ])),
        Ok(Reply::Objects(vec![ObjectHandle(3)])),
        Ok(Reply::Out(Bytes(vec![0xaa; 70]))),
        Ok(Reply::Len(70)),
        Ok(Reply::Random(Bytes(vec![1; 16]))),
        Ok(Reply::Message(
            MechanismParams::None,
            Box::new(Reply::Unit(())),
        )),
        Ok(Reply::Message(
            MechanismParams::None,
            Box::new(Reply::Len(4)),
        )),
        Err(Error::BufferTooSmall { needed: 123 }),
        Err(Error::PinIncorrect),
        Err(Error::Foreign(0x8000_1234)),
    ];
    for p in all_params() {
        v.push(Ok(Reply::Message(
            p,
            Box::new(Reply::Out(Bytes(vec![5; 3]))),
        )));
    }
    v
}

/// A request's wire form as the call it lends encodes it (what a client sends).
fn encode_lent(req: Request<'_>) -> Vec<u8> {
    let mut out = None;
    let _ = req.serve(|call| {
        out = Some(call.encode());
        Ok(Reply::Unit(()))
    });
    out.unwrap()
}

#[test]
fn every_request_round_trips_and_every_method_is_covered() {
    let mut tags = BTreeSet::new();
    for req in all_requests() {
        let name = req.name();
        let bytes = req.encode();
        tags.insert(bytes[0]);
        assert_eq!(Request::decode(&bytes).unwrap().encode(), bytes, "{name}");
        assert_eq!(
            encode_lent(req),
            bytes,
            "{name}: the lent call encodes the same"
        );
        let req = Request::decode(&bytes).unwrap();
        // Every strict prefix is an error, never a panic; so is a trailing byte.
        for n in 0..bytes.len() {
            assert!(
                Request::decode(&bytes[..n]).is_err(),
                "{} cut at {n}",
                req.name()
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Request::decode(&longer).is_err());
    }
    let all: BTreeSet<u8> = Request::TAGS.iter().copied().collect();
    assert_eq!(all.len(), Request::TAGS.len(), "tags are unique");
    assert_eq!(tags, all, "one sample per method");
    assert_eq!(all.len(), 84);
}

#[test]
fn every_response_round_trips() {
    for resp in all_replies() {
        let bytes = encode_response(&resp);
        assert_eq!(decode_response(&bytes).unwrap(), resp);
        for n in 0..bytes.len() {
            assert!(decode_response(&bytes[..n]).is_err());
        }
    }
}

#[test]
fn hostile_input_is_an_error_not_a_panic() {
    // Unknown tags, bad bools, bad option tags, absurd counts.
    assert!(Request::decode(&[0]).is_err());
    assert!(Request::decode(&[200]).is_err());
    assert!(Request::decode(&[1, 2]).is_err());
    let mut huge = vec![20u8];
    huge.extend_from_slice(&7u64.to_le_bytes());
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(Request::decode(&huge).is_err());
    // Templates nested deeper than the limit.
    let mut t = Template::new();
    for _ in 0..10 {
        t = Template::new().with(Attribute::template(CKA_WRAP_TEMPLATE, t));
    }
    let deep = Request::CreateObject {
        session: SessionHandle(1),
        template: t,
    };
    assert!(Request::decode(&deep.encode()).is_err());
    // A response claiming CKR_OK as an error, invalid UTF-8 in a string.
    let mut ok_err = vec![1u8];
    ok_err.extend_from_slice(&0u64.to_le_bytes());
    assert!(decode_response(&ok_err).is_err());
    // Pseudo-random garbage: decoding never panics.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for len in 0..2000usize {
        let bytes: Vec<u8> = (0..len % 97)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect();
        let _ = Request::decode(&bytes);
        let _ = decode_response(&bytes);
        let _ = Hello::decode(&bytes);
        let _ = Welcome::decode(&bytes);
    }
}

#[test]
fn frames_are_length_prefixed_and_bounded() {
    let mut buf = Vec::new();
    write_frame(&mut buf, b"abc").unwrap();
    assert_eq!(buf, [0, 0, 0, 3, b'a', b'b', b'c']);
    let mut r = buf.as_slice();
    assert_eq!(read_frame(&mut r).unwrap().unwrap(), b"abc");
    assert!(read_frame(&mut r).unwrap().is_none());
    let too_big = (u32::try_from(MAX_FRAME).unwrap() + 1).to_be_bytes();
    assert!(read_frame(&mut too_big.as_slice()).is_err());
    assert!(read_frame(&mut [0u8, 0].as_slice()).is_err());
    assert!(read_frame(&mut [0u8, 0, 0, 5, 1].as_slice()).is_err());
    // The hello has its own, small, limit.
    let hello = Hello::versions(1, 1).encode();
    let mut framed = Vec::new();
    write_frame(&mut framed, &hello).unwrap();
    assert_eq!(
        read_frame_max(&mut framed.as_slice(), HELLO_MAX).unwrap(),
        Some(hello)
    );
    let e = read_frame_max(&mut [0u8, 0, 0, 65].as_slice(), HELLO_MAX).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
}

#[test]
fn a_hello_announcing_a_large_frame_is_closed_at_once() {
    use std::io::Write;
    let dir = socket_dir();
    let path = dir.path().join("d.sock");
    let (h, flag) = start(Arc::new(Fake::default()), &path);
    let mut raw = std::os::unix::net::UnixStream::connect(&path).unwrap();
    raw.write_all(&[0, 0x10, 0, 0]).unwrap();
    let took = closed_within(&mut raw, Duration::from_secs(5));
    assert!(took < Duration::from_secs(1), "{took:?}");
    flag.store(true, Ordering::SeqCst);
    h.join().unwrap();
}

/// A reader that hands out `data` at most `step` bytes at a time, then ends, and records the
/// largest buffer it was asked to fill.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
    largest_ask: usize,
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.largest_ask = self.largest_ask.max(buf.len());
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn a_frame_header_announcing_16_mib_allocates_only_what_arrives() {
    // The header announces the largest frame; 100 KiB follow, then the peer stops.
    let mut input = u32::try_from(MAX_FRAME).unwrap().to_be_bytes().to_vec();
    input.extend(std::iter::repeat_n(7u8, 100 * 1024));
    let mut reader = Trickle {
        data: &input,
        step: 1000,
        largest_ask: 0,
    };
    let err = read_frame(&mut reader).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    // The reader was never handed a buffer larger than one chunk (the old reader asked for
    // all 16 MiB at once)...
    assert!(reader.largest_ask <= READ_CHUNK, "{}", reader.largest_ask);
    // ...and the buffer it reads into holds what arrived, plus at most a chunk, doubled.
    let mut reader = Trickle {
        data: &input[4..],
        step: 1000,
        largest_ask: 0,
    };
    let mut payload = Vec::new();
    assert!(read_payload(&mut reader, MAX_FRAME, &mut payload).is_err());
    assert_eq!(payload.len(), 100 * 1024);
    assert!(
        payload.capacity() <= 2 * (100 * 1024 + READ_CHUNK),
        "{} bytes reserved for {} received",
        payload.capacity(),
        payload.len()
    );
}

#[test]
fn a_whole_frame_arrives_intact_in_any_pieces() {
    let body: Vec<u8> = (0..300_000u32)
        .map(|i| u8::try_from(i % 251).unwrap())
        .collect();
    let mut framed = Vec::new();
    write_frame(&mut framed, &body).unwrap();
    for step in [1, 7, 4096, READ_CHUNK, usize::MAX] {
        let mut reader = Trickle {
            data: if step == 1 { &framed[..4100] } else { &framed },
            step,
            largest_ask: 0,
        };
        match read_frame(&mut reader) {
            Ok(Some(got)) => assert_eq!(got, body),
            // The 1-byte run is cut short on purpose (it would be slow): a clean error.
            Err(e) if step == 1 => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
            other => panic!("step {step}: {other:?}"),
        }
        assert!(reader.largest_ask <= READ_CHUNK);
    }
}

/// A backend with one slot: sessions, a sign call that produces 70 bytes, a message call that
/// writes back its parameters.
#[derive(Default)]
struct Fake {
    next: AtomicU64,
    open: Mutex<HashSet<u64>>,
    signed: Mutex<Vec<usize>>,
}

impl Backend for Fake {
    fn call(&self, call: Call<'_>) -> Result<Reply> {
        call.dispatch(self)
    }
}

impl ObjectFunctions for Fake {}

impl CipherFunctions for Fake {}

impl DigestFunctions for Fake {}

impl DualFunctions for Fake {}

impl KeyFunctions for Fake {}

impl RandomFunctions for Fake {}

impl SlotFunctions for Fake {
    fn slot_list(&self, _: bool) -> Result<Vec<SlotId>> {
        Ok(vec![SlotId(0)])
    }

    fn slot_info(&self, _: SlotId) -> Result<SlotInfo> {
        Err(Error::FunctionNotSupported)
    }

    fn token_info(&self, _: SlotId) -> Result<TokenInfo> {
        Err(Error::FunctionNotSupported)
    }

    fn mechanism_list(&self, _: SlotId) -> Result<Vec<CK_MECHANISM_TYPE>> {
        Ok(vec![CKM_ECDSA])
    }

    fn mechanism_info(&self, _: SlotId, _: CK_MECHANISM_TYPE) -> Result<MechanismInfo> {
        Err(Error::MechanismInvalid)
    }
}

impl SessionFunctions for Fake {
    fn open_session(&self, slot: SlotId, _: CK_FLAGS) -> Result<SessionHandle> {
        if slot != SlotId(0) {
            return Err(Error::SlotIdInvalid);
        }
        let h = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        self.open.lock().insert(h);
        Ok(SessionHandle(h))
    }

    fn close_session(&self, s: SessionHandle) -> Result<()> {
        if self.open.lock().remove(&s.0) {
            Ok(())
        } else {
            Err(Error::SessionHandleInvalid)
        }
    }

    fn close_all_sessions(&self, _: SlotId) -> Result<()> {
        self.open.lock().clear();
        Ok(())
    }

    fn session_info(&self, s: SessionHandle) -> Result<SessionInfo> {
        if !self.open.lock().contains(&s.0) {
            return Err(Error::SessionHandleInvalid);
        }
        Ok(SessionInfo {
            slot: SlotId(0),
            state: CKS_RO_PUBLIC_SESSION,
            flags: CKF_SERIAL_SESSION,
            device_error: 0,
        })
    }
}

impl SignFunctions for Fake {
    fn sign(&self, _: SessionHandle, data: &[u8], out: Option<&mut [u8]>) -> Result<usize> {
        match out {
            None => Ok(70),
            Some(o) if o.len() < 70 => Err(Error::BufferTooSmall { needed: 70 }),
            Some(o) => {
                o[..70].fill(u8::try_from(data.len()).unwrap());
                self.signed.lock().push(o.len());
                Ok(70)
            }
        }
    }
}

impl MessageFunctions for Fake {
    fn encrypt_message(
        &self,
        _: SessionHandle,
        params: &mut MechanismParams,
        _: &[u8],
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> Result<usize> {
        if let MechanismParams::GcmMessage { iv, tag, .. } = params {
            *iv = vec![0x11; 12];
            *tag = vec![0x22; 16];
        }
        if let Some(o) = out {
            o[..data.len()].copy_from_slice(data);
        }
        Ok(data.len())
    }
}

fn socket_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn start(
    fake: Arc<Fake>,
    path: &std::path::Path,
) -> (
    std::thread::JoinHandle<()>,
    Arc<std::sync::atomic::AtomicBool>,
) {
    let listener = bind(path).unwrap();
    let server = Server::new(fake);
    let flag = server.shutdown_flag();
    let h = std::thread::spawn(move || server.serve(listener).unwrap());
    (h, flag)
}

#[test]
fn client_and_server_in_process() {
    use std::os::unix::fs::PermissionsExt;
    let dir = socket_dir();
    let path = dir.path().join("d.sock");
    let fake = Arc::new(Fake::default());
    let (h, flag) = start(fake.clone(), &path);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A second daemon on the same socket is refused.
    assert!(bind(&path).is_err());

    let c = RemoteBackend::connect(&path).unwrap();
    assert_eq!(c.slot_list(false).unwrap(), vec![SlotId(0)]);
    assert_eq!(c.slot_info(SlotId(0)), Err(Error::FunctionNotSupported));
    let s = c.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    assert_eq!(c.open_session(SlotId(4), 0), Err(Error::SlotIdInvalid));

    // The two-call convention: a length query, a short buffer, a large one.
    assert_eq!(c.sign(s, b"abc", None).unwrap(), 70);
    let mut short = [0u8; 10];
    assert_eq!(
        c.sign(s, b"abc", Some(&mut short)),
        Err(Error::BufferTooSmall { needed: 70 })
    );
    let mut big = [0u8; 200];
    assert_eq!(c.sign(s, b"abc", Some(&mut big)).unwrap(), 70);
    assert!(big[..70].iter().all(|b| *b == 3) && big[70..].iter().all(|b| *b == 0));
    assert_eq!(fake.signed.lock().as_slice(), &[200]);

    // Parameters written back by a message call.
    let mut params = MechanismParams::GcmMessage {
        iv: vec![],
        iv_fixed_bits: 0,
        iv_generator: CKG_GENERATE,
        tag: vec![0; 16],
        tag_bits: 128,
    };
    let mut out = [0u8; 8];
    assert_eq!(
        c.encrypt_message(s, &mut params, b"", b"hello", Some(&mut out))
            .unwrap(),
        5
    );
    assert_eq!(&out[..5], b"hello");
    assert!(matches!(&params, MechanismParams::GcmMessage { iv, .. } if iv == &vec![0x11; 12]));

    // Sessions belong to their connection: another client cannot use them, and
    // C_CloseAllSessions of one client leaves the other's alone.
    let other = RemoteBackend::connect(&path).unwrap();
    let s2 = other.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    other.close_all_sessions(SlotId(0)).unwrap();
    assert_eq!(other.session_info(s2), Err(Error::SessionHandleInvalid));
    assert!(c.session_info(s).is_ok());
    let s3 = other.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    drop(other);
    // The connection's sessions are closed when it ends.
    let deadline = Instant::now() + Duration::from_secs(5);
    while fake.open.lock().len() > 1 {
        assert!(
            Instant::now() < deadline,
            "sessions of a closed connection stay open"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = s3;

    // The daemon goes away: the open session's next call fails, later ones say the session is
    // gone, and the slot list says the device is removed, without hanging.
    flag.store(true, Ordering::SeqCst);
    h.join().unwrap();
    let t0 = Instant::now();
    assert!(matches!(
        c.session_info(s),
        Err(Error::DeviceRemoved | Error::DeviceError)
    ));
    assert_eq!(c.session_info(s), Err(Error::SessionHandleInvalid));
    std::fs::remove_file(&path).ok();
    assert_eq!(c.slot_list(false), Err(Error::DeviceRemoved));
    assert!(t0.elapsed() < Duration::from_secs(3));

    // A new daemon: the same client works again, and old handles stay invalid.
    let fake2 = Arc::new(Fake::default());
    let (h2, flag2) = start(fake2, &path);
    assert_eq!(c.slot_list(false).unwrap(), vec![SlotId(0)]);
    let fresh = c.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    assert_ne!(fresh, s);
    assert_eq!(c.session_info(s), Err(Error::SessionHandleInvalid));
    assert!(c.session_info(fresh).is_ok());
    flag2.store(true, Ordering::SeqCst);
    h2.join().unwrap();
}

#[test]
fn peers_outside_the_allow_list_are_refused() {
    let dir = socket_dir();
    let path = dir.path().join("d.sock");
    let listener = bind(&path).unwrap();
    let server = Server::new(Arc::new(Fake::default())).allow_uids([u32::MAX - 1]);
    let flag = server.shutdown_flag();
    let h = std::thread::spawn(move || server.serve(listener).unwrap());
    let c = RemoteBackend::new(&path);
    assert_eq!(c.slot_list(false), Err(Error::DeviceError));
    flag.store(true, Ordering::SeqCst);
    h.join().unwrap();
}

#[test]
fn a_client_that_sends_garbage_is_disconnected_and_the_server_lives_on() {
    use std::io::Write;
    let dir = socket_dir();
    let path = dir.path().join("d.sock");
    let (h, flag) = start(Arc::new(Fake::default()), &path);
    let mut raw = std::os::unix::net::UnixStream::connect(&path).unwrap();
    write_frame(&mut raw, &Hello::versions(1, 1).encode()).unwrap();
    let welcome = read_frame(&mut raw).unwrap().unwrap();
    assert_eq!(
        Welcome::decode(&welcome).unwrap(),
        Welcome::Accepted {
            version: 1,
            joined: false
        }
    );
    raw.write_all(&[0, 0, 0, 2, 0xff, 0xff]).unwrap();
    assert!(matches!(read_frame(&mut raw), Ok(None) | Err(_)));
    // An oversized length prefix on a new connection: closed too.
    let mut raw = std::os::unix::net::UnixStream::connect(&path).unwrap();
    write_frame(&mut raw, &Hello::versions(1, 1).encode()).unwrap();
    let _ = read_frame(&mut raw).unwrap();
    raw.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
    assert!(matches!(read_frame(&mut raw), Ok(None) | Err(_)));
    // The server still serves.
    assert_eq!(
        RemoteBackend::connect(&path)
            .unwrap()
            .slot_list(true)
            .unwrap(),
        vec![SlotId(0)]
    );
    flag.store(true, Ordering::SeqCst);
    h.join().unwrap();
}

fn serve_in_thread(
    server: Server,
    path: &std::path::Path,
) -> (
    std::thread::JoinHandle<()>,
    Arc<std::sync::atomic::AtomicBool>,
) {
    let listener = bind(path).unwrap();
    let flag = server.shutdown_flag();
    let h = std::thread::spawn(move || server.serve(listener).unwrap());
    (h, flag)
}

fn stop(h: std::thread::JoinHandle<()>, flag: &std::sync::atomic::AtomicBool) {
    flag.store(true, Ordering::SeqCst);
    h.join().unwrap();
}

/// A raw connection that said hello and was accepted.
fn raw_hello(path: &std::path::Path) -> std::os::unix::net::UnixStream {
    let mut raw = std::os::unix::net::UnixStream::connect(path).unwrap();
    write_frame(&mut raw, &Hello::versions(1, 1).encode()).unwrap();
    let welcome = read_frame(&mut raw).unwrap().unwrap();
    assert_eq!(
        Welcome::decode(&welcome).unwrap(),
        Welcome::Accepted {
            version: 1,
            joined: false
        }
    );
    raw
}

/// Reads until the server closes the connection; how long that took.
fn closed_within(raw: &mut std::os::unix::net::UnixStream, limit: Duration) -> Duration {
    use std::io::Read;
    let t0 = Instant::now();
    raw.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 64];
    loop {
        match raw.read(&mut buf) {
            Ok(0) => return t0.elapsed(),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return t0.elapsed(),
            Err(e) => panic!("not closed within {limit:?}: {e}"),
        }
    }
}

fn limits(per_uid: usize, total: usize) -> Limits {
    Limits {
        max_connections_per_uid: per_uid,
        max_connections: total,
        ..Limits::default()
    }
}

#[test]
fn at_the_per_uid_limit_the_connection_idle_longest_makes_room() {
    let dir = socket_dir();
    let path = dir.path().join("d.sock");
    let server = Server::new(Arc::new(Fake::default())).limits(limits(2, 10));
    let (h, flag) = serve_in_thread(server, &path);
    let a = RemoteBackend::connect(&path).unwrap();
    let sa = a.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    let b = RemoteBackend::connect(&path).unwrap();
    let sb = b.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    // A third client of the same uid: `a`, idle longest, is closed for it, and its
    // application (its only connection) with it; `b` keeps its connection and session.
    let c = RemoteBackend::connect(&path).unwrap();
    assert!(c.slot_list(false).is_ok());
    assert!(b.session_info(sb).is_ok());
    // `a` notices its closed connection before sending, connects again (making room in
    // turn), and learns that the daemon no longer has its application.
    assert_eq!(a.session_info(sa).unwrap_err(), Error::SessionHandleInvalid);
    assert!(a.slot_list(false).is_ok());
    stop(h, &flag);
}

#[test]
fn when_nothing_is_idle_a_new_peer_is_refused_until_a_timeout_frees_a_place() {
    use std::io::Write;
    let dir = socket_dir();
    let path = dir.path().join("d.sock");
    let server = Server::new(Arc::new(Fake::default())).limits(Limits {
        frame_timeout: Duration::from_millis(600),
        ..limits(2, 10)
    });
    let (h, flag) = serve_in_thread(server, &path);
    // Two connections in the middle of a request (a header, 3 bytes of 1000): never closed
    // for another peer.
    let mut busy: Vec<_> = (0..2)
        .map(|_| {
            let mut raw = raw_hello(&path);
            raw.write_all(&[0, 0, 3, 0xe8, 1, 2, 3]).unwrap();
            raw
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        RemoteBackend::connect(&path).err(),
        Some(Error::DeviceError)
    );
    // The frame timeout closes them, and a place is free again.
    for raw in &mut busy {
        closed_within(raw, Duration::from_secs(5));
    }
    assert!(
        RemoteBackend::connect(&path)
            .unwrap()
            .slot_list(false)
            .is_ok()
    );
    stop(h, &flag);
}

#[test]
fn the_total_limit_is_met_the_same_way() {
    use std::io::Write;
    let dir = socket_dir();
    let path = dir.path().join("d.sock");
    let server = Server::new(Arc::new(Fake::default())).limits(limits(10, 2));
    let (h, flag) = serve_in_thread(server, &path);
    let a = RemoteBackend::connect(&path).unwrap();
    let sa = a.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    let mut busy = raw_hello(&path);
    busy.write_all(&[0, 0, 3, 0xe8, 1]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // At the limit: the idle `a` makes room, the busy one stays.
    let c = RemoteBackend::connect(&path).unwrap();
    let sc = c.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    // The server marks `c` idle just after it sent the answer: let it get there.
    std::thread::sleep(Duration::from_millis(100));
    // Now `c` is idle and `busy` busy: a fourth closes `c`. With two busy connections,
    // nothing is idle: every new connection is refused, `a`'s and `c`'s included.
    let mut busy2 = raw_hello(&path);
    busy2.write_all(&[0, 0, 3, 0xe8, 1]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(c.session_info(sc), Err(Error::DeviceError));
    assert_eq!(a.session_info(sa), Err(Error::DeviceError));
    assert_eq!(
        RemoteBackend::connect(&path).err(),
        Some(Error::DeviceError)
    );
    // Their only connections were closed: their applications, sessions included, are gone.
    drop((busy, busy2));
    assert_eq!(a.session_info(sa), Err(Error::SessionHandleInvalid));
    assert_eq!(c.session_info(sc), Err(Error::SessionHandleInvalid));
    // Served again once the server has seen the busy connections end.
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.slot_list(false).is_err() {
        assert!(Instant::now() < deadline, "never served again");
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(h, &flag);
}

#[test]
fn a_backend_is_opened_only_for_a_peer_that_was_accepted_and_said_hello() {
    let opened = Arc::new(AtomicU64::new(0));
    let factory = |opened: Arc<AtomicU64>| {
        move || {
            opened.fetch_add(1, Ordering::SeqCst);
            Ok(Arc::new(Fake::default()) as Arc<dyn Backend>)
        }
    };
    let dir = socket_dir();
    // A uid outside the allow-list: refused, and nothing opened for it.
    let path = dir.path().join("refusing.sock");
    let server = Server::per_connection(factory(opened.clone())).allow_uids([u32::MAX - 1]);
    let (h, flag) = serve_in_thread(server, &path);
    assert_eq!(
        RemoteBackend::new(&path).slot_list(false),
        Err(Error::DeviceError)
    );
    stop(h, &flag);
    assert_eq!(opened.load(Ordering::SeqCst), 0);
    // An allowed peer that never says hello: closed after the handshake timeout, and nothing
    // opened for it either.
    let path = dir.path().join("d.sock");
    let server = Server::per_connection(factory(opened.clone())).limits(Limits {
        handshake_timeout: Duration::from_millis(300),
        ..Limits::default()
    });
    let (h, flag) = serve_in_thread(server, &path);
    let mut silent = std::os::unix::net::UnixStream::connect(&path).unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(5));
    assert!(took >= Duration::from_millis(250), "{took:?}");
    assert_eq!(opened.load(Ordering::SeqCst), 0);
    // A client that says hello gets its backend.
    assert!(
        RemoteBackend::connect(&path)
            .unwrap()
            .slot_list(false)
            .is_ok()
    );
    assert_eq!(opened.load(Ordering::SeqCst), 1);
    stop(h, &flag);
}

#[test]
fn an_idle_connection_is_closed_after_the_idle_timeout_and_the_client_reconnects() {
    let dir = socket_dir();
    let path = dir.path().join("d.sock");
    let server = Server::new(Arc::new(Fake::default())).limits(Limits {
        idle_timeout: Some(Duration::from_millis(300)),
        ..Limits::default()
    });
    let (h, flag) = serve_in_thread(server, &path);
    let c = RemoteBackend::connect(&path).unwrap();
    let s = c.open_session(SlotId(0), CKF_SERIAL_SESSION).unwrap();
    std::thread::sleep(Duration::from_millis(900));
    // The closed connection is noticed before a request goes out on it; the new connection
    // opens a new application, where the session does not exist.
    assert_eq!(c.session_info(s).unwrap_err(), Error::SessionHandleInvalid);
    assert!(c.slot_list(false).is_ok());
    stop(h, &flag);
}
