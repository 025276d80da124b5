#!/usr/bin/env bash
# Benchmark (not a test) of the Docker API front door, in one run:
#   `docker run --rm IMAGE true` through docker.sock against `apex run --rm IMAGE true`
#   (same daemon, same VM path: the difference is the translation), runs interleaved;
#   then `docker ps` and `apex ls` with 20 running containers.
# Usage: scripts/bench-docker.sh [runs] [containers]   (defaults 9 and 20)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-9}
count=${2:-20}
source scripts/lib/bench.sh
bench_start busybox busybox
export DOCKER_HOST=unix://$APEX_HOME/run/docker.sock
export DOCKER_CONFIG=$work/docker-config
mkdir -p "$DOCKER_CONFIG"
bench_cleanup_hook() { "$bin/apex" rm -f $("$bin/apex" ls -aq) >/dev/null 2>&1 || true; }

now() { date +%s.%N; }
# Warm caches and the daemon for both front doors.
"$bin/apex" run --rm "$image" true
docker run --rm "$image" true

apex_t=() docker_t=()
for _ in $(seq "$runs"); do
  t0=$(now); "$bin/apex" run --rm "$image" true; t1=$(now)
  docker run --rm "$image" true; t2=$(now)
  apex_t+=("$(echo "$t1 - $t0" | bc)")
  docker_t+=("$(echo "$t2 - $t1" | bc)")
done
a=$(printf '%s\n' "${apex_t[@]}" | median)
d=$(printf '%s\n' "${docker_t[@]}" | median)
printf '%s runs each, interleaved, medians\n' "$runs"
printf 'apex run --rm %s true:    %6.3f s\n' "$image" "$a"
printf 'docker run --rm %s true:  %6.3f s  (ratio %.3f, overhead %+.1f%%; target <= +5%%)\n' \
  "$image" "$d" "$(echo "scale=4; $d/$a" | bc)" "$(echo "scale=4; ($d/$a-1)*100" | bc)"

echo "starting $count containers..." >&2
for i in $(seq "$count"); do docker run -d --name "ps$i" "$image" sleep 3600 >/dev/null; done
running=$(docker ps -q | wc -l)
hyperfine -N --style none --warmup 3 --runs 30 --export-json "$work/ps.json" \
  "docker ps" "$bin/apex ls" >/dev/null
ms() { jq -r --arg c "$1" '.results[] | select(.command == $c) | .median * 1000' "$work/ps.json"; }
printf 'docker ps with %s running containers: %6.1f ms median (target < 50 ms)\n' "$running" "$(ms "docker ps")"
printf 'apex ls with the same:                 %6.1f ms median (ratio docker/apex %.2f)\n' \
  "$(ms "$bin/apex ls")" "$(echo "scale=4; $(ms "docker ps")/$(ms "$bin/apex ls")" | bc)"
