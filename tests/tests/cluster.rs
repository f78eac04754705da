//! The cluster end to end: a real three-member etcd cluster (Debian's `etcd-server`) and three
//! `ferrohsm serve --cluster` nodes on loopback ports, started once for this binary; the built
//! module as the application (in this process, and as pkcs11-tool processes), openssl as the
//! verifier.
//!
//! One test runs the scenarios in order on the one rig (etcd is started once per test binary):
//! the domain gate, keys made on one node used on the others, the lockout across nodes, races
//! between nodes, quorum loss and return, `kill -9` of a node and of a member under load, and a
//! scan of etcd's data and dump for secrets.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::Error as CkError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use ferrohsm_e2e::*;

const CHILD: &str = "FERROHSM_CLUSTER_CHILD";
/// Distinctive PINs, searched for in etcd's files at the end.
const SO: &str = "so-Pq77vvKz";
const PIN: &str = "pin-Zq81xwRt";
const CLUSTER: &str = "rig";
/// The lockout limit the nodes run with.
const LIMIT: usize = 5;

fn is_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// A process killed (SIGKILL) and reaped when dropped.
struct Proc {
    child: Option<Child>,
    what: String,
}

impl Proc {
    fn spawn(mut cmd: Command, log: &Path) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let what = format!("{cmd:?}");
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Self {
            child: Some(child),
            what,
        }
    }

    /// SIGKILL, then reap.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The rig's directory, removed on drop unless `FERROHSM_RIG_KEEP` is set.
struct KeepOrDelete(Option<tempfile::TempDir>);

impl KeepOrDelete {
    fn path(&self) -> &Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for KeepOrDelete {
    fn drop(&mut self) {
        if std::env::var_os("FERROHSM_RIG_KEEP").is_some() {
            if let Some(d) = self.0.take() {
                let _ = d.keep();
            }
        }
    }
}

/// Waits until `ok()` holds (at most `secs`), else panics with `what`.
fn wait_until(secs: u64, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------- etcd

struct Member {
    name: String,
    client: u16,
    peer: u16,
    dir: PathBuf,
    proc: Option<Proc>,
}

struct Etcd {
    members: Vec<Member>,
    initial: String,
    log: PathBuf,
}

impl Etcd {
    fn start(root: &Path) -> Self {
        require("etcd");
        let members: Vec<Member> = (0..3)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                dir: root.join(format!("etcd-m{i}")),
                proc: None,
            })
            .collect();
        let initial = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut etcd = Self {
            members,
            initial,
            log: root.join("etcd.log"),
        };
        for i in 0..3 {
            etcd.start_member(i);
        }
        etcd.wait_healthy();
        etcd
    }

    fn start_member(&mut self, i: usize) {
        let m = &self.members[i];
        let mut c = Command::new("etcd");
        c.args(["--name", &m.name, "--data-dir", s(&m.dir)])
            .arg(format!(
                "--listen-client-urls=http://127.0.0.1:{}",
                m.client
            ))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{}",
                m.client
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{}", m.peer))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                m.peer
            ))
            .arg(format!("--initial-cluster={}", self.initial))
            .args([
                "--initial-cluster-state=new",
                "--initial-cluster-token=ferrohsm-rig",
                // Elections in about half a second, so a killed leader is replaced quickly.
                "--heartbeat-interval=50",
                "--election-timeout=500",
                "--logger=zap",
                "--log-level=warn",
            ]);
        let p = Proc::spawn(c, &self.log);
        self.members[i].proc = Some(p);
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut p) = self.members[i].proc.take() {
            p.kill9();
        }
    }

    fn urls(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn etcdctl(&self, args: &[&str]) -> Run {
        let mut c = timed("etcdctl");
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.urls()))
            .args(args);
        run(&mut c)
    }

    /// Every running member reports healthy (a quorum and a leader).
    fn wait_healthy(&mut self) {
        let running: Vec<String> = self
            .members
            .iter_mut()
            .filter_map(|m| {
                m.proc
                    .as_mut()
                    .is_some_and(Proc::running)
                    .then(|| format!("http://127.0.0.1:{}", m.client))
            })
            .collect();
        let endpoints = running.join(",");
        let log = self.log.clone();
        wait_until(60, "etcd healthy", || {
            let mut c = timed("etcdctl");
            c.env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={endpoints}"))
                .args(["endpoint", "health"]);
            let r = run(&mut c);
            let healthy = r.status == 0;
            if !healthy && r.all().contains("no such") {
                panic!("{}\n{}", r.all(), std::fs::read_to_string(&log).unwrap());
            }
            healthy
        });
    }
}

// ---------------------------------------------------------------------------------- nodes

struct Node {
    name: String,
    home: PathBuf,
    socket: PathBuf,
    /// Its TLS listener (127.0.0.1), the same across restarts.
    port: u16,
    proc: Option<Proc>,
}

struct Rig {
    root: PathBuf,
    etcd: Etcd,
    nodes: Vec<Node>,
    /// The nodes' configuration (`[firmware]`: fast PIN derivation, the lockout limit).
    node_conf: PathBuf,
    /// The etcd URLs node 2 is started with instead of the members' (see `lost_answers`).
    node2_etcd: Option<String>,
}

impl Rig {
    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn ferrohsm(&self, args: &[&str]) -> Run {
        let mut c = timed(cli());
        c.env_remove("FERROHSM_HOME")
            .env("FERROHSM_CONF", &self.node_conf)
            .args(args);
        run(&mut c)
    }

    /// A client certificate from `ferrohsm tls issue`: `pki/NAME.pem` and `pki/NAME.key`.
    fn client_cert(&self, name: &str) {
        let pki = self.path("pki");
        self.ferrohsm(&[
            "tls",
            "issue",
            "--ca",
            s(&pki),
            "--name",
            name,
            "--out",
            s(&pki),
        ])
        .ok();
    }

    /// `ferrohsm serve` for node `i`, returning it when its socket answers.
    fn start_node(&mut self, i: usize) {
        let n = &self.nodes[i];
        let _ = std::fs::remove_file(&n.socket);
        let etcd = match (&self.node2_etcd, i) {
            (Some(urls), 2) => urls.clone(),
            _ => self.etcd.urls(),
        };
        // Node 1 takes its cluster, etcd members and name from its configuration file's
        // `[daemon]` section, the others from the flags.
        let mut conf = self.node_conf.clone();
        let mut cluster_flags = vec!["--cluster", CLUSTER, "--etcd", &etcd, "--node", &n.name];
        if i == 1 {
            conf = self.path("node1.toml");
            let urls: Vec<String> = etcd.split(',').map(|u| format!("{u:?}")).collect();
            std::fs::write(
                &conf,
                format!(
                    "{}\n[daemon]\ncluster = {CLUSTER:?}\netcd = [{}]\nnode = {:?}\n",
                    std::fs::read_to_string(&self.node_conf).unwrap(),
                    urls.join(", "),
                    n.name
                ),
            )
            .unwrap();
            cluster_flags.clear();
        }
        let mut c = Command::new(cli());
        c.env("FERROHSM_LOG", "warn")
            .env_remove("FERROHSM_HOME")
            .args(["--conf", s(&conf), "serve"])
            .args(["--socket", s(&n.socket), "--home", s(&n.home)])
            .args(["--listen", &format!("127.0.0.1:{}", n.port)])
            .args(["--tls-cert", s(&self.path("pki/node.pem"))])
            .args(["--tls-key", s(&self.path("pki/node.key"))])
            .args(["--client-ca", s(&self.path("pki/ca.pem"))])
            .args(&cluster_flags);
        let log = self.root.join(format!("{}.log", n.name));
        let p = Proc::spawn(c, &log);
        let socket = n.socket.clone();
        self.nodes[i].proc = Some(p);
        let proc = self.nodes[i].proc.as_mut().unwrap();
        wait_until(30, &format!("node {i} listening"), || {
            assert!(
                proc.running(),
                "{} exited:\n{}",
                proc.what,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
    }

    fn kill_node(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.take() {
            p.kill9();
        }
    }

    /// A client configuration naming node `i` only (written once, by `build`: a file
    /// rewritten while another process reads it would be read half-written).
    fn client_conf(&self, i: usize) -> PathBuf {
        self.path(&format!("client-{i}.toml"))
    }

    /// A client configuration naming the three nodes' TLS endpoints, node 0 first: the
    /// module fails over between them (written once, by `build`).
    fn failover_conf(&self) -> PathBuf {
        self.path("client-failover.toml")
    }

    /// A client configuration naming node `i`'s TLS endpoint only, as identity `app`.
    fn tls_conf(&self, i: usize) -> PathBuf {
        self.path(&format!("client-tls-{i}.toml"))
    }

    /// pkcs11-tool through node `i`.
    fn tool(&self, i: usize, args: &[&str]) -> Run {
        let mut c = timed("pkcs11-tool");
        c.env("FERROHSM_CONF", self.client_conf(i))
            .env_remove("FERROHSM_HOME")
            .arg("--module")
            .arg(module())
            .args(args);
        run(&mut c)
    }

    /// pkcs11-tool through node `i`, logged in on `slot`.
    fn user(&self, i: usize, slot: &str, args: &[&str]) -> Run {
        let mut all = vec!["--slot", slot, "--login", "--pin", PIN];
        all.extend_from_slice(args);
        self.tool(i, &all)
    }
}

/// Three RSA holder keys (openssl), a home with a token and a domain, the cluster created from
/// it, two more homes joined to the domain; returns the rig with its three nodes running.
fn build(root: &Path) -> Rig {
    require("pkcs11-tool");
    require("openssl");
    require("etcdctl");
    let etcd = Etcd::start(root);
    let node_conf = root.join("node.toml");
    std::fs::write(
        &node_conf,
        format!("[firmware]\npin_kdf_iterations = 1000\nmax_login_failures = {LIMIT}\n"),
    )
    .unwrap();
    let nodes = (0..3)
        .map(|i| Node {
            name: format!("node{i}"),
            home: root.join(format!("home{i}")),
            socket: root.join(format!("node{i}.sock")),
            port: free_port(),
            proc: None,
        })
        .collect();
    let mut rig = Rig {
        root: root.to_owned(),
        etcd,
        nodes,
        node_conf,
        node2_etcd: None,
    };
    for (i, n) in rig.nodes.iter().enumerate() {
        std::fs::write(
            rig.client_conf(i),
            format!(
                "[[slot]]\nkind = \"remote\"\nsocket = {:?}\ntimeout_secs = 30\n",
                n.socket
            ),
        )
        .unwrap();
    }
    // Certificates from `ferrohsm tls`: the nodes' (one, for 127.0.0.1) and the application's.
    let pki = rig.path("pki");
    rig.ferrohsm(&["tls", "init-ca", "--out", s(&pki)]).ok();
    rig.ferrohsm(&[
        "tls",
        "issue",
        "--ca",
        s(&pki),
        "--name",
        "node",
        "--server",
        "127.0.0.1",
        "--out",
        s(&pki),
    ])
    .ok();
    rig.client_cert("app");
    let endpoints: Vec<String> = rig
        .nodes
        .iter()
        .map(|n| format!("\"tls://127.0.0.1:{}\"", n.port))
        .collect();
    let tls_conf = |list: &[String]| {
        format!(
            "[[slot]]\nkind = \"remote\"\nendpoints = [{}]\nca = {:?}\ncert = {:?}\nkey = {:?}\ntimeout_secs = 30\n",
            list.join(", "),
            pki.join("ca.pem"),
            pki.join("app.pem"),
            pki.join("app.key"),
        )
    };
    std::fs::write(rig.failover_conf(), tls_conf(&endpoints)).unwrap();
    for (i, e) in endpoints.iter().enumerate() {
        std::fs::write(rig.tls_conf(i), tls_conf(std::slice::from_ref(e))).unwrap();
    }
    // The first home: a token with a key, then its domain (M = 2 of 3 holders).
    let home0 = rig.nodes[0].home.clone();
    let tool0 = |args: &[&str]| {
        let mut c = timed("pkcs11-tool");
        c.env("FERROHSM_HOME", &home0)
            .env("FERROHSM_CONF", root.join("home0.toml"))
            .arg("--module")
            .arg(module())
            .args(args);
        run(&mut c)
    };
    std::fs::write(
        root.join("home0.toml"),
        "[firmware]\npin_kdf_iterations = 1000\n",
    )
    .unwrap();
    tool0(&[
        "--init-token",
        "--slot",
        "0",
        "--label",
        "imported",
        "--so-pin",
        SO,
    ])
    .ok();
    tool0(&[
        "--slot",
        "0",
        "--init-pin",
        "--login",
        "--so-pin",
        SO,
        "--pin",
        PIN,
    ])
    .ok();
    tool0(&[
        "--slot",
        "0",
        "--login",
        "--pin",
        PIN,
        "--keypairgen",
        "--key-type",
        "EC:prime256v1",
        "--id",
        "a0",
        "--label",
        "before-cluster",
    ])
    .ok();
    for h in ["h1", "h2", "h3"] {
        rsa_key_pair(root, h);
    }
    let holders = format!(
        "{},{},{}",
        s(&root.join("h1.pem")),
        s(&root.join("h2.pem")),
        s(&root.join("h3.pem"))
    );
    let init = rig
        .ferrohsm(&[
            "domain",
            "init",
            "--home",
            s(&home0),
            "--holders",
            &holders,
            "--threshold",
            "2",
            "--out",
            s(&root.join("domain.json")),
        ])
        .ok();
    let fingerprint = printed_fingerprint(&init);
    // Without the domain, a cluster cannot be made.
    let bare = root.join("bare-home");
    let r = rig.ferrohsm(&[
        "cluster",
        "init",
        "--name",
        CLUSTER,
        "--etcd",
        &rig.etcd.urls(),
        "--home",
        s(&bare),
    ]);
    assert!(
        r.status != 0 && r.stderr.contains("domain init"),
        "cluster init without a domain: {}",
        r.all()
    );
    let r = rig
        .ferrohsm(&[
            "cluster",
            "init",
            "--name",
            CLUSTER,
            "--etcd",
            &rig.etcd.urls(),
            "--home",
            s(&home0),
        ])
        .ok();
    assert!(r.stdout.contains("imported 1 tokens"), "{}", r.all());
    // Once only.
    let r = rig.ferrohsm(&[
        "cluster",
        "init",
        "--name",
        CLUSTER,
        "--etcd",
        &rig.etcd.urls(),
        "--home",
        s(&home0),
    ]);
    assert!(
        r.status != 0 && r.stderr.contains("exists already"),
        "{}",
        r.all()
    );

    // The other nodes join the domain with two holders and the recorded fingerprint.
    for i in 1..3 {
        let home = rig.nodes[i].home.clone();
        // Without the fingerprint, a new home cannot tell a forged domain file: refused.
        let r = rig.ferrohsm(&[
            "domain",
            "join",
            "--home",
            s(&home),
            "--domain",
            s(&root.join("domain.json")),
            "--key",
            s(&root.join("h1.key")),
            "--key",
            s(&root.join("h3.key")),
        ]);
        assert!(
            r.status != 0 && r.stderr.contains("--expect-fingerprint"),
            "{}",
            r.all()
        );
        // One holder is not a quorum.
        let r = rig.ferrohsm(&[
            "domain",
            "join",
            "--home",
            s(&home),
            "--domain",
            s(&root.join("domain.json")),
            "--key",
            s(&root.join("h1.key")),
            "--expect-fingerprint",
            &fingerprint,
        ]);
        assert_ne!(r.status, 0, "one holder joined a node: {}", r.all());
        rig.ferrohsm(&[
            "domain",
            "join",
            "--home",
            s(&home),
            "--domain",
            s(&root.join("domain.json")),
            "--key",
            s(&root.join("h1.key")),
            "--key",
            s(&root.join("h3.key")),
            "--expect-fingerprint",
            &fingerprint,
        ])
        .ok();
    }
    for i in 0..3 {
        rig.start_node(i);
    }
    rig
}

// ------------------------------------------------------------------------------ scenarios

/// A node without the domain, or with another domain, serves nothing.
fn domain_gate(rig: &Rig) {
    let r = rig.ferrohsm(&[
        "serve",
        "--socket",
        s(&rig.path("x.sock")),
        "--home",
        s(&rig.path("no-domain")),
        "--cluster",
        CLUSTER,
        "--etcd",
        &rig.etcd.urls(),
    ]);
    assert!(
        r.status != 0 && r.stderr.contains("has no security domain"),
        "a node without the domain: {}",
        r.all()
    );
    assert!(!rig.path("x.sock").exists(), "it listened");
    // Another domain: made by `domain init` in another home.
    let other = rig.path("other-domain");
    let init = rig.ferrohsm(&[
        "domain",
        "init",
        "--home",
        s(&other),
        "--holders",
        s(&rig.path("h1.pem")),
        "--threshold",
        "1",
        "--out",
        s(&rig.path("other-domain.json")),
    ]);
    init.ok();
    let r = rig.ferrohsm(&[
        "serve",
        "--socket",
        s(&rig.path("x.sock")),
        "--home",
        s(&other),
        "--cluster",
        CLUSTER,
        "--etcd",
        &rig.etcd.urls(),
    ]);
    assert!(
        r.status != 0 && r.stderr.contains("belongs to security domain"),
        "a node of another domain: {}",
        r.all()
    );
    println!("domain gate: a node without the cluster's domain refuses to start");
}

/// The public key with CKA_ID `id` through node `i`, as PEM (openssl's own parser).
fn public_pem(rig: &Rig, i: usize, slot: &str, id: &str) -> PathBuf {
    let der = rig.path(&format!("pub-{id}.der"));
    let pem = rig.path(&format!("pub-{id}.pem"));
    rig.tool(
        i,
        &[
            "--slot",
            slot,
            "--read-object",
            "--type",
            "pubkey",
            "--id",
            id,
            "-o",
            s(&der),
        ],
    )
    .ok();
    openssl(&[
        "pkey",
        "-pubin",
        "-inform",
        "DER",
        "-in",
        s(&der),
        "-out",
        s(&pem),
    ])
    .ok();
    pem
}

/// Signs `data` with the key `id` through node `i` and verifies with openssl.
fn sign_verify(rig: &Rig, i: usize, slot: &str, id: &str, pem: &Path) {
    let msg = rig.path(&format!("msg-{id}-{i}"));
    let sig = rig.path(&format!("sig-{id}-{i}"));
    std::fs::write(&msg, format!("signed through node {i}")).unwrap();
    rig.user(
        i,
        slot,
        &[
            "--sign",
            "--mechanism",
            "ECDSA-SHA256",
            "--signature-format",
            "openssl",
            "--id",
            id,
            "-i",
            s(&msg),
            "-o",
            s(&sig),
        ],
    )
    .ok();
    let v = openssl(&[
        "dgst",
        "-sha256",
        "-verify",
        s(pem),
        "-signature",
        s(&sig),
        s(&msg),
    ]);
    assert!(
        v.status == 0 && v.stdout.contains("Verified OK"),
        "node {i}'s signature with {id} does not verify: {}",
        v.all()
    );
}

/// Keys made through one node sign through the others; the imported key signs everywhere.
fn keys_follow_the_cluster(rig: &Rig) {
    rig.user(
        0,
        "0",
        &[
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--id",
            "b1",
            "--label",
            "made-on-node0",
        ],
    )
    .ok();
    let pem = public_pem(rig, 2, "0", "b1");
    for i in 0..3 {
        sign_verify(rig, i, "0", "b1", &pem);
    }
    let pem = public_pem(rig, 1, "0", "a0");
    for i in 0..3 {
        sign_verify(rig, i, "0", "a0", &pem);
    }
    println!("keys: made on node 0, signed on nodes 0, 1, 2 and verified by openssl");
}

/// A token initialized through one node is a slot on every node; two nodes initializing one
/// token at once end with exactly one token.
fn init_races(rig: &Rig) {
    // Slot 1 is the cluster's empty slot on every node.
    let listing = rig.tool(2, &["--list-slots"]).ok().stdout;
    assert!(listing.contains("Slot 1"), "{listing}");
    let mut children = Vec::new();
    for (i, so) in [(0, "so-first-111"), (1, "so-second-222")] {
        let mut c = timed("pkcs11-tool");
        c.env("FERROHSM_CONF", rig.client_conf(i))
            .env_remove("FERROHSM_HOME")
            .arg("--module")
            .arg(module())
            .args([
                "--init-token",
                "--slot",
                "1",
                "--label",
                &format!("race-{i}"),
            ])
            .args(["--so-pin", so])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        children.push((i, c.spawn().unwrap()));
    }
    let outcomes: Vec<(usize, bool, String)> = children
        .into_iter()
        .map(|(i, c)| {
            let o = c.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            (i, o.status.success(), text)
        })
        .collect();
    let winners: Vec<_> = outcomes.iter().filter(|o| o.1).collect();
    // Both may succeed only one after the other (the second re-initializing with its own SO
    // PIN would need the first's: refused); never both at once.
    assert_eq!(
        winners.len(),
        1,
        "two nodes initialized one token: {outcomes:?}"
    );
    let winner = winners[0].0;
    for i in 0..3 {
        let info = rig.tool(i, &["--list-token-slots"]).ok().stdout;
        assert!(
            info.contains(&format!("race-{winner}")),
            "node {i} does not show the winner's token: {info}"
        );
    }
    // The winner's token, for the lockout: the SO sets the user PIN through another node.
    let so = if winner == 0 {
        "so-first-111"
    } else {
        "so-second-222"
    };
    rig.tool(
        2,
        &[
            "--slot",
            "1",
            "--init-pin",
            "--login",
            "--so-pin",
            so,
            "--pin",
            PIN,
        ],
    )
    .ok();
    println!("init race: exactly one of two concurrent C_InitToken won (node {winner})");
}

/// Wrong PINs thrown at the three nodes at once: no more than the limit are tried.
fn lockout_across_nodes(rig: &Rig) {
    let mut children = Vec::new();
    for k in 0..24 {
        let i = k % 3;
        let mut c = timed("pkcs11-tool");
        c.env("FERROHSM_CONF", rig.client_conf(i))
            .env_remove("FERROHSM_HOME")
            .arg("--module")
            .arg(module())
            .args([
                "--slot",
                "1",
                "--login",
                "--pin",
                &format!("wrong-{k:04}"),
                "-O",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        children.push((i, c.spawn().unwrap()));
    }
    let mut incorrect = 0;
    let mut locked = 0;
    let mut other = Vec::new();
    for (i, c) in children {
        let o = c.wait_with_output().unwrap();
        let text = format!(
            "node {i}: {}{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        if text.contains("CKR_PIN_INCORRECT") {
            incorrect += 1;
        } else if text.contains("CKR_PIN_LOCKED") {
            locked += 1;
        } else {
            other.push(text);
        }
    }
    assert!(other.is_empty(), "unexpected outcomes: {other:?}");
    // The try that reaches the limit answers CKR_PIN_LOCKED: at most LIMIT - 1 answer
    // CKR_PIN_INCORRECT, however the tries interleave across nodes.
    assert!(
        incorrect < LIMIT,
        "{incorrect} wrong PINs were answered CKR_PIN_INCORRECT across three nodes with a \
         limit of {LIMIT}"
    );
    assert_eq!(incorrect + locked, 24);
    assert!(incorrect >= 1);
    // The right PIN is locked out too, on every node.
    for i in 0..3 {
        let r = rig.user(i, "1", &["-O"]);
        assert!(
            r.status != 0 && r.all().contains("CKR_PIN_LOCKED"),
            "node {i} after the lockout: {}",
            r.all()
        );
    }
    println!(
        "lockout: 24 wrong PINs thrown at three nodes at once (limit {LIMIT}): {incorrect} \
         answered CKR_PIN_INCORRECT, {locked} CKR_PIN_LOCKED"
    );
}

// ----------------------------------------------------------------- the application

/// An application in a child process (this binary's `app_child`), through the module with
/// `FERROHSM_CONF` naming one node: it keeps its session and login across the scenario and
/// answers one line per command (`ok ...` or `err <CKR_*>`).
struct App {
    child: Child,
    input: std::process::ChildStdin,
    output: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl App {
    fn start(conf: &Path) -> Self {
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.args([
            "--ignored",
            "--exact",
            "app_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("FERROHSM_CONF", conf)
        .env_remove("FERROHSM_HOME")
        .env_remove("FERROHSM_LOG")
        .env("TEST_PKCS11_MODULE", module())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut child = c.spawn().unwrap();
        let input = child.stdin.take().unwrap();
        let output = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut app = Self {
            child,
            input,
            output,
        };
        let hello = app.cmd("hello");
        assert_eq!(hello, "ok ready", "the application did not start");
        app
    }

    /// Sends one command and returns its answer line.
    fn cmd(&mut self, line: &str) -> String {
        writeln!(self.input, "{line}").unwrap();
        self.input.flush().unwrap();
        self.read_answer()
    }

    /// The next answer line.
    fn read_answer(&mut self) -> String {
        loop {
            let l = self
                .output
                .next()
                .unwrap_or_else(|| panic!("the application ended"))
                .unwrap();
            // libtest's "test app_child ... " has no newline of its own.
            if let Some((_, answer)) = l.split_once("answer: ") {
                return answer.to_owned();
            }
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = writeln!(self.input, "quit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ck_pin(p: &str) -> AuthPin {
    AuthPin::from(p.to_owned())
}

fn answer<T>(r: Result<T, CkError>, ok: impl FnOnce(T) -> String) -> String {
    match r {
        Ok(v) => format!("ok {}", ok(v)),
        Err(CkError::Pkcs11(rv, _)) => format!("err {rv:?}"),
        Err(e) => format!("err {e}"),
    }
}

fn ec_template(label: &str) -> (Vec<Attribute>, Vec<Attribute>) {
    // P-256's OID.
    let params = vec![0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    (
        vec![
            Attribute::Token(true),
            Attribute::EcParams(params),
            Attribute::Verify(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ],
        vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Sign(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ],
    )
}

/// The application's commands: `login`, `import` (the known secret), `keygen LABEL` (answers
/// the private key's handle), `use LABEL` (a private key found by label), `sign` (with the
/// last key made or used), `find LABEL` (how many objects carry it), `quit`.
#[test]
#[ignore = "the application of a_cluster_of_three_nodes_on_three_etcd_members"]
fn app_child() {
    if !is_child() {
        return;
    }
    let p = Pkcs11::new(module()).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = p.get_slots_with_initialized_token().unwrap()[0];
    let s: Session = p.open_rw_session(slot).unwrap();
    let mut key: Option<ObjectHandle> = None;
    let stdin = std::io::stdin();
    let say = |a: String| {
        let mut o = std::io::stdout().lock();
        writeln!(o, "answer: {a}").unwrap();
        o.flush().unwrap();
    };
    for line in stdin.lock().lines() {
        let line = line.unwrap();
        let (cmd, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let a = match cmd {
            "hello" => "ok ready".to_owned(),
            "login" => answer(s.login(UserType::User, Some(&ck_pin(PIN))), |()| {
                String::new()
            }),
            "import" => answer(s.create_object(&secret_template()), |h| h.to_string()),
            "keygen" => {
                let (pubt, privt) = ec_template(arg);
                answer(
                    s.generate_key_pair(&Mechanism::EccKeyPairGen, &pubt, &privt),
                    |(_, k)| {
                        key = Some(k);
                        k.to_string()
                    },
                )
            }
            "sign" => match key {
                Some(k) => answer(s.sign(&Mechanism::EcdsaSha256, k, b"cluster"), |sig| {
                    sig.len().to_string()
                }),
                None => "err no key".to_owned(),
            },
            // `use LABEL`: the private key with this label is the one `sign` uses.
            "use" => answer(
                s.find_objects(&[
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::Label(arg.as_bytes().to_vec()),
                ]),
                |v| {
                    key = v.first().copied();
                    v.len().to_string()
                },
            ),
            "find" => answer(
                s.find_objects(&[Attribute::Label(arg.as_bytes().to_vec())]),
                |v| v.len().to_string(),
            ),
            "mkdata" => answer(
                s.create_object(&[
                    Attribute::Class(ObjectClass::DATA),
                    Attribute::Token(true),
                    Attribute::Label(arg.as_bytes().to_vec()),
                    Attribute::Value(b"race".to_vec()),
                ]),
                |h| h.to_string(),
            ),
            // `relabel HANDLE NEW` and `destroy HANDLE`: by handle, the same on every node.
            "relabel" | "destroy" => {
                let (h, new) = arg.split_once(' ').unwrap_or((arg, ""));
                #[allow(unsafe_code)]
                // SAFETY: a handle is a number; the module checks it (a wrong one is
                // CKR_OBJECT_HANDLE_INVALID, which is what this race looks for).
                let h = h
                    .parse::<u64>()
                    .ok()
                    .map(|h| unsafe { ObjectHandle::new_from_raw(h) });
                match (cmd, h) {
                    (_, None) => "err ObjectHandleInvalid".to_owned(),
                    ("relabel", Some(o)) => answer(
                        s.update_attributes(o, &[Attribute::Label(new.as_bytes().to_vec())]),
                        |()| String::new(),
                    ),
                    (_, Some(o)) => answer(s.destroy_object(o), |()| String::new()),
                }
            }
            // `loginpin PIN`, `logout`, `setpin OLD NEW`: the user PIN, by this application.
            "loginpin" => answer(s.login(UserType::User, Some(&ck_pin(arg))), |()| {
                String::new()
            }),
            "logout" => answer(s.logout(), |()| String::new()),
            "setpin" => {
                let (old, new) = arg.split_once(' ').unwrap_or((arg, ""));
                answer(s.set_pin(&ck_pin(old), &ck_pin(new)), |()| String::new())
            }
            // `mksecret LABEL`: an AES key, extractable and not sensitive (answers its handle);
            // `sensitive HANDLE`: sets CKA_SENSITIVE (one way); `issensitive HANDLE`.
            "mksecret" => answer(
                s.create_object(&[
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::AES),
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(false),
                    Attribute::Extractable(true),
                    Attribute::Encrypt(true),
                    Attribute::Label(arg.as_bytes().to_vec()),
                    Attribute::Value(vec![0x5a; 32]),
                ]),
                |h| h.to_string(),
            ),
            "sensitive" | "issensitive" => {
                #[allow(unsafe_code)]
                // SAFETY: a handle is a number; the module checks it.
                let h = unsafe { ObjectHandle::new_from_raw(arg.parse::<u64>().unwrap_or(0)) };
                if cmd == "sensitive" {
                    answer(
                        s.update_attributes(h, &[Attribute::Sensitive(true)]),
                        |()| String::new(),
                    )
                } else {
                    answer(
                        s.get_attributes(h, &[cryptoki::object::AttributeType::Sensitive]),
                        |a| match a.first() {
                            Some(Attribute::Sensitive(b)) => b.to_string(),
                            _ => "?".to_owned(),
                        },
                    )
                }
            }
            "quit" => return,
            other => format!("err unknown command {other}"),
        };
        say(a);
    }
}

/// A proxy in front of each etcd member that loses the answer of every write transaction the
/// first time it passes: the member applies the write, the node hears nothing back (as when a
/// member commits and then dies or times out) and sends the write to the next member.
struct LossyProxies {
    ports: Vec<u16>,
    lost: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl LossyProxies {
    fn start(etcd: &Etcd) -> Self {
        use std::collections::HashSet;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let seen: Arc<Mutex<HashSet<Vec<u8>>>> = Arc::default();
        let lost = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut ports = Vec::new();
        for m in &etcd.members {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            ports.push(listener.local_addr().unwrap().port());
            let (target, seen, lost, stop) = (m.client, seen.clone(), lost.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((conn, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let (seen, lost) = (seen.clone(), lost.clone());
                    std::thread::spawn(move || Self::relay(conn, target, &seen, &lost));
                }
            });
        }
        Self { ports, lost, stop }
    }

    /// One request: read it, pass it on (with `Connection: close`), read the whole answer,
    /// then hand it back — or, for a write transaction not seen before, drop the connection.
    fn relay(
        mut conn: std::net::TcpStream,
        target: u16,
        seen: &std::sync::Mutex<std::collections::HashSet<Vec<u8>>>,
        lost: &std::sync::atomic::AtomicUsize,
    ) {
        use std::io::Read;
        conn.set_nonblocking(false).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + len {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_end..head_end + len].to_vec();
        let mut out: Vec<String> = head
            .split("\r\n")
            .filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:"))
            .map(str::to_owned)
            .collect();
        out.push("Connection: close".into());
        let mut request = format!("{}\r\n\r\n", out.join("\r\n")).into_bytes();
        request.extend_from_slice(&body);
        let Ok(mut up) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
            return;
        };
        if up.write_all(&request).is_err() {
            return;
        }
        let mut answer = Vec::new();
        if up.read_to_end(&mut answer).is_err() {
            return;
        }
        let write = head.starts_with("POST /v3/kv/txn")
            && (contains(&body, b"request_put") || contains(&body, b"request_delete_range"));
        if write && seen.lock().unwrap().insert(body) {
            lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return; // applied by etcd; the answer is lost
        }
        let _ = conn.write_all(&answer);
    }

    fn urls(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for LossyProxies {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Node 2 talks to etcd through proxies that lose the answer of every write the first time:
/// each write is applied, then sent again to the next member. Sent again, it must not be
/// applied twice: a key generation makes one key pair (not one per retry), a destroy that was
/// applied answers `CKR_OK`, and logins leave no PIN try behind (an orphaned try would fill the
/// lockout's limit with tries in progress, and later count as a failure).
fn lost_answers(rig: &mut Rig) {
    let lossy = LossyProxies::start(&rig.etcd);
    rig.kill_node(2);
    rig.node2_etcd = Some(lossy.urls());
    rig.start_node(2);
    let mut app = App::start(&rig.client_conf(2));
    for i in 0..=LIMIT {
        let t = Instant::now();
        assert_eq!(app.cmd(&format!("loginpin {PIN}")), "ok ", "login {i}");
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "login {i} waited {:?} for tries in progress",
            t.elapsed()
        );
        assert_eq!(app.cmd("logout"), "ok ");
    }
    assert_eq!(app.cmd("login"), "ok ");
    let made = app.cmd("keygen lost-answers");
    let handle = made.strip_prefix("ok ").expect("keygen").to_owned();
    assert_eq!(
        app.cmd("find lost-answers"),
        "ok 2",
        "one key pair, not one per retry"
    );
    assert_eq!(
        app.cmd(&format!("destroy {handle}")),
        "ok ",
        "an applied destroy"
    );
    assert_eq!(app.cmd("find lost-answers"), "ok 1");
    drop(app);
    let mut other = App::start(&rig.client_conf(0));
    assert_eq!(other.cmd("login"), "ok ");
    wait_until(10, "node 0 sees the destroy", || {
        other.cmd("find lost-answers") == "ok 1"
    });
    drop(other);
    let lost = lossy.lost.load(std::sync::atomic::Ordering::Relaxed);
    assert!(lost >= 2 * (LIMIT + 1) + 3, "only {lost} answers were lost");
    rig.kill_node(2);
    rig.node2_etcd = None;
    rig.start_node(2);
    drop(lossy);
    println!(
        "lost answers: {lost} writes applied whose answer was lost were sent again and applied \
         once (logins, a key generation, a destroy)"
    );
}

/// With two members down: writes and logins are refused with CKR_DEVICE_ERROR within about
/// ten seconds, a key already loaded goes on signing; with a member back, writes resume.
fn quorum_loss(rig: &mut Rig, app: &mut App) {
    assert!(app.cmd("keygen before-quorum-loss").starts_with("ok "));
    assert!(app.cmd("sign").starts_with("ok "));
    rig.etcd.kill9(1);
    rig.etcd.kill9(2);
    let t = Instant::now();
    let r = app.cmd("keygen no-quorum");
    let took = t.elapsed();
    assert_eq!(r, "err DeviceError", "a key generation without quorum");
    assert!(took < Duration::from_secs(11), "the refusal took {took:?}");
    let log = std::fs::read_to_string(rig.path("node0.log")).unwrap();
    assert!(
        log.contains("with no quorum, writes and logins are refused"),
        "no log line says why: {log}"
    );
    // A login elsewhere (a new application through another node) is refused: a lockout it
    // cannot record is no lockout.
    let r = rig.user(1, "0", &["-O"]);
    assert!(
        r.status != 0 && r.all().contains("CKR_DEVICE_ERROR"),
        "a login without quorum: {}",
        r.all()
    );
    // What is loaded signs on.
    let r = app.cmd("sign");
    assert!(r.starts_with("ok "), "a loaded key without quorum: {r}");
    // A member back: a quorum again, and writes resume.
    rig.etcd.start_member(1);
    rig.etcd.wait_healthy();
    let back = Instant::now();
    wait_until(30, "writes resume", || {
        app.cmd("keygen quorum-back").starts_with("ok ")
    });
    let resumed = back.elapsed();
    rig.user(2, "0", &["-O"]).ok();
    rig.etcd.start_member(2);
    rig.etcd.wait_healthy();
    println!(
        "quorum loss: a write refused after {took:?} with CKR_DEVICE_ERROR, logins refused, \
         signing went on; writes resumed {resumed:?} after a member came back"
    );
}

/// An application on the three nodes' TLS endpoints (the network issue's failover) makes and
/// uses keys while an etcd member is killed with `kill -9` and restarted, then the node it is
/// talking to is killed in the middle of a key generation: it goes on through the next node,
/// most generations succeed, and every key whose generation returned `CKR_OK` is whole on
/// every node, including the killed one once restarted.
fn kill_under_load(rig: &mut Rig) {
    let mut app = App::start(&rig.failover_conf());
    assert_eq!(app.cmd("login"), "ok ");
    let rounds = 60;
    let mut made = Vec::new();
    let mut failed = Vec::new();
    let mut lost_sign = 0;
    let t = Instant::now();
    for i in 0..rounds {
        if i == 15 {
            rig.etcd.kill9(0);
        }
        if i == 30 {
            rig.etcd.start_member(0);
        }
        let label = format!("load-{i}");
        let r = if i == 35 {
            // Node 0 dies while this generation is on the wire.
            writeln!(app.input, "keygen {label}").unwrap();
            app.input.flush().unwrap();
            std::thread::sleep(Duration::from_millis(2));
            rig.kill_node(0);
            app.read_answer()
        } else {
            app.cmd(&format!("keygen {label}"))
        };
        if r.starts_with("ok ") {
            let mut sig = app.cmd("sign");
            if sig == "err DeviceError" {
                // At most once: the call in flight when the endpoint went away.
                lost_sign += 1;
                sig = app.cmd("sign");
            }
            assert!(
                sig.starts_with("ok "),
                "a key just made does not sign: {sig}"
            );
            made.push(label);
        } else {
            failed.push((label, r));
        }
    }
    assert!(
        lost_sign <= 1,
        "{lost_sign} signatures lost to one failover"
    );
    assert!(
        failed.iter().filter(|(l, _)| l != "load-35").count() == 0,
        "generations failed other than the one in flight when node 0 died: {failed:?}"
    );
    rig.etcd.wait_healthy();
    let elapsed = t.elapsed();
    drop(app);
    // The node killed meanwhile comes back and catches up from etcd.
    rig.start_node(0);
    let mut back = App::start(&rig.client_conf(0));
    assert_eq!(back.cmd("login"), "ok ");
    let last = made.last().expect("some key was made");
    assert_eq!(
        back.cmd(&format!("find {last}")),
        "ok 2",
        "node 0 did not catch up"
    );
    drop(back);
    // Every key whose generation returned CKR_OK is there, seen through another node.
    let mut other = App::start(&rig.client_conf(2));
    assert_eq!(other.cmd("login"), "ok ");
    for label in &made {
        assert_eq!(
            other.cmd(&format!("find {label}")),
            "ok 2",
            "{label} (its generation returned CKR_OK) is not whole on node 2"
        );
    }
    assert!(
        made.len() * 10 >= rounds * 9,
        "too few generations succeeded: {} of {rounds} ({failed:?})",
        made.len()
    );
    println!(
        "kill -9 under load over TLS with failover: {} of {rounds} generations succeeded in \
         {elapsed:?} (an etcd member killed and restarted, the application's node killed \
         mid-generation and restarted); every one is on node 2; failures: {failed:?}",
        made.len()
    );
}

/// A set-attribute on one node racing a destroy on another: one outcome, never an object
/// brought back.
fn set_races_destroy(rig: &Rig, app: &mut App) {
    let mut other = App::start(&rig.client_conf(1));
    assert_eq!(other.cmd("login"), "ok ");
    let mut outcomes = Vec::new();
    for round in 0..10 {
        let label = format!("race-obj-{round}");
        let made = app.cmd(&format!("mkdata {label}"));
        let h = made.strip_prefix("ok ").expect("a data object").to_owned();
        // Both sent before either answer is read.
        writeln!(app.input, "destroy {h}").unwrap();
        app.input.flush().unwrap();
        writeln!(other.input, "relabel {h} {label}-renamed").unwrap();
        other.input.flush().unwrap();
        let destroyed = app.read_answer();
        let relabelled = other.read_answer();
        assert_eq!(destroyed, "ok ", "the destroy failed: {destroyed}");
        assert!(
            relabelled == "ok " || relabelled == "err ObjectHandleInvalid",
            "the set-attribute: {relabelled}"
        );
        // Whatever the order, the object is gone everywhere, under either label (a search
        // sees another node's change within the poll interval: 50 ms; allowed 1 s here).
        for (who, a) in [("node 0", &mut *app), ("node 1", &mut other)] {
            for l in [label.clone(), format!("{label}-renamed")] {
                let t = Instant::now();
                while a.cmd(&format!("find {l}")) != "ok 0" {
                    assert!(t.elapsed() < Duration::from_secs(1), "{l} is back on {who}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        outcomes.push(relabelled);
    }
    let first = outcomes.iter().filter(|o| *o == "ok ").count();
    println!(
        "set-attribute vs destroy: 10 races, the set landed first {first} times, the destroy \
         {} times; no object came back",
        10 - first
    );
}

/// A one-way attribute set through one node (CKA_SENSITIVE) is not undone by a set-attribute
/// through another node whose cache has not seen it yet: that write is based on an older
/// revision of the record, and must not replace the newer one.
fn set_does_not_undo_a_set(rig: &Rig, app: &mut App) {
    let mut other = App::start(&rig.client_conf(1));
    assert_eq!(other.cmd("login"), "ok ");
    let mut undone = Vec::new();
    for round in 0..10 {
        let label = format!("one-way-{round}");
        let made = app.cmd(&format!("mksecret {label}"));
        let h = made.strip_prefix("ok ").expect("a secret key").to_owned();
        // Node 1 holds it (by handle: it catches up at once).
        assert_eq!(other.cmd(&format!("issensitive {h}")), "ok false");
        assert_eq!(app.cmd(&format!("sensitive {h}")), "ok ");
        // At once, through node 1 (which may not have polled yet).
        let r = other.cmd(&format!("relabel {h} {label}-renamed"));
        assert_eq!(r, "ok ", "the set-attribute through node 1");
        for (who, a) in [("node 0", &mut *app), ("node 1", &mut other)] {
            std::thread::sleep(Duration::from_millis(120));
            let s = a.cmd(&format!("issensitive {h}"));
            if s != "ok true" {
                undone.push(format!("round {round}, {who}: {s}"));
            }
        }
    }
    assert!(
        undone.is_empty(),
        "CKA_SENSITIVE set through node 0 was undone by a set-attribute through node 1: \
         {undone:?}"
    );
    println!(
        "set vs set: 10 one-way changes on node 0, each raced by a relabel on node 1: none undone"
    );
}

/// After `C_SetPIN` through one node, the old PIN no longer opens the token through another
/// node, not even within the poll interval.
fn old_pin_after_change(rig: &Rig, app: &mut App) {
    let mut other = App::start(&rig.client_conf(1));
    // Loaded, not logged in.
    assert_eq!(other.cmd("find nothing"), "ok 0");
    let alt = "pin-Alt93kdQ";
    let (mut old, mut new) = (PIN, alt);
    let mut accepted = Vec::new();
    for round in 0..20 {
        // Node 1 has seen the previous change.
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(app.cmd(&format!("setpin {old} {new}")), "ok ");
        let r = other.cmd(&format!("loginpin {old}"));
        if r == "ok " {
            accepted.push(round);
            assert_eq!(other.cmd("logout"), "ok ");
        } else {
            assert_eq!(r, "err PinIncorrect", "round {round}");
        }
        std::mem::swap(&mut old, &mut new);
    }
    assert_eq!(old, PIN);
    assert!(
        accepted.is_empty(),
        "node 1 accepted the PIN just changed through node 0 in rounds {accepted:?}"
    );
    println!("old PIN: 20 C_SetPIN through node 0, the old PIN at once through node 1: refused");
}

/// A record in etcd that does not open (tampered, or written by something else) is one
/// invisible object, not a token that stops following the cluster: the other nodes go on
/// seeing new objects and destructions, and a new connection still loads the token.
fn a_bad_record_does_not_stall_a_token(rig: &Rig, app: &mut App) {
    let mut other = App::start(&rig.client_conf(1));
    assert_eq!(other.cmd("login"), "ok ");
    let made = app.cmd("mkdata tampered");
    let h: u64 = made
        .strip_prefix("ok ")
        .expect("a data object")
        .parse()
        .unwrap();
    let seen = |a: &mut App, label: &str, want: &str| {
        let t = Instant::now();
        loop {
            let r = a.cmd(&format!("find {label}"));
            if r == want {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "{label}: {r}, not {want}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    seen(&mut other, "tampered", "ok 1");
    let key = format!("/ferrohsm/{CLUSTER}/tokens/00000000/objects/{h:016}");
    rig.etcd.etcdctl(&["put", &key, "not a sealed value"]).ok();
    assert!(app.cmd("mkdata after-tampering").starts_with("ok "));
    seen(&mut other, "after-tampering", "ok 1");
    seen(&mut other, "tampered", "ok 0");
    let mut fresh = App::start(&rig.client_conf(2));
    assert_eq!(fresh.cmd("login"), "ok ");
    seen(&mut fresh, "after-tampering", "ok 1");
    seen(&mut fresh, "tampered", "ok 0");
    rig.etcd.etcdctl(&["del", &key]).ok();
    println!("a tampered record: invisible, and the token goes on following the cluster");
}

/// An etcd writer who deletes a PIN's lockout key does not reset the lockout: a token without
/// it refuses logins (CKR_DEVICE_ERROR) until the SO sets the PIN again.
fn lockout_key_deleted(rig: &Rig) {
    rig.etcd
        .etcdctl(&[
            "del",
            &format!("/ferrohsm/{CLUSTER}/tokens/00000001/lockout/user"),
        ])
        .ok();
    for i in 0..3 {
        let r = rig.user(i, "1", &["-O"]);
        assert!(
            r.status != 0 && !r.all().contains("CKR_PIN_INCORRECT"),
            "node {i}: a locked PIN opened once its lockout key was deleted: {}",
            r.all()
        );
    }
    println!("lockout key deleted in etcd: the locked PIN stays refused on every node");
}

/// Tenants on the cluster: `ferrohsm tenant` writes them into etcd (sealed); every node serves
/// a tenant its own tokens (under its own etcd prefix and key): a key made in tenant `acme`
/// through node 0 signs through node 1, the cluster's own tokens are not the tenant's, and a
/// peer without a grant (the rig's socket clients, uid 0) gets nothing from then on.
fn tenants_on_the_cluster(rig: &Rig) {
    let urls = rig.etcd.urls();
    let home0 = s(&rig.nodes[0].home).to_owned();
    let at = ["--cluster", CLUSTER, "--etcd", &urls, "--home", &home0];
    let mut add = vec!["tenant", "add", "--name", "acme"];
    add.extend(at);
    rig.ferrohsm(&add).ok();
    for role in ["crypto-officer", "crypto-user"] {
        let mut grant = vec![
            "tenant",
            "grant",
            "--name",
            "acme",
            "--identity",
            "app",
            "--role",
            role,
        ];
        grant.extend(at);
        rig.ferrohsm(&grant).ok();
    }
    let mut list = vec!["tenant", "list", "--json"];
    list.extend(at);
    assert!(rig.ferrohsm(&list).ok().stdout.contains("crypto-officer"));
    let tool = |conf: &Path, args: &[&str]| {
        let mut c = timed("pkcs11-tool");
        c.env("FERROHSM_CONF", conf)
            .env_remove("FERROHSM_HOME")
            .arg("--module")
            .arg(module())
            .args(args);
        run(&mut c)
    };
    // The tenant's own slot: uninitialized, none of the cluster's tokens.
    let slots = tool(&rig.failover_conf(), &["-L"]).ok();
    assert!(
        !slots.stdout.contains("imported") && slots.stdout.contains("uninitialized"),
        "{}",
        slots.stdout
    );
    tool(
        &rig.failover_conf(),
        &[
            "--init-token",
            "--slot",
            "0",
            "--label",
            "acme-token",
            "--so-pin",
            SO,
        ],
    )
    .ok();
    tool(
        &rig.failover_conf(),
        &[
            "--slot",
            "0",
            "--init-pin",
            "--login",
            "--so-pin",
            SO,
            "--pin",
            PIN,
        ],
    )
    .ok();
    let mut app = App::start(&rig.tls_conf(0));
    assert_eq!(app.cmd("login"), "ok ");
    assert!(app.cmd("keygen acme-key").starts_with("ok "));
    assert!(app.cmd("sign").starts_with("ok "));
    let mut other = App::start(&rig.tls_conf(1));
    assert_eq!(other.cmd("login"), "ok ");
    assert_eq!(other.cmd("find acme-key"), "ok 2");
    // The tenant's values are under its own prefix.
    let keys = rig
        .etcd
        .etcdctl(&[
            "get",
            "--prefix",
            &format!("/ferrohsm/{CLUSTER}/tenants/acme/tokens/"),
            "--keys-only",
        ])
        .ok();
    assert!(keys.stdout.contains("/objects/"), "{}", keys.stdout);
    // uid 0 on a node's socket holds no grant: nothing.
    let refused = rig.tool(0, &["-L"]);
    assert!(
        refused.status != 0 && !refused.stdout.contains("imported"),
        "{}",
        refused.all()
    );
    println!(
        "tenants on the cluster: acme's key made through node 0 found through node 1; an identity without a grant refused"
    );
}

/// The auditor of a cluster tenant reads its usage log with `audit show --cluster`: every node
/// found by its heartbeat in etcd and read at its TLS listener, the records merged by time,
/// each naming its node (signatures by `app` through nodes 0 and 1); `app`, acme's crypto
/// user, is refused with the words of one daemon; a stale heartbeat is read anyway when its
/// node answers and fails the read, naming the node, when it does not; a listener on 0.0.0.0
/// is reached at the host its heartbeat names.
fn audit_across_the_cluster(rig: &Rig) {
    let urls = rig.etcd.urls();
    let home0 = s(&rig.nodes[0].home).to_owned();
    let pki = rig.path("pki");
    rig.client_cert("auditor");
    rig.ferrohsm(&[
        "tenant",
        "grant",
        "--name",
        "acme",
        "--identity",
        "auditor",
        "--role",
        "auditor",
        "--cluster",
        CLUSTER,
        "--etcd",
        &urls,
        "--home",
        &home0,
    ])
    .ok();
    // acme's key signs through node 0 and through node 1.
    for i in [0, 1] {
        let mut app = App::start(&rig.tls_conf(i));
        assert_eq!(app.cmd("login"), "ok ");
        assert_eq!(app.cmd("use acme-key"), "ok 1");
        assert!(app.cmd("sign").starts_with("ok "), "node {i}");
    }
    let ca = pki.join("ca.pem");
    let show = |who: &str, extra: &[&str]| {
        let (cert, key) = (
            pki.join(format!("{who}.pem")),
            pki.join(format!("{who}.key")),
        );
        let mut args = vec![
            "audit",
            "show",
            "--tenant",
            "acme",
            "--ca",
            s(&ca),
            "--cert",
            s(&cert),
            "--tls-key",
            s(&key),
        ];
        args.extend_from_slice(extra);
        rig.ferrohsm(&args)
    };
    let cluster = ["--cluster", CLUSTER, "--etcd", urls.as_str()];
    let json: Vec<&str> = cluster.iter().copied().chain(["--json"]).collect();
    let r = show("auditor", &json).ok();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    let times: Vec<&str> = rows.iter().map(|r| r["time"].as_str().unwrap()).collect();
    assert!(times.windows(2).all(|t| t[0] <= t[1]), "{times:?}");
    assert!(
        rows.iter()
            .all(|r| ["node0", "node1", "node2"].contains(&r["node"].as_str().unwrap_or(""))),
        "{rows:?}"
    );
    for node in ["node0", "node1"] {
        for f in ["C_SignInit", "C_Sign"] {
            let ok = rows.iter().filter(|r| {
                r["node"] == node && r["function"] == f && r["who"] == "app" && r["rv"] == "CKR_OK"
            });
            assert!(ok.count() >= 1, "no {f} by app on {node}: {rows:?}");
        }
        assert!(
            rows.iter().any(|r| r["node"] == node
                && r["function"] == "C_SignInit"
                && r["mechanism"] == "CKM_ECDSA_SHA256"
                && r["label"] == "acme-key"),
            "{rows:?}"
        );
    }
    // Text: the node first on every line.
    let text = show("auditor", &cluster).ok().stdout;
    assert!(text.lines().all(|l| l.starts_with("node")), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("node1	")
            && l.ends_with("app	C_SignInit	CKM_ECDSA_SHA256	acme-key	CKR_OK")),
        "{text}"
    );
    // The crypto user: refused with the words of one daemon's endpoint.
    let refused = |r: &Run| {
        assert!(r.status != 0 && r.stdout.is_empty(), "{}", r.all());
        assert!(r.stderr.contains("CKR_ACTION_PROHIBITED"), "{}", r.all());
        r.stderr
            .split_once("usage log: ")
            .map(|(_, words)| words.to_owned())
            .unwrap()
    };
    let endpoint = format!("tls://127.0.0.1:{}", rig.nodes[0].port);
    assert_eq!(
        refused(&show("app", &cluster)),
        refused(&show("app", &["--endpoint", &endpoint]))
    );
    // Heartbeats put by hand: `at` 1 is decades stale.
    let beat = |node: &str, listen: &str, host: &str| {
        let key = format!("/ferrohsm/{CLUSTER}/nodes/{node}");
        let body = format!(r#"{{"applied":0,"at":1,"listen":["{listen}"],"host":"{host}"}}"#);
        rig.etcd.etcdctl(&["put", &key, &body]).ok();
        key
    };
    // A node listening on every address, reached at its host (127.0.0.1, which the nodes'
    // certificate names), stale but answering: read, and said.
    let any = beat(
        "anynode",
        &format!("0.0.0.0:{}", rig.nodes[2].port),
        "127.0.0.1",
    );
    let r = show("auditor", &json).ok();
    assert!(
        r.stderr.contains("node anynode's last heartbeat is")
            && r.stderr.contains("but it answered"),
        "{}",
        r.all()
    );
    let with_any: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap();
    let on = |rows: &[serde_json::Value], n: &str| rows.iter().filter(|r| r["node"] == n).count();
    assert_eq!(on(&with_any, "anynode"), on(&with_any, "node2"));
    rig.etcd.etcdctl(&["del", &any]).ok();
    // A stale node that does not answer: one line, naming it and what to do.
    let ghost = beat("ghost", &format!("127.0.0.1:{}", free_port()), "x");
    let r = show("auditor", &cluster);
    assert_ne!(r.status, 0, "{}", r.all());
    assert!(r.stdout.is_empty(), "{}", r.all());
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    for want in ["node ghost (tls://127.0.0.1:", "s old", "etcdctl del"] {
        assert!(r.stderr.contains(want), "lacks {want}: {}", r.stderr);
    }
    println!("a stale node that does not answer: {}", r.stderr.trim());
    rig.etcd.etcdctl(&["del", &ghost]).ok();
    println!(
        "audit show --cluster: {} records of acme from the nodes' heartbeats, app's signatures through node0 and node1; app refused as on one daemon; a stale node read when it answers, named when it does not",
        rows.len()
    );
}

/// A known secret, imported, and looked for in etcd's files and dump afterwards.
const SECRET: &[u8; 32] = b"\x8b\x11clusterSecretMarker-9f3a\x07\xee\x42\x19\x5c\x01";

fn secret_template() -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Encrypt(true),
        Attribute::Label(b"known-secret".to_vec()),
        Attribute::Value(SECRET.to_vec()),
    ]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

/// etcd's data directories and a dump of the cluster's keys hold no PIN and no key bytes.
fn scan_etcd(rig: &Rig) {
    let needles: Vec<(&str, Vec<u8>)> = vec![
        ("the user PIN", PIN.as_bytes().to_vec()),
        ("the SO PIN", SO.as_bytes().to_vec()),
        ("the imported key", SECRET.to_vec()),
        ("the imported key's middle", SECRET[2..26].to_vec()),
    ];
    let dump = rig
        .etcd
        .etcdctl(&["get", "--prefix", &format!("/ferrohsm/{CLUSTER}/")]);
    assert_eq!(dump.status, 0, "{}", dump.all());
    let raw = &dump.raw.stdout;
    assert!(
        contains(raw, format!("/ferrohsm/{CLUSTER}/tokens/").as_bytes()),
        "the dump holds no token"
    );
    let mut files = Vec::new();
    for m in &rig.etcd.members {
        walk(&m.dir, &mut files);
    }
    assert!(!files.is_empty());
    for (what, needle) in &needles {
        assert!(!contains(raw, needle), "etcdctl get --prefix shows {what}");
    }
    let mut scanned = 0;
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_default();
        scanned += bytes.len();
        for (what, needle) in &needles {
            assert!(!contains(&bytes, needle), "{} holds {what}", f.display());
        }
    }
    println!(
        "scan: {} bytes of etcdctl dump and {} files ({scanned} bytes) of etcd data: no PIN, no key bytes",
        raw.len(),
        files.len()
    );
}

fn status_json(rig: &Rig) {
    let r = rig
        .ferrohsm(&[
            "cluster",
            "status",
            "--name",
            CLUSTER,
            "--etcd",
            &rig.etcd.urls(),
            "--json",
        ])
        .ok();
    for want in [
        "\"healthy\": true",
        "\"node0\"",
        "\"node1\"",
        "\"node2\"",
        "\"slot\": 0",
        "\"slot\": 1",
        // Each node announces its TLS listener.
        &format!("127.0.0.1:{}", rig.nodes[1].port),
    ] {
        assert!(r.stdout.contains(want), "status lacks {want}: {}", r.stdout);
    }
    let text = rig
        .ferrohsm(&[
            "cluster",
            "status",
            "--name",
            CLUSTER,
            "--etcd",
            &rig.etcd.urls(),
        ])
        .ok()
        .stdout;
    println!("{text}");
}

#[test]
fn a_cluster_of_three_nodes_on_three_etcd_members() {
    if is_child() {
        return;
    }
    // FERROHSM_RIG_KEEP=1 keeps the rig's directory (logs, etcd data) for a post-mortem.
    let root = tempfile::Builder::new()
        .prefix("ferrohsm-cluster-")
        .tempdir()
        .unwrap();
    if std::env::var_os("FERROHSM_RIG_KEEP").is_some() {
        println!("rig directory: {}", root.path().display());
    }
    let root = KeepOrDelete(Some(root));
    let started = Instant::now();
    let mut rig = build(root.path());
    println!("rig: 3 etcd members, 3 nodes up in {:?}", started.elapsed());
    domain_gate(&rig);
    keys_follow_the_cluster(&rig);
    init_races(&rig);
    lockout_across_nodes(&rig);
    lockout_key_deleted(&rig);
    lost_answers(&mut rig);

    // The application, through node 0.
    let mut app = App::start(&rig.client_conf(0));
    assert_eq!(app.cmd("login"), "ok ");
    assert!(app.cmd("import").starts_with("ok "));
    set_races_destroy(&rig, &mut app);
    set_does_not_undo_a_set(&rig, &mut app);
    old_pin_after_change(&rig, &mut app);
    a_bad_record_does_not_stall_a_token(&rig, &mut app);
    quorum_loss(&mut rig, &mut app);
    drop(app);
    kill_under_load(&mut rig);
    status_json(&rig);
    tenants_on_the_cluster(&rig);
    audit_across_the_cluster(&rig);
    scan_etcd(&rig);
    println!("cluster rig: {:?} in all", started.elapsed());
}
