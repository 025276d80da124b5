#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the end-to-end suite (real
# registry, real QEMU VMs). Installs missing dependencies first (idempotent, fast
# when everything is present), so it also works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/install-deps.sh
echo "==> cargo fmt --check" >&2
cargo fmt --all -- --check
echo "==> cargo clippy" >&2
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "==> build" >&2
cargo build --workspace --bins --quiet
bash scripts/build-guest.sh debug
echo "==> tests" >&2
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace --no-fail-fast --failure-output final
else
  cargo test --workspace --no-fail-fast
fi
