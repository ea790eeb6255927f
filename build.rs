//! Release link layout for the `palisade` binary: the functions a sidecar runs, listed in
//! `layout/symbol-order.txt` by `layout/generate.sh`, are packed together, so a sidecar maps
//! about 4 MiB of code instead of most of the multi-call binary's 10 MiB (the kernel maps 64
//! KiB around every page touched, so scattered functions cost whole windows).

use std::path::Path;

fn main() {
    let order = Path::new("layout/symbol-order.txt");
    println!("cargo::rerun-if-changed={}", order.display());
    println!("cargo::rerun-if-env-changed=PALISADE_NO_LAYOUT");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    // rust-lld is the default linker of this target from Rust 1.90; the options below are
    // lld's (GNU ld has no symbol ordering file).
    let lld_target = std::env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu");
    if !release || !lld_target || std::env::var_os("PALISADE_NO_LAYOUT").is_some() {
        return;
    }
    let Ok(order) = order.canonicalize() else {
        return;
    };
    println!(
        "cargo::rustc-link-arg-bin=palisade=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    // Names from an older build (renamed functions, updated dependencies) are skipped.
    println!("cargo::rustc-link-arg-bin=palisade=-Wl,--no-warn-symbol-ordering");
}
