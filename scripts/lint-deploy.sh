#!/usr/bin/env bash
# Lints what cannot be run here: the systemd units in deploy/systemd, docker-compose.yml against the Compose
# schema rules we rely on (every service has a health check), scripts/docker-start.sh (syntax; `docker
# compose config` too where a Docker client with Compose exists), and crds/hosting.yaml with kubernetes-validate.
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
bash -n scripts/docker-start.sh
if docker compose version >/dev/null 2>&1; then
  HOSTD_JWT_SECRET=lint-only-secret-lint-only-secret-0000 docker compose config -q
  echo "docker compose config: ok"
fi
# deploy/nginx.conf is what `hostd nginx-conf` writes for the compose layout.
want=$(cargo run --locked -q --bin hostd -- nginx-conf --listen 0.0.0.0:80 \
  --prefix /var/lib/hostd/nginx --routes-dir /var/lib/hostd/nginx-routes)
[ "$want" = "$(cat deploy/nginx.conf)" ] || {
  echo "deploy/nginx.conf differs from \`hostd nginx-conf\`: regenerate it" >&2
  exit 1
}
echo "deploy/nginx.conf: matches hostd nginx-conf"
