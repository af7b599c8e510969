//! `flowgate validate`: every problem at once, with line:col and a hint.

use crate::common::*;

#[test]
fn four_kinds_of_mistake_are_all_reported_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pipeline.toml");
    write(
        &file,
        br#"name = "orders"

[trigger]
schedule = "0 25 * * *"

[stores]
landing = { url = "file://./landing" }
archive = { url = "file://./archive", access = "read-write" }

[[steps]]
id = "archive"
copy = { from = "landing:in", too = "archive:in" }

[[steps]]
id = "mirror"
copy = { from = "landng:in", to = "archive:${FG_VALIDATE_TEST_UNSET}/x" }
"#,
    );
    let out = run(flowgate(dir.path()).args(["validate", "pipeline.toml"]));
    assert_eq!(out.code, 2, "{}", out.all());
    let err = &out.stderr;
    assert!(
        err.contains("pipeline.toml:4:12: `0 25 * * *` is not a valid cron expression"),
        "{err}"
    );
    assert!(
        err.contains("pipeline.toml:12:31: unknown key `too`"),
        "{err}"
    );
    assert!(err.contains("did you mean `to`?"), "{err}");
    assert!(
        err.contains("pipeline.toml:16:17: unknown store `landng`"),
        "{err}"
    );
    assert!(
        err.contains("did you mean `landing`? declared stores: archive, landing"),
        "{err}"
    );
    assert!(
        err.contains("pipeline.toml:16:35: variable `FG_VALIDATE_TEST_UNSET` is not set"),
        "{err}"
    );
    assert!(err.contains("4 errors"), "{err}");

    // The same as JSON for machines.
    let out = run(flowgate(dir.path()).args(["validate", "--json", "pipeline.toml"]));
    assert_eq!(out.code, 2);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"].as_array().unwrap().len(), 4);
    assert_eq!(v["errors"][0]["line"], 4);
}

#[test]
fn writing_to_a_read_only_store_is_refused_before_any_io() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("src/a.txt"), b"hello");
    write(
        &dir.path().join("p.toml"),
        br#"name = "ro"
[stores]
src = { url = "file://./src" }
dst = { url = "file://./dst" }
[[steps]]
id = "copy"
copy = { from = "src:", to = "dst:" }
"#,
    );
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr
            .contains("p.toml:7:30: step `copy` writes to store `dst`, which is read-only"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("access = \"read-write\""),
        "{}",
        out.stderr
    );
    assert!(
        !dir.path().join("dst").exists(),
        "nothing may be written, not even the directory"
    );
    assert!(
        !dir.path().join(".flowgate").exists(),
        "not even the state store is opened"
    );
}

#[test]
fn environment_overlays_are_applied_and_unknown_ones_named() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("p.toml"),
        br#"name = "envs"
[stores]
src = { url = "file://./src", access = "read-write" }
dst = { url = "file://./dst", access = "read-write" }
[[steps]]
id = "copy"
copy = { from = "src:", to = "dst:" }
[env.prod.stores]
dst = { access = "read" }
"#,
    );
    // Overlays merge key by key: in prod, dst keeps its URL but becomes read-only.
    let out = run(flowgate(dir.path()).args(["validate", "p.toml", "--env", "prod"]));
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr
            .contains("writes to store `dst`, which is read-only"),
        "{}",
        out.stderr
    );
    let out = run(flowgate(dir.path()).args(["validate", "p.toml", "--env", "qa"]));
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("unknown environment `qa`"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("declared environments: prod"),
        "{}",
        out.stderr
    );
    // Without --env, each overlay is checked as well.
    let out = run(flowgate(dir.path()).args(["validate", "p.toml"]));
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr
            .contains("writes to store `dst`, which is read-only (with --env prod)"),
        "{}",
        out.stderr
    );
}

#[test]
fn schema_describes_pipeline_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(flowgate(dir.path()).arg("schema"));
    assert_eq!(out.code, 0);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["title"], "PipelineFile");
    assert!(v["properties"]["steps"].is_object());
    assert_eq!(v["additionalProperties"], false);
}

#[test]
fn without_env_every_overlay_is_checked_but_its_variables_are_not_required() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("p.toml"),
        br#"name = "overlays"
[stores]
src = { url = "file://./src" }
dst = { url = "file://./dst", access = "read-write" }
[[steps]]
id = "copy"
copy = { from = "src:", to = "dst:" }
[env.prod.stores]
dst = { url = "s3://bucket/${FG_TEST_PROD_ONLY_VAR}", acess = "read-write" }
"#,
    );
    let out = run(flowgate(dir.path()).args(["validate", "p.toml"]));
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr
            .contains("p.toml:9:55: unknown key `acess` (with --env prod)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("did you mean `access`?"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("FG_TEST_PROD_ONLY_VAR"),
        "prod's variables are not needed here: {}",
        out.stderr
    );
    assert!(out.stderr.contains("1 error"), "{}", out.stderr);
}

#[test]
fn listing_runs_where_there_is_no_state_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(flowgate(dir.path()).args(["runs"]));
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr
            .contains("no state store at ./.flowgate/state.db"),
        "{}",
        out.stderr
    );
    assert!(!dir.path().join(".flowgate").exists());
    let out = run(flowgate(dir.path()).args(["kv", "get", "x"]));
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(!dir.path().join(".flowgate").exists());
}

#[test]
fn an_arrival_pattern_that_can_never_match_is_refused() {
    for pattern in ["./exports/*.flag", "/exports/*.flag", "exports/../*.flag"] {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join("p.toml"),
            format!(
                "name = \"p\"\n[trigger]\narrival = {{ store = \"inbox\", pattern = \"{pattern}\" }}\n[stores]\ninbox = {{ url = \"file://./inbox\" }}\nout = {{ url = \"file://./out\", access = \"read-write\" }}\n[[steps]]\nid = \"copy\"\ncopy = {{ from = \"inbox:{{{{ trigger.prefix }}}}\", to = \"out:x\" }}\n"
            )
            .as_bytes(),
        );
        let out = run(flowgate(dir.path()).args(["validate", "p.toml"]));
        assert_eq!(out.code, 2, "{pattern}: {}", out.all());
        assert!(
            out.stderr
                .contains(&format!("p.toml:3:40: pattern `{pattern}` can never match"))
                && out.stderr.contains("write it from the store's root"),
            "{pattern}: {}",
            out.stderr
        );
    }
}

/// Runs of different events side by side may deliver only from each event's
/// own outbox: from one they share, both would send the same objects.
#[test]
fn runs_side_by_side_are_refused_for_a_delivery_from_a_shared_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = |from: &str| {
        format!(
            r#"name = "send"

[stores]
outbox = {{ url = "file://./outbox", access = "read-write" }}

[recipients.partner]
url = "https://partner.example/in/"

[[steps]]
id = "send"
deliver = {{ from = "outbox:{from}", recipient = "partner" }}

[policy]
one_at_a_time = "event"
"#
        )
    };
    let check = |from: &str| {
        write(&dir.path().join("p.toml"), pipeline(from).as_bytes());
        run(flowgate(dir.path()).args(["validate", "p.toml"]))
    };
    let out = check("pending/");
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr.contains(
            "step `send` delivers from an outbox all runs share (`outbox:pending/`): two runs would both send its objects"
        ),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("its own outbox"), "{}", out.stderr);
    for own in [
        "pending/{{ trigger.prefix }}",
        "{{ run.id }}/",
        "{{ params.tenant }}",
    ] {
        let out = check(own);
        assert_eq!(out.code, 0, "{own}: {}", out.all());
    }
}

#[test]
fn runs_side_by_side_are_refused_for_a_step_that_keeps_a_shared_position() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("p.toml"),
        br#"name = "ingest"

[stores]
src = { url = "sqlite://./src.db" }
landing = { url = "file://./landing", access = "read-write" }

[[steps]]
id = "ingest"
extract = { from = "src", tables = ["t"], cursor = "updated", to = "landing:{{ table }}/{{ run.id }}.jsonl" }

[policy]
one_at_a_time = "event"
"#,
    );
    let out = run(flowgate(dir.path()).args(["validate", "p.toml"]));
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr
            .contains("p.toml:12:17: step `ingest` keeps a position all runs share"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("the default is \"pipeline\""),
        "{}",
        out.stderr
    );
}
