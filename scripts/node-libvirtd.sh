#!/usr/bin/env bash
# A second hypervisor node on this machine, for tests of many nodes: its own
# libvirtd and virtlogd in a private mount namespace, with their own
# /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and
# /var/log/libvirt under /var/lib/hostd-nodes/NAME, their own host_uuid (so
# libvirt treats the two as different hosts) and no cgroup controllers of
# their own. Reached as qemu+unix:///system?socket=… (printed by `uri`).
# Guests still forward their ports to 127.0.0.1 only.
#
#   scripts/node-libvirtd.sh start NAME   start it (idempotent)
#   scripts/node-libvirtd.sh uri NAME     print its libvirt URI
#   scripts/node-libvirtd.sh kill NAME    a dead node: kill its daemons and its guests' qemu/passt
#   scripts/node-libvirtd.sh stop NAME    kill, then remove its directory
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

cmd="${1:-}"
name="${2:-}"
[[ "$name" =~ ^[a-z0-9-]{1,32}$ ]] || die "usage: $0 start|uri|kill|stop NAME (a-z, 0-9, -)"
root="/var/lib/hostd-nodes/$name"
sock="$root/run/libvirt-sock"
uri="qemu+unix:///system?socket=$sock"

daemon_pids() {
  local f
  for f in "$root/libvirtd.pid" "$root/virtlogd.pid"; do
    [ -f "$f" ] && cat "$f"
  done
  return 0
}

# The qemu and passt processes of this node's guests (re-parented when its
# libvirtd dies): libvirt writes their pid files under this node's
# /run/libvirt.
guest_pids() {
  local f
  find "$root/run" -name '*.pid' 2>/dev/null | while read -r f; do
    case "$f" in "$root/libvirtd.pid"|"$root/virtlogd.pid") continue ;; esac
    cat "$f" 2>/dev/null && echo
  done | grep -E '^[0-9]+$' || true
}

start() {
  if [ -S "$sock" ] && virsh -c "$uri" version >/dev/null 2>&1; then
    return 0
  fi
  mkdir -p "$root"/{etc,run,lib,cache,log}
  if [ ! -f "$root/etc/libvirtd.conf" ]; then
    cp -a /etc/libvirt/. "$root/etc/"
    rm -rf "$root/etc/qemu/networks" "$root/etc/qemu/"*.xml
    printf '\nhost_uuid = "%s"\n' "$(cat /proc/sys/kernel/random/uuid)" >> "$root/etc/libvirtd.conf"
    # cgroup v1 controllers are shared with the first daemon: only those the
    # guests' limits need (cputune needs cpu); guest scope names differ
    # per hosting, and a hosting lives on one node.
    printf '\ncgroup_controllers = [ "cpu", "cpuacct" ]\n' >> "$root/etc/qemu.conf"
  fi
  rm -f "$root/libvirtd.pid" "$root/virtlogd.pid"
  # The namespace lives as long as its daemons; its id tells their guests.
  unshare -m --propagation private bash -c '
    set -e
    r="$1"
    mount --bind "$r/etc" /etc/libvirt
    mount --bind "$r/run" /run/libvirt
    mount --bind "$r/lib" /var/lib/libvirt
    mount --bind "$r/cache" /var/cache/libvirt
    mount --bind "$r/log" /var/log/libvirt
    virtlogd -d -p "$r/virtlogd.pid"
    libvirtd -d -p "$r/libvirtd.pid"
  ' _ "$root"
  wait_until 30 1 virsh -c "$uri" version >/dev/null 2>&1 ||
    die "node $name: libvirtd did not come up at $uri"
}

kill_node() {
  local pids
  pids="$(daemon_pids) $(guest_pids)"
  [ -n "${pids// /}" ] && kill -9 $pids 2>/dev/null || true
  rm -f "$root/libvirtd.pid" "$root/virtlogd.pid" "$sock"
}

case "$cmd" in
  start) start; echo "$uri" ;;
  uri) echo "$uri" ;;
  kill) kill_node ;;
  stop) kill_node; rm -rf "$root" ;;
  *) die "usage: $0 start|uri|kill|stop NAME" ;;
esac
