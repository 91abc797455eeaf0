#!/usr/bin/env python3
"""A fixed-response HTTP/1.1 server: every request (any method, any path)
gets the same small JSON body, over keep-alive connections. It is the floor
for P4: the latency of the load generator, loopback TCP and the scheduler
with (almost) no server work, and the upstream a proxying gateway will sit in
front of.

Usage: bench/fixed_upstream.py PORT
"""
import asyncio
import sys

BODY = (b'{"object":"list","data":[{"id":"fixed","object":"model","created":0,'
        b'"owned_by":"bench"}]}')
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


async def serve_connection(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length:
                await reader.readexactly(length)
            writer.write(RESPONSE)
            await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main(port: int):
    # asyncio streams set TCP_NODELAY, as herd and LiteLLM do.
    server = await asyncio.start_server(serve_connection, "127.0.0.1", port, backlog=1024)
    print(f"fixed upstream listening on http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
