#!/usr/bin/env bash
# Lints the deployment files: the systemd units in deploy/systemd, docker-compose.yml against the
# rules we rely on (every service has a health check, Postgres and Redis publish no port, no
# password written in it; `docker compose config` too where a Docker client with Compose exists;
# the Prometheus config and alert rules with their promtool tests;
# scripts/container-e2e.sh runs it under podman), the scripts' syntax, and crds/hosting.yaml with
# kubernetes-validate.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/lint-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q kubernetes-validate pyyaml
fi
"$venv/bin/kubernetes-validate" --strict crds/hosting.yaml
"$venv/bin/python" scripts/check_compose.py docker-compose.yml
"$venv/bin/python" scripts/check_units.py deploy/systemd
# The Prometheus scrape config and alert rules, and the rules' unit tests
# (promtool from Debian's prometheus package, installed by test-tools.sh).
if command -v promtool >/dev/null; then
  promtool check config deploy/prometheus/prometheus.yml
  (cd deploy/prometheus && promtool test rules hostd-rules.test.yml)
else
  echo "promtool is missing: run scripts/test-tools.sh" >&2
  exit 1
fi
bash -n scripts/docker-start.sh scripts/container-e2e.sh scripts/build-container-base.sh
if docker compose version >/dev/null 2>&1; then
  HOSTD_JWT_SECRET=lint POSTGRES_PASSWORD=lint REDIS_PASSWORD=lint docker compose config -q
  echo "docker compose config: ok"
fi
