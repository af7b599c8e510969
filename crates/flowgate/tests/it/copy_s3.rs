//! `copy` between local files and the real S3 server (s3s-fs), through
//! `flowgate run`, `flowgate poll` and `flowgate serve`.

use std::time::{Duration, Instant};

use crate::common::*;

fn s3_store(name: &str, bucket: &str, prefix: &str, access: &str) -> String {
    let endpoint = service_var("FLOWGATE_TEST_S3_ENDPOINT");
    format!(
        "{name} = {{ url = \"s3://{bucket}/{prefix}\", endpoint = \"{endpoint}\", access = \"{access}\" }}\n"
    )
}

#[test]
fn manual_copy_from_files_to_s3_then_nothing_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let (bucket, _) = fresh_s3_bucket();
    let mut expected = Vec::new();
    for i in 0..5 {
        let rel = format!("2026/11/part-{i}.bin");
        let data = bytes(i, 100_000 + i as usize * 777);
        write(&dir.path().join("out").join(&rel), &data);
        expected.push((rel, data));
    }
    let big = bytes(99, 12 * 1024 * 1024 + 5); // over the part size: a multipart upload
    write(&dir.path().join("out/big/large.bin"), &big);
    expected.push(("big/large.bin".into(), big));
    expected.sort();
    let pipeline = format!(
        "name = \"to-s3\"\n[stores]\nlocal = {{ url = \"file://./out\" }}\n{}[[steps]]\nid = \"upload\"\ncopy = {{ from = \"local:\", to = \"remote:landing\" }}\n",
        s3_store("remote", &bucket, "", "read-write")
    );
    write(&dir.path().join("p.toml"), pipeline.as_bytes());

    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("succeeded"), "{}", out.stdout);
    assert!(out.stdout.contains("6 object(s) written"), "{}", out.stdout);

    let mut landed = tree(&bucket_dir(&bucket).join("landing"));
    let manifest = landed
        .iter()
        .position(|(k, _)| k == "_manifest.json")
        .expect("manifest written");
    let (_, m) = landed.remove(manifest);
    assert_eq!(
        landed, expected,
        "every object arrives byte-identical under its relative key"
    );
    let m: serde_json::Value = serde_json::from_slice(&m).unwrap();
    assert_eq!(m["objects"].as_array().unwrap().len(), 6);

    // Again: everything is unchanged, and flowgate says so.
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("0 object(s) written"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("nothing to copy: all 6 objects were copied before and are unchanged"),
        "{}",
        out.stdout
    );

    // The run history tells the same story.
    let out = run(flowgate(dir.path()).args(["runs", "--json", "--state", ".flowgate/state.db"]));
    let runs: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 2);
    assert_eq!(runs[0]["steps"][0]["objects_skipped"], 6);
    assert_eq!(runs[1]["steps"][0]["objects_out"], 6);
}

#[test]
fn between_buckets_on_one_endpoint_the_server_copies_and_sizes_and_etags_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ((src, _), (dst, _)) = (fresh_s3_bucket(), fresh_s3_bucket());
    let mut expected = Vec::new();
    for (i, rel) in ["a.bin", "sub dir/b+c.bin", "sub dir/ünï.bin", "big.bin"]
        .iter()
        .enumerate()
    {
        let data = bytes(i as u64, if *rel == "big.bin" { 9 << 20 } else { 1000 + i });
        write(&bucket_dir(&src).join("ds").join(rel), &data);
        expected.push((rel.to_string(), data));
    }
    expected.sort();
    let pipeline = format!(
        "name = \"s3-to-s3\"\n[stores]\n{}{}[[steps]]\nid = \"copy\"\ncopy = {{ from = \"src:ds\", to = \"dst:out\", verify = \"size\", manifest = \"_manifest.json\" }}\n",
        s3_store("src", &src, "", "read"),
        s3_store("dst", &dst, "", "write")
    );
    write(&dir.path().join("p.toml"), pipeline.as_bytes());
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout
            .contains("4 object(s) copied server-side: the bytes did not pass through flowgate"),
        "{}",
        out.stdout
    );
    let mut landed = tree(&bucket_dir(&dst).join("out"));
    let at = landed
        .iter()
        .position(|(k, _)| k == "_manifest.json")
        .expect("manifest written");
    let (_, m) = landed.remove(at);
    assert_eq!(
        landed, expected,
        "byte-identical under the same relative keys"
    );
    let m: serde_json::Value = serde_json::from_slice(&m).unwrap();
    let objects = m["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 4);
    assert!(
        objects
            .iter()
            .all(|o| o["etag"].as_str().is_some_and(|t| !t.is_empty())),
        "each object's ETag is in the manifest: {m}"
    );

    // With checksums asked for, both ends are read and hashed.
    let pipeline = pipeline
        .replace("verify = \"size\"", "verify = \"sha256\"")
        .replace("dst:out", "dst:again");
    write(&dir.path().join("p.toml"), pipeline.as_bytes());
    let out = run(flowgate(dir.path()).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains("4 object(s) copied server-side"),
        "{}",
        out.stdout
    );
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(bucket_dir(&dst).join("again/_manifest.json")).unwrap(),
    )
    .unwrap();
    let big = m["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["key"] == "big.bin")
        .unwrap();
    use sha2::Digest;
    assert_eq!(
        big["sha256"],
        hex::encode(sha2::Sha256::digest(bytes(3, 9 << 20)))
    );
}

fn arrival_pipeline(dir: &std::path::Path, bucket: &str) {
    let pipeline = format!(
        "name = \"from-s3\"\n[trigger]\narrival = {{ store = \"remote\", pattern = \"**/_SUCCESS\", poll = \"1s\" }}\n[stores]\n{}local = {{ url = \"file://./in\", access = \"read-write\" }}\n[[steps]]\nid = \"download\"\ncopy = {{ from = \"remote:{{{{ trigger.prefix }}}}\", to = \"local:{{{{ trigger.prefix }}}}\", exclude = [\"_SUCCESS\"] }}\n",
        s3_store("remote", bucket, "", "read")
    );
    write(&dir.join("pipelines/p.toml"), pipeline.as_bytes());
}

#[test]
fn arrival_by_poll_runs_each_flag_once() {
    let dir = tempfile::tempdir().unwrap();
    let (bucket, _) = fresh_s3_bucket();
    let b = bucket_dir(&bucket);
    write(&b.join("exports/a/x.bin"), &bytes(1, 5000));
    write(&b.join("exports/a/y.bin"), &bytes(2, 7000));
    write(&b.join("exports/a/_SUCCESS"), b"");
    arrival_pipeline(dir.path(), &bucket);

    let out = run(flowgate(dir.path()).args(["poll", "pipelines/p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("2 object(s) written"), "{}", out.stdout);
    let got = tree(&dir.path().join("pipelines/in/exports/a"));
    assert_eq!(
        got.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["_manifest.json", "x.bin", "y.bin"]
    );
    assert_eq!(got[1].1, bytes(1, 5000));

    // The same event again: nothing runs, and flowgate says so.
    let out = run(flowgate(dir.path()).args(["poll", "pipelines/p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(out.stdout.contains("nothing new to run"), "{}", out.stdout);
}

#[test]
fn serve_copies_arrivals_and_reports_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let (bucket, _) = fresh_s3_bucket();
    let b = bucket_dir(&bucket);
    arrival_pipeline(dir.path(), &bucket);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = flowgate(dir.path())
        .args([
            "serve",
            "pipelines",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
        }
    }
    // The producer writes its data, then the flag.
    write(&b.join("day1/part-1.bin"), &bytes(7, 300_000));
    write(&b.join("day1/_SUCCESS"), b"");
    let target = dir.path().join("pipelines/in/day1/_manifest.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !target.exists() {
        assert!(
            Instant::now() < deadline,
            "serve did not copy the arrival within 60s"
        );
        assert!(child.try_wait().unwrap().is_none(), "serve exited early");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        std::fs::read(dir.path().join("pipelines/in/day1/part-1.bin")).unwrap(),
        bytes(7, 300_000)
    );

    let get = |path: &str| -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    let health = get("/health");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.contains("from-s3"), "{health}");
    // Wait for the run record to be final before reading metrics.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let runs = get("/runs?pipeline=from-s3");
        if runs.contains("\"status\":\"succeeded\"") {
            break;
        }
        assert!(Instant::now() < deadline, "{runs}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = get("/metrics");
    assert!(
        metrics.contains("flowgate_runs{pipeline=\"from-s3\",status=\"succeeded\"} 1"),
        "{metrics}"
    );

    // SIGTERM: a graceful stop with exit code 0.
    let pid = child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(0));
    let _guard = Kill(child);

    // After a restart the same flag is not copied again.
    let out = run(flowgate(dir.path()).args(["poll", "pipelines/p.toml"]));
    assert!(out.stdout.contains("nothing new to run"), "{}", out.all());
}

#[test]
fn an_unreachable_source_is_retried_then_the_run_fails() {
    let dir = tempfile::tempdir().unwrap();
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let pipeline = format!(
        "name = \"down\"\n[stores]\nremote = {{ url = \"s3://nowhere/\", endpoint = \"http://127.0.0.1:{closed}\" }}\nlocal = {{ url = \"file://./in\", access = \"read-write\" }}\n[[steps]]\nid = \"download\"\ncopy = {{ from = \"remote:\", to = \"local:\" }}\n[policy]\nretry = {{ attempts = 3, backoff = \"50ms..100ms\" }}\n"
    );
    write(&dir.path().join("p.toml"), pipeline.as_bytes());
    let out = run(flowgate(dir.path()).args(["run", "p.toml", "--json"]));
    assert_eq!(out.code, 1, "{}", out.all());
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let run = &v[0]["run"];
    assert_eq!(run["status"], "failed");
    assert_eq!(run["steps"][0]["attempts"], 3, "{run:#}");
    let err = run["steps"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("listing `remote:`") && err.contains("retriable"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(dir.path().join("in"))
            .unwrap()
            .next()
            .is_none(),
        "nothing written"
    );
}

#[test]
fn an_s3_compatible_endpoint_without_credentials_says_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let closed = free_port();
    write(
        &dir.path().join("p.toml"),
        format!(
            "name = \"nocreds\"\n[stores]\nremote = {{ url = \"s3://b/\", endpoint = \"http://127.0.0.1:{closed}\" }}\nlocal = {{ url = \"file://./in\", access = \"read-write\" }}\n[[steps]]\nid = \"download\"\ncopy = {{ from = \"remote:\", to = \"local:\" }}\n"
        )
        .as_bytes(),
    );
    let out = run(flowgate(dir.path())
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .args(["run", "p.toml"]));
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.stdout
            .contains("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        "{}",
        out.stdout
    );
}
