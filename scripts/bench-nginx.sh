#!/usr/bin/env bash
# nginx benchmark: `nginx -t` (what a reload parses) with N tenants' routes,
# per-hosting location files against the routes.map layout, in one run.
# Usage: scripts/bench-nginx.sh [N ...]   (default: 1000 5000)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
prepare_host
cargo run --release --locked --example bench_nginx -- "$@"
