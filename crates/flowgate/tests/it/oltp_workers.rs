//! oltp-warehouse served by two, then three workers sharing one PostgreSQL state
//! store, on a one-second schedule, with manual runs beside it, while the source
//! churns: when the churn stops and the workers catch up, the warehouse equals a
//! single clean run over the final source, and no two runs ever overlapped.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

struct Worker(Child);
impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The example, on a one-second schedule, its stores in `dir`.
fn example(dir: &Path) {
    oltp_example(dir);
    let p = dir.join("pipeline.toml");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("schedule = \"every 10m\"", "schedule = \"every 1s\"");
    write(&p, text.as_bytes());
}

fn at(dir: &Path, src: &Pg, wh: &Pg) -> std::process::Command {
    let mut c = flowgate(dir);
    c.env("TOTESYS_URL", &src.url)
        .env("WAREHOUSE_URL", &wh.url)
        .env(
            "LANDING_URL",
            format!("file://{}", dir.join("data/landing").display()),
        )
        .env(
            "PROCESSED_URL",
            format!("file://{}", dir.join("data/processed").display()),
        );
    c
}

/// What a warehouse holds that does not depend on how often it was loaded:
/// every dimension row, and the newest version of every fact.
fn settled(wh: &Pg) -> Vec<(String, Vec<String>)> {
    let facts = [
        ("fact_sales_order", "sales_order_id", "source_updated_at"),
        ("fact_payment", "payment_id", "payment_record_id"),
        (
            "fact_purchase_order",
            "purchase_order_id",
            "purchase_record_id",
        ),
    ];
    let mut out = Vec::new();
    let tables = wh.rows(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' AND table_name NOT LIKE 'flowgate_%' ORDER BY 1",
    );
    for t in tables.into_iter().filter_map(|r| r[0].clone()) {
        let sql = match facts.iter().find(|f| f.0 == t) {
            Some((_, key, version)) => format!(
                "SELECT f::text FROM (SELECT DISTINCT ON ({key}) * FROM {t} ORDER BY {key}, {version} DESC) f ORDER BY 1"
            ),
            None => format!("SELECT d::text FROM {t} d ORDER BY 1"),
        };
        let rows = wh
            .rows(&sql)
            .into_iter()
            .filter_map(|r| r[0].clone())
            .collect();
        out.push((t, rows));
    }
    out
}

fn runs(dir: &Path, state: &str) -> Vec<serde_json::Value> {
    let out = run(flowgate(dir).args(["runs", "--json", "--limit", "1000", "--state", state]));
    serde_json::from_str::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn time(v: &serde_json::Value) -> chrono::DateTime<chrono::Utc> {
    v.as_str().unwrap().parse().unwrap()
}

fn scenario(workers: usize) {
    let src = Pg::new();
    let wh = Pg::new();
    let state = Pg::new().url;
    let db = src.rt.block_on(async {
        let db = totesys_generator::Db::connect(&src.url).await.unwrap();
        totesys_generator::seed(&db, 1000).await.unwrap();
        db
    });
    let dir = tempfile::tempdir().unwrap();
    example(dir.path());
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let serving: Vec<Worker> = (0..workers)
        .map(|i| {
            let log = std::fs::File::create(logs.join(format!("worker-{i}.log"))).unwrap();
            Worker(
                at(dir.path(), &src, &wh)
                    .args([
                        "serve",
                        ".",
                        "--listen",
                        "127.0.0.1:0",
                        "--state",
                        &state,
                        "-v",
                    ])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    // Churn for a while; halfway through, someone runs it by hand as well.
    let manual = {
        let (d, s, st) = (dir.path().to_path_buf(), src.url.clone(), state.clone());
        let wh_url = wh.url.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(6));
            let mut c = flowgate(&d);
            c.env("TOTESYS_URL", s)
                .env("WAREHOUSE_URL", wh_url)
                .env(
                    "LANDING_URL",
                    format!("file://{}", d.join("data/landing").display()),
                )
                .env(
                    "PROCESSED_URL",
                    format!("file://{}", d.join("data/processed").display()),
                );
            run(c.args(["run", "pipeline.toml", "--state", &st]))
        })
    };
    src.rt
        .block_on(totesys_generator::churn(&db, 60, Duration::from_secs(14)))
        .unwrap();
    let out = manual.join().unwrap();
    assert_eq!(out.code, 0, "the manual run: {}", out.all());
    let churn_end = chrono::Utc::now();
    // Caught up: a run that started after the churn ended has finished.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !runs(dir.path(), &state).iter().any(|r| {
        r["status"] == "succeeded"
            && time(&r["started_at"]) > churn_end + chrono::TimeDelta::seconds(1)
    }) {
        assert!(
            Instant::now() < deadline,
            "{workers} workers never caught up; see {}",
            logs.display()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    drop(serving);

    let all = runs(dir.path(), &state);
    let mut spans: Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> = all
        .iter()
        .filter(|r| r["status"] != "skipped" && !r["finished_at"].is_null())
        .map(|r| (time(&r["started_at"]), time(&r["finished_at"])))
        .collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "{workers} workers: two runs overlapped: {w:?}"
        );
    }
    assert!(
        all.iter().all(|r| r["status"] != "failed"),
        "{workers} workers: a run failed: {all:#?}"
    );
    let ran: std::collections::HashSet<&str> = all
        .iter()
        .filter(|r| r["status"] == "succeeded")
        .filter_map(|r| r["worker"].as_str())
        .collect();

    // The reference: one clean run over the final source.
    let clean = tempfile::tempdir().unwrap();
    example(clean.path());
    let clean_wh = Pg::new();
    let out = run(at(clean.path(), &src, &clean_wh).args(["run", "pipeline.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let expected = settled(&clean_wh);
    assert!(
        expected
            .iter()
            .any(|(t, rows)| t == "fact_sales_order" && rows.len() > 1000)
    );
    let got = settled(&wh);
    for ((t, want), (t2, have)) in expected.iter().zip(&got) {
        assert_eq!(t, t2);
        assert!(
            want == have,
            "{workers} workers ({} of them ran something): `{t}` differs from a clean run ({} vs {} rows)",
            ran.len(),
            have.len(),
            want.len()
        );
    }
    assert_eq!(expected.len(), got.len());
}

#[test]
fn two_and_three_serve_workers_under_churn_equal_one_clean_run() {
    scenario(2);
    scenario(3);
}
