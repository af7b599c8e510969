//! `transform`: a directory of SQL models run with DataFusion over landed data.
//!
//! Each folder directly under the inputs prefix is a table: `<table>` holds all
//! of its objects, `<table>_new` only those no transform of this step has
//! consumed before. When something new landed, each model writes one object per
//! run (Parquet by default), an empty one too; when nothing did, no model runs.
//! Inputs are marked consumed only after every model's output is complete.

use std::collections::BTreeMap;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectMeta;
use serde_json::{Value, json};

use crate::engine::{StepContext, StepOutput};
use crate::error::StepError;
use crate::formats::{Format, LazyWriter};
use crate::plan::TransformPlan;
use crate::state::StepReport;
use crate::store::{StoreHandle, version_of};
use flowgate_sql::{FileKind, Session, load_models};

const PART_SIZE: usize = 16 << 20;

pub async fn run(ctx: &StepContext<'_>, plan: &TransformPlan) -> Result<StepOutput, StepError> {
    let models = load_models(&ctx.plan.dir.join(&plan.models))
        .map_err(|e| StepError::user(e.to_string()))?;
    let src = ctx.stores.get(&plan.inputs.store)?;
    let dst = ctx.stores.get(&plan.to.store)?;
    let writer_store = dst
        .writer(&format!("step `{}`", ctx.step.id))
        .map_err(|e| StepError::user(e.to_string()))?
        .clone();
    let prefix =
        crate::template::render(&plan.inputs.prefix, ctx.template).map_err(StepError::user)?;
    let prefix = prefix.trim_matches('/').to_string();
    let base = src.path(&prefix).map_err(StepError::user)?;

    // Group the landed objects by table (the first folder under the prefix).
    let listed: Vec<ObjectMeta> = src
        .reader()
        .list(Some(&base))
        .try_collect()
        .await
        .map_err(|e| StepError::from(e).context(format!("listing `{}`", src.display(&prefix))))?;
    let mut tables: BTreeMap<String, Vec<(String, ObjectMeta, FileKind)>> = BTreeMap::new();
    for meta in listed {
        let Some(rel) = StoreHandle::relative_to(&base, &meta.location) else {
            continue;
        };
        let Some((table, _)) = rel.split_once('/') else {
            continue;
        };
        let kind = match Format::from_key(&rel) {
            Some(Format::Jsonl) => FileKind::JsonLines,
            Some(Format::Parquet) => FileKind::Parquet,
            Some(_) => {
                return Err(StepError::user(format!(
                    "`{rel}`: transforms read plain .jsonl and .parquet; compressed JSON lines are not supported yet"
                )));
            }
            None => continue,
        };
        tables
            .entry(table.to_string())
            .or_default()
            .push((rel, meta, kind));
    }

    let scope = format!("{}/{}/inputs", ctx.plan.name, ctx.step.id);
    let consumed = ctx.state.ledger_list(&scope, "").await?;
    let session = Session::new();
    session
        .register_store(&src.name, src.reader().clone())
        .map_err(|e| StepError::internal(e.to_string()))?;
    let mut report = StepReport::default();
    let mut new_inputs: Vec<(String, String)> = Vec::new();
    for (table, mut objects) in tables {
        let kind = objects[0].2;
        if objects.iter().any(|o| o.2 != kind) {
            return Err(StepError::user(format!(
                "table `{table}` mixes JSON lines and Parquet objects"
            )));
        }
        // Newest first: the first file gives the schema, and schemas only grow.
        // Written last, or (same second on S3) the later key.
        objects.sort_by(|a, b| (b.1.last_modified, &b.0).cmp(&(a.1.last_modified, &a.0)));
        let all: Vec<String> = objects.iter().map(|o| o.1.location.to_string()).collect();
        let schema = session
            .infer_schema(&table, &src.name, &all, kind)
            .await
            .map_err(|e| StepError::user(e.to_string()))?;
        session
            .register_files(&table, &src.name, &all, kind, schema.clone())
            .map_err(|e| StepError::user(e.to_string()))?;
        let fresh: Vec<&(String, ObjectMeta, FileKind)> = objects
            .iter()
            .filter(|o| {
                consumed.get(&o.0).map(|e| e.fingerprint.as_str())
                    != Some(version_of(&o.1).as_str())
            })
            .collect();
        let new_table = format!("{table}_new");
        if fresh.is_empty() {
            session
                .register_empty(&new_table, schema)
                .map_err(|e| StepError::internal(e.to_string()))?;
        } else {
            let paths: Vec<String> = fresh.iter().map(|o| o.1.location.to_string()).collect();
            session
                .register_files(&new_table, &src.name, &paths, kind, schema)
                .map_err(|e| StepError::user(e.to_string()))?;
        }
        report.objects_in += fresh.len() as u64;
        new_inputs.extend(fresh.iter().map(|o| (o.0.clone(), version_of(&o.1))));
    }

    // Nothing new landed: every model would compute what it did last time.
    if new_inputs.is_empty() {
        report.notes.push(format!(
            "no new input under {}: the models were not run",
            src.display(&prefix)
        ));
        return Ok(StepOutput::from(report));
    }
    for model in &models {
        if ctx.cancel.is_cancelled() {
            return Err(StepError::external("interrupted between models"));
        }
        ctx.claim.check()?;
        let mut stream = session
            .run(model)
            .await
            .map_err(|e| StepError::user(e.to_string()))?;
        let mut tctx = ctx.template.clone();
        if let Value::Object(m) = &mut tctx {
            m.insert("model".into(), json!(model.name));
        }
        let key = crate::template::render(&plan.to.prefix, &tctx).map_err(StepError::user)?;
        let format = Format::from_key(&key).unwrap_or(Format::Parquet);
        let path = dst.path(&key).map_err(StepError::user)?;
        let mut writer = LazyWriter::new(writer_store.clone(), path, format, PART_SIZE);
        // An empty result is written too: a table replaced from it becomes empty.
        writer.keep_when_empty(stream.schema())?;
        let result: Result<(), StepError> = async {
            while let Some(batch) = stream.next().await {
                let batch =
                    batch.map_err(|e| StepError::user(format!("model `{}`: {e}", model.name)))?;
                writer.write(&batch).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result.and_then(|()| ctx.claim.check()) {
            writer.abort().await;
            return Err(e);
        }
        match writer.finish().await? {
            Some((rows, bytes)) => {
                report.rows_out += rows;
                report.bytes_out += bytes;
                report.objects_out += 1;
                report.notes.push(format!(
                    "model `{}`: {rows} rows → {}",
                    model.name,
                    dst.display(&key)
                ));
            }
            None => {
                return Err(StepError::internal(format!(
                    "model `{}`: its output was not written",
                    model.name
                )));
            }
        }
    }
    // Every output is complete: only now are the inputs consumed.
    for (rel, version) in new_inputs {
        ctx.state
            .ledger_put(&scope, &rel, &version, &json!({}), ctx.fence())
            .await?;
    }
    Ok(StepOutput::from(report))
}
