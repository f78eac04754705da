//! Message digests: SHA-1, SHA-2 and SHA-3.

use bridge::{MechanismInfo, MechanismParams, Result};
use cryptoki_sys::*;
use zeroize::Zeroizing;

use super::{DigestOp, Mechanism, Output, no_params};
use crate::crypto::{Hash, Hasher};

/// A digest mechanism.
pub(crate) struct Digest(pub(crate) Hash);

pub(crate) static SHA_1: Digest = Digest(Hash::Sha1);
pub(crate) static SHA224: Digest = Digest(Hash::Sha224);
pub(crate) static SHA256: Digest = Digest(Hash::Sha256);
pub(crate) static SHA384: Digest = Digest(Hash::Sha384);
pub(crate) static SHA512: Digest = Digest(Hash::Sha512);
pub(crate) static SHA3_256: Digest = Digest(Hash::Sha3_256);
pub(crate) static SHA3_384: Digest = Digest(Hash::Sha3_384);
pub(crate) static SHA3_512: Digest = Digest(Hash::Sha3_512);

struct Running {
    hash: Hash,
    ctx: Option<Hasher>,
}

impl DigestOp for Running {
    fn len(&self) -> usize {
        self.hash.len()
    }

    fn update(&mut self, data: &[u8]) -> Result<()> {
        if let Some(ctx) = &mut self.ctx {
            ctx.update(data);
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<Output> {
        let ctx = self.ctx.take().unwrap_or_else(|| self.hash.start());
        Ok(Zeroizing::new(ctx.finish()))
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
            hash: self.0,
            ctx: Some(self.0.start()),
        }))
    }
}
