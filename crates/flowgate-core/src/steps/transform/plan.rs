//! The transform step's plan: its spec checked against the file (also in a
//! flowgate built without the step, which then says so).

use std::time::Duration;

use crate::config::model::{Access, TransformSpec};
use crate::plan::ctx::Ctx;
use crate::store::Location;

#[derive(Debug, Clone)]
pub struct TransformPlan {
    pub models: String,
    pub inputs: Location,
    pub to: Location,
    /// Only objects landed this recently are read (`None`: all of them).
    pub history: Option<Duration>,
}

/// Plan a transform step at `at` (`steps[0]`).
pub(crate) fn build(
    t: &TransformSpec,
    at: &str,
    what: &str,
    cx: &mut Ctx<'_>,
) -> Option<TransformPlan> {
    let mut ok = true;
    for (k, v) in [("inputs", &t.inputs), ("to", &t.to)] {
        ok &= cx.kind_is(&format!("{at}.transform.{k}"), v, false, what);
    }
    let inputs = cx.location(
        &format!("{at}.transform.inputs"),
        &t.inputs,
        Access::Read,
        what,
    );
    let to = cx.location(&format!("{at}.transform.to"), &t.to, Access::Write, what);
    let dir = cx.dir.join(&t.models);
    if !dir.is_dir() {
        cx.error(
            &format!("{at}.transform.models"),
            format!("models directory {} does not exist", dir.display()),
            None,
        );
        ok = false;
    }
    if !cfg!(feature = "transform") {
        cx.key_error(
            &format!("{at}.transform"),
            "this flowgate was built without the transform step (cargo feature `transform`)",
            None,
        );
        ok = false;
    }
    let history = match t
        .history
        .as_deref()
        .map(crate::units::parse_duration)
        .transpose()
    {
        Ok(h) => h,
        Err(e) => {
            cx.error(
                &format!("{at}.transform.history"),
                e,
                Some("a duration such as `30d`".into()),
            );
            ok = false;
            None
        }
    };
    ok.then_some(())?;
    Some(TransformPlan {
        models: t.models.clone(),
        inputs: inputs?,
        to: to?,
        history,
    })
}
