//! The event-consumer: Kafka topics (Apache Kafka, one KRaft node) into
//! PostgreSQL through `flowgate serve FILE --param domain=…`, with the team's
//! `.env` as it is.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use crate::common::*;

pub(crate) fn bootstrap() -> String {
    service_var("FLOWGATE_TEST_KAFKA_BOOTSTRAP")
}

pub(crate) fn create_topic(name: &str, partitions: i32) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap())
            .create()
            .unwrap();
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let res = admin
            .create_topics([&topic], &AdminOptions::new())
            .await
            .unwrap();
        for r in res {
            r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
        }
    });
}

/// Send `events` (key, value) to `topic`, all acknowledged.
pub(crate) fn produce(topic: &str, events: &[(String, Vec<u8>)]) {
    event_producer::send_all(&bootstrap(), topic, events.iter().cloned()).unwrap();
}

/// A copy of examples/event-consumer with a `.env` in the team's format for
/// two domains, on this test's topics, groups and tables.
pub(crate) fn example(d: &Path, run: &str) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/event-consumer/event-consumer.toml");
    std::fs::copy(&src, d.join("event-consumer.toml")).unwrap();
    std::fs::create_dir_all(d.join("contracts")).unwrap();
    for c in ["delivery.json", "orders.json"] {
        std::fs::copy(
            src.with_file_name("contracts").join(c),
            d.join("contracts").join(c),
        )
        .unwrap();
    }
    let b = bootstrap();
    write(
        &d.join(".env"),
        format!(
            r#"WRITE_ENV=dev
KAFKA_PROD1={b}
KAFKA_UAT={b}
BQ_TABLE_DELIVERY=warehouse-dev.events.delivery_{run}
TOPIC_DELIVERY=delivery-{run}
IMPORT_PATH_DELIVERY=contracts/delivery.json
IMPORT_OBJECT_DELIVERY=DeliveryEvent
IGNORE_EVENTS_DELIVERY='"[\"DeliveryPinged\", \"DeliveryViewed\"]"'
CONSUME_ENV_DELIVERY=prod1
GROUP_ID_DELIVERY=consumer-delivery-{run}
BQ_TABLE_ORDERS=warehouse-dev.events.orders_{run}
TOPIC_ORDERS=orders-{run}
IMPORT_PATH_ORDERS=contracts/orders.json
IMPORT_OBJECT_ORDERS=OrderEvent
IGNORE_EVENTS_ORDERS='"[\"OrderViewed\"]"'
CONSUME_ENV_ORDERS=uat
GROUP_ID_ORDERS=consumer-orders-{run}
"#
        )
        .as_bytes(),
    );
}

fn table(pg: &Pg, name: &str) {
    pg.exec(&format!(
        "CREATE TABLE {name} (id bigint NOT NULL, type text, amount numeric, occurred_at timestamptz, \
         received_at timestamptz DEFAULT now(), status text DEFAULT 'new', _topic text, _partition int, _offset bigint, _event jsonb)"
    ));
}

/// `flowgate serve` of the example for `domain`, writing to `warehouse` (a
/// postgres:// or bigquery:// URL).
pub(crate) fn serve(
    d: &Path,
    warehouse: &str,
    domain: &str,
    port: u16,
    extra: &[(&str, &str)],
) -> Serve {
    let mut cmd = flowgate(d);
    cmd.args([
        "serve",
        "event-consumer.toml",
        "--param",
        &format!("domain={domain}"),
    ])
    .args(["--listen", &format!("127.0.0.1:{port}")])
    .env("WAREHOUSE_URL", warehouse)
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(d.join(format!("serve-{domain}-{port}.log"))).unwrap());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    Serve(cmd.spawn().unwrap())
}

/// Wait for the two domains' tables to hold (50, 37) rows, as `counts` reads
/// them: at least, then exactly, so a row too many fails with the numbers, not
/// a hang; a timeout says what each table had and what every `serve` logged.
pub(crate) fn both_tables_hold(d: &Path, mut counts: impl FnMut() -> (u64, u64)) {
    let mut seen = (0, 0);
    let came = wait_until(60, || {
        seen = counts();
        seen.0 >= 50 && seen.1 >= 37
    });
    assert!(
        came,
        "both tables: (delivery, orders) rows = {seen:?}, expected (50, 37)\n{}",
        serve_logs(d)
    );
    assert_eq!(seen, (50, 37));
}

/// What every `serve` in `d` logged, for a failure's message.
fn serve_logs(d: &Path) -> String {
    let mut logs: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    logs.sort();
    logs.iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            format!("--- {} ---\n{text}", p.display())
        })
        .collect()
}

pub(crate) fn count(pg: &Pg, sql: &str) -> u64 {
    pg.rows(sql)[0][0]
        .as_deref()
        .unwrap_or("0")
        .parse()
        .unwrap()
}

/// DELIVERY's events 1 to 100, one type in two ignored by the `.env`; then at
/// offsets 100 to 102 not JSON, an id its column cannot take, and `last`,
/// which only the table can refuse (the rest of its batch is written).
pub(crate) fn delivery_with_poison(last: &[u8]) -> Vec<(String, Vec<u8>)> {
    let kinds = [
        "DeliveryMade",
        "DeliveryPinged",
        "DeliveryShipped",
        "DeliveryViewed",
    ];
    let mut delivery: Vec<_> = (1..=100)
        .map(|i| event(i, kinds[(i % 4) as usize]))
        .collect();
    delivery.push(("bad".into(), b"{not json".to_vec()));
    delivery.push((
        "bad".into(),
        br#"{"id": "abc", "type": "DeliveryMade", "occurred_at": "2026-12-04T10:00:00Z"}"#.to_vec(),
    ));
    delivery.push(("bad".into(), last.to_vec()));
    delivery
}

/// Event `id` of type `kind`; every tenth says its `status` (a column with a
/// default, which the others get).
pub(crate) fn event(id: u64, kind: &str) -> (String, Vec<u8>) {
    let mut e = serde_json::json!({"id": id, "type": kind, "amount": format!("{}.50", id), "occurred_at": "2026-12-04T10:00:00Z", "extra": {"n": id}});
    if id.is_multiple_of(10) {
        e["status"] = "held".into();
    }
    (format!("k{}", id % 7), e.to_string().into_bytes())
}

/// The example in a new folder, the two domains' PostgreSQL tables and
/// one-partition topics.
fn two_domains() -> (tempfile::TempDir, String, Pg) {
    let dir = tempfile::tempdir().unwrap();
    let run = uuid_like();
    example(dir.path(), &run);
    let pg = Pg::new();
    table(&pg, &format!("delivery_{run}"));
    table(&pg, &format!("orders_{run}"));
    create_topic(&format!("delivery-{run}"), 1);
    create_topic(&format!("orders-{run}"), 1);
    (dir, run, pg)
}

#[test]
fn two_domains_from_one_env_file_into_two_tables_ignored_types_dropped_poison_dead_lettered() {
    let (dir, run, pg) = two_domains();
    let d = dir.path();
    pg.exec(&format!(
        "ALTER TABLE delivery_{run} ADD CONSTRAINT positive CHECK (amount >= 0)"
    ));

    // Offset 102: an amount the table's constraint refuses.
    let delivery = delivery_with_poison(br#"{"id": 500, "type": "DeliveryMade", "amount": "-5", "occurred_at": "2026-12-04T10:00:00Z"}"#);
    produce(&format!("delivery-{run}"), &delivery);
    // ORDERS from the example's producer: 50 events, one type in four
    // (OrderViewed: ids 1, 5, …, 49) ignored by the .env.
    event_producer::produce(&bootstrap(), &format!("orders-{run}"), "ORDERS", 50, 0).unwrap();

    let (p1, p2) = (free_port(), free_port());
    let _a = serve(d, &pg.url, "DELIVERY", p1, &[]);
    let _b = serve(d, &pg.url, "ORDERS", p2, &[]);
    let delivered = format!("SELECT count(*) FROM delivery_{run}");
    let ordered = format!("SELECT count(*) FROM orders_{run}");
    both_tables_hold(d, || (count(&pg, &delivered), count(&pg, &ordered)));
    // The ignored types never reached a table.
    assert_eq!(
        count(
            &pg,
            &format!(
                "SELECT count(*) FROM delivery_{run} WHERE type IN ('DeliveryPinged', 'DeliveryViewed')"
            )
        ),
        0
    );
    assert_eq!(
        count(
            &pg,
            &format!("SELECT count(*) FROM orders_{run} WHERE type = 'OrderViewed'")
        ),
        0
    );
    // Fields went to their columns, the metadata and the whole event too;
    // a column with a default kept it.
    let row = pg.rows(&format!(
        "SELECT amount, _offset, _event->'extra'->>'n', received_at IS NOT NULL FROM delivery_{run} WHERE id = 2"
    ));
    assert_eq!(
        row[0],
        [
            Some("2.50".into()),
            Some("1".into()),
            Some("2".into()),
            Some("t".into())
        ]
    );

    let statuses = pg.rows(&format!(
        "SELECT status, count(*) FROM delivery_{run} GROUP BY status ORDER BY status"
    ));
    assert_eq!(
        statuses,
        [
            [Some("held".to_string()), Some("10".to_string())],
            [Some("new".to_string()), Some("40".to_string())]
        ],
        "a field given is written, a column's default kept otherwise"
    );

    // The three poison events, each with its offset and reason.
    let dead = d.join(format!("dead-letters/delivery/delivery-{run}/0"));
    let letter = |offset: u64| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dead.join(format!("{offset}.json"))).unwrap())
            .unwrap()
    };
    wait_for("the dead letters", 10, || dead.join("102.json").exists());
    assert_eq!(letter(100)["offset"], 100);
    assert_eq!(letter(100)["value"], "{not json");
    assert!(
        letter(100)["reason"]
            .as_str()
            .unwrap()
            .starts_with("not JSON"),
        "{}",
        letter(100)
    );
    assert!(
        letter(101)["reason"]
            .as_str()
            .unwrap()
            .starts_with("the contract DeliveryEvent at /id: "),
        "{}",
        letter(101)
    );
    let refused = letter(102)["reason"].as_str().unwrap().to_string();
    assert!(
        refused.contains("the table refused it") && refused.contains("positive"),
        "{refused}"
    );
    assert_eq!(std::fs::read_dir(&dead).unwrap().count(), 3);
    let letters = |verb: &str, extra: &[&str]| {
        crate::common::run(
            flowgate(d)
                .args([
                    "dead-letters",
                    verb,
                    "event-consumer.toml",
                    "-p",
                    "domain=DELIVERY",
                ])
                .args(extra)
                .env("WAREHOUSE_URL", &pg.url),
        )
    };
    let listed = letters("list", &["--json"]);
    assert_eq!(listed.code, 0, "{}", listed.all());
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).unwrap();
    let offsets: Vec<i64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(offsets, [100, 101, 102]);
    // The constraint was wrong: dropped, the refused event is replayed and written.
    pg.exec(&format!(
        "ALTER TABLE delivery_{run} DROP CONSTRAINT positive"
    ));
    let replay = letters("replay", &["--offset", "102"]);
    assert_eq!(replay.code, 0, "{}", replay.all());
    assert!(
        replay.stdout.contains("1 dead letter(s) sent back"),
        "{}",
        replay.stdout
    );
    let replayed = format!("SELECT count(*) FROM delivery_{run} WHERE id = 500 AND amount = -5");
    wait_for("the replayed event", 30, || count(&pg, &replayed) == 1);
    assert!(!dead.join("102.json").exists());
    assert!(
        d.join(format!(
            "dead-letters/delivery/replayed/delivery-{run}/0/102.json"
        ))
        .exists()
    );

    let (_, metrics) = http(p1, "GET", "/metrics", None);
    let group = format!("consumer-delivery-{run}");
    for (metric, n) in [("written", 51), ("ignored", 50), ("dead_lettered", 3)] {
        let line = format!("flowgate_stream_events_{metric}_total{{stream=\"{group}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
}

/// `-p domain=DELIVERY -p domain=ORDERS`: one process, one stream per domain,
/// each in its own group into its own table, both on one /metrics.
#[test]
fn one_process_serves_a_list_of_domains() {
    let (dir, run, pg) = two_domains();
    let d = dir.path();
    let delivery: Vec<_> = (1..=20).map(|i| event(i, "DeliveryMade")).collect();
    produce(&format!("delivery-{run}"), &delivery);
    let orders: Vec<_> = (1..=30).map(|i| event(i, "OrderPlaced")).collect();
    produce(&format!("orders-{run}"), &orders);
    let port = free_port();
    let _both = Serve(
        flowgate(d)
            .args([
                "serve",
                "event-consumer.toml",
                "-p",
                "domain=DELIVERY",
                "-p",
                "domain=ORDERS",
            ])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("WAREHOUSE_URL", &pg.url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("both domains", 60, || {
        count(&pg, &format!("SELECT count(*) FROM delivery_{run}")) == 20
            && count(&pg, &format!("SELECT count(*) FROM orders_{run}")) == 30
    });
    let (_, metrics) = http(port, "GET", "/metrics", None);
    for (group, n) in [("delivery", 20), ("orders", 30)] {
        let line = format!(
            "flowgate_stream_events_written_total{{stream=\"consumer-{group}-{run}\"}} {n}"
        );
        assert!(metrics.contains(&line), "{line} in:\n{metrics}");
    }
    // A domain of the list missing a variable stops it all before it starts.
    let env = std::fs::read_to_string(d.join(".env")).unwrap();
    write(
        &d.join(".env"),
        env.replace(&format!("GROUP_ID_ORDERS=consumer-orders-{run}\n"), "")
            .as_bytes(),
    );
    for verb in ["validate", "serve"] {
        let out = crate::common::run(
            flowgate(d)
                .args([
                    verb,
                    "event-consumer.toml",
                    "-p",
                    "domain=DELIVERY",
                    "-p",
                    "domain=ORDERS",
                ])
                .args(if verb == "serve" {
                    &["--listen", "127.0.0.1:0"][..]
                } else {
                    &[]
                })
                .env("WAREHOUSE_URL", &pg.url),
        );
        assert_eq!(out.code, 2, "{}", out.all());
        assert!(
            out.stderr.contains("GROUP_ID_ORDERS") && out.stderr.contains("domain=ORDERS"),
            "{}",
            out.stderr
        );
    }
}

/// A cluster that asks for TLS and SCRAM-SHA-512 (the broker's second
/// listener): the store URL's settings get in, the password from a secret
/// variable; a wrong one stops the stream at once with a reason that names
/// what to check and never the password.
#[test]
fn a_secured_cluster_takes_scram_over_tls_and_a_wrong_password_stops_the_stream() {
    let (dir, run, pg) = two_domains();
    let d = dir.path();
    let ca = Path::new(&service_var("FLOWGATE_TEST_TLS_DIR")).join("ca.pem");
    let toml = std::fs::read_to_string(d.join("event-consumer.toml")).unwrap();
    let secured = format!(
        "kafka://{}?security.protocol=SASL_SSL&sasl.mechanism=SCRAM-SHA-512&sasl.username=flowgate\
         &sasl.password=${{secret:KAFKA_PASSWORD}}&ssl.ca.location={}",
        service_var("FLOWGATE_TEST_KAFKA_SASL_SSL"),
        ca.display()
    );
    let line = toml
        .lines()
        .find(|l| l.starts_with("kafka = { url = "))
        .unwrap();
    write(
        &d.join("event-consumer.toml"),
        toml.replace(line, &format!("kafka = {{ url = \"{secured}\" }}"))
            .as_bytes(),
    );
    let events: Vec<_> = (1..=20).map(|i| event(i, "DeliveryMade")).collect();
    produce(&format!("delivery-{run}"), &events);
    let password = service_var("FLOWGATE_TEST_KAFKA_SCRAM_PASSWORD");
    let _ok = serve(
        d,
        &pg.url,
        "DELIVERY",
        free_port(),
        &[("KAFKA_PASSWORD", &password)],
    );
    wait_for("the events over SASL_SSL", 60, || {
        count(&pg, &format!("SELECT count(*) FROM delivery_{run}")) == 20
    });
    let wrong = "not-the-kafka-pw-1234";
    let out = crate::common::run(
        flowgate(d)
            .args([
                "serve",
                "event-consumer.toml",
                "-p",
                "domain=ORDERS",
                "--listen",
                "127.0.0.1:0",
            ])
            .env("WAREHOUSE_URL", &pg.url)
            .env("KAFKA_PASSWORD", wrong),
    );
    assert_eq!(out.code, 4, "{}", out.all());
    assert!(
        out.stderr.contains("refused the credentials") && out.stderr.contains("sasl.password"),
        "{}",
        out.stderr
    );
    assert!(!out.all().contains(wrong), "{}", out.all());
}

#[test]
fn validate_names_the_variable_a_domain_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    example(d, "v");
    let text = std::fs::read_to_string(d.join(".env")).unwrap();
    write(
        &d.join(".env"),
        text.replace("GROUP_ID_ORDERS=consumer-orders-v\n", "")
            .as_bytes(),
    );
    let check = |domain: &str| {
        run(flowgate(d)
            .args([
                "validate",
                "event-consumer.toml",
                "--param",
                &format!("domain={domain}"),
            ])
            .env("WAREHOUSE_URL", "postgres://u:secret-pw@127.0.0.1:1/db"))
    };
    let ok = check("DELIVERY");
    assert_eq!(ok.code, 0, "{}", ok.all());
    let out = check("ORDERS");
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr
            .contains("the variable `GROUP_ID_ORDERS` is not set"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("with domain=ORDERS"), "{}", out.stderr);
    assert!(!out.all().contains("secret-pw"), "{}", out.all());
    // serve refuses to start the same way (a usage error, not a crash loop).
    let out = run(flowgate(d)
        .args([
            "serve",
            "event-consumer.toml",
            "--param",
            "domain=ORDERS",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("WAREHOUSE_URL", "postgres://u:secret-pw@127.0.0.1:1/db"));
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(out.stderr.contains("GROUP_ID_ORDERS"), "{}", out.stderr);
    // The warehouse's URL is checked too: a misspelt BigQuery option.
    let out = run(flowgate(d)
        .args(["validate", "event-consumer.toml", "-p", "domain=DELIVERY"])
        .env("WAREHOUSE_URL", "bigquery://p?credential=/keys/dev.json"));
    assert_eq!(out.code, 2, "{}", out.all());
    assert!(
        out.stderr
            .contains("takes `credentials` and `endpoint`, not `credential`"),
        "{}",
        out.stderr
    );
}

/// SIGKILL at 20 seeded points while a 3-partition topic is consumed (three
/// of them just before or just after the table's commit), a broker restart, and two
/// instances of one group sharing (and re-sharing) the partitions: every
/// event is in the table exactly once.
#[test]
fn kills_a_broker_restart_and_rebalances_leave_every_event_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let run = uuid_like();
    example(d, &run);
    small_batches(d);
    let pg = Pg::new();
    table(&pg, &format!("delivery_{run}"));
    let topic = format!("delivery-{run}");
    create_topic(&topic, 3);
    const N: u64 = 30_000;
    let events: Vec<_> = (1..=N).map(|i| event(i, "DeliveryMade")).collect();
    let rows = format!("SELECT count(*) FROM delivery_{run}");
    kills_restarts_and_rebalances(d, &pg.url, &topic, &events, || count(&pg, &rows));
    let _last = serve(d, &pg.url, "DELIVERY", free_port(), &[]);
    let distinct = format!("SELECT count(DISTINCT id) FROM delivery_{run}");
    wait_for("every event", 120, || count(&pg, &distinct) >= N);
    std::thread::sleep(Duration::from_secs(2));
    let stats = pg.rows(&format!(
        "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM delivery_{run}"
    ));
    assert_eq!(
        stats[0],
        [
            Some(N.to_string()),
            Some(N.to_string()),
            Some("1".into()),
            Some(N.to_string())
        ],
        "every event once"
    );
    // In each partition, offsets in the order written.
    let gaps = count(
        &pg,
        &format!(
            "SELECT count(*) FROM (SELECT _offset - lag(_offset) OVER (PARTITION BY _partition ORDER BY _offset) AS step FROM delivery_{run}) s WHERE step <> 1"
        ),
    );
    assert_eq!(gaps, 0, "no offset missing or twice in any partition");
}

/// Send `events` in 20 chunks; after each, an instance of the group serves
/// (dying at the sink's commit in cases 3, 5 and 12), another joins in odd
/// cases (a rebalance), the broker restarts in case 7, and the first is
/// killed after a seeded while.
pub(crate) fn kills_restarts_and_rebalances(
    d: &Path,
    warehouse: &str,
    topic: &str,
    events: &[(String, Vec<u8>)],
    rows: impl Fn() -> u64,
) {
    const CASES: usize = 20;
    let mut next = seeded(0x5eed_0016);
    let chunk = events.len() / CASES;
    for case in 0..CASES {
        produce(topic, &events[case * chunk..(case + 1) * chunk]);
        let before = rows();
        // Dying just before the table's commit, and just after it (before
        // Kafka's): the batch is read again, and written once.
        let crash = match case {
            3 => vec![("FLOWGATE_TEST_CRASH_AT", "stream-before-commit")],
            5 | 12 => vec![("FLOWGATE_TEST_CRASH_AT", "stream-after-commit")],
            _ => vec![],
        };
        let mut a = serve(d, warehouse, "DELIVERY", free_port(), &crash);
        if crash.is_empty() {
            wait_for("progress", 60, || rows() > before);
        } else {
            wait_for("the crash point", 60, || a.0.try_wait().unwrap().is_some());
        }
        // Every other case a second instance of the group joins while the
        // first has a batch in flight: a rebalance moves partitions under it.
        let b = (case % 2 == 1).then(|| serve(d, warehouse, "DELIVERY", free_port(), &[]));
        if case == 7 {
            restart_broker();
        }
        std::thread::sleep(Duration::from_millis(next(400)));
        let _ = a.0.kill();
        let _ = a.0.wait();
        if b.is_some() {
            std::thread::sleep(Duration::from_millis(next(2000)));
        }
        drop(b);
    }
}

/// Batches of at most 400 events, cut after 50 ms: many batches, many
/// commits for the kills to land between.
pub(crate) fn small_batches(d: &Path) {
    let toml = std::fs::read_to_string(d.join("event-consumer.toml")).unwrap();
    write(
        &d.join("event-consumer.toml"),
        toml.replace(
            "batch = { events = 5000, bytes = \"8MB\", wait = \"500ms\" }",
            "batch = { events = 400, wait = \"50ms\" }",
        )
        .as_bytes(),
    );
}

pub(crate) fn restart_broker() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/services.sh");
    let out = Command::new(script).arg("kafka-restart").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
