//! SIGKILL during a large copy, then run again: the destination ends complete and
//! byte-identical to the source, every time.

mod common;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

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

    // The uninterrupted run, for timing and as the reference.
    let (ref_bucket, _) = fresh_s3_bucket();
    let ref_work = base.path().join("reference");
    pipeline(&ref_work, &base.path().join("src"), &ref_bucket);
    let t0 = Instant::now();
    let out = run(flowgate(&ref_work).args(["run", "p.toml", "--key", "crash"]));
    let full = t0.elapsed();
    assert_eq!(out.code, 0, "{}", out.all());
    let (reference, manifest) = landed(&ref_bucket);
    assert!(manifest);
    assert_eq!(
        reference, expected,
        "the uninterrupted run copies everything byte-identically"
    );

    // Kill points spread over the run, two kills per case, seeded for repeatability.
    let mut seed = 0x5eed_u64;
    let mut killed_mid_copy = 0;
    for case in 0..4 {
        let (bucket, _) = fresh_s3_bucket();
        let work = base.path().join(format!("case-{case}"));
        pipeline(&work, &base.path().join("src"), &bucket);
        for _ in 0..2 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let fraction = 0.1 + (seed % 800) as f64 / 1000.0; // 10%..90% of a full run
            let at = full.mul_f64(fraction);
            let mut child = flowgate(&work)
                .args(["run", "p.toml", "--key", "crash"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(at);
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                killed_mid_copy += 1;
            }
            child.wait().unwrap();
            let (partial, _) = landed(&bucket);
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
        assert!(
            runs.as_array()
                .unwrap()
                .iter()
                .all(|r| r["status"] != "running"),
            "case {case}: {runs:#}"
        );
    }
    assert!(
        killed_mid_copy >= 4,
        "only {killed_mid_copy} kills landed mid-copy; the test did not test much"
    );
    let _ = Duration::ZERO;
}
