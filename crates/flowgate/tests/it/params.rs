//! Manual runs: parameters, `.env` beside the pipeline, and time limits.

use std::time::{Duration, Instant};

use crate::common::*;

fn pipeline(dir: &std::path::Path) {
    write(&dir.join("src/2026-11-23/a.txt"), b"a");
    write(&dir.join(".env"), b"OUT_DIR=from-dotenv\n");
    write(
        &dir.join("p.toml"),
        br#"name = "params"
[params]
day = { description = "which day to copy" }
target = { default = "daily" }
[stores]
src = { url = "file://./src" }
dst = { url = "file://./${OUT_DIR}", access = "read-write" }
[[steps]]
id = "copy"
copy = { from = "src:{{ params.day }}", to = "dst:{{ params.target }}/{{ params.day }}" }
"#,
    );
}

#[test]
fn parameters_are_checked_defaulted_and_templated() {
    let dir = tempfile::tempdir().unwrap();
    pipeline(dir.path());
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr
            .contains("parameter `day` is required: pass --param day=VALUE"),
        "{}",
        out.stderr
    );
    let out =
        run(flowgate(dir.path()).args(["run", "p.toml", "-p", "day=2026-11-23", "-p", "dya=x"]));
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("unknown parameter `dya`; declared parameters: day, target"),
        "{}",
        out.stderr
    );

    let out = run(flowgate(dir.path()).args(["run", "p.toml", "--param", "day=2026-11-23"]));
    assert_eq!(out.code, 0, "{}", out.all());
    // .env supplied OUT_DIR; `target` took its default.
    assert_eq!(
        std::fs::read(dir.path().join("from-dotenv/daily/2026-11-23/a.txt")).unwrap(),
        b"a"
    );
    // The environment wins over .env.
    let out = run(flowgate(dir.path()).env("OUT_DIR", "from-env").args([
        "run",
        "p.toml",
        "-p",
        "day=2026-11-23",
        "-p",
        "target=adhoc",
    ]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(dir.path().join("from-env/adhoc/2026-11-23/a.txt").is_file());
    let j = run(flowgate(dir.path()).args(["runs", "--json"])).stdout;
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(
        v[0]["params"],
        serde_json::json!({"day": "2026-11-23", "target": "adhoc"})
    );
}

#[test]
fn a_run_key_makes_a_manual_run_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    pipeline(dir.path());
    let args = [
        "run",
        "p.toml",
        "-p",
        "day=2026-11-23",
        "--key",
        "backfill-2026-11-23",
    ];
    let out = run(flowgate(dir.path()).args(args));
    assert_eq!(out.code, 0, "{}", out.all());
    let out = run(flowgate(dir.path()).args(args));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains(
            "nothing to do: event `manual:backfill-2026-11-23` was already handled by run"
        ),
        "{}",
        out.stdout
    );
}

#[test]
fn an_attempt_that_hangs_is_cut_off_by_its_timeout_and_retried() {
    // A server that accepts connections and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            held.push(s);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("p.toml"),
        format!(
            "name = \"hang\"\n[stores]\nremote = {{ url = \"s3://b/\", endpoint = \"http://127.0.0.1:{port}\" }}\nlocal = {{ url = \"file://./in\", access = \"read-write\" }}\n[[steps]]\nid = \"download\"\ntimeout = \"1s\"\nretry = {{ attempts = 2, backoff = \"10ms..20ms\" }}\ncopy = {{ from = \"remote:\", to = \"local:\" }}\n"
        )
        .as_bytes(),
    );
    let t0 = Instant::now();
    let out = run(flowgate(dir.path()).args(["run", "p.toml", "--json"]));
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "the time limit held: {:?}",
        t0.elapsed()
    );
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let step = &v[0]["run"]["steps"][0];
    assert_eq!(step["attempts"], 2);
    assert!(
        step["error"]
            .as_str()
            .unwrap()
            .contains("attempt timed out after 1s"),
        "{step:#}"
    );
}

#[test]
fn continuous_runs_follow_the_source_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("src.db");
    let c = rusqlite::Connection::open(&db).unwrap();
    c.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER, last_updated TEXT);
         INSERT INTO orders VALUES (1, 5, '2026-01-01 00:00:00.001');",
    )
    .unwrap();
    write(
        &dir.path().join("p.toml"),
        br#"name = "follow"
[stores]
src = { url = "sqlite://src.db" }
landing = { url = "file://./landing", access = "read-write" }
[[steps]]
id = "ingest"
extract = { from = "src", tables = ["orders"], cursor = "last_updated", to = "landing:{{ table }}/{{ run.id }}.jsonl" }
"#,
    );
    let child = flowgate(dir.path())
        .args(["run", "p.toml", "--continuous", "--every", "200ms"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let objects = |d: &std::path::Path| data_files(&d.join("landing/orders")).len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while objects(dir.path()) < 1 {
        assert!(Instant::now() < deadline, "the first row never landed");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.execute_batch("INSERT INTO orders VALUES (2, 6, '2026-01-01 00:00:00.002')")
        .unwrap();
    while objects(dir.path()) < 2 {
        assert!(Instant::now() < deadline, "the new row never landed");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(objects(dir.path()), 2, "unchanged source: no more objects");
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.matches("succeeded in").count(),
        2,
        "only runs that moved data are printed:\n{stdout}"
    );
}

#[test]
fn typed_parameters_are_checked_before_a_run_starts_and_reach_templates_canonical() {
    let dir = tempfile::tempdir().unwrap();
    let file = |default_env: &str| {
        format!(
            r#"name = "typed"
[params]
env = {{ values = ["DEV", "PROD"], default = "{default_env}" }}
sample = {{ type = "int", values = ["all"], default = "10" }}
delete_first = {{ type = "bool", default = "no" }}
project = {{ default = "CAT-BE-DEV" }}
[[steps]]
id = "show"
command = {{ argv = ["sh", "-c", "echo \"$1 $2 $3 $4\" >> seen.txt", "-", "{{{{ params.env }}}}", "{{{{ params.sample }}}}", "{{{{ params.delete_first }}}}", "{{{{ params.project | lower | strip_suffix('-dev') }}}}"] }}
"#
        )
    };
    // A default outside the allowed values is the file's mistake, found by validate.
    write(&dir.path().join("p.toml"), file("QA").as_bytes());
    let out = run(flowgate(dir.path()).args(["validate", "p.toml"]));
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.all()
            .contains("parameter `env` cannot be `QA` (allowed: DEV, PROD)"),
        "{}",
        out.all()
    );
    write(&dir.path().join("p.toml"), file("DEV").as_bytes());
    for (param, message) in [
        (
            "env=prod",
            "parameter `env` cannot be `prod` (allowed: DEV, PROD)",
        ),
        (
            "sample=some",
            "parameter `sample` must be a whole number (allowed: all), not `some`",
        ),
        (
            "delete_first=maybe",
            "parameter `delete_first` must be true or false (yes/no), not `maybe`",
        ),
    ] {
        let out = run(flowgate(dir.path()).args(["run", "p.toml", "-p", param]));
        assert_eq!(out.code, 2, "{param}: {}", out.all());
        assert!(out.stderr.contains(message), "{param}: {}", out.stderr);
    }
    assert!(!dir.path().join("seen.txt").exists(), "no run started");
    for args in [
        &["-p", "sample=all", "-p", "delete_first=YES"][..],
        &["-p", "env=PROD", "-p", "project=cat-be-dev-dev"][..],
    ] {
        let out = run(flowgate(dir.path()).args(["run", "p.toml"]).args(args));
        assert_eq!(out.code, 0, "{}", out.all());
    }
    let seen = std::fs::read_to_string(dir.path().join("seen.txt")).unwrap();
    assert_eq!(seen, "DEV all true cat-be\nPROD 10 false cat-be-dev\n");
}
