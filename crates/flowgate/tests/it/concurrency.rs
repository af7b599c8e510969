//! One pipeline, one run at a time, across processes, paused workers and clocks
//! that disagree (findings 1, 2, 3 and 6 of the engine review).
//!
//! The pipeline stages three files and delivers them one by one to a receiver
//! that answers each after a pause and counts requests in flight at once: two
//! runs of the pipeline that overlap show as two requests in flight.

use std::io::{BufRead, Read, Write};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What the receiver saw.
#[derive(Default)]
struct Seen {
    in_flight: AtomicUsize,
    most_at_once: AtomicUsize,
    requests: AtomicUsize,
}

/// An HTTP receiver that answers every request after `pause`.
fn slow_receiver(pause: Duration) -> (u16, Arc<Seen>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let s = s.clone();
            std::thread::spawn(move || {
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
                if reader.read_exact(&mut body).is_err() {
                    return;
                }
                let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                s.most_at_once.fetch_max(now, Ordering::SeqCst);
                s.requests.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(pause);
                s.in_flight.fetch_sub(1, Ordering::SeqCst);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                );
            });
        }
    });
    (port, seen)
}

/// The pipeline in `dir`, delivering to `port`, on `schedule` (if any).
fn pipeline(dir: &std::path::Path, port: u16, schedule: Option<&str>) {
    for i in 0..3 {
        write(
            &dir.join(format!("src/part-{i}.csv")),
            format!("{i}\n").as_bytes(),
        );
    }
    let trigger = schedule
        .map(|s| format!("[trigger]\nschedule = \"{s}\"\ncatch_up = \"none\"\n"))
        .unwrap_or_default();
    write(
        &dir.join("p.toml"),
        format!(
            r#"name = "lane"
{trigger}
[stores]
src = {{ url = "file://./src" }}
outbox = {{ url = "file://./outbox", access = "read-write" }}

[recipients.sink]
url = "http://127.0.0.1:{port}/in/"
allow_http = true

[[steps]]
id = "stage"
copy = {{ from = "src:", to = "outbox:{{{{ run.id }}}}", manifest = "" }}

[[steps]]
id = "send"
needs = ["stage"]
deliver = {{ from = "outbox:{{{{ run.id }}}}", recipient = "sink", concurrency = 1, attempts = 1 }}
"#
        )
        .as_bytes(),
    );
}

fn runs(dir: &std::path::Path, state: &str) -> Vec<serde_json::Value> {
    let out = run(flowgate(dir).args(["runs", "--json", "--limit", "500", "--state", state]));
    serde_json::from_str::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn wait_until(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn serve(dir: &std::path::Path, state: &str, skew: Option<&str>) -> Proc {
    let mut c = flowgate(dir);
    c.args(["serve", ".", "--listen", "127.0.0.1:0", "--state", state])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(s) = skew {
        c.env("FLOWGATE_TEST_CLOCK_SKEW", s);
    }
    Proc(c.spawn().unwrap())
}

#[test]
fn finding_01_a_manual_run_beside_scheduled_ones_never_overlaps_them() {
    let (port, seen) = slow_receiver(Duration::from_millis(250));
    let dir = tempfile::tempdir().unwrap();
    pipeline(dir.path(), port, Some("every 1s"));
    let state = dir.path().join("state.db").display().to_string();
    let _worker = serve(dir.path(), &state, None);
    // Two people ask for a run while the schedule keeps ticking: they queue
    // behind the run in progress, not behind every tick after theirs.
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 0..2 {
        let (d, s, tx) = (dir.path().to_path_buf(), state.clone(), tx.clone());
        std::thread::spawn(move || {
            let _ = tx.send(run(flowgate(&d).args(["run", "p.toml", "--state", &s])));
        });
    }
    for _ in 0..2 {
        let out = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a manual run waited 30 s behind a schedule of 1 s runs: starved");
        assert_eq!(out.code, 0, "{}", out.all());
    }
    wait_until("scheduled runs too", 30, || {
        runs(dir.path(), &state)
            .iter()
            .filter(|r| r["trigger"] == "schedule" && r["status"] == "succeeded")
            .count()
            >= 2
    });
    assert_eq!(
        seen.most_at_once.load(Ordering::SeqCst),
        1,
        "two runs of the pipeline delivered at the same time"
    );
}

#[test]
fn finding_02_workers_whose_clocks_are_a_minute_apart_share_one_lane() {
    let (port, seen) = slow_receiver(Duration::from_millis(200));
    let dir = tempfile::tempdir().unwrap();
    pipeline(dir.path(), port, Some("every 1s"));
    let state = Pg::new().url;
    let _workers = [
        serve(dir.path(), &state, Some("60s")),
        serve(dir.path(), &state, Some("-60s")),
        serve(dir.path(), &state, None),
    ];
    wait_until("six runs", 60, || {
        runs(dir.path(), &state)
            .iter()
            .filter(|r| r["status"] == "succeeded")
            .count()
            >= 6
    });
    assert_eq!(
        seen.most_at_once.load(Ordering::SeqCst),
        1,
        "runs overlapped"
    );
    let all = runs(dir.path(), &state);
    for r in &all {
        assert!(
            ["succeeded", "running", "skipped"].contains(&r["status"].as_str().unwrap_or("")),
            "no claim is stolen or lost: {r:#}"
        );
    }
    let workers: std::collections::HashSet<&str> = all
        .iter()
        .filter(|r| r["status"] == "succeeded")
        .filter_map(|r| r["worker"].as_str())
        .collect();
    assert!(!workers.is_empty());
}

/// A manual run with key `k`, its output piped.
fn manual(dir: &std::path::Path, state: &str) -> Proc {
    Proc(
        flowgate(dir)
            .args(["run", "p.toml", "--key", "k", "--json", "--state", state])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

fn finish(mut p: Proc) -> Ran {
    let child = std::mem::replace(
        &mut p.0,
        std::process::Command::new("true").spawn().unwrap(),
    );
    let out = child.wait_with_output().unwrap();
    Ran {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn signal(p: &Proc, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &p.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

#[test]
fn finding_02_a_worker_paused_past_its_lease_has_its_writes_refused() {
    let (port, seen) = slow_receiver(Duration::from_millis(700));
    let dir = tempfile::tempdir().unwrap();
    pipeline(dir.path(), port, None);
    let state = Pg::new().url;
    let a = manual(dir.path(), &state);
    wait_until("A's first delivery", 30, || {
        seen.requests.load(Ordering::SeqCst) >= 1
    });
    signal(&a, "-STOP");
    // Past A's lease (5s in tests): B takes the event over and finishes it.
    std::thread::sleep(Duration::from_secs(7));
    let b = run(
        flowgate(dir.path()).args(["run", "p.toml", "--key", "k", "--json", "--state", &state])
    );
    assert_eq!(b.code, 0, "{}", b.all());
    let b_json: serde_json::Value = serde_json::from_str(&b.stdout).unwrap();
    assert_eq!(b_json[0]["run"]["status"], "succeeded", "{b_json:#}");
    let after_b = seen.requests.load(Ordering::SeqCst);
    signal(&a, "-CONT");
    let a = finish(a);
    assert_eq!(a.code, 130, "A stops, interrupted: {}", a.all());
    assert!(a.all().contains("lost its claim"), "{}", a.all());
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        after_b,
        "A sent nothing once it woke"
    );
    let all = runs(dir.path(), &state);
    let succeeded = all.iter().filter(|r| r["status"] == "succeeded").count();
    assert_eq!(succeeded, 1, "the event ran to success once: {all:#?}");
}

#[test]
fn finding_03_a_paused_worker_within_its_lease_keeps_its_run() {
    let (port, seen) = slow_receiver(Duration::from_millis(500));
    let dir = tempfile::tempdir().unwrap();
    pipeline(dir.path(), port, None);
    let state = Pg::new().url;
    let a = manual(dir.path(), &state);
    wait_until("A's first delivery", 30, || {
        seen.requests.load(Ordering::SeqCst) >= 1
    });
    // Paused, not dead: nothing but its lease says which, and the lease holds.
    signal(&a, "-STOP");
    let b = manual(dir.path(), &state);
    std::thread::sleep(Duration::from_secs(2));
    signal(&a, "-CONT");
    let a = finish(a);
    let b = finish(b);
    assert_eq!(a.code, 0, "{}", a.all());
    assert_eq!(b.code, 0, "{}", b.all());
    assert!(
        b.stdout.contains("already_done"),
        "B waited, then found it done: {}",
        b.all()
    );
    assert_eq!(seen.requests.load(Ordering::SeqCst), 3);
    assert_eq!(seen.most_at_once.load(Ordering::SeqCst), 1);
}

#[test]
fn finding_06_a_failed_save_run_lets_go_of_the_claim_and_the_event_runs_again() {
    let (port, seen) = slow_receiver(Duration::from_millis(10));
    let dir = tempfile::tempdir().unwrap();
    pipeline(dir.path(), port, Some("every 1h"));
    write(
        &dir.path().join("p.toml"),
        std::fs::read_to_string(dir.path().join("p.toml"))
            .unwrap()
            .replace(
                "[trigger]\nschedule = \"every 1h\"\ncatch_up = \"none\"",
                "[trigger]\nwatch = { key = \"go\" }",
            )
            .as_bytes(),
    );
    let pg = Pg::new();
    let state = pg.url.clone();
    assert_eq!(
        run(flowgate(dir.path()).args(["kv", "set", "go", "1", "--state", &state])).code,
        0
    );
    // Saving a run that has a `stage` report fails: the state store breaks mid-run.
    pg.exec("CREATE SCHEMA IF NOT EXISTS flowgate");
    let _migrated = run(flowgate(dir.path()).args(["runs", "--state", &state]));
    pg.exec(
        "ALTER TABLE flowgate.runs ADD CONSTRAINT broken CHECK (position('\"step\":\"stage\"' in steps) = 0)",
    );
    let _worker = serve(dir.path(), &state, None);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(seen.requests.load(Ordering::SeqCst), 0);
    // The store heals: the same worker runs the event again, it is not stuck.
    pg.exec("ALTER TABLE flowgate.runs DROP CONSTRAINT broken");
    wait_until("the event to run again and succeed", 40, || {
        runs(dir.path(), &state)
            .iter()
            .any(|r| r["status"] == "succeeded")
    });
    assert_eq!(seen.requests.load(Ordering::SeqCst), 3);
}

#[test]
fn a_pipeline_that_declares_one_run_per_event_runs_events_side_by_side() {
    let (port, seen) = slow_receiver(Duration::from_millis(400));
    let dir = tempfile::tempdir().unwrap();
    pipeline(dir.path(), port, None);
    let p = dir.path().join("p.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    write(
        &p,
        format!("{text}\n[policy]\none_at_a_time = \"event\"\n").as_bytes(),
    );
    let state = dir.path().join("state.db").display().to_string();
    let both: Vec<_> = ["one", "two"]
        .into_iter()
        .map(|key| {
            let (d, s) = (dir.path().to_path_buf(), state.clone());
            std::thread::spawn(move || {
                run(flowgate(&d).args(["run", "p.toml", "--key", key, "--state", &s]))
            })
        })
        .collect();
    for t in both {
        let out = t.join().unwrap();
        assert_eq!(out.code, 0, "{}", out.all());
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 6);
    assert_eq!(
        seen.most_at_once.load(Ordering::SeqCst),
        2,
        "the two events ran side by side"
    );
}
