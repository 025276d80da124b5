#!/usr/bin/env bash
# Builds the guest's PID 1 (apex-init) as a static binary into target/guest/apex-init.
# `cargo rustc` applies crt-static to the final binary only, so the dependencies are
# shared with the normal build (no second target dir, no musl toolchain needed).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-debug}
[[ -d crates/apex-init ]] || exit 0
flag=()
[[ $profile == release ]] && flag=(--release)
cargo rustc "${flag[@]}" --quiet -p apex-init --bin apex-init -- -C target-feature=+crt-static
mkdir -p target/guest
cp "target/$profile/apex-init" target/guest/apex-init.tmp
mv target/guest/apex-init.tmp target/guest/apex-init
