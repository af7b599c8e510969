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

use crate::error::StepError;
use crate::formats::{Format, LazyWriter};
use crate::plan::TransformPlan;
use crate::state::StepReport;
use crate::steps::context::{StepContext, StepOutput};
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
    // With a bounded history, older objects are out of sight for good.
    let since = plan
        .history
        .and_then(|h| chrono::TimeDelta::from_std(h).ok())
        .map(|h| chrono::Utc::now() - h);
    let listed = listed
        .into_iter()
        .filter(|m| since.is_none_or(|t| m.last_modified >= t))
        .collect();
    let tables = by_table(&base, listed)?;

    let scope = format!("{}/{}/inputs", ctx.plan.name, ctx.step.id);
    let pending_name = format!("{}#pending", ctx.step.id);
    settle_pending(ctx, dst, &writer_store, &scope, &pending_name).await?;
    let consumed = ctx.state.ledger_list(&scope, "").await?;
    let session = Session::new();
    session
        .register_store(&src.name, src.reader().clone())
        .map_err(|e| StepError::internal(e.to_string()))?;
    let mut report = StepReport::default();
    let new_inputs = register_tables(&session, src, tables, &consumed).await?;
    report.objects_in = new_inputs.len() as u64;

    // Nothing new landed: every model would compute what it did last time.
    if new_inputs.is_empty() {
        report.notes.push(format!(
            "no new input under {}: the models were not run",
            src.display(&prefix)
        ));
        return Ok(StepOutput::from(report));
    }
    let keys = models
        .iter()
        .map(|model| {
            let mut tctx = ctx.template.clone();
            if let Value::Object(m) = &mut tctx {
                m.insert("model".into(), json!(model.name));
            }
            crate::template::render(&plan.to.prefix, &tctx).map_err(StepError::user)
        })
        .collect::<Result<Vec<String>, _>>()?;
    // Before any output is written, say which outputs consume which inputs: a
    // crash before the inputs are marked is settled by the next run.
    let pending = json!({ "outputs": keys, "inputs": new_inputs });
    ctx.state
        .set_watermark(&ctx.plan.name, &pending_name, &pending, ctx.fence())
        .await?;
    for (model, key) in models.iter().zip(keys) {
        if ctx.cancel.is_cancelled() {
            return Err(StepError::external("interrupted between models"));
        }
        ctx.claim.check()?;
        let (rows, bytes) = run_model(ctx, &session, model, dst, &writer_store, &key).await?;
        report.rows_out += rows;
        report.bytes_out += bytes;
        report.objects_out += 1;
        report.notes.push(format!(
            "model `{}`: {rows} rows → {}",
            model.name,
            dst.display(&key)
        ));
        crate::testing::crash_point("transform:model-written");
    }
    // Every output is complete: only now are the inputs consumed.
    consume(ctx, &scope, &new_inputs).await?;
    ctx.state
        .set_watermark(&ctx.plan.name, &pending_name, &Value::Null, ctx.fence())
        .await?;
    Ok(StepOutput::from(report))
}

/// Register each table (all its objects, newest schema first) and `<table>_new`
/// (the objects not consumed yet); return those new inputs with their versions.
async fn register_tables(
    session: &Session,
    src: &StoreHandle,
    tables: Tables,
    consumed: &std::collections::HashMap<String, crate::state::LedgerEntry>,
) -> Result<Vec<(String, String)>, StepError> {
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
        new_inputs.extend(fresh.iter().map(|o| (o.0.clone(), version_of(&o.1))));
    }
    Ok(new_inputs)
}

/// Run one model and write its output at `key` (an empty result too: a table
/// replaced from it becomes empty); (rows, bytes) written.
async fn run_model(
    ctx: &StepContext<'_>,
    session: &Session,
    model: &flowgate_sql::Model,
    dst: &StoreHandle,
    writer_store: &std::sync::Arc<dyn object_store::ObjectStore>,
    key: &str,
) -> Result<(u64, u64), StepError> {
    let mut stream = session
        .run(model)
        .await
        .map_err(|e| StepError::user(e.to_string()))?;
    let format = Format::from_key(key).unwrap_or(Format::Parquet);
    let path = dst.path(key).map_err(StepError::user)?;
    let mut writer = LazyWriter::new(writer_store.clone(), path, format, PART_SIZE);
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
    writer.finish().await?.ok_or_else(|| {
        StepError::internal(format!(
            "model `{}`: its output was not written",
            model.name
        ))
    })
}

async fn consume(
    ctx: &StepContext<'_>,
    scope: &str,
    inputs: &[(String, String)],
) -> Result<(), StepError> {
    for (rel, version) in inputs {
        ctx.state
            .ledger_put(scope, rel, version, &json!({}), ctx.fence())
            .await?;
    }
    Ok(())
}

/// Settle what a run that stopped while writing its outputs left behind: when
/// every output it meant to write is there, its inputs are consumed (the outputs
/// are whole, the load takes them); when some are missing, the ones written go
/// (no load has taken them: the load follows the transform) and the inputs are
/// new again. Either way no input is turned into two outputs.
async fn settle_pending(
    ctx: &StepContext<'_>,
    dst: &StoreHandle,
    writer: &std::sync::Arc<dyn object_store::ObjectStore>,
    scope: &str,
    pending_name: &str,
) -> Result<(), StepError> {
    use object_store::ObjectStoreExt;
    let Some(pending) = ctx
        .state
        .get_watermark(&ctx.plan.name, pending_name)
        .await?
        .filter(|v| !v.is_null())
    else {
        return Ok(());
    };
    let outputs: Vec<String> = serde_json::from_value(pending["outputs"].clone())
        .map_err(|e| StepError::internal(format!("pending transform: {e}")))?;
    let inputs: Vec<(String, String)> = serde_json::from_value(pending["inputs"].clone())
        .map_err(|e| StepError::internal(format!("pending transform: {e}")))?;
    let mut written = Vec::new();
    for key in &outputs {
        let path = dst.path(key).map_err(StepError::user)?;
        if writer.head(&path).await.is_ok() {
            written.push(path);
        }
    }
    if written.len() == outputs.len() {
        consume(ctx, scope, &inputs).await?;
    } else {
        for path in written {
            match writer.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    return Err(StepError::from(e).context("removing an unfinished run's output"));
                }
            }
        }
    }
    ctx.state
        .set_watermark(&ctx.plan.name, pending_name, &Value::Null, ctx.fence())
        .await?;
    Ok(())
}

/// Landed objects grouped by table (the first folder under the prefix).
fn by_table(base: &object_store::path::Path, listed: Vec<ObjectMeta>) -> Result<Tables, StepError> {
    let mut tables: Tables = BTreeMap::new();
    for meta in listed {
        let Some(rel) = StoreHandle::relative_to(base, &meta.location) else {
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

    Ok(tables)
}

/// Objects of each table: (key relative to the prefix, metadata, kind).
type Tables = BTreeMap<String, Vec<(String, ObjectMeta, FileKind)>>;
