#!/usr/bin/env bash
# Shared set-up for the tests and benchmarks that run real guests
# (e2e.sh, bench-provision.sh): a private database, a private host nginx on a
# free 127.0.0.1 port, a unique hostd instance against qemu:///system, and a
# cleanup trap that removes everything the run created, even on failure.
# Source it after scripts/lib.sh; call realenv_up, then start_hostd.
READY_TIMEOUT="${E2E_READY_TIMEOUT:-600}"
STATE_DIR="${HOSTD_STATE_DIR:-/var/lib/hostd}"
[ "$(id -u)" = 0 ] || die "must run as root (libvirt qemu:///system)"
for bin in virsh nginx curl jq ssh scp ssh-keygen psql genisoimage; do
  command -v "$bin" >/dev/null || die "prerequisite '$bin' missing (run scripts/install-deps.sh)"
done
HOSTD_STATE_DIR="$STATE_DIR" ./scripts/build-image.sh
cargo build --locked --bins -q
BIN="$PWD/target/debug/hostd"

run_id="$(date +%s)-$$"
INSTANCE="e2e-${run_id: -12}"
INSTANCE="${INSTANCE//[^a-z0-9-]/}"
WORK=$(mktemp -d /tmp/hostd-e2e.XXXXXX)
chmod 0711 "$WORK"   # the host nginx workers (www-data) reach their temp dirs below it
DB="hostd_e2e_$(echo "$run_id" | tr -c 'a-z0-9\n' '_')"
NGINX_PORT=$(free_port)
HTTPS_PORT=$(free_port)
API_PORT=$(free_port)
METRICS_PORT=$(free_port)
CLEANUP_HOOKS=()
API="http://127.0.0.1:$API_PORT/api/v1"
HOSTD_PID=""
t_start=$(date +%s)
LABEL="${LABEL:-e2e}"
step() { printf '\033[1m[%s %4ss] %s\033[0m\n' "$LABEL" "$(( $(date +%s) - t_start ))" "$*"; }
fail() { printf '\033[31m%s FAILED: %s\033[0m\n' "$LABEL" "$*" >&2; exit 1; }

# Runs on exit, keeping the script's exit status: the CLEANUP_HOOKS a
# script added, then everything this run created.
cleanup() {
  local rc=$? hook
  set +e
  for hook in "${CLEANUP_HOOKS[@]}"; do "$hook"; done
  if [ $rc -ne 0 ] && [ -f "$WORK/hostd.log" ]; then
    grep -A2 "panicked at" "$WORK/hostd.log" | head -n 12 | sed 's/^/PANIC: /'
    grep -E "WARN|ERROR" "$WORK/hostd.log" | grep -v "^ " | tail -n 15 | cut -c1-400
    echo "---- last hostd log lines ----"; tail -n 40 "$WORK/hostd.log"
    for f in "$STATE_DIR"/console/hostd-*.log; do [ -f "$f" ] && { echo "---- $f ----"; tail -n 20 "$f"; }; done
  fi
  [ -n "$HOSTD_PID" ] && kill "$HOSTD_PID" 2>/dev/null && wait "$HOSTD_PID" 2>/dev/null
  # Remove anything this run's instance may have left in libvirt.
  for d in $(virsh -c qemu:///system list --all --name | grep '^hostd-'); do
    meta=$(virsh -c qemu:///system metadata "$d" https://hostd.dev/xmlns/hosting/v1 2>/dev/null) || meta=""
    if grep -q "instance=\"$INSTANCE\"" <<<"$meta"; then
      virsh -c qemu:///system destroy "$d" >/dev/null 2>&1; virsh -c qemu:///system undefine --checkpoints-metadata "$d" >/dev/null 2>&1
    fi
  done
  if virsh -c qemu:///system pool-info "hostd-$INSTANCE" >/dev/null 2>&1; then
    for v in $(pool_volumes "hostd-$INSTANCE"); do virsh -c qemu:///system vol-delete "$v" --pool "hostd-$INSTANCE" >/dev/null 2>&1; done
    virsh -c qemu:///system pool-destroy "hostd-$INSTANCE" >/dev/null 2>&1; virsh -c qemu:///system pool-undefine "hostd-$INSTANCE" >/dev/null 2>&1
  fi
  rm -rf "$STATE_DIR/pools/$INSTANCE" "$STATE_DIR/templates/$INSTANCE"
  nginx -c "$WORK/nginx/nginx.conf" -s stop 2>/dev/null
  su postgres -c "psql -qc 'drop database if exists $DB'" >/dev/null 2>&1
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT

realenv_up() {
step "private nginx on 127.0.0.1:$NGINX_PORT, database $DB, instance $INSTANCE"
mkdir -p "$WORK/nginx/tmp" "$WORK/routes"
# The run's own TLS directory (certificates from the test CA, if any).
export HOSTD_TLS_DIR="$WORK/tls"
"$BIN" nginx-conf --listen "127.0.0.1:$NGINX_PORT" --https-listen "127.0.0.1:$HTTPS_PORT" \
  --prefix "$WORK/nginx" --routes-dir "$WORK/routes" --site-log "$WORK/nginx/sites.log" > "$WORK/nginx/nginx.conf"
nginx -c "$WORK/nginx/nginx.conf"
su postgres -c "psql -qc 'create database $DB owner hostd'"

export DATABASE_URL="postgres://hostd:hostd@127.0.0.1:5432/$DB"
export HOSTD_JWT_SECRET="e2e-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export HOSTD_LISTEN="127.0.0.1:$API_PORT" HOSTD_METRICS_LISTEN="127.0.0.1:$METRICS_PORT" HOSTD_LIBVIRT_URI=qemu:///system HOSTD_STATE_DIR="$STATE_DIR"
export HOSTD_NGINX_ROUTES_DIR="$WORK/routes" HOSTD_NGINX_CONF="$WORK/nginx/nginx.conf" HOSTD_NGINX_SITE_LOG="$WORK/nginx/sites.log"
export HOSTD_PROBE_URL="http://127.0.0.1:$NGINX_PORT" HOSTD_PUBLIC_URL="http://127.0.0.1:$NGINX_PORT"
export HOSTD_INSTANCE="$INSTANCE" HOSTD_BCRYPT_COST=4 HOSTD_RESYNC_SECS=5 RUST_LOG="${RUST_LOG:-info}"
}

# Fails unless a login as ubuntu on 127.0.0.1:$1 without a key is refused
# for want of one (sshd offers public keys only).
no_password_login() {
  if ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o PubkeyAuthentication=no \
       -o PreferredAuthentications=password,keyboard-interactive -o ConnectTimeout=20 -p "$1" ubuntu@127.0.0.1 true 2> "$WORK/pw.err"; then
    fail "login without a key succeeded"
  fi
  grep -q "Permission denied (publickey)" "$WORK/pw.err" || fail "unexpected password-login error: $(cat "$WORK/pw.err")"
}

# Starts `hostd all` in the background (extra environment as arguments).
start_hostd() {
  env "$@" "$BIN" all >> "$WORK/hostd.log" 2>&1 &
  HOSTD_PID=$!
  wait_until 30 1 curl -fs -o /dev/null "$API/health" 2>/dev/null || fail "hostd did not start"
}

