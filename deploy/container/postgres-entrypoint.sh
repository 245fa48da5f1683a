#!/bin/sh
# Entry point of the locally built Postgres image (scripts/build-container-base.sh),
# standing in for the official postgres image's, for what docker-compose.yml
# uses of it: POSTGRES_USER, POSTGRES_PASSWORD (required), POSTGRES_DB and
# PGDATA. The first start creates the cluster (password authentication,
# scram-sha-256, for every network client) and the database; then the
# server runs in the foreground as `postgres`, listening on every address of
# the container (reachable only on the compose network unless published).
set -eu
: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=postgres}"
: "${POSTGRES_DB:=$POSTGRES_USER}"
[ -n "${POSTGRES_PASSWORD:-}" ] || { echo "postgres-entrypoint: POSTGRES_PASSWORD is required" >&2; exit 1; }
bin=/usr/lib/postgresql/15/bin
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
mkdir -p "$PGDATA" /run/postgresql
chown postgres:postgres "$PGDATA" /run/postgresql
chmod 0700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pw=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pw"
  chown postgres "$pw"
  as_pg "$bin/initdb" -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pw" -E UTF8 \
    --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f "$pw"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    as_pg "$bin/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w -s start
    as_pg psql -q -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres \
      -c "create database \"$POSTGRES_DB\" owner \"$POSTGRES_USER\""
    as_pg "$bin/pg_ctl" -D "$PGDATA" -m fast -w -s stop
  fi
  echo "postgres-entrypoint: cluster created in $PGDATA"
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups "$bin/postgres" -D "$PGDATA" -c listen_addresses='*' "$@"
