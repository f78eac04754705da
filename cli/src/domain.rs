//! The security domain and backups: `ferrohsm domain init`, `ferrohsm backup create | restore`.
//!
//! These work on the home's files (its token databases and its `domain/` directory), not
//! through a PKCS#11 session: a backup copies the sealed rows as they are, so it needs no PIN,
//! and a restore writes databases that no slot has open yet.

use std::path::{Path, PathBuf};

use firmware_sim::domain::{self, Holder, HolderKey, backup};
use zeroize::Zeroizing;

/// The home: `--home`, else the default home (`$FERROHSM_HOME`, else the XDG data dir).
pub(crate) fn home(flag: Option<PathBuf>) -> Result<PathBuf, String> {
    match flag {
        Some(h) => Ok(h),
        None => bridge::config::default_home().map_err(|e| e.to_string()),
    }
}

fn read_text(path: &Path) -> Result<Zeroizing<String>, String> {
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn progress(msg: &str) {
    eprintln!("ferrohsm: {msg}");
}

/// `domain init`: creates or adopts the home's DMK and splits it among the holders.
pub(crate) fn init(
    home: &Path,
    holders: &[PathBuf],
    threshold: usize,
    out: &Path,
) -> Result<(), String> {
    if out.exists() {
        return Err(format!(
            "{} exists; choose another file (an earlier domain file stays valid)",
            out.display()
        ));
    }
    let holders = holders
        .iter()
        .map(|p| {
            Holder::from_pem(&p.display().to_string(), &read_text(p)?).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    // Check everything before the home is touched.
    if threshold == 0 || threshold > holders.len() {
        return Err(format!(
            "--threshold {threshold}: must be between 1 and the number of holders ({})",
            holders.len()
        ));
    }
    let (key, created) = domain::load_or_create(home).map_err(|e| e.to_string())?;
    let text = domain::split(&key, &holders, threshold).map_err(|e| e.to_string())?;
    std::fs::write(out, text).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    println!(
        "domain {}: {} in {}",
        key.id_hex(),
        if created { "created" } else { "adopted" },
        home.display()
    );
    println!(
        "{threshold} of {} holders restore it; wrote {}",
        holders.len(),
        out.display()
    );
    for h in &holders {
        println!("  holder {}", h.fingerprint());
    }
    Ok(())
}

/// `backup create`.
pub(crate) fn create(home: &Path, out: &Path) -> Result<(), String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    progress(&format!("backing up {}", home.display()));
    let summary = backup::create(home, out, now, &mut progress).map_err(|e| e.to_string())?;
    println!(
        "wrote {}: domain {}, generation {}, {} tokens",
        out.display(),
        summary.header.domain_hex(),
        summary.header.generation,
        summary.tokens.len()
    );
    Ok(())
}

/// `backup restore`.
pub(crate) fn restore(
    home: &Path,
    input: &Path,
    domain_file: &Path,
    keys: &[PathBuf],
) -> Result<(), String> {
    let bytes =
        std::fs::read(input).map_err(|e| format!("cannot read {}: {e}", input.display()))?;
    let header = backup::Header::parse(&bytes).map_err(|e| format!("{}: {e}", input.display()))?;
    progress(&format!(
        "{}: domain {}, generation {}, {} tokens",
        input.display(),
        header.domain_hex(),
        header.generation,
        header.tokens
    ));
    let domain_text = read_text(domain_file)?;
    let keys = keys
        .iter()
        .map(|p| {
            HolderKey::from_pem(&p.display().to_string(), &read_text(p)?).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    progress(&format!(
        "recovering the domain key from {} holder keys",
        keys.len()
    ));
    let key = domain::recover(&domain_text, &keys).map_err(|e| e.to_string())?;
    let summary = backup::restore(home, &bytes, &key, &mut progress)
        .map_err(|e| format!("{}: {e}", input.display()))?;
    println!(
        "restored {} tokens into {} (generation {})",
        summary.tokens.len(),
        home.display(),
        summary.header.generation
    );
    for t in &summary.tokens {
        println!("  slot {}: {} ({} objects)", t.slot, t.label, t.objects);
    }
    Ok(())
}
