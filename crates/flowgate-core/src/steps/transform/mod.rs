//! The transform step: SQL models over what landed, written as files.

pub mod config;
pub mod plan;
#[cfg(feature = "transform")]
mod run;
#[cfg(feature = "transform")]
pub use run::*;

/// Without the `transform` feature a planned transform step fails when it runs.
#[cfg(not(feature = "transform"))]
pub(crate) async fn run(
    _ctx: &crate::steps::context::StepContext<'_>,
    _plan: &plan::TransformPlan,
) -> Result<crate::steps::context::StepOutput, crate::error::StepError> {
    Err(crate::error::StepError::user(
        "this flowgate was built without the transform step (cargo feature `transform`)",
    ))
}
