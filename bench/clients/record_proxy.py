#!/usr/bin/env python3
"""A recording reverse proxy: forwards every request to herd unchanged,
streams the answer back unchanged, and appends one JSON line per request
(method, path, status, the request body) to a file as the answer starts, so a client run can
show exactly what the client sent.

Usage: record_proxy.py LISTEN_PORT UPSTREAM_URL OUT.jsonl
"""
import json
import sys

import aiohttp
from aiohttp import web

HOP = {"host", "content-length", "transfer-encoding", "connection"}


def main():
    port, upstream, out = int(sys.argv[1]), sys.argv[2].rstrip("/"), sys.argv[3]

    def record(request, status, body):
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = body.decode("utf-8", "replace")
        with open(out, "a") as f:
            f.write(json.dumps({"method": request.method, "path": request.path_qs,
                                "status": status, "bytes": len(body), "body": parsed}) + "\n")

    async def handle(request):
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
        session = request.app["session"]
        async with session.request(request.method, upstream + request.path_qs,
                                   headers=headers, data=body) as r:
            record(request, r.status, body)
            resp = web.StreamResponse(status=r.status, headers={
                k: v for k, v in r.headers.items() if k.lower() not in HOP | {"content-encoding"}})
            await resp.prepare(request)
            async for chunk in r.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
        return resp

    async def start(app):
        app["session"] = aiohttp.ClientSession(auto_decompress=False,
                                               timeout=aiohttp.ClientTimeout(total=None))

    async def stop(app):
        await app["session"].close()

    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/{tail:.*}", handle)
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    web.run_app(app, host="127.0.0.1", port=port, print=None)


if __name__ == "__main__":
    main()
