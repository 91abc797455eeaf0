#!/usr/bin/env python3
"""Load: 64 concurrent streams (closed loop, each waits out a refusal's
Retry-After as OpenAI's SDKs do) plus 2,000 short streamed requests arriving
at a fixed rate, both from `herd bench`, against one SmolLM2 deployment.
Every request must complete or be refused with 429/503 and Retry-After; no
other error; /metrics must count what the clients saw.

Usage: bench/load_mix.py --herd target/release/herd [--short 2000] [--rate 10] [--json out.json]
"""
import argparse
import asyncio
import json
import subprocess
import time

import httpc
import observe
from rel import MODEL_ID, log, port_of, start_herd

SERVER_FLAGS = ["--threads", "1", "--slots", "32", "--ctx-size", "512", "--max-queue", "64"]


def bench_cmd(herd, base_url, *args):
    return [herd, "bench", "--json", "--no-progress", "--base-url", base_url, "--model", MODEL_ID,
            "--timeout", "300", *map(str, args)]


def verdict(report):
    """Completed, refusals with/without Retry-After, and anything else, of one report."""
    errors = report["requests"]["errors"]
    refused = sum(b["count"] for k, b in errors.items() if k in ("429", "503"))
    refused_with = sum(b["with_retry_after"] for k, b in errors.items() if k in ("429", "503"))
    other = {k: b for k, b in errors.items() if k not in ("429", "503")}
    return {"completed": report["requests"]["completed"], "refused": refused,
            "refused_with_retry_after": refused_with,
            "refused_by_status": {k: b["count"] for k, b in errors.items() if k in ("429", "503")},
            "other_errors": {k: {"count": b["count"], "example": b["example"]}
                             for k, b in other.items()},
            "ttft_ms": report["ttft_ms"], "e2e_ms": report["e2e_ms"],
            "output_tok_s": round(report["output_tok_s"]["aggregate"], 1),
            "duration_s": round(report["duration_s"], 1)}


def run(herd, short, rate, streams, stream_tokens, log_to=None):
    with start_herd(herd, *SERVER_FLAGS, log_to=log_to) as server, \
            observe.Sampler(server.proc.pid, period=1.0) as sampler:
        port, v1 = port_of(server), server.url + "/v1"
        duration = short / rate + 5
        long_cmd = bench_cmd(herd, v1, "-c", streams, "--duration", duration, "--max-tokens",
                             stream_tokens, "--prompt-tokens", 64, "--honor-retry-after")
        short_cmd = bench_cmd(herd, v1, "-c", short, "--rate", rate, "-n", short,
                              "--max-tokens", 8, "--prompt-tokens", 16)
        log(f"load: {streams} streams for {duration:.0f} s + {short} short requests at {rate}/s")
        t0 = time.monotonic()
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for cmd in (long_cmd, short_cmd)]
        reports = []
        for p in procs:
            out, err = p.communicate(timeout=3600)
            try:
                reports.append(json.loads(out))
            except json.JSONDecodeError as e:
                raise RuntimeError(f"herd bench gave no report: {err}") from e
        wall = time.monotonic() - t0
        metrics = observe.requests_by_status(asyncio.run(httpc.get_text("/metrics", port)) or "")
        alive = server.proc.poll() is None
        long_v, short_v = verdict(reports[0]), verdict(reports[1])
        client = {}
        for v in (long_v, short_v):
            client["200"] = client.get("200", 0) + v["completed"]
            for k, n in v["refused_by_status"].items():
                client[k] = client.get(k, 0) + n
            for k, b in v["other_errors"].items():
                client[k] = client.get(k, 0) + b["count"]
        five_xx = sum(n for k, n in client.items() if k.startswith("5") and k != "503")
        refused = long_v["refused"] + short_v["refused"]
        refused_with = long_v["refused_with_retry_after"] + short_v["refused_with_retry_after"]
        return {
            "server_flags": SERVER_FLAGS, "streams": streams, "stream_max_tokens": stream_tokens,
            "short_requests": short, "short_rate": rate, "wall_s": round(wall, 1),
            "long": long_v, "short": short_v,
            "ok": (not long_v["other_errors"] and not short_v["other_errors"]
                   and refused == refused_with and alive),
            "five_xx_other_than_503": five_xx,
            "refusals_without_retry_after": refused - refused_with,
            "metrics_vs_client": {k: {"client": client.get(k, 0), "metrics": metrics.get(k, 0)}
                                  for k in sorted(set(client) | set(metrics))},
            "peak": sampler.peak(),
            "gateway_alive_at_end": alive,
            "commands": [" ".join(map(str, c)) for c in (long_cmd, short_cmd)],
        }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--herd", required=True)
    ap.add_argument("--short", type=int, default=2000, help="short requests")
    ap.add_argument("--rate", type=float, default=10.0, help="short requests per second")
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--stream-tokens", type=int, default=64)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--log", help="copy the server's log here")
    opts = ap.parse_args()
    result = run(opts.herd, opts.short, opts.rate, opts.streams, opts.stream_tokens, opts.log)
    text = json.dumps(result, indent=1)
    if opts.json:
        with open(opts.json, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
