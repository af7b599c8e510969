//! data-egress: a flag file arrives, its prefix is looked up in routing rows, and
//! each row is one transfer: a copy to a destination store (S3 route) or a staged
//! outbox delivered over HTTPS with a client certificate (SFT route) to a real
//! nginx that demands one.

use crate::common::*;

use std::path::{Path, PathBuf};

/// A dataset under `exports/sales/run1/` and its flag.
fn produce(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let files = vec![
        ("a.csv".to_string(), bytes(1, 70_000)),
        ("sub/b.bin".to_string(), bytes(2, 1_500_000)),
        ("name with space.txt".to_string(), b"hello\n".to_vec()),
    ];
    for (k, v) in &files {
        write(&dir.join("source/exports/sales/run1").join(k), v);
    }
    write(
        &dir.join("source/exports/sales/run1/pipeline_success.flag"),
        b"",
    );
    files
}

fn pipeline(dir: &Path, r: &Receiver, cert: &str, webhook: &str) {
    let tls = r.tls.display();
    write(
        &dir.join("egress.toml"),
        format!(
            r#"name = "egress"

[trigger]
arrival = {{ store = "source", pattern = "**/pipeline_success.flag", poll = "1s" }}

[stores]
source = {{ url = "file://./source" }}
dest   = {{ url = "file://./buckets/{{{{ route.destination_bucket }}}}", access = "write" }}
outbox = {{ url = "file://./outbox", access = "read-write" }}

[routing]
rows = [
  {{ source_prefix = "exports/sales", pipeline_name = "sales", transfer_type = "S3", destination_bucket = "partner-a", destination_prefix = "in/sales", decrypt = false, recipient_name = "", source_bucket = "producer" }},
  {{ source_prefix = "exports/sales", pipeline_name = "sales#sft", transfer_type = "SFT", destination_bucket = "", destination_prefix = "", decrypt = false, recipient_name = "receiver", source_bucket = "producer" }},
]

[recipients.receiver]
url = "{url}"
client_cert = "{tls}/{cert}.pem"
client_key = "{tls}/{cert}.key"
ca = "{tls}/ca.pem"
{steps}
[notify]
webhook = "{webhook}"
"#,
            url = r.url,
            steps = egress_steps("run1", r#", attempts = 3, backoff = "20ms..50ms""#),
        )
        .as_bytes(),
    );
}

fn put_count(r: &Receiver) -> usize {
    let log = PathBuf::from(service_var("FLOWGATE_TEST_HTTPS_ROOT")).join("../../logs/access.log");
    let name = r.root.file_name().unwrap().to_string_lossy().to_string();
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!("PUT /inbound/{name}/")) && l.contains("\" 20"))
        .count()
}

#[test]
fn one_prefix_goes_to_a_bucket_and_over_mutual_tls_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let r = receiver_folder();
    let files = produce(dir.path());
    let (port, _bodies) = receiver();
    pipeline(
        dir.path(),
        &r,
        "client",
        &format!("http://127.0.0.1:{port}/hook"),
    );

    let out = run(flowgate(dir.path()).args(["poll", "egress.toml", "--json"]));
    assert_eq!(out.code, 0, "{}", out.all());

    // The S3 route: every file under the destination prefix, byte-identical, and
    // a manifest written last.
    for (k, v) in &files {
        let got = std::fs::read(dir.path().join("buckets/partner-a/in/sales/run1").join(k))
            .unwrap_or_else(|e| panic!("{k} not copied: {e}\n{}", out.all()));
        assert!(&got == v, "{k} differs");
    }
    assert!(
        dir.path()
            .join("buckets/partner-a/in/sales/run1/_manifest.json")
            .is_file()
    );
    assert!(
        !dir.path()
            .join("buckets/partner-a/in/sales/run1/pipeline_success.flag")
            .exists(),
        "the flag is not data"
    );

    // The SFT route: each file arrived at the receiver, byte-identical, under its
    // relative path; the outbox is empty.
    for (k, v) in &files {
        let got = std::fs::read(r.root.join("run1").join(k))
            .unwrap_or_else(|e| panic!("{k} not delivered: {e}\n{}", out.all()));
        assert!(&got == v, "{k} differs at the receiver");
    }
    let left: Vec<_> = walk(&dir.path().join("outbox"));
    assert!(left.is_empty(), "outbox not emptied: {left:?}");
    assert_eq!(put_count(&r), files.len(), "one PUT per file");

    // The same flag seen again (another poll): no second transfer.
    let out = run(flowgate(dir.path()).args(["poll", "egress.toml"]));
    assert_eq!(out.code, 0, "{}", out.all());
    assert_eq!(put_count(&r), files.len(), "nothing sent twice");
    let runs = run(flowgate(dir.path()).args(["runs", "--json"]));
    let runs: serde_json::Value = serde_json::from_str(&runs.stdout).unwrap();
    assert_eq!(
        runs.as_array().unwrap().len(),
        2,
        "one run per routing row: {runs}"
    );
}

#[test]
fn an_untrusted_client_certificate_is_retried_then_quarantined_with_the_tls_reason() {
    let dir = tempfile::tempdir().unwrap();
    let r = receiver_folder();
    let files = produce(dir.path());
    let (port, bodies) = receiver();
    pipeline(
        dir.path(),
        &r,
        "rogue",
        &format!("http://127.0.0.1:{port}/hook"),
    );

    let out = run(flowgate(dir.path()).args(["poll", "egress.toml"]));
    assert_eq!(out.code, 3, "partial: {}", out.all());
    assert!(!r.root.exists(), "nothing may arrive at the receiver");
    assert_eq!(put_count(&r), 0);

    // Each file quarantined under its whole outbox key, with a report that
    // names the TLS failure.
    let q = dir.path().join("outbox/failed/receiver");
    for (k, v) in &files {
        let kept = std::fs::read(q.join("run1").join(k)).unwrap_or_else(|e| panic!("{k}: {e}"));
        assert!(&kept == v);
        let report =
            std::fs::read_to_string(q.join("run1").join(format!("{k}.error.json"))).unwrap();
        let lower = report.to_lowercase();
        assert!(
            lower.contains("after 3 attempt")
                && (lower.contains("certificate")
                    || lower.contains("alert")
                    || lower.contains("tls")),
            "{report}"
        );
    }
    let outbox_left: Vec<_> = walk(&dir.path().join("outbox/receiver"));
    assert!(outbox_left.is_empty(), "{outbox_left:?}");

    // The run says nothing was delivered, and someone was told.
    let runs = run(flowgate(dir.path()).args(["runs", "--json"]));
    let runs: serde_json::Value = serde_json::from_str(&runs.stdout).unwrap();
    let sft = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["status"] == "partial")
        .unwrap_or_else(|| panic!("{runs}"));
    let deliver = sft["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "deliver")
        .unwrap();
    assert_eq!(deliver["objects_out"], 0, "{deliver}");
    assert_eq!(deliver["quarantined"], files.len(), "{deliver}");
    let notices = bodies.lock().unwrap().clone();
    assert!(
        notices.iter().any(|n| n.contains("quarantined")),
        "{notices:?}"
    );
}

#[test]
fn an_event_without_a_routing_row_is_dead_lettered_notified_and_the_run_is_partial() {
    let dir = tempfile::tempdir().unwrap();
    let r = receiver_folder();
    let (port, bodies) = receiver();
    pipeline(
        dir.path(),
        &r,
        "client",
        &format!("http://127.0.0.1:{port}/hook"),
    );
    write(&dir.path().join("source/exports/unknown/x.csv"), b"1\n");
    write(
        &dir.path()
            .join("source/exports/unknown/pipeline_success.flag"),
        b"",
    );
    let out = run(flowgate(dir.path()).args(["poll", "egress.toml"]));
    // Set aside, not lost: partial (exit 3), as README says of dead-lettered input.
    assert_eq!(out.code, 3, "{}", out.all());
    assert!(
        out.all()
            .contains("no routing row has source_prefix `exports/unknown`"),
        "{}",
        out.all()
    );
    let dead: Vec<_> = walk(&dir.path().join(".flowgate/dead-letter"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    let line = std::fs::read_to_string(&dead[0]).unwrap();
    assert!(
        line.contains("exports/unknown") && line.contains("no routing row"),
        "{line}"
    );
    let notices = bodies.lock().unwrap().clone();
    assert!(
        notices.iter().any(|n| n.contains("no routing row")),
        "{notices:?}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

fn encrypt(to: &age::x25519::Recipient, plain: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let enc = age::Encryptor::with_recipients(std::iter::once(to as &dyn age::Recipient))
        .expect("a recipient");
    let mut out = Vec::new();
    let mut w = enc.wrap_output(&mut out).unwrap();
    w.write_all(plain).unwrap();
    w.finish().unwrap();
    out
}

#[test]
fn age_files_are_decrypted_while_copying_and_a_file_that_is_not_is_quarantined() {
    use age::secrecy::ExposeSecret;
    let dir = tempfile::tempdir().unwrap();
    let ours = age::x25519::Identity::generate();
    let theirs = age::x25519::Identity::generate();
    let plain = bytes(7, 3_000_000);
    let run_dir = dir.path().join("source/exports/secret/run1");
    write(
        &run_dir.join("big.bin.age"),
        &encrypt(&ours.to_public(), &plain),
    );
    write(
        &run_dir.join("small.txt.age"),
        &encrypt(&ours.to_public(), b"small\n"),
    );
    write(
        &run_dir.join("wrong.bin.age"),
        &encrypt(&theirs.to_public(), b"not for us"),
    );
    write(&run_dir.join("pipeline_success.flag"), b"");
    write(
        &dir.path().join("p.toml"),
        br#"name = "decrypt"
[trigger]
arrival = { store = "source", pattern = "**/pipeline_success.flag" }
[stores]
source = { url = "file://./source" }
dest = { url = "file://./dest", access = "write" }
[routing]
rows = [ { source_prefix = "exports/secret", pipeline_name = "secret", decrypt = true } ]
[[steps]]
id = "copy"
copy = { from = "source:{{ trigger.prefix }}", to = "dest:run1", exclude = ["pipeline_success.flag"], decrypt = { age_identity = "${secret:EGRESS_AGE_KEY}", when = "route.decrypt" } }
"#,
    );
    let key = ours.to_string();
    let out = run(flowgate(dir.path())
        .args(["poll", "p.toml"])
        .env("EGRESS_AGE_KEY", key.expose_secret()));
    // The transfer fails, with the reason, because one file could not be decrypted…
    assert_eq!(out.code, 1, "{}", out.all());
    assert!(
        out.all().contains("`wrong.bin.age` could not be decrypted"),
        "{}",
        out.all()
    );
    assert!(
        !out.all().contains(key.expose_secret()),
        "the identity never appears in output"
    );
    // …the others arrive decrypted, without `.age`…
    assert!(std::fs::read(dir.path().join("dest/run1/big.bin")).unwrap() == plain);
    assert_eq!(
        std::fs::read(dir.path().join("dest/run1/small.txt")).unwrap(),
        b"small\n"
    );
    assert!(!dir.path().join("dest/run1/wrong.bin").exists());
    // …and the bad one is quarantined, as it was, with the reason.
    let q = walk(&dir.path().join(".flowgate/quarantine"));
    let report = q
        .iter()
        .find(|p| p.to_string_lossy().ends_with("wrong.bin.age.error.json"))
        .unwrap_or_else(|| panic!("{q:?}"));
    let report = std::fs::read_to_string(report).unwrap();
    assert!(report.contains("cannot decrypt"), "{report}");

    // The sender takes the bad file back; the failed run, run again, is the
    // same arrival (its prefix) and routing row, and the decrypted copies are
    // known as unchanged (the ledger holds the size written, not the
    // source's), so nothing is decrypted or written twice.
    std::fs::remove_file(run_dir.join("wrong.bin.age")).unwrap();
    let copied = std::fs::metadata(dir.path().join("dest/run1/big.bin"))
        .unwrap()
        .modified()
        .unwrap();
    let runs = run(flowgate(dir.path()).args(["runs", "--json", "--limit", "1"]));
    let runs: serde_json::Value = serde_json::from_str(&runs.stdout).unwrap();
    assert_eq!(runs[0]["status"], "failed", "{runs}");
    let id = runs[0]["id"].as_str().unwrap().to_string();
    let out = run(flowgate(dir.path())
        .args(["runs", "rerun", &id, "p.toml"])
        .env("EGRESS_AGE_KEY", key.expose_secret()));
    assert_eq!(out.code, 0, "{}", out.all());
    assert!(
        out.all()
            .contains("nothing to copy: all 2 objects were copied before and are unchanged"),
        "{}",
        out.all()
    );
    let after = std::fs::metadata(dir.path().join("dest/run1/big.bin"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(copied, after, "big.bin was not written again");
}
