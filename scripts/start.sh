#!/usr/bin/env bash
# One command to a running hostd on a fresh Debian 12 machine (as root, no
# systemd needed): installs packages, starts Postgres, Redis, libvirtd and the host
# nginx, builds the guest image if absent, builds and starts `hostd all`.
# Idempotent: run it again to restart hostd with a fresh build.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

STATE_DIR="${HOSTD_STATE_DIR:-/var/lib/hostd}"
HTTP_LISTEN="${HOSTD_HTTP_LISTEN:-0.0.0.0:80}"
API_LISTEN="${HOSTD_LISTEN:-127.0.0.1:8000}"
ROUTES_DIR="${HOSTD_NGINX_ROUTES_DIR:-$STATE_DIR/nginx-routes}"
NGINX_PREFIX="$STATE_DIR/nginx"
NGINX_CONF="${HOSTD_NGINX_CONF:-$NGINX_PREFIX/nginx.conf}"
http_port="${HTTP_LISTEN##*:}"
# HTTPS: on when certificates can exist (an ACME directory or the sites
# wildcard is configured), on 0.0.0.0:443 unless HOSTD_HTTPS_LISTEN says where.
HTTPS_LISTEN="${HOSTD_HTTPS_LISTEN:-}"
if [ -z "$HTTPS_LISTEN" ] && { [ -n "${HOSTD_ACME_DIRECTORY:-}" ] || [ -n "${HOSTD_SITES_TLS_CERT:-}" ]; }; then
  HTTPS_LISTEN=0.0.0.0:443
fi

[ "$(id -u)" = 0 ] || die "run as root"
log "installing packages (if missing)"
prepare_host

log "building hostd"
cargo build --release --locked --bins
BIN=target/release/hostd

mkdir -p "$STATE_DIR" "$ROUTES_DIR" "$NGINX_PREFIX/tmp"
# nginx's workers (www-data) traverse the state directory to the routes and
# the TLS files, and list nothing in it.
chmod 711 "$STATE_DIR"
if [ ! -s "$STATE_DIR/jwt-secret" ]; then
  head -c 48 /dev/urandom | base64 | tr -d '\n/+=' > "$STATE_DIR/jwt-secret"
  chmod 600 "$STATE_DIR/jwt-secret"
fi

log "host nginx on $HTTP_LISTEN${HTTPS_LISTEN:+ and $HTTPS_LISTEN (TLS)}"
"$BIN" nginx-conf --listen "$HTTP_LISTEN" --prefix "$NGINX_PREFIX" --routes-dir "$ROUTES_DIR" \
  --site-log "$NGINX_PREFIX/sites.log" \
  ${HTTPS_LISTEN:+--https-listen "$HTTPS_LISTEN"} > "$NGINX_CONF"
nginx -t -q -c "$NGINX_CONF"
if [ -f "$NGINX_PREFIX/nginx.pid" ] && kill -0 "$(cat "$NGINX_PREFIX/nginx.pid")" 2>/dev/null; then
  nginx -s reload -c "$NGINX_CONF"
else
  nginx -c "$NGINX_CONF"
fi

log "guest image"
HOSTD_STATE_DIR="$STATE_DIR" ./scripts/build-image.sh

export DATABASE_URL="${DATABASE_URL:-postgres://hostd:hostd@127.0.0.1:5432/hostd}"
export HOSTD_JWT_SECRET="${HOSTD_JWT_SECRET:-$(cat "$STATE_DIR/jwt-secret")}"
export HOSTD_LISTEN="$API_LISTEN" HOSTD_STATE_DIR="$STATE_DIR" HOSTD_NGINX_ROUTES_DIR="$ROUTES_DIR" HOSTD_NGINX_CONF="$NGINX_CONF"
export HOSTD_NGINX_SITE_LOG="$NGINX_PREFIX/sites.log"
export HOSTD_PROBE_URL="${HOSTD_PROBE_URL:-http://127.0.0.1:$http_port}"
export HOSTD_PUBLIC_URL="${HOSTD_PUBLIC_URL:-http://localhost$([ "$http_port" = 80 ] || echo ":$http_port")}"
# The dashboard on its own host name (HOSTD_PANEL_HOST) behind the host
# nginx: with HTTPS its cookies are __Host- and Secure, and the API reads the
# client address nginx forwards.
if [ -n "${HOSTD_PANEL_HOST:-}" ]; then
  export HOSTD_TRUSTED_PROXIES="${HOSTD_TRUSTED_PROXIES:-127.0.0.1}"
  [ -n "$HTTPS_LISTEN" ] && export HOSTD_SECURE_COOKIES="${HOSTD_SECURE_COOKIES:-true}"
fi
# Two booted guests wait for the next hostings of the default size (each holds
# 512 MiB like a running hosting); HOSTD_WARM_POOL=0 turns the pool off.
export HOSTD_WARM_POOL="${HOSTD_WARM_POOL:-2}"

if [ -f "$STATE_DIR/hostd.pid" ] && kill -0 "$(cat "$STATE_DIR/hostd.pid")" 2>/dev/null; then
  log "stopping the running hostd"
  kill "$(cat "$STATE_DIR/hostd.pid")"; sleep 2
fi
"$BIN" migrate >/dev/null
log "starting hostd (log: $STATE_DIR/hostd.log)"
nohup "$BIN" all >> "$STATE_DIR/hostd.log" 2>&1 &
echo $! > "$STATE_DIR/hostd.pid"
# Quietly: while hostd starts, "connection refused" is expected, not an error.
wait_until 30 1 curl -fs -o /dev/null "http://$API_LISTEN/api/v1/health" 2>/dev/null ||
  die "hostd did not come up; see $STATE_DIR/hostd.log"
# Checked once hostd runs: it installs the guest isolation table as it
# starts, so a check made before would report it missing.
log "checking dependencies (hostd doctor)"
if ! "$BIN" doctor; then
  echo "hostd doctor reported a failed check (above); hostd is running, see $STATE_DIR/hostd.log" >&2
fi

cat <<MSG

hostd is running.
  Dashboard: ${HOSTD_PANEL_HOST:+$([ -n "$HTTPS_LISTEN" ] && echo https || echo http)://$HOSTD_PANEL_HOST/ui/ or }http://$API_LISTEN/ui/   (sign up, create a hosting, watch it boot)
  API:    http://$API_LISTEN/api/v1   (health: /api/v1/health/detailed,
          contract: /api/v1/openapi.json)
  Sites:  $HOSTD_PUBLIC_URL/<user_id>/
  HTTPS:  ${HTTPS_LISTEN:-off (set HOSTD_ACME_DIRECTORY, or HOSTD_SITES_TLS_CERT/_KEY; see docs/operations.md)}
  Logs:   $STATE_DIR/hostd.log
  Warm pool: $HOSTD_WARM_POOL booted guest(s) (ready about a minute after start;
          a new default-size hosting then takes seconds instead of a boot)
Try the walkthrough in README.md (register, login, create a hosting).
MSG
