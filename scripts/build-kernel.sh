#!/usr/bin/env bash
# Builds Apex's guest kernel from Debian's linux-source-6.1 with kernel/apex-guest.defconfig
# (everything built in, no modules) into $APEX_ASSETS/kernel-apex: `vmlinux` (booted through
# PVH), `version`, `config` and `key` (source version + config + this script). Skips the
# build when the installed kernel has the same key. Needs linux-source-6.1, flex, bison,
# bc and libelf-dev (scripts/install-deps.sh installs them and calls this).
set -euo pipefail
cd "$(dirname "$0")/.."

APEX_ASSETS=${APEX_ASSETS:-/usr/local/lib/apex}
out=$APEX_ASSETS/kernel-apex
config=kernel/apex-guest.defconfig
# Options the guest cannot do without; olddefconfig must not have dropped any of them.
REQUIRED=(
  PVH VIRTIO_MMIO VIRTIO_MMIO_CMDLINE_DEVICES VIRTIO_BLK VIRTIO_NET VIRTIO_CONSOLE
  VIRTIO_VSOCKETS VIRTIO_FS VIRTIO_BALLOON PAGE_REPORTING EROFS_FS EROFS_FS_ZIP OVERLAY_FS
  EXT4_FS TMPFS TMPFS_XATTR DEVTMPFS CGROUPS MEMCG CGROUP_PIDS CPUSETS NAMESPACES PID_NS
  UTS_NS IPC_NS NET_NS USER_NS UNIX INET IPV6 SECCOMP SECCOMP_FILTER SERIAL_8250_CONSOLE
  BLK_DEV_INITRD FUSE_FS UNIX98_PTYS RANDOM_TRUST_CPU
)

log() { printf '==> %s\n' "$*" >&2; }

tarball=$(ls /usr/src/linux-source-6.1.tar.* 2>/dev/null | head -1 || true)
[[ -n $tarball ]] || { log "linux-source-6.1 is not installed (apt-get install linux-source-6.1)"; exit 1; }
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
key=$( { echo "$src_version"; cat "$config" "$0"; } | sha256sum | cut -c1-16)
if [[ -f $out/vmlinux && -f $out/key && $(cat "$out/key") == "$key" ]]; then
  exit 0
fi

log "guest kernel: building Linux $src_version with $config (key $key; about 5 minutes on 2 cores)"
work=$(mktemp -d /var/tmp/apex-kernel.XXXXXX)
trap 'rm -rf "$work"' EXIT
tar -xf "$tarball" -C "$work"
tree=$(ls -d "$work"/linux-source-6.1*)
cp "$config" "$tree/.config"
make -C "$tree" -s olddefconfig
missing=()
for opt in "${REQUIRED[@]}"; do
  grep -qx "CONFIG_$opt=y" "$tree/.config" || missing+=("$opt")
done
if ((${#missing[@]})); then
  log "kernel config lacks: ${missing[*]}"
  exit 1
fi
make -C "$tree" -s -j"$(nproc)" vmlinux
release=$(make -C "$tree" -s kernelrelease)

rm -rf "$out.new"
mkdir -p "$out.new"
cp "$tree/vmlinux" "$out.new/vmlinux"
cp "$tree/.config" "$out.new/config"
echo "$release" >"$out.new/version"
echo "$key" >"$out.new/key"
rm -rf "$out"
mv "$out.new" "$out"
log "guest kernel $release installed in $out"
