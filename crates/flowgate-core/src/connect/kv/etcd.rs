//! etcd's KV through the HTTP/JSON gateway of its v3 API (`/v3/kv/range`,
//! `/v3/kv/put`, `/v3/watch`), served by etcd itself on its client URL. Keys and
//! values travel base64-encoded; 64-bit numbers as JSON strings. etcd keeps a
//! key's history until it is compacted: a watch from a compacted revision is
//! cancelled with the compaction's revision, and only the current value is known.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::{History, KvEntry, KvError, KvStore, status_error, unavailable};

pub(super) struct Etcd {
    client: reqwest::Client,
    base: String,
    /// The store's URL, as its pipeline file names it.
    url: String,
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default)]
    revision: Option<String>,
}

#[derive(Deserialize)]
struct Kv {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    mod_revision: Option<String>,
}

#[derive(Deserialize)]
struct RangeResponse {
    #[serde(default)]
    kvs: Vec<Kv>,
}

#[derive(Deserialize)]
struct PutResponse {
    #[serde(default)]
    header: Header,
}

#[derive(Deserialize)]
struct WatchLine {
    result: Option<WatchResult>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct WatchResult {
    #[serde(default)]
    events: Vec<Event>,
    #[serde(default)]
    compact_revision: Option<String>,
    #[serde(default)]
    canceled: bool,
}

#[derive(Deserialize)]
struct Event {
    /// `PUT` is omitted (the enum's zero value); `DELETE` is spelled out.
    #[serde(default, rename = "type")]
    kind: Option<String>,
    kv: Kv,
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn num(s: Option<&String>) -> i64 {
    s.and_then(|s| s.parse().ok()).unwrap_or(0)
}

impl Etcd {
    pub(super) fn new(client: reqwest::Client, base: String, url: String) -> Self {
        Etcd { client, base, url }
    }

    fn protocol(&self, message: impl Into<String>) -> KvError {
        KvError::Protocol {
            store: self.base.clone(),
            message: message.into(),
        }
    }

    async fn call(&self, path: &str, body: serde_json::Value) -> Result<String, KvError> {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .timeout(Duration::from_secs(30))
            .json(&body)
            .send()
            .await
            .map_err(|e| unavailable(&self.base, &e))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| unavailable(&self.base, &e))?;
        if !status.is_success() {
            return Err(status_error(&self.base, status, &text));
        }
        Ok(text)
    }

    fn decode(&self, kv: Kv) -> Result<KvEntry, KvError> {
        let text = |what: &str, v: &str| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|e| self.protocol(format!("{what} is not base64: {e}")))?;
            String::from_utf8(bytes).map_err(|_| self.protocol(format!("{what} is not UTF-8 text")))
        };
        let key = text("a key", &kv.key)?;
        let value = text("a value", kv.value.as_deref().unwrap_or_default())?;
        Ok(KvEntry {
            key,
            value,
            updated_at: None,
            revision: num(kv.mod_revision.as_ref()),
        })
    }

    /// Watch `key` from revision `from`; each change (deletes left out) is
    /// handed to `each` until it returns false or `timeout` passes. `Err(Some(c))`
    /// from the inner result: the revisions before `c` were compacted away.
    async fn watch(
        &self,
        key: &str,
        from: i64,
        timeout: Duration,
        mut each: impl FnMut(KvEntry) -> bool,
    ) -> Result<Result<(), i64>, KvError> {
        let body = json!({"create_request": {"key": b64(key), "start_revision": from.to_string()}});
        let resp = self
            .client
            .post(format!("{}/v3/watch", self.base))
            .json(&body)
            .send()
            .await
            .map_err(|e| unavailable(&self.base, &e))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            return Err(status_error(&self.base, status, &text));
        }
        let mut stream = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let chunk = match tokio::time::timeout_at(deadline, stream.next()).await {
                Err(_) => return Ok(Ok(())),
                Ok(None) => return Err(self.protocol("the watch stream ended")),
                Ok(Some(c)) => c.map_err(|e| unavailable(&self.base, &e))?,
            };
            buf.extend_from_slice(&chunk);
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let parsed: WatchLine = serde_json::from_slice(&line)
                    .map_err(|e| self.protocol(format!("a watch answer: {e}")))?;
                if let Some(err) = parsed.error {
                    return Err(self.protocol(format!("the watch failed: {err}")));
                }
                let Some(r) = parsed.result else { continue };
                if let Some(c) = r
                    .compact_revision
                    .as_ref()
                    .map(|c| num(Some(c)))
                    .filter(|c| *c > 0)
                {
                    return Ok(Err(c));
                }
                if r.canceled {
                    return Err(self.protocol("the watch was cancelled by the server"));
                }
                for ev in r.events {
                    if ev.kind.as_deref() == Some("DELETE") {
                        continue;
                    }
                    if !each(self.decode(ev.kv)?) {
                        return Ok(Ok(()));
                    }
                }
            }
        }
    }
}

#[async_trait]
impl KvStore for Etcd {
    fn describe(&self) -> String {
        self.url.clone()
    }

    async fn get(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        let text = self.call("/v3/kv/range", json!({"key": b64(key)})).await?;
        let r: RangeResponse = serde_json::from_str(&text)
            .map_err(|e| self.protocol(format!("a range answer: {e}")))?;
        r.kvs
            .into_iter()
            .next()
            .map(|kv| self.decode(kv))
            .transpose()
    }

    async fn set(&self, key: &str, value: &str) -> Result<i64, KvError> {
        let text = self
            .call("/v3/kv/put", json!({"key": b64(key), "value": b64(value)}))
            .await?;
        let r: PutResponse =
            serde_json::from_str(&text).map_err(|e| self.protocol(format!("a put answer: {e}")))?;
        match num(r.header.revision.as_ref()) {
            0 => Err(self.protocol("a put answer without a revision")),
            rev => Ok(rev),
        }
    }

    async fn history(&self, key: &str, after: i64) -> Result<History, KvError> {
        let Some(current) = self.get(key).await? else {
            return Ok(History::Complete(Vec::new()));
        };
        if current.revision == after {
            return Ok(History::Complete(Vec::new()));
        }
        if current.revision < after {
            // A new cluster: revisions started over.
            return Ok(History::CurrentOnly(Some(current)));
        }
        let newest = current.revision;
        let mut seen = Vec::new();
        let got = self
            .watch(key, after + 1, Duration::from_secs(30), |e| {
                let last = e.revision >= newest;
                seen.push(e);
                !last
            })
            .await?;
        match got {
            Err(_compacted) => Ok(History::CurrentOnly(Some(current))),
            Ok(()) if seen.last().is_some_and(|e| e.revision >= newest) => {
                Ok(History::Complete(seen))
            }
            Ok(()) => Err(self.protocol(format!(
                "the watch of `{key}` from revision {} did not reach revision {newest} in 30 s",
                after + 1
            ))),
        }
    }

    async fn wait(
        &self,
        key: &str,
        after: i64,
        timeout: Duration,
    ) -> Result<Option<KvEntry>, KvError> {
        let mut first = None;
        let got = self
            .watch(key, after + 1, timeout, |e| {
                first = Some(e);
                false
            })
            .await?;
        match got {
            // Compacted past `after`: what is there now is the change.
            Err(_) => self.get(key).await,
            Ok(()) => Ok(first),
        }
    }
}
