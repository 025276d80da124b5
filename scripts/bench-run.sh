#!/usr/bin/env bash
# Benchmarks (not tests) for containers-as-VMs, all in one run, reported as ratios:
# - the bare lower bound (same QEMU and devices, an init that powers off at once) with
#   Apex's kernel against the same with Debian's kernel;
# - `apex run --rm busybox true` against Apex's lower bound;
# - host PSS per idle busybox container (QEMU, vsock backend, helper), from smaps_rollup;
# - a container that fills 200 MiB of guest memory and frees it: how far and how fast
#   QEMU's PSS comes back (virtio-balloon free page reporting).
# Usage: scripts/bench-run.sh [runs]   (default 7)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-7}
cargo build --release --quiet -p apex-runtime --example vm-bench
source scripts/lib/bench.sh
bench_start busybox busybox
rootfs=$("$bin/apex" image inspect "$image" | jq -r '.[0].RootfsImage')
# Warm caches (initramfs, accel probe) and start apexd, which then stays up as it would
# for a user: the timed runs go CLI -> apexd -> apex-shim -> VM.
"$bin/apex" run --rm "$image" true

now() { date +%s.%N; }
ratio() { echo "scale=4; $1/$2" | bc; }
pss_kib() { awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup"; }
child_named() { # PARENT COMM-PREFIX (children are listed per thread)
  local p
  for p in $(cat /proc/"$1"/task/*/children); do
    [[ $(cat "/proc/$p/comm") == "$2"* ]] && { echo "$p"; return; }
  done
}

# Half of the `apex run`s before the lower bounds and half after, so that all of them
# see about the same machine load (it varies by tens of percent on shared machines).
times=()
apex_runs() {
  local t0 t1
  for _ in $(seq "$1"); do
    t0=$(now); "$bin/apex" run --rm "$image" true; t1=$(now)
    times+=("$(echo "$t1 - $t0" | bc)")
  done
}
apex_runs $(((runs + 1) / 2))
declare -A m
while read -r k v; do m[$k]=$v; done < <("$bin/examples/vm-bench" --rootfs "$rootfs" --runs "$runs")
apex_runs $((runs / 2))
run_t=$(printf '%s\n' "${times[@]}" | median)
accel=$(jq -r .accel /var/cache/apex/accel.json 2>/dev/null || echo "?")
own=${m[bare_boot_s]}
deb=${m[bare_boot_debian_s]}
printf 'accelerator: %s; kernel %s; %s runs each, medians\n' "$accel" \
  "$("$bin/apex" system kernel show | awk '/^kernel:/ {print $2}')" "$runs"
printf 'bare lower bound, Debian kernel:            %6.3f s\n' "$deb"
printf 'bare lower bound, Apex kernel:              %6.3f s  (%.2fx Debian'"'"'s; target <= 0.30)\n' \
  "$own" "$(ratio "$own" "$deb")"
printf 'apex run --rm busybox true:                 %6.3f s  (%.2fx the Apex lower bound; target <= 1.50)\n' \
  "$run_t" "$(ratio "$run_t" "$own")"
printf 'boot to agent ready (vm-bench, no apexd):   %6.3f s\n' "${m[boot_to_agent_s]}"
printf 'agent shutdown to qemu exit:                %6.3f s\n' "${m[agent_shutdown_s]}"
printf 'idle VM without helper (%s VMs): qemu %s MiB + vsock backend %s MiB PSS (guest uses %s MiB)\n' \
  "${m[idle_vms]}" "${m[qemu_pss_mib_per_vm]}" "${m[backend_pss_mib_per_vm]}" "${m[guest_used_mib]}"

# Managed idle containers: QEMU, its vsock backend and the helper, once the guest settled.
# Alone, every shared page (QEMU's binary, the kernel file) counts in full; with four
# running, PSS splits them four ways, which is the cost of one more container.
container_pss_kib() { # SHIM
  local q b
  q=$(child_named "$1" qemu-system) b=$(child_named "$1" vhost-device-vs)
  echo $(($(pss_kib "$q") + $(pss_kib "$b") + $(pss_kib "$1")))
}
mib() { echo "scale=1; $1/1024" | bc; }
ids=() shims=()
for i in 1 2 3 4; do
  ids+=("$("$bin/apex" run -d "$image" sleep 600)")
  shims+=("$("$bin/apex" inspect "${ids[-1]}" | jq -r '.[0].shim_pid')")
  if ((i == 1)); then
    sleep 5
    shim=${shims[0]}
    q=$(child_named "$shim" qemu-system) b=$(child_named "$shim" vhost-device-vs)
    printf 'idle busybox container alone, PSS: %s MiB (qemu %s + vsock backend %s + helper %s); apexd %s MiB\n' \
      "$(mib "$(container_pss_kib "$shim")")" "$(mib "$(pss_kib "$q")")" "$(mib "$(pss_kib "$b")")" \
      "$(mib "$(pss_kib "$shim")")" "$(mib "$(pss_kib "$(cat "$APEX_HOME/run/apexd.pid")")")"
  fi
done
sleep 5
total=0
for s in "${shims[@]}"; do total=$((total + $(container_pss_kib "$s"))); done
printf 'idle busybox containers, 4 running: %s MiB PSS each (target <= 64)\n' "$(mib $((total / 4)))"
"$bin/apex" rm -f "${ids[@]}" >/dev/null

# Fill 200 MiB of guest memory (a tmpfs), free it, and watch QEMU's PSS for 10 s.
cid=$("$bin/apex" run -d --memory 512m --tmpfs /big:size=300m "$image" sleep 600)
qemu=$(child_named "$("$bin/apex" inspect "$cid" | jq -r '.[0].shim_pid')" qemu-system)
"$bin/apex" exec "$cid" true
sleep 3
idle=$(pss_kib "$qemu")
"$bin/apex" exec "$cid" dd if=/dev/zero of=/big/fill bs=1M count=200 2>/dev/null
filled=$(pss_kib "$qemu")
"$bin/apex" exec "$cid" busybox rm /big/fill
t0=$(now)
back=""
while (($(echo "$(now) - $t0 < 10" | bc))); do
  cur=$(pss_kib "$qemu")
  if ((cur * 10 <= idle * 11)); then back=$(echo "$(now) - $t0" | bc); break; fi
  sleep 0.1
done
if [[ -n $back ]]; then
  returned="within 10% of idle after $(printf '%.1f' "$back") s"
else
  returned="NOT within 10% of idle after 10 s"
fi
printf 'balloon: qemu PSS idle %d MiB, 200 MiB filled %d MiB, after the free %d MiB (%s)\n' \
  $((idle / 1024)) $((filled / 1024)) $(($(pss_kib "$qemu") / 1024)) "$returned"
"$bin/apex" rm -f "$cid" >/dev/null
