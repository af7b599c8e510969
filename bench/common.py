"""Helpers shared by the benchmarks: timing a command with its peak memory (and a
server's memory growth meanwhile), repeating tools in rotating order, medians,
and describing the machine."""

import os
import platform
import statistics
import subprocess
import threading
import time
from pathlib import Path

import psutil

DATA = Path(__file__).resolve().parent / "data"


class Sample:
    """One timed run: wall seconds, the client's peak RSS (MB), the server's RSS
    growth during the run (MB, when a server was watched), and whatever the
    caller adds (rows, a checked flag, the tool's own reported time)."""

    def __init__(self, seconds, rss_mb, server_mb=None):
        self.seconds, self.rss_mb, self.server_mb = seconds, rss_mb, server_mb
        self.extra = {}


class ServerWatch:
    """Sample the summed RSS of the processes `pids()` names every 0.1 s while a
    run goes on; `growth` is the peak minus the level before the run (MB)."""

    def __init__(self, pids):
        self.pids = pids
        self.before = self.peak = 0.0
        self._stop = threading.Event()
        self._thread = None

    def _rss(self):
        total = 0
        for pid in self.pids():
            try:
                total += psutil.Process(pid).memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total / 2**20

    def __enter__(self):
        self.before = self.peak = self._rss()

        def loop():
            while not self._stop.wait(0.1):
                self.peak = max(self.peak, self._rss())

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth(self):
        return self.peak - self.before


def pids_named(*names):
    """A `pids` function for ServerWatch: every process whose name is one of `names`."""
    def pids():
        return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] in names]
    return pids


def timed(cmd, env=None, cwd=None, log=None, server=None):
    """Run a command; return a Sample (raises when it fails).

    The peak comes from GNU time, which starts the tool from a small process:
    measured from this Python process, a child's peak would include the memory it
    inherited before exec. `server` (a pids function) adds the server's growth."""
    DATA.mkdir(parents=True, exist_ok=True)
    rss_file = DATA / f".rss-{os.getpid()}"
    out = open(log, "wb") if log else subprocess.DEVNULL
    # `env` adds to this environment; a None value removes a variable.
    full = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    watch = ServerWatch(server or (lambda: []))
    with watch:
        start = time.monotonic()
        p = subprocess.run(["/usr/bin/time", "-q", "-f", "%M", "-o", str(rss_file), *cmd],
                           env=full, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        seconds = time.monotonic() - start
    if log:
        out.close()
    if p.returncode != 0:
        tail = Path(log).read_text(errors="replace")[-3000:] if log else ""
        raise RuntimeError(f"{cmd[0]} exited with {p.returncode}\n{tail}")
    rss = int(rss_file.read_text().split()[-1]) / 1024
    return Sample(seconds, rss, watch.growth if server else None)


def sync():
    """Write dirty pages out so one tool's writes are not flushed in another's run."""
    os.sync()


def rounds(tools, repeat, before=None, log=print):
    """Run every tool `repeat` times, the order rotated each round so none always
    goes first; `before(name)` runs untimed before each sample (quiesce, clean).
    `tools` maps a name to a function returning a Sample (or raising). Returns
    name → list of Samples, or the exception of the first failure of that tool
    (a tool that fails once is not timed further: its result would not count)."""
    names = list(tools)
    out = {n: [] for n in names}
    for r in range(repeat):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            if isinstance(out[name], Exception):
                continue
            if before:
                before(name)
            try:
                s = tools[name]()
            except Exception as e:  # a failing tool is reported, not fatal
                log(f"    {name}: failed: {str(e)[:300]}")
                out[name] = e
                continue
            log(f"    round {r + 1}: {name}: {s.seconds:.2f} s, {s.rss_mb:.0f} MB"
                + (f", server +{s.server_mb:.0f} MB" if s.server_mb is not None else ""))
            out[name].append(s)
    return out


def spread(values):
    """(median, min, max) of numbers."""
    return statistics.median(values), min(values), max(values)


def cell(values, fmt="{:.2f}"):
    """`median (min–max)` of numbers, for a table."""
    m, lo, hi = spread(values)
    return f"{fmt.format(m)} ({fmt.format(lo)}–{fmt.format(hi)})"


def machine():
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.platform()}"


def version(cmd):
    """The first line a tool prints for its version, or `?`."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        text = (p.stdout or p.stderr).strip().splitlines()
        return text[0] if text else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


SUPERSEDED = "> Superseded by a later run of this benchmark below; kept as it was recorded."


def append_results(body):
    """Append a section to bench/RESULTS.md (created with its heading if new).
    Earlier sections of the same benchmark (the same `## name —` heading) are
    kept as recorded, marked superseded."""
    results = Path(__file__).resolve().parent / "RESULTS.md"
    if not results.exists():
        results.write_text("# Benchmark results\n\nAppended by `scripts/bench.sh`; only runs someone "
                           "committed appear; newest last.\n\n")
    name = body.lstrip().splitlines()[0].split(" — ")[0]
    # A full run supersedes every earlier run of its benchmark; a partial one
    # (`## name (partial: …) — `) only earlier runs of the same sections.
    full = " (partial: " not in name

    def superseded(line):
        if not line.startswith("## ") or " — " not in line:
            return False
        earlier = line.split(" — ")[0]
        return earlier == name or (full and earlier.split(" (partial: ")[0] == name)

    lines = results.read_text().splitlines()
    marked = []
    for i, line in enumerate(lines):
        marked.append(line)
        following = lines[i + 2] if i + 2 < len(lines) else ""
        if superseded(line) and following != SUPERSEDED:
            marked += ["", SUPERSEDED]
    results.write_text("\n".join(marked).rstrip("\n") + "\n\n" + body.rstrip("\n") + "\n")
    return results
