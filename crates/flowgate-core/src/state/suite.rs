//! One suite, both backends: every behaviour the engine relies on.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::json;

use super::*;

fn run(id: &str, pipeline: &str, status: RunStatus) -> RunRecord {
    RunRecord {
        id: id.into(),
        pipeline: pipeline.into(),
        env: None,
        event_id: None,
        trigger: "manual".into(),
        params: json!({"tenant": "acme"}),
        status,
        attempt: 1,
        worker: "w1".into(),
        started_at: Utc::now(),
        finished_at: None,
        error: None,
        steps: vec![StepReport {
            step: "copy".into(),
            status: "succeeded".into(),
            objects_out: 3,
            ..Default::default()
        }],
    }
}

async fn suite(s: Arc<dyn StateStore>) {
    // Events: a dedupe key is recorded once; claims go to one worker at a time.
    let ev = |key: &str| NewEvent {
        pipeline: "p".into(),
        kind: "arrival".into(),
        dedupe_key: key.into(),
        payload: json!({"key": key}),
    };
    let first = match s.record_event(ev("a@1")).await.unwrap() {
        Recorded::New(e) => e,
        other => panic!("expected a new event, got {other:?}"),
    };
    assert!(
        matches!(s.record_event(ev("a@1")).await.unwrap(), Recorded::Duplicate(e) if e.id == first.id)
    );
    let second = match s.record_event(ev("a@2")).await.unwrap() {
        Recorded::New(e) => e,
        other => panic!("a new etag is a new event, got {other:?}"),
    };
    let ttl = Duration::from_millis(300);
    let c1 = s
        .claim_event("p", "w1", ttl)
        .await
        .unwrap()
        .expect("first event claimable");
    assert_eq!(c1.id, first.id);
    assert_eq!(c1.attempts, 1);
    let c2 = s
        .claim_event("p", "w2", ttl)
        .await
        .unwrap()
        .expect("second event claimable");
    assert_eq!(c2.id, second.id);
    assert!(
        s.claim_event("p", "w3", ttl).await.unwrap().is_none(),
        "both events are claimed"
    );
    assert!(s.renew_event(c1.id, "w1", ttl).await.unwrap());
    assert!(
        !s.renew_event(c1.id, "w2", ttl).await.unwrap(),
        "only the holder renews"
    );
    s.finish_event(c1.id, EventStatus::Done, "run-1")
        .await
        .unwrap();
    // w2 dies: its claim expires and another worker takes the event over.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let again = s
        .claim_event("p", "w3", ttl)
        .await
        .unwrap()
        .expect("expired claim is reclaimable");
    assert_eq!(again.id, second.id);
    assert_eq!(again.attempts, 2);
    assert!(
        s.claim_event_id(first.id, "w3", ttl)
            .await
            .unwrap()
            .is_none(),
        "done events stay done"
    );
    let done = s.get_event(first.id).await.unwrap().unwrap();
    assert_eq!(done.status, EventStatus::Done);
    assert_eq!(done.run_id.as_deref(), Some("run-1"));
    assert_eq!(s.list_events("p", 10).await.unwrap().len(), 2);
    // Manual events are only ever claimed by id, never picked up by a worker's sweep.
    let manual = NewEvent {
        pipeline: "m".into(),
        kind: "manual".into(),
        dedupe_key: "manual:x".into(),
        payload: json!({}),
    };
    let Recorded::New(m) = s.record_event(manual).await.unwrap() else {
        panic!("new manual event")
    };
    assert!(s.claim_event("m", "w1", ttl).await.unwrap().is_none());
    assert_eq!(
        s.claim_event_id(m.id, "w1", ttl)
            .await
            .unwrap()
            .map(|e| e.id),
        Some(m.id)
    );

    // Runs: saved, replaced, found by prefix, filtered.
    let mut r1 = run("0190aaaa-run-one", "p", RunStatus::Running);
    s.save_run(&r1).await.unwrap();
    r1.status = RunStatus::Succeeded;
    r1.finished_at = Some(Utc::now());
    s.save_run(&r1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    s.save_run(&run("0190bbbb-run-two", "p", RunStatus::Failed))
        .await
        .unwrap();
    s.save_run(&run("0190cccc-run-three", "other", RunStatus::Succeeded))
        .await
        .unwrap();
    let got = s.get_run("0190aaaa").await.unwrap();
    assert_eq!(got.status, RunStatus::Succeeded);
    assert_eq!(got.steps[0].objects_out, 3);
    assert_eq!(got.params, json!({"tenant": "acme"}));
    assert!(matches!(
        s.get_run("0190").await,
        Err(StateError::Ambiguous(_))
    ));
    assert!(matches!(
        s.get_run("nope").await,
        Err(StateError::RunNotFound(_))
    ));
    let p_runs = s
        .list_runs(&RunFilter {
            pipeline: Some("p".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        p_runs.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["0190bbbb-run-two", "0190aaaa-run-one"]
    );
    let failed = s
        .list_runs(&RunFilter {
            status: Some(RunStatus::Failed),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);

    // Watermarks.
    assert_eq!(s.get_watermark("p", "orders").await.unwrap(), None);
    s.set_watermark(
        "p",
        "orders",
        &json!({"ts": "2026-01-01T00:00:00.123456Z", "id": 7}),
    )
    .await
    .unwrap();
    s.set_watermark(
        "p",
        "orders",
        &json!({"ts": "2026-01-02T00:00:00Z", "id": 9}),
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_watermark("p", "orders").await.unwrap(),
        Some(json!({"ts": "2026-01-02T00:00:00Z", "id": 9}))
    );

    // Object ledger.
    s.ledger_put("p/copy", "a/1.bin", "etag1", &json!({"size": 1}))
        .await
        .unwrap();
    s.ledger_put("p/copy", "a/2.bin", "etag2", &json!({"size": 2}))
        .await
        .unwrap();
    s.ledger_put("p/copy", "b/3.bin", "etag3", &json!({"size": 3}))
        .await
        .unwrap();
    s.ledger_put("p/copy", "a/1.bin", "etag1b", &json!({"size": 11}))
        .await
        .unwrap();
    let a = s.ledger_list("p/copy", "a/").await.unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a["a/1.bin"].fingerprint, "etag1b");
    assert_eq!(s.ledger_list("other", "").await.unwrap().len(), 0);

    // KV: revisions grow store-wide.
    assert!(s.kv_get("release/version").await.unwrap().is_none());
    let r1 = s.kv_set("release/version", "1.0").await.unwrap();
    let r2 = s.kv_set("release/other", "x").await.unwrap();
    let r3 = s.kv_set("release/version", "1.1").await.unwrap();
    assert!(r1 < r2 && r2 < r3);
    let e = s.kv_get("release/version").await.unwrap().unwrap();
    assert_eq!((e.value.as_str(), e.revision), ("1.1", r3));
    assert_eq!(s.kv_list("release/").await.unwrap().len(), 2);
    assert!(
        kv_wait(
            s.as_ref(),
            "release/version",
            r3,
            Duration::from_millis(300)
        )
        .await
        .unwrap()
        .is_none()
    );
    let waiter = {
        let s = s.clone();
        tokio::spawn(async move {
            kv_wait(s.as_ref(), "release/version", r3, Duration::from_secs(5)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.kv_set("release/version", "2.0").await.unwrap();
    assert_eq!(waiter.await.unwrap().unwrap().unwrap().value, "2.0");

    // Leases: one holder until expiry.
    let lt = Duration::from_millis(300);
    assert!(s.acquire_lease("run/x", "w1", lt).await.unwrap());
    assert!(
        s.acquire_lease("run/x", "w1", lt).await.unwrap(),
        "the holder renews"
    );
    assert!(!s.acquire_lease("run/x", "w2", lt).await.unwrap());
    assert_eq!(s.get_lease("run/x").await.unwrap().unwrap().holder, "w1");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        s.acquire_lease("run/x", "w2", lt).await.unwrap(),
        "an expired lease is taken over"
    );
    s.release_lease("run/x", "w1").await.unwrap();
    assert_eq!(
        s.get_lease("run/x").await.unwrap().unwrap().holder,
        "w2",
        "only the holder releases"
    );
    s.release_lease("run/x", "w2").await.unwrap();
    assert!(s.get_lease("run/x").await.unwrap().is_none());

    // Datasets.
    s.publish_dataset(
        "acme",
        "20260101_000000_utc",
        "s3://b/acme/datasets/20260101_000000_utc/",
        &json!({}),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    s.publish_dataset(
        "acme",
        "20260102_000000_utc",
        "s3://b/acme/datasets/20260102_000000_utc/",
        &json!({"rows": 5}),
    )
    .await
    .unwrap();
    let ds = s.list_datasets("acme").await.unwrap();
    assert_eq!(ds.len(), 2);
    assert_eq!(ds[0].version, "20260102_000000_utc", "newest first");
}

#[tokio::test]
async fn sqlite_backend_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path().join("state.db").to_str().unwrap())
        .await
        .unwrap();
    suite(s).await;
    // Reopening runs no migration twice and keeps the data.
    let s = open(&format!(
        "sqlite://{}",
        dir.path().join("state.db").display()
    ))
    .await
    .unwrap();
    assert_eq!(
        s.kv_get("release/version").await.unwrap().unwrap().value,
        "2.0"
    );
}

#[tokio::test]
async fn postgres_backend_passes_the_suite() {
    let url = crate::testing::fresh_postgres_db().await;
    let s = open(&url).await.unwrap();
    suite(s).await;
    let s = open(&url).await.unwrap();
    assert_eq!(
        s.kv_get("release/version").await.unwrap().unwrap().value,
        "2.0"
    );
}

#[tokio::test]
async fn postgres_claims_are_exclusive_under_concurrency() {
    let url = crate::testing::fresh_postgres_db().await;
    let s = open(&url).await.unwrap();
    for i in 0..40 {
        s.record_event(NewEvent {
            pipeline: "p".into(),
            kind: "k".into(),
            dedupe_key: format!("e{i}"),
            payload: json!({}),
        })
        .await
        .unwrap();
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(e) = s
                .claim_event("p", &format!("w{w}"), Duration::from_secs(60))
                .await
                .unwrap()
            {
                got.push(e.id);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    let before = all.len();
    all.dedup();
    assert_eq!(before, 40, "every event claimed");
    assert_eq!(all.len(), 40, "no event claimed twice");
}
