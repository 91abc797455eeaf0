#!/usr/bin/env python3
"""What API keys cost per request: key lookup (SHA-256 of the presented key,
one hash-map probe, a constant-time compare) and, on the generation routes,
the per-key limits (rpm and tpm buckets, the concurrency count, the token
meter) and per-key fair queuing.

Two herd servers run side by side in front of the same fixed upstream
(nginx serving canned answers, bench/canned.py): one with no keys (open),
one whose state dir holds 50 keys, the one used carrying rpm, tpm and
concurrency limits far above the load. `herd bench` drives each at a fixed
rate, in alternating order, for a cheap endpoint (GET /v1/models: auth
only) and a chat completion through the upstream (auth + limits + fair
queue). Added latency is keys minus open, per repetition; the median over
repetitions is reported, with the open server against itself (two runs
of the same) as the noise floor. On a shared 2-vCPU machine that floor is
milliseconds at p99, so the script also counts what noise cannot move:
user-space instructions per request under valgrind's callgrind (the
difference of a 200- and a 1,200-request run, as bench/proxy_cost.py does),
open and keyed, turned into time with the open server's own CPU time per
instruction at the benchmark rate.

Usage: bench/keys.py [--rate 2000] [--secs 5] [--reps 5] [--no-build]
Writes the "## Keys: added latency per request" section of docs/benchmarks.md.
"""
import argparse
import os
import re
import shutil
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
import proxy_cost  # noqa: E402

HERD = os.path.join(ROOT, "target/release/herd")
DOC = os.path.join(ROOT, "docs/benchmarks.md")
SECTION = "## Keys: added latency per request"
TICK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


SECRETS = {}


def herd_argv(tmp, name, upstream_url):
    """The command line of the open or keyed server (keys created on first use), and the key."""
    state = os.path.join(tmp, f"state-{name}")
    cfg = os.path.join(tmp, f"herd-{name}.toml")
    with open(cfg, "w") as f:
        f.write(f'[[models]]\nid = "canned"\nengine = "upstream"\n'
                f'base_url = "{upstream_url}/v1"\nupstream_model = "{canned.MODEL}"\n'
                "max_concurrency = 4096\nmax_queue = 4096\n")
    key = SECRETS.get(name)
    if name == "keys" and key is None:
        for i in range(49):
            subprocess.run([HERD, "keys", "--state-dir", state, "create", f"user-{i}"],
                           check=True, capture_output=True)
        key = subprocess.run(
            [HERD, "keys", "--state-dir", state, "create", "bench", "--rpm", "100000000",
             "--tpm", "100000000000", "--max-concurrency", "100000"],
            check=True, capture_output=True, text=True).stdout.strip()
        SECRETS[name] = key
    port = procs.free_port()
    argv = [HERD, "serve", "--config", cfg, "--state-dir", state,
            "--listen", f"127.0.0.1:{port}", "--no-discovery"]
    return argv, f"http://127.0.0.1:{port}", key


ENV = {"NO_COLOR": "1", "HERD_LOG": "warn"}


def herd_server(tmp, name, upstream_url):
    argv, url, key = herd_argv(tmp, name, upstream_url)
    return Server(f"herd-{name}", argv, env=ENV, url=url), key


def instructions(tmp, upstream_url):
    """Instructions per chat request, open and keyed (keys created already)."""
    out = {}
    for name in ("open", "keys"):
        argv, url, key = herd_argv(tmp, name, upstream_url)
        per, _ = proxy_cost.instructions(tmp, name, argv, ENV, url, "/health",
                                         [url + "/v1", *KINDS["chat"]], key)
        out[name] = per
        log(f"{name}: {per:.0f} instructions per chat request")
    return out


KINDS = {
    "models": ["--endpoint", "models"],
    "chat": ["--endpoint", "chat", "--stream", "false", "--model", "canned", "--max-tokens", "16"],
}


def run(server, key, kind, rate, secs):
    before = cpu_secs(server.proc.pid)
    r = herd_bench(HERD, server.url + "/v1", *KINDS[kind], "--rate", rate, "--duration", secs,
                   "-c", 512, "--timeout", 10, api_key=key)
    used = cpu_secs(server.proc.pid) - before
    done = r["requests"]["completed"]
    e2e = r["e2e_ms"] or {}
    return {"p50": e2e.get("p50"), "p99": e2e.get("p99"), "achieved": r["requests_per_s"],
            "failed": r["requests"]["failed"], "cpu_us": used / max(done, 1) * 1e6,
            "errors": r["requests"]["errors"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--secs", type=float, default=5)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--no-callgrind", action="store_true")
    a = ap.parse_args()
    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "-p", "herd-gateway", "--bin", "herd"],
                       cwd=ROOT, check=True)
    load = [os.getloadavg()[0]]
    instr = None
    rows = {k: {"open": [], "open2": [], "keys": []} for k in KINDS}
    with tempfile.TemporaryDirectory() as tmp, canned.start(tmp, 1000) as up:
        if not a.no_callgrind:
            if not shutil.which("valgrind"):
                sys.exit("valgrind missing: apt-get install valgrind (or pass --no-callgrind)")
            instr = instructions(tmp, up.url)
        opened, _ = herd_server(tmp, "open", up.url)
        keyed, key = herd_server(tmp, "keys", up.url)
        try:
            targets = [("open", opened, None), ("keys", keyed, key), ("open2", opened, None)]
            for kind in KINDS:  # warm pools and connections
                for _, s, k in targets[:2]:
                    run(s, k, kind, 500, 1)
            for rep in range(a.reps):
                for kind in KINDS:
                    order = targets[rep % 3:] + targets[:rep % 3]
                    for name, s, k in order:
                        row = run(s, k, kind, a.rate, a.secs)
                        rows[kind][name].append(row)
                        load.append(os.getloadavg()[0])
                        log(f"rep {rep} {kind} {name}: p50 {row['p50']:.3f} p99 {row['p99']:.3f} ms, "
                            f"{row['cpu_us']:.1f} µs CPU/request, achieved {row['achieved']:.0f}/s, "
                            f"failed {row['failed']} {row['errors'] or ''}")
        finally:
            opened.stop()
            keyed.stop()
    write(a, rows, load, instr)


def added(rows, kind, q, base="open", other="keys"):
    diffs = [(k[q] - o[q]) * 1000 for o, k in zip(rows[kind][base], rows[kind][other])]
    return statistics.median(diffs), diffs


def write(a, rows, load, instr):
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    lines = [SECTION, "",
             f"Regenerate with `bench/keys.py --no-build` (about {int(a.reps * 6 * (a.secs + 2) / 60) + 1} "
             "minutes). Two herd servers in front of the same canned upstream (nginx, bench/canned.py): "
             "one with no keys, one with 50 keys in its state dir, the benchmark's key carrying rpm, tpm "
             "and concurrency limits far above the load (so every limit is checked and charged, none "
             "refuses). `herd bench` at a fixed rate, the servers in rotating order per repetition. "
             "`GET /v1/models` pays the key lookup only; a chat completion also pays the limits, "
             "the token meter and per-key fair queuing. \"open vs open\" is the same open server run "
             "twice: the noise floor of this machine.",
             "",
             f"- run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; commit `{commit}`; "
             f"{a.rate}/s for {a.secs:g} s × {a.reps} repetitions",
             f"- machine: {os.cpu_count()} vCPUs shared with other work; load average "
             f"{min(load):.1f}–{max(load):.1f} during the runs",
             "",
             "| endpoint @ rate | added p50 (keys − open) | added p99 (keys − open) | noise floor p99 (open − open) "
             "| CPU per request, open → keys | added p99, each repetition | goal p99 ≤ 50 µs |",
             "|---|---|---|---|---|---|---|"]
    for kind, label in [("models", "GET /v1/models"), ("chat", "chat completion via upstream")]:
        p50, _ = added(rows, kind, "p50")
        p99, each = added(rows, kind, "p99")
        floor, _ = added(rows, kind, "p99", "open", "open2")
        cpu_o = statistics.median(r["cpu_us"] for r in rows[kind]["open"])
        cpu_k = statistics.median(r["cpu_us"] for r in rows[kind]["keys"])
        failed = sum(r["failed"] for v in rows[kind].values() for r in v)
        verdict = "met" if p99 <= 50 else "**missed**"
        if abs(floor) > 50:
            verdict = f"not resolvable here (two runs of one server differ by {floor:+.0f} µs)"
        lines.append(f"| {label} @ {a.rate}/s | {p50:+.0f} µs | {p99:+.0f} µs | {floor:+.0f} µs | "
                     f"{cpu_o:.1f} → {cpu_k:.1f} µs ({cpu_k - cpu_o:+.1f}) | "
                     f"{', '.join(f'{d:+.0f}' for d in each)} µs | {verdict}{'; ' + str(failed) + ' failed' if failed else ''} |")
    lines.append("")
    if instr:
        cpu_o = statistics.median(r["cpu_us"] for r in rows["chat"]["open"])
        ns_per = cpu_o * 1000 / instr["open"]
        extra = instr["keys"] - instr["open"]
        lines += ["Instructions per chat completion (callgrind, user space, 1,200 − 200 requests ÷ 1,000), "
                  "and the time they take at this machine's rate (the open server's CPU time per request "
                  "÷ its instructions: "
                  f"{ns_per:.2f} ns per instruction):", "",
                  "| open | keyed (lookup + limits + meter + fair queue) | added | added time per request |",
                  "|---|---|---|---|",
                  f"| {instr['open']:,.0f} | {instr['keys']:,.0f} | {extra:+,.0f} | "
                  f"{extra * ns_per / 1000:+.1f} µs |", "",
                  f"Goal (p99 ≤ 50 µs added): the work keys add is {extra * ns_per / 1000:.1f} µs of CPU per "
                  f"request, so **{'met' if extra * ns_per / 1000 <= 50 else 'missed'}** as far as herd's own "
                  "work goes; the end-to-end p99 on this shared machine moves by more than that between two "
                  "runs of the same server, so the latency rows above can neither confirm nor refute it.", ""]
    text = open(DOC).read()
    block = "\n".join(lines) + "\n"
    if SECTION in text:
        start = text.index(SECTION)
        m = re.search(r"\n## ", text[start + len(SECTION):])
        end = start + len(SECTION) + m.start() + 1 if m else len(text)
        text = text[:start] + block + ("\n" if m else "") + text[end:]
    else:
        text = text.rstrip("\n") + "\n\n" + block
    open(DOC, "w").write(text)
    log(f"wrote {DOC}")


if __name__ == "__main__":
    main()
