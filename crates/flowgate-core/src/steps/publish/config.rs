//! The `publish` step as written in a pipeline file.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Publish the dataset this run made: check its parts are there, write
/// `_manifest.json` (every object, its size and ETag) last, then record the
/// version in the state store, which is when it becomes complete, listed and
/// `LATEST`. A run that dies before leaves a version nobody lists.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishSpec {
    /// Parts that must each hold at least one object, e.g. `["1b", "2b", "3b"]`.
    #[serde(default)]
    pub parts: Vec<String>,
}
