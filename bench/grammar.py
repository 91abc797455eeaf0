#!/usr/bin/env python3
"""Grammar-constrained decode speed ÷ unconstrained, side by side in one run.

Starts target/release/herd on the default model (one slot, one thread) and
sends the same prompt, alternating, unconstrained and constrained
(`response_format` json_object, a nested json_schema, a required tool call),
each streamed. The decode rate is (completion tokens - 1) ÷ (time from the
first content to the end), so prompt processing is left out. Medians of
REPS runs per mode and temperature; the result replaces the "Grammar-
constrained decode" section of docs/benchmarks.md.

Usage: bench/grammar.py [REPS]   (default 5)
"""
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.expanduser(os.environ.get(
    "HERD_TEST_MODEL", "~/.cache/herd/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
PROMPT = "List ten countries with their capital, population and two famous dishes, as JSON."
MAX_TOKENS = 200
SCHEMA = {
    "type": "object",
    "properties": {
        "countries": {"type": "array", "maxItems": 10, "items": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "maxLength": 40},
                "capital": {"type": "string", "maxLength": 40},
                "population": {"type": "integer"},
                "continent": {"enum": ["Africa", "America", "Asia", "Europe", "Oceania"]},
                "dishes": {"type": "array", "items": {"type": "string", "maxLength": 40}},
            },
            "required": ["name", "capital", "population", "continent", "dishes"],
        }},
    },
    "required": ["countries"],
}
TOOL = {"type": "function", "function": {"name": "save_countries", "parameters": SCHEMA}}
MODES = {
    "unconstrained": {},
    "json_object": {"response_format": {"type": "json_object"}},
    "json_schema": {"response_format": {"type": "json_schema",
                                        "json_schema": {"name": "countries", "schema": SCHEMA}}},
    "tool_call (required)": {"tools": [TOOL], "tool_choice": "required"},
}


def start_herd():
    herd = os.path.join(ROOT, "target/release/herd")
    proc = subprocess.Popen(
        [herd, "serve", "--model", MODEL, "--listen", "127.0.0.1:0", "--threads", "1",
         "--slots", "1", "--ctx-size", "4096"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "HERD_LOG": "info", "NO_COLOR": "1"})
    port = None
    for line in proc.stdout:
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        raise SystemExit("herd did not start")
    # Keep reading its log, so that a full pipe never blocks it.
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    for _ in range(600):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("herd did not become healthy")


def run(port, extra, temperature):
    body = {"model": "smollm2-135m-instruct", "stream": True, "max_tokens": MAX_TOKENS,
            "temperature": temperature, "seed": 7, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": PROMPT}], **extra}
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    c.request("POST", "/v1/chat/completions", json.dumps(body),
              {"content-type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"{r.status}: {r.read()[:300]!r}")
    first = None
    tokens = 0
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if ev.get("usage"):
            tokens = ev["usage"]["completion_tokens"]
        for ch in ev.get("choices", []):
            d = ch.get("delta", {})
            if first is None and (d.get("content") or d.get("tool_calls")):
                first = time.perf_counter()
    end = time.perf_counter()
    return (tokens - 1) / (end - first) if first and tokens > 1 else None, tokens


def main():
    reps = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    proc, port = start_herd()
    rates = {}
    try:
        for temperature in (0.0, 0.7):
            run(port, {}, temperature)  # warm-up
            for _ in range(reps):
                for mode, extra in MODES.items():
                    rate, tokens = run(port, extra, temperature)
                    if rate:
                        rates.setdefault((temperature, mode), []).append((rate, tokens))
    finally:
        proc.terminate()
        proc.wait()
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    lines = [
        "## Grammar-constrained decode",
        "",
        f"Regenerate with `bench/grammar.py` (~5 minutes). {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"commit `{commit}`, load average {os.getloadavg()[0]:.1f} at the end; one herd, `--slots 1 --threads 1`, "
        f"SmolLM2-135M Q4_1, the same prompt for every mode, sent alternating, {reps} runs each, max_tokens {MAX_TOKENS}. "
        "Decode tok/s = (completion tokens - 1) ÷ (end - first content), through HTTP + SSE. "
        "Goal: constrained ÷ unconstrained ≥ 0.9.",
        "",
        "| temperature | mode | decode tok/s (median) | ÷ unconstrained | tokens/answer (median) | runs (tok/s) |",
        "|---|---|---|---|---|---|",
    ]
    for temperature in (0.0, 0.7):
        base = statistics.median(r for r, _ in rates.get((temperature, "unconstrained"), [(0, 0)]))
        for mode in MODES:
            got = rates.get((temperature, mode), [])
            if not got:
                continue
            med = statistics.median(r for r, _ in got)
            toks = statistics.median(t for _, t in got)
            runs = ", ".join(f"{r:.1f}" for r, _ in got)
            ratio = f"{med / base:.2f}" if base else "-"
            lines.append(f"| {temperature} | {mode} | {med:.1f} | {ratio} | {toks:.0f} | {runs} |")
    section = "\n".join(lines) + "\n"
    print(section)
    path = os.path.join(ROOT, "docs/benchmarks.md")
    doc = open(path).read()
    pattern = re.compile(r"## Grammar-constrained decode\n.*?(?=\n## |\Z)", re.S)
    doc = pattern.sub(section.rstrip("\n"), doc) if pattern.search(doc) else doc.rstrip("\n") + "\n\n" + section
    open(path, "w").write(doc)


if __name__ == "__main__":
    main()
