//! Consul as a KV store: `flowgate kv --store consul://…` with an ACL token, and
//! `watch` triggers on a real Consul agent (ACLs on, from scripts/services.sh),
//! including one that restarts and forgets everything mid-watch.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn consul() -> String {
    service_var("FLOWGATE_TEST_CONSUL_URL")
}

fn token() -> String {
    service_var("FLOWGATE_TEST_CONSUL_TOKEN")
}

fn kv(dir: &Path, url: &str, args: &[&str]) -> Ran {
    let mut all = vec!["kv", "--store", url];
    all.extend_from_slice(args);
    run(flowgate(dir).env("CONSUL_HTTP_TOKEN", token()).args(&all))
}

/// The store table of a Consul at `url`, its token from a secret.
fn consul_store(url: &str) -> String {
    format!(r#"{{ url = "{url}", token = "${{secret:FG_TEST_CONSUL_TOKEN}}" }}"#)
}

fn poll(dir: &Path) -> Ran {
    let out = run(flowgate(dir)
        .env("FG_TEST_CONSUL_TOKEN", token())
        .args(["poll", "p.toml", "-v"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        !out.all().contains(&token()),
        "the token leaked: {}",
        out.all()
    );
    out
}

#[test]
fn kv_against_consul_needs_its_token_and_never_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = format!("journal/{}/version", uuid_like());
    // Without a token, Consul's default-deny ACLs refuse the write.
    let out = run(flowgate(dir.path()).env_remove("CONSUL_HTTP_TOKEN").args([
        "kv",
        "--store",
        &consul(),
        "set",
        &key,
        "1",
    ]));
    assert_ne!(out.code, 0, "{}", out.all());
    assert!(
        out.all().contains("refused the request: HTTP 403"),
        "{}",
        out.all()
    );

    let out = kv(dir.path(), &consul(), &["set", &key, "7"]);
    assert_eq!(out.code, 0, "{}", out.all());
    let out = kv(dir.path(), &consul(), &["get", &key]);
    assert_eq!(out.stdout.trim(), "7", "{}", out.all());
    assert!(!out.all().contains(&token()));

    // `watch` blocks on Consul's index and prints the change when it happens.
    let lines = first_lines(
        flowgate(dir.path())
            .env("CONSUL_HTTP_TOKEN", token())
            .args(["kv", "--store", &consul(), "watch", &key]),
        2,
        || assert_eq!(kv(dir.path(), &consul(), &["set", &key, "8"]).code, 0),
    );
    assert!(lines[0].starts_with(&format!("{key} = 7 ")), "{lines:?}");
    assert!(lines[1].starts_with(&format!("{key} = 8 ")), "{lines:?}");
}

#[test]
fn a_consul_watch_runs_the_newest_value_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = format!("journal/{}/version", uuid_like());
    watch_pipeline(dir.path(), &consul_store(&consul()), &key, "");
    assert_eq!(kv(dir.path(), &consul(), &["set", &key, "1"]).code, 0);
    poll(dir.path());
    assert_eq!(applied(dir.path()), ["1"]);
    for v in ["2", "3", "4"] {
        assert_eq!(kv(dir.path(), &consul(), &["set", &key, v]).code, 0);
    }
    poll(dir.path());
    poll(dir.path());
    assert_eq!(applied(dir.path()), ["1", "4"]);
}

/// A Consul dev agent of this test's own, on fresh ports (its data is in memory).
struct Agent {
    child: Child,
    http: u16,
}

impl Agent {
    fn start(http: u16) -> Agent {
        let bin = service_var("FLOWGATE_TEST_CONSUL_BIN");
        let p = || free_port().to_string();
        let child = Command::new(bin)
            .args([
                "agent",
                "-dev",
                "-bind",
                "127.0.0.1",
                "-client",
                "127.0.0.1",
            ])
            .args([
                "-http-port",
                &http.to_string(),
                "-grpc-port",
                "-1",
                "-grpc-tls-port",
                "-1",
            ])
            .args([
                "-dns-port",
                "-1",
                "-serf-lan-port",
                &p(),
                "-serf-wan-port",
                &p(),
            ])
            .args(["-server-port", &p()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting consul");
        let agent = Agent { child, http };
        let deadline = Instant::now() + Duration::from_secs(30);
        let dir = tempfile::tempdir().unwrap();
        while Instant::now() < deadline {
            if run(flowgate(dir.path()).args(["kv", "--store", &agent.url(), "get", "ready"])).code
                == 1
            {
                return agent; // answered: the key is not set
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("the test's Consul agent did not answer within 30 s");
    }

    fn url(&self) -> String {
        format!("consul://127.0.0.1:{}", self.http)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_consul_that_restarts_and_forgets_mid_watch_misses_no_version() {
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let agent = Agent::start(http);
    let key = "journal/dev/version";
    watch_pipeline(dir.path(), &consul_store(&agent.url()), key, "");
    // Enough writes that the index is well above where a new agent starts.
    for i in 0..30 {
        assert_eq!(
            kv(dir.path(), &agent.url(), &["set", "filler", &i.to_string()]).code,
            0
        );
    }
    assert_eq!(kv(dir.path(), &agent.url(), &["set", key, "41"]).code, 0);
    poll(dir.path());
    assert_eq!(applied(dir.path()), ["41"]);

    // Consul restarts with nothing (a dev agent keeps its data in memory): its
    // index starts over below the watch's position.
    drop(agent);
    let agent = Agent::start(http);
    assert_eq!(kv(dir.path(), &agent.url(), &["set", key, "42"]).code, 0);
    poll(dir.path());
    assert_eq!(
        applied(dir.path()),
        ["41", "42"],
        "the version set after the restart ran"
    );
    poll(dir.path());
    assert_eq!(applied(dir.path()), ["41", "42"], "and only once");
}

#[test]
fn consul_over_tls_is_trusted_through_the_stores_ca_file_and_refused_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = format!("journal/{}/version", uuid_like());
    let https = service_var("FLOWGATE_TEST_CONSUL_HTTPS_URL");
    let ca = format!("{}/ca.pem", service_var("FLOWGATE_TEST_TLS_DIR"));
    write(
        &dir.path().join("p.toml"),
        format!(
            r#"name = "consul-tls"
[trigger]
watch = {{ store = "versions", key = "{key}" }}
[stores]
versions = {{ url = "{https}", token = "${{secret:FG_TEST_CONSUL_TOKEN}}", ca_file = "{ca}" }}
[[steps]]
id = "record"
command = {{ shell = "echo \"$V\" >> applied.txt", env = {{ V = "{{{{ trigger.value }}}}" }} }}
"#
        )
        .as_bytes(),
    );
    // Without the CA, the server's certificate is not trusted: said, not retried forever.
    let out = kv(dir.path(), &https, &["set", &key, "1"]);
    assert_ne!(out.code, 0, "{}", out.all());
    assert!(
        out.all().to_lowercase().contains("certificate"),
        "{}",
        out.all()
    );
    // With the store's CA file: set through the pipeline's store, read, watched.
    let out = run(flowgate(dir.path())
        .env("FG_TEST_CONSUL_TOKEN", token())
        .args([
            "kv",
            "--store",
            "versions",
            "--pipeline",
            "p.toml",
            "set",
            &key,
            "2.0.1",
        ]));
    assert_eq!(out.code, 0, "{}", out.all());
    poll(dir.path());
    assert_eq!(applied(dir.path()), ["2.0.1"]);
}
