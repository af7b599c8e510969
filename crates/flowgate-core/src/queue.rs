//! Arrival from a queue: S3 event notifications delivered through SQS (directly or
//! wrapped by SNS). Each `ObjectCreated` record whose key matches the arrival
//! pattern becomes an arrival event, deduplicated by key and etag exactly as the
//! listing-based arrival does, so a message delivered twice, or a flag uploaded
//! twice with the same content, is one transfer.
//!
//! A message is deleted only when every event it carried ended in a success, a
//! partial run (its bad data quarantined), or a dead letter; otherwise it becomes
//! visible again and is retried. While a run is under way the message's visibility
//! is extended, so a long transfer is not handed to a second worker.

use std::time::Duration;

use aws_sdk_sqs::Client;
use serde_json::{Value, json};

use crate::engine::{Engine, EngineError, Outcome, Submission};
use crate::error::{ErrorClass, StepError};
use crate::plan::{ArrivalPlan, Plan};
use crate::quarantine::DeadRecord;

/// What one message says.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// The `s3:TestEvent` S3 sends when notifications are set up.
    TestEvent,
    /// Object-created records (possibly none that concern us).
    Records(Vec<ObjectCreated>),
    /// Not an S3 event notification; the reason why.
    Malformed(String),
}

#[derive(Debug, PartialEq, Clone)]
pub struct ObjectCreated {
    pub bucket: String,
    /// The object key, URL-decoded as S3 documents (`+` is a space).
    pub key: String,
    pub etag: Option<String>,
    pub size: Option<u64>,
    pub event_name: String,
    pub event_time: Option<String>,
}

/// Parse a message body: S3 event JSON, or an SNS notification whose `Message` is one.
pub fn parse(body: &str) -> Parsed {
    let v: Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(e) => return Parsed::Malformed(format!("not JSON: {e}")),
    };
    // SNS wraps the S3 event as a string in `Message`.
    let v = match (v.get("Type").and_then(Value::as_str), v.get("Message")) {
        (Some("Notification"), Some(Value::String(inner))) => match serde_json::from_str(inner) {
            Ok(inner) => inner,
            Err(e) => {
                return Parsed::Malformed(format!(
                    "an SNS notification whose Message is not JSON: {e}"
                ));
            }
        },
        _ => v,
    };
    if v.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Parsed::TestEvent;
    }
    let Some(records) = v.get("Records").and_then(Value::as_array) else {
        return Parsed::Malformed("no `Records` array: not an S3 event notification".into());
    };
    let mut out = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let name = r
            .get("eventName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let s3 = r.get("s3");
        let bucket = s3
            .and_then(|s| s.pointer("/bucket/name"))
            .and_then(Value::as_str);
        let key = s3
            .and_then(|s| s.pointer("/object/key"))
            .and_then(Value::as_str);
        let (Some(bucket), Some(key)) = (bucket, key) else {
            return Parsed::Malformed(format!("record {i} has no s3.bucket.name or s3.object.key"));
        };
        if !name.starts_with("ObjectCreated:") {
            continue;
        }
        let key = match decode_key(key) {
            Ok(k) => k,
            Err(e) => return Parsed::Malformed(format!("record {i}: {e}")),
        };
        out.push(ObjectCreated {
            bucket: bucket.to_string(),
            key,
            etag: s3
                .and_then(|s| s.pointer("/object/eTag"))
                .and_then(Value::as_str)
                .map(|e| e.trim_matches('"').to_string()),
            size: s3
                .and_then(|s| s.pointer("/object/size"))
                .and_then(Value::as_u64),
            event_name: name.to_string(),
            event_time: r
                .get("eventTime")
                .and_then(Value::as_str)
                .map(str::to_string),
        });
    }
    Parsed::Records(out)
}

/// S3 event keys are URL-encoded with `+` for spaces.
fn decode_key(key: &str) -> Result<String, String> {
    let spaced = key.replace('+', " ");
    percent_decode(&spaced).ok_or_else(|| format!("key `{key}` is not valid URL encoding"))
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The SQS client for a queue URL: its endpoint is the URL's origin unless it is
/// AWS's own; the region comes from an AWS host name, else `AWS_REGION`, else
/// us-east-1. Credentials come from the usual AWS chain.
pub async fn client_for(queue_url: &str) -> Result<Client, StepError> {
    let url = url::Url::parse(queue_url)
        .map_err(|e| StepError::user(format!("queue `{queue_url}` is not a URL: {e}")))?;
    let host = url.host_str().unwrap_or_default();
    let conf = if host.ends_with(".amazonaws.com") {
        crate::aws::config(host.split('.').nth(1), None).await
    } else {
        crate::aws::config(None, Some(&url.origin().ascii_serialization())).await
    };
    Ok(Client::new(&conf))
}

fn sqs_error<E: std::error::Error + 'static>(
    what: &str,
    e: aws_sdk_sqs::error::SdkError<E>,
) -> StepError {
    StepError::new(
        ErrorClass::EXTERNAL_RETRIABLE,
        format!("{what}: {}", crate::error::chain(&e)),
    )
}

/// How long one pass keeps taking messages while the queue still has some.
const DRAIN_FOR: Duration = Duration::from_secs(60);

/// Take what the queue holds (the first receive long-polls up to `wait`), batch
/// after batch until it is empty or [`DRAIN_FOR`] has passed, and handle every
/// message. Returns the outcomes of the runs it started.
pub async fn poll_queue(
    engine: &Engine,
    plan: &Plan,
    arrival: &ArrivalPlan,
    queue_url: &str,
    client: &Client,
    wait: Duration,
) -> Result<Vec<Outcome>, EngineError> {
    let started = tokio::time::Instant::now();
    let mut outcomes = Vec::new();
    let mut wait = wait;
    while !engine.cancel.is_cancelled() && started.elapsed() < DRAIN_FOR {
        let got = client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait.as_secs().min(20) as i32)
            .visibility_timeout(arrival.visibility.as_secs() as i32)
            .send()
            .await
            .map_err(|e| EngineError::Step(sqs_error("receiving from the queue", e)))?;
        if got.messages().is_empty() {
            break;
        }
        // Later batches only take what is already there.
        wait = Duration::ZERO;
        handle_batch(
            engine,
            plan,
            arrival,
            queue_url,
            client,
            got.messages(),
            &mut outcomes,
        )
        .await?;
    }
    Ok(outcomes)
}

/// Handle one received batch: messages that need no run (test events, objects
/// the pattern leaves out) are deleted in one request first; each other message
/// is deleted once its runs ended well (before its visibility runs out).
async fn handle_batch(
    engine: &Engine,
    plan: &Plan,
    arrival: &ArrivalPlan,
    queue_url: &str,
    client: &Client,
    messages: &[aws_sdk_sqs::types::Message],
    outcomes: &mut Vec<Outcome>,
) -> Result<(), EngineError> {
    let visibility = arrival.visibility;
    // Messages that ask for no run go first, in one batch delete.
    let (idle, busy): (Vec<_>, Vec<_>) = messages
        .iter()
        .filter(|m| m.body().is_some() && m.receipt_handle().is_some())
        .partition(|m| !needs_run(arrival, m.body().unwrap_or_default()));
    delete_batch(queue_url, client, &idle).await?;
    for m in busy {
        if engine.cancel.is_cancelled() {
            break;
        }
        let (Some(body), Some(handle)) = (m.body(), m.receipt_handle()) else {
            continue;
        };
        let id = m.message_id().unwrap_or_default().to_string();
        // Keep the message invisible while its runs go on.
        let keeper = {
            let (client, url, handle) = (client.clone(), queue_url.to_string(), handle.to_string());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(visibility / 3).await;
                    if let Err(e) = client
                        .change_message_visibility()
                        .queue_url(&url)
                        .receipt_handle(&handle)
                        .visibility_timeout(visibility.as_secs() as i32)
                        .send()
                        .await
                    {
                        tracing::warn!(error = %sqs_error("extending visibility", e).message, "could not extend the message's visibility; will try again");
                    }
                }
            })
        };
        let handled = handle_message(engine, plan, arrival, &id, body, outcomes).await;
        keeper.abort();
        match handled {
            Ok(true) => {
                client
                    .delete_message()
                    .queue_url(queue_url)
                    .receipt_handle(handle)
                    .send()
                    .await
                    .map_err(|e| EngineError::Step(sqs_error("deleting a handled message", e)))?;
                tracing::debug!(message = %id, "message handled and deleted");
            }
            Ok(false) => {
                tracing::warn!(message = %id, "a run for this message did not succeed; the message stays in the queue and will be retried");
            }
            Err(e) => {
                tracing::warn!(message = %id, error = %e, "handling the message failed; it stays in the queue");
            }
        }
    }
    Ok(())
}

/// Does this message carry an object the arrival pattern takes (or is it one to
/// dead-letter)? Test events and objects left out need no run.
fn needs_run(arrival: &ArrivalPlan, body: &str) -> bool {
    match parse(body) {
        Parsed::TestEvent => false,
        Parsed::Malformed(_) => true,
        Parsed::Records(records) => records.iter().any(|r| {
            arrival
                .relative_key(&r.bucket, &r.key)
                .is_some_and(|k| arrival.matcher.is_match(&k))
        }),
    }
}

/// Delete handled messages in one request (SQS takes up to ten).
async fn delete_batch(
    queue_url: &str,
    client: &Client,
    messages: &[&aws_sdk_sqs::types::Message],
) -> Result<(), EngineError> {
    if messages.is_empty() {
        return Ok(());
    }
    let entries = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .set_receipt_handle(m.receipt_handle().map(str::to_string))
                .build()
                .map_err(|e| EngineError::Step(StepError::internal(e.to_string())))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let deleted = client
        .delete_message_batch()
        .queue_url(queue_url)
        .set_entries(Some(entries))
        .send()
        .await
        .map_err(|e| EngineError::Step(sqs_error("deleting handled messages", e)))?;
    for f in deleted.failed() {
        tracing::warn!(message = %f.id(), reason = %f.message().unwrap_or_default(), "a message that needed no run could not be deleted; it comes back and is deleted then");
    }
    tracing::debug!(
        messages = messages.len(),
        "messages that needed no run deleted in one batch"
    );
    Ok(())
}

/// Handle one message; true when it may be deleted.
async fn handle_message(
    engine: &Engine,
    plan: &Plan,
    arrival: &ArrivalPlan,
    id: &str,
    body: &str,
    outcomes: &mut Vec<Outcome>,
) -> Result<bool, EngineError> {
    let records = match parse(body) {
        Parsed::TestEvent => {
            tracing::info!(message = %id, "ignoring the s3:TestEvent sent when notifications were set up");
            return Ok(true);
        }
        Parsed::Malformed(reason) => {
            tracing::warn!(message = %id, reason = %reason, "dead-lettering a message that is not an S3 event");
            let stores =
                crate::engine::Stores::open(plan, &Value::Null).map_err(EngineError::Step)?;
            let dl = stores
                .dead_letter(&Value::Null)
                .map_err(EngineError::Step)?;
            let at = dl
                .write(
                    &plan.name,
                    &format!("message-{id}"),
                    "arrival",
                    0,
                    &[DeadRecord {
                        record: json!({ "body": body }),
                        reason: format!("malformed queue message: {reason}"),
                        position: json!({ "message_id": id }),
                    }],
                )
                .await
                .map_err(EngineError::Step)?;
            engine
                .notify_dead_letter(plan, &format!("a queue message that is not an S3 event notification ({reason}) was dead-lettered to {at}"))
                .await;
            return Ok(true);
        }
        Parsed::Records(r) => r,
    };
    let mut deletable = true;
    for rec in records {
        let Some(key) = arrival.relative_key(&rec.bucket, &rec.key) else {
            tracing::info!(message = %id, bucket = %rec.bucket, key = %rec.key, "ignoring an object outside the arrival store");
            continue;
        };
        if !arrival.matcher.is_match(&key) {
            continue;
        }
        let version = match (&rec.etag, rec.size) {
            (Some(e), Some(s)) => format!("\"{e}\":{s}"),
            (Some(e), None) => format!("\"{e}\""),
            _ => format!("message:{id}"),
        };
        let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key.as_str()));
        // A message delivered again after its run failed is a new attempt of it:
        // the queue's own redrive policy bounds how often.
        let sub = Submission {
            retry_failed: true,
            ..Submission::event(
                "arrival",
                format!("{key}@{version}"),
                json!({
                    "kind": "arrival", "store": arrival.store, "key": key, "prefix": prefix, "name": name,
                    "etag": rec.etag, "size": rec.size, "last_modified": rec.event_time, "message_id": id,
                }),
            )
        };
        for outcome in engine.submit_all(plan, sub).await? {
            deletable &= match &outcome {
                Outcome::Ran(r) => r.status.is_success() || r.set_aside(),
                Outcome::AlreadyDone { .. } => true,
                Outcome::NotStarted { .. }
                | Outcome::Queued { .. }
                | Outcome::AlreadyFailed { .. } => false,
            };
            outcomes.push(outcome);
        }
    }
    Ok(deletable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_events_direct_and_through_sns() {
        let direct = r#"{"Records":[{"eventName":"ObjectCreated:Put","eventTime":"2026-11-23T10:00:00Z","s3":{"bucket":{"name":"src"},"object":{"key":"run+1%2Fpipeline_success.flag","size":0,"eTag":"abc"}}}]}"#;
        let want = Parsed::Records(vec![ObjectCreated {
            bucket: "src".into(),
            key: "run 1/pipeline_success.flag".into(),
            etag: Some("abc".into()),
            size: Some(0),
            event_name: "ObjectCreated:Put".into(),
            event_time: Some("2026-11-23T10:00:00Z".into()),
        }]);
        assert_eq!(parse(direct), want);
        let sns = json!({"Type": "Notification", "Message": direct}).to_string();
        assert_eq!(parse(&sns), want);
        assert_eq!(
            parse(r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"src"}"#),
            Parsed::TestEvent
        );
        assert!(matches!(parse("{\"hello\": 1}"), Parsed::Malformed(_)));
        assert!(matches!(parse("not json"), Parsed::Malformed(_)));
        let removed = r#"{"Records":[{"eventName":"ObjectRemoved:Delete","s3":{"bucket":{"name":"src"},"object":{"key":"a"}}}]}"#;
        assert_eq!(parse(removed), Parsed::Records(vec![]));
    }
}
