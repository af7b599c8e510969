//! A secret given through the environment appears nowhere: not in logs, not in
//! `runs show`, not in error text, not in the state database, not in `validate`.

use crate::common::*;

const SECRET: &str = "sEcReT-t0ken-8c1f2d";
const HOOK_SECRET: &str = "hook-9a7b3c-private";

#[test]
fn secrets_never_leak() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("p.toml"),
        br#"name = "leaky"
[vars]
token = "${secret:FG_TEST_API_TOKEN}"
[stores]
src = { url = "file://./source-${secret:FG_TEST_API_TOKEN}" }
dst = { url = "file://./dst", access = "read-write" }
[[steps]]
id = "copy"
copy = { from = "src:{{ vars.token }}", to = "dst:{{ vars.token }}" }
[policy]
retry = { attempts = 2, backoff = "10ms..20ms" }
[notify]
webhook = "http://127.0.0.1:9/hooks/${FG_TEST_HOOK_TOKEN}"
"#,
    );
    let with_env = |c: &mut std::process::Command| {
        c.env("FG_TEST_API_TOKEN", SECRET)
            .env("FG_TEST_HOOK_TOKEN", HOOK_SECRET);
    };

    let mut c = flowgate(dir.path());
    c.args(["run", "p.toml", "-vv"]);
    with_env(&mut c);
    let out = run(&mut c);
    assert_eq!(
        out.code,
        1,
        "the source directory does not exist, so the run fails: {}",
        out.all()
    );
    assert!(
        out.all().contains("***"),
        "the error mentions the masked value: {}",
        out.all()
    );
    assert!(
        out.stderr.contains("notification not delivered"),
        "{}",
        out.stderr
    );

    let mut outputs = vec![out.all()];
    for args in [vec!["runs"], vec!["runs", "--json"]] {
        outputs.push(run(flowgate(dir.path()).args(&args)).all());
    }
    let id = {
        let j = run(flowgate(dir.path()).args(["runs", "--json"])).stdout;
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        v[0]["id"].as_str().unwrap().to_string()
    };
    outputs.push(run(flowgate(dir.path()).args(["runs", "show", &id])).all());
    outputs.push(run(flowgate(dir.path()).args(["runs", "show", &id, "--json"])).all());
    let mut c = flowgate(dir.path());
    c.args(["validate", "p.toml", "--json"]);
    with_env(&mut c);
    outputs.push(run(&mut c).all());
    let mut c = flowgate(dir.path());
    c.args(["run", "p.toml", "--json", "--log-format", "json", "-vv"]);
    with_env(&mut c);
    outputs.push(run(&mut c).all());

    for (i, o) in outputs.iter().enumerate() {
        assert!(!o.contains(SECRET), "output {i} leaks the secret:\n{o}");
        assert!(
            !o.contains(HOOK_SECRET),
            "output {i} leaks the webhook token:\n{o}"
        );
    }
    // The state database and its WAL, byte for byte.
    let mut checked = 0;
    for entry in std::fs::read_dir(dir.path().join(".flowgate")).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(SECRET) && !text.contains(HOOK_SECRET),
            "the state database holds a secret"
        );
        checked += bytes.len();
    }
    assert!(checked > 0);
}
