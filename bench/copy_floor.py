"""The extract floor: read a whole table with binary `COPY … TO STDOUT` over N
streams, each a ctid page range, all in one exported snapshot, bytes thrown away.

This is what flowgate's extract reads (the same page ranges, the same format, the
same snapshot discipline) with none of its work after the wire: no decoding, no
Parquet, no file. Each stream is a `psql` process (C end to end); this script
only exports the snapshot and holds it open.

    python copy_floor.py URL TABLE STREAMS   → prints the streams and its own time
    (connect to end, the Python start-up excluded)
"""

import subprocess
import sys
import time

import psycopg

MIN_PAGES_PER_STREAM = 64  # as flowgate's page_ranges


def main():
    url, table, streams = sys.argv[1], sys.argv[2], int(sys.argv[3])
    start = time.monotonic()
    with psycopg.connect(url) as c:
        c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot = c.execute("SELECT pg_export_snapshot()").fetchone()[0]
        pages = c.execute(
            "SELECT (pg_relation_size(%s::regclass) / current_setting('block_size')::bigint)::bigint",
            (table,)).fetchone()[0]
        n = max(1, min(streams, pages // MIN_PAGES_PER_STREAM))
        per = -(-pages // n)
        procs = []
        for i in range(n):
            where = []
            if i > 0:
                where.append(f"ctid >= '({i * per},0)'::tid")
            if i + 1 < n:
                where.append(f"ctid < '({(i + 1) * per},0)'::tid")
            query = f"SELECT * FROM {table}" + (" WHERE " + " AND ".join(where) if where else "")
            procs.append(subprocess.Popen(
                ["psql", url, "-X", "-v", "ON_ERROR_STOP=1", "-o", "/dev/null",
                 "-c", "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                 "-c", f"SET TRANSACTION SNAPSHOT '{snapshot}'",
                 "-c", f"COPY ({query}) TO STDOUT (FORMAT binary)",
                 "-c", "COMMIT"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        failed = False
        for p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                print(err, file=sys.stderr)
                failed = True
        c.execute("COMMIT")
    print(f"{n} stream(s) over {pages} pages; own time {time.monotonic() - start:.3f} s")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
