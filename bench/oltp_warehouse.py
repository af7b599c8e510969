"""Benchmark for the oltp-warehouse reference pipeline (run by scripts/bench.sh).

Measures, in one run and on the same data:
  * extract of a 1M-row sales_order table from PostgreSQL: flowgate (Parquet, JSON
    lines), dlt (connectorx and pyarrow backends), Sling, and `psql \\copy` (floor);
  * a 1M-row upsert into PostgreSQL (half the keys already there): flowgate, dlt
    merge, Sling incremental, and COPY into a staging table + INSERT … ON CONFLICT
    (floor);
  * JSON lines → Parquet of the same rows: flowgate, DuckDB, polars;
  * freshness: the generator makes 100 changes/s for 2 minutes while flowgate runs
    the whole pipeline with `--continuous`; freshness is sampled from the warehouse.

Every tool's output is counted (rows and distinct keys, read back from what it
wrote) and a tool whose output is incomplete is flagged, whatever it reported.
"""

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from common import machine, timed

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DATA = BENCH / "data" / "oltp-warehouse"
PY = sys.executable
KEY = "sales_order_id"
SCHEMA_SQL = ROOT / "examples" / "oltp-warehouse" / "generator" / "src" / "schema.sql"


# --- running things -----------------------------------------------------------

class Result:
    def __init__(self, task, tool, seconds, rss_mb, rows, distinct, expected, note=""):
        self.task, self.tool, self.seconds, self.rss_mb = task, tool, seconds, rss_mb
        self.rows, self.distinct, self.expected, self.note = rows, distinct, expected, note

    @property
    def complete(self):
        return self.rows == self.expected and self.distinct == self.expected


def count_parquet(paths):
    ids = []
    for p in paths:
        t = pq.read_table(p, columns=[KEY])
        ids.append(t.column(KEY).cast(pa.int64()))
    if not ids:
        return 0, 0
    col = pa.chunked_array([c for a in ids for c in a.chunks])
    return len(col), pc.count_distinct(col).as_py()


def count_jsonl(paths):
    seen, rows = set(), 0
    for p in paths:
        with open(p, "rb") as f:
            for line in f:
                if not line.strip():
                    continue
                rows += 1
                seen.add(json.loads(line)[KEY])
    return rows, len(seen)


def count_csv(path):
    t = pacsv.read_csv(path, read_options=pacsv.ReadOptions(autogenerate_column_names=True),
                       convert_options=pacsv.ConvertOptions(include_columns=["f0"]))
    col = t.column("f0")
    return len(col), pc.count_distinct(col).as_py()


def files(root, suffix):
    return sorted(p for p in Path(root).rglob(f"*{suffix}") if p.is_file())


def count_table(url, table):
    with psycopg.connect(url) as c:
        return c.execute(f"SELECT count(*), count(DISTINCT {KEY}) FROM {table}").fetchone()


def run_flowgate(args, out, pipeline):
    """Write `pipeline` as out/p.toml and time one `flowgate run` of it (own state)."""
    (out / "p.toml").write_text(pipeline)
    return timed([args.flowgate, "--state", str(out / "state.db"), "run", str(out / "p.toml")],
                 log=out / "log.txt")


def fresh_dir(name):
    d = DATA / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


# --- the source ---------------------------------------------------------------

def seed(args, url, orders):
    with psycopg.connect(args.admin_url, autocommit=True) as c:
        db = url.rsplit("/", 1)[1]
        c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {db}")
    subprocess.run([args.generator, "--url", url, "seed", "--orders", str(orders)], check=True,
                   stdout=subprocess.DEVNULL)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("VACUUM ANALYZE")
        # Flush the seed's dirty pages now, not in the middle of a measurement.
        c.execute("CHECKPOINT")


# --- extract ------------------------------------------------------------------

def flowgate_extract(args, fmt):
    out = fresh_dir(f"extract-flowgate-{fmt}")
    secs, rss = run_flowgate(args, out, f"""name = "bench-extract"
[stores]
src = {{ url = "{args.source_url}" }}
out = {{ url = "file://{out}/files", access = "read-write" }}
[[steps]]
id = "extract"
extract = {{ from = "src", tables = ["sales_order"], cursor = "last_updated", to = "out:{{{{ table }}}}/part.{fmt}" }}
""")
    found = files(out / "files", f".{fmt}")
    rows, distinct = count_parquet(found) if fmt == "parquet" else count_jsonl(found)
    return secs, rss, rows, distinct, found


def dlt_extract(args, backend):
    out = fresh_dir(f"extract-dlt-{backend}")
    script = f"""
import dlt
from dlt.sources.sql_database import sql_table
src = sql_table(credentials={args.dlt_url!r}, table="sales_order", schema="public", backend={backend!r}, chunk_size=100000)
p = dlt.pipeline(pipeline_name="bench_{backend}", pipelines_dir={str(out / 'pipelines')!r},
                 destination=dlt.destinations.filesystem(bucket_url={('file://' + str(out / 'files'))!r}),
                 dataset_name="ds")
print(p.run(src, loader_file_format="parquet"))
"""
    secs, rss = timed([PY, "-c", script], env={"RUNTIME__DLTHUB_TELEMETRY": "false"}, log=out / "log.txt")
    found = [f for f in files(out / "files", ".parquet") if "sales_order" in str(f)]
    rows, distinct = count_parquet(found)
    return secs, rss, rows, distinct


def sling_env(args):
    return {"SLING_BINARY": args.sling_binary, "PG": args.source_url + "?sslmode=disable",
            "SLING_HOME_DIR": str(DATA / "sling-home"), "SLING_DISABLE_TELEMETRY": "true",
            "DUCKDB_PATH": args.duckdb_cli, "DUCKDB_VERSION": "1.4.4",
            "DUCKDB_USE_INSTALLED_EXTENSIONS": "true"}


def sling_extract(args, fmt):
    out = fresh_dir(f"extract-sling-{fmt}")
    target = out / f"sales_order.{fmt}"
    cmd = [args.sling_binary, "run", "--src-conn", "PG", "--src-stream", "public.sales_order",
           "--tgt-object", f"file://{target}"]
    if fmt == "jsonl":
        cmd += ["--tgt-options", '{"format": "jsonlines"}']
    secs, rss = timed(cmd, env=sling_env(args), log=out / "log.txt")
    found = [target] if target.is_file() else files(out, f".{fmt}")
    rows, distinct = count_parquet(found) if fmt == "parquet" else count_jsonl(found)
    return secs, rss, rows, distinct


def copy_floor(args):
    out = fresh_dir("extract-copy-floor")
    target = out / "sales_order.csv"
    secs, rss = timed(["psql", args.source_url, "-q", "-c", f"\\copy sales_order TO '{target}' CSV"],
                      log=out / "log.txt")
    rows, distinct = count_csv(target)
    return secs, rss, rows, distinct, target


# --- upsert -------------------------------------------------------------------

def upsert_inputs(parquet_full):
    """full.parquet (every row) and half.parquet (the first half of the keys with
    other values, loaded first so the timed load updates half and inserts half)."""
    d = fresh_dir("upsert-input")
    t = pq.read_table(parquet_full)
    full = d / "full" / "sales_order.parquet"
    full.parent.mkdir()
    pq.write_table(t, full)
    half_t = t.filter(pc.less_equal(t.column(KEY), len(t) // 2))
    half_t = half_t.set_column(half_t.schema.get_field_index("units_sold"), "units_sold",
                               pc.add(half_t.column("units_sold"), 1000))
    half = d / "half" / "sales_order.parquet"
    half.parent.mkdir()
    pq.write_table(half_t, half)
    for name, table in (("full", t), ("half", half_t)):
        pacsv.write_csv(table, d / f"{name}.csv", pacsv.WriteOptions(include_header=False))
    return d, len(t), pc.sum(t.column("units_sold")).as_py()


def check_upsert(url, table, expected_rows, expected_units):
    with psycopg.connect(url) as c:
        rows, distinct, units = c.execute(
            f"SELECT count(*), count(DISTINCT {KEY}), sum(units_sold) FROM {table}").fetchone()
    note = "" if units == expected_units else f"units_sold sum {units} ≠ {expected_units} (updates lost)"
    if note:
        distinct = -1  # values wrong: never complete
    return rows, distinct, note


def half_then_full(args, out, cmd, table, expected, units, env=None):
    """Load the half input (not timed), then time the full upsert and check it."""
    timed(cmd("half"), env=env, log=out / "half.txt")
    secs, rss = timed(cmd("full"), env=env, log=out / "log.txt")
    rows, distinct, note = check_upsert(args.wh_url, table, expected, units)
    return secs, rss, rows, distinct, note


def flowgate_upsert(args, inputs, expected, units):
    out = fresh_dir("upsert-flowgate")
    with psycopg.connect(args.wh_url, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS fg_sales_order; DROP TABLE IF EXISTS flowgate_loaded")

    def pipeline(part):
        p = out / f"{part}.toml"
        p.write_text(f"""name = "bench-upsert-{part}"
[stores]
input = {{ url = "file://{inputs / part}" }}
wh = {{ url = "{args.wh_url}", access = "write" }}
[[steps]]
id = "load"
load = {{ from = "input:", into = "wh", table = "fg_sales_order", key = ["{KEY}"], mode = "upsert" }}
""")
        return p

    return half_then_full(args, out, lambda part: [args.flowgate, "--state", str(out / "state.db"), "run",
                                                   str(pipeline(part))], "fg_sales_order", expected, units)


def dlt_merge(args, inputs, expected, units):
    out = fresh_dir("upsert-dlt")
    with psycopg.connect(args.wh_url, autocommit=True) as c:
        c.execute("DROP SCHEMA IF EXISTS dlt_bench CASCADE; DROP SCHEMA IF EXISTS dlt_bench_staging CASCADE")
    script = """
import sys, dlt, pyarrow.parquet as pq
path, url, pdir = sys.argv[1:4]
@dlt.resource(name="sales_order", primary_key="sales_order_id", write_disposition="merge")
def rows():
    f = pq.ParquetFile(path)
    for b in f.iter_batches(batch_size=100000):
        yield b
p = dlt.pipeline(pipeline_name="bench_merge", pipelines_dir=pdir,
                 destination=dlt.destinations.postgres(credentials=url), dataset_name="dlt_bench")
print(p.run(rows()))
"""
    return half_then_full(
        args, out, lambda part: [PY, "-c", script, str(inputs / part / "sales_order.parquet"), args.dlt_wh_url,
                                 str(out / "p")],
        "dlt_bench.sales_order", expected, units, env={"RUNTIME__DLTHUB_TELEMETRY": "false"})


def sling_upsert(args, inputs, expected, units):
    out = fresh_dir("upsert-sling")
    with psycopg.connect(args.wh_url, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS public.sling_sales_order")
    env = {**sling_env(args), "PG": args.wh_url + "?sslmode=disable"}

    def cmd(part):
        return [args.sling_binary, "run", "--src-stream", f"file://{inputs / part / 'sales_order.parquet'}",
                "--tgt-conn", "PG", "--tgt-object", "public.sling_sales_order",
                "--mode", "incremental", "--primary-key", KEY]

    return half_then_full(args, out, cmd, "public.sling_sales_order", expected, units, env=env)


def upsert_floor(args, inputs, expected, units):
    out = fresh_dir("upsert-floor")
    with psycopg.connect(args.wh_url, autocommit=True) as c:
        c.execute("DROP TABLE IF EXISTS floor_sales_order")
        # The source's own definition (the generator's schema.sql).
        ddl = next(line for line in SCHEMA_SQL.read_text().splitlines()
                   if line.startswith("CREATE TABLE IF NOT EXISTS sales_order "))
        c.execute(ddl.replace("IF NOT EXISTS sales_order", "floor_sales_order"))
        cols = [r[0] for r in c.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'floor_sales_order' "
            "ORDER BY ordinal_position")]
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c != KEY)

    def script(part):
        s = out / f"{part}.sql"
        s.write_text(f"""\\set ON_ERROR_STOP on
BEGIN;
CREATE TEMP TABLE stage (LIKE floor_sales_order) ON COMMIT DROP;
\\copy stage FROM '{inputs / (part + '.csv')}' CSV
INSERT INTO floor_sales_order SELECT * FROM stage ON CONFLICT ({KEY}) DO UPDATE SET {sets};
COMMIT;
""")
        return ["psql", args.wh_url, "-q", "-f", str(s)]

    return half_then_full(args, out, script, "floor_sales_order", expected, units)


# --- JSON lines → Parquet -----------------------------------------------------

def flowgate_convert(args, jsonl_dir):
    out = fresh_dir("convert-flowgate")
    (out / "models").mkdir()
    (out / "models" / "sales_order_parquet.sql").write_text("SELECT * FROM sales_order\n")
    secs, rss = run_flowgate(args, out, f"""name = "bench-convert"
[stores]
landing = {{ url = "file://{jsonl_dir}" }}
out = {{ url = "file://{out}/files", access = "read-write" }}
[[steps]]
id = "convert"
transform = {{ models = "models", inputs = "landing:", to = "out:{{{{ model }}}}/part.parquet" }}
""")
    rows, distinct = count_parquet(files(out / "files", ".parquet"))
    return secs, rss, rows, distinct


def duckdb_convert(args, jsonl_dir):
    out = fresh_dir("convert-duckdb")
    target = out / "sales_order.parquet"
    script = f"""
import duckdb
duckdb.sql("COPY (SELECT * FROM read_json_auto('{jsonl_dir}/sales_order/*.jsonl')) TO '{target}' (FORMAT parquet)")
"""
    secs, rss = timed([PY, "-c", script], log=out / "log.txt")
    rows, distinct = count_parquet([target])
    return secs, rss, rows, distinct


def polars_convert(args, jsonl_dir):
    out = fresh_dir("convert-polars")
    target = out / "sales_order.parquet"
    script = f"""
import polars as pl
pl.scan_ndjson('{jsonl_dir}/sales_order/*.jsonl').sink_parquet('{target}')
"""
    secs, rss = timed([PY, "-c", script], log=out / "log.txt")
    rows, distinct = count_parquet([target])
    return secs, rss, rows, distinct


# --- freshness ----------------------------------------------------------------

def freshness_run(args):
    out = fresh_dir("freshness")
    src = args.admin_url.rsplit("/", 1)[0] + "/fresh_src"
    wh = args.admin_url.rsplit("/", 1)[0] + "/fresh_wh"
    seed(args, src, args.fresh_orders)
    with psycopg.connect(args.admin_url, autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS fresh_wh WITH (FORCE)")
        c.execute("CREATE DATABASE fresh_wh")
    example = ROOT / "examples" / "oltp-warehouse"
    env = {"TOTESYS_URL": src, "WAREHOUSE_URL": wh, "LANDING_URL": f"file://{out}/landing",
           "PROCESSED_URL": f"file://{out}/processed"}
    state = ["--state", str(out / "state.db")]
    # The snapshot first (not measured), then continuous runs under churn.
    timed([args.flowgate, *state, "run", str(example / "pipeline.toml")], env=env, log=out / "snapshot.txt")
    log = open(out / "continuous.txt", "wb")
    fg = subprocess.Popen([args.flowgate, *state, "run", str(example / "pipeline.toml"), "--continuous",
                           "--every", "1s"], env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    churn = subprocess.Popen([args.generator, "--url", src, "churn", "--rate", "100", "--duration",
                              f"{args.fresh_seconds}s"], stdout=subprocess.DEVNULL)
    samples = []
    time.sleep(5)  # let the first changes arrive
    with psycopg.connect(wh, autocommit=True) as c:
        while churn.poll() is None:
            # The warehouse's own clock against the newest source change it shows
            # (same server: the generator writes clock_timestamp() in its time zone).
            lag = c.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp()::timestamp - max(source_updated_at)) "
                            "FROM fact_sales_order").fetchone()[0]
            samples.append(float(lag))
            time.sleep(0.25)
    time.sleep(3)
    fg.send_signal(2)
    fg.wait(timeout=60)
    log.close()
    if churn.returncode != 0:
        raise RuntimeError("the generator failed")
    samples.sort()
    p50 = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    # Complete: every source order's newest version is in the warehouse.
    with psycopg.connect(src) as c:
        source = {r[0]: r[1] for r in c.execute("SELECT sales_order_id, last_updated FROM sales_order")}
    with psycopg.connect(wh) as c:
        wh_rows = {r[0]: r[1] for r in c.execute(
            "SELECT DISTINCT ON (sales_order_id) sales_order_id, source_updated_at FROM fact_sales_order "
            "ORDER BY sales_order_id, source_updated_at DESC")}
    missing = sum(1 for k, v in source.items() if wh_rows.get(k) != v)
    return p50, p99, max(samples), len(samples), len(source), missing


# --- report -------------------------------------------------------------------

def table(results, floors):
    lines = ["| task | tool | seconds | × floor | × flowgate | rows written | peak RSS MB | complete |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in results:
        floor = floors.get(r.task)
        fg = next((x for x in results if x.task == r.task and x.tool.startswith("flowgate")), None)
        ratio = f"{r.seconds / floor:.2f}" if floor else "-"
        vs_fg = f"{r.seconds / fg.seconds:.2f}" if fg else "-"
        ok = "yes" if r.complete else f"**NO** ({r.distinct} distinct of {r.expected}{'; ' + r.note if r.note else ''})"
        lines.append(f"| {r.task} | {r.tool} | {r.seconds:.2f} | {ratio} | {vs_fg} | {r.rows:,} | {r.rss_mb:.0f} | {ok} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flowgate", required=True)
    ap.add_argument("--generator", required=True)
    ap.add_argument("--admin-url", required=True, help="postgres://…/postgres")
    ap.add_argument("--sling-binary", required=True)
    ap.add_argument("--duckdb-cli", required=True)
    ap.add_argument("--orders", type=int, default=1_000_000)
    ap.add_argument("--fresh-orders", type=int, default=10_000)
    ap.add_argument("--fresh-seconds", type=int, default=120)
    ap.add_argument("--only", default="extract,upsert,convert,freshness")
    args = ap.parse_args()
    only = set(args.only.split(","))
    base = args.admin_url.rsplit("/", 1)[0]
    args.source_url = base + "/bench_src"
    args.wh_url = base + "/bench_wh"
    # dlt's PostgreSQL destination wants a password even under trust auth.
    args.dlt_url = args.source_url.replace("postgres://postgres@", "postgresql://postgres:x@")
    args.dlt_wh_url = args.wh_url.replace("postgres://postgres@", "postgresql://postgres:x@")
    DATA.mkdir(parents=True, exist_ok=True)

    results, floors, extra = [], {}, []

    def record(task, tool, fn, *a):
        print(f"  {task}: {tool} …", flush=True)
        try:
            r = fn(*a)
        except Exception as e:  # a peer that fails is reported, not fatal
            print(f"    failed: {e}", flush=True)
            results.append(Result(task, tool, float("nan"), 0, 0, 0, args.orders, f"failed: {str(e)[:200]}"))
            return None
        secs, rss, rows, distinct = r[:4]
        note = r[4] if len(r) > 4 and isinstance(r[4], str) else ""
        res = Result(task, tool, secs, rss, rows, distinct, args.orders, note)
        results.append(res)
        print(f"    {secs:.2f} s, {rows:,} rows, {rss:.0f} MB{'' if res.complete else ' — INCOMPLETE'}", flush=True)
        return r

    print(f"seeding {args.orders:,} sales orders …", flush=True)
    seed(args, args.source_url, args.orders)

    parquet = jsonl = None
    if only & {"extract", "upsert", "convert"}:
        task = "extract 1M rows"
        r = record(task, "psql \\copy (floor)", copy_floor, args)
        floors[task] = r[0] if r else None
        r = record(task, "flowgate → Parquet", flowgate_extract, args, "parquet")
        parquet = r[4][0] if r else None
        r = record(task, "flowgate → JSON lines", flowgate_extract, args, "jsonl")
        jsonl = r[4][0].parent.parent if r else None
        if "extract" in only:
            record(task, "dlt connectorx → Parquet", dlt_extract, args, "connectorx")
            record(task, "dlt pyarrow → Parquet", dlt_extract, args, "pyarrow")
            record(task, "Sling → Parquet", sling_extract, args, "parquet")
            record(task, "Sling → JSON lines", sling_extract, args, "jsonl")

    if "upsert" in only and parquet:
        inputs, expected, units = upsert_inputs(parquet)
        task = "upsert 1M rows (½ new)"
        with psycopg.connect(args.admin_url, autocommit=True) as c:
            c.execute("DROP DATABASE IF EXISTS bench_wh WITH (FORCE)")
            c.execute("CREATE DATABASE bench_wh")
        record(task, "flowgate load upsert", flowgate_upsert, args, inputs, expected, units)
        r = record(task, "COPY + ON CONFLICT (floor)", upsert_floor, args, inputs, expected, units)
        floors[task] = r[0] if r else None
        record(task, "dlt merge", dlt_merge, args, inputs, expected, units)
        record(task, "Sling incremental", sling_upsert, args, inputs, expected, units)

    if "convert" in only and jsonl:
        task = "JSON lines → Parquet"
        record(task, "flowgate transform", flowgate_convert, args, jsonl)
        record(task, "DuckDB", duckdb_convert, args, jsonl)
        record(task, "polars", polars_convert, args, jsonl)

    if "freshness" in only:
        print(f"freshness: 100 changes/s for {args.fresh_seconds} s while flowgate runs --continuous …", flush=True)
        p50, p99, worst, n, orders, missing = freshness_run(args)
        extra.append(
            f"Freshness under 100 changes/s for {args.fresh_seconds} s (flowgate `run --continuous --every 1s`, "
            f"whole pipeline: extract → transform → load, PostgreSQL source and warehouse, local landing): "
            f"p50 {p50:.2f} s, p99 {p99:.2f} s, worst {worst:.2f} s over {n} samples "
            f"(target p99 < 5 s: {'met' if p99 < 5 else '**missed**'}). Afterwards {orders - missing:,} of "
            f"{orders:,} orders show their newest version in the warehouse"
            f"{'' if missing == 0 else ' — **INCOMPLETE**'}.")
        print("  " + extra[-1], flush=True)

    text = table(results, floors)
    targets = []
    ext = {r.tool: r for r in results if r.task == "extract 1M rows"}
    if "flowgate → Parquet" in ext and floors.get("extract 1M rows"):
        fgp = ext["flowgate → Parquet"]
        targets.append(f"extract within 1.5× the COPY floor: {fgp.seconds / floors['extract 1M rows']:.2f}× "
                       f"({'met' if fgp.seconds <= 1.5 * floors['extract 1M rows'] else '**missed**'})")
        if "dlt connectorx → Parquet" in ext and ext["dlt connectorx → Parquet"].seconds == ext["dlt connectorx → Parquet"].seconds:
            speed = ext["dlt connectorx → Parquet"].seconds / fgp.seconds
            targets.append(f"at least 3× faster than dlt-connectorx: {speed:.2f}× ({'met' if speed >= 3 else '**missed**'})")
    up = [r for r in results if r.tool == "flowgate load upsert"]
    if up and floors.get("upsert 1M rows (½ new)"):
        ratio = up[0].seconds / floors["upsert 1M rows (½ new)"]
        targets.append(f"upsert within 1.3× its floor: {ratio:.2f}× ({'met' if ratio <= 1.3 else '**missed**'})")
    incomplete = [f"{r.tool} ({r.task})" for r in results if not r.complete]

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = [f"## oltp-warehouse — {stamp}", "", f"Machine: {machine()}", "",
              f"{args.orders:,} sales orders in PostgreSQL 15 on loopback. Times are wall-clock seconds of one "
              "run each; rows are counted from what each tool actually wrote.", ""]
    if results:
        report += [text, ""]
    if targets:
        report += ["Targets: " + "; ".join(targets) + ".", ""]
    if incomplete:
        report += ["Incomplete output: " + ", ".join(incomplete) + ".", ""]
    report += [e + "\n" for e in extra]
    body = "\n".join(report)
    print("\n" + body)
    results_md = BENCH / "RESULTS.md"
    if not results_md.exists():
        results_md.write_text("# Benchmark results\n\nAppended by `scripts/bench.sh`; newest last.\n\n")
    with open(results_md, "a") as f:
        f.write(body + "\n")
    print(f"appended to {results_md}")


if __name__ == "__main__":
    main()
