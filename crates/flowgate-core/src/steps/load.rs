//! `load`: objects (JSON lines or Parquet) → a SQL table.
//!
//! Inputs under the `from` prefix are loaded in key order, each in one
//! transaction that also records it in the target's `flowgate_loaded` ledger;
//! an input loaded before (same version) is not loaded again. Modes: append,
//! upsert by key, append-versions, replace.

use futures::TryStreamExt;
use object_store::ObjectMeta;
use tokio::sync::mpsc;

use crate::engine::{StepContext, StepOutput};
use crate::error::StepError;
use crate::formats::{Format, read_batches};
use crate::plan::LoadPlan;
use crate::sql::SqlSource;
use crate::sql::target::{Input, LoadMode};
use crate::state::StepReport;
use crate::store::StoreHandle;

pub async fn run(ctx: &StepContext<'_>, plan: &LoadPlan) -> Result<StepOutput, StepError> {
    let src = ctx.stores.get(&plan.from.store)?;
    let prefix =
        crate::template::render(&plan.from.prefix, ctx.template).map_err(StepError::user)?;
    let prefix = prefix.trim_matches('/').to_string();
    let base = src.path(&prefix).map_err(StepError::user)?;
    let mut objects: Vec<(String, ObjectMeta, Format)> = src
        .reader()
        .list(Some(&base))
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| StepError::from(e).context(format!("listing `{}`", src.display(&prefix))))?
        .into_iter()
        .filter_map(|m| {
            let rel = StoreHandle::relative_to(&src.path("").ok()?, &m.location)?;
            let format = Format::from_key(&rel)?;
            Some((rel, m, format))
        })
        .collect();
    objects.sort_by(|a, b| a.0.cmp(&b.0));

    let spec = ctx
        .plan
        .stores
        .get(&plan.into)
        .ok_or_else(|| StepError::internal(format!("store `{}`", plan.into)))?;
    let target = SqlSource::open(&spec.url, &ctx.plan.dir).map_err(StepError::user)?;
    let done = target.loaded_inputs(&ctx.plan.name, &ctx.step.id).await?;
    let todo: Vec<_> = objects
        .into_iter()
        .filter(|(rel, m, _)| done.get(&src.display(rel)) != Some(&crate::store::version_of(m)))
        .collect();
    let mut report = StepReport::default();
    if todo.is_empty() {
        report.notes.push(format!(
            "nothing new to load from `{}`",
            src.display(&prefix)
        ));
        return Ok(StepOutput { report });
    }
    // Replace takes the whole input of the run in one transaction; other modes
    // commit input by input, so a crash leaves only whole inputs behind.
    let groups: Vec<Vec<_>> = if plan.target.mode == LoadMode::Replace {
        vec![todo]
    } else {
        todo.into_iter().map(|o| vec![o]).collect()
    };
    for group in groups {
        if ctx.cancel.is_cancelled() {
            return Err(StepError::external("interrupted between inputs"));
        }
        let mut inputs = Vec::new();
        for (rel, meta, format) in group {
            let (tx, mut rx) = mpsc::channel(4);
            let reader = read_batches(
                src.reader().clone(),
                meta.location.clone(),
                format,
                plan.batch_rows,
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
            inputs.push(Input {
                object: src.display(&rel),
                fingerprint: crate::store::version_of(&meta),
                batches: batches?,
            });
            report.objects_in += 1;
            report.bytes_in += meta.size;
        }
        let loaded = target
            .load(&ctx.plan.name, &ctx.step.id, &plan.target, inputs)
            .await
            .map_err(|e| e.context(format!("loading into `{}`", plan.target.table)))?;
        report.rows_in += loaded.rows_in;
        report.rows_out += loaded.rows_written;
        for c in loaded.added_columns {
            tracing::warn!(table = %plan.target.table, column = %c, "the input has a new column; added it to the table as nullable");
            report.notes.push(format!(
                "warning: added new nullable column `{c}` to `{}`",
                plan.target.table
            ));
        }
    }
    report.notes.push(format!(
        "{} input(s) loaded into `{}` ({:?})",
        report.objects_in, plan.target.table, plan.target.mode
    ));
    Ok(StepOutput { report })
}
