//! Consul's KV over its HTTP API: blocking queries on `X-Consul-Index` with
//! `wait`, the ACL token in `X-Consul-Token`. Consul keeps no history of a key.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use serde::Deserialize;

use super::{History, KvEntry, KvError, KvStore, status_error, unavailable};

pub(super) struct Consul {
    client: reqwest::Client,
    base: String,
    /// The store's URL, as its pipeline file names it.
    url: String,
    token: Option<String>,
}

/// One entry of `GET /v1/kv/KEY`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    key: String,
    value: Option<String>,
    modify_index: u64,
}

impl Consul {
    pub(super) fn new(
        client: reqwest::Client,
        base: String,
        url: String,
        token: Option<String>,
    ) -> Self {
        Consul {
            client,
            base,
            url,
            token,
        }
    }

    fn url(&self, key: &str) -> String {
        let key = percent_encoding::utf8_percent_encode(key.trim_start_matches('/'), &KEY_SET);
        format!("{}/v1/kv/{key}", self.base)
    }

    fn request(&self, method: reqwest::Method, key: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, self.url(key));
        match &self.token {
            Some(t) => r.header("X-Consul-Token", t),
            None => r,
        }
    }

    /// `GET` the key, blocking while its index is `index` for up to `wait`.
    /// Returns the entry and the `X-Consul-Index` of the answer.
    async fn read(
        &self,
        key: &str,
        index: Option<u64>,
        wait: Option<Duration>,
    ) -> Result<(Option<KvEntry>, u64), KvError> {
        let mut r = self.request(reqwest::Method::GET, key);
        if let (Some(i), Some(w)) = (index, wait) {
            r = r
                .query(&[
                    ("index", i.to_string()),
                    ("wait", format!("{}s", w.as_secs().max(1))),
                ])
                .timeout(w + w / 16 + Duration::from_secs(5));
        } else {
            r = r.timeout(Duration::from_secs(30));
        }
        let resp = r.send().await.map_err(|e| unavailable(&self.base, &e))?;
        let index = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok((None, index));
        }
        let body = resp.text().await.map_err(|e| unavailable(&self.base, &e))?;
        if !status.is_success() {
            return Err(status_error(&self.base, status, &body));
        }
        let entries: Vec<Entry> = serde_json::from_str(&body).map_err(|e| KvError::Protocol {
            store: self.base.clone(),
            message: format!("{e}"),
        })?;
        let entry = entries
            .into_iter()
            .find(|e| e.key == key.trim_start_matches('/'));
        let entry = entry.map(|e| self.decode(e)).transpose()?;
        Ok((entry, index))
    }

    fn decode(&self, e: Entry) -> Result<KvEntry, KvError> {
        let bytes = match e.value {
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|err| KvError::Protocol {
                    store: self.base.clone(),
                    message: format!("value of `{}` is not base64: {err}", e.key),
                })?,
            None => Vec::new(),
        };
        let value = String::from_utf8(bytes).map_err(|_| KvError::Protocol {
            store: self.base.clone(),
            message: format!("value of `{}` is not UTF-8 text", e.key),
        })?;
        Ok(KvEntry {
            key: e.key,
            value,
            updated_at: None,
            revision: i64::try_from(e.modify_index).unwrap_or(i64::MAX),
        })
    }
}

/// Characters escaped in a key's URL path: everything but unreserved ones and `/`.
const KEY_SET: percent_encoding::AsciiSet = percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

#[async_trait]
impl KvStore for Consul {
    fn describe(&self) -> String {
        self.url.clone()
    }

    async fn get(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        Ok(self.read(key, None, None).await?.0)
    }

    async fn set(&self, key: &str, value: &str) -> Result<i64, KvError> {
        let resp = self
            .request(reqwest::Method::PUT, key)
            .timeout(Duration::from_secs(30))
            .body(value.to_string())
            .send()
            .await
            .map_err(|e| unavailable(&self.base, &e))?;
        let status = resp.status();
        let body = resp.text().await.map_err(|e| unavailable(&self.base, &e))?;
        if !status.is_success() || body.trim() != "true" {
            return Err(status_error(&self.base, status, &body));
        }
        // The change's index: read back (a later writer may have moved it on;
        // its index is then the one reported).
        match self.get(key).await? {
            Some(e) => Ok(e.revision),
            None => Err(KvError::Protocol {
                store: self.base.clone(),
                message: format!("`{key}` was set but reads back as missing"),
            }),
        }
    }

    async fn history(&self, key: &str, after: i64) -> Result<History, KvError> {
        let current = self.get(key).await?;
        Ok(match current {
            None => History::Complete(Vec::new()),
            Some(e) if e.revision == after => History::Complete(Vec::new()),
            // A larger index: changed, values in between unknown; a smaller
            // one: Consul's data started over.
            other => History::CurrentOnly(other),
        })
    }

    async fn wait(
        &self,
        key: &str,
        after: i64,
        timeout: Duration,
    ) -> Result<Option<KvEntry>, KvError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // The index to block on: the answer's own index, per Consul's rules
        // (start at the current one; reset to 0 when it goes backwards).
        let (mut entry, mut index) = self.read(key, None, None).await?;
        loop {
            if let Some(e) = entry.as_ref().filter(|e| e.revision != after) {
                // A smaller index than `after` means Consul's data started over.
                return Ok(Some(e.clone()));
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let (e, next) = self.read(key, Some(index.max(1)), Some(left)).await?;
            index = if next < index { 0 } else { next };
            entry = e;
        }
    }
}
