//! The `deliver` step as written in a pipeline file. Doc comments are the reference
//! documentation and become descriptions in `flowgate schema`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Send each object under a prefix to a recipient over HTTPS, removing it after a 2xx.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliverSpec {
    /// Objects to send, as `store:prefix` (template), e.g. an outbox folder.
    pub from: String,
    /// Name of a `[recipients]` entry (template), e.g. `"{{ route.recipient_name }}"`.
    pub recipient: String,
    /// Attempts per object before it is quarantined (default 5).
    #[serde(default)]
    pub attempts: Option<u32>,
    /// Backoff between attempts, `min..max` (default `1s..30s`).
    #[serde(default)]
    pub backoff: Option<String>,
    /// Objects sent at once (default 4).
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Extra request headers (values may be secrets).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}
