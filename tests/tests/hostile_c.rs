//! The hostile-caller program in C (`tests/c/hostile.c`, compiled here against
//! `include/pkcs11.h`): NULL pointers, wrong and absurd lengths, bad handles, calls in the wrong
//! state and eight threads on one session, each with its exact return code — run plainly and
//! under valgrind's memcheck, which must report no error.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::process::Command;

use ferrohsm_e2e::*;

fn build() -> std::path::PathBuf {
    require("cc");
    let out = tempfile::Builder::new()
        .prefix("hostile-")
        .tempdir()
        .unwrap()
        .keep();
    let exe = out.join("hostile");
    let root = workspace();
    run(Command::new("cc")
        .args(["-Wall", "-Wextra", "-Werror", "-O1", "-I"])
        .arg(root.join("include"))
        .arg("-o")
        .arg(&exe)
        .arg(root.join("tests/c/hostile.c"))
        .args(["-ldl", "-lpthread"]))
    .ok();
    exe
}

#[test]
fn hostile_calls_get_exact_codes_and_never_crash() {
    let exe = build();
    let home = Home::with_token("hostile");
    let mut c = home.command(&exe);
    c.arg(module()).arg(USER_PIN);
    let r = run(&mut c);
    println!("{}", r.stdout);
    assert_eq!(r.status, 0, "{}", r.all());
    assert!(r.stdout.contains(" 0 mismatches"), "{}", r.all());
}

#[test]
fn hostile_calls_under_valgrind_memcheck() {
    require("valgrind");
    let exe = build();
    let home = Home::with_token("hostile-vg");
    let mut c = home.timed("valgrind");
    c.args(["-q", "--error-exitcode=99"])
        .arg(&exe)
        .arg(module())
        .arg(USER_PIN);
    let r = run(&mut c);
    assert_eq!(
        r.status,
        0,
        "memcheck found errors (exit 99) or a check failed:\n{}",
        r.all()
    );
    assert!(r.stdout.contains(" 0 mismatches"), "{}", r.all());
}
