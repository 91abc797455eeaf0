#!/usr/bin/env python3
"""Embeddings per second: herd's /v1/embeddings beside llama-server
--embeddings on the same GGUF (all-MiniLM-L6-v2.f16.gguf from .ci/setup),
same threads, in one run.

For each server and each batch size (1, 32, 256 short inputs per request),
one client sends requests back to back for --seconds and counts the inputs
embedded; a fourth case has 8 clients at once sending 1 input each (what
batching across requests is for). Servers run one at a time, alternating,
--reps times; the table shows medians. Also checks that both servers give
the same vectors (cosine over the inputs).

Writes the "## Embeddings" section of docs/benchmarks.md (and
bench/results/embeddings-latest.json).

Usage: bench/embeddings.py [--seconds 8] [--reps 3] [--threads 2]
llama-server comes from bench/build-llama-cpp llama-server (cached).
"""
import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("HERD_CACHE", os.path.expanduser("~/.cache/herd"))
GGUF = os.path.join(CACHE, "models", "all-MiniLM-L6-v2.f16.gguf")
TITLE = "## Embeddings (/v1/embeddings)"
TOPICS = ["guitars", "the weather", "stock markets", "football", "cooking pasta", "the moon",
          "old trains", "green tea", "chess openings", "mountain hiking", "jazz", "databases"]


def inputs(n, offset=0):
    return [f"Sentence {i + offset} is a short note about {TOPICS[(i + offset) % len(TOPICS)]}."
            for i in range(n)]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    def __init__(self, name, argv, port, env=None, health="/health"):
        self.name, self.port, self.argv = name, port, argv
        self.log = tempfile.NamedTemporaryFile(prefix=f"emb-{name}-", suffix=".log", delete=False)
        full = dict(os.environ, **(env or {}))
        self.p = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=full,
                                  start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", health)
                if c.getresponse().status == 200:
                    return
            except OSError:
                pass
            if self.p.poll() is not None:
                break
            time.sleep(0.3)
        self.stop()
        raise SystemExit(f"{name} did not start; log in {self.log.name}")

    def stop(self):
        if self.p.poll() is None:
            os.killpg(self.p.pid, 15)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, 9)
                self.p.wait()


def embed(conn, model, batch):
    conn.request("POST", "/v1/embeddings", json.dumps({"model": model, "input": batch}),
                 {"content-type": "application/json"})
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise SystemExit(f"HTTP {r.status}: {body[:300]!r}")
    return json.loads(body)


def rate(port, model, batch, seconds, clients=1):
    """Inputs embedded per second by `clients` clients sending `batch`-input requests
    (over the time until the last request ends)."""
    done = [0] * clients
    stop_at = [0.0]

    def run(k):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        embed(conn, model, inputs(1, 1000 * k))  # warm the connection
        n, i = 0, 0
        # At least one request each, however long it takes.
        while n == 0 or time.time() < stop_at[0]:
            embed(conn, model, inputs(batch, 1000 * k + i))
            n += batch
            i += 1
        done[k] = n

    stop_at[0] = time.time() + seconds
    start = time.time()
    threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.time() - start)


CASES = [("1 input", 1, 1), ("32 inputs", 32, 1), ("256 inputs", 256, 1),
         ("1 input × 8 clients", 1, 8)]


def servers(args):
    herd = os.path.join(ROOT, "target/release/herd")
    bin_dir = subprocess.run([os.path.join(ROOT, "bench/build-llama-cpp"), "llama-server"],
                             check=True, capture_output=True, text=True).stdout.strip()
    config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    config.write(f'[[models]]\nid = "minilm"\npath = "{GGUF}"\nembeddings = true\n'
                 f'threads = {args.threads}\nslots = 8\n')
    config.close()
    t = str(args.threads)
    llama = [os.path.join(bin_dir, "llama-server"), "-m", GGUF, "--embeddings", "-t", t, "-tb", t,
             "--host", "127.0.0.1"]
    env = {"LD_LIBRARY_PATH": bin_dir}
    return [
        ("herd", lambda p: Proc("herd", [herd, "serve", "--config", config.name, "--listen",
                                         f"127.0.0.1:{p}"], p)),
        ("llama-server (defaults)", lambda p: Proc("llama-default", llama + ["--port", str(p)], p, env)),
        ("llama-server -np 64 -ub 512", lambda p: Proc(
            "llama-np64", llama + ["--port", str(p), "-np", "64", "-c", "32768", "-b", "512",
                                   "-ub", "512"], p, env)),
    ]


def agreement(ports):
    """Least cosine between herd's and each llama-server's vectors for the same inputs."""
    batch = inputs(32)
    vecs = {}
    for name, port in ports.items():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        vecs[name] = [d["embedding"] for d in embed(conn, "minilm", batch)["data"]]
    out = {}
    for name, vs in vecs.items():
        if name != "herd":
            out[name] = min(sum(a * b for a, b in zip(x, y)) /
                            (sum(a * a for a in x) ** 0.5 * sum(b * b for b in y) ** 0.5)
                            for x, y in zip(vecs["herd"], vs))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/benchmarks.md"))
    ap.add_argument("--report", action="store_true",
                    help="only rewrite the section from bench/results/embeddings-latest.json")
    args = ap.parse_args()
    if args.report:
        with open(os.path.join(ROOT, "bench/results/embeddings-latest.json")) as f:
            write_section(args.out, section(json.load(f)))
        return
    if not os.path.isfile(GGUF):
        raise SystemExit(f"{GGUF} missing: run .ci/setup")
    subprocess.run(["cargo", "build", "--release", "-p", "herd-gateway", "--bin", "herd"],
                   cwd=ROOT, check=True)
    runs = {}
    for rep in range(args.reps):
        for name, start in servers(args):
            port = free_port()
            proc = start(port)
            try:
                for case, batch, clients in CASES:
                    r = rate(port, "minilm", batch, args.seconds, clients)
                    runs.setdefault(name, {}).setdefault(case, []).append(r)
                    print(f"rep {rep} {name:28} {case:20} {r:9.1f} embeddings/s", flush=True)
            finally:
                proc.stop()
    # Agreement: all servers up at once, briefly.
    procs, ports = [], {}
    try:
        for name, start in servers(args):
            port = free_port()
            procs.append(start(port))
            ports[name] = port
        agree = agreement(ports)
    finally:
        for p in procs:
            p.stop()
    result = {"runs": runs, "agreement": agree, "seconds": args.seconds, "reps": args.reps,
              "threads": args.threads, "loadavg": os.getloadavg(), "nproc": os.cpu_count(),
              "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                       capture_output=True, text=True).stdout.strip()}
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench/results/embeddings-latest.json"), "w") as f:
        json.dump(result, f, indent=1)
    write_section(args.out, section(result))


def section(r):
    names = list(r["runs"])
    med = {n: {c: statistics.median(v) for c, v in r["runs"][n].items()} for n in names}
    lines = [TITLE, "",
             f"`bench/embeddings.py` (commit {r['commit']}): all-MiniLM-L6-v2 (f16 GGUF converted by "
             f"`.ci/setup`), {r['threads']} threads each, on a {r['nproc']}-vCPU machine shared with "
             f"other builds (load average at the end {r['loadavg'][0]:.1f}). Each cell: inputs "
             f"embedded per second, median (and range) of {r['reps']} runs of {r['seconds']:.0f} s, "
             "servers one at a time, alternating; the ratios are of medians. Short inputs (~12 tokens "
             "with [CLS]/[SEP]). With other builds taking most of the two cores, the absolute numbers "
             "are far below what this model does on an idle machine and vary from run to run; read "
             "the ratios, and rerun on a quiet machine for absolute numbers.", "",
             "| request | " + " | ".join(names) + " | herd ÷ " + " | herd ÷ ".join(names[1:]) + " |",
             "|---" * (2 * len(names)) + "|"]
    for case, _, _ in CASES:
        cells = [f"{med[n][case]:.1f} ({min(r['runs'][n][case]):.1f}–{max(r['runs'][n][case]):.1f})"
                 for n in names]
        ratios = [f"{med['herd'][case] / med[n][case]:.2f}" for n in names[1:]]
        lines.append(f"| {case} | " + " | ".join(cells + ratios) + " |")
    lines += ["", "Same vectors: the least cosine similarity between herd's and llama-server's "
              "vectors for 32 inputs is " + ", ".join(f"{v:.6f} ({n})" for n, v in
                                                     r["agreement"].items()) + ".", "",
              "Earlier runs are kept in `bench/results/embeddings-*.json`; compare them before "
              "reading much into one table: on this shared machine the same cell has moved by 2-4× "
              "between runs.", "",
              "herd packs up to 64 inputs (512 tokens) into one decode, round robin across the "
              "requests in flight (`engines/src/llama/embed.rs`); llama-server puts one input in "
              "each of its `-np` slots, so its defaults (4 slots) decode at most 4 inputs at once.",
              ""]
    return "\n".join(lines)


def write_section(path, text):
    with open(path) as f:
        doc = f.read()
    start = doc.find(TITLE)
    if start < 0:
        doc = doc.rstrip("\n") + "\n\n" + text
    else:
        end = doc.find("\n## ", start + len(TITLE))
        doc = doc[:start] + text + (doc[end + 1:] if end >= 0 else "")
    with open(path, "w") as f:
        f.write(doc)


if __name__ == "__main__":
    main()
