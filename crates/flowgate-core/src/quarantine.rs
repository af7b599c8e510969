//! What cannot be processed is set aside, never dropped: failed input objects go
//! to a quarantine prefix with an error report beside them; bad records go to a
//! dead-letter sink as JSON lines with the reason and source position.

use bytes::Bytes;
use chrono::Utc;
use futures::StreamExt;
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::{Value, json};

use crate::error::StepError;

/// Part size of a quarantined object's upload.
const QUARANTINE_PART: usize = 8 * 1024 * 1024;
use crate::store::StoreHandle;

/// A quarantine: `store:prefix`, where failed inputs are copied with a report.
#[derive(Debug, Clone)]
pub struct Quarantine {
    pub store: StoreHandle,
    pub prefix: String,
}

impl Quarantine {
    /// Copy `source` (a key of `from`) to `<prefix>/<relative>` and write
    /// `<prefix>/<relative>.error.json` beside it. Returns where the report went.
    pub async fn object(
        &self,
        from: &StoreHandle,
        source: &str,
        relative: &str,
        reason: &StepError,
        context: &Value,
    ) -> Result<String, StepError> {
        let src = from
            .path(source)
            .map_err(|e| StepError::user(e.to_string()))?;
        // Gone meanwhile: the report alone says what became of it.
        let bytes = match from.reader().get(&src).await {
            Ok(got) => Some(
                got.into_stream()
                    .map(|c| c.map_err(StepError::from))
                    .boxed(),
            ),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        };
        self.bytes(&from.display(source), relative, bytes, reason, context)
            .await
    }

    /// Keep `bytes` (an object known as `shown`) at `<prefix>/<relative>` (its
    /// segments made safe) with `<prefix>/<relative>.error.json` beside it, also for
    /// an object no store path can name. Returns where the report went.
    pub async fn bytes(
        &self,
        shown: &str,
        relative: &str,
        bytes: Option<futures::stream::BoxStream<'static, Result<Bytes, StepError>>>,
        reason: &StepError,
        context: &Value,
    ) -> Result<String, StepError> {
        let writer = self
            .store
            .writer("the quarantine")
            .map_err(|e| StepError::user(e.to_string()))?;
        let rel = sanitize(relative);
        let dst = self
            .store
            .path(&join(&self.prefix, &rel))
            .map_err(|e| StepError::user(e.to_string()))?;
        // Streamed: a quarantined object may be gigabytes.
        if let Some(bytes) = bytes {
            crate::store::put_stream(writer, &dst, QUARANTINE_PART, bytes, |_| {}).await?;
        }
        let report_key = join(&self.prefix, &format!("{rel}.error.json"));
        let report = json!({
            "source": shown,
            "reason": reason.message,
            "class": reason.class,
            "quarantined_at": Utc::now().to_rfc3339(),
            "context": context,
        });
        let body =
            crate::secret::redact(&serde_json::to_string_pretty(&report).unwrap_or_default());
        let report_path = self
            .store
            .path(&report_key)
            .map_err(|e| StepError::user(e.to_string()))?;
        writer
            .put(&report_path, PutPayload::from_bytes(Bytes::from(body)))
            .await?;
        Ok(self.store.display(&report_key))
    }
}

/// A dead-letter sink for records: one JSON-lines object per batch.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub store: StoreHandle,
    pub prefix: String,
}

/// One record that could not be processed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadRecord {
    pub record: Value,
    pub reason: String,
    /// Where it came from: object and line, table and key, topic/partition/offset.
    pub position: Value,
}

impl DeadLetter {
    /// Write `records` as `<prefix>/<pipeline>/<run>/<step>-<batch>.jsonl` (a
    /// deterministic key, so a retried batch replaces itself). Returns the key.
    pub async fn write(
        &self,
        pipeline: &str,
        run_id: &str,
        step: &str,
        batch: u64,
        records: &[DeadRecord],
    ) -> Result<String, StepError> {
        let writer = self
            .store
            .writer("the dead-letter sink")
            .map_err(|e| StepError::user(e.to_string()))?;
        let key = join(
            &self.prefix,
            &format!("{pipeline}/{run_id}/{step}-{batch:06}.jsonl"),
        );
        let mut body = String::new();
        for r in records {
            // The record and its position exactly (they are replayed); the reason,
            // written for people, masked.
            let reason = crate::secret::redact(&r.reason);
            let line = json!({"reason": reason, "position": r.position, "record": r.record, "pipeline": pipeline, "run_id": run_id, "step": step});
            body.push_str(&line.to_string());
            body.push('\n');
        }
        let path = self
            .store
            .path(&key)
            .map_err(|e| StepError::user(e.to_string()))?;
        writer
            .put(&path, PutPayload::from_bytes(Bytes::from(body)))
            .await?;
        Ok(self.store.display(&key))
    }
}

use crate::store::join_key as join;

/// Keep a quarantined key inside the quarantine: drop `..`, `.` and empty segments.
fn sanitize(relative: &str) -> String {
    let parts: Vec<String> = relative
        .split('/')
        .filter(|s| !s.is_empty() && *s != "." && *s != "..")
        .map(|s| {
            s.chars()
                .map(|c| if c.is_control() { '_' } else { c })
                .collect()
        })
        .collect();
    if parts.is_empty() {
        "unnamed".into()
    } else {
        parts.join("/")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{Access, StoreSpec};

    fn store(url: &str, access: Access) -> StoreHandle {
        let spec = StoreSpec::at(url, access);
        StoreHandle::open("q", &spec, std::path::Path::new(".")).unwrap()
    }

    #[tokio::test]
    async fn quarantined_objects_keep_their_bytes_and_get_a_report() {
        let src = store("memory://quarantine-src", Access::ReadWrite);
        src.reader()
            .put(
                &src.path("in/a.bin").unwrap(),
                PutPayload::from_static(b"payload"),
            )
            .await
            .unwrap();
        let q = Quarantine {
            store: src.clone(),
            prefix: "failed".into(),
        };
        let err = StepError::user("cannot decode line 3");
        let report = q
            .object(&src, "in/a.bin", "in/../a.bin", &err, &json!({"run": "r1"}))
            .await
            .unwrap();
        assert_eq!(report, "q:failed/in/a.bin.error.json");
        let kept = src
            .reader()
            .get(&src.path("failed/in/a.bin").unwrap())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(&kept[..], b"payload");
        let text = src
            .reader()
            .get(&src.path("failed/in/a.bin.error.json").unwrap())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(v["reason"], "cannot decode line 3");
        assert_eq!(v["class"]["domain"], "user");
    }

    #[tokio::test]
    async fn dead_letters_are_json_lines_with_reason_and_position() {
        let dlq = DeadLetter {
            store: store("memory://dlq", Access::Write),
            prefix: "dead".into(),
        };
        let recs = vec![
            DeadRecord {
                record: json!({"id": null}),
                reason: "null key".into(),
                position: json!({"line": 2}),
            },
            DeadRecord {
                record: json!({"id": "x"}),
                reason: "bad type".into(),
                position: json!({"line": 5}),
            },
        ];
        let key = dlq.write("p", "r1", "load", 0, &recs).await.unwrap();
        assert_eq!(key, "q:dead/p/r1/load-000000.jsonl");
        let s = &dlq.store;
        let body = s
            .reader()
            .get(&s.path("dead/p/r1/load-000000.jsonl").unwrap())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let lines: Vec<Value> = String::from_utf8(body.to_vec())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["reason"], "null key");
        assert_eq!(lines[1]["position"]["line"], 5);
    }

    #[tokio::test]
    async fn a_read_only_quarantine_is_refused() {
        let src = store("memory://quarantine-ro", Access::Read);
        let q = Quarantine {
            store: src.clone(),
            prefix: "failed".into(),
        };
        let err = q
            .object(&src, "x", "x", &StepError::user("bad"), &json!({}))
            .await
            .unwrap_err();
        assert!(err.message.contains("read-only"), "{}", err.message);
    }
}
