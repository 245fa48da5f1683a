#!/usr/bin/env bash
# hostd in containers (the layout of docker-compose.yml), on the hypervisor
# host, as root. Works with Docker (Compose v2) and with podman +
# podman-compose, whichever is here (HOSTD_CONTAINER_ENGINE=docker|podman
# chooses; podman-compose is installed from PyPI into /opt/hostd if missing).
#   docker-start.sh [up]   checks libvirtd and the guest image, writes the
#                          secrets once (Postgres and Redis passwords, JWT
#                          secret: $HOSTD_ENV_FILE, default .env, 0600),
#                          builds the image, generates the nginx configuration,
#                          starts the stack and waits until every service is healthy
#   docker-start.sh down   stops and removes its containers; the database,
#                          hostings and their disks stay (`up` brings them back)
#   docker-start.sh purge  also deletes everything of this instance: its
#                          guests (libvirt domains), their disks and storage
#                          pool, the database and Redis volumes, the nginx files
# Settings from the environment: HOSTD_STATE_DIR (/var/lib/hostd),
# HOSTD_INSTANCE (default), HOSTD_HTTP_PORT (80), HOSTD_API_PORT (8000),
# HOSTD_METRICS_PORT (9101), HOSTD_PUBLIC_URL, HOSTD_*_IMAGE (the images;
# official by default), HOSTD_BINARIES (a directory holding hostd and hostctl
# built on this host: copied into the image instead of compiling in a builder
# stage).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ACTION="${1:-up}"
STATE_DIR="${HOSTD_STATE_DIR:-/var/lib/hostd}"
INSTANCE="${HOSTD_INSTANCE:-default}"
ENV_FILE="${HOSTD_ENV_FILE:-.env}"
COMPOSE_DIR="$STATE_DIR/compose-$INSTANCE"
export HOSTD_STATE_DIR="$STATE_DIR" HOSTD_INSTANCE="$INSTANCE"
export HOSTD_HTTP_PORT="${HOSTD_HTTP_PORT:-80}"

# ---- the engine ------------------------------------------------------------
ENGINE="${HOSTD_CONTAINER_ENGINE:-}"
if [ -z "$ENGINE" ]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    ENGINE=docker
  elif command -v podman >/dev/null; then
    ENGINE=podman
  else
    die "neither Docker (with Compose v2) nor podman is usable here (apt install podman, or https://docs.docker.com/engine/install/debian/)"
  fi
fi
PODMAN_COMPOSE_VENV=/opt/hostd/podman-compose
case "$ENGINE" in
  docker)
    docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (is dockerd running, and are you root or in the docker group?)"
    docker compose version >/dev/null 2>&1 || die "Docker Compose v2 is missing (apt install docker-compose-plugin)"
    compose() { docker compose -p "hostd-$INSTANCE" --env-file "$ENV_FILE" "$@"; } ;;
  podman)
    if command -v podman-compose >/dev/null; then PC=podman-compose; else
      PC="$PODMAN_COMPOSE_VENV/bin/podman-compose"
      if [ ! -x "$PC" ]; then
        log "installing podman-compose (PyPI) into $PODMAN_COMPOSE_VENV"
        python3 -m venv "$PODMAN_COMPOSE_VENV"
        "$PODMAN_COMPOSE_VENV/bin/pip" install -q --disable-pip-version-check 'podman-compose==1.6.0'
      fi
    fi
    compose() { "$PC" -p "hostd-$INSTANCE" --env-file "$ENV_FILE" "$@"; } ;;
  *) die "HOSTD_CONTAINER_ENGINE must be docker or podman, not '$ENGINE'" ;;
esac

if [ "$ACTION" = down ]; then
  log "stopping hostd-$INSTANCE ($ENGINE); its data stays"
  [ -f "$ENV_FILE" ] || die "$ENV_FILE missing: nothing was started with it"
  compose down > /dev/null 2>&1
  exit 0
fi
if [ "$ACTION" = purge ]; then
  log "deleting hostd-$INSTANCE ($ENGINE): containers, guests, disks, database"
  [ -f "$ENV_FILE" ] || die "$ENV_FILE missing: nothing was started with it"
  compose down -v > /dev/null 2>&1
  virsh_() { virsh -c qemu:///system "$@"; }
  for d in $(virsh_ list --all --name | grep '^hostd-' || true); do
    if virsh_ metadata "$d" https://hostd.dev/xmlns/hosting/v1 2>/dev/null | grep -q "instance=\"$INSTANCE\""; then
      virsh_ destroy "$d" >/dev/null 2>&1 || true
      # (A template for clones is transient: gone once destroyed.)
      if virsh_ dominfo "$d" >/dev/null 2>&1; then virsh_ undefine --checkpoints-metadata "$d" >/dev/null; fi
    fi
  done
  if virsh_ pool-info "hostd-$INSTANCE" >/dev/null 2>&1; then
    for v in $(pool_volumes "hostd-$INSTANCE"); do virsh_ vol-delete "$v" --pool "hostd-$INSTANCE" >/dev/null; done
    virsh_ pool-destroy "hostd-$INSTANCE" >/dev/null 2>&1 || true
    virsh_ pool-undefine "hostd-$INSTANCE" >/dev/null
  fi
  rm -rf "$COMPOSE_DIR" "$STATE_DIR/pools/$INSTANCE" "$STATE_DIR/templates/$INSTANCE"
  exit 0
fi
[ "$ACTION" = up ] || die "usage: docker-start.sh [up|down|purge]"

log "checking $ENGINE, libvirt and KVM"
[ -S /var/run/libvirt/libvirt-sock ] ||
  die "libvirtd is not running on this host (/var/run/libvirt/libvirt-sock missing): install libvirt-daemon-system and start it"
if [ -r /dev/kvm ] && grep -qw -e vmx -e svm /proc/cpuinfo; then
  echo "KVM: available (guests run accelerated)"
else
  echo "KVM: not usable here; guests run under QEMU's TCG (tens of seconds per boot; the warm pool hides it)"
fi
[ -f "$STATE_DIR/images/debian-12/disk.qcow2" ] ||
  die "no guest image: run HOSTD_STATE_DIR=$STATE_DIR ./scripts/build-image.sh on this host first"

# Secrets, made once, kept beside the compose file (or in HOSTD_ENV_FILE), 0600.
secret() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
( umask 077; touch "$ENV_FILE" )
chmod 0600 "$ENV_FILE"
for var in POSTGRES_PASSWORD REDIS_PASSWORD HOSTD_JWT_SECRET; do
  grep -q "^$var=" "$ENV_FILE" || echo "$var=$(secret)" >> "$ENV_FILE"
done

# The image: compiled in a builder stage, or this host's binaries copied in.
if [ -n "${HOSTD_BINARIES:-}" ]; then
  mkdir -p target/container
  for b in hostd hostctl; do strip -o "target/container/$b" "$HOSTD_BINARIES/$b"; done
  export HOSTD_PREBUILT=target/container
  export HOSTD_BUILDER_IMAGE="${HOSTD_BUILDER_IMAGE:-${HOSTD_BASE_IMAGE:-debian:bookworm-slim}}"
fi
log "building the hostd image"
t0=$(date +%s)
compose build hostd-api >/dev/null
echo "image built in $(( $(date +%s) - t0 )) s"

log "nginx configuration ($COMPOSE_DIR, port $HOSTD_HTTP_PORT)"
mkdir -p "$COMPOSE_DIR/nginx/tmp" "$COMPOSE_DIR/routes"
# Where the reconciler keeps the backup encryption key (mounted into it).
install -d -m 0700 /etc/hostd
chmod 0711 "$STATE_DIR" "$COMPOSE_DIR"   # nginx's workers (www-data) traverse to their temp dirs
"$ENGINE" run --rm localhost/hostd:latest nginx-conf --listen "0.0.0.0:$HOSTD_HTTP_PORT" \
  --prefix "$COMPOSE_DIR/nginx" --routes-dir "$COMPOSE_DIR/routes" > "$COMPOSE_DIR/nginx.conf.new"
mv "$COMPOSE_DIR/nginx.conf.new" "$COMPOSE_DIR/nginx.conf"

log "starting (compose up -d)"
t0=$(date +%s)
# (podman without systemd complains that it cannot schedule health checks:
# this script runs them; the output is shown only if the start fails.)
compose up -d > "$COMPOSE_DIR/up.log" 2>&1 || { cat "$COMPOSE_DIR/up.log"; die "compose up failed"; }

log "waiting for every service to be healthy"
# podman runs health checks from systemd timers; without systemd this loop runs them.
manual_health=false
[ "$ENGINE" = podman ] && [ ! -d /run/systemd/system ] && manual_health=true
services="postgres redis hostd-api hostd-reconciler nginx"
deadline=$(( $(date +%s) + ${HOSTD_START_TIMEOUT:-180} ))
while :; do
  unhealthy=""
  for s in $services; do
    id=$("$ENGINE" ps -aq --filter "label=com.docker.compose.project=hostd-$INSTANCE" \
      --filter "label=com.docker.compose.service=$s" | head -1)
    [ -n "$id" ] || { unhealthy="$unhealthy $s(missing)"; continue; }
    if [ "$("$ENGINE" inspect -f '{{.State.Status}}' "$id")" = exited ]; then
      "$ENGINE" logs --tail 20 "$id" 2>&1 | sed "s/^/$s: /"
      die "$s exited"
    fi
    if $manual_health; then
      podman healthcheck run "$id" >/dev/null 2>&1 || unhealthy="$unhealthy $s"
    else
      state=$("$ENGINE" inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo missing)
      [ "$state" = healthy ] || unhealthy="$unhealthy $s($state)"
    fi
  done
  [ -z "$unhealthy" ] && break
  if [ "$(date +%s)" -ge "$deadline" ]; then
    compose ps
    for s in $unhealthy; do compose logs --tail 20 "${s%%(*}" 2>&1 | sed "s/^/${s%%(*}: /"; done
    die "not healthy after ${HOSTD_START_TIMEOUT:-180} s:$unhealthy"
  fi
  sleep 2
done
echo "stack healthy $(( $(date +%s) - t0 )) s after compose up"

cat <<MSG

hostd is running in containers ($ENGINE; project hostd-$INSTANCE).
  Dashboard: http://127.0.0.1:${HOSTD_API_PORT:-8000}/ui/
  API:    http://127.0.0.1:${HOSTD_API_PORT:-8000}/api/v1   (health: /api/v1/health/detailed,
          contract: /api/v1/openapi.json)
  Sites:  ${HOSTD_PUBLIC_URL:-http://localhost}/<user_id>/   (nginx on port $HOSTD_HTTP_PORT)
  Logs:   compose logs -f hostd-reconciler; stop: scripts/docker-start.sh down
  Walkthrough: README.md (register, login, create a hosting).
MSG
