//! What a step is given and what it gives back: the one interface between the
//! engine and the step kinds (both import it; steps never import the engine).

use std::collections::HashMap;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::model::{Access, StoreSpec};
use crate::error::{ErrorClass, StepError};
use crate::lane::Claim;
use crate::plan::{Plan, PlannedStep};
use crate::quarantine::Quarantine;
use crate::state::{StateStore, StepReport};
use crate::store::{Location, StoreHandle};

/// Progress of long work, shown by the CLI as bars when it runs in a terminal.
pub trait Progress: Send + Sync {
    fn begin(&self, _step: &str, _objects: u64, _bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn end(&self) {}
}

/// Progress that shows nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Everything a step may use.
pub struct StepContext<'a> {
    pub plan: &'a Plan,
    pub run_id: &'a str,
    pub step: &'a PlannedStep,
    pub template: &'a Value,
    pub stores: &'a Stores,
    pub state: &'a dyn StateStore,
    pub cancel: &'a CancellationToken,
    pub progress: &'a dyn Progress,
    /// The lane's claim: its fence goes with every position written.
    pub claim: &'a Claim,
}

impl StepContext<'_> {
    /// What every position written by this step carries.
    pub fn fence(&self) -> &crate::state::Fence {
        self.claim.fence()
    }
}

/// A store URL rendered from run data (a routing row from a table someone else
/// writes) stays where its pipeline file put it: no `..` or empty segment, no
/// control character.
fn confined(url: String) -> Result<String, String> {
    let path = url.split_once("://").map(|(_, p)| p).unwrap_or(&url);
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let bad = path
        .split('/')
        .enumerate()
        .any(|(i, s)| s == ".." || (s.is_empty() && i > 0 && i + 1 < path.split('/').count()));
    if bad || url.chars().any(char::is_control) {
        return Err(format!(
            "the store URL `{url}` leaves where the pipeline puts it (a `..` or empty segment, or a control character came from the run's data)"
        ));
    }
    Ok(url)
}

/// What a step reports when it finishes.
#[derive(Debug, Default, Clone)]
pub struct StepOutput {
    pub report: StepReport,
    /// The step failed after setting its bad input aside: the report's counts
    /// (quarantined above all) stand, and the step is not retried.
    pub failure: Option<StepError>,
}

impl From<StepReport> for StepOutput {
    fn from(report: StepReport) -> Self {
        StepOutput {
            report,
            failure: None,
        }
    }
}

/// The stores of one run, opened once.
pub struct Stores {
    map: HashMap<String, StoreHandle>,
    /// Stores whose URL template could not be rendered for this run, with why.
    unavailable: HashMap<String, String>,
    dir: std::path::PathBuf,
    quarantine: Option<Location>,
    dead_letter: Option<Location>,
}

impl Stores {
    /// Open the plan's object stores; a URL may be a template of the run
    /// (`s3://{{ route.destination_bucket }}`).
    pub fn open(plan: &Plan, template: &Value) -> Result<Stores, StepError> {
        let mut map = HashMap::new();
        let mut unavailable = HashMap::new();
        // SQL stores are opened by the steps that use them, KV stores by triggers.
        for (name, spec) in plan.stores.iter().filter(|(_, s)| {
            !crate::sql::is_sql_url(&s.url)
                && !crate::connect::kv::is_kv_url(&s.url)
                && !crate::stream::is_kafka_url(&s.url)
                && !crate::stream::bigquery::is_bigquery_url(&s.url)
        }) {
            let rendered;
            let spec = if spec.url.contains("{{") {
                match crate::template::render(&spec.url, template).and_then(confined) {
                    Ok(url) => {
                        rendered = StoreSpec {
                            url,
                            ..spec.clone()
                        };
                        &rendered
                    }
                    // Only a step that uses this store fails.
                    Err(e) => {
                        unavailable.insert(name.clone(), format!("the URL of store `{name}`: {e}"));
                        continue;
                    }
                }
            } else {
                spec
            };
            let h = StoreHandle::open(name, spec, &plan.dir)
                .map_err(|e| StepError::new(ErrorClass::USER, e.to_string()))?;
            map.insert(name.clone(), h);
        }
        Ok(Stores {
            map,
            unavailable,
            dir: plan.dir.clone(),
            quarantine: plan.quarantine.clone(),
            dead_letter: plan.dead_letter.clone(),
        })
    }

    pub fn get(&self, name: &str) -> Result<&StoreHandle, StepError> {
        if let Some(why) = self.unavailable.get(name) {
            return Err(StepError::user(why.clone()));
        }
        self.map
            .get(name)
            .ok_or_else(|| StepError::internal(format!("store `{name}` was not opened")))
    }

    /// Where bad records go: the pipeline's `policy.dead_letter`, else
    /// `.flowgate/dead-letter/` beside the pipeline file.
    pub fn dead_letter(
        &self,
        template: &Value,
    ) -> Result<crate::quarantine::DeadLetter, StepError> {
        if let Some(loc) = &self.dead_letter {
            let prefix = crate::template::render(&loc.prefix, template).map_err(StepError::user)?;
            return Ok(crate::quarantine::DeadLetter {
                store: self.get(&loc.store)?.clone(),
                prefix,
            });
        }
        let spec = StoreSpec::at("file://.flowgate/dead-letter", Access::ReadWrite);
        let store = StoreHandle::open("dead-letter", &spec, &self.dir)
            .map_err(|e| StepError::user(e.to_string()))?;
        Ok(crate::quarantine::DeadLetter {
            store,
            prefix: String::new(),
        })
    }

    /// Where failed inputs of `source` go: the pipeline's `policy.quarantine`, else
    /// `failed/` in the source store when it is writable, else `.flowgate/quarantine/`
    /// beside the pipeline file.
    pub fn quarantine_for(
        &self,
        source: &StoreHandle,
        template: &Value,
    ) -> Result<Quarantine, StepError> {
        if let Some(loc) = &self.quarantine {
            let prefix = crate::template::render(&loc.prefix, template).map_err(StepError::user)?;
            return Ok(Quarantine {
                store: self.get(&loc.store)?.clone(),
                prefix,
            });
        }
        if source.access.can_write() {
            return Ok(Quarantine {
                store: source.clone(),
                prefix: "failed".into(),
            });
        }
        let spec = StoreSpec::at("file://.flowgate/quarantine", Access::ReadWrite);
        let store = StoreHandle::open("quarantine", &spec, &self.dir)
            .map_err(|e| StepError::user(e.to_string()))?;
        Ok(Quarantine {
            store,
            prefix: source.name.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::confined;

    #[test]
    fn a_rendered_store_url_cannot_leave_its_place() {
        for ok in [
            "file://./data/buckets/partner-a",
            "s3://partner-a/",
            "file:///srv/out/a",
            "s3://b/in?x=1",
        ] {
            assert_eq!(confined(ok.to_string()).as_deref(), Ok(ok));
        }
        for bad in [
            "file://./data/buckets/../../etc",
            "file://./data/buckets/..",
            "file://./data//x",
            "s3://b/\u{7}",
        ] {
            assert!(confined(bad.to_string()).is_err(), "{bad}");
        }
    }
}
