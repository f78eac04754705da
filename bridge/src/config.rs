//! The configuration contract (docs/architecture.md §4).
//!
//! - `FERROHSM_CONF=/path/ferrohsm.toml` names the slots explicitly.
//! - Without it, there is one simulated device whose home is `$FERROHSM_HOME`, else
//!   `$XDG_DATA_HOME/ferrohsm`, else `~/.local/share/ferrohsm`.
//!
//! A bad configuration is an `Error::Config` with a message naming the file and the problem.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// The environment variable naming the TOML configuration.
pub const ENV_CONF: &str = "FERROHSM_CONF";
/// The environment variable naming the default home of the simulated device.
pub const ENV_HOME: &str = "FERROHSM_HOME";
/// The environment variable naming a trace file: the module records every call of every slot
/// into it (`docs/trace.md`).
pub const ENV_TRACE: &str = "FERROHSM_TRACE";

/// The whole configuration.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Settings of the simulated firmware, for every simulated token.
    #[serde(default)]
    pub firmware: FirmwareConfig,
    /// The slots, in the order they are shown. Empty means "the default home".
    #[serde(default)]
    pub slot: Vec<SlotConfig>,
    /// Settings of the CNG key storage provider (`ksp/`).
    #[serde(default)]
    pub ksp: KspConfig,
    /// Settings of the firmware daemon (`ferrohsm serve`).
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// Settings of every audit log this process writes (slots', the daemon's, tenants').
    #[serde(default)]
    pub audit: AuditConfig,
    /// Where the default home is when no slot is configured (filled from the environment).
    #[serde(skip)]
    pub default_home: Option<PathBuf>,
}

/// Settings of the audit logs.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// A call returns once its record is written to the log, which is on disk (synced, and
    /// named by the head file) within this many milliseconds; 0: every call waits until its
    /// record is on disk.
    pub sync_ms: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { sync_ms: 10 }
    }
}

/// Settings of the CNG key storage provider. Its user PIN comes only from the environment
/// (`FERROHSM_PIN`), never from this file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KspConfig {
    /// The label of the token the provider opens (`FERROHSM_KSP_TOKEN` overrides it); default:
    /// the first initialized token.
    pub token: Option<String>,
}

/// Settings of the firmware daemon (`ferrohsm serve`): its network listeners and the bounds on
/// its peers. Each is optional (the daemon's defaults apply) and a command-line flag overrides
/// it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Connections at once, all peers together.
    pub max_connections: Option<usize>,
    /// Connections at once from one peer (a uid, a certificate identity, or one network
    /// address during its TLS handshake).
    pub max_connections_per_uid: Option<usize>,
    /// Seconds from accept to the end of the client's hello.
    pub handshake_timeout_secs: Option<u64>,
    /// Seconds for a request from its first byte to its last, and for its answer.
    pub frame_timeout_secs: Option<u64>,
    /// Seconds a connection may wait between requests (0: for ever).
    pub idle_timeout_secs: Option<u64>,
    /// TCP addresses (`HOST:PORT`) to serve over TLS 1.3 with mutual authentication.
    pub listen: Option<Vec<String>>,
    /// The daemon's certificate chain (PEM), for `listen`.
    pub tls_cert: Option<PathBuf>,
    /// The daemon's private key (PEM), for `listen`.
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM) every client certificate must chain to, for `listen`.
    pub client_ca: Option<PathBuf>,
    /// The client identities (certificate common names) allowed; default: every identity
    /// the client CA certifies.
    pub allow_identities: Option<Vec<String>>,
    /// The policy the daemon enforces on every peer (`non_exportable`, `allowed_mechanisms`),
    /// whatever the peer's own configuration says: the trusted side's, not the application's.
    pub policy: Option<PolicyConfig>,
    /// The daemon's own audit log: every peer's calls, with its identity (with tenants, each
    /// tenant's usage log takes its place).
    pub audit_log: Option<PathBuf>,
    /// Serve this cluster's tokens (in etcd) instead of the home's (`--cluster`).
    pub cluster: Option<String>,
    /// The etcd members' client URLs, for `cluster` (`--etcd`).
    pub etcd: Option<Vec<String>>,
    /// This node's name in `cluster status`, for `cluster` (`--node`).
    pub node: Option<String>,
}

/// Settings of the simulated firmware.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct FirmwareConfig {
    /// Failed logins in a row after which a PIN is locked (0: never).
    pub max_login_failures: u32,
    /// PBKDF2-HMAC-SHA256 iterations for keys derived from PINs, used when a token is
    /// initialized (each token records its own).
    pub pin_kdf_iterations: u32,
    /// `default` (the spec's defaults), `strict` (private and secret keys always sensitive,
    /// never extractable in clear, wrap only under trusted keys), or a vendor's: `softhsm`,
    /// `aws-cloudhsm`, `azure-cloudhsm`, `luna` (see `bridge/personalities/`).
    pub personality: Personality,
}

impl Default for FirmwareConfig {
    fn default() -> Self {
        Self {
            max_login_failures: 10,
            pin_kdf_iterations: 100_000,
            personality: Personality::Default,
        }
    }
}

/// Token policy profile ("firmware personality"): what a vendor's HSM offers and refuses,
/// read from `bridge/personalities/NAME.toml` ([`crate::personality`]).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Personality {
    /// The specification's defaults.
    #[default]
    Default,
    /// HSM firmware: keys always sensitive and never extractable in clear.
    Strict,
    /// SoftHSMv2.
    Softhsm,
    /// AWS CloudHSM (Client SDK 5).
    AwsCloudhsm,
    /// Azure Cloud HSM.
    AzureCloudhsm,
    /// Thales Luna Network HSM 7.
    Luna,
}

impl Personality {
    /// Every personality.
    pub const ALL: &'static [Personality] = &[
        Self::Default,
        Self::Strict,
        Self::Softhsm,
        Self::AwsCloudhsm,
        Self::AzureCloudhsm,
        Self::Luna,
    ];

    /// The name configurations use.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Strict => "strict",
            Self::Softhsm => "softhsm",
            Self::AwsCloudhsm => "aws-cloudhsm",
            Self::AzureCloudhsm => "azure-cloudhsm",
            Self::Luna => "luna",
        }
    }

    /// The personality named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|p| p.name() == name)
    }

    /// Its rules.
    pub fn profile(self) -> &'static crate::personality::Profile {
        crate::personality::Profile::of(self)
    }
}

/// One configured slot.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SlotConfig {
    /// A simulated token whose store is the directory `store`.
    Sim {
        /// The slot description (the token label is set by `C_InitToken`).
        #[serde(default)]
        label: Option<String>,
        /// The token's directory.
        store: PathBuf,
        /// Overrides the firmware personality for this token.
        #[serde(default)]
        personality: Option<Personality>,
        /// An audit log for this slot.
        #[serde(default)]
        audit_log: Option<PathBuf>,
        /// A trace file: every call to this slot is recorded into it (`docs/trace.md`).
        #[serde(default)]
        trace: Option<PathBuf>,
        /// A policy overlay.
        #[serde(default)]
        policy: Option<PolicyConfig>,
    },
    /// A slot of a real HSM's PKCS#11 library, loaded at run time.
    Module {
        /// The library.
        path: PathBuf,
        /// Which token of it, by label.
        #[serde(default)]
        token_label: Option<String>,
        /// Which slot of it, by id (when no label is given).
        #[serde(default)]
        slot_id: Option<u64>,
        /// An audit log for this slot.
        #[serde(default)]
        audit_log: Option<PathBuf>,
        /// A trace file: every call to this slot is recorded into it (`docs/trace.md`).
        #[serde(default)]
        trace: Option<PathBuf>,
        /// A policy overlay.
        #[serde(default)]
        policy: Option<PolicyConfig>,
    },
    /// A firmware daemon (`ferrohsm serve`): on a Unix socket (`socket`), or on network
    /// endpoints sharing one store (`endpoints`, with `ca`, `cert` and `key`), failing over from
    /// one to the next.
    Remote {
        /// The socket.
        #[serde(default)]
        socket: Option<PathBuf>,
        /// The daemons' network endpoints, `tls://HOST:PORT`, in the order they are tried.
        #[serde(default)]
        endpoints: Option<Vec<String>>,
        /// The CA (PEM) the daemons' certificates chain to (with `endpoints`).
        #[serde(default)]
        ca: Option<PathBuf>,
        /// This client's certificate chain (PEM; with `endpoints`).
        #[serde(default)]
        cert: Option<PathBuf>,
        /// This client's private key (PEM; with `endpoints`).
        #[serde(default)]
        key: Option<PathBuf>,
        /// The bound on one call's round trip, in seconds (default 30).
        #[serde(default)]
        timeout_secs: Option<u64>,
        /// The bound on connecting to one endpoint (TCP, TLS handshake, hello), in seconds
        /// (default 5).
        #[serde(default)]
        connect_timeout_secs: Option<u64>,
        /// The uid the daemon runs under: a socket served by any other (root excepted) is
        /// refused before anything is sent to it. Default: this process's effective uid.
        #[serde(default)]
        daemon_uid: Option<u32>,
        /// The most connections the application opens to the daemon, so that as many of its
        /// threads' calls run at once (default 8; 1 serialises them).
        #[serde(default)]
        connections: Option<usize>,
        /// An audit log for this slot.
        #[serde(default)]
        audit_log: Option<PathBuf>,
        /// A trace file: every call to this slot is recorded into it (`docs/trace.md`).
        #[serde(default)]
        trace: Option<PathBuf>,
        /// A policy overlay.
        #[serde(default)]
        policy: Option<PolicyConfig>,
    },
}

/// A policy overlay on a slot.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Refuse templates that create extractable or non-sensitive keys; refuse reads of
    /// sensitive values.
    #[serde(default)]
    pub non_exportable: bool,
    /// Only these mechanisms (by `CKM_*` name or number) may be used.
    #[serde(default)]
    pub allowed_mechanisms: Option<Vec<String>>,
}

impl SlotConfig {
    /// A remote slot's connection: `socket` alone, or `endpoints` (not empty) with `ca`, `cert`
    /// and `key`; `daemon_uid` only with a socket. Other kinds pass. (`ferrohsm audit show`'s
    /// connection flags are checked by this too.)
    pub fn check_remote(&self) -> core::result::Result<(), String> {
        let Self::Remote {
            socket,
            endpoints,
            ca,
            cert,
            key,
            daemon_uid,
            ..
        } = self
        else {
            return Ok(());
        };
        match (socket, endpoints) {
            (Some(_), None) => {
                if ca.is_some() || cert.is_some() || key.is_some() {
                    return Err("ca, cert and key go with endpoints, not with socket".into());
                }
            }
            (None, Some(list)) => {
                if list.is_empty() {
                    return Err("endpoints is empty".into());
                }
                if ca.is_none() || cert.is_none() || key.is_none() {
                    return Err(
                        "endpoints need ca, cert and key (PEM files; `ferrohsm tls` makes them)"
                            .into(),
                    );
                }
                if daemon_uid.is_some() {
                    return Err(
                        "daemon_uid is for a socket; a network daemon is checked by its certificate"
                            .into(),
                    );
                }
            }
            _ => return Err("kind = \"remote\" needs either socket or endpoints".into()),
        }
        Ok(())
    }

    /// The slot's trace file, if it is recorded.
    pub fn trace(&self) -> Option<&Path> {
        match self {
            Self::Sim { trace, .. } | Self::Module { trace, .. } | Self::Remote { trace, .. } => {
                trace.as_deref()
            }
        }
    }
}

impl Config {
    /// The configuration the environment describes: `FERROHSM_CONF` if set, else the default
    /// home.
    pub fn from_env() -> Result<Self> {
        match std::env::var_os(ENV_CONF) {
            Some(path) if !path.is_empty() => Self::load(Path::new(&path)),
            _ => Ok(Self {
                default_home: Some(default_home()?),
                ..Self::default()
            }),
        }
    }

    /// Reads and checks a TOML file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("{}: cannot read: {e}", path.display())))?;
        let mut config = Self::parse(&text)
            .map_err(|msg| Error::Config(format!("{}: {msg}", path.display())))?;
        if config.slot.is_empty() {
            config.default_home = Some(default_home()?);
        }
        Ok(config)
    }

    /// Parses TOML text (without environment defaults).
    pub fn parse(text: &str) -> core::result::Result<Self, String> {
        let config: Self = toml::from_str(text).map_err(|e| e.to_string().trim().to_owned())?;
        if config.firmware.pin_kdf_iterations == 0 {
            return Err("firmware.pin_kdf_iterations must be at least 1".into());
        }
        let d = &config.daemon;
        if d.max_connections == Some(0) || d.max_connections_per_uid == Some(0) {
            return Err(
                "daemon.max_connections and max_connections_per_uid must be at least 1".into(),
            );
        }
        if d.handshake_timeout_secs == Some(0) || d.frame_timeout_secs == Some(0) {
            return Err(
                "daemon.handshake_timeout_secs and frame_timeout_secs must be at least 1".into(),
            );
        }
        for (n, slot) in config.slot.iter().enumerate() {
            slot.check_remote()
                .map_err(|why| format!("slot {}: {why}", n + 1))?;
        }
        Ok(config)
    }
}

/// The default home of the simulated device: `$FERROHSM_HOME`, else
/// `$XDG_DATA_HOME/ferrohsm`, else `$HOME/.local/share/ferrohsm`.
pub fn default_home() -> Result<PathBuf> {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(h) = nonempty(ENV_HOME) {
        return Ok(PathBuf::from(h));
    }
    if let Some(x) = nonempty("XDG_DATA_HOME") {
        return Ok(PathBuf::from(x).join("ferrohsm"));
    }
    if let Some(h) = nonempty("HOME") {
        return Ok(PathBuf::from(h).join(".local/share/ferrohsm"));
    }
    Err(Error::Config(
        "no FERROHSM_HOME, XDG_DATA_HOME or HOME to place the store in".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ksp_section_names_a_token_and_nothing_else() {
        let c = Config::parse("[ksp]\ntoken = \"signing\"\n").unwrap();
        assert_eq!(c.ksp.token.as_deref(), Some("signing"));
        assert_eq!(Config::parse("").unwrap().ksp, KspConfig::default());
        assert!(Config::parse("[ksp]\npin = \"123456\"\n").is_err());
    }

    #[test]
    fn parses_the_documented_example() {
        let c = Config::parse(
            r#"
            [[slot]]
            kind = "sim"
            label = "sim"
            store = "/tmp/store"

            [[slot]]
            kind = "module"
            path = "/usr/lib/softhsm/libsofthsm2.so"
            token_label = "real"
            audit_log = "/tmp/real-audit.log"
            [slot.policy]
            non_exportable = true
            allowed_mechanisms = ["CKM_ECDSA_SHA256"]
            "#,
        )
        .unwrap();
        assert_eq!(c.slot.len(), 2);
        match &c.slot[1] {
            SlotConfig::Module {
                token_label,
                policy,
                ..
            } => {
                assert_eq!(token_label.as_deref(), Some("real"));
                assert!(policy.as_ref().unwrap().non_exportable);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_daemon_section_and_the_daemon_uid_parse() {
        let c = Config::parse(
            "[daemon]\nmax_connections = 64\nidle_timeout_secs = 0\n\n[[slot]]\nkind = \"remote\"\nsocket = \"/run/f.sock\"\ndaemon_uid = 998\n",
        )
        .unwrap();
        assert_eq!(c.daemon.max_connections, Some(64));
        assert_eq!(c.daemon.idle_timeout_secs, Some(0));
        assert_eq!(c.daemon.max_connections_per_uid, None);
        assert!(matches!(
            c.slot[0],
            SlotConfig::Remote {
                daemon_uid: Some(998),
                ..
            }
        ));
        assert!(Config::parse("[daemon]\nmax_connections = 0\n").is_err());
        assert!(Config::parse("[daemon]\nframe_timeout_secs = 0\n").is_err());
        assert!(Config::parse("[daemon]\nmax_conections = 3\n").is_err());
    }

    #[test]
    fn a_network_remote_slot_and_the_daemon_listener_parse() {
        let c = Config::parse(
            "[daemon]\nlisten = [\"127.0.0.1:7401\"]\ntls_cert = \"/s.pem\"\ntls_key = \"/s.key\"\nclient_ca = \"/ca.pem\"\nallow_identities = [\"app\"]\n\n[[slot]]\nkind = \"remote\"\nendpoints = [\"tls://127.0.0.1:7401\", \"tls://127.0.0.1:7402\"]\nca = \"/ca.pem\"\ncert = \"/app.pem\"\nkey = \"/app.key\"\n",
        )
        .unwrap();
        assert_eq!(
            c.daemon.listen.as_deref(),
            Some(&["127.0.0.1:7401".to_owned()][..])
        );
        assert_eq!(c.daemon.allow_identities.as_ref().map(Vec::len), Some(1));
        assert!(
            matches!(&c.slot[0], SlotConfig::Remote { endpoints: Some(e), .. } if e.len() == 2)
        );
        for (bad, says) in [
            (
                "[[slot]]\nkind = \"remote\"\n",
                "either socket or endpoints",
            ),
            (
                "[[slot]]\nkind = \"remote\"\nsocket = \"/s\"\nendpoints = [\"tls://a:1\"]\n",
                "either socket or endpoints",
            ),
            (
                "[[slot]]\nkind = \"remote\"\nendpoints = [\"tls://a:1\"]\nca = \"/ca.pem\"\n",
                "need ca, cert and key",
            ),
            (
                "[[slot]]\nkind = \"remote\"\nsocket = \"/s\"\nca = \"/c\"\n",
                "go with endpoints",
            ),
            (
                "[[slot]]\nkind = \"remote\"\nendpoints = []\n",
                "endpoints is empty",
            ),
        ] {
            let e = Config::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn every_slot_kind_takes_a_trace_file() {
        let c = Config::parse(
            "[[slot]]\nkind = \"sim\"\nstore = \"/s\"\ntrace = \"/t/sim.jsonl\"\n\
             [[slot]]\nkind = \"module\"\npath = \"/lib.so\"\nslot_id = 0\ntrace = \"/t/m.jsonl\"\n\
             [[slot]]\nkind = \"remote\"\nsocket = \"/s.sock\"\ntrace = \"/t/r.jsonl\"\n\
             [[slot]]\nkind = \"sim\"\nstore = \"/s2\"\n",
        )
        .unwrap();
        let traces: Vec<Option<&Path>> = c.slot.iter().map(SlotConfig::trace).collect();
        assert_eq!(
            traces,
            [
                Some(Path::new("/t/sim.jsonl")),
                Some(Path::new("/t/m.jsonl")),
                Some(Path::new("/t/r.jsonl")),
                None
            ]
        );
        let e = Config::parse("[[slot]]\nkind = \"sim\"\nstore = \"/x\"\ntrace_file = \"/t\"\n")
            .unwrap_err();
        assert!(e.contains("trace_file"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let e = Config::parse("[[slot]]\nkind = \"sim\"\nstore = \"/x\"\nstroe = 1\n").unwrap_err();
        assert!(e.contains("stroe"), "{e}");
        let e = Config::parse("[[slot]]\nkind = \"hsm\"\n").unwrap_err();
        assert!(e.contains("hsm"), "{e}");
        let e = Config::parse("colour = 1\n").unwrap_err();
        assert!(e.contains("colour"), "{e}");
    }
}
