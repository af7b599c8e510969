//! `extract`: SQL tables → one object per table per run (JSON lines or Parquet).
//!
//! Each table has a keyset watermark: the (cursor, key) of the last row
//! extracted, at full precision (as text from the database itself). A run reads
//! rows up to the table's largest cursor at its start, after the watermark — or,
//! with a look-back, from that far before it, skipping rows it already emitted
//! (remembered by fingerprint). The watermark moves only after the object is
//! complete in the store; a crash before that re-extracts the same rows, which
//! the load deduplicates by key.

use std::collections::HashSet;

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::engine::{StepContext, StepOutput};
use crate::error::StepError;
use crate::formats::{Format, LazyWriter};
use crate::plan::ExtractPlan;
use crate::sql::{SqlSource, Window};
use crate::state::StepReport;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Watermark {
    cursor: String,
    key: Vec<String>,
    /// Fingerprints of rows in the look-back window, already extracted.
    #[serde(default)]
    recent: Vec<String>,
    /// The table's columns when this position was taken, to notice new ones.
    #[serde(default)]
    columns: Vec<String>,
}

fn fingerprint(cursor: &str, keys: &[&str]) -> String {
    let mut h = Sha256::new();
    for k in keys {
        h.update(k.as_bytes());
        h.update([0x1f]);
    }
    h.update([0x1e]);
    h.update(cursor.as_bytes());
    hex::encode(&h.finalize()[..8])
}

pub async fn run(ctx: &StepContext<'_>, plan: &ExtractPlan) -> Result<StepOutput, StepError> {
    let spec = ctx
        .plan
        .stores
        .get(&plan.from)
        .ok_or_else(|| StepError::internal(format!("store `{}`", plan.from)))?;
    let src = SqlSource::open(&spec.url, &ctx.plan.dir).map_err(StepError::user)?;
    let dst = ctx.stores.get(&plan.to.store)?;
    let writer_store = dst
        .writer(&format!("step `{}`", ctx.step.id))
        .map_err(|e| StepError::user(e.to_string()))?
        .clone();
    let tables = match &plan.tables {
        Some(list) => list.clone(),
        None => src.tables(&plan.schema).await?,
    };
    let mut report = StepReport::default();
    for table in tables {
        if ctx.cancel.is_cancelled() {
            return Err(StepError::external("interrupted between tables"));
        }
        let one = extract_table(ctx, plan, &src, dst, &writer_store, &table)
            .await
            .map_err(|e| e.context(format!("table `{table}`")))?;
        report.rows_in += one.rows_in;
        report.rows_out += one.rows_out;
        report.objects_out += one.objects_out;
        report.bytes_out += one.bytes_out;
        report.notes.extend(one.notes);
        // The warehouse is as fresh as its stalest table.
        report.newest_change = match (report.newest_change, one.newest_change) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    Ok(StepOutput::from(report))
}

async fn extract_table(
    ctx: &StepContext<'_>,
    plan: &ExtractPlan,
    src: &SqlSource,
    dst: &crate::store::StoreHandle,
    store: &std::sync::Arc<dyn object_store::ObjectStore>,
    table: &str,
) -> Result<StepReport, StepError> {
    let mut report = StepReport::default();
    let info = src.describe(&plan.schema, table).await?;
    let key = plan.key.clone().unwrap_or_else(|| info.primary_key.clone());
    if key.is_empty() {
        return Err(StepError::user(
            "it has no primary key; set `key = [\"col\", …]` on the extract step",
        ));
    }
    for c in std::iter::once(&plan.cursor).chain(&key) {
        if !info.columns.iter().any(|col| &col.name == c) {
            let names: Vec<&str> = info.columns.iter().map(|c| c.name.as_str()).collect();
            return Err(StepError::user(format!(
                "no column `{c}`; its columns are: {}",
                names.join(", ")
            )));
        }
    }
    let columns: Vec<String> = info.columns.iter().map(|c| c.name.clone()).collect();
    let wm_name = format!("{}/{}", ctx.step.id, table);
    let old: Option<Watermark> = match ctx.state.get_watermark(&ctx.plan.name, &wm_name).await? {
        Some(v) => Some(
            serde_json::from_value(v)
                .map_err(|e| StepError::internal(format!("watermark: {e}")))?,
        ),
        None => None,
    };
    // A table with nothing new is current as of when it was read.
    let read_at = chrono::Utc::now();
    let recent_old: HashSet<String> = old
        .as_ref()
        .map(|w| w.recent.iter().cloned().collect())
        .unwrap_or_default();
    let window = Window {
        cursor: plan.cursor.clone(),
        key: key.clone(),
        after: old.as_ref().map(|w| (w.cursor.clone(), w.key.clone())),
        lookback: plan.lookback,
    };

    let mut tctx = ctx.template.clone();
    if let Value::Object(m) = &mut tctx {
        m.insert("table".into(), Value::String(table.to_string()));
    }
    let key_path = crate::template::render(&plan.to.prefix, &tctx).map_err(StepError::user)?;
    let format = plan
        .format
        .or_else(|| Format::from_key(&key_path))
        .unwrap_or(Format::Jsonl);
    let path = dst.path(&key_path).map_err(StepError::user)?;
    let data_cols = info.columns.len();
    let nkeys = key.len();

    let (tx, mut rx) = mpsc::channel::<Result<RecordBatch, StepError>>(4);
    // The reader decodes on its own task while this one encodes.
    let mut reader = {
        let (src, schema, info, window) = (
            src.clone(),
            plan.schema.clone(),
            info.clone(),
            window.clone(),
        );
        let (batch_rows, parallel) = (plan.batch_rows, plan.parallel);
        // In a set: dropped with this step (cancelled, timed out), it stops too.
        let mut set = tokio::task::JoinSet::new();
        set.spawn(async move {
            src.read(&schema, &info, &window, batch_rows, parallel, tx)
                .await
        });
        set
    };
    let lookback = plan.lookback.is_some();
    let consume = async {
        let mut writer = LazyWriter::new(store.clone(), path.clone(), format, PART_SIZE);
        let mut recent_new: Vec<String> = Vec::new();
        let result: Result<(), StepError> = async {
            while let Some(batch) = rx.recv().await {
                let batch = batch?;
                report.rows_in += batch.num_rows() as u64;
                // Only a look-back needs fingerprints, and only of rows that came
                // with their cursor and key as text.
                if !lookback {
                    writer.write(&batch).await?;
                    continue;
                }
                let cursor = batch.column(data_cols).as_string::<i32>();
                let keys: Vec<_> = (0..nkeys)
                    .map(|i| batch.column(data_cols + 1 + i).as_string::<i32>())
                    .collect();
                let in_window = batch.column(data_cols + 1 + nkeys).as_boolean();
                let data = batch
                    .project(&(0..data_cols).collect::<Vec<_>>())
                    .map_err(|e| StepError::internal(e.to_string()))?;
                if cursor.null_count() == cursor.len() {
                    writer.write(&data).await?;
                    continue;
                }
                let mut keep = Vec::with_capacity(batch.num_rows());
                for row in 0..batch.num_rows() {
                    if cursor.is_null(row) {
                        keep.push(true);
                        continue;
                    }
                    let kv: Vec<&str> = keys.iter().map(|k| k.value(row)).collect();
                    let fp = fingerprint(cursor.value(row), &kv);
                    keep.push(!recent_old.contains(&fp));
                    if in_window.is_valid(row) && in_window.value(row) {
                        recent_new.push(fp);
                    }
                }
                let data = filter_record_batch(&data, &BooleanArray::from(keep))
                    .map_err(|e| StepError::internal(e.to_string()))?;
                writer.write(&data).await?;
            }
            Ok(())
        }
        .await;
        (result, writer, recent_new)
    };
    let (read_result, (consume_result, writer, recent_new)) =
        tokio::join!(reader.join_next(), consume);
    let read_result = match read_result {
        Some(Ok(r)) => r,
        Some(Err(e)) => Err(StepError::internal(format!("reader task: {e}"))),
        None => Err(StepError::internal("reader task missing")),
    };
    let end = match consume_result.and(read_result) {
        Ok(end) => end,
        Err(e) => {
            writer.abort().await;
            return Err(e);
        }
    };
    let Some(top) = end.top else {
        report.notes.push(format!("`{table}` is empty"));
        report.newest_change = Some(read_at);
        return Ok(report);
    };
    // Every row up to the table's newest position was read (same snapshot).
    let last = (report.rows_in > 0).then_some(top);
    if let Some((rows, bytes)) = writer.finish().await? {
        report.rows_out = rows;
        report.bytes_out = bytes;
        report.objects_out = 1;
        let over = match end.streams {
            n if n > 1 => format!(" (read over {n} connections)"),
            _ => String::new(),
        };
        report.notes.push(format!(
            "`{table}`: {} rows → {}{over}",
            report.rows_out,
            dst.display(&key_path)
        ));
    } else {
        report
            .notes
            .push(format!("`{table}`: no changes, no object written"));
    }
    // A source that grew columns: they are kept in landing; say so.
    if let Some(old) = &old
        && !old.columns.is_empty()
    {
        let added: Vec<&String> = columns
            .iter()
            .filter(|c| !old.columns.contains(c))
            .collect();
        for c in added {
            tracing::warn!(table, column = %c, "the source table has a new column; it is kept in landing");
            report.notes.push(format!("warning: `{table}` has a new column `{c}` (kept in landing; models that do not select it are unaffected)"));
        }
    }
    // What the position covers after this run, as a time (for freshness).
    let covered = last
        .as_ref()
        .map(|l| l.0.as_str())
        .or(old.as_ref().map(|w| w.cursor.as_str()));
    report.newest_change = if report.objects_out == 0 {
        Some(read_at)
    } else {
        covered.and_then(crate::sql::parse_source_timestamp)
    };
    // The object is complete: only now does the position move.
    if let Some((cursor, key)) = last {
        let wm = Watermark {
            cursor,
            key,
            recent: recent_new,
            columns: columns.clone(),
        };
        let value = serde_json::to_value(&wm).map_err(|e| StepError::internal(e.to_string()))?;
        ctx.state
            .set_watermark(&ctx.plan.name, &wm_name, &value)
            .await?;
    }
    Ok(report)
}

/// Multipart part size of extracted objects (S3's minimum is 5 MiB).
const PART_SIZE: usize = 16 << 20;
