//! The Kafka side of a stream: a consumer in its group (librdkafka through
//! rdkafka), micro-batches by count, bytes and time, each written by the sink
//! before the group's offsets move.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::metrics::StreamMetrics;
use super::sink::{DeadLetters, Message, Sink, Written};
use super::{Rendered, StreamError, StreamPlan};
use crate::plan::Plan;

/// librdkafka's settings for `r`'s cluster: its brokers and the store URL's
/// security settings.
pub fn client_config(r: &Rendered) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &r.bootstrap);
    for (k, v) in &r.kafka_options {
        c.set(k, v);
    }
    c
}

/// The consumer of `r`: offsets stored and committed by flowgate only; what
/// librdkafka queues ahead bounded by one batch's bytes (its default is 64 MB;
/// never below 4 MB here) and by one batch's events in each partition (its
/// default is 100,000), so a stream holds about two batches, and fetches
/// again soon after a queue was full (bench/RESULTS.md, event-consumer).
pub fn consumer(
    r: &Rendered,
    batch_events: usize,
    batch_bytes: u64,
) -> Result<StreamConsumer, StreamError> {
    let ahead_kb = (batch_bytes / 1024).clamp(4096, 65536);
    let ahead_events = batch_events.clamp(1000, 100_000);
    let c: StreamConsumer = client_config(r)
        .set("group.id", &r.group)
        .set("client.id", format!("flowgate-{}", r.group))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Heartbeats come from librdkafka's own thread, whatever a batch write
        // takes, so a short session loses little time when an instance dies.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("queued.max.messages.kbytes", ahead_kb.to_string())
        .set("queued.min.messages", ahead_events.to_string())
        // With a queue that small, librdkafka's default pause of 1 s before
        // fetching again for a full partition's queue would starve the stream.
        .set("fetch.queue.backoff.ms", "20")
        .create()
        .map_err(|e| {
            StreamError::Kafka(format!("creating the consumer for {}: {e}", r.bootstrap))
        })?;
    let topics: Vec<&str> = r.topics.iter().map(String::as_str).collect();
    c.subscribe(&topics)
        .map_err(|e| StreamError::Kafka(format!("subscribing to {}: {e}", r.topics.join(", "))))?;
    Ok(c)
}

/// Consume until `cancel`: batch, write, then commit. A batch the sink cannot
/// write yet is written again (same events, same offsets) until it can.
pub async fn run(
    plan: &Plan,
    stream: &StreamPlan,
    r: &Rendered,
    dead: DeadLetters,
    metrics: Arc<StreamMetrics>,
    cancel: CancellationToken,
) -> Result<(), StreamError> {
    let mut sink = Sink::open(&r.sink_url, &r.table).await?;
    let consumer = Arc::new(consumer(r, stream.batch_events, stream.batch_bytes)?);
    // Into BigQuery, Kafka's offsets are the only record of what was written:
    // each batch waits for its commit, so a death after it repeats nothing.
    let wait_for_commit = matches!(sink, Sink::Bq(_));
    tracing::info!(pipeline = %plan.name, group = %r.group, topics = %r.topics.join(","), table = %r.table, "stream consuming");
    tokio::spawn(measure_lag(
        consumer.clone(),
        metrics.clone(),
        cancel.clone(),
    ));
    loop {
        let Some(batch) = next_batch(&consumer, stream, &metrics, &cancel).await? else {
            break;
        };
        let started = Instant::now();
        let written = write_until_done(&mut sink, &batch, r, &dead, &cancel).await?;
        let Some(written) = written else { break };
        crate::testing::crash_point("stream-after-commit");
        commit(&consumer, &written, wait_for_commit, &metrics).await;
        count(&metrics, &written, started);
        tracing::debug!(
            rows = written.rows,
            ignored = written.ignored,
            dead = written.dead,
            next = ?written.next,
            "batch written"
        );
    }
    tracing::info!(pipeline = %plan.name, group = %r.group, "stream stopped");
    Ok(())
}

/// Move the group's offsets past `written`. After a rebalance this instance
/// may no longer own a partition, and the commit is refused: the new owner
/// reads from the last committed offset (PostgreSQL's table leaves out what it
/// has; BigQuery's gets those events again: see `bigquery`).
async fn commit(
    consumer: &Arc<StreamConsumer>,
    written: &Written,
    wait: bool,
    metrics: &StreamMetrics,
) {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), next) in &written.next {
        if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
            tracing::warn!(error = %e, "an offset to commit");
        }
    }
    let done = if wait {
        let c = consumer.clone();
        tokio::task::spawn_blocking(move || c.commit(&tpl, CommitMode::Sync))
            .await
            .unwrap_or(Err(rdkafka::error::KafkaError::Canceled))
    } else {
        consumer.commit(&tpl, CommitMode::Async)
    };
    match done {
        Ok(()) => {
            if let Ok(mut p) = metrics.positions.lock() {
                p.extend(written.next.clone());
            }
        }
        Err(e) => {
            metrics.commits_failed.fetch_add(1, Ordering::Relaxed);
            if wait {
                tracing::warn!(error = %e, next = ?written.next, "Kafka did not take the batch's offsets: whoever owns its partitions next reads it again");
            } else {
                tracing::debug!(error = %e, "committing offsets to Kafka");
            }
        }
    }
}

/// How often the lag is measured (a broker round trip per partition).
const LAG_EVERY: Duration = Duration::from_secs(5);

/// Every [`LAG_EVERY`], the events behind the high watermark of each
/// partition written, on a thread of its own (never in a batch's way).
async fn measure_lag(
    consumer: Arc<StreamConsumer>,
    metrics: Arc<StreamMetrics>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(LAG_EVERY) => {}
        }
        let positions = match metrics.positions.lock() {
            Ok(p) => p.clone(),
            Err(_) => continue,
        };
        let (c, m) = (consumer.clone(), metrics.clone());
        let _ = tokio::task::spawn_blocking(move || {
            for ((topic, partition), next) in positions {
                if let Ok((_, high)) =
                    c.fetch_watermarks(&topic, partition, Duration::from_millis(500))
                    && let Ok(mut lag) = m.lag.lock()
                {
                    lag.insert((topic, partition), (high - next).max(0));
                }
            }
        })
        .await;
    }
}

fn count(m: &StreamMetrics, w: &Written, started: Instant) {
    m.written.fetch_add(w.rows, Ordering::Relaxed);
    m.ignored.fetch_add(w.ignored, Ordering::Relaxed);
    m.dead.fetch_add(w.dead, Ordering::Relaxed);
    m.seen_before.fetch_add(w.seen_before, Ordering::Relaxed);
    m.batches.fetch_add(1, Ordering::Relaxed);
    m.batch_micros
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
}

/// The next micro-batch: it starts with the next event and ends at the count,
/// the bytes or the wait; `None` when cancelled before one began. Refused
/// credentials or TLS end the stream (waiting would not mend them).
async fn next_batch(
    consumer: &StreamConsumer,
    stream: &StreamPlan,
    metrics: &StreamMetrics,
    cancel: &CancellationToken,
) -> Result<Option<Vec<Message>>, StreamError> {
    let mut batch = Vec::new();
    let mut bytes = 0u64;
    let mut deadline = None;
    while batch.len() < stream.batch_events && bytes < stream.batch_bytes {
        let received = match deadline {
            None => tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                m = consumer.recv() => m,
            },
            Some(d) => match tokio::time::timeout_at(d, consumer.recv()).await {
                Ok(m) => m,
                Err(_) => break,
            },
        };
        match received {
            Ok(m) => {
                let payload = m.payload().map(<[u8]>::to_vec);
                bytes += payload.as_ref().map_or(0, |p| p.len() as u64);
                batch.push(Message {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    payload,
                });
                deadline.get_or_insert_with(|| tokio::time::Instant::now() + stream.batch_wait);
            }
            Err(e) => {
                if let Some(why) = refused(&e) {
                    return Err(StreamError::Kafka(crate::secret::redact(&format!(
                        "{why}: {e}"
                    ))));
                }
                tracing::warn!(error = %e, "Kafka");
                if batch.is_empty() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                } else {
                    break;
                }
            }
        }
    }
    metrics.bytes.fetch_add(bytes, Ordering::Relaxed);
    Ok(Some(batch))
}

/// What to tell when the cluster refuses this client for good.
fn refused(e: &rdkafka::error::KafkaError) -> Option<&'static str> {
    use rdkafka::types::RDKafkaErrorCode as C;
    match e.rdkafka_error_code()? {
        C::Authentication | C::SaslAuthenticationFailed => Some(
            "the Kafka cluster refused the credentials (check the store URL's sasl.mechanism, sasl.username and sasl.password)",
        ),
        C::SSL => Some(
            "TLS to the Kafka cluster failed (check the store URL's ssl.ca.location, or its certificate and key)",
        ),
        _ => None,
    }
}

/// Write `batch`, again and again while the sink fails (reconnecting), until it
/// is written or `cancel` (then `None`: nothing of it is committed anywhere).
async fn write_until_done(
    sink: &mut Sink,
    batch: &[Message],
    r: &Rendered,
    dead: &DeadLetters,
    cancel: &CancellationToken,
) -> Result<Option<Written>, StreamError> {
    let mut delay = Duration::from_millis(200);
    loop {
        match sink.write(batch, r, dead).await {
            Ok(w) => return Ok(Some(w)),
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?delay, "writing a batch; it is written again")
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
        if sink.is_closed() {
            match Sink::open(&r.sink_url, &r.table).await {
                Ok(s) => *sink = s,
                Err(e) => tracing::error!(error = %e, "reconnecting to the table"),
            }
        }
    }
}
