//! The cluster path for a module whose name contains "cluster": three etcd members on loopback
//! ports (Debian's `etcd-server`), a domain (`ferrohsm domain init`, one holder key made by
//! openssl), `ferrohsm cluster init`, and one node (`ferrohsm serve --cluster`) on a socket:
//! the same round trip as the single daemon, with etcd as the store.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Result<Child, String> {
    let err = std::fs::File::create(log).map_err(|e| e.to_string())?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))
}

/// Starts the cluster for the module at `path` in `dir` (once) and writes `dir/ferrohsm.toml`
/// naming the node's socket. The processes started go to `started`.
pub(crate) fn start(path: &Path, dir: &Path, started: &mut Vec<Child>) -> Result<(), String> {
    let conf = dir.join("ferrohsm.toml");
    if conf.exists() {
        return Ok(());
    }
    let cli = path.with_file_name("ferrohsm");
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<Result<_, String>>()?;
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    for (i, (client, peer)) in ports.iter().enumerate() {
        let child = spawn(
            Command::new("etcd")
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.join(format!("etcd-{i}")))
                .arg(format!("--listen-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--advertise-client-urls=http://127.0.0.1:{client}"))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer}"
                ))
                .arg(format!("--initial-cluster={initial}"))
                .args(["--initial-cluster-state=new", "--log-level=error"]),
            &dir.join(format!("etcd-{i}.log")),
        )?;
        started.push(child);
    }
    let urls = ports
        .iter()
        .map(|(c, _)| format!("http://127.0.0.1:{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let home = dir.join("home");
    let holder = dir.join("holder.key");
    run(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&holder))?;
    let holder_pem = dir.join("holder.pem");
    run(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&holder)
        .arg("-out")
        .arg(&holder_pem))?;
    let ferrohsm = |args: &[&str]| {
        run(Command::new(&cli)
            .args(args)
            .env_remove("FERROHSM_CONF")
            .env_remove("FERROHSM_HOME"))
    };
    let h = home.display().to_string();
    ferrohsm(&[
        "domain",
        "init",
        "--home",
        &h,
        "--holders",
        &holder_pem.display().to_string(),
        "--threshold",
        "1",
        "--out",
        &dir.join("domain.json").display().to_string(),
    ])?;
    // etcd elects a leader within a few seconds of the members' start.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match ferrohsm(&[
            "cluster", "init", "--name", "bench", "--etcd", &urls, "--home", &h,
        ]) {
            Ok(_) => break,
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    let socket = dir.join("daemon.sock");
    let node = spawn(
        Command::new(&cli)
            .args(["serve", "--socket"])
            .arg(&socket)
            .args(["--home", &h, "--cluster", "bench", "--etcd", &urls])
            .env_remove("FERROHSM_CONF"),
        &dir.join("node.log"),
    )?;
    started.push(node);
    let start = Instant::now();
    while !socket.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(
        &conf,
        format!(
            "[[slot]]\nkind = \"remote\"\nsocket = \"{}\"\n",
            socket.display()
        ),
    )
    .map_err(|e| e.to_string())
}
