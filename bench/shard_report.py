"""The "Sharded deployments (P5, P6, load)" section of docs/benchmarks.md from
bench/shard.py's results (kept as bench/results/shard-latest.json). Only that
section is rewritten; bench/shard-analysis.md (hand-written: what bounds each
number) is appended to it."""
import os
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))
TITLE = "## Sharded deployments (P5, P6, load)"


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def verdict(ok):
    return "**met**" if ok else "**missed**"


def fmt(xs, digits=1):
    return ", ".join(f"{x:.{digits}f}" for x in xs)


def plan_text(counts):
    """[15, 15] → n1[0,15) n2[15,30)"""
    out, start = [], 0
    for i, n in enumerate(counts):
        out.append(f"n{i + 1}[{start},{start + n})")
        start += n
    return " ".join(out)


def rtts(xs):
    return ", ".join(f"{x['p50']:.0f} ({x['mean']:.0f})" for x in xs)


def by_n(d, n):
    """JSON turns the int keys into strings."""
    return d.get(n, d.get(str(n)))


def summary(r):
    rows = []
    if "P5" in r:
        p = r["P5"]
        for n, goal in ((2, 0.95), (3, 0.90)):
            h, l = by_n(p["herd_ratio"], n), by_n(p["llama_ratio"], n)
            rows.append((f"P5 ({n} nodes)",
                         f"decode tok/s, herd split {plan_text(by_n(p['plans'], n))} ÷ herd on 1 "
                         "node; reference: llama-bench `--rpc` to "
                         f"{n - 1} ggml-rpc-server{'s' if n > 2 else ''}, same layers "
                         "÷ llama-bench",
                         f"{med(by_n(p['herd_tok_s'], n)):.1f} / "
                         f"{med(by_n(p['herd_tok_s'], 1)):.1f}",
                         f"{h:.2f}",
                         f"{med(by_n(p['llama_bench_tok_s'], n)):.1f} / "
                         f"{med(by_n(p['llama_bench_tok_s'], 1)):.1f} = {l:.2f}",
                         f"≥ {goal:.2f}", verdict(h >= goal)))
    if "P6" in r:
        p = r["P6"]
        rows.append(("P6", "llama-bench tg128 tok/s, `--rpc` to a herd rpc-worker through "
                     "tunnel-forward → tunnel-serve ÷ direct to the same worker "
                     f"({p['remote_layers']} layers on the worker)",
                     f"{med(p['tunnel']):.1f} / {med(p['direct']):.1f}", f"{p['ratio']:.3f}", "—",
                     "≥ 0.97", verdict(p["ratio"] >= 0.97)))
    if "LOAD" in r:
        runs = r["LOAD"]["runs"]
        for kind in ("first", "reload"):
            ready = med([x[kind]["ready_s"] for x in runs])
            load = med([x[kind]["load_s"] for x in runs])
            sent = med([x[kind]["sent_bytes"] for x in runs]) / 1e6
            what = ("first load (empty tensor cache on the shard node)" if kind == "first" else
                    "reload (head restarted, shard node and its cache kept)")
            rows.append((f"Load, {kind}", f"2-node split, {what}: seconds from starting to "
                         "`ready` (of which: head starting its engine → ready); MB the head "
                         "sent through the tunnel", f"{ready:.2f} s ({load:.2f} s); {sent:.1f} MB",
                         "", "", "—", ""))
        first = med([x["first"]["sent_bytes"] for x in runs])
        again = med([x["reload"]["sent_bytes"] for x in runs])
        rows.append(("Load", "reload ÷ first load: bytes the head sent", "",
                     f"{again / first:.2f}" if first else "—", "", "—", ""))
    return rows


def section(r):
    m = r["machine"]
    out = [TITLE, "",
           f"Regenerate with `{r.get('command', 'bench/shard.py')}` (this run took "
           f"{r.get('minutes', float('nan')):.0f} minutes on 2 cores; the first run also builds "
           "llama.cpp b11434 with its RPC server, ~10 minutes more). Every node is a separate "
           "process on this one machine (herd nodes on 127.0.88.x, loopback TCP between them), "
           f"and every process gets {r['threads']} thread(s): herd's engine host and shard "
           "workers, ggml-rpc-server, llama-bench. Variants alternate within each of "
           f"{r['reps']} repetitions (P6: {3 * r['reps']}); ratios are medians of the "
           "per-repetition ratios. The measurement tools `herd tunnel-serve` and "
           "`herd tunnel-forward` (hidden subcommands) put herd's Noise tunnel in front of any "
           "loopback service, here llama.cpp's own RPC client talking to a herd shard worker.", "",
           f"- date: {m['date']}; commit `{m['commit']}`"
           f"{' (with uncommitted changes)' if m['tree_dirty'] else ''}; herd binary built "
           f"{r.get('herd_built', '?')}",
           f"- machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}; load average "
           f"{m['load_before']:.1f} before, {m['load_after']:.1f} after (a shared machine)",
           f"- model: {r['model']} ({r['model_bytes'] / 1e6:.0f} MB), 30 layers", "",
           "| # | what | measured | ratio | llama.cpp's own | goal | |",
           "|---|---|---|---|---|---|---|"]
    out += ["| " + " | ".join(row) + " |" for row in summary(r)]
    out.append("")
    if "P5" in r:
        p = r["P5"]
        out += ["### P5: split decode, per repetition",
                "herd: `herd bench -c 1 -n 3 --max-tokens 128 --warmup 1` against the head of a "
                "fresh deployment (per-stream decode rate after the first token, through HTTP + "
                "SSE). llama.cpp: `llama-bench -p 0 -n 128 -r 2`, with `--rpc`, `-ngl`, `-ts` "
                "and `-ot` giving the RPC servers exactly herd's layer counts and keeping the "
                "token embedding and output layer on the client, as herd does.", "",
                "| nodes | herd plan | herd tok/s | llama-bench tok/s | herd ÷ llama-bench | "
                "herd ready after start, s |", "|---|---|---|---|---|---|"]
        for n in (1, 2, 3):
            out.append(f"| {n} | {plan_text(by_n(p['plans'], n))} | "
                       f"{fmt(by_n(p['herd_tok_s'], n))} | "
                       f"{fmt(by_n(p['llama_bench_tok_s'], n))} | "
                       f"{by_n(p['herd_vs_llama'], n):.2f} | "
                       f"{fmt(by_n(p['herd_ready_s'], n))} |")
        out.append("")
        cpu = p.get("llama_bench_ms_per_token")
        if cpu:
            out += ["Working or waiting: llama-bench's wall and CPU time per decoded token on "
                    f"one process and split as herd's 2-node plan "
                    f"({plan_text(by_n(p['plans'], 2))}), from the difference of a 288- and a "
                    "32-token run (`-r 1`), CPU from the kernel's accounting of llama-bench and "
                    "of the ggml-rpc-server process. Medians over the repetitions:", "",
                    "| | wall ms/token | CPU ms/token, client | CPU ms/token, RPC server | "
                    "wall − CPU |", "|---|---|---|---|---|"]
            for name in ("single", "split"):
                xs = cpu[name]
                wall = med([x["wall_ms"] for x in xs])
                c = med([x["client_cpu_ms"] for x in xs])
                sv = med([x["server_cpu_ms"] for x in xs])
                gap = med([x["wall_ms"] - x["client_cpu_ms"] - x["server_cpu_ms"] for x in xs])
                out.append(f"| {name} | {wall:.2f} | {c:.2f} | {sv:.2f} | {gap:.2f} |")
            out.append("")
    if "P6" in r:
        p = r["P6"]
        t = p["per_token"]
        out += ["### P6: tunnel ÷ direct RPC, per repetition",
                f"llama-bench tg128 tok/s with {p['remote_layers']} layers on the RPC server; "
                "the three variants rotate within each round.", "",
                "| RPC server | tok/s | median |", "|---|---|---|",
                f"| herd rpc-worker, direct | {fmt(p['direct'])} | {med(p['direct']):.1f} |",
                "| herd rpc-worker, through tunnel-forward → tunnel-serve | "
                f"{fmt(p['tunnel'])} | {med(p['tunnel']):.1f} |"]
        if "ggml_rpc_server" in p:
            out += [f"| llama.cpp's ggml-rpc-server, direct | {fmt(p['ggml_rpc_server'])} | "
                    f"{med(p['ggml_rpc_server']):.1f} |", "",
                    "herd's worker (the same ggml RPC server code, inside `herd rpc-worker`) ÷ "
                    f"ggml-rpc-server: {p['worker_vs_ggml_rpc_server']:.2f}."]
        out += ["",
                "Through the tunnel, per decoded token (difference of a 1- and a 3-repetition "
                f"tg128 run, 256 tokens): {t['sent_bytes']:.0f} bytes in "
                f"{t['sent_messages']:.1f} messages to the worker, {t['received_bytes']:.0f} "
                f"bytes in {t['received_messages']:.1f} messages back (each message adds 18 "
                "bytes of length and AEAD tag on the wire). One llama-bench load sent "
                f"{p['per_run_load']['sent_bytes'] / 1e6:.1f} MB of weights to the worker.", "",
                "One synchronous round trip of 2,304 bytes (a token's hidden state) to an echo "
                "server (bench/shard.py's `ECHO_SERVER`), µs, median (mean) of 2,000 back to "
                "back or of 300 each 5 ms after the last (as a shard waits while the head "
                "computes), three runs each:", "",
                "| | back to back | after 5 ms idle |", "|---|---|---|",
                f"| direct | {rtts(p['rtt_direct_us'])} | {rtts(p['rtt_direct_idle_us'])} |",
                f"| through the tunnel | {rtts(p['rtt_tunnel_us'])} | "
                f"{rtts(p['rtt_tunnel_idle_us'])} |", ""]
    if "LOAD" in r:
        out += ["### Load: first load and reload, per repetition",
                f"Plan: {plan_text(r['LOAD']['runs'][0]['first']['plan'])}.",
                "Start → `ready` in `/cluster` with every shard loaded as planned, polled every "
                "50 ms. Bytes: the head's `tunnel closed` log lines (written as each tunnel "
                "closes: the head is stopped after each measurement), summed over the "
                "deployment's tunnels (the load's device probes plus the weight stream).", "",
                "Seconds are split at the head's `starting the engine` log line: before it, "
                "membership and placement; after it, the engine host loading the model and "
                "streaming the shard's weights through the tunnel.", "",
                "| rep | first: ready s = placement + load | first: MB sent | "
                "shard's tensor cache after it | reload: ready s = placement + load | "
                "reload: MB sent |", "|---|---|---|---|---|---|"]
        for i, x in enumerate(r["LOAD"]["runs"]):
            f, g = x["first"], x["reload"]
            out.append(f"| {i} | {f['ready_s']:.2f} = {f['plan_s']:.2f} + {f['load_s']:.2f} | "
                       f"{f['sent_bytes'] / 1e6:.1f} | {x['cache_files']} files, "
                       f"{x['cache_bytes'] / 1e6:.1f} MB | "
                       f"{g['ready_s']:.2f} = {g['plan_s']:.2f} + {g['load_s']:.2f} | "
                       f"{g['sent_bytes'] / 1e6:.1f} |")
        out.append("")
    out += ["### Commands (P5, P6, load)", "", "```"] + r.get("commands", []) + ["```", ""]
    notes = os.path.join(HERE, "shard-analysis.md")
    if os.path.isfile(notes):
        with open(notes) as f:
            out.append(f.read().rstrip() + "\n")
    return "\n".join(out)


def write(path, r):
    """Replaces this section of `path` (from its title to the next `## `
    heading or the end), or appends it."""
    text = open(path).read() if os.path.isfile(path) else ""
    new = section(r).rstrip() + "\n"
    start = text.find(TITLE)
    if start < 0:
        text = text.rstrip() + "\n\n" + new
    else:
        end = text.find("\n## ", start + len(TITLE))
        text = text[:start] + new + (text[end:] if end >= 0 else "")
    with open(path, "w") as f:
        f.write(text)
