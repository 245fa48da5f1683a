#!/usr/bin/env bash
# Reconciler benchmark: time for N hostings to converge (test:///default, real
# Postgres and nginx, stand-in guests), and the cost of an idle full resync.
# Usage: scripts/bench-reconcile.sh [N ...]   (default: 100 1000 5000)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
prepare_host
ulimit -n 65536 2>/dev/null || true
# The benchmark logs every statement during the idle resync it counts (the
# server-wide log_statement, set through su); reset here whatever happens.
trap 'su postgres -c "psql -qc \"alter system reset log_statement\" -c \"select pg_reload_conf()\"" >/dev/null; drop_scratch_databases' EXIT
export PG_LOG="${PG_LOG:-$(ls /var/log/postgresql/postgresql-*-main.log | tail -1)}"
RUST_LOG="${RUST_LOG:-error}" cargo run --release --locked --example bench_reconcile -- "$@"
