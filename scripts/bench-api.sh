#!/usr/bin/env bash
# API benchmark: health p99 under 100 concurrent logins, GET /host/my throughput,
# then the read path against nginx (scripts/bench-read.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
prepare_host
trap drop_scratch_databases EXIT
RUST_LOG=error cargo run --release --locked --example bench_api
# The read path against nginx `return 200`, in the same run (wrk, 64
# connections), and GET /host/my at a fixed 1000 requests/s.
./scripts/bench-read.sh
