#!/usr/bin/env python3
"""What one proxied request costs herd, in numbers this shared machine's noise
does not move: user-space instructions per request (valgrind's callgrind,
the difference of a short and a long run of sequential requests, so start-up
cancels), and CPU time and context switches per request at a fixed rate,
for herd and for nginx as the proxy in front of the same canned upstream
(bench/canned.py). A change to herd's proxy path shows here first.

Usage: bench/proxy_cost.py [--herd target/release/herd] [--env KEY=VALUE ...]
                           [--kind chat|stream] [--rate 1000] [--top 25]
  e.g. --env HERD_LOG=warn (no access log), --env TOKIO_WORKER_THREADS=1,
       --env LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2
Needs valgrind (apt-get install valgrind).
"""
import argparse
import collections
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import canned  # noqa: E402
import procs  # noqa: E402
import proxy  # noqa: E402
from procs import Server, herd_bench  # noqa: E402

SHORT, LONG = 200, 1200


def total_instructions(out: str) -> int:
    text = subprocess.run(["callgrind_annotate", out], capture_output=True, text=True).stdout
    m = re.search(r"([\d,]+) \([^)]*\)\s+PROGRAM TOTALS", text)
    return int(m.group(1).replace(",", "")) if m else 0


def self_costs(out: str) -> collections.Counter:
    """Instructions by function, its own code only (callees not included)."""
    text = subprocess.run(["callgrind_annotate", "--threshold=100", out], capture_output=True,
                          text=True).stdout
    costs = collections.Counter()
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(.*)$", line)
        if m and "PROGRAM TOTALS" not in line:
            name = re.sub(r"\s+\[[^\]]*\]$", "", m.group(2)).split(":", 1)[-1]
            costs[name] += int(m.group(1).replace(",", ""))
    return costs


def under_callgrind(argv, out, url, health, env, requests, request_args, key):
    """Runs the server in argv under callgrind, sends `requests` one at a
    time, stops it (callgrind writes `out` on exit)."""
    s = Server("callgrind", ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                             *argv], env=env, url=url, health=health, startup=300)
    try:
        herd_bench(proxy.HERD, *request_args, "-c", 1, "-n", requests, api_key=key)
    finally:
        os.killpg(s.proc.pid, signal.SIGINT if "herd" in argv[0] else signal.SIGQUIT)
        s.proc.wait(timeout=120)
        s.stop()


def instructions(tmp, name, argv, env, url, health, request_args, key):
    outs = []
    for n in (SHORT, LONG):
        out = os.path.join(tmp, f"{name}-{n}.callgrind")
        under_callgrind(argv, out, url, health, env, n, request_args, key)
        outs.append(out)
    per = (total_instructions(outs[1]) - total_instructions(outs[0])) / (LONG - SHORT)
    a, b = self_costs(outs[0]), self_costs(outs[1])
    top = collections.Counter({k: (b[k] - a.get(k, 0)) / (LONG - SHORT) for k in b})
    return per, top


def cpu_and_switches(pids):
    cpu = switches = 0
    for pid in pids:
        for task in glob.glob(f"/proc/{pid}/task/*"):
            try:
                stat = open(task + "/stat").read().rsplit(")", 1)[1].split()
                cpu += (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")
                with open(task + "/status") as f:
                    status = dict(line.split(":", 1) for line in f if ":" in line)
                switches += (int(status["voluntary_ctxt_switches"])
                             + int(status["nonvoluntary_ctxt_switches"]))
            except (OSError, KeyError):
                pass
    return cpu, switches


def per_request_load(server, request_args, rate, key):
    pids = server.pids()
    cpu0, sw0 = cpu_and_switches(pids)
    r = herd_bench(proxy.HERD, *request_args, "--rate", rate, "--duration", 5, "-c", 512,
                   api_key=key)
    cpu1, sw1 = cpu_and_switches(pids)
    n = max(r["requests"]["completed"], 1)
    return (cpu1 - cpu0) / n * 1e6, (sw1 - sw0) / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--herd", default=proxy.HERD, help="the herd binary to measure")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for herd")
    ap.add_argument("--kind", choices=list(proxy.KINDS), default="chat")
    ap.add_argument("--rate", type=int, default=1000, help="requests/s for CPU per request")
    ap.add_argument("--top", type=int, default=25, help="functions to list by own cost")
    opts = ap.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("valgrind missing: apt-get install valgrind")
    env = {"NO_COLOR": "1", **dict(e.split("=", 1) for e in opts.env)}
    path, model, flags = proxy.KINDS[opts.kind]
    key = "sk-bench-cost"
    tmp = tempfile.mkdtemp(prefix="herd-proxy-cost-")
    keys = os.path.join(tmp, "keys")
    with open(keys, "w") as f:
        f.write(f"bench:{key}\n")
    rows = []
    try:
        with canned.start(tmp, proxy.SLOW_RATE) as up:
            # herd: the same config bench/proxy.py uses, on a port of its own.
            port = procs.free_port()
            herd_argv = [opts.herd, "serve", "--config", proxy.herd_config(tmp, up.url, keys),
                         "--listen", f"127.0.0.1:{port}"]
            url = f"http://127.0.0.1:{port}"
            per, top = instructions(tmp, "herd", herd_argv, env, url, "/health",
                                    [url + "/v1", "--model", model, *flags], key)
            with Server("herd", herd_argv, env=env, url=url) as h:
                herd_bench(proxy.HERD, url + "/v1", "--model", model, *flags, "-n", 200, "-c", 4,
                           api_key=key)
                cpu, sw = per_request_load(h, [url + "/v1", "--model", model, *flags],
                                           opts.rate, key)
            rows.append(("herd", per, cpu, sw))
            prefix = os.path.join(tmp, "nginx-proxy-cost")
            os.makedirs(prefix)
            port = procs.free_port()
            conf = os.path.join(prefix, "nginx.conf")
            with open(conf, "w") as f:
                f.write(canned.proxy_config(prefix, port, up.url))
            nginx_argv = [canned.nginx_binary(), "-p", prefix, "-c", conf, "-e",
                          prefix + "/error.log"]
            url = f"http://127.0.0.1:{port}"
            request = [url + path, "--model", canned.MODEL, *flags]
            n_per, _ = instructions(tmp, "nginx", [*nginx_argv, "-g", "master_process off;"],
                                    {}, url, "/v1/models", request, None)
            with Server("nginx-proxy", nginx_argv, url=url, health="/v1/models") as n:
                herd_bench(proxy.HERD, *request, "-n", 200, "-c", 4)
                cpu, sw = per_request_load(n, request, opts.rate, None)
            rows.append(("nginx as the proxy", n_per, cpu, sw))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{opts.kind} requests through each proxy to the canned nginx upstream; "
          f"herd env: {' '.join(opts.env) or '(default)'}")
    print(f"{'proxy':20s} {'instructions/request':>21s} {'CPU µs/request':>15s} "
          f"{'context switches/request':>25s}   (CPU and switches at {opts.rate}/s)")
    for name, per, cpu, sw in rows:
        print(f"{name:20s} {per:21,.0f} {cpu:15.0f} {sw:25.2f}")
    print(f"\nherd's own instructions per request by function (top {opts.top}):")
    for name, n in top.most_common(opts.top):
        print(f"{n:10,.0f}  {name[:150]}")


if __name__ == "__main__":
    main()
