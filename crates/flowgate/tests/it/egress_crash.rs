//! data-egress under SIGKILL: a flag routes one dataset to an S3 bucket (s3s-fs)
//! and, staged in an outbox, over mutual TLS to nginx. Killed at 50 seeded points
//! across the copy, the staging and the delivery, then polled again until its
//! events are done, every case ends with the bucket and the receiver holding
//! exactly what an uninterrupted run leaves there.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::*;

const FILES: u64 = 10;

/// Files under a folder as (relative path, bytes), sorted.
type Files = Vec<(String, Vec<u8>)>;

fn produce(dir: &Path) {
    for i in 0..FILES {
        write(
            &dir.join(format!("source/exports/sales/run1/part-{i:02}.bin")),
            &bytes(40 + i, 400_000 + i as usize * 977),
        );
    }
    write(
        &dir.join("source/exports/sales/run1/pipeline_success.flag"),
        b"",
    );
}

fn pipeline(dir: &Path, bucket: &str, r: &Receiver) {
    let endpoint = service_var("FLOWGATE_TEST_S3_ENDPOINT");
    let tls = r.tls.display();
    write(
        &dir.join("egress.toml"),
        format!(
            r#"name = "egress"
[trigger]
arrival = {{ store = "source", pattern = "**/pipeline_success.flag" }}
[stores]
source = {{ url = "file://./source" }}
dest   = {{ url = "s3://{{{{ route.destination_bucket }}}}", endpoint = "{endpoint}", access = "write" }}
outbox = {{ url = "file://./outbox", access = "read-write" }}
[routing]
rows = [
  {{ source_prefix = "exports/sales", pipeline_name = "sales", transfer_type = "S3", destination_bucket = "{bucket}", destination_prefix = "in/sales", recipient_name = "" }},
  {{ source_prefix = "exports/sales", pipeline_name = "sales#sft", transfer_type = "SFT", destination_bucket = "", destination_prefix = "", recipient_name = "receiver" }},
]
[recipients.receiver]
url = "{url}"
client_cert = "{tls}/client.pem"
client_key = "{tls}/client.key"
ca = "{tls}/ca.pem"
[policy]
retry = {{ attempts = 3, backoff = "50ms..200ms" }}
{steps}"#,
            url = r.url,
            steps = egress_steps("run1", ", concurrency = 2")
                .replace("manifest = \"\" }", "manifest = \"\", concurrency = 2 }"),
        )
        .as_bytes(),
    );
}

/// What an egress leaves behind: the bucket's files (the manifest by name only:
/// it holds the run's id and time) and the receiver's files, with their bytes.
fn outcome(bucket: &str, r: &Receiver) -> (Files, Files) {
    let mut dest = tree(&bucket_dir(bucket));
    for (k, v) in dest.iter_mut() {
        if k.ends_with("_manifest.json") {
            v.clear();
        }
    }
    (dest, tree(&r.root))
}

/// Objects at the destinations so far (the kill points count these).
fn progress(bucket: &str, r: &Receiver, dir: &Path) -> usize {
    tree(&bucket_dir(bucket)).len() + tree(&r.root).len() + tree(&dir.join("outbox")).len()
}

#[test]
fn sigkill_at_50_seeded_points_across_copy_staging_and_delivery() {
    // The uninterrupted run: the reference.
    let reference = {
        let dir = tempfile::tempdir().unwrap();
        let (bucket, _) = fresh_s3_bucket();
        let r = receiver_folder();
        produce(dir.path());
        pipeline(dir.path(), &bucket, &r);
        let out = run(flowgate(dir.path()).args(["poll", "egress.toml"]));
        assert_eq!(out.code, 0, "{}", out.all());
        let got = outcome(&bucket, &r);
        assert_eq!(
            got.0.len() as u64,
            FILES + 1,
            "{:?}",
            got.0.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        assert_eq!(got.1.len() as u64, FILES);
        got
    };
    let total = (FILES * 3) as usize; // copied, staged, delivered
    let mut next = seeded(0x0e9e);
    for case in 0..50 {
        let dir = tempfile::tempdir().unwrap();
        let (bucket, _) = fresh_s3_bucket();
        let r = receiver_folder();
        produce(dir.path());
        pipeline(dir.path(), &bucket, &r);
        let k = 1 + next(total as u64 - 2) as usize;
        let mut child = flowgate(dir.path())
            .args(["poll", "egress.toml"])
            .env("FLOWGATE_LEASE_TTL", "3s")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while progress(&bucket, &r, dir.path()) < k && child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "case {case}: no progress");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(next(30)));
        let _ = child.kill(); // SIGKILL (a no-op if it already finished)
        child.wait().unwrap();

        // Poll again until both routes are done (the lane frees when the killed
        // worker's lease runs out).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = run(flowgate(dir.path())
                .args(["poll", "egress.toml", "--json"])
                .env("FLOWGATE_LEASE_TTL", "3s"));
            assert!(out.code == 0, "case {case} (killed at {k}): {}", out.all());
            let got = outcome(&bucket, &r);
            if got == reference && outbox_objects(dir.path()).is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "case {case} (killed at {k}): the result differs from the uninterrupted run: bucket {:?}, receiver {:?}, \
                 contents equal: {}/{}, left in the outbox: {:?}; runs (status, error): {:?}",
                got.0.iter().map(|f| &f.0).collect::<Vec<_>>(),
                got.1.iter().map(|f| &f.0).collect::<Vec<_>>(),
                got.0 == reference.0,
                got.1 == reference.1,
                tree(&dir.path().join("outbox"))
                    .iter()
                    .map(|f| &f.0)
                    .collect::<Vec<_>>(),
                run_list(dir.path())
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// What is left in the local outbox as objects. A write killed half-way leaves
/// its staging file (`name#<digits>`, object_store's local store): no object
/// (listings skip it, so it is never delivered) but an untidy leftover; the
/// bucket and the receiver holding exactly the reference shows nothing was
/// lost or sent twice.
fn outbox_objects(dir: &Path) -> Vec<String> {
    tree(&dir.join("outbox"))
        .into_iter()
        .map(|f| f.0)
        .filter(|name| {
            !name
                .rsplit_once('#')
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect()
}
