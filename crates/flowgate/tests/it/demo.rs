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
}
