#!/usr/bin/env bash
# End-to-end test with real everything: Postgres, libvirtd (qemu:///system),
# a real guest booted from the debian-12 image, a private host nginx on a high
# 127.0.0.1 port, and `hostd all`. Drives the public API with curl and checks
# the site, SSH, the firewall, uploads, crash recovery and deletion.
# Cleans up after itself even when it fails. Never skipped: a missing
# prerequisite is a failure with a clear message.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

READY_TIMEOUT="${E2E_READY_TIMEOUT:-600}"
STATE_DIR="${HOSTD_STATE_DIR:-/var/lib/hostd}"
[ "$(id -u)" = 0 ] || die "e2e: must run as root (libvirt qemu:///system)"
for bin in virsh nginx curl jq ssh scp ssh-keygen psql genisoimage; do
  command -v "$bin" >/dev/null || die "e2e: prerequisite '$bin' missing (run scripts/install-deps.sh)"
done
HOSTD_STATE_DIR="$STATE_DIR" ./scripts/build-image.sh
cargo build --locked --bins -q
BIN="$PWD/target/debug/hostd"

run_id="$(date +%s)-$$"
INSTANCE="e2e-${run_id: -12}"
INSTANCE="${INSTANCE//[^a-z0-9-]/}"
WORK=$(mktemp -d /tmp/hostd-e2e.XXXXXX)
DB="hostd_e2e_$(echo "$run_id" | tr -c 'a-z0-9\n' '_')"
NGINX_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
API_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
API="http://127.0.0.1:$API_PORT/api/v1"
HOSTD_PID=""
t_start=$(date +%s)
step() { printf '\033[1m[e2e %4ss] %s\033[0m\n' "$(( $(date +%s) - t_start ))" "$*"; }
fail() { printf '\033[31me2e FAILED: %s\033[0m\n' "$*" >&2; exit 1; }

cleanup() {
  local rc=$?
  set +e
  if [ $rc -ne 0 ] && [ -f "$WORK/hostd.log" ]; then
    echo "---- last hostd log lines ----"; tail -n 40 "$WORK/hostd.log"
    for f in "$STATE_DIR"/console/hostd-*.log; do [ -f "$f" ] && { echo "---- $f ----"; tail -n 20 "$f"; }; done
  fi
  [ -n "$HOSTD_PID" ] && kill "$HOSTD_PID" 2>/dev/null && wait "$HOSTD_PID" 2>/dev/null
  # Remove anything this run's instance may have left in libvirt.
  for d in $(virsh -c qemu:///system list --all --name | grep '^hostd-'); do
    if virsh -c qemu:///system metadata "$d" https://hostd.dev/xmlns/hosting/v1 2>/dev/null | grep -q "instance=\"$INSTANCE\""; then
      virsh -c qemu:///system destroy "$d" >/dev/null 2>&1; virsh -c qemu:///system undefine "$d" >/dev/null 2>&1
    fi
  done
  if virsh -c qemu:///system pool-info "hostd-$INSTANCE" >/dev/null 2>&1; then
    for v in $(virsh -c qemu:///system vol-list "hostd-$INSTANCE" --name 2>/dev/null); do virsh -c qemu:///system vol-delete "$v" --pool "hostd-$INSTANCE" >/dev/null 2>&1; done
    virsh -c qemu:///system pool-destroy "hostd-$INSTANCE" >/dev/null 2>&1; virsh -c qemu:///system pool-undefine "hostd-$INSTANCE" >/dev/null 2>&1
  fi
  rm -rf "$STATE_DIR/pools/$INSTANCE"
  nginx -c "$WORK/nginx/nginx.conf" -s stop 2>/dev/null
  su postgres -c "psql -qc 'drop database if exists $DB'" >/dev/null 2>&1
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT

step "private nginx on 127.0.0.1:$NGINX_PORT, database $DB, instance $INSTANCE"
mkdir -p "$WORK/nginx/tmp" "$WORK/routes"
"$BIN" nginx-conf --listen "127.0.0.1:$NGINX_PORT" --prefix "$WORK/nginx" --routes-dir "$WORK/routes" > "$WORK/nginx/nginx.conf"
nginx -c "$WORK/nginx/nginx.conf"
su postgres -c "psql -qc 'create database $DB owner hostd'"

export DATABASE_URL="postgres://hostd:hostd@127.0.0.1:5432/$DB"
export HOSTD_JWT_SECRET="e2e-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export HOSTD_LISTEN="127.0.0.1:$API_PORT" HOSTD_LIBVIRT_URI=qemu:///system HOSTD_STATE_DIR="$STATE_DIR"
export HOSTD_NGINX_ROUTES_DIR="$WORK/routes" HOSTD_NGINX_CONF="$WORK/nginx/nginx.conf"
export HOSTD_PROBE_URL="http://127.0.0.1:$NGINX_PORT" HOSTD_PUBLIC_URL="http://127.0.0.1:$NGINX_PORT"
export HOSTD_INSTANCE="$INSTANCE" HOSTD_BCRYPT_COST=4 HOSTD_RESYNC_SECS=5 RUST_LOG="${RUST_LOG:-info}"
"$BIN" all > "$WORK/hostd.log" 2>&1 &
HOSTD_PID=$!
for _ in $(seq 1 30); do curl -fsS "$API/health" >/dev/null 2>&1 && break; sleep 1; done
curl -fsS "$API/health" >/dev/null || fail "hostd did not start"

step "register, login, create a hosting"
curl -fsS -X POST "$API/auth/register" -H 'content-type: application/json' \
  -d '{"email":"e2e@example.com","username":"e2e_user","password":"correct horse"}' > "$WORK/user.json"
USER_ID=$(jq -r .id "$WORK/user.json")
TOKEN=$(curl -fsS -X POST "$API/auth/login" -d 'username=e2e_user&password=correct horse' | jq -r .access_token)
ssh-keygen -q -t ed25519 -N '' -f "$WORK/key"
body=$(jq -nc --arg k "$(cat "$WORK/key.pub")" '{ssh_public_keys: [$k]}')
t_post=$(date +%s.%N)
code=$(curl -sS -o "$WORK/host.json" -w '%{http_code}' -X POST "$API/host" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' -d "$body")
[ "$code" = 202 ] || fail "POST /host answered $code: $(cat "$WORK/host.json")"

wait_ready() {
  local deadline=$(( $(date +%s) + READY_TIMEOUT )) phase=""
  while [ "$(date +%s)" -lt $deadline ]; do
    curl -fsS "$API/host/my" -H "Authorization: Bearer $TOKEN" > "$WORK/my.json" || true
    phase=$(jq -r .status.phase "$WORK/my.json" 2>/dev/null)
    [ "$phase" = Ready ] && return 0
    sleep 3
  done
  jq . "$WORK/my.json"; fail "not Ready after ${READY_TIMEOUT}s (phase $phase)"
}
step "waiting for Ready (TCG boots take about a minute)"
wait_ready
t_ready=$(date +%s.%N)
python3 -c "print('e2e: POST -> Ready in %.1f s' % ($t_ready - $t_post))"
SSH_PORT=$(jq -r .status.ssh_port "$WORK/my.json")
SITE="http://127.0.0.1:$NGINX_PORT/$USER_ID/"
SSH=(ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=20 -o LogLevel=ERROR -i "$WORK/key" -p "$SSH_PORT")

step "the welcome page names the user"
curl -fsS "$SITE" | grep -q "Welcome, e2e_user" || fail "welcome page missing the username"
[ "$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' "http://127.0.0.1:$NGINX_PORT/$USER_ID")" = "301 http://127.0.0.1:$NGINX_PORT/$USER_ID/" ] || fail "no trailing-slash redirect"

step "SSH with the key: hostname and firewall"
out=$("${SSH[@]}" ubuntu@127.0.0.1 'cat /etc/hostname; sudo nft list ruleset')
echo "$out" | head -1 | grep -qx "e2e-user" || fail "unexpected hostname: $(echo "$out" | head -1)"
echo "$out" | grep -q "table inet hostd" || fail "firewall not loaded"
echo "$out" | grep -q "tcp dport { 22, 80 } accept" || fail "firewall does not allow exactly 22 and 80"

step "password login is refused"
if ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o PubkeyAuthentication=no \
     -o PreferredAuthentications=password,keyboard-interactive -o ConnectTimeout=20 -p "$SSH_PORT" ubuntu@127.0.0.1 true 2> "$WORK/pw.err"; then
  fail "login without a key succeeded"
fi
grep -q "Permission denied (publickey)" "$WORK/pw.err" || fail "unexpected password-login error: $(cat "$WORK/pw.err")"

step "scp upload (no sudo) is served at once"
echo "uploaded-$run_id" > "$WORK/upload.txt"
scp -q -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR -i "$WORK/key" -P "$SSH_PORT" "$WORK/upload.txt" ubuntu@127.0.0.1:/var/www/html/upload.txt
[ "$(curl -fsS "${SITE}upload.txt")" = "uploaded-$run_id" ] || fail "uploaded file not served"
"${SSH[@]}" ubuntu@127.0.0.1 sync

step "virsh destroy: hostd restarts the VM and the upload survives"
DOMAIN="hostd-$(jq -r .id "$WORK/my.json")"
virsh -c qemu:///system destroy "$DOMAIN" >/dev/null
deadline=$(( $(date +%s) + READY_TIMEOUT ))
until [ "$(curl -fsS "${SITE}upload.txt" 2>/dev/null)" = "uploaded-$run_id" ]; do
  [ "$(date +%s)" -lt $deadline ] || fail "site did not come back after virsh destroy"
  sleep 3
done
curl -fsS "$API/host/my" -H "Authorization: Bearer $TOKEN" | jq -e '.events | map(.reason) | index("DomainStarted")' >/dev/null || fail "no DomainStarted repair event"

step "DELETE: everything goes"
code=$(curl -sS -o /dev/null -w '%{http_code}' -X DELETE "$API/host/my" -H "Authorization: Bearer $TOKEN")
[ "$code" = 202 ] || fail "DELETE answered $code"
deadline=$(( $(date +%s) + 120 ))
until [ "$(curl -s -o /dev/null -w '%{http_code}' "$API/host/my" -H "Authorization: Bearer $TOKEN")" = 404 ]; do
  [ "$(date +%s)" -lt $deadline ] || fail "hosting row not removed"
  sleep 2
done
virsh -c qemu:///system dominfo "$DOMAIN" >/dev/null 2>&1 && fail "domain $DOMAIN still exists"
[ -z "$(virsh -c qemu:///system vol-list "hostd-$INSTANCE" --name 2>/dev/null | grep .)" ] || fail "volumes left behind"
[ -z "$(ls "$WORK/routes")" ] || fail "route file left behind"
[ "$(psql "$DATABASE_URL" -tAc 'select count(*) from port_allocations')" = 0 ] || fail "ports not released"
[ "$(curl -s -o /dev/null -w '%{http_code}' "$SITE")" = 404 ] || fail "site still answers"
step "end-to-end test passed"
