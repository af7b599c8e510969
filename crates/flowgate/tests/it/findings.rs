//! One test per finding of the engine review (shared/reviews/engine-review-2026-12.md),
//! each named after it and each failing on the code the review read (87421ec).

use crate::common::*;

/// A copy pipeline from `./src` to `./dst` beside the pipeline file.
fn local_copy(dir: &std::path::Path, extra: &str) {
    write(
        &dir.join("p.toml"),
        format!(
            r#"name = "local-copy"
[stores]
src = {{ url = "file://./src" }}
dst = {{ url = "file://./dst", access = "read-write" }}
[[steps]]
id = "copy"
copy = {{ from = "src:export", to = "dst:export" }}
[policy]
retry = {{ attempts = 2, backoff = "10ms..20ms" }}
{extra}"#
        )
        .as_bytes(),
    );
}

#[test]
fn finding_04_a_write_error_that_mentions_vanished_is_not_a_vanished_source() {
    let dir = tempfile::tempdir().unwrap();
    local_copy(dir.path(), "");
    write(&dir.path().join("src/export/accounts.csv"), b"a,b\n1,2\n");
    write(
        &dir.path().join("src/export/vanished_accounts.csv"),
        b"a,b\n3,4\n",
    );
    // The destination key is taken by a directory: writing there fails, and the
    // error names the key, which holds the word "vanished".
    std::fs::create_dir_all(dir.path().join("dst/export/vanished_accounts.csv/x")).unwrap();
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(
        out.code,
        1,
        "a write that failed fails the run: {}",
        out.all()
    );
    assert!(
        out.all().contains("vanished_accounts.csv"),
        "the failure names the object: {}",
        out.all()
    );
    assert!(
        !dir.path().join("dst/export/_manifest.json").exists(),
        "no manifest claims the copy is complete"
    );
}

const SECRET: &str = "pr1vate-t0ken-5e11";

#[test]
fn finding_05_a_key_holding_a_secrets_text_copies_and_never_shows_the_secret() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("p.toml"),
        br#"name = "secret-keys"
[vars]
token = "${secret:FG_TEST_TOKEN}"
[trigger]
arrival = { store = "inbox", pattern = "**/_SUCCESS" }
[stores]
inbox = { url = "file://./inbox" }
outbox = { url = "file://./outbox", access = "read-write" }
[[steps]]
id = "copy"
copy = { from = "inbox:{{ trigger.prefix }}", to = "outbox:{{ trigger.prefix }}", exclude = ["_SUCCESS"] }
"#,
    );
    let prefix = format!("backups/{SECRET}/2026-11-23");
    write(
        &dir.path().join(format!("inbox/{prefix}/part-0.csv")),
        b"1,2\n",
    );
    write(&dir.path().join(format!("inbox/{prefix}/_SUCCESS")), b"");
    let with_secret = |args: &[&str]| {
        let mut c = flowgate(dir.path());
        c.args(args).env("FG_TEST_TOKEN", SECRET);
        run(&mut c)
    };
    let out = with_secret(&["poll", "p.toml", "-vv"]);
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(
        std::fs::read(dir.path().join(format!("outbox/{prefix}/part-0.csv"))).unwrap(),
        b"1,2\n",
        "the object under a key holding the secret's text is copied"
    );
    let mut shown = vec![out.all()];
    shown.push(with_secret(&["poll", "p.toml"]).all());
    shown.push(with_secret(&["poll", "p.toml", "--json"]).all());
    shown.push(with_secret(&["runs", "--json"]).all());
    let id = {
        let v: serde_json::Value =
            serde_json::from_str(&with_secret(&["runs", "--json"]).stdout).unwrap();
        v[0]["id"].as_str().unwrap().to_string()
    };
    shown.push(with_secret(&["runs", "show", &id]).all());
    for (i, text) in shown.iter().enumerate() {
        assert!(
            !text.contains(SECRET),
            "output {i} shows the secret:\n{text}"
        );
    }
    assert!(
        shown[0].contains("backups/***/2026-11-23"),
        "the logs name the event's key, masked: {}",
        shown[0]
    );
}

/// An extract of table `t` (key `id`, cursor `updated`) from `url` into
/// `./landing/t/<run>.jsonl`, with `extra` options.
fn extract_pipeline(dir: &std::path::Path, url: &str, extra: &str) {
    write(
        &dir.join("p.toml"),
        format!(
            "name = \"ingest\"\n[stores]\nsrc = {{ url = \"{url}\" }}\nlanding = {{ url = \"file://./landing\", access = \"read-write\" }}\n[[steps]]\nid = \"ingest\"\nextract = {{ from = \"src\", tables = [\"t\"], cursor = \"updated\", to = \"landing:{{{{ table }}}}/{{{{ run.id }}}}.jsonl\"{extra} }}\n"
        )
        .as_bytes(),
    );
}

/// Every landed row of table `t`, one list per run (object), as (id, note).
fn landed_rows(dir: &std::path::Path) -> Vec<Vec<(i64, String)>> {
    data_files(&dir.join("landing/t"))
        .iter()
        .map(|f| {
            let mut rows: Vec<(i64, String)> = std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    (
                        v["id"].as_i64().unwrap(),
                        v["note"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            rows.sort();
            rows
        })
        .collect()
}

/// A source with table `t`: PostgreSQL or SQLite, set up with the same SQL.
enum Source {
    Pg(Box<Pg>),
    Sqlite(tempfile::TempDir),
}

impl Source {
    fn url(&self) -> String {
        match self {
            Source::Pg(pg) => pg.url.clone(),
            Source::Sqlite(d) => format!("sqlite://{}", d.path().join("source.db").display()),
        }
    }
    fn exec(&self, sql: &str) {
        match self {
            Source::Pg(pg) => pg.exec(sql),
            Source::Sqlite(d) => rusqlite::Connection::open(d.path().join("source.db"))
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
        }
    }
    /// Both kinds, with `t` created by `create` (the cursor type differs).
    fn both(pg_create: &str, sqlite_create: &str) -> Vec<Source> {
        let pg = Source::Pg(Box::new(Pg::new()));
        pg.exec(pg_create);
        let lite = Source::Sqlite(tempfile::tempdir().unwrap());
        lite.exec(sqlite_create);
        vec![pg, lite]
    }
}

#[test]
fn finding_09_rows_with_a_null_cursor_are_extracted_or_refused_never_skipped() {
    for source in Source::both(
        "CREATE TABLE t (id int PRIMARY KEY, note text, updated timestamp(6))",
        "CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT, updated TEXT)",
    ) {
        source.exec(
            "INSERT INTO t VALUES (1, 'a', '2026-01-01 10:00:00'), (2, 'legacy', NULL),
             (3, 'c', '2026-01-01 11:00:00'), (4, 'legacy too', NULL)",
        );
        let dir = tempfile::tempdir().unwrap();
        extract_pipeline(dir.path(), &source.url(), "");
        let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
        assert_eq!(out.code, 0, "{}", out.all());
        let all: Vec<i64> = landed_rows(dir.path())[0].iter().map(|r| r.0).collect();
        assert_eq!(all, [1, 2, 3, 4], "the first run is a full snapshot");
        assert!(
            out.stdout.contains("2 row(s) with a NULL `updated`"),
            "{}",
            out.stdout
        );
        // Later runs take NULL-cursor rows again, a new one among them.
        source.exec("INSERT INTO t VALUES (5, 'new legacy', NULL)");
        let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
        assert_eq!(out.code, 0, "{}", out.all());
        let second: Vec<i64> = landed_rows(dir.path())[1].iter().map(|r| r.0).collect();
        assert_eq!(second, [2, 4, 5], "{}", out.stdout);

        // `snapshot`: the first run only, and later runs say what they left.
        let dir = tempfile::tempdir().unwrap();
        extract_pipeline(dir.path(), &source.url(), ", nulls = \"snapshot\"");
        assert_eq!(run(flowgate(dir.path()).args(["run", "p.toml"])).code, 0);
        assert_eq!(landed_rows(dir.path())[0].len(), 5);
        let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
        assert_eq!(out.code, 0, "{}", out.all());
        assert!(
            out.stdout
                .contains("3 row(s) with a NULL `updated` NOT extracted"),
            "{}",
            out.stdout
        );

        // `error`: refused with what to do.
        let dir = tempfile::tempdir().unwrap();
        extract_pipeline(dir.path(), &source.url(), ", nulls = \"error\"");
        let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
        assert_eq!(out.code, 1, "{}", out.all());
        assert!(
            out.all()
                .contains("3 row(s) have a NULL `updated`, so no position can cover them"),
            "{}",
            out.all()
        );
        assert!(landed_rows(dir.path()).is_empty());
    }
}

#[test]
fn finding_10_a_second_update_within_the_same_cursor_value_is_extracted() {
    for lookback in ["", ", lookback = \"1m\""] {
        for source in Source::both(
            "CREATE TABLE t (id int PRIMARY KEY, note text, updated timestamp(0) NOT NULL)",
            "CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT, updated TEXT NOT NULL)",
        ) {
            source.exec(
                "INSERT INTO t VALUES (41, 'x', '2026-01-01 09:00:00'), (42, 'first', '2026-01-01 10:00:00'),
                 (43, 'y', '2026-01-01 10:00:00')",
            );
            let dir = tempfile::tempdir().unwrap();
            extract_pipeline(dir.path(), &source.url(), lookback);
            assert_eq!(run(flowgate(dir.path()).args(["run", "p.toml"])).code, 0);
            // Row 42 changes again within the same second: its cursor stays.
            source.exec("UPDATE t SET note = 'second' WHERE id = 42");
            let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
            assert_eq!(out.code, 0, "{}", out.all());
            let runs = landed_rows(dir.path());
            assert_eq!(
                runs.get(1),
                Some(&vec![(42, "second".to_string())]),
                "lookback `{lookback}`, {}: the new version and nothing else: {runs:?}",
                source.url()
            );
            // Nothing changed since: no object.
            let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
            assert_eq!(out.code, 0, "{}", out.all());
            assert_eq!(landed_rows(dir.path()).len(), 2, "{}", out.stdout);
        }
    }
}

fn watch_pipeline(dir: &std::path::Path, on_missed: &str) {
    write(&dir.join("src/journal.txt"), b"journal");
    write(
        &dir.join("p.toml"),
        format!(
            r#"name = "rollout"
[trigger]
watch = {{ key = "release/version"{on_missed} }}
[stores]
src = {{ url = "file://./src" }}
dst = {{ url = "file://./dst", access = "read-write" }}
[[steps]]
id = "copy"
copy = {{ from = "src:", to = "dst:{{{{ trigger.value }}}}", manifest = "" }}
"#
        )
        .as_bytes(),
    );
}

#[test]
fn finding_14_a_watch_runs_every_revision_set_while_no_worker_looked() {
    let dir = tempfile::tempdir().unwrap();
    watch_pipeline(dir.path(), "");
    let kv_set = |v: &str| {
        let out = run(flowgate(dir.path()).args(["kv", "set", "release/version", v]));
        assert_eq!(out.code, 0, "{}", out.all());
    };
    kv_set("1.0");
    assert_eq!(run(flowgate(dir.path()).args(["poll", "p.toml"])).code, 0);
    // Three releases while nobody polls (the worker was down, or busy).
    for v in ["1.1", "1.2", "1.3"] {
        kv_set(v);
    }
    let out = run(flowgate(dir.path()).args(["poll", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    for v in ["1.0", "1.1", "1.2", "1.3"] {
        assert!(
            dir.path().join(format!("dst/{v}/journal.txt")).exists(),
            "release {v} ran: {}",
            out.all()
        );
    }
    assert_eq!(run_list(dir.path()).len(), 4);
    // Nothing new: nothing runs.
    assert_eq!(run(flowgate(dir.path()).args(["poll", "p.toml"])).code, 0);
    assert_eq!(run_list(dir.path()).len(), 4);

    // `latest`: the newest runs, the others are recorded as skipped, with why.
    let dir = tempfile::tempdir().unwrap();
    watch_pipeline(dir.path(), ", on_missed = \"latest\"");
    let kv_set = |v: &str| {
        run(flowgate(dir.path()).args(["kv", "set", "release/version", v]));
    };
    kv_set("2.0");
    assert_eq!(run(flowgate(dir.path()).args(["poll", "p.toml"])).code, 0);
    kv_set("2.1");
    kv_set("2.2");
    assert_eq!(run(flowgate(dir.path()).args(["poll", "p.toml"])).code, 0);
    assert!(dir.path().join("dst/2.2/journal.txt").exists());
    assert!(!dir.path().join("dst/2.1").exists());
    let runs = run_list(dir.path());
    let skipped: Vec<&(String, String)> = runs.iter().filter(|r| r.0 == "skipped").collect();
    assert_eq!(skipped.len(), 1, "{runs:?}");
    assert!(skipped[0].1.contains("superseded by revision"), "{runs:?}");
}

#[test]
fn finding_14_schedule_ticks_missed_while_down_follow_catch_up() {
    for (rule, runs_expected) in [("all", None), ("latest", Some(1)), ("none", Some(1))] {
        let dir = tempfile::tempdir().unwrap();
        write(&dir.path().join("src/a.txt"), b"a");
        write(
            &dir.path().join("p.toml"),
            format!(
                r#"name = "ticks"
[trigger]
schedule = "every 1s"
catch_up = "{rule}"
[stores]
src = {{ url = "file://./src" }}
dst = {{ url = "file://./dst", access = "read-write" }}
[[steps]]
id = "copy"
copy = {{ from = "src:", to = "dst:{{{{ trigger.tick }}}}", manifest = "" }}
"#
            )
            .as_bytes(),
        );
        // The first pass starts the count; then nobody polls for a while.
        assert_eq!(run(flowgate(dir.path()).args(["poll", "p.toml"])).code, 0);
        std::thread::sleep(std::time::Duration::from_millis(3500));
        let out = run(flowgate(dir.path()).args(["poll", "p.toml"]));
        assert_eq!(out.code, 0, "{}", out.all());
        let list = run_list(dir.path());
        let ran = list.iter().filter(|r| r.0 == "succeeded").count();
        let skipped: Vec<&(String, String)> = list.iter().filter(|r| r.0 == "skipped").collect();
        assert!(
            ran + skipped.len() >= 3,
            "{rule}: every tick due is accounted for: {list:?}"
        );
        match runs_expected {
            Some(n) => assert_eq!(ran, n, "{rule}: {list:?}"),
            None => assert!(skipped.is_empty() && ran >= 3, "{rule}: {list:?}"),
        }
        assert!(
            skipped
                .iter()
                .all(|s| s.1.contains(&format!("catch_up = \"{rule}\""))),
            "{rule}: {list:?}"
        );
    }
}

/// A load of `./landing/snap/*.jsonl` into `table` of `into`, with `extra` options.
fn load_pipeline(dir: &std::path::Path, into: &str, extra: &str) {
    write(
        &dir.join("p.toml"),
        format!(
            "name = \"loader\"\n[stores]\nlanding = {{ url = \"file://./landing\" }}\nwh = {{ url = \"{into}\", access = \"write\" }}\n[[steps]]\nid = \"load\"\nload = {{ from = \"landing:snap\", into = \"wh\", table = \"snapshot\"{extra} }}\n"
        )
        .as_bytes(),
    );
}

/// Rows of `snapshot` in a SQLite or PostgreSQL warehouse, sorted, as text.
fn warehouse_rows(url: &str, pg: Option<&Pg>) -> Vec<String> {
    let mut rows: Vec<String> = match pg {
        Some(pg) => pg
            .rows("SELECT id::text || ':' || name FROM snapshot")
            .into_iter()
            .map(|r| r[0].clone().unwrap_or_default())
            .collect(),
        None => {
            let c = rusqlite::Connection::open(url.trim_start_matches("sqlite://")).unwrap();
            let mut st = c
                .prepare("SELECT CAST(id AS TEXT) || ':' || name FROM snapshot")
                .unwrap();
            st.query_map([], |r| r.get(0))
                .unwrap()
                .map(|r| r.unwrap())
                .collect()
        }
    };
    rows.sort();
    rows
}

#[test]
fn finding_07_replace_takes_the_newest_snapshot_with_or_without_a_key() {
    let pg = Pg::new();
    for (with_key, target) in [
        (false, "sqlite"),
        (true, "sqlite"),
        (false, "pg"),
        (true, "pg"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let url = match target {
            "pg" => pg.url.clone(),
            _ => format!("sqlite://{}", dir.path().join("wh.db").display()),
        };
        if target == "pg" {
            pg.exec("DROP TABLE IF EXISTS snapshot");
        }
        let key = if with_key { ", key = [\"id\"]" } else { "" };
        load_pipeline(dir.path(), &url, &format!(", mode = \"replace\"{key}"));
        let snap = |name: &str, body: &str| {
            write(
                &dir.path().join(format!("landing/snap/{name}.jsonl")),
                body.as_bytes(),
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        // Two snapshots waiting (a load failed or was killed between them): only
        // the newest becomes the table.
        snap(
            "a",
            "{\"id\":1,\"name\":\"x\"}\n{\"id\":2,\"name\":\"y\"}\n{\"id\":3,\"name\":\"z\"}\n",
        );
        snap(
            "b",
            "{\"id\":1,\"name\":\"x2\"}\n{\"id\":2,\"name\":\"y2\"}\n{\"id\":2,\"name\":\"y3\"}\n",
        );
        let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
        assert_eq!(out.code, 0, "{target} key={with_key}: {}", out.all());
        let pg_ref = (target == "pg").then_some(&pg);
        let want: Vec<String> = if with_key {
            vec!["1:x2".into(), "2:y3".into()]
        } else {
            vec!["1:x2".into(), "2:y2".into(), "2:y3".into()]
        };
        assert_eq!(
            warehouse_rows(&url, pg_ref),
            want,
            "{target} key={with_key}"
        );
        // Nothing new: the same table.
        assert_eq!(run(flowgate(dir.path()).args(["run", "p.toml"])).code, 0);
        assert_eq!(
            warehouse_rows(&url, pg_ref),
            want,
            "{target} key={with_key}"
        );
        // The source became empty: so does the table.
        snap("c", "");
        let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
        assert_eq!(out.code, 0, "{}", out.all());
        assert!(
            warehouse_rows(&url, pg_ref).is_empty(),
            "{target} key={with_key}"
        );
    }
}

#[test]
fn finding_07_append_loads_each_input_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("wh.db").display());
    load_pipeline(dir.path(), &url, ", mode = \"append\"");
    write(
        &dir.path().join("landing/snap/a.jsonl"),
        b"{\"id\":1,\"name\":\"x\"}\n",
    );
    assert_eq!(run(flowgate(dir.path()).args(["run", "p.toml"])).code, 0);
    write(
        &dir.path().join("landing/snap/b.jsonl"),
        b"{\"id\":1,\"name\":\"x\"}\n",
    );
    assert_eq!(run(flowgate(dir.path()).args(["run", "p.toml"])).code, 0);
    assert_eq!(run(flowgate(dir.path()).args(["run", "p.toml"])).code, 0);
    assert_eq!(warehouse_rows(&url, None), ["1:x", "1:x"]);
}

#[test]
fn finding_08_a_failed_manual_run_runs_again_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    local_copy(dir.path(), "");
    // No source yet: the run fails.
    let out = run(flowgate(dir.path()).args(["run", "p.toml", "--key", "nightly"]));
    assert_eq!(out.code, 1, "{}", out.all());
    write(&dir.path().join("src/export/a.csv"), b"1\n");
    let out = run(flowgate(dir.path()).args(["run", "p.toml", "--key", "nightly", "--json"]));
    assert_eq!(
        out.code,
        0,
        "the same key runs the failed event again: {}",
        out.all()
    );
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v[0]["outcome"], "ran", "{v:#}");
    assert_eq!(
        v[0]["run"]["attempt"], 2,
        "a new attempt of the same event: {v:#}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("dst/export/a.csv")).unwrap(),
        b"1\n"
    );
    // Done now: the key does not run a third time.
    let out = run(flowgate(dir.path()).args(["run", "p.toml", "--key", "nightly"]));
    assert_eq!(out.code, 0);
    assert!(out.stdout.contains("already handled"), "{}", out.stdout);
}

#[test]
fn finding_12_a_json_field_first_set_after_line_10000_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("wh.db").display());
    load_pipeline(dir.path(), &url, ", key = [\"id\"]");
    // Another producer: `late` is null until line 15,000, `extra` appears only there.
    let mut body = String::new();
    for i in 0..15_000 {
        body.push_str(&format!("{{\"id\":{i},\"name\":\"n{i}\",\"late\":null}}\n"));
    }
    body.push_str("{\"id\":15000,\"name\":\"last\",\"late\":\"set\",\"extra\":7}\n");
    write(&dir.path().join("landing/snap/a.jsonl"), body.as_bytes());
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let c = rusqlite::Connection::open(dir.path().join("wh.db")).unwrap();
    let (late, extra): (String, i64) = c
        .query_row(
            "SELECT late, extra FROM snapshot WHERE id = 15000",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((late.as_str(), extra), ("set", 7));
    let n: i64 = c
        .query_row("SELECT count(*) FROM snapshot", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 15_001);
}

#[test]
fn finding_12_what_flowgate_extracted_loads_with_its_recorded_types() {
    let pg = Pg::new();
    pg.exec(
        "CREATE TABLE t (id int PRIMARY KEY, price numeric(10,2), updated timestamp(6) NOT NULL, note text);
         INSERT INTO t VALUES (1, 2.50, '2026-01-01 10:00:00.000001', NULL), (2, 3.75, '2026-01-01 11:00:00', 'b')",
    );
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("p.toml"),
        format!(
            "name = \"typed\"\n[stores]\nsrc = {{ url = \"{0}\" }}\nlanding = {{ url = \"file://./landing\", access = \"read-write\" }}\nwh = {{ url = \"{0}\", access = \"write\" }}\n[[steps]]\nid = \"ingest\"\nextract = {{ from = \"src\", tables = [\"t\"], cursor = \"updated\", to = \"landing:{{{{ table }}}}/{{{{ run.id }}}}.jsonl\" }}\n[[steps]]\nid = \"load\"\nneeds = [\"ingest\"]\nload = {{ from = \"landing:t\", into = \"wh\", table = \"t_copy\", key = [\"id\"] }}\n",
            pg.url
        )
        .as_bytes(),
    );
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let types = pg.rows(
        "SELECT column_name || ' ' || data_type FROM information_schema.columns WHERE table_name = 't_copy' ORDER BY column_name",
    );
    let types: Vec<String> = types.into_iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(
        types,
        [
            "id integer",
            "note text",
            "price numeric",
            "updated timestamp without time zone"
        ]
    );
    assert_eq!(
        pg.rows("SELECT updated::text FROM t_copy WHERE id = 1")[0][0].as_deref(),
        Some("2026-01-01 10:00:00.000001")
    );
}

#[test]
fn finding_13_state_prune_keeps_what_is_still_needed_and_drops_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    local_copy(dir.path(), "");
    write(&dir.path().join("src/export/a.csv"), b"1\n");
    for _ in 0..3 {
        assert_eq!(run(flowgate(dir.path()).args(["run", "p.toml"])).code, 0);
    }
    assert_eq!(run_list(dir.path()).len(), 3);
    let out = run(flowgate(dir.path()).args(["state", "prune", "--older-than", "0s", "--json"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let pruned: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(pruned["runs"], 2, "{pruned:#}");
    assert_eq!(
        pruned["events"], 3,
        "three manual events that ended: {pruned:#}"
    );
    assert_eq!(run_list(dir.path()).len(), 1, "the newest run stays");
    // The copy's ledger went too: the next run copies again, and is right.
    assert_eq!(run(flowgate(dir.path()).args(["run", "p.toml"])).code, 0);
    assert_eq!(
        std::fs::read(dir.path().join("dst/export/a.csv")).unwrap(),
        b"1\n"
    );
}

/// Peak resident memory of a running process (VmHWM), polled until it exits.
fn peak_rss_mib(child: &mut std::process::Child) -> u64 {
    let mut peak = 0;
    loop {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            && let Some(kb) = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kb / 1024);
        }
        if child.try_wait().unwrap().is_some() {
            return peak;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn finding_11_a_load_streams_an_input_far_larger_than_its_memory() {
    use arrow::array::{Int64Array, StringArray};
    use std::sync::Arc;
    let pg = Pg::new();
    let dir = tempfile::tempdir().unwrap();
    // 8M rows of four 64-character strings: about 2 GiB once decoded, a few MB
    // as zstd Parquet (each column repeats itself).
    let rows: usize = 8_000_000;
    let path = dir.path().join("landing/snap/big.parquet");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let schema = Arc::new(arrow::datatypes::Schema::new(vec![
        arrow::datatypes::Field::new("id", arrow::datatypes::DataType::Int64, false),
        arrow::datatypes::Field::new("a", arrow::datatypes::DataType::Utf8, false),
        arrow::datatypes::Field::new("b", arrow::datatypes::DataType::Utf8, false),
        arrow::datatypes::Field::new("c", arrow::datatypes::DataType::Utf8, false),
        arrow::datatypes::Field::new("d", arrow::datatypes::DataType::Utf8, false),
    ]));
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        schema.clone(),
        Some(props),
    )
    .unwrap();
    let chunk = 100_000;
    for start in (0..rows).step_by(chunk) {
        let text = |c: char| {
            StringArray::from_iter_values((0..chunk).map(|i| format!("{c}{:063}", (start + i) % 7)))
        };
        let batch = arrow::record_batch::RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(
                    (start..start + chunk).map(|i| i as i64),
                )),
                Arc::new(text('a')),
                Arc::new(text('b')),
                Arc::new(text('c')),
                Arc::new(text('d')),
            ],
        )
        .unwrap();
        w.write(&batch).unwrap();
    }
    w.close().unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < 50 << 20);
    load_pipeline(dir.path(), &pg.url, ", mode = \"append\"");
    let mut child = flowgate(dir.path())
        .args(["run", "p.toml"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let peak = peak_rss_mib(&mut child);
    eprintln!("load of 8M rows (about 2 GiB decoded): peak RSS {peak} MiB");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        pg.rows("SELECT count(*)::text FROM snapshot")[0][0].as_deref(),
        Some("8000000")
    );
    assert!(
        peak < 300,
        "the load peaked at {peak} MiB for an input of about 2 GiB decoded"
    );
}

#[test]
fn finding_16_objects_set_aside_from_two_datasets_keep_their_own_place() {
    use age::secrecy::ExposeSecret;
    let dir = tempfile::tempdir().unwrap();
    let identity = age::x25519::Identity::generate();
    write(
        &dir.path().join("p.toml"),
        br#"name = "decrypting"
[params]
day = {}
[stores]
src = { url = "file://./src", access = "read-write" }
dst = { url = "file://./dst", access = "read-write" }
[[steps]]
id = "copy"
copy = { from = "src:{{ params.day }}", to = "dst:{{ params.day }}", decrypt = { age_identity = "${secret:FG_AGE}" } }
"#,
    );
    for day in ["day1", "day2"] {
        write(
            &dir.path().join(format!("src/{day}/part-0.csv.age")),
            format!("not age, {day}").as_bytes(),
        );
        let out = run(flowgate(dir.path())
            .args(["run", "p.toml", "-p", &format!("day={day}")])
            .env("FG_AGE", identity.to_string().expose_secret()));
        assert_eq!(out.code, 1, "{}", out.all());
    }
    for day in ["day1", "day2"] {
        let kept = dir.path().join(format!("src/failed/{day}/part-0.csv.age"));
        assert_eq!(
            std::fs::read(&kept).unwrap(),
            format!("not age, {day}").as_bytes()
        );
        assert!(kept.with_extension("age.error.json").exists());
    }
}

#[test]
fn finding_17_positions_read_back_the_same_whatever_the_database_date_style() {
    let pg = Pg::new();
    pg.exec(
        "CREATE TABLE t (id int PRIMARY KEY, note text, updated timestamp(0) NOT NULL);
         INSERT INTO t VALUES (1, 'a', '2026-01-02 10:00:00')",
    );
    let db = pg.url.rsplit('/').next().unwrap().to_string();
    pg.exec(&format!("ALTER DATABASE {db} SET DateStyle = 'SQL, DMY'"));
    let dir = tempfile::tempdir().unwrap();
    extract_pipeline(dir.path(), &pg.url, "");
    assert_eq!(run(flowgate(dir.path()).args(["run", "p.toml"])).code, 0);
    // Someone changes the style: 02/01 would now read as 1 February.
    pg.exec(&format!("ALTER DATABASE {db} SET DateStyle = 'SQL, MDY'"));
    pg.exec("INSERT INTO t VALUES (2, 'b', '2026-01-15 10:00:00')");
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(
        landed_rows(dir.path()).get(1),
        Some(&vec![(2, "b".to_string())]),
        "exactly the new row"
    );
}

#[test]
fn finding_15_a_crash_between_an_extracts_object_and_its_position_lands_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("source.db");
    rusqlite::Connection::open(&src)
        .unwrap()
        .execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, note TEXT, updated TEXT NOT NULL);
             INSERT INTO t VALUES (1, 'a', '2026-01-01 10:00:00'), (2, 'b', '2026-01-01 11:00:00');",
        )
        .unwrap();
    extract_pipeline(dir.path(), &format!("sqlite://{}", src.display()), "");
    // Dies right after the object is whole, before the position moves.
    let out = run(flowgate(dir.path())
        .args(["run", "p.toml"])
        .env("FLOWGATE_TEST_CRASH_AT", "extract:object-written"));
    assert_ne!(out.code, 0, "{}", out.all());
    assert_eq!(landed_rows(dir.path()).len(), 1);
    // The next run (once the crashed run's lease has run out) takes the position
    // that object completes: no second copy of the same rows.
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(
        landed_rows(dir.path()),
        [vec![(1, "a".to_string()), (2, "b".to_string())]],
        "{}",
        out.all()
    );
}

#[test]
fn finding_15_a_transform_that_crashed_part_way_turns_no_input_into_two_outputs() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("landing/t/a.jsonl"),
        b"{\"id\":1,\"v\":10}\n{\"id\":2,\"v\":20}\n",
    );
    write(
        &dir.path().join("models/m1.sql"),
        b"SELECT id, v FROM t_new\n",
    );
    write(
        &dir.path().join("models/m2.sql"),
        b"SELECT id, v * 2 AS w FROM t_new\n",
    );
    let wh = dir.path().join("wh.db");
    write(
        &dir.path().join("p.toml"),
        format!(
            r#"name = "models"
[stores]
landing = {{ url = "file://./landing" }}
processed = {{ url = "file://./processed", access = "read-write" }}
wh = {{ url = "sqlite://{}", access = "write" }}
[[steps]]
id = "model"
transform = {{ models = "models", inputs = "landing:", to = "processed:{{{{ model }}}}/{{{{ run.id }}}}.parquet" }}
[[steps]]
id = "load"
needs = ["model"]
load = {{ from = "processed:", into = "wh", tables = {{ m1 = {{ mode = "append" }}, m2 = {{ mode = "append" }} }} }}
"#,
            wh.display()
        )
        .as_bytes(),
    );
    // Dies once the first model's output is whole, before the second's.
    let out = run(flowgate(dir.path())
        .args(["run", "p.toml"])
        .env("FLOWGATE_TEST_CRASH_AT", "transform:model-written"));
    assert_ne!(out.code, 0, "{}", out.all());
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let c = rusqlite::Connection::open(&wh).unwrap();
    for table in ["m1", "m2"] {
        let n: i64 = c
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2, "`{table}` holds each row once (append)");
    }
}

#[test]
fn finding_13_a_transform_with_a_bounded_history_reads_only_recent_landing() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("landing/t/old.jsonl"),
        b"{\"id\":1}\n{\"id\":2}\n",
    );
    write(&dir.path().join("landing/t/new.jsonl"), b"{\"id\":3}\n");
    // Landed two days ago.
    std::fs::File::options()
        .write(true)
        .open(dir.path().join("landing/t/old.jsonl"))
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 86_400))
        .unwrap();
    write(
        &dir.path().join("models/counted.sql"),
        b"SELECT count(*) AS n FROM t\n",
    );
    write(
        &dir.path().join("p.toml"),
        br#"name = "recent"
[stores]
landing = { url = "file://./landing" }
processed = { url = "file://./processed", access = "read-write" }
[[steps]]
id = "model"
transform = { models = "models", inputs = "landing:", to = "processed:{{ model }}/{{ run.id }}.jsonl", history = "1d" }
"#,
    );
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let written = data_files(&dir.path().join("processed/counted"));
    assert_eq!(written.len(), 1);
    assert_eq!(
        std::fs::read_to_string(&written[0]).unwrap().trim(),
        "{\"n\":1}",
        "only the object landed within a day is read"
    );
}
