//! oltp-warehouse under SIGKILL: killed at 50 seeded points across extract, transform
//! and load, then run again, the warehouse equals the uninterrupted result.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use crate::common::*;

/// Every warehouse table as sorted text rows (run-specific columns aside).
fn warehouse(path: &Path) -> Vec<(String, Vec<String>)> {
    let c = rusqlite::Connection::open(path).unwrap();
    let mut tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'flowgate_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    tables.sort();
    tables
        .into_iter()
        .map(|t| {
            let mut st = c.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
            let n = st.column_count();
            let mut rows: Vec<String> = st
                .query_map([], |r| {
                    Ok((0..n)
                        .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                        .collect::<Vec<_>>()
                        .join("|"))
                })
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            rows.sort();
            (t, rows)
        })
        .collect()
}

fn flowgate_at(dir: &Path, source: &Path) -> std::process::Command {
    let mut c = flowgate(dir);
    c.env("TOTESYS_URL", format!("sqlite://{}", source.display()))
        // The killed run's hold on the pipeline runs out this fast.
        .env("FLOWGATE_LEASE_TTL", "3s");
    c
}

fn files(dir: &Path) -> usize {
    fn walk(d: &Path) -> usize {
        std::fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .map(|e| {
                        if e.path().is_dir() {
                            walk(&e.path())
                        } else {
                            1
                        }
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(dir)
}

/// Inputs the warehouse has recorded as loaded (0 while it does not exist yet).
fn loaded_inputs(db: &Path) -> usize {
    let Ok(c) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    c.query_row("SELECT count(*) FROM flowgate_loaded", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n as usize)
    .unwrap_or(0)
}

#[test]
fn sigkill_at_50_seeded_points_across_extract_transform_and_load() {
    let base = tempfile::tempdir().unwrap();
    let source = base.path().join("totesys.db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let db = totesys_generator::Db::connect(&format!("sqlite://{}", source.display()))
            .await
            .unwrap();
        totesys_generator::seed(&db, 20_000).await.unwrap();
    });

    let reference = base.path().join("reference");
    oltp_example(&reference);
    let out = run(flowgate_at(&reference, &source).args(["run", "pipeline.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let expected = warehouse(&reference.join("data/warehouse.db"));
    assert!(
        expected
            .iter()
            .any(|(t, rows)| t == "fact_sales_order" && rows.len() == 20_000),
        "reference is complete"
    );

    let mut next = seeded(0x0177);
    // Kill points by progress: k landing objects (extract), k model outputs
    // (transform), k inputs loaded (load); then a seeded delay of up to 40 ms.
    for case in 0..50 {
        let work = base.path().join(format!("case-{case}"));
        oltp_example(&work);
        let phase = case % 3;
        let k = 1 + next(10) as usize;
        let mut child = flowgate_at(&work, &source)
            .args(["run", "pipeline.toml"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let reached = match phase {
                0 => files(&work.join("data/landing")) >= k,
                1 => files(&work.join("data/processed")) >= k,
                _ => loaded_inputs(&work.join("data/warehouse.db")) >= k,
            };
            if reached {
                break;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "case {case}: the run ended before kill point {phase}/{k}"
            );
            assert!(Instant::now() < deadline, "case {case}: no progress");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        std::thread::sleep(std::time::Duration::from_millis(next(40)));
        assert!(
            child.try_wait().unwrap().is_none(),
            "case {case}: finished before the kill (phase {phase}, k {k})"
        );
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let out = run(flowgate_at(&work, &source).args(["run", "pipeline.toml"]));
        assert_eq!(out.code, 0, "case {case}: {}", out.all());
        let got = warehouse(&work.join("data/warehouse.db"));
        assert!(
            got == expected,
            "case {case} (killed in phase {phase} at {k}): the warehouse differs from the uninterrupted run"
        );
    }
}
