//! Many workers, one PostgreSQL state store: each arriving event runs exactly once.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

struct Serve(Child);
impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn two_serve_workers_sharing_postgres_run_each_flag_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let state = rt.block_on(flowgate_core::testing::fresh_postgres_db());
    let dir = tempfile::tempdir().unwrap();
    let (bucket, endpoint) = fresh_s3_bucket();
    let b = bucket_dir(&bucket);
    let pipeline = format!(
        "name = \"shared\"\n[trigger]\narrival = {{ store = \"remote\", pattern = \"**/_SUCCESS\", poll = \"1s\" }}\n[stores]\nremote = {{ url = \"s3://{bucket}/\", endpoint = \"{endpoint}\" }}\nlocal = {{ url = \"file://./in\", access = \"read-write\" }}\n[[steps]]\nid = \"download\"\ncopy = {{ from = \"remote:{{{{ trigger.prefix }}}}\", to = \"local:{{{{ trigger.prefix }}}}\", exclude = [\"_SUCCESS\"] }}\n"
    );
    write(&dir.path().join("pipelines/p.toml"), pipeline.as_bytes());
    let workers: Vec<Serve> = (0..2)
        .map(|_| {
            Serve(
                flowgate(dir.path())
                    .args([
                        "serve",
                        "pipelines",
                        "--listen",
                        "127.0.0.1:0",
                        "--state",
                        &state,
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    for d in 0..8 {
        for p in 0..3 {
            write(
                &b.join(format!("day{d}/part-{p}.bin")),
                &bytes(d * 10 + p, 50_000),
            );
        }
        write(&b.join(format!("day{d}/_SUCCESS")), b"");
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let runs = loop {
        let out =
            run(flowgate(dir.path()).args(["runs", "--json", "--state", &state, "--limit", "100"]));
        let runs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
        let done = runs
            .as_array()
            .map(|r| r.iter().filter(|r| r["status"] == "succeeded").count())
            .unwrap_or(0);
        if done >= 8 {
            break runs;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of 8 flags handled: {runs:#}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    // Let both workers poll a few more times: nothing may run twice.
    std::thread::sleep(Duration::from_secs(3));
    let out =
        run(flowgate(dir.path()).args(["runs", "--json", "--state", &state, "--limit", "100"]));
    let after: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        after.as_array().unwrap().len(),
        8,
        "exactly one run per flag: {after:#}"
    );
    let mut events: Vec<i64> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event_id"].as_i64().unwrap())
        .collect();
    events.sort();
    events.dedup();
    assert_eq!(events.len(), 8);
    let workers_used: std::collections::HashSet<&str> = after
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["worker"].as_str().unwrap())
        .collect();
    assert!(!workers_used.is_empty());
    for d in 0..8u64 {
        for p in 0..3u64 {
            let got = std::fs::read(dir.path().join(format!("pipelines/in/day{d}/part-{p}.bin")))
                .unwrap();
            assert_eq!(got, bytes(d * 10 + p, 50_000));
        }
    }
    drop(workers);
}
