//! Step kinds, one folder each: its plan (`plan.rs`: the checked spec) and its
//! runner. The engine runs a step through [`run`], the one registry of kinds, and
//! hands it a [`context::StepContext`].

pub mod context;
pub mod copy;
pub mod deliver;
pub mod extract;
pub mod load;
pub mod transform;

use crate::error::StepError;
use crate::plan::StepKind;
use context::{StepContext, StepOutput};

/// One attempt of the step in `ctx`, by its kind.
pub(crate) fn run<'a>(
    ctx: &'a StepContext<'a>,
) -> futures::future::BoxFuture<'a, Result<StepOutput, StepError>> {
    match &ctx.step.kind {
        StepKind::Copy(c) => Box::pin(copy::run(ctx, c)),
        StepKind::Deliver(d) => Box::pin(deliver::run(ctx, d)),
        StepKind::Extract(e) => Box::pin(extract::run(ctx, e)),
        StepKind::Load(l) => Box::pin(load::run(ctx, l)),
        #[cfg(feature = "transform")]
        StepKind::Transform(t) => Box::pin(transform::run(ctx, t)),
        #[cfg(not(feature = "transform"))]
        StepKind::Transform(_) => {
            Box::pin(async { Err(StepError::user("built without the transform step")) })
        }
    }
}
