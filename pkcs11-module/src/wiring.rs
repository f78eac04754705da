//! The composition root: builds the `Router` from the configuration (design.md §3).
//!
//! The only file that names the simulated firmware (`firmware_sim`) and, later, the real-HSM
//! back end (`bridge::loaded`) together: everything else in the module sees only the
//! `Backend` trait through the router.

use std::sync::Arc;

use bridge::config::{Config, PolicyConfig, SlotConfig};
use bridge::{Error, Mount, Router, SlotSelect};
use firmware_sim::Device;

/// The router the environment describes (`FERROHSM_CONF`, else the default home).
pub fn router_from_env() -> Result<Router, Error> {
    build_router(&Config::from_env()?)
}

/// The router for `config`: one mount per configured slot, in order, or the simulated
/// device's default home when no slot is configured.
pub fn build_router(config: &Config) -> Result<Router, Error> {
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
    for (index, slot) in config.slot.iter().enumerate() {
        mounts.push(mount(config, index, slot)?);
    }
    Ok(Router::new(mounts))
}

/// The mount for the `index`th `[[slot]]`.
fn mount(config: &Config, index: usize, slot: &SlotConfig) -> Result<Mount, Error> {
    let n = index + 1;
    match slot {
        SlotConfig::Sim {
            label,
            store,
            personality,
            audit_log,
            policy,
        } => {
            refuse_unavailable(n, audit_log.is_some(), policy.as_ref())?;
            let mut firmware = config.firmware.clone();
            if let Some(personality) = personality {
                firmware.personality = *personality;
            }
            let device = Device::open_token(store, label.as_deref(), &firmware)?;
            Ok(Mount {
                backend: Arc::new(device),
                select: SlotSelect::All,
            })
        }
        SlotConfig::Module { .. } => Err(Error::Config(format!(
            "slot {n}: kind = \"module\" is not available yet"
        ))),
        SlotConfig::Remote { .. } => Err(Error::Config(format!(
            "slot {n}: kind = \"remote\" is not available yet"
        ))),
    }
}

/// Refuses settings whose decorators do not exist yet. Ignoring them would be worse than
/// failing: an operator who asked for `non_exportable` or an audit log must not silently get
/// a slot without them.
fn refuse_unavailable(
    n: usize,
    audit_log: bool,
    policy: Option<&PolicyConfig>,
) -> Result<(), Error> {
    if audit_log {
        return Err(Error::Config(format!(
            "slot {n}: `audit_log` is not available yet"
        )));
    }
    if policy.is_some() {
        return Err(Error::Config(format!(
            "slot {n}: `policy` is not available yet"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use bridge::Backend as _;

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
    fn module_and_remote_are_not_available_yet() {
        let msg = config_error(build_router(&config(
            "[[slot]]\nkind = \"module\"\npath = \"/x.so\"\n",
        )));
        assert!(
            msg.contains("slot 1") && msg.contains("module") && msg.contains("not available yet")
        );
        let msg = config_error(build_router(&config(
            "[[slot]]\nkind = \"remote\"\nsocket = \"/s\"\n",
        )));
        assert!(msg.contains("remote") && msg.contains("not available yet"));
    }

    #[test]
    fn policy_and_audit_are_refused_rather_than_ignored() {
        let text =
            "[[slot]]\nkind = \"sim\"\nstore = \"/tmp/x\"\n[slot.policy]\nnon_exportable = true\n";
        assert!(config_error(build_router(&config(text))).contains("policy"));
        let text = "[[slot]]\nkind = \"sim\"\nstore = \"/tmp/x\"\naudit_log = \"/tmp/a\"\n";
        assert!(config_error(build_router(&config(text))).contains("audit_log"));
    }
}
