"""Servers under test (herd, llama-server, LiteLLM) as child processes, and
`herd bench` runs against them. Every server runs in its own process group,
so stopping it also stops its children (herd's engine host)."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

# Every distinct command line run, in order, with ports and temp paths made
# generic, for the "exact commands" section of docs/benchmarks.md.
COMMANDS = []


def record(argv):
    line = " ".join(str(a) for a in argv)
    line = re.sub(r"http://127\.0\.0\.1:\d+", "http://127.0.0.1:PORT", line)
    line = re.sub(r"--port \d+", "--port PORT", line)
    line = re.sub(r"--rate \d+", "--rate RATE", line)
    home = os.path.expanduser("~")
    line = line.replace(home, "~").replace(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))) + "/", "")
    if line not in COMMANDS:
        COMMANDS.append(line)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def wait_healthy(base_url: str, what: str, seconds: float = 120.0):
    """Waits until `base_url`/health answers 200; exits naming `what` if it never does."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if http_status(base_url + "/health", timeout=5) == 200:
            return
        time.sleep(0.2)
    raise SystemExit(f"{what} did not become healthy")


class Server:
    """A server process; `url` is its base (no /v1)."""

    def __init__(self, name, argv, env=None, url=None, listen_re=None, health="/health",
                 startup=180.0, show_env=True):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"herd-bench-{name}-", suffix=".log",
                                               delete=False)
        shown = [f"{k}={v if show_env else '...'}" for k, v in (env or {}).items()]
        record(shown + list(argv))
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=full_env, start_new_session=True)
        self.url = url
        deadline = time.time() + startup
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited at start; log:\n{self.log_text()[-3000:]}")
            if self.url is None and listen_re:
                m = re.search(listen_re, self.log_text())
                if m:
                    self.url = m.group(1)
            if self.url and http_status(self.url + health) == 200:
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{name} did not become healthy; log:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def pids(self):
        """This server and its descendants (herd: gateway + engine host)."""
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            # Children are listed per thread: herd spawns its engine host from a tokio worker.
            try:
                tasks = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tasks:
                try:
                    with open(f"/proc/{pid}/task/{tid}/children") as f:
                        todo += [int(c) for c in f.read().split()]
                except OSError:
                    pass
        return out

    def rss_mib(self) -> dict:
        """Resident memory of each process of the server, MiB, by command name."""
        rss = {}
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/status") as f:
                    fields = dict(line.split(":", 1) for line in f if ":" in line)
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if "VmRSS" not in fields:
                continue  # exiting: no memory left to count
            role = argv[1].decode() if len(argv) > 1 and argv[1] else "?"
            rss[f"{os.path.basename(argv[0].decode())} {role}"] = \
                int(fields["VmRSS"].split()[0]) / 1024
        return rss

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        # Children left in the group (an engine host mid-shutdown) go too.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if getattr(self, "keep_log_to", None):
            shutil.copyfile(self.log.name, self.keep_log_to)
        os.unlink(self.log.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class RssSampler:
    """Polls a server's RSS every 50 ms in a thread; keeps the peak total."""

    def __init__(self, server: Server):
        self.server, self.peak, self._stop = server, {}, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            rss = self.server.rss_mib()
            if sum(rss.values()) > sum(self.peak.values()):
                self.peak = rss
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def herd_bench(herd: str, base_url: str, *args: str, api_key=None) -> dict:
    """`herd bench --json` and its report. The key goes in the environment,
    so it shows in no command line."""
    argv = [herd, "bench", "--json", "--no-progress", "--base-url", base_url, *map(str, args)]
    record(argv)
    env = dict(os.environ)
    env.pop("HERD_BENCH_API_KEY", None)
    if api_key:
        env["HERD_BENCH_API_KEY"] = api_key
    r = subprocess.run(argv, capture_output=True, text=True, timeout=1800, env=env)
    try:
        report = json.loads(r.stdout)
    except json.JSONDecodeError as e:
        raise RuntimeError(f"herd bench gave no report: {' '.join(argv)}\n{r.stderr}") from e
    if report["requests"]["failed"]:
        print(f"  warning: {report['requests']['failed']} failed: {report['requests']['errors']}",
              flush=True)
    return report
