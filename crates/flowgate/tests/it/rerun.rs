//! `flowgate runs rerun`: a failed run again with the pipeline file and pinned
//! scripts it ran (kept by content hash in the state store), or with today's
//! (`--latest`).

use crate::common::*;
use std::path::Path;

fn pipeline(label: &str) -> String {
    format!(
        r#"
name = "pinned"
pin = ["bin"]

[[steps]]
id = "a"
command = {{ argv = ["bin/a.sh"], env = {{ LABEL = "{label}" }} }}

[[steps]]
id = "b"
needs = ["a"]
command = {{ argv = ["bin/b.sh"], env = {{ LABEL = "{label}" }} }}
"#
    )
}

fn script(path: &Path, body: &str) {
    write(path, format!("#!/bin/sh\nset -e\n{body}\n").as_bytes());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// `b` fails until the file `gate` exists; it reads a token from an
/// environment file beside it, which is never kept.
fn b_script(d: &Path, version: &str) {
    script(
        &d.join("bin/b.sh"),
        &format!(
            "test -f gate || {{ echo 'no gate yet' >&2; exit 1; }}\n. ./bin/.env_b\necho \"b $LABEL {version} $TOKEN\" >> out.txt"
        ),
    );
}

fn failed_run(d: &Path) -> serde_json::Value {
    let out = run(flowgate(d).args(["run", "pinned.toml", "--json"]));
    assert_eq!(out.code, 1, "b fails without the gate: {}", out.all());
    let runs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    runs[0]["run"].clone()
}

fn out_txt(d: &Path) -> String {
    std::fs::read_to_string(d.join("out.txt")).unwrap_or_default()
}

#[test]
fn a_rerun_runs_the_pipeline_file_and_scripts_it_ran_and_latest_runs_todays() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("pinned.toml"), pipeline("one").as_bytes());
    script(&d.join("bin/a.sh"), "echo \"a $LABEL v1\" >> out.txt");
    b_script(d, "v1");
    write(&d.join("bin/.env_b"), b"TOKEN=tok-old\n");

    let first = failed_run(d);
    let id = first["id"].as_str().unwrap().to_string();
    assert_eq!(out_txt(d), "a one v1\n");
    // The pipeline file and the two scripts; not the environment file.
    assert_eq!(first["code"]["files"], 3, "{first}");
    let code = first["code"]["id"].as_str().unwrap().to_string();

    // Today: new scripts, a new pipeline file, a rotated token, the gate open.
    write(&d.join("pinned.toml"), pipeline("two").as_bytes());
    b_script(d, "v2");
    write(&d.join("bin/.env_b"), b"TOKEN=tok-new\n");
    write(&d.join("gate"), b"");

    let out = run(flowgate(d).args(["runs", "rerun", &id[..8], "pinned.toml", "--json"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(
        out_txt(d),
        "a one v1\nb one v1 tok-new\n",
        "b as it was, with the label of the file as it was and today's token; a not again"
    );
    let rerun: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rerun[0]["run"]["code"]["id"], code.as_str());
    let shown = run(flowgate(d).args(["runs", "show", rerun[0]["run"]["id"].as_str().unwrap()]));
    assert!(shown.stdout.contains(&code[..12]), "{}", shown.stdout);

    // Another failed run, today's files; with --latest, today's b.
    std::fs::remove_file(d.join("gate")).unwrap();
    std::fs::remove_file(d.join("out.txt")).unwrap();
    let second = failed_run(d);
    assert_ne!(
        second["code"]["id"],
        code.as_str(),
        "other files, another id"
    );
    write(&d.join("gate"), b"");
    let out = run(flowgate(d).args([
        "runs",
        "rerun",
        second["id"].as_str().unwrap(),
        "pinned.toml",
        "--latest",
    ]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(out_txt(d), "a two v1\nb two v2 tok-new\n");

    // The kept files are gone from no run: the first run can still be run
    // again as it was, though another rerun of it completed it.
    std::fs::remove_file(d.join("out.txt")).unwrap();
    std::fs::write(d.join("out.txt"), b"").unwrap();
    let out = run(flowgate(d).args(["runs", "rerun", &id, "pinned.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(out_txt(d), "b one v1 tok-new\n");
}

#[test]
fn a_pin_outside_the_pipelines_folder_or_missing_is_refused_by_validate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = pipeline("x").replace("pin = [\"bin\"]", "pin = [\"../elsewhere\", \"nope\"]");
    write(&d.join("pinned.toml"), text.as_bytes());
    let out = run(flowgate(d).args(["validate", "pinned.toml"]));
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr
            .contains("`../elsewhere` is not a path inside the pipeline's folder"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("`nope` does not exist"),
        "{}",
        out.stderr
    );
}
