#!/usr/bin/env bash
# Builds a guest image from Debian packages only: mmdebstrap (minbase) ->
# ext4 made with `mkfs.ext4 -d` -> qcow2, plus the kernel and initrd for
# direct kernel boot, into $HOSTD_STATE_DIR/images/<image>/ with a manifest.
# Skipped when the recipe (this file) is unchanged.
# Usage: build-image.sh [debian-12|debian-12-cloudinit]   (default debian-12)
#  * debian-12 (the default image): no cloud-init; hostd-boot applies the
#    seed's plain hostd/ files at every boot (about 15 s less per TCG boot),
#    with the QEMU guest agent for live changes (the warm pool's claims).
#    Also builds `tiny` (images/tiny/): the same kernel with a busybox
#    initramfs that brings up the network by DHCP, serves HTTP on 80 and
#    answers an SSH banner on 22 within seconds. It is for tests that need
#    real, persistent libvirt guests but not a real OS (the crash matrix);
#    not for users.
#  * debian-12-cloudinit: Debian's cloud-init instead of hostd-boot and no
#    guest agent, configured from the same seed's NoCloud user-data (the
#    path an operator's own cloud image takes); key changes apply at the next
#    boot. Offered in the catalogue once built.
# Each build goes to its own directory <recipe hash>/ and disk.qcow2, vmlinuz,
# initrd.img and manifest.json are symlinks to the newest one. Older versions
# are kept: existing hostings' disks are overlays of the base they were created
# from, and hostd pins each hosting to that version's kernel and initrd.
# Remove an old version only when no disk under $HOSTD_STATE_DIR/pools uses it
# (`qemu-img info <overlay>` shows the backing file).
set -euo pipefail
STATE_DIR="${HOSTD_STATE_DIR:-/var/lib/hostd}"
IMAGE="${1:-debian-12}"
case "$IMAGE" in
  debian-12|debian-12-cloudinit) ;;
  *) echo "build-image: unknown image '$IMAGE' (debian-12 or debian-12-cloudinit)" >&2; exit 2 ;;
esac
OUT="$STATE_DIR/images/$IMAGE"
MIRROR="${HOSTD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
recipe_hash=$(sha256sum "$0" | cut -c1-16)

VER="$OUT/$recipe_hash"
if [ -f "$VER/manifest.json" ] && [ "$(readlink "$OUT/disk.qcow2" 2>/dev/null)" = "$recipe_hash/disk.qcow2" ] \
   && { [ "$IMAGE" != debian-12 ] || [ "$(readlink "$STATE_DIR/images/tiny/initrd.img" 2>/dev/null)" = "$recipe_hash/initrd.img" ]; }; then
  echo "build-image: $IMAGE is up to date ($VER)"
  exit 0
fi
command -v mmdebstrap >/dev/null || { echo "build-image: mmdebstrap missing (run scripts/install-deps.sh)" >&2; exit 1; }

work=$(mktemp -d /var/tmp/hostd-image.XXXXXX)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)

# hostd-boot: applies the seed disk's hostd/ files at every boot, before the
# network, sshd and nginx start (replacing cloud-init, whose two Python
# stages cost about 23 s of a TCG boot's critical path). The welcome page is
# written once per instance, so a tenant's own index.html survives reboots.
mkdir -p "$work/overlay"
cat > "$work/overlay/hostd-boot" <<'SH'
#!/bin/sh
# Managed by hostd's image: apply the seed disk (label cidata), every boot.
# With --live (run by hostd through the QEMU guest agent, e.g. when a
# warm-pool guest is claimed) on a running system: the seed disk was
# rewritten in place, so its cached blocks are dropped first, and sshd
# reloads its configuration afterwards.
set -eu
live=0; [ "${1:-}" = "--live" ] && live=1
seed=/run/hostd-seed
dev=$(blkid -L cidata) || { echo "hostd-boot: no seed disk (label cidata)"; exit 0; }
mkdir -p "$seed"
[ "$live" = 1 ] && blockdev --flushbufs "$dev"
mount -o ro "$dev" "$seed"
trap 'umount "$seed"' EXIT
if [ -d "$seed/hostd" ]; then
  name=$(tr -cd 'a-z0-9-' < "$seed/hostd/hostname")
  if [ -n "$name" ]; then
    echo "$name" > /etc/hostname
    hostname "$name"
    printf '127.0.0.1 localhost\n127.0.1.1 %s\n::1 localhost ip6-localhost ip6-loopback\n' "$name" > /etc/hosts
  fi
  install -m 0644 "$seed/hostd/sshd.conf" /etc/ssh/sshd_config.d/50-hostd.conf
  install -m 0644 "$seed/hostd/nftables.conf" /etc/nftables.conf
  nft -f /etc/nftables.conf
  iid=$(sed -n 's/^instance-id:[[:space:]]*//p' "$seed/meta-data" | tr -cd 'a-zA-Z0-9-')
  if [ -n "$iid" ] && [ ! -e "/var/lib/hostd-boot/$iid" ]; then
    install -m 0644 -o ubuntu -g ubuntu "$seed/hostd/index.html" /var/www/html/index.html
    rm -f /var/www/html/index.nginx-debian.html
    chown -R ubuntu:ubuntu /var/www/html
    mkdir -p /var/lib/hostd-boot
    touch "/var/lib/hostd-boot/$iid"
  fi
fi
mkdir -p /etc/ssh/hostd_authorized_keys
install -m 0644 "$seed/authorized_keys" /etc/ssh/hostd_authorized_keys/ubuntu
for t in ed25519 ecdsa; do
  [ -e "/etc/ssh/ssh_host_${t}_key" ] || ssh-keygen -q -t "$t" -N '' -f "/etc/ssh/ssh_host_${t}_key"
done
if [ "$live" = 1 ]; then
  systemctl reload ssh
  echo "hostd-boot: seed applied live (instance ${iid:-?})"
fi
SH
cat > "$work/overlay/hostd-boot.service" <<'UNIT'
[Unit]
Description=Apply hostd's seed: hostname, SSH keys and config, firewall, welcome page
DefaultDependencies=no
Wants=dev-disk-by\x2dlabel-cidata.device network-pre.target
After=local-fs.target dev-disk-by\x2dlabel-cidata.device
Before=network-pre.target sysinit.target ssh.service nginx.service shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/local/sbin/hostd-boot
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=sysinit.target
UNIT
if [ "$IMAGE" = debian-12 ]; then
  AGENT=true
  VARIANT=(
    --include=qemu-guest-agent
    --customize-hook="copy-in $work/overlay/hostd-boot /usr/local/sbin"
    --customize-hook="copy-in $work/overlay/hostd-boot.service /etc/systemd/system"
    --customize-hook='chmod 0755 "$1/usr/local/sbin/hostd-boot"'
    --customize-hook='chroot "$1" useradd -m -s /bin/bash -c "hostd user" ubuntu'
    --customize-hook='echo "ubuntu ALL=(ALL) NOPASSWD:ALL" > "$1/etc/sudoers.d/90-hostd"; chmod 0440 "$1/etc/sudoers.d/90-hostd"'
    --customize-hook='chroot "$1" systemctl enable hostd-boot'
  )
else
  # cloud-init from the seed's NoCloud files alone (network by networkd's
  # DHCP), first-stage modules only: write_files, the user, SSH and the
  # every-boot bootcmd (firewall, keys re-read from the seed).
  AGENT=false
  VARIANT=(
    --include=cloud-init
    --customize-hook='printf "datasource_list: [NoCloud, None]\nnetwork: {config: disabled}\n" > "$1/etc/cloud/cloud.cfg.d/90-hostd.cfg"'
    --customize-hook='printf "cloud_init_modules: [seed_random, write_files, set_hostname, update_hostname, update_etc_hosts, users_groups, ssh, bootcmd]\ncloud_config_modules: []\ncloud_final_modules: [final_message]\n" > "$1/etc/cloud/cloud.cfg.d/91-hostd-modules.cfg"'
  )
fi
echo "build-image: bootstrapping Debian 12 ($IMAGE) into $work/rootfs (about a minute)"

mmdebstrap --variant=minbase --mode=root --aptopt='APT::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --include=linux-image-cloud-amd64,initramfs-tools,systemd-sysv,udev,dbus,kmod,mount,iproute2,procps,openssh-server,sudo,nginx-light,nftables \
  --customize-hook='mkdir -p "$1/etc/systemd/network"' \
  --customize-hook='printf "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n" > "$1/etc/systemd/network/10-dhcp.network"' \
  "${VARIANT[@]}" \
  --customize-hook='chroot "$1" systemctl enable systemd-networkd nginx ssh' \
  --customize-hook='chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer systemd-networkd-wait-online.service' \
  --customize-hook=': > "$1/etc/machine-id"; rm -f "$1"/etc/ssh/ssh_host_*' \
  --customize-hook='printf "virtio_pci\nvirtio_blk\nvirtio_net\nvirtio_console\next4\nisofs\n" >> "$1/etc/initramfs-tools/modules"; sed -i "s/^MODULES=.*/MODULES=list/" "$1/etc/initramfs-tools/initramfs.conf"; chroot "$1" update-initramfs -u -k all' \
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
{"name": "$IMAGE", "recipe": "$recipe_hash", "built_at": "$(date -u +%FT%TZ)", "build_seconds": $secs,
 "guest_agent": $AGENT,
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
echo "build-image: $IMAGE done in ${secs}s: $(du -h "$VER/disk.qcow2" | cut -f1) disk, $VER"
[ "$IMAGE" = debian-12 ] || exit 0

# ---- tiny: kernel + busybox initramfs -------------------------------------
TINY="$STATE_DIR/images/tiny/$recipe_hash"
kver=$(basename "$kernel" | sed 's/^vmlinuz-//')
t="$work/tiny"
mkdir -p "$t"/{bin,dev,proc,sys,tmp,www,lib/modules/"$kver"/kernel}
cp /bin/busybox "$t/bin/busybox"
( cd "$work/rootfs/lib/modules/$kver" && find kernel -name 'virtio*.ko*' -o -name '*failover.ko*' | cpio -pdm --quiet "$t/lib/modules/$kver" )
cp "$work/rootfs/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$t/lib/modules/$kver/" 2>/dev/null || true
depmod -b "$t" "$kver"
cat > "$t/bin/dhcp.sh" <<'SH'
#!/bin/sh
[ "$1" = bound ] || exit 0
ip addr add "$ip/${mask:-24}" dev "$interface"
[ -n "$router" ] && ip route add default via "${router%% *}"
exit 0
SH
cat > "$t/init" <<'SH'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
modprobe virtio_pci; modprobe virtio_net
ip link set lo up
IF=$(ls /sys/class/net | grep -v '^lo$' | head -1)
ip link set "$IF" up
udhcpc -i "$IF" -s /bin/dhcp.sh -q -t 20 -T 1
echo '<h1>hostd tiny test guest</h1>' > /www/index.html
httpd -p 80 -h /www
( while true; do printf 'SSH-2.0-hostd_tiny_guest\r\n' | nc -l -p 22 >/dev/null 2>&1; done ) &
echo "tiny guest ready on $IF"
while true; do sleep 3600; done
SH
chmod +x "$t/init" "$t/bin/dhcp.sh"
rm -rf "$TINY.new"; mkdir -p "$TINY.new"
( cd "$t" && find . | cpio -o -H newc --quiet | gzip -1 ) > "$TINY.new/initrd.img"
cp "$kernel" "$TINY.new/vmlinuz"
qemu-img create -q -f qcow2 "$TINY.new/disk.qcow2" 64M
rm -rf "$TINY"; mv "$TINY.new" "$TINY"
for f in disk.qcow2 vmlinuz initrd.img; do
  ln -sfn "$recipe_hash/$f" "$STATE_DIR/images/tiny/.$f.new" && mv -T "$STATE_DIR/images/tiny/.$f.new" "$STATE_DIR/images/tiny/$f"
done
echo "build-image: tiny test image in $TINY"
