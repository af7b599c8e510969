//! The `test` step as written in a pipeline file.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Check a sample of records (every JSON-lines or CSV file under a location, in
/// key order, then line order) with built-in checks; the results go to a
/// location as `results.json` and `junit.xml`, and into the run record. A
/// failed check of severity `error` fails the step; `warn` only says so.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestSpec {
    /// The records: `"dataset:PART"` (a part of the run's dataset) or
    /// `"store:prefix"` (templates).
    pub data: String,
    /// How many records, from the first: a number or `all` (a template, e.g.
    /// `"{{ params.sample }}"`; default `all`).
    #[serde(default)]
    pub sample: Option<String>,
    /// Where the results go: `"store:prefix"` (a template), e.g.
    /// `"bucket:{{ params.tenant }}/test_results/{{ dataset.version }}/{{ run.started | strftime('%Y%m%d_%H%M%S') }}_utc"`.
    pub results: String,
    /// The checks, each one kind.
    pub checks: Vec<CheckSpec>,
}

/// One check: exactly one of its kinds.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckSpec {
    /// Its name in the results (default: what it checks).
    #[serde(default)]
    pub name: Option<String>,
    /// `error` (default: a failure fails the run) or `warn`.
    #[serde(default)]
    pub severity: Option<Severity>,
    /// The sample holds at least `min` (default 1) and at most `max` records.
    #[serde(default)]
    pub row_count: Option<RowCount>,
    /// This field is present and not null in every record.
    #[serde(default)]
    pub not_null: Option<String>,
    /// No two records have the same value of this field.
    #[serde(default)]
    pub unique: Option<String>,
    /// This field takes only these values (nulls are the `not_null` check's).
    #[serde(default)]
    pub accepted_values: Option<AcceptedValues>,
    /// Every record has these fields (the schema).
    #[serde(default)]
    pub columns: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    #[default]
    Error,
    Warn,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RowCount {
    #[serde(default)]
    pub min: Option<u64>,
    #[serde(default)]
    pub max: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptedValues {
    pub column: String,
    /// Values as in the records (a CSV's are strings).
    pub values: Vec<serde_json::Value>,
}
