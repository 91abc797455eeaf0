#!/usr/bin/env python3
"""Slow and hostile clients against one herd server, phase by phase, while a
well-behaved probe (a 2-token streamed chat request, one at a time, every
200 ms, from its own process so the attackers' work does not delay its clock)
measures its time to first token, and the gateway's and engine host's memory
and descriptors are sampled every 0.5 s.

Phases: baseline; 500 slowloris connections (a header line every 5 s); 200
idle keep-alive connections; 50 streams read at one byte per second; 10 MB
bodies (with a length and chunked); invalid UTF-8; deeply nested JSON; six
4 MiB prompts at once; everything at once; recovery.

Usage: bench/hostile.py --herd target/release/herd [--hold 45] [--json out.json]
       [--only baseline,everything] [--log server.log]
"""
import argparse
import asyncio
import json
import socket
import sys
import time

import httpc
import observe
from rel import MODEL_ID, log, ms, pct, port_of, start_herd

# The server under test: enough slots for 50 slow streams plus the probe,
# and a body limit above the 4 MiB prompts (so they reach the tokenizer) but
# below the 10 MB bodies (so those are refused as too large).
SERVER_FLAGS = ["--threads", "1", "--slots", "64", "--ctx-size", "1400", "--max-queue", "64",
                "--max-body-bytes", str(8 << 20)]
PROBE_BODY = httpc.chat_body(MODEL_ID, "Say hi.", 2, True)
STORY = "Write a very long story about a lighthouse keeper, chapter by chapter."


async def probe(port, interval):
    """The well-behaved client: one small streamed request at a time; one JSON
    line per request on stdout (start time on the monotonic clock, outcome)."""
    while True:
        t, wall = time.monotonic(), time.time()
        o = await httpc.exchange("POST", "/v1/chat/completions", PROBE_BODY, port=port,
                                 stream=True, timeout=60)
        print(json.dumps({"t": t, "wall": wall, "kind": o.kind, "status": o.status, "code": o.code,
                          "ttft": o.ttft, "e2e": o.e2e}), flush=True)
        await asyncio.sleep(interval)


class Run:
    def __init__(self, port, sampler, hold, only=None):
        self.port, self.sampler, self.hold, self.only = port, sampler, hold, only
        self.probes = []          # dicts from the probe process
        self.phases = []          # dicts, in order
        self.bodies = {}          # big request bodies, built once

    def now(self):
        return time.monotonic() - self.sampler.t0

    async def read_probes(self, stream):
        while line := await stream.readline():
            self.probes.append(json.loads(line))

    def probes_between(self, t0, t1):
        """Probes sent in [t0, t1) (monotonic clock)."""
        return [p for p in self.probes if t0 <= p["t"] < t1]

    async def phase_run(self, name, what, attack):
        """Runs one attack coroutine as a phase; records the probe, RSS and
        metrics deltas over it, and the attack's own findings."""
        if self.only and name not in self.only:
            return None
        log(f"phase {name}: {what}")
        before = await httpc.get_text("/metrics", self.port) or ""
        m0, t0 = time.monotonic(), self.now()
        try:
            found = await attack()
        except Exception as e:  # a broken attack is a result to show, not a crash
            found = {"attack_error": f"{type(e).__name__}: {e}"}
        m1, t1 = time.monotonic(), self.now()
        after = await httpc.get_text("/metrics", self.port) or ""
        # Probes still in flight at the end of the phase belong to it: wait for them.
        deadline = time.monotonic() + 65
        while time.monotonic() < deadline and not any(p["t"] >= m1 for p in self.probes):
            await asyncio.sleep(0.1)
        probes = self.probes_between(m0, m1)
        ttfts = [p["ttft"] for p in probes if p["kind"] == "ok"]
        b, a = observe.requests_by_status(before), observe.requests_by_status(after)
        fb, fa = finished_by_reason(before), finished_by_reason(after)
        result = {
            "phase": name, "what": what, "seconds": round(t1 - t0, 1),
            "probe": {"sent": len(probes), "ok": len(ttfts),
                      "failed": [f"{p['kind']} {p['status']} {p['code']}"
                                 for p in probes if p["kind"] != "ok"][:5],
                      "failed_count": sum(p["kind"] != "ok" for p in probes),
                      "over_250ms": sum(t > 0.25 for t in ttfts),
                      "ttft_p50_ms": ms(pct(ttfts, 50)), "ttft_p99_ms": ms(pct(ttfts, 99)),
                      "ttft_max_ms": ms(max(ttfts) if ttfts else None),
                      "e2e_max_ms": ms(max((p["e2e"] or 0 for p in probes), default=None)),
                      # When each slow one was sent (Unix time), to find it in the server's log.
                      "over_250ms_sent_at": [round(p["wall"], 3) for p in probes
                                             if p["kind"] == "ok" and p["ttft"] > 0.25]},
            "peak": self.sampler.peak(t0, t1),
            "server_answers": {s: a.get(s, 0) - b.get(s, 0) for s in a if a.get(s, 0) != b.get(s, 0)},
            "generations_ended": {r: fa[r] - fb.get(r, 0) for r in fa if fa[r] != fb.get(r, 0)},
            "found": found,
        }
        self.phases.append(result)
        log(f"  probe TTFT p50 {result['probe']['ttft_p50_ms']} ms, p99 "
            f"{result['probe']['ttft_p99_ms']} ms, max {result['probe']['ttft_max_ms']} ms, "
            f"{result['probe']['failed_count']} failed; peak {result['peak']}; {found}")
        return result

    # --- attacks ------------------------------------------------------------------------
    async def hold_connections(self, n, opener, label, hold=None):
        """Opens n connections with `opener(reader, writer)` running on each, for
        `hold` seconds; reports how many the server closed and when."""
        hold = hold or self.hold
        closed_at = []
        stop = asyncio.Event()

        async def one():
            try:
                reader, writer = await asyncio.open_connection(httpc.HOST, self.port)
            except OSError as e:
                return f"connect: {e}"
            t0 = time.monotonic()
            watcher = asyncio.ensure_future(_until_closed(reader))
            worker = asyncio.ensure_future(opener(reader, writer, stop))
            done, _ = await asyncio.wait({watcher, asyncio.ensure_future(stop.wait())},
                                         return_when=asyncio.FIRST_COMPLETED)
            if watcher in done:
                closed_at.append(time.monotonic() - t0)
            for task in (watcher, worker):
                task.cancel()
            writer.close()
            return None

        tasks = [asyncio.ensure_future(one()) for _ in range(n)]
        await asyncio.sleep(hold)
        stop.set()
        errors = [e for e in await asyncio.gather(*tasks) if e]
        return {f"{label}_opened": n - len(errors), "closed_by_server": len(closed_at),
                "closed_after_s_median": round(pct(closed_at, 50), 1) if closed_at else None,
                "connect_errors": len(errors), "held_s": hold}

    async def slowloris(self, n=500):
        async def drip(reader, writer, stop):
            writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {httpc.HOST}\r\n".encode())
            i = 0
            while not stop.is_set():
                await writer.drain()
                await asyncio.sleep(5)
                writer.write(f"X-Drip-{i}: {i}\r\n".encode())
                i += 1
        return await self.hold_connections(n, drip, "slowloris")

    async def idle_keepalive(self, n=200, hold=None):
        async def idle(reader, writer, stop):
            writer.write(httpc.request_bytes("GET", "/v1/models", port=self.port, keep_alive=True))
            await writer.drain()
            await stop.wait()
        return await self.hold_connections(n, idle, "idle", hold)

    async def slow_readers(self, n=50, max_tokens=1300, slow=True):
        """Streams read at one byte per second (a 4 KiB receive buffer, so the
        server feels it); each reports the bytes it read. With slow=False, the
        same streams read at full speed: the control, as much generation work."""
        body = httpc.chat_body(MODEL_ID, STORY, max_tokens, True, temperature=0.8)
        stop = asyncio.Event()

        async def one():
            sock = socket.socket()
            if slow:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, (httpc.HOST, self.port))
                reader, writer = await asyncio.open_connection(sock=sock, limit=16)
            except OSError as e:
                sock.close()
                return ("connect", 0)
            writer.write(httpc.request_bytes("POST", "/v1/chat/completions", body, port=self.port))
            await writer.drain()
            got, end = b"", "held"
            while not stop.is_set():
                try:
                    byte = await asyncio.wait_for(reader.read(1 if slow else 65536), 1.0)
                except asyncio.TimeoutError:
                    continue
                if not byte:
                    end = "closed_by_server" if slow else "ended"
                    break
                got += byte
                if slow:
                    await asyncio.sleep(1.0)
            writer.close()
            return (end, len(got))

        tasks = [asyncio.ensure_future(one()) for _ in range(n)]
        await asyncio.sleep(self.hold)
        stop.set()
        ends = await asyncio.gather(*tasks)
        status = {}
        for end, got in ends:
            status[end] = status.get(end, 0) + 1
        return {"slow_readers" if slow else "fast_readers": n, "max_tokens": max_tokens,
                "ends": status, "bytes_read_max": max(g for _, g in ends)}

    async def big_bodies(self, n=8, size=10_000_000):
        """10 MB bodies, half with Content-Length, half chunked: each must be
        refused (413) without the server reading (or keeping) it all."""
        async def one(chunked):
            reader, writer = await asyncio.open_connection(httpc.HOST, self.port)
            head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {httpc.HOST}\r\n"
                    "Content-Type: application/json\r\nConnection: close\r\n")
            head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {size}\r\n\r\n"
            t0 = time.monotonic()
            writer.write(head.encode())
            prefix = b'{"model":"' + MODEL_ID.encode() + b'","messages":[{"role":"user","content":"'

            async def send():
                sent, block = 0, b"a" * 65536
                try:
                    first = prefix + block[len(prefix):]
                    for i in range(0, size, len(block)):
                        data = first if i == 0 else block[: min(len(block), size - i)]
                        writer.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                        await writer.drain()
                        sent += len(data)
                    if chunked:
                        writer.write(b"0\r\n\r\n")
                        await writer.drain()
                except OSError:
                    pass
                return sent
            sender = asyncio.ensure_future(send())
            try:
                status, headers = await asyncio.wait_for(httpc.read_head(reader), 30)
                data = b"".join([c async for c in httpc.body_chunks(reader, headers)])
                code = httpc.error_of(data)
            except (OSError, asyncio.IncompleteReadError, ValueError, asyncio.TimeoutError) as e:
                status, code = 0, f"{type(e).__name__}"
            took = time.monotonic() - t0
            sender.cancel()
            try:
                sent = await sender
            except asyncio.CancelledError:
                sent = None
            writer.close()
            return status, code, took, sent

        results = await asyncio.gather(*[one(i % 2 == 1) for i in range(n)])
        answers = {}
        for status, code, _, _ in results:
            key = f"{status} {code}"
            answers[key] = answers.get(key, 0) + 1
        return {"bodies": n, "bytes_each": size, "answers": answers,
                "slowest_answer_s": round(max(r[2] for r in results), 2)}

    async def bad_json(self):
        """Invalid UTF-8 and deeply nested JSON, in fields herd reads and in
        one it ignores: each must be a 400 in OpenAI's error shape."""
        head = b'{"model":"' + MODEL_ID.encode() + b'","messages":'
        deep = 100_000
        cases = {
            "invalid UTF-8 in content": head + b'[{"role":"user","content":"caf\xc3\x28 \xff\xfe"}]}',
            "invalid UTF-8 in model": b'{"model":"\xff\xfe","messages":[{"role":"user","content":"hi"}]}',
            "lone surrogate escape": head + b'[{"role":"user","content":"\\ud800"}]}',
            f"messages nested {deep} deep": head + b"[" * deep + b"]" * deep + b"}",
            f"unknown field nested {deep} deep": head + b'[{"role":"user","content":"hi"}],"x":'
            + b'{"a":' * deep + b"1" + b"}" * deep + b"}",
            "truncated JSON": head + b'[{"role":"user","content":"hi"',
            "not JSON": b"\x00\x01\x02 definitely not json",
        }
        out = {}
        for name, body in cases.items():
            for path in ("/v1/chat/completions", "/v1/completions"):
                o = await httpc.exchange("POST", path, body, port=self.port, timeout=30)
                out[f"{path} {name}"] = f"{o.status} {o.code}"
        return {"cases": out, "all_4xx_openai_shape": all(
            v.startswith("4") and not v.endswith("None") for v in out.values())}

    async def huge_prompts(self, n=6, mib=4):
        if "huge" not in self.bodies:
            words = ("lorem ipsum dolor sit amet consectetur " * ((mib << 20) // 39 + 1))[: mib << 20]
            self.bodies["huge"] = httpc.chat_body(MODEL_ID, words, 4, False)
        body = self.bodies["huge"]
        t0 = time.monotonic()
        outs = await asyncio.gather(*[httpc.exchange("POST", "/v1/chat/completions", body,
                                                     port=self.port, timeout=120)
                                      for _ in range(n)])
        return {"prompts": n, "mib_each": mib,
                "answers": sorted({f"{o.status} {o.code}" for o in outs}),
                "slowest_answer_s": round(max(o.e2e or 0 for o in outs), 2),
                "all_s": round(time.monotonic() - t0, 2)}

    async def everything(self):
        found = await asyncio.gather(self.slowloris(), self.idle_keepalive(), self.slow_readers(),
                                     self._repeat(self.huge_prompts, 0.0),
                                     self._repeat(self.big_bodies),
                                     self._repeat(self.bad_json, 0.5))
        return {"slowloris": found[0], "idle": found[1], "slow_readers": found[2],
                "huge_prompt_rounds": found[3], "big_body_rounds": found[4],
                "bad_json_rounds": found[5]}

    async def _repeat(self, attack, pause=1.0):
        """Repeats an attack for the hold time (a pause between rounds: the
        point is the size of each, not the rate); returns the answers seen."""
        end, rounds, seen, r = time.monotonic() + self.hold, 0, set(), {}
        while time.monotonic() < end:
            r = await attack()
            rounds += 1
            seen.update(r.get("answers") or r.get("cases", {}).values())
            await asyncio.sleep(pause)
        return {"rounds": rounds, "answers": sorted(seen), "last": r}


def finished_by_reason(metrics_text):
    return {r: observe.counter(metrics_text, "herd_request_finished_total", finish_reason=r)
            for r in ("stop", "length", "error", "cancelled")}


async def _until_closed(reader):
    try:
        while await reader.read(4096):
            pass
    except OSError:
        pass


async def main_async(herd, hold, log_to, only=None):
    with start_herd(herd, *SERVER_FLAGS, log_to=log_to) as server, \
            observe.Sampler(server.proc.pid, period=0.5) as sampler:
        run = Run(port_of(server), sampler, hold, only)
        prober = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--probe", str(run.port), stdout=asyncio.subprocess.PIPE)
        reader = asyncio.ensure_future(run.read_probes(prober.stdout))

        def pause(seconds):
            async def go():
                await asyncio.sleep(seconds)
                return {}
            return go

        await run.phase_run("baseline", "no attack, 10 s", pause(10))
        await run.phase_run("slowloris", "500 connections sending a header line every 5 s",
                            run.slowloris)
        # Held past herd's default idle timeout (60 s), to see it act.
        idle_hold = max(hold, 75.0)
        await run.phase_run("idle", f"200 idle keep-alive connections after one request, "
                            f"held {idle_hold:g} s", lambda: run.idle_keepalive(hold=idle_hold))
        await run.phase_run("fast_readers", "control: the same 50 streams read at full speed "
                            "(closed at the end of the hold)",
                            lambda: run.slow_readers(slow=False))
        await run.phase_run("slow_readers", "50 streams (max_tokens 1300) read at 1 byte/s",
                            run.slow_readers)
        await run.phase_run("big_bodies", "8 x 10 MB bodies at once (4 with Content-Length, "
                            "4 chunked), again every second", lambda: run._repeat(run.big_bodies))
        await run.phase_run("bad_json", "invalid UTF-8, nesting 100,000 deep, truncated JSON, "
                            "again every 0.5 s", lambda: run._repeat(run.bad_json, 0.5))
        await run.phase_run("huge_prompts", "six 4 MiB prompts at once, again as soon as all "
                            "are answered", lambda: run._repeat(run.huge_prompts, 0.0))
        await run.phase_run("everything", "all of the above at once", run.everything)
        await run.phase_run("recovery", "no attack, 10 s", pause(10))
        prober.terminate()
        await prober.wait()
        await reader
        start = sampler.samples[0] if sampler.samples else None
        end = sampler.samples[-1] if sampler.samples else None
        alive = server.proc.poll() is None
        all_ttfts = [p["ttft"] for p in run.probes if p["kind"] == "ok"]
        return {
            "server_flags": SERVER_FLAGS, "hold_s": hold, "phases": run.phases,
            "probe_total": {"sent": len(run.probes), "ok": len(all_ttfts),
                            "over_250ms": sum(t > 0.25 for t in all_ttfts),
                            "failed": sum(p["kind"] != "ok" for p in run.probes),
                            "ttft_p99_ms": ms(pct(all_ttfts, 99)),
                            "ttft_max_ms": ms(max(all_ttfts) if all_ttfts else None)},
            "rss_start": {"gateway_mib": start and start[1], "engine_mib": start and start[4]},
            "rss_end": {"gateway_mib": end and end[1], "engine_mib": end and end[4],
                        "gateway_fds": end and end[2]},
            "peak": sampler.peak(),
            "gateway_alive_at_end": alive,
        }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--herd")
    ap.add_argument("--hold", type=float, default=45.0,
                    help="seconds each connection attack is held")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--log", help="copy the server's log here")
    ap.add_argument("--only", help="run only these phases (comma-separated names)")
    ap.add_argument("--probe", type=int, metavar="PORT", help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.probe:
        try:
            asyncio.run(probe(opts.probe, 0.2))
        except KeyboardInterrupt:
            pass
        return
    if not opts.herd:
        ap.error("--herd is required")
    result = asyncio.run(main_async(opts.herd, opts.hold, opts.log,
                                   opts.only and opts.only.split(",")))
    text = json.dumps(result, indent=1)
    if opts.json:
        with open(opts.json, "w") as f:
            f.write(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
