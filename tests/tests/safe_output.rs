//! Every file the `ferrohsm` CLI writes (backup, domain file, KEK public key, `.byok` file, the
//! home's domain key) and the audit log the module writes: a symbolic link planted at the
//! output path (dangling, or pointing at an existing file elsewhere) or at the temporary path
//! the writers used before is refused or ignored, and its target is left untouched; a
//! directory others can write is refused unless `--allow-shared-dir`; the files come out mode
//! 0600 (0644 only with `--world-readable`, for public material).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use ferrohsm_e2e::*;

const PRECIOUS: &[u8] = b"a file elsewhere that must not change\n";

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// A file outside the output directory that a planted link points at, and a path a dangling
/// link points at.
struct Victims {
    _dir: tempfile::TempDir,
    existing: PathBuf,
    missing: PathBuf,
}

impl Victims {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let existing = dir.path().join("victim");
        std::fs::write(&existing, PRECIOUS).unwrap();
        let missing = dir.path().join("not-yet");
        Self {
            _dir: dir,
            existing,
            missing,
        }
    }

    /// The victims are as they were.
    fn untouched(&self, what: &str) {
        assert_eq!(
            std::fs::read(&self.existing).unwrap(),
            PRECIOUS,
            "{what}: the linked file was written"
        );
        assert!(
            !self.missing.exists(),
            "{what}: the dangling link's target was created"
        );
    }
}

/// A fresh output directory, mode 0700.
fn out_dir(h: &Home, name: &str) -> PathBuf {
    let d = h.path().join(name);
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
    d
}

/// Runs `command(out)` with a link planted at `out` (to an existing file, then dangling): it
/// must fail naming the link, leave the link a link and its target untouched.
fn refuses_links_at_output(h: &Home, what: &str, command: impl Fn(&Path) -> Run) {
    let v = Victims::new();
    for (kind, target) in [("existing", &v.existing), ("dangling", &v.missing)] {
        let dir = out_dir(h, &format!("{what}-{kind}"));
        let out = dir.join("out");
        symlink(target, &out).unwrap();
        let r = command(&out);
        assert_ne!(r.status, 0, "{what} ({kind} link): succeeded\n{}", r.all());
        assert!(
            r.stderr.contains("symbolic link"),
            "{what} ({kind}): {}",
            r.all()
        );
        assert!(std::fs::symlink_metadata(&out).unwrap().is_symlink());
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "{what} ({kind}): files left behind"
        );
        v.untouched(&format!("{what} ({kind} link)"));
    }
}

/// A home with token "out", a 1-of-1 domain and a holder key pair; returns the holder's PEM.
fn home_with_domain() -> (Home, PathBuf) {
    require("openssl");
    let h = Home::with_token("out");
    let key = h.file("h1.key");
    let public = h.file("h1.pem");
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        s(&key),
    ])
    .ok();
    openssl(&["pkey", "-in", s(&key), "-pubout", "-out", s(&public)]).ok();
    (h, public)
}

fn domain_init(h: &Home, holder: &Path, out: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "domain",
        "init",
        "--holders",
        s(holder),
        "--threshold",
        "1",
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    h.ferrohsm(&args)
}

#[test]
fn backup_and_domain_outputs_refuse_planted_links_and_shared_directories() {
    let (h, holder) = home_with_domain();

    // domain init: a link at --out is refused before the home is touched (no DMK is made).
    refuses_links_at_output(&h, "domain init", |out| domain_init(&h, &holder, out, &[]));
    assert!(
        !h.path().join("domain").exists(),
        "domain init touched the home"
    );

    let dir = out_dir(&h, "plain");
    let domain = dir.join("domain.json");
    domain_init(&h, &holder, &domain, &[]).ok();
    assert_eq!(mode(&domain), 0o600);
    // An existing domain file is never replaced.
    let before = std::fs::read(&domain).unwrap();
    let r = domain_init(&h, &holder, &domain, &[]);
    assert_ne!(r.status, 0, "{}", r.all());
    assert!(r.stderr.contains("exists already"), "{}", r.all());
    assert_eq!(std::fs::read(&domain).unwrap(), before);

    // backup create: a link at --out.
    refuses_links_at_output(&h, "backup create", |out| {
        h.ferrohsm(&["backup", "create", "--out", s(out)])
    });

    // Links planted at the temporary paths the writers used to use (`.NAME.tmp` beside the
    // backup, `.domain.key.tmp` and `.generation.tmp` in the home): never written through.
    let v = Victims::new();
    let out = dir.join("x.backup");
    symlink(&v.existing, dir.join(".x.backup.tmp")).unwrap();
    let domain_dir = h.path().join("domain");
    symlink(&v.existing, domain_dir.join(".generation.tmp")).unwrap();
    symlink(&v.missing, domain_dir.join(".domain.key.tmp")).unwrap();
    h.ferrohsm(&["backup", "create", "--out", s(&out)]).ok();
    v.untouched("links at the former temporary paths");
    assert_eq!(mode(&out), 0o600);
    assert!(std::fs::symlink_metadata(&out).unwrap().is_file());
    assert_eq!(mode(&domain_dir.join("generation")), 0o600);
    assert_eq!(mode(&domain_dir.join("domain.key")), 0o600);
    // A backup over an existing regular file replaces it, still 0600.
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    h.ferrohsm(&["backup", "create", "--out", s(&out)]).ok();
    assert_eq!(mode(&out), 0o600);

    // The home's own generation file as a link (to a file that reads as a generation): the
    // update is refused and the target untouched.
    let generation = domain_dir.join("generation");
    std::fs::remove_file(&generation).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let number = elsewhere.path().join("number");
    std::fs::write(&number, "7\n").unwrap();
    symlink(&number, &generation).unwrap();
    let r = h.ferrohsm(&["backup", "create", "--out", s(&dir.join("y.backup"))]);
    assert_ne!(r.status, 0, "{}", r.all());
    assert!(r.stderr.contains("symbolic link"), "{}", r.all());
    assert_eq!(std::fs::read_to_string(&number).unwrap(), "7\n");
    std::fs::remove_file(&generation).unwrap();

    // A directory others can write: refused with nothing written, unless allowed.
    let shared = h.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let in_shared = shared.join("z.backup");
    let r = h.ferrohsm(&["backup", "create", "--out", s(&in_shared)]);
    assert_ne!(r.status, 0, "{}", r.all());
    assert!(r.stderr.contains("writable by everyone"), "{}", r.all());
    assert!(r.stderr.contains("--allow-shared-dir"), "{}", r.all());
    let r = domain_init(&h, &holder, &shared.join("d.json"), &[]);
    assert_ne!(r.status, 0, "{}", r.all());
    assert!(r.stderr.contains("writable by everyone"), "{}", r.all());
    assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 0);
    h.ferrohsm(&[
        "backup",
        "create",
        "--out",
        s(&in_shared),
        "--allow-shared-dir",
    ])
    .ok();
    assert_eq!(mode(&in_shared), 0o600);
    let public_domain = shared.join("d.json");
    domain_init(
        &h,
        &holder,
        &public_domain,
        &["--allow-shared-dir", "--world-readable"],
    )
    .ok();
    assert_eq!(mode(&public_domain), 0o644);
}

#[test]
fn a_dangling_link_at_the_homes_domain_key_is_not_written_through() {
    let (h, holder) = home_with_domain();
    let v = Victims::new();
    let domain_dir = h.path().join("domain");
    std::fs::create_dir(&domain_dir).unwrap();
    symlink(&v.missing, domain_dir.join("domain.key")).unwrap();
    let dir = out_dir(&h, "d");
    let r = domain_init(&h, &holder, &dir.join("domain.json"), &[]);
    assert_ne!(r.status, 0, "{}", r.all());
    assert!(r.stderr.contains("symbolic link"), "{}", r.all());
    v.untouched("a dangling link at domain/domain.key");
}

fn create_kek(h: &Home, label: &str, out: &Path, extra: &[&str]) -> Run {
    let mut args = vec![
        "byok",
        "create-kek",
        "--token",
        "out",
        "--label",
        label,
        "--out",
        s(out),
        "--pin",
        USER_PIN,
    ];
    args.extend_from_slice(extra);
    h.ferrohsm(&args)
}

fn key_count(h: &Home) -> usize {
    h.user(&["--list-objects", "--type", "privkey"])
        .ok()
        .stdout
        .matches("Private Key Object")
        .count()
}

#[test]
fn byok_outputs_refuse_planted_links_and_come_out_private() {
    let (h, _) = home_with_domain();
    // create-kek: a refused --out creates no key.
    refuses_links_at_output(&h, "byok create-kek", |out| {
        create_kek(&h, "KEK-refused", out, &[])
    });
    assert_eq!(key_count(&h), 0, "a key was created for a refused --out");
    let dir = out_dir(&h, "kek");
    let pem = dir.join("kek.pem");
    create_kek(&h, "KEK1", &pem, &[]).ok();
    assert_eq!(mode(&pem), 0o600);
    let public = dir.join("kek-public.pem");
    create_kek(&h, "KEK2", &public, &["--world-readable"]).ok();
    assert_eq!(mode(&public), 0o644);
    assert!(
        std::fs::read_to_string(&public)
            .unwrap()
            .contains("BEGIN PUBLIC KEY")
    );

    // export: an extractable AES key, wrapped for KEK1.
    h.user(&[
        "--keygen",
        "--key-type",
        "AES:32",
        "--label",
        "leaving",
        "--id",
        "77",
        "--extractable",
    ])
    .ok();
    let export = |out: &Path| {
        h.ferrohsm(&[
            "byok",
            "export",
            "--token",
            "out",
            "--key",
            "leaving",
            "--kek-pem",
            s(&pem),
            "--kid",
            "KEK1",
            "--out",
            s(out),
            "--pin",
            USER_PIN,
        ])
    };
    refuses_links_at_output(&h, "byok export", export);
    let wrapped = dir.join("leaving.byok");
    export(&wrapped).ok();
    assert_eq!(mode(&wrapped), 0o600);
}

/// A configuration with one simulated slot under an audit log.
fn audit_conf(dir: &Path, log: &Path) -> PathBuf {
    let conf = dir.join("ferrohsm.toml");
    std::fs::write(
        &conf,
        format!(
            "[[slot]]\nkind = \"sim\"\nstore = {:?}\naudit_log = {log:?}\n",
            dir.join("store")
        ),
    )
    .unwrap();
    conf
}

fn tool_with(conf: &Path, args: &[&str]) -> Run {
    require("pkcs11-tool");
    let mut c: Command = timed("pkcs11-tool");
    c.arg("--module")
        .arg(module())
        .args(args)
        .env("FERROHSM_CONF", conf)
        .env_remove("FERROHSM_HOME")
        .env_remove("FERROHSM_LOG");
    run(&mut c)
}

#[test]
fn the_audit_log_and_its_head_are_private_and_never_redirected() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let log = dir.path().join("audit.log");
    let head = dir.path().join("audit.log.head");
    let conf = audit_conf(dir.path(), &log);
    let v = Victims::new();
    // The path the head file's temporary copy used to have.
    symlink(&v.existing, dir.path().join("audit.log.head.tmp")).unwrap();
    tool_with(
        &conf,
        &[
            "--init-token",
            "--slot",
            "0",
            "--label",
            "audited",
            "--so-pin",
            SO_PIN,
        ],
    )
    .ok();
    tool_with(
        &conf,
        &[
            "--slot",
            "0",
            "--init-pin",
            "--login",
            "--so-pin",
            SO_PIN,
            "--pin",
            USER_PIN,
        ],
    )
    .ok();
    assert!(std::fs::read_to_string(&log).unwrap().contains("C_Login"));
    assert_eq!(mode(&log), 0o600, "the audit log");
    assert_eq!(mode(&head), 0o600, "the head file");
    v.untouched("a link at the head file's former temporary path");
    let verify = Home::new().ferrohsm(&["audit", "verify", s(&log)]);
    assert_eq!(verify.status, 0, "{}", verify.all());

    // A link as the log itself (to an existing file, or dangling): the module refuses to start
    // and the targets are untouched.
    for (kind, target) in [("existing", &v.existing), ("dangling", &v.missing)] {
        let d = tempfile::tempdir().unwrap();
        let linked = d.path().join("audit.log");
        symlink(target, &linked).unwrap();
        let conf = audit_conf(d.path(), &linked);
        let r = tool_with(&conf, &["--list-slots"]);
        assert_ne!(r.status, 0, "{kind}: the module started\n{}", r.all());
        assert!(r.stderr.contains("symbolic link"), "{kind}: {}", r.all());
        v.untouched(&format!("a {kind} link as the audit log"));
    }
}

/// `ferrohsm serve --socket PATH --home HOME` under `umask`, its exit status if it ends within
/// `wait` (`None`: still serving, and stopped here), and what it wrote to stderr.
fn serve_socket(h: &Home, socket: &Path, extra: &[&str], umask: &str) -> (Option<i32>, String) {
    use std::process::Stdio;
    let log = h.file("serve.log");
    let mut c = h.command("sh");
    c.arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
        .arg(cli())
        .args(["serve", "--socket"])
        .arg(socket)
        .arg("--home")
        .arg(h.path().join("daemon-home"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut child = c.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::fs::symlink_metadata(socket).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_socket()
        }) || std::time::Instant::now() > deadline
        {
            child.kill().unwrap();
            child.wait().unwrap();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    (status, std::fs::read_to_string(&log).unwrap_or_default())
}

/// The daemon's socket follows the rules of every other output: a directory others can write
/// is refused (a sticky one only with `--allow-shared-dir`), nothing is created there; a link
/// planted at the socket's path is refused and its target left alone; the socket has the
/// mode asked, whatever the umask, set while binding (never by a `chmod` through the path).
#[test]
fn the_daemons_socket_refuses_shared_directories_and_planted_links() {
    let h = Home::new();
    for (name, dir_mode, extra, why) in [
        ("world", 0o777, &[][..], "writable by everyone"),
        ("group", 0o770, &[][..], "writable by its group"),
        ("sticky", 0o1777, &[][..], "writable by everyone"),
        (
            "world-allowed",
            0o777,
            &["--allow-shared-dir"][..],
            "not sticky",
        ),
    ] {
        let d = out_dir(&h, name);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(dir_mode)).unwrap();
        let socket = d.join("d.sock");
        let (status, err) = serve_socket(&h, &socket, extra, "022");
        assert!(
            status.is_some_and(|s| s != 0),
            "{name}: the daemon served a socket in a directory others can write\n{err}"
        );
        assert!(err.contains(why), "{name}: {err}");
        assert!(
            std::fs::symlink_metadata(&socket).is_err(),
            "{name}: something was created at the socket's path"
        );
    }
    let v = Victims::new();
    let d = out_dir(&h, "linked");
    let socket = d.join("d.sock");
    symlink(&v.existing, &socket).unwrap();
    let before = mode(&v.existing);
    let (status, err) = serve_socket(&h, &socket, &["--socket-mode", "666"], "022");
    assert!(
        status.is_some_and(|s| s != 0),
        "served through a link\n{err}"
    );
    assert!(err.contains("not a socket"), "{err}");
    assert!(std::fs::symlink_metadata(&socket).unwrap().is_symlink());
    assert_eq!(mode(&v.existing), before, "the link's target changed mode");
    v.untouched("a link at the socket's path");
    // Accepted: a private directory, and a sticky shared one when the operator says so; the
    // mode asked, under a umask that would take bits away and under one that would add none.
    for (name, dir_mode, extra, umask, want) in [
        (
            "private",
            0o700,
            &["--socket-mode", "660"][..],
            "077",
            0o660,
        ),
        (
            "private-0",
            0o700,
            &["--socket-mode", "600"][..],
            "000",
            0o600,
        ),
        (
            "sticky-allowed",
            0o1777,
            &["--allow-shared-dir", "--socket-mode", "600"][..],
            "000",
            0o600,
        ),
    ] {
        let d = out_dir(&h, name);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(dir_mode)).unwrap();
        let socket = d.join("d.sock");
        let (status, err) = serve_socket(&h, &socket, extra, umask);
        assert_eq!(status, None, "{name}: the daemon did not serve\n{err}");
        assert_eq!(mode(&socket), want, "{name}: the socket's mode");
    }
}
