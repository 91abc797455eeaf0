"""The "## P4: proxy overhead" section of docs/benchmarks.md from
bench/proxy.py's results (kept as bench/results/proxy-latest.json)."""
import os
import re
import statistics

TITLE = "## P4: proxy overhead"
GOAL_RATE = 2000
GOAL_P50_MS, GOAL_P99_MS = 0.050, 0.5
KIND_NAMES = {"chat": "chat completion (JSON)", "stream": "chat completion stream (SSE)"}


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ms(x, digits=3):
    return "—" if x is None else f"{x:.{digits}f}"


def us(x):
    return "—" if x is None else f"{x * 1000:+.0f}"


def rows_of(rows, target, kind, rate):
    return [x for x in rows if x["target"] == target and x["kind"] == kind
            and x["offered"] == rate]


def added(rows, target, kind, rate, field):
    """Median over repetitions of (target − direct) in the same repetition."""
    direct = {x["rep"]: x for x in rows_of(rows, "direct", kind, rate)}
    diffs = [x[field] - direct[x["rep"]][field] for x in rows_of(rows, target, kind, rate)
             if x["rep"] in direct and x[field] is not None
             and direct[x["rep"]][field] is not None]
    return med(diffs)


def sustained(xs):
    return bool(xs) and all(x["failed"] == 0 and x["achieved"] >= 0.95 * x["offered"] for x in xs)


GOALS = [  # (what, field, kind, goal)
    ("p50 added, chat JSON", "p50_ms", "chat", GOAL_P50_MS),
    ("p99 added, chat JSON", "p99_ms", "chat", GOAL_P99_MS),
    ("p50 added, stream TTFT", "ttft_p50_ms", "stream", GOAL_P50_MS),
    ("p99 added, stream TTFT", "ttft_p99_ms", "stream", GOAL_P99_MS),
]


def kept_up(lat, target, rates):
    """(requests failed, the rates at which `target` kept up with every kind)."""
    xs = [x for x in lat if x["target"] == target]
    kept = [rate for rate in rates
            if all(sustained(rows_of(lat, target, k, rate)) for k in KIND_NAMES)]
    return sum(x["failed"] for x in xs), kept


def headline(r):
    """One run's figures that the goals are judged on, kept across runs."""
    lat = r.get("latency") or []
    loads = [x["load"] for x in lat + (r.get("litellm") or [])]
    h = {"date": r["machine"]["date"], "commit": r["machine"]["commit"],
         "load": [min(loads), max(loads)] if loads else None}
    for _, field, kind, _ in GOALS:
        for t in ("herd", "nginx-proxy"):
            h[f"{t} {kind} {field}"] = added(lat, t, kind, GOAL_RATE, field)
    for rate in r["rates"]:  # p50 below the goal's rate too, where herd keeps up
        for t in ("herd", "nginx-proxy"):
            h[f"{t} chat p50_ms @{rate}"] = added(lat, t, "chat", rate, "p50_ms")
    for t in ("herd", "nginx-proxy"):
        h[f"{t} failed"], kept = kept_up(lat, t, r["rates"])
        h[f"{t} kept up to"] = max(kept) if kept else None
    h["top rate"] = max(r["rates"])
    for m in r.get("memory") or []:
        h["streams"] = m["streams"]
        h[f"{m['target']} held MiB"] = m["held_mib"]
        h[f"{m['target']} idle MiB"] = m["idle_mib"]
    return h


def runs_median(runs, key):
    return med([h.get(key) for h in runs])


def verdicts(runs):
    """(what, herd's median, reference's median, each run's herd value, goal, met)."""
    out = []
    for what, field, kind, goal in GOALS:
        key = f"herd {kind} {field}"
        a = runs_median(runs, key)
        out.append((f"{what} @ {GOAL_RATE}/s", a, runs_median(runs, f"nginx-proxy {kind} {field}"),
                    [h.get(key) for h in runs], goal, a is not None and a <= goal))
    top = max(h["top rate"] for h in runs)

    def errors(t):
        failed = [h[f"{t} failed"] for h in runs]
        kept = [h[f"{t} kept up to"] for h in runs]
        worst = min((k or 0) for k in kept)
        text = f"{sum(failed)} failed" + ("" if worst >= top else
                                          f"; kept up through {worst}/s" if worst else
                                          "; fell behind at every rate")
        return text, sum(failed) == 0 and worst >= top

    herd, ok = errors("herd")
    out.append((f"errors through {top}/s (all runs)", herd, errors("nginx-proxy")[0], None,
                0, ok))
    return out


def shown(value):
    return (f"{value * 1000:+.0f} µs" if isinstance(value, float)
            else "—" if value is None else str(value))


def goal_text(goal):
    return f"≤ {goal * 1000:.0f} µs" if isinstance(goal, float) else "none"


def summary_rows(runs):
    """Rows for bench/run's summary table (7 columns)."""
    return [("P4", f"herd as a proxy in front of a fixed nginx upstream: {what}, median of "
             f"{len(runs)} runs (reference: nginx as the proxy; section P4: proxy overhead)",
             shown(value), shown(ref), "", goal_text(goal), "**met**" if met else "**missed**")
            for what, value, ref, _, goal, met in verdicts(runs)]


def runs_table(runs):
    out = ["| run | load | " + " | ".join(f"herd {w} (nginx proxy)" for w, _, _, _ in GOALS)
           + " | herd p50 added, chat JSON, at lower rates (nginx proxy) | herd kept up through "
           "| herd RSS with the streams open |",
           "|" + "---|" * (len(GOALS) + 5)]
    for h in runs:
        cells = [f"{h['date']} `{h['commit']}`",
                 "—" if not h["load"] else f"{h['load'][0]:.1f}–{h['load'][1]:.1f}"]
        for _, field, kind, _ in GOALS:
            cells.append(f"{shown(h.get(f'herd {kind} {field}'))} "
                         f"({shown(h.get(f'nginx-proxy {kind} {field}'))})")
        lower = [k.split("@")[1] for k in h if k.startswith("herd chat p50_ms @")
                 and int(k.split("@")[1]) < GOAL_RATE]
        cells.append(", ".join(f"{shown(h[f'herd chat p50_ms @{x}'])} "
                               f"({shown(h.get(f'nginx-proxy chat p50_ms @{x}'))}) @ {x}/s"
                               for x in lower) or "—")
        cells.append(f"{h.get('herd kept up to') or '—'}/s, {h.get('herd failed')} failed")
        held = h.get("herd held MiB")
        cells.append("—" if held is None else f"{held:.1f} MiB ({h.get('streams')} streams)")
        out.append("| " + " | ".join(cells) + " |")
    return out


def latency_table(r, kind):
    lat = r["latency"]
    ttft = kind == "stream"
    head = ("| rate/s | target | achieved/s | failed | "
            + ("TTFT p50 | TTFT p99 | " if ttft else "")
            + "e2e p50 | e2e p99 | e2e p99 of each run | added p50 µs | added p99 µs |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    first = "ttft_p50_ms" if ttft else "p50_ms"
    second = "ttft_p99_ms" if ttft else "p99_ms"
    targets = [t for t in ("direct", "herd", "nginx-proxy") if any(x["target"] == t for x in lat)]
    for rate in r["rates"]:
        for t in targets:
            xs = rows_of(lat, t, kind, rate)
            if not xs:
                continue
            cells = [str(rate), t, f"{med([x['achieved'] for x in xs]):.0f}",
                     str(sum(x["failed"] for x in xs))]
            if ttft:
                cells += [ms(med([x["ttft_p50_ms"] for x in xs])),
                          ms(med([x["ttft_p99_ms"] for x in xs]))]
            cells += [ms(med([x["p50_ms"] for x in xs])), ms(med([x["p99_ms"] for x in xs])),
                      ", ".join(ms(x["p99_ms"], 2) for x in xs)]
            cells += (["", ""] if t == "direct" else
                      [us(added(lat, t, kind, rate, first)), us(added(lat, t, kind, rate, second))])
            out.append("| " + " | ".join(cells) + " |")
    return out


def litellm_table(r):
    rows = r["litellm"]
    out = ["| rate/s | target | request | runs | achieved/s | failed | p50 ms | p99 ms | "
           "added p50 ms | added p99 ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    seen = []
    for x in rows:
        key = (x["offered"], x["target"], x["kind"])
        if key in seen:
            continue
        seen.append(key)
        xs = rows_of(rows, x["target"], x["kind"], x["offered"])
        # For streams the latency that matters to a client is the first token.
        p50, p99 = ("ttft_p50_ms", "ttft_p99_ms") if x["kind"] == "stream" else ("p50_ms", "p99_ms")
        a50 = added(rows, x["target"], x["kind"], x["offered"], p50)
        a99 = added(rows, x["target"], x["kind"], x["offered"], p99)
        out.append(f"| {x['offered']} | {x['target']} | {KIND_NAMES[x['kind']]}"
                   f"{' (TTFT)' if x['kind'] == 'stream' else ''} | {len(xs)} | "
                   f"{med([y['achieved'] for y in xs]):.0f} | {sum(y['failed'] for y in xs)} | "
                   f"{ms(med([y[p50] for y in xs]), 2)} | {ms(med([y[p99] for y in xs]), 2)} | "
                   f"{'' if x['target'] == 'direct' or a50 is None else f'{a50:.2f}'} | "
                   f"{'' if x['target'] == 'direct' or a99 is None else f'{a99:.2f}'} |")
    return out


def memory_table(r):
    out = ["| target | idle MiB | with all streams open MiB (median) | peak MiB | after MiB | "
           "streams open upstream at most | seconds all open | completed | failed | "
           "KiB per stream | TTFT p50 s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in r["memory"]:
        per = ((m["held_mib"] - m["idle_mib"]) * 1024 / m["streams"]
               if m["held_mib"] is not None else None)
        out.append(f"| {m['target']} | {m['idle_mib']:.1f} | {ms(m['held_mib'], 1)} | "
                   f"{m['peak_mib']:.1f} | {m['after_mib']:.1f} | {m['max_open_upstream']} | "
                   f"{m['seconds_all_open']:.1f} | {m['completed']} | {m['failed']} | "
                   f"{'—' if per is None else f'{per:.0f}'} | "
                   f"{ms((m['ttft_p50_ms'] or 0) / 1000, 2)} |")
    return out


def section(r, runs):
    m = r["machine"]
    loads = [x["load"] for x in (r.get("latency") or []) + (r.get("litellm") or [])]
    out = [TITLE, "",
           f"Regenerate with `{r['command']}` ({r['minutes']:.0f} minutes on this machine; the "
           "first run also installs nginx with apt-get and LiteLLM with pip). Each run adds a "
           "line to bench/results/proxy-runs.json; the goals are judged on the median of those "
           "runs, the tables after them are the last run's. The method, and what limits the "
           "numbers, are under the tables.", "",
           f"- last run: {m['date']}; commit `{m['commit']}`"
           f"{' (with uncommitted changes)' if m['tree_dirty'] else ''}; herd binary built "
           f"{r['herd_built']}; nginx {m['nginx']} (Debian)",
           f"- machine: {m['cpu']}, {m['cores']} vCPUs shared with other work, Linux "
           f"{m['kernel']}; load average {m['load_before']:.1f} before, {m['load_after']:.1f} "
           f"after" + (f", {min(loads):.1f}–{max(loads):.1f} during the runs" if loads else ""),
           ""]
    if runs:
        out += ["| goal | herd, median of runs | nginx as the proxy (reference) | herd, each run "
                "| goal | |", "|---|---|---|---|---|---|"]
        for what, value, ref, each, goal, met in verdicts(runs):
            out.append(f"| {what} | {shown(value)} | {shown(ref)} | "
                       f"{'' if each is None else ', '.join(shown(x) for x in each)} | "
                       f"{goal_text(goal)} | {'**met**' if met else '**missed**'} |")
        out += ["", "Each run (added latency at "
                f"{GOAL_RATE}/s, median over its repetitions):", ""] + runs_table(runs) + [""]
    if r.get("latency"):
        for kind in ("chat", "stream"):
            out += [f"### P4 latency: {KIND_NAMES[kind]}, ms (last run)", ""]
            out += latency_table(r, kind) + [""]
    if r.get("litellm"):
        out += ["### P4 reference: LiteLLM in front of the same upstream", ""]
        out += litellm_table(r) + [""]
    if r.get("memory"):
        out += [f"### Memory: {r['memory'][0]['streams']} concurrent streams", ""]
        out += memory_table(r) + [""]
    out += ["### Commands (P4)", "", "```"] + r.get("commands", []) + ["```", ""]
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "proxy-analysis.md")
    if os.path.isfile(notes):
        with open(notes) as f:
            out.append(f.read().rstrip())
    return "\n".join(out).rstrip() + "\n"


def generic_commands(commands, tmp):
    out = []
    for line in commands:
        line = line.replace(tmp, "$TMP")
        line = re.sub(r"(127\.0\.0\.1):\d+", r"\1:PORT", line)
        line = re.sub(r"--rate [\d.]+", "--rate RATE", line)
        line = re.sub(r"--duration [\d.]+", "--duration SECS", line)
        if line not in out:
            out.append(line)
    return out


def write(path, r, runs):
    """Replaces this section of `path` (its title up to the next `## ` heading),
    or puts it before the sharded deployments' section, or at the end."""
    text = open(path).read() if os.path.isfile(path) else ""
    new = section(r, runs).rstrip() + "\n"
    start = text.find(TITLE)
    if start >= 0:
        end = text.find("\n## ", start + len(TITLE))
        text = text[:start] + new + (text[end:] if end >= 0 else "")
    else:
        at = text.find("\n## Sharded deployments")
        text = (text.rstrip() + "\n\n" + new if at < 0
                else text[:at + 1] + new + "\n" + text[at + 1:])
    with open(path, "w") as f:
        f.write(text)
