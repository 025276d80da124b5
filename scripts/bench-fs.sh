#!/usr/bin/env bash
# Filesystem benchmark (not a test), all in one run. The same static program (fsbench,
# tests/src/fsbench.rs) measures, in one process each:
#   - sequential write (then fsync) and read of MIB MiB, guest page cache dropped before
#     the read (the host's stays warm for every case, native included);
#   - create + stat + delete of FILES small files;
# on four filesystems: the host itself (native, the bound), a container's own root (its
# ext4 writable layer on virtio-blk), a bind mount and a named volume (virtio-fs).
# Usage: scripts/bench-fs.sh [mib] [files] [rounds]   (default 256 5000 3; medians)
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-256}
files=${2:-5000}
rounds=${3:-3}
source scripts/lib/bench.sh
bench_cleanup_hook() { "$bin/apex" rm -f fsb >/dev/null 2>&1; }
bench_start fsbench fsbench
"$bin/apex-fixtures" fsbench-bin "$work/fsbench"
mkdir -p "$work/native" "$work/bind"
"$bin/apex" run -d --name fsb --memory 1g -v "$work/bind:/bind" -v fsbvol:/vol \
  "$image" sh -c 'mkdir -p /bench && exec sleep 36000' >/dev/null
until "$bin/apex" exec fsb test -d /bench 2>/dev/null; do sleep 0.2; done

# One measurement: prints key=value lines.
measure() { # where kind arg
  case $1 in
    native) "$work/fsbench" "$2" "$work/native" "$3" ;;
    root) "$bin/apex" exec fsb fsbench "$2" /bench "$3" ;;
    bind) "$bin/apex" exec fsb fsbench "$2" /bind "$3" ;;
    volume) "$bin/apex" exec fsb fsbench "$2" /vol "$3" ;;
  esac
}
declare -A r
for where in native root bind volume; do
  for key in seq_write_mibs seq_read_mibs small_ops create_ops stat_ops delete_ops; do
    : >"$work/$where.$key"
  done
  for _ in $(seq "$rounds"); do
    { measure "$where" seq "$mib"; measure "$where" small "$files"; } | while IFS== read -r k v; do
      echo "$v" >>"$work/$where.$k"
    done
  done
  for key in seq_write_mibs seq_read_mibs small_ops create_ops stat_ops delete_ops; do
    r[$where.$key]=$(median <"$work/$where.$key")
  done
done

accel=$(jq -r .accel /var/cache/apex/accel.json 2>/dev/null || echo "?")
cache=${APEX_VIRTIOFS_CACHE:-auto}
printf 'accelerator: %s; virtiofsd --cache=%s; %s MiB, %s files; medians of %s rounds\n' \
  "$accel" "$cache" "$mib" "$files" "$rounds"
printf '%-22s %12s %12s %12s %10s %10s %10s\n' filesystem 'write MiB/s' 'read MiB/s' 'small op/s' create/s stat/s delete/s
for where in native root bind volume; do
  printf '%-22s %12s %12s %12s %10s %10s %10s\n' "$where" "${r[$where.seq_write_mibs]}" \
    "${r[$where.seq_read_mibs]}" "${r[$where.small_ops]}" "${r[$where.create_ops]}" \
    "${r[$where.stat_ops]}" "${r[$where.delete_ops]}"
done
ratio() { echo "scale=3; $1 / $2" | bc; }
echo "ratios (small-file ops: target bind/root >= 0.25):"
for where in root bind volume; do
  printf '  %-7s vs native: write %s, read %s, small %s\n' "$where" \
    "$(ratio "${r[$where.seq_write_mibs]}" "${r[native.seq_write_mibs]}")" \
    "$(ratio "${r[$where.seq_read_mibs]}" "${r[native.seq_read_mibs]}")" \
    "$(ratio "${r[$where.small_ops]}" "${r[native.small_ops]}")"
done
for where in bind volume; do
  printf '  %-7s vs root:   write %s, read %s, small %s\n' "$where" \
    "$(ratio "${r[$where.seq_write_mibs]}" "${r[root.seq_write_mibs]}")" \
    "$(ratio "${r[$where.seq_read_mibs]}" "${r[root.seq_read_mibs]}")" \
    "$(ratio "${r[$where.small_ops]}" "${r[root.small_ops]}")"
done
