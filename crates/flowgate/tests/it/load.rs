//! `load`: landed objects → warehouse tables (PostgreSQL and SQLite), exactly once.

use crate::common::*;

fn landed(dir: &std::path::Path, name: &str, lines: &str) {
    write(&dir.join("landing/orders").join(name), lines.as_bytes());
}

#[test]
fn upsert_into_postgres_exactly_once_with_new_columns() {
    let src = Pg::new();
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("p.toml"),
        format!(
            "name = \"loader\"\n[stores]\nlanding = {{ url = \"file://./landing\" }}\nwarehouse = {{ url = \"{}\", access = \"write\" }}\n[[steps]]\nid = \"load\"\nload = {{ from = \"landing:orders\", into = \"warehouse\", table = \"orders\", key = [\"id\"] }}\n",
            src.url
        )
        .as_bytes(),
    );
    landed(
        dir.path(),
        "001.jsonl",
        "{\"id\":1,\"qty\":5,\"price\":2.5,\"at\":\"2026-01-01T10:00:00\"}\n{\"id\":2,\"qty\":7,\"price\":1.25,\"at\":\"2026-01-01T10:00:01\"}\n",
    );
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(
        src.rows("SELECT id, qty, price FROM orders ORDER BY id"),
        [
            [Some("1".into()), Some("5".into()), Some("2.5".into())],
            [Some("2".into()), Some("7".into()), Some("1.25".into())],
        ]
    );

    // Again: the ledger in the warehouse says it is loaded; nothing happens.
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert!(
        out.stdout.contains("nothing new to load from"),
        "{}",
        out.all()
    );

    // A later object updates id 1 twice (the last wins), adds id 3, and brings a new column.
    landed(
        dir.path(),
        "002.jsonl",
        "{\"id\":1,\"qty\":6,\"price\":2.5,\"at\":\"2026-01-01T11:00:00\",\"channel\":\"web\"}\n{\"id\":1,\"qty\":8,\"price\":2.5,\"at\":\"2026-01-01T11:00:01\",\"channel\":\"shop\"}\n{\"id\":3,\"qty\":1,\"price\":9.0,\"at\":\"2026-01-01T11:00:02\",\"channel\":null}\n",
    );
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout
            .contains("warning: added new nullable column `channel`"),
        "{}",
        out.stdout
    );
    assert_eq!(
        src.rows("SELECT id, qty, channel FROM orders ORDER BY id"),
        [
            [Some("1".into()), Some("8".into()), Some("shop".into())],
            [Some("2".into()), Some("7".into()), None],
            [Some("3".into()), Some("1".into()), None],
        ]
    );
    assert_eq!(
        src.rows("SELECT count(*) FROM flowgate_loaded"),
        [[Some("2".into())]]
    );
}

#[test]
fn append_versions_and_sqlite_target() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("p.toml"),
        br#"name = "versions"
[stores]
landing = { url = "file://./landing" }
warehouse = { url = "sqlite://warehouse.db", access = "write" }
[[steps]]
id = "load"
load = { from = "landing:orders", into = "warehouse", table = "fact_orders", mode = "append-versions", key = ["id"], version = "at" }
"#,
    );
    landed(
        dir.path(),
        "001.jsonl",
        "{\"id\":1,\"qty\":5,\"at\":\"v1\"}\n{\"id\":1,\"qty\":6,\"at\":\"v2\"}\n",
    );
    // The same versions again in a second object (a re-extract after a crash), and one new.
    landed(
        dir.path(),
        "002.jsonl",
        "{\"id\":1,\"qty\":6,\"at\":\"v2\"}\n{\"id\":1,\"qty\":7,\"at\":\"v3\"}\n",
    );
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let c = rusqlite::Connection::open(dir.path().join("warehouse.db")).unwrap();
    let mut st = c
        .prepare("SELECT id, qty, at FROM fact_orders ORDER BY at")
        .unwrap();
    let rows: Vec<(i64, i64, String)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(
        rows,
        [
            (1, 5, "v1".into()),
            (1, 6, "v2".into()),
            (1, 7, "v3".into())
        ],
        "one row per (key, version)"
    );
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert!(
        out.stdout.contains("nothing new to load from"),
        "{}",
        out.all()
    );
}

#[test]
fn a_load_key_missing_from_the_input_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("p.toml"),
        br#"name = "nokey"
[stores]
landing = { url = "file://./landing" }
warehouse = { url = "sqlite://warehouse.db", access = "write" }
[[steps]]
id = "load"
load = { from = "landing:orders", into = "warehouse", table = "t", key = ["order_id"] }
"#,
    );
    landed(dir.path(), "001.jsonl", "{\"id\":1}\n");
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stdout.contains("the input has no column `order_id`"),
        "{}",
        out.stdout
    );
}

#[test]
fn rows_with_a_null_key_are_dead_lettered_and_the_run_is_partial() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("p.toml"),
        br#"name = "nulls"
[stores]
landing = { url = "file://./landing" }
warehouse = { url = "sqlite://warehouse.db", access = "write" }
[[steps]]
id = "load"
load = { from = "landing:orders", into = "warehouse", table = "orders", key = ["id"] }
"#,
    );
    landed(
        dir.path(),
        "001.jsonl",
        "{\"id\":1,\"qty\":5}\n{\"id\":null,\"qty\":6}\n{\"id\":3,\"qty\":7}\n",
    );
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 3, "partial: {}", out.all());
    assert!(out.stdout.contains("partial"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("1 row(s) of landing:orders/001.jsonl set aside (null key)"),
        "{}",
        out.stdout
    );
    let c = rusqlite::Connection::open(dir.path().join("warehouse.db")).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM orders", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2, "the rest is loaded");
    let dead: Vec<_> = walk(&dir.path().join(".flowgate/dead-letter"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&dead[0])
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["reason"], "key column `id` is null (table `orders`)");
    assert_eq!(line["position"]["row"], 1);
    assert_eq!(line["record"]["qty"], 6);
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p))
            } else {
                out.push(p)
            }
        }
    }
    out
}

#[test]
fn status_reports_freshness_after_a_run_that_loads() {
    let dir = tempfile::tempdir().unwrap();
    let ten_minutes_ago = (chrono_like_now() - 600).to_string();
    let c = rusqlite::Connection::open(dir.path().join("src.db")).unwrap();
    c.execute_batch(&format!(
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER, last_updated TEXT);
         INSERT INTO orders VALUES (1, 5, datetime({ten_minutes_ago}, 'unixepoch', '-1 hour')), (2, 6, datetime({ten_minutes_ago}, 'unixepoch'));"
    ))
    .unwrap();
    write(
        &dir.path().join("p.toml"),
        br#"name = "fresh"
[stores]
src = { url = "sqlite://src.db" }
landing = { url = "file://./landing", access = "read-write" }
warehouse = { url = "sqlite://warehouse.db", access = "write" }
[[steps]]
id = "ingest"
extract = { from = "src", tables = ["orders"], cursor = "last_updated", to = "landing:{{ table }}/{{ run.id }}.jsonl" }
[[steps]]
id = "load"
needs = ["ingest"]
load = { from = "landing:orders", into = "warehouse", table = "orders", key = ["id"] }
"#,
    );
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let out = run(flowgate(dir.path()).args(["status", "--json"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let fresh = v[0]["freshness_seconds"].as_f64().unwrap();
    assert!(
        (590.0..700.0).contains(&fresh),
        "the newest visible change is ten minutes old: {fresh}"
    );
    let out = run(flowgate(dir.path()).args(["status"]));
    assert!(
        out.stdout.contains("fresh") && out.stdout.contains("10m"),
        "{}",
        out.stdout
    );
}

fn chrono_like_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
