//! One test per finding of the engine review (shared/reviews/engine-review-2026-12.md),
//! each named after it and each failing on the code the review read (87421ec).

mod common;
use common::*;

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
