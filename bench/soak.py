#!/usr/bin/env python3
"""Soak: mixed traffic against one herd server for a while, SIGKILLing the
engine host every few minutes. Every request must end in a complete answer or
an error (status or stream error event); the gateway's and engine host's RSS
and open descriptors are sampled (slopes reported); at the end the server's
/metrics `herd_requests_total` by status must match what the clients saw.

Usage: bench/soak.py --herd target/release/herd [--minutes 30] [--kill-every 300]
                     [--workers 8] [--json out.json]
"""
import argparse
import asyncio
import json
import os
import random
import signal
import time

import httpc
import observe
from rel import MODEL_ID, log, ms, pct, port_of, start_herd

SERVER_FLAGS = ["--threads", "1", "--slots", "8", "--ctx-size", "1024", "--max-queue", "32",
                "--max-queue-wait-ms", "10000"]
# The status herd counts a stream's error event under (the error's own status).
EVENT_STATUS = {"engine_crashed": "503", "engine_unavailable": "503", "engine_error": "500",
                "client_too_slow": "408"}
PROMPTS = ["Say hi.", "Name three colors.", "What is 2+2?", "Write a haiku about rain.",
           "Explain what a lighthouse does.", "List the days of the week."]


def mix(rng):
    """One request of the mix: (label, method, path, body, stream, cancel_after_first)."""
    p, prompt = rng.random(), rng.choice(PROMPTS)
    chat = lambda n, s, **kw: httpc.chat_body(MODEL_ID, prompt, n, s, **kw)  # noqa: E731
    completion = lambda n, s: json.dumps({"model": MODEL_ID, "prompt": prompt,  # noqa: E731
                                          "max_tokens": n, "stream": s}).encode()
    if p < 0.35:
        return "chat_stream", "POST", "/v1/chat/completions", chat(rng.randint(8, 96), True), True, False
    if p < 0.55:
        return "chat", "POST", "/v1/chat/completions", chat(rng.randint(8, 48), False), False, False
    if p < 0.65:
        return "completion_stream", "POST", "/v1/completions", completion(rng.randint(8, 64), True), True, False
    if p < 0.75:
        return "completion", "POST", "/v1/completions", completion(rng.randint(8, 32), False), False, False
    if p < 0.80:
        return "hang_up", "POST", "/v1/chat/completions", httpc.chat_body(
            MODEL_ID, "Write a very long story about the sea.", 400, True, temperature=0.8), True, True
    if p < 0.83:
        return "bad_json", "POST", "/v1/chat/completions", b'{"model": "x", "messages": [', False, False
    if p < 0.86:
        return "unknown_model", "POST", "/v1/chat/completions", httpc.chat_body(
            "no-such-model", prompt, 4, False), False, False
    if p < 0.89:
        return "bad_max_tokens", "POST", "/v1/chat/completions", chat(100000, False), False, False
    if p < 0.92:
        return "too_long", "POST", "/v1/chat/completions", httpc.chat_body(
            MODEL_ID, "word " * 3000, 4, False), False, False
    if p < 0.95:
        return "models", "GET", "/v1/models", None, False, False
    return "chat_stream_long", "POST", "/v1/chat/completions", chat(200, True), True, False


class Soak:
    def __init__(self, port, gateway_pid, seconds, workers, seed=13):
        self.port, self.pid, self.seconds, self.workers = port, gateway_pid, seconds, workers
        self.rng = random.Random(seed)
        self.outcomes = []  # (t, label, Outcome)
        self.kills = []     # dicts
        self.t0 = time.monotonic()
        self.stop = asyncio.Event()

    async def worker(self):
        while not self.stop.is_set():
            label, method, path, body, stream, cancel = mix(self.rng)
            t = time.monotonic() - self.t0
            if cancel:
                out = await self.hang_up(path, body)
            else:
                out = await httpc.exchange(method, path, body, port=self.port, stream=stream,
                                           timeout=90)
            self.outcomes.append((t, label, out))
            wait = self.rng.uniform(0, 0.2)
            if out.retry_after:
                wait = max(wait, min(float(out.retry_after), 2.0))
            await asyncio.sleep(wait)

    async def hang_up(self, path, body):
        """A stream whose client leaves after the first token: herd counts 499."""
        first = asyncio.get_running_loop().create_future()

        def seen(event):
            if httpc.chunk_text(event) and not first.done():
                first.set_result(True)
        task = asyncio.ensure_future(httpc.exchange("POST", path, body, port=self.port,
                                                    stream=True, timeout=90, on_event=seen))
        done, _ = await asyncio.wait({task, first}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:  # it ended before any text (an error, or a refusal)
            return task.result()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return httpc.Outcome("cancelled", 200, detail="client hung up after the first token")

    async def killer(self, every):
        n = 0
        while True:
            n += 1
            try:
                await asyncio.wait_for(self.stop.wait(), max(0.0, n * every - self.elapsed()))
                return
            except asyncio.TimeoutError:
                pass
            hosts = observe.engine_hosts(self.pid)
            kill = {"t_s": round(self.elapsed(), 1), "pid": hosts[0] if hosts else None}
            if hosts:
                os.kill(hosts[0], signal.SIGKILL)
            t_kill = time.monotonic()
            while not self.stop.is_set():
                health = await httpc.get_json("/health", self.port, timeout=2)
                new = observe.engine_hosts(self.pid)
                if health and health.get("status") == "ok" and new and new[0] != kill["pid"]:
                    break
                await asyncio.sleep(0.1)
            kill["healthy_again_after_s"] = round(time.monotonic() - t_kill, 2)
            self.kills.append(kill)
            log(f"  killed engine host {kill['pid']} at {kill['t_s']} s; healthy again after "
                f"{kill['healthy_again_after_s']} s")

    def elapsed(self):
        return time.monotonic() - self.t0

    async def run(self, kill_every):
        tasks = [asyncio.ensure_future(self.worker()) for _ in range(self.workers)]
        killer = asyncio.ensure_future(self.killer(kill_every))
        last = 0
        while self.elapsed() < self.seconds:
            await asyncio.sleep(5)
            if self.elapsed() - last >= 60:
                last = self.elapsed()
                kinds = {}
                for _, _, o in self.outcomes:
                    kinds[o.kind] = kinds.get(o.kind, 0) + 1
                log(f"  {self.elapsed() / 60:.0f} min: {len(self.outcomes)} requests {kinds}")
        self.stop.set()
        await asyncio.gather(*tasks, killer)


def lifetimes(samples):
    """Engine-host samples split by pid: {pid: [(t, rss, fds)]}."""
    out = {}
    for t, _, _, pid, rss, fds in samples:
        if pid is not None and rss is not None:
            out.setdefault(pid, []).append((t, rss, fds))
    return out


def summarize(soak, samples, metrics_text, warmup=60.0):
    client = {}
    kinds, lost = {}, []
    for t, label, o in soak.outcomes:
        kinds[o.kind] = kinds.get(o.kind, 0) + 1
        if o.kind in ("lost", "timeout"):
            lost.append(f"{label} at {t:.0f} s: {o!r}")
        if label == "models":
            continue  # not a generation: herd_requests_total does not count it
        status = {"ok": "200", "status": str(o.status), "cancelled": "499",
                  "event": EVENT_STATUS.get(o.code, f"event:{o.code}")}.get(o.kind)
        if status:
            client[status] = client.get(status, 0) + 1
    server = observe.requests_by_status(metrics_text)
    statuses = sorted(set(client) | set(server))
    compare = {s: {"client": client.get(s, 0), "metrics": server.get(s, 0)} for s in statuses}
    refusals = [o for _, _, o in soak.outcomes if o.status in (429, 503) and o.kind == "status"]
    gw = [(s[0], s[1]) for s in samples if s[0] >= warmup]
    fds = [(s[0], s[2]) for s in samples if s[0] >= warmup]
    hosts = []
    for pid, pts in lifetimes(samples).items():
        steady = [p for p in pts if p[0] - pts[0][0] >= 30]
        hosts.append({"pid": pid, "samples": len(pts),
                      "rss_mib_max": round(max(p[1] for p in pts), 1),
                      "rss_mib_last": round(pts[-1][1], 1), "fds_last": pts[-1][2],
                      "rss_slope_mib_per_h": _round(observe.slope_per_hour(
                          [(p[0], p[1]) for p in steady])),
                      "fds_slope_per_h": _round(observe.slope_per_hour(
                          [(p[0], p[2]) for p in steady]))})
    ttfts = [o.ttft for _, label, o in soak.outcomes if o.kind == "ok" and o.ttft is not None]
    gw_all = [s for s in samples if s[1] is not None]
    return {
        "requests": len(soak.outcomes), "by_kind": kinds, "lost": len(lost),
        "lost_examples": lost[:10],
        "refusals_without_retry_after": sum(o.retry_after is None for o in refusals),
        "refusals": len(refusals),
        "metrics_vs_client": compare,
        "metrics_match": all(v["client"] == v["metrics"] for v in compare.values()),
        "kills": soak.kills,
        "ttft_ok_streams_p50_ms": ms(pct(ttfts, 50)), "ttft_ok_streams_p99_ms": ms(pct(ttfts, 99)),
        "gateway": {
            "rss_mib_first": _round(gw_all[0][1] if gw_all else None),
            "rss_mib_last": _round(gw_all[-1][1] if gw_all else None),
            "rss_mib_max": _round(max((s[1] for s in gw_all), default=None)),
            "rss_slope_mib_per_h": _round(observe.slope_per_hour(gw)),
            "fds_first": gw_all[0][2] if gw_all else None,
            "fds_last": gw_all[-1][2] if gw_all else None,
            "fds_max": max((s[2] for s in gw_all), default=None),
            "fds_slope_per_h": _round(observe.slope_per_hour(fds)),
        },
        "engine_hosts": hosts,
    }


def _round(x, n=2):
    return None if x is None else round(x, n)


async def main_async(herd, minutes, kill_every, workers, log_to=None):
    with start_herd(herd, *SERVER_FLAGS, log_to=log_to) as server, \
            observe.Sampler(server.proc.pid, period=5.0) as sampler:
        port = port_of(server)
        soak = Soak(port, server.proc.pid, minutes * 60, workers)
        log(f"soak: {minutes} min, {workers} workers, engine host SIGKILLed every {kill_every} s")
        await soak.run(kill_every)
        await asyncio.sleep(2)  # the server records a hang-up when it notices it
        metrics_text = await httpc.get_text("/metrics", port) or ""
        result = summarize(soak, list(sampler.samples), metrics_text)
        result.update({"minutes": minutes, "kill_every_s": kill_every, "workers": workers,
                       "server_flags": SERVER_FLAGS,
                       "gateway_alive_at_end": server.proc.poll() is None,
                       "series": [[round(s[0]), _round(s[1], 1), s[2], _round(s[4], 1), s[5]]
                                  for s in sampler.samples]})
        return result


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--herd", required=True)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--kill-every", type=float, default=300.0, help="seconds between kills")
    ap.add_argument("--workers", type=int, default=8, help="concurrent clients")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--log", help="copy the server's log here")
    opts = ap.parse_args()
    result = asyncio.run(main_async(opts.herd, opts.minutes, opts.kill_every, opts.workers,
                                    opts.log))
    text = json.dumps(result, indent=1)
    if opts.json:
        with open(opts.json, "w") as f:
            f.write(text)
    summary = {k: v for k, v in result.items() if k != "series"}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
