//! `load`: objects (JSON lines or Parquet) → SQL tables.
//!
//! Inputs under the `from` prefix (or, with `tables`, under each table's folder)
//! are loaded in key order, each streamed in one transaction that also records it
//! in the target's `flowgate_loaded` ledger; an input loaded before (same version)
//! is not loaded again. Modes: append, upsert by key, append-versions, replace
//! (the newest pending input becomes the table; older pending ones are superseded).
//! Rows whose key is NULL are dead-lettered as they stream past.

pub mod config;
pub mod plan;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;
use futures::TryStreamExt;
use object_store::ObjectMeta;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::error::StepError;
use crate::formats::{Format, read_batches};
use crate::plan::LoadPlan;
use crate::quarantine::DeadRecord;
use crate::sql::SqlSource;
use crate::sql::target::{Input, LoadClaim, LoadMode, LoadTarget};
use crate::state::StepReport;
use crate::steps::context::{StepContext, StepOutput};
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
    let claim = LoadClaim {
        pipeline: ctx.plan.name.clone(),
        step: ctx.step.id.clone(),
        lane: ctx.fence().lease.clone(),
        token: ctx.fence().token,
    };
    let mut report = StepReport::default();
    let job = Job {
        ctx,
        src,
        target: &target,
        done: &done,
        claim: &claim,
        batch_rows: plan.batch_rows,
        dead_batches: AtomicU64::new(0),
    };
    for (folder, t) in &plan.targets {
        let prefix = match folder {
            Some(f) if root.is_empty() => f.clone(),
            Some(f) => format!("{root}/{f}"),
            None => root.clone(),
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
    claim: &'a LoadClaim,
    batch_rows: usize,
    /// Dead-letter objects written by this attempt (their keys are numbered, so a
    /// retried attempt writes the same keys again).
    dead_batches: AtomicU64,
}

/// Batches in flight between the reader, the null-key check and the load: memory
/// stays around this many batches, whatever the size of the input.
const IN_FLIGHT: usize = 2;

impl Job<'_> {
    /// Rows whose key is NULL cannot be loaded: they go to the dead-letter sink with
    /// the reason and their position; the rest go on to the load.
    async fn set_aside_null_keys(
        &self,
        object: &str,
        t: &LoadTarget,
        b: RecordBatch,
        row_base: u64,
        set_aside: &mut u64,
    ) -> Result<RecordBatch, StepError> {
        let key: Vec<&String> = t.key.iter().chain(t.version.iter()).collect();
        let mut why: Vec<Option<&String>> = vec![None; b.num_rows()];
        for k in &key {
            if let Ok(i) = b.schema().index_of(k) {
                let col = b.column(i);
                for (r, w) in why.iter_mut().enumerate() {
                    if col.is_null(r) && w.is_none() {
                        *w = Some(k);
                    }
                }
            }
        }
        if why.iter().all(Option::is_none) {
            return Ok(b);
        }
        let internal = |e: arrow::error::ArrowError| StepError::internal(e.to_string());
        let rejected: BooleanArray = why.iter().map(|w| Some(w.is_some())).collect();
        let kept: BooleanArray = why.iter().map(|w| Some(w.is_none())).collect();
        let rows = filter_record_batch(&b, &rejected).map_err(internal)?;
        let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
        w.write(&rows).map_err(internal)?;
        w.finish().map_err(internal)?;
        let text = String::from_utf8(w.into_inner()).unwrap_or_default();
        let bad = why.iter().enumerate().filter_map(|(r, k)| Some((r, (*k)?)));
        let dead: Vec<DeadRecord> = text
            .lines()
            .zip(bad)
            .map(|(line, (r, k))| DeadRecord {
                record: serde_json::from_str(line).unwrap_or(Value::Null),
                reason: format!("key column `{k}` is null (table `{}`)", t.table),
                position: json!({"object": object, "row": row_base + r as u64}),
            })
            .collect();
        let sink = self.ctx.stores.dead_letter(self.ctx.template)?;
        let n = self.dead_batches.fetch_add(1, Ordering::SeqCst);
        sink.write(
            &self.ctx.plan.name,
            self.ctx.run_id,
            &self.ctx.step.id,
            n,
            &dead,
        )
        .await?;
        *set_aside += dead.len() as u64;
        filter_record_batch(&b, &kept).map_err(internal)
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
        let mut todo: Vec<_> = objects
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
        // Replace: the newest input (written last) is the table; older pending
        // ones are recorded as superseded by it, in its transaction.
        let mut superseded = Vec::new();
        if t.mode == LoadMode::Replace {
            todo.sort_by(|a, b| (a.1.last_modified, &a.0).cmp(&(b.1.last_modified, &b.0)));
            let newest = todo.pop().into_iter().collect();
            superseded = std::mem::replace(&mut todo, newest)
                .into_iter()
                .map(|(rel, m, _)| (src.display(&rel), crate::store::version_of(&m)))
                .collect();
        }
        let (mut loaded_inputs, mut skipped) = (0, 0);
        for (rel, meta, format) in todo {
            if self.ctx.cancel.is_cancelled() {
                return Err(StepError::external("interrupted between inputs"));
            }
            self.ctx.claim.check()?;
            let input = Input {
                object: src.display(&rel),
                fingerprint: crate::store::version_of(&meta),
                superseded: std::mem::take(&mut superseded),
            };
            let Some(loaded) = self.load_one(t, &input, &meta, format, report).await? else {
                skipped += 1;
                continue;
            };
            report.objects_in += 1;
            report.bytes_in += meta.size;
            loaded_inputs += 1;
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
        let mut note = format!(
            "`{}`: {loaded_inputs} input(s) loaded ({:?})",
            t.table, t.mode
        );
        if skipped > 0 {
            note.push_str(&format!(
                "; {skipped} found loaded by another run meanwhile"
            ));
        }
        report.notes.push(note);
        Ok(())
    }

    /// One input: read, null keys set aside, loaded, all streaming at once.
    async fn load_one(
        &self,
        t: &LoadTarget,
        input: &Input,
        meta: &ObjectMeta,
        format: Format,
        report: &mut StepReport,
    ) -> Result<Option<crate::sql::target::Loaded>, StepError> {
        let (raw_tx, mut raw_rx) = mpsc::channel(IN_FLIGHT);
        let (tx, rx) = mpsc::channel(IN_FLIGHT);
        // A read that fails part-way must reach the load as an error, never as the
        // end of the input: the load would commit what it had.
        let reader = {
            let failed = raw_tx.clone();
            let read = read_batches(
                self.src.reader().clone(),
                meta.location.clone(),
                format,
                self.batch_rows,
                raw_tx,
            );
            async move {
                let r = read.await;
                if let Err(e) = &r {
                    let _ = failed.send(Err(e.clone())).await;
                }
                r
            }
        };
        let mut set_aside = 0;
        let check = async {
            // Owned here: the load sees the input end when this stage ends.
            let tx = tx;
            let mut row_base = 0;
            while let Some(b) = raw_rx.recv().await {
                let b = match b {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return Ok(());
                    }
                };
                let rows = b.num_rows() as u64;
                let kept = self
                    .set_aside_null_keys(&input.object, t, b, row_base, &mut set_aside)
                    .await?;
                row_base += rows;
                if tx.send(Ok(kept)).await.is_err() {
                    break; // the load stopped; it says why
                }
            }
            Ok::<(), StepError>(())
        };
        let load = self.target.load(self.claim, t, input, rx);
        let (read, checked, loaded) = tokio::join!(reader, check, load);
        // The load's own error says most; a reader's explains a truncated input.
        let loaded = loaded.map_err(|e| match &read {
            Err(r) => r.clone().context(&input.object),
            Ok(()) => e,
        })?;
        read.map_err(|e| e.context(&input.object))?;
        checked?;
        if set_aside > 0 {
            report.quarantined += set_aside;
            report.notes.push(format!(
                "{set_aside} row(s) of {} set aside (null key): see the dead-letter sink",
                input.object
            ));
        }
        Ok(loaded)
    }
}
