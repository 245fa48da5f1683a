#!/usr/bin/env bash
# TLS edge benchmark (issue 23): nginx with N certificates in the two layouts
# nginx 1.22 allows (a server block per certificate, or one variable
# `ssl_certificate` chosen by a map of the SNI name), in one run: start and
# reload times, the master's memory and full TLS handshakes per second.
# Usage: scripts/bench-tls.sh [N ...]   (default: 1000 5000; env CLIENTS,
# BENCH_SECONDS). Private nginx on 127.0.0.1, throwaway test certificates.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
./scripts/install-deps.sh >/dev/null
if ! python3 -c 'import cryptography' 2>/dev/null; then
  log "installing python3-cryptography (Debian)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-cryptography
fi
exec python3 scripts/bench-tls.py "$@"
