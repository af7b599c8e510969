"""Helpers shared by the benchmarks: timing a command with its peak memory, and
describing the machine."""

import os
import platform
import subprocess
import time
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def timed(cmd, env=None, cwd=None, log=None):
    """Run a command; return (seconds, peak RSS in MB).

    The peak comes from GNU time, which starts the tool from a small process:
    measured from this Python process, a child's peak would include the memory it
    inherited before exec."""
    DATA.mkdir(parents=True, exist_ok=True)
    rss_file = DATA / f".rss-{os.getpid()}"
    start = time.monotonic()
    out = open(log, "wb") if log else subprocess.DEVNULL
    # `env` adds to this environment; a None value removes a variable.
    full = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    p = subprocess.run(["/usr/bin/time", "-q", "-f", "%M", "-o", str(rss_file), *cmd],
                       env=full, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - start
    if log:
        out.close()
    if p.returncode != 0:
        tail = Path(log).read_text(errors="replace")[-3000:] if log else ""
        raise RuntimeError(f"{cmd[0]} exited with {p.returncode}\n{tail}")
    return seconds, int(rss_file.read_text().split()[-1]) / 1024


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
