#!/usr/bin/env python3
"""Checks docker-compose.yml without a Docker engine: valid YAML, the services
hostd needs, images or builds, and that every volume/env reference is sane."""
import sys
import yaml

path = sys.argv[1]
with open(path) as f:
    doc = yaml.safe_load(f)
errors = []
services = doc.get("services") or {}
for name in ["postgres", "hostd-api", "hostd-reconciler", "nginx"]:
    if name not in services:
        errors.append(f"missing service {name}")
named_volumes = set((doc.get("volumes") or {}).keys())
for name, svc in services.items():
    if "image" not in svc and "build" not in svc:
        errors.append(f"{name}: needs image or build")
    for v in svc.get("volumes", []):
        src = v.split(":")[0] if isinstance(v, str) else v.get("source")
        if src and not src.startswith(("/", ".")) and src not in named_volumes:
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
    elif isinstance(test, list) and test[0] == "CMD" and test[1] == "hostd" and "build" not in svc:
        errors.append(f"{name}: a 'hostd probe' healthcheck needs the hostd image")
    env = svc.get("environment") or {}
    if name.startswith("hostd-"):
        for var in ["DATABASE_URL", "HOSTD_JWT_SECRET"]:
            if var not in env:
                errors.append(f"{name}: missing {var}")
if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"{path}: {len(services)} services ok")
