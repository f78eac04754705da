//! The domain file (`domain.json`): the DMK split M-of-N, each share sealed to one holder, and
//! what authenticates it.
//!
//! ```text
//! { "format": "ferrohsm-security-domain", "version": 2,
//!   "domain_id": hex, "threshold": M,
//!   "commitment": hex (HKDF-SHA256 of the DMK, info "ferrohsm domain commitment v2" ‖ id),
//!   "fingerprint": the domain fingerprint (informational: recomputed, never trusted),
//!   "holders": [ { "index": i, "name": "h1.pem", "fingerprint": "sha256:hex",
//!                  "sealed_share": base64 } ] }      (indexes 1..N, in order)
//!
//! fingerprint := SHA-256("ferrohsm domain fingerprint v2" ‖ domain id ‖ M ‖ N ‖ commitment
//!                        ‖ SHA-256(SPKI of holder 1) ‖ … ‖ SHA-256(SPKI of holder N))
//! ```
//!
//! A share is RSA-OAEP (SHA-256, MGF1-SHA-256) under the holder's key, with the label
//! `"ferrohsm domain share v2" ‖ fingerprint ‖ i`, so a share cannot be moved to another
//! domain, threshold, holder set or holder's place unnoticed. The file holds no secret in
//! clear: it may be copied anywhere.
//!
//! Why the fingerprint and not the file itself is what holders trust: sealing is public-key
//! encryption, so anyone who knows the holders' public keys and the domain id can write a file
//! around a DMK of their choosing, with a commitment that matches it. What they cannot do is
//! keep the real fingerprint: it pins the commitment, and no one can find a second DMK with
//! the real commitment (a second preimage of HKDF-SHA256) or open the real shares without M
//! holders. So a file whose fingerprint is the one the holders recorded, and whose shares
//! combine into a DMK matching its commitment, can only have been split from the real DMK.
//! Names are display only and not covered.
//!
//! Version 1 files (a 16-byte check value, nothing the holders recorded) cannot be
//! authenticated and are refused; `domain init` on the live home writes a version 2 file for
//! the same DMK, and old backups stay restorable with it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::{
    DIGEST_LEN, DomainError, DomainKey, DomainResult, Fingerprint, Holder, HolderKey, ID_LEN, hex,
    unhex,
};
use crate::crypto::{self, Hash, Secret, sharing};

const FORMAT: &str = "ferrohsm-security-domain";
const VERSION: u64 = 2;

fn share_label(fingerprint: &Fingerprint, index: u8) -> Vec<u8> {
    let mut l = b"ferrohsm domain share v2".to_vec();
    l.extend_from_slice(&fingerprint.0);
    l.push(index);
    l
}

/// The fingerprint of a domain (see the module docs).
fn fingerprint(
    id: &[u8; ID_LEN],
    threshold: u8,
    commitment: &[u8; DIGEST_LEN],
    holders: &[[u8; DIGEST_LEN]],
) -> DomainResult<Fingerprint> {
    let count = u8::try_from(holders.len()).map_err(|_| DomainError::new("too many holders"))?;
    let mut h = Hash::Sha256.start();
    h.update(b"ferrohsm domain fingerprint v2");
    h.update(id);
    h.update(&[threshold, count]);
    h.update(commitment);
    for spki_hash in holders {
        h.update(spki_hash);
    }
    <[u8; DIGEST_LEN]>::try_from(h.finish().as_slice())
        .map(Fingerprint)
        .map_err(|_| DomainError::new("internal error: fingerprint"))
}

fn spki_hash(holder: &Holder) -> DomainResult<[u8; DIGEST_LEN]> {
    <[u8; DIGEST_LEN]>::try_from(holder.key.fingerprint().as_slice())
        .map_err(|_| DomainError::new("internal error: key fingerprint"))
}

/// Splits the DMK among `holders`, any `threshold` of whom can recover it. Returns the domain
/// file's text (format version 2: see the `domain::file` module) and the domain's fingerprint (the same for the same DMK, holders in the same
/// order and threshold, however often it is split).
pub fn split(
    key: &DomainKey,
    holders: &[Holder],
    threshold: usize,
) -> DomainResult<(String, Fingerprint)> {
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
    let commitment = key.commitment()?;
    let spki_hashes = holders
        .iter()
        .map(spki_hash)
        .collect::<DomainResult<Vec<_>>>()?;
    let fp = fingerprint(&key.id, threshold, &commitment, &spki_hashes)?;
    let shares = sharing::split(&key.dmk, threshold, count).map_err(super::internal)?;
    let mut entries = Vec::with_capacity(holders.len());
    for (i, (holder, share)) in holders.iter().zip(&shares).enumerate() {
        let index = u8::try_from(i + 1).map_err(|_| DomainError::new("too many holders"))?;
        let sealed = holder
            .key
            .seal(share.expose(), &share_label(&fp, index))
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
        "commitment": hex(&commitment),
        "fingerprint": fp.to_string(),
        "holders": entries,
    });
    let text = serde_json::to_string_pretty(&doc)
        .map(|s| s + "\n")
        .map_err(|e| DomainError::new(format!("encoding the domain file: {e}")))?;
    Ok((text, fp))
}

/// One holder's entry in a domain file.
#[derive(Debug)]
struct HolderEntry {
    index: u8,
    spki_hash: [u8; DIGEST_LEN],
    sealed: Vec<u8>,
}

/// What a domain file says, before any key is used.
#[derive(Debug)]
pub(crate) struct DomainFile {
    pub(crate) id: [u8; ID_LEN],
    pub(crate) threshold: u8,
    commitment: [u8; DIGEST_LEN],
    holders: Vec<HolderEntry>,
    /// Recomputed from the above, never read from the file.
    pub(crate) fingerprint: Fingerprint,
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
        if field(&v, "version") == 1 {
            return Err(DomainError::new(
                "this domain file is version 1, which nothing authenticates: run `ferrohsm domain \
                 init` again on the home that holds the domain (it adopts the same key), have \
                 the holders record the fingerprint it prints, and restore with the new file \
                 (backups made before stay valid)",
            ));
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
        let commitment = field(&v, "commitment")
            .as_str()
            .and_then(unhex)
            .and_then(|b| <[u8; DIGEST_LEN]>::try_from(b).ok())
            .ok_or_else(|| bad("commitment"))?;
        let list = field(&v, "holders")
            .as_array()
            .filter(|l| !l.is_empty() && l.len() <= usize::from(u8::MAX))
            .ok_or_else(|| bad("holders"))?;
        let threshold = field(&v, "threshold")
            .as_u64()
            .and_then(|t| u8::try_from(t).ok())
            .filter(|t| *t >= 1 && usize::from(*t) <= list.len())
            .ok_or_else(|| bad("threshold"))?;
        let mut holders: Vec<HolderEntry> = Vec::with_capacity(list.len());
        for (position, h) in list.iter().enumerate() {
            let index = field(h, "index")
                .as_u64()
                .and_then(|i| u8::try_from(i).ok())
                .filter(|i| usize::from(*i) == position + 1)
                .ok_or_else(|| bad("holder index"))?;
            let spki_hash = field(h, "fingerprint")
                .as_str()
                .and_then(|f| f.strip_prefix("sha256:"))
                .and_then(unhex)
                .and_then(|b| <[u8; DIGEST_LEN]>::try_from(b).ok())
                .ok_or_else(|| bad("holder fingerprint"))?;
            if holders.iter().any(|e| e.spki_hash == spki_hash) {
                return Err(bad("a holder is listed twice"));
            }
            let sealed = field(h, "sealed_share")
                .as_str()
                .and_then(|s| STANDARD.decode(s).ok())
                .ok_or_else(|| bad("sealed_share"))?;
            holders.push(HolderEntry {
                index,
                spki_hash,
                sealed,
            });
        }
        let hashes: Vec<_> = holders.iter().map(|e| e.spki_hash).collect();
        let fp = fingerprint(&id, threshold, &commitment, &hashes)?;
        // The written fingerprint is for people reading the file; a file whose written value
        // differs from its contents was edited.
        let written = field(&v, "fingerprint")
            .as_str()
            .ok_or_else(|| bad("fingerprint"))?;
        if !Fingerprint::parse(written).is_ok_and(|w| w.matches(&fp)) {
            return Err(DomainError::new(
                "the domain file was altered: its written fingerprint does not match its contents",
            ));
        }
        Ok(Self {
            id,
            threshold,
            commitment,
            holders,
            fingerprint: fp,
        })
    }
}

/// The fingerprint of a domain file's text, computed from its contents (no key is used).
pub fn fingerprint_of(domain_json: &str) -> DomainResult<Fingerprint> {
    DomainFile::parse(domain_json).map(|f| f.fingerprint)
}

/// A DMK recovered from a domain file, with the file's fingerprint. `Debug` shows the id and
/// the fingerprint only.
#[derive(Debug)]
pub struct RecoveredDomain {
    pub(crate) key: DomainKey,
    pub(crate) fingerprint: Fingerprint,
}

impl RecoveredDomain {
    /// The domain id in hex.
    pub fn id_hex(&self) -> String {
        self.key.id_hex()
    }

    /// The domain file's fingerprint: only what it says is proven (the shares combine into the
    /// DMK the file commits to). Whether it is *the* domain is for the caller to check, against
    /// the holders' record or the home's own key ([`super::backup::restore`] does).
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }
}

/// Recovers the DMK from the domain file's text and the holders' private keys. Refused: fewer
/// than M distinct holders, a key that is no holder of this domain, a share that does not
/// open, or shares that do not combine into the DMK the file commits to (an altered file).
pub fn recover(domain_json: &str, keys: &[HolderKey]) -> DomainResult<RecoveredDomain> {
    let file = DomainFile::parse(domain_json)?;
    let mut shares: Vec<Secret> = Vec::new();
    let mut used = std::collections::HashSet::new();
    for k in keys {
        let Some(entry) = file
            .holders
            .iter()
            .find(|e| e.spki_hash.as_slice() == k.key.fingerprint())
        else {
            return Err(DomainError::new(format!(
                "{}: not a holder of domain {} (its key {} is not in the domain file)",
                k.name,
                hex(&file.id),
                k.fingerprint()
            )));
        };
        if !used.insert(entry.index) {
            continue;
        }
        let share = k
            .key
            .open(&entry.sealed, &share_label(&file.fingerprint, entry.index))
            .ok_or_else(|| {
                DomainError::new(format!(
                    "{}: its share does not open (the domain file was altered)",
                    k.name
                ))
            })?;
        // The share's abscissa is its holder's index; anything else is an altered file.
        if share.expose().first() != Some(&entry.index) {
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
    if !crypto::ct_eq(&key.commitment()?, &file.commitment) {
        return Err(DomainError::new(
            "the shares do not combine into the key this domain file commits to (the domain \
             file was altered or forged; nothing was changed)",
        ));
    }
    Ok(RecoveredDomain {
        key,
        fingerprint: file.fingerprint,
    })
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

    struct Setup {
        _home: tempfile::TempDir,
        dk: DomainKey,
        publics: Vec<Holder>,
        text: String,
        fp: Fingerprint,
        pems: Vec<String>,
    }

    fn setup() -> Setup {
        let home = tempfile::tempdir().unwrap();
        let (dk, _) = super::super::load_or_create(home.path()).unwrap();
        let (publics, pems): (Vec<_>, Vec<_>) = holders().into_iter().unzip();
        let (text, fp) = split(&dk, &publics, 2).unwrap();
        Setup {
            _home: home,
            dk,
            publics,
            text,
            fp,
            pems,
        }
    }

    fn edited(text: &str, edit: impl FnOnce(&mut Value)) -> String {
        let mut v: Value = serde_json::from_str(text).unwrap();
        edit(&mut v);
        v.to_string()
    }

    #[test]
    fn two_of_three_recover_one_or_a_stranger_do_not() {
        let Setup {
            dk, text, fp, pems, ..
        } = setup();
        assert!(!text.contains(&hex(dk.dmk.expose())));
        assert!(fingerprint_of(&text).unwrap().matches(&fp));
        assert!(text.contains(&fp.to_string()));
        for (a, b) in [(0, 2), (0, 1), (2, 1)] {
            let got = recover(&text, &[key(&pems[a]), key(&pems[b])]).unwrap();
            assert!(got.key.same_as(&dk));
            assert!(got.fingerprint().matches(&fp));
        }
        // All three holders (more than M) recover it too.
        let all = recover(&text, &[key(&pems[1]), key(&pems[0]), key(&pems[2])]).unwrap();
        assert!(all.key.same_as(&dk));
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
        // No secret in Debug.
        assert!(!format!("{all:?}").contains(&hex(dk.dmk.expose())));
    }

    #[test]
    fn the_fingerprint_is_stable_and_binds_key_holders_and_threshold() {
        let s = setup();
        // Split again (fresh shares): the same fingerprint.
        let (again, fp) = split(&s.dk, &s.publics, 2).unwrap();
        assert_ne!(again, s.text);
        assert!(fp.matches(&s.fp));
        // Another threshold, another holder set or order, another key: another fingerprint.
        let (_, fp) = split(&s.dk, &s.publics, 3).unwrap();
        assert!(!fp.matches(&s.fp));
        let (_, fp) = split(&s.dk, &s.publics[..2], 2).unwrap();
        assert!(!fp.matches(&s.fp));
        let other = DomainKey {
            id: s.dk.id,
            dmk: Secret::random(32).unwrap(),
        };
        let (_, fp) = split(&other, &s.publics, 2).unwrap();
        assert!(!fp.matches(&s.fp));
        let other_id = DomainKey {
            id: [0; ID_LEN],
            dmk: Secret::copy_from(s.dk.dmk.expose()),
        };
        let (_, fp) = split(&other_id, &s.publics, 2).unwrap();
        assert!(!fp.matches(&s.fp));
        let mut swapped = s.publics;
        swapped.swap(0, 1);
        let (_, fp) = split(&s.dk, &swapped, 2).unwrap();
        assert!(!fp.matches(&s.fp));
    }

    #[test]
    fn a_file_forged_around_another_key_cannot_keep_the_fingerprint() {
        let s = setup();
        // What a forger who knows only public values can do: the real id, threshold and
        // holders around a key of their own. Recovery works (the file is consistent), but the
        // fingerprint is not the one the holders recorded.
        let forged_key = DomainKey {
            id: s.dk.id,
            dmk: Secret::copy_from(&[0x42; 32]),
        };
        let (forged, forged_fp) = split(&forged_key, &s.publics, 2).unwrap();
        assert!(!forged_fp.matches(&s.fp));
        let got = recover(&forged, &[key(&s.pems[0]), key(&s.pems[2])]).unwrap();
        assert!(!got.fingerprint().matches(&s.fp));
        // Keeping the real commitment and written fingerprint instead: the fingerprint now
        // matches, so the shares no longer open (their label binds the fingerprint)...
        let real: Value = serde_json::from_str(&s.text).unwrap();
        let transplant = edited(&forged, |v| {
            v["commitment"] = real["commitment"].clone();
            v["fingerprint"] = real["fingerprint"].clone();
        });
        assert!(fingerprint_of(&transplant).unwrap().matches(&s.fp));
        let err = recover(&transplant, &[key(&s.pems[0]), key(&s.pems[2])]).unwrap_err();
        assert!(err.to_string().contains("altered"), "{err}");
        // ...and shares sealed with the real fingerprint's label around the forger's key do
        // open, but do not combine into the committed key.
        let shares = sharing::split(&forged_key.dmk, 2, 3).unwrap();
        let resealed = edited(&transplant, |v| {
            for (i, share) in shares.iter().enumerate() {
                let index = u8::try_from(i + 1).unwrap();
                let sealed = s.publics[i]
                    .key
                    .seal(share.expose(), &share_label(&s.fp, index))
                    .unwrap();
                v["holders"][i]["sealed_share"] = json!(STANDARD.encode(sealed));
            }
        });
        let err = recover(&resealed, &[key(&s.pems[0]), key(&s.pems[2])]).unwrap_err();
        assert!(err.to_string().contains("do not combine"), "{err}");
    }

    #[test]
    fn altered_domain_file_is_refused() {
        let Setup { text, pems, .. } = setup();
        let two = || [key(&pems[0]), key(&pems[1])];
        // Lower the threshold: the written fingerprint no longer matches...
        let lowered = edited(&text, |v| v["threshold"] = json!(1));
        let err = recover(&lowered, &[key(&pems[0])]).unwrap_err();
        assert!(err.to_string().contains("written fingerprint"), "{err}");
        // ...and with it rewritten to match, the share labels bind the fingerprint, so no
        // share opens.
        let f = DomainFile::parse(&text).unwrap();
        let hashes: Vec<_> = f.holders.iter().map(|e| e.spki_hash).collect();
        let fp1 = fingerprint(&f.id, 1, &f.commitment, &hashes).unwrap();
        let lowered = edited(&lowered, |v| v["fingerprint"] = json!(fp1.to_string()));
        let err = recover(&lowered, &[key(&pems[0])]).unwrap_err();
        assert!(err.to_string().contains("does not open"), "{err}");
        // Swap two holders' shares (keeping fingerprints): neither opens.
        let swapped = edited(&text, |v| {
            let s0 = v["holders"][0]["sealed_share"].clone();
            v["holders"][0]["sealed_share"] = v["holders"][1]["sealed_share"].clone();
            v["holders"][1]["sealed_share"] = s0;
        });
        let err = recover(&swapped, &two()).unwrap_err();
        assert!(err.to_string().contains("altered"), "{err}");
        // A changed commitment: the written fingerprint gives it away.
        let err = recover(
            &edited(&text, |v| v["commitment"] = json!("00".repeat(32))),
            &two(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("altered"), "{err}");
        // Holders out of order, or listed twice.
        let err = recover(
            &edited(&text, |v| v["holders"][0]["index"] = json!(2)),
            &two(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("holder index"), "{err}");
        let err = recover(
            &edited(&text, |v| {
                v["holders"][1]["fingerprint"] = v["holders"][0]["fingerprint"].clone();
            }),
            &two(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        // Version 1, and not a domain file at all.
        let err = recover(&edited(&text, |v| v["version"] = json!(1)), &two()).unwrap_err();
        assert!(err.to_string().contains("domain init"), "{err}");
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
