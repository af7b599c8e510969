//! A stream's counters, for `/metrics`: events written, ignored and
//! dead-lettered, batches and their latency, and the lag behind each partition's
//! high watermark.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Debug, Default)]
pub struct StreamMetrics {
    pub written: AtomicU64,
    pub ignored: AtomicU64,
    pub dead: AtomicU64,
    pub seen_before: AtomicU64,
    pub batches: AtomicU64,
    /// Sum of batch write times, in microseconds.
    pub batch_micros: AtomicU64,
    pub bytes: AtomicU64,
    /// Batches written whose offsets Kafka did not take (a rebalance moved
    /// their partitions, the broker was away): read again by whoever owns them
    /// next (into BigQuery, written again).
    pub commits_failed: AtomicU64,
    /// The next offset of each (topic, partition) written.
    pub positions: Mutex<BTreeMap<(String, i32), i64>>,
    /// Events behind the high watermark, per (topic, partition).
    pub lag: Mutex<BTreeMap<(String, i32), i64>>,
}

/// The counters of stream `name` (one per pipeline and domain), made on first use.
pub fn of(name: &str) -> Arc<StreamMetrics> {
    static ALL: OnceLock<Mutex<BTreeMap<String, Arc<StreamMetrics>>>> = OnceLock::new();
    let all = ALL.get_or_init(Default::default);
    let mut all = all.lock().unwrap_or_else(|p| p.into_inner());
    all.entry(name.to_string()).or_default().clone()
}

/// A counter's name, help and how to read it.
type Counter = (&'static str, &'static str, fn(&StreamMetrics) -> u64);

/// `s` as a Prometheus label value (backslash, quote and newline escaped).
pub fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Every stream's counters, for the `/metrics` page.
pub fn render(names: &[String]) -> String {
    let mut out = String::new();
    let line = |out: &mut String, metric: &str, help: &str, kind: &str| {
        out.push_str(&format!("# HELP {metric} {help}\n# TYPE {metric} {kind}\n"));
    };
    let counters: [Counter; 7] = [
        (
            "flowgate_stream_events_written_total",
            "Events written to the stream's table.",
            |m| m.written.load(Ordering::Relaxed),
        ),
        (
            "flowgate_stream_events_ignored_total",
            "Events dropped for their type (ignore).",
            |m| m.ignored.load(Ordering::Relaxed),
        ),
        (
            "flowgate_stream_events_dead_lettered_total",
            "Events set aside as dead letters.",
            |m| m.dead.load(Ordering::Relaxed),
        ),
        (
            "flowgate_stream_events_seen_before_total",
            "Events read again that an earlier write already handled.",
            |m| m.seen_before.load(Ordering::Relaxed),
        ),
        (
            "flowgate_stream_batches_total",
            "Micro-batches written.",
            |m| m.batches.load(Ordering::Relaxed),
        ),
        (
            "flowgate_stream_commits_failed_total",
            "Written batches whose offsets Kafka did not take (they are read again).",
            |m| m.commits_failed.load(Ordering::Relaxed),
        ),
        (
            "flowgate_stream_bytes_total",
            "Bytes of event payloads consumed.",
            |m| m.bytes.load(Ordering::Relaxed),
        ),
    ];
    for (metric, help, get) in counters {
        line(&mut out, metric, help, "counter");
        for n in names {
            out.push_str(&format!(
                "{metric}{{stream=\"{}\"}} {}\n",
                label(n),
                get(&of(n))
            ));
        }
    }
    line(
        &mut out,
        "flowgate_stream_batch_seconds_sum",
        "Time spent writing batches.",
        "counter",
    );
    for n in names {
        let m = of(n);
        out.push_str(&format!(
            "flowgate_stream_batch_seconds_sum{{stream=\"{}\"}} {:.6}\n",
            label(n),
            m.batch_micros.load(Ordering::Relaxed) as f64 / 1e6
        ));
    }
    line(
        &mut out,
        "flowgate_stream_lag_events",
        "Events behind each partition's high watermark.",
        "gauge",
    );
    for n in names {
        let m = of(n);
        let lag = m.lag.lock().unwrap_or_else(|p| p.into_inner());
        for ((topic, partition), l) in lag.iter() {
            out.push_str(&format!(
                "flowgate_stream_lag_events{{stream=\"{}\",topic=\"{}\",partition=\"{partition}\"}} {l}\n",
                label(n),
                label(topic)
            ));
        }
    }
    out
}
