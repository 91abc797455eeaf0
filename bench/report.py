"""docs/benchmarks.md from bench/run's results (also kept as bench/results/latest.json)."""
import json
import os
import statistics

import proxy_report

HERE = os.path.dirname(os.path.abspath(__file__))


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def verdict(ok):
    return "**met**" if ok else "**missed**"


def fmt(xs, unit=""):
    return ", ".join(f"{x:.1f}{unit}" for x in xs)


def summary_rows(r):
    rows = []
    if "P1" in r:
        p = r["P1"]
        rows.append(("P1", "single-stream decode tok/s: herd HTTP ÷ llama-bench tg128",
                     f"{med(p['herd_tok_s']):.1f}", f"{med(p['llama_bench_tg128_tok_s']):.1f}",
                     f"{p['ratio']:.2f}", "≥ 1.00", verdict(p["ratio"] >= 1.0)))
    if "P2" in r:
        p = r["P2"]
        rows.append(("P2", "aggregate output tok/s, 8 streams: herd ÷ llama-server -np 8",
                     f"{med(p['aggregate']['herd']):.1f}",
                     f"{med(p['aggregate']['llama-server']):.1f}",
                     f"{p['ratio']:.2f}", "≥ 1.10", verdict(p["ratio"] >= 1.10)))
    if "P3" in r:
        h, l = r["P3"]["herd"], r["P3"]["llama-server"]
        rows.append(("P3", f"TTFT with a shared {h['prompt_tokens']:.0f}-token prefix ÷ cold TTFT "
                     "(ms; reference column: llama-server's own ratio)",
                     f"{med(h['warm_ms']):.1f} / {med(h['cold_ms']):.1f}",
                     f"{l['ratio']:.2f}", f"{h['ratio']:.2f}", "≤ 0.25",
                     verdict(h["ratio"] <= 0.25)))
    proxy = os.path.join(HERE, "results/proxy-runs.json")
    if os.path.isfile(proxy):
        with open(proxy) as f:
            rows += proxy_report.summary_rows(json.load(f))
    if "P7" in r:
        p = r["P7"]
        rows.append(("P7", "herd RSS idle (MiB) / growth per concurrent stream (MiB)",
                     f"{sum(p['herd_idle'].values()):.0f} / {p['herd_growth_per_stream_mib']:.1f}",
                     f"llama-server idle {sum(p['llama_server_idle'].values()):.0f}", "", "—", ""))
    if "copy_gb_s" in r and "P1" in r:
        bpt = r["model_bytes"]
        ceiling = r["copy_gb_s"] * 1e9 / bpt
        herd = med(r["P1"]["herd_tok_s"])
        rows.append(("BW", "decode vs memory bandwidth: copy GB/s (read+write), MB read per "
                     "token, ceiling tok/s, herd's share of it",
                     f"{r['copy_gb_s']:.1f} GB/s", f"{bpt / 1e6:.0f} MB/token → "
                     f"{ceiling:.0f} tok/s", f"{herd / ceiling:.2f}", "—", ""))
    return rows


def markdown(r, command):
    m = r["machine"]
    out = ["# Benchmarks", "",
           f"Regenerate with `{command}` (about 35 minutes on 2 cores, P4 ~16 of them; the first "
           "run also builds llama.cpp b11434 and installs nginx and LiteLLM, ~15 minutes more). "
           "Every ratio compares two things measured in the same run, one server at a time, "
           f"alternating, {r['reps']} repetitions (P1 {r['reps'] + 4}, P2 {r['reps'] + 2}), "
           "medians. The P4 rows are bench/proxy.py's (its own section below; each of its runs is "
           "kept, the rows give the median over them).", "",
           f"- date: {m['date']}; commit `{m['commit']}`"
           f"{' (with uncommitted changes)' if m['tree_dirty'] else ''}; {m['rustc']}",
           f"- machine: {m['cpu']}, {m['cores']} cores, L3 {m['l3']}, {m['memory_gib']} GiB, "
           f"Linux {m['kernel']}; load average {m['load_before']:.1f} before, "
           f"{m['load_after']:.1f} after (a shared machine: other work runs beside the bench)",
           f"- model: {r['model']} ({r['model_bytes'] / 1e6:.0f} MB); threads: {r['threads']} "
           "for herd's engine and for llama.cpp's tools alike", "",
           "| # | what | herd | reference | ratio | goal | |", "|---|---|---|---|---|---|---|"]
    out += ["| " + " | ".join(row) + " |" for row in summary_rows(r)]
    out += ["", "## Details", ""]
    if "P1" in r:
        p = r["P1"]
        out += ["### P1: single-stream decode",
                f"herd per-stream decode rate (tokens after the first ÷ time after the first, "
                f"through HTTP + SSE): {fmt(p['herd_tok_s'])} tok/s; llama-bench tg128: "
                f"{fmt(p['llama_bench_tg128_tok_s'])} tok/s."]
        if "herd_mmap_tok_s" in p:
            out += [f"How the weights are held: herd reads them into transparent-huge-page memory by "
                    f"default; with `--mmap true` (llama.cpp's default, the file mapped in 4 KiB "
                    f"pages) herd decoded {fmt(p['herd_mmap_tok_s'])} tok/s, "
                    f"÷ llama-bench {p['ratio_mmap_vs_bench']:.2f}. llama-bench given herd's "
                    f"setup (`-lm none` with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`): "
                    f"{fmt(p['llama_bench_huge_pages_tok_s'])} tok/s; herd ÷ that "
                    f"{p['ratio_vs_bench_huge_pages']:.2f}."]
        if "llama_server_tok_s" in p:
            out += [f"The same single-stream load through llama-server -np 1 (HTTP + SSE like "
                    f"herd): {fmt(p['llama_server_tok_s'])} tok/s; herd ÷ llama-server "
                    f"{p['ratio_vs_server']:.2f}."]
        out.append("")
    if "P2" in r:
        p = r["P2"]
        out += ["### P2: 8 concurrent streams", "| server | aggregate tok/s | tokens/request | "
                "TTFT p50 ms | ITL p50 ms | ITL p99 ms |", "|---|---|---|---|---|---|"]
        for name, runs in p["runs"].items():
            for x in runs:
                out.append(f"| {name} | {x['output_tok_s']['aggregate']:.1f} | "
                           f"{x['tokens']['output_per_request']:.0f} | {x['ttft_ms']['p50']:.0f} | "
                           f"{x['itl_ms']['p50']:.1f} | {x['itl_ms']['p99']:.1f} |")
        out.append("")
    if "P3" in r:
        out += ["### P3: prompt cache", "| server | cold TTFT ms | shared-prefix TTFT ms | ratio |",
                "|---|---|---|---|"]
        for name, x in r["P3"].items():
            out.append(f"| {name} | {fmt(x['cold_ms'])} | {fmt(x['warm_ms'])} | {x['ratio']:.2f} |")
        out.append("")
    if "P7" in r:
        out += ["### P7: memory (RSS, MiB, per process)", "| state | processes |", "|---|---|"]
        for k, v in r["P7"].items():
            if isinstance(v, dict):
                out.append(f"| {k} | " + ", ".join(f"{n}: {x:.0f}" for n, x in v.items()) + " |")
        out.append("")
    out += ["## Exact commands", "", "```"] + r.get("commands", []) + ["```", ""]
    notes = os.path.join(HERE, "analysis.md")
    if os.path.isfile(notes):
        with open(notes) as f:
            out += [f.read()]
    return "\n".join(out) + "\n"
