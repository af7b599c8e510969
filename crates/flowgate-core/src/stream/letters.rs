//! `flowgate dead-letters list|replay`: a stream's dead letters, and sending
//! them back to their topics once what refused them is fixed.

use bytes::Bytes;
use object_store::ObjectStoreExt;
use serde::Serialize;
use serde_json::Value;

use super::StreamError;
use crate::store::{StoreHandle, join_key};

/// One dead letter, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct Letter {
    /// Its key under the stream's dead-letter prefix.
    pub key: String,
    pub topic: String,
    pub partition: i64,
    pub offset: i64,
    pub reason: String,
    pub at: String,
    #[serde(skip)]
    pub body: Value,
}

/// The dead letters waiting (not those already replayed), oldest offset first
/// per partition.
pub async fn list(store: &StoreHandle, prefix: &str) -> Result<Vec<Letter>, StreamError> {
    let listed = store
        .list_under(prefix)
        .await
        .map_err(|e| StreamError::DeadLetter(e.message))?;
    let mut out = Vec::new();
    for (rel, meta) in listed {
        if rel.starts_with("replayed/") || !rel.ends_with(".json") {
            continue;
        }
        let body = store
            .reader()
            .get(&meta.location)
            .await
            .map_err(|e| StreamError::DeadLetter(format!("{}: {e}", store.display(&rel))))?
            .bytes()
            .await
            .map_err(|e| StreamError::DeadLetter(format!("{}: {e}", store.display(&rel))))?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| {
            StreamError::DeadLetter(format!("{} is not a dead letter: {e}", store.display(&rel)))
        })?;
        out.push(Letter {
            key: rel,
            topic: v["topic"].as_str().unwrap_or_default().to_string(),
            partition: v["partition"].as_i64().unwrap_or(-1),
            offset: v["offset"].as_i64().unwrap_or(-1),
            reason: v["reason"].as_str().unwrap_or_default().to_string(),
            at: v["at"].as_str().unwrap_or_default().to_string(),
            body: v,
        });
    }
    out.sort_by(|a, b| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));
    Ok(out)
}

/// The bytes a letter kept of its event's value and key.
fn bytes_of(v: &Value, field: &str) -> Result<Option<Vec<u8>>, StreamError> {
    use base64::Engine as _;
    if let Some(s) = v[field].as_str() {
        return Ok(Some(s.as_bytes().to_vec()));
    }
    match v[format!("{field}_base64")].as_str() {
        Some(b) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(Some)
            .map_err(|e| StreamError::DeadLetter(format!("{field}_base64: {e}"))),
        None => Ok(None),
    }
}

/// Send each letter's event back to its topic (acknowledged by the brokers),
/// then move the letter under `replayed/`: a crash between the two sends it
/// again, never loses it. The stream then takes it like any event (and sets it
/// aside again, at its new offset, if it still cannot be written).
#[cfg(feature = "kafka")]
pub async fn replay(
    r: &super::Rendered,
    store: &StoreHandle,
    prefix: &str,
    letters: &[Letter],
) -> Result<usize, StreamError> {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = super::kafka::client_config(r)
        .set("enable.idempotence", "true")
        .create()
        .map_err(|e| StreamError::Kafka(format!("creating a producer for {}: {e}", r.bootstrap)))?;
    let writer = store
        .writer("replaying dead letters")
        .map_err(|e| StreamError::DeadLetter(e.to_string()))?;
    let mut sent = 0;
    for l in letters {
        let value = bytes_of(&l.body, "value")?;
        let key = bytes_of(&l.body, "key")?;
        let origin = format!("{}/{}/{}", l.topic, l.partition, l.offset);
        let mut record = FutureRecord::<Vec<u8>, Vec<u8>>::to(&l.topic).headers(
            OwnedHeaders::new().insert(Header {
                key: "flowgate-replay-of",
                value: Some(origin.as_str()),
            }),
        );
        if let Some(v) = &value {
            record = record.payload(v);
        }
        if let Some(k) = &key {
            record = record.key(k);
        }
        producer
            .send(record, std::time::Duration::from_secs(30))
            .await
            .map_err(|(e, _)| StreamError::Kafka(format!("sending {origin} back: {e}")))?;
        let from = store
            .path(&join_key(prefix, &l.key))
            .map_err(StreamError::DeadLetter)?;
        let to = store
            .path(&join_key(prefix, &format!("replayed/{}", l.key)))
            .map_err(StreamError::DeadLetter)?;
        let moved = async {
            let body: Bytes = writer.get(&from).await?.bytes().await?;
            writer.put(&to, body.into()).await?;
            writer.delete(&from).await
        };
        moved.await.map_err(|e| {
            StreamError::DeadLetter(format!(
                "moving {} to replayed/: {e}",
                store.display(&l.key)
            ))
        })?;
        sent += 1;
    }
    Ok(sent)
}
