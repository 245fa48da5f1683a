#!/usr/bin/env python3
"""Where the host's CPU time went during a benchmark (issue 26's burst).

  cpu-account.py snap FILE         writes a snapshot: the host's busy CPU
                                   seconds (all cores, /proc/stat) and each
                                   process's own CPU seconds (/proc/PID/stat)
  cpu-account.py diff FILE WALL    prints the CPU seconds used since FILE by
                                   kind of process, the host's busy total,
                                   and what that total means on this many
                                   cores for WALL seconds

A process born after the snapshot counts from zero; one that ended before
the second reading (curl, jq, qemu-img, ...) is only in the busy total.
"""
import json
import os
import sys

TICK = os.sysconf("SC_CLK_TCK")
KINDS = [
    ("qemu", ("qemu-system",)),
    ("passt", ("passt",)),
    ("libvirt", ("libvirtd", "virtqemud", "virtlogd", "virtstoraged")),
    ("hostd", ("hostd",)),
    ("nginx", ("nginx",)),
    ("postgres", ("postgres",)),
    ("qemu-img", ("qemu-img",)),
]


def busy():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: all but idle and iowait
    return (sum(v[:8]) - v[3] - v[4]) / TICK


def procs():
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                s = f.read()
        except OSError:
            continue
        comm = s[s.index("(") + 1 : s.rindex(")")]
        f = s[s.rindex(")") + 2 :].split()
        # fields 14 and 15 of stat (utime stime: the process's own, not
        # its children's, which may have run before the snapshot), 22:
        # starttime
        cpu = sum(int(x) for x in f[11:13]) / TICK
        out[f"{pid}:{f[19]}"] = [comm, cpu]
    return out


def kind(comm):
    for k, names in KINDS:
        if any(comm.startswith(n) for n in names):
            return k
    return "other"


def main():
    if sys.argv[1] == "snap":
        with open(sys.argv[2], "w") as f:
            json.dump({"busy": busy(), "procs": procs()}, f)
        return
    with open(sys.argv[2]) as f:
        before = json.load(f)
    wall = float(sys.argv[3])
    now = procs()
    used = {}
    for key, (comm, cpu) in now.items():
        was = before["procs"].get(key, [comm, 0.0])[1]
        used[kind(comm)] = used.get(kind(comm), 0.0) + max(cpu - was, 0.0)
    total = busy() - before["busy"]
    cores = os.cpu_count()
    parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(used.items(), key=lambda x: -x[1]) if v >= 0.05)
    print(
        f"CPU seconds used in {wall:.1f} s: {total:.1f} busy on {cores} cores "
        f"({100 * total / (cores * wall):.0f} % of all); by process: {parts}; "
        f"that work alone needs at least {total / cores:.1f} s on {cores} cores"
    )


if __name__ == "__main__":
    main()
