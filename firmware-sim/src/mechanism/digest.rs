//! Message digests: SHA-1, SHA-2 and SHA-3 (aws-lc-rs), and from RustCrypto those aws-lc-rs
//! lacks: SHA3-224, SHA-512/224, SHA-512/256 and MD5 (legacy).

use bridge::{MechanismInfo, MechanismParams, Result};
use cryptoki_sys::*;
use sha2::digest::DynDigest;
use zeroize::Zeroizing;

use super::{DigestOp, Mechanism, Output, no_params};
use crate::crypto::{Hash, Hasher, RcHash};

/// A digest algorithm, from whichever provider has it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Algo {
    /// aws-lc-rs.
    Lc(Hash),
    /// RustCrypto.
    Rc(RcHash),
}

impl Algo {
    fn ckm(self) -> CK_MECHANISM_TYPE {
        match self {
            Self::Lc(h) => h.ckm(),
            Self::Rc(h) => h.ckm(),
        }
    }

    fn len(self) -> usize {
        match self {
            Self::Lc(h) => h.len(),
            Self::Rc(h) => h.len(),
        }
    }

    fn start(self) -> Ctx {
        match self {
            Self::Lc(h) => Ctx::Lc(h.start()),
            Self::Rc(h) => Ctx::Rc(h.start()),
        }
    }
}

/// A digest mechanism.
pub(crate) struct Digest(pub(crate) Algo);

pub(crate) static MD5: Digest = Digest(Algo::Rc(RcHash::Md5));
pub(crate) static SHA_1: Digest = Digest(Algo::Lc(Hash::Sha1));
pub(crate) static SHA224: Digest = Digest(Algo::Lc(Hash::Sha224));
pub(crate) static SHA256: Digest = Digest(Algo::Lc(Hash::Sha256));
pub(crate) static SHA384: Digest = Digest(Algo::Lc(Hash::Sha384));
pub(crate) static SHA512: Digest = Digest(Algo::Lc(Hash::Sha512));
pub(crate) static SHA512_224: Digest = Digest(Algo::Rc(RcHash::Sha512_224));
pub(crate) static SHA512_256: Digest = Digest(Algo::Rc(RcHash::Sha512_256));
pub(crate) static SHA3_224: Digest = Digest(Algo::Rc(RcHash::Sha3_224));
pub(crate) static SHA3_256: Digest = Digest(Algo::Lc(Hash::Sha3_256));
pub(crate) static SHA3_384: Digest = Digest(Algo::Lc(Hash::Sha3_384));
pub(crate) static SHA3_512: Digest = Digest(Algo::Lc(Hash::Sha3_512));

enum Ctx {
    Lc(Hasher),
    Rc(Box<dyn DynDigest + Send>),
}

struct Running {
    algo: Algo,
    ctx: Option<Ctx>,
}

impl DigestOp for Running {
    fn len(&self) -> usize {
        self.algo.len()
    }

    fn update(&mut self, data: &[u8]) -> Result<()> {
        match &mut self.ctx {
            Some(Ctx::Lc(c)) => c.update(data),
            Some(Ctx::Rc(c)) => c.update(data),
            None => {}
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<Output> {
        let out = match self.ctx.take().unwrap_or_else(|| self.algo.start()) {
            Ctx::Lc(c) => c.finish(),
            Ctx::Rc(c) => c.finalize().to_vec(),
        };
        Ok(Zeroizing::new(out))
    }
}

impl Mechanism for Digest {
    fn ty(&self) -> CK_MECHANISM_TYPE {
        self.0.ckm()
    }

    fn info(&self) -> MechanismInfo {
        MechanismInfo {
            min_key_size: 0,
            max_key_size: 0,
            flags: CKF_HW | CKF_DIGEST,
        }
    }

    fn digest_init(&self, params: &MechanismParams) -> Result<Box<dyn DigestOp>> {
        no_params(params)?;
        Ok(Box::new(Running {
            algo: self.0,
            ctx: Some(self.0.start()),
        }))
    }
}
