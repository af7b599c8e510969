//! The journal-rollout example end to end: a version set in etcd, Consul or the
//! built-in KV is imported into both clusters (schemas of a fresh PostgreSQL
//! database) of each environment by the example's own importer, which counts
//! every call and records each import id with its changes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// Where the watched key lives.
#[derive(Clone, Copy, Debug)]
enum Kv {
    Builtin,
    Etcd,
    Consul,
}

/// A copy of examples/journal-rollout with `versions` journals (one conflicting),
/// and an importer script that runs the example's importer after `delay`.
struct Rollout {
    dir: tempfile::TempDir,
    pg: Pg,
    kv: Kv,
    key: String,
}

const ENVS: [&str; 4] = ["dev", "qa", "dit", "prod"];

impl Rollout {
    fn new(kv: Kv, versions: u32, conflicting: u32) -> Rollout {
        let dir = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/journal-rollout");
        write(
            &dir.path().join("pipeline.toml"),
            &std::fs::read(src.join("pipeline.toml")).unwrap(),
        );
        let r = Rollout {
            dir,
            pg: Pg::new(),
            kv,
            key: format!("journal/{}/version", uuid_like()),
        };
        r.importer("");
        let out = run(Command::new(bin())
            .args(["example-journal-rollout", "generate", "--out"])
            .arg(r.path().join("artifacts"))
            .args([
                "--versions",
                &versions.to_string(),
                "--conflicting",
                &conflicting.to_string(),
            ]));
        assert_eq!(out.code, 0, "{}", out.all());
        r
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The importer each target runs: the example's, after `before` (shell).
    fn importer(&self, before: &str) {
        let script = format!(
            "#!/bin/sh\n{before}\nexec '{}' example-journal-rollout \"$@\"\n",
            bin().display()
        );
        let path = self.path().join("importer.sh");
        write(&path, script.as_bytes());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn flowgate(&self) -> Command {
        let mut c = flowgate(self.path());
        c.env("JOURNAL_IMPORTER", self.path().join("importer.sh"))
            .env("CLUSTERS_DB", &self.pg.url)
            .env("JOURNAL_KEY", &self.key);
        match self.kv {
            Kv::Builtin => c.env("JOURNAL_KV", "state"),
            Kv::Etcd => c
                .env("JOURNAL_KV", "kv")
                .env("JOURNAL_KV_URL", service_var("FLOWGATE_TEST_ETCD_URL")),
            Kv::Consul => c
                .env("JOURNAL_KV", "kv")
                .env("JOURNAL_KV_URL", service_var("FLOWGATE_TEST_CONSUL_URL"))
                .env(
                    "CONSUL_HTTP_TOKEN",
                    service_var("FLOWGATE_TEST_CONSUL_TOKEN"),
                ),
        };
        c
    }

    /// The seeder: `flowgate kv set` on the pipeline's store.
    fn set(&self, version: &str) {
        let store = match self.kv {
            Kv::Builtin => vec![],
            _ => vec!["--store", "kv", "--pipeline", "pipeline.toml"],
        };
        let out = run(self
            .flowgate()
            .arg("kv")
            .args(store)
            .args(["set", &self.key, version]));
        assert_eq!(out.code, 0, "{}", out.all());
    }

    fn poll(&self, env: &str) -> Ran {
        run(self
            .flowgate()
            .args(["--env", env, "poll", "pipeline.toml"]))
    }

    fn poll_ok(&self, env: &str) {
        let out = self.poll(env);
        assert_eq!(out.code, 0, "{env}: {}", out.all());
    }

    /// A cluster's entities, sorted.
    fn entities(&self, cluster: &str) -> Vec<String> {
        self.column(&format!(
            "SELECT entity FROM {cluster}.entities ORDER BY entity"
        ))
    }

    /// The versions a cluster applied, in order, and how many times each call ended how.
    fn imports(&self, cluster: &str) -> Vec<String> {
        self.column(&format!(
            "SELECT version FROM {cluster}.imports ORDER BY version"
        ))
    }

    fn calls(&self, cluster: &str, outcome: &str) -> usize {
        self.column(&format!(
            "SELECT import_id FROM {cluster}.import_calls WHERE outcome = '{outcome}'"
        ))
        .len()
    }

    fn column(&self, sql: &str) -> Vec<String> {
        self.pg
            .rows(sql)
            .into_iter()
            .map(|r| r[0].clone().unwrap_or_default())
            .collect()
    }

    /// Every audit record written so far.
    fn audit(&self) -> Vec<serde_json::Value> {
        tree(&self.path().join("audit"))
            .iter()
            .flat_map(|(_, body)| {
                String::from_utf8_lossy(body)
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// What version 2 leaves in a fresh cluster: the tech-head changes, and the
/// business-head ones where the environment imports both.
fn version_2(both: bool) -> Vec<String> {
    let mut e = strings(&["tech:2-0", "tech:2-1", "tech:2-2"]);
    if both {
        e = [strings(&["biz:2-0", "biz:2-1"]), e].concat();
    }
    e
}

fn end_to_end(kv: Kv) {
    let r = Rollout::new(kv, 3, 0);
    r.set("1.0.2");
    for env in ENVS {
        r.poll_ok(env);
    }
    for env in ENVS {
        let both = matches!(env, "qa" | "dit");
        for cluster in ["modelling", "execution"] {
            let c = format!("{env}_{cluster}");
            assert_eq!(r.entities(&c), version_2(both), "{kv:?} {c}");
            assert_eq!(r.imports(&c), ["1.0.2"], "{kv:?} {c}");
        }
    }
    let audit = r.audit();
    assert_eq!(audit.len(), 8, "{kv:?}: {audit:#?}");
    for env in ENVS {
        for cluster in ["modelling", "execution"] {
            let row = audit
                .iter()
                .find(|a| a["env"] == env && a["target"] == cluster)
                .unwrap_or_else(|| panic!("{kv:?}: no audit row for {env}/{cluster}: {audit:#?}"));
            assert_eq!(row["outcome"], "imported", "{row}");
            assert_eq!(row["version"], "1.0.2", "{row}");
            let kinds = if matches!(env, "qa" | "dit") {
                serde_json::json!(["business_head", "tech_head"])
            } else {
                serde_json::json!(["tech_head"])
            };
            assert_eq!(row["kinds_kept"], kinds, "{row}");
            assert_eq!(row["records_in"], 7, "{row}");
        }
    }
    // The same value set again imports nothing again.
    r.set("1.0.2");
    for env in ENVS {
        r.poll_ok(env);
        for cluster in ["modelling", "execution"] {
            let c = format!("{env}_{cluster}");
            assert_eq!(r.calls(&c, "applied"), 1, "{kv:?} {c}");
            assert_eq!(
                r.calls(&c, "held-already"),
                0,
                "{kv:?} {c}: the importer was not even asked"
            );
        }
    }
}

#[test]
fn a_version_set_in_etcd_reaches_both_clusters_of_every_environment_with_its_kinds() {
    end_to_end(Kv::Etcd);
}

#[test]
fn a_version_set_in_consul_reaches_both_clusters_of_every_environment_with_its_kinds() {
    end_to_end(Kv::Consul);
}

#[test]
fn three_versions_set_while_the_watcher_was_stopped_apply_the_latest_and_say_so_once() {
    let r = Rollout::new(Kv::Etcd, 4, 0);
    let (port, notices) = receiver();
    let poll = || {
        let out = run(r
            .flowgate()
            .env("ROLLOUT_WEBHOOK", format!("http://127.0.0.1:{port}/hook"))
            .args(["--env", "dev", "poll", "pipeline.toml"]));
        assert_eq!(out.code, 0, "{}", out.all());
    };
    r.set("1.0.1");
    poll();
    for v in ["1.0.2", "1.0.3", "1.0.4"] {
        r.set(v);
    }
    poll();
    poll();
    for c in ["dev_modelling", "dev_execution"] {
        assert_eq!(r.imports(c), ["1.0.1", "1.0.4"], "{c}");
        assert_eq!(
            r.entities(c),
            strings(&[
                "tech:1-0", "tech:1-1", "tech:1-2", "tech:4-0", "tech:4-1", "tech:4-2"
            ]),
            "{c}"
        );
    }
    let runs = run_list(r.path());
    let skipped: Vec<_> = runs.iter().filter(|(s, _)| s == "skipped").collect();
    assert_eq!(skipped.len(), 2, "{runs:?}");
    let notices = notices.lock().unwrap().clone();
    assert_eq!(
        notices.len(),
        1,
        "one notice for the pass that skipped: {notices:?}"
    );
    assert!(
        notices[0].contains("1.0.2")
            && notices[0].contains("1.0.3")
            && notices[0].contains("superseded"),
        "{notices:?}"
    );
}

#[test]
fn a_conflicting_journal_is_set_aside_its_owners_told_and_the_next_version_rolls_out() {
    let r = Rollout::new(Kv::Builtin, 3, 2);
    let (exec_port, exec_notices) = receiver();
    let (model_port, model_notices) = receiver();
    let poll = |env: &str| {
        run(r
            .flowgate()
            .env(
                "EXECUTION_OWNERS_WEBHOOK",
                format!("http://127.0.0.1:{exec_port}/owners"),
            )
            .env(
                "MODELLING_OWNERS_WEBHOOK",
                format!("http://127.0.0.1:{model_port}/owners"),
            )
            .args(["--env", env, "poll", "pipeline.toml"]))
    };
    r.set("1.0.1");
    for env in ["dev", "prod"] {
        assert_eq!(poll(env).code, 0);
    }
    r.set("1.0.2");
    for env in ["dev", "prod"] {
        let out = poll(env);
        assert_eq!(out.code, 1, "{env}: {}", out.all());
        assert!(
            out.stdout
                .contains("modelling imported, execution rejected"),
            "{env}: {}",
            out.all()
        );
    }
    // dev may write to the artifact store; prod may not, so its copy is local.
    for (env, folder) in [
        ("dev", "artifacts/failed/1.0.2"),
        ("prod", "failed/failed/1.0.2"),
    ] {
        let failed = tree(&r.path().join(folder));
        let names: Vec<_> = failed.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(names, ["error.json", "journal.jsonl.gz"], "{env}");
        let original =
            std::fs::read(r.path().join("artifacts/journals/1.0.2/journal.jsonl.gz")).unwrap();
        assert_eq!(
            failed[1].1, original,
            "{env}: the journal as it was downloaded"
        );
        let error: serde_json::Value = serde_json::from_slice(&failed[0].1).unwrap();
        let rejection = &error["rejections"][0];
        assert_eq!(rejection["cluster"], "execution", "{error}");
        assert_eq!(rejection["env"], env, "{error}");
        assert!(
            rejection["reason"]
                .as_str()
                .unwrap()
                .contains("above its cap of 1000"),
            "{error}"
        );
        assert_eq!(rejection["records_in"], 8, "{error}");
        assert_eq!(rejection["records_out"], 5, "{error}");
        assert_eq!(
            r.imports(&format!("{env}_modelling")),
            ["1.0.1", "1.0.2"],
            "{env}"
        );
        assert_eq!(r.imports(&format!("{env}_execution")), ["1.0.1"], "{env}");
    }
    assert_eq!(
        exec_notices.lock().unwrap().len(),
        2,
        "one notice per environment's rejection"
    );
    assert!(exec_notices.lock().unwrap()[0].contains("`execution` rejected journal version 1.0.2"));
    assert_eq!(model_notices.lock().unwrap().len(), 0);
    let audit = r.audit();
    let rejected: Vec<_> = audit
        .iter()
        .filter(|a| a["outcome"] == "rejected")
        .collect();
    assert_eq!(rejected.len(), 2, "{audit:#?}");
    // The next version rolls out to both clusters.
    r.set("1.0.3");
    for env in ["dev", "prod"] {
        assert_eq!(poll(env).code, 0);
        assert_eq!(
            r.imports(&format!("{env}_modelling")),
            ["1.0.1", "1.0.2", "1.0.3"]
        );
        assert_eq!(r.imports(&format!("{env}_execution")), ["1.0.1", "1.0.3"]);
    }
}

/// The run's error, by `runs --json`.
fn last_error(r: &Rollout, env: &str) -> String {
    let out = run(r.flowgate().args(["--env", env, "runs", "--json"]));
    let runs: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.all()));
    runs[0]["error"].as_str().unwrap_or_default().to_string()
}

#[test]
fn bad_input_is_named_and_nothing_is_imported_anywhere() {
    let r = Rollout::new(Kv::Builtin, 1, 0);
    // An unknown key: the watcher says it is not set.
    let out = r.poll("qa");
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.all().contains(&format!("`{}` is not set", r.key)),
        "{}",
        out.all()
    );
    // A manual run has no watched value: it says what to do.
    let out = run(r.flowgate().args(["--env", "qa", "run", "pipeline.toml"]));
    assert_eq!(out.code, 1, "{}", out.all());
    let error = last_error(&r, "qa");
    assert!(error.contains("this run has no watched value: set the watched key, or give the step `version = \"{{ params.version }}\"`"), "{error}");
    // A value that is not a version.
    r.set("1.0.1; rm -rf /");
    let out = r.poll("qa");
    assert_eq!(out.code, 1, "{}", out.all());
    let error = last_error(&r, "qa");
    assert!(
        error.contains(&format!(
            "the value of key `{}` in store `state` is not a version: \"1.0.1; rm -rf /\"",
            r.key
        )),
        "{error}"
    );
    // A journal that is not gzip.
    write(
        &r.path().join("artifacts/journals/2.0.0/journal.jsonl.gz"),
        b"this is not gzip",
    );
    r.set("2.0.0");
    assert_eq!(r.poll("qa").code, 1);
    let error = last_error(&r, "qa");
    assert!(
        error.contains(
            "journal `artifacts:journals/2.0.0/journal.jsonl.gz`: cannot be read: not gzip"
        ),
        "{error}"
    );
    // A journal whose third record is of a kind nobody declared.
    let lines = [
        r#"{"id":"a","kind":"set","mandator":"tech_head","entity":"tech:x","payload":{"limit":1}}"#,
        r#"{"id":"b","kind":"set","mandator":"business_head","entity":"biz:x","payload":{"limit":1}}"#,
        r#"{"id":"c","kind":"set","mandator":"ops_head","entity":"ops:x","payload":{"limit":1}}"#,
    ];
    write(
        &r.path().join("artifacts/journals/3.0.0/journal.jsonl"),
        lines.join("\n").as_bytes(),
    );
    write(
        &r.path().join("artifacts/journals/3.0.0/journal.jsonl.gz"),
        &gzip(lines.join("\n").as_bytes()),
    );
    r.set("3.0.0");
    assert_eq!(r.poll("qa").code, 1);
    let error = last_error(&r, "qa");
    assert!(error.contains("journal `artifacts:journals/3.0.0/journal.jsonl.gz`: line 3: unknown kind `ops_head` in field `mandator` (known: tech_head, business_head); nothing was imported"), "{error}");
    for c in ["qa_modelling", "qa_execution"] {
        assert!(
            r.pg.rows(&format!(
                "SELECT 1 FROM information_schema.tables WHERE table_schema = '{c}'"
            ))
            .is_empty(),
            "{c} was never even asked"
        );
    }
    let audit = r.audit();
    assert!(audit.iter().all(|a| a["outcome"] == "failed"), "{audit:#?}");
}

fn gzip(body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body).unwrap();
    gz.finish().unwrap()
}

#[test]
fn sigkill_at_20_seeded_points_during_download_and_import_imports_each_cluster_once() {
    let mut next = seeded(0x7a11);
    for case in 0..20 {
        let r = Rollout::new(Kv::Builtin, 1, 0);
        // Each import takes a while, so kills land before, inside and after it.
        r.importer("sleep 0.2");
        r.set("1.0.1");
        let delay = Duration::from_millis(next(900));
        let mut child = r
            .flowgate()
            .args(["--env", "qa", "poll", "pipeline.toml"])
            .env("FLOWGATE_LEASE_TTL", "2s")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill(); // SIGKILL (a no-op when it already finished)
        child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = run(r
                .flowgate()
                .args(["--env", "qa", "poll", "pipeline.toml"])
                .env("FLOWGATE_LEASE_TTL", "2s"));
            assert_eq!(
                out.code,
                0,
                "case {case} (killed after {delay:?}): {}",
                out.all()
            );
            let runs = run_list(r.path());
            if runs.iter().any(|(s, _)| s == "succeeded") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "case {case}: never finished: {runs:?}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        // A killed worker's importer may still be finishing: wait for it.
        std::thread::sleep(Duration::from_millis(400));
        eprintln!(
            "case {case}: killed after {delay:?}; importer calls that found the import already held: {}",
            r.calls("qa_modelling", "held-already") + r.calls("qa_execution", "held-already")
        );
        for c in ["qa_modelling", "qa_execution"] {
            assert_eq!(
                r.imports(c),
                ["1.0.1"],
                "case {case} (killed after {delay:?}): {c}"
            );
            assert_eq!(
                r.calls(c, "applied"),
                1,
                "case {case} (killed after {delay:?}): {c} applied twice"
            );
            assert_eq!(
                r.entities(c),
                strings(&["biz:1-0", "biz:1-1", "tech:1-0", "tech:1-1", "tech:1-2"]),
                "case {case}: {c}"
            );
        }
    }
}

#[test]
fn a_csv_zstd_journal_goes_to_an_http_and_a_sql_target_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Pg::new();
    let (port, bodies) = receiver();
    let csv = "id,kind,mandator,amount\n1,set,tech_head,10\n2,set,business_head,20\n3,delete,tech_head,\n";
    write(
        &dir.path().join("artifacts/journals/7.1/journal.csv.zst"),
        &zstd::encode_all(csv.as_bytes(), 3).unwrap(),
    );
    write(
        &dir.path().join("p.toml"),
        format!(
            r#"name = "journal-targets"
[trigger]
watch = {{ key = "v" }}
[stores]
artifacts = {{ url = "file://./artifacts" }}
db = {{ url = "{url}", access = "read-write" }}
[[steps]]
id = "import"
[steps.import]
journal = "artifacts:journals/{{{{ version }}}}/journal.csv.zst"
kinds = ["set", "delete"]
keep = "record.mandator == 'tech_head'"
audit_table = "db:import_audit"
[[steps.import.targets]]
name = "web"
http = "http://127.0.0.1:{port}/import"
[[steps.import.targets]]
name = "table"
sql = "db:public.journal"
"#,
            url = pg.url
        )
        .as_bytes(),
    );
    for _ in 0..2 {
        let out = run(flowgate(dir.path()).args(["kv", "set", "v", "7.1"]));
        assert_eq!(out.code, 0, "{}", out.all());
        let out = run(flowgate(dir.path()).args(["poll", "p.toml"]));
        assert_eq!(out.code, 0, "{}", out.all());
    }
    let bodies = bodies.lock().unwrap().clone();
    assert_eq!(
        bodies.len(),
        1,
        "the second value asked no target again: {bodies:?}"
    );
    let lines: Vec<serde_json::Value> = bodies[0]
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        [
            serde_json::json!({"id": "1", "kind": "set", "mandator": "tech_head", "amount": "10"}),
            serde_json::json!({"id": "3", "kind": "delete", "mandator": "tech_head", "amount": ""}),
        ]
    );
    let rows = pg.rows("SELECT id, kind, amount FROM public.journal ORDER BY id");
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        rows,
        [
            vec![s("1"), s("set"), s("10")],
            vec![s("3"), s("delete"), s("")]
        ]
    );
    // The audit table: one row per target and attempt.
    let audit = pg.rows("SELECT target, outcome, version, records_in, records_out, kinds_kept FROM public.import_audit ORDER BY time, target");
    assert_eq!(
        audit,
        [
            vec![
                s("table"),
                s("imported"),
                s("7.1"),
                s("3"),
                s("2"),
                s(r#"["delete","set"]"#)
            ],
            vec![
                s("web"),
                s("imported"),
                s("7.1"),
                s("3"),
                s("2"),
                s(r#"["delete","set"]"#)
            ],
            vec![
                s("table"),
                s("already-imported"),
                s("7.1"),
                None,
                None,
                None
            ],
            vec![s("web"), s("already-imported"), s("7.1"), None, None, None],
        ]
    );
}

#[test]
fn journals_come_from_an_s3_bucket_and_a_download_that_keeps_failing_is_a_failed_run_audited_and_told()
 {
    let r = Rollout::new(Kv::Builtin, 2, 0);
    let (bucket, _) = fresh_s3_bucket();
    for (name, body) in tree(&r.path().join("artifacts")) {
        write(&bucket_dir(&bucket).join(name), &body);
    }
    std::fs::remove_dir_all(r.path().join("artifacts")).unwrap();
    let (port, notices) = receiver();
    let poll = |endpoint: &str| {
        run(r
            .flowgate()
            .env("ARTIFACTS_URL", format!("s3://{bucket}"))
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("ROLLOUT_WEBHOOK", format!("http://127.0.0.1:{port}/hook"))
            .args(["--env", "qa", "poll", "pipeline.toml"]))
    };
    r.set("1.0.1");
    let out = poll(&service_var("FLOWGATE_TEST_S3_ENDPOINT"));
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(r.imports("qa_modelling"), ["1.0.1"]);
    assert_eq!(r.imports("qa_execution"), ["1.0.1"]);
    // The artifact store stops answering: every attempt fails, then the run.
    r.set("1.0.2");
    let out = poll(&format!("http://127.0.0.1:{}", free_port()));
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.stdout.contains("4 attempts"), "{}", out.all());
    let error = last_error(&r, "qa");
    assert!(
        error.contains("downloading journal `artifacts:journals/1.0.2/journal.jsonl.gz`"),
        "{error}"
    );
    let failed: Vec<_> = r
        .audit()
        .into_iter()
        .filter(|a| a["version"] == "1.0.2")
        .collect();
    assert_eq!(
        failed.len(),
        8,
        "both targets, each of the 4 attempts: {failed:#?}"
    );
    assert!(
        failed.iter().all(|a| a["outcome"] == "failed"
            && a["reason"]
                .as_str()
                .unwrap()
                .contains("downloading journal")),
        "{failed:#?}"
    );
    let notices = notices.lock().unwrap().clone();
    assert_eq!(notices.len(), 1, "{notices:?}");
    assert!(notices[0].contains("failed"), "{notices:?}");
    assert_eq!(r.imports("qa_modelling"), ["1.0.1"]);
}

#[test]
fn an_environment_that_may_not_write_the_artifact_store_is_refused_before_any_io() {
    let r = Rollout::new(Kv::Builtin, 1, 0);
    // Rejected journals only to the artifact store: dev may write it, qa may not.
    let file = r.path().join("pipeline.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let only = text.replace(
        r#"failed = ["artifacts", "failed_local"]"#,
        r#"failed = ["artifacts"]"#,
    );
    assert_ne!(only, text);
    write(&file, only.as_bytes());
    let validate = |env: &str| {
        run(r
            .flowgate()
            .args(["--env", env, "validate", "pipeline.toml"]))
    };
    assert_eq!(validate("dev").code, 0, "{}", validate("dev").all());
    let out = validate("qa");
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.all()
            .contains(r#"none of the stores ["artifacts"] may be written in this environment"#),
        "{}",
        out.all()
    );
    r.set("1.0.1");
    let out = r.poll("qa");
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        r.pg.rows("SELECT 1 FROM information_schema.schemata WHERE schema_name LIKE 'qa_%'")
            .is_empty()
    );
    assert!(!r.path().join("audit").exists());
}

#[test]
fn a_rejection_in_one_attempt_still_fails_the_run_when_a_retry_imports_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("artifacts/j/1.0/journal.jsonl"),
        b"{\"kind\":\"set\",\"id\":1}\n",
    );
    write(
        &dir.path().join("p.toml"),
        br#"name = "retry-after-reject"
[trigger]
watch = { key = "v" }
[stores]
artifacts = { url = "file://./artifacts" }
[[steps]]
id = "import"
retry = { attempts = 2, backoff = "10ms..10ms" }
[steps.import]
journal = "artifacts:j/{{ version }}/journal.jsonl"
[[steps.import.targets]]
name = "refuses"
command = { shell = "echo conflict >&2; exit 2" }
[[steps.import.targets]]
name = "flaky"
command = { shell = "test -f tried && exit 0; touch tried; exit 75", exit_codes = { retry = [75] } }
"#,
    );
    assert_eq!(
        run(flowgate(dir.path()).args(["kv", "set", "v", "1.0"])).code,
        0
    );
    let out = run(flowgate(dir.path()).args(["poll", "p.toml"]));
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all().contains("version 1.0 was rejected by `refuses`"),
        "{}",
        out.all()
    );
    assert!(out.stdout.contains("2 attempts"), "{}", out.all());
}
