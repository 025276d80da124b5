#!/usr/bin/env bash
# One command on a fresh Debian 12 machine (as root): install everything Apex needs,
# build it, and run the main job on the built-in default image.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

bash scripts/install-deps.sh
echo "==> building apex (release)" >&2
cargo build --release --workspace --bins --quiet
bash scripts/build-guest.sh release
bash scripts/demo.sh target/release
