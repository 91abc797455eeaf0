#!/usr/bin/env python3
"""Grammar-constrained decode speed ÷ unconstrained, side by side in one run.

Starts target/release/herd on the default model (one slot, one thread) and,
with --old PATH, a second herd binary built from an older commit; sends the
same prompt, alternating modes and binaries, unconstrained and constrained
(`response_format` json_object, a nested json_schema, a required tool call),
each streamed. Only one request runs at a time, so the idle herd costs
nothing.

Two measures per answer, from the first content to the end (prompt
processing left out):
- decode tok/s = (completion tokens - 1) ÷ wall time, through HTTP + SSE;
  on a shared machine it swings with the other processes' load;
- engine CPU ms/token = the engine host's CPU time (/proc, user + system)
  over the same tokens: what generation costs, much less sensitive to load.
For a binary that logs it (`HERD_LOG=...batch=debug`), the grammar gate's
counts per answer: tokens the grammar refused and full-vocabulary checks.

Medians of REPS runs per mode, binary and temperature; the result replaces
the "Grammar-constrained decode" section of docs/benchmarks.md.

Usage: bench/grammar.py [--reps N] [--old PATH] [--no-write]
"""
import argparse
import http.client
import json
import os
import queue
import re
import statistics
import subprocess
import threading
import time

import procs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.expanduser(os.environ.get(
    "HERD_TEST_MODEL", "~/.cache/herd/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
PROMPT = "List ten countries with their capital, population and two famous dishes, as JSON."
MAX_TOKENS = 200
TEMPERATURES = (0.0, 0.7)
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
def tools_prompt(tools):
    """The system prompt herd writes for `tools` (gateway/src/validate/tools.rs)."""
    text = ("# Tools\n\nYou may call one or more of these functions to help with the user's request. "
            "Their signatures are inside <tools></tools>:\n<tools>\n")
    for t in tools:
        f = t["function"]
        text += json.dumps({"type": "function", "function": {
            "name": f["name"], "description": f.get("description"),
            "parameters": f["parameters"]}}, separators=(",", ":")) + "\n"
    return text + (
        "</tools>\n\nTo call a function, answer with a JSON object holding its name and arguments "
        "inside <tool_call></tool_call>, one block per call:\n<tool_call>\n"
        "{\"name\": <function-name>, \"arguments\": <arguments-json-object>}\n</tool_call>")


MODES = {
    "unconstrained": {},
    # The tool call's prompt without its grammar: a longer prompt makes every decode step
    # attend to more tokens, a cost of its own.
    "unconstrained, tools prompt": {"messages": [
        {"role": "system", "content": tools_prompt([TOOL])},
        {"role": "user", "content": PROMPT}]},
    "json_object": {"response_format": {"type": "json_object"}},
    "json_schema": {"response_format": {"type": "json_schema",
                                        "json_schema": {"name": "countries", "schema": SCHEMA}}},
    "tool_call (required)": {"tools": [TOOL], "tool_choice": "required"},
}
# The unconstrained run each mode is compared with: the one with the same prompt.
SAME_PROMPT = {"tool_call (required)": "unconstrained, tools prompt"}
STATS_LINE = "grammar-constrained choice finished"
TICK = os.sysconf("SC_CLK_TCK")


class Herd:
    """One `herd serve` with its engine host's pid and the gate counts it logs."""

    def __init__(self, binary, label):
        self.label = label
        self.stats = queue.Queue()
        self.proc = subprocess.Popen(
            [binary, "serve", "--model", MODEL, "--listen", "127.0.0.1:0", "--threads", "1",
             "--slots", "1", "--ctx-size", "4096"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "HERD_LOG": "info,herd_engines::llama::batch=debug",
                 "NO_COLOR": "1"})
        self.port = None
        for line in self.proc.stdout:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            raise SystemExit(f"{binary} did not start")
        # Keep reading its log, so that a full pipe never blocks it.
        threading.Thread(target=self._read_log, daemon=True).start()
        procs.wait_healthy(f"http://127.0.0.1:{self.port}", self.label)
        self.engine = self._engine_pid()

    def _read_log(self):
        for line in self.proc.stdout:
            if STATS_LINE in line:
                self.stats.put({k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)})

    def _engine_pid(self):
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                stat = open(f"/proc/{pid}/stat").read()
                cmd = open(f"/proc/{pid}/cmdline").read()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            if ppid == self.proc.pid and "engine-host" in cmd:
                return int(pid)
        raise SystemExit(f"{self.label}: no engine host found")

    def engine_cpu(self):
        stat = open(f"/proc/{self.engine}/stat").read()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def run(herd, extra, temperature):
    """One streamed answer: (tok/s, CPU ms/token, tokens, gate counts or None, prompt tokens)."""
    while not herd.stats.empty():
        herd.stats.get_nowait()
    body = {"model": "smollm2-135m-instruct", "stream": True, "max_tokens": MAX_TOKENS,
            "temperature": temperature, "seed": 7, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": PROMPT}], **extra}
    c = http.client.HTTPConnection("127.0.0.1", herd.port, timeout=300)
    c.request("POST", "/v1/chat/completions", json.dumps(body),
              {"content-type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise SystemExit(f"{r.status}: {r.read()[:300]!r}")
    first = cpu_first = None
    tokens = prompt_tokens = 0
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        ev = json.loads(line[6:])
        if ev.get("usage"):
            tokens = ev["usage"]["completion_tokens"]
            prompt_tokens = ev["usage"]["prompt_tokens"]
        for ch in ev.get("choices", []):
            d = ch.get("delta", {})
            if first is None and (d.get("content") or d.get("tool_calls")):
                first, cpu_first = time.perf_counter(), herd.engine_cpu()
    end, cpu_end = time.perf_counter(), herd.engine_cpu()
    stats = None
    if "response_format" in extra or "tools" in extra:
        try:
            stats = herd.stats.get(timeout=2)
        except queue.Empty:
            pass
    if not first or tokens < 2:
        return None
    return ((tokens - 1) / (end - first), 1000 * (cpu_end - cpu_first) / (tokens - 1), tokens,
            stats, prompt_tokens)


def med(xs, fmt):
    xs = [x for x in xs if x is not None]
    return fmt.format(statistics.median(xs)) if xs else "-"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--old", help="a herd binary from an older commit, measured alongside")
    ap.add_argument("--old-label", default="before")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    herds = []
    try:
        if args.old:
            herds.append(Herd(args.old, args.old_label))
        herds.append(Herd(os.path.join(ROOT, "target/release/herd"), "this commit"))
        results = {}
        for temperature in TEMPERATURES:
            for herd in herds:
                run(herd, {}, temperature)  # warm-up
            for _ in range(args.reps):
                for mode, extra in MODES.items():
                    for herd in herds:
                        got = run(herd, extra, temperature)
                        if got:
                            results.setdefault((temperature, mode, herd.label), []).append(got)
    finally:
        for herd in herds:
            herd.stop()
    write(args, herds, results)


def write(args, herds, results):
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    builds = ", ".join(f"{h.label}" for h in herds)
    lines = [
        "## Grammar-constrained decode",
        "",
        f"Regenerate with `bench/grammar.py --reps {args.reps}"
        f"{' --old <herd from an older commit>' if args.old else ''}` (~10 minutes). "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit `{commit}`, builds: {builds}; "
        f"load average {os.getloadavg()[0]:.1f} at the end; one herd per build, `--slots 1 --threads 1`, "
        f"SmolLM2-135M Q4_1, the same user message in every mode, sent alternating modes and builds (one "
        f"request at a time), {args.reps} runs each, max_tokens {MAX_TOKENS}, seed 7. From the first "
        "content to the end: decode tok/s = (completion tokens - 1) ÷ wall time, through HTTP + SSE; "
        "engine CPU = the engine host's CPU time over the same tokens (less sensitive to the machine's "
        "load than wall time). Each mode is compared with the unconstrained run on the same prompt "
        "(the tool call with \"unconstrained, tools prompt\": the tools' description makes it 262 tokens "
        "longer, which costs every decode step on its own). Efficiency = that run's CPU ms/token ÷ this "
        "mode's. Gate counts "
        "per answer (medians) where the build logs them: tokens the grammar refused, full-vocabulary "
        "checks. Goal: constrained ÷ unconstrained ≥ 0.9.",
        "",
        "| temperature | mode | build | prompt tokens | decode tok/s | ÷ unconstrained, same prompt | "
        "engine CPU ms/token | efficiency (CPU) | tokens/answer | refused / full checks per answer | "
        "runs (tok/s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for temperature in TEMPERATURES:
        for mode in MODES:
            for herd in herds:
                got = results.get((temperature, mode, herd.label), [])
                base_mode = SAME_PROMPT.get(mode, "unconstrained")
                base = results.get((temperature, base_mode, herd.label), [])
                if not got or not base:
                    continue
                rate = statistics.median(g[0] for g in got)
                cpu = statistics.median(g[1] for g in got)
                base_rate = statistics.median(b[0] for b in base)
                base_cpu = statistics.median(b[1] for b in base)
                stats = [g[3] for g in got if g[3]]
                gate = "-"
                if stats:
                    gate = (med([s.get("rejected") for s in stats], "{:.0f}") + " / " +
                            med([s.get("full") for s in stats], "{:.0f}"))
                runs = ", ".join(f"{g[0]:.0f}" for g in got)
                lines.append(
                    f"| {temperature} | {mode} | {herd.label} | {got[0][4]} | {rate:.1f} | "
                    f"{rate / base_rate:.2f} | "
                    f"{cpu:.2f} | {base_cpu / cpu:.2f} | {statistics.median(g[2] for g in got):.0f} | "
                    f"{gate} | {runs} |")
    section = "\n".join(lines) + "\n"
    print(section)
    if args.no_write:
        return
    path = os.path.join(ROOT, "docs/benchmarks.md")
    doc = open(path).read()
    pattern = re.compile(r"## Grammar-constrained decode\n.*?(?=\n## |\Z)", re.S)
    doc = (pattern.sub(lambda _: section.rstrip("\n"), doc) if pattern.search(doc)
           else doc.rstrip("\n") + "\n\n" + section)
    open(path, "w").write(doc)


if __name__ == "__main__":
    main()
