#!/usr/bin/env bash
# Installs what the browser test, the OpenAPI fuzzing and the ACME test need
# (idempotent): Debian's chromium, chromium-driver and pebble (a test ACME CA), and a Python virtualenv with pinned
# selenium and schemathesis from PyPI. Prints nothing but progress; sets
# nothing: callers use "$TEST_VENV/bin/python".
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
TEST_VENV="${HOSTD_TEST_VENV:-/var/cache/hostd-test/venv}"
PY_PKGS=(selenium==4.51.0 schemathesis==4.32.5)

missing=()
for p in chromium chromium-driver pebble; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

stamp="$TEST_VENV/.hostd-pkgs"
if [ "$(cat "$stamp" 2>/dev/null)" != "${PY_PKGS[*]}" ]; then
  log "creating $TEST_VENV (${PY_PKGS[*]})"
  rm -rf "$TEST_VENV"
  mkdir -p "$(dirname "$TEST_VENV")"
  python3 -m venv "$TEST_VENV"
  "$TEST_VENV/bin/pip" install -q --disable-pip-version-check "${PY_PKGS[@]}"
  echo "${PY_PKGS[*]}" > "$stamp"
fi
