//! Datasets: stages chained through a dataset's parts in one run, published with
//! a manifest written last; read back as LATEST or by name; a run killed before
//! its publish leaves nothing listed.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

/// Stage 1a writes part 1b; 2a reads 1b and writes 2b (after `pause`); then publish.
fn process(dir: &Path, pause: &str) {
    write(
        &dir.join("process.toml"),
        format!(
            r#"name = "process"
[params]
tenant = {{ default = "cat-be" }}
[stores]
bucket = {{ url = "file://./bucket", access = "read-write" }}
[dataset]
name = "{{{{ params.tenant }}}}"
at = "bucket:{{{{ params.tenant }}}}/datasets"
[[steps]]
id = "1a"
command = {{ shell = "seq 1 100 > \"$FLOWGATE_OUT_B1/rows.txt\"", outputs = {{ B1 = "dataset:1b" }} }}
[[steps]]
id = "2a"
needs = ["1a"]
command = {{ shell = "{pause} sed 's/$/,x/' \"$FLOWGATE_IN_B1/rows.txt\" > \"$FLOWGATE_OUT_B2/rows.csv\"", inputs = {{ B1 = "dataset:1b" }}, outputs = {{ B2 = "dataset:2b" }} }}
[[steps]]
id = "publish"
needs = ["2a"]
publish = {{ parts = ["1b", "2b"] }}
"#
        )
        .as_bytes(),
    );
}

/// `flowgate run process.toml` in the background, its lease short (to be killed).
fn spawn_process(dir: &Path) -> std::process::Child {
    flowgate(dir)
        .args(["run", "process.toml"])
        .env("FLOWGATE_LEASE_TTL", "2s")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Counts the lines of part 2b of a dataset into test_results/<version>/<time>/.
fn tests(dir: &Path) {
    write(
        &dir.join("test.toml"),
        br#"name = "test"
[params]
dataset = { default = "LATEST" }
[stores]
bucket = { url = "file://./bucket", access = "read-write" }
[dataset]
name = "cat-be"
at = "bucket:cat-be/datasets"
read = "{{ params.dataset }}"
[[steps]]
id = "count"
command = { shell = "wc -l < \"$FLOWGATE_IN_D/rows.csv\" | tr -d ' ' > \"$FLOWGATE_OUT_R/count.txt\"", inputs = { D = "dataset:2b" }, outputs = { R = "bucket:cat-be/test_results/{{ dataset.version }}/{{ run.id }}" } }
"#,
    );
}

#[test]
fn stages_chain_through_a_published_dataset_that_tests_read_as_latest_or_by_name() {
    let dir = tempfile::tempdir().unwrap();
    process(dir.path(), "");
    tests(dir.path());
    let out = run(flowgate(dir.path()).args(["run", "process.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let published = dataset_versions(dir.path(), "cat-be");
    assert_eq!(published.len(), 1, "{published:?}");
    let v = &published[0];
    assert!(
        v.ends_with("_utc") && v.len() == "20261204_153000_utc".len(),
        "{v}"
    );
    let folder = dir.path().join("bucket/cat-be/datasets").join(v);
    let names: Vec<String> = tree(&folder).into_iter().map(|f| f.0).collect();
    assert_eq!(names, ["1b/rows.txt", "2b/rows.csv", "_manifest.json"]);
    let csv = std::fs::read_to_string(folder.join("2b/rows.csv")).unwrap();
    assert_eq!(csv.lines().count(), 100);
    assert_eq!(csv.lines().next(), Some("1,x"));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(folder.join("_manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["objects"].as_array().unwrap().len(),
        2,
        "{manifest}"
    );
    assert_eq!(manifest["parts"]["2b"]["objects"], 1, "{manifest}");

    // Tests on LATEST, twice, and on the version by name: none overwrites another.
    let named = format!("dataset={v}");
    for args in [&[][..], &[][..], &["-p", named.as_str()][..]] {
        let out = run(flowgate(dir.path()).args(["run", "test.toml"]).args(args));
        assert_eq!(out.code, 0, "{}", out.all());
    }
    let results = tree(&dir.path().join("bucket/cat-be/test_results").join(v));
    assert_eq!(
        results.len(),
        3,
        "{:?}",
        results.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    assert!(results.iter().all(|(_, body)| body == b"100\n"));
    // The run records which version LATEST was.
    let out =
        run(flowgate(dir.path()).args(["runs", "--json", "--pipeline", "test", "--limit", "1"]));
    let runs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        runs[0]["params"]["dataset"]["version"],
        v.as_str(),
        "{runs}"
    );
    // A version that was never published is refused before anything runs.
    let out =
        run(flowgate(dir.path()).args(["run", "test.toml", "-p", "dataset=20990101_000000_utc"]));
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all()
            .contains("dataset `cat-be` has no published version `20990101_000000_utc`"),
        "{}",
        out.all()
    );
    let out = run(flowgate(dir.path()).args(["datasets", "show", "cat-be"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains(&format!("version:   {v}")),
        "{}",
        out.stdout
    );
}

#[test]
fn a_run_killed_in_stage_2a_leaves_no_listed_dataset_and_the_rerun_publishes_one() {
    let dir = tempfile::tempdir().unwrap();
    process(dir.path(), "sleep 3;");
    let mut child = spawn_process(dir.path());
    let deadline = Instant::now() + Duration::from_secs(30);
    // Killed once 1b is uploaded, while 2a runs.
    while !tree(&dir.path().join("bucket"))
        .iter()
        .any(|f| f.0.ends_with("1b/rows.txt"))
    {
        assert!(Instant::now() < deadline, "1a never finished");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    child.wait().unwrap();
    assert!(
        dataset_versions(dir.path(), "cat-be").is_empty(),
        "a half-written dataset is listed"
    );
    let out = run(flowgate(dir.path()).args(["datasets", "show", "cat-be", "LATEST"]));
    assert_eq!(out.code, 2, "{}", out.all());
    // The rerun (after the killed run's lease ran out) publishes exactly one.
    std::thread::sleep(Duration::from_millis(2100));
    let out = run(flowgate(dir.path())
        .args(["run", "process.toml"])
        .env("FLOWGATE_LEASE_TTL", "2s"));
    assert_eq!(out.code, 0, "{}", out.all());
    let published = dataset_versions(dir.path(), "cat-be");
    assert_eq!(published.len(), 1, "{published:?}");
    let manifests: Vec<String> = tree(&dir.path().join("bucket"))
        .into_iter()
        .map(|f| f.0)
        .filter(|n| n.ends_with("_manifest.json"))
        .collect();
    assert_eq!(
        manifests,
        [format!("cat-be/datasets/{}/_manifest.json", published[0])]
    );
}

#[test]
fn a_matrix_of_four_tenants_publishes_three_datasets_three_at_a_time_and_times_out_the_fourth() {
    let dir = tempfile::tempdir().unwrap();
    let (port, notices) = receiver();
    write(
        &dir.path().join("sync.toml"),
        format!(
            r#"name = "sync"
[matrix]
values = {{ entry = ["DEV:CAT-BE-DEV", "PROD:CAT-BE", "PROD:DOG-NL", "DEV:HANGS-DEV"] }}
max_parallel = 3
[stores]
bucket = {{ url = "file://./bucket", access = "read-write" }}
[dataset]
name = "{{{{ (matrix.entry | split(':'))[1] | lower | strip_suffix('-dev') }}}}-{{{{ (matrix.entry | split(':'))[0] | lower }}}}"
at = "bucket:{{{{ (matrix.entry | split(':'))[1] | lower | strip_suffix('-dev') }}}}/datasets"
[[steps]]
id = "update"
timeout = "2s"
command = {{ shell = "case \"$DIR\" in HANGS*) sleep 30;; esac; sleep 0.5; echo \"$DIR\" > \"$FLOWGATE_OUT_O/tenant.txt\"", env = {{ DIR = "{{{{ (matrix.entry | split(':'))[1] }}}}" }}, outputs = {{ O = "dataset:1b" }} }}
[[steps]]
id = "publish"
needs = ["update"]
publish = {{ parts = ["1b"] }}
[policy]
retry = {{ attempts = 1 }}
[notify]
webhook = "http://127.0.0.1:{port}/slack"
"#
        )
        .as_bytes(),
    );
    let out = run(flowgate(dir.path()).args(["run", "sync.toml", "--json"]));
    assert_eq!(out.code, 1, "{}", out.all());
    for name in ["cat-be-dev", "cat-be-prod", "dog-nl-prod"] {
        assert_eq!(dataset_versions(dir.path(), name).len(), 1, "{name}");
    }
    assert!(dataset_versions(dir.path(), "hangs-dev").is_empty());
    // At most 3 ran at once, by the runs' own recorded times.
    let out = run(flowgate(dir.path()).args(["runs", "--json"]));
    let runs: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(runs.len(), 4, "{runs:#?}");
    let at = |r: &serde_json::Value, k: &str| {
        chrono::DateTime::parse_from_rfc3339(r[k].as_str().unwrap()).unwrap()
    };
    for r in &runs {
        let start = at(r, "started_at");
        let overlapping = runs
            .iter()
            .filter(|o| at(o, "started_at") <= start && start < at(o, "finished_at"))
            .count();
        assert!(
            overlapping <= 3,
            "{overlapping} runs at once at {start}: {runs:#?}"
        );
    }
    let failed: Vec<_> = runs.iter().filter(|r| r["status"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{runs:#?}");
    let error = failed[0]["error"].as_str().unwrap_or_default().to_string()
        + &failed[0]["steps"].to_string();
    assert!(
        error.contains("timed out") || error.contains("time limit"),
        "{error}"
    );
    let notices = notices.lock().unwrap().clone();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(notices[0].contains("HANGS-DEV"), "{notices:?}");
}

/// The JUnit file's suite: (tests, failures, failure messages), by a real XML parser.
fn junit(xml: &[u8]) -> (String, String, Vec<String>) {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(xml);
    let (mut tests, mut failures, mut messages) = (String::new(), String::new(), Vec::new());
    let mut buf = Vec::new();
    loop {
        match reader
            .read_event_into(&mut buf)
            .expect("junit.xml is not XML")
        {
            Event::Start(e) | Event::Empty(e) => {
                let attr = |name: &[u8]| {
                    e.attributes()
                        .flatten()
                        .find(|a| a.key.as_ref() == name)
                        .map(|a| a.unescape_value().unwrap().into_owned())
                        .unwrap_or_default()
                };
                match e.name().as_ref() {
                    b"testsuite" => (tests, failures) = (attr(b"tests"), attr(b"failures")),
                    b"failure" => messages.push(attr(b"message")),
                    _ => {}
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    (tests, failures, messages)
}

#[test]
fn checks_on_a_sample_and_on_all_records_store_json_and_junit_per_run() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("make.toml"),
        br#"name = "make"
[stores]
bucket = { url = "file://./bucket", access = "read-write" }
[dataset]
name = "dog-nl"
at = "bucket:dog-nl/datasets"
[[steps]]
id = "3a"
command = { shell = "o=\"$FLOWGATE_OUT_P/rows.csv\"; echo id,status > $o; seq 1 50 | sed 's/$/,ok/' >> $o; echo 7,late >> $o", outputs = { P = "dataset:3b" } }
[[steps]]
id = "publish"
needs = ["3a"]
publish = { parts = ["3b"] }
"#,
    );
    write(
        &dir.path().join("check.toml"),
        br#"name = "check"
[params]
dataset = { default = "LATEST" }
sample = { type = "int", values = ["all"], default = "all" }
[stores]
bucket = { url = "file://./bucket", access = "read-write" }
[dataset]
name = "dog-nl"
at = "bucket:dog-nl/datasets"
read = "{{ params.dataset }}"
[[steps]]
id = "checks"
[steps.test]
data = "dataset:3b"
sample = "{{ params.sample }}"
results = "bucket:dog-nl/test_results/{{ dataset.version }}/{{ run.id }}"
checks = [
  { row_count = { min = 1 } },
  { not_null = "id" },
  { unique = "id" },
  { accepted_values = { column = "status", values = ["ok"] }, severity = "warn" },
  { columns = ["id", "status"] },
]
"#,
    );
    assert_eq!(run(flowgate(dir.path()).args(["run", "make.toml"])).code, 0);
    let out = run(flowgate(dir.path()).args(["run", "check.toml", "-p", "sample=10"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout
            .contains("5 checks passed, 0 failed, 0 warned on 10 records"),
        "{}",
        out.stdout
    );
    let out = run(flowgate(dir.path()).args(["run", "check.toml"]));
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stdout
            .contains("3 checks passed, 1 failed, 1 warned on 51 records"),
        "{}",
        out.stdout
    );
    // Two runs on one dataset: two result folders, each with both files.
    let results = tree(&dir.path().join("bucket/dog-nl/test_results"));
    let names: Vec<&str> = results
        .iter()
        .map(|f| f.0.rsplit('/').next().unwrap())
        .collect();
    assert_eq!(
        names.len(),
        4,
        "{:?}",
        results.iter().map(|f| &f.0).collect::<Vec<_>>()
    );
    let mut suites = Vec::new();
    for (name, body) in &results {
        if name.ends_with("junit.xml") {
            suites.push(junit(body));
        } else {
            let doc: serde_json::Value = serde_json::from_slice(body).unwrap();
            let records = doc["records"].as_u64().unwrap();
            assert!(records == 10 || records == 51, "{doc}");
            if records == 51 {
                let unique = &doc["checks"][2];
                assert_eq!(unique["passed"], false, "{doc}");
                assert_eq!(
                    unique["examples"][0],
                    "dog-nl/datasets/".to_string()
                        + doc["dataset"]["version"].as_str().unwrap()
                        + "/3b/rows.csv:52 (\"7\")",
                    "{doc}"
                );
            }
        }
    }
    suites.sort();
    assert_eq!(
        suites,
        [
            ("5".to_string(), "0".to_string(), vec![]),
            (
                "5".to_string(),
                "1".to_string(),
                vec!["1 records repeat a value of `id`".to_string()]
            ),
        ]
    );
}

#[test]
fn a_rerun_continues_a_failed_run_in_its_dataset_without_the_steps_it_completed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 1a counts its runs; 2a fails until the file `fixed` exists.
    process(d, "test -f fixed || exit 1;");
    let text = std::fs::read_to_string(d.join("process.toml")).unwrap();
    write(
        &d.join("process.toml"),
        text.replace(
            "shell = \"seq 1 100",
            "shell = \"echo x >> count-1a.txt; seq 1 100",
        )
        .as_bytes(),
    );
    let out = run(flowgate(d).args(["run", "process.toml", "--json"]));
    assert_eq!(out.code, 1, "{}", out.all());
    let runs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let id = runs[0]["run"]["id"].as_str().unwrap().to_string();
    let version = runs[0]["run"]["params"]["dataset"]["version"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(dataset_versions(d, "cat-be").is_empty());
    write(&d.join("fixed"), b"");
    let out = run(flowgate(d).args(["runs", "rerun", &id[..8], "process.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout
            .contains(&format!("completed by run {id}; not run again")),
        "{}",
        out.stdout
    );
    assert_eq!(
        dataset_versions(d, "cat-be"),
        [version],
        "the failed run's own version, completed"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("count-1a.txt")).unwrap(),
        "x\n",
        "1a ran once"
    );
    // A run that succeeded is not run again.
    let out = run(flowgate(d).args(["runs", "rerun", &id, "process.toml"]));
    assert_eq!(
        out.code,
        0,
        "the failed run itself may be run again: {}",
        out.all()
    );
    let last = run(flowgate(d).args(["runs", "--json", "--limit", "1"]));
    let last: serde_json::Value = serde_json::from_str(&last.stdout).unwrap();
    let ok_id = last[0]["id"].as_str().unwrap().to_string();
    let out = run(flowgate(d).args(["runs", "rerun", &ok_id, "process.toml"]));
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr
            .contains("only a failed run of `process` can be run again"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_run_killed_while_publishing_is_listed_whole_or_not_at_all_and_then_publishes_once() {
    for case in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        process(d, "");
        let mut child = spawn_process(d);
        // Killed the moment the manifest is written: before or after the state
        // store's row, whichever the race gives.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !tree(&d.join("bucket"))
            .iter()
            .any(|f| f.0.ends_with("_manifest.json"))
            && child.try_wait().unwrap().is_none()
        {
            assert!(Instant::now() < deadline, "case {case}: no manifest");
        }
        let _ = child.kill();
        child.wait().unwrap();
        let listed = dataset_versions(d, "cat-be");
        eprintln!(
            "case {case}: killed with the version {}",
            if listed.is_empty() {
                "not listed"
            } else {
                "listed"
            }
        );
        if listed.is_empty() {
            // Not published: not LATEST either; the rerun publishes exactly one.
            let out = run(flowgate(d).args(["datasets", "show", "cat-be", "LATEST"]));
            assert_eq!(out.code, 2, "case {case}: {}", out.all());
            std::thread::sleep(Duration::from_millis(2100));
            let out = run(flowgate(d)
                .args(["run", "process.toml"])
                .env("FLOWGATE_LEASE_TTL", "2s"));
            assert_eq!(out.code, 0, "case {case}: {}", out.all());
        }
        let listed = dataset_versions(d, "cat-be");
        assert_eq!(listed.len(), 1, "case {case}: {listed:?}");
        let folder = d.join("bucket/cat-be/datasets").join(&listed[0]);
        let names: Vec<String> = tree(&folder).into_iter().map(|f| f.0).collect();
        assert_eq!(
            names,
            ["1b/rows.txt", "2b/rows.csv", "_manifest.json"],
            "case {case}"
        );
    }
}
