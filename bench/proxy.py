#!/usr/bin/env python3
"""P4: what herd adds as a proxy. A fixed upstream (nginx serving canned
OpenAI answers, bench/canned.py) is measured directly and through herd
(`engine = "upstream"`) in the same run, alternating, under open-loop load
at fixed rates; the added latency is herd's minus direct's. Two references
in the same run: a second nginx as a plain reverse proxy (what one more hop
costs on this machine) and LiteLLM's proxy (PyPI) in front of the same
upstream. Then the gateway's memory with 1,000 concurrent streams held open
(the upstream trickles each stream over ~12 s).

Usage: bench/proxy.py [--reps 5] [--duration 4] [--rates 500,1000,2000,5000]
                      [--only LAT,LITELLM,MEM] [--no-build]
       bench/proxy.py --render   (rewrite the section from bench/results/proxy-latest.json)
Writes the "## P4: proxy overhead" section of docs/benchmarks.md (the rest of
the file is left alone) and bench/results/proxy-latest.json, and adds the
run's headline figures to bench/results/proxy-runs.json (the goals are judged
on the median over the runs there; delete it to start afresh, e.g. after a
change to herd's proxy path).
"""
import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import canned  # noqa: E402
import procs  # noqa: E402
import proxy_report  # noqa: E402
from procs import Server, herd_bench  # noqa: E402

HERD = os.path.join(ROOT, "target/release/herd")
# Each kind of request: the upstream's path prefix (direct and the nginx proxy)
# or herd/LiteLLM model id (one upstream each), and `herd bench` flags.
KINDS = {
    "chat": ("/v1", "canned", ["--endpoint", "chat", "--stream", "false"]),
    "stream": ("/sse/v1", "canned-sse", ["--endpoint", "chat", "--stream", "true"]),
}
SLOW = ("/slow/v1", "canned-slow")
# Bytes per second nginx sends of each trickled stream (~1.9 kB): ~12 s a stream.
SLOW_RATE = 170
LITELLM_LOW_RATES = (20, 50)


def log(msg: str):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Target:
    """A way to reach the canned upstream: directly, or through a gateway."""

    def __init__(self, name, server, gateway, key=None):
        self.name, self.server, self.gateway, self.key = name, server, gateway, key

    def base_and_model(self, kind):
        path, model = KINDS[kind][:2] if kind in KINDS else SLOW
        if self.gateway:
            return self.server.url + "/v1", model
        return self.server.url + path, canned.MODEL


def herd_config(tmp, upstream_url, keys):
    """herd's config: one upstream model per kind of answer."""
    cfg = os.path.join(tmp, "herd.toml")
    with open(cfg, "w") as f:
        f.write(f'api_key_file = "{keys}"\n')
        # herd serves at most `max_connections` at once (the rest wait in the
        # listen backlog); the memory test holds 1,000 streams open.
        f.write("max_connections = 4096\n")
        for (path, model) in [v[:2] for v in KINDS.values()] + [SLOW]:
            # Limits far above the load, so that herd's admission never answers 429 here.
            f.write(f'\n[[models]]\nid = "{model}"\nengine = "upstream"\n'
                    f'base_url = "{upstream_url}{path}"\nupstream_model = "{canned.MODEL}"\n'
                    "max_concurrency = 4096\nmax_queue = 4096\n")
    return cfg


def herd_server(tmp, upstream_url, keys, env=None):
    """herd in front of the upstream; `env` adds to its environment (logging
    stays at herd's default level, `info`, unless it says otherwise)."""
    cfg = herd_config(tmp, upstream_url, keys)
    port = procs.free_port()
    return Server("herd", [HERD, "serve", "--config", cfg, "--listen", f"127.0.0.1:{port}"],
                  env={"NO_COLOR": "1", **(env or {})}, url=f"http://127.0.0.1:{port}")


def litellm_server(tmp, litellm, upstream_url, key):
    cfg = os.path.join(tmp, "litellm.yaml")
    with open(cfg, "w") as f:
        f.write("general_settings:\n  master_key: os.environ/LITELLM_MASTER_KEY\nmodel_list:\n")
        for (path, model) in [v[:2] for v in KINDS.values()] + [SLOW]:
            f.write(f"  - model_name: {model}\n    litellm_params:\n"
                    f"      model: openai/{canned.MODEL}\n      api_base: {upstream_url}{path}\n"
                    "      api_key: unused\n")
    port = procs.free_port()
    return Server("litellm", [litellm, "--config", cfg, "--host", "127.0.0.1", "--port", str(port),
                              "--num_workers", "1"],
                  url=f"http://127.0.0.1:{port}", health="/health/liveliness",
                  env={"LITELLM_MASTER_KEY": key}, show_env=False)


def measure(target, kind, rate, secs):
    """One open-loop run: `rate` requests/s for `secs` seconds."""
    base, model = target.base_and_model(kind)
    r = herd_bench(HERD, base, "--model", model, *KINDS[kind][2], "--max-tokens", 16,
                   "--rate", rate, "--duration", secs, "-c", 512, "--timeout", 10,
                   api_key=target.key)
    e2e, ttft = r["e2e_ms"] or {}, r["ttft_ms"] or {}
    return {"target": target.name, "kind": kind, "offered": rate,
            "achieved": r["requests_per_s"], "completed": r["requests"]["completed"],
            "failed": r["requests"]["failed"], "errors": r["requests"]["errors"],
            "p50_ms": e2e.get("p50"), "p99_ms": e2e.get("p99"),
            "ttft_p50_ms": ttft.get("p50"), "ttft_p99_ms": ttft.get("p99"),
            "load": os.getloadavg()[0]}


def describe(row):
    ttft = (f", TTFT p50 {row['ttft_p50_ms']:.3f} p99 {row['ttft_p99_ms']:.3f}"
            if row["ttft_p50_ms"] is not None else "")
    p50 = "—" if row["p50_ms"] is None else f"{row['p50_ms']:.3f}"
    p99 = "—" if row["p99_ms"] is None else f"{row['p99_ms']:.3f}"
    return (f"{row['target']} {row['kind']} @{row['offered']}/s: achieved {row['achieved']:.0f}/s, "
            f"e2e p50 {p50} p99 {p99} ms{ttft}, failed {row['failed']} (load {row['load']:.1f})")


def saturated(row):
    return row["achieved"] < 0.8 * row["offered"]


def latency(targets, rates, reps, secs):
    """Every target at every rate, rotating which target goes first each
    repetition, so that drift on the machine falls on all of them alike."""
    for t in targets:  # warm connections, pools and caches
        for kind in KINDS:
            measure(t, kind, 1000, 1)
    rows = []
    for rep in range(reps):
        behind = set()  # (target, kind) that fell behind at a lower rate in this repetition
        for rate in rates:
            for kind in KINDS:
                order = targets[rep % len(targets):] + targets[:rep % len(targets)]
                for t in order:
                    if (t.name, kind) in behind:
                        continue  # higher rates only queue
                    row = dict(measure(t, kind, rate, secs), rep=rep)
                    rows.append(row)
                    log(f"rep {rep} {describe(row)}")
                    if saturated(row):
                        behind.add((t.name, kind))
    return rows


def litellm_runs(direct, herd, lite, rates, reps, secs):
    """LiteLLM next to direct and herd at rates it sustains, then alone at
    P4's rates until it falls behind."""
    rows = []
    for t in (lite,):
        for kind in KINDS:
            measure(t, kind, 10, 2)
    for rep in range(reps):
        for rate in LITELLM_LOW_RATES:
            for kind in KINDS:
                for t in (direct, herd, lite):
                    row = dict(measure(t, kind, rate, max(secs, 200 / rate)), rep=rep)
                    rows.append(row)
                    log(f"rep {rep} {describe(row)}")
    for kind in KINDS:
        for rate in rates:
            row = dict(measure(lite, kind, rate, secs), rep=0)
            rows.append(row)
            log(describe(row))
            if saturated(row):
                break
    return rows


class Watch:
    """Samples a server's RSS and nginx's open connections every 50 ms."""

    def __init__(self, server, upstream):
        self.server, self.upstream = server, upstream
        self.samples, self._stop = [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            rss = sum(self.server.rss_mib().values())
            try:
                open_now = canned.active_connections(self.upstream.url)
            except OSError:
                open_now = 0  # nginx too busy to answer within its timeout: not counted
            self.samples.append((time.time(), rss, open_now))
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def memory(name, server, upstream, key, streams):
    """RSS of `server` idle and while `streams` trickled streams are open at once."""
    target = Target(name, server, gateway=server is not upstream, key=key)
    base, model = target.base_and_model("slow")
    time.sleep(1)
    idle = sum(server.rss_mib().values())
    with Watch(server, upstream) as w:
        r = herd_bench(HERD, base, "--model", model, "-c", streams, "-n", streams,
                       "--max-tokens", 16, "--timeout", 120, api_key=key)
    after = sum(server.rss_mib().values())
    # nginx counts its stub_status request too; through a gateway, the
    # gateway's upstream connections are the streams it holds.
    top = max(c for _, _, c in w.samples) - 1
    held = [rss for _, rss, c in w.samples if c - 1 >= 0.99 * streams]
    out = {"target": name, "streams": streams, "idle_mib": idle,
           "peak_mib": max(rss for _, rss, _ in w.samples),
           "held_mib": median(held), "after_mib": after, "max_open_upstream": top,
           "seconds_all_open": len(held) * 0.05 if held else 0.0,
           "completed": r["requests"]["completed"], "failed": r["requests"]["failed"],
           "errors": r["requests"]["errors"],
           "ttft_p50_ms": (r["ttft_ms"] or {}).get("p50"),
           "e2e_p50_ms": (r["e2e_ms"] or {}).get("p50"),
           "processes": server.rss_mib()}
    log(f"memory {name}: idle {idle:.1f} MiB, peak {out['peak_mib']:.1f} MiB, "
        f"{top} streams open upstream at most, {out['completed']} completed, "
        f"{out['failed']} failed")
    return out


def machine():
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    lscpu = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    git = lambda *a: subprocess.run(["git", *a], cwd=ROOT, capture_output=True,  # noqa: E731
                                    text=True).stdout.strip()
    nginx = subprocess.run([canned.nginx_binary(), "-v"], capture_output=True, text=True)
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpu": lscpu.get("Model name", "?").strip(), "cores": os.cpu_count(),
            "kernel": os.uname().release, "commit": git("rev-parse", "--short", "HEAD"),
            # What this script itself rewrites does not make the measured tree dirty.
            "tree_dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", ".",
                                   ":!docs/benchmarks.md", ":!bench/results")),
            "nginx": nginx.stderr.strip().split("/")[-1], "load_before": os.getloadavg()[0]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="repetitions (medians are reported)")
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    ap.add_argument("--rates", default="500,1000,2000,5000")
    ap.add_argument("--streams", type=int, default=1000, help="concurrent streams for memory")
    ap.add_argument("--only", default="LAT,LITELLM,MEM")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/benchmarks.md"))
    ap.add_argument("--no-build", action="store_true", help="use target/release/herd as it is")
    ap.add_argument("--render", action="store_true",
                    help="only rewrite the section from bench/results/proxy-latest.json")
    opts = ap.parse_args()
    latest = os.path.join(HERE, "results/proxy-latest.json")
    history = os.path.join(HERE, "results/proxy-runs.json")
    runs = []
    if os.path.isfile(history):
        with open(history) as f:
            runs = json.load(f)
    if opts.render:
        with open(latest) as f:
            proxy_report.write(opts.out, json.load(f), runs)
        return
    started = time.time()
    if not opts.no_build:
        log("building herd (release)")
        subprocess.run(["cargo", "build", "--release", "-p", "herd-gateway", "--bin", "herd"],
                       check=True, cwd=ROOT)
    only = set(opts.only.upper().split(","))
    litellm = (subprocess.run([os.path.join(HERE, "setup-litellm")], check=True, text=True,
                              stdout=subprocess.PIPE).stdout.strip()
               if only & {"LITELLM", "MEM"} else None)
    rates = [int(x) for x in opts.rates.split(",")]
    results = {"machine": machine(), "reps": opts.reps, "duration_s": opts.duration,
               "rates": rates, "slow_rate": SLOW_RATE, "sse_bytes": len(canned.SSE),
               "chat_bytes": len(canned.CHAT), "content_chunks": canned.CONTENT_CHUNKS,
               "herd_built": time.strftime("%Y-%m-%d %H:%M UTC",
                                           time.gmtime(os.path.getmtime(HERD)))}
    key = "sk-bench-" + secrets.token_hex(16)
    tmp = tempfile.mkdtemp(prefix="herd-proxy-")
    keys = os.path.join(tmp, "keys")
    with open(keys, "w") as f:
        f.write(f"bench:{key}\n")
    try:
        with canned.start(tmp, SLOW_RATE) as up:
            direct = Target("direct", up, gateway=False)
            if "LAT" in only or "LITELLM" in only:
                with herd_server(tmp, up.url, keys) as h, canned.start_proxy(tmp, up.url) as px:
                    herd = Target("herd", h, gateway=True, key=key)
                    if "LAT" in only:
                        log("measuring latency: direct, herd, nginx proxy")
                        results["latency"] = latency(
                            [direct, herd, Target("nginx-proxy", px, gateway=False)],
                            rates, opts.reps, opts.duration)
                    if "LITELLM" in only:
                        log("measuring LiteLLM beside direct and herd")
                        with litellm_server(tmp, litellm, up.url, key) as lite:
                            results["litellm"] = litellm_runs(
                                direct, herd, Target("litellm", lite, gateway=True, key=key),
                                rates, min(opts.reps, 3), opts.duration)
            if "MEM" in only:
                log(f"measuring memory at {opts.streams} streams")
                mem = [memory("direct (nginx alone)", up, up, None, opts.streams)]
                with herd_server(tmp, up.url, keys) as h:
                    mem.append(memory("herd", h, up, key, opts.streams))
                with litellm_server(tmp, litellm, up.url, key) as lite:
                    mem.append(memory("litellm", lite, up, key, opts.streams))
                results["memory"] = mem
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["machine"]["load_after"] = os.getloadavg()[0]
    results["minutes"] = (time.time() - started) / 60
    results["commands"] = proxy_report.generic_commands(procs.COMMANDS, tmp)
    results["command"] = " ".join(["bench/proxy.py"] + sys.argv[1:])
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(latest, "w") as f:
        json.dump(results, f, indent=1)
    if "LAT" in only and "MEM" in only:  # a whole run: its figures count toward the goals
        runs.append(proxy_report.headline(results))
        with open(history, "w") as f:
            json.dump(runs, f, indent=1)
    proxy_report.write(opts.out, results, runs)
    log(f"wrote {os.path.relpath(opts.out, ROOT)} and bench/results/proxy-latest.json "
        f"in {results['minutes']:.0f} min")


if __name__ == "__main__":
    main()
