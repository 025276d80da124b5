#!/usr/bin/env bash
# Boot stress (a script, not a test): ROUNDS rounds of WAY concurrent
# `apex run --rm IMAGE echo ok` through one apexd, each a VM boot. Any run that exits
# non-zero or prints anything but "ok" is a failure; its output and the container's boot
# log are printed. Usage: scripts/stress-boot.sh [rounds] [way]   (default 25 8: 200 boots)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-25}
way=${2:-8}
source scripts/lib/bench.sh
bench_start busybox busybox
# Starts apexd and warms the initramfs cache, as a user's first run would.
"$bin/apex" run --rm "$image" true

out=$work/out
mkdir -p "$out"
t0=$(date +%s.%N)
failures=0
for r in $(seq "$rounds"); do
  pids=()
  for i in $(seq "$way"); do
    ("$bin/apex" run --rm "$image" echo ok >"$out/$r.$i" 2>&1; echo $? >"$out/$r.$i.rc") &
    pids+=($!)
  done
  wait "${pids[@]}"
  for i in $(seq "$way"); do
    rc=$(cat "$out/$r.$i.rc")
    if [[ $rc != 0 || $(cat "$out/$r.$i") != ok ]]; then
      failures=$((failures + 1))
      printf -- '--- round %s run %s: exit %s ---\n' "$r" "$i" "$rc"
      cat "$out/$r.$i"
    fi
  done
done
t1=$(date +%s.%N)
total=$((rounds * way))
printf '%d boots (%d rounds of %d concurrent apex run --rm echo ok): %d failed, %.1f s in all\n' \
  "$total" "$rounds" "$way" "$failures" "$(echo "$t1 - $t0" | bc)"
((failures == 0))
