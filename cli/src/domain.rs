//! The security domain and backups: `ferrohsm domain init`, `ferrohsm backup create | restore`.
//!
//! These work on the home's files (its token databases and its `domain/` directory), not
//! through a PKCS#11 session: a backup copies the sealed rows as they are, so it needs no PIN,
//! and a restore writes databases that no slot has open yet.

use std::path::{Path, PathBuf};

use bridge::output::{OutputFile, WriteOptions};
use firmware_sim::domain::{self, Fingerprint, Holder, HolderKey, backup};
use zeroize::Zeroizing;

/// The holders' quorum and the domain it restores: what `backup restore` and `domain join`
/// take.
#[derive(clap::Args, Debug)]
pub(crate) struct Quorum {
    /// The domain file written by `domain init`.
    #[arg(long, value_name = "FILE")]
    domain: PathBuf,
    /// A holder's RSA private key (PEM, PKCS#8 or traditional); repeat for each holder.
    #[arg(long = "key", value_name = "FILE", required = true)]
    keys: Vec<PathBuf>,
    /// The domain fingerprint the holders recorded at `domain init`. Required when the home
    /// has no domain key (a new home or node): a domain file forged around another key cannot
    /// be told from the real one otherwise. A home that has one is checked against its own key.
    #[arg(long, value_name = "FINGERPRINT")]
    expect_fingerprint: Option<String>,
}

impl Quorum {
    /// The fingerprint expected, parsed.
    fn expect(&self) -> Result<Option<Fingerprint>, String> {
        self.expect_fingerprint
            .as_deref()
            .map(Fingerprint::parse)
            .transpose()
            .map_err(|e| format!("--expect-fingerprint: {e}"))
    }

    /// The domain master key from the domain file and the holders' private keys.
    fn recover(&self) -> Result<domain::RecoveredDomain, String> {
        let domain_text = read_text(&self.domain)?;
        let keys = self
            .keys
            .iter()
            .map(|p| {
                HolderKey::from_pem(&p.display().to_string(), &read_text(p)?)
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, String>>()?;
        progress(&format!(
            "recovering the domain key from {} holder keys",
            keys.len()
        ));
        domain::recover(&domain_text, &keys).map_err(|e| format!("{}: {e}", self.domain.display()))
    }
}

/// How a command's `--out` is written: mode 0600 (0644 with `world_readable`, for public
/// material), never through a symbolic link, and into a directory others can write only with
/// `--allow-shared-dir`.
pub(crate) fn out_options(world_readable: bool, allow_shared_dir: bool) -> WriteOptions {
    WriteOptions::private()
        .world_readable(world_readable)
        .allow_shared_dir(allow_shared_dir)
        .shared_dir_remedy(
            "use a directory that only you can write, or pass --allow-shared-dir if you trust \
             everyone who can write there",
        )
}

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

/// `domain init`: creates or adopts the home's DMK, splits it among the holders and prints the
/// domain fingerprint the holders record. `out` must not exist (an earlier domain file stays
/// valid); it is checked before the home is touched.
pub(crate) fn init(
    home: &Path,
    holders: &[PathBuf],
    threshold: usize,
    out: &OutputFile,
) -> Result<(), String> {
    out.check().map_err(|e| {
        if e.is_exists() {
            format!(
                "{} exists already; choose another file (an earlier domain file stays valid)",
                out.display()
            )
        } else {
            e.to_string()
        }
    })?;
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
    let (text, fingerprint) =
        domain::split(&key, &holders, threshold).map_err(|e| e.to_string())?;
    out.write(text.as_bytes()).map_err(|e| e.to_string())?;
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
    println!("domain fingerprint: {fingerprint}");
    println!(
        "  every holder records this value, apart from the domain file: a restore into a new \
         home checks the domain against it (backup restore --expect-fingerprint)"
    );
    Ok(())
}

/// `backup create`.
pub(crate) fn create(home: &Path, out: &OutputFile) -> Result<(), String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    progress(&format!("backing up {}", home.display()));
    let summary = backup::create(home, out.path(), out.options(), now, &mut progress)
        .map_err(|e| e.to_string())?;
    println!(
        "wrote {}: domain {}, generation {}, {} tokens",
        out.display(),
        summary.header.domain_hex(),
        summary.header.generation,
        summary.tokens.len()
    );
    Ok(())
}

/// `backup restore`. `expect` is the domain fingerprint the holders recorded; it is required
/// when the home has no domain key (checked in [`backup::restore`], before anything is
/// written).
pub(crate) fn restore(home: &Path, input: &Path, quorum: &Quorum) -> Result<(), String> {
    let expect = quorum.expect()?;
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
    let recovered = quorum.recover()?;
    backup::authenticate(home, &recovered, expect.as_ref()).map_err(|e| e.to_string())?;
    let summary = backup::restore(home, &bytes, &recovered, expect.as_ref(), &mut progress)
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

/// `domain join`: the domain master key recovered from M holders' keys, checked against the
/// fingerprint the holders recorded (or the home's own key), then written to the home (a new
/// node of a cluster).
pub(crate) fn join(home: &Path, quorum: &Quorum) -> Result<(), String> {
    let expect = quorum.expect()?;
    let recovered = quorum.recover()?;
    let written = domain::join(home, &recovered, expect.as_ref()).map_err(|e| e.to_string())?;
    if written {
        println!(
            "domain {} (fingerprint {}) joined: {} can serve the domain's clusters",
            recovered.id_hex(),
            recovered.fingerprint(),
            home.display()
        );
    } else {
        println!(
            "{} holds domain {} already; nothing was changed",
            home.display(),
            recovered.id_hex()
        );
    }
    Ok(())
}
