#!/usr/bin/env bash
# The cost of the per-site statistics log in the host nginx, in one run on
# this machine: the host nginx (hostd's own config from `hostd nginx-conf`)
# proxies one tenant's path to a stand-in guest (a second nginx answering a
# 612-byte page); wrk drives it for BENCH_SECS (10) at 64 connections, once
# without and once with `--site-log`. Prints requests/s, the host nginx's
# CPU time per 1,000 requests (so the CPU share at 5,000 requests/s is 5 ×
# that), the log's bytes per request, and how fast hostd parses the log.
# Prints numbers; asserts nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
command -v wrk >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
cargo build --release --locked -q --bin hostd --example bench_site_log
SECS="${BENCH_SECS:-10}"
WORK=$(mktemp -d /tmp/hostd-bench-sitelog.XXXXXX)
chmod 755 "$WORK"
UP_PORT=$(free_port); PORT=$(free_port)
UID_PATH=3f1b7c1e-0000-4000-8000-000000000001
cleanup() {
  set +e
  for c in "$WORK"/*/nginx.conf "$WORK/up.conf"; do [ -f "$c" ] && nginx -c "$c" -s stop 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT

mkdir -p "$WORK/up-tmp"
body=$(head -c 600 /dev/zero | tr '\0' 'x')
cat > "$WORK/up.conf" <<CONF
worker_processes 1;
pid $WORK/up.pid;
error_log $WORK/up-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK/up-tmp; proxy_temp_path $WORK/up-tmp; fastcgi_temp_path $WORK/up-tmp;
  uwsgi_temp_path $WORK/up-tmp; scgi_temp_path $WORK/up-tmp;
  server { listen 127.0.0.1:$UP_PORT; location / { return 200 '$body'; } }
}
CONF
nginx -c "$WORK/up.conf"

# CPU seconds (user + system) of an nginx master and its workers.
nginx_cpu() {
  local master=$1 total=0 pid
  for pid in $master $(pgrep -P "$master"); do
    total=$(awk -v t="$total" '{print t + $14 + $15}' "/proc/$pid/stat")
  done
  python3 -c "import os; print($total / os.sysconf('SC_CLK_TCK'))"
}

echo "| site log | requests/s | host nginx CPU s per 1,000 requests | CPU at 5,000 req/s | log bytes per request |"
echo "|---|---:|---:|---:|---:|"
for mode in off on; do
  d="$WORK/$mode"; mkdir -p "$d/tmp" "$d/routes"
  printf '# hosting %s\npath:%s 127.0.0.1:%s;\n' "$UID_PATH" "$UID_PATH" "$UP_PORT" > "$d/routes/routes.map"
  extra=(); [ "$mode" = on ] && extra=(--site-log "$d/sites.log")
  HOSTD_STATE_DIR="$d" target/release/hostd nginx-conf --listen "127.0.0.1:$PORT" --prefix "$d" \
    --routes-dir "$d/routes" "${extra[@]}" > "$d/nginx.conf"
  nginx -c "$d/nginx.conf"
  wrk -t2 -c64 -d2s "http://127.0.0.1:$PORT/$UID_PATH/" >/dev/null   # warm up
  : > "$d/access.log"; [ -f "$d/sites.log" ] && : > "$d/sites.log"
  master=$(cat "$d/nginx.pid")
  cpu0=$(nginx_cpu "$master")
  out=$(wrk -t2 -c64 -d"${SECS}s" "http://127.0.0.1:$PORT/$UID_PATH/")
  cpu1=$(nginx_cpu "$master")
  nginx -c "$d/nginx.conf" -s stop; sleep 1
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  logb=0; [ -f "$d/sites.log" ] && logb=$(stat -c %s "$d/sites.log")
  python3 - "$mode" "$n" "$rps" "$cpu0" "$cpu1" "$logb" <<'PY'
import sys
mode, n, rps, c0, c1, logb = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
per_k = (c1 - c0) / n * 1000
print(f"| {mode} | {rps:.0f} | {per_k:.4f} | {per_k * 5 * 100:.1f} % of a core | {logb / n:.1f} |")
PY
  if [ "$mode" = on ]; then
    read -r lines secs lps < <(target/release/examples/bench_site_log "$d/sites.log")
    echo
    echo "hostd parses the site log at $lps lines/s ($lines lines in $secs s): at 5,000 requests/s a 15 s round's 75,000 lines take $(python3 -c "print('%.1f ms' % (75000 / $lps * 1000))")"
  fi
done
