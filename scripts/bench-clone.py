#!/usr/bin/env python3
"""The work of scripts/bench-clone.sh (see there). Subcommands:
template DIR DOMAIN POOLDIR, clones DIR N, cleanup DIR N."""
import base64, concurrent.futures, json, os, re, subprocess, sys, time, uuid

V = ["virsh", "-c", "qemu:///system"]


def sh(*a):
    r = subprocess.run(a, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(a[:5])}…: {r.stderr.strip()}")
    return r.stdout


def call(kind, dom, cmd, timeout=5, **args):
    msg = json.dumps({"execute": cmd, "arguments": args} if args else {"execute": cmd})
    if kind == "agent":
        out = sh(*V, "qemu-agent-command", dom, "--timeout", str(timeout), msg)
    else:
        out = sh(*V, "qemu-monitor-command", dom, msg)
    return json.loads(out).get("return")


def run_in(dom, script):
    """`sh -c script` in the guest through the agent: (output, exit code)."""
    pid = call("agent", dom, "guest-exec", path="/bin/sh", arg=["-c", script], **{"capture-output": True})["pid"]
    while True:
        st = call("agent", dom, "guest-exec-status", pid=pid)
        if st["exited"]:
            return base64.b64decode(st.get("out-data", "")).decode(errors="replace").strip(), st.get("exitcode")
        time.sleep(0.05)


def wait_agent(dom, limit):
    t0 = time.time()
    while time.time() - t0 < limit:
        try:
            call("agent", dom, "guest-ping", timeout=2)
            return
        except SystemExit:
            time.sleep(0.1)
    raise SystemExit(f"{dom}: the guest agent never answered")


def render(xml, d, name, port, incoming=False):
    """A copy of hostd's domain XML as an unmanaged bench domain."""
    x = re.sub(r"<name>[^<]+</name>", f"<name>{name}</name>", xml)
    x = re.sub(r"<uuid>[^<]+</uuid>", f"<uuid>{uuid.uuid4()}</uuid>\n  <genid/>", x)
    x = re.sub(r"<metadata>.*?</metadata>", "", x, flags=re.S)
    x = re.sub(r"<disk type='volume' device='disk'>\s*<driver name='qemu' type='qcow2'[^>]*/>\s*<source pool='[^']+' volume='[^']+'/>",
               f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{d}/{name}.qcow2'/>", x, count=1)
    x = re.sub(r"<range start='\d+' to='22'/>", f"<range start='{port}' to='22'/>", x)
    x = re.sub(r"<range start='\d+' to='80'/>", f"<range start='{port + 1}' to='80'/>", x)
    x = re.sub(r"<source path='[^']+\.log'/>", f"<source path='{d}/{name}.log'/>", x)
    if incoming:
        x = x.replace("<domain type=", "<domain xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0' type=", 1)
        x = x.replace("</devices>", "</devices>\n  <qemu:commandline><qemu:arg value='-incoming'/>"
                      f"<qemu:arg value='file:{d}/memory.state'/></qemu:commandline>", 1)
    return x


def overlay(d, name, backing):
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", backing, f"{d}/{name}.qcow2", "10G")
    os.chown(f"{d}/{name}.qcow2", *owner(d))


def owner(d):
    st = os.stat(d)
    return st.st_uid, st.st_gid


def free_ports(n):
    base = 30000 + os.getpid() % 10000
    return [base + 2 * i for i in range(n)]


def template(d, dom, pool):
    xml = sh(*V, "dumpxml", "--inactive", dom)
    vol = re.search(r"<source pool='[^']+' volume='([^']+)'", xml).group(1)
    base = json.loads(sh("qemu-img", "info", "-U", "--output=json", f"{pool}/{vol}"))["full-backing-filename"]
    open(f"{d}/domain.xml", "w").write(xml)
    overlay(d, "bench-template", base)
    with open(f"{d}/template.xml", "w") as f:
        f.write(render(xml, d, "bench-template", free_ports(1)[0] - 2))
    t0 = time.time()
    sh(*V, "create", f"{d}/template.xml")
    wait_agent("bench-template", 600)
    out, _ = run_in("bench-template", "systemctl is-system-running --wait")
    t1 = time.time()
    call("agent", "bench-template", "guest-fsfreeze-freeze", timeout=30)
    call("qemu", "bench-template", "stop")
    call("qemu", "bench-template", "migrate", uri=f"file:{d}/memory.state")
    while (s := call("qemu", "bench-template", "query-migrate"))["status"] not in ("completed", "failed"):
        time.sleep(0.05)
    t2 = time.time()
    sh(*V, "destroy", "bench-template")
    if s["status"] != "completed":
        raise SystemExit(f"save failed: {s}")
    print(f"bench-clone: template boot to '{out}' {t1 - t0:.1f} s; freeze + save {t2 - t1:.2f} s; "
          f"memory file {os.path.getsize(f'{d}/memory.state') / 2**20:.0f} MiB of "
          f"{s['ram']['total'] / 2**20:.0f} MiB RAM")


def clones(d, n):
    xml = open(f"{d}/domain.xml").read()
    names, ports = [f"bench-clone{i}" for i in range(n)], free_ports(n)
    for name, port in zip(names, ports):
        overlay(d, name, f"{d}/bench-template.qcow2")
        with open(f"{d}/{name}.xml", "w") as f:
            f.write(render(xml, d, name, port, incoming=True))

    def one(name):
        t = time.time()
        sh(*V, "create", f"{d}/{name}.xml")
        wait_agent(name, 120)
        call("agent", name, "guest-fsfreeze-thaw", timeout=30)
        return time.time() - t

    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        took = list(ex.map(one, names))
    total = time.time() - t0
    print(f"bench-clone: {n} clones at once: all answering in {total:.2f} s; each "
          + ", ".join(f"{t:.2f}" for t in took) + " s")
    for name, port in zip(names, ports):
        code = subprocess.run(["curl", "-s", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}",
                               f"http://127.0.0.1:{port + 1}/"], capture_output=True, text=True).stdout
        banner = subprocess.run(["sh", "-c", f"echo | timeout 5 nc -w 3 127.0.0.1 {port} | head -c 20"],
                                capture_output=True, text=True).stdout.strip()
        print(f"bench-clone: {name}: site {code}, ssh '{banner}'")
    ident = "cat /proc/sys/kernel/random/boot_id /etc/machine-id; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; sha256sum < /etc/ssh/ssh_host_ed25519_key.pub | cut -c1-16"
    for stage in ("as restored", "after the identity reset"):
        seen = {}
        for name in names[:2]:
            seen[name] = run_in(name, ident)[0].split("\n")
        a, b = seen[names[0]], seen[names[1]]
        same = [k for k, x, y in zip(("boot_id", "machine-id", "urandom", "ssh host key"), a, b) if x == y]
        print(f"bench-clone: {names[0]} vs {names[1]} {stage}: the same {', '.join(same) or 'nothing'}")
        if stage == "as restored":
            t = time.time()
            for name in names[:2]:
                out, rc = run_in(name, "rm -f /etc/ssh/ssh_host_*_key* && "
                                 "ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key && "
                                 "ssh-keygen -q -t ecdsa -N '' -f /etc/ssh/ssh_host_ecdsa_key && "
                                 "systemd-id128 new > /etc/machine-id && systemctl reload ssh")
                if rc != 0:
                    raise SystemExit(f"{name}: identity reset failed: {out}")
            print(f"bench-clone: identity reset of 2 clones (SSH host keys, machine-id) {time.time() - t:.2f} s")


def cleanup(d, n):
    for name in ["bench-template"] + [f"bench-clone{i}" for i in range(n)]:
        subprocess.run([*V, "destroy", name], capture_output=True)


if __name__ == "__main__":
    cmd, d = sys.argv[1], sys.argv[2]
    if cmd == "template":
        template(d, sys.argv[3], sys.argv[4])
    elif cmd == "clones":
        clones(d, int(sys.argv[3]))
    else:
        cleanup(d, int(sys.argv[3]))
