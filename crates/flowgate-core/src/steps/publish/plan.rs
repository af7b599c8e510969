//! The publish step's plan.

use super::config::PublishSpec;
use crate::plan::ctx::Ctx;

#[derive(Debug, Clone)]
pub struct PublishPlan {
    pub parts: Vec<String>,
}

/// Plan a publish step at `at`: the pipeline makes a dataset.
pub(crate) fn build(p: &PublishSpec, at: &str, _what: &str, cx: &mut Ctx<'_>) -> Option<PublishPlan> {
    let at = format!("{at}.publish");
    match cx.file().dataset.as_ref() {
        None => {
            cx.error(&at, "there is no dataset to publish", Some("add [dataset] with a name and where it lives (`at`)".into()));
            return None;
        }
        Some(d) if d.read.is_some() => {
            cx.error(&at, "this pipeline reads its dataset (`dataset.read`); it publishes none", None);
            return None;
        }
        Some(_) => {}
    }
    Some(PublishPlan { parts: p.parts.clone() })
}
