//! `flowgate demo` works with no services at all.

use crate::common::*;

#[test]
fn demo_runs_on_embedded_defaults_without_services() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = flowgate(dir.path());
    for (k, _) in std::env::vars() {
        if k.starts_with("FLOWGATE_") || k.starts_with("AWS_") {
            c.env_remove(k);
        }
    }
    let out = run(c.args(["demo", "--dir", "demo"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("nothing new to run"), "{}", out.stdout);
    assert!(
        out.stdout.contains("1 object(s) written") && out.stdout.contains("6 unchanged"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("runs: 3; files in the outbox: 13"),
        "{}",
        out.stdout
    );
    // oltp-warehouse: the second run extracts only the changed orders, and the query answers.
    assert!(
        out.stdout.contains("`sales_order`: 65 rows →"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("units and value sold per counterparty"),
        "{}",
        out.stdout
    );
    // data-egress: both transfer types through the demo's own HTTPS receiver.
    assert!(
        out.stdout.contains(
            "at the receiver: 3 files; left in the outbox: 0; customers.csv decrypted: yes"
        ),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("[route sales#sft]"), "{}", out.stdout);
    assert!(out.stdout.contains("Partner "), "{}", out.stdout);
    let m = std::fs::read(
        dir.path()
            .join("demo/copy-arrival/data/outbox/2026-11-23/_manifest.json"),
    )
    .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&m).unwrap();
    assert_eq!(m["objects"].as_array().unwrap().len(), 7);
    // journal-rollout: every environment's clusters, with the kinds it keeps.
    let lines: Vec<&str> = out.stdout.lines().collect();
    for (env, kept) in [("dev", 4), ("qa", 7), ("dit", 7), ("prod", 4)] {
        let at = lines
            .iter()
            .position(|l| l.contains(&format!("of `journal-rollout-{env}`: succeeded in ")))
            .unwrap_or_else(|| panic!("{env}: {}", out.stdout));
        let import = format!(
            "import         succeeded   version 1.0.2: modelling imported, execution imported ({kept} of 7 records kept)"
        );
        assert!(lines[at + 1].contains(&import), "{env}: {}", out.stdout);
    }
    let jr = dir.path().join("demo/journal-rollout");
    let entities = |cluster: &str| -> Vec<String> {
        let c = rusqlite::Connection::open(jr.join(format!("clusters/{cluster}.db"))).unwrap();
        let mut st = c
            .prepare("SELECT entity FROM entities ORDER BY entity")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(
        entities("qa_execution"),
        ["biz:2-0", "biz:2-1", "tech:2-0", "tech:2-1", "tech:2-2"]
    );
    assert_eq!(
        entities("dev_execution"),
        ["tech:2-0", "tech:2-1", "tech:2-2"]
    );
    // 1.0.3 is rejected by the execution clusters, imported by the modelling ones.
    assert_eq!(
        entities("dev_modelling"),
        [
            "tech:2-0",
            "tech:2-1",
            "tech:3-0",
            "tech:3-1",
            "tech:3-2",
            "tech:3-over"
        ]
    );
    // tenant-datasets: two tenants published, the failing one not, checks on LATEST.
    for text in [
        "published dataset `cat-be-prod` version",
        "published dataset `cat-be-dev` version",
        "the source page changed its layout",
        "5 checks passed, 0 failed, 0 warned on 10 records",
    ] {
        assert!(out.stdout.contains(text), "{text}: {}", out.stdout);
    }
    assert!(
        !out.stdout.contains("published dataset `dog-nl"),
        "{}",
        out.stdout
    );
    for failed in [
        "artifacts/failed/1.0.3/error.json",
        "failed/failed/1.0.3/journal.jsonl.gz",
    ] {
        assert!(jr.join(failed).is_file(), "{failed}");
    }
}
