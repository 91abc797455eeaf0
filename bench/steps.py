#!/usr/bin/env python3
"""What the engine's step planning costs and buys: two herd binaries (an older
commit and this one) side by side, one server at a time, alternating, each
load run REPS times through `herd bench`:

- prefill: one request at a time, a ~500-token prompt nobody cached, 1 token
  out: time to first token is prompt processing (short paced steps cost it
  their fixed overhead, if anything);
- eight streams: 8 concurrent streams of 128 tokens (ignore_eos), aggregate
  output tok/s (steps of fewer sequences read the weights more often);
- small among streams: 16 streams of 200 tokens with ~150-token prompts start
  together; 1.5 s later one 2-token request: its time to first token (what a
  step planned for short waits buys).

Usage: bench/steps.py --old PATH [--new target/release/herd] [--reps 3]
Prints a markdown table (medians, and every run).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import threading
import time

import procs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.expanduser(os.environ.get(
    "HERD_TEST_MODEL", "~/.cache/herd/models/SmolLM2-135M-Instruct.Q4_1.gguf"))


def start(binary):
    proc = subprocess.Popen(
        [binary, "serve", "--model", MODEL, "--listen", "127.0.0.1:0", "--threads", "1",
         "--slots", "17", "--ctx-size", "8192", "--max-queue", "64"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "NO_COLOR": "1"})
    for line in proc.stdout:
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
            procs.wait_healthy(f"http://127.0.0.1:{m.group(1)}", binary)
            return proc, f"http://127.0.0.1:{m.group(1)}/v1"
    raise SystemExit(f"{binary} did not start")


def bench(herd, url, *args):
    out = subprocess.run([herd, "bench", "--base-url", url, "--json", "--no-progress", *args],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def loads(herd, url):
    bench(herd, url, "-n", "2", "--max-tokens", "4")  # the engine is up and warm
    got = {}
    r = bench(herd, url, "-c", "1", "-n", "2", "--prompt-tokens", "500", "--max-tokens", "1",
              "--stream", "true")
    got["prefill TTFT ms (500-token prompt)"] = r["ttft_ms"]["p50"]
    r = bench(herd, url, "-c", "8", "-n", "8", "--prompt-tokens", "32", "--max-tokens", "128",
              "--ignore-eos", "--stream", "true")
    got["8 streams: aggregate tok/s"] = r["output_tok_s"]["aggregate"]
    streams = threading.Thread(target=bench, args=(
        herd, url, "-c", "16", "-n", "16", "--prompt-tokens", "150", "--max-tokens", "200",
        "--ignore-eos", "--stream", "true"))
    streams.start()
    time.sleep(1.5)
    r = bench(herd, url, "-c", "1", "-n", "1", "--prompt-tokens", "4", "--max-tokens", "2",
              "--stream", "true")
    got["small request TTFT ms among 16 new streams"] = r["ttft_ms"]["p50"]
    streams.join()
    return got


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", default=os.path.join(ROOT, "target/release/herd"))
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    runs = {"before": [], "after": []}
    for _ in range(args.reps):
        for label, binary in (("before", args.old), ("after", args.new)):
            proc, url = start(binary)
            try:
                runs[label].append(loads(args.new, url))
            finally:
                proc.terminate()
                proc.wait()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
          f"{os.getloadavg()[0]:.1f} at the end, {args.reps} runs each, alternating\n")
    print("| load | before (median; runs) | after (median; runs) | after ÷ before |")
    print("| --- | --- | --- | ---: |")
    for key in runs["before"][0]:
        cells = []
        for label in ("before", "after"):
            xs = [r[key] for r in runs[label]]
            cells.append((statistics.median(xs), ", ".join(f"{x:.1f}" for x in xs)))
        ratio = cells[1][0] / cells[0][0] if cells[0][0] else float("nan")
        print(f"| {key} | {cells[0][0]:.1f}; {cells[0][1]} | {cells[1][0]:.1f}; {cells[1][1]} "
              f"| {ratio:.2f} |")


if __name__ == "__main__":
    main()
