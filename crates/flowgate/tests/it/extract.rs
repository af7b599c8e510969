//! `extract` from a real PostgreSQL (and SQLite): snapshot, then only what changed,
//! by keyset watermark at full precision, with a look-back for late commits.

use crate::common::*;

fn pipeline(dir: &std::path::Path, url: &str, extra: &str, key: &str) {
    write(
        &dir.join("p.toml"),
        format!(
            "name = \"ingest\"\n[stores]\ntotesys = {{ url = \"{url}\" }}\nlanding = {{ url = \"file://./landing\", access = \"read-write\" }}\n[[steps]]\nid = \"ingest\"\nextract = {{ from = \"totesys\", tables = [\"sales_order\"], cursor = \"last_updated\", to = \"landing:{{{{ table }}}}/{{{{ run.id }}}}.{key}\"{extra} }}\n"
        )
        .as_bytes(),
    );
}

/// Every landed JSON line, in file order (files sorted by name = run order).
fn landed(dir: &std::path::Path) -> Vec<Vec<serde_json::Value>> {
    data_files(&dir.join("landing/sales_order"))
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        })
        .collect()
}

fn ids(rows: &[serde_json::Value]) -> Vec<i64> {
    rows.iter()
        .map(|r| r["sales_order_id"].as_i64().unwrap())
        .collect()
}

const TABLE: &str = "CREATE TABLE sales_order (
    sales_order_id int PRIMARY KEY, units_sold int NOT NULL, unit_price numeric(10,2) NOT NULL,
    agreed_delivery_date date, created_at timestamp(6) NOT NULL, last_updated timestamp(6) NOT NULL, note text)";

#[test]
fn snapshot_then_only_changes_by_keyset_watermark() {
    let pg = Pg::new();
    pg.exec(TABLE);
    pg.exec(
        "INSERT INTO sales_order VALUES
         (1, 10, 2.50, '2026-01-05', '2026-01-01 10:00:00', '2026-01-01 10:00:00.000001', 'a'),
         (2, 20, 3.75, NULL,         '2026-01-01 10:00:00', '2026-01-01 10:00:00.000002', NULL),
         (3, 30, 1234567.89, '2026-02-01', '2026-01-01 10:00:00', '2026-01-01 10:00:00.000002', 'ünïcode \"quoted\"')",
    );
    let dir = tempfile::tempdir().unwrap();
    pipeline(dir.path(), &pg.url, "", "jsonl");

    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let runs = landed(dir.path());
    assert_eq!(runs.len(), 1, "first run: a full snapshot in one object");
    let first = by_id(&runs[0]);
    assert_eq!(first.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(first[&3]["unit_price"], serde_json::json!(1234567.89));
    assert_eq!(first[&3]["note"], "ünïcode \"quoted\"");
    assert_eq!(first[&1]["agreed_delivery_date"], "2026-01-05");
    assert_eq!(first[&1]["last_updated"], "2026-01-01T10:00:00.000001");
    assert!(first[&2]["note"].is_null());

    // Nothing changed: no object.
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains("no changes, no object written"),
        "{}",
        out.stdout
    );
    assert_eq!(landed(dir.path()).len(), 1);

    // A row with the same cursor as the watermark but a larger key, and an update.
    pg.exec("INSERT INTO sales_order VALUES (4, 40, 1.00, NULL, '2026-01-01 10:00:00', '2026-01-01 10:00:00.000002', 'same cursor')");
    pg.exec("UPDATE sales_order SET units_sold = 11, last_updated = '2026-01-01 11:00:00' WHERE sales_order_id = 1");
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let runs = landed(dir.path());
    assert_eq!(runs.len(), 2);
    let second = by_id(&runs[1]);
    assert_eq!(
        second.keys().copied().collect::<Vec<_>>(),
        [1, 4],
        "exactly the new row and the updated one"
    );
    assert_eq!(second[&1]["units_sold"], 11);
}

/// Rows by `sales_order_id` (a run's object has no particular order); each id once.
fn by_id(rows: &[serde_json::Value]) -> std::collections::BTreeMap<i64, &serde_json::Value> {
    let mut out = std::collections::BTreeMap::new();
    for (id, row) in ids(rows).into_iter().zip(rows) {
        assert!(out.insert(id, row).is_none(), "sales_order_id {id} twice");
    }
    out
}

#[test]
fn a_large_snapshot_is_read_over_several_connections_in_one_snapshot() {
    let pg = Pg::new();
    pg.exec(TABLE);
    // About 600 pages: enough for four ranges of pages.
    pg.exec(
        "INSERT INTO sales_order SELECT g, g % 97, (g % 1000) / 10.0, NULL, now(),
                timestamp '2026-01-01' + (g % 5000) * interval '1 second', repeat('x', g % 40)
         FROM generate_series(1, 50000) g",
    );
    let dir = tempfile::tempdir().unwrap();
    pipeline(dir.path(), &pg.url, ", parallel = 4", "jsonl");
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains("50000 rows →") && out.stdout.contains("(read over 4 connections)"),
        "{}",
        out.stdout
    );
    let runs = landed(dir.path());
    let snapshot = by_id(&runs[0]);
    assert_eq!(snapshot.len(), 50_000);
    assert_eq!(snapshot.keys().next(), Some(&1));
    assert_eq!(snapshot.keys().last(), Some(&50_000));
    let id: i64 = 4339;
    assert_eq!(snapshot[&id]["note"], "x".repeat(id as usize % 40));

    // The position is the newest (cursor, key) of the whole table, whichever
    // connection read it: the next run sees only what changed after it.
    pg.exec("UPDATE sales_order SET units_sold = -1, last_updated = '2026-02-01' WHERE sales_order_id IN (7, 49999)");
    pg.exec("INSERT INTO sales_order VALUES (50001, 1, 1.00, NULL, now(), '2026-01-01 01:23:19', 'same cursor as the newest, larger key')");
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let runs = landed(dir.path());
    assert_eq!(runs.len(), 2, "{}", out.stdout);
    let changes = by_id(&runs[1]);
    assert_eq!(
        changes.keys().copied().collect::<Vec<_>>(),
        [7, 49999, 50001]
    );
    assert_eq!(changes[&7]["units_sold"], -1);
}

#[test]
fn lookback_catches_late_commits_without_repeating_rows() {
    let pg = Pg::new();
    pg.exec(TABLE);
    pg.exec(
        "INSERT INTO sales_order SELECT g, g, 1.00, NULL, now(), timestamp '2026-01-01 12:00:00' + g * interval '1 second', NULL
         FROM generate_series(1, 200) g",
    );
    let dir = tempfile::tempdir().unwrap();
    pipeline(
        dir.path(),
        &pg.url,
        ", lookback = \"10m\", batch_rows = 64",
        "jsonl",
    );
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(
        landed(dir.path())[0].len(),
        200,
        "batches of 64 make one object"
    );

    // Re-running inside the look-back window writes nothing again.
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert!(
        out.stdout.contains("no changes, no object written"),
        "{}",
        out.all()
    );

    // A transaction that commits late with an earlier timestamp (inside the window),
    // and one far older than the window (outside: by configuration, not caught).
    pg.exec("INSERT INTO sales_order VALUES (500, 5, 1.00, NULL, now(), '2026-01-01 12:02:00.5', 'late')");
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let runs = landed(dir.path());
    assert_eq!(runs.len(), 2);
    assert_eq!(ids(&runs[1]), [500], "only the late row");
}

#[test]
fn parquet_output_and_sqlite_source() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("totesys.db");
    {
        let c = rusqlite::Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE sales_order (sales_order_id INTEGER PRIMARY KEY, units_sold INTEGER, unit_price NUMERIC, last_updated TEXT);
             INSERT INTO sales_order VALUES (1, 5, '9.99', '2026-01-01 00:00:00.100'), (2, 6, '19.99', '2026-01-01 00:00:00.200');",
        )
        .unwrap();
    }
    pipeline(dir.path(), "sqlite://totesys.db", "", "parquet");
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let files = data_files(&dir.path().join("landing/sales_order"));
    assert_eq!(files.len(), 1);
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&files[0]).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let batches: Vec<_> = reader.map(|b| b.unwrap()).collect();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 2);
    let schema = batches[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        ["sales_order_id", "units_sold", "unit_price", "last_updated"],
        "no helper columns leak out"
    );

    // One more row in SQLite: only it is extracted.
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("INSERT INTO sales_order VALUES (3, 7, '1.50', '2026-01-01 00:00:00.300')")
        .unwrap();
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("1 rows →"), "{}", out.stdout);
}

#[test]
fn a_new_source_column_is_kept_in_landing_with_a_warning() {
    let pg = Pg::new();
    pg.exec(TABLE);
    pg.exec("INSERT INTO sales_order VALUES (1, 10, 2.50, NULL, '2026-01-01', '2026-01-01 10:00:00', NULL)");
    let dir = tempfile::tempdir().unwrap();
    pipeline(dir.path(), &pg.url, "", "jsonl");
    assert_eq!(run(flowgate(dir.path()).args(["run", "p.toml"])).code, 0);
    pg.exec("ALTER TABLE sales_order ADD COLUMN channel text");
    pg.exec("INSERT INTO sales_order VALUES (2, 20, 3.75, NULL, '2026-01-01', '2026-01-01 11:00:00', NULL, 'web')");
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout
            .contains("warning: `sales_order` has a new column `channel`"),
        "{}",
        out.stdout
    );
    let runs = landed(dir.path());
    // Row 1 sits at the last position and its content grew a column, so it may
    // come again; row 2 is there with its new column.
    assert_eq!(by_id(&runs[1])[&2]["channel"], "web");
}

#[test]
fn an_unreachable_source_is_retried_then_fails_with_the_watermark_unchanged_and_a_notice() {
    let (port, bodies) = receiver();
    let closed = free_port();
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("p.toml"),
        format!(
            "name = \"ingest\"\n[stores]\ntotesys = {{ url = \"postgres://postgres@127.0.0.1:{closed}/totesys\" }}\nlanding = {{ url = \"file://./landing\", access = \"read-write\" }}\n[[steps]]\nid = \"ingest\"\nretry = {{ attempts = 3, backoff = \"10ms..20ms\" }}\nextract = {{ from = \"totesys\", tables = [\"sales_order\"], cursor = \"last_updated\", to = \"landing:{{{{ table }}}}/{{{{ run.id }}}}.jsonl\" }}\n[notify]\nwebhook = \"http://127.0.0.1:{port}/hook\"\n"
        )
        .as_bytes(),
    );
    let out = run(flowgate(dir.path()).args(["run", "p.toml", "--json"]));
    assert_eq!(out.code, 1, "{}", out.all());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let step = &v[0]["run"]["steps"][0];
    assert_eq!(step["attempts"], 3, "{step:#}");
    assert!(
        step["error"]
            .as_str()
            .unwrap()
            .contains("connecting to the source database"),
        "{step:#}"
    );
    let notices = bodies.lock().unwrap().clone();
    assert_eq!(notices.len(), 1);
    assert!(
        notices[0].contains("pipeline `ingest` failed"),
        "{notices:?}"
    );
    let state = rusqlite::Connection::open(dir.path().join(".flowgate/state.db")).unwrap();
    let marks: i64 = state
        .query_row("SELECT count(*) FROM watermarks", [], |r| r.get(0))
        .unwrap();
    assert_eq!(marks, 0, "no position moved");
    assert!(
        !dir.path().join("landing/sales_order").exists(),
        "nothing landed"
    );
}
