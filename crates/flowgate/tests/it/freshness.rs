//! Freshness: now minus the newest source change visible in the warehouse, shown by
//! `flowgate status`, and one notice when it passes `notify.stale_after` (and one
//! when it is back under).

use crate::common::*;

fn status(dir: &std::path::Path) -> serde_json::Value {
    let out = run(flowgate(dir).args(["status", "--json"]));
    assert_eq!(out.code, 0, "{}", out.all());
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

fn freshness_of(status: &serde_json::Value, pipeline: &str) -> f64 {
    let rows = status.as_array().expect("status --json is an array");
    let row = rows
        .iter()
        .find(|r| r["pipeline"] == pipeline)
        .unwrap_or_else(|| panic!("no `{pipeline}` in {status}"));
    row["freshness_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("no freshness in {row}"))
}

#[test]
fn a_stale_warehouse_notifies_once_and_again_when_fresh() {
    let dir = tempfile::tempdir().unwrap();
    // The newest source change is two hours old.
    let two_hours_ago = (chrono::Utc::now() - chrono::Duration::hours(2))
        .format("%Y-%m-%d %H:%M:%S%.6f")
        .to_string();
    {
        let c = rusqlite::Connection::open(dir.path().join("src.db")).unwrap();
        c.execute_batch(&format!(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, units INTEGER, last_updated TEXT);
             INSERT INTO orders VALUES (1, 5, '{two_hours_ago}'), (2, 6, '{two_hours_ago}');"
        ))
        .unwrap();
    }
    let (port, bodies) = receiver();
    write(
        &dir.path().join("p.toml"),
        format!(
            r#"name = "orders"
[stores]
src = {{ url = "sqlite://src.db" }}
landing = {{ url = "file://./landing", access = "read-write" }}
wh = {{ url = "sqlite://wh.db", access = "write" }}
[[steps]]
id = "extract"
extract = {{ from = "src", tables = ["orders"], cursor = "last_updated", to = "landing:{{{{ table }}}}/{{{{ run.id }}}}.jsonl" }}
[[steps]]
id = "load"
needs = ["extract"]
load = {{ from = "landing:orders", into = "wh", table = "orders", key = ["id"] }}
[notify]
webhook = "http://127.0.0.1:{port}/hook"
stale_after = "1h"
"#
        )
        .as_bytes(),
    );

    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let age = freshness_of(&status(dir.path()), "orders");
    assert!(
        (7100.0..7300.0).contains(&age),
        "freshness is the age of the newest change loaded: {age}"
    );

    // Each trigger pass checks freshness; it is stale: one notice, not one per pass.
    for _ in 0..3 {
        let out = run(flowgate(dir.path()).args(["poll", "p.toml"]));
        assert_eq!(out.code, 0, "{}", out.all());
    }
    let notices = bodies.lock().unwrap().clone();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(
        notices[0].contains("`orders` is stale") && notices[0].contains("threshold 1h"),
        "{}",
        notices[0]
    );

    // A new change arrives and is loaded: the warehouse is fresh again, said once.
    rusqlite::Connection::open(dir.path().join("src.db"))
        .unwrap()
        .execute_batch(&format!(
            "INSERT INTO orders VALUES (3, 7, '{}')",
            chrono::Utc::now().format("%Y-%m-%d %H:%M:%S%.6f")
        ))
        .unwrap();
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let age = freshness_of(&status(dir.path()), "orders");
    assert!(age < 60.0, "fresh after loading the new row: {age}");
    for _ in 0..2 {
        let out = run(flowgate(dir.path()).args(["poll", "p.toml"]));
        assert_eq!(out.code, 0, "{}", out.all());
    }
    let notices = bodies.lock().unwrap().clone();
    assert_eq!(notices.len(), 2, "{notices:?}");
    assert!(
        notices[1].contains("`orders` is fresh again"),
        "{}",
        notices[1]
    );
}

#[test]
fn a_quiet_source_is_current_as_of_the_last_run_that_found_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let day_ago = (chrono::Utc::now() - chrono::Duration::days(1))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    {
        let c = rusqlite::Connection::open(dir.path().join("src.db")).unwrap();
        c.execute_batch(&format!(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, last_updated TEXT);
             INSERT INTO orders VALUES (1, '{day_ago}');"
        ))
        .unwrap();
    }
    write(
        &dir.path().join("p.toml"),
        br#"name = "quiet"
[stores]
src = { url = "sqlite://src.db" }
landing = { url = "file://./landing", access = "read-write" }
wh = { url = "sqlite://wh.db", access = "write" }
[[steps]]
id = "extract"
extract = { from = "src", tables = ["orders"], cursor = "last_updated", to = "landing:{{ table }}/{{ run.id }}.jsonl" }
[[steps]]
id = "load"
needs = ["extract"]
load = { from = "landing:orders", into = "wh", table = "orders", key = ["id"] }
"#,
    );
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(freshness_of(&status(dir.path()), "quiet") > 86_000.0);
    // Nothing changed since: the second run shows the warehouse is current.
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let age = freshness_of(&status(dir.path()), "quiet");
    assert!(age < 60.0, "{age}");
}
