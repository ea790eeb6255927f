#!/usr/bin/env bash
# CI: every fuzz crate (STYLE.md habit 14) compiles on stable; none is run, which needs
# nightly and cargo-fuzz. Each is its own workspace; they share one target directory,
# kept apart from the main build's so that cache is not disturbed.
set -Eeuo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/tmp/palisade-ci-target}/fuzz"

for crate in certs proxy control-plane injector-webhook; do
    printf -- '--> %s/fuzz\n' "$crate"
    # Start from the workspace's pinned versions; cargo adds only the fuzz-only crates.
    cp Cargo.lock "$crate/fuzz/Cargo.lock"
    cargo check --manifest-path "$crate/fuzz/Cargo.toml" --bins
done
