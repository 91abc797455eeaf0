#!/usr/bin/env python3
"""Usage accounting benchmarks, written to the "Usage accounting" section of
docs/benchmarks.md:

U1  write throughput of the SQLite store (rows/s): rows written straight to
    the store in transactions of `flush_rows`, and through the recorder
    (channel → actor → batched transactions), by `herd usage-bench`.
U2  what recording costs a request: `Recorder::record` per call (ns, the only
    work on the request path), from the same tool; and end to end, herd in
    front of a fixed upstream (bench/canned.py, nginx) at a fixed rate with
    `[usage] enabled = false` and `true`, alternating, medians of --reps.

Usage: bench/usage.py [--reps 3] [--rates 1000,2000] [--duration 5] [--no-build]
"""
import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import canned  # noqa: E402
import procs  # noqa: E402
from procs import Server, herd_bench  # noqa: E402

HERD = os.path.join(ROOT, "target/release/herd")
BEGIN, END = "<!-- usage-bench:begin -->", "<!-- usage-bench:end -->"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def store_throughput(flush_rows, rows, reps, tmp):
    runs = []
    for _ in range(reps):
        d = tempfile.mkdtemp(dir=tmp)
        out = subprocess.run([HERD, "usage-bench", "--rows", str(rows), "--flush-rows",
                              str(flush_rows), "--dir", d], check=True, text=True,
                             capture_output=True).stdout
        runs.append(json.loads(out))
        shutil.rmtree(d, ignore_errors=True)
    return {"flush_rows": flush_rows, "rows": rows,
            "store_rows_per_s": med([r["store_rows_per_s"] for r in runs]),
            "recorder_rows_per_s": med([r["recorder_rows_per_s"] for r in runs]),
            "record_ns_p50": med([r["record_ns"]["p50"] for r in runs]),
            "record_ns_p99": med([r["record_ns"]["p99"] for r in runs]),
            "record_ns_p999": med([r["record_ns"]["p999"] for r in runs]),
            "lost": sum(r["recorder_rows_lost"] for r in runs)}


def herd_server(tmp, name, upstream_url, keys, usage_on):
    state = os.path.join(tmp, f"state-{name}")
    cfg = os.path.join(tmp, f"{name}.toml")
    with open(cfg, "w") as f:
        f.write(f'api_key_file = "{keys}"\n\n[[models]]\nid = "canned"\nengine = "upstream"\n'
                f'base_url = "{upstream_url}/v1"\nupstream_model = "{canned.MODEL}"\n'
                "max_concurrency = 4096\nmax_queue = 4096\n\n"
                f"[usage]\nenabled = {'true' if usage_on else 'false'}\n")
    port = procs.free_port()
    return Server(f"herd-{name}", [HERD, "serve", "--config", cfg, "--listen", f"127.0.0.1:{port}",
                                   "--state-dir", state, "--no-discovery"],
                  env={"NO_COLOR": "1", "HERD_LOG": "warn"}, url=f"http://127.0.0.1:{port}"), state


def http_cost(tmp, rates, reps, secs):
    key = "sk-bench-usage-0123456789abcdef"
    keys = os.path.join(tmp, "keys")
    with open(keys, "w") as f:
        f.write(f"bench:{key}\n")
    rows = []
    with canned.start(tmp, 2000) as up:
        off, _ = herd_server(tmp, "off", up.url, keys, False)
        on, state = herd_server(tmp, "on", up.url, keys, True)
        with off, on:
            for rate in rates:
                for rep in range(reps):
                    for name, srv in (("off", off), ("on", on)) if rep % 2 == 0 else \
                            (("on", on), ("off", off)):
                        r = herd_bench(HERD, srv.url + "/v1", "--model", "canned", "--endpoint",
                                       "chat", "--stream", "false", "--max-tokens", 16, "--rate",
                                       rate, "--duration", secs, "-c", 512, "--timeout", 10,
                                       api_key=key)
                        e2e = r["e2e_ms"] or {}
                        rows.append({"usage": name, "rate": rate, "rep": rep,
                                     "achieved": r["requests_per_s"],
                                     "completed": r["requests"]["completed"],
                                     "failed": r["requests"]["failed"],
                                     "p50_ms": e2e.get("p50"), "p99_ms": e2e.get("p99"),
                                     "load": os.getloadavg()[0]})
                        log(f"usage {name} @{rate}/s: {rows[-1]}")
        # `on` has stopped (SIGTERM: every record written): count them.
        db = sqlite3.connect(os.path.join(state, "usage.db"))
        stored = db.execute("SELECT COUNT(*) FROM usage_requests WHERE status = 200").fetchone()[0]
        db.close()
    completed_on = sum(r["completed"] for r in rows if r["usage"] == "on")
    return rows, {"completed_with_usage_on": completed_on, "rows_stored": stored}


def markdown(res):
    m = res["machine"]
    out = [BEGIN, "## Usage accounting (U1, U2)", "",
           f"Last run {res['when']} on {m}, by `bench/usage.py` (load average before: "
           f"{res['load_before']:.1f}; the machine is shared, so absolute numbers are noisy).", "",
           "### U1: SQLite write throughput (rows/s) and the request path's cost", "",
           "`herd usage-bench --rows N --flush-rows F`: *store* writes batches of F rows in one "
           "transaction each, straight to the store (the writer's sustained rate at that batch "
           "size); *recorder* counts from the first `record()` to the last row committed through "
           "the channel and the actor: the loop outruns the writer, so most rows wait in the queue "
           "and go in with the shutdown drain's one large transaction (the rate of clearing a "
           "backlog); *record()* is the only work a request does (a `try_send` on the bounded "
           "channel), timed per call while the actor writes. *lost*: rows recorded but not "
           "stored (0 expected: the queue holds all N). SQLite in WAL mode, "
           "`synchronous = NORMAL`, on the temp dir's file system "
           f"({res['tmp_fs']}). Medians of {res['reps_store']} runs.", "",
           "| flush_rows | store rows/s | recorder rows/s | record() p50 ns | p99 ns | p99.9 ns | lost |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["store"]:
        out.append(f"| {r['flush_rows']} | {r['store_rows_per_s']:,.0f} | "
                   f"{r['recorder_rows_per_s']:,.0f} | {r['record_ns_p50']:.0f} | "
                   f"{r['record_ns_p99']:.0f} | {r['record_ns_p999']:.0f} | {r['lost']} |")
    out += ["", "### U2: per-request cost end to end (herd in front of a fixed upstream)", "",
            "The same herd config with `[usage] enabled = false` and `true` (both with API keys), "
            "alternating runs, `herd bench --rate R --duration "
            f"{res['duration']} -c 512` against canned JSON chat answers (bench/canned.py). "
            f"Medians of {res['reps']} runs, e2e latency in ms.", "",
            "| rate/s | usage | achieved/s | p50 ms | p99 ms | p50 of each run, ms |",
            "|---:|---|---:|---:|---:|---|"]
    for rate in res["rates"]:
        for name in ("off", "on"):
            rs = [r for r in res["http"] if r["rate"] == rate and r["usage"] == name]
            runs = ", ".join(f"{r['p50_ms']:.2f}" for r in rs)
            out.append(f"| {rate} | {name} | {med([r['achieved'] for r in rs]):,.0f} | "
                       f"{med([r['p50_ms'] for r in rs]):.3f} | {med([r['p99_ms'] for r in rs]):.3f} "
                       f"| {runs} |")
    c = res["count"]
    out += ["", "On a machine shared with other work (load average above its vCPU count), a single "
            "run near herd's limit can saturate and its p50 jumps by two orders of magnitude, with "
            "usage on or off alike (last column): compare on and off only where their runs do not "
            "overlap. The cost recording adds to a request is the `record()` time in U1 (plus "
            "building the row: three short strings cloned), well under a microsecond at p50; the "
            "writes happen on the actor's task, off the request path."]
    out += ["", f"Every answered request was recorded: {c['completed_with_usage_on']} answered "
            f"with usage on, {c['rows_stored']} rows stored with status 200 after the server's "
            "SIGTERM.", "", "Command: `bench/usage.py` (see its docstring).", END]
    return "\n".join(out) + "\n"


def write(path, section):
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rates", default="1000,2000")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/benchmarks.md"))
    ap.add_argument("--render", action="store_true",
                    help="only rewrite the section from bench/results/usage-latest.json")
    opts = ap.parse_args()
    if opts.render:
        with open(os.path.join(HERE, "results/usage-latest.json")) as f:
            write(opts.out, markdown(json.load(f)))
        return
    if not opts.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "herd-gateway", "--bin", "herd"],
                       check=True, cwd=ROOT)
    tmp = tempfile.mkdtemp(prefix="herd-usage-bench-")
    fs = subprocess.run(["df", "--output=fstype", tmp], text=True,
                        capture_output=True).stdout.split()[-1]
    res = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{os.cpu_count()} vCPUs", "load_before": os.getloadavg()[0],
           "tmp_fs": fs, "reps": opts.reps, "reps_store": 3, "duration": opts.duration,
           "rates": [int(x) for x in opts.rates.split(",")]}
    try:
        res["store"] = []
        for f in (16, 256, 1024):
            log(f"U1: flush_rows {f}")
            res["store"].append(store_throughput(f, opts.rows, res["reps_store"], tmp))
            log(str(res["store"][-1]))
        log("U2: herd with usage off and on")
        res["http"], res["count"] = http_cost(tmp, res["rates"], opts.reps, opts.duration)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results/usage-latest.json"), "w") as f:
        json.dump(res, f, indent=1)
    write(opts.out, markdown(res))
    log(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
