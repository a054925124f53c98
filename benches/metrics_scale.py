#!/usr/bin/env python3
"""Per-route metrics at scale: the cost of sniroute_route_active_connections{route} when every
one of N routes has carried a connection (the worst case: one series per route).

Starts the release binary with N routes (api-<i>.scale.test) to one local backend that
accepts and closes, sends one ClientHello per route (Python's ssl module; the handshake then
fails at the closed backend, which is fine: the route was taken), then reports RSS before and
after, and the /metrics scrape size and time. Loopback only.

    cargo build --release && python3 benches/metrics_scale.py [N]
"""
import os, socket, ssl, subprocess, sys, tempfile, threading, time, re, urllib.request

N = int(sys.argv[1]) if len(sys.argv) > 1 else 25000
BIN = os.environ.get("SNIROUTE_BIN", "target/release/sniroute")


def backend():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4096)

    def run():
        while True:
            c, _ = s.accept()
            c.close()

    threading.Thread(target=run, daemon=True).start()
    return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def scrape(admin):
    t = time.perf_counter()
    body = urllib.request.urlopen(f"http://{admin}/metrics", timeout=30).read()
    return body, time.perf_counter() - t


def main():
    port = backend()
    d = tempfile.mkdtemp()
    cfg = os.path.join(d, "scale.yaml")
    with open(cfg, "w") as f:
        f.write("listen: 127.0.0.1:0\nadmin: 127.0.0.1:0\ndebug: off\nrevoke_grace: off\nroutes:\n")
        for i in range(N):
            f.write(f"  - {{name: r{i}, hostnames: [api-{i}.scale.test], backends: [\"127.0.0.1:{port}\"]}}\n")
    p = subprocess.Popen([BIN, "--config", cfg], stderr=subprocess.PIPE, text=True)
    addrs = {}
    while len(addrs) < 2:
        line = p.stderr.readline()
        m = re.search(r"listening kind=(\w+) addr=(\S+)", line)
        if m:
            addrs[m.group(1)] = m.group(2)
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
    host, pport = addrs["proxy"].rsplit(":", 1)
    time.sleep(0.5)
    rss0 = rss_kib(p.pid)
    body0, t0 = scrape(addrs["admin"])
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    started = time.perf_counter()
    for i in range(N):
        with socket.create_connection((host, int(pport))) as s:
            try:
                ctx.wrap_socket(s, server_hostname=f"api-{i}.scale.test")
            except (ssl.SSLError, OSError):
                pass
    took = time.perf_counter() - started
    time.sleep(1)
    rss1 = rss_kib(p.pid)
    body1, t1 = scrape(addrs["admin"])
    times = [scrape(addrs["admin"])[1] for _ in range(5)]
    series = body1.count(b"sniroute_route_active_connections{")
    p.terminate()
    p.wait(timeout=70)
    print(f"routes={N} connections={N} in {took:.1f}s")
    print(f"RSS: {rss0} KiB with no series -> {rss1} KiB with {series} route series "
          f"(+{(rss1 - rss0) / max(series, 1) * 1024:.0f} bytes/series)")
    print(f"/metrics: {len(body0)} bytes in {t0 * 1000:.1f} ms -> {len(body1)} bytes, "
          f"median scrape {sorted(times)[2] * 1000:.1f} ms")


main()
