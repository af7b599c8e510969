//! KV stores beyond the built-in one: `flowgate kv --store` and `watch`
//! triggers on a real etcd (started by scripts/services.sh).

use std::path::Path;

use crate::common::*;

fn etcd() -> String {
    service_var("FLOWGATE_TEST_ETCD_URL")
}

/// The store table of the test etcd.
fn etcd_store() -> String {
    format!(r#"{{ url = "{}" }}"#, etcd())
}

/// A key no other test uses.
fn fresh_key() -> String {
    format!("journal/{}/version", uuid_like())
}

fn kv(dir: &Path, args: &[&str]) -> Ran {
    let url = etcd();
    let mut all = vec!["kv", "--store", url.as_str()];
    all.extend_from_slice(args);
    run(flowgate(dir).args(&all))
}

/// A pipeline that appends each watched value it runs to `applied.txt`.
fn poll(dir: &Path) {
    let out = run(flowgate(dir).args(["poll", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
}

#[test]
fn kv_get_set_and_watch_work_against_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let key = fresh_key();
    let out = kv(dir.path(), &["get", &key]);
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stderr.contains("is not set"), "{}", out.all());

    let out = kv(dir.path(), &["set", &key, "41"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let out = kv(dir.path(), &["set", &key, "42"]);
    assert!(
        out.stdout.contains(&format!("{key} = 42 (revision ")),
        "{}",
        out.all()
    );
    let out = kv(dir.path(), &["get", &key, "--json"]);
    let got: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(got["value"], "42", "{got}");
    assert!(got["revision"].as_i64().unwrap_or(0) > 0, "{got}");

    // `watch` prints the current value, then each change, as they happen.
    let url = etcd();
    let lines = first_lines(
        flowgate(dir.path()).args(["kv", "--store", &url, "watch", &key]),
        2,
        || assert_eq!(kv(dir.path(), &["set", &key, "43"]).code, 0),
    );
    assert!(lines[0].starts_with(&format!("{key} = 42 ")), "{lines:?}");
    assert!(lines[1].starts_with(&format!("{key} = 43 ")), "{lines:?}");
}

#[test]
fn an_etcd_watch_runs_the_newest_value_and_records_the_skipped_ones() {
    let dir = tempfile::tempdir().unwrap();
    let key = fresh_key();
    watch_pipeline(dir.path(), &etcd_store(), &key, "");
    assert_eq!(kv(dir.path(), &["set", &key, "1"]).code, 0);
    poll(dir.path());
    assert_eq!(applied(dir.path()), ["1"]);
    // Three versions while no worker looks: the newest runs (on_missed = latest,
    // the default for etcd), the two before it are recorded as skipped.
    for v in ["2", "3", "4"] {
        assert_eq!(kv(dir.path(), &["set", &key, v]).code, 0);
    }
    poll(dir.path());
    assert_eq!(applied(dir.path()), ["1", "4"]);
    let r = run_list(dir.path());
    let skipped: Vec<_> = r.iter().filter(|(s, _)| s == "skipped").collect();
    assert_eq!(skipped.len(), 2, "{r:?}");
    assert!(skipped[0].1.contains("superseded by revision"), "{r:?}");
    // Nothing new: nothing runs.
    poll(dir.path());
    assert_eq!(applied(dir.path()), ["1", "4"]);

    // `each` runs every version etcd still has, in order.
    let dir = tempfile::tempdir().unwrap();
    let key = fresh_key();
    watch_pipeline(dir.path(), &etcd_store(), &key, r#", on_missed = "each""#);
    assert_eq!(kv(dir.path(), &["set", &key, "a"]).code, 0);
    poll(dir.path());
    for v in ["b", "c"] {
        assert_eq!(kv(dir.path(), &["set", &key, v]).code, 0);
    }
    poll(dir.path());
    assert_eq!(applied(dir.path()), ["a", "b", "c"]);
}

#[test]
fn a_watch_whose_revision_etcd_compacted_runs_the_current_value_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = fresh_key();
    watch_pipeline(dir.path(), &etcd_store(), &key, r#", on_missed = "each""#);
    assert_eq!(kv(dir.path(), &["set", &key, "10"]).code, 0);
    poll(dir.path());
    assert_eq!(kv(dir.path(), &["set", &key, "11"]).code, 0);
    let out = kv(dir.path(), &["set", &key, "12"]);
    let rev: String = out
        .stdout
        .rsplit("(revision ")
        .next()
        .unwrap_or_default()
        .trim_end_matches([')', '\n'])
        .to_string();
    // Compact etcd's history up to the newest change: revision 11 is gone.
    let compact = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &service_var("FLOWGATE_TEST_ETCD_ENDPOINT"),
            "compaction",
            &rev,
        ])
        .output()
        .expect("etcdctl (scripts/services.sh installs etcd-client)");
    assert!(
        compact.status.success(),
        "{}",
        String::from_utf8_lossy(&compact.stderr)
    );
    poll(dir.path());
    // 11 can no longer be known; 12 runs once, and again never.
    assert_eq!(applied(dir.path()), ["10", "12"]);
    poll(dir.path());
    assert_eq!(applied(dir.path()), ["10", "12"]);
}

#[test]
fn a_watch_on_a_store_that_is_not_a_kv_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("p.toml"),
        br#"name = "w"
[stores]
files = { url = "file://./x" }
versions = { url = "consul://127.0.0.1:8500" }
[trigger]
watch = { store = "files", key = "k" }
[[steps]]
id = "a"
command = { argv = ["true"] }
"#,
    );
    let out = run(flowgate(dir.path()).args(["validate", "p.toml"]));
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.all().contains("store `files` is not a KV store"),
        "{}",
        out.all()
    );
    let text = std::fs::read_to_string(dir.path().join("p.toml"))
        .unwrap()
        .replace(
            r#"watch = { store = "files", key = "k" }"#,
            r#"watch = { store = "versions", key = "k", on_missed = "each" }"#,
        );
    write(&dir.path().join("p.toml"), text.as_bytes());
    let out = run(flowgate(dir.path()).args(["validate", "p.toml"]));
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.all().contains("Consul keeps no history of a key"),
        "{}",
        out.all()
    );
}

#[test]
fn kv_finds_a_store_by_its_name_in_a_pipeline_file_and_its_env_overlay() {
    let dir = tempfile::tempdir().unwrap();
    let key = fresh_key();
    // The file's own URL answers nowhere; the `qa` overlay points at etcd.
    write(
        &dir.path().join("p.toml"),
        format!(
            r#"name = "seeder"
[stores]
versions = {{ url = "etcd://127.0.0.1:9" }}
[env.qa.stores.versions]
url = "{url}"
[[steps]]
id = "a"
command = {{ argv = ["true"] }}
"#,
            url = etcd()
        )
        .as_bytes(),
    );
    let by_name = |extra: &[&str]| {
        let mut args = vec!["kv", "--store", "versions", "--pipeline", "p.toml"];
        args.extend_from_slice(extra);
        run(flowgate(dir.path()).args(&args))
    };
    let out = by_name(&["--env", "qa", "set", &key, "5"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(kv(dir.path(), &["get", &key]).stdout.trim(), "5");
    // Without the overlay: the file's own URL, which cannot be reached.
    let out = by_name(&["get", &key]);
    assert_ne!(out.code, 0, "{}", out.all());
    assert!(out.all().contains("127.0.0.1:9"), "{}", out.all());
    // A name the file does not have, or no file at all: said, with what to do.
    let out = run(flowgate(dir.path()).args([
        "kv",
        "--store",
        "vers",
        "--pipeline",
        "p.toml",
        "get",
        "k",
    ]));
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr
            .contains("has no store `vers`; its stores: versions"),
        "{}",
        out.all()
    );
    let out = run(flowgate(dir.path()).args(["kv", "--store", "versions", "get", "k"]));
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stderr.contains("add --pipeline FILE"), "{}", out.all());
}

#[test]
fn a_serving_worker_is_woken_by_an_etcd_change_not_by_its_timer() {
    let dir = tempfile::tempdir().unwrap();
    let key = fresh_key();
    watch_pipeline(dir.path(), &etcd_store(), &key, "");
    assert_eq!(kv(dir.path(), &["set", &key, "1"]).code, 0);
    let _serve = Serve(
        flowgate(dir.path())
            .args(["serve", ".", "--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the first value to run", 30, || {
        applied(dir.path()) == ["1"]
    });
    // The worker reads an external key every 30 s; a change must not wait for that.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let set_at = std::time::Instant::now();
    assert_eq!(kv(dir.path(), &["set", &key, "2"]).code, 0);
    wait_for("the new value to run", 30, || {
        applied(dir.path()) == ["1", "2"]
    });
    assert!(
        set_at.elapsed() < std::time::Duration::from_secs(10),
        "the change ran {:?} after it was set: the worker waited for its timer",
        set_at.elapsed()
    );
}
