//! SIGKILL during a large copy, then run again: the destination ends complete and
//! byte-identical to the source, every time.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

const FILES: u64 = 24;

fn source(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut expected = Vec::new();
    for i in 0..FILES {
        let rel = format!("batch-{}/part-{i:03}.bin", i % 3);
        let data = bytes(i + 1, 2 * 1024 * 1024 + (i as usize * 4099));
        write(&dir.join("src").join(&rel), &data);
        expected.push((rel, data));
    }
    let big = bytes(1000, 30 * 1024 * 1024 + 17);
    write(&dir.join("src/large/one.bin"), &big);
    expected.push(("large/one.bin".into(), big));
    expected.sort();
    expected
}

fn pipeline(work: &Path, src: &Path, bucket: &str) {
    let endpoint = service_var("FLOWGATE_TEST_S3_ENDPOINT");
    let text = format!(
        "name = \"crash\"\n[stores]\nsrc = {{ url = \"file://{}\" }}\ndst = {{ url = \"s3://{bucket}/\", endpoint = \"{endpoint}\", access = \"read-write\" }}\n[[steps]]\nid = \"copy\"\ncopy = {{ from = \"src:\", to = \"dst:copy\", concurrency = 4 }}\n[policy]\nretry = {{ attempts = 3, backoff = \"100ms..1s\" }}\n",
        src.display()
    );
    write(&work.join("p.toml"), text.as_bytes());
}

fn landed(bucket: &str) -> (Vec<(String, Vec<u8>)>, bool) {
    let mut t = tree(&bucket_dir(bucket).join("copy"));
    let had_manifest = t.iter().any(|(k, _)| k == "_manifest.json");
    t.retain(|(k, _)| k != "_manifest.json");
    (t, had_manifest)
}

#[test]
fn sigkill_at_several_points_then_rerun_gives_the_uninterrupted_result() {
    let base = tempfile::tempdir().unwrap();
    let expected = source(base.path());

    // The uninterrupted run: the reference.
    let (ref_bucket, _) = fresh_s3_bucket();
    let ref_work = base.path().join("reference");
    pipeline(&ref_work, &base.path().join("src"), &ref_bucket);
    let out = run(flowgate(&ref_work).args(["run", "p.toml", "--key", "crash"]));
    assert_eq!(out.code, 0, "{}", out.all());
    let (reference, manifest) = landed(&ref_bucket);
    assert!(manifest);
    assert_eq!(
        reference, expected,
        "the uninterrupted run copies everything byte-identically"
    );

    // Kill points are chosen by progress (objects landed) plus a seeded delay, so
    // some kills hit the middle of an object, the large multipart one included.
    let total = expected.len();
    let mut seed = 0x5eed_u64;
    let mut next = move |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    for case in 0..4 {
        let (bucket, _) = fresh_s3_bucket();
        let work = base.path().join(format!("case-{case}"));
        pipeline(&work, &base.path().join("src"), &bucket);
        let first = 1 + next((total / 2) as u64) as usize;
        let second = first + 1 + next((total - first - 3) as u64) as usize;
        for want in [first, second] {
            let mut child = flowgate(&work)
                .args(["run", "p.toml", "--key", "crash"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(120);
            while landed(&bucket).0.len() < want {
                assert!(
                    Instant::now() < deadline,
                    "case {case}: no progress to {want} objects"
                );
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "case {case}: finished before the kill point {want}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(next(60)));
            assert!(
                child.try_wait().unwrap().is_none(),
                "case {case}: finished before the kill"
            );
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            let (partial, manifest) = landed(&bucket);
            assert!(
                !manifest,
                "case {case}: killed before the end, so no manifest"
            );
            assert!(partial.len() < total, "case {case}: killed before the end");
            for (k, v) in &partial {
                // Whatever is visible after a kill is a complete object, never a torn one.
                let want = expected.iter().find(|(ek, _)| ek == k).map(|(_, v)| v);
                assert_eq!(
                    Some(v),
                    want,
                    "case {case}: {k} is visible but not complete after SIGKILL"
                );
            }
        }
        let out = run(flowgate(&work).args(["run", "p.toml", "--key", "crash"]));
        assert_eq!(out.code, 0, "case {case}: {}", out.all());
        let (after, manifest) = landed(&bucket);
        assert!(manifest, "case {case}: manifest written at the end");
        assert_eq!(
            after, reference,
            "case {case}: destination equals the uninterrupted result"
        );
        // The killed runs are not left looking alive.
        let runs = run(flowgate(&work).args(["runs", "--json", "--state", ".flowgate/state.db"]));
        let runs: serde_json::Value = serde_json::from_str(&runs.stdout).unwrap();
        let statuses: Vec<&str> = runs
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].as_str().unwrap())
            .collect();
        assert_eq!(
            statuses,
            ["succeeded", "abandoned", "abandoned"],
            "case {case}"
        );
    }
}

#[test]
fn sigterm_stops_at_a_safe_point_and_the_next_run_finishes() {
    let base = tempfile::tempdir().unwrap();
    let expected = source(base.path());
    let (bucket, _) = fresh_s3_bucket();
    let work = base.path().join("work");
    pipeline(&work, &base.path().join("src"), &bucket);
    let child = flowgate(&work)
        .args(["run", "p.toml"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until some objects have landed, then ask it to stop.
    let deadline = Instant::now() + Duration::from_secs(60);
    while landed(&bucket).0.len() < 3 {
        assert!(Instant::now() < deadline, "copy made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(130),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("interrupted"), "{stdout}");
    let (partial, manifest) = landed(&bucket);
    assert!(!manifest, "no manifest for an interrupted copy");
    assert!(
        partial.len() < expected.len(),
        "the stop came before the end"
    );

    // A stopped manual run stays stopped: a trigger pass does not restart it.
    let out = run(flowgate(&work).args(["poll", "p.toml"]));
    assert!(out.stdout.contains("nothing new to run"), "{}", out.all());
    assert_eq!(landed(&bucket).0.len(), partial.len());

    // The next run resumes: what landed is not copied again.
    let out = run(flowgate(&work).args(["run", "p.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.stdout.contains(&format!("{} unchanged", partial.len())),
        "{}",
        out.stdout
    );
    let (after, manifest) = landed(&bucket);
    assert!(manifest);
    assert_eq!(after, expected);
}
