"""Benchmark for the data-egress copy step (run by `scripts/bench.sh data-egress`).

Moves `--total-mb` (default 2048; 1 MB = 2^20 bytes) between S3 buckets, once as
`--objects` objects (default 1,000) and once as one object of that size, with
flowgate (a copy step), rclone and the AWS CLI, in two cases:

  * server-side: both buckets behind one endpoint. Every tool lets the server copy
    the bytes: flowgate (one CopyObject per object up to 5 GiB), rclone (same
    remote; `--s3-copy-cutoff` above the object size, so one CopyObject too), the
    AWS CLI (`multipart_threshold` 5GB in its config, so one CopyObject too).
  * download-reupload: the buckets behind two endpoints (two gateway processes,
    each with its own data directory), so no server-side copy is possible and
    every tool moves the bytes itself: flowgate and rclone stream (GET → PUT, or a
    multipart upload in 16 MiB parts above that size); the AWS CLI cannot copy
    across endpoints, so it downloads (`aws s3 cp --recursive` to a local
    directory) and uploads from there, both commands timed together. This is the
    case that measures streaming and memory.

The S3 server is versitygw (Versity S3 Gateway, Apache-2.0) at the version
scripts/bench.sh installs with `go install`, posix backend. It stores each object
as a plain file (bucket/key) with its metadata (the ETag, i.e. the MD5 of a
PutObject) in user.* extended attributes, and behaves here as real S3 does where
it matters: a HEAD on a prefix is a 404 (not a 500 as in s3s-fs 0.14.1, which cost
rclone ~92 s of SDK retry back-off in the earlier bench); ranged GETs and
UploadPartCopy read only their range (s3s-fs 0.14.1 read to the end of the file
for every part); internal errors are logged ("[INTERNAL ERROR]" on stderr) and
every request's operation and status are in its access log. CopyObject reads the
source and writes a new file (computing its MD5); there is no reflink shortcut.
A newer s3s-fs needs rustc 1.96 (we have 1.95); MinIO is AGPL; gofakes3 is a test
double, not a server people run. The bench checks those behaviours before it
starts (HEAD on a prefix; bytes the server reads, from /proc/PID/io, for a 1 MiB
ranged GET and a 5 MiB UploadPartCopy) and stops if one fails. One artefact of it
is worked around: its HTTP layer (fasthttp 1.73) recognises `Expect: 100-continue`
only in lower case, and rclone's AWS SDK (Go, v1) sends `100-Continue` on every
PutObject/UploadPart over 2 MiB, then waits its 1 s expect-continue timeout for a
100 that never comes (a 3 MB PUT: 1.08 s, against 0.08 s without). Real S3 answers
at once, so rclone gets `--expect-continue-timeout 0` (send the body at once)
where it uploads. botocore (the AWS CLI) sends lower case; flowgate sends none.

Sources are written through the S3 API (`aws s3 cp --recursive` from a local
directory, one PutObject each, untimed) so every source has its MD5 as ETag, as
on real S3. Before every sample, untimed: the gateways are restarted (a fresh
process, so its RSS growth is comparable), the destination bucket emptied, the
AWS CLI's download directory removed, the sources read once (warm in the page
cache for every tool alike) and `sync` run. Tools run `--repeat` times (default
5) in rotating order; each cell is the median (min–max).

A sample counts only if the tool exited 0, every destination object's SHA-256
equals its source's (flowgate's `_manifest.json` aside), the gateways logged no
internal error and answered no request with a 5xx, and the work was the one the
case asks for: in the server-side case the gateway saw a CopyObject per object and
no upload, in the download-reupload case no CopyObject at all; rclone's `-vv` log
shows no "low level retry" and one "Copied (server-side copy)" per object (server-
side case) or none (download-reupload); flowgate's output says it copied every
object server-side (or, download-reupload, none). A tool that fails once gets "—".
"""

import argparse
import collections
import datetime as dt
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import botocore.config
import botocore.session

from common import Sample, append_results, cell, machine, rounds, spread, sync, timed, version

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data" / "data-egress"
LOGS = DATA / "logs"
MB = 2**20
ACCESS_KEY, SECRET_KEY, REGION = "bench-egress", "bench-egress-secret", "us-east-1"
SRC, DST = "eg-src", "eg-dst"
SHAPES = ("many", "one")
TOOLS = ("flowgate", "rclone", "aws cli")
RSS_TARGET_MB = 200


# ---------------------------------------------------------------- the S3 server

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# One line of versitygw's access log: … requester request-id operation key uri status error …
ACCESS_LINE = re.compile(r"\] \S+ \S+ \S+ (s3_\w+) (\S+) \S+ (\d{3}) ")


class Gateway:
    """One versitygw process (posix backend) serving the buckets under `root`,
    on a fixed loopback port across restarts; its stdout/stderr and access log
    go to bench/data/data-egress/logs/."""

    def __init__(self, binary, name, root: Path):
        self.binary, self.name, self.root = binary, name, root
        self.port = free_port()
        self.out_log = LOGS / f"versitygw-{name}.log"
        self.access_log = LOGS / f"versitygw-{name}.access.log"
        self.proc = None

    @property
    def endpoint(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self):
        return self.proc.pid

    def start(self):
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.out_log, "ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, "--port", f"127.0.0.1:{self.port}", "--access", ACCESS_KEY,
                 "--secret", SECRET_KEY, "--region", REGION, "--keep-alive", "--quiet",
                 "--access-log", str(self.access_log), "posix", str(self.root)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"versitygw {self.name} did not start; see {self.out_log}")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def mark(self):
        """Where its logs end now; `since(mark)` reads what came after."""
        size = lambda p: p.stat().st_size if p.exists() else 0  # noqa: E731
        return size(self.out_log), size(self.access_log)

    def since(self, mark):
        """(internal errors and panics logged, Counter of (operation, status)) since `mark`;
        flowgate's manifest upload counts as "PutObject _manifest.json"."""
        def tail(path, offset):
            if not path.exists():
                return ""
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        errors = [l.strip() for l in tail(self.out_log, mark[0]).splitlines()
                  if "[INTERNAL ERROR]" in l or "[PANIC]" in l]
        ops = collections.Counter()
        for line in tail(self.access_log, mark[1]).splitlines():
            m = ACCESS_LINE.search(line)
            if m:
                op = m.group(1).removeprefix("s3_")
                if m.group(2).endswith("/_manifest.json"):
                    op += " _manifest.json"
                ops[(op, int(m.group(3)))] += 1
        return errors, ops

    def bucket(self, name):
        return self.root / name

    def empty(self, name):
        """Remove every object (and any unfinished multipart upload) of a bucket,
        on disk, while the gateway is stopped; the bucket itself stays."""
        d = self.bucket(name)
        for child in d.iterdir():
            if child.name == ".sgwtmp":
                for sub in child.iterdir():
                    shutil.rmtree(sub) if sub.is_dir() else sub.unlink()
            elif child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()


def s3_client(endpoint):
    return botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint, region_name=REGION, aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))


def read_bytes_of(pid):
    """Bytes the process has read through read(2) and friends so far (/proc/PID/io rchar)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/PID/io")


def check_server(gw: Gateway):
    """The behaviours this bench relies on, or RuntimeError. Returns a sentence."""
    c = s3_client(gw.endpoint)
    bucket = "eg-check"
    c.create_bucket(Bucket=bucket)
    body = os.urandom(32 * MB)
    c.put_object(Bucket=bucket, Key="dir/object.bin", Body=body)
    try:
        c.head_object(Bucket=bucket, Key="dir")
        raise RuntimeError("versitygw answered a HEAD on a prefix with 200")
    except c.exceptions.ClientError as e:
        status = e.response["ResponseMetadata"]["HTTPStatusCode"]
        if status != 404:
            raise RuntimeError(f"versitygw answered a HEAD on a prefix with {status}, not 404") from None
    before = read_bytes_of(gw.pid)
    got = c.get_object(Bucket=bucket, Key="dir/object.bin", Range="bytes=0-1048575")["Body"].read()
    ranged = (read_bytes_of(gw.pid) - before) / MB
    if got != body[:MB] or ranged > 2:
        raise RuntimeError(f"a 1 MiB ranged GET made versitygw read {ranged:.1f} MiB")
    upload = c.create_multipart_upload(Bucket=bucket, Key="copy.bin")["UploadId"]
    before = read_bytes_of(gw.pid)
    c.upload_part_copy(Bucket=bucket, Key="copy.bin", UploadId=upload, PartNumber=1,
                       CopySource=f"{bucket}/dir/object.bin", CopySourceRange=f"bytes=0-{5 * MB - 1}")
    part = (read_bytes_of(gw.pid) - before) / MB
    c.abort_multipart_upload(Bucket=bucket, Key="copy.bin", UploadId=upload)
    if part > 6:
        raise RuntimeError(f"a 5 MiB UploadPartCopy made versitygw read {part:.1f} MiB")
    shutil.rmtree(gw.bucket(bucket))
    return (f"HEAD on a prefix → 404; a 1 MiB ranged GET of a 32 MiB object read {ranged:.1f} MiB "
            f"from disk, a 5 MiB UploadPartCopy {part:.1f} MiB (/proc/PID/io)")


# ---------------------------------------------------------------- sources

def digest_tree(root: Path, md5=False):
    """relative path → (size, sha256[, md5]) of every object file under `root`
    (hidden paths such as versitygw's .sgwtmp, and flowgate's _manifest.json, aside)."""
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and p.name != "_manifest.json"
             and not any(part.startswith(".") for part in p.relative_to(root).parts)]

    def one(p):
        hs = [hashlib.sha256()] + ([hashlib.md5()] if md5 else [])
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(8 * MB), b""):
                for h in hs:
                    h.update(chunk)
        return str(p.relative_to(root)), (p.stat().st_size, *(h.hexdigest() for h in hs))

    with ThreadPoolExecutor(max_workers=2) as pool:  # hashlib releases the GIL
        return dict(pool.map(one, files))


def warm(root: Path):
    """Read every file under `root` once, so each tool starts with the sources cached."""
    for p in root.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(8 * MB):
                    pass


def aws_config(name, **s3):
    """An AWS CLI config file with these `s3` settings; returns its path."""
    path = DATA / f"aws-{name}.cfg"
    path.write_text(f"[default]\nregion = {REGION}\ns3 =\n"
                    + "".join(f"  {k} = {v}\n" for k, v in s3.items()))
    return path


def seed(args, env, gw: Gateway):
    """Write the sources through PutObject (untimed); return their digests per shape."""
    local = DATA / "seed"
    shutil.rmtree(local, ignore_errors=True)
    (local / "many").mkdir(parents=True)
    (local / "one").mkdir(parents=True)
    per = args.total_mb * MB // args.objects
    for i in range(args.objects):
        (local / "many" / f"part-{i:05d}.bin").write_bytes(os.urandom(per))
    with open(local / "one" / "big.bin", "wb") as f:
        for _ in range(args.total_mb):
            f.write(os.urandom(MB))
    want = {shape: digest_tree(local / shape, md5=True) for shape in SHAPES}
    cfg = aws_config("seed", multipart_threshold="5GB", max_concurrent_requests=8)
    subprocess.run([args.aws, "--endpoint-url", gw.endpoint, "s3", "cp", "--recursive", "--only-show-errors",
                    str(local), f"s3://{SRC}/"], env={**env_for(env), "AWS_CONFIG_FILE": str(cfg)}, check=True)
    shutil.rmtree(local)
    # Every source must carry its MD5 as ETag, as a PutObject on real S3 leaves it.
    listed = {}
    for page in s3_client(gw.endpoint).get_paginator("list_objects_v2").paginate(Bucket=SRC):
        for o in page.get("Contents", []):
            listed[o["Key"]] = (o["Size"], o["ETag"].strip('"'))
    for shape in SHAPES:
        for rel, (size, _, md5) in want[shape].items():
            if listed.get(f"{shape}/{rel}") != (size, md5):
                raise RuntimeError(f"source {shape}/{rel} listed as {listed.get(f'{shape}/{rel}')}, "
                                   f"expected ({size}, {md5})")
        want[shape] = {rel: v[:2] for rel, v in want[shape].items()}
    return want


def env_for(extra):
    """This environment with `extra` added (a None value removes a variable), as common.timed does."""
    return {k: v for k, v in {**os.environ, **extra}.items() if v is not None}


# ---------------------------------------------------------------- cases and tools

@dataclass
class Case:
    key: str
    title: str
    note: str
    src: Gateway
    dst: Gateway

    @property
    def server_side(self):
        return self.src is self.dst


@dataclass
class Bench:
    args: argparse.Namespace
    env: dict
    want: dict
    a: Gateway
    b: Gateway
    commands: dict = field(default_factory=dict)  # (case, tool) → what ran, for the report
    samples: collections.Counter = field(default_factory=collections.Counter)

    def log(self, case, shape, tool, part=""):
        """The log of the current sample of `tool` (numbered from 1)."""
        n = self.samples[(case.key, shape, tool)]
        return LOGS / f"{case.key}-{shape}-{tool.replace(' ', '-')}-{n}{part}.log"

    def remember(self, case, tool, *cmds):
        self.commands.setdefault((case.key, tool), [" ".join(map(str, c)) for c in cmds])

    def run(self, case, cmd, log, env=None):
        """Time one command, watching the case's gateways; its output goes to `log`."""
        servers = [case.src.pid] if case.server_side else [case.src.pid, case.dst.pid]
        return timed(cmd, env={**self.env, **(env or {})}, log=log, server=lambda: servers)


def flowgate_tool(bench: Bench, case: Case, shape):
    d = DATA / "flowgate"
    shutil.rmtree(d, ignore_errors=True)  # a fresh state: nothing counts as copied before
    d.mkdir(parents=True)
    pipeline = d / "p.toml"
    pipeline.write_text(f"""name = "bench-egress"
[stores]
src = {{ url = "s3://{SRC}/{shape}", endpoint = "{case.src.endpoint}" }}
dst = {{ url = "s3://{DST}/{shape}", endpoint = "{case.dst.endpoint}", access = "write" }}
[[steps]]
id = "copy"
copy = {{ from = "src:", to = "dst:", verify = "size", concurrency = 8, part_size = "16MiB" }}
""")
    cmd = [bench.args.flowgate, "--state", str(d / "state.db"), "run", str(pipeline)]
    bench.remember(case, "flowgate", cmd, *[[line] for line in pipeline.read_text().splitlines()
                                            if line.startswith(("src =", "dst =", "copy ="))])
    log = bench.log(case, shape, "flowgate")
    s = bench.run(case, cmd, log)
    m = re.search(r"(\d+) object\(s\) copied server-side", log.read_text(errors="replace"))
    copied = int(m.group(1)) if m else 0
    n = len(bench.want[shape])
    if case.server_side and copied != n:
        raise RuntimeError(f"flowgate copied {copied} of {n} objects server-side (see {log})")
    if not case.server_side and copied:
        raise RuntimeError(f"flowgate says it copied {copied} objects server-side across endpoints (see {log})")
    return s


def rclone_tool(bench: Bench, case: Case, shape):
    conf = DATA / "rclone.conf"
    conf.write_text("".join(
        f"[{name}]\ntype = s3\nprovider = Other\naccess_key_id = {ACCESS_KEY}\n"
        f"secret_access_key = {SECRET_KEY}\nendpoint = {gw.endpoint}\nregion = {REGION}\n\n"
        for name, gw in (("a", bench.a), ("b", bench.b))))
    src = "a" if case.src is bench.a else "b"
    dst = "a" if case.dst is bench.a else "b"
    flags = ["--transfers", "8", "--checkers", "16", "--s3-no-check-bucket", "--fast-list"]
    if case.server_side:
        flags += ["--s3-copy-cutoff", "5G"]  # one CopyObject for anything up to 5 GiB, as flowgate
    else:
        flags += ["--s3-chunk-size", "16M", "--s3-upload-concurrency", "4",  # as flowgate's uploads
                  # versitygw's HTTP layer (fasthttp) takes `Expect: 100-continue` case-sensitively;
                  # rclone's SDK sends `100-Continue`, gets no 100 and would wait 1 s per upload
                  # over 2 MiB. Real S3 answers at once: send the body at once, as there.
                  "--expect-continue-timeout", "0"]
    log = bench.log(case, shape, "rclone")
    cmd = ["rclone", "--config", str(conf), "copy", f"{src}:{SRC}/{shape}/", f"{dst}:{DST}/{shape}/",
           *flags, "-vv", "--log-file", str(log)]
    bench.remember(case, "rclone", cmd)
    s = bench.run(case, cmd, bench.log(case, shape, "rclone", "-output"))
    text = log.read_text(errors="replace")
    n = len(bench.want[shape])
    server_side = text.count("Copied (server-side copy)")
    if "low level retry" in text:
        raise RuntimeError(f"rclone retried requests (see {log})")
    if case.server_side and server_side != n:
        raise RuntimeError(f"rclone copied {server_side} of {n} objects server-side (see {log})")
    if not case.server_side and server_side:
        raise RuntimeError(f"rclone copied server-side across remotes (see {log})")
    return s


def aws_tool(bench: Bench, case: Case, shape):
    aws = bench.args.aws
    if case.server_side:
        cfg = aws_config("server-side", multipart_threshold="5GB", max_concurrent_requests=8)
        cmd = [aws, "--endpoint-url", case.src.endpoint, "s3", "cp", "--recursive", "--only-show-errors",
               f"s3://{SRC}/{shape}/", f"s3://{DST}/{shape}/"]
        bench.remember(case, "aws cli", cmd)
        return bench.run(case, cmd, bench.log(case, shape, "aws cli"), env={"AWS_CONFIG_FILE": str(cfg)})
    # Across endpoints the AWS CLI cannot copy: download to a local directory, then upload.
    cfg = aws_config("download-reupload", multipart_threshold="16MB", multipart_chunksize="16MB",
                     max_concurrent_requests=8)
    tmp = DATA / "aws-download" / shape
    down = [aws, "--endpoint-url", case.src.endpoint, "s3", "cp", "--recursive", "--only-show-errors",
            f"s3://{SRC}/{shape}/", str(tmp)]
    up = [aws, "--endpoint-url", case.dst.endpoint, "s3", "cp", "--recursive", "--only-show-errors",
          str(tmp), f"s3://{DST}/{shape}/"]
    bench.remember(case, "aws cli", down, up)
    env = {"AWS_CONFIG_FILE": str(cfg)}
    a = bench.run(case, down, bench.log(case, shape, "aws cli", "-download"), env=env)
    b = bench.run(case, up, bench.log(case, shape, "aws cli", "-upload"), env=env)
    s = Sample(a.seconds + b.seconds, max(a.rss_mb, b.rss_mb), max(a.server_mb, b.server_mb))
    s.extra.update(download_s=a.seconds, upload_s=b.seconds)
    return s


TOOL_FUNCS = {"flowgate": flowgate_tool, "rclone": rclone_tool, "aws cli": aws_tool}


def checked(bench: Bench, case: Case, shape, tool):
    """A function for common.rounds: one timed sample of `tool`, raising unless
    its output is complete and it did the case's kind of work."""
    def sample():
        bench.samples[(case.key, shape, tool)] += 1
        gws = [case.src] if case.server_side else [case.src, case.dst]
        marks = [gw.mark() for gw in gws]
        s = TOOL_FUNCS[tool](bench, case, shape)
        ops = collections.Counter()
        for gw, mark in zip(gws, marks):
            errors, seen = gw.since(mark)
            if errors:
                raise RuntimeError(f"versitygw {gw.name} logged {len(errors)} internal error(s): {errors[0][:200]}")
            ops += seen
        failed = {k: v for k, v in ops.items() if k[1] >= 500}
        if failed:
            raise RuntimeError(f"versitygw answered with 5xx: {failed}")
        by_op = collections.Counter()
        for (op, _), v in ops.items():
            by_op[op] += v
        n = len(bench.want[shape])
        uploads = by_op["PutObject"] + by_op["UploadPart"]
        if case.server_side and (by_op["CopyObject"] < n or uploads):
            raise RuntimeError(f"not a server-side copy: {dict(by_op)}")
        if not case.server_side and (by_op["CopyObject"] or by_op["UploadPartCopy"]):
            raise RuntimeError(f"a server-side copy across endpoints?: {dict(by_op)}")
        got = digest_tree(case.dst.bucket(DST) / shape)
        want = bench.want[shape]
        if got != want:
            ok = sum(1 for k, v in want.items() if got.get(k) == v)
            raise RuntimeError(f"incomplete: {ok} of {len(want)} objects match their source "
                               f"({len(got)} at the destination)")
        s.extra["ops"] = by_op
        return s
    return sample


def run_case(bench: Bench, case: Case, shape):
    """Every tool, `--repeat` times in rotating order, fresh state before each sample."""
    def before(_tool):
        for gw in {id(g): g for g in (bench.a, bench.b)}.values():
            gw.stop()
        case.dst.empty(DST)
        shutil.rmtree(DATA / "aws-download", ignore_errors=True)
        shutil.rmtree(DATA / "flowgate", ignore_errors=True)
        warm(case.src.bucket(SRC) / shape)
        sync()
        bench.a.start()
        bench.b.start()

    tools = {tool: checked(bench, case, shape, tool) for tool in TOOLS}
    return rounds(tools, bench.args.repeat, before=before,
                  log=lambda line: print(line, flush=True))


# ---------------------------------------------------------------- report

def label(args, shape):
    return f"{args.objects} objects" if shape == "many" else f"one {args.total_mb} MB object"


def ops_text(ops):
    """The operations of one run, the data-moving ones first."""
    keep = ("CopyObject", "UploadPartCopy", "GetObject", "PutObject", "CreateMultipartUpload",
            "UploadPart", "CompleteMultipartUpload", "HeadObject", "ListObjectsV2", "ListObjects",
            "PutObject _manifest.json")
    rest = sorted(k for k in ops if k not in keep)
    return ", ".join(f"{ops[k]} {k}" for k in (*keep, *rest) if ops.get(k))


def case_table(args, case: Case, results):
    """Markdown rows for one case: results maps shape → rounds() output."""
    lines = [f"### {case.title}", "", case.note, "",
             "| copy | tool | seconds | MB/s | peer ÷ flowgate (time) | client peak RSS MB "
             "| server RSS growth MB | complete |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for shape in SHAPES:
        res = results[shape]
        fg = res["flowgate"]
        fg_med = spread([s.seconds for s in fg])[0] if isinstance(fg, list) and fg else None
        for tool in TOOLS:
            samples = res[tool]
            if isinstance(samples, Exception) or not samples:
                why = str(samples).splitlines()[0][:160] if isinstance(samples, Exception) else "no run"
                lines.append(f"| {label(args, shape)} | {tool} | — | — | — | — | — | **NO** ({why}) |")
                continue
            secs = [s.seconds for s in samples]
            med = spread(secs)[0]
            ratio = "1.00" if tool == "flowgate" else (f"{med / fg_med:.2f}" if fg_med else "—")
            lines.append(
                f"| {label(args, shape)} | {tool} | {cell(secs)} | {args.total_mb / med:.0f} | {ratio} | "
                f"{cell([s.rss_mb for s in samples], '{:.0f}')} | "
                f"{cell([s.server_mb for s in samples], '{:.0f}')} | yes ({len(samples)} run{'s' if len(samples) > 1 else ''}) |")
    lines.append("")
    lines.append("Requests the gateway(s) served in each tool's last run:")
    lines.append("")
    for shape in SHAPES:
        for tool in TOOLS:
            samples = results[shape][tool]
            if isinstance(samples, list) and samples:
                extra = samples[-1].extra
                split = (f" (download {extra['download_s']:.2f} s + upload {extra['upload_s']:.2f} s)"
                         if "download_s" in extra else "")
                lines.append(f"- {label(args, shape)}, {tool}: {ops_text(extra['ops'])}{split}")
    return lines


def medians(res):
    return {t: spread([s.seconds for s in v]) if isinstance(v, list) and v else None for t, v in res.items()}


def targets(args, cases, results):
    """The target lines, met or **missed**, with the numbers."""
    lines = []
    ahead = True
    for case in cases:
        for shape in SHAPES:
            m = medians(results[case.key][shape])
            fg = m["flowgate"]
            for peer in ("rclone", "aws cli"):
                where = f"{case.key}, {label(args, shape)}, vs {peer}"
                if fg is None:
                    ahead = False
                    lines.append(f"- {where}: flowgate has no valid time")
                elif m[peer] is None:
                    ahead = False
                    lines.append(f"- {where}: {peer} has no valid time, so no comparison")
                else:
                    ok = fg[0] < m[peer][0]
                    ahead &= ok
                    overlap = " (ranges overlap)" if fg[2] >= m[peer][1] and m[peer][2] >= fg[1] else ""
                    lines.append(f"- {where}: flowgate {fg[0]:.2f} s, {peer} {m[peer][0]:.2f} s "
                                 f"(×{m[peer][0] / fg[0]:.2f}){overlap}: {'ahead' if ok else '**behind**'}")
    one = results["download-reupload"]["one"]["flowgate"]
    if isinstance(one, list) and one:
        rss = [s.rss_mb for s in one]
        rss_line = (f"flowgate's peak RSS streaming the {args.total_mb} MB object: median {spread(rss)[0]:.0f} MB, "
                    f"max {max(rss):.0f} MB (target < {RSS_TARGET_MB} MB): "
                    f"{'met' if max(rss) < RSS_TARGET_MB else '**missed**'}")
    else:
        rss_line = "flowgate's peak RSS streaming the big object: no valid run: **missed**"
    head = ("copy ahead of rclone and aws cli in both the server-side and the download-reupload case "
            f"(median time, both shapes): {'met' if ahead else '**missed**'}")
    return [f"Targets: {head}; {rss_line}.", "", *lines]


def versions(args, gw_binary):
    go = subprocess.run(["go", "version", "-m", gw_binary], capture_output=True, text=True) \
        if shutil.which("go") else None
    gw = "versitygw ?"
    if go and go.returncode == 0:
        lines = go.stdout.splitlines()
        mod = next((l.split()[2] for l in lines if l.strip().startswith("mod")), "?")
        gw = f"versitygw {mod} (built with {lines[0].split(':', 1)[1].strip()})"
    return [f"- flowgate: {version([args.flowgate, '--version'])}",
            f"- rclone: {version(['rclone', 'version'])}",
            f"- aws cli: {version([args.aws, '--version'])}",
            f"- S3 server: {gw}, posix backend, `--keep-alive`, one process per endpoint",
            f"- Python {sys.version.split()[0]} (the bench and the AWS CLI)"]


def commands_text(bench: Bench):
    """What ran, paths shortened to bench/data/data-egress and endpoints to $A/$B."""
    lines = []
    for (case, tool), cmds in bench.commands.items():
        for c in cmds:
            c = c.replace(str(DATA), "$DATA").replace(bench.a.endpoint, "$A").replace(bench.b.endpoint, "$B")
            c = c.replace(str(bench.args.flowgate), "flowgate").replace(str(bench.args.aws), "aws")
            c = re.sub(r"-(\d+)\.log", "-N.log", c)
            lines.append(f"- {case}, {tool}: `{c}`")
    return lines


def report(bench: Bench, cases, results, server_check, gw_binary):
    args = bench.args
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"## data-egress — {stamp}", "",
        f"Machine: {machine()}", "",
        *versions(args, gw_binary), "",
        f"{args.total_mb} MB (1 MB = 2^20 bytes) as {args.objects} objects of {args.total_mb * MB // args.objects:,} "
        f"bytes, and as one object, written through PutObject (every source's ETag is its MD5). S3 server: "
        "versitygw (posix backend, objects as plain files on the same ext4 disk, metadata in xattrs) on loopback, "
        "chosen over s3s-fs 0.14.1 (a HEAD on a prefix answered 500 → ~92 s of rclone retry back-off; ranged "
        "reads and UploadPartCopy read to the end of the file; a fixed s3s-fs needs a newer Rust than ours, "
        "MinIO is AGPL, gofakes3 is a test double). Checked before the run: "
        f"{server_check}. Its HTTP layer takes `Expect: 100-continue` only in lower case; rclone's SDK "
        "sends `100-Continue` and would wait 1 s per upload over 2 MiB for an answer real S3 gives at once, "
        "so rclone runs with `--expect-continue-timeout 0` where it uploads.", "",
        f"Each cell: median (min–max) of {args.repeat} runs, tools in rotating order; before every run the "
        "gateways restarted, the destination emptied, the sources read once (warm cache for every tool) and "
        "`sync`. Seconds are process wall clock (start-up included; the AWS CLI's download and upload summed). "
        "Client peak RSS: GNU time (largest process). Server growth: the gateway processes' summed RSS, peak "
        "minus start, sampled every 0.1 s. Complete: every destination object's SHA-256 equals its source's, "
        "no internal error or 5xx at the gateway, the work was of the case's kind (below); else —.", "",
        "The tools' own verification: flowgate `verify = \"size\"` compares sizes, and after a server-side "
        "copy also the source's listed ETag with the destination's (plain MD5s here); streamed, it checks "
        "the bytes read against the listed size and the destination's size. rclone compares MD5s (ETag, "
        "or its md5chksum metadata on multipart uploads) by default. The AWS CLI relies on botocore's "
        "defaults.", "",
    ]
    for case in cases:
        body += case_table(args, case, results[case.key]) + [""]
    body += targets(args, cases, results) + [""]
    body += ["Exact commands ($DATA = bench/data/data-egress; $A, $B = the two gateways' endpoints; "
             "flowgate's stores and step are from its pipeline file, with `many` or `one` as the prefix; "
             "rclone's remotes `a` ($A) and `b` ($B) are `type = s3`, `provider = Other`, "
             f"`region = {REGION}` with the gateways' keys):", "",
             *commands_text(bench), "",
             "AWS CLI configs: server-side `multipart_threshold = 5GB`, `max_concurrent_requests = 8` "
             "(one CopyObject per object, as flowgate and rclone); download-reupload "
             "`multipart_threshold = 16MB`, `multipart_chunksize = 16MB`, `max_concurrent_requests = 8`. "
             f"Every tool's log (rclone's `-vv` log included) and the gateways' logs: {LOGS.relative_to(ROOT)}/.",
             ""]
    return "\n".join(body)


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flowgate", required=True)
    ap.add_argument("--aws", required=True, help="the AWS CLI")
    ap.add_argument("--versitygw", required=True, help="the versitygw binary")
    ap.add_argument("--total-mb", type=int, default=2048)
    ap.add_argument("--objects", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if args.total_mb < 1 or args.objects < 1 or args.total_mb * MB // args.objects < 1 or args.repeat < 1:
        ap.error("--total-mb, --objects and --repeat must be positive, with at least a byte per object")

    # SIGTERM ends the bench through `finally` below, so no gateway is left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    shutil.rmtree(DATA, ignore_errors=True)
    LOGS.mkdir(parents=True)
    a = Gateway(args.versitygw, "a", DATA / "s3-a")
    b = Gateway(args.versitygw, "b", DATA / "s3-b")
    env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION,
           "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
           "AWS_PROFILE": None, "AWS_CONFIG_FILE": None, "AWS_SHARED_CREDENTIALS_FILE": None,
           "AWS_ENDPOINT_URL": None,
           # A CA bundle in the environment makes rclone 1.60 fail before it starts
           # (LoadCustomCABundleError); the endpoints here are plain HTTP anyway.
           "AWS_CA_BUNDLE": None}
    try:
        a.start()
        b.start()
        for gw, buckets in ((a, (SRC, DST)), (b, (DST,))):
            c = s3_client(gw.endpoint)
            for bucket in buckets:
                c.create_bucket(Bucket=bucket)
        server_check = check_server(a)
        print(f"server check: {server_check}", flush=True)
        print(f"writing {args.total_mb} MB as {args.objects} objects and as one object (PutObject) …", flush=True)
        want = seed(args, env, a)
        bench = Bench(args, env, want, a, b)
        cases = [Case("server-side", "Server-side copy (both buckets on one endpoint)",
                      "Every tool has the gateway copy each object with one CopyObject; the bytes never "
                      "reach the client.", a, a),
                 Case("download-reupload", "Download and re-upload (two endpoints: no server-side copy)",
                      "Every tool moves the bytes: flowgate and rclone stream them (GET, then PUT or a "
                      "multipart upload of 16 MiB parts, 4 in flight per object); the AWS CLI downloads to "
                      "a local directory on the same disk, then uploads.", a, b)]
        results = {}
        for case in cases:
            results[case.key] = {}
            for shape in SHAPES:
                print(f"  {case.key}, {label(args, shape)}:", flush=True)
                results[case.key][shape] = run_case(bench, case, shape)
    finally:
        a.stop()
        b.stop()
    body = report(bench, cases, results, server_check, args.versitygw)
    print("\n" + body)
    print(f"appended to {append_results(body)}")


if __name__ == "__main__":
    main()
