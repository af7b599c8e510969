//! The `load` step as written in a pipeline file. Doc comments are the reference
//! documentation and become descriptions in `flowgate schema`.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Load objects into a SQL table.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadSpec {
    /// Objects to load, as `store:prefix` (template): every `.jsonl[.gz|.zst]` and
    /// `.parquet` object under it that was not loaded before, in key order.
    pub from: String,
    /// The SQL store to load into.
    pub into: String,
    /// The table (created from the input's columns when missing); the objects are
    /// directly under `from`.
    #[serde(default)]
    pub table: Option<String>,
    /// Several tables instead: each folder `<name>/` under `from` loads into table
    /// `<name>` with its own key and mode, e.g.
    /// `{ dim_staff = { key = ["staff_id"] }, fact_sales_order = { mode = "append-versions", key = ["sales_order_id"], version = "source_updated_at" } }`.
    #[serde(default)]
    pub tables: Option<BTreeMap<String, TableLoadSpec>>,
    /// PostgreSQL schema (default `public`).
    #[serde(default)]
    pub schema: Option<String>,
    /// `append`, `upsert` (default), `append-versions` or `replace`.
    #[serde(default)]
    pub mode: Option<crate::sql::target::LoadMode>,
    /// Key columns (upsert, append-versions).
    #[serde(default)]
    pub key: Option<Vec<String>>,
    /// Version column (append-versions): one row per (key, version).
    #[serde(default)]
    pub version: Option<String>,
    /// Rows per batch when reading (default 65536).
    #[serde(default)]
    pub batch_rows: Option<usize>,
}

/// How one table of a multi-table load is loaded.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TableLoadSpec {
    /// `append`, `upsert` (default), `append-versions` or `replace`.
    #[serde(default)]
    pub mode: Option<crate::sql::target::LoadMode>,
    #[serde(default)]
    pub key: Option<Vec<String>>,
    #[serde(default)]
    pub version: Option<String>,
}
