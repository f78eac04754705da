//! `ferrohsm serve`: the firmware daemon.

use std::path::Path;
use std::sync::Arc;

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

/// Runs the daemon until SIGTERM or SIGINT.
pub(crate) fn serve(
    conf: Option<&Path>,
    socket: &Path,
    home: &Path,
    allow_uid: &[u32],
) -> Result<(), String> {
    let firmware = firmware_config(conf)?;
    let device =
        Device::open_home(home, &firmware).map_err(|e| format!("{}: {e}", home.display()))?;
    let device: Arc<Device> = Arc::new(device);
    let listener = bridge::remote::bind(socket).map_err(|e| e.to_string())?;
    let mut server = Server::new(device.clone());
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
    // Every connection has ended: the device is ours alone; dropping it flushes the store.
    drop(server);
    let _ = std::fs::remove_file(socket);
    drop(device);
    eprintln!("ferrohsm: stopped");
    result.map_err(|e| e.to_string())
}
