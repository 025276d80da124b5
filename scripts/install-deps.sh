#!/usr/bin/env bash
# Installs everything Apex needs on Debian 12 (as root), idempotently:
# apt packages, Apex's own guest kernel (built from Debian's linux-source-6.1 by
# scripts/build-kernel.sh), Debian's cloud kernel as the documented fallback, vhost-user
# backends from crates.io.
# Re-running is cheap: every step checks first and skips what is already there.
set -euo pipefail

APEX_ASSETS=${APEX_ASSETS:-/usr/local/lib/apex}
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '==> %s\n' "$*" >&2; }

APT_PACKAGES=(
  qemu-system-x86 docker-registry e2fsprogs erofs-utils busybox-static skopeo apache2-utils
  libseccomp-dev libcap-ng-dev debootstrap cpio kmod jq pkg-config iproute2 nftables
  hyperfine zstd socat ca-certificates bc gcc libc6-dev binutils
  docker-compose python3-venv bsdutils buildah
  linux-source-6.1 flex bison libelf-dev make xz-utils
)
# Docker API clients for the tests, from PyPI, in their own venv.
APEX_PYTHON_PACKAGES=("docker>=7,<8" "testcontainers>=4,<5")

install_apt() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "apt: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# The fallback guest kernel (`apex system kernel set --debian`): Debian's cloud kernel,
# unpacked (not installed) into $APEX_ASSETS/kernel.
install_kernel() {
  if [[ -f $APEX_ASSETS/kernel/vmlinuz && -d $APEX_ASSETS/kernel/modules ]]; then return; fi
  log "guest kernel: fetching Debian's linux-image cloud package"
  local tmp pkg
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  if [[ -z $pkg ]]; then apt-get update -qq; pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/{print $2; exit}'); fi
  (cd "$tmp" && apt-get download -qq "$pkg")
  dpkg-deb -x "$tmp"/linux-image-*.deb "$tmp/root"
  local kver
  kver=$(ls "$tmp/root/lib/modules")
  depmod -b "$tmp/root" "$kver"
  rm -rf "$APEX_ASSETS/kernel.new"
  mkdir -p "$APEX_ASSETS/kernel.new"
  cp "$tmp/root/boot/vmlinuz-$kver" "$APEX_ASSETS/kernel.new/vmlinuz"
  mkdir -p "$APEX_ASSETS/kernel.new/modules/lib"
  mv "$tmp/root/lib/modules" "$APEX_ASSETS/kernel.new/modules/lib/modules"
  echo "$kver" >"$APEX_ASSETS/kernel.new/version"
  rm -rf "$APEX_ASSETS/kernel"
  mv "$APEX_ASSETS/kernel.new" "$APEX_ASSETS/kernel"
}

# vhost-user backends (rust-vmm), built from crates.io.
install_backends() {
  command -v cargo >/dev/null || { log "cargo not found: install Rust (rustup) first"; exit 1; }
  command -v vhost-device-vsock >/dev/null || { log "building vhost-device-vsock"; cargo install --quiet --locked vhost-device-vsock; }
  command -v virtiofsd >/dev/null || { log "building virtiofsd"; cargo install --quiet --locked virtiofsd; }
}

# The docker CLI: the one on the machine if any (28.x here), else Debian's (docker.io,
# whose daemon is left stopped and disabled: Apex serves the API itself).
install_docker_cli() {
  command -v docker >/dev/null && return
  log "apt: installing docker.io for its docker CLI"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
  if command -v systemctl >/dev/null; then
    systemctl disable --now docker.service docker.socket >/dev/null 2>&1 || true
  fi
}

# docker-py and testcontainers-python in $APEX_ASSETS/python (Debian's python3 is
# externally managed, so not into the system site-packages).
install_python_clients() {
  local venv=$APEX_ASSETS/python
  if [[ -x $venv/bin/python3 ]] && "$venv/bin/python3" -c 'import docker, testcontainers' 2>/dev/null; then
    return
  fi
  log "python: docker-py and testcontainers into $venv"
  /usr/bin/python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${APEX_PYTHON_PACKAGES[@]}"
}

install_apt
install_docker_cli
install_python_clients
install_kernel
# Apex's own kernel, the default (cached by source version and config: a no-op when current).
APEX_ASSETS=$APEX_ASSETS bash "$(dirname "$0")/build-kernel.sh"
install_backends
log "dependencies ready (assets in $APEX_ASSETS)"
