//! The `extract` step as written in a pipeline file. Doc comments are the reference
//! documentation and become descriptions in `flowgate schema`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Extract SQL tables into one object per table per run, by keyset watermark.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtractSpec {
    /// The SQL store to read (`postgres://…` or `sqlite://…`).
    pub from: String,
    /// Tables to extract: a list, or `"*"` for every table of the schema.
    pub tables: Tables,
    /// PostgreSQL schema (default `public`).
    #[serde(default)]
    pub schema: Option<String>,
    /// Cursor column of the watermark, e.g. `"last_updated"`; the position is the
    /// largest (cursor, key), kept at full precision.
    pub cursor: String,
    /// Key columns (default: the table's primary key).
    #[serde(default)]
    pub key: Option<Vec<String>>,
    /// Re-read this far before the watermark to catch rows committed late, e.g. `"5m"`
    /// (timestamp cursors only). Rows already extracted are not written again.
    #[serde(default)]
    pub lookback: Option<String>,
    /// Where each table's object goes, as `store:key` (template; `{{ table }}` is the
    /// table), e.g. `"landing:{{ table }}/{{ run.started | strftime('%Y/%m/%d/%H%M%S') }}.jsonl"`.
    pub to: String,
    /// `jsonl`, `jsonl.gz`, `jsonl.zst` or `parquet` (default: from the key's extension).
    #[serde(default)]
    pub format: Option<crate::formats::Format>,
    /// Rows per batch (default 65536).
    #[serde(default)]
    pub batch_rows: Option<usize>,
    /// Rows whose cursor is NULL have no position: `always` (default) extracts them
    /// on every run (the load's upsert absorbs the repeats), `snapshot` only on the
    /// first run (later ones count them in a note), `error` fails the step while
    /// any exist. They are never skipped without a word.
    #[serde(default)]
    pub nulls: Option<NullCursors>,
    /// PostgreSQL: connections a large first read (a snapshot) is split over, each
    /// reading a range of the table's pages in the same database snapshot
    /// (default: the number of CPUs, at most 4; 1 reads over one connection).
    #[serde(default)]
    pub parallel: Option<usize>,
}

/// What an extract does with rows whose cursor is NULL.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NullCursors {
    /// Extract them on every run.
    #[default]
    Always,
    /// Extract them with the first (full) snapshot only; later runs count them.
    Snapshot,
    /// Fail the step while any exist.
    Error,
}

/// A list of tables or `"*"`.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Tables {
    All(String),
    List(Vec<String>),
}
