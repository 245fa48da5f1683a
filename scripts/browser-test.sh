#!/usr/bin/env bash
# The dashboard in a real browser: installs Debian's chromium and
# chromium-driver and Selenium (scripts/test-tools.sh), builds the live
# harness (examples/ui_harness) and runs tests/browser/test_dashboard.py.
# Screenshots of every page: target/artifacts/browser.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
./scripts/test-tools.sh
TEST_VENV="${HOSTD_TEST_VENV:-/var/cache/hostd-test/venv}"
cargo build --locked -q --example ui_harness
ARTIFACTS="${ARTIFACTS:-$PWD/target/artifacts/browser}" \
  "$TEST_VENV/bin/python" tests/browser/test_dashboard.py target/debug/examples/ui_harness
