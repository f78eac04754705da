//! Helpers shared by the symmetric-mechanism known-answer tests (kat_aes, kat_hmac,
//! kat_hkdf): a ready token, key objects, and the encrypt/decrypt/sign/verify calls with the
//! PKCS#11 length-query convention.

#![allow(dead_code, missing_docs)]

use bridge::config::FirmwareConfig;
use bridge::*;
use cryptoki_sys::*;
use firmware_sim::Device;

pub(crate) const SO: &[u8] = b"12345678";
pub(crate) const USER: &[u8] = b"1234";

pub(crate) fn config() -> FirmwareConfig {
    FirmwareConfig {
        pin_kdf_iterations: 1000,
        max_login_failures: 3,
        ..FirmwareConfig::default()
    }
}

/// A fresh home with one initialized token and a logged-in R/W user session.
pub(crate) fn ready() -> (tempfile::TempDir, Device, SessionHandle) {
    ready_with(&config())
}

/// [`ready`] with the firmware configured by `config` (a personality).
pub(crate) fn ready_with(config: &FirmwareConfig) -> (tempfile::TempDir, Device, SessionHandle) {
    let dir = tempfile::tempdir().unwrap();
    let dev = Device::open_home(dir.path(), config).unwrap();
    let mut label = [b' '; 32];
    label[..4].copy_from_slice(b"test");
    dev.init_token(SlotId(0), SO, &label).unwrap();
    let s = dev
        .open_session(SlotId(0), CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .unwrap();
    dev.login(s, CKU_SO, Some(SO)).unwrap();
    dev.init_pin(s, USER).unwrap();
    dev.logout(s).unwrap();
    dev.login(s, CKU_USER, Some(USER)).unwrap();
    (dir, dev, s)
}

/// A session secret key of `key_type` with every usage allowed, extractable and readable.
pub(crate) fn secret(
    dev: &Device,
    s: SessionHandle,
    key_type: CK_KEY_TYPE,
    value: &[u8],
) -> ObjectHandle {
    secret_with(dev, s, key_type, value, &[])
}

/// As `secret`, with extra attributes (later ones win over the defaults here).
pub(crate) fn secret_with(
    dev: &Device,
    s: SessionHandle,
    key_type: CK_KEY_TYPE,
    value: &[u8],
    extra: &[Attribute],
) -> ObjectHandle {
    let mut t = Template::new()
        .with(Attribute::ulong(CKA_CLASS, CKO_SECRET_KEY))
        .with(Attribute::ulong(CKA_KEY_TYPE, key_type))
        .with(Attribute::bytes(CKA_VALUE, value.to_vec()));
    let defaults = [
        CKA_ENCRYPT,
        CKA_DECRYPT,
        CKA_SIGN,
        CKA_VERIFY,
        CKA_WRAP,
        CKA_UNWRAP,
        CKA_DERIVE,
        CKA_EXTRACTABLE,
    ];
    for ty in defaults {
        if !extra.iter().any(|a| a.ty == ty) {
            t.0.push(Attribute::bool(ty, true));
        }
    }
    t.0.extend_from_slice(extra);
    dev.create_object(s, &t).unwrap()
}

pub(crate) fn aes(dev: &Device, s: SessionHandle, value: &[u8]) -> ObjectHandle {
    secret(dev, s, CKK_AES, value)
}

/// `CKA_VALUE` of an object (which must be readable).
pub(crate) fn value(dev: &Device, s: SessionHandle, o: ObjectHandle) -> Vec<u8> {
    match &dev.get_attribute_value(s, o, &[CKA_VALUE]).unwrap()[0] {
        AttrAnswer::Value(AttrValue::Bytes(b)) => b.clone(),
        other => panic!("{other:?}"),
    }
}

/// Runs a produce-style call the PKCS#11 way: a length query, then the call with a buffer of
/// exactly the length reported (which may be an upper bound), trimmed to what was written.
pub(crate) fn two_call(
    mut call: impl FnMut(Option<&mut [u8]>) -> Result<usize>,
) -> Result<Vec<u8>> {
    let n = call(None)?;
    let mut buf = vec![0u8; n];
    let got = call(Some(&mut buf))?;
    buf.truncate(got);
    Ok(buf)
}

pub(crate) fn encrypt(
    dev: &Device,
    s: SessionHandle,
    m: &Mechanism,
    k: ObjectHandle,
    data: &[u8],
) -> Result<Vec<u8>> {
    dev.encrypt_init(s, m, k)?;
    two_call(|out| dev.encrypt(s, data, out))
}

pub(crate) fn decrypt(
    dev: &Device,
    s: SessionHandle,
    m: &Mechanism,
    k: ObjectHandle,
    data: &[u8],
) -> Result<Vec<u8>> {
    dev.decrypt_init(s, m, k)?;
    two_call(|out| dev.decrypt(s, data, out))
}

/// Multi-part encryption over `chunks` (lengths; the rest of `data` goes into the last
/// update); returns the concatenated output and the output length of each update.
pub(crate) fn encrypt_parts(
    dev: &Device,
    s: SessionHandle,
    m: &Mechanism,
    k: ObjectHandle,
    data: &[u8],
    chunks: &[usize],
) -> Result<(Vec<u8>, Vec<usize>)> {
    dev.encrypt_init(s, m, k)?;
    parts(
        data,
        chunks,
        |d, out| dev.encrypt_update(s, d, out),
        |out| dev.encrypt_final(s, out),
    )
}

pub(crate) fn decrypt_parts(
    dev: &Device,
    s: SessionHandle,
    m: &Mechanism,
    k: ObjectHandle,
    data: &[u8],
    chunks: &[usize],
) -> Result<(Vec<u8>, Vec<usize>)> {
    dev.decrypt_init(s, m, k)?;
    parts(
        data,
        chunks,
        |d, out| dev.decrypt_update(s, d, out),
        |out| dev.decrypt_final(s, out),
    )
}

fn parts(
    data: &[u8],
    chunks: &[usize],
    mut update: impl FnMut(&[u8], Option<&mut [u8]>) -> Result<usize>,
    mut fin: impl FnMut(Option<&mut [u8]>) -> Result<usize>,
) -> Result<(Vec<u8>, Vec<usize>)> {
    let mut out = Vec::new();
    let mut lens = Vec::new();
    let mut rest = data;
    for (i, c) in chunks.iter().enumerate() {
        let n = if i + 1 == chunks.len() {
            rest.len()
        } else {
            (*c).min(rest.len())
        };
        let (now, later) = rest.split_at(n);
        rest = later;
        let got = two_call(|o| update(now, o))?;
        lens.push(got.len());
        out.extend_from_slice(&got);
    }
    let got = two_call(&mut fin)?;
    lens.push(got.len());
    out.extend_from_slice(&got);
    Ok((out, lens))
}

pub(crate) fn sign(
    dev: &Device,
    s: SessionHandle,
    m: &Mechanism,
    k: ObjectHandle,
    data: &[u8],
) -> Result<Vec<u8>> {
    dev.sign_init(s, m, k)?;
    two_call(|out| dev.sign(s, data, out))
}

pub(crate) fn sign_parts(
    dev: &Device,
    s: SessionHandle,
    m: &Mechanism,
    k: ObjectHandle,
    data: &[u8],
    chunk: usize,
) -> Result<Vec<u8>> {
    dev.sign_init(s, m, k)?;
    for c in data.chunks(chunk.max(1)) {
        dev.sign_update(s, c)?;
    }
    two_call(|out| dev.sign_final(s, out))
}

pub(crate) fn verify(
    dev: &Device,
    s: SessionHandle,
    m: &Mechanism,
    k: ObjectHandle,
    data: &[u8],
    sig: &[u8],
) -> Result<()> {
    dev.verify_init(s, m, k)?;
    dev.verify(s, data, sig)
}

pub(crate) fn verify_parts(
    dev: &Device,
    s: SessionHandle,
    m: &Mechanism,
    k: ObjectHandle,
    data: &[u8],
    sig: &[u8],
    chunk: usize,
) -> Result<()> {
    dev.verify_init(s, m, k)?;
    for c in data.chunks(chunk.max(1)) {
        dev.verify_update(s, c)?;
    }
    dev.verify_final(s, sig)
}

/// A small deterministic generator for test inputs (xorshift64*).
pub(crate) struct Rng(pub u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n.max(1)).unwrap()).unwrap()
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next().to_le_bytes()[0]).collect()
    }
}

/// Parses hex (test vectors).
pub(crate) fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    base16ct::mixed::decode_vec(s).unwrap()
}
