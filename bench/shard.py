#!/usr/bin/env python3
"""Sharded deployments side by side: P5 (decode of a model split over 2 and 3
nodes ÷ one node, herd and llama.cpp's own RPC split alike), P6 (llama.cpp's
RPC client to a herd shard worker through herd's tunnel ÷ direct), and load
(time to "ready" and bytes through the tunnel, first load vs reload).

Everything runs on this machine, one process per node, every process with the
same thread budget (OpenMP busy-waits: 1 each on 2 cores). Variants alternate
within each repetition; medians of the per-repetition ratios are reported.

Usage: bench/shard.py [--threads 1] [--reps 5] [--only P5,P6,LOAD] [--no-build]
       bench/shard.py --render   (rewrite the section from bench/results/shard-latest.json)
Writes the "## Sharded deployments (P5, P6, load)" section of docs/benchmarks.md
(the rest of the file is left alone) and bench/results/shard-latest.json.
Env:   HERD_BENCH_MODEL (default ~/.cache/herd/models/SmolLM2-135M-Instruct.Q4_1.gguf)
"""
import argparse
import datetime
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import procs  # noqa: E402
import shard_report  # noqa: E402
from procs import Server, herd_bench  # noqa: E402

CACHE = os.environ.get("HERD_CACHE", os.path.expanduser("~/.cache/herd"))
MODEL = os.environ.get("HERD_BENCH_MODEL",
                       os.path.join(CACHE, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
HERD = os.path.join(ROOT, "target/release/herd")
DEPLOYMENT = "smollm"
# Loopback addresses of their own, so that other herd clusters on the machine
# (tests, other people's runs on 127.0.0.x) cannot collide with these nodes.
NODE_IPS = ["127.0.88.1", "127.0.88.2", "127.0.88.3"]
# What herd's split keeps on the head whatever the layer split: the token
# embedding and the output layer (engines/src/llama/rpc.rs). llama-bench is
# given the same override so that both split the same tensors.
HEAD_TENSORS = "^output|^token_embd=CPU"
TUNNEL_LINE = re.compile(r"(\S+Z)\s+INFO .*tunnel closed peer=(\S+) service=(\S+) "
                         r"sent_bytes=(\d+) sent_messages=(\d+) received_bytes=(\d+) "
                         r"received_messages=(\d+) secs=([\d.]+)")
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6})\d*Z")


def log(msg: str):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def sh(argv, **kw) -> str:
    procs.record(argv)
    return subprocess.run(argv, check=True, capture_output=True, text=True, cwd=ROOT,
                          **kw).stdout.strip()


def free_port(ip="127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} does not listen on port {port}")


def get_json(url: str, timeout=2.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.load(r)
    except (OSError, ValueError):
        return None


def log_time(line: str) -> float:
    """A herd log line's timestamp (UTC), as a Unix time."""
    m = LOG_TIME.match(line)
    if not m:
        return float("nan")
    return datetime.datetime.fromisoformat(m.group(1) + "+00:00").timestamp()


# A stream echo server: the far end of the round-trip measurement.
ECHO_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen()
while True:
    c, _ = s.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while d := c.recv(65536):
        c.sendall(d)
    c.close()
"""


def round_trip_us(port, n=2000, size=2304, idle_ms=0):
    """µs (median and mean) to send `size` bytes to the echo server at
    `port` and read them back, each round trip `idle_ms` after the last."""
    msg, times = b"h" * size, []
    with socket.create_connection(("127.0.0.1", port)) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(n + 100):
            if idle_ms:
                time.sleep(idle_ms / 1e3)
            t = time.perf_counter()
            c.sendall(msg)
            got = 0
            while got < size:
                got += len(c.recv(65536))
            if i >= 100:  # the first ones open the tunnel and warm up
                times.append(time.perf_counter() - t)
    return {"p50": median(times) * 1e6, "mean": statistics.mean(times) * 1e6}


def fmt_us(xs):
    return ", ".join(f"{x['p50']:.0f} (mean {x['mean']:.0f})" for x in xs)


def cpu_seconds(pid) -> float:
    """User + system CPU time of a running process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tunnel_lines(text: str):
    """The "tunnel closed" lines of a herd log: one per tunnel, with its traffic."""
    return [{"peer": m.group(2), "service": m.group(3),
             "sent_bytes": int(m.group(4)), "sent_messages": int(m.group(5)),
             "received_bytes": int(m.group(6)), "received_messages": int(m.group(7)),
             "secs": float(m.group(8))} for m in TUNNEL_LINE.finditer(text)]


class Proc:
    """A non-HTTP helper process (RPC servers, tunnel ends), in its own
    process group; ready once it accepts connections on `port` (or logs `ready_re`)."""

    def __init__(self, name, argv, port=None, ready_re=None):
        self.name, self.final_log = name, ""
        self.log = tempfile.NamedTemporaryFile(prefix=f"herd-shard-{name}-", suffix=".log",
                                               delete=False)
        procs.record(argv)
        env = {**os.environ, "HERD_LOG": "info", "NO_COLOR": "1"}
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        if ready_re:
            deadline = time.time() + 30
            while not re.search(ready_re, self.log_text()):
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"{name} did not start:\n{self.final_log[-2000:]}")
                time.sleep(0.05)
        if port:
            wait_port(port, self.proc, name)

    def log_text(self) -> str:
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.final_log = self.log_text()
        os.unlink(self.log.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class Node(Server):
    """A `herd serve` node; its log is kept after it stops (the tunnels log
    their traffic as they close, i.e. as the node shuts down)."""

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        self.final_log = self.log_text()
        super().stop()


class NodeDied(RuntimeError):
    """A node exited under the benchmark (on a shared machine, someone may
    stop every `herd` process): the repetition is run again."""


def retried(fn, *args):
    for attempt in (1, 2, 3):
        try:
            return fn(*args)
        except RuntimeError as e:  # NodeDied, a node that exited at start, failed requests
            if attempt == 3:
                raise
            log(f"failed ({str(e).splitlines()[0]}); running it again")
    return None


class Cluster:
    """A deployment of the model over `n` herd nodes on this machine, each
    with its own loopback address, state dir and model dir (a symlink to
    the one model file). `dir` persists across restarts of a node."""

    def __init__(self, n, threads, base):
        self.n, self.base = n, base
        os.makedirs(base, exist_ok=True)
        self.secret = os.path.join(base, "secret")
        with open(self.secret, "w") as f:
            f.write("shard-bench-" + os.urandom(16).hex() + "\n")
        os.chmod(self.secret, 0o600)
        nodes = "1" if n == 1 else "[" + ", ".join(f'"n{i + 1}"' for i in range(n)) + "]"
        self.config = os.path.join(base, "herd.toml")
        with open(self.config, "w") as f:
            f.write(f'[[models]]\nid = "{DEPLOYMENT}"\nmodel = "{os.path.basename(MODEL)}"\n'
                    f"nodes = {nodes}\nthreads = {threads}\nslots = 1\nctx_size = 1024\n")
        self.addrs = [f"{ip}:{free_port(ip)}" for ip in NODE_IPS[:n]]
        for i in range(n):
            store = os.path.join(base, f"s{i + 1}")
            os.makedirs(store, exist_ok=True)
            link = os.path.join(store, os.path.basename(MODEL))
            if not os.path.exists(link):
                os.symlink(MODEL, link)
        self.nodes = [None] * n

    def start_node(self, i):
        argv = [HERD, "serve", "--config", self.config, "--listen", self.addrs[i],
                "--name", f"n{i + 1}", "--cluster", "shard-bench", "--secret-file", self.secret,
                "--state-dir", os.path.join(self.base, f"st{i + 1}"),
                "--model-dir", os.path.join(self.base, f"s{i + 1}"), "--no-discovery"]
        if i > 0:
            argv += ["--peer", self.addrs[0]]
        # Up once it answers /cluster: /health stays 503 until the deployment is ready.
        env = {"HERD_LOG": "info,herd_gateway::access_log=warn", "NO_COLOR": "1"}
        self.nodes[i] = Node(f"n{i + 1}", argv, url="http://" + self.addrs[i],
                             health="/cluster", env=env)

    def start(self):
        for i in range(self.n):
            self.start_node(i)

    def deployment(self, i=0):
        view = get_json(f"http://{self.addrs[i]}/cluster")
        for d in (view or {}).get("deployments", []):
            if d["id"] == DEPLOYMENT:
                return d
        return None

    def wait_ready(self, via=0, timeout=300.0):
        """Polls /cluster every 50 ms until the deployment is ready with every
        shard loaded as planned; returns the deployment view."""
        deadline, bad_since = time.time() + timeout, None
        while time.time() < deadline:
            for node in self.nodes:
                if node and node.proc.poll() is not None:
                    raise NodeDied(f"{node.name} exited:\n{node.log_text()[-1500:]}")
            d = self.deployment(via)
            if d and d["state"] == "ready" and all(s.get("loaded") == s["layers"]
                                                   for s in d["shards"]):
                return d
            # A restarted node refuses the plan until it has heard from its peers.
            if d and d["state"] in ("failed", "refused"):
                bad_since = bad_since or time.time()
                if time.time() - bad_since > 30:
                    raise RuntimeError(f"deployment {d['state']}: {d.get('reason')}")
            else:
                bad_since = None
            time.sleep(0.05)
        raise RuntimeError(f"not ready after {timeout:.0f} s: {self.deployment(via)}")

    def url_of(self, name):
        return "http://" + self.addrs[int(name[1:]) - 1]

    def stop_node(self, i):
        node, self.nodes[i] = self.nodes[i], None
        if node:
            node.stop()
        return node

    def stop(self):
        # Shards first: a head that outlives them would log failures.
        for i in reversed(range(self.n)):
            self.stop_node(i)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def layout(deployment):
    """herd's plan as layer counts: head first, then each shard."""
    return [s["layers"]["end"] - s["layers"]["start"] for s in deployment["shards"]]


def rpc_args(remote, endpoints):
    """llama-bench flags giving the RPC servers exactly herd's layer counts
    (`remote`, in order), the same way herd drives llama.cpp
    (engines/src/llama/rpc.rs): the output layer counts as one more layer on
    the last device, and an override keeps its weights on the head."""
    split = list(remote)
    split[-1] += 1
    return ["--rpc", ",".join(endpoints), "-ngl", str(sum(remote) + 1),
            "-ts", "/".join(map(str, split)), "-ot", HEAD_TENSORS]


class Bench:
    def __init__(self, opts, llama_bin, tmp):
        self.t, self.reps, self.llama_bin, self.tmp = opts.threads, opts.reps, llama_bin, tmp
        self.secret = os.path.join(tmp, "secret")
        with open(self.secret, "w") as f:
            f.write("shard-bench-" + os.urandom(16).hex() + "\n")
        os.chmod(self.secret, 0o600)

    def llama_bench(self, *extra, reps=2):
        argv = [os.path.join(self.llama_bin, "llama-bench"), "-m", MODEL, "-t", str(self.t),
                "-p", "0", "-n", "128", "-r", str(reps), "-o", "json", *extra]
        return json.loads(sh(argv))[0]["avg_ts"]

    def rpc_server(self, name):
        port = free_port()
        return Proc(name, [os.path.join(self.llama_bin, "ggml-rpc-server"), "-H", "127.0.0.1",
                           "-p", str(port), "-t", str(self.t)], port=port), port

    def herd_worker(self, name):
        port = free_port()
        cache = tempfile.mkdtemp(prefix="herd-shard-cache-", dir=self.tmp)
        return Proc(name, [HERD, "rpc-worker", "--port", str(port), "--cache-dir", cache,
                           "--threads", str(self.t)], port=port), port

    def herd_decode(self, n, rep):
        """One fresh n-node deployment: tok/s of one 128-token stream at a time."""
        base = os.path.join(self.tmp, f"p5-{n}-{rep}")
        with Cluster(n, self.t, base) as c:
            t0 = time.time()
            c.start()
            d = c.wait_ready()
            ready_s = time.time() - t0
            r = herd_bench(HERD, c.url_of(d["head"]) + "/v1", "--model", DEPLOYMENT,
                           "-c", 1, "-n", 3, "--max-tokens", 128, "--warmup", 1)
        shutil.rmtree(base, ignore_errors=True)
        if r["requests"]["failed"]:
            raise NodeDied(f"{r['requests']['failed']} requests failed: {r['requests']['errors']}")
        return r, d, ready_s

    # --- P5: split decode ÷ single-node decode ------------------------------------------
    def p5(self):
        herd = {1: [], 2: [], 3: []}
        ref = {1: [], 2: [], 3: []}
        plans, ready = {}, {1: [], 2: [], 3: []}
        cpu = {"single": [], "split": []}
        servers = [self.rpc_server(f"ggml-rpc-server-{i}") for i in (1, 2)]
        try:
            endpoints = [f"127.0.0.1:{port}" for _, port in servers]
            for rep in range(self.reps):
                # Alternate the order of the variants between repetitions.
                order = (1, 2, 3) if rep % 2 == 0 else (3, 2, 1)
                for n in order:
                    r, d, secs = retried(self.herd_decode, n, rep)
                    herd[n].append(r["output_tok_s"]["per_stream"]["p50"])
                    plans[n] = layout(d)
                    ready[n].append(secs)
                    log(f"P5 rep {rep} herd {n} node(s) {plans[n]}: {herd[n][-1]:.1f} tok/s "
                        f"({r['tokens']['output_per_request']:.0f} tokens/request), "
                        f"ready {secs:.1f} s after start")
                for n in order:
                    if n == 1:
                        ref[1].append(self.llama_bench())
                    else:
                        # The same layer counts as herd's plan for n nodes.
                        plan = plans[n]
                        ref[n].append(self.llama_bench(*rpc_args(plan[1:], endpoints[:n - 1])))
                    log(f"P5 rep {rep} llama-bench {n} process(es): {ref[n][-1]:.1f} tok/s")
                # Where a split token's time goes: working or waiting.
                for name, args, pids in (("single", [], []),
                                         ("split", rpc_args(plans[2][1:], endpoints[:1]),
                                          [servers[0][0].proc.pid])):
                    cpu[name].append(self.cpu_per_token(args, pids))
                    c = cpu[name][-1]
                    log(f"P5 rep {rep} llama-bench {name}, ms per token: wall {c['wall_ms']:.2f}, "
                        f"CPU {c['client_cpu_ms']:.2f} (client) + {c['server_cpu_ms']:.2f} "
                        "(RPC server)")
        finally:
            for s, _ in servers:
                s.stop()
        ratio = lambda xs, ys: median([x / y for x, y in zip(xs, ys)])  # noqa: E731
        return {"herd_tok_s": herd, "llama_bench_tok_s": ref, "plans": plans,
                "herd_ready_s": ready,
                "herd_ratio": {n: ratio(herd[n], herd[1]) for n in (2, 3)},
                "llama_ratio": {n: ratio(ref[n], ref[1]) for n in (2, 3)},
                "herd_vs_llama": {n: ratio(herd[n], ref[n]) for n in (1, 2, 3)},
                "llama_bench_ms_per_token": cpu}

    def cpu_per_token(self, args, server_pids):
        """Wall and CPU ms per decoded token of llama-bench (and of its RPC
        servers): the difference of a 288- and a 32-token run, so that loading
        and warm-up cancel."""
        runs = []
        for n in (32, 288):
            argv = [os.path.join(self.llama_bin, "llama-bench"), "-m", MODEL, "-t", str(self.t),
                    "-p", "0", "-n", str(n), "-r", "1", "-o", "json", *args]
            servers = sum(cpu_seconds(p) for p in server_pids)
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.time()
            sh(argv)
            wall = time.time() - t
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            runs.append((wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
                         sum(cpu_seconds(p) for p in server_pids) - servers))
        per = [(b - a) / 256 * 1e3 for a, b in zip(*runs)]
        return {"wall_ms": per[0], "client_cpu_ms": per[1], "server_cpu_ms": per[2]}

    # --- P6: the tunnel's cost on llama.cpp's own RPC traffic ------------------------------
    def p6(self, remote=15):
        worker, wport = self.herd_worker("rpc-worker")
        # llama.cpp's own server too: is herd's worker (the same ggml RPC
        # server code, in herd's process) as fast as it?
        upstream, uport = self.rpc_server("ggml-rpc-server")
        eport = free_port()
        echo = Proc("echo", [sys.executable, "-c", ECHO_SERVER, str(eport)], port=eport)
        tport = free_port()
        keys = ["--secret-file", self.secret, "--cluster", "shard-bench"]
        serve = Proc("tunnel-serve", [HERD, "tunnel-serve", *keys, "--node-id", "worker",
                                      "--listen", f"127.0.0.1:{tport}",
                                      "--service", f"rpc/bench=127.0.0.1:{wport}",
                                      "--service", f"echo=127.0.0.1:{eport}"], port=tport)

        def forward(service):
            port = free_port()
            # Not probed by connecting: that would open a tunnel and log it.
            return Proc("tunnel-forward", [HERD, "tunnel-forward", *keys, "--node-id", "head",
                                           "--to", f"127.0.0.1:{tport}", "--dest", "worker",
                                           "--service", service, "--listen",
                                           f"127.0.0.1:{port}"], ready_re=r"forwarding 127"), port
        fwd, fport = forward("rpc/bench")
        efwd, efport = forward("echo")
        variants = [("direct", rpc_args([remote], [f"127.0.0.1:{wport}"])),
                    ("tunnel", rpc_args([remote], [f"127.0.0.1:{fport}"])),
                    ("ggml_rpc_server", rpc_args([remote], [f"127.0.0.1:{uport}"]))]
        out = {name: [] for name, _ in variants}
        out["remote_layers"] = remote
        try:
            # What one synchronous round trip costs, without llama.cpp: a
            # token's hidden state (576 floats) echoed back, direct vs tunnel,
            # back to back and to a far end that has been idle for 5 ms (as a
            # shard is while the head computes its layers).
            for key in ("rtt_direct_us", "rtt_tunnel_us", "rtt_direct_idle_us",
                        "rtt_tunnel_idle_us"):
                out[key] = []
            for _ in range(3):
                out["rtt_direct_us"].append(round_trip_us(eport))
                out["rtt_tunnel_us"].append(round_trip_us(efport))
                out["rtt_direct_idle_us"].append(round_trip_us(eport, n=300, idle_ms=5))
                out["rtt_tunnel_idle_us"].append(round_trip_us(efport, n=300, idle_ms=5))
            log(f"P6 round trip of 2304 bytes, µs: direct {fmt_us(out['rtt_direct_us'])}, "
                f"tunnel {fmt_us(out['rtt_tunnel_us'])}; after 5 ms idle: direct "
                f"{fmt_us(out['rtt_direct_idle_us'])}, tunnel {fmt_us(out['rtt_tunnel_idle_us'])}")
            # Cheap (~5 s a run) and noisy: three rounds per repetition, the
            # order rotating so that each variant runs first as often.
            for rep in range(3 * self.reps):
                for name, args in variants[rep % 3:] + variants[:rep % 3]:
                    out[name].append(self.llama_bench(*args))
                log(f"P6 rep {rep}: direct {out['direct'][-1]:.1f} tok/s, tunnel "
                    f"{out['tunnel'][-1]:.1f} tok/s, ggml-rpc-server "
                    f"{out['ggml_rpc_server'][-1]:.1f} tok/s")
            # Traffic per token: one run of 1 and one of 3 repetitions of
            # tg128; their difference is 256 decoded tokens, load and warm-up cancel.
            before = len(tunnel_lines(fwd.log_text()))
            counts = []
            for reps in (1, 3):
                self.llama_bench(*variants[1][1], reps=reps)
                time.sleep(0.5)
                lines = tunnel_lines(fwd.log_text())[before:]
                before += len(lines)
                counts.append({k: sum(x[k] for x in lines) for k in
                               ("sent_bytes", "sent_messages", "received_bytes",
                                "received_messages")})
            out["per_token"] = {k: (counts[1][k] - counts[0][k]) / 256 for k in counts[0]}
            out["per_run_load"] = counts[0]
        finally:
            for p in (efwd, fwd, serve, echo, upstream, worker):
                p.stop()
        ratio = lambda xs, ys: median([x / y for x, y in zip(xs, ys)])  # noqa: E731
        out["ratio"] = ratio(out["tunnel"], out["direct"])
        out["worker_vs_ggml_rpc_server"] = ratio(out["direct"], out["ggml_rpc_server"])
        log(f"P6 tunnel ÷ direct {out['ratio']:.3f}; herd worker ÷ ggml-rpc-server "
            f"{out['worker_vs_ggml_rpc_server']:.3f}; per token through the tunnel: "
            f"{out['per_token']}")
        return out

    # --- Load: time to ready and bytes, first load and reload -----------------------------
    def load(self):
        runs = []
        for rep in range(self.reps):
            row = retried(self.load_once, rep)
            runs.append(row)
            f, r = row["first"], row["reload"]
            log(f"load rep {rep}: first {f['ready_s']:.2f} s ({f['load_s']:.2f} s from the head "
                f"starting its engine to ready), head sent {f['sent_bytes'] / 1e6:.1f} MB; "
                f"reload {r['ready_s']:.2f} s ({r['load_s']:.2f} s), sent "
                f"{r['sent_bytes'] / 1e6:.1f} MB; shard cache {row['cache_files']} files, "
                f"{row['cache_bytes'] / 1e6:.1f} MB")
        return {"runs": runs}

    def load_once(self, rep):
        base = os.path.join(self.tmp, f"load-{rep}")
        shutil.rmtree(base, ignore_errors=True)  # a retry starts from an empty cache again
        row = {}
        with Cluster(2, self.t, base) as c:
            t0 = time.time()
            c.start()
            d = c.wait_ready()
            row["first"] = self.load_figures(c, t0, time.time(), d)
            cache = os.path.join(base, f"s{int(d['shards'][1]['node'][1:])}", ".rpc-cache")
            files = os.listdir(cache) if os.path.isdir(cache) else []
            row["cache_files"] = len(files)
            row["cache_bytes"] = sum(os.path.getsize(os.path.join(cache, f)) for f in files)
            # Restart the head only; the shard node keeps its worker's cache.
            head = int(d["head"][1:]) - 1
            node = c.stop_node(head)
            row["first"].update(self.head_traffic(node.final_log))
            t0 = time.time()
            c.start_node(head)
            d = c.wait_ready(via=head)
            row["reload"] = self.load_figures(c, t0, time.time(), d)
            node = c.stop_node(head)
            row["reload"].update(self.head_traffic(node.final_log))
        shutil.rmtree(base, ignore_errors=True)
        return row

    @staticmethod
    def load_figures(c, t0, t1, d):
        """Time to ready, split at the head starting its engine (placement
        before it, loading the model and streaming the shard's weights after)."""
        text = c.nodes[int(d["head"][1:]) - 1].log_text()
        start = [log_time(x) for x in text.splitlines() if "starting the engine" in x]
        return {"ready_s": t1 - t0, "plan_s": (start[0] - t0) if start else float("nan"),
                "load_s": (t1 - start[0]) if start else float("nan"), "plan": layout(d)}

    @staticmethod
    def head_traffic(text):
        lines = [x for x in tunnel_lines(text) if x["service"] == f"rpc/{DEPLOYMENT}"]
        return {"tunnels": len(lines), "sent_bytes": sum(x["sent_bytes"] for x in lines),
                "received_bytes": sum(x["received_bytes"] for x in lines)}


def machine():
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    lscpu = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": lscpu.get("Model name", "?").strip(), "cores": os.cpu_count(),
        "kernel": os.uname().release,
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                 capture_output=True, text=True).stdout.strip(),
        "tree_dirty": bool(dirty), "load_before": os.getloadavg()[0],
    }


def generic(line: str, tmp: str) -> str:
    """A command line with its temp dir, ports and secrets made generic."""
    line = line.replace(tmp, "$TMP")
    line = re.sub(re.escape(ECHO_SERVER) + r" \d+", '"$ECHO_SERVER" PORT', line)
    line = re.sub(r"\$TMP/herd-shard-cache-\w+", "$TMP/cache", line)
    line = re.sub(r"\$TMP/(p5|load)-\d-?\d*/", "$TMP/", line)
    line = re.sub(r"(127\.0\.\d+\.\d+):\d+", r"\1:PORT", line)
    if "rpc-server" in line:
        line = re.sub(r" -p \d+", " -p PORT", line)
    return line.replace(HEAD_TENSORS, f"'{HEAD_TENSORS}'")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1, help="threads per process, every process")
    ap.add_argument("--reps", type=int, default=5, help="repetitions (medians are reported)")
    ap.add_argument("--only", default="P5,P6,LOAD")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/benchmarks.md"))
    ap.add_argument("--no-build", action="store_true",
                    help="use target/release/herd as it is (e.g. while the tree does not build)")
    ap.add_argument("--render", action="store_true",
                    help="only rewrite the section from bench/results/shard-latest.json")
    opts = ap.parse_args()
    latest = os.path.join(HERE, "results/shard-latest.json")
    if opts.render:
        with open(latest) as f:
            shard_report.write(opts.out, json.load(f))
        return
    if not os.path.isfile(MODEL):
        sys.exit(f"model {MODEL} missing: run .ci/setup first")
    started = time.time()
    if opts.no_build:
        log(f"using {os.path.relpath(HERD, ROOT)} as built at "
            f"{time.strftime('%H:%M:%S', time.localtime(os.path.getmtime(HERD)))}")
    else:
        log("building herd (release)")
        subprocess.run(["cargo", "build", "--release", "--bin", "herd"], check=True, cwd=ROOT)
    log("building llama.cpp reference tools (cached)")
    llama_bin = subprocess.run([os.path.join(HERE, "build-llama-cpp")], check=True, text=True,
                               stdout=subprocess.PIPE).stdout.strip()
    only = set(opts.only.upper().split(","))
    results = {"machine": machine(), "threads": opts.threads, "reps": opts.reps,
               "herd_built": time.strftime("%Y-%m-%d %H:%M UTC",
                                           time.gmtime(os.path.getmtime(HERD))),
               "model": os.path.basename(MODEL), "model_bytes": os.path.getsize(MODEL)}
    tmp = tempfile.mkdtemp(prefix="herd-shard-")
    try:
        b = Bench(opts, llama_bin, tmp)
        for key, fn in (("P5", b.p5), ("P6", b.p6), ("LOAD", b.load)):
            if key in only:
                log(f"measuring {key}")
                results[key] = fn()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    results["machine"]["load_after"] = os.getloadavg()[0]
    results["minutes"] = (time.time() - started) / 60
    commands = []
    for line in procs.COMMANDS:
        line = generic(line, tmp)
        if line not in commands:
            commands.append(line)
    results["commands"] = commands
    results["command"] = " ".join(["bench/shard.py"] + sys.argv[1:])
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(latest, "w") as f:
        json.dump(results, f, indent=1)
    shard_report.write(opts.out, results)
    log(f"wrote {os.path.relpath(opts.out, ROOT)} and bench/results/shard-latest.json "
        f"in {results['minutes']:.0f} min")


if __name__ == "__main__":
    main()
