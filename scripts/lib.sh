#!/usr/bin/env bash
# Shared helpers for start.sh and test.sh: start the daemons hostd needs
# without systemd, idempotently.

log() { printf '\033[1m==> [%s] %s\033[0m\n' "$(date +%T)" "$*"; }  # the time: CI's stage durations
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

ensure_cargo() {
  if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null || die "cargo (Rust toolchain) not found: install Rust with rustup first"
}

PG_MAX_CONNECTIONS=300
start_postgres() {
  local ver
  ver=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1)
  [ -n "$ver" ] || die "no PostgreSQL cluster found after installing postgresql"
  # After an unclean stop (a machine or session killed with the server
  # running), crash recovery first fsyncs every file of the data directory;
  # with many databases that took over a minute here and pg_ctl's default
  # 60 s wait gave up. syncfs(2) syncs the file system once instead (PG 14+),
  # and the wait below is long enough for a big cluster's recovery.
  # Connections: each hostd process pools up to 20, and the tests run
  # several at once (four tests of a binary in parallel, some with two
  # processes): Debian's 100 ran out once (2026-12-08, "remaining connection
  # slots are reserved").
  local confd="/etc/postgresql/$ver/main/conf.d" want
  want=$(printf '%s\n' "# written by hostd's scripts/lib.sh" \
    "recovery_init_sync_method = syncfs" "max_connections = $PG_MAX_CONNECTIONS")
  if [ -d "$confd" ] && [ "$(cat "$confd/hostd.conf" 2>/dev/null)" != "$want" ]; then
    printf '%s\n' "$want" >"$confd/hostd.conf"
  fi
  if ! pg_lsclusters -h | awk '{print $4}' | grep -q online; then
    log "starting PostgreSQL $ver"
    pg_ctlcluster "$ver" main start -- -t 600 ||
      die "PostgreSQL $ver did not start: see /var/log/postgresql/postgresql-$ver-main.log"
  fi
  wait_until 120 1 su postgres -c "psql -qtAc 'select 1'" >/dev/null 2>&1 ||
    die "PostgreSQL did not come up"
  if [ "$(su postgres -c "psql -qtAc 'show max_connections'")" -lt "$PG_MAX_CONNECTIONS" ]; then
    log "restarting PostgreSQL $ver (max_connections = $PG_MAX_CONNECTIONS)"
    pg_ctlcluster "$ver" main restart -- -t 600 ||
      die "PostgreSQL $ver did not restart: see /var/log/postgresql/postgresql-$ver-main.log"
    wait_until 120 1 su postgres -c "psql -qtAc 'select 1'" >/dev/null 2>&1 ||
      die "PostgreSQL did not come up"
  fi
  # Role used by hostd and its tests (password auth over TCP on loopback).
  su postgres -c "psql -qtAc \"select 1 from pg_roles where rolname='hostd'\"" | grep -q 1 ||
    su postgres -c "psql -qc \"create role hostd login createdb password 'hostd'\""
  su postgres -c "psql -qtAc \"select 1 from pg_database where datname='hostd'\"" | grep -q 1 ||
    su postgres -c "psql -qc 'create database hostd owner hostd'"
}

# Drops the scratch databases tests and benchmarks create (hostd_test_*,
# hostd_bench_*; one per test, never dropped by the test itself). Left to
# pile up they grew the cluster to thousands of databases, and crash recovery
# after an unclean stop then outlasted pg_ctl's wait. A database still in use
# is left alone (drop without FORCE refuses it).
drop_scratch_databases() {
  local dbs d n=0
  dbs=$(su postgres -c "psql -qtAc \"select datname from pg_database where datname like 'hostd\\_test\\_%' or datname like 'hostd\\_bench\\_%'\"") || return 0
  for d in $dbs; do
    su postgres -c "psql -qc 'drop database if exists $d'" >/dev/null 2>&1 && n=$((n + 1))
  done
  [ "$n" -eq 0 ] || log "dropped $n scratch databases left by earlier tests or benchmarks"
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
  wait_until 30 1 virsh -c qemu:///system version >/dev/null 2>&1 ||
    die "libvirtd did not come up (virsh -c qemu:///system version fails)"
}

# The common preamble of every script that needs the host ready: packages,
# the Rust toolchain, Postgres and libvirtd.
# Redis on 127.0.0.1:6379 (rate limits, revocations); no persistence needed.
start_redis() {
  if redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then return 0; fi
  log "starting redis"
  mkdir -p /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no \
    --logfile /var/log/redis/hostd-redis.log >/dev/null
  wait_until 10 0.2 redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null ||
    { echo "redis did not start: see /var/log/redis/hostd-redis.log" >&2; return 1; }
}

prepare_host() {
  ./scripts/install-deps.sh >/dev/null
  ensure_cargo
  start_postgres
  start_libvirt
  start_redis
  export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://hostd:hostd@127.0.0.1:5432/postgres}"
}

# A free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_until SECONDS INTERVAL CMD...: runs CMD until it succeeds; fails (status
# 1) when SECONDS pass first.
wait_until() {
  local deadline=$(( $(date +%s) + $1 )) interval=$2
  shift 2
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep "$interval"
  done
}

# The volume names of a libvirt storage pool, one per line. Fails when the
# pool cannot be listed (this virsh has no `vol-list --name`).
pool_volumes() {
  local out
  out=$(virsh -c qemu:///system vol-list "$1") || return 1
  awk 'NR > 2 && NF { print $1 }' <<< "$out"
}
