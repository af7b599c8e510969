//! The `transform` step as written in a pipeline file. Doc comments are the reference
//! documentation and become descriptions in `flowgate schema`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// SQL models (DataFusion) over landed data.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TransformSpec {
    /// Directory of `.sql` models, one per output table (relative to the pipeline file).
    pub models: String,
    /// Landed data as `store:prefix`: each folder under it is a table `<name>` (all
    /// its objects) and `<name>_new` (objects this step has not consumed yet).
    pub inputs: String,
    /// Where each model's result goes, as `store:key` (template; `{{ model }}` is the
    /// model), e.g. `"processed:{{ model }}/{{ run.id }}.parquet"`.
    pub to: String,
    /// Read only objects landed within this long, e.g. `"30d"` (default: all of
    /// them, every run). Bounds each run's work as landing grows; models then see
    /// recent history only: a dimension built from `<table>` updates the keys that
    /// changed within it (its upsert keeps the others in the warehouse), and a
    /// join to a row older than that finds nothing. Older objects are never read
    /// again, so landing can expire them (an S3 lifecycle rule).
    #[serde(default)]
    pub history: Option<String>,
}
