//! The domain file (`domain.json`): the DMK split M-of-N, each share sealed to one holder.
//!
//! ```text
//! { "format": "ferrohsm-security-domain", "version": 1,
//!   "domain_id": hex, "threshold": M, "check": hex (a public check value of the DMK),
//!   "holders": [ { "index": i, "name": "h1.pem", "fingerprint": "sha256:hex",
//!                  "sealed_share": base64 } ] }
//! ```
//!
//! A share is RSA-OAEP (SHA-256, MGF1-SHA-256) under the holder's key, with the label
//! `"ferrohsm domain share v1" ‖ domain id ‖ M ‖ i`, so a share cannot be moved to another
//! domain, another threshold or another holder's place unnoticed. The file holds no secret in
//! clear: it may be copied anywhere, and is needed, with M holders, to restore a backup.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::{DomainError, DomainKey, DomainResult, Holder, HolderKey, ID_LEN, hex, unhex};
use crate::crypto::{self, Secret, sharing};

const FORMAT: &str = "ferrohsm-security-domain";
const VERSION: u64 = 1;

fn share_label(domain_id: &[u8], threshold: u8, index: u8) -> Vec<u8> {
    let mut l = b"ferrohsm domain share v1".to_vec();
    l.extend_from_slice(domain_id);
    l.push(threshold);
    l.push(index);
    l
}

/// Splits the DMK among `holders`, any `threshold` of whom can recover it, and returns the
/// domain file's text.
pub fn split(key: &DomainKey, holders: &[Holder], threshold: usize) -> DomainResult<String> {
    let count = u8::try_from(holders.len())
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| DomainError::new("give 1 to 255 holders"))?;
    let threshold = u8::try_from(threshold)
        .ok()
        .filter(|m| *m >= 1 && *m <= count)
        .ok_or_else(|| {
            DomainError::new(format!(
                "the threshold must be between 1 and the number of holders ({count})"
            ))
        })?;
    let mut seen = std::collections::HashSet::new();
    for h in holders {
        if !seen.insert(h.fingerprint()) {
            return Err(DomainError::new(format!(
                "{}: the same key is given twice; each holder needs their own key",
                h.name
            )));
        }
    }
    let shares = sharing::split(&key.dmk, threshold, count).map_err(super::internal)?;
    let mut entries = Vec::with_capacity(holders.len());
    for (i, (holder, share)) in holders.iter().zip(&shares).enumerate() {
        let index = u8::try_from(i + 1).map_err(|_| DomainError::new("too many holders"))?;
        let sealed = holder
            .key
            .seal(share.expose(), &share_label(&key.id, threshold, index))
            .map_err(|e| DomainError::new(format!("{}: sealing the share: {e}", holder.name)))?;
        entries.push(json!({
            "index": index,
            "name": holder.name,
            "fingerprint": holder.fingerprint(),
            "sealed_share": STANDARD.encode(sealed),
        }));
    }
    let doc = json!({
        "format": FORMAT,
        "version": VERSION,
        "domain_id": key.id_hex(),
        "threshold": threshold,
        "check": hex(&key.check_value()?),
        "holders": entries,
    });
    serde_json::to_string_pretty(&doc)
        .map(|s| s + "\n")
        .map_err(|e| DomainError::new(format!("encoding the domain file: {e}")))
}

/// What a domain file says, before any key is used.
#[derive(Debug)]
pub(crate) struct DomainFile {
    pub(crate) id: [u8; ID_LEN],
    pub(crate) threshold: u8,
    check: Vec<u8>,
    holders: Vec<(u8, String, Vec<u8>)>,
}

/// A member of a JSON object (`Null` when absent).
fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.get(key).unwrap_or(&Value::Null)
}

impl DomainFile {
    pub(crate) fn parse(text: &str) -> DomainResult<Self> {
        let bad = |what: &str| DomainError::new(format!("not a FerroHSM domain file: {what}"));
        let v: Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
        if field(&v, "format") != FORMAT {
            return Err(bad("format"));
        }
        if field(&v, "version") != VERSION {
            return Err(DomainError::new(format!(
                "domain file version {} (this build reads {VERSION})",
                field(&v, "version")
            )));
        }
        let id = field(&v, "domain_id")
            .as_str()
            .and_then(unhex)
            .and_then(|b| <[u8; ID_LEN]>::try_from(b).ok())
            .ok_or_else(|| bad("domain_id"))?;
        let threshold = field(&v, "threshold")
            .as_u64()
            .and_then(|t| u8::try_from(t).ok())
            .filter(|t| *t >= 1)
            .ok_or_else(|| bad("threshold"))?;
        let check = field(&v, "check")
            .as_str()
            .and_then(unhex)
            .ok_or_else(|| bad("check"))?;
        let mut holders = Vec::new();
        for h in field(&v, "holders")
            .as_array()
            .ok_or_else(|| bad("holders"))?
        {
            let index = field(h, "index")
                .as_u64()
                .and_then(|i| u8::try_from(i).ok())
                .filter(|i| *i >= 1)
                .ok_or_else(|| bad("holder index"))?;
            let fingerprint = field(h, "fingerprint")
                .as_str()
                .ok_or_else(|| bad("holder fingerprint"))?;
            let sealed = field(h, "sealed_share")
                .as_str()
                .and_then(|s| STANDARD.decode(s).ok())
                .ok_or_else(|| bad("sealed_share"))?;
            holders.push((index, fingerprint.to_owned(), sealed));
        }
        Ok(Self {
            id,
            threshold,
            check,
            holders,
        })
    }
}

/// Recovers the DMK from the domain file's text and the holders' private keys. Refused: fewer
/// than M distinct holders, a key that is no holder of this domain, a share that does not
/// open, or shares that do not combine into the domain's key (an altered file).
pub fn recover(domain_json: &str, keys: &[HolderKey]) -> DomainResult<DomainKey> {
    let file = DomainFile::parse(domain_json)?;
    let mut shares: Vec<Secret> = Vec::new();
    let mut used = std::collections::HashSet::new();
    for k in keys {
        let fp = k.fingerprint();
        let Some((index, _, sealed)) = file.holders.iter().find(|(_, f, _)| *f == fp) else {
            return Err(DomainError::new(format!(
                "{}: not a holder of domain {} (its key {fp} is not in the domain file)",
                k.name,
                hex(&file.id)
            )));
        };
        if !used.insert(*index) {
            continue;
        }
        let share = k
            .key
            .open(sealed, &share_label(&file.id, file.threshold, *index))
            .ok_or_else(|| {
                DomainError::new(format!(
                    "{}: its share does not open (the domain file was altered)",
                    k.name
                ))
            })?;
        // The share's abscissa is its holder's index; anything else is an altered file.
        if share.expose().first() != Some(index) {
            return Err(DomainError::new(format!(
                "{}: its share is out of place (the domain file was altered)",
                k.name
            )));
        }
        shares.push(share);
    }
    if shares.len() < usize::from(file.threshold) {
        return Err(DomainError::new(format!(
            "{} holder keys are needed to recover domain {}; {} given",
            file.threshold,
            hex(&file.id),
            shares.len()
        )));
    }
    let dmk = sharing::combine(file.threshold, &shares).map_err(super::internal)?;
    let key = DomainKey { id: file.id, dmk };
    if !crypto::ct_eq(&key.check_value()?, &file.check) {
        return Err(DomainError::new(
            "the shares do not combine into this domain's key (the domain file was altered)",
        ));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three RSA-2048 holders: public key and private key PEM (aws-lc-rs keygen).
    fn holders() -> Vec<(Holder, String)> {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::rsa::{KeySize, PrivateDecryptingKey};
        let pem = |label: &str, der: &[u8]| {
            format!(
                "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
                STANDARD.encode(der)
            )
        };
        (1..=3)
            .map(|i| {
                let k = PrivateDecryptingKey::generate(KeySize::Rsa2048).unwrap();
                let spki = k.public_key().as_der().unwrap();
                let public =
                    Holder::from_pem(&format!("h{i}.pem"), &pem("PUBLIC KEY", spki.as_ref()))
                        .unwrap();
                (public, pem("PRIVATE KEY", k.as_der().unwrap().as_ref()))
            })
            .collect()
    }

    fn key(pem: &str) -> HolderKey {
        HolderKey::from_pem("key", pem).unwrap()
    }

    fn setup() -> (tempfile::TempDir, DomainKey, String, Vec<String>) {
        let home = tempfile::tempdir().unwrap();
        let (dk, _) = super::super::load_or_create(home.path()).unwrap();
        let (publics, privates): (Vec<_>, Vec<_>) = holders().into_iter().unzip();
        let text = split(&dk, &publics, 2).unwrap();
        (home, dk, text, privates)
    }

    #[test]
    fn two_of_three_recover_one_or_a_stranger_do_not() {
        let (_home, dk, text, pems) = setup();
        assert!(!text.contains(&hex(dk.dmk.expose())));
        for (a, b) in [(0, 2), (0, 1), (2, 1)] {
            let got = recover(&text, &[key(&pems[a]), key(&pems[b])]).unwrap();
            assert_eq!(got.id(), dk.id());
            assert_eq!(got.dmk.expose(), dk.dmk.expose());
        }
        // All three holders (more than M) recover it too.
        let all = recover(&text, &[key(&pems[1]), key(&pems[0]), key(&pems[2])]).unwrap();
        assert_eq!(all.dmk.expose(), dk.dmk.expose());
        let err = recover(&text, &[key(&pems[0])]).unwrap_err();
        assert!(
            err.to_string().contains("2 holder keys are needed"),
            "{err}"
        );
        // The same key twice is one holder.
        let err = recover(&text, &[key(&pems[0]), key(&pems[0])]).unwrap_err();
        assert!(
            err.to_string().contains("2 holder keys are needed"),
            "{err}"
        );
        // A stranger's key.
        let (_, stranger) = holders().pop().unwrap();
        let err = recover(&text, &[key(&pems[0]), key(&stranger)]).unwrap_err();
        assert!(err.to_string().contains("not a holder"), "{err}");
    }

    #[test]
    fn altered_domain_file_is_refused() {
        let (_home, _dk, text, pems) = setup();
        // Lower the threshold: the OAEP label no longer matches, so no share opens.
        let mut v: Value = serde_json::from_str(&text).unwrap();
        v["threshold"] = json!(1);
        let err = recover(&v.to_string(), &[key(&pems[0])]).unwrap_err();
        assert!(err.to_string().contains("altered"), "{err}");
        // Swap two holders' shares (keeping fingerprints): neither opens.
        let mut v: Value = serde_json::from_str(&text).unwrap();
        let s0 = v["holders"][0]["sealed_share"].clone();
        v["holders"][0]["sealed_share"] = v["holders"][1]["sealed_share"].clone();
        v["holders"][1]["sealed_share"] = s0;
        let err = recover(&v.to_string(), &[key(&pems[0]), key(&pems[1])]).unwrap_err();
        assert!(err.to_string().contains("altered"), "{err}");
        // A changed check value.
        let mut v: Value = serde_json::from_str(&text).unwrap();
        v["check"] = json!("00".repeat(16));
        let err = recover(&v.to_string(), &[key(&pems[0]), key(&pems[1])]).unwrap_err();
        assert!(err.to_string().contains("do not combine"), "{err}");
        // Not a domain file at all.
        assert!(recover("{}", &[key(&pems[0])]).is_err());
    }

    #[test]
    fn bad_parameters_are_refused() {
        let home = tempfile::tempdir().unwrap();
        let (dk, _) = super::super::load_or_create(home.path()).unwrap();
        let (publics, _): (Vec<_>, Vec<_>) = holders().into_iter().unzip();
        assert!(split(&dk, &publics, 0).is_err());
        assert!(split(&dk, &publics, 4).is_err());
        assert!(split(&dk, &[], 1).is_err());
    }
}
