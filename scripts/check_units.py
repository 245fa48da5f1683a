#!/usr/bin/env python3
"""Lints the systemd units in deploy/systemd/ without systemd (none runs
here): known sections and keys, absolute Exec paths, and the hardening every
hostd unit must keep. `systemd-analyze verify` is run too where it exists."""
import pathlib
import shutil
import subprocess
import sys

KEYS = {
    "Unit": {"Description", "Documentation", "After", "Before", "Wants", "Requires", "BindsTo", "PartOf", "Conflicts"},
    "Service": {
        "Type", "User", "Group", "SupplementaryGroups", "EnvironmentFile", "Environment", "ExecStartPre", "ExecStart",
        "ExecReload", "Restart", "RestartSec", "TimeoutStopSec", "NoNewPrivileges", "ProtectSystem", "ReadWritePaths",
        "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules",
        "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock", "ProtectHostname", "RestrictSUIDSGID",
        "RestrictRealtime", "RestrictNamespaces", "LockPersonality", "MemoryDenyWriteExecute", "CapabilityBoundingSet",
        "AmbientCapabilities", "RestrictAddressFamilies", "SystemCallArchitectures", "SystemCallFilter", "UMask",
    },
    "Install": {"WantedBy", "RequiredBy", "Alias"},
}
REQUIRED = {
    "NoNewPrivileges": {"yes"},
    "ProtectSystem": {"strict", "full"},
    "ProtectHome": {"yes", "read-only"},
    "PrivateTmp": {"yes"},
    "ProtectKernelModules": {"yes"},
}


def lint(path: pathlib.Path) -> list[str]:
    errors, section, seen = [], None, {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            if section not in KEYS:
                errors.append(f"{path}:{n}: unknown section [{section}]")
            continue
        if "=" not in line or section is None:
            errors.append(f"{path}:{n}: not a key=value line in a section: {line}")
            continue
        key, value = (p.strip() for p in line.split("=", 1))
        if key not in KEYS.get(section, set()):
            errors.append(f"{path}:{n}: unknown key {key} in [{section}]")
        if key.startswith("Exec") and not value.lstrip("-@:+!").startswith("/"):
            errors.append(f"{path}:{n}: {key} must name an absolute path")
        seen[key] = value
    for key, allowed in REQUIRED.items():
        if seen.get(key) not in allowed:
            errors.append(f"{path}: hardening: {key} must be one of {sorted(allowed)} (is {seen.get(key)!r})")
    for key in ("ExecStart", "CapabilityBoundingSet", "Restart"):
        if key not in seen:
            errors.append(f"{path}: {key} missing")
    if "WantedBy" not in seen:
        errors.append(f"{path}: [Install] WantedBy missing")
    return errors


def main() -> int:
    units = sorted(pathlib.Path(sys.argv[1]).glob("*.service"))
    if not units:
        print("no units found", file=sys.stderr)
        return 1
    errors = [e for u in units for e in lint(u)]
    if shutil.which("systemd-analyze"):
        r = subprocess.run(["systemd-analyze", "verify", *map(str, units)], capture_output=True, text=True)
        # The binary is not installed at /usr/local/bin here; anything else counts.
        errors += [l for l in r.stderr.splitlines() if l.strip() and "/usr/local/bin/hostd" not in l]
    for e in errors:
        print(e, file=sys.stderr)
    print(f"{len(units)} systemd units: {'ok' if not errors else f'{len(errors)} problems'}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
