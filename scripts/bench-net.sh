#!/usr/bin/env bash
# Benchmark (not a test): published-port throughput and connection latency versus a direct
# connection to the guest's address on the bridge, as ratios.
#   One container VM runs netecho (a TCP sink on 9000 and a TCP echo server on 7777, see
#   tests/src/images.rs), both published on 127.0.0.1. The host client (`apex-fixtures
#   net-bench`) sends MIB MiB into the sink (throughput: until the sink confirms the byte
#   count) and times ROUNDS fresh connect + 1-byte round trips to the echo server (median),
#   once through the published ports (host forwarder -> vsock -> guest) and once straight
#   to the guest IP over the bridge and tap.
# Usage: scripts/bench-net.sh [mib] [rounds]   (default 64 200)
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-64}
rounds=${2:-200}
# Remove this home's bridge, taps and firewall elements when apexd stops.
export APEX_NETWORK_CLEANUP=1
source scripts/lib/bench.sh
bench_cleanup_hook() { "$bin/apex" rm -f netbench >/dev/null 2>&1; }
bench_start net net

# Two free loopback ports (nothing listening on them right now).
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 40000))
    [[ -z $(ss -Htan "sport = :$p") && $p != "${1:-}" ]] && { echo "$p"; return; }
  done
}
p_sink=$(free_port)
p_echo=$(free_port "$p_sink")

"$bin/apex" run -d --name netbench \
  -p "127.0.0.1:$p_sink:9000" -p "127.0.0.1:$p_echo:7777" \
  "$image" sh -c 'netecho sink 9000 & exec netecho tcp 7777' >/dev/null
guest=$("$bin/apex" network inspect default |
  jq -r '(if type == "array" then .[0] else . end).containers[] | select(.name == "netbench") | .address')
[[ -n $guest ]] || { echo "no address for netbench on the default network" >&2; exit 1; }

bench() { "$bin/apex-fixtures" net-bench --echo "$1" --sink "$2" --mib "$3" --rounds "$4"; }
published=(127.0.0.1:$p_echo 127.0.0.1:$p_sink)
direct=($guest:7777 $guest:9000)
# Wait for both paths to answer, then warm them up.
for _ in $(seq 120); do
  if bench "${published[@]}" 1 1 >/dev/null 2>&1 && bench "${direct[@]}" 1 1 >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 1
done
[[ -n ${ready:-} ]] || { echo "netecho did not answer on both paths" >&2; bench "${published[@]}" 1 1; bench "${direct[@]}" 1 1; exit 1; }
bench "${published[@]}" 8 20 >/dev/null
bench "${direct[@]}" 8 20 >/dev/null

declare -A d p
while read -r k v; do d[$k]=$v; done < <(bench "${direct[@]}" "$mib" "$rounds")
while read -r k v; do p[$k]=$v; done < <(bench "${published[@]}" "$mib" "$rounds")

accel=$(jq -r .accel /var/cache/apex/accel.json 2>/dev/null || echo "?")
printf 'accelerator: %s; %s MiB into a sink, median of %s connect + 1-byte round trips\n' "$accel" "$mib" "$rounds"
printf '%-34s %12s %14s\n' "" "throughput" "connect+RTT"
printf '%-34s %7.1f MiB/s %11.3f ms\n' "direct (guest $guest, bridge):" "${d[throughput_mib_s]}" "${d[connect_rtt_ms]}"
printf '%-34s %7.1f MiB/s %11.3f ms\n' "published (127.0.0.1, vsock):" "${p[throughput_mib_s]}" "${p[connect_rtt_ms]}"
printf 'published/direct: throughput x%.2f, latency x%.2f\n' \
  "$(echo "scale=4; ${p[throughput_mib_s]}/${d[throughput_mib_s]}" | bc)" \
  "$(echo "scale=4; ${p[connect_rtt_ms]}/${d[connect_rtt_ms]}" | bc)"
