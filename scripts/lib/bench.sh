# Shared set-up of the VM benchmark scripts (sourced, not run).
#
# bench_start KIND NAME [CRATES...]: builds the release binaries and the guest, makes a
#   temp work dir with its own APEX_HOME, starts a loopback registry, writes the fixture
#   image `apex-fixtures KIND` and pushes and pulls it as $host/NAME:latest. Sets `bin`,
#   `work`, `host` and `image`. Cleanup (daemon, registry, work dir) runs at exit, after
#   the script's own `bench_cleanup_hook` if it defines one.
# median: the median of the numbers on stdin.

bench_cleanup() {
  if declare -F bench_cleanup_hook >/dev/null; then bench_cleanup_hook || true; fi
  "$bin/apex" system stop >/dev/null 2>&1 || true
  if [[ -n ${reg_pid:-} ]]; then kill "$reg_pid" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$work"
}

bench_start() {
  local kind=$1 name=$2
  cargo build --release --quiet -p apex-cli -p apexd -p apex-shim -p apex-e2e
  bash scripts/build-guest.sh release
  bin=$PWD/target/release
  work=$(mktemp -d)
  reg_pid=
  trap bench_cleanup EXIT
  export APEX_HOME=$work/home
  coproc REG { exec "$bin/apex-fixtures" registry; }
  reg_pid=$REG_PID
  read -r host <&"${REG[0]}"
  "$bin/apex-fixtures" "$kind" "$work/layout" latest >/dev/null
  skopeo copy --quiet --insecure-policy --dest-tls-verify=false \
    "oci:$work/layout:latest" "docker://$host/$name:latest"
  image=$host/$name:latest
  "$bin/apex" image pull -q "$image" >/dev/null
}

median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }
