#!/usr/bin/env bash
# Chaos soak against real libvirt: N users do random create/stop/start/resize/
# delete through the API while the reconciler is SIGKILLed and restarted at
# random and domains/route entries are tampered with; then it waits for
# convergence and checks the invariants (no leaks, no API 5xx, power states
# match). Prints the counts; exits non-zero on any violation.
# Usage: scripts/chaos.sh DURATION_SECONDS USERS   (test.sh runs a short one)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
DURATION="${1:-120}"; USERS="${2:-4}"
prepare_host
./scripts/build-image.sh
CHAOS_SECS="$DURATION" CHAOS_USERS="$USERS" cargo test --locked --test crash_matrix chaos_soak -- --ignored --nocapture
