//! `load`: objects (JSON lines or Parquet) → SQL tables.
//!
//! Inputs under the `from` prefix (or, with `tables`, under each table's folder)
//! are loaded in key order, each in one transaction that also records it in the
//! target's `flowgate_loaded` ledger; an input loaded before (same version) is not
//! loaded again. Modes: append, upsert by key, append-versions, replace.

use std::collections::HashMap;

use arrow::array::{Array, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use object_store::ObjectMeta;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::engine::{StepContext, StepOutput};
use crate::error::StepError;
use crate::formats::{Format, read_batches};
use crate::plan::LoadPlan;
use crate::quarantine::DeadRecord;
use crate::sql::SqlSource;
use crate::sql::target::{Input, LoadMode, LoadTarget};
use crate::state::StepReport;
use crate::store::StoreHandle;

pub async fn run(ctx: &StepContext<'_>, plan: &LoadPlan) -> Result<StepOutput, StepError> {
    let src = ctx.stores.get(&plan.from.store)?;
    let root = crate::template::render(&plan.from.prefix, ctx.template).map_err(StepError::user)?;
    let root = root.trim_matches('/').to_string();
    let spec = ctx
        .plan
        .stores
        .get(&plan.into)
        .ok_or_else(|| StepError::internal(format!("store `{}`", plan.into)))?;
    let target = SqlSource::open(&spec.url, &ctx.plan.dir).map_err(StepError::user)?;
    let done = target.loaded_inputs(&ctx.plan.name, &ctx.step.id).await?;
    let mut report = StepReport::default();
    for (folder, t) in &plan.targets {
        let prefix = match folder {
            Some(f) if root.is_empty() => f.clone(),
            Some(f) => format!("{root}/{f}"),
            None => root.clone(),
        };
        let job = Job {
            ctx,
            src,
            target: &target,
            done: &done,
            batch_rows: plan.batch_rows,
        };
        job.load_table(&prefix, t, &mut report)
            .await
            .map_err(|e| e.context(format!("loading into `{}`", t.table)))?;
    }
    Ok(StepOutput::from(report))
}

struct Job<'a> {
    ctx: &'a StepContext<'a>,
    src: &'a StoreHandle,
    target: &'a SqlSource,
    done: &'a HashMap<String, String>,
    batch_rows: usize,
}

impl Job<'_> {
    /// Rows whose key is NULL cannot be loaded: they go to the dead-letter sink with
    /// the reason and their position; the rest is loaded and the run is partial.
    async fn set_aside_null_keys(
        &self,
        object: &str,
        t: &LoadTarget,
        batches: Vec<RecordBatch>,
        report: &mut StepReport,
    ) -> Result<Vec<RecordBatch>, StepError> {
        let key: Vec<&String> = t.key.iter().chain(t.version.iter()).collect();
        let mut kept = Vec::with_capacity(batches.len());
        let mut dead = Vec::new();
        let mut row_base = 0u64;
        for b in batches {
            let mut bad = vec![false; b.num_rows()];
            let mut why = vec![String::new(); b.num_rows()];
            for k in &key {
                if let Ok(i) = b.schema().index_of(k) {
                    let col = b.column(i);
                    for (r, flag) in bad.iter_mut().enumerate() {
                        if col.is_null(r) && !*flag {
                            *flag = true;
                            why[r] = format!("key column `{k}` is null");
                        }
                    }
                }
            }
            if bad.iter().any(|x| *x) {
                let mask: BooleanArray = bad.iter().map(|x| Some(!*x)).collect();
                let rejected: BooleanArray = bad.iter().map(|x| Some(*x)).collect();
                let rows = filter_record_batch(&b, &rejected)
                    .map_err(|e| StepError::internal(e.to_string()))?;
                let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
                w.write(&rows)
                    .map_err(|e| StepError::internal(e.to_string()))?;
                w.finish().map_err(|e| StepError::internal(e.to_string()))?;
                let text = String::from_utf8(w.into_inner()).unwrap_or_default();
                let positions = bad.iter().enumerate().filter(|(_, x)| **x).map(|(r, _)| r);
                for (line, r) in text.lines().zip(positions) {
                    dead.push(DeadRecord {
                        record: serde_json::from_str(line).unwrap_or(Value::Null),
                        reason: format!("{} (table `{}`)", why[r], t.table),
                        position: json!({"object": object, "row": row_base + r as u64}),
                    });
                }
                kept.push(
                    filter_record_batch(&b, &mask)
                        .map_err(|e| StepError::internal(e.to_string()))?,
                );
            } else {
                kept.push(b.clone());
            }
            row_base += b.num_rows() as u64;
        }
        if !dead.is_empty() {
            let sink = self.ctx.stores.dead_letter(self.ctx.template)?;
            let batch_no = report.quarantined;
            let at = sink
                .write(
                    &self.ctx.plan.name,
                    self.ctx.run_id,
                    &self.ctx.step.id,
                    batch_no,
                    &dead,
                )
                .await?;
            report.quarantined += dead.len() as u64;
            report.notes.push(format!(
                "{} row(s) of {object} set aside (null key): see {at}",
                dead.len()
            ));
        }
        Ok(kept)
    }

    async fn load_table(
        &self,
        prefix: &str,
        t: &LoadTarget,
        report: &mut StepReport,
    ) -> Result<(), StepError> {
        let src = self.src;
        let base = src.path(prefix).map_err(StepError::user)?;
        let root = src.path("").map_err(StepError::user)?;
        let mut objects: Vec<(String, ObjectMeta, Format)> = src
            .reader()
            .list(Some(&base))
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| StepError::from(e).context(format!("listing `{}`", src.display(prefix))))?
            .into_iter()
            .filter_map(|m| {
                let rel = StoreHandle::relative_to(&root, &m.location)?;
                let format = Format::from_key(&rel)?;
                Some((rel, m, format))
            })
            .collect();
        objects.sort_by(|a, b| a.0.cmp(&b.0));
        let todo: Vec<_> = objects
            .into_iter()
            .filter(|(rel, m, _)| {
                self.done.get(&src.display(rel)) != Some(&crate::store::version_of(m))
            })
            .collect();
        if todo.is_empty() {
            report.notes.push(format!(
                "`{}`: nothing new to load from `{}`",
                t.table,
                src.display(prefix)
            ));
            return Ok(());
        }
        // Replace takes the whole input of the run in one transaction; other modes
        // commit input by input, so a crash leaves only whole inputs behind.
        let groups: Vec<Vec<_>> = if t.mode == LoadMode::Replace {
            vec![todo]
        } else {
            todo.into_iter().map(|o| vec![o]).collect()
        };
        let mut inputs_loaded = 0;
        for group in groups {
            if self.ctx.cancel.is_cancelled() {
                return Err(StepError::external("interrupted between inputs"));
            }
            let mut inputs = Vec::new();
            for (rel, meta, format) in group {
                let (tx, mut rx) = mpsc::channel(4);
                let reader = read_batches(
                    src.reader().clone(),
                    meta.location.clone(),
                    format,
                    self.batch_rows,
                    tx,
                );
                let collect = async {
                    let mut batches = Vec::new();
                    while let Some(b) = rx.recv().await {
                        batches.push(b?);
                    }
                    Ok::<_, StepError>(batches)
                };
                let (r, batches) = tokio::join!(reader, collect);
                r.map_err(|e| e.context(src.display(&rel)))?;
                let object = src.display(&rel);
                let batches = self
                    .set_aside_null_keys(&object, t, batches?, report)
                    .await?;
                inputs.push(Input {
                    object,
                    fingerprint: crate::store::version_of(&meta),
                    batches,
                });
                report.objects_in += 1;
                report.bytes_in += meta.size;
                inputs_loaded += 1;
            }
            let loaded = self
                .target
                .load(&self.ctx.plan.name, &self.ctx.step.id, t, inputs)
                .await?;
            report.rows_in += loaded.rows_in;
            report.rows_out += loaded.rows_written;
            for c in loaded.added_columns {
                tracing::warn!(table = %t.table, column = %c, "the input has a new column; added it to the table as nullable");
                report.notes.push(format!(
                    "warning: added new nullable column `{c}` to `{}`",
                    t.table
                ));
            }
        }
        report.notes.push(format!(
            "`{}`: {inputs_loaded} input(s) loaded ({:?})",
            t.table, t.mode
        ));
        Ok(())
    }
}
