#!/usr/bin/env bash
# Installs what the browser test, the OpenAPI fuzzing, the ACME test and the
# container deployment's test need (idempotent): Debian's chromium,
# chromium-driver, pebble (a test ACME CA), podman (with runc, set as its
# runtime) and prometheus (promtool), and a Python virtualenv with pinned selenium, schemathesis and
# moto[server] (the S3 store of the off-host backup tests) from PyPI.
# Prints nothing but progress; sets
# nothing: callers use "$TEST_VENV/bin/python".
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
TEST_VENV="${HOSTD_TEST_VENV:-/var/cache/hostd-test/venv}"
PY_PKGS=(selenium==4.51.0 schemathesis==4.32.5 "moto[server]==5.2.6")

missing=()
# podman (with runc: Debian's crun refuses hybrid cgroups; netavark needs
# iptables) runs the container deployment's end-to-end test.
# prometheus brings promtool (the alert rules' tests, scripts/lint-deploy.sh).
for p in chromium chromium-driver pebble podman runc netavark aardvark-dns iptables prometheus; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The packages' scripts start no daemon (prometheus would): the tests
  # start what they need themselves.
  made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
fi

# podman's defaults that this kind of host refuses: crun (hybrid cgroups)
# and the engine's default limits (they cannot be raised here).
conf=/etc/containers/containers.conf.d/50-hostd.conf
if [ ! -f "$conf" ]; then
  mkdir -p "$(dirname "$conf")"
  printf '[containers]\ndefault_ulimits = ["nofile=16384:16384", "nproc=4096:4096"]\n[engine]\nruntime = "runc"\n' > "$conf"
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
