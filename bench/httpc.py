"""A small asyncio HTTP/1.1 client for the reliability scripts (stdlib only).

It keeps what a load generator hides: the status line even when the body is
cut, the Retry-After header, each SSE event as it arrives (TTFT is the first
event with text), and *how* an exchange ended, so that a request that ends
without an answer or an error ("lost") can be told apart from one that got an
error. One connection per request (Connection: close) unless the caller
holds the connection itself.
"""
import asyncio
import json
import time

HOST = "127.0.0.1"


class Outcome:
    """How one request ended, as the client saw it.

    kind: "ok"           complete answer (JSON with choices, or a stream that
                         ended with a finish_reason chunk and [DONE])
          "status"       an HTTP error status with OpenAI's error body
          "event"        a 200 stream that ended with an error event and [DONE]
          "lost"         anything else: reset, EOF before the end, bad framing
          "timeout"      no end within the client's deadline
          "cancelled"    the client hung up on purpose (soak's disconnects)
    """

    __slots__ = ("kind", "status", "code", "retry_after", "ttft", "e2e", "detail", "tokens")

    def __init__(self, kind, status=0, code=None, retry_after=None, ttft=None, e2e=None,
                 detail="", tokens=0):
        self.kind, self.status, self.code = kind, status, code
        self.retry_after, self.ttft, self.e2e = retry_after, ttft, e2e
        self.detail, self.tokens = detail, tokens

    def __repr__(self):
        return (f"Outcome({self.kind} {self.status} {self.code} ttft={self.ttft} "
                f"{self.detail[:120]!r})")


def request_bytes(method, path, body=None, headers=None, port=0, keep_alive=False):
    head = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}",
            "Connection: " + ("keep-alive" if keep_alive else "close")]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    for k, v in (headers or {}).items():
        head.append(f"{k}: {v}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + (body or b"")


async def read_head(reader):
    """(status, headers) of a response; raises on EOF or a malformed head."""
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ValueError(f"bad status line {lines[0]!r}")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return int(parts[1]), headers


async def body_chunks(reader, headers):
    """Yields the body as it arrives (chunked, Content-Length or until EOF).
    Raises asyncio.IncompleteReadError when the server cuts it short."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return
            data = await reader.readexactly(size)
            await reader.readexactly(2)
            yield data
    elif "content-length" in headers:
        n = int(headers["content-length"])
        if n:
            yield await reader.readexactly(n)
    else:
        while True:
            data = await reader.read(65536)
            if not data:
                return
            yield data


def error_of(body: bytes):
    """The `error.code` (or type) of an OpenAI error body, else None."""
    try:
        err = json.loads(body)["error"]
        return err.get("code") or err.get("type") or "error"
    except (ValueError, KeyError, TypeError):
        return None


def chunk_text(event):
    for c in event.get("choices") or []:
        text = (c.get("delta") or {}).get("content") or c.get("text")
        if text:
            return text
    return None


async def exchange(method, path, body=None, *, port, stream=False, timeout=120.0, headers=None,
                   on_event=None):
    """Sends one request on a new connection and reads the whole answer."""
    start = time.monotonic()
    try:
        return await asyncio.wait_for(
            _exchange(method, path, body, port, stream, headers, start, on_event), timeout)
    except asyncio.TimeoutError:
        return Outcome("timeout", e2e=time.monotonic() - start, detail=f"no end in {timeout} s")


async def _exchange(method, path, body, port, stream, headers, start, on_event):
    try:
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 22)
    except OSError as e:
        return Outcome("lost", detail=f"connect: {e}")
    try:
        writer.write(request_bytes(method, path, body, headers, port))
        await writer.drain()
        status, head = await read_head(reader)
        retry_after = head.get("retry-after")
        if status != 200 or not stream:
            data = b"".join([c async for c in body_chunks(reader, head)])
            e2e = time.monotonic() - start
            if status != 200:
                code = error_of(data)
                kind = "status" if code else "lost"
                return Outcome(kind, status, code, retry_after, e2e=e2e,
                               detail=data[:300].decode("utf-8", "replace"))
            return _json_answer(data, e2e, status)
        return await _read_sse(reader, head, start, on_event)
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
        return Outcome("lost", detail=f"{type(e).__name__}: {e}", e2e=time.monotonic() - start)
    finally:
        writer.close()


def _json_answer(data, e2e, status):
    try:
        v = json.loads(data)
        if v.get("object") == "list" and isinstance(v.get("data"), list):
            return Outcome("ok", status, e2e=e2e)  # GET /v1/models
        choice = v["choices"][0]
        if choice.get("finish_reason"):
            return Outcome("ok", status, e2e=e2e, tokens=v.get("usage", {}).get(
                "completion_tokens", 0))
    except (ValueError, KeyError, IndexError, TypeError):
        pass
    return Outcome("lost", status, e2e=e2e, detail="200 without a complete answer: "
                   + data[:200].decode("utf-8", "replace"))


async def _read_sse(reader, head, start, on_event):
    buf, ttft, finished, error, done, tokens = b"", None, False, None, False, 0
    async for data in body_chunks(reader, head):
        buf += data
        while b"\n\n" in buf:
            raw, buf = buf.split(b"\n\n", 1)
            for line in raw.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    continue
                event = json.loads(payload)
                if on_event:
                    on_event(event)
                if "error" in event:
                    error = event["error"].get("code") or event["error"].get("type")
                    continue
                if chunk_text(event):
                    tokens += 1
                    if ttft is None:
                        ttft = time.monotonic() - start
                if any(c.get("finish_reason") for c in event.get("choices") or []):
                    finished = True
    e2e = time.monotonic() - start
    if done and error:
        return Outcome("event", 200, error, ttft=ttft, e2e=e2e, tokens=tokens)
    if done and finished:
        return Outcome("ok", 200, ttft=ttft, e2e=e2e, tokens=tokens)
    return Outcome("lost", 200, error, ttft=ttft, e2e=e2e, tokens=tokens,
                   detail=f"stream ended: [DONE]={done} finish={finished} error={error}")


def chat_body(model, prompt, max_tokens, stream, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "stream": stream, "temperature": 0}
    body.update(extra)
    return json.dumps(body).encode()


async def get_json(path, port, timeout=10.0):
    """GET a JSON document (health, metrics text is read with get_text)."""
    text = await get_text(path, port, timeout)
    return json.loads(text) if text else None


async def get_text(path, port, timeout=10.0):
    async def go():
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            writer.write(request_bytes("GET", path, port=port))
            await writer.drain()
            _, head = await read_head(reader)
            return b"".join([c async for c in body_chunks(reader, head)]).decode()
        finally:
            writer.close()
    try:
        return await asyncio.wait_for(go(), timeout)
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
        return None
