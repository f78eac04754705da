//! The recorder through the real door: `ferrohsm trace` running pkcs11-tool and this test
//! binary's own children against the built module, the trace file read back as JSON lines.
//! What a record says is checked field by field; what it must never hold (PINs, key bytes,
//! data) is searched for in the whole file, raw and as hex.

// The children print what the parent checks.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::print_stdout
)]

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use ferrohsm_e2e::*;
use serde_json::Value;

/// PINs that cannot turn up in a record by chance (a time or a duration is digits only).
const SO: &str = "trace-SO-pin-Kq";
const USER: &str = "trace-user-pin-Zv";

/// Set in the children this file runs under the recorder.
const CHILD: &str = "TRACE_CHILD";

/// A home with one token whose PINs are [`SO`] and [`USER`].
fn home() -> Home {
    Home::with_token_pins("traced", SO, USER)
}

/// pkcs11-tool's arguments to act on slot 0 logged in with [`USER`], then `args`.
fn as_user<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--slot", "0", "--login", "--pin", USER];
    all.extend_from_slice(args);
    all
}

/// `ferrohsm trace --out OUT -- pkcs11-tool --module <ours> ARGS`, in `h`.
fn traced_tool(h: &Home, out: &Path, args: &[&str]) -> Run {
    let mut c = h.timed(cli());
    c.args(["trace", "--out", s(out), "--", "pkcs11-tool", "--module"])
        .arg(module())
        .args(args);
    run(&mut c)
}

/// `ferrohsm trace --out OUT` around `inner` (its program, arguments and environment).
fn traced_command(h: &Home, out: &Path, inner: &Command) -> Command {
    let mut c = h.timed(cli());
    c.args(["trace", "--out", s(out), "--"])
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

/// The module initialized in this (child) process, and the first initialized token's slot.
fn initialized() -> (Pkcs11, Slot) {
    let p = Pkcs11::new(module()).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = p.get_slots_with_initialized_token().unwrap()[0];
    (p, slot)
}

/// Every line of the trace, each of which must be one JSON object of format version 1.
fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"));
            assert_eq!(v["v"], 1, "{l}");
            assert!(v["pid"].is_u64(), "{l}");
            v
        })
        .collect()
}

fn calls<'a>(all: &'a [Value], function: &str) -> Vec<&'a Value> {
    all.iter()
        .filter(|r| r["kind"] == "call" && r["fn"] == function)
        .collect()
}

/// Each process's records begin with its start record and, when it finalized, end with an end
/// record counting its calls; sequence numbers are unique within it.
fn check_processes(all: &[Value], program: &str) -> usize {
    let mut by_pid: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
    for r in all {
        by_pid
            .entry(r["pid"].as_u64().unwrap())
            .or_default()
            .push(r);
    }
    for (pid, rs) in &by_pid {
        assert_eq!(rs[0]["kind"], "start", "pid {pid}: {:?}", rs[0]);
        assert_eq!(rs[0]["program"], program, "{:?}", rs[0]);
        assert!(rs[0]["time"].as_str().unwrap().ends_with('Z'));
        assert!(rs[0]["module"].as_str().unwrap().starts_with("ferrohsm "));
        let n = rs.iter().filter(|r| r["kind"] == "call").count();
        let end = rs.last().unwrap();
        assert_eq!(end["kind"], "end", "pid {pid}: {end:?}");
        assert_eq!(end["calls"], n, "pid {pid}");
        let seqs: BTreeSet<u64> = rs.iter().filter_map(|r| r["seq"].as_u64()).collect();
        assert_eq!(seqs.len(), n, "pid {pid}: sequence numbers repeat");
        for r in rs.iter().filter(|r| r["kind"] == "call") {
            assert!(r["thread"].is_u64() && r["us"].is_u64(), "{r}");
            assert!(r["rv"].as_str().unwrap().starts_with("CKR_"), "{r}");
            assert!(r["fn"].as_str().unwrap().starts_with("C_"), "{r}");
        }
    }
    by_pid.len()
}

/// Whether `needle` occurs in `file` raw, or as hex in either case.
fn contains_anywhere(file: &[u8], needle: &[u8]) -> bool {
    let hex = hex(needle);
    let windows = |n: &[u8]| file.windows(n.len()).any(|w| w == n);
    windows(needle) || windows(hex.as_bytes()) || windows(hex.to_uppercase().as_bytes())
}

fn assert_no_pins(file: &Path) {
    let bytes = std::fs::read(file).unwrap();
    for pin in [SO, USER, "wrong-pin-Jx"] {
        assert!(
            !contains_anywhere(&bytes, pin.as_bytes()),
            "{pin} in the trace"
        );
    }
}

#[test]
fn pkcs11_tool_keypairgen_and_sign_are_recorded_with_mechanisms_and_key_sizes() {
    let h = home();
    let out = h.file("trace.jsonl");
    let generated = traced_tool(
        &h,
        &out,
        &as_user(&[
            "--keypairgen",
            "--key-type",
            "rsa:2048",
            "--id",
            "01",
            "--label",
            "traced-rsa",
        ]),
    )
    .ok();
    assert!(
        generated.stderr.contains("records written"),
        "{}",
        generated.stderr
    );
    assert!(
        generated
            .stderr
            .contains(&format!("ferrohsm check --trace {}", s(&out))),
        "{}",
        generated.stderr
    );
    let input = h.file("in.txt");
    std::fs::write(&input, b"sign me, recorder").unwrap();
    let sig = h.file("sig.bin");
    traced_tool(
        &h,
        &out,
        &as_user(&[
            "--sign",
            "--mechanism",
            "SHA256-RSA-PKCS-PSS",
            "--id",
            "01",
            "-i",
            s(&input),
            "-o",
            s(&sig),
        ]),
    )
    .ok();
    // A refused login: the application's own exit code comes back through `ferrohsm trace`.
    let plain = h.tool(&["--slot", "0", "--login", "--pin", "wrong-pin-Jx", "-O"]);
    let refused = traced_tool(
        &h,
        &out,
        &["--slot", "0", "--login", "--pin", "wrong-pin-Jx", "-O"],
    );
    assert_ne!(plain.status, 0);
    assert_eq!(refused.status, plain.status, "{}", refused.all());

    let all = records(&out);
    assert_eq!(check_processes(&all, "pkcs11-tool"), 3);
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_no_pins(&out);

    let logins = calls(&all, "C_Login");
    assert_eq!(logins.len(), 3, "{logins:?}");
    for l in &logins {
        assert_eq!(l["user"], "CKU_USER");
        assert_eq!(l["pin_form"], "plain");
        assert!(l.get("pin").is_none());
    }
    assert_eq!(logins[0]["rv"], "CKR_OK");
    assert_eq!(logins[2]["rv"], "CKR_PIN_INCORRECT");
    // The session a login uses is one C_OpenSession returned.
    let opened: BTreeSet<u64> = calls(&all, "C_OpenSession")
        .iter()
        .filter_map(|r| r["session"].as_u64())
        .collect();
    assert!(opened.contains(&logins[0]["session"].as_u64().unwrap()));

    let pairs = calls(&all, "C_GenerateKeyPair");
    assert_eq!(pairs.len(), 1);
    let pair = pairs[0];
    assert_eq!(pair["rv"], "CKR_OK");
    assert_eq!(
        pair["mechanism"],
        serde_json::json!({"type": "CKM_RSA_PKCS_KEY_PAIR_GEN", "param": "none"})
    );
    let public = pair["public_template"].as_array().unwrap();
    assert!(public.contains(&serde_json::json!({"type": "CKA_MODULUS_BITS", "value": 2048})));
    assert!(public.contains(&serde_json::json!({"type": "CKA_CLASS", "value": "CKO_PUBLIC_KEY"})));
    let private = pair["private_template"].as_array().unwrap();
    assert!(private.contains(&serde_json::json!({"type": "CKA_LABEL", "value": "traced-rsa"})));
    assert!(private.contains(&serde_json::json!({"type": "CKA_ID", "value": "hex:01"})));
    assert!(private.contains(&serde_json::json!({"type": "CKA_TOKEN", "value": true})));
    assert_eq!(pair["new_objects"].as_array().unwrap().len(), 2);

    let inits = calls(&all, "C_SignInit");
    assert_eq!(inits.len(), 1);
    let init = inits[0];
    assert_eq!(init["rv"], "CKR_OK");
    assert_eq!(
        init["mechanism"],
        serde_json::json!({
            "type": "CKM_SHA256_RSA_PKCS_PSS",
            "param": "CK_RSA_PKCS_PSS_PARAMS{hash=CKM_SHA256,mgf=CKG_MGF1_SHA256,slen=32}"
        })
    );
    assert_eq!(init["key"]["class"], "CKO_PRIVATE_KEY");
    assert_eq!(init["key"]["key_type"], "CKK_RSA");
    assert_eq!(init["key"]["bits"], 2048);
    // The key is the one the search found, in the same session.
    let finds = calls(&all, "C_FindObjectsInit");
    assert!(
        finds.iter().any(|f| f["template"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"type": "CKA_ID", "value": "hex:01"}))),
        "{finds:?}"
    );
    assert!(init["key"]["handle"].is_u64());

    let signs = calls(&all, "C_Sign");
    let done: Vec<_> = signs.iter().filter(|r| r["rv"] == "CKR_OK").collect();
    assert!(!done.is_empty(), "{signs:?}");
    let last = done.last().unwrap();
    assert_eq!(last["in_len"], 17);
    assert_eq!(last["out_len"], 256);
    assert_eq!(last["session"], init["session"]);
    assert_eq!(std::fs::metadata(&sig).unwrap().len(), 256);
}

#[test]
#[ignore = "a child of no_pin_key_byte_or_data_reaches_the_trace"]
fn key_material_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let (p, slot) = initialized();
    let s = p.open_rw_session(slot).unwrap();
    s.login(UserType::User, Some(&AuthPin::from(USER.to_owned())))
        .unwrap();
    // A generated key the application may read, and read through the recorded module.
    let generated = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(true),
                Attribute::Label(b"traced-aes".to_vec()),
                Attribute::ValueLen(32.into()),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
                Attribute::Encrypt(true),
            ],
        )
        .unwrap();
    let value = read_value(&s, generated);
    assert_eq!(value.len(), 32);
    // A key whose bytes the application gives, and data it encrypts under it.
    let given = s.generate_random_vec(32).unwrap();
    let imported = s
        .create_object(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Token(false),
            Attribute::Value(given.clone()),
            Attribute::Encrypt(true),
        ])
        .unwrap();
    let data = s.generate_random_vec(48).unwrap();
    let iv = [0x3c; 16];
    s.encrypt(&Mechanism::AesCbcPad(iv), imported, &data)
        .unwrap();
    println!("GIVEN {}", hex(&given));
    println!("DATA {}", hex(&data));
    println!("KEY-MATERIAL-CHILD-DONE");
    p.finalize().unwrap();
}

fn read_value(s: &Session, key: cryptoki::object::ObjectHandle) -> Vec<u8> {
    match s
        .get_attributes(key, &[AttributeType::Value])
        .unwrap()
        .pop()
    {
        Some(Attribute::Value(v)) => v,
        other => panic!("no CKA_VALUE: {other:?}"),
    }
}

#[test]
fn no_pin_key_byte_or_data_reaches_the_trace() {
    let h = home();
    let out = h.file("trace.jsonl");
    let child = child_test("key_material_child", &h, CHILD);
    let r = run(&mut traced_command(&h, &out, &child)).ok();
    assert!(r.stdout.contains("KEY-MATERIAL-CHILD-DONE"), "{}", r.all());
    // The harness may print "test key_material_child ... " before the child's first line.
    let printed = |tag: &str| {
        let line = r
            .stdout
            .lines()
            .find_map(|l| l.split_once(tag).map(|(_, rest)| rest))
            .unwrap_or_else(|| panic!("no {tag} in {}", r.stdout));
        unhex(line.trim())
    };
    let (given, data) = (printed("GIVEN "), printed("DATA "));
    // The generated key's bytes, read independently (not recorded) by pkcs11-tool.
    let read = h.file("aes.bin");
    h.tool(&as_user(&[
        "--read-object",
        "--type",
        "secrkey",
        "--label",
        "traced-aes",
        "--output-file",
        s(&read),
    ]))
    .ok();
    let generated = std::fs::read(&read).unwrap();
    assert_eq!(generated.len(), 32);

    let bytes = std::fs::read(&out).unwrap();
    for (what, secret) in [
        ("generated key", &generated),
        ("given key", &given),
        ("data", &data),
    ] {
        assert!(
            !contains_anywhere(&bytes, secret),
            "the {what} is in the trace"
        );
    }
    assert!(
        !contains_anywhere(&bytes, &[0x3c; 16]),
        "the IV is in the trace"
    );
    assert_no_pins(&out);

    // What the trace does say about them: lengths, and that they are secret.
    let all = records(&out);
    check_processes(
        &all,
        s(&std::env::current_exe().unwrap())
            .rsplit('/')
            .next()
            .unwrap(),
    );
    let reads = calls(&all, "C_GetAttributeValue");
    assert!(
        reads
            .iter()
            .any(|r| r["template"] == serde_json::json!([{"type": "CKA_VALUE", "len": 32}])),
        "{reads:?}"
    );
    let create = calls(&all, "C_CreateObject");
    assert!(
        create[0]["template"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"type": "CKA_VALUE", "len": 32, "secret": true})),
        "{create:?}"
    );
    let made = calls(&all, "C_GenerateKey");
    assert_eq!(made[0]["mechanism"]["type"], "CKM_AES_KEY_GEN");
    assert!(
        made[0]["template"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"type": "CKA_VALUE_LEN", "value": 32}))
    );
    let enc = calls(&all, "C_EncryptInit");
    assert_eq!(
        enc[0]["mechanism"],
        serde_json::json!({"type": "CKM_AES_CBC_PAD", "param": "bytes{len=16}"})
    );
    assert_eq!(enc[0]["key"]["key_type"], "CKK_AES");
    assert_eq!(enc[0]["key"]["bits"], 256);
    assert_eq!(enc[0]["key"]["class"], "CKO_SECRET_KEY");
    let encrypt: Vec<_> = calls(&all, "C_Encrypt")
        .into_iter()
        .filter(|r| r["rv"] == "CKR_OK" && r.get("query").is_none())
        .collect();
    assert_eq!(encrypt[0]["in_len"], 48);
    assert_eq!(encrypt[0]["out_len"], 64);
}

#[test]
#[ignore = "a child of threads_and_processes_append_whole_lines"]
fn busy_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let (p, slot) = initialized();
    // Long lines: a label of 200 characters in every search template.
    let label = "L".repeat(200);
    std::thread::scope(|scope| {
        for _ in 0..6 {
            let p = p.clone();
            let label = label.clone();
            scope.spawn(move || {
                let s = p.open_ro_session(slot).unwrap();
                for _ in 0..150 {
                    s.find_objects(&[Attribute::Label(label.clone().into_bytes())])
                        .unwrap();
                    s.digest(&Mechanism::Sha256, &[7u8; 100]).unwrap();
                }
            });
        }
    });
    println!("BUSY-CHILD-DONE");
    p.finalize().unwrap();
}

#[test]
fn threads_and_processes_append_whole_lines() {
    let h = home();
    let out = h.file("trace.jsonl");
    // Three processes of six threads each, at once, into one file.
    let children: Vec<_> = (0..3)
        .map(|_| {
            let child = child_test("busy_child", &h, CHILD);
            let mut c = traced_command(&h, &out, &child);
            c.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success());
        assert!(String::from_utf8_lossy(&o.stdout).contains("BUSY-CHILD-DONE"));
    }
    let all = records(&out);
    let program = std::env::current_exe().unwrap();
    let program = program.file_name().unwrap().to_str().unwrap();
    assert_eq!(check_processes(&all, program), 3);
    // Each find: C_FindObjectsInit, C_FindObjects, C_FindObjectsFinal; each digest: one call.
    let per_process = 6 * 150;
    assert_eq!(calls(&all, "C_FindObjectsInit").len(), 3 * per_process);
    // cryptoki asks for the length first: one query and one digest each.
    let digests: Vec<_> = calls(&all, "C_Digest")
        .into_iter()
        .filter(|r| r.get("query").is_none())
        .collect();
    assert_eq!(digests.len(), 3 * per_process);
    assert!(
        digests
            .iter()
            .all(|r| r["in_len"] == 100 && r["out_len"] == 32)
    );
    let threads: BTreeSet<(u64, u64)> = digests
        .iter()
        .map(|r| (r["pid"].as_u64().unwrap(), r["thread"].as_u64().unwrap()))
        .collect();
    assert_eq!(threads.len(), 3 * 6);
}

#[test]
fn a_slot_is_recorded_by_configuration() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let slot_trace = dir.path().join("slot.jsonl");
    let module_trace = dir.path().join("module.jsonl");
    let conf = dir.path().join("ferrohsm.toml");
    std::fs::write(
        &conf,
        format!(
            "[[slot]]\nkind = \"sim\"\nlabel = \"recorded slot\"\nstore = {:?}\ntrace = {slot_trace:?}\n\
             [[slot]]\nkind = \"sim\"\nlabel = \"quiet slot\"\nstore = {:?}\n",
            dir.path().join("a"),
            dir.path().join("b"),
        ),
    )
    .unwrap();
    // Configuration alone: only the first slot's calls, in its own file.
    let mut c = timed("pkcs11-tool");
    c.env("FERROHSM_CONF", &conf)
        .env_remove("FERROHSM_LOG")
        .env_remove("FERROHSM_TRACE")
        .arg("--module")
        .arg(module())
        .arg("-L");
    let listed = run(&mut c).ok();
    assert!(
        listed.stdout.contains("recorded slot") && listed.stdout.contains("quiet slot"),
        "{}",
        listed.stdout
    );
    let slot = records(&slot_trace);
    assert_eq!(slot[0]["kind"], "start");
    assert_eq!(slot[0]["scope"], "slot");
    assert_eq!(slot[0]["slot_config"], 1);
    assert_eq!(slot.last().unwrap()["kind"], "end");
    assert_eq!(calls(&slot, "C_GetTokenInfo").len(), 1, "{slot:?}");
    assert!(!module_trace.exists());

    // `ferrohsm trace --conf`: the same configuration reaches the application, and the
    // module-wide file has both slots' calls, with the application's slot ids.
    let h = Home::new();
    let mut c = h.timed(cli());
    c.args(["trace", "--out", s(&module_trace), "--conf", s(&conf), "--"])
        .arg("pkcs11-tool")
        .arg("--module")
        .arg(module())
        .arg("-L");
    let r = run(&mut c).ok();
    assert!(r.stdout.contains("recorded slot"), "{}", r.all());
    let whole = records(&module_trace);
    assert_eq!(whole[0]["scope"], "module");
    let infos = calls(&whole, "C_GetTokenInfo");
    let slots: BTreeSet<u64> = infos.iter().map(|r| r["slot"].as_u64().unwrap()).collect();
    assert_eq!(slots, BTreeSet::from([0, 1]), "{infos:?}");
    assert_eq!(calls(&records(&slot_trace), "C_GetTokenInfo").len(), 2);
}

#[test]
fn exit_codes_pass_through_and_recording_never_stops_the_application() {
    let h = home();
    let out = h.file("trace.jsonl");
    let mut c = h.timed(cli());
    c.args(["trace", "--out", s(&out), "--", "sh", "-c", "exit 7"]);
    let r = run(&mut c);
    assert_eq!(r.status, 7);
    assert!(r.stderr.contains("no record was written"), "{}", r.stderr);
    let mut c = h.timed(cli());
    c.args(["trace", "--out", s(&out), "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(run(&mut c).status, 128 + 15);
    let mut c = h.timed(cli());
    c.args(["trace", "--out", s(&out), "--", "/nonexistent/program"]);
    assert_eq!(run(&mut c).status, 127);

    // A trace file the module cannot open: the application runs as without it.
    let mut c = h.timed("pkcs11-tool");
    c.env("FERROHSM_TRACE", "/nonexistent/dir/trace.jsonl")
        .arg("--module")
        .arg(module())
        .args(["--slot", "0", "--login", "--pin", USER, "-O"]);
    run(&mut c).ok();

    // ferrohsm trace refuses a file it would not write (a symbolic link) before running.
    let link = h.file("link.jsonl");
    std::os::unix::fs::symlink(h.file("elsewhere"), &link).unwrap();
    let marker = h.file("ran");
    let mut c = h.timed(cli());
    c.args(["trace", "--out", s(&link), "--", "touch", s(&marker)]);
    let r = run(&mut c);
    assert_ne!(r.status, 0);
    assert!(r.stderr.contains("symbolic link"), "{}", r.stderr);
    assert!(!marker.exists());
}
