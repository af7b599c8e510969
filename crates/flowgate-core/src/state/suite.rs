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
            status: RunStatus::Succeeded,
            objects_out: 3,
            ..Default::default()
        }],
        lane: None,
        fence: None,
        code: None,
    }
}

async fn suite(s: Arc<dyn StateStore>) {
    // Events: a dedupe key is recorded once.
    let ev = |key: &str| NewEvent {
        pipeline: "p".into(),
        lane: "p".into(),
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
    assert_eq!(s.open_lanes("p").await.unwrap(), ["p"]);

    // Lanes: one holder at a time, judged by the store's clock; a new holder gets
    // a larger token.
    let ttl = Duration::from_millis(400);
    let f1 = s
        .acquire_lease("p", "w1/a", ttl)
        .await
        .unwrap()
        .expect("a free lane");
    assert!(
        s.acquire_lease("p", "w2/a", ttl).await.unwrap().is_none(),
        "a held lane is not given twice"
    );
    let c1 = s
        .claim_event(&f1)
        .await
        .unwrap()
        .expect("first event claimable");
    assert_eq!((c1.id, c1.attempts), (first.id, 1));
    assert_eq!(c1.claim_token, Some(f1.token));
    let c2 = s.claim_event(&f1).await.unwrap().expect("second event");
    assert_eq!(c2.id, second.id);
    assert!(s.claim_event(&f1).await.unwrap().is_none(), "both claimed");
    assert!(s.renew_lease(&f1, ttl).await.unwrap());
    s.finish_event(c1.id, EventStatus::Done, "run-1", &f1)
        .await
        .unwrap();
    // w1 stops renewing: the lease runs out, and w1's writes are refused from then
    // on, even before anyone else takes the lane.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!s.renew_lease(&f1, ttl).await.unwrap(), "expired");
    assert!(matches!(
        s.set_watermark("p", "orders", &json!({"late": true}), &f1)
            .await,
        Err(StateError::Fenced(_))
    ));
    assert!(matches!(
        s.finish_event(c2.id, EventStatus::Done, "run-late", &f1)
            .await,
        Err(StateError::Fenced(_))
    ));
    let f2 = s
        .acquire_lease("p", "w2/b", ttl)
        .await
        .unwrap()
        .expect("an expired lane is taken over");
    assert!(f2.token > f1.token, "tokens grow: {f1:?} {f2:?}");
    let again = s
        .claim_event(&f2)
        .await
        .unwrap()
        .expect("an event claimed under an older token is claimed again");
    assert_eq!((again.id, again.attempts), (second.id, 2));
    assert!(
        s.claim_event_id(first.id, &f2, true)
            .await
            .unwrap()
            .is_none(),
        "done events stay done"
    );
    assert!(matches!(
        s.ledger_put("p/copy", "x", "e", &json!({}), &f1).await,
        Err(StateError::Fenced(_))
    ));
    let done = s.get_event(first.id).await.unwrap().unwrap();
    assert_eq!(done.status, EventStatus::Done);
    assert_eq!(done.run_id.as_deref(), Some("run-1"));
    // A failed event runs again only when asked to.
    s.finish_event(second.id, EventStatus::Failed, "run-2", &f2)
        .await
        .unwrap();
    assert!(s.claim_event(&f2).await.unwrap().is_none());
    assert!(
        s.claim_event_id(second.id, &f2, false)
            .await
            .unwrap()
            .is_none()
    );
    let retried = s
        .claim_event_id(second.id, &f2, true)
        .await
        .unwrap()
        .expect("a failed event claimed again on request");
    assert_eq!(retried.attempts, 3);
    assert_eq!(s.list_events("p", 10).await.unwrap().len(), 2);
    s.release_lease(&f2).await.unwrap();
    let lease = s.get_lease("p").await.unwrap().unwrap();
    assert!(!lease.live, "released");
    let f3 = s.acquire_lease("p", "w3/c", ttl).await.unwrap().unwrap();
    assert!(
        f3.token > f2.token,
        "a released lane counts on from its token"
    );
    // Runs under an older token are abandoned by the lane's next holder.
    let mut stale = run("0190dead-run", "q", RunStatus::Running);
    stale.lane = Some("p".into());
    stale.fence = Some(f2.token);
    s.save_run(&stale).await.unwrap();
    assert_eq!(s.abandon_runs(&f3, "gone").await.unwrap(), 1);
    let got = s.get_run("0190dead").await.unwrap();
    assert_eq!(got.status, RunStatus::Abandoned);
    assert_eq!(got.error.as_deref(), Some("gone"));
    s.release_lease(&f3).await.unwrap();

    // Manual events are only ever claimed by id, never picked up by a worker's sweep.
    let manual = NewEvent {
        pipeline: "m".into(),
        lane: "m".into(),
        kind: "manual".into(),
        dedupe_key: "manual:x".into(),
        payload: json!({}),
    };
    let Recorded::New(m) = s.record_event(manual).await.unwrap() else {
        panic!("new manual event")
    };
    let fm = s.acquire_lease("m", "w1/m", ttl).await.unwrap().unwrap();
    assert!(s.claim_event(&fm).await.unwrap().is_none());
    assert_eq!(
        s.claim_event_id(m.id, &fm, false)
            .await
            .unwrap()
            .map(|e| e.id),
        Some(m.id)
    );
    // Its worker is gone: the next holder closes it as failed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fm2 = s.acquire_lease("m", "w2/m", ttl).await.unwrap().unwrap();
    assert_eq!(s.close_lost_manual(&fm2).await.unwrap(), 1);
    assert_eq!(
        s.get_event(m.id).await.unwrap().unwrap().status,
        EventStatus::Failed
    );

    // The store's clock.
    let now = s.now().await.unwrap();
    assert!((now - Utc::now()).num_seconds().abs() < 5);

    let fw = s
        .acquire_lease("p", "w9/wm", Duration::from_secs(60))
        .await
        .unwrap()
        .unwrap();
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
        &fw,
    )
    .await
    .unwrap();
    s.set_watermark(
        "p",
        "orders",
        &json!({"ts": "2026-01-02T00:00:00Z", "id": 9}),
        &fw,
    )
    .await
    .unwrap();
    assert_eq!(
        s.get_watermark("p", "orders").await.unwrap(),
        Some(json!({"ts": "2026-01-02T00:00:00Z", "id": 9}))
    );

    // Object ledger.
    s.ledger_put("p/copy", "a/1.bin", "etag1", &json!({"size": 1}), &fw)
        .await
        .unwrap();
    s.ledger_put("p/copy", "a/2.bin", "etag2", &json!({"size": 2}), &fw)
        .await
        .unwrap();
    s.ledger_put("p/copy", "b/3.bin", "etag3", &json!({"size": 3}), &fw)
        .await
        .unwrap();
    s.ledger_put("p/copy", "a/1.bin", "etag1b", &json!({"size": 11}), &fw)
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

    // A value is stored exactly as given, secrets' text and all (redaction is
    // for what is shown).
    crate::secret::register("sup3r-secret-value");
    s.set_watermark("p", "exact", &json!({"k": "a/sup3r-secret-value/b"}), &fw)
        .await
        .unwrap();
    assert_eq!(
        s.get_watermark("p", "exact").await.unwrap(),
        Some(json!({"k": "a/sup3r-secret-value/b"}))
    );

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

    // Retention: everything here is older than a cutoff an hour ahead.
    let fi = s
        .acquire_lease("p", "w9/in", Duration::from_secs(60))
        .await
        .unwrap();
    let fi = match fi {
        Some(f) => f,
        None => fw.clone(),
    };
    s.ledger_put("p/model/inputs", "orders/1.jsonl", "e", &json!({}), &fi)
        .await
        .unwrap();
    let tick = NewEvent {
        pipeline: "p".into(),
        lane: "p".into(),
        kind: "schedule".into(),
        dedupe_key: "schedule:2026-01-01T00:00:00Z".into(),
        payload: json!({}),
    };
    let mut skipped = run("0190eeee-skipped", "p", RunStatus::Skipped);
    skipped.finished_at = Some(Utc::now());
    assert!(s.record_skipped(tick, &skipped).await.unwrap());
    let pruned = s
        .prune(Utc::now() + chrono::TimeDelta::hours(1))
        .await
        .unwrap();
    assert!(pruned.runs >= 1 && pruned.events >= 1, "{pruned:?}");
    assert!(
        pruned.ledger_entries >= 3 && pruned.kv_revisions >= 2,
        "{pruned:?}"
    );
    let left = s
        .list_runs(&RunFilter {
            pipeline: Some("p".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let ids: Vec<&str> = left.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        ids,
        ["0190eeee-skipped", "0190bbbb-run-two"],
        "the newest run stays, and one that never finished; older finished ones go"
    );
    assert_eq!(
        s.get_event(first.id).await.unwrap().map(|e| e.status),
        Some(EventStatus::Done),
        "arrival events stay"
    );
    assert_eq!(
        s.ledger_list("p/model/inputs", "").await.unwrap().len(),
        1,
        "transform input ledgers stay"
    );
    assert!(s.ledger_list("p/copy", "").await.unwrap().is_empty());
    assert_eq!(
        s.kv_history("release/version", 0, 10).await.unwrap().len(),
        1,
        "each key keeps its newest value"
    );
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
async fn postgres_lanes_and_claims_are_exclusive_under_concurrency() {
    let url = crate::testing::fresh_postgres_db().await;
    let s = open(&url).await.unwrap();
    for i in 0..40 {
        s.record_event(NewEvent {
            pipeline: "p".into(),
            lane: format!("p#{}", i % 4),
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
            for lane in s.open_lanes("p").await.unwrap() {
                let Some(f) = s
                    .acquire_lease(&lane, &format!("w{w}"), Duration::from_secs(60))
                    .await
                    .unwrap()
                else {
                    continue;
                };
                while let Some(e) = s.claim_event(&f).await.unwrap() {
                    assert_eq!(e.lane, lane);
                    got.push(e.id);
                }
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
