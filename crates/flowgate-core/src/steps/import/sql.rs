//! A SQL table as an import's target: the kept records appended to it in one
//! transaction that also claims the import's row in the table's own
//! `flowgate_loaded` ledger (the load step's), so a crash either imported the
//! version and recorded it there, or did neither, and no version goes in twice.

use std::sync::Arc;

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
        object: version.to_string(),
        fingerprint: j.digest.clone(),
        superseded: Vec::new(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let batches = batches(&j.kept)?;
    tokio::spawn(async move {
        for b in batches {
            if tx.send(Ok(b)).await.is_err() {
                return;
            }
        }
    });
    match db.load(&claim, &target, &input, rx).await {
        Ok(Some(_)) => Ok(Outcome::Imported),
        Ok(None) => Ok(Outcome::AlreadyImported),
        Err(e) if !e.class.retriable && e.class.domain != crate::error::ErrorDomain::Internal => {
            Ok(Outcome::Rejected(format!("table {}.{}: {e}", t.schema, t.table)))
        }
        Err(e) => Err(e),
    }
}

/// The records as Arrow batches: nested values as their JSON text.
fn batches(records: &[Value]) -> Result<Vec<arrow::record_batch::RecordBatch>, StepError> {
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
    let schema = arrow::json::reader::infer_json_schema_from_iterator(flat.iter().map(Ok)).map_err(bad)?;
    let mut d = arrow::json::ReaderBuilder::new(Arc::new(schema))
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
