"""Benchmark for the data-egress reference pipeline (run by scripts/bench.sh).

Copies 2 GB between two buckets on s3s-fs, as 1,000 objects and as one 2 GB
object, with flowgate (a copy step), rclone and the AWS CLI, in one run. Every
tool's destination is checked (object count, bytes, and SHA-256 of each object)
before its time counts. Reports MB/s and peak RSS.
"""

import argparse
import datetime as dt
import hashlib
import os
import shutil
from pathlib import Path

from common import machine, timed

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DATA = BENCH / "data" / "data-egress"
MB = 1024 * 1024


def write_sources(s3_root: Path, total_mb: int, count: int):
    """Fill bucket `eg-src` with `count` objects under many/ and one object under one/."""
    src = s3_root / "eg-src"
    if src.exists():
        shutil.rmtree(src)
    (src / "many").mkdir(parents=True)
    (src / "one").mkdir(parents=True)
    per = total_mb * MB // count
    for i in range(count):
        (src / "many" / f"part-{i:05d}.bin").write_bytes(os.urandom(per))
    with open(src / "one" / "big.bin", "wb") as f:
        for _ in range(total_mb):
            f.write(os.urandom(MB))


def digest_tree(root: Path):
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.startswith(".") and p.name != "_manifest.json":
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(8 * MB), b""):
                    h.update(chunk)
            out[str(p.relative_to(root))] = (p.stat().st_size, h.hexdigest())
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flowgate", required=True)
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--s3-root", required=True)
    ap.add_argument("--access-key", required=True)
    ap.add_argument("--secret-key", required=True)
    ap.add_argument("--aws", required=True, help="the AWS CLI")
    ap.add_argument("--total-mb", type=int, default=2048)
    ap.add_argument("--objects", type=int, default=1000)
    args = ap.parse_args()
    s3_root = Path(args.s3_root)
    DATA.mkdir(parents=True, exist_ok=True)
    print(f"writing {args.total_mb} MB as {args.objects} objects and as one object …", flush=True)
    write_sources(s3_root, args.total_mb, args.objects)
    want = {
        "many": digest_tree(s3_root / "eg-src" / "many"),
        "one": digest_tree(s3_root / "eg-src" / "one"),
    }
    env = {"AWS_ACCESS_KEY_ID": args.access_key, "AWS_SECRET_ACCESS_KEY": args.secret_key,
           "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
           # A CA bundle in the environment makes rclone 1.60 fail before it starts
           # (LoadCustomCABundleError); the endpoint here is plain HTTP anyway.
           "AWS_CA_BUNDLE": None}
    rclone_conf = DATA / "rclone.conf"
    rclone_conf.write_text(
        f"[s3s]\ntype = s3\nprovider = Other\naccess_key_id = {args.access_key}\n"
        f"secret_access_key = {args.secret_key}\nendpoint = {args.endpoint}\nregion = us-east-1\n")

    def flowgate_cmd(shape):
        d = DATA / f"flowgate-{shape}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        (d / "p.toml").write_text(f"""name = "bench-egress"
[stores]
src = {{ url = "s3://eg-src/{shape}", endpoint = "{args.endpoint}" }}
dst = {{ url = "s3://eg-dst/{shape}", endpoint = "{args.endpoint}", access = "write" }}
[[steps]]
id = "copy"
copy = {{ from = "src:", to = "dst:", verify = "size", concurrency = 8, part_size = "16MiB" }}
""")
        return [args.flowgate, "--state", str(d / "state.db"), "run", str(d / "p.toml")]

    tools = {
        "flowgate": flowgate_cmd,
        "rclone": lambda shape: ["rclone", "--config", str(rclone_conf), "copy", f"s3s:eg-src/{shape}",
                                 f"s3s:eg-dst/{shape}", "--transfers", "8", "--s3-chunk-size", "16M"],
        "aws cli": lambda shape: [args.aws, "--endpoint-url", args.endpoint, "s3", "cp", "--recursive",
                                  "--only-show-errors", f"s3://eg-src/{shape}", f"s3://eg-dst/{shape}"],
    }
    rows = []
    for shape, label in (("many", f"{args.objects} objects"), ("one", "one object")):
        for tool, cmd in tools.items():
            dst = s3_root / "eg-dst"
            shutil.rmtree(dst, ignore_errors=True)
            dst.mkdir(parents=True)
            print(f"  {label}: {tool} …", flush=True)
            try:
                secs, rss = timed(cmd(shape), env=env, log=DATA / f"{tool.replace(' ', '-')}-{shape}.log")
                got = digest_tree(dst / shape)
                complete = got == want[shape]
                note = "" if complete else f"{len(got)} of {len(want[shape])} objects match"
            except Exception as e:  # a failing tool is reported, not fatal
                secs, rss, complete, note = float("nan"), 0.0, False, f"failed: {str(e)[:200]}"
            rows.append((label, tool, secs, args.total_mb / secs if secs == secs else 0.0, rss, complete, note))
            print(f"    {secs:.2f} s, {args.total_mb / secs if secs == secs else 0:.0f} MB/s, {rss:.0f} MB"
                  f"{'' if complete else ' — ' + note}", flush=True)
            shutil.rmtree(dst, ignore_errors=True)
    shutil.rmtree(s3_root / "eg-src", ignore_errors=True)

    lines = ["| copy | tool | seconds | MB/s | × rclone | peak RSS MB | complete |",
             "|---|---|---:|---:|---:|---:|---|"]
    for label, tool, secs, mbs, rss, complete, note in rows:
        ref = next(r for r in rows if r[0] == label and r[1] == "rclone")
        ratio = f"{mbs / ref[3]:.2f}" if ref[3] else "-"
        lines.append(f"| {label} | {tool} | {secs:.2f} | {mbs:.0f} | {ratio} | {rss:.0f} | "
                     f"{'yes' if complete else '**NO** (' + note + ')'} |")
    fg = {r[0]: r for r in rows if r[1] == "flowgate"}
    rc = {r[0]: r for r in rows if r[1] == "rclone"}
    targets = []
    for label in fg:
        ok = fg[label][3] >= rc[label][3]
        targets.append(f"{label}: {fg[label][3] / rc[label][3]:.2f}× rclone's throughput ({'met' if ok else '**missed**'})"
                       if rc[label][3] else f"{label}: rclone failed")
    big = fg.get("one object")
    if big:
        targets.append(f"peak RSS on the 2 GB object {big[4]:.0f} MB ({'met' if big[4] < 200 else '**missed**'}, target < 200 MB)")
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = "\n".join([f"## data-egress — {stamp}", "", f"Machine: {machine()}", "",
                      f"{args.total_mb} MB between two buckets of s3s-fs on loopback (the same disk), "
                      "one run per tool; every object of every destination checked by SHA-256.", "",
                      *lines, "", "Targets: " + "; ".join(targets) + ".", ""])
    print("\n" + body)
    results = BENCH / "RESULTS.md"
    with open(results, "a") as f:
        f.write(body + "\n")
    print(f"appended to {results}")


if __name__ == "__main__":
    main()
