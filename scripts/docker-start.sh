#!/usr/bin/env bash
# One-click hostd on Docker (the layout of docker-compose.yml): checks that
# Docker and Compose work, that libvirtd runs on this host (hostd drives the
# host's hypervisor through its socket) and whether KVM is usable, builds
# the image, starts the stack, waits until every service is healthy and
# prints the URLs. Run as root on the hypervisor host. Our development
# machines have no Docker engine, so this script is linted there
# (`bash -n`, scripts/lint-deploy.sh), never run.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { printf 'docker-start: %s\n' "$*" >&2; exit 1; }
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

say "checking Docker, Compose, libvirt and KVM"
command -v docker >/dev/null || die "docker is not installed (https://docs.docker.com/engine/install/debian/)"
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (is dockerd running, and are you root or in the docker group?)"
docker compose version >/dev/null 2>&1 || die "Docker Compose v2 is missing (apt install docker-compose-plugin)"
[ -S /var/run/libvirt/libvirt-sock ] ||
  die "libvirtd is not running on this host (/var/run/libvirt/libvirt-sock missing): install libvirt-daemon-system and start it"
if [ -r /dev/kvm ] && grep -qw -e vmx -e svm /proc/cpuinfo; then
  echo "KVM: available (guests run accelerated)"
else
  echo "KVM: not usable here; guests run under QEMU's TCG (tens of seconds per boot; the warm pool hides it)"
fi
[ -f /var/lib/hostd/images/debian-12/disk.qcow2 ] ||
  die "no guest image: run HOSTD_STATE_DIR=/var/lib/hostd ./scripts/build-image.sh on this host first"

# A JWT secret kept beside the compose file (0600), made once.
if [ ! -s .env ] || ! grep -q '^HOSTD_JWT_SECRET=' .env; then
  umask 077
  echo "HOSTD_JWT_SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >> .env
fi

say "building and starting (docker compose up -d --build)"
docker compose up -d --build

say "waiting for every service to be healthy"
services=$(docker compose config --services)
deadline=$(( $(date +%s) + 180 ))
while :; do
  unhealthy=""
  for s in $services; do
    id=$(docker compose ps -q "$s")
    state=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id" 2>/dev/null || echo missing)
    [ "$state" = healthy ] || unhealthy="$unhealthy $s($state)"
  done
  [ -z "$unhealthy" ] && break
  [ "$(date +%s)" -lt "$deadline" ] || { docker compose ps; die "not healthy after 180 s:$unhealthy"; }
  sleep 3
done

cat <<MSG

hostd is running (docker compose ps; docker compose logs -f hostd-reconciler).
  Dashboard: http://127.0.0.1:8000/ui/
  API:    http://127.0.0.1:8000/api/v1   (health: /api/v1/health/detailed,
          contract: /api/v1/openapi.json)
  Sites:  ${HOSTD_PUBLIC_URL:-http://localhost}/<user_id>/
  Walkthrough: README.md (register, login, create a hosting).
MSG
