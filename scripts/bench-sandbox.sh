#!/usr/bin/env bash
# Benchmark (not a test): what QEMU's seccomp sandbox (`-sandbox on,...`) adds to
# `apex run --rm busybox true`, in one run: blocks of runs with the sandbox and without
# (`APEX_QEMU_SANDBOX=off` in apexd's environment), interleaved so that both see the
# same machine load. Prints medians and the ratio.
# Usage: scripts/bench-sandbox.sh [rounds] [runs-per-block]   (default 4 3)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-4}
per=${2:-3}
source scripts/lib/bench.sh
bench_start busybox busybox
now() { date +%s.%N; }
on=() off=()
block() { # on|off
  "$bin/apex" system stop >/dev/null 2>&1 || true
  if [[ $1 == off ]]; then export APEX_QEMU_SANDBOX=off; else unset APEX_QEMU_SANDBOX; fi
  "$bin/apex" run --rm "$image" true # start apexd with this setting, warm up
  local t0 t1
  for _ in $(seq "$per"); do
    t0=$(now); "$bin/apex" run --rm "$image" true; t1=$(now)
    if [[ $1 == on ]]; then on+=("$(echo "$t1 - $t0" | bc)"); else off+=("$(echo "$t1 - $t0" | bc)"); fi
  done
}
for _ in $(seq "$rounds"); do block on; block off; done
unset APEX_QEMU_SANDBOX
a=$(printf '%s\n' "${on[@]}" | median)
b=$(printf '%s\n' "${off[@]}" | median)
printf '%s runs each, medians\n' "$((rounds * per))"
printf 'apex run --rm busybox true, QEMU sandbox on:  %6.3f s\n' "$a"
printf 'apex run --rm busybox true, QEMU sandbox off: %6.3f s\n' "$b"
printf 'ratio on/off: %s\n' "$(echo "scale=3; $a/$b" | bc)"
