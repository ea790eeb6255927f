//! Release link layout for the `palisade` binary: the functions a sidecar runs, listed in
//! `layout/symbol-order.txt` by `layout/generate.sh`, are packed together, so a sidecar maps
//! about 4 MiB of code instead of most of the multi-call binary's 15 MiB (the kernel maps 64
//! KiB around every page touched, so scattered functions cost whole windows); and relative
//! relocations are packed (DT_RELR), so the loader reads a few KiB of them, not 580 KiB.

use std::path::Path;
use std::process::Command;

/// The header line naming what the list was made from.
const MADE_FOR: &str = "# made for: ";

fn main() {
    let order = Path::new("layout/symbol-order.txt");
    println!("cargo::rerun-if-changed={}", order.display());
    println!("cargo::rerun-if-changed=Cargo.lock");
    println!("cargo::rerun-if-env-changed=PALISADE_NO_LAYOUT");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    // rust-lld is the default linker of this target from Rust 1.90; the options below are
    // lld's (GNU ld has no symbol ordering file), so a build that turns rust-lld off links
    // without the layout.
    let lld_target = std::env::var("TARGET").is_ok_and(|t| t == "x86_64-unknown-linux-gnu");
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let lld_off =
        flags.contains("linker-features=-lld") || flags.contains("link-self-contained=-linker");
    if !release || !lld_target || lld_off || std::env::var_os("PALISADE_NO_LAYOUT").is_some() {
        return;
    }
    let Ok(order) = order.canonicalize() else {
        return;
    };
    warn_if_stale(&order);
    println!(
        "cargo::rustc-link-arg-bin=palisade=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    // Names from an older build (renamed functions, updated dependencies) are skipped.
    println!("cargo::rustc-link-arg-bin=palisade=-Wl,--no-warn-symbol-ordering");
    // Relative relocations packed as DT_RELR (glibc 2.36 and later): the loader reads a few
    // KiB instead of the 580 KiB `.rela.dyn` of a position-independent binary this size,
    // pages every sidecar would otherwise keep resident. The binary stays position
    // independent (ASLR); an older glibc refuses it at start, naming GLIBC_ABI_DT_RELR.
    println!("cargo::rustc-link-arg-bin=palisade=-Wl,-z,pack-relative-relocs");
}

/// Symbol names change with dependency versions and the compiler: a list made for another
/// Cargo.lock or rustc still links, but packs less, so the build says so.
fn warn_if_stale(order: &Path) {
    let Ok(list) = std::fs::read_to_string(order) else {
        return;
    };
    let made_for = list
        .lines()
        .take_while(|l| l.starts_with('#'))
        .find_map(|l| l.strip_prefix(MADE_FOR));
    let now = this_build();
    if made_for != Some(now.as_str()) {
        println!(
            "cargo::warning={} was made for {}; this build is {now}: rerun layout/generate.sh \
             for the smallest sidecar resident set",
            order.display(),
            made_for.unwrap_or("an unnamed build"),
        );
    }
}

/// `rustc -V` and the FNV-1a hash of Cargo.lock, as `layout/generate.sh` writes them.
fn this_build() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let version = Command::new(rustc)
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let lock = std::fs::read("Cargo.lock").unwrap_or_default();
    let hash = lock.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{version}; Cargo.lock fnv1a {hash:016x}")
}
