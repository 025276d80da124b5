#!/usr/bin/env bash
# Benchmark (not a test): pull a ~120 MB Debian minbase image from a local registry with
# apex and, in the same run, with `skopeo copy` into an OCI dir; then apex's unpack time.
# Prints medians and ratios. Usage: scripts/bench-pull.sh [runs]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
bin=target/release
[[ -x $bin/apex && -x $bin/apex-fixtures ]] || cargo build --release --quiet -p apex-cli -p apex-e2e
cache=${APEX_BENCH_CACHE:-/var/cache/apex-bench}
work=$(mktemp -d)
reg_pid=
cleanup() { [[ -n $reg_pid ]] && kill "$reg_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

if [[ ! -f $cache/minbase/.complete ]]; then
  # The mirror apt already uses on this machine.
  mirror=$(awk '/^URIs:/{print $2; exit} /^deb /{print $2; exit}' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null | head -1)
  echo "==> debootstrap --variant=minbase bookworm (once, cached in $cache)" >&2
  rm -rf "$cache/minbase"; mkdir -p "$cache"
  debootstrap --variant=minbase bookworm "$cache/minbase" "$mirror" >/dev/null
  touch "$cache/minbase/.complete"
fi
[[ -d $cache/layout ]] || "$bin/apex-fixtures" from-dir "$cache/minbase" "$cache/layout" bench >/dev/null

coproc REG { exec "$bin/apex-fixtures" registry; }
reg_pid=$REG_PID
read -r host <&"${REG[0]}"
skopeo copy --quiet --insecure-policy --dest-tls-verify=false "oci:$cache/layout:bench" "docker://$host/bench:latest"
size=$(du -sb "$cache/layout/blobs" | cut -f1)

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
apex_t=() skopeo_t=() unpack_t=()
for i in $(seq "$runs"); do
  rm -rf "$work/home" "$work/oci"
  t0=$(now); APEX_HOME=$work/home "$bin/apex" image pull -q --no-unpack "$host/bench:latest" >/dev/null; t1=$(now)
  apex_t+=("$(echo "$t1 - $t0" | bc)")
  t0=$(now); skopeo copy --quiet --insecure-policy --src-tls-verify=false "docker://$host/bench:latest" "oci:$work/oci:bench"; t1=$(now)
  skopeo_t+=("$(echo "$t1 - $t0" | bc)")
  rm -rf "$work/home"
  out=$(APEX_HOME=$work/home "$bin/apex" image pull "$host/bench:latest")
  unpack_t+=("$(echo "$out" | sed -n 's/.*rootfs unpacked in \([0-9.]*\)s + packed in \([0-9.]*\)s.*/\1 + \2/p' | bc)")
done
a=$(printf '%s\n' "${apex_t[@]}" | median)
s=$(printf '%s\n' "${skopeo_t[@]}" | median)
u=$(printf '%s\n' "${unpack_t[@]}" | median)
printf 'image: %s MB compressed (debootstrap minbase bookworm, 1 gzip layer), %s runs\n' "$(echo "$size/1000000" | bc)" "$runs"
printf 'apex pull (fetch+verify):   %6.2f s  (%s MB/s)\n' "$a" "$(echo "scale=1; $size/1000000/$a" | bc)"
printf 'skopeo copy to OCI dir:     %6.2f s\n' "$s"
printf 'ratio apex/skopeo:          %6.2f\n' "$(echo "scale=3; $a/$s" | bc)"
printf 'apex rootfs unpack + erofs: %6.2f s\n' "$u"
