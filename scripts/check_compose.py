#!/usr/bin/env python3
"""Checks docker-compose.yml without a Docker engine: valid YAML, the services
hostd needs, images or builds, that every volume/env reference is sane, that
Postgres and Redis publish no port and that no password is written in it."""
import sys
import yaml

path = sys.argv[1]
with open(path) as f:
    doc = yaml.safe_load(f)
errors = []
services = doc.get("services") or {}
for name in ["postgres", "redis", "hostd-api", "hostd-reconciler", "nginx"]:
    if name not in services:
        errors.append(f"missing service {name}")
named_volumes = set((doc.get("volumes") or {}).keys())
# Images the file builds (a service may run one another service builds).
built_images = {svc.get("image") for svc in services.values() if "build" in svc}
for name, svc in services.items():
    if "image" not in svc and "build" not in svc:
        errors.append(f"{name}: needs image or build")
    for v in svc.get("volumes", []):
        src = v.split(":")[0] if isinstance(v, str) else v.get("source")
        if src and not src.startswith(("/", ".", "${")) and src not in named_volumes:
            errors.append(f"{name}: volume {src} is not declared")
    for dep in (svc.get("depends_on") or {}):
        if dep not in services:
            errors.append(f"{name}: depends on unknown service {dep}")
    hc = svc.get("healthcheck") or {}
    test = hc.get("test")
    if not test or hc.get("disable"):
        errors.append(f"{name}: needs a healthcheck")
    elif isinstance(test, list) and test[0] not in ("CMD", "CMD-SHELL"):
        errors.append(f"{name}: healthcheck test must start with CMD or CMD-SHELL")
    elif isinstance(test, list) and test[0] == "CMD" and test[1] == "hostd" and "build" not in svc \
            and svc.get("image") not in built_images:
        errors.append(f"{name}: a 'hostd probe' healthcheck needs the hostd image")
    env = svc.get("environment") or {}
    if name.startswith("hostd-"):
        for var in ["DATABASE_URL", "HOSTD_JWT_SECRET"]:
            if var not in env:
                errors.append(f"{name}: missing {var}")
for name in ["postgres", "redis"]:
    if (services.get(name) or {}).get("ports"):
        errors.append(f"{name}: publishes ports (it must be reachable only inside the deployment)")
pg_env = (services.get("postgres") or {}).get("environment") or {}
if not str(pg_env.get("POSTGRES_PASSWORD", "")).startswith("${"):
    errors.append("postgres: POSTGRES_PASSWORD must come from the environment (.env), not the file")
if "--requirepass" not in ((services.get("redis") or {}).get("command") or []):
    errors.append("redis: no --requirepass")
if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"{path}: {len(services)} services ok")
