//! `extract`: SQL tables → one object per table per run (JSON lines or Parquet).
//!
//! Each table has a keyset watermark: the (cursor, key) of the last row
//! extracted, at full precision (as text from the database itself). A run reads
//! rows up to the table's largest cursor at its start, after the watermark — or,
//! with a look-back, from that far before it, skipping rows it already emitted
//! (remembered by fingerprint). The watermark moves only after the object is
//! complete in the store; a crash before that re-extracts the same rows, which
//! the load deduplicates by key.

pub mod config;
pub mod plan;

use std::collections::HashSet;

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::error::StepError;
use crate::formats::{Format, LazyWriter};
use crate::plan::{ExtractPlan, NullCursors};
use crate::sql::{SqlSource, Window};
use crate::state::StepReport;
use crate::steps::context::{StepContext, StepOutput};

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

/// What identifies one version of a row: its cursor, its key and its content
/// (a second update that leaves the cursor as it was is a new version).
fn fingerprint(cursor: &str, keys: &[&str], content: &[u8]) -> String {
    let mut h = Sha256::new();
    for k in keys {
        h.update(k.as_bytes());
        h.update([0x1f]);
    }
    h.update([0x1e]);
    h.update(cursor.as_bytes());
    h.update([0x1d]);
    h.update(content);
    hex::encode(&h.finalize()[..8])
}

/// The content of row `row` of `data` as bytes to hash: each value as Arrow
/// prints it, NULL told apart from the text "null".
fn row_content(fmts: &[ArrayFormatter<'_>], data: &RecordBatch, row: usize, out: &mut Vec<u8>) {
    use std::io::Write;
    out.clear();
    for (f, col) in fmts.iter().zip(data.columns()) {
        if col.is_null(row) {
            out.push(0);
        } else {
            out.push(1);
            let _ = write!(out, "{}", f.value(row));
        }
        out.push(0x1f);
    }
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
        ctx.claim.check()?;
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
    let key = key_of(plan, &info)?;
    let columns: Vec<String> = info.columns.iter().map(|c| c.name.clone()).collect();
    let wm_name = format!("{}/{}", ctx.step.id, table);
    let old = settle_pending(ctx, dst, &wm_name).await?;
    let read_at = chrono::Utc::now();
    let recent_old: HashSet<String> = old.iter().flat_map(|w| w.recent.clone()).collect();
    let null_rows = src.count_nulls(&plan.schema, &info, &plan.cursor).await?;
    let (nulls, note) = null_rule(plan, old.is_none(), null_rows, table)?;
    report.notes.extend(note);
    let window = Window {
        cursor: plan.cursor.clone(),
        key: key.clone(),
        after: old.as_ref().map(|w| (w.cursor.clone(), w.key.clone())),
        lookback: plan.lookback.unwrap_or_default(),
        nulls,
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

    let read = Read {
        plan,
        src,
        info: &info,
        window: &window,
        nkeys: key.len(),
        recent_old: &recent_old,
    };
    let writer = LazyWriter::new(store.clone(), path.clone(), format, PART_SIZE);
    let (end, writer, recent_new) = read.write_to(writer, &mut report).await?;
    if end.top.is_none() && report.rows_in == 0 {
        writer.abort().await;
        report
            .notes
            .push(format!("`{table}` has no rows to extract"));
        report.newest_change = Some(read_at);
        return Ok(report);
    }
    // The object becomes visible only while the claim holds.
    if let Err(e) = ctx.claim.check() {
        writer.abort().await;
        return Err(e);
    }
    // Every row up to the table's newest position was read (same snapshot).
    let last = end.top.filter(|_| report.rows_in > 0);
    let next = last.map(|(cursor, key)| Watermark {
        cursor,
        key,
        recent: recent_new,
        columns: columns.clone(),
    });
    // Before the object becomes visible, say which position it completes: a
    // crash between the two is settled by the next run (see `settle_pending`),
    // which moves on instead of extracting the same rows into a second object.
    let pending_name = format!("{wm_name}#pending");
    if writer.started()
        && let Some(next) = &next
    {
        let pending = json!({ "object": key_path, "next": next });
        ctx.state
            .set_watermark(&ctx.plan.name, &pending_name, &pending, ctx.fence())
            .await?;
    }
    let finished = writer.finish().await?;
    crate::testing::crash_point("extract:object-written");
    if let Some((rows, bytes)) = finished {
        (report.rows_out, report.bytes_out, report.objects_out) = (rows, bytes, 1);
        let over = read_over(end.streams);
        let to = dst.display(&key_path);
        report
            .notes
            .push(format!("`{table}`: {rows} rows → {to}{over}"));
    } else {
        report
            .notes
            .push(format!("`{table}`: no changes, no object written"));
    }
    report
        .notes
        .extend(new_columns(old.as_ref(), &columns, table));
    // What the position covers after this run, as a time (for freshness): a
    // table with nothing new is current as of when it was read.
    report.newest_change = match (report.objects_out, next.as_ref().or(old.as_ref())) {
        (0, _) => Some(read_at),
        (_, w) => w.and_then(|w| crate::sql::parse_source_timestamp(&w.cursor)),
    };
    // The object is complete: only now does the position move.
    if let Some(wm) = next {
        let value = serde_json::to_value(&wm).map_err(|e| StepError::internal(e.to_string()))?;
        ctx.state
            .set_watermark(&ctx.plan.name, &wm_name, &value, ctx.fence())
            .await?;
        if report.objects_out > 0 {
            ctx.state
                .set_watermark(&ctx.plan.name, &pending_name, &Value::Null, ctx.fence())
                .await?;
        }
    }
    Ok(report)
}

/// One table's read: the rows the window selects, new ones only.
struct Read<'a> {
    plan: &'a ExtractPlan,
    src: &'a SqlSource,
    info: &'a crate::sql::TableInfo,
    window: &'a Window,
    nkeys: usize,
    recent_old: &'a HashSet<String>,
}

impl Read<'_> {
    /// Read the table into `writer` (the reader decodes on its own task while
    /// this one encodes); on an error the writer is aborted. Returns where the
    /// read ended, the writer, and the keys at the newest cursor value.
    async fn write_to(
        &self,
        mut writer: LazyWriter,
        report: &mut StepReport,
    ) -> Result<(crate::sql::ReadEnd, LazyWriter, Vec<String>), StepError> {
        let (tx, mut rx) = mpsc::channel::<Result<RecordBatch, StepError>>(4);
        let mut reader = {
            let (src, schema, info, window) = (
                self.src.clone(),
                self.plan.schema.clone(),
                self.info.clone(),
                self.window.clone(),
            );
            let (batch_rows, parallel) = (self.plan.batch_rows, self.plan.parallel);
            // In a set: dropped with this step (cancelled, timed out), it stops too.
            let mut set = tokio::task::JoinSet::new();
            set.spawn(async move {
                src.read(&schema, &info, &window, batch_rows, parallel, tx)
                    .await
            });
            set
        };
        let data_cols = self.info.columns.len();
        let mut recent_new: Vec<String> = Vec::new();
        let consume = async {
            while let Some(batch) = rx.recv().await {
                let batch = batch?;
                report.rows_in += batch.num_rows() as u64;
                let data = new_rows(
                    &batch,
                    data_cols,
                    self.nkeys,
                    self.recent_old,
                    &mut recent_new,
                )?;
                writer.write(&data).await?;
            }
            Ok::<(), StepError>(())
        };
        let (read_result, consume_result) = tokio::join!(reader.join_next(), consume);
        let read_result = match read_result {
            Some(Ok(r)) => r,
            Some(Err(e)) => Err(StepError::internal(format!("reader task: {e}"))),
            None => Err(StepError::internal("reader task missing")),
        };
        match consume_result.and(read_result) {
            Ok(end) => Ok((end, writer, recent_new)),
            Err(e) => {
                writer.abort().await;
                Err(e)
            }
        }
    }
}

/// The table's position, after settling what a run that stopped between
/// writing its object and moving the position left behind: if that object is
/// in the store it is complete (objects appear whole), so the position it
/// completes is taken; if not, nothing of it is visible and it is forgotten.
async fn settle_pending(
    ctx: &StepContext<'_>,
    dst: &crate::store::StoreHandle,
    wm_name: &str,
) -> Result<Option<Watermark>, StepError> {
    let read = |v: Value| {
        serde_json::from_value::<Watermark>(v)
            .map_err(|e| StepError::internal(format!("watermark: {e}")))
    };
    let pending_name = format!("{wm_name}#pending");
    let current = ctx.state.get_watermark(&ctx.plan.name, wm_name).await?;
    let pending = ctx
        .state
        .get_watermark(&ctx.plan.name, &pending_name)
        .await?
        .filter(|v| !v.is_null());
    let Some(pending) = pending else {
        return current.map(read).transpose();
    };
    let object = pending["object"].as_str().unwrap_or_default();
    let landed = match dst.path(object) {
        Ok(path) => object_store::ObjectStoreExt::head(dst.reader().as_ref(), &path)
            .await
            .is_ok(),
        Err(_) => false,
    };
    let settled = if landed {
        let next = pending["next"].clone();
        ctx.state
            .set_watermark(&ctx.plan.name, wm_name, &next, ctx.fence())
            .await?;
        Some(next)
    } else {
        current
    };
    ctx.state
        .set_watermark(&ctx.plan.name, &pending_name, &Value::Null, ctx.fence())
        .await?;
    settled.map(read).transpose()
}

/// The table's columns of the rows of `batch` not extracted before (by
/// fingerprint, see [`fingerprint`]); the fingerprints of rows in the look-back
/// window go to `recent_new`. The batch carries the read's helper columns after
/// the table's `data_cols` (see `SqlSource::read_schema`).
fn new_rows(
    batch: &RecordBatch,
    data_cols: usize,
    nkeys: usize,
    recent_old: &HashSet<String>,
    recent_new: &mut Vec<String>,
) -> Result<RecordBatch, StepError> {
    let internal = |e: arrow::error::ArrowError| StepError::internal(e.to_string());
    let cursor = batch.column(data_cols).as_string::<i32>();
    let keys: Vec<_> = (0..nkeys)
        .map(|i| batch.column(data_cols + 1 + i).as_string::<i32>())
        .collect();
    let in_window = batch.column(data_cols + 1 + nkeys).as_boolean();
    let data = batch
        .project(&(0..data_cols).collect::<Vec<_>>())
        .map_err(internal)?;
    // No row here needs a fingerprint (most of a first snapshot).
    if cursor.null_count() == cursor.len() {
        return Ok(data);
    }
    let opts = FormatOptions::default();
    let fmts: Vec<ArrayFormatter<'_>> = data
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
        .collect::<Result<_, _>>()
        .map_err(internal)?;
    let mut content = Vec::new();
    let mut keep = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        if cursor.is_null(row) {
            keep.push(true);
            continue;
        }
        let kv: Vec<&str> = keys.iter().map(|k| k.value(row)).collect();
        row_content(&fmts, &data, row, &mut content);
        let fp = fingerprint(cursor.value(row), &kv, &content);
        keep.push(!recent_old.contains(&fp));
        if in_window.is_valid(row) && in_window.value(row) {
            recent_new.push(fp);
        }
    }
    filter_record_batch(&data, &BooleanArray::from(keep)).map_err(internal)
}

/// How a read was spread, when it was.
fn read_over(streams: usize) -> String {
    match streams {
        n if n > 1 => format!(" (read over {n} connections)"),
        _ => String::new(),
    }
}

/// The table's key (the step's, else its primary key), with the cursor and key
/// checked to be columns of it.
fn key_of(plan: &ExtractPlan, info: &crate::sql::TableInfo) -> Result<Vec<String>, StepError> {
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
    Ok(key)
}

/// A source that grew columns since the last position: they are kept in
/// landing; say so.
fn new_columns(old: Option<&Watermark>, columns: &[String], table: &str) -> Vec<String> {
    let Some(old) = old.filter(|o| !o.columns.is_empty()) else {
        return Vec::new();
    };
    columns
        .iter()
        .filter(|c| !old.columns.contains(c))
        .map(|c| {
            tracing::warn!(table, column = %c, "the source table has a new column; it is kept in landing");
            format!("warning: `{table}` has a new column `{c}` (kept in landing; models that do not select it are unaffected)")
        })
        .collect()
}

/// Rows with a NULL cursor have no position: the step's `nulls` rule says
/// whether this read takes them (`first`: no position yet), and a note says what
/// became of them whenever there are any.
fn null_rule(
    plan: &ExtractPlan,
    first: bool,
    null_rows: u64,
    table: &str,
) -> Result<(bool, Option<String>), StepError> {
    let nulls = match plan.nulls {
        NullCursors::Always => true,
        NullCursors::Snapshot => first,
        NullCursors::Error if null_rows > 0 => {
            return Err(StepError::user(format!(
                "{null_rows} row(s) have a NULL `{}`, so no position can cover them; \
                 set `nulls = \"always\"` on the extract step to take them on every run, or \
                 `nulls = \"snapshot\"` to take them on the first run only",
                plan.cursor
            )));
        }
        NullCursors::Error => false,
    };
    if null_rows == 0 {
        return Ok((nulls, None));
    }
    let what = match (nulls, plan.nulls) {
        (true, NullCursors::Always) => "extracted again on every run (nulls = \"always\")",
        (true, _) => "extracted with this first snapshot (nulls = \"snapshot\")",
        (false, _) => {
            tracing::warn!(table, rows = null_rows, cursor = %plan.cursor, "rows with a NULL cursor are not extracted (nulls = \"snapshot\")");
            "NOT extracted: nulls = \"snapshot\" takes them on the first run only"
        }
    };
    Ok((
        nulls,
        Some(format!(
            "`{table}`: {null_rows} row(s) with a NULL `{}` {what}",
            plan.cursor
        )),
    ))
}

/// Multipart part size of extracted objects (S3's minimum is 5 MiB).
const PART_SIZE: usize = 16 << 20;
