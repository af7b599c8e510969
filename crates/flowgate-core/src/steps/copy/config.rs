//! The `copy` step as written in a pipeline file. Doc comments are the reference
//! documentation and become descriptions in `flowgate schema`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Copy objects from one store location to another.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CopySpec {
    /// Source as `store:prefix` (template), e.g. `"landing:{{ trigger.prefix }}"`.
    pub from: String,
    /// Destination as `store:prefix` (template). Relative keys under `from` are kept.
    pub to: String,
    /// Globs over relative keys to copy (default: everything).
    #[serde(default)]
    pub include: Vec<String>,
    /// Globs over relative keys to leave out, e.g. `["pipeline_success.flag"]`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Name of the manifest written last under the destination prefix
    /// (default `_manifest.json`; `""` for none).
    #[serde(default)]
    pub manifest: Option<String>,
    /// How each copied object is checked: `sha256` (read back and hash, default) or `size`.
    #[serde(default)]
    pub verify: Option<Verify>,
    /// Objects copied at once (default 8).
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Part size of multipart uploads, e.g. `"16MiB"` (default 10 MiB); also bounds memory.
    #[serde(default)]
    pub part_size: Option<String>,
    /// Decrypt age-encrypted objects while copying them.
    #[serde(default)]
    pub decrypt: Option<DecryptSpec>,
}

/// age decryption of copied objects (a trailing `.age` is dropped from their keys).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DecryptSpec {
    /// The age identity (`AGE-SECRET-KEY-1…`), from a secret: `"${secret:EGRESS_AGE_KEY}"`.
    pub age_identity: String,
    /// Decrypt only when this expression is true, e.g. `"route.decrypt"` (default: always).
    #[serde(default)]
    pub when: Option<String>,
}

/// How a copied object is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    Sha256,
    Size,
}
