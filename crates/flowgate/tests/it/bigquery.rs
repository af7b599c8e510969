//! The event-consumer into BigQuery (bqemulator: BigQuery's REST API on
//! DuckDB), with the team's `.env` as it is: at least once, every repeat
//! counted by the table's `_topic`/`_partition`/`_offset` and explained.

use std::path::Path;

use serde_json::{Value, json};

use crate::common::*;
use crate::stream::{
    both_tables_hold, create_topic, delivery_with_poison, event, example,
    kills_restarts_and_rebalances, produce, serve, small_batches,
};

const PROJECT: &str = "test-project";

fn endpoint() -> (u16, String) {
    let e = service_var("FLOWGATE_TEST_BIGQUERY_ENDPOINT");
    let port = e
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("FLOWGATE_TEST_BIGQUERY_ENDPOINT={e} has no port"));
    (port, e)
}

/// One call to the emulator's REST API under the project; the answer's JSON.
fn bq(method: &str, path: &str, body: Option<Value>) -> Value {
    let (port, _) = endpoint();
    let body = body.map(|b| b.to_string());
    let (status, text) = http(
        port,
        method,
        &format!("/bigquery/v2/projects/{PROJECT}{path}"),
        body.as_deref(),
    );
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {text}"
    );
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// A dataset with the domains' tables: the contract of the test's events, the
/// metadata columns, a RECORD and a DATE (only BigQuery judges its text).
fn tables(dataset: &str, names: &[&str]) {
    bq(
        "POST",
        "/datasets",
        Some(json!({"datasetReference": {"datasetId": dataset}})),
    );
    let f = |name: &str, kind: &str, mode: &str| json!({"name": name, "type": kind, "mode": mode});
    for name in names {
        let fields = json!([
            f("id", "INTEGER", "REQUIRED"),
            f("type", "STRING", "NULLABLE"),
            f("amount", "NUMERIC", "NULLABLE"),
            f("occurred_at", "TIMESTAMP", "NULLABLE"),
            f("status", "STRING", "NULLABLE"),
            f("due", "DATE", "NULLABLE"),
            {"name": "extra", "type": "RECORD", "mode": "NULLABLE", "fields": [f("n", "INTEGER", "NULLABLE")]},
            f("_topic", "STRING", "NULLABLE"),
            f("_partition", "INTEGER", "NULLABLE"),
            f("_offset", "INTEGER", "NULLABLE"),
            f("_event", "JSON", "NULLABLE"),
        ]);
        bq(
            "POST",
            &format!("/datasets/{dataset}/tables"),
            Some(
                json!({"tableReference": {"datasetId": dataset, "tableId": name}, "schema": {"fields": fields}}),
            ),
        );
    }
}

/// The rows of a query, each a list of its values as BigQuery's REST API
/// gives them (strings, or null).
fn query(sql: &str) -> Vec<Vec<Option<String>>> {
    let v = bq(
        "POST",
        "/queries",
        Some(json!({"query": sql, "useLegacySql": false, "timeoutMs": 30000})),
    );
    v["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            r["f"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["v"].as_str().map(str::to_string))
                .collect()
        })
        .collect()
}

fn number(sql: &str) -> u64 {
    query(sql)[0][0].as_deref().unwrap_or("0").parse().unwrap()
}

/// The example with its `.env` naming tables of `dataset` on the emulator's
/// project; the warehouse URL to serve with.
fn bigquery_example(d: &Path, run: &str, dataset: &str) -> String {
    example(d, run);
    let env = std::fs::read_to_string(d.join(".env")).unwrap();
    write(
        &d.join(".env"),
        env.replace("warehouse-dev.events.", &format!("{PROJECT}.{dataset}."))
            .as_bytes(),
    );
    let (_, e) = endpoint();
    format!(
        "bigquery://?endpoint={e}&credentials={}",
        flowgate_core::testing::service_account_key(
            d,
            "consumer@test-project.iam.gserviceaccount.com"
        )
        .display()
    )
}

#[test]
fn two_domains_into_bigquery_ignored_types_dropped_poison_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = uuid_like();
    let ds = format!("ev_{run}");
    let url = bigquery_example(d, &run, &ds);
    let (delivery_t, orders_t) = (format!("delivery_{run}"), format!("orders_{run}"));
    tables(&ds, &[&delivery_t, &orders_t]);
    create_topic(&format!("delivery-{run}"), 1);
    create_topic(&format!("orders-{run}"), 1);
    // Offset 102: a date only BigQuery can refuse.
    let delivery =
        delivery_with_poison(br#"{"id": 500, "type": "DeliveryMade", "due": "someday", "occurred_at": "2026-12-04T10:00:00Z"}"#);
    produce(&format!("delivery-{run}"), &delivery);
    event_producer::produce(
        &crate::stream::bootstrap(),
        &format!("orders-{run}"),
        "ORDERS",
        50,
        0,
    )
    .unwrap();

    let (p1, p2) = (free_port(), free_port());
    let _a = serve(d, &url, "DELIVERY", p1, &[]);
    let _b = serve(d, &url, "ORDERS", p2, &[]);
    let t = |name: &str| format!("`{PROJECT}.{ds}.{name}`");
    let delivered = format!("SELECT count(*) FROM {}", t(&delivery_t));
    let ordered = format!("SELECT count(*) FROM {}", t(&orders_t));
    both_tables_hold(d, || (number(&delivered), number(&ordered)));
    let ignored = number(&format!(
        "SELECT count(*) FROM {} WHERE type IN ('DeliveryPinged', 'DeliveryViewed')",
        t(&delivery_t)
    )) + number(&format!(
        "SELECT count(*) FROM {} WHERE type = 'OrderViewed'",
        t(&orders_t)
    ));
    assert_eq!(ignored, 0, "ignored types never reach a table");
    // Fields went to their columns (the RECORD as a record), the metadata
    // and the whole event too.
    let row = query(&format!(
        "SELECT CAST(amount * 10 AS INT64), extra.n, _topic, _partition, _offset, JSON_VALUE(_event, '$.extra.n'), status \
         FROM {} WHERE id = 10",
        t(&delivery_t)
    ));
    let topic = format!("delivery-{run}");
    assert_eq!(
        row[0],
        [
            Some("105".to_string()),
            Some("10".into()),
            Some(topic.clone()),
            Some("0".into()),
            Some("9".into()),
            Some("10".into()),
            Some("held".into())
        ]
    );

    let dead = d.join(format!("dead-letters/delivery/{topic}/0"));
    wait_for("the dead letters", 10, || dead.join("102.json").exists());
    let letter = |offset: u64| -> Value {
        serde_json::from_slice(&std::fs::read(dead.join(format!("{offset}.json"))).unwrap())
            .unwrap()
    };
    let reason = |offset| letter(offset)["reason"].as_str().unwrap().to_string();
    assert!(reason(100).starts_with("not JSON"), "{}", reason(100));
    assert!(
        reason(101).starts_with("the contract DeliveryEvent at /id: "),
        "{}",
        reason(101)
    );
    assert!(
        reason(102).starts_with("BigQuery refused it"),
        "{}",
        reason(102)
    );
    assert_eq!(letter(102)["offset"], 102);
    assert_eq!(std::fs::read_dir(&dead).unwrap().count(), 3);
    let listed = crate::common::run(
        flowgate(d)
            .args([
                "dead-letters",
                "list",
                "event-consumer.toml",
                "-p",
                "domain=DELIVERY",
                "--json",
            ])
            .env("WAREHOUSE_URL", &url),
    );
    assert_eq!(listed.code, 0, "{}", listed.all());
    let listed: Value = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
    let (_, metrics) = http(p1, "GET", "/metrics", None);
    let group = format!("consumer-delivery-{run}");
    for (metric, n) in [("written", 50), ("ignored", 50), ("dead_lettered", 3)] {
        let line = format!("flowgate_stream_events_{metric}_total{{stream=\"{group}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
}

/// The kills, broker restart and rebalances of the PostgreSQL test, into
/// BigQuery: every event is there, and every repeat is a whole event again
/// (same id, same partition and offset), at most a batch of them and one run
/// of offsets per partition for each interruption.
#[test]
fn kills_a_broker_restart_and_rebalances_leave_every_event_in_bigquery_repeats_explained() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = uuid_like();
    let ds = format!("ev_{run}");
    let url = bigquery_example(d, &run, &ds);
    small_batches(d);
    let name = format!("delivery_{run}");
    tables(&ds, &[&name]);
    let topic = format!("delivery-{run}");
    create_topic(&topic, 3);
    const N: u64 = 12_000;
    let events: Vec<_> = (1..=N).map(|i| event(i, "DeliveryMade")).collect();
    let t = format!("`{PROJECT}.{ds}.{name}`");
    let rows = format!("SELECT count(*) FROM {t}");
    kills_restarts_and_rebalances(d, &url, &topic, &events, || number(&rows));
    let _last = serve(d, &url, "DELIVERY", free_port(), &[]);
    let distinct = format!("SELECT count(DISTINCT id) FROM {t}");
    wait_for("every event", 120, || number(&distinct) >= N);
    std::thread::sleep(std::time::Duration::from_secs(2));
    let stats = query(&format!(
        "SELECT count(*), count(DISTINCT id), min(id), max(id), count(DISTINCT FORMAT('%d/%d', _partition, _offset)) FROM {t}"
    ));
    let n = |k: usize| stats[0][k].as_deref().unwrap().parse::<u64>().unwrap();
    let (all, ids) = (n(0), n(1));
    assert_eq!(
        (ids, n(2), n(3), n(4)),
        (N, 1, N, N),
        "every event, each at one offset"
    );
    let repeats = all - ids;
    // A repeat is the same event again: one id per (partition, offset).
    let mixed = number(&format!(
        "SELECT count(*) FROM (SELECT _partition, _offset FROM {t} GROUP BY 1, 2 HAVING count(DISTINCT id) > 1)"
    ));
    assert_eq!(mixed, 0);
    // The repeated offsets, per partition, in runs: each run is a batch (or
    // the end of one) read again after an interruption.
    let repeated = query(&format!(
        "SELECT _partition, _offset FROM {t} GROUP BY 1, 2 HAVING count(*) > 1 ORDER BY 1, 2"
    ));
    let mut runs: Vec<(u64, u64, u64)> = Vec::new();
    for r in &repeated {
        let (p, o): (u64, u64) = (
            r[0].as_deref().unwrap().parse().unwrap(),
            r[1].as_deref().unwrap().parse().unwrap(),
        );
        match runs.last_mut() {
            Some((rp, _, end)) if *rp == p && *end + 1 == o => *end = o,
            _ => runs.push((p, o, o)),
        }
    }
    eprintln!(
        "{repeats} repeated rows ({} offsets) in {} runs: {runs:?}",
        repeated.len(),
        runs.len()
    );
    // The two deaths just after BigQuery's insert (before Kafka's commit)
    // repeat at least their batch.
    assert!(
        repeats >= 2,
        "the crashes after the insert repeat their batches"
    );
    // 20 kills of the first instance, 10 of a second, a broker restart: each
    // repeats at most one batch (400 events), at most one run per partition
    // (runs of two interruptions may touch and merge).
    const INTERRUPTIONS: u64 = 31;
    assert!(
        runs.len() as u64 <= 3 * INTERRUPTIONS,
        "{} runs",
        runs.len()
    );
    assert!(
        repeats <= INTERRUPTIONS * 400,
        "{repeats} repeats: more than a batch per interruption"
    );
}
