#!/usr/bin/env bash
# Shared helpers for start.sh and test.sh: start the daemons hostd needs
# without systemd, idempotently.

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

ensure_cargo() {
  if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null || die "cargo (Rust toolchain) not found: install Rust with rustup first"
}

start_postgres() {
  local ver
  ver=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1)
  [ -n "$ver" ] || die "no PostgreSQL cluster found after installing postgresql"
  if ! pg_lsclusters -h | awk '{print $4}' | grep -q online; then
    log "starting PostgreSQL $ver"
    pg_ctlcluster "$ver" main start
  fi
  for _ in $(seq 1 30); do
    su postgres -c "psql -qtAc 'select 1'" >/dev/null 2>&1 && break
    sleep 1
  done
  # Role used by hostd and its tests (password auth over TCP on loopback).
  su postgres -c "psql -qtAc \"select 1 from pg_roles where rolname='hostd'\"" | grep -q 1 ||
    su postgres -c "psql -qc \"create role hostd login createdb password 'hostd'\""
  su postgres -c "psql -qtAc \"select 1 from pg_database where datname='hostd'\"" | grep -q 1 ||
    su postgres -c "psql -qc 'create database hostd owner hostd'"
}

start_libvirt() {
  mkdir -p /run/libvirt
  # Without udev, /dev/kvm stays root-only (0600). libvirt then probes QEMU's
  # capabilities as root (KVM usable) but checks /dev/kvm as libvirt-qemu (not
  # usable), calls its cache stale and re-probes on every call: 6-8 s per
  # define/start here, over a minute under load. Debian's udev rule gives
  # root:kvm 0660; apply the same.
  if [ -c /dev/kvm ] && getent group kvm >/dev/null; then
    chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
  fi
  pgrep -x virtlogd >/dev/null || virtlogd -d
  if ! pgrep -x libvirtd >/dev/null; then
    log "starting libvirtd"
    libvirtd -d
  fi
  for _ in $(seq 1 30); do
    virsh -c qemu:///system version >/dev/null 2>&1 && return 0
    sleep 1
  done
  die "libvirtd did not come up (virsh -c qemu:///system version fails)"
}
