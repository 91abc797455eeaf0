"""What the reliability scripts watch on a running herd: resident memory and
open file descriptors of the gateway and its engine host (from /proc), the
`herd_requests_total` counters of /metrics, and least-squares slopes."""
import os
import re
import threading
import time


def proc_stats(pid):
    """(RSS in MiB, open fds) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration, ValueError):
        return None
    return rss_kib / 1024, fds


def engine_hosts(gateway_pid):
    """Pids of the `herd engine-host` children of a `herd serve`."""
    out = []
    try:
        tasks = os.listdir(f"/proc/{gateway_pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{gateway_pid}/task/{tid}/children") as f:
                children = [int(c) for c in f.read().split()]
        except OSError:
            continue
        for child in children:
            try:
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"engine-host" in argv:
                out.append(child)
    return out


class Sampler:
    """Samples the gateway and its engine host every `period` seconds in a
    thread. Each sample: (t, gateway rss, gateway fds, host pid, host rss, host fds);
    host fields are None while no host runs (between a kill and its restart)."""

    def __init__(self, gateway_pid, period=1.0):
        self.pid, self.period, self.samples = gateway_pid, period, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.t0 = time.monotonic()

    def sample(self):
        gw = proc_stats(self.pid) or (None, None)
        hosts = engine_hosts(self.pid)
        host = hosts[0] if hosts else None
        hs = proc_stats(host) if host else None
        hs = hs or (None, None)
        return (time.monotonic() - self.t0, gw[0], gw[1], host, hs[0], hs[1])

    def _run(self):
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.period)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def between(self, t_from, t_to):
        return [s for s in self.samples if t_from <= s[0] <= t_to]

    def peak(self, t_from=0.0, t_to=float("inf")):
        """Peak gateway RSS, peak engine-host RSS, peak gateway fds in a window."""
        window = self.between(t_from, t_to)
        def top(i):
            vals = [s[i] for s in window if s[i] is not None]
            return max(vals) if vals else None
        return {"gateway_rss_mib": top(1), "engine_rss_mib": top(4), "gateway_fds": top(2),
                "engine_fds": top(5)}


def slope_per_hour(points):
    """Least-squares slope of (t seconds, y) points, in y per hour."""
    pts = [(t, y) for t, y in points if y is not None]
    if len(pts) < 3:
        return None
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    my = sum(y for _, y in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    if var == 0:
        return None
    return sum((t - mt) * (y - my) for t, y in pts) / var * 3600


_REQ = re.compile(r'^herd_requests_total\{([^}]*)\}\s+([0-9.e+]+)', re.M)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def requests_by_status(metrics_text):
    """{status: count} summed over models and error types, from /metrics."""
    out = {}
    for labels, value in _REQ.findall(metrics_text or ""):
        status = dict(_LABEL.findall(labels)).get("status", "?")
        out[status] = out.get(status, 0) + int(float(value))
    return out


def counter(metrics_text, name, **labels):
    """Sum of a counter's series whose labels include `labels`."""
    total = 0.0
    pat = re.compile(r'^' + re.escape(name) + r'(\{[^}]*\})?\s+([0-9.e+]+)', re.M)
    for lab, value in pat.findall(metrics_text or ""):
        have = dict(_LABEL.findall(lab or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total
