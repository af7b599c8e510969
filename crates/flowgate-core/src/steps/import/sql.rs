//! A SQL table as an import's target: the kept records appended to it in one
//! transaction that also claims the import's row in the table's own
//! `flowgate_loaded` ledger (the load step's), so a crash either imported the
//! version and recorded it there, or did neither, and no version goes in twice.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;

use serde_json::Value;

use super::Outcome;
use super::journal::Journal;
use crate::error::StepError;
use crate::sql::SqlSource;
use crate::sql::target::{Input, LoadClaim, LoadMode, LoadTarget};
use crate::steps::context::StepContext;

/// Where a SQL target puts a journal.
#[derive(Debug, Clone)]
pub struct SqlTarget {
    pub store: String,
    pub schema: String,
    pub table: String,
}

/// Rows per batch handed to the database.
const BATCH: usize = 8192;

/// Import `j` as `version` into `t`. A table that refuses the rows (a
/// constraint, a type) rejects the journal; a database that cannot be reached
/// is tried again.
pub(super) async fn import(
    ctx: &StepContext<'_>,
    name: &str,
    t: &SqlTarget,
    version: &str,
    j: &Journal,
) -> Result<Outcome, StepError> {
    match load(ctx, name, t, version, &j.digest, &j.kept, None).await {
        Ok(true) => Ok(Outcome::Imported),
        Ok(false) => Ok(Outcome::AlreadyImported),
        Err(e) if !e.class.retriable && e.class.domain != crate::error::ErrorDomain::Internal => {
            Ok(Outcome::Rejected(format!("table {}.{}: {e}", t.schema, t.table)))
        }
        Err(e) => Err(e),
    }
}

/// Append `records` to `t` as `object` (once: a second append of the same
/// object loads nothing).
pub(super) async fn append(
    ctx: &StepContext<'_>,
    name: &str,
    t: &SqlTarget,
    object: &str,
    records: &[Value],
) -> Result<(), StepError> {
    load(ctx, name, t, object, object, records, Some(audit_schema())).await.map(|_| ())
}

/// The audit table's columns: fixed, so a column null in one attempt's rows
/// (a reason, counts of a journal not read) keeps its type.
fn audit_schema() -> SchemaRef {
    use arrow::datatypes::{DataType, Field, Schema};
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    let int = |n: &str| Field::new(n, DataType::Int64, true);
    Arc::new(Schema::new(vec![
        text("time"),
        text("pipeline"),
        text("env"),
        text("version"),
        text("target"),
        text("journal"),
        text("kinds_kept"),
        int("records_in"),
        int("records_out"),
        text("outcome"),
        text("reason"),
        text("failed_at"),
        text("run_id"),
    ]))
}

/// Load `records` into `t` as `object` in one transaction with its ledger row;
/// `false` when the object was loaded before.
async fn load(
    ctx: &StepContext<'_>,
    name: &str,
    t: &SqlTarget,
    object: &str,
    fingerprint: &str,
    records: &[Value],
    schema: Option<SchemaRef>,
) -> Result<bool, StepError> {
    let spec = ctx
        .plan
        .stores
        .get(&t.store)
        .ok_or_else(|| StepError::internal(format!("store `{}`", t.store)))?;
    let db = SqlSource::open(&spec.url, &ctx.plan.dir).map_err(StepError::user)?;
    let claim = LoadClaim {
        pipeline: ctx.plan.name.clone(),
        step: format!("{}/{name}", ctx.step.id),
        lane: ctx.fence().lease.clone(),
        token: ctx.fence().token,
    };
    let target = LoadTarget {
        schema: t.schema.clone(),
        table: t.table.clone(),
        mode: LoadMode::Append,
        key: Vec::new(),
        version: None,
    };
    let input = Input {
        object: object.to_string(),
        fingerprint: fingerprint.to_string(),
        superseded: Vec::new(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let batches = batches(records, schema)?;
    tokio::spawn(async move {
        for b in batches {
            if tx.send(Ok(b)).await.is_err() {
                return;
            }
        }
    });
    Ok(db.load(&claim, &target, &input, rx).await?.is_some())
}

/// The records as Arrow batches: nested values as their JSON text; the schema
/// inferred unless given.
fn batches(
    records: &[Value],
    schema: Option<SchemaRef>,
) -> Result<Vec<arrow::record_batch::RecordBatch>, StepError> {
    let flat: Vec<Value> = records
        .iter()
        .map(|r| match r {
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, v)| {
                        let v = match v {
                            Value::Object(_) | Value::Array(_) => Value::String(v.to_string()),
                            v => v.clone(),
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            ),
            v => v.clone(),
        })
        .collect();
    let bad = |e: arrow::error::ArrowError| StepError::user(format!("the journal's records as rows: {e}"));
    let schema = match schema {
        Some(s) => s,
        None => Arc::new(
            arrow::json::reader::infer_json_schema_from_iterator(flat.iter().map(Ok)).map_err(bad)?,
        ),
    };
    let mut d = arrow::json::ReaderBuilder::new(schema)
        .with_batch_size(BATCH)
        .build_decoder()
        .map_err(bad)?;
    let mut out = Vec::new();
    for chunk in flat.chunks(BATCH) {
        d.serialize(chunk).map_err(bad)?;
        if let Some(b) = d.flush().map_err(bad)? {
            out.push(b);
        }
    }
    Ok(out)
}
