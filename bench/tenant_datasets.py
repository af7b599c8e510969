"""tenant-datasets: the orchestration overhead of flowgate running a tenant's
three stages (inputs downloaded, outputs uploaded, a dataset published) against
the same scripts run by a plain shell loop that hands the files from stage to
stage with cp and copies the result into the bucket folder.

Three tenants × (3 stages + publish) per run; each cell the median of --repeat
runs, tools in rotating order; every run's three final parts are checked
(row counts per tenant) before it counts. Overhead per step = (flowgate − shell)
/ 12 steps; the target is ≤ 50 ms."""

import argparse
import datetime
import shutil
import subprocess
from pathlib import Path

from common import DATA, append_results, cell, machine, rounds, timed, version

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tenant-datasets"
TENANTS = [("CAT-BE", "PROD", 120), ("CAT-BE-DEV", "DEV", 40), ("EEL-DE", "PROD", 80)]

SHELL_LOOP = r"""
set -eu
for entry in "$@"; do
  project=${entry%%:*}; env=${entry#*:}
  tenant=$(echo "$project" | tr 'A-Z' 'a-z' | sed 's/-dev$//')
  bucket="buckets/scraper-$(echo "$env" | tr 'A-Z' 'a-z')/$tenant/datasets/$(date -u +%Y%m%d_%H%M%S)_utc"
  work=$(mktemp -d)
  mkdir -p "$work/1b" "$work/2b" "$work/3b"
  (cd "Project/$project" && TENANT_NAME=$tenant FLOWGATE_OUT_P="$work/1b" ../../lib/stage.sh 1a >/dev/null)
  (cd "Project/$project" && TENANT_NAME=$tenant FLOWGATE_IN_P="$work/1b" FLOWGATE_OUT_P="$work/2b" ../../lib/stage.sh 2a >/dev/null)
  (cd "Project/$project" && TENANT_NAME=$tenant FLOWGATE_IN_P="$work/2b" FLOWGATE_OUT_P="$work/3b" ../../lib/stage.sh 3a >/dev/null)
  mkdir -p "$bucket"
  cp -r "$work/1b" "$work/2b" "$work/3b" "$bucket/"
  rm -rf "$work"
done
"""


def fresh(tool):
    """A copy of the example with a third tenant, for one tool."""
    at = DATA / "tenant-datasets" / tool
    shutil.rmtree(at, ignore_errors=True)
    shutil.copytree(EXAMPLE, at, symlinks=True)
    for env in ("scraper-dev", "scraper-prod"):  # made beforehand, found by prefix
        (at / "buckets" / env).mkdir(parents=True, exist_ok=True)
    eel = at / "Project" / "EEL-DE"
    eel.mkdir()
    (eel / "tenant.conf").write_text("ROWS=80\n")
    return at


def check(at):
    """Every tenant's 3b holds its rows (one dataset each)."""
    for project, env, rows in TENANTS:
        tenant = project.lower().removesuffix("-dev")
        found = list((at / "buckets" / f"scraper-{env.lower()}" / tenant / "datasets").glob("*/3b/rows.csv"))
        if len(found) != 1:
            raise RuntimeError(f"{project}: {len(found)} datasets")
        lines = found[0].read_text().count("\n")
        if lines != rows + 1:
            raise RuntimeError(f"{project}: {lines - 1} rows, expected {rows}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flowgate", required=True)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    flowgate = Path(args.flowgate).resolve()
    script = DATA / "shell-loop.sh"
    DATA.mkdir(parents=True, exist_ok=True)
    script.write_text(SHELL_LOOP)

    def run_flowgate():
        at = fresh("flowgate")
        runs = " && ".join(
            f"{flowgate} run process.toml -p project={p} -p env={e} >/dev/null" for p, e, _ in TENANTS)
        s = timed(["sh", "-c", runs], cwd=at, log=DATA / "flowgate.log")
        check(at)
        return s

    def run_shell():
        at = fresh("shell")
        s = timed(["sh", str(script), *[f"{p}:{e}" for p, e, _ in TENANTS]], cwd=at, log=DATA / "shell.log")
        check(at)
        return s

    print(f"== tenant-datasets: {len(TENANTS)} tenants × 3 stages, {args.repeat} rounds")
    got = rounds({"flowgate": run_flowgate, "shell loop": run_shell}, args.repeat)
    for name, samples in got.items():
        if isinstance(samples, Exception):
            raise SystemExit(f"{name} failed: {samples}")
    fg = [s.seconds for s in got["flowgate"]]
    sh = [s.seconds for s in got["shell loop"]]
    steps = len(TENANTS) * 4
    overhead = [(f - s) / steps * 1000 for f, s in zip(sorted(fg), sorted(sh))]
    per_run = [f / len(TENANTS) * 1000 for f in fg]
    verdict = "met" if sorted(overhead)[len(overhead) // 2] <= 50 else "MISSED"
    body = f"""## tenant-datasets — {datetime.date.today().isoformat()}

{machine()}; {version([str(flowgate), '--version'])}; medians of {args.repeat} runs (min–max).

| what | seconds | peak RSS MB |
|---|---|---|
| flowgate: 3 × `run process.toml` (3 stages + publish each, staged files, SQLite state) | {cell(fg)} | {cell([s.rss_mb for s in got['flowgate']], '{:.0f}')} |
| plain shell loop, the same scripts, files handed on with cp | {cell(sh)} | {cell([s.rss_mb for s in got['shell loop']], '{:.0f}')} |

Orchestration overhead per step (flowgate − shell, over {steps} steps): {cell(overhead, '{:.0f}')} ms,
target ≤ 50 ms: **{verdict}**. One tenant's run (process start, plan, state, 4 steps): {cell(per_run, '{:.0f}')} ms.
Every run's three final parts were checked (rows per tenant).
"""
    print(body)
    print(f"appended to {append_results(body)}")


if __name__ == "__main__":
    main()
