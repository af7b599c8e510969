//! Helpers for end-to-end tests: they run the built `flowgate` binary the way a
//! user would, against the real services started by `scripts/services.sh`.
#![allow(dead_code, unused_imports)]

use std::io::{BufRead, Read, Write};

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub use flowgate_core::testing::{fresh_s3_bucket, service_var};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_flowgate"))
}

/// A `flowgate` command with S3 credentials for the test server in its environment.
pub fn flowgate(dir: &Path) -> Command {
    let mut c = Command::new(bin());
    c.current_dir(dir);
    c.env_remove("FLOWGATE_STATE")
        .env_remove("FLOWGATE_ENV")
        .env_remove("RUST_LOG");
    // A killed run's pipeline is free again after this long (30s by default):
    // the crash tests restart at once.
    c.env("FLOWGATE_LEASE_TTL", "5s");
    // Always some credentials: without them the AWS client would ask the EC2
    // metadata service, which no test may reach.
    let ak = std::env::var("FLOWGATE_TEST_S3_ACCESS_KEY")
        .unwrap_or_else(|_| "flowgate-test-none".into());
    let sk = std::env::var("FLOWGATE_TEST_S3_SECRET_KEY")
        .unwrap_or_else(|_| "flowgate-test-none".into());
    c.env("AWS_ACCESS_KEY_ID", ak)
        .env("AWS_SECRET_ACCESS_KEY", sk)
        .env("AWS_REGION", "us-east-1");
    c.env("AWS_EC2_METADATA_DISABLED", "true");
    c.stdin(Stdio::null());
    c
}

pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

pub fn run(cmd: &mut Command) -> Ran {
    let out: Output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start flowgate: {e}"));
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Write a file, creating its directory.
pub fn write(path: &Path, body: &[u8]) {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(path, body).unwrap();
}

/// Every file under `dir`, as (relative path, bytes), sorted.
pub fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        // A file that goes while the tree is walked (a delivered file leaving
        // its outbox) is simply not in it.
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else if let Ok(bytes) = std::fs::read(&p) {
                let rel = p
                    .strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((rel, bytes));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// The data objects directly in `dir`, sorted (the `.schema` flowgate writes
/// beside each JSON-lines object left out); none when `dir` does not exist.
pub fn data_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_none_or(|e| e != "schema"));
    files.sort();
    files
}

/// Deterministic pseudo-random bytes (xorshift), so data differs per file.
pub fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// The on-disk directory of an s3s-fs bucket (the server stores objects as files).
pub fn bucket_dir(bucket: &str) -> PathBuf {
    PathBuf::from(service_var("FLOWGATE_TEST_S3_ROOT")).join(bucket)
}

/// A plain HTTP/1.1 request to 127.0.0.1:`port`; returns (status, body).
pub fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A free port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh database on the test PostgreSQL, with a client for setting it up.
pub struct Pg {
    pub url: String,
    pub rt: tokio::runtime::Runtime,
    pub client: tokio_postgres::Client,
}

impl Pg {
    pub fn new() -> Pg {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let url = rt.block_on(flowgate_core::testing::fresh_postgres_db());
        let client = rt.block_on(async {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c
        });
        Pg { url, rt, client }
    }
    pub fn exec(&self, sql: &str) {
        self.rt
            .block_on(self.client.batch_execute(sql))
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
    /// Rows as text, for comparing.
    pub fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let rows = self.rt.block_on(self.client.simple_query(sql)).unwrap();
        rows.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect()
    }
}

/// A copy of examples/oltp-warehouse (pipeline and models) in `to`.
pub fn oltp_example(to: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/oltp-warehouse");
    write(
        &to.join("pipeline.toml"),
        &std::fs::read(src.join("pipeline.toml")).unwrap(),
    );
    for e in std::fs::read_dir(src.join("models")).unwrap() {
        let p = e.unwrap().path();
        write(
            &to.join("models").join(p.file_name().unwrap()),
            &std::fs::read(&p).unwrap(),
        );
    }
}

/// A small HTTP receiver: records each POST body, answers 200.
pub fn receiver() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let b = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            b.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&body).into_owned());
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
    (port, bodies)
}

/// The steps of a data-egress pipeline: copy to the routed bucket (S3 rows), or
/// stage in the outbox and deliver over HTTPS (SFT rows). `under` is the folder
/// under each destination; `deliver` adds options to the deliver step.
pub fn egress_steps(under: &str, deliver: &str) -> String {
    format!(
        r#"
[[steps]]
id = "to-bucket"
when = "route.transfer_type == 'S3'"
copy = {{ from = "source:{{{{ trigger.prefix }}}}", to = "dest:{{{{ route.destination_prefix }}}}/{under}", exclude = ["pipeline_success.flag"] }}

[[steps]]
id = "stage"
when = "route.transfer_type == 'SFT'"
copy = {{ from = "source:{{{{ trigger.prefix }}}}", to = "outbox:{{{{ route.recipient_name }}}}/{under}", exclude = ["pipeline_success.flag"], manifest = "" }}

[[steps]]
id = "deliver"
needs = ["stage"]
deliver = {{ from = "outbox:{{{{ route.recipient_name }}}}", recipient = "{{{{ route.recipient_name }}}}"{deliver} }}
"#
    )
}

/// A folder of its own on the HTTPS receiver (nginx, client certificates required).
pub struct Receiver {
    /// Base URL of this test's own folder on the receiver.
    pub url: String,
    /// Where the receiver stores what it is sent for this test.
    pub root: PathBuf,
    pub tls: PathBuf,
}

pub fn receiver_folder() -> Receiver {
    let id = uuid_like();
    let base = service_var("FLOWGATE_TEST_HTTPS_URL");
    Receiver {
        url: format!("{}{id}/", base),
        root: PathBuf::from(service_var("FLOWGATE_TEST_HTTPS_ROOT")).join(&id),
        tls: PathBuf::from(service_var("FLOWGATE_TEST_TLS_DIR")),
    }
}

pub fn uuid_like() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t{t:x}{}", std::process::id())
}

/// Runs of the pipeline in `dir`, oldest first (run ids are time-ordered), as
/// (status, error or skip reason).
pub fn run_list(dir: &std::path::Path) -> Vec<(String, String)> {
    let out = run(flowgate(dir).args(["runs", "--json", "--limit", "100"]));
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    let mut list: Vec<(String, String, String)> = v
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap_or_default().to_string(),
                r["status"].as_str().unwrap_or_default().to_string(),
                r["error"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    list.sort();
    list.into_iter().map(|(_, s, e)| (s, e)).collect()
}

/// The first `n` lines a long-running command prints after `then` ran (given
/// half a second to start first), within 20 s; the command is killed after.
pub fn first_lines(cmd: &mut Command, n: usize, then: impl FnOnce()) -> Vec<String> {
    let mut child = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .take(n)
            .map(|l| l.unwrap_or_default())
            .collect::<Vec<_>>()
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    then();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !lines.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    lines.join().unwrap_or_default()
}

/// The lines of `applied.txt` in `dir`, where the watch tests' steps append
/// each value they run.
pub fn applied(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("applied.txt"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A background `flowgate` (e.g. `serve`), killed when dropped.
pub struct Serve(pub std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait up to `secs` for `ok`, checking every 100 ms; fail naming `what`.
pub fn wait_for(what: &str, secs: u64, ok: impl FnMut() -> bool) {
    assert!(wait_until(secs, ok), "timed out waiting for {what}");
}

/// Wait up to `secs` for `ok`, checking every 100 ms; whether it came.
pub fn wait_until(secs: u64, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !ok() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    true
}

/// A pipeline watching `key` of the store `versions` (`store` is its inline
/// table, e.g. `{ url = "etcd://…" }`; `extra` more watch options) that appends
/// each value it runs to `applied.txt`.
pub fn watch_pipeline(dir: &Path, store: &str, key: &str, extra: &str) {
    write(
        &dir.join("p.toml"),
        format!(
            r#"name = "rollout"
[stores]
versions = {store}
[trigger]
watch = {{ store = "versions", key = "{key}"{extra} }}
[[steps]]
id = "apply"
command = {{ argv = ["sh", "-c", "echo \"$V\" >> applied.txt"], env = {{ V = "{{{{ trigger.value }}}}" }} }}
"#
        )
        .as_bytes(),
    );
}

/// Seeded pseudo-random numbers below `m` (xorshift): the crash tests' kill
/// points, the same on every run.
pub fn seeded(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m.max(1)
    }
}

/// The published versions of dataset `name` in the state of `dir`, newest first.
pub fn dataset_versions(dir: &Path, name: &str) -> Vec<String> {
    let out = run(flowgate(dir).args(["datasets", "list", name, "--json"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let list: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.all()));
    list.as_array()
        .unwrap()
        .iter()
        .map(|d| d["version"].as_str().unwrap().to_string())
        .collect()
}

/// Run Python (the services' venv, with boto3) after a prelude that sets `E`
/// (moto's endpoint) and `kw` (client arguments for it); returns stdout.
pub fn moto_python(script: &str) -> String {
    let py = service_var("FLOWGATE_TEST_PYTHON");
    let endpoint = service_var("FLOWGATE_TEST_MOTO_ENDPOINT");
    let prelude = format!(
        "import boto3, json, sys\nE={endpoint:?}\nkw=dict(endpoint_url=E, region_name='us-east-1', aws_access_key_id='k', aws_secret_access_key='s')\n"
    );
    let out = std::process::Command::new(py)
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
