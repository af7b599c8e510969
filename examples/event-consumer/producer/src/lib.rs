//! Events of the event-consumer example's sample contracts, sent to Kafka.
//!
//! A domain's events cycle through its types (one of them ignored by the
//! example's `.env`); every `poison`-th event, when asked, is one its table
//! cannot take (an `id` that is not a number).

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

/// The event types of a domain; the example ignores the second.
pub fn types(domain: &str) -> &'static [&'static str] {
    match domain {
        "ORDERS" => &["OrderPlaced", "OrderViewed", "OrderPaid", "OrderCancelled"],
        _ => &[
            "DeliveryMade",
            "DeliveryPinged",
            "DeliveryShipped",
            "DeliveryViewed",
        ],
    }
}

/// Event `id` of `domain` (as its JSON text), poison when `poison` says so.
pub fn event(domain: &str, id: u64, poison: bool) -> String {
    let kinds = types(domain);
    let kind = kinds[(id as usize) % kinds.len()];
    if poison {
        return serde_json::json!({"id": format!("x{id}"), "type": kind}).to_string();
    }
    serde_json::json!({
        "id": id,
        "type": kind,
        "amount": format!("{}.{:02}", id % 1000, id % 100),
        "occurred_at": "2026-12-04T10:00:00Z",
        "extra": {"courier": format!("c{}", id % 37)},
    })
    .to_string()
}

/// Send events 1..=`n` of `domain` to `topic`, every `poison`-th poison (0:
/// none); returns when the brokers acknowledged them all.
pub fn produce(
    bootstrap: &str,
    topic: &str,
    domain: &str,
    n: u64,
    poison: u64,
) -> Result<(), String> {
    send_all(
        bootstrap,
        topic,
        (1..=n).map(|id| {
            let poisoned = poison > 0 && id.is_multiple_of(poison);
            (
                format!("k{}", id % 97),
                event(domain, id, poisoned).into_bytes(),
            )
        }),
    )
}

/// Send (key, value) `events` to `topic`, in order, idempotently; returns when
/// the brokers acknowledged them all.
pub fn send_all(
    bootstrap: &str,
    topic: &str,
    events: impl IntoIterator<Item = (String, Vec<u8>)>,
) -> Result<(), String> {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .map_err(|e| format!("a producer for {bootstrap}: {e}"))?;
    for (key, body) in events {
        let mut record = BaseRecord::to(topic)
            .key(key.as_str())
            .payload(body.as_slice());
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    p.flush(Duration::from_secs(60))
        .map_err(|e| format!("waiting for acknowledgements: {e}"))
}
