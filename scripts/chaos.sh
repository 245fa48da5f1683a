#!/usr/bin/env bash
# Chaos soak against real libvirt: N users do random create/stop/start/resize/
# delete through the API while the reconciler is SIGKILLed and restarted at
# random and domains/route files are tampered with; then it waits for
# convergence and checks the invariants (no leaks, no API 5xx, power states
# match). Prints the counts; exits non-zero on any violation.
# Usage: scripts/chaos.sh DURATION_SECONDS USERS   (test.sh runs a short one)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
DURATION="${1:-120}"; USERS="${2:-4}"
./scripts/install-deps.sh >/dev/null
ensure_cargo
start_postgres
start_libvirt
./scripts/build-image.sh
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://hostd:hostd@127.0.0.1:5432/postgres}"
CHAOS_SECS="$DURATION" CHAOS_USERS="$USERS" cargo test --locked --test crash_matrix chaos_soak -- --ignored --nocapture
