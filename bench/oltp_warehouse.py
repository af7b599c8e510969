"""Benchmark for the oltp-warehouse reference pipeline (run by scripts/bench.sh).

On the same data, in one run, each tool repeated (`--repeat`, default 5) in
rotating order, each cell the median with min–max:

  * extract of a 1M-row sales_order table from PostgreSQL. Floors: binary
    `COPY … TO STDOUT` over 1 stream and over N streams (N = flowgate's own
    `parallel`: min(cores, 4)) in one exported snapshot, bytes thrown away
    (bench/copy_floor.py); a single-stream `psql \\copy` to CSV as a labelled
    reference. Tools: flowgate (Parquet, JSON lines), dlt + connectorx partitioned
    N ways (`partition_on`/`partition_num`), dlt + pyarrow, Sling (free edition:
    one stream; its chunked parallel reads are a paid feature);
  * a 1M-row upsert into PostgreSQL (half the keys already there): flowgate, dlt
    with `loader_file_format="csv"` and the `upsert` merge strategy, Sling
    incremental, and the floor: COPY into a temp stage + INSERT … ON CONFLICT in
    one transaction. CHECKPOINT + VACUUM ANALYZE before each timed load;
  * JSON lines → Parquet of the same rows with one explicit schema for all (the
    source's types), zstd level 1 and 262,144-row groups: flowgate (a model with
    casts), the DuckDB CLI, polars streaming;
  * freshness: the generator makes 100 changes/s for 2 minutes while flowgate runs
    the whole pipeline with `--continuous` (`--fresh-runs`, default 5): the
    staleness of the warehouse's newest change, sampled at 4 Hz, and each change's
    own latency (source commit stamp → first seen in the warehouse).

Every output is read back with one engine (DuckDB), cast to the source's types,
and its rows, distinct keys and an order-independent content hash compared with
the source's (a psql CSV export); Parquet column types are listed. An incomplete
or wrong output gets no time. Times are process wall clock (start-up included);
memory is the client's peak RSS (GNU time) and PostgreSQL's RSS growth (all its
processes summed) during the run.
"""

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import psycopg
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from common import Sample, append_results, cell, machine, pids_named, rounds, spread, sync, timed, version

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
DATA = BENCH / "data" / "oltp-warehouse"
PY = sys.executable
KEY = "sales_order_id"
SCHEMA_SQL = ROOT / "examples" / "oltp-warehouse" / "generator" / "src" / "schema.sql"
POSTGRES = pids_named("postgres")

# The source's columns and their types in DuckDB terms (the canonical form every
# output is cast to before it is compared).
COLUMNS = {
    "sales_order_id": "INTEGER", "design_id": "INTEGER", "staff_id": "INTEGER",
    "counterparty_id": "INTEGER", "units_sold": "INTEGER", "unit_price": "DECIMAL(10,2)",
    "currency_id": "INTEGER", "agreed_delivery_date": "DATE", "agreed_payment_date": "DATE",
    "agreed_delivery_location_id": "INTEGER", "created_at": "TIMESTAMP", "last_updated": "TIMESTAMP",
}
# The same as Parquet (Arrow) types, as a tool that keeps the source's types writes them.
ARROW = {"INTEGER": "int32", "DECIMAL(10,2)": "decimal128(10, 2)", "DATE": "date32[day]",
         "TIMESTAMP": "timestamp[us]"}
ROW_GROUP = 256 * 1024


# --- checking outputs -----------------------------------------------------------

def canonical(relation):
    """SQL over `relation` giving rows, distinct keys and a content hash of the
    rows cast to the source's types (timestamps through TIMESTAMPTZ in UTC, so an
    offset or a zone written by a tool is understood)."""
    def cast(col, typ):
        if typ == "TIMESTAMP":
            return f"CAST(CAST({col} AS TIMESTAMPTZ) AS TIMESTAMP)"
        if typ == "DATE":
            return f"CAST(CAST({col} AS TIMESTAMPTZ) AS DATE)"
        return f"CAST({col} AS {typ})"
    cols = ", ".join(cast(c, t) for c, t in COLUMNS.items())
    return f"SELECT count(*), count(DISTINCT {KEY}), bit_xor(hash({cols})) FROM {relation}"


def fingerprint(kind, paths):
    """(rows, distinct keys, content hash) of a tool's output files."""
    if not paths:
        return 0, 0, None
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    listed = "[" + ", ".join(f"'{p}'" for p in paths) + "]"
    if kind == "parquet":
        rel = f"read_parquet({listed}, union_by_name = true)"
    elif kind == "jsonl":
        cols = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in COLUMNS) + "}"
        rel = f"read_ndjson({listed}, columns = {cols})"
    else:  # csv, header-less, the source's column order
        cols = "{" + ", ".join(f"'{c}': '{t}'" for c, t in COLUMNS.items()) + "}"
        rel = f"read_csv({listed}, header = false, columns = {cols})"
    return con.execute(canonical(rel)).fetchone()


def parquet_types(paths):
    """Each source column's Parquet (Arrow) type in the first file: the types a
    user of that output gets."""
    schema = pq.read_schema(paths[0])
    return {c: str(schema.field(c).type) for c in COLUMNS if c in schema.names}


def type_note(paths):
    """How an output's column types differ from the source's (empty: the same)."""
    got = parquet_types(paths)
    diff = [f"{c} {got.get(c, 'missing')}" for c, t in COLUMNS.items() if got.get(c) != ARROW[t]]
    return ("types differ from the source: " + ", ".join(diff)) if diff else ""


def files(root, suffix):
    return sorted(p for p in Path(root).rglob(f"*{suffix}") if p.is_file())


def verified(sample, want, kind, paths, note=""):
    """Attach the output check to a sample: rows, and whether rows, keys and
    content equal the source's."""
    rows, distinct, digest = fingerprint(kind, paths)
    sample.extra.update(rows=rows, ok=(rows, distinct, digest) == want, note=note)
    if (rows, distinct, digest) != want:
        what = "content differs" if (rows, distinct) == want[:2] else f"{distinct:,} distinct of {want[1]:,}"
        sample.extra["note"] = (note + "; " if note else "") + what
    return sample


def fresh_dir(name):
    d = DATA / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def run_flowgate(args, out, pipeline):
    """Write `pipeline` as out/p.toml and time one `flowgate run` of it (own state)."""
    (out / "p.toml").write_text(pipeline)
    s = timed([args.flowgate, "--state", str(out / "state.db"), "run", str(out / "p.toml")],
              log=out / "log.txt", server=POSTGRES)
    own = re.search(r"succeeded in ([0-9.]+)s", (out / "log.txt").read_text(errors="replace"))
    if own:
        s.extra["own"] = float(own.group(1))
    return s


# --- the source -------------------------------------------------------------------

def seed(args, url, orders):
    with psycopg.connect(args.admin_url, autocommit=True) as c:
        db = url.rsplit("/", 1)[1]
        c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {db}")
    subprocess.run([args.generator, "--url", url, "seed", "--orders", str(orders)], check=True,
                   stdout=subprocess.DEVNULL)
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("VACUUM ANALYZE")
        c.execute("CHECKPOINT")


def quiesce(url):
    """Before a timed sample: dirty pages written, statistics fresh, no autovacuum
    left over from the previous tool."""
    sync()
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("VACUUM ANALYZE")
        c.execute("CHECKPOINT")
        for _ in range(100):
            busy = c.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
                             ).fetchone()[0]
            if not busy:
                break
            time.sleep(0.1)


# --- extract ----------------------------------------------------------------------

def csv_reference(args, want=None):
    out = fresh_dir("extract-psql-csv")
    target = out / "sales_order.csv"
    s = timed(["psql", args.source_url, "-X", "-q", "-c", f"\\copy sales_order TO '{target}' CSV"],
              log=out / "log.txt", server=POSTGRES)
    if want is None:
        return s, fingerprint("csv", [target])
    return verified(s, want, "csv", [target])


def binary_floor(args, streams):
    s = timed([PY, str(BENCH / "copy_floor.py"), args.source_url, "sales_order", str(streams)],
              log=DATA / f"floor-{streams}.txt", server=POSTGRES)
    said = (DATA / f"floor-{streams}.txt").read_text().strip()
    s.extra.update(ok=True, rows=None, note=said.split(";")[0])
    own = re.search(r"own time ([0-9.]+) s", said)
    if own:
        s.extra["own"] = float(own.group(1))
    return s


def flowgate_extract(args, want, fmt):
    out = fresh_dir(f"extract-flowgate-{fmt}")
    s = run_flowgate(args, out, f"""name = "bench-extract"
[stores]
src = {{ url = "{args.source_url}" }}
out = {{ url = "file://{out}/files", access = "read-write" }}
[[steps]]
id = "extract"
extract = {{ from = "src", tables = ["sales_order"], cursor = "last_updated", parallel = {args.streams}, to = "out:{{{{ table }}}}/part.{fmt}" }}
""")
    found = files(out / "files", f".{fmt}")
    return verified(s, want, fmt, found, type_note(found) if fmt == "parquet" and found else "")


def dlt_extract(args, want, backend):
    out = fresh_dir(f"extract-dlt-{backend}")
    kwargs = (f", backend_kwargs={{'partition_on': '{KEY}', 'partition_num': {args.streams}}}"
              if backend == "connectorx" else "")
    script = f"""
import dlt
from dlt.sources.sql_database import sql_table
src = sql_table(credentials={args.dlt_url!r}, table="sales_order", schema="public", backend={backend!r},
                chunk_size=100000{kwargs})
p = dlt.pipeline(pipeline_name="bench_{backend}", pipelines_dir={str(out / 'pipelines')!r},
                 destination=dlt.destinations.filesystem(bucket_url={('file://' + str(out / 'files'))!r}),
                 dataset_name="ds")
print(p.run(src, loader_file_format="parquet"))
"""
    env = {"RUNTIME__DLTHUB_TELEMETRY": "false", "RUNTIME__LOG_LEVEL": "WARNING",
           "NORMALIZE__DATA_WRITER__ROW_GROUP_SIZE": str(ROW_GROUP)}
    s = timed([PY, "-c", script], env=env, log=out / "log.txt", server=POSTGRES)
    found = [f for f in files(out / "files", ".parquet") if "sales_order" in str(f)]
    return verified(s, want, "parquet", found, type_note(found) if found else "")


def sling_env(args, url):
    return {"SLING_BINARY": args.sling_binary, "PG": url + "?sslmode=disable",
            "SLING_HOME_DIR": str(DATA / "sling-home"), "SLING_DISABLE_TELEMETRY": "true",
            "DUCKDB_PATH": args.duckdb_cli, "DUCKDB_VERSION": "1.4.4",
            "DUCKDB_USE_INSTALLED_EXTENSIONS": "true"}


def sling_extract(args, want, fmt):
    out = fresh_dir(f"extract-sling-{fmt}")
    target = out / f"sales_order.{fmt}"
    cmd = [args.sling_binary, "run", "--src-conn", "PG", "--src-stream", "public.sales_order",
           "--tgt-object", f"file://{target}"]
    if fmt == "jsonl":
        cmd += ["--tgt-options", '{"format": "jsonlines"}']
    s = timed(cmd, env=sling_env(args, args.source_url), log=out / "log.txt", server=POSTGRES)
    found = [target] if target.is_file() else files(out, f".{fmt}")
    return verified(s, want, fmt, found, type_note(found) if fmt == "parquet" and found else "")


# --- upsert -----------------------------------------------------------------------

def upsert_inputs(parquet_full):
    """full (every row) and half (the first half of the keys with other values,
    loaded first so the timed load updates half and inserts half), as Parquet and
    as CSV (for the floor)."""
    d = fresh_dir("upsert-input")
    t = pq.read_table(parquet_full)
    half_t = t.filter(pc.less_equal(t.column(KEY), len(t) // 2))
    half_t = half_t.set_column(half_t.schema.get_field_index("units_sold"), "units_sold",
                               pc.add(half_t.column("units_sold"), 1000))
    for name, table in (("full", t), ("half", half_t)):
        (d / name).mkdir()
        pq.write_table(table, d / name / "sales_order.parquet")
        pacsv.write_csv(table, d / f"{name}.csv", pacsv.WriteOptions(include_header=False))
    return d, len(t), pc.sum(t.column("units_sold")).as_py()


class Upsert:
    """One upsert tool: `reset()` empties its table, `cmd(part)` loads one input."""

    def __init__(self, args, inputs, expected, units):
        self.args, self.inputs, self.expected, self.units = args, inputs, expected, units

    def sample(self, name, table, cmd, reset, env=None):
        out = DATA / f"upsert-{name}"
        out.mkdir(parents=True, exist_ok=True)
        reset()
        timed(cmd("half"), env=env, log=out / "half.txt")
        quiesce(self.args.wh_url)
        s = timed(cmd("full"), env=env, log=out / "log.txt", server=POSTGRES)
        with psycopg.connect(self.args.wh_url) as c:
            rows, distinct, units = c.execute(
                f"SELECT count(*), count(DISTINCT {KEY}), sum(units_sold) FROM {table}").fetchone()
            ddl = c.execute(
                "SELECT string_agg(column_name || ' ' || data_type, ', ' ORDER BY ordinal_position) "
                "FROM information_schema.columns WHERE table_schema || '.' || table_name = %s", (table,)
            ).fetchone()[0]
        ok = rows == distinct == self.expected and units == self.units
        note = "" if ok else f"{distinct:,} distinct of {self.expected:,}, units_sold sum {units} ≠ {self.units}"
        s.extra.update(rows=rows, ok=ok, note=note, ddl=ddl)
        return s

    def drop(self, sql):
        def reset():
            with psycopg.connect(self.args.wh_url, autocommit=True) as c:
                c.execute(sql)
        return reset

    def flowgate(self):
        out = DATA / "upsert-flowgate"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)

        def cmd(part):
            p = out / f"{part}.toml"
            p.write_text(f"""name = "bench-upsert-{part}"
[stores]
input = {{ url = "file://{self.inputs / part}" }}
wh = {{ url = "{self.args.wh_url}", access = "write" }}
[[steps]]
id = "load"
load = {{ from = "input:", into = "wh", table = "fg_sales_order", key = ["{KEY}"], mode = "upsert" }}
""")
            return [self.args.flowgate, "--state", str(out / "state.db"), "run", str(p)]

        def reset():
            shutil.rmtree(out / "state.db", ignore_errors=True)
            for f in out.glob("state.db*"):
                f.unlink()
            self.drop("DROP TABLE IF EXISTS public.fg_sales_order; DROP TABLE IF EXISTS flowgate_loaded; "
                      "DROP TABLE IF EXISTS flowgate_fence")()

        return self.sample("flowgate", "public.fg_sales_order", cmd, reset)

    def dlt(self):
        out = DATA / "upsert-dlt"
        script = """
import sys, dlt, pyarrow.parquet as pq
path, url, pdir = sys.argv[1:4]
@dlt.resource(name="sales_order", primary_key="sales_order_id",
              write_disposition={"disposition": "merge", "strategy": "upsert"})
def rows():
    f = pq.ParquetFile(path)
    for b in f.iter_batches(batch_size=100000):
        yield b
p = dlt.pipeline(pipeline_name="bench_merge", pipelines_dir=pdir,
                 destination=dlt.destinations.postgres(credentials=url), dataset_name="dlt_bench")
print(p.run(rows(), loader_file_format="csv"))
"""

        def reset():
            shutil.rmtree(out / "p", ignore_errors=True)
            self.drop("DROP SCHEMA IF EXISTS dlt_bench CASCADE; DROP SCHEMA IF EXISTS dlt_bench_staging CASCADE")()

        return self.sample(
            "dlt", "dlt_bench.sales_order",
            lambda part: [PY, "-c", script, str(self.inputs / part / "sales_order.parquet"), self.args.dlt_wh_url,
                          str(out / "p")],
            reset, env={"RUNTIME__DLTHUB_TELEMETRY": "false", "RUNTIME__LOG_LEVEL": "WARNING"})

    def sling(self):
        def cmd(part):
            return [self.args.sling_binary, "run", "--src-stream",
                    f"file://{self.inputs / part / 'sales_order.parquet'}", "--tgt-conn", "PG",
                    "--tgt-object", "public.sling_sales_order", "--mode", "incremental", "--primary-key", KEY]

        return self.sample("sling", "public.sling_sales_order", cmd,
                           self.drop("DROP TABLE IF EXISTS public.sling_sales_order"),
                           env=sling_env(self.args, self.args.wh_url))

    def floor(self):
        out = DATA / "upsert-floor"
        out.mkdir(parents=True, exist_ok=True)
        ddl = next(line for line in SCHEMA_SQL.read_text().splitlines()
                   if line.startswith("CREATE TABLE IF NOT EXISTS sales_order "))
        cols = [c.split()[0] for c in ddl[ddl.index("(") + 1:ddl.rindex(")")].split(", ")]
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c != KEY)

        def cmd(part):
            s = out / f"{part}.sql"
            s.write_text(f"""\\set ON_ERROR_STOP on
BEGIN;
CREATE TEMP TABLE stage (LIKE public.floor_sales_order) ON COMMIT DROP;
\\copy stage FROM '{self.inputs / (part + '.csv')}' CSV
INSERT INTO public.floor_sales_order SELECT * FROM stage ON CONFLICT ({KEY}) DO UPDATE SET {sets};
COMMIT;
""")
            return ["psql", self.args.wh_url, "-X", "-q", "-f", str(s)]

        reset = self.drop("DROP TABLE IF EXISTS public.floor_sales_order; "
                          + ddl.replace("IF NOT EXISTS sales_order", "public.floor_sales_order"))
        return self.sample("floor", "public.floor_sales_order", cmd, reset)


# --- JSON lines → Parquet -----------------------------------------------------------

def flowgate_convert(args, want, jsonl_dir):
    out = fresh_dir("convert-flowgate")
    (out / "models").mkdir()
    casts = {"INTEGER": "INT", "DECIMAL(10,2)": "DECIMAL(10,2)", "DATE": "DATE"}
    select = ", ".join(
        f"arrow_cast({c}, 'Timestamp(Microsecond, None)') AS {c}" if t == "TIMESTAMP" else f"CAST({c} AS {casts[t]}) AS {c}"
        for c, t in COLUMNS.items())
    (out / "models" / "sales_order_parquet.sql").write_text(f"SELECT {select} FROM sales_order\n")
    s = run_flowgate(args, out, f"""name = "bench-convert"
[stores]
landing = {{ url = "file://{jsonl_dir}" }}
out = {{ url = "file://{out}/files", access = "read-write" }}
[[steps]]
id = "convert"
transform = {{ models = "models", inputs = "landing:", to = "out:{{{{ model }}}}/part.parquet" }}
""")
    found = files(out / "files", ".parquet")
    return verified(s, want, "parquet", found, type_note(found) if found else "")


def duckdb_convert(args, want, jsonl_dir):
    out = fresh_dir("convert-duckdb")
    target = out / "sales_order.parquet"
    cols = "{" + ", ".join(f"'{c}': '{t}'" for c, t in COLUMNS.items()) + "}"
    sql = (f"SET preserve_insertion_order = false; "
           f"COPY (SELECT * FROM read_ndjson('{jsonl_dir}/sales_order/*.jsonl', columns = {cols})) "
           f"TO '{target}' (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1, ROW_GROUP_SIZE {ROW_GROUP})")
    s = timed([args.duckdb_cli, "-c", sql], log=out / "log.txt")
    return verified(s, want, "parquet", [target], type_note([target]) if target.exists() else "")


def polars_convert(args, want, jsonl_dir):
    out = fresh_dir("convert-polars")
    target = out / "sales_order.parquet"
    # JSON has no decimal, date or timestamp: read those as what the file holds,
    # then cast to the source's types.
    read = {"INTEGER": "pl.Int32", "DECIMAL(10,2)": "pl.Float64", "DATE": "pl.String", "TIMESTAMP": "pl.String"}
    cast = {"DECIMAL(10,2)": "pl.col('{c}').cast(pl.Decimal(10, 2))",
            "DATE": "pl.col('{c}').str.to_date()",
            "TIMESTAMP": "pl.col('{c}').str.to_datetime(time_unit='us')"}
    schema = ", ".join(f"'{c}': {read[t]}" for c, t in COLUMNS.items())
    casts = ", ".join(cast[t].format(c=c) for c, t in COLUMNS.items() if t in cast)
    script = f"""
import polars as pl
(pl.scan_ndjson('{jsonl_dir}/sales_order/*.jsonl', schema={{{schema}}})
   .with_columns({casts})
   .sink_parquet('{target}', compression='zstd', compression_level=1, row_group_size={ROW_GROUP}))
"""
    s = timed([PY, "-c", script], log=out / "log.txt")
    return verified(s, want, "parquet", [target], type_note([target]) if target.exists() else "")


# --- freshness --------------------------------------------------------------------

def freshness_run(args, n):
    """One run: (staleness samples, per-change latencies, orders, orders missing
    their newest version)."""
    out = fresh_dir(f"freshness-{n}")
    base = args.admin_url.rsplit("/", 1)[0]
    src, wh = base + "/fresh_src", base + "/fresh_wh"
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
    staleness, first_seen, end = [], {}, None
    with psycopg.connect(wh, autocommit=True) as c:
        start = c.execute("SELECT clock_timestamp()::timestamp").fetchone()[0]
        began = time.monotonic()
        # Watch for 5 s after the generator stops, so its last changes are seen.
        while end is None or time.monotonic() < end:
            if end is None and churn.poll() is not None:
                end = time.monotonic() + 5
            # The warehouse's own clock against the source's change stamps (same
            # server, the generator writes clock_timestamp() in its time zone).
            now, lag = c.execute("SELECT clock_timestamp()::timestamp, EXTRACT(EPOCH FROM "
                                 "clock_timestamp()::timestamp - max(source_updated_at)) FROM fact_sales_order"
                                 ).fetchone()
            # Staleness once the first changes could have arrived (before that it
            # is the age of the seed).
            if end is None and time.monotonic() - began > 5:
                staleness.append(float(lag))
            for key, stamp in c.execute("SELECT sales_order_id, source_updated_at FROM fact_sales_order "
                                        "WHERE source_updated_at > %s", (start,)):
                first_seen.setdefault((key, stamp), now)
            time.sleep(0.25)
    fg.send_signal(2)
    fg.wait(timeout=60)
    log.close()
    if churn.returncode != 0:
        raise RuntimeError("the generator failed")
    latencies = [(seen - stamp).total_seconds() for (_, stamp), seen in first_seen.items()]
    with psycopg.connect(src) as c:
        source = {r[0]: r[1] for r in c.execute("SELECT sales_order_id, last_updated FROM sales_order")}
    with psycopg.connect(wh) as c:
        wh_rows = {r[0]: r[1] for r in c.execute(
            "SELECT DISTINCT ON (sales_order_id) sales_order_id, source_updated_at FROM fact_sales_order "
            "ORDER BY sales_order_id, source_updated_at DESC")}
    missing = sum(1 for k, v in source.items() if wh_rows.get(k) != v)
    return staleness, latencies, len(source), missing


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


def freshness(args):
    runs = []
    for n in range(args.fresh_runs):
        print(f"  freshness run {n + 1} of {args.fresh_runs} …", flush=True)
        stale, lat, orders, missing = freshness_run(args, n)
        runs.append((stale, lat, orders, missing))
        print(f"    staleness p50 {statistics.median(stale):.2f} s p99 {pct(stale, 0.99):.2f} s; "
              f"per-change p50 {statistics.median(lat):.2f} s p99 {pct(lat, 0.99):.2f} s "
              f"worst {max(lat):.2f} s over {len(lat):,} changes; {missing} orders missing", flush=True)
    rows = ["| measure | p50 | p99 | worst |", "|---|---:|---:|---:|"]
    for label, idx in (("staleness of the newest change (4 Hz samples)", 0), ("per-change latency", 1)):
        rows.append(f"| {label} | {cell([statistics.median(r[idx]) for r in runs])} | "
                    f"{cell([pct(r[idx], 0.99) for r in runs])} | {cell([max(r[idx]) for r in runs])} |")
    p99 = statistics.median(pct(r[1], 0.99) for r in runs)
    complete = all(r[3] == 0 for r in runs)
    return "\n".join([
        f"### Freshness: 100 changes/s for {args.fresh_seconds} s, {args.fresh_runs} runs",
        "",
        f"flowgate `run --continuous --every 1s` of the whole example pipeline (extract with a 5-minute "
        f"look-back → transform → load; PostgreSQL source of {args.fresh_orders:,} orders and warehouse on "
        "loopback; local landing). Per-change latency: each sales_order version's source stamp "
        "(`last_updated`, clock_timestamp() at the change) to the first 4 Hz poll that saw it in "
        "`fact_sales_order` (so up to 0.25 s is the poll's); versions overwritten in the source before an "
        "extract are not in the warehouse by design and not counted. Each cell: median of the runs' "
        "values (min–max).",
        "",
        *rows,
        "",
        f"Changes measured per run: {', '.join(f'{len(r[1]):,}' for r in runs)}. Afterwards every order's "
        f"newest version was in the warehouse: {'yes, in every run' if complete else '**NO**: ' + ', '.join(str(r[3]) for r in runs) + ' missing'}. "
        f"Target per-change p99 < 5 s: {p99:.2f} s ({'met' if p99 < 5 else '**missed**'}).",
    ]), p99


# --- report -----------------------------------------------------------------------

def task_table(task, results, floor=None):
    """A markdown table of `results` (name → Samples or an exception)."""
    lines = [f"### {task}", "",
             "| tool | seconds | × floor | × flowgate | client RSS MB | PostgreSQL +MB | rows | output |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    med = {n: statistics.median(s.seconds for s in v) for n, v in results.items()
           if isinstance(v, list) and v and all(s.extra.get("ok") for s in v)}
    fg = next((m for n, m in med.items() if n.startswith("flowgate")), None)
    for name, samples in results.items():
        if isinstance(samples, Exception) or not samples:
            lines.append(f"| {name} | — | — | — | — | — | — | **failed**: {str(samples)[:150].replace('|', '/')} |")
            continue
        bad = [s for s in samples if not s.extra.get("ok")]
        notes = sorted({s.extra.get("note", "") for s in samples} - {""})
        if bad:
            lines.append(f"| {name} | — | — | — | {cell([s.rss_mb for s in samples], '{:.0f}')} | — | "
                         f"{bad[0].extra.get('rows') or 0:,} | **wrong** in {len(bad)} of {len(samples)} runs: "
                         f"{'; '.join(notes)[:200]} |")
            continue
        m = med[name]
        server = [s.server_mb for s in samples if s.server_mb is not None]
        rows = samples[0].extra.get("rows")
        lines.append(
            f"| {name} | {cell([s.seconds for s in samples])} | {m / floor:.2f} | "
            f"{m / fg:.2f} | {cell([s.rss_mb for s in samples], '{:.0f}')} | "
            f"{cell(server, '{:.0f}') if server else '-'} | {f'{rows:,}' if rows else '-'} | "
            f"{'ok' if not notes else 'ok; ' + '; '.join(notes)[:200]} |"
            if floor and fg else
            f"| {name} | {cell([s.seconds for s in samples])} | - | {m / fg:.2f} | "
            f"{cell([s.rss_mb for s in samples], '{:.0f}')} | {cell(server, '{:.0f}') if server else '-'} | "
            f"{f'{rows:,}' if rows else '-'} | {'ok' if not notes else 'ok; ' + '; '.join(notes)[:200]} |")
    own = {n: [s.extra["own"] for s in v] for n, v in results.items()
           if isinstance(v, list) and v and all("own" in s.extra for s in v)}
    if own:
        lines += ["", "Own reported time (median; flowgate's run record, the floor's connect-to-end; "
                  "process start-up excluded): "
                  + "; ".join(f"{n} {statistics.median(v):.2f} s" for n, v in own.items()) + "."]
    return "\n".join(lines), med


def median_of(results, name):
    v = results.get(name)
    if isinstance(v, list) and v and all(s.extra.get("ok") for s in v):
        return statistics.median(s.seconds for s in v)
    return None


def extract_section(args, want):
    n = args.streams
    tools = {
        f"binary COPY floor, {n} streams": lambda: binary_floor(args, n),
        "binary COPY floor, 1 stream": lambda: binary_floor(args, 1),
        "psql \\copy to CSV (1 stream, reference)": lambda: csv_reference(args, want),
        "flowgate → Parquet": lambda: flowgate_extract(args, want, "parquet"),
        "flowgate → JSON lines": lambda: flowgate_extract(args, want, "jsonl"),
        f"dlt + connectorx ({n} partitions) → Parquet": lambda: dlt_extract(args, want, "connectorx"),
        "dlt + pyarrow → Parquet": lambda: dlt_extract(args, want, "pyarrow"),
        "Sling → Parquet": lambda: sling_extract(args, want, "parquet"),
        "Sling → JSON lines": lambda: sling_extract(args, want, "jsonl"),
    }
    res = rounds(tools, args.repeat, before=lambda _: quiesce(args.source_url))
    floor = median_of(res, f"binary COPY floor, {n} streams")
    text, med = task_table(f"Extract {args.orders:,} rows PostgreSQL → files (× floor: the {n}-stream "
                           "binary COPY floor)", res, floor)
    fg = med.get("flowgate → Parquet")
    targets = []
    if fg and floor:
        targets.append(f"extract within 1.5× the {n}-stream floor: {fg / floor:.2f}× "
                       f"({'met' if fg <= 1.5 * floor else '**missed**'}; "
                       f"{fg / median_of(res, 'binary COPY floor, 1 stream'):.2f}× the 1-stream floor)")
        peers = {k: v for k, v in res.items() if k.startswith(("dlt", "Sling"))}
        behind = [k for k in peers if (median_of(res, k) or float("inf")) <= fg]
        targets.append("extract ahead of every peer: " + ("met" if not behind else "**missed** (" + ", ".join(behind) + ")"))
    return text, targets, res


def upsert_section(args, parquet):
    inputs, expected, units = upsert_inputs(parquet)
    with psycopg.connect(args.admin_url, autocommit=True) as c:
        c.execute("DROP DATABASE IF EXISTS bench_wh WITH (FORCE)")
        c.execute("CREATE DATABASE bench_wh")
    u = Upsert(args, inputs, expected, units)
    tools = {"COPY + INSERT … ON CONFLICT (floor)": u.floor, "flowgate load upsert": u.flowgate,
             "dlt merge (upsert, csv)": u.dlt, "Sling incremental": u.sling}
    res = rounds(tools, args.repeat)
    floor = median_of(res, "COPY + INSERT … ON CONFLICT (floor)")
    text, med = task_table(f"Upsert {expected:,} rows (½ new) into PostgreSQL (half loaded first, untimed; "
                           "CHECKPOINT + VACUUM ANALYZE before each timed load)", res, floor)
    ddl = [f"- {k}: {v[0].extra['ddl']}" for k, v in res.items() if isinstance(v, list) and v]
    targets = []
    fg = med.get("flowgate load upsert")
    if fg and floor:
        targets.append(f"upsert within 1.3× its floor: {fg / floor:.2f}× ({'met' if fg <= 1.3 * floor else '**missed**'})")
    return text + "\n\nTarget tables as each tool made them:\n\n" + "\n".join(ddl), targets


def convert_section(args, want, jsonl_dir):
    tools = {"flowgate transform": lambda: flowgate_convert(args, want, jsonl_dir),
             "DuckDB CLI": lambda: duckdb_convert(args, want, jsonl_dir),
             "polars (streaming)": lambda: polars_convert(args, want, jsonl_dir)}
    res = rounds(tools, args.repeat, before=lambda _: sync())
    text, med = task_table(f"JSON lines → Parquet, {args.orders:,} rows (one explicit schema, the source's "
                           f"types; zstd level 1; {ROW_GROUP:,}-row groups)", res)
    targets = []
    fg, duck = med.get("flowgate transform"), med.get("DuckDB CLI")
    if fg and duck:
        targets.append(f"JSON lines → Parquet at or ahead of DuckDB: {fg / duck:.2f}× DuckDB's time "
                       f"({'met' if fg <= duck else '**missed**'})")
    return text, targets


def versions(args):
    py = lambda mod: version([PY, "-c", f"import {mod}; print({mod}.__version__)"])  # noqa: E731
    return (f"flowgate {version([args.flowgate, '--version'])}; PostgreSQL "
            f"{version(['psql', args.source_url, '-XAtc', 'SHOW server_version'])}; dlt {py('dlt')} "
            f"(connectorx {py('connectorx')}); Sling {version([args.sling_binary, '--version'])}; DuckDB CLI "
            f"{version([args.duckdb_cli, '--version'])}; polars {py('polars')}; Python {sys.version.split()[0]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flowgate", required=True)
    ap.add_argument("--generator", required=True)
    ap.add_argument("--admin-url", required=True, help="postgres://…/postgres")
    ap.add_argument("--sling-binary", required=True)
    ap.add_argument("--duckdb-cli", required=True)
    ap.add_argument("--orders", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--fresh-orders", type=int, default=10_000)
    ap.add_argument("--fresh-seconds", type=int, default=120)
    ap.add_argument("--fresh-runs", type=int, default=5)
    ap.add_argument("--only", default="extract,upsert,convert,freshness")
    args = ap.parse_args()
    only = set(args.only.split(","))
    base = args.admin_url.rsplit("/", 1)[0]
    args.source_url = base + "/bench_src"
    args.wh_url = base + "/bench_wh"
    args.streams = min(os.cpu_count() or 1, 4)  # flowgate's default `parallel`
    # dlt's PostgreSQL destination wants a password even under trust auth.
    args.dlt_url = args.source_url.replace("postgres://postgres@", "postgresql://postgres:x@")
    args.dlt_wh_url = args.wh_url.replace("postgres://postgres@", "postgresql://postgres:x@")
    DATA.mkdir(parents=True, exist_ok=True)

    print(f"seeding {args.orders:,} sales orders …", flush=True)
    seed(args, args.source_url, args.orders)
    _, want = csv_reference(args)
    print(f"  source: {want[0]:,} rows, content hash {want[2]}", flush=True)
    sections, targets = [], []
    # One flowgate extract (untimed) gives the upsert and convert inputs.
    parquet = flowgate_extract(args, want, "parquet")
    parquet_file = files(DATA / "extract-flowgate-parquet" / "files", ".parquet")[0]
    jsonl = flowgate_extract(args, want, "jsonl")
    jsonl_dir = DATA / "convert-input"
    shutil.rmtree(jsonl_dir, ignore_errors=True)
    shutil.copytree(DATA / "extract-flowgate-jsonl" / "files", jsonl_dir)
    shutil.copy(parquet_file, DATA / "upsert-source.parquet")
    if not (parquet.extra["ok"] and jsonl.extra["ok"]):
        raise SystemExit(f"flowgate's extract is wrong: {parquet.extra['note']} {jsonl.extra['note']}")

    if "extract" in only:
        print("extract …", flush=True)
        text, t, _ = extract_section(args, want)
        sections.append(text)
        targets += t
    if "upsert" in only:
        print("upsert …", flush=True)
        text, t = upsert_section(args, DATA / "upsert-source.parquet")
        sections.append(text)
        targets += t
    if "convert" in only:
        print("JSON lines → Parquet …", flush=True)
        text, t = convert_section(args, want, jsonl_dir)
        sections.append(text)
        targets += t
    if "freshness" in only:
        print(f"freshness: 100 changes/s for {args.fresh_seconds} s × {args.fresh_runs} …", flush=True)
        text, _ = freshness(args)
        sections.append(text)

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    # A run of some sections is labelled so, and supersedes only runs of the
    # same sections, never the last full run (append_results keys on the heading).
    every = ["extract", "upsert", "convert", "freshness"]
    measured = [s for s in every if s in only]
    partial = "" if measured == every else f" (partial: {', '.join(measured)})"
    body = "\n".join([
        f"## oltp-warehouse{partial} — {stamp}", "",
        *([f"Only {', '.join(measured)} measured (`--only`); the last full run stands for the rest.", ""]
          if partial else []),
        f"Machine: {machine()}", "",
        f"Versions: {versions(args)}.", "",
        f"{args.orders:,} sales orders in PostgreSQL on loopback (fsync off, data cached for every tool). "
        f"Each cell is the median of {args.repeat} runs (min–max), tools in rotating order; seconds are "
        "process wall clock, start-up included. Every output was read back by DuckDB, cast to the source's "
        "types and compared with the source (rows, keys, content hash); `—` marks a tool whose output was "
        "wrong or that failed. Output codecs: flowgate zstd-1 with 262,144-row groups; dlt's Parquet writer "
        "takes the row-group size but not the codec (snappy); Sling as shipped. RSS: the client's peak (GNU "
        "time, largest process); PostgreSQL +MB: growth of the summed RSS of its processes during the run.",
        "",
        *[s + "\n" for s in sections],
        "Targets: " + ("; ".join(targets) if targets else "none measured") + ".",
    ])
    print("\n" + body)
    print(f"appended to {append_results(body)}")


if __name__ == "__main__":
    main()
