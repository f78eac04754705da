//! p11-kit: the module registered by a p11-kit module file (in a private `~/.config`), listed
//! by `p11-kit list-modules`, and used by pkcs11-tool through `p11-kit-proxy.so`; signatures
//! made through the proxy are verified by plain openssl.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stdout,
    clippy::print_stderr
)]

use ferrohsm_e2e::*;

const PROXY: &str = "/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so";
const TOKEN: &str = "p11kit";

#[test]
fn the_module_works_through_p11_kit_proxy() {
    require("p11-kit");
    require("pkcs11-tool");
    assert!(
        std::path::Path::new(PROXY).exists(),
        "{PROXY} is missing: the test command (scripts/test.sh) installs p11-kit-modules"
    );
    let h = Home::with_token(TOKEN);
    // The README's module file. p11-kit ignores ~/.config/pkcs11 in programs running as root
    // ("skipping user config in program running as root"), so as root (CI) the file goes to
    // /etc/pkcs11/modules for the duration of the test, under a name of its own, enabled only
    // in the two programs this test runs (other programs that load p11-kit modules while the
    // file exists do not see it; `enable-in: p11-kit-proxy` does not enable it in a program
    // that loads the proxy); otherwise to a private ~/.config.
    let root = run(std::process::Command::new("id").arg("-u"))
        .ok()
        .stdout
        .trim()
        == "0";
    let home = h.file("userhome");
    let dir = if root {
        std::path::PathBuf::from("/etc/pkcs11/modules")
    } else {
        home.join(".config/pkcs11/modules")
    };
    std::fs::create_dir_all(&dir).unwrap();
    let _file = Remove(dir.join(format!("ferrohsm-e2e-{}.module", std::process::id())));
    std::fs::write(
        &_file.0,
        format!(
            "module: {}\nenable-in: p11-kit, pkcs11-tool\n",
            module().display()
        ),
    )
    .unwrap();
    let with_env = |program: &str| {
        let mut c = h.timed(program);
        c.env("HOME", &home).env_remove("XDG_CONFIG_HOME");
        c
    };

    let r = run(with_env("p11-kit").arg("list-modules")).ok();
    assert!(r.stdout.contains("ferrohsm-e2e-"), "{}", r.all());
    assert!(r.stdout.contains(&format!("token: {TOKEN}")), "{}", r.all());

    let proxy = |args: &[&str]| {
        let mut c = with_env("pkcs11-tool");
        c.args(["--module", PROXY]).args(args);
        run(&mut c)
    };
    let r = proxy(&["-L"]).ok();
    assert!(r.stdout.contains(TOKEN), "{}", r.all());
    let user = |args: &[&str]| {
        let mut all = vec!["--token-label", TOKEN, "--login", "--pin", USER_PIN];
        all.extend_from_slice(args);
        proxy(&all)
    };

    let data = h.file("data.txt");
    std::fs::write(&data, b"signed through p11-kit-proxy\n").unwrap();
    for (key_type, id, mech, sigfmt, md) in [
        ("rsa:2048", "91", "SHA256-RSA-PKCS", None, "-sha256"),
        (
            "EC:prime256v1",
            "92",
            "ECDSA-SHA256",
            Some("openssl"),
            "-sha256",
        ),
    ] {
        user(&[
            "--keypairgen",
            "--key-type",
            key_type,
            "--id",
            id,
            "--label",
            &format!("px{id}"),
        ])
        .ok();
        let sig = h.file(&format!("{id}.sig"));
        let mut args = vec![
            "--sign",
            "--id",
            id,
            "-m",
            mech,
            "-i",
            s(&data),
            "-o",
            s(&sig),
        ];
        if let Some(f) = sigfmt {
            args.extend_from_slice(&["--signature-format", f]);
        }
        user(&args).ok();
        // The public key read directly from the module, not through the proxy.
        let pubkey = h.public_pem(id);
        let r = openssl(&[
            "dgst",
            md,
            "-verify",
            s(&pubkey),
            "-signature",
            s(&sig),
            s(&data),
        ])
        .ok();
        assert!(r.stdout.contains("Verified OK"), "{key_type}: {}", r.all());
    }
    let r = user(&["--list-objects"]).ok();
    assert!(
        r.stdout.contains("px91") && r.stdout.contains("px92"),
        "{}",
        r.stdout
    );
}

/// Removes a file when dropped.
struct Remove(std::path::PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
