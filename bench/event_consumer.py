"""event-consumer benchmark: 1M JSON events from Apache Kafka into PostgreSQL,
commit-after-write, flowgate against the team's own approach written as an
expert would (a Python confluent-kafka consumer with batched COPY).

Both read the same topic (3 partitions) in a fresh consumer group into a fresh
table, drop the same ignored types, and are timed from their start until every
event that is not ignored is in the table; peak RSS is sampled every 0.1 s.
Every table is checked: the expected count, every id once.
"""

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import psycopg
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from common import DATA, Sample, cell, machine, rounds, version, append_results

KINDS = ["DeliveryMade", "DeliveryShipped", "DeliveryPinged", "DeliveryDelivered", "DeliveryReturned",
         "DeliveryMade", "DeliveryShipped", "DeliveryDelivered", "DeliveryMade", "DeliveryShipped"]
IGNORED = {"DeliveryPinged"}  # one in ten

PYTHON_CONSUMER = r'''
"""The team's consumer as an expert writes it: confluent-kafka, batches of up to
5000 events or 500 ms, json.loads, ignored types dropped, psycopg COPY, the
database commit first and the Kafka commit after it (at least once)."""
import json, sys
import psycopg
from confluent_kafka import Consumer

bootstrap, topic, group, table, ignored, expected = sys.argv[1:7]
ignored, expected = set(json.loads(ignored)), int(expected)
c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
              "auto.offset.reset": "earliest"})
c.subscribe([topic])
db = psycopg.connect(sys.argv[7])
written = 0
while written < expected:
    msgs = c.consume(num_messages=5000, timeout=0.5)
    if not msgs:
        continue
    rows = []
    for m in msgs:
        if m.error():
            continue
        e = json.loads(m.value())
        if e.get("type") in ignored:
            continue
        rows.append((e["id"], e["type"], e["amount"], e["occurred_at"], json.dumps(e["extra"])))
    with db.cursor() as cur:
        with cur.copy(f"COPY {table} (id, type, amount, occurred_at, extra) FROM STDIN") as cp:
            for r in rows:
                cp.write_row(r)
    db.commit()
    c.commit(asynchronous=False)
    written += len(rows)
c.close()
'''

PIPELINE = """
name = "bench-consumer"
[params]
table = {}
group = {}
[stores]
kafka = { url = "kafka://%(bootstrap)s" }
warehouse = { url = "${DATABASE_URL}", access = "write" }
dead = { url = "file://./dead-letters", access = "read-write" }
[stream]
from = "kafka"
topics = ["%(topic)s"]
group = "{{ params.group }}"
ignore = ['%(ignored)s']
to = { store = "warehouse", table = "{{ params.table }}" }
dead_letter = "dead:{{ params.group }}"
batch = { events = 10000, bytes = "16MB", wait = "500ms" }
"""


def produce(bootstrap, topic, n):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 3, 1)])[topic].result()
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 1 << 20,
                  "compression.type": "lz4", "queue.buffering.max.messages": 500000})
    expected = 0
    for i in range(1, n + 1):
        kind = KINDS[i % len(KINDS)]
        expected += kind not in IGNORED
        e = {"id": i, "type": kind, "amount": f"{i % 1000}.{i % 100:02d}",
             "occurred_at": "2026-12-04T10:00:00Z", "extra": {"courier": f"c{i % 37}", "stop": i % 11}}
        while True:
            try:
                p.produce(topic, key=str(i % 97), value=json.dumps(e))
                break
            except BufferError:
                p.poll(0.05)
    p.flush(120)
    return expected


def watch(proc, db_url, table, expected, timeout=900):
    """Wait until `table` holds `expected` rows (or `proc` dies); sample peak RSS."""
    ps = psutil.Process(proc.pid)
    peak = 0.0
    start = time.monotonic()
    with psycopg.connect(db_url, autocommit=True) as db:
        last_check = 0.0
        while True:
            try:
                peak = max(peak, ps.memory_info().rss / 2**20)
            except psutil.NoSuchProcess:
                pass
            now = time.monotonic()
            if now - last_check >= 0.2:
                last_check = now
                n = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                if n >= expected:
                    return now - start, peak
            if proc.poll() is not None and proc.returncode != 0:
                raise RuntimeError(f"exited with {proc.returncode}")
            if now - start > timeout:
                raise RuntimeError(f"{table}: timed out")
            time.sleep(0.1)


def check(db_url, table, expected):
    with psycopg.connect(db_url) as db:
        n, distinct = db.execute(f"SELECT count(*), count(DISTINCT id) FROM {table}").fetchone()
    if n != expected or distinct != expected:
        raise RuntimeError(f"{table}: {n} rows, {distinct} distinct ids, expected {expected}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flowgate", required=True)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--admin-url", required=True, help="a PostgreSQL URL whose user may create databases")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    flowgate = Path(args.flowgate).resolve()
    DATA.mkdir(parents=True, exist_ok=True)
    work = DATA / "event-consumer"
    work.mkdir(exist_ok=True)

    db_name = f"bench_events_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {db_name}")
    db_url = args.admin_url.rsplit("/", 1)[0] + "/" + db_name

    topic = f"bench-events-{uuid.uuid4().hex[:8]}"
    print(f"== event-consumer: producing {args.events:,} events to {topic} (3 partitions)")
    t = time.monotonic()
    expected = produce(args.bootstrap, topic, args.events)
    print(f"   produced in {time.monotonic() - t:.1f} s; {expected:,} are not ignored")
    (work / "pipeline.toml").write_text(PIPELINE % {
        "bootstrap": args.bootstrap, "topic": topic, "ignored": json.dumps(sorted(IGNORED))})
    (work / "consumer.py").write_text(PYTHON_CONSUMER)
    counter = [0]

    def fresh_table():
        counter[0] += 1
        table = f"events_{counter[0]}"
        with psycopg.connect(db_url, autocommit=True) as db:
            db.execute(f"CREATE TABLE {table} (id bigint NOT NULL, type text, amount numeric, "
                       "occurred_at timestamptz, extra jsonb)")
        return table

    def run(cmd, env, table, log):
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, env={**os.environ, **env}, cwd=work, stdout=out, stderr=subprocess.STDOUT)
            try:
                seconds, peak = watch(proc, db_url, table, expected)
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        check(db_url, table, expected)
        s = Sample(seconds, peak)
        return s

    def run_flowgate():
        table = fresh_table()
        return run([str(flowgate), "serve", "pipeline.toml", "-p", f"table={table}", "-p", f"group=g-{table}",
                    "--listen", "127.0.0.1:0"], {"DATABASE_URL": db_url}, table, work / "flowgate.log")

    def run_python():
        table = fresh_table()
        return run([sys.executable, "consumer.py", args.bootstrap, topic, f"py-{table}-{uuid.uuid4().hex[:6]}",
                    table, json.dumps(sorted(IGNORED)), str(expected), db_url], {}, table, work / "python.log")

    tools = {"flowgate": run_flowgate, "python confluent-kafka + COPY": run_python}
    got = rounds(tools, args.repeat)
    for name, samples in got.items():
        if isinstance(samples, Exception):
            raise SystemExit(f"{name} failed: {samples}")
    fg = got["flowgate"]
    rate = lambda samples: [expected / s.seconds for s in samples]
    fg_rate = sorted(rate(fg))[len(fg) // 2]
    lines = []
    for name, samples in got.items():
        r = rate(samples)
        ratio = [s.seconds / sorted(x.seconds for x in fg)[len(fg) // 2] for s in samples]
        lines.append(f"| {name} | {cell([s.seconds for s in samples])} | {cell(r, '{:,.0f}')} | "
                     f"{cell([s.rss_mb for s in samples], '{:.0f}')} | {cell(ratio)} |")
    fg_rss = sorted(s.rss_mb for s in fg)[len(fg) // 2]
    verdicts = [
        f"≥ 100,000 events/s: **{'met' if fg_rate >= 100_000 else 'MISSED'}** ({fg_rate:,.0f})",
        f"peak RSS < 150 MB: **{'met' if fg_rss < 150 else 'MISSED'}** ({fg_rss:.0f} MB)",
    ]
    body = f"""## event-consumer — {datetime.date.today().isoformat()}

{machine()}; {version([str(flowgate), '--version'])}; Apache Kafka 4.4 (one KRaft node) and PostgreSQL 15 on
the same machine; {args.events:,} JSON events (3 partitions, lz4), {expected:,} written (one in ten ignored);
medians of {args.repeat} runs (min–max), each in a fresh consumer group and table, timed from start until the
last row is in the table; commit-after-write in both.

| consumer | seconds | events/s | peak RSS MB | × flowgate's time |
|---|---|---|---|---|
{chr(10).join(lines)}

Targets: {'; '.join(verdicts)}. Every table was checked: {expected:,} rows, every id once.
Not measured: Kafka Connect (connect-runtime 4.4 is on Maven Central, but no JDBC sink can be had here: Confluent's
is not on Maven Central, Debezium's debezium-connector-jdbc 3.6.1.Final and 3.7.1.Final are refused by this registry)
and Redpanda Connect (its Kafka and SQL components are not under an open-source licence; Benthos' MIT core has neither).
"""
    print(body)
    print(f"appended to {append_results(body)}")
    with psycopg.connect(args.admin_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE {db_name}")


if __name__ == "__main__":
    main()
