//! The composition root: builds the `Router` from the configuration (docs/architecture.md §4).
//!
//! Shared by the PKCS#11 module, the KSP (`ksp/`) and the CLI, so every door onto the firmware
//! picks its backend from the same configuration in the same way.
//!
//! The only crate that names the simulated firmware (`firmware_sim`) and the real-HSM back end
//! (`bridge::loaded`) together: everything else sees only the
//! `Backend` trait through the router.

pub mod logger;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bridge::audit::{AuditLog, Durability};
use bridge::config::{Config, PolicyConfig, SlotConfig};
use bridge::loaded::LoadedModule;
use bridge::overlay::{Overlay, Policy};
use bridge::remote::RemoteBackend;
use bridge::remote::tls::{self, Endpoint};
use bridge::trace::{Scope, Trace, TraceLog};
use bridge::{Backend, Error, Mount, Router, SlotId, SlotSelect};
use firmware_sim::Device;

/// The backend the PKCS#11 module serves from `C_Initialize` on: the router the environment
/// describes (`FERROHSM_CONF`, else the default home), recorded whole when `FERROHSM_TRACE`
/// names a trace file.
pub fn module_from_env() -> Result<Arc<dyn Backend>, Error> {
    build_backend(&Config::from_env()?, trace_from_env().as_deref())
}

/// The trace file `FERROHSM_TRACE` names, if any.
pub fn trace_from_env() -> Option<PathBuf> {
    std::env::var_os(bridge::config::ENV_TRACE)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The router for `config`, and when `trace` names a file every call to it recorded there
/// (slots and sessions as the application sees them). A slot whose own `trace` is the same
/// file is recorded once, by this outer recorder.
pub fn build_backend(config: &Config, trace: Option<&Path>) -> Result<Arc<dyn Backend>, Error> {
    let router: Arc<dyn Backend> = Arc::new(build(config, trace)?);
    Ok(match trace {
        Some(path) => recorded(router, path, Scope::Module, &mut HashMap::new()),
        None => router,
    })
}

/// The router for `config`: one mount per configured slot, in order, or the simulated
/// device's default home when no slot is configured.
pub fn build_router(config: &Config) -> Result<Router, Error> {
    build(config, None)
}

/// [`build_router`], leaving unrecorded the slots whose `trace` is `recorded_whole`.
fn build(config: &Config, recorded_whole: Option<&Path>) -> Result<Router, Error> {
    let mut mounts = Vec::with_capacity(config.slot.len().max(1));
    if config.slot.is_empty() {
        let home = match &config.default_home {
            Some(home) => home.clone(),
            None => bridge::config::default_home()?,
        };
        let device = Device::open_home(&home, &config.firmware)?;
        mounts.push(Mount {
            backend: Arc::new(device),
            select: SlotSelect::All,
        });
    }
    // Slots recording into one file share its writer: one start and one end record.
    let mut logs = HashMap::new();
    for (index, slot) in config.slot.iter().enumerate() {
        let mut m = mount(config, index, slot)?;
        if let Some(path) = slot.trace().filter(|p| Some(*p) != recorded_whole) {
            m.backend = recorded(m.backend, path, Scope::Slot(index + 1), &mut logs);
        }
        mounts.push(m);
    }
    Ok(Router::new(mounts))
}

/// `backend` with its calls recorded into the trace file at `path` (opened once per build, in
/// `logs`). A file that cannot be opened is logged and the backend serves unrecorded:
/// recording never changes what a call does.
fn recorded(
    backend: Arc<dyn Backend>,
    path: &Path,
    scope: Scope,
    logs: &mut HashMap<PathBuf, Arc<TraceLog>>,
) -> Arc<dyn Backend> {
    let log = match logs.get(path) {
        Some(log) => Arc::clone(log),
        None => match TraceLog::open(path, scope) {
            Ok(log) => {
                logs.insert(path.to_path_buf(), Arc::clone(&log));
                log
            }
            Err(e) => {
                log::error!("{e}; calls are not recorded");
                return backend;
            }
        },
    };
    Arc::new(Trace::new(backend, log))
}

/// The client of a `kind = "remote"` slot (the module's, and `ferrohsm audit show`'s): its
/// socket, or its endpoints with the TLS files, read now (a missing or bad one is a
/// configuration error, not a failed call later), and its timeouts, daemon uid and pool size.
/// Nothing is connected.
pub fn remote_backend(slot: &SlotConfig) -> Result<RemoteBackend, Error> {
    let SlotConfig::Remote {
        socket,
        endpoints,
        ca,
        cert,
        key,
        timeout_secs,
        connect_timeout_secs,
        daemon_uid,
        connections,
        ..
    } = slot
    else {
        return Err(Error::Config("not a kind = \"remote\" slot".into()));
    };
    let mut remote = match (socket, endpoints, ca, cert, key) {
        (Some(socket), None, ..) => RemoteBackend::new(socket),
        (None, Some(endpoints), Some(ca), Some(cert), Some(key)) => {
            let endpoints = endpoints
                .iter()
                .map(|e| Endpoint::parse(e))
                .collect::<Result<Vec<_>, _>>()?;
            let config = tls::client_config(ca, cert, key)?;
            RemoteBackend::tls(endpoints, config)
        }
        _ => {
            return Err(Error::Config(
                "kind = \"remote\" needs socket, or endpoints with ca, cert and key".into(),
            ));
        }
    };
    if let Some(secs) = timeout_secs {
        remote = remote.with_timeout(std::time::Duration::from_secs(*secs));
    }
    if let Some(secs) = connect_timeout_secs {
        remote = remote.with_connect_timeout(std::time::Duration::from_secs(*secs));
    }
    if let Some(uid) = daemon_uid {
        remote = remote.with_daemon_uid(*uid);
    }
    if let Some(n) = connections {
        remote = remote.with_connections(*n);
    }
    Ok(remote)
}

/// The mount for the `index`th `[[slot]]`.
fn mount(config: &Config, index: usize, slot: &SlotConfig) -> Result<Mount, Error> {
    let n = index + 1;
    let in_slot = |e: Error| match e {
        Error::Config(m) => Error::Config(format!("slot {n}: {m}")),
        other => other,
    };
    let (backend, select, audit_log, policy): (Arc<dyn Backend>, _, _, _) = match slot {
        SlotConfig::Sim {
            label,
            store,
            personality,
            audit_log,
            policy,
            trace: _,
        } => {
            let mut firmware = config.firmware.clone();
            if let Some(personality) = personality {
                firmware.personality = *personality;
            }
            let device = Device::open_token(store, label.as_deref(), &firmware)?;
            (Arc::new(device), SlotSelect::All, audit_log, policy)
        }
        SlotConfig::Module {
            path,
            token_label,
            slot_id,
            audit_log,
            policy,
            trace: _,
        } => {
            let module = LoadedModule::open(path).map_err(in_slot)?;
            let inner = match (token_label, slot_id) {
                (Some(label), _) => module.slot_by_token_label(label).map_err(in_slot)?,
                (None, Some(id)) => SlotId(*id),
                (None, None) => {
                    return Err(Error::Config(format!(
                        "slot {n}: kind = \"module\" needs `token_label` (or `slot_id`)"
                    )));
                }
            };
            (module, SlotSelect::Only(inner), audit_log, policy)
        }
        SlotConfig::Remote {
            audit_log, policy, ..
        } => {
            // Lazy: nothing is connected here, so C_Initialize succeeds while the daemon is
            // down; calls fail with CKR_DEVICE_REMOVED until it is up.
            let remote = remote_backend(slot).map_err(in_slot)?;
            (Arc::new(remote), SlotSelect::All, audit_log, policy)
        }
    };
    // A real HSM's module keeps its own rules; the protection rule stands in front of it (the
    // firmware and a daemon enforce it themselves).
    let protect = matches!(slot, SlotConfig::Module { .. });
    let backend = overlay(
        backend,
        audit_log.as_deref(),
        policy.as_ref(),
        protect,
        Durability::from_millis(config.audit.sync_ms),
    )
    .map_err(in_slot)?;
    Ok(Mount { backend, select })
}

/// `backend` under the slot's policy and audit log, when it has either, and the protection
/// rule when `protect`.
fn overlay(
    backend: Arc<dyn Backend>,
    audit_log: Option<&Path>,
    policy: Option<&PolicyConfig>,
    protect: bool,
    durability: Durability,
) -> Result<Arc<dyn Backend>, Error> {
    if audit_log.is_none() && policy.is_none() && !protect {
        return Ok(backend);
    }
    let policy = policy.map(Policy::from_config).transpose()?;
    let audit = audit_log
        .map(|p| AuditLog::open(p).map(|l| l.with_durability(durability)))
        .transpose()?;
    let overlay = Overlay::new(backend, policy, audit);
    Ok(Arc::new(if protect {
        overlay.protecting()
    } else {
        overlay
    }))
}

#[cfg(test)]
mod tests {
    use bridge::BackendExt as _;

    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(text).unwrap()
    }

    fn config_error(r: Result<Router, Error>) -> String {
        match r {
            Err(Error::Config(msg)) => msg,
            Err(other) => panic!("expected a configuration error, got {other:?}"),
            Ok(_) => panic!("expected a configuration error, got a router"),
        }
    }

    #[test]
    fn no_slots_mounts_the_default_home() {
        let home = tempfile::tempdir().unwrap();
        let c = Config {
            default_home: Some(home.path().to_path_buf()),
            ..Config::default()
        };
        let router = build_router(&c).unwrap();
        assert_eq!(router.mounts().len(), 1);
        assert_eq!(router.mounts()[0].select, SlotSelect::All);
        assert!(router.slot_list(false).is_ok());
    }

    #[test]
    fn sim_slots_are_mounted_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[[slot]]\nkind = \"sim\"\nstore = {:?}\nlabel = \"a\"\n\
             [[slot]]\nkind = \"sim\"\nstore = {:?}\npersonality = \"strict\"\n",
            dir.path().join("a"),
            dir.path().join("b"),
        );
        let router = build_router(&config(&text)).unwrap();
        assert_eq!(router.mounts().len(), 2);
    }

    #[test]
    fn a_missing_library_is_a_clear_error() {
        let msg = config_error(build_router(&config(
            "[[slot]]\nkind = \"module\"\npath = \"/no/such/lib.so\"\ntoken_label = \"x\"\n",
        )));
        assert!(
            msg.contains("slot 1") && msg.contains("/no/such/lib.so"),
            "{msg}"
        );
    }

    #[test]
    fn a_remote_slot_connects_lazily() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[[slot]]\nkind = \"remote\"\nsocket = {:?}\ntimeout_secs = 5\n",
            dir.path().join("none.sock")
        );
        let router = build_router(&config(&text)).unwrap();
        assert_eq!(router.slot_list(false), Err(Error::DeviceRemoved));
    }

    fn records(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn a_slot_is_recorded_by_configuration_and_once_when_the_module_is() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
        let text = format!(
            "[[slot]]\nkind = \"sim\"\nstore = {:?}\ntrace = {a:?}\n\
             [[slot]]\nkind = \"sim\"\nstore = {:?}\n",
            dir.path().join("s1"),
            dir.path().join("s2"),
        );
        let c = config(&text);
        let router = build_router(&c).unwrap();
        for slot in router.slot_list(false).unwrap() {
            let _ = router.token_info(slot);
        }
        drop(router);
        let lines = records(&a);
        // start, C_GetSlotList (Router::new numbers the slots), the slot's own C_GetSlotList
        // and C_GetTokenInfo, end: the other slot's calls are not in it.
        assert!(lines[0].contains("\"kind\":\"start\"") && lines[0].contains("\"slot_config\":1"));
        assert!(lines.last().unwrap().contains("\"kind\":\"end\""));
        let infos = lines
            .iter()
            .filter(|l| l.contains("C_GetTokenInfo"))
            .count();
        assert_eq!(infos, 1, "{lines:#?}");

        // The module recorded whole into the same file: each call once, one start record.
        let whole = dir.path().join("whole.jsonl");
        let text = format!(
            "[[slot]]\nkind = \"sim\"\nstore = {:?}\ntrace = {whole:?}\n",
            dir.path().join("s1"),
        );
        let backend = build_backend(&config(&text), Some(&whole)).unwrap();
        let slots = backend.slot_list(false).unwrap();
        backend.token_info(slots[0]).unwrap();
        drop(backend);
        let lines = records(&whole);
        assert_eq!(lines.iter().filter(|l| l.contains("\"start\"")).count(), 1);
        let infos = lines
            .iter()
            .filter(|l| l.contains("C_GetTokenInfo"))
            .count();
        assert_eq!(infos, 1, "{lines:#?}");
        assert!(lines[0].contains("\"scope\":\"module\""), "{lines:#?}");
        assert!(records(&b).is_empty());
    }

    #[test]
    fn a_trace_file_that_cannot_be_opened_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "[[slot]]\nkind = \"sim\"\nstore = {:?}\ntrace = \"/nonexistent/dir/t.jsonl\"\n",
            dir.path().join("s1"),
        );
        let router = build_router(&config(&text)).unwrap();
        assert_eq!(router.slot_list(false).unwrap().len(), 1);
    }

    #[test]
    fn policy_and_audit_wrap_a_sim_slot_and_bad_policies_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("t");
        let log = dir.path().join("audit.log");
        let text = format!(
            "[[slot]]\nkind = \"sim\"\nstore = {store:?}\naudit_log = {log:?}\n[slot.policy]\nnon_exportable = true\nallowed_mechanisms = [\"CKM_ECDSA\", \"CKM_EC_KEY_PAIR_GEN\"]\n"
        );
        let router = build_router(&config(&text)).unwrap();
        let slot = router.slot_list(false).unwrap()[0];
        let list = router.mechanism_list(slot).unwrap();
        assert_eq!(list.len(), 2, "{list:?}");
        assert!(log.exists());
        let bad = format!(
            "[[slot]]\nkind = \"sim\"\nstore = {store:?}\n[slot.policy]\nallowed_mechanisms = [\"CKM_NOPE\"]\n"
        );
        assert!(config_error(build_router(&config(&bad))).contains("CKM_NOPE"));
    }
}
