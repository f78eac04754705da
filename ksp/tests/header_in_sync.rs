//! `include/ferrohsm_ksp.h` is what cbindgen makes of this crate today; a stale header fails
//! with the command that regenerates it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn header_in_sync_with_cbindgen() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).unwrap();
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/lib.rs"))
        .generate()
        .expect("cbindgen")
        .write(&mut generated);
    let path = crate_dir.join("../include/ferrohsm_ksp.h");
    if std::env::var_os("FERROHSM_REGENERATE_HEADER").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/ferrohsm_ksp.h is stale: regenerate it with\n  \
         FERROHSM_REGENERATE_HEADER=1 cargo nextest run --release -p ferrohsm-ksp header"
    );
}
