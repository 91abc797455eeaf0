"""What the reliability scripts (load_mix, hostile, soak) share: the model,
starting a herd server of their own, percentiles and logging."""
import math
import os
import tempfile
import time

from procs import Server

CACHE = os.environ.get("HERD_CACHE", os.path.expanduser("~/.cache/herd"))
MODEL = os.environ.get("HERD_BENCH_MODEL",
                       os.path.join(CACHE, "models/SmolLM2-135M-Instruct.Q4_1.gguf"))
MODEL_ID = "smollm2-135m-instruct"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def start_herd(herd, *flags, env=None, log_to=None):
    """`herd serve` on a free port with its own state dir, no discovery, and
    the given flags; returns the running procs.Server (a context manager).
    Its log is copied to `log_to` when it stops."""
    state = tempfile.mkdtemp(prefix="herd-rel-state-")
    argv = [herd, "serve", "--model", MODEL, "--listen", "127.0.0.1:0", "--no-discovery",
            "--state-dir", state, *map(str, flags)]
    server = Server("herd", argv, env={"HERD_LOG": os.environ.get("HERD_LOG", "info"), "NO_COLOR": "1", **(env or {})},
                    listen_re=r"herd listening on (http://[0-9.:]+)")
    server.keep_log_to = log_to
    return server


def port_of(server):
    return int(server.url.rsplit(":", 1)[1])


def pct(values, q):
    """Nearest-rank percentile (q in 0..100) of a list, None when empty."""
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return None
    rank = max(1, math.ceil(q / 100 * len(xs)))
    return xs[min(rank, len(xs)) - 1]


def ms(seconds):
    return None if seconds is None else round(seconds * 1000, 1)
