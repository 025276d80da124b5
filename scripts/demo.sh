#!/usr/bin/env bash
# The main job on the built-in default image: start a throwaway local registry, publish
# the built-in busybox image to it (built offline from Debian's busybox-static), pull and
# list it with apex, then run a container from it in its own VM. Everything lives in a
# temp dir removed at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release}
work=$(mktemp -d)
reg_pid=
cleanup() {
  [[ -n $reg_pid ]] && kill "$reg_pid" 2>/dev/null && wait "$reg_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

export APEX_HOME=$work/home
coproc REG { exec "$bin/apex-fixtures" registry; }
reg_pid=$REG_PID
read -r host <&"${REG[0]}"
echo "==> local registry at $host" >&2
"$bin/apex-fixtures" busybox "$work/layout" latest >/dev/null
skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:latest" "docker://$host/library/busybox:latest"
"$bin/apex" image pull "$host/library/busybox:latest"
"$bin/apex" image ls
echo "==> apex run --rm busybox (one VM for this container)" >&2
"$bin/apex" run --rm "$host/library/busybox:latest" sh -c 'echo "hello from $(hostname), kernel $(uname -r)"'
