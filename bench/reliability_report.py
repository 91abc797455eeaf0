"""docs/reliability.md from bench/results/reliability.json: the intro table and
the sections `## Load`, `## Slow and hostile clients`, `## Soak` and
`## Faults`. Sections with other headings (and intro table rows for other
tests) already in the file are kept as they are."""
import os
import re

OURS = {"Load": "load", "Slow and hostile clients": "hostile", "Soak": "soak", "Faults": "faults"}
ROW_NAMES = ("Load", "Slow and hostile clients", "Soak", "Faults")
TTFT_GOAL_MS = 250


def n(x, unit="", nd=0):
    if x is None:
        return "—"
    if isinstance(x, float) and nd == 0:
        x = int(round(x))
    if isinstance(x, float):
        return f"{x:,.{nd}f}{unit}"
    return f"{x:,}{unit}" if isinstance(x, int) else f"{x}{unit}"


def machine(ctx):
    if not ctx:
        return ""
    return (f"Run {ctx.get('date')} at commit {ctx.get('commit')}, {ctx.get('cores')} cores; load average "
            f"{ctx.get('load_avg_at_start')} at the start, {ctx.get('load_avg_at_end')} at the end "
            "(the machine is shared: other builds compete for the CPU, which shows in every latency "
            "figure, never in the pass/fail counts).")


def flag(r, name):
    flags = r.get("server_flags") or []
    return flags[flags.index(name) + 1] if name in flags[:-1] else "?"


def status_table(compare):
    rows = ["| status | client saw | /metrics counted |", "| --- | ---: | ---: |"]
    for status, v in compare.items():
        mark = "" if v["client"] == v["metrics"] else " ✗"
        rows.append(f"| {status} | {n(v['client'])} | {n(v['metrics'])}{mark} |")
    return "\n".join(rows)


def load_section(r):
    lg, sh = r["long"], r["short"]
    def ttft(v, k):
        t = v.get("ttft_ms") or {}
        return n(t.get(k), " ms", 1)
    other = {**lg["other_errors"], **sh["other_errors"]}
    verdict = ("**Held.** Every request completed or was refused with 429/503 and Retry-After; "
               f"{n(r['five_xx_other_than_503'])} other 5xx." if r["ok"] else
               "**Not held:** " + "; ".join(f"{k} ×{v['count']} (e.g. {v['example']})"
                                            for k, v in other.items())
               + (f"; {r['refusals_without_retry_after']} refusals without Retry-After"
                  if r["refusals_without_retry_after"] else ""))
    return f"""## Load

One SmolLM2-135M deployment (`herd serve {' '.join(r['server_flags'])}`) under two `herd bench`
runs at once: {r['streams']} concurrent streams of up to {r['stream_max_tokens']} tokens (closed loop; a
refused client waits out Retry-After, as OpenAI's SDKs do) and {n(r['short_requests'])} short
streamed requests (8 tokens) arriving at {r['short_rate']:g}/s whatever happens to the others
(open loop). Capacity is {flag(r, '--slots')} running + {flag(r, '--max-queue')} queued, so the server must refuse part of the offered
load: the test is that it *answers* every request — a completion, or 429/503 with Retry-After —
and never fails one otherwise.

{verdict}

| | streams | short requests |
| --- | ---: | ---: |
| completed | {n(lg['completed'])} | {n(sh['completed'])} |
| refused (429/503), with Retry-After | {n(lg['refused'])}, {n(lg['refused_with_retry_after'])} | {n(sh['refused'])}, {n(sh['refused_with_retry_after'])} |
| any other error | {n(sum(v['count'] for v in lg['other_errors'].values()))} | {n(sum(v['count'] for v in sh['other_errors'].values()))} |
| TTFT of admitted requests p50 / p99 | {ttft(lg, 'p50')} / {ttft(lg, 'p99')} | {ttft(sh, 'p50')} / {ttft(sh, 'p99')} |
| output tokens/s (aggregate) | {n(lg['output_tok_s'], '', 1)} | {n(sh['output_tok_s'], '', 1)} |

TTFT here includes the wait for a slot (up to 30 s by default), which is what a client sees.
Peak memory: gateway {n(r['peak']['gateway_rss_mib'], ' MiB', 1)}, engine host
{n(r['peak']['engine_rss_mib'], ' MiB', 1)}. What the server counted in `herd_requests_total`
against what the clients saw:

{status_table(r['metrics_vs_client'])}

{machine(r.get('context'))}
Reproduce: `bench/reliability --only load` (the two `herd bench` commands are in
`bench/results/reliability.json`).
"""


def hostile_section(r):
    rows = ["| phase | what the attackers do | probe TTFT p50 / p99 / max | probes over "
            f"{TTFT_GOAL_MS} ms | gateway RSS / fds peak | engine RSS peak | what the attackers got |",
            "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for p in r["phases"]:
        pr, pk = p["probe"], p["peak"]
        rows.append(
            f"| {p['phase']} | {p['what']} | {n(pr['ttft_p50_ms'], '', 1)} / {n(pr['ttft_p99_ms'], '', 1)}"
            f" / {n(pr['ttft_max_ms'], ' ms', 1)} | {pr['over_250ms']} of {pr['sent']}"
            f"{' (' + str(pr['failed_count']) + ' failed)' if pr['failed_count'] else ''} | "
            f"{n(pk['gateway_rss_mib'], ' MiB', 0)} / {n(pk['gateway_fds'])} | "
            f"{n(pk['engine_rss_mib'], ' MiB', 0)} | {found_text(p)} |")
    total = r["probe_total"]
    met = total["over_250ms"] == 0 and total["failed"] == 0
    by = {p["phase"]: p for p in r["phases"]}
    control = ""
    if "slow_readers" in by and "fast_readers" in by:
        slow, fast = by["slow_readers"]["probe"], by["fast_readers"]["probe"]
        control = (f"\n\nThe 50 slow readers cost the probe what the same 50 streams read at full speed "
                   f"cost it (TTFT p50 {n(slow['ttft_p50_ms'], ' ms', 0)} against "
                   f"{n(fast['ttft_p50_ms'], ' ms', 0)} in the control phase): what slows it there is "
                   "the generation those streams ask for, batched with the probe's on a shared CPU, "
                   "not their slowness. A stream whose client falls 1,023 events behind is cut off "
                   "alone (`client_too_slow`) and its slot freed when generation stops.")
    verdict = (f"**Goal met:** every probe's TTFT stayed under {TTFT_GOAL_MS} ms." if met else
               f"**Goal not met:** {total['over_250ms']} of {total['sent']} probes took over "
               f"{TTFT_GOAL_MS} ms to their first token (worst {n(total['ttft_max_ms'], ' ms', 1)}), "
               f"{total['failed']} failed. See the phases below.")
    return f"""## Slow and hostile clients

One server (`herd serve {' '.join(r['server_flags'])}`: slots for the 50 slow streams plus the
probe, and a body limit above the 4 MiB prompts but below the 10 MB bodies). A well-behaved client
(the *probe*: a 2-token streamed chat request, one at a time, every 200 ms, from its own process)
measures its time to first token throughout, while each attack is held for {r['hold_s']:g} s in
turn, then all at once. The gateway's and engine host's RSS and descriptors are sampled every
0.5 s.

{verdict}{control}
What it took to get there (and what it costs): [Short waits under hostile load](#short-waits-under-hostile-load).

The gateway was {'alive' if r['gateway_alive_at_end'] else '**dead**'} at the end;
RSS gateway {n(r['rss_start']['gateway_mib'], ' MiB', 1)} at the start, peak
{n(r['peak']['gateway_rss_mib'], ' MiB', 1)}, {n(r['rss_end']['gateway_mib'], ' MiB', 1)} at the end;
engine host {n(r['rss_start']['engine_mib'], ' MiB', 0)} / {n(r['peak']['engine_rss_mib'], ' MiB', 0)} /
{n(r['rss_end']['engine_mib'], ' MiB', 0)} (its KV cache for 64 slots is allocated up front).

{chr(10).join(rows)}

Bad inputs sent, each to `/v1/chat/completions` and `/v1/completions`, and what came back:
{bad_inputs(r)}

{machine(r.get('context'))}
Reproduce: `bench/reliability --only hostile` (`--hold SECONDS` to change how long each attack lasts).
"""


def answer(a):
    """An attack's answer as read: "413 request_too_large", or a reset."""
    status, _, code = a.partition(" ")
    if status == "0":
        return f"connection reset while still sending ({code})"
    return a


def found_text(p):
    f = p.get("found") or {}
    if "attack_error" in f:
        return "attack failed: " + f["attack_error"]
    parts = []
    for key in ("slowloris_opened", "idle_opened"):
        if key in f:
            closed = f["closed_by_server"]
            parts.append(f"{f[key]} open, {closed} closed by the server"
                         + (f" after {f['closed_after_s_median']} s (median)" if closed else ""))
    for key in ("slow_readers", "fast_readers"):
        if isinstance(f.get(key), int):
            ends = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in f["ends"].items())
            gens = ", ".join(f"{k} {int(v)}" for k, v in (p.get("generations_ended") or {}).items())
            parts.append(f"{f[key]} streams: {ends}; generations ended (all clients): {gens}")
    if "rounds" in f:
        parts.append(f"{f['rounds']} rounds; answers: {', '.join(map(answer, f['answers']))}")
    if p["phase"] == "everything":
        for k in ("slowloris", "idle", "slow_readers"):
            sub = f.get(k) or {}
            if "closed_by_server" in sub:
                parts.append(f"{k}: {sub.get('closed_by_server')} closed by the server")
        for k in ("huge_prompt_rounds", "big_body_rounds", "bad_json_rounds"):
            sub = f.get(k) or {}
            parts.append(f"{k.replace('_', ' ')}: {', '.join(map(answer, sub.get('answers', [])))}")
    return "; ".join(parts) or "—"


def bad_inputs(r):
    for p in r["phases"]:
        if p["phase"] == "bad_json":
            last = (p.get("found") or {}).get("last") or {}
            cases = last.get("cases") or {}
            seen = {}
            for k, v in cases.items():
                name = k.split(" ", 1)[1]
                seen.setdefault(name, set()).add(v)
            lines = [f"- {name}: {', '.join(sorted(v))}" for name, v in seen.items()]
            big = next((q for q in r["phases"] if q["phase"] == "big_bodies"), None)
            if big:
                last = (big.get("found") or {}).get("last") or {}
                lines.append(f"- 10 MB bodies (with Content-Length and chunked), last round: "
                             f"{', '.join(f'{answer(k)} ×{v}' for k, v in (last.get('answers') or {}).items())}"
                             " (a reset: the server answered 413 and closed while the client was "
                             "still sending, so the client could not read the answer)")
            huge = next((q for q in r["phases"] if q["phase"] == "huge_prompts"), None)
            if huge:
                last = (huge.get("found") or {}).get("last") or {}
                lines.append(f"- six 4 MiB prompts at once: {', '.join(last.get('answers') or [])}, "
                             f"the slowest answered after {last.get('slowest_answer_s')} s")
            return "\n".join(lines)
    return "- (not run)"


def soak_section(r):
    g = r["gateway"]
    kills = r["kills"]
    rec = [k["healthy_again_after_s"] for k in kills if k.get("healthy_again_after_s") is not None]
    hosts = r["engine_hosts"]
    host_rows = ["| engine host (pid) | samples | RSS max / last | RSS slope | fds last | fds slope |",
                 "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for h in hosts:
        host_rows.append(f"| {h['pid']} | {h['samples']} | {n(h['rss_mib_max'], '', 1)} / "
                         f"{n(h['rss_mib_last'], ' MiB', 1)} | {n(h['rss_slope_mib_per_h'], ' MiB/h', 1)} | "
                         f"{n(h['fds_last'])} | {n(h['fds_slope_per_h'], '/h', 1)} |")
    peaks = [h["rss_mib_max"] for h in hosts if h["samples"] >= 10]
    host_range = (f"{n(min(peaks), '', 1)}–{n(max(peaks), ' MiB', 1)} over {len(peaks)} lifetimes"
                  if peaks else "—")
    lost = r["lost"]
    verdict = ("**No request was lost**: every one ended in a complete answer, an error status or an "
               "error event." if lost == 0 else
               f"**{lost} requests were lost** (ended with neither an answer nor an error): "
               + "; ".join(r["lost_examples"][:3]))
    match = ("`herd_requests_total` matched the clients' counts for every status." if r["metrics_match"]
             else "`herd_requests_total` did **not** match the clients for the statuses marked ✗.")
    return f"""## Soak

{n(r['minutes'], '', 0)} minutes of mixed traffic from {r['workers']} clients against one server
(`herd serve {' '.join(r['server_flags'])}`): streamed and plain chat and completions of 8–200 tokens,
clients that hang up after the first token, malformed JSON, unknown models, `max_tokens` over the
limit, prompts over the context, `GET /v1/models`. Every {n(r['kill_every_s'])} s the engine host
(`herd engine-host`) is SIGKILLed. RSS and open descriptors of the gateway and engine host are
sampled every 5 s.

{verdict} {match} {r['refusals']} refusals (429/503), {r['refusals_without_retry_after']} of them
without Retry-After.

| requests | {n(r['requests'])} ({', '.join(f'{k}: {n(v)}' for k, v in sorted(r['by_kind'].items()))}) |
| --- | --- |
| engine host kills | {len(kills)}; healthy again after {', '.join(f'{x:g}' for x in rec)} s |
| TTFT of completed streams p50 / p99 | {n(r['ttft_ok_streams_p50_ms'], ' ms', 1)} / {n(r['ttft_ok_streams_p99_ms'], ' ms', 1)} |
| gateway RSS first / max / last | {n(g['rss_mib_first'], '', 1)} / {n(g['rss_mib_max'], '', 1)} / {n(g['rss_mib_last'], ' MiB', 1)} |
| gateway RSS slope (after the first minute) | {n(g['rss_slope_mib_per_h'], ' MiB/h', 2)} |
| gateway fds first / max / last, slope | {n(g['fds_first'])} / {n(g['fds_max'])} / {n(g['fds_last'])}, {n(g['fds_slope_per_h'], '/h', 2)} |

("ok" = complete answer; "status" = an HTTP error status with OpenAI's error body; "event" = a
stream that ended with an error event and `[DONE]`; "cancelled" = the client hung up on purpose.)

Each engine host lives from one kill to the next; its slope is taken after its first 30 s (a few
minutes of samples, so a rise of a few MiB reads as tens of MiB/h). The flat line is across
lifetimes: each host's peak was {host_range}.

{chr(10).join(host_rows)}

What the server counted against what the clients saw (a stream that ended with an error event is
counted under that error's status, a hang-up as 499):

{status_table(r['metrics_vs_client'])}

{machine(r.get('context'))}
Reproduce: `bench/reliability --only soak --soak-minutes {n(r['minutes'], '', 0)} --kill-every {n(r['kill_every_s'])}`.
"""


FAULT_TEXT = {
    "engine_host_killed_mid_stream_is_a_clean_error_and_a_restart": (
        "SIGKILL of the engine host mid-stream",
        "the stream ends with an `engine_crashed` error event and `[DONE]`, the host is restarted, "
        "the next request succeeds"),
    "health_reports_a_dead_engine_until_it_is_back": (
        "SIGKILL of the engine host", "/health says `restarting` (503) until it is back"),
    "wedged_engine_host_is_killed_by_the_progress_watchdog": (
        "SIGSTOP of the engine host mid-stream",
        "after `progress_timeout_secs` the stream ends with a \"no progress\" error and the host "
        "is replaced"),
    "engine_host_stopped_while_idle_is_found_by_the_next_request_and_replaced": (
        "SIGSTOP of an idle engine host",
        "the next request gets 503 \"no progress\" after the progress timeout (not after the 30 s "
        "prepare timeout, and not again and again), the host is replaced, the other model serves "
        "throughout"),
    "killing_one_models_engine_host_leaves_the_other_models_stream_whole": (
        "SIGKILL of one model's engine host while another model streams",
        "that stream finishes normally; the killed one restarts"),
    "client_that_disconnects_frees_its_slot": (
        "a client hanging up mid-stream", "its slot is freed at once"),
    "graceful_shutdown_drains_in_flight_streams": (
        "SIGTERM of the gateway", "in-flight streams finish, then it exits 0"),
    "unreadable_model_is_refused_with_the_reason_and_served_once_readable": (
        "an unreadable model file (mode 000, server run as `nobody`)",
        "503 naming \"Permission denied\" within 5 s, /health says why, the other model serves; "
        "after `chmod 644` it is served without a restart"),
    "truncated_gguf_is_refused_with_the_reason_and_the_rest_is_served": (
        "a GGUF cut in half, and one cut inside its last tensor",
        "each a 503 within 5 s with the reason: herd's header check (\"past the end of the "
        "file\") or llama.cpp's load (\"not within the file bounds\"); the other model serves"),
    "a_model_path_that_is_not_a_file_is_named_as_such": (
        "a model path that is a directory, or does not exist", "herd exits at once saying which"),
    "full_state_dir_is_a_clear_error_and_leaves_no_broken_id_behind": (
        "a full disk for the state dir (an 8 KiB tmpfs)",
        "herd exits at once with \"node-id: cannot write: No space left on device\"; once there is "
        "room it starts (no half-written id is left behind)"),
    "full_temp_dir_makes_the_engine_unavailable_with_the_reason_until_space_returns": (
        "a full temp dir (where the engine host's socket lives)",
        "503 naming \"No space left on device\" within 5 s, /v1/models and /health still answer; "
        "with room again it recovers by itself"),
}


def faults_section(r):
    rows = ["| fault | what herd does | test | result |", "| --- | --- | --- | --- |"]
    for name, verdict in r["tests"].items():
        fault, does = FAULT_TEXT.get(name, (name.replace("_", " "), "—"))
        rows.append(f"| {fault} | {does} | `{name}` | {verdict} |")
    notes = ""
    if r.get("skipped_notes"):
        notes = "\nSkipped here: " + "; ".join(r["skipped_notes"]) + "\n"
    return f"""## Faults

Real `herd serve` processes with the real model, in `gateway/tests/faults.rs` and
`gateway/tests/resilience.rs` (those that break the engine or the disk). The full disks are
tmpfs mounts inside a private mount namespace (`unshare -m`), so they need root (or user
namespaces); the unreadable file is read by a server run as `nobody`, since root ignores mode bits.
{'All passed' if r['passed'] else '**Some failed**'} in {r['seconds']} s.
{notes}
Six of them failed before this campaign's fixes: a host stopped while idle made every request
wait the 30 s prepare timeout and was never replaced; an unreadable or truncated file was refused
as "no live node has the model file", a GGUF cut inside its last tensor as "the model is still
loading" (the reason is now read from the header check, or from llama.cpp's log via the host's last
words on stderr), a failed header read was never retried; a full disk at first start left an
empty `node-id` that stopped every later start; a directory given as the model was said not to
exist.

{chr(10).join(rows)}

Reproduce: `{r['command']}`.
"""


SECTIONS = {"load": load_section, "hostile": hostile_section, "soak": soak_section,
            "faults": faults_section}


def summary_rows(results):
    rows = []
    if "load" in results:
        r = results["load"]
        rows.append(f"| Load | {r['streams']} concurrent streams + {n(r['short_requests'])} short requests "
                    f"at {r['short_rate']:g}/s, one SmolLM2 deployment | "
                    + (f"every request completed or got 429/503 with Retry-After; 0 other errors; "
                       f"p99 TTFT of admitted short requests {n((r['short'].get('ttft_ms') or {}).get('p99'), ' ms', 0)}"
                       if r["ok"] else "**failed**: see below")
                    + " | `bench/reliability --only load` |")
    if "hostile" in results:
        r = results["hostile"]
        t = r["probe_total"]
        rows.append("| Slow and hostile clients | 500 slowloris, 200 idle keep-alives, 50 streams read at "
                    "1 B/s, 10 MB bodies, invalid UTF-8, JSON nested 100,000 deep, six 4 MiB prompts "
                    f"at once, then all together | probe TTFT over {TTFT_GOAL_MS} ms in "
                    f"{t['over_250ms']} of {t['sent']} samples (worst {n(t['ttft_max_ms'], ' ms', 0)}); "
                    f"gateway RSS peak {n(r['peak']['gateway_rss_mib'], ' MiB', 0)}; "
                    f"{'gateway alive' if r['gateway_alive_at_end'] else 'gateway died'} | "
                    "`bench/reliability --only hostile` |")
    if "soak" in results:
        r = results["soak"]
        rows.append(f"| Soak | {n(r['minutes'], '', 0)} min mixed traffic, engine host SIGKILLed every "
                    f"{n(r['kill_every_s'] / 60, '', 0)} min ({len(r['kills'])} kills) | "
                    f"{n(r['requests'])} requests, {r['lost']} lost; metrics "
                    f"{'match' if r['metrics_match'] else 'do not match'}; gateway RSS slope "
                    f"{n(r['gateway']['rss_slope_mib_per_h'], ' MiB/h', 1)}, fds slope "
                    f"{n(r['gateway']['fds_slope_per_h'], '/h', 1)} | "
                    f"`bench/reliability --only soak` |")
    if "faults" in results:
        r = results["faults"]
        ok = sum(v == "ok" for v in r["tests"].values())
        rows.append("| Faults | SIGKILL / SIGSTOP of the engine host, full state dir, full temp dir, "
                    "unreadable model, truncated GGUF, model path not a file | "
                    f"{ok} of {len(r['tests'])} tests pass: each a clear error within seconds, the "
                    f"gateway keeps serving the rest | `{r['command']}` |")
    return rows


INTRO = """# Reliability

What herd survives, measured. Each test below runs real `herd` processes with the real model
(SmolLM2-135M) on this project's machine (2 cores, shared with other builds, so latencies are
noisy); `bench/reliability` builds herd, runs them all and rewrites this file (`--only PART` runs
one; the last figures are kept in `bench/results/reliability.json`).

| test | load held, faults, bad inputs | result | reproduce |
| --- | --- | --- | --- |
"""


def write(path, results):
    old = ""
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    kept_rows, kept_sections = [], []
    if old:
        head, *sections = re.split(r"(?m)^(?=## )", old)
        for line in head.splitlines():
            cell = line.split("|")[1].strip() if line.startswith("|") and line.count("|") > 2 else ""
            if cell and cell not in ROW_NAMES and cell != "test" and not set(cell) <= set("-: "):
                kept_rows.append(line)
        for s in sections:
            title = s.splitlines()[0][3:].strip()
            if title not in OURS:
                kept_sections.append(s.rstrip() + "\n")
    ours = [SECTIONS[OURS[t]](results[OURS[t]]) for t in OURS if OURS[t] in results]
    text = INTRO + "\n".join(summary_rows(results) + kept_rows) + "\n\n" + "\n".join(
        s.rstrip() + "\n" for s in ours + kept_sections)
    with open(path, "w") as f:
        f.write(text)
