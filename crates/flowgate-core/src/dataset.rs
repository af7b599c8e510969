//! Datasets: immutable, named, timestamped sets of objects. A run of a pipeline
//! with `[dataset]` either makes a new version (its steps write parts under
//! `<at>/<version>/`, and a `publish` step writes `_manifest.json` last, then
//! records the version in the state store) or reads a published one (`read =
//! "LATEST"` or a version, resolved once when the run starts and recorded in
//! its parameters). Only what the state store lists is complete: a version
//! whose run died before its publish is never `LATEST` and never listed.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::error::StepError;
use crate::state::StateStore;
use crate::store::Location;

/// The file's `[dataset]`, checked.
#[derive(Debug, Clone)]
pub struct DatasetPlan {
    /// Template of the dataset's name.
    pub name: String,
    /// Where its versions live (the prefix a template).
    pub at: Location,
    /// Template of the version to read (`LATEST` or a name); `None`: make one.
    pub read: Option<String>,
}

/// What the word `LATEST` asks for.
pub const LATEST: &str = "LATEST";

/// The run's dataset, as templates see it (`{{ dataset.version }}`):
/// `name`, `version`, `store`, `prefix` (the version's folder in the store),
/// `location` and `mode` (`read` or `write`).
pub async fn resolve(
    state: &dyn StateStore,
    plan: &DatasetPlan,
    template: &Value,
    started: DateTime<Utc>,
) -> Result<Value, StepError> {
    let render = |what: &str, t: &str| {
        crate::template::render(t, template)
            .map_err(|e| StepError::user(format!("dataset {what}: {e}")))
    };
    let name = render("name", &plan.name)?;
    if name.trim().is_empty() || name.contains(['/', '\n']) {
        return Err(StepError::user(format!(
            "dataset name `{name}` is empty or has a `/`"
        )));
    }
    let (version, mode) = match &plan.read {
        None => (started.format("%Y%m%d_%H%M%S_utc").to_string(), "write"),
        Some(t) => (
            read_version(state, &name, render("read", t)?.trim()).await?,
            "read",
        ),
    };
    let base = render("at", &plan.at.prefix)?;
    let prefix = crate::store::join_key(base.trim_matches('/'), &version);
    Ok(json!({
        "name": name,
        "version": version,
        "store": plan.at.store,
        "prefix": prefix,
        "location": format!("{}:{prefix}", plan.at.store),
        "mode": mode,
    }))
}

/// `LATEST` or a published version of `name`.
async fn read_version(
    state: &dyn StateStore,
    name: &str,
    asked: &str,
) -> Result<String, StepError> {
    let published = state
        .list_datasets(name)
        .await
        .map_err(|e| StepError::external(format!("listing dataset `{name}`: {e}")))?;
    if asked == LATEST {
        return published.first().map(|d| d.version.clone()).ok_or_else(|| {
            StepError::user(format!(
                "dataset `{name}` has no published version yet, so there is no LATEST"
            ))
        });
    }
    if published.iter().any(|d| d.version == asked) {
        return Ok(asked.to_string());
    }
    let some: Vec<&str> = published
        .iter()
        .take(5)
        .map(|d| d.version.as_str())
        .collect();
    Err(StepError::user(format!(
        "dataset `{name}` has no published version `{asked}` (newest: {}); an unpublished one is incomplete",
        if some.is_empty() {
            "none".to_string()
        } else {
            some.join(", ")
        }
    )))
}
