#!/usr/bin/env bash
# The container deployment for real: docker-compose.yml brought up by
# scripts/docker-start.sh under podman + podman-compose, with the images
# built offline (scripts/build-container-base.sh, and this host's hostd
# binaries copied into the Dockerfile's image), driving the host's libvirtd
# (qemu:///system) through its socket. A real guest is created through the
# containerised API and reconciler, its welcome page fetched through the
# containerised nginx, SSH'd into; from root in the guest, Postgres, the API
# (container addresses and the host's loopback) must not answer; then the
# hosting is deleted, the stack taken down, and nothing may be left.
# Skipped with one line when podman cannot start a container here.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

LABEL=container-e2e
t_start=$(date +%s)
step() { printf '\033[1m[%s %4ss] %s\033[0m\n' "$LABEL" "$(( $(date +%s) - t_start ))" "$*"; }
fail() { printf '\033[31m%s FAILED: %s\033[0m\n' "$LABEL" "$*" >&2; exit 1; }
skip() { echo "container-e2e: SKIPPED: $*"; exit 0; }

command -v podman >/dev/null || skip "podman is not installed (scripts/test-tools.sh installs it)"
podman info >/dev/null 2>&1 || skip "podman does not work here: $(podman info 2>&1 | tail -1)"
STATE_DIR="${HOSTD_STATE_DIR:-/var/lib/hostd}"
HOSTD_STATE_DIR="$STATE_DIR" ./scripts/build-image.sh >/dev/null
cargo build --locked --bins -q

step "container images from Debian's packages (no registry)"
t0=$(date +%s)
images=$(./scripts/build-container-base.sh)
echo "container-e2e: base images ready in $(( $(date +%s) - t0 )) s"
podman run --rm localhost/hostd-base:bookworm true 2>"/tmp/container-e2e.$$" ||
  skip "podman cannot start a container here: $(tail -1 "/tmp/container-e2e.$$")"
rm -f "/tmp/container-e2e.$$"

run_id="$(date +%s)-$$"
INSTANCE="ce2e-${run_id: -10}"
INSTANCE="${INSTANCE//[^a-z0-9-]/}"
WORK=$(mktemp -d /tmp/hostd-ce2e.XXXXXX)
HTTP_PORT=$(free_port); API_PORT=$(free_port); METRICS_PORT=$(free_port)
API="http://127.0.0.1:$API_PORT/api/v1"
export HOSTD_CONTAINER_ENGINE=podman HOSTD_ENV_FILE="$WORK/compose.env" HOSTD_INSTANCE="$INSTANCE"
export HOSTD_STATE_DIR="$STATE_DIR" HOSTD_HTTP_PORT="$HTTP_PORT" HOSTD_API_PORT="$API_PORT" HOSTD_METRICS_PORT="$METRICS_PORT"
export HOSTD_PUBLIC_URL="http://127.0.0.1:$HTTP_PORT" HOSTD_BINARIES=target/debug
set -a; eval "$images"; set +a
project_containers() { podman ps -aq --filter "label=com.docker.compose.project=hostd-$INSTANCE"; }
project_volumes() { podman volume ls -q --filter "label=com.docker.compose.project=hostd-$INSTANCE"; }

cleanup() {
  local rc=$? d v
  set +e
  if [ $rc -ne 0 ]; then
    for c in $(project_containers); do
      echo "---- $(podman inspect -f '{{.Name}}' "$c") ----"; podman logs --tail 25 "$c" 2>&1
    done
  fi
  [ -f "$HOSTD_ENV_FILE" ] && ./scripts/docker-start.sh purge >/dev/null 2>&1
  rm -rf "$STATE_DIR/pools/$INSTANCE" "$STATE_DIR/compose-$INSTANCE" "$WORK"
  exit $rc
}
trap cleanup EXIT

step "docker-start.sh with podman: build, secrets, start, every service healthy"
t0=$(date +%s)
./scripts/docker-start.sh > "$WORK/start.log" 2>&1 || { cat "$WORK/start.log"; fail "docker-start.sh failed"; }
grep -E "image built|stack healthy" "$WORK/start.log" | sed 's/^/container-e2e: /'
echo "container-e2e: docker-start.sh up to healthy in $(( $(date +%s) - t0 )) s"
grep -qiE "error|warn" "$WORK/start.log" && fail "docker-start.sh printed error lines: $(grep -iE 'error|warn' "$WORK/start.log")"
[ "$(stat -c %a "$HOSTD_ENV_FILE")" = 600 ] || fail "the secrets file is not 0600"
for v in POSTGRES_PASSWORD REDIS_PASSWORD HOSTD_JWT_SECRET; do
  grep -Eq "^$v=[0-9a-f]{64}$" "$HOSTD_ENV_FILE" || fail "$v was not generated"
done
for s in postgres redis; do
  ports=$(podman ps --filter "label=com.docker.compose.project=hostd-$INSTANCE" --filter "label=com.docker.compose.service=$s" --format '{{.Ports}}')
  [ -z "$ports" ] || fail "$s publishes ports: $ports"
done

step "guest isolation before any guest: the table names the host's libvirt-qemu uid"
guest_uid=$(id -u libvirt-qemu)
reconciler_nft() {
  podman exec "$(podman ps -q --filter "label=com.docker.compose.project=hostd-$INSTANCE" \
    --filter label=com.docker.compose.service=hostd-reconciler)" nft list table inet hostd_guest_isolation
}
pgrep -u "$guest_uid" >/dev/null && echo "container-e2e: (processes of uid $guest_uid already run on this host)"
table=$(reconciler_nft) || fail "no isolation table"
grep -Eq "elements = \{[^}]*\b$guest_uid\b" <<<"$table" || fail "the isolation table does not name uid $guest_uid: $table"

step "register, create a hosting through the containerised API"
curl -fsS -X POST "$API/auth/register" -H 'content-type: application/json' \
  -d '{"email":"ce2e@example.com","username":"ce2e_user","password":"correct horse"}' > "$WORK/user.json"
USER_ID=$(jq -r .id "$WORK/user.json")
TOKEN=$(curl -fsS -X POST "$API/auth/login" -d 'username=ce2e_user&password=correct horse' | jq -r .access_token)
ssh-keygen -q -t ed25519 -N '' -f "$WORK/key"
body=$(jq -nc --arg k "$(cat "$WORK/key.pub")" '{ssh_public_keys: [$k]}')
t_post=$(date +%s.%N)
curl -fsS -o /dev/null -X POST "$API/host" -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' -d "$body"
is_ready() {
  curl -fsS "$API/host/my" -H "Authorization: Bearer $TOKEN" > "$WORK/my.json" || return 1
  [ "$(jq -r .status.phase "$WORK/my.json")" = Ready ]
}
wait_until 600 2 is_ready || fail "not Ready: $(jq -c .status "$WORK/my.json")"
python3 -c "print('container-e2e: POST -> Ready %.1f s' % ($(date +%s.%N) - $t_post))"
SSH_PORT=$(jq -r .status.ssh_port "$WORK/my.json")
SSH=(ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ConnectTimeout=20 -o LogLevel=ERROR -i "$WORK/key" -p "$SSH_PORT")

step "the welcome page through the containerised nginx; SSH"
grep -q "Welcome, ce2e_user" <<<"$(curl -fsS "http://127.0.0.1:$HTTP_PORT/$USER_ID/")" || fail "no welcome page through nginx"
[ "$("${SSH[@]}" ubuntu@127.0.0.1 hostname)" = ce2e-user ] || fail "SSH into the guest failed"

step "guest isolation with the guest running, as health/detailed (API container) reports it"
iso_ok() {
  curl -fsS "$API/health/detailed" > "$WORK/health.json" || true
  jq -e '.checks.guest_isolation.status == "ok"' "$WORK/health.json" >/dev/null
}
wait_until 60 2 iso_ok || fail "guest isolation not reported in force: $(jq -c .checks "$WORK/health.json")"
echo "container-e2e: isolation table covers libvirt-qemu ($guest_uid); health/detailed: $(jq -c .checks.guest_isolation "$WORK/health.json")"

step "from root in the guest: Postgres and the API do not answer (container addresses, host loopback)"
ip_of() {
  podman inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' \
    "$(podman ps -q --filter "label=com.docker.compose.project=hostd-$INSTANCE" --filter "label=com.docker.compose.service=$1")"
}
PG_IP=$(ip_of postgres); API_IP=$(ip_of hostd-api)
[ -n "$PG_IP" ] && [ -n "$API_IP" ] || fail "no container addresses (postgres '$PG_IP', api '$API_IP')"
reach() { timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }
# Positive controls: the host itself reaches every target.
for t in "$PG_IP:5432" "$API_IP:8000" "127.0.0.1:$API_PORT" "127.0.0.1:$HTTP_PORT" "127.0.0.1:$METRICS_PORT"; do
  reach "${t%:*}" "${t##*:}" || fail "the host itself cannot reach $t (the probe would prove nothing)"
done
probe=$("${SSH[@]}" ubuntu@127.0.0.1 "sudo nft flush ruleset; gw=\$(ip route | awk '/^default/ {print \$3; exit}');
  for t in $PG_IP:5432 $API_IP:8000 \$gw:$API_PORT \$gw:$HTTP_PORT \$gw:$METRICS_PORT \$gw:5432; do
    if timeout 5 bash -c \"exec 3<>/dev/tcp/\${t%:*}/\${t##*:}\" 2>/dev/null; then echo open:\$t; else echo refused:\$t; fi
  done")
echo "$probe" | sed 's/^/container-e2e: guest probe /'
grep -q '^open:' <<<"$probe" && fail "the guest reached a service: $probe"
[ "$(grep -c '^refused:' <<<"$probe")" = 6 ] || fail "unexpected probe output: $probe"

step "DELETE: the hosting's domain, volumes and route go"
DOMAIN="hostd-$(jq -r .id "$WORK/my.json")"
curl -fsS -o /dev/null -X DELETE "$API/host/my" -H "Authorization: Bearer $TOKEN"
gone() { [ "$(curl -s -o /dev/null -w '%{http_code}' "$API/host/my" -H "Authorization: Bearer $TOKEN")" = 404 ]; }
wait_until 120 2 gone || fail "hosting not removed"
virsh -c qemu:///system dominfo "$DOMAIN" >/dev/null 2>&1 && fail "domain $DOMAIN still exists"
# The ownership marker stays, and the instance's template for clones (or
# the volumes of one being built).
vols=$(pool_volumes "hostd-$INSTANCE" | grep -vx -e '.hostd-installation' -e 'hostd-tpl-.*-disk.qcow2' -e 'hostd-tpl-.*-seed.iso' || true)
[ -z "$vols" ] || fail "volumes left behind: $vols"
entries=$(grep -c '^# hosting ' "$STATE_DIR/compose-$INSTANCE/routes/routes.map" 2>/dev/null || true)
[ "${entries:-0}" = 0 ] || fail "route entries left behind"

step "docker-start.sh down keeps the data; up again serves the same account"
./scripts/docker-start.sh down > "$WORK/down.log" 2>&1 || { cat "$WORK/down.log"; fail "docker-start.sh down failed"; }
[ -z "$(project_containers)" ] || fail "containers left after down: $(project_containers)"
[ "$(project_volumes | wc -l)" = 3 ] || fail "down removed the data volumes: $(project_volumes)"
./scripts/docker-start.sh > "$WORK/start2.log" 2>&1 || { cat "$WORK/start2.log"; fail "docker-start.sh (again) failed"; }
TOKEN=$(curl -fsS -X POST "$API/auth/login" -d 'username=ce2e_user&password=correct horse' | jq -r .access_token)
[ "$(curl -s -o /dev/null -w '%{http_code}' "$API/auth/me" -H "Authorization: Bearer $TOKEN")" = 200 ] ||
  fail "the account did not survive down/up"

step "docker-start.sh purge: no container, volume, pool or nginx file left"
./scripts/docker-start.sh purge > "$WORK/purge.log" 2>&1 || { cat "$WORK/purge.log"; fail "docker-start.sh purge failed"; }
[ -z "$(project_containers)" ] || fail "containers left: $(project_containers)"
[ -z "$(project_volumes)" ] || fail "volumes left: $(project_volumes)"
[ ! -e "$STATE_DIR/compose-$INSTANCE" ] || fail "$STATE_DIR/compose-$INSTANCE left behind"
[ ! -e "$STATE_DIR/pools/$INSTANCE" ] || fail "$STATE_DIR/pools/$INSTANCE left behind"
virsh -c qemu:///system pool-info "hostd-$INSTANCE" >/dev/null 2>&1 && fail "storage pool hostd-$INSTANCE left behind"
step "container deployment end-to-end test passed"
