#!/usr/bin/env bash
# API benchmark: health p99 under 50 concurrent logins, and GET /host/my throughput.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
./scripts/install-deps.sh >/dev/null
ensure_cargo
start_postgres
start_libvirt
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://hostd:hostd@127.0.0.1:5432/postgres}"
RUST_LOG=error cargo run --release --locked --example bench_api
