#!/usr/bin/env bash
# Benchmark (not a test): `apex build` against `buildah bud` (which runs without VMs) on
# the same multi-stage Dockerfile, in one run: a cold build (no cache, base image
# present), a fully cached rebuild, and the size of the result (compressed blobs). Every
# apex RUN step boots a VM for the command and one to read its changes.
# Usage: scripts/bench-build.sh [runs]   (default 3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
command -v buildah >/dev/null || { echo "buildah is missing (scripts/install-deps.sh)" >&2; exit 1; }
source scripts/lib/bench.sh
bench_cleanup_hook() {
  buildah rmi -f bench-build >/dev/null 2>&1 || true
  buildah rmi -f "$image" >/dev/null 2>&1 || true
}
bench_start busybox busybox

ctx=$work/ctx
mkdir -p "$ctx/files"
for i in $(seq 1 100); do head -c 10240 /dev/urandom >"$ctx/files/f$i"; done
cat >"$ctx/Dockerfile" <<EOF
FROM $image AS build
RUN mkdir -p /out && for i in \$(seq 1 200); do echo "line \$i" >> /out/log.txt; done && dd if=/dev/zero of=/out/blob bs=1M count=4 2>/dev/null
FROM $image
COPY files/ /srv/files/
COPY --from=build /out /out
RUN mkdir -p /data && echo built > /data/stamp
ENV MODE=bench
WORKDIR /srv
CMD ["cat", "/data/stamp"]
EOF
buildah pull -q --tls-verify=false "$image" >/dev/null
"$bin/apex" run --rm "$image" true # start apexd, warm the caches

now() { date +%s.%N; }
timed() { local t0 t1; t0=$(now); "$@" >/dev/null 2>&1; t1=$(now); echo "$t1 - $t0" | bc; }
ratio() { echo "scale=2; $1/$2" | bc; }
apex_cold=() apex_warm=() bud_cold=() bud_warm=()
for _ in $(seq "$runs"); do
  apex_cold+=("$(timed "$bin/apex" build --no-cache -q -t bench-build "$ctx")")
  apex_warm+=("$(timed "$bin/apex" build -q -t bench-build "$ctx")")
  bud_cold+=("$(timed buildah bud --no-cache --layers --tls-verify=false -q -t bench-build "$ctx")")
  bud_warm+=("$(timed buildah bud --layers --tls-verify=false -q -t bench-build "$ctx")")
done
ac=$(printf '%s\n' "${apex_cold[@]}" | median)
aw=$(printf '%s\n' "${apex_warm[@]}" | median)
bc_=$(printf '%s\n' "${bud_cold[@]}" | median)
bw=$(printf '%s\n' "${bud_warm[@]}" | median)
[[ $("$bin/apex" run --rm bench-build) == built ]] || { echo "the built image does not run" >&2; exit 1; }
apex_size=$("$bin/apex" image inspect bench-build | jq '.[0].Size')
buildah push -q --format oci bench-build "oci:$work/bud-oci:latest" >/dev/null 2>&1
bud_size=$(du -sb "$work/bud-oci/blobs" | cut -f1)
printf '%s runs, medians; Dockerfile: 2 stages, 2 RUN, 2 COPY (1 MB of files), ENV, WORKDIR, CMD\n' "$runs"
printf 'cold build:     apex %6.2f s   buildah %6.2f s   ratio %s (target <= 1.5)\n' \
  "$ac" "$bc_" "$(ratio "$ac" "$bc_")"
printf 'cached rebuild: apex %6.2f s   buildah %6.2f s   ratio %s (target: apex < 1 s)\n' \
  "$aw" "$bw" "$(ratio "$aw" "$bw")"
printf 'image size:     apex %s bytes   buildah %s bytes   ratio %s\n' \
  "$apex_size" "$bud_size" "$(ratio "$apex_size" "$bud_size")"
