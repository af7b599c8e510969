//! A matrix: one run per combination, failures independent unless fail_fast.

use crate::common::*;

fn setup(fail_fast: bool, max_parallel: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for t in ["acme", "bolt", "core"] {
        write(
            &dir.path().join(format!("src/{t}/data.csv")),
            format!("tenant,{t}\n").as_bytes(),
        );
    }
    // Tenant bolt cannot be written: a file stands where its folder would go.
    write(&dir.path().join("dst/bolt"), b"in the way");
    let p = format!(
        r#"name = "tenants"
[matrix]
values = {{ tenant = ["acme", "bolt", "core"] }}
max_parallel = {max_parallel}
fail_fast = {fail_fast}
[stores]
src = {{ url = "file://./src" }}
dst = {{ url = "file://./dst", access = "read-write" }}
[[steps]]
id = "copy"
copy = {{ from = "src:{{{{ matrix.tenant }}}}", to = "dst:{{{{ matrix.tenant | upper }}}}-{{{{ matrix.tenant }}}}" }}
[policy]
retry = {{ attempts = 1 }}
"#
    );
    // The destination for bolt is `BOLT-bolt`; make that the blocked path.
    std::fs::remove_file(dir.path().join("dst/bolt")).unwrap();
    write(&dir.path().join("dst/BOLT-bolt"), b"in the way");
    write(&dir.path().join("p.toml"), p.as_bytes());
    dir
}

#[test]
fn each_combination_is_its_own_run_and_failures_are_independent() {
    let dir = setup(false, 2);
    let out = run(flowgate(dir.path()).args(["run", "p.toml", "--json"]));
    assert_eq!(out.code, 1, "one combination failed: {}", out.all());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let mut got: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let r = &o["run"];
            (
                r["params"]["matrix"]["tenant"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("acme".into(), "succeeded".into()),
            ("bolt".into(), "failed".into()),
            ("core".into(), "succeeded".into())
        ]
    );
    assert_eq!(
        std::fs::read(dir.path().join("dst/ACME-acme/data.csv")).unwrap(),
        b"tenant,acme\n"
    );
    assert_eq!(
        std::fs::read(dir.path().join("dst/CORE-core/data.csv")).unwrap(),
        b"tenant,core\n"
    );
}

#[test]
fn fail_fast_stops_starting_combinations_after_a_failure() {
    let dir = setup(true, 1);
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stdout.contains("[tenant=acme]: succeeded"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("[tenant=bolt]: failed"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("not started: tenant=core (fail_fast"),
        "{}",
        out.stdout
    );
    assert!(!dir.path().join("dst/CORE-core").exists());
}
