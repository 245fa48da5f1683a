#!/usr/bin/env bash
# Installs the Debian packages hostd needs (idempotent). Run as root on Debian 12.
# qemu and libvirt come from bookworm-backports: bookworm's own qemu is blocked by
# a backports qemu-utils on the machines we target, and libvirt >= 9 is needed for
# passt port forwarding.
set -euo pipefail

[ "$(id -u)" = 0 ] || { echo "install-deps.sh: must run as root" >&2; exit 1; }
grep -q 'bookworm' /etc/os-release || echo "install-deps.sh: warning: not Debian 12 (bookworm); continuing" >&2

export DEBIAN_FRONTEND=noninteractive

BASE_PKGS=(postgresql postgresql-client nginx-light curl jq openssh-client pkg-config
           genisoimage passt ca-certificates python3 python3-venv e2fsprogs procps netcat-openbsd
           busybox-static cpio kmod nftables redis-server redis-tools)
BPO_PKGS=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-driver-storage-disk libvirt-clients libvirt-dev
          qemu-system-x86 qemu-utils mmdebstrap)

missing=()
for p in "${BASE_PKGS[@]}" "${BPO_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi
echo "install-deps: installing: ${missing[*]}"

if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat > /etc/apt/sources.list.d/bookworm-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
apt-get update -qq
# No systemd here: keep maintainer scripts from trying to start services.
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt-get install -y -qq --no-install-recommends "${BASE_PKGS[@]}"
apt-get install -y -qq --no-install-recommends -t bookworm-backports "${BPO_PKGS[@]}"
echo "install-deps: done"
