//! The `command` step: arguments and environment from the run, output kept with
//! secrets masked, exit codes sorted into ok / retry / reject / fail, and a time
//! limit that kills the whole process group.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

const SECRET: &str = "cmd-s3cr3t-71d0a9";

fn pipeline(dir: &Path, step: &str) {
    write(
        &dir.join("p.toml"),
        format!(
            r#"name = "cmd"
[params]
version = {{ default = "v1" }}
[[steps]]
id = "import"
{step}
"#
        )
        .as_bytes(),
    );
}

fn runs(dir: &Path) -> serde_json::Value {
    let out = run(flowgate(dir).args(["runs", "--json", "--state", ".flowgate/state.db"]));
    assert_eq!(out.code, 0, "{}", out.all());
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// The newest run's one step report.
fn step_of(dir: &Path) -> serde_json::Value {
    let all = runs(dir);
    let newest = all.as_array().and_then(|a| a.first()).cloned();
    let newest = newest.unwrap_or_else(|| panic!("no run recorded: {all}"));
    newest["steps"][0].clone()
}

#[test]
fn a_command_gets_its_arguments_environment_and_directory_and_its_output_is_kept_masked() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("tools/import.sh"),
        b"#!/bin/sh\necho \"args: $1 $2\"\necho \"token: $API_TOKEN\"\necho \"in: $(basename \"$PWD\") run: ${FLOWGATE_RUN_ID:+set} step: $FLOWGATE_STEP\"\necho 'to stderr' >&2\n",
    );
    chmod_x(&dir.path().join("tools/import.sh"));
    pipeline(
        dir.path(),
        r#"command = { argv = ["./import.sh", "--version", "{{ params.version }}; rm -rf /"], dir = "tools", env = { API_TOKEN = "${secret:FG_TEST_CMD_TOKEN}" } }"#,
    );
    let out = run(flowgate(dir.path()).env("FG_TEST_CMD_TOKEN", SECRET).args([
        "run",
        "p.toml",
        "-p",
        "version=v7",
        "-v",
    ]));
    assert_eq!(out.code, 0, "{}", out.all());
    // Each line went to the log as it came, the secret masked.
    assert!(out.stderr.contains("token: ***"), "{}", out.stderr);
    assert!(!out.all().contains(SECRET), "{}", out.all());

    let step = step_of(dir.path());
    assert_eq!(step["status"], "succeeded", "{step}");
    let o = &step["output"];
    assert_eq!(o["exit_code"], 0, "{step}");
    let stdout = o["stdout"].as_str().unwrap_or_default();
    // The template went in as one argument, never through a shell.
    assert!(
        stdout.contains("args: --version v7; rm -rf /\n"),
        "{stdout}"
    );
    assert!(stdout.contains("token: ***\n"), "{stdout}");
    assert!(
        stdout.contains("in: tools run: set step: import"),
        "{stdout}"
    );
    assert_eq!(o["stderr"], "to stderr\n", "{step}");
    let db = std::fs::read(dir.path().join(".flowgate/state.db")).unwrap();
    assert!(
        !String::from_utf8_lossy(&db).contains(SECRET),
        "the secret is in the state database"
    );
}

#[test]
fn exit_codes_decide_between_retry_reject_and_fail() {
    let dir = tempfile::tempdir().unwrap();
    // Exit with the code written in `code`; count attempts in `tries`.
    write(
        &dir.path().join("run.sh"),
        b"#!/bin/sh\necho x >> tries\necho \"refused: mandator unknown in line $(wc -l < tries)\" >&2\nexit $(cat code)\n",
    );
    chmod_x(&dir.path().join("run.sh"));
    pipeline(
        dir.path(),
        r#"retry = { attempts = 3, backoff = "10ms..20ms" }
command = { argv = ["./run.sh"], exit_codes = { retry = [75], reject = [3] } }"#,
    );
    let attempts = |code: &str| {
        write(&dir.path().join("code"), code.as_bytes());
        let _ = std::fs::remove_file(dir.path().join("tries"));
        let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
        let tries = std::fs::read_to_string(dir.path().join("tries"))
            .unwrap_or_default()
            .lines()
            .count();
        (out, tries, step_of(dir.path()))
    };

    let (out, tries, step) = attempts("3");
    assert_eq!(out.code, 1, "{}", out.all());
    assert_eq!(tries, 1, "a rejection is not retried");
    let error = step["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(
            "`./run.sh` rejected its input (exit 3): refused: mandator unknown in line 1"
        ),
        "{step}"
    );
    assert_eq!(step["output"]["exit_code"], 3, "{step}");

    let (out, tries, step) = attempts("75");
    assert_eq!(out.code, 1, "{}", out.all());
    assert_eq!(tries, 3, "a retry code is tried under the retry policy");
    assert!(
        step["error"]
            .as_str()
            .unwrap_or_default()
            .contains("exited with 75 (retry)"),
        "{step}"
    );

    let (out, tries, step) = attempts("9");
    assert_eq!(out.code, 1, "{}", out.all());
    assert_eq!(tries, 1, "an unlisted code fails without a retry");
    assert!(
        step["error"]
            .as_str()
            .unwrap_or_default()
            .contains("`./run.sh` failed (exit 9)"),
        "{step}"
    );

    let (out, tries, _) = attempts("0");
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(tries, 1);
}

#[test]
fn a_timed_out_command_dies_with_everything_it_started() {
    let dir = tempfile::tempdir().unwrap();
    pipeline(
        dir.path(),
        r#"timeout = "1s"
retry = { attempts = 1 }
command = { shell = "sleep 300 & echo $! > grandchild.pid; wait" }"#,
    );
    let started = Instant::now();
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(out.all().contains("timed out after 1s"), "{}", out.all());
    let pid = std::fs::read_to_string(dir.path().join("grandchild.pid")).unwrap();
    let proc_dir = Path::new("/proc").join(pid.trim());
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(&proc_dir) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !alive(&proc_dir),
        "the command's child {} outlived the attempt",
        pid.trim()
    );
}

/// A process exists and is not a zombie.
fn alive(proc_dir: &Path) -> bool {
    std::fs::read_to_string(proc_dir.join("stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

#[test]
fn a_command_step_is_checked_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    pipeline(
        dir.path(),
        r#"command = { argv = ["./a.sh"], shell = "echo", exit_codes = { retry = [0] }, env = { FLOWGATE_STEP = "x" } }"#,
    );
    let out = run(flowgate(dir.path()).args(["validate", "p.toml"]));
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.all().contains(
            "a command needs exactly one of `argv` (a non-empty list) or `shell` (a line)"
        ),
        "{}",
        out.all()
    );

    pipeline(
        dir.path(),
        r#"command = { argv = ["./a.sh"], exit_codes = { retry = [0] }, env = { FLOWGATE_STEP = "x" } }"#,
    );
    let out = run(flowgate(dir.path()).args(["validate", "p.toml"]));
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.all()
            .contains("exit code 0 is in both `ok` and `retry`"),
        "{}",
        out.all()
    );
    assert!(
        out.all()
            .contains("`FLOWGATE_STEP` cannot be an environment variable's name here"),
        "{}",
        out.all()
    );

    pipeline(dir.path(), r#"command = { argv = ["./missing.sh"] }"#);
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all().contains("cannot start `./missing.sh`"),
        "{}",
        out.all()
    );
}

fn chmod_x(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_command_that_prints_megabytes_without_a_newline_keeps_only_the_end() {
    let dir = tempfile::tempdir().unwrap();
    pipeline(
        dir.path(),
        r#"command = { shell = "head -c 5000000 /dev/zero | tr '\\0' a; echo; echo done", keep_output = "1KiB" }"#,
    );
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let step = step_of(dir.path());
    let stdout = step["output"]["stdout"].as_str().unwrap_or_default();
    assert!(stdout.len() <= 1024, "{} bytes kept", stdout.len());
    assert!(stdout.ends_with("done\n"), "{stdout:?}");
    assert_eq!(step["output"]["stdout_truncated"], true, "{step}");
}

#[test]
fn a_command_without_inherit_env_sees_none_of_flowgates_environment() {
    let dir = tempfile::tempdir().unwrap();
    // `$${` is a literal `${` in a pipeline file (flowgate's own variables are `${…}`).
    let script =
        r#"shell = "echo \"key=$${AWS_SECRET_ACCESS_KEY:-unset} mine=$MINE path=$${PATH:+set}\"""#;
    pipeline(
        dir.path(),
        &format!("command = {{ {script}, inherit_env = false, env = {{ MINE = \"x\" }} }}"),
    );
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let stdout = step_of(dir.path())["output"]["stdout"].clone();
    assert_eq!(stdout, "key=unset mine=x path=set\n", "{}", out.all());

    // By default the program sees flowgate's environment (here, the test's AWS key).
    pipeline(dir.path(), &format!("command = {{ {script} }}"));
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let stdout = step_of(dir.path())["output"]["stdout"].clone();
    assert_ne!(stdout, "key=unset mine= path=set\n", "{}", out.all());
}

#[test]
fn a_setup_runs_again_only_when_its_key_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(&d.join("tenant/Pipfile.lock"), b"{\"requests\": \"2.31\"}");
    write(
        &d.join("p.toml"),
        br#"name = "setup"
[[steps]]
id = "s"
retry = { attempts = 1 }
command = { argv = ["sh", "-c", "cat venv.txt"], dir = "tenant", setup = { argv = ["sh", "-c", "test -z \"$BREAK\" && cp Pipfile.lock venv.txt && echo built >> setups.txt"], key = ["Pipfile.lock"] } }
"#,
    );
    let setups = || {
        std::fs::read_to_string(d.join("tenant/setups.txt"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    for expected in [1, 1] {
        let out = run(flowgate(d).args(["run", "p.toml"]));
        assert_eq!(out.code, 0, "{}", out.all());
        assert_eq!(setups(), expected);
    }
    write(&d.join("tenant/Pipfile.lock"), b"{\"requests\": \"2.32\"}");
    // A setup that fails fails the step and is tried again next time.
    let out = run(flowgate(d).env("BREAK", "1").args(["run", "p.toml"]));
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(out.all().contains("setup `sh` failed"), "{}", out.all());
    let out = run(flowgate(d).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(setups(), 2);
    assert_eq!(
        std::fs::read_to_string(d.join("tenant/venv.txt")).unwrap(),
        "{\"requests\": \"2.32\"}"
    );
}
