#!/usr/bin/env bash
# Builds the default guest image `debian-12` from Debian packages only:
# mmdebstrap (minbase) -> ext4 made with `mkfs.ext4 -d` -> qcow2, plus the
# kernel and initrd for direct kernel boot. Output: $HOSTD_STATE_DIR/images/debian-12/
# with a manifest. Skipped when the recipe (this file) is unchanged.
# Each build goes to its own directory <recipe hash>/ and disk.qcow2, vmlinuz,
# initrd.img and manifest.json are symlinks to the newest one. Older versions
# are kept: existing hostings' disks are overlays of the base they were created
# from, and hostd pins each hosting to that version's kernel and initrd.
# Remove an old version only when no disk under $HOSTD_STATE_DIR/pools uses it
# (`qemu-img info <overlay>` shows the backing file).
set -euo pipefail
STATE_DIR="${HOSTD_STATE_DIR:-/var/lib/hostd}"
OUT="$STATE_DIR/images/debian-12"
MIRROR="${HOSTD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
recipe_hash=$(sha256sum "$0" | cut -c1-16)

VER="$OUT/$recipe_hash"
if [ -f "$VER/manifest.json" ] && [ "$(readlink "$OUT/disk.qcow2" 2>/dev/null)" = "$recipe_hash/disk.qcow2" ]; then
  echo "build-image: debian-12 is up to date ($VER)"
  exit 0
fi
command -v mmdebstrap >/dev/null || { echo "build-image: mmdebstrap missing (run scripts/install-deps.sh)" >&2; exit 1; }

work=$(mktemp -d /var/tmp/hostd-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
echo "build-image: bootstrapping Debian 12 into $work/rootfs (about a minute)"

mmdebstrap --variant=minbase --mode=root --aptopt='APT::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --include=linux-image-cloud-amd64,initramfs-tools,systemd-sysv,udev,dbus,kmod,mount,iproute2,procps,cloud-init,openssh-server,sudo,nginx-light,nftables \
  --customize-hook='mkdir -p "$1/etc/systemd/network"' \
  --customize-hook='printf "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n" > "$1/etc/systemd/network/10-dhcp.network"' \
  --customize-hook='chroot "$1" systemctl enable systemd-networkd nginx ssh' \
  --customize-hook='chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer systemd-networkd-wait-online.service' \
  --customize-hook='printf "datasource_list: [NoCloud, None]\nnetwork: {config: disabled}\n" > "$1/etc/cloud/cloud.cfg.d/90-hostd.cfg"' \
  --customize-hook='printf "cloud_init_modules: [seed_random, write_files, set_hostname, update_hostname, update_etc_hosts, users_groups, ssh, bootcmd]\ncloud_config_modules: []\ncloud_final_modules: [final_message]\n" > "$1/etc/cloud/cloud.cfg.d/91-hostd-modules.cfg"' \
  --customize-hook=': > "$1/etc/machine-id"; rm -f "$1"/etc/ssh/ssh_host_*' \
  --customize-hook='printf "virtio_pci\nvirtio_blk\nvirtio_net\next4\nisofs\n" >> "$1/etc/initramfs-tools/modules"; sed -i "s/^MODULES=.*/MODULES=list/" "$1/etc/initramfs-tools/initramfs.conf"; chroot "$1" update-initramfs -u -k all' \
  --customize-hook='echo "/dev/vda / ext4 defaults 0 1" > "$1/etc/fstab"' \
  bookworm "$work/rootfs" "$MIRROR"

kernel=$(ls "$work"/rootfs/boot/vmlinuz-* | sort | tail -1)
initrd=$(ls "$work"/rootfs/boot/initrd.img-* | sort | tail -1)
truncate -s 2G "$work/root.img"
mkfs.ext4 -q -L root -d "$work/rootfs" "$work/root.img"
mkdir -p "$OUT"
rm -rf "$VER.new"; mkdir -p "$VER.new"
qemu-img convert -q -f raw -O qcow2 "$work/root.img" "$VER.new/disk.qcow2"
cp "$kernel" "$VER.new/vmlinuz"; cp "$initrd" "$VER.new/initrd.img"
secs=$(( $(date +%s) - start ))
cat > "$VER.new/manifest.json" <<JSON
{"name": "debian-12", "recipe": "$recipe_hash", "built_at": "$(date -u +%FT%TZ)", "build_seconds": $secs,
 "disk_bytes": $(stat -c %s "$VER.new/disk.qcow2"), "kernel": "$(basename "$kernel")", "initrd_bytes": $(stat -c %s "$VER.new/initrd.img")}
JSON
rm -rf "$VER"; mv "$VER.new" "$VER"
for f in disk.qcow2 vmlinuz initrd.img manifest.json; do
  if [ -e "$OUT/$f" ] && [ ! -L "$OUT/$f" ]; then
    # A build from before versioned directories: keep it as its own version.
    mkdir -p "$OUT/unversioned"; mv "$OUT/$f" "$OUT/unversioned/$f"
  fi
  ln -sfn "$recipe_hash/$f" "$OUT/.$f.new" && mv -T "$OUT/.$f.new" "$OUT/$f"
done
echo "build-image: done in ${secs}s: $(du -h "$VER/disk.qcow2" | cut -f1) disk, $VER"
