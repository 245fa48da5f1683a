#!/bin/sh
# Entry point of the locally built Redis image (scripts/build-container-base.sh),
# like the official image's: a redis-server command runs as the `redis`
# user, which owns /data (where docker-compose.yml puts its socket).
set -eu
if [ "${1:-}" = redis-server ] && [ "$(id -u)" = 0 ]; then
  mkdir -p /data
  chown redis:redis /data
  exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
