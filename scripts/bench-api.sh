#!/usr/bin/env bash
# API benchmark: health p99 under 50 concurrent logins, and GET /host/my throughput.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
prepare_host
RUST_LOG=error cargo run --release --locked --example bench_api
