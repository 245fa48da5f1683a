#!/usr/bin/env python3
"""TLS edge benchmark (issue 23): which nginx layout serves many certificates.

nginx 1.22 (Debian 12) has no cache for a variable `ssl_certificate`: it
reads and parses the files named by the variable on every handshake. The
alternative is one `server` block per certificate, all loaded at (re)load.
For N certificates (default 1000 and 5000), in one run, this prints for each
layout: the time a fresh nginx takes to start serving, the time a reload
takes until the new configuration answers, the master's memory, and the TLS
handshakes per second that CLIENTS client processes complete against random
names for BENCH_SECONDS seconds (full handshakes: no session reuse), each with a
small HTTP request.

Everything stays on 127.0.0.1 with a private nginx and test certificates
made here (a throwaway CA, ECDSA P-256 leaves). Usage:
    scripts/bench-tls.py [N ...]      (env: CLIENTS=2 BENCH_SECONDS=8)
"""

import datetime
import multiprocessing
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CLIENTS = int(os.environ.get("CLIENTS", "2"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))
DOMAIN = "sites.test"


def name(i):
    return f"u{i}.{DOMAIN}"


def make_certs(d, n):
    """A CA and n leaf certificates (cert + key per name) under d."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostd bench CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    with open(os.path.join(d, "ca.pem"), "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    os.makedirs(os.path.join(d, "certs"), exist_ok=True)
    for i in range(n):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name(i))]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name(i))]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        base = os.path.join(d, "certs", name(i))
        with open(base + ".crt", "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
            f.write(ca.public_bytes(serialization.Encoding.PEM))
        with open(base + ".key", "wb") as f:
            f.write(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )


COMMON = """
worker_processes auto;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
{body}
}}
"""


def layout_blocks(d, n, port, gen):
    """One server block per certificate."""
    out = [f"    server_names_hash_max_size {max(512, 2 * n)}; server_names_hash_bucket_size 128;"]
    for i in range(n):
        c = os.path.join(d, "certs", name(i))
        out.append(
            f"    server {{ listen 127.0.0.1:{port} ssl; server_name {name(i)};\n"
            f"        ssl_certificate {c}.crt; ssl_certificate_key {c}.key;\n"
            f'        location / {{ return 200 "{gen}"; }} }}'
        )
    return "\n".join(out)


def layout_variable(d, n, port, gen):
    """One server block; the certificate named by a map of the SNI name."""
    with open(os.path.join(d, "certs.map"), "w") as f:
        for i in range(n):
            f.write(f"{name(i)} {os.path.join(d, 'certs', name(i))};\n")
    fallback = os.path.join(d, "certs", name(0))
    return (
        f"    map_hash_max_size {max(4096, 2 * n)}; map_hash_bucket_size 128;\n"
        f"    map $ssl_server_name $cert {{ default {fallback}; include {d}/certs.map; }}\n"
        f"    server {{ listen 127.0.0.1:{port} ssl default_server;\n"
        f"        ssl_certificate $cert.crt; ssl_certificate_key $cert.key;\n"
        f'        location / {{ return 200 "{gen}"; }} }}'
    )


def write_conf(d, layout, n, port, gen):
    body = layout(d, n, port, gen)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(COMMON.format(d=d, body=body))
    return conf


def fetch(port, i, ca, timeout=5.0):
    ctx = ssl.create_default_context(cafile=ca)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        with ctx.wrap_socket(s, server_hostname=name(i)) as t:
            t.sendall(f"GET / HTTP/1.1\r\nHost: {name(i)}\r\nConnection: close\r\n\r\n".encode())
            data = b""
            while True:
                b = t.recv(4096)
                if not b:
                    break
                data += b
    return data


def serves(port, ca, gen, n):
    try:
        return fetch(port, random.randrange(n), ca, timeout=1.0).endswith(gen.encode())
    except OSError:
        return False


def wait_serving(port, ca, gen, n, limit=300.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if serves(port, ca, gen, n):
            return time.monotonic() - t0
        time.sleep(0.01)
    raise SystemExit(f"nginx did not serve generation {gen} within {limit} s")


def client(port, ca, n, seconds, q):
    ctx = ssl.create_default_context(cafile=ca)
    done = errors = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        i = random.randrange(n)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                with ctx.wrap_socket(s, server_hostname=name(i)) as t:
                    t.sendall(f"GET / HTTP/1.1\r\nHost: {name(i)}\r\nConnection: close\r\n\r\n".encode())
                    while t.recv(4096):
                        pass
            done += 1
        except OSError:
            errors += 1
    q.put((done, errors))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(d, layout, n):
    port = free_port()
    ca = os.path.join(d, "ca.pem")
    conf = write_conf(d, layout, n, port, "gen1")
    t0 = time.monotonic()
    subprocess.run(["nginx", "-c", conf, "-p", d], check=True)
    start = time.monotonic() - t0 + wait_serving(port, ca, "gen1", n)
    with open(os.path.join(d, "nginx.pid")) as f:
        master = int(f.read().strip())
    rss = rss_kib(master)
    write_conf(d, layout, n, port, "gen2")
    t0 = time.monotonic()
    os.kill(master, signal.SIGHUP)  # what `nginx -s reload` sends
    reload_s = wait_serving(port, ca, "gen2", n)
    time.sleep(1.0)  # old workers leave
    q = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(target=client, args=(port, ca, n, SECONDS, q))
        for _ in range(CLIENTS)
    ]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    subprocess.run(["nginx", "-c", conf, "-p", d, "-s", "quit"], check=False,
                   stderr=subprocess.DEVNULL)
    for _ in range(100):
        if not os.path.exists(os.path.join(d, "nginx.pid")):
            break
        time.sleep(0.05)
    done = sum(r[0] for r in results)
    errors = sum(r[1] for r in results)
    return start, reload_s, rss, done / SECONDS, errors


def main():
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 5000]
    print(f"| certificates | layout | start → serving | reload → new config serves | master RSS | handshakes/s ({CLIENTS} clients, {SECONDS:.0f} s) | errors |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n in sizes:
        d = tempfile.mkdtemp(prefix="hostd-bench-tls-")
        os.chmod(d, 0o755)
        try:
            t0 = time.monotonic()
            make_certs(d, n)
            made = time.monotonic() - t0
            for label, layout in (("server block per certificate", layout_blocks),
                                  ("variable ssl_certificate (map)", layout_variable)):
                start, reload_s, rss, rate, errors = run(d, layout, n)
                print(f"| {n} | {label} | {start:.2f} s | {reload_s:.2f} s | {rss / 1024:.0f} MiB | {rate:.0f} | {errors} |",
                      flush=True)
            print(f"(made {n} certificates in {made:.1f} s)", file=sys.stderr)
        finally:
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
