//! `serve` runs watch and schedule triggers: one run per KV revision, one per tick.

use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

fn serve(dir: &std::path::Path) -> Serve {
    Serve(
        flowgate(dir)
            .args(["serve", "pipelines", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn runs(dir: &std::path::Path) -> serde_json::Value {
    let out =
        run(flowgate(dir).args(["runs", "--json", "--state", "pipelines/.flowgate/state.db"]));
    serde_json::from_str(&out.stdout).unwrap_or(serde_json::Value::Null)
}

#[test]
fn a_new_kv_revision_starts_one_run_with_the_value() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("pipelines/src/journal.txt"), b"journal");
    write(
        &dir.path().join("pipelines/p.toml"),
        br#"name = "rollout"
[trigger]
watch = { key = "release/version" }
[stores]
src = { url = "file://./src" }
dst = { url = "file://./dst", access = "read-write" }
[[steps]]
id = "copy"
copy = { from = "src:", to = "dst:{{ trigger.value }}", manifest = "" }
"#,
    );
    let state = ["--state", "pipelines/.flowgate/state.db"];
    let out = run(flowgate(dir.path())
        .args(["kv", "set", "release/version", "1.0"])
        .args(state));
    assert_eq!(out.code, 0, "{}", out.all());
    let _s = serve(dir.path());
    let dst = dir.path().join("pipelines/dst");
    wait_for("the 1.0 run", 30, || dst.join("1.0/journal.txt").exists());
    let out = run(flowgate(dir.path())
        .args(["kv", "set", "release/version", "1.1"])
        .args(state));
    assert!(out.stdout.contains("revision"), "{}", out.stdout);
    wait_for("the 1.1 run", 30, || dst.join("1.1/journal.txt").exists());
    wait_for("two finished runs", 10, || {
        runs(dir.path())
            .as_array()
            .is_some_and(|r| r.len() == 2 && r.iter().all(|r| r["status"] == "succeeded"))
    });
    std::thread::sleep(Duration::from_secs(2));
    let r = runs(dir.path());
    assert_eq!(
        r.as_array().unwrap().len(),
        2,
        "no run without a new revision: {r:#}"
    );
    assert!(
        r.as_array()
            .unwrap()
            .iter()
            .all(|r| r["trigger"] == "watch")
    );
    let out = run(flowgate(dir.path())
        .args(["kv", "get", "release/version", "--json"])
        .args(state));
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["value"], "1.1");
}

#[test]
fn an_interval_schedule_runs_once_per_tick() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("pipelines/src/a.txt"), b"a");
    write(
        &dir.path().join("pipelines/p.toml"),
        br#"name = "ticker"
[trigger]
schedule = "every 2s"
[stores]
src = { url = "file://./src" }
dst = { url = "file://./dst", access = "read-write" }
[[steps]]
id = "copy"
copy = { from = "src:", to = "dst:{{ trigger.tick | strftime('%H%M%S') }}" }
"#,
    );
    let _s = serve(dir.path());
    wait_for("three scheduled runs", 30, || {
        runs(dir.path())
            .as_array()
            .is_some_and(|r| r.iter().filter(|r| r["status"] == "succeeded").count() >= 3)
    });
    let r = runs(dir.path());
    let ticks: Vec<&str> = r
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["trigger"].as_str().unwrap())
        .collect();
    assert!(ticks.iter().all(|t| *t == "schedule"), "{ticks:?}");
    // Each tick wrote its own folder: distinct ticks, no tick run twice.
    let mut folders: Vec<String> = std::fs::read_dir(dir.path().join("pipelines/dst"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    folders.sort();
    let n = folders.len();
    folders.dedup();
    assert_eq!(folders.len(), n);
    assert!(n >= 3, "{folders:?}");
    for w in folders.windows(2) {
        let a: u32 = w[0].parse().unwrap();
        let b: u32 = w[1].parse().unwrap();
        assert!(b > a, "{folders:?}");
    }
}

#[test]
fn manual_runs_over_http_are_checked_and_deduplicated() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("pipelines/src/2026-11-23/a.txt"), b"a");
    write(
        &dir.path().join("pipelines/p.toml"),
        br#"name = "by-hand"
[params]
day = {}
[stores]
src = { url = "file://./src" }
dst = { url = "file://./dst", access = "read-write" }
[[steps]]
id = "copy"
copy = { from = "src:{{ params.day }}", to = "dst:{{ params.day }}" }
"#,
    );
    let port = free_port();
    let _s = Serve(
        flowgate(dir.path())
            .args([
                "serve",
                "pipelines",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the HTTP endpoint", 20, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let (status, body) = http(port, "GET", "/pipelines", None);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"name\":\"by-hand\"") && body.contains("\"params\":[\"day\"]"),
        "{body}"
    );

    let (status, body) = http(port, "POST", "/pipelines/nope/runs", Some("{}"));
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("by-hand"),
        "the known pipelines are listed: {body}"
    );
    let (status, body) = http(port, "POST", "/pipelines/by-hand/runs", Some("{}"));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("parameter `day` is required"), "{body}");

    let req = r#"{"params": {"day": "2026-11-23"}, "key": "2026-11-23"}"#;
    let (status, body) = http(port, "POST", "/pipelines/by-hand/runs", Some(req));
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("\"key\":\"manual:2026-11-23\""), "{body}");
    wait_for("the copy", 20, || {
        dir.path().join("pipelines/dst/2026-11-23/a.txt").exists()
    });
    wait_for("the run to finish", 20, || {
        runs(dir.path())
            .as_array()
            .is_some_and(|r| r.len() == 1 && r[0]["status"] == "succeeded")
    });
    // The same key again: accepted, but nothing runs twice.
    let (status, _) = http(port, "POST", "/pipelines/by-hand/runs", Some(req));
    assert_eq!(status, 202);
    std::thread::sleep(Duration::from_millis(1500));
    let r = runs(dir.path());
    assert_eq!(r.as_array().unwrap().len(), 1, "{r:#}");
    assert_eq!(r[0]["params"]["day"], "2026-11-23");
}
