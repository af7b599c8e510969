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

/// A secret in moto's Secrets Manager (a JSON object), created with boto3.
fn put_secret(name: &str, value: &serde_json::Value) {
    moto_python(&format!(
        "boto3.client('secretsmanager', **kw).create_secret(Name={name:?}, SecretString={:?})",
        value.to_string()
    ));
}

#[test]
fn secrets_manager_and_env_file_values_reach_the_command_and_nothing_flowgate_prints_or_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = format!("t{}", uuid_like());
    let token = format!("tok-{}", uuid_like());
    let password = format!("pw-{}", uuid_like());
    put_secret(
        &format!("{tenant}-scraper-secrets"),
        &serde_json::json!({ "API_TOKEN": token, "RETRIES": 3 }),
    );
    write(
        &dir.path().join("Project/.env_gha"),
        format!("DB_PASSWORD={password}\nREGION=eu-west-1\n").as_bytes(),
    );
    write(
        &dir.path().join("p.toml"),
        br#"name = "sm"
[params]
tenant = {}
[[steps]]
id = "scrape"
retry = { attempts = 1 }
command = { shell = "echo \"token $API_TOKEN retries $RETRIES region $REGION pw $DB_PASSWORD\" | tee got.txt; echo \"failed with $API_TOKEN\" >&2; exit 3", dir = "Project", env_file = "Project/.env_gha", secrets = "aws-secrets:{{ params.tenant }}-scraper-secrets", role_arn = "${ROLE_ARN:-}" }
"#,
    );
    for role in ["", "arn:aws:iam::123456789012:role/prod-scraper"] {
        let out = run(flowgate(dir.path())
            .env(
                "AWS_ENDPOINT_URL",
                service_var("FLOWGATE_TEST_MOTO_ENDPOINT"),
            )
            .env("ROLE_ARN", role)
            .args(["run", "p.toml", "-p", &format!("tenant={tenant}")]));
        assert_eq!(out.code, 1, "role {role:?}: {}", out.all());
        // The program got the values.
        let got = std::fs::read_to_string(dir.path().join("Project/got.txt")).unwrap();
        assert_eq!(
            got,
            format!("token {token} retries 3 region eu-west-1 pw {password}\n"),
            "role {role:?}"
        );
        // Nothing flowgate printed or kept shows them.
        let shown = run(flowgate(dir.path()).args(["runs", "--json"]));
        for text in [out.all(), shown.stdout.clone()] {
            assert!(
                !text.contains(&token) && !text.contains(&password),
                "role {role:?}: a secret leaked: {text}"
            );
        }
        assert!(
            out.all().contains("failed with ***"),
            "role {role:?}: {}",
            out.all()
        );
    }
}
