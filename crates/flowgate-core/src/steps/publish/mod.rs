//! The publish step: the manifest of the run's dataset written last, then the
//! version recorded in the state store (from then on it is listed and `LATEST`).

pub mod config;
pub mod plan;

use std::collections::BTreeMap;

use object_store::ObjectStoreExt as _;
use serde_json::json;

use crate::error::StepError;
use crate::state::StepReport;
use crate::steps::context::{StepContext, StepOutput};
use crate::store::join_key;
use plan::PublishPlan;

/// The manifest's name in a version's folder.
pub const MANIFEST: &str = "_manifest.json";

pub async fn run(ctx: &StepContext<'_>, plan: &PublishPlan) -> Result<StepOutput, StepError> {
    let ds = &ctx.template["dataset"];
    let (Some(name), Some(version), Some(store_name), Some(prefix)) = (
        ds["name"].as_str(),
        ds["version"].as_str(),
        ds["store"].as_str(),
        ds["prefix"].as_str(),
    ) else {
        return Err(StepError::internal("the run's dataset was not resolved"));
    };
    let store = ctx.stores.get(store_name)?;
    let listed = store.list_under(prefix).await?;
    let mut objects = Vec::new();
    let mut parts: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (rel, m) in &listed {
        if rel == MANIFEST {
            continue;
        }
        let part = rel.split('/').next().unwrap_or_default().to_string();
        let e = parts.entry(part).or_default();
        e.0 += 1;
        e.1 += m.size;
        objects.push(json!({"key": rel, "size": m.size, "etag": m.e_tag}));
    }
    objects.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
    let missing: Vec<&str> = plan.parts.iter().filter(|p| !parts.contains_key(*p)).map(String::as_str).collect();
    if !missing.is_empty() {
        return Err(StepError::user(format!(
            "dataset `{name}` version {version} is incomplete: no objects in part(s) {} at {}; it is not published",
            missing.join(", "),
            store.display(prefix)
        )));
    }
    let bytes: u64 = parts.values().map(|p| p.1).sum();
    let meta = json!({
        "run_id": ctx.run_id,
        "pipeline": ctx.plan.name,
        "objects": objects.len(),
        "bytes": bytes,
        "parts": parts.iter().map(|(k, (n, b))| (k.clone(), json!({"objects": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
    });
    let manifest = json!({
        "dataset": name,
        "version": version,
        "run_id": ctx.run_id,
        "created_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "parts": meta["parts"],
        "objects": objects,
    });
    let body = serde_json::to_vec_pretty(&manifest).map_err(|e| StepError::internal(e.to_string()))?;
    let key = join_key(prefix, MANIFEST);
    let writer = store
        .writer(&format!("step `{}` (the dataset's manifest)", ctx.step.id))
        .map_err(|e| StepError::user(e.to_string()))?;
    writer
        .put(&store.path(&key).map_err(StepError::user)?, body.into())
        .await
        .map_err(|e| StepError::from(e).context(format!("writing {}", store.display(&key))))?;
    let location = format!("{store_name}:{prefix}");
    ctx.state
        .publish_dataset(name, version, &location, &meta)
        .await
        .map_err(|e| StepError::external(format!("recording dataset `{name}` version {version}: {e}")))?;
    Ok(StepReport {
        objects_in: objects.len() as u64,
        objects_out: 1,
        bytes_in: bytes,
        notes: vec![format!("published dataset `{name}` version {version} ({} objects) at {location}", objects.len())],
        ..Default::default()
    }
    .into())
}
