#!/usr/bin/env bash
# Benchmarks (not tests) for containers-as-VMs, all in one run:
#   `apex run --rm busybox true` wall time vs the bare lower bound (same QEMU, kernel and
#   devices, an init that powers off at once), boot-to-agent time, and host memory per
#   idle container VM. Usage: scripts/bench-run.sh [runs]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
cargo build --release --quiet -p apex-runtime --example vm-bench
source scripts/lib/bench.sh
bench_start busybox busybox
rootfs=$("$bin/apex" image inspect "$host/busybox:latest" | jq -r '.[0].RootfsImage')
# Warm caches (initramfs, accel probe) and start apexd, which then stays up as it would
# for a user: the timed runs go CLI -> apexd -> apex-shim -> VM.
"$bin/apex" run --rm "$host/busybox:latest" true

now() { date +%s.%N; }
times=()
for _ in $(seq "$runs"); do
  t0=$(now); "$bin/apex" run --rm "$host/busybox:latest" true; t1=$(now)
  times+=("$(echo "$t1 - $t0" | bc)")
done
run_t=$(printf '%s\n' "${times[@]}" | median)

declare -A m
while read -r k v; do m[$k]=$v; done < <("$bin/examples/vm-bench" --rootfs "$rootfs" --runs "$runs")
accel=$(jq -r .accel /var/cache/apex/accel.json 2>/dev/null || echo "?")
printf 'accelerator: %s; %s runs each, medians\n' "$accel" "$runs"
printf 'bare lower bound (qemu+kernel+poweroff init): %6.3f s\n' "${m[bare_boot_s]}"
printf 'apex run --rm busybox true:                   %6.3f s  (ratio %.2f, overhead %+.0f%%)\n' \
  "$run_t" "$(echo "scale=4; $run_t/${m[bare_boot_s]}" | bc)" "$(echo "scale=4; ($run_t/${m[bare_boot_s]}-1)*100" | bc)"
printf 'boot to agent ready (apex-init answers ping):  %6.3f s\n' "${m[boot_to_agent_s]}"
printf 'agent shutdown to qemu exit:                   %6.3f s\n' "${m[agent_shutdown_s]}"
printf 'idle memory per container VM (%s VMs): qemu %s MiB + vsock backend %s MiB RSS (guest uses %s MiB)\n' \
  "${m[idle_vms]}" "${m[qemu_rss_mib_per_vm]}" "${m[backend_rss_mib_per_vm]}" "${m[guest_used_mib]}"

# The managed path adds one helper process per container and the daemon itself.
rss_mib() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
cid=$("$bin/apex" run -d "$host/busybox:latest" sleep 600)
shim=$("$bin/apex" inspect "$cid" | jq -r '.[0].shim_pid')
printf 'per-container helper (apex-shim) RSS: %s MiB; apexd RSS: %s MiB\n' \
  "$(rss_mib "$shim")" "$(rss_mib "$(cat "$APEX_HOME/run/apexd.pid")")"
"$bin/apex" rm -f "$cid" >/dev/null
