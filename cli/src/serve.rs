//! `ferrohsm serve`: the firmware daemon.

use std::path::Path;
use std::sync::Arc;

use bridge::Backend;
use bridge::config::{Config, ENV_CONF, FirmwareConfig};
use bridge::remote::Server;
use firmware_sim::Device;

/// The `[firmware]` settings of `--conf`, else of `$FERROHSM_CONF`, else the defaults.
fn firmware_config(conf: Option<&Path>) -> Result<FirmwareConfig, String> {
    let path = match conf {
        Some(p) => Some(p.to_path_buf()),
        None => std::env::var_os(ENV_CONF)
            .filter(|v| !v.is_empty())
            .map(Into::into),
    };
    match path {
        Some(p) => Config::load(&p)
            .map(|c| c.firmware)
            .map_err(|e| e.to_string()),
        None => Ok(FirmwareConfig::default()),
    }
}

/// The daemon's log: warnings and errors (refused peers, malformed frames, dropped
/// connections) to stderr, `FERROHSM_LOG=info|debug|trace` for more. Never PINs or key bytes:
/// the protocol code logs method names and reasons only.
struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, meta: &log::Metadata<'_>) -> bool {
        meta.level() <= log::max_level()
    }
    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!("ferrohsm: {}: {}", record.level(), record.args());
        }
    }
    fn flush(&self) {}
}

fn init_log() {
    static LOG: StderrLog = StderrLog;
    let level = std::env::var("FERROHSM_LOG")
        .ok()
        .and_then(|v| v.parse::<log::LevelFilter>().ok())
        .unwrap_or(log::LevelFilter::Warn);
    if log::set_logger(&LOG).is_ok() {
        log::set_max_level(level);
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub(crate) fn serve(
    conf: Option<&Path>,
    socket: &Path,
    home: &Path,
    allow_uid: &[u32],
    socket_mode: u32,
) -> Result<(), String> {
    init_log();
    let firmware = firmware_config(conf)?;
    // Each connection gets its own Device over the shared store: a client is one PKCS#11
    // application, with its own sessions and login state, exactly as a process is with the
    // embedded module. Opening one now checks the home before listening.
    let device =
        Device::open_home(home, &firmware).map_err(|e| format!("{}: {e}", home.display()))?;
    drop(device);
    let listener =
        bridge::remote::bind_with_mode(socket, socket_mode).map_err(|e| e.to_string())?;
    let dir = home.to_path_buf();
    let mut server = Server::per_connection(move || {
        let device = Device::open_home(&dir, &firmware)?;
        Ok(Arc::new(device) as Arc<dyn Backend>)
    });
    if !allow_uid.is_empty() {
        server = server.allow_uids(allow_uid.iter().copied());
    }
    let stop = server.shutdown_flag();
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| format!("cannot handle signal {signal}: {e}"))?;
    }
    eprintln!(
        "ferrohsm: serving {} on {} (pid {})",
        home.display(),
        socket.display(),
        std::process::id()
    );
    let result = server.serve(listener);
    // Every connection has ended and dropped its Device (which flushes the store).
    drop(server);
    let _ = std::fs::remove_file(socket);
    eprintln!("ferrohsm: stopped");
    result.map_err(|e| e.to_string())
}
