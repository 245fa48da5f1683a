#!/usr/bin/env bash
# Container images without a registry, from Debian's packages only (for
# machines that cannot pull, like CI): one bookworm root file system made by
# mmdebstrap, imported with `podman import` (or `docker import`) as
#   localhost/hostd-base:bookworm      BASE of the Dockerfile (the runtime
#                                      packages hostd needs are already in)
#   localhost/hostd-postgres:15        stands in for postgres:15 (same
#                                      POSTGRES_* variables, data directory,
#                                      port, pg_isready)
#   localhost/hostd-redis:7            stands in for redis:7
#   localhost/hostd-nginx:1.22         stands in for nginx:1.22
# The four share one root file system (one bootstrap, about a minute);
# only their entry points differ. A real Docker host keeps the official
# images (docker-compose.yml's defaults). Skipped when images of this
# recipe exist. Prints the variables that select them (for .env).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ENGINE="${HOSTD_CONTAINER_ENGINE:-$(command -v podman >/dev/null 2>&1 && echo podman || echo docker)}"
MIRROR="${HOSTD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
recipe=$(cat "$0" deploy/container/*-entrypoint.sh | sha256sum | cut -c1-12)
PKGS=ca-certificates,libvirt0,nginx-light,genisoimage,nftables,qemu-utils,postgresql-15,redis-server,procps

selection() {
  echo "HOSTD_BASE_IMAGE=localhost/hostd-base:bookworm"
  echo "HOSTD_POSTGRES_IMAGE=localhost/hostd-postgres:15"
  echo "HOSTD_REDIS_IMAGE=localhost/hostd-redis:7"
  echo "HOSTD_NGINX_IMAGE=localhost/hostd-nginx:1.22"
}
have=$("$ENGINE" image inspect -f '{{index .Labels "dev.hostd.recipe"}}' localhost/hostd-nginx:1.22 2>/dev/null || true)
if [ "$have" = "$recipe" ]; then
  log "container base images are up to date (recipe $recipe)" >&2
  selection
  exit 0
fi
command -v mmdebstrap >/dev/null || die "mmdebstrap missing (run scripts/install-deps.sh)"
work=$(mktemp -d /var/tmp/hostd-container.XXXXXX)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
log "bootstrapping the container root file system (Debian bookworm, $PKGS)" >&2
mmdebstrap --variant=minbase --mode=root --quiet --aptopt='APT::Install-Recommends "false"' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --include="$PKGS" \
  --customize-hook="copy-in deploy/container/postgres-entrypoint.sh deploy/container/redis-entrypoint.sh /usr/local/bin" \
  --customize-hook='chmod 0755 "$1"/usr/local/bin/*-entrypoint.sh' \
  --customize-hook='rm -rf "$1"/var/lib/postgresql/15/main "$1"/etc/postgresql/15/main "$1"/var/lib/apt/lists/*' \
  --customize-hook='ln -sf /dev/stderr "$1/var/log/nginx/error.log"; ln -sf /dev/stdout "$1/var/log/nginx/access.log"' \
  bookworm "$work/rootfs.tar" "$MIRROR" >&2
label="LABEL dev.hostd.recipe=$recipe"
"$ENGINE" import -q --change "$label" --change 'CMD ["/bin/bash"]' \
  "$work/rootfs.tar" localhost/hostd-base:bookworm >/dev/null
"$ENGINE" import -q --change "$label" --change 'ENV PGDATA=/var/lib/postgresql/data' \
  --change 'ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]' --change 'CMD []' \
  "$work/rootfs.tar" localhost/hostd-postgres:15 >/dev/null
"$ENGINE" import -q --change "$label" --change 'ENTRYPOINT ["/usr/local/bin/redis-entrypoint.sh"]' \
  --change 'CMD ["redis-server"]' \
  "$work/rootfs.tar" localhost/hostd-redis:7 >/dev/null
"$ENGINE" import -q --change "$label" --change 'CMD ["nginx", "-g", "daemon off;"]' \
  "$work/rootfs.tar" localhost/hostd-nginx:1.22 >/dev/null
log "container base images built in $(( $(date +%s) - start )) s ($(du -h "$work/rootfs.tar" | cut -f1) root file system)" >&2
selection
