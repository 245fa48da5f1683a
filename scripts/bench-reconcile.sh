#!/usr/bin/env bash
# Reconciler benchmark: time for N hostings to converge (test:///default, real
# Postgres and nginx, stand-in guests), and the cost of an idle full resync.
# Usage: scripts/bench-reconcile.sh [N ...]   (default: 100 1000 5000)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
./scripts/install-deps.sh >/dev/null
ensure_cargo
start_postgres
start_libvirt
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://hostd:hostd@127.0.0.1:5432/postgres}"
ulimit -n 65536 2>/dev/null || true
RUST_LOG=error cargo run --release --locked --example bench_reconcile -- "$@"
