#!/usr/bin/env bash
# The read path against nginx, in one run on this machine: requests/s of
# `GET /api/v1/host/my` (a real `hostd api`, release build, real Postgres
# and Redis) and of nginx answering `return 200`, each with wrk at 64
# connections for 10 s, and their ratio; then `GET /api/v1/host/my` at a
# fixed 1,000 requests/s (open loop, examples/load_rate.rs) with its p50
# and p99. Prints numbers; asserts nothing. Called by scripts/bench-api.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
prepare_host
command -v wrk >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
cargo build --release --locked -q --bin hostd --example load_rate
SECS="${BENCH_SECS:-10}"
WORK=$(mktemp -d /tmp/hostd-bench-read.XXXXXX)
DB="hostd_bench_read_$$"
NGINX_PORT=$(free_port); API_PORT=$(free_port)
HOSTD_PID=""
cleanup() {
  set +e
  [ -n "$HOSTD_PID" ] && kill "$HOSTD_PID" 2>/dev/null && wait "$HOSTD_PID" 2>/dev/null
  nginx -c "$WORK/nginx.conf" -s stop 2>/dev/null
  su postgres -c "psql -qc 'drop database if exists $DB'" >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/tmp" "$WORK/state"
cat > "$WORK/nginx.conf" <<CONF
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
  uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
  server { listen 127.0.0.1:$NGINX_PORT; location / { return 200 'ok'; } }
}
CONF
nginx -c "$WORK/nginx.conf"
su postgres -c "psql -qc 'create database $DB owner hostd'"
DATABASE_URL="postgres://hostd:hostd@127.0.0.1:5432/$DB" HOSTD_JWT_SECRET="bench-read-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d " \n")" \
  HOSTD_LISTEN="127.0.0.1:$API_PORT" HOSTD_LIBVIRT_URI=test:///default HOSTD_STATE_DIR="$WORK/state" \
  HOSTD_BCRYPT_COST=4 HOSTD_LOG_JSON=0 RUST_LOG=error \
  target/release/hostd api > "$WORK/hostd.log" 2>&1 &
HOSTD_PID=$!
API="http://127.0.0.1:$API_PORT/api/v1"
wait_until 30 0.2 curl -fsS -o /dev/null "$API/health" 2>/dev/null || die "hostd did not start: $(tail -5 "$WORK/hostd.log")"
curl -fsS -X POST "$API/auth/register" -H 'content-type: application/json' \
  -d '{"email":"reader@example.com","username":"reader","password":"correct horse"}' >/dev/null
TOKEN=$(curl -fsS -X POST "$API/auth/login" -d 'username=reader&password=correct horse' | jq -r .access_token)
curl -fsS -X POST "$API/host" -H "Authorization: Bearer $TOKEN" >/dev/null
curl -fsS "$API/host/my" -H "Authorization: Bearer $TOKEN" | jq -e .id >/dev/null

rps() { awk '/Requests\/sec/ {print $2}'; }
lat() { awk -v q="$1" '$1 == q {print $2}'; }
echo "== read path vs nginx, $(nproc) cores, wrk 2 threads x 64 connections x ${SECS}s =="
for warm in 1; do wrk -t2 -c64 -d2s -H "Authorization: Bearer $TOKEN" "$API/host/my" >/dev/null; done
wrk -t2 -c64 -d"${SECS}s" --latency "http://127.0.0.1:$NGINX_PORT/" > "$WORK/nginx.txt"
wrk -t2 -c64 -d"${SECS}s" --latency -H "Authorization: Bearer $TOKEN" "$API/host/my" > "$WORK/mine.txt"
wrk -t2 -c64 -d"${SECS}s" --latency "$API/health" > "$WORK/health.txt"
n=$(rps < "$WORK/nginx.txt"); m=$(rps < "$WORK/mine.txt"); h=$(rps < "$WORK/health.txt")
errs=$(grep -E "Non-2xx|Socket errors" "$WORK/mine.txt" || true)
printf '  nginx return 200:      %10.0f req/s  (p50 %s, p99 %s)\n' "$n" "$(lat 50% < "$WORK/nginx.txt")" "$(lat 99% < "$WORK/nginx.txt")"
printf '  GET /api/v1/host/my:   %10.0f req/s  (p50 %s, p99 %s)%s\n' "$m" "$(lat 50% < "$WORK/mine.txt")" "$(lat 99% < "$WORK/mine.txt")" "${errs:+  $errs}"
printf '  GET /api/v1/health:    %10.0f req/s\n' "$h"
python3 -c "print('  ratio host/my / nginx: %.1f%%' % (100 * $m / $n))"
read -r sent ok p50 p99 max < <(target/release/examples/load_rate "$API/host/my" 1000 "$SECS" 64 "Authorization: Bearer $TOKEN")
echo "  GET /api/v1/host/my at 1000 req/s for ${SECS}s (open loop): sent $sent, ok $ok, p50 ${p50} ms, p99 ${p99} ms, max ${max} ms"
