#!/usr/bin/env python3
"""Measures sniroute's resident memory, to size the Deployment's requests and limits.

Runs the given binary on loopback with a config of ROUTES routes, then opens idle forwarded
connections through it in steps (each client sends a real TLS ClientHello for one of the
routes, the proxy connects the route's backend, then nothing more is sent either way) and
prints VmRSS/VmHWM/threads/fds of the proxy after each step, and after a config reload.

    python3 deploy/tools/measure-rss.py target/release/sniroute [ROUTES] [CONN,CONN,...]

Loopback only; everything it starts it stops. Needs `ulimit -n` above 2x the largest step.
"""

import os
import resource
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

# How many distinct server names the clients use.
HELLOS = 64


def client_hello(server_name):
    """The bytes of a real ClientHello (Python's TLS stack) for server_name."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                fields[key] = value.strip()
    fields["fds"] = str(len(os.listdir(f"/proc/{pid}/fd")))
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read().rsplit(")", 1)[1].split()
    fields["cpu_s"] = f"{(int(stat[11]) + int(stat[12])) / os.sysconf('SC_CLK_TCK'):.2f}"
    return fields


def write_config(path, routes, proxy_port, admin_port, backend_port, generation=0):
    lines = [
        f"listen: 127.0.0.1:{proxy_port}",
        f"admin: 127.0.0.1:{admin_port}",
        "routes:",
    ]
    for i in range(routes):
        # The routes that clients use get the loopback backend only (no DNS lookups at
        # connect time); the rest look like real ones (names are resolved only on connect).
        backends = f'"127.0.0.1:{backend_port}"'
        if i >= HELLOS:
            backends += f', "kas.clusters-hc-{i}.svc:6443", "[fd00::{i:x}]:6443"'
        lines += [
            f"  - name: hc-{i}-g{generation}",
            f"    hostnames: [api.hc-{i}.example.test, \"*.apps.hc-{i}.example.test\"]",
            f"    backends: [{backends}]",
        ]
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.rename(tmp, path)


def main():
    binary = sys.argv[1]
    routes = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    steps = [int(n) for n in (sys.argv[3] if len(sys.argv) > 3 else "1000,4000").split(",")]
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    backend = socket.socket()
    backend.bind(("127.0.0.1", 0))
    backend.listen(4096)
    backend_port = backend.getsockname()[1]
    accepted = []

    def accept_loop():
        while True:
            try:
                conn, _ = backend.accept()
            except OSError:
                return
            accepted.append(conn)

    threading.Thread(target=accept_loop, daemon=True).start()

    proxy_port, admin_port = free_port(), free_port()
    workdir = tempfile.mkdtemp()
    config = os.path.join(workdir, "config.yaml")
    write_config(config, routes, proxy_port, admin_port, backend_port)
    proc = subprocess.Popen(
        [binary, "--config", config],
        env={**os.environ, "RUST_LOG": "warn"},
        stderr=subprocess.DEVNULL,
    )
    clients = []
    try:
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise SystemExit("sniroute did not become ready")
                time.sleep(0.1)
        time.sleep(1)
        print(f"routes={routes} connections=0 {status(proc.pid)}", flush=True)
        hellos = [client_hello(f"api.hc-{i}.example.test") for i in range(min(routes, HELLOS))]
        for target in steps:
            while len(clients) < target:
                c = socket.create_connection(("127.0.0.1", proxy_port))
                c.sendall(hellos[len(clients) % len(hellos)])
                clients.append(c)
            deadline = time.time() + 60
            while len(accepted) < target and time.time() < deadline:
                time.sleep(0.1)
            time.sleep(2)
            print(
                f"routes={routes} connections={len(clients)} forwarded={len(accepted)} "
                f"{status(proc.pid)}",
                flush=True,
            )
        write_config(config, routes, proxy_port, admin_port, backend_port, generation=1)
        time.sleep(3)
        print(f"after reload of {routes} routes: {status(proc.pid)}", flush=True)
    finally:
        for c in clients + accepted:
            c.close()
        backend.close()
        proc.terminate()  # sniroute drains for shutdown_delay (5s by default) first
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
