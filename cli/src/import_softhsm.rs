//! `ferrohsm import-softhsm`: a new token made from a SoftHSMv2 token — the same label and
//! user PIN, a new SO PIN, every object with its attributes.
//!
//! How objects enter the firmware: the SoftHSM files are read and decrypted by the firmware
//! crate (`firmware_sim::softhsm`, where key bytes belong; zeroized when dropped), which turns
//! each object into a `C_CreateObject` template of the attributes an application may give.
//! This command then creates every object with `C_CreateObject` through a `Device`, logged in
//! as the user: the firmware's own object creation, with its attribute policy and protection
//! rule, and no privilege beyond what any application holding the PINs has. `C_CreateObject`
//! is also what states the provenance honestly: `CKA_LOCAL`, `CKA_ALWAYS_SENSITIVE` and
//! `CKA_NEVER_EXTRACTABLE` are FALSE (the key values were in this process in clear, however
//! SoftHSM made them), while `CKA_SENSITIVE` and `CKA_EXTRACTABLE` are SoftHSM's: a key that
//! was not extractable there is not extractable here. A special firmware entry that kept
//! SoftHSM's provenance would claim more than the firmware can vouch for. The public objects
//! that had `CKA_TRUSTED`, which only the SO may give, are created by the SO.
//!
//! Nothing is visible unless everything was made: the token is built by a device of its own
//! in a staging directory (`firmware_sim::StagedToken`) and renamed into the home's next slot
//! (or the store a configuration names) only after the last object; on any failure the
//! staging directory is removed.

use std::path::{Path, PathBuf};

use bridge::BackendExt as _;
use bridge::config::{Config, SlotConfig};
use bridge::{Attribute, SlotId};
use cryptoki_sys::*;
use firmware_sim::softhsm::{self, ImportError, SoftObject, SoftToken, wipe};
use firmware_sim::{Device, StagedToken};

use crate::{as_so, check_pin_length, explain, object_name, padded_label, pin};

/// The command's arguments.
#[derive(clap::Args)]
pub(crate) struct ImportArgs {
    /// SoftHSM's token directory (`directories.tokendir` in softhsm2.conf), or the directory of
    /// one token.
    #[arg(long, value_name = "DIR")]
    tokendir: PathBuf,
    /// The SoftHSM token's label; the new token gets the same.
    #[arg(long, value_name = "LABEL")]
    token: String,
    /// The SoftHSM token's user PIN, which becomes the new token's (else $FERROHSM_PIN, else a
    /// prompt).
    #[arg(long, value_name = "PIN")]
    pin: Option<String>,
    /// The new token's SO PIN (else $FERROHSM_SO_PIN, else a prompt, twice).
    #[arg(long, value_name = "PIN")]
    so_pin: Option<String>,
    /// The home that gets the token, as its next slot (default: $FERROHSM_HOME, else the
    /// default data directory).
    #[arg(long, value_name = "DIR", conflicts_with = "store")]
    home: Option<PathBuf>,
    /// Instead of a home: the `store` directory of a `[[slot]] kind = "sim"` entry of the
    /// configuration (it must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
}

/// Where the new token goes.
enum Target {
    Home(PathBuf),
    Store(PathBuf),
}

/// Runs the import.
pub(crate) fn import(conf: Option<&Path>, a: ImportArgs) -> Result<(), String> {
    let config = match conf {
        Some(p) => Config::load(p),
        None => Config::from_env(),
    }
    .map_err(|e| e.to_string())?;
    let mut firmware = config.firmware.clone();
    let target = match (&a.store, &a.home) {
        (Some(store), _) => {
            // The slot's own personality, if the configuration names this store.
            let personality = config.slot.iter().find_map(|s| match s {
                SlotConfig::Sim {
                    store: p,
                    personality,
                    ..
                } if p == store => *personality,
                _ => None,
            });
            if let Some(p) = personality {
                firmware.personality = p;
            }
            Target::Store(store.clone())
        }
        (None, Some(home)) => Target::Home(home.clone()),
        (None, None) if !config.slot.is_empty() => {
            return Err(
                "the configuration lists its slots: give --store (the store of one of its \
                 kind = \"sim\" slots) or --home"
                    .to_owned(),
            );
        }
        (None, None) => Target::Home(crate::domain::home(None)?),
    };

    // What can be checked without a PIN is checked first.
    let found = softhsm::find(&a.tokendir, &a.token)
        .map_err(|e| import_error(&e, &a.tokendir, &a.token))?;
    if let Target::Home(home) = &target {
        label_is_free(home, &firmware, &a.token)?;
    }
    let so_pin = pin::obtain(a.so_pin, "FERROHSM_SO_PIN", "new SO PIN", true)?;
    let user_pin = pin::obtain(a.pin, "FERROHSM_PIN", "SoftHSM user PIN", false)?;
    let soft = softhsm::open(&found, user_pin.as_bytes())
        .map_err(|e| import_error(&e, &found.dir, &a.token))?;

    let staged = match &target {
        Target::Home(home) => StagedToken::in_home(home, &firmware),
        Target::Store(store) => StagedToken::at_store(store, &firmware),
    }?;
    let device = staged
        .device()
        .ok_or_else(|| "the staged token has no device".to_owned())?;
    if let Err((failed, why)) = build(device, &soft, so_pin.as_bytes(), user_pin.as_bytes()) {
        drop(staged);
        if let Some(o) = failed {
            println!("{:<10} {}", "FAILED", name(o));
        }
        return Err(format!(
            "{why}; nothing was written (the SoftHSM token is unchanged)"
        ));
    }
    let placed = staged.commit()?;

    let mut counts = [0usize; 5];
    for o in &soft.objects {
        println!("{:<10} {}", "imported", name(o));
        for n in &o.notes {
            println!("  stricter {n}");
        }
        if o.trusted {
            println!("  CKA_TRUSTED: TRUE, given by the new token's SO");
        }
        let i = match o.summary.class {
            CKO_SECRET_KEY => 0,
            CKO_PRIVATE_KEY => 1,
            CKO_PUBLIC_KEY => 2,
            CKO_CERTIFICATE => 3,
            _ => 4,
        };
        if let Some(c) = counts.get_mut(i) {
            *c += 1;
        }
    }
    let [secret, private, public, certs, data] = counts;
    let place = match placed.slot {
        Some(s) => format!("slot {s} ({})", placed.dir.display()),
        None => format!("the store {}", placed.dir.display()),
    };
    println!(
        "Imported {} objects of SoftHSM token {:?} into {place}: {secret} secret keys, \
         {private} private keys, {public} public keys, {certs} certificates, {data} data \
         objects. Label and user PIN are SoftHSM's, the SO PIN the one given; the keys are \
         CKA_LOCAL, CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE FALSE (imported), as \
         sensitive and extractable as in SoftHSM.",
        soft.objects.len(),
        soft.label
    );
    Ok(())
}

/// The report's name of an object.
fn name(o: &SoftObject) -> String {
    object_name(
        o.summary.class,
        o.summary.subtype,
        Some(&o.summary.label),
        Some(&o.summary.id),
    )
}

/// Makes the token in the staged device: the label, the SO PIN, the user PIN, every object.
/// On failure: the object that failed (if one did) and why.
fn build<'a>(
    d: &Device,
    soft: &'a SoftToken,
    so_pin: &[u8],
    user_pin: &[u8],
) -> Result<(), (Option<&'a SoftObject>, String)> {
    let slot = SlotId(0);
    let plain = |why: String| (None, why);
    let info = d
        .token_info(slot)
        .map_err(|e| plain(explain("reading the new token", &e)))?;
    check_pin_length(&info, "SO PIN", so_pin).map_err(plain)?;
    check_pin_length(&info, "user PIN (SoftHSM's)", user_pin).map_err(plain)?;
    d.init_token(slot, so_pin, &padded_label(&soft.label))
        .map_err(|e| plain(explain("initializing the new token", &e)))?;
    as_so(d, slot, so_pin, |s| d.init_pin(s, user_pin))
        .map_err(|e| plain(explain("setting the user PIN", &e)))?;

    // Objects with CKA_TRUSTED (public ones: the reader refuses it on a private one) are made
    // by the SO, the one who may set it; every other object by the user.
    let s = d
        .open_session(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION)
        .map_err(|e| plain(explain("opening a session", &e)))?;
    let made = d
        .login(s, CKU_USER, Some(user_pin))
        .map_err(|e| plain(explain("logging in as the user", &e)))
        .and_then(|()| create_all(d, s, soft.objects.iter().filter(|o| !o.trusted)));
    let _ = d.close_session(s);
    made?;
    if !soft.objects.iter().any(|o| o.trusted) {
        return Ok(());
    }
    let mut made = Ok(());
    as_so(d, slot, so_pin, |s| {
        made = create_all(d, s, soft.objects.iter().filter(|o| o.trusted));
        Ok(())
    })
    .map_err(|e| plain(explain("logging in as the SO", &e)))?;
    made
}

/// Creates `objects` in session `s`; on failure, the object and why.
fn create_all<'a>(
    d: &Device,
    s: bridge::SessionHandle,
    objects: impl Iterator<Item = &'a SoftObject>,
) -> Result<(), (Option<&'a SoftObject>, String)> {
    for o in objects {
        let mut template = o.template().clone();
        if o.trusted {
            template.0.push(Attribute::bool(CKA_TRUSTED, true));
        }
        let made = d.create_object(s, &template);
        wipe(&mut template);
        made.map_err(|e| {
            (
                Some(o),
                explain(
                    &format!(
                        "the new token refused {} (from {})",
                        name(o),
                        o.summary.file.display()
                    ),
                    &e,
                ),
            )
        })?;
    }
    Ok(())
}

/// Refuses a second token with the same label in the home (`--token` and `pkcs11:token=`
/// would name either).
fn label_is_free(
    home: &Path,
    firmware: &bridge::config::FirmwareConfig,
    label: &str,
) -> Result<(), String> {
    let device = Device::open_home(home, firmware).map_err(|e| e.to_string())?;
    for slot in device.slot_list(true).map_err(|e| e.to_string())? {
        if let Ok(t) = device.token_info(slot) {
            if t.flags & CKF_TOKEN_INITIALIZED != 0 && t.label.trim_end() == label {
                return Err(format!(
                    "{} has a token labelled {label:?} already (slot {}); import into another \
                     home, or re-initialize that slot first (nothing was written)",
                    home.display(),
                    slot.0
                ));
            }
        }
    }
    Ok(())
}

/// One line for the operator, saying what to do.
fn import_error(e: &ImportError, dir: &Path, label: &str) -> String {
    match e {
        ImportError::NotFound { found, db, .. } if found.is_empty() && !db.is_empty() => {
            format!(
                "{}: SoftHSM keeps these tokens in its DB object store (objectstore.backend = \
                 db), and import-softhsm reads the file store only (objectstore.backend = \
                 file); move the extractable keys with `ferrohsm migrate` from a \
                 kind = \"module\" slot over libsofthsm2.so instead",
                dir.display()
            )
        }
        ImportError::NotFound { .. } => format!("{e} in {}", dir.display()),
        ImportError::WrongPin => format!(
            "the PIN given does not open SoftHSM token {label:?} ({}): give that token's user \
             PIN, the one `pkcs11-tool --login` takes for it (nothing was written)",
            dir.display()
        ),
        ImportError::NoUserPin => format!(
            "SoftHSM token {label:?} has no user PIN, so nothing in it can be decrypted: set one \
             with pkcs11-tool --init-pin, then import (nothing was written)"
        ),
        ImportError::Unsupported { object, why } => format!(
            "{} ({}): {why}; nothing was written",
            object_name(
                object.class,
                object.subtype,
                Some(&object.label),
                Some(&object.id)
            ),
            object.file.display()
        ),
        ImportError::Corrupt { .. } | ImportError::Io(_) => {
            format!("{e}; nothing was written")
        }
    }
}
