#!/usr/bin/env bash
# Builds the guest's PID 1 (apex-init) as a static binary into target/guest/apex-init,
# plus apex-poweroff (the benchmark's lower-bound init), stripped.
# `cargo rustc` applies crt-static to the final binary only, so the dependencies are
# shared with the normal build (no second target dir, no musl toolchain needed).
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-debug}
flag=()
[[ $profile == release ]] && flag=(--release)
mkdir -p target/guest
for bin in apex-init apex-poweroff; do
  cargo rustc "${flag[@]}" --quiet -p apex-init --bin "$bin" -- -C target-feature=+crt-static
  # Stripped: the initramfs is loaded into guest RAM and unpacked into it, twice the
  # binary's size of the guest's memory (the debug build's line tables are 12 MB).
  strip -o "target/guest/$bin.tmp" "target/$profile/$bin"
  mv "target/guest/$bin.tmp" "target/guest/$bin"
done
